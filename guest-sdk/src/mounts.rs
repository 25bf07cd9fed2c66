//! Mounting through the host. Only the directory kubelet passed in this call (the pod volume
//! directory in `mount`/`unmount`, the device mount path in `mountdevice`/`unmountdevice`)
//! may be a target, never a mount point (mounts do not stack); the policy's `[mount]` table
//! says which sources, file system types and options are allowed.
//!
//! ```
//! use flex_sdk::mounts::{self, Mount};
//! # let host = flex_sdk::testing::Host::new();
//! # let target_dir = "/var/lib/kubelet/pods/u1/volumes/acme~scratch/v";
//!
//! if !mounts::is_mountpoint(target_dir)? {
//!     Mount::new("tmpfs", target_dir)
//!         .fs_type("tmpfs")
//!         .option("size=64m")
//!         .read_only(true)
//!         .mount()?;
//! }
//! # assert!(host.mounts.is_mounted(target_dir));
//! # Ok::<(), flex_sdk::Error>(())
//! ```

#[cfg(target_arch = "wasm32")]
use crate::bindings::flex::volume::mounts as host;
#[cfg(not(target_arch = "wasm32"))]
use crate::testing::fake::mounts as host;
use crate::{Result, failure};

/// A mount to perform; built with [`Mount::new`] or [`Mount::bind`] and the builder methods,
/// run with [`Mount::mount`].
#[derive(Clone, Debug)]
pub struct Mount(host::MountRequest);

impl Mount {
    /// A mount of `source` (a device, `tmpfs`, `server:/export`...) onto `target`; set the
    /// file system type with [`Mount::fs_type`].
    pub fn new(source: &str, target: &str) -> Self {
        Mount(host::MountRequest {
            source: source.into(),
            target: target.into(),
            fs_type: String::new(),
            options: Vec::new(),
            bind: false,
        })
    }
    /// A bind mount of `source` (a directory) onto `target`.
    pub fn bind(source: &str, target: &str) -> Self {
        let mut m = Mount::new(source, target);
        m.0.bind = true;
        m
    }
    /// The file system type (`tmpfs`, `ext4`, `nfs`...); ignored for bind mounts.
    pub fn fs_type(mut self, fs_type: &str) -> Self {
        self.0.fs_type = fs_type.into();
        self
    }
    /// One mount option: a flag such as `ro`, or a file system parameter such as
    /// `size=64m`. The host splits every option on commas and checks each piece against
    /// the policy, and always adds the options the policy requires (`nosuid,nodev` by
    /// default), so a driver never needs to pass those and can never turn them off.
    pub fn option(mut self, option: impl Into<String>) -> Self {
        self.0.options.push(option.into());
        self
    }
    /// Adds `ro` when `read_only`.
    pub fn read_only(self, read_only: bool) -> Self {
        if read_only { self.option("ro") } else { self }
    }
    /// Performs the mount; a refusal or a failed mount is a [`Failure`](crate::Error::Failure)
    /// with the host's reason.
    pub fn mount(self) -> Result<()> {
        host::mount(&self.0).map_err(failure)
    }
}

/// Changes the flags of a mount the call may target (`ro`, `nosuid`...).
pub fn remount(target: &str, options: &[&str]) -> Result<()> {
    let options: Vec<String> = options.iter().map(|o| o.to_string()).collect();
    host::remount(target, &options).map_err(failure)
}

/// Unmounts `target`, which the call must be allowed to target. Check
/// [`is_mountpoint`] first: unmounting what is not mounted is a failure, and kubelet calls
/// `unmount` also for directories that are not mounted.
pub fn unmount(target: &str) -> Result<()> {
    host::unmount(target).map_err(failure)
}

/// True if `path` is the root of a mount (bind mounts included).
pub fn is_mountpoint(path: &str) -> Result<bool> {
    host::is_mountpoint(path).map_err(failure)
}
