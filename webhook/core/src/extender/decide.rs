//! The filter and prioritize decisions, and the per-node verdict `explain` prints.
//!
//! Everything about the pod (its volumes, where they are attached, which node they pin it to)
//! is worked out once per call in [`Evaluation::new`]; each node then costs one snapshot
//! lookup and a few comparisons. The filter allocates nothing per node: names stay the
//! caller's, and nodes failing for the same reasons share one worded rejection.

use std::fmt;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;

use super::policy::ExtenderPolicy;
use super::snapshot::{
    AgentInfo, ClaimInfo, ConditionStatus, FENCING_ANNOTATION, ManagedPodInfo, NodeInfo, NodeState,
    Snapshot, pod_claim_names,
};
use super::wire::{MAX_EXTENDER_PRIORITY, MIN_EXTENDER_PRIORITY};
use crate::taints::OUT_OF_SERVICE;

/// Score parts are percentages: 100 is the best a node can do on that criterion.
const BEST: u64 = 100;

/// Why a node cannot take the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason<'a> {
    /// The snapshot has no Node object by that name.
    UnknownNode,
    /// The node has no heartbeat Lease: its kubelet never registered one, or it is gone.
    NoLease,
    /// The Lease exists but carries no renew time.
    LeaseNeverRenewed,
    /// The kubelet stopped renewing the Lease, whatever the Ready condition still says.
    LeaseStale { threshold_seconds: u32 },
    /// Tainted `node.kubernetes.io/out-of-service`.
    OutOfService,
    /// The fencer is working on the node.
    Fencing,
    /// The node is not labelled as a QuickSync node.
    NoQuickSyncLabel { key: &'a str },
    /// One of the pod's single-node volumes is attached to another, healthy node.
    VolumeHeldElsewhere { claim: &'a str, holder: &'a str },
    /// Another managed pod, running or shutting down on a node not proven off, still uses one
    /// of the pod's single-node volumes: every node is refused until it is gone.
    VolumeInUse { claim: &'a str, pod: &'a str },
    /// Attaching the pod's volumes would exceed the node's CSI attach limit.
    AttachLimitReached { driver: &'a str },
    /// The node's agent, in a fresh report, finds no card that can transcode.
    NoUsableGpu,
}

impl Reason<'_> {
    /// A fixed name for the kind of reason, for metrics: bounded, unlike the worded reason.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::UnknownNode => "unknown-node",
            Self::NoLease => "no-lease",
            Self::LeaseNeverRenewed => "lease-never-renewed",
            Self::LeaseStale { .. } => "lease-stale",
            Self::OutOfService => "out-of-service",
            Self::Fencing => "fencing",
            Self::NoQuickSyncLabel { .. } => "no-quicksync-label",
            Self::VolumeHeldElsewhere { .. } => "volume-held-elsewhere",
            Self::VolumeInUse { .. } => "volume-in-use",
            Self::AttachLimitReached { .. } => "attach-limit",
            Self::NoUsableGpu => "no-usable-gpu",
        }
    }

    /// Whether evicting lower-priority pods from the node could make it fit. Only an attach
    /// limit can be freed that way; the scheduler must not preempt pods on a dead, fenced or
    /// unsuitable node for nothing.
    pub fn preemption_may_help(&self) -> bool {
        matches!(self, Self::AttachLimitReached { .. })
    }
}

// Reasons are worded without per-node numbers: kube-scheduler groups identical reasons in
// its "0/N nodes are available" event, which stays readable only if they repeat exactly.
impl fmt::Display for Reason<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownNode => f.write_str("unknown node"),
            Self::NoLease => f.write_str("no heartbeat lease"),
            Self::LeaseNeverRenewed => f.write_str("heartbeat lease never renewed"),
            Self::LeaseStale { threshold_seconds } => write!(
                f,
                "heartbeat lease not renewed in the last {threshold_seconds}s"
            ),
            Self::OutOfService => write!(f, "node is out of service (taint {OUT_OF_SERVICE})"),
            Self::Fencing => write!(f, "node is being fenced (annotation {FENCING_ANNOTATION})"),
            Self::NoQuickSyncLabel { key } => write!(f, "node lacks QuickSync label {key}"),
            Self::VolumeHeldElsewhere { claim, holder } => write!(
                f,
                "volume of claim {claim} is attached to healthy node {holder}"
            ),
            Self::VolumeInUse { claim, pod } => write!(
                f,
                "claim {claim} is still used by pod {pod}, running or shutting down: placed \
                 once that pod is gone, so that two never write the volume"
            ),
            Self::AttachLimitReached { driver } => {
                write!(f, "attach limit of CSI driver {driver} reached")
            }
            Self::NoUsableGpu => f.write_str("node agent reports no usable GPU"),
        }
    }
}

/// Why nodes failed the filter, worded once for every node that fails for the same reasons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Every reason, joined with `"; "`.
    pub reason: String,
    /// The kind of each reason ([`Reason::kind`]).
    pub kinds: Vec<&'static str>,
    /// No preemption on these nodes would help; the wire's `FailedAndUnresolvableNodes`.
    pub unresolvable: bool,
}

/// The nodes that failed the filter for one [`Rejection`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedNodes<N> {
    pub rejection: Rejection,
    /// In candidate order.
    pub nodes: Vec<N>,
}

/// The filter's answer: every candidate is either passed or in exactly one rejected group.
/// Names are the candidates themselves, moved in, so names borrowed from the request stay
/// borrowed up to the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterDecision<N> {
    /// In candidate order.
    pub passed: Vec<N>,
    /// Failing nodes, grouped by rejection: they mostly fail for the same few reasons.
    pub rejected: Vec<RejectedNodes<N>>,
}

impl<N: AsRef<str>> FilterDecision<N> {
    /// Each failing node with its rejection, group by group.
    pub fn failed(&self) -> impl Iterator<Item = (&str, &Rejection)> {
        self.rejected.iter().flat_map(|group| {
            group
                .nodes
                .iter()
                .map(move |node| (node.as_ref(), &group.rejection))
        })
    }
}

/// Each score part, 0 (worst) to 100 (best).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScoreParts {
    /// iGPU headroom: managed pods against capacity, blended with fresh measured busyness.
    pub gpu_load: u8,
    /// Share of the pod's volumes already attached here; `None` when the pod has no bound
    /// volume, and then it carries no weight.
    pub volume_locality: Option<u8>,
    /// How long the Ready condition has been stable, relative to the flap window.
    pub flapping: u8,
}

/// The inputs behind a node's score, for `explain`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeFacts {
    /// Seconds since the heartbeat Lease was renewed.
    pub lease_age_seconds: Option<i64>,
    /// Managed pods on the node other than the pod being placed.
    pub managed_pods: u32,
    /// Allocatable count of the GPU resource.
    pub gpu_capacity: Option<i64>,
    /// The node agent's measured load, when its report is fresh.
    pub measured_busy_percent: Option<u8>,
    /// Seconds since the node agent's latest report, fresh or not.
    pub report_age_seconds: Option<i64>,
}

/// Everything about one node: the filter's verdict and the score, as `explain` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeVerdict {
    pub node: String,
    pub passes: bool,
    pub reasons: Vec<String>,
    pub score_parts: ScoreParts,
    /// What prioritize returns, 0 to 10.
    pub total: i64,
    pub facts: NodeFacts,
    /// Holders of the pod's volumes whose being offered decides this verdict: the node is
    /// rejected when the scheduler offers one of them too, and passes when it does not. The
    /// extender sees only the candidates of each call; empty when that changes nothing here.
    pub depends_on_candidates: Vec<String>,
}

/// Filters `candidates` for `pod`. Takes the names by value to move them into the answer.
pub fn filter<N: AsRef<str>>(
    pod: &Pod,
    candidates: Vec<N>,
    snapshot: &Snapshot,
    policy: &ExtenderPolicy,
    now: Timestamp,
) -> FilterDecision<N> {
    let evaluation = Evaluation::new(pod, &candidates, snapshot, policy, now);
    let mut decision = FilterDecision {
        passed: Vec::with_capacity(candidates.len()),
        rejected: Vec::new(),
    };
    // The reasons behind each of `decision.rejected`, at the same index.
    let mut groups: Vec<Vec<Reason<'_>>> = Vec::new();
    let mut reasons = Vec::new();
    for node in candidates {
        evaluation.collect_reasons(node.as_ref(), &mut reasons);
        if reasons.is_empty() {
            decision.passed.push(node);
            continue;
        }
        let group = groups
            .iter()
            .position(|seen| *seen == reasons)
            .and_then(|index| decision.rejected.get_mut(index));
        match group {
            Some(group) => group.nodes.push(node),
            None => {
                decision.rejected.push(RejectedNodes {
                    rejection: rejection(&reasons),
                    nodes: vec![node],
                });
                groups.push(reasons.clone());
            }
        }
    }
    decision
}

/// Scores `candidates` for `pod`, 0 to 10 each, in candidate order. Names may be borrowed
/// from the request, so that a call allocates nothing per node.
pub fn prioritize<N: AsRef<str>>(
    pod: &Pod,
    candidates: Vec<N>,
    snapshot: &Snapshot,
    policy: &ExtenderPolicy,
    now: Timestamp,
) -> Vec<(N, i64)> {
    let evaluation = Evaluation::new(pod, &candidates, snapshot, policy, now);
    candidates
        .into_iter()
        .map(|node| {
            let total = evaluation.total(node.as_ref());
            (node, total)
        })
        .collect()
}

/// The verdict on each of `candidates`, by the same rules as [`filter`] and [`prioritize`].
pub fn explain(
    pod: &Pod,
    candidates: &[String],
    snapshot: &Snapshot,
    policy: &ExtenderPolicy,
    now: Timestamp,
) -> Vec<NodeVerdict> {
    let offered_all = Evaluation::new(pod, candidates, snapshot, policy, now);
    // What the extender answers when the scheduler does not offer the holders.
    let mut holders_not_offered = offered_all.clone();
    holders_not_offered.pins.clear();
    candidates
        .iter()
        .map(|node| {
            let mut verdict = offered_all.verdict(node);
            if holders_not_offered.verdict(node).passes != verdict.passes {
                verdict.depends_on_candidates = offered_all
                    .pins
                    .iter()
                    .filter(|pin| pin.holder != node)
                    .map(|pin| pin.holder.to_string())
                    .collect();
            }
            verdict
        })
        .collect()
}

fn rejection(reasons: &[Reason<'_>]) -> Rejection {
    let reason = reasons
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    Rejection {
        reason,
        kinds: reasons.iter().map(Reason::kind).collect(),
        unresolvable: !reasons.iter().any(Reason::preemption_may_help),
    }
}

/// One of the pod's volumes, bound to a PersistentVolume.
#[derive(Debug, Clone)]
struct PodVolume<'a> {
    claim: &'a ClaimInfo,
    /// The CSI driver, from the PV or, while the PV is not cached, from its attachments.
    driver: Option<&'a str>,
    /// Nodes whose attachment of this volume is in place or in flight.
    held_on: Vec<&'a str>,
    /// Nodes where it is attached and staying.
    settled_on: Vec<&'a str>,
}

/// A single-node volume that only `holder` can give the pod. Pinned only because the scheduler
/// offered the holder: offered fewer candidates, the extender would not pin.
#[derive(Debug, Clone)]
struct Pin<'a> {
    claim: &'a str,
    holder: &'a str,
}

/// A single-node volume another managed pod still uses ([`Reason::VolumeInUse`]).
#[derive(Debug, Clone)]
struct InUse<'a> {
    claim: &'a str,
    pod: &'a str,
}

/// Whether a node's kubelet is heartbeating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Heartbeat {
    Missing,
    NeverRenewed,
    Stale { age_ms: i64 },
    Fresh { age_ms: i64 },
}

impl Heartbeat {
    /// The node's Lease, judged by the policy's `leaseStaleSeconds` at `now_ms`.
    pub(crate) fn of(state: &NodeState, policy: &ExtenderPolicy, now_ms: i64) -> Self {
        let Some(lease) = &state.lease else {
            return Self::Missing;
        };
        let Some(renewed) = lease.renew_time else {
            return Self::NeverRenewed;
        };
        let age_ms = now_ms - renewed.as_millisecond();
        if age_ms > i64::from(policy.lease_stale_seconds) * 1000 {
            Self::Stale { age_ms }
        } else {
            Self::Fresh { age_ms }
        }
    }
}

/// One node's entry in the snapshot, looked up once per node and call.
#[derive(Debug, Clone, Copy)]
struct NodeView<'a> {
    state: &'a NodeState,
    info: &'a NodeInfo,
    heartbeat: Heartbeat,
}

impl NodeView<'_> {
    /// Heartbeating and neither out of service nor being fenced: it keeps what it holds.
    fn is_healthy(&self) -> bool {
        matches!(self.heartbeat, Heartbeat::Fresh { .. })
            && !self.info.out_of_service
            && !self.info.fencing
    }
}

/// The per-call context: the pod's volumes and pins resolved against the snapshot once.
#[derive(Debug, Clone)]
pub struct Evaluation<'a> {
    snapshot: &'a Snapshot,
    policy: &'a ExtenderPolicy,
    now_ms: i64,
    /// Where the pod itself already counts as a managed pod, so it is not counted against
    /// that node (a re-run for a pod the cache already shows bound).
    own_gpu_node: Option<&'a str>,
    volumes: Vec<PodVolume<'a>>,
    pins: Vec<Pin<'a>>,
    in_use: Vec<InUse<'a>>,
    /// Each CSI driver of the pod's volumes, with how many of them use it.
    drivers: Vec<(&'a str, u32)>,
}

impl<'a> Evaluation<'a> {
    /// Resolves the pod's volumes and where they are attached. `candidates` only matters for
    /// pins: see [`Self::pins_for`].
    pub fn new(
        pod: &Pod,
        candidates: &[impl AsRef<str>],
        snapshot: &'a Snapshot,
        policy: &'a ExtenderPolicy,
        now: Timestamp,
    ) -> Self {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        let pod_name = pod.metadata.name.as_deref().unwrap_or_default();
        let mut evaluation = Self {
            snapshot,
            policy,
            now_ms: now.as_millisecond(),
            own_gpu_node: snapshot
                .managed_pod(namespace, pod_name)
                .and_then(|own| own.gpu_node()),
            volumes: Vec::new(),
            pins: Vec::new(),
            in_use: Vec::new(),
            drivers: Vec::new(),
        };
        for claim_name in pod_claim_names(pod) {
            let Some(claim) = snapshot.claim(namespace, &claim_name) else {
                continue;
            };
            let Some(pv_name) = claim.volume_name.as_deref() else {
                continue;
            };
            let pv = snapshot.volume(pv_name);
            let attachments = || snapshot.attachments_of_volume(pv_name);
            let volume = PodVolume {
                claim,
                driver: pv
                    .and_then(|pv| pv.csi_driver.as_deref())
                    .or_else(|| attachments().next().map(|a| a.attacher.as_str())),
                held_on: attachments()
                    .filter(|a| a.holds_node())
                    .map(|a| a.node_name.as_str())
                    .collect(),
                settled_on: attachments()
                    .filter(|a| a.is_settled())
                    .map(|a| a.node_name.as_str())
                    .collect(),
            };
            // The attach/detach controller decides multi-attach on the PV's modes; the
            // claim's stand in while the PV is not cached.
            let multi_attach = match pv {
                Some(pv) => pv.access_modes.allows_multi_attach(),
                None => claim.access_modes.allows_multi_attach(),
            };
            if !multi_attach {
                match evaluation.user_of(claim, pod_name) {
                    Some(user) => evaluation.in_use.push(InUse {
                        claim: &claim.name,
                        pod: &user.name,
                    }),
                    None => {
                        let pins = evaluation.pins_for(&volume, candidates);
                        evaluation.pins.extend(pins);
                    }
                }
            }
            if let Some(driver) = volume.driver {
                match evaluation.drivers.iter_mut().find(|(d, _)| *d == driver) {
                    Some((_, count)) => *count += 1,
                    None => evaluation.drivers.push((driver, 1)),
                }
            }
            evaluation.volumes.push(volume);
        }
        evaluation
    }

    /// Another managed pod that may still write the single-node volume of `claim`: bound to a
    /// node not proven off, running or shutting down. Placed on its node the pod would share
    /// the volume with it (single-node means one node, not one pod), so that two Jellyfins
    /// write one library; placed elsewhere it would wait in a Multi-Attach error. Every node
    /// is refused until that pod is gone.
    fn user_of(&self, claim: &ClaimInfo, pod_name: &str) -> Option<&'a ManagedPodInfo> {
        let proven_off = |node: &str| {
            self.snapshot
                .node_state(node)
                .and_then(|state| state.info.as_ref())
                .is_some_and(|info| info.out_of_service)
        };
        self.snapshot.managed_pods().find(|other| {
            other.namespace == claim.namespace
                && other.name != pod_name
                && !other.finished
                && other.claims.contains(&claim.name)
                && other
                    .node_name
                    .as_deref()
                    .is_some_and(|node| !proven_off(node))
        })
    }

    /// A single-node volume nobody uses, held by a healthy node, pins the pod there when the
    /// scheduler offers that node (the volume is already there). A holder that is not healthy
    /// will lose the volume to fencing or the force-detach, and one the scheduler cannot pick
    /// will let it detach on its own: neither pins.
    fn pins_for(&self, volume: &PodVolume<'a>, candidates: &[impl AsRef<str>]) -> Vec<Pin<'a>> {
        let claim = volume.claim;
        volume
            .held_on
            .iter()
            .filter(|holder| self.is_healthy(holder))
            .filter(|holder| candidates.iter().any(|c| c.as_ref() == **holder))
            .map(|holder| Pin {
                claim: &claim.name,
                holder,
            })
            .collect()
    }

    /// Why `node` cannot take the pod; empty when it can.
    pub fn reasons(&self, node: &str) -> Vec<Reason<'a>> {
        let mut reasons = Vec::new();
        self.collect_reasons(node, &mut reasons);
        reasons
    }

    /// [`Self::reasons`] into `reasons`, replacing what it held: the filter reuses one buffer
    /// for all candidates.
    fn collect_reasons(&self, node: &str, reasons: &mut Vec<Reason<'a>>) {
        reasons.clear();
        match self.view(node) {
            Some(view) => self.reasons_for(node, &view, reasons),
            None => reasons.push(Reason::UnknownNode),
        }
    }

    fn reasons_for(&self, node: &str, view: &NodeView<'a>, reasons: &mut Vec<Reason<'a>>) {
        let (state, info) = (view.state, view.info);
        match view.heartbeat {
            Heartbeat::Missing => reasons.push(Reason::NoLease),
            Heartbeat::NeverRenewed => reasons.push(Reason::LeaseNeverRenewed),
            Heartbeat::Stale { .. } => reasons.push(Reason::LeaseStale {
                threshold_seconds: self.policy.lease_stale_seconds,
            }),
            Heartbeat::Fresh { .. } => {}
        }
        if info.out_of_service {
            reasons.push(Reason::OutOfService);
        }
        if info.fencing {
            reasons.push(Reason::Fencing);
        }
        if !info.quick_sync {
            reasons.push(Reason::NoQuickSyncLabel {
                key: &self.policy.quick_sync_label.key,
            });
        }
        for in_use in &self.in_use {
            reasons.push(Reason::VolumeInUse {
                claim: in_use.claim,
                pod: in_use.pod,
            });
        }
        for pin in &self.pins {
            if pin.holder != node {
                reasons.push(Reason::VolumeHeldElsewhere {
                    claim: pin.claim,
                    holder: pin.holder,
                });
            }
        }
        if self
            .fresh_report(state)
            .is_some_and(|report| !report.usable)
        {
            reasons.push(Reason::NoUsableGpu);
        }
        for &(driver, volumes) in &self.drivers {
            let Some((limit, attached)) = state.attach_usage(driver) else {
                continue;
            };
            let already_here = self
                .volumes
                .iter()
                .filter(|v| v.driver == Some(driver) && v.held_on.contains(&node))
                .count();
            let needed = u64::from(volumes).saturating_sub(already_here as u64);
            if needed > 0 && u64::from(attached) + needed > u64::from(limit) {
                reasons.push(Reason::AttachLimitReached { driver });
            }
        }
    }

    /// The inputs behind the score.
    pub fn facts(&self, node: &str) -> NodeFacts {
        self.view(node)
            .map(|view| self.facts_for(node, &view))
            .unwrap_or_default()
    }

    fn facts_for(&self, node: &str, view: &NodeView<'a>) -> NodeFacts {
        let (state, info) = (view.state, view.info);
        let lease_age_ms = match view.heartbeat {
            Heartbeat::Stale { age_ms } | Heartbeat::Fresh { age_ms } => Some(age_ms),
            Heartbeat::Missing | Heartbeat::NeverRenewed => None,
        };
        NodeFacts {
            lease_age_seconds: lease_age_ms.map(|ms| ms / 1000),
            managed_pods: state
                .managed_pods()
                .saturating_sub(u32::from(self.own_gpu_node == Some(node))),
            gpu_capacity: info.gpu_allocatable,
            measured_busy_percent: self
                .fresh_report(state)
                .and_then(|report| report.busy_percent),
            report_age_seconds: state
                .agent
                .as_ref()
                .map(|report| (self.now_ms - report.observed_at.as_millisecond()) / 1000),
        }
    }

    /// Each score part for `node`; all zero for an unknown node.
    pub fn score_parts(&self, node: &str) -> ScoreParts {
        match self.view(node) {
            Some(view) => self.score_parts_for(node, &view),
            None => ScoreParts {
                volume_locality: (!self.volumes.is_empty()).then_some(0),
                ..ScoreParts::default()
            },
        }
    }

    fn score_parts_for(&self, node: &str, view: &NodeView<'a>) -> ScoreParts {
        ScoreParts {
            gpu_load: self.gpu_load_part(&self.facts_for(node, view)),
            volume_locality: self.volume_locality_part(node, view),
            flapping: self.flapping_part(view.info),
        }
    }

    /// The prioritize score, 0 to 10.
    pub fn total(&self, node: &str) -> i64 {
        self.weighted_total(self.score_parts(node))
    }

    /// The full verdict, for `explain`.
    pub fn verdict(&self, node: &str) -> NodeVerdict {
        let reasons: Vec<String> = self.reasons(node).iter().map(ToString::to_string).collect();
        let score_parts = self.score_parts(node);
        NodeVerdict {
            node: node.to_string(),
            passes: reasons.is_empty(),
            reasons,
            score_parts,
            total: self.weighted_total(score_parts),
            facts: self.facts(node),
            depends_on_candidates: Vec::new(),
        }
    }

    /// The node's snapshot entry, if its Node object is known.
    fn view(&self, node: &str) -> Option<NodeView<'a>> {
        let state = self.snapshot.node_state(node)?;
        Some(NodeView {
            state,
            info: state.info.as_ref()?,
            heartbeat: self.heartbeat(state),
        })
    }

    /// The node agent's report, unless it is older than `gpuBusyFreshSeconds`: a stale report
    /// says nothing about now, so the node's load and usability count as unknown.
    fn fresh_report<'s>(&self, state: &'s NodeState) -> Option<&'s AgentInfo> {
        let fresh_ms = i64::from(self.policy.gpu_busy_fresh_seconds) * 1000;
        state.agent.as_ref().filter(|report| {
            // A report from slightly in the future is clock skew, not staleness.
            (self.now_ms - report.observed_at.as_millisecond()).abs() <= fresh_ms
        })
    }

    fn heartbeat(&self, state: &NodeState) -> Heartbeat {
        Heartbeat::of(state, self.policy, self.now_ms)
    }

    fn is_healthy(&self, node: &str) -> bool {
        self.view(node).is_some_and(|view| view.is_healthy())
    }

    /// 100 minus the load: managed pods against capacity, blended with the measured
    /// busyness when fresh. Without a known capacity (no device plugin, as in hostpath mode)
    /// any managed pod counts as full load; a node that advertises no iGPU share has none.
    fn gpu_load_part(&self, facts: &NodeFacts) -> u8 {
        let pods = u64::from(facts.managed_pods);
        let declared = match facts.gpu_capacity.and_then(|c| u64::try_from(c).ok()) {
            Some(0) => BEST,
            Some(capacity) => (pods * BEST / capacity).min(BEST),
            None if pods == 0 => 0,
            None => BEST,
        };
        let load = match facts.measured_busy_percent {
            Some(measured) => {
                let share = u64::from(self.policy.measured_busy_share_percent).min(BEST);
                (declared * (BEST - share) + u64::from(measured).min(BEST) * share) / BEST
            }
            None => declared,
        };
        percent(BEST - load.min(BEST))
    }

    /// The share of the pod's volumes attached and staying on `node`, if it is healthy.
    fn volume_locality_part(&self, node: &str, view: &NodeView<'a>) -> Option<u8> {
        if self.volumes.is_empty() {
            return None;
        }
        if !view.is_healthy() {
            return Some(0);
        }
        let here = self
            .volumes
            .iter()
            .filter(|v| v.settled_on.contains(&node))
            .count() as u64;
        Some(percent(here * BEST / self.volumes.len() as u64))
    }

    /// 0 for a node that is not Ready or just changed, rising linearly to 100 at the end of
    /// the flap window. A Ready node without a transition time has shown no flapping.
    fn flapping_part(&self, info: &NodeInfo) -> u8 {
        let Some(ready) = info.ready else {
            return 0;
        };
        if ready.status != ConditionStatus::True {
            return 0;
        }
        let window_ms = u64::from(self.policy.flap_window_seconds) * 1000;
        let Some(changed) = ready.last_transition else {
            return percent(BEST);
        };
        if window_ms == 0 {
            return percent(BEST);
        }
        let stable_ms = u64::try_from(self.now_ms - changed.as_millisecond()).unwrap_or(0);
        percent((stable_ms.min(window_ms) * BEST) / window_ms)
    }

    /// The weighted mean of the parts, rounded onto 0-10. Parts that do not apply carry no
    /// weight, so a pod without volumes still spreads over the whole range.
    fn weighted_total(&self, parts: ScoreParts) -> i64 {
        let weights = self.policy.weights;
        let mut weighted = [
            (weights.gpu_load, parts.gpu_load),
            (weights.flapping, parts.flapping),
        ]
        .iter()
        .fold((0_u64, 0_u64), |(sum, total_weight), &(weight, part)| {
            (
                sum + u64::from(weight) * u64::from(part),
                total_weight + u64::from(weight),
            )
        });
        if let Some(part) = parts.volume_locality {
            weighted.0 += u64::from(weights.volume_locality) * u64::from(part);
            weighted.1 += u64::from(weights.volume_locality);
        }
        let (sum, total_weight) = weighted;
        if total_weight == 0 {
            return MIN_EXTENDER_PRIORITY;
        }
        let scale = MAX_EXTENDER_PRIORITY.unsigned_abs();
        let denominator = total_weight * BEST;
        let rounded = (sum * scale + denominator / 2) / denominator;
        i64::try_from(rounded)
            .unwrap_or(MAX_EXTENDER_PRIORITY)
            .clamp(MIN_EXTENDER_PRIORITY, MAX_EXTENDER_PRIORITY)
    }
}

/// A 0-100 value as the `u8` score parts use.
fn percent(value: u64) -> u8 {
    u8::try_from(value.min(BEST)).unwrap_or(u8::MAX)
}
