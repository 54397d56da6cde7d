//! The extender router in process: calls in kube-scheduler's wire shape, both node modes,
//! hostile bodies, a cache that is not synced yet, a view gone stale, and the metrics.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod support;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, StatusCode};
use jellyfin_ha::admin::{AdminState, router_with_checks};
use jellyfin_ha::extender::{ExtenderState, MAX_EXTENDER_ARGS_BYTES, router};
use jellyfin_ha::metrics::{Metrics, ReasonLabels};
use jellyfin_ha::reflect::{SharedSnapshot, SyncState};
use jellyfin_ha_core::extender::snapshot::{LeaseInfo, NodeInfo};
use jellyfin_ha_core::extender::{ExtenderPolicy, Snapshot};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::Timestamp;
use rstest::rstest;
use serde_json::{Value, json};

const ARGS_NAMES: &str = include_str!("../../core/tests/fixtures/extender/filter-args-names.json");
const ARGS_NODES: &str = include_str!("../../core/tests/fixtures/extender/filter-args-nodes.json");

fn now() -> Timestamp {
    "2026-11-24T20:01:10Z".parse().unwrap()
}

/// qs-1 healthy, qs-2 a QuickSync node whose Lease went stale, plain-1 without QuickSync.
fn snapshot() -> Snapshot {
    let policy = ExtenderPolicy::default();
    let args: Value = serde_json::from_str(ARGS_NODES).unwrap();
    let mut snapshot = Snapshot::new();
    for item in args["Nodes"]["items"].as_array().unwrap() {
        let node: Node = serde_json::from_value(item.clone()).unwrap();
        snapshot.upsert_node(NodeInfo::from_node(&node, &policy).unwrap());
    }
    for (node, renewed) in [
        ("qs-1", "2026-11-24T20:01:05Z"),
        ("qs-2", "2026-11-24T20:00:00Z"),
        ("plain-1", "2026-11-24T20:01:05Z"),
    ] {
        snapshot.upsert_lease(LeaseInfo {
            node_name: node.into(),
            renew_time: Some(renewed.parse().unwrap()),
            lease_duration_seconds: Some(40),
        });
    }
    snapshot
}

fn state_with(synced: SyncState) -> ExtenderState {
    ExtenderState {
        snapshot: SharedSnapshot::new(snapshot()),
        synced,
        policy: Arc::new(ExtenderPolicy::default()),
        metrics: Arc::new(Metrics::default()),
        now,
    }
}

fn state() -> ExtenderState {
    state_with(SyncState::all_synced())
}

async fn send(
    state: ExtenderState,
    method: Method,
    path: &str,
    body: impl Into<Body>,
) -> (StatusCode, Vec<u8>) {
    support::oneshot(router(state), method, path, body).await
}

async fn post_json(state: ExtenderState, path: &str, body: &str) -> (StatusCode, Value) {
    let (status, bytes) = send(state, Method::POST, path, body.to_string()).await;
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, value)
}

#[tokio::test]
async fn filter_with_node_names() {
    let (status, result) = post_json(state(), "/filter", ARGS_NAMES).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(result["NodeNames"], json!(["qs-1"]));
    assert_eq!(result["Error"], "");
    let unresolvable = &result["FailedAndUnresolvableNodes"];
    assert!(
        unresolvable["qs-2"]
            .as_str()
            .unwrap()
            .contains("heartbeat lease not renewed"),
        "{result}"
    );
    assert!(
        unresolvable["plain-1"]
            .as_str()
            .unwrap()
            .contains("QuickSync"),
        "{result}"
    );
    assert_eq!(result["FailedNodes"], json!({}));
}

#[tokio::test]
async fn filter_with_node_objects_returns_the_objects_verbatim() {
    let args: Value = serde_json::from_str(ARGS_NODES).unwrap();
    let (status, result) = post_json(state(), "/filter", ARGS_NODES).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(result["NodeNames"], Value::Null);
    let items = result["Nodes"]["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0], args["Nodes"]["items"][0]);
}

#[tokio::test]
async fn prioritize_scores_every_candidate_in_range() {
    let (status, result) = post_json(state(), "/prioritize", ARGS_NAMES).await;
    assert_eq!(status, StatusCode::OK);
    let scores = result.as_array().unwrap();
    let hosts: Vec<&str> = scores.iter().map(|s| s["Host"].as_str().unwrap()).collect();
    assert_eq!(hosts, ["qs-1", "qs-2", "plain-1"]);
    for score in scores {
        let score = score["Score"].as_i64().unwrap();
        assert!((0..=10).contains(&score), "{result}");
    }
}

#[rstest]
#[case::garbage("not json")]
#[case::wrong_shape(r#"{"Pod": 3}"#)]
#[case::empty("")]
#[tokio::test]
async fn bad_filter_bodies_get_an_error_result(#[case] body: &str) {
    let state = state();
    let metrics = Arc::clone(&state.metrics);
    let (status, result) = post_json(state, "/filter", body).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        result["Error"]
            .as_str()
            .unwrap()
            .starts_with("cannot parse ExtenderArgs"),
        "{result}"
    );
    assert!(
        metrics
            .encode()
            .contains(r#"jellyfin_ha_extender_calls_total{verb="filter",outcome="invalid"} 1"#)
    );
}

#[tokio::test]
async fn bad_prioritize_bodies_get_400() {
    let (status, _) = send(state(), Method::POST, "/prioritize", "[").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn before_the_first_sync_calls_are_not_decided() {
    let (status, result) = post_json(state_with(SyncState::default()), "/filter", ARGS_NAMES).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        result["Error"].as_str().unwrap().contains("not synced"),
        "{result}"
    );
    assert_eq!(result["NodeNames"], Value::Null);
    let (status, _) = send(
        state_with(SyncState::default()),
        Method::POST,
        "/prioritize",
        ARGS_NAMES,
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn oversized_bodies_get_413() {
    let body = vec![b' '; MAX_EXTENDER_ARGS_BYTES + 1];
    let (status, _) = send(state(), Method::POST, "/filter", body).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn other_methods_and_paths_are_refused() {
    let (status, _) = send(state(), Method::GET, "/filter", Body::empty()).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let (status, _) = send(state(), Method::POST, "/bind", ARGS_NAMES).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn calls_are_counted_by_verb_and_outcome() {
    let state = state();
    let metrics = Arc::clone(&state.metrics);
    for path in ["/filter", "/filter", "/prioritize"] {
        let (status, _) = send(state.clone(), Method::POST, path, ARGS_NAMES).await;
        assert_eq!(status, StatusCode::OK);
    }
    let text = metrics.encode();
    assert!(
        text.contains(r#"jellyfin_ha_extender_calls_total{verb="filter",outcome="ok"} 2"#),
        "{text}"
    );
    assert!(
        text.contains(r#"jellyfin_ha_extender_calls_total{verb="prioritize",outcome="ok"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"jellyfin_ha_extender_candidate_nodes_total{verb="filter"} 6"#),
        "{text}"
    );
    assert!(text.contains("jellyfin_ha_extender_call_duration_seconds_count{verb=\"filter\"} 2"));
}

#[tokio::test]
async fn rejected_nodes_are_counted_by_reason_kind() {
    let state = state();
    let metrics = Arc::clone(&state.metrics);
    let mut args: Value = serde_json::from_str(ARGS_NAMES).unwrap();
    args["NodeNames"] = json!(["qs-1", "qs-2", "plain-1", "ghost-1", "ghost-2"]);
    let (_, result) = post_json(state, "/filter", &args.to_string()).await;
    assert_eq!(result["NodeNames"], json!(["qs-1"]), "{result}");
    let counted = |reason: &str| {
        let labels = ReasonLabels {
            reason: reason.into(),
        };
        metrics.extender_filtered.get_or_create(&labels).get()
    };
    // The two unknown nodes share one rejection and count twice.
    assert_eq!(counted("unknown-node"), 2);
    assert_eq!(counted("lease-stale"), 1);
    assert_eq!(counted("no-quicksync-label"), 1);
    assert_eq!(counted("no-lease"), 0);
}

#[tokio::test]
async fn large_calls_are_decided_off_the_async_workers_alike() {
    // Past the inline limit, as a full Node list at a few hundred nodes is.
    let mut body = ARGS_NAMES.to_string();
    body.push_str(&" ".repeat(2 * 1024 * 1024));
    let (status, result) = post_json(state(), "/filter", &body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(result["NodeNames"], json!(["qs-1"]));
    let (status, result) = post_json(state(), "/prioritize", &body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(result.as_array().unwrap().len(), 3);
}

/// The same cluster, seen a minute later by a view whose Leases stopped moving: every node
/// looks dead at once.
fn stale_state() -> ExtenderState {
    fn later() -> Timestamp {
        "2026-11-24T20:02:10Z".parse().unwrap()
    }
    ExtenderState {
        now: later,
        ..state()
    }
}

#[tokio::test]
async fn a_stale_view_answers_with_an_error_the_scheduler_can_skip() {
    let state = stale_state();
    let metrics = Arc::clone(&state.metrics);
    let (status, result) = post_json(state.clone(), "/filter", ARGS_NAMES).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        result["Error"],
        "the extender's view is stale: 3 of 3 nodes have a stale heartbeat lease at once: \
         the view or the control plane is behind"
    );
    assert_eq!(result["NodeNames"], Value::Null, "no node filtered out");
    assert_eq!(result["FailedAndUnresolvableNodes"], Value::Null);
    let (status, _) = send(state, Method::POST, "/prioritize", ARGS_NAMES).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let text = metrics.encode();
    assert!(
        text.contains(r#"jellyfin_ha_extender_calls_total{verb="filter",outcome="stale"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"jellyfin_ha_extender_calls_total{verb="prioritize",outcome="stale"} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn readiness_follows_the_view() {
    async fn readyz(state: ExtenderState) -> (StatusCode, String) {
        let admin = AdminState {
            ready: Arc::new(true.into()),
            metrics: Arc::clone(&state.metrics),
        };
        let app = router_with_checks(admin, vec![state.ready_check()]);
        let (status, body) = support::oneshot(app, Method::GET, "/readyz", Body::empty()).await;
        (status, String::from_utf8(body).unwrap())
    }
    assert_eq!(readyz(state()).await, (StatusCode::OK, "ok".to_string()));
    let (status, body) = readyz(stale_state()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("3 of 3 nodes"), "{body}");
}
