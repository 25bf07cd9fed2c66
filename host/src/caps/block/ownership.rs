//! Which driver holds which device: a root-only registry, one file per device.
//!
//! `FLEX_RUN_DIR/devices/<major>:<minor>` (default `/run/flex`, so it is gone after a reboot,
//! with every device it named) holds `{"driver": "vendor~driver", "diskseq": N}`: the driver
//! that attached (an image), formatted, resized or mounted the device, and the disk sequence
//! number the kernel gave the disk behind that device number (`BLKGETDISKSEQ`, Linux 5.15+;
//! it is new each time a loop device is configured or a disk appears). A claim whose diskseq
//! is not the device's current one is stale: the device number now names another disk.
//! A claim is released by `detach-image`; an operator may delete a file to hand a device to
//! another driver.
//!
//! Claims are made under an exclusive `flock` on the registry directory, so of two drivers
//! racing for one unclaimed device exactly one gets it. Reads need no lock: each file is
//! written whole to a temporary name and renamed into place.

use super::locks::flock;
use crate::caps::paths;
use rustix::fs::{Mode, OFlags};
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::time::Duration;

pub const DEFAULT_RUN_DIR: &str = "/run/flex";

/// `FLEX_RUN_DIR`, default `/run/flex`.
pub fn run_dir() -> PathBuf {
    std::env::var_os("FLEX_RUN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| DEFAULT_RUN_DIR.into())
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub driver: String,
    pub diskseq: u64,
}

/// The registry directory, opened once per call.
pub struct Registry {
    dir: OwnedFd,
}

/// Longest a claim waits for another call's registry update (a few file writes).
const REGISTRY_WAIT: Duration = Duration::from_secs(10);

impl Registry {
    /// Opens (`create`: creating, 0700) the registry in `run_dir`; `None` when it does not
    /// exist yet. Refused when anyone but root could change it.
    pub fn open(run_dir: &std::path::Path, create: bool) -> Result<Option<Registry>, String> {
        let path = run_dir.join("devices");
        let text = path.to_string_lossy();
        let opened = match paths::open_exact(&text, OFlags::DIRECTORY) {
            Ok(opened) => opened,
            Err(_) if create => paths::create_dir_all(&text, Mode::from_raw_mode(0o700))?,
            Err(_) if !path.exists() => return Ok(None),
            Err(e) => return Err(format!("device registry: {e}")),
        };
        paths::check_root_only(opened.fd.as_fd(), &path)
            .map_err(|e| format!("refusing the device registry: {e}"))?;
        let dir = paths::reopen(opened.fd.as_fd(), OFlags::RDONLY | OFlags::DIRECTORY)?;
        Ok(Some(Registry { dir }))
    }

    fn name(rdev: u64) -> String {
        paths::major_minor(rdev)
    }

    /// The claim recorded for a device number, stale or not.
    pub fn get(&self, rdev: u64) -> Result<Option<Claim>, String> {
        let name = Self::name(rdev);
        let fd = match paths::open_beneath(self.dir.as_fd(), &name, OFlags::RDONLY, Mode::empty()) {
            Ok(fd) => fd,
            Err(_) if !self.exists(&name) => return Ok(None),
            Err(e) => return Err(format!("device registry: {e}")),
        };
        let mut text = String::new();
        std::fs::File::from(fd)
            .take(4096)
            .read_to_string(&mut text)
            .map_err(|e| format!("device registry {name}: {e}"))?;
        // An unreadable claim protects nothing: treated as absent, replaced by the next claim.
        Ok(serde_json::from_str(&text).ok())
    }

    fn exists(&self, name: &str) -> bool {
        rustix::fs::statat(&self.dir, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW).is_ok()
    }

    /// The driver that holds the device now: a claim whose diskseq is current.
    pub fn holder(&self, rdev: u64, diskseq: u64) -> Result<Option<String>, String> {
        Ok(self
            .get(rdev)?
            .filter(|c| c.diskseq == diskseq)
            .map(|c| c.driver))
    }

    /// Records that `driver` holds the device, unless another driver does.
    pub fn claim(&self, driver: &str, rdev: u64, diskseq: u64) -> Result<(), String> {
        flock(self.dir.as_fd(), "the device registry", REGISTRY_WAIT)?;
        let result = match self.holder(rdev, diskseq)? {
            Some(holder) if holder == driver => Ok(()),
            Some(_) => Err(held_by_another(&paths::major_minor(rdev))),
            None => self.write(
                &Claim {
                    driver: driver.into(),
                    diskseq,
                },
                rdev,
            ),
        };
        self.unlock();
        result
    }

    /// Forgets the claim of `driver` on a device (another driver's claim stays).
    pub fn release(&self, driver: &str, rdev: u64) -> Result<(), String> {
        flock(self.dir.as_fd(), "the device registry", REGISTRY_WAIT)?;
        let result = match self.get(rdev)? {
            Some(claim) if claim.driver == driver => {
                rustix::fs::unlinkat(&self.dir, Self::name(rdev), rustix::fs::AtFlags::empty())
                    .map_err(|e| format!("device registry: {e}"))
            }
            _ => Ok(()),
        };
        self.unlock();
        result
    }

    fn unlock(&self) {
        // SAFETY: flock on a descriptor we own; no memory is passed.
        unsafe {
            nix::libc::flock(
                std::os::fd::AsRawFd::as_raw_fd(&self.dir),
                nix::libc::LOCK_UN,
            )
        };
    }

    fn write(&self, claim: &Claim, rdev: u64) -> Result<(), String> {
        let name = Self::name(rdev);
        let temp = format!(".{name}.{}", std::process::id());
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC;
        let fd = paths::open_beneath(self.dir.as_fd(), &temp, flags, Mode::from_raw_mode(0o600))?;
        let mut file = std::fs::File::from(fd);
        let text = serde_json::to_string(claim).unwrap_or_default();
        file.write_all(text.as_bytes())
            .map_err(|e| format!("device registry {name}: {e}"))?;
        rustix::fs::renameat(&self.dir, &temp, &self.dir, &name)
            .map_err(|e| format!("device registry {name}: {e}"))
    }
}

pub fn held_by_another(device: &str) -> String {
    format!("denied: device {device} is held by another driver")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_are_exclusive_and_stale_ones_are_replaced() {
        let run = super::super::tests::root_only_tempdir();
        assert!(Registry::open(run.path(), false).unwrap().is_none());
        let registry = Registry::open(run.path(), true).unwrap().unwrap();
        let rdev = rustix::fs::makedev(7, 4000);
        assert_eq!(registry.holder(rdev, 5), Ok(None));
        registry.claim("a~a", rdev, 5).unwrap();
        registry.claim("a~a", rdev, 5).unwrap();
        assert_eq!(registry.holder(rdev, 5), Ok(Some("a~a".into())));
        let err = registry.claim("b~b", rdev, 5).unwrap_err();
        assert!(
            err.starts_with("denied: device 7:4000 is held by another driver"),
            "{err}"
        );
        // Another disk behind the same number: the old claim is stale.
        assert_eq!(registry.holder(rdev, 6), Ok(None));
        registry.claim("b~b", rdev, 6).unwrap();
        registry.release("a~a", rdev).unwrap();
        assert_eq!(registry.holder(rdev, 6), Ok(Some("b~b".into())));
        registry.release("b~b", rdev).unwrap();
        assert_eq!(registry.get(rdev), Ok(None));
    }
}
