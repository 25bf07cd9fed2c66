//! The pod volume directories: `mount` read-write (with a secret and the pod's fsGroup,
//! twice) and read-only, the volume checked in /proc/self/mountinfo, then `unmount` (twice),
//! and `unmount` of a directory that was never mounted. Around each call, kubelet's own part:
//! the directory made before `mount`, removed after a failure or a clean `unmount`, and
//! kubelet's defaults when the driver answers Not supported.

use super::exec::View;
use super::lifecycle::{FS_GROUP, Suite, path};
use super::scratch::{self, Scratch};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

impl Suite<'_> {
    /// Pod A read-write (twice), pod B read-only. `device_mount_path`: attachable, so
    /// `mount` answering Not supported gets kubelet's bind of it (§4.9).
    pub fn pods(&mut self, volume: &str, device_mount_path: Option<&Path>) {
        if !self.plan.wants("mount") {
            self.report.skip("mount: succeeds", "--skip/--only");
            return;
        }
        let a = self.pod_dir("a", volume);
        let json = self.mount_json(volume, "a", false, true);
        if let Some(first) = self.mount(&a, &json, device_mount_path, false) {
            let mounted = scratch::mounts_at(&a).len();
            let second = self.call(&["mount", &path(&a), &json]);
            let result = match (second.view(), scratch::mounts_at(&a).len()) {
                (View::Failure(e), _) => Err(format!("the second mount: {e}")),
                (View::NotSupported, _) if first != View::NotSupported => {
                    Err("the second mount answered Not supported".into())
                }
                (_, now) if now > mounted => Err(format!(
                    "the second mount stacked another mount on {} ({now} now): unmount then \
                     removes only the top one",
                    a.display()
                )),
                _ => Ok(String::new()),
            };
            self.report
                .result("mount: repeated call succeeds", result, Vec::new());
            self.check_mounted(&a);
            self.check_fs_group(&a);
        }
        let b = self.pod_dir("b", volume);
        let json = self.mount_json(volume, "b", true, false);
        if self.mount(&b, &json, device_mount_path, true).is_some() {
            self.check_read_only(&b);
        }
    }

    /// One `mount`, kubelet's part around it: the directory made first, removed on failure;
    /// Not supported on an attachable driver gets kubelet's bind. `None` when it failed.
    fn mount(
        &mut self,
        dir: &Path,
        json: &str,
        device_mount_path: Option<&Path>,
        read_only: bool,
    ) -> Option<View> {
        let case = match read_only {
            false => "mount: succeeds",
            true => "mount: read-only volume succeeds",
        };
        if let Err(e) = Scratch::make_dir(dir) {
            self.report.fail(case, e);
            return None;
        }
        let outcome = self.call(&["mount", &path(dir), json]);
        match (outcome.view(), device_mount_path) {
            (View::Success, _) => self.report.pass(case, ""),
            (View::NotSupported, Some(dmp)) => {
                let bound = kubelet_mount(&["-o", "bind", &path(dmp), &path(dir)]).and_then(|()| {
                    match read_only {
                        true => kubelet_mount(&["-o", "bind,remount,ro", &path(dir)]),
                        false => Ok(()),
                    }
                });
                let warning = "Not supported: kubelet bind-mounts the device mount path itself, \
                               without nosuid or nodev"
                    .to_string();
                match bound {
                    Ok(()) => self.report.result(
                        case,
                        Ok("kubelet's bind (emulated)".into()),
                        vec![warning],
                    ),
                    Err(e) => self
                        .report
                        .fail(case, format!("{warning}; that bind failed: {e}")),
                }
            }
            (View::NotSupported, None) => {
                self.report.fail(
                    case,
                    "Not supported: a driver that does not attach must mount (kubelet would \
                     bind-mount an empty device mount path into the pod)",
                );
                return None;
            }
            (View::Failure(e), _) => {
                let _ = std::fs::remove_dir(dir);
                self.report.fail(case, e);
                return None;
            }
        }
        Some(outcome.view())
    }

    fn check_mounted(&mut self, dir: &Path) {
        let case = "mount: volume mounted and writable";
        let Some(entry) = scratch::mounts_at(dir).pop() else {
            return self.report.fail(
                case,
                format!(
                    "mount answered Success, but nothing is mounted at {}: the pod would write \
                     into kubelet's own directory",
                    dir.display()
                ),
            );
        };
        let probe = dir.join(".flex-test-write");
        let result = std::fs::write(&probe, b"flex test")
            .and_then(|()| std::fs::read(&probe))
            .map_err(|e| format!("writing a file into the volume failed: {e}"))
            .and_then(|read| match read == b"flex test" {
                true => Ok(format!("{} from {}", entry.fs_type, entry.source)),
                false => Err("a file written into the volume read back different".into()),
            });
        let _ = std::fs::remove_file(&probe);
        self.report.result(case, result, Vec::new());
    }

    /// Only what the driver claims: fsGroup true means kubelet applies the pod's group itself
    /// (so it must be able to); false means it does not, and the driver may.
    fn check_fs_group(&mut self, dir: &Path) {
        let case = "mount: fsGroup";
        if self.caps.fs_group {
            let result = std::os::unix::fs::chown(dir, None, Some(FS_GROUP))
                .and_then(|()| {
                    let mode = std::fs::metadata(dir)?.mode() | 0o2070;
                    std::fs::set_permissions(dir, PermissionsExt::from_mode(mode))
                })
                .map(|()| format!("fsGroup: true, and kubelet's chown to gid {FS_GROUP} works"))
                .map_err(|e| {
                    format!(
                        "fsGroup: true, so kubelet sets the volume's group to the pod's fsGroup, \
                         and that fails here: {e} (answer fsGroup: false)"
                    )
                });
            return self.report.result(case, result, Vec::new());
        }
        let gid = std::fs::metadata(dir).map(|m| m.gid()).unwrap_or(u32::MAX);
        let (message, warnings) = match gid == FS_GROUP {
            true => (
                format!("the driver applies fsGroup {FS_GROUP} itself"),
                Vec::new(),
            ),
            false => (
                String::new(),
                vec![format!(
                    "fsGroup: false and the volume's group is {gid}, not the pod's fsGroup \
                     {FS_GROUP}: neither kubelet nor the driver applies it (fine for file \
                     systems without ownership)"
                )],
            ),
        };
        self.report.result(case, Ok(message), warnings);
    }

    fn check_read_only(&mut self, dir: &Path) {
        let case = "mount: read-only volume (readwrite: ro)";
        let Some(entry) = scratch::mounts_at(dir).pop() else {
            return self
                .report
                .fail(case, format!("nothing is mounted at {}", dir.display()));
        };
        let write = std::fs::write(dir.join(".flex-test-ro"), b"x");
        let _ = std::fs::remove_file(dir.join(".flex-test-ro"));
        let result = match (entry.read_only(), write) {
            (true, Err(e)) if e.raw_os_error() == Some(nix::libc::EROFS) => Ok(String::new()),
            (ro, write) => Err(format!(
                "kubernetes.io/readwrite is ro, but the mount at {} is {} and a write {}",
                dir.display(),
                if ro { "ro" } else { "rw" },
                match write {
                    Ok(()) => "succeeded".to_string(),
                    Err(e) => format!("failed with {e}"),
                }
            )),
        };
        self.report.result(case, result, Vec::new());
    }

    /// Pod A twice, pod B once; afterwards nothing mounted, the directories empty (kubelet
    /// removes them, non-recursively).
    pub fn unmount_pods(&mut self, volume: &str) {
        if !self.plan.wants("unmount") {
            self.report.skip("unmount: succeeds", "--skip/--only");
            return;
        }
        let (a, b) = (self.pod_dir("a", volume), self.pod_dir("b", volume));
        if !a.exists() && !b.exists() {
            return self.report.skip(
                "unmount: succeeds",
                "no pod directory: mount did not run or failed",
            );
        }
        let mut firsts = Vec::new();
        for dir in [&a, &b].into_iter().filter(|d| d.exists()) {
            let outcome = self.unmount(dir);
            firsts.push((dir.clone(), outcome));
        }
        let result = match firsts.iter().find(|(_, v)| matches!(v, View::Failure(_))) {
            Some((dir, View::Failure(e))) => Err(format!("{}: {e}", dir.display())),
            _ => Ok(String::new()),
        };
        self.report.result("unmount: succeeds", result, Vec::new());
        if a.exists() {
            let again = self.call(&["unmount", &path(&a)]);
            let result = match again.view() {
                View::Failure(e) => Err(format!("the second unmount: {e}")),
                _ => Ok(String::new()),
            };
            self.report
                .result("unmount: repeated call succeeds", result, Vec::new());
        }
        let mut left = Vec::new();
        for dir in [&a, &b] {
            left.extend(leftovers(dir));
        }
        let result = match left.is_empty() {
            true => Ok(String::new()),
            false => Err(left.join("; ")),
        };
        self.report.result(
            "unmount: nothing left mounted, directory empty",
            result,
            Vec::new(),
        );
    }

    /// `unmount`, with kubelet's cleanup when it answers Not supported.
    pub fn unmount(&mut self, dir: &Path) -> View {
        let outcome = self.call(&["unmount", &path(dir)]);
        if outcome.view() == View::NotSupported && !scratch::mounts_at(dir).is_empty() {
            let _ = kubelet_umount(dir);
        }
        outcome.view()
    }

    /// kubelet calls `unmount` on a directory that exists but is not mounted (§4.10).
    pub fn unmount_never_mounted(&mut self) {
        let case = "unmount: never-mounted directory";
        if !self.plan.wants("unmount") {
            return self.report.skip(case, "--skip/--only");
        }
        let dir = self.pod_dir("c", &format!("never-{}", self.scratch.id));
        if let Err(e) = Scratch::make_dir(&dir) {
            return self.report.fail(case, e);
        }
        let result = match self.call(&["unmount", &path(&dir)]).view() {
            View::Failure(e) => Err(format!("{e}: kubelet retries this forever")),
            _ => Ok(String::new()),
        };
        let _ = std::fs::remove_dir(&dir);
        self.report.result(case, result, Vec::new());
    }
}

/// What kubelet would find after a successful unmount: a mount, or files that stop its
/// non-recursive removal. The directory is removed as kubelet does when it is clean.
pub fn leftovers(dir: &Path) -> Vec<String> {
    if !dir.exists() {
        return Vec::new();
    }
    if !scratch::mounts_at(dir).is_empty() {
        return vec![format!("{} is still mounted", dir.display())];
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => Vec::new(),
        Err(e) => {
            let names: Vec<String> = std::fs::read_dir(dir)
                .into_iter()
                .flatten()
                .flatten()
                .take(5)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            vec![format!(
                "kubelet cannot remove {} ({e}): it holds {}",
                dir.display(),
                names.join(", ")
            )]
        }
    }
}

/// kubelet's own mounts go through mount(8), as here.
pub fn kubelet_mount(args: &[&str]) -> Result<(), String> {
    let output = std::process::Command::new("mount")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("mount: {e}"))?;
    match output.status.success() {
        true => Ok(()),
        false => Err(String::from_utf8_lossy(&output.stderr).trim().to_string()),
    }
}

pub fn kubelet_umount(dir: &Path) -> Result<(), String> {
    crate::caps::mounts::unmount(dir)
}
