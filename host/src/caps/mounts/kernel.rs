//! The new mount API, on descriptors only: `fsopen`/`fsconfig`/`fsmount` for a new file
//! system, `open_tree` for a bind, `mount_setattr` for flags, `move_mount` to attach, `fspick`
//! to reconfigure. Every target and bind source is a descriptor the caller resolved and
//! checked; nothing here looks a path up again.

use super::options::Applied;
use rustix::mount::{
    FsMountFlags, FsOpenFlags, FsPickFlags, MountAttrFlags, MoveMountFlags, OpenTreeFlags,
};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

fn io(what: &str, e: rustix::io::Errno) -> String {
    format!("{what}: {}", std::io::Error::from(e))
}

/// Creates a file system of `fs_type` from `source` with the applied options, as a detached
/// mount; `expect_device` (a `dev_t`) is checked against the new file system before anything
/// is attached, so the mounted device is the one that was checked.
pub fn new_mount(
    fs_type: &str,
    source: &str,
    options: &Applied,
    expect_device: Option<u64>,
) -> Result<OwnedFd, String> {
    let fs = rustix::mount::fsopen(fs_type, FsOpenFlags::FSOPEN_CLOEXEC)
        .map_err(|e| io(&format!("fsopen {fs_type}"), e))?;
    let config = |result: rustix::io::Result<()>, what: &str| {
        result.map_err(|e| {
            let detail = kernel_message(fs.as_fd());
            format!("{fs_type} {what}: {}{detail}", std::io::Error::from(e))
        })
    };
    config(
        rustix::mount::fsconfig_set_string(&fs, "source", source),
        &format!("source {source}"),
    )?;
    if options.set.contains(MountAttrFlags::MOUNT_ATTR_RDONLY) {
        // Read-only superblock too, so no journal replay writes to the device.
        config(rustix::mount::fsconfig_set_flag(&fs, "ro"), "option ro")?;
    }
    for flag in &options.superblock_flags {
        config(
            rustix::mount::fsconfig_set_flag(&fs, flag.as_str()),
            &format!("option {flag}"),
        )?;
    }
    for (key, value) in &options.params {
        let what = format!("option {key}");
        match value {
            Some(value) => config(
                rustix::mount::fsconfig_set_string(&fs, key.as_str(), value.as_str()),
                &what,
            )?,
            None => config(rustix::mount::fsconfig_set_flag(&fs, key.as_str()), &what)?,
        }
    }
    config(rustix::mount::fsconfig_create(&fs), "create")?;
    let mount = rustix::mount::fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, options.mount_attrs())
        .map_err(|e| io("fsmount", e))?;
    if let Some(expected) = expect_device {
        let stat = rustix::fs::fstat(&mount).map_err(|e| io("fstat", e))?;
        if stat.st_dev != expected {
            return Err(format!(
                "refused: the file system is on device {}, not the checked device {}",
                crate::caps::paths::major_minor(stat.st_dev),
                crate::caps::paths::major_minor(expected)
            ));
        }
    }
    Ok(mount)
}

/// A detached, non-recursive copy of the mount at `source` (submounts stay behind), with the
/// applied flags.
pub fn bind_tree(source: BorrowedFd<'_>, options: &Applied) -> Result<OwnedFd, String> {
    let tree = rustix::mount::open_tree(
        source,
        "",
        OpenTreeFlags::OPEN_TREE_CLONE
            | OpenTreeFlags::OPEN_TREE_CLOEXEC
            | OpenTreeFlags::AT_EMPTY_PATH,
    )
    .map_err(|e| io("open_tree", e))?;
    set_attributes(tree.as_fd(), options)?;
    Ok(tree)
}

/// Attaches a detached mount onto the target directory.
pub fn attach(mount: BorrowedFd<'_>, target: BorrowedFd<'_>) -> Result<(), String> {
    rustix::mount::move_mount(
        mount,
        "",
        target,
        "",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    )
    .map_err(|e| io("move_mount", e))
}

/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Sets and clears per-mount flags on the mount whose root `mount` is (rustix has no
/// `mount_setattr` yet, so this one system call is made directly).
pub fn set_attributes(mount: BorrowedFd<'_>, options: &Applied) -> Result<(), String> {
    let mut clear = options.clear;
    let mut set = options.set;
    if let Some(atime) = options.atime {
        // The atime mode is a field, not a flag: clear the field, then set the mode.
        clear |= MountAttrFlags::MOUNT_ATTR__ATIME;
        set |= atime;
    }
    if set.is_empty() && clear.is_empty() {
        return Ok(());
    }
    let attr = MountAttr {
        attr_set: u64::from(set.bits()),
        attr_clr: u64::from(clear.bits()),
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: a valid descriptor, a NUL-terminated empty path, and a `mount_attr` of the size
    // passed, which the kernel only reads.
    let result = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_mount_setattr,
            mount.as_raw_fd(),
            c"".as_ptr(),
            nix::libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if result != 0 {
        return Err(format!(
            "mount_setattr: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Changes file system parameters of the mounted file system whose root `mount` is.
pub fn reconfigure(mount: BorrowedFd<'_>, options: &Applied) -> Result<(), String> {
    if options.params.is_empty() && options.superblock_flags.is_empty() {
        return Ok(());
    }
    let fs = rustix::mount::fspick(
        mount,
        "",
        FsPickFlags::FSPICK_EMPTY_PATH | FsPickFlags::FSPICK_CLOEXEC,
    )
    .map_err(|e| io("fspick", e))?;
    for flag in &options.superblock_flags {
        rustix::mount::fsconfig_set_flag(&fs, flag.as_str())
            .map_err(|e| io(&format!("option {flag}"), e))?;
    }
    for (key, value) in &options.params {
        match value {
            Some(value) => rustix::mount::fsconfig_set_string(&fs, key.as_str(), value.as_str()),
            None => rustix::mount::fsconfig_set_flag(&fs, key.as_str()),
        }
        .map_err(|e| io(&format!("option {key}"), e))?;
    }
    rustix::mount::fsconfig_reconfigure(&fs).map_err(|e| {
        let detail = kernel_message(fs.as_fd());
        format!("reconfigure: {}{detail}", std::io::Error::from(e))
    })
}

/// Unmounts the mount at one of kubelet's directories. This is the one act by name: the
/// kernel's only unmount by descriptor is a lazy detach (an open descriptor keeps the mount
/// busy), which would hide a busy volume. The caller checked, on a descriptor it has since
/// closed, that the name is the mount root it means; the name is kubelet's own directory
/// (components only root writes) and `UMOUNT_NOFOLLOW` refuses a symlink as its last part.
///
/// A mount can be busy for a moment only: a process that forks while it holds a file in the
/// volume (kubelet's own, or any other) keeps the file open in the child until that child's
/// exec closes it. `EBUSY` is therefore retried for up to `BUSY_RETRY` before it is the answer.
pub fn unmount(target: &std::path::Path) -> Result<(), String> {
    let started = std::time::Instant::now();
    let mut pause = std::time::Duration::from_millis(5);
    loop {
        match rustix::mount::unmount(target, rustix::mount::UnmountFlags::NOFOLLOW) {
            Err(rustix::io::Errno::BUSY) if started.elapsed() + pause <= BUSY_RETRY => {
                std::thread::sleep(pause);
                pause *= 2;
            }
            result => {
                return result.map_err(|e| io(&format!("umount {}", target.display()), e));
            }
        }
    }
}

/// How long an unmount waits out a busy mount: far longer than a fork-to-exec, far shorter
/// than kubelet's retry.
pub const BUSY_RETRY: std::time::Duration = std::time::Duration::from_millis(400);

/// The kernel's own explanation of a failed `fsconfig`, read from the context descriptor.
fn kernel_message(fs: BorrowedFd<'_>) -> String {
    let mut buffer = [0u8; 512];
    match rustix::io::read(fs, &mut buffer) {
        Ok(n) if n > 2 => {
            let text = String::from_utf8_lossy(&buffer[..n]);
            // "e <message>": keep the message only.
            format!(" ({})", text.get(2..).unwrap_or("").trim())
        }
        _ => String::new(),
    }
}
