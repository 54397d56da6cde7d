//! The fencer against the local control plane, with a real Redfish BMC (sushy-tools) behind
//! every kwok node. Each test fences only its own nodes (a label of its own in
//! `fencer.nodeSelector`), so tests run side by side.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use jellyfin_ha_core::fencing::{FenceRecord, FencingMark};
use jellyfin_ha_e2e::{
    ShippedRbac, TestNamespace, TestNode, client, create_rbd_claim, eventually, kubectl_ok,
    repo_root, service_account_kubeconfig,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Node, Pod, Secret, Taint};
use k8s_openapi::api::storage::v1::VolumeAttachment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const SELECTOR_LABEL: &str = "jellyfin-ha.io/e2e-fencer";
const FENCED: &str = "jellyfin-ha.io/fenced";
const OUT_OF_SERVICE: &str = "node.kubernetes.io/out-of-service";
const FENCING_MARK: &str = jellyfin_ha_core::extender::snapshot::FENCING_ANNOTATION;
const NONE_ACKNOWLEDGEMENT: &str = jellyfin_ha_core::fencing::config::NONE_ACKNOWLEDGEMENT;

/// A test's nodes, each with its BMC, a namespace, the credentials Secrets, and the shipped
/// RBAC for the fencer's ServiceAccount there: the fencer runs with that account's token, so
/// the apiserver enforces exactly the rights users install.
struct Scene {
    client: Client,
    namespace: TestNamespace,
    nodes: Vec<TestNode>,
    _rbac: ShippedRbac,
    kubeconfig: PathBuf,
}

impl Scene {
    async fn new(prefix: &str, nodes: usize) -> Self {
        let client = client().await.unwrap();
        let namespace = TestNamespace::create(&client, prefix).await.unwrap();
        let nodes: Vec<TestNode> = (0..nodes)
            .map(|_| TestNode::add(&format!("e2e-{prefix}"), 1).unwrap())
            .collect();
        for node in &nodes {
            let label = format!("{SELECTOR_LABEL}={}", namespace.name);
            kubectl_ok(&["label", "node", &node.name, &label]).unwrap();
        }
        let rbac = ShippedRbac::apply("manifests/fencer", &namespace.name).unwrap();
        let kubeconfig = service_account_kubeconfig(&namespace.name, "jellyfin-ha-fencer").unwrap();
        let scene = Self {
            client,
            namespace,
            nodes,
            _rbac: rbac,
            kubeconfig,
        };
        for (i, node) in scene.nodes.iter().enumerate() {
            let bmc = node.bmc().unwrap();
            scene
                .secret(&format!("bmc-{i}"), &bmc.username, &bmc.password)
                .await;
        }
        scene
    }

    fn ns(&self) -> &str {
        &self.namespace.name
    }

    async fn secret(&self, name: &str, username: &str, password: &str) {
        let secret: Secret = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
            "stringData": {"username": username, "password": password},
        }))
        .unwrap();
        Api::<Secret>::namespaced(self.client.clone(), self.ns())
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
    }

    /// One Redfish agent per node, with `edit` applied to each agent.
    fn config(&self, power_off: bool, edit: impl Fn(usize, &mut Value)) -> String {
        let agents: Vec<Value> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, node)| {
                let bmc = node.bmc().unwrap();
                let mut agent = json!({
                    "name": format!("bmc-{i}"),
                    "nodes": [node.name],
                    "credentialsSecret": format!("bmc-{i}"),
                    "powerOff": power_off,
                    "redfish": {"address": bmc.address, "systemPath": bmc.system_path, "caFile": bmc.ca_file},
                });
                edit(i, &mut agent);
                agent
            })
            .collect();
        let config = json!({"fencer": {
            "nodeSelector": {SELECTOR_LABEL: self.ns()},
            "proofDeadlineSeconds": 30,
            "agentTimeoutSeconds": 3,
            "agents": agents,
        }});
        serde_json::to_string_pretty(&config).unwrap()
    }

    fn fencer(&self, config: &str, identity: &str) -> Fencer {
        self.fencer_with(config, identity, &[])
    }

    fn fencer_with(&self, config: &str, identity: &str, extra: &[&str]) -> Fencer {
        Fencer::start(self.ns(), &self.kubeconfig, config, identity, extra)
    }

    async fn node(&self, name: &str) -> Node {
        Api::<Node>::all(self.client.clone())
            .get(name)
            .await
            .unwrap()
    }

    async fn tainted(&self, name: &str) -> bool {
        self.node(name)
            .await
            .spec
            .and_then(|s| s.taints)
            .unwrap_or_default()
            .iter()
            .any(|t| t.key == OUT_OF_SERVICE)
    }

    async fn wait_fenced(&self, name: &str, timeout: Duration) -> Value {
        eventually(timeout, "the node to be fenced", || async {
            let node = self.node(name).await;
            let record = node
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(FENCED))
                .map(|v| serde_json::from_str::<Value>(v).unwrap());
            Ok(record.filter(|_| {
                node.spec
                    .iter()
                    .flat_map(|s| s.taints.iter().flatten())
                    .any(|t| t.key == OUT_OF_SERVICE && t.effect == "NoExecute")
            }))
        })
        .await
        .unwrap()
    }

    /// Until the fencer marks the node as being proven off.
    async fn wait_proof_begun(&self, name: &str) {
        self.wait_fencing_mark(name, true, "the proof to begin")
            .await;
    }

    /// Until the node carries the being-fenced mark (`present`) or not.
    async fn wait_fencing_mark(&self, name: &str, present: bool, what: &str) {
        eventually(Duration::from_secs(60), what, || async {
            let annotations = self.node(name).await.metadata.annotations;
            let marked = annotations.unwrap_or_default().contains_key(FENCING_MARK);
            Ok((marked == present).then_some(()))
        })
        .await
        .unwrap();
    }

    /// Until the proof of a node that is on gives up saying `why`; it is then still on and
    /// untainted.
    async fn assert_left_running(&self, node: &TestNode, why: &str) {
        let note = self
            .wait_event(&node.name, "NotProvenOff", Duration::from_secs(60))
            .await;
        assert!(note.contains(why), "{note}");
        assert!(!self.tainted(&node.name).await);
        assert_eq!(bmc_power(node), "On");
    }

    /// The Events the fencer recorded on a node, as (reason, note).
    async fn events(&self, node: &str) -> Vec<(String, String)> {
        // A Node's Events live in `default`.
        self.events_in("default", Some(node)).await
    }

    /// The Events the fencer recorded in `namespace`, on objects named `name` if given.
    async fn events_in(&self, namespace: &str, name: Option<&str>) -> Vec<(String, String)> {
        let events: Api<Event> = Api::namespaced(self.client.clone(), namespace);
        let mut params = ListParams::default();
        if let Some(name) = name {
            params = params.fields(&format!("involvedObject.name={name}"));
        }
        let list = events.list(&params).await.unwrap();
        list.items
            .into_iter()
            .filter(|e| e.reporting_component.as_deref() == Some("jellyfin-ha-fencer"))
            .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
            .collect()
    }

    async fn wait_event(&self, node: &str, reason: &str, timeout: Duration) -> String {
        eventually(timeout, &format!("a {reason} Event"), || async {
            Ok(self
                .events(node)
                .await
                .into_iter()
                .find(|(r, _)| r == reason)
                .map(|(_, note)| note))
        })
        .await
        .unwrap()
    }
}

/// A `jellyfin-ha fencer` process on the host, killed when dropped.
struct Fencer {
    child: Child,
    log: PathBuf,
}

impl Fencer {
    fn start(
        namespace: &str,
        kubeconfig: &Path,
        config: &str,
        identity: &str,
        extra: &[&str],
    ) -> Self {
        let dir = repo_root().join("target/e2e-fencer").join(namespace);
        std::fs::create_dir_all(&dir).unwrap();
        let config_path = dir.join("config.yaml");
        std::fs::write(&config_path, config).unwrap();
        let log = dir.join(format!("{identity}.log"));
        let bin = std::env::var("JFHA_E2E_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|_| repo_root().join("target/debug/jellyfin-ha"));
        let child = Command::new(&bin)
            .args([
                "fencer",
                "--admin-listen",
                "127.0.0.1:0",
                "--namespace",
                namespace,
            ])
            .args(["--identity", identity, "--leader-lease", "fencer"])
            .args(extra)
            .arg("--config")
            .arg(&config_path)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info,jellyfin_ha=debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "starting {}: {e} (cargo build -p jellyfin-ha)",
                    bin.display()
                )
            });
        Self { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: the process dies mid-whatever, as on a node that loses power.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Fencer {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..50 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.kill();
    }
}

/// A single-replica Jellyfin-like Deployment with a ReadWriteOnce CSI volume, kept on the
/// scene's nodes.
async fn jellyfin(scene: &Scene) -> String {
    let ns = scene.ns();
    let pv_name = create_rbd_claim(&scene.client, ns, "config").await.unwrap();
    let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "jellyfin"},
        "spec": {"replicas": 1, "strategy": {"type": "Recreate"},
                 "selector": {"matchLabels": {"app": "jellyfin"}},
                 "template": {"metadata": {"labels": {"app": "jellyfin"}},
                              "spec": {"nodeSelector": {SELECTOR_LABEL: ns},
                                       "containers": [{"name": "jellyfin", "image": "jellyfin/jellyfin",
                                                       "volumeMounts": [{"name": "config", "mountPath": "/config"}]}],
                                       "volumes": [{"name": "config", "persistentVolumeClaim": {"claimName": "config"}}]}}}
    });
    Api::<Deployment>::namespaced(scene.client.clone(), ns)
        .create(
            &PostParams::default(),
            &serde_json::from_value(deployment).unwrap(),
        )
        .await
        .unwrap();
    pv_name
}

/// The running Jellyfin pod's node, once its volume is attached there.
async fn running_on(scene: &Scene, pv: &str, not: Option<&str>, timeout: Duration) -> String {
    let pods: Api<Pod> = Api::namespaced(scene.client.clone(), scene.ns());
    eventually(timeout, "Jellyfin running with its volume", || async {
        let list = pods
            .list(&ListParams::default().labels("app=jellyfin"))
            .await?;
        let running = list.items.into_iter().find(|p| {
            p.metadata.deletion_timestamp.is_none()
                && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                && p.spec.as_ref().and_then(|s| s.node_name.as_deref()) != not
        });
        let Some(node) = running.and_then(|p| p.spec?.node_name) else {
            return Ok(None);
        };
        Ok(attached_nodes(&scene.client, pv)
            .await
            .contains(&node)
            .then_some(node))
    })
    .await
    .unwrap()
}

async fn attached_nodes(client: &Client, pv: &str) -> Vec<String> {
    let list = Api::<VolumeAttachment>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    list.into_iter()
        .filter(|va| va.spec.source.persistent_volume_name.as_deref() == Some(pv))
        .filter(|va| va.status.as_ref().is_some_and(|s| s.attached))
        .map(|va| va.spec.node_name)
        .collect()
}

fn index_of(scene: &Scene, name: &str) -> usize {
    scene.nodes.iter().position(|n| n.name == name).unwrap()
}

#[tokio::test]
async fn a_powered_off_node_is_fenced_and_jellyfin_moves_with_its_volume() {
    let scene = Scene::new("fence-power", 3).await;
    let pv = jellyfin(&scene).await;
    let first = running_on(&scene, &pv, None, Duration::from_secs(60)).await;
    let _fencer = scene.fencer(&scene.config(false, |_, _| {}), "fencer-0");

    // Sample the volume's attachments the whole time: never two at once.
    let most = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let (client, pv, most) = (scene.client.clone(), pv.clone(), Arc::clone(&most));
        tokio::spawn(async move {
            loop {
                let attached = attached_nodes(&client, &pv).await.len();
                most.fetch_max(attached, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    scene.nodes[index_of(&scene, &first)].power_off().unwrap();
    let record = scene.wait_fenced(&first, Duration::from_secs(60)).await;
    assert_eq!(record["agent"], format!("bmc-{}", index_of(&scene, &first)));
    assert!(
        record["proof"].as_str().unwrap().contains("Off"),
        "{record}"
    );
    let second = running_on(&scene, &pv, Some(&first), Duration::from_secs(60)).await;
    sampler.abort();
    assert_ne!(second, first);
    assert_eq!(
        attached_nodes(&scene.client, &pv).await,
        std::slice::from_ref(&second)
    );
    assert_eq!(
        most.load(Ordering::SeqCst),
        1,
        "the volume was never attached twice"
    );
    let note = scene
        .wait_event(&first, "Fenced", Duration::from_secs(5))
        .await;
    assert!(note.contains("Lease not renewed"), "{note}");
    // The replaced pod says why it went.
    let on_pods = scene.events_in(scene.ns(), None).await;
    assert!(
        on_pods
            .iter()
            .any(|(reason, note)| reason == "ForceDeleted" && note.contains(&first)),
        "{on_pods:?}"
    );
}

#[tokio::test]
async fn a_partitioned_node_that_is_still_on_is_powered_off_then_fenced() {
    let scene = Scene::new("fence-partition", 3).await;
    let _fencer = scene.fencer(&scene.config(true, |_, _| {}), "fencer-0");
    let node = &scene.nodes[0];
    node.partition().unwrap();
    // Before the power-off, the claim on a maxFenced place is on the Node, for any leader.
    eventually(Duration::from_secs(60), "the power-off's claim", || async {
        let annotations = scene.node(&node.name).await.metadata.annotations;
        let mark = annotations.unwrap_or_default().remove(FENCING_MARK);
        Ok(mark.filter(|m| FencingMark::claims(m)))
    })
    .await
    .unwrap();
    // The emulated BMC lands a power change 1-11 s after it is asked.
    assert_eq!(bmc_power(node), "On", "claimed before the power-off");
    let record = scene.wait_fenced(&node.name, Duration::from_secs(60)).await;
    assert!(
        record["proof"]
            .as_str()
            .unwrap()
            .contains("after a power-off"),
        "{record}"
    );
    assert_eq!(bmc_power(node), "Off");
}

/// A node that renews its Lease while it is being proven off is alive: however close its proof
/// came to the power-off, it is left running.
#[tokio::test]
async fn a_node_whose_heartbeat_returns_during_its_proof_is_left_running() {
    let scene = Scene::new("fence-back", 3).await;
    let _fencer = scene.fencer(&scene.config(true, |_, _| {}), "fencer-0");
    let node = &scene.nodes[0];
    node.partition().unwrap();
    // Suspected; the power-off would go out once the silence has settled, ten seconds on.
    scene.wait_proof_begun(&node.name).await;
    node.reconnect().unwrap();
    let note = scene
        .wait_event(&node.name, "HeartbeatResumed", Duration::from_secs(60))
        .await;
    assert!(note.contains("left running"), "{note}");
    // Past the moment the power-off was due.
    tokio::time::sleep(Duration::from_secs(15)).await;
    assert_eq!(bmc_power(node), "On");
    assert!(!scene.tainted(&node.name).await);
    let fenced = scene.events(&node.name).await;
    assert!(!fenced.iter().any(|(r, _)| r == "Fenced"), "{fenced:?}");
}

#[tokio::test]
async fn a_clusterlabs_fence_agent_proves_a_node_off_and_powers_it_off() {
    let scene = Scene::new("fence-program", 3).await;
    // Debian's fence_redfish through the fence-agent interface, against the same BMC.
    let config = scene.config(true, |i, agent| {
        let bmc = scene.nodes[i].bmc().unwrap();
        let (host, port) = bmc.host_and_port().unwrap();
        let object = agent.as_object_mut().unwrap();
        object.remove("redfish");
        object.insert(
            "fenceAgent".into(),
            json!({"program": "fence_redfish", "options": {
                "ip": host, "ipport": port.to_string(), "ssl_insecure": "1",
                "systems-uri": bmc.system_path,
            }}),
        );
    });
    let _fencer = scene.fencer(&config, "fencer-0");
    let node = &scene.nodes[0];
    node.partition().unwrap();
    let record = scene.wait_fenced(&node.name, Duration::from_secs(90)).await;
    assert_eq!(
        record["proof"], "fence-agent said Off after a power-off",
        "{record}"
    );
    assert_eq!(bmc_power(node), "Off");
}

#[tokio::test]
async fn a_partitioned_node_is_not_fenced_without_leave_to_power_it_off() {
    let scene = Scene::new("fence-alive", 3).await;
    let _fencer = scene.fencer(&scene.config(false, |_, _| {}), "fencer-0");
    let node = &scene.nodes[0];
    node.partition().unwrap();
    scene.assert_left_running(node, "powerOff: false").await;
}

/// A cordoned node may be rebooting for maintenance: it stops heartbeating while its BMC says
/// On. It is never powered off, even with `powerOff: true`; powered off it would stay off.
#[tokio::test]
async fn a_cordoned_node_is_never_powered_off() {
    let scene = Scene::new("fence-cordoned", 3).await;
    let _fencer = scene.fencer(&scene.config(true, |_, _| {}), "fencer-0");
    let node = &scene.nodes[0];
    kubectl_ok(&["cordon", &node.name]).unwrap();
    node.partition().unwrap();
    scene.assert_left_running(node, "cordoned").await;
}

/// A fence record owns only the taint written with it. Beside a taint someone added after
/// ours was removed by hand, it is stale: that taint stays, though the node is back with a
/// new bootID, and an Event says why. Beside its own taint, the same record lifts it.
#[tokio::test]
async fn a_fence_record_left_behind_owns_no_later_taint() {
    let scene = Scene::new("fence-stale", 3).await;
    let (theirs, ours) = (&scene.nodes[0], &scene.nodes[1]);
    let fenced_at = "2026-01-01T00:00:00Z".parse().unwrap();
    let record = FenceRecord {
        suspected_at: fenced_at,
        proven_at: fenced_at,
        fenced_at,
        reason: "an earlier fence".into(),
        agent: "bmc-0".into(),
        proof: "redfish said Off".into(),
        boot_id: "a-boot-before-this-one".into(),
        fenced_by: "fencer-0".into(),
    };
    let nodes: Api<Node> = Api::all(scene.client.clone());
    let someone_elses = Taint {
        time_added: Some(Time("2026-02-01T00:00:00Z".parse().unwrap())),
        ..record.taint()
    };
    for (node, taint) in [(theirs, someone_elses), (ours, record.taint())] {
        let patch = json!({
            "metadata": {"annotations": {FENCED: record.to_annotation()}},
            "spec": {"taints": [taint]}
        });
        nodes
            .patch(&node.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
    }
    let _fencer = scene.fencer(&scene.config(true, |_, _| {}), "fencer-0");
    eventually(
        Duration::from_secs(30),
        "our taint to be lifted",
        || async { Ok((!scene.tainted(&ours.name).await).then_some(())) },
    )
    .await
    .unwrap();
    let note = scene
        .wait_event(&theirs.name, "StaleRecord", Duration::from_secs(30))
        .await;
    assert!(note.contains("someone else's"), "{note}");
    assert!(scene.tainted(&theirs.name).await);
}

/// A being-fenced mark left by a leader that died mid-proof is cleared once the node is seen
/// healthy: the extender would otherwise shun the node for good.
#[tokio::test]
async fn a_stale_being_fenced_mark_on_a_healthy_node_is_cleared() {
    let scene = Scene::new("fence-mark", 3).await;
    let node = &scene.nodes[0];
    let mark = format!(r#"{FENCING_MARK}={{"agent":"bmc-0","since":"2026-01-01T00:00:00Z"}}"#);
    kubectl_ok(&["annotate", "node", &node.name, &mark]).unwrap();
    let _fencer = scene.fencer(&scene.config(true, |_, _| {}), "fencer-0");
    scene
        .wait_fencing_mark(&node.name, false, "the mark to be cleared")
        .await;
    assert_eq!(bmc_power(node), "On");
}

/// An out-of-service taint someone else puts on the node while it is being proven off is
/// theirs: it is not taken over, and no record of ours joins it.
#[tokio::test]
async fn an_out_of_service_taint_added_during_the_proof_is_left_to_its_owner() {
    let scene = Scene::new("fence-foreign", 3).await;
    let _fencer = scene.fencer(&scene.config(true, |_, _| {}), "fencer-0");
    let node = &scene.nodes[0];
    node.partition().unwrap();
    // The proof waits for the silence to settle before it powers the node off.
    scene.wait_proof_begun(&node.name).await;
    let taint = format!("{OUT_OF_SERVICE}=nodeshutdown:NoExecute");
    kubectl_ok(&["taint", "node", &node.name, &taint]).unwrap();
    scene
        .wait_fencing_mark(&node.name, false, "the proof to end")
        .await;
    let after = scene.node(&node.name).await;
    let annotations = after.metadata.annotations.unwrap_or_default();
    assert!(!annotations.contains_key(FENCED), "{annotations:?}");
    let taints = after.spec.and_then(|s| s.taints).unwrap_or_default();
    let theirs = taints.iter().find(|t| t.key == OUT_OF_SERVICE).unwrap();
    assert_eq!(theirs.value.as_deref(), Some("nodeshutdown"));
}

#[tokio::test]
async fn a_dry_run_proves_and_reports_but_writes_nothing() {
    // Four nodes, so that two silent ones are not more than half.
    let scene = Scene::new("fence-dry", 4).await;
    let config = scene.config(true, |_, _| {});
    let started = std::time::Instant::now();
    let fencer = scene.fencer_with(&config, "fencer-0", &["--dry-run"]);
    let (alive, dead) = (&scene.nodes[0], &scene.nodes[1]);
    alive.partition().unwrap();
    dead.power_off().unwrap();
    eventually(
        Duration::from_secs(60),
        "the dry run's verdicts",
        || async {
            let log = fencer.log();
            Ok(
                (log.contains("would power it off") && log.contains("dry run: would taint"))
                    .then_some(()),
            )
        },
    )
    .await
    .unwrap();
    // Each node's proof is retried no sooner than 10 s after the last began.
    let attempts = fencer.log().matches("suspected; proving it off").count();
    let most = 2 * (started.elapsed().as_secs() as usize / 10 + 1);
    assert!(
        attempts <= most,
        "{attempts} proofs in {:?}",
        started.elapsed()
    );
    for node in [alive, dead] {
        assert!(!scene.tainted(&node.name).await, "{} tainted", node.name);
        let annotations = scene
            .node(&node.name)
            .await
            .metadata
            .annotations
            .unwrap_or_default();
        assert!(
            !annotations.contains_key(FENCING_MARK),
            "{} marked",
            node.name
        );
        assert!(scene.events(&node.name).await.is_empty(), "Events recorded");
    }
    assert_eq!(bmc_power(alive), "On", "a dry run powered a node off");
}

#[tokio::test]
async fn two_of_three_nodes_silent_at_once_fences_nothing() {
    let scene = Scene::new("fence-share", 3).await;
    let _fencer = scene.fencer(&scene.config(true, |_, _| {}), "fencer-0");
    scene.nodes[0].partition().unwrap();
    scene.nodes[1].partition().unwrap();
    for node in &scene.nodes[..2] {
        let note = scene
            .wait_event(&node.name, "TooManySilent", Duration::from_secs(60))
            .await;
        assert!(note.contains("2 of 3"), "{note}");
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    for node in &scene.nodes[..2] {
        assert!(!scene.tainted(&node.name).await, "{} fenced", node.name);
        assert_eq!(bmc_power(node), "On", "{} powered off", node.name);
    }
}

#[tokio::test]
async fn the_taint_comes_off_after_a_power_cycle_and_stays_without_one() {
    let scene = Scene::new("fence-recover", 3).await;
    // The second node's "device" proves nothing: it is fenced on silence alone, and a healed
    // partition brings it back with the bootID it had.
    let config = scene.config(true, |i, agent| {
        if i == 1 {
            let object = agent.as_object_mut().unwrap();
            object.remove("redfish");
            object.remove("credentialsSecret");
            object.insert("powerOff".into(), json!(false));
            object.insert("none".into(), json!({"acknowledge": NONE_ACKNOWLEDGEMENT}));
        }
    });
    let _fencer = scene.fencer(&config, "fencer-0");
    let (cycled, healed) = (&scene.nodes[0], &scene.nodes[1]);

    cycled.power_off().unwrap();
    let record = scene
        .wait_fenced(&cycled.name, Duration::from_secs(60))
        .await;
    cycled.power_on().unwrap();
    eventually(Duration::from_secs(60), "the taint to come off", || async {
        Ok((!scene.tainted(&cycled.name).await).then_some(()))
    })
    .await
    .unwrap();
    let node = scene.node(&cycled.name).await;
    assert_ne!(
        node.status.unwrap().node_info.unwrap().boot_id,
        record["bootId"].as_str().unwrap()
    );
    assert!(
        !node
            .metadata
            .annotations
            .unwrap_or_default()
            .contains_key(FENCED),
        "the record goes with the taint"
    );
    scene
        .wait_event(&cycled.name, "Unfenced", Duration::from_secs(5))
        .await;

    // Powered off by the fencer, but the kubelet comes back with the same bootID: the device
    // did not cut the machine's power, so whatever ran there may still run.
    healed.partition().unwrap();
    scene
        .wait_fenced(&healed.name, Duration::from_secs(60))
        .await;
    healed.reconnect().unwrap();
    let note = scene
        .wait_event(&healed.name, "FenceKept", Duration::from_secs(60))
        .await;
    assert!(note.contains("never power-cycled"), "{note}");
    assert!(scene.tainted(&healed.name).await);
}

#[tokio::test]
async fn a_failing_device_is_retried_reported_and_never_fenced() {
    let scene = Scene::new("fence-fail", 3).await;
    scene
        .secret("wrong", "admin", "not-the-password-5f3e")
        .await;
    let config = scene.config(true, |i, agent| {
        if i == 0 {
            agent["credentialsSecret"] = json!("wrong");
        }
        if i == 1 {
            // A port nothing listens on.
            agent["redfish"]["address"] = json!("https://127.0.0.1:9");
        }
    });
    let fencer = scene.fencer(&config, "fencer-0");
    let bmc0 = scene.nodes[0].bmc().unwrap();
    scene.nodes[0].partition().unwrap();
    let note = scene
        .wait_event(
            &scene.nodes[0].name,
            "NotProvenOff",
            Duration::from_secs(90),
        )
        .await;
    assert!(note.contains("credentials"), "{note}");
    assert!(!scene.tainted(&scene.nodes[0].name).await);
    let log = fencer.log();
    assert!(
        log.matches("refused the credentials").count() >= 2,
        "retried: {log}"
    );
    for secret in ["not-the-password-5f3e", bmc0.password.as_str()] {
        assert!(!log.contains(secret), "a password reached the log");
        assert!(!note.contains(secret));
    }
    scene.nodes[0].reconnect().unwrap();

    scene.nodes[1].partition().unwrap();
    let note = scene
        .wait_event(
            &scene.nodes[1].name,
            "NotProvenOff",
            Duration::from_secs(90),
        )
        .await;
    assert!(note.contains("cannot reach"), "{note}");
    assert!(!scene.tainted(&scene.nodes[1].name).await);
}

#[tokio::test]
async fn when_the_leader_dies_mid_fence_the_other_replica_finishes_it_once() {
    let scene = Scene::new("fence-leader", 3).await;
    let config = scene.config(true, |_, _| {});
    let mut first = scene.fencer(&config, "fencer-a");
    let leases: Api<Lease> = Api::namespaced(scene.client.clone(), scene.ns());
    eventually(Duration::from_secs(20), "fencer-a to lead", || async {
        let holder = leases
            .get_opt("fencer")
            .await?
            .and_then(|l| l.spec?.holder_identity);
        Ok((holder.as_deref() == Some("fencer-a")).then_some(()))
    })
    .await
    .unwrap();
    let _second = scene.fencer(&config, "fencer-b");

    let node = &scene.nodes[0];
    node.partition().unwrap();
    // Kill the leader while it is proving the node off (the power-off lands seconds later).
    scene.wait_proof_begun(&node.name).await;
    first.kill();
    let record = scene.wait_fenced(&node.name, Duration::from_secs(90)).await;
    assert_eq!(record["fencedBy"], "fencer-b");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let fenced_events = scene
        .events(&node.name)
        .await
        .into_iter()
        .filter(|(reason, _)| reason == "Fenced")
        .count();
    assert_eq!(fenced_events, 1, "fenced once");
}

/// The BMC's PowerState through the real Debian `fence_redfish`.
fn bmc_power(node: &TestNode) -> &'static str {
    node.bmc().unwrap().power_state().unwrap()
}
