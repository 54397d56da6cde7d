//! The scheduler extender behind a real kube-scheduler, with kwok nodes: managed pods go to
//! the least-loaded QuickSync node, avoid a node whose Lease went stale while it still says
//! Ready, follow their attached volume, and are still placed when most of the cluster's Leases
//! go stale at once; pods that are not managed never reach the extender.
//!
//! Ignored by default; `hack/e2e-extender.sh` starts the extender and a kube-scheduler
//! profile configured with it, then runs them with `--ignored`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::time::Duration;

use jellyfin_ha_core::annotations::INJECT;
use jellyfin_ha_e2e::{TestNamespace, TestNode, client, envtest, eventually, metric_total};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::VolumeAttachment;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

struct Env {
    admin: String,
    scheduler_name: String,
    /// The extender's config file.
    config: String,
}

fn env() -> Option<Env> {
    let var = |name: &str| std::env::var(name).ok();
    Some(Env {
        admin: var("JFHA_E2E_EXTENDER_ADMIN")?,
        scheduler_name: var("JFHA_E2E_SCHEDULER_NAME")?,
        config: var("JFHA_E2E_EXTENDER_CONFIG")?,
    })
}

/// The explain table's row for `node`, split into columns (the reasons are the rest).
fn explain_row(table: &str, node: &str) -> Vec<String> {
    table
        .lines()
        .find(|line| {
            line.split_whitespace()
                .next()
                .is_some_and(|first| first.trim_end_matches('*') == node)
        })
        .unwrap_or_else(|| panic!("no row for {node}:\n{table}"))
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

macro_rules! require_env {
    () => {
        env().expect(
            "JFHA_E2E_EXTENDER_ADMIN and JFHA_E2E_SCHEDULER_NAME are not set: run hack/e2e-extender.sh",
        )
    };
}

/// kwok nodes of one test, labelled with the test's group and deleted when dropped.
struct Nodes {
    names: Vec<String>,
    _nodes: Vec<TestNode>,
}

impl Nodes {
    fn add(group: &str, names: &[&str]) -> Self {
        let nodes: Vec<TestNode> = names
            .iter()
            .map(|name| TestNode::named(name, 2).unwrap())
            .collect();
        for node in &nodes {
            node.label("jellyfin-ha.io/e2e-group", group).unwrap();
        }
        Self {
            names: names.iter().map(|n| n.to_string()).collect(),
            _nodes: nodes,
        }
    }
}

/// A pod the webhook would have marked: the label the extender watches, and the extended
/// resource that sends it to the extender. Kept to the test's nodes by affinity.
fn managed_pod(env: &Env, name: &str, group: &str, claim: Option<&str>) -> Pod {
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"jellyfin-ha.io/managed": "true"}},
        "spec": {
            "schedulerName": env.scheduler_name,
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "jellyfin-ha.io/e2e-group", "operator": "In", "values": [group]}
                ]}]
            }}},
            "containers": [{
                "name": "jellyfin", "image": "jellyfin/jellyfin:10.10.7",
                "resources": {
                    "requests": {"jellyfin-ha.io/managed": "1"},
                    "limits": {"jellyfin-ha.io/managed": "1"}
                }
            }]
        }
    });
    if let Some(claim) = claim {
        add_claim(&mut pod, claim);
    }
    serde_json::from_value(pod).unwrap()
}

/// A managed pod already running on `node`: it loads that node's iGPU.
fn load_pod(name: &str, node: &str, claim: Option<&str>) -> Pod {
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"jellyfin-ha.io/managed": "true"}},
        "spec": {
            "nodeName": node,
            "containers": [{"name": "transcode", "image": "jellyfin/jellyfin:10.10.7"}]
        }
    });
    if let Some(claim) = claim {
        add_claim(&mut pod, claim);
    }
    serde_json::from_value(pod).unwrap()
}

fn add_claim(pod: &mut Value, claim: &str) {
    pod["spec"]["volumes"] =
        json!([{"name": "config", "persistentVolumeClaim": {"claimName": claim}}]);
    pod["spec"]["containers"][0]["volumeMounts"] =
        json!([{"name": "config", "mountPath": "/config"}]);
}

async fn create_all(pods: &Api<Pod>, list: Vec<Pod>) {
    for pod in list {
        pods.create(&PostParams::default(), &pod).await.unwrap();
    }
    // Let the extender's watch catch up: it is milliseconds behind, not seconds.
    tokio::time::sleep(Duration::from_secs(1)).await;
}

async fn wait_bound(pods: &Api<Pod>, name: &str) -> String {
    eventually(
        Duration::from_secs(30),
        "the pod to be scheduled",
        || async {
            let pod = pods.get(name).await?;
            Ok(pod.spec.and_then(|s| s.node_name))
        },
    )
    .await
    .unwrap()
}

fn admin_response(env: &Env, path: &str) -> (u16, String) {
    jellyfin_ha_e2e::admin_response(&env.admin, path).unwrap()
}

/// Extender calls of `verb` answered so far, over every outcome.
fn calls(env: &Env, verb: &str) -> u64 {
    calls_with(env, verb, "")
}

/// Extender calls of `verb` answered so far whose labels also contain `also`.
fn calls_with(env: &Env, verb: &str, also: &str) -> u64 {
    let metrics = jellyfin_ha_e2e::admin_get(&env.admin, "/metrics").unwrap();
    let verb = format!("verb=\"{verb}\"");
    metric_total(&metrics, "jellyfin_ha_extender_calls_total", &[&verb, also])
}

fn ready_status(node: &Node) -> String {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.status.clone())
        .unwrap_or_default()
}

async fn setup(prefix: &str) -> (Client, TestNamespace, Api<Pod>) {
    let client = client().await.unwrap();
    let namespace = TestNamespace::create(&client, prefix).await.unwrap();
    let pods = Api::namespaced(client.clone(), &namespace.name);
    (client, namespace, pods)
}

#[tokio::test]
#[ignore = "needs the extender and its scheduler: run hack/e2e-extender.sh"]
async fn lands_on_the_least_loaded_quicksync_node() {
    let env = require_env!();
    let (_client, _namespace, pods) = setup("ext-load").await;
    let _nodes = Nodes::add("load", &["ext-load-1", "ext-load-2", "ext-load-3"]);
    create_all(
        &pods,
        vec![
            load_pod("busy-1a", "ext-load-1", None),
            load_pod("busy-1b", "ext-load-1", None),
            load_pod("busy-2a", "ext-load-2", None),
        ],
    )
    .await;
    let (filters, prioritizes) = (calls(&env, "filter"), calls(&env, "prioritize"));
    pods.create(
        &PostParams::default(),
        &managed_pod(&env, "jellyfin", "load", None),
    )
    .await
    .unwrap();
    assert_eq!(wait_bound(&pods, "jellyfin").await, "ext-load-3");
    assert!(calls(&env, "filter") > filters);
    assert!(calls(&env, "prioritize") > prioritizes);
}

#[tokio::test]
#[ignore = "needs the extender and its scheduler: run hack/e2e-extender.sh"]
async fn avoids_a_node_whose_lease_went_stale_while_it_still_says_ready() {
    let env = require_env!();
    let (client, namespace, pods) = setup("ext-stale").await;
    // The idle node, which the scores alone would pick, is the one that dies.
    let _nodes = Nodes::add("stale", &["ext-stale-1", "ext-stale-2"]);
    create_all(&pods, vec![load_pod("busy", "ext-stale-2", None)]).await;
    envtest(&["node-power-off", "ext-stale-1"]).unwrap();

    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    eventually(
        Duration::from_secs(40),
        "the dead node's Lease to go stale (15 s in the extender's config)",
        || async {
            let lease = leases.get("ext-stale-1").await?;
            let renewed = lease.spec.and_then(|s| s.renew_time).map(|t| t.0);
            let age = renewed.map(|t| Timestamp::now().as_second() - t.as_second());
            Ok(age.filter(|age| *age >= 17).map(|_| ()))
        },
    )
    .await
    .unwrap();

    let nodes: Api<Node> = Api::all(client.clone());
    assert_eq!(
        ready_status(&nodes.get("ext-stale-1").await.unwrap()),
        "True"
    );
    pods.create(
        &PostParams::default(),
        &managed_pod(&env, "jellyfin", "stale", None),
    )
    .await
    .unwrap();
    assert_eq!(wait_bound(&pods, "jellyfin").await, "ext-stale-2");
    // Still Ready as far as the node-lifecycle controller knows: the extender kept it off.
    assert_eq!(
        ready_status(&nodes.get("ext-stale-1").await.unwrap()),
        "True",
        "the node turned NotReady before the pod was placed; raise ENVTEST_NODE_MONITOR_GRACE"
    );
    // explain says why, from the live cluster.
    let table = jellyfin_ha_e2e::explain(&namespace.name, "jellyfin", &env.config).unwrap();
    let dead = explain_row(&table, "ext-stale-1");
    assert_eq!(dead[1], "no", "{table}");
    assert!(
        table.contains("heartbeat lease not renewed in the last 15s"),
        "{table}"
    );
    let chosen = explain_row(&table, "ext-stale-2");
    assert_eq!(chosen[0], "ext-stale-2*", "{table}");
    assert_eq!(chosen[1], "yes", "{table}");
}

#[tokio::test]
#[ignore = "needs the extender and its scheduler: run hack/e2e-extender.sh"]
async fn follows_its_attached_volume() {
    let env = require_env!();
    let (client, namespace, pods) = setup("ext-vol").await;
    // The holder is also the busier node: only the volume pin sends the pod there.
    let _nodes = Nodes::add("vol", &["ext-vol-1", "ext-vol-2"]);
    let pv_name = single_node_claim(&client, &namespace, "config").await;
    create_all(
        &pods,
        vec![
            // Not Jellyfin (a backup job, say): it holds the volume there without writing the
            // library, so Jellyfin may join it.
            unmanaged(load_pod("holder", "ext-vol-2", Some("config"))),
            load_pod("busy", "ext-vol-2", None),
        ],
    )
    .await;
    let attachments: Api<VolumeAttachment> = Api::all(client.clone());
    eventually(
        Duration::from_secs(30),
        "the volume to be attached to ext-vol-2",
        || async {
            let list = attachments.list(&Default::default()).await?;
            Ok(list
                .items
                .iter()
                .any(|va| {
                    va.spec.source.persistent_volume_name.as_deref() == Some(pv_name.as_str())
                        && va.spec.node_name == "ext-vol-2"
                        && va.status.as_ref().is_some_and(|s| s.attached)
                })
                .then_some(()))
        },
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;

    pods.create(
        &PostParams::default(),
        &managed_pod(&env, "jellyfin", "vol", Some("config")),
    )
    .await
    .unwrap();
    assert_eq!(wait_bound(&pods, "jellyfin").await, "ext-vol-2");
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let _ = pvs.delete(&pv_name, &Default::default()).await;
}

/// A replacement never joins the Jellyfin it replaces on its volume: while the old pod shuts
/// down (held here by a finalizer, as a long grace period would), every node is refused, the
/// old pod's own included; once it is gone the new one is placed. The old pod opted in but was
/// admitted unmutated (the webhook was unreachable then), so it carries no managed label.
#[tokio::test]
#[ignore = "needs the extender and its scheduler: run hack/e2e-extender.sh"]
async fn a_replacement_waits_until_the_old_pod_no_longer_uses_the_volume() {
    let env = require_env!();
    let (client, namespace, pods) = setup("ext-wait").await;
    let _nodes = Nodes::add("wait", &["ext-wait-1", "ext-wait-2"]);
    let pv_name = single_node_claim(&client, &namespace, "config").await;
    let mut old = load_pod("jellyfin-old", "ext-wait-2", Some("config"));
    old.metadata.finalizers = Some(vec![HOLD.into()]);
    old.metadata.labels = None;
    old.metadata.annotations = Some([(INJECT.to_string(), "true".to_string())].into());
    create_all(&pods, vec![old]).await;
    pods.delete("jellyfin-old", &Default::default())
        .await
        .unwrap();
    pods.create(
        &PostParams::default(),
        &managed_pod(&env, "jellyfin", "wait", Some("config")),
    )
    .await
    .unwrap();
    let refused = eventually(
        Duration::from_secs(30),
        "the scheduler to report the pod unschedulable",
        || async {
            let pod = pods.get("jellyfin").await?;
            let condition = pod
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .into_iter()
                .find(|c| c.type_ == "PodScheduled" && c.status == "False");
            Ok(condition.and_then(|c| c.message))
        },
    )
    .await
    .unwrap();
    assert!(
        refused.contains("still used by pod jellyfin-old"),
        "{refused}"
    );
    let unbound = pods.get("jellyfin").await.unwrap();
    assert_eq!(unbound.spec.and_then(|s| s.node_name), None);

    pods.patch(
        "jellyfin-old",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    wait_bound(&pods, "jellyfin").await;
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let _ = pvs.delete(&pv_name, &Default::default()).await;
}

/// Keeps a deleted pod in the API, as one still shutting down.
const HOLD: &str = "jellyfin-ha.io/e2e-hold";

/// A ReadWriteOnce Ceph RBD claim `name`, bound to a PV of its own; the PV's name.
async fn single_node_claim(client: &Client, namespace: &TestNamespace, name: &str) -> String {
    let pv_name = format!("{}-{name}", namespace.name);
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let pv: PersistentVolume = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": pv_name},
        "spec": {
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": "ceph-rbd",
            "claimRef": {"namespace": namespace.name, "name": name},
            "csi": {"driver": "rbd.csi.ceph.com", "volumeHandle": pv_name}
        }
    }))
    .unwrap();
    let _ = pvs.delete(&pv_name, &Default::default()).await;
    pvs.create(&PostParams::default(), &pv).await.unwrap();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &namespace.name);
    let claim: PersistentVolumeClaim = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": name},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": "ceph-rbd",
            "volumeName": pv_name,
            "resources": {"requests": {"storage": "1Gi"}}
        }
    }))
    .unwrap();
    claims.create(&PostParams::default(), &claim).await.unwrap();
    pv_name
}

fn unmanaged(mut pod: Pod) -> Pod {
    pod.metadata.labels = None;
    pod
}

#[tokio::test]
#[ignore = "needs the extender and its scheduler: run hack/e2e-extender.sh"]
async fn pods_that_are_not_managed_never_reach_the_extender() {
    let env = require_env!();
    let (_client, _namespace, pods) = setup("ext-plain").await;
    let _nodes = Nodes::add("plain", &["ext-plain-1"]);
    let before = (calls(&env, "filter"), calls(&env, "prioritize"));
    let mut plain = managed_pod(&env, "plain", "plain", None);
    plain.metadata.labels = None;
    plain.spec.as_mut().unwrap().containers[0].resources = None;
    pods.create(&PostParams::default(), &plain).await.unwrap();
    assert_eq!(wait_bound(&pods, "plain").await, "ext-plain-1");
    assert_eq!((calls(&env, "filter"), calls(&env, "prioritize")), before);
    // The same pod, managed, does reach it: the counter is not simply dead.
    pods.create(
        &PostParams::default(),
        &managed_pod(&env, "managed", "plain", None),
    )
    .await
    .unwrap();
    wait_bound(&pods, "managed").await;
    assert!(calls(&env, "filter") > before.0);
}

/// When more than half the cluster's Leases go stale at once, the extender's view (or the
/// control plane) is behind, not that many machines dead. Rejecting every such node would keep
/// Jellyfin Pending; instead the extender answers with an error, the scheduler skips it (it is
/// ignorable) and the in-tree plugins place the pod.
#[tokio::test]
#[ignore = "needs the extender and its scheduler: run hack/e2e-extender.sh"]
async fn steps_aside_when_most_of_the_cluster_goes_silent_at_once() {
    let env = require_env!();
    let (client, _namespace, pods) = setup("ext-behind").await;
    // One more silent node than the cluster has nodes: a majority whatever the others do.
    let existing = Api::<Node>::all(client.clone())
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .len();
    let names: Vec<String> = (1..=existing + 1)
        .map(|i| format!("ext-behind-{i}"))
        .collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let nodes = Nodes::add("behind", &names);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (status, body) = admin_response(&env, "/readyz");
    assert_eq!(status, 200, "{body}");

    // Alive but unheard, as in a partition: the kubelets stop renewing their Leases, and the
    // nodes still say Ready until the node-monitor grace period ends.
    for name in &nodes.names {
        envtest(&["node-partition", name]).unwrap();
    }
    let why = eventually(
        Duration::from_secs(40),
        "the extender to call its view stale (Leases older than 15 s)",
        || async {
            let (status, body) = admin_response(&env, "/readyz");
            Ok((status != 200).then_some(body))
        },
    )
    .await
    .unwrap();
    assert!(why.contains("stale heartbeat lease at once"), "{why}");

    let stale_before = calls_with(&env, "filter", "outcome=\"stale\"");
    pods.create(
        &PostParams::default(),
        &managed_pod(&env, "jellyfin", "behind", None),
    )
    .await
    .unwrap();
    let placed = wait_bound(&pods, "jellyfin").await;
    assert!(nodes.names.contains(&placed), "{placed}");
    assert!(
        calls_with(&env, "filter", "outcome=\"stale\"") > stale_before,
        "the extender was asked and answered that its view is stale"
    );
    let log = std::fs::read_to_string(std::env::var("JFHA_E2E_SCHEDULER_LOG").unwrap())
        .unwrap_or_default();
    assert!(
        log.lines().any(|line| line.contains("Skipping extender")
            && line.contains("the extender's view is stale")),
        "kube-scheduler logged that it skipped the extender"
    );

    for name in &nodes.names {
        envtest(&["node-reconnect", name]).unwrap();
    }
    eventually(
        Duration::from_secs(30),
        "the extender to trust its view again",
        || async { Ok((admin_response(&env, "/readyz").0 == 200).then_some(())) },
    )
    .await
    .unwrap();
}
