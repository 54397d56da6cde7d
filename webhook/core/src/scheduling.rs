//! Which scheduler places opted-in pods, as the ConfigMap [`CONFIGMAP`] says.
//!
//! Each way of sending pods through the extender strands them if it outlives the scheduler
//! that honours it: the `jellyfin-ha.io/managed` marker is an extended resource no node
//! advertises (`Insufficient jellyfin-ha.io/managed` wherever the scheduler does not ignore
//! it), and a `schedulerName` nobody serves leaves a pod Pending for ever. So the webhook does
//! neither until the install says which scheduler is there: the ConfigMap ships with each
//! scheduling overlay (`manifests/scheduling/*`) and goes when it is deleted, and without it
//! pods are left to the cluster's scheduler as they are. Only Pods get either, never workload
//! templates, so nothing outlives the ConfigMap.

use std::collections::BTreeMap;

/// The ConfigMap, in jellyfin-ha's namespace, that turns scheduling through jellyfin-ha on.
pub const CONFIGMAP: &str = "jellyfin-ha-scheduling";
/// Its key naming the way: [`EXTENDER_MODE`] or [`SCHEDULER_MODE`].
pub const MODE_KEY: &str = "mode";
/// kube-scheduler calls the extender for pods that carry the marker.
pub const EXTENDER_MODE: &str = "extender";
/// A second scheduler, configured with the extender, places pods that name it.
pub const SCHEDULER_MODE: &str = "scheduler";
/// With [`SCHEDULER_MODE`]: the second scheduler's profile name.
pub const SCHEDULER_NAME_KEY: &str = "schedulerName";

/// How opted-in pods reach the extender.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Scheduling {
    /// No scheduler that knows jellyfin-ha is installed (no ConfigMap): the cluster's
    /// scheduler places pods without the extender.
    #[default]
    Default,
    /// kube-scheduler is configured with the extender: Pods get the marker.
    Extender,
    /// A second scheduler with the extender runs in the cluster: Pods name it.
    Scheduler(String),
    /// The ConfigMap exists but says nothing usable. Treated as [`Scheduling::Default`], which
    /// keeps pods schedulable, and every admission warns with the reason.
    Unusable(String),
}

impl Scheduling {
    /// Reads the ConfigMap's data; `None` when there is no ConfigMap.
    pub fn from_configmap(data: Option<&BTreeMap<String, String>>) -> Self {
        let Some(data) = data else {
            return Self::Default;
        };
        let unusable = |why: String| Self::Unusable(format!("ConfigMap {CONFIGMAP}: {why}"));
        if let Some(key) = data
            .keys()
            .find(|k| ![MODE_KEY, SCHEDULER_NAME_KEY].contains(&k.as_str()))
        {
            return unusable(format!(
                "unknown key {key:?}; expected {MODE_KEY} and, with {MODE_KEY}: \
                 {SCHEDULER_MODE}, {SCHEDULER_NAME_KEY}"
            ));
        }
        let name = data.get(SCHEDULER_NAME_KEY);
        match (data.get(MODE_KEY).map(String::as_str), name) {
            (Some(EXTENDER_MODE), None) => Self::Extender,
            (Some(EXTENDER_MODE), Some(_)) => unusable(format!(
                "{SCHEDULER_NAME_KEY} is only read with {MODE_KEY}: {SCHEDULER_MODE}"
            )),
            (Some(SCHEDULER_MODE), Some(name)) if is_dns_subdomain(name) => {
                Self::Scheduler(name.clone())
            }
            (Some(SCHEDULER_MODE), Some(name)) => unusable(format!(
                "{SCHEDULER_NAME_KEY} {name:?} is not a valid scheduler name (a DNS subdomain)"
            )),
            (Some(SCHEDULER_MODE), None) => unusable(format!(
                "{MODE_KEY}: {SCHEDULER_MODE} needs {SCHEDULER_NAME_KEY}"
            )),
            (mode, _) => unusable(format!(
                "{MODE_KEY} is {mode:?}; expected {EXTENDER_MODE:?} or {SCHEDULER_MODE:?}"
            )),
        }
    }

    /// One line for logs and `mutate`'s report.
    pub fn describe(&self) -> String {
        match self {
            Self::Default => {
                format!("no {CONFIGMAP}: the cluster's scheduler, without the extender")
            }
            Self::Extender => "kube-scheduler with the extender (scheduling marker)".to_string(),
            Self::Scheduler(name) => format!("the second scheduler {name:?} with the extender"),
            Self::Unusable(why) => format!("{why}; the cluster's scheduler, without the extender"),
        }
    }
}

/// RFC 1123 subdomain, as Kubernetes validates `spec.schedulerName`.
fn is_dns_subdomain(name: &str) -> bool {
    let label_ok = |label: &str| {
        !label.is_empty()
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    name.len() <= 253 && name.split('.').all(label_ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn no_configmap_leaves_pods_to_the_clusters_scheduler() {
        assert_eq!(Scheduling::from_configmap(None), Scheduling::Default);
    }

    #[test]
    fn extender_mode_is_read() {
        let scheduling = Scheduling::from_configmap(Some(&data(&[("mode", "extender")])));
        assert_eq!(scheduling, Scheduling::Extender);
    }

    #[test]
    fn scheduler_mode_reads_the_second_schedulers_name() {
        let scheduling = Scheduling::from_configmap(Some(&data(&[
            ("mode", "scheduler"),
            ("schedulerName", "jellyfin-ha"),
        ])));
        assert_eq!(scheduling, Scheduling::Scheduler("jellyfin-ha".into()));
    }

    #[test]
    fn anything_else_is_unusable_and_says_why() {
        for (pairs, expected) in [
            (vec![], "mode is None"),
            (vec![("mode", "Extender")], "mode is Some(\"Extender\")"),
            (vec![("mode", "scheduler")], "needs schedulerName"),
            (
                vec![("mode", "scheduler"), ("schedulerName", "Bad_Name")],
                "not a valid scheduler name",
            ),
            (
                vec![("mode", "extender"), ("schedulerName", "x")],
                "only read with mode: scheduler",
            ),
            (
                vec![("mode", "extender"), ("marker", "on")],
                "unknown key \"marker\"",
            ),
        ] {
            let scheduling = Scheduling::from_configmap(Some(&data(&pairs)));
            let Scheduling::Unusable(why) = &scheduling else {
                panic!("{pairs:?} gave {scheduling:?}")
            };
            assert!(why.contains(expected), "{pairs:?}: {why}");
        }
    }
}
