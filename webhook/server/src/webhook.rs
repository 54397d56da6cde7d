//! The HTTPS admission endpoint.

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use jellyfin_ha_core::Policy;

use crate::admission::{self, ReviewOutcome};
use crate::body::{Limited, json_text};
use crate::metrics::{ChangeLabels, Metrics, ReviewLabels};

/// Larger than any review kube-apiserver sends (objects are capped at 1.5 MiB by etcd, and a
/// review carries at most the object and its old version); larger bodies get 413.
pub const MAX_REVIEW_BYTES: usize = 4 * 1024 * 1024;

#[derive(Clone)]
pub struct WebhookState {
    /// Swapped whole when the scheduling ConfigMap changes ([`crate::scheduling`]).
    pub policy: Arc<ArcSwap<Policy>>,
    pub metrics: Arc<Metrics>,
}

/// The webhook role's runtime: one thread. A review is microseconds of work over a few
/// apiserver connections, and the multi-thread runtime's wake-ups between workers cost more
/// per review than the review does (README, Speed).
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

pub fn router(state: WebhookState) -> Router {
    Router::new()
        .route("/mutate", post(mutate))
        .with_state(state)
}

/// Reviews larger than this are answered on the blocking pool. The role runs on one thread,
/// and reading a workload of megabytes takes milliseconds that every other review, handshake
/// and probe would wait for; a Pod's review is a few kilobytes.
const INLINE_REVIEW_BYTES: usize = 64 * 1024;

async fn mutate(
    State(state): State<WebhookState>,
    Limited(body): Limited<MAX_REVIEW_BYTES>,
) -> Response {
    let answer = if body.len() <= INLINE_REVIEW_BYTES {
        answer(&state, &body)
    } else {
        match tokio::task::spawn_blocking(move || answer(&state, &body)).await {
            Ok(answer) => answer,
            // Only a panic, which the lints rule out, or a runtime shutting down before the
            // task ran ends here. The apiserver then applies the webhook's failurePolicy.
            Err(e) => {
                tracing::error!(error = %e, "the review was not answered");
                return (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response();
            }
        }
    };
    json_text(answer)
}

/// Answers one review: the AdmissionReview as JSON text, logged and counted.
fn answer(state: &WebhookState, body: &[u8]) -> Vec<u8> {
    let started = Instant::now();
    let reviewed = admission::review(body, &state.policy.load());
    let answer = reviewed.review.to_json();
    let summary = &reviewed.summary;
    let span = tracing::info_span!(
        "admission",
        uid = %summary.uid,
        kind = %summary.kind,
        operation = %summary.operation,
        namespace = %summary.namespace,
        name = %summary.name,
        allowed = reviewed.review.response.allowed,
        mutated = reviewed.outcome == ReviewOutcome::Mutated,
    );
    span.in_scope(|| match reviewed.outcome {
        ReviewOutcome::Mutated => {
            let (changes, warnings) = (&reviewed.changes, &reviewed.review.response.warnings);
            tracing::info!(?changes, ?warnings, "mutated")
        }
        ReviewOutcome::Unchanged => tracing::debug!("unchanged"),
        ReviewOutcome::Denied | ReviewOutcome::Invalid => {
            let message = reviewed
                .review
                .response
                .status
                .as_ref()
                .map(|s| s.message.as_str())
                .unwrap_or_default();
            tracing::warn!(outcome = reviewed.outcome.as_str(), message, "rejected");
        }
    });
    state
        .metrics
        .reviews
        .get_or_create(&ReviewLabels {
            kind: bounded_label(&summary.kind, &["Pod", "Deployment", "StatefulSet"]),
            operation: bounded_label(
                &summary.operation,
                &["CREATE", "UPDATE", "DELETE", "CONNECT"],
            ),
            outcome: reviewed.outcome.as_str(),
        })
        .inc();
    for &change in &reviewed.changes {
        let labels = ChangeLabels { change };
        state.metrics.review_changes.get_or_create(&labels).inc();
    }
    state
        .metrics
        .review_seconds
        .observe(started.elapsed().as_secs_f64());
    answer
}

/// A label value from the request body, limited to the values we expect: whoever can reach the
/// port must not be able to create unbounded metric series.
fn bounded_label(value: &str, known: &[&'static str]) -> &'static str {
    known.iter().find(|k| **k == value).unwrap_or(&"other")
}
