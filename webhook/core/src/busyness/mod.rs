//! iGPU busyness and health as the node agent measures them: DRM fdinfo parsing
//! ([`fdinfo`]), busy ratios over an interval ([`sample`]), pod attribution ([`cgroup`]), the
//! report it publishes ([`report`]) and when it publishes it ([`publish`]).

pub mod cgroup;
pub mod fdinfo;
pub mod publish;
pub mod report;
pub mod sample;

pub use report::{AgentReport, CardReport, PodBusyness};
pub use sample::{IntervalBusyness, Sampler, SeenClient};
