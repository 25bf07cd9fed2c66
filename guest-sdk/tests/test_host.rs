//! A small attachable block driver, written as a vendor outside this repository would, and
//! its whole lifecycle unit-tested against `flex_sdk::testing::Host`; then the fake host's own
//! rules.

use flex_sdk::exec::{self, Output};
use flex_sdk::testing::{Call, Host};
use flex_sdk::{
    Capabilities, Driver, Error, Options, Result, block, config, failure, filesystem, log, mounts,
    pod,
};

/// Loop-image volumes: the image is created by `provision`, attached on the worker in
/// `waitforattach` (node-local work never runs in kube-controller-manager's `attach`).
struct Images;

const FILE_SYSTEMS: [&str; 2] = ["ext4", "xfs"];

fn name(options: &Options) -> Result<&str> {
    options
        .pv_or_volume_name
        .as_deref()
        .ok_or_else(|| failure("no kubernetes.io/pvOrVolumeName"))
}

impl Driver for Images {
    fn init() -> Result<Capabilities> {
        Ok(Capabilities {
            attach: true,
            requires_fs_resize: true,
            ..Capabilities::default()
        })
    }
    fn provision(options: Options) -> Result<()> {
        let size = flex_sdk::parse_quantity(options.get("requestBytes").unwrap_or("1Gi"))?;
        block::create_image(name(&options)?, size)?;
        Ok(())
    }
    fn delete(options: Options) -> Result<()> {
        block::delete_image(name(&options)?)
    }
    /// Control plane: nothing to do, the device is made on the node.
    fn attach(_options: Options, _node: String) -> Result<String> {
        Ok(String::new())
    }
    fn detach(_volume: String, _node: String) -> Result<()> {
        Ok(())
    }
    fn wait_for_attach(_device: String, options: Options) -> Result<String> {
        let device = block::attach_image(name(&options)?)?;
        log::info(&format!("attached on {device}"));
        Ok(device)
    }
    fn mount_device(path: String, device: String, options: Options) -> Result<()> {
        let fs_type = options.fs_type.as_deref();
        let name = name(&options)?;
        filesystem::mount_device(name, &device, &path, fs_type, false, &FILE_SYSTEMS)
    }
    fn unmount_device(path: String) -> Result<()> {
        if mounts::is_mountpoint(&path)? {
            mounts::unmount(&path)?;
        }
        // The volume name is the last path component of kubelet's device mount path.
        let name = path.rsplit('/').next().unwrap_or_default();
        block::detach_image(name)
    }
    fn mount(dir: String, options: Options) -> Result<()> {
        pod::bind_device_mount(&dir, options.read_only)
    }
    fn unmount(dir: String) -> Result<()> {
        pod::unbind(&dir)
    }
    fn expand_fs(
        options: Options,
        _device: String,
        path: String,
        new_size: u64,
        _old_size: u64,
    ) -> Result<()> {
        let name = name(&options)?;
        block::grow_image(name, new_size)?;
        let device = block::image_device(name)?.ok_or_else(|| failure("not attached"))?;
        block::resize_fs(&device, &path)
    }
}

flex_sdk::export_driver!(Images);

const POD_DIR: &str = "/var/lib/kubelet/pods/u1/volumes/acme~images/pv-1";
const DEVICE_MOUNT: &str =
    "/var/lib/kubelet/plugins/kubernetes.io/flexvolume/acme/images/mounts/pv-1";

fn pv() -> Options {
    Options::default().with_pv_or_volume_name("pv-1")
}

#[test]
fn the_whole_lifecycle() {
    let host = Host::new();
    Images::provision(pv().with_extra("requestBytes", "1Gi")).unwrap();
    assert_eq!(Images::attach(pv(), "node-1".into()).unwrap(), "");
    assert_eq!(
        host.take_calls(),
        [Call::CreateImage {
            name: "pv-1".into(),
            size: 1 << 30
        }]
    );

    let device = Images::wait_for_attach(String::new(), pv()).unwrap();
    assert_eq!(device, "/dev/loop0");
    assert_eq!(
        Images::wait_for_attach(String::new(), pv()).unwrap(),
        device,
        "retry"
    );

    Images::mount_device(DEVICE_MOUNT.into(), device.clone(), pv()).unwrap();
    assert_eq!(
        host.block.image("pv-1").unwrap().fs.as_deref(),
        Some("ext4")
    );
    Images::mount(POD_DIR.into(), pv().with_read_only(true)).unwrap();
    assert_eq!(
        host.calls().last(),
        Some(&Call::Mount {
            source: DEVICE_MOUNT.into(),
            target: POD_DIR.into(),
            fs_type: String::new(),
            options: vec!["nosuid".into(), "nodev".into(), "ro".into()],
            bind: true,
        })
    );
    assert_eq!(host.mounts.mounted(), [DEVICE_MOUNT, POD_DIR]);

    Images::expand_fs(pv(), device.clone(), DEVICE_MOUNT.into(), 2 << 30, 1 << 30).unwrap();
    assert_eq!(host.block.device(&device).unwrap().size, 2 << 30);

    // Out of order: the image is mounted, so neither detach nor delete may happen.
    assert!(block::detach_image("pv-1").is_err());
    assert!(Images::delete(pv()).is_err());

    Images::unmount(POD_DIR.into()).unwrap();
    Images::unmount_device(DEVICE_MOUNT.into()).unwrap();
    assert!(host.mounts.mounted().is_empty());
    assert_eq!(host.block.image("pv-1").unwrap().device, None);
    Images::delete(pv()).unwrap();
    Images::delete(pv()).unwrap();
    assert_eq!(host.block.image("pv-1"), None);
    assert!(
        host.logs()
            .iter()
            .any(|(_, line)| line.contains("formatted /dev/loop0"))
    );
}

#[test]
fn mount_device_never_reformats() {
    let host = Host::new();
    host.block.add_image("pv-1", 1 << 30);
    let device = Images::wait_for_attach(String::new(), pv()).unwrap();
    host.block.set_fs(&device, "xfs");
    let err = Images::mount_device(
        DEVICE_MOUNT.into(),
        device.clone(),
        pv().with_fs_type("ext4"),
    )
    .unwrap_err();
    assert!(err.to_string().contains("not reformatting"), "{err}");
    assert!(!host.calls().iter().any(|c| matches!(c, Call::Mkfs { .. })));
    // Without an fsType the file system found is mounted as it is.
    Images::mount_device(DEVICE_MOUNT.into(), device, pv()).unwrap();
    assert!(host.mounts.is_mounted(DEVICE_MOUNT));
}

#[test]
fn a_failed_mkfs_leaves_the_device_blank_for_the_retry() {
    let host = Host::new();
    host.block.add_device("/dev/xvdf", 1 << 30);
    host.fail_when(
        |c| matches!(c, Call::Mkfs { .. }),
        "mkfs.ext4 exited with 1",
    );
    let options = pv();
    let err = Images::mount_device(DEVICE_MOUNT.into(), "/dev/xvdf".into(), options).unwrap_err();
    assert_eq!(err, failure("mkfs.ext4 exited with 1"));
    assert_eq!(host.block.device("/dev/xvdf").unwrap().fs, None);
    assert!(!host.mounts.is_mounted(DEVICE_MOUNT));
}

#[test]
fn unknown_devices_are_refused() {
    let _host = Host::new();
    let err = block::probe_fs("/dev/sda").unwrap_err();
    assert!(err.to_string().contains("not granted"), "{err}");
    assert_eq!(block::wait_for_device("/dev/sda", 1000), Ok(false));
    assert!(
        mounts::Mount::new("/dev/sda", "/mnt")
            .fs_type("ext4")
            .mount()
            .is_err()
    );
}

#[test]
fn mounts_do_not_stack_and_unmount_needs_a_mount() {
    let host = Host::new();
    let tmpfs = || mounts::Mount::new("tmpfs", "/mnt").fs_type("tmpfs");
    tmpfs().mount().unwrap();
    assert!(
        tmpfs()
            .mount()
            .unwrap_err()
            .to_string()
            .contains("already a mount point")
    );
    mounts::remount("/mnt", &["ro"]).unwrap();
    mounts::unmount("/mnt").unwrap();
    assert!(mounts::unmount("/mnt").is_err());
    assert!(mounts::remount("/mnt", &["ro"]).is_err());
    host.mounts.add("/mnt");
    assert_eq!(mounts::is_mountpoint("/mnt"), Ok(true));
}

#[test]
fn fail_next_fails_one_call_of_its_interface() {
    let host = Host::new();
    host.mounts.fail_next("EBUSY");
    assert_eq!(
        block::image_size("x"),
        Ok(None),
        "another interface is not affected"
    );
    assert_eq!(mounts::is_mountpoint("/mnt"), Err(failure("EBUSY")));
    assert_eq!(mounts::is_mountpoint("/mnt"), Ok(false));
    // The failed call is recorded all the same.
    assert_eq!(host.calls().len(), 3);
}

#[test]
fn config_and_exec_answer_as_scripted() {
    let host = Host::new();
    host.config.insert("region", "eu-1");
    host.config.insert("zone", "a");
    host.config.insert("region", "eu-2");
    assert_eq!(config::get("region").as_deref(), Some("eu-2"));
    host.config.remove("zone");
    assert_eq!(
        config::get_all(),
        [("region".to_string(), "eu-2".to_string())]
    );

    let err = exec::run("/usr/sbin/iscsiadm", &["-m", "session"], &[]).unwrap_err();
    assert!(err.to_string().contains("exec.programs"), "{err}");
    host.exec.respond(
        "/usr/sbin/iscsiadm",
        Output::exited(21).with_stderr("No active sessions."),
    );
    let out = exec::run("/usr/sbin/iscsiadm", &["-m", "session"], &[("LANG", "C")]).unwrap();
    assert_eq!(
        (out.exit_code, out.stderr_text().as_str()),
        (Some(21), "No active sessions.")
    );
    host.exec.fail_next("killed with the call");
    assert!(exec::run("/usr/sbin/iscsiadm", &[], &[]).is_err());
    assert_eq!(
        host.calls()[3],
        Call::Run {
            program: "/usr/sbin/iscsiadm".into(),
            args: vec!["-m".into(), "session".into()],
            env: vec![("LANG".into(), "C".into())],
        }
    );
}

#[test]
fn each_host_is_fresh_and_dropping_it_removes_it() {
    let first = Host::new();
    mounts::Mount::new("tmpfs", "/mnt")
        .fs_type("tmpfs")
        .mount()
        .unwrap();
    let second = Host::new();
    assert_eq!(mounts::is_mountpoint("/mnt"), Ok(false));
    assert!(
        first.mounts.is_mounted("/mnt"),
        "the replaced host keeps its state"
    );
    assert_eq!(second.calls().len(), 1);
    drop(first); // not the current host: the current one stays
    assert_eq!(mounts::is_mountpoint("/mnt"), Ok(false));
    drop(second);
    let panic = std::panic::catch_unwind(|| mounts::is_mountpoint("/mnt")).unwrap_err();
    let message = match panic.downcast_ref::<&str>() {
        Some(message) => message.to_string(),
        None => panic.downcast_ref::<String>().unwrap().clone(),
    };
    assert!(message.contains("Host::new()"), "{message}");
    log::info("logging without a host only goes to stderr");
}

#[test]
fn threads_have_their_own_hosts() {
    let host = Host::new();
    host.mounts.add("/mnt");
    std::thread::spawn(|| {
        let other = Host::new();
        assert_eq!(mounts::is_mountpoint("/mnt"), Ok(false));
        assert_eq!(other.calls().len(), 1);
    })
    .join()
    .unwrap();
    assert_eq!(mounts::is_mountpoint("/mnt"), Ok(true));
    assert_eq!(
        Images::is_attached(pv(), "node-1".into()),
        Err(Error::NotSupported)
    );
}
