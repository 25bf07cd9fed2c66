use crate::{Capabilities, Error, Options, ProvisionRequest, Provisioned, ProvisionerInfo, Result};

/// The FlexVolume verbs, one associated function each.
///
/// Each defaults to [`Error::NotSupported`], which kubelet caches per verb for the driver's
/// lifetime and then does its own default (noted on each verb). Every verb must be
/// idempotent: kubelet retries everything. The crate docs say [which verb runs
/// where](crate#which-verb-runs-where): `init`, `getvolumename`, `attach`, `isattached` and
/// `detach` run in kube-controller-manager on a control-plane node, the rest in kubelet on
/// the worker.
///
/// The verbs are plain functions of their arguments, so a test calls them directly (with
/// [`testing::Host`](crate::testing::Host) answering the host calls on a native target):
///
/// ```
/// use flex_sdk::{Capabilities, Driver, Error, Options, Result};
///
/// struct Echo;
///
/// impl Driver for Echo {
///     fn init() -> Result<Capabilities> {
///         Ok(Capabilities::default())
///     }
/// }
///
/// assert_eq!(Echo::init().unwrap().attach, false);
/// assert_eq!(Echo::mount("/pod/dir".into(), Options::default()), Err(Error::NotSupported));
/// ```
#[allow(unused_variables)]
pub trait Driver {
    /// `init`, run by kubelet and kube-controller-manager whenever they (re)load the driver:
    /// the driver's capabilities. It is the one verb without a default; `Not supported` or a
    /// failure here means kubelet never registers the driver. Do nothing else here: no host
    /// calls, no network.
    fn init() -> Result<Capabilities>;

    /// `getvolumename <options>`, run by kube-controller-manager and kubelet. kubelet ignores
    /// the answer and uses the PV (or inline volume) name whatever the driver says, so the
    /// default `Not supported` is the right answer for nearly every driver.
    fn get_volume_name(options: Options) -> Result<String> {
        Err(Error::NotSupported)
    }

    /// `attach <options> <node>`, run by kube-controller-manager on a control-plane node:
    /// make the volume available to the worker `node` through an API (never locally: this is
    /// not the node the volume is for) and return the device path the worker will see, or
    /// `""`. `Not supported` is attach success with device `""`. No secrets are passed.
    fn attach(options: Options, node: String) -> Result<String> {
        Err(Error::NotSupported)
    }

    /// `detach <volume> <node>`, run by kube-controller-manager: undo [`Driver::attach`].
    /// `volume_name` is the PV name (or inline volume name), not the device. A volume that is
    /// not attached is success. `Not supported` is success.
    fn detach(volume_name: String, node: String) -> Result<()> {
        Err(Error::NotSupported)
    }

    /// `waitforattach <device> <options>`, run by kubelet on the worker (10 minute timeout):
    /// wait until the attached device exists on this node and return its path, which kubelet
    /// then passes to `mountdevice` and `expandfs`. `device` is what `attach` returned (it may
    /// be empty). Node-local setup (a loop device, finding a local disk) belongs here or in
    /// `mountdevice`. `Not supported` returns `device` unchanged.
    fn wait_for_attach(device: String, options: Options) -> Result<String> {
        Err(Error::NotSupported)
    }

    /// `isattached <options> <node>`, run by kube-controller-manager periodically (about once
    /// a minute per volume): whether the volume is still attached to `node`, asked through the
    /// same API as `attach`. `Not supported` means "no information" (volumes stay attached).
    fn is_attached(options: Options, node: String) -> Result<bool> {
        Err(Error::NotSupported)
    }

    /// `mountdevice <device mount path> <device> <options>`, run by kubelet on the worker, once
    /// per volume and node: mount the device at kubelet's device mount path (formatting a
    /// blank device first). See [`filesystem::mount_device`](crate::filesystem::mount_device).
    /// kubelet skips the call when the path is already a mount point. `Not supported` makes
    /// kubelet mount `device` itself (no `nosuid`/`nodev`) or, for `""`, do nothing.
    fn mount_device(device_mount_path: String, device: String, options: Options) -> Result<()> {
        Err(Error::NotSupported)
    }

    /// `unmountdevice <device mount path>`, run by kubelet on the worker after the last pod
    /// using the volume there is gone: undo [`Driver::mount_device`] (and any node-local
    /// setup). Not mounted is success. `Not supported` makes kubelet unmount the path itself.
    fn unmount_device(device_mount_path: String) -> Result<()> {
        Err(Error::NotSupported)
    }

    /// `mount <pod volume dir> <options>`, run by kubelet on the worker for each pod: mount
    /// the volume onto `target_dir`. The only verb that receives pod information and secrets
    /// ([`Options::secret`]). Drivers that do not attach must implement it. `Not supported`
    /// makes kubelet bind the device mount path onto `target_dir` without `nosuid`/`nodev`
    /// (see [`pod`](crate::pod) for doing that bind properly).
    fn mount(target_dir: String, options: Options) -> Result<()> {
        Err(Error::NotSupported)
    }

    /// `unmount <pod volume dir>`, run by kubelet on the worker: undo [`Driver::mount`]. Called
    /// even when `target_dir` is not mounted (that is success); kubelet removes the directory
    /// afterwards. `Not supported` makes kubelet unmount it itself.
    fn unmount(target_dir: String) -> Result<()> {
        Err(Error::NotSupported)
    }

    /// `expandvolume <options> <device mount path> <new> <old>`: never called for a
    /// FlexVolume PV (kube-controller-manager's expand controller cannot see FlexVolume
    /// plugins). Grow volumes in [`Driver::expand_fs`] instead; this verb exists so the
    /// protocol is complete.
    fn expand_volume(
        options: Options,
        device_mount_path: String,
        new_size: u64,
        old_size: u64,
    ) -> Result<u64> {
        Err(Error::NotSupported)
    }

    /// `expandfs <options> <device> <device mount path> <new> <old>`, run by kubelet on the
    /// worker when the PV's capacity is larger than the claim's (and `requires_fs_resize` is
    /// set): grow the volume to `new_size` bytes if the driver can, then its mounted file
    /// system, online. `Not supported` makes kubelet run its own resizer on `device`.
    fn expand_fs(
        options: Options,
        device: String,
        device_mount_path: String,
        new_size: u64,
        old_size: u64,
    ) -> Result<()> {
        Err(Error::NotSupported)
    }

    /// `provision <options>`, run by the external flex provisioner in its pod (not on a node):
    /// create the volume named by [`Options::pv_or_volume_name`], sized by the `requestBytes`
    /// option, with the StorageClass parameters in [`Options::extra`]. A volume that already
    /// exists (a retry) is success. `flex provisioner` calls [`Provisioner::provision`]
    /// instead, which can hand the PV its capacity and options.
    fn provision(options: Options) -> Result<()> {
        Err(Error::NotSupported)
    }

    /// `delete <options>`, run by the external flex provisioner: delete the volume named by
    /// [`Options::pv_or_volume_name`]. A missing volume is success. `flex provisioner` calls
    /// [`Provisioner::delete`] instead.
    fn delete(options: Options) -> Result<()> {
        Err(Error::NotSupported)
    }
}

/// Exports a [`Driver`] implementation as the component's `flex:volume/verbs`.
///
/// Invoke it once, at the root of the driver's `cdylib` crate. On a native target it still
/// compiles (the exports are ordinary functions nobody calls), so the same crate unit-tests
/// natively.
///
/// ```
/// use flex_sdk::{Capabilities, Driver, Result};
///
/// struct Minimal;
///
/// impl Driver for Minimal {
///     fn init() -> Result<Capabilities> {
///         Ok(Capabilities::default())
///     }
/// }
///
/// flex_sdk::export_driver!(Minimal);
/// ```
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

/// Dynamic provisioning for `flex provisioner`: the WIT interface `flex:volume/provisioning`,
/// exported beside the verbs with
/// [`export_provisioning_driver!`](crate::export_provisioning_driver).
///
/// The controller watches PersistentVolumeClaims whose StorageClass names this driver as its
/// `provisioner`. It calls [`Provisioner::describe`] first and refuses, with an event and no
/// call, a claim asking for an access mode the driver does not list or a StorageClass with a
/// parameter it does not list. Then [`Provisioner::provision`] creates the backend volume; the
/// PersistentVolume it creates is named [`ProvisionRequest::name`] (`pvc-<claim uid>`), gets
/// [`Provisioned::capacity_bytes`] as its capacity and [`Provisioned::options`] as its
/// `flexVolume.options`, which every node verb then receives in [`Options::extra`] (beside
/// `kubernetes.io/pvOrVolumeName` = the PV name). When the PV is released with reclaim policy
/// `Delete`, [`Provisioner::delete`] gets the PV name and those options back.
///
/// The calls run in the controller's pod under the driver's policy, like every verb, and are
/// retried after a failure, a crash or a restart with the same request, so both must be
/// idempotent: "already done" is success. Validate everything before creating anything.
///
/// The functions share their names with [`Driver::provision`] and [`Driver::delete`] (the
/// protocol's older verbs), so call them as `<MyDriver as Provisioner>::provision(..)`.
///
/// ```
/// use flex_sdk::{
///     AccessMode, Capabilities, Driver, ProvisionRequest, Provisioned, Provisioner,
///     ProvisionerInfo, Result, block, failure,
/// };
///
/// struct Images;
///
/// impl Driver for Images {
///     fn init() -> Result<Capabilities> {
///         Ok(Capabilities { attach: true, ..Capabilities::default() })
///     }
/// }
///
/// impl Provisioner for Images {
///     fn describe() -> ProvisionerInfo {
///         ProvisionerInfo::new([AccessMode::ReadWriteOnce], ["fsType"])
///     }
///     fn provision(request: ProvisionRequest) -> Result<Provisioned> {
///         if let Some(fs) = request.fs_type.as_deref().filter(|fs| *fs != "ext4") {
///             return Err(failure(format!("fsType {fs} is not supported")));
///         }
///         let size = request.rounded_size(1 << 20)?; // whole MiB, within the claim's limit
///         let actual = block::create_image(&request.name, size)?; // a retry keeps it
///         Ok(Provisioned::new(actual).with_option("image", &request.name))
///     }
///     fn delete(name: String, _options: Vec<(String, String)>) -> Result<()> {
///         block::delete_image(&name) // a missing image is success
///     }
/// }
///
/// flex_sdk::export_provisioning_driver!(Images);
///
/// let host = flex_sdk::testing::Host::new();
/// let request = ProvisionRequest::new("pvc-1", 1_000_000);
/// let provisioned = <Images as Provisioner>::provision(request.clone()).unwrap();
/// assert_eq!(provisioned.capacity_bytes, 1 << 20);
/// assert_eq!(provisioned.option("image"), Some("pvc-1"));
/// assert_eq!(<Images as Provisioner>::provision(request).unwrap(), provisioned);
/// <Images as Provisioner>::delete("pvc-1".into(), provisioned.options).unwrap();
/// assert!(host.block.image("pvc-1").is_none());
/// ```
pub trait Provisioner: Driver {
    /// What the driver provisions: the access modes it supports and the StorageClass
    /// parameters it understands. Answer from constants: no host calls.
    fn describe() -> ProvisionerInfo;

    /// Creates the backend volume [`ProvisionRequest::name`] of at least
    /// [`ProvisionRequest::requested_bytes`] and never more than
    /// [`ProvisionRequest::limit_bytes`] (see [`ProvisionRequest::rounded_size`]), or returns
    /// the one that already exists under that name (a retry): its actual capacity, and the
    /// options the node verbs need to find it (a backend volume ID, the file system type...).
    /// Check every parameter before creating anything: a refused request must leave nothing
    /// behind.
    fn provision(request: ProvisionRequest) -> Result<Provisioned>;

    /// Deletes the backend volume of the PersistentVolume `name`, with the options
    /// [`Provisioner::provision`] returned for it. A volume that no longer exists is success;
    /// one still in use is a failure (the controller retries later).
    fn delete(name: String, options: Vec<(String, String)>) -> Result<()>;
}

/// Exports a [`Driver`] that is also a [`Provisioner`]: the component's `flex:volume/verbs`
/// and `flex:volume/provisioning` (the world `provisioning-driver`), for kubelet and
/// kube-controller-manager and for `flex provisioner`.
///
/// Use it instead of [`export_driver!`], once, at the root of the driver's `cdylib` crate.
///
/// ```
/// use flex_sdk::{
///     AccessMode, Capabilities, Driver, ProvisionRequest, Provisioned, Provisioner,
///     ProvisionerInfo, Result,
/// };
///
/// struct Static;
///
/// impl Driver for Static {
///     fn init() -> Result<Capabilities> {
///         Ok(Capabilities::default())
///     }
/// }
///
/// impl Provisioner for Static {
///     fn describe() -> ProvisionerInfo {
///         ProvisionerInfo::new([AccessMode::ReadWriteMany], [] as [&str; 0])
///     }
///     fn provision(request: ProvisionRequest) -> Result<Provisioned> {
///         Ok(Provisioned::new(request.requested_bytes))
///     }
///     fn delete(_name: String, _options: Vec<(String, String)>) -> Result<()> {
///         Ok(())
///     }
/// }
///
/// flex_sdk::export_provisioning_driver!(Static);
/// ```
#[macro_export]
macro_rules! export_provisioning_driver {
    ($driver:ty) => {
        $crate::export_driver!($driver);

        const _: () = {
            use $crate::bindings::provisioning::exports::flex::volume::provisioning::Guest;
            use $crate::{ProvisionRequest, Provisioned, Provisioner, ProvisionerInfo, Result};

            struct Exports;

            impl Guest for Exports {
                fn describe() -> ProvisionerInfo {
                    <$driver as Provisioner>::describe()
                }
                fn provision(request: ProvisionRequest) -> Result<Provisioned> {
                    <$driver as Provisioner>::provision(request)
                }
                fn delete(name: String, options: Vec<(String, String)>) -> Result<()> {
                    <$driver as Provisioner>::delete(name, options)
                }
            }

            $crate::bindings::provisioning::__export_flex_provisioning!(Exports);
        };
    };
}
