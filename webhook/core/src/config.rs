//! Cluster-wide policy, read from the `--config` YAML file. Every field has a default.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Render-group GIDs seen on real QuickSync hosts. The webhook runs before scheduling, so it
/// cannot know which one the chosen node uses; adding all of them is harmless.
pub const DEFAULT_RENDER_GROUPS: [i64; 7] = [44, 109, 110, 122, 989, 991, 993];

/// Not-ready/unreachable `tolerationSeconds`. The node is only tainted after
/// `node-monitor-grace-period` (40-50 s) without heartbeats, which already rides out blips;
/// 15 s more covers a node-lifecycle controller restart or one lost status update, and keeps
/// eviction far from being the slowest step of a failover.
pub const DEFAULT_FAILOVER_SECONDS: i64 = 15;

/// Upper bound for `terminationGracePeriodSeconds`. Jellyfin stops transcodes and checkpoints
/// its SQLite databases in a few seconds; 15 s keeps drains and Recreate rollouts short.
pub const DEFAULT_TERMINATION_GRACE_SECONDS: i64 = 15;

/// The label Intel's NFD rules set on nodes with a QuickSync-capable GPU.
pub const DEFAULT_QUICKSYNC_LABEL: &str = "intel.feature.node.kubernetes.io/gpu";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Policy {
    /// How the GPU container reaches the iGPU.
    pub gpu: GpuPolicy,
    /// GIDs added to `securityContext.supplementalGroups` so the container can open the render node.
    pub render_groups: Vec<i64>,
    /// The required node-affinity expression that keeps the pod on QuickSync nodes.
    pub node_affinity: NodeAffinityPolicy,
    /// `tolerationSeconds` for the not-ready and unreachable NoExecute tolerations.
    pub failover_seconds: i64,
    /// Upper bound for `terminationGracePeriodSeconds`; a lower value set by the user is kept.
    pub termination_grace_seconds: i64,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            gpu: GpuPolicy::default(),
            render_groups: DEFAULT_RENDER_GROUPS.to_vec(),
            node_affinity: NodeAffinityPolicy::default(),
            failover_seconds: DEFAULT_FAILOVER_SECONDS,
            termination_grace_seconds: DEFAULT_TERMINATION_GRACE_SECONDS,
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
            resource_name: "gpu.intel.com/i915".to_string(),
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
        if !(1..=300).contains(&self.termination_grace_seconds) {
            return fail(
                "terminationGraceSeconds",
                format!("{} is not from 1 to 300", self.termination_grace_seconds),
            );
        }
        Ok(())
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

    #[rstest]
    #[case("gpu:\n  resourceName: i915\n", "gpu.resourceName")]
    #[case("gpu:\n  resourceName: Intel.com/i915\n", "gpu.resourceName")]
    #[case("renderGroups: [44, -1]\n", "renderGroups[1]")]
    #[case("nodeAffinity:\n  key: 'bad key'\n", "nodeAffinity.key")]
    #[case("nodeAffinity:\n  values: []\n", "nodeAffinity.values")]
    #[case("nodeAffinity:\n  values: ['-x']\n", "nodeAffinity.values[0]")]
    #[case("failoverSeconds: 301\n", "failoverSeconds")]
    #[case("terminationGraceSeconds: 0\n", "terminationGraceSeconds")]
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
}
