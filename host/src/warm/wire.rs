//! The messages between a `flex` exec'd by kubelet and a warm child, on a `SOCK_SEQPACKET`
//! socket (one message each, kept whole): the request, with the caller's namespaces, working
//! directory and claim as descriptors, and the answer.
//!
//! The claim is a pipe holding one byte: whoever reads it runs the call. A caller that no
//! child answered in time reads it and runs the call itself; a child that then accepts the
//! connection finds the pipe empty and drops it. Exactly one of them gets the byte, so a call
//! never runs twice, and a call takes no round trip before its request.

use nix::cmsg_space;
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use serde::{Deserialize, Serialize};
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

/// The largest request a child reads. A longer argv (kubelet's option JSON is a few KiB) is
/// run in the calling process, which reads any size.
pub const MAX_REQUEST_BYTES: usize = 128 << 10;

/// The largest answer: a reply line is far shorter.
const MAX_ANSWER_BYTES: usize = 256 << 10;

/// One FlexVolume call, as the calling `flex` received it.
#[derive(Serialize, Deserialize, Debug)]
pub struct Request {
    pub argv: Vec<String>,
    /// The driver's name as the caller found it: it names the policy file and the logs.
    pub driver: String,
    /// The component the caller would run (found from its own `/proc/self/exe`).
    pub component: PathBuf,
    /// The caller's `FLEX_*`, `HOME` and `XDG_CACHE_HOME` (see `child::adopt_env`).
    pub env: Vec<(String, String)>,
    pub umask: u32,
    /// The caller's nice value: a child starts in the background and takes it for the call.
    pub nice: i32,
}

/// The descriptors sent with a request, in this order.
pub struct CallerFds {
    pub mount_ns: OwnedFd,
    pub net_ns: OwnedFd,
    pub cwd: OwnedFd,
    /// The read end of the claim pipe.
    pub claim: OwnedFd,
}

/// A claim: a non-blocking pipe with one byte in it, and its read end.
pub fn new_claim() -> Result<OwnedFd, String> {
    use nix::fcntl::OFlag;
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)
        .map_err(|e| format!("pipe: {e}"))?;
    match nix::unistd::write(&write, b"c") {
        Ok(1) => Ok(read),
        other => Err(format!("claim pipe: {other:?}")),
    }
}

/// True for the one reader that takes the claim's byte.
pub fn take_claim(claim: &OwnedFd) -> bool {
    let mut byte = [0u8; 1];
    matches!(nix::unistd::read(claim, &mut byte), Ok(1))
}

#[derive(Serialize, Deserialize, Debug)]
pub enum Answer {
    /// What the calling `flex` prints, and its exit status.
    Reply { line: String, code: i32 },
    /// Nothing was done: the caller runs the call itself.
    Fallback { why: String },
}

pub fn send_request(socket: RawFd, request: &Request, fds: &CallerFds) -> Result<(), String> {
    let bytes = serde_json::to_vec(request).map_err(|e| e.to_string())?;
    if bytes.len() > MAX_REQUEST_BYTES {
        return Err(format!("request of {} bytes", bytes.len()));
    }
    let raw = [
        fds.mount_ns.as_raw_fd(),
        fds.net_ns.as_raw_fd(),
        fds.cwd.as_raw_fd(),
        fds.claim.as_raw_fd(),
    ];
    let rights = [ControlMessage::ScmRights(&raw)];
    sendmsg::<()>(
        socket,
        &[IoSlice::new(&bytes)],
        &rights,
        MsgFlags::empty(),
        None,
    )
    .map(drop)
    .map_err(|e| format!("cannot send the request: {e}"))
}

/// The request and exactly the four descriptors it must carry; anything else is refused
/// (and any descriptors received are closed).
pub fn recv_request(socket: RawFd) -> Result<(Request, CallerFds), String> {
    let mut buffer = vec![0u8; MAX_REQUEST_BYTES];
    let mut space = cmsg_space!([RawFd; 4]);
    let (len, truncated, mut fds) = {
        let mut iov = [IoSliceMut::new(&mut buffer)];
        let message = recvmsg::<()>(
            socket,
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(|e| format!("cannot read the request: {e}"))?;
        let mut fds = Vec::new();
        for cmsg in message.cmsgs().map_err(|e| e.to_string())? {
            if let ControlMessageOwned::ScmRights(received) = cmsg {
                // SAFETY: the kernel just installed these descriptors in this process for us.
                fds.extend(
                    received
                        .into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        let truncated = message
            .flags
            .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
        (message.bytes, truncated, fds)
    };
    if len == 0 {
        return Err("the caller closed the connection".into());
    }
    if truncated || fds.len() != 4 {
        return Err(format!(
            "malformed request ({len} bytes, {} descriptors{})",
            fds.len(),
            if truncated { ", truncated" } else { "" }
        ));
    }
    let request: Request =
        serde_json::from_slice(&buffer[..len]).map_err(|e| format!("malformed request: {e}"))?;
    let claim = fds.pop().expect("four");
    let cwd = fds.pop().expect("four");
    let net_ns = fds.pop().expect("four");
    let mount_ns = fds.pop().expect("four");
    Ok((
        request,
        CallerFds {
            mount_ns,
            net_ns,
            cwd,
            claim,
        },
    ))
}

pub fn send_answer(socket: RawFd, answer: &Answer) -> Result<(), String> {
    let bytes = serde_json::to_vec(answer).map_err(|e| e.to_string())?;
    let sent = nix::sys::socket::send(socket, &bytes, MsgFlags::MSG_NOSIGNAL);
    sent.map(drop)
        .map_err(|e| format!("cannot send the answer: {e}"))
}

/// The child's answer; `None` when it closed the connection without one.
pub fn recv_answer(socket: RawFd) -> Result<Option<Answer>, String> {
    let mut buffer = vec![0u8; MAX_ANSWER_BYTES];
    let len = nix::sys::socket::recv(socket, &mut buffer, MsgFlags::empty())
        .map_err(|e| format!("cannot read the answer: {e}"))?;
    if len == 0 {
        return Ok(None);
    }
    serde_json::from_slice(&buffer[..len])
        .map(Some)
        .map_err(|e| format!("malformed answer: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};

    fn pair() -> (OwnedFd, OwnedFd) {
        socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap()
    }

    fn caller_fds() -> CallerFds {
        let open = |path: &str| std::fs::File::open(path).unwrap().into();
        CallerFds {
            mount_ns: open("/proc/self/ns/mnt"),
            net_ns: open("/proc/self/ns/net"),
            cwd: open("/"),
            claim: new_claim().unwrap(),
        }
    }

    fn request(argv: &[&str]) -> Request {
        Request {
            argv: argv.iter().map(|a| a.to_string()).collect(),
            driver: "acme~x".into(),
            component: "/p/acme~x/.version-1/x.wasm".into(),
            env: vec![("FLEX_LOG_DIR".into(), "/l".into())],
            umask: 0o022,
            nice: 0,
        }
    }

    #[test]
    fn a_request_arrives_whole_with_its_four_descriptors_in_order() {
        let (caller, child) = pair();
        let sent = caller_fds();
        send_request(caller.as_raw_fd(), &request(&["x", "init"]), &sent).unwrap();
        let (got, fds) = recv_request(child.as_raw_fd()).unwrap();
        assert_eq!(got.argv, ["x", "init"]);
        assert_eq!(got.env, [("FLEX_LOG_DIR".to_string(), "/l".to_string())]);
        let id = |fd: &OwnedFd| {
            let st = nix::sys::stat::fstat(fd).unwrap();
            (st.st_dev, st.st_ino)
        };
        assert_eq!(id(&fds.mount_ns), id(&sent.mount_ns));
        assert_eq!(id(&fds.net_ns), id(&sent.net_ns));
        assert_eq!(id(&fds.cwd), id(&sent.cwd));
        assert_eq!(id(&fds.claim), id(&sent.claim));
    }

    #[test]
    fn the_claim_goes_to_exactly_one_reader() {
        let (caller, child) = pair();
        let sent = caller_fds();
        send_request(caller.as_raw_fd(), &request(&["x", "init"]), &sent).unwrap();
        let (_, received) = recv_request(child.as_raw_fd()).unwrap();
        assert!(take_claim(&received.claim), "the first reader takes it");
        assert!(!take_claim(&sent.claim), "the other finds it taken");
        assert!(!take_claim(&received.claim));
    }

    #[test]
    fn a_request_without_its_descriptors_or_too_long_is_refused() {
        let (caller, child) = pair();
        nix::sys::socket::send(caller.as_raw_fd(), b"{}", MsgFlags::empty()).unwrap();
        let refused = recv_request(child.as_raw_fd()).err().unwrap();
        assert!(refused.contains("0 descriptors"), "{refused}");

        let long = "a".repeat(MAX_REQUEST_BYTES);
        let too_long = send_request(caller.as_raw_fd(), &request(&["x", &long]), &caller_fds());
        assert!(too_long.unwrap_err().contains("request of"));
    }

    #[test]
    fn an_answer_round_trips_and_a_closed_child_is_no_answer() {
        let (caller, child) = pair();
        let answer = Answer::Reply {
            line: "{\"status\":\"Success\"}\n".into(),
            code: 0,
        };
        send_answer(child.as_raw_fd(), &answer).unwrap();
        match recv_answer(caller.as_raw_fd()).unwrap() {
            Some(Answer::Reply { line, code }) => {
                assert_eq!((line.as_str(), code), ("{\"status\":\"Success\"}\n", 0))
            }
            other => panic!("{other:?}"),
        }
        drop(child);
        assert!(recv_answer(caller.as_raw_fd()).unwrap().is_none());
    }
}
