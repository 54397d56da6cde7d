//! The HTTPS server on real sockets: TLS versions, ALPN, keep-alive, certificate reload,
//! shutdown, and the binary's SIGTERM handling.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jellyfin_ha::metrics::Metrics;
use jellyfin_ha::serve::serve_tls;
use jellyfin_ha::webhook::{MAX_REVIEW_BYTES, WebhookState, router};
use jellyfin_ha_certs::{CertFiles, generate};
use jellyfin_ha_core::Policy;
use rustls::ClientConfig;
use serde_json::Value;
use support::{POD_CREATE, connect, free_port, review_request, write_certs};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

struct Server {
    addr: SocketAddr,
    certs: Arc<CertFiles>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    dir: tempfile::TempDir,
    ca_pem: String,
}

async fn start() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let generated = generate(&["localhost".into(), "127.0.0.1".into()]).unwrap();
    write_certs(dir.path(), &generated);
    let certs = CertFiles::load(dir.path().join("tls.crt"), dir.path().join("tls.key")).unwrap();
    let tls = Arc::new(certs.server_config().unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = router(WebhookState {
        policy: Arc::new(ArcSwap::from_pointee(Policy::default())),
        metrics: Arc::new(Metrics::default()),
    });
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(serve_tls(
        listener,
        tls,
        app,
        shutdown.clone(),
        Duration::from_secs(5),
    ));
    Server {
        addr,
        certs,
        shutdown,
        task,
        dir,
        ca_pem: generated.ca_pem,
    }
}

fn client_config(ca_pem: &str, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    Arc::new(jellyfin_ha_certs::client_config(ca_pem, alpn).unwrap())
}

async fn allowed(response: hyper::Response<hyper::body::Incoming>) -> bool {
    assert_eq!(response.status(), 200);
    let body: Value =
        serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
    body["response"]["allowed"] == true
}

#[tokio::test]
async fn http1_keep_alive_serves_many_reviews_on_one_connection() {
    let server = start().await;
    let stream = connect(server.addr, client_config(&server.ca_pem, &[b"http/1.1"]))
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    for _ in 0..3 {
        assert!(allowed(sender.send_request(review_request()).await.unwrap()).await);
    }
}

#[tokio::test]
async fn h2_is_negotiated_by_alpn() {
    let server = start().await;
    let stream = connect(server.addr, client_config(&server.ca_pem, &[b"h2"]))
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    assert!(allowed(sender.send_request(review_request()).await.unwrap()).await);
}

/// A ClientHello at `version` (0x0302 is TLS 1.1, 0x0303 TLS 1.2) with everything an
/// ECDHE-ECDSA handshake needs, so that the version is the only thing that can differ.
fn client_hello(version: [u8; 2]) -> Vec<u8> {
    let extensions: Vec<u8> = [
        &[0x00, 0x0a, 0x00, 0x06, 0x00, 0x04, 0x00, 0x1d, 0x00, 0x17][..], // supported_groups: x25519, secp256r1
        &[0x00, 0x0b, 0x00, 0x02, 0x01, 0x00][..], // ec_point_formats: uncompressed
        &[0x00, 0x0d, 0x00, 0x04, 0x00, 0x02, 0x04, 0x03][..], // signature_algorithms: ecdsa_secp256r1_sha256
        &[0xff, 0x01, 0x00, 0x01, 0x00][..],                   // renegotiation_info
    ]
    .concat();
    let mut body = version.to_vec();
    body.extend([7u8; 32]); // random
    body.push(0); // no session id
    body.extend([0x00, 0x02, 0xc0, 0x2b]); // TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
    body.extend([0x01, 0x00]); // null compression
    body.extend((extensions.len() as u16).to_be_bytes());
    body.extend(extensions);
    let mut handshake = vec![0x01, 0x00];
    handshake.extend((body.len() as u16).to_be_bytes());
    handshake.extend(body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend((handshake.len() as u16).to_be_bytes());
    record.extend(handshake);
    record
}

async fn first_reply(addr: SocketAddr, hello: &[u8]) -> [u8; 7] {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(hello).await.unwrap();
    let mut reply = [0u8; 7];
    tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut reply))
        .await
        .unwrap()
        .unwrap();
    reply
}

#[tokio::test]
async fn tls_1_1_is_refused_with_a_protocol_version_alert() {
    let server = start().await;
    let control = first_reply(server.addr, &client_hello([0x03, 0x03])).await;
    assert_eq!(
        (control[0], control[5]),
        (0x16, 0x02),
        "the same hello at TLS 1.2 gets a ServerHello: {control:?}"
    );
    let reply = first_reply(server.addr, &client_hello([0x03, 0x02])).await;
    assert_eq!(reply[0], 0x15, "an alert record: {reply:?}");
    assert_eq!(&reply[5..], &[2, 70], "fatal protocol_version: {reply:?}");
}

#[tokio::test]
async fn reloaded_certificate_is_served_to_new_connections() {
    let server = start().await;
    let next = generate(&["localhost".into()]).unwrap();
    write_certs(server.dir.path(), &next);
    assert!(
        connect(server.addr, client_config(&next.ca_pem, &[]))
            .await
            .is_err(),
        "not reloaded yet"
    );
    assert!(server.certs.reload().unwrap());
    connect(server.addr, client_config(&next.ca_pem, &[]))
        .await
        .unwrap();
    assert!(
        connect(server.addr, client_config(&server.ca_pem, &[]))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn shutdown_closes_idle_keep_alive_connections_and_returns() {
    let server = start().await;
    let stream = connect(server.addr, client_config(&server.ca_pem, &[b"http/1.1"]))
        .await
        .unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let connection = tokio::spawn(connection);
    assert!(allowed(sender.send_request(review_request()).await.unwrap()).await);
    server.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(3), server.task)
        .await
        .expect("drained before the timeout")
        .unwrap();
    tokio::time::timeout(Duration::from_secs(3), connection)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        TcpStream::connect(server.addr).await.is_err(),
        "listener closed"
    );
}

/// Reads one HTTP/1.1 response (head and a Content-Length body) from `stream`.
async fn read_response(stream: &mut (impl AsyncReadExt + Unpin)) -> (String, Vec<u8>) {
    let mut buffer = Vec::new();
    let mut byte = [0u8; 1];
    while !buffer.ends_with(b"\r\n\r\n") {
        let read = stream
            .read(&mut byte)
            .await
            .expect("reading the response head");
        assert!(
            read == 1,
            "connection closed before the response: {buffer:?}"
        );
        buffer.push(byte[0]);
    }
    let head = String::from_utf8(buffer).unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(str::to_string)
        })
        .map_or(0, |v| v.trim().parse().unwrap());
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.unwrap();
    (head, body)
}

#[rstest::rstest]
#[case::announced(true)]
#[case::chunked(false)]
#[tokio::test]
/// An oversized review over a real socket: the client reads the 413 even while it is still
/// sending, instead of a reset connection, and the connection carries the next review.
async fn the_client_reads_the_413_while_still_sending(#[case] announced: bool) {
    let server = start().await;
    let stream = connect(server.addr, client_config(&server.ca_pem, &[b"http/1.1"]))
        .await
        .unwrap();
    let (mut reader, mut writer) = tokio::io::split(stream);

    let size = 3 * MAX_REVIEW_BYTES;
    let framing = if announced {
        format!("content-length: {size}")
    } else {
        "transfer-encoding: chunked".to_string()
    };
    let head = format!(
        "POST /mutate HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n{framing}\r\n\r\n"
    );
    writer.write_all(head.as_bytes()).await.unwrap();
    // Send slowly, as a client on a slow link does, and keep sending while the answer comes.
    let sending = tokio::spawn(async move {
        let chunk = vec![b' '; 64 * 1024];
        for _ in 0..size / chunk.len() {
            let framed = if announced {
                chunk.clone()
            } else {
                [
                    format!("{:x}\r\n", chunk.len()).into_bytes(),
                    chunk.clone(),
                    b"\r\n".to_vec(),
                ]
                .concat()
            };
            if writer.write_all(&framed).await.is_err() {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if !announced {
            writer.write_all(b"0\r\n\r\n").await.ok()?;
        }
        Some(writer)
    });

    let (head, _) = read_response(&mut reader).await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(
        !sending.is_finished(),
        "the answer came while the client was still sending"
    );

    // The rest of the body is read and dropped, so the connection carries the next request.
    let mut writer = sending
        .await
        .unwrap()
        .expect("the server kept reading the body");
    let review = format!(
        "POST /mutate HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{POD_CREATE}",
        POD_CREATE.len()
    );
    writer.write_all(review.as_bytes()).await.unwrap();
    let (head, body) = read_response(&mut reader).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let review: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(review["response"]["allowed"], true);
}

async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .ok()?;
    tokio::spawn(connection);
    let request = Request::get(path)
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .ok()?;
    let response = sender.send_request(request).await.ok()?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.ok()?.to_bytes();
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

#[tokio::test]
async fn binary_becomes_ready_and_exits_zero_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let generated = generate(&["localhost".into()]).unwrap();
    write_certs(dir.path(), &generated);
    let ca_pem = generated.ca_pem.clone();
    let (port, admin_port) = (free_port(), free_port());
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_jellyfin-ha"))
        .args([
            "webhook",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--admin-listen",
            &format!("127.0.0.1:{admin_port}"),
        ])
        .arg("--tls-cert")
        .arg(dir.path().join("tls.crt"))
        .arg("--tls-key")
        .arg(dir.path().join("tls.key"))
        // No cluster here: the scheduling is given, not read from the ConfigMap.
        .arg("--scheduling=none")
        .arg("--shutdown-delay-seconds=2")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut ready = None;
    for _ in 0..100 {
        ready = http_get(admin_port, "/readyz").await;
        if ready.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ready, Some((200, "ok".to_string())));
    assert_eq!(http_get(admin_port, "/livez").await.map(|r| r.0), Some(200));
    let (status, metrics) = http_get(admin_port, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    assert!(
        metrics.ends_with("# EOF\n"),
        "OpenMetrics text ends with # EOF: {metrics}"
    );

    let pid = child.id().unwrap().to_string();
    let killed = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(killed.success());
    // Unready at once, while a new connection is still served until the delay is over.
    let mut unready = None;
    for _ in 0..20 {
        unready = http_get(admin_port, "/readyz").await.map(|r| r.0);
        if unready == Some(503) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(unready, Some(503), "readiness turns false first");
    let config = Arc::new(jellyfin_ha_certs::client_config(&ca_pem, &[b"http/1.1"]).unwrap());
    let stream = connect(([127, 0, 0, 1], port).into(), config)
        .await
        .unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    assert!(allowed(sender.send_request(review_request()).await.unwrap()).await);
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn binary_refuses_to_start_with_an_invalid_config() {
    let dir = tempfile::tempdir().unwrap();
    write_certs(dir.path(), &generate(&["localhost".into()]).unwrap());
    std::fs::write(
        dir.path().join("config.yaml"),
        "gpu:\n  resourceName: i915\n",
    )
    .unwrap();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_jellyfin-ha"))
        .args([
            "webhook",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .arg("--tls-cert")
        .arg(dir.path().join("tls.crt"))
        .arg("--tls-key")
        .arg(dir.path().join("tls.key"))
        .arg("--config")
        .arg(dir.path().join("config.yaml"))
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("gpu.resourceName"), "{stderr}");
}
