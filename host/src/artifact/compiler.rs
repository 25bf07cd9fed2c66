//! Finding and running `flex-compile` from the per-call `flex` (which carries no compiler):
//! named by `FLEX_COMPILER`, or found beside the executable or in the plugin dir and then
//! trusted only after the checks a root-run program needs, made on the descriptor that is run.

use super::Unusable;
use super::trusted_dir::{self, Last};
#[cfg(not(feature = "compiler"))]
use super::{COMPILE_MEMORY_BASE, COMPILE_MEMORY_PER_BYTE, COMPILE_TIMEOUT};
#[cfg(not(feature = "compiler"))]
use super::{COMPILER, PLUGIN_DIR_COMPILER};
use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::Mode;
use std::fs::File;
use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
#[cfg(not(feature = "compiler"))]
use std::time::{Duration, Instant};

/// Runs `flex-compile FLAG N` with the opened component as stdin and `fd` inherited as N,
/// bounded by [`COMPILE_TIMEOUT`] and [`compile_memory_limit`], and killed with `flex`; its
/// stderr becomes the error.
#[cfg(not(feature = "compiler"))]
pub(super) fn run_compiler(
    component: &File,
    flag: &str,
    fd: std::os::fd::BorrowedFd,
) -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    let found = compiler()?;
    let compiler = &found.path;
    let io = |e: std::io::Error| format!("cannot run the compiler {}: {e}", compiler.display());
    // A duplicate (`try_clone` never returns 0-2) whose close-on-exec flag the child clears.
    let dir = fd.try_clone_to_owned().map_err(io)?;
    let raw = dir.as_raw_fd();
    // The checked descriptor itself is executed; it stays open (without close-on-exec) in
    // the child, so a script's interpreter can read it too.
    let program_fd = found.descriptor();
    let component_bytes = component.metadata().map_err(io)?.len();
    let memory_limit = compile_memory_limit(component_bytes);
    let parent = std::process::id();
    let mut command = Command::new(found.program());
    command
        .arg(flag)
        .arg(raw.to_string())
        .stdin(Stdio::from(component.try_clone().map_err(io)?))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: fcntl, prctl, getppid and setrlimit are async-signal-safe system calls on the
    // child's own descriptors and attributes.
    unsafe {
        command.pre_exec(move || {
            use nix::libc;
            let check = |result: libc::c_int| match result {
                -1 => Err(std::io::Error::last_os_error()),
                _ => Ok(()),
            };
            for fd in std::iter::once(raw).chain(program_fd) {
                check(libc::fcntl(fd, libc::F_SETFD, 0))?;
            }
            // A killed `flex` (kubelet gave up on the call) takes its compiler with it, so no
            // root compile outlives the timeout; if it died before this line, stop here. This
            // thread waits for the child, so the signal cannot fire early.
            check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL))?;
            if libc::getppid() as u32 != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            let limit = libc::rlimit {
                rlim_cur: memory_limit,
                rlim_max: memory_limit,
            };
            check(libc::setrlimit(libc::RLIMIT_DATA, &limit))
        });
    }
    let mut child = command.spawn().map_err(io)?;
    drop(dir);
    let stderr = child.stderr.take().expect("piped");
    // Read while it runs (a full pipe would stall it), at most 64 KiB.
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ =
            std::io::Read::read_to_string(&mut std::io::Read::take(stderr, 64 << 10), &mut text);
        text
    });
    let deadline = Instant::now() + COMPILE_TIMEOUT;
    let status = loop {
        match child.try_wait().map_err(io)? {
            Some(status) => break status,
            None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "compiling the component took longer than {} s: refused",
                    COMPILE_TIMEOUT.as_secs()
                ));
            }
        }
    };
    let error = reader.join().unwrap_or_default();
    if !status.success() {
        return Err(match error.trim() {
            "" => format!("{} failed ({status})", compiler.display()),
            // Rust's allocator reports a refused allocation this way, then aborts.
            error if error.contains("memory allocation of") => format!(
                "compiling the component needed more than its memory limit ({} MiB for a {} \
                 KiB component): refused",
                memory_limit >> 20,
                component_bytes >> 10
            ),
            error => error.to_string(),
        });
    }
    Ok(())
}

/// The compiler's `RLIMIT_DATA` for a component of `component_bytes`.
#[cfg(not(feature = "compiler"))]
fn compile_memory_limit(component_bytes: u64) -> u64 {
    COMPILE_MEMORY_BASE.saturating_add(component_bytes.saturating_mul(COMPILE_MEMORY_PER_BYTE))
}

/// `FLEX_COMPILER`, else `flex-compile` beside the running executable, else, for an installed
/// driver (`<plugindir>/<vendor~driver>/.version-<id>/<driver>`), the copy `flex install` keeps
/// in the plugin dir (`<plugindir>/.flex-compile`), so an installed driver can rebuild a
/// rejected artifact by itself, e.g. after a node's CPU changed. A compiler found (not named
/// by `FLEX_COMPILER`) runs as root: it is used only if [`trusted_compiler`] accepts it.
#[cfg(not(feature = "compiler"))]
pub fn compiler() -> Result<Compiler, String> {
    if let Some(path) = std::env::var_os("FLEX_COMPILER") {
        return Ok(Compiler {
            path: path.into(),
            opened: None,
        });
    }
    let exe = std::env::current_exe().map_err(|e| format!("find the flex executable: {e}"))?;
    let beside = exe.with_file_name(COMPILER);
    // Only from the installed layout: a `flex` run from anywhere else (`/tmp/x/flex`) must not
    // exec whatever `.flex-compile` sits two directories up.
    let installed = exe.parent().filter(|dir| {
        dir.file_name().is_some_and(|name| {
            name.to_string_lossy()
                .starts_with(crate::install::VERSION_PREFIX)
        })
    });
    let in_plugin_dir = installed
        .and_then(Path::parent)
        .and_then(Path::parent)
        .map(|plugin_dir| plugin_dir.join(PLUGIN_DIR_COMPILER));
    let mut refused = Vec::new();
    for path in [Some(beside.clone()), in_plugin_dir].into_iter().flatten() {
        match trusted_compiler(&path) {
            Ok(Some(file)) => {
                return Ok(Compiler {
                    path,
                    opened: Some(file),
                });
            }
            Ok(None) => {}
            Err(why) => refused.push(format!("{} refused: {why}", path.display())),
        }
    }
    let why = match refused.is_empty() {
        true => format!("{} is missing", beside.display()),
        false => refused.join("; "),
    };
    Err(format!(
        "the component has no compiled artifact and there is no compiler to build one \
         ({why}): reinstall the driver with `flex install`, which precompiles it, \
         or set FLEX_COMPILER"
    ))
}

/// The compiler to run: named by `FLEX_COMPILER` (the caller's choice, run by path), or found
/// and then checked on the descriptor that is run (a file swapped in after the check is never
/// the one executed).
#[cfg_attr(feature = "compiler", allow(dead_code))]
pub struct Compiler {
    pub path: PathBuf,
    opened: Option<File>,
}

#[cfg_attr(feature = "compiler", allow(dead_code))]
impl Compiler {
    /// What to exec or copy: the checked descriptor (`/proc/self/fd/N`, resolved when it is
    /// opened, so it is valid while `self` lives), else the path.
    pub fn program(&self) -> PathBuf {
        match &self.opened {
            Some(file) => PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd())),
            None => self.path.clone(),
        }
    }

    fn descriptor(&self) -> Option<std::os::fd::RawFd> {
        self.opened.as_ref().map(|file| file.as_raw_fd())
    }
}

/// Opens `path` if it is a compiler root may run: `Ok(None)` if there is none, an error if
/// there is one that others could have written or replaced. Its directory is walked from `/`
/// and checked on the way (see `trusted_dir`), the file opened relative to that descriptor
/// without following a symlink and checked on its own descriptor by the same rule as its
/// directory: owned by root or the euid, not writable by group or others.
#[cfg_attr(feature = "compiler", allow(dead_code))]
pub fn trusted_compiler(path: &Path) -> Result<Option<File>, String> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err("not a file path".into());
    };
    let dir = match trusted_dir::open(dir, Last::Compiler) {
        Ok(dir) => dir,
        // No directory, no compiler (a plugin dir not created yet).
        Err(_) if std::fs::metadata(dir).is_err_and(|e| e.kind() == ErrorKind::NotFound) => {
            return Ok(None);
        }
        Err(Unusable::Refused(why) | Unusable::ReadOnly(why)) => return Err(why),
    };
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
    let file = match openat(&dir, name, flags, Mode::empty()) {
        Ok(fd) => File::from(fd),
        Err(Errno::ENOENT) => return Ok(None),
        Err(Errno::ELOOP) => return Err("a symbolic link, not a regular file".into()),
        Err(e) => return Err(e.to_string()),
    };
    if !file.metadata().map_err(|e| e.to_string())?.is_file() {
        return Err("not a regular file".into());
    }
    let euid = nix::unistd::geteuid().as_raw();
    trusted_dir::check(&file, path, euid, Some(Last::Compiler))?;
    Ok(Some(file))
}

#[cfg(test)]
mod tests {
    use super::super::COMPILER;
    use super::*;

    /// A compiler found beside the executable or in the plugin dir runs as root: one that
    /// others could have written, or replaced through a writable directory on its path, is
    /// refused.
    #[test]
    fn a_compiler_others_could_write_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let chmod = |path: &Path, mode: u32| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
        };
        let top = tempfile::tempdir().unwrap();
        chmod(top.path(), 0o755);
        let dir = top.path().join("bin");
        std::fs::create_dir(&dir).unwrap();
        chmod(&dir, 0o755);
        let compiler = dir.join(COMPILER);
        assert!(trusted_compiler(&compiler).unwrap().is_none(), "none there");
        let nowhere = top.path().join("gone/bin").join(COMPILER);
        assert!(
            trusted_compiler(&nowhere).unwrap().is_none(),
            "no directory"
        );
        std::fs::write(&compiler, b"#!/bin/sh\n").unwrap();
        chmod(&compiler, 0o755);
        assert!(trusted_compiler(&compiler).unwrap().is_some());
        for mode in [0o777, 0o775, 0o757, 0o666] {
            chmod(&compiler, mode);
            let refused = trusted_compiler(&compiler).unwrap_err();
            assert!(refused.contains("writable"), "{mode:o}: {refused}");
        }
        chmod(&compiler, 0o755);
        chmod(&dir, 0o1777);
        let refused = trusted_compiler(&compiler).unwrap_err();
        let dir_writable = format!("{} is writable by group or others", dir.display());
        assert!(refused.contains(&dir_writable), "{refused}");
        chmod(&dir, 0o755);
        // An ancestor others can write: they could rename `bin` away and put their own there.
        chmod(top.path(), 0o777);
        let refused = trusted_compiler(&compiler).unwrap_err();
        let top_writable = format!("{} is writable by group or others", top.path().display());
        assert!(refused.contains(&top_writable), "{refused}");
        chmod(top.path(), 0o755);
        // The directory reached through a symlink: refused, whatever the link points at.
        let linked_dir = top.path().join("linked");
        std::os::unix::fs::symlink(&dir, &linked_dir).unwrap();
        let refused = trusted_compiler(&linked_dir.join(COMPILER)).unwrap_err();
        assert!(
            refused.contains("is a symlink or not a directory"),
            "{refused}"
        );
        let link = dir.join("link");
        std::os::unix::fs::symlink(&compiler, &link).unwrap();
        assert!(
            trusted_compiler(&link)
                .unwrap_err()
                .contains("regular file")
        );
        // What runs is the descriptor that was checked, not whatever the path names later.
        let checked = trusted_compiler(&compiler).unwrap();
        std::fs::write(dir.join("other"), b"#!/bin/sh\necho swapped\n").unwrap();
        std::fs::rename(dir.join("other"), &compiler).unwrap();
        let found = Compiler {
            path: compiler.clone(),
            opened: checked,
        };
        assert_eq!(std::fs::read(found.program()).unwrap(), b"#!/bin/sh\n");
    }
}
