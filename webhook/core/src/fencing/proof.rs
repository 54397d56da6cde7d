//! Proving a node off through its fence device: what to do after each answer. Only a device
//! saying `Off` is proof; everything else is read again until the deadline, and a machine
//! that is still on is powered off only when the config allows it.

use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use super::power::PowerState;

/// One answer from the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reading {
    Power(PowerState),
    /// The call failed or timed out; the text is safe to log (no credentials).
    Failed(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProofStep {
    /// The device says off.
    Proven,
    /// Ask the device to power the machine off now, then read again.
    PowerOff,
    ReadAgain {
        after: Duration,
    },
    /// No proof; do not fence. The text says why.
    GiveUp(String),
}

/// How often to read while a power-off lands (Redfish resets land after 1-11 s).
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// The longest wait between retries of a failing device.
pub const MAX_RETRY_INTERVAL: Duration = Duration::from_secs(5);

/// Whether a proof may power a machine that is still on off, and if not, why not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerOffLeave {
    Allowed,
    /// The agent says `powerOff: false`.
    NotConfigured,
    /// The node is cordoned: someone is working on it, and a machine rebooting for
    /// maintenance also stops heartbeating; powered off, it would stay off.
    Cordoned,
}

impl PowerOffLeave {
    /// For a node whose agent says `power_off`, cordoned (`spec.unschedulable`) or not.
    pub fn of(power_off: bool, cordoned: bool) -> Self {
        match (power_off, cordoned) {
            (false, _) => Self::NotConfigured,
            (true, true) => Self::Cordoned,
            (true, false) => Self::Allowed,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Proof {
    started: Timestamp,
    deadline: SignedDuration,
    power_off: PowerOffLeave,
    /// A machine still on is powered off no sooner than this (see `NodeFacts::settled_at`).
    power_off_not_before: Timestamp,
    power_off_requested: bool,
    failures: u32,
    last: Option<String>,
}

impl Proof {
    /// A proof that may take until `started + deadline`. With leave to, a machine the device
    /// reports on is powered off, but not before `power_off_not_before`; until then it is
    /// read again, since it may turn off by itself.
    pub fn new(
        started: Timestamp,
        deadline: Duration,
        power_off: PowerOffLeave,
        power_off_not_before: Timestamp,
    ) -> Self {
        Self {
            started,
            deadline: SignedDuration::try_from(deadline).unwrap_or(SignedDuration::MAX),
            power_off,
            power_off_not_before,
            power_off_requested: false,
            failures: 0,
            last: None,
        }
    }

    pub fn started(&self) -> Timestamp {
        self.started
    }

    /// Whether a power-off was sent: the record and Events say so.
    pub fn powered_off(&self) -> bool {
        self.power_off_requested
    }

    /// Call after the device accepted a power-off request.
    pub fn power_off_sent(&mut self) {
        self.power_off_requested = true;
    }

    /// Call when a power-off request failed: it counts as a failed reading.
    pub fn power_off_failed(&mut self, why: &str, now: Timestamp) -> ProofStep {
        self.next(Reading::Failed(format!("power-off refused: {why}")), now)
    }

    pub fn next(&mut self, reading: Reading, now: Timestamp) -> ProofStep {
        if reading == Reading::Power(PowerState::Off) {
            return ProofStep::Proven;
        }
        self.last = Some(match &reading {
            Reading::Power(state) => format!("the device last said {state}"),
            Reading::Failed(why) => format!("the device last failed: {why}"),
        });
        if now.duration_since(self.started) >= self.deadline {
            return ProofStep::GiveUp(format!(
                "not proven off within {}s; {}",
                self.deadline.as_secs(),
                self.last.as_deref().unwrap_or_default()
            ));
        }
        let state = match reading {
            Reading::Failed(_) => {
                self.failures = self.failures.saturating_add(1);
                let backoff = POLL_INTERVAL.saturating_mul(1 << self.failures.min(3));
                return ProofStep::ReadAgain {
                    after: backoff.min(MAX_RETRY_INTERVAL),
                };
            }
            Reading::Power(state) => state,
        };
        let still_running = matches!(
            state,
            PowerState::On | PowerState::PoweringOn | PowerState::Paused
        );
        let alive = format!("the device says {state}: the node is alive but unreachable");
        match (still_running, self.power_off_requested, self.power_off) {
            (true, false, PowerOffLeave::Allowed) if now >= self.power_off_not_before => {
                ProofStep::PowerOff
            }
            (true, false, PowerOffLeave::NotConfigured) => ProofStep::GiveUp(format!(
                "{alive}, and this agent may not power it off (powerOff: false)"
            )),
            (true, false, PowerOffLeave::Cordoned) => ProofStep::GiveUp(format!(
                "{alive}, and it is cordoned: it may be rebooting for maintenance, so it is \
                 not powered off"
            )),
            _ => ProofStep::ReadAgain {
                after: POLL_INTERVAL,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    fn proof(power_off_allowed: bool) -> Proof {
        let leave = PowerOffLeave::of(power_off_allowed, false);
        Proof::new(at(0), Duration::from_secs(60), leave, at(0))
    }

    #[test]
    fn a_machine_still_on_is_powered_off_only_once_silence_has_settled() {
        let mut proof = Proof::new(
            at(0),
            Duration::from_secs(60),
            PowerOffLeave::Allowed,
            at(10),
        );
        for t in [1, 5, 9] {
            assert_eq!(
                proof.next(Reading::Power(PowerState::On), at(t)),
                ProofStep::ReadAgain {
                    after: POLL_INTERVAL
                }
            );
        }
        assert_eq!(
            proof.next(Reading::Power(PowerState::On), at(10)),
            ProofStep::PowerOff
        );
        let mut early_off = Proof::new(
            at(0),
            Duration::from_secs(60),
            PowerOffLeave::Allowed,
            at(10),
        );
        assert_eq!(
            early_off.next(Reading::Power(PowerState::Off), at(2)),
            ProofStep::Proven
        );
    }

    #[test]
    fn off_is_proof() {
        assert_eq!(
            proof(false).next(Reading::Power(PowerState::Off), at(1)),
            ProofStep::Proven
        );
    }

    #[test]
    fn on_without_permission_is_never_fenced() {
        let step = proof(false).next(Reading::Power(PowerState::On), at(1));
        assert!(
            matches!(&step, ProofStep::GiveUp(why) if why.contains("powerOff: false")),
            "{step:?}"
        );
    }

    #[test]
    fn a_cordoned_node_is_never_powered_off_but_off_still_proves() {
        let leave = PowerOffLeave::of(true, true);
        assert_eq!(leave, PowerOffLeave::Cordoned);
        let mut proof = Proof::new(at(0), Duration::from_secs(60), leave, at(0));
        let step = proof.next(Reading::Power(PowerState::On), at(30));
        assert!(
            matches!(&step, ProofStep::GiveUp(why) if why.contains("cordoned")),
            "{step:?}"
        );
        let mut proof = Proof::new(at(0), Duration::from_secs(60), leave, at(0));
        assert_eq!(
            proof.next(Reading::Power(PowerState::Off), at(1)),
            ProofStep::Proven
        );
        assert_eq!(PowerOffLeave::of(false, true), PowerOffLeave::NotConfigured);
    }

    #[test]
    fn on_with_permission_is_powered_off_once_then_polled_until_off() {
        let mut proof = proof(true);
        assert_eq!(
            proof.next(Reading::Power(PowerState::On), at(1)),
            ProofStep::PowerOff
        );
        proof.power_off_sent();
        for t in 2..8 {
            let step = proof.next(Reading::Power(PowerState::On), at(t));
            assert_eq!(
                step,
                ProofStep::ReadAgain {
                    after: POLL_INTERVAL
                }
            );
        }
        assert_eq!(
            proof.next(Reading::Power(PowerState::PoweringOff), at(9)),
            ProofStep::ReadAgain {
                after: POLL_INTERVAL
            }
        );
        assert_eq!(
            proof.next(Reading::Power(PowerState::Off), at(10)),
            ProofStep::Proven
        );
        assert!(proof.powered_off());
    }

    #[test]
    fn powering_off_paused_and_unknown_are_not_off() {
        for state in [
            PowerState::PoweringOff,
            PowerState::Unknown("Standby".into()),
        ] {
            let step = proof(false).next(Reading::Power(state.clone()), at(1));
            assert!(
                matches!(step, ProofStep::ReadAgain { .. }),
                "{state}: {step:?}"
            );
        }
        let step = proof(false).next(Reading::Power(PowerState::Paused), at(1));
        assert!(matches!(step, ProofStep::GiveUp(_)), "{step:?}");
    }

    #[test]
    fn failures_back_off_and_the_deadline_gives_up_saying_why() {
        let mut proof = proof(true);
        let waits: Vec<ProofStep> = (1..=4)
            .map(|t| proof.next(Reading::Failed("connection refused".into()), at(t)))
            .collect();
        assert_eq!(
            waits,
            [2, 4, 5, 5].map(|s| ProofStep::ReadAgain {
                after: Duration::from_secs(s)
            })
        );
        let step = proof.next(Reading::Failed("timed out".into()), at(60));
        assert!(
            matches!(&step, ProofStep::GiveUp(why) if why.contains("timed out") && why.contains("60s")),
            "{step:?}"
        );
    }
}
