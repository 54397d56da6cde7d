//! The webhook behind a real kube-apiserver: registration with CEL matchConditions, the patch
//! encoding, DefaultTolerationSeconds' tolerations replaced, pods that never reach it, and pods
//! a Deployment makes while it cannot be reached.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::time::Duration;

use jellyfin_ha_e2e::{
    OWN_REGISTRATION, RoleProcess, TestNamespace, Webhook, client, eventually, kubectl, repo_root,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

async fn setup(prefix: &str) -> (Client, Webhook, TestNamespace) {
    let client = client().await.unwrap();
    let webhook = Webhook::from_env().unwrap();
    webhook.register(&client).await.unwrap();
    let namespace = TestNamespace::create(&client, prefix).await.unwrap();
    wait_until_webhook_is_active(&client, &namespace.name).await;
    (client, webhook, namespace)
}

fn plain_pod(name: &str, annotations: Value) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"containers": [{"name": "jellyfin", "image": "jellyfin/jellyfin:10.10.7"}]}
    }))
    .unwrap()
}

fn opted_in() -> Value {
    json!({"jellyfin-ha.io/inject": "true"})
}

/// The apiserver picks up a new webhook configuration asynchronously; a server-side dry run
/// shows when it is in effect.
async fn wait_until_webhook_is_active(client: &Client, namespace: &str) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    eventually(
        Duration::from_secs(15),
        "the webhook configuration to take effect",
        || async {
            let pod = pods
                .create(&dry_run, &plain_pod("probe", opted_in()))
                .await?;
            Ok(pod
                .annotations()
                .contains_key("jellyfin-ha.io/mutations")
                .then_some(()))
        },
    )
    .await
    .unwrap();
}

fn example_documents() -> Vec<Value> {
    let text =
        std::fs::read_to_string(repo_root().join("manifests/example/jellyfin.yaml")).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| serde::Deserialize::deserialize(doc).unwrap())
        .collect()
}

fn example(kind: &str) -> Value {
    let mut doc = example_documents()
        .into_iter()
        .find(|d| d["kind"] == kind)
        .unwrap();
    doc["metadata"].as_object_mut().unwrap().remove("namespace");
    doc
}

#[tokio::test]
async fn example_deployment_pod_is_mutated_by_the_real_apiserver() {
    let (client, _webhook, namespace) = setup("example").await;
    let ns = namespace.name.as_str();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    claims
        .create(
            &PostParams::default(),
            &serde_json::from_value(example("PersistentVolumeClaim")).unwrap(),
        )
        .await
        .unwrap();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    deployments
        .create(
            &PostParams::default(),
            &serde_json::from_value(example("Deployment")).unwrap(),
        )
        .await
        .unwrap();

    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let listed = ListParams::default().labels("app.kubernetes.io/name=jellyfin");
    let pod = eventually(
        Duration::from_secs(30),
        "the ReplicaSet to create a pod",
        || async { Ok(pods.list(&listed).await?.items.into_iter().next()) },
    )
    .await
    .unwrap();

    let pod = serde_json::to_value(pod).unwrap();
    let tolerations = pod["spec"]["tolerations"].as_array().unwrap();
    for key in [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    ] {
        let matching: Vec<&Value> = tolerations.iter().filter(|t| t["key"] == key).collect();
        assert_eq!(
            matching.len(),
            1,
            "DefaultTolerationSeconds' 300 s toleration replaced: {tolerations:?}"
        );
        assert_eq!(matching[0]["tolerationSeconds"], 15);
    }
    assert_eq!(
        pod["spec"]["terminationGracePeriodSeconds"], 600,
        "grace raised to the clean-shutdown floor"
    );
    assert_eq!(pod["metadata"]["labels"]["jellyfin-ha.io/managed"], "true");
    let container = &pod["spec"]["containers"][0];
    assert_eq!(container["resources"]["limits"]["gpu.intel.com/i915"], "1");
    assert_eq!(
        container["resources"]["requests"]["gpu.intel.com/i915"], "1",
        "apiserver defaulted the request"
    );
    assert_eq!(
        container["resources"]["requests"]["jellyfin-ha.io/managed"],
        "1"
    );
    let record = pod["metadata"]["annotations"]["jellyfin-ha.io/mutations"]
        .as_str()
        .unwrap();
    assert!(record.contains("failover-tolerations=15s"), "{record}");
    let terms = &pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"];
    assert_eq!(
        terms[0]["matchExpressions"][0]["key"],
        "intel.feature.node.kubernetes.io/gpu"
    );
}

#[tokio::test]
async fn rolling_update_deployment_with_a_claim_is_switched_to_recreate() {
    let (client, _webhook, namespace) = setup("recreate").await;
    let mut deployment = example("Deployment");
    deployment["spec"]["strategy"] =
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}});
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace.name);
    let created = deployments
        .create(
            &PostParams::default(),
            &serde_json::from_value(deployment).unwrap(),
        )
        .await
        .unwrap();
    let strategy = created.spec.unwrap().strategy.unwrap();
    assert_eq!(strategy.type_.as_deref(), Some("Recreate"));
    assert!(strategy.rolling_update.is_none());
}

/// A webhook of the test's own, registered for its namespace only, counts exactly the reviews
/// the apiserver sent for the test's pods: the CEL match conditions keep the others away.
#[tokio::test]
async fn pods_that_did_not_opt_in_never_reach_the_webhook() {
    let client = client().await.unwrap();
    let namespace = TestNamespace::create_labelled(&client, "optin", &[(OWN_REGISTRATION, "true")])
        .await
        .unwrap();
    let ns = namespace.name.as_str();
    let dir = repo_root().join(format!("target/e2e-webhooks/{ns}"));
    let own = RoleProcess::webhook(&dir, &[]).await.unwrap();
    let webhook = &own.served;
    let _registration = webhook
        .register_own(&client, ns, &format!("{}/mutate", webhook.url))
        .await
        .unwrap();
    wait_until_webhook_is_active(&client, ns).await;
    // The dry-run probes that showed the registration in effect were opted in.
    let probes = webhook.reviews_of("Pod").unwrap();
    assert!(probes > 0);

    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    pods.create(&PostParams::default(), &plain_pod("plain", json!({})))
        .await
        .unwrap();
    pods.create(
        &PostParams::default(),
        &plain_pod("false", json!({"jellyfin-ha.io/inject": "false"})),
    )
    .await
    .unwrap();
    assert_eq!(
        webhook.reviews_of("Pod").unwrap(),
        probes,
        "a pod that did not opt in reached the webhook"
    );
    for name in ["plain", "false"] {
        let pod = pods.get(name).await.unwrap();
        let seconds: Vec<Option<i64>> = pod
            .spec
            .unwrap()
            .tolerations
            .unwrap()
            .iter()
            .map(|t| t.toleration_seconds)
            .collect();
        assert_eq!(
            seconds,
            [Some(300), Some(300)],
            "{name} kept DefaultTolerationSeconds' values"
        );
    }

    let opted = pods
        .create(&PostParams::default(), &plain_pod("opted", opted_in()))
        .await
        .unwrap();
    assert!(opted.annotations().contains_key("jellyfin-ha.io/mutations"));
    assert_eq!(
        webhook.reviews_of("Pod").unwrap(),
        probes + 1,
        "the opted-in pod was reviewed once"
    );
}

#[tokio::test]
async fn malformed_override_is_denied_with_the_annotation_named() {
    let (client, _webhook, namespace) = setup("deny").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace.name);
    let annotations = json!({"jellyfin-ha.io/inject": "true", "jellyfin-ha.io/gpu": "vaapi"});
    let err = pods
        .create(&PostParams::default(), &plain_pod("bad", annotations))
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("jellyfin-ha.io/gpu") && message.contains("device-plugin, hostpath, none"),
        "{message}"
    );
}

#[tokio::test]
async fn kubectl_server_dry_run_shows_the_mutation() {
    let (_client, _webhook, namespace) = setup("dryrun").await;
    let manifest = repo_root().join("target/e2e-dry-run-pod.json");
    std::fs::write(
        &manifest,
        serde_json::to_string(&plain_pod("dry", opted_in())).unwrap(),
    )
    .unwrap();
    let output = kubectl(&[
        "create",
        "--dry-run=server",
        "-o",
        "yaml",
        "-n",
        &namespace.name,
        "-f",
        manifest.to_str().unwrap(),
    ])
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("jellyfin-ha.io/mutations:"), "{stdout}");
    assert!(stdout.contains("tolerationSeconds: 15"), "{stdout}");
    assert!(!stdout.contains("tolerationSeconds: 300"), "{stdout}");
}

#[tokio::test]
async fn every_manifest_is_accepted_by_the_apiserver() {
    let client = client().await.unwrap();
    // Namespaced objects need their namespace to exist for a server-side dry run.
    for name in ["jellyfin-ha", "media"] {
        let output = kubectl(&["create", "namespace", name]).unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success() || stderr.contains("AlreadyExists"),
            "{stderr}"
        );
    }
    drop(client);
    for dir in [
        "manifests/base",
        "manifests/example",
        "manifests/scheduler",
        "manifests/fencer",
        "manifests/scheduling/extender",
        "manifests/scheduling/second-scheduler",
        "manifests/overlays/self-managed",
    ] {
        let path = repo_root().join(dir);
        let output = kubectl(&["apply", "--dry-run=server", "-k", path.to_str().unwrap()]).unwrap();
        assert!(
            output.status.success(),
            "{dir}:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// A failover may take the webhook's replica down with the node, and with failurePolicy Ignore
/// the replacement pod is then admitted unmutated. It is complete anyway: the Deployment's
/// template already carries the mutation.
#[tokio::test]
async fn a_pod_made_while_the_webhook_is_unreachable_is_complete() {
    let client = client().await.unwrap();
    let webhook = Webhook::from_env().unwrap();
    // The shared registration leaves this namespace to the test's own, which it can break.
    webhook.register(&client).await.unwrap();
    let namespace = TestNamespace::create_labelled(&client, "birth", &[(OWN_REGISTRATION, "true")])
        .await
        .unwrap();
    let ns = namespace.name.as_str();
    let own = webhook
        .register_own(&client, ns, &format!("{}/mutate", webhook.url))
        .await
        .unwrap();
    wait_until_webhook_is_active(&client, ns).await;

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let created = deployments
        .create(
            &PostParams::default(),
            &serde_json::from_value(example("Deployment")).unwrap(),
        )
        .await
        .unwrap();
    let template = serde_json::to_value(created.spec.unwrap().template).unwrap();
    assert_complete(&template, "the stored template");
    assert!(
        !template
            .to_string()
            .contains("\"jellyfin-ha.io/managed\":\"1\""),
        "the template carries no scheduling marker: {template}"
    );

    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let listed = ListParams::default().labels("app.kubernetes.io/name=jellyfin");
    let first = eventually(
        Duration::from_secs(30),
        "the ReplicaSet to create a pod",
        || async { Ok(pods.list(&listed).await?.items.into_iter().next()) },
    )
    .await
    .unwrap();
    let first = serde_json::to_value(first).unwrap();
    assert_eq!(
        first["spec"]["containers"][0]["resources"]["limits"]["jellyfin-ha.io/managed"], "1",
        "with the webhook up, the pod gets the scheduling marker"
    );

    // Unreachable, as a replica on a dead node is: nothing listens on the port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_url = format!("https://{}/mutate", closed.local_addr().unwrap());
    drop(closed);
    own.point_at(&client, &closed_url).await.unwrap();
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    eventually(
        Duration::from_secs(15),
        "the webhook to be unreachable for the namespace",
        || async {
            let probe = pods
                .create(&dry_run, &plain_pod("probe", opted_in()))
                .await?;
            Ok((!probe.annotations().contains_key("jellyfin-ha.io/mutations")).then_some(()))
        },
    )
    .await
    .unwrap();

    let first_name = first["metadata"]["name"].as_str().unwrap().to_string();
    pods.delete(&first_name, &DeleteParams::default())
        .await
        .unwrap();
    let replacement = eventually(
        Duration::from_secs(30),
        "the ReplicaSet to replace the pod",
        || async {
            let list = pods.list(&listed).await?;
            Ok(list
                .items
                .into_iter()
                .find(|p| p.metadata.name.as_deref() != Some(first_name.as_str())))
        },
    )
    .await
    .unwrap();
    let replacement = serde_json::to_value(replacement).unwrap();
    assert_complete(&replacement, "the replacement pod");
    // Proof the webhook never saw it: only the Pod mutation adds the marker.
    let resources = &replacement["spec"]["containers"][0]["resources"];
    assert!(
        resources["limits"].get("jellyfin-ha.io/managed").is_none()
            && resources["requests"]
                .get("jellyfin-ha.io/managed")
                .is_none(),
        "{resources}"
    );
    let record = replacement["metadata"]["annotations"]["jellyfin-ha.io/mutations"]
        .as_str()
        .unwrap();
    assert!(!record.contains("scheduling-marker"), "{record}");
    assert_eq!(
        replacement["metadata"]["labels"]["jellyfin-ha.io/managed"],
        "true"
    );
}

/// The iGPU, the failover tolerations (the template's, which keep DefaultTolerationSeconds
/// from adding its 300 s ones), QuickSync placement and the clean-shutdown grace, on a pod or a
/// pod template.
fn assert_complete(pod: &Value, what: &str) {
    let spec = &pod["spec"];
    assert_eq!(
        spec["containers"][0]["resources"]["limits"]["gpu.intel.com/i915"], "1",
        "{what}: {spec}"
    );
    let tolerations = spec["tolerations"].as_array().unwrap();
    for key in [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    ] {
        let matching: Vec<&Value> = tolerations.iter().filter(|t| t["key"] == key).collect();
        assert_eq!(matching.len(), 1, "{what}: {tolerations:?}");
        assert_eq!(matching[0]["tolerationSeconds"], 15, "{what}");
        assert_eq!(matching[0]["effect"], "NoExecute", "{what}");
    }
    let terms = &spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"];
    assert_eq!(
        terms[0]["matchExpressions"][0],
        json!({"key": "intel.feature.node.kubernetes.io/gpu", "operator": "In", "values": ["true"]}),
        "{what}"
    );
    assert_eq!(spec["terminationGracePeriodSeconds"], 600, "{what}");
}

/// With `renderGroupsFrom: agents`, pods get the render GIDs the node agents report on usable
/// cards, and the configured list until any report arrives.
#[tokio::test]
async fn render_groups_follow_the_node_agents_reports() {
    use jellyfin_ha_core::busyness::report::{
        AgentReport, CardReport, REPORT_KEY, REPORT_LABELS, REPORT_NODE_LABEL, report_object_name,
    };
    use k8s_openapi::api::core::v1::ConfigMap;

    let client = client().await.unwrap();
    let namespace = TestNamespace::create_labelled(&client, "gids", &[(OWN_REGISTRATION, "true")])
        .await
        .unwrap();
    let ns = namespace.name.as_str();
    let dir = repo_root().join(format!("target/e2e-webhooks/{ns}"));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        "renderGroups: [44, 109]\nrenderGroupsFrom: agents\n",
    )
    .unwrap();
    let config_flag = format!("--config={}", config.display());
    let own = RoleProcess::webhook(&dir, &["--namespace", ns, &config_flag])
        .await
        .unwrap();
    let _registration = own
        .served
        .register_own(&client, ns, &format!("{}/mutate", own.served.url))
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let groups_become = |expected: Vec<i64>| {
        let pods = pods.clone();
        async move {
            let dry_run = PostParams {
                dry_run: true,
                ..PostParams::default()
            };
            let what = format!("supplementalGroups {expected:?}");
            eventually(Duration::from_secs(15), &what, || async {
                let pod = pods
                    .create(&dry_run, &plain_pod("probe", opted_in()))
                    .await?;
                let groups = pod
                    .spec
                    .and_then(|s| s.security_context)
                    .and_then(|c| c.supplemental_groups)
                    .unwrap_or_default();
                Ok((groups == expected).then_some(()))
            })
            .await
            .unwrap();
        }
    };
    groups_become(vec![44, 109]).await;

    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let card = |card: &str, gid: u32, usable: bool| CardReport {
        card: card.into(),
        driver: Some("i915".into()),
        pci_address: None,
        render_node: None,
        render_gid: Some(gid),
        usable,
        problem: None,
        engines: Default::default(),
    };
    for (node, cards) in [
        (
            "qs-1",
            vec![card("card0", 106, true), card("card1", 44, false)],
        ),
        ("qs-2", vec![card("card0", 993, true)]),
    ] {
        let report = AgentReport {
            node: node.into(),
            observed_at: k8s_openapi::jiff::Timestamp::now(),
            cards,
            pods: Vec::new(),
        };
        let mut labels: std::collections::BTreeMap<String, String> = REPORT_LABELS
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        labels.insert(REPORT_NODE_LABEL.into(), node.into());
        let map: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": report_object_name(node), "labels": labels},
            "data": {REPORT_KEY: serde_json::to_string(&report).unwrap()},
        }))
        .unwrap();
        maps.create(&PostParams::default(), &map).await.unwrap();
    }
    groups_become(vec![106, 993]).await;
    maps.delete(&report_object_name("qs-2"), &DeleteParams::default())
        .await
        .unwrap();
    groups_become(vec![106]).await;
}
