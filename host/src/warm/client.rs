//! The calling side: the `flex` kubelet exec'd hands its call to a warm child when
//! `flex serve` runs one for its driver, and otherwise runs the call itself.

use super::wire::{self, Answer, CallerFds, Request};
use crate::logfile::Logger;
use crate::protocol::Reply;
use nix::fcntl::{OFlag, open};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, connect, socket};
use nix::sys::stat::{Mode, umask};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

/// How long a caller waits for a child's answer before it tries to take the call back and
/// run it itself: a child is ready in the server's pool, or replaced in a few milliseconds
/// when all are busy.
const CLAIM_WAIT_MS: u16 = 50;

/// The reply line to print and the exit status, when a warm child answered the call; `None`
/// when the caller must run it itself (no server, no free child, or a child that found it
/// could not serve this call exactly as this process would).
pub fn call(args: &[String]) -> Option<(String, i32)> {
    let argv0 = args.first()?;
    let (flags, rest) = crate::split_flags(args.get(1..).unwrap_or_default());
    // Development calls name their component; servers serve installed drivers only.
    if flags.component.is_some() || std::env::var_os("FLEX_COMPONENT").is_some() {
        return None;
    }
    if rest.is_empty() || std::env::var_os("FLEX_WARM").is_some_and(|v| v == "0") {
        return None;
    }
    let plugin = crate::locate::locate(argv0, None);
    let socket = connected(&super::socket_path(&plugin.name))?;
    let open_fd = |path: &str, flags: OFlag| open(path, flags | OFlag::O_CLOEXEC, Mode::empty());
    let fds = CallerFds {
        mount_ns: open_fd("/proc/self/ns/mnt", OFlag::O_RDONLY).ok()?,
        net_ns: open_fd("/proc/self/ns/net", OFlag::O_RDONLY).ok()?,
        cwd: open_fd(".", OFlag::O_PATH | OFlag::O_DIRECTORY).ok()?,
        claim: wire::new_claim().ok()?,
    };
    let mask = umask(Mode::from_bits_truncate(0o022));
    umask(mask);
    let request = Request {
        argv: args.to_vec(),
        driver: plugin.name.clone(),
        component: plugin.component.clone(),
        env: super::carried_env(),
        umask: mask.bits(),
        nice: rustix::process::getpriority_process(None).unwrap_or(0),
    };
    wire::send_request(socket.as_raw_fd(), &request, &fds).ok()?;
    if !answered_soon(&socket) && wire::take_claim(&fds.claim) {
        return None;
    }
    drop(fds);
    match wire::recv_answer(socket.as_raw_fd()) {
        Ok(Some(Answer::Reply { line, code })) => Some((line, code)),
        Ok(Some(Answer::Fallback { why })) => {
            let verb = rest.first().map(String::as_str).unwrap_or("");
            Logger::open(&plugin.name, verb).info(&format!(
                "warm child declined the call ({why}): running it in this process"
            ));
            None
        }
        // The child took the call and ended without an answer: whatever it did stands, and
        // kubelet retries a Failure.
        Ok(None) | Err(_) => {
            let message = format!(
                "the warm process of driver {} ended during the call without replying (see `flex logs`)",
                plugin.name
            );
            let reply = Reply::failure(message);
            Some((reply.to_line(), reply.exit_code()))
        }
    }
}

fn connected(path: &std::path::Path) -> Option<OwnedFd> {
    let address = UnixAddr::new(path).ok()?;
    let fd = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .ok()?;
    connect(fd.as_raw_fd(), &address).ok()?;
    Some(fd)
}

/// True when an answer (or the child's end) is there within the wait.
fn answered_soon(socket: &OwnedFd) -> bool {
    let mut fds = [PollFd::new(socket.as_fd(), PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::from(CLAIM_WAIT_MS)), Ok(1))
}
