//! Named points in provisioning and deletion where the kill tests stop the process.
//!
//! With `FLEX_PROVISIONER_PAUSE_AT=<step>` the provisioner logs `paused at <step>` and waits
//! there forever, so a test can `kill -9` it at exactly that point and check that a restart
//! converges. Unset (always, outside tests), a step costs one environment lookup.

pub const BEFORE_PROVISION: &str = "before-provision";
pub const AFTER_PROVISION: &str = "after-provision";
pub const AFTER_VOLUME_CREATED: &str = "after-volume-created";
pub const BEFORE_DELETE: &str = "before-delete";
pub const AFTER_DELETE: &str = "after-delete";

pub async fn reached(step: &str) {
    let paused = std::env::var("FLEX_PROVISIONER_PAUSE_AT").is_ok_and(|at| at == step);
    if paused {
        tracing::warn!("paused at {step}");
        std::future::pending::<()>().await;
    }
}
