//! Mounting an attached block device at kubelet's device mount path (`mountdevice`), shared by
//! block-volume drivers.
//!
//! ```
//! use flex_sdk::{Options, filesystem};
//! # let host = flex_sdk::testing::Host::new();
//! # host.block.add_device("/dev/xvdf", 8 << 30);
//! # let (path, device, options) = (
//! #     "/var/lib/kubelet/plugins/kubernetes.io/flexvolume/acme/disk/mounts/pv-1".to_string(),
//! #     "/dev/xvdf".to_string(),
//! #     Options::default().with_pv_or_volume_name("pv-1"),
//! # );
//!
//! // In `Driver::mount_device(path, device, options)`:
//! filesystem::mount_device(
//!     options.pv_or_volume_name.as_deref().unwrap_or("volume"),
//!     &device,
//!     &path,
//!     options.fs_type.as_deref(),
//!     options.read_only,
//!     &["ext4", "xfs"],
//! )?;
//! # assert_eq!(host.block.device("/dev/xvdf").unwrap().fs.as_deref(), Some("ext4"));
//! # assert!(host.mounts.is_mounted(&path));
//! # Ok::<(), flex_sdk::Error>(())
//! ```

use crate::{Result, block, failure, log, mounts};

/// Mounts `device` (volume `volume`'s) at `device_mount_path` with `nosuid,nodev` (and `ro`
/// when `read_only`), formatting it first only while it is blank: with `fs_type`, or else
/// the first of `file_systems`. A device holding a file system is never reformatted: with
/// no `fs_type` it is mounted as it is (if in `file_systems`), with a different one the
/// call fails. The first probe takes the host's lock on the device for the rest of the
/// call, so concurrent or retried calls re-check the mount point under the lock and never
/// format or mount twice; an existing mount at `device_mount_path` is success.
pub fn mount_device(
    volume: &str,
    device: &str,
    device_mount_path: &str,
    fs_type: Option<&str>,
    read_only: bool,
    file_systems: &[&str],
) -> Result<()> {
    let supported = file_systems.join(" or ");
    let wanted = match fs_type {
        None => None,
        Some(fs) if file_systems.contains(&fs) => Some(fs),
        Some(fs) => {
            return Err(failure(format!(
                "fsType {fs:?} is not supported ({supported})"
            )));
        }
    };
    let found = block::probe_fs(device)?;
    if mounts::is_mountpoint(device_mount_path)? {
        log::info(&format!("{device_mount_path} is already mounted"));
        return Ok(());
    }
    let fs_type = match found {
        Some(fs) => fs,
        None => {
            let Some(fs) = wanted.or(file_systems.first().copied()) else {
                return Err(failure("no file system to format with"));
            };
            block::mkfs(device, fs)?;
            log::info(&format!("formatted {device} ({volume}) as {fs}"));
            fs.to_string()
        }
    };
    if let Some(wanted) = wanted
        && wanted != fs_type
    {
        return Err(failure(format!(
            "volume {volume} holds {fs_type}, not the requested {wanted}: not reformatting it"
        )));
    }
    if !file_systems.contains(&fs_type.as_str()) {
        return Err(failure(format!(
            "volume {volume} holds {fs_type}, not {supported}: not mounting or formatting it"
        )));
    }
    mounts::Mount::new(device, device_mount_path)
        .fs_type(&fs_type)
        .option("nosuid")
        .option("nodev")
        .read_only(read_only)
        .mount()?;
    log::info(&format!(
        "mounted {device} ({fs_type}) on {device_mount_path}"
    ));
    Ok(())
}
