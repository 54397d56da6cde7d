//! The `fencer:` section of the config file: when a silent node is suspected, the guards that
//! refuse fencing, and which fence agent proves each node off.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

/// A kubelet renews its Lease every `leaseDurationSeconds / 4` (10 s by default, 2.5 s on a
/// tuned cluster). A node is suspected once a renewal is overdue by more than this margin:
/// an API round trip and a loaded kubelet rarely take a second, and a false suspicion costs
/// one status query to the fence device, never a fence.
pub const DEFAULT_SUSPECT_MARGIN_SECONDS: u32 = 2;

/// More than half of the eligible nodes silent at once is a partition or a control-plane
/// fault, not dead machines: fencing then would take down what still runs.
pub const DEFAULT_MAX_SILENT_PERCENT: u32 = 50;

/// One node fenced at a time: a single-replica Jellyfin needs one failover, and a second
/// node going down while one is fenced is more likely a wider fault.
pub const DEFAULT_MAX_FENCED: u32 = 1;

/// How long to keep asking a device before giving up on a proof. Redfish resets land within
/// seconds to tens of seconds; medik8s' fence-agents-remediation allows 60 s per attempt.
pub const DEFAULT_PROOF_DEADLINE_SECONDS: u32 = 60;

/// One call to a fence device; a BMC that has not answered in 10 s is not going to.
pub const DEFAULT_AGENT_TIMEOUT_SECONDS: u32 = 10;

/// What `none:` must say, word for word: fencing on detection alone can make two writers.
pub const NONE_ACKNOWLEDGEMENT: &str =
    "I accept that a silent node is fenced without proof that it is off";

/// The label kubeadm and most distributions put on control-plane nodes.
pub const CONTROL_PLANE_LABEL: &str = "node-role.kubernetes.io/control-plane";

/// Stands for the node's name in agent settings, e.g. `https://{node}-bmc.lan`.
pub const NODE_PLACEHOLDER: &str = "{node}";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct FencerPolicy {
    /// Seconds a Lease renewal may be overdue before its node is suspected.
    pub suspect_margin_seconds: u32,
    /// Refuse to fence while more than this percent of eligible nodes are silent.
    pub max_silent_percent: u32,
    /// Nodes fenced (or being proven off) at once, at most.
    pub max_fenced: u32,
    /// Whether nodes labelled `node-role.kubernetes.io/control-plane` may be fenced.
    pub fence_control_plane: bool,
    /// Only nodes with all these labels may be fenced; empty selects every node.
    pub node_selector: BTreeMap<String, String>,
    /// How long to keep trying to prove a node off.
    pub proof_deadline_seconds: u32,
    /// Timeout of one call to a fence device.
    pub agent_timeout_seconds: u32,
    /// Fence agents; a node is fenced by the first one that selects it.
    pub agents: Vec<AgentConfig>,
}

impl Default for FencerPolicy {
    fn default() -> Self {
        Self {
            suspect_margin_seconds: DEFAULT_SUSPECT_MARGIN_SECONDS,
            max_silent_percent: DEFAULT_MAX_SILENT_PERCENT,
            max_fenced: DEFAULT_MAX_FENCED,
            fence_control_plane: false,
            node_selector: BTreeMap::new(),
            proof_deadline_seconds: DEFAULT_PROOF_DEADLINE_SECONDS,
            agent_timeout_seconds: DEFAULT_AGENT_TIMEOUT_SECONDS,
            agents: Vec::new(),
        }
    }
}

/// One fence device and the nodes it powers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Names the agent in Events, metrics and the fence record.
    pub name: String,
    /// Nodes this agent fences, by name.
    pub nodes: Vec<String>,
    /// Nodes this agent fences, by labels (all must match).
    pub node_selector: BTreeMap<String, String>,
    /// A Secret in the fencer's namespace with the device credentials: `username` and
    /// `password` (redfish, fence-agent) or `tokenId` and `tokenSecret` (proxmox).
    pub credentials_secret: Option<String>,
    /// Whether a node the device reports On may be powered off to fence it. Without it a
    /// silent node that is still on is never fenced.
    pub power_off: bool,
    pub redfish: Option<RedfishAgent>,
    pub proxmox: Option<ProxmoxAgent>,
    pub fence_agent: Option<FenceAgentProgram>,
    pub none: Option<NoneAgent>,
}

/// A Redfish BMC (iDRAC, iLO, XClarity, OpenBMC, sushy-tools...).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct RedfishAgent {
    /// `https://host[:port]`; `{node}` is replaced by the node name.
    pub address: String,
    /// The ComputerSystem, e.g. `/redfish/v1/Systems/1`; `{node}` is replaced by the node name.
    pub system_path: String,
    /// A PEM file with the CA that signed the BMC's certificate; the system roots otherwise.
    pub ca_file: Option<String>,
    /// Skip certificate checks (self-signed BMC certificates). Credentials are still sent.
    pub insecure_skip_verify: bool,
}

/// A Proxmox VE cluster whose VMs are the nodes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ProxmoxAgent {
    /// `https://pve.example:8006`.
    pub endpoint: String,
    /// Kubernetes node name → its VM.
    pub vms: BTreeMap<String, ProxmoxVm>,
    pub ca_file: Option<String>,
    pub insecure_skip_verify: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ProxmoxVm {
    /// The PVE node the VM is configured on.
    pub node: String,
    pub vmid: u32,
}

/// A ClusterLabs fence agent program, driven through its stdin interface.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct FenceAgentProgram {
    /// The program, `fence_<name>`, looked up on `PATH`.
    pub program: String,
    /// `key=value` options passed on stdin (`ip`, `plug`, `ssl_insecure`...); `{node}` in a
    /// value is replaced by the node name. `action`, `username` and `password` are set by the
    /// fencer.
    pub options: BTreeMap<String, String>,
}

impl FenceAgentProgram {
    /// Options the fencer sets itself, in every spelling fence-agents accepts.
    pub const RESERVED_OPTIONS: [&str; 5] = ["action", "username", "password", "login", "passwd"];

    /// `fence_[a-z0-9_]+`: the name becomes a path, so nothing else may reach it.
    pub fn is_agent_name(name: &str) -> bool {
        name.strip_prefix("fence_").is_some_and(|rest| {
            !rest.is_empty()
                && rest
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        })
    }

    /// Why `key=value` cannot go on the agent's stdin, if it cannot: a line break would end
    /// the value and start an option of its own.
    pub fn option_problem(key: &str, value: &str) -> Option<&'static str> {
        let key_ok = !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !key_ok || value.contains(['\n', '\r']) {
            Some("keys are letters, digits, '_' and '-'; values are one line")
        } else if Self::RESERVED_OPTIONS.contains(&key) {
            Some("is set by the fencer (credentials come from credentialsSecret)")
        } else {
            None
        }
    }
}

/// No device: a silent node is fenced on detection alone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct NoneAgent {
    /// Must be exactly [`NONE_ACKNOWLEDGEMENT`].
    pub acknowledge: String,
}

/// Which device an agent drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentKind<'a> {
    Redfish(&'a RedfishAgent),
    Proxmox(&'a ProxmoxAgent),
    FenceAgent(&'a FenceAgentProgram),
    None(&'a NoneAgent),
}

impl AgentKind<'_> {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Redfish(_) => "redfish",
            Self::Proxmox(_) => "proxmox",
            Self::FenceAgent(_) => "fence-agent",
            Self::None(_) => "none",
        }
    }
}

impl AgentConfig {
    /// The one device type set; `validate` guarantees there is exactly one.
    pub fn kind(&self) -> Option<AgentKind<'_>> {
        let kinds = self.kinds();
        match kinds.as_slice() {
            [only] => Some(*only),
            _ => None,
        }
    }

    fn kinds(&self) -> Vec<AgentKind<'_>> {
        let mut kinds = Vec::new();
        kinds.extend(self.redfish.as_ref().map(AgentKind::Redfish));
        kinds.extend(self.proxmox.as_ref().map(AgentKind::Proxmox));
        kinds.extend(self.fence_agent.as_ref().map(AgentKind::FenceAgent));
        kinds.extend(self.none.as_ref().map(AgentKind::None));
        kinds
    }

    /// Whether this agent fences the node with this name and these labels.
    pub fn selects(&self, node: &str, labels: &BTreeMap<String, String>) -> bool {
        self.nodes.iter().any(|n| n == node)
            || (!self.node_selector.is_empty() && selector_matches(&self.node_selector, labels))
    }
}

/// Every `key: value` of the selector is a label of the node.
pub fn selector_matches(
    selector: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// `template` with `{node}` replaced by the node's name.
pub fn for_node(template: &str, node: &str) -> String {
    template.replace(NODE_PLACEHOLDER, node)
}

impl FencerPolicy {
    /// The first agent that selects the node, with its index.
    pub fn agent_for(
        &self,
        node: &str,
        labels: &BTreeMap<String, String>,
    ) -> Option<(usize, &AgentConfig)> {
        self.agents
            .iter()
            .enumerate()
            .find(|(_, agent)| agent.selects(node, labels))
    }

    /// Ranges, and agent settings that would be unsafe or could never work. Field names are
    /// relative to the `fencer:` section.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |field: String, message: String| Err(ConfigError { field, message });
        let ranges: [(&str, u32, u32, u32); 5] = [
            ("suspectMarginSeconds", self.suspect_margin_seconds, 0, 60),
            ("maxSilentPercent", self.max_silent_percent, 1, 100),
            ("maxFenced", self.max_fenced, 1, 100),
            ("proofDeadlineSeconds", self.proof_deadline_seconds, 5, 600),
            ("agentTimeoutSeconds", self.agent_timeout_seconds, 1, 120),
        ];
        for (field, value, low, high) in ranges {
            if !(low..=high).contains(&value) {
                return fail(field.into(), format!("{value} is not from {low} to {high}"));
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, agent) in self.agents.iter().enumerate() {
            let at = |field: &str| format!("agents[{i}].{field}");
            if agent.name.is_empty() {
                return fail(at("name"), "every agent needs a name".into());
            }
            if !names.insert(agent.name.as_str()) {
                return fail(at("name"), format!("{:?} is used twice", agent.name));
            }
            if agent.nodes.is_empty() && agent.node_selector.is_empty() {
                return fail(
                    at("nodes"),
                    "select nodes by name (nodes) or by labels (nodeSelector)".into(),
                );
            }
            let kinds = agent.kinds();
            let kind = match kinds.as_slice() {
                [only] => *only,
                [] => {
                    return fail(
                        agent_field(i, "redfish"),
                        "set one of redfish, proxmox, fenceAgent, none".into(),
                    );
                }
                _ => {
                    let set: Vec<&str> = kinds.iter().map(AgentKind::name).collect();
                    return fail(
                        agent_field(i, "redfish"),
                        format!("set exactly one device type, not {}", set.join(" and ")),
                    );
                }
            };
            validate_kind(i, agent, kind)?;
        }
        Ok(())
    }
}

fn agent_field(i: usize, field: &str) -> String {
    format!("agents[{i}].{field}")
}

fn validate_kind(i: usize, agent: &AgentConfig, kind: AgentKind<'_>) -> Result<(), ConfigError> {
    let fail = |field: &str, message: String| {
        Err(ConfigError {
            field: agent_field(i, field),
            message,
        })
    };
    let needs_credentials = !matches!(kind, AgentKind::None(_) | AgentKind::FenceAgent(_));
    if needs_credentials && agent.credentials_secret.is_none() {
        return fail(
            "credentialsSecret",
            format!(
                "a {} agent needs a Secret with its credentials",
                kind.name()
            ),
        );
    }
    let require_prefix = |field: &str, value: &str, prefix: &str, why: &str| {
        if value.starts_with(prefix) {
            Ok(())
        } else {
            fail(field, format!("{value:?} must start with {prefix}{why}"))
        }
    };
    match kind {
        AgentKind::Redfish(redfish) => {
            require_prefix(
                "redfish.address",
                &redfish.address,
                "https://",
                ": credentials are sent",
            )?;
            require_prefix(
                "redfish.systemPath",
                &redfish.system_path,
                "/redfish/v1/Systems/",
                "",
            )?;
        }
        AgentKind::Proxmox(proxmox) => {
            require_prefix("proxmox.endpoint", &proxmox.endpoint, "https://", "")?;
            if proxmox.vms.is_empty() {
                return fail(
                    "proxmox.vms",
                    "map each Kubernetes node to its VM (node, vmid)".into(),
                );
            }
            for (node, vm) in &proxmox.vms {
                if vm.node.is_empty() || vm.vmid < 100 {
                    return fail(
                        &format!("proxmox.vms.{node}"),
                        "needs the PVE node and a vmid of 100 or more".into(),
                    );
                }
            }
        }
        AgentKind::FenceAgent(program) => {
            if !FenceAgentProgram::is_agent_name(&program.program) {
                return fail(
                    "fenceAgent.program",
                    format!(
                        "{:?} is not a fence agent name like fence_ipmilan",
                        program.program
                    ),
                );
            }
            for (key, value) in &program.options {
                if let Some(problem) = FenceAgentProgram::option_problem(key, value) {
                    return fail(&format!("fenceAgent.options.{key}"), problem.into());
                }
            }
        }
        AgentKind::None(none) => {
            if none.acknowledge != NONE_ACKNOWLEDGEMENT {
                return fail(
                    "none.acknowledge",
                    format!("must be exactly {NONE_ACKNOWLEDGEMENT:?}"),
                );
            }
            if agent.power_off {
                return fail("powerOff", "a none agent has no device to power off".into());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn parse(yaml: &str) -> FencerPolicy {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn empty_section_is_the_default_and_valid() {
        let policy = parse("{}");
        assert_eq!(policy, FencerPolicy::default());
        policy.validate().unwrap();
    }

    const REDFISH: &str = "agents:\n- name: bmc\n  nodes: [a]\n  credentialsSecret: bmc\n  redfish:\n    address: https://{node}-bmc\n    systemPath: /redfish/v1/Systems/1\n";

    #[test]
    fn a_redfish_agent_is_valid_and_selects_its_nodes() {
        let policy = parse(REDFISH);
        policy.validate().unwrap();
        let labels = BTreeMap::new();
        assert_eq!(policy.agent_for("a", &labels).map(|(i, _)| i), Some(0));
        assert!(policy.agent_for("b", &labels).is_none());
        let (_, agent) = policy.agent_for("a", &labels).unwrap();
        assert!(matches!(agent.kind(), Some(AgentKind::Redfish(_))));
        assert_eq!(
            for_node(&agent.redfish.as_ref().unwrap().address, "a"),
            "https://a-bmc"
        );
    }

    #[test]
    fn selector_agents_match_on_every_label() {
        let policy = parse(
            "agents:\n- name: pve\n  nodeSelector: {pool: pve, zone: a}\n  fenceAgent:\n    program: fence_pve\n",
        );
        policy.validate().unwrap();
        let labels = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        assert!(
            policy
                .agent_for("x", &labels(&[("pool", "pve"), ("zone", "a")]))
                .is_some()
        );
        assert!(policy.agent_for("x", &labels(&[("pool", "pve")])).is_none());
    }

    #[rstest]
    #[case::margin("suspectMarginSeconds: 61\n", "suspectMarginSeconds")]
    #[case::share("maxSilentPercent: 0\n", "maxSilentPercent")]
    #[case::fenced("maxFenced: 0\n", "maxFenced")]
    #[case::deadline("proofDeadlineSeconds: 1\n", "proofDeadlineSeconds")]
    #[case::unnamed("agents:\n- nodes: [a]\n  none: {}\n", "agents[0].name")]
    #[case::no_nodes(
        "agents:\n- name: x\n  fenceAgent: {program: fence_ipmilan}\n",
        "agents[0].nodes"
    )]
    #[case::no_type("agents:\n- name: x\n  nodes: [a]\n", "agents[0].redfish")]
    #[case::two_types(
        "agents:\n- name: x\n  nodes: [a]\n  none: {}\n  fenceAgent: {program: fence_ipmilan}\n",
        "agents[0].redfish"
    )]
    #[case::plain_http(
        "agents:\n- name: x\n  nodes: [a]\n  credentialsSecret: s\n  redfish: {address: 'http://bmc', systemPath: /redfish/v1/Systems/1}\n",
        "agents[0].redfish.address"
    )]
    #[case::no_secret(
        "agents:\n- name: x\n  nodes: [a]\n  redfish: {address: 'https://bmc', systemPath: /redfish/v1/Systems/1}\n",
        "agents[0].credentialsSecret"
    )]
    #[case::program_path(
        "agents:\n- name: x\n  nodes: [a]\n  fenceAgent: {program: /bin/sh}\n",
        "agents[0].fenceAgent.program"
    )]
    #[case::option_newline(
        "agents:\n- name: x\n  nodes: [a]\n  fenceAgent: {program: fence_ipmilan, options: {ip: \"a\\naction=off\"}}\n",
        "agents[0].fenceAgent.options.ip"
    )]
    #[case::option_action(
        "agents:\n- name: x\n  nodes: [a]\n  fenceAgent: {program: fence_ipmilan, options: {action: 'off'}}\n",
        "agents[0].fenceAgent.options.action"
    )]
    #[case::none_unacknowledged(
        "agents:\n- name: x\n  nodes: [a]\n  none: {acknowledge: yes}\n",
        "agents[0].none.acknowledge"
    )]
    #[case::proxmox_without_vms(
        "agents:\n- name: x\n  nodes: [a]\n  credentialsSecret: s\n  proxmox: {endpoint: 'https://pve:8006'}\n",
        "agents[0].proxmox.vms"
    )]
    fn invalid_values_name_the_field(#[case] yaml: &str, #[case] field: &str) {
        let err = parse(yaml).validate().unwrap_err();
        assert_eq!(err.field, field, "{err}");
    }

    #[test]
    fn duplicate_agent_names_are_refused() {
        let yaml = format!(
            "{REDFISH}- name: bmc\n  nodes: [b]\n  fenceAgent: {{program: fence_ipmilan}}\n"
        );
        let err = parse(&yaml).validate().unwrap_err();
        assert_eq!(err.field, "agents[1].name");
    }

    #[test]
    fn none_needs_the_exact_acknowledgement() {
        let yaml = format!(
            "agents:\n- name: x\n  nodes: [a]\n  none: {{acknowledge: {NONE_ACKNOWLEDGEMENT:?}}}\n"
        );
        parse(&yaml).validate().unwrap();
    }
}
