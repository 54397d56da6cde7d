//! The `admission.k8s.io/v1` wire format and the thin adapter from a review body to the pure
//! mutation in core.
//!
//! The response is written by hand rather than with kube-core's type because kube-core
//! serialises `patch` as an array of numbers; kube-apiserver expects base64 of the JSON patch.

use base64::Engine;
use std::fmt;
use std::ops::ControlFlow;

use jellyfin_ha_core::pod_patch::{PodFields, patch_pod};
use jellyfin_ha_core::{Change, Policy, mutate_object};
use serde::de::value::MapAccessDeserializer;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

const API_VERSION: &str = "admission.k8s.io/v1";

/// An AdmissionReview with its `request.object` read as `O`. A missing `Option` field reads
/// as `None`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReviewIn<O> {
    api_version: Option<String>,
    request: Option<RequestIn<O>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RequestIn<O> {
    uid: String,
    kind: GroupVersionKind,
    operation: String,
    sub_resource: Option<String>,
    namespace: Option<String>,
    name: Option<String>,
    object: Option<O>,
}

/// The fields [`patch_pod`] reads, from a JSON object only (serde would take an array for a
/// struct as well).
struct PodObject(PodFields);

impl<'de> Deserialize<'de> for PodObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectOnly;
        impl<'de> Visitor<'de> for ObjectOnly {
            type Value = PodObject;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a Pod object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<PodObject, A::Error> {
                PodFields::deserialize(MapAccessDeserializer::new(map)).map(PodObject)
            }
        }
        deserializer.deserialize_map(ObjectOnly)
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
struct GroupVersionKind {
    #[serde(default)]
    group: String,
    #[serde(default)]
    kind: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReviewOut {
    api_version: String,
    kind: &'static str,
    pub response: Response,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Response {
    pub uid: String,
    pub allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    /// Base64 of the RFC 6902 JSON patch, as a JSON string ([`Decision::new`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Status {
    pub code: u16,
    pub message: String,
}

/// What happened to one review, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReviewOutcome {
    /// Opted in and patched.
    Mutated,
    /// Reached the webhook but needed no change (not opted in, already mutated, or a kind or
    /// operation the webhook leaves alone).
    Unchanged,
    /// Opted in with an override the webhook cannot honour.
    Denied,
    /// Not a usable AdmissionReview.
    Invalid,
}

impl ReviewOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            ReviewOutcome::Mutated => "mutated",
            ReviewOutcome::Unchanged => "unchanged",
            ReviewOutcome::Denied => "denied",
            ReviewOutcome::Invalid => "invalid",
        }
    }
}

/// Identifies a review in logs.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub uid: String,
    pub kind: String,
    pub operation: String,
    pub namespace: String,
    pub name: String,
}

pub struct Reviewed {
    pub review: ReviewOut,
    pub outcome: ReviewOutcome,
    pub summary: Summary,
    /// What a mutation changed, as the `jellyfin-ha.io/mutations` annotation keys it.
    pub changes: Vec<&'static str>,
}

fn reply(api_version: Option<String>, response: Response) -> ReviewOut {
    // Answer in the version asked; the apiserver rejects a mismatch.
    let api_version = api_version
        .filter(|v| v.starts_with("admission.k8s.io/"))
        .unwrap_or(API_VERSION.into());
    ReviewOut {
        api_version,
        kind: "AdmissionReview",
        response,
    }
}

/// A refusal: `Denied` for an object the webhook cannot mutate, `Invalid` for a body that is
/// not a usable review.
fn refuse(
    outcome: ReviewOutcome,
    api_version: Option<String>,
    uid: String,
    message: String,
    summary: Summary,
) -> Reviewed {
    let status = Some(Status { code: 400, message });
    let response = Response {
        uid,
        allowed: false,
        status,
        ..Response::default()
    };
    Reviewed {
        review: reply(api_version, response),
        outcome,
        summary,
        changes: Vec::new(),
    }
}

fn invalid(
    api_version: Option<String>,
    uid: String,
    message: String,
    summary: Summary,
) -> Reviewed {
    refuse(ReviewOutcome::Invalid, api_version, uid, message, summary)
}

/// Answers one review body. Every input gets an answer; nothing here panics or does IO.
pub fn review(body: &[u8], policy: &Policy) -> Reviewed {
    // Checked once whole, so that the parser does not check each string again.
    let body = match std::str::from_utf8(body) {
        Ok(body) => body,
        Err(e) => {
            let message = format!("cannot parse AdmissionReview: not UTF-8: {e}");
            return invalid(None, String::new(), message, Summary::default());
        }
    };
    // Nearly every review is a Pod the fast path answers: read with the review in one pass.
    // Anything else (another kind, a Pod it declines, a body that does not read so) is read
    // again, its object kept as text for the typed engine.
    if let Ok(parsed) = serde_json::from_str::<ReviewIn<PodObject>>(body) {
        match triage(parsed) {
            ControlFlow::Break(answered) => return answered,
            ControlFlow::Continue(mut handled) if handled.is_pod() => {
                let fast = handled.request.object.take();
                if let Some(fast) = fast.and_then(|pod| patch_pod(pod.0, policy)) {
                    let json = (!fast.patch.is_empty()).then(|| fast.patch.into_json());
                    return handled.answer(Decision::new(json, fast.changes, fast.warnings));
                }
            }
            ControlFlow::Continue(_) => {}
        }
    }
    let parsed = match serde_json::from_str::<ReviewIn<&RawValue>>(body) {
        Ok(parsed) => parsed,
        Err(e) => {
            return invalid(
                None,
                String::new(),
                format!("cannot parse AdmissionReview: {e}"),
                Summary::default(),
            );
        }
    };
    let mut handled = match triage(parsed) {
        ControlFlow::Continue(handled) => handled,
        ControlFlow::Break(answered) => return answered,
    };
    let object = handled.request.object.take();
    let Some(object) = object.filter(|o| o.get().trim_start().starts_with('{')) else {
        let message = format!("request.object must be a {} object", handled.summary.kind);
        return handled.refuse(ReviewOutcome::Invalid, message);
    };
    let object = match serde_json::from_str::<Value>(object.get()) {
        Ok(object) => object,
        Err(e) => return handled.refuse(ReviewOutcome::Invalid, format!("request.object: {e}")),
    };
    let kind = &handled.request.kind;
    match mutate_object(&object, &kind.group, &kind.kind, policy) {
        Ok(mutated) => {
            let json = match mutated.patch.0.is_empty() {
                true => Ok(None),
                false => serde_json::to_vec(&mutated.patch).map(Some),
            };
            let decided =
                json.and_then(|json| Decision::new(json, mutated.changes, mutated.warnings));
            handled.answer(decided)
        }
        Err(e) => handled.refuse(ReviewOutcome::Denied, e.to_string()),
    }
}

/// A review whose object must be looked at: a kind and operation the webhook mutates.
struct Handled<O> {
    api_version: Option<String>,
    request: RequestIn<O>,
    summary: Summary,
}

/// What every review goes through before its object: it breaks with the answer for one that
/// has no request, or that the webhook leaves alone.
fn triage<O>(parsed: ReviewIn<O>) -> ControlFlow<Reviewed, Handled<O>> {
    let Some(request) = parsed.request else {
        return ControlFlow::Break(invalid(
            parsed.api_version,
            String::new(),
            "AdmissionReview has no request".into(),
            Summary::default(),
        ));
    };
    let summary = Summary {
        uid: request.uid.clone(),
        kind: request.kind.kind.clone(),
        operation: request.operation.clone(),
        namespace: request.namespace.clone().unwrap_or_default(),
        name: request.name.clone().unwrap_or_default(),
    };
    let subresource = request
        .sub_resource
        .as_deref()
        .is_some_and(|s| !s.is_empty());
    let kind = (
        request.kind.group.as_str(),
        request.kind.kind.as_str(),
        request.operation.as_str(),
    );
    // Pods on CREATE (the safety net for pods made from templates the webhook never saw);
    // the pod templates of the workloads Jellyfin runs as, on CREATE and UPDATE, so that their
    // pods are complete at birth even when the webhook cannot be reached then.
    let mutates = match kind {
        _ if subresource => false,
        ("", "Pod", operation) => operation == "CREATE",
        ("apps", "Deployment" | "StatefulSet", operation) => {
            matches!(operation, "CREATE" | "UPDATE")
        }
        _ => false,
    };
    let handled = Handled {
        api_version: parsed.api_version,
        request,
        summary,
    };
    match mutates {
        true => ControlFlow::Continue(handled),
        false => ControlFlow::Break(handled.answer(Ok(Decision::default()))),
    }
}

impl<O> Handled<O> {
    fn is_pod(&self) -> bool {
        let kind = &self.request.kind;
        kind.group.is_empty() && kind.kind == "Pod"
    }

    fn answer(self, decided: serde_json::Result<Decision>) -> Reviewed {
        let decision = match decided {
            Ok(decision) => decision,
            Err(e) => {
                let message = format!("cannot encode patch: {e}");
                return self.refuse(ReviewOutcome::Invalid, message);
            }
        };
        let outcome = match decision.patch {
            Some(_) => ReviewOutcome::Mutated,
            None => ReviewOutcome::Unchanged,
        };
        let response = Response {
            uid: self.request.uid,
            allowed: true,
            patch_type: decision.patch.as_ref().map(|_| "JSONPatch"),
            patch: decision.patch,
            warnings: decision.warnings,
            status: None,
        };
        Reviewed {
            review: reply(self.api_version, response),
            outcome,
            summary: self.summary,
            changes: decision.changes.iter().map(Change::record_key).collect(),
        }
    }

    fn refuse(self, outcome: ReviewOutcome, message: String) -> Reviewed {
        let uid = self.request.uid;
        refuse(outcome, self.api_version, uid, message, self.summary)
    }
}
/// What either engine decided, the patch ready for the response and `None` when nothing
/// changes.
#[derive(Default)]
struct Decision {
    patch: Option<Box<RawValue>>,
    changes: Vec<Change>,
    warnings: Vec<String>,
}

impl Decision {
    /// `json` is the JSON patch, `None` when nothing changes.
    fn new(
        json: Option<Vec<u8>>,
        changes: Vec<Change>,
        warnings: Vec<String>,
    ) -> serde_json::Result<Self> {
        // Base64 straight into the JSON string: it needs no escaping, so the response copies
        // it as is.
        let patch = json.map(|json| {
            let base64 = &base64::engine::general_purpose::STANDARD;
            let mut quoted = String::with_capacity(json.len().div_ceil(3) * 4 + 2);
            quoted.push('"');
            base64.encode_string(&json, &mut quoted);
            quoted.push('"');
            RawValue::from_string(quoted)
        });
        Ok(Self {
            patch: patch.transpose()?,
            changes,
            warnings,
        })
    }
}
