//! Kubernetes label selectors, matched as the apiserver matches them.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Whether `labels` satisfy `selector`: every `matchLabels` pair and every expression. An
/// empty selector matches everything; an unknown operator matches nothing.
pub(super) fn matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let pairs = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let expressions = selector.match_expressions.iter().flatten().all(|e| {
        let value = labels.get(&e.key);
        let listed = || value.is_some_and(|v| e.values.iter().flatten().any(|x| x == v));
        match e.operator.as_str() {
            "In" => listed(),
            "NotIn" => !listed(),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    pairs && expressions
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn selector(value: serde_json::Value) -> LabelSelector {
        serde_json::from_value(value).unwrap()
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn operators_follow_the_apiserver() {
        let ns = labels(&[("kubernetes.io/metadata.name", "media"), ("team", "a")]);
        let not_in = |values: &[&str]| {
            selector(json!({"matchExpressions": [
                {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": values}]}))
        };
        assert!(matches(&not_in(&["kube-system"]), &ns));
        assert!(!matches(&not_in(&["media"]), &ns));
        assert!(matches(
            &selector(json!({"matchLabels": {"team": "a"}})),
            &ns
        ));
        assert!(!matches(
            &selector(json!({"matchLabels": {"team": "b"}})),
            &ns
        ));
        let exists =
            |op: &str| selector(json!({"matchExpressions": [{"key": "own", "operator": op}]}));
        assert!(matches(&exists("DoesNotExist"), &ns));
        assert!(!matches(&exists("Exists"), &ns));
        assert!(!matches(&exists("Bogus"), &ns));
        assert!(matches(&LabelSelector::default(), &ns));
    }
}
