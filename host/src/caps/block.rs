//! `flex:volume/block`: probe, format and grow block devices; loop-backed images.
//!
//! Devices are checked against `block.devices` on their resolved path, which is the one used.
//! `mkfs` refuses any device that carries a signature or is in use: no driver can force it.
//! Images are files the driver names (no `/`, no leading dot) inside `block.image_dir`.
//!
//! Locking, so that kubelet's retries and concurrent calls converge:
//! - the first time a call touches a device (`probe-fs`, `mkfs`, `resize-fs`) it takes an
//!   exclusive `flock` on the device node and keeps it until the call ends. A driver that
//!   probes, checks its mount point, formats and mounts is therefore alone on that device for
//!   the whole sequence; a concurrent call waits in its own `probe-fs`. This is also the lock
//!   systemd-udevd honours (it does not probe a device locked this way).
//! - `mkfs` hands the locked descriptor to the mkfs process, so the lock lasts until mkfs
//!   exits even if `flex` itself is killed mid-way: a retried call waits for the format to
//!   finish, then finds the file system instead of a half-written device.
//! - image operations hold an exclusive `flock` on the image file, so concurrent attaches of
//!   one image never create two loop devices, and a delete cannot race an attach.
//!
//! Host tools (`blkid`, `mkfs.*`, `resize2fs`, `xfs_growfs`, `losetup`) run with an empty
//! environment except `PATH`, stdin from /dev/null and their output captured; a failure
//! becomes the error message with the tool's stderr.

use super::Patterns;
use super::mounts::unescape_mountinfo;
use crate::audit::Audit;
use crate::bindings::flex::volume::block::Host;
use nix::libc;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The `[block]` table of a policy.
#[derive(Deserialize, Serialize, Default, Debug)]
#[serde(deny_unknown_fields)]
pub struct BlockGrant {
    /// Devices that may be probed, formatted and resized: globs on the resolved path.
    #[serde(default)]
    pub devices: Vec<String>,
    /// File systems `mkfs` may create (`ext4`, `xfs`).
    #[serde(default)]
    pub fs_types: Vec<String>,
    /// Where loop-backed images live; no images without it.
    #[serde(default)]
    pub image_dir: Option<PathBuf>,
    /// The largest image, in bytes.
    #[serde(default)]
    pub max_image_bytes: u64,
}

impl BlockGrant {
    pub fn validate(&self) -> Result<(), String> {
        Patterns::compile(&self.devices)?;
        if let Some(dir) = &self.image_dir
            && !dir.is_absolute()
        {
            return Err(format!(
                "block.image_dir must be an absolute path, not {}",
                dir.display()
            ));
        }
        if let Some(fs) = self
            .fs_types
            .iter()
            .find(|fs| !SUPPORTED_FS.contains(&fs.as_str()))
        {
            return Err(format!(
                "block.fs_types: {fs:?} is not supported (supported: {})",
                SUPPORTED_FS.join(", ")
            ));
        }
        Ok(())
    }
}

/// File systems this capability knows how to create and grow.
const SUPPORTED_FS: [&str; 2] = ["ext4", "xfs"];
/// Where host tools are looked up; their whole environment.
const TOOL_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";
/// Longest image name.
const MAX_NAME: usize = 128;

/// The block capability for one call.
pub struct Block {
    devices: Patterns,
    fs_types: Vec<String>,
    image_dir: Option<PathBuf>,
    max_image_bytes: u64,
    /// Devices this call has locked (by device number), held until the call ends.
    locks: HashMap<u64, File>,
    audit: Audit,
}

/// A device the policy allows, resolved.
struct Device {
    path: PathBuf,
    rdev: u64,
    rule: String,
}

impl Device {
    fn major_minor(&self) -> String {
        format!(
            "{}:{}",
            nix::sys::stat::major(self.rdev),
            nix::sys::stat::minor(self.rdev)
        )
    }
}

impl Block {
    /// `grant` must have passed [`BlockGrant::validate`].
    pub fn new(grant: &BlockGrant, audit: Audit) -> Block {
        Block {
            devices: Patterns::compile(&grant.devices).unwrap_or_default(),
            fs_types: grant.fs_types.clone(),
            image_dir: grant.image_dir.clone(),
            max_image_bytes: grant.max_image_bytes,
            locks: HashMap::new(),
            audit,
        }
    }

    /// Resolves `requested` (symlinks followed) and checks the result against `block.devices`.
    fn device(&self, requested: &str) -> Result<Device, String> {
        if !requested.starts_with('/') {
            return Err(format!(
                "denied: device {requested:?} is not an absolute path"
            ));
        }
        let path =
            std::fs::canonicalize(requested).map_err(|e| format!("device {requested}: {e}"))?;
        let shown = path.to_string_lossy().into_owned();
        let Some(pattern) = self.devices.matching(&shown) else {
            return Err(format!(
                "denied: device {requested} (resolved: {shown}) is not granted by block.devices"
            ));
        };
        let rule = format!("block.devices {pattern:?}");
        let meta = std::fs::metadata(&path).map_err(|e| format!("device {shown}: {e}"))?;
        if !meta.file_type().is_block_device() {
            return Err(format!("denied: {shown} is not a block device"));
        }
        Ok(Device {
            path,
            rdev: meta.rdev(),
            rule,
        })
    }

    /// Takes (once per call) the exclusive lock on a device node; returns the locked fd.
    fn lock_device(&mut self, device: &Device) -> Result<RawFd, String> {
        if let Some(file) = self.locks.get(&device.rdev) {
            return Ok(file.as_raw_fd());
        }
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(&device.path)
            .map_err(|e| format!("open {}: {e}", device.path.display()))?;
        flock(&file, &device.path)?;
        let fd = file.as_raw_fd();
        self.locks.insert(device.rdev, file);
        Ok(fd)
    }

    /// The image directory, with the rule that grants it; created (0700) if missing.
    fn image_dir(&self) -> Result<(PathBuf, String), String> {
        let Some(dir) = &self.image_dir else {
            return Err("denied: the policy sets no block.image_dir".into());
        };
        let rule = format!("block.image_dir {:?}", dir.display().to_string());
        Ok((dir.clone(), rule))
    }

    /// The path of image `name`, after checking the name and that images are granted.
    fn image(&self, name: &str) -> Result<(PathBuf, String), String> {
        check_image_name(name)?;
        let (dir, rule) = self.image_dir()?;
        Ok((dir.join(name), rule))
    }

    fn check_size(&self, size: u64) -> Result<String, String> {
        if size == 0 {
            return Err("denied: an image must be larger than 0 bytes".into());
        }
        if size > self.max_image_bytes {
            return Err(format!(
                "denied: {size} bytes is more than block.max_image_bytes ({})",
                self.max_image_bytes
            ));
        }
        Ok(format!("block.max_image_bytes {}", self.max_image_bytes))
    }
}

fn check_image_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "denied: invalid image name {name:?} (1 to {MAX_NAME} of [A-Za-z0-9._-], no leading dot)"
        ))
    }
}

/// How long a call waits for another one's lock (a format of a large device takes a while)
/// before it fails; below the 120 s verb deadline, which cannot interrupt a host call.
const LOCK_WAIT: Duration = Duration::from_secs(100);

/// An exclusive `flock(2)`, waited for up to [`LOCK_WAIT`].
fn flock(file: &File, path: &Path) -> Result<(), String> {
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        // SAFETY: flock on a descriptor we own; no memory is passed.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(());
        }
        let error = std::io::Error::last_os_error();
        match error.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Some(libc::EWOULDBLOCK) => {
                return Err(format!(
                    "{} is still locked by another operation after {} s",
                    path.display(),
                    LOCK_WAIT.as_secs()
                ));
            }
            _ => return Err(format!("lock {}: {error}", path.display())),
        }
    }
}

/// What a host tool did.
struct ToolOutput {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs a host tool with a clean environment, stdin empty, output captured. `keep_fd` stays
/// open in the tool (a lock it must hold until it exits).
fn tool(program: &str, args: &[&OsStr], keep_fd: Option<RawFd>) -> Result<ToolOutput, String> {
    let mut command = Command::new(program);
    command
        .args(args)
        .env_clear()
        .env("PATH", TOOL_PATH)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(fd) = keep_fd {
        // SAFETY: only fcntl, async-signal-safe, runs between fork and exec.
        unsafe {
            command.pre_exec(move || {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(std::io::Error::last_os_error());
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

/// Runs a host tool that must succeed; returns its stdout.
fn tool_ok(program: &str, args: &[&OsStr], keep_fd: Option<RawFd>) -> Result<String, String> {
    let output = tool(program, args, keep_fd)?;
    if output.code == Some(0) {
        return Ok(output.stdout);
    }
    let shown: Vec<_> = args.iter().map(|a| a.to_string_lossy()).collect();
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
    Err(format!(
        "{program} {} failed ({status}): {detail}",
        shown.join(" ")
    ))
}

/// Every signature `blkid -p` finds (low-level probe, no cache): `TYPE=ext4`, `PTTYPE=gpt`...
/// Empty when the device is blank.
fn signatures(device: &Path) -> Result<Vec<(String, String)>, String> {
    let args = [
        OsStr::new("-p"),
        OsStr::new("-o"),
        OsStr::new("export"),
        device.as_os_str(),
    ];
    let output = tool("blkid", &args, None)?;
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
            "blkid -p {} failed ({code:?}): {}",
            device.display(),
            output.stderr.trim()
        )),
    }
}

/// The file system (or, failing that, partition table) type among `blkid -p` signatures.
fn signature_type(signatures: &[(String, String)]) -> Option<String> {
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

/// Mount points of a device (by major:minor) in this mount namespace.
fn mount_points(major_minor: &str) -> Result<Vec<PathBuf>, String> {
    let table = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("read /proc/self/mountinfo: {e}"))?;
    Ok(table
        .lines()
        .map(|line| line.split(' ').collect::<Vec<_>>())
        .filter(|fields| fields.len() > 4 && fields[2] == major_minor)
        .map(|fields| PathBuf::from(unescape_mountinfo(fields[4])))
        .collect())
}

/// Why a device is in use, if it is: mounted, held by another device (dm, md...), or has
/// partitions, or (second check) the kernel refuses an exclusive open.
fn in_use(device: &Device) -> Result<Option<String>, String> {
    let shown = device.path.display();
    if let Some(point) = mount_points(&device.major_minor())?.first() {
        return Ok(Some(format!("{shown} is mounted at {}", point.display())));
    }
    let sys = PathBuf::from(format!("/sys/dev/block/{}", device.major_minor()));
    if let Ok(holders) = std::fs::read_dir(sys.join("holders"))
        && let Some(holder) = holders.flatten().next()
    {
        let name = holder.file_name().to_string_lossy().into_owned();
        return Ok(Some(format!("{shown} is held by {name}")));
    }
    if let Ok(entries) = std::fs::read_dir(&sys) {
        for entry in entries.flatten() {
            if entry.path().join("partition").exists() {
                let name = entry.file_name().to_string_lossy().into_owned();
                return Ok(Some(format!("{shown} has partition {name}")));
            }
        }
    }
    match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_EXCL | libc::O_CLOEXEC)
        .open(&device.path)
    {
        Ok(_) => Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(Some(format!(
            "{shown} is busy (open exclusively elsewhere)"
        ))),
        Err(e) => Err(format!("open {shown}: {e}")),
    }
}

fn perform_mkfs(device: &Device, fs_type: &str, lock_fd: RawFd) -> Result<(), String> {
    let shown = device.path.display();
    if let Some(reason) = in_use(device)? {
        return Err(format!("refused to format: {reason}"));
    }
    let found = signatures(&device.path)?;
    if let Some(kind) = signature_type(&found) {
        return Err(format!(
            "refused to format {shown}: it already carries a signature ({kind})"
        ));
    }
    let program = match fs_type {
        "ext4" => "mkfs.ext4",
        "xfs" => "mkfs.xfs",
        other => return Err(format!("cannot create {other:?} file systems")),
    };
    tool_ok(
        program,
        &[OsStr::new("-q"), device.path.as_os_str()],
        Some(lock_fd),
    )
    .map(drop)
}

/// Loop devices whose backing file is `image` (resolved path), from sysfs. A backing file that
/// was deleted (` (deleted)` suffix) is a different, older image and never matches.
fn loop_devices_of(image: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    let wanted = image.as_os_str().as_encoded_bytes();
    let mut found: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("loop"))
        .filter(|e| {
            std::fs::read(e.path().join("loop/backing_file"))
                .map(|text| text.strip_suffix(b"\n").unwrap_or(&text) == wanted)
                .unwrap_or(false)
        })
        .map(|e| Path::new("/dev").join(e.file_name()))
        .collect();
    found.sort();
    found
}

/// Opens an existing image (no symlinks) and locks it exclusively; `None` if it is missing.
fn open_locked(path: &Path) -> Result<Option<File>, String> {
    open_image(path, false)
}

/// Opens (or creates) an image and locks it exclusively. An image deleted while this call
/// waited for its lock is opened again, so the lock is always on the file the name names.
fn open_image(path: &Path, create: bool) -> Result<Option<File>, String> {
    loop {
        let opened = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path);
        let file = match opened {
            Ok(file) => file,
            Err(e) if !create && e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("open {}: {e}", path.display())),
        };
        flock(&file, path)?;
        check_regular(&file, path)?;
        let meta = file
            .metadata()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if meta.nlink() > 0 {
            return Ok(Some(file));
        }
    }
}

fn check_regular(file: &File, path: &Path) -> Result<(), String> {
    let meta = file
        .metadata()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    Ok(())
}

/// The image's path with its directory resolved: what the kernel reports as backing file.
fn resolved_image(dir: &Path, name: &str) -> Option<PathBuf> {
    std::fs::canonicalize(dir).ok().map(|d| d.join(name))
}

fn ensure_dir(dir: &Path) -> Result<(), String> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("create {}: {e}", dir.display()))
}

fn perform_create(dir: &Path, name: &str, size: u64) -> Result<u64, String> {
    ensure_dir(dir)?;
    let path = dir.join(name);
    let file = open_image(&path, true)?
        .ok_or_else(|| format!("create {}: not created", path.display()))?;
    let len = file
        .metadata()
        .map_err(|e| format!("{}: {e}", path.display()))?
        .len();
    if len > 0 {
        return Ok(len); // an existing image is kept as it is
    }
    // New, or created by a call that died before sizing it: nothing to lose.
    file.set_len(size)
        .map_err(|e| format!("size {}: {e}", path.display()))?;
    Ok(size)
}

fn losetup(args: &[&OsStr]) -> Result<String, String> {
    tool_ok("losetup", args, None)
}

fn perform_attach(dir: &Path, name: &str) -> Result<String, String> {
    let path = dir.join(name);
    let Some(_lock) = open_locked(&path)? else {
        return Err(format!("image {name} does not exist"));
    };
    let resolved = resolved_image(dir, name).unwrap_or(path);
    if let Some(device) = loop_devices_of(&resolved).into_iter().next() {
        return Ok(device.to_string_lossy().into_owned());
    }
    let out = losetup(&[
        OsStr::new("--find"),
        OsStr::new("--show"),
        OsStr::new("--nooverlap"),
        resolved.as_os_str(),
    ])?;
    let device = out.trim();
    if !device.starts_with("/dev/loop") {
        return Err(format!("losetup printed an unexpected device {device:?}"));
    }
    Ok(device.to_string())
}

fn perform_detach(dir: &Path, name: &str) -> Result<(), String> {
    let path = dir.join(name);
    let _lock = open_locked(&path)?;
    let resolved = resolved_image(dir, name).unwrap_or(path);
    for device in loop_devices_of(&resolved) {
        let meta = std::fs::metadata(&device).map_err(|e| format!("{}: {e}", device.display()))?;
        let major_minor = format!(
            "{}:{}",
            nix::sys::stat::major(meta.rdev()),
            nix::sys::stat::minor(meta.rdev())
        );
        if let Some(point) = mount_points(&major_minor)?.first() {
            return Err(format!(
                "refused to detach {}: it is mounted at {}",
                device.display(),
                point.display()
            ));
        }
        losetup(&[OsStr::new("-d"), device.as_os_str()])?;
    }
    // LOOP_CLR_FD on a device someone still has open (udev's probe) only clears it on close.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !loop_devices_of(&resolved).is_empty() {
        if Instant::now() > deadline {
            return Err(format!(
                "{name}'s loop device is still attached after detach"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn perform_grow(dir: &Path, name: &str, size: u64) -> Result<(), String> {
    let path = dir.join(name);
    let Some(file) = open_locked(&path)? else {
        return Err(format!("image {name} does not exist"));
    };
    let len = file
        .metadata()
        .map_err(|e| format!("{}: {e}", path.display()))?
        .len();
    if len < size {
        file.set_len(size)
            .map_err(|e| format!("grow {}: {e}", path.display()))?;
    }
    // Always refresh: a call that died between the two steps is completed by its retry.
    let resolved = resolved_image(dir, name).unwrap_or(path);
    for device in loop_devices_of(&resolved) {
        losetup(&[OsStr::new("--set-capacity"), device.as_os_str()])?;
    }
    Ok(())
}

fn perform_delete(dir: &Path, name: &str) -> Result<(), String> {
    let path = dir.join(name);
    let Some(_lock) = open_locked(&path)? else {
        return Ok(());
    };
    let resolved = resolved_image(dir, name).unwrap_or_else(|| path.clone());
    if let Some(device) = loop_devices_of(&resolved).first() {
        return Err(format!(
            "refused to delete image {name}: it is attached to {}",
            device.display()
        ));
    }
    std::fs::remove_file(&path).map_err(|e| format!("delete {}: {e}", path.display()))
}

/// Whether this process has CAP_SYS_RESOURCE (online ext4 resize needs it; some
/// containers and VMs drop it even for root).
fn has_cap_sys_resource() -> bool {
    const CAP_SYS_RESOURCE: u32 = 24;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
            u64::from_str_radix(hex.trim(), 16).ok()
        })
        .is_some_and(|caps| caps & (1 << CAP_SYS_RESOURCE) != 0)
}

/// Device size from sysfs (512-byte sectors), which needs no open of the device.
fn sysfs_size(device: &Device) -> Result<u64, String> {
    let path = format!("/sys/dev/block/{}/size", device.major_minor());
    let text = std::fs::read_to_string(&path).map_err(|e| format!("read {path}: {e}"))?;
    text.trim()
        .parse::<u64>()
        .map(|sectors| sectors * 512)
        .map_err(|e| format!("{path}: {e}"))
}

impl Host for Block {
    /// Read-only, so not audited; the device rule applies and the device lock is taken, so a
    /// probe never sees a format in progress.
    fn probe_fs(&mut self, device: String) -> Result<Option<String>, String> {
        let device = self.device(&device)?;
        self.lock_device(&device)?;
        Ok(signature_type(&signatures(&device.path)?))
    }

    fn mkfs(&mut self, device: String, fs_type: String) -> Result<(), String> {
        let args = json!({ "device": device, "fs_type": fs_type });
        let checked = self.device(&device).and_then(|d| {
            if !self.fs_types.contains(&fs_type) {
                return Err(format!(
                    "denied: file system type {fs_type:?} is not granted by block.fs_types"
                ));
            }
            let rule = format!("{}; block.fs_types {fs_type:?}", d.rule);
            Ok((d, rule))
        });
        let rule = checked
            .as_ref()
            .map(|(_, r)| r.clone())
            .map_err(Clone::clone);
        let lock = match (&checked, self.audit.dry_run) {
            (Ok((d, _)), false) => Some(self.lock_device(d)),
            _ => None,
        };
        self.audit.run("mkfs", args, rule, || {
            let (device, _) = checked.expect("allowed");
            let fd = lock.expect("locked when performed")?;
            perform_mkfs(&device, &fs_type, fd)
        })
    }

    fn resize_fs(&mut self, device: String, mount_path: String) -> Result<(), String> {
        let args = json!({ "device": device, "mount_path": mount_path });
        let checked = self.device(&device).and_then(|d| {
            let mount = std::fs::canonicalize(&mount_path)
                .map_err(|e| format!("mount path {mount_path}: {e}"))?;
            if !mount_points(&d.major_minor())?.contains(&mount) {
                return Err(format!(
                    "denied: {} is not a mount point of {}",
                    mount.display(),
                    d.path.display()
                ));
            }
            let rule = format!("{}; mounted at the given path", d.rule);
            Ok((d, mount, rule))
        });
        let rule = checked.as_ref().map(|c| c.2.clone()).map_err(Clone::clone);
        let lock = match (&checked, self.audit.dry_run) {
            (Ok((d, _, _)), false) => Some(self.lock_device(d)),
            _ => None,
        };
        self.audit.run("resize-fs", args, rule, || {
            let (device, mount, _) = checked.expect("allowed");
            lock.expect("locked when performed")?;
            let found = signatures(&device.path)?;
            match signature_type(&found).as_deref() {
                Some("ext4") => tool_ok("resize2fs", &[device.path.as_os_str()], None)
                    .map_err(|e| match has_cap_sys_resource() {
                        false => format!(
                            "{e} (growing a mounted ext4 needs CAP_SYS_RESOURCE, which flex does not have)"
                        ),
                        true => e,
                    }),
                Some("xfs") => tool_ok("xfs_growfs", &[mount.as_os_str()], None),
                other => Err(format!(
                    "cannot grow {}: file system {other:?} is not ext4 or xfs",
                    device.path.display()
                )),
            }
            .map(drop)
        })
    }

    /// Read-only, so not audited; the device rule applies.
    fn device_size(&mut self, device: String) -> Result<u64, String> {
        sysfs_size(&self.device(&device)?)
    }

    /// Read-only, so not audited. Until the path exists only `/dev/...` paths are waited for;
    /// once it exists the device rule applies to where it leads.
    fn wait_for_device(&mut self, device: String, timeout_ms: u32) -> Result<bool, String> {
        if !device.starts_with("/dev/") {
            return Err(format!("denied: device {device:?} is not under /dev"));
        }
        let deadline = Instant::now() + Duration::from_millis(timeout_ms.into());
        loop {
            if Path::new(&device).exists() {
                self.device(&device)?;
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn create_image(&mut self, name: String, size: u64) -> Result<u64, String> {
        let args = json!({ "name": name, "size": size });
        let checked = self.image(&name).and_then(|(_, rule)| {
            let size_rule = self.check_size(size)?;
            Ok(format!("{rule}; {size_rule}"))
        });
        let dir = self.image_dir.clone().unwrap_or_default();
        self.audit.run("create-image", args, checked, || {
            perform_create(&dir, &name, size)
        })
    }

    /// Read-only, so not audited; the image rules apply.
    fn image_size(&mut self, name: String) -> Result<Option<u64>, String> {
        let (path, _) = self.image(&name)?;
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_file() => Ok(Some(meta.len())),
            Ok(_) => Err(format!("{} is not a regular file", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    fn grow_image(&mut self, name: String, size: u64) -> Result<(), String> {
        let args = json!({ "name": name, "size": size });
        let checked = self.image(&name).and_then(|(_, rule)| {
            let size_rule = self.check_size(size)?;
            Ok(format!("{rule}; {size_rule}"))
        });
        let dir = self.image_dir.clone().unwrap_or_default();
        self.audit.run("grow-image", args, checked, || {
            perform_grow(&dir, &name, size)
        })
    }

    fn delete_image(&mut self, name: String) -> Result<(), String> {
        let args = json!({ "name": name });
        let checked = self.image(&name).map(|(_, rule)| rule);
        let dir = self.image_dir.clone().unwrap_or_default();
        self.audit.run("delete-image", args, checked, || {
            perform_delete(&dir, &name)
        })
    }

    fn attach_image(&mut self, name: String) -> Result<String, String> {
        let args = json!({ "name": name });
        let checked = self.image(&name).map(|(_, rule)| rule);
        let dir = self.image_dir.clone().unwrap_or_default();
        self.audit.run("attach-image", args, checked, || {
            perform_attach(&dir, &name)
        })
    }

    /// Read-only, so not audited; the image rules apply.
    fn image_device(&mut self, name: String) -> Result<Option<String>, String> {
        let (_, _) = self.image(&name)?;
        let (dir, _) = self.image_dir()?;
        Ok(resolved_image(&dir, &name).and_then(|image| {
            loop_devices_of(&image)
                .into_iter()
                .next()
                .map(|d| d.to_string_lossy().into_owned())
        }))
    }

    fn detach_image(&mut self, name: String) -> Result<(), String> {
        let args = json!({ "name": name });
        let checked = self.image(&name).map(|(_, rule)| rule);
        let dir = self.image_dir.clone().unwrap_or_default();
        self.audit.run("detach-image", args, checked, || {
            perform_detach(&dir, &name)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn require_root() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "these tests use loop devices: run them as root"
        );
    }

    fn grant(image_dir: &Path) -> BlockGrant {
        BlockGrant {
            devices: vec!["/dev/loop[0-9]*".into()],
            fs_types: vec!["ext4".into(), "xfs".into()],
            image_dir: Some(image_dir.to_path_buf()),
            max_image_bytes: 64 * MIB,
        }
    }

    fn block(image_dir: &Path) -> Block {
        Block::new(&grant(image_dir), Audit::to(None, "test", "test", false))
    }

    /// A loop device on a fresh sparse file, detached on drop (also when a test fails).
    struct LoopDevice {
        path: String,
        _dir: tempfile::TempDir,
    }

    impl LoopDevice {
        fn new(size: u64) -> LoopDevice {
            require_root();
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("disk");
            File::create(&file).unwrap().set_len(size).unwrap();
            let out = Command::new("losetup")
                .args(["--find", "--show"])
                .arg(&file)
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            let path = String::from_utf8(out.stdout).unwrap().trim().to_string();
            LoopDevice { path, _dir: dir }
        }
    }

    impl Drop for LoopDevice {
        fn drop(&mut self) {
            let _ = Command::new("losetup").args(["-d", &self.path]).status();
        }
    }

    /// Detaches every loop device of an image dir on drop.
    struct ImageDir(tempfile::TempDir);

    impl ImageDir {
        fn new() -> ImageDir {
            require_root();
            ImageDir(tempfile::tempdir().unwrap())
        }
        fn path(&self) -> &Path {
            self.0.path()
        }
    }

    impl Drop for ImageDir {
        fn drop(&mut self) {
            for entry in std::fs::read_dir(self.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let image = entry.path().canonicalize().unwrap_or(entry.path());
                for device in loop_devices_of(&image) {
                    let _ = Command::new("losetup").arg("-d").arg(&device).status();
                }
            }
        }
    }

    #[test]
    fn unlisted_devices_are_denied_also_through_symlinks() {
        let images = ImageDir::new();
        let loop_device = LoopDevice::new(4 * MIB);
        let mut block = block(images.path());
        for device in ["/dev/null", "/dev/zero", "loop0", "/dev/../dev/null"] {
            let err = Host::probe_fs(&mut block, device.into()).unwrap_err();
            assert!(err.starts_with("denied"), "{device}: {err}");
            let err = Host::mkfs(&mut block, device.into(), "ext4".into()).unwrap_err();
            assert!(err.starts_with("denied"), "{device}: {err}");
            assert!(Host::device_size(&mut block, device.into()).is_err());
        }
        let links = tempfile::tempdir().unwrap();
        let bad = links.path().join("by-id-null");
        std::os::unix::fs::symlink("/dev/null", &bad).unwrap();
        let err = Host::mkfs(&mut block, bad.to_string_lossy().into(), "ext4".into()).unwrap_err();
        assert!(err.contains("resolved: /dev/null"), "{err}");

        // A link to a listed device is fine, and the resolved device is the one used.
        let good = links.path().join("by-id-loop");
        std::os::unix::fs::symlink(&loop_device.path, &good).unwrap();
        let good = good.to_string_lossy().into_owned();
        assert_eq!(Host::probe_fs(&mut block, good.clone()), Ok(None));
        assert_eq!(Host::device_size(&mut block, good.clone()), Ok(4 * MIB));
        let err = Host::mkfs(&mut block, good, "btrfs".into()).unwrap_err();
        assert!(err.contains("block.fs_types"), "{err}");
    }

    #[test]
    fn image_names_cannot_leave_the_image_dir() {
        let images = ImageDir::new();
        let dir = images.path().join("images");
        let mut block = block(&dir);
        let long = "a".repeat(MAX_NAME + 1);
        for name in ["../x", "a/b", ".hidden", "", "..", "sp ace", "nul\0", &long] {
            let err = Host::create_image(&mut block, name.into(), MIB).unwrap_err();
            assert!(
                err.starts_with("denied: invalid image name"),
                "{name}: {err}"
            );
            assert!(Host::image_size(&mut block, name.into()).is_err());
            assert!(Host::attach_image(&mut block, name.into()).is_err());
            assert!(Host::delete_image(&mut block, name.into()).is_err());
        }
        assert!(!images.path().join("x").exists());
        assert!(!dir.exists(), "nothing may be created for a denied name");
        let ok = "a".repeat(MAX_NAME);
        assert_eq!(Host::create_image(&mut block, ok.clone(), MIB), Ok(MIB));
        let meta = std::fs::metadata(&dir).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o700);
    }

    #[test]
    fn image_size_and_dir_limits() {
        let images = ImageDir::new();
        let mut block = block(images.path());
        let err = Host::create_image(&mut block, "big".into(), 64 * MIB + 1).unwrap_err();
        assert!(err.contains("max_image_bytes"), "{err}");
        assert!(Host::create_image(&mut block, "zero".into(), 0).is_err());
        assert_eq!(Host::image_size(&mut block, "big".into()), Ok(None));
        assert_eq!(
            Host::create_image(&mut block, "v".into(), 8 * MIB),
            Ok(8 * MIB)
        );
        // An existing image is kept as it is.
        assert_eq!(
            Host::create_image(&mut block, "v".into(), 16 * MIB),
            Ok(8 * MIB)
        );
        let err = Host::grow_image(&mut block, "v".into(), 65 * MIB).unwrap_err();
        assert!(err.contains("max_image_bytes"), "{err}");
        assert_eq!(Host::image_size(&mut block, "v".into()), Ok(Some(8 * MIB)));

        let mut no_dir = BlockGrant {
            image_dir: None,
            ..grant(images.path())
        };
        no_dir.max_image_bytes = 1 << 40;
        let mut block = Block::new(&no_dir, Audit::to(None, "t", "t", false));
        let err = Host::create_image(&mut block, "v".into(), MIB).unwrap_err();
        assert!(err.contains("no block.image_dir"), "{err}");
    }

    #[test]
    fn mkfs_formats_a_blank_device_and_refuses_one_with_a_file_system() {
        let images = ImageDir::new();
        let device = LoopDevice::new(32 * MIB);
        let mut block = block(images.path());
        assert_eq!(
            Host::mkfs(&mut block, device.path.clone(), "ext4".into()),
            Ok(())
        );
        assert_eq!(
            Host::probe_fs(&mut block, device.path.clone()),
            Ok(Some("ext4".into()))
        );
        // A new call (another flex process) sees the file system and refuses.
        drop(block);
        let mut block = super::tests::block(images.path());
        for fs in ["ext4", "xfs"] {
            let err = Host::mkfs(&mut block, device.path.clone(), fs.into()).unwrap_err();
            assert!(err.contains("already carries a signature (ext4)"), "{err}");
        }
    }

    #[test]
    fn concurrent_mkfs_formats_once() {
        let images = ImageDir::new();
        let device = LoopDevice::new(32 * MIB);
        // Separate Blocks: separate calls, as separate flex processes would be.
        let results: Vec<Result<(), String>> = std::thread::scope(|s| {
            let calls: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        Host::mkfs(
                            &mut block(images.path()),
                            device.path.clone(),
                            "ext4".into(),
                        )
                    })
                })
                .collect();
            calls.into_iter().map(|c| c.join().unwrap()).collect()
        });
        assert_eq!(
            results.iter().filter(|r| r.is_ok()).count(),
            1,
            "{results:?}"
        );
        for err in results.iter().filter_map(|r| r.as_ref().err()) {
            assert!(err.contains("already carries a signature (ext4)"), "{err}");
        }
    }

    #[test]
    fn mkfs_refuses_a_partition_table() {
        let images = ImageDir::new();
        let device = LoopDevice::new(8 * MIB);
        {
            // One MBR partition entry (type 0x83 at LBA 2048) and the boot signature.
            use std::io::{Seek, SeekFrom, Write};
            let mut disk = OpenOptions::new().write(true).open(&device.path).unwrap();
            let mut entry = vec![0u8, 0, 0, 0, 0x83, 0, 0, 0];
            entry.extend(2048u32.to_le_bytes());
            entry.extend(4096u32.to_le_bytes());
            disk.seek(SeekFrom::Start(446)).unwrap();
            disk.write_all(&entry).unwrap();
            disk.seek(SeekFrom::Start(510)).unwrap();
            disk.write_all(&[0x55, 0xaa]).unwrap();
            disk.sync_all().unwrap();
        }
        let mut block = block(images.path());
        assert_eq!(
            Host::probe_fs(&mut block, device.path.clone()),
            Ok(Some("dos partition table".into()))
        );
        let err = Host::mkfs(&mut block, device.path.clone(), "ext4".into()).unwrap_err();
        assert!(err.contains("dos partition table"), "{err}");
    }

    #[test]
    fn mkfs_refuses_a_mounted_device() {
        let images = ImageDir::new();
        let device = LoopDevice::new(32 * MIB);
        let mut block = block(images.path());
        Host::mkfs(&mut block, device.path.clone(), "ext4".into()).unwrap();
        drop(block);
        let mount = tempfile::tempdir().unwrap();
        nix::mount::mount(
            Some(device.path.as_str()),
            mount.path(),
            Some("ext4"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .unwrap();
        let mut block = super::tests::block(images.path());
        let err = Host::mkfs(&mut block, device.path.clone(), "ext4".into()).unwrap_err();
        let _ = nix::mount::umount(mount.path());
        assert!(err.contains("is mounted at"), "{err}");
    }

    #[test]
    fn loop_image_lifecycle() {
        let images = ImageDir::new();
        let mut block = block(images.path());
        assert_eq!(Host::image_device(&mut block, "vol".into()), Ok(None));
        assert!(Host::attach_image(&mut block, "vol".into()).is_err());
        Host::create_image(&mut block, "vol".into(), 16 * MIB).unwrap();
        let device = Host::attach_image(&mut block, "vol".into()).unwrap();
        assert!(device.starts_with("/dev/loop"), "{device}");
        assert_eq!(
            Host::attach_image(&mut block, "vol".into()),
            Ok(device.clone())
        );
        assert_eq!(
            Host::image_device(&mut block, "vol".into()),
            Ok(Some(device.clone()))
        );
        assert_eq!(Host::device_size(&mut block, device.clone()), Ok(16 * MIB));
        Host::grow_image(&mut block, "vol".into(), 24 * MIB).unwrap();
        assert_eq!(Host::device_size(&mut block, device.clone()), Ok(24 * MIB));
        // Never shrinks.
        Host::grow_image(&mut block, "vol".into(), 8 * MIB).unwrap();
        assert_eq!(
            Host::image_size(&mut block, "vol".into()),
            Ok(Some(24 * MIB))
        );

        let err = Host::delete_image(&mut block, "vol".into()).unwrap_err();
        assert!(err.contains("attached"), "{err}");
        Host::detach_image(&mut block, "vol".into()).unwrap();
        Host::detach_image(&mut block, "vol".into()).unwrap();
        assert_eq!(Host::image_device(&mut block, "vol".into()), Ok(None));
        Host::delete_image(&mut block, "vol".into()).unwrap();
        Host::delete_image(&mut block, "vol".into()).unwrap();
        assert_eq!(Host::image_size(&mut block, "vol".into()), Ok(None));
    }

    #[test]
    fn concurrent_attaches_share_one_loop_device() {
        let images = ImageDir::new();
        Host::create_image(&mut block(images.path()), "shared".into(), 8 * MIB).unwrap();
        let devices: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..6)
                .map(|_| s.spawn(|| Host::attach_image(&mut block(images.path()), "shared".into())))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap().unwrap())
                .collect()
        });
        assert!(devices.iter().all(|d| d == &devices[0]), "{devices:?}");
        let image = images.path().canonicalize().unwrap().join("shared");
        assert_eq!(loop_devices_of(&image).len(), 1);
    }

    #[test]
    fn dry_run_performs_nothing() {
        let images = ImageDir::new();
        let device = LoopDevice::new(32 * MIB);
        let log = images.path().join("audit.jsonl");
        let dir = images.path().join("images");
        let audit = Audit::to(Some(log.clone()), "acme~loop", "mountdevice", true);
        let mut block = Block::new(&grant(&dir), audit);
        assert_eq!(
            Host::mkfs(&mut block, device.path.clone(), "ext4".into()),
            Ok(())
        );
        assert_eq!(Host::create_image(&mut block, "v".into(), MIB), Ok(0));
        assert_eq!(
            Host::attach_image(&mut block, "v".into()),
            Ok(String::new())
        );
        assert!(Host::mkfs(&mut block, "/dev/null".into(), "ext4".into()).is_err());
        assert_eq!(Host::probe_fs(&mut block, device.path.clone()), Ok(None));
        assert!(!dir.exists(), "dry run must not create the image dir");

        let text = std::fs::read_to_string(&log).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let decisions: Vec<_> = lines
            .iter()
            .map(|l| {
                (
                    l["operation"].as_str().unwrap(),
                    l["decision"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            decisions,
            [
                ("mkfs", "would-do"),
                ("create-image", "would-do"),
                ("attach-image", "would-do"),
                ("mkfs", "deny")
            ]
        );
        assert!(lines[0]["rule"].as_str().unwrap().contains("block.devices"));
    }

    #[test]
    fn policy_validation() {
        let mut grant = grant(Path::new("/var/lib/x"));
        assert_eq!(grant.validate(), Ok(()));
        grant.fs_types.push("btrfs".into());
        assert!(grant.validate().unwrap_err().contains("btrfs"));
        grant.fs_types.pop();
        grant.image_dir = Some("relative".into());
        assert!(grant.validate().is_err());
    }
}
