//! The wire types against ExtenderArgs captured from a real kube-scheduler (v1.37.2).

#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use jellyfin_ha_core::extender::wire::ExtenderArgs;
use rstest::rstest;
use serde_json::Value;

const NAMES: &str = include_str!("fixtures/extender/captured/args-names.json");
const NODES: &str = include_str!("fixtures/extender/captured/args-nodes.json");

#[rstest]
#[case::node_cache_capable(NAMES, false)]
#[case::full_nodes(NODES, true)]
fn captured_args_parse(#[case] captured: &str, #[case] full_nodes: bool) {
    let args: ExtenderArgs = serde_json::from_str(captured).unwrap();
    assert_eq!(args.pod.metadata.name.as_deref(), Some("jellyfin"));
    let labels = args.pod.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get("jellyfin-ha.io/managed").map(String::as_str),
        Some("true")
    );
    let (_, names, nodes) = args.into_parts();
    assert_eq!(nodes.is_some(), full_nodes);
    assert_eq!(names, ["qs-1", "qs-2"]);
}

#[rstest]
#[case::node_cache_capable(NAMES)]
#[case::full_nodes(NODES)]
fn captured_args_round_trip_with_the_schedulers_field_names(#[case] captured: &str) {
    let original: Value = serde_json::from_str(captured).unwrap();
    let args: ExtenderArgs = serde_json::from_str(captured).unwrap();
    let written = serde_json::to_value(&args).unwrap();
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&written), keys(&original));
    assert_eq!(written["NodeNames"], original["NodeNames"]);
    assert_eq!(written["Nodes"].is_null(), original["Nodes"].is_null());
    assert_eq!(
        written["Pod"]["metadata"]["name"],
        original["Pod"]["metadata"]["name"]
    );
    let text = written.to_string();
    let reparsed: ExtenderArgs = serde_json::from_str(&text).unwrap();
    assert_eq!(reparsed.into_parts().1, args.into_parts().1);
}
