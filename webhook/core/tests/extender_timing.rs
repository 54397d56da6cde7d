//! How long filter and prioritize take over 5000 nodes. Ignored by default: timings mean
//! something only in a release build on a quiet machine.
//!
//! `cargo test --release -p jellyfin-ha-core --test extender_timing -- --ignored --nocapture`

// A test crate: a panic is a failed test, helpers included.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use jellyfin_ha_core::extender::snapshot::{
    AccessModes, ClaimInfo, ConditionStatus, CsiNodeInfo, LeaseInfo, ManagedPodInfo, NodeInfo,
    PvInfo, ReadyCondition, VolumeAttachmentInfo,
};
use jellyfin_ha_core::extender::{ExtenderPolicy, Snapshot, filter, prioritize};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;

const POD: &str = include_str!("fixtures/extender/pod-jellyfin.json");
const NODES: usize = 5000;
const DRIVER: &str = "rbd.csi.ceph.com";

/// 5000 QuickSync nodes, one in 97 out of service; every `stale_every`-th node has a stale
/// Lease.
fn cluster(now: Timestamp, stale_every: usize) -> Snapshot {
    let mut snapshot = Snapshot::new();
    let second = |ago: i64| Timestamp::from_second(now.as_second() - ago).unwrap();
    for i in 0..NODES {
        let name = format!("kwok-node-{i}");
        snapshot.upsert_node(NodeInfo {
            name: name.clone(),
            quick_sync: true,
            out_of_service: i % 97 == 0,
            fencing: false,
            ready: Some(ReadyCondition {
                status: ConditionStatus::True,
                last_transition: Some(second(i as i64)),
            }),
            gpu_allocatable: Some(10),
            boot_id: format!("boot-{i}"),
        });
        snapshot.upsert_lease(LeaseInfo {
            node_name: name.clone(),
            renew_time: Some(second(if i % stale_every == 0 {
                90
            } else {
                (i % 10) as i64
            })),
            lease_duration_seconds: Some(40),
        });
        snapshot.upsert_csi_node(CsiNodeInfo {
            node_name: name.clone(),
            attach_limits: BTreeMap::from([(DRIVER.to_string(), 16)]),
        });
        snapshot.upsert_attachment(VolumeAttachmentInfo {
            name: format!("va-{i}"),
            pv_name: Some(format!("pv-{i}")),
            node_name: name.clone(),
            attacher: DRIVER.into(),
            attached: true,
            deleting: false,
        });
        if i % 25 == 0 {
            snapshot.upsert_managed_pod(ManagedPodInfo {
                namespace: "media".into(),
                name: format!("jellyfin-{i}"),
                node_name: Some(name),
                terminating: false,
                finished: false,
                claims: vec![],
            });
        }
    }
    // The pod's config volume: a many-node volume attached on one node, so every node pays
    // for the attach-limit and locality checks without being pinned away.
    snapshot.upsert_claim(ClaimInfo {
        namespace: "media".into(),
        name: "jellyfin-config".into(),
        volume_name: Some("pv-config".into()),
        access_modes: AccessModes::from_list(&["ReadWriteMany".to_string()]),
    });
    snapshot.upsert_volume(PvInfo {
        name: "pv-config".into(),
        csi_driver: Some(DRIVER.into()),
        access_modes: AccessModes::from_list(&["ReadWriteMany".to_string()]),
    });
    snapshot.upsert_attachment(VolumeAttachmentInfo {
        name: "va-config".into(),
        pv_name: Some("pv-config".into()),
        node_name: "kwok-node-42".into(),
        attacher: DRIVER.into(),
        attached: true,
        deleting: false,
    });
    snapshot
}

fn summary(mut samples: Vec<Duration>) -> String {
    samples.sort();
    let at = |per_mille: usize| samples[samples.len() * per_mille / 1000];
    format!(
        "over {NODES} nodes: min {:?}, median {:?}, p99 {:?}",
        samples[0],
        at(500),
        at(990)
    )
}

#[test]
#[ignore = "timing; run in release with --ignored --nocapture"]
fn filter_and_prioritize_5000_nodes() {
    let now: Timestamp = "2026-11-24T20:01:00Z".parse().unwrap();
    let policy = ExtenderPolicy::default();
    let pod: Pod = serde_json::from_str(POD).unwrap();
    let mut bare = pod.clone();
    bare.spec.as_mut().unwrap().volumes = None;

    let snapshot = cluster(now, 100);
    time(
        &snapshot,
        &policy,
        &pod,
        now,
        "2% failing, pod with volumes",
    );
    time(
        &snapshot,
        &policy,
        &bare,
        now,
        "2% failing, pod without volumes",
    );
    let snapshot = cluster(now, 2);
    time(
        &snapshot,
        &policy,
        &pod,
        now,
        "half failing, pod with volumes",
    );
}

fn time(snapshot: &Snapshot, policy: &ExtenderPolicy, pod: &Pod, now: Timestamp, what: &str) {
    let names: Vec<String> = (0..NODES).map(|i| format!("kwok-node-{i}")).collect();

    let mut filter_times = Vec::new();
    let mut prioritize_times = Vec::new();
    for _ in 0..200 {
        let candidates = names.clone();
        let start = Instant::now();
        let decision = filter(pod, candidates, snapshot, policy, now);
        filter_times.push(start.elapsed());
        assert_eq!(decision.passed.len() + decision.failed.len(), NODES);

        let candidates = names.clone();
        let start = Instant::now();
        let scores = prioritize(pod, candidates, snapshot, policy, now);
        prioritize_times.push(start.elapsed());
        assert_eq!(scores.len(), NODES);
    }
    println!("{what}: filter {}", summary(filter_times));
    println!("{what}: prioritize {}", summary(prioritize_times));
}
