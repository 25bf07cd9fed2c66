//! The `[block]` table of a policy: what it means, what is refused whatever it says, and the
//! warnings `flex policy check` prints for grants nothing can use.

use crate::caps::Patterns;
use crate::caps::state::{DEFAULT_STATE_DIR, StateGrant};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// File systems this capability knows how to create and grow.
pub const SUPPORTED_FS: [&str; 2] = ["ext4", "xfs"];

/// The `[block]` table of a policy.
#[derive(Deserialize, Serialize, Default, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct BlockGrant {
    /// Devices that may be probed, formatted, resized and sized, unless another driver holds
    /// them: globs on the canonical device path (`/dev/xvdf`), or on the requested path when it
    /// is one of udev's stable links (`/dev/disk/by-id/…`, `by-path`, `by-uuid`). The driver's
    /// own loop devices (from its images) need no entry.
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
    /// Devices (globs, matched like `devices`) that `mkfs` may format although their first or
    /// last MiB is not all zero (volumes a cloud hands over with old data and no signature).
    /// A signature still refuses; this never grants a device by itself.
    #[serde(default)]
    pub format_nonzero: Vec<String>,
}

/// udev's stable names: created by root (udev) from what the kernel reports, so the name the
/// driver asked for is the name matched (an EBS volume on Nitro is `/dev/nvme1n1` under
/// another name on every boot, but `by-id/nvme-Amazon_Elastic_Block_Store_vol…` always).
pub const STABLE_LINK_DIRS: [&str; 3] = [
    "/dev/disk/by-id/",
    "/dev/disk/by-path/",
    "/dev/disk/by-uuid/",
];

/// The state root: `FLEX_STATE_DIR`, default `/var/lib/flex`.
pub fn state_root() -> PathBuf {
    std::env::var_os("FLEX_STATE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| DEFAULT_STATE_DIR.into())
}

impl BlockGrant {
    pub fn validate(&self) -> Result<(), String> {
        Patterns::compile(&self.devices)?;
        Patterns::compile(&self.format_nonzero)?;
        if let Some(dir) = &self.image_dir {
            let text = dir.to_str().unwrap_or("");
            crate::caps::paths::normalize(text)
                .ok()
                .filter(|normal| normal.as_os_str() == dir.as_os_str() && text != "/")
                .ok_or_else(|| {
                    format!(
                        "block.image_dir must be an absolute path in normal form (no `.`, `..`, `//`, not `/`), not {}",
                        dir.display()
                    )
                })?;
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

    /// Refuses an `image_dir` that overlaps a place a driver can write, where it could craft
    /// the file system images the host then attaches and mounts:
    /// - the state dir of this policy (`state.dir`, or `<state root>/<driver>`), inside or
    ///   around it;
    /// - the state root itself or anything around it (it holds every driver's state dir);
    /// - anything inside the state root except `<state root>/images/<driver>` and below
    ///   (every other name there is some driver's state dir: `vendor~driver`); when the driver
    ///   is not known (`flex policy check` of a file not named `<vendor~driver>.toml`), any
    ///   `<state root>/images/<name>`.
    pub fn check_overlaps(
        &self,
        state: Option<&StateGrant>,
        driver: Option<&str>,
    ) -> Result<(), String> {
        let Some(dir) = &self.image_dir else {
            return Ok(());
        };
        let overlap = |what: &str, other: &Path| {
            let inside = dir.starts_with(other);
            let around = other.starts_with(dir);
            (inside || around).then(|| {
                format!(
                    "block.image_dir {} {} {what} {}: a driver could craft the images the host attaches",
                    dir.display(),
                    if inside { "lies inside" } else { "contains" },
                    other.display()
                )
            })
        };
        let root = state_root();
        let own_state = state
            .and_then(|s| s.dir.clone())
            .or_else(|| driver.map(|d| root.join(d)));
        if let Some(own) = &own_state
            && let Some(e) = overlap("the driver's state dir", own)
        {
            return Err(e);
        }
        if root.starts_with(dir) {
            return Err(overlap("the state root", &root).unwrap_or_default());
        }
        if let Ok(below) = dir.strip_prefix(&root) {
            let mut names = below.iter().map(|n| n.to_string_lossy());
            let first = names.next().unwrap_or_default();
            let second = names.next();
            let allowed = first == "images"
                && match (driver, second.as_deref()) {
                    (Some(driver), Some(name)) => name == driver,
                    (None, Some(_)) => true,
                    (_, None) => false,
                };
            if !allowed {
                let expected = root
                    .join("images")
                    .join(driver.unwrap_or("<vendor~driver>"));
                return Err(format!(
                    "block.image_dir {} lies inside the state root {} but not in {}: other names there are drivers' state dirs",
                    dir.display(),
                    root.display(),
                    expected.display()
                ));
            }
        }
        Ok(())
    }

    /// Grants in this table that nothing can use (printed by `flex policy check`).
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        let no_devices = self.devices.is_empty() && self.image_dir.is_none();
        if !self.fs_types.is_empty() && no_devices {
            warnings.push(
                "block.fs_types is granted, but there is no block.devices or block.image_dir: mkfs can format nothing".into(),
            );
        }
        if !self.format_nonzero.is_empty() && self.fs_types.is_empty() {
            warnings.push("block.format_nonzero is set, but block.fs_types is empty: nothing is ever formatted".into());
        }
        if self.image_dir.is_some() && self.max_image_bytes == 0 {
            warnings.push(
                "block.image_dir is set, but block.max_image_bytes is 0: no image can be created"
                    .into(),
            );
        }
        if self.image_dir.is_none() && self.max_image_bytes > 0 {
            warnings.push("block.max_image_bytes is set, but there is no block.image_dir".into());
        }
        for pattern in &self.devices {
            if !pattern.starts_with("/dev/") {
                warnings.push(format!(
                    "block.devices {pattern:?} can never match: devices are paths under /dev"
                ));
            } else if self.image_dir.is_none() && !matches_anything(pattern) {
                warnings.push(format!(
                    "block.devices {pattern:?} matches nothing in /dev now (fine for disks that appear later, such as cloud volumes)"
                ));
            }
        }
        warnings
    }
}

/// Whether a device glob matches any path on this node now.
fn matches_anything(pattern: &str) -> bool {
    let options = glob::MatchOptions {
        require_literal_separator: true,
        ..Default::default()
    };
    glob::glob_with(pattern, options).is_ok_and(|mut paths| paths.any(|p| p.is_ok()))
}

/// Whether the requested device path is one of udev's stable links (matched by name).
pub fn is_stable_link(normal: &Path) -> bool {
    let text = normal.to_string_lossy();
    STABLE_LINK_DIRS.iter().any(|dir| text.starts_with(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(image_dir: &str) -> BlockGrant {
        BlockGrant {
            devices: vec!["/dev/loop[0-9]*".into()],
            fs_types: vec!["ext4".into(), "xfs".into()],
            image_dir: Some(image_dir.into()),
            max_image_bytes: 1 << 30,
            format_nonzero: vec![],
        }
    }

    #[test]
    fn validation() {
        let mut g = grant("/var/lib/x");
        assert_eq!(g.validate(), Ok(()));
        g.fs_types.push("btrfs".into());
        assert!(g.validate().unwrap_err().contains("btrfs"));
        g.fs_types.pop();
        for bad in ["relative", "/a/../b", "/a//b", "/", "/a/./b"] {
            g.image_dir = Some(bad.into());
            assert!(g.validate().is_err(), "{bad}");
        }
        g.image_dir = None;
        g.format_nonzero = vec!["/dev/[".into()];
        assert!(g.validate().is_err());
    }

    /// Decided with the default state root (no FLEX_STATE_DIR in the unit-test environment).
    #[test]
    fn image_dir_may_not_overlap_state_dirs() {
        if std::env::var_os("FLEX_STATE_DIR").is_some() {
            return;
        }
        let d = Some("acme~x");
        let ok = |dir: &str, driver| grant(dir).check_overlaps(None, driver);
        assert_eq!(ok("/var/lib/flex/images/acme~x", d), Ok(()));
        assert_eq!(ok("/var/lib/flex/images/acme~x/sub", d), Ok(()));
        assert_eq!(ok("/srv/images", d), Ok(()));
        assert_eq!(ok("/var/lib/flex/images/anything", None), Ok(()));
        let err = ok("/var/lib/flex", None).unwrap_err();
        assert!(err.contains("the state root"), "{err}");
        for (dir, expected) in [
            ("/var/lib/flex/acme~x", "inside the driver's state dir"),
            (
                "/var/lib/flex/acme~x/images",
                "inside the driver's state dir",
            ),
            (
                "/var/lib/flex/other~y/images",
                "not in /var/lib/flex/images/acme~x",
            ),
            (
                "/var/lib/flex/images/other~y",
                "not in /var/lib/flex/images/acme~x",
            ),
            ("/var/lib/flex/images", "not in"),
            ("/var/lib/flex", "contains the driver's state dir"),
            ("/var/lib", "contains"),
        ] {
            let err = ok(dir, d).unwrap_err();
            assert!(err.contains(expected), "{dir}: {err}");
        }
        // An explicit state dir elsewhere.
        let state = StateGrant {
            dir: Some("/srv/state/x".into()),
        };
        let err = grant("/srv/state")
            .check_overlaps(Some(&state), d)
            .unwrap_err();
        assert!(err.contains("contains the driver's state dir"), "{err}");
        assert!(
            grant("/srv/state/x/img")
                .check_overlaps(Some(&state), d)
                .is_err()
        );
        assert_eq!(grant("/srv/images").check_overlaps(Some(&state), d), Ok(()));
    }

    #[test]
    fn warnings_for_grants_nothing_can_use() {
        let g = BlockGrant {
            fs_types: vec!["ext4".into()],
            ..Default::default()
        };
        assert!(g.warnings()[0].contains("mkfs can format nothing"));
        let g = BlockGrant {
            devices: vec!["/dev/nothing-here-[0-9]".into(), "loop0".into()],
            ..Default::default()
        };
        let w = g.warnings();
        assert!(w.iter().any(|w| w.contains("matches nothing")), "{w:?}");
        assert!(w.iter().any(|w| w.contains("never match")), "{w:?}");
        assert!(grant("/srv/x").warnings().is_empty());
    }
}
