//! Compact projections of the cluster objects the extender decides over, and the [`Snapshot`]
//! that holds them.
//!
//! Each projection keeps only what a decision reads; managed fields, images, addresses and the
//! rest of a Node never enter memory. The snapshot is fed one watch event at a time
//! (`upsert_*` / `remove_*`, or `replace_*` after a re-list) and keeps the per-node counters
//! the decisions need, so a filter call over thousands of nodes does one map lookup per node
//! and never scans attachments or pods.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

// Keyed by names from the API server, and the nodes looked up once per candidate per call:
// foldhash's randomly seeded hash instead of SipHash took a tenth off a call over 5000 nodes.
use foldhash::HashMap;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Node, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::{CSINode, VolumeAttachment};
use k8s_openapi::jiff::Timestamp;

use super::policy::ExtenderPolicy;
use crate::annotations;
use crate::busyness::AgentReport;
use crate::busyness::report::{REPORT_KEY, REPORT_OBJECT_PREFIX};
use crate::taints::OUT_OF_SERVICE;

/// Node annotation the fencer sets while it is proving a node dead; its presence alone marks
/// the node as being fenced, whatever the value.
pub const FENCING_ANNOTATION: &str = "jellyfin-ha.io/fencing";

/// The namespace the kubelets' heartbeat Leases live in, one per node, named after it.
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";

/// A namespaced object's identity.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What the extender keeps of a node agent's report: the ConfigMap
/// `jellyfin-ha-agent-<node>` (see [`crate::busyness::report`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentInfo {
    pub node_name: String,
    /// When the report's sampling interval ended.
    pub observed_at: Timestamp,
    /// The node's measured iGPU load, 0 to 100; `None` without a usable card.
    pub busy_percent: Option<u8>,
    /// At least one card's render node exists and opens with a known driver.
    pub usable: bool,
}

impl AgentInfo {
    /// Projects a report ConfigMap; `None` for one that is not a report, does not parse, or
    /// speaks of another node than its name says (as if absent: the node's load is unknown).
    pub fn from_configmap(configmap: &ConfigMap) -> Option<Self> {
        let name = configmap.metadata.name.as_deref()?;
        let node = name.strip_prefix(REPORT_OBJECT_PREFIX)?;
        let json = configmap.data.as_ref()?.get(REPORT_KEY)?;
        let report = AgentReport::from_json(json).ok()?;
        (report.node == node).then(|| Self {
            node_name: report.node.clone(),
            observed_at: report.observed_at,
            busy_percent: report.busy_percent(),
            usable: report.has_usable_card(),
        })
    }
}

/// The status of a node condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

impl ConditionStatus {
    fn parse(value: &str) -> Self {
        match value {
            "True" => Self::True,
            "False" => Self::False,
            _ => Self::Unknown,
        }
    }
}

/// The node's `Ready` condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadyCondition {
    pub status: ConditionStatus,
    pub last_transition: Option<Timestamp>,
}

impl ReadyCondition {
    /// The `Ready` condition among a Node's conditions, if it reports one.
    pub fn of(node: &Node) -> Option<Self> {
        node.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|conditions| conditions.iter().find(|c| c.type_ == "Ready"))
            .map(|c| Self {
                status: ConditionStatus::parse(&c.status),
                last_transition: c.last_transition_time.as_ref().map(|t| t.0),
            })
    }
}

/// What the extender keeps of a Node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    /// Carries the policy's QuickSync label with one of its values. Decided here, once per
    /// update, so the filter compares no strings.
    pub quick_sync: bool,
    /// Tainted `node.kubernetes.io/out-of-service`, with any effect.
    pub out_of_service: bool,
    /// Carries [`FENCING_ANNOTATION`].
    pub fencing: bool,
    pub ready: Option<ReadyCondition>,
    /// Allocatable count of the policy's GPU resource; `None` when absent or not an integer.
    pub gpu_allocatable: Option<i64>,
    /// `status.nodeInfo.bootID`; changes when the node reboots.
    pub boot_id: String,
}

impl NodeInfo {
    /// Projects a Node; `None` when it has no name. The policy says which label and which
    /// resource to keep.
    pub fn from_node(node: &Node, policy: &ExtenderPolicy) -> Option<Self> {
        let meta = &node.metadata;
        let annotation = |key: &str| meta.annotations.as_ref().and_then(|a| a.get(key));
        let status = node.status.as_ref();
        Some(Self {
            name: meta.name.clone()?,
            quick_sync: meta
                .labels
                .as_ref()
                .and_then(|labels| labels.get(&policy.quick_sync_label.key))
                .is_some_and(|value| policy.quick_sync_label.values.contains(value)),
            out_of_service: node
                .spec
                .as_ref()
                .and_then(|spec| spec.taints.as_ref())
                .is_some_and(|taints| taints.iter().any(|t| t.key == OUT_OF_SERVICE)),
            fencing: annotation(FENCING_ANNOTATION).is_some(),
            ready: ReadyCondition::of(node),
            gpu_allocatable: status
                .and_then(|s| s.allocatable.as_ref())
                .and_then(|a| a.get(&policy.gpu_resource_name))
                .and_then(|quantity| quantity.0.parse::<i64>().ok()),
            boot_id: status
                .and_then(|s| s.node_info.as_ref())
                .map(|i| i.boot_id.clone())
                .unwrap_or_default(),
        })
    }
}

/// What the extender keeps of a node's heartbeat Lease (namespace [`NODE_LEASE_NAMESPACE`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseInfo {
    /// The Lease's name, which is its node's name.
    pub node_name: String,
    pub renew_time: Option<Timestamp>,
    pub lease_duration_seconds: Option<i32>,
}

impl LeaseInfo {
    pub fn from_lease(lease: &Lease) -> Option<Self> {
        let spec = lease.spec.as_ref();
        Some(Self {
            node_name: lease.metadata.name.clone()?,
            renew_time: spec.and_then(|s| s.renew_time.as_ref()).map(|t| t.0),
            lease_duration_seconds: spec.and_then(|s| s.lease_duration_seconds),
        })
    }
}

/// What the extender keeps of a VolumeAttachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeAttachmentInfo {
    pub name: String,
    /// `None` for inline (ephemeral CSI) volumes, which no claim refers to.
    pub pv_name: Option<String>,
    pub node_name: String,
    /// The CSI driver name.
    pub attacher: String,
    /// `status.attached`: the driver reported the attach done.
    pub attached: bool,
    /// Has a deletion timestamp: the volume is being detached.
    pub deleting: bool,
}

impl VolumeAttachmentInfo {
    pub fn from_volume_attachment(attachment: &VolumeAttachment) -> Option<Self> {
        Some(Self {
            name: attachment.metadata.name.clone()?,
            pv_name: attachment.spec.source.persistent_volume_name.clone(),
            node_name: attachment.spec.node_name.clone(),
            attacher: attachment.spec.attacher.clone(),
            attached: attachment.status.as_ref().is_some_and(|s| s.attached),
            deleting: attachment.metadata.deletion_timestamp.is_some(),
        })
    }

    /// Whether the volume occupies the node: attached, or attaching and not yet being
    /// detached. The attach/detach controller counts an attach in flight as attached.
    pub fn holds_node(&self) -> bool {
        !self.deleting && !self.node_name.is_empty()
    }

    /// Whether the volume is attached and staying attached.
    pub fn is_settled(&self) -> bool {
        self.attached && self.holds_node()
    }
}

/// What the attach/detach controller reads of a volume's access modes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AccessModes {
    /// At least one mode is listed.
    pub declared: bool,
    /// `ReadOnlyMany` or `ReadWriteMany` is among them.
    pub many_nodes: bool,
}

impl AccessModes {
    pub fn from_list(modes: &[String]) -> Self {
        Self {
            declared: !modes.is_empty(),
            many_nodes: modes
                .iter()
                .any(|m| m == "ReadOnlyMany" || m == "ReadWriteMany"),
        }
    }

    /// The attach/detach controller's rule (`IsMultiAttachAllowed`): a volume may be attached
    /// to several nodes when it lists no mode or a many-node one.
    pub fn allows_multi_attach(&self) -> bool {
        !self.declared || self.many_nodes
    }
}

/// What the extender keeps of a PersistentVolumeClaim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimInfo {
    pub namespace: String,
    pub name: String,
    /// The bound PersistentVolume, `spec.volumeName`.
    pub volume_name: Option<String>,
    pub access_modes: AccessModes,
}

impl ClaimInfo {
    pub fn from_claim(claim: &PersistentVolumeClaim) -> Option<Self> {
        let spec = claim.spec.as_ref();
        Some(Self {
            namespace: claim.metadata.namespace.clone()?,
            name: claim.metadata.name.clone()?,
            volume_name: spec
                .and_then(|s| s.volume_name.clone())
                .filter(|v| !v.is_empty()),
            access_modes: AccessModes::from_list(
                spec.and_then(|s| s.access_modes.as_deref())
                    .unwrap_or_default(),
            ),
        })
    }

    pub fn key(&self) -> ObjectKey {
        ObjectKey::new(&self.namespace, &self.name)
    }
}

/// What the extender keeps of a PersistentVolume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PvInfo {
    pub name: String,
    /// `spec.csi.driver`; `None` for volumes that are not CSI.
    pub csi_driver: Option<String>,
    pub access_modes: AccessModes,
}

impl PvInfo {
    pub fn from_volume(volume: &PersistentVolume) -> Option<Self> {
        let spec = volume.spec.as_ref();
        Some(Self {
            name: volume.metadata.name.clone()?,
            csi_driver: spec
                .and_then(|s| s.csi.as_ref())
                .map(|csi| csi.driver.clone()),
            access_modes: AccessModes::from_list(
                spec.and_then(|s| s.access_modes.as_deref())
                    .unwrap_or_default(),
            ),
        })
    }
}

/// What the extender keeps of a CSINode: the attach limit of each driver that has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsiNodeInfo {
    pub node_name: String,
    /// Driver name → `allocatable.count`; drivers without a limit are left out.
    pub attach_limits: BTreeMap<String, u32>,
}

impl CsiNodeInfo {
    pub fn from_csi_node(csi_node: &CSINode) -> Option<Self> {
        Some(Self {
            node_name: csi_node.metadata.name.clone()?,
            attach_limits: csi_node
                .spec
                .drivers
                .iter()
                .filter_map(|driver| {
                    let count = driver.allocatable.as_ref()?.count?;
                    Some((driver.name.clone(), u32::try_from(count).unwrap_or(0)))
                })
                .collect(),
        })
    }
}

/// What the extender keeps of a pod that opted in: labelled `jellyfin-ha.io/managed=true` by
/// the webhook, or only annotated to opt in where the webhook never saw it (unreachable when it
/// was admitted, or installed after). Either may write the library on its claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedPodInfo {
    pub namespace: String,
    pub name: String,
    /// Where it is bound; `None` while pending.
    pub node_name: Option<String>,
    /// Has a deletion timestamp.
    pub terminating: bool,
    /// Phase `Succeeded` or `Failed`: its containers are gone.
    pub finished: bool,
    /// The claims its volumes use, in its namespace.
    pub claims: Vec<String>,
    /// Mutated (and labelled) by the webhook, so it asks for the iGPU and counts toward its
    /// node's load.
    pub mutated: bool,
}

impl ManagedPodInfo {
    /// `None` for a pod that did not opt in.
    pub fn from_pod(pod: &Pod) -> Option<Self> {
        let (labels, annotations) = (
            pod.metadata.labels.as_ref(),
            pod.metadata.annotations.as_ref(),
        );
        if !annotations::is_jellyfin_pod(labels, annotations) {
            return None;
        }
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        Some(Self {
            namespace: pod.metadata.namespace.clone()?,
            name: pod.metadata.name.clone()?,
            node_name: pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .filter(|n| !n.is_empty()),
            terminating: pod.metadata.deletion_timestamp.is_some(),
            finished: matches!(phase, Some("Succeeded" | "Failed")),
            claims: pod_claim_names(pod),
            mutated: annotations::is_managed(labels),
        })
    }

    pub fn key(&self) -> ObjectKey {
        ObjectKey::new(&self.namespace, &self.name)
    }

    /// The node whose iGPU this pod counts against: bound, running or about to, and not on
    /// its way out.
    pub fn gpu_node(&self) -> Option<&str> {
        if !self.mutated || self.terminating || self.finished {
            return None;
        }
        self.node_name.as_deref()
    }
}

/// The claims a pod's volumes use: `persistentVolumeClaim` sources, and generic ephemeral
/// volumes, whose claim is named `<pod>-<volume>`.
pub fn pod_claim_names(pod: &Pod) -> Vec<String> {
    let pod_name = pod.metadata.name.as_deref().unwrap_or_default();
    let mut claims: Vec<String> = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|volume| {
            if let Some(source) = &volume.persistent_volume_claim {
                Some(source.claim_name.clone())
            } else if volume.ephemeral.is_some() {
                Some(format!("{pod_name}-{}", volume.name))
            } else {
                None
            }
        })
        .collect();
    claims.sort();
    claims.dedup();
    claims
}

/// One CSI driver's use of a node: its attach limit and how many of its volumes are
/// attached. Attachments being detached still count: the device slot stays taken until the
/// detach finishes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DriverSlots {
    driver: String,
    limit: Option<u32>,
    attachments: u32,
}

/// Everything the snapshot knows about one node, found with a single lookup.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeState {
    pub info: Option<NodeInfo>,
    pub lease: Option<LeaseInfo>,
    pub csi: Option<CsiNodeInfo>,
    /// The node agent's latest report, fresh or not.
    pub agent: Option<AgentInfo>,
    /// Limits and attachment counts per driver, in one short list so the filter reads one
    /// allocation per node, not a map per kind.
    drivers: Vec<DriverSlots>,
    /// Managed pods whose [`ManagedPodInfo::gpu_node`] is this node.
    gpu_pods: u32,
}

impl NodeState {
    /// Managed pods using this node's iGPU.
    pub fn managed_pods(&self) -> u32 {
        self.gpu_pods
    }

    /// The attach limit of `driver` and its attachments here, when there is a limit.
    pub fn attach_usage(&self, driver: &str) -> Option<(u32, u32)> {
        let slots = self.slots(driver)?;
        Some((slots.limit?, slots.attachments))
    }

    fn slots(&self, driver: &str) -> Option<&DriverSlots> {
        self.drivers.iter().find(|s| s.driver == driver)
    }

    fn edit_slots(&mut self, driver: &str, edit: impl FnOnce(&mut DriverSlots)) {
        let index = match self.drivers.iter().position(|s| s.driver == driver) {
            Some(index) => index,
            None => {
                self.drivers.push(DriverSlots {
                    driver: driver.to_string(),
                    limit: None,
                    attachments: 0,
                });
                self.drivers.len() - 1
            }
        };
        if let Some(slots) = self.drivers.get_mut(index) {
            edit(slots);
        }
        self.drivers
            .retain(|s| s.limit.is_some() || s.attachments > 0);
        self.drivers.sort_by(|a, b| a.driver.cmp(&b.driver));
    }

    fn set_csi(&mut self, csi: Option<CsiNodeInfo>) {
        let old = self.csi.take();
        for driver in old.iter().flat_map(|c| c.attach_limits.keys()) {
            self.edit_slots(driver, |s| s.limit = None);
        }
        for (driver, limit) in csi.iter().flat_map(|c| c.attach_limits.iter()) {
            self.edit_slots(driver, |s| s.limit = Some(*limit));
        }
        self.csi = csi;
    }

    fn is_empty(&self) -> bool {
        self.info.is_none()
            && self.lease.is_none()
            && self.csi.is_none()
            && self.agent.is_none()
            && self.drivers.is_empty()
            && self.gpu_pods == 0
    }
}

/// The cluster state the extender decides over. Pure data: fed by the server's watches,
/// read by [`super::decide`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    nodes: HashMap<String, NodeState>,
    attachments: HashMap<String, VolumeAttachmentInfo>,
    /// PV name → names of its attachments.
    attachments_by_pv: HashMap<String, BTreeSet<String>>,
    claims: HashMap<ObjectKey, ClaimInfo>,
    volumes: HashMap<String, PvInfo>,
    managed_pods: HashMap<ObjectKey, ManagedPodInfo>,
}

impl Snapshot {
    pub fn new() -> Self {
        Self::default()
    }

    // Reads.

    /// Everything known about a node, if anything is.
    pub fn node_state(&self, name: &str) -> Option<&NodeState> {
        self.nodes.get(name)
    }

    /// Names of the nodes whose Node object is known, sorted.
    pub fn node_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .nodes
            .values()
            .filter_map(|state| state.info.as_ref().map(|info| info.name.clone()))
            .collect();
        names.sort();
        names
    }

    /// Everything known about each node whose Node object is known, in no particular order.
    pub fn known_nodes(&self) -> impl Iterator<Item = &NodeState> {
        self.nodes.values().filter(|s| s.info.is_some())
    }

    /// The attachments of one PersistentVolume.
    pub fn attachments_of_volume<'a>(
        &'a self,
        pv_name: &str,
    ) -> impl Iterator<Item = &'a VolumeAttachmentInfo> + 'a {
        self.attachments_by_pv
            .get(pv_name)
            .into_iter()
            .flatten()
            .filter_map(|name| self.attachments.get(name))
    }

    pub fn claim(&self, namespace: &str, name: &str) -> Option<&ClaimInfo> {
        self.claims.get(&ObjectKey::new(namespace, name))
    }

    pub fn volume(&self, name: &str) -> Option<&PvInfo> {
        self.volumes.get(name)
    }

    pub fn managed_pod(&self, namespace: &str, name: &str) -> Option<&ManagedPodInfo> {
        self.managed_pods.get(&ObjectKey::new(namespace, name))
    }

    pub fn managed_pods(&self) -> impl Iterator<Item = &ManagedPodInfo> {
        self.managed_pods.values()
    }

    // Writes, one per watch event.

    pub fn upsert_node(&mut self, info: NodeInfo) {
        let state = self.nodes.entry(info.name.clone()).or_default();
        state.info = Some(info);
    }

    pub fn remove_node(&mut self, name: &str) {
        self.edit_node(name, |state| state.info = None);
    }

    pub fn upsert_lease(&mut self, lease: LeaseInfo) {
        let state = self.nodes.entry(lease.node_name.clone()).or_default();
        state.lease = Some(lease);
    }

    pub fn remove_lease(&mut self, node: &str) {
        self.edit_node(node, |state| state.lease = None);
    }

    pub fn upsert_csi_node(&mut self, csi: CsiNodeInfo) {
        let state = self.nodes.entry(csi.node_name.clone()).or_default();
        state.set_csi(Some(csi));
    }

    pub fn remove_csi_node(&mut self, node: &str) {
        self.edit_node(node, |state| state.set_csi(None));
    }

    pub fn upsert_agent_report(&mut self, agent: AgentInfo) {
        let state = self.nodes.entry(agent.node_name.clone()).or_default();
        state.agent = Some(agent);
    }

    pub fn remove_agent_report(&mut self, node: &str) {
        self.edit_node(node, |state| state.agent = None);
    }

    pub fn upsert_attachment(&mut self, attachment: VolumeAttachmentInfo) {
        self.remove_attachment(&attachment.name.clone());
        if let Some(pv) = &attachment.pv_name {
            self.attachments_by_pv
                .entry(pv.clone())
                .or_default()
                .insert(attachment.name.clone());
        }
        if !attachment.node_name.is_empty() {
            self.nodes
                .entry(attachment.node_name.clone())
                .or_default()
                .edit_slots(&attachment.attacher, |s| s.attachments += 1);
        }
        self.attachments.insert(attachment.name.clone(), attachment);
    }

    pub fn remove_attachment(&mut self, name: &str) {
        let Some(old) = self.attachments.remove(name) else {
            return;
        };
        if let Some(pv) = &old.pv_name
            && let Some(names) = self.attachments_by_pv.get_mut(pv)
        {
            names.remove(name);
            if names.is_empty() {
                self.attachments_by_pv.remove(pv);
            }
        }
        if !old.node_name.is_empty() {
            self.edit_node(&old.node_name, |state| {
                state.edit_slots(&old.attacher, |s| {
                    s.attachments = s.attachments.saturating_sub(1);
                });
            });
        }
    }

    pub fn upsert_claim(&mut self, claim: ClaimInfo) {
        self.claims.insert(claim.key(), claim);
    }

    pub fn remove_claim(&mut self, namespace: &str, name: &str) {
        self.claims.remove(&ObjectKey::new(namespace, name));
    }

    pub fn upsert_volume(&mut self, volume: PvInfo) {
        self.volumes.insert(volume.name.clone(), volume);
    }

    pub fn remove_volume(&mut self, name: &str) {
        self.volumes.remove(name);
    }

    pub fn upsert_managed_pod(&mut self, pod: ManagedPodInfo) {
        self.remove_managed_pod(&pod.namespace.clone(), &pod.name.clone());
        if let Some(node) = pod.gpu_node() {
            self.nodes.entry(node.to_string()).or_default().gpu_pods += 1;
        }
        self.managed_pods.insert(pod.key(), pod);
    }

    pub fn remove_managed_pod(&mut self, namespace: &str, name: &str) {
        let Some(old) = self.managed_pods.remove(&ObjectKey::new(namespace, name)) else {
            return;
        };
        if let Some(node) = old.gpu_node() {
            self.edit_node(node, |state| {
                state.gpu_pods = state.gpu_pods.saturating_sub(1)
            });
        }
    }

    // Re-lists: replace every object of one kind.

    pub fn replace_nodes(&mut self, nodes: impl IntoIterator<Item = NodeInfo>) {
        for name in self.node_names() {
            self.remove_node(&name);
        }
        nodes.into_iter().for_each(|n| self.upsert_node(n));
    }

    pub fn replace_leases(&mut self, leases: impl IntoIterator<Item = LeaseInfo>) {
        let old: Vec<String> = self.nodes_with(|s| s.lease.is_some());
        old.iter().for_each(|name| self.remove_lease(name));
        leases.into_iter().for_each(|l| self.upsert_lease(l));
    }

    pub fn replace_csi_nodes(&mut self, csi_nodes: impl IntoIterator<Item = CsiNodeInfo>) {
        let old: Vec<String> = self.nodes_with(|s| s.csi.is_some());
        old.iter().for_each(|name| self.remove_csi_node(name));
        csi_nodes.into_iter().for_each(|c| self.upsert_csi_node(c));
    }

    pub fn replace_agent_reports(&mut self, reports: impl IntoIterator<Item = AgentInfo>) {
        let old: Vec<String> = self.nodes_with(|s| s.agent.is_some());
        old.iter().for_each(|name| self.remove_agent_report(name));
        reports
            .into_iter()
            .for_each(|r| self.upsert_agent_report(r));
    }

    pub fn replace_attachments(
        &mut self,
        attachments: impl IntoIterator<Item = VolumeAttachmentInfo>,
    ) {
        let old: Vec<String> = self.attachments.keys().cloned().collect();
        old.iter().for_each(|name| self.remove_attachment(name));
        attachments
            .into_iter()
            .for_each(|a| self.upsert_attachment(a));
    }

    pub fn replace_claims(&mut self, claims: impl IntoIterator<Item = ClaimInfo>) {
        self.claims = claims.into_iter().map(|c| (c.key(), c)).collect();
    }

    pub fn replace_volumes(&mut self, volumes: impl IntoIterator<Item = PvInfo>) {
        self.volumes = volumes.into_iter().map(|v| (v.name.clone(), v)).collect();
    }

    pub fn replace_managed_pods(&mut self, pods: impl IntoIterator<Item = ManagedPodInfo>) {
        let old: Vec<ObjectKey> = self.managed_pods.keys().cloned().collect();
        old.iter()
            .for_each(|key| self.remove_managed_pod(&key.namespace, &key.name));
        pods.into_iter().for_each(|p| self.upsert_managed_pod(p));
    }

    fn nodes_with(&self, keep: impl Fn(&NodeState) -> bool) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|(_, state)| keep(state))
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Applies `edit` to a node's state and drops the state once nothing is left in it.
    fn edit_node(&mut self, name: &str, edit: impl FnOnce(&mut NodeState)) {
        if let Some(state) = self.nodes.get_mut(name) {
            edit(state);
            if state.is_empty() {
                self.nodes.remove(name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::annotations::{INJECT, MANAGED};
    use rstest::rstest;
    use serde_json::{Value, json};

    impl Snapshot {
        fn attachments_on(&self, node: &str, driver: &str) -> u32 {
            self.node_state(node)
                .and_then(|state| state.slots(driver))
                .map_or(0, |slots| slots.attachments)
        }

        fn managed_pods_on(&self, node: &str) -> u32 {
            self.node_state(node).map_or(0, NodeState::managed_pods)
        }
    }

    fn policy() -> ExtenderPolicy {
        ExtenderPolicy::default()
    }

    fn node(value: serde_json::Value) -> Node {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn node_projection_keeps_only_what_decisions_read() {
        let node = node(json!({
            "metadata": {
                "name": "qs-1",
                "labels": {"intel.feature.node.kubernetes.io/gpu": "true", "other": "x"},
                "annotations": {"jellyfin-ha.io/fencing": ""},
                "managedFields": [{"manager": "kubelet"}]
            },
            "spec": {"taints": [{"key": "node.kubernetes.io/out-of-service", "effect": "NoExecute"}]},
            "status": {
                "allocatable": {"gpu.intel.com/i915": "10", "cpu": "8"},
                "conditions": [
                    {"type": "MemoryPressure", "status": "False"},
                    {"type": "Ready", "status": "True", "lastTransitionTime": "2026-11-24T19:58:10Z"}
                ],
                "nodeInfo": {"bootID": "b-1", "machineID": "", "systemUUID": "", "kernelVersion": "",
                    "osImage": "", "containerRuntimeVersion": "", "kubeletVersion": "",
                    "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64"},
                "images": [{"names": ["x"], "sizeBytes": 1}]
            }
        }));
        let info = NodeInfo::from_node(&node, &policy()).unwrap();
        assert_eq!(
            info,
            NodeInfo {
                name: "qs-1".into(),
                quick_sync: true,
                out_of_service: true,
                fencing: true,
                ready: Some(ReadyCondition {
                    status: ConditionStatus::True,
                    last_transition: Some("2026-11-24T19:58:10Z".parse().unwrap()),
                }),
                gpu_allocatable: Some(10),
                boot_id: "b-1".into(),
            }
        );
    }

    #[test]
    fn a_bare_node_projects_to_empty_facts() {
        let info =
            NodeInfo::from_node(&node(json!({"metadata": {"name": "n"}})), &policy()).unwrap();
        assert!(!info.quick_sync);
        assert!(!info.out_of_service && !info.fencing);
        assert_eq!(info.ready, None);
        assert_eq!(info.gpu_allocatable, None);
        assert_eq!(info.boot_id, "");
        assert!(NodeInfo::from_node(&node(json!({"metadata": {}})), &policy()).is_none());
    }

    fn report_configmap(name: &str, report: serde_json::Value) -> ConfigMap {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "jellyfin-ha"},
            "data": {"report.json": report.to_string()}
        }))
        .unwrap()
    }

    #[test]
    fn an_agent_report_projects_to_load_and_usability() {
        let configmap = report_configmap(
            "jellyfin-ha-agent-qs-1",
            json!({"node": "qs-1", "observedAt": "2026-11-24T20:00:00Z", "cards": [
                {"card": "card0", "usable": true, "engines": {"video": 0.37, "render": 0.1}},
                {"card": "card1", "usable": false, "problem": "gone", "engines": {}}
            ]}),
        );
        assert_eq!(
            AgentInfo::from_configmap(&configmap),
            Some(AgentInfo {
                node_name: "qs-1".into(),
                observed_at: "2026-11-24T20:00:00Z".parse().unwrap(),
                busy_percent: Some(37),
                usable: true,
            })
        );
    }

    #[rstest]
    #[case::another_nodes_report("jellyfin-ha-agent-qs-2", json!({"node": "qs-1", "observedAt": "2026-11-24T20:00:00Z"}))]
    #[case::not_a_report_name("settings", json!({"node": "qs-1", "observedAt": "2026-11-24T20:00:00Z"}))]
    #[case::no_time("jellyfin-ha-agent-qs-1", json!({"node": "qs-1"}))]
    #[case::wrong_types("jellyfin-ha-agent-qs-1", json!({"node": "qs-1", "observedAt": "2026-11-24T20:00:00Z", "cards": [{"card": 0}]}))]
    fn unusable_reports_are_ignored(#[case] name: &str, #[case] report: serde_json::Value) {
        assert_eq!(
            AgentInfo::from_configmap(&report_configmap(name, report)),
            None
        );
    }

    #[rstest]
    #[case::wanted_value(Some("true"), true)]
    #[case::other_value(Some("false"), false)]
    #[case::absent(None, false)]
    fn quick_sync_is_the_policys_label_and_value(
        #[case] value: Option<&str>,
        #[case] quick_sync: bool,
    ) {
        let mut node = node(json!({"metadata": {"name": "n", "labels": {"other": "true"}}}));
        if let Some(value) = value {
            node.metadata
                .labels
                .as_mut()
                .unwrap()
                .insert("intel.feature.node.kubernetes.io/gpu".into(), value.into());
        }
        assert_eq!(
            NodeInfo::from_node(&node, &policy()).unwrap().quick_sync,
            quick_sync
        );
    }

    #[rstest]
    #[case(&[], true)]
    #[case(&["ReadWriteOnce"], false)]
    #[case(&["ReadWriteOncePod"], false)]
    #[case(&["SomethingNew"], false)]
    #[case(&["ReadWriteOnce", "ReadOnlyMany"], true)]
    #[case(&["ReadWriteMany"], true)]
    fn multi_attach_follows_the_attach_detach_controller(
        #[case] modes: &[&str],
        #[case] allowed: bool,
    ) {
        let modes: Vec<String> = modes.iter().map(|m| m.to_string()).collect();
        assert_eq!(
            AccessModes::from_list(&modes).allows_multi_attach(),
            allowed
        );
    }

    #[test]
    fn pod_claims_include_generic_ephemeral_volumes() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "jf", "namespace": "media"},
            "spec": {"containers": [], "volumes": [
                {"name": "config", "persistentVolumeClaim": {"claimName": "cfg"}},
                {"name": "scratch", "ephemeral": {"volumeClaimTemplate": {"spec": {}}}},
                {"name": "tmp", "emptyDir": {}},
                {"name": "again", "persistentVolumeClaim": {"claimName": "cfg"}}
            ]}
        }))
        .unwrap();
        assert_eq!(pod_claim_names(&pod), ["cfg", "jf-scratch"]);
    }

    #[test]
    fn projections_of_storage_objects() {
        let va: VolumeAttachment = serde_json::from_value(json!({
            "metadata": {"name": "csi-1", "deletionTimestamp": "2026-11-24T20:00:00Z"},
            "spec": {"attacher": "rbd.csi.ceph.com", "nodeName": "qs-1",
                     "source": {"persistentVolumeName": "pv-1"}},
            "status": {"attached": true}
        }))
        .unwrap();
        let va = VolumeAttachmentInfo::from_volume_attachment(&va).unwrap();
        assert_eq!(va.pv_name.as_deref(), Some("pv-1"));
        assert!(va.attached && va.deleting);
        assert!(!va.holds_node() && !va.is_settled());

        let claim: PersistentVolumeClaim = serde_json::from_value(json!({
            "metadata": {"name": "cfg", "namespace": "media"},
            "spec": {"accessModes": ["ReadWriteOnce"], "volumeName": "pv-1"}
        }))
        .unwrap();
        let claim = ClaimInfo::from_claim(&claim).unwrap();
        assert_eq!(claim.volume_name.as_deref(), Some("pv-1"));
        assert!(claim.access_modes.declared && !claim.access_modes.allows_multi_attach());

        let pv: PersistentVolume = serde_json::from_value(json!({
            "metadata": {"name": "pv-1"},
            "spec": {"accessModes": ["ReadWriteOnce"],
                     "csi": {"driver": "rbd.csi.ceph.com", "volumeHandle": "h"}}
        }))
        .unwrap();
        let pv = PvInfo::from_volume(&pv).unwrap();
        assert_eq!(pv.csi_driver.as_deref(), Some("rbd.csi.ceph.com"));

        let csi: CSINode = serde_json::from_value(json!({
            "metadata": {"name": "qs-1"},
            "spec": {"drivers": [
                {"name": "rbd.csi.ceph.com", "nodeID": "qs-1", "allocatable": {"count": 16}},
                {"name": "nfs.csi.k8s.io", "nodeID": "qs-1"}
            ]}
        }))
        .unwrap();
        let csi = CsiNodeInfo::from_csi_node(&csi).unwrap();
        assert_eq!(
            csi.attach_limits,
            BTreeMap::from([("rbd.csi.ceph.com".into(), 16)])
        );

        let lease: Lease = serde_json::from_value(json!({
            "metadata": {"name": "qs-1", "namespace": "kube-node-lease"},
            "spec": {"holderIdentity": "qs-1", "leaseDurationSeconds": 40,
                     "renewTime": "2026-11-24T20:00:51.123456Z"}
        }))
        .unwrap();
        let lease = LeaseInfo::from_lease(&lease).unwrap();
        assert_eq!(lease.lease_duration_seconds, Some(40));
        assert_eq!(
            lease.renew_time,
            Some("2026-11-24T20:00:51.123456Z".parse().unwrap())
        );
    }

    #[test]
    fn managed_pod_counts_only_while_it_uses_the_gpu() {
        let pod = |phase: &str, deleting: bool, metadata: Value| -> Pod {
            let mut value = json!({
                "metadata": {"name": "jf", "namespace": "media"},
                "spec": {"nodeName": "qs-1", "containers": []},
                "status": {"phase": phase}
            });
            merge(&mut value["metadata"], &metadata);
            if deleting {
                value["metadata"]["deletionTimestamp"] = json!("2026-11-24T20:00:00Z");
            }
            serde_json::from_value(value).unwrap()
        };
        let labelled = json!({"labels": {MANAGED: "true"}});
        let gpu_node = |p: Pod| {
            ManagedPodInfo::from_pod(&p)
                .unwrap()
                .gpu_node()
                .map(String::from)
        };
        let running = |metadata: &Value| pod("Running", false, metadata.clone());
        assert_eq!(gpu_node(running(&labelled)).as_deref(), Some("qs-1"));
        assert_eq!(
            gpu_node(pod("Pending", false, labelled.clone())).as_deref(),
            Some("qs-1")
        );
        assert_eq!(gpu_node(pod("Running", true, labelled.clone())), None);
        assert_eq!(gpu_node(pod("Succeeded", false, labelled.clone())), None);
        assert_eq!(gpu_node(pod("Failed", false, labelled)), None);

        // Opted in but never mutated: kept (it may write its claims), not counted on the iGPU
        // it never asked for.
        let opted_in = json!({"annotations": {INJECT: "true"}});
        let unmutated = ManagedPodInfo::from_pod(&running(&opted_in)).unwrap();
        assert!(!unmutated.mutated);
        assert_eq!(unmutated.gpu_node(), None);
        // Neither: not kept.
        assert_eq!(ManagedPodInfo::from_pod(&running(&json!({}))), None);
    }

    fn merge(into: &mut Value, from: &Value) {
        if let (Some(into), Some(from)) = (into.as_object_mut(), from.as_object()) {
            into.extend(from.clone());
        }
    }

    fn attachment(name: &str, pv: &str, node: &str) -> VolumeAttachmentInfo {
        VolumeAttachmentInfo {
            name: name.into(),
            pv_name: Some(pv.into()),
            node_name: node.into(),
            attacher: "rbd".into(),
            attached: true,
            deleting: false,
        }
    }

    fn managed(name: &str, node: Option<&str>) -> ManagedPodInfo {
        ManagedPodInfo {
            namespace: "media".into(),
            name: name.into(),
            node_name: node.map(Into::into),
            terminating: false,
            finished: false,
            mutated: true,
            claims: vec![],
        }
    }

    #[test]
    fn counters_follow_upserts_moves_and_removals() {
        let mut snapshot = Snapshot::new();
        snapshot.upsert_attachment(attachment("a", "pv-1", "n1"));
        snapshot.upsert_attachment(attachment("b", "pv-2", "n1"));
        assert_eq!(snapshot.attachments_on("n1", "rbd"), 2);
        // The same attachment moving node is counted once, on the new node.
        snapshot.upsert_attachment(attachment("b", "pv-2", "n2"));
        assert_eq!(snapshot.attachments_on("n1", "rbd"), 1);
        assert_eq!(snapshot.attachments_on("n2", "rbd"), 1);
        assert_eq!(snapshot.attachments_of_volume("pv-2").count(), 1);
        snapshot.remove_attachment("b");
        snapshot.remove_attachment("b");
        assert_eq!(snapshot.attachments_on("n2", "rbd"), 0);
        assert!(
            snapshot.node_state("n2").is_none(),
            "empty node state is dropped"
        );

        snapshot.upsert_managed_pod(managed("p", Some("n1")));
        snapshot.upsert_managed_pod(managed("p", Some("n1")));
        assert_eq!(snapshot.managed_pods_on("n1"), 1);
        snapshot.upsert_managed_pod(ManagedPodInfo {
            terminating: true,
            ..managed("p", Some("n1"))
        });
        assert_eq!(snapshot.managed_pods_on("n1"), 0);
        snapshot.remove_managed_pod("media", "p");
        snapshot.remove_attachment("a");
        assert_eq!(snapshot, Snapshot::new());
    }

    fn csi(node: &str, limits: &[(&str, u32)]) -> CsiNodeInfo {
        CsiNodeInfo {
            node_name: node.into(),
            attach_limits: limits.iter().map(|(d, l)| (d.to_string(), *l)).collect(),
        }
    }

    #[test]
    fn attach_limits_and_counts_are_kept_apart() {
        let mut snapshot = Snapshot::new();
        snapshot.upsert_attachment(attachment("a", "pv-1", "n1"));
        snapshot.upsert_csi_node(csi("n1", &[("rbd", 4), ("nfs", 2)]));
        let state = snapshot.node_state("n1").unwrap();
        assert_eq!(state.attach_usage("rbd"), Some((4, 1)));
        assert_eq!(state.attach_usage("nfs"), Some((2, 0)));
        assert_eq!(state.attach_usage("ebs"), None);

        // A new CSINode replaces the old limits; attachments keep counting.
        snapshot.upsert_csi_node(csi("n1", &[("rbd", 8)]));
        let state = snapshot.node_state("n1").unwrap();
        assert_eq!(state.attach_usage("rbd"), Some((8, 1)));
        assert_eq!(state.attach_usage("nfs"), None);

        snapshot.remove_csi_node("n1");
        let state = snapshot.node_state("n1").unwrap();
        assert!(state.csi.is_none());
        assert_eq!(state.attach_usage("rbd"), None);
        assert_eq!(snapshot.attachments_on("n1", "rbd"), 1);

        snapshot.remove_attachment("a");
        assert_eq!(snapshot, Snapshot::new());
    }

    #[test]
    fn node_names_lists_known_nodes_only() {
        let mut snapshot = Snapshot::new();
        for name in ["b", "a"] {
            snapshot.upsert_node(
                NodeInfo::from_node(&node(json!({"metadata": {"name": name}})), &policy()).unwrap(),
            );
        }
        snapshot.upsert_attachment(attachment("x", "pv", "c"));
        assert_eq!(snapshot.node_names(), ["a", "b"]);
        snapshot.remove_node("a");
        assert_eq!(snapshot.node_names(), ["b"]);
    }

    #[test]
    fn replace_drops_what_the_relist_no_longer_has() {
        let mut snapshot = Snapshot::new();
        snapshot.upsert_attachment(attachment("a", "pv-1", "n1"));
        snapshot.upsert_managed_pod(managed("p", Some("n1")));
        snapshot.upsert_lease(LeaseInfo {
            node_name: "n1".into(),
            renew_time: None,
            lease_duration_seconds: None,
        });
        snapshot.replace_attachments([attachment("c", "pv-3", "n3")]);
        snapshot.replace_managed_pods([managed("q", Some("n3"))]);
        snapshot.replace_leases([]);
        assert_eq!(snapshot.attachments_on("n1", "rbd"), 0);
        assert_eq!(snapshot.attachments_on("n3", "rbd"), 1);
        assert_eq!(snapshot.managed_pods_on("n1"), 0);
        assert_eq!(snapshot.managed_pods_on("n3"), 1);
        assert!(snapshot.node_state("n1").is_none());
    }
}
