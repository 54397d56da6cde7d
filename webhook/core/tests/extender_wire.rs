//! The extender wire types against JSON in the exact shape kube-scheduler's Go structs produce:
//! no `json` tags, so Go field names, `null` for nil pointers, slices and maps.

// A test crate: a panic is a failed test, helpers included.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::borrow::Cow;

use jellyfin_ha_core::extender::wire::{
    ExtenderArgs, ExtenderFilterResult, host_priorities_json, node_name,
};
use jellyfin_ha_core::extender::{FilterDecision, RejectedNodes, Rejection};
use serde_json::{Value, json};

const ARGS_NAMES: &str = include_str!("fixtures/extender/filter-args-names.json");
const ARGS_NODES: &str = include_str!("fixtures/extender/filter-args-nodes.json");
const ARGS_NO_CANDIDATES: &str = include_str!("fixtures/extender/filter-args-no-candidates.json");
const RESULT_NAMES: &str = include_str!("fixtures/extender/filter-result-names.json");
const RESULT_ERROR: &str = include_str!("fixtures/extender/filter-result-error.json");
const PRIORITIES: &str = include_str!("fixtures/extender/prioritize-result.json");

fn value(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

#[test]
fn node_cache_capable_args_carry_names_only() {
    let args: ExtenderArgs = serde_json::from_str(ARGS_NAMES).unwrap();
    assert_eq!(
        args.pod.metadata.name.as_deref(),
        Some("jellyfin-7c9d8f6b5-x2k4q")
    );
    assert_eq!(args.pod.metadata.namespace.as_deref(), Some("media"));
    assert_eq!(args.candidate_count(), 3);
    let (_, names, nodes) = args.into_parts();
    assert!(nodes.is_none());
    assert_eq!(names, ["qs-1", "qs-2", "plain-1"]);
}

#[test]
fn full_node_args_yield_names_from_the_objects() {
    let args: ExtenderArgs = serde_json::from_str(ARGS_NODES).unwrap();
    assert!(args.node_names.is_none());
    assert_eq!(args.candidate_count(), 3);
    let (_, names, nodes) = args.into_parts();
    assert!(nodes.is_some());
    assert_eq!(names, ["qs-1", "qs-2", "plain-1"]);
}

#[test]
fn a_nil_item_slice_means_no_candidates() {
    let args: ExtenderArgs = serde_json::from_str(ARGS_NO_CANDIDATES).unwrap();
    assert_eq!(args.candidate_count(), 0);
    let (_, names, nodes) = args.into_parts();
    assert!(nodes.is_some());
    assert!(names.is_empty());
}

#[test]
fn names_borrow_from_the_body_and_escaped_ones_are_unescaped() {
    let body = r#"{"Pod": {}, "NodeNames": ["qs-1", "qs\u002d2"]}"#;
    let args: ExtenderArgs = serde_json::from_str(body).unwrap();
    let names = args.node_names.unwrap();
    assert!(matches!(names[0].0, Cow::Borrowed("qs-1")), "{names:?}");
    assert!(
        matches!(&names[1].0, Cow::Owned(name) if name == "qs-2"),
        "{names:?}"
    );
}

#[test]
fn the_typed_pod_keeps_what_the_decisions_read() {
    let args: ExtenderArgs = serde_json::from_str(ARGS_NAMES).unwrap();
    let spec = args.pod.spec.unwrap();
    let claims: Vec<_> = spec
        .volumes
        .unwrap_or_default()
        .into_iter()
        .filter_map(|v| v.persistent_volume_claim.map(|c| c.claim_name))
        .collect();
    assert_eq!(claims, ["jellyfin-config"]);
}

#[test]
fn unknown_fields_anywhere_in_the_pod_are_ignored() {
    let mut args = value(ARGS_NAMES);
    args["Pod"]["spec"]["someFutureField"] = json!({"enabled": true});
    args["Pod"]["metadata"]["anotherNewField"] = json!(3);
    args["Pod"]["status"]["resize"] = json!("Proposed");
    args["SomethingNewAtTheTop"] = json!([]);
    let text = args.to_string();
    let parsed: ExtenderArgs = serde_json::from_str(&text).unwrap();
    assert_eq!(parsed.into_parts().1, ["qs-1", "qs-2", "plain-1"]);
}

#[test]
fn lower_case_keys_from_older_tagged_copies_are_accepted() {
    let args = json!({"pod": value(ARGS_NAMES)["Pod"], "nodenames": ["a", "b"]}).to_string();
    let parsed: ExtenderArgs = serde_json::from_str(&args).unwrap();
    assert_eq!(parsed.into_parts().1, ["a", "b"]);
}

#[test]
fn a_missing_pod_is_an_error_naming_it() {
    let err = serde_json::from_str::<ExtenderArgs>(r#"{"NodeNames": ["a"]}"#).unwrap_err();
    assert!(err.to_string().contains("Pod"), "{err}");
}

fn rejected(
    reason: &str,
    unresolvable: bool,
    nodes: &[&'static str],
) -> RejectedNodes<&'static str> {
    RejectedNodes {
        rejection: Rejection {
            reason: reason.into(),
            kinds: Vec::new(),
            unresolvable,
        },
        nodes: nodes.to_vec(),
    }
}

#[test]
fn a_names_result_has_every_go_field_and_each_node_its_groups_reason() {
    let decision = FilterDecision {
        passed: vec!["qs-1"],
        rejected: vec![
            rejected(
                "attach limit of CSI driver rbd.csi.ceph.com reached",
                false,
                &["qs-2", "qs-3"],
            ),
            rejected(
                "node is out of service (taint node.kubernetes.io/out-of-service); node lacks \
                 QuickSync label intel.feature.node.kubernetes.io/gpu",
                true,
                &["plain-1"],
            ),
        ],
    };
    let written =
        serde_json::to_value(ExtenderFilterResult::from_decision(decision, None)).unwrap();
    assert_eq!(written, value(RESULT_NAMES));
}

#[test]
fn an_error_result_says_only_the_error() {
    let written = serde_json::to_value(ExtenderFilterResult::error("snapshot not synced")).unwrap();
    assert_eq!(written, value(RESULT_ERROR));
}

fn priorities(scores: &[(&str, i64)]) -> Value {
    serde_json::from_slice(&host_priorities_json(scores)).unwrap()
}

#[test]
fn priorities_are_written_with_go_field_names() {
    let scores = [("qs-1", 7), ("qs-2", 10), ("plain-1", 0)];
    assert_eq!(priorities(&scores), value(PRIORITIES));
}

#[test]
fn priorities_are_a_json_list_whatever_the_names() {
    let scores = [("a \"quoted\" \\ name\n", 0), ("é", 5)];
    assert_eq!(
        priorities(&scores),
        json!([
            {"Host": "a \"quoted\" \\ name\n", "Score": 0},
            {"Host": "é", "Score": 5}
        ])
    );
    assert_eq!(host_priorities_json(&[] as &[(&str, i64)]), b"[]");
}

#[test]
fn an_objects_result_returns_the_passing_objects_verbatim_in_order() {
    let args: ExtenderArgs = serde_json::from_str(ARGS_NODES).unwrap();
    let original = value(ARGS_NODES)["Nodes"]["items"].clone();
    let decision = FilterDecision {
        passed: vec!["plain-1", "qs-1"],
        rejected: vec![rejected("why", true, &["qs-2"])],
    };
    let result = ExtenderFilterResult::from_decision(decision, args.nodes);
    let written = serde_json::to_value(&result).unwrap();
    let items = written["Nodes"]["items"].as_array().unwrap();
    let names: Vec<_> = items.iter().filter_map(node_name).collect();
    assert_eq!(names, ["qs-1", "plain-1"]);
    assert_eq!(items[0], original[0]);
    assert_eq!(items[1], original[2]);
    assert_eq!(written["Nodes"]["metadata"], json!({}));
    assert_eq!(written["NodeNames"], json!(null));
    assert_eq!(written["FailedNodes"], json!({}));
    assert_eq!(
        written["FailedAndUnresolvableNodes"],
        json!({"qs-2": "why"})
    );
}
