//! `[state]`: a per-driver directory, preopened read-write as `/state` through WASI
//! filesystem; no other host path is visible to a driver. Default location
//! `FLEX_STATE_DIR/<vendor~driver>` (`/var/lib/flex/<vendor~driver>`).

use serde::{Deserialize, Serialize};
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;

pub const DEFAULT_STATE_DIR: &str = "/var/lib/flex";
/// Where the directory appears inside the sandbox.
pub const GUEST_PATH: &str = "/state";

/// The `[state]` table of a policy; its presence grants the directory.
#[derive(Deserialize, Serialize, Default, Debug)]
#[serde(deny_unknown_fields)]
pub struct StateGrant {
    /// Overrides the default location.
    #[serde(default)]
    pub dir: Option<PathBuf>,
}

impl StateGrant {
    pub fn validate(&self) -> Result<(), String> {
        match &self.dir {
            Some(dir) if !dir.is_absolute() => Err(format!(
                "state.dir must be an absolute path, not {}",
                dir.display()
            )),
            _ => Ok(()),
        }
    }

    /// The driver's directory, created (owner-only) if missing.
    pub fn directory(&self, driver: &str) -> Result<PathBuf, String> {
        let dir = self.dir.clone().unwrap_or_else(|| {
            std::env::var_os("FLEX_STATE_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| DEFAULT_STATE_DIR.into())
                .join(driver)
        });
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| format!("cannot create state directory {}: {e}", dir.display()))?;
        Ok(dir)
    }
}
