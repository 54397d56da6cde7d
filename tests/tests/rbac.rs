//! Each role under its own ServiceAccount's token with the RBAC users install: it does its
//! job, and what lies outside its role the apiserver refuses. (The fencer does its whole job
//! this way in `fencer.rs`, the second scheduler in `scheduling.rs`.)

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use jellyfin_ha_e2e::{
    OWN_REGISTRATION, RoleProcess, ShippedRbac, TestNamespace, TestNode, client, client_from,
    repo_root, service_account_kubeconfig,
};
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

/// A test namespace with the RBAC of `kustomization` and a client that is `account` there.
async fn role(
    prefix: &str,
    kustomization: &str,
    account: &str,
) -> (TestNamespace, ShippedRbac, std::path::PathBuf, Client) {
    let admin = client().await.unwrap();
    let namespace = TestNamespace::create_labelled(&admin, prefix, &[(OWN_REGISTRATION, "true")])
        .await
        .unwrap();
    let rbac = ShippedRbac::apply(kustomization, &namespace.name).unwrap();
    let kubeconfig = service_account_kubeconfig(&namespace.name, account).unwrap();
    let client = client_from(&kubeconfig).await.unwrap();
    (namespace, rbac, kubeconfig, client)
}

/// The apiserver answered 403.
fn refused<T: std::fmt::Debug>(result: Result<T, kube::Error>, what: &str) {
    match result {
        Err(kube::Error::Api(status)) if status.code == 403 => {}
        other => panic!("{what}: expected 403 Forbidden, got {other:?}"),
    }
}

async fn patch_a_node_label(client: &Client, node: &str) -> Result<Node, kube::Error> {
    Api::<Node>::all(client.clone())
        .patch(
            node,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"jellyfin-ha.io/e2e-rbac": "x"}}})),
        )
        .await
}

#[tokio::test]
async fn the_extender_reads_all_it_scores_by_and_may_change_nothing() {
    let (namespace, _rbac, kubeconfig, client) = role(
        "rbac-extender",
        "manifests/scheduler",
        "jellyfin-ha-extender",
    )
    .await;
    let node = TestNode::add("rbac-extender", 1).unwrap();
    let dir = repo_root().join(format!("target/e2e-rbac/{}", namespace.name));
    // Ready means every cache listed and watches: Nodes, Leases, Pods, claims, volumes,
    // attachments, CSINodes.
    let _extender = RoleProcess::start("extender", &dir, &kubeconfig, &[])
        .await
        .unwrap();

    refused(
        patch_a_node_label(&client, &node.name).await,
        "patching a Node",
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace.name);
    refused(
        pods.delete("anything", &DeleteParams::default()).await,
        "deleting a pod",
    );
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "kube-system");
    refused(
        secrets.list(&ListParams::default()).await,
        "reading kube-system's Secrets",
    );
}

#[tokio::test]
async fn the_webhook_mutates_with_only_its_own_objects_readable() {
    let (namespace, _rbac, kubeconfig, client) =
        role("rbac-webhook", "manifests/base", "jellyfin-ha-webhook").await;
    let ns = namespace.name.as_str();
    let dir = repo_root().join(format!("target/e2e-rbac/{ns}"));
    // Ready means it read the scheduling ConfigMap, by name, with its own rights.
    let webhook = RoleProcess::start("webhook", &dir, &kubeconfig, &["--namespace", ns])
        .await
        .unwrap();
    let admin = jellyfin_ha_e2e::client().await.unwrap();
    let url = format!("{}/mutate", webhook.served.url);
    let _registration = webhook.served.register_own(&admin, ns, &url).await.unwrap();
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "jellyfin", "annotations": {"jellyfin-ha.io/inject": "true"}},
        "spec": {"containers": [{"name": "jellyfin", "image": "jellyfin/jellyfin:10.10.7"}]},
    }))
    .unwrap();
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let pods: Api<Pod> = Api::namespaced(admin.clone(), ns);
    let mutated = jellyfin_ha_e2e::eventually(
        std::time::Duration::from_secs(15),
        "the registration to take effect",
        || async {
            let created = pods.create(&dry_run, &pod).await?;
            Ok(created
                .annotations()
                .contains_key("jellyfin-ha.io/mutations")
                .then_some(created))
        },
    )
    .await
    .unwrap();
    assert!(mutated.annotations()["jellyfin-ha.io/mutations"].contains("termination-grace"));

    let node = TestNode::add("rbac-webhook", 1).unwrap();
    refused(
        patch_a_node_label(&client, &node.name).await,
        "patching a Node",
    );
    let own_pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    refused(own_pods.list(&ListParams::default()).await, "listing pods");
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    refused(
        maps.get("kube-root-ca.crt").await,
        "reading a ConfigMap other than jellyfin-ha-scheduling",
    );
}

#[tokio::test]
async fn the_fencer_may_not_touch_what_it_does_not_fence() {
    let (namespace, _rbac, _kubeconfig, client) =
        role("rbac-fencer", "manifests/fencer", "jellyfin-ha-fencer").await;
    let nodes: Api<Node> = Api::all(client.clone());
    refused(
        nodes.delete("anything", &DeleteParams::default()).await,
        "deleting a Node",
    );
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "kube-system");
    refused(
        secrets.get("anything").await,
        "reading a Secret outside its namespace",
    );
    let own: Api<Secret> = Api::namespaced(client.clone(), &namespace.name);
    refused(
        own.create(&PostParams::default(), &Secret::default()).await,
        "writing a Secret",
    );
}
