//! The installed layout of a driver directory, made so that an upgrade under a running kubelet
//! never looks like a removal to its plugin prober.
//!
//! ```text
//! <plugindir>/<vendor~driver>/<driver>        -> .current/<driver>       what kubelet execs
//! <plugindir>/<vendor~driver>/<driver>.wasm   -> .current/<driver>.wasm  for people and tools
//! <plugindir>/<vendor~driver>/.current        -> .version-<id>
//! <plugindir>/<vendor~driver>/.version-<id>/<driver>, <driver>.wasm     flex and the component
//! ```
//!
//! kubelet's and kube-controller-manager's FlexVolume prober watch every directory under the
//! plugin dir with inotify, by path: events of a watched directory are reported under the path
//! it was added with, even after that directory was renamed away. A `Remove` of
//! `<vendor~driver>/<driver>`, or of any name directly in the plugin dir, drops the driver
//! (`no volume plugin matched`) while its volumes are mounted; any other event of a non-dot
//! name re-runs `init`; dot-names are ignored. The first version swapped whole directories
//! and then deleted the old one's files, which the prober read as the driver's removal.
//!
//! So an upgrade never removes or renames the driver directory, nor removes `<driver>`: it
//! writes a new version directory (a dot-name), points `.current` at it with one rename
//! (dot-names), then renames a fresh `<driver>` link over the old one, whose create event
//! makes kubelet re-run `init` for the new capabilities. Old versions are deleted inside their
//! dot-named directories, which the prober reads as updates.
//!
//! The executable and its component stay one pair: a call finds its component beside the
//! executable the kernel ran (`/proc/self/exe`, see `locate.rs`), so a call racing an upgrade
//! runs the old pair or the new one, never a mix. The version before the current one is kept
//! until the next install, so a call that started on it still finds its component.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, symlink};
use std::path::{Path, PathBuf};

pub const CURRENT: &str = ".current";
pub const VERSION_PREFIX: &str = ".version-";
/// Temporary names of links being replaced (left behind only by a crashed install).
const LINK_TEMP: &str = ".link-";

/// Writes a new version (this executable and the component) into `driver_dir`; returns its
/// name. Nothing refers to it until [`activate`].
pub fn write_version(driver_dir: &Path, driver: &str, component: &Path) -> Result<String, String> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let name = format!("{VERSION_PREFIX}{nanos:x}-{}", std::process::id());
    let version = driver_dir.join(&name);
    let io = |what: &str, e: std::io::Error| format!("{what}: {e}");
    fs::DirBuilder::new()
        .mode(0o755)
        .create(&version)
        .map_err(|e| io(&format!("cannot write in {}", driver_dir.display()), e))?;
    let me = std::env::current_exe().map_err(|e| io("find the flex executable", e))?;
    let written = copy_file(&me, &version.join(driver), 0o755)
        .map_err(|e| io("copy flex", e))
        .and_then(|()| {
            copy_file(component, &version.join(format!("{driver}.wasm")), 0o644)
                .map_err(|e| io(&format!("cannot read component {}", component.display()), e))
        })
        // The files and their names are on disk before `activate` points anything at them.
        .and_then(|()| sync_dir(&version).map_err(|e| io("sync the new version", e)));
    match written {
        Ok(_) => Ok(name),
        Err(e) => {
            let _ = fs::remove_dir_all(&version);
            Err(e)
        }
    }
}

/// Copies `from` into a new file `to` with exactly `mode` (never the source's bits: a `0666` or
/// setuid source must not become a root-owned file others can write or run as root), synced.
pub(crate) fn copy_file(from: &Path, to: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut source = fs::File::open(from)?;
    let mut copy = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)?;
    let copied = (|| {
        // Set on the descriptor, so the umask neither widens nor narrows it.
        copy.set_permissions(fs::Permissions::from_mode(mode))?;
        std::io::copy(&mut source, &mut copy)?;
        copy.sync_all()
    })();
    if copied.is_err() {
        let _ = fs::remove_file(to);
    }
    copied
}

/// `fsync` of a directory: the entries created or renamed in it are on disk.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// The component of a version (or of the driver directory's current version).
pub fn component(driver_dir: &Path, version: &str, driver: &str) -> PathBuf {
    driver_dir.join(version).join(format!("{driver}.wasm"))
}

/// The version `.current` points at, if the directory has this layout.
pub fn current(driver_dir: &Path) -> Option<String> {
    let target = fs::read_link(driver_dir.join(CURRENT)).ok()?;
    let name = target.to_str()?;
    (name.starts_with(VERSION_PREFIX) && !name.contains('/')).then(|| name.to_owned())
}

/// True when `version` holds the same executable and component as the current version (a
/// DaemonSet pod restarted with the same image): activating it would only cost a recompile.
pub fn same_as_current(driver_dir: &Path, version: &str, driver: &str) -> bool {
    let Some(current) = current(driver_dir) else {
        return false;
    };
    [driver.to_owned(), format!("{driver}.wasm")]
        .iter()
        .all(|file| {
            match (
                fs::read(driver_dir.join(&current).join(file)),
                fs::read(driver_dir.join(version).join(file)),
            ) {
                (Ok(a), Ok(b)) => a == b,
                _ => false,
            }
        })
}

/// Makes `version` the one kubelet runs; returns the version it replaced. Each step is one
/// rename, so a crash leaves the old driver or the new one.
pub fn activate(driver_dir: &Path, version: &str, driver: &str) -> Result<Option<String>, String> {
    let previous = current(driver_dir);
    replace_link(driver_dir, CURRENT, Path::new(version))?;
    // `<driver>` first: from then on the executable kubelet runs is the new version's, and its
    // component is found beside it, whatever `<driver>.wasm` still says.
    let current = Path::new(CURRENT);
    replace_link(driver_dir, driver, &current.join(driver))?;
    let wasm = format!("{driver}.wasm");
    replace_link(driver_dir, &wasm, &current.join(&wasm))?;
    // Best effort: the switch is done (a failure here must not undo it), this makes it durable.
    let _ = sync_dir(driver_dir);
    Ok(previous)
}

/// Points `driver_dir/name` at `target` with a rename over it: kubelet sees one create, never
/// a remove (`rename(2)` replaces the old entry in one step).
fn replace_link(driver_dir: &Path, name: &str, target: &Path) -> Result<(), String> {
    let temp = driver_dir.join(format!(".{name}{LINK_TEMP}{}", std::process::id()));
    let _ = fs::remove_file(&temp); // left by a crashed install that had this pid
    symlink(target, &temp)
        .and_then(|()| fs::rename(&temp, driver_dir.join(name)))
        .map_err(|e| {
            let _ = fs::remove_file(&temp);
            format!("install {}: {e}", driver_dir.join(name).display())
        })
}

/// Removes every version but `keep`, and links a crashed install left; returns the components
/// removed (their artifacts go next).
pub fn prune(driver_dir: &Path, keep: &[&str], driver: &str) -> Vec<crate::artifact::Inode> {
    let Ok(entries) = fs::read_dir(driver_dir) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(VERSION_PREFIX) && !keep.contains(&name.as_str()) {
            removed.extend(remove_version(driver_dir, &name, driver));
        } else if name.starts_with('.') && name.contains(LINK_TEMP) {
            let _ = fs::remove_file(entry.path());
        }
    }
    removed
}

/// Removes one version; returns its component's inode once it is gone (its artifacts go next).
pub fn remove_version(
    driver_dir: &Path,
    version: &str,
    driver: &str,
) -> Option<crate::artifact::Inode> {
    let inode = crate::artifact::Inode::of(&component(driver_dir, version, driver));
    fs::remove_dir_all(driver_dir.join(version)).ok().and(inode)
}

/// Every component in a driver directory, this layout's versions and the first layout's
/// `<driver>.wasm` file: what an uninstall takes out of the artifact cache.
pub fn all_components(driver_dir: &Path, driver: &str) -> Vec<crate::artifact::Inode> {
    let mut inodes: Vec<_> = fs::read_dir(driver_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(VERSION_PREFIX))
        .filter_map(|e| crate::artifact::Inode::of(&e.path().join(format!("{driver}.wasm"))))
        .collect();
    let flat = driver_dir.join(format!("{driver}.wasm"));
    if fs::symlink_metadata(&flat).is_ok_and(|m| m.is_file()) {
        inodes.extend(crate::artifact::Inode::of(&flat));
    }
    inodes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activate_points_both_names_at_the_new_version_and_returns_the_old() {
        let dir = tempfile::tempdir().unwrap();
        let component = dir.path().join("in.wasm");
        fs::write(&component, b"one").unwrap();
        let driver_dir = dir.path().join("acme~x");
        fs::create_dir(&driver_dir).unwrap();
        let first = write_version(&driver_dir, "x", &component).unwrap();
        assert_eq!(activate(&driver_dir, &first, "x").unwrap(), None);
        assert_eq!(fs::read(driver_dir.join("x.wasm")).unwrap(), b"one");

        let same = write_version(&driver_dir, "x", &component).unwrap();
        assert!(same_as_current(&driver_dir, &same, "x"));
        fs::remove_dir_all(driver_dir.join(&same)).unwrap();

        fs::write(&component, b"two").unwrap();
        let second = write_version(&driver_dir, "x", &component).unwrap();
        assert!(!same_as_current(&driver_dir, &second, "x"));
        assert_eq!(
            activate(&driver_dir, &second, "x").unwrap(),
            Some(first.clone())
        );
        assert_eq!(fs::read(driver_dir.join("x.wasm")).unwrap(), b"two");
        assert_eq!(current(&driver_dir), Some(second.clone()));
        assert_eq!(
            fs::read_link(driver_dir.join("x")).unwrap(),
            Path::new(".current/x")
        );

        fs::write(driver_dir.join(format!(".x{LINK_TEMP}1")), b"").unwrap();
        let third = write_version(&driver_dir, "x", &component).unwrap();
        assert_eq!(prune(&driver_dir, &[&second], "x").len(), 2);
        let mut left: Vec<_> = fs::read_dir(&driver_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, [".current", second.as_str(), "x", "x.wasm"]);
        assert!(!driver_dir.join(third).exists());
    }
}
