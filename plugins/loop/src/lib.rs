//! `flex/loop`: block volumes on loop devices, with the whole attach lifecycle, online
//! expansion and provisioning. A volume is a sparse image file named after the PV (or inline
//! volume) in the policy's image directory; "attaching" it binds it to a loop device.
//!
//! Verbs, in kubelet's order:
//! - `provision` / `delete` (external flex provisioner): create the image with the requested
//!   size (`requestBytes`, else `requestMiB` / `requestGiB`, else a `size` parameter); delete it
//!   (a missing image is success, an attached one is refused by the host).
//! - `attach`: the image (created if an inline volume carries a `size` option) on a loop
//!   device; a repeated or concurrent attach returns the same device. `isattached`, `detach`
//!   (by PV name; the image is kept) and `waitforattach` (bounded; an empty device is looked
//!   up by name, and the image's real device always wins over a stale one).
//! - `mountdevice`: mount at kubelet's device mount path; format first only when the device is
//!   blank. The host's device lock, taken by the first `probe-fs`, is held for the rest of the
//!   call, so concurrent or retried calls (including after `flex` was killed during mkfs)
//!   re-check the mount point under the lock and never format or mount twice. A device that
//!   holds a different file system than `fsType` asks for is never reformatted: with no
//!   `fsType` it is mounted as it is, with an explicit one the call fails.
//! - `unmountdevice`: unmount if mounted. `expandfs`: grow the image and its loop device, then
//!   the mounted file system, online.
//! - `mount` / `unmount`: bind the device mount path onto the pod directory with
//!   `nosuid,nodev` (and `ro` for a read-only volume), and undo it. kubelet's own fallback
//!   bind (when a driver answers `Not supported`) carries neither flag, so the hardening of the
//!   device mount would not reach the pod. The host allows exactly this bind without a grant.
//!
//! `getvolumename` is `Not supported`: kubelet ignores its answer and uses the PV name, which
//! is what `detach` receives.

use flex_sdk::{Capabilities, Driver, Options, Result, block, failure, log, mounts};

const DEFAULT_FS: &str = "ext4";
const FILE_SYSTEMS: [&str; 2] = ["ext4", "xfs"];
/// How long `waitforattach` waits for a device to appear.
const WAIT_FOR_DEVICE_MS: u32 = 30_000;

struct Loop;

impl Driver for Loop {
    fn init() -> Result<Capabilities> {
        Ok(Capabilities {
            attach: true,
            requires_fs_resize: true,
            // kubelet's statfs on the pod directory sees the volume's own file system.
            supports_metrics: true,
            ..Capabilities::default()
        })
    }

    fn provision(options: Options) -> Result<()> {
        let name = volume_name(&options)?;
        let size = requested_size(&options)?
            .ok_or_else(|| failure("provision needs requestBytes, requestGiB or size"))?;
        let actual = block::create_image(name, size)?;
        log::info(&format!("provisioned {name}: {actual} bytes"));
        Ok(())
    }

    fn delete(options: Options) -> Result<()> {
        block::delete_image(volume_name(&options)?)
    }

    fn attach(options: Options, _node: String) -> Result<String> {
        let name = volume_name(&options)?;
        if block::image_size(name)?.is_none() {
            // An inline volume brings its size; a PV must have been provisioned.
            let Some(size) = requested_size(&options)? else {
                return Err(failure(format!(
                    "volume {name} has no image: provision it, or give the inline volume a size option"
                )));
            };
            block::create_image(name, size)?;
        }
        let device = block::attach_image(name)?;
        log::info(&format!("{name} is attached to {device}"));
        Ok(device)
    }

    fn is_attached(options: Options, _node: String) -> Result<bool> {
        Ok(block::image_device(volume_name(&options)?)?.is_some())
    }

    fn detach(volume_name: String, _node: String) -> Result<()> {
        block::detach_image(&volume_name)
    }

    fn wait_for_attach(device: String, options: Options) -> Result<String> {
        let name = volume_name(&options)?;
        if !device.is_empty() && !block::wait_for_device(&device, WAIT_FOR_DEVICE_MS)? {
            return Err(failure(format!(
                "{device} did not appear within {} s",
                WAIT_FOR_DEVICE_MS / 1000
            )));
        }
        match block::image_device(name)? {
            Some(actual) => {
                if !device.is_empty() && actual != device {
                    log::warn(&format!(
                        "{name} is attached to {actual}, not {device}: using {actual}"
                    ));
                }
                Ok(actual)
            }
            None => Err(failure(format!("volume {name} is not attached"))),
        }
    }

    fn mount_device(device_mount_path: String, device: String, options: Options) -> Result<()> {
        let name = volume_name(&options)?;
        let device = match block::image_device(name)? {
            Some(actual) if device.is_empty() || actual == device => actual,
            Some(actual) => {
                return Err(failure(format!(
                    "{device} is not volume {name}'s device ({actual}): refusing to mount it"
                )));
            }
            None => return Err(failure(format!("volume {name} is not attached"))),
        };
        let wanted = match options.fs_type.as_deref() {
            None => None,
            Some(fs) if FILE_SYSTEMS.contains(&fs) => Some(fs),
            Some(fs) => {
                return Err(failure(format!(
                    "fsType {fs:?} is not supported (ext4 or xfs)"
                )));
            }
        };
        // The first probe takes the host's lock on the device for the rest of this call, so
        // the mount point is checked, and the device formatted and mounted, by one call at a
        // time.
        let found = block::probe_fs(&device)?;
        if mounts::is_mountpoint(&device_mount_path)? {
            log::info(&format!("{device_mount_path} is already mounted"));
            return Ok(());
        }
        let fs_type = match found {
            Some(fs) => fs,
            None => {
                let fs = wanted.unwrap_or(DEFAULT_FS);
                block::mkfs(&device, fs)?;
                log::info(&format!("formatted {device} ({name}) as {fs}"));
                fs.to_string()
            }
        };
        if let Some(wanted) = wanted
            && wanted != fs_type
        {
            return Err(failure(format!(
                "volume {name} holds {fs_type}, not the requested {wanted}: not reformatting it"
            )));
        }
        if !FILE_SYSTEMS.contains(&fs_type.as_str()) {
            return Err(failure(format!(
                "volume {name} holds {fs_type}, not ext4 or xfs: not mounting or formatting it"
            )));
        }
        mounts::Mount::new(&device, &device_mount_path)
            .fs_type(&fs_type)
            .option("nosuid")
            .option("nodev")
            .read_only(options.read_only)
            .mount()?;
        log::info(&format!(
            "mounted {device} ({fs_type}) on {device_mount_path}"
        ));
        Ok(())
    }

    fn mount(target_dir: String, options: Options) -> Result<()> {
        flex_sdk::pod::bind_device_mount(&target_dir, options.read_only)
    }

    fn unmount(target_dir: String) -> Result<()> {
        flex_sdk::pod::unbind(&target_dir)
    }

    fn unmount_device(device_mount_path: String) -> Result<()> {
        if mounts::is_mountpoint(&device_mount_path)? {
            mounts::unmount(&device_mount_path)?;
        }
        Ok(())
    }

    fn expand_fs(
        options: Options,
        device: String,
        device_mount_path: String,
        new_size: u64,
        _old_size: u64,
    ) -> Result<()> {
        let name = volume_name(&options)?;
        block::grow_image(name, new_size)?;
        let device = match block::image_device(name)? {
            Some(actual) => actual,
            None if !device.is_empty() => device,
            None => return Err(failure(format!("volume {name} is not attached"))),
        };
        block::resize_fs(&device, &device_mount_path)?;
        log::info(&format!("grew {name} to {new_size} bytes"));
        Ok(())
    }
}

flex_sdk::export_driver!(Loop);

/// The image name: the PV name (or inline volume name), as kubelet passes it.
fn volume_name(options: &Options) -> Result<&str> {
    options
        .pv_or_volume_name
        .as_deref()
        .ok_or_else(|| failure("kubernetes.io/pvOrVolumeName is missing"))
}

/// The size asked for: the provisioner's `requestBytes` (exact), `requestMiB`, `requestGiB`,
/// or a `size` option (bytes or a quantity such as `1Gi`).
fn requested_size(options: &Options) -> Result<Option<u64>> {
    let keys: [(&str, u64); 3] = [
        ("requestBytes", 1),
        ("requestMiB", 1 << 20),
        ("requestGiB", 1 << 30),
    ];
    for (key, unit) in keys {
        if let Some(text) = options.get(key) {
            let number: u64 = text
                .parse()
                .map_err(|_| failure(format!("{key} must be a number, not {text:?}")))?;
            return number
                .checked_mul(unit)
                .filter(|n| *n > 0)
                .map(Some)
                .ok_or_else(|| failure(format!("{key} {text:?} is out of range")));
        }
    }
    options
        .get("size")
        .map(flex_sdk::parse_quantity)
        .transpose()
}
