//! `[state]`: a per-driver directory, preopened read-write as `/state` through WASI
//! filesystem (which resolves every guest path beneath it); no other host path is visible to a
//! driver. Default location `FLEX_STATE_DIR/<vendor~driver>` (`/var/lib/flex/<vendor~driver>`).
//!
//! Bounded: `limits.state_bytes` (allocated bytes) and `limits.state_files` (entries). A call
//! that starts over a limit gets the directory read-only; a call that goes over one while it
//! runs is stopped by a watchdog that measures the directory every [`WATCH_INTERVAL`], and
//! fails with the limit's name.
//!
//! A dry run gets a scratch copy, so writes are performed on the copy, the real directory is
//! untouched, and the driver sees the same writable `/state` it would in a real run.

use crate::limits::{self, Limits};
use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};
use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub const DEFAULT_STATE_DIR: &str = "/var/lib/flex";
/// Where the directory appears inside the sandbox.
pub const GUEST_PATH: &str = "/state";
/// How often a running call's state directory is measured.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(50);

/// The `[state]` table of a policy; its presence grants the directory.
#[derive(Deserialize, Serialize, Default, Debug)]
#[serde(deny_unknown_fields)]
pub struct StateGrant {
    /// Overrides the default location.
    #[serde(default)]
    pub dir: Option<PathBuf>,
}

pub fn state_root() -> PathBuf {
    std::env::var_os("FLEX_STATE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| DEFAULT_STATE_DIR.into())
}

impl StateGrant {
    pub fn validate(&self) -> Result<(), String> {
        match &self.dir {
            Some(dir) if crate::caps::paths::normalize(&dir.to_string_lossy()).is_err() => {
                Err(format!(
                    "state.dir must be an absolute path in normal form, not {}",
                    dir.display()
                ))
            }
            _ => Ok(()),
        }
    }

    /// Where the driver's directory is (without creating it).
    pub fn location(&self, driver: &str) -> PathBuf {
        self.dir
            .clone()
            .unwrap_or_else(|| state_root().join(driver))
    }

    /// The driver's directory, created (owner-only) if missing.
    pub fn directory(&self, driver: &str) -> Result<PathBuf, String> {
        let dir = self.location(driver);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| match e.raw_os_error() == Some(nix::libc::EROFS) {
                true => format!(
                    "{UNAVAILABLE}: {} is on a read-only file system",
                    dir.display()
                ),
                false => format!("cannot create state directory {}: {e}", dir.display()),
            })?;
        Ok(dir)
    }
}

/// How an error starts when the state directory cannot exist here (a kube-controller-manager
/// container whose file systems are read-only): the call then runs without `/state`.
pub const UNAVAILABLE: &str = "no state directory on this machine";

/// What a directory holds: allocated bytes and entries, counted without following symlinks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub bytes: u64,
    pub entries: u64,
}

impl Usage {
    /// The limit this usage exceeds, if any, as the message a call fails with.
    pub fn over(&self, limits: &Limits) -> Option<String> {
        if self.bytes > limits.state_bytes {
            return Some(limits::exceeded(
                "state_bytes",
                format!(
                    "the state directory holds more than {} bytes",
                    limits.state_bytes
                ),
            ));
        }
        if self.entries > limits.state_files {
            return Some(limits::exceeded(
                "state_files",
                format!(
                    "the state directory holds more than {} entries",
                    limits.state_files
                ),
            ));
        }
        None
    }
}

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// Walks a directory tree through descriptors only: each directory is opened with
/// `openat(O_NOFOLLOW)` beneath its parent and each entry is `lstat`ed, so a symlink swapped in
/// mid-walk is seen as a symlink, never followed. `visit` gets each entry (parent descriptor,
/// name, what it is, the value its directory was given) and returns, for a directory, the value
/// to walk it with, or `None` to skip it. More than `stop_at` entries end the walk with
/// `Ok(false)`. A directory is opened only when its turn comes, so the descriptors held are
/// those of its ancestors, not one per pending directory. A directory that cannot be opened
/// for any reason but having gone (or been swapped for a non-directory) fails the walk: a
/// measurement never silently leaves part of the tree out.
fn walk<T>(
    root: &Path,
    root_value: T,
    stop_at: u64,
    mut visit: impl FnMut(BorrowedFd<'_>, &CStr, &Stat, &T) -> Result<Option<T>, String>,
) -> Result<bool, String> {
    let failed = |e: rustix::io::Errno| format!("{}: {e}", root.display());
    let root_fd = Rc::new(rustix::fs::open(root, DIR_FLAGS, Mode::empty()).map_err(failed)?);
    // (the directory, or its parent and its name when it is not open yet; its value)
    let mut pending: Vec<(Rc<OwnedFd>, Option<CString>, T)> = vec![(root_fd, None, root_value)];
    let mut entries_seen = 0;
    while let Some((parent, name, value)) = pending.pop() {
        let fd = match name {
            None => parent,
            Some(name) => match rustix::fs::openat(&*parent, &name, DIR_FLAGS, Mode::empty()) {
                Ok(fd) => Rc::new(fd),
                Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => continue, // gone meanwhile
                Err(e) => return Err(failed(e)),
            },
        };
        for entry in Dir::read_from(&*fd).map_err(failed)? {
            let Ok(entry) = entry else { continue };
            let name = entry.file_name();
            if name == c"." || name == c".." {
                continue;
            }
            entries_seen += 1;
            if entries_seen > stop_at {
                return Ok(false);
            }
            let Ok(stat) = rustix::fs::statat(&*fd, name, AtFlags::SYMLINK_NOFOLLOW) else {
                continue; // removed meanwhile
            };
            let Some(child_value) = visit(fd.as_fd(), name, &stat, &value)? else {
                continue;
            };
            if FileType::from_raw_mode(stat.st_mode) == FileType::Directory {
                pending.push((fd.clone(), Some(name.to_owned()), child_value));
            }
        }
    }
    Ok(true)
}

/// Measures a directory tree (see [`walk`]). Stops counting past `stop_at` entries.
pub fn usage(dir: &Path, stop_at: u64) -> Result<Usage, String> {
    let mut usage = Usage::default();
    let complete = walk(dir, (), stop_at, |_, _, stat, _| {
        usage.entries += 1;
        usage.bytes += (stat.st_blocks as u64).saturating_mul(512);
        Ok(Some(()))
    })?;
    if !complete {
        usage.entries += 1; // the entry past `stop_at`, where the walk stopped
    }
    Ok(usage)
}

/// The limit the tree at `dir` is over, if any. A tree that cannot be measured (descriptors
/// used up, a directory that will not open) counts as over: otherwise a driver that holds
/// every descriptor open could write past the limits unmeasured.
pub fn over_limits(dir: &Path, limits: &Limits) -> Option<String> {
    match usage(dir, limits.state_files.saturating_add(1)) {
        Ok(measured) => measured.over(limits),
        Err(e) => Some(limits::exceeded(
            "state_bytes",
            format!("the state directory cannot be measured: {e}"),
        )),
    }
}

/// Copies a state directory for a dry run (regular files, directories, symlinks as links;
/// nothing else), through descriptors as [`walk`] reads: a symlink swapped in for a directory
/// or file by a concurrent call is copied as a link, never followed out of the directory.
/// Refused past `max_entries` entries or `max_bytes` bytes written: a sparse file counts its
/// length here (the copy writes its holes out), not the blocks it occupies.
pub fn copy_tree(from: &Path, to: &Path, max_entries: u64, max_bytes: u64) -> Result<(), String> {
    let mut room = max_bytes;
    let failed = |e: rustix::io::Errno| format!("copy state {}: {e}", from.display());
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(to)
        .map_err(|e| format!("copy state to {}: {e}", to.display()))?;
    let target = rustix::fs::open(to, DIR_FLAGS, Mode::empty()).map_err(failed)?;
    let complete = walk(from, target, max_entries, |source, name, stat, target| {
        match FileType::from_raw_mode(stat.st_mode) {
            FileType::Directory => {
                rustix::fs::mkdirat(target, name, Mode::from_raw_mode(0o700)).map_err(failed)?;
                let child =
                    rustix::fs::openat(target, name, DIR_FLAGS, Mode::empty()).map_err(failed)?;
                Ok(Some(child))
            }
            FileType::Symlink => {
                let link = rustix::fs::readlinkat(source, name, Vec::new()).map_err(failed)?;
                rustix::fs::symlinkat(link.as_c_str(), target, name).map_err(failed)?;
                Ok(None)
            }
            FileType::RegularFile => {
                // Non-blocking, then checked: a FIFO swapped in never stalls the copy.
                let read = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
                let input =
                    rustix::fs::openat(source, name, read, Mode::empty()).map_err(failed)?;
                let opened = rustix::fs::fstat(&input).map_err(failed)?;
                if FileType::from_raw_mode(opened.st_mode) != FileType::RegularFile {
                    return Ok(None);
                }
                let write = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC;
                let output = rustix::fs::openat(target, name, write, Mode::from_raw_mode(0o600))
                    .map_err(failed)?;
                let copied = std::io::copy(
                    &mut std::io::Read::take(std::fs::File::from(input), room.saturating_add(1)),
                    &mut std::fs::File::from(output),
                )
                .map_err(|e| format!("copy state {}: {e}", from.display()))?;
                room = room.checked_sub(copied).ok_or_else(|| {
                    limits::exceeded(
                        "state_bytes",
                        format!("a dry run's copy of the state directory would write more than {max_bytes} bytes"),
                    )
                })?;
                Ok(None)
            }
            _ => Ok(None),
        }
    })?;
    if !complete {
        return Err(limits::exceeded(
            "state_files",
            format!("the state directory holds more than {max_entries} entries"),
        ));
    }
    Ok(())
}

/// The directory a call's `/state` is: the real one, or a scratch copy in a dry run (removed
/// when this is dropped). `read_only` when the real one is over its limits already.
pub struct Prepared {
    pub dir: PathBuf,
    pub read_only: bool,
    /// Why it is read-only, for the log.
    pub note: Option<String>,
    scratch: Option<tempfile::TempDir>,
}

impl Prepared {
    pub fn new(
        grant: &StateGrant,
        driver: &str,
        limits: &Limits,
        dry_run: bool,
    ) -> Result<Prepared, String> {
        let dir = grant.directory(driver)?;
        let measured = usage(&dir, limits.state_files.saturating_add(1))?;
        let over = measured.over(limits);
        if dry_run {
            let root = state_root();
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&root)
                .map_err(|e| format!("create {}: {e}", root.display()))?;
            let scratch = tempfile::Builder::new()
                .prefix(".dry-run-")
                .tempdir_in(&root)
                .map_err(|e| format!("dry-run scratch in {}: {e}", root.display()))?;
            let copy = scratch.path().join("state");
            if over.is_none() {
                copy_tree(&dir, &copy, limits.state_files, limits.state_bytes)?;
            } else {
                std::fs::create_dir(&copy).map_err(|e| format!("{}: {e}", copy.display()))?;
            }
            return Ok(Prepared {
                dir: copy,
                read_only: over.is_some(),
                note: over,
                scratch: Some(scratch),
            });
        }
        Ok(Prepared {
            dir,
            read_only: over.is_some(),
            note: over,
            scratch: None,
        })
    }

    pub fn is_scratch(&self) -> bool {
        self.scratch.is_some()
    }
}

/// Measures the state directory while a call runs; sets `exceeded` (with the message kept in
/// the returned handle) and calls `stop` once when a limit is passed.
pub fn watch(dir: PathBuf, limits: Limits, stop: impl Fn() + Send + 'static) -> Arc<Watch> {
    let watch = Arc::new(Watch {
        exceeded: AtomicBool::new(false),
        message: std::sync::Mutex::new(None),
    });
    let shared = watch.clone();
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(WATCH_INTERVAL);
            if let Some(message) = over_limits(&dir, &limits) {
                if let Ok(mut slot) = shared.message.lock() {
                    *slot = Some(message);
                }
                shared.exceeded.store(true, Ordering::SeqCst);
                stop();
                return;
            }
        }
    });
    watch
}

pub struct Watch {
    exceeded: AtomicBool,
    message: std::sync::Mutex<Option<String>>,
}

impl Watch {
    /// The limit message, if the watchdog stopped the call.
    pub fn exceeded(&self) -> Option<String> {
        if !self.exceeded.load(Ordering::SeqCst) {
            return None;
        }
        self.message.lock().ok().and_then(|m| m.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_counts_without_following_links() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/a"), vec![1u8; 8192]).unwrap();
        std::os::unix::fs::symlink("/usr", dir.path().join("link")).unwrap();
        let measured = usage(dir.path(), 100).unwrap();
        assert_eq!(measured.entries, 3);
        assert!((8192..100_000).contains(&measured.bytes), "{measured:?}");
        let limits = Limits {
            state_bytes: 4096,
            ..Limits::default()
        };
        assert!(
            measured
                .over(&limits)
                .unwrap()
                .contains("limits.state_bytes")
        );
        let limits = Limits {
            state_files: 2,
            ..Limits::default()
        };
        assert!(
            measured
                .over(&limits)
                .unwrap()
                .contains("limits.state_files")
        );
        assert_eq!(usage(dir.path(), 1).unwrap().entries, 2, "stops counting");
    }

    #[test]
    fn the_copy_never_follows_a_symlink_out_of_the_directory() {
        let root = tempfile::tempdir().unwrap();
        let (state, host) = (root.path().join("state"), root.path().join("host"));
        std::fs::create_dir_all(state.join("sub")).unwrap();
        std::fs::create_dir_all(&host).unwrap();
        std::fs::write(host.join("secret"), "host").unwrap();
        std::fs::write(state.join("sub/own"), "driver").unwrap();
        std::os::unix::fs::symlink(&host, state.join("to-dir")).unwrap();
        std::os::unix::fs::symlink(host.join("secret"), state.join("to-file")).unwrap();
        let copy = root.path().join("copy");
        copy_tree(&state, &copy, 100, 1 << 20).unwrap();
        assert_eq!(std::fs::read(copy.join("sub/own")).unwrap(), b"driver");
        for link in ["to-dir", "to-file"] {
            let meta = std::fs::symlink_metadata(copy.join(link)).unwrap();
            assert!(meta.file_type().is_symlink(), "{link} copied as a link");
        }
        let err = copy_tree(&state, &root.path().join("small"), 2, 1 << 20).unwrap_err();
        assert!(err.contains("limits.state_files"), "{err}");
    }

    /// A sparse file occupies almost nothing but the copy writes its whole length: the copy is
    /// bounded by what it writes.
    #[test]
    fn the_copy_is_bounded_by_the_bytes_it_writes() {
        let root = tempfile::tempdir().unwrap();
        let state = root.path().join("state");
        std::fs::create_dir(&state).unwrap();
        let sparse = std::fs::File::create(state.join("sparse")).unwrap();
        sparse.set_len(8 << 20).unwrap();
        assert!(usage(&state, 10).unwrap().bytes < 1 << 20, "sparse");
        let err = copy_tree(&state, &root.path().join("small"), 10, 4 << 20).unwrap_err();
        assert!(err.contains("limits.state_bytes"), "{err}");
        copy_tree(&state, &root.path().join("big"), 10, 8 << 20).unwrap();
        let copied = std::fs::metadata(root.path().join("big/sparse")).unwrap();
        assert_eq!(copied.len(), 8 << 20);
    }

    /// Run in a child with 48 descriptors: 300 sibling directories are measured in full (one
    /// descriptor per pending directory would run out), and with every descriptor taken the
    /// measurement fails closed: over the limits, not within them.
    #[test]
    fn measuring_needs_few_descriptors_and_fails_closed_without_them() {
        const CHILD: &str = "FLEX_STATE_FD_CHILD";
        if std::env::var_os(CHILD).is_some() {
            let dir = tempfile::tempdir().unwrap();
            for i in 0..300 {
                let sub = dir.path().join(format!("volume-{i}"));
                std::fs::create_dir(&sub).unwrap();
                std::fs::write(sub.join("data"), b"x").unwrap();
            }
            assert_eq!(usage(dir.path(), u64::MAX).unwrap().entries, 600);
            let limits = Limits::default();
            assert_eq!(over_limits(dir.path(), &limits), None);
            let mut held = Vec::new();
            while let Ok(file) = std::fs::File::open("/dev/null") {
                held.push(file);
            }
            let over = over_limits(dir.path(), &limits).expect("fails closed");
            assert!(over.contains("cannot be measured"), "{over}");
            drop(held);
            println!("child passed");
            return;
        }
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new(std::env::current_exe().unwrap());
        child
            .args([
                "--exact",
                "caps::state::tests::measuring_needs_few_descriptors_and_fails_closed_without_them",
            ])
            .args(["--nocapture", "--test-threads=1"])
            .env(CHILD, "1");
        // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            child.pre_exec(|| {
                let limit = rustix::process::Rlimit {
                    current: Some(48),
                    maximum: Some(48),
                };
                rustix::process::setrlimit(rustix::process::Resource::Nofile, limit)
                    .map_err(std::io::Error::from)
            });
        }
        let out = child.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("child passed"),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn a_dry_run_works_on_a_copy() {
        let root = tempfile::tempdir().unwrap();
        let grant = StateGrant {
            dir: Some(root.path().join("driver")),
        };
        std::fs::create_dir(root.path().join("driver")).unwrap();
        std::fs::write(root.path().join("driver/volume"), b"v1").unwrap();
        // SAFETY: tests in this module do not read FLEX_STATE_DIR concurrently.
        unsafe { std::env::set_var("FLEX_STATE_DIR", root.path()) };
        let prepared = Prepared::new(&grant, "acme~x", &Limits::default(), true).unwrap();
        assert!(prepared.is_scratch() && !prepared.read_only);
        assert_eq!(std::fs::read(prepared.dir.join("volume")).unwrap(), b"v1");
        std::fs::write(prepared.dir.join("volume"), b"v2").unwrap();
        let scratch = prepared.dir.clone();
        drop(prepared);
        assert!(!scratch.exists());
        assert_eq!(
            std::fs::read(root.path().join("driver/volume")).unwrap(),
            b"v1"
        );
    }
}
