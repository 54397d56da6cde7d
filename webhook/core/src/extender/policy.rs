//! What the extender's filter and scores are tuned by. Every field has a default, so an empty
//! document is a complete policy.

use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, DEFAULT_GPU_RESOURCE, NodeAffinityPolicy};

/// The kubelet renews its Lease every 10 s (a quarter of the 40 s lease duration). Two missed
/// renewals mean the kubelet or its node is gone long before `node-monitor-grace-period`
/// (40-50 s) turns the node NotReady; one missed renewal is still within ordinary jitter.
pub const DEFAULT_LEASE_STALE_SECONDS: u32 = 20;

/// A node agent's report older than this counts as unknown. Agents rewrite their report at
/// least every 15 s; a minute tolerates a few missed writes without trusting a dead agent.
pub const DEFAULT_GPU_BUSY_FRESH_SECONDS: u32 = 60;

/// A node whose Ready condition changed within this window is scored down: a node that just
/// came back is the one most likely to go away again.
pub const DEFAULT_FLAP_WINDOW_SECONDS: u32 = 600;

/// How much of the blended iGPU load comes from the measured engine busyness (the rest from
/// managed pods against capacity). Half and half: the measurement sees transcodes of
/// workloads we do not manage, the pod count sees pods that have not started transcoding yet.
pub const DEFAULT_MEASURED_BUSY_SHARE_PERCENT: u32 = 50;

/// A watch that delivered nothing (no event, no completed list) for this long has stopped.
/// Each watch relists every half of it, so a quiet kind is heard in time; a list of every Node
/// every 150 s is small next to the kubelets' own status updates.
pub const DEFAULT_WATCH_SILENCE_SECONDS: u32 = 300;

/// The shortest accepted silence, so that relists stay far apart.
pub const MIN_WATCH_SILENCE_SECONDS: u32 = 30;

/// More than half the nodes silent at once is a partition or a control-plane fault, not dead
/// machines: the fencer's own guard draws the same line.
pub const DEFAULT_MAX_STALE_LEASE_PERCENT: u32 = 50;

/// The largest accepted weight; keeps the integer score math far from overflow.
pub const MAX_WEIGHT: u32 = 100;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ExtenderPolicy {
    /// A node whose heartbeat Lease was renewed longer ago than this fails the filter, even
    /// while its Ready condition still says True.
    pub lease_stale_seconds: u32,
    /// A node agent's report older than this is ignored: the node's measured load and GPU
    /// health count as unknown.
    pub gpu_busy_fresh_seconds: u32,
    /// A watch silent for longer makes the view stale; watches relist every half of it.
    /// 0 turns both off.
    pub watch_silence_seconds: u32,
    /// The view is stale while more than this percent of the nodes have a stale Lease; 100
    /// turns it off.
    pub max_stale_lease_percent: u32,
    /// Nodes whose Ready condition changed within this window score lower; 0 turns it off.
    pub flap_window_seconds: u32,
    /// Percent of the iGPU load score taken from the measured busyness when it is fresh.
    pub measured_busy_share_percent: u32,
    /// Relative weights of the score parts.
    pub weights: ScoreWeights,
    /// The node label that marks QuickSync nodes; the filter requires `key In values`. Not
    /// written in this section: the top-level `nodeAffinity` states it for every role
    /// ([`crate::config::Policy::with_shared_facts`]).
    #[serde(skip)]
    pub quick_sync_label: NodeAffinityPolicy,
    /// The extended resource whose allocatable count is the node's iGPU capacity; from the
    /// top-level `gpu.resourceName`, like the label.
    #[serde(skip)]
    pub gpu_resource_name: String,
}

impl Default for ExtenderPolicy {
    fn default() -> Self {
        Self {
            lease_stale_seconds: DEFAULT_LEASE_STALE_SECONDS,
            gpu_busy_fresh_seconds: DEFAULT_GPU_BUSY_FRESH_SECONDS,
            watch_silence_seconds: DEFAULT_WATCH_SILENCE_SECONDS,
            max_stale_lease_percent: DEFAULT_MAX_STALE_LEASE_PERCENT,
            flap_window_seconds: DEFAULT_FLAP_WINDOW_SECONDS,
            measured_busy_share_percent: DEFAULT_MEASURED_BUSY_SHARE_PERCENT,
            weights: ScoreWeights::default(),
            quick_sync_label: NodeAffinityPolicy::default(),
            gpu_resource_name: DEFAULT_GPU_RESOURCE.to_string(),
        }
    }
}

/// Relative weights, each from 0 to [`MAX_WEIGHT`]; the weighted mean of the parts is mapped
/// onto the extender's 0-10 score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ScoreWeights {
    /// Prefer the node with the most iGPU headroom: transcoding speed is the point.
    pub gpu_load: u32,
    /// Prefer the node where the pod's volumes are already attached: no detach/attach wait.
    pub volume_locality: u32,
    /// Prefer nodes whose Ready condition has been stable.
    pub flapping: u32,
}

impl Default for ScoreWeights {
    fn default() -> Self {
        Self {
            gpu_load: 5,
            volume_locality: 3,
            flapping: 2,
        }
    }
}

impl ExtenderPolicy {
    /// Checks what serde cannot: ranges, and names Kubernetes would never match.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |field: &str, message: String| {
            Err(ConfigError {
                field: field.into(),
                message,
            })
        };
        if !(1..=3600).contains(&self.lease_stale_seconds) {
            return fail(
                "leaseStaleSeconds",
                format!("{} is not from 1 to 3600", self.lease_stale_seconds),
            );
        }
        if !(1..=86_400).contains(&self.gpu_busy_fresh_seconds) {
            return fail(
                "gpuBusyFreshSeconds",
                format!("{} is not from 1 to 86400", self.gpu_busy_fresh_seconds),
            );
        }
        let silence = self.watch_silence_seconds;
        if silence != 0 && !(MIN_WATCH_SILENCE_SECONDS..=86_400).contains(&silence) {
            return fail(
                "watchSilenceSeconds",
                format!("{silence} is neither 0 nor from {MIN_WATCH_SILENCE_SECONDS} to 86400"),
            );
        }
        if !(1..=100).contains(&self.max_stale_lease_percent) {
            return fail(
                "maxStaleLeasePercent",
                format!("{} is not from 1 to 100", self.max_stale_lease_percent),
            );
        }
        if self.flap_window_seconds > 86_400 {
            return fail(
                "flapWindowSeconds",
                format!("{} is not from 0 to 86400", self.flap_window_seconds),
            );
        }
        if self.measured_busy_share_percent > 100 {
            return fail(
                "measuredBusySharePercent",
                format!("{} is not from 0 to 100", self.measured_busy_share_percent),
            );
        }
        let weights = [
            ("weights.gpuLoad", self.weights.gpu_load),
            ("weights.volumeLocality", self.weights.volume_locality),
            ("weights.flapping", self.weights.flapping),
        ];
        for (field, weight) in weights {
            if weight > MAX_WEIGHT {
                return fail(field, format!("{weight} is not from 0 to {MAX_WEIGHT}"));
            }
        }
        if weights.iter().all(|(_, weight)| *weight == 0) {
            return fail(
                "weights",
                "at least one weight must be positive, or every node scores 0".into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[test]
    fn empty_document_is_the_default_and_valid() {
        let policy: ExtenderPolicy = serde_yaml::from_str("{}").unwrap();
        assert_eq!(policy, ExtenderPolicy::default());
        policy.validate().unwrap();
        assert_eq!(
            policy.quick_sync_label.key,
            "intel.feature.node.kubernetes.io/gpu"
        );
        assert_eq!(policy.quick_sync_label.values, ["true"]);
    }

    #[test]
    fn partial_document_keeps_other_defaults() {
        let policy: ExtenderPolicy =
            serde_yaml::from_str("weights:\n  flapping: 0\nleaseStaleSeconds: 30\n").unwrap();
        assert_eq!(policy.lease_stale_seconds, 30);
        assert_eq!(policy.weights.flapping, 0);
        assert_eq!(policy.weights.gpu_load, 5);
        assert_eq!(policy.gpu_resource_name, DEFAULT_GPU_RESOURCE);
    }

    #[rstest]
    #[case("leaseStaleSecond: 30\n", "leaseStaleSecond")]
    #[case("weights:\n  gpu: 1\n", "gpu")]
    // Stated once, at the top level (`nodeAffinity`, `gpu.resourceName`), for every role.
    #[case("quickSyncLabel:\n  key: x\n", "quickSyncLabel")]
    #[case("gpuResourceName: gpu.intel.com/xe\n", "gpuResourceName")]
    fn unknown_fields_are_named(#[case] yaml: &str, #[case] named: &str) {
        let err = serde_yaml::from_str::<ExtenderPolicy>(yaml).unwrap_err();
        assert!(err.to_string().contains(named), "{err}");
    }

    #[rstest]
    #[case("leaseStaleSeconds: 0\n", "leaseStaleSeconds")]
    #[case("gpuBusyFreshSeconds: 0\n", "gpuBusyFreshSeconds")]
    #[case("flapWindowSeconds: 90000\n", "flapWindowSeconds")]
    #[case("watchSilenceSeconds: 10\n", "watchSilenceSeconds")]
    #[case("watchSilenceSeconds: 90000\n", "watchSilenceSeconds")]
    #[case("maxStaleLeasePercent: 0\n", "maxStaleLeasePercent")]
    #[case("maxStaleLeasePercent: 101\n", "maxStaleLeasePercent")]
    #[case("measuredBusySharePercent: 101\n", "measuredBusySharePercent")]
    #[case("weights:\n  gpuLoad: 101\n", "weights.gpuLoad")]
    #[case("weights:\n  volumeLocality: 1000\n", "weights.volumeLocality")]
    #[case("weights:\n  flapping: 101\n", "weights.flapping")]
    #[case(
        "weights:\n  gpuLoad: 0\n  volumeLocality: 0\n  flapping: 0\n",
        "weights"
    )]
    fn invalid_values_name_the_field(#[case] yaml: &str, #[case] field: &str) {
        let policy: ExtenderPolicy = serde_yaml::from_str(yaml).unwrap();
        let err = policy.validate().unwrap_err();
        assert_eq!(err.field, field, "{err}");
    }

    #[test]
    fn zero_watch_silence_turns_it_off_and_is_allowed() {
        let policy: ExtenderPolicy = serde_yaml::from_str("watchSilenceSeconds: 0\n").unwrap();
        policy.validate().unwrap();
    }

    #[test]
    fn zero_flap_window_is_allowed() {
        let policy: ExtenderPolicy = serde_yaml::from_str("flapWindowSeconds: 0\n").unwrap();
        policy.validate().unwrap();
    }
}
