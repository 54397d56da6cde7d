//! What the fencer writes on a Node it fenced, next to the out-of-service taint. It is the
//! fencer's whole memory: a restarted or newly elected fencer reads it back from the cluster.

use k8s_openapi::api::core::v1::Taint;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::taints;

/// Node annotation holding a [`FenceRecord`] as JSON.
pub const FENCED_ANNOTATION: &str = "jellyfin-ha.io/fenced";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FenceRecord {
    /// When the proof began: the node had just been suspected.
    pub suspected_at: Timestamp,
    /// When the device said off.
    pub proven_at: Timestamp,
    /// When the taint was applied.
    pub fenced_at: Timestamp,
    /// Why the node was suspected, e.g. `Lease not renewed for 12.4 s`.
    pub reason: String,
    /// The agent from the config that proved it off.
    pub agent: String,
    /// What the device said, e.g. `redfish PowerState Off after ForceOff`.
    pub proof: String,
    /// `status.nodeInfo.bootID` when fenced; the taint stays until it changes.
    pub boot_id: String,
    /// The fencer replica that acted.
    pub fenced_by: String,
}

/// The being-fenced mark ([`crate::extender::snapshot::FENCING_ANNOTATION`]) as JSON: set
/// while a proof runs, so that the extender places nothing on the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FencingMark {
    /// The agent from the config proving it off.
    pub agent: String,
    /// When the proof began.
    pub since: Timestamp,
    /// The proof took one of the `maxFenced` places (it is powering the machine off): every
    /// replica counts the node until it heartbeats again, a leader elected meanwhile too.
    #[serde(default)]
    pub claimed: bool,
}

impl FencingMark {
    pub fn to_annotation(&self) -> String {
        // A struct of strings, a timestamp and a bool always serialises.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// A mark that does not read (written by hand?) claims nothing.
    pub fn claims(value: &str) -> bool {
        serde_json::from_str::<Self>(value).is_ok_and(|mark| mark.claimed)
    }
}

impl FenceRecord {
    /// The out-of-service taint written with this record, added when it says it fenced.
    pub fn taint(&self) -> Taint {
        Taint {
            time_added: Some(Time(self.fenced_at)),
            ..taints::out_of_service()
        }
    }

    /// Whether `taint` is the one written with this record: a record left behind after
    /// someone removed it owns no taint added later. The apiserver keeps a taint's time to
    /// the second.
    pub fn owns(&self, taint: &Taint) -> bool {
        let ours = taints::out_of_service();
        taint.key == ours.key
            && taint.effect == ours.effect
            && (taint.time_added.as_ref())
                .is_some_and(|t| t.0.as_second() == self.fenced_at.as_second())
    }

    pub fn to_annotation(&self) -> String {
        // A struct of strings and a timestamp always serialises.
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn from_annotation(value: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_the_annotation() {
        let record = FenceRecord {
            suspected_at: "2026-11-25T17:59:58Z".parse().unwrap(),
            proven_at: "2026-11-25T17:59:59.5Z".parse().unwrap(),
            fenced_at: "2026-11-25T18:00:00Z".parse().unwrap(),
            reason: "Lease not renewed for 12.0 s".into(),
            agent: "bmc".into(),
            proof: "redfish PowerState Off".into(),
            boot_id: "b-1".into(),
            fenced_by: "fencer-0".into(),
        };
        let text = record.to_annotation();
        assert!(text.contains("\"bootId\":\"b-1\""), "{text}");
        assert_eq!(FenceRecord::from_annotation(&text).unwrap(), record);
        assert!(FenceRecord::from_annotation("{}").is_err());
    }

    #[test]
    fn only_a_mark_that_reads_and_says_so_claims_a_place() {
        let mark = FencingMark {
            agent: "bmc".into(),
            since: "2026-11-25T17:59:58Z".parse().unwrap(),
            claimed: true,
        };
        assert!(FencingMark::claims(&mark.to_annotation()));
        let proving = FencingMark {
            claimed: false,
            ..mark
        };
        assert!(!FencingMark::claims(&proving.to_annotation()));
        // Written before claims were recorded, or by hand.
        assert!(!FencingMark::claims(
            r#"{"agent":"bmc","since":"2026-11-25T17:59:58Z"}"#
        ));
        assert!(!FencingMark::claims("claimed"));
    }
}
