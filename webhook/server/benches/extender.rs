//! Extender server time at 5000 nodes, printed as `BENCH <name> <value> <unit>`:
//!
//! - `extender_filter_p99_ms_5000`, `extender_prioritize_p99_ms_5000`: p99 of one call through
//!   the real router (body parse, snapshot read, decision, JSON answer), with 5000 node names
//!   as `nodeCacheCapable: true` sends them, over a snapshot holding 5000 QuickSync nodes with
//!   their Leases and CSINodes, 500 managed pods and 200 volume attachments;
//! - `extender_filter_p99_ms_5000_half_failing`, `extender_prioritize_p99_ms_5000_half_failing`:
//!   the same with every other node's Lease stale, so that half the candidates fail the filter
//!   and each failure carries a reason;
//! - each p99 again with `_without_cpu_wait`: every call's wall time less the time its thread
//!   waited, runnable, for a CPU other processes held. On a machine busy with other work the
//!   wall-time p99 is mostly that wait; this one is what serving the call cost.
//!
//! Memory is measured on the real binary against a control plane (`hack/bench.sh extender`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use bytes::Bytes;
use http_body_util::BodyExt;
use jellyfin_ha::extender::{ExtenderState, router};
use jellyfin_ha::metrics::Metrics;
use jellyfin_ha::reflect::{SharedSnapshot, SyncState};
use jellyfin_ha_core::extender::snapshot::{
    AgentInfo, CsiNodeInfo, LeaseInfo, ManagedPodInfo, NodeInfo, VolumeAttachmentInfo,
};
use jellyfin_ha_core::extender::{ExtenderPolicy, Snapshot};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};
use tower::ServiceExt;

const POD: &str = include_str!("../../core/tests/fixtures/extender/pod-jellyfin.json");
const NODES: usize = 5000;
const CALLS: usize = 1000;

fn now() -> Timestamp {
    "2026-11-24T20:01:10Z".parse().unwrap()
}

fn name(i: usize) -> String {
    format!("qs-{i:05}")
}

/// The cluster; with `stale_every`, every `stale_every`-th node has stopped heartbeating.
fn snapshot(policy: &ExtenderPolicy, stale_every: Option<usize>) -> Snapshot {
    let mut snapshot = Snapshot::new();
    for i in 0..NODES {
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": name(i), "labels": {"intel.feature.node.kubernetes.io/gpu": "true"}},
            "status": {
                "allocatable": {"gpu.intel.com/i915": "2"},
                "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-11-24T19:00:00Z"}],
                "nodeInfo": {"bootID": format!("boot-{i}"), "machineID": "", "systemUUID": "", "kernelVersion": "",
                    "osImage": "", "containerRuntimeVersion": "", "kubeletVersion": "", "kubeProxyVersion": "",
                    "operatingSystem": "linux", "architecture": "amd64"}
            }
        }))
        .unwrap();
        snapshot.upsert_node(NodeInfo::from_node(&node, policy).unwrap());
        snapshot.upsert_lease(LeaseInfo {
            node_name: name(i),
            renew_time: Some(if stale_every.is_some_and(|every| i % every == 0) {
                "2026-11-24T19:58:00Z".parse().unwrap()
            } else {
                "2026-11-24T20:01:05Z".parse().unwrap()
            }),
            lease_duration_seconds: Some(40),
        });
        snapshot.upsert_csi_node(CsiNodeInfo {
            node_name: name(i),
            attach_limits: [("rbd.csi.ceph.com".to_string(), 32)].into(),
        });
        snapshot.upsert_agent_report(AgentInfo {
            node_name: name(i),
            observed_at: "2026-11-24T20:00:50Z".parse().unwrap(),
            busy_percent: Some(u8::try_from(i % 100).unwrap()),
            usable: true,
        });
    }
    for i in 0..500 {
        snapshot.upsert_managed_pod(ManagedPodInfo {
            namespace: "load".into(),
            name: format!("transcoder-{i}"),
            node_name: Some(name(i * 7 % NODES)),
            terminating: false,
            finished: false,
            claims: Vec::new(),
            mutated: true,
        });
    }
    for i in 0..200 {
        snapshot.upsert_attachment(VolumeAttachmentInfo {
            name: format!("csi-{i}"),
            pv_name: Some(format!("pv-{i}")),
            node_name: name(i * 13 % NODES),
            attacher: "rbd.csi.ceph.com".into(),
            attached: true,
            deleting: false,
        });
    }
    snapshot
}

/// The `percent`th percentile of sorted samples, in milliseconds.
fn percentile_ms(sorted: &[Duration], percent: usize) -> f64 {
    let index = (sorted.len() * percent).div_ceil(100).saturating_sub(1);
    sorted[index].as_secs_f64() * 1000.0
}

/// How long this thread has waited, runnable, for a CPU (`/proc/thread-self/schedstat`,
/// second field): time other processes had it.
fn run_queue_wait() -> Duration {
    let schedstat = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap();
    let waited = schedstat.split_whitespace().nth(1).unwrap();
    Duration::from_nanos(waited.parse().unwrap())
}

/// One call's wall time, and that time less the part spent waiting for a CPU. The call runs
/// on this thread from start to end (`block_on`, decided inline), so the two differ only by
/// preemption.
async fn measure(app: &Router, path: &str, body: &Bytes) -> (Duration, Duration) {
    let app = app.clone();
    let request = Request::post(path)
        .header("content-type", "application/json")
        .body(Body::from(body.clone()))
        .unwrap();
    let waited_before = run_queue_wait();
    let started = Instant::now();
    let response = app.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let elapsed = started.elapsed();
    let waited = run_queue_wait().saturating_sub(waited_before);
    assert!(bytes.len() > 2);
    (elapsed, elapsed.saturating_sub(waited))
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(run());
}

async fn run() {
    let pod: Value = serde_json::from_str(POD).unwrap();
    let names: Vec<String> = (0..NODES).map(name).collect();
    let body = Bytes::from(
        serde_json::to_vec(&json!({"Pod": pod, "Nodes": null, "NodeNames": names})).unwrap(),
    );
    bench(&body, None, "").await;
    bench(&body, Some(2), "_half_failing").await;
}

async fn bench(body: &Bytes, stale_every: Option<usize>, suffix: &str) {
    let policy = ExtenderPolicy::default();
    let state = ExtenderState {
        snapshot: SharedSnapshot::new(snapshot(&policy, stale_every)),
        synced: SyncState::all_synced(),
        policy: Arc::new(policy),
        metrics: Arc::new(Metrics::default()),
        now,
    };
    let app = router(state);
    for (verb, path) in [("filter", "/filter"), ("prioritize", "/prioritize")] {
        for _ in 0..50 {
            measure(&app, path, body).await;
        }
        let (mut wall, mut served): (Vec<_>, Vec<_>) = (Vec::new(), Vec::new());
        for _ in 0..CALLS {
            let (elapsed, on_cpu) = measure(&app, path, body).await;
            wall.push(elapsed);
            served.push(on_cpu);
        }
        wall.sort();
        served.sort();
        println!(
            "BENCH extender_{verb}_p50_ms_{NODES}{suffix} {:.3} ms",
            percentile_ms(&wall, 50)
        );
        println!(
            "BENCH extender_{verb}_p99_ms_{NODES}{suffix} {:.3} ms",
            percentile_ms(&wall, 99)
        );
        println!(
            "BENCH extender_{verb}_p99_ms_{NODES}{suffix}_without_cpu_wait {:.3} ms",
            percentile_ms(&served, 99)
        );
    }
}
