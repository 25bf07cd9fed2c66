//! Host tools (`blkid`, `mkfs.*`, `resize2fs`, `xfs_growfs`): an empty environment except
//! `PATH`, stdin from /dev/null, output captured; a failure becomes the error message with the
//! tool's stderr. A tool is handed the checked descriptor, never a name to look up again: the
//! descriptor is inherited and the tool opens `/proc/self/fd/N` (each tool here was tested to
//! accept that path: `blkid -p`, `mkfs.ext4`, `mkfs.xfs`, `resize2fs` (it finds the mount
//! point by device number), `xfs_growfs` (given the mount root's descriptor)).

use nix::libc;
use std::ffi::OsStr;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

/// Where host tools are looked up; their whole environment.
const TOOL_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// What a host tool did.
pub struct ToolOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// `/proc/self/fd/N` for a descriptor the tool inherits (same number in the child).
pub fn fd_arg(fd: BorrowedFd<'_>) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// Runs a host tool with a clean environment, stdin empty, output captured. `keep` stay open
/// in the tool: descriptors it is given as `/proc/self/fd/N`, or a lock it must hold until it
/// exits.
pub fn tool(program: &str, args: &[&OsStr], keep: &[RawFd]) -> Result<ToolOutput, String> {
    let mut command = Command::new(program);
    command
        .args(args)
        .env_clear()
        .env("PATH", TOOL_PATH)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let keep = keep.to_vec();
    if !keep.is_empty() {
        // SAFETY: only fcntl, async-signal-safe, runs between fork and exec.
        unsafe {
            command.pre_exec(move || {
                for &fd in &keep {
                    let flags = libc::fcntl(fd, libc::F_GETFD);
                    if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
    }
    let output = command
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    Ok(ToolOutput {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

/// Runs a host tool that must succeed; returns its stdout. `shown` names the object in the
/// message instead of the `/proc/self/fd/N` argument.
pub fn tool_ok(
    program: &str,
    args: &[&OsStr],
    keep: &[RawFd],
    shown: &str,
) -> Result<String, String> {
    let output = tool(program, args, keep)?;
    if output.code == Some(0) {
        return Ok(output.stdout);
    }
    let status = match output.code {
        Some(code) => format!("exit code {code}"),
        None => "killed by a signal".into(),
    };
    let stderr = output.stderr.trim();
    let detail = if stderr.is_empty() {
        output.stdout.trim()
    } else {
        stderr
    };
    Err(format!("{program} {shown} failed ({status}): {detail}"))
}

/// Every signature `blkid -p` finds on the device behind `fd` (low-level probe, no cache):
/// `TYPE=ext4`, `PTTYPE=gpt`... Empty when there is none.
pub fn signatures(fd: BorrowedFd<'_>, shown: &str) -> Result<Vec<(String, String)>, String> {
    let path = fd_arg(fd);
    let args = [
        OsStr::new("-p"),
        OsStr::new("-o"),
        OsStr::new("export"),
        OsStr::new(&path),
    ];
    let output = tool("blkid", &args, &[fd.as_raw_fd()])?;
    match output.code {
        Some(0) => Ok(output
            .stdout
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .filter(|(k, _)| k != "DEVNAME")
            .collect()),
        Some(2) => Ok(Vec::new()),
        code => Err(format!(
            "blkid -p {shown} failed ({code:?}): {}",
            output.stderr.trim()
        )),
    }
}

/// The file system (or, failing that, partition table) type among `blkid -p` signatures.
pub fn signature_type(signatures: &[(String, String)]) -> Option<String> {
    let get = |key: &str| {
        signatures
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    };
    get("TYPE")
        .or_else(|| get("PTTYPE").map(|t| format!("{t} partition table")))
        .or_else(|| signatures.first().map(|(k, v)| format!("{k}={v}")))
}

/// Whether this process has CAP_SYS_RESOURCE (online ext4 resize needs it; some containers
/// and VMs drop it even for root).
pub fn has_cap_sys_resource() -> bool {
    const CAP_SYS_RESOURCE: u32 = 24;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
            u64::from_str_radix(hex.trim(), 16).ok()
        })
        .is_some_and(|caps| caps & (1 << CAP_SYS_RESOURCE) != 0)
}
