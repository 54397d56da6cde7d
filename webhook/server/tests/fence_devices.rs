//! The fence devices against real third-party implementations: the Redfish client against
//! sushy-tools' emulator, the fence-agent program runner against Debian's `fence_redfish`
//! driving that emulator, and against small stand-in agents for what no real one does on
//! demand (hang, leak its password). The tools must be installed (hack/test.sh does it); a
//! missing one fails the test, it never skips.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

#[path = "support/sushy.rs"]
mod sushy;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use jellyfin_ha::fencer::agent::{AgentError, Credentials, FenceAgent};
use jellyfin_ha::fencer::program::ProgramAgent;
use jellyfin_ha::fencer::redfish::RedfishSystem;
use jellyfin_ha_core::fencing::PowerState;
use jellyfin_ha_core::fencing::config::{FenceAgentProgram, RedfishAgent};
use sushy::{Emulator, PASSWORD, USERNAME};

const TIMEOUT: Duration = Duration::from_secs(10);
/// The fake driver applies a power change within 11 s.
const OFF_WITHIN: Duration = Duration::from_secs(20);
const WRONG_PASSWORD: &str = "not-the-Pw-90412";

fn credentials(password: &str) -> Credentials {
    Credentials {
        username: USERNAME.into(),
        password: password.into(),
    }
}

fn redfish_config(address: String, system_path: &str, ca_file: Option<String>) -> RedfishAgent {
    RedfishAgent {
        address,
        system_path: system_path.into(),
        ca_file,
        insecure_skip_verify: false,
    }
}

/// The emulator's system through its UUID path (`{node}` stands for the UUID), trusting its CA.
fn redfish(emulator: &Emulator, password: &str) -> RedfishSystem {
    let config = redfish_config(
        emulator.address(),
        "/redfish/v1/Systems/{node}",
        Some(emulator.ca_path()),
    );
    RedfishSystem::new(&config, &emulator.uuid, credentials(password), TIMEOUT).unwrap()
}

/// Reads until the device says Off; every reading, in order. Fails after `within`.
async fn read_until_off(device: &impl FenceAgent, within: Duration) -> Vec<PowerState> {
    let started = Instant::now();
    let mut readings = Vec::new();
    loop {
        let state = device.power_state().await.unwrap();
        readings.push(state.clone());
        if state.is_off() {
            return readings;
        }
        assert!(
            started.elapsed() < within,
            "not Off within {within:?}: {readings:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn assert_secret_free(error: &AgentError, secret: &str) {
    let text = format!("{error} {error:?}");
    assert!(
        !text.contains(secret),
        "the error shows the password: {text}"
    );
}

#[tokio::test]
async fn redfish_reads_on_then_force_off_reads_off() {
    let emulator = Emulator::start("node-a").await;
    let device = redfish(&emulator, PASSWORD);
    assert_eq!(device.power_state().await.unwrap(), PowerState::On);
    let started = Instant::now();
    device.power_off().await.unwrap();
    let readings = read_until_off(&device, OFF_WITHIN).await;
    // Only On until Off: the fake driver has no transitional state, and the client must not
    // invent one.
    assert!(
        readings[..readings.len() - 1]
            .iter()
            .all(|s| *s == PowerState::On),
        "{readings:?}"
    );
    eprintln!(
        "ForceOff read Off after {:?} ({} readings)",
        started.elapsed(),
        readings.len()
    );
    // A graceful shutdown would read Off too: the emulator's log says which reset came.
    let log = emulator.log();
    assert!(log.contains("power state set to \"ForceOff\""), "{log}");
}

#[tokio::test]
async fn redfish_follows_the_name_redirect_to_the_uuid() {
    let emulator = Emulator::start("node-b").await;
    let by_name = format!("{}/redfish/v1/Systems/node-b", emulator.address());
    // The premise: the emulator answers the name with a redirect, not the system.
    let raw = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap()
        .get(&by_name)
        .basic_auth(USERNAME, Some(PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status().as_u16(), 307);
    let location = raw.headers()["location"].to_str().unwrap().to_string();
    assert!(location.ends_with(&emulator.uuid), "{location}");

    let config = redfish_config(
        emulator.address(),
        "/redfish/v1/Systems/{node}",
        Some(emulator.ca_path()),
    );
    let device = RedfishSystem::new(&config, "node-b", credentials(PASSWORD), TIMEOUT).unwrap();
    assert_eq!(device.power_state().await.unwrap(), PowerState::On);
    device.power_off().await.unwrap();
    read_until_off(&device, OFF_WITHIN).await;
}

#[tokio::test]
async fn redfish_wrong_password_is_unauthorized_and_not_echoed() {
    let emulator = Emulator::start("node-c").await;
    let device = redfish(&emulator, WRONG_PASSWORD);
    let err = device.power_state().await.unwrap_err();
    assert_eq!(err, AgentError::Unauthorized(401));
    assert_secret_free(&err, WRONG_PASSWORD);
    let err = device.power_off().await.unwrap_err();
    assert_eq!(err, AgentError::Unauthorized(401));
    // And nothing was switched.
    assert_eq!(
        redfish(&emulator, PASSWORD).power_state().await.unwrap(),
        PowerState::On
    );
}

#[tokio::test]
async fn redfish_other_statuses_are_http_errors_with_the_bmc_message() {
    let emulator = Emulator::start("node-d").await;
    let config = redfish_config(
        emulator.address(),
        "/redfish/v1/Systems/no-such-system",
        Some(emulator.ca_path()),
    );
    let device = RedfishSystem::new(&config, "x", credentials(PASSWORD), TIMEOUT).unwrap();
    let err = device.power_state().await.unwrap_err();
    assert!(
        matches!(&err, AgentError::Http { status: 404, detail } if detail.contains("not found")),
        "{err:?}"
    );
    assert_secret_free(&err, PASSWORD);
}

#[tokio::test]
async fn redfish_refuses_an_unknown_ca_unless_told_to_skip_verification() {
    let emulator = Emulator::start("node-e").await;
    let other = jellyfin_ha_certs::generate(&["127.0.0.1".into()]).unwrap();
    let other_ca = emulator.dir.path().join("other-ca.crt");
    std::fs::write(&other_ca, other.ca_pem).unwrap();
    let path = "/redfish/v1/Systems/{node}";

    let config = redfish_config(
        emulator.address(),
        path,
        Some(other_ca.display().to_string()),
    );
    let device =
        RedfishSystem::new(&config, &emulator.uuid, credentials(PASSWORD), TIMEOUT).unwrap();
    let err = device.power_state().await.unwrap_err();
    assert!(
        matches!(&err, AgentError::Unreachable(text) if text.to_lowercase().contains("certificate")),
        "{err:?}"
    );
    let err = device.power_off().await.unwrap_err();
    assert!(matches!(err, AgentError::Unreachable(_)), "{err:?}");

    let mut config = redfish_config(emulator.address(), path, None);
    config.insecure_skip_verify = true;
    let device =
        RedfishSystem::new(&config, &emulator.uuid, credentials(PASSWORD), TIMEOUT).unwrap();
    assert_eq!(device.power_state().await.unwrap(), PowerState::On);
}

#[tokio::test]
async fn redfish_closed_port_is_unreachable() {
    let port = sushy::free_port();
    let config = redfish_config(
        format!("https://127.0.0.1:{port}"),
        "/redfish/v1/Systems/1",
        None,
    );
    let device = RedfishSystem::new(&config, "n", credentials(PASSWORD), TIMEOUT).unwrap();
    let started = Instant::now();
    let err = device.power_state().await.unwrap_err();
    assert!(matches!(err, AgentError::Unreachable(_)), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    let err = device.power_off().await.unwrap_err();
    assert!(matches!(err, AgentError::Unreachable(_)), "{err:?}");
}

#[tokio::test]
async fn redfish_a_silent_listener_times_out_on_time() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    // Accepts and holds every connection, never saying a word (no TLS handshake).
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let config = redfish_config(
        format!("https://127.0.0.1:{port}"),
        "/redfish/v1/Systems/1",
        None,
    );
    let timeout = Duration::from_secs(1);
    let device = RedfishSystem::new(&config, "n", credentials(PASSWORD), timeout).unwrap();
    for _ in 0..2 {
        let started = Instant::now();
        let err = device.power_state().await.unwrap_err();
        let took = started.elapsed();
        assert_eq!(err, AgentError::Timeout(1));
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(3),
            "{took:?}"
        );
    }
    let err = device.power_off().await.unwrap_err();
    assert_eq!(err, AgentError::Timeout(1));
    holder.abort();
}

// --- the fence-agent program runner ---

fn program(name: &str, options: &[(&str, &str)]) -> FenceAgentProgram {
    FenceAgentProgram {
        program: name.into(),
        options: options
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
    }
}

/// `fence_redfish` for the emulator's system; the node name is its UUID.
fn fence_redfish(emulator: &Emulator, password: &str, timeout: Duration) -> ProgramAgent {
    let port = emulator.port.to_string();
    let config = program(
        "fence_redfish",
        &[
            ("ip", "127.0.0.1"),
            ("ipport", &port),
            ("ssl_insecure", "1"),
            ("systems-uri", "/redfish/v1/Systems/{node}"),
        ],
    );
    let sbin = sushy::fence_redfish().parent().unwrap().to_path_buf();
    ProgramAgent::new(
        &config,
        &emulator.uuid,
        Some(credentials(password)),
        timeout,
    )
    .unwrap()
    .with_search_path(vec![sbin])
}

#[tokio::test]
async fn fence_redfish_reads_on_powers_off_and_reads_off() {
    let emulator = Emulator::start("node-f").await;
    // fence-agents' off waits for the machine to read off (power_timeout, 20 s).
    let agent = fence_redfish(&emulator, PASSWORD, Duration::from_secs(60));
    assert_eq!(agent.power_state().await.unwrap(), PowerState::On);
    let started = Instant::now();
    agent.power_off().await.unwrap();
    eprintln!("fence_redfish off took {:?}", started.elapsed());
    // fence_redfish returned only once the system read Off.
    assert_eq!(agent.power_state().await.unwrap(), PowerState::Off);
    // Our own client agrees.
    assert_eq!(
        redfish(&emulator, PASSWORD).power_state().await.unwrap(),
        PowerState::Off
    );
}

#[tokio::test]
async fn fence_redfish_wrong_password_fails_without_showing_it() {
    let emulator = Emulator::start("node-g").await;
    let agent = fence_redfish(&emulator, WRONG_PASSWORD, TIMEOUT);
    let err = agent.power_state().await.unwrap_err();
    assert!(
        matches!(&err, AgentError::Program { program, detail }
            if program == "fence_redfish" && detail.contains("action=status exited with 1")),
        "{err:?}"
    );
    assert_secret_free(&err, WRONG_PASSWORD);
    let err = agent.power_off().await.unwrap_err();
    assert!(matches!(err, AgentError::Program { .. }), "{err:?}");
    assert_eq!(
        redfish(&emulator, PASSWORD).power_state().await.unwrap(),
        PowerState::On
    );
}

#[tokio::test]
async fn a_missing_agent_is_an_error_naming_where_it_looked() {
    let agent = ProgramAgent::new(
        &program("fence_jfha_not_installed", &[]),
        "n",
        None,
        TIMEOUT,
    )
    .unwrap();
    let err = agent.power_state().await.unwrap_err();
    assert!(
        matches!(&err, AgentError::Program { detail, .. } if detail.contains("not found in") && detail.contains("/usr/sbin")),
        "{err:?}"
    );
}

/// Writes an executable `name` holding `script` into `dir`.
fn install(dir: &Path, name: &str, script: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[tokio::test]
async fn options_go_on_stdin_not_argv_and_exit_codes_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    // Records what it was given; status says Off (2), off succeeds (0).
    install(
        dir.path(),
        "fence_record",
        &format!(
            "#!/bin/sh\ninput=$(cat)\nprintf '%s\\n' \"$input\" > {d}/stdin\nprintf '%s' \"$*\" > {d}/argv\n\
             case \"$input\" in *action=off*) exit 0;; esac\necho 'Status: OFF'\nexit 2\n"
        ),
    );
    let config = program("fence_record", &[("plug", "{node}"), ("ip", "pve.lan")]);
    let agent = ProgramAgent::new(&config, "node-h", Some(credentials(PASSWORD)), TIMEOUT)
        .unwrap()
        .with_search_path(vec![dir.path().to_path_buf()]);
    assert_eq!(agent.power_state().await.unwrap(), PowerState::Off);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("stdin")).unwrap(),
        format!(
            "ip=pve.lan\nplug=node-h\naction=status\nlogin=\"{USERNAME}\"\npasswd=\"{PASSWORD}\"\n"
        )
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("argv")).unwrap(),
        ""
    );
    agent.power_off().await.unwrap();
    let stdin = std::fs::read_to_string(dir.path().join("stdin")).unwrap();
    assert!(stdin.contains("\naction=off\n"), "{stdin}");
}

/// Exit code 2 is also fence-agents' code for bad arguments (a key file that cannot be read):
/// without the `Status: OFF` line it proves nothing.
#[tokio::test]
async fn exit_code_2_without_status_off_is_not_off() {
    let dir = tempfile::tempdir().unwrap();
    install(
        dir.path(),
        "fence_bad_args",
        "#!/bin/sh\ncat >/dev/null\necho 'Failed: cannot open the API key file' >&2\nexit 2\n",
    );
    let agent = ProgramAgent::new(&program("fence_bad_args", &[]), "n", None, TIMEOUT)
        .unwrap()
        .with_search_path(vec![dir.path().to_path_buf()]);
    let err = agent.power_state().await.unwrap_err();
    assert!(
        err.to_string().contains("exited with 2")
            && err.to_string().contains("cannot open the API key file"),
        "{err}"
    );
}

#[tokio::test]
async fn a_failing_agent_reports_its_output_without_the_password() {
    let dir = tempfile::tempdir().unwrap();
    install(
        dir.path(),
        "fence_leak",
        &format!(
            "#!/bin/sh\ncat >/dev/null\necho 'Connecting to the device' >&2\n\
             echo 'login admin with {PASSWORD} rejected' >&2\necho 'Failed: giving up'\nexit 1\n"
        ),
    );
    let agent = ProgramAgent::new(
        &program("fence_leak", &[]),
        "n",
        Some(credentials(PASSWORD)),
        TIMEOUT,
    )
    .unwrap()
    .with_search_path(vec![dir.path().to_path_buf()]);
    for err in [
        agent.power_state().await.unwrap_err(),
        agent.power_off().await.unwrap_err(),
    ] {
        let text = err.to_string();
        assert!(
            text.contains("exited with 1")
                && text.contains("Connecting to the device")
                && text.contains("Failed: giving up"),
            "{text}"
        );
        assert_secret_free(&err, PASSWORD);
    }
}

/// Whether the process is gone (or a zombie nobody has reaped yet: it runs no more).
fn is_dead(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

#[tokio::test]
async fn a_hanging_agent_and_its_children_are_killed_at_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    // Starts a child that keeps the output pipes open, then waits for it.
    install(
        dir.path(),
        "fence_hang",
        &format!(
            "#!/bin/sh\necho $$ > {d}/agent.pid\nsleep 300 &\necho $! > {d}/child.pid\nwait\n"
        ),
    );
    let timeout = Duration::from_secs(2);
    let agent = ProgramAgent::new(&program("fence_hang", &[]), "n", None, timeout)
        .unwrap()
        .with_search_path(vec![dir.path().to_path_buf()]);
    let started = Instant::now();
    let err = agent.power_state().await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(err, AgentError::Timeout(2));
    assert!(
        took >= timeout && took < timeout + Duration::from_secs(2),
        "{took:?}"
    );
    let pids: Vec<String> = ["agent.pid", "child.pid"]
        .iter()
        .map(|f| {
            std::fs::read_to_string(dir.path().join(f))
                .unwrap()
                .trim()
                .to_string()
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(2);
    while !pids.iter().all(|pid| is_dead(pid)) {
        let running: Vec<String> = pids
            .iter()
            .filter(|pid| !is_dead(pid))
            .map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default())
            .collect();
        assert!(Instant::now() < deadline, "still running: {running:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
