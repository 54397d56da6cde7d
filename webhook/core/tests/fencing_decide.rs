//! The fencer's per-node decisions over small clusters, one rule per case.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::collections::{BTreeMap, BTreeSet};

use jellyfin_ha_core::extender::snapshot::{ConditionStatus, LeaseInfo, ReadyCondition};
use jellyfin_ha_core::fencing::RenewalClock;
use jellyfin_ha_core::fencing::config::{AgentConfig, CONTROL_PLANE_LABEL, NoneAgent};
use jellyfin_ha_core::fencing::{
    Decision, FenceRecord, FencerPolicy, NodeFacts, Plan, Refusal, cap, confirm, plan,
    silent_share, still_silent,
};
use k8s_openapi::api::core::v1::{Node, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde_json::json;

fn at(seconds: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + seconds).unwrap()
}

const NOW: i64 = 1000;

/// A node whose kubelet last renewed its 40 s Lease `silent` seconds before NOW.
fn node(name: &str, silent: i64) -> NodeFacts {
    NodeFacts {
        name: name.into(),
        labels: BTreeMap::new(),
        ready: Some(ReadyCondition {
            status: ConditionStatus::True,
            last_transition: None,
        }),
        boot_id: format!("{name}-boot-1"),
        lease: Some(LeaseInfo {
            node_name: name.into(),
            renew_time: Some(at(NOW - silent)),
            lease_duration_seconds: Some(40),
        }),
        out_of_service: false,
        record: None,
        record_unreadable: false,
        record_stale: false,
        cordoned: false,
        fencing_marked: false,
        claim_marked: false,
    }
}

fn fenced(mut node: NodeFacts, boot_id: &str) -> NodeFacts {
    node.out_of_service = true;
    node.record = Some(FenceRecord {
        suspected_at: at(NOW - 62),
        proven_at: at(NOW - 61),
        fenced_at: at(NOW - 60),
        reason: "test".into(),
        agent: "all".into(),
        proof: "test".into(),
        boot_id: boot_id.into(),
        fenced_by: "fencer-0".into(),
    });
    node
}

fn policy() -> FencerPolicy {
    FencerPolicy {
        agents: vec![AgentConfig {
            name: "all".into(),
            node_selector: BTreeMap::from([("kubernetes.io/os".into(), "linux".into())]),
            nodes: vec!["a".into(), "b".into(), "c".into(), "d".into()],
            none: Some(NoneAgent::default()),
            ..AgentConfig::default()
        }],
        ..FencerPolicy::default()
    }
}

fn decide(nodes: &[NodeFacts]) -> Plan {
    plan(
        nodes,
        &policy(),
        at(NOW),
        &BTreeSet::new(),
        &BTreeSet::new(),
    )
}

fn decision(nodes: &[NodeFacts], name: &str) -> Decision {
    decide(nodes).get(name).cloned().unwrap()
}

#[test]
fn a_renewal_overdue_by_more_than_the_margin_is_suspected() {
    // 40 s Lease: renewals every 10 s; margin 2 s.
    assert_eq!(
        decision(&[node("a", 12), node("b", 1), node("c", 1)], "a"),
        Decision::Healthy
    );
    assert!(matches!(
        decision(&[node("a", 13), node("b", 1), node("c", 1)], "a"),
        Decision::Prove { agent: 0, .. }
    ));
}

#[test]
fn a_tuned_lease_is_suspected_sooner() {
    let mut quick = node("a", 5);
    quick.lease.as_mut().unwrap().lease_duration_seconds = Some(10);
    assert!(matches!(
        decision(&[quick, node("b", 1), node("c", 1)], "a"),
        Decision::Prove { .. }
    ));
}

#[test]
fn a_node_without_a_lease_is_not_judged() {
    let mut new = node("a", 0);
    new.lease = None;
    assert_eq!(decision(&[new, node("b", 1)], "a"), Decision::Healthy);
}

#[test]
fn more_than_half_silent_fences_nothing_and_says_why() {
    let nodes = [node("a", 30), node("b", 30), node("c", 1)];
    for (name, decision) in decide(&nodes).decisions {
        if name == "c" {
            assert_eq!(decision, Decision::Healthy);
            continue;
        }
        let Decision::Refused(
            refusal @ Refusal::TooManySilent {
                silent: 2,
                eligible: 3,
                ..
            },
        ) = &decision
        else {
            panic!("{name}: {decision:?}");
        };
        assert!(refusal.to_string().contains("partition"), "{refusal}");
    }
}

#[test]
fn half_silent_in_a_two_node_cluster_may_be_fenced() {
    assert!(matches!(
        decision(&[node("a", 30), node("b", 1)], "a"),
        Decision::Prove { .. }
    ));
}

#[test]
fn proofs_run_side_by_side_and_the_cap_counts_fenced_and_claimed_nodes() {
    let nodes = [node("a", 20), node("b", 40), node("c", 1), node("d", 1)];
    let decisions = decide(&nodes).decisions;
    assert!(
        matches!(decisions[0].1, Decision::Prove { .. }),
        "{decisions:?}"
    );
    assert!(
        matches!(decisions[1].1, Decision::Prove { .. }),
        "{decisions:?}"
    );
    // A fenced node uses up the allowance: no new proof starts.
    let nodes = [
        fenced(node("a", 100), "a-boot-1"),
        node("b", 40),
        node("c", 1),
        node("d", 1),
    ];
    assert!(matches!(
        decision(&nodes, "b"),
        Decision::Refused(Refusal::TooManyFenced { .. })
    ));
    // So does a node a proof has powered off and is about to taint.
    let nodes = [node("a", 40), node("b", 30), node("c", 1), node("d", 1)];
    let claimed = BTreeSet::from(["a".to_string()]);
    let decided = plan(&nodes, &policy(), at(NOW), &claimed, &claimed);
    assert_eq!(decided.get("a"), Some(&Decision::Proving));
    assert_eq!(decided.get("b"), Some(&Decision::Refused(held_by_a())));
    assert_eq!(cap(&nodes, &policy(), &claimed, "b"), Err(held_by_a()));
    assert_eq!(cap(&nodes, &policy(), &claimed, "a"), Ok(()));
}

/// `maxFenced` (1) is taken by node `a`.
fn held_by_a() -> Refusal {
    Refusal::TooManyFenced {
        holders: vec!["a".into()],
        max: 1,
    }
}

/// A leader that powered a node off and lost its Lease before the taint leaves the claim in
/// the node's mark: the next leader counts it, and proves that node again rather than
/// powering off a second one.
#[test]
fn a_claim_marked_by_another_leader_counts_against_the_cap() {
    let mut powered_off = node("a", 40);
    powered_off.fencing_marked = true;
    powered_off.claim_marked = true;
    let nodes = [powered_off, node("b", 30), node("c", 1), node("d", 1)];
    let none = BTreeSet::new();
    let decided = plan(&nodes, &policy(), at(NOW), &none, &none);
    assert!(
        matches!(decided.get("a"), Some(Decision::Prove { .. })),
        "{decided:?}"
    );
    assert_eq!(decided.get("b"), Some(&Decision::Refused(held_by_a())));
    assert_eq!(cap(&nodes, &policy(), &none, "b"), Err(held_by_a()));
    // The refusal names the node holding the place, and how to release it.
    let said = held_by_a().to_string();
    assert!(said.starts_with("a already fenced") && said.contains("jellyfin-ha.io/fencing"));
    assert_eq!(cap(&nodes, &policy(), &none, "a"), Ok(()));
}

#[test]
fn a_claim_left_by_a_proof_that_did_not_fence_does_not_block_its_own_node() {
    // The power-off went out, but the taint was never written: the node is proven again.
    let nodes = [node("a", 40), node("b", 1), node("c", 1), node("d", 1)];
    let claimed = BTreeSet::from(["a".to_string()]);
    let decided = plan(&nodes, &policy(), at(NOW), &BTreeSet::new(), &claimed);
    assert!(
        matches!(decided.get("a"), Some(Decision::Prove { .. })),
        "{decided:?}"
    );
}

#[test]
fn a_proof_under_way_is_not_started_twice() {
    let nodes = [node("a", 40), node("b", 30), node("c", 1), node("d", 1)];
    let proving = BTreeSet::from(["a".to_string()]);
    let decided = plan(&nodes, &policy(), at(NOW), &proving, &BTreeSet::new());
    assert_eq!(decided.get("a"), Some(&Decision::Proving));
    assert!(matches!(decided.get("b"), Some(Decision::Prove { .. })));
}

#[test]
fn control_plane_and_unselected_nodes_are_refused() {
    let mut control = node("a", 30);
    control
        .labels
        .insert(CONTROL_PLANE_LABEL.into(), String::new());
    assert_eq!(
        decision(&[control.clone(), node("b", 1), node("c", 1)], "a"),
        Decision::Refused(Refusal::ControlPlane)
    );
    let allowed = FencerPolicy {
        fence_control_plane: true,
        ..policy()
    };
    let decided = plan(
        &[control, node("b", 1), node("c", 1)],
        &allowed,
        at(NOW),
        &BTreeSet::new(),
        &BTreeSet::new(),
    );
    assert!(matches!(decided.get("a"), Some(Decision::Prove { .. })));

    let selective = FencerPolicy {
        node_selector: BTreeMap::from([("fence".into(), "yes".into())]),
        ..policy()
    };
    let decided = plan(
        &[node("a", 30), node("b", 1)],
        &selective,
        at(NOW),
        &BTreeSet::new(),
        &BTreeSet::new(),
    );
    assert_eq!(
        decided.get("a"),
        Some(&Decision::Refused(Refusal::NotEligible))
    );
}

#[test]
fn a_node_no_agent_selects_is_refused() {
    assert_eq!(
        decision(&[node("x", 30), node("b", 1), node("c", 1)], "x"),
        Decision::Refused(Refusal::NoAgent)
    );
}

#[test]
fn someone_elses_out_of_service_taint_is_left_alone() {
    let mut theirs = node("a", 100);
    theirs.out_of_service = true;
    assert_eq!(
        decision(&[theirs, node("b", 1)], "a"),
        Decision::ForeignTaint
    );
}

#[test]
fn the_taint_comes_off_only_after_a_power_cycle() {
    let down = fenced(node("a", 100), "a-boot-1");
    assert_eq!(decision(&[down, node("b", 1)], "a"), Decision::Fenced);

    let same_boot = fenced(node("a", 1), "a-boot-1");
    assert_eq!(
        decision(&[same_boot, node("b", 1)], "a"),
        Decision::KeepFenced {
            boot_id: "a-boot-1".into()
        }
    );

    let mut rebooted = fenced(node("a", 1), "a-boot-1");
    rebooted.boot_id = "a-boot-2".into();
    assert_eq!(
        decision(&[rebooted.clone(), node("b", 1)], "a"),
        Decision::Unfence {
            boot_id: "a-boot-2".into()
        }
    );

    // Heartbeats back but not Ready yet: keep waiting.
    rebooted.ready = Some(ReadyCondition {
        status: ConditionStatus::Unknown,
        last_transition: None,
    });
    assert_eq!(decision(&[rebooted, node("b", 1)], "a"), Decision::Fenced);

    // A node that reports no boot ID cannot show a power cycle.
    let mut blank = fenced(node("a", 1), "a-boot-1");
    blank.boot_id = String::new();
    assert!(matches!(
        decision(&[blank, node("b", 1)], "a"),
        Decision::KeepFenced { .. }
    ));
    // Nor can a record without one, whatever the node reports now.
    let mut unrecorded = fenced(node("a", 1), "");
    unrecorded.boot_id = "a-boot-2".into();
    assert!(matches!(
        decision(&[unrecorded, node("b", 1)], "a"),
        Decision::KeepFenced { .. }
    ));
}

#[test]
fn a_silent_node_without_a_boot_id_is_not_fenced() {
    let mut blank = node("a", 100);
    blank.boot_id = String::new();
    assert_eq!(
        decision(&[blank, node("b", 1), node("c", 1)], "a"),
        Decision::Refused(Refusal::NoBootId)
    );
}

#[test]
fn a_heartbeat_during_the_proof_blocks_the_fence() {
    // Suspected after the renewal at NOW - 13; the Lease now says NOW - 3.
    let node = node("a", 3);
    assert_eq!(
        confirm(&node, Some(at(NOW - 13))),
        Err(Refusal::HeartbeatDuringProof)
    );
    assert_eq!(
        still_silent(&node, Some(at(NOW - 13))),
        Err(Refusal::HeartbeatResumed)
    );
    assert_eq!(confirm(&node, Some(at(NOW - 3))), Ok(()));
    assert_eq!(still_silent(&node, Some(at(NOW - 3))), Ok(()));
}

#[test]
fn a_heartbeat_stamped_by_a_clock_that_runs_behind_still_counts() {
    // The node's clock is 60 s behind: its new renewal reads earlier than the one it replaced
    // did on the fencer's clock, and earlier than the proof's start.
    let renewed_at_start = Some(at(NOW - 20));
    let node = node("a", 80);
    assert_eq!(
        confirm(&node, renewed_at_start),
        Err(Refusal::HeartbeatDuringProof)
    );
    assert_eq!(
        still_silent(&node, renewed_at_start),
        Err(Refusal::HeartbeatResumed)
    );
}

#[test]
fn a_lease_that_disappears_or_appears_during_the_proof_counts_as_a_change() {
    let mut gone = node("a", 20);
    gone.lease = None;
    assert!(still_silent(&gone, Some(at(NOW - 20))).is_err());
    assert!(confirm(&node("a", 20), None).is_err());
}

#[test]
fn silence_has_settled_one_renew_interval_after_suspicion() {
    // Renewed at NOW - 13 (suspected at NOW - 1); every node silenced together with it is
    // overdue one 10 s renew interval later.
    let suspect = node("a", 13);
    assert_eq!(suspect.settled_at(&policy()), Some(at(NOW - 13 + 22)));
    let mut quick = node("a", 5);
    quick.lease.as_mut().unwrap().lease_duration_seconds = Some(10);
    assert_eq!(quick.settled_at(&policy()), Some(at(NOW - 5 + 7)));
}

#[test]
fn the_share_guard_counts_eligible_nodes_only() {
    let mut other = node("x", 100);
    other
        .labels
        .insert(CONTROL_PLANE_LABEL.into(), String::new());
    let nodes = [node("a", 30), node("b", 1), other];
    assert_eq!(silent_share(&nodes, &policy(), at(NOW)), Ok(()));
    let nodes = [node("a", 30), node("b", 30), node("c", 1)];
    assert!(matches!(
        silent_share(&nodes, &policy(), at(NOW)),
        Err(Refusal::TooManySilent {
            silent: 2,
            eligible: 3,
            max_percent: 50
        })
    ));
}

#[test]
fn heartbeats_are_timed_by_the_fencers_clock_when_the_nodes_clock_runs_behind() {
    let mut clock = RenewalClock::default();
    // The node's clock is 30 s behind; it renews every 10 s. Timed by its stamps it would be
    // silent past the margin all along, and settled for a power-off.
    let stamped = |renewal: i64| {
        let mut node = node("a", 0);
        node.lease.as_mut().unwrap().renew_time = Some(at(NOW + renewal * 10 - 30));
        node
    };
    for renewal in 0..4 {
        for tick in 0..20 {
            let now = at(NOW + renewal * 10) + std::time::Duration::from_millis(tick * 500);
            let mut nodes = [stamped(renewal)];
            clock.observe(&mut nodes, now);
            assert!(
                !nodes[0].is_silent(&policy(), now),
                "renewal {renewal}, tick {tick}: {:?}",
                nodes[0].lease
            );
        }
    }
    // It stops: suspected twelve seconds after the last renewal arrived.
    for (after, silent) in [(11, false), (13, true)] {
        let now = at(NOW + 30 + after);
        let mut nodes = [stamped(3)];
        clock.observe(&mut nodes, now);
        assert_eq!(nodes[0].is_silent(&policy(), now), silent, "{after} s on");
    }
}

#[test]
fn a_renewal_stamped_between_two_looks_keeps_its_own_time() {
    let mut clock = RenewalClock::default();
    let mut nodes = [node("a", 5)];
    // The first look has nothing to compare with: the renewal counts from now.
    clock.observe(&mut nodes, at(NOW));
    assert_eq!(nodes[0].lease.as_ref().unwrap().renew_time, Some(at(NOW)));
    // A clock in step: the next renewal's stamp falls after the last look, and is kept.
    let mut nodes = [node("a", -3)];
    clock.observe(&mut nodes, at(NOW + 4));
    assert_eq!(
        nodes[0].lease.as_ref().unwrap().renew_time,
        Some(at(NOW + 3))
    );
    // A clock ahead: counted from now, not from the future.
    let mut nodes = [node("a", -60)];
    clock.observe(&mut nodes, at(NOW + 5));
    assert_eq!(
        nodes[0].lease.as_ref().unwrap().renew_time,
        Some(at(NOW + 5))
    );
    // The same renewal seen again keeps the time it arrived.
    let mut nodes = [node("a", -60)];
    clock.observe(&mut nodes, at(NOW + 9));
    assert_eq!(
        nodes[0].lease.as_ref().unwrap().renew_time,
        Some(at(NOW + 5))
    );
}

#[test]
fn a_leader_acts_only_while_its_lease_is_fresh_and_its_own() {
    use jellyfin_ha_core::fencing::still_leads;
    use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    let lease = |holder: &str, renewed: i64| Lease {
        spec: Some(LeaseSpec {
            holder_identity: Some(holder.into()),
            renew_time: Some(MicroTime(at(NOW - renewed))),
            lease_duration_seconds: Some(6),
            ..LeaseSpec::default()
        }),
        ..Lease::default()
    };
    // Renewed 4 s ago, as a healthy leader's is at most before its next renewal lands.
    assert_eq!(
        still_leads(&lease("fencer-a", 4), "fencer-a", at(NOW)),
        Ok(())
    );
    // Renewals have failed for 5 s: one more second and fencer-b may take over.
    assert!(matches!(
        still_leads(&lease("fencer-a", 5), "fencer-a", at(NOW)),
        Err(Refusal::NotLeading(_))
    ));
    // Taken over.
    let refused = still_leads(&lease("fencer-b", 0), "fencer-a", at(NOW)).unwrap_err();
    assert!(
        refused.to_string().contains("held by fencer-b"),
        "{refused}"
    );
    // A Lease without a holder or a renewal time is nobody's.
    assert!(still_leads(&Lease::default(), "fencer-a", at(NOW)).is_err());
    let mut unrenewed = lease("fencer-a", 0);
    unrenewed.spec.as_mut().unwrap().renew_time = None;
    assert!(still_leads(&unrenewed, "fencer-a", at(NOW)).is_err());
}

#[test]
fn a_fence_record_edited_out_of_shape_leaves_the_taint_to_a_person() {
    let edited: k8s_openapi::api::core::v1::Node = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "a", "annotations": {"jellyfin-ha.io/fenced": "{\"bootId\": 7"}},
        "spec": {"taints": [{"key": "node.kubernetes.io/out-of-service", "effect": "NoExecute"}]}
    }))
    .unwrap();
    let facts = NodeFacts::from_node(&edited, None).unwrap();
    assert!(facts.record_unreadable && facts.record.is_none());
    assert_eq!(
        decision(&[facts, node("b", 1)], "a"),
        Decision::ForeignTaint
    );
}

/// The record is ours only together with the taint it was written with (the taint's
/// `timeAdded` is the record's `fencedAt`, to the second, as the apiserver keeps it): one left
/// behind after someone removed our taint by hand must not make a later taint of theirs ours,
/// to sweep pods under and to lift.
#[test]
fn a_record_belongs_only_to_the_taint_it_was_written_with() {
    let mut record = fenced(node("a", 100), "a-boot-1").record.unwrap();
    // Written with the fencer's clock, finer than a taint keeps.
    record.fenced_at = at(NOW - 60) + SignedDuration::from_millis(700);
    // As the Node comes back from the apiserver: the taint written with the record, through
    // its wire form.
    let read_back = |taints: Vec<Taint>| -> NodeFacts {
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": "a", "annotations": {"jellyfin-ha.io/fenced": record.to_annotation()}},
            "spec": {"taints": taints}
        }))
        .unwrap();
        NodeFacts::from_node(&node, None).unwrap()
    };
    let ours = read_back(vec![record.taint()]);
    assert_eq!(ours.record.as_ref(), Some(&record));
    assert!(!ours.record_stale);
    assert_eq!(decision(&[ours, node("b", 1)], "a"), Decision::Fenced);
    // Beside another out-of-service taint, ours is still found.
    let theirs_first = Taint {
        effect: "NoSchedule".into(),
        ..record.taint()
    };
    assert!(
        read_back(vec![theirs_first, record.taint()])
            .record
            .is_some()
    );

    let later = Taint {
        time_added: Some(Time(at(NOW - 5))),
        ..record.taint()
    };
    let theirs = read_back(vec![later]);
    assert!(theirs.record.is_none() && theirs.record_stale && !theirs.record_unreadable);
    assert_eq!(
        decision(&[theirs, node("b", 1)], "a"),
        Decision::ForeignTaint
    );
}
