//! Loading the cluster-wide policy file.
//!
//! One file for every role: the webhook's [`Policy`] fields at the top level, the scheduler
//! extender's [`ExtenderPolicy`] under `extender:` and the fencer's [`FencerPolicy`] under
//! `fencer:`. Each role reads its part; every part is checked whichever role loads the file,
//! so a typo never waits for another role to start.

use std::path::Path;

use jellyfin_ha_core::Policy;
use jellyfin_ha_core::config::ConfigError;
use jellyfin_ha_core::extender::ExtenderPolicy;
use jellyfin_ha_core::fencing::FencerPolicy;

/// The key of the extender's section.
pub const EXTENDER_SECTION: &str = "extender";
/// The key of the fencer's section.
pub const FENCER_SECTION: &str = "fencer";

/// The whole config file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConfigFile {
    /// The webhook's policy: every top-level field but `extender`.
    pub policy: Policy,
    /// The `extender:` section.
    pub extender: ExtenderPolicy,
    /// The `fencer:` section.
    pub fencer: FencerPolicy,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("config {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config {path}: {source}")]
    Parse {
        path: String,
        source: serde_yaml::Error,
    },
    #[error("config {path}: {source}")]
    Invalid {
        path: String,
        source: jellyfin_ha_core::config::ConfigError,
    },
}

/// The webhook's policy from `path`, or the defaults when no file is given. Unknown fields,
/// wrong types and out-of-range values are errors that name the field.
pub fn load_policy(path: Option<&Path>) -> Result<Policy, ConfigFileError> {
    Ok(load_config(path)?.policy)
}

/// The whole file at `path`, or the defaults when no file is given. Errors in the extender
/// section name the field as `extender.<field>`.
pub fn load_config(path: Option<&Path>) -> Result<ConfigFile, ConfigFileError> {
    let Some(path) = path else {
        return Ok(ConfigFile::default());
    };
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
        path: shown.clone(),
        source,
    })?;
    parse_config(&text, &shown)
}

/// The whole file from its text; `shown` names where it came from in errors (a path, or the
/// ConfigMap that holds it).
pub fn parse_config(text: &str, shown: &str) -> Result<ConfigFile, ConfigFileError> {
    let shown = shown.to_string();
    let parse_error = |source| ConfigFileError::Parse {
        path: shown.clone(),
        source,
    };
    let (policy_text, mut sections) =
        split_sections(text, &[EXTENDER_SECTION, FENCER_SECTION]).map_err(parse_error)?;
    let policy: Policy = parse_or_default(&policy_text).map_err(parse_error)?;
    let mut section = |name: &str| sections.remove(name).unwrap_or_default();
    let (extender_text, fencer_text) = (section(EXTENDER_SECTION), section(FENCER_SECTION));
    let extender: ExtenderPolicy = parse_section(&shown, EXTENDER_SECTION, &extender_text)?;
    let fencer: FencerPolicy = parse_section(&shown, FENCER_SECTION, &fencer_text)?;
    let invalid = |source| ConfigFileError::Invalid {
        path: shown.clone(),
        source,
    };
    policy.validate().map_err(invalid)?;
    let in_section = |section: &'static str| {
        move |e: ConfigError| ConfigError {
            field: format!("{section}.{}", e.field),
            message: e.message,
        }
    };
    extender
        .validate()
        .map_err(in_section(EXTENDER_SECTION))
        .map_err(invalid)?;
    fencer
        .validate()
        .map_err(in_section(FENCER_SECTION))
        .map_err(invalid)?;
    Ok(ConfigFile {
        policy,
        extender,
        fencer,
    })
}

fn parse_section<T: Default + serde::de::DeserializeOwned>(
    path: &str,
    section: &str,
    text: &str,
) -> Result<T, ConfigFileError> {
    parse_or_default(text).map_err(|source| ConfigFileError::Parse {
        path: format!("{path}: section {section}"),
        source,
    })
}

/// Splits off the named sections. When there is none, the text comes back unchanged, so
/// errors keep their line numbers.
fn split_sections(
    text: &str,
    names: &[&str],
) -> Result<(String, std::collections::BTreeMap<String, String>), serde_yaml::Error> {
    let mut sections = std::collections::BTreeMap::new();
    if text.trim().is_empty() {
        return Ok((String::new(), sections));
    }
    let mut document: serde_yaml::Value = serde_yaml::from_str(text)?;
    let mut removed = false;
    for name in names {
        let section = match document.as_mapping_mut() {
            Some(mapping) => mapping.remove(*name),
            None => None,
        };
        removed |= section.is_some();
        if let Some(section) = section.filter(|s| !s.is_null()) {
            sections.insert((*name).to_string(), serde_yaml::to_string(&section)?);
        }
    }
    if !removed {
        return Ok((text.to_string(), sections));
    }
    let rest = match &document {
        serde_yaml::Value::Mapping(mapping) if mapping.is_empty() => String::new(),
        _ => serde_yaml::to_string(&document)?,
    };
    Ok((rest, sections))
}

fn parse_or_default<T: Default + serde::de::DeserializeOwned>(
    text: &str,
) -> Result<T, serde_yaml::Error> {
    if text.trim().is_empty() {
        Ok(T::default())
    } else {
        serde_yaml::from_str(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Policy, ConfigFileError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, text).unwrap();
        load_policy(Some(&path))
    }

    /// The ConfigMap users install documents every field with its default; keep it true.
    #[test]
    fn shipped_config_is_the_default() {
        let manifest: serde_json::Value =
            serde_yaml::from_str(include_str!("../../../manifests/base/config.yaml")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, manifest["data"]["config.yaml"].as_str().unwrap()).unwrap();
        assert_eq!(load_config(Some(&path)).unwrap(), ConfigFile::default());
    }

    #[test]
    fn empty_file_is_the_default() {
        assert_eq!(load("").unwrap(), Policy::default());
    }

    #[test]
    fn errors_name_the_field() {
        let err = load("gpu:\n  mode: vaapi\n").unwrap_err().to_string();
        assert!(
            err.contains("gpu.mode") && err.contains("device-plugin"),
            "{err}"
        );
        let err = load("failoverSeconds: 900\n").unwrap_err().to_string();
        assert!(err.contains("failoverSeconds"), "{err}");
        let err = load("renderGroup: [44]\n").unwrap_err().to_string();
        assert!(err.contains("renderGroup"), "{err}");
    }

    fn load_all(text: &str) -> Result<ConfigFile, ConfigFileError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, text).unwrap();
        load_config(Some(&path))
    }

    #[test]
    fn extender_section_is_read_and_the_rest_is_the_policy() {
        let config = load_all("failoverSeconds: 30\nextender:\n  leaseStaleSeconds: 25\n").unwrap();
        assert_eq!(config.extender.lease_stale_seconds, 25);
        assert_eq!(config.policy, load("failoverSeconds: 30\n").unwrap());
        let only = load_all("extender:\n  weights:\n    flapping: 0\n").unwrap();
        assert_eq!(only.policy, Policy::default());
        assert_eq!(only.extender.weights.flapping, 0);
        let empty = load_all("extender:\n").unwrap();
        assert_eq!(empty, ConfigFile::default());
    }

    #[test]
    fn extender_errors_name_the_field() {
        let err = load_all("extender:\n  leaseStaleSeconds: 0\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("extender.leaseStaleSeconds"), "{err}");
        let err = load_all("extender:\n  leaseStale: 10\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("extender") && err.contains("leaseStale"),
            "{err}"
        );
        // The webhook role refuses a file whose extender section is wrong, too.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, "extender:\n  weights:\n    gpuLoad: 500\n").unwrap();
        let err = load_policy(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("extender.weights.gpuLoad"), "{err}");
    }

    #[test]
    fn policy_errors_still_name_the_field_next_to_an_extender_section() {
        let err = load_all("gpu:\n  mode: vaapi\nextender: {}\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("gpu.mode"), "{err}");
    }

    #[test]
    fn fencer_section_is_read_and_its_errors_name_the_field() {
        let config = load_all(
            "extender:\n  leaseStaleSeconds: 25\nfencer:\n  maxFenced: 2\n  agents:\n  - name: bmc\n    nodes: [a]\n    fenceAgent: {program: fence_ipmilan}\n",
        )
        .unwrap();
        assert_eq!(config.fencer.max_fenced, 2);
        assert_eq!(config.fencer.agents.len(), 1);
        assert_eq!(config.extender.lease_stale_seconds, 25);
        let err = load_all("fencer:\n  agents:\n  - name: x\n    nodes: [a]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("fencer.agents[0].redfish"), "{err}");
    }

    #[test]
    fn missing_file_names_the_path() {
        let err = load_policy(Some(Path::new("/nonexistent/config.yaml")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/config.yaml"), "{err}");
    }
}
