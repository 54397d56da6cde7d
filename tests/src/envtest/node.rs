//! A kwok node of the local control plane, handled like a machine: added with a kubelet and a
//! BMC, powered off and on through its BMC, partitioned from the API and reconnected.
//!
//! The kubelet is a kwok that manages only this node, heartbeats its Lease (renewed every
//! duration/4, as the kubelet does) and runs its pods, those with claims only once their
//! volumes are attached. Two marker files in the BMC's directory carry what the API cannot
//! tell between processes: `off-requested` (a ForceOff was sent and may not have landed yet)
//! and `partitioned` (the kubelet was cut off while the machine stays on).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use crc::{CRC_32_CKSUM, Crc};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node as NodeObject, PersistentVolume};
use k8s_openapi::api::storage::v1::{CSINode, VolumeAttachment};
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

use super::process::remove_if_present;
use super::{Envtest, log};

/// The flag a user names the node's iGPU shares with, and the resource they become.
const GPU_RESOURCE: &str = "gpu.intel.com/i915";
const GPU_LABEL: &str = "intel.feature.node.kubernetes.io/gpu";
/// The CSI driver whose node plugin the node publishes in its CSINode.
const CSI_DRIVER: &str = "rbd.csi.ceph.com";
const LEASE_NAMESPACE: &str = "kube-node-lease";
const READY_AFTER_ADD: Duration = Duration::from_secs(30);
const READY_AFTER_BOOT: Duration = Duration::from_secs(60);

/// What a node is made with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeShape {
    /// `gpu.intel.com/i915` shares; 0 is a node without the GPU label and resource.
    pub gpus: u32,
    /// Quantities, as the Node's capacity takes them.
    pub cpu: String,
    pub memory: String,
}

impl Default for NodeShape {
    fn default() -> Self {
        Self {
            gpus: 1,
            cpu: "8".into(),
            memory: "32Gi".into(),
        }
    }
}

/// POSIX `cksum` of `text`: the CRC-32 of the bytes and then of their length.
fn cksum(text: &str) -> u32 {
    const CKSUM: Crc<u32> = Crc::<u32>::new(&CRC_32_CKSUM);
    let mut digest = CKSUM.digest();
    digest.update(text.as_bytes());
    let mut length = text.len();
    while length > 0 {
        digest.update(&[(length & 0xff) as u8]);
        length >>= 8;
    }
    digest.finalize()
}

/// A stable small number per node name, for its pod CIDR and node IP.
pub fn node_index(name: &str) -> u32 {
    cksum(name) % 250 + 1
}

/// A stable locally administered MAC per node name.
pub fn node_mac(name: &str) -> String {
    let [_, a, b, c] = cksum(name).to_be_bytes();
    format!("52:54:00:{a:02x}:{b:02x}:{c:02x}")
}

pub fn node_ip(name: &str) -> String {
    format!("10.255.0.{}", node_index(name))
}

/// The persistent volumes of the CSI VolumeAttachments attached to `node`.
pub fn attached_volumes(node: &str, attachments: &[VolumeAttachment]) -> Vec<String> {
    attachments
        .iter()
        .filter(|a| a.spec.node_name == node)
        .filter(|a| a.status.as_ref().is_some_and(|s| s.attached))
        .filter_map(|a| a.spec.source.persistent_volume_name.clone())
        .filter(|pv| !pv.is_empty())
        .collect()
}

/// The unique name the kubelet reports a CSI volume under: `kubernetes.io/csi/DRIVER^HANDLE`.
pub fn csi_unique_name(pv: &PersistentVolume) -> Option<String> {
    let csi = pv.spec.as_ref()?.csi.as_ref()?;
    Some(format!(
        "kubernetes.io/csi/{}^{}",
        csi.driver, csi.volume_handle
    ))
}

fn uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// `, volumesInUse: ["a","b"]` for the messages, or nothing when there are none.
fn volumes_note(in_use: &[String]) -> String {
    if in_use.is_empty() {
        return String::new();
    }
    let list = serde_json::to_string(in_use).unwrap_or_default();
    format!(", volumesInUse: {list}")
}

/// One node of the control plane, by name.
pub struct Node {
    envtest: Envtest,
    client: Client,
    pub name: String,
}

/// What was last done to a node, kept as an empty file beside its BMC state so that the next
/// command, another process, knows it (`hack/envtest.sh status` reads `partitioned` too).
#[derive(Clone, Copy)]
enum Marker {
    /// A ForceOff was sent and may not have landed yet.
    OffRequested,
    /// The kubelet was stopped while the machine stays on.
    Partitioned,
}

impl Marker {
    fn file_name(self) -> &'static str {
        match self {
            Marker::OffRequested => "off-requested",
            Marker::Partitioned => "partitioned",
        }
    }
}

impl Node {
    /// The node `name` of `envtest`, whose control plane must be up.
    pub async fn new(envtest: &Envtest, name: &str) -> anyhow::Result<Self> {
        Ok(Self {
            client: envtest.client().await?,
            envtest: envtest.clone(),
            name: name.to_string(),
        })
    }

    fn kubelet(&self) -> String {
        format!("kwok-node-{}", self.name)
    }

    fn marker(&self, which: Marker) -> std::path::PathBuf {
        self.envtest
            .bmc_dir()
            .join(&self.name)
            .join(which.file_name())
    }

    fn nodes(&self) -> Api<NodeObject> {
        Api::all(self.client.clone())
    }

    async fn require(&self) -> anyhow::Result<NodeObject> {
        self.nodes()
            .get_opt(&self.name)
            .await?
            .with_context(|| format!("no node {}", self.name))
    }

    /// Creates the node with `shape` (unless it exists), its BMC and its kubelet, and waits
    /// until it is Ready.
    pub async fn add(&self, shape: &NodeShape) -> anyhow::Result<()> {
        let name = &self.name;
        let system_uuid = match self.nodes().get_opt(name).await? {
            Some(node) => {
                if !self.envtest.running(&self.kubelet()) {
                    bail!(
                        "node {name} exists but its kubelet is down; use: hack/envtest.sh \
                         node-power-on {name} (or node-reconnect)"
                    );
                }
                log(&format!("node {name} already exists"));
                node.status
                    .and_then(|s| s.node_info)
                    .map(|i| i.system_uuid)
                    .unwrap_or_default()
            }
            None => {
                // The BMC's system has the node's SMBIOS UUID, as real hardware does.
                let system_uuid = uuid();
                self.create(shape, &system_uuid).await?;
                log(&format!(
                    "created node {name} ({GPU_RESOURCE}: {})",
                    shape.gpus
                ));
                system_uuid
            }
        };
        let start_bmc = || {
            if self.envtest.running(&format!("bmc-{name}")) {
                return Ok(());
            }
            let (mac, ip) = (node_mac(name), node_ip(name));
            self.envtest.start_bmc(name, &system_uuid, &mac, &ip)
        };
        start_bmc()?;
        if !self.envtest.running(&self.kubelet()) {
            self.start_kubelet_process()?;
        }
        // The emulator is a third party's; one that dies starting is started once more, and
        // how it died is kept in its log.
        if let Err(e) = self.envtest.wait_bmc_up(name).await {
            log(&format!("{e:#}; starting it again"));
            start_bmc()?;
            self.envtest.wait_bmc_up(name).await?;
        }
        self.wait_ready(READY_AFTER_ADD).await?;
        let bmc = self.envtest.bmc(name)?;
        log(&format!(
            "node {name} is Ready; its BMC answers on {}",
            bmc.address
        ));
        Ok(())
    }

    /// The Node with its status (the kubelet registers this way) and its CSINode.
    async fn create(&self, shape: &NodeShape, system_uuid: &str) -> anyhow::Result<()> {
        let name = &self.name;
        let tools = self.envtest.node_tools()?;
        let mut labels = object(json!({
            "type": "kwok",
            "kubernetes.io/arch": "amd64",
            "kubernetes.io/os": "linux",
            "kubernetes.io/hostname": name,
        }));
        let mut resources = object(json!({
            "cpu": shape.cpu,
            "memory": shape.memory,
            "pods": "110",
            "ephemeral-storage": "100Gi",
        }));
        if shape.gpus > 0 {
            labels.insert(GPU_LABEL.into(), json!("true"));
            resources.insert(GPU_RESOURCE.into(), json!(shape.gpus.to_string()));
        }
        // The attach/detach annotation is what a kubelet sets so that the controller (not
        // the kubelet) attaches volumes to this node.
        let node = json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "annotations": {
                    "kwok.x-k8s.io/node": "fake",
                    "node.alpha.kubernetes.io/ttl": "0",
                    "volumes.kubernetes.io/controller-managed-attach-detach": "true",
                },
                "labels": labels,
            },
            "status": {
                "capacity": resources,
                "allocatable": resources,
                "nodeInfo": {
                    "architecture": "amd64",
                    "bootID": uuid(),
                    "machineID": uuid().replace('-', ""),
                    "systemUUID": system_uuid,
                    "operatingSystem": "linux",
                    "osImage": "Debian GNU/Linux 13 (trixie)",
                    "kernelVersion": "6.12.0-envtest",
                    "containerRuntimeVersion": "containerd://2.1.0",
                    "kubeletVersion": tools.kubelet_version,
                    "kubeProxyVersion": "",
                },
            },
        });
        self.nodes()
            .create(&PostParams::default(), &serde_json::from_value(node)?)
            .await
            .with_context(|| format!("creating node {name}"))?;
        // What the ceph-csi node plugin's registration makes the kubelet publish.
        let csi_node = json!({
            "apiVersion": "storage.k8s.io/v1",
            "kind": "CSINode",
            "metadata": {"name": name},
            "spec": {"drivers": [{"name": CSI_DRIVER, "nodeID": name}]},
        });
        Api::<CSINode>::all(self.client.clone())
            .create(&PostParams::default(), &serde_json::from_value(csi_node)?)
            .await
            .with_context(|| format!("creating the CSINode of {name}"))?;
        Ok(())
    }

    fn start_kubelet_process(&self) -> anyhow::Result<()> {
        let tools = self.envtest.node_tools()?;
        let lease = self.envtest.lease_duration_seconds()?;
        let index = node_index(&self.name);
        let state = &self.envtest.state_dir;
        let pod_ready = crate::repo_root().join("hack/envtest/kubelet/pod-ready.yaml");
        let args = [
            format!("--kubeconfig={}", self.envtest.kubeconfig().display()),
            format!("--config={}", state.join("kubelet-stages.yaml").display()),
            format!("--config={}", pod_ready.display()),
            format!("--manage-single-node={}", self.name),
            format!("--node-lease-duration-seconds={lease}"),
            format!("--node-ip={}", node_ip(&self.name)),
            format!("--cidr=10.244.{index}.1/24"),
        ];
        let home = state.join("kwok-home");
        self.envtest
            .start_process(&self.kubelet(), &tools.kwok, &args, &[("HOME", &home)])
    }

    /// Waits until the node is Ready and its kubelet holds a Lease. A kubelet that comes back
    /// finds the node still Ready from before (the grace period has not run out), so Ready
    /// alone would not tell that it runs: its Lease, deleted before it started, does.
    async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let node = self.nodes().get_opt(&self.name).await?;
            let conditions = node.and_then(|n| n.status).and_then(|s| s.conditions);
            let ready = conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            if ready && self.leases().get_opt(&self.name).await?.is_some() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "node {} did not become Ready within {}s\n{}",
                    self.name,
                    timeout.as_secs(),
                    self.envtest.log_tail(&self.kubelet(), 20)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The unique names of the volumes attached to the node: status.volumesAttached lags the
    /// VolumeAttachments by up to seconds, so attached CSI VolumeAttachments count too.
    async fn volumes_attached(&self) -> anyhow::Result<Vec<String>> {
        let node = self.require().await?;
        let mut names: BTreeSet<String> = node
            .status
            .and_then(|s| s.volumes_attached)
            .into_iter()
            .flatten()
            .map(|v| v.name)
            .collect();
        let attachments = Api::<VolumeAttachment>::all(self.client.clone())
            .list(&Default::default())
            .await?
            .items;
        let pvs = Api::<PersistentVolume>::all(self.client.clone());
        for pv in attached_volumes(&self.name, &attachments) {
            if let Some(pv) = pvs.get_opt(&pv).await? {
                names.extend(csi_unique_name(&pv));
            }
        }
        Ok(names.into_iter().collect())
    }

    /// The kubelet stops at once, with no goodbye: nothing is written to the API on behalf of
    /// the node except status.volumesInUse. kwok does not report it, but a kubelet running
    /// pods with attached volumes has them mounted and reported when it stops. Without it the
    /// attach/detach controller would detach at once instead of waiting for the unmount (6
    /// min) or the out-of-service taint. The volumes, or None when the kubelet was not running.
    async fn kill_kubelet(&self) -> anyhow::Result<Option<Vec<String>>> {
        if !self.envtest.running(&self.kubelet()) {
            return Ok(None);
        }
        let in_use = self.volumes_attached().await?;
        if !in_use.is_empty() {
            let patch = json!({"status": {"volumesInUse": in_use}});
            self.nodes()
                .patch_status(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
        }
        Ok(self
            .envtest
            .kill_process(&self.kubelet())?
            .then_some(in_use))
    }

    /// The kubelet comes back: its stale Lease goes first (kwok's holder identity is per
    /// process, so it would wait for the old Lease to expire; a kubelet renews its own at
    /// once). `boot_id` None keeps the node's bootID. volumesInUse is cleared: a running kwok
    /// does not report it.
    async fn start_kubelet(&self, boot_id: Option<&str>) -> anyhow::Result<()> {
        let mut status = object(json!({"volumesInUse": null}));
        if let Some(boot_id) = boot_id {
            status.insert("nodeInfo".into(), json!({"bootID": boot_id}));
        }
        self.nodes()
            .patch_status(
                &self.name,
                &PatchParams::default(),
                &Patch::Merge(&json!({ "status": status })),
            )
            .await?;
        self.delete_lease().await?;
        self.start_kubelet_process()?;
        self.wait_ready(READY_AFTER_BOOT).await
    }

    fn leases(&self) -> Api<Lease> {
        Api::namespaced(self.client.clone(), LEASE_NAMESPACE)
    }

    async fn delete_lease(&self) -> anyhow::Result<()> {
        self.leases()
            .delete(&self.name, &DeleteParams::default())
            .await
            .map(drop)
            .or_else(not_found_is_fine)
    }

    /// Power loss: the BMC is told ForceOff (it says Off 1-11 s later) and the kubelet dies at
    /// once. Also cuts the power of a partitioned node.
    pub async fn power_off(&self) -> anyhow::Result<()> {
        let name = &self.name;
        self.require().await?;
        let in_use = self.kill_kubelet().await?;
        if self.marker(Marker::OffRequested).exists() {
            log(&format!("node {name} is already powered off"));
            return Ok(());
        }
        self.envtest.bmc_reset(name, "ForceOff").await?;
        // power_on must wait for this reset to land before it asks for On: the fake hardware
        // ignores On while a ForceOff is pending and would then turn off anyway.
        std::fs::write(self.marker(Marker::OffRequested), "")?;
        remove_if_present(&self.marker(Marker::Partitioned))?;
        let killed = match in_use {
            None => "kubelet was already down".to_string(),
            Some(in_use) => format!("kubelet killed{}", volumes_note(&in_use)),
        };
        log(&format!(
            "node {name} powered off (BMC: ForceOff; {killed})"
        ));
        Ok(())
    }

    /// The machine boots: Reset On through its BMC, then a kubelet with a new bootID.
    pub async fn power_on(&self) -> anyhow::Result<()> {
        let name = &self.name;
        self.require().await?;
        if self.envtest.running(&self.kubelet()) {
            log(&format!("node {name} is already powered on"));
            return Ok(());
        }
        if self.marker(Marker::OffRequested).exists() {
            self.envtest.wait_bmc_power(name, "Off").await?;
            remove_if_present(&self.marker(Marker::OffRequested))?;
        }
        let state = self.envtest.bmc_power_state(name).await?;
        if state != "Off" {
            if self.marker(Marker::Partitioned).exists() {
                bail!(
                    "node {name} is partitioned and its BMC says {state}: use hack/envtest.sh \
                     node-reconnect {name}, or node-power-off first"
                );
            }
        } else {
            self.envtest.bmc_reset(name, "On").await?;
            self.envtest.wait_bmc_power(name, "On").await?;
        }
        remove_if_present(&self.marker(Marker::Partitioned))?;
        let boot_id = uuid();
        self.start_kubelet(Some(&boot_id)).await?;
        log(&format!("node {name} powered on (bootID {boot_id})"));
        Ok(())
    }

    /// Alive but unreachable: the kubelet's heartbeats stop, the BMC still says On.
    pub async fn partition(&self) -> anyhow::Result<()> {
        let name = &self.name;
        self.require().await?;
        let Some(in_use) = self.kill_kubelet().await? else {
            bail!("node {name} is not running (powered off or already partitioned)");
        };
        std::fs::write(self.marker(Marker::Partitioned), "")?;
        let volumes = volumes_note(&in_use);
        log(&format!(
            "node {name} partitioned (kubelet killed, BMC still On{volumes})"
        ));
        Ok(())
    }

    /// The partition heals: the same kubelet, the same boot.
    pub async fn reconnect(&self) -> anyhow::Result<()> {
        let name = &self.name;
        self.require().await?;
        if self.envtest.running(&self.kubelet()) {
            bail!("node {name} is not partitioned");
        }
        if !self.marker(Marker::Partitioned).exists() {
            bail!(
                "node {name} is powered off, not partitioned; use: hack/envtest.sh \
                 node-power-on {name}"
            );
        }
        let state = self.envtest.bmc_power_state(name).await?;
        // Someone (a fencer) cut its power meanwhile: it can only boot again.
        if state != "On" {
            bail!(
                "node {name} was partitioned but its BMC now says {state}; use: \
                 hack/envtest.sh node-power-on {name}"
            );
        }
        remove_if_present(&self.marker(Marker::Partitioned))?;
        self.start_kubelet(None).await?;
        log(&format!("node {name} reconnected (bootID unchanged)"));
        Ok(())
    }

    /// Stops the node's kubelet and BMC and deletes the Node, its CSINode and its Lease.
    pub async fn delete(&self) -> anyhow::Result<()> {
        let name = &self.name;
        let bmc = format!("bmc-{name}");
        self.envtest
            .stop_processes(Duration::from_secs(5), &[&self.kubelet(), &bmc])?;
        let dir = self.envtest.bmc_dir().join(name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        let gone = DeleteParams::default();
        self.nodes()
            .delete(name, &gone)
            .await
            .map(drop)
            .or_else(not_found_is_fine)?;
        Api::<CSINode>::all(self.client.clone())
            .delete(name, &gone)
            .await
            .map(drop)
            .or_else(not_found_is_fine)?;
        self.delete_lease().await?;
        log(&format!("node {name} deleted"));
        Ok(())
    }
}

/// The map of a `json!` object literal.
fn object(value: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    match value {
        serde_json::Value::Object(map) => map,
        _ => serde_json::Map::new(),
    }
}

fn not_found_is_fine(error: kube::Error) -> anyhow::Result<()> {
    match error {
        kube::Error::Api(status) if status.code == 404 => Ok(()),
        other => Err(other.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected values from coreutils: printf '%s' NAME | cksum.
    #[test]
    fn cksum_is_the_posix_one() {
        assert_eq!(cksum(""), 4_294_967_295);
        assert_eq!(cksum("a"), 1_220_704_766);
        assert_eq!(cksum("nuc-1"), 3_066_380_476);
        assert_eq!(cksum("e2e-power-12345-abcdef"), 1_837_188_472);
        // A length of two bytes.
        assert_eq!(cksum(&"x".repeat(300)), 3_786_917_833);
    }

    #[test]
    fn index_ip_and_mac_are_stable_per_name() {
        assert_eq!(node_index("nuc-1"), 227);
        assert_eq!(node_ip("nuc-1"), "10.255.0.227");
        assert_eq!(node_mac("nuc-1"), "52:54:00:c5:40:bc");
        assert_eq!(node_index("a"), 17);
        assert_eq!(node_mac("a"), "52:54:00:c2:79:fe");
    }

    fn attachment(node: &str, pv: Option<&str>, attached: Option<bool>) -> VolumeAttachment {
        serde_json::from_value(json!({
            "metadata": {"name": format!("va-{node}-{pv:?}")},
            "spec": {"attacher": CSI_DRIVER, "nodeName": node,
                     "source": {"persistentVolumeName": pv}},
            "status": attached.map(|a| json!({"attached": a})),
        }))
        .unwrap()
    }

    #[test]
    fn only_attached_volumes_of_the_node_count() {
        let attachments = [
            attachment("n1", Some("pv-a"), Some(true)),
            attachment("n1", Some("pv-detached"), Some(false)),
            attachment("n1", Some("pv-no-status"), None),
            attachment("n2", Some("pv-elsewhere"), Some(true)),
            attachment("n1", None, Some(true)),
        ];
        assert_eq!(attached_volumes("n1", &attachments), ["pv-a"]);
        assert!(attached_volumes("n3", &attachments).is_empty());
    }

    #[test]
    fn a_csi_volume_is_named_by_driver_and_handle() {
        let pv: PersistentVolume = serde_json::from_value(json!({
            "metadata": {"name": "ns-data"},
            "spec": {"csi": {"driver": CSI_DRIVER, "volumeHandle": "ns-data"}},
        }))
        .unwrap();
        assert_eq!(
            csi_unique_name(&pv).as_deref(),
            Some("kubernetes.io/csi/rbd.csi.ceph.com^ns-data")
        );
        let host_path: PersistentVolume = serde_json::from_value(json!({
            "metadata": {"name": "local"},
            "spec": {"hostPath": {"path": "/data"}},
        }))
        .unwrap();
        assert_eq!(csi_unique_name(&host_path), None);
    }

    #[test]
    fn volumes_are_noted_as_json_and_none_not_at_all() {
        let in_use = ["a".to_string(), "b".to_string()];
        assert_eq!(volumes_note(&in_use), r#", volumesInUse: ["a","b"]"#);
        assert_eq!(volumes_note(&[]), "");
    }
}
