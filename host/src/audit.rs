//! The audit trail: one JSON line per privileged call in `FLEX_LOG_DIR/audit.jsonl`, saying
//! who asked for what, whether the policy allowed it and by which rule, what happened and how
//! long it took. Lines are written with a single `O_APPEND` write each to a root-only file that
//! rotates by size ([`LogFile`]), so concurrent calls never interleave or lose lines. One line
//! is at most `limits.audit_line_bytes`: arguments are truncated to fit (the line says
//! `"truncated": true`). Secret-looking values are redacted ([`redact_option`]).

use crate::limits::Limits;
use crate::logfile::{LogFile, log_dir};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Shared by every capability of one call; the file is opened on the first record, so calls
/// that do nothing privileged (most `init`s) pay nothing.
#[derive(Clone)]
pub struct Audit {
    /// `None`: records are dropped (unit tests that do not look at them).
    file: Option<Arc<Mutex<LogFile>>>,
    driver: Arc<str>,
    verb: Arc<str>,
    line_limit: usize,
    pub dry_run: bool,
    /// Denials so far in this call (shared by every clone): past [`DENIAL_LINES_PER_CALL`]
    /// they are counted, not written, so a driver looping over refused requests cannot rotate
    /// the trail of what was done out of the log.
    denials: Arc<AtomicU64>,
}

/// Denial lines one call writes; the next writes one line saying the rest are not recorded.
/// Allowed and dry-run lines are always written (each is a privileged action).
pub const DENIAL_LINES_PER_CALL: u64 = 100;

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
            file: path.map(|path| Arc::new(Mutex::new(LogFile::new(path)))),
            driver: driver.into(),
            verb: verb.into(),
            line_limit: line_limit(Limits::default().audit_line_bytes),
            dry_run,
            denials: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The longest line (`limits.audit_line_bytes`); set it before the audit is shared.
    pub fn with_line_limit(mut self, bytes: u64) -> Audit {
        self.line_limit = line_limit(bytes);
        self
    }

    fn record(
        &self,
        operation: &str,
        args: Value,
        decision: Decision,
        result: &Result<(), String>,
        started: Instant,
    ) {
        let Some(file) = &self.file else { return };
        let (decision, rule) = match decision {
            Decision::Allow { rule } => ("allow", rule),
            Decision::WouldDo { rule } => ("would-do", rule),
            Decision::Deny { reason } => ("deny", reason),
        };
        let mut record = json!({
            "time_ms": SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0),
            "pid": std::process::id(),
            "driver": &*self.driver,
            "verb": &*self.verb,
            "operation": operation,
            "args": args,
            "decision": decision,
            "rule": rule,
            "result": match result { Ok(()) => "ok", Err(e) => e.as_str() },
            "duration_us": started.elapsed().as_micros() as u64,
        });
        crate::logfile::add_exec_parent(&mut record);
        let line = bounded_line(record, self.line_limit);
        if let Ok(mut file) = file.lock() {
            file.append(&line);
        }
    }
}

fn line_limit(bytes: u64) -> usize {
    usize::try_from(bytes).unwrap_or(usize::MAX)
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
        if matches!(decision, Decision::Deny { .. }) {
            let denials = self.denials.fetch_add(1, Ordering::Relaxed) + 1;
            if denials > DENIAL_LINES_PER_CALL {
                if denials == DENIAL_LINES_PER_CALL + 1 {
                    let reason = format!(
                        "more than {DENIAL_LINES_PER_CALL} denials in this call: the rest are not recorded"
                    );
                    let reason = Decision::Deny { reason: &reason };
                    self.record("audit", json!({}), reason, &outcome, started);
                }
                return result;
            }
        }
        self.record(operation, args, decision, &outcome, started);
        result
    }
}

fn encode(record: &Value) -> Vec<u8> {
    let mut bytes = serde_json::to_vec(record).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

/// `record` as one line of at most `limit` bytes, newline included: its arguments are cut
/// (strings shortened, long lists shortened, each marked with `…`) as little as fits, and
/// `"truncated": true` added. Should even empty arguments not fit, the rule and result are cut
/// too; only the fixed fields (times, names, decision) are never cut.
fn bounded_line(mut record: Value, limit: usize) -> Vec<u8> {
    let line = encode(&record);
    if line.len() <= limit {
        return line;
    }
    record["truncated"] = true.into();
    let args = record["args"].take();
    let fits = |record: &mut Value, keep: usize| {
        record["args"] = shrink(&args, keep);
        encode(record).len() <= limit
    };
    // No string or list longer than the limit fits anyway: search below it.
    let (mut low, mut high) = (0, widest(&args).min(limit));
    let mut best = None;
    while low <= high {
        let middle = low + (high - low) / 2;
        if fits(&mut record, middle) {
            best = Some(middle);
            low = middle + 1;
        } else if middle == 0 {
            break;
        } else {
            high = middle - 1;
        }
    }
    if let Some(keep) = best {
        record["args"] = shrink(&args, keep);
        return encode(&record);
    }
    record["args"] = shrink(&args, 0);
    for key in ["rule", "result"] {
        record[key] = shrink(&record[key], limit / 4);
    }
    if encode(&record).len() > limit {
        record["args"] = Value::Null;
        for key in ["rule", "result"] {
            record[key] = shrink(&record[key], 0);
        }
    }
    encode(&record)
}

/// The longest string (in bytes) or list in `value`.
fn widest(value: &Value) -> usize {
    match value {
        Value::String(s) => s.len(),
        Value::Array(items) => items.iter().map(widest).fold(items.len(), usize::max),
        Value::Object(map) => map.values().map(widest).max().unwrap_or(0),
        _ => 0,
    }
}

/// `value` with every string cut to `keep` bytes and every list to `keep` items.
fn shrink(value: &Value, keep: usize) -> Value {
    match value {
        Value::String(s) if s.len() > keep => {
            let (kept, _) = crate::logfile::cut(s, keep);
            Value::String(format!("{kept}…"))
        }
        Value::Array(items) => {
            let mut kept: Vec<Value> = items.iter().take(keep).map(|v| shrink(v, keep)).collect();
            if items.len() > keep {
                kept.push(Value::String(format!("… {} more", items.len() - keep)));
            }
            Value::Array(kept)
        }
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), shrink(v, keep)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Parts of a key that make its value a secret: `password`, `secret_access_key`,
/// `X-Auth-Token`, `credentials`, `AccessKeyId`, `private_key`...
const SECRET_WORDS: [&str; 9] = [
    "pass",
    "secret",
    "token",
    "key",
    "cred",
    "auth",
    "signature",
    "private",
    "session",
];

/// Whether a value stored under `key` should be treated as a secret.
pub fn secret_looking(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    SECRET_WORDS.iter().any(|word| key.contains(word))
}

/// A mount option, an option string or an exec argument, with secret-looking values replaced
/// by `<redacted>`: each comma-separated part is `key=value` or `key:value` with a secret-looking
/// key (`password=hunter2` → `password=<redacted>`, `size=1m,password=x` →
/// `size=1m,password=<redacted>`, `Authorization: Bearer x`), and URLs lose their user
/// information and query (`https://<redacted>@host/path?<redacted>`).
pub fn redact_option(option: &str) -> String {
    option
        .split(',')
        .map(redact_part)
        .collect::<Vec<_>>()
        .join(",")
}

fn redact_part(part: &str) -> String {
    if let Some((key, value)) = part.split_once('=')
        && !key.contains("://")
    {
        if secret_looking(key) {
            return format!("{key}=<redacted>");
        }
        return format!("{key}={}", redact_value(value));
    }
    redact_value(part)
}

/// A value without a key of its own: a URL, or `key: value`.
fn redact_value(value: &str) -> String {
    if value.contains("://") {
        return redact_url(value);
    }
    match value.split_once(':') {
        Some((key, _)) if secret_looking(key) => format!("{key}:<redacted>"),
        _ => value.to_string(),
    }
}

/// `scheme://user:pw@host/path?query#fragment` → `scheme://<redacted>@host/path?<redacted>`.
fn redact_url(text: &str) -> String {
    let Some(start) = text.find("://") else {
        return text.to_string();
    };
    let (scheme, rest) = (&text[..start + 3], &text[start + 3..]);
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let authority = match authority.rfind('@') {
        Some(at) => format!("<redacted>{}", &authority[at..]),
        None => authority.to_string(),
    };
    let tail = match tail.find(['?', '#']) {
        Some(q) if tail[q..].starts_with('?') => format!("{}?<redacted>", &tail[..q]),
        Some(f) => tail[..f].to_string(),
        None => tail.to_string(),
    };
    format!("{scheme}{authority}{tail}")
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
        assert_eq!(redact_option("--password=hunter2"), "--password=<redacted>");
    }

    #[test]
    fn secrets_inside_comma_joined_options_are_redacted() {
        assert_eq!(
            redact_option("size=1m,password=x"),
            "size=1m,password=<redacted>"
        );
        assert_eq!(
            redact_option("uid=0,sec=krb5,credentials=/root/c,token=abc,mode=0700"),
            "uid=0,sec=krb5,credentials=<redacted>,token=<redacted>,mode=0700"
        );
        assert_eq!(
            redact_option("Authorization: Bearer abc"),
            "Authorization:<redacted>"
        );
        assert_eq!(
            redact_option("--header=X-Auth-Token:abc"),
            "--header=X-Auth-Token:<redacted>"
        );
        assert_eq!(
            redact_option("nfs.example:/exports/a"),
            "nfs.example:/exports/a"
        );
    }

    #[test]
    fn urls_lose_user_information_and_query() {
        assert_eq!(
            redact_option("https://user:pw@s3.example/bucket/key?X-Amz-Signature=abc"),
            "https://<redacted>@s3.example/bucket/key?<redacted>"
        );
        assert_eq!(
            redact_option("url=http://a:b@h:8080?sig=1#top,ro"),
            "url=http://<redacted>@h:8080?<redacted>,ro"
        );
        assert_eq!(
            redact_option("http://h.example/path"),
            "http://h.example/path"
        );
    }

    fn huge_record(args: Value) -> Value {
        json!({
            "time_ms": 1, "pid": 2, "driver": "acme~x", "verb": "mount",
            "operation": "mount", "args": args, "decision": "deny",
            "rule": "denied: something", "result": "denied: something", "duration_us": 3,
        })
    }

    #[test]
    fn lines_are_capped_and_stay_json() {
        let limit = 1024;
        for args in [
            json!({"source": "x".repeat(1 << 20), "target": "/t"}),
            json!({"args": vec!["--flag"; 100_000]}),
            json!({"options": (0..5000).map(|i| format!("o{i}=é{}", "é".repeat(i % 50))).collect::<Vec<_>>()}),
        ] {
            let line = bounded_line(huge_record(args), limit);
            assert!(line.len() <= limit, "{}", line.len());
            assert!(
                line.len() > limit / 2,
                "cut more than needed: {}",
                line.len()
            );
            let value: Value = serde_json::from_slice(&line).unwrap();
            assert_eq!(value["truncated"], true);
            assert_eq!(value["decision"], "deny");
        }
        // A line that fits is left alone.
        let small = huge_record(json!({"target": "/t"}));
        let line = bounded_line(small.clone(), limit);
        assert_eq!(serde_json::from_slice::<Value>(&line).unwrap(), small);
        // A huge rule or result is cut too.
        let mut record = huge_record(json!({"target": "/t"}));
        record["rule"] = "r".repeat(100_000).into();
        let line = bounded_line(record, limit);
        assert!(line.len() <= limit);
        serde_json::from_slice::<Value>(&line).unwrap();
    }

    #[test]
    fn records_go_to_the_file_under_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let audit = Audit::to(Some(path.clone()), "acme~x", "mount", false).with_line_limit(600);
        let _ = audit.run::<()>(
            "mount",
            json!({"source": "s".repeat(10_000)}),
            Err("denied: no".into()),
            || Ok(()),
        );
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.len() <= 600, "{}", text.len());
        let line: Value = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(line["truncated"], true);
        assert!(line["args"]["source"].as_str().unwrap().ends_with('…'));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    /// A driver looping over refused requests writes a bounded number of lines; what it was
    /// allowed to do is still recorded after that.
    #[test]
    fn denials_past_the_budget_are_counted_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let audit = Audit::to(Some(path.clone()), "acme~x", "mount", false);
        for clone in [audit.clone(), audit.clone()] {
            for _ in 0..DENIAL_LINES_PER_CALL {
                let refused = clone.run::<()>("exec", json!({}), Err("denied".into()), || Ok(()));
                assert!(refused.is_err());
            }
        }
        let done = audit.run::<()>("mount", json!({}), Ok("rule".into()), || Ok(()));
        assert!(done.is_ok());
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let limit = DENIAL_LINES_PER_CALL as usize;
        assert_eq!(lines.len(), limit + 2, "{text}");
        assert!(lines[..limit].iter().all(|l| l["operation"] == "exec"));
        assert_eq!(lines[limit]["operation"], "audit");
        assert!(
            lines[limit]["rule"]
                .as_str()
                .unwrap()
                .contains("not recorded")
        );
        assert_eq!(lines[limit + 1]["decision"], "allow");
    }
}
