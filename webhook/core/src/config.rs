//! Cluster-wide policy, read from the `--config` YAML file: one document for every role, each
//! fact once. The webhook reads the top level, the extender its `extender:` section and the
//! fencer its `fencer:` section; what two roles share (the QuickSync label, the iGPU resource)
//! is written once at the top level and handed to the extender from there. Every field has a
//! default.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::extender::ExtenderPolicy;
use crate::fencing::FencerPolicy;
use crate::scheduling::Scheduling;

/// GIDs that own `/dev/dri/renderD*` on the hosts QuickSync users run. The webhook runs before
/// scheduling, so it cannot know the chosen node's GID, and only Fedora fixes it; elsewhere
/// `render` is allocated when udev is installed, so it differs between hosts:
///
/// | GIDs | where they come from |
/// |---|---|
/// | 44 | `video` (Debian base-passwd; Ubuntu, Proxmox VE, TrueNAS): owns `card*`, and render nodes where udev has no `render` group. Not `render` itself. |
/// | 103-110 | `addgroup --system render` in Debian/Ubuntu udev's postinst, allocated upwards: Proxmox VE 7 103, VE 8 104, Debian 11/12 105-106, TrueNAS SCALE 107, Ubuntu 20.04/22.04 109-110. |
/// | 105 | Fedora: fixed by `-Drender-gid=105` in its systemd build (video is 39 there). |
/// | 989-993 | systemd-sysusers, allocated downwards from 999: Arch (989), Debian 13, Ubuntu 24.04 and later, Proxmox VE 9 (991-993). |
///
/// Talos has no `render` group: its udev leaves render nodes `root:root 0666`, so none is
/// needed there. A supplemental group grants nothing but access to files that group owns.
pub const DEFAULT_RENDER_GROUPS: [i64; 14] = [
    44, 103, 104, 105, 106, 107, 108, 109, 110, 989, 990, 991, 992, 993,
];

/// Not-ready/unreachable `tolerationSeconds`. The node is only tainted after
/// `node-monitor-grace-period` (40-50 s) without heartbeats, which already rides out blips;
/// 15 s more covers a node-lifecycle controller restart or one lost status update, and keeps
/// eviction far from being the slowest step of a failover.
pub const DEFAULT_FAILOVER_SECONDS: i64 = 15;

/// Floor for `terminationGracePeriodSeconds`. On SIGTERM Jellyfin runs `VACUUM` and `ANALYZE` on
/// its SQLite library, and a SIGKILL in the middle corrupts it: its maintainers advise minutes
/// (jellyfin/jellyfin#17831), a 15 s stop timeout left databases unclean
/// (jellyfin/jellyfin-packaging#104), and home-lab clusters settled on 600 s. A long grace costs
/// nothing where failover speed is decided: a live node's pod is gone as soon as Jellyfin exits,
/// and a dead node's pod is force-deleted by the fencer, which skips grace.
pub const DEFAULT_MIN_TERMINATION_GRACE_SECONDS: i64 = 600;

/// The largest floor accepted: an hour is already far past any clean shutdown.
pub const MAX_MIN_TERMINATION_GRACE_SECONDS: i64 = 3600;

/// The extended resource Intel's GPU device plugin advertises for an i915 iGPU.
pub const DEFAULT_GPU_RESOURCE: &str = "gpu.intel.com/i915";

/// The label Intel's NFD rules set on nodes with a QuickSync-capable GPU.
pub const DEFAULT_QUICKSYNC_LABEL: &str = "intel.feature.node.kubernetes.io/gpu";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Policy {
    /// How the GPU container reaches the iGPU.
    pub gpu: GpuPolicy,
    /// GIDs added to `securityContext.supplementalGroups` so the container can open the render node.
    pub render_groups: Vec<i64>,
    /// Where the webhook takes those GIDs from: this list, or the render nodes' group ids the
    /// node agents report (falling back to this list until a report arrives).
    pub render_groups_from: RenderGroupsSource,
    /// The required node-affinity expression that keeps the pod on QuickSync nodes.
    pub node_affinity: NodeAffinityPolicy,
    /// `tolerationSeconds` for the not-ready and unreachable NoExecute tolerations.
    pub failover_seconds: i64,
    /// Floor for `terminationGracePeriodSeconds`, plus any preStop sleep; a longer value set by
    /// the user is kept, and 0 leaves the grace alone.
    pub min_termination_grace_seconds: i64,
    /// The scheduler extender's settings.
    pub extender: ExtenderPolicy,
    /// The fencer's settings.
    pub fencer: FencerPolicy,
    /// Which scheduler places opted-in pods: not a field of the config file but the ConfigMap
    /// the scheduling overlays ship, which the webhook watches (see [`crate::scheduling`]).
    #[serde(skip)]
    pub scheduling: Scheduling,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            gpu: GpuPolicy::default(),
            render_groups: DEFAULT_RENDER_GROUPS.to_vec(),
            render_groups_from: RenderGroupsSource::Config,
            node_affinity: NodeAffinityPolicy::default(),
            failover_seconds: DEFAULT_FAILOVER_SECONDS,
            min_termination_grace_seconds: DEFAULT_MIN_TERMINATION_GRACE_SECONDS,
            scheduling: Scheduling::Default,
            extender: ExtenderPolicy::default(),
            fencer: FencerPolicy::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct GpuPolicy {
    /// `device-plugin`, `hostpath` or `none`; a pod may override it by annotation.
    pub mode: GpuMode,
    /// The device plugin's extended resource, e.g. `gpu.intel.com/i915` or `gpu.intel.com/xe`.
    pub resource_name: String,
}

impl Default for GpuPolicy {
    fn default() -> Self {
        Self {
            mode: GpuMode::DevicePlugin,
            resource_name: DEFAULT_GPU_RESOURCE.to_string(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GpuMode {
    /// Ask Intel's GPU device plugin for one share of the iGPU.
    DevicePlugin,
    /// Mount the host's `/dev/dri` (needs a privileged container).
    Hostpath,
    /// Leave device access to the user.
    None,
}

impl GpuMode {
    pub const ACCEPTED: &str = "device-plugin, hostpath, none";
}

impl FromStr for GpuMode {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "device-plugin" => Ok(Self::DevicePlugin),
            "hostpath" => Ok(Self::Hostpath),
            "none" => Ok(Self::None),
            _ => Err(()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct NodeAffinityPolicy {
    /// Node label key; the expression is `key In values`.
    pub key: String,
    pub values: Vec<String>,
}

impl Default for NodeAffinityPolicy {
    fn default() -> Self {
        Self {
            key: DEFAULT_QUICKSYNC_LABEL.to_string(),
            values: vec!["true".to_string()],
        }
    }
}

/// Where the render group GIDs come from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RenderGroupsSource {
    /// `renderGroups` as written: every GID seen in the wild, since the webhook runs before
    /// scheduling and cannot know the node's.
    #[default]
    Config,
    /// The union of the GIDs the node agents report on QuickSync nodes: still a set, for the
    /// same reason, but only the ones this cluster's hosts use.
    Agents,
}

impl RenderGroupsSource {
    /// The GIDs pods get: the agents' union when they are the source and have reported any,
    /// else `configured`.
    pub fn render_groups(
        self,
        configured: &[i64],
        reported: impl IntoIterator<Item = u32>,
    ) -> Vec<i64> {
        // A render node owned by the root group is a host to fix, not a GID to hand every pod:
        // it would open the container's root-group files too.
        let mut reported: Vec<i64> = reported
            .into_iter()
            .filter(|gid| *gid != 0)
            .map(i64::from)
            .collect();
        reported.sort_unstable();
        reported.dedup();
        match self {
            Self::Agents if !reported.is_empty() => reported,
            _ => configured.to_vec(),
        }
    }
}

/// A config value Kubernetes would reject, or that would defeat the point of the tool.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config field {field}: {message}")]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

impl Policy {
    /// Checks what serde cannot: ranges and Kubernetes name syntax.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |field: &str, message: String| {
            Err(ConfigError {
                field: field.into(),
                message,
            })
        };
        check_resource_name("gpu.resourceName", &self.gpu.resource_name)?;
        for (i, gid) in self.render_groups.iter().enumerate() {
            if !(0..=i64::from(i32::MAX)).contains(gid) {
                return fail(
                    &format!("renderGroups[{i}]"),
                    format!("{gid} is not a GID from 0 to 2147483647"),
                );
            }
        }
        self.node_affinity.validate("nodeAffinity")?;
        if !(0..=crate::annotations::MAX_FAILOVER_SECONDS).contains(&self.failover_seconds) {
            return fail(
                "failoverSeconds",
                format!("{} is not from 0 to 300", self.failover_seconds),
            );
        }
        if !(0..=MAX_MIN_TERMINATION_GRACE_SECONDS).contains(&self.min_termination_grace_seconds) {
            return fail(
                "minTerminationGraceSeconds",
                format!(
                    "{} is not from 0 to {MAX_MIN_TERMINATION_GRACE_SECONDS}",
                    self.min_termination_grace_seconds
                ),
            );
        }
        let in_section = |section: &'static str| {
            move |e: ConfigError| ConfigError {
                field: format!("{section}.{}", e.field),
                message: e.message,
            }
        };
        self.extender.validate().map_err(in_section("extender"))?;
        self.fencer.validate().map_err(in_section("fencer"))?;
        Ok(())
    }

    /// The policy with what the extender shares with the webhook taken from the top level,
    /// where the file states it: the QuickSync label (`nodeAffinity`) and the iGPU resource
    /// (`gpu.resourceName`). A loaded policy always goes through here.
    pub fn with_shared_facts(mut self) -> Self {
        self.extender.quick_sync_label = self.node_affinity.clone();
        self.extender.gpu_resource_name = self.gpu.resource_name.clone();
        self
    }
}

impl NodeAffinityPolicy {
    /// Label key and values as Kubernetes accepts them; `section` names this block in errors.
    pub fn validate(&self, section: &str) -> Result<(), ConfigError> {
        let fail = |field: String, message: String| Err(ConfigError { field, message });
        if let Err(why) = check_qualified_name(&self.key, false) {
            return fail(format!("{section}.key"), why);
        }
        if self.values.is_empty() {
            return fail(
                format!("{section}.values"),
                "must list at least one label value".into(),
            );
        }
        for (i, value) in self.values.iter().enumerate() {
            if let Err(why) = check_label_value(value) {
                return fail(format!("{section}.values[{i}]"), why);
            }
        }
        Ok(())
    }
}

/// An extended resource name such as `gpu.intel.com/i915`; `field` names it in errors.
pub fn check_resource_name(field: &str, value: &str) -> Result<(), ConfigError> {
    check_qualified_name(value, true).map_err(|message| ConfigError {
        field: field.into(),
        message,
    })
}

/// `prefix/name` as Kubernetes label keys and resource names use it. Extended resources need
/// the prefix; label keys may omit it.
fn check_qualified_name(value: &str, prefix_required: bool) -> Result<(), String> {
    let (prefix, name) = match value.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, value),
    };
    match prefix {
        None if prefix_required => {
            return Err(format!(
                "{value:?} needs a domain prefix, like gpu.intel.com/i915"
            ));
        }
        Some(p) if !is_dns_subdomain(p) => return Err(format!("{p:?} is not a DNS subdomain")),
        _ => {}
    }
    if name.is_empty() || name.len() > 63 || !is_name_body(name) {
        return Err(format!(
            "{name:?} must be 1-63 alphanumerics, '-', '_' or '.', starting and ending alphanumeric"
        ));
    }
    Ok(())
}

fn check_label_value(value: &str) -> Result<(), String> {
    if value.is_empty() || (value.len() <= 63 && is_name_body(value)) {
        Ok(())
    } else {
        Err(format!("{value:?} is not a valid label value"))
    }
}

fn is_name_body(s: &str) -> bool {
    let alnum = |c: char| c.is_ascii_alphanumeric();
    s.starts_with(alnum)
        && s.ends_with(alnum)
        && s.chars().all(|c| alnum(c) || matches!(c, '-' | '_' | '.'))
}

fn is_dns_subdomain(s: &str) -> bool {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && l.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && l.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    };
    s.len() <= 253 && s.split('.').all(label_ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[test]
    fn empty_config_is_the_default_and_valid() {
        let policy: Policy = serde_yaml::from_str("{}").unwrap();
        assert_eq!(policy, Policy::default());
        policy.validate().unwrap();
    }

    #[test]
    fn partial_config_keeps_other_defaults() {
        let policy: Policy =
            serde_yaml::from_str("gpu:\n  resourceName: gpu.intel.com/xe\n").unwrap();
        assert_eq!(policy.gpu.resource_name, "gpu.intel.com/xe");
        assert_eq!(policy.gpu.mode, GpuMode::DevicePlugin);
        assert_eq!(policy.render_groups, DEFAULT_RENDER_GROUPS);
    }

    #[test]
    fn unknown_field_is_named() {
        let err = serde_yaml::from_str::<Policy>("gpu:\n  resourceNmae: x/y\n").unwrap_err();
        assert!(err.to_string().contains("resourceNmae"), "{err}");
    }

    #[test]
    fn the_old_grace_cap_is_refused_not_read_as_a_floor() {
        let err = serde_yaml::from_str::<Policy>("terminationGraceSeconds: 15\n").unwrap_err();
        assert!(err.to_string().contains("terminationGraceSeconds"), "{err}");
        assert!(
            err.to_string().contains("minTerminationGraceSeconds"),
            "{err}"
        );
    }

    #[rstest]
    #[case("gpu:\n  resourceName: i915\n", "gpu.resourceName")]
    #[case("gpu:\n  resourceName: Intel.com/i915\n", "gpu.resourceName")]
    #[case("renderGroups: [44, -1]\n", "renderGroups[1]")]
    #[case("nodeAffinity:\n  key: 'bad key'\n", "nodeAffinity.key")]
    #[case("nodeAffinity:\n  values: []\n", "nodeAffinity.values")]
    #[case("nodeAffinity:\n  values: ['-x']\n", "nodeAffinity.values[0]")]
    #[case("failoverSeconds: 301\n", "failoverSeconds")]
    #[case("minTerminationGraceSeconds: -1\n", "minTerminationGraceSeconds")]
    #[case("minTerminationGraceSeconds: 3601\n", "minTerminationGraceSeconds")]
    fn invalid_values_name_the_field(#[case] yaml: &str, #[case] field: &str) {
        let policy: Policy = serde_yaml::from_str(yaml).unwrap();
        let err = policy.validate().unwrap_err();
        assert_eq!(err.field, field, "{err}");
    }

    #[test]
    fn unprefixed_label_key_is_accepted() {
        let policy = Policy {
            node_affinity: NodeAffinityPolicy {
                key: "quicksync".into(),
                values: vec!["true".into()],
            },
            ..Policy::default()
        };
        policy.validate().unwrap();
    }

    #[test]
    fn render_groups_come_from_the_agents_only_when_asked_and_reported() {
        let configured = [44, 109];
        let from = |source: RenderGroupsSource, reported: &[u32]| {
            source.render_groups(&configured, reported.iter().copied())
        };
        assert_eq!(from(RenderGroupsSource::Config, &[106]), [44, 109]);
        assert_eq!(from(RenderGroupsSource::Agents, &[]), [44, 109]);
        assert_eq!(
            from(RenderGroupsSource::Agents, &[993, 106, 993]),
            [106, 993]
        );
        assert_eq!(
            from(RenderGroupsSource::Agents, &[0]),
            [44, 109],
            "never the root group"
        );
        let policy: Policy = serde_yaml::from_str("renderGroupsFrom: agents\n").unwrap();
        assert_eq!(policy.render_groups_from, RenderGroupsSource::Agents);
        assert!(serde_yaml::from_str::<Policy>("renderGroupsFrom: nodes\n").is_err());
    }
}
