//! The node agent's cost on a busy host, printed as `BENCH <name> <value> <unit>`: the real
//! binary sampling a synthetic tree of 500 processes with 5000 fds (48 of them DRM fds of 24
//! clients, the rest files, sockets, pipes and eventfds, as on a host running a few transcodes).
//!
//! - `agent_cpu_per_sample`: CPU time of every thread of the agent per sample, in ms;
//! - `agent_cpu_share_at_2s`: that over the default 2 s interval, in % of one core;
//! - `agent_max_rss`: the agent's peak resident memory (VmHWM), in MiB.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::net::TcpListener;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use jellyfin_ha::agent::synthetic::{SyntheticCard, SyntheticHost, i915_fdinfo};

const PROCESSES: u32 = 500;
const FDS_PER_PROCESS: u32 = 10;
const DRM_PROCESSES: u32 = 24;
const RUN: Duration = Duration::from_secs(10);
const INTERVAL_MS: u64 = 200;
const DEFAULT_INTERVAL_MS: f64 = 2000.0;

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn build(host: &SyntheticHost) {
    host.add_card(&SyntheticCard {
        index: 0,
        pci_address: "0000:00:02.0",
        driver: "i915",
        device_node: true,
    })
    .unwrap();
    let others = [
        "/dev/null",
        "socket:[40213]",
        "pipe:[88120]",
        "anon_inode:[eventfd]",
        "/var/lib/jellyfin/data/jellyfin.db",
    ];
    for pid in 1..=PROCESSES {
        let uid = format!("aaaaaaaa-0000-4000-8000-{pid:012}");
        host.add_process(pid, Some(&uid)).unwrap();
        for fd in 0..FDS_PER_PROCESS {
            let drm = pid <= DRM_PROCESSES && fd >= FDS_PER_PROCESS - 2;
            if drm {
                let text = i915_fdinfo(
                    u64::from(pid),
                    "0000:00:02.0",
                    &[
                        ("render", 1_000_000),
                        ("copy", 0),
                        ("video", 5_000_000),
                        ("video-enhance", 0),
                    ],
                    &[("video", 2)],
                );
                host.add_fd(pid, fd, "/dev/dri/renderD128", &text).unwrap();
            } else {
                let target = others[(fd as usize) % others.len()];
                host.add_fd(
                    pid,
                    fd,
                    target,
                    "pos:\t0\nflags:\t02\nmnt_id:\t15\nino:\t1057\n",
                )
                .unwrap();
            }
        }
    }
}

/// Nanoseconds on CPU of every thread of `pid`.
fn cpu_ns(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|text| text.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| {
            line.strip_prefix(field)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap()
}

fn samples(admin: &str) -> Option<u64> {
    let output = Command::new("curl")
        .args(["-sf", &format!("http://{admin}/metrics")])
        .output()
        .ok()?;
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| {
            line.strip_prefix("jellyfin_ha_agent_sample_duration_seconds_count ")?
                .trim()
                .parse()
                .ok()
        })
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let host = SyntheticHost::create(dir.path()).unwrap();
    build(&host);
    let admin = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let agent = Agent(
        Command::new(env!("CARGO_BIN_EXE_jellyfin-ha"))
            .args(["agent", "--node", "bench", "--publish", "none"])
            .args([
                "--interval",
                &format!("{INTERVAL_MS}ms"),
                "--admin-listen",
                &admin,
            ])
            .args(host.agent_args())
            .env("RUST_LOG", "warn")
            .spawn()
            .unwrap(),
    );
    let pid = agent.0.id();
    let deadline = Instant::now() + Duration::from_secs(10);
    let first = loop {
        if let Some(n) = samples(&admin).filter(|n| *n > 0) {
            break n;
        }
        assert!(Instant::now() < deadline, "the agent never sampled");
        std::thread::sleep(Duration::from_millis(20));
    };
    let (cpu_before, samples_before) = (cpu_ns(pid), first);
    std::thread::sleep(RUN);
    let (cpu_after, samples_after) = (cpu_ns(pid), samples(&admin).unwrap());
    let taken = samples_after - samples_before;
    assert!(taken > 0, "no samples in {RUN:?}");
    // The scrapes cost the agent a little too; they are counted in, against it.
    let per_sample_ms = (cpu_after - cpu_before) as f64 / taken as f64 / 1e6;
    println!("BENCH agent_cpu_per_sample {per_sample_ms:.3} ms");
    println!(
        "BENCH agent_cpu_share_at_2s {:.3} %",
        per_sample_ms / DEFAULT_INTERVAL_MS * 100.0
    );
    println!(
        "BENCH agent_max_rss {:.1} MiB",
        status_kib(pid, "VmHWM:") as f64 / 1024.0
    );
    println!("BENCH agent_samples {taken} samples");
}
