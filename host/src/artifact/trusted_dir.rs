//! The one way root opens a directory whose contents it will map or execute (the artifact
//! cache, the directory of a compiler it found): walked from `/` one `openat(O_NOFOLLOW)` at a
//! time, each directory checked on the descriptor that the next step opens from, so nothing
//! checked can be swapped for something unchecked. A symlink anywhere on the way is refused.
//!
//! Every directory on the way must be owned by root or the euid and not writable by group or
//! others, unless it is sticky (`/tmp`): there only an entry's owner can rename or remove it,
//! and the next entry is itself checked. The last directory gets its own rule ([`Last`]).

use super::Unusable;
use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{Mode, fstat, mkdirat};
use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component as PathPart, Path, PathBuf};

/// What the last directory of the walk must be.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Last {
    /// The artifact cache: owned by the euid, not writable by group or others even if sticky;
    /// missing directories are created `0700`.
    Cache,
    /// The directory a found compiler sits in, and the compiler itself ([`check`]): owned by
    /// root or the euid, not writable by group or others even if sticky (anyone could add the
    /// compiler's name there); nothing created.
    Compiler,
}

/// Opens `path` (absolute, without `..`) by the walk the module describes. The caller names
/// `path` in its message; the reason names the directory that failed.
pub(super) fn open(path: &Path, last: Last) -> Result<OwnedFd, Unusable> {
    let refuse = |why: String| Unusable::Refused(why);
    if !path.is_absolute() {
        return Err(refuse("not an absolute path".into()));
    }
    let parts: Vec<&OsStr> = path
        .components()
        .filter_map(|part| match part {
            PathPart::Normal(name) => Some(Ok(name)),
            PathPart::ParentDir => Some(Err(())),
            _ => None,
        })
        .collect::<Result<_, ()>>()
        .map_err(|()| refuse("contains `..`".into()))?;
    let euid = nix::unistd::geteuid().as_raw();
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mut dir =
        nix::fcntl::open("/", flags, Mode::empty()).map_err(|e| refuse(format!("/: {e}")))?;
    let mut walked = PathBuf::from("/");
    let rule = |i: usize| (i == parts.len()).then_some(last);
    check(&dir, &walked, euid, rule(0)).map_err(refuse)?;
    for (i, name) in parts.iter().enumerate() {
        walked.push(name);
        let mut next = openat(&dir, *name, flags, Mode::empty());
        if matches!(next, Err(Errno::ENOENT)) && last == Last::Cache {
            match mkdirat(&dir, *name, Mode::from_bits_truncate(0o700)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(Errno::EROFS) => {
                    return Err(Unusable::ReadOnly(format!(
                        "cannot create {}: read-only file system",
                        walked.display()
                    )));
                }
                Err(e) => return Err(refuse(format!("create {}: {e}", walked.display()))),
            }
            next = openat(&dir, *name, flags, Mode::empty());
        }
        dir = match next {
            Ok(fd) => fd,
            Err(Errno::ELOOP | Errno::ENOTDIR) => {
                return Err(refuse(format!(
                    "{} is a symlink or not a directory",
                    walked.display()
                )));
            }
            Err(e) => return Err(refuse(format!("{}: {e}", walked.display()))),
        };
        check(&dir, &walked, euid, rule(i + 1)).map_err(refuse)?;
    }
    Ok(dir)
}

/// One directory of the walk (or a file under the `last` rule), on its descriptor: `last` is
/// `None` on the way.
pub(super) fn check(
    fd: impl AsFd,
    path: &Path,
    euid: u32,
    last: Option<Last>,
) -> Result<(), String> {
    let stat = fstat(fd).map_err(|e| format!("{}: {e}", path.display()))?;
    let others_write = stat.st_mode & 0o022 != 0;
    let sticky = stat.st_mode & 0o1000 != 0;
    let owner_ok = stat.st_uid == euid || (last != Some(Last::Cache) && stat.st_uid == 0);
    if !owner_ok {
        return Err(format!(
            "{} is owned by uid {}, not {}",
            path.display(),
            stat.st_uid,
            match last {
                Some(Last::Cache) => euid.to_string(),
                _ if euid == 0 => "root".into(),
                _ => format!("root or uid {euid}"),
            }
        ));
    }
    if others_write && (last.is_some() || !sticky) {
        return Err(format!(
            "{} is writable by group or others (mode {:o})",
            path.display(),
            stat.st_mode & 0o7777
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
    }

    fn refused(path: &Path, last: Last) -> String {
        match open(path, last) {
            Err(Unusable::Refused(why)) => why,
            Err(Unusable::ReadOnly(why)) => panic!("read-only, not refused: {why}"),
            Ok(_) => panic!("{} accepted", path.display()),
        }
    }

    /// Every directory on the way is checked, not only the last: a writable ancestor could
    /// have the whole subtree swapped. A sticky ancestor (`/tmp`, where the tempdir is) is
    /// accepted, a sticky last directory is not.
    #[test]
    fn every_ancestor_is_checked_and_symlinks_refused() {
        let root = tempfile::tempdir().unwrap();
        chmod(root.path(), 0o755);
        let deep = root.path().join("a/b/c");
        std::fs::create_dir_all(&deep).unwrap();
        for dir in ["a", "a/b", "a/b/c"] {
            chmod(&root.path().join(dir), 0o755);
        }
        assert!(open(&deep, Last::Compiler).is_ok());

        chmod(&root.path().join("a"), 0o777);
        let why = refused(&deep, Last::Compiler);
        assert!(why.contains("/a is writable by group or others"), "{why}");
        chmod(&root.path().join("a"), 0o1777);
        assert!(open(&deep, Last::Compiler).is_ok(), "sticky ancestor");
        chmod(&root.path().join("a"), 0o755);
        std::os::unix::fs::chown(root.path().join("a/b"), Some(1000), None).unwrap();
        let why = refused(&deep, Last::Compiler);
        assert!(
            why.ends_with("/a/b is owned by uid 1000, not root"),
            "{why}"
        );
        std::os::unix::fs::chown(root.path().join("a/b"), Some(0), None).unwrap();
        chmod(&deep, 0o1777);
        let why = refused(&deep, Last::Compiler);
        assert!(why.contains("/c is writable"), "{why}");
        chmod(&deep, 0o755);

        let link = root.path().join("link");
        std::os::unix::fs::symlink(root.path().join("a"), &link).unwrap();
        let why = refused(&link.join("b/c"), Last::Compiler);
        assert!(why.contains("is a symlink or not a directory"), "{why}");

        assert!(refused(Path::new("relative/dir"), Last::Cache).contains("absolute"));
        let why = refused(&root.path().join("a/../a/b"), Last::Compiler);
        assert!(why.contains("`..`"), "{why}");
    }

    /// Only the cache walk creates what is missing, `0700`.
    #[test]
    fn only_the_cache_walk_creates_directories() {
        let root = tempfile::tempdir().unwrap();
        chmod(root.path(), 0o755);
        let missing = root.path().join("x/y");
        let why = refused(&missing, Last::Compiler);
        assert!(why.contains("x:"), "{why}");
        assert!(!root.path().join("x").exists());
        assert!(open(&missing, Last::Cache).is_ok());
        let mode = std::fs::metadata(&missing).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o700);
    }
}
