//! The scheduler extender: the wire protocol, the cluster state it decides over, its policy,
//! and the filter and prioritize decisions.

pub mod wire;
