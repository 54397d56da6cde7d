//! The closing estimate: how long a failover of each workload takes with the settings found,
//! part by part, and which part dominates.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::SignedDuration;

use super::workload::Workload;
use super::{Finding, Snapshot};
use crate::fencing::NodeFacts;

/// Tainting the node and force-deleting its pods: a few API writes, then the controller
/// creates the replacement and the scheduler places it.
const ACT: SignedDuration = SignedDuration::from_secs(1);

/// How long after its last heartbeat a dead node is suspected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Detection {
    pub renew_interval: SignedDuration,
    pub margin: SignedDuration,
}

impl Detection {
    pub fn total(&self) -> SignedDuration {
        self.renew_interval + self.margin
    }
}

/// The fencer's detection time for `node`, by the fencer's own reading of its Lease: silent
/// once a renewal is overdue by more than `suspectMarginSeconds`. `None` without a renewed
/// Lease.
pub(super) fn detection(snapshot: &Snapshot, node: &str) -> Option<Detection> {
    let object = snapshot
        .nodes
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some(node))?;
    let lease = snapshot
        .leases
        .iter()
        .find(|l| l.metadata.name.as_deref() == Some(node));
    let facts = NodeFacts::from_node(object, lease)?;
    let renewed = facts.lease.as_ref()?.renew_time?;
    // Overdue at the very moment of renewal is minus one renew interval.
    let renew_interval = -facts.overdue(renewed)?;
    Some(Detection {
        renew_interval,
        margin: SignedDuration::from_secs(i64::from(snapshot.policy.fencer.suspect_margin_seconds)),
    })
}

/// How long the pod's volumes took to attach and mount at its last start: from being
/// scheduled to being initialized (the kubelet runs init containers only once volumes are
/// mounted). `None` without both conditions.
fn attach_time(pod: &Pod) -> Option<SignedDuration> {
    let condition = |kind: &str| {
        pod.status
            .as_ref()?
            .conditions
            .as_ref()?
            .iter()
            .find(|c| c.type_ == kind && c.status == "True")?
            .last_transition_time
            .as_ref()
            .map(|t| t.0)
    };
    let scheduled = condition("PodScheduled")?;
    let initialized = condition("Initialized")?;
    Some(
        initialized
            .duration_since(scheduled)
            .max(SignedDuration::ZERO),
    )
}

fn seconds(d: SignedDuration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

pub(super) fn check(snapshot: &Snapshot, workloads: &[Workload<'_>]) -> Vec<Finding> {
    workloads.iter().map(|w| estimate(snapshot, w)).collect()
}

fn estimate(snapshot: &Snapshot, workload: &Workload<'_>) -> Finding {
    const CHECK: &str = "failover/estimate";
    let subject = workload.subject();
    let pod = workload
        .pods
        .iter()
        .copied()
        .find(|p| p.spec.as_ref().is_some_and(|s| s.node_name.is_some()));
    let node = pod.and_then(|p| p.spec.as_ref()?.node_name.clone());
    let Some(node) = node else {
        return Finding::warn(
            CHECK,
            subject,
            "no pod of the workload is on a node, so there is no node to fail over from",
            "start the workload, then run doctor again",
        );
    };
    let Some(object) = snapshot
        .nodes
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some(node.as_str()))
    else {
        return Finding::warn(
            CHECK,
            subject,
            format!("its pod runs on node {node}, which is not among the nodes checked"),
            "include the node in doctor's --node-selector",
        );
    };
    let labels = object.metadata.labels.clone().unwrap_or_default();
    let Some(detect) = detection(snapshot, &node) else {
        return Finding::warn(
            CHECK,
            subject,
            format!("node {node} has no renewed heartbeat Lease: its death is not detected"),
            "make sure its kubelet writes its Lease in kube-node-lease",
        );
    };
    if snapshot.fencer_lease.is_none() {
        let stuck = if workload.claims.is_empty() {
            ""
        } else {
            ", and its volume stays attached to the dead node until someone deletes the pod"
        };
        return Finding::warn(
            CHECK,
            subject,
            format!(
                "no fencer runs: after node {node} dies its pod is evicted after the node \
                 controller's 40-50 s and {} s of tolerations{stuck}",
                snapshot.policy.failover_seconds
            ),
            "install the fencer (kubectl apply -k manifests/fencer) and map the node to its \
             fence device",
        );
    }
    let Some((_, agent)) = snapshot.policy.fencer.agent_for(&node, &labels) else {
        return Finding::warn(
            CHECK,
            subject,
            format!("no fence agent selects node {node}: the fencer never fences it"),
            "add the node to an agent in fencer.agents",
        );
    };
    let (prove, proof) = match snapshot.fence_status.get(&node) {
        _ if agent.none.is_some() => (SignedDuration::ZERO, "no proof (agent none)".to_string()),
        Some(status) => match &status.outcome {
            Ok(_) => (
                status.took,
                format!("agent {}'s status answer", status.agent),
            ),
            Err(error) => {
                return Finding::warn(
                    CHECK,
                    subject,
                    format!(
                        "node {node} cannot be proven off: agent {} answers {error}; the \
                         fencer would retry until proofDeadlineSeconds and then refuse",
                        status.agent
                    ),
                    "fix the fence agent (see fencer/agent)",
                );
            }
        },
        None => (SignedDuration::ZERO, "not queried".to_string()),
    };
    let attach = pod.and_then(attach_time);
    let attach_part = match (workload.claims.is_empty(), attach) {
        (true, _) => (SignedDuration::ZERO, "no volume".to_string()),
        (false, Some(took)) => (took, "as measured at the pod's last start".to_string()),
        (false, None) => (SignedDuration::ZERO, "not measured".to_string()),
    };
    let parts = [
        ("detection", detect.total()),
        ("proof", prove),
        ("acting", ACT),
        ("attach", attach_part.0),
    ];
    let total: SignedDuration = parts.iter().map(|(_, d)| *d).sum();
    let dominant = parts
        .iter()
        .max_by_key(|(_, d)| *d)
        .map_or("detection", |(name, _)| *name);
    let hint = match dominant {
        "detection" => "; a shorter nodeLeaseDurationSeconds on the kubelets shortens it most",
        "proof" => "; a faster fence device shortens it most",
        "attach" => "; the storage's attach time dominates",
        _ => "",
    };
    Finding::ok(
        CHECK,
        subject,
        format!(
            "about {} from node {node}'s death to a new pod: detect {} (renew every {} + \
             margin {}), prove {} ({proof}), act ~{} (taint, force-delete, reschedule), \
             attach {} ({}); {dominant} dominates{hint}",
            seconds(total),
            seconds(detect.total()),
            seconds(detect.renew_interval),
            seconds(detect.margin),
            seconds(prove),
            seconds(ACT),
            seconds(attach_part.0),
            attach_part.1,
        ),
    )
}
