//! When the agent writes its report: when it moved meaningfully or a refresh interval passed.
//! Readers treat a report older than their freshness limit as unknown, so the refresh keeps a
//! quiet node's report alive, and the threshold keeps a busy node from writing every sample.

use super::report::{AgentReport, CardReport};

/// A card's engine ratio or the node's load moving by this much is worth a write.
pub const DEFAULT_MIN_CHANGE: f64 = 0.05;

/// Whether `next` should replace the `last` report written, `refresh_seconds` after which a
/// report is rewritten anyway.
pub fn should_publish(
    last: Option<&AgentReport>,
    next: &AgentReport,
    min_change: f64,
    refresh_seconds: u64,
) -> bool {
    let Some(last) = last else {
        return true;
    };
    let age = next.observed_at.duration_since(last.observed_at);
    if age.as_secs() >= i64::try_from(refresh_seconds).unwrap_or(i64::MAX) {
        return true;
    }
    last.cards.len() != next.cards.len()
        || last.cards.iter().zip(&next.cards).any(|(before, after)| {
            health_changed(before, after) || moved(before, after, min_change)
        })
}

fn health_changed(before: &CardReport, after: &CardReport) -> bool {
    let health = |card: &CardReport| CardReport {
        engines: Default::default(),
        ..card.clone()
    };
    health(before) != health(after)
}

fn moved(before: &CardReport, after: &CardReport, min_change: f64) -> bool {
    let ratio = |card: &CardReport, class: &str| card.engines.get(class).copied().unwrap_or(0.0);
    before
        .engines
        .keys()
        .chain(after.engines.keys())
        .any(|class| (ratio(before, class) - ratio(after, class)).abs() >= min_change)
}
