//! `flex/loop`: block volumes on loop devices, with the whole attach lifecycle, online
//! expansion and provisioning. A volume is a sparse image file named after the PV (or inline
//! volume) in the policy's image directory; the worker node binds it to a loop device.
//!
//! # Which verb runs where
//!
//! With controller-managed attach/detach (the Kubernetes default) `attach`, `isattached` and
//! `detach` run in kube-controller-manager on a control-plane node, which never sees the
//! volume's loop device (and whose policy may grant nothing). So they make no host call:
//! - `attach` only checks the options' shape (a volume name that can name an image, fsType
//!   ext4, xfs or none, a well-formed size) and returns the placeholder `loop:<volume>`.
//!   The controller stores it in the node's `volumesAttached`; kubelet hands it to
//!   `waitforattach`, which ignores it, and from then on holds the device `waitforattach`
//!   returned. kubelet takes `""` as well (only block-mode volumes, which FlexVolume lacks,
//!   refuse an empty path after `waitforattach`), and where the placeholder survives (volumes
//!   reconstructed after a kubelet restart) its "device still open" check after
//!   `unmountdevice` skips a path that does not exist, as it does `""`. `loop:<volume>` says
//!   what it is in the node status and kubelet's log.
//! - `isattached` is always true and `detach` always success: the attachment is logical.
//!
//! Everything node-local happens in kubelet's verbs, on the worker:
//! - `waitforattach`: creates the image of an inline volume (one with a `size` option and no
//!   image yet), then attaches the image to a loop device and returns its path. A repeated or
//!   concurrent call returns the same device (the host attaches one image once). The device
//!   argument is ignored: it is the placeholder, `""`, or after an `unmountdevice` a stale
//!   `/dev/loopN` that may belong to another volume by now.
//! - `mountdevice`: mount at kubelet's device mount path; format first only when the device is
//!   blank. The host's device lock, taken by the first `probe-fs`, is held for the rest of the
//!   call, so concurrent or retried calls (including after `flex` was killed during mkfs)
//!   re-check the mount point under the lock and never format or mount twice. A device that
//!   holds a different file system than `fsType` asks for is never reformatted: with no
//!   `fsType` it is mounted as it is, with an explicit one the call fails. It does not attach
//!   a detached image itself: kubelet records the device `waitforattach` returned (for
//!   `expandfs` and its checks after `unmountdevice`), so a device attached here could differ
//!   from it; failing makes kubelet retry `waitforattach` and `mountdevice` together.
//! - `unmountdevice <device mount path>`: the volume name is the path's last component. Unmount
//!   if mounted, detach the loop device, and delete the image if it is an inline volume's.
//! - `expandfs`: grow the image and its loop device, then the mounted file system, online.
//! - `mount` / `unmount`: bind the device mount path onto the pod directory with
//!   `nosuid,nodev` (and `ro` for a read-only volume), and undo it. kubelet's own fallback
//!   bind (when a driver answers `Not supported`) carries neither flag, so the hardening of the
//!   device mount would not reach the pod. The host allows exactly this bind without a grant.
//!
//! `provision` / `delete` (external flex provisioner): create the image with the requested
//! size (`requestBytes`, else `requestMiB` / `requestGiB`, else a `size` parameter); delete it
//! (a missing image is success, an attached one is refused by the host). `getvolumename` is
//! `Not supported`: kubelet ignores its answer and uses the PV name, which is what `detach`
//! receives.
//!
//! # Dynamic provisioning (`flex provisioner`)
//!
//! The driver also exports `flex:volume/provisioning`:
//! - `describe`: access mode `ReadWriteOnce` only (a loop device is one node's), StorageClass
//!   parameter `fsType` (`ext4` or `xfs`; without it `mountdevice` formats ext4).
//! - `provision`: checks the name, the access modes and the parameters before anything else,
//!   then creates the image `pvc-<claim uid>` (the PV's name) of the claim's request rounded
//!   up to whole MiB, refused when that exceeds the claim's limit. An image that already exists
//!   (a retry) is kept as it is. The PV's capacity is the image's actual size; its options
//!   record `image=<name>` and `fsType` when the StorageClass set one.
//! - `delete`: the same as the verb `delete` (finishes an unfinished teardown, deletes the
//!   image, refused by the host while it is attached; a missing image is success).
//!
//! The node verbs receive those options with `kubernetes.io/pvOrVolumeName` = the PV name. The
//! image is always named by the volume name: an `image` option must equal it (anything else
//! fails, so no option can point a volume at another volume's image), and an `fsType` option
//! is the file system to format when kubelet's `kubernetes.io/fsType` is empty (both set and
//! different fails).
//!
//! # Lifetimes
//!
//! A provisioned PV's image lives from `provision` to `delete`; nothing else deletes it.
//! An inline volume's image (created by `waitforattach` from a `size` option) lives until the
//! `unmountdevice` after its last pod on the node: kubelet unmounts a device only when no pod
//! uses it any more. Inline volumes of the same name share one image on a node (kubelet gives
//! them one device mount path too). A PV that was never provisioned but carries a `size`
//! option is treated as inline: scratch space, deleted after its last user.
//!
//! The driver's `[state]` directory (`/state`) records this, crash-safe at every step:
//! - `inline/<volume>`: written before `waitforattach` creates the image (a crash in between
//!   leaves a marker without an image, never an inline image without a marker), removed only
//!   after the image is gone (by `unmountdevice`, or `delete`). `provision` removes a stale
//!   one, so a provisioned image is never taken for an inline one.
//! - `teardown/<volume>`: written by `unmountdevice` before it unmounts, removed when the loop
//!   device is detached (and an inline image deleted). kubelet calls `unmountdevice` only
//!   while the path is mounted, so a call killed after its unmount is never retried; the
//!   record is what finishes it: in the volume's next `waitforattach` (its last user is gone,
//!   so an inline volume starts afresh) or `delete`, or in any later `waitforattach` or
//!   `unmountdevice` of the driver on the node (the host refuses to detach a mounted device,
//!   so finishing a teardown never takes a device from a pod).
//!
//! Without a `[state]` grant provisioned PVs work and inline volumes are refused.

use flex_sdk::{
    AccessMode, Capabilities, Driver, Options, ProvisionRequest, Provisioned, Provisioner,
    ProvisionerInfo, Result, block, failure, log, mounts,
};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

const DEFAULT_FS: &str = "ext4";
const FILE_SYSTEMS: [&str; 2] = ["ext4", "xfs"];
/// The longest image name the host accepts.
const MAX_NAME: usize = 128;
/// Unfinished teardowns of other volumes finished per call, at most.
const SWEEP_PER_CALL: usize = 8;
/// Images are allocated in whole MiB.
const MIB: u64 = 1 << 20;
/// The option `provision` records: the image's name (always the volume name).
const IMAGE_OPTION: &str = "image";
/// The StorageClass parameter, and the option `provision` records, for the file system.
const FS_OPTION: &str = "fsType";

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
        // Persistent from now on, whatever a stale marker says.
        State::Inline.remove(name)?;
        log::info(&format!("provisioned {name}: {actual} bytes"));
        Ok(())
    }

    fn delete(options: Options) -> Result<()> {
        delete_volume(volume_name(&options)?)
    }

    /// kube-controller-manager: no host call (see the module docs).
    fn attach(options: Options, _node: String) -> Result<String> {
        let name = volume_name(&options)?;
        wanted_fs(&options)?;
        requested_size(&options)?;
        Ok(placeholder(name))
    }

    /// kube-controller-manager: the attachment is logical.
    fn is_attached(_options: Options, _node: String) -> Result<bool> {
        Ok(true)
    }

    /// kube-controller-manager: the attachment is logical; `unmountdevice` frees the device.
    fn detach(_volume_name: String, _node: String) -> Result<()> {
        Ok(())
    }

    fn wait_for_attach(device: String, options: Options) -> Result<String> {
        let name = volume_name(&options)?;
        wanted_fs(&options)?;
        if State::Teardown.exists(name)? {
            // Its last user is gone: finish what the killed unmountdevice began. A device
            // still mounted is refused by the host: then the volume is still in use.
            if let Err(e) = finish_teardown(name) {
                log::warn(&format!(
                    "{name}: unfinished teardown not completed ({e:?}): keeping the volume"
                ));
                State::Teardown.remove(name)?;
            }
        }
        sweep(name);
        if block::image_size(name)?.is_none() {
            let Some(size) = requested_size(&options)? else {
                return Err(failure(format!(
                    "volume {name} has no image: provision it, or give the inline volume a size option"
                )));
            };
            if !State::available() {
                return Err(failure(format!(
                    "inline volume {name} needs the policy's [state] grant (to delete its image after its last user)"
                )));
            }
            // Marked first. A marker left by a create that failed (or never ran) names no
            // image; one that appears later is this inline volume's again, or a provisioned
            // PV's, and `provision` removes the marker.
            State::Inline.write(name, "inline volume: deleted by unmountdevice\n")?;
            block::create_image(name, size)?;
            log::info(&format!("created inline volume {name}: {size} bytes"));
        }
        let actual = block::attach_image(name)?;
        if device.starts_with("/dev/") && device != actual {
            log::info(&format!(
                "{name} is attached to {actual}, not {device} (stale): using {actual}"
            ));
        } else {
            log::info(&format!("{name} is attached to {actual}"));
        }
        Ok(actual)
    }

    fn mount_device(device_mount_path: String, device: String, options: Options) -> Result<()> {
        let name = volume_name(&options)?;
        let device = match block::image_device(name)? {
            Some(actual)
                if device.is_empty() || device == placeholder(name) || actual == device =>
            {
                actual
            }
            Some(actual) => {
                return Err(failure(format!(
                    "{device} is not volume {name}'s device ({actual}): refusing to mount it"
                )));
            }
            None => {
                return Err(failure(format!(
                    "volume {name} is not attached (waitforattach attaches it)"
                )));
            }
        };
        let wanted = wanted_fs(&options)?;
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
        let name = flex_sdk::kubelet::volume_name_of_device_mount_path(&device_mount_path)
            .ok_or_else(|| {
                failure(format!(
                    "{device_mount_path} is not a kubelet device mount path \
                     (<root>/plugins/kubernetes.io/flexvolume/<vendor>/<driver>/mounts/<volume>)"
                ))
            })?;
        check_name(name)?;
        // Before the unmount: kubelet never calls again once the path is unmounted.
        if State::available() {
            State::Teardown.write(name, &format!("{device_mount_path}\n"))?;
        } else {
            log::warn("no [state] grant: a killed unmountdevice leaves its loop device attached");
        }
        if mounts::is_mountpoint(&device_mount_path)? {
            mounts::unmount(&device_mount_path)?;
        }
        finish_teardown(name)?;
        sweep(name);
        Ok(())
    }

    fn expand_fs(
        options: Options,
        _device: String,
        device_mount_path: String,
        new_size: u64,
        _old_size: u64,
    ) -> Result<()> {
        let name = volume_name(&options)?;
        block::grow_image(name, new_size)?;
        // The image's own device: kubelet's argument may be the attach placeholder (after a
        // kubelet restart) or stale.
        let Some(device) = block::image_device(name)? else {
            return Err(failure(format!("volume {name} is not attached")));
        };
        block::resize_fs(&device, &device_mount_path)?;
        log::info(&format!("grew {name} to {new_size} bytes"));
        Ok(())
    }
}

impl Provisioner for Loop {
    fn describe() -> ProvisionerInfo {
        // The image is a file on the provisioner's node: only pods there can use it.
        ProvisionerInfo::new([AccessMode::ReadWriteOnce], [FS_OPTION]).node_local()
    }

    fn provision(request: ProvisionRequest) -> Result<Provisioned> {
        // Everything is checked before the image is created.
        let name = request.name.as_str();
        check_name(name)?;
        if let Some(key) = request.unknown_parameter(&[FS_OPTION]) {
            return Err(failure(format!(
                "unknown StorageClass parameter {key:?} (known: {FS_OPTION})"
            )));
        }
        if let Some(mode) = request
            .access_modes
            .iter()
            .find(|m| **m != AccessMode::ReadWriteOnce)
        {
            return Err(failure(format!(
                "access mode {} is not supported: a loop volume is attached to one node (ReadWriteOnce)",
                mode.kubernetes_name()
            )));
        }
        let fs_type = request.file_system(&FILE_SYSTEMS)?;
        let size = request.rounded_size(MIB)?;
        let actual = match block::image_size(name)? {
            Some(actual) => {
                log::info(&format!("{name} is already provisioned: {actual} bytes"));
                if actual < request.requested_bytes {
                    log::warn(&format!(
                        "{name}: {actual} bytes, the claim asks {} bytes",
                        request.requested_bytes
                    ));
                }
                actual
            }
            None => {
                let actual = block::create_image(name, size)?;
                log::info(&format!("provisioned {name}: {actual} bytes"));
                actual
            }
        };
        // Persistent from now on, whatever a stale marker says.
        State::Inline.remove(name)?;
        let mut provisioned = Provisioned::new(actual).with_option(IMAGE_OPTION, name);
        if let Some(fs) = fs_type {
            provisioned = provisioned.with_option(FS_OPTION, fs);
        }
        Ok(provisioned)
    }

    fn delete(name: String, options: Vec<(String, String)>) -> Result<()> {
        check_name(&name)?;
        check_image_option(&name, flex_sdk::option(&options, IMAGE_OPTION))?;
        delete_volume(&name)
    }
}

flex_sdk::export_provisioning_driver!(Loop);

/// Deletes a volume's image (finishing an unfinished teardown first); a missing image is
/// success, an attached one is refused by the host.
fn delete_volume(name: &str) -> Result<()> {
    if State::Teardown.exists(name)? {
        finish_teardown(name)?;
    }
    block::delete_image(name)?;
    State::Inline.remove(name)
}

/// An `image` option (recorded by `provision`) must name the volume's own image.
fn check_image_option(name: &str, image: Option<&str>) -> Result<()> {
    match image {
        Some(image) if image != name => Err(failure(format!(
            "option image={image:?} does not name volume {name}'s image: refusing it"
        ))),
        _ => Ok(()),
    }
}

/// What `attach` returns: stable, and says which volume it stands for.
fn placeholder(name: &str) -> String {
    format!("loop:{name}")
}

/// Detaches the volume's loop device, deletes its image when it is an inline volume's, and
/// forgets the teardown; each step is done-is-success, so a retry after a crash anywhere
/// completes it.
fn finish_teardown(name: &str) -> Result<()> {
    block::detach_image(name)?;
    if State::Inline.exists(name)? {
        block::delete_image(name)?;
        State::Inline.remove(name)?;
        log::info(&format!("deleted inline volume {name}"));
    }
    State::Teardown.remove(name)
}

/// Finishes other volumes' teardowns left by killed `unmountdevice` calls. One that cannot be
/// finished now (its device is mounted again, or is being mounted) stays for a later call.
fn sweep(current: &str) {
    for name in State::Teardown.names().into_iter().take(SWEEP_PER_CALL) {
        if name == current {
            continue;
        }
        match finish_teardown(&name) {
            Ok(()) => log::info(&format!("finished the teardown of {name}")),
            Err(e) => log::info(&format!("teardown of {name} not finished yet: {e:?}")),
        }
    }
}

/// The driver's records in its `[state]` directory, one file per volume.
#[derive(Clone, Copy)]
enum State {
    /// `inline/<volume>`: the image is an inline volume's.
    Inline,
    /// `teardown/<volume>`: an `unmountdevice` began and has not finished.
    Teardown,
}

impl State {
    /// Whether the host preopened the `[state]` directory.
    fn available() -> bool {
        state_root().is_dir()
    }

    fn dir(self) -> PathBuf {
        state_root().join(match self {
            State::Inline => "inline",
            State::Teardown => "teardown",
        })
    }

    fn exists(self, name: &str) -> Result<bool> {
        if !State::available() {
            return Ok(false);
        }
        match std::fs::symlink_metadata(self.dir().join(name)) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(state_error(&self.dir().join(name), e)),
        }
    }

    /// Writes the record durably (a crash right after it must find it).
    fn write(self, name: &str, text: &str) -> Result<()> {
        use std::io::Write;
        let dir = self.dir();
        std::fs::create_dir_all(&dir).map_err(|e| state_error(&dir, e))?;
        let path = dir.join(name);
        let mut file = std::fs::File::create(&path).map_err(|e| state_error(&path, e))?;
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| state_error(&path, e))
    }

    /// Removes the record; a missing one (or no state directory) is success.
    fn remove(self, name: &str) -> Result<()> {
        let path = self.dir().join(name);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != ErrorKind::NotFound && State::available() => {
                Err(state_error(&path, e))
            }
            _ => Ok(()),
        }
    }

    /// The volumes with a record (valid names only).
    fn names(self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.dir()) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| check_name(n).is_ok())
            .collect();
        names.sort();
        names
    }
}

/// `/state`, where the host preopens the policy's `[state]` directory.
#[cfg(not(test))]
fn state_root() -> PathBuf {
    PathBuf::from("/state")
}

#[cfg(test)]
fn state_root() -> PathBuf {
    tests::STATE.with(|scratch| scratch.0.clone())
}

fn state_error(path: &Path, e: std::io::Error) -> flex_sdk::Error {
    failure(format!("state {}: {e}", path.display()))
}

/// The image name: the PV name (or inline volume name), as kubelet passes it.
fn volume_name(options: &Options) -> Result<&str> {
    let name = options
        .pv_or_volume_name
        .as_deref()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| failure("kubernetes.io/pvOrVolumeName is missing"))?;
    check_name(name)?;
    check_image_option(name, options.get(IMAGE_OPTION))?;
    Ok(name)
}

/// The host's rule for image names (PV and volume names always fit it, but for length).
fn check_name(name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if valid {
        Ok(())
    } else {
        Err(failure(format!(
            "volume name {name:?} cannot name a loop image (1 to {MAX_NAME} of [A-Za-z0-9._-], no leading dot)"
        )))
    }
}

/// The `fsType` asked for: ext4, xfs, or none. kubelet's `kubernetes.io/fsType` (the PV's
/// `flexVolume.fsType`), else the `fsType` option `provision` recorded; both set must agree.
fn wanted_fs(options: &Options) -> Result<Option<&str>> {
    let kubelet = options.fs_type.as_deref().filter(|fs| !fs.is_empty());
    let recorded = options.get(FS_OPTION).filter(|fs| !fs.is_empty());
    let fs = match (kubelet, recorded) {
        (Some(a), Some(b)) if a != b => {
            return Err(failure(format!(
                "fsType {a:?} differs from the volume's option fsType {b:?}"
            )));
        }
        (a, b) => a.or(b),
    };
    match fs {
        None => Ok(None),
        Some(fs) if FILE_SYSTEMS.contains(&fs) => Ok(Some(fs)),
        Some(fs) => Err(failure(format!(
            "fsType {fs:?} is not supported (ext4 or xfs)"
        ))),
    }
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

#[cfg(test)]
mod tests {
    //! The verbs against the SDK's fake host (`cargo test -p flex-loop`), with a scratch
    //! directory for `/state`. The end-to-end suite (`tests/tests/loop.rs`) runs them on real
    //! loop devices.

    use super::*;
    use flex_sdk::testing::{Call, Host};

    /// A scratch `/state` per test thread, removed when the thread ends.
    pub struct Scratch(pub PathBuf);

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    thread_local! {
        pub static STATE: Scratch = {
            let dir = std::env::temp_dir().join(format!(
                "flex-loop-test-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        };
    }

    const DMP: &str = "/var/lib/kubelet/plugins/kubernetes.io/flexvolume/flex/loop/mounts/";
    const NODE: &str = "node-1";

    fn options(name: &str) -> Options {
        Options::default()
            .with_pv_or_volume_name(name)
            .with_fs_type("ext4")
    }

    #[test]
    fn the_controller_side_verbs_make_no_host_call() {
        let host = Host::new();
        let inline = options("scratch").with_extra("size", "64Mi");
        assert_eq!(
            Loop::attach(inline, "node-1".into()).unwrap(),
            "loop:scratch"
        );
        assert_eq!(
            Loop::attach(options("pv-1"), "node-1".into()).unwrap(),
            "loop:pv-1"
        );
        assert!(Loop::is_attached(options("pv-1"), "node-1".into()).unwrap());
        Loop::detach("pv-1".into(), "node-1".into()).unwrap();
        assert_eq!(host.calls(), []);
    }

    #[test]
    fn attach_checks_the_shape_of_the_options() {
        let _host = Host::new();
        for (bad, why) in [
            (Options::default(), "missing"),
            (options("../x"), "cannot name"),
            (options(&"a".repeat(129)), "cannot name"),
            (options("pv").with_fs_type("btrfs"), "not supported"),
            (options("pv").with_extra("size", "lots"), "invalid size"),
        ] {
            let Err(flex_sdk::Error::Failure(message)) = Loop::attach(bad, "n".into()) else {
                panic!("accepted");
            };
            assert!(message.contains(why), "{message}");
        }
        assert!(Loop::attach(options("pv").with_fs_type(""), "n".into()).is_ok());
    }

    #[test]
    fn waitforattach_attaches_once_and_ignores_its_device_argument() {
        let host = Host::new();
        host.block.add_image("pv-1", 64 << 20);
        let first = Loop::wait_for_attach("loop:pv-1".into(), options("pv-1")).unwrap();
        for stale in ["", "/dev/loop99", first.as_str()] {
            let again = Loop::wait_for_attach(stale.into(), options("pv-1")).unwrap();
            assert_eq!(again, first);
        }
        assert!(!State::Inline.exists("pv-1").unwrap());
    }

    #[test]
    fn a_pv_without_an_image_is_refused_and_marks_nothing() {
        let _host = Host::new();
        let Err(flex_sdk::Error::Failure(message)) =
            Loop::wait_for_attach("".into(), options("pv-none"))
        else {
            panic!("accepted");
        };
        assert!(message.contains("has no image"), "{message}");
        assert!(!State::Inline.exists("pv-none").unwrap());
    }

    #[test]
    fn an_inline_image_is_deleted_at_unmountdevice_a_provisioned_one_kept() {
        let host = Host::new();
        let inline = options("scratch").with_extra("size", "32Mi");
        Loop::wait_for_attach("loop:scratch".into(), inline).unwrap();
        assert!(host.block.image("scratch").is_some());
        assert!(State::Inline.exists("scratch").unwrap());
        Loop::unmount_device(format!("{DMP}scratch")).unwrap();
        assert!(host.block.image("scratch").is_none());
        assert!(!State::Inline.exists("scratch").unwrap());
        assert!(!State::Teardown.exists("scratch").unwrap());
        // Again (kubelet retries): still success.
        Loop::unmount_device(format!("{DMP}scratch")).unwrap();

        let provision = Options::default()
            .with_pv_or_volume_name("pv-keep")
            .with_extra("requestBytes", "33554432");
        <Loop as Driver>::provision(provision).unwrap();
        Loop::wait_for_attach("".into(), options("pv-keep")).unwrap();
        Loop::unmount_device(format!("{DMP}pv-keep")).unwrap();
        assert!(host.block.image("pv-keep").is_some());
        assert_eq!(block::image_device("pv-keep").unwrap(), None);
    }

    #[test]
    fn provision_removes_a_stale_inline_marker() {
        let host = Host::new();
        State::Inline.write("pv-2", "stale").unwrap();
        let provision = Options::default()
            .with_pv_or_volume_name("pv-2")
            .with_extra("requestGiB", "1");
        <Loop as Driver>::provision(provision).unwrap();
        Loop::wait_for_attach("".into(), options("pv-2")).unwrap();
        Loop::unmount_device(format!("{DMP}pv-2")).unwrap();
        assert!(host.block.image("pv-2").is_some());
    }

    #[test]
    fn a_teardown_killed_after_its_unmount_is_finished_later() {
        let host = Host::new();
        let inline = options("tmp").with_extra("size", "8Mi");
        Loop::wait_for_attach("".into(), inline.clone()).unwrap();
        host.block.add_image("pv-other", 8 << 20);
        // What a killed unmountdevice leaves: the record, the device unmounted but attached.
        State::Teardown.write("tmp", "dmp").unwrap();
        // Another volume's call finishes it.
        Loop::wait_for_attach("".into(), options("pv-other")).unwrap();
        assert!(host.block.image("tmp").is_none());
        assert!(!State::Teardown.exists("tmp").unwrap());
        assert!(!State::Inline.exists("tmp").unwrap());

        // The volume's own next waitforattach finishes it too, and starts afresh.
        Loop::wait_for_attach("".into(), inline.clone()).unwrap();
        State::Teardown.write("tmp", "dmp").unwrap();
        host.take_calls();
        Loop::wait_for_attach("".into(), inline).unwrap();
        let calls = host.calls();
        let deleted = calls
            .iter()
            .position(|c| *c == Call::DeleteImage { name: "tmp".into() });
        let created = calls
            .iter()
            .position(|c| matches!(c, Call::CreateImage { name, .. } if name == "tmp"));
        assert!(deleted.is_some() && deleted < created, "{calls:?}");
        assert!(host.block.image("tmp").is_some());
        assert!(State::Inline.exists("tmp").unwrap());
        assert!(!State::Teardown.exists("tmp").unwrap());
    }

    #[test]
    fn unmountdevice_needs_a_device_mount_path() {
        let _host = Host::new();
        for bad in ["/var/lib/kubelet/pods/u/volumes/flex~loop/pv", "pv-1", ""] {
            assert!(Loop::unmount_device(bad.into()).is_err(), "{bad}");
        }
    }

    #[test]
    fn mountdevice_does_not_attach() {
        let host = Host::new();
        host.block.add_image("pv-3", 8 << 20);
        let Err(flex_sdk::Error::Failure(message)) =
            Loop::mount_device(format!("{DMP}pv-3"), "".into(), options("pv-3"))
        else {
            panic!("mounted");
        };
        assert!(message.contains("not attached"), "{message}");
        let device = Loop::wait_for_attach("".into(), options("pv-3")).unwrap();
        Loop::mount_device(format!("{DMP}pv-3"), device, options("pv-3")).unwrap();
        assert!(host.mounts.is_mounted(&format!("{DMP}pv-3")));
    }

    /// The options the PV gets from `provision`, as kubelet passes them to the node verbs.
    fn pv_options(name: &str, provisioned: &Provisioned) -> Options {
        provisioned.options.iter().fold(
            Options::default().with_pv_or_volume_name(name),
            |o, (k, v)| o.with_extra(k, v),
        )
    }

    fn provision(request: ProvisionRequest) -> Result<Provisioned> {
        <Loop as Provisioner>::provision(request)
    }

    fn delete(name: &str, options: &[(String, String)]) -> Result<()> {
        <Loop as Provisioner>::delete(name.into(), options.to_vec())
    }

    fn failure_of<T: std::fmt::Debug>(result: Result<T>) -> String {
        match result {
            Err(flex_sdk::Error::Failure(message)) => message,
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[test]
    fn describe_lists_read_write_once_and_fs_type() {
        let host = Host::new();
        let info = Loop::describe();
        assert_eq!(info.access_modes, [AccessMode::ReadWriteOnce]);
        assert_eq!(info.parameters, ["fsType"]);
        assert_eq!(host.calls(), []);
    }

    #[test]
    fn provision_rounds_up_to_whole_mib_and_records_the_image() {
        let host = Host::new();
        let request = ProvisionRequest::new("pvc-a", 10 * MIB + 1).with_fs_type("xfs");
        let provisioned = provision(request.clone()).unwrap();
        assert_eq!(provisioned.capacity_bytes, 11 * MIB);
        assert_eq!(
            provisioned.options,
            [
                ("image".to_string(), "pvc-a".to_string()),
                ("fsType".to_string(), "xfs".to_string())
            ]
        );
        assert_eq!(host.block.image("pvc-a").unwrap().size, 11 * MIB);
        assert!(
            host.calls().contains(&Call::CreateImage {
                name: "pvc-a".into(),
                size: 11 * MIB
            }),
            "{:?}",
            host.calls()
        );

        // A retry: the same answer, and no second create.
        host.take_calls();
        assert_eq!(provision(request).unwrap(), provisioned);
        assert!(
            !host
                .calls()
                .iter()
                .any(|c| matches!(c, Call::CreateImage { .. })),
            "{:?}",
            host.calls()
        );

        // Without fsType only the image is recorded; one byte is one MiB.
        let small = provision(ProvisionRequest::new("pvc-b", 1)).unwrap();
        assert_eq!(small.capacity_bytes, MIB);
        assert_eq!(small.options, [("image".to_string(), "pvc-b".to_string())]);
    }

    #[test]
    fn an_existing_image_is_returned_with_its_actual_size() {
        let host = Host::new();
        host.block.add_image("pvc-old", 64 * MIB);
        let provisioned = provision(ProvisionRequest::new("pvc-old", 8 * MIB)).unwrap();
        assert_eq!(provisioned.capacity_bytes, 64 * MIB);
        assert_eq!(host.block.image("pvc-old").unwrap().size, 64 * MIB);
    }

    #[test]
    fn a_bad_request_creates_nothing() {
        let host = Host::new();
        for (request, why) in [
            (
                ProvisionRequest::new("pvc-c", MIB).with_fs_type("btrfs"),
                "invalid parameter fsType",
            ),
            (
                ProvisionRequest::new("pvc-c", MIB).with_parameter("colour", "red"),
                "unknown StorageClass parameter \"colour\"",
            ),
            (
                ProvisionRequest::new("pvc-c", MIB)
                    .with_access_modes([AccessMode::ReadWriteOnce, AccessMode::ReadWriteMany]),
                "access mode ReadWriteMany",
            ),
            (
                ProvisionRequest::new("pvc-c", 10 * MIB + 1).with_limit_bytes(10 * MIB + 512),
                "above its limit",
            ),
            (ProvisionRequest::new("../pvc-c", MIB), "cannot name"),
            (ProvisionRequest::new("", MIB), "cannot name"),
            (ProvisionRequest::new("pvc-c", u64::MAX), "out of range"),
        ] {
            let message = failure_of(provision(request));
            assert!(message.contains(why), "{message}");
        }
        assert_eq!(host.calls(), []);
        assert!(host.block.image("pvc-c").is_none());

        // A limit the rounded size reaches exactly is fine.
        let exact = ProvisionRequest::new("pvc-c", 10 * MIB + 1).with_limit_bytes(11 * MIB);
        assert_eq!(provision(exact).unwrap().capacity_bytes, 11 * MIB);
    }

    #[test]
    fn a_host_refusal_reaches_the_controller() {
        let host = Host::new();
        host.fail_when(
            |c| matches!(c, Call::CreateImage { .. }),
            "denied: image larger than block.max_image_bytes",
        );
        let message = failure_of(provision(ProvisionRequest::new("pvc-big", MIB)));
        assert!(message.contains("max_image_bytes"), "{message}");
        assert!(host.block.image("pvc-big").is_none());
    }

    #[test]
    fn delete_removes_the_image_and_a_missing_one_is_success() {
        let host = Host::new();
        let provisioned = provision(ProvisionRequest::new("pvc-d", 4 * MIB)).unwrap();
        State::Inline.write("pvc-d", "stale").unwrap();
        delete("pvc-d", &provisioned.options).unwrap();
        assert!(host.block.image("pvc-d").is_none());
        assert!(!State::Inline.exists("pvc-d").unwrap());
        delete("pvc-d", &provisioned.options).unwrap();
        delete("pvc-d", &[]).unwrap();
    }

    #[test]
    fn delete_is_refused_while_attached_and_for_another_image() {
        let host = Host::new();
        let provisioned = provision(ProvisionRequest::new("pvc-e", 4 * MIB)).unwrap();
        Loop::wait_for_attach("".into(), pv_options("pvc-e", &provisioned)).unwrap();
        let message = failure_of(delete("pvc-e", &provisioned.options));
        assert!(message.contains("attached"), "{message}");
        assert!(host.block.image("pvc-e").is_some());

        host.block.add_image("pvc-other", MIB);
        let other = [("image".to_string(), "pvc-other".to_string())];
        let message = failure_of(delete("pvc-f", &other));
        assert!(message.contains("does not name"), "{message}");
        assert!(host.block.image("pvc-other").is_some());
        assert!(failure_of(delete("../pvc-e", &[])).contains("cannot name"));
    }

    #[test]
    fn the_node_verbs_take_the_recorded_options() {
        let host = Host::new();
        let provisioned =
            provision(ProvisionRequest::new("pvc-g", 16 * MIB).with_fs_type("xfs")).unwrap();
        let options = pv_options("pvc-g", &provisioned);
        assert_eq!(
            Loop::attach(options.clone(), NODE.into()).unwrap(),
            "loop:pvc-g"
        );
        let device = Loop::wait_for_attach("loop:pvc-g".into(), options.clone()).unwrap();
        Loop::mount_device(format!("{DMP}pvc-g"), device.clone(), options.clone()).unwrap();
        assert!(
            host.calls().contains(&Call::Mkfs {
                device: device.clone(),
                fs_type: "xfs".into()
            }),
            "{:?}",
            host.calls()
        );
        Loop::unmount_device(format!("{DMP}pvc-g")).unwrap();
        // A provisioned image outlives its device mount.
        assert!(host.block.image("pvc-g").is_some());

        // kubelet's fsType agrees, or the call fails.
        let same = options.clone().with_fs_type("xfs");
        Loop::wait_for_attach("".into(), same).unwrap();
        let differ = options.with_fs_type("ext4");
        assert!(failure_of(Loop::wait_for_attach("".into(), differ)).contains("differs"));
    }

    #[test]
    fn an_image_option_cannot_name_another_volume() {
        let host = Host::new();
        host.block.add_image("pvc-victim", 8 * MIB);
        let hostile = Options::default()
            .with_pv_or_volume_name("pvc-mine")
            .with_extra("image", "pvc-victim");
        for result in [
            Loop::attach(hostile.clone(), NODE.into()).map(drop),
            Loop::wait_for_attach("".into(), hostile.clone()).map(drop),
            Loop::mount_device(format!("{DMP}pvc-mine"), "".into(), hostile.clone()),
            Loop::expand_fs(hostile.clone(), "".into(), format!("{DMP}pvc-mine"), 1, 1),
            <Loop as Driver>::delete(hostile.clone()),
        ] {
            assert!(failure_of(result).contains("does not name"));
        }
        assert_eq!(host.block.image("pvc-victim").unwrap().device, None);
        assert!(host.block.image("pvc-victim").is_some());
    }
}
