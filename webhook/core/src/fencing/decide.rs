//! Which nodes to fence, refuse, keep fenced or give back, from what the cluster shows now.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use super::config::{CONTROL_PLANE_LABEL, FencerPolicy, selector_matches};
use super::record::{FENCED_ANNOTATION, FenceRecord, FencingMark};
use crate::extender::snapshot::{ConditionStatus, FENCING_ANNOTATION, LeaseInfo, ReadyCondition};
use crate::taints::OUT_OF_SERVICE;

/// The kubelet's default `leaseDurationSeconds`, for a Lease that does not say.
pub const DEFAULT_NODE_LEASE_SECONDS: i32 = 40;

/// What the fencer knows of one node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeFacts {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub ready: Option<ReadyCondition>,
    pub boot_id: String,
    pub lease: Option<LeaseInfo>,
    /// Carries a `node.kubernetes.io/out-of-service` taint, ours or anyone's.
    pub out_of_service: bool,
    /// Our [`FenceRecord`], when the annotation is present, well-formed and owns one of the
    /// node's taints ([`FenceRecord::owns`]).
    pub record: Option<FenceRecord>,
    /// The record annotation is present but cannot be read (edited by hand?): the taint is
    /// then nobody's the fencer can vouch for, and stays.
    pub record_unreadable: bool,
    /// The record reads but owns none of the node's taints: ours was removed by someone.
    pub record_stale: bool,
    /// `spec.unschedulable`: someone is working on it ([`super::proof::PowerOffLeave`]).
    pub cordoned: bool,
    /// Carries the being-fenced mark, which keeps the extender from placing pods on it.
    pub fencing_marked: bool,
    /// The mark says a proof took one of the `maxFenced` places for it ([`FencingMark`]).
    pub claim_marked: bool,
}

impl NodeFacts {
    pub fn from_node(node: &Node, lease: Option<&Lease>) -> Option<Self> {
        let meta = &node.metadata;
        let record = meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(FENCED_ANNOTATION))
            .map(|v| FenceRecord::from_annotation(v));
        let record_unreadable = matches!(record, Some(Err(_)));
        let mark = meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(FENCING_ANNOTATION));
        let taints = node.spec.as_ref().and_then(|s| s.taints.as_deref());
        let taints = taints.unwrap_or_default();
        let record = record.and_then(Result::ok);
        let owned = record
            .as_ref()
            .is_some_and(|record| taints.iter().any(|t| record.owns(t)));
        let record_stale = record.is_some() && !owned;
        let record = record.filter(|_| owned);
        let status = node.status.as_ref();
        Some(Self {
            name: meta.name.clone()?,
            labels: meta.labels.clone().unwrap_or_default(),
            ready: ReadyCondition::of(node),
            boot_id: status
                .and_then(|s| s.node_info.as_ref())
                .map(|i| i.boot_id.clone())
                .unwrap_or_default(),
            lease: lease.and_then(LeaseInfo::from_lease),
            out_of_service: taints.iter().any(|t| t.key == OUT_OF_SERVICE),
            record,
            record_unreadable,
            record_stale,
            cordoned: node
                .spec
                .as_ref()
                .and_then(|s| s.unschedulable)
                .unwrap_or(false),
            fencing_marked: mark.is_some(),
            claim_marked: mark.is_some_and(|m| FencingMark::claims(m)),
        })
    }

    /// How long since the Lease was renewed, past one renew interval: positive means a
    /// heartbeat is overdue. `None` without a renewed Lease: nothing to judge by.
    pub fn overdue(&self, now: Timestamp) -> Option<SignedDuration> {
        let lease = self.lease.as_ref()?;
        let renewed = lease.renew_time?;
        Some(now.duration_since(renewed) - renew_interval(lease))
    }

    /// When every node that fell silent at the same moment as this one is overdue too: one
    /// renew interval after this one was suspected. Nodes renew at random points of their
    /// interval, so silence that began at once is noticed up to one interval apart; a
    /// destructive step (a power-off, a fence without proof) waits for this point and checks
    /// the share of silent nodes again.
    pub fn settled_at(&self, policy: &FencerPolicy) -> Option<Timestamp> {
        let lease = self.lease.as_ref()?;
        let interval = renew_interval(lease);
        let margin = SignedDuration::from_secs(i64::from(policy.suspect_margin_seconds));
        lease.renew_time?.checked_add(interval * 2 + margin).ok()
    }

    pub fn silent_for(&self, now: Timestamp) -> Option<SignedDuration> {
        let renewed = self.lease.as_ref()?.renew_time?;
        Some(now.duration_since(renewed))
    }

    /// Whether a renewal is overdue by more than `suspectMarginSeconds`: the node is suspected.
    pub fn is_silent(&self, policy: &FencerPolicy, now: Timestamp) -> bool {
        let margin = SignedDuration::from_secs(i64::from(policy.suspect_margin_seconds));
        self.overdue(now).is_some_and(|late| late > margin)
    }

    fn fenced_by_us(&self) -> bool {
        self.out_of_service && self.record.is_some()
    }

    fn is_ready(&self) -> bool {
        self.ready
            .is_some_and(|r| r.status == ConditionStatus::True)
    }
}

/// When each node's current Lease renewal arrived, by the fencer's clock. A Lease's
/// `renewTime` is stamped by the node's clock: a node whose clock runs behind would look
/// silent while it heartbeats, and be fenced. A new renewal counts from its own stamp only
/// where that falls between the fencer's previous look and now, which it does when the
/// clocks agree; otherwise from the nearer end. A renewal first seen after a restart counts
/// from then, which can only delay a fence.
#[derive(Debug, Clone, Default)]
pub struct RenewalClock {
    /// Node → (the `renewTime` as written, when it arrived).
    seen: BTreeMap<String, (Timestamp, Timestamp)>,
    /// When [`RenewalClock::observe`] last ran.
    looked: Option<Timestamp>,
}

impl RenewalClock {
    /// Replaces the `renewTime` in each node's facts with when it arrived, and forgets nodes
    /// that are gone.
    pub fn observe(&mut self, nodes: &mut [NodeFacts], now: Timestamp) {
        let mut seen = BTreeMap::new();
        for node in nodes {
            let Some(lease) = node.lease.as_mut() else {
                continue;
            };
            let Some(stamped) = lease.renew_time else {
                continue;
            };
            let arrived = match (self.seen.get(&node.name), self.looked) {
                (Some(&(before, arrived)), _) if before == stamped => arrived,
                (_, Some(looked)) if stamped < looked => looked,
                (_, Some(_)) if stamped <= now => stamped,
                _ => now,
            };
            lease.renew_time = Some(arrived);
            seen.insert(node.name.clone(), (stamped, arrived));
        }
        self.seen = seen;
        self.looked = Some(now);
    }
}

/// How often the node's kubelet renews its Lease: a quarter of its duration.
fn renew_interval(lease: &LeaseInfo) -> SignedDuration {
    let duration = lease
        .lease_duration_seconds
        .filter(|d| *d > 0)
        .unwrap_or(DEFAULT_NODE_LEASE_SECONDS);
    SignedDuration::from_millis(i64::from(duration) * 250)
}

/// Why a silent node is not fenced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Not selected by `fencer.nodeSelector`.
    NotEligible,
    /// A control-plane node, and `fenceControlPlane` is off.
    ControlPlane,
    /// No agent selects the node.
    NoAgent,
    /// Too many eligible nodes are silent at once.
    TooManySilent {
        silent: usize,
        eligible: usize,
        max_percent: u32,
    },
    /// As many nodes as allowed (`holders`) are fenced or being proven off already.
    TooManyFenced { holders: Vec<String>, max: u32 },
    /// The node renewed its Lease while it was being proven off: the device may be wired to
    /// another machine.
    HeartbeatDuringProof,
    /// The node renewed its Lease before it was powered off: it is alive, so it is left
    /// running.
    HeartbeatResumed,
    /// The device could not prove it off.
    NotProven(String),
    /// This replica could not confirm it still holds the leader Lease.
    NotLeading(String),
    /// The node reports no `status.nodeInfo.bootID`: nothing would tell when it power-cycled,
    /// which is what lifts the taint.
    NoBootId,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotEligible => f.write_str("not selected by fencer.nodeSelector"),
            Self::ControlPlane => {
                f.write_str("a control-plane node, and fencer.fenceControlPlane is false")
            }
            Self::NoAgent => f.write_str("no fence agent in fencer.agents selects this node"),
            Self::TooManySilent {
                silent,
                eligible,
                max_percent,
            } => write!(
                f,
                "{silent} of {eligible} eligible nodes are silent at once, more than \
                 {max_percent}%: that looks like a partition or a control-plane fault, not \
                 dead machines"
            ),
            Self::TooManyFenced { holders, max } => write!(
                f,
                "{} already fenced or being proven off; fencer.maxFenced is {max} (a node \
                 powered off that will not come back keeps its place until its \
                 {FENCING_ANNOTATION} annotation is removed)",
                holders.join(", ")
            ),
            Self::HeartbeatDuringProof => f.write_str(
                "the node renewed its Lease while its device said off: the agent may be \
                 wired to another machine",
            ),
            Self::HeartbeatResumed => f.write_str(
                "the node renewed its Lease before it was powered off: it is alive, so it was \
                 left running",
            ),
            Self::NotProven(why) => write!(f, "not proven off: {why}"),
            Self::NoBootId => f.write_str(
                "the node reports no status.nodeInfo.bootID, so a power cycle could not be told \
                 apart from its return, and the taint could never be lifted safely",
            ),
            Self::NotLeading(why) => write!(
                f,
                "this replica could not confirm it still leads ({why}); another one may be \
                 fencing"
            ),
        }
    }
}

impl Refusal {
    /// A short CamelCase reason for Events and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotEligible => "NotEligible",
            Self::ControlPlane => "ControlPlane",
            Self::NoAgent => "NoFenceAgent",
            Self::TooManySilent { .. } => "TooManySilent",
            Self::TooManyFenced { .. } => "TooManyFenced",
            Self::HeartbeatDuringProof => "HeartbeatDuringProof",
            Self::HeartbeatResumed => "HeartbeatResumed",
            Self::NotProven(_) => "NotProvenOff",
            Self::NotLeading(_) => "NotLeading",
            Self::NoBootId => "NoBootId",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Heartbeats arrive, or there is nothing to judge by.
    Healthy,
    /// Silent and fenceable: prove it off with agent `agent` (an index into `agents`).
    Prove {
        agent: usize,
        silent_for: SignedDuration,
    },
    /// Being proven off already.
    Proving,
    /// Silent, but it will not be fenced.
    Refused(Refusal),
    /// Fenced by us and not back yet.
    Fenced,
    /// Fenced by us, back and Ready with a new boot ID: it power-cycled, remove the taint.
    Unfence { boot_id: String },
    /// Fenced by us and back, with the boot ID it had when fenced: it never power-cycled
    /// (a partition healed, or the device lied), so whatever it ran may still be running.
    KeepFenced { boot_id: String },
    /// Tainted out-of-service by someone else: left alone.
    ForeignTaint,
}

/// The decision for every node, sorted by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub decisions: Vec<(String, Decision)>,
}

impl Plan {
    pub fn get(&self, node: &str) -> Option<&Decision> {
        self.decisions
            .iter()
            .find(|(name, _)| name == node)
            .map(|(_, d)| d)
    }
}

/// Decides every node. `proving` names the nodes whose proof is under way; `claimed` those a
/// proof has powered off or is tainting, which count against `maxFenced` with the fenced
/// ones. Proofs only read, so they run side by side: a node that cannot be proven off never
/// holds up one that can. The cap is enforced again before each destructive step ([`cap`]).
pub fn plan(
    nodes: &[NodeFacts],
    policy: &FencerPolicy,
    now: Timestamp,
    proving: &BTreeSet<String>,
    claimed: &BTreeSet<String>,
) -> Plan {
    let eligibility = |node: &NodeFacts| eligibility(node, policy);
    let share = silent_share(nodes, policy, now);
    let holders = holders(nodes, claimed);

    let mut sorted: Vec<&NodeFacts> = nodes.iter().collect();
    // The longest-silent node first, so that a cap on fences picks the one down longest.
    sorted.sort_by_key(|n| (std::cmp::Reverse(n.silent_for(now)), n.name.clone()));
    let mut decisions = Vec::with_capacity(nodes.len());
    for node in sorted {
        let decision = if node.fenced_by_us() {
            recovery(node, policy, now)
        } else if node.out_of_service {
            Decision::ForeignTaint
        } else if !node.is_silent(policy, now) {
            Decision::Healthy
        } else if proving.contains(&node.name) {
            Decision::Proving
        } else if let Err(refusal) = eligibility(node) {
            Decision::Refused(refusal)
        } else if node.boot_id.is_empty() {
            Decision::Refused(Refusal::NoBootId)
        } else if let Err(refusal) = &share {
            Decision::Refused(refusal.clone())
        } else if let Err(refusal) = room_besides(&holders, &node.name, policy) {
            Decision::Refused(refusal)
        } else if let Some((agent, _)) = policy.agent_for(&node.name, &node.labels) {
            Decision::Prove {
                agent,
                silent_for: node.silent_for(now).unwrap_or_default(),
            }
        } else {
            Decision::Refused(Refusal::NoAgent)
        };
        decisions.push((node.name.clone(), decision));
    }
    decisions.sort_by(|a, b| a.0.cmp(&b.0));
    Plan { decisions }
}

/// Whether the fencer may fence this node at all, silent or not.
pub fn eligibility(node: &NodeFacts, policy: &FencerPolicy) -> Result<(), Refusal> {
    if !selector_matches(&policy.node_selector, &node.labels) {
        return Err(Refusal::NotEligible);
    }
    if !policy.fence_control_plane && node.labels.contains_key(CONTROL_PLANE_LABEL) {
        return Err(Refusal::ControlPlane);
    }
    Ok(())
}

/// Whether few enough eligible nodes are silent for fencing to be sane: more at once is a
/// partition or a control-plane fault.
pub fn silent_share(
    nodes: &[NodeFacts],
    policy: &FencerPolicy,
    now: Timestamp,
) -> Result<(), Refusal> {
    let eligible: Vec<&NodeFacts> = nodes
        .iter()
        .filter(|n| eligibility(n, policy).is_ok())
        .collect();
    let silent = eligible.iter().filter(|n| n.is_silent(policy, now)).count();
    if silent * 100 > policy.max_silent_percent as usize * eligible.len() {
        return Err(Refusal::TooManySilent {
            silent,
            eligible: eligible.len(),
            max_percent: policy.max_silent_percent,
        });
    }
    Ok(())
}

/// What becomes of a node fenced by us: [`Decision::Fenced`] while it is away,
/// [`Decision::Unfence`] once back with a new bootID, [`Decision::KeepFenced`] when back
/// without one.
pub fn recovery(node: &NodeFacts, policy: &FencerPolicy, now: Timestamp) -> Decision {
    let back = node.is_ready() && !node.is_silent(policy, now);
    let Some(record) = node.record.as_ref().filter(|_| back) else {
        return Decision::Fenced;
    };
    // A record without a bootID could never tell a power cycle from a return.
    if record.boot_id.is_empty() || node.boot_id.is_empty() || node.boot_id == record.boot_id {
        Decision::KeepFenced {
            boot_id: node.boot_id.clone(),
        }
    } else {
        Decision::Unfence {
            boot_id: node.boot_id.clone(),
        }
    }
}

/// The nodes that hold one of the `maxFenced` places: fenced by us, or claimed by a proof of
/// this replica's (`claimed`) or, as its mark says, of any replica's.
fn holders<'a>(nodes: &'a [NodeFacts], claimed: &BTreeSet<String>) -> Vec<&'a str> {
    nodes
        .iter()
        .filter(|n| n.fenced_by_us() || n.claim_marked || claimed.contains(&n.name))
        .map(|n| n.name.as_str())
        .collect()
}

/// Refuses `node` while `maxFenced` other nodes hold a place. Its own place, left by a proof
/// that ended without a taint, does not keep it from being proven again.
fn room_besides(holders: &[&str], node: &str, policy: &FencerPolicy) -> Result<(), Refusal> {
    let others: Vec<&str> = holders.iter().copied().filter(|h| *h != node).collect();
    if others.len() >= policy.max_fenced as usize {
        return Err(Refusal::TooManyFenced {
            holders: others.into_iter().map(String::from).collect(),
            max: policy.max_fenced,
        });
    }
    Ok(())
}

/// Whether `node` may be powered off or tainted now: fewer than `maxFenced` other nodes are
/// fenced or claimed by a proof.
pub fn cap(
    nodes: &[NodeFacts],
    policy: &FencerPolicy,
    claimed: &BTreeSet<String>,
    node: &str,
) -> Result<(), Refusal> {
    room_besides(&holders(nodes, claimed), node, policy)
}

/// The check before powering a suspected node off, and again at every reading of its device:
/// its Lease must still carry the renewal seen when the proof began (`renewed_at_start`).
/// Compared for equality, not order, so that a node whose clock runs behind the fencer's, and
/// stamps its renewals in the past, is caught as surely as one on time.
pub fn still_silent(node: &NodeFacts, renewed_at_start: Option<Timestamp>) -> Result<(), Refusal> {
    match renewed_since(node, renewed_at_start) {
        true => Err(Refusal::HeartbeatResumed),
        false => Ok(()),
    }
}

/// The last check before tainting a node its device proved off: it must not have renewed its
/// Lease since the proof began.
pub fn confirm(node: &NodeFacts, renewed_at_start: Option<Timestamp>) -> Result<(), Refusal> {
    match renewed_since(node, renewed_at_start) {
        true => Err(Refusal::HeartbeatDuringProof),
        false => Ok(()),
    }
}

fn renewed_since(node: &NodeFacts, renewed_at_start: Option<Timestamp>) -> bool {
    node.lease.as_ref().and_then(|l| l.renew_time) != renewed_at_start
}

/// A leader stops acting this long before its Lease, as last renewed, would let another
/// replica take over. Renewals land two seconds before that point, so a leader whose renewals
/// succeed never comes this close.
pub const LEADER_STOP_MARGIN: SignedDuration = SignedDuration::from_secs(1);

/// The check before a power-off or a taint, on the leader Lease read just now: it still names
/// `identity` and was renewed recently enough that no other replica can have taken over. The
/// Lease is renewed in the background, which says nothing when renewals fail: a leader cut off
/// from the API would otherwise go on acting after another one took over.
pub fn still_leads(lease: &Lease, identity: &str, now: Timestamp) -> Result<(), Refusal> {
    let spec = lease.spec.as_ref();
    let holder = spec.and_then(|s| s.holder_identity.as_deref());
    if holder != Some(identity) {
        let holder = holder.unwrap_or("nobody");
        return Err(Refusal::NotLeading(format!(
            "the leader Lease is held by {holder}"
        )));
    }
    let renewed = spec.and_then(|s| s.renew_time.as_ref()).map(|t| t.0);
    let duration = spec.and_then(|s| s.lease_duration_seconds).unwrap_or(0);
    let valid_until = renewed.and_then(|r| {
        r.checked_add(SignedDuration::from_secs(i64::from(duration)) - LEADER_STOP_MARGIN)
            .ok()
    });
    match valid_until {
        Some(until) if now < until => Ok(()),
        _ => Err(Refusal::NotLeading(
            "the leader Lease has not been renewed in time".into(),
        )),
    }
}
