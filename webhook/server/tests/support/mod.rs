//! Helpers shared by the server's integration tests and its benchmarks (included there with
//! `#[path]`). Each target uses a different subset.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod pve;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use jellyfin_ha_certs::GeneratedCerts;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tower::ServiceExt;

/// An AdmissionReview of a Pod CREATE as kube-apiserver sends it.
pub const POD_CREATE: &str = include_str!("../fixtures/review-pod-create.json");

/// One request through `app` in process; the status and the body.
pub async fn oneshot(
    app: Router,
    method: Method,
    path: &str,
    body: impl Into<Body>,
) -> (StatusCode, Vec<u8>) {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json");
    let response = app
        .oneshot(request.body(body.into()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    (
        status,
        response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
}

/// Writes the serving certificate and key as `tls.crt` and `tls.key` in `dir`.
pub fn write_certs(dir: &Path, generated: &GeneratedCerts) {
    std::fs::write(dir.join("tls.crt"), &generated.cert_pem).unwrap();
    std::fs::write(dir.join("tls.key"), &generated.key_pem).unwrap();
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A TLS connection to `addr` for the name `localhost`, with TCP_NODELAY as a real client sets it.
pub async fn connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// `POST /mutate` with [`POD_CREATE`].
pub fn review_request() -> Request<Full<Bytes>> {
    Request::post("/mutate")
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(POD_CREATE.as_bytes())))
        .unwrap()
}
