//! The wire types against ExtenderArgs captured from a real kube-scheduler (v1.37.2).

#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use jellyfin_ha_core::extender::wire::ExtenderArgs;
use rstest::rstest;

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
