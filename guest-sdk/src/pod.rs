//! The pod-side half of an attachable volume: `mount` and `unmount` for a driver whose
//! `mountdevice` mounted the device at kubelet's device mount path.
//!
//! Why a driver should do this itself rather than answer `mount` with `Not supported`:
//! kubelet's own fallback bind mount carries neither `nosuid` nor `nodev`, so a device mount
//! hardened with them would reach the pod without them. The host allows exactly this bind
//! (the volume's own device mount path onto the pod directory of this call) without any
//! `[mount]` grant, and applies the policy's required options to it.
//!
//! ```
//! use flex_sdk::pod;
//! # let host = flex_sdk::testing::Host::new();
//! let dir = "/var/lib/kubelet/pods/u1/volumes/acme~disk/pv-1";
//! # host.mounts.add("/var/lib/kubelet/plugins/kubernetes.io/flexvolume/acme/disk/mounts/pv-1");
//!
//! // In `Driver::mount(dir, options)` and `Driver::unmount(dir)`:
//! pod::bind_device_mount(dir, false)?;
//! # assert!(host.mounts.is_mounted(dir));
//! pod::unbind(dir)?;
//! pod::unbind(dir)?; // not mounted: success
//! # Ok::<(), flex_sdk::Error>(())
//! ```

use crate::{Result, failure, kubelet, mounts};

/// Binds the volume's device mount path onto `target_dir` with `nosuid,nodev` (and `ro`
/// when `read_only`). Already mounted is success.
pub fn bind_device_mount(target_dir: &str, read_only: bool) -> Result<()> {
    if mounts::is_mountpoint(target_dir)? {
        return Ok(());
    }
    let source = kubelet::device_mount_path(target_dir).ok_or_else(|| {
        failure(format!(
            "{target_dir} is not a kubelet pod volume directory"
        ))
    })?;
    mounts::Mount::bind(&source, target_dir)
        .option("nosuid")
        .option("nodev")
        .read_only(read_only)
        .mount()
}

/// Unmounts the pod's bind mount; not mounted is success. kubelet removes the directory.
pub fn unbind(target_dir: &str) -> Result<()> {
    if mounts::is_mountpoint(target_dir)? {
        mounts::unmount(target_dir)?;
    }
    Ok(())
}
