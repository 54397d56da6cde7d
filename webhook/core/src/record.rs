//! The `jellyfin-ha.io/mutations` annotation: a stable, sorted `key=value; ...` summary of
//! everything the webhook changed, readable in `kubectl get -o yaml`.

use crate::pod_template::Change;

const SEPARATOR: &str = "; ";

/// Merges `changes` into an existing record. Keys keep their latest value, so a second pass
/// that changes nothing leaves the record as it was.
pub fn merge(existing: Option<&str>, changes: &[Change]) -> String {
    let kept = parse(existing.unwrap_or_default()).map(|(key, value)| (key, Entry::Kept(value)));
    let changed = changes.iter().map(|c| (c.record_key(), Entry::Changed(c)));
    // Reversed, so that the stable sort puts the latest entry of each key first and dedup
    // keeps it. A handful of entries: a sorted Vec costs less than a map.
    let mut entries: Vec<(&str, Entry)> = kept.chain(changed).collect();
    entries.reverse();
    entries.sort_by_key(|(key, _)| *key);
    entries.dedup_by_key(|(key, _)| *key);
    let mut record = String::with_capacity(256);
    for (i, (key, entry)) in entries.iter().enumerate() {
        if i > 0 {
            record.push_str(SEPARATOR);
        }
        record.push_str(key);
        record.push('=');
        match entry {
            Entry::Kept(value) => record.push_str(value),
            Entry::Changed(change) => change.write_record_value(&mut record),
        }
    }
    record
}

enum Entry<'a> {
    Kept(&'a str),
    Changed(&'a Change),
}

/// The entries of a record; those without `=` are ignored.
fn parse(record: &str) -> impl Iterator<Item = (&str, &str)> {
    record
        .split(SEPARATOR.trim())
        .filter_map(|entry| entry.trim().split_once('='))
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

    #[test]
    fn the_last_entry_of_a_key_wins() {
        assert_eq!(merge(Some("a=1; b=2; a=3"), &[]), "a=3; b=2");
        let both = [
            Change::DriHostPath,
            Change::GpuResource("gpu.intel.com/xe".into()),
        ];
        assert_eq!(
            merge(Some("igpu=old; igpu=older"), &both),
            "igpu=gpu.intel.com/xe"
        );
    }
}
