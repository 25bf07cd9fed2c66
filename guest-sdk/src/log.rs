//! Diagnostics, written to the host's log file (`flex logs` shows them), never to kubelet:
//! kubelet reads the driver's stdout and stderr together as its reply, so a driver never
//! prints.
//!
//! ```
//! # let host = flex_sdk::testing::Host::new();
//! flex_sdk::log::info("mounted pv-1");
//! # assert_eq!(host.logs(), [(flex_sdk::log::Level::Info, "mounted pv-1".to_string())]);
//! ```

#[cfg(target_arch = "wasm32")]
use crate::bindings::flex::volume::log as host;
#[cfg(not(target_arch = "wasm32"))]
use crate::testing::fake::log as host;

pub use crate::bindings::flex::volume::log::Level;

/// Logs `message` at `level`.
pub fn log(level: Level, message: &str) {
    host::log(level, message)
}
/// Logs at debug level.
pub fn debug(message: &str) {
    log(Level::Debug, message)
}
/// Logs at info level.
pub fn info(message: &str) {
    log(Level::Info, message)
}
/// Logs at warn level.
pub fn warn(message: &str) {
    log(Level::Warn, message)
}
/// Logs at error level.
pub fn error(message: &str) {
    log(Level::Error, message)
}
