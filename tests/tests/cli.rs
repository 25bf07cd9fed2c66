//! The operator's CLI, through the real binary: help, version, completions, usage errors,
//! the rule that tells a person from kubelet (both ways), the development loop, log and audit
//! queries, inspect and policy check, and the install/uninstall refusals.

use flex_tests::*;
use serde_json::{Value, json};
use std::path::Path;

fn flex(node: &Node, args: &[&str]) -> Output {
    node.run(&flex_binary(), args)
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

const SUBCOMMANDS: [&str; 11] = [
    "doctor",
    "install",
    "uninstall",
    "list",
    "inspect",
    "policy",
    "logs",
    "audit",
    "run",
    "completions",
    "help",
];

#[test]
fn help_and_version_are_text_on_stdout() {
    let node = Node::new();
    for args in [&["--help"][..], &["-h"], &["help"]] {
        let out = flex(&node, args);
        assert_eq!((out.code, out.stderr.as_str()), (0, ""), "{args:?}");
        assert!(
            out.stdout
                .starts_with("Runs sandboxed WebAssembly FlexVolume drivers"),
            "{}",
            out.stdout
        );
        for sub in SUBCOMMANDS {
            assert!(
                out.stdout.contains(&format!("  {sub} ")),
                "{args:?} lacks {sub}"
            );
        }
        assert!(out.stdout.contains("Examples:"), "{}", out.stdout);
    }
    for sub in [
        "install",
        "uninstall",
        "list",
        "inspect",
        "logs",
        "audit",
        "run",
        "doctor",
        "completions",
    ] {
        for args in [vec![sub, "--help"], vec![sub, "-h"], vec!["help", sub]] {
            let out = flex(&node, &args);
            assert_eq!((out.code, out.stderr.as_str()), (0, ""), "{args:?}");
            assert!(
                out.stdout.contains(&format!("Usage: flex {sub}")),
                "{args:?}: {}",
                out.stdout
            );
            assert!(out.stdout.contains("Example"), "{args:?}: {}", out.stdout);
        }
    }
    let out = flex(&node, &["policy", "check", "--help"]);
    assert!(out.stdout.contains("Usage: flex policy check") && out.stdout.contains("Examples"));

    for flag in ["--version", "-V"] {
        let out = flex(&node, &[flag]);
        assert_eq!((out.code, out.stderr.as_str()), (0, ""), "{flag}");
        assert!(out.stdout.starts_with("flex 0.1.0"), "{}", out.stdout);
    }
    let out = flex(&node, &["--version"]);
    for part in [
        "wasmtime 48.0.8",
        "WIT package flex:volume@0.1.0",
        "engine key: flex 0.1.0; wasmtime 48.0.8; epoch_interruption",
    ] {
        assert!(out.stdout.contains(part), "{}", out.stdout);
    }
    // A person's command is not a driver call: nothing is appended to the node's log.
    assert_eq!(node.log(), "");
}

#[test]
fn completions_and_man_page_come_from_the_same_definitions() {
    let node = Node::new();
    for (shell, marker) in [
        ("bash", "_flex()"),
        ("zsh", "#compdef flex"),
        ("fish", "complete -c flex"),
    ] {
        let out = flex(&node, &["completions", shell]);
        assert_eq!((out.code, out.stderr.as_str()), (0, ""), "{shell}");
        assert!(
            out.stdout.contains(marker),
            "{shell}: {}",
            &out.stdout[..200.min(out.stdout.len())]
        );
        for sub in ["install", "uninstall", "inspect", "logs", "audit"] {
            assert!(out.stdout.contains(sub), "{shell} lacks {sub}");
        }
        assert!(out.stdout.contains("plugin-dir"), "{shell} lacks flags");
    }
    let out = flex(&node, &["completions", "man"]);
    assert_eq!(out.code, 0);
    let dir = node.path("man");
    let pages = flex(&node, &["completions", "man", "--dir", s(&dir)]);
    assert_eq!(pages.code, 0, "{pages:?}");
    for page in [
        "flex.1",
        "flex-install.1",
        "flex-logs.1",
        "flex-policy-check.1",
    ] {
        let text =
            std::fs::read_to_string(dir.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.contains(".TH flex"), "{page}");
    }
    assert!(
        out.stdout.contains(".TH flex 1") && out.stdout.contains("install"),
        "{}",
        out.stdout
    );
}

#[test]
fn usage_errors_go_to_stderr_with_exit_2_and_a_suggestion() {
    let node = Node::new();
    let plugins = node.path("plugins");
    for (args, expected) in [
        (
            vec!["install", "--polcy", "p.toml", "acme~x", "x.wasm"],
            "'--policy'",
        ),
        (vec!["install", "acme~x"], "--plugin-dir <DIR>"),
        (
            vec![
                "uninstall",
                "--plugin-dir",
                s(&plugins),
                "acme~x",
                "--forse",
            ],
            "'--force'",
        ),
        (vec!["list", "--plugin-dr", "x"], "'--plugin-dir'"),
        (vec!["inspect"], "<COMPONENT>"),
        (vec!["inspect", "x.wasm", "--polciy", "p"], "'--policy'"),
        (vec!["policy", "chek", "p.toml"], "'check'"),
        (vec!["logs", "--drivr", "acme~x"], "'--driver'"),
        (
            vec!["logs", "--since", "yesterday"],
            "neither an RFC 3339 time",
        ),
        (vec!["audit", "--decision", "dney"], "'deny'"),
        (vec!["audit", "--operaton", "mount"], "'--operation'"),
        (vec!["run", "--component", "x.wasm"], "<VERB>"),
        (vec!["run", "--componnt", "x.wasm", "init"], "'--component'"),
        (vec!["completions", "bsh"], "'bash'"),
    ] {
        let out = flex(&node, &args);
        assert_eq!(out.code, 2, "{args:?}: {out:?}");
        assert_eq!(out.stdout, "", "{args:?}");
        assert!(
            out.stderr.starts_with("error: "),
            "{args:?}: {}",
            out.stderr
        );
        assert!(out.stderr.contains(expected), "{args:?}: {}", out.stderr);
    }
    // A missing subcommand: its help, on stderr, exit 2.
    let out = flex(&node, &["policy"]);
    assert_eq!((out.code, out.stdout.as_str()), (2, ""), "{out:?}");
    assert!(out.stderr.contains("Usage: flex policy <COMMAND>") && out.stderr.contains("check"));
    // `--flag=value` forms are the same flags.
    let out = flex(
        &node,
        &["list", &format!("--plugin-dir={}", plugins.display())],
    );
    assert_eq!(
        (out.code, out.stdout.as_str(), out.stderr.as_str()),
        (0, "", ""),
        "{out:?}"
    );
    assert_eq!(node.log(), "", "usage errors are not driver calls");
}

/// One JSON reply on stdout, nothing on stderr: what kubelet must always get.
fn assert_driver_reply(out: &Output, what: &str) -> Value {
    assert_eq!(out.stderr, "", "{what}: stderr");
    assert_eq!(out.stdout.lines().count(), 1, "{what}: {:?}", out.stdout);
    let reply: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {:?}", out.stdout));
    assert!(reply["status"].is_string(), "{what}: {reply}");
    reply
}

#[test]
fn kubelet_argv_always_gets_one_json_reply_and_operator_names_get_the_cli() {
    let node = Node::new();
    let driver = node.install("acme~tmpfs", &guest("flex_tmpfs"));
    node.set_policy("acme~tmpfs", &shipped_policy("tmpfs"));
    let dir = node.pod_dir("p1");
    let opts = mount_json("pv1", false, None, &[]);
    let verbs: Vec<Vec<&str>> = vec![
        vec!["init"],
        vec!["getvolumename", "{}"],
        vec!["attach", "{}", "node1"],
        vec!["detach", "pv", "node1"],
        vec!["waitforattach", "/dev/x", "{}"],
        vec!["isattached", "{}", "node1"],
        vec!["mountdevice", "/m", "/dev/x", "{}"],
        vec!["unmountdevice", "/nonexistent"],
        vec!["mount", s(&dir), &opts],
        vec!["unmount", s(&dir)],
        vec!["expandvolume", "{}", "/m", "10", "5"],
        vec!["expandfs", "{}", "/dev/x", "/m", "10", "5"],
        vec!["provision", "{}"],
        vec!["delete", "{}"],
        // unknown and future verbs, odd arguments, things a person might type
        vec!["resize"],
        vec!["futureverb", "{}", "x"],
        vec![""],
        vec!["", ""],
        vec!["init", "extra", "--help"],
        vec!["mount", "--help"],
        vec!["--", "init"],
        vec!["Install"],
        vec!["instal"],
        vec!["-help"],
        vec!["--HELP"],
        vec!["help2"],
        vec![],
    ];
    for args in &verbs {
        let out = node.run(&driver, args);
        let reply = assert_driver_reply(&out, &format!("{args:?}"));
        assert!(
            ["Success", "Failure", "Not supported"].contains(&reply["status"].as_str().unwrap()),
            "{args:?}: {reply}"
        );
    }
    // The mount really happened through the driver path, and unmount undid it.
    assert!(mounts_at(&dir).is_empty());
    // The same rule however the binary is called: `flex <verb>` is a driver call too.
    for args in [&["init"][..], &["instal"], &["futureverb"]] {
        assert_driver_reply(&flex(&node, args), &format!("flex {args:?}"));
    }
    let hint = node.run(&driver, &["instal"]);
    assert_eq!(hint.reply()["status"], "Not supported");
    assert!(
        hint.message().contains("did you mean `flex install`"),
        "{}",
        hint.message()
    );
    // ...and the operator names select the CLI, also through an installed driver's path.
    for args in [&["--help"][..], &["help"], &["-V"], &["list", "--help"]] {
        let out = node.run(&driver, args);
        assert_eq!((out.code, out.stderr.as_str()), (0, ""), "{args:?}");
        assert!(
            serde_json::from_str::<Value>(&out.stdout).is_err(),
            "{args:?}: {}",
            out.stdout
        );
    }
}

/// `flex run`'s reply: stdout alone is what kubelet would read; stderr is for the person.
fn stdout_reply(out: &Output) -> Value {
    assert_eq!(out.stdout.lines().count(), 1, "{out:?}");
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"))
}

#[test]
fn the_development_loop_names_its_policy_and_shows_log_and_audit() {
    require_root();
    let node = Node::new();
    let policy = node.path("dev.toml");
    std::fs::write(&policy, shipped_policy("tmpfs")).unwrap();
    let tmpfs = guest("flex_tmpfs");
    let run = |extra: &[&str]| {
        let mut args = vec!["run", "--component", s(&tmpfs)];
        args.extend_from_slice(extra);
        flex(&node, &args)
    };
    // No silent `<name>.toml`: a policy must be chosen.
    let out = run(&["init"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("--policy FILE, --installed-policy"),
        "{}",
        out.stderr
    );
    assert_eq!(out.stdout, "");

    let out = run(&["--policy", s(&policy), "--log-stderr", "init"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(stdout_reply(&out)["capabilities"]["attach"], false);
    assert!(
        out.stderr.contains(&format!("policy {}", policy.display())),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("\nlog   ") && out.stderr.contains("reply {"),
        "{}",
        out.stderr
    );

    // A dry-run mount: the audit line of this call on stderr, and nothing mounted.
    let dir = node.pod_dir("dev");
    let opts = mount_json("pv1", false, None, &[("size", "1Mi")]);
    let out = run(&[
        "--policy",
        s(&policy),
        "--log-stderr",
        "--dry-run",
        "mount",
        s(&dir),
        &opts,
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains(", dry run"), "{}", out.stderr);
    let audit: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("audit "))
        .collect();
    assert!(
        audit.iter().any(|l| l.contains(" WOULD-DO mount ")),
        "{}",
        out.stderr
    );
    assert!(mounts_at(&dir).is_empty(), "a dry run mounts nothing");
    // Denied (nothing granted): the denial is on stderr.
    let out = run(&["--no-policy", "--log-stderr", "mount", s(&dir), &opts]);
    assert_eq!(stdout_reply(&out)["status"], "Failure");
    assert!(out.stderr.contains("policy none"), "{}", out.stderr);
    assert!(
        out.stderr
            .lines()
            .any(|l| l.starts_with("audit ") && l.contains(" DENY mount ")),
        "{}",
        out.stderr
    );
    assert!(mounts_at(&dir).is_empty());

    // A Failure carries the tail of the driver's stderr.
    let hostile = guest("flex_hostile");
    let opts = mount_json("pv1", false, None, &[("attack", "print")]);
    let out = flex(
        &node,
        &[
            "run",
            "--component",
            s(&hostile),
            "--no-policy",
            "mount",
            s(&dir),
            &opts,
        ],
    );
    assert_eq!(out.code, 1);
    let reply = stdout_reply(&out);
    assert_eq!(reply["status"], "Failure");
    let message = reply["message"].as_str().unwrap();
    assert!(
        message.contains("printed to stdout and stderr"),
        "{message}"
    );
    assert!(
        message.contains("driver stderr: noise on stderr"),
        "{message}"
    );
    assert_eq!(out.stdout.lines().count(), 1, "{}", out.stdout);

    // The older development flag stays a driver call; the log names the policy it got.
    let out = flex(&node, &["--component", s(&tmpfs), "init"]);
    assert_driver_reply(&out, "--component");
    let expected = format!(
        "development call: policy {} (absent: nothing granted)",
        node.path("policy/flex_tmpfs.toml").display()
    );
    assert!(node.log().contains(&expected), "{}", node.log());
}

fn log_line(t: u64, driver: &str, verb: &str, level: &str, message: &str, pid: u64) -> String {
    json!({"time_ms": t, "pid": pid, "level": level, "source": "host", "driver": driver,
        "verb": verb, "message": message})
    .to_string()
        + "\n"
}

fn audit_line(t: u64, driver: &str, verb: &str, operation: &str, decision: &str) -> String {
    json!({"time_ms": t, "pid": 42, "driver": driver, "verb": verb, "operation": operation,
        "args": {"target": "/x"}, "decision": decision, "rule": "r", "result": "ok",
        "duration_us": 5})
    .to_string()
        + "\n"
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[test]
fn logs_and_audit_are_queried_with_filters_across_rotated_files() {
    let node = Node::new();
    let log = node.path("log");
    let now = now_ms();
    let hour_ago = now - 3_600_000;
    // 2020-01-01T00:00:00Z
    let fixed = 1_577_836_800_000;
    std::fs::write(
        log.join("flex.log.2"),
        log_line(fixed, "acme~a", "init", "info", "oldest", 1),
    )
    .unwrap();
    std::fs::write(
        log.join("flex.log.1"),
        log_line(hour_ago, "acme~a", "mount", "error", "an hour ago", 2),
    )
    .unwrap();
    std::fs::write(
        log.join("flex.log"),
        log_line(now - 60_000, "acme~b", "mount", "info", "a minute ago", 3)
            + "not json, a torn line\n"
            + &log_line(now - 1000, "acme~a", "unmount", "warn", "just now", 4),
    )
    .unwrap();
    let messages = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["logs", "--json"];
        all.extend_from_slice(args);
        let out = flex(&node, &all);
        assert_eq!((out.code, out.stderr.as_str()), (0, ""), "{args:?}");
        out.stdout
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["message"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    assert_eq!(
        messages(&[]),
        ["oldest", "an hour ago", "a minute ago", "just now"]
    );
    assert_eq!(
        messages(&["--driver", "acme~a"]),
        ["oldest", "an hour ago", "just now"]
    );
    assert_eq!(
        messages(&["--verb", "mount"]),
        ["an hour ago", "a minute ago"]
    );
    assert_eq!(messages(&["--level", "error"]), ["an hour ago"]);
    assert_eq!(messages(&["--pid", "3"]), ["a minute ago"]);
    assert_eq!(messages(&["--since", "10m"]), ["a minute ago", "just now"]);
    assert_eq!(messages(&["--since=2h", "--until", "30m"]), ["an hour ago"]);
    assert_eq!(messages(&["--until", "2020-01-01T00:00:00Z"]), ["oldest"]);
    assert_eq!(
        messages(&[
            "--since",
            "2020-01-01T00:00:01Z",
            "--driver=acme~a",
            "--verb=unmount"
        ]),
        ["just now"]
    );
    // Text: readable UTC times, driver, verb[pid], level, message.
    let out = flex(&node, &["logs", "--verb", "init"]);
    assert_eq!(
        out.stdout,
        "2020-01-01T00:00:00.000Z acme~a init[1] info host: oldest\n"
    );

    std::fs::write(
        log.join("audit.jsonl.1"),
        audit_line(fixed, "acme~a", "mount", "mount", "allow"),
    )
    .unwrap();
    std::fs::write(
        log.join("audit.jsonl"),
        audit_line(now - 1000, "acme~a", "mount", "mount", "deny")
            + &audit_line(now - 500, "acme~b", "mountdevice", "mkfs", "would-do"),
    )
    .unwrap();
    let audit = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["audit", "--json"];
        all.extend_from_slice(args);
        let out = flex(&node, &all);
        assert_eq!(out.code, 0, "{args:?}: {out:?}");
        out.stdout
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                format!(
                    "{} {}",
                    v["operation"].as_str().unwrap(),
                    v["decision"].as_str().unwrap()
                )
            })
            .collect()
    };
    assert_eq!(audit(&[]), ["mount allow", "mount deny", "mkfs would-do"]);
    assert_eq!(audit(&["--decision", "deny"]), ["mount deny"]);
    assert_eq!(audit(&["--operation", "mkfs"]), ["mkfs would-do"]);
    assert_eq!(
        audit(&["--driver", "acme~a", "--since", "1h"]),
        ["mount deny"]
    );
    assert_eq!(
        audit(&["--verb", "mount", "--until", "2020-01-01T01:00:00Z"]),
        ["mount allow"]
    );
    let out = flex(&node, &["audit", "--until", "2020-01-01 01:00:00"]);
    assert_eq!(
        out.stdout,
        "2020-01-01T00:00:00.000Z acme~a mount[42] ALLOW mount {\"target\":\"/x\"}; rule: r; ok (5us)\n"
    );
}

#[test]
fn logs_follow_prints_new_lines_across_a_rotation() {
    use std::io::{BufRead, BufReader, Write};
    let node = Node::new();
    let log = node.path("log/flex.log");
    std::fs::write(&log, log_line(1, "acme~a", "init", "info", "before", 1)).unwrap();
    let mut child = node
        .command(&flex_binary(), &["logs", "--follow", "--driver", "acme~a"])
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let _ = tx.send(line.unwrap());
        }
    });
    let next = || {
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .expect("a followed line")
    };
    assert!(next().ends_with("info host: before"));
    std::thread::sleep(std::time::Duration::from_millis(400));
    let append = |line: String| {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&log)
            .unwrap();
        f.write_all(line.as_bytes()).unwrap();
    };
    append(log_line(2, "acme~b", "init", "info", "other driver", 2));
    append(log_line(3, "acme~a", "mount", "info", "appended", 3));
    assert!(next().ends_with("info host: appended"));
    // Rotated as logfile.rs does: renamed to .1, a new file.
    std::fs::rename(&log, node.path("log/flex.log.1")).unwrap();
    append(log_line(
        4,
        "acme~a",
        "unmount",
        "info",
        "after rotation",
        4,
    ));
    assert!(next().ends_with("info host: after rotation"));
    child.kill().unwrap();
    child.wait().unwrap();
}

fn sha256(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .unwrap();
    format!(
        "sha256:{}",
        String::from_utf8_lossy(&out.stdout)
            .split(' ')
            .next()
            .unwrap()
    )
}

#[test]
fn inspect_shows_the_digest_and_separates_denied_from_unlinkable() {
    let node = Node::new();
    let tmpfs = guest("flex_tmpfs");
    let digest = sha256(&tmpfs);
    let out = flex(&node, &["inspect", s(&tmpfs)]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains(&format!("\ndigest = \"{digest}\"\n")),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains("Some("), "{}", out.stdout);
    assert!(out.stdout.contains("needs [mount]"), "{}", out.stdout);

    let empty = node.path("empty.toml");
    std::fs::write(&empty, "").unwrap();
    let shipped = node.path("tmpfs.toml");
    std::fs::write(&shipped, shipped_policy("tmpfs")).unwrap();
    // Granted by the shipped policy; not by an empty one: --strict fails on that.
    let out = flex(
        &node,
        &["inspect", s(&tmpfs), "--policy", s(&shipped), "--strict"],
    );
    assert_eq!(out.code, 0, "{out:?}");
    let out = flex(
        &node,
        &["inspect", s(&tmpfs), "--policy", s(&empty), "--strict"],
    );
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stdout
            .contains("linked but not granted (every use is refused): flex:volume/mounts"),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains("would not link"), "{}", out.stdout);
    let out = flex(&node, &["inspect", s(&tmpfs), "--policy", s(&empty)]);
    assert_eq!(out.code, 0, "without --strict: {out:?}");
    assert_eq!(
        flex(&node, &["inspect", s(&tmpfs), "--strict"]).code,
        1,
        "no policy: nothing granted"
    );

    let out = flex(
        &node,
        &["inspect", s(&tmpfs), "--policy", s(&empty), "--json"],
    );
    let report: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(report["digest"], digest);
    assert_eq!(report["not_granted"], json!(["flex:volume/mounts@0.1.0"]));
    assert_eq!(report["would_not_link"], json!([]));
    assert_eq!(report["exports"], json!(["flex:volume/verbs@0.1.0"]));
    let mounts = report["imports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "flex:volume/mounts@0.1.0")
        .unwrap();
    assert_eq!(
        (mounts["verdict"].as_str(), mounts["needs"].as_str()),
        (Some("denied"), Some("[mount]"))
    );

    // The suggested skeleton pins the digest, has the tables the imports need, grants
    // nothing yet, and is a valid policy the component runs under.
    let suggested = node.path("suggested.toml");
    let out = flex(
        &node,
        &["inspect", s(&tmpfs), "--suggest-policy", s(&suggested)],
    );
    assert_eq!(out.code, 0, "{out:?}");
    let text = std::fs::read_to_string(&suggested).unwrap();
    assert!(text.contains(&format!("digest = \"{digest}\"")), "{text}");
    assert!(
        text.contains("[mount]\n") && text.contains("# The component imports flex:volume/mounts"),
        "{text}"
    );
    assert!(
        !text.contains("[block]") && !text.contains("[http]"),
        "{text}"
    );
    let out = flex(&node, &["policy", "check", s(&suggested)]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("mount: nothing"), "{}", out.stdout);
    // Never overwritten.
    let again = flex(
        &node,
        &["inspect", s(&tmpfs), "--suggest-policy", s(&suggested)],
    );
    assert_eq!(again.code, 1);
    assert!(again.stderr.contains("suggested.toml"), "{}", again.stderr);
}

#[test]
fn policy_check_by_file_or_installed_name_with_warnings_and_json() {
    let node = Node::new();
    node.set_policy("acme~tmpfs", &shipped_policy("tmpfs"));
    let out = flex(&node, &["policy", "check", "acme~tmpfs"]);
    assert_eq!(out.code, 0, "{out:?}");
    let installed = node.path("policy/acme~tmpfs.toml");
    assert!(
        out.stdout
            .starts_with(&format!("policy {} is valid", installed.display())),
        "{}",
        out.stdout
    );
    let out = flex(&node, &["policy", "check", "acme~tmpfs", "--json"]);
    let report: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(report["valid"], true);
    assert_eq!(report["driver"], "acme~tmpfs");
    assert_eq!(report["warnings"], json!([]));
    assert_eq!(report["grants"]["mount"]["fs_types"], json!(["tmpfs"]));

    let out = flex(&node, &["policy", "check", "acme~missing"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("acme~missing.toml does not exist"),
        "{}",
        out.stderr
    );

    // Grants nothing can use.
    let useless = node.path("useless.toml");
    std::fs::write(
        &useless,
        "[mount]\nfs_types = [\"nosuchfs\"]\n[[exec.programs]]\npath = \"/nonexistent/tool\"\nargs = [[]]\n",
    )
    .unwrap();
    let out = flex(&node, &["policy", "check", s(&useless)]);
    assert_eq!(out.code, 0, "{out:?}");
    for warning in [
        "mount.sources is empty: nothing can be mounted",
        "\"nosuchfs\" is not a file system this kernel knows",
        "/nonexistent/tool does not exist",
    ] {
        assert!(
            out.stderr
                .lines()
                .any(|l| l.starts_with("warning: ") && l.contains(warning)),
            "{}",
            out.stderr
        );
    }
    let out = flex(&node, &["policy", "check", s(&useless), "--json"]);
    let report: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(report["warnings"].as_array().unwrap().len(), 3, "{report}");

    let bad = node.path("bad.toml");
    std::fs::write(&bad, "[mount]\nfs_type = []\n").unwrap();
    let out = flex(&node, &["policy", "check", s(&bad), "--json"]);
    assert_eq!(out.code, 1);
    let report: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(report["valid"], false);
    assert!(
        report["error"]
            .as_str()
            .unwrap()
            .contains("unknown field `fs_type`"),
        "{report}"
    );
}

#[test]
fn install_and_uninstall_refuse_what_would_go_wrong() {
    require_root();
    let node = Node::new();
    let plugins = node.path("plugins");
    let tmpfs = guest("flex_tmpfs");
    let policy = node.path("in.toml");
    std::fs::write(&policy, shipped_policy("tmpfs")).unwrap();

    // A misspelt plugin dir is an error, not a new tree.
    let typo = node.path("plugnis");
    let out = flex(
        &node,
        &["install", "--plugin-dir", s(&typo), "acme~tmpfs", s(&tmpfs)],
    );
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr
            .contains(&format!("plugin dir {} does not exist", typo.display())),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("--create"), "{}", out.stderr);
    assert!(!typo.exists());
    let out = flex(
        &node,
        &[
            "install",
            "--plugin-dir",
            s(&typo),
            "--create",
            "acme~tmpfs",
            s(&tmpfs),
        ],
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert!(typo.join("acme~tmpfs/tmpfs.wasm").exists());
    assert_eq!(
        flex(
            &node,
            &["uninstall", "--plugin-dir", s(&typo), "acme~tmpfs"]
        )
        .code,
        0
    );

    // A pin that is not this component's.
    let pinned = node.path("pinned.toml");
    let wrong = format!("sha256:{}", "0".repeat(64));
    std::fs::write(
        &pinned,
        format!("digest = \"{wrong}\"\n{}", shipped_policy("tmpfs")),
    )
    .unwrap();
    let out = flex(
        &node,
        &[
            "install",
            "--plugin-dir",
            s(&plugins),
            "acme~tmpfs",
            s(&tmpfs),
            "--policy",
            s(&pinned),
        ],
    );
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr
            .contains(&format!("its digest is {}", sha256(&tmpfs)))
            && out.stderr.contains(&wrong),
        "{}",
        out.stderr
    );
    assert!(!plugins.join("acme~tmpfs").exists());
    assert!(!node.path("policy/acme~tmpfs.toml").exists());

    // Not installed: an error, not a shrug.
    let out = flex(
        &node,
        &["uninstall", "--plugin-dir", s(&plugins), "acme~tmpfs"],
    );
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains(&format!(
            "acme~tmpfs is not installed in {}",
            plugins.display()
        )),
        "{}",
        out.stderr
    );

    let install = flex(
        &node,
        &[
            "install",
            "--plugin-dir",
            s(&plugins),
            "acme~tmpfs",
            s(&tmpfs),
            "--policy",
            s(&policy),
        ],
    );
    assert_eq!(install.code, 0, "{install:?}");
    // A mounted volume of the driver, where kubelet keeps them.
    let volume = node.volume_dir("acme~tmpfs", "pod-1", "vol");
    let opts = mount_json("pv1", false, None, &[("size", "1Mi")]);
    node.run(
        &plugins.join("acme~tmpfs/tmpfs"),
        &["mount", s(&volume), &opts],
    )
    .success();
    assert_eq!(mounts_at(&volume).len(), 1);
    let out = flex(
        &node,
        &["uninstall", "--plugin-dir", s(&plugins), "acme~tmpfs"],
    );
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("1 mounted volume") && out.stderr.contains(s(&volume)),
        "{}",
        out.stderr
    );
    assert!(
        plugins.join("acme~tmpfs/tmpfs.wasm").exists(),
        "still installed"
    );

    // --purge needs a confirmation; stdin is not a terminal here.
    std::fs::create_dir_all(node.path("state/acme~tmpfs")).unwrap();
    let out = flex(
        &node,
        &[
            "uninstall",
            "--plugin-dir",
            s(&plugins),
            "acme~tmpfs",
            "--force",
            "--purge",
        ],
    );
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("--yes"), "{}", out.stderr);
    assert!(plugins.join("acme~tmpfs").exists() && node.path("policy/acme~tmpfs.toml").exists());

    let out = flex(
        &node,
        &[
            "uninstall",
            "--plugin-dir",
            s(&plugins),
            "acme~tmpfs",
            "--force",
            "--purge",
            "--yes",
        ],
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains("1 volume(s) were still mounted"),
        "{}",
        out.stdout
    );
    assert!(!plugins.join("acme~tmpfs").exists());
    assert!(!node.path("policy/acme~tmpfs.toml").exists());
    assert!(!node.path("state/acme~tmpfs").exists());
    assert!(out.stdout.contains(&format!(
        "removed {}",
        node.path("policy/acme~tmpfs.toml").display()
    )));
    // --force removes the driver, never the user's mounts.
    assert_eq!(mounts_at(&volume).len(), 1);
    unmount_all_under(&node.path("kubelet"));
}

#[test]
fn doctor_on_a_healthy_and_a_broken_node() {
    use std::os::unix::fs::PermissionsExt;
    require_root();
    let node = Node::new();
    let plugins = node.path("plugins");
    let policy = node.path("in.toml");
    std::fs::write(&policy, shipped_policy("tmpfs")).unwrap();
    let install = flex(
        &node,
        &[
            "install",
            "--plugin-dir",
            s(&plugins),
            "acme~tmpfs",
            s(&guest("flex_tmpfs")),
            "--policy",
            s(&policy),
        ],
    );
    assert_eq!(install.code, 0, "{install:?}");
    let doctor = || flex(&node, &["doctor", "--plugin-dir", s(&plugins)]);
    let out = doctor();
    assert_eq!(out.code, 0, "{}", out.stdout);
    for line in [
        format!("ok       plugin dir {} (--plugin-dir)", plugins.display()),
        format!(
            "ok       acme~tmpfs: policy {} is valid",
            node.path("policy/acme~tmpfs.toml").display()
        ),
        "ok       acme~tmpfs: artifact valid for this CPU and build".into(),
        format!(
            "ok       log dir {} owned by root, not writable by others",
            node.path("log").display()
        ),
    ] {
        assert!(
            out.stdout.lines().any(|l| l == line),
            "no {line:?} in\n{}",
            out.stdout
        );
    }
    assert!(!out.stdout.contains("problem"), "{}", out.stdout);

    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("ok       compiler ")),
        "{}",
        out.stdout
    );

    // Broken: an invalid policy, a log dir others can write, a missing executable, a compiler
    // others could replace (a driver would refuse to run it).
    node.set_policy("acme~tmpfs", "[mount]\nfs_type = []\n");
    std::fs::set_permissions(node.path("log"), std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::set_permissions(&plugins, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::remove_file(plugins.join("acme~tmpfs/tmpfs")).unwrap();
    let out = doctor();
    assert_eq!(out.code, 1, "{}", out.stdout);
    for problem in [
        "problem  acme~tmpfs: invalid policy",
        &format!(
            "problem  log dir {} is writable by others (mode 777): chmod go-w",
            node.path("log").display()
        ),
        &format!(
            "problem  acme~tmpfs: {} is missing",
            plugins.join("acme~tmpfs/tmpfs").display()
        ),
        &format!(
            "problem  compiler {} refused: {} is writable by group or others (mode 777)",
            plugins.join(".flex-compile").display(),
            plugins.display()
        ),
    ] {
        assert!(
            out.stdout.lines().any(|l| l.starts_with(problem)),
            "no {problem:?} in\n{}",
            out.stdout
        );
    }
    let out = flex(&node, &["doctor", "--plugin-dir", s(&node.path("nowhere"))]);
    assert_eq!(out.code, 1);
    assert!(out.stdout.contains("does not exist"), "{}", out.stdout);
}

#[test]
fn inspect_tells_an_import_that_would_not_link_from_one_not_granted() {
    let node = Node::new();
    let component = node.path("odd.wasm");
    let bytes = wat::parse_str(
        r#"(component
            (import "acme:storage/magic" (instance))
            (import "flex:volume/block@0.1.0" (instance))
            (import "wasi:clocks/monotonic-clock@0.2.6" (instance)))"#,
    )
    .unwrap();
    std::fs::write(&component, bytes).unwrap();
    let empty = node.path("empty.toml");
    std::fs::write(&empty, "").unwrap();
    let out = flex(&node, &["inspect", s(&component), "--policy", s(&empty)]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains(
            "would not link (flex provides no such interface; every call fails): acme:storage/magic\n"
        ),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("linked but not granted (every use is refused): flex:volume/block@0.1.0\n"),
        "{}",
        out.stdout
    );
    let out = flex(&node, &["inspect", s(&component), "--json", "--strict"]);
    assert_eq!(out.code, 1, "{out:?}");
    let report: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(report["would_not_link"], json!(["acme:storage/magic"]));
    assert_eq!(report["not_granted"], json!(["flex:volume/block@0.1.0"]));
    // The skeleton has the table the block import needs, and only that.
    let out = flex(&node, &["inspect", s(&component), "--suggest-policy", "-"]);
    assert!(
        out.stdout.contains("\n[block]\ndevices = []\n"),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains("[mount]"), "{}", out.stdout);
}

/// `flex provisioner` is the controller beside `flex` (`make build` puts it there), exec'd with
/// its own options: its help, and its errors on stderr with a non-zero exit.
#[test]
fn provisioner_runs_the_controller_beside_flex() {
    let node = Node::new();
    let help = flex(&node, &["provisioner", "--help"]);
    assert_eq!(help.code, 0, "{}{}", help.stdout, help.stderr);
    for option in [
        "--driver",
        "--plugin-dir",
        "--kubeconfig",
        "--lease-name",
        "--node-name",
        "--listen",
    ] {
        assert!(help.stdout.contains(option), "{option}: {}", help.stdout);
    }
    let bad = flex(
        &node,
        &[
            "provisioner",
            "--driver",
            "no-tilde",
            "--kubeconfig",
            "/nonexistent",
        ],
    );
    assert_eq!(bad.code, 1, "{}{}", bad.stdout, bad.stderr);
    assert!(
        bad.stderr.contains("expected vendor~name"),
        "{}",
        bad.stderr
    );
    let missing = flex(&node, &["provisioner"]);
    assert_eq!(missing.code, 2, "{}", missing.stderr);
    assert!(missing.stderr.contains("--driver"), "{}", missing.stderr);
    // Listed among the operator commands, so kubelet never runs it as a verb.
    let top = flex(&node, &["--help"]);
    assert!(top.stdout.contains("  provisioner "), "{}", top.stdout);
}
