//! The local control plane's nodes, driven from Rust: each kwok node has a "kubelet" (a kwok
//! process that manages only that node) and a Redfish BMC (a sushy-tools emulator), both
//! started detached like the control plane's own processes so that `hack/envtest.sh status`
//! and `down` see and stop them. `hack/envtest.sh node-*` runs the same code through the
//! `envtest-node` binary; the tests call it in process through [`crate::TestNode`].
//!
//! Everything a node is made of lives in the state dir (`ENVTEST_STATE_DIR`), so that a node
//! added by one process can be powered off by another.

pub mod bmc;
pub mod cli;
pub mod node;
pub mod process;

use std::path::PathBuf;

use anyhow::Context;
use kube::Client;

/// Settings files are `KEY=VALUE` lines; the value of `key`, if any.
pub fn setting<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .filter_map(|line| line.split_once('='))
        .find_map(|(k, v)| (k == key).then_some(v))
}

/// Progress, as `hack/envtest.sh` reports it.
pub fn log(message: &str) {
    eprintln!("==> {message}");
}

/// What `hack/envtest.sh up` recorded for the nodes (`$STATE_DIR/node-tools`): the pinned
/// kubelet version, the kwok and sushy-emulator binaries and the first BMC port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeTools {
    pub kubelet_version: String,
    pub kwok: PathBuf,
    pub sushy_emulator: PathBuf,
    pub bmc_port_base: u16,
}

impl NodeTools {
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let field = |key: &str| {
            setting(text, key)
                .filter(|v| !v.is_empty())
                .with_context(|| format!("no {key}= in the node tools"))
        };
        let port = field("BMC_PORT_BASE")?;
        Ok(Self {
            kubelet_version: field("K8S_VERSION")?.to_string(),
            kwok: field("KWOK")?.into(),
            sushy_emulator: field("SUSHY_EMULATOR")?.into(),
            bmc_port_base: port
                .parse()
                .with_context(|| format!("BMC_PORT_BASE={port} is not a port"))?,
        })
    }
}

/// The lease duration the environment was started with (`$STATE_DIR/settings`): a node added
/// later heartbeats like the others.
pub fn lease_duration_seconds(settings: &str) -> anyhow::Result<u32> {
    let value = setting(settings, "ENVTEST_NODE_LEASE_DURATION")
        .context("no ENVTEST_NODE_LEASE_DURATION= in the settings")?;
    value
        .parse()
        .with_context(|| format!("ENVTEST_NODE_LEASE_DURATION={value} is not a number of seconds"))
}

/// One local control plane, by its state dir.
#[derive(Debug, Clone)]
pub struct Envtest {
    pub state_dir: PathBuf,
}

impl Envtest {
    /// The control plane of `ENVTEST_STATE_DIR` (default `target/envtest`).
    pub fn from_env() -> Self {
        Self {
            state_dir: crate::envtest_dir(),
        }
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.state_dir.join("kubeconfig")
    }

    pub fn pki(&self, file: &str) -> PathBuf {
        self.state_dir.join("pki").join(file)
    }

    pub fn log_file(&self, name: &str) -> PathBuf {
        self.state_dir.join("logs").join(format!("{name}.log"))
    }

    pub fn pid_file(&self, name: &str) -> PathBuf {
        self.state_dir.join("pids").join(format!("{name}.pid"))
    }

    /// `$STATE_DIR/bmc`: one directory per node's BMC.
    pub fn bmc_dir(&self) -> PathBuf {
        self.state_dir.join("bmc")
    }

    fn read(&self, file: &str) -> anyhow::Result<String> {
        let path = self.state_dir.join(file);
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    }

    /// The node tools; a control plane started before they were recorded gets them from
    /// `hack/envtest.sh node-tools`, which writes the file.
    pub fn node_tools(&self) -> anyhow::Result<NodeTools> {
        if !self.state_dir.join("node-tools").exists() {
            let script = crate::repo_root().join("hack/envtest.sh");
            let status = std::process::Command::new(&script)
                .arg("node-tools")
                .env("ENVTEST_STATE_DIR", &self.state_dir)
                .status()
                .with_context(|| format!("running {}", script.display()))?;
            anyhow::ensure!(status.success(), "hack/envtest.sh node-tools: {status}");
        }
        NodeTools::parse(&self.read("node-tools")?)
    }

    pub fn lease_duration_seconds(&self) -> anyhow::Result<u32> {
        lease_duration_seconds(&self.read("settings")?)
    }

    /// A client for the control plane, once its API answers.
    pub async fn client(&self) -> anyhow::Result<Client> {
        let not_up = "the control plane is not up; run: hack/envtest.sh up";
        if !self.kubeconfig().exists() {
            anyhow::bail!(not_up);
        }
        let client = crate::client_from(&self.kubeconfig()).await?;
        client.apiserver_version().await.context(not_up)?;
        Ok(client)
    }

    /// The last `lines` lines of a process's log, for an error message.
    pub fn log_tail(&self, name: &str, lines: usize) -> String {
        let path = self.log_file(name);
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        let tail = all
            .get(all.len().saturating_sub(lines)..)
            .unwrap_or_default();
        format!(
            "--- last lines of {} ---\n{}\n---",
            path.display(),
            tail.join("\n")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTINGS: &str = "ENVTEST_NODE_MONITOR_GRACE=40s\nENVTEST_NODE_MONITOR_PERIOD=5s\n\
        ENVTEST_NODE_LEASE_DURATION=12\nENVTEST_SCHEDULER_CONFIG=\n";

    #[test]
    fn the_lease_duration_is_the_one_the_environment_was_started_with() {
        assert_eq!(lease_duration_seconds(SETTINGS).unwrap(), 12);
    }

    #[test]
    fn a_missing_or_broken_lease_duration_is_an_error_that_names_it() {
        let without = SETTINGS.replace("ENVTEST_NODE_LEASE_DURATION=12\n", "");
        let err = lease_duration_seconds(&without).unwrap_err();
        assert!(
            err.to_string().contains("ENVTEST_NODE_LEASE_DURATION"),
            "{err}"
        );
        let broken = SETTINGS.replace("=12", "=40s");
        let err = lease_duration_seconds(&broken).unwrap_err();
        assert!(err.to_string().contains("40s"), "{err}");
    }

    #[test]
    fn a_setting_may_be_empty_and_a_value_may_contain_equals_signs() {
        assert_eq!(setting(SETTINGS, "ENVTEST_SCHEDULER_CONFIG"), Some(""));
        assert_eq!(setting("A=b=c\n", "A"), Some("b=c"));
        assert_eq!(setting(SETTINGS, "ENVTEST_NODE"), None);
    }

    #[test]
    fn node_tools_parse_and_name_what_is_missing() {
        let text = "K8S_VERSION=v1.37.2\nKWOK=/cache/bin/kwok\n\
            SUSHY_EMULATOR=/cache/venv/bin/sushy-emulator\nBMC_PORT_BASE=28600\n";
        assert_eq!(
            NodeTools::parse(text).unwrap(),
            NodeTools {
                kubelet_version: "v1.37.2".into(),
                kwok: "/cache/bin/kwok".into(),
                sushy_emulator: "/cache/venv/bin/sushy-emulator".into(),
                bmc_port_base: 28600,
            }
        );
        let err = NodeTools::parse(&text.replace("KWOK=/cache/bin/kwok\n", "")).unwrap_err();
        assert!(err.to_string().contains("KWOK="), "{err}");
        let err = NodeTools::parse(&text.replace("28600", "70000")).unwrap_err();
        assert!(err.to_string().contains("70000"), "{err}");
    }
}
