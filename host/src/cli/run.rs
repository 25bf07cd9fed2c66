//! `flex run`: one verb of a component, as kubelet would call it, for the development loop.
//!
//! The JSON reply is printed on stdout exactly as kubelet would read it; everything for the
//! person goes to stderr: which driver name and which policy file the call uses (never a
//! silently derived `x.toml`), and with `--log-stderr` this call's lines of the node's log
//! and audit trail. A `Failure` reply carries the tail of the driver's captured stderr.

use super::logs::{self, Kind};
use crate::logfile::{Logger, log_dir};
use crate::policy::{self, Policy};
use crate::{locate, protocol, runtime};
use clap::Args;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct RunArgs {
    /// The WebAssembly component to run
    #[arg(long, value_name = "FILE")]
    component: PathBuf,
    /// The policy file to run it under
    #[arg(long, value_name = "FILE", conflicts_with_all = ["installed_policy", "no_policy"])]
    policy: Option<PathBuf>,
    /// Use the installed policy of the driver's name (FLEX_POLICY_DIR/<name>.toml)
    #[arg(long, conflicts_with = "no_policy")]
    installed_policy: bool,
    /// Run with no policy: every privileged import is refused
    #[arg(long)]
    no_policy: bool,
    /// The driver's name for logs, audit and state (default: from the component's path)
    #[arg(long, value_name = "VENDOR~DRIVER")]
    name: Option<String>,
    /// Print this call's log and audit lines to stderr
    #[arg(long)]
    log_stderr: bool,
    /// Check and audit privileged operations as would-do; perform none
    #[arg(long)]
    dry_run: bool,
    /// The FlexVolume verb (init, mount, ...)
    verb: String,
    /// The verb's arguments, as kubelet passes them
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

/// Lines of the driver's stderr a Failure message carries.
const STDERR_TAIL_LINES: usize = 5;
const STDERR_TAIL_BYTES: usize = 1000;

pub fn command(a: RunArgs) -> Result<i32, String> {
    let mut plugin = locate::locate("flex", Some(&a.component.to_string_lossy()));
    if let Some(name) = &a.name {
        plugin.name = name.clone();
    }
    let (policy, source) = choose_policy(&a, &plugin.name)?;
    let mut err = std::io::stderr();
    let _ = writeln!(
        err,
        "flex run: driver {}, component {}, policy {source}{}",
        plugin.name,
        a.component.display(),
        if a.dry_run { ", dry run" } else { "" }
    );
    let dir = log_dir();
    let (log_from, audit_from) = (
        Mark::of(&dir.join("flex.log")),
        Mark::of(&dir.join("audit.jsonl")),
    );
    let dry_run = a.dry_run || std::env::var_os("FLEX_DRY_RUN").is_some_and(|v| v == "1");
    let mut logger = Logger::open(&plugin.name, &a.verb);
    let mut reply = match protocol::parse(&a.verb, &a.args) {
        Ok(call) => {
            let (reply, returned) = runtime::run(&plugin, &policy, call, &a.verb, logger, dry_run);
            logger = returned;
            reply
        }
        Err(reply) => reply,
    };
    logger.log(
        "info",
        "host",
        &format!("reply {}", reply.to_line().trim_end()),
    );
    drop(logger);
    let me = u64::from(std::process::id());
    let log_lines = log_from.lines_since(me);
    if reply.status == protocol::FAILURE {
        let tail = stderr_tail(&log_lines);
        if let Some(message) = reply
            .message
            .as_mut()
            .filter(|m| !tail.is_empty() && !m.contains(&tail))
        {
            message.push_str(&format!(" (driver stderr: {tail})"));
        }
    }
    if a.log_stderr {
        for line in &log_lines {
            let _ = writeln!(err, "log   {}", logs::text(Kind::Log, line));
        }
        for line in audit_from.lines_since(me) {
            let _ = writeln!(err, "audit {}", logs::text(Kind::Audit, &line));
        }
    }
    let _ = std::io::stdout().write_all(reply.to_line().as_bytes());
    Ok(reply.exit_code())
}

fn choose_policy(a: &RunArgs, name: &str) -> Result<(Policy, String), String> {
    if a.no_policy {
        return Ok((
            Policy::default(),
            "none (--no-policy: nothing granted)".into(),
        ));
    }
    if let Some(file) = &a.policy {
        return Ok((load_file(file, Some(name))?, file.display().to_string()));
    }
    if a.installed_policy {
        let path = policy::policy_path(name);
        let shown = match path.exists() {
            true => path.display().to_string(),
            false => format!("{} (absent: nothing granted)", path.display()),
        };
        return Ok((policy::load(name)?, shown));
    }
    Err(format!(
        "say which policy to run {name} under: --policy FILE, --installed-policy ({}) or --no-policy",
        policy::policy_path(name).display()
    ))
}

/// A policy file as `policy::load` reads an installed one: parsed, overlaps and exposure checked.
pub fn load_file(file: &Path, driver: Option<&str>) -> Result<Policy, String> {
    let (text, mode) = policy::read_with_mode(file)
        .map_err(|e| format!("cannot read policy {}: {e}", file.display()))?;
    let policy = policy::parse(&text, file)?;
    policy::check_overlaps(&policy, driver, file)?;
    crate::caps::config::check_exposure(file, mode, &policy.config)
        .map_err(|e| format!("refusing {e}"))?;
    Ok(policy)
}

/// The last lines the driver wrote to its stderr during this call, on one line.
fn stderr_tail(lines: &[serde_json::Value]) -> String {
    let stderr: Vec<&str> = lines
        .iter()
        .filter(|l| l["source"] == "driver stderr")
        .filter_map(|l| l["message"].as_str())
        .collect();
    let tail = stderr[stderr.len().saturating_sub(STDERR_TAIL_LINES)..].join(" | ");
    let (cut, _) = crate::logfile::cut(&tail, STDERR_TAIL_BYTES);
    cut.to_string()
}

/// Where a log file ended before the call, to read back this call's lines after it.
struct Mark {
    path: PathBuf,
    len: u64,
}

impl Mark {
    fn of(path: &Path) -> Mark {
        let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        Mark {
            path: path.to_path_buf(),
            len,
        }
    }

    /// This process's lines written since the mark; a rotation during the call moved the
    /// earlier ones to `.1`.
    fn lines_since(&self, pid: u64) -> Vec<serde_json::Value> {
        use std::io::{Read, Seek, SeekFrom};
        let read_from = |path: &Path, from: u64| {
            let mut text = Vec::new();
            if let Ok(mut file) = std::fs::File::open(path) {
                let _ = file.seek(SeekFrom::Start(from));
                let _ = file.read_to_end(&mut text);
            }
            text
        };
        let now = std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
        let mut bytes = Vec::new();
        if now < self.len {
            let mut rotated = self.path.clone().into_os_string();
            rotated.push(".1");
            bytes = read_from(Path::new(&rotated), self.len);
            bytes.extend(read_from(&self.path, 0));
        } else {
            bytes.extend(read_from(&self.path, self.len));
        }
        String::from_utf8_lossy(&bytes)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|l| l["pid"].as_u64() == Some(pid))
            .collect()
    }
}
