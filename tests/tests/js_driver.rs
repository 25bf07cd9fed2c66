//! The JavaScript driver `flex~tmpfs-js` (plugins/tmpfs-js, written against sdk/js and built
//! by componentize-js for the `mount-provisioning-driver` world, every WASI feature off) through
//! the real `flex` binary, with kubelet's argv and option JSON, on real tmpfs mounts checked in
//! /proc/self/mountinfo (its provisioning: provisioning.rs). Build it with
//! `scripts/build-guests.sh` (`make build` runs it).

use flex_tests::*;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

const NAME: &str = "flex~tmpfs-js";

fn tmpfs_js_node() -> (Node, PathBuf) {
    require_root();
    let node = Node::new();
    let driver = node.install_sharing_artifacts(NAME, &script_guest("flex_tmpfs_js"));
    node.set_policy(NAME, &shipped_policy("tmpfs-js"));
    (node, driver)
}

fn mount(node: &Node, driver: &Path, dir: &Path, extra: &[(&str, &str)]) -> Output {
    let json = mount_json("vol", false, None, extra);
    node.run(driver, &["mount", dir.to_str().unwrap(), &json])
}

#[test]
fn init_reports_a_mount_only_driver_and_other_verbs_are_not_supported() {
    let (node, driver) = tmpfs_js_node();
    let reply = node.run(&driver, &["init"]).success();
    assert_eq!(
        reply["capabilities"],
        json!({"attach": false, "selinuxRelabel": true, "supportsMetrics": true,
               "fsGroup": false, "requiresFSResize": false})
    );
    let attach = node.run(&driver, &["attach", &base_json("pv", "", &[]), "node-1"]);
    assert_eq!(attach.status(), "Not supported", "{attach:?}");
    assert_ne!(attach.code, 0);
    let expand = node.run(
        &driver,
        &[
            "expandvolume",
            &base_json("pv", "", &[]),
            "/dev/x",
            "2048",
            "1024",
        ],
    );
    assert_eq!(expand.status(), "Not supported", "{expand:?}");
}

#[test]
fn mount_is_a_nosuid_nodev_tmpfs_of_the_requested_size() {
    let (node, driver) = tmpfs_js_node();
    let dir = node.volume_dir(NAME, "pod-a", "scratch");
    mount(&node, &driver, &dir, &[("size", "2Mi"), ("inodes", "1000")]).success();
    let mounted = mounts_at(&dir);
    assert_eq!(mounted.len(), 1, "{mounted:?}");
    assert_eq!(mounted[0].fs_type, "tmpfs");
    for option in [
        "rw",
        "nosuid",
        "nodev",
        "size=2048k",
        "nr_inodes=1000",
        "mode=777",
    ] {
        assert!(
            mounted[0].options.iter().any(|o| o == option),
            "{option} missing: {mounted:?}"
        );
    }
    std::fs::write(dir.join("data"), b"hello").unwrap();
    assert_eq!(std::fs::read(dir.join("data")).unwrap(), b"hello");
    let err = std::fs::write(dir.join("too-big"), vec![7u8; 3 << 20]).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(nix::libc::ENOSPC));

    node.run(&driver, &["unmount", dir.to_str().unwrap()])
        .success();
    assert!(mounts_at(&dir).is_empty());
    // The data lived in the tmpfs: the directory is empty again for kubelet to remove.
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
}

#[test]
fn mount_and_unmount_are_idempotent() {
    let (node, driver) = tmpfs_js_node();
    let dir = node.volume_dir(NAME, "pod-b", "scratch");
    for _ in 0..2 {
        mount(&node, &driver, &dir, &[]).success();
        assert_eq!(mounts_at(&dir).len(), 1, "a repeated mount must not stack");
    }
    std::fs::write(dir.join("kept"), b"x").unwrap();
    mount(&node, &driver, &dir, &[]).success();
    assert!(
        dir.join("kept").exists(),
        "a repeated mount must not hide the data"
    );
    for _ in 0..2 {
        node.run(&driver, &["unmount", dir.to_str().unwrap()])
            .success();
        assert!(mounts_at(&dir).is_empty());
    }
}

#[test]
fn read_only_and_fs_group() {
    let (node, driver) = tmpfs_js_node();
    let dir = node.volume_dir(NAME, "pod-ro", "scratch");
    let json = mount_json("vol", true, None, &[]);
    node.run(&driver, &["mount", dir.to_str().unwrap(), &json])
        .success();
    assert!(mounts_at(&dir)[0].options.iter().any(|o| o == "ro"));
    let err = std::fs::write(dir.join("f"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(nix::libc::EROFS));
    node.run(&driver, &["unmount", dir.to_str().unwrap()])
        .success();

    let dir = node.volume_dir(NAME, "pod-group", "scratch");
    let json = mount_json("vol", false, Some(2000), &[]);
    node.run(&driver, &["mount", dir.to_str().unwrap(), &json])
        .success();
    let meta = std::fs::metadata(&dir).unwrap();
    assert_eq!((meta.gid(), meta.mode() & 0o7777), (2000, 0o2775));
    node.run(&driver, &["unmount", dir.to_str().unwrap()])
        .success();
}

#[test]
fn a_driver_error_is_a_failure_with_its_text() {
    let (node, driver) = tmpfs_js_node();
    let dir = node.volume_dir(NAME, "pod-bad", "scratch");
    // `DriverError` from the SDK's parseQuantity and from the driver's range check.
    let out = mount(&node, &driver, &dir, &[("size", "lots")]);
    assert_eq!(
        out.failure(),
        "invalid size \"lots\": expected bytes or a quantity such as 512Mi or 1Gi",
        "{out:?}"
    );
    let out = mount(&node, &driver, &dir, &[("size", "5Ti")]);
    assert_eq!(out.failure(), "size \"5Ti\" is out of range: 1 byte to 1Ti");
    assert!(mounts_at(&dir).is_empty());
}

#[test]
fn an_uncaught_exception_is_a_failure_naming_it() {
    let (node, driver) = tmpfs_js_node();
    let dir = node.volume_dir(NAME, "pod-exc", "scratch");
    // The driver lets BigInt("12x") throw: a SyntaxError, never a trap.
    let out = mount(&node, &driver, &dir, &[("inodes", "12x")]);
    let message = out.failure();
    assert!(message.starts_with("SyntaxError: "), "{out:?}");
    assert!(!message.contains("crashed"), "{message}");
    assert!(mounts_at(&dir).is_empty());
    // The stack is in the host's log, as a driver line.
    let log = node.log();
    assert!(
        log.lines().any(|l| l.contains("\"source\":\"driver\"")
            && l.contains("uncaught SyntaxError")
            && l.contains("tmpfs.js")),
        "{log}"
    );
}

#[test]
fn a_host_refusal_is_a_failure_with_the_hosts_text() {
    let (node, driver) = tmpfs_js_node();
    // A policy without nr_inodes: the host refuses the option, the SDK's mounts.js turns the
    // refusal into a DriverError, and the driver lets it escape.
    node.set_policy(
        NAME,
        &shipped_policy("tmpfs-js").replace("\"nr_inodes=[1-9]*\", ", ""),
    );
    let dir = node.volume_dir(NAME, "pod-refused", "scratch");
    let message = mount(&node, &driver, &dir, &[("inodes", "10")]).failure();
    assert!(message.starts_with("denied: mount option"), "{message}");
    assert!(message.contains("nr_inodes=10"), "{message}");
    assert!(mounts_at(&dir).is_empty());
}

#[test]
fn without_a_policy_nothing_is_mounted() {
    require_root();
    let node = Node::new();
    let driver = node.install_sharing_artifacts(NAME, &script_guest("flex_tmpfs_js"));
    let dir = node.volume_dir(NAME, "pod-nopolicy", "scratch");
    let message = mount(&node, &driver, &dir, &[]).failure();
    assert!(message.starts_with("denied: "), "{message}");
    assert!(mounts_at(&dir).is_empty());
    assert!(
        node.audit()
            .iter()
            .any(|l| l["operation"] == "mount" && l["decision"] == "deny")
    );
}

#[test]
fn inspect_shows_only_the_worlds_imports() {
    let node = Node::new();
    let component = script_guest("flex_tmpfs_js");
    let policy = workspace_file("plugins/tmpfs-js/policy.toml");
    let out = node.run(
        &flex_binary(),
        &[
            "inspect",
            component.to_str().unwrap(),
            "--policy",
            policy.to_str().unwrap(),
            "--json",
            "--strict",
        ],
    );
    assert_eq!(out.code, 0, "{out:?}");
    let report: Value = serde_json::from_str(&out.stdout).unwrap();
    let mut imports: Vec<&str> = report["imports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    imports.sort();
    // The `mount-provisioning-driver` world and nothing else: no WASI at all, no block devices,
    // no programs.
    assert_eq!(
        imports,
        [
            "flex:volume/config@0.1.0",
            "flex:volume/log@0.1.0",
            "flex:volume/mounts@0.1.0",
            "flex:volume/types@0.1.0"
        ]
    );
    assert_eq!(
        report["exports"],
        json!(["flex:volume/provisioning@0.1.0", "flex:volume/verbs@0.1.0"])
    );
    assert_eq!(report["not_granted"], json!([]));
    assert_eq!(report["unused_grants"], json!([]));
    assert_eq!(report["would_not_link"], json!([]));
}

fn workspace_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join(relative)
}
