//! Fixtures and generators shared by the mutation tests (each test crate uses a subset).

#![allow(dead_code)]

use proptest::prelude::*;
use serde_json::{Value, json};

pub const DEFAULTED_POD: &str = include_str!("../fixtures/pod-defaulted.json");
pub const DEPLOYMENT: &str = include_str!("../fixtures/deployment.yaml");
pub const LONG_GRACE_DEPLOYMENT: &str = include_str!("../fixtures/deployment-long-grace.yaml");

pub fn optional<T: Clone + std::fmt::Debug + 'static>(
    values: &'static [T],
) -> impl Strategy<Value = Option<T>> {
    prop::option::of(prop::sample::select(values))
}

pub fn toleration() -> impl Strategy<Value = Value> {
    let keys = &[
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
        "node.kubernetes.io/out-of-service",
        "dedicated",
        "",
    ];
    (
        optional(keys),
        optional(&["Exists", "Equal"]),
        optional(&["NoExecute", "NoSchedule", ""]),
        prop::option::of(0i64..400),
    )
        .prop_map(|(key, operator, effect, seconds)| {
            let mut t = json!({});
            if let Some(k) = key {
                t["key"] = json!(k)
            }
            if let Some(o) = operator {
                t["operator"] = json!(o)
            }
            if let Some(e) = effect {
                t["effect"] = json!(e)
            }
            if let Some(s) = seconds {
                t["tolerationSeconds"] = json!(s)
            }
            t
        })
}
