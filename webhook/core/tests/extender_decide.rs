//! The extender's filter rules and score parts, one case each, over hand-built snapshots.

// A test crate: a panic is a failed test, helpers included.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::collections::BTreeMap;

use jellyfin_ha_core::extender::decide::{
    Evaluation, FilterDecision, Reason, Rejection, ScoreParts,
};
use jellyfin_ha_core::extender::snapshot::{
    AccessModes, AgentInfo, ClaimInfo, ConditionStatus, CsiNodeInfo, LeaseInfo, ManagedPodInfo,
    NodeInfo, PvInfo, ReadyCondition, VolumeAttachmentInfo,
};
use jellyfin_ha_core::extender::wire::{ExtenderArgs, ExtenderFilterResult, host_priorities_json};
use jellyfin_ha_core::extender::{ExtenderPolicy, Snapshot, explain, filter, prioritize};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::jiff::Timestamp;
use rstest::rstest;
use serde_json::json;

const POD: &str = include_str!("fixtures/extender/pod-jellyfin.json");
const ARGS_NODES: &str = include_str!("fixtures/extender/filter-args-nodes.json");
const NAMESPACE: &str = "media";
const CONFIG_CLAIM: &str = "jellyfin-config";
const TRANSCODE_CLAIM: &str = "jellyfin-7c9d8f6b5-x2k4q-transcode";
const DRIVER: &str = "rbd.csi.ceph.com";

fn now() -> Timestamp {
    "2026-11-24T20:01:00Z".parse().unwrap()
}

fn ago(seconds: i64) -> Timestamp {
    Timestamp::from_second(now().as_second() - seconds).unwrap()
}

fn pod() -> Pod {
    serde_json::from_str(POD).unwrap()
}

/// A pod with no volumes at all.
fn bare_pod() -> Pod {
    let mut pod = pod();
    pod.spec.as_mut().unwrap().volumes = None;
    pod
}

fn names(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| n.to_string()).collect()
}

fn node(name: &str) -> NodeInfo {
    NodeInfo {
        name: name.into(),
        quick_sync: true,
        out_of_service: false,
        fencing: false,
        ready: Some(ReadyCondition {
            status: ConditionStatus::True,
            last_transition: Some(ago(86_400)),
        }),
        gpu_allocatable: Some(10),
        boot_id: format!("boot-{name}"),
    }
}

fn lease(name: &str, renewed_seconds_ago: i64) -> LeaseInfo {
    LeaseInfo {
        node_name: name.into(),
        renew_time: Some(ago(renewed_seconds_ago)),
        lease_duration_seconds: Some(40),
    }
}

/// Healthy QuickSync nodes with fresh leases.
fn cluster(nodes: &[&str]) -> Snapshot {
    let mut snapshot = Snapshot::new();
    for name in nodes {
        snapshot.upsert_node(node(name));
        snapshot.upsert_lease(lease(name, 3));
    }
    snapshot
}

fn edit_node(snapshot: &mut Snapshot, name: &str, edit: impl FnOnce(&mut NodeInfo)) {
    let mut info = snapshot.node_state(name).unwrap().info.clone().unwrap();
    edit(&mut info);
    snapshot.upsert_node(info);
}

fn modes(list: &[&str]) -> AccessModes {
    AccessModes::from_list(&names(list))
}

/// Binds `claim` of the pod's namespace to `pv`, a CSI volume of [`DRIVER`].
fn bind(snapshot: &mut Snapshot, claim: &str, pv: &str, access: &[&str]) {
    snapshot.upsert_claim(ClaimInfo {
        namespace: NAMESPACE.into(),
        name: claim.into(),
        volume_name: Some(pv.into()),
        access_modes: modes(access),
    });
    snapshot.upsert_volume(PvInfo {
        name: pv.into(),
        csi_driver: Some(DRIVER.into()),
        access_modes: modes(access),
    });
}

fn attach(snapshot: &mut Snapshot, name: &str, pv: &str, node: &str) {
    snapshot.upsert_attachment(VolumeAttachmentInfo {
        name: name.into(),
        pv_name: Some(pv.into()),
        node_name: node.into(),
        attacher: DRIVER.into(),
        attached: true,
        deleting: false,
    });
}

fn managed(name: &str, node: &str, claims: &[&str]) -> ManagedPodInfo {
    ManagedPodInfo {
        namespace: NAMESPACE.into(),
        name: name.into(),
        node_name: Some(node.into()),
        terminating: false,
        finished: false,
        claims: names(claims),
        mutated: true,
    }
}

fn reasons(snapshot: &Snapshot, pod: &Pod, candidates: &[&str], node: &str) -> Vec<String> {
    let policy = ExtenderPolicy::default();
    let candidates = names(candidates);
    Evaluation::new(pod, &candidates, snapshot, &policy, now())
        .reasons(node)
        .iter()
        .map(ToString::to_string)
        .collect()
}

/// The rejection of `node`, which failed.
fn rejection_of<'d>(decision: &'d FilterDecision<String>, node: &str) -> &'d Rejection {
    decision
        .failed()
        .find(|(failed, _)| *failed == node)
        .map(|(_, rejection)| rejection)
        .unwrap()
}

fn passed(snapshot: &Snapshot, pod: &Pod, candidates: &[&str]) -> Vec<String> {
    filter(
        pod,
        names(candidates),
        snapshot,
        &ExtenderPolicy::default(),
        now(),
    )
    .passed
}

// Filter: heartbeat.

#[rstest]
#[case::fresh(3, true)]
#[case::at_threshold(20, true)]
#[case::just_past(21, false)]
#[case::long_gone(600, false)]
#[case::renewed_in_the_future(-5, true)]
fn a_stale_lease_fails_even_while_ready(#[case] renewed_ago: i64, #[case] passes: bool) {
    let mut snapshot = cluster(&["qs-1"]);
    snapshot.upsert_lease(lease("qs-1", renewed_ago));
    assert_eq!(
        snapshot
            .node_state("qs-1")
            .unwrap()
            .info
            .as_ref()
            .unwrap()
            .ready
            .unwrap()
            .status,
        ConditionStatus::True
    );
    let got = reasons(&snapshot, &bare_pod(), &["qs-1"], "qs-1");
    if passes {
        assert!(got.is_empty(), "{got:?}");
    } else {
        assert_eq!(got, ["heartbeat lease not renewed in the last 20s"]);
    }
}

#[test]
fn a_node_without_a_lease_fails() {
    let mut snapshot = cluster(&["qs-1"]);
    snapshot.remove_lease("qs-1");
    assert_eq!(
        reasons(&snapshot, &bare_pod(), &["qs-1"], "qs-1"),
        ["no heartbeat lease"]
    );
}

#[test]
fn a_lease_never_renewed_fails() {
    let mut snapshot = cluster(&["qs-1"]);
    snapshot.upsert_lease(LeaseInfo {
        renew_time: None,
        ..lease("qs-1", 0)
    });
    assert_eq!(
        reasons(&snapshot, &bare_pod(), &["qs-1"], "qs-1"),
        ["heartbeat lease never renewed"]
    );
}

#[test]
fn the_threshold_comes_from_the_policy() {
    let mut snapshot = cluster(&["qs-1"]);
    snapshot.upsert_lease(lease("qs-1", 25));
    let policy = ExtenderPolicy {
        lease_stale_seconds: 30,
        ..ExtenderPolicy::default()
    };
    let decision = filter(&bare_pod(), names(&["qs-1"]), &snapshot, &policy, now());
    assert_eq!(decision.passed, ["qs-1"]);
}

// Filter: out of service, fencing, label, unknown.

#[rstest]
#[case::out_of_service(
    |n: &mut NodeInfo| n.out_of_service = true,
    "node is out of service (taint node.kubernetes.io/out-of-service)"
)]
#[case::fencing(
    |n: &mut NodeInfo| n.fencing = true,
    "node is being fenced (annotation jellyfin-ha.io/fencing)"
)]
#[case::no_label(
    |n: &mut NodeInfo| n.quick_sync = false,
    "node lacks QuickSync label intel.feature.node.kubernetes.io/gpu"
)]
fn node_state_rules(#[case] edit: fn(&mut NodeInfo), #[case] reason: &str) {
    let mut snapshot = cluster(&["qs-1", "qs-2"]);
    edit_node(&mut snapshot, "qs-1", edit);
    assert_eq!(reasons(&snapshot, &bare_pod(), &["qs-1"], "qs-1"), [reason]);
    let decision = filter(
        &bare_pod(),
        names(&["qs-1", "qs-2"]),
        &snapshot,
        &ExtenderPolicy::default(),
        now(),
    );
    assert_eq!(decision.passed, ["qs-2"]);
    assert!(rejection_of(&decision, "qs-1").unresolvable);
}

#[test]
fn an_unknown_node_fails_with_that_reason_only() {
    let mut snapshot = cluster(&["qs-1"]);
    // A lease alone does not make a node known.
    snapshot.upsert_lease(lease("ghost", 1));
    for name in ["ghost", "nowhere"] {
        assert_eq!(
            reasons(&snapshot, &bare_pod(), &[name], name),
            ["unknown node"]
        );
    }
}

#[test]
fn every_reason_is_reported_joined() {
    let mut snapshot = cluster(&["qs-1"]);
    snapshot.remove_lease("qs-1");
    edit_node(&mut snapshot, "qs-1", |n| {
        n.out_of_service = true;
        n.quick_sync = false;
    });
    let decision = filter(
        &bare_pod(),
        names(&["qs-1"]),
        &snapshot,
        &ExtenderPolicy::default(),
        now(),
    );
    assert_eq!(
        rejection_of(&decision, "qs-1").reason,
        "no heartbeat lease; node is out of service (taint node.kubernetes.io/out-of-service); \
         node lacks QuickSync label intel.feature.node.kubernetes.io/gpu"
    );
}

// Filter: single-node volumes.

#[rstest]
#[case::read_write_once(&["ReadWriteOnce"])]
#[case::read_write_once_pod(&["ReadWriteOncePod"])]
fn a_single_node_volume_on_a_healthy_candidate_pins_the_pod(#[case] access: &[&str]) {
    let mut snapshot = cluster(&["qs-1", "qs-2", "qs-3"]);
    bind(&mut snapshot, CONFIG_CLAIM, "pv-config", access);
    attach(&mut snapshot, "va-1", "pv-config", "qs-2");
    assert_eq!(
        passed(&snapshot, &pod(), &["qs-1", "qs-2", "qs-3"]),
        ["qs-2"]
    );
    assert_eq!(
        reasons(&snapshot, &pod(), &["qs-1", "qs-2", "qs-3"], "qs-1"),
        ["volume of claim jellyfin-config is attached to healthy node qs-2"]
    );
    let decision = filter(
        &pod(),
        names(&["qs-1", "qs-2", "qs-3"]),
        &snapshot,
        &ExtenderPolicy::default(),
        now(),
    );
    assert!(decision.failed().all(|(_, r)| r.unresolvable));
}

#[test]
fn an_attaching_volume_pins_too() {
    let mut snapshot = cluster(&["qs-1", "qs-2"]);
    bind(&mut snapshot, CONFIG_CLAIM, "pv-config", &["ReadWriteOnce"]);
    snapshot.upsert_attachment(VolumeAttachmentInfo {
        name: "va-1".into(),
        pv_name: Some("pv-config".into()),
        node_name: "qs-2".into(),
        attacher: DRIVER.into(),
        attached: false,
        deleting: false,
    });
    assert_eq!(passed(&snapshot, &pod(), &["qs-1", "qs-2"]), ["qs-2"]);
}

/// A single-node volume is single-node, not single-pod: on the node of the pod that still uses
/// it, the new one would mount it too, and two Jellyfins would write one library. Shutting
/// down counts (the old pod's grace is for its database), and so does a node that is silent
/// but not proven off, and so does a pod that opted in but was never mutated (the webhook was
/// unreachable when it was admitted).
#[rstest]
#[case::running(|_: &mut Snapshot| {}, false)]
#[case::opted_in_but_never_mutated(|s: &mut Snapshot| s.upsert_managed_pod(ManagedPodInfo {
    mutated: false,
    ..managed("jellyfin-old", "qs-3", &[CONFIG_CLAIM])
}), false)]
#[case::shutting_down(|_: &mut Snapshot| {}, true)]
#[case::on_a_silent_node(|s: &mut Snapshot| s.upsert_lease(lease("qs-3", 120)), false)]
#[case::on_a_node_being_fenced(|s: &mut Snapshot| edit_node(s, "qs-3", |n| n.fencing = true), false)]
#[case::on_a_deleted_node(|s: &mut Snapshot| s.remove_node("qs-3"), true)]
fn a_volume_another_pod_still_uses_leaves_no_node(
    #[case] edit: fn(&mut Snapshot),
    #[case] terminating: bool,
) {
    let mut snapshot = cluster(&["qs-1", "qs-2", "qs-3"]);
    bind(&mut snapshot, CONFIG_CLAIM, "pv-config", &["ReadWriteOnce"]);
    attach(&mut snapshot, "va-1", "pv-config", "qs-3");
    snapshot.upsert_managed_pod(ManagedPodInfo {
        terminating,
        ..managed("jellyfin-old", "qs-3", &[CONFIG_CLAIM])
    });
    edit(&mut snapshot);
    let every = ["qs-1", "qs-2", "qs-3"];
    assert!(passed(&snapshot, &pod(), &every).is_empty());
    assert!(passed(&snapshot, &pod(), &["qs-1", "qs-2"]).is_empty());
    let reasons = reasons(&snapshot, &pod(), &every, "qs-1");
    assert!(
        reasons.iter().any(|r| r.starts_with(
            "claim jellyfin-config is still used by pod jellyfin-old, running or shutting down"
        )),
        "{reasons:?}"
    );
    let decision = filter(
        &pod(),
        names(&every),
        &snapshot,
        &ExtenderPolicy::default(),
        now(),
    );
    // Preempting the old pod would cut its shutdown short.
    assert!(decision.failed().all(|(_, r)| r.unresolvable));
}

#[rstest]
#[case::on_a_node_proven_off(|s: &mut Snapshot| edit_node(s, "qs-3", |n| n.out_of_service = true))]
#[case::finished(|s: &mut Snapshot| s.upsert_managed_pod(ManagedPodInfo {
    finished: true,
    ..managed("jellyfin-old", "qs-3", &[CONFIG_CLAIM])
}))]
#[case::not_yet_bound(|s: &mut Snapshot| s.upsert_managed_pod(ManagedPodInfo {
    node_name: None,
    ..managed("jellyfin-old", "qs-3", &[CONFIG_CLAIM])
}))]
fn a_pod_that_can_no_longer_write_the_volume_does_not_hold_it(#[case] edit: fn(&mut Snapshot)) {
    let mut snapshot = cluster(&["qs-1", "qs-2", "qs-3"]);
    bind(&mut snapshot, CONFIG_CLAIM, "pv-config", &["ReadWriteOnce"]);
    attach(&mut snapshot, "va-1", "pv-config", "qs-3");
    snapshot.upsert_managed_pod(managed("jellyfin-old", "qs-3", &[CONFIG_CLAIM]));
    edit(&mut snapshot);
    assert!(!passed(&snapshot, &pod(), &["qs-1", "qs-2"]).is_empty());
}

/// `jellyfin-ha explain` offers every node, the scheduler only some: a holder nobody uses pins
/// the pod only when it is offered, and explain says that instead of a flat "no".
#[test]
fn explain_says_where_a_verdict_depends_on_the_holder_being_offered() {
    let mut snapshot = cluster(&["qs-1", "qs-2", "qs-3"]);
    bind(&mut snapshot, CONFIG_CLAIM, "pv-config", &["ReadWriteOnce"]);
    attach(&mut snapshot, "va-1", "pv-config", "qs-3");
    let every = names(&["qs-1", "qs-2", "qs-3"]);
    let verdicts = explain(&pod(), &every, &snapshot, &ExtenderPolicy::default(), now());
    let qs1 = &verdicts[0];
    assert!(!qs1.passes);
    assert_eq!(qs1.depends_on_candidates, ["qs-3"]);
    assert!(verdicts[2].passes && verdicts[2].depends_on_candidates.is_empty());
    // What the extender answers either way.
    assert_eq!(
        passed(&snapshot, &pod(), &["qs-1", "qs-2", "qs-3"]),
        ["qs-3"]
    );
    assert_eq!(
        passed(&snapshot, &pod(), &["qs-1", "qs-2"]),
        ["qs-1", "qs-2"]
    );
    // Used by another pod there, every node is refused whatever is offered: nothing depends.
    snapshot.upsert_managed_pod(managed("jellyfin-old", "qs-3", &[CONFIG_CLAIM]));
    let verdicts = explain(&pod(), &every, &snapshot, &ExtenderPolicy::default(), now());
    assert!(
        verdicts
            .iter()
            .all(|v| !v.passes && v.depends_on_candidates.is_empty())
    );
}

#[rstest]
#[case::nobody_uses_it(false)]
#[case::only_the_pod_itself(true)]
fn a_volume_nobody_else_uses_on_a_non_candidate_does_not_pin(#[case] itself: bool) {
    let mut snapshot = cluster(&["qs-1", "qs-2", "qs-3"]);
    bind(&mut snapshot, CONFIG_CLAIM, "pv-config", &["ReadWriteOnce"]);
    attach(&mut snapshot, "va-1", "pv-config", "qs-3");
    if itself {
        // A stale cache entry for the very pod being placed.
        snapshot.upsert_managed_pod(managed("jellyfin-7c9d8f6b5-x2k4q", "qs-3", &[CONFIG_CLAIM]));
    }
    assert_eq!(
        passed(&snapshot, &pod(), &["qs-1", "qs-2"]),
        ["qs-1", "qs-2"]
    );
}

#[rstest]
#[case::stale_lease(|s: &mut Snapshot| s.upsert_lease(lease("qs-2", 120)))]
#[case::no_lease(|s: &mut Snapshot| s.remove_lease("qs-2"))]
#[case::out_of_service(|s: &mut Snapshot| edit_node(s, "qs-2", |n| n.out_of_service = true))]
#[case::fencing(|s: &mut Snapshot| edit_node(s, "qs-2", |n| n.fencing = true))]
#[case::node_deleted(|s: &mut Snapshot| s.remove_node("qs-2"))]
fn an_unhealthy_holder_does_not_pin(#[case] break_holder: fn(&mut Snapshot)) {
    let mut snapshot = cluster(&["qs-1", "qs-2", "qs-3"]);
    bind(&mut snapshot, CONFIG_CLAIM, "pv-config", &["ReadWriteOnce"]);
    attach(&mut snapshot, "va-1", "pv-config", "qs-2");
    break_holder(&mut snapshot);
    assert_eq!(
        passed(&snapshot, &pod(), &["qs-1", "qs-3"]),
        ["qs-1", "qs-3"]
    );
}

#[test]
fn a_detaching_volume_does_not_pin() {
    let mut snapshot = cluster(&["qs-1", "qs-2"]);
    bind(&mut snapshot, CONFIG_CLAIM, "pv-config", &["ReadWriteOnce"]);
    snapshot.upsert_attachment(VolumeAttachmentInfo {
        name: "va-1".into(),
        pv_name: Some("pv-config".into()),
        node_name: "qs-2".into(),
        attacher: DRIVER.into(),
        attached: true,
        deleting: true,
    });
    assert_eq!(
        passed(&snapshot, &pod(), &["qs-1", "qs-2"]),
        ["qs-1", "qs-2"]
    );
}

#[rstest]
#[case::read_write_many(&["ReadWriteMany"])]
#[case::read_only_many(&["ReadOnlyMany"])]
#[case::unknown_modes(&[])]
fn a_multi_attach_volume_does_not_pin(#[case] access: &[&str]) {
    let mut snapshot = cluster(&["qs-1", "qs-2"]);
    bind(&mut snapshot, CONFIG_CLAIM, "pv-config", access);
    attach(&mut snapshot, "va-1", "pv-config", "qs-2");
    assert_eq!(
        passed(&snapshot, &pod(), &["qs-1", "qs-2"]),
        ["qs-1", "qs-2"]
    );
}

#[test]
fn without_the_pv_the_claims_modes_decide() {
    let mut snapshot = cluster(&["qs-1", "qs-2"]);
    bind(&mut snapshot, CONFIG_CLAIM, "pv-config", &["ReadWriteOnce"]);
    snapshot.remove_volume("pv-config");
    attach(&mut snapshot, "va-1", "pv-config", "qs-2");
    assert_eq!(passed(&snapshot, &pod(), &["qs-1", "qs-2"]), ["qs-2"]);
}

#[test]
fn generic_ephemeral_volumes_pin_like_claims() {
    let mut snapshot = cluster(&["qs-1", "qs-2"]);
    bind(
        &mut snapshot,
        TRANSCODE_CLAIM,
        "pv-scratch",
        &["ReadWriteOnce"],
    );
    attach(&mut snapshot, "va-1", "pv-scratch", "qs-1");
    assert_eq!(passed(&snapshot, &pod(), &["qs-1", "qs-2"]), ["qs-1"]);
}

#[test]
fn claims_of_another_namespace_do_not_count() {
    let mut snapshot = cluster(&["qs-1", "qs-2"]);
    snapshot.upsert_claim(ClaimInfo {
        namespace: "other".into(),
        name: CONFIG_CLAIM.into(),
        volume_name: Some("pv-other".into()),
        access_modes: modes(&["ReadWriteOnce"]),
    });
    attach(&mut snapshot, "va-1", "pv-other", "qs-2");
    assert_eq!(
        passed(&snapshot, &pod(), &["qs-1", "qs-2"]),
        ["qs-1", "qs-2"]
    );
}

#[test]
fn two_volumes_pinned_to_different_nodes_leave_no_node() {
    let mut snapshot = cluster(&["qs-1", "qs-2"]);
    bind(&mut snapshot, CONFIG_CLAIM, "pv-config", &["ReadWriteOnce"]);
    bind(
        &mut snapshot,
        TRANSCODE_CLAIM,
        "pv-scratch",
        &["ReadWriteOnce"],
    );
    attach(&mut snapshot, "va-1", "pv-config", "qs-1");
    attach(&mut snapshot, "va-2", "pv-scratch", "qs-2");
    assert!(passed(&snapshot, &pod(), &["qs-1", "qs-2"]).is_empty());
}

// Filter: CSI attach limits.

fn with_limit(snapshot: &mut Snapshot, node: &str, limit: u32) {
    snapshot.upsert_csi_node(CsiNodeInfo {
        node_name: node.into(),
        attach_limits: BTreeMap::from([(DRIVER.to_string(), limit)]),
    });
}

/// Fills `node` with `count` attachments of other volumes.
fn fill(snapshot: &mut Snapshot, node: &str, count: usize) {
    for i in 0..count {
        attach(
            snapshot,
            &format!("va-{node}-{i}"),
            &format!("pv-{node}-{i}"),
            node,
        );
    }
}

#[rstest]
#[case::room_left(3, 2, true)]
#[case::full(2, 2, false)]
#[case::over_full(2, 5, false)]
#[case::zero_limit(0, 0, false)]
fn the_attach_limit_counts_the_nodes_attachments(
    #[case] limit: u32,
    #[case] attached: usize,
    #[case] passes: bool,
) {
    let mut snapshot = cluster(&["qs-1"]);
    bind(&mut snapshot, CONFIG_CLAIM, "pv-config", &["ReadWriteMany"]);
    with_limit(&mut snapshot, "qs-1", limit);
    fill(&mut snapshot, "qs-1", attached);
    let got = reasons(&snapshot, &pod(), &["qs-1"], "qs-1");
    if passes {
        assert!(got.is_empty(), "{got:?}");
    } else {
        assert_eq!(got, ["attach limit of CSI driver rbd.csi.ceph.com reached"]);
    }
}

#[test]
fn a_full_node_is_a_resolvable_failure() {
    let mut snapshot = cluster(&["qs-1"]);
    bind(&mut snapshot, CONFIG_CLAIM, "pv-config", &["ReadWriteMany"]);
    with_limit(&mut snapshot, "qs-1", 1);
    fill(&mut snapshot, "qs-1", 1);
    let decision = filter(
        &pod(),
        names(&["qs-1"]),
        &snapshot,
        &ExtenderPolicy::default(),
        now(),
    );
    assert!(!rejection_of(&decision, "qs-1").unresolvable);
    let written =
        serde_json::to_value(ExtenderFilterResult::from_decision(decision, None)).unwrap();
    assert!(written["FailedNodes"].get("qs-1").is_some(), "{written}");
    assert_eq!(written["FailedAndUnresolvableNodes"], json!({}));
}

#[test]
fn the_pods_own_attachment_takes_no_new_slot() {
    let mut snapshot = cluster(&["qs-1"]);
    bind(&mut snapshot, CONFIG_CLAIM, "pv-config", &["ReadWriteOnce"]);
    with_limit(&mut snapshot, "qs-1", 2);
    fill(&mut snapshot, "qs-1", 1);
    attach(&mut snapshot, "va-own", "pv-config", "qs-1");
    assert_eq!(
        snapshot.node_state("qs-1").unwrap().attach_usage(DRIVER),
        Some((2, 2))
    );
    assert!(reasons(&snapshot, &pod(), &["qs-1"], "qs-1").is_empty());
}

#[test]
fn each_new_attachment_needs_a_slot() {
    let mut snapshot = cluster(&["qs-1"]);
    bind(&mut snapshot, CONFIG_CLAIM, "pv-config", &["ReadWriteMany"]);
    bind(
        &mut snapshot,
        TRANSCODE_CLAIM,
        "pv-scratch",
        &["ReadWriteMany"],
    );
    with_limit(&mut snapshot, "qs-1", 3);
    fill(&mut snapshot, "qs-1", 2);
    assert_eq!(
        reasons(&snapshot, &pod(), &["qs-1"], "qs-1"),
        ["attach limit of CSI driver rbd.csi.ceph.com reached"]
    );
}

#[test]
fn limits_of_other_drivers_and_missing_csinodes_do_not_apply() {
    let mut snapshot = cluster(&["qs-1", "qs-2"]);
    bind(&mut snapshot, CONFIG_CLAIM, "pv-config", &["ReadWriteMany"]);
    snapshot.upsert_csi_node(CsiNodeInfo {
        node_name: "qs-1".into(),
        attach_limits: BTreeMap::from([("nfs.csi.k8s.io".to_string(), 0)]),
    });
    fill(&mut snapshot, "qs-2", 40);
    assert_eq!(
        passed(&snapshot, &pod(), &["qs-1", "qs-2"]),
        ["qs-1", "qs-2"]
    );
}

// Scores.

fn parts(snapshot: &Snapshot, pod: &Pod, node: &str) -> ScoreParts {
    parts_with(snapshot, pod, node, &ExtenderPolicy::default())
}

fn parts_with(snapshot: &Snapshot, pod: &Pod, node: &str, policy: &ExtenderPolicy) -> ScoreParts {
    Evaluation::new(pod, &names(&[node]), snapshot, policy, now()).score_parts(node)
}

#[rstest]
#[case::idle(Some(10), 0, 100)]
#[case::half(Some(10), 5, 50)]
#[case::one_of_three(Some(3), 1, 67)]
#[case::over_committed(Some(10), 12, 0)]
#[case::no_capacity_idle(None, 0, 100)]
#[case::no_capacity_busy(None, 1, 0)]
#[case::zero_capacity_busy(Some(0), 1, 0)]
#[case::zero_capacity_idle(Some(0), 0, 0)]
fn gpu_load_counts_managed_pods_against_capacity(
    #[case] capacity: Option<i64>,
    #[case] pods: usize,
    #[case] part: u8,
) {
    let mut snapshot = cluster(&["qs-1"]);
    edit_node(&mut snapshot, "qs-1", |n| n.gpu_allocatable = capacity);
    for i in 0..pods {
        snapshot.upsert_managed_pod(managed(&format!("other-{i}"), "qs-1", &[]));
    }
    assert_eq!(parts(&snapshot, &bare_pod(), "qs-1").gpu_load, part);
}

#[test]
fn gpu_load_ignores_the_pod_itself_and_pods_on_their_way_out() {
    let mut snapshot = cluster(&["qs-1"]);
    edit_node(&mut snapshot, "qs-1", |n| n.gpu_allocatable = Some(4));
    snapshot.upsert_managed_pod(managed("jellyfin-7c9d8f6b5-x2k4q", "qs-1", &[]));
    snapshot.upsert_managed_pod(ManagedPodInfo {
        terminating: true,
        ..managed("leaving", "qs-1", &[])
    });
    snapshot.upsert_managed_pod(ManagedPodInfo {
        finished: true,
        ..managed("done", "qs-1", &[])
    });
    snapshot.upsert_managed_pod(managed("running", "qs-1", &[]));
    assert_eq!(parts(&snapshot, &bare_pod(), "qs-1").gpu_load, 75);
    let policy = ExtenderPolicy::default();
    let facts =
        Evaluation::new(&bare_pod(), &names(&["qs-1"]), &snapshot, &policy, now()).facts("qs-1");
    assert_eq!(facts.managed_pods, 1);
}

#[rstest]
#[case::fresh_busy(0, 80, 10, 60)]
#[case::fresh_blends_with_pods(5, 20, 10, 65)]
#[case::at_freshness_limit(0, 80, 60, 60)]
#[case::stale_is_ignored(0, 80, 61, 100)]
#[case::slightly_future_is_skew(0, 80, -30, 60)]
#[case::far_future_is_ignored(0, 80, -3600, 100)]
fn gpu_load_blends_in_fresh_measured_busyness(
    #[case] pods: usize,
    #[case] busy: u8,
    #[case] measured_ago: i64,
    #[case] part: u8,
) {
    let mut snapshot = cluster(&["qs-1"]);
    snapshot.upsert_agent_report(report("qs-1", Some(busy), measured_ago));
    for i in 0..pods {
        snapshot.upsert_managed_pod(managed(&format!("other-{i}"), "qs-1", &[]));
    }
    assert_eq!(parts(&snapshot, &bare_pod(), "qs-1").gpu_load, part);
}

/// A node agent's report `observed_seconds_ago`; no load figure means no usable card.
fn report(node: &str, busy: Option<u8>, observed_seconds_ago: i64) -> AgentInfo {
    AgentInfo {
        node_name: node.into(),
        observed_at: ago(observed_seconds_ago),
        busy_percent: busy,
        usable: busy.is_some(),
    }
}

#[test]
fn equal_pod_counts_prefer_the_node_measured_less_busy() {
    let mut snapshot = cluster(&["qs-1", "qs-2", "qs-3"]);
    snapshot.upsert_agent_report(report("qs-1", Some(70), 5));
    snapshot.upsert_agent_report(report("qs-2", Some(10), 5));
    let scores = prioritize(
        &bare_pod(),
        names(&["qs-1", "qs-2", "qs-3"]),
        &snapshot,
        &ExtenderPolicy::default(),
        now(),
    );
    let score = |node: &str| scores.iter().find(|(n, _)| n == node).unwrap().1;
    assert!(score("qs-2") > score("qs-1"), "{scores:?}");
    // A node without an agent is scored on its pods alone: idle.
    assert!(score("qs-3") >= score("qs-2"), "{scores:?}");
}

#[rstest]
#[case::fresh(5, false)]
#[case::stale_counts_as_unknown(61, true)]
fn a_fresh_report_of_no_usable_gpu_fails_the_node(#[case] age: i64, #[case] passes: bool) {
    let mut snapshot = cluster(&["qs-1"]);
    snapshot.upsert_agent_report(report("qs-1", None, age));
    let reasons = reasons(&snapshot, &bare_pod(), &["qs-1"], "qs-1");
    if passes {
        assert!(reasons.is_empty(), "{reasons:?}");
    } else {
        assert_eq!(reasons, ["node agent reports no usable GPU"]);
        assert!(!Reason::NoUsableGpu.preemption_may_help());
    }
    let facts = Evaluation::new(
        &bare_pod(),
        &names(&["qs-1"]),
        &snapshot,
        &ExtenderPolicy::default(),
        now(),
    )
    .facts("qs-1");
    assert_eq!(facts.report_age_seconds, Some(age));
    assert_eq!(facts.measured_busy_percent, None);
}

#[test]
fn the_measured_share_comes_from_the_policy() {
    let mut snapshot = cluster(&["qs-1"]);
    snapshot.upsert_agent_report(report("qs-1", Some(80), 1));
    let all_measured = ExtenderPolicy {
        measured_busy_share_percent: 100,
        ..ExtenderPolicy::default()
    };
    assert_eq!(
        parts_with(&snapshot, &bare_pod(), "qs-1", &all_measured).gpu_load,
        20
    );
}

#[test]
fn volume_locality_does_not_apply_without_bound_volumes() {
    let snapshot = cluster(&["qs-1"]);
    assert_eq!(parts(&snapshot, &bare_pod(), "qs-1").volume_locality, None);
    // Claims that are not bound yet (WaitForFirstConsumer) do not count either.
    assert_eq!(parts(&snapshot, &pod(), "qs-1").volume_locality, None);
}

#[test]
fn volume_locality_is_the_share_of_volumes_settled_here() {
    let mut snapshot = cluster(&["qs-1", "qs-2", "qs-3"]);
    bind(&mut snapshot, CONFIG_CLAIM, "pv-config", &["ReadWriteMany"]);
    bind(
        &mut snapshot,
        TRANSCODE_CLAIM,
        "pv-scratch",
        &["ReadWriteMany"],
    );
    attach(&mut snapshot, "va-1", "pv-config", "qs-1");
    attach(&mut snapshot, "va-2", "pv-scratch", "qs-1");
    attach(&mut snapshot, "va-3", "pv-config", "qs-2");
    assert_eq!(parts(&snapshot, &pod(), "qs-1").volume_locality, Some(100));
    assert_eq!(parts(&snapshot, &pod(), "qs-2").volume_locality, Some(50));
    assert_eq!(parts(&snapshot, &pod(), "qs-3").volume_locality, Some(0));
}

#[rstest]
#[case::attaching(false, false, 0)]
#[case::detaching(true, true, 0)]
#[case::settled(true, false, 100)]
fn only_settled_attachments_count_as_local(
    #[case] attached: bool,
    #[case] deleting: bool,
    #[case] part: u8,
) {
    let mut snapshot = cluster(&["qs-1"]);
    bind(&mut snapshot, CONFIG_CLAIM, "pv-config", &["ReadWriteMany"]);
    snapshot.upsert_attachment(VolumeAttachmentInfo {
        name: "va-1".into(),
        pv_name: Some("pv-config".into()),
        node_name: "qs-1".into(),
        attacher: DRIVER.into(),
        attached,
        deleting,
    });
    assert_eq!(parts(&snapshot, &pod(), "qs-1").volume_locality, Some(part));
}

#[test]
fn an_unhealthy_node_gets_no_locality_credit() {
    let mut snapshot = cluster(&["qs-1"]);
    bind(&mut snapshot, CONFIG_CLAIM, "pv-config", &["ReadWriteOnce"]);
    attach(&mut snapshot, "va-1", "pv-config", "qs-1");
    snapshot.upsert_lease(lease("qs-1", 300));
    assert_eq!(parts(&snapshot, &pod(), "qs-1").volume_locality, Some(0));
}

#[rstest]
#[case::long_stable(Some(ConditionStatus::True), Some(86_400), 100)]
#[case::end_of_window(Some(ConditionStatus::True), Some(600), 100)]
#[case::one_minute_back(Some(ConditionStatus::True), Some(60), 10)]
#[case::just_back(Some(ConditionStatus::True), Some(0), 0)]
#[case::transition_in_the_future(Some(ConditionStatus::True), Some(-60), 0)]
#[case::no_transition_time(Some(ConditionStatus::True), None, 100)]
#[case::not_ready(Some(ConditionStatus::False), Some(86_400), 0)]
#[case::unknown(Some(ConditionStatus::Unknown), Some(86_400), 0)]
#[case::no_ready_condition(None, None, 0)]
fn flapping_penalises_recent_ready_transitions(
    #[case] status: Option<ConditionStatus>,
    #[case] changed_ago: Option<i64>,
    #[case] part: u8,
) {
    let mut snapshot = cluster(&["qs-1"]);
    edit_node(&mut snapshot, "qs-1", |n| {
        n.ready = status.map(|status| ReadyCondition {
            status,
            last_transition: changed_ago.map(ago),
        });
    });
    assert_eq!(parts(&snapshot, &bare_pod(), "qs-1").flapping, part);
}

#[test]
fn a_zero_flap_window_turns_the_penalty_off() {
    let mut snapshot = cluster(&["qs-1"]);
    edit_node(&mut snapshot, "qs-1", |n| {
        n.ready = Some(ReadyCondition {
            status: ConditionStatus::True,
            last_transition: Some(ago(1)),
        });
    });
    let policy = ExtenderPolicy {
        flap_window_seconds: 0,
        ..ExtenderPolicy::default()
    };
    assert_eq!(
        parts_with(&snapshot, &bare_pod(), "qs-1", &policy).flapping,
        100
    );
}

#[rstest]
// Default weights: gpu 5, locality 3, flapping 2.
#[case::best(100, Some(100), 100, 10)]
#[case::worst(0, Some(0), 0, 0)]
#[case::no_volumes_best(100, None, 100, 10)]
#[case::gpu_only(100, Some(0), 0, 5)]
#[case::locality_only(0, Some(100), 0, 3)]
#[case::flapping_only(0, Some(0), 100, 2)]
#[case::rounds_half_up(50, None, 0, 4)]
#[case::rounds_down(40, None, 0, 3)]
fn the_total_is_the_weighted_mean_on_zero_to_ten(
    #[case] gpu: u8,
    #[case] locality: Option<u8>,
    #[case] flapping: u8,
    #[case] total: i64,
) {
    // Build a node whose parts are exactly the case's parts.
    let mut snapshot = cluster(&["qs-1"]);
    edit_node(&mut snapshot, "qs-1", |n| {
        n.gpu_allocatable = Some(100);
        n.ready = Some(ReadyCondition {
            status: ConditionStatus::True,
            last_transition: Some(ago(i64::from(flapping) * 6)),
        });
    });
    for i in 0..(100 - gpu) {
        snapshot.upsert_managed_pod(managed(&format!("other-{i}"), "qs-1", &[]));
    }
    let pod = match locality {
        None => bare_pod(),
        Some(part) => {
            bind(&mut snapshot, CONFIG_CLAIM, "pv-config", &["ReadWriteMany"]);
            if part == 100 {
                attach(&mut snapshot, "va-1", "pv-config", "qs-1");
            }
            let mut pod = pod();
            let spec = pod.spec.as_mut().unwrap();
            spec.volumes
                .as_mut()
                .unwrap()
                .retain(|v| v.name == "config");
            pod
        }
    };
    let policy = ExtenderPolicy::default();
    let evaluation = Evaluation::new(&pod, &names(&["qs-1"]), &snapshot, &policy, now());
    assert_eq!(
        evaluation.score_parts("qs-1"),
        ScoreParts {
            gpu_load: gpu,
            volume_locality: locality,
            flapping,
        }
    );
    assert_eq!(evaluation.total("qs-1"), total);
}

#[test]
fn prioritize_prefers_the_idle_node_and_keeps_candidate_order() {
    let mut snapshot = cluster(&["busy", "idle", "flappy"]);
    for i in 0..8 {
        snapshot.upsert_managed_pod(managed(&format!("p-{i}"), "busy", &[]));
    }
    edit_node(&mut snapshot, "flappy", |n| {
        n.ready = Some(ReadyCondition {
            status: ConditionStatus::True,
            last_transition: Some(ago(30)),
        });
    });
    let scores = prioritize(
        &bare_pod(),
        names(&["busy", "idle", "flappy", "unknown"]),
        &snapshot,
        &ExtenderPolicy::default(),
        now(),
    );
    assert_eq!(
        scores,
        [
            ("busy".to_string(), 4),
            ("idle".to_string(), 10),
            ("flappy".to_string(), 7),
            ("unknown".to_string(), 0),
        ]
    );
}

#[test]
fn prioritize_prefers_the_node_holding_the_volume() {
    let mut snapshot = cluster(&["qs-1", "qs-2"]);
    bind(&mut snapshot, CONFIG_CLAIM, "pv-config", &["ReadWriteOnce"]);
    attach(&mut snapshot, "va-1", "pv-config", "qs-2");
    let scores = prioritize(
        &pod(),
        names(&["qs-1", "qs-2"]),
        &snapshot,
        &ExtenderPolicy::default(),
        now(),
    );
    assert!(scores[1].1 > scores[0].1, "{scores:?}");
}

// explain and the wire, end to end.

#[test]
fn explain_agrees_with_filter_and_prioritize() {
    let mut snapshot = cluster(&["qs-1", "qs-2", "qs-3"]);
    snapshot.upsert_lease(lease("qs-3", 90));
    bind(&mut snapshot, CONFIG_CLAIM, "pv-config", &["ReadWriteOnce"]);
    attach(&mut snapshot, "va-1", "pv-config", "qs-2");
    let candidates = names(&["qs-1", "qs-2", "qs-3", "gone"]);
    let policy = ExtenderPolicy::default();
    let verdicts = explain(&pod(), &candidates, &snapshot, &policy, now());
    let decision = filter(&pod(), candidates.clone(), &snapshot, &policy, now());
    let scores = prioritize(&pod(), candidates.clone(), &snapshot, &policy, now());
    for (verdict, (node, score)) in verdicts.iter().zip(&scores) {
        assert_eq!(&verdict.node, node);
        assert_eq!(verdict.total, *score);
        assert_eq!(verdict.passes, decision.passed.contains(node));
        if !verdict.passes {
            assert_eq!(
                verdict.reasons.join("; "),
                rejection_of(&decision, node).reason
            );
        }
    }
    assert_eq!(verdicts[2].facts.lease_age_seconds, Some(90));
    assert_eq!(
        verdicts[2].reasons,
        [
            "heartbeat lease not renewed in the last 20s",
            "volume of claim jellyfin-config is attached to healthy node qs-2"
        ]
    );
}

#[test]
fn a_scheduler_call_with_node_objects_end_to_end() {
    let args: ExtenderArgs = serde_json::from_str(ARGS_NODES).unwrap();
    let policy = ExtenderPolicy::default();
    let mut snapshot = Snapshot::new();
    for item in args.nodes.as_ref().unwrap().items() {
        let node: Node = serde_json::from_value(item.clone()).unwrap();
        let info = NodeInfo::from_node(&node, &policy).unwrap();
        snapshot.upsert_lease(lease(&info.name, 2));
        snapshot.upsert_node(info);
    }
    let (pod, candidates, nodes) = args.into_parts();
    assert_eq!(candidates, ["qs-1", "qs-2", "plain-1"]);
    let decision = filter(&pod, candidates.clone(), &snapshot, &policy, now());
    let result =
        serde_json::to_value(ExtenderFilterResult::from_decision(decision, nodes)).unwrap();
    let passed: Vec<_> = result["Nodes"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(passed, ["qs-1", "qs-2"]);
    assert_eq!(result["NodeNames"], json!(null));
    assert_eq!(result["FailedNodes"], json!({}));
    assert_eq!(
        result["FailedAndUnresolvableNodes"],
        json!({"plain-1": "node is out of service (taint node.kubernetes.io/out-of-service); \
                 node lacks QuickSync label intel.feature.node.kubernetes.io/gpu"})
    );

    // qs-1's agent reports 37 % busy at 20:00:30, fresh at 20:01:00: it scores below idle
    // qs-2. The fixture's retired gpu-busy annotation on qs-1 counts for nothing.
    snapshot.upsert_agent_report(report("qs-1", Some(37), 30));
    let scores = prioritize(&pod, candidates, &snapshot, &policy, now());
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&host_priorities_json(&scores)).unwrap(),
        json!([
            {"Host": "qs-1", "Score": 7},
            {"Host": "qs-2", "Score": 8},
            {"Host": "plain-1", "Score": 8}
        ])
    );
}

#[test]
fn reasons_are_typed_for_callers_that_match_on_them() {
    let snapshot = cluster(&[]);
    let policy = ExtenderPolicy::default();
    let candidates = names(&["x"]);
    let evaluation = Evaluation::new(&bare_pod(), &candidates, &snapshot, &policy, now());
    assert_eq!(evaluation.reasons("x"), [Reason::UnknownNode]);
    assert!(!Reason::UnknownNode.preemption_may_help());
    assert!(Reason::AttachLimitReached { driver: DRIVER }.preemption_may_help());
}
