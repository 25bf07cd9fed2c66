//! The capability policy a cluster's security team writes for one driver:
//! `FLEX_POLICY_DIR/<vendor~driver>.toml` (default `/etc/flex/policy`), outside the kubelet
//! plugin dir so a driver update cannot widen its own grants.
//!
//! Deny by default: with no file a driver may compute and log, and every privileged import is
//! refused. An invalid file (unknown key, wrong type, bad pattern) fails every verb with a
//! message naming the file; it is never read as a partial grant.

use crate::caps::block::BlockGrant;
use crate::caps::exec::ExecGrant;
use crate::caps::http::HttpGrant;
use crate::caps::mounts::MountGrant;
use crate::caps::state::StateGrant;
pub use crate::limits::Limits;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const DEFAULT_POLICY_DIR: &str = "/etc/flex/policy";

#[derive(Deserialize, Serialize, Default, Debug)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// `sha256:<hex>` of the component: any other component is refused.
    #[serde(default)]
    pub digest: Option<String>,
    /// Mounting: which file systems, sources and options; targets beyond the call's own.
    #[serde(default)]
    pub mount: MountGrant,
    /// Block devices: probe, mkfs, resize; loop-backed images.
    #[serde(default)]
    pub block: BlockGrant,
    /// Outgoing HTTP destinations.
    #[serde(default)]
    pub http: HttpGrant,
    /// Host programs: exact path, allowed argument vectors, environment names.
    #[serde(default)]
    pub exec: ExecGrant,
    /// A private read-write directory; none without the table.
    #[serde(default)]
    pub state: Option<StateGrant>,
    /// Non-secret settings handed to the driver.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// Every per-call and per-driver bound (`crate::limits`).
    #[serde(default)]
    pub limits: Limits,
}

pub fn policy_path(driver: &str) -> PathBuf {
    let dir = std::env::var_os("FLEX_POLICY_DIR").map(PathBuf::from);
    dir.unwrap_or_else(|| DEFAULT_POLICY_DIR.into())
        .join(format!("{driver}.toml"))
}

/// The driver's policy; the empty (deny-all) policy when it has no file.
pub fn load(driver: &str) -> Result<Policy, String> {
    let path = policy_path(driver);
    from_file(read_if_present(&path)?, &path, driver)
}

/// The text and mode of the policy file at `path`; `None` when there is none.
pub fn read_if_present(path: &Path) -> Result<Option<(String, u32)>, String> {
    match read_with_mode(path) {
        Ok(read) => Ok(Some(read)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read policy {}: {e}", path.display())),
    }
}

/// The policy a file read says (`None`: no file, nothing granted): parsed, overlaps and
/// exposure checked.
pub fn from_file(read: Option<(String, u32)>, path: &Path, driver: &str) -> Result<Policy, String> {
    let Some((text, mode)) = read else {
        return Ok(Policy::default());
    };
    let policy = parse(&text, path)?;
    check_overlaps(&policy, Some(driver), path)?;
    // A credential in a file every user can read is already leaked: refuse to use it.
    crate::caps::config::check_exposure(path, mode, &policy.config)
        .map_err(|e| format!("refusing {e}"))?;
    Ok(policy)
}

/// The text and the mode of one opened file (not of the path, looked up twice).
pub fn read_with_mode(path: &Path) -> std::io::Result<(String, u32)> {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let mut file = std::fs::File::open(path)?;
    let mode = file.metadata()?.mode();
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    Ok((text, mode))
}

/// One sentence per capability: what the policy grants.
pub fn summary(p: &Policy) -> String {
    let either = |granted: bool, yes: String, no: &str| if granted { yes } else { no.into() };
    [
        either(
            !p.mount.fs_types.is_empty() || !p.mount.sources.is_empty(),
            format!(
                "mount: {:?} from {:?} onto the call's own directory{}, always {:?}",
                p.mount.fs_types,
                p.mount.sources,
                either(
                    !p.mount.targets.is_empty(),
                    format!(" and {:?}", p.mount.targets),
                    ""
                ),
                p.mount.require
            ),
            "mount: nothing",
        ),
        either(
            !p.block.devices.is_empty() || p.block.image_dir.is_some(),
            format!(
                "block: devices {:?}, mkfs {:?}, {}",
                p.block.devices,
                p.block.fs_types,
                match &p.block.image_dir {
                    Some(dir) => format!(
                        "images in {} up to {} bytes",
                        dir.display(),
                        p.block.max_image_bytes
                    ),
                    None => "no images".into(),
                }
            ),
            "block: nothing",
        ),
        either(
            !p.http.destinations.is_empty(),
            format!("http: {:?}", p.http.destinations),
            "http: nothing",
        ),
        either(
            !p.exec.programs.is_empty(),
            format!("exec: {}", p.exec.summary()),
            "exec: nothing",
        ),
        either(
            p.state.is_some(),
            "state: a private directory".into(),
            "state: none",
        ),
    ]
    .join("; ")
}

pub fn parse(text: &str, path: &Path) -> Result<Policy, String> {
    let invalid = |e: &dyn std::fmt::Display| format!("invalid policy {}: {e}", path.display());
    let policy: Policy = toml::from_str(text).map_err(|e| invalid(&e))?;
    policy.mount.validate().map_err(|e| invalid(&e))?;
    policy.block.validate().map_err(|e| invalid(&e))?;
    policy.http.validate().map_err(|e| invalid(&e))?;
    policy.exec.validate().map_err(|e| invalid(&e))?;
    if let Some(state) = &policy.state {
        state.validate().map_err(|e| invalid(&e))?;
    }
    if let Some(digest) = &policy.digest {
        validate_digest(digest).map_err(|e| invalid(&e))?;
    }
    policy.limits.validate().map_err(|e| invalid(&e))?;
    Ok(policy)
}

/// Whole-policy rules no single table can check: a `block.image_dir` overlapping a state dir
/// (see `BlockGrant::check_overlaps`).
pub fn check_overlaps(policy: &Policy, driver: Option<&str>, path: &Path) -> Result<(), String> {
    policy
        .block
        .check_overlaps(policy.state.as_ref(), driver)
        .map_err(|e| format!("invalid policy {}: {e}", path.display()))
}

fn validate_digest(digest: &str) -> Result<(), String> {
    match digest.strip_prefix("sha256:") {
        Some(hex) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => Ok(()),
        _ => Err(format!(
            "digest must be sha256:<64 hex digits>, not {digest:?}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_policies_name_the_file_and_the_problem() {
        let path = Path::new("/etc/flex/policy/acme~x.toml");
        for (text, expected) in [
            ("[mount]\nfs_type = [\"tmpfs\"]", "unknown field `fs_type`"),
            ("[mount]\nfs_types = \"tmpfs\"", "invalid type"),
            (
                "[mount]\nsources = [\"/dev/[\"]",
                "invalid pattern \"/dev/[\"",
            ),
            ("[network]\n", "unknown field `network`"),
            (
                "[limits]\nwait_for_attach_deadline_seconds = 600",
                "between 1 and 590",
            ),
            ("[limits]\nmemory_mib = 0", "limits.memory_mib"),
        ] {
            let err = parse(text, path).unwrap_err();
            assert!(
                err.starts_with("invalid policy /etc/flex/policy/acme~x.toml"),
                "{err}"
            );
            assert!(err.contains(expected), "{text}: {err}");
        }
    }

    #[test]
    fn empty_policy_grants_nothing() {
        let policy = parse("", Path::new("p.toml")).unwrap();
        assert!(policy.mount.fs_types.is_empty() && policy.mount.sources.is_empty());
    }
}
