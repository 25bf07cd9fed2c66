//! The audit trail: one JSON line per privileged call in `FLEX_LOG_DIR/audit.jsonl`, saying
//! who asked for what, whether the policy allowed it and by which rule, what happened and how
//! long it took. Lines are written with a single `O_APPEND` write each, so concurrent calls
//! never interleave or lose lines. Secret-looking option values are redacted.

use crate::logfile::{log_dir, open_append};
use serde_json::{Value, json};
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Shared by every capability of one call; the file is opened on the first record, so calls
/// that do nothing privileged (most `init`s) pay nothing.
#[derive(Clone)]
pub struct Audit {
    /// `None`: records are dropped (unit tests that do not look at them).
    path: Option<PathBuf>,
    file: Arc<Mutex<Option<File>>>,
    driver: Arc<str>,
    verb: Arc<str>,
    pub dry_run: bool,
}

enum Decision<'a> {
    Allow {
        rule: &'a str,
    },
    /// Allowed, but not performed (dry-run mode).
    WouldDo {
        rule: &'a str,
    },
    Deny {
        reason: &'a str,
    },
}

impl Audit {
    pub fn new(driver: &str, verb: &str, dry_run: bool) -> Audit {
        Audit::to(Some(log_dir().join("audit.jsonl")), driver, verb, dry_run)
    }

    pub fn to(path: Option<PathBuf>, driver: &str, verb: &str, dry_run: bool) -> Audit {
        Audit {
            path,
            file: Arc::new(Mutex::new(None)),
            driver: driver.into(),
            verb: verb.into(),
            dry_run,
        }
    }

    fn record(
        &self,
        operation: &str,
        args: Value,
        decision: Decision,
        result: &Result<(), String>,
        started: Instant,
    ) {
        let (decision, rule) = match decision {
            Decision::Allow { rule } => ("allow", rule),
            Decision::WouldDo { rule } => ("would-do", rule),
            Decision::Deny { reason } => ("deny", reason),
        };
        let line = json!({
            "time_ms": SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0),
            "pid": std::process::id(),
            "driver": &*self.driver,
            "verb": &*self.verb,
            "operation": operation,
            "args": args,
            "decision": decision,
            "rule": rule,
            "result": match result { Ok(()) => "ok".to_string(), Err(e) => e.clone() },
            "duration_us": started.elapsed().as_micros() as u64,
        });
        let mut bytes = line.to_string().into_bytes();
        bytes.push(b'\n');
        let (Some(path), Ok(mut file)) = (&self.path, self.file.lock()) else {
            return;
        };
        if file.is_none() {
            *file = open_append(path);
        }
        if let Some(file) = file.as_mut() {
            let _ = file.write_all(&bytes);
        }
    }
}

impl Audit {
    /// Runs a privileged operation under the audit: denied, dry-run (not performed) or
    /// performed, and one line recording which. `authorized` is the rule that allows it or the
    /// reason it is denied; `perform` only runs when it is allowed and this is no dry run.
    pub fn run<T: Default>(
        &self,
        operation: &str,
        args: Value,
        authorized: Result<String, String>,
        perform: impl FnOnce() -> Result<T, String>,
    ) -> Result<T, String> {
        let started = Instant::now();
        let (decision, result) = match &authorized {
            Err(reason) => (Decision::Deny { reason }, Err(reason.clone())),
            Ok(rule) if self.dry_run => (Decision::WouldDo { rule }, Ok(T::default())),
            Ok(rule) => (Decision::Allow { rule }, perform()),
        };
        let outcome = result.as_ref().map(|_| ()).map_err(Clone::clone);
        self.record(operation, args, decision, &outcome, started);
        result
    }
}

/// `password=hunter2` → `password=<redacted>` for keys that look like credentials.
pub fn redact_option(option: &str) -> String {
    const SECRET_KEYS: [&str; 6] = ["pass", "secret", "token", "key", "cred", "auth"];
    match option.split_once('=') {
        Some((key, _))
            if SECRET_KEYS
                .iter()
                .any(|s| key.to_ascii_lowercase().contains(s)) =>
        {
            format!("{key}=<redacted>")
        }
        _ => option.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_redacted() {
        assert_eq!(redact_option("password=hunter2"), "password=<redacted>");
        assert_eq!(redact_option("AccessKeyId=AKIA"), "AccessKeyId=<redacted>");
        assert_eq!(redact_option("size=64m"), "size=64m");
        assert_eq!(redact_option("nosuid"), "nosuid");
    }
}
