//! The `k8s.io/kube-scheduler/extender/v1` wire protocol.
//!
//! The Go structs carry no `json` tags, so kube-scheduler's `json.Marshal` writes the Go field
//! names (`Pod`, `NodeNames`, `FailedNodes`, ...), emits `null` for nil pointers and maps, and
//! omits nothing. Its `json.Decoder` matches keys case-insensitively, so what we send back may
//! use any case; we write the Go names. Older copies of these types (`pkg/scheduler/api/v1`)
//! had lower-case tags such as `nodenames`, which the aliases accept.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};

use k8s_openapi::api::core::v1::Pod;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use super::decide::FilterDecision;

/// The lowest score an extender may return.
pub const MIN_EXTENDER_PRIORITY: i64 = 0;
/// The highest score an extender may return; kube-scheduler scales it by the extender's weight.
pub const MAX_EXTENDER_PRIORITY: i64 = 10;

/// The body of a filter or prioritize call. Node names borrow from the body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExtenderArgs<'a> {
    /// The pod being scheduled.
    #[serde(rename = "Pod", alias = "pod")]
    pub pod: Pod,
    /// Candidate nodes as full objects; set only when `nodeCacheCapable` is false.
    #[serde(rename = "Nodes", alias = "nodes", default)]
    pub nodes: Option<NodeList>,
    /// Candidate node names; set only when `nodeCacheCapable` is true.
    #[serde(
        rename = "NodeNames",
        alias = "nodenames",
        alias = "nodeNames",
        default,
        borrow
    )]
    pub node_names: Option<Vec<NodeName<'a>>>,
}

/// A candidate node name as it appears in the request body. At 5000 names, allocating and
/// freeing a `String` each costs more than the decision itself, so the name is borrowed; only
/// one written with JSON escapes (which no valid node name needs) is copied out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeName<'a>(#[serde(borrow)] pub Cow<'a, str>);

/// A `v1.NodeList` whose items are kept verbatim: in the full-object mode the scheduler uses
/// the objects the extender returns, so they go back exactly as they came.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeList {
    #[serde(
        rename = "apiVersion",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub api_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default)]
    pub metadata: Value,
    /// `null` when the scheduler had no candidates (a nil Go slice).
    #[serde(default)]
    pub items: Option<Vec<Value>>,
}

/// The answer to a filter call.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExtenderFilterResult {
    /// Nodes that pass, as full objects; set only when `nodeCacheCapable` is false.
    #[serde(rename = "Nodes", alias = "nodes", default)]
    pub nodes: Option<NodeList>,
    /// Names of the nodes that pass; set only when `nodeCacheCapable` is true.
    #[serde(
        rename = "NodeNames",
        alias = "nodenames",
        alias = "nodeNames",
        default
    )]
    pub node_names: Option<Vec<String>>,
    /// Nodes that fail, with a reason; preemption on them might still help.
    #[serde(
        rename = "FailedNodes",
        alias = "failedNodes",
        alias = "failednodes",
        default
    )]
    pub failed_nodes: Option<BTreeMap<String, String>>,
    /// Nodes that fail where preemption would not change anything; takes precedence over
    /// `failed_nodes`.
    #[serde(
        rename = "FailedAndUnresolvableNodes",
        alias = "failedAndUnresolvableNodes",
        alias = "failedandunresolvablenodes",
        default
    )]
    pub failed_and_unresolvable_nodes: Option<BTreeMap<String, String>>,
    /// Non-empty when the extender could not decide; the scheduler fails the attempt (or skips
    /// the extender when it is `ignorable`).
    #[serde(
        rename = "Error",
        alias = "error",
        default,
        deserialize_with = "null_as_default"
    )]
    pub error: String,
}

/// One node's score from a prioritize call; the name may borrow from the call's body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostPriority<'a> {
    #[serde(rename = "Host", alias = "host", borrow)]
    pub host: Cow<'a, str>,
    /// From [`MIN_EXTENDER_PRIORITY`] to [`MAX_EXTENDER_PRIORITY`].
    #[serde(rename = "Score", alias = "score")]
    pub score: i64,
}

/// The answer to a prioritize call: a JSON array of [`HostPriority`].
pub type HostPriorityList<'a> = Vec<HostPriority<'a>>;

impl<'a> ExtenderArgs<'a> {
    /// The candidate node names, from whichever form the scheduler sent.
    pub fn candidate_names(&self) -> Vec<&str> {
        match (&self.node_names, &self.nodes) {
            (Some(names), _) => names.iter().map(|name| name.0.as_ref()).collect(),
            (None, Some(nodes)) => nodes.items().iter().filter_map(node_name).collect(),
            (None, None) => Vec::new(),
        }
    }

    /// Splits the call into the pod, the candidate names, and the node objects when the
    /// scheduler sent those (to hand back to [`ExtenderFilterResult::from_decision`]). Names
    /// sent as names stay borrowed from the body.
    pub fn into_parts(self) -> (Pod, Vec<Cow<'a, str>>, Option<NodeList>) {
        match (self.node_names, self.nodes) {
            (Some(names), _) => (self.pod, names.into_iter().map(|n| n.0).collect(), None),
            (None, Some(nodes)) => {
                let names = nodes.names().into_iter().map(Cow::Owned).collect();
                (self.pod, names, Some(nodes))
            }
            (None, None) => (self.pod, Vec::new(), None),
        }
    }

    /// Whether the scheduler sent full node objects (`nodeCacheCapable: false`), in which case
    /// the filter result must return objects too.
    pub fn has_node_objects(&self) -> bool {
        self.node_names.is_none() && self.nodes.is_some()
    }
}

impl NodeList {
    /// The items, treating `null` as empty.
    pub fn items(&self) -> &[Value] {
        self.items.as_deref().unwrap_or_default()
    }

    /// The items' names, in order; items without one are skipped, as nothing could match them.
    pub fn names(&self) -> Vec<String> {
        self.items()
            .iter()
            .filter_map(node_name)
            .map(str::to_owned)
            .collect()
    }
}

/// The wire form of prioritize scores.
pub fn host_priorities<'a>(scores: Vec<(impl Into<Cow<'a, str>>, i64)>) -> HostPriorityList<'a> {
    scores
        .into_iter()
        .map(|(host, score)| HostPriority {
            host: host.into(),
            score,
        })
        .collect()
}

/// `metadata.name` of a node object kept as raw JSON.
pub fn node_name(node: &Value) -> Option<&str> {
    node.get("metadata")?.get("name")?.as_str()
}

impl ExtenderFilterResult {
    /// The wire form of a filter decision: names, or the passing objects out of `nodes` when
    /// the scheduler sent objects.
    pub fn from_decision(decision: FilterDecision, nodes: Option<NodeList>) -> Self {
        let (passed, failed, unresolvable) = decision.into_wire_parts();
        match nodes {
            Some(nodes) => Self::with_objects(nodes, &passed, failed, unresolvable),
            None => Self::with_names(passed, failed, unresolvable),
        }
    }

    /// A result naming the passing nodes (`nodeCacheCapable: true`). Each failure map is
    /// always present, possibly empty, so the scheduler never sees an ambiguous `null`.
    pub fn with_names(
        passed: Vec<String>,
        failed: BTreeMap<String, String>,
        failed_and_unresolvable: BTreeMap<String, String>,
    ) -> Self {
        Self {
            nodes: None,
            node_names: Some(passed),
            failed_nodes: Some(failed),
            failed_and_unresolvable_nodes: Some(failed_and_unresolvable),
            error: String::new(),
        }
    }

    /// A result returning the passing node objects out of `candidates`, in their original
    /// order (`nodeCacheCapable: false`).
    pub fn with_objects(
        candidates: NodeList,
        passed: &[String],
        failed: BTreeMap<String, String>,
        failed_and_unresolvable: BTreeMap<String, String>,
    ) -> Self {
        let keep: HashSet<&str> = passed.iter().map(String::as_str).collect();
        let items = candidates
            .items
            .unwrap_or_default()
            .into_iter()
            .filter(|node| node_name(node).is_some_and(|name| keep.contains(name)))
            .collect();
        Self {
            nodes: Some(NodeList {
                items: Some(items),
                ..candidates
            }),
            node_names: None,
            failed_nodes: Some(failed),
            failed_and_unresolvable_nodes: Some(failed_and_unresolvable),
            error: String::new(),
        }
    }

    /// A result that tells the scheduler the extender could not decide.
    pub fn error(message: impl Into<String>) -> Self {
        Self {
            error: message.into(),
            ..Self::default()
        }
    }
}

/// Go decodes `null` into a string as "leave it unchanged", i.e. empty.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}
