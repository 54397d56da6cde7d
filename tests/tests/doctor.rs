//! `jellyfin-ha doctor` against the local control plane: a healthy setup passes, each broken
//! setup fails with its fix, and the command writes nothing.
//!
//! Each test keeps doctor's view to itself: its namespace is both the checked namespace and
//! the install namespace (config, fencer Lease, credentials), and `--node-selector` limits
//! the node checks to the test's own kwok nodes.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use jellyfin_ha_e2e::{
    OWN_REGISTRATION, RoleProcess, TestNamespace, TestNode, binary, client, create_rbd_claim,
    eventually, kubeconfig_path, kubectl_ok, repo_root,
};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, Node, PersistentVolume, PersistentVolumeClaim, Pod, Secret,
};
use k8s_openapi::api::storage::v1::CSIDriver;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Client, Resource, ResourceExt};
use serde_json::{Value, json};

const NODE_LABEL: &str = "jellyfin-ha.io/e2e-doctor";
const QUICKSYNC_LABEL: &str = "intel.feature.node.kubernetes.io/gpu";

fn dir(namespace: &str) -> PathBuf {
    let dir = repo_root().join("target/e2e-doctor").join(namespace);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A test's namespace, nodes (labelled for `--node-selector`), and config file.
struct Scene {
    client: Client,
    namespace: TestNamespace,
    nodes: Vec<TestNode>,
    config: PathBuf,
}

impl Scene {
    async fn new(prefix: &str, gpus: &[u32]) -> Self {
        let client = client().await.unwrap();
        let namespace =
            TestNamespace::create_labelled(&client, prefix, &[(OWN_REGISTRATION, "true")])
                .await
                .unwrap();
        let nodes: Vec<TestNode> = gpus
            .iter()
            .map(|g| TestNode::add(&format!("e2e-{prefix}"), *g).unwrap())
            .collect();
        for node in &nodes {
            kubectl_ok(&[
                "label",
                "node",
                &node.name,
                &format!("{NODE_LABEL}={}", namespace.name),
            ])
            .unwrap();
        }
        let config = dir(&namespace.name).join("config.yaml");
        Self {
            client,
            namespace,
            nodes,
            config,
        }
    }

    fn ns(&self) -> &str {
        &self.namespace.name
    }

    /// The fencer's section: the test's nodes only, each with its own Redfish agent;
    /// `address` replaces a node's BMC address.
    async fn write_config(&self, address: impl Fn(usize) -> Option<String>) {
        let mut agents = Vec::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let bmc = node.bmc().unwrap();
            let secret: Secret = serde_json::from_value(json!({
                "metadata": {"name": format!("bmc-{i}")},
                "stringData": {"username": bmc.username, "password": bmc.password},
            }))
            .unwrap();
            Api::<Secret>::namespaced(self.client.clone(), self.ns())
                .create(&PostParams::default(), &secret)
                .await
                .unwrap();
            agents.push(json!({
                "name": format!("bmc-{i}"), "nodes": [node.name],
                "credentialsSecret": format!("bmc-{i}"),
                "redfish": {"address": address(i).unwrap_or(bmc.address),
                            "systemPath": bmc.system_path, "caFile": bmc.ca_file},
            }));
        }
        let config = json!({"fencer": {
            "nodeSelector": {NODE_LABEL: self.ns()},
            "agentTimeoutSeconds": 3,
            "agents": agents,
        }});
        std::fs::write(&self.config, serde_json::to_string_pretty(&config).unwrap()).unwrap();
    }

    /// `jellyfin-ha doctor -o json` on this scene: its exit code and report.
    fn doctor(&self) -> (i32, Value) {
        let selector = format!("{NODE_LABEL}={}", self.ns());
        let output = Command::new(binary())
            .args([
                "doctor",
                "-o",
                "json",
                "-n",
                self.ns(),
                "--install-namespace",
                self.ns(),
            ])
            .args([
                "--node-selector",
                &selector,
                "--fencer-lease",
                "jellyfin-ha-fencer",
            ])
            .arg("--kubeconfig")
            .arg(kubeconfig_path())
            .arg("--config")
            .arg(&self.config)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!(
                "doctor printed no report ({e}): {stdout}\n{}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
        (output.status.code().unwrap_or(-1), report)
    }

    /// A Deployment of Jellyfin pinned to this scene's nodes, mounting `claims`.
    fn deployment(&self, strategy: &str, claims: &[&str]) -> Deployment {
        let volumes: Vec<Value> = claims
            .iter()
            .map(|c| json!({"name": c, "persistentVolumeClaim": {"claimName": c}}))
            .collect();
        let mounts: Vec<Value> = claims
            .iter()
            .map(|c| json!({"name": c, "mountPath": format!("/{c}")}))
            .collect();
        serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "jellyfin"},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "jellyfin"}},
                "strategy": {"type": strategy},
                "template": {
                    "metadata": {"labels": {"app": "jellyfin"},
                                 "annotations": {"jellyfin-ha.io/inject": "true"}},
                    "spec": {
                        "nodeSelector": {NODE_LABEL: self.ns()},
                        "containers": [{"name": "jellyfin", "image": "jellyfin/jellyfin:10.10.7",
                                        "volumeMounts": mounts}],
                        "volumes": volumes
                    }
                }
            }
        }))
        .unwrap()
    }

    async fn create_deployment(&self, deployment: &Deployment) {
        Api::<Deployment>::namespaced(self.client.clone(), self.ns())
            .create(&PostParams::default(), deployment)
            .await
            .unwrap();
    }

    /// Waits until the Deployment's pod runs on one of this scene's nodes.
    async fn wait_running(&self) -> Pod {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), self.ns());
        eventually(Duration::from_secs(60), "the pod to run", || async {
            Ok(pods
                .list(&ListParams::default().labels("app=jellyfin"))
                .await?
                .items
                .into_iter()
                .find(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")))
        })
        .await
        .unwrap()
    }

    /// resourceVersions of everything doctor reads that nothing else rewrites: the test's
    /// namespaced objects, its PersistentVolumes, CSIDrivers and webhook registration; for
    /// the nodes and Deployments, whose status controllers keep rewriting, what doctor could
    /// change instead (generation, labels, annotations, taints).
    async fn versions(&self, extra: &[String]) -> BTreeMap<String, String> {
        let mut versions = BTreeMap::new();
        let ns = self.ns();
        let c = &self.client;
        let params = ListParams::default();
        macro_rules! record {
            ($kind:ty, $api:expr) => {
                for object in $api.list(&params).await.unwrap().items {
                    let key = format!("{}/{}", <$kind>::kind(&()), object.name_any());
                    versions.insert(key, object.resource_version().unwrap_or_default());
                }
            };
        }
        record!(ConfigMap, Api::<ConfigMap>::namespaced(c.clone(), ns));
        record!(Secret, Api::<Secret>::namespaced(c.clone(), ns));
        // The deployment controller keeps rewriting a Deployment's status after its pod runs;
        // what doctor could change is its spec (generation) and metadata.
        for object in Api::<Deployment>::namespaced(c.clone(), ns)
            .list(&params)
            .await
            .unwrap()
            .items
        {
            let meta = json!({
                "generation": object.metadata.generation,
                "labels": object.metadata.labels,
                "annotations": object.metadata.annotations,
            });
            versions.insert(
                format!("Deployment/{}", object.name_any()),
                meta.to_string(),
            );
        }
        record!(
            PersistentVolumeClaim,
            Api::<PersistentVolumeClaim>::namespaced(c.clone(), ns)
        );
        for name in extra {
            let (kind, name) = name.split_once('/').unwrap();
            let version = match kind {
                "PersistentVolume" => Api::<PersistentVolume>::all(c.clone())
                    .get(name)
                    .await
                    .unwrap()
                    .resource_version(),
                "CSIDriver" => Api::<CSIDriver>::all(c.clone())
                    .get(name)
                    .await
                    .unwrap()
                    .resource_version(),
                "MutatingWebhookConfiguration" => {
                    Api::<MutatingWebhookConfiguration>::all(c.clone())
                        .get(name)
                        .await
                        .unwrap()
                        .resource_version()
                }
                other => panic!("unknown kind {other}"),
            };
            versions.insert(format!("{kind}/{name}"), version.unwrap_or_default());
        }
        for node in &self.nodes {
            let object = Api::<Node>::all(c.clone()).get(&node.name).await.unwrap();
            let meta = json!({
                "labels": object.metadata.labels,
                "annotations": object.metadata.annotations,
                "taints": object.spec.and_then(|s| s.taints),
            });
            versions.insert(format!("Node/{}", node.name), meta.to_string());
        }
        versions
    }
}

/// The findings of `check`, as (verdict, subject, saw, fix).
fn findings(report: &Value, check: &str) -> Vec<(String, String, String, String)> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["check"] == check)
        .map(|f| {
            let s = |k: &str| f[k].as_str().unwrap_or_default().to_string();
            (s("verdict"), s("subject"), s("saw"), s("fix"))
        })
        .collect()
}

/// The one finding of `check` with `verdict`; its saw and fix must contain the texts given.
#[track_caller]
fn assert_finding(report: &Value, check: &str, verdict: &str, saw: &str, fix: &str) -> String {
    let all = findings(report, check);
    let found = all
        .iter()
        .find(|(v, _, s, f)| v == verdict && s.contains(saw) && f.contains(fix))
        .unwrap_or_else(|| panic!("no {verdict} {check} saying {saw:?} / {fix:?}: {all:#?}"));
    found.1.clone()
}

/// A `jellyfin-ha fencer --dry-run` leading in the test's namespace, stopped when dropped.
struct Fencer(Child);

impl Fencer {
    fn start(scene: &Scene) -> Self {
        let log = dir(scene.ns()).join("fencer.log");
        let child = Command::new(binary())
            .args(["fencer", "--dry-run", "--admin-listen", "127.0.0.1:0"])
            .args(["--namespace", scene.ns(), "--identity", "doctor-e2e"])
            .args(["--leader-lease", "jellyfin-ha-fencer"])
            .arg("--config")
            .arg(&scene.config)
            .env("KUBECONFIG", kubeconfig_path())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        Self(child)
    }
}

impl Drop for Fencer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn wait_leading(scene: &Scene) {
    let leases: Api<Lease> = Api::namespaced(scene.client.clone(), scene.ns());
    eventually(Duration::from_secs(30), "the fencer to lead", || async {
        Ok(leases
            .get_opt("jellyfin-ha-fencer")
            .await?
            .and_then(|l| l.spec?.holder_identity))
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_healthy_setup_passes_and_doctor_writes_nothing() {
    let scene = Scene::new("doctor-ok", &[2, 2]).await;
    let ns = scene.ns();
    // A webhook of this install's own: it reads which scheduler is there from this
    // namespace, where no scheduling overlay is applied (the local kube-scheduler runs
    // without the extender), so pods carry no marker and schedule.
    let webhook = RoleProcess::webhook(&dir(ns).join("webhook"), &["--namespace", ns])
        .await
        .unwrap();
    let url = format!("{}/mutate", webhook.served.url);
    let registration = webhook
        .served
        .register_own(&scene.client, ns, &url)
        .await
        .unwrap();
    scene.write_config(|_| None).await;
    let _fencer = Fencer::start(&scene);
    let pv = create_rbd_claim(&scene.client, ns, "config").await.unwrap();
    // The apiserver picks up a new registration asynchronously: a server-side dry run shows
    // when it is in effect.
    let deployments: Api<Deployment> = Api::namespaced(scene.client.clone(), ns);
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let deployment = scene.deployment("Recreate", &["config"]);
    eventually(
        Duration::from_secs(20),
        "the registration to take effect",
        || async {
            let stored = deployments.create(&dry_run, &deployment).await?;
            let template = stored.spec.and_then(|s| s.template.metadata);
            let annotations = template.and_then(|m| m.annotations).unwrap_or_default();
            Ok(annotations
                .contains_key("jellyfin-ha.io/mutations")
                .then_some(()))
        },
    )
    .await
    .unwrap();
    scene.create_deployment(&deployment).await;
    scene.wait_running().await;
    wait_leading(&scene).await;

    let extra = vec![
        format!("PersistentVolume/{pv}"),
        format!("MutatingWebhookConfiguration/{}", registration.name),
    ];
    let before = scene.versions(&extra).await;
    let (code, report) = scene.doctor();
    let after = scene.versions(&extra).await;
    assert_eq!(before, after, "doctor wrote to the cluster");
    for node in &scene.nodes {
        assert_eq!(
            node.bmc().unwrap().power_state().unwrap(),
            "On",
            "a status query only"
        );
    }

    let fails: Vec<&Value> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["verdict"] == "fail")
        .collect();
    assert!(fails.is_empty(), "{fails:#?}");
    assert_eq!(code, 0, "{report:#}");
    for (check, verdict, saw, fix) in [
        ("gpu/label", "ok", "2 QuickSync node(s)", ""),
        ("workload/strategy", "ok", "Recreate", ""),
        ("workload/template", "ok", "carries everything", ""),
        ("workload/unmutated-pod", "ok", "1 opted-in pod(s)", ""),
        ("storage/attach", "ok", "rbd.csi.ceph.com attaches", ""),
        ("jellyfin-ha/webhook-ca", "ok", "valid for", ""),
        ("jellyfin-ha/fencer", "ok", "doctor-e2e leads", ""),
        ("jellyfin-ha/fence-mapping", "ok", "2 eligible node(s)", ""),
        (
            "jellyfin-ha/fence-agent",
            "ok",
            "2 fence agent(s) answered",
            "",
        ),
        ("failover/estimate", "ok", "dominates", ""),
        (
            "jellyfin-ha/extender",
            "warn",
            "no ConfigMap jellyfin-ha-scheduling",
            "manifests/scheduling/extender",
        ),
    ] {
        assert_finding(&report, check, verdict, saw, fix);
    }
    drop(registration);
}

#[tokio::test]
async fn each_broken_setup_fails_with_its_fix() {
    let scene = Scene::new("doctor-broken", &[1, 1]).await;
    let ns = scene.ns();
    let (unlabelled, unreachable) = (&scene.nodes[0], &scene.nodes[1]);
    // A GPU node whose QuickSync label never appeared.
    kubectl_ok(&[
        "label",
        "node",
        &unlabelled.name,
        &format!("{QUICKSYNC_LABEL}-"),
    ])
    .unwrap();
    // A BMC nobody answers at.
    scene
        .write_config(|i| (i == 1).then(|| "https://127.0.0.1:1".to_string()))
        .await;
    // A storage class whose driver has no attach step.
    let driver = format!("{ns}.noattach.example.com");
    let csi: CSIDriver = serde_json::from_value(json!({
        "metadata": {"name": driver}, "spec": {"attachRequired": false}
    }))
    .unwrap();
    Api::<CSIDriver>::all(scene.client.clone())
        .create(&PostParams::default(), &csi)
        .await
        .unwrap();
    let pv_name = format!("{ns}-media");
    let pv: PersistentVolume = serde_json::from_value(json!({
        "metadata": {"name": pv_name},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                 "storageClassName": "", "persistentVolumeReclaimPolicy": "Delete",
                 "claimRef": {"namespace": ns, "name": "media"},
                 "csi": {"driver": driver, "volumeHandle": pv_name}}
    }))
    .unwrap();
    Api::<PersistentVolume>::all(scene.client.clone())
        .create(&PostParams::default(), &pv)
        .await
        .unwrap();
    let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": "media"},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "", "volumeName": pv_name,
                 "resources": {"requests": {"storage": "1Gi"}}}
    }))
    .unwrap();
    Api::<PersistentVolumeClaim>::namespaced(scene.client.clone(), ns)
        .create(&PostParams::default(), &pvc)
        .await
        .unwrap();
    let rbd = create_rbd_claim(&scene.client, ns, "config").await.unwrap();
    // No registration covers this namespace, so the RollingUpdate Deployment and its pod are
    // stored as written: unmutated.
    scene
        .create_deployment(&scene.deployment("RollingUpdate", &["config", "media"]))
        .await;
    scene.wait_running().await;

    let extra = vec![
        format!("PersistentVolume/{rbd}"),
        format!("PersistentVolume/{pv_name}"),
        format!("CSIDriver/{driver}"),
    ];
    let before = scene.versions(&extra).await;
    let (code, report) = scene.doctor();
    assert_eq!(
        before,
        scene.versions(&extra).await,
        "doctor wrote to the cluster"
    );
    assert_ne!(code, 0, "{report:#}");

    let no_attach = format!("{driver} has no attach step");
    // (check, verdict, what it saw, its fix, the node it names)
    for (check, verdict, saw, fix, node) in [
        (
            "gpu/label",
            "fail",
            "lacks the QuickSync label",
            "kubectl label node",
            Some(&unlabelled.name),
        ),
        (
            "workload/strategy",
            "fail",
            "RollingUpdate with the ReadWriteOnce claim config, media",
            "Recreate",
            None,
        ),
        (
            "workload/unmutated-pod",
            "fail",
            "created without the webhook",
            "delete the pod",
            None,
        ),
        (
            "storage/attach",
            "fail",
            no_attach.as_str(),
            "attaches",
            None,
        ),
        (
            "storage/attach",
            "ok",
            "rbd.csi.ceph.com attaches",
            "",
            None,
        ),
        (
            "jellyfin-ha/fence-agent",
            "fail",
            "does not answer a status query",
            "network path",
            Some(&unreachable.name),
        ),
        (
            "jellyfin-ha/webhook",
            "fail",
            "no MutatingWebhookConfiguration",
            "manifests/overlays",
            None,
        ),
        (
            "jellyfin-ha/fencer",
            "fail",
            "no fencer leads",
            "manifests/fencer",
            None,
        ),
    ] {
        let subject = assert_finding(&report, check, verdict, saw, fix);
        if let Some(node) = node {
            assert_eq!(&subject, node, "{check}");
        }
    }

    Api::<CSIDriver>::all(scene.client.clone())
        .delete(&driver, &DeleteParams::default())
        .await
        .unwrap();
    let _ = Api::<PersistentVolume>::all(scene.client.clone())
        .delete(&pv_name, &DeleteParams::default())
        .await;
}
