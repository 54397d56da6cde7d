//! Webhook figures, printed as `BENCH <name> <value> <unit>`:
//!
//! - `webhook_throughput_ratio_vs_floor`: reviews/s of the real `jellyfin-ha webhook` binary
//!   divided by reviews/s of a no-op handler behind the same accept loop and TLS config, same
//!   run, 4 keep-alive HTTP/1.1 connections;
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
const MEASURE: Duration = Duration::from_secs(5);
const NEW_CONNECTION_REQUESTS: usize = 500;

fn main() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    if let Ok(dir) = std::env::var("JFHA_BENCH_NOOP") {
        return runtime.block_on(serve_noop(Path::new(&dir)));
    }
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

struct Load {
    per_second: f64,
    latencies: Vec<Duration>,
}

/// `CONNECTIONS` keep-alive connections sending reviews back to back.
async fn keep_alive_load(addr: SocketAddr, tls: &Arc<ClientConfig>) -> Load {
    let mut tasks = Vec::new();
    for _ in 0..CONNECTIONS {
        let mut sender = open(addr, tls).await;
        tasks.push(tokio::spawn(async move {
            let warm_until = Instant::now() + WARMUP;
            while Instant::now() < warm_until {
                one_review(&mut sender).await;
            }
            let mut latencies = Vec::new();
            let until = Instant::now() + MEASURE;
            while Instant::now() < until {
                let started = Instant::now();
                one_review(&mut sender).await;
                latencies.push(started.elapsed());
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    Load {
        per_second: latencies.len() as f64 / MEASURE.as_secs_f64(),
        latencies,
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
    let floor = keep_alive_load(noop.addr, &tls).await;
    drop(noop);

    let real = start_real(dir.path()).await;
    let mut load = keep_alive_load(real.addr, &tls).await;
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
        load.per_second
    );
    println!(
        "BENCH webhook_floor_reviews_per_second_c4 {:.0} reviews/s",
        floor.per_second
    );
    println!(
        "BENCH webhook_throughput_ratio_vs_floor {:.3} ratio",
        load.per_second / floor.per_second
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
