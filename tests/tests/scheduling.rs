//! Every way of installing scheduling, on its own and undone again, leaves opted-in pods
//! schedulable: the webhook alone under a stock kube-scheduler, the extender turned on for the
//! shipped scheduler configuration and turned off again, and the shipped second scheduler run
//! from its own manifest. Each test runs a webhook of its own that follows the scheduling
//! ConfigMap in the test's namespace, so flipping it disturbs no other test.
//!
//! Ignored by default; `hack/e2e-extender.sh` starts the extender and a kube-scheduler profile
//! with the shipped configuration, then runs them with `--ignored`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use jellyfin_ha_e2e::{
    OWN_REGISTRATION, RoleProcess, ShippedRbac, TestNamespace, TestNode, admin_get, client,
    eventually, free_port, kubectl, metric_total, repo_root, service_account_kubeconfig,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

const MARKER: &str = "jellyfin-ha.io/managed";
const SCHEDULING: &str = "jellyfin-ha-scheduling";
const STOCK_SCHEDULER: &str = "default-scheduler";

struct Env {
    /// The extender's admin port, for its call counts.
    extender_admin: String,
    extender_url: String,
    extender_ca: String,
    /// The kube-scheduler profile that runs the shipped extender configuration.
    shipped_profile: String,
}

fn env() -> Env {
    let var = |name: &str| {
        std::env::var(name)
            .unwrap_or_else(|_| panic!("{name} is not set: run hack/e2e-extender.sh"))
    };
    Env {
        extender_admin: var("JFHA_E2E_EXTENDER_ADMIN"),
        extender_url: var("JFHA_E2E_EXTENDER_URL"),
        extender_ca: var("JFHA_E2E_EXTENDER_CA"),
        shipped_profile: var("JFHA_E2E_SCHEDULER_NAME"),
    }
}

fn filter_calls(env: &Env) -> u64 {
    let metrics = admin_get(&env.extender_admin, "/metrics").unwrap();
    metric_total(
        &metrics,
        "jellyfin_ha_extender_calls_total",
        &["verb=\"filter\""],
    )
}

/// A namespace with a webhook of its own that follows the scheduling ConfigMap there, and one
/// QuickSync node only its pods may use.
struct Scene {
    client: Client,
    namespace: TestNamespace,
    node: TestNode,
    _webhook: RoleProcess,
}

impl Scene {
    async fn new(prefix: &str) -> Self {
        let client = client().await.unwrap();
        let namespace =
            TestNamespace::create_labelled(&client, prefix, &[(OWN_REGISTRATION, "true")])
                .await
                .unwrap();
        let node = TestNode::add(prefix, 2).unwrap();
        let dir = repo_root().join(format!("target/e2e-scheduling/{}", namespace.name));
        let webhook = RoleProcess::webhook(&dir, &["--namespace", &namespace.name])
            .await
            .unwrap();
        let url = format!("{}/mutate", webhook.served.url);
        // The registration lives as long as the namespace: dropping it would delete it
        // before the test's pods are gone.
        std::mem::forget(
            webhook
                .served
                .register_own(&client, &namespace.name, &url)
                .await
                .unwrap(),
        );
        Self {
            client,
            namespace,
            node,
            _webhook: webhook,
        }
    }

    fn ns(&self) -> &str {
        &self.namespace.name
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), self.ns())
    }

    /// An opted-in Jellyfin pod that asks for no iGPU share and may only use this scene's
    /// node; `scheduler` is what the user wrote, if anything.
    fn jellyfin(&self, name: &str, scheduler: Option<&str>) -> Value {
        let mut pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "annotations": {
                "jellyfin-ha.io/inject": "true",
                "jellyfin-ha.io/gpu": "none",
            }},
            "spec": {
                "nodeSelector": {"kubernetes.io/hostname": self.node.name},
                "containers": [{"name": "jellyfin", "image": "jellyfin/jellyfin:10.10.7"}],
            },
        });
        if let Some(scheduler) = scheduler {
            pod["spec"]["schedulerName"] = json!(scheduler);
        }
        pod
    }

    /// Writes the scheduling ConfigMap (`None` deletes it) and waits until the webhook
    /// mutates pods accordingly, judged by `in_effect` on a server-side dry run.
    async fn set_scheduling(
        &self,
        data: Option<&[(&str, &str)]>,
        in_effect: impl Fn(&Value) -> bool,
    ) {
        let maps: Api<ConfigMap> = Api::namespaced(self.client.clone(), self.ns());
        match data {
            Some(data) => {
                let data: BTreeMap<String, String> = data
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                let map = json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": SCHEDULING}, "data": data});
                maps.patch(
                    SCHEDULING,
                    &PatchParams::apply("jellyfin-ha-e2e").force(),
                    &Patch::Apply(&map),
                )
                .await
                .unwrap();
            }
            None => {
                maps.delete(SCHEDULING, &DeleteParams::default())
                    .await
                    .unwrap();
            }
        }
        let dry_run = PostParams {
            dry_run: true,
            ..PostParams::default()
        };
        let probe: Pod = serde_json::from_value(self.jellyfin("probe", None)).unwrap();
        eventually(
            Duration::from_secs(15),
            "the webhook to follow the scheduling ConfigMap",
            || async {
                let pod = serde_json::to_value(self.pods().create(&dry_run, &probe).await?)?;
                Ok(in_effect(&pod).then_some(()))
            },
        )
        .await
        .unwrap();
    }

    /// Creates the pod and waits until a scheduler has bound it; returns it as stored.
    async fn create_and_bind(&self, pod: Value) -> Value {
        let name = pod["metadata"]["name"].as_str().unwrap().to_string();
        let pod: Pod = serde_json::from_value(pod).unwrap();
        self.pods()
            .create(&PostParams::default(), &pod)
            .await
            .unwrap();
        self.bound(&name).await
    }

    async fn bound(&self, name: &str) -> Value {
        let pods = self.pods();
        let pod = eventually(Duration::from_secs(30), "the pod to be bound", || async {
            let pod = pods.get(name).await?;
            let bound = pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .is_some();
            Ok(bound.then_some(pod))
        })
        .await
        .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        serde_json::to_value(pod).unwrap()
    }
}

fn marked(pod: &Value) -> bool {
    pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| !c["resources"]["requests"][MARKER].is_null())
}

fn scheduler_of(pod: &Value) -> &str {
    pod["spec"]["schedulerName"]
        .as_str()
        .unwrap_or(STOCK_SCHEDULER)
}

#[tokio::test]
#[ignore = "needs the extender and its kube-scheduler profile: run hack/e2e-extender.sh"]
async fn each_install_step_alone_and_undone_leaves_opted_in_pods_schedulable() {
    let env = env();
    let scene = Scene::new("scheduling-steps").await;

    // The webhook alone, under the stock scheduler: no marker, placed.
    let alone = scene
        .create_and_bind(scene.jellyfin("webhook-alone", None))
        .await;
    assert!(!marked(&alone), "{alone}");
    assert_eq!(scheduler_of(&alone), STOCK_SCHEDULER);
    assert!(alone["metadata"]["annotations"]["jellyfin-ha.io/mutations"].is_string());

    // The extender turned on, for the scheduler that runs the shipped configuration.
    scene
        .set_scheduling(Some(&[("mode", "extender")]), marked)
        .await;
    let before = filter_calls(&env);
    let through_extender = scene
        .create_and_bind(scene.jellyfin("with-extender", Some(&env.shipped_profile)))
        .await;
    assert!(marked(&through_extender), "{through_extender}");
    assert!(
        filter_calls(&env) > before,
        "the scheduler asked the extender"
    );
    let deployments: Api<Deployment> = Api::namespaced(scene.client.clone(), scene.ns());
    let template = scene.jellyfin("unused", Some(&env.shipped_profile));
    let deployment: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "jellyfin"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "jellyfin"}},
            "template": {
                "metadata": {"labels": {"app": "jellyfin"},
                             "annotations": template["metadata"]["annotations"]},
                "spec": template["spec"],
            },
        },
    }))
    .unwrap();
    let stored = deployments
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();
    let stored_template = serde_json::to_value(stored.spec.unwrap().template).unwrap();
    assert!(
        !marked(&stored_template),
        "no marker in a template: {stored_template}"
    );
    assert!(stored_template["metadata"]["annotations"]["jellyfin-ha.io/mutations"].is_string());
    let listed = ListParams::default().labels("app=jellyfin");
    let pods = scene.pods();
    let first = eventually(Duration::from_secs(30), "the Deployment's pod", || async {
        Ok(pods.list(&listed).await?.items.into_iter().next())
    })
    .await
    .unwrap();
    let first = scene.bound(&first.name_any()).await;
    assert!(marked(&first), "{first}");

    // Undone: the ConfigMap deleted and the scheduler back to stock, as after uninstalling the
    // extender. New pods, and the Deployment's next pod, are placed as if it never was.
    scene.set_scheduling(None, |pod| !marked(pod)).await;
    let undone = scene.create_and_bind(scene.jellyfin("undone", None)).await;
    assert!(!marked(&undone), "{undone}");
    deployments
        .patch(
            "jellyfin",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"template": {"spec": {"schedulerName": STOCK_SCHEDULER}}}}),
            ),
        )
        .await
        .unwrap();
    let first_name = first["metadata"]["name"].as_str().unwrap().to_string();
    let next = eventually(Duration::from_secs(30), "the rollout's new pod", || async {
        Ok(pods
            .list(&listed)
            .await?
            .items
            .into_iter()
            .find(|p| p.name_any() != first_name))
    })
    .await
    .unwrap();
    let next = scene.bound(&next.name_any()).await;
    assert!(!marked(&next), "{next}");
    assert_eq!(scheduler_of(&next), STOCK_SCHEDULER);
}

#[tokio::test]
#[ignore = "needs the extender: run hack/e2e-extender.sh"]
async fn an_unusable_scheduling_configmap_leaves_pods_to_the_stock_scheduler_and_says_why() {
    let scene = Scene::new("scheduling-unusable").await;
    let warned = |pod: &Value| !marked(pod) && scheduler_of(pod) == STOCK_SCHEDULER;
    scene
        .set_scheduling(Some(&[("mode", "Extender")]), warned)
        .await;
    // Through kubectl, which prints the admission warnings a user sees.
    let manifest = repo_root().join(format!("target/e2e-scheduling/{}/typo.json", scene.ns()));
    std::fs::write(&manifest, scene.jellyfin("typo", None).to_string()).unwrap();
    let output = kubectl(&["-n", scene.ns(), "create", "-f", manifest.to_str().unwrap()]).unwrap();
    assert!(output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("jellyfin-ha-scheduling") && stderr.contains("Extender"),
        "kubectl shows the admission warning: {stderr}"
    );
    let bound = scene.bound("typo").await;
    assert!(!marked(&bound));
}

/// The second scheduler's configuration as shipped, pointed at this host's extender, its
/// Lease in `namespace`, connecting with `kubeconfig`.
fn shipped_second_scheduler_config(env: &Env, namespace: &str, kubeconfig: &Path) -> String {
    let path = repo_root().join("manifests/scheduling/second-scheduler/scheduler-config.yaml");
    let map: ConfigMap = serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut config: Value = serde_yaml::from_str(&map.data.unwrap()["config.yaml"]).unwrap();
    let extender = &mut config["extenders"][0];
    extender["urlPrefix"] = json!(env.extender_url);
    extender["tlsConfig"]["caFile"] = json!(env.extender_ca);
    config["leaderElection"]["resourceNamespace"] = json!(namespace);
    config["clientConnection"] = json!({"kubeconfig": kubeconfig});
    serde_yaml::to_string(&config).unwrap()
}

/// `kube-scheduler` from the local control plane's build, killed when dropped.
struct Scheduler(Child);

impl Drop for Scheduler {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
#[ignore = "needs the extender: run hack/e2e-extender.sh"]
async fn the_shipped_second_scheduler_places_opted_in_pods_through_the_extender() {
    let env = env();
    let scene = Scene::new("second-scheduler").await;
    let dir = repo_root().join(format!("target/e2e-scheduling/{}", scene.ns()));
    // Under its own ServiceAccount, with the shipped RBAC: the apiserver enforces it.
    let _rbac = ShippedRbac::apply("manifests/scheduling/second-scheduler", scene.ns()).unwrap();
    let kubeconfig = service_account_kubeconfig(scene.ns(), "jellyfin-ha-scheduler").unwrap();
    std::fs::write(
        dir.join("scheduler.yaml"),
        shipped_second_scheduler_config(&env, scene.ns(), &kubeconfig),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("scheduler.log")).unwrap();
    let _scheduler = Scheduler(
        Command::new("kube-scheduler")
            .arg(format!("--config={}", dir.join("scheduler.yaml").display()))
            .arg(format!(
                "--authentication-kubeconfig={}",
                kubeconfig.display()
            ))
            .arg(format!(
                "--authorization-kubeconfig={}",
                kubeconfig.display()
            ))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--secure-port={}", free_port().unwrap()))
            .arg(format!(
                "--cert-dir={}",
                dir.join("scheduler-certs").display()
            ))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );

    // The overlay's own ConfigMap, in the test's namespace.
    let path = repo_root().join("manifests/scheduling/second-scheduler/scheduling.yaml");
    let shipped: ConfigMap = serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let data = shipped.data.unwrap();
    let name = data["schedulerName"].clone();
    let pairs: Vec<(&str, &str)> = data.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    scene
        .set_scheduling(Some(&pairs), |pod| scheduler_of(pod) == name)
        .await;

    let before = filter_calls(&env);
    let pod = scene.create_and_bind(scene.jellyfin("second", None)).await;
    assert_eq!(scheduler_of(&pod), name);
    assert!(!marked(&pod), "the second scheduler needs no marker: {pod}");
    assert!(
        filter_calls(&env) > before,
        "the second scheduler asked the extender"
    );
    let leases: Api<Lease> = Api::namespaced(scene.client.clone(), scene.ns());
    let lease = leases.get("jellyfin-ha-scheduler").await.unwrap();
    assert!(
        lease
            .spec
            .and_then(|s| s.holder_identity)
            .is_some_and(|h| !h.is_empty()),
        "the scheduler leads through its own Lease"
    );
}

/// The extender stanza is written twice, once per way of scheduling; they must not drift.
#[test]
fn both_shipped_scheduler_configurations_call_the_extender_alike() {
    let read = |path: &str| -> Value {
        serde_yaml::from_str(&std::fs::read_to_string(repo_root().join(path)).unwrap()).unwrap()
    };
    let control_plane = read("manifests/scheduling/extender/kube-scheduler-config.yaml");
    let map = read("manifests/scheduling/second-scheduler/scheduler-config.yaml");
    let second: Value = serde_yaml::from_str(map["data"]["config.yaml"].as_str().unwrap()).unwrap();
    let mut first = control_plane["extenders"][0].clone();
    let mut other = second["extenders"][0].clone();
    // What differs by design: how the CA is given, and which pods are sent.
    for stanza in [&mut first, &mut other] {
        let stanza = stanza.as_object_mut().unwrap();
        stanza.remove("managedResources");
        stanza.remove("tlsConfig");
    }
    assert_eq!(first, other);
    assert_eq!(
        control_plane["extenders"][0]["managedResources"][0]["name"],
        MARKER
    );
    assert!(second["extenders"][0].get("managedResources").is_none());
    for profile in [&control_plane["profiles"][0], &second["profiles"][0]] {
        assert_eq!(
            profile["pluginConfig"][0]["args"]["ignoredResources"][0],
            MARKER
        );
    }
}
