//! `flex logs` and `flex audit`: the node's log and audit trail (`FLEX_LOG_DIR`, default
//! `/var/log/flex`: `flex.log`, `audit.jsonl` and their rotated `.1` ... `.N`), oldest first,
//! filtered, with readable UTC times; `--json` prints the matching lines as written.

use super::{AuditArgs, Filters, LogsArgs};
use crate::logfile::{Rotation, log_dir};
use serde_json::Value;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Clone, Copy, PartialEq)]
pub enum Kind {
    Log,
    Audit,
}

/// A `--since`/`--until` value: RFC 3339 in UTC (`2026-12-01T08:00:00Z`, also without the
/// `T`, `Z` or seconds' fraction) or an age before now (`30s`, `10m`, `2h`, `1d`).
pub fn parse_time(text: &str) -> Result<SystemTime, String> {
    if let Ok(age) = humantime::parse_duration(text) {
        return SystemTime::now()
            .checked_sub(age)
            .ok_or_else(|| format!("{text:?} is before 1970"));
    }
    humantime::parse_rfc3339_weak(text.trim_end_matches('Z')).map_err(|_| {
        format!("{text:?} is neither an RFC 3339 time (2026-12-01T08:00:00Z) nor an age (10m, 2h)")
    })
}

struct Query<'a> {
    kind: Kind,
    filters: &'a Filters,
    since: Option<u128>,
    until: Option<u128>,
    level: Option<&'a str>,
    decision: Option<&'a str>,
    operation: Option<&'a str>,
}

pub fn logs(a: &LogsArgs) -> Result<i32, String> {
    let q = Query::new(Kind::Log, &a.filters)?;
    run(
        Query {
            level: a.level.as_deref(),
            ..q
        },
        "flex.log",
    )
}

pub fn audit(a: &AuditArgs) -> Result<i32, String> {
    let q = Query::new(Kind::Audit, &a.filters)?;
    let q = Query {
        decision: a.decision.as_deref(),
        operation: a.operation.as_deref(),
        ..q
    };
    run(q, "audit.jsonl")
}

impl<'a> Query<'a> {
    fn new(kind: Kind, filters: &'a Filters) -> Result<Query<'a>, String> {
        let millis = |t: &Option<String>, flag: &str| -> Result<Option<u128>, String> {
            t.as_deref()
                .map(|t| {
                    parse_time(t)
                        .map(|t| t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis())
                        .map_err(|e| format!("--{flag}: {e}"))
                })
                .transpose()
        };
        Ok(Query {
            kind,
            filters,
            since: millis(&filters.since, "since")?,
            until: millis(&filters.until, "until")?,
            level: None,
            decision: None,
            operation: None,
        })
    }

    fn matches(&self, line: &Value) -> bool {
        let f = self.filters;
        let is = |key: &str, want: Option<&str>| want.is_none_or(|w| line[key].as_str() == Some(w));
        let time = line["time_ms"].as_u64().map(u128::from).unwrap_or(0);
        is("driver", f.driver.as_deref())
            && is("verb", f.verb.as_deref())
            && is("level", self.level)
            && is("decision", self.decision)
            && is("operation", self.operation)
            // The process kubelet exec'd, whether it ran the call or a warm child did.
            && f.pid.is_none_or(|p| {
                line["pid"].as_u64() == Some(p) || line["warm_caller_pid"].as_u64() == Some(p)
            })
            && self.since.is_none_or(|s| time >= s)
            && self.until.is_none_or(|u| time <= u)
    }

    fn print(&self, raw: &str, out: &mut impl Write) -> std::io::Result<()> {
        let Ok(line) = serde_json::from_str::<Value>(raw) else {
            return Ok(()); // a line cut by a crash mid-write
        };
        if !self.matches(&line) {
            return Ok(());
        }
        match self.filters.json {
            true => writeln!(out, "{raw}"),
            false => writeln!(out, "{}", text(self.kind, &line)),
        }
    }
}

/// The files of one log, oldest first: `name.N` ... `name.1`, `name`.
fn files(dir: &Path, name: &str) -> Vec<PathBuf> {
    let keep = Rotation::from_env().keep.max(3);
    let mut files: Vec<PathBuf> = (1..=keep)
        .rev()
        .map(|n| dir.join(format!("{name}.{n}")))
        .filter(|p| p.exists())
        .collect();
    files.push(dir.join(name));
    files
}

fn run(q: Query, name: &str) -> Result<i32, String> {
    let dir = log_dir();
    let mut out = std::io::stdout().lock();
    let mut found = false;
    for path in files(&dir, name) {
        match std::fs::read(&path) {
            Ok(bytes) => {
                found = true;
                for raw in String::from_utf8_lossy(&bytes).lines() {
                    if q.print(raw, &mut out).is_err() {
                        return Ok(0); // stdout closed (`| head`)
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        }
    }
    if !found && !q.filters.follow && !dir.is_dir() {
        return Err(format!(
            "log dir {} does not exist (set FLEX_LOG_DIR if the node logs elsewhere)",
            dir.display()
        ));
    }
    let _ = out.flush();
    if q.filters.follow {
        follow(&q, &dir.join(name), &mut out)?;
    }
    Ok(0)
}

/// Prints lines appended after the end, across rotations (a new file, or a shorter one).
fn follow(q: &Query, path: &Path, out: &mut impl Write) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let identity = |m: &std::fs::Metadata| (m.dev(), m.ino());
    let mut file: Option<(std::fs::File, (u64, u64))> = None;
    let mut pending = Vec::new();
    let mut start_at_end = true;
    loop {
        if file.is_none() {
            if let Ok(mut opened) = std::fs::File::open(path) {
                let meta = opened.metadata().map_err(|e| e.to_string())?;
                if start_at_end {
                    let _ = opened.seek(SeekFrom::End(0));
                }
                file = Some((opened, identity(&meta)));
            }
            start_at_end = false;
        }
        if let Some((opened, id)) = &mut file {
            let _ = opened.read_to_end(&mut pending);
            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                let raw: Vec<u8> = pending.drain(..=end).collect();
                let raw = String::from_utf8_lossy(&raw[..end]).into_owned();
                if q.print(&raw, out).and_then(|()| out.flush()).is_err() {
                    return Ok(());
                }
            }
            let rotated = std::fs::metadata(path)
                .map(|m| identity(&m) != *id)
                .unwrap_or(true);
            if rotated {
                file = None; // the rest of the old file was read above
                pending.clear();
            }
        }
        if q.until.is_some_and(|u| now_millis() > u) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn now_millis() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
}

fn time_text(line: &Value) -> String {
    let millis = line["time_ms"].as_u64().unwrap_or(0);
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(millis)).to_string()
}

/// One line for a person: time, driver, verb[pid], then what happened. A call a warm child
/// answered shows the pid kubelet exec'd, then the child's: `mount[41 warm 17]`.
pub fn text(kind: Kind, line: &Value) -> String {
    let s = |key: &str| line[key].as_str().unwrap_or("-").to_string();
    let pid = line["pid"].as_u64().unwrap_or(0);
    let pids = match line["warm_caller_pid"].as_u64() {
        Some(caller) => format!("{caller} warm {pid}"),
        None => pid.to_string(),
    };
    let head = format!("{} {} {}[{pids}]", time_text(line), s("driver"), s("verb"));
    match kind {
        Kind::Log => {
            let cut = if line["truncated"] == true {
                " [truncated]"
            } else {
                ""
            };
            format!(
                "{head} {} {}: {}{cut}",
                s("level"),
                s("source"),
                s("message")
            )
        }
        Kind::Audit => {
            let args = match &line["args"] {
                Value::Null => String::new(),
                args => format!(" {args}"),
            };
            let result = match line["result"].as_str() {
                Some("ok") => "ok".to_string(),
                Some(error) => format!("error: {error}"),
                None => "-".into(),
            };
            format!(
                "{head} {} {}{args}; rule: {}; {result} ({}us)",
                s("decision").to_uppercase(),
                s("operation"),
                s("rule"),
                line["duration_us"].as_u64().unwrap_or(0)
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_or_ages() {
        let t = parse_time("2026-12-01T08:00:00Z").unwrap();
        assert_eq!(
            t.duration_since(UNIX_EPOCH).unwrap().as_secs(),
            1_796_112_000
        );
        let ago = SystemTime::now()
            .duration_since(parse_time("10m").unwrap())
            .unwrap();
        assert!((599..=601).contains(&ago.as_secs()), "{ago:?}");
        assert!(parse_time("yesterday").is_err());
    }

    #[test]
    fn audit_lines_read_as_sentences() {
        let line = serde_json::json!({"time_ms": 0, "pid": 7, "driver": "acme~x", "verb": "mount",
            "operation": "mount", "args": {"fs": "tmpfs"}, "decision": "deny",
            "rule": "no [mount] grant", "result": "denied: no", "duration_us": 3});
        assert_eq!(
            text(Kind::Audit, &line),
            "1970-01-01T00:00:00.000Z acme~x mount[7] DENY mount {\"fs\":\"tmpfs\"}; rule: no [mount] grant; error: denied: no (3us)"
        );
    }

    #[test]
    fn a_warm_call_is_found_and_shown_by_the_pid_kubelet_exec_d() {
        let line = serde_json::json!({"time_ms": 0, "pid": 17, "warm_caller_pid": 41,
            "ppid": 5, "driver": "acme~x", "verb": "init", "level": "info", "source": "host",
            "message": "reply"});
        assert_eq!(
            text(Kind::Log, &line),
            "1970-01-01T00:00:00.000Z acme~x init[41 warm 17] info host: reply"
        );
        for (pid, found) in [(41, true), (17, true), (5, false)] {
            let filters = Filters {
                pid: Some(pid),
                ..Filters::default()
            };
            let query = Query::new(Kind::Log, &filters).unwrap();
            assert_eq!(query.matches(&line), found, "{pid}");
        }
    }
}
