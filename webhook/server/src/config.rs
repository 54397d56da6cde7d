//! Loading the cluster-wide policy file.

use std::path::Path;

use jellyfin_ha_core::Policy;

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

/// The policy from `path`, or the defaults when no file is given. Unknown fields, wrong types
/// and out-of-range values are errors that name the field.
pub fn load_policy(path: Option<&Path>) -> Result<Policy, ConfigFileError> {
    let Some(path) = path else {
        return Ok(Policy::default());
    };
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
        path: shown.clone(),
        source,
    })?;
    let policy: Policy = if text.trim().is_empty() {
        Policy::default()
    } else {
        serde_yaml::from_str(&text).map_err(|source| ConfigFileError::Parse {
            path: shown.clone(),
            source,
        })?
    };
    policy
        .validate()
        .map_err(|source| ConfigFileError::Invalid {
            path: shown,
            source,
        })?;
    Ok(policy)
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

    #[test]
    fn missing_file_names_the_path() {
        let err = load_policy(Some(Path::new("/nonexistent/config.yaml")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/config.yaml"), "{err}");
    }
}
