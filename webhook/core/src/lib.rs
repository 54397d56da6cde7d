//! Pure policy for jellyfin-ha.
//!
//! Everything here is a function of its inputs: no Kubernetes client, no async runtime, no
//! sockets. The binary in `webhook/server` translates wire types into these inputs and performs
//! whatever side effect a decision calls for.

pub mod annotations;
pub mod busyness;
pub mod config;
pub mod doctor;
pub mod extender;
pub mod fencing;
pub mod json_text;
pub mod object;
pub mod pod_patch;
pub mod pod_template;
pub mod record;
pub mod scheduling;
pub mod taints;

pub use config::Policy;
pub use object::{PatchedObject, mutate_manifest, mutate_object, mutate_pod};
pub use pod_template::{Change, MutationError};
