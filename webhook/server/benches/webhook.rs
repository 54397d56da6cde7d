//! Webhook figures, printed as `BENCH <name> <value> <unit>`:
//!
//! - `webhook_throughput_ratio_vs_floor`: reviews/s of the real `jellyfin-ha webhook` binary
//!   divided by reviews/s of a no-op handler behind the same accept loop and TLS config, at 4
//!   keep-alive HTTP/1.1 connections: the median over rounds that each measure the floor and
//!   the webhook for a second, in turn first (the floor in four of seven), so that a machine
//!   whose speed drifts (a shared VM) moves both sides of each ratio alike; `_min` and `_max`
//!   give the spread;
//! - `webhook_server_cpu_us_per_review` and `webhook_floor_server_cpu_us_per_review`: CPU time
//!   (user and system, from `/proc`) each server spent per review under that load;
//! - `webhook_p99_ms_c4`: p99 latency of the real webhook at those 4 connections;
//! - `webhook_first_request_p99_ms`: p99 of handshake + one review on a new TLS connection;
//! - `webhook_rss_mib`: the real webhook's peak resident memory under that load;
//! - `webhook_handler_us_per_review`: median over rounds of the time per review through the
//!   webhook's router in process (review parse, mutation, patch, response), without TLS or
//!   sockets: the handler's own CPU cost.
//!
//! The real webhook runs with `--scheduling extender` (pods get the scheduling marker, as under
//! the shipped extender configuration), so it needs no API server.
//!
//! The bench runs the no-op server by re-executing itself with `JFHA_BENCH_NOOP`, under the
//! same allocator as the real one. `JFHA_BENCH_WEBHOOK_BIN` measures another build of the
//! binary in place of this one's.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use axum::routing::post;
use axum::{Json, Router};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use jellyfin_ha::metrics::Metrics;
use jellyfin_ha::webhook::WebhookState;
use jellyfin_ha_certs::{CertFiles, client_config, generate};
use jellyfin_ha_core::Policy;
use jellyfin_ha_core::scheduling::Scheduling;
use rustls::ClientConfig;
use serde_json::json;
use support::{connect, free_port, review_request, write_certs};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

// The floor allocates as the real binary does (`src/main.rs`), so that the ratio is the
// handler's cost alone.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CONNECTIONS: usize = 4;
const WARMUP: Duration = Duration::from_secs(1);
const ROUNDS: usize = 7;
const ROUND: Duration = Duration::from_secs(1);
const NEW_CONNECTION_REQUESTS: usize = 500;

fn main() {
    if let Ok(dir) = std::env::var("JFHA_BENCH_NOOP") {
        // The webhook role's own runtime, so that the ratio is the handler's cost alone.
        let runtime = jellyfin_ha::webhook::runtime().unwrap();
        return runtime.block_on(serve_noop(Path::new(&dir)));
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // `cargo bench` passes --bench; any other argument is a filter we do not support.
    runtime.block_on(run());
}

/// The floor: the same accept loop and TLS config, a handler that only reads the body.
async fn serve_noop(dir: &Path) {
    let certs = CertFiles::load(dir.join("tls.crt"), dir.join("tls.key")).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    println!("{}", listener.local_addr().unwrap().port());
    let reply = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": {"uid": "", "allowed": true}});
    let app = Router::new().route(
        "/mutate",
        post(move |_body: Bytes| async move { Json(reply) }),
    );
    let tls = Arc::new(certs.server_config().unwrap());
    jellyfin_ha::serve::serve_tls(
        listener,
        tls,
        app,
        CancellationToken::new(),
        Duration::from_secs(1),
    )
    .await;
}

struct Child {
    process: tokio::process::Child,
    addr: SocketAddr,
}

impl Child {
    /// User and system CPU the process has used so far.
    fn cpu_seconds(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.process.id().unwrap())).unwrap();
        // utime and stime, the 14th and 15th fields; the command before them may hold spaces.
        let after_command = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = after_command.split_whitespace().collect();
        let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
        // The kernel's USER_HZ is 100 on every Linux this runs on.
        ticks / 100.0
    }

    fn peak_rss_mib(&self) -> f64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.process.id().unwrap()))
                .unwrap();
        let kib: f64 = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap()
            .parse()
            .unwrap();
        kib / 1024.0
    }
}

async fn wait_for_port(port: u16) {
    for _ in 0..200 {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("server on port {port} did not start");
}

async fn start_real(dir: &Path) -> Child {
    let port = free_port();
    let admin = free_port();
    // Another build of the binary (an older commit, the static image's) can be measured in its
    // place.
    let binary = std::env::var_os("JFHA_BENCH_WEBHOOK_BIN")
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_jellyfin-ha").into());
    let process = tokio::process::Command::new(binary)
        .args([
            "webhook",
            "--scheduling",
            "extender",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--admin-listen",
            &format!("127.0.0.1:{admin}"),
        ])
        .arg("--tls-cert")
        .arg(dir.join("tls.crt"))
        .arg("--tls-key")
        .arg(dir.join("tls.key"))
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_for_port(port).await;
    Child {
        process,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
    }
}

async fn start_noop(dir: &Path) -> Child {
    let mut process = tokio::process::Command::new(std::env::current_exe().unwrap())
        .env("JFHA_BENCH_NOOP", dir)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = process.stdout.take().unwrap();
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while tokio::io::AsyncReadExt::read(&mut stdout, &mut byte)
        .await
        .unwrap()
        == 1
        && byte[0] != b'\n'
    {
        line.push(byte[0]);
    }
    let port: u16 = String::from_utf8(line).unwrap().trim().parse().unwrap();
    Child {
        process,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn open(addr: SocketAddr, tls: &Arc<ClientConfig>) -> Sender {
    let stream = connect(addr, Arc::clone(tls)).await.unwrap();
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    sender
}

async fn one_review(sender: &mut Sender) {
    let response = sender.send_request(review_request()).await.unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert!(
        body.starts_with(b"{\"apiVersion\""),
        "{}",
        String::from_utf8_lossy(&body)
    );
}

/// Keep-alive connections to one server.
struct Connections(Vec<Sender>);

impl Connections {
    async fn open(addr: SocketAddr, tls: &Arc<ClientConfig>) -> Self {
        let mut senders = Vec::with_capacity(CONNECTIONS);
        for _ in 0..CONNECTIONS {
            senders.push(open(addr, tls).await);
        }
        Self(senders)
    }

    /// Every connection sends reviews back to back for `length`; the latency of each.
    async fn load(&mut self, length: Duration) -> Vec<Duration> {
        let until = Instant::now() + length;
        let tasks = self.0.drain(..).map(|mut sender| {
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while Instant::now() < until {
                    let started = Instant::now();
                    one_review(&mut sender).await;
                    latencies.push(started.elapsed());
                }
                (sender, latencies)
            })
        });
        let mut latencies = Vec::new();
        for task in tasks.collect::<Vec<_>>() {
            let (sender, measured) = task.await.unwrap();
            self.0.push(sender);
            latencies.extend(measured);
        }
        latencies
    }
}

/// What one server did over the measured rounds.
#[derive(Default)]
struct Load {
    reviews: usize,
    cpu_seconds: f64,
    latencies: Vec<Duration>,
}

impl Load {
    /// One round: `ROUND` of load, and the server's CPU over it.
    async fn round(&mut self, server: &Child, connections: &mut Connections) -> f64 {
        let cpu_before = server.cpu_seconds();
        let latencies = connections.load(ROUND).await;
        self.cpu_seconds += server.cpu_seconds() - cpu_before;
        self.reviews += latencies.len();
        let per_second = latencies.len() as f64 / ROUND.as_secs_f64();
        self.latencies.extend(latencies);
        per_second
    }

    fn per_second(&self) -> f64 {
        self.reviews as f64 / (ROUNDS as f64 * ROUND.as_secs_f64())
    }

    fn cpu_us_per_review(&self) -> f64 {
        self.cpu_seconds * 1e6 / self.reviews as f64
    }
}

fn p99_ms(latencies: &mut [Duration]) -> f64 {
    latencies.sort();
    let index = ((latencies.len() as f64) * 0.99).ceil() as usize - 1;
    latencies[index.min(latencies.len() - 1)].as_secs_f64() * 1000.0
}

const HANDLER_ROUNDS: usize = 7;
const HANDLER_REVIEWS_PER_ROUND: usize = 2000;

/// Microseconds per review through the webhook's router in process, median of the rounds.
async fn handler_us_per_review() -> f64 {
    let policy = Policy {
        scheduling: Scheduling::Extender,
        ..Policy::default()
    };
    let app = jellyfin_ha::webhook::router(WebhookState {
        policy: Arc::new(ArcSwap::from_pointee(policy)),
        metrics: Arc::new(Metrics::default()),
    });
    let mut rounds = Vec::with_capacity(HANDLER_ROUNDS);
    for round in 0..=HANDLER_ROUNDS {
        let started = Instant::now();
        for _ in 0..HANDLER_REVIEWS_PER_ROUND {
            let response = app.clone().oneshot(review_request()).await.unwrap();
            assert_eq!(response.status(), 200);
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert!(body.windows(7).any(|w| w == b"\"patch\""));
        }
        // The first round warms caches and the allocator.
        if round > 0 {
            rounds.push(started.elapsed().as_secs_f64() * 1e6 / HANDLER_REVIEWS_PER_ROUND as f64);
        }
    }
    rounds.sort_by(f64::total_cmp);
    rounds[rounds.len() / 2]
}

async fn run() {
    let handler_us = handler_us_per_review().await;
    let dir = tempfile::tempdir().unwrap();
    let generated = generate(&["localhost".into()]).unwrap();
    write_certs(dir.path(), &generated);
    let tls = Arc::new(client_config(&generated.ca_pem, &[b"http/1.1"]).unwrap());

    let noop = start_noop(dir.path()).await;
    let real = start_real(dir.path()).await;
    let mut to_noop = Connections::open(noop.addr, &tls).await;
    let mut to_real = Connections::open(real.addr, &tls).await;
    to_noop.load(WARMUP).await;
    to_real.load(WARMUP).await;
    let (mut floor, mut load) = (Load::default(), Load::default());
    let mut ratios = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS {
        let (floor_per_second, per_second) = if round % 2 == 0 {
            let floor_per_second = floor.round(&noop, &mut to_noop).await;
            (floor_per_second, load.round(&real, &mut to_real).await)
        } else {
            let per_second = load.round(&real, &mut to_real).await;
            (floor.round(&noop, &mut to_noop).await, per_second)
        };
        ratios.push(per_second / floor_per_second);
    }
    ratios.sort_by(f64::total_cmp);
    drop((to_noop, to_real, noop));

    let mut first = Vec::with_capacity(NEW_CONNECTION_REQUESTS);
    for _ in 0..NEW_CONNECTION_REQUESTS {
        let started = Instant::now();
        let mut sender = open(real.addr, &tls).await;
        one_review(&mut sender).await;
        first.push(started.elapsed());
    }
    let rss = real.peak_rss_mib();

    println!(
        "BENCH webhook_reviews_per_second_c4 {:.0} reviews/s",
        load.per_second()
    );
    println!(
        "BENCH webhook_floor_reviews_per_second_c4 {:.0} reviews/s",
        floor.per_second()
    );
    let median = ratios[ROUNDS / 2];
    println!("BENCH webhook_throughput_ratio_vs_floor {median:.3} ratio");
    println!(
        "BENCH webhook_throughput_ratio_vs_floor_min {:.3} ratio",
        ratios[0]
    );
    println!(
        "BENCH webhook_throughput_ratio_vs_floor_max {:.3} ratio",
        ratios[ROUNDS - 1]
    );
    println!(
        "BENCH webhook_server_cpu_us_per_review {:.1} us",
        load.cpu_us_per_review()
    );
    println!(
        "BENCH webhook_floor_server_cpu_us_per_review {:.1} us",
        floor.cpu_us_per_review()
    );
    println!(
        "BENCH webhook_p99_ms_c4 {:.3} ms",
        p99_ms(&mut load.latencies)
    );
    println!(
        "BENCH webhook_first_request_p99_ms {:.3} ms",
        p99_ms(&mut first)
    );
    println!("BENCH webhook_rss_mib {rss:.1} MiB");
    println!("BENCH webhook_handler_us_per_review {handler_us:.1} us");
}
