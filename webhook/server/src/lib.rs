//! The `jellyfin-ha` binary: translates between the wire and the pure policy in
//! `jellyfin-ha-core`, and performs the side effects its decisions call for.

pub mod admin;
pub mod admission;
pub mod agent;
pub mod body;
pub mod certificates;
pub mod cli;
pub mod config;
pub mod doctor;
pub mod explain;
pub mod extender;
pub mod fencer;
pub mod follow;
pub mod kubeconfig;
pub mod manifests;
pub mod metrics;
pub mod reflect;
pub mod scheduling;
pub mod serve;
pub mod shutdown;
pub mod webhook;
