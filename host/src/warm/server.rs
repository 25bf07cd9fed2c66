//! `flex serve`: keeps warm children for the flex drivers installed in a plugin directory.
//!
//! One listening socket per driver in `warm::socket_dir()`; a pool of children per driver,
//! each the installed driver executable exec'd as a warm child (so it is exactly the `flex`
//! kubelet would run), each serving one call. A child that takes a call is replaced at once;
//! one that finds the driver upgraded or its policy changed makes the server restart the
//! driver's pool; one that cannot start makes the server close the driver's socket (callers
//! then run their calls themselves) and try again later, backing off.

use super::child::{BUSY_FD, COMMAND, EXIT_BROKEN, EXIT_SERVED, EXIT_STALE, LISTENER_FD};
use crate::install::layout;
use clap::Args;
use nix::fcntl::{Flock, FlockArg, OFlag};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigHandler, Signal, kill, signal};
use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, UnixAddr, bind, listen, socket,
};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct ServeArgs {
    /// The kubelet plugin directory whose flex drivers to keep warm
    #[arg(
        long,
        value_name = "DIR",
        default_value = "/usr/libexec/kubernetes/kubelet-plugins/volume/exec"
    )]
    plugin_dir: PathBuf,
    /// Idle children kept ready per driver
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=16))]
    pool: u16,
}

/// Children of all drivers, busy ones included: a flood of concurrent calls beyond it runs
/// in the callers' processes.
const MAX_CHILDREN: usize = 64;
/// How often the plugin directory is read for installed, upgraded and removed drivers.
const RESCAN: Duration = Duration::from_secs(2);
/// The first wait before a driver whose child could not start is tried again; doubled up to
/// `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// The nice value children start at.
const BACKGROUND_NICE: nix::libc::c_int = 19;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop(_: nix::libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

struct Driver {
    /// What kubelet execs: `<plugindir>/<vendor~driver>/<driver>`.
    executable: PathBuf,
    /// The version `.current` pointed at when the pool was started.
    version: String,
    listener: Option<OwnedFd>,
    idle: Vec<Pid>,
    busy: Vec<Pid>,
    backoff: Duration,
    retry_at: Option<Instant>,
}

pub fn command(a: &ServeArgs) -> Result<i32, String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("flex serve runs as root: its children act for kubelet".into());
    }
    let plugin_dir = a
        .plugin_dir
        .canonicalize()
        .map_err(|e| format!("plugin directory {}: {e}", a.plugin_dir.display()))?;
    let dir = super::socket_dir();
    let _lock = own_socket_dir(&dir)?;
    let (busy_read, busy_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)
        .map_err(|e| format!("pipe: {e}"))?;
    for stop in [Signal::SIGTERM, Signal::SIGINT] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { signal(stop, SigHandler::Handler(on_stop)) }.map_err(|e| e.to_string())?;
    }
    eprintln!(
        "flex serve: keeping {} warm children per driver of {} (sockets in {})",
        a.pool,
        plugin_dir.display(),
        dir.display()
    );
    let mut drivers: BTreeMap<String, Driver> = BTreeMap::new();
    let mut scanned_at: Option<Instant> = None;
    while !STOP.load(Ordering::SeqCst) {
        if scanned_at.is_none_or(|at| at.elapsed() >= RESCAN) {
            rescan(&plugin_dir, &mut drivers);
            scanned_at = Some(Instant::now());
        }
        for (name, driver) in drivers.iter_mut() {
            reopen_after_backoff(name, driver);
        }
        fill_pools(&mut drivers, a.pool.into(), &busy_write);
        wait_for_busy(&busy_read, &mut drivers);
        if reap(&mut drivers) {
            scanned_at = None;
        }
    }
    for (name, driver) in drivers.iter_mut() {
        close(name, driver);
    }
    eprintln!("flex serve: stopped");
    Ok(0)
}

/// Creates the socket directory root's alone (refusing one anybody else could write to) and
/// takes its lock: one server per node.
fn own_socket_dir(dir: &Path) -> Result<Flock<std::fs::File>, String> {
    let problem = |e: &dyn std::fmt::Display| format!("socket directory {}: {e}", dir.display());
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(|e| problem(&e))?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| problem(&e))?,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(problem(&e)),
    }
    let meta = std::fs::symlink_metadata(dir).map_err(|e| problem(&e))?;
    if !meta.is_dir() || meta.uid() != 0 || meta.mode() & 0o077 != 0 {
        return Err(problem(&format!(
            "must be a directory owned by root with mode 0700 (is mode {:o}, owner {})",
            meta.mode() & 0o7777,
            meta.uid()
        )));
    }
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(".lock"))
        .map_err(|e| problem(&e))?;
    Flock::lock(lock, FlockArg::LockExclusiveNonblock)
        .map_err(|(_, e)| problem(&format!("another flex serve holds its lock ({e})")))
}

/// The flex drivers installed in `plugin_dir` (by `flex install`: a `.current` version with
/// a component), by name, with their current version.
fn installed(plugin_dir: &Path) -> BTreeMap<String, (PathBuf, String)> {
    let mut found = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(plugin_dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let Some((_, driver)) = name.split_once('~').filter(|_| !name.starts_with('.')) else {
            continue;
        };
        let dir = entry.path();
        let Some(version) = layout::current(&dir) else {
            continue;
        };
        if layout::component(&dir, &version, driver).is_file() {
            found.insert(name.clone(), (dir.join(driver), version));
        }
    }
    found
}

/// Starts serving new drivers, restarts upgraded ones, stops serving removed ones.
fn rescan(plugin_dir: &Path, drivers: &mut BTreeMap<String, Driver>) {
    let now = installed(plugin_dir);
    drivers.retain(|name, driver| {
        let keep = now.get(name).is_some_and(|(_, v)| *v == driver.version);
        if !keep {
            close(name, driver);
        }
        keep
    });
    for (name, (executable, version)) in now {
        if drivers.contains_key(&name) {
            continue;
        }
        let mut driver = Driver {
            executable,
            version,
            listener: None,
            idle: Vec::new(),
            busy: Vec::new(),
            backoff: FIRST_BACKOFF,
            retry_at: None,
        };
        open(&name, &mut driver);
        drivers.insert(name, driver);
    }
}

/// Binds the driver's socket, replacing a stale one; only root can reach the directory.
fn open(name: &str, driver: &mut Driver) {
    let path = super::socket_path(name);
    let _ = std::fs::remove_file(&path);
    let bound = (|| -> Result<OwnedFd, String> {
        let fd = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(|e| e.to_string())?;
        let address = UnixAddr::new(&path).map_err(|e| e.to_string())?;
        bind(fd.as_raw_fd(), &address).map_err(|e| e.to_string())?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| e.to_string())?;
        listen(&fd, Backlog::new(64).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
        Ok(fd)
    })();
    match bound {
        Ok(fd) => driver.listener = Some(fd),
        Err(e) => {
            eprintln!(
                "flex serve: {name}: cannot listen on {}: {e}",
                path.display()
            );
            back_off(name, driver);
        }
    }
}

/// Stops serving the driver: idle children killed, socket removed. Busy ones finish their call.
fn close(name: &str, driver: &mut Driver) {
    for pid in driver.idle.drain(..) {
        let _ = kill(pid, Signal::SIGKILL);
    }
    if driver.listener.take().is_some() {
        let _ = std::fs::remove_file(super::socket_path(name));
    }
}

fn back_off(name: &str, driver: &mut Driver) {
    close(name, driver);
    driver.retry_at = Some(Instant::now() + driver.backoff);
    eprintln!(
        "flex serve: {name}: not warm for {}s (see `flex logs --driver {name}`)",
        driver.backoff.as_secs()
    );
    driver.backoff = (driver.backoff * 2).min(MAX_BACKOFF);
}

fn reopen_after_backoff(name: &str, driver: &mut Driver) {
    if driver.retry_at.is_some_and(|at| Instant::now() >= at) {
        driver.retry_at = None;
        open(name, driver);
    }
}

fn fill_pools(drivers: &mut BTreeMap<String, Driver>, pool: usize, busy: &OwnedFd) {
    let mut total: usize = drivers.values().map(|d| d.idle.len() + d.busy.len()).sum();
    for (name, driver) in drivers.iter_mut() {
        while driver.idle.len() < pool && total < MAX_CHILDREN {
            let Some(listener) = &driver.listener else {
                break;
            };
            match spawn(&driver.executable, listener, busy) {
                Ok(pid) => {
                    driver.idle.push(pid);
                    total += 1;
                }
                Err(e) => {
                    eprintln!("flex serve: {name}: cannot start a child: {e}");
                    back_off(name, driver);
                }
            }
        }
    }
}

/// Execs the installed driver as a warm child on the driver's socket.
fn spawn(executable: &Path, listener: &OwnedFd, busy: &OwnedFd) -> Result<Pid, String> {
    // Above the numbers they are moved to, so neither move overwrites the other.
    let high = |fd: &OwnedFd| {
        nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(10)).map_err(|e| e.to_string())
    };
    let (listener, busy) = (high(listener)?, high(busy)?);
    let (l, b) = (listener.as_raw_fd(), busy.as_raw_fd());
    let mut command = std::process::Command::new(executable);
    command
        .arg(COMMAND)
        .arg(
            rustix::process::getpriority_process(None)
                .unwrap_or(0)
                .to_string(),
        )
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: between fork and exec only setpriority, prctl and dup2, which are
    // async-signal-safe.
    unsafe {
        command.pre_exec(move || {
            // Starting up is background work, so a replacement starting does not slow the
            // call it replaces; a started child returns to the server's priority to wait
            // and takes its caller's for the call (`child::main`).
            nix::libc::setpriority(nix::libc::PRIO_PROCESS, 0, BACKGROUND_NICE);
            // An idle child ends with the server, however it ends; a busy one finishes its
            // call (it clears this when it takes one).
            nix::libc::prctl(nix::libc::PR_SET_PDEATHSIG, nix::libc::SIGKILL);
            for (from, to) in [(l, LISTENER_FD), (b, BUSY_FD)] {
                if nix::libc::dup2(from, to) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = command.spawn().map_err(|e| e.to_string())?;
    Ok(Pid::from_raw(child.id() as i32))
}

/// Waits a little for children taking calls; each one is replaced on the next round.
fn wait_for_busy(busy: &OwnedFd, drivers: &mut BTreeMap<String, Driver>) {
    let mut fds = [PollFd::new(busy.as_fd(), PollFlags::POLLIN)];
    if !matches!(poll(&mut fds, PollTimeout::from(200u16)), Ok(n) if n > 0) {
        return;
    }
    let mut bytes = [0u8; 4 * 64];
    while let Ok(n) = nix::unistd::read(busy, &mut bytes) {
        if n == 0 {
            break;
        }
        for chunk in bytes[..n].chunks_exact(4) {
            let pid = Pid::from_raw(i32::from_ne_bytes(chunk.try_into().expect("4 bytes")));
            for driver in drivers.values_mut() {
                if let Some(at) = driver.idle.iter().position(|p| *p == pid) {
                    driver.busy.push(driver.idle.swap_remove(at));
                }
            }
        }
    }
}

/// Collects exited children; true when one found its driver changed (rescan now).
fn reap(drivers: &mut BTreeMap<String, Driver>) -> bool {
    let mut changed = false;
    loop {
        let (pid, code) = match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => (pid, code),
            Ok(WaitStatus::Signaled(pid, _, _)) => (pid, -1),
            Ok(WaitStatus::StillAlive) | Err(_) => return changed,
            Ok(_) => continue,
        };
        for (name, driver) in drivers.iter_mut() {
            let was_idle = driver.idle.contains(&pid);
            driver.idle.retain(|p| *p != pid);
            let was_busy = driver.busy.contains(&pid);
            driver.busy.retain(|p| *p != pid);
            if !was_idle && !was_busy {
                continue;
            }
            match code {
                EXIT_STALE => {
                    // Its siblings loaded the same: start the pool again.
                    for pid in driver.idle.drain(..) {
                        let _ = kill(pid, Signal::SIGKILL);
                    }
                    changed = true;
                }
                EXIT_BROKEN => back_off(name, driver),
                EXIT_SERVED if was_busy => driver.backoff = FIRST_BACKOFF,
                // An idle child that died: killed from outside, or a crash while starting.
                _ if was_idle => back_off(name, driver),
                _ => {}
            }
        }
    }
}
