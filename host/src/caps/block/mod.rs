//! `flex:volume/block`: probe, format and grow block devices; loop-backed images.
//!
//! - [`devices`]: which devices a driver holds in a call (its own images' loop devices, or
//!   granted by `block.devices` and held by no other driver), resolved once to a descriptor
//!   and used only through it; blank means blank (no signature, first and last MiB zero).
//! - [`ownership`]: the root-only registry of which driver holds which device.
//! - [`images`]: image files beneath the image dir's descriptor, attached by descriptor.
//! - [`locks`]: device and image locks, each held for a bounded time.
//! - [`tools`]: host tools, handed descriptors.
//!
//! Every refusal starts with `denied: ` and is audited, read-only calls included; allowed
//! read-only calls (`probe-fs`, `device-size`, `wait-for-device`, `image-size`,
//! `image-device`) are not, to keep them cheap. A dry run performs nothing (no image, no loop
//! device, no format, no claim) and answers as a real run would: read-only calls really run,
//! and see what this call's earlier dry-run operations would have made.

mod calls;
pub mod devices;
pub mod grant;
pub mod images;
pub mod locks;
pub mod ownership;
pub mod tools;

#[cfg(test)]
mod tests;

pub use grant::BlockGrant;

use super::Patterns;
use crate::audit::Audit;
use crate::caps::paths::{self, Opened};
use crate::limits::Limits;
use devices::{Device, Grants, Refusal};
use images::ImageDir;
use ownership::Registry;
use serde_json::Value;
use std::collections::HashMap;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::Duration;

/// The block capability for one call.
pub struct Block {
    devices: Patterns,
    format_nonzero: Patterns,
    fs_types: Vec<String>,
    image_dir_path: Option<PathBuf>,
    max_image_bytes: u64,
    driver: String,
    call_device_names: Vec<String>,
    call_devices: Option<Vec<u64>>,
    run_dir: PathBuf,
    registry: Option<Registry>,
    /// `None` until opened; `Some(None)` when it does not exist.
    image_dir: Option<Option<ImageDir>>,
    locks: locks::DeviceLocks,
    /// What this call's dry-run operations would have made: image sizes, attached devices.
    dry_images: HashMap<String, u64>,
    dry_attached: HashMap<String, String>,
    audit: Audit,
}

impl Block {
    /// `grant` must have passed [`BlockGrant::validate`]. `call_devices` are the devices
    /// kubelet passed in this call.
    pub fn new(
        grant: &BlockGrant,
        limits: &Limits,
        driver: &str,
        call_devices: &[&str],
        audit: Audit,
    ) -> Block {
        Block {
            devices: Patterns::compile(&grant.devices).unwrap_or_default(),
            format_nonzero: Patterns::compile(&grant.format_nonzero).unwrap_or_default(),
            fs_types: grant.fs_types.clone(),
            image_dir_path: grant.image_dir.clone(),
            max_image_bytes: grant.max_image_bytes,
            driver: driver.into(),
            call_device_names: call_devices.iter().map(|d| d.to_string()).collect(),
            call_devices: None,
            run_dir: ownership::run_dir(),
            registry: None,
            image_dir: None,
            locks: locks::DeviceLocks::new(Duration::from_secs(limits.lock_hold_seconds)),
            dry_images: HashMap::new(),
            dry_attached: HashMap::new(),
            audit,
        }
    }

    fn dry_run(&self) -> bool {
        self.audit.dry_run
    }

    /// A refusal, audited (read-only calls too).
    fn denied<T: Default>(
        &self,
        operation: &str,
        args: Value,
        reason: String,
    ) -> Result<T, String> {
        self.audit
            .run(operation, args, Err(reason), || Ok(T::default()))
    }

    fn registry(&mut self, create: bool) -> Result<Option<&Registry>, String> {
        if self.registry.is_none() {
            self.registry = Registry::open(&self.run_dir, create)?;
        }
        Ok(self.registry.as_ref())
    }

    /// The image dir (`create`: created if missing). Refused when the policy has none.
    fn image_dir(&mut self, create: bool) -> Result<Option<&ImageDir>, String> {
        let Some(path) = self.image_dir_path.clone() else {
            return Err("denied: the policy sets no block.image_dir".into());
        };
        if matches!(self.image_dir, None | Some(None)) {
            let opened = ImageDir::open(&path, create && !self.dry_run())?;
            if opened.is_some() || self.image_dir.is_none() {
                self.image_dir = Some(opened);
            }
        }
        Ok(self.image_dir.as_ref().and_then(Option::as_ref))
    }

    fn image_rule(&self, name: &str) -> Result<String, String> {
        images::check_name(name)?;
        match &self.image_dir_path {
            Some(dir) => Ok(format!("block.image_dir {:?}", dir.display().to_string())),
            None => Err("denied: the policy sets no block.image_dir".into()),
        }
    }

    fn check_size(&self, size: u64) -> Result<String, String> {
        if size == 0 {
            return Err("denied: an image must be larger than 0 bytes".into());
        }
        if size > self.max_image_bytes {
            return Err(format!(
                "denied: {size} bytes is more than block.max_image_bytes ({})",
                self.max_image_bytes
            ));
        }
        Ok(format!("block.max_image_bytes {}", self.max_image_bytes))
    }

    fn call_devices(&mut self) -> Vec<u64> {
        let names = &self.call_device_names;
        self.call_devices
            .get_or_insert_with(|| {
                names
                    .iter()
                    .filter_map(|d| paths::open_device(d).ok())
                    .map(|o| o.stat.st_rdev)
                    .collect()
            })
            .clone()
    }

    /// The device if this driver holds it in this call.
    fn authorize(&mut self, requested: &str) -> Result<Device, Refusal> {
        let call_devices = self.call_devices();
        // A refused image dir grants no loop device; image calls report why.
        let _ = self.image_dir(false);
        let _ = self.registry(false);
        let grants = Grants {
            driver: &self.driver,
            patterns: &self.devices,
            patterns_name: "block.devices",
            image_dir: self.image_dir.as_ref().and_then(Option::as_ref),
            call_devices: &call_devices,
        };
        devices::authorize(requested, &grants, self.registry.as_ref())
    }

    /// [`Block::authorize`] for an operation that changes the device: the claim is recorded
    /// (not in a dry run), and fails when another driver got it first.
    fn authorize_to_change(&mut self, requested: &str) -> Result<Device, String> {
        let device = self.authorize(requested).map_err(Refusal::message)?;
        if !self.dry_run() {
            let (driver, rdev, seq) = (self.driver.clone(), device.rdev, device.diskseq);
            let registry = self.registry(true)?.ok_or("no device registry")?;
            registry.claim(&driver, rdev, seq)?;
        }
        Ok(device)
    }

    fn lock(&self, device: &Device) -> Result<i32, String> {
        self.locks
            .lock(device.rdev, &device.shown(), || device.reopen())
    }

    fn image_wait(&self) -> Duration {
        self.locks.hold()
    }
}

/// The device check the mount capability applies to a device source: the device must be one
/// this driver holds (the same rules as for `block` calls, with `block.devices` as the glob),
/// and mounting it records the claim (not in a dry run).
pub fn mount_device_check(
    grant: &BlockGrant,
    driver: &str,
    call_devices: &[&str],
    dry_run: bool,
) -> super::mounts::DeviceCheck {
    let patterns = Patterns::compile(&grant.devices).unwrap_or_default();
    let image_dir = grant.image_dir.clone();
    let driver = driver.to_string();
    let call_devices: Vec<String> = call_devices.iter().map(|d| d.to_string()).collect();
    let run_dir = ownership::run_dir();
    Box::new(move |opened: &Opened, requested: &str| {
        let fd = rustix::io::fcntl_dupfd_cloexec(opened.fd.as_fd(), 0)
            .map_err(|e| format!("device {requested}: {e}"))?;
        let copy = Opened {
            fd,
            path: opened.path.clone(),
            stat: opened.stat,
        };
        let normal = paths::normalize(requested).map_err(|_| devices::not_granted(requested))?;
        let dir = image_dir
            .as_deref()
            .and_then(|d| ImageDir::open(d, false).ok().flatten());
        let call: Vec<u64> = call_devices
            .iter()
            .filter_map(|d| paths::open_device(d).ok())
            .map(|o| o.stat.st_rdev)
            .collect();
        let grants = Grants {
            driver: &driver,
            patterns: &patterns,
            patterns_name: "block.devices",
            image_dir: dir.as_ref(),
            call_devices: &call,
        };
        let registry = Registry::open(&run_dir, !dry_run)?;
        let device = devices::check_opened(copy, normal, requested, &grants, registry.as_ref())
            .map_err(Refusal::message)?;
        if let (false, Some(registry)) = (dry_run, &registry) {
            registry.claim(&driver, device.rdev, device.diskseq)?;
        }
        Ok(format!("device: {}", device.rule))
    })
}
