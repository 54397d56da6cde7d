//! The fencer role: proves silent nodes off through their fence devices, taints them
//! out-of-service so their volumes move at once, and gives them back after a power cycle.

pub mod agent;
pub mod http;
pub mod program;
pub mod proxmox;
pub mod redfish;
