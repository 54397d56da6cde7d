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

    /// Proxmox VE `status/current` of a VM: `status` (`running`, `stopped`), `qmpstatus`
    /// (`paused` and the like, while running) and `lock`. Only `stopped` is off, and not when
    /// it is locked `suspended` (hibernated: `qm suspend --todisk` saved its memory, and the
    /// next start resumes writing where it stopped) or `suspending`.
    pub fn from_proxmox(status: &str, qmp_status: Option<&str>, lock: Option<&str>) -> Self {
        match (status, qmp_status, lock) {
            ("stopped", _, Some("suspended" | "suspending")) => Self::Paused,
            ("stopped", _, _) => Self::Off,
            ("running", Some("paused" | "suspended" | "prelaunch"), _) => Self::Paused,
            ("running", _, _) => Self::On,
            (other, _, _) => Self::Unknown(other.to_string()),
        }
    }

    /// A ClusterLabs fence agent's `action=status` answer: exit code 0 is on; off takes both
    /// exit code 2 and the `Status: OFF` line fence-agents print with it, because 2 is also
    /// their code for bad arguments (`EC_BAD_ARGS`, e.g. a credentials file that cannot be
    /// read), and a shell script's code for misuse. Anything else is a failure to tell.
    pub fn from_fence_agent_status(exit_code: Option<i32>, stdout: &str) -> Option<Self> {
        let said = stdout
            .lines()
            .filter_map(|line| line.trim().strip_prefix("Status:"))
            .map(str::trim)
            .next_back();
        let says = |state: &str| said.is_some_and(|s| s.eq_ignore_ascii_case(state));
        match exit_code {
            Some(0) if !says("OFF") => Some(Self::On),
            Some(2) if says("OFF") => Some(Self::Off),
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
    #[case("stopped", None, None, PowerState::Off)]
    #[case("stopped", None, Some("backup"), PowerState::Off)]
    #[case("stopped", None, Some("suspended"), PowerState::Paused)]
    #[case("stopped", None, Some("suspending"), PowerState::Paused)]
    #[case("running", Some("running"), None, PowerState::On)]
    #[case("running", Some("paused"), None, PowerState::Paused)]
    #[case("running", None, None, PowerState::On)]
    #[case("unknown", None, None, PowerState::Unknown("unknown".into()))]
    fn proxmox_states(
        #[case] status: &str,
        #[case] qmp: Option<&str>,
        #[case] lock: Option<&str>,
        #[case] expected: PowerState,
    ) {
        assert_eq!(PowerState::from_proxmox(status, qmp, lock), expected);
    }

    #[rstest]
    #[case(Some(0), "Status: ON\n", Some(PowerState::On))]
    #[case(Some(0), "", Some(PowerState::On))]
    #[case(Some(2), "Status: OFF\n", Some(PowerState::Off))]
    #[case(Some(2), "  status line follows\nStatus: off\n", Some(PowerState::Off))]
    // fence-agents' EC_BAD_ARGS, or a shell's misuse: says nothing about the power.
    #[case(Some(2), "", None)]
    #[case(Some(2), "Failed: Unable to read the API key file\n", None)]
    #[case(Some(2), "Status: ON\n", None)]
    #[case(Some(0), "Status: OFF\n", None)]
    #[case(Some(1), "Status: OFF\n", None)]
    #[case(None, "Status: OFF\n", None)]
    fn fence_agent_status(
        #[case] code: Option<i32>,
        #[case] stdout: &str,
        #[case] expected: Option<PowerState>,
    ) {
        assert_eq!(PowerState::from_fence_agent_status(code, stdout), expected);
    }
}
