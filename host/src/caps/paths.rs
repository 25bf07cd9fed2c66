//! Path handling for every capability: resolve once to a file descriptor, check the
//! descriptor, act through it.
//!
//! A path string checked and later used again is re-resolved by the kernel in between, and a
//! concurrent call of the same driver (or anyone who can rename a path component) can swap a
//! component in that window. So a capability turns each path the driver names into a
//! descriptor here, exactly once, checks what that descriptor is (type, owner, mode, device,
//! where it lies), and then performs the privileged act on the descriptor: `*at` calls beneath
//! a directory descriptor, `move_mount`/`open_tree` on descriptors, `/proc/self/fd/N` only where
//! the kernel interface takes nothing but a path.
//!
//! Resolution never follows a symlink or a magic link the driver could have planted:
//! - [`open_exact`]: an absolute path walked from `/` with no symlink anywhere
//!   (`RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS`), after a lexical check that refuses `.`,
//!   `..` and empty components. Used for kubelet's directories and for policy-granted paths.
//! - [`open_beneath`]: a relative name beneath an open directory (`RESOLVE_BENEATH` as well),
//!   for image and state files.
//! - [`open_device`]: device paths, which legitimately are udev symlinks (`/dev/disk/by-id/…`):
//!   only under `/dev` (root's namespace), symlinks followed but never magic links, and the
//!   result must be a block device; its canonical name is read back from the descriptor.

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Stat};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

/// A descriptor opened by this module, with the path it was opened by and what it is.
#[derive(Debug)]
pub struct Opened {
    pub fd: OwnedFd,
    /// For [`open_exact`] the normalised request; for [`open_device`] the canonical name.
    pub path: PathBuf,
    pub stat: Stat,
}

impl Opened {
    pub fn file_type(&self) -> FileType {
        FileType::from_raw_mode(self.stat.st_mode)
    }

    pub fn is_dir(&self) -> bool {
        self.file_type() == FileType::Directory
    }
}

const NO_LINKS: ResolveFlags = ResolveFlags::NO_SYMLINKS.union(ResolveFlags::NO_MAGICLINKS);

/// An absolute path in normal form: `/`-separated names, none of them `.` or `..`, no empty
/// component, no NUL. Refusing `..` lexically means a check on the string is a check on where
/// the kernel will walk.
pub fn normalize(path: &str) -> Result<PathBuf, String> {
    if !path.starts_with('/') {
        return Err(format!("{path:?} is not an absolute path"));
    }
    if path.contains('\0') {
        return Err("a path may not contain NUL".into());
    }
    let mut normal = PathBuf::from("/");
    for component in Path::new(path).components() {
        match component {
            Component::RootDir => {}
            Component::Normal(name) => normal.push(name),
            Component::CurDir | Component::ParentDir | Component::Prefix(_) => {
                return Err(format!("{path:?} contains `.` or `..`"));
            }
        }
    }
    // `Path::components` silently drops `/./` and repeated slashes; refuse them too, so the
    // string the policy matched is byte for byte the one resolved.
    let canonical_text = normal.to_string_lossy();
    let trimmed = path
        .strip_suffix('/')
        .filter(|p| !p.is_empty())
        .unwrap_or(path);
    if canonical_text != trimmed {
        return Err(format!("{path:?} is not in normal form (`//`, `/./`)"));
    }
    Ok(normal)
}

fn errno_text(e: rustix::io::Errno, shown: &Path) -> String {
    match e {
        rustix::io::Errno::LOOP | rustix::io::Errno::XDEV => {
            format!("{}: the path crosses a symlink", shown.display())
        }
        other => format!("{}: {}", shown.display(), std::io::Error::from(other)),
    }
}

/// Opens an absolute path with no symlink (or magic link) anywhere along it, the last
/// component included, as an `O_PATH` reference (`flags` may add `O_DIRECTORY`); [`reopen`]
/// turns it into a descriptor for reading or writing the same object.
pub fn open_exact(path: &str, flags: OFlags) -> Result<Opened, String> {
    let normal = normalize(path)?;
    // No O_NOFOLLOW: with O_PATH it would open a final symlink itself instead of refusing it.
    let flags = flags | OFlags::PATH | OFlags::CLOEXEC;
    let fd = rustix::fs::openat2(rustix::fs::CWD, &normal, flags, Mode::empty(), NO_LINKS)
        .map_err(|e| errno_text(e, &normal))?;
    let stat = rustix::fs::fstat(&fd).map_err(|e| errno_text(e, &normal))?;
    Ok(Opened {
        fd,
        path: normal,
        stat,
    })
}

/// Opens `name` (relative, normal form) beneath the directory `dir`: no `..` out of it, no
/// symlinks, no magic links, no absolute paths.
pub fn open_beneath(
    dir: BorrowedFd<'_>,
    name: &str,
    flags: OFlags,
    mode: Mode,
) -> Result<OwnedFd, String> {
    if name.is_empty() || name.starts_with('/') {
        return Err(format!("{name:?} is not a relative path"));
    }
    normalize(&format!("/{name}"))?;
    rustix::fs::openat2(
        dir,
        name,
        flags | OFlags::CLOEXEC,
        mode,
        NO_LINKS | ResolveFlags::BENEATH,
    )
    .map_err(|e| errno_text(e, Path::new(name)))
}

/// Opens a block device by a path under `/dev`. Symlinks are followed (udev's
/// `/dev/disk/by-id/…` names are symlinks, and only root writes under `/dev`), magic links are
/// not. The descriptor is `O_PATH`; `path` is the canonical name it has (`/dev/loop3`).
pub fn open_device(requested: &str) -> Result<Opened, String> {
    let normal = normalize(requested)?;
    if !normal.starts_with("/dev/") {
        return Err(format!("device {requested:?} is not under /dev"));
    }
    let fd = rustix::fs::openat2(
        rustix::fs::CWD,
        &normal,
        OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::NO_MAGICLINKS,
    )
    .map_err(|e| errno_text(e, &normal))?;
    let stat = rustix::fs::fstat(&fd).map_err(|e| errno_text(e, &normal))?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::BlockDevice {
        return Err(format!("{requested} is not a block device"));
    }
    let path = fd_path(fd.as_fd())?;
    Ok(Opened { fd, path, stat })
}

/// The path a descriptor names now, as the kernel reports it.
pub fn fd_path(fd: BorrowedFd<'_>) -> Result<PathBuf, String> {
    let link = proc_fd_path(fd);
    std::fs::read_link(&link).map_err(|e| format!("{link}: {e}"))
}

/// `/proc/self/fd/N`: hands a checked descriptor to an interface that takes only a path (the
/// magic link resolves to exactly the open object, never to a new lookup of its name).
pub fn proc_fd_path(fd: BorrowedFd<'_>) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// Refuses a directory that someone other than root could change or swap: it must be owned by
/// root and writable by root alone, and each directory above it owned by root and either
/// writable by root alone or sticky (as `/tmp` is: others cannot rename or remove an entry
/// they do not own). Walks up through `..` from the descriptor, so no name is looked up again.
pub fn check_root_only(dir: BorrowedFd<'_>, shown: &Path) -> Result<(), String> {
    let stat = rustix::fs::fstat(dir).map_err(|e| format!("{}: {e}", shown.display()))?;
    if stat.st_uid != 0 || stat.st_mode & 0o022 != 0 {
        return Err(format!(
            "{} is writable by users other than root",
            shown.display()
        ));
    }
    check_ancestors_root_only(dir, shown)
}

/// The part of [`check_root_only`] above `dir`: nobody but root can rename `dir` away or swap
/// something in under its name, whatever `dir` itself allows (a mounted tmpfs root is 1777).
pub fn check_ancestors_root_only(dir: BorrowedFd<'_>, shown: &Path) -> Result<(), String> {
    let failed = |e: rustix::io::Errno| format!("{}: {e}", shown.display());
    let mut current: OwnedFd = rustix::io::fcntl_dupfd_cloexec(dir, 0).map_err(failed)?;
    let mut stat = rustix::fs::fstat(&current).map_err(failed)?;
    for _ in 0..256 {
        let parent = rustix::fs::openat(
            &current,
            "..",
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(failed)?;
        let parent_stat = rustix::fs::fstat(&parent).map_err(failed)?;
        if parent_stat.st_dev == stat.st_dev && parent_stat.st_ino == stat.st_ino {
            return Ok(()); // `/`
        }
        let sticky = parent_stat.st_mode & 0o1000 != 0;
        if parent_stat.st_uid != 0 || (parent_stat.st_mode & 0o022 != 0 && !sticky) {
            return Err(format!(
                "{}: a directory above it is writable by users other than root",
                shown.display()
            ));
        }
        (current, stat) = (parent, parent_stat);
    }
    Err(format!("{}: too deep", shown.display()))
}

/// Whether the descriptor is the root of a mount (bind mounts included).
pub fn is_mount_root(fd: BorrowedFd<'_>) -> Result<bool, String> {
    use rustix::fs::{StatxAttributes, StatxFlags};
    let statx = rustix::fs::statx(fd, "", AtFlags::EMPTY_PATH, StatxFlags::BASIC_STATS)
        .map_err(|e| format!("statx: {e}"))?;
    let known = StatxAttributes::from_bits_retain(statx.stx_attributes_mask.bits());
    if !known.contains(StatxAttributes::MOUNT_ROOT) {
        return Err("this kernel does not report mount roots (statx)".into());
    }
    Ok(statx.stx_attributes.contains(StatxAttributes::MOUNT_ROOT))
}

/// Opens the object behind `fd` (often `O_PATH`) again with real access `flags`, through its
/// `/proc/self/fd/N` magic link, and checks the new descriptor names the same inode (device,
/// inode and, for device nodes, device number): no name is looked up again.
pub fn reopen(fd: BorrowedFd<'_>, flags: OFlags) -> Result<OwnedFd, String> {
    let link = proc_fd_path(fd);
    let reopened = rustix::fs::open(&link, flags | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| format!("reopen {link}: {}", std::io::Error::from(e)))?;
    let (old, new) = (
        rustix::fs::fstat(fd).map_err(|e| format!("{link}: {e}"))?,
        rustix::fs::fstat(&reopened).map_err(|e| format!("{link}: {e}"))?,
    );
    if (old.st_dev, old.st_ino, old.st_rdev) != (new.st_dev, new.st_ino, new.st_rdev) {
        return Err(format!("{link} changed while it was reopened"));
    }
    Ok(reopened)
}

/// [`open_exact`] for a directory, creating each missing component (with `mode`) by `mkdirat`
/// beneath its parent's descriptor, so no component is ever a symlink or looked up twice.
/// Returns the `O_PATH` descriptor of the last one.
pub fn create_dir_all(path: &str, mode: Mode) -> Result<Opened, String> {
    let normal = normalize(path)?;
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW;
    let mut dir = rustix::fs::openat2(rustix::fs::CWD, "/", flags, Mode::empty(), NO_LINKS)
        .map_err(|e| errno_text(e, &normal))?;
    for name in normal.iter().skip(1) {
        let open = |parent: &OwnedFd| {
            let beneath = NO_LINKS | ResolveFlags::BENEATH;
            rustix::fs::openat2(parent, name, flags, Mode::empty(), beneath)
        };
        dir = match open(&dir) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => {
                match rustix::fs::mkdirat(&dir, name, mode) {
                    Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                    Err(e) => return Err(errno_text(e, &normal)),
                }
                open(&dir).map_err(|e| errno_text(e, &normal))?
            }
            // `O_DIRECTORY | O_NOFOLLOW` on a symlink says "not a directory": say what it is.
            Err(rustix::io::Errno::NOTDIR)
                if rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW)
                    .is_ok_and(|s| FileType::from_raw_mode(s.st_mode) == FileType::Symlink) =>
            {
                return Err(errno_text(rustix::io::Errno::LOOP, &normal));
            }
            Err(e) => return Err(errno_text(e, &normal)),
        };
    }
    let stat = rustix::fs::fstat(&dir).map_err(|e| errno_text(e, &normal))?;
    Ok(Opened {
        fd: dir,
        path: normal,
        stat,
    })
}

/// `dev_t` as `major:minor`, the form mountinfo and sysfs use.
pub fn major_minor(rdev: u64) -> String {
    format!("{}:{}", rustix::fs::major(rdev), rustix::fs::minor(rdev))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_form_only() {
        assert_eq!(normalize("/a/b"), Ok(PathBuf::from("/a/b")));
        assert_eq!(normalize("/a/b/"), Ok(PathBuf::from("/a/b")));
        assert_eq!(normalize("/"), Ok(PathBuf::from("/")));
        for bad in [
            "a/b", "/a/../b", "/a/./b", "//a", "/a//b", "/a/..", "", "/a\0b",
        ] {
            assert!(normalize(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn symlinks_are_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, dir.path().join("link")).unwrap();
        let base = dir.path().to_str().unwrap();
        assert!(open_exact(&format!("{base}/real"), OFlags::DIRECTORY).is_ok());
        let err = open_exact(&format!("{base}/link"), OFlags::DIRECTORY).unwrap_err();
        assert!(err.contains("symlink"), "{err}");
        let err = open_exact(&format!("{base}/link/x"), OFlags::empty()).unwrap_err();
        assert!(err.contains("symlink"), "{err}");

        let root = open_exact(base, OFlags::DIRECTORY).unwrap();
        assert!(open_beneath(root.fd.as_fd(), "real", OFlags::PATH, Mode::empty()).is_ok());
        for bad in ["link", "../x", "/etc", "real/../../x"] {
            assert!(
                open_beneath(root.fd.as_fd(), bad, OFlags::PATH, Mode::empty()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn devices_are_block_devices_under_dev() {
        assert!(
            open_device("/dev/null")
                .unwrap_err()
                .contains("not a block device")
        );
        assert!(
            open_device("/tmp/x")
                .unwrap_err()
                .contains("not under /dev")
        );
        assert!(open_device("/dev/../etc/passwd").is_err());
        // /dev/fd is a symlink to /proc/self/fd: magic links are refused.
        assert!(open_device("/dev/fd/0").is_err());
    }

    #[test]
    fn root_only_directories() {
        let root = open_exact("/usr", OFlags::DIRECTORY).unwrap();
        assert_eq!(check_root_only(root.fd.as_fd(), Path::new("/usr")), Ok(()));
        let tmp = open_exact("/tmp", OFlags::DIRECTORY).unwrap();
        assert!(check_root_only(tmp.fd.as_fd(), Path::new("/tmp")).is_err());
        // A root-owned 0700 directory inside sticky /tmp cannot be swapped by others.
        let private = tempfile::tempdir().unwrap();
        let opened = open_exact(private.path().to_str().unwrap(), OFlags::DIRECTORY).unwrap();
        assert_eq!(check_root_only(opened.fd.as_fd(), private.path()), Ok(()));
        let open_dir = private.path().join("open");
        std::fs::create_dir(&open_dir).unwrap();
        std::fs::set_permissions(
            &open_dir,
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .unwrap();
        let inner = open_dir.join("inner");
        std::fs::create_dir(&inner).unwrap();
        let opened = open_exact(inner.to_str().unwrap(), OFlags::DIRECTORY).unwrap();
        assert!(check_root_only(opened.fd.as_fd(), &inner).is_err());
        let proc_root = open_exact("/proc", OFlags::DIRECTORY).unwrap();
        assert!(is_mount_root(proc_root.fd.as_fd()).unwrap());
        let err = open_exact("/proc/self", OFlags::empty()).unwrap_err();
        assert!(err.contains("symlink"), "{err}");
    }
}
