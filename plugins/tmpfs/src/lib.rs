//! `flex/tmpfs`: a memory-backed scratch volume of a fixed size, mounted straight onto the pod's
//! volume directory. Not attachable: kubelet only calls `init`, `mount` and `unmount`.
//!
//! Options: `size` (bytes, or a Kubernetes quantity such as `64Mi` or `1G`; default 64Mi).
//! `readOnly: true` mounts it read-only; the pod's fsGroup owns the root, set-group-id, so new
//! files inherit the group.

use flex_sdk::{Capabilities, Driver, Options, Result, failure, log, mounts};

const DEFAULT_SIZE: u64 = 64 << 20;
/// Larger is almost certainly a typo: tmpfs pages come out of the node's memory.
const MAX_SIZE: u64 = 1 << 40;

struct Tmpfs;

impl Driver for Tmpfs {
    fn init() -> Result<Capabilities> {
        Ok(Capabilities {
            attach: false,
            // statfs on the pod directory reports the tmpfs usage.
            supports_metrics: true,
            // The driver sets the group itself, at mount time, without a recursive walk.
            fs_group: false,
            ..Capabilities::default()
        })
    }

    fn mount(target_dir: String, options: Options) -> Result<()> {
        let size = match options.get("size") {
            Some(text) => parse_size(text)?,
            None => DEFAULT_SIZE,
        };
        if mounts::is_mountpoint(&target_dir)? {
            log::info(&format!("{target_dir} is already mounted"));
            return Ok(());
        }
        let mut mount = mounts::Mount::new("tmpfs", &target_dir)
            .fs_type("tmpfs")
            .option("nosuid")
            .option("nodev")
            .option(format!("size={size}"))
            .read_only(options.read_only);
        mount = match options.fs_group {
            Some(gid) => mount.option(format!("gid={gid}")).option("mode=2775"),
            None => mount.option("mode=0777"),
        };
        mount.mount()?;
        log::info(&format!("mounted a {size}-byte tmpfs on {target_dir}"));
        Ok(())
    }

    fn unmount(target_dir: String) -> Result<()> {
        if mounts::is_mountpoint(&target_dir)? {
            mounts::unmount(&target_dir)?;
        }
        Ok(())
    }
}

flex_sdk::export_driver!(Tmpfs);

/// The tmpfs size in bytes, within 1 byte to 1Ti.
fn parse_size(text: &str) -> Result<u64> {
    let size = flex_sdk::parse_quantity(text)?;
    if size > MAX_SIZE {
        return Err(failure(format!(
            "size {text:?} is out of range: 1 byte to 1Ti"
        )));
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_stay_within_one_tebibyte() {
        assert_eq!(parse_size("1Ti").unwrap(), 1 << 40);
        assert!(parse_size("1025Gi").is_err());
        assert!(parse_size("64X").is_err());
    }
}
