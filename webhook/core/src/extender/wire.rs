//! The `k8s.io/kube-scheduler/extender/v1` wire protocol.
//!
//! The Go structs carry no `json` tags, so kube-scheduler's `json.Marshal` writes the Go field
//! names (`Pod`, `NodeNames`, `FailedNodes`, ...), emits `null` for nil pointers and maps, and
//! omits nothing. Its `json.Decoder` matches keys case-insensitively, so what we send back may
//! use any case; we write the Go names. Older copies of these types (`pkg/scheduler/api/v1`)
//! had lower-case tags such as `nodenames`, which the aliases accept.

use std::borrow::Cow;
use std::collections::HashSet;

use k8s_openapi::api::core::v1::Pod;
use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

use super::decide::FilterDecision;
use crate::json_text;

/// The lowest score an extender may return.
pub const MIN_EXTENDER_PRIORITY: i64 = 0;
/// The highest score an extender may return; kube-scheduler scales it by the extender's weight.
pub const MAX_EXTENDER_PRIORITY: i64 = 10;

/// The body of a filter or prioritize call. Node names borrow from the body.
#[derive(Debug, Deserialize)]
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
#[derive(Debug, Deserialize)]
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

/// The answer to a filter call, written straight from a [`FilterDecision`]: names that
/// borrow from the request are serialised from there, and each worded reason is shared by
/// the nodes that fail for it. kube-scheduler reads `Nodes`, `NodeNames`, `FailedNodes`,
/// `FailedAndUnresolvableNodes` and `Error`; only the answer is ever written, never read.
#[derive(Debug, Clone, PartialEq)]
pub struct ExtenderFilterResult<N> {
    /// The passing node objects, when the scheduler sent objects (`nodeCacheCapable: false`).
    nodes: Option<NodeList>,
    /// `None` when the extender could not decide.
    decision: Option<FilterDecision<N>>,
    /// Non-empty when the extender could not decide; the scheduler fails the attempt (or skips
    /// the extender when it is `ignorable`).
    error: String,
}

impl<'a> ExtenderArgs<'a> {
    /// How many candidates the scheduler sent, in whichever form.
    pub fn candidate_count(&self) -> usize {
        match (&self.node_names, &self.nodes) {
            (Some(names), _) => names.len(),
            (None, Some(nodes)) => nodes.items().len(),
            (None, None) => 0,
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

/// The answer to a prioritize call, a `HostPriorityList` of each node's score from
/// [`MIN_EXTENDER_PRIORITY`] to [`MAX_EXTENDER_PRIORITY`]: `[{"Host":"qs-1","Score":7},...]`.
/// Written as text into a buffer sized for it once: through serde, into a buffer that grew as
/// it was written, a call over 5000 nodes took a fifth longer.
pub fn host_priorities_json(scores: &[(impl AsRef<str>, i64)]) -> Vec<u8> {
    const PER_HOST: usize = r#"{"Host":"","Score":10},"#.len();
    let names: usize = scores.iter().map(|(host, _)| host.as_ref().len()).sum();
    let mut json = Vec::with_capacity(2 + names + PER_HOST * scores.len());
    json.push(b'[');
    for (host, score) in scores {
        json.extend_from_slice(br#"{"Host":"#);
        json_text::write(&mut json, host.as_ref());
        json.extend_from_slice(br#","Score":"#);
        json.extend_from_slice(itoa::Buffer::new().format(*score).as_bytes());
        json.extend_from_slice(b"},");
    }
    // The last comma becomes the closing bracket.
    match json.last_mut() {
        Some(last) if *last == b',' => *last = b']',
        _ => json.push(b']'),
    }
    json
}

/// `metadata.name` of a node object kept as raw JSON.
pub fn node_name(node: &Value) -> Option<&str> {
    node.get("metadata")?.get("name")?.as_str()
}

impl<N: AsRef<str>> ExtenderFilterResult<N> {
    /// The wire form of a filter decision: the passing names or, when the scheduler sent
    /// objects, the passing objects out of `nodes`, in their original order. Both failure
    /// maps are always present, possibly empty, so the scheduler never sees an ambiguous
    /// `null`.
    pub fn from_decision(decision: FilterDecision<N>, nodes: Option<NodeList>) -> Self {
        let nodes = nodes.map(|candidates| {
            let keep: HashSet<&str> = decision.passed.iter().map(AsRef::as_ref).collect();
            let items = candidates
                .items
                .unwrap_or_default()
                .into_iter()
                .filter(|node| node_name(node).is_some_and(|name| keep.contains(name)))
                .collect();
            NodeList {
                items: Some(items),
                ..candidates
            }
        });
        Self {
            nodes,
            decision: Some(decision),
            error: String::new(),
        }
    }
}

impl ExtenderFilterResult<String> {
    /// A result that tells the scheduler the extender could not decide.
    pub fn error(message: impl Into<String>) -> Self {
        Self {
            nodes: None,
            decision: None,
            error: message.into(),
        }
    }
}

impl<N: AsRef<str>> Serialize for ExtenderFilterResult<N> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let decision = self.decision.as_ref();
        let names = decision
            .filter(|_| self.nodes.is_none())
            .map(|decision| Names(&decision.passed));
        let failures = |unresolvable| {
            decision.map(|decision| Failures {
                decision,
                unresolvable,
            })
        };
        let mut result = serializer.serialize_struct("ExtenderFilterResult", 5)?;
        result.serialize_field("Nodes", &self.nodes)?;
        result.serialize_field("NodeNames", &names)?;
        result.serialize_field("FailedNodes", &failures(false))?;
        result.serialize_field("FailedAndUnresolvableNodes", &failures(true))?;
        result.serialize_field("Error", &self.error)?;
        result.end()
    }
}

/// Node names as a JSON array.
struct Names<'a, N>(&'a [N]);

impl<N: AsRef<str>> Serialize for Names<'_, N> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(AsRef::as_ref))
    }
}

/// The failed nodes that preemption may help, or those it cannot, as a JSON object of node
/// name → reason.
struct Failures<'a, N> {
    decision: &'a FilterDecision<N>,
    unresolvable: bool,
}

impl<N: AsRef<str>> Serialize for Failures<'_, N> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(
            self.decision
                .failed()
                .filter(|(_, rejection)| rejection.unresolvable == self.unresolvable)
                .map(|(node, rejection)| (node, rejection.reason.as_str())),
        )
    }
}
