//! One pids cgroup per exec: `limits.exec_processes` as its `pids.max`, a count of the times the
//! program hit it, and a way to kill whatever is in it. cgroup v2 when flex's own cgroup offers
//! the pids controller, else the v1 pids hierarchy (hybrid hosts); with neither the program
//! does not run at all, rather than run unbounded.
//!
//! The cgroup is a child of flex's own (`flex-exec-<pid>-<n>`), so it stays inside whatever
//! bounds kubelet's service already has. A flex killed before removing one leaves an empty
//! directory behind; the next exec on the node removes those of processes that are gone.

use std::fs::File;
use std::io::{ErrorKind, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const PREFIX: &str = "flex-exec-";

pub struct Cgroup {
    dir: PathBuf,
    /// `cgroup.procs`, opened before the fork: the program writes `0` to it to join.
    procs: Option<File>,
    v2: bool,
    removed: bool,
}

impl Cgroup {
    pub fn create(max_processes: u64) -> Result<Cgroup, String> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let (parent, v2) = own_cgroup()?;
        remove_stale(&parent);
        let name = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let dir = parent.join(name);
        std::fs::create_dir(&dir)
            .map_err(|e| format!("cannot create cgroup {}: {e}", dir.display()))?;
        let mut cgroup = Cgroup {
            dir,
            procs: None,
            v2,
            removed: false,
        };
        write(&cgroup.dir.join("pids.max"), &max_processes.to_string())?;
        let procs = cgroup.dir.join("cgroup.procs");
        let file = File::options()
            .write(true)
            .open(&procs)
            .map_err(|e| format!("cannot open {}: {e}", procs.display()))?;
        cgroup.procs = Some(file);
        Ok(cgroup)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn procs_fd(&self) -> RawFd {
        self.procs.as_ref().map_or(-1, |f| f.as_raw_fd())
    }

    /// How many times a fork in the cgroup failed on `pids.max`.
    pub fn limit_hits(&self) -> u64 {
        let events = std::fs::read_to_string(self.dir.join("pids.events")).unwrap_or_default();
        events
            .lines()
            .find_map(|l| l.strip_prefix("max "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }

    /// SIGKILL to everything in the cgroup (`cgroup.kill` where v2 has it; otherwise each
    /// process listed, which in the program's PID namespace includes its PID 1).
    pub fn kill(&self) {
        if self.v2 {
            let _ = write(&self.dir.join("cgroup.kill"), "1");
        }
        let procs = std::fs::read_to_string(self.dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }

    /// Kills what is left and removes the cgroup; an error means some process outlived
    /// every SIGKILL for two seconds (stuck in the kernel).
    pub fn remove(&mut self) -> Result<(), String> {
        if self.removed {
            return Ok(());
        }
        self.procs = None;
        for _ in 0..200 {
            match std::fs::remove_dir(&self.dir) {
                Err(e) if e.kind() != ErrorKind::NotFound => {
                    self.kill();
                    std::thread::sleep(Duration::from_millis(10));
                }
                _ => {
                    self.removed = true;
                    return Ok(());
                }
            }
        }
        Err(format!(
            "processes in cgroup {} survived SIGKILL; it was left in place",
            self.dir.display()
        ))
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = self.remove();
    }
}

fn write(path: &Path, value: &str) -> Result<(), String> {
    File::options()
        .write(true)
        .open(path)
        .and_then(|mut f| f.write_all(value.as_bytes()))
        .map_err(|e| format!("cannot write {value:?} to {}: {e}", path.display()))
}

/// Flex's own cgroup directory on the hierarchy that has the pids controller, and whether it
/// is cgroup v2.
fn own_cgroup() -> Result<(PathBuf, bool), String> {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    // `id:controllers:path` lines; v2 is `0::path`.
    let own_path = |v2: bool| {
        own.lines().find_map(|line| {
            let mut fields = line.splitn(3, ':');
            let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
            let wanted = match v2 {
                true => controllers.is_empty(),
                false => controllers.split(',').any(|c| c == "pids"),
            };
            wanted.then(|| path.to_string())
        })
    };
    for v2 in [true, false] {
        let (Some(path), Some((root, mount))) = (own_path(v2), cgroup_mount(&mountinfo, v2)) else {
            continue;
        };
        // Inside a container the mount's root is our cgroup (or an ancestor of it).
        let Some(relative) = Path::new(&path).strip_prefix(&root).ok() else {
            continue;
        };
        let dir = Path::new(&mount).join(relative);
        if v2 {
            let controllers =
                std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
            if !controllers.split_whitespace().any(|c| c == "pids") {
                continue;
            }
            // pids is a threaded controller: a cgroup that holds processes may still hand it
            // to its children.
            let subtree = dir.join("cgroup.subtree_control");
            let enabled = std::fs::read_to_string(&subtree).unwrap_or_default();
            if !enabled.split_whitespace().any(|c| c == "pids") {
                write(&subtree, "+pids")?;
            }
        } else if !dir.join("cgroup.procs").exists() {
            continue;
        }
        return Ok((dir, v2));
    }
    Err(
        "no usable pids cgroup (cgroup v2 with the pids controller, or the v1 pids hierarchy): \
         refusing to run a program whose process count cannot be bounded (limits.exec_processes)"
            .into(),
    )
}

/// The first cgroup2 mount, or the first v1 mount carrying the pids controller: (root within
/// the hierarchy, mount point). Mount points with escaped characters are skipped.
fn cgroup_mount(mountinfo: &str, v2: bool) -> Option<(String, String)> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let fields: Vec<&str> = left.split(' ').collect();
        let (root, mount) = (*fields.get(3)?, *fields.get(4)?);
        let right: Vec<&str> = right.split(' ').collect();
        let (fs_type, options) = (*right.first()?, *right.get(2)?);
        let wanted = match v2 {
            true => fs_type == "cgroup2",
            false => fs_type == "cgroup" && options.split(',').any(|o| o == "pids"),
        };
        (wanted && !line.contains('\\')).then(|| (root.to_string(), mount.to_string()))
    })
}

/// Removes the cgroups of flex processes that no longer exist (killed before cleaning up);
/// one still populated refuses the rmdir.
fn remove_stale(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    let own = std::process::id();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let gone = pid != own
            && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None)
                == Err(nix::errno::Errno::ESRCH);
        if gone {
            let _ = std::fs::remove_dir(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_are_found_in_mountinfo() {
        let mountinfo = "\
            30 25 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755\n\
            35 30 0:31 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n\
            40 30 0:36 /docker/abc /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n";
        assert_eq!(
            cgroup_mount(mountinfo, true),
            Some(("/".into(), "/sys/fs/cgroup/unified".into()))
        );
        assert_eq!(
            cgroup_mount(mountinfo, false),
            Some(("/docker/abc".into(), "/sys/fs/cgroup/pids".into()))
        );
    }

    #[test]
    fn a_cgroup_is_created_limited_and_removed() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "run the unit tests as root"
        );
        let mut cgroup = Cgroup::create(7).unwrap();
        let dir = cgroup.dir.clone();
        assert_eq!(
            std::fs::read_to_string(dir.join("pids.max"))
                .unwrap()
                .trim(),
            "7"
        );
        assert_eq!(cgroup.limit_hits(), 0);
        cgroup.remove().unwrap();
        assert!(!dir.exists());
    }
}
