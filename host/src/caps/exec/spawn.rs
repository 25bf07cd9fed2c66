//! Running the program so that nothing it starts outlives the call.
//!
//! `flex` forks a relay; the relay unshares a PID namespace and forks the program, which joins
//! its own pids cgroup and is exec'd from the descriptor that was checked, as PID 1 of the new
//! namespace. When PID 1 dies the kernel kills everything else in the namespace, so each way a
//! call can end ends every process the program started: the program's exit; the timeout
//! (SIGKILL to the relay, whose death kills the program by `PDEATHSIG`, and to the cgroup); the
//! death of `flex` (`PDEATHSIG` SIGTERM to the relay, which kills the program, waits for the
//! namespace to empty and removes the cgroup `flex` can no longer remove). The relay passes
//! the program's exit status on as its own.

use super::cgroup::Cgroup;
use super::grant::PATH;
use crate::bindings::flex::volume::exec::Output;
use crate::limits;
use nix::errno::Errno;
use nix::libc;
use nix::sys::signal::SigSet;
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid};
use std::ffi::{CStr, CString, c_char};
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MAX_OUTPUT: u64 = 1 << 20;

pub struct Request<'a> {
    /// The checked `O_PATH` descriptor of the program.
    pub file: OwnedFd,
    pub path: &'a str,
    pub args: &'a [String],
    pub env: &'a [(String, String)],
    pub timeout: Duration,
    pub max_processes: u64,
}

pub fn run(request: Request) -> Result<Output, String> {
    let shown = request.path;
    let strings = |items: Vec<String>| {
        items
            .into_iter()
            .map(CString::new)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| format!("cannot run {shown}: an argument holds a NUL byte"))
    };
    let argv = strings(
        std::iter::once(shown.to_string())
            .chain(request.args.iter().cloned())
            .collect(),
    )?;
    let envp = strings(
        std::iter::once(format!("PATH={PATH}"))
            .chain(request.env.iter().map(|(k, v)| format!("{k}={v}")))
            .collect(),
    )?;
    let mut cgroup = Cgroup::create(request.max_processes)?;
    let child = ChildSetup::new(
        request.file.as_raw_fd(),
        cgroup.procs_fd(),
        cgroup.dir(),
        argv,
        envp,
    )?;
    let mut command = Command::new(shown);
    command
        .env_clear()
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    // SAFETY: `ChildSetup::enter` only makes async-signal-safe system calls and allocates
    // nothing: it runs between fork and exec of a multi-threaded process.
    unsafe {
        command.pre_exec(move || child.enter());
    }
    let mut relay = command
        .spawn()
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
    let capture = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(pipe) = pipe {
                let _ = pipe.take(MAX_OUTPUT).read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = capture(relay.stdout.take().map(|p| Box::new(p) as _));
    let stderr = capture(relay.stderr.take().map(|p| Box::new(p) as _));
    let started = Instant::now();
    let status = loop {
        match relay.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() >= request.timeout => {
                let _ = relay.kill();
                cgroup.kill();
                let _ = relay.wait();
                cgroup.remove()?;
                return Err(format!(
                    "{shown} did not finish within {}s and was killed, with every process it started",
                    request.timeout.as_secs()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => {
                let _ = relay.kill();
                return Err(format!("waiting for {shown}: {e}"));
            }
        }
    };
    let hits = cgroup.limit_hits();
    cgroup.remove()?;
    if hits > 0 {
        return Err(limits::exceeded(
            "exec_processes",
            format!(
                "{shown} and the processes it started tried to run more than {} at once",
                request.max_processes
            ),
        ));
    }
    Ok(Output {
        // `None` when the program died of a signal: the relay dies of the same one.
        exit_code: status.code(),
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// What the forked children need, prepared before the fork (nothing may be allocated after).
struct ChildSetup {
    program: RawFd,
    procs: RawFd,
    flex: Pid,
    /// For the relay to remove when `flex` dies.
    cgroup: CString,
    _argv: Vec<CString>,
    _envp: Vec<CString>,
    argv: Vec<*const c_char>,
    envp: Vec<*const c_char>,
}

// SAFETY: the pointers point into the `CString`s the struct owns, which are never changed or
// dropped before the struct is.
unsafe impl Send for ChildSetup {}
unsafe impl Sync for ChildSetup {}

fn pointers(strings: &[CString]) -> Vec<*const c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

fn errno(e: Errno) -> std::io::Error {
    std::io::Error::from_raw_os_error(e as i32)
}

impl ChildSetup {
    fn new(
        program: RawFd,
        procs: RawFd,
        cgroup: &Path,
        argv: Vec<CString>,
        envp: Vec<CString>,
    ) -> Result<ChildSetup, String> {
        let cgroup = CString::new(cgroup.as_os_str().as_bytes())
            .map_err(|_| format!("cgroup path {} holds a NUL byte", cgroup.display()))?;
        Ok(ChildSetup {
            program,
            procs,
            flex: nix::unistd::getpid(),
            cgroup,
            argv: pointers(&argv),
            envp: pointers(&envp),
            _argv: argv,
            _envp: envp,
        })
    }

    /// In the relay, right after `flex` forked it: returns only with an error, which `spawn`
    /// reports (from the relay or from the program's side before its exec).
    fn enter(&self) -> std::io::Result<()> {
        // Blocked, so they wait for `relay` to take them: SIGTERM when flex dies, SIGCHLD when
        // the program exits.
        relay_signals().thread_block().map_err(errno)?;
        nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(errno)?;
        // `flex` may have died before the line above armed the signal.
        if nix::unistd::getppid() != self.flex {
            return Err(errno(Errno::ESRCH));
        }
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWPID).map_err(errno)?;
        // The program's side holds the read end: it sees POLLHUP once the relay is gone.
        let (alive_read, alive_write) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(errno)?;
        // SAFETY: the relay is single-threaded; both sides go on with system calls only.
        match unsafe { nix::unistd::fork() }.map_err(errno)? {
            ForkResult::Child => {
                drop(alive_write);
                // The program starts with no signal blocked, as `spawn` had left it.
                SigSet::empty().thread_set_mask().map_err(errno)?;
                self.exec_program(alive_read)
            }
            ForkResult::Parent { child } => {
                drop(alive_read);
                relay(child, alive_write, &self.cgroup)
            }
        }
    }

    /// PID 1 of the new namespace: into the cgroup, then exec through the checked descriptor.
    fn exec_program(&self, relay_alive: OwnedFd) -> std::io::Result<()> {
        nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(errno)?;
        // The relay may have died before the line above: nothing would kill us with it.
        let mut fds = [nix::poll::PollFd::new(
            relay_alive.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        if nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO).map_err(errno)? > 0 {
            return Err(errno(Errno::ESRCH));
        }
        // SAFETY: both descriptors are owned by `run`, which outlives the spawn.
        let (procs, program) = unsafe {
            (
                BorrowedFd::borrow_raw(self.procs),
                BorrowedFd::borrow_raw(self.program),
            )
        };
        // Joined before exec: every process the program starts is counted from the first.
        nix::unistd::write(procs, b"0").map_err(errno)?;
        // A `#!` script is read by its interpreter as /dev/fd/N: that descriptor must stay open.
        nix::fcntl::fcntl(
            program,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
        )
        .map_err(errno)?;
        // SAFETY: NUL-terminated arrays of NUL-terminated strings, alive until the exec.
        unsafe {
            libc::syscall(
                libc::SYS_execveat,
                self.program,
                c"".as_ptr(),
                self.argv.as_ptr(),
                self.envp.as_ptr(),
                libc::AT_EMPTY_PATH,
            );
        }
        Err(std::io::Error::last_os_error())
    }
}

fn relay_signals() -> SigSet {
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGCHLD);
    signals
}

/// The relay: waits for the program and exits the way it did, or, when `flex` dies, kills it
/// and removes its cgroup.
fn relay(program: Pid, alive: OwnedFd, cgroup: &CStr) -> ! {
    // Keep only stdio and `alive`: `spawn` returns once its error pipe is closed everywhere
    // (here, and by the program's exec), and the program alone holds the output pipes' ends
    // once this process is gone.
    // SAFETY: plain descriptor calls; nothing here is used after being closed.
    unsafe {
        if alive.as_raw_fd() != 3 {
            libc::dup2(alive.as_raw_fd(), 3);
        }
        std::mem::forget(alive);
        libc::syscall(libc::SYS_close_range, 4u32, u32::MAX, 0u32);
    }
    let signals = relay_signals();
    loop {
        // Reaped before each wait: SIGCHLD may have come before the first one.
        match waitpid(program, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => unsafe { libc::_exit(code) },
            Ok(WaitStatus::Signaled(_, signal, _)) => {
                // Die of the same signal (without a core file), so `flex` reports no exit code.
                let none = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                // SAFETY: async-signal-safe calls in a single-threaded process about to exit.
                unsafe {
                    libc::setrlimit(libc::RLIMIT_CORE, &none);
                    libc::signal(signal as libc::c_int, libc::SIG_DFL);
                    libc::raise(signal as libc::c_int);
                    libc::_exit(128 + signal as i32)
                }
            }
            Err(Errno::EINTR) | Ok(_) => {}
            Err(_) => unsafe { libc::_exit(127) },
        }
        if signals.wait() == Ok(Signal::SIGTERM) {
            flex_died(program, cgroup);
        }
    }
}

/// `flex` is gone: end the program (and with it its namespace), then remove the cgroup.
fn flex_died(program: Pid, cgroup: &CStr) -> ! {
    let _ = nix::sys::signal::kill(program, Signal::SIGKILL);
    while matches!(waitpid(program, None), Err(Errno::EINTR)) {}
    // PID 1 is reaped only once its namespace is empty; the cgroup may lag a moment behind.
    let pause = libc::timespec {
        tv_sec: 0,
        tv_nsec: 10_000_000,
    };
    for _ in 0..200 {
        // SAFETY: a NUL-terminated path; rmdir and nanosleep are async-signal-safe.
        unsafe {
            if libc::rmdir(cgroup.as_ptr()) == 0 || Errno::last() == Errno::ENOENT {
                break;
            }
            libc::nanosleep(&pause, std::ptr::null_mut());
        }
    }
    unsafe { libc::_exit(128 + libc::SIGTERM) }
}
