//! What `doctor` reads from the cluster: plain data, gathered once, read-only.

use std::collections::BTreeMap;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Node, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::storage::v1::{CSIDriver, StorageClass, VolumeAttachment};
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::Policy;
use crate::busyness::report::AgentReport;

use crate::fencing::PowerState;

/// The ConfigMap, in the install namespace, that holds jellyfin-ha's config, and its key.
pub const CONFIG_CONFIGMAP: &str = "jellyfin-ha-config";
pub const CONFIG_KEY: &str = "config.yaml";

/// Where jellyfin-ha's config came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ConfigSource {
    /// A file given on the command line.
    File(String),
    /// The ConfigMap the install ships.
    ConfigMap(String),
    /// No config found: the defaults, as every role would run without one.
    #[default]
    Defaults,
    /// Found but refused, as every role would refuse it at start-up; the defaults are used.
    Invalid(String),
}

/// The apiserver's `/version`, as numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerVersion {
    pub major: u32,
    pub minor: u32,
    pub git_version: String,
}

impl ServerVersion {
    /// From `/version`'s `major` and `minor`, which some distributions suffix with `+`.
    pub fn parse(major: &str, minor: &str, git_version: &str) -> Option<Self> {
        let number = |s: &str| s.trim_end_matches('+').parse::<u32>().ok();
        Some(Self {
            major: number(major)?,
            minor: number(minor)?,
            git_version: git_version.to_string(),
        })
    }

    pub fn at_least(&self, major: u32, minor: u32) -> bool {
        (self.major, self.minor) >= (major, minor)
    }
}

/// One certificate of a webhook configuration's `caBundle`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaCertificate {
    pub subject: String,
    pub not_before: Timestamp,
    pub not_after: Timestamp,
}

/// A ceph-csi-operator `Driver` (`csi.ceph.io`): where Rook 1.19+ turns client fencing on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CephDriver {
    /// The CSI driver name, e.g. `rook-ceph.rbd.csi.ceph.com`.
    pub name: String,
    pub enable_fencing: bool,
}

/// A fence agent asked for a node's power state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FenceStatus {
    /// The agent's name in `fencer.agents`.
    pub agent: String,
    /// What the device said, or why it said nothing.
    pub outcome: Result<PowerState, String>,
    /// How long the answer took.
    pub took: SignedDuration,
}

/// Everything the checks read. Lists are as the apiserver returned them; namespaced lists
/// hold the checked namespace only, unless their field says otherwise.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub now: Timestamp,
    pub version: Option<ServerVersion>,
    /// The namespace whose workloads are checked.
    pub namespace: String,
    /// Its labels, `kubernetes.io/metadata.name` and the pod security levels among them.
    pub namespace_labels: BTreeMap<String, String>,
    /// The workload named on the command line, if any.
    pub workload: Option<String>,
    /// Where jellyfin-ha runs: its config, agent reports, fencer Lease and credentials.
    pub install_namespace: String,
    pub config_source: ConfigSource,
    /// jellyfin-ha's config, with the scheduling the install turned on.
    pub policy: Policy,
    /// The nodes checked (all, or those the command's node selector picked).
    pub nodes: Vec<Node>,
    /// Their heartbeat Leases.
    pub leases: Vec<Lease>,
    pub deployments: Vec<Deployment>,
    pub stateful_sets: Vec<StatefulSet>,
    pub pods: Vec<Pod>,
    /// Events of the checked namespace.
    pub events: Vec<Event>,
    pub claims: Vec<PersistentVolumeClaim>,
    /// Cluster-wide.
    pub volumes: Vec<PersistentVolume>,
    pub storage_classes: Vec<StorageClass>,
    pub csi_drivers: Vec<CSIDriver>,
    pub volume_attachments: Vec<VolumeAttachment>,
    /// `None` when the `csi.ceph.io` API is not installed.
    pub ceph_drivers: Option<Vec<CephDriver>>,
    pub webhook_configurations: Vec<MutatingWebhookConfiguration>,
    /// Each webhook configuration's CA bundle, by configuration name.
    pub webhook_cas: BTreeMap<String, Result<Vec<CaCertificate>, String>>,
    /// The EndpointSlices of the Services the webhook configurations call.
    pub endpoint_slices: Vec<EndpointSlice>,
    /// Agent reports by node, for the checked nodes that have one.
    pub agent_reports: BTreeMap<String, Result<AgentReport, String>>,
    /// Whether any agent report exists in the install namespace, for any node.
    pub agents_installed: bool,
    /// The fencer's leader Lease, if any.
    pub fencer_lease: Option<Lease>,
    /// The status query to each checked node's fence agent, by node.
    pub fence_status: BTreeMap<String, FenceStatus>,
}
