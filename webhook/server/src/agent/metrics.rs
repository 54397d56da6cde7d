//! The agent's metrics, registered beside the common ones on its admin port.
//!
//! Per-pod series are rebuilt every sample from the report's busiest pods, so their label sets
//! stay bounded by `MAX_REPORTED_PODS` and a pod that stopped transcoding leaves no series
//! behind.

use std::collections::HashSet;
use std::hash::Hash;
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, PoisonError};

use jellyfin_ha_core::busyness::AgentReport;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{Atomic, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::scan::ScanCounts;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EngineLabels {
    pub node: String,
    pub card: String,
    /// The driver's engine class name: `video`, `vcs`.
    pub engine: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PodEngineLabels {
    pub node: String,
    pub card: String,
    pub engine: String,
    pub pod_uid: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CardLabels {
    pub node: String,
    pub card: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `ok` or `error`.
    pub outcome: String,
}

type Ratio = Gauge<f64, AtomicU64>;

#[derive(Debug)]
pub struct AgentMetrics {
    engine_busy: Family<EngineLabels, Ratio>,
    pod_engine_busy: Family<PodEngineLabels, Ratio>,
    usable: Family<CardLabels, Gauge>,
    render_gid: Family<CardLabels, Gauge>,
    drm_fds: Gauge,
    pub sample_seconds: Histogram,
    denied: Counter,
    pub publishes: Family<OutcomeLabels, Counter>,
    shown: Mutex<Shown>,
}

impl AgentMetrics {
    /// The agent's families, registered into `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        // 100 µs .. ~1.6 s: a scan of a busy host's /proc.
        let metrics = Self {
            engine_busy: Family::default(),
            pod_engine_busy: Family::default(),
            usable: Family::default(),
            render_gid: Family::default(),
            drm_fds: Gauge::default(),
            sample_seconds: Histogram::new(exponential_buckets(0.0001, 2.64, 11)),
            denied: Counter::default(),
            publishes: Family::default(),
            shown: Mutex::default(),
        };
        registry.register(
            "gpu_engine_busy_ratio",
            "Share of the sampling interval an engine class was busy, 0 to 1, summed over its DRM clients",
            metrics.engine_busy.clone(),
        );
        registry.register(
            "gpu_pod_engine_busy_ratio",
            "Engine busyness attributed to a pod through its processes' cgroups (the busiest pods only)",
            metrics.pod_engine_busy.clone(),
        );
        registry.register(
            "gpu_usable",
            "1 when the card's render node exists and opens and its driver is i915 or xe",
            metrics.usable.clone(),
        );
        registry.register(
            "gpu_render_group_id",
            "The group id owning the card's render node: the GID a pod needs in supplementalGroups",
            metrics.render_gid.clone(),
        );
        registry.register(
            "agent_drm_fds",
            "DRM file descriptors found in the last sample",
            metrics.drm_fds.clone(),
        );
        registry.register(
            "agent_sample_duration_seconds",
            "Time to read one sample from /proc, /sys and /dev",
            metrics.sample_seconds.clone(),
        );
        registry.register(
            "agent_unreadable_files",
            "Files under /proc the agent was not permitted to read",
            metrics.denied.clone(),
        );
        registry.register(
            "agent_publishes",
            "Writes of the node's report to the cluster, by outcome",
            metrics.publishes.clone(),
        );
        metrics
    }

    /// Shows one sample's report and scan counts. Series of cards and pods no longer in the
    /// report are removed after the new values are set, so a scrape never sees a gap.
    pub fn record(&self, report: &AgentReport, counts: ScanCounts) {
        let card_labels = |card: &str| CardLabels {
            node: report.node.clone(),
            card: card.to_string(),
        };
        let usable = report
            .cards
            .iter()
            .map(|card| (card_labels(&card.card), i64::from(card.usable)));
        let render_gid = report
            .cards
            .iter()
            .filter_map(|card| Some((card_labels(&card.card), i64::from(card.render_gid?))));
        let engine_busy = report.cards.iter().flat_map(|card| {
            card.engines.iter().map(|(engine, ratio)| {
                let labels = EngineLabels {
                    node: report.node.clone(),
                    card: card.card.clone(),
                    engine: engine.clone(),
                };
                (labels, *ratio)
            })
        });
        let pod_engine_busy = report.pods.iter().flat_map(|pod| {
            pod.engines.iter().map(|(engine, ratio)| {
                let labels = PodEngineLabels {
                    node: report.node.clone(),
                    card: pod.card.clone(),
                    engine: engine.clone(),
                    pod_uid: pod.pod_uid.clone(),
                };
                (labels, *ratio)
            })
        });
        let mut shown = self.shown.lock().unwrap_or_else(PoisonError::into_inner);
        show(&self.usable, &mut shown.usable, usable);
        show(&self.render_gid, &mut shown.render_gid, render_gid);
        show(&self.engine_busy, &mut shown.engine_busy, engine_busy);
        show(
            &self.pod_engine_busy,
            &mut shown.pod_engine_busy,
            pod_engine_busy,
        );
        self.drm_fds
            .set(i64::try_from(counts.drm_fds).unwrap_or(i64::MAX));
        self.denied.inc_by(counts.denied);
    }
}

/// The label sets each family shows now.
#[derive(Debug, Default)]
struct Shown {
    usable: HashSet<CardLabels>,
    render_gid: HashSet<CardLabels>,
    engine_busy: HashSet<EngineLabels>,
    pod_engine_busy: HashSet<PodEngineLabels>,
}

/// Sets `family` to exactly `values`: new values first, then the series that are gone removed.
fn show<L, N, A>(
    family: &Family<L, Gauge<N, A>>,
    shown: &mut HashSet<L>,
    values: impl Iterator<Item = (L, N)>,
) where
    L: Clone + Hash + Eq,
    A: Atomic<N> + Default,
{
    let mut now = HashSet::with_capacity(shown.len());
    for (labels, value) in values {
        family.get_or_create(&labels).set(value);
        now.insert(labels);
    }
    for gone in shown.difference(&now) {
        family.remove(gone);
    }
    *shown = now;
}
