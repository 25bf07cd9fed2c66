//! The host's log: one JSON line per event in `FLEX_LOG_DIR/flex.log` (default `/var/log/flex`).
//!
//! Never stdout or stderr: kubelet parses both, combined, as the reply. If the log cannot be
//! opened the lines are dropped rather than risk a stray byte on kubelet's pipe.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

pub const DEFAULT_LOG_DIR: &str = "/var/log/flex";

pub fn log_dir() -> PathBuf {
    std::env::var_os("FLEX_LOG_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| DEFAULT_LOG_DIR.into())
}

/// Appends whole lines with one `write` each (`O_APPEND`), so concurrent calls never interleave.
pub struct Logger {
    file: Option<File>,
    driver: String,
    verb: String,
}

impl Logger {
    pub fn open(driver: &str, verb: &str) -> Logger {
        Logger::to_file(&log_dir().join("flex.log"), driver, verb)
    }

    pub fn to_file(path: &std::path::Path, driver: &str, verb: &str) -> Logger {
        Logger {
            file: open_append(path),
            driver: driver.into(),
            verb: verb.into(),
        }
    }

    pub fn log(&mut self, level: &str, source: &str, message: &str) {
        let Some(file) = &mut self.file else { return };
        let line = serde_json::json!({
            "time_ms": unix_millis(),
            "pid": std::process::id(),
            "level": level,
            "source": source,
            "driver": self.driver,
            "verb": self.verb,
            "message": message,
        });
        let mut bytes = line.to_string().into_bytes();
        bytes.push(b'\n');
        let _ = file.write_all(&bytes);
    }

    pub fn info(&mut self, message: &str) {
        self.log("info", "host", message)
    }

    pub fn error(&mut self, message: &str) {
        self.log("error", "host", message)
    }
}

pub fn open_append(path: &std::path::Path) -> Option<File> {
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    OpenOptions::new().create(true).append(true).open(path).ok()
}

fn unix_millis() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// Phase timings of one call, opt-in with `FLEX_TIMINGS=1`: one JSON line in the log,
/// `{"timings_us": {"before_run": .., "engine": .., ...}}`, each phase in microseconds since the
/// previous mark. `before_run` counts from the process's ELF constructors (after the dynamic
/// loader) to the start of the call, so what remains of the wall time is exec and exit.
pub struct Timings {
    last: Option<Instant>,
    phases: Vec<(&'static str, u128)>,
}

static PROCESS_START: OnceLock<Instant> = OnceLock::new();

extern "C" fn record_process_start() {
    let _ = PROCESS_START.set(Instant::now());
}

// Runs before `main`, as early as Rust code can: the reference point of `before_run`.
#[used]
#[unsafe(link_section = ".init_array")]
static RECORD_PROCESS_START: extern "C" fn() = record_process_start;

impl Timings {
    pub fn start() -> Timings {
        let enabled = std::env::var_os("FLEX_TIMINGS").is_some_and(|v| v == "1");
        let mut timings = Timings {
            last: None,
            phases: Vec::new(),
        };
        if enabled {
            let now = Instant::now();
            let start = PROCESS_START.get().copied().unwrap_or(now);
            timings
                .phases
                .push(("before_run", (now - start).as_micros()));
            timings.last = Some(now);
        }
        timings
    }

    /// Ends the phase `name` (no-op unless enabled).
    pub fn mark(&mut self, name: &'static str) {
        if let Some(last) = self.last {
            let now = Instant::now();
            self.phases.push((name, (now - last).as_micros()));
            self.last = Some(now);
        }
    }

    pub fn write(&self, logger: &mut Logger) {
        if self.last.is_none() {
            return;
        }
        let phases: serde_json::Map<String, serde_json::Value> = self
            .phases
            .iter()
            .map(|(name, us)| (name.to_string(), serde_json::json!(*us as u64)))
            .collect();
        let line = serde_json::json!({ "timings_us": phases }).to_string();
        logger.log("info", "timings", &line);
    }
}
