//! The fencer's pure decisions: which silent node to suspect, whether it may be fenced at all,
//! what a fence device's answer proves, and when a fenced node may be given back.
//!
//! The server's path: watch Nodes and their heartbeat Leases into [`NodeFacts`], call
//! [`plan`] on every tick, run a [`proof::Proof`] against the node's fence agent for each
//! [`Decision::Prove`], [`still_silent`] at every step of it and before a power-off,
//! [`confirm`] before the taint, and write the [`record::FenceRecord`] with
//! the out-of-service taint so that the state survives restarts in the cluster itself.

pub mod config;
pub mod decide;
pub mod power;
pub mod proof;
pub mod record;

pub use config::{AgentConfig, AgentKind, FencerPolicy};
pub use decide::{
    Decision, NodeFacts, Plan, Refusal, RenewalClock, cap, confirm, plan, recovery, silent_share,
    still_leads, still_silent,
};
pub use power::PowerState;
pub use proof::{PowerOffLeave, Proof, ProofStep, Reading};
pub use record::{FenceRecord, FencingMark};
