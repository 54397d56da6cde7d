//! The `admission.k8s.io/v1` wire format and the thin adapter from a review body to the pure
//! mutation in core.
//!
//! The response is written by hand rather than with kube-core's type because kube-core
//! serialises `patch` as an array of numbers; kube-apiserver expects base64 of the JSON patch.

use std::borrow::Cow;
use std::fmt;
use std::ops::ControlFlow;

use base64::Engine;
use jellyfin_ha_core::pod_patch::{PodFields, patch_pod};
use jellyfin_ha_core::{Change, Policy, json_text, mutate_object};
use serde::de::value::MapAccessDeserializer;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

const API_VERSION: &str = "admission.k8s.io/v1";

/// An AdmissionReview with its `request.object` read as `O`, its text borrowed from the body
/// where it has no escapes. A missing `Option` field reads as `None`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReviewIn<'a, O> {
    #[serde(borrow)]
    api_version: Option<Text<'a>>,
    #[serde(borrow)]
    request: Option<RequestIn<'a, O>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RequestIn<'a, O> {
    #[serde(borrow)]
    uid: Cow<'a, str>,
    #[serde(borrow)]
    kind: GroupVersionKind<'a>,
    #[serde(borrow)]
    operation: Cow<'a, str>,
    #[serde(borrow)]
    sub_resource: Option<Text<'a>>,
    #[serde(borrow)]
    namespace: Option<Text<'a>>,
    #[serde(borrow)]
    name: Option<Text<'a>>,
    object: Option<O>,
}

/// Text read in place unless it carries JSON escapes. serde borrows into a `Cow` only when the
/// field is one, not into a `Cow` inside an `Option`; optional text goes through this.
#[derive(Debug, Deserialize)]
#[serde(transparent)]
struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

fn text(field: Option<Text<'_>>) -> Option<Cow<'_, str>> {
    field.map(|text| text.0)
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
struct GroupVersionKind<'a> {
    #[serde(borrow, default)]
    group: Cow<'a, str>,
    #[serde(borrow, default)]
    kind: Cow<'a, str>,
}

#[derive(Debug)]
pub struct ReviewOut<'a> {
    api_version: Cow<'a, str>,
    pub response: Response<'a>,
}

#[derive(Debug, Default)]
pub struct Response<'a> {
    pub uid: Cow<'a, str>,
    pub allowed: bool,
    pub status: Option<Status>,
    /// The RFC 6902 JSON patch, `None` when nothing changes; sent as base64.
    pub patch: Option<Vec<u8>>,
    pub warnings: Vec<String>,
}

impl ReviewOut<'_> {
    /// The review as the JSON text kube-apiserver reads. Written here rather than derived: the
    /// patch goes out as base64, which serde would either scan for escapes or check again as a
    /// `RawValue`, on every admitted Pod.
    pub fn to_json(&self) -> Vec<u8> {
        let response = &self.response;
        let patch = response
            .patch
            .as_ref()
            .map(|patch| base64::engine::general_purpose::STANDARD.encode(patch));
        let patch_len = patch.as_ref().map_or(0, String::len);
        let mut out = Vec::with_capacity(256 + patch_len);
        out.extend_from_slice(br#"{"apiVersion":"#);
        json_text::write(&mut out, &self.api_version);
        out.extend_from_slice(br#","kind":"AdmissionReview","response":{"uid":"#);
        json_text::write(&mut out, &response.uid);
        out.extend_from_slice(match response.allowed {
            true => br#","allowed":true"#,
            false => br#","allowed":false"#,
        });
        if let Some(status) = &response.status {
            out.extend_from_slice(br#","status":"#);
            json_text::write(&mut out, status);
        }
        if let Some(patch) = &patch {
            // The base64 alphabet needs no JSON escapes.
            out.extend_from_slice(br#","patch":""#);
            out.extend_from_slice(patch.as_bytes());
            out.extend_from_slice(br#"","patchType":"JSONPatch""#);
        }
        if !response.warnings.is_empty() {
            out.extend_from_slice(br#","warnings":"#);
            json_text::write(&mut out, &response.warnings);
        }
        out.extend_from_slice(b"}}");
        out
    }
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
pub struct Summary<'a> {
    pub uid: Cow<'a, str>,
    pub kind: Cow<'a, str>,
    pub operation: Cow<'a, str>,
    pub namespace: Cow<'a, str>,
    pub name: Cow<'a, str>,
}

/// The answer to one review, borrowing from its body.
pub struct Reviewed<'a> {
    pub review: ReviewOut<'a>,
    pub outcome: ReviewOutcome,
    pub summary: Summary<'a>,
    /// What a mutation changed, as the `jellyfin-ha.io/mutations` annotation keys it.
    pub changes: Vec<&'static str>,
}

fn reply<'a>(api_version: Option<Cow<'a, str>>, response: Response<'a>) -> ReviewOut<'a> {
    // Answer in the version asked; the apiserver rejects a mismatch.
    let api_version = api_version
        .filter(|v| v.starts_with("admission.k8s.io/"))
        .unwrap_or(Cow::Borrowed(API_VERSION));
    ReviewOut {
        api_version,
        response,
    }
}

/// A refusal: `Denied` for an object the webhook cannot mutate, `Invalid` for a body that is
/// not a usable review.
fn refuse<'a>(
    outcome: ReviewOutcome,
    api_version: Option<Cow<'a, str>>,
    uid: Cow<'a, str>,
    message: String,
    summary: Summary<'a>,
) -> Reviewed<'a> {
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

fn invalid<'a>(
    api_version: Option<Cow<'a, str>>,
    uid: Cow<'a, str>,
    message: String,
    summary: Summary<'a>,
) -> Reviewed<'a> {
    refuse(ReviewOutcome::Invalid, api_version, uid, message, summary)
}

/// Answers one review body. Every input gets an answer; nothing here panics or does IO.
pub fn review<'a>(body: &'a [u8], policy: &Policy) -> Reviewed<'a> {
    // Checked once whole, so that the parser does not check each string again.
    let body = match std::str::from_utf8(body) {
        Ok(body) => body,
        Err(e) => {
            let message = format!("cannot parse AdmissionReview: not UTF-8: {e}");
            return invalid(None, Cow::Borrowed(""), message, Summary::default());
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
                    return handled.answer(Decision {
                        patch: (!fast.patch.is_empty()).then(|| fast.patch.into_json()),
                        changes: fast.changes,
                        warnings: fast.warnings,
                    });
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
                Cow::Borrowed(""),
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
            let patch = match mutated.patch.0.is_empty() {
                true => None,
                false => match serde_json::to_vec(&mutated.patch) {
                    Ok(json) => Some(json),
                    Err(e) => {
                        let message = format!("cannot encode patch: {e}");
                        return handled.refuse(ReviewOutcome::Invalid, message);
                    }
                },
            };
            handled.answer(Decision {
                patch,
                changes: mutated.changes,
                warnings: mutated.warnings,
            })
        }
        Err(e) => handled.refuse(ReviewOutcome::Denied, e.to_string()),
    }
}

/// A review whose object must be looked at: a kind and operation the webhook mutates.
struct Handled<'a, O> {
    api_version: Option<Cow<'a, str>>,
    request: RequestIn<'a, O>,
    summary: Summary<'a>,
}

/// What every review goes through before its object: it breaks with the answer for one that
/// has no request, or that the webhook leaves alone.
fn triage<'a, O>(parsed: ReviewIn<'a, O>) -> ControlFlow<Reviewed<'a>, Handled<'a, O>> {
    let Some(mut request) = parsed.request else {
        return ControlFlow::Break(invalid(
            text(parsed.api_version),
            Cow::Borrowed(""),
            "AdmissionReview has no request".into(),
            Summary::default(),
        ));
    };
    let summary = Summary {
        uid: request.uid.clone(),
        kind: request.kind.kind.clone(),
        operation: request.operation.clone(),
        namespace: text(request.namespace.take()).unwrap_or_default(),
        name: text(request.name.take()).unwrap_or_default(),
    };
    let subresource = request
        .sub_resource
        .as_ref()
        .is_some_and(|s| !s.0.is_empty());
    let kind = (
        request.kind.group.as_ref(),
        request.kind.kind.as_ref(),
        request.operation.as_ref(),
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
        api_version: text(parsed.api_version),
        request,
        summary,
    };
    match mutates {
        true => ControlFlow::Continue(handled),
        false => ControlFlow::Break(handled.answer(Decision::default())),
    }
}

impl<'a, O> Handled<'a, O> {
    fn is_pod(&self) -> bool {
        let kind = &self.request.kind;
        kind.group.is_empty() && kind.kind == "Pod"
    }

    fn answer(self, decision: Decision) -> Reviewed<'a> {
        let outcome = match decision.patch {
            Some(_) => ReviewOutcome::Mutated,
            None => ReviewOutcome::Unchanged,
        };
        let response = Response {
            uid: self.request.uid,
            allowed: true,
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

    fn refuse(self, outcome: ReviewOutcome, message: String) -> Reviewed<'a> {
        let uid = self.request.uid;
        refuse(outcome, self.api_version, uid, message, self.summary)
    }
}
/// What either engine decided, `patch` `None` when nothing changes.
#[derive(Default)]
struct Decision {
    patch: Option<Vec<u8>>,
    changes: Vec<Change>,
    warnings: Vec<String>,
}
