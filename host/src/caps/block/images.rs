//! Loop-backed images: files the driver names (no `/`, no leading dot) inside
//! `block.image_dir`, and the loop devices they are attached to.
//!
//! The image dir is opened once per call with no symlink anywhere on its path, refused when
//! anyone but root could change it or a directory above it, and created (0700, `mkdirat`
//! beneath the existing parent) only by `create-image`. Image files are opened beneath that
//! descriptor (`O_NOFOLLOW`, no symlinks, no `..`), must be regular files owned by root with
//! one link, and every operation works on the descriptor: the loop device is configured from
//! it (`LOOP_CONFIGURE`), never from a path, and a delete unlinks the name only after checking
//! it still names the locked inode. Image operations hold an exclusive `flock` on the image,
//! so concurrent attaches of one image never create two loop devices and a delete cannot race
//! an attach.
//!
//! Which loop devices belong to an image is read from sysfs (`backing_file`, the kernel's
//! path of the backing file) and confirmed on the device itself (`LOOP_GET_STATUS64`: the
//! backing file's device and inode).

use super::locks::flock;
use crate::caps::paths::{self, Opened};
use linux_raw_sys::loop_device as lo;
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Longest image name.
pub const MAX_NAME: usize = 128;
/// The loop block driver's major number.
pub const LOOP_MAJOR: u32 = 7;

nix::ioctl_none_bad!(loop_ctl_get_free, lo::LOOP_CTL_GET_FREE);
nix::ioctl_write_ptr_bad!(loop_configure, lo::LOOP_CONFIGURE, lo::loop_config);
nix::ioctl_read_bad!(loop_get_status64, lo::LOOP_GET_STATUS64, lo::loop_info64);
nix::ioctl_none_bad!(loop_clr_fd, lo::LOOP_CLR_FD);
nix::ioctl_none_bad!(loop_set_capacity, lo::LOOP_SET_CAPACITY);

pub fn check_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "denied: invalid image name {name:?} (1 to {MAX_NAME} of [A-Za-z0-9._-], no leading dot)"
        ))
    }
}

/// The image directory of this call.
pub struct ImageDir {
    pub fd: OwnedFd,
    /// Where the kernel says it is: what sysfs shows as the directory of backing files.
    pub real: PathBuf,
}

/// An image, opened read-write and locked.
pub struct Image {
    pub file: File,
    pub stat: Stat,
    /// The kernel's path of the file (sysfs `backing_file` of its loop devices).
    pub real: PathBuf,
}

impl ImageDir {
    /// Opens `dir` (`create`: creating it and missing parents, 0700); `None` if it does not
    /// exist and is not to be created.
    pub fn open(dir: &Path, create: bool) -> Result<Option<ImageDir>, String> {
        let text = dir.to_string_lossy();
        let opened = match paths::open_exact(&text, OFlags::DIRECTORY) {
            Ok(opened) => opened,
            Err(_) if create => paths::create_dir_all(&text, Mode::from_raw_mode(0o700))?,
            Err(_) if !dir.exists() => return Ok(None),
            Err(e) => return Err(format!("denied: block.image_dir {e}")),
        };
        Self::check(opened, dir).map(Some)
    }

    /// Another descriptor of the same directory, to move into an operation.
    pub fn duplicate(&self) -> Result<ImageDir, String> {
        let fd = rustix::io::fcntl_dupfd_cloexec(&self.fd, 0)
            .map_err(|e| format!("{}: {e}", self.real.display()))?;
        Ok(ImageDir {
            fd,
            real: self.real.clone(),
        })
    }

    fn check(opened: Opened, dir: &Path) -> Result<ImageDir, String> {
        if !opened.is_dir() {
            return Err(format!(
                "denied: block.image_dir {} is not a directory",
                dir.display()
            ));
        }
        paths::check_root_only(opened.fd.as_fd(), dir)
            .map_err(|e| format!("denied: block.image_dir: {e}"))?;
        let real = paths::fd_path(opened.fd.as_fd())?;
        Ok(ImageDir {
            fd: opened.fd,
            real,
        })
    }

    /// What an image is without opening it for writing: its `stat`, `None` if missing.
    pub fn peek(&self, name: &str) -> Result<Option<(OwnedFd, Stat)>, String> {
        match paths::open_beneath(self.fd.as_fd(), name, OFlags::PATH, Mode::empty()) {
            Ok(fd) => {
                let stat = rustix::fs::fstat(&fd).map_err(|e| format!("image {name}: {e}"))?;
                check_file(&stat, name)?;
                Ok(Some((fd, stat)))
            }
            Err(_) if self.missing(name) => Ok(None),
            Err(e) => Err(format!("image {e}")),
        }
    }

    fn missing(&self, name: &str) -> bool {
        matches!(
            rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW),
            Err(rustix::io::Errno::NOENT)
        )
    }

    /// Opens (or creates, 0600) an image read-write and locks it; `None` if it is missing.
    /// An image deleted or replaced while this call waited for its lock is opened again, so
    /// the lock is always on the file the name names.
    pub fn open_image(
        &self,
        name: &str,
        create: bool,
        wait: Duration,
    ) -> Result<Option<Image>, String> {
        loop {
            // openat2 refuses a mode without O_CREAT.
            let (flags, mode) = match create {
                true => (OFlags::RDWR | OFlags::CREATE, Mode::from_raw_mode(0o600)),
                false => (OFlags::RDWR, Mode::empty()),
            };
            let fd = match paths::open_beneath(self.fd.as_fd(), name, flags, mode) {
                Ok(fd) => fd,
                Err(_) if !create && self.missing(name) => return Ok(None),
                Err(e) => return Err(format!("image {e}")),
            };
            flock(fd.as_fd(), &format!("image {name}"), wait)?;
            let stat = rustix::fs::fstat(&fd).map_err(|e| format!("image {name}: {e}"))?;
            if stat.st_nlink == 0 || !self.names(name, &stat) {
                continue;
            }
            check_file(&stat, name)?;
            let real = paths::fd_path(fd.as_fd())?;
            return Ok(Some(Image {
                file: File::from(fd),
                stat,
                real,
            }));
        }
    }

    /// Whether `name` names the inode `stat` describes (now).
    pub fn names(&self, name: &str, stat: &Stat) -> bool {
        rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW)
            .is_ok_and(|now| (now.st_dev, now.st_ino) == (stat.st_dev, stat.st_ino))
    }

    /// Unlinks `name` if it still names the locked image.
    pub fn delete(&self, name: &str, image: &Image) -> Result<(), String> {
        if !self.names(name, &image.stat) {
            return Err(format!(
                "image {name} was replaced while it was being deleted"
            ));
        }
        rustix::fs::unlinkat(&self.fd, name, AtFlags::empty())
            .map_err(|e| format!("delete image {name}: {e}"))
    }

    /// Whether the loop device behind `device` (an open descriptor) is backed by an image of
    /// this directory: its backing file's name is an image name here, and that name's inode is
    /// the one the loop device reports.
    pub fn backs(&self, device: BorrowedFd<'_>, rdev: u64) -> bool {
        if rustix::fs::major(rdev) != LOOP_MAJOR {
            return false;
        }
        let Some(backing) = backing_file(rdev) else {
            return false;
        };
        let (Some(parent), Some(name)) = (backing.parent(), backing.file_name()) else {
            return false;
        };
        let name = name.to_string_lossy();
        if parent != self.real || check_name(&name).is_err() {
            return false;
        }
        let Ok(stat) = rustix::fs::statat(&self.fd, &*name, AtFlags::SYMLINK_NOFOLLOW) else {
            return false;
        };
        check_file(&stat, &name).is_ok() && status_matches(device, &stat)
    }
}

/// An image must be a regular file owned by root with no other link.
fn check_file(stat: &Stat, name: &str) -> Result<(), String> {
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        return Err(format!("image {name} is not a regular file"));
    }
    if stat.st_uid != 0 || stat.st_nlink > 1 {
        return Err(format!(
            "image {name} is not a file only root created (owner or other links)"
        ));
    }
    Ok(())
}

/// The backing file of a loop device, from sysfs; `None` when it has none (or it was deleted).
fn backing_file(rdev: u64) -> Option<PathBuf> {
    let path = format!(
        "/sys/dev/block/{}/loop/backing_file",
        paths::major_minor(rdev)
    );
    let text = std::fs::read(path).ok()?;
    let text = text.strip_suffix(b"\n").unwrap_or(&text);
    if text.ends_with(b" (deleted)") {
        return None;
    }
    Some(PathBuf::from(String::from_utf8_lossy(text).into_owned()))
}

/// Whether the loop device open as `device` is backed by the file `stat` describes.
fn status_matches(device: BorrowedFd<'_>, stat: &Stat) -> bool {
    let mut info = std::mem::MaybeUninit::<lo::loop_info64>::zeroed();
    // SAFETY: LOOP_GET_STATUS64 writes one loop_info64 into the buffer we pass.
    let ok = unsafe { loop_get_status64(device.as_raw_fd(), info.as_mut_ptr()) }.is_ok();
    // SAFETY: zero-initialised, and filled by the kernel when ok.
    let info = unsafe { info.assume_init() };
    ok && info.lo_device == stat.st_dev && info.lo_inode == stat.st_ino
}

/// A loop device, opened read-only for ioctls.
pub struct LoopDevice {
    pub path: String,
    pub rdev: u64,
    pub fd: OwnedFd,
}

/// Opens `/dev/loopN` and checks it is loop device N.
fn open_loop(number: u32, flags: OFlags) -> Result<LoopDevice, String> {
    let path = format!("/dev/loop{number}");
    let opened = paths::open_device(&path)?;
    let rdev = opened.stat.st_rdev;
    if (rustix::fs::major(rdev), rustix::fs::minor(rdev)) != (LOOP_MAJOR, number) {
        return Err(format!("{path} is not loop device {number}"));
    }
    let fd = paths::reopen(opened.fd.as_fd(), flags)?;
    Ok(LoopDevice { path, rdev, fd })
}

/// The loop devices attached to `image`, confirmed on each device.
pub fn devices_of(image_real: &Path, stat: &Stat) -> Vec<LoopDevice> {
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    let mut found: Vec<LoopDevice> = entries
        .flatten()
        .filter_map(|e| {
            let number: u32 = e.file_name().to_str()?.strip_prefix("loop")?.parse().ok()?;
            let rdev = rustix::fs::makedev(LOOP_MAJOR, number);
            (backing_file(rdev)? == image_real).then_some(number)
        })
        .filter_map(|number| open_loop(number, OFlags::RDONLY).ok())
        .filter(|device| status_matches(device.fd.as_fd(), stat))
        .collect();
    found.sort_by_key(|d| d.rdev);
    found
}

/// Attaches `image` to a free loop device through its descriptor (`LOOP_CONFIGURE`, no
/// autoclear, no partition scan). Another process taking the same free device first makes
/// the ioctl fail with `EBUSY`: then the next free one is tried.
pub fn attach(image: &Image, name: &str) -> Result<LoopDevice, String> {
    let control = paths::open_exact("/dev/loop-control", OFlags::empty())
        .and_then(|c| paths::reopen(c.fd.as_fd(), OFlags::RDWR))?;
    let mut info: lo::loop_info64 = unsafe { std::mem::zeroed() };
    for (slot, byte) in info.lo_file_name.iter_mut().zip(name.bytes().take(63)) {
        *slot = byte;
    }
    // The loop device keeps the open file it is given: a second open of the image, so the
    // image's lock (on the first) ends with this call.
    let backing = paths::reopen(image.file.as_fd(), OFlags::RDWR)?;
    let config = lo::loop_config {
        fd: backing.as_raw_fd() as u32,
        block_size: 0,
        info,
        __reserved: [0; 8],
    };
    for _ in 0..32 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number.
        let number = unsafe { loop_ctl_get_free(control.as_raw_fd()) }
            .map_err(|e| format!("no free loop device: {e}"))?;
        let device = open_loop(number as u32, OFlags::RDWR)?;
        // SAFETY: LOOP_CONFIGURE reads one loop_config, which lives until the call returns.
        match unsafe { loop_configure(device.fd.as_raw_fd(), &config) } {
            Ok(_) => return Ok(device),
            Err(nix::errno::Errno::EBUSY) => continue,
            Err(e) => return Err(format!("attach image {name} to {}: {e}", device.path)),
        }
    }
    Err(format!(
        "attach image {name}: every free loop device was taken by someone else"
    ))
}

/// Detaches a loop device and waits until the kernel has let go of it (it is cleared on its
/// last close: ours, or that of someone still holding it, such as udev's probe).
pub fn detach(device: LoopDevice, image: &Image) -> Result<(), String> {
    // SAFETY: LOOP_CLR_FD takes no argument.
    unsafe { loop_clr_fd(device.fd.as_raw_fd()) }
        .map_err(|e| format!("detach {}: {e}", device.path))?;
    // The kernel clears the device on its last close, ours included.
    drop(device.fd);
    let deadline = Instant::now() + Duration::from_secs(5);
    while backing_file(device.rdev).is_some_and(|b| b == image.real) {
        if Instant::now() > deadline {
            return Err(format!("{} is still attached after detach", device.path));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Makes a loop device see its image's new size.
pub fn refresh_size(device: &LoopDevice) -> Result<(), String> {
    // SAFETY: LOOP_SET_CAPACITY takes no argument.
    unsafe { loop_set_capacity(device.fd.as_raw_fd()) }
        .map(drop)
        .map_err(|e| format!("resize {}: {e}", device.path))
}

/// The device a real attach would most likely get, without allocating one (a dry run): the
/// lowest loop device with no backing file, or the next number.
pub fn free_device_guess() -> String {
    let numbers: Vec<u32> = std::fs::read_dir("/sys/block")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("loop")?.parse().ok())
        .collect();
    // A configured loop device has a `loop` directory in sysfs.
    let free = numbers
        .iter()
        .filter(|&&n| !Path::new(&format!("/sys/block/loop{n}/loop")).exists())
        .min()
        .copied();
    let number = free.unwrap_or_else(|| numbers.iter().max().map_or(0, |m| m + 1));
    format!("/dev/loop{number}")
}
