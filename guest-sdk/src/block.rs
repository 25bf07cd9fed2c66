//! Block devices and loop-backed images, as the policy's `[block]` table allows.
//!
//! A `device` must be one the driver holds in this call: a loop device of its own images, or
//! one `block.devices` grants that no other driver holds. An image is a sparse file the driver
//! names, kept in the policy's `block.image_dir`. Image work is node-local: it belongs in the
//! verbs kubelet runs on the worker (`waitforattach`, `mountdevice`, `unmountdevice`,
//! `expandfs`), or in `provision`/`delete` when the provisioner runs on that node.
//!
//! ```
//! use flex_sdk::block;
//! # let host = flex_sdk::testing::Host::new();
//!
//! block::create_image("pv-1", 1 << 30)?;
//! let device = block::attach_image("pv-1")?;
//! assert_eq!(block::image_device("pv-1")?, Some(device.clone()));
//! if block::probe_fs(&device)?.is_none() {
//!     block::mkfs(&device, "ext4")?;
//! }
//! assert_eq!(block::probe_fs(&device)?.as_deref(), Some("ext4"));
//! # Ok::<(), flex_sdk::Error>(())
//! ```

#[cfg(target_arch = "wasm32")]
use crate::bindings::flex::volume::block as host;
#[cfg(not(target_arch = "wasm32"))]
use crate::testing::fake::block as host;
use crate::{Result, failure};

/// The file system on a device (`ext4`, `xfs`...) from its on-disk signature; `None` when the
/// device carries no signature at all. The first device call of a verb takes the host's lock
/// on the device for the rest of the call.
pub fn probe_fs(device: &str) -> Result<Option<String>> {
    host::probe_fs(device).map_err(failure)
}
/// Formats a blank device with a file system the policy's `block.fs_types` lists; the host
/// refuses any device that carries a signature, holds data, is mounted or is in use.
pub fn mkfs(device: &str, fs_type: &str) -> Result<()> {
    host::mkfs(device, fs_type).map_err(failure)
}
/// Grows the file system on `device`, mounted at `mount_path`, to fill the device.
pub fn resize_fs(device: &str, mount_path: &str) -> Result<()> {
    host::resize_fs(device, mount_path).map_err(failure)
}
/// The size of a block device in bytes.
pub fn device_size(device: &str) -> Result<u64> {
    host::device_size(device).map_err(failure)
}
/// Waits up to `timeout_ms` for `device` to appear; false if it did not. A device the policy
/// does not grant is a failure at once.
pub fn wait_for_device(device: &str, timeout_ms: u32) -> Result<bool> {
    host::wait_for_device(device, timeout_ms).map_err(failure)
}
/// Creates a sparse image of `size` bytes (an existing one is kept); returns its actual size.
pub fn create_image(name: &str, size: u64) -> Result<u64> {
    host::create_image(name, size).map_err(failure)
}
/// The size of an image in bytes; `None` when it does not exist.
pub fn image_size(name: &str) -> Result<Option<u64>> {
    host::image_size(name).map_err(failure)
}
/// Grows an image and its loop device to `size` bytes; never shrinks.
pub fn grow_image(name: &str, size: u64) -> Result<()> {
    host::grow_image(name, size).map_err(failure)
}
/// Deletes a detached image; a missing one is success, an attached one a failure.
pub fn delete_image(name: &str) -> Result<()> {
    host::delete_image(name).map_err(failure)
}
/// Attaches an image to a loop device and returns the device path (the same one if already
/// attached: concurrent calls never create two).
pub fn attach_image(name: &str) -> Result<String> {
    host::attach_image(name).map_err(failure)
}
/// The loop device an image is attached to, if any.
pub fn image_device(name: &str) -> Result<Option<String>> {
    host::image_device(name).map_err(failure)
}
/// Detaches an image; one that is not attached is success, one that is mounted a failure.
pub fn detach_image(name: &str) -> Result<()> {
    host::detach_image(name).map_err(failure)
}
