//! Bad input of every kind gets a clear JSON reply, exit code 1 and an empty stderr.

use flex_tests::*;

fn node_with_tmpfs() -> (Node, std::path::PathBuf) {
    let node = Node::new();
    let driver = node.install("flex~tmpfs", &guest("flex_tmpfs"));
    node.set_policy("flex~tmpfs", &shipped_policy("tmpfs"));
    (node, driver)
}

#[test]
fn no_arguments() {
    let (node, driver) = node_with_tmpfs();
    assert!(node.run(&driver, &[]).failure().contains("usage"));
}

#[test]
fn missing_arguments() {
    let (node, driver) = node_with_tmpfs();
    for (args, expected) in [
        (vec!["mount"], "mount dir"),
        (vec!["mount", "/tmp/x"], "options JSON"),
        (vec!["attach"], "options JSON"),
        (vec!["detach", "pv"], "node name"),
        (vec!["mountdevice", "/m"], "device path"),
        (vec!["expandfs", "{}", "/dev/x", "/m", "10"], "old size"),
    ] {
        let message = node.run(&driver, &args).failure();
        assert!(message.contains(expected), "{args:?}: {message}");
    }
}

#[test]
fn invalid_json_and_non_string_values() {
    let (node, driver) = node_with_tmpfs();
    for (json, expected) in [
        ("{not json", "invalid options JSON"),
        ("", "invalid options JSON"),
        ("[\"a\"]", "expected an object"),
        (r#"{"size":64}"#, "\"size\" must be a string"),
        (r#"{"kubernetes.io/readwrite":true}"#, "must be a string"),
    ] {
        let message = node.run(&driver, &["mount", "/tmp/x", json]).failure();
        assert!(message.contains(expected), "{json}: {message}");
    }
}

#[test]
fn unknown_and_historical_verbs_are_not_supported() {
    let (node, driver) = node_with_tmpfs();
    for verb in ["frobnicate", "waitfordetach", "getdevicemountpath"] {
        let out = node.run(&driver, &[verb, "/dev/x"]);
        assert_eq!(
            (out.status().as_str(), out.code),
            ("Not supported", 1),
            "{verb}"
        );
    }
}

#[test]
fn verbs_the_driver_does_not_implement_are_not_supported() {
    let (node, driver) = node_with_tmpfs();
    let base = r#"{"kubernetes.io/fsType":"","kubernetes.io/pvOrVolumeName":"v","kubernetes.io/readwrite":"rw"}"#;
    for args in [
        vec!["getvolumename", base],
        vec!["attach", base, "node-1"],
        vec!["detach", "v", "node-1"],
        vec!["waitforattach", "", base],
        vec!["isattached", base, "node-1"],
        vec!["mountdevice", "/m", "", base],
        vec!["unmountdevice", "/m"],
        vec!["expandvolume", base, "/m", "2048", "1024"],
        vec!["expandfs", base, "/dev/x", "/m", "2048", "1024"],
    ] {
        let out = node.run(&driver, &args);
        assert_eq!(
            (out.status().as_str(), out.code),
            ("Not supported", 1),
            "{args:?}"
        );
    }
}

#[test]
fn missing_component() {
    let node = Node::new();
    let driver = node.install("flex~tmpfs", &guest("flex_tmpfs"));
    std::fs::remove_file(driver.with_file_name("tmpfs.wasm")).unwrap();
    let message = node.run(&driver, &["init"]).failure();
    assert!(
        message.contains("tmpfs.wasm") && message.contains("No such file"),
        "{message}"
    );
}

#[test]
fn corrupt_component() {
    let node = Node::new();
    let driver = node.install("flex~tmpfs", &guest("flex_tmpfs"));
    let component = driver.with_file_name("tmpfs.wasm");
    let mut bytes = std::fs::read(&component).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&component, bytes).unwrap();
    assert!(
        node.run(&driver, &["init"])
            .failure()
            .contains("not a valid component")
    );
    std::fs::write(&component, b"#!/bin/sh\necho hello\n").unwrap();
    assert!(
        node.run(&driver, &["init"])
            .failure()
            .contains("not a valid component")
    );
}

#[test]
fn corrupt_cached_artifact_is_rebuilt() {
    let (node, driver) = node_with_tmpfs();
    node.run(&driver, &["init"]).success();
    let artifact = node.artifacts().pop().expect("cached artifact");
    let pristine = std::fs::read(&artifact).unwrap();
    // No per-call checksum (the cache is root-only and written whole, see artifact.rs): what
    // is caught per call is a file that is not a whole flex artifact (no trailer, a trailer
    // that does not match the file) or that wasmtime's own header check rejects.
    type Damage = fn(&mut Vec<u8>);
    let damage: [(&str, Damage); 5] = [
        ("truncated", |b| b.truncate(b.len() / 3)),
        ("emptied", |b| b.clear()),
        ("garbage", |b| b.iter_mut().for_each(|x| *x = 0x5a)),
        ("body cut, trailer kept", |b| {
            let trailer = b.split_off(b.len() - 120);
            b.truncate(b.len() / 2);
            b.extend(trailer);
        }),
        ("wasmtime header zeroed", |b| b[..64].fill(0)),
    ];
    for (what, damage) in damage {
        let mut bytes = pristine.clone();
        damage(&mut bytes);
        std::fs::write(&artifact, &bytes).unwrap();
        node.run(&driver, &["init"]).success();
        assert_eq!(
            std::fs::read(&artifact).unwrap(),
            pristine,
            "{what}: artifact not rebuilt"
        );
        assert!(node.log().contains("discarding artifact"), "{what}");
    }
}

#[test]
fn invalid_policy_fails_every_verb_naming_the_file() {
    let (node, driver) = node_with_tmpfs();
    node.set_policy("flex~tmpfs", "[mount]\nfs_type = [\"tmpfs\"]\n");
    for args in [vec!["init"], vec!["unmount", "/tmp/x"]] {
        let message = node.run(&driver, &args).failure();
        assert!(
            message.contains("flex~tmpfs.toml") && message.contains("fs_type"),
            "{message}"
        );
    }
}

#[test]
fn policy_check_validates_and_shows_grants() {
    let node = Node::new();
    let good = node.path("policy/good.toml");
    std::fs::write(&good, shipped_policy("tmpfs")).unwrap();
    let out = node.run(&flex_binary(), &["policy", "check", good.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains("is valid") && out.stdout.contains("\"size=[1-9]*\""),
        "{}",
        out.stdout
    );
    let bad = node.path("policy/bad.toml");
    std::fs::write(&bad, "[mount]\nsources = [\"/dev/[\"]\n").unwrap();
    let out = node.run(&flex_binary(), &["policy", "check", bad.to_str().unwrap()]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("bad.toml") && out.stderr.contains("invalid pattern"),
        "{}",
        out.stderr
    );
}

/// A Failure reply is logged at level `error`, a Success at `info`: an operator filtering the
/// log by level sees every failed call.
#[test]
fn failure_replies_are_logged_as_errors() {
    let (node, driver) = node_with_tmpfs();
    node.run(&driver, &["init"]).success();
    node.run(&driver, &["mount"]).failure();
    let replies: Vec<(String, String)> = node
        .log()
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter(|line| line["message"].as_str().unwrap().starts_with("reply {"))
        .map(|line| {
            let reply: serde_json::Value =
                serde_json::from_str(&line["message"].as_str().unwrap()["reply ".len()..]).unwrap();
            let status = reply["status"].as_str().unwrap().to_owned();
            (status, line["level"].as_str().unwrap().to_owned())
        })
        .collect();
    assert_eq!(
        replies,
        [
            ("Success".into(), "info".into()),
            ("Failure".into(), "error".into())
        ],
        "{}",
        node.log()
    );
}
