//! A ClusterLabs fence agent (`fence_ipmilan`, `fence_redfish`, `fence_pve`...) run as a
//! program through the interface Pacemaker and medik8s' fence-agents-remediation use:
//! `key=value` lines on stdin, one action per run, the answer in the exit code.
//!
//! Options go on stdin, never in argv: any process on the host can read argv from /proc.
//! The agent runs in its own process group so that a timeout kills what it started too
//! (`ipmitool`, `ssh`), not just the agent.

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use jellyfin_ha_core::fencing::PowerState;
use jellyfin_ha_core::fencing::config::{FenceAgentProgram, for_node};
use rustix::process::{Pid, Signal, kill_process_group};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

use super::agent::{AgentError, Credentials, FenceAgent};

/// Where fence-agents packages install their programs (Debian, Fedora, RHEL), searched after
/// `PATH`: a service's `PATH` often lacks the sbin directories.
pub const SBIN_DIRS: [&str; 2] = ["/usr/sbin", "/sbin"];

/// Output kept per stream: enough for a Python traceback's end.
const MAX_OUTPUT_BYTES: usize = 64 * 1024;
/// Lines of output quoted in an error.
const TAIL_LINES: usize = 10;
/// Characters of output quoted in an error.
const MAX_DETAIL_CHARS: usize = 1000;

/// One node's fence agent program with its options and credentials.
#[derive(Debug, Clone)]
pub struct ProgramAgent {
    program: String,
    options: Vec<(String, String)>,
    credentials: Option<Credentials>,
    timeout: Duration,
    search_path: Vec<PathBuf>,
}

/// How a run ended, its standard output, and the end of all it printed for errors (lines
/// holding the password removed).
struct Exit {
    status: ExitStatus,
    stdout: String,
    output: String,
}

impl ProgramAgent {
    /// The agent `config` names, for `node` (`{node}` replaced in option values). Every run is
    /// killed after `timeout`; an `off` includes the agent's own wait for the machine to read
    /// off (fence-agents' `power_timeout`, 20 s by default), so give it that much.
    pub fn new(
        config: &FenceAgentProgram,
        node: &str,
        credentials: Option<Credentials>,
        timeout: Duration,
    ) -> Result<Self, AgentError> {
        let failed = |detail: String| AgentError::Program {
            program: config.program.clone(),
            detail,
        };
        // Config validation checked these; checked again because the name becomes a path and
        // the node name is only known now.
        if !FenceAgentProgram::is_agent_name(&config.program) {
            return Err(failed("not a fence agent name like fence_ipmilan".into()));
        }
        let mut options = Vec::with_capacity(config.options.len());
        for (key, value) in &config.options {
            let value = for_node(value, node);
            if let Some(problem) = FenceAgentProgram::option_problem(key, &value) {
                return Err(failed(format!("option {key:?}: {problem}")));
            }
            options.push((key.clone(), value));
        }
        if let Some(credentials) = &credentials {
            // A line break would end the value and start an option of the Secret's choosing.
            if credentials.username.contains(['\n', '\r'])
                || credentials.password.contains(['\n', '\r'])
            {
                return Err(AgentError::Credentials(
                    "a fence agent takes one-line credentials; this username or password \
                     has a line break"
                        .into(),
                ));
            }
        }
        Ok(Self {
            program: config.program.clone(),
            options,
            credentials,
            timeout,
            search_path: default_search_path(std::env::var_os("PATH")),
        })
    }

    /// Looks for the program in `dirs` only, instead of `PATH` and [`SBIN_DIRS`].
    pub fn with_search_path(mut self, dirs: Vec<PathBuf>) -> Self {
        self.search_path = dirs;
        self
    }

    pub fn program(&self) -> &str {
        &self.program
    }

    /// What the agent reads on stdin for `action`. The fencer's own lines come last, so that
    /// they win over any option that fence-agents maps to the same name.
    fn stdin(&self, action: &str) -> String {
        let mut input = String::new();
        for (key, value) in &self.options {
            input.push_str(&format!("{key}={value}\n"));
        }
        input.push_str(&format!("action={action}\n"));
        if let Some(credentials) = &self.credentials {
            // `login` and `passwd` are the names every fencing.py release reads (4.x also takes
            // `username` and `password`). The quotes keep leading and trailing spaces, and
            // fencing.py removes exactly one pair.
            input.push_str(&format!("login=\"{}\"\n", credentials.username));
            input.push_str(&format!("passwd=\"{}\"\n", credentials.password));
        }
        input
    }

    fn locate(&self) -> Result<PathBuf, AgentError> {
        self.search_path
            .iter()
            .map(|dir| dir.join(&self.program))
            .find(|path| is_executable(path))
            .ok_or_else(|| AgentError::Program {
                program: self.program.clone(),
                detail: format!(
                    "not found in {}",
                    std::env::join_paths(&self.search_path)
                        .map(|p| p.to_string_lossy().into_owned())
                        .unwrap_or_default()
                ),
            })
    }

    fn password(&self) -> Option<&str> {
        self.credentials.as_ref().map(|c| c.password.as_str())
    }

    async fn run(&self, action: &str) -> Result<Exit, AgentError> {
        let path = self.locate()?;
        let mut child = self.spawn(&path).await?;
        let mut group = Group(child.id());
        let input = self.stdin(action);
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let work = async {
            let feed = async {
                if let Some(mut pipe) = stdin {
                    // An agent may exit without reading its options; its exit code says why.
                    let _ = pipe.write_all(input.as_bytes()).await;
                    // Dropping the pipe closes it: the agent reads options until EOF.
                }
            };
            let waited = async {
                let status = child.wait().await;
                // Whatever the agent left running would hold the output pipes open.
                group.kill();
                status
            };
            let ((), status, out, err) = tokio::join!(feed, waited, tail(stdout), tail(stderr));
            (status, out, err)
        };
        let (status, stdout, stderr) = match tokio::time::timeout(self.timeout, work).await {
            Ok(finished) => finished,
            Err(_) => {
                group.kill();
                let _ = child.start_kill();
                // Reaps it; a process stuck in the kernel is left to tokio's orphan reaper.
                let _ = tokio::time::timeout(Duration::from_secs(1), child.wait()).await;
                return Err(AgentError::Timeout(self.timeout.as_secs()));
            }
        };
        let status = status.map_err(|e| AgentError::Program {
            program: self.program.clone(),
            detail: format!("waiting for it: {e}"),
        })?;
        Ok(Exit {
            status,
            output: summary(&stderr, &stdout, self.password()),
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
        })
    }

    async fn spawn(&self, path: &Path) -> Result<Child, AgentError> {
        let mut attempts = 0;
        loop {
            let spawned = Command::new(path)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .process_group(0)
                .kill_on_drop(true)
                .spawn();
            match spawned {
                // A program being installed or replaced is briefly busy for writing.
                Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && attempts < 5 => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => {
                    return Err(AgentError::Program {
                        program: self.program.clone(),
                        detail: format!("cannot start {}: {e}", path.display()),
                    });
                }
                Ok(child) => return Ok(child),
            }
        }
    }

    fn failed(&self, action: &str, exit: &Exit) -> AgentError {
        let how = match (exit.status.code(), exit.status.signal()) {
            (Some(code), _) => format!("exited with {code}"),
            (None, Some(signal)) => format!("was killed by signal {signal}"),
            (None, None) => "ended".to_string(),
        };
        let output = if exit.output.is_empty() {
            "no output".to_string()
        } else {
            exit.output.clone()
        };
        AgentError::Program {
            program: self.program.clone(),
            detail: format!("action={action} {how}: {output}"),
        }
    }
}

impl FenceAgent for ProgramAgent {
    async fn power_state(&self) -> Result<PowerState, AgentError> {
        let exit = self.run("status").await?;
        PowerState::from_fence_agent_status(exit.status.code(), &exit.stdout)
            .ok_or_else(|| self.failed("status", &exit))
    }

    async fn power_off(&self) -> Result<(), AgentError> {
        let exit = self.run("off").await?;
        if exit.status.code() == Some(0) {
            Ok(())
        } else {
            Err(self.failed("off", &exit))
        }
    }
}

/// `PATH`'s directories, then the [`SBIN_DIRS`] it lacks.
fn default_search_path(path: Option<OsString>) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = path
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for sbin in SBIN_DIRS {
        if !dirs.iter().any(|d| d == Path::new(sbin)) {
            dirs.push(sbin.into());
        }
    }
    dirs
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The agent's process group, killed when [`Group::kill`] is called or the run is dropped
/// (a cancelled proof). `kill_on_drop` alone reaches only the agent itself.
struct Group(Option<u32>);

impl Group {
    fn kill(&mut self) {
        let leader = self.0.take().and_then(|id| i32::try_from(id).ok());
        if let Some(leader) = leader.and_then(Pid::from_raw) {
            // The group is gone already when the agent and its children exited by themselves.
            let _ = kill_process_group(leader, Signal::KILL);
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last [`MAX_OUTPUT_BYTES`] of a stream, starting at a line boundary once cut: half a
/// line could hold half a password, which no filter would recognise.
async fn tail(pipe: Option<impl AsyncRead + Unpin>) -> Vec<u8> {
    let mut kept = Vec::new();
    let Some(mut pipe) = pipe else {
        return kept;
    };
    let mut buf = [0u8; 8192];
    let mut in_cut_line = false;
    loop {
        let mut data = match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.get(..n).unwrap_or_default(),
        };
        if in_cut_line {
            match data.iter().position(|&b| b == b'\n') {
                Some(end) => {
                    data = data.get(end + 1..).unwrap_or_default();
                    in_cut_line = false;
                }
                None => continue,
            }
        }
        kept.extend_from_slice(data);
        if kept.len() > MAX_OUTPUT_BYTES {
            let cut = kept.len() - MAX_OUTPUT_BYTES;
            match kept.iter().skip(cut).position(|&b| b == b'\n') {
                Some(end) => {
                    kept.drain(..cut + end + 1);
                }
                None => {
                    kept.clear();
                    in_cut_line = true;
                }
            }
        }
    }
    kept
}

/// The last lines of stderr then stdout, one line, without any line holding the password.
fn summary(stderr: &[u8], stdout: &[u8], password: Option<&str>) -> String {
    let stderr = String::from_utf8_lossy(stderr);
    let stdout = String::from_utf8_lossy(stdout);
    let lines: Vec<&str> = stderr
        .lines()
        .chain(stdout.lines())
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .filter(|line| !password.is_some_and(|p| !p.is_empty() && line.contains(p)))
        .collect();
    let recent = lines
        .get(lines.len().saturating_sub(TAIL_LINES)..)
        .unwrap_or_default()
        .join(" | ");
    let count = recent.chars().count();
    recent
        .chars()
        .skip(count.saturating_sub(MAX_DETAIL_CHARS))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn config(program: &str, options: &[(&str, &str)]) -> FenceAgentProgram {
        FenceAgentProgram {
            program: program.into(),
            options: options
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        }
    }

    fn credentials(password: &str) -> Option<Credentials> {
        Some(Credentials {
            username: "admin".into(),
            password: password.into(),
        })
    }

    #[test]
    fn stdin_has_the_options_then_the_action_and_quoted_credentials() {
        let agent = ProgramAgent::new(
            &config("fence_ipmilan", &[("ip", "{node}-bmc"), ("lanplus", "1")]),
            "n1",
            credentials(" sp ace "),
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(
            agent.stdin("status"),
            "ip=n1-bmc\nlanplus=1\naction=status\nlogin=\"admin\"\npasswd=\" sp ace \"\n"
        );
        let anonymous = ProgramAgent::new(
            &config("fence_virt", &[]),
            "n1",
            None,
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(anonymous.stdin("off"), "action=off\n");
    }

    #[test]
    fn names_options_and_credentials_that_could_inject_are_refused() {
        let timeout = Duration::from_secs(1);
        for program in ["/bin/sh", "fence_", "fence_../x", "ipmitool"] {
            assert!(
                ProgramAgent::new(&config(program, &[]), "n", None, timeout).is_err(),
                "{program}"
            );
        }
        for (key, value) in [
            ("ip", "a\naction=off"),
            ("action", "off"),
            ("passwd", "x"),
            ("a b", "c"),
        ] {
            let err = ProgramAgent::new(&config("fence_x", &[(key, value)]), "n", None, timeout);
            assert!(err.is_err(), "{key}={value}");
        }
        let err = ProgramAgent::new(
            &config("fence_x", &[("plug", "{node}")]),
            "a\nb",
            None,
            timeout,
        );
        assert!(err.is_err());
        let err = ProgramAgent::new(
            &config("fence_x", &[]),
            "n",
            credentials("p\naction=on"),
            timeout,
        )
        .unwrap_err();
        assert!(
            matches!(&err, AgentError::Credentials(text) if !text.contains("action=on")),
            "{err}"
        );
    }

    #[test]
    fn the_sbin_directories_are_searched_after_path() {
        let dirs = default_search_path(Some("/opt/bin:/usr/sbin".into()));
        assert_eq!(
            dirs,
            ["/opt/bin", "/usr/sbin", "/sbin"]
                .map(PathBuf::from)
                .to_vec()
        );
        assert_eq!(default_search_path(None).len(), 2);
    }

    #[test]
    fn the_summary_drops_password_lines_and_keeps_the_end() {
        let stderr = b"Traceback\n  login with hunter2 failed\nERROR: Unable to connect\n";
        let text = summary(stderr, b"Status: unknown\n", Some("hunter2"));
        assert_eq!(
            text,
            "Traceback | ERROR: Unable to connect | Status: unknown"
        );
        let many: String = (0..50).map(|i| format!("line {i}\n")).collect();
        let text = summary(many.as_bytes(), b"", None);
        assert!(
            text.starts_with("line 40 |") && text.ends_with("line 49"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_cut_stream_starts_at_a_line_boundary() {
        let mut input = b"half a secret\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', MAX_OUTPUT_BYTES));
        input.extend_from_slice(b"\nlast\n");
        assert_eq!(tail(Some(input.as_slice())).await, b"last\n");
        // One line longer than the limit, cut before its end arrives, is dropped whole.
        let mut input = b"start\n".to_vec();
        input.extend(std::iter::repeat_n(b'y', 3 * MAX_OUTPUT_BYTES));
        input.extend_from_slice(b"secret-tail\nnext\n");
        assert_eq!(tail(Some(input.as_slice())).await, b"next\n");
        let short = b"a\nb\n".as_slice();
        assert_eq!(tail(Some(short)).await, b"a\nb\n");
    }
}
