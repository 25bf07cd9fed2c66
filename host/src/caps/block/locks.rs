//! Device and image locks (`flock(2)`), each held for a bounded time.
//!
//! - The first time a call touches a device (`probe-fs`, `mkfs`, `resize-fs`) it takes an
//!   exclusive lock on the device and keeps it, so a driver that probes, checks its mount
//!   point, formats and mounts is alone on that device for the sequence; a concurrent call
//!   waits in its own first device call. systemd-udevd honours this lock too (it does not
//!   probe a device locked this way).
//! - A lock is held at most `limits.lock_hold_seconds`: a reaper thread releases it then, and
//!   the call's next use of that device fails with `limit exceeded: limits.lock_hold_seconds`
//!   (what it checked under the lock may no longer hold). Waiting for another call's lock is
//!   bounded by the same limit. `wait-for-device` takes no lock, so no lock lives through a
//!   whole `waitforattach`.
//! - `mkfs` hands the locked descriptor to the mkfs process, so a format in progress keeps
//!   its device locked until it ends, even past the limit or when `flex` is killed: a retried
//!   call waits for it, then finds the file system instead of a half-written device.

use crate::limits;
use nix::libc;
use std::collections::{HashMap, HashSet};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// Takes an exclusive `flock` on `fd`, waiting at most `wait` for another holder.
pub fn flock(fd: BorrowedFd<'_>, shown: &str, wait: Duration) -> Result<(), String> {
    let deadline = Instant::now() + wait;
    loop {
        // SAFETY: flock on a descriptor we own; no memory is passed.
        if unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(());
        }
        let error = std::io::Error::last_os_error();
        match error.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Some(libc::EWOULDBLOCK) => {
                return Err(limits::exceeded(
                    "lock_hold_seconds",
                    format!(
                        "{shown} is still locked by another operation after {} s",
                        wait.as_secs()
                    ),
                ));
            }
            _ => return Err(format!("lock {shown}: {error}")),
        }
    }
}

struct Held {
    fd: OwnedFd,
    since: Instant,
}

#[derive(Default)]
struct Table {
    held: HashMap<u64, Held>,
    /// Devices whose lock this call held too long and lost.
    released: HashSet<u64>,
    reaper: bool,
}

/// The device locks one call holds, by device number.
pub struct DeviceLocks {
    table: Arc<Mutex<Table>>,
    hold: Duration,
}

impl DeviceLocks {
    pub fn new(hold: Duration) -> DeviceLocks {
        DeviceLocks {
            table: Arc::default(),
            hold,
        }
    }

    pub fn hold(&self) -> Duration {
        self.hold
    }

    fn lost(&self, shown: &str) -> String {
        limits::exceeded(
            "lock_hold_seconds",
            format!(
                "this call held the lock on {shown} longer than {} s and lost it",
                self.hold.as_secs()
            ),
        )
    }

    /// The locked descriptor of device `rdev`, locking `open()`'s descriptor the first time.
    pub fn lock(
        &self,
        rdev: u64,
        shown: &str,
        open: impl FnOnce() -> Result<OwnedFd, String>,
    ) -> Result<RawFd, String> {
        {
            let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
            let expired = table
                .held
                .get(&rdev)
                .map(|h| h.since.elapsed() >= self.hold);
            match expired {
                Some(false) => return Ok(table.held[&rdev].fd.as_raw_fd()),
                Some(true) => {
                    table.held.remove(&rdev);
                    table.released.insert(rdev);
                }
                None => {}
            }
            if table.released.contains(&rdev) {
                return Err(self.lost(shown));
            }
        }
        // Waiting happens without the table: the reaper keeps running meanwhile.
        let fd = open()?;
        flock(std::os::fd::AsFd::as_fd(&fd), shown, self.hold)?;
        let raw = fd.as_raw_fd();
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        table.held.insert(
            rdev,
            Held {
                fd,
                since: Instant::now(),
            },
        );
        if !table.reaper {
            table.reaper = true;
            let weak = Arc::downgrade(&self.table);
            let hold = self.hold;
            std::thread::spawn(move || reap(weak, hold));
        }
        Ok(raw)
    }
}

/// Releases every lock held longer than `hold`; ends with the call (or when none is held).
fn reap(table: Weak<Mutex<Table>>, hold: Duration) {
    loop {
        let Some(table) = table.upgrade() else {
            return;
        };
        let next = {
            let mut t = table.lock().unwrap_or_else(|e| e.into_inner());
            let expired: Vec<u64> = t
                .held
                .iter()
                .filter(|(_, h)| h.since.elapsed() >= hold)
                .map(|(rdev, _)| *rdev)
                .collect();
            for rdev in expired {
                t.held.remove(&rdev);
                t.released.insert(rdev);
            }
            match t.held.values().map(|h| h.since + hold).min() {
                Some(next) => next,
                None => {
                    t.reaper = false;
                    return;
                }
            }
        };
        drop(table);
        std::thread::sleep(
            next.saturating_duration_since(Instant::now()) + Duration::from_millis(1),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn file() -> (
        tempfile::NamedTempFile,
        impl Fn() -> Result<OwnedFd, String>,
    ) {
        let file = tempfile::NamedTempFile::new().unwrap();
        let path = file.path().to_path_buf();
        (file, move || {
            std::fs::File::open(&path)
                .map(OwnedFd::from)
                .map_err(|e| e.to_string())
        })
    }

    #[test]
    fn a_lock_is_released_after_the_hold_limit() {
        let (_file, open) = file();
        let locks = DeviceLocks::new(Duration::from_millis(1200));
        locks.lock(7, "/dev/x", &open).unwrap();
        // Another holder cannot get it now...
        let other = open().unwrap();
        let err = flock(other.as_fd(), "/dev/x", Duration::from_millis(50)).unwrap_err();
        assert!(
            err.starts_with("limit exceeded: limits.lock_hold_seconds"),
            "{err}"
        );
        // ...but once the reaper released it, it can, and this call has lost it.
        flock(other.as_fd(), "/dev/x", Duration::from_secs(3)).unwrap();
        let err = locks.lock(7, "/dev/x", &open).unwrap_err();
        assert!(err.contains("lost it"), "{err}");
    }
}
