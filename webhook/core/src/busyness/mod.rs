//! iGPU busyness and health as the node agent measures them: DRM fdinfo parsing, busy-ratio
//! arithmetic, pod attribution, and the report it publishes.

pub mod report;

pub use report::{AgentReport, CardReport, PodBusyness};
