//! The plain-HTTP admin port: liveness, readiness and metrics. Kept out of the request trace
//! so probes do not drown the logs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::Metrics;

#[derive(Clone)]
pub struct AdminState {
    /// True once certificates are loaded and the servers listen; false again on shutdown.
    pub ready: Arc<AtomicBool>,
    pub metrics: Arc<Metrics>,
}

/// A condition that keeps `/readyz` false, after start-up, while it returns why.
pub type ReadyCheck = Arc<dyn Fn() -> Option<String> + Send + Sync>;

pub fn router(state: AdminState) -> Router {
    router_with_checks(state, Vec::new())
}

/// The admin routes, with `/readyz` also false while one of `checks` says why.
pub fn router_with_checks(state: AdminState, checks: Vec<ReadyCheck>) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(Admin {
            state,
            checks: checks.into(),
        })
}

#[derive(Clone)]
struct Admin {
    state: AdminState,
    checks: Arc<[ReadyCheck]>,
}

async fn readyz(State(admin): State<Admin>) -> impl IntoResponse {
    if !admin.state.ready.load(Ordering::Acquire) {
        return (StatusCode::SERVICE_UNAVAILABLE, "not ready".to_string());
    }
    match admin.checks.iter().find_map(|check| check()) {
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
        None => (StatusCode::OK, "ok".to_string()),
    }
}

async fn metrics(State(Admin { state, .. }): State<Admin>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}
