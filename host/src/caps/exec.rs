//! `flex:volume/exec`: runs a host program the policy lists, the riskiest grant.
//!
//! A grant is a door of exact size ([`grant`]): the program's exact absolute path, each
//! argument vector it may get (per-position exact values or globs; a flag only where a pattern
//! spells it) and the environment names the driver may set (an allowlist, behind which some
//! names are refused whatever the policy says). Anything else is denied, and audited, before
//! the program starts. The program file is opened once and checked on the descriptor (a
//! regular file, it and every directory on the way owned by root and writable by nobody else:
//! [`program`]), and that descriptor is what is executed. It runs without a shell, stdin empty,
//! with `PATH` fixed by the host, as PID 1 of its own PID namespace in its own pids cgroup
//! (`limits.exec_processes`): its exit, the timeout or the death of `flex` ends every process
//! it started ([`spawn`], [`cgroup`]). The audit shows the argument vector with secrets
//! redacted ([`redact`]).

mod cgroup;
mod grant;
mod program;
mod redact;
mod spawn;

use crate::audit::Audit;
use crate::bindings::flex::volume::exec::{Host, Output};
use crate::limits::Limits;
pub use grant::ExecGrant;
use serde_json::json;
use std::os::fd::OwnedFd;
use std::time::Duration;

pub struct Exec {
    programs: Vec<grant::Program>,
    timeout: Duration,
    max_processes: u64,
    audit: Audit,
}

/// An allowed request: the checked program descriptor and the rule that allows it.
struct Allowed {
    file: OwnedFd,
    rule: String,
}

impl Exec {
    /// `grant` and `limits` must have passed their `validate`.
    pub fn new(grant: &ExecGrant, limits: &Limits, audit: Audit) -> Exec {
        Exec {
            programs: grant.compile(),
            timeout: Duration::from_secs(grant.timeout_seconds),
            max_processes: limits.exec_processes,
            audit,
        }
    }

    fn authorize(
        &self,
        program: &str,
        args: &[String],
        env: &[(String, String)],
    ) -> Result<Allowed, String> {
        // The path exactly as listed: `/usr/bin/../bin/x` or a link to a listed program is not it.
        let Some(granted) = self.programs.iter().find(|p| p.path == program) else {
            return Err(format!(
                "denied: program {program:?} is not listed in the policy's exec.programs"
            ));
        };
        granted.check_env(env)?;
        let entry = granted.match_args(args)?;
        let file =
            program::open_trusted(&granted.path).map_err(|e| format!("denied: program {e}"))?;
        Ok(Allowed {
            file,
            rule: format!("exec.programs {program:?} args entry {}", entry + 1),
        })
    }
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
            "args": redact::arguments(&args),
            // Values may be credentials: only the names are recorded.
            "env": env.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
        });
        let authorized = self.authorize(&program, &args, &env);
        let rule = authorized
            .as_ref()
            .map(|a| a.rule.clone())
            .map_err(Clone::clone);
        let (timeout, max_processes) = (self.timeout, self.max_processes);
        let output = self.audit.run("exec", audit_args, rule, || {
            let allowed = authorized.expect("allowed");
            spawn::run(spawn::Request {
                file: allowed.file,
                path: &program,
                args: &args,
                env: &env,
                timeout,
                max_processes,
            })
            .map(Some)
        })?;
        // A dry run performs nothing and reports a program that printed nothing.
        Ok(output.unwrap_or(Output {
            exit_code: Some(0),
            stdout: Vec::new(),
            stderr: Vec::new(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn exec_with(policy: &str, limits: Limits) -> Exec {
        #[derive(serde::Deserialize)]
        struct Wrapper {
            exec: ExecGrant,
        }
        // Each run creates a cgroup and a PID namespace.
        assert!(
            nix::unistd::geteuid().is_root(),
            "run the unit tests as root"
        );
        let grant = toml::from_str::<Wrapper>(policy).unwrap().exec;
        grant.validate().unwrap();
        Exec::new(&grant, &limits, Audit::to(None, "test", "mount", false))
    }

    fn exec(policy: &str) -> Exec {
        exec_with(policy, Limits::default())
    }

    fn run(
        exec: &mut Exec,
        program: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Output, String> {
        Host::run(
            exec,
            program.into(),
            args.iter().map(|a| a.to_string()).collect(),
            env.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    const ENV: &str = "[exec]\ntimeout_seconds = 2\n[[exec.programs]]\npath = \"/usr/bin/env\"\nargs = []\nenv = [\"A\"]\n";

    #[test]
    fn listed_programs_run_with_only_the_allowed_environment_and_the_host_path() {
        let mut exec = exec(ENV);
        let out = run(&mut exec, "/usr/bin/env", &[], &[("A", "1")]).unwrap();
        assert_eq!(out.exit_code, Some(0));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("PATH={}\nA=1\n", grant::PATH)
        );
    }

    #[test]
    fn anything_not_granted_is_denied_before_the_program_starts() {
        let mut exec = exec(ENV);
        for (program, args, env) in [
            ("/bin/sh", vec![], vec![]),
            ("env", vec![], vec![]),
            ("/usr/bin/../bin/env", vec![], vec![]),
            ("/usr/bin/env", vec!["id"], vec![]),
            ("/usr/bin/env", vec![], vec![("LD_PRELOAD", "/tmp/x.so")]),
            ("/usr/bin/env", vec![], vec![("B", "1")]),
            ("/usr/bin/env", vec![], vec![("A=B", "1")]),
        ] {
            let err = run(&mut exec, program, &args, &env).unwrap_err();
            assert!(
                err.starts_with("denied:"),
                "{program} {args:?} {env:?}: {err}"
            );
        }
    }

    #[test]
    fn a_script_runs_through_its_descriptor() {
        let mut exec = exec(
            "[exec]\n[[exec.programs]]\npath = \"/bin/sh\"\nargs = [[\"-c\", \"echo $0 $$\"]]\n",
        );
        let out = run(&mut exec, "/bin/sh", &["-c", "echo $0 $$"], &[]).unwrap();
        // PID 1: the program leads its own PID namespace.
        assert_eq!(String::from_utf8_lossy(&out.stdout), "/bin/sh 1\n");
    }

    #[test]
    fn a_program_past_its_timeout_is_killed_with_its_children() {
        let script = "sleep 30 & sleep 30";
        let mut exec = exec(&format!(
            "[exec]\ntimeout_seconds = 1\n[[exec.programs]]\npath = \"/bin/sh\"\nargs = [[\"-c\", \"{script}\"]]\n"
        ));
        let started = Instant::now();
        let err = run(&mut exec, "/bin/sh", &["-c", script], &[]).unwrap_err();
        assert!(err.contains("did not finish within 1s"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_fork_bomb_hits_exec_processes() {
        let script = "for i in 1 2 3 4 5 6 7 8 9 10; do sleep 1 & done; wait";
        let mut exec = exec_with(
            &format!(
                "[exec]\n[[exec.programs]]\npath = \"/bin/sh\"\nargs = [[\"-c\", \"{script}\"]]\n"
            ),
            Limits {
                exec_processes: 4,
                ..Limits::default()
            },
        );
        let err = run(&mut exec, "/bin/sh", &["-c", script], &[]).unwrap_err();
        assert!(err.contains("limits.exec_processes"), "{err}");
    }
}
