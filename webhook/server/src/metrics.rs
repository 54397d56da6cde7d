//! Prometheus metrics, served in OpenMetrics text on the admin port.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReviewLabels {
    pub kind: &'static str,
    pub operation: &'static str,
    pub outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// `success` or `error`.
    pub result: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExtenderCallLabels {
    /// `filter` or `prioritize`.
    pub verb: String,
    /// `ok`, `invalid` (unparseable body), `not_synced` (caches not listed yet), `stale` (the
    /// view is behind) or `error` (the decision task failed).
    pub outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerbLabels {
    pub verb: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// A fixed reason from the core: the fencer's CamelCase refusals, the extender's filter
    /// reason kinds.
    pub reason: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChangeLabels {
    /// The kind of change, as the `jellyfin-ha.io/mutations` annotation keys it.
    pub change: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProofLabels {
    /// The agent's name from the config.
    pub agent: String,
    /// `off` (proven) or `failed`.
    pub outcome: String,
}

#[derive(Debug)]
pub struct Metrics {
    pub registry: Registry,
    pub reviews: Family<ReviewLabels, Counter>,
    pub review_changes: Family<ChangeLabels, Counter>,
    pub review_seconds: Histogram,
    pub certificate_reloads: Family<ReloadLabels, Counter>,
    /// Unix seconds.
    pub certificate_expiry: Gauge,
    pub extender_calls: Family<ExtenderCallLabels, Counter>,
    pub extender_call_seconds: Family<VerbLabels, Histogram, fn() -> Histogram>,
    /// Candidate nodes per call, by verb: shows whether the scheduler sends names or objects
    /// for how many nodes.
    pub extender_candidates: Family<VerbLabels, Counter>,
    /// Nodes the filter rejected, by reason kind (a node rejected for two reasons counts in
    /// both).
    pub extender_filtered: Family<ReasonLabels, Counter>,
    pub fencer_leader: Gauge,
    pub fencer_suspects: Counter,
    pub fencer_proofs: Family<ProofLabels, Counter>,
    pub fencer_refusals: Family<ReasonLabels, Counter>,
    pub fencer_fences: Counter,
    pub fencer_fence_seconds: Histogram,
    pub fencer_unfences: Counter,
    pub fencer_pods_deleted: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("jellyfin_ha");
        let reviews = Family::<ReviewLabels, Counter>::default();
        registry.register(
            "admission_reviews",
            "Admission reviews answered, by kind, operation and outcome",
            reviews.clone(),
        );
        let review_changes = Family::<ChangeLabels, Counter>::default();
        registry.register(
            "admission_changes",
            "Changes the webhook made, by kind (the keys of the jellyfin-ha.io/mutations \
             annotation)",
            review_changes.clone(),
        );
        // 10 µs .. ~80 ms: a review is pure computation.
        let review_seconds = Histogram::new(exponential_buckets(0.00001, 2.5, 11));
        registry.register(
            "admission_review_duration_seconds",
            "Time to answer one admission review",
            review_seconds.clone(),
        );
        let certificate_reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "certificate_reloads",
            "Serving certificate changes picked up (files or the self-managed Secret), and \
             failures to pick one up or renew it, by result",
            certificate_reloads.clone(),
        );
        let certificate_expiry = Gauge::default();
        registry.register(
            "certificate_expiry_timestamp_seconds",
            "When the served certificate expires, in Unix seconds",
            certificate_expiry.clone(),
        );
        let extender_calls = Family::<ExtenderCallLabels, Counter>::default();
        registry.register(
            "extender_calls",
            "Scheduler extender calls answered, by verb and outcome",
            extender_calls.clone(),
        );
        // 10 µs .. ~1.5 s: a call over thousands of nodes is still pure computation, but
        // parsing a full Node list can take a while.
        let extender_call_seconds: Family<VerbLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(extender_buckets);
        registry.register(
            "extender_call_duration_seconds",
            "Time to answer one scheduler extender call, parsing included",
            extender_call_seconds.clone(),
        );
        let extender_candidates = Family::<VerbLabels, Counter>::default();
        registry.register(
            "extender_candidate_nodes",
            "Candidate nodes received in scheduler extender calls, by verb",
            extender_candidates.clone(),
        );
        let extender_filtered = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "extender_filtered_nodes",
            "Nodes the extender's filter rejected, by reason",
            extender_filtered.clone(),
        );
        let fencer_leader = Gauge::default();
        registry.register(
            "fencer_leader",
            "1 while this fencer replica holds the leader Lease",
            fencer_leader.clone(),
        );
        let fencer_suspects = Counter::default();
        registry.register(
            "fencer_suspects",
            "Nodes suspected dead (a Lease renewal overdue) and sent to their fence device",
            fencer_suspects.clone(),
        );
        let fencer_proofs = Family::<ProofLabels, Counter>::default();
        registry.register(
            "fencer_proofs",
            "Proofs of power-off finished, by agent and outcome",
            fencer_proofs.clone(),
        );
        let fencer_refusals = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "fencer_refusals",
            "Silent nodes not fenced, by reason",
            fencer_refusals.clone(),
        );
        let fencer_fences = Counter::default();
        registry.register(
            "fencer_fences",
            "Nodes tainted out-of-service after a proof",
            fencer_fences.clone(),
        );
        // 0.1 s .. ~100 s: from suspicion to taint, mostly the device's answer.
        let fencer_fence_seconds = Histogram::new(exponential_buckets(0.1, 2.0, 11));
        registry.register(
            "fencer_fence_duration_seconds",
            "Time from suspicion to taint",
            fencer_fence_seconds.clone(),
        );
        let fencer_unfences = Counter::default();
        registry.register(
            "fencer_unfences",
            "Fenced nodes given back after a power cycle",
            fencer_unfences.clone(),
        );
        let fencer_pods_deleted = Counter::default();
        registry.register(
            "fencer_pods_deleted",
            "Pods force-deleted from fenced nodes",
            fencer_pods_deleted.clone(),
        );
        Self {
            registry,
            reviews,
            review_changes,
            review_seconds,
            certificate_reloads,
            certificate_expiry,
            extender_calls,
            extender_call_seconds,
            extender_candidates,
            extender_filtered,
            fencer_leader,
            fencer_suspects,
            fencer_proofs,
            fencer_refusals,
            fencer_fences,
            fencer_fence_seconds,
            fencer_unfences,
            fencer_pods_deleted,
        }
    }
}

fn extender_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.00001, 3.0, 12))
}

impl Metrics {
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
