//! Loading the cluster-wide policy file: one typed document for every role
//! ([`jellyfin_ha_core::Policy`]), checked whole whichever role loads it, so a typo never waits
//! for another role to start. Errors name the field and, for what the parser rejects, the line.

use std::path::Path;

use jellyfin_ha_core::Policy;
use jellyfin_ha_core::config::ConfigError;

#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("config {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config {path}: {field}: {source}{}", line.map(|n| format!(" (line {n})")).unwrap_or_default())]
    Parse {
        path: String,
        /// Where in the document, e.g. `extender.weights.gpuLoad`; `.` for the whole.
        field: String,
        source: serde_yaml::Error,
        /// The line, where the parser's own message does not give it (an unknown field).
        line: Option<usize>,
    },
    #[error("config {path}: {source}")]
    Invalid { path: String, source: ConfigError },
}

/// The policy in the file at `path`, or the defaults when no file is given.
pub fn load_config(path: Option<&Path>) -> Result<Policy, ConfigFileError> {
    let Some(path) = path else {
        return Ok(Policy::default().with_shared_facts());
    };
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
        path: shown.clone(),
        source,
    })?;
    parse_config(&text, &shown)
}

/// The policy from a document's text; `shown` names where it came from in errors (a path, or
/// the ConfigMap that holds it). An empty document is the defaults.
pub fn parse_config(text: &str, shown: &str) -> Result<Policy, ConfigFileError> {
    let policy: Policy = if text.trim().is_empty() {
        Policy::default()
    } else {
        let document = serde_yaml::Deserializer::from_str(text);
        serde_path_to_error::deserialize(document).map_err(|e| {
            let field = e.path().to_string();
            let source = e.into_inner();
            // serde_yaml places most errors; an unknown field it does not.
            let placed = source.to_string().contains(" line ");
            let line = if placed { None } else { line_of(text, &field) };
            ConfigFileError::Parse {
                path: shown.to_string(),
                field,
                source,
                line,
            }
        })?
    };
    policy
        .validate()
        .map_err(|source| ConfigFileError::Invalid {
            path: shown.to_string(),
            source,
        })?;
    Ok(policy.with_shared_facts())
}

/// The line of `field`'s last key, when exactly one line of `text` starts with it.
fn line_of(text: &str, field: &str) -> Option<usize> {
    let key = field.rsplit('.').next()?;
    let key = key.split('[').next()?;
    let mut lines = text.lines().enumerate().filter(|(_, line)| {
        line.trim_start()
            .trim_start_matches("- ")
            .starts_with(&format!("{key}:"))
    });
    match (lines.next(), lines.next()) {
        (Some((index, _)), None) => Some(index + 1),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jellyfin_ha_core::extender::snapshot::NodeInfo;
    use k8s_openapi::api::core::v1::Node;

    fn load(text: &str) -> Result<Policy, ConfigFileError> {
        parse_config(text, "config.yaml")
    }

    /// The ConfigMap users install documents every field with its default; keep it true.
    #[test]
    fn shipped_config_is_the_default() {
        let manifest: serde_json::Value =
            serde_yaml::from_str(include_str!("../../../manifests/base/config.yaml")).unwrap();
        let text = manifest["data"]["config.yaml"].as_str().unwrap();
        assert_eq!(load(text).unwrap(), load_config(None).unwrap());
    }

    #[test]
    fn empty_file_is_the_default() {
        assert_eq!(load("").unwrap(), load_config(None).unwrap());
        assert_eq!(load("extender:\n").unwrap(), load_config(None).unwrap());
    }

    #[test]
    fn errors_name_the_field_and_where_the_parser_stopped() {
        let err = load("failoverSeconds: 30\ngpu:\n  mode: vaapi\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("gpu.mode") && err.contains("device-plugin") && err.contains("line 3"),
            "{err}"
        );
        let err = load("failoverSeconds: 900\n").unwrap_err().to_string();
        assert!(err.contains("failoverSeconds"), "{err}");
        let err = load("renderGroup: [44]\n").unwrap_err().to_string();
        assert!(
            err.contains("renderGroup") && err.contains("line 1"),
            "{err}"
        );
        let err = load("extender:\n  leaseStaleSeconds: 0\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("extender.leaseStaleSeconds"), "{err}");
        let err = load("gpu:\n  mode: device-plugin\nextender:\n  leaseStale: 10\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("extender") && err.contains("leaseStale") && err.contains("line 4"),
            "{err}"
        );
        let err = load("extender:\n  weights:\n    gpuLoad: 500\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("extender.weights.gpuLoad"), "{err}");
        let err = load("fencer:\n  agents:\n  - name: x\n    nodes: [a]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("fencer.agents[0].redfish"), "{err}");
    }

    #[test]
    fn sections_are_read_beside_the_top_level() {
        let policy = load(
            "failoverSeconds: 30\nextender:\n  leaseStaleSeconds: 25\nfencer:\n  maxFenced: 2\n  agents:\n  - name: bmc\n    nodes: [a]\n    fenceAgent: {program: fence_ipmilan}\n",
        )
        .unwrap();
        assert_eq!(policy.failover_seconds, 30);
        assert_eq!(policy.extender.lease_stale_seconds, 25);
        assert_eq!(policy.fencer.max_fenced, 2);
        assert_eq!(policy.fencer.agents.len(), 1);
    }

    /// What two roles share is written once, at the top level, and both follow it: a user who
    /// sets only `gpu.resourceName: gpu.intel.com/xe` gets a webhook that asks for xe and an
    /// extender that counts xe capacity.
    #[test]
    fn every_role_follows_each_shared_setting() {
        let policy = load(
            "gpu:\n  resourceName: gpu.intel.com/xe\nnodeAffinity:\n  key: example.com/quicksync\n  values: [\"yes\"]\n",
        )
        .unwrap();
        let pod = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "jf", "annotations": {"jellyfin-ha.io/inject": "true"}},
            "spec": {"containers": [{"name": "jellyfin", "image": "j"}]},
        });
        let mutated = jellyfin_ha_core::mutate_pod(&pod, &policy).unwrap().object;
        let limits = &mutated["spec"]["containers"][0]["resources"]["limits"];
        assert_eq!(limits["gpu.intel.com/xe"], "1", "{mutated}");
        let term = &mutated["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            ["nodeSelectorTerms"][0];
        assert_eq!(term["matchExpressions"][0]["key"], "example.com/quicksync");

        let node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n", "labels": {"example.com/quicksync": "yes"}},
            "status": {"allocatable": {"gpu.intel.com/xe": "2"}},
        }))
        .unwrap();
        let info = NodeInfo::from_node(&node, &policy.extender).unwrap();
        assert!(info.quick_sync);
        assert_eq!(info.gpu_allocatable, Some(2));
        assert!(
            load("extender:\n  gpuResourceName: gpu.intel.com/xe\n").is_err(),
            "the extender section does not state it a second time"
        );
    }

    #[test]
    fn missing_file_names_the_path() {
        let err = load_config(Some(Path::new("/nonexistent/config.yaml")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/config.yaml"), "{err}");
    }
}
