//! `flex:volume/exec`: runs a host program the policy lists, the riskiest grant.
//!
//! The program is named by absolute path and must be listed exactly in `exec.programs`; it is
//! resolved and the resolved file is what runs. No shell, stdin empty, and the environment is
//! only what the driver passes, minus nothing: a request that sets a loader variable (`LD_*`)
//! is denied outright. The program runs in its own process group, killed with it when
//! `exec.timeout_seconds` pass; output is captured up to `MAX_OUTPUT` bytes per stream.

use crate::audit::{Audit, redact_option};
use crate::bindings::flex::volume::exec::{Host, Output};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MAX_OUTPUT: u64 = 1 << 20;

/// The `[exec]` table of a policy.
#[derive(Deserialize, Serialize, Debug)]
#[serde(deny_unknown_fields, default)]
pub struct ExecGrant {
    /// Absolute program paths, exactly; no patterns.
    pub programs: Vec<String>,
    pub timeout_seconds: u64,
}

impl Default for ExecGrant {
    fn default() -> Self {
        ExecGrant {
            programs: Vec::new(),
            timeout_seconds: 30,
        }
    }
}

impl ExecGrant {
    pub fn validate(&self) -> Result<(), String> {
        if let Some(p) = self.programs.iter().find(|p| !p.starts_with('/')) {
            return Err(format!("exec.programs: {p:?} is not an absolute path"));
        }
        if !(1..=600).contains(&self.timeout_seconds) {
            return Err(format!(
                "exec.timeout_seconds must be between 1 and 600, not {}",
                self.timeout_seconds
            ));
        }
        Ok(())
    }
}

pub struct Exec {
    programs: Vec<String>,
    timeout: Duration,
    audit: Audit,
}

impl Exec {
    /// `grant` must have passed [`ExecGrant::validate`].
    pub fn new(grant: &ExecGrant, audit: Audit) -> Exec {
        Exec {
            programs: grant.programs.clone(),
            timeout: Duration::from_secs(grant.timeout_seconds),
            audit,
        }
    }

    /// The resolved program and the rule that allows it.
    fn authorize(
        &self,
        program: &str,
        env: &[(String, String)],
    ) -> Result<(PathBuf, String), String> {
        if !self.programs.iter().any(|p| p == program) {
            return Err(format!(
                "denied: program {program:?} is not listed in the policy's exec.programs"
            ));
        }
        if let Some((key, _)) = env.iter().find(|(k, _)| is_loader_variable(k)) {
            return Err(format!(
                "denied: environment variable {key} changes how programs are loaded"
            ));
        }
        if let Some((key, _)) = env
            .iter()
            .find(|(k, _)| k.is_empty() || k.contains(['=', '\0']))
        {
            return Err(format!("denied: invalid environment variable name {key:?}"));
        }
        let resolved = std::fs::canonicalize(program)
            .map_err(|e| format!("denied: program {program}: {e}"))?;
        Ok((resolved, format!("exec.programs {program:?}")))
    }
}

/// Variables the dynamic loader or libc act on before the program's own code runs.
fn is_loader_variable(key: &str) -> bool {
    key.starts_with("LD_")
        || [
            "GCONV_PATH",
            "LOCPATH",
            "MALLOC_TRACE",
            "HOSTALIASES",
            "RESOLV_HOST_CONF",
        ]
        .contains(&key)
}

impl Host for Exec {
    fn run(
        &mut self,
        program: String,
        args: Vec<String>,
        env: Vec<(String, String)>,
    ) -> Result<Output, String> {
        let audit_args = json!({
            "program": program,
            "args": args.iter().map(|a| redact_option(a)).collect::<Vec<_>>(),
            // Values may be credentials: only the names are recorded.
            "env": env.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
        });
        let authorized = self.authorize(&program, &env);
        let rule = authorized
            .as_ref()
            .map(|(_, r)| r.clone())
            .map_err(Clone::clone);
        let timeout = self.timeout;
        let output = self.audit.run("exec", audit_args, rule, || {
            let (resolved, _) = authorized.expect("allowed");
            run_program(&resolved, &args, &env, timeout).map(Some)
        })?;
        // A dry run performs nothing and reports a program that printed nothing.
        Ok(output.unwrap_or(Output {
            exit_code: Some(0),
            stdout: Vec::new(),
            stderr: Vec::new(),
        }))
    }
}

fn run_program(
    program: &Path,
    args: &[String],
    env: &[(String, String)],
    timeout: Duration,
) -> Result<Output, String> {
    let shown = program.display();
    let mut command = Command::new(program);
    command
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    // SAFETY: prctl is async-signal-safe; the closure allocates nothing.
    unsafe {
        // Killed with `flex` (for instance by the deadline watchdog), never orphaned.
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
    let capture = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(pipe) = pipe {
                let _ = pipe.take(MAX_OUTPUT).read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = capture(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = capture(child.stderr.take().map(|p| Box::new(p) as _));
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() >= timeout => {
                // The whole group, so a forked grandchild cannot outlive the call.
                let group = nix::unistd::Pid::from_raw(-(child.id() as i32));
                let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
                let _ = child.wait();
                return Err(format!(
                    "{shown} did not finish within {}s and was killed",
                    timeout.as_secs()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(format!("waiting for {shown}: {e}")),
        }
    };
    Ok(Output {
        exit_code: status.code(),
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec(programs: &[&str]) -> Exec {
        let grant = ExecGrant {
            programs: programs.iter().map(|p| p.to_string()).collect(),
            timeout_seconds: 1,
        };
        Exec::new(&grant, Audit::to(None, "test", "mount", false))
    }

    #[test]
    fn listed_programs_run_with_only_the_given_environment() {
        let mut exec = exec(&["/usr/bin/env"]);
        let out = Host::run(
            &mut exec,
            "/usr/bin/env".into(),
            vec![],
            vec![("A".into(), "1".into())],
        )
        .unwrap();
        assert_eq!(out.exit_code, Some(0));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "A=1\n");
    }

    #[test]
    fn unlisted_programs_and_loader_variables_are_denied() {
        let mut exec = exec(&["/usr/bin/env"]);
        for (program, env) in [
            ("/bin/sh", vec![]),
            ("env", vec![]),
            ("/usr/bin/../bin/env", vec![]),
            (
                "/usr/bin/env",
                vec![("LD_PRELOAD".to_string(), "/tmp/x.so".to_string())],
            ),
            ("/usr/bin/env", vec![("A=B".to_string(), "1".to_string())]),
        ] {
            let err = Host::run(&mut exec, program.into(), vec![], env).unwrap_err();
            assert!(err.starts_with("denied:"), "{program}: {err}");
        }
    }

    #[test]
    fn a_program_past_its_timeout_is_killed_with_its_children() {
        let mut exec = exec(&["/bin/sh"]);
        let started = Instant::now();
        let err = Host::run(
            &mut exec,
            "/bin/sh".into(),
            vec!["-c".into(), "sleep 30 & sleep 30".into()],
            vec![],
        )
        .unwrap_err();
        assert!(err.contains("did not finish within 1s"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
