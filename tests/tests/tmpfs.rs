//! The tmpfs driver through the real `flex` binary, with kubelet's argv and option JSON, on
//! real tmpfs mounts checked in /proc/self/mountinfo.

use flex_tests::*;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

fn tmpfs_node() -> (Node, PathBuf) {
    require_root();
    let node = Node::new();
    let driver = node.install("flex~tmpfs", &guest("flex_tmpfs"));
    node.set_policy("flex~tmpfs", &shipped_policy("tmpfs"));
    (node, driver)
}

#[test]
fn init_reports_a_mount_only_driver() {
    let (node, driver) = tmpfs_node();
    let reply = node.run(&driver, &["init"]).success();
    assert_eq!(
        reply["capabilities"],
        json!({"attach": false, "selinuxRelabel": true, "supportsMetrics": true,
               "fsGroup": false, "requiresFSResize": false})
    );
    // The second call loads the cached artifact, which lives in the node's cache, not where
    // kubelet's prober (or a container sharing the plugin dir) could see it.
    node.run(&driver, &["init"]).success();
    assert_eq!(node.artifacts().len(), 1, "{:?}", node.artifacts());
    let beside: Vec<_> = std::fs::read_dir(driver.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(beside.len(), 2, "{beside:?}");
}

#[test]
fn mount_then_unmount() {
    let (node, driver) = tmpfs_node();
    let dir = node.pod_dir("pod-a");
    let dir_arg = dir.to_str().unwrap();
    node.run(
        &driver,
        &["mount", dir_arg, &mount_json("vol", false, None, &[])],
    )
    .success();
    let mounted = mounts_at(&dir);
    assert_eq!(mounted.len(), 1, "{mounted:?}");
    assert_eq!(mounted[0].fs_type, "tmpfs");
    for option in ["rw", "nosuid", "nodev", "size=65536k"] {
        assert!(
            mounted[0].options.iter().any(|o| o == option),
            "{option} missing: {mounted:?}"
        );
    }
    std::fs::write(dir.join("data"), b"hello").unwrap();

    node.run(&driver, &["unmount", dir_arg]).success();
    assert!(mounts_at(&dir).is_empty());
    // The directory stays for kubelet to remove, and empty: the data lived in the tmpfs.
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
}

#[test]
fn mount_and_unmount_are_idempotent() {
    let (node, driver) = tmpfs_node();
    let dir = node.pod_dir("pod-b");
    let dir_arg = dir.to_str().unwrap();
    let json = mount_json("vol", false, None, &[("size", "2Mi")]);
    for _ in 0..3 {
        node.run(&driver, &["mount", dir_arg, &json]).success();
        assert_eq!(
            mounts_at(&dir).len(),
            1,
            "a repeated mount must not stack mounts"
        );
    }
    std::fs::write(dir.join("kept"), b"x").unwrap();
    node.run(&driver, &["mount", dir_arg, &json]).success();
    assert!(
        dir.join("kept").exists(),
        "a repeated mount must not hide the data"
    );
    for _ in 0..3 {
        node.run(&driver, &["unmount", dir_arg]).success();
        assert!(mounts_at(&dir).is_empty());
    }
}

#[test]
fn read_only_volume() {
    let (node, driver) = tmpfs_node();
    let dir = node.pod_dir("pod-ro");
    node.run(
        &driver,
        &[
            "mount",
            dir.to_str().unwrap(),
            &mount_json("vol", true, None, &[]),
        ],
    )
    .success();
    assert!(mounts_at(&dir)[0].options.iter().any(|o| o == "ro"));
    let err = std::fs::write(dir.join("f"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(nix::libc::EROFS));
    node.run(&driver, &["unmount", dir.to_str().unwrap()])
        .success();
}

#[test]
fn size_is_enforced() {
    let (node, driver) = tmpfs_node();
    let dir = node.pod_dir("pod-size");
    node.run(
        &driver,
        &[
            "mount",
            dir.to_str().unwrap(),
            &mount_json("vol", false, None, &[("size", "1Mi")]),
        ],
    )
    .success();
    std::fs::write(dir.join("fits"), vec![7u8; 512 << 10]).unwrap();
    let err = std::fs::write(dir.join("too-big"), vec![7u8; 1 << 20]).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(nix::libc::ENOSPC));
    node.run(&driver, &["unmount", dir.to_str().unwrap()])
        .success();
}

#[test]
fn invalid_sizes_fail_clearly() {
    let (node, driver) = tmpfs_node();
    let dir = node.pod_dir("pod-bad-size");
    for size in ["0", "lots", "1.5Gi", "5Ti"] {
        let out = node.run(
            &driver,
            &[
                "mount",
                dir.to_str().unwrap(),
                &mount_json("vol", false, None, &[("size", size)]),
            ],
        );
        assert!(out.failure().contains("size"), "{size}: {out:?}");
    }
    assert!(mounts_at(&dir).is_empty());
}

#[test]
fn fs_group_owns_the_volume() {
    let (node, driver) = tmpfs_node();
    let dir = node.pod_dir("pod-group");
    node.run(
        &driver,
        &[
            "mount",
            dir.to_str().unwrap(),
            &mount_json("vol", false, Some(2000), &[]),
        ],
    )
    .success();
    let meta = std::fs::metadata(&dir).unwrap();
    assert_eq!(meta.gid(), 2000);
    assert_eq!(
        meta.mode() & 0o7777,
        0o2775,
        "group-writable and set-group-id"
    );
    node.run(&driver, &["unmount", dir.to_str().unwrap()])
        .success();
}

#[test]
fn without_a_policy_nothing_is_mounted() {
    require_root();
    let node = Node::new();
    let driver = node.install("flex~tmpfs", &guest("flex_tmpfs"));
    let dir = node.pod_dir("pod-nopolicy");
    let message = node
        .run(
            &driver,
            &[
                "mount",
                dir.to_str().unwrap(),
                &mount_json("vol", false, None, &[]),
            ],
        )
        .failure();
    assert!(message.contains("denied"), "{message}");
    assert!(mounts_at(&dir).is_empty());
}

#[test]
fn every_mount_is_audited_even_under_concurrency() {
    let (node, driver) = tmpfs_node();
    let calls = 16;
    let dirs: Vec<_> = (0..calls)
        .map(|i| node.pod_dir(&format!("pod-c{i}")))
        .collect();
    std::thread::scope(|scope| {
        for dir in &dirs {
            let (node, driver) = (&node, &driver);
            scope.spawn(move || {
                node.run(
                    driver,
                    &[
                        "mount",
                        dir.to_str().unwrap(),
                        &mount_json("vol", false, None, &[]),
                    ],
                )
                .success();
                node.run(driver, &["unmount", dir.to_str().unwrap()])
                    .success();
            });
        }
    });
    let audit = std::fs::read_to_string(node.path("log/audit.jsonl")).unwrap();
    let lines: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).expect("whole JSON line"))
        .collect();
    assert_eq!(lines.len(), 2 * calls, "one line per mount and per unmount");
    for dir in &dirs {
        let for_dir = |op: &str| {
            lines
                .iter()
                .filter(|l| l["operation"] == op && l["args"]["target"] == dir.to_str().unwrap())
                .count()
        };
        assert_eq!((for_dir("mount"), for_dir("unmount")), (1, 1));
    }
    assert!(
        lines
            .iter()
            .all(|l| l["decision"] == "allow" && l["result"] == "ok")
    );
    assert!(mounts_under(&node.path("")).is_empty());
}

#[test]
fn dry_run_audits_without_mounting() {
    let (node, driver) = tmpfs_node();
    let dir = node.pod_dir("pod-dry");
    let json = mount_json("vol", false, None, &[]);
    node.run(
        &driver,
        &["--dry-run", "mount", dir.to_str().unwrap(), &json],
    )
    .success();
    assert!(mounts_at(&dir).is_empty());
    let audit = std::fs::read_to_string(node.path("log/audit.jsonl")).unwrap();
    let line: Value = serde_json::from_str(audit.trim()).unwrap();
    assert_eq!(line["decision"], "would-do");
    assert!(
        line["rule"]
            .as_str()
            .unwrap()
            .contains("mount.fs_types \"tmpfs\""),
        "{line}"
    );
}
