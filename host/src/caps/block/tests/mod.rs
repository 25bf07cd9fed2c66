//! Unit tests on real loop devices (root). Image dirs and the device registry live in a
//! root-only directory, as the host requires.

use super::*;
use crate::bindings::flex::volume::block::Host;
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

const MIB: u64 = 1 << 20;

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests use loop devices: run them as root"
    );
}

/// A temporary directory whose every ancestor only root can change.
pub fn root_only_tempdir() -> tempfile::TempDir {
    require_root();
    let base = Path::new("/run/flex-unit-tests");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(base)
        .unwrap();
    tempfile::tempdir_in(base).unwrap()
}

fn grant(image_dir: &Path) -> BlockGrant {
    BlockGrant {
        devices: vec!["/dev/loop[0-9]*".into()],
        fs_types: vec!["ext4".into(), "xfs".into()],
        image_dir: Some(image_dir.to_path_buf()),
        max_image_bytes: 64 * MIB,
        format_nonzero: vec![],
    }
}

/// A node's worth of block state: an image dir and a device registry.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Scratch {
        Scratch {
            dir: root_only_tempdir(),
        }
    }
    fn images(&self) -> PathBuf {
        self.dir.path().join("images")
    }
    fn block_with(&self, grant: &BlockGrant, driver: &str, audit: Audit) -> Block {
        let mut block = Block::new(grant, &Limits::default(), driver, &[], audit);
        block.run_dir = self.dir.path().join("run");
        block
    }
    fn block(&self) -> Block {
        self.block_as("acme~a")
    }
    fn block_as(&self, driver: &str) -> Block {
        let audit = Audit::to(None, driver, "test", false);
        self.block_with(&grant(&self.images()), driver, audit)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for (device, _) in loop_devices_under(self.dir.path()) {
            let _ = Command::new("losetup").arg("-d").arg(&device).status();
        }
    }
}

/// Loop devices whose backing file is under `dir`.
fn loop_devices_under(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/sys/block").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Ok(text) = std::fs::read_to_string(entry.path().join("loop/backing_file")) {
            let backing = PathBuf::from(text.trim_end());
            if backing.starts_with(dir) {
                found.push((format!("/dev/{name}"), backing));
            }
        }
    }
    found
}

/// A loop device attached outside flex (by "the admin"), detached on drop.
struct ForeignLoop {
    path: String,
    _dir: tempfile::TempDir,
}

impl ForeignLoop {
    fn new(size: u64) -> ForeignLoop {
        require_root();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("disk");
        File::create(&file).unwrap().set_len(size).unwrap();
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let path = String::from_utf8(out.stdout).unwrap().trim().to_string();
        ForeignLoop { path, _dir: dir }
    }
    fn write_at(&self, offset: u64, bytes: &[u8]) {
        let mut disk = OpenOptions::new().write(true).open(&self.path).unwrap();
        disk.seek(SeekFrom::Start(offset)).unwrap();
        disk.write_all(bytes).unwrap();
        disk.sync_all().unwrap();
    }
}

impl Drop for ForeignLoop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.path]).status();
    }
}

mod images;

#[test]
fn unlisted_devices_are_denied_the_same_way_whether_they_exist_or_not() {
    let s = Scratch::new();
    let mut block = s.block();
    for device in [
        "/dev/null",
        "/dev/zero",
        "loop0",
        "/dev/../dev/null",
        "/dev/vda",
        "/dev/nonexistent",
        "/etc/passwd",
    ] {
        let err = Host::probe_fs(&mut block, device.into()).unwrap_err();
        assert_eq!(err, devices::not_granted(device));
        let err = Host::mkfs(&mut block, device.into(), "ext4".into()).unwrap_err();
        assert_eq!(err, devices::not_granted(device));
        let err = Host::device_size(&mut block, device.into()).unwrap_err();
        assert_eq!(err, devices::not_granted(device));
        let started = Instant::now();
        let err = Host::wait_for_device(&mut block, device.into(), 2000).unwrap_err();
        assert_eq!(err, devices::not_granted(device));
        assert!(started.elapsed() < Duration::from_millis(500));
    }
    // A symlink under /dev to a granted device is matched where it leads.
    let foreign = ForeignLoop::new(4 * MIB);
    let link = format!("/dev/flex-unit-link-{}", std::process::id());
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&foreign.path, &link).unwrap();
    assert_eq!(Host::probe_fs(&mut block, link.clone()), Ok(None));
    assert_eq!(Host::device_size(&mut block, link.clone()), Ok(4 * MIB));
    let err = Host::mkfs(&mut block, link.clone(), "btrfs".into()).unwrap_err();
    assert!(err.contains("block.fs_types"), "{err}");
    std::fs::remove_file(&link).unwrap();
}

#[test]
fn own_loop_devices_need_no_glob_and_others_are_refused() {
    let s = Scratch::new();
    let no_glob = BlockGrant {
        devices: vec![],
        ..grant(&s.images())
    };
    let audit = |d| Audit::to(None, d, "t", false);
    let mut a = s.block_with(&no_glob, "acme~a", audit("acme~a"));
    Host::create_image(&mut a, "vol".into(), 16 * MIB).unwrap();
    let device = Host::attach_image(&mut a, "vol".into()).unwrap();
    assert_eq!(Host::probe_fs(&mut a, device.clone()), Ok(None));
    assert_eq!(Host::wait_for_device(&mut a, device.clone(), 10), Ok(true));
    Host::mkfs(&mut a, device.clone(), "ext4".into()).unwrap();

    // A foreign loop device is not A's without a glob.
    let foreign = ForeignLoop::new(4 * MIB);
    let err = Host::probe_fs(&mut a, foreign.path.clone()).unwrap_err();
    assert_eq!(err, devices::not_granted(&foreign.path));

    // Driver B, with a glob over every loop device, still cannot touch A's.
    let mut b = s.block_as("acme~b");
    let held = format!("denied: device {device} is held by another driver");
    assert_eq!(Host::probe_fs(&mut b, device.clone()).unwrap_err(), held);
    assert_eq!(
        Host::mkfs(&mut b, device.clone(), "xfs".into()).unwrap_err(),
        held
    );
    assert_eq!(Host::device_size(&mut b, device.clone()).unwrap_err(), held);
    // The unclaimed foreign device is B's to use (its glob grants it), and then A's never.
    assert_eq!(Host::probe_fs(&mut b, foreign.path.clone()), Ok(None));
    Host::mkfs(&mut b, foreign.path.clone(), "ext4".into()).unwrap();
    let mut a2 = s.block_as("acme~a");
    let err = Host::probe_fs(&mut a2, foreign.path.clone()).unwrap_err();
    assert!(err.contains("held by another driver"), "{err}");

    // Detach releases A's claim.
    drop(a);
    let mut a = s.block_with(&no_glob, "acme~a", audit("acme~a"));
    Host::detach_image(&mut a, "vol".into()).unwrap();
    let registry = Registry::open(&s.dir.path().join("run"), false)
        .unwrap()
        .unwrap();
    let rdev = std::fs::metadata(&device).unwrap().rdev();
    assert_eq!(registry.get(rdev).unwrap(), None);
}

#[test]
fn mkfs_refuses_data_without_a_signature_unless_the_policy_opts_out() {
    let s = Scratch::new();
    let foreign = ForeignLoop::new(8 * MIB);
    // Random-looking data in the middle of the first MiB, then only at the very end.
    foreign.write_at(300 << 10, b"precious data, no signature");
    let mut block = s.block();
    assert_eq!(Host::probe_fs(&mut block, foreign.path.clone()), Ok(None));
    let err = Host::mkfs(&mut block, foreign.path.clone(), "ext4".into()).unwrap_err();
    assert!(err.contains("first MiB is not all zero"), "{err}");
    drop(block);
    foreign.write_at(300 << 10, &[0; 64]);
    foreign.write_at(8 * MIB - 512, &[0xa5; 512]);
    let mut block = s.block();
    let err = Host::mkfs(&mut block, foreign.path.clone(), "ext4".into()).unwrap_err();
    assert!(err.contains("last MiB is not all zero"), "{err}");
    drop(block);
    let opted_out = BlockGrant {
        format_nonzero: vec!["/dev/loop[0-9]*".into()],
        ..grant(&s.images())
    };
    let mut block = s.block_with(&opted_out, "acme~a", Audit::to(None, "t", "t", false));
    Host::mkfs(&mut block, foreign.path.clone(), "ext4".into()).unwrap();
    assert_eq!(
        Host::probe_fs(&mut block, foreign.path.clone()),
        Ok(Some("ext4".into()))
    );
}

#[test]
fn mkfs_refuses_signatures_partition_tables_and_mounted_devices() {
    let s = Scratch::new();
    let device = ForeignLoop::new(32 * MIB);
    let mut block = s.block();
    assert_eq!(
        Host::mkfs(&mut block, device.path.clone(), "ext4".into()),
        Ok(())
    );
    assert_eq!(
        Host::probe_fs(&mut block, device.path.clone()),
        Ok(Some("ext4".into()))
    );
    drop(block);
    let mut block = s.block();
    for fs in ["ext4", "xfs"] {
        let err = Host::mkfs(&mut block, device.path.clone(), fs.into()).unwrap_err();
        assert!(err.contains("already carries a signature (ext4)"), "{err}");
    }
    drop(block);
    let mount = tempfile::tempdir().unwrap();
    nix::mount::mount(
        Some(device.path.as_str()),
        mount.path(),
        Some("ext4"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .unwrap();
    let mut block = s.block();
    let err = Host::mkfs(&mut block, device.path.clone(), "ext4".into()).unwrap_err();
    let _ = nix::mount::umount(mount.path());
    assert!(err.contains("is mounted at"), "{err}");

    let table = ForeignLoop::new(8 * MIB);
    // One MBR partition entry (type 0x83 at LBA 2048) and the boot signature.
    let mut entry = vec![0u8, 0, 0, 0, 0x83, 0, 0, 0];
    entry.extend(2048u32.to_le_bytes());
    entry.extend(4096u32.to_le_bytes());
    table.write_at(446, &entry);
    table.write_at(510, &[0x55, 0xaa]);
    let mut block = s.block();
    assert_eq!(
        Host::probe_fs(&mut block, table.path.clone()),
        Ok(Some("dos partition table".into()))
    );
    let err = Host::mkfs(&mut block, table.path.clone(), "ext4".into()).unwrap_err();
    assert!(err.contains("dos partition table"), "{err}");
}

#[test]
fn concurrent_mkfs_formats_once() {
    let s = Scratch::new();
    let device = ForeignLoop::new(32 * MIB);
    // Separate Blocks: separate calls, as separate flex processes would be.
    let results: Vec<Result<(), String>> = std::thread::scope(|scope| {
        let calls: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| Host::mkfs(&mut s.block(), device.path.clone(), "ext4".into())))
            .collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    });
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "{results:?}"
    );
    for err in results.iter().filter_map(|r| r.as_ref().err()) {
        assert!(err.contains("already carries a signature (ext4)"), "{err}");
    }
}

#[test]
fn resize_needs_the_mount_root_of_that_device() {
    let s = Scratch::new();
    let big = BlockGrant {
        max_image_bytes: 1 << 30,
        ..grant(&s.images())
    };
    let audit = || Audit::to(None, "acme~a", "t", false);
    let mut block = s.block_with(&big, "acme~a", audit());
    Host::create_image(&mut block, "g".into(), 320 * MIB).unwrap();
    let device = Host::attach_image(&mut block, "g".into()).unwrap();
    Host::mkfs(&mut block, device.clone(), "xfs".into()).unwrap();
    drop(block);
    let mount = root_only_tempdir();
    nix::mount::mount(
        Some(device.as_str()),
        mount.path(),
        Some("xfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .unwrap();
    let mut block = s.block_with(&big, "acme~a", audit());
    let shown = mount.path().to_string_lossy().into_owned();
    for bad in ["/", "/nonexistent", "/tmp", &format!("{shown}/../x")] {
        let err = Host::resize_fs(&mut block, device.clone(), bad.into()).unwrap_err();
        assert_eq!(
            err,
            format!("denied: {bad:?} is not a mount point of {device}")
        );
    }
    let before = nix::sys::statvfs::statvfs(mount.path()).unwrap().blocks();
    Host::grow_image(&mut block, "g".into(), 400 * MIB).unwrap();
    let result = Host::resize_fs(&mut block, device.clone(), shown.clone());
    let size = nix::sys::statvfs::statvfs(mount.path()).unwrap();
    let _ = nix::mount::umount(mount.path());
    result.unwrap();
    assert!(size.blocks() > before, "{} -> {}", before, size.blocks());
}
