//! Non-secret settings from the policy's `[config]` table: endpoints, regions,
//! node-to-instance maps. The security team writes them; a driver only reads them.
//!
//! ```
//! # let host = flex_sdk::testing::Host::new();
//! # host.config.insert("endpoint", "https://storage.example");
//! let endpoint = flex_sdk::config::get("endpoint")
//!     .ok_or_else(|| flex_sdk::failure("the policy's [config] sets no endpoint"))?;
//! # assert_eq!(endpoint, "https://storage.example");
//! # Ok::<(), flex_sdk::Error>(())
//! ```

#[cfg(target_arch = "wasm32")]
use crate::bindings::flex::volume::config as host;
#[cfg(not(target_arch = "wasm32"))]
use crate::testing::fake::config as host;

/// The value of `key`, if the table has it.
pub fn get(key: &str) -> Option<String> {
    host::get(key)
}
/// Every key and value of the table.
pub fn get_all() -> Vec<(String, String)> {
    host::get_all()
}
