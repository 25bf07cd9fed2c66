//! The results: one named case each, printed as they come (one line per case), a summary
//! line, and JUnit XML for CI (hand-written: a handful of elements, escaped below; the JUnit
//! crates bring date, UUID and XML dependencies into the per-call binary for that).

use std::fmt::Write as _;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Status {
    Pass,
    Fail,
    Skip,
}

#[derive(Clone, Debug)]
pub struct Case {
    pub name: String,
    pub status: Status,
    pub message: String,
    /// Allowed by kubelet, but worth fixing (a failure with `--strict`).
    pub warnings: Vec<String>,
    pub time: Duration,
}

pub struct Report {
    pub suite: String,
    pub cases: Vec<Case>,
    /// Time of the calls made since the last case, charged to the next one.
    pending: Duration,
    pub strict: bool,
    pub quiet: bool,
}

impl Report {
    pub fn new(suite: String, strict: bool, quiet: bool) -> Report {
        Report {
            suite,
            cases: Vec::new(),
            pending: Duration::ZERO,
            strict,
            quiet,
        }
    }

    pub fn charge(&mut self, time: Duration) {
        self.pending += time;
    }

    pub fn add(&mut self, mut case: Case) {
        case.time += std::mem::take(&mut self.pending);
        if self.strict && case.status == Status::Pass && !case.warnings.is_empty() {
            case.status = Status::Fail;
            case.message = format!("{} (--strict: warnings fail)", case.message);
        }
        if !self.quiet {
            println!("{}", line(&case));
        }
        self.cases.push(case);
    }

    pub fn pass(&mut self, name: &str, message: impl Into<String>) {
        self.result(name, Ok(message.into()), Vec::new());
    }

    pub fn fail(&mut self, name: &str, message: impl Into<String>) {
        self.result(name, Err(message.into()), Vec::new());
    }

    pub fn skip(&mut self, name: &str, why: impl Into<String>) {
        self.add(Case {
            name: name.into(),
            status: Status::Skip,
            message: why.into(),
            warnings: Vec::new(),
            time: Duration::ZERO,
        });
    }

    /// `Ok(what passed)` or `Err(what failed)`, with warnings.
    pub fn result(&mut self, name: &str, result: Result<String, String>, warnings: Vec<String>) {
        let (status, message) = match result {
            Ok(m) => (Status::Pass, m),
            Err(m) => (Status::Fail, m),
        };
        self.add(Case {
            name: name.into(),
            status,
            message,
            warnings,
            time: Duration::ZERO,
        });
    }

    pub fn count(&self, status: Status) -> usize {
        self.cases.iter().filter(|c| c.status == status).count()
    }

    pub fn warnings(&self) -> usize {
        self.cases.iter().map(|c| c.warnings.len()).sum()
    }

    pub fn failed(&self) -> bool {
        self.count(Status::Fail) > 0
    }

    /// Deliberately not the bare `N passed, N failed` form test harnesses scan for.
    pub fn summary(&self, elapsed: Duration) -> String {
        format!(
            "flex test: {} passed, {} failed, {} skipped, {} warnings in {:.1} s: {}",
            self.count(Status::Pass),
            self.count(Status::Fail),
            self.count(Status::Skip),
            self.warnings(),
            elapsed.as_secs_f64(),
            if self.failed() {
                "NOT CONFORMANT"
            } else {
                "conformant"
            }
        )
    }

    pub fn junit(&self, elapsed: Duration) -> String {
        let mut xml = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let (tests, failures, skipped) = (
            self.cases.len(),
            self.count(Status::Fail),
            self.count(Status::Skip),
        );
        let time = elapsed.as_secs_f64();
        let suite = escape(&self.suite);
        let _ = writeln!(
            xml,
            "<testsuites name=\"flex test\" tests=\"{tests}\" failures=\"{failures}\" errors=\"0\" skipped=\"{skipped}\" time=\"{time:.3}\">"
        );
        let _ = writeln!(
            xml,
            "  <testsuite name=\"{suite}\" tests=\"{tests}\" failures=\"{failures}\" errors=\"0\" skipped=\"{skipped}\" time=\"{time:.3}\">"
        );
        for case in &self.cases {
            let (class, name) = match case.name.split_once(": ") {
                Some((group, rest)) => (format!("{}.{group}", self.suite), rest.to_string()),
                None => (self.suite.clone(), case.name.clone()),
            };
            let _ = write!(
                xml,
                "    <testcase classname=\"{}\" name=\"{}\" time=\"{:.3}\"",
                escape(&class),
                escape(&name),
                case.time.as_secs_f64()
            );
            let message = escape(&case.message);
            let body = match case.status {
                Status::Fail => format!(
                    "      <failure message=\"{message}\" type=\"nonconformance\">{message}</failure>\n"
                ),
                Status::Skip => format!("      <skipped message=\"{message}\"/>\n"),
                Status::Pass => String::new(),
            };
            let out = match case.warnings.is_empty() {
                true => String::new(),
                false => format!(
                    "      <system-out>{}</system-out>\n",
                    escape(&format!("warning: {}", case.warnings.join("\nwarning: ")))
                ),
            };
            if body.is_empty() && out.is_empty() {
                xml.push_str("/>\n");
            } else {
                let _ = write!(xml, ">\n{body}{out}    </testcase>\n");
            }
        }
        xml.push_str("  </testsuite>\n</testsuites>\n");
        xml
    }
}

pub fn line(case: &Case) -> String {
    let tag = match case.status {
        Status::Pass if !case.warnings.is_empty() => "WARN",
        Status::Pass => "PASS",
        Status::Fail => "FAIL",
        Status::Skip => "SKIP",
    };
    let mut line = format!("{tag}  {}", case.name);
    if !case.message.is_empty() {
        let _ = write!(line, ": {}", case.message);
    }
    for warning in &case.warnings {
        let _ = write!(line, "\n      warning: {warning}");
    }
    line
}

/// Text for an XML attribute or element: the five entities, and characters XML 1.0 cannot
/// carry at all (control characters a driver may print) as U+FFFD.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' => out.push_str("&#10;"),
            '\t' => out.push_str("&#9;"),
            '\r' => out.push_str("&#13;"),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn junit_is_escaped_and_counted() {
        let mut r = Report::new("flex~x".into(), false, true);
        r.pass("init: succeeds", "ok");
        r.fail("mount: reply", "2 JSON documents: \"{\" & <x>\u{1}");
        r.skip("expandfs: succeeds", "not claimed");
        let xml = r.junit(Duration::from_millis(1500));
        assert!(xml.contains("tests=\"3\" failures=\"1\" errors=\"0\" skipped=\"1\""));
        assert!(
            xml.contains("&quot;{&quot; &amp; &lt;x&gt;\u{FFFD}"),
            "{xml}"
        );
        assert!(xml.contains("classname=\"flex~x.mount\" name=\"reply\""));
        assert!(r.failed());
    }
}
