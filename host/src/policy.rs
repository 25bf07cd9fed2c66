//! The capability policy a cluster's security team writes for one driver:
//! `FLEX_POLICY_DIR/<vendor~driver>.toml` (default `/etc/flex/policy`), outside the kubelet
//! plugin dir so a driver update cannot widen its own grants.
//!
//! Deny by default: with no file a driver may compute and log, and every privileged import is
//! refused. An invalid file (unknown key, wrong type, bad pattern) fails every verb with a
//! message naming the file; it is never read as a partial grant.

use crate::audit::redact_option;
use crate::caps::block::BlockGrant;
use crate::caps::exec::ExecGrant;
use crate::caps::http::HttpGrant;
use crate::caps::mounts::MountGrant;
use crate::caps::state::StateGrant;
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
    /// Host programs, by absolute path.
    #[serde(default)]
    pub exec: ExecGrant,
    /// A private read-write directory; none without the table.
    #[serde(default)]
    pub state: Option<StateGrant>,
    /// Non-secret settings handed to the driver.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// Memory and time for one call.
    #[serde(default)]
    pub limits: Limits,
}

/// Sandbox limits. kubelet has no timeout for most verbs, so a hung driver would wedge it.
#[derive(Deserialize, Serialize, Debug, Clone, Copy)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub memory_mib: u64,
    pub deadline_seconds: u64,
    /// kubelet kills `waitforattach` after 10 minutes; it must end, with a reply, before that.
    pub wait_for_attach_deadline_seconds: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_mib: 256,
            deadline_seconds: 120,
            wait_for_attach_deadline_seconds: 570,
        }
    }
}

impl Limits {
    fn validate(&self) -> Result<(), String> {
        let check = |name: &str, value: u64, max: u64| {
            if (1..=max).contains(&value) {
                Ok(())
            } else {
                Err(format!(
                    "limits.{name} must be between 1 and {max}, not {value}"
                ))
            }
        };
        check("memory_mib", self.memory_mib, 4096)?;
        check("deadline_seconds", self.deadline_seconds, 3600)?;
        check(
            "wait_for_attach_deadline_seconds",
            self.wait_for_attach_deadline_seconds,
            590,
        )
    }
}

pub fn policy_path(driver: &str) -> PathBuf {
    let dir = std::env::var_os("FLEX_POLICY_DIR").map(PathBuf::from);
    dir.unwrap_or_else(|| DEFAULT_POLICY_DIR.into())
        .join(format!("{driver}.toml"))
}

/// The driver's policy; the empty (deny-all) policy when it has no file.
pub fn load(driver: &str) -> Result<Policy, String> {
    let path = policy_path(driver);
    match std::fs::read_to_string(&path) {
        Ok(text) => parse(&text, &path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Policy::default()),
        Err(e) => Err(format!("cannot read policy {}: {e}", path.display())),
    }
}

/// `flex policy check FILE`: validates a policy and says what it grants.
pub fn check_command(file: &str) -> (String, i32) {
    let path = Path::new(file);
    let policy = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read policy {file}: {e}"))
        .and_then(|text| parse(&text, path));
    match policy {
        Err(e) => (format!("{e}\n"), 1),
        Ok(policy) => {
            let mut grants = serde_json::to_value(&policy).unwrap_or_default();
            // `[config]` may hold a cloud credential: show that the key is set, not its value.
            if let Some(config) = grants["config"].as_object_mut() {
                for (key, value) in config.iter_mut() {
                    if redact_option(&format!("{key}=")) != format!("{key}=") {
                        *value = "<redacted>".into();
                    }
                }
            }
            let grants = serde_json::to_string_pretty(&grants).unwrap_or_default();
            (
                format!("policy {file} is valid; {}\n{grants}\n", summary(&policy)),
                0,
            )
        }
    }
}

/// One sentence per capability: what the policy grants.
fn summary(p: &Policy) -> String {
    let either = |granted: bool, yes: String, no: &str| if granted { yes } else { no.into() };
    [
        either(
            !p.mount.fs_types.is_empty() || !p.mount.sources.is_empty(),
            format!(
                "mount: {:?} from {:?} onto the call's own directory{}",
                p.mount.fs_types,
                p.mount.sources,
                either(
                    !p.mount.targets.is_empty(),
                    format!(" and {:?}", p.mount.targets),
                    ""
                )
            ),
            "mount: nothing",
        ),
        either(
            !p.block.devices.is_empty() || p.block.image_dir.is_some(),
            format!(
                "block: devices {:?}, mkfs {:?}, images in {:?} up to {} bytes",
                p.block.devices, p.block.fs_types, p.block.image_dir, p.block.max_image_bytes
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
            format!("exec: {:?}", p.exec.programs),
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
