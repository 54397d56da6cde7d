//! Busy ratios over one sampling interval, from two readings of every DRM client's counters.
//!
//! Each client counts once, however many fds and processes share it: it is keyed by its card
//! (which `drm-pdev` names) and `drm-client-id`. A client's ratio per engine class is its
//! counter's growth over the interval (i915: busy ns over wall ns; xe: busy cycles over the
//! GPU's cycles), divided by the class's capacity; the card's ratio is the sum over its
//! clients, clamped to 1. A client seen for the first time only sets its baseline, and one
//! that vanished takes its state with it, so memory follows the live clients.

use std::collections::{BTreeMap, HashMap};

use super::fdinfo::{DrmClient, EngineCounter};

/// One DRM client as found behind some process's fd.
#[derive(Debug, Clone, PartialEq)]
pub struct SeenClient {
    /// The card the client's `drm-pdev` (or its render node) belongs to.
    pub card: String,
    pub client: DrmClient,
    /// The pod of the process the fd was found in, if any.
    pub pod_uid: Option<String>,
}

/// Ratios from 0 to 1 per engine class.
pub type EngineRatios = BTreeMap<String, f64>;

/// The busyness of one interval.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IntervalBusyness {
    /// Per card, per engine class.
    pub cards: BTreeMap<String, EngineRatios>,
    /// Per (pod UID, card), per engine class; only pods with a client on the card.
    pub pods: BTreeMap<(String, String), EngineRatios>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ClientKey {
    card: String,
    client_id: u64,
}

/// The counters of the previous reading, per client.
#[derive(Debug, Default)]
pub struct Sampler {
    previous: HashMap<ClientKey, BTreeMap<String, EngineCounter>>,
    previous_ns: Option<u64>,
}

impl Sampler {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes one reading at monotonic time `now_ns` and returns the busyness since the
    /// previous one; `None` for the first reading, which has nothing to compare with, or when
    /// the clock did not advance. Of clients seen more than once, the first one found counts
    /// and is attributed to its pod.
    pub fn sample(
        &mut self,
        seen: impl IntoIterator<Item = SeenClient>,
        now_ns: u64,
    ) -> Option<IntervalBusyness> {
        let wall_ns = self.previous_ns.map(|then| now_ns.saturating_sub(then));
        self.previous_ns = Some(now_ns);
        let mut current = HashMap::new();
        let mut busyness = IntervalBusyness::default();
        for SeenClient {
            card,
            client,
            pod_uid,
        } in seen
        {
            let key = ClientKey {
                card,
                client_id: client.client_id,
            };
            if current.contains_key(&key) {
                continue;
            }
            let previous = self.previous.get(&key);
            let mut kept = BTreeMap::new();
            for (class, usage) in client.engines {
                let before = previous.and_then(|engines| engines.get(&class)).copied();
                let (ratio, counter) = advance(before, usage.counter, wall_ns.unwrap_or(0));
                kept.insert(class.clone(), counter);
                let ratio = ratio / f64::from(usage.capacity.max(1));
                add(&mut busyness.cards, &key.card, &class, ratio);
                if let Some(uid) = &pod_uid {
                    let engines = busyness
                        .pods
                        .entry((uid.clone(), key.card.clone()))
                        .or_default();
                    *engines.entry(class).or_default() += ratio;
                }
            }
            current.insert(key, kept);
        }
        self.previous = current;
        wall_ns.filter(|ns| *ns > 0)?;
        for engines in busyness
            .cards
            .values_mut()
            .chain(busyness.pods.values_mut())
        {
            for ratio in engines.values_mut() {
                *ratio = ratio.clamp(0.0, 1.0);
            }
        }
        Some(busyness)
    }
}

fn add(ratios: &mut BTreeMap<String, EngineRatios>, card: &str, class: &str, ratio: f64) {
    let engines = ratios.entry(card.to_string()).or_default();
    *engines.entry(class.to_string()).or_default() += ratio;
}

/// The ratio since `before` and the counter to keep. A counter that went backwards keeps its
/// larger previous value until it catches up, as the usage-stats spec tells readers to; a
/// counter that changed kind (a driver rebound) starts over.
fn advance(
    before: Option<EngineCounter>,
    now: EngineCounter,
    wall_ns: u64,
) -> (f64, EngineCounter) {
    match (before, now) {
        (Some(EngineCounter::BusyNs(then)), EngineCounter::BusyNs(ns)) => {
            let ratio = ratio(ns.saturating_sub(then), wall_ns);
            (ratio, EngineCounter::BusyNs(then.max(ns)))
        }
        (
            Some(EngineCounter::Cycles {
                busy: busy_then,
                total: total_then,
            }),
            EngineCounter::Cycles { busy, total },
        ) => {
            let ratio = ratio(
                busy.saturating_sub(busy_then),
                total.saturating_sub(total_then),
            );
            let kept = EngineCounter::Cycles {
                busy: busy_then.max(busy),
                total: total_then.max(total),
            };
            (ratio, kept)
        }
        _ => (0.0, now),
    }
}

/// `part / whole`, 0 when nothing elapsed.
fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        return 0.0;
    }
    // Counters fit an f64 closely enough for a ratio: the error is far below one percent.
    part as f64 / whole as f64
}
