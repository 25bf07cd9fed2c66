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
    let dir = node.pod_dir("victim");
    let mut options = vec![("attack", attack)];
    options.extend_from_slice(extra);
    node.run(
        driver,
        &[
            "mount",
            dir.to_str().unwrap(),
            &mount_json("vol", false, None, &options),
        ],
    )
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
            .contains("denied: mount source \"/\"")
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
    assert!(message.contains("crashed"), "{message}");
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
    node.set_policy(
        "test~hostile",
        &format!(
            "{}\n[limits]\ndeadline_seconds = 1\n",
            shipped_policy("tmpfs")
        ),
    );
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
