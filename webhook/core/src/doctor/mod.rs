//! `jellyfin-ha doctor`: whether a Jellyfin will fail over, how fast, and what to fix, judged
//! from a [`Snapshot`] of the live cluster that the command gathers read-only.
//!
//! Every check is a pure function of the snapshot and returns [`Finding`]s: a verdict, what it
//! saw and the fix in one sentence. Where another role already decides something (what the
//! webhook would change, which node the fencer may fence, how a node's heartbeat is read), the
//! check calls that role's code.

mod cluster;
mod components;
mod estimate;
mod gpu;
mod selector;
pub mod snapshot;
mod storage;
mod workload;

use serde::Serialize;

pub use components::{POD_WEBHOOK, WORKLOAD_WEBHOOK};
pub use snapshot::{
    CONFIG_CONFIGMAP, CONFIG_KEY, CaCertificate, CephDriver, ConfigSource, FenceStatus,
    ServerVersion, Snapshot,
};

/// How a check came out. A `fail` makes the command exit non-zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Ok,
    Warn,
    Fail,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Warn => "warn",
            Self::Fail => "fail",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// `area/check`, e.g. `workload/strategy`.
    pub check: String,
    /// What the finding is about: a node, a workload, a claim; empty for the whole cluster.
    pub subject: String,
    pub verdict: Verdict,
    /// What the check saw.
    pub saw: String,
    /// The fix, in one sentence; empty when there is nothing to fix.
    pub fix: String,
}

impl Finding {
    pub fn ok(check: &str, subject: impl Into<String>, saw: impl Into<String>) -> Self {
        Self::new(Verdict::Ok, check, subject, saw, "")
    }

    pub fn warn(
        check: &str,
        subject: impl Into<String>,
        saw: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self::new(Verdict::Warn, check, subject, saw, fix)
    }

    pub fn fail(
        check: &str,
        subject: impl Into<String>,
        saw: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self::new(Verdict::Fail, check, subject, saw, fix)
    }

    fn new(
        verdict: Verdict,
        check: &str,
        subject: impl Into<String>,
        saw: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self {
            check: check.to_string(),
            subject: subject.into(),
            verdict,
            saw: saw.into(),
            fix: fix.into(),
        }
    }
}

/// Every finding, in the order the checks ran: cluster, GPU, workloads, storage, jellyfin-ha's
/// own components, and the failover estimate last.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    pub findings: Vec<Finding>,
}

impl Report {
    /// Whether any check failed.
    pub fn failed(&self) -> bool {
        self.of_verdict(Verdict::Fail).next().is_some()
    }

    /// The findings with this verdict.
    pub fn of_verdict(&self, verdict: Verdict) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(move |f| f.verdict == verdict)
    }

    /// The findings of one check.
    pub fn of<'a>(&'a self, check: &'a str) -> impl Iterator<Item = &'a Finding> + 'a {
        self.findings.iter().filter(move |f| f.check == check)
    }
}

/// Runs every check over the snapshot.
pub fn diagnose(snapshot: &Snapshot) -> Report {
    let workloads = workload::selected(snapshot);
    let mut findings = Vec::new();
    findings.extend(cluster::check(snapshot));
    findings.extend(gpu::check(snapshot, &workloads));
    findings.extend(workload::check(snapshot, &workloads));
    findings.extend(storage::check(snapshot, &workloads));
    findings.extend(components::check(snapshot));
    findings.extend(estimate::check(snapshot, &workloads));
    Report { findings }
}
