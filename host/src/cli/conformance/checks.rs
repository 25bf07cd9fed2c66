//! The checks over all calls (reply format, exit codes, Not supported, secrets), the end
//! state (nothing mounted, no loop device), and for flex drivers the sandbox: with an empty
//! policy nothing happens and every privileged import is denied and audited; a dry run
//! performs nothing.

use super::exec::{Outcome, View};
use super::lifecycle::Suite;
use base64::Engine as _;
use serde_json::Value;
use std::collections::BTreeSet;

/// Problems listed per case, at most.
const SHOWN: usize = 3;

impl Suite<'_> {
    /// Per verb, over every call: one JSON object, exit code, Not supported consistency.
    pub fn protocol(&mut self) {
        let mut verbs: Vec<String> = Vec::new();
        for (verb, _) in &self.calls {
            if !verbs.contains(verb) {
                verbs.push(verb.clone());
            }
        }
        for verb in verbs {
            let calls: Vec<(usize, Outcome)> = self
                .calls
                .iter()
                .filter(|(v, _)| *v == verb)
                .map(|(_, o)| o.clone())
                .enumerate()
                .map(|(i, o)| (i + 1, o))
                .collect();
            // One line per distinct problem, naming the calls that had it.
            let mut bad: Vec<(String, Vec<usize>, String)> = Vec::new();
            for (i, o) in &calls {
                let Err(e) = &o.reply else { continue };
                match bad.iter_mut().find(|(seen, _, _)| seen == e) {
                    Some((_, which, _)) => which.push(*i),
                    None => {
                        let example = format!("{} -> {}", o.argv_text(), o.snippet());
                        bad.push((e.clone(), vec![*i], example));
                    }
                }
            }
            let bad: Vec<String> = bad
                .into_iter()
                .map(|(e, which, example)| {
                    let which: Vec<String> = which.iter().map(usize::to_string).collect();
                    format!(
                        "call {} of {}: {e}; e.g. {example}",
                        which.join(", "),
                        calls.len()
                    )
                })
                .collect();
            let result = match bad.is_empty() {
                true => Ok(format!("{} calls", calls.len())),
                false => Err(listed(&bad)),
            };
            self.report.result(
                &format!("{verb}: one JSON reply on stdout+stderr"),
                result,
                Vec::new(),
            );

            let (mut problems, mut warnings) = (Vec::new(), Vec::new());
            for (i, o) in calls.iter().filter(|(_, o)| o.reply.is_ok()) {
                let status = o.reply.as_ref().ok().and_then(|r| r.status.clone());
                match (status.as_deref(), o.code) {
                    (_, None) => problems.push(format!("call {i}: ended by {}", o.exit_text())),
                    (Some("Success"), Some(code)) if code != 0 => problems.push(format!(
                        "call {i}: Success with exit code {code}: kubelet reads that as a failure \
                         (\"driver bug\")"
                    )),
                    (Some("Success") | Some("Not supported"), _) => {}
                    (status, Some(0)) => warnings.push(format!(
                        "call {i}: status {:?} with exit code 0 (kubelet goes by the status; \
                         exit non-zero on failure)",
                        status.unwrap_or("")
                    )),
                    _ => {}
                }
            }
            let result = match problems.is_empty() {
                true => Ok(String::new()),
                false => Err(listed(&problems)),
            };
            warnings.truncate(SHOWN);
            self.report.result(
                &format!("{verb}: exit code matches status"),
                result,
                warnings,
            );

            let answered: Vec<View> = calls
                .iter()
                .filter(|(_, o)| o.reply.is_ok())
                .map(|(_, o)| o.view())
                .collect();
            let not_supported = answered
                .iter()
                .filter(|v| **v == View::NotSupported)
                .count();
            if not_supported > 0 {
                let result = match not_supported == answered.len() {
                    true => Ok(format!("Not supported in all {not_supported} calls")),
                    false => Err(format!(
                        "Not supported in {not_supported} of {} calls: kubelet caches the first \
                         Not supported for the verb and never asks again",
                        answered.len()
                    )),
                };
                self.report.result(
                    &format!("{verb}: Not supported answered consistently"),
                    result,
                    Vec::new(),
                );
            }
        }
    }

    /// The secret `mount` got must not be echoed, nor logged by flex.
    pub fn secrets(&mut self) {
        let sent = self
            .calls
            .iter()
            .any(|(_, o)| o.args.iter().any(|a| a.contains("kubernetes.io/secret/")));
        if !sent {
            return self
                .report
                .skip("secrets: not in driver output", "mount did not run");
        }
        let encoded = base64::engine::general_purpose::STANDARD.encode(&self.secret);
        let forms = [("decoded", self.secret.clone()), ("base64", encoded)];
        let found = |text: &[u8]| {
            forms
                .iter()
                .find(|(_, f)| text.windows(f.len()).any(|w| w == f.as_bytes()))
                .map(|(kind, _)| *kind)
        };
        let printed: Vec<String> = self
            .calls
            .iter()
            .filter_map(|(verb, o)| {
                found(&o.output).map(|kind| {
                    format!(
                        "{verb} printed the secret kubernetes.io/secret/password ({kind}): kubelet \
                         puts driver output into events and logs"
                    )
                })
            })
            .collect();
        let result = match printed.is_empty() {
            true => Ok(String::new()),
            false => Err(listed(&printed)),
        };
        self.report
            .result("secrets: not in driver output", result, Vec::new());
        let Some(dir) = self.plan.flex_log_dir.clone() else {
            return;
        };
        let mut logged = Vec::new();
        for file in ["flex.log", "audit.jsonl"] {
            for n in 0..=3 {
                let name = match n {
                    0 => file.to_string(),
                    n => format!("{file}.{n}"),
                };
                let text = self.log_bytes(&dir.join(&name));
                if let Some(kind) = found(&text) {
                    logged.push(format!(
                        "{} holds the secret ({kind})",
                        dir.join(name).display()
                    ));
                }
            }
        }
        let result = match logged.is_empty() {
            true => Ok(String::new()),
            false => Err(listed(&logged)),
        };
        self.report.result(
            "secrets: not in flex.log or audit.jsonl",
            result,
            Vec::new(),
        );
    }

    /// A log file's bytes written during this run (node env: after the mark).
    fn log_bytes(&self, file: &std::path::Path) -> Vec<u8> {
        use std::io::{Read, Seek, SeekFrom};
        let from = self
            .plan
            .log_marks
            .iter()
            .find(|(p, _)| p == file)
            .map_or(0, |(_, len)| *len);
        let mut bytes = Vec::new();
        if let Ok(mut f) = std::fs::File::open(file) {
            let _ = f.seek(SeekFrom::Start(from));
            let _ = f.take(256 << 20).read_to_end(&mut bytes);
        }
        bytes
    }

    /// The audit lines of these calls (by the pid each line records).
    pub fn audit_of(&self, calls: &[Outcome]) -> Vec<Value> {
        let Some(dir) = &self.plan.flex_log_dir else {
            return Vec::new();
        };
        let pids: BTreeSet<u64> = calls.iter().map(|o| u64::from(o.pid)).collect();
        String::from_utf8_lossy(&self.log_bytes(&dir.join("audit.jsonl")))
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|l| l["pid"].as_u64().is_some_and(|p| pids.contains(&p)))
            .collect()
    }

    /// After the driver's own teardown: nothing of the run mounted, no loop device on its files.
    pub fn teardown(&mut self) {
        let skipped = ["unmount", "unmountdevice", "detach"]
            .iter()
            .any(|v| !self.plan.wants(v));
        let mounts: Vec<String> = self
            .scratch
            .mounts()
            .iter()
            .map(|m| format!("{} ({} from {})", m.path.display(), m.fs_type, m.source))
            .collect();
        match (skipped, mounts.is_empty()) {
            (true, _) => self
                .report
                .skip("teardown: no mounts left", "teardown verbs skipped"),
            (false, true) => self.report.pass("teardown: no mounts left", ""),
            (false, false) => self.report.fail(
                "teardown: no mounts left",
                format!(
                    "still mounted after the driver's teardown: {}",
                    listed(&mounts)
                ),
            ),
        }
        let loops: Vec<String> = self
            .scratch
            .loop_devices()
            .iter()
            .map(|(d, b)| format!("{} on {}", d.display(), b.display()))
            .collect();
        match (skipped, loops.is_empty()) {
            (true, _) => self
                .report
                .skip("teardown: no loop devices left", "teardown verbs skipped"),
            (false, true) => self.report.pass("teardown: no loop devices left", ""),
            (false, false) => self.report.fail(
                "teardown: no loop devices left",
                format!("still attached after detach: {}", listed(&loops)),
            ),
        }
    }
}

pub fn listed(items: &[String]) -> String {
    let mut text = items
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    if items.len() > SHOWN {
        text.push_str(&format!("; and {} more", items.len() - SHOWN));
    }
    text
}
