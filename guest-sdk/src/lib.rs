//! Write a Kubernetes FlexVolume driver for `flex` as a WebAssembly component.
//!
//! A driver is a type implementing [`Driver`]. Every verb defaults to `Not supported`, except
//! [`Driver::init`], which must report the driver's capabilities. Privileged work (mounting and
//! so on) goes through the host, which checks it against the node's policy, in the modules
//! [`mounts`], [`block`], [`exec`], [`config`] and [`log`]; HTTP goes through `wasi:http`
//! (for example with the `wstd` crate) and files through `std::fs` under `/state`. Block
//! drivers get [`filesystem::mount_device`] for `mountdevice` and [`pod`] for `mount`/`unmount`
//! (see [`pod`] for why a driver should bind into the pod itself). A driver never prints:
//! kubelet reads stdout and stderr together as the reply, so diagnostics go through [`log`].
//!
//! ```ignore
//! use flex_sdk::{mounts, Capabilities, Driver, Options, Result};
//!
//! struct Scratch;
//!
//! impl Driver for Scratch {
//!     fn init() -> Result<Capabilities> {
//!         Ok(Capabilities { attach: false, ..Capabilities::default() })
//!     }
//!     fn mount(target_dir: String, options: Options) -> Result<()> {
//!         if mounts::is_mountpoint(&target_dir)? {
//!             return Ok(()); // kubelet retries: already done is success
//!         }
//!         mounts::Mount::new("tmpfs", &target_dir).fs_type("tmpfs").read_only(options.read_only).mount()
//!     }
//!     fn unmount(target_dir: String) -> Result<()> {
//!         if mounts::is_mountpoint(&target_dir)? {
//!             mounts::unmount(&target_dir)?;
//!         }
//!         Ok(())
//!     }
//! }
//!
//! flex_sdk::export_driver!(Scratch);
//! ```
//! Build with `cargo build --release --target wasm32-wasip2`; the `.wasm` in
//! `target/wasm32-wasip2/release/` is the component `flex` loads.

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "driver",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "__export_flex_driver",
        default_bindings_module: "::flex_sdk::bindings",
    });
}

pub use bindings::flex::volume::types::{Capabilities, Error, Options, Secret};

/// What every verb returns.
pub type Result<T> = core::result::Result<T, Error>;

/// A failure with a message for kubelet's events and logs.
pub fn failure(message: impl Into<String>) -> Error {
    Error::Failure(message.into())
}

impl Default for Capabilities {
    /// kubelet's own defaults, except `attach`, which defaults to false here: a driver that
    /// does not implement attach must say so, or pods wait for an attach that never comes.
    fn default() -> Self {
        Capabilities {
            attach: false,
            selinux_relabel: true,
            supports_metrics: false,
            fs_group: true,
            requires_fs_resize: false,
        }
    }
}

impl Options {
    /// A driver-specific option (the volume's `options`, or a StorageClass parameter).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.extra
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// A secret from the volume's `secretRef` (only `mount` receives secrets).
    pub fn secret(&self, name: &str) -> Option<&[u8]> {
        self.secrets
            .iter()
            .find(|s| s.name == name)
            .map(|s| s.value.as_slice())
    }
}

/// Bytes from a size option: plain bytes (`1048576`) or a Kubernetes quantity (`64Mi`, `1G`).
/// Zero and overflow are errors.
pub fn parse_quantity(text: &str) -> Result<u64> {
    let invalid = || {
        failure(format!(
            "invalid size {text:?}: expected bytes or a quantity such as 512Mi or 1Gi"
        ))
    };
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, suffix) = text.split_at(split);
    let number: u64 = digits.parse().map_err(|_| invalid())?;
    let unit: u64 = match suffix {
        "" => 1,
        "k" => 1000,
        "M" => 1000u64.pow(2),
        "G" => 1000u64.pow(3),
        "T" => 1000u64.pow(4),
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        _ => return Err(invalid()),
    };
    number
        .checked_mul(unit)
        .filter(|n| *n > 0)
        .ok_or_else(invalid)
}

/// The FlexVolume verbs. Each defaults to `Not supported`, which kubelet caches per verb for
/// the driver's lifetime and then does its own default (see the FlexVolume protocol).
/// Every verb must be idempotent: kubelet retries everything.
#[allow(unused_variables)]
pub trait Driver {
    fn init() -> Result<Capabilities>;
    fn get_volume_name(options: Options) -> Result<String> {
        Err(Error::NotSupported)
    }
    fn attach(options: Options, node: String) -> Result<String> {
        Err(Error::NotSupported)
    }
    fn detach(volume_name: String, node: String) -> Result<()> {
        Err(Error::NotSupported)
    }
    fn wait_for_attach(device: String, options: Options) -> Result<String> {
        Err(Error::NotSupported)
    }
    fn is_attached(options: Options, node: String) -> Result<bool> {
        Err(Error::NotSupported)
    }
    fn mount_device(device_mount_path: String, device: String, options: Options) -> Result<()> {
        Err(Error::NotSupported)
    }
    fn unmount_device(device_mount_path: String) -> Result<()> {
        Err(Error::NotSupported)
    }
    fn mount(target_dir: String, options: Options) -> Result<()> {
        Err(Error::NotSupported)
    }
    fn unmount(target_dir: String) -> Result<()> {
        Err(Error::NotSupported)
    }
    fn expand_volume(
        options: Options,
        device_mount_path: String,
        new_size: u64,
        old_size: u64,
    ) -> Result<u64> {
        Err(Error::NotSupported)
    }
    fn expand_fs(
        options: Options,
        device: String,
        device_mount_path: String,
        new_size: u64,
        old_size: u64,
    ) -> Result<()> {
        Err(Error::NotSupported)
    }
    fn provision(options: Options) -> Result<()> {
        Err(Error::NotSupported)
    }
    fn delete(options: Options) -> Result<()> {
        Err(Error::NotSupported)
    }
}

/// Exports a [`Driver`] implementation as the component's `flex:volume/verbs`.
#[macro_export]
macro_rules! export_driver {
    ($driver:ty) => {
        const _: () = {
            use $crate::bindings::exports::flex::volume::verbs::Guest;
            use $crate::{Capabilities, Driver, Options, Result};

            struct Exports;

            impl Guest for Exports {
                fn init() -> Result<Capabilities> {
                    <$driver as Driver>::init()
                }
                fn get_volume_name(o: Options) -> Result<String> {
                    <$driver as Driver>::get_volume_name(o)
                }
                fn attach(o: Options, node: String) -> Result<String> {
                    <$driver as Driver>::attach(o, node)
                }
                fn detach(volume: String, node: String) -> Result<()> {
                    <$driver as Driver>::detach(volume, node)
                }
                fn wait_for_attach(device: String, o: Options) -> Result<String> {
                    <$driver as Driver>::wait_for_attach(device, o)
                }
                fn is_attached(o: Options, node: String) -> Result<bool> {
                    <$driver as Driver>::is_attached(o, node)
                }
                fn mount_device(path: String, device: String, o: Options) -> Result<()> {
                    <$driver as Driver>::mount_device(path, device, o)
                }
                fn unmount_device(path: String) -> Result<()> {
                    <$driver as Driver>::unmount_device(path)
                }
                fn mount(dir: String, o: Options) -> Result<()> {
                    <$driver as Driver>::mount(dir, o)
                }
                fn unmount(dir: String) -> Result<()> {
                    <$driver as Driver>::unmount(dir)
                }
                fn expand_volume(o: Options, path: String, new: u64, old: u64) -> Result<u64> {
                    <$driver as Driver>::expand_volume(o, path, new, old)
                }
                fn expand_fs(
                    o: Options,
                    device: String,
                    path: String,
                    new: u64,
                    old: u64,
                ) -> Result<()> {
                    <$driver as Driver>::expand_fs(o, device, path, new, old)
                }
                fn provision(o: Options) -> Result<()> {
                    <$driver as Driver>::provision(o)
                }
                fn delete(o: Options) -> Result<()> {
                    <$driver as Driver>::delete(o)
                }
            }

            $crate::bindings::__export_flex_driver!(Exports);
        };
    };
}

/// Diagnostics, written to the host's log file (never to kubelet).
pub mod log {
    use crate::bindings::flex::volume::log::{Level, log};

    pub fn debug(message: &str) {
        log(Level::Debug, message)
    }
    pub fn info(message: &str) {
        log(Level::Info, message)
    }
    pub fn warn(message: &str) {
        log(Level::Warn, message)
    }
    pub fn error(message: &str) {
        log(Level::Error, message)
    }
}

/// Mounting through the host. Only the directory kubelet passed in this call may be a target.
pub mod mounts {
    use crate::bindings::flex::volume::mounts as host;
    use crate::{Result, failure};

    /// A mount to perform; built with [`Mount::new`] and friends, run with [`Mount::mount`].
    pub struct Mount(host::MountRequest);

    impl Mount {
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
        pub fn read_only(self, read_only: bool) -> Self {
            if read_only { self.option("ro") } else { self }
        }
        pub fn mount(self) -> Result<()> {
            host::mount(&self.0).map_err(failure)
        }
    }

    /// Changes the flags of a mount the call may target (`ro`, `nosuid`...).
    pub fn remount(target: &str, options: &[&str]) -> Result<()> {
        let options: Vec<String> = options.iter().map(|o| o.to_string()).collect();
        host::remount(target, &options).map_err(failure)
    }

    pub fn unmount(target: &str) -> Result<()> {
        host::unmount(target).map_err(failure)
    }

    pub fn is_mountpoint(path: &str) -> Result<bool> {
        host::is_mountpoint(path).map_err(failure)
    }
}

/// Block devices and loop-backed images, as the policy's `[block]` allows.
pub mod block {
    use crate::bindings::flex::volume::block as host;
    use crate::{Result, failure};

    /// The file system on a device (`ext4`, `xfs`...); `None` when the device is blank.
    pub fn probe_fs(device: &str) -> Result<Option<String>> {
        host::probe_fs(device).map_err(failure)
    }
    /// Formats a blank device; the host refuses any device that carries a signature.
    pub fn mkfs(device: &str, fs_type: &str) -> Result<()> {
        host::mkfs(device, fs_type).map_err(failure)
    }
    /// Grows the file system on `device`, mounted at `mount_path`, to fill the device.
    pub fn resize_fs(device: &str, mount_path: &str) -> Result<()> {
        host::resize_fs(device, mount_path).map_err(failure)
    }
    pub fn device_size(device: &str) -> Result<u64> {
        host::device_size(device).map_err(failure)
    }
    /// Waits up to `timeout_ms` for `device` to appear; false if it did not.
    pub fn wait_for_device(device: &str, timeout_ms: u32) -> Result<bool> {
        host::wait_for_device(device, timeout_ms).map_err(failure)
    }
    /// Creates a sparse image (an existing one is kept); returns its actual size.
    pub fn create_image(name: &str, size: u64) -> Result<u64> {
        host::create_image(name, size).map_err(failure)
    }
    pub fn image_size(name: &str) -> Result<Option<u64>> {
        host::image_size(name).map_err(failure)
    }
    /// Grows an image and its loop device; never shrinks.
    pub fn grow_image(name: &str, size: u64) -> Result<()> {
        host::grow_image(name, size).map_err(failure)
    }
    /// Deletes a detached image; a missing one is success.
    pub fn delete_image(name: &str) -> Result<()> {
        host::delete_image(name).map_err(failure)
    }
    /// Attaches an image to a loop device (the same one if already attached).
    pub fn attach_image(name: &str) -> Result<String> {
        host::attach_image(name).map_err(failure)
    }
    pub fn image_device(name: &str) -> Result<Option<String>> {
        host::image_device(name).map_err(failure)
    }
    /// Detaches an image; one that is not attached is success.
    pub fn detach_image(name: &str) -> Result<()> {
        host::detach_image(name).map_err(failure)
    }
}

/// Host programs the policy's `[[exec.programs]]` grants, run without a shell: the exact
/// path, argument vectors the grant spells (per-position patterns; flags only where a pattern
/// names them) and the environment variable names it lists. Everything the program starts is
/// killed with the call.
pub mod exec {
    use crate::bindings::flex::volume::exec as host;
    pub use crate::bindings::flex::volume::exec::Output;
    use crate::{Result, failure};

    /// Runs `program` with `args` and `env` (plus the host's fixed `PATH`) as its environment;
    /// anything the policy does not grant is a `Failure` before the program starts.
    pub fn run(program: &str, args: &[&str], env: &[(&str, &str)]) -> Result<Output> {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        host::run(program, &args, &env).map_err(failure)
    }
}

/// Non-secret settings from the policy's `[config]` table.
pub mod config {
    use crate::bindings::flex::volume::config as host;

    pub fn get(key: &str) -> Option<String> {
        host::get(key)
    }
    pub fn get_all() -> Vec<(String, String)> {
        host::get_all()
    }
}

/// Mounting an attached block device at kubelet's device mount path (`mountdevice`), shared by
/// block-volume drivers.
pub mod filesystem {
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
}

pub mod kubelet;

/// The pod-side half of an attachable volume: `mount` and `unmount` for a driver whose
/// `mountdevice` mounted the device at kubelet's device mount path.
///
/// Why a driver should do this itself rather than answer `mount` with `Not supported`:
/// kubelet's own fallback bind mount carries neither `nosuid` nor `nodev`, so a device mount
/// hardened with them would reach the pod without them. The host allows exactly this bind
/// (the volume's own device mount path onto the pod directory of this call) without any
/// `[mount]` grant, and applies the policy's required options to it.
pub mod pod {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_mount_paths() {
        assert_eq!(
            kubelet::device_mount_path("/k/pods/u/volumes/a~b/v").as_deref(),
            Some("/k/plugins/kubernetes.io/flexvolume/a/b/mounts/v")
        );
        for bad in [
            "/k/pods/u/volumes/ab/v",
            "/pods/u/volumes",
            "/k/../pods/u/volumes/a~b/v",
        ] {
            assert_eq!(kubelet::device_mount_path(bad), None, "{bad}");
        }
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("1048576").unwrap(), 1 << 20);
        assert_eq!(parse_quantity("64Mi").unwrap(), 64 << 20);
        assert_eq!(parse_quantity("2G").unwrap(), 2_000_000_000);
        for bad in [
            "",
            "0",
            "-1",
            "1.5Gi",
            "10X",
            "Mi",
            "99999999999999999999Ti",
        ] {
            assert!(parse_quantity(bad).is_err(), "{bad} accepted");
        }
    }
}
