//! `flex serve`: warm children answer kubelet's calls exactly as the calling process would,
//! in the caller's mount namespace, under the policy and component as they are when the call
//! arrives, and only for root. Real server, real driver execs, real tmpfs mounts.

use flex_tests::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const NAME: &str = "acme~tmpfs";

/// `flex serve` on the node's plugin dir.
fn serve(node: &Node) -> WarmServer {
    let mut command = node.command(&flex_binary(), &["serve", "--plugin-dir"]);
    command
        .arg(node.path("plugins"))
        .stderr(std::process::Stdio::null());
    WarmServer::spawn(command)
}

fn install(node: &Node, component: &Path) -> PathBuf {
    let policy = shipped_policy("tmpfs");
    node.flex_install(
        &flex_binary(),
        &node.path("plugins"),
        NAME,
        component,
        &policy,
    )
}

fn socket(node: &Node) -> PathBuf {
    node.path("run/warm").join(format!("{NAME}.sock"))
}

/// The node's log line of the reply to the last call of `verb`.
fn last_reply_line(node: &Node, verb: &str) -> Value {
    node.log()
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| {
            l["verb"] == verb
                && l["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("reply "))
        })
        .unwrap_or_else(|| panic!("no reply to {verb} in the log:\n{}", node.log()))
}

/// Whether the last `verb` call was answered by a warm child (it names the caller it served).
fn served_warm(node: &Node, verb: &str) -> bool {
    last_reply_line(node, verb)["warm_caller_pid"].is_u64()
}

/// Whether the last `verb` call ran in the process this one exec'd.
fn ran_in_process(node: &Node, verb: &str) -> bool {
    let line = last_reply_line(node, verb);
    line["warm_caller_pid"].is_null()
        && line["ppid"].as_u64() == Some(u64::from(std::process::id()))
}

/// Calls `init` until a warm child answers it (the server has started its pool), then waits
/// for the pool to be full again.
fn wait_warm(node: &Node, driver: &Path) {
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        node.run(driver, &["init"]).success();
        if served_warm(node, "init") {
            wait_idle(driver);
            return;
        }
        assert!(
            Instant::now() < until,
            "no warm child answered within 60 s:\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A node with the tmpfs driver installed and a server answering its calls warm.
fn warm_node() -> (Node, PathBuf, WarmServer) {
    require_root();
    let node = Node::new();
    let driver = install(&node, &guest("flex_tmpfs"));
    let server = serve(&node);
    wait_warm(&node, &driver);
    (node, driver, server)
}

fn tmpfs_json() -> String {
    mount_json("vol", false, None, &[("size", "1Mi")])
}

#[test]
fn warm_calls_answer_as_calls_in_process_do_and_stop_with_the_server() {
    require_root();
    let node = Node::new();
    let driver = install(&node, &guest("flex_tmpfs"));
    let cold = |args: &[&str]| {
        let mut command = node.command(&driver, args);
        command.env("FLEX_WARM", "0");
        Output::from(command.output().unwrap())
    };
    let in_process = cold(&["init"]).success();
    let server = serve(&node);
    wait_warm(&node, &driver);
    wait_idle(&driver);
    assert_eq!(node.run(&driver, &["init"]).success(), in_process);
    assert!(served_warm(&node, "init"));

    // A real mount and unmount, each by a child of its own.
    let dir = node.pod_dir("warm");
    wait_idle(&driver);
    let mut caller = node
        .command(&driver, &["mount", dir.to_str().unwrap(), &tmpfs_json()])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let caller_pid = Value::from(caller.id());
    assert!(caller.wait().unwrap().success());
    assert!(served_warm(&node, "mount"));
    // Logged and audited as this process's call, naming the process it exec'd.
    let reply = last_reply_line(&node, "mount");
    assert_eq!(reply["warm_caller_pid"], caller_pid, "{reply}");
    assert_eq!(reply["ppid"], Value::from(std::process::id()), "{reply}");
    let audited = node
        .audit()
        .into_iter()
        .rev()
        .find(|l| l["operation"] == "mount");
    let audited = audited.expect("the mount audited");
    assert_eq!(audited["warm_caller_pid"], caller_pid, "{audited}");
    assert_eq!(
        audited["ppid"],
        Value::from(std::process::id()),
        "{audited}"
    );
    let mounted = mounts_at(&dir);
    assert_eq!(mounted.len(), 1, "{mounted:?}");
    assert_eq!(mounted[0].fs_type, "tmpfs");
    let mount_pid = last_reply_line(&node, "mount")["pid"].clone();
    wait_idle(&driver);
    node.run(&driver, &["unmount", dir.to_str().unwrap()])
        .success();
    assert!(served_warm(&node, "unmount"));
    assert_ne!(
        last_reply_line(&node, "unmount")["pid"],
        mount_pid,
        "one child per call"
    );
    assert!(mounts_at(&dir).is_empty());
    // The same reply for what the driver does not do, and for bad input.
    assert_eq!(
        node.run(&driver, &["attach", "{}", "node"]).reply(),
        cold(&["attach", "{}", "node"]).reply()
    );
    let bad = node.run(&driver, &["mount", dir.to_str().unwrap(), "not json"]);
    assert_eq!(
        bad.failure(),
        cold(&["mount", dir.to_str().unwrap(), "not json"]).failure()
    );

    drop(server);
    assert!(
        !socket(&node).exists(),
        "the server removes its sockets when stopped"
    );
    node.run(&driver, &["init"]).success();
    assert!(ran_in_process(&node, "init"), "{}", node.log());
}

#[test]
fn a_policy_change_or_an_upgrade_reaches_the_very_next_call() {
    let (node, driver, _server) = warm_node();

    // Nothing granted any more: the next mount is denied, and mounts nothing.
    node.set_policy(NAME, "");
    let dir = node.pod_dir("p");
    let denied = node.run(&driver, &["mount", dir.to_str().unwrap(), &tmpfs_json()]);
    assert!(denied.failure().contains("denied"), "{denied:?}");
    assert!(mounts_at(&dir).is_empty());
    assert!(
        node.log().contains("policy"),
        "the child says why it declined"
    );
    // The server restarts the pool under the new policy: warm again, still denied.
    wait_warm(&node, &driver);
    wait_idle(&driver);
    let denied = node.run(&driver, &["mount", dir.to_str().unwrap(), &tmpfs_json()]);
    assert!(denied.failure().contains("denied"), "{denied:?}");
    assert!(served_warm(&node, "mount"));

    // An upgrade to another component: its first call already runs it.
    let before = node.run(&driver, &["init"]).success();
    assert_eq!(before["capabilities"]["attach"], false);
    install(&node, &guest("flex_loop"));
    let after = node.run(&driver, &["init"]).success();
    assert_eq!(after["capabilities"]["attach"], true, "{after}");
}

#[test]
fn the_call_runs_in_the_callers_mount_namespace() {
    let (node, driver, _server) = warm_node();
    let dir = node.pod_dir("ns");
    // A caller in a mount namespace of its own: the mount is made there, not in the server's.
    let script = format!(
        "{} mount {} '{}' && findmnt -n -o FSTYPE {}",
        driver.display(),
        dir.display(),
        tmpfs_json(),
        dir.display()
    );
    wait_idle(&driver);
    let mut command = node.command(Path::new("unshare"), &["-m", "--propagation", "private"]);
    command.args(["sh", "-c", &script]);
    let out = Output::from(command.output().unwrap());
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("\"Success\""), "{out:?}");
    assert!(out.stdout.trim_end().ends_with("tmpfs"), "{out:?}");
    assert!(served_warm(&node, "mount"));
    assert!(
        mounts_at(&dir).is_empty(),
        "nothing mounted outside the caller's namespace"
    );
}

#[test]
fn only_root_may_call_and_the_socket_directory_must_be_roots_alone() {
    let (node, driver, server) = warm_node();
    // Open the directory and socket to everybody: the child still checks who connects.
    use std::os::unix::fs::PermissionsExt;
    let open = |path: &Path, mode| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    open(&node.path("run/warm"), 0o755);
    open(&socket(&node), 0o777);
    // Connect and send as uid 65534 (from inside the directory, as the node's root is
    // root's alone): closed without an answer.
    let script = r#"
import os, socket, sys
os.chdir(os.path.dirname(sys.argv[1]))
os.setgid(65534); os.setuid(65534)
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
s.connect(os.path.basename(sys.argv[1]))
s.settimeout(10)
try:
    s.send(b'{}')
    print('answer', s.recv(65536))
except OSError as e:
    print('error', e)
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(socket(&node))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("answer b''") || text.starts_with("error"),
        "{text} {out:?}"
    );
    assert!(
        node.log()
            .contains("refused a connection from uid Ok(65534)"),
        "{}",
        node.log()
    );
    node.run(&driver, &["init"]).success();

    // A second server refuses the directory others can enter.
    let mut second = node.command(&flex_binary(), &["serve", "--plugin-dir"]);
    second.arg(node.path("plugins"));
    let out = Output::from(second.output().unwrap());
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("mode 0700"), "{out:?}");
    drop(server);
}

#[test]
fn a_caller_killed_mid_call_takes_its_call_with_it() {
    require_root();
    let node = Node::new();
    // The hostile driver's `loop` attack spins until the deadline (120 s by default).
    let driver = install(&node, &guest("flex_hostile"));
    let server = serve(&node);
    wait_warm(&node, &driver);
    let children = warm_children(&driver);
    assert!(!children.is_empty());
    let dir = node.pod_dir("killed");
    let json = mount_json("vol", false, None, &[("attack", "loop")]);
    let mut caller = node
        .command(&driver, &["mount", dir.to_str().unwrap(), &json])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    caller.kill().unwrap();
    caller.wait().unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    while !children.iter().any(|pid| exited(*pid)) {
        assert!(
            Instant::now() < until,
            "the child still runs the call:\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        node.log().contains("the caller went away during the call"),
        "{}",
        node.log()
    );
    drop(server);
}

#[test]
fn a_caller_with_another_policy_dir_runs_its_call_itself() {
    let (node, driver, _server) = warm_node();
    wait_idle(&driver);
    let before = warm_children(&driver);
    // Its own policy directory, empty: the call must run under that, i.e. deny the mount.
    let elsewhere = node.path("other-policy");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let dir = node.pod_dir("other");
    let mut command = node.command(&driver, &["mount", dir.to_str().unwrap(), &tmpfs_json()]);
    command.env("FLEX_POLICY_DIR", &elsewhere);
    let out = Output::from(command.output().unwrap());
    assert!(out.failure().contains("denied"), "{out:?}");
    assert!(mounts_at(&dir).is_empty());
    assert!(ran_in_process(&node, "mount"), "{}", node.log());
    assert!(
        node.log().contains("the caller's FLEX_POLICY_DIR differs"),
        "{}",
        node.log()
    );
    // Only the child that declined is replaced: its sibling still waits.
    std::thread::sleep(Duration::from_millis(500));
    let after = warm_children(&driver);
    assert!(
        before.iter().any(|pid| after.contains(pid)),
        "{before:?} {after:?}"
    );
}

#[test]
fn idle_children_end_with_a_killed_server() {
    let (_node, driver, mut server) = warm_node();
    wait_idle(&driver);
    let children = warm_children(&driver);
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    while !children.iter().all(|pid| exited(*pid)) {
        assert!(
            Instant::now() < until,
            "children outlive their server: {children:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
