//! `flex:volume/mounts`: mount, unmount and is-mountpoint, checked against the driver's policy.
//!
//! Targets are call-scoped: only the directory kubelet passed in this very call (pod volume dir
//! or device mount path) may be mounted onto or unmounted, unless the policy lists extra target
//! patterns. A target is resolved (symlinks followed, `..` folded) before it is checked, and
//! the resolved path is the one used, so a symlink inside the directory cannot lead out of it.

use super::Patterns;
use crate::audit::{Audit, redact_option};
use crate::bindings::flex::volume::mounts::{Host, MountRequest};
use nix::mount::{MntFlags, MsFlags};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::path::{Path, PathBuf};

/// The `[mount]` table of a policy.
#[derive(Deserialize, Serialize, Default, Debug)]
#[serde(deny_unknown_fields)]
pub struct MountGrant {
    /// File system types that may be mounted, exactly (`tmpfs`, `ext4`, `nfs`...).
    #[serde(default)]
    pub fs_types: Vec<String>,
    /// Sources: `tmpfs`, device globs (`/dev/loop*`), NFS `server:/export/*`; bind sources.
    #[serde(default)]
    pub sources: Vec<String>,
    /// Mount options, as patterns: `nosuid`, `ro`, `size=*`, `mode=0[0-7][0-7][0-7]`...
    #[serde(default)]
    pub options: Vec<String>,
    /// Targets beyond the call's own directory (globs on the resolved path). Rarely needed.
    #[serde(default)]
    pub targets: Vec<String>,
}

impl MountGrant {
    pub fn validate(&self) -> Result<(), String> {
        for list in [&self.sources, &self.options, &self.targets] {
            Patterns::compile(list)?;
        }
        Ok(())
    }
}

/// The mount capability for one call.
pub struct Mounts {
    fs_types: Vec<String>,
    sources: Patterns,
    options: Patterns,
    extra_targets: Patterns,
    /// The directories kubelet passed in this call, resolved.
    call_targets: Vec<PathBuf>,
    audit: Audit,
}

/// A mount the policy allowed, with the rules that allowed it.
struct Plan {
    source: String,
    target: PathBuf,
    fs_type: Option<String>,
    flags: MsFlags,
    data: String,
    rule: String,
}

impl Mounts {
    /// `grant` must have passed [`MountGrant::validate`].
    pub fn new(grant: &MountGrant, call_targets: &[&str], audit: Audit) -> Mounts {
        let compile = |list: &[String]| Patterns::compile(list).unwrap_or_default();
        Mounts {
            fs_types: grant.fs_types.clone(),
            sources: compile(&grant.sources),
            options: compile(&grant.options),
            extra_targets: compile(&grant.targets),
            call_targets: call_targets
                .iter()
                .filter(|t| t.starts_with('/'))
                .filter_map(|t| std::fs::canonicalize(t).ok())
                .collect(),
            audit,
        }
    }

    /// The resolved target and the rule that allows it.
    fn resolve_target(&self, requested: &str) -> Result<(PathBuf, String), String> {
        if !requested.starts_with('/') {
            return Err(format!(
                "denied: target {requested:?} is not an absolute path"
            ));
        }
        let resolved = std::fs::canonicalize(requested)
            .map_err(|e| format!("denied: target {requested}: {e}"))?;
        let shown = resolved.to_string_lossy();
        if self.call_targets.contains(&resolved) {
            return Ok((resolved, "target: the call's own directory".into()));
        }
        if let Some(pattern) = self.extra_targets.matching(&shown) {
            let rule = format!("target: mount.targets {pattern:?}");
            return Ok((resolved, rule));
        }
        Err(format!(
            "denied: target {requested} (resolved: {shown}) is not the directory kubelet passed in this call"
        ))
    }

    fn check_options(&self, options: &[String]) -> Result<(MsFlags, String, String), String> {
        let mut flags = MsFlags::empty();
        let mut data = Vec::new();
        let mut rules = Vec::new();
        for option in options {
            let Some(pattern) = self.options.matching(option) else {
                let shown = redact_option(option);
                return Err(format!(
                    "denied: mount option {shown:?} is not granted by the policy"
                ));
            };
            rules.push(format!("{pattern:?}"));
            match mount_flag(option) {
                Some(flag) => flags |= flag,
                None if option == "rw" => {}
                None => data.push(option.as_str()),
            }
        }
        Ok((
            flags,
            data.join(","),
            format!("mount.options [{}]", rules.join(", ")),
        ))
    }

    fn check_source(&self, source: &str) -> Result<(String, String), String> {
        // Device and directory paths are checked where they lead (/dev/disk/by-id/... links).
        let resolved = if source.starts_with('/') {
            let path = std::fs::canonicalize(source)
                .map_err(|e| format!("denied: source {source}: {e}"))?;
            path.to_string_lossy().into_owned()
        } else {
            source.to_string()
        };
        match self.sources.matching(&resolved) {
            Some(pattern) => {
                let rule = format!("mount.sources {pattern:?}");
                Ok((resolved, rule))
            }
            None => Err(format!(
                "denied: mount source {source:?} is not granted by the policy"
            )),
        }
    }

    fn authorize(&self, request: &MountRequest) -> Result<Plan, String> {
        let (target, target_rule) = self.resolve_target(&request.target)?;
        let (flags, data, options_rule) = self.check_options(&request.options)?;
        let (source, source_rule) = self.check_source(&request.source)?;
        let fs_type = if request.bind {
            if !Path::new(&source).is_dir() {
                return Err(format!("denied: bind source {source} is not a directory"));
            }
            None
        } else if self.fs_types.iter().any(|t| t == &request.fs_type) {
            Some(request.fs_type.clone())
        } else {
            return Err(format!(
                "denied: file system type {:?} is not granted by the policy",
                request.fs_type
            ));
        };
        let type_rule = fs_type
            .as_ref()
            .map(|t| format!("; mount.fs_types {t:?}"))
            .unwrap_or_default();
        let rule = format!("{target_rule}; {source_rule}{type_rule}; {options_rule}");
        Ok(Plan {
            source,
            target,
            fs_type,
            flags,
            data,
            rule,
        })
    }
}

fn perform_mount(plan: Plan) -> Result<(), String> {
    if plan.fs_type.is_some() {
        return sys_mount(
            &plan.source,
            &plan.target,
            plan.fs_type.as_deref(),
            plan.flags,
            &plan.data,
        );
    }
    sys_mount(&plan.source, &plan.target, None, MsFlags::MS_BIND, "")?;
    if !plan.flags.is_empty() {
        // Flags on a bind mount only take effect through a remount of the bind.
        let remount = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | plan.flags;
        if let Err(e) = sys_mount(&plan.source, &plan.target, None, remount, "") {
            let _ = nix::mount::umount2(&plan.target, MntFlags::UMOUNT_NOFOLLOW);
            return Err(e);
        }
    }
    Ok(())
}

impl Host for Mounts {
    fn mount(&mut self, request: MountRequest) -> Result<(), String> {
        let args = json!({
            "source": request.source,
            "target": request.target,
            "fs_type": request.fs_type,
            "options": request.options.iter().map(|o| redact_option(o)).collect::<Vec<_>>(),
            "bind": request.bind,
        });
        let plan = self.authorize(&request);
        let rule = plan.as_ref().map(|p| p.rule.clone()).map_err(Clone::clone);
        self.audit.run("mount", args, rule, || {
            perform_mount(plan.expect("allowed"))
        })
    }

    fn remount(&mut self, target: String, options: Vec<String>) -> Result<(), String> {
        let args = json!({
            "target": target,
            "options": options.iter().map(|o| redact_option(o)).collect::<Vec<_>>(),
        });
        let plan = self
            .resolve_target(&target)
            .and_then(|(path, target_rule)| {
                let (flags, data, options_rule) = self.check_options(&options)?;
                Ok((path, flags, data, format!("{target_rule}; {options_rule}")))
            });
        let rule = plan.as_ref().map(|p| p.3.clone()).map_err(Clone::clone);
        self.audit.run("remount", args, rule, || {
            let (path, flags, data, _) = plan.expect("allowed");
            if !is_mountpoint(&path)? {
                return Err(format!("{} is not a mount point", path.display()));
            }
            // Without file system data only the mount point's own flags change (this also
            // works on bind mounts); with data the file system itself is reconfigured.
            let flags = match data.is_empty() {
                true => MsFlags::MS_REMOUNT | MsFlags::MS_BIND | flags,
                false => MsFlags::MS_REMOUNT | flags,
            };
            sys_mount("none", &path, None, flags, &data)
        })
    }

    fn unmount(&mut self, target: String) -> Result<(), String> {
        let resolved = self.resolve_target(&target);
        let rule = resolved
            .as_ref()
            .map(|(_, rule)| rule.clone())
            .map_err(Clone::clone);
        self.audit
            .run("unmount", json!({ "target": target }), rule, || {
                let (path, _) = resolved.expect("allowed");
                if !is_mountpoint(&path)? {
                    return Err(format!("{} is not a mount point", path.display()));
                }
                nix::mount::umount2(&path, MntFlags::UMOUNT_NOFOLLOW)
                    .map_err(|e| format!("unmount {}: {e}", path.display()))
            })
    }

    /// Reads mount state only, so it is not audited; the target rule still applies.
    fn is_mountpoint(&mut self, path: String) -> Result<bool, String> {
        let (path, _) = self.resolve_target(&path)?;
        is_mountpoint(&path)
    }
}

fn mount_flag(option: &str) -> Option<MsFlags> {
    Some(match option {
        "ro" => MsFlags::MS_RDONLY,
        "nosuid" => MsFlags::MS_NOSUID,
        "nodev" => MsFlags::MS_NODEV,
        "noexec" => MsFlags::MS_NOEXEC,
        "noatime" => MsFlags::MS_NOATIME,
        "nodiratime" => MsFlags::MS_NODIRATIME,
        "relatime" => MsFlags::MS_RELATIME,
        "strictatime" => MsFlags::MS_STRICTATIME,
        "sync" => MsFlags::MS_SYNCHRONOUS,
        "dirsync" => MsFlags::MS_DIRSYNC,
        _ => return None,
    })
}

fn sys_mount(
    source: &str,
    target: &Path,
    fs_type: Option<&str>,
    flags: MsFlags,
    data: &str,
) -> Result<(), String> {
    let data = (!data.is_empty()).then_some(data);
    nix::mount::mount(Some(source), target, fs_type, flags, data)
        .map_err(|e| format!("mount {source} on {}: {e}", target.display()))
}

/// Whether `path` (already resolved) is the root of a mount, per /proc/self/mountinfo; unlike
/// comparing device numbers this also sees bind mounts of the same file system.
pub fn is_mountpoint(path: &Path) -> Result<bool, String> {
    let table = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("read /proc/self/mountinfo: {e}"))?;
    let wanted = path.to_string_lossy();
    Ok(table
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .any(|mount_point| unescape_mountinfo(mount_point) == wanted))
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
            options: vec![
                "nosuid".into(),
                "nodev".into(),
                "ro".into(),
                "size=*".into(),
            ],
            targets: vec![],
        }
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

    #[test]
    fn targets_outside_the_call_are_denied_before_any_mount() {
        let dir = tempfile::tempdir().unwrap();
        let call_dir = dir.path().join("pod-volume");
        let other = dir.path().join("elsewhere");
        std::fs::create_dir_all(&call_dir).unwrap();
        std::fs::create_dir_all(&other).unwrap();
        std::os::unix::fs::symlink(&other, call_dir.join("link")).unwrap();
        let mut mounts = Mounts::new(&grant(), &[call_dir.to_str().unwrap()], test_audit());
        for target in [
            other.clone(),
            call_dir.join("link"),
            call_dir.join("../elsewhere"),
            "relative".into(),
        ] {
            let err = Host::mount(&mut mounts, request(&target, &["nosuid"])).unwrap_err();
            assert!(
                err.starts_with("denied: target"),
                "{}: {err}",
                target.display()
            );
        }
        assert!(Host::is_mountpoint(&mut mounts, other.to_string_lossy().into()).is_err());
        assert_eq!(
            Host::is_mountpoint(&mut mounts, call_dir.to_string_lossy().into()),
            Ok(false)
        );
    }

    #[test]
    fn ungranted_options_types_and_sources_are_denied() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path();
        let mut mounts = Mounts::new(&grant(), &[target.to_str().unwrap()], test_audit());
        let err = Host::mount(&mut mounts, request(target, &["nosuid", "exec"])).unwrap_err();
        assert!(err.contains("option \"exec\""), "{err}");
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
        let mut bind = request(target, &[]);
        (bind.source, bind.bind) = ("/".into(), true);
        assert!(
            Host::mount(&mut mounts, bind)
                .unwrap_err()
                .contains("source \"/\"")
        );
    }

    #[test]
    fn with_no_policy_nothing_may_be_mounted() {
        let dir = tempfile::tempdir().unwrap();
        let mut mounts = Mounts::new(
            &MountGrant::default(),
            &[dir.path().to_str().unwrap()],
            test_audit(),
        );
        assert!(
            Host::mount(&mut mounts, request(dir.path(), &[]))
                .unwrap_err()
                .starts_with("denied")
        );
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo(r"/a\040b\134c\011"), "/a b\\c\t");
        assert_eq!(unescape_mountinfo(r"/plain\9"), r"/plain\9");
        assert!(is_mountpoint(Path::new("/proc")).unwrap());
    }

    #[test]
    fn every_decision_is_audited_and_dry_run_mounts_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("vol");
        std::fs::create_dir(&target).unwrap();
        let log = dir.path().join("audit.jsonl");
        let audit = Audit::to(Some(log.clone()), "acme~x", "mount", true);
        let mut mounts = Mounts::new(&grant(), &[target.to_str().unwrap()], audit);
        let mut secret = request(&target, &["nosuid"]);
        secret.options.push("password=hunter2".into());
        assert!(Host::mount(&mut mounts, secret).is_err());
        assert_eq!(
            Host::mount(&mut mounts, request(&target, &["nosuid", "size=1m"])),
            Ok(())
        );
        assert!(
            !is_mountpoint(&target.canonicalize().unwrap()).unwrap(),
            "dry run must not mount"
        );

        let text = std::fs::read_to_string(&log).unwrap();
        assert!(!text.contains("hunter2"), "{text}");
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["decision"], "deny");
        assert_eq!(lines[1]["decision"], "would-do");
        assert_eq!(lines[1]["driver"], "acme~x");
        let rule = lines[1]["rule"].as_str().unwrap();
        assert!(
            rule.contains("call's own directory") && rule.contains("mount.sources \"tmpfs\""),
            "{rule}"
        );
    }
}
