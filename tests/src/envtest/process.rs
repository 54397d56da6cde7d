//! Processes started detached, as `hack/envtest.sh`'s `start_proc` starts them: a process
//! group of their own (no signal from a terminal reaches them), stdin from /dev/null, output
//! appended to `$STATE_DIR/logs/NAME.log` and the PID in `$STATE_DIR/pids/NAME.pid`. Every such process has the state dir in its
//! command line, which is how a PID that was reused by something else is told apart.

use std::ffi::OsStr;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::{Envtest, log};

/// Exists and is not a zombie.
pub fn pid_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name, which may itself contain ") ".
    stat.rsplit_once(") ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .is_some_and(|state| state != "Z")
}

/// The process's command line, arguments joined by spaces.
fn command_line(pid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(String::from_utf8_lossy(&raw).replace('\0', " "))
}

impl Envtest {
    /// The PID of the process `name` started for this control plane, if it still runs.
    pub fn pid_of(&self, name: &str) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(self.pid_file(name))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let ours = command_line(pid)?.contains(&self.state_dir.display().to_string());
        (pid_alive(pid) && ours).then_some(pid)
    }

    pub fn running(&self, name: &str) -> bool {
        self.pid_of(name).is_some()
    }

    /// Starts `program args` detached as `name`, with `env` added to its environment.
    pub fn start_process<S: AsRef<OsStr>>(
        &self,
        name: &str,
        program: &std::path::Path,
        args: &[S],
        env: &[(&str, &std::path::Path)],
    ) -> anyhow::Result<()> {
        let log_path = self.log_file(name);
        let pid_path = self.pid_file(name);
        for dir in [log_path.parent(), pid_path.parent()].into_iter().flatten() {
            std::fs::create_dir_all(dir)?;
        }
        let log_file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        // Spawned directly rather than through setsid(1): spawn returns once the program
        // itself runs, so its command line already names the state dir. Through setsid there
        // is a second exec, during which /proc shows no command line and `pid_of` would
        // report the process as gone.
        let mut child = Command::new(program)
            .args(args)
            .envs(env.iter().copied())
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        std::fs::write(&pid_path, format!("{}\n", child.id()))?;
        // Reaped when it exits, so that a killed one does not linger as a zombie of a
        // long-running caller; a caller that exits first leaves it to init. How it ended goes
        // to its log, which is all a failure report has when it said nothing itself.
        std::thread::spawn(move || {
            if let Ok(status) = child.wait() {
                let log = OpenOptions::new().append(true).open(&log_path);
                let _ = log.and_then(|mut log| writeln!(log, "==> {status}"));
            }
        });
        Ok(())
    }

    /// SIGTERM, then SIGKILL after `grace`; only PIDs from this control plane's pid files.
    pub fn stop_processes(&self, grace: Duration, names: &[&str]) -> anyhow::Result<()> {
        let mut pids = Vec::new();
        let mut stopped = Vec::new();
        for name in names {
            if let Some(pid) = self.pid_of(name) {
                signal("TERM", &[pid])?;
                pids.push(pid);
                stopped.push(*name);
            }
            remove_if_present(&self.pid_file(name))?;
        }
        if pids.is_empty() {
            return Ok(());
        }
        let deadline = Instant::now() + grace;
        loop {
            let alive: Vec<u32> = pids.iter().copied().filter(|p| pid_alive(*p)).collect();
            if alive.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                let listed: Vec<String> = alive.iter().map(u32::to_string).collect();
                log(&format!(
                    "killing {} after {}s",
                    listed.join(" "),
                    grace.as_secs()
                ));
                signal("KILL", &alive)?;
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        log(&format!("stopped {}", stopped.join(" ")));
        Ok(())
    }

    /// Kills `name` at once, with no goodbye; false when it was not running.
    pub fn kill_process(&self, name: &str) -> anyhow::Result<bool> {
        let Some(pid) = self.pid_of(name) else {
            return Ok(false);
        };
        signal("KILL", &[pid])?;
        remove_if_present(&self.pid_file(name))?;
        Ok(true)
    }
}

/// kill(1): signals are out of reach of safe Rust's standard library.
fn signal(signal: &str, pids: &[u32]) -> anyhow::Result<()> {
    // A process that exited meanwhile makes kill fail; that is what was wanted anyway.
    Command::new("kill")
        .arg(format!("-{signal}"))
        .args(pids.iter().map(u32::to_string))
        .stderr(Stdio::null())
        .status()
        .context("running kill")?;
    Ok(())
}

pub fn remove_if_present(path: &std::path::Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::pid_alive;

    #[test]
    fn this_process_is_alive_and_a_pid_beyond_the_maximum_is_not() {
        assert!(pid_alive(std::process::id()));
        assert!(!pid_alive(u32::MAX));
    }
}
