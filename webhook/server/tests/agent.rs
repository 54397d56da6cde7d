//! `jellyfin-ha agent --publish none` against a synthetic /proc, /sys and /dev that this test
//! keeps updating: the busyness on /metrics is what the test's counters say.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use jellyfin_ha::agent::synthetic::{SyntheticCard, SyntheticHost, i915_fdinfo, xe_fdinfo};

const UID_A: &str = "aaaaaaaa-1111-4111-8111-000000000001";
const UID_B: &str = "bbbbbbbb-2222-4222-8222-000000000002";
const I915: &str = "0000:00:02.0";
const XE: &str = "0000:03:00.0";
const RENDER_GID: u32 = 993;

/// The agent, killed when the test ends however it ends.
struct Agent(std::process::Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn build_host(host: &SyntheticHost) {
    let cards = [
        SyntheticCard {
            index: 0,
            pci_address: I915,
            driver: "i915",
            device_node: true,
        },
        SyntheticCard {
            index: 1,
            pci_address: XE,
            driver: "xe",
            device_node: true,
        },
        SyntheticCard {
            index: 2,
            pci_address: "0000:04:00.0",
            driver: "i915",
            device_node: false,
        },
        SyntheticCard {
            index: 3,
            pci_address: "0000:05:00.0",
            driver: "nouveau",
            device_node: true,
        },
    ];
    for card in &cards {
        host.add_card(card).unwrap();
    }
    std::os::unix::fs::chown(
        host.dev_root().join("dri/renderD128"),
        None,
        Some(RENDER_GID),
    )
    .unwrap();
    // Pod A's transcoder holds client 1 twice and shares it with a helper process; pod B has
    // client 2; a host process runs an xe client; other fds are what every process has.
    host.add_process(100, Some(UID_A)).unwrap();
    host.add_fd(100, 0, "/dev/null", "pos:\t0\nflags:\t0100002\n")
        .unwrap();
    host.add_fd(
        100,
        1,
        "anon_inode:[eventfd]",
        "pos:\t0\neventfd-count:\t0\n",
    )
    .unwrap();
    host.add_fd(100, 2, "socket:[40213]", "pos:\t0\n").unwrap();
    host.add_process(101, Some(UID_B)).unwrap();
    host.add_process(102, None).unwrap();
    host.add_process(103, Some(UID_A)).unwrap();
    // A process whose fdinfo cannot be read, and one that exits between listing and reading.
    host.add_process(104, None).unwrap();
    host.add_fd(104, 3, "/dev/dri/renderD128", "").unwrap();
    let unreadable = host.proc_root().join("104/fdinfo/3");
    std::fs::remove_file(&unreadable).unwrap();
    std::fs::create_dir(&unreadable).unwrap();
    host.add_process(105, None).unwrap();
    host.add_fd(105, 3, "/dev/dri/renderD128 (deleted)", "")
        .unwrap();
    std::fs::remove_file(host.proc_root().join("105/fdinfo/3")).unwrap();
}

/// Busy rates the writer turns into counters, per phase.
struct Rates {
    client1_render: f64,
    client1_video: f64,
    client2_render: f64,
}

const PHASES: [Rates; 2] = [
    Rates {
        client1_render: 0.3,
        client1_video: 0.8,
        client2_render: 0.2,
    },
    Rates {
        client1_render: 0.9,
        client1_video: 0.0,
        client2_render: 0.0,
    },
];

/// Advances every client's counters every few milliseconds at the current phase's rates, as
/// the kernel would.
fn write_counters(host: SyntheticHost, phase: Arc<AtomicU8>, stop: Arc<AtomicBool>) {
    let (mut render1, mut video1, mut render2) = (0.0, 0.0, 0.0);
    let (mut xe_total, mut xe_vcs) = (0u64, 0u64);
    let mut last = Instant::now();
    let mut first = true;
    let mut pod_b_exited = false;
    while !stop.load(Ordering::Relaxed) {
        let phase = usize::from(phase.load(Ordering::Relaxed));
        let rates = &PHASES[phase];
        let now = Instant::now();
        let dt = now.duration_since(last).as_nanos() as f64;
        last = now;
        render1 += rates.client1_render * dt;
        // Two video engines: 0.8 of wall time is 0.4 of the class.
        video1 += rates.client1_video * dt;
        render2 += rates.client2_render * dt;
        xe_total += 19_200;
        xe_vcs += 4_800;
        let client1 = i915_fdinfo(
            1,
            I915,
            &[
                ("render", render1 as u64),
                ("copy", 0),
                ("video", video1 as u64),
                ("video-enhance", 0),
            ],
            &[("video", 2)],
        );
        let client2 = i915_fdinfo(2, I915, &[("render", render2 as u64)], &[]);
        let xe = xe_fdinfo(7, XE, &[("rcs", 0), ("vcs", xe_vcs)], xe_total);
        if first {
            host.add_fd(100, 3, "/dev/dri/renderD128", &client1)
                .unwrap();
            host.add_fd(100, 4, "/dev/dri/renderD128", &client1)
                .unwrap();
            host.add_fd(103, 9, "/dev/dri/renderD128", &client1)
                .unwrap();
            host.add_fd(101, 5, "/dev/dri/renderD128", &client2)
                .unwrap();
            host.add_fd(102, 3, "/dev/dri/renderD129", &xe).unwrap();
            first = false;
        } else {
            for (pid, fd) in [(100, 3), (100, 4), (103, 9)] {
                let _ = host.set_fdinfo(pid, fd, &client1);
            }
            // Pod B's process exits in the second phase. Removed here, between two writes,
            // not by the test while a write to it may be under way.
            if phase > 0 && !pod_b_exited {
                host.remove_process(101).unwrap();
                pod_b_exited = true;
            }
            if !pod_b_exited {
                host.set_fdinfo(101, 5, &client2).unwrap();
            }
            host.set_fdinfo(102, 3, &xe).unwrap();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The value of the series of `name` whose labels include all of `labels`.
fn gauge(metrics: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix('{')?;
        let (set, value) = rest.split_once("} ")?;
        labels
            .iter()
            .all(|(k, v)| set.split(',').any(|pair| pair == format!("{k}=\"{v}\"")))
            .then(|| value.trim().parse().ok())?
    })
}

async fn metrics(admin: &str) -> String {
    let response = reqwest::get(format!("http://{admin}/metrics")).await;
    match response {
        Ok(response) => response.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Polls /metrics until `check` holds; panics with the last scrape after 15 s.
async fn until(admin: &str, what: &str, check: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = metrics(admin).await;
        if check(&text) {
            return text;
        }
        if Instant::now() > deadline {
            panic!("{what} never held; last /metrics:\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn near(value: Option<f64>, expected: f64) -> bool {
    value.is_some_and(|v| (v - expected).abs() <= 0.05)
}

#[tokio::test(flavor = "multi_thread")]
async fn busyness_on_metrics_follows_the_host_tree() {
    let dir = tempfile::tempdir().unwrap();
    let host = SyntheticHost::create(dir.path()).unwrap();
    build_host(&host);
    let phase = Arc::new(AtomicU8::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (host, phase, stop) = (host.clone(), Arc::clone(&phase), Arc::clone(&stop));
        std::thread::spawn(move || write_counters(host, phase, stop))
    };
    let admin = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    };
    let _agent = Agent(
        std::process::Command::new(env!("CARGO_BIN_EXE_jellyfin-ha"))
            .args([
                "agent",
                "--node",
                "n1",
                "--publish",
                "none",
                "--interval",
                "500ms",
            ])
            .args(["--admin-listen", &admin])
            .args(host.agent_args())
            .spawn()
            .unwrap(),
    );

    let busy = "jellyfin_ha_gpu_engine_busy_ratio";
    let pod = "jellyfin_ha_gpu_pod_engine_busy_ratio";
    let card0 = |engine| [("node", "n1"), ("card", "card0"), ("engine", engine)];
    let text = until(&admin, "the first phase's busyness", |m| {
        near(gauge(m, busy, &card0("render")), 0.5)
            && near(gauge(m, busy, &card0("video")), 0.4)
            && near(
                gauge(m, busy, &[("card", "card1"), ("engine", "vcs")]),
                0.25,
            )
    })
    .await;
    // Every class each driver has, idle ones at 0.
    assert_eq!(gauge(&text, busy, &card0("compute")), Some(0.0));
    assert_eq!(
        gauge(&text, busy, &[("card", "card1"), ("engine", "rcs")]),
        Some(0.0)
    );
    // Client 1 counted once although three fds in two processes show it.
    assert!(
        near(
            gauge(&text, pod, &[("pod_uid", UID_A), ("engine", "render")]),
            0.3
        ),
        "{text}"
    );
    assert!(
        near(
            gauge(&text, pod, &[("pod_uid", UID_B), ("engine", "render")]),
            0.2
        ),
        "{text}"
    );
    // Health: the render nodes' group, and which cards can serve a transcode.
    let card = |name| [("node", "n1"), ("card", name)];
    assert_eq!(
        gauge(&text, "jellyfin_ha_gpu_render_group_id", &card("card0")),
        Some(f64::from(RENDER_GID))
    );
    assert_eq!(
        gauge(&text, "jellyfin_ha_gpu_usable", &card("card0")),
        Some(1.0)
    );
    assert_eq!(
        gauge(&text, "jellyfin_ha_gpu_usable", &card("card1")),
        Some(1.0)
    );
    assert_eq!(
        gauge(&text, "jellyfin_ha_gpu_usable", &card("card2")),
        Some(0.0),
        "no render node"
    );
    assert_eq!(
        gauge(&text, "jellyfin_ha_gpu_usable", &card("card3")),
        Some(0.0),
        "not i915 or xe"
    );
    let ready = reqwest::get(format!("http://{admin}/readyz"))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);

    // Pod B's process exits, client 1 changes its load, and card1's render node goes away.
    phase.store(1, Ordering::Relaxed);
    std::fs::remove_file(host.dev_root().join("dri/renderD129")).unwrap();
    let text = until(&admin, "the second phase's busyness", |m| {
        near(gauge(m, busy, &card0("render")), 0.9)
            && near(gauge(m, busy, &card0("video")), 0.0)
            && gauge(m, pod, &[("pod_uid", UID_B)]).is_none()
    })
    .await;
    assert!(
        near(
            gauge(&text, pod, &[("pod_uid", UID_A), ("engine", "render")]),
            0.9
        ),
        "{text}"
    );
    assert_eq!(
        gauge(&text, "jellyfin_ha_gpu_usable", &card("card1")),
        Some(0.0)
    );
    // Busyness needs only /proc: card1 still measures although its render node is gone.
    assert!(
        near(
            gauge(&text, busy, &[("card", "card1"), ("engine", "vcs")]),
            0.25
        ),
        "{text}"
    );

    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
}
