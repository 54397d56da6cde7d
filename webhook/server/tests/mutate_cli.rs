//! `jellyfin-ha mutate` as a user runs it: exit codes, stdout, stderr.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::io::Write;
use std::process::{Command, Output, Stdio};

const EXAMPLE: &str = include_str!("../../../manifests/example/jellyfin.yaml");

fn mutate(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_jellyfin-ha"))
        .arg("mutate")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn example_manifests_come_out_mutated_in_order() {
    let output = mutate(&["-f", "-"], EXAMPLE);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let kinds: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("kind: "))
        .collect();
    assert_eq!(
        kinds,
        [
            "Namespace",
            "PersistentVolumeClaim",
            "Deployment",
            "Service"
        ]
    );
    assert!(stdout.contains("jellyfin-ha.io/mutations:"), "{stdout}");
}

#[test]
fn warnings_go_to_stderr_and_output_stays_parseable() {
    let pod = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: jf\n  annotations:\n    jellyfin-ha.io/inject: 'true'\n    jellyfin-ha.io/gpu: hostpath\nspec:\n  containers:\n  - name: jellyfin\n    image: j\n";
    let output = mutate(&["-f", "-", "-o", "json"], pod);
    assert!(output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("warning: document 1 (Pod jf): container \"jellyfin\" is not privileged"),
        "{stderr}"
    );
    let value: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(value["spec"]["volumes"][0]["hostPath"]["path"], "/dev/dri");
}

#[test]
fn malformed_input_exits_non_zero_naming_the_document() {
    let output = mutate(
        &["-f", "-"],
        &format!("{EXAMPLE}---\nkind: Pod\nspec: [unclosed\n"),
    );
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.starts_with("error: document 5"), "{stderr}");
    assert!(output.stdout.is_empty(), "nothing half-written to stdout");
}

#[test]
fn missing_file_is_a_clear_error() {
    let output = mutate(&["-f", "/nonexistent/jellyfin.yaml"], "");
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent/jellyfin.yaml"));
}

#[test]
fn unknown_output_format_is_refused_by_the_parser() {
    let output = mutate(&["-f", "-", "-o", "xml"], EXAMPLE);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("yaml, json, patch, diff"));
}

const OPTED_IN_POD: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: jf\n  annotations:\n    jellyfin-ha.io/inject: 'true'\nspec:\n  containers:\n  - name: jellyfin\n    image: j\n";

/// `--scheduling` says what the ConfigMap jellyfin-ha-scheduling would, and the pod comes out
/// as the webhook would store it under each.
#[test]
fn scheduling_is_chosen_as_the_configmap_would_say() {
    let pod_for = |scheduling: &str| {
        let output = mutate(
            &["-f", "-", "-o", "json", "--scheduling", scheduling],
            OPTED_IN_POD,
        );
        assert!(
            output.status.success(),
            "{scheduling}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&output.stdout).unwrap()
    };
    let marker = |pod: &serde_json::Value| {
        pod["spec"]["containers"][0]["resources"]["requests"]["jellyfin-ha.io/managed"].clone()
    };
    let none = pod_for("none");
    assert!(
        marker(&none).is_null() && none["spec"]["schedulerName"].is_null(),
        "{none}"
    );
    assert_eq!(marker(&pod_for("extender")), "1");
    let second = pod_for("scheduler:jellyfin-ha");
    assert_eq!(second["spec"]["schedulerName"], "jellyfin-ha");
    assert!(marker(&second).is_null(), "{second}");
    assert_eq!(pod_for("none"), mutate_default(), "none is the default");

    for bad in ["Extender", "scheduler:", "scheduler:Bad_Name"] {
        let output = mutate(&["-f", "-", "--scheduling", bad], OPTED_IN_POD);
        assert_eq!(output.status.code(), Some(2), "{bad}: clap refuses it");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("--scheduling"), "{bad}: {stderr}");
    }
}

fn mutate_default() -> serde_json::Value {
    let output = mutate(&["-f", "-", "-o", "json"], OPTED_IN_POD);
    serde_json::from_slice(&output.stdout).unwrap()
}
