//! Host programs the policy's `[[exec.programs]]` grants, run without a shell: the exact
//! path, argument vectors the grant spells (per-position patterns; flags only where a pattern
//! names them) and the environment variable names it lists. Everything the program starts is
//! killed with the call.
//!
//! ```
//! use flex_sdk::exec::{self, Output};
//! # let host = flex_sdk::testing::Host::new();
//! # host.exec.respond("/usr/sbin/iscsiadm", Output::success("iqn.2001-04.com.example:disk"));
//!
//! let out = exec::run("/usr/sbin/iscsiadm", &["-m", "session"], &[])?;
//! if out.exit_code != Some(0) {
//!     return Err(flex_sdk::failure(format!("iscsiadm: {}", out.stderr_text())));
//! }
//! assert!(out.stdout_text().starts_with("iqn."));
//! # Ok::<(), flex_sdk::Error>(())
//! ```

#[cfg(target_arch = "wasm32")]
use crate::bindings::flex::volume::exec as host;
#[cfg(not(target_arch = "wasm32"))]
use crate::testing::fake::exec as host;
use crate::{Result, failure};

pub use crate::bindings::flex::volume::exec::Output;

/// Runs `program` with `args` and `env` (plus the host's fixed `PATH`) as its environment;
/// anything the policy does not grant is a `Failure` before the program starts. A program
/// that ran is `Ok` whatever its exit code: check [`Output::exit_code`].
pub fn run(program: &str, args: &[&str], env: &[(&str, &str)]) -> Result<Output> {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    host::run(program, &args, &env).map_err(failure)
}

/// Constructors (for scripting a [`testing::Exec`](crate::testing::Exec) answer) and text
/// accessors.
impl Output {
    /// A program that exited with `code`, with no output.
    pub fn exited(code: i32) -> Self {
        Output {
            exit_code: Some(code),
            stdout: Vec::new(),
            stderr: Vec::new(),
        }
    }
    /// A program that exited 0 and printed `stdout`.
    pub fn success(stdout: impl Into<Vec<u8>>) -> Self {
        Output::exited(0).with_stdout(stdout)
    }
    /// A program killed by a signal or the timeout (no exit code).
    pub fn killed() -> Self {
        Output {
            exit_code: None,
            ..Output::exited(0)
        }
    }
    /// The same output with `stdout`.
    pub fn with_stdout(mut self, stdout: impl Into<Vec<u8>>) -> Self {
        self.stdout = stdout.into();
        self
    }
    /// The same output with `stderr`.
    pub fn with_stderr(mut self, stderr: impl Into<Vec<u8>>) -> Self {
        self.stderr = stderr.into();
        self
    }
    /// `stdout` as text (invalid UTF-8 replaced).
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    /// `stderr` as text (invalid UTF-8 replaced).
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}
