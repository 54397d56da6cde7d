//! The `jellyfin-ha.io/mutations` annotation: a stable, sorted `key=value; ...` summary of
//! everything the webhook changed, readable in `kubectl get -o yaml`.

use std::collections::BTreeMap;

use crate::pod_template::Change;

const SEPARATOR: &str = "; ";

/// Merges `changes` into an existing record. Keys keep their latest value, so a second pass
/// that changes nothing leaves the record as it was.
pub fn merge(existing: Option<&str>, changes: &[Change]) -> String {
    let mut entries = parse(existing.unwrap_or_default());
    for change in changes {
        entries.insert(change.record_key().to_string(), change.record_value());
    }
    entries
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(SEPARATOR)
}

/// Reads a record back; entries without `=` are ignored.
pub fn parse(record: &str) -> BTreeMap<String, String> {
    record
        .split(SEPARATOR.trim())
        .filter_map(|entry| entry.trim().split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_is_sorted_and_stable() {
        let first = merge(
            None,
            &[
                Change::TerminationGrace(15),
                Change::GpuResource("gpu.intel.com/i915".into()),
            ],
        );
        assert_eq!(first, "igpu=gpu.intel.com/i915; termination-grace=15s");
        assert_eq!(merge(Some(&first), &[]), first);
    }

    #[test]
    fn later_values_win() {
        let merged = merge(
            Some("failover-tolerations=15s; other=kept"),
            &[Change::FailoverTolerations(5)],
        );
        assert_eq!(merged, "failover-tolerations=5s; other=kept");
    }
}
