//! One warm child: the driver's component loaded and instantiated with nothing granted, then
//! one call taken from the socket, checked, run in the caller's namespaces, answered; then
//! the child exits (`server.rs` keeps the pool full).

use super::wire::{self, Answer, CallerFds, Request};
use super::{LOADED_BY, carried};
use crate::artifact::FileIdentity;
use crate::locate::Plugin;
use crate::logfile::{Logger, Timings, WarmCaller};
use crate::policy::{self, Policy};
use crate::protocol::Reply;
use crate::runtime::{self, Started, WhenStuck};
use nix::sched::{CloneFlags, setns};
use nix::sys::socket::{SockFlag, accept4, getsockopt, setsockopt, sockopt};
use nix::sys::stat::{Mode, fstat, stat, umask};
use nix::sys::time::TimeVal;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

/// A served call (or one handed back to its caller).
pub const EXIT_SERVED: i32 = 0;
/// What the child loaded is no longer what a call would run: the server reloads the driver.
pub const EXIT_STALE: i32 = 3;
/// The child could not load or start the component: the server backs off.
pub const EXIT_BROKEN: i32 = 4;

/// How long an accepted caller may take to send its request.
const REQUEST_WAIT_SECONDS: i64 = 5;

/// The connection of the call being served: every reply (the call's, the deadline
/// watchdog's, a panic's) goes there, once.
static SERVING: Mutex<Option<RawFd>> = Mutex::new(None);

/// What the child was started with, to compare each call against.
struct Loaded {
    plugin: Plugin,
    policy: Policy,
    policy_file: Option<(String, u32)>,
    identity: FileIdentity,
    env: Vec<(String, String)>,
}

/// `argv[1]` of a warm child, as `flex serve` execs the installed driver: never a verb.
pub const COMMAND: &str = "__warm-child";

/// The descriptors a child is exec'd with: the driver's listening socket, and the pipe on
/// which it tells the server it took a call.
pub const LISTENER_FD: RawFd = 3;
pub const BUSY_FD: RawFd = 4;

/// The child's life, exec'd as `<plugindir>/<vendor~driver>/<driver> __warm-child <nice>`, so
/// it is the executable, and finds the driver and component, exactly as kubelet's exec would;
/// `<nice>` is the server's priority, to wait at once started.
pub fn main(args: &[String]) -> ! {
    let argv0 = args.first().map(String::as_str).unwrap_or_default();
    let waiting_nice: i32 = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(0);
    // SAFETY: `flex serve` execs children with these two descriptors open and nothing else
    // owning them.
    let (listener, busy) = unsafe {
        (
            OwnedFd::from_raw_fd(LISTENER_FD),
            OwnedFd::from_raw_fd(BUSY_FD),
        )
    };
    // Never inherited by a program the driver's policy lets it run.
    for fd in [&listener, &busy] {
        let cloexec = nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC);
        let _ = nix::fcntl::fcntl(fd, cloexec);
    }
    let plugin = crate::locate::locate(argv0, None);
    let name = plugin.name.clone();
    let (loaded, started, instance) = match start(plugin) {
        Ok(ready) => ready,
        Err((code, message)) => {
            Logger::open(&name, "warm").error(&format!("warm child: {message}"));
            std::process::exit(code);
        }
    };
    let _ = rustix::process::setpriority_process(None, waiting_nice.clamp(-20, 19));
    loop {
        let Some((conn, request, fds)) = next_call(&listener, &name) else {
            continue;
        };
        let arrived = std::time::Instant::now();
        // The server starts a replacement now, while this call runs.
        let _ = nix::unistd::write(&busy, &std::process::id().to_ne_bytes());
        let _ = rustix::process::setpriority_process(None, request.nice.clamp(-20, 19));
        // A server that stops now must not take this call with it (idle children go).
        // SAFETY: plain prctl on this process.
        unsafe { nix::libc::prctl(nix::libc::PR_SET_PDEATHSIG, 0) };
        if let Err(declined) = admit(&loaded, &request, &fds) {
            let why = &declined.why;
            let _ = wire::send_answer(conn.as_raw_fd(), &Answer::Fallback { why: why.clone() });
            Logger::open(&name, "warm").info(&format!("warm child declined a call: {why}"));
            // In the caller's namespaces now, it can serve nobody else.
            std::process::exit(if declined.stale {
                EXIT_STALE
            } else {
                EXIT_SERVED
            });
        }
        // The call's alone from here: no other caller reaches this process.
        drop((listener, busy));
        serve(conn, request, loaded, (started, arrived), instance);
    }
}

type Ready = (Loaded, Started, wasmtime::component::Instance);

fn start(plugin: Plugin) -> Result<Ready, (i32, String)> {
    let broken = |e: String| (EXIT_BROKEN, e);
    let path = policy::policy_path(&plugin.name);
    let policy_file = policy::read_if_present(&path).map_err(broken)?;
    let policy = policy::from_file(policy_file.clone(), &path, &plugin.name).map_err(broken)?;
    let identity = FileIdentity::of(&plugin.component).map_err(broken)?;
    let logger = Logger::open(&plugin.name, "warm");
    let mut started = Started::load(&plugin, &policy, logger).map_err(|failed| broken(failed.0))?;
    if FileIdentity::of(&plugin.component).ok() != Some(identity) {
        return Err((EXIT_STALE, "the component changed while it loaded".into()));
    }
    let watchdog = started.watchdog("start", WhenStuck::Exit(EXIT_BROKEN));
    let instance = started.instantiate();
    watchdog.stop();
    let instance = instance.map_err(|e| broken(format!("the start code failed: {e:#}")))?;
    prefault();
    // setns into a mount namespace needs a process of one thread.
    let threads = std::fs::read_dir("/proc/self/task").map(Iterator::count);
    if !matches!(threads, Ok(1)) {
        return Err(broken(format!("{threads:?} threads after start, not 1")));
    }
    let loaded = Loaded {
        plugin,
        policy,
        policy_file,
        identity,
        env: super::carried_env(),
    };
    Ok((loaded, started, instance))
}

/// The next call from a root caller; `None` for a connection that is not one.
fn next_call(listener: &OwnedFd, driver: &str) -> Option<(OwnedFd, Request, CallerFds)> {
    let fd = match accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
        Ok(fd) => fd,
        Err(nix::errno::Errno::EINTR | nix::errno::Errno::ECONNABORTED) => return None,
        // Anything else would repeat at once: the server backs the driver off instead.
        Err(e) => {
            Logger::open(driver, "warm").error(&format!("warm child: accept: {e}"));
            std::process::exit(EXIT_BROKEN);
        }
    };
    // SAFETY: accept4 returned a new descriptor that nothing else owns.
    let conn = unsafe { OwnedFd::from_raw_fd(fd) };
    let peer = getsockopt(&conn, sockopt::PeerCredentials);
    let uid = peer.map(|c| c.uid());
    if uid != Ok(0) {
        Logger::open(driver, "warm").log(
            "warn",
            "host",
            &format!("warm child refused a connection from uid {uid:?}: only root may call"),
        );
        return None;
    }
    let wait = TimeVal::new(REQUEST_WAIT_SECONDS, 0);
    setsockopt(&conn, sockopt::ReceiveTimeout, &wait).ok()?;
    // The caller's parent, read before the call's namespaces are entered (this /proc is the
    // one the peer's pid is in); the caller waits on the call, so its pid is its own.
    let caller = peer.ok().and_then(|c| {
        let ppid = parent_of(c.pid())?;
        Some(WarmCaller { pid: c.pid(), ppid })
    });
    match wire::recv_request(conn.as_raw_fd()) {
        // A caller that waited too long took its call back.
        Ok((request, fds)) if wire::take_claim(&fds.claim) => {
            if let Some(caller) = caller {
                crate::logfile::serving_for(caller);
            }
            Some((conn, request, fds))
        }
        Ok(_) => None,
        Err(e) => {
            Logger::open(driver, "warm").log("warn", "host", &format!("warm child: {e}"));
            None
        }
    }
}

/// A process's parent, from `/proc/<pid>/stat` (the field after the parenthesised name, which
/// may itself hold spaces and parentheses).
fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, fields) = stat.rsplit_once(')')?;
    fields.split_whitespace().nth(1)?.parse().ok()
}

/// Why a child would not serve a call; `stale` when what it loaded is outdated for every
/// caller (the server then restarts the driver's pool), not just for this one.
struct Declined {
    why: String,
    stale: bool,
}

impl From<String> for Declined {
    fn from(why: String) -> Declined {
        Declined { why, stale: false }
    }
}

fn stale(why: String) -> Declined {
    Declined { why, stale: true }
}

/// Makes this process the caller's for the call, or says why it cannot: namespaces and
/// working directory entered, umask taken, environment adopted, and the component and
/// policy found to be the ones loaded.
fn admit(loaded: &Loaded, request: &Request, fds: &CallerFds) -> Result<(), Declined> {
    let (flags, _) = crate::split_flags(request.argv.get(1..).unwrap_or_default());
    if flags.component.is_some() {
        return Err(String::from("a development call (--component)").into());
    }
    enter(&fds.mount_ns, "/proc/self/ns/mnt", CloneFlags::CLONE_NEWNS)?;
    enter(&fds.net_ns, "/proc/self/ns/net", CloneFlags::CLONE_NEWNET)?;
    nix::unistd::fchdir(&fds.cwd)
        .map_err(|e| format!("cannot enter the caller's directory: {e}"))?;
    umask(Mode::from_bits_truncate(request.umask & 0o777));
    adopt_env(&loaded.env, &request.env)?;
    if request.driver != loaded.plugin.name {
        let why = format!(
            "the caller is driver {}, this child {}",
            request.driver, loaded.plugin.name
        );
        return Err(why.into());
    }
    // An upgrade moved the driver to another version directory.
    if request.component != loaded.plugin.component {
        return Err(stale(format!(
            "the caller runs {}, this child {}",
            request.component.display(),
            loaded.plugin.component.display()
        )));
    }
    if FileIdentity::of(&loaded.plugin.component).ok() != Some(loaded.identity) {
        let why = format!("{} changed", loaded.plugin.component.display());
        return Err(stale(why));
    }
    let path = policy::policy_path(&loaded.plugin.name);
    if policy::read_if_present(&path)? != loaded.policy_file {
        return Err(stale(format!("policy {} changed", path.display())));
    }
    Ok(())
}

/// Joins the namespace `theirs` unless this process is in it already.
fn enter(theirs: &OwnedFd, mine: &str, kind: CloneFlags) -> Result<(), String> {
    let their = fstat(theirs.as_fd()).map_err(|e| e.to_string())?;
    let own = stat(mine).map_err(|e| e.to_string())?;
    if (their.st_dev, their.st_ino) == (own.st_dev, own.st_ino) {
        return Ok(());
    }
    setns(theirs, kind).map_err(|e| format!("cannot enter the caller's namespace ({mine}): {e}"))
}

/// The caller's carried environment becomes this process's; where a variable chose what was
/// loaded, the caller's value must be the one the child started with.
fn adopt_env(started: &[(String, String)], caller: &[(String, String)]) -> Result<(), String> {
    let value = |env: &[(String, String)], name: &str| {
        env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    };
    for name in LOADED_BY {
        if value(started, name) != value(caller, name) {
            return Err(format!("the caller's {name} differs"));
        }
    }
    for (name, _) in started
        .iter()
        .filter(|(k, _)| !LOADED_BY.contains(&k.as_str()))
    {
        // SAFETY: the child has one thread (checked at start; the call's start after this).
        unsafe { std::env::remove_var(name) };
    }
    for (name, v) in caller
        .iter()
        .filter(|(k, _)| carried(k) && !LOADED_BY.contains(&k.as_str()))
    {
        // SAFETY: as above.
        unsafe { std::env::set_var(name, v) };
    }
    Ok(())
}

/// Runs the call as `crate::handle` would and answers it; never returns.
fn serve(
    conn: OwnedFd,
    request: Request,
    loaded: Loaded,
    (started, arrived): (Started, std::time::Instant),
    instance: wasmtime::component::Instance,
) -> ! {
    *SERVING.lock().unwrap_or_else(|e| e.into_inner()) = Some(conn.as_raw_fd());
    watch_caller(conn.as_raw_fd(), loaded.plugin.name.clone());
    let Loaded { plugin, policy, .. } = loaded;
    let mut started = started;
    let reply = crate::handle_with(
        &request.argv,
        |_, _| plugin,
        |_| Ok(policy),
        |plugin, policy, call, verb, logger, dry_run| {
            started.timings = Timings::since("admit", arrived);
            started.set_logger(logger);
            let spec = runtime::verb_spec(plugin, policy, &call, verb, dry_run);
            let watchdog = started.watchdog(verb, WhenStuck::Reply);
            let (outcome, logger) =
                started.call(spec, Ok(instance), watchdog, |store, instance| {
                    runtime::invoke_verb(store, instance, call)
                });
            (outcome.unwrap_or_else(Reply::failure), logger)
        },
    );
    answer_if_serving(&reply);
    unreachable!("a serving child answers and exits");
}

/// In a child serving a call: sends `reply` to the caller and exits. Anywhere else: returns.
pub fn answer_if_serving(reply: &Reply) {
    // Held until exit, so a second reply (the watchdog's) never follows the first.
    let serving = SERVING.lock().unwrap_or_else(|e| e.into_inner());
    let Some(fd) = *serving else {
        return;
    };
    let answer = Answer::Reply {
        line: reply.to_line(),
        code: reply.exit_code(),
    };
    let _ = wire::send_answer(fd, &answer);
    std::process::exit(EXIT_SERVED);
}

/// A caller killed mid-call (kubelet's timeout) takes the call with it, as it would in
/// process: the child exits when the connection hangs up.
fn watch_caller(fd: RawFd, driver: String) {
    std::thread::spawn(move || {
        // libc's poll: nix's `PollFlags` cannot carry POLLRDHUP back.
        let mut conn = nix::libc::pollfd {
            fd,
            events: nix::libc::POLLRDHUP,
            revents: 0,
        };
        loop {
            // SAFETY: one valid pollfd; the connection stays open until the process exits.
            let n = unsafe { nix::libc::poll(&mut conn, 1, -1) };
            if n > 0 && conn.revents != 0 {
                break;
            }
            if n < 0 && nix::errno::Errno::last() != nix::errno::Errno::EINTR {
                return;
            }
        }
        Logger::open(&driver, "warm").error("the caller went away during the call: stopping it");
        // SAFETY: ends the process at once, as the caller's death would have.
        unsafe { nix::libc::_exit(1) };
    });
}

/// Faults in, writable, every private writable mapping (the instance's linear memories and
/// tables above all), so the call does not take a page fault per page it first touches: a
/// third to a half of a Python or JavaScript driver's `init` (`make bench`). The memory is
/// what the instance already holds, within the policy's limits.
fn prefault() {
    const MADV_POPULATE_WRITE: nix::libc::c_int = 23;
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some("rw-p")) = (fields.next(), fields.next()) else {
            continue;
        };
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (
            usize::from_str_radix(start, 16),
            usize::from_str_radix(end, 16),
        ) else {
            continue;
        };
        // SAFETY: populating changes no contents; the range is a mapping of this process.
        // An error (a kernel before 5.14) leaves the pages to fault as usual.
        unsafe { nix::libc::madvise(start as *mut _, end - start, MADV_POPULATE_WRITE) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_caller_whose_policy_or_cache_dir_differs_is_declined() {
        let started = env(&[("FLEX_POLICY_DIR", "/etc/flex/policy")]);
        let other = env(&[("FLEX_POLICY_DIR", "/tmp/mine")]);
        let declined = adopt_env(&started, &other).unwrap_err();
        assert!(declined.contains("FLEX_POLICY_DIR"), "{declined}");
        let unset = adopt_env(&started, &[]).unwrap_err();
        assert!(unset.contains("FLEX_POLICY_DIR"), "{unset}");
        let cache = adopt_env(&[], &env(&[("FLEX_CACHE_DIR", "/c")])).unwrap_err();
        assert!(cache.contains("FLEX_CACHE_DIR"), "{cache}");
    }

    #[test]
    fn a_callers_parent_is_read_from_proc_whatever_its_name() {
        let own = std::process::id() as i32;
        assert_eq!(parent_of(own), Some(nix::unistd::getppid().as_raw()));
        // A name with a space and a parenthesis, as any program may have.
        let dir = tempfile::tempdir().unwrap();
        let odd = dir.path().join("x) 1 2");
        std::os::unix::fs::symlink("/bin/sleep", &odd).unwrap();
        let mut child = std::process::Command::new(&odd).arg("5").spawn().unwrap();
        let pid = child.id() as i32;
        std::thread::sleep(std::time::Duration::from_millis(100));
        let ours = parent_of(pid);
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(ours, Some(own));
        assert_eq!(parent_of(i32::MAX), None);
    }
}
