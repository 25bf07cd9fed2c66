//! Devices: resolved once to a descriptor, checked on it, acted on through it.
//!
//! A driver may use only a device it holds in this call:
//! - the driver's own loop device: attached from an image in its `image_dir` (the loop
//!   device's backing inode is an image file there), or
//! - a device `block.devices` grants (the call's own device, the one kubelet passed, is named
//!   as such in the audit), and which no other driver holds (the registry in
//!   [`super::ownership`]). A glob alone never hands one driver another driver's device: a
//!   valid claim by another driver refuses the device whatever the glob or kubelet says (a
//!   hostile `attach` can make kubelet pass any device name to the next verbs).
//!
//! The device path is opened once ([`paths::open_device`]); the glob is matched against the
//! requested path when it is one of udev's stable links (`/dev/disk/by-id/…`), against the
//! canonical name the descriptor has otherwise. Everything afterwards (reads, ioctls, host
//! tools) uses a descriptor reopened from that one.
//!
//! No oracles: until a device is granted, every refusal is the same sentence whether or not
//! the path exists, is a symlink, or is a block device.

use super::grant::is_stable_link;
use super::images::ImageDir;
use super::ownership::{Registry, held_by_another};
use super::tools;
use crate::caps::Patterns;
use crate::caps::mounts::unescape_mountinfo;
use crate::caps::paths::{self, Opened};
use rustix::fs::OFlags;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

nix::ioctl_read_bad!(blk_get_diskseq, linux_raw_sys::ioctl::BLKGETDISKSEQ, u64);
nix::ioctl_read_bad!(blk_get_size64, linux_raw_sys::ioctl::BLKGETSIZE64, u64);

const MIB: u64 = 1 << 20;

/// A device this call may use, resolved and open.
pub struct Device {
    /// `O_PATH` descriptor and canonical name.
    pub opened: Opened,
    /// The same device, open read-only: reads, ioctls, host tools.
    pub io: File,
    pub rdev: u64,
    pub diskseq: u64,
    /// Why it is allowed, for the audit.
    pub rule: String,
    /// The name the driver asked for, in normal form.
    pub requested: PathBuf,
}

impl Device {
    pub fn shown(&self) -> String {
        self.opened.path.display().to_string()
    }

    pub fn major_minor(&self) -> String {
        paths::major_minor(self.rdev)
    }

    /// The name policy globs are matched against (see the module docs).
    pub fn matched_name(&self) -> PathBuf {
        if is_stable_link(&self.requested) {
            self.requested.clone()
        } else {
            self.opened.path.clone()
        }
    }

    /// Size in bytes, asked of the open device.
    pub fn size(&self) -> Result<u64, String> {
        let mut size = 0u64;
        // SAFETY: BLKGETSIZE64 writes one u64.
        unsafe { blk_get_size64(self.io.as_raw_fd(), &mut size) }
            .map_err(|e| format!("size of {}: {e}", self.shown()))?;
        Ok(size)
    }

    /// Reopens the device read-only (`O_NONBLOCK` so no tape-like device blocks), e.g. for a
    /// lock held apart from `io`.
    pub fn reopen(&self) -> Result<OwnedFd, String> {
        paths::reopen(self.opened.fd.as_fd(), OFlags::RDONLY | OFlags::NONBLOCK)
    }
}

/// What a driver may hold in a call, apart from the registry.
pub struct Grants<'a> {
    pub driver: &'a str,
    /// The glob that grants devices (`block.devices`, or `mount.sources` for mounts).
    pub patterns: &'a Patterns,
    pub patterns_name: &'a str,
    pub image_dir: Option<&'a ImageDir>,
    /// Devices kubelet passed in this call, by device number.
    pub call_devices: &'a [u64],
}

/// The one refusal for a device that is not granted, whatever the reason.
pub fn not_granted(requested: &str) -> String {
    format!(
        "denied: device {requested:?} is not granted to this driver (block.devices, its own images)"
    )
}

/// Why [`authorize`] refused.
pub enum Refusal {
    /// A granted name that does not exist (yet): `wait-for-device` waits for it.
    Missing(String),
    Denied(String),
}

impl Refusal {
    pub fn message(self) -> String {
        match self {
            Refusal::Missing(m) | Refusal::Denied(m) => m,
        }
    }
}

/// Resolves, opens and checks a device. `registry` is `None` when no device was ever claimed.
pub fn authorize(
    requested: &str,
    grants: &Grants<'_>,
    registry: Option<&Registry>,
) -> Result<Device, Refusal> {
    let deny = || Refusal::Denied(not_granted(requested));
    let normal = paths::normalize(requested).map_err(|_| deny())?;
    let by_name = grants
        .patterns
        .matching(&normal.to_string_lossy())
        .is_some();
    let opened = match paths::open_device(requested) {
        Ok(opened) => opened,
        // Only a granted name may say what is wrong with it.
        Err(e) if by_name => {
            let missing = !normal.exists() && normal.symlink_metadata().is_err();
            let message = format!("device {e}");
            return Err(if missing {
                Refusal::Missing(message)
            } else {
                Refusal::Denied(format!("denied: {message}"))
            });
        }
        Err(_) => return Err(deny()),
    };
    check_opened(opened, normal, requested, grants, registry)
}

/// [`authorize`] for a device already open (by the mount capability, which mounts exactly
/// that device): whether this driver holds it.
pub fn check_opened(
    opened: Opened,
    normal: PathBuf,
    requested: &str,
    grants: &Grants<'_>,
    registry: Option<&Registry>,
) -> Result<Device, Refusal> {
    let deny = || Refusal::Denied(not_granted(requested));
    let io = paths::reopen(opened.fd.as_fd(), OFlags::RDONLY | OFlags::NONBLOCK)
        .map(File::from)
        .map_err(|_| deny())?;
    let rdev = opened.stat.st_rdev;
    let diskseq = diskseq_of(io.as_fd()).map_err(|_| deny())?;
    let mut device = Device {
        opened,
        io,
        rdev,
        diskseq,
        rule: String::new(),
        requested: normal,
    };
    let own = grants
        .image_dir
        .is_some_and(|dir| dir.backs(device.io.as_fd(), rdev));
    let matched = device.matched_name();
    let pattern = grants.patterns.matching(&matched.to_string_lossy());
    device.rule = match (own, pattern) {
        (true, _) => "the driver's own image's loop device".into(),
        (false, Some(p)) if grants.call_devices.contains(&rdev) => {
            format!(
                "{} {p:?}, passed by kubelet in this call",
                grants.patterns_name
            )
        }
        (false, Some(p)) => format!("{} {p:?}", grants.patterns_name),
        (false, None) => return Err(deny()),
    };
    if let Some(registry) = registry {
        // A partition shares its disk's sequence number: a claim on the disk covers it.
        for number in std::iter::once(rdev).chain(whole_disk(rdev)) {
            match registry.holder(number, diskseq) {
                Ok(Some(holder)) if holder != grants.driver => {
                    return Err(Refusal::Denied(held_by_another(&device.shown())));
                }
                Ok(_) => {}
                Err(e) => return Err(Refusal::Denied(format!("denied: {e}"))),
            }
        }
    }
    Ok(device)
}

/// The disk sequence number of the disk behind an open block device (`BLKGETDISKSEQ`):
/// unique per disk since boot, so a reused device number is never the same disk.
pub fn diskseq_of(fd: BorrowedFd<'_>) -> Result<u64, String> {
    let mut diskseq = 0u64;
    // SAFETY: BLKGETDISKSEQ writes one u64.
    unsafe { blk_get_diskseq(fd.as_raw_fd(), &mut diskseq) }
        .map_err(|e| format!("disk sequence number: {e}"))?;
    Ok(diskseq)
}

/// Mount points of a device (by major:minor) in this mount namespace.
pub fn mount_points(major_minor: &str) -> Result<Vec<PathBuf>, String> {
    let table = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("read /proc/self/mountinfo: {e}"))?;
    Ok(table
        .lines()
        .map(|line| line.split(' ').collect::<Vec<_>>())
        .filter(|fields| fields.len() > 4 && fields[2] == major_minor)
        .map(|fields| PathBuf::from(unescape_mountinfo(fields[4])))
        .collect())
}

/// Why a device is in use, if it is: mounted, held by another device (dm, md...), has
/// partitions, or (last) the kernel refuses an exclusive open of it.
pub fn in_use(device: &Device) -> Result<Option<String>, String> {
    let shown = device.shown();
    if let Some(point) = mount_points(&device.major_minor())?.first() {
        return Ok(Some(format!("{shown} is mounted at {}", point.display())));
    }
    let sys = PathBuf::from(format!("/sys/dev/block/{}", device.major_minor()));
    if let Ok(holders) = std::fs::read_dir(sys.join("holders"))
        && let Some(holder) = holders.flatten().next()
    {
        let name = holder.file_name().to_string_lossy().into_owned();
        return Ok(Some(format!("{shown} is held by {name}")));
    }
    if let Ok(entries) = std::fs::read_dir(&sys) {
        for entry in entries.flatten() {
            if entry.path().join("partition").exists() {
                let name = entry.file_name().to_string_lossy().into_owned();
                return Ok(Some(format!("{shown} has partition {name}")));
            }
        }
    }
    // Only a probe: nothing is done through this descriptor.
    let link = paths::proc_fd_path(device.opened.fd.as_fd());
    let flags = OFlags::RDONLY | OFlags::EXCL | OFlags::CLOEXEC;
    match rustix::fs::open(&link, flags, rustix::fs::Mode::empty()) {
        Ok(_) => Ok(None),
        Err(rustix::io::Errno::BUSY) => Ok(Some(format!(
            "{shown} is busy (open exclusively elsewhere)"
        ))),
        Err(e) => Err(format!("open {shown}: {e}")),
    }
}

/// For a partition, the device number of its whole disk (a claim on the disk covers it).
fn whole_disk(rdev: u64) -> Option<u64> {
    let sys = PathBuf::from(format!("/sys/dev/block/{}", paths::major_minor(rdev)));
    if !sys.join("partition").exists() {
        return None;
    }
    let text = std::fs::read_to_string(sys.join("../dev")).ok()?;
    let (major, minor) = text.trim().split_once(':')?;
    Some(rustix::fs::makedev(
        major.parse().ok()?,
        minor.parse().ok()?,
    ))
}

/// Where on a device data lives that a file system or partition table would mean something:
/// the first and the last MiB. `Some(where)` when any byte there is not zero. Read with
/// `O_DIRECT` where the device allows it, so a stale page cache cannot hide data.
pub fn nonzero_region(device: &Device) -> Result<Option<&'static str>, String> {
    let size = device.size()?;
    let direct = paths::reopen(device.opened.fd.as_fd(), OFlags::RDONLY | OFlags::DIRECT)
        .map(File::from)
        .ok();
    let file = direct.as_ref().unwrap_or(&device.io);
    let head = size.min(MIB);
    let tail_start = size.saturating_sub(MIB).max(head);
    for (start, len, name) in [(0, head, "first"), (tail_start, size - tail_start, "last")] {
        if !all_zero(file, start, len).map_err(|e| format!("read {}: {e}", device.shown()))? {
            return Ok(Some(name));
        }
    }
    Ok(None)
}

/// Whether `len` bytes at `start` are all zero (4 KiB-aligned buffer, for `O_DIRECT`).
fn all_zero(file: &File, start: u64, len: u64) -> std::io::Result<bool> {
    #[repr(C, align(4096))]
    struct Block([u8; 64 << 10]);
    let mut buffer = Box::new(Block([0; 64 << 10]));
    let mut offset = start;
    while offset < start + len {
        let want = ((start + len - offset) as usize).min(buffer.0.len());
        // Lengths here are multiples of 512 unless the device size is not.
        let read = file.read_at(&mut buffer.0[..want], offset)?;
        if read == 0 {
            break;
        }
        if buffer.0[..read].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        offset += read as u64;
    }
    Ok(true)
}

/// Formats a device found blank. `lock` stays open in mkfs: the device is locked until mkfs
/// exits, even if `flex` is killed meanwhile.
pub fn mkfs(device: &Device, fs_type: &str, allow_nonzero: bool, lock: i32) -> Result<(), String> {
    let shown = device.shown();
    if let Some(reason) = in_use(device)? {
        return Err(format!("refused to format: {reason}"));
    }
    let found = tools::signatures(device.io.as_fd(), &shown)?;
    if let Some(kind) = tools::signature_type(&found) {
        return Err(format!(
            "refused to format {shown}: it already carries a signature ({kind})"
        ));
    }
    if !allow_nonzero && let Some(region) = nonzero_region(device)? {
        return Err(format!(
            "refused to format {shown}: it holds data (the {region} MiB is not all zero) but no signature blkid knows; it was left untouched (block.format_nonzero allows this for a device class)"
        ));
    }
    let program = match fs_type {
        "ext4" => "mkfs.ext4",
        "xfs" => "mkfs.xfs",
        other => return Err(format!("cannot create {other:?} file systems")),
    };
    let target = tools::fd_arg(device.io.as_fd());
    let keep = [device.io.as_raw_fd(), lock];
    tools::tool_ok(
        program,
        &[std::ffi::OsStr::new("-q"), target.as_ref()],
        &keep,
        &shown,
    )
    .map(drop)
}

/// The mount root at `mount_path` of the file system on `device`: opened with no symlinks,
/// and its device number is the device's. Any refusal is one sentence, whatever the path is.
pub fn mount_root_of(device: &Device, mount_path: &str) -> Result<OwnedFd, String> {
    let refuse = || {
        format!(
            "denied: {mount_path:?} is not a mount point of {}",
            device.shown()
        )
    };
    let opened = paths::open_exact(mount_path, OFlags::DIRECTORY).map_err(|_| refuse())?;
    if !opened.is_dir() || !paths::is_mount_root(opened.fd.as_fd()).unwrap_or(false) {
        return Err(refuse());
    }
    if opened.stat.st_dev != device.rdev {
        return Err(refuse());
    }
    paths::reopen(opened.fd.as_fd(), OFlags::RDONLY | OFlags::DIRECTORY).map_err(|_| refuse())
}

/// Grows the file system on `device` (mounted at `root`) to fill it.
pub fn grow(device: &Device, root: &OwnedFd) -> Result<(), String> {
    let shown = device.shown();
    let found = tools::signatures(device.io.as_fd(), &shown)?;
    match tools::signature_type(&found).as_deref() {
        Some("ext4") => {
            let target = tools::fd_arg(device.io.as_fd());
            tools::tool_ok(
                "resize2fs",
                &[target.as_ref()],
                &[device.io.as_raw_fd()],
                &shown,
            )
            .map_err(|e| match tools::has_cap_sys_resource() {
                false => format!(
                    "{e} (growing a mounted ext4 needs CAP_SYS_RESOURCE, which flex does not have)"
                ),
                true => e,
            })
        }
        Some("xfs") => {
            let target = tools::fd_arg(root.as_fd());
            tools::tool_ok(
                "xfs_growfs",
                &[target.as_ref()],
                &[root.as_raw_fd()],
                &shown,
            )
        }
        other => Err(format!(
            "cannot grow {shown}: file system {other:?} is not ext4 or xfs"
        )),
    }
    .map(drop)
}
