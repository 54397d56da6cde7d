//! When the extender steps aside: a watch gone silent, or most nodes' Leases stale at once.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use jellyfin_ha_core::extender::snapshot::{LeaseInfo, NodeInfo};
use jellyfin_ha_core::extender::{
    ExtenderPolicy, Snapshot, Staleness, WatchHeard, filter, staleness,
};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::jiff::Timestamp;
use rstest::rstest;
use serde_json::json;

fn now() -> Timestamp {
    "2026-11-24T20:01:10Z".parse().unwrap()
}

fn ago(seconds: i64) -> Timestamp {
    Timestamp::from_second(now().as_second() - seconds).unwrap()
}

/// `fresh` nodes renewed 5 s ago, `stale` ones 60 s ago (the default threshold is 20 s).
fn cluster(fresh: usize, stale: usize) -> Snapshot {
    let policy = ExtenderPolicy::default();
    let mut snapshot = Snapshot::new();
    for (i, renewed) in std::iter::repeat_n(5, fresh)
        .chain(std::iter::repeat_n(60, stale))
        .enumerate()
    {
        let name = format!("qs-{i}");
        let node: Node = serde_json::from_value(json!({"metadata": {
            "name": name,
            "labels": {"intel.feature.node.kubernetes.io/gpu": "true"}
        }}))
        .unwrap();
        snapshot.upsert_node(NodeInfo::from_node(&node, &policy).unwrap());
        snapshot.upsert_lease(LeaseInfo {
            node_name: name,
            renew_time: Some(ago(renewed)),
            lease_duration_seconds: Some(40),
        });
    }
    snapshot
}

fn heard(kind: &str, seconds_ago: Option<i64>) -> WatchHeard<'_> {
    WatchHeard {
        kind,
        last_heard: seconds_ago.map(ago),
    }
}

fn judge(watches: &[WatchHeard<'_>], snapshot: &Snapshot) -> Option<Staleness> {
    staleness(watches, snapshot, &ExtenderPolicy::default(), now())
}

#[rstest]
#[case::all_fresh(5, 0)]
#[case::one_dead_node(4, 1)]
#[case::exactly_half(2, 2)]
#[case::no_nodes(0, 0)]
fn a_minority_of_stale_leases_is_dead_nodes_not_a_stale_view(
    #[case] fresh: usize,
    #[case] stale: usize,
) {
    assert_eq!(judge(&[], &cluster(fresh, stale)), None);
}

#[rstest]
#[case::most(1, 2)]
#[case::all(0, 3)]
#[case::one_of_one(0, 1)]
fn most_leases_stale_at_once_is_a_stale_view(#[case] fresh: usize, #[case] stale: usize) {
    assert_eq!(
        judge(&[], &cluster(fresh, stale)),
        Some(Staleness::MostLeasesStale {
            stale,
            nodes: fresh + stale
        })
    );
}

#[test]
fn a_node_without_a_lease_counts_as_stale() {
    let mut snapshot = cluster(1, 0);
    snapshot.remove_lease("qs-0");
    assert_eq!(
        judge(&[], &snapshot),
        Some(Staleness::MostLeasesStale { stale: 1, nodes: 1 })
    );
}

#[test]
fn the_share_comes_from_the_policy() {
    let policy = ExtenderPolicy {
        max_stale_lease_percent: 75,
        ..ExtenderPolicy::default()
    };
    assert_eq!(staleness(&[], &cluster(1, 3), &policy, now()), None);
    assert!(staleness(&[], &cluster(0, 4), &policy, now()).is_some());
    let off = ExtenderPolicy {
        max_stale_lease_percent: 100,
        ..ExtenderPolicy::default()
    };
    assert_eq!(staleness(&[], &cluster(0, 4), &off, now()), None);
}

#[test]
fn stale_is_the_filter_threshold() {
    let policy = ExtenderPolicy {
        lease_stale_seconds: 90,
        ..ExtenderPolicy::default()
    };
    assert_eq!(staleness(&[], &cluster(0, 3), &policy, now()), None);
}

#[test]
fn a_silent_watch_is_a_stale_view() {
    let watches = [heard("Lease", Some(1)), heard("Node", Some(301))];
    assert_eq!(
        judge(&watches, &cluster(3, 0)),
        Some(Staleness::WatchSilent {
            kind: "Node".into(),
            silent_seconds: Some(301)
        })
    );
    let within = [heard("Lease", Some(1)), heard("Node", Some(300))];
    assert_eq!(judge(&within, &cluster(3, 0)), None);
}

#[test]
fn a_watch_never_heard_from_is_silent() {
    let stale = judge(&[heard("CSINode", None)], &cluster(3, 0)).unwrap();
    assert_eq!(
        stale,
        Staleness::WatchSilent {
            kind: "CSINode".into(),
            silent_seconds: None
        }
    );
    assert_eq!(
        stale.to_string(),
        "the CSINode watch has delivered nothing yet"
    );
}

#[test]
fn zero_silence_turns_the_watch_check_off() {
    let policy = ExtenderPolicy {
        watch_silence_seconds: 0,
        ..ExtenderPolicy::default()
    };
    let watches = [heard("Node", None), heard("Lease", Some(100_000))];
    assert_eq!(staleness(&watches, &cluster(3, 0), &policy, now()), None);
}

#[test]
fn the_message_says_how_many_and_why() {
    let stale = judge(&[], &cluster(1, 2)).unwrap();
    assert_eq!(
        stale.to_string(),
        "2 of 3 nodes have a stale heartbeat lease at once: the view or the control plane is behind"
    );
}

/// Without the check the filter would reject every node of such a view: the pod would stay
/// Pending until the view caught up.
#[test]
fn a_stale_view_would_filter_every_node_out() {
    let snapshot = cluster(0, 3);
    let pod: Pod = serde_json::from_value(
        json!({"metadata": {"name": "jellyfin", "namespace": "media"}, "spec": {"containers": []}}),
    )
    .unwrap();
    let candidates: Vec<String> = snapshot.node_names();
    let decision = filter(
        &pod,
        candidates,
        &snapshot,
        &ExtenderPolicy::default(),
        now(),
    );
    assert!(decision.passed.is_empty());
    assert!(judge(&[], &snapshot).is_some());
}
