//! `{{name}}`: a memory-backed scratch volume of a fixed size, mounted straight onto the pod's
//! volume directory. Not attachable: kubelet only calls `init`, `mount` and `unmount`.
//!
//! Options: `size` (bytes, or a Kubernetes quantity such as `64Mi` or `1G`; default 64Mi, at
//! most 1Ti). `readOnly: true` mounts it read-only; the pod's fsGroup owns the root,
//! set-group-id, so new files inherit the group.
//!
//! Every verb is idempotent: kubelet retries everything. A driver never prints (kubelet reads
//! stdout and stderr as the reply): diagnostics go through `flex_sdk::log`.

use flex_sdk::{Capabilities, Driver, Options, Result, failure, log, mounts};

const DEFAULT_SIZE: u64 = 64 << 20;
/// Larger is almost certainly a typo: tmpfs pages come out of the node's memory.
const MAX_SIZE: u64 = 1 << 40;

struct {{class}};

impl Driver for {{class}} {
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
        // kubelet also calls unmount for a directory that is not mounted.
        if mounts::is_mountpoint(&target_dir)? {
            mounts::unmount(&target_dir)?;
        }
        Ok(())
    }
}

flex_sdk::export_driver!({{class}});

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
    //! The verbs, unit-tested natively against the SDK's fake host (`cargo test`): no root, no
    //! wasm, no kubelet. The fake checks no policy: `flex test` runs the built component.

    use super::*;
    use flex_sdk::Error;
    use flex_sdk::testing::{Call, Host};

    const DIR: &str = "/var/lib/kubelet/pods/u1/volumes/{{name}}/scratch";

    fn tmpfs_mount(options: &[&str]) -> Call {
        Call::Mount {
            source: "tmpfs".into(),
            target: DIR.into(),
            fs_type: "tmpfs".into(),
            options: options.iter().map(|o| o.to_string()).collect(),
            bind: false,
        }
    }

    #[test]
    fn init_reports_a_driver_that_is_not_attachable() {
        let caps = {{class}}::init().unwrap();
        assert!(!caps.attach);
        assert!(!caps.fs_group);
    }

    #[test]
    fn mount_defaults_to_64_mebibytes_writable_by_all() {
        let host = Host::new(); // this test's fake host (each test runs on its own thread)
        {{class}}::mount(DIR.into(), Options::default()).unwrap();
        assert_eq!(
            host.calls(),
            [
                Call::IsMountpoint { path: DIR.into() },
                tmpfs_mount(&["nosuid", "nodev", "size=67108864", "mode=0777"]),
            ]
        );
        assert!(host.mounts.is_mounted(DIR));
    }

    #[test]
    fn mount_applies_size_read_only_and_fs_group() {
        let host = Host::new();
        let options = Options::default()
            .with_extra("size", "8Mi")
            .with_read_only(true)
            .with_fs_group(2000);
        {{class}}::mount(DIR.into(), options).unwrap();
        assert_eq!(
            host.calls().last(),
            Some(&tmpfs_mount(&[
                "nosuid",
                "nodev",
                "size=8388608",
                "ro",
                "gid=2000",
                "mode=2775"
            ]))
        );
    }

    #[test]
    fn a_bad_size_fails_before_any_host_call() {
        let host = Host::new();
        for size in ["0", "2Ti", "lots"] {
            let options = Options::default().with_extra("size", size);
            assert!(
                matches!({{class}}::mount(DIR.into(), options), Err(Error::Failure(_))),
                "{size}"
            );
        }
        assert_eq!(host.calls(), []);
    }

    #[test]
    fn mount_is_idempotent() {
        let host = Host::new();
        {{class}}::mount(DIR.into(), Options::default()).unwrap();
        host.take_calls();
        {{class}}::mount(DIR.into(), Options::default()).unwrap(); // the retry only looks
        assert_eq!(host.calls(), [Call::IsMountpoint { path: DIR.into() }]);
    }

    #[test]
    fn a_host_refusal_reaches_kubelet() {
        let host = Host::new();
        host.fail_when(
            |call| matches!(call, Call::Mount { .. }),
            "denied: option size=67108864 is not granted",
        );
        assert_eq!(
            {{class}}::mount(DIR.into(), Options::default()),
            Err(failure("denied: option size=67108864 is not granted"))
        );
        assert!(host.mounts.mounted().is_empty());
    }

    #[test]
    fn unmount_undoes_mount_and_accepts_a_directory_not_mounted() {
        let host = Host::new();
        {{class}}::mount(DIR.into(), Options::default()).unwrap();
        {{class}}::unmount(DIR.into()).unwrap();
        assert!(host.mounts.mounted().is_empty());
        host.take_calls();
        {{class}}::unmount(DIR.into()).unwrap();
        assert_eq!(host.calls(), [Call::IsMountpoint { path: DIR.into() }]);
    }
}
