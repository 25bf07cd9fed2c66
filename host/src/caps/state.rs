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
use rustix::fs::{Dir, FileType, Mode, OFlags};
use serde::{Deserialize, Serialize};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
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
            .map_err(|e| format!("cannot create state directory {}: {e}", dir.display()))?;
        Ok(dir)
    }
}

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

fn open_dir_beneath(dir: BorrowedFd<'_>, name: &std::ffi::CStr) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Measures a directory tree through descriptors (`openat` with `O_NOFOLLOW`, so a symlink
/// swapped in mid-walk is counted, never followed). Stops counting past `stop_at` entries.
pub fn usage(dir: &Path, stop_at: u64) -> Result<Usage, String> {
    let root = rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut usage = Usage::default();
    let mut pending = vec![root];
    while let Some(fd) = pending.pop() {
        let entries = Dir::read_from(&fd).map_err(|e| format!("{}: {e}", dir.display()))?;
        for entry in entries {
            let Ok(entry) = entry else { continue };
            let name = entry.file_name();
            if name == c"." || name == c".." {
                continue;
            }
            usage.entries += 1;
            if usage.entries > stop_at {
                return Ok(usage);
            }
            let Ok(stat) = rustix::fs::statat(&fd, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
            else {
                continue; // removed meanwhile
            };
            usage.bytes += (stat.st_blocks as u64).saturating_mul(512);
            if FileType::from_raw_mode(stat.st_mode) == FileType::Directory
                && let Ok(child) = open_dir_beneath(fd.as_fd(), name)
            {
                pending.push(child);
            }
        }
    }
    Ok(usage)
}

/// Copies a state directory for a dry run (regular files, directories and symlinks as links;
/// nothing else), through descriptors as [`usage`] walks.
pub fn copy_tree(from: &Path, to: &Path) -> Result<(), String> {
    let failed = |e: std::io::Error| format!("copy state {}: {e}", from.display());
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(to)
        .map_err(failed)?;
    for entry in std::fs::read_dir(from).map_err(failed)? {
        let entry = entry.map_err(failed)?;
        let kind = entry.file_type().map_err(failed)?;
        let (source, target) = (entry.path(), to.join(entry.file_name()));
        if kind.is_dir() {
            copy_tree(&source, &target)?;
        } else if kind.is_symlink() {
            let link = std::fs::read_link(&source).map_err(failed)?;
            std::os::unix::fs::symlink(link, &target).map_err(failed)?;
        } else if kind.is_file() {
            // Opened without following a link swapped in since `read_dir`.
            use std::os::unix::fs::OpenOptionsExt;
            let mut input = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(nix::libc::O_NOFOLLOW)
                .open(&source)
                .map_err(failed)?;
            let mut output = std::fs::File::create(&target).map_err(failed)?;
            std::io::copy(&mut input, &mut output).map_err(failed)?;
        }
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
                copy_tree(&dir, &copy)?;
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
            let Ok(measured) = usage(&dir, limits.state_files.saturating_add(1)) else {
                continue;
            };
            if let Some(message) = measured.over(&limits) {
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
