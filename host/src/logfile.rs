//! The host's log: one JSON line per event in `FLEX_LOG_DIR/flex.log` (default `/var/log/flex`).
//!
//! Never stdout or stderr: kubelet parses both, combined, as the reply. If the log cannot be
//! opened the lines are dropped rather than risk a stray byte on kubelet's pipe.
//!
//! [`LogFile`] is shared with the audit trail: root-only files (`0600` in a `0700` directory),
//! appended with one `O_APPEND` write per line, rotated by size to `.1` … `.N` under an `flock`
//! so that any number of `flex` processes can write and rotate at once without losing or
//! tearing lines. The driver's share of the log is bounded per call and per line
//! (`limits.log_bytes_per_call`, `limits.log_line_bytes`).

use crate::limits::{self, Limits};
use nix::fcntl::{Flock, FlockArg};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

pub const DEFAULT_LOG_DIR: &str = "/var/log/flex";

/// A log file is rotated once it reaches this size (`FLEX_LOG_MAX_BYTES`)...
const DEFAULT_MAX_BYTES: u64 = 10 << 20;
/// ...and this many rotated files are kept (`FLEX_LOG_KEEP`).
const DEFAULT_KEEP: u32 = 3;

/// Host lines carry driver-controlled text too (a trap's backtrace, a reply): bounded as well.
const HOST_LINE_BYTES: usize = 64 << 10;

pub fn log_dir() -> PathBuf {
    std::env::var_os("FLEX_LOG_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| DEFAULT_LOG_DIR.into())
}

/// When to rotate and how many old files to keep: at most `(keep + 1) * max_bytes` per log,
/// plus one line per writer caught mid-rotation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rotation {
    pub max_bytes: u64,
    pub keep: u32,
}

impl Rotation {
    pub fn from_env() -> Rotation {
        let var = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
        Rotation {
            max_bytes: var("FLEX_LOG_MAX_BYTES")
                .filter(|&n| n > 0)
                .unwrap_or(DEFAULT_MAX_BYTES),
            keep: var("FLEX_LOG_KEEP")
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| (1..=100).contains(n))
                .unwrap_or(DEFAULT_KEEP),
        }
    }
}

/// One append-only, size-rotated log file, opened on the first line.
pub struct LogFile {
    path: PathBuf,
    file: Option<File>,
    rotation: Rotation,
}

impl LogFile {
    pub fn new(path: PathBuf) -> LogFile {
        LogFile::with_rotation(path, Rotation::from_env())
    }

    pub fn with_rotation(path: PathBuf, rotation: Rotation) -> LogFile {
        LogFile {
            path,
            file: None,
            rotation,
        }
    }

    /// Appends `line` (a whole line, newline included) with one write.
    pub fn append(&mut self, line: &[u8]) {
        // Another process may have rotated the file away: follow the path to the new one.
        if self.file.as_ref().is_some_and(|f| !is_at(f, &self.path)) {
            self.file = None;
        }
        if self.file.is_none() {
            self.file = open_log(&self.path);
        }
        let Some(file) = self.file.as_mut() else {
            return;
        };
        if file.write_all(line).is_err() {
            return;
        }
        if file
            .metadata()
            .is_ok_and(|m| m.len() >= self.rotation.max_bytes)
        {
            rotate(&self.path, self.rotation);
            self.file = None;
        }
    }
}

/// True while `path` still names the file `file` has open.
fn is_at(file: &File, path: &Path) -> bool {
    match (file.metadata(), std::fs::symlink_metadata(path)) {
        (Ok(open), Ok(named)) => open.ino() == named.ino() && open.dev() == named.dev(),
        _ => false,
    }
}

/// Opens (creating `0600`, its directory `0700`) a log file for appending. A file that is not
/// a plain file of ours with one name (a symlink, a hard link to something else, another
/// user's file planted in a shared directory) is never written; one of ours that is readable by
/// others is made `0600`.
fn open_log(path: &Path) -> Option<File> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        let _ = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir);
    }
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc_flags())
        .open(path)
        .ok()?;
    let meta = file.metadata().ok()?;
    if !meta.is_file() || meta.nlink() != 1 || meta.uid() != nix::unistd::geteuid().as_raw() {
        return None;
    }
    if meta.mode() & 0o177 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .ok()?;
    }
    Some(file)
}

fn libc_flags() -> i32 {
    nix::fcntl::OFlag::O_NOFOLLOW.bits() | nix::fcntl::OFlag::O_CLOEXEC.bits()
}

/// `flex.log` → `flex.log.1` → … → `flex.log.<keep>` (the oldest is replaced), under an
/// exclusive lock on `.flex.log.lock` beside it. The size is checked again on the path once
/// the lock is held: a concurrent writer may have rotated it already.
fn rotate(path: &Path, rotation: Rotation) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let name = name.to_string_lossy();
    let lock_path = dir.join(format!(".{name}.lock"));
    let Ok(lock_file) = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc_flags())
        .open(&lock_path)
    else {
        return;
    };
    let Ok(_lock) = Flock::lock(lock_file, FlockArg::LockExclusive) else {
        return;
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.len() >= rotation.max_bytes => {}
        _ => return,
    }
    let numbered = |n: u32| dir.join(format!("{name}.{n}"));
    for n in (1..rotation.keep).rev() {
        let _ = std::fs::rename(numbered(n), numbered(n + 1));
    }
    let _ = std::fs::rename(path, numbered(1));
}

/// What the driver may still write to the log in this call.
struct DriverBudget {
    line_bytes: usize,
    left: u64,
    per_call: u64,
    cut: bool,
}

impl DriverBudget {
    fn new(limits: &Limits) -> DriverBudget {
        DriverBudget {
            line_bytes: usize::try_from(limits.log_line_bytes).unwrap_or(usize::MAX),
            left: limits.log_bytes_per_call,
            per_call: limits.log_bytes_per_call,
            cut: false,
        }
    }
}

/// Appends whole lines with one `write` each (`O_APPEND`), so concurrent calls never interleave.
pub struct Logger {
    file: LogFile,
    driver: String,
    verb: String,
    budget: DriverBudget,
}

impl Logger {
    /// The default limits apply to the driver's lines until [`Logger::set_limits`].
    pub fn open(driver: &str, verb: &str) -> Logger {
        Logger::to_file(&log_dir().join("flex.log"), driver, verb)
    }

    pub fn to_file(path: &Path, driver: &str, verb: &str) -> Logger {
        Logger {
            file: LogFile::new(path.to_path_buf()),
            driver: driver.into(),
            verb: verb.into(),
            budget: DriverBudget::new(&Limits::default()),
        }
    }

    /// The policy's limits for the driver's lines of this call.
    pub fn set_limits(&mut self, limits: &Limits) {
        self.budget = DriverBudget::new(limits);
    }

    /// A host line: written whole (up to a fixed bound).
    pub fn log(&mut self, level: &str, source: &str, message: &str) {
        let (message, truncated) = cut(message, HOST_LINE_BYTES);
        let line = self.line(level, source, message, truncated);
        self.file.append(&line);
    }

    /// A line from the driver (its `log` import or its captured output): cut to
    /// `limits.log_line_bytes`, and dropped once the call has written
    /// `limits.log_bytes_per_call` (one host line then says the log was cut).
    pub fn driver_log(&mut self, level: &str, source: &str, message: &str) {
        if self.budget.cut {
            return;
        }
        let (message, truncated) = cut(message, self.budget.line_bytes);
        let line = self.line(level, source, message, truncated);
        match self.budget.left.checked_sub(line.len() as u64) {
            Some(left) => {
                self.budget.left = left;
                self.file.append(&line);
            }
            None => {
                self.budget.cut = true;
                let detail = format!(
                    "{} bytes; the rest of this call's driver log is dropped",
                    self.budget.per_call
                );
                let note = format!(
                    "driver log cut: {}",
                    limits::exceeded("log_bytes_per_call", detail)
                );
                self.log("warn", "host", &note);
            }
        }
    }

    /// The driver's captured stdout or stderr, one log line per line of output.
    pub fn driver_output(&mut self, source: &str, output: &[u8]) {
        let output = output.strip_suffix(b"\n").unwrap_or(output);
        if output.is_empty() {
            return;
        }
        for line in output.split(|&b| b == b'\n') {
            if self.budget.cut {
                return;
            }
            // Lines are cut before they are decoded: a flood costs no more than its budget.
            let line = &line[..line.len().min(self.budget.line_bytes.saturating_add(4))];
            self.driver_log("info", source, &String::from_utf8_lossy(line));
        }
    }

    fn line(&self, level: &str, source: &str, message: &str, truncated: bool) -> Vec<u8> {
        let mut line = serde_json::json!({
            "time_ms": unix_millis(),
            "pid": std::process::id(),
            "level": level,
            "source": source,
            "driver": self.driver,
            "verb": self.verb,
            "message": message,
        });
        add_exec_parent(&mut line);
        if truncated {
            line["truncated"] = true.into();
        }
        let mut bytes = line.to_string().into_bytes();
        bytes.push(b'\n');
        bytes
    }

    pub fn info(&mut self, message: &str) {
        self.log("info", "host", message)
    }

    pub fn error(&mut self, message: &str) {
        self.log("error", "host", message)
    }
}

/// `text` cut to at most `max` bytes on a character boundary, and whether it was cut.
pub fn cut(text: &str, max: usize) -> (&str, bool) {
    if text.len() <= max {
        return (text, false);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    (&text[..end], true)
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

/// The process that exec'd the call a warm child serves: `flex` as kubelet exec'd it.
static WARM_CALLER: OnceLock<WarmCaller> = OnceLock::new();

/// A warm child's caller, as the kernel names it: the connection's peer and that peer's parent.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WarmCaller {
    pub pid: i32,
    pub ppid: i32,
}

/// From now on this process's log and audit lines are its warm caller's.
pub fn serving_for(caller: WarmCaller) {
    let _ = WARM_CALLER.set(caller);
}

/// Who exec'd this call (kubelet, kube-controller-manager, a person), for operators, the
/// security team and the e2e tier: `ppid`, the same whether the call ran in the process
/// kubelet exec'd or in a warm child; a warm child adds its caller's `warm_caller_pid`.
pub fn add_exec_parent(line: &mut serde_json::Value) {
    match WARM_CALLER.get() {
        Some(caller) => {
            line["ppid"] = caller.ppid.into();
            line["warm_caller_pid"] = caller.pid.into();
        }
        None => line["ppid"] = nix::unistd::getppid().as_raw().into(),
    }
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

    /// Timings whose first phase, `name`, began at `at` (a warm child's call, from its arrival).
    pub fn since(name: &'static str, at: Instant) -> Timings {
        let mut timings = Timings::start();
        if let Some(now) = timings.last {
            timings.phases = vec![(name, (now - at).as_micros())];
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn files_and_directory_are_root_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log/sub/flex.log");
        LogFile::new(path.clone()).append(b"x\n");
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        assert_eq!(mode(&dir.path().join("log")), 0o700);
        // An existing file readable by others is tightened.
        let wide = dir.path().join("wide.log");
        std::fs::write(&wide, "old\n").unwrap();
        std::fs::set_permissions(&wide, std::fs::Permissions::from_mode(0o644)).unwrap();
        LogFile::new(wide.clone()).append(b"new\n");
        assert_eq!(mode(&wide), 0o600);
        assert_eq!(std::fs::read_to_string(&wide).unwrap(), "old\nnew\n");
    }

    #[test]
    fn symlinks_and_hard_links_are_never_written() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious\n").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).unwrap();
        let link = dir.path().join("flex.log");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        LogFile::new(link.clone()).append(b"line\n");
        let hard = dir.path().join("audit.jsonl");
        std::fs::hard_link(&victim, &hard).unwrap();
        LogFile::new(hard).append(b"line\n");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
        assert_eq!(mode(&victim), 0o644);
    }

    #[test]
    fn rotation_keeps_a_bounded_number_of_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flex.log");
        let rotation = Rotation {
            max_bytes: 100,
            keep: 2,
        };
        let mut log = LogFile::with_rotation(path.clone(), rotation);
        for i in 0..101 {
            log.append(format!("line {i:04} {}\n", "x".repeat(20)).as_bytes());
        }
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [".flex.log.lock", "flex.log", "flex.log.1", "flex.log.2"]
        );
        // Four 31-byte lines reach 100 bytes: each rotated file holds four whole lines, the
        // newest in `.1`; what is older than `.2` is gone.
        let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
        let numbers =
            |text: String| -> Vec<String> { text.lines().map(|l| l[5..9].to_string()).collect() };
        assert_eq!(numbers(read("flex.log")), ["0100"]);
        assert_eq!(
            numbers(read("flex.log.1")),
            ["0096", "0097", "0098", "0099"]
        );
        assert_eq!(
            numbers(read("flex.log.2")),
            ["0092", "0093", "0094", "0095"]
        );
        for name in ["flex.log", "flex.log.1", "flex.log.2", ".flex.log.lock"] {
            assert_eq!(mode(&dir.path().join(name)), 0o600, "{name}");
        }
    }

    #[test]
    fn a_writer_follows_a_rotation_made_by_another() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flex.log");
        let rotation = Rotation {
            max_bytes: 1 << 20,
            keep: 3,
        };
        let mut a = LogFile::with_rotation(path.clone(), rotation);
        a.append(b"a1\n");
        // Another process rotates (here: by hand, as `rotate` does).
        std::fs::rename(&path, dir.path().join("flex.log.1")).unwrap();
        a.append(b"a2\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a2\n");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("flex.log.1")).unwrap(),
            "a1\n"
        );
    }

    #[test]
    fn concurrent_writers_lose_no_line_before_the_oldest_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flex.log");
        let rotation = Rotation {
            max_bytes: 64 << 10,
            keep: 50,
        };
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let mut log = LogFile::with_rotation(path, rotation);
                    for i in 0..2000 {
                        log.append(format!("{t} {i:05} {}\n", "y".repeat(60)).as_bytes());
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        let mut lines = Vec::new();
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let entry = entry.unwrap();
            if entry.file_name().to_string_lossy().starts_with("flex.log") {
                lines.extend(
                    std::fs::read_to_string(entry.path())
                        .unwrap()
                        .lines()
                        .map(String::from),
                );
            }
        }
        assert!(lines.iter().all(|l| l.len() == 68), "a torn line");
        assert_eq!(lines.len(), 8000, "lines lost");
    }

    #[test]
    fn the_driver_budget_cuts_lines_and_the_call() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flex.log");
        let mut logger = Logger::to_file(&path, "acme~x", "mount");
        logger.set_limits(&Limits {
            log_line_bytes: 100,
            log_bytes_per_call: 2000,
            ..Limits::default()
        });
        logger.driver_log("info", "driver", &"é".repeat(300));
        logger.driver_output("driver stdout", "z".repeat(10_000).as_bytes());
        for _ in 0..100 {
            logger.driver_output("driver stdout", b"short\nlines\n");
        }
        logger.info("reply");
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let driver_bytes: usize = text
            .lines()
            .filter(|l| l.contains("\"source\":\"driver"))
            .map(|l| l.len() + 1)
            .sum();
        assert!(driver_bytes <= 2000, "{driver_bytes}");
        assert_eq!(lines[0]["message"].as_str().unwrap().len(), 100);
        assert_eq!(lines[0]["truncated"], true);
        assert_eq!(lines[1]["message"].as_str().unwrap().len(), 100);
        let cut: Vec<_> = lines
            .iter()
            .filter(|l| l["message"].as_str().unwrap().starts_with("driver log cut"))
            .collect();
        assert_eq!(cut.len(), 1, "one line says the log was cut");
        assert!(
            cut[0]["message"]
                .as_str()
                .unwrap()
                .contains("limits.log_bytes_per_call")
        );
        assert_eq!(lines.last().unwrap()["message"], "reply");
    }
}
