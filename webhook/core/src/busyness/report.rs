//! What a node agent publishes about its node: one [`AgentReport`] per node, as JSON under
//! [`REPORT_KEY`] in the ConfigMap [`report_object_name`] in jellyfin-ha's namespace.
//!
//! A ConfigMap of its own rather than the Node object: every component in a cluster watches
//! Nodes, and a write every few seconds from every node would reach all of them.

use std::collections::BTreeMap;

use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::fdinfo::engine_classes;
use super::sample::IntervalBusyness;

/// The most pods a report (and the agent's metrics) names, busiest first: label sets and the
/// object stay bounded however many clients a node runs.
pub const MAX_REPORTED_PODS: usize = 16;

/// The data key of the report in the per-node ConfigMap.
pub const REPORT_KEY: &str = "report.json";
/// Prefix of the per-node ConfigMap's name; the node name follows.
pub const REPORT_OBJECT_PREFIX: &str = "jellyfin-ha-agent-";
/// Label naming the node a report describes.
pub const REPORT_NODE_LABEL: &str = "jellyfin-ha.io/node";
/// Labels every report carries besides [`REPORT_NODE_LABEL`], so one label selector lists them.
pub const REPORT_LABELS: [(&str, &str); 2] = [
    ("app.kubernetes.io/name", "jellyfin-ha"),
    ("app.kubernetes.io/component", "agent"),
];

/// The label selector that lists every report.
pub fn report_selector() -> String {
    REPORT_LABELS
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The name of the ConfigMap that holds `node`'s report.
pub fn report_object_name(node: &str) -> String {
    format!("{REPORT_OBJECT_PREFIX}{node}")
}

/// One node's GPUs as its agent saw them over one sampling interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentReport {
    pub node: String,
    /// When the interval the busyness covers ended.
    pub observed_at: Timestamp,
    #[serde(default)]
    pub cards: Vec<CardReport>,
    /// Busyness attributed to pods through their processes' cgroups, busiest first.
    #[serde(default)]
    pub pods: Vec<PodBusyness>,
}

/// One DRM card (`/sys/class/drm/cardN`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CardReport {
    /// `card0`.
    pub card: String,
    /// The kernel driver bound to the PCI device: `i915` or `xe`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// `0000:00:02.0`, as `drm-pdev` in fdinfo names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pci_address: Option<String>,
    /// `renderD128`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub render_node: Option<String>,
    /// The render node's group id: the GID a pod needs in `supplementalGroups`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub render_gid: Option<u32>,
    /// The render node exists, belongs to a known driver and opens (or could not be tried:
    /// the agent has no device access).
    pub usable: bool,
    /// Why the card is not usable, or what the agent could not check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// Busy ratio from 0 to 1 per engine class, named as the driver names it (`video`, `vcs`).
    #[serde(default)]
    pub engines: BTreeMap<String, f64>,
}

/// The busyness one pod's processes put on one card.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodBusyness {
    pub pod_uid: String,
    pub card: String,
    #[serde(default)]
    pub engines: BTreeMap<String, f64>,
}

impl AgentReport {
    /// The report of one interval: each card's health with its engines' ratios (every class
    /// its driver has, idle ones as 0) and the busiest pods.
    pub fn assemble(
        node: &str,
        observed_at: Timestamp,
        cards: Vec<CardReport>,
        busyness: &IntervalBusyness,
    ) -> Self {
        let cards = cards
            .into_iter()
            .map(|mut card| {
                let driver = card.driver.as_deref().unwrap_or_default();
                for class in engine_classes(driver) {
                    card.engines.insert((*class).to_string(), 0.0);
                }
                if let Some(measured) = busyness.cards.get(&card.card) {
                    card.engines.extend(measured.clone());
                }
                card
            })
            .collect();
        let mut pods: Vec<PodBusyness> = busyness
            .pods
            .iter()
            .map(|((pod_uid, card), engines)| PodBusyness {
                pod_uid: pod_uid.clone(),
                card: card.clone(),
                engines: engines.clone(),
            })
            .collect();
        pods.sort_by(|a, b| b.busiest_ratio().total_cmp(&a.busiest_ratio()));
        pods.truncate(MAX_REPORTED_PODS);
        Self {
            node: node.to_string(),
            observed_at,
            cards,
            pods,
        }
    }

    /// Parses the JSON under [`REPORT_KEY`].
    pub fn from_json(json: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(json)
    }

    /// Whether any card can serve a transcode.
    pub fn has_usable_card(&self) -> bool {
        self.cards.iter().any(|card| card.usable)
    }

    /// The node's load: its busiest engine on its least busy usable card, in percent (a
    /// transcode lands on whichever card has room, and it stalls on the engine that is full).
    /// `None` without a usable card.
    pub fn busy_percent(&self) -> Option<u8> {
        self.cards
            .iter()
            .filter(|card| card.usable)
            .map(CardReport::busiest_ratio)
            .min_by(f64::total_cmp)
            .map(ratio_percent)
    }

    /// The render group ids of the usable cards.
    pub fn render_gids(&self) -> impl Iterator<Item = u32> + '_ {
        self.cards
            .iter()
            .filter(|card| card.usable)
            .filter_map(|card| card.render_gid)
    }
}

impl PodBusyness {
    /// The highest busy ratio among the pod's engines.
    pub fn busiest_ratio(&self) -> f64 {
        self.engines.values().copied().fold(0.0, f64::max)
    }
}

impl CardReport {
    /// The highest busy ratio among this card's engines, 0 when it reports none.
    pub fn busiest_ratio(&self) -> f64 {
        self.engines.values().copied().fold(0.0, f64::max)
    }
}

/// A ratio clamped to 0-1 as a whole percent; NaN counts as idle.
pub fn ratio_percent(ratio: f64) -> u8 {
    let clamped = if ratio.is_nan() {
        0.0
    } else {
        ratio.clamp(0.0, 1.0)
    };
    // In 0..=100 after the clamp, so the cast cannot truncate.
    (clamped * 100.0).round() as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    fn card(name: &str, usable: bool, engines: &[(&str, f64)]) -> CardReport {
        CardReport {
            card: name.into(),
            driver: Some("i915".into()),
            pci_address: Some("0000:00:02.0".into()),
            render_node: Some("renderD128".into()),
            render_gid: Some(109),
            usable,
            problem: None,
            engines: engines.iter().map(|(k, v)| ((*k).into(), *v)).collect(),
        }
    }

    #[test]
    fn round_trips_in_camel_case() {
        let report = AgentReport {
            node: "n1".into(),
            observed_at: "2026-11-25T20:00:00Z".parse().unwrap(),
            cards: vec![card("card0", true, &[("video", 0.25)])],
            pods: vec![PodBusyness {
                pod_uid: "u1".into(),
                card: "card0".into(),
                engines: [("video".to_string(), 0.25)].into(),
            }],
        };
        let json = serde_json::to_string(&report).unwrap();
        for key in [
            "observedAt",
            "pciAddress",
            "renderNode",
            "renderGid",
            "podUid",
        ] {
            assert!(json.contains(key), "{key} missing from {json}");
        }
        assert_eq!(AgentReport::from_json(&json).unwrap(), report);
    }

    #[test]
    fn load_is_the_busiest_engine_of_the_least_busy_usable_card() {
        let report = AgentReport {
            node: "n1".into(),
            observed_at: "2026-11-25T20:00:00Z".parse().unwrap(),
            cards: vec![
                card("card0", true, &[("video", 0.8), ("render", 0.1)]),
                card("card1", true, &[("video", 0.3), ("render", 0.456)]),
                card("card2", false, &[]),
            ],
            pods: vec![],
        };
        assert_eq!(report.busy_percent(), Some(46));
        assert!(report.has_usable_card());
    }

    #[test]
    fn no_usable_card_means_no_load_figure() {
        let report = AgentReport {
            node: "n1".into(),
            observed_at: "2026-11-25T20:00:00Z".parse().unwrap(),
            cards: vec![card("card0", false, &[("video", 0.5)])],
            pods: vec![],
        };
        assert_eq!(report.busy_percent(), None);
        assert!(!report.has_usable_card());
        assert_eq!(report.render_gids().count(), 0);
    }

    #[test]
    fn percent_clamps_and_treats_nan_as_idle() {
        assert_eq!(ratio_percent(1.7), 100);
        assert_eq!(ratio_percent(-0.2), 0);
        assert_eq!(ratio_percent(f64::NAN), 0);
        assert_eq!(ratio_percent(0.374), 37);
    }
}
