//! Fence devices, behind one small trait. What counts as proof is decided in core
//! (`jellyfin_ha_core::fencing::proof`); a device here only reads and switches power.

use std::fmt;
use std::future::Future;

use jellyfin_ha_core::fencing::PowerState;

/// One machine's power switch: a BMC system, a VM, a fence-agent plug.
pub trait FenceAgent: Send + Sync {
    /// What the device says about the machine's power now.
    fn power_state(&self) -> impl Future<Output = Result<PowerState, AgentError>> + Send;

    /// Asks the device to cut power now, without a graceful shutdown. `Ok` means the device
    /// accepted the request, not that the machine is off: read [`Self::power_state`] until it
    /// says so.
    fn power_off(&self) -> impl Future<Output = Result<(), AgentError>> + Send;
}

/// Why a device call failed. The text never holds credentials: it is logged and put in
/// Events.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentError {
    #[error("cannot reach the device: {0}")]
    Unreachable(String),
    #[error("no answer within {0} s")]
    Timeout(u64),
    #[error("the device refused the credentials (HTTP {0})")]
    Unauthorized(u16),
    #[error("the device answered HTTP {status}: {detail}")]
    Http { status: u16, detail: String },
    #[error("the device's answer made no sense: {0}")]
    Protocol(String),
    #[error("fence agent {program}: {detail}")]
    Program { program: String, detail: String },
    #[error("credentials: {0}")]
    Credentials(String),
}

/// A username and password (or token id and secret) read from a Secret. `Debug` and
/// `Display` never show the secret half.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}
