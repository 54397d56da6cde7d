//! The Proxmox VE fence device against a local PVE API. Debian's `fence_pve` drives the same
//! fake first: what it accepts is the API shape the real PVE has.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod support;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use axum::http::Method;
use jellyfin_ha::fencer::agent::{AgentError, Credentials, FenceAgent};
use jellyfin_ha::fencer::proxmox::{MAX_BODY_BYTES, ProxmoxVmAgent};
use jellyfin_ha_core::fencing::PowerState;
use jellyfin_ha_core::fencing::config::{ProxmoxAgent, ProxmoxVm};
use serde_json::Value;
use support::pve::{
    Auth, Endpoint, FakePve, PveConfig, ROOT, ROOT_PASSWORD, TOKEN_ID, TOKEN_SECRET, Vm,
};
use tokio::io::AsyncWriteExt;

const FENCE_PVE: &str = "/usr/sbin/fence_pve";

/// Every call of our client gives up after this.
const TIMEOUT: Duration = Duration::from_secs(1);

fn config(vms: Vec<Vm>) -> PveConfig {
    PveConfig {
        vms,
        ..PveConfig::default()
    }
}

struct FenceRun {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `fence_pve` with `options` on stdin, as Pacemaker and medik8s FAR do.
async fn fence_pve(fake: &FakePve, options: &[(&str, &str)]) -> FenceRun {
    assert!(
        Path::new(FENCE_PVE).exists(),
        "{FENCE_PVE} is missing: apt-get install fence-agents"
    );
    let port = fake.addr.port().to_string();
    let mut stdin = format!(
        "ip=127.0.0.1\nipport={port}\nssl_insecure=1\nusername={ROOT}\npassword={ROOT_PASSWORD}\n"
    );
    for (key, value) in options {
        stdin.push_str(&format!("{key}={value}\n"));
    }
    let mut child = tokio::process::Command::new(FENCE_PVE)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .await
        .unwrap();
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("fence_pve ran for over 60 s")
        .unwrap();
    let run = FenceRun {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    assert!(
        !run.stderr.contains("No module named"),
        "fence_pve cannot run: apt-get install fence-agents (it brings python3-pycurl): {}",
        run.stderr
    );
    run
}

fn paths(fake: &FakePve, method: &Method) -> Vec<String> {
    fake.log()
        .into_iter()
        .filter(|r| r.method == *method)
        .map(|r| r.path)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fence_pve_logs_in_with_a_ticket_and_reads_a_running_vm_as_on() {
    let fake = FakePve::start(config(vec![Vm::running(101, "pve1")])).await;
    let run = fence_pve(
        &fake,
        &[("action", "status"), ("plug", "101"), ("pve_node", "pve1")],
    )
    .await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("Status: ON"), "{}", run.stdout);

    let log = fake.log();
    let first = &log[0];
    assert_eq!(
        (
            first.method.clone(),
            first.path.as_str(),
            first.auth,
            first.status
        ),
        (Method::POST, "/api2/json/access/ticket", Auth::None, 200)
    );
    for request in &log[1..] {
        assert_eq!(request.auth, Auth::Ticket, "{request:?}");
        assert!(
            request.csrf,
            "fence_pve sends its CSRF token on every call: {request:?}"
        );
        assert_eq!(request.status, 200, "{request:?}");
    }
    assert!(
        paths(&fake, &Method::GET)
            .contains(&"/api2/json/nodes/pve1/qemu/101/status/current".into()),
        "{log:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fence_pve_reads_a_stopped_vm_as_off() {
    let fake = FakePve::start(config(vec![Vm::stopped(101, "pve1")])).await;
    let run = fence_pve(
        &fake,
        &[("action", "status"), ("plug", "101"), ("pve_node", "pve1")],
    )
    .await;
    assert_eq!(run.code, 2, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("Status: OFF"), "{}", run.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fence_pve_finds_the_node_of_a_vm_by_asking_each_node() {
    let fake = FakePve::start(config(vec![Vm::running(205, "pve2")])).await;
    let run = fence_pve(
        &fake,
        &[
            ("action", "status"),
            ("plug", "205"),
            ("pve_node_auto", "1"),
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let asked: Vec<(String, u16)> = fake
        .log()
        .into_iter()
        .filter(|r| r.path.ends_with("/qemu/205/status/current"))
        .map(|r| (r.path, r.status))
        .collect();
    assert_eq!(
        asked,
        [
            (
                "/api2/json/nodes/pve1/qemu/205/status/current".to_string(),
                500
            ),
            (
                "/api2/json/nodes/pve2/qemu/205/status/current".to_string(),
                200
            ),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fence_pve_off_waits_until_an_ha_vm_reads_stopped_after_its_task_ended() {
    let mut pve = config(vec![Vm::running(101, "pve1").ha()]);
    pve.stop_delay = Duration::from_secs(3);
    let fake = FakePve::start(pve).await;
    let started = Instant::now();
    let run = fence_pve(
        &fake,
        &[("action", "off"), ("plug", "101"), ("pve_node", "pve1")],
    )
    .await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("Success: Powered OFF"),
        "{}",
        run.stdout
    );
    assert_eq!(fake.vm_state(101), "stopped");
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "it cannot have seen the VM off earlier"
    );

    let log = fake.log();
    let stop = log
        .iter()
        .position(|r| r.method == Method::POST && r.path.ends_with("/qemu/101/status/stop"))
        .expect("fence_pve never asked for a stop");
    assert_eq!(
        (log[stop].auth, log[stop].csrf, log[stop].status),
        (Auth::Ticket, true, 200)
    );
    let reads_after = log[stop..]
        .iter()
        .filter(|r| r.path.ends_with("/qemu/101/status/current"))
        .count();
    assert!(
        reads_after >= 2,
        "fence_pve polls status/current until stopped: {log:?}"
    );
    let tasks = fake.tasks();
    assert_eq!(tasks.len(), 1);
    assert_eq!((tasks[0].1, tasks[0].2), ("hastop", true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fence_pve_with_a_wrong_password_is_refused() {
    let fake = FakePve::start(config(vec![Vm::running(101, "pve1")])).await;
    let run = fence_pve(
        &fake,
        &[
            ("action", "status"),
            ("plug", "101"),
            ("pve_node", "pve1"),
            ("password", "nope"),
        ],
    )
    .await;
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("Unable to connect/login"),
        "{}",
        run.stderr
    );
    let log = fake.log();
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0].status, 401);
}

/// What `fence_pve` relies on without saying so: a ticket POST needs the CSRF token.
#[tokio::test]
async fn the_fake_wants_the_csrf_token_with_a_ticket_but_not_with_a_token() {
    let fake = FakePve::start(config(vec![Vm::running(101, "pve1")])).await;
    let http = raw_client(&fake);
    let login: Value = http
        .post(format!("{}/api2/json/access/ticket", fake.endpoint()))
        .form(&[("username", ROOT), ("password", ROOT_PASSWORD)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ticket = login["data"]["ticket"].as_str().unwrap();
    let csrf = login["data"]["CSRFPreventionToken"].as_str().unwrap();
    assert!(ticket.starts_with("PVE:root@pam:"), "{ticket}");
    let start = format!(
        "{}/api2/json/nodes/pve1/qemu/101/status/start",
        fake.endpoint()
    );
    let cookie = format!("PVEAuthCookie={ticket}");

    let without = http
        .post(&start)
        .header("Cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(without.status(), 401);
    let with = http
        .post(&start)
        .header("Cookie", &cookie)
        .header("CSRFPreventionToken", csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(with.status(), 200);
    let token = http
        .post(&start)
        .header(
            "Authorization",
            format!("PVEAPIToken={TOKEN_ID}={TOKEN_SECRET}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(token.status(), 200);
    let upid: Value = token.json().await.unwrap();
    assert!(
        upid["data"].as_str().unwrap().starts_with("UPID:pve1:"),
        "{upid}"
    );
    assert!(
        upid["data"]
            .as_str()
            .unwrap()
            .ends_with(":qmstart:101:root@pam!fencer:"),
        "{upid}"
    );
}

/// The HA trap the fake must reproduce: the `hastop` task is over while the VM still runs;
/// without HA the `qmstop` task runs until the VM is stopped.
#[tokio::test]
async fn the_fakes_stop_task_ends_before_an_ha_vm_stops_but_not_before_a_plain_one() {
    let mut pve = config(vec![
        Vm::running(101, "pve1").ha(),
        Vm::running(102, "pve1"),
    ]);
    pve.stop_delay = Duration::from_secs(30);
    let fake = FakePve::start(pve).await;
    let http = raw_client(&fake);
    let token = format!("PVEAPIToken={TOKEN_ID}={TOKEN_SECRET}");
    let get = |path: String| {
        let request = http
            .get(format!("{}/api2/json/{path}", fake.endpoint()))
            .header("Authorization", &token);
        async move { request.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    for (vmid, task_kind, task_status) in [(101, "hastop", "stopped"), (102, "qmstop", "running")] {
        let stop: Value = http
            .post(format!(
                "{}/api2/json/nodes/pve1/qemu/{vmid}/status/stop",
                fake.endpoint()
            ))
            .header("Authorization", &token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let upid = stop["data"].as_str().unwrap();
        let task = get(format!("nodes/pve1/tasks/{upid}/status")).await;
        assert_eq!(task["data"]["type"], task_kind, "{task}");
        assert_eq!(task["data"]["status"], task_status, "{task}");
        assert_eq!(
            task["data"]["exitstatus"].as_str(),
            (task_status == "stopped").then_some("OK")
        );
        let current = get(format!("nodes/pve1/qemu/{vmid}/status/current")).await;
        assert_eq!(current["data"]["status"], "running", "{current}");
        assert_eq!(
            current["data"]["ha"]["managed"],
            i32::from(vmid == 101),
            "{current}"
        );
    }
}

fn raw_client(fake: &FakePve) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(fake.ca_pem.as_bytes()).unwrap();
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .build()
        .unwrap()
}

fn agent_config(fake: &FakePve) -> ProxmoxAgent {
    ProxmoxAgent {
        endpoint: fake.endpoint(),
        ca_file: Some(fake.ca_file().to_string_lossy().into_owned()),
        ..ProxmoxAgent::default()
    }
}

fn device(fake: &FakePve, node: &str, vmid: u32, secret: &str) -> ProxmoxVmAgent {
    device_at(&agent_config(fake), node, vmid, secret)
}

/// VM `vmid` on `node` of the cluster `agent` names, reached with the token.
fn device_at(agent: &ProxmoxAgent, node: &str, vmid: u32, secret: &str) -> ProxmoxVmAgent {
    ProxmoxVmAgent::new(
        agent,
        &ProxmoxVm {
            node: node.into(),
            vmid,
        },
        Credentials {
            username: TOKEN_ID.into(),
            password: secret.into(),
        },
        TIMEOUT,
    )
    .unwrap()
}

#[tokio::test]
async fn our_client_reads_on_off_and_paused() {
    let fake = FakePve::start(config(vec![
        Vm::running(101, "pve1"),
        Vm::stopped(102, "pve1"),
        Vm::paused(103, "pve2"),
    ]))
    .await;
    let cases = [
        ("pve1", 101, PowerState::On),
        ("pve1", 102, PowerState::Off),
        ("pve2", 103, PowerState::Paused),
    ];
    for (node, vmid, expected) in cases {
        let state = device(&fake, node, vmid, TOKEN_SECRET).power_state().await;
        assert_eq!(state, Ok(expected), "VM {vmid}");
    }
    for request in fake.log() {
        assert_eq!(
            (request.auth, request.csrf, request.status),
            (Auth::Token, false, 200)
        );
    }
}

#[tokio::test]
async fn our_client_stops_an_ha_vm_and_it_reads_off_only_after_the_delay() {
    let mut pve = config(vec![Vm::running(101, "pve1").ha()]);
    pve.stop_delay = Duration::from_secs(2);
    let fake = FakePve::start(pve).await;
    let vm = device(&fake, "pve1", 101, TOKEN_SECRET);

    let sent = Instant::now();
    vm.power_off().await.unwrap();
    let tasks = fake.tasks();
    assert_eq!(tasks.len(), 1);
    let (upid, kind, finished) = &tasks[0];
    assert!(upid.ends_with(":hastop:101:root@pam!fencer:"), "{upid}");
    assert_eq!(
        (*kind, *finished),
        ("hastop", true),
        "the task is over at once"
    );
    assert_eq!(
        vm.power_state().await,
        Ok(PowerState::On),
        "yet the VM still runs"
    );

    let off_at = loop {
        let state = vm.power_state().await.unwrap();
        if state.is_off() {
            break sent.elapsed();
        }
        assert!(sent.elapsed() < Duration::from_secs(10), "never read Off");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        off_at >= Duration::from_secs(2),
        "read Off after {off_at:?}"
    );
    assert_eq!(fake.vm_state(101), "stopped");

    let log = fake.log();
    let stop = &log[0];
    assert_eq!(
        (
            stop.method.clone(),
            stop.path.as_str(),
            stop.auth,
            stop.csrf
        ),
        (
            Method::POST,
            "/api2/json/nodes/pve1/qemu/101/status/stop",
            Auth::Token,
            false
        )
    );
    for request in &log {
        assert!(
            request.path == "/api2/json/nodes/pve1/qemu/101/status/stop"
                || request.path == "/api2/json/nodes/pve1/qemu/101/status/current",
            "our client reads only status/current (never tasks or /cluster/resources): {request:?}"
        );
    }
}

#[tokio::test]
async fn stale_cluster_resources_still_say_running_when_status_current_says_stopped() {
    let mut pve = config(vec![Vm::running(101, "pve1")]);
    pve.stop_delay = Duration::ZERO;
    let fake = FakePve::start(pve).await;
    fake.freeze_cluster_resources();
    let vm = device(&fake, "pve1", 101, TOKEN_SECRET);
    vm.power_off().await.unwrap();
    assert_eq!(vm.power_state().await, Ok(PowerState::Off));

    let resources: Value = raw_client(&fake)
        .get(format!(
            "{}/api2/json/cluster/resources?type=vm",
            fake.endpoint()
        ))
        .header(
            "Authorization",
            format!("PVEAPIToken={TOKEN_ID}={TOKEN_SECRET}"),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(resources["data"][0]["status"], "running", "{resources}");
}

#[tokio::test]
async fn a_wrong_token_is_unauthorized_and_the_error_never_shows_a_secret() {
    let fake = FakePve::start(config(vec![Vm::running(101, "pve1")])).await;
    let wrong = "0d9e8f7a-6b5c-4d3e-8f1a-2b3c4d5e6f70";
    let vm = device(&fake, "pve1", 101, wrong);
    let errors = [
        vm.power_state().await.unwrap_err(),
        vm.power_off().await.unwrap_err(),
    ];
    for err in errors {
        assert_eq!(err, AgentError::Unauthorized(401));
        for text in [err.to_string(), format!("{err:?}"), format!("{vm:?}")] {
            assert!(
                !text.contains(wrong) && !text.contains(TOKEN_SECRET),
                "{text}"
            );
        }
    }
    assert_eq!(fake.vm_state(101), "running");
}

#[tokio::test]
async fn a_vm_on_another_or_a_dead_node_is_an_http_error_naming_the_cause() {
    let fake = FakePve::start(config(vec![Vm::running(101, "pve1")])).await;
    let err = device(&fake, "pve2", 101, TOKEN_SECRET)
        .power_state()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, AgentError::Http { status: 500, detail } if detail.contains("does not exist")),
        "{err:?}"
    );
    fake.set_node_online("pve1", false);
    let err = device(&fake, "pve1", 101, TOKEN_SECRET)
        .power_state()
        .await
        .unwrap_err();
    assert_eq!(
        err,
        AgentError::Http {
            status: 595,
            detail: "No route to host".into()
        }
    );
}

#[tokio::test]
async fn answers_that_make_no_sense_are_protocol_errors() {
    let fake = FakePve::start(config(vec![Vm::running(101, "pve1")])).await;
    let vm = device(&fake, "pve1", 101, TOKEN_SECRET);
    let huge = format!(
        "{{\"data\":{{\"status\":\"stopped\",\"pad\":\"{}\"}}}}",
        "x".repeat(MAX_BODY_BYTES)
    );
    let cases: [(&str, String); 10] = [
        ("not JSON", "<html>proxy error</html>".into()),
        ("empty", String::new()),
        ("no data", r#"{"status":"stopped"}"#.into()),
        ("null data", r#"{"data":null}"#.into()),
        ("no status", r#"{"data":{"vmid":101}}"#.into()),
        ("status a number", r#"{"data":{"status":0}}"#.into()),
        (
            "qmpstatus a list",
            r#"{"data":{"status":"running","qmpstatus":[]}}"#.into(),
        ),
        (
            "lock a number",
            r#"{"data":{"status":"stopped","lock":1}}"#.into(),
        ),
        // A stopped VM that is not ours proves nothing about ours.
        (
            "another VM",
            r#"{"data":{"vmid":102,"status":"stopped"}}"#.into(),
        ),
        ("over 1 MiB", huge),
    ];
    for (what, body) in cases {
        fake.answer_with(Endpoint::StatusCurrent, 200, body);
        let result = vm.power_state().await;
        assert!(
            matches!(result, Err(AgentError::Protocol(_))),
            "{what}: {result:?}"
        );
    }
    fake.answer_with(
        Endpoint::StatusCurrent,
        200,
        r#"{"data":{"vmid":"101","status":"stopped"}}"#,
    );
    assert_eq!(vm.power_state().await, Ok(PowerState::Off));
    // Hibernated: stopped, but its saved memory resumes at the next start.
    fake.answer_with(
        Endpoint::StatusCurrent,
        200,
        r#"{"data":{"vmid":101,"status":"stopped","lock":"suspended"}}"#,
    );
    assert_eq!(vm.power_state().await, Ok(PowerState::Paused));
    // Near misses are not off, and what the device said is shown on one line.
    for (status, shown) in [
        ("stopped ", "stopped"),
        ("Stopped", "Stopped"),
        ("stopped\n", "stopped"),
    ] {
        let body = serde_json::json!({ "data": { "status": status } }).to_string();
        fake.answer_with(Endpoint::StatusCurrent, 200, body);
        assert_eq!(
            vm.power_state().await,
            Ok(PowerState::Unknown(shown.into())),
            "{status:?}"
        );
    }

    for body in [
        r#"{"data":null}"#,
        r#"{"data":{"upid":"UPID:x"}}"#,
        r#"{"data":"OK"}"#,
    ] {
        fake.answer_with(Endpoint::StatusStop, 200, body);
        let result = vm.power_off().await;
        assert!(
            matches!(result, Err(AgentError::Protocol(_))),
            "{body}: {result:?}"
        );
    }
    fake.answer_with(
        Endpoint::StatusStop,
        500,
        format!("{{\"data\":null,\"message\":\"VM is locked (backup) {TOKEN_SECRET}\\n\"}}"),
    );
    let err = vm.power_off().await.unwrap_err();
    assert_eq!(
        err,
        AgentError::Http {
            status: 500,
            detail: "VM is locked (backup) <redacted>".into()
        }
    );
}

#[tokio::test]
async fn a_closed_port_fails_at_once() {
    let port = support::free_port();
    let agent = ProxmoxAgent {
        endpoint: format!("https://127.0.0.1:{port}"),
        insecure_skip_verify: true,
        ..ProxmoxAgent::default()
    };
    let vm = device_at(&agent, "pve1", 101, TOKEN_SECRET);
    let started = Instant::now();
    let err = vm.power_state().await.unwrap_err();
    assert!(matches!(&err, AgentError::Unreachable(_)), "{err:?}");
    assert!(started.elapsed() < TIMEOUT, "{:?}", started.elapsed());
    assert!(!err.to_string().contains(TOKEN_SECRET), "{err}");
}

/// One call, and how long it took.
async fn timed<T>(call: impl Future<Output = T>) -> (T, Duration) {
    let started = Instant::now();
    let result = call.await;
    (result, started.elapsed())
}

#[tokio::test]
async fn a_device_that_never_answers_times_out_within_the_timeout() {
    let fake = FakePve::start(config(vec![Vm::running(101, "pve1")])).await;
    let vm = device(&fake, "pve1", 101, TOKEN_SECRET);
    fake.never_answer(Endpoint::StatusCurrent);
    fake.never_answer(Endpoint::StatusStop);
    for (result, took) in [
        timed(vm.power_state()).await,
        timed(async { vm.power_off().await.map(|()| PowerState::Off) }).await,
    ] {
        assert_eq!(result, Err(AgentError::Timeout(TIMEOUT.as_secs())));
        assert!(took >= TIMEOUT && took < TIMEOUT * 3, "{took:?}");
    }

    // A port that accepts connections and never starts TLS.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut agent = agent_config(&fake);
    agent.endpoint = format!("https://127.0.0.1:{}", silent.local_addr().unwrap().port());
    let vm = device_at(&agent, "pve1", 101, TOKEN_SECRET);
    let (result, took) = timed(vm.power_state()).await;
    assert_eq!(result, Err(AgentError::Timeout(TIMEOUT.as_secs())));
    assert!(took >= TIMEOUT && took < TIMEOUT * 3, "{took:?}");
    drop(silent);
}
