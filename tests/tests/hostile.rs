//! A misbehaving driver is contained: a Failure reply, an empty stderr, nothing mounted.

use flex_tests::*;

fn hostile_node() -> (Node, std::path::PathBuf) {
    require_root();
    let node = Node::new();
    let driver = node.install("test~hostile", &guest("flex_hostile"));
    // Even with a tmpfs grant, only the call's own directory may be a target.
    node.set_policy("test~hostile", &shipped_policy("tmpfs"));
    (node, driver)
}

fn attack(node: &Node, driver: &std::path::Path, attack: &str, extra: &[(&str, &str)]) -> Output {
    node.attack(driver, &node.pod_dir("victim"), attack, extra)
}

#[test]
fn mount_outside_the_calls_directory_is_refused() {
    let (node, driver) = hostile_node();
    let elsewhere = node.path("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, node.pod_dir("victim").join("escape")).unwrap();
    let inner_link = node.pod_dir("victim").join("escape");
    let dotdot = node.pod_dir("victim").join("../../../../../elsewhere");
    for target in [elsewhere.clone(), inner_link, dotdot, "/tmp".into()] {
        let message = attack(
            &node,
            &driver,
            "mount-elsewhere",
            &[("target", target.to_str().unwrap())],
        )
        .failure();
        assert!(
            message.starts_with("denied: target"),
            "{}: {message}",
            target.display()
        );
    }
    assert!(mounts_under(&node.path("")).is_empty());
    assert!(
        mounts_at(std::path::Path::new("/tmp"))
            .iter()
            .all(|m| m.fs_type != "tmpfs" || !m.options.iter().any(|o| o == "size=65536k"))
    );
}

#[test]
fn bind_of_the_host_root_is_refused() {
    let (node, driver) = hostile_node();
    assert!(
        attack(&node, &driver, "bind-root", &[])
            .failure()
            .contains("denied: bind source \"/\"")
    );
    assert!(mounts_under(&node.path("")).is_empty());
}

#[test]
fn panic_becomes_a_failure_with_the_message() {
    let (node, driver) = hostile_node();
    let message = attack(&node, &driver, "panic", &[]).failure();
    assert!(
        message.contains("crashed") && message.contains("panicked on purpose"),
        "{message}"
    );
}

#[test]
fn driver_output_never_reaches_kubelet() {
    let (node, driver) = hostile_node();
    let out = attack(&node, &driver, "print", &[]);
    assert_eq!(out.failure(), "printed to stdout and stderr");
    assert!(
        node.log().contains("noise on stderr"),
        "driver output is kept in the log"
    );
}

#[test]
fn memory_bomb_is_stopped() {
    let (node, driver) = hostile_node();
    let message = attack(&node, &driver, "memory", &[]).failure();
    assert!(message.contains("limits.memory_mib"), "{message}");
}

#[test]
fn gigantic_reply_is_cut_short() {
    let (node, driver) = hostile_node();
    let out = attack(&node, &driver, "huge-reply", &[]);
    assert!(
        out.stdout.len() < 8192,
        "reply of {} bytes",
        out.stdout.len()
    );
    assert!(out.failure().ends_with("bytes cut)"));
}

#[test]
fn host_files_are_out_of_reach() {
    let (node, driver) = hostile_node();
    for path in ["/etc/shadow", "/etc/hostname", "../../etc/passwd"] {
        let message = attack(&node, &driver, "read-host-file", &[("path", path)]).failure();
        assert!(message.starts_with("cannot read"), "{path}: {message}");
    }
}

#[test]
fn infinite_loop_is_cut_off_at_the_policy_deadline() {
    let (node, driver) = hostile_node();
    with_policy(&node, "[limits]\ndeadline_seconds = 1");
    let started = std::time::Instant::now();
    let message = attack(&node, &driver, "loop", &[]).failure();
    assert!(message.contains("did not finish within 1s"), "{message}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

#[test]
fn denials_are_audited() {
    let (node, driver) = hostile_node();
    let elsewhere = node.path("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    attack(
        &node,
        &driver,
        "mount-elsewhere",
        &[("target", elsewhere.to_str().unwrap())],
    )
    .failure();
    let audit = std::fs::read_to_string(node.path("log/audit.jsonl")).unwrap();
    let line: Value = serde_json::from_str(audit.lines().next().unwrap()).unwrap();
    assert_eq!(
        (line["decision"].as_str(), line["operation"].as_str()),
        (Some("deny"), Some("mount"))
    );
    assert_eq!(line["driver"], "test~hostile");
    assert_eq!(line["args"]["target"], elsewhere.to_str().unwrap());
    assert!(
        line["rule"]
            .as_str()
            .unwrap()
            .contains("not the directory kubelet passed"),
        "{line}"
    );
}

/// The last audit line, which must be a denial of `operation`; returns its reason.
fn last_denial(node: &Node, operation: &str) -> String {
    let lines = node.audit();
    let line = lines.last().expect("an audit line");
    assert_eq!(
        (line["decision"].as_str(), line["operation"].as_str()),
        (Some("deny"), Some(operation)),
        "{line}"
    );
    line["rule"].as_str().unwrap().to_string()
}

fn with_policy(node: &Node, extra: &str) {
    node.set_policy(
        "test~hostile",
        &format!("{}\n{extra}\n", shipped_policy("tmpfs")),
    );
}

#[test]
fn stack_overflow_is_contained() {
    let (node, driver) = hostile_node();
    let message = attack(&node, &driver, "stack-overflow", &[]).failure();
    assert!(message.contains("crashed"), "{message}");
}

#[test]
fn http_goes_only_to_listed_destinations() {
    let (node, driver) = hostile_node();
    let server = LocalHttpServer::start();
    let port = server.port;
    with_policy(
        &node,
        &format!("[http]\ndestinations = [\"http://127.0.0.1:{port}\"]"),
    );
    // The allowed destination is reached for real.
    let url = format!("http://127.0.0.1:{port}/allowed");
    attack(&node, &driver, "http", &[("url", &url)]).success();
    assert_eq!(server.requests(), 1);
    assert!(node.log().contains("HTTP status 200"));

    for url in [
        format!("http://127.0.0.2:{port}/other-host"),
        format!("http://127.0.0.1:{}/other-port", port + 1),
        format!("https://127.0.0.1:{port}/other-scheme"),
        "http://169.254.169.254/latest/meta-data/".to_string(),
    ] {
        let message = attack(&node, &driver, "http", &[("url", &url)]).failure();
        assert!(message.contains("not in the policy"), "{url}: {message}");
        assert!(last_denial(&node, "http").contains("http.destinations"));
    }
    assert_eq!(server.requests(), 1, "a denied request reached the server");
}

#[test]
fn metadata_and_loopback_addresses_need_an_explicit_grant() {
    let (node, driver) = hostile_node();
    let server = LocalHttpServer::start();
    let port = server.port;
    // Even "any host" does not reach the metadata service, and a name that resolves to
    // loopback is refused although the name itself is listed.
    with_policy(
        &node,
        &format!("[http]\ndestinations = [\"http://*\", \"http://localhost:{port}\"]"),
    );
    for (url, expected) in [
        (
            "http://169.254.169.254/latest/meta-data/".to_string(),
            "169.254.169.254, a link-local",
        ),
        (
            format!("http://localhost:{port}/"),
            "127.0.0.1, a loopback address",
        ),
    ] {
        let message = attack(&node, &driver, "http", &[("url", &url)]).failure();
        assert!(message.contains(expected), "{url}: {message}");
        assert!(last_denial(&node, "http").contains(expected));
    }
    assert_eq!(server.requests(), 0);
}

#[test]
fn exec_runs_only_listed_programs_in_a_clean_environment() {
    let (node, driver) = hostile_node();
    with_policy(
        &node,
        "[[exec.programs]]\npath = \"/usr/bin/true\"\nargs = []",
    );
    let ran = attack(&node, &driver, "exec", &[("program", "/usr/bin/true")]).failure();
    assert_eq!(ran, "ran, exit code Some(0)");
    for (program, env, expected) in [
        ("/bin/sh", None, "not listed"),
        ("/usr/bin/../bin/true", None, "not listed"),
        (
            "/usr/bin/true",
            Some(("env.LD_PRELOAD", "/tmp/evil.so")),
            "LD_PRELOAD",
        ),
    ] {
        let mut options = vec![("program", program)];
        options.extend(env);
        let message = attack(&node, &driver, "exec", &options).failure();
        assert!(message.contains(expected), "{program}: {message}");
        assert!(last_denial(&node, "exec").contains(expected));
    }
}

#[test]
fn a_host_call_blocked_past_the_deadline_still_gets_a_reply() {
    let (node, driver) = hostile_node();
    with_policy(
        &node,
        "[exec]\ntimeout_seconds = 60\n[[exec.programs]]\npath = \"/usr/bin/sleep\"\nargs = [[\"30\"]]\n[limits]\ndeadline_seconds = 1",
    );
    let started = std::time::Instant::now();
    let out = attack(
        &node,
        &driver,
        "exec",
        &[("program", "/usr/bin/sleep"), ("args", "30")],
    );
    assert!(out.failure().contains("blocked in a host call"));
    assert!(started.elapsed() < std::time::Duration::from_secs(15));
}

#[test]
fn mkfs_never_touches_an_existing_file_system_or_an_unlisted_device() {
    let (node, driver) = hostile_node();
    let image = node.path("disk.img");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    let mkfs = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-U", "5f1b4d36-0c7e-4a52-9f3c-3c6c2f0a4b11"])
        .arg(&image)
        .status()
        .unwrap();
    assert!(mkfs.success());
    let _detach = LoopDevicesUnder(node.path(""));
    let attached = std::process::Command::new("losetup")
        .args(["--find", "--show"])
        .arg(&image)
        .output()
        .unwrap();
    let device_path = String::from_utf8(attached.stdout).unwrap();
    let device_path = device_path.trim();

    with_policy(
        &node,
        "[block]\ndevices = [\"/dev/nvme*\"]\nfs_types = [\"ext4\"]",
    );
    let message = attack(&node, &driver, "mkfs", &[("device", device_path)]).failure();
    assert!(message.contains("denied"), "{message}");
    assert!(last_denial(&node, "mkfs").contains("block.devices"));

    with_policy(
        &node,
        "[block]\ndevices = [\"/dev/loop*\"]\nfs_types = [\"ext4\"]",
    );
    let message = attack(&node, &driver, "mkfs", &[("device", device_path)]).failure();
    assert!(message.contains("ext4"), "{message}");
    let uuid = std::process::Command::new("blkid")
        .args(["-p", "-o", "value", "-s", "UUID", device_path])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&uuid.stdout).trim(),
        "5f1b4d36-0c7e-4a52-9f3c-3c6c2f0a4b11",
        "the file system was replaced"
    );
}

#[test]
fn the_state_directory_is_writable_and_cannot_be_left() {
    let (node, driver) = hostile_node();
    let state = node.path("state");
    std::fs::create_dir_all(&state).unwrap();
    std::os::unix::fs::symlink("/etc", state.join("escape")).unwrap();
    with_policy(&node, &format!("[state]\ndir = \"{}\"", state.display()));
    for path in [
        "/state/../etc/shadow",
        "/state/escape/shadow",
        "/etc/shadow",
    ] {
        let message = attack(&node, &driver, "state", &[("path", path)]).failure();
        assert!(message.starts_with("cannot read"), "{path}: {message}");
    }
    assert_eq!(
        std::fs::read_to_string(state.join("marker")).unwrap(),
        "written by the driver"
    );
}

/// Detaches the loop devices backed by files under a directory when dropped.
struct LoopDevicesUnder(std::path::PathBuf);

impl Drop for LoopDevicesUnder {
    fn drop(&mut self) {
        detach_loop_devices_under(&self.0);
    }
}
