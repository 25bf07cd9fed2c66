//! The Python driver `flex~hostpath-py` (plugins/hostpath-py, written against sdk/python and
//! built by componentize-py for the `mount-driver` world) through the real `flex` binary, with
//! kubelet's argv and option JSON, on real bind mounts checked in /proc/self/mountinfo.
//! Build it with `scripts/build-guests.sh` (`make build` runs it).

use flex_tests::*;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

const NAME: &str = "flex~hostpath-py";

/// The shipped policy, with this node's state root in place of the default `/var/lib/flex`.
fn policy(node: &Node) -> String {
    let root = format!("{}/", node.path("state").display());
    shipped_policy("hostpath-py").replace("/var/lib/flex/", &root)
}

fn hostpath_node() -> (Node, PathBuf) {
    require_root();
    let node = Node::new();
    let driver = node.install_sharing_artifacts(NAME, &script_guest("flex_hostpath_py"));
    node.set_policy(NAME, &policy(&node));
    (node, driver)
}

/// Where the driver keeps volume `pv` on the host (its `/state/volumes/<pv>`).
fn volume(node: &Node, pv: &str) -> PathBuf {
    node.path("state").join(NAME).join("volumes").join(pv)
}

fn mount(node: &Node, driver: &std::path::Path, dir: &std::path::Path, pv: &str) -> Output {
    let json = mount_json(pv, false, None, &[]);
    node.run(driver, &["mount", dir.to_str().unwrap(), &json])
}

#[test]
fn init_reports_a_mount_only_driver_and_other_verbs_are_not_supported() {
    let (node, driver) = hostpath_node();
    let reply = node.run(&driver, &["init"]).success();
    assert_eq!(
        reply["capabilities"],
        json!({"attach": false, "selinuxRelabel": true, "supportsMetrics": false,
               "fsGroup": true, "requiresFSResize": false})
    );
    // The SDK's defaults: every verb the driver does not define answers Not supported.
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
fn mount_binds_the_volume_directory_with_nosuid_and_nodev() {
    let (node, driver) = hostpath_node();
    let dir = node.volume_dir(NAME, "pod-a", "data");
    mount(&node, &driver, &dir, "pv-a").success();

    let mounted = mounts_at(&dir);
    assert_eq!(mounted.len(), 1, "{mounted:?}");
    for option in ["rw", "nosuid", "nodev"] {
        assert!(
            mounted[0].options.iter().any(|o| o == option),
            "{option} missing: {mounted:?}"
        );
    }
    // A bind of the volume's own directory: the same inode, and what the pod writes lands there.
    let (pod, kept) = (
        std::fs::metadata(&dir).unwrap(),
        std::fs::metadata(volume(&node, "pv-a")).unwrap(),
    );
    assert_eq!((pod.dev(), pod.ino()), (kept.dev(), kept.ino()));
    std::fs::write(dir.join("written-by-the-pod"), b"hello").unwrap();
    assert_eq!(
        std::fs::read(volume(&node, "pv-a").join("written-by-the-pod")).unwrap(),
        b"hello"
    );

    node.run(&driver, &["unmount", dir.to_str().unwrap()])
        .success();
    assert!(mounts_at(&dir).is_empty());
    // The pod directory is empty again for kubelet to remove; the data persists in the volume.
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    assert!(volume(&node, "pv-a").join("written-by-the-pod").exists());
    // A later pod gets the same data.
    let again = node.volume_dir(NAME, "pod-b", "data");
    mount(&node, &driver, &again, "pv-a").success();
    assert!(again.join("written-by-the-pod").exists());
    node.run(&driver, &["unmount", again.to_str().unwrap()])
        .success();
}

#[test]
fn mount_and_unmount_are_idempotent() {
    let (node, driver) = hostpath_node();
    let dir = node.volume_dir(NAME, "pod-c", "data");
    for _ in 0..2 {
        mount(&node, &driver, &dir, "pv-c").success();
        assert_eq!(mounts_at(&dir).len(), 1, "a repeated mount must not stack");
    }
    std::fs::write(dir.join("kept"), b"x").unwrap();
    mount(&node, &driver, &dir, "pv-c").success();
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
fn read_only_volume() {
    let (node, driver) = hostpath_node();
    let dir = node.volume_dir(NAME, "pod-ro", "data");
    let json = mount_json("pv-ro", true, None, &[]);
    node.run(&driver, &["mount", dir.to_str().unwrap(), &json])
        .success();
    assert!(mounts_at(&dir)[0].options.iter().any(|o| o == "ro"));
    let err = std::fs::write(dir.join("f"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(nix::libc::EROFS));
    node.run(&driver, &["unmount", dir.to_str().unwrap()])
        .success();
}

#[test]
fn a_driver_error_is_a_failure_with_its_text() {
    let (node, driver) = hostpath_node();
    let dir = node.volume_dir(NAME, "pod-bad", "data");
    // `flex_driver.DriverError` raised by the driver for a volume name that is no directory name.
    let out = mount(&node, &driver, &dir, "../escape");
    let message = out.failure();
    assert_eq!(
        message, "volume name '../escape' is not a valid directory name",
        "{out:?}"
    );
    assert!(mounts_at(&dir).is_empty());
    assert!(!node.path("state").join(NAME).join("escape").exists());
}

#[test]
fn an_uncaught_exception_is_a_failure_naming_it() {
    let (node, driver) = hostpath_node();
    let dir = node.volume_dir(NAME, "pod-exc", "data");
    // A file where the volume's directory belongs: os.makedirs raises FileExistsError, which the
    // driver does not catch.
    std::fs::create_dir_all(volume(&node, "pv-file").parent().unwrap()).unwrap();
    std::fs::write(volume(&node, "pv-file"), b"not a directory").unwrap();
    let out = mount(&node, &driver, &dir, "pv-file");
    let message = out.failure();
    assert!(
        message.starts_with("FileExistsError: ") && message.contains("/state/volumes/pv-file"),
        "{out:?}"
    );
    assert!(!message.contains("unexpected exception"), "{message}");
    assert!(mounts_at(&dir).is_empty());
    // The traceback is in the host's log, as a driver line.
    let log = node.log();
    assert!(
        log.lines()
            .any(|l| l.contains("\"source\":\"driver\"") && l.contains("Traceback")),
        "{log}"
    );
}

#[test]
fn without_a_policy_nothing_is_mounted() {
    require_root();
    let node = Node::new();
    let driver = node.install_sharing_artifacts(NAME, &script_guest("flex_hostpath_py"));
    let dir = node.volume_dir(NAME, "pod-nopolicy", "data");
    // No policy: no [config] to name the volumes, no /state, no bind.
    let message = mount(&node, &driver, &dir, "pv-n").failure();
    assert!(message.contains("volumes_dir"), "{message}");
    assert!(mounts_at(&dir).is_empty());
    assert!(!node.path("state").join(NAME).exists());

    // A policy granting the state dir and the config but no [mount]: the host denies the bind.
    let without_mount = policy(&node).split("\n[mount]").next().unwrap().to_string();
    node.set_policy(NAME, &without_mount);
    let message = mount(&node, &driver, &dir, "pv-n").failure();
    assert!(
        message.starts_with("denied: bind source") && message.contains("pv-n"),
        "{message}"
    );
    assert!(mounts_at(&dir).is_empty());
    assert!(
        node.audit()
            .iter()
            .any(|l| l["operation"] == "mount" && l["decision"] == "deny")
    );
}

#[test]
fn inspect_shows_only_the_worlds_capabilities() {
    let (node, _) = hostpath_node();
    let component = script_guest("flex_hostpath_py");
    let policy_file = node.path("policy").join(format!("{NAME}.toml"));
    let out = node.run(
        &flex_binary(),
        &[
            "inspect",
            component.to_str().unwrap(),
            "--policy",
            policy_file.to_str().unwrap(),
            "--json",
        ],
    );
    assert_eq!(out.code, 0, "{out:?}");
    let report: Value = serde_json::from_str(&out.stdout).unwrap();
    let imports: Vec<&str> = report["imports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    let mut flex: Vec<&str> = imports
        .iter()
        .copied()
        .filter(|i| i.starts_with("flex:"))
        .collect();
    flex.sort();
    // The `mount-driver` world's imports: no block devices, no host programs.
    assert_eq!(
        flex,
        [
            "flex:volume/config@0.1.0",
            "flex:volume/log@0.1.0",
            "flex:volume/mounts@0.1.0",
            "flex:volume/types@0.1.0"
        ],
        "{imports:?}"
    );
    // Everything else is the WASI componentize-py's CPython always imports (no HTTP); the
    // sockets among it are linked, and refused.
    assert!(imports.iter().all(|i| i.starts_with("flex:volume/")
        || (i.starts_with("wasi:") && !i.starts_with("wasi:http/"))));
    for import in report["imports"].as_array().unwrap() {
        let name = import["name"].as_str().unwrap();
        let expected = if name.starts_with("wasi:sockets/") {
            "denied"
        } else {
            "granted"
        };
        assert_eq!(import["verdict"], expected, "{import}");
    }
    // World `mount-provisioning-driver`: the verbs and provisioning for `flex provisioner`
    // (componentize-py also exports an instance of its own, named `exports`).
    for export in ["flex:volume/verbs@0.1.0", "flex:volume/provisioning@0.1.0"] {
        assert!(
            report["exports"]
                .as_array()
                .unwrap()
                .contains(&json!(export)),
            "{export}: {report}"
        );
    }
    assert_eq!(report["unused_grants"], json!([]));
    assert_eq!(report["would_not_link"], json!([]));
}

/// `flex install` of a component whose compile takes seconds shows what it compiles and for
/// how long, on a terminal (here a pseudo-terminal from `script`); elsewhere it prints nothing
/// (the other install tests check an empty stderr).
#[test]
fn install_on_a_terminal_shows_compile_progress() {
    require_root();
    let node = Node::new();
    let command = format!(
        "{} install --plugin-dir {} {NAME} {}",
        flex_binary().display(),
        node.path("plugins").display(),
        script_guest("flex_hostpath_py").display()
    );
    let out = node
        .command(
            std::path::Path::new("script"),
            &["-qec", &command, "/dev/null"],
        )
        .output()
        .expect("script (util-linux)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("compiling") && text.contains("MB)... 1 s") && text.contains("done in"),
        "{text}"
    );
    assert!(text.contains(&format!("installed {NAME}")), "{text}");
}
