//! Opening the program: once, component by component, through directories only root can
//! change. The descriptor that comes out is the one executed (`execveat(AT_EMPTY_PATH)`), so
//! nothing re-resolves the path between the check and the exec.

use nix::fcntl::{OFlag, open, openat, readlinkat};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat};
use std::collections::VecDeque;
use std::os::fd::OwnedFd;

/// As the kernel's own limit on symbolic links in one resolution.
const MAX_SYMLINKS: usize = 40;

/// Owned by root and writable by nobody else: no other user can replace what it holds.
fn trusted(stat: &FileStat, shown: &str) -> Result<(), String> {
    if stat.st_uid != 0 {
        return Err(format!("{shown} is not owned by root"));
    }
    if stat.st_mode & 0o022 != 0 {
        return Err(format!("{shown} is writable by group or others"));
    }
    Ok(())
}

/// Resolves `path` one component at a time with `O_PATH | O_NOFOLLOW`, checking each
/// directory passed through (symbolic links are followed by hand, their targets checked the
/// same way) and the final regular file, and returns the file's `O_PATH` descriptor.
pub fn open_trusted(path: &str) -> Result<OwnedFd, String> {
    let flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let failed = |shown: &str, e: nix::Error| format!("{shown}: {}", e.desc());
    let root = open("/", flags | OFlag::O_DIRECTORY, Mode::empty()).map_err(|e| failed("/", e))?;
    trusted(&fstat(&root).map_err(|e| failed("/", e))?, "/")?;
    // The directories walked so far (for `..` in link targets), with the path shown for each.
    let mut dirs: Vec<(OwnedFd, String)> = vec![(root, String::new())];
    let mut pending: VecDeque<String> = path.split('/').map(str::to_string).collect();
    let mut links = 0;
    while let Some(name) = pending.pop_front() {
        match name.as_str() {
            "" | "." => continue,
            ".." => {
                if dirs.len() > 1 {
                    dirs.pop();
                }
                continue;
            }
            _ => {}
        }
        let (dir, dir_shown) = dirs.last().expect("the root is never popped");
        let shown = format!("{dir_shown}/{name}");
        let fd = openat(dir, name.as_str(), flags, Mode::empty()).map_err(|e| failed(&shown, e))?;
        let stat = fstat(&fd).map_err(|e| failed(&shown, e))?;
        match SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT {
            SFlag::S_IFLNK => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(format!("{path}: too many symbolic links"));
                }
                // The empty path reads the link the descriptor holds.
                let target = readlinkat(&fd, "").map_err(|e| failed(&shown, e))?;
                let target = target
                    .into_string()
                    .map_err(|_| format!("{shown}: link target is not UTF-8"))?;
                if target.starts_with('/') {
                    dirs.truncate(1);
                }
                for component in target.split('/').rev() {
                    pending.push_front(component.to_string());
                }
            }
            SFlag::S_IFDIR => {
                trusted(&stat, &shown)?;
                dirs.push((fd, shown));
            }
            SFlag::S_IFREG if pending.iter().all(|c| c.is_empty() || c == ".") => {
                trusted(&stat, &shown)?;
                if stat.st_mode & 0o111 == 0 {
                    return Err(format!("{shown} is not executable"));
                }
                return Ok(fd);
            }
            SFlag::S_IFREG => return Err(format!("{shown}: not a directory")),
            _ => return Err(format!("{shown} is not a regular file")),
        }
    }
    Err(format!("{path} is not a regular file"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn system_programs_open_through_their_links() {
        for path in ["/usr/bin/true", "/bin/sh", "/usr/bin/env"] {
            open_trusted(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        }
    }

    #[test]
    fn writable_places_and_non_files_are_refused() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "run the unit tests as root"
        );
        let mode = |path: &std::path::Path, mode: u32| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
        };
        // Under /tmp (writable by others) nothing is trusted.
        let scratch = tempfile::tempdir().unwrap();
        let in_tmp = scratch.path().join("helper");
        std::fs::copy("/usr/bin/true", &in_tmp).unwrap();
        let err = open_trusted(in_tmp.to_str().unwrap()).unwrap_err();
        assert!(err.contains("writable by group or others"), "{err}");

        // A root-only directory under /var/lib: trusted until something in it is not.
        let dir = tempfile::tempdir_in("/var/lib").unwrap();
        mode(dir.path(), 0o755);
        let program = dir.path().join("helper");
        std::fs::copy("/usr/bin/true", &program).unwrap();
        let shown = program.to_str().unwrap();
        open_trusted(shown).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&in_tmp, &link).unwrap();
        let err = open_trusted(link.to_str().unwrap()).unwrap_err();
        assert!(err.contains("writable by group or others"), "{err}");
        mode(&program, 0o757);
        assert!(
            open_trusted(shown)
                .unwrap_err()
                .contains("writable by group or others")
        );
        mode(&program, 0o644);
        assert!(open_trusted(shown).unwrap_err().contains("not executable"));
        mode(&program, 0o755);
        std::os::unix::fs::chown(&program, Some(1000), None).unwrap();
        assert!(
            open_trusted(shown)
                .unwrap_err()
                .contains("is not owned by root")
        );
        std::os::unix::fs::chown(&program, Some(0), None).unwrap();
        mode(dir.path(), 0o775);
        let err = open_trusted(shown).unwrap_err();
        assert!(err.contains("writable by group or others"), "{err}");
        mode(dir.path(), 0o755);

        for (path, expected) in [
            ("/usr/bin", "not a regular file"),
            ("/dev/null", "not a regular file"),
            ("/usr/bin/true/x", "not a directory"),
            ("/nonexistent/x", "No such file"),
        ] {
            let err = open_trusted(path).unwrap_err();
            assert!(err.contains(expected), "{path}: {err}");
        }
    }
}
