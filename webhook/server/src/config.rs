//! Loading the cluster-wide policy file.
//!
//! One file for every role: the webhook's [`Policy`] fields at the top level and the
//! scheduler extender's [`ExtenderPolicy`] under `extender:`. Each role reads its part; both
//! parts are checked whichever role loads the file, so a typo never waits for the other role
//! to start.

use std::path::Path;

use jellyfin_ha_core::Policy;
use jellyfin_ha_core::config::ConfigError;
use jellyfin_ha_core::extender::ExtenderPolicy;

/// The key of the extender's section.
pub const EXTENDER_SECTION: &str = "extender";

/// The whole config file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConfigFile {
    /// The webhook's policy: every top-level field but `extender`.
    pub policy: Policy,
    /// The `extender:` section.
    pub extender: ExtenderPolicy,
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
    let parse_error = |source| ConfigFileError::Parse {
        path: shown.clone(),
        source,
    };
    let (policy_text, extender_text) = split_extender_section(&text).map_err(parse_error)?;
    let policy: Policy = parse_or_default(&policy_text).map_err(parse_error)?;
    let extender: ExtenderPolicy = match extender_text {
        Some(section) => parse_or_default(&section).map_err(|source| ConfigFileError::Parse {
            path: format!("{shown}: section {EXTENDER_SECTION}"),
            source,
        })?,
        None => ExtenderPolicy::default(),
    };
    let invalid = |source| ConfigFileError::Invalid {
        path: shown.clone(),
        source,
    };
    policy.validate().map_err(invalid)?;
    extender
        .validate()
        .map_err(|e| ConfigError {
            field: format!("{EXTENDER_SECTION}.{}", e.field),
            message: e.message,
        })
        .map_err(invalid)?;
    Ok(ConfigFile { policy, extender })
}

/// Splits off the `extender:` section. When there is none, the text comes back unchanged, so
/// errors keep their line numbers.
fn split_extender_section(text: &str) -> Result<(String, Option<String>), serde_yaml::Error> {
    if text.trim().is_empty() {
        return Ok((String::new(), None));
    }
    let mut document: serde_yaml::Value = serde_yaml::from_str(text)?;
    let section = match document.as_mapping_mut() {
        Some(mapping) => mapping.remove(EXTENDER_SECTION),
        None => None,
    };
    let Some(section) = section else {
        return Ok((text.to_string(), None));
    };
    let rest = match &document {
        serde_yaml::Value::Mapping(mapping) if mapping.is_empty() => String::new(),
        _ => serde_yaml::to_string(&document)?,
    };
    let section = match section {
        serde_yaml::Value::Null => String::new(),
        section => serde_yaml::to_string(&section)?,
    };
    Ok((rest, Some(section)))
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
    fn missing_file_names_the_path() {
        let err = load_policy(Some(Path::new("/nonexistent/config.yaml")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/config.yaml"), "{err}");
    }
}
