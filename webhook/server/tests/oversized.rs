//! An oversized request over a real TLS socket: the client reads the 413, even while it is
//! still sending, instead of a reset connection; and the connection stays usable afterwards.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use jellyfin_ha::metrics::Metrics;
use jellyfin_ha::serve::serve_tls;
use jellyfin_ha::webhook::{MAX_REVIEW_BYTES, WebhookState, router};
use jellyfin_ha_certs::generate;
use jellyfin_ha_core::Policy;
use support::{POD_CREATE, connect};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A webhook over TLS on loopback; the address and the CA to trust.
async fn webhook() -> (std::net::SocketAddr, String, CancellationToken) {
    let generated = generate(&["localhost".into()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    support::write_certs(dir.path(), &generated);
    let certs =
        jellyfin_ha_certs::CertFiles::load(dir.path().join("tls.crt"), dir.path().join("tls.key"))
            .unwrap();
    let tls = Arc::new(certs.server_config().unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = router(WebhookState {
        policy: Arc::new(ArcSwap::from_pointee(Policy::default())),
        metrics: Arc::new(Metrics::default()),
    });
    let shutdown = CancellationToken::new();
    tokio::spawn(serve_tls(
        listener,
        tls,
        app,
        shutdown.clone(),
        Duration::from_secs(5),
    ));
    (addr, generated.ca_pem, shutdown)
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
async fn the_client_reads_the_413_while_still_sending(#[case] announced: bool) {
    let (addr, ca, _shutdown) = webhook().await;
    let config = Arc::new(jellyfin_ha_certs::client_config(&ca, &[b"http/1.1"]).unwrap());
    let stream = connect(addr, config).await.unwrap();
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
