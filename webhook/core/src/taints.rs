//! Node taints this project reasons about, and how a toleration matches a taint.

use k8s_openapi::api::core::v1::{Taint, Toleration};

pub const NOT_READY: &str = "node.kubernetes.io/not-ready";
pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
/// Non-graceful node shutdown: PodGC force-deletes pods and volumes detach at once.
pub const OUT_OF_SERVICE: &str = "node.kubernetes.io/out-of-service";
pub const NO_EXECUTE: &str = "NoExecute";
pub const NO_SCHEDULE: &str = "NoSchedule";

/// The taint the fencer puts on a node it has proven dead.
pub fn out_of_service() -> Taint {
    Taint {
        key: OUT_OF_SERVICE.to_string(),
        value: Some("nodeshutdown".to_string()),
        effect: NO_EXECUTE.to_string(),
        time_added: None,
    }
}

/// Whether `toleration` tolerates `taint`, by the rules of `k8s.io/api/core/v1.Toleration`:
/// an empty effect matches every effect, an empty key with `Exists` matches every key, and
/// `Equal` (the default operator) compares values.
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    let effect = toleration.effect.as_deref().unwrap_or_default();
    if !effect.is_empty() && effect != taint.effect {
        return false;
    }
    let key = toleration.key.as_deref().unwrap_or_default();
    let exists = toleration.operator.as_deref() == Some("Exists");
    if key.is_empty() {
        return exists;
    }
    if key != taint.key {
        return false;
    }
    exists
        || toleration.value.as_deref().unwrap_or_default()
            == taint.value.as_deref().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn toleration(
        key: Option<&str>,
        operator: Option<&str>,
        value: Option<&str>,
        effect: Option<&str>,
    ) -> Toleration {
        Toleration {
            key: key.map(Into::into),
            operator: operator.map(Into::into),
            value: value.map(Into::into),
            effect: effect.map(Into::into),
            toleration_seconds: None,
        }
    }

    #[rstest]
    #[case::keyless_exists(toleration(None, Some("Exists"), None, None), true)]
    #[case::keyless_exists_noexecute(
        toleration(None, Some("Exists"), None, Some("NoExecute")),
        true
    )]
    #[case::keyless_exists_noschedule(
        toleration(None, Some("Exists"), None, Some("NoSchedule")),
        false
    )]
    #[case::keyless_equal(toleration(None, None, None, None), false)]
    #[case::key_exists(toleration(Some(OUT_OF_SERVICE), Some("Exists"), None, None), true)]
    #[case::key_equal_value(
        toleration(Some(OUT_OF_SERVICE), Some("Equal"), Some("nodeshutdown"), None),
        true
    )]
    #[case::key_default_operator(
        toleration(Some(OUT_OF_SERVICE), None, Some("nodeshutdown"), None),
        true
    )]
    #[case::key_wrong_value(
        toleration(Some(OUT_OF_SERVICE), Some("Equal"), Some("other"), None),
        false
    )]
    #[case::other_key(toleration(Some(NOT_READY), Some("Exists"), None, None), false)]
    fn matches_out_of_service_taint(#[case] t: Toleration, #[case] expected: bool) {
        assert_eq!(tolerates(&t, &out_of_service()), expected);
    }
}
