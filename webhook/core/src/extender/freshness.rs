//! Whether the extender can trust its own view of the cluster.
//!
//! The filter rejects a node whose heartbeat Lease looks stale. When the view itself is behind
//! (a watch that stopped delivering) or the control plane cannot hear most nodes at once,
//! every node looks stale and the filter would keep every managed pod Pending. Then the
//! extender steps aside: it answers with an error, which kube-scheduler skips for an
//! `ignorable` extender, and the in-tree plugins place the pod on their own.

use std::fmt;

use k8s_openapi::jiff::Timestamp;

use super::decide::Heartbeat;
use super::policy::ExtenderPolicy;
use super::snapshot::Snapshot;

/// When one watch last delivered something: an event, or a completed (re)list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchHeard<'a> {
    /// The watched kind, as errors name it.
    pub kind: &'a str,
    /// `None` until the watch has delivered anything.
    pub last_heard: Option<Timestamp>,
}

/// Why the view cannot be trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Staleness {
    /// A watch has delivered nothing for longer than `watchSilenceSeconds`.
    WatchSilent {
        kind: String,
        /// `None` when it never has.
        silent_seconds: Option<i64>,
    },
    /// More than `maxStaleLeasePercent` of the nodes have a stale or missing Lease at once:
    /// the extender, or the control plane, is behind, not that many machines.
    MostLeasesStale { stale: usize, nodes: usize },
}

impl fmt::Display for Staleness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::WatchSilent {
                kind,
                silent_seconds: Some(seconds),
            } => write!(f, "the {kind} watch has delivered nothing for {seconds}s"),
            Self::WatchSilent {
                kind,
                silent_seconds: None,
            } => write!(f, "the {kind} watch has delivered nothing yet"),
            Self::MostLeasesStale { stale, nodes } => write!(
                f,
                "{stale} of {nodes} nodes have a stale heartbeat lease at once: \
                 the view or the control plane is behind"
            ),
        }
    }
}

/// `None` when the view can be decided over; otherwise why not. `watches` lists the watches
/// behind `snapshot` (none for a snapshot listed once).
pub fn staleness(
    watches: &[WatchHeard<'_>],
    snapshot: &Snapshot,
    policy: &ExtenderPolicy,
    now: Timestamp,
) -> Option<Staleness> {
    let now_ms = now.as_millisecond();
    if policy.watch_silence_seconds > 0 {
        let allowed_ms = i64::from(policy.watch_silence_seconds) * 1000;
        let silent = watches.iter().find_map(|watch| {
            let silent_ms = watch.last_heard.map(|t| now_ms - t.as_millisecond());
            match silent_ms {
                Some(ms) if ms <= allowed_ms => None,
                _ => Some(Staleness::WatchSilent {
                    kind: watch.kind.to_string(),
                    silent_seconds: silent_ms.map(|ms| ms / 1000),
                }),
            }
        });
        if silent.is_some() {
            return silent;
        }
    }
    let (mut nodes, mut stale) = (0_usize, 0_usize);
    for state in snapshot.known_nodes() {
        nodes += 1;
        if !matches!(
            Heartbeat::of(state, policy, now_ms),
            Heartbeat::Fresh { .. }
        ) {
            stale += 1;
        }
    }
    // Integer form of stale / nodes > percent / 100.
    let too_many = stale * 100 > nodes * policy.max_stale_lease_percent as usize;
    (nodes > 0 && too_many).then_some(Staleness::MostLeasesStale { stale, nodes })
}
