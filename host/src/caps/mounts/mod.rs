//! `flex:volume/mounts`: mount, bind, remount, unmount and is-mountpoint, checked against the
//! driver's policy and performed on descriptors.
//!
//! - **Where**: targets are call-scoped: only the directory kubelet passed in this very call
//!   (pod volume dir or device mount path), unless the policy lists extra target patterns.
//!   A request is compared with kubelet's directory as a string in normal form (no `..`, no
//!   `.`), then opened once; the mount is attached to that descriptor. A target that is
//!   already a mount point is refused, so mounts never stack.
//! - **What**: a device source is opened once under `/dev` and the new file system is checked
//!   to be on exactly that device before it is attached; a bind source is opened with no
//!   symlink anywhere and cloned from that descriptor (`open_tree`, not recursive). In a
//!   `mount` call the volume's own device mount path (kubelet's layout) is a bind source
//!   without any grant: that is the bind kubelet itself would make.
//! - **How**: options are split on commas and each single option must match a pattern; the
//!   policy's required options (`nosuid,nodev` unless it says otherwise) are always applied
//!   and no mount or remount can turn them off (`options.rs`).
//! - **How many**: at most `limits.mounts_per_call` mounts and remounts per call.

mod kernel;
pub mod options;

/// Unmount by name, waiting out a mount that is busy for a moment; tests unmount what they
/// mounted themselves through it, for the same reason the host does.
pub use kernel::unmount;

use super::Patterns;
use super::paths::{self, Opened};
use crate::audit::{Audit, redact_option};
use crate::bindings::flex::volume::mounts::{Host, MountRequest};
use crate::limits::{self, Limits};
use options::{Applied, OptionRules};
use rustix::fs::{Mode, OFlags, ResolveFlags};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

/// The `[mount]` table of a policy.
#[derive(Deserialize, Serialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct MountGrant {
    /// File system types that may be mounted, exactly (`tmpfs`, `ext4`, `nfs`...).
    #[serde(default)]
    pub fs_types: Vec<String>,
    /// Sources: `tmpfs`, device globs (`/dev/loop*`), NFS `server:/export/*`, bind sources
    /// (absolute paths with no symlink in them).
    #[serde(default)]
    pub sources: Vec<String>,
    /// Single mount options, as patterns: `ro`, `size=[1-9]*`, `mode=0[0-7][0-7][0-7]`.
    #[serde(default)]
    pub options: Vec<String>,
    /// Options every mount and remount gets, which no request can turn off.
    #[serde(default = "default_required")]
    pub require: Vec<String>,
    /// Targets beyond the call's own directory (globs on the path). Rarely needed.
    #[serde(default)]
    pub targets: Vec<String>,
}

fn default_required() -> Vec<String> {
    vec!["nosuid".into(), "nodev".into()]
}

impl Default for MountGrant {
    fn default() -> Self {
        MountGrant {
            fs_types: Vec::new(),
            sources: Vec::new(),
            options: Vec::new(),
            require: default_required(),
            targets: Vec::new(),
        }
    }
}

impl MountGrant {
    pub fn validate(&self) -> Result<(), String> {
        Patterns::compile(&self.sources)?;
        Patterns::compile(&self.targets)?;
        options::validate_patterns(&self.options)?;
        options::validate_required(&self.require)?;
        if let Some(source) = self
            .sources
            .iter()
            .find(|s| s.starts_with('/') && paths::normalize(&literal_prefix(s)).is_err())
        {
            return Err(format!(
                "mount.sources: {source:?} must be an absolute path in normal form (no `..`, `.` or `//`)"
            ));
        }
        Ok(())
    }

    /// Grants that can never be used, for `flex policy check`.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if !self.fs_types.is_empty() && self.sources.is_empty() {
            warnings.push(
                "mount.fs_types is set but mount.sources is empty: nothing can be mounted".into(),
            );
        }
        let known = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
        for fs in &self.fs_types {
            if !known.is_empty() && !known.split_whitespace().any(|k| k == fs) {
                warnings.push(format!(
                    "mount.fs_types: {fs:?} is not a file system this kernel knows (/proc/filesystems)"
                ));
            }
        }
        warnings
    }
}

/// The part of a pattern before its first glob character.
fn literal_prefix(pattern: &str) -> String {
    let end = pattern.find(['*', '?', '[']).unwrap_or(pattern.len());
    let prefix = &pattern[..end];
    match prefix.rfind('/') {
        Some(0) | None => "/".into(),
        Some(slash) if end < pattern.len() => prefix[..slash].to_string(),
        Some(_) => prefix.to_string(),
    }
}

/// Checks that a device source belongs to this driver in this call (see `caps::block`); the
/// rule that allows it, or why not.
pub type DeviceCheck = Box<dyn Fn(&Opened, &str) -> Result<String, String> + Send>;

/// The directories kubelet passed to this call.
#[derive(Debug, Default)]
pub struct CallDirs {
    /// Directories that may be mounted onto or unmounted: the pod volume dir, the device
    /// mount path.
    pub targets: Vec<String>,
    /// Directories that may be bind-mounted onto a target without a grant: in `mount`, the
    /// volume's device mount path.
    pub bind_sources: Vec<String>,
}

impl CallDirs {
    /// kubelet's paths as given; only absolute paths in normal form are kept.
    pub fn new(targets: &[&str], bind_sources: &[String]) -> CallDirs {
        let normal = |p: &str| {
            paths::normalize(p)
                .ok()
                .map(|p| p.to_string_lossy().into_owned())
        };
        CallDirs {
            targets: targets.iter().filter_map(|t| normal(t)).collect(),
            bind_sources: bind_sources.iter().filter_map(|s| normal(s)).collect(),
        }
    }
}

/// kubelet's layout, the same code the SDK gives drivers.
#[path = "../../../../guest-sdk/src/kubelet.rs"]
mod kubelet_layout;

/// In a `mount` call on `<root>/pods/<uid>/volumes/<vendor~driver>/<name>`, the device mount
/// path kubelet used for that volume (see `flex_sdk::kubelet`).
pub fn device_mount_path_for(target_dir: &str) -> Option<String> {
    let normal = paths::normalize(target_dir).ok()?;
    kubelet_layout::device_mount_path(normal.to_str()?)
}

/// The mount capability for one call.
pub struct Mounts {
    fs_types: Vec<String>,
    sources: Patterns,
    options: OptionRules,
    extra_targets: Patterns,
    call: CallDirs,
    device_check: Option<DeviceCheck>,
    /// Mounts and remounts made (or allowed, in a dry run) in this call.
    made: u64,
    max_mounts: u64,
    audit: Audit,
}

/// A mount the policy allowed: what to attach where, and the rules that allowed it.
struct Plan {
    source: Source,
    target: Opened,
    options: Applied,
    rule: String,
}

enum Source {
    /// A new file system: type, the source string the kernel gets, the device it must be on.
    New {
        fs_type: String,
        source: String,
        device: Option<u64>,
    },
    Bind(Opened),
}

/// Opens one of kubelet's own directories, once; the object opened is the one used. Below
/// kubelet's root (`…/pods/…`, `…/plugins/…`) no symlink is followed; kubelet's root itself
/// may sit behind one (`/var/lib/kubelet` → `/data/kubelet` on some nodes), which only root can
/// have made. The directory and everything above it must be root's alone (sticky directories
/// such as `/tmp` excepted), so nobody else can swap it between this open and the mount.
fn open_kubelet_dir(path: &str) -> Result<Opened, String> {
    let opened = match paths::open_exact(path, OFlags::DIRECTORY) {
        Ok(opened) => opened,
        Err(_) => {
            let split = ["/pods/", "/plugins/"]
                .iter()
                .filter_map(|marker| path.rfind(marker))
                .max()
                .ok_or_else(|| format!("{path}: the path crosses a symlink"))?;
            let (root, rest) = (&path[..split], &path[split + 1..]);
            let root_fd = rustix::fs::openat2(
                rustix::fs::CWD,
                root,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
                ResolveFlags::NO_MAGICLINKS,
            )
            .map_err(|e| format!("{root}: {}", std::io::Error::from(e)))?;
            let fd = paths::open_beneath(
                root_fd.as_fd(),
                rest,
                OFlags::PATH | OFlags::DIRECTORY,
                Mode::empty(),
            )?;
            let stat = rustix::fs::fstat(&fd).map_err(|e| format!("{path}: {e}"))?;
            Opened {
                fd,
                path: PathBuf::from(path),
                stat,
            }
        }
    };
    if !opened.is_dir() {
        return Err(format!("{path} is not a directory"));
    }
    paths::check_ancestors_root_only(opened.fd.as_fd(), Path::new(path))?;
    Ok(opened)
}

impl Mounts {
    /// `grant` must have passed [`MountGrant::validate`].
    pub fn new(grant: &MountGrant, call: CallDirs, limits: &Limits, audit: Audit) -> Mounts {
        let compile = |list: &[String]| Patterns::compile(list).unwrap_or_default();
        Mounts {
            fs_types: grant.fs_types.clone(),
            sources: compile(&grant.sources),
            options: OptionRules::new(&grant.options, &grant.require).unwrap_or_default(),
            extra_targets: compile(&grant.targets),
            call,
            device_check: None,
            made: 0,
            max_mounts: limits.mounts_per_call,
            audit,
        }
    }

    /// Device sources must also pass `check` (device ownership).
    pub fn with_device_check(mut self, check: DeviceCheck) -> Mounts {
        self.device_check = Some(check);
        self
    }

    /// Opens the requested target and names the rule that allows it. The message for a
    /// refused target is the same whether or not the path exists.
    fn target(&self, requested: &str) -> Result<(Opened, String), String> {
        let refused = || {
            format!("denied: target {requested:?} is not the directory kubelet passed in this call")
        };
        let normal = paths::normalize(requested).map_err(|_| refused())?;
        let normal = normal.to_string_lossy();
        if self.call.targets.iter().any(|t| *t == normal) {
            let opened = open_kubelet_dir(&normal)?;
            return Ok((opened, "target: the call's own directory".into()));
        }
        if let Some(pattern) = self.extra_targets.matching(&normal) {
            let opened = paths::open_exact(&normal, OFlags::DIRECTORY)
                .map_err(|e| format!("denied: target {requested:?}: {e}"))?;
            return Ok((opened, format!("target: mount.targets {pattern:?}")));
        }
        Err(refused())
    }

    fn count_mount(&self) -> Result<(), String> {
        if self.made >= self.max_mounts {
            return Err(limits::exceeded(
                "mounts_per_call",
                format!("{} mounts in this call", self.max_mounts),
            ));
        }
        Ok(())
    }

    fn bind_source(&self, requested: &str) -> Result<(Opened, String), String> {
        let refused = || format!("denied: bind source {requested:?} is not granted by the policy");
        let normal = paths::normalize(requested).map_err(|_| refused())?;
        let normal = normal.to_string_lossy();
        let (opened, rule) = if self.call.bind_sources.iter().any(|s| *s == normal) {
            let opened = open_kubelet_dir(&normal)?;
            (opened, "source: the volume's device mount path".to_string())
        } else if let Some(pattern) = self.sources.matching(&normal) {
            let opened = paths::open_exact(&normal, OFlags::empty())
                .map_err(|e| format!("denied: bind source {requested:?}: {e}"))?;
            (opened, format!("mount.sources {pattern:?}"))
        } else {
            return Err(refused());
        };
        if !opened.is_dir() {
            return Err(format!(
                "denied: bind source {requested} is not a directory"
            ));
        }
        Ok((opened, rule))
    }

    fn new_source(&self, request: &MountRequest) -> Result<(Source, String), String> {
        let refused = || {
            format!(
                "denied: mount source {:?} is not granted by the policy",
                request.source
            )
        };
        if !self.fs_types.iter().any(|t| t == &request.fs_type) {
            return Err(format!(
                "denied: file system type {:?} is not granted by the policy",
                request.fs_type
            ));
        }
        let type_rule = format!("mount.fs_types {:?}", request.fs_type);
        if !request.source.starts_with('/') {
            if request.source.contains(',') || request.source.is_empty() {
                return Err(refused());
            }
            let pattern = self.sources.matching(&request.source).ok_or_else(refused)?;
            let source = Source::New {
                fs_type: request.fs_type.clone(),
                source: request.source.clone(),
                device: None,
            };
            return Ok((source, format!("mount.sources {pattern:?}; {type_rule}")));
        }
        let device = paths::open_device(&request.source).map_err(|_| refused())?;
        let canonical = device.path.to_string_lossy().into_owned();
        let pattern = self
            .sources
            .matching(&canonical)
            .or_else(|| self.sources.matching(&request.source))
            .ok_or_else(refused)?;
        let mut rule = format!("mount.sources {pattern:?}; {type_rule}");
        if let Some(check) = &self.device_check {
            rule = format!("{rule}; {}", check(&device, &request.source)?);
        }
        let source = Source::New {
            fs_type: request.fs_type.clone(),
            source: canonical,
            device: Some(device.stat.st_rdev),
        };
        Ok((source, rule))
    }

    fn authorize(&self, request: &MountRequest) -> Result<Plan, String> {
        let (target, target_rule) = self.target(&request.target)?;
        let options = self.options.apply(&request.options)?;
        let (source, source_rule) = if request.bind {
            if !options.params.is_empty() || !options.superblock_flags.is_empty() {
                return Err("denied: a bind mount takes only per-mount flags (ro, nosuid, nodev, noexec, atime)".into());
            }
            let (opened, rule) = self.bind_source(&request.source)?;
            (Source::Bind(opened), rule)
        } else {
            self.new_source(request)?
        };
        if paths::is_mount_root(target.fd.as_fd())? {
            return Err(format!(
                "refused: {} is already a mount point",
                request.target
            ));
        }
        self.count_mount()?;
        let rule = format!("{target_rule}; {source_rule}; {}", options.rule);
        Ok(Plan {
            source,
            target,
            options,
            rule,
        })
    }

    /// The target as it is now (the root of what is mounted there), for unmount and remount.
    fn mounted_target(&self, requested: &str) -> Result<(Opened, String), String> {
        let (target, rule) = self.target(requested)?;
        if !paths::is_mount_root(target.fd.as_fd())? {
            return Err(format!("{requested} is not a mount point"));
        }
        Ok((target, rule))
    }
}

fn perform_mount(plan: Plan) -> Result<(), String> {
    let mount = match &plan.source {
        Source::New {
            fs_type,
            source,
            device,
        } => kernel::new_mount(fs_type, source, &plan.options, *device)?,
        Source::Bind(source) => kernel::bind_tree(source.fd.as_fd(), &plan.options)?,
    };
    kernel::attach(mount.as_fd(), plan.target.fd.as_fd())
}

/// Options as recorded: each comma-separated piece redacted on its own.
fn shown_options(options: &[String]) -> Vec<String> {
    let redact = |o: &String| {
        o.split(',')
            .map(redact_option)
            .collect::<Vec<_>>()
            .join(",")
    };
    options.iter().map(redact).collect()
}

impl Host for Mounts {
    fn mount(&mut self, request: MountRequest) -> Result<(), String> {
        let args = json!({
            "source": request.source,
            "target": request.target,
            "fs_type": request.fs_type,
            "options": shown_options(&request.options),
            "bind": request.bind,
        });
        let plan = self.authorize(&request);
        if plan.is_ok() {
            self.made += 1;
        }
        let rule = plan.as_ref().map(|p| p.rule.clone()).map_err(Clone::clone);
        self.audit.run("mount", args, rule, || {
            perform_mount(plan.expect("allowed"))
        })
    }

    fn remount(&mut self, target: String, options: Vec<String>) -> Result<(), String> {
        let args = json!({ "target": target, "options": shown_options(&options) });
        let plan = self
            .mounted_target(&target)
            .and_then(|(opened, target_rule)| {
                let applied = self.options.apply(&options)?;
                self.count_mount()?;
                let rule = format!("{target_rule}; {}", applied.rule);
                Ok((opened, applied, rule))
            });
        if plan.is_ok() {
            self.made += 1;
        }
        let rule = plan.as_ref().map(|p| p.2.clone()).map_err(Clone::clone);
        self.audit.run("remount", args, rule, || {
            let (opened, applied, _) = plan.expect("allowed");
            // Flags first (they include the required ones), then file system parameters.
            kernel::set_attributes(opened.fd.as_fd(), &applied)?;
            kernel::reconfigure(opened.fd.as_fd(), &applied)
        })
    }

    fn unmount(&mut self, target: String) -> Result<(), String> {
        let checked = self.mounted_target(&target);
        let rule = checked
            .as_ref()
            .map(|(_, r)| r.clone())
            .map_err(Clone::clone);
        self.audit
            .run("unmount", json!({ "target": target }), rule, || {
                let (opened, _) = checked.expect("allowed");
                let path = opened.path.clone();
                drop(opened);
                kernel::unmount(&path)
            })
    }

    /// Read-only: allowed answers are not audited, refusals are.
    fn is_mountpoint(&mut self, path: String) -> Result<bool, String> {
        match self.target(&path) {
            Ok((opened, _)) => paths::is_mount_root(opened.fd.as_fd()),
            Err(reason) => self.audit.run(
                "is-mountpoint",
                json!({ "path": path }),
                Err(reason),
                || Ok(false),
            ),
        }
    }
}

/// mountinfo writes space, tab, newline and backslash as `\ooo` octal escapes.
pub fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_audit() -> Audit {
        Audit::to(None, "test", "mount", false)
    }

    fn grant() -> MountGrant {
        MountGrant {
            fs_types: vec!["tmpfs".into()],
            sources: vec!["tmpfs".into()],
            options: vec!["ro".into(), "size=[1-9]*".into()],
            ..MountGrant::default()
        }
    }

    fn mounts(grant: &MountGrant, targets: &[&Path]) -> Mounts {
        let targets: Vec<&str> = targets.iter().map(|t| t.to_str().unwrap()).collect();
        Mounts::new(
            grant,
            CallDirs::new(&targets, &[]),
            &Limits::default(),
            test_audit(),
        )
    }

    fn request(target: &Path, options: &[&str]) -> MountRequest {
        MountRequest {
            source: "tmpfs".into(),
            target: target.to_string_lossy().into_owned(),
            fs_type: "tmpfs".into(),
            options: options.iter().map(|o| o.to_string()).collect(),
            bind: false,
        }
    }

    /// The mount options of the mount at `path`, from mountinfo (per-mount, then super).
    fn mount_options(path: &Path) -> Option<String> {
        let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let wanted = path.to_string_lossy();
        table
            .lines()
            .rfind(|l| unescape_mountinfo(l.split(' ').nth(4).unwrap_or("")) == wanted)
            .map(|l| {
                let fields: Vec<&str> = l.split(' ').collect();
                let sep = fields.iter().position(|f| *f == "-").unwrap();
                format!("{} {}", fields[5], fields[sep + 3])
            })
    }

    fn require_root() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "these tests mount: run as root"
        );
    }

    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            while nix::mount::umount2(self.0, nix::mount::MntFlags::MNT_DETACH).is_ok() {}
        }
    }

    #[test]
    fn targets_outside_the_call_are_denied_before_any_mount() {
        let dir = tempfile::tempdir().unwrap();
        let call_dir = dir.path().join("pod-volume");
        let other = dir.path().join("elsewhere");
        std::fs::create_dir_all(&call_dir).unwrap();
        std::fs::create_dir_all(&other).unwrap();
        std::os::unix::fs::symlink(&other, call_dir.join("link")).unwrap();
        let mut mounts = mounts(&grant(), &[&call_dir]);
        for target in [
            other.clone(),
            call_dir.join("link"),
            call_dir.join("../elsewhere"),
            dir.path().join("missing"),
            "relative".into(),
        ] {
            let err = Host::mount(&mut mounts, request(&target, &[])).unwrap_err();
            assert!(
                err.starts_with("denied: target"),
                "{}: {err}",
                target.display()
            );
            assert!(!err.contains("elsewhere\"") || err.contains("..") || target == other);
        }
        // The same answer whether or not a path outside the call exists.
        let a = Host::is_mountpoint(&mut mounts, other.to_string_lossy().into()).unwrap_err();
        let b = Host::is_mountpoint(&mut mounts, "/nonexistent/x".into()).unwrap_err();
        assert_eq!(
            a.replace(other.to_str().unwrap(), "P"),
            b.replace("/nonexistent/x", "P")
        );
        assert_eq!(
            Host::is_mountpoint(&mut mounts, call_dir.to_string_lossy().into()),
            Ok(false)
        );
    }

    /// An empty directory to mount onto, in a temporary one (as root: the tests mount).
    fn volume_dir() -> (tempfile::TempDir, PathBuf) {
        require_root();
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("vol");
        std::fs::create_dir(&target).unwrap();
        (dir, target)
    }

    #[test]
    fn mounts_get_the_required_options_and_never_stack() {
        let (_dir, target) = volume_dir();
        let _cleanup = Unmount(&target);
        let mut mounts = mounts(&grant(), &[&target]);
        Host::mount(&mut mounts, request(&target, &["size=1m"])).unwrap();
        let options = mount_options(&target).unwrap();
        assert!(
            options.contains("nosuid")
                && options.contains("nodev")
                && options.contains("size=1024k"),
            "{options}"
        );
        let err = Host::mount(&mut mounts, request(&target, &[])).unwrap_err();
        assert!(err.contains("already a mount point"), "{err}");
        // A remount may add ro, never drop a required option.
        let err = Host::remount(
            &mut mounts,
            target.to_string_lossy().into(),
            vec!["suid".into()],
        )
        .unwrap_err();
        assert!(err.contains("requires"), "{err}");
        Host::remount(
            &mut mounts,
            target.to_string_lossy().into(),
            vec!["ro".into()],
        )
        .unwrap();
        let options = mount_options(&target).unwrap();
        assert!(options.starts_with("ro,nosuid,nodev"), "{options}");
        assert_eq!(
            Host::is_mountpoint(&mut mounts, target.to_string_lossy().into()),
            Ok(true)
        );
        Host::unmount(&mut mounts, target.to_string_lossy().into()).unwrap();
        assert_eq!(mount_options(&target), None);
        let err = Host::unmount(&mut mounts, target.to_string_lossy().into()).unwrap_err();
        assert!(err.contains("not a mount point"), "{err}");
    }

    #[test]
    fn a_mount_busy_for_a_moment_is_unmounted_one_busy_for_longer_is_not() {
        let (_dir, target) = volume_dir();
        let _cleanup = Unmount(&target);
        let mut mounts = mounts(&grant(), &[&target]);
        let hold = |mounts: &mut Mounts, for_how_long: std::time::Duration| {
            Host::mount(mounts, request(&target, &[])).unwrap();
            let file = std::fs::File::create(target.join("open")).unwrap();
            std::thread::spawn(move || {
                std::thread::sleep(for_how_long);
                drop(file);
            })
        };
        // Held as a forked child holds a file until its exec.
        let holder = hold(&mut mounts, std::time::Duration::from_millis(50));
        Host::unmount(&mut mounts, target.to_string_lossy().into()).unwrap();
        holder.join().unwrap();
        assert_eq!(mount_options(&target), None);
        // Held by a process that keeps it: busy is the answer, after the bounded wait.
        let holder = hold(&mut mounts, kernel::BUSY_RETRY * 3);
        let started = std::time::Instant::now();
        let err = Host::unmount(&mut mounts, target.to_string_lossy().into()).unwrap_err();
        assert!(err.contains("busy"), "{err}");
        assert!(started.elapsed() < kernel::BUSY_RETRY * 2);
        holder.join().unwrap();
        Host::unmount(&mut mounts, target.to_string_lossy().into()).unwrap();
    }

    #[test]
    fn smuggled_options_types_and_sources_are_denied() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path();
        let mut mounts = mounts(&grant(), &[target]);
        for options in [
            &["size=8m,uid=0"][..],
            &["size=8m", "huge=always"],
            &["suid"],
            &["exec"],
        ] {
            let err = Host::mount(&mut mounts, request(target, options)).unwrap_err();
            assert!(
                err.starts_with("denied: mount option"),
                "{options:?}: {err}"
            );
        }
        let mut other_type = request(target, &[]);
        other_type.fs_type = "ext4".into();
        assert!(
            Host::mount(&mut mounts, other_type)
                .unwrap_err()
                .contains("type \"ext4\"")
        );
        let mut device = request(target, &[]);
        device.source = "/dev/null".into();
        assert!(
            Host::mount(&mut mounts, device)
                .unwrap_err()
                .contains("source \"/dev/null\"")
        );
        let mut smuggled_source = request(target, &[]);
        smuggled_source.source = "tmpfs,uid=0".into();
        assert!(Host::mount(&mut mounts, smuggled_source).is_err());
        let mut bind = request(target, &[]);
        (bind.source, bind.bind) = ("/".into(), true);
        assert!(
            Host::mount(&mut mounts, bind)
                .unwrap_err()
                .contains("bind source \"/\"")
        );
        assert_eq!(mount_options(target), None);
    }

    #[test]
    fn bind_sources_are_resolved_without_symlinks() {
        require_root();
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().canonicalize().unwrap();
        let granted = base.join("granted");
        let secret = base.join("secret");
        let target = base.join("pod");
        for d in [&granted, &secret, &target] {
            std::fs::create_dir(d).unwrap();
        }
        std::fs::create_dir(granted.join("real")).unwrap();
        std::fs::write(secret.join("key"), "x").unwrap();
        std::os::unix::fs::symlink(&secret, granted.join("link")).unwrap();
        let _cleanup = Unmount(&target);
        let grant = MountGrant {
            sources: vec![format!("{}/*", granted.display())],
            ..MountGrant::default()
        };
        let mut mounts = mounts(&grant, &[&target]);
        let bind = |source: &Path| MountRequest {
            source: source.to_string_lossy().into_owned(),
            target: target.to_string_lossy().into_owned(),
            fs_type: String::new(),
            options: vec![],
            bind: true,
        };
        for bad in [
            granted.join("link"),
            granted.join("../secret"),
            secret.clone(),
        ] {
            assert!(
                Host::mount(&mut mounts, bind(&bad)).is_err(),
                "{}",
                bad.display()
            );
            assert_eq!(mount_options(&target), None);
        }
        Host::mount(&mut mounts, bind(&granted.join("real"))).unwrap();
        let options = mount_options(&target).unwrap();
        assert!(
            options.contains("nosuid") && options.contains("nodev"),
            "{options}"
        );
        assert!(!target.join("key").exists());
    }

    #[test]
    fn mounts_per_call_are_limited() {
        let (_dir, target) = volume_dir();
        let _cleanup = Unmount(&target);
        let limits = Limits {
            mounts_per_call: 2,
            ..Limits::default()
        };
        let mut mounts = Mounts::new(
            &grant(),
            CallDirs::new(&[target.to_str().unwrap()], &[]),
            &limits,
            test_audit(),
        );
        Host::mount(&mut mounts, request(&target, &[])).unwrap();
        Host::remount(&mut mounts, target.to_string_lossy().into(), vec![]).unwrap();
        let err = Host::remount(&mut mounts, target.to_string_lossy().into(), vec![]).unwrap_err();
        assert!(err.contains("limits.mounts_per_call"), "{err}");
    }

    #[test]
    fn kubelet_device_mount_path() {
        assert_eq!(
            device_mount_path_for("/var/lib/kubelet/pods/u-1/volumes/flex~loop/pv-1").as_deref(),
            Some("/var/lib/kubelet/plugins/kubernetes.io/flexvolume/flex/loop/mounts/pv-1")
        );
        assert_eq!(
            device_mount_path_for("/var/lib/kubelet/pods/u/volumes/x/pv"),
            None
        );
        assert_eq!(device_mount_path_for("/a/../pods/u/volumes/a~b/pv"), None);
        assert_eq!(literal_prefix("/var/lib/x/*"), "/var/lib/x");
        assert_eq!(literal_prefix("/srv/exact"), "/srv/exact");
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo(r"/a\040b\134c\011"), "/a b\\c\t");
        assert_eq!(unescape_mountinfo(r"/plain\9"), r"/plain\9");
    }

    #[test]
    fn every_decision_is_audited_and_dry_run_mounts_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("vol");
        std::fs::create_dir(&target).unwrap();
        let log = dir.path().join("audit.jsonl");
        let audit = Audit::to(Some(log.clone()), "acme~x", "mount", true);
        let mut mounts = Mounts::new(
            &grant(),
            CallDirs::new(&[target.to_str().unwrap()], &[]),
            &Limits::default(),
            audit,
        );
        let secret = request(&target, &["size=1m,password=hunter2"]);
        assert!(Host::mount(&mut mounts, secret).is_err());
        assert_eq!(
            Host::mount(&mut mounts, request(&target, &["size=1m"])),
            Ok(())
        );
        assert_eq!(mount_options(&target), None, "dry run must not mount");
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(!text.contains("hunter2"), "{text}");
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["decision"], "deny");
        assert_eq!(lines[1]["decision"], "would-do");
        let rule = lines[1]["rule"].as_str().unwrap();
        assert!(
            rule.contains("call's own directory")
                && rule.contains("mount.sources \"tmpfs\"")
                && rule.contains("mount.require [nosuid,nodev]"),
            "{rule}"
        );
    }
}
