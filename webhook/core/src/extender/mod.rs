//! The scheduler extender: the wire protocol, the cluster state it decides over, its policy,
//! and the filter and prioritize decisions.
//!
//! The server's path for one call: parse [`wire::ExtenderArgs`], take its candidate names,
//! call [`decide::filter`] or [`decide::prioritize`] over the current [`snapshot::Snapshot`],
//! and turn the answer back into a wire type.

pub mod decide;
pub mod freshness;
pub mod policy;
pub mod snapshot;
pub mod wire;

pub use decide::{
    Evaluation, FilterDecision, NodeVerdict, Reason, RejectedNodes, Rejection, ScoreParts, explain,
    filter, prioritize,
};
pub use freshness::{Staleness, WatchHeard, staleness};
pub use policy::ExtenderPolicy;
pub use snapshot::Snapshot;
