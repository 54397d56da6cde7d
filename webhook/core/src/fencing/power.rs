//! What a fence device says about a machine's power, in one vocabulary for every agent type.
//! Only [`PowerState::Off`] proves a machine cannot write: a machine powering off, paused,
//! or in a state the device does not name may still hold its volumes.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PowerState {
    On,
    Off,
    PoweringOn,
    PoweringOff,
    /// Suspended with its memory kept: it resumes writing where it stopped.
    Paused,
    /// Anything else the device said, kept verbatim for the Event.
    Unknown(String),
}

impl PowerState {
    /// Redfish `ComputerSystem.PowerState` (DSP0268: On, Off, PoweringOn, PoweringOff, Paused).
    pub fn from_redfish(value: &str) -> Self {
        match value {
            "On" => Self::On,
            "Off" => Self::Off,
            "PoweringOn" => Self::PoweringOn,
            "PoweringOff" => Self::PoweringOff,
            "Paused" => Self::Paused,
            other => Self::Unknown(other.to_string()),
        }
    }

    /// Proxmox VE `status/current` → `status` of a VM (`running`, `stopped`; `paused` is the
    /// separate `qmpstatus`). Only `stopped` is off.
    pub fn from_proxmox(status: &str, qmp_status: Option<&str>) -> Self {
        match (status, qmp_status) {
            ("stopped", _) => Self::Off,
            ("running", Some("paused" | "suspended" | "prelaunch")) => Self::Paused,
            ("running", _) => Self::On,
            (other, _) => Self::Unknown(other.to_string()),
        }
    }

    /// A ClusterLabs fence agent's `action=status` exit code: 0 on, 2 off, anything else is
    /// a failure to tell (fence-agents' `EC_STATUS`).
    pub fn from_fence_agent_status(exit_code: Option<i32>) -> Option<Self> {
        match exit_code {
            Some(0) => Some(Self::On),
            Some(2) => Some(Self::Off),
            _ => None,
        }
    }

    pub fn is_off(&self) -> bool {
        *self == Self::Off
    }
}

impl fmt::Display for PowerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::On => f.write_str("On"),
            Self::Off => f.write_str("Off"),
            Self::PoweringOn => f.write_str("PoweringOn"),
            Self::PoweringOff => f.write_str("PoweringOff"),
            Self::Paused => f.write_str("Paused"),
            Self::Unknown(value) => write!(f, "unknown ({value:?})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("Off", true)]
    #[case("On", false)]
    #[case("PoweringOff", false)]
    #[case("Paused", false)]
    #[case("off", false)]
    #[case("", false)]
    fn only_redfish_off_is_off(#[case] value: &str, #[case] off: bool) {
        assert_eq!(PowerState::from_redfish(value).is_off(), off);
    }

    #[rstest]
    #[case("stopped", None, PowerState::Off)]
    #[case("running", Some("running"), PowerState::On)]
    #[case("running", Some("paused"), PowerState::Paused)]
    #[case("running", None, PowerState::On)]
    #[case("unknown", None, PowerState::Unknown("unknown".into()))]
    fn proxmox_states(
        #[case] status: &str,
        #[case] qmp: Option<&str>,
        #[case] expected: PowerState,
    ) {
        assert_eq!(PowerState::from_proxmox(status, qmp), expected);
    }

    #[rstest]
    #[case(Some(0), Some(PowerState::On))]
    #[case(Some(2), Some(PowerState::Off))]
    #[case(Some(1), None)]
    #[case(None, None)]
    fn fence_agent_exit_codes(#[case] code: Option<i32>, #[case] expected: Option<PowerState>) {
        assert_eq!(PowerState::from_fence_agent_status(code), expected);
    }
}
