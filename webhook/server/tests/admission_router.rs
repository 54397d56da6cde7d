//! The webhook router end to end in process: real reviews, hostile bodies, HTTP edges.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod support;

use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::body::Body;
use axum::http::{Method, StatusCode};
use base64::Engine;
use jellyfin_ha::metrics::Metrics;
use jellyfin_ha::webhook::{MAX_REVIEW_BYTES, WebhookState, router};
use jellyfin_ha_core::Policy;
use rstest::rstest;
use serde_json::{Value, json};

use support::POD_CREATE;

fn state() -> WebhookState {
    WebhookState {
        policy: Arc::new(ArcSwap::from_pointee(Policy::default())),
        metrics: Arc::new(Metrics::default()),
    }
}

async fn send(
    state: WebhookState,
    method: Method,
    path: &str,
    body: impl Into<Body>,
) -> (StatusCode, Vec<u8>) {
    support::oneshot(router(state), method, path, body).await
}

async fn review(body: impl Into<Body>) -> Value {
    let (status, bytes) = send(state(), Method::POST, "/mutate", body).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&bytes)
    );
    serde_json::from_slice(&bytes).unwrap()
}

fn pod_review() -> Value {
    serde_json::from_str(POD_CREATE).unwrap()
}

fn decoded_patch(response: &Value) -> json_patch::Patch {
    let encoded = response["patch"]
        .as_str()
        .expect("patch is a base64 string");
    serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn pod_create_gets_a_base64_json_patch_that_applies() {
    let input = pod_review();
    let answer = review(input.to_string()).await;
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["kind"], "AdmissionReview");
    let response = &answer["response"];
    assert_eq!(response["uid"], input["request"]["uid"]);
    assert_eq!(response["allowed"], true);
    assert_eq!(response["patchType"], "JSONPatch");

    let mut pod = input["request"]["object"].clone();
    json_patch::patch(&mut pod, &decoded_patch(response)).unwrap();
    let tolerations = pod["spec"]["tolerations"].as_array().unwrap();
    assert_eq!(tolerations.len(), 2);
    assert!(tolerations.iter().all(|t| t["tolerationSeconds"] == 15));
    assert_eq!(pod["metadata"]["labels"]["jellyfin-ha.io/managed"], "true");
}

/// The review's text is read in place where it has no escapes; where it has, it is decoded.
#[tokio::test]
async fn escaped_review_fields_are_read_decoded() {
    let mut input = pod_review();
    input["request"]["uid"] = json!("uid \"quoted\" \\ é");
    // serde_json writes `"` and `\` escaped; the rest as \u escapes, as any client may.
    let body = input
        .to_string()
        .replace(r#""operation":"CREATE""#, r#""operation":"CRE\u0041TE""#)
        .replace(
            r#""apiVersion":"admission.k8s.io/v1""#,
            r#""apiVersion":"admission.k8s.io/v\u0031""#,
        )
        .replace("é", r"\u00e9");
    for escaped in [r"CRE\u0041TE", r"\u00e9", r"v\u0031"] {
        assert!(body.contains(escaped), "{escaped} in {body}");
    }
    let answer = review(body).await;
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    let response = &answer["response"];
    assert_eq!(response["uid"], "uid \"quoted\" \\ é");
    assert_eq!(response["allowed"], true);
    assert!(!decoded_patch(response).0.is_empty());
}

/// A review of megabytes, over the limit for answering inline, gets a small one's answer.
#[tokio::test]
async fn large_reviews_get_the_same_answer() {
    let small = pod_review();
    let mut large = small.clone();
    let blob = "x".repeat(MAX_REVIEW_BYTES / 2);
    large["request"]["object"]["metadata"]["annotations"]["example.com/blob"] = json!(blob);
    let (small, large) = (
        review(small.to_string()).await,
        review(large.to_string()).await,
    );
    assert_eq!(large["response"]["allowed"], true);
    assert_eq!(
        decoded_patch(&large["response"]),
        decoded_patch(&small["response"])
    );
}

#[tokio::test]
async fn already_mutated_pod_gets_no_patch() {
    let mut input = pod_review();
    let first = review(input.to_string()).await;
    json_patch::patch(
        &mut input["request"]["object"],
        &decoded_patch(&first["response"]),
    )
    .unwrap();
    let second = review(input.to_string()).await;
    assert_eq!(second["response"]["allowed"], true);
    assert!(second["response"].get("patch").is_none(), "{second}");
    assert!(second["response"].get("patchType").is_none());
}

#[rstest]
#[case::update("UPDATE")]
#[case::delete("DELETE")]
#[case::connect("CONNECT")]
#[tokio::test]
async fn other_pod_operations_are_allowed_untouched(#[case] operation: &str) {
    let mut input = pod_review();
    input["request"]["operation"] = json!(operation);
    let response = review(input.to_string()).await["response"].clone();
    assert_eq!(response["allowed"], true);
    assert!(response.get("patch").is_none());
}

#[tokio::test]
async fn subresource_requests_are_allowed_untouched() {
    let mut input = pod_review();
    input["request"]["subResource"] = json!("ephemeralcontainers");
    let response = review(input.to_string()).await["response"].clone();
    assert_eq!(response["allowed"], true);
    assert!(response.get("patch").is_none());
}

#[tokio::test]
async fn deployment_update_switches_to_recreate() {
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "jellyfin", "namespace": "media"},
        "spec": {"strategy": {"type": "RollingUpdate"}, "template": {
            "metadata": {"annotations": {"jellyfin-ha.io/inject": "true"}},
            "spec": {"containers": [{"name": "jellyfin"}], "volumes": [{"name": "c", "persistentVolumeClaim": {"claimName": "c"}}]}
        }}
    });
    let input = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": "u1", "kind": {"group": "apps", "version": "v1", "kind": "Deployment"}, "operation": "UPDATE",
        "object": deployment.clone(), "oldObject": deployment
    }});
    let response = review(input.to_string()).await["response"].clone();
    let mut patched = input["request"]["object"].clone();
    json_patch::patch(&mut patched, &decoded_patch(&response)).unwrap();
    assert_eq!(patched["spec"]["strategy"], json!({"type": "Recreate"}));
    assert!(
        response["warnings"][0]
            .as_str()
            .unwrap()
            .contains("Recreate")
    );
}

fn workload_review(kind: &str, operation: &str, object: &Value) -> Value {
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": "u2", "kind": {"group": "apps", "version": "v1", "kind": kind}, "operation": operation,
        "object": object, "oldObject": if operation == "UPDATE" { object.clone() } else { Value::Null }
    }})
}

fn opted_in_workload(kind: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": kind, "metadata": {"name": "jellyfin", "namespace": "media"},
        "spec": {"selector": {"matchLabels": {"app": "jellyfin"}}, "template": {
            "metadata": {"labels": {"app": "jellyfin"}, "annotations": {"jellyfin-ha.io/inject": "true"}},
            "spec": {"containers": [{"name": "jellyfin", "image": "jellyfin/jellyfin"}]}
        }}
    })
}

/// Pods a workload creates while the webhook is unreachable are still complete: the template
/// carries everything but the scheduling marker. What comes out is what `jellyfin-ha mutate`
/// prints for the same object.
#[rstest]
#[case::deployment_create("Deployment", "CREATE")]
#[case::deployment_update("Deployment", "UPDATE")]
#[case::statefulset_create("StatefulSet", "CREATE")]
#[case::statefulset_update("StatefulSet", "UPDATE")]
#[tokio::test]
async fn workload_templates_are_mutated_without_the_marker(
    #[case] kind: &str,
    #[case] operation: &str,
) {
    let object = opted_in_workload(kind);
    let response =
        review(workload_review(kind, operation, &object).to_string()).await["response"].clone();
    assert_eq!(response["allowed"], true, "{response}");
    let mut patched = object.clone();
    json_patch::patch(&mut patched, &decoded_patch(&response)).unwrap();
    let template = &patched["spec"]["template"];
    let container = &template["spec"]["containers"][0];
    assert_eq!(container["resources"]["limits"]["gpu.intel.com/i915"], "1");
    assert!(
        container["resources"]["limits"]
            .get("jellyfin-ha.io/managed")
            .is_none(),
        "{container}"
    );
    assert!(
        container["resources"].get("requests").is_none(),
        "{container}"
    );
    assert_eq!(
        template["metadata"]["labels"]["jellyfin-ha.io/managed"],
        "true"
    );
    assert_eq!(template["spec"]["terminationGracePeriodSeconds"], 600);
    let seconds: Vec<&Value> = template["spec"]["tolerations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| &t["tolerationSeconds"])
        .collect();
    assert_eq!(seconds, [&json!(15), &json!(15)]);
    let cli = jellyfin_ha_core::mutate_manifest(&object, &Policy::default()).unwrap();
    assert_eq!(patched, cli.object);

    // Applying the template again (a GitOps sync, the Deployment controller's own updates)
    // changes nothing.
    let again =
        review(workload_review(kind, "UPDATE", &patched).to_string()).await["response"].clone();
    assert_eq!(again["allowed"], true);
    assert!(again.get("patch").is_none(), "{again}");
}

#[rstest]
#[case::daemonset("DaemonSet")]
#[case::replicaset("ReplicaSet")]
#[tokio::test]
async fn other_workload_kinds_are_left_to_the_pod_mutation(#[case] kind: &str) {
    let object = opted_in_workload(kind);
    let response =
        review(workload_review(kind, "CREATE", &object).to_string()).await["response"].clone();
    assert_eq!(response["allowed"], true);
    assert!(response.get("patch").is_none(), "{response}");
}

#[tokio::test]
async fn workload_status_updates_are_left_alone() {
    let object = opted_in_workload("StatefulSet");
    let mut input = workload_review("StatefulSet", "UPDATE", &object);
    input["request"]["subResource"] = json!("status");
    let response = review(input.to_string()).await["response"].clone();
    assert!(response.get("patch").is_none(), "{response}");
}

#[tokio::test]
async fn malformed_override_is_denied_with_a_message() {
    let mut input = pod_review();
    input["request"]["object"]["metadata"]["annotations"]["jellyfin-ha.io/failover-seconds"] =
        json!("soon");
    let response = review(input.to_string()).await["response"].clone();
    assert_eq!(response["allowed"], false);
    assert_eq!(response["uid"], input["request"]["uid"]);
    assert_eq!(response["status"]["code"], 400);
    let message = response["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("jellyfin-ha.io/failover-seconds") && message.contains("0 to 300"),
        "{message}"
    );
}

#[tokio::test]
async fn warnings_reach_the_response() {
    let mut input = pod_review();
    input["request"]["object"]["spec"]["tolerations"] = json!([{"operator": "Exists"}]);
    let response = review(input.to_string()).await["response"].clone();
    assert!(
        response["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().unwrap().contains("out-of-service"))
    );
}

fn deeply_nested() -> String {
    "[".repeat(100_000) + &"]".repeat(100_000)
}

#[rstest]
#[case::empty("")]
#[case::null("null")]
#[case::array("[]")]
#[case::not_json("<xml/>")]
#[case::no_request(r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#)]
#[case::null_request(r#"{"request":null}"#)]
#[case::request_without_uid(
    r#"{"request":{"kind":{"group":"","version":"v1","kind":"Pod"},"operation":"CREATE"}}"#
)]
#[case::deep_nesting(&deeply_nested())]
#[tokio::test]
async fn unusable_bodies_get_an_invalid_response(#[case] body: &str) {
    let response = review(body.to_string()).await["response"].clone();
    assert_eq!(response["allowed"], false);
    assert_eq!(response["status"]["code"], 400);
}

#[rstest]
#[case::null_object(json!(null))]
#[case::string_object(json!("a pod"))]
#[case::list_object(json!([1, 2]))]
#[tokio::test]
async fn non_object_pod_is_invalid(#[case] object: Value) {
    let mut input = pod_review();
    input["request"]["object"] = object;
    let response = review(input.to_string()).await["response"].clone();
    assert_eq!(response["allowed"], false);
    assert_eq!(response["uid"], input["request"]["uid"]);
    assert!(
        response["status"]["message"]
            .as_str()
            .unwrap()
            .contains("request.object")
    );
}

#[tokio::test]
async fn pod_with_wrongly_typed_fields_is_denied_naming_the_field() {
    let mut input = pod_review();
    input["request"]["object"]["spec"]["containers"] = json!({"name": "jellyfin"});
    let response = review(input.to_string()).await["response"].clone();
    assert_eq!(response["allowed"], false);
    assert!(
        response["status"]["message"]
            .as_str()
            .unwrap()
            .contains("spec.containers"),
        "{response}"
    );
}

#[tokio::test]
async fn non_utf8_body_is_invalid() {
    let response = review(vec![0xff, 0xfe, 0x00, 0x7b]).await["response"].clone();
    assert_eq!(response["allowed"], false);
}

#[tokio::test]
async fn other_kinds_pass_untouched() {
    let mut input = pod_review();
    input["request"]["kind"] = json!({"group": "", "version": "v1", "kind": "ConfigMap"});
    let response = review(input.to_string()).await["response"].clone();
    assert_eq!(response["allowed"], true);
    assert!(response.get("patch").is_none());
}

#[tokio::test]
async fn oversized_body_is_413() {
    let body = format!("{{\"pad\":\"{}\"}}", "x".repeat(MAX_REVIEW_BYTES));
    let (status, _) = send(state(), Method::POST, "/mutate", body).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[rstest]
#[case::unknown_path(Method::POST, "/validate", StatusCode::NOT_FOUND)]
#[case::root(Method::GET, "/", StatusCode::NOT_FOUND)]
#[case::wrong_method(Method::GET, "/mutate", StatusCode::METHOD_NOT_ALLOWED)]
#[tokio::test]
async fn http_edges(#[case] method: Method, #[case] path: &str, #[case] expected: StatusCode) {
    let (status, _) = send(state(), method, path, "{}").await;
    assert_eq!(status, expected);
}

#[tokio::test]
async fn reviews_are_counted_by_outcome() {
    let state = state();
    send(state.clone(), Method::POST, "/mutate", POD_CREATE).await;
    send(state.clone(), Method::POST, "/mutate", "garbage").await;
    let text = state.metrics.encode();
    assert!(text.contains(r#"jellyfin_ha_admission_reviews_total{kind="Pod",operation="CREATE",outcome="mutated"} 1"#), "{text}");
    assert!(text.contains(r#"outcome="invalid"} 1"#), "{text}");
    // And by change, as the mutations annotation keys them.
    for change in ["failover-tolerations", "termination-grace", "igpu"] {
        let line = format!("jellyfin_ha_admission_changes_total{{change=\"{change}\"}} 1");
        assert!(text.contains(&line), "{text}");
    }
}

#[tokio::test]
async fn label_values_from_the_body_are_bounded() {
    let state = state();
    for i in 0..50 {
        let mut input = pod_review();
        input["request"]["kind"]["kind"] = json!(format!("Kind{i}"));
        input["request"]["operation"] = json!(format!("OP{i}"));
        send(state.clone(), Method::POST, "/mutate", input.to_string()).await;
    }
    let text = state.metrics.encode();
    let series = text
        .lines()
        .filter(|l| l.starts_with("jellyfin_ha_admission_reviews_total{"))
        .count();
    assert_eq!(series, 1, "{text}");
    assert!(
        text.contains(r#"kind="other",operation="other",outcome="unchanged"} 50"#),
        "{text}"
    );
}
