//! What a hostile driver can do to the node's files: flood the log (through the `log` import
//! and through stdout/stderr), blow up an audit line, race the rotation from many `flex`
//! processes at once, and smuggle a secret into the audit inside a comma-joined option. Every
//! test checks the files themselves: sizes, line counts, JSON validity, modes, contents.

use flex_tests::*;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

const DRIVER: &str = "test~hostile";

fn hostile_node(extra_policy: &str) -> (Node, PathBuf) {
    require_root();
    let node = Node::new();
    let driver = node.install(DRIVER, &guest("flex_hostile"));
    set_policy(&node, extra_policy);
    (node, driver)
}

fn set_policy(node: &Node, extra: &str) {
    node.set_policy(DRIVER, &format!("{}\n{extra}\n", shipped_policy("tmpfs")));
}

fn attack_args(node: &Node, options: &[(&str, &str)]) -> Vec<String> {
    let dir = node.pod_dir("victim");
    vec![
        "mount".into(),
        dir.to_str().unwrap().into(),
        mount_json("vol", false, None, options),
    ]
}

fn attack(node: &Node, driver: &Path, options: &[(&str, &str)]) -> Output {
    let args = attack_args(node, options);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    node.run(driver, &args)
}

fn flood(node: &Node, driver: &Path, via: &str, tag: &str, lines: usize, bytes: usize) -> Output {
    let (lines, bytes) = (lines.to_string(), bytes.to_string());
    attack(
        node,
        driver,
        &[
            ("attack", "log-flood"),
            ("via", via),
            ("tag", tag),
            ("lines", &lines),
            ("line_bytes", &bytes),
        ],
    )
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// Every line of `flex.log`, each of which must be JSON.
fn log_lines(node: &Node) -> Vec<Value> {
    node.log()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("torn line ({e}): {l:?}")))
        .collect()
}

/// Bytes of the lines from the driver (its `log` import and its output).
fn driver_bytes(node: &Node) -> usize {
    node.log()
        .lines()
        .filter(|l| l.contains("\"source\":\"driver"))
        .map(|l| l.len() + 1)
        .sum()
}

fn cut_notes(lines: &[Value]) -> usize {
    lines
        .iter()
        .filter(|l| {
            l["message"].as_str().is_some_and(|m| {
                m.starts_with("driver log cut") && m.contains("limits.log_bytes_per_call")
            })
        })
        .count()
}

#[test]
fn a_log_flood_through_the_log_import_is_cut_at_the_call_budget() {
    let (node, driver) = hostile_node("[limits]\nlog_bytes_per_call = 65536\nlog_line_bytes = 512");
    let started = std::time::Instant::now();
    flood(&node, &driver, "log", "a", 20_000, 1000).success();
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    let size = std::fs::metadata(node.path("log/flex.log")).unwrap().len();
    assert!(size < 65536 + 8192, "flex.log is {size} bytes");
    assert!(driver_bytes(&node) <= 65536, "{}", driver_bytes(&node));
    let lines = log_lines(&node);
    assert_eq!(cut_notes(&lines), 1, "one line says the log was cut");
    let flood_lines: Vec<&Value> = lines.iter().filter(|l| l["source"] == "driver").collect();
    assert!(flood_lines.len() > 50, "the first lines are kept");
    for line in &flood_lines {
        assert_eq!(line["message"].as_str().unwrap().len(), 512, "{line}");
        assert_eq!(line["truncated"], true);
    }
    assert!(
        !node.log().contains("flood a 00019999"),
        "later lines are cut"
    );
    // The budget is per call: the next call logs again.
    flood(&node, &driver, "log", "b", 3, 50).success();
    assert!(node.log().contains("flood b 00000002"));
}

#[test]
fn a_flood_through_stdout_and_stderr_shares_the_budget() {
    let (node, driver) = hostile_node("[limits]\nlog_bytes_per_call = 16384");
    // 60 kB of output, under what the host captures: the log keeps the first 16 KiB.
    flood(&node, &driver, "stdout", "s", 600, 100).success();
    assert!(driver_bytes(&node) <= 16384, "{}", driver_bytes(&node));
    let log = node.log();
    assert!(
        log.contains("flood s 00000000"),
        "output is kept in the log"
    );
    assert!(!log.contains("flood s 00000599"), "the rest is cut");
    assert_eq!(cut_notes(&log_lines(&node)), 1);
    let stdout_lines = log_lines(&node)
        .iter()
        .filter(|l| l["source"] == "driver stdout")
        .count();
    assert!(
        stdout_lines > 20,
        "one log line per output line: {stdout_lines}"
    );

    // Megabytes on stderr: the call may crash on the full capture, the node keeps its disk.
    let before = std::fs::metadata(node.path("log/flex.log")).unwrap().len();
    let out = flood(&node, &driver, "stderr", "e", 50_000, 100);
    out.reply();
    let grown = std::fs::metadata(node.path("log/flex.log")).unwrap().len() - before;
    assert!(grown < 16384 + 8192, "a flood call added {grown} bytes");
    assert!(!node.log().contains("flood e 00049999"));
}

#[test]
fn an_audit_line_with_a_huge_argument_stays_under_the_cap_and_valid() {
    let (node, driver) = hostile_node(
        "[http]\ndestinations = [\"http://127.0.0.1:1\"]\n[limits]\naudit_line_bytes = 2048",
    );
    let url = format!("http://127.0.0.2:1/{}", "a".repeat(50_000));
    let message = attack(&node, &driver, &[("attack", "http"), ("url", &url)]).failure();
    assert!(
        message.contains("not in the policy"),
        "{}",
        &message[..200.min(message.len())]
    );
    // A huge mount option, audited by the mount capability.
    let option = format!("size=1m,{}", "nr_inodes=1,".repeat(5000));
    attack(
        &node,
        &driver,
        &[("attack", "mount-option"), ("option", &option)],
    )
    .failure();

    let text = std::fs::read_to_string(node.path("log/audit.jsonl")).unwrap();
    let mut operations = Vec::new();
    for line in text.lines() {
        assert!(line.len() < 2048, "audit line of {} bytes", line.len());
        let value: Value = serde_json::from_str(line).expect("an audit line is JSON");
        operations.push(value["operation"].as_str().unwrap().to_string());
    }
    assert!(operations.contains(&"http".to_string()), "{operations:?}");
    let http = node
        .audit()
        .into_iter()
        .find(|l| l["operation"] == "http")
        .unwrap();
    assert_eq!(
        (http["decision"].as_str(), &http["truncated"]),
        (Some("deny"), &json!(true))
    );
    let kept = http["args"]["url"].as_str().unwrap();
    assert!(
        kept.starts_with("http://127.0.0.2:1/aaa") && kept.ends_with('…'),
        "{kept}"
    );

    // The default cap (8 KiB) holds too.
    set_policy(&node, "[http]\ndestinations = [\"http://127.0.0.1:1\"]");
    attack(&node, &driver, &[("attack", "http"), ("url", &url)]).failure();
    let text = std::fs::read_to_string(node.path("log/audit.jsonl")).unwrap();
    let last = text.lines().last().unwrap();
    assert!(last.len() < 8192, "{}", last.len());
    serde_json::from_str::<Value>(last).unwrap();
}

/// Every line of the log and its rotated files, each of which must be JSON; and the files.
fn all_logs(node: &Node) -> (Vec<Value>, Vec<(String, u64)>) {
    let mut lines = Vec::new();
    let mut files = Vec::new();
    for entry in std::fs::read_dir(node.path("log")).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("flex.log") {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).unwrap();
        files.push((name.clone(), text.len() as u64));
        for line in text.lines() {
            let value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("torn line in {name} ({e}): {line:?}"));
            lines.push(value);
        }
    }
    files.sort();
    (lines, files)
}

/// `writers` flex processes at once, each logging `lines` tagged lines.
fn concurrent_floods(
    node: &Node,
    driver: &Path,
    max: u64,
    keep: u32,
    writers: usize,
    lines: usize,
) {
    let children: Vec<_> = (0..writers)
        .map(|w| {
            let args = attack_args(
                node,
                &[
                    ("attack", "log-flood"),
                    ("via", "log"),
                    ("tag", &format!("w{w}")),
                    ("lines", &lines.to_string()),
                    ("line_bytes", "100"),
                ],
            );
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            node.command(driver, &args)
                .env("FLEX_LOG_MAX_BYTES", max.to_string())
                .env("FLEX_LOG_KEEP", keep.to_string())
                .spawn()
                .expect("spawn flex")
        })
        .collect();
    for child in children {
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "{output:?}");
    }
}

#[test]
fn rotation_under_concurrent_writers_loses_and_tears_nothing_and_stays_bounded() {
    let (node, driver) = hostile_node("");
    // Room for everything: ~13 rotations, every line must survive exactly once.
    let (max, writers, lines) = (32 << 10, 6, 300);
    concurrent_floods(&node, &driver, max, 40, writers, lines);
    let (all, files) = all_logs(&node);
    assert!(files.len() > 5, "the log rotated: {files:?}");
    for (name, size) in &files {
        // Past the size by at most the lines of writers caught mid-rotation.
        assert!(*size < max + 8 * 1024, "{name} is {size} bytes");
    }
    let mut seen = std::collections::HashMap::new();
    for line in &all {
        if let Some(message) = line["message"].as_str()
            && let Some(rest) = message.strip_prefix("flood ")
        {
            let key: Vec<&str> = rest.split(' ').take(2).collect();
            *seen.entry(key.join(" ")).or_insert(0) += 1;
        }
    }
    for w in 0..writers {
        for i in 0..lines {
            let key = format!("w{w} {i:08}");
            assert_eq!(seen.get(&key), Some(&1), "line {key} lost or doubled");
        }
    }
    for (name, _) in &files {
        assert_eq!(mode(&node.path("log").join(name)), 0o600, "{name}");
    }
}

#[test]
fn a_fresh_node_bounds_the_total_log_size() {
    let (node, driver) = hostile_node("");
    let (max, keep) = (16 << 10, 3);
    for _ in 0..3 {
        concurrent_floods(&node, &driver, max, keep, 4, 300);
    }
    let (_, files) = all_logs(&node);
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    assert!(names.len() <= 4, "{names:?}");
    let total: u64 = files.iter().map(|(_, size)| size).sum();
    assert!(
        total < (keep as u64 + 1) * max + 16 * 1024,
        "{total} bytes in {names:?}"
    );
    assert!(node.log().contains("flood"), "the newest lines are kept");
}

#[test]
fn log_audit_and_policy_files_are_root_only() {
    let (node, driver) = hostile_node("[http]\ndestinations = [\"http://127.0.0.1:1\"]");
    // flex creates the log dir itself.
    std::fs::remove_dir_all(node.path("log")).unwrap();
    let message = attack(
        &node,
        &driver,
        &[("attack", "http"), ("url", "http://127.0.0.2/")],
    )
    .failure();
    assert!(message.contains("denied"), "{message}");
    assert_eq!(mode(&node.path("log")), 0o700);
    assert_eq!(mode(&node.path("log/flex.log")), 0o600);
    assert_eq!(mode(&node.path("log/audit.jsonl")), 0o600);
    // Files made wider by someone are tightened at the next call.
    for name in ["flex.log", "audit.jsonl"] {
        std::fs::set_permissions(
            node.path("log").join(name),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
    }
    attack(
        &node,
        &driver,
        &[("attack", "http"), ("url", "http://127.0.0.2/")],
    )
    .failure();
    assert_eq!(mode(&node.path("log/flex.log")), 0o600);
    assert_eq!(mode(&node.path("log/audit.jsonl")), 0o600);

    // An installed policy keeps its source's mode, never wider than 0640.
    let flex = flex_binary();
    let plugins = node.path("plugins");
    for (source_mode, installed_mode) in [
        (0o600, 0o600),
        (0o644, 0o640),
        (0o666, 0o640),
        (0o400, 0o400),
    ] {
        let source = node.path(&format!("source-{source_mode:o}.toml"));
        std::fs::write(&source, shipped_policy("tmpfs")).unwrap();
        std::fs::set_permissions(&source, std::fs::Permissions::from_mode(source_mode)).unwrap();
        let out = node.run(
            &flex,
            &[
                "install",
                "--plugin-dir",
                plugins.to_str().unwrap(),
                "acme~modes",
                guest("flex_tmpfs").to_str().unwrap(),
                "--policy",
                source.to_str().unwrap(),
            ],
        );
        assert_eq!(out.code, 0, "{out:?}");
        let installed = node.path("policy/acme~modes.toml");
        assert_eq!(mode(&installed), installed_mode, "source {source_mode:o}");
        assert_eq!(
            std::fs::read_to_string(&installed).unwrap(),
            shipped_policy("tmpfs")
        );
    }

    // A world-readable policy holding a credential is refused, naming the fix, never the value.
    let exposed = format!(
        "{}\n[config]\nsecret_access_key = \"wJalrXUtnFEMI\"\n",
        shipped_policy("tmpfs")
    );
    let path = node.path(&format!("policy/{DRIVER}.toml"));
    std::fs::write(&path, &exposed).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let message = node.run(&driver, &["init"]).failure();
    assert!(
        message.contains("readable by every user") && message.contains("chmod 0600"),
        "{message}"
    );
    assert!(!message.contains("wJalrXUtnFEMI"));
    let out = node.run(&flex, &["policy", "check", path.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{out:?}");
    // Warnings go to stderr; the summary stays on stdout.
    assert!(out.stderr.starts_with("warning: policy"), "{}", out.stderr);
    assert!(out.stdout.contains("is valid"), "{}", out.stdout);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    node.run(&driver, &["init"]).success();
}

/// Every file in the log dir, as one string.
fn everything_logged(node: &Node) -> String {
    let mut all = String::new();
    for entry in std::fs::read_dir(node.path("log")).unwrap() {
        let entry = entry.unwrap();
        all.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
    }
    all
}

#[test]
fn a_secret_inside_a_comma_joined_option_never_reaches_the_files() {
    let (node, driver) = hostile_node("[[exec.programs]]\npath = \"/usr/bin/true\"\nargs = []");
    for option in [
        "size=1m,password=hunter2",
        "password=hunter2,size=1m",
        "size=1m,mode=0777,Token=hunter2,nosuid",
        "size=1m,cred:hunter2",
    ] {
        let out = attack(
            &node,
            &driver,
            &[("attack", "mount-option"), ("option", option)],
        );
        assert!(!out.stdout.contains("hunter2"), "{option}: {}", out.stdout);
    }
    // The same in exec arguments: comma-joined, `key:value` and URLs with credentials.
    for args in [
        "--opts=a,token=hunter2",
        "Authorization: Bearer hunter2",
        "--url=https://admin:hunter2@example.com/x?sig=hunter2",
    ] {
        attack(
            &node,
            &driver,
            &[
                ("attack", "exec-lines"),
                ("program", "/usr/bin/true"),
                ("args", args),
            ],
        )
        .failure();
    }
    let audit = node.audit();
    assert!(
        audit.iter().filter(|l| l["operation"] == "mount").count() >= 4,
        "every mount is audited: {audit:?}"
    );
    assert!(audit.iter().any(|l| l["operation"] == "exec"), "{audit:?}");
    let all = everything_logged(&node);
    assert!(
        !all.contains("hunter2"),
        "a secret reached the log dir:\n{all}"
    );
    assert!(all.contains("<redacted>"), "{all}");
    assert!(
        mounts_under(&node.path("")).is_empty(),
        "nothing was mounted"
    );
}
