//! The `block` imports, one method each: authorize, audit, perform (see the module docs of
//! [`super`]).

use super::devices::{self, Refusal};
use super::images::{self, ImageDir};
use super::ownership::Registry;
use super::{Block, tools};
use crate::bindings::flex::volume::block::Host;
use crate::caps::paths;
use serde_json::json;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

impl Host for Block {
    /// Takes the device lock, so a probe never sees a format in progress.
    fn probe_fs(&mut self, device: String) -> Result<Option<String>, String> {
        let args = json!({ "device": device });
        let checked = match self.authorize(&device) {
            Ok(d) => d,
            Err(Refusal::Denied(reason)) => return self.denied("probe-fs", args, reason),
            Err(Refusal::Missing(message)) => return Err(message),
        };
        self.lock(&checked)?;
        let found = tools::signatures(checked.io.as_fd(), &checked.shown())?;
        Ok(tools::signature_type(&found))
    }

    fn mkfs(&mut self, device: String, fs_type: String) -> Result<(), String> {
        let args = json!({ "device": device, "fs_type": fs_type });
        let checked = if self.fs_types.contains(&fs_type) {
            self.authorize_to_change(&device)
        } else {
            Err(format!(
                "denied: file system type {fs_type:?} is not granted by block.fs_types"
            ))
        };
        let rule = checked
            .as_ref()
            .map(|d| format!("{}; block.fs_types {fs_type:?}", d.rule))
            .map_err(Clone::clone);
        let lock = match (&checked, self.dry_run()) {
            (Ok(d), false) => Some(self.lock(d)),
            _ => None,
        };
        let allow_nonzero = checked.as_ref().is_ok_and(|d| {
            let name = d.matched_name();
            self.format_nonzero
                .matching(&name.to_string_lossy())
                .is_some()
        });
        self.audit.run("mkfs", args, rule, || {
            let device = checked.expect("allowed");
            let lock = lock.expect("locked when performed")?;
            devices::mkfs(&device, &fs_type, allow_nonzero, lock)
        })
    }

    fn resize_fs(&mut self, device: String, mount_path: String) -> Result<(), String> {
        let args = json!({ "device": device, "mount_path": mount_path });
        let checked = self.authorize_to_change(&device).and_then(|d| {
            let root = devices::mount_root_of(&d, &mount_path)?;
            Ok((d, root))
        });
        let rule = checked
            .as_ref()
            .map(|(d, _)| format!("{}; mounted at the given path", d.rule))
            .map_err(Clone::clone);
        let lock = match (&checked, self.dry_run()) {
            (Ok((d, _)), false) => Some(self.lock(d)),
            _ => None,
        };
        self.audit.run("resize-fs", args, rule, || {
            let (device, root) = checked.expect("allowed");
            lock.expect("locked when performed")?;
            devices::grow(&device, &root)
        })
    }

    fn device_size(&mut self, device: String) -> Result<u64, String> {
        match self.authorize(&device) {
            Ok(d) => d.size(),
            Err(Refusal::Denied(reason)) => {
                self.denied("device-size", json!({ "device": device }), reason)
            }
            Err(Refusal::Missing(message)) => Err(message),
        }
    }

    /// Takes no lock. A name the policy does not grant is refused at once, whether or not it
    /// exists; a granted name is waited for.
    fn wait_for_device(&mut self, device: String, timeout_ms: u32) -> Result<bool, String> {
        let deadline = Instant::now() + Duration::from_millis(timeout_ms.into());
        loop {
            match self.authorize(&device) {
                Ok(_) => return Ok(true),
                Err(Refusal::Missing(_)) if Instant::now() >= deadline => return Ok(false),
                Err(Refusal::Missing(_)) => std::thread::sleep(Duration::from_millis(20)),
                Err(Refusal::Denied(reason)) => {
                    let args = json!({ "device": device, "timeout_ms": timeout_ms });
                    return self.denied("wait-for-device", args, reason);
                }
            }
        }
    }

    fn create_image(&mut self, name: String, size: u64) -> Result<u64, String> {
        let args = json!({ "name": name, "size": size });
        let checked = self
            .image_rule(&name)
            .and_then(|rule| Ok(format!("{rule}; {}", self.check_size(size)?)));
        let dir = match (&checked, self.dry_run()) {
            (Ok(_), false) => Some(
                self.image_dir(true)
                    .and_then(|d| d.map(ImageDir::duplicate).transpose()),
            ),
            _ => None,
        };
        let wait = self.image_wait();
        let created = self.audit.run("create-image", args, checked, || {
            let dir = dir.expect("opened when performed")?.ok_or("no image dir")?;
            let image = dir
                .open_image(&name, true, wait)?
                .ok_or_else(|| format!("image {name} was not created"))?;
            if image.stat.st_size > 0 {
                return Ok(image.stat.st_size as u64); // an existing image is kept as it is
            }
            // New, or created by a call that died before sizing it: nothing to lose.
            image
                .file
                .set_len(size)
                .map_err(|e| format!("size image {name}: {e}"))?;
            Ok(size)
        })?;
        if !self.dry_run() {
            return Ok(created);
        }
        let existing = self.real_image_size(&name)?;
        let answer = *self
            .dry_images
            .entry(name)
            .or_insert(existing.unwrap_or(size));
        Ok(answer)
    }

    fn image_size(&mut self, name: String) -> Result<Option<u64>, String> {
        if let Err(reason) = self.image_rule(&name) {
            return self.denied("image-size", json!({ "name": name }), reason);
        }
        if let Some(size) = self.dry_images.get(&name) {
            return Ok(Some(*size));
        }
        self.real_image_size(&name)
    }

    fn grow_image(&mut self, name: String, size: u64) -> Result<(), String> {
        let args = json!({ "name": name, "size": size });
        let checked = self
            .image_rule(&name)
            .and_then(|rule| Ok(format!("{rule}; {}", self.check_size(size)?)));
        let dir = self.open_for_change(&checked);
        let wait = self.image_wait();
        self.audit.run("grow-image", args, checked, || {
            let dir = dir.expect("opened when performed")?;
            let image = existing_image(&dir, &name, wait)?;
            if (image.stat.st_size as u64) < size {
                image
                    .file
                    .set_len(size)
                    .map_err(|e| format!("grow image {name}: {e}"))?;
            }
            // Always refresh: a call that died between the two steps is completed by its retry.
            for device in images::devices_of(&image.real, &image.stat) {
                images::refresh_size(&device)?;
            }
            Ok(())
        })?;
        if let Some(known) = self.dry_images.get_mut(&name) {
            *known = (*known).max(size);
        }
        Ok(())
    }

    fn delete_image(&mut self, name: String) -> Result<(), String> {
        let args = json!({ "name": name });
        let checked = self.image_rule(&name);
        let dir = self.open_for_change(&checked);
        let wait = self.image_wait();
        self.audit.run("delete-image", args, checked, || {
            let Some(dir) = dir.expect("opened when performed")? else {
                return Ok(());
            };
            let Some(image) = dir.open_image(&name, false, wait)? else {
                return Ok(());
            };
            if let Some(device) = images::devices_of(&image.real, &image.stat).first() {
                return Err(format!(
                    "refused to delete image {name}: it is attached to {}",
                    device.path
                ));
            }
            dir.delete(&name, &image)
        })?;
        self.dry_images.remove(&name);
        Ok(())
    }

    fn attach_image(&mut self, name: String) -> Result<String, String> {
        let args = json!({ "name": name });
        let checked = self.image_rule(&name);
        let dir = self.open_for_change(&checked);
        let registry = match (&checked, self.dry_run()) {
            (Ok(_), false) => Some(Registry::open(&self.run_dir, true)),
            _ => None,
        };
        let (wait, driver) = (self.image_wait(), self.driver.clone());
        let attached = self.audit.run("attach-image", args, checked, || {
            let registry = registry
                .expect("opened when performed")?
                .ok_or("no device registry")?;
            let dir = dir.expect("opened when performed")?;
            let image = existing_image(&dir, &name, wait)?;
            let existing = images::devices_of(&image.real, &image.stat)
                .into_iter()
                .next();
            let attached_now = existing.is_none();
            let device = match existing {
                Some(device) => device,
                None => images::attach(&image, &name)?,
            };
            let seq = device_diskseq(&device)?;
            if let Err(e) = registry.claim(&driver, device.rdev, seq) {
                if attached_now {
                    let _ = images::detach(device, &image);
                }
                return Err(e);
            }
            Ok(device.path)
        })?;
        if !self.dry_run() {
            return Ok(attached);
        }
        if let Some(device) = self.dry_attached.get(&name) {
            return Ok(device.clone());
        }
        let device = match self.real_image_device(&name)? {
            Some(device) => device,
            None if self.dry_images.contains_key(&name)
                || self.real_image_size(&name)?.is_some() =>
            {
                images::free_device_guess()
            }
            None => return Err(format!("image {name} does not exist")),
        };
        self.dry_attached.insert(name, device.clone());
        Ok(device)
    }

    fn image_device(&mut self, name: String) -> Result<Option<String>, String> {
        if let Err(reason) = self.image_rule(&name) {
            return self.denied("image-device", json!({ "name": name }), reason);
        }
        if let Some(device) = self.dry_attached.get(&name) {
            return Ok(Some(device.clone()));
        }
        self.real_image_device(&name)
    }

    fn detach_image(&mut self, name: String) -> Result<(), String> {
        let args = json!({ "name": name });
        let checked = self.image_rule(&name);
        let dir = self.open_for_change(&checked);
        let registry = match (&checked, self.dry_run()) {
            (Ok(_), false) => Some(Registry::open(&self.run_dir, false)),
            _ => None,
        };
        let (wait, driver) = (self.image_wait(), self.driver.clone());
        self.audit.run("detach-image", args, checked, || {
            let registry = registry.expect("opened when performed")?;
            let Some(dir) = dir.expect("opened when performed")? else {
                return Ok(());
            };
            let Some(image) = dir.open_image(&name, false, wait)? else {
                return Ok(());
            };
            for device in images::devices_of(&image.real, &image.stat) {
                if let Some(point) =
                    devices::mount_points(&paths::major_minor(device.rdev))?.first()
                {
                    return Err(format!(
                        "refused to detach {}: it is mounted at {}",
                        device.path,
                        point.display()
                    ));
                }
                let rdev = device.rdev;
                images::detach(device, &image)?;
                if let Some(registry) = &registry {
                    registry.release(&driver, rdev)?;
                }
            }
            Ok(())
        })?;
        self.dry_attached.remove(&name);
        Ok(())
    }
}

impl Block {
    /// The image dir for an allowed change (not opened when refused or in a dry run).
    fn open_for_change(
        &mut self,
        checked: &Result<String, String>,
    ) -> Option<Result<Option<ImageDir>, String>> {
        match (checked, self.dry_run()) {
            (Ok(_), false) => Some(
                self.image_dir(false)
                    .and_then(|d| d.map(ImageDir::duplicate).transpose()),
            ),
            _ => None,
        }
    }

    fn real_image_size(&mut self, name: &str) -> Result<Option<u64>, String> {
        let Some(dir) = self.image_dir(false)? else {
            return Ok(None);
        };
        Ok(dir.peek(name)?.map(|(_, stat)| stat.st_size as u64))
    }

    fn real_image_device(&mut self, name: &str) -> Result<Option<String>, String> {
        let Some(dir) = self.image_dir(false)? else {
            return Ok(None);
        };
        let Some((fd, stat)) = dir.peek(name)? else {
            return Ok(None);
        };
        let real = paths::fd_path(fd.as_fd())?;
        Ok(images::devices_of(&real, &stat)
            .into_iter()
            .next()
            .map(|d| d.path))
    }
}

/// The disk sequence number of a loop device (new on every configure).
fn device_diskseq(device: &images::LoopDevice) -> Result<u64, String> {
    devices::diskseq_of(device.fd.as_fd()).map_err(|e| format!("{}: {e}", device.path))
}

/// An image that must exist, opened and locked.
fn existing_image(
    dir: &Option<ImageDir>,
    name: &str,
    wait: Duration,
) -> Result<images::Image, String> {
    dir.as_ref()
        .map(|d| d.open_image(name, false, wait))
        .transpose()?
        .flatten()
        .ok_or_else(|| format!("image {name} does not exist"))
}
