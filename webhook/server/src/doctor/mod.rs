//! `jellyfin-ha doctor [-n NAMESPACE] [WORKLOAD] [-o table|json]`: reads the live cluster and
//! jellyfin-ha's own components, and prints one line per check with its verdict, what it saw
//! and the fix. Exits non-zero when any check fails. Read-only: the checks are
//! `jellyfin_ha_core::doctor`'s; this module only gathers their snapshot.

mod gather;

use std::fmt::Write as _;
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use jellyfin_ha_core::doctor::{self, Report};

use crate::kubeconfig::KubeArgs;

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// The Deployment or StatefulSet to check; every opted-in one in the namespace otherwise.
    pub workload: Option<String>,
    #[command(flatten)]
    pub kube: KubeArgs,
    /// A table, one line per check, or the whole report as JSON.
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: DoctorOutput,
    /// jellyfin-ha's config file; otherwise the ConfigMap jellyfin-ha-config in the install
    /// namespace.
    #[arg(long, env = "JELLYFIN_HA_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub install: crate::cli::InstallNamespace,
    /// Check only the nodes with these labels (a label selector, as kubectl -l takes it).
    #[arg(short = 'l', long = "node-selector", env = "JELLYFIN_HA_NODE_SELECTOR")]
    pub node_selector: Option<String>,
    /// The fencer's leader Lease, in the install namespace.
    #[arg(
        long,
        env = "JELLYFIN_HA_FENCER_LEASE",
        default_value = crate::fencer::LEADER_LEASE
    )]
    pub fencer_lease: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DoctorOutput {
    Table,
    Json,
}

/// Runs every check and prints the report; an error when a check failed, so the command
/// exits non-zero.
pub async fn run(args: DoctorArgs) -> anyhow::Result<()> {
    let client = args.kube.client().await?;
    let snapshot = gather::snapshot(&client, &args).await?;
    let report = doctor::diagnose(&snapshot);
    match args.output {
        DoctorOutput::Table => print!("{}", render(&report)),
        DoctorOutput::Json => println!("{}", serde_json::to_string_pretty(&report)?),
    }
    let failed = report.of_verdict(doctor::Verdict::Fail).count();
    if failed > 0 {
        anyhow::bail!("{failed} check(s) failed");
    }
    Ok(())
}

/// One line per finding: verdict, check, subject, what it saw, then the fix.
pub fn render(report: &Report) -> String {
    let width = |column: fn(&doctor::Finding) -> usize| {
        report.findings.iter().map(column).max().unwrap_or(0)
    };
    let check_width = width(|f| f.check.len());
    let mut out = String::new();
    for finding in &report.findings {
        let subject = if finding.subject.is_empty() {
            String::new()
        } else {
            format!("{}: ", finding.subject)
        };
        let fix = if finding.fix.is_empty() {
            String::new()
        } else {
            format!(" -> fix: {}", finding.fix)
        };
        let _ = writeln!(
            out,
            "{:<4}  {:<check_width$}  {subject}{}{fix}",
            finding.verdict.as_str(),
            finding.check,
            finding.saw,
        );
    }
    let count = |v| report.of_verdict(v).count();
    let _ = writeln!(
        out,
        "{} ok, {} warn, {} fail",
        count(doctor::Verdict::Ok),
        count(doctor::Verdict::Warn),
        count(doctor::Verdict::Fail)
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use jellyfin_ha_core::doctor::Finding;

    #[test]
    fn one_line_per_finding_with_its_fix_and_a_tally() {
        let report = Report {
            findings: vec![
                Finding::ok("cluster/version", "", "Kubernetes v1.33.1"),
                Finding::fail(
                    "workload/strategy",
                    "Deployment/jellyfin",
                    "RollingUpdate with a ReadWriteOnce claim",
                    "set Recreate",
                ),
            ],
        };
        assert_eq!(
            render(&report),
            "ok    cluster/version    Kubernetes v1.33.1\n\
             fail  workload/strategy  Deployment/jellyfin: RollingUpdate with a ReadWriteOnce \
             claim -> fix: set Recreate\n\
             1 ok, 0 warn, 1 fail\n"
        );
    }
}
