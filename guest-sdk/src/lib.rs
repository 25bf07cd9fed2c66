//! Write a Kubernetes FlexVolume driver for `flex` as a WebAssembly component.
//!
//! `flex` is the one native executable kubelet and kube-controller-manager exec for every
//! FlexVolume verb; it loads the vendor's component, calls the verb through the WIT contract
//! `flex:volume` (shipped in this crate's `wit/` directory) and prints the JSON reply kubelet
//! parses. Everything privileged a driver does is a host call checked against the node's
//! policy file.
//!
//! A driver is a type implementing [`Driver`], exported with [`export_driver!`]. Every verb
//! defaults to `Not supported`, except [`Driver::init`], which must report the driver's
//! [`Capabilities`]. Privileged work goes through the host, in the modules [`mounts`],
//! [`block`], [`exec`], [`config`] and [`log`]; HTTP goes through `wasi:http` (for example
//! with the `wstd` crate) and files through `std::fs` under `/state`. Block drivers get
//! [`filesystem::mount_device`] for `mountdevice` and [`pod`] for `mount`/`unmount` (see
//! [`pod`] for why a driver should bind into the pod itself). A driver never prints: kubelet
//! reads stdout and stderr together as the reply, so diagnostics go through [`log`].
//!
//! A driver that also creates and deletes its volumes for `flex provisioner` (dynamic
//! provisioning of PersistentVolumeClaims) implements [`Provisioner`] as well and is exported
//! with [`export_provisioning_driver!`] instead; its options reach the node verbs through the
//! PersistentVolume.
//!
//! ```
//! use flex_sdk::{Capabilities, Driver, Options, Result, mounts};
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
//!         mounts::Mount::new("tmpfs", &target_dir)
//!             .fs_type("tmpfs")
//!             .option("size=64m")
//!             .read_only(options.read_only)
//!             .mount()
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
//! # let host = flex_sdk::testing::Host::new();
//! # let dir = "/var/lib/kubelet/pods/u1/volumes/acme~scratch/v";
//! # Scratch::mount(dir.into(), Options::default()).unwrap();
//! # Scratch::mount(dir.into(), Options::default()).unwrap();
//! # assert!(host.mounts.is_mounted(dir));
//! # Scratch::unmount(dir.into()).unwrap();
//! # assert!(host.mounts.mounted().is_empty());
//! ```
//!
//! # Building
//!
//! The crate is a `cdylib` built for `wasm32-wasip2`:
//!
//! ```text
//! cargo build --release --target wasm32-wasip2
//! ```
//!
//! The `.wasm` in `target/wasm32-wasip2/release/` is the component `flex` loads. A release
//! profile with `opt-level = "s"`, `lto = true`, `strip = true`, `codegen-units = 1` and
//! `panic = "abort"` keeps a simple driver well under 100 KB (the README's tmpfs driver is
//! 73 KB); the crate's README has a complete `Cargo.toml`.
//!
//! # Testing a driver natively
//!
//! On every target but `wasm32` the host calls go to an in-process fake instead of the WIT
//! imports: [`testing::Host`]. A vendor unit-tests the verbs with plain `cargo test` on the
//! development machine, no root, no wasm, no cluster: script what the host answers (config
//! values, devices, images, program output, failures), call the verbs as ordinary functions
//! and look at the [`testing::Call`]s the driver made.
//!
//! ```
//! # use flex_sdk::{Capabilities, Driver, Options, Result, mounts};
//! # struct Scratch;
//! # impl Driver for Scratch {
//! #     fn init() -> Result<Capabilities> { Ok(Capabilities::default()) }
//! #     fn mount(target_dir: String, options: Options) -> Result<()> {
//! #         if mounts::is_mountpoint(&target_dir)? { return Ok(()); }
//! #         mounts::Mount::new("tmpfs", &target_dir).fs_type("tmpfs").option("size=64m")
//! #             .read_only(options.read_only).mount()
//! #     }
//! # }
//! use flex_sdk::testing::{Call, Host};
//!
//! let host = Host::new(); // the fake host for this thread (each test runs on its own)
//! let dir = "/var/lib/kubelet/pods/u1/volumes/acme~scratch/v";
//! Scratch::mount(dir.into(), Options::default().with_read_only(true)).unwrap();
//! assert_eq!(
//!     host.calls(),
//!     [
//!         Call::IsMountpoint { path: dir.into() },
//!         Call::Mount {
//!             source: "tmpfs".into(),
//!             target: dir.into(),
//!             fs_type: "tmpfs".into(),
//!             options: vec!["size=64m".into(), "ro".into()],
//!             bind: false,
//!         },
//!     ]
//! );
//!
//! // kubelet retries: a second mount finds the mount point and does nothing.
//! Scratch::mount(dir.into(), Options::default()).unwrap();
//! assert_eq!(host.calls().len(), 3);
//!
//! // A host refusal reaches kubelet as a failure.
//! host.mounts.remove(dir);
//! host.mounts.fail_next("denied: option size=64m is not granted");
//! assert!(Scratch::mount(dir.into(), Options::default()).is_err());
//! ```
//!
//! The fake checks no policy: whether the node's policy grants what a driver asks for is for
//! `flex policy check`, `flex inspect` and a run on a node to tell.
//!
//! # Which verb runs where
//!
//! With controller-managed attach/detach (the Kubernetes default), the verbs of one volume run
//! on two different machines, each in its own `flex` process with its own policy:
//!
//! | verb | runs in | on |
//! |---|---|---|
//! | `init` | kube-controller-manager and kubelet | control-plane node and every worker |
//! | `getvolumename` | kube-controller-manager and kubelet | control-plane node and every worker |
//! | `attach`, `isattached`, `detach` | kube-controller-manager (attach/detach controller) | control-plane node |
//! | `waitforattach`, `mountdevice`, `mount`, `unmount`, `unmountdevice`, `expandfs` | kubelet | the worker node running the pod |
//! | `expandvolume` | nobody | - |
//! | `provision`, `delete` | the external flex provisioner | its pod |
//! | [`Provisioner::describe`], [`Provisioner::provision`], [`Provisioner::delete`] | `flex provisioner` | its pod |
//!
//! So [`Driver::init`], [`Driver::get_volume_name`], [`Driver::attach`],
//! [`Driver::is_attached`] and [`Driver::detach`] must only talk to APIs (a cloud's, a storage
//! array's, over `wasi:http`): no loop devices, no local disks, no mounts; they run on a
//! machine that will never see the volume's device, and `node` names the worker. Node-local
//! work (creating or attaching a loop device, finding a local disk, waiting for a device to
//! appear) belongs in [`Driver::wait_for_attach`], [`Driver::mount_device`] and
//! [`Driver::unmount_device`], which run on the worker. kube-controller-manager never calls
//! `expandvolume` for a FlexVolume PV (its expand controller cannot see FlexVolume plugins):
//! growing a volume reaches a driver only as kubelet's [`Driver::expand_fs`], so a driver that
//! can grow its volumes does it there (and sets `requires_fs_resize`). Only with kubelet's
//! `--enable-controller-attach-detach=false` does kubelet itself run `attach` and `detach`.
//!
//! # Rules every verb follows
//!
//! - **Idempotent**: kubelet and the controller retry everything, also after a timeout or a
//!   crash half-way; "already done" is success.
//! - **`Not supported` is for ever**: kubelet caches it per verb for the driver's lifetime and
//!   then does its own default, so a verb answers it unconditionally, never for one volume.
//!   [`Error::NotSupported`] is what every default method of [`Driver`] returns; everything
//!   else is [`Error::Failure`] with a message for the events (see [`failure`]).

#![warn(missing_docs)]

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "driver",
        // `wit/` is a symlink to the repository's `wit/` (one source of truth); `cargo package`
        // follows it, so the published crate carries the files themselves.
        path: "wit",
        pub_export_macro: true,
        export_macro_name: "__export_flex_driver",
        default_bindings_module: "::flex_sdk::bindings",
        additional_derives: [PartialEq, Eq],
    });

    /// The `provisioning` export, generated apart from the `driver` world so that a component
    /// built with [`export_driver!`](crate::export_driver) exports `verbs` alone (its world
    /// is `driver`, exactly as before), and one built with
    /// [`export_provisioning_driver!`](crate::export_provisioning_driver) exports both (the
    /// world `provisioning-driver`). The shared `types` are the `driver` world's.
    pub mod provisioning {
        wit_bindgen::generate!({
            inline: "
                package flex:sdk-provisioning;
                world provisioning-exports {
                    export flex:volume/provisioning@0.1.0;
                }
            ",
            path: "wit",
            pub_export_macro: true,
            export_macro_name: "__export_flex_provisioning",
            default_bindings_module: "::flex_sdk::bindings::provisioning",
            additional_derives: [PartialEq, Eq],
            with: {
                "flex:volume/types@0.1.0": crate::bindings::flex::volume::types,
            },
        });
    }
}

pub use bindings::flex::volume::types::{Capabilities, Error, Options, Secret};
pub use bindings::provisioning::exports::flex::volume::provisioning::{
    AccessMode, ProvisionRequest, Provisioned, ProvisionerInfo,
};

mod driver;
mod types;

pub use driver::{Driver, Provisioner};
pub use types::option;

pub mod block;
pub mod config;
pub mod exec;
pub mod filesystem;
pub mod kubelet;
pub mod log;
pub mod mounts;
pub mod pod;
// Documented on every target, compiled into none of the wasm32 builds.
#[cfg(any(doc, not(target_arch = "wasm32")))]
pub mod testing;

/// The README's examples, compiled as doctests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

/// What every verb returns: a value, or [`Error::NotSupported`] / [`Error::Failure`].
pub type Result<T> = core::result::Result<T, Error>;

/// A failure with a message for kubelet's events and logs.
///
/// Every wrapper in this crate turns a host refusal into one, so `?` carries the host's words
/// to kubelet.
///
/// ```
/// use flex_sdk::{Error, failure};
///
/// assert_eq!(failure("no such volume"), Error::Failure("no such volume".into()));
/// ```
pub fn failure(message: impl Into<String>) -> Error {
    Error::Failure(message.into())
}

/// Bytes from a size option: plain bytes (`1048576`) or a Kubernetes quantity (`64Mi`, `1G`).
/// Zero and overflow are errors.
///
/// ```
/// use flex_sdk::parse_quantity;
///
/// assert_eq!(parse_quantity("64Mi"), Ok(64 << 20));
/// assert_eq!(parse_quantity("2G"), Ok(2_000_000_000));
/// assert!(parse_quantity("1.5Gi").is_err());
/// ```
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

    /// The crate's `wit/` is the repository's: a symlink in the checkout, the files themselves
    /// in the packaged crate. Either way it must hold the world the bindings are built from.
    #[test]
    fn wit_travels_with_the_crate() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("wit");
        let wit = std::fs::read_to_string(dir.join("flex.wit")).unwrap();
        assert!(wit.contains("package flex:volume@"), "{}", dir.display());
        assert!(wit.contains("world driver {"), "{}", dir.display());
        let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit/flex.wit");
        if let Ok(source) = std::fs::read_to_string(repo) {
            assert_eq!(
                wit, source,
                "guest-sdk/wit differs from the repository's wit/"
            );
        }
    }
}
