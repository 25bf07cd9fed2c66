//! The scratch node of one run: a root-only directory holding a kubelet root (pod volume
//! directories, device mount paths) and, for flex drivers, the policy, log, state, cache, run
//! and image directories, so nothing touches the node's own. Torn down at the end whatever
//! happened: everything mounted under it unmounted, loop devices backed by files under it
//! detached, and only then removed, never through a mount.

use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

pub const DEFAULT_BASE: &str = "/var/lib/flex-test-runs";

pub struct Scratch {
    pub root: PathBuf,
    /// Unique to the run, part of every PV name.
    pub id: String,
}

/// One line of /proc/self/mountinfo.
#[derive(Debug, Clone)]
pub struct MountEntry {
    pub path: PathBuf,
    pub fs_type: String,
    pub source: String,
    /// The mount's own options and the super block's.
    pub mount_options: Vec<String>,
    pub super_options: Vec<String>,
}

impl MountEntry {
    pub fn read_only(&self) -> bool {
        self.mount_options.iter().any(|o| o == "ro") || self.super_options.iter().any(|o| o == "ro")
    }
}

impl Scratch {
    /// `<base>/<random>`, `0700`, below a base that only root can change.
    pub fn create(base: &Path) -> Result<Scratch, String> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(base)
            .map_err(|e| format!("create {}: {e}", base.display()))?;
        let meta = std::fs::metadata(base).map_err(|e| format!("{}: {e}", base.display()))?;
        if meta.uid() != 0 || meta.mode() & 0o022 != 0 {
            return Err(format!(
                "{} must be owned by root and writable by nobody else (the driver's directories \
                 are checked the same way)",
                base.display()
            ));
        }
        let dir = tempfile::Builder::new()
            .prefix("")
            .rand_bytes(10)
            .tempdir_in(base)
            .map_err(|e| format!("create a run directory in {}: {e}", base.display()))?
            // Removed by `cleanup`, which unmounts first; never by tempfile's recursive delete.
            .keep();
        let id = dir
            .file_name()
            .map(|n| n.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        let id: String = id.chars().filter(char::is_ascii_alphanumeric).collect();
        Ok(Scratch { root: dir, id })
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.root.join(relative)
    }

    /// Creates `dir` and its parents as kubelet does (`MkdirAll`, `0750`).
    pub fn make_dir(dir: &Path) -> Result<(), String> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(dir)
            .map_err(|e| format!("create {}: {e}", dir.display()))
    }

    /// `<kubelet>/pods/<uid>/volumes/<vendor~driver>/<volume>` (not created).
    pub fn pod_dir(&self, pod_uid: &str, name: &str, volume: &str) -> PathBuf {
        self.path("kubelet/pods")
            .join(pod_uid)
            .join("volumes")
            .join(name)
            .join(volume)
    }

    /// `<kubelet>/plugins/kubernetes.io/flexvolume/<vendor>/<driver>/mounts/<pv>`: the driver
    /// name is not escaped there (protocol notes §4).
    pub fn device_mount_path(&self, name: &str, pv: &str) -> PathBuf {
        self.path("kubelet/plugins/kubernetes.io/flexvolume")
            .join(name.replace('~', "/"))
            .join("mounts")
            .join(pv)
    }

    /// Everything mounted at or below the scratch root.
    pub fn mounts(&self) -> Vec<MountEntry> {
        mounts_under(&self.root)
    }

    /// Loop devices whose backing file lies under the scratch root, or whose name contains
    /// this run's id (images a driver made in the node's own image dir).
    pub fn loop_devices(&self) -> Vec<(PathBuf, PathBuf)> {
        loop_devices()
            .into_iter()
            .filter(|(_, backing)| {
                backing.starts_with(&self.root) || backing.to_string_lossy().contains(&self.id)
            })
            .collect()
    }

    /// Unmounts, detaches, then removes (or with `keep`, leaves the emptied tree). Returns
    /// what could not be cleaned.
    pub fn cleanup(&self, keep: bool) -> Vec<String> {
        let mut problems = Vec::new();
        for attempt in 0..5 {
            let mut left: Vec<PathBuf> = self.mounts().into_iter().map(|m| m.path).collect();
            if left.is_empty() {
                break;
            }
            left.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
            for path in left {
                let flags = match attempt {
                    0..=2 => nix::mount::MntFlags::empty(),
                    _ => nix::mount::MntFlags::MNT_DETACH,
                };
                let _ = nix::mount::umount2(&path, flags);
            }
        }
        for (device, backing) in self.loop_devices() {
            if let Err(e) = detach_loop(&device) {
                problems.push(format!(
                    "loop device {} ({}) not detached: {e}",
                    device.display(),
                    backing.display()
                ));
            }
        }
        let left = self.mounts();
        if !left.is_empty() {
            let list: Vec<String> = left.iter().map(|m| m.path.display().to_string()).collect();
            problems.push(format!(
                "still mounted, so {} was not removed: {}",
                self.root.display(),
                list.join(", ")
            ));
            return problems;
        }
        if keep {
            return problems;
        }
        if let Err(e) = remove_tree(&self.root) {
            problems.push(format!("remove {}: {e}", self.root.display()));
        }
        problems
    }
}

pub fn mounts() -> Vec<MountEntry> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    table
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let separator = fields.iter().position(|f| *f == "-")?;
            Some(MountEntry {
                path: PathBuf::from(crate::caps::mounts::unescape_mountinfo(fields.get(4)?)),
                mount_options: fields.get(5)?.split(',').map(String::from).collect(),
                fs_type: fields.get(separator + 1)?.to_string(),
                source: crate::caps::mounts::unescape_mountinfo(fields.get(separator + 2)?),
                super_options: fields
                    .get(separator + 3)?
                    .split(',')
                    .map(String::from)
                    .collect(),
            })
        })
        .collect()
}

fn canonical(path: &Path) -> PathBuf {
    path.canonicalize().unwrap_or_else(|_| path.to_path_buf())
}

pub fn mounts_under(root: &Path) -> Vec<MountEntry> {
    let root = canonical(root);
    mounts()
        .into_iter()
        .filter(|m| m.path.starts_with(&root))
        .collect()
}

pub fn mounts_at(path: &Path) -> Vec<MountEntry> {
    let path = canonical(path);
    mounts().into_iter().filter(|m| m.path == path).collect()
}

/// Every attached loop device with its backing file (from /sys/block/loop*/loop/backing_file;
/// a deleted file keeps its path, minus ` (deleted)`).
pub fn loop_devices() -> Vec<(PathBuf, PathBuf)> {
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    let mut found: Vec<(PathBuf, PathBuf)> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("loop"))
        .filter_map(|e| {
            let text = std::fs::read_to_string(e.path().join("loop/backing_file")).ok()?;
            let text = text.trim_end_matches('\n');
            let backing = PathBuf::from(text.strip_suffix(" (deleted)").unwrap_or(text));
            Some((Path::new("/dev").join(e.file_name()), backing))
        })
        .collect();
    found.sort();
    found
}

fn detach_loop(device: &Path) -> Result<(), String> {
    const LOOP_CLR_FD: nix::libc::c_ulong = 0x4C01;
    let file = std::fs::File::open(device).map_err(|e| e.to_string())?;
    // SAFETY: LOOP_CLR_FD takes no argument; the descriptor is open for the whole call.
    let rc =
        unsafe { nix::libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&file), LOOP_CLR_FD as _, 0) };
    match rc {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error().to_string()),
    }
}

/// Removes `root` and everything in it without following symlinks or entering a directory on
/// another file system (a mount that appeared after the check is refused, not emptied).
fn remove_tree(root: &Path) -> std::io::Result<()> {
    let dev = std::fs::symlink_metadata(root)?.dev();
    fn walk(dir: &Path, dev: u64) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let meta = std::fs::symlink_metadata(&path)?;
            if meta.is_dir() {
                if meta.dev() != dev || !mounts_at(&path).is_empty() {
                    return Err(std::io::Error::other(format!(
                        "{} is a mount point: not removing it",
                        path.display()
                    )));
                }
                walk(&path, dev)?;
                std::fs::remove_dir(&path)?;
            } else {
                std::fs::remove_file(&path)?;
            }
        }
        Ok(())
    }
    walk(root, dev)?;
    std::fs::remove_dir(root)
}

/// Size in bytes of a block device (`/sys/class/block/<name>/size` counts 512-byte sectors).
pub fn block_device_bytes(device: &str) -> Option<u64> {
    let real = Path::new(device).canonicalize().ok()?;
    let name = real.file_name()?.to_string_lossy().into_owned();
    let sectors: u64 = std::fs::read_to_string(format!("/sys/class/block/{name}/size"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(sectors * 512)
}

#[cfg(test)]
mod tests {
    #[test]
    fn mountinfo_escapes() {
        assert_eq!(
            crate::caps::mounts::unescape_mountinfo(r"/a\040b\134c"),
            r"/a b\c"
        );
        assert_eq!(
            crate::caps::mounts::unescape_mountinfo(r"/plain\0"),
            r"/plain\0"
        );
    }
}
