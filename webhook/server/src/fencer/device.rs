//! The fence device for one node, built from its agent's config and credentials.

use std::time::Duration;

use jellyfin_ha_core::fencing::PowerState;
use jellyfin_ha_core::fencing::config::{AgentConfig, AgentKind};
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};

use super::agent::{AgentError, Credentials, FenceAgent};
use super::program::ProgramAgent;
use super::proxmox::ProxmoxVmAgent;
use super::redfish::RedfishSystem;

/// A fence agent's `off` waits itself until the machine reads off (fence-agents'
/// `power_timeout`, 20 s by default), after logging in; give it that and a margin.
const PROGRAM_TIMEOUT: Duration = Duration::from_secs(40);

/// The secret keys each device type reads.
const USERNAME_KEYS: [&str; 2] = ["username", "tokenId"];
const PASSWORD_KEYS: [&str; 2] = ["password", "tokenSecret"];

pub enum Device {
    Redfish(RedfishSystem),
    Proxmox(ProxmoxVmAgent),
    Program(ProgramAgent),
}

impl Device {
    /// The device for `node`; `None` agents have no device and never get here.
    pub async fn build(
        client: &Client,
        namespace: &str,
        agent: &AgentConfig,
        node: &str,
        timeout: Duration,
    ) -> Result<Self, AgentError> {
        let credentials = match &agent.credentials_secret {
            Some(name) => Some(read_credentials(client, namespace, name).await?),
            None => None,
        };
        let needed = || {
            credentials.clone().ok_or_else(|| {
                AgentError::Credentials(format!("agent {} has no credentialsSecret", agent.name))
            })
        };
        match agent.kind() {
            Some(AgentKind::Redfish(config)) => Ok(Self::Redfish(RedfishSystem::new(
                config,
                node,
                needed()?,
                timeout,
            )?)),
            Some(AgentKind::Proxmox(config)) => {
                let vm = config.vms.get(node).ok_or_else(|| {
                    AgentError::Credentials(format!(
                        "agent {} maps no VM to node {node} (proxmox.vms)",
                        agent.name
                    ))
                })?;
                Ok(Self::Proxmox(ProxmoxVmAgent::new(
                    config,
                    vm,
                    needed()?,
                    timeout,
                )?))
            }
            Some(AgentKind::FenceAgent(config)) => Ok(Self::Program(ProgramAgent::new(
                config,
                node,
                credentials,
                timeout.max(PROGRAM_TIMEOUT),
            )?)),
            Some(AgentKind::None(_)) | None => Err(AgentError::Credentials(format!(
                "agent {} has no fence device",
                agent.name
            ))),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Self::Redfish(_) => "redfish",
            Self::Proxmox(_) => "proxmox",
            Self::Program(_) => "fence-agent",
        }
    }
}

impl FenceAgent for Device {
    async fn power_state(&self) -> Result<PowerState, AgentError> {
        match self {
            Self::Redfish(device) => device.power_state().await,
            Self::Proxmox(device) => device.power_state().await,
            Self::Program(device) => device.power_state().await,
        }
    }

    async fn power_off(&self) -> Result<(), AgentError> {
        match self {
            Self::Redfish(device) => device.power_off().await,
            Self::Proxmox(device) => device.power_off().await,
            Self::Program(device) => device.power_off().await,
        }
    }
}

/// The user name and secret from a Secret in the fencer's namespace. Errors name the Secret
/// and the missing key, never a value.
async fn read_credentials(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<Credentials, AgentError> {
    let secret = Api::<Secret>::namespaced(client.clone(), namespace)
        .get(name)
        .await
        .map_err(|e| AgentError::Credentials(format!("Secret {namespace}/{name}: {e}")))?;
    let data = secret.data.unwrap_or_default();
    let value = |keys: &[&str]| {
        keys.iter()
            .find_map(|key| data.get(*key))
            .and_then(|bytes| String::from_utf8(bytes.0.clone()).ok())
            .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
            .ok_or_else(|| {
                AgentError::Credentials(format!(
                    "Secret {namespace}/{name} has no {} key",
                    keys.join(" or ")
                ))
            })
    };
    Ok(Credentials {
        username: value(&USERNAME_KEYS)?,
        password: value(&PASSWORD_KEYS)?,
    })
}
