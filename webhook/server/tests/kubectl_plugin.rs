//! The binary as the kubectl plugin `kubectl jellyfin-ha`: installed on PATH under the name
//! kubectl looks for, and run by a real kubectl.
//!
//! Ignored by default: it needs `kubectl` on PATH. `hack/image.sh test` runs it with
//! `--ignored` after `eval "$(hack/envtest.sh env)"`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::ffi::OsString;
use std::path::Path;
use std::process::{Command, Output};

const EXAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../manifests/example/jellyfin.yaml"
);

/// A directory holding the binary under the plugin's name, and a PATH that finds it first.
struct Plugin {
    _dir: tempfile::TempDir,
    path: OsString,
}

fn install() -> Plugin {
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(
        env!("CARGO_BIN_EXE_jellyfin-ha"),
        dir.path().join("kubectl-jellyfin_ha"),
    )
    .unwrap();
    let inherited = std::env::var_os("PATH").unwrap_or_default();
    let path = std::env::join_paths(
        std::iter::once(dir.path().to_path_buf()).chain(std::env::split_paths(&inherited)),
    )
    .unwrap();
    Plugin { _dir: dir, path }
}

fn kubectl(plugin: &Plugin, args: &[&str]) -> Output {
    Command::new("kubectl")
        .env("PATH", &plugin.path)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("running kubectl ({e}); put it on PATH: eval \"$(hack/envtest.sh env)\"")
        })
}

fn stdout_of(output: Output) -> String {
    assert!(
        output.status.success(),
        "{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[test]
#[ignore = "needs kubectl on PATH; run by hack/image.sh test"]
fn kubectl_runs_mutate_as_the_binary_does() {
    let plugin = install();
    let through_kubectl = stdout_of(kubectl(
        &plugin,
        &["jellyfin-ha", "mutate", "-f", EXAMPLE, "-o", "json"],
    ));
    let direct = stdout_of(
        Command::new(env!("CARGO_BIN_EXE_jellyfin-ha"))
            .args(["mutate", "-f", EXAMPLE, "-o", "json"])
            .output()
            .unwrap(),
    );
    assert_eq!(through_kubectl, direct);
    assert!(
        through_kubectl.contains("jellyfin-ha.io/mutations"),
        "{through_kubectl}"
    );
}

#[test]
#[ignore = "needs kubectl on PATH; run by hack/image.sh test"]
fn help_and_errors_name_the_plugin_as_typed() {
    let plugin = install();
    let help = stdout_of(kubectl(&plugin, &["jellyfin-ha", "explain", "--help"]));
    assert!(
        help.contains("Usage: kubectl jellyfin-ha explain [OPTIONS] <POD>"),
        "{help}"
    );
    for flag in ["--kubeconfig", "--context", "--namespace"] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
    let missing = kubectl(&plugin, &["jellyfin-ha", "mutate"]);
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(!missing.status.success());
    assert!(
        stderr.contains("Usage: kubectl jellyfin-ha mutate"),
        "{stderr}"
    );
}

#[test]
#[ignore = "needs kubectl on PATH; run by hack/image.sh test"]
fn explain_reads_the_kubeconfig_it_is_given() {
    let plugin = install();
    let kubeconfig = Path::new("/nonexistent/jellyfin-ha-test/kubeconfig");
    let output = kubectl(
        &plugin,
        &[
            "jellyfin-ha",
            "explain",
            "jellyfin",
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
        ],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains(kubeconfig.to_str().unwrap()), "{stderr}");
}
