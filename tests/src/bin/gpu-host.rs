//! A synthetic host whose one iGPU client keeps the render engine busy, for the node agent
//! where no Intel GPU exists (the demo).
//!
//! `gpu-host DIR BUSY`: lays out `/proc`, `/sys` and `/dev` under DIR as the kernel does, prints
//! the agent's flags that point at them on one line, and keeps the render engine BUSY (0 to 1)
//! busy until it is killed.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use jellyfin_ha::agent::synthetic::{SyntheticCard, SyntheticHost, i915_fdinfo};

const PDEV: &str = "0000:00:02.0";
/// A transcoder that is not one of jellyfin-ha's pods: only the agent sees its load.
const PID: u32 = 4242;
const RENDER_GID: u32 = 993;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: gpu-host DIR BUSY (0 to 1)";
    let dir = PathBuf::from(args.next().context(usage)?);
    let busy: f64 = args.next().context(usage)?.parse().context(usage)?;
    anyhow::ensure!((0.0..=1.0).contains(&busy), "{usage}");
    let host = SyntheticHost::create(&dir)?;
    host.add_card(&SyntheticCard {
        index: 0,
        pci_address: PDEV,
        driver: "i915",
        device_node: true,
    })?;
    // The render group systemd-sysusers gives hosts of this decade (Debian 13, Ubuntu 24.04+).
    // Only root may give a file away; elsewhere the render node keeps the caller's group.
    let render_node = host.dev_root().join("dri/renderD128");
    if let Err(e) = std::os::unix::fs::chown(&render_node, None, Some(RENDER_GID)) {
        eprintln!("render node keeps its group (chown to {RENDER_GID}: {e})");
    }
    host.add_process(PID, None)?;
    let flags: Vec<String> = host
        .agent_args()
        .iter()
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect();
    println!("{}", flags.join(" "));
    let started = Instant::now();
    loop {
        let busy_ns = (started.elapsed().as_nanos() as f64 * busy) as u64;
        let fdinfo = i915_fdinfo(1, PDEV, &[("render", busy_ns), ("video", 0)], &[]);
        host.add_fd(PID, 3, "/dev/dri/renderD128", &fdinfo)?;
        std::thread::sleep(Duration::from_millis(100));
    }
}
