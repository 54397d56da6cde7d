//! DRM client usage stats as the kernel writes them in `/proc/<pid>/fdinfo/<fd>`
//! (`Documentation/gpu/drm-usage-stats.rst`), for the two Intel drivers.
//!
//! i915 counts busy time: `drm-engine-<class>: <ns> ns` for `render`, `copy`, `video`,
//! `video-enhance`, `compute`. xe counts GPU cycles: `drm-cycles-<class>` over the GPU
//! timestamp `drm-total-cycles-<class>` for `rcs`, `bcs`, `vcs`, `vecs`, `ccs`. Both print
//! `drm-engine-capacity-<class>` only when an engine class has more than one instance.

use std::collections::BTreeMap;

/// The engine classes each driver reports, so that an idle class still shows as 0.
pub fn engine_classes(driver: &str) -> &'static [&'static str] {
    match driver {
        "i915" => &["render", "copy", "video", "video-enhance", "compute"],
        "xe" => &["rcs", "bcs", "vcs", "vecs", "ccs"],
        _ => &[],
    }
}

/// The counter an engine class exposes, as the driver writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineCounter {
    /// i915: nanoseconds the client kept the engine class busy.
    BusyNs(u64),
    /// xe: cycles the client kept the engine class busy, and the GPU's cycle count beside it.
    Cycles { busy: u64, total: u64 },
}

/// One engine class of one client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineUsage {
    pub counter: EngineCounter,
    /// Engines of this class; a client can keep each one busy, so the ratio divides by it.
    pub capacity: u32,
}

/// What one DRM file descriptor says about its client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrmClient {
    /// `drm-driver`: `i915`, `xe`.
    pub driver: String,
    /// `drm-pdev`: the PCI address, when the driver prints it.
    pub pdev: Option<String>,
    /// `drm-client-id`: unique per device while the client lives; several fds, even in
    /// several processes, can share one.
    pub client_id: u64,
    /// Per engine class, named as the driver names it.
    pub engines: BTreeMap<String, EngineUsage>,
}

/// Parses one fdinfo file. `None` when it is not a DRM client with usage stats: another kind
/// of fd, a driver without `drm-client-id`, or text cut short because the process exited.
/// Lines that do not parse are skipped, as the spec asks of readers.
pub fn parse(text: &str) -> Option<DrmClient> {
    let mut driver = None;
    let mut pdev = None;
    let mut client_id = None;
    let mut busy_ns = BTreeMap::<&str, u64>::new();
    let mut cycles = BTreeMap::<&str, u64>::new();
    let mut total_cycles = BTreeMap::<&str, u64>::new();
    let mut capacity = BTreeMap::<&str, u32>::new();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if let Some(class) = key.strip_prefix("drm-engine-capacity-") {
            if let Ok(n) = value.parse::<u32>() {
                capacity.insert(class, n.max(1));
            }
        } else if let Some(class) = key.strip_prefix("drm-engine-") {
            if let Some(ns) = value.strip_suffix("ns").and_then(|v| v.trim().parse().ok()) {
                busy_ns.insert(class, ns);
            }
        } else if let Some(class) = key.strip_prefix("drm-total-cycles-") {
            if let Ok(n) = value.parse() {
                total_cycles.insert(class, n);
            }
        } else if let Some(class) = key.strip_prefix("drm-cycles-") {
            if let Ok(n) = value.parse() {
                cycles.insert(class, n);
            }
        } else {
            match key {
                "drm-driver" if !value.is_empty() => driver = Some(value.to_string()),
                "drm-pdev" if !value.is_empty() => pdev = Some(value.to_string()),
                "drm-client-id" => client_id = value.parse().ok(),
                _ => {}
            }
        }
    }
    let capacity_of = |class: &str| capacity.get(class).copied().unwrap_or(1);
    let mut engines = BTreeMap::new();
    for (class, ns) in busy_ns {
        let usage = EngineUsage {
            counter: EngineCounter::BusyNs(ns),
            capacity: capacity_of(class),
        };
        engines.insert(class.to_string(), usage);
    }
    for (class, busy) in cycles {
        // Cycles without the total they are measured against say nothing.
        let Some(&total) = total_cycles.get(class) else {
            continue;
        };
        let usage = EngineUsage {
            counter: EngineCounter::Cycles { busy, total },
            capacity: capacity_of(class),
        };
        engines.insert(class.to_string(), usage);
    }
    Some(DrmClient {
        driver: driver?,
        pdev,
        client_id: client_id?,
        engines,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_text_that_is_not_a_drm_client() {
        assert_eq!(
            parse("pos:\t0\nflags:\t02\nmnt_id:\t15\nino:\t1057\n"),
            None
        );
        assert_eq!(parse(""), None);
        // Cut short before drm-client-id: the process exited mid-read.
        assert_eq!(parse("pos:\t0\ndrm-driver:\ti915\ndrm-pd"), None);
    }

    #[test]
    fn a_capacity_of_zero_counts_as_one() {
        let client = parse(
            "drm-driver:\ti915\ndrm-client-id:\t1\ndrm-engine-video:\t5 ns\ndrm-engine-capacity-video:\t0\n",
        )
        .unwrap();
        assert_eq!(client.engines["video"].capacity, 1);
    }
}
