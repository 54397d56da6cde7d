//! The annotations and labels a user or the cluster sets on a pod, and their parsing.

use std::collections::BTreeMap;
use std::fmt;

use crate::config::GpuMode;

/// Opt-in switch: only the exact value `"true"` opts a pod in.
pub const INJECT: &str = "jellyfin-ha.io/inject";
/// Names the container that gets the iGPU.
pub const CONTAINER: &str = "jellyfin-ha.io/container";
/// Overrides the configured GPU access mode.
pub const GPU: &str = "jellyfin-ha.io/gpu";
/// Overrides the configured not-ready/unreachable `tolerationSeconds`.
pub const FAILOVER_SECONDS: &str = "jellyfin-ha.io/failover-seconds";
/// Written by the webhook: what it changed.
pub const MUTATIONS: &str = "jellyfin-ha.io/mutations";
/// Label and extended resource that mark a pod for the scheduler extender.
pub const MANAGED: &str = "jellyfin-ha.io/managed";

/// The largest `jellyfin-ha.io/failover-seconds` accepted: Kubernetes' own default.
pub const MAX_FAILOVER_SECONDS: i64 = 300;

/// Whether the object carrying these labels was mutated by the webhook.
pub fn is_managed(labels: Option<&BTreeMap<String, String>>) -> bool {
    labels
        .and_then(|l| l.get(MANAGED))
        .is_some_and(|v| v == "true")
}

/// Whether the object carrying these annotations asked to be mutated.
pub fn opted_in(annotations: Option<&BTreeMap<String, String>>) -> bool {
    annotations
        .and_then(|a| a.get(INJECT))
        .is_some_and(|v| v == "true")
}

/// Whether a pod is one of Jellyfin's: mutated by the webhook, or opted in but admitted
/// unmutated (the webhook was unreachable). Either may hold the library's volume.
pub fn is_jellyfin_pod(
    labels: Option<&BTreeMap<String, String>>,
    annotations: Option<&BTreeMap<String, String>>,
) -> bool {
    is_managed(labels) || opted_in(annotations)
}

/// Per-pod overrides read from the pod's annotations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    pub container: Option<String>,
    pub gpu_mode: Option<GpuMode>,
    pub failover_seconds: Option<i64>,
}

/// An override annotation whose value cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("annotation {annotation}: {value:?} is not valid; accepted values: {accepted}")]
pub struct OverrideError {
    pub annotation: &'static str,
    pub value: String,
    pub accepted: String,
}

impl Overrides {
    pub fn parse(annotations: Option<&BTreeMap<String, String>>) -> Result<Self, OverrideError> {
        let get = |key: &str| annotations.and_then(|a| a.get(key));
        let gpu_mode = get(GPU)
            .map(|v| {
                v.parse::<GpuMode>().map_err(|_| OverrideError {
                    annotation: GPU,
                    value: v.clone(),
                    accepted: GpuMode::ACCEPTED.to_string(),
                })
            })
            .transpose()?;
        let failover_seconds = get(FAILOVER_SECONDS)
            .map(|v| match v.trim().parse::<i64>() {
                Ok(n) if (0..=MAX_FAILOVER_SECONDS).contains(&n) => Ok(n),
                _ => Err(OverrideError {
                    annotation: FAILOVER_SECONDS,
                    value: v.clone(),
                    accepted: format!("a whole number of seconds from 0 to {MAX_FAILOVER_SECONDS}"),
                }),
            })
            .transpose()?;
        let container = match get(CONTAINER) {
            Some(name) if name.trim().is_empty() => {
                return Err(OverrideError {
                    annotation: CONTAINER,
                    value: name.clone(),
                    accepted: "the name of one of the pod's containers".to_string(),
                });
            }
            other => other.cloned(),
        };
        Ok(Self {
            container,
            gpu_mode,
            failover_seconds,
        })
    }
}

impl fmt::Display for GpuMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GpuMode::DevicePlugin => "device-plugin",
            GpuMode::Hostpath => "hostpath",
            GpuMode::None => "none",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[rstest]
    #[case(&[(INJECT, "true")], true)]
    #[case(&[(INJECT, "True")], false)]
    #[case(&[(INJECT, "yes")], false)]
    #[case(&[(INJECT, "")], false)]
    #[case(&[], false)]
    fn only_exact_true_opts_in(#[case] pairs: &[(&str, &str)], #[case] expected: bool) {
        assert_eq!(opted_in(Some(&annotations(pairs))), expected);
    }

    #[rstest]
    #[case(GPU, "quicksync", "device-plugin, hostpath, none")]
    #[case(FAILOVER_SECONDS, "-1", "0 to 300")]
    #[case(FAILOVER_SECONDS, "301", "0 to 300")]
    #[case(FAILOVER_SECONDS, "15s", "0 to 300")]
    #[case(CONTAINER, " ", "one of the pod's containers")]
    fn malformed_override_names_annotation_and_accepted_values(
        #[case] key: &str,
        #[case] value: &str,
        #[case] accepted: &str,
    ) {
        let err = Overrides::parse(Some(&annotations(&[(key, value)]))).unwrap_err();
        let message = err.to_string();
        assert!(message.contains(key), "{message}");
        assert!(message.contains(accepted), "{message}");
    }

    #[test]
    fn valid_overrides_parse() {
        let parsed = Overrides::parse(Some(&annotations(&[
            (GPU, "hostpath"),
            (FAILOVER_SECONDS, "0"),
            (CONTAINER, "transcoder"),
        ])))
        .unwrap();
        assert_eq!(
            parsed,
            Overrides {
                container: Some("transcoder".into()),
                gpu_mode: Some(GpuMode::Hostpath),
                failover_seconds: Some(0),
            }
        );
    }
}
