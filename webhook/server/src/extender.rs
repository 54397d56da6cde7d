//! The HTTPS scheduler extender endpoints: `POST /filter` and `POST /prioritize`.
//!
//! A thin adapter: parse the wire call, read the current snapshot, run the core decision with
//! the system clock, write the wire answer. Nothing here decides.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use jellyfin_ha_core::extender::wire::{ExtenderArgs, ExtenderFilterResult, host_priorities_json};
use jellyfin_ha_core::extender::{self, ExtenderPolicy, Staleness};
use k8s_openapi::jiff::Timestamp;

use crate::admin::ReadyCheck;
use crate::body::{Limited, json_text};
use crate::metrics::{ExtenderCallLabels, Metrics, ReasonLabels, VerbLabels};
use crate::reflect::{SharedSnapshot, SyncState};

/// With `nodeCacheCapable: false` the scheduler sends every candidate Node in full, both to
/// filter and to prioritize: about 7 KB per kwok-sized node and more for real ones (images,
/// conditions), so ~34 MB at 5000 nodes. 64 MiB leaves room for fatter nodes while still
/// bounding what one request can make us buffer. With `nodeCacheCapable: true` (what the
/// shipped configuration uses) a call is the pod plus names: well under 1 MiB.
pub const MAX_EXTENDER_ARGS_BYTES: usize = 64 * 1024 * 1024;

#[derive(Clone)]
pub struct ExtenderState {
    pub snapshot: SharedSnapshot,
    pub synced: SyncState,
    pub policy: Arc<ExtenderPolicy>,
    pub metrics: Arc<Metrics>,
    /// The clock decisions are made at; [`Timestamp::now`] outside tests.
    pub now: fn() -> Timestamp,
}

impl ExtenderState {
    pub fn new(
        snapshot: SharedSnapshot,
        synced: SyncState,
        policy: Arc<ExtenderPolicy>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            snapshot,
            synced,
            policy,
            metrics,
            now: Timestamp::now,
        }
    }

    /// Why the view cannot be decided over at `now`, if it cannot.
    pub fn staleness(&self, now: Timestamp) -> Option<Staleness> {
        let watches = self.synced.watches();
        let snapshot = self.snapshot.read();
        extender::staleness(&watches, &snapshot, &self.policy, now)
    }

    /// Keeps `/readyz` false while the view is stale, so that a Service sends the scheduler
    /// to a replica whose view is not.
    pub fn ready_check(self) -> ReadyCheck {
        Arc::new(move || {
            let stale = self.staleness((self.now)())?;
            Some(CallError::Stale(stale).to_string())
        })
    }
}

pub fn router(state: ExtenderState) -> Router {
    Router::new()
        .route("/filter", post(filter))
        .route("/prioritize", post(prioritize))
        .with_state(state)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    Filter,
    Prioritize,
}

impl Verb {
    fn as_str(self) -> &'static str {
        match self {
            Self::Filter => "filter",
            Self::Prioritize => "prioritize",
        }
    }
}

/// Why a call could not be decided.
#[derive(Debug, thiserror::Error)]
enum CallError {
    #[error("cannot parse ExtenderArgs: {0}")]
    Invalid(serde_json::Error),
    #[error("the extender's caches are not synced yet")]
    NotSynced,
    #[error("the extender's view is stale: {0}")]
    Stale(Staleness),
    #[error("the decision task failed: {0}")]
    Task(tokio::task::JoinError),
}

impl CallError {
    fn outcome(&self) -> &'static str {
        match self {
            Self::Invalid(_) => "invalid",
            Self::NotSynced => "not_synced",
            Self::Stale(_) => "stale",
            Self::Task(_) => "error",
        }
    }
}

async fn filter(
    State(state): State<ExtenderState>,
    Limited(body): Limited<MAX_EXTENDER_ARGS_BYTES>,
) -> Response {
    let started = Instant::now();
    let result = decide(&state, Verb::Filter, body, |state, args, now| {
        let (pod, candidates, objects) = args.into_parts();
        let decision = {
            let snapshot = state.snapshot.read();
            extender::filter(&pod, candidates, &snapshot, &state.policy, now)
        };
        let mut failed = 0;
        for group in &decision.rejected {
            let nodes = group.nodes.len();
            failed += nodes;
            for &reason in &group.rejection.kinds {
                let labels = ReasonLabels {
                    reason: reason.to_string(),
                };
                let counter = state.metrics.extender_filtered.get_or_create(&labels);
                counter.inc_by(nodes as u64);
            }
        }
        tracing::info!(
            namespace = pod.metadata.namespace.as_deref().unwrap_or_default(),
            pod = pod.metadata.name.as_deref().unwrap_or_default(),
            passed = decision.passed.len(),
            failed,
            "filter"
        );
        // Serialised here, while the names it borrows from the body are alive.
        axum::Json(ExtenderFilterResult::from_decision(decision, objects)).into_response()
    })
    .await;
    let response = match result {
        Ok(answer) => answer,
        // The scheduler reads `Error` only from a 200, and treats it as it treats a non-200
        // (kube-scheduler's HTTPExtender.Filter returns an error for either): it fails the
        // attempt, or, the extender being ignorable, skips it and schedules without it.
        Err(e) => axum::Json(ExtenderFilterResult::error(e.to_string())).into_response(),
    };
    observe(&state, Verb::Filter, started);
    response
}

async fn prioritize(
    State(state): State<ExtenderState>,
    Limited(body): Limited<MAX_EXTENDER_ARGS_BYTES>,
) -> Response {
    let started = Instant::now();
    let result = decide(&state, Verb::Prioritize, body, |state, args, now| {
        let (pod, candidates, _) = args.into_parts();
        let scores = {
            let snapshot = state.snapshot.read();
            extender::prioritize(&pod, candidates, &snapshot, &state.policy, now)
        };
        tracing::debug!(
            namespace = pod.metadata.namespace.as_deref().unwrap_or_default(),
            pod = pod.metadata.name.as_deref().unwrap_or_default(),
            ?scores,
            "prioritize"
        );
        // Serialised here, while the names it borrows from the body are alive.
        json_text(host_priorities_json(&scores))
    })
    .await;
    let response = match result {
        Ok(answer) => answer,
        // A HostPriorityList has no error field. The scheduler treats any non-200 as "no
        // scores from this extender" and goes on without them, ignorable or not.
        Err(e @ CallError::Invalid(_)) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    };
    observe(&state, Verb::Prioritize, started);
    response
}

/// Bodies larger than this are parsed and decided on the blocking pool: a full Node list can
/// take tens of milliseconds to parse, which must not stall the async workers. Calls with node
/// names (well under this) run inline, saving the thread hand-off (~60 µs).
const INLINE_BODY_BYTES: usize = 1024 * 1024;

/// Parses the call and runs `decide`, inline or on the blocking pool depending on its size.
/// Counts the call by outcome.
async fn decide(
    state: &ExtenderState,
    verb: Verb,
    body: Bytes,
    decide: Decide,
) -> Result<Response, CallError> {
    let result = if body.len() <= INLINE_BODY_BYTES {
        parse_and_decide(state, verb, &body, decide)
    } else {
        let task_state = state.clone();
        tokio::task::spawn_blocking(move || parse_and_decide(&task_state, verb, &body, decide))
            .await
            .map_err(CallError::Task)
            .and_then(|inner| inner)
    };
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) => {
            tracing::warn!(verb = verb.as_str(), error = %e, "extender call not decided");
            e.outcome()
        }
    };
    state
        .metrics
        .extender_calls
        .get_or_create(&ExtenderCallLabels {
            verb: verb.as_str().to_string(),
            outcome: outcome.to_string(),
        })
        .inc();
    result
}

/// A verb's decision over a parsed call, answered before the body it borrows from is freed.
type Decide = for<'a> fn(&ExtenderState, ExtenderArgs<'a>, Timestamp) -> Response;

fn parse_and_decide(
    state: &ExtenderState,
    verb: Verb,
    body: &[u8],
    decide: Decide,
) -> Result<Response, CallError> {
    let args: ExtenderArgs = serde_json::from_slice(body).map_err(CallError::Invalid)?;
    state
        .metrics
        .extender_candidates
        .get_or_create(&VerbLabels {
            verb: verb.as_str().to_string(),
        })
        .inc_by(args.candidate_count() as u64);
    // Checked after parsing so that a call before the first sync is still counted.
    if !state.synced.is_synced() {
        return Err(CallError::NotSynced);
    }
    let now = (state.now)();
    // A stale view would reject every node whose Lease it has not seen renewed: better to let
    // the scheduler go on without us.
    if let Some(stale) = state.staleness(now) {
        return Err(CallError::Stale(stale));
    }
    Ok(decide(state, args, now))
}

fn observe(state: &ExtenderState, verb: Verb, started: Instant) {
    state
        .metrics
        .extender_call_seconds
        .get_or_create(&VerbLabels {
            verb: verb.as_str().to_string(),
        })
        .observe(started.elapsed().as_secs_f64());
}
