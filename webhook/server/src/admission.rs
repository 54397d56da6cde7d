//! The `admission.k8s.io/v1` wire format and the thin adapter from a review body to the pure
//! mutation in core.
//!
//! The response is written by hand rather than with kube-core's type because kube-core
//! serialises `patch` as an array of numbers; kube-apiserver expects base64 of the JSON patch.

use base64::Engine;
use jellyfin_ha_core::pod_patch::patch_pod;
use jellyfin_ha_core::{Change, Policy, mutate_object};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

const API_VERSION: &str = "admission.k8s.io/v1";

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReviewIn<'a> {
    #[serde(default)]
    api_version: Option<String>,
    #[serde(borrow)]
    request: Option<RequestIn<'a>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RequestIn<'a> {
    uid: String,
    kind: GroupVersionKind,
    operation: String,
    #[serde(default)]
    sub_resource: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    name: Option<String>,
    /// Left as text: a Pod is read straight from it ([`patch_pod`]).
    #[serde(default, borrow)]
    object: Option<&'a RawValue>,
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
    let parsed: ReviewIn = match serde_json::from_slice(body) {
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
    let Some(request) = parsed.request else {
        return invalid(
            parsed.api_version,
            String::new(),
            "AdmissionReview has no request".into(),
            Summary::default(),
        );
    };
    let summary = Summary {
        uid: request.uid.clone(),
        kind: request.kind.kind.clone(),
        operation: request.operation.clone(),
        namespace: request.namespace.clone().unwrap_or_default(),
        name: request.name.clone().unwrap_or_default(),
    };
    let uid = request.uid.clone();
    let allowed = |warnings: Vec<String>, patch: Option<Box<RawValue>>| Response {
        uid: uid.clone(),
        allowed: true,
        patch_type: patch.as_ref().map(|_| "JSONPatch"),
        patch,
        warnings,
        status: None,
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
    let handled = match kind {
        _ if subresource => false,
        ("", "Pod", operation) => operation == "CREATE",
        ("apps", "Deployment" | "StatefulSet", operation) => {
            matches!(operation, "CREATE" | "UPDATE")
        }
        _ => false,
    };
    if !handled {
        return unchanged(parsed.api_version, allowed(vec![], None), summary);
    }
    let Some(object) = request
        .object
        .filter(|o| o.get().trim_start().starts_with('{'))
    else {
        let message = format!("request.object must be a {} object", request.kind.kind);
        return invalid(parsed.api_version, request.uid, message, summary);
    };
    let fast = match kind {
        ("", "Pod", _) => patch_pod(object.get(), policy),
        _ => None,
    };
    let decided = match fast {
        Some(fast) => {
            let json = (!fast.patch.is_empty()).then(|| fast.patch.into_json());
            Ok(Decision::new(json, fast.changes, fast.warnings))
        }
        // The typed engine answers what the fast path does not.
        None => match serde_json::from_str::<Value>(object.get()) {
            Ok(object) => {
                let (group, kind) = (&request.kind.group, &request.kind.kind);
                mutate_object(&object, group, kind, policy).map(|mutated| {
                    let json = match mutated.patch.0.is_empty() {
                        true => Ok(None),
                        false => serde_json::to_vec(&mutated.patch).map(Some),
                    };
                    json.and_then(|json| Decision::new(json, mutated.changes, mutated.warnings))
                })
            }
            Err(e) => {
                let message = format!("request.object: {e}");
                return invalid(parsed.api_version, uid, message, summary);
            }
        },
    };
    let decision = match decided {
        Ok(Ok(decision)) => decision,
        Ok(Err(e)) => {
            let message = format!("cannot encode patch: {e}");
            return invalid(parsed.api_version, uid.clone(), message, summary);
        }
        Err(e) => {
            let message = e.to_string();
            return refuse(
                ReviewOutcome::Denied,
                parsed.api_version,
                uid,
                message,
                summary,
            );
        }
    };
    let Some(patch) = decision.patch else {
        let response = allowed(decision.warnings, None);
        return unchanged(parsed.api_version, response, summary);
    };
    Reviewed {
        review: reply(parsed.api_version, allowed(decision.warnings, Some(patch))),
        outcome: ReviewOutcome::Mutated,
        summary,
        changes: decision.changes.iter().map(Change::record_key).collect(),
    }
}

/// What either engine decided, the patch ready for the response and `None` when nothing
/// changes.
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

fn unchanged(api_version: Option<String>, response: Response, summary: Summary) -> Reviewed {
    Reviewed {
        review: reply(api_version, response),
        outcome: ReviewOutcome::Unchanged,
        summary,
        changes: Vec::new(),
    }
}
