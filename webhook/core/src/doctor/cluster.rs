//! The cluster itself: a version with what failover needs, and how fast heartbeats are read.

use std::collections::BTreeMap;

use super::estimate::detection;
use super::{Finding, Snapshot};

/// Non-graceful node shutdown (the out-of-service taint) went GA in 1.28.
const OUT_OF_SERVICE_GA: (u32, u32) = (1, 28);
/// CEL `matchConditions` on admission webhooks went GA in 1.30 (beta and on by default in
/// 1.28-1.29).
const MATCH_CONDITIONS_GA: (u32, u32) = (1, 30);

pub(super) fn check(snapshot: &Snapshot) -> Vec<Finding> {
    vec![version(snapshot), heartbeat(snapshot)]
}

fn version(snapshot: &Snapshot) -> Finding {
    const CHECK: &str = "cluster/version";
    let Some(version) = &snapshot.version else {
        return Finding::warn(
            CHECK,
            "",
            "the apiserver's /version could not be read",
            "make sure your credentials may GET /version (system:public-info-viewer)",
        );
    };
    let (major, minor) = OUT_OF_SERVICE_GA;
    if !version.at_least(major, minor) {
        return Finding::fail(
            CHECK,
            "",
            format!(
                "Kubernetes {}: the out-of-service taint is GA only from {major}.{minor}, so \
                 the fencer's taint releases nothing",
                version.git_version
            ),
            format!("upgrade the control plane to {major}.{minor} or later"),
        );
    }
    let (major, minor) = MATCH_CONDITIONS_GA;
    if !version.at_least(major, minor) {
        return Finding::warn(
            CHECK,
            "",
            format!(
                "Kubernetes {}: webhook matchConditions are beta before {major}.{minor}; with \
                 the AdmissionWebhookMatchConditions feature gate off every pod reaches the \
                 webhook",
                version.git_version
            ),
            format!("upgrade the control plane to {major}.{minor} or later"),
        );
    }
    Finding::ok(
        CHECK,
        "",
        format!(
            "Kubernetes {}: the out-of-service taint and CEL matchConditions are GA",
            version.git_version
        ),
    )
}

fn heartbeat(snapshot: &Snapshot) -> Finding {
    const CHECK: &str = "cluster/heartbeat";
    let mut by_detection: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    let mut without = Vec::new();
    for node in &snapshot.nodes {
        let name = node.metadata.name.clone().unwrap_or_default();
        match detection(snapshot, &name) {
            Some(parts) => by_detection
                .entry(parts.total().as_millis() as i64)
                .or_default()
                .push(name),
            None => without.push(name),
        }
    }
    if !without.is_empty() {
        return Finding::warn(
            CHECK,
            without.join(", "),
            "no heartbeat Lease in kube-node-lease: a dead node is noticed only by the node \
             controller (40-50 s), and the fencer cannot suspect it",
            "make sure the kubelet runs with node leases (the default since 1.17) and can \
             write to kube-node-lease",
        );
    }
    let Some((slowest_ms, nodes)) = by_detection.iter().next_back() else {
        return Finding::warn(
            CHECK,
            "",
            "no nodes to check",
            "check the node selector given to doctor",
        );
    };
    let example = nodes.first().map_or("", String::as_str);
    let parts = detection(snapshot, example).unwrap_or_default();
    Finding::ok(
        CHECK,
        "",
        format!(
            "kubelets renew their Lease every {:.1} s (leaseDurationSeconds / 4), so the \
             fencer suspects a dead node {:.1} s after its last renewal, with \
             suspectMarginSeconds {}{}",
            parts.renew_interval.as_secs_f64(),
            *slowest_ms as f64 / 1000.0,
            snapshot.policy.fencer.suspect_margin_seconds,
            if by_detection.len() > 1 {
                format!(
                    " (the slowest; {} settings differ between nodes)",
                    by_detection.len()
                )
            } else {
                String::new()
            }
        ),
    )
}
