//! One exec of the driver, as kubelet's `DriverCall.Run` makes it (protocol notes §1): direct
//! exec, stdin `/dev/null`, stdout and stderr into one buffer (`CombinedOutput`), the call
//! over when the process has exited and the pipe is closed. Unlike kubelet, every call here
//! is bounded: a timeout (SIGTERM, then SIGKILL to the driver's process group) and a cap on
//! the output kept.

pub use super::reply::{Reply, parse};
use std::ffi::OsString;
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Set by SIGINT/SIGTERM: the running call is killed and the run stops, cleaning up.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Output kept per call; the rest is read and dropped so the driver never blocks on it.
const OUTPUT_CAP: usize = 1 << 20;
/// After SIGTERM, how long the driver gets before SIGKILL (kubelet: 10 s).
const KILL_GRACE: Duration = Duration::from_secs(2);

/// How the driver is exec'd: the program, and the environment changes on top of ours.
#[derive(Clone)]
pub struct Runner {
    pub program: PathBuf,
    pub env: Vec<(String, OsString)>,
    pub remove_env: Vec<&'static str>,
    pub timeout: Duration,
    pub verbose: bool,
}

#[derive(Clone, Debug)]
pub struct Outcome {
    pub args: Vec<String>,
    pub pid: u32,
    pub output: Vec<u8>,
    pub truncated: bool,
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub spawn_error: Option<String>,
    pub timed_out: bool,
    /// The driver exited but something it started kept stdout/stderr open.
    pub held_open: bool,
    pub elapsed: Duration,
    pub reply: Result<Reply, String>,
}

/// kubelet's reading of a call (protocol notes §1, §2).
#[derive(Clone, Debug, PartialEq)]
pub enum View {
    Success,
    NotSupported,
    Failure(String),
}

impl Outcome {
    /// A call not (yet) made.
    pub fn empty(args: &[String], reply: Result<Reply, String>) -> Outcome {
        Outcome {
            args: args.to_vec(),
            pid: 0,
            output: Vec::new(),
            truncated: false,
            code: None,
            signal: None,
            spawn_error: None,
            timed_out: false,
            held_open: false,
            elapsed: Duration::ZERO,
            reply,
        }
    }

    pub fn view(&self) -> View {
        let reply = match &self.reply {
            Ok(reply) => reply,
            Err(e) => return View::Failure(e.clone()),
        };
        match reply.status.as_deref() {
            Some("Not supported") => View::NotSupported,
            Some("Success") if self.code == Some(0) => View::Success,
            Some("Success") => View::Failure(format!(
                "driver bug: Success with {} (kubelet: a failure)",
                self.exit_text()
            )),
            Some("Failure") => View::Failure(format!(
                "Failure: {}",
                reply.message.as_deref().unwrap_or("(no message)")
            )),
            other => View::Failure(format!(
                "status {:?} (kubelet: a failure), message: {}",
                other.unwrap_or(""),
                reply.message.as_deref().unwrap_or("")
            )),
        }
    }

    pub fn is_success(&self) -> bool {
        self.view() == View::Success
    }

    pub fn exit_text(&self) -> String {
        match (self.code, self.signal) {
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(signal)) => format!("signal {signal}"),
            _ => "no exit status".into(),
        }
    }

    /// The start of the output, for messages.
    pub fn snippet(&self) -> String {
        let text = String::from_utf8_lossy(&self.output);
        let (cut, more) = crate::logfile::cut(text.trim_end(), 300);
        let more = if more || self.truncated { "…" } else { "" };
        format!("{cut:?}{more}")
    }

    /// `verb arg…` with the JSON arguments shortened.
    pub fn argv_text(&self) -> String {
        self.args
            .iter()
            .map(|a| match a.starts_with('{') && a.len() > 60 {
                true => "'{…}'".to_string(),
                false if a.is_empty() => "''".to_string(),
                false => a.clone(),
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

impl Runner {
    /// Runs `argv[1..] = args` (the verb first) with `extra` environment on top.
    pub fn call(&self, args: &[String], extra: &[(&str, OsString)]) -> Outcome {
        let started = Instant::now();
        let mut outcome = Outcome::empty(args, Err(String::new()));
        match self.spawn_and_wait(args, extra, &mut outcome) {
            Ok(()) => {}
            Err(e) => outcome.spawn_error = Some(e),
        }
        outcome.elapsed = started.elapsed();
        outcome.reply = decode(&outcome);
        if self.verbose {
            eprintln!(
                "  exec  {} -> {} {} ({} ms)",
                outcome.argv_text(),
                outcome.exit_text(),
                outcome.snippet(),
                outcome.elapsed.as_millis()
            );
        }
        outcome
    }

    fn spawn_and_wait(
        &self,
        args: &[String],
        extra: &[(&str, OsString)],
        outcome: &mut Outcome,
    ) -> Result<(), String> {
        let (read_end, write_end) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
        let mut child = {
            let mut command = Command::new(&self.program);
            command
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::from(
                    write_end.try_clone().map_err(|e| format!("dup: {e}"))?,
                ))
                .stderr(Stdio::from(write_end))
                .current_dir("/")
                // Its own process group: a timeout kills what the driver started too, and a
                // Ctrl-C at the terminal reaches only this runner, which then cleans up.
                .process_group(0);
            for name in &self.remove_env {
                command.env_remove(name);
            }
            for (name, value) in self
                .env
                .iter()
                .map(|(n, v)| (n.as_str(), v))
                .chain(extra.iter().map(|(n, v)| (*n, v)))
            {
                command.env(name, value);
            }
            // Spawned, the command (and with it our copies of the write end) is dropped here.
            command
                .spawn()
                .map_err(|e| format!("cannot exec {}: {e}", self.program.display()))?
        };
        outcome.pid = child.id();
        let mut pipe = std::fs::File::from(read_end);
        let deadline = Instant::now() + self.timeout;
        let mut status = None;
        let mut eof = false;
        let mut buffer = [0u8; 16384];
        while !(eof && status.is_some()) {
            if Instant::now() >= deadline || INTERRUPTED.load(Ordering::Relaxed) {
                outcome.timed_out = !INTERRUPTED.load(Ordering::Relaxed);
                outcome.held_open = status.is_some() && !eof;
                status = Some(kill_group(&mut child, status));
                break;
            }
            if !eof {
                let mut fds = [nix::poll::PollFd::new(
                    pipe.as_fd(),
                    nix::poll::PollFlags::POLLIN,
                )];
                let ready = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(20u16));
                if ready.is_ok_and(|n| n > 0) {
                    match pipe.read(&mut buffer) {
                        Ok(0) => eof = true,
                        Ok(n) => {
                            let room = OUTPUT_CAP.saturating_sub(outcome.output.len());
                            outcome.output.extend_from_slice(&buffer[..n.min(room)]);
                            outcome.truncated |= n > room;
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(_) => eof = true,
                    }
                }
            } else {
                std::thread::sleep(Duration::from_millis(5));
            }
            if status.is_none() {
                status = child.try_wait().map_err(|e| format!("wait: {e}"))?;
            }
        }
        if let Some(status) = status {
            outcome.code = status.code();
            outcome.signal = status.signal();
        }
        Ok(())
    }
}

/// SIGTERM to the driver's process group, SIGKILL after the grace; reaps the driver.
fn kill_group(
    child: &mut std::process::Child,
    exited: Option<std::process::ExitStatus>,
) -> std::process::ExitStatus {
    use nix::sys::signal::{Signal, killpg};
    let group = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = killpg(group, Signal::SIGTERM);
    let until = Instant::now() + KILL_GRACE;
    let mut status = exited;
    while status.is_none() && Instant::now() < until {
        status = child.try_wait().ok().flatten();
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = killpg(group, Signal::SIGKILL);
    status.unwrap_or_else(|| {
        child
            .wait()
            .unwrap_or_else(|_| std::process::ExitStatus::from_raw(9))
    })
}

/// The reply as one JSON object, or why kubelet could not read one.
fn decode(outcome: &Outcome) -> Result<Reply, String> {
    if let Some(e) = &outcome.spawn_error {
        return Err(format!("{e} (kubelet: unexpected end of JSON input)"));
    }
    if outcome.timed_out {
        let held = match outcome.held_open {
            true => {
                "; the driver had exited, but a process it started kept stdout/stderr open, \
                 and kubelet waits for them to close"
            }
            false => "",
        };
        return Err(format!(
            "no reply within the timeout ({} ms){held}",
            outcome.elapsed.as_millis()
        ));
    }
    if outcome.truncated {
        return Err(format!("more than {OUTPUT_CAP} bytes of output"));
    }
    parse(&outcome.output)
}
