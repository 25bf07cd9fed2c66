//! exec is a narrow door: a hostile driver with realistic exec grants gets exactly the listed
//! argument vectors and environment names, is denied (and audited) anything else before the
//! program starts, and nothing the program starts outlives the call: not a grandchild, not a
//! fork bomb, not a timeout, not the death of flex. Each test checks the host: files the
//! program would have written, processes left in /proc, cgroups left behind, the audit trail.

use flex_tests::*;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

const DRIVER: &str = "test~hostile";

fn node_with(policy: &str) -> (Node, PathBuf) {
    require_root();
    let node = Node::new();
    let driver = node.install(DRIVER, &guest("flex_hostile"));
    node.set_policy(DRIVER, policy);
    (node, driver)
}

/// One `[[exec.programs]]` table (JSON string and array literals are valid TOML).
fn grant(path: &str, args: &[&[&str]], env: &[&str]) -> String {
    format!(
        "[[exec.programs]]\npath = {}\nargs = {}\nenv = {}\n",
        json!(path),
        json!(args),
        json!(env)
    )
}

/// The `mount` call in which the hostile driver runs `program args...` with `env`.
fn exec_call(node: &Node, program: &str, args: &[&str], env: &[(&str, &str)]) -> Vec<String> {
    let dir = node.pod_dir("victim");
    let joined = args.join("\n");
    let env: Vec<(String, &str)> = env.iter().map(|(k, v)| (format!("env.{k}"), *v)).collect();
    let mut options = vec![
        ("attack", "exec-lines"),
        ("program", program),
        ("args", joined.as_str()),
    ];
    options.extend(env.iter().map(|(k, v)| (k.as_str(), *v)));
    vec![
        "mount".into(),
        dir.to_str().unwrap().into(),
        mount_json("vol", false, None, &options),
    ]
}

fn exec(node: &Node, driver: &Path, program: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let call = exec_call(node, program, args, env);
    let call: Vec<&str> = call.iter().map(String::as_str).collect();
    node.run(driver, &call)
}

/// The same call, started in the background: (flex's process, its pid).
fn spawn_exec(node: &Node, driver: &Path, program: &str, args: &[&str]) -> (Child, u32) {
    let call = exec_call(node, program, args, &[]);
    let call: Vec<&str> = call.iter().map(String::as_str).collect();
    let child = node.command(driver, &call).spawn().expect("start flex");
    let pid = child.id();
    (child, pid)
}

fn finish(child: Child) -> Output {
    let out = child.wait_with_output().expect("flex output");
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// What the hostile driver reports for a program that ran.
fn ran(exit_code: i32, stdout: &str) -> String {
    format!("ran, exit code Some({exit_code}), stdout {stdout:?}")
}

fn last_denial(node: &Node) -> String {
    let lines = node.audit();
    let line = lines.last().expect("an audit line");
    assert_eq!(
        (line["decision"].as_str(), line["operation"].as_str()),
        (Some("deny"), Some("exec")),
        "{line}"
    );
    line["rule"].as_str().unwrap().to_string()
}

fn unique_marker(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("flexmark{name}{}x{nanos}", std::process::id())
}

/// Processes with `marker` as one whole argument (flex itself carries it only inside the
/// options JSON, so flex and its relay never count).
fn processes_with(marker: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|cmdline| cmdline.split(|b| *b == 0).any(|a| a == marker.as_bytes()))
                .unwrap_or(false)
        })
        .collect()
}

/// The exec cgroups flex process `pid` created that still exist, wherever this node keeps
/// them (v1 pids hierarchy or cgroup v2, under this process's own cgroup).
fn exec_cgroups_of(pid: u32) -> Vec<PathBuf> {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let mut dirs = Vec::new();
    for line in own.lines() {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next(), fields.next(), fields.next());
        let (Some(controllers), Some(path)) = (controllers, path) else {
            continue;
        };
        let path = path.trim_start_matches('/');
        if controllers.split(',').any(|c| c == "pids") {
            dirs.push(Path::new("/sys/fs/cgroup/pids").join(path));
        } else if controllers.is_empty() {
            dirs.push(Path::new("/sys/fs/cgroup/unified").join(path));
            dirs.push(Path::new("/sys/fs/cgroup").join(path));
        }
    }
    let prefix = format!("flex-exec-{pid}-");
    dirs.iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flat_map(|entries| entries.flatten())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect()
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn flags_and_arguments_outside_the_grant_are_denied_before_the_program_runs() {
    require_root();
    let node = Node::new();
    let marks = node.path("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let marks = marks.to_str().unwrap().to_string();
    let in_marks = format!("{marks}/[a-z]*");
    let driver = node.install(DRIVER, &guest("flex_hostile"));
    node.set_policy(
        DRIVER,
        &format!(
            "{}{}",
            grant("/usr/bin/touch", &[&[&in_marks]], &[]),
            grant("/bin/sh", &[&["-c", "echo fixed"]], &[])
        ),
    );
    let ok = format!("{marks}/ok");
    assert_eq!(
        exec(&node, &driver, "/usr/bin/touch", &[&ok], &[]).failure(),
        ran(0, "")
    );
    assert_eq!(
        exec(&node, &driver, "/bin/sh", &["-c", "echo fixed"], &[]).failure(),
        ran(0, "fixed\n")
    );
    let pwned = node.path("pwned");
    let touch_pwned = format!("touch {}", pwned.display());
    let a = format!("{marks}/a");
    let escape = format!("{marks}/a/../../escape");
    let hidden = format!("{marks}/.hidden");
    let attacks: Vec<(&str, Vec<&str>, &str)> = vec![
        // a flag smuggled in front of an allowed argument, or in its place
        (
            "/usr/bin/touch",
            vec!["-c", &a],
            "allows 1 arguments, not 2",
        ),
        ("/usr/bin/touch", vec!["--reference=/etc/shadow"], "a flag"),
        ("/usr/bin/touch", vec!["--version"], "a flag"),
        // a glob's `*` neither crosses `/` nor matches a leading dot
        ("/usr/bin/touch", vec![&escape], "argument 1 is not allowed"),
        ("/usr/bin/touch", vec![&hidden], "argument 1 is not allowed"),
        // missing and extra arguments
        ("/usr/bin/touch", vec![], "not 0"),
        ("/usr/bin/touch", vec![&a, &a], "not 2"),
        // a shell with a fixed script: another script, extra words, extra flags
        (
            "/bin/sh",
            vec!["-c", &touch_pwned],
            "argument 2 is not allowed",
        ),
        ("/bin/sh", vec!["-c", "echo fixed", "x"], "not 3"),
        ("/bin/sh", vec!["-e", "-c", "echo fixed"], "not 3"),
        (
            "/bin/sh",
            vec!["--rcfile", "echo fixed"],
            "argument 1 is not allowed",
        ),
        ("/bin/sh", vec!["-c", "echo fixed;id"], "argument 2"),
    ];
    for (program, args, expected) in attacks {
        let message = exec(&node, &driver, program, &args, &[]).failure();
        assert!(
            message.starts_with("denied: ") && message.contains(expected),
            "{program} {args:?}: {message}"
        );
        assert_eq!(last_denial(&node), message);
    }
    let mut written: Vec<_> = std::fs::read_dir(&marks)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    written.sort();
    assert_eq!(written, ["ok"], "only the allowed call touched anything");
    assert!(!pwned.exists() && !node.path("escape").exists());
    assert!(!Path::new(&format!("{marks}/.hidden")).exists());
}

#[test]
fn environment_outside_the_allowlist_is_denied_and_the_program_sees_only_what_was_allowed() {
    let policy = format!(
        "{}{}",
        grant("/usr/bin/env", &[], &["GREETING"]),
        grant("/bin/sh", &[&["-c", "echo \"$GREETING\""]], &["GREETING"])
    );
    let (node, driver) = node_with(&policy);
    let pwned = node.path("pwned");
    let evil = node.path("evil.sh");
    std::fs::write(&evil, format!("touch {}\n", pwned.display())).unwrap();
    let evil = evil.to_str().unwrap();
    // Exactly the allowed variable and the host's fixed PATH: nothing of flex's own
    // environment (FLEX_POLICY_DIR, FLEX_LOG_DIR...) reaches the program.
    assert_eq!(
        exec(&node, &driver, "/usr/bin/env", &[], &[("GREETING", "hi")]).failure(),
        ran(0, "PATH=/usr/sbin:/usr/bin:/sbin:/bin\nGREETING=hi\n")
    );
    let script = ["-c", "echo \"$GREETING\""];
    for (name, value, expected) in [
        (
            "HOME",
            node.path("").to_str().unwrap(),
            "not in the env list",
        ),
        ("greeting", "hi", "not in the env list"),
        ("BASH_ENV", evil, "no policy can grant it"),
        ("ENV", evil, "no policy can grant it"),
        (
            "LD_PRELOAD",
            "/nonexistent/evil.so",
            "no policy can grant it",
        ),
        (
            "GLIBC_TUNABLES",
            "glibc.malloc.check=3",
            "no policy can grant it",
        ),
        (
            "PATH",
            node.path("").to_str().unwrap(),
            "no policy can grant it",
        ),
        ("PYTHONSTARTUP", evil, "no policy can grant it"),
        (
            "BASH_FUNC_echo%%",
            "() { touch /tmp/x; }",
            "no policy can grant it",
        ),
    ] {
        let message = exec(&node, &driver, "/bin/sh", &script, &[(name, value)]).failure();
        assert!(
            message.starts_with("denied: ") && message.contains(expected),
            "{name}: {message}"
        );
        assert!(last_denial(&node).contains(name));
    }
    assert!(!pwned.exists(), "no denied program ran");
    assert_eq!(
        exec(&node, &driver, "/bin/sh", &script, &[("GREETING", "hello")]).failure(),
        ran(0, "hello\n")
    );
}

#[test]
fn loader_and_shell_variables_cannot_be_granted_even_when_listed() {
    require_root();
    let node = Node::new();
    let driver = node.install(DRIVER, &guest("flex_hostile"));
    let pwned = node.path("pwned");
    let evil = node.path("evil.sh");
    std::fs::write(&evil, format!("touch {}\n", pwned.display())).unwrap();
    for name in [
        "BASH_ENV",
        "LD_PRELOAD",
        "GLIBC_TUNABLES",
        "PERL5OPT",
        "BASH_FUNC_x",
    ] {
        let policy = grant("/bin/sh", &[&["-c", "true"]], &[name]);
        node.set_policy(DRIVER, &policy);
        let out = exec(
            &node,
            &driver,
            "/bin/sh",
            &["-c", "true"],
            &[(name, evil.to_str().unwrap())],
        );
        let message = out.failure();
        assert!(
            message.contains("invalid policy")
                && message.contains(&format!("{name} can never be granted")),
            "{name}: {message}"
        );
        let file = node.path("policy").join(format!("{DRIVER}.toml"));
        let check = node.run(&flex_binary(), &["policy", "check", file.to_str().unwrap()]);
        // `flex policy check` reports errors on stderr (issue 13).
        assert_eq!(check.code, 1, "{}", check.stderr);
        assert!(
            check.stderr.contains("can never be granted"),
            "{}",
            check.stderr
        );
    }
    assert!(!pwned.exists());
    assert!(
        node.audit().iter().all(|l| l["operation"] != "exec"),
        "an invalid policy runs nothing"
    );
}

#[test]
fn the_old_schema_is_refused_with_a_migration_hint() {
    let (node, driver) = node_with("[exec]\nprograms = [\"/usr/bin/touch\"]\n");
    let target = node.path("touched");
    let out = exec(
        &node,
        &driver,
        "/usr/bin/touch",
        &[target.to_str().unwrap()],
        &[],
    );
    let message = out.failure();
    assert!(
        message.contains("invalid policy")
            && message.contains("[[exec.programs]] path = \"/usr/bin/touch\", args = [[")
            && message.contains("Migration"),
        "{message}"
    );
    assert!(!target.exists());
}

#[test]
fn programs_are_matched_exactly_and_run_only_from_root_only_places() {
    use std::os::unix::fs::{PermissionsExt, chown, symlink};
    require_root();
    let node = Node::new();
    let driver = node.install(DRIVER, &guest("flex_hostile"));
    let mode = |path: &Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    // A helper script that leaves a mark named after where it ran from.
    let helper = |dir: &Path, name: &str| -> String {
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.join("helper");
        let mark = node.path(&format!("ran-{name}"));
        std::fs::write(&path, format!("#!/bin/sh\ntouch {}\n", mark.display())).unwrap();
        mode(&path, 0o755);
        path.to_str().unwrap().to_string()
    };
    let open = helper(&node.path("open"), "open");
    mode(&node.path("open"), 0o777);
    let group = helper(&node.path("group"), "group");
    mode(&node.path("group"), 0o775);
    let not_root = helper(&node.path("owned"), "owned");
    chown(&not_root, Some(1000), None).unwrap();
    let writable_file = helper(&node.path("wfile"), "wfile");
    mode(Path::new(&writable_file), 0o757);
    // /tmp is writable by everyone: a root-only link into it is no better.
    let tmp = tempfile::tempdir().unwrap();
    let in_tmp = helper(tmp.path(), "tmp");
    let link = node.path("links/helper");
    std::fs::create_dir_all(link.parent().unwrap()).unwrap();
    symlink(&in_tmp, &link).unwrap();
    let link = link.to_str().unwrap().to_string();
    // Root-only all the way: this one runs.
    let good = helper(&node.path("bin"), "good");
    let listed: Vec<&str> = vec![
        &open,
        &group,
        &not_root,
        &writable_file,
        &in_tmp,
        &link,
        &good,
    ];
    let mut policy: String = listed.iter().map(|p| grant(p, &[], &[])).collect();
    policy.push_str(&grant("/usr/bin/true", &[], &[]));
    node.set_policy(DRIVER, &policy);
    for (program, expected) in [
        (open.as_str(), "writable by group or others"),
        (&group, "writable by group or others"),
        (&not_root, "not owned by root"),
        (&writable_file, "writable by group or others"),
        (&in_tmp, "writable by group or others"),
        (&link, "writable by group or others"),
        ("/usr/bin/../bin/true", "not listed"),
        ("/usr/bin//true", "not listed"),
        ("/bin/true", "not listed"),
        ("true", "not listed"),
    ] {
        let message = exec(&node, &driver, program, &[], &[]).failure();
        assert!(
            message.starts_with("denied: ") && message.contains(expected),
            "{program}: {message}"
        );
        assert_eq!(last_denial(&node), message);
    }
    assert_eq!(exec(&node, &driver, &good, &[], &[]).failure(), ran(0, ""));
    let mut marks: Vec<String> = std::fs::read_dir(node.path(""))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("ran-"))
        .collect();
    marks.sort();
    assert_eq!(marks, ["ran-good"], "only the root-only helper ran");
    assert_eq!(
        exec(&node, &driver, "/usr/bin/true", &[], &[]).failure(),
        ran(0, "")
    );
}

#[test]
fn a_grandchild_cannot_outlive_the_call() {
    require_root();
    let node = Node::new();
    let driver = node.install(DRIVER, &guest("flex_hostile"));
    let marker = unique_marker("orphan");
    let alive = |n: u32| node.path(&format!("alive{n}"));
    let (a1, a2, a3) = (alive(1), alive(2), alive(3));
    // Detached three ways: a new session, a double fork (reparented), and one that moves
    // itself out of the exec cgroup into the root cgroup (root may): the PID namespace still
    // holds them all.
    // One line (the driver passes one argument per line), and no `[`, `*` or `?`: the grant
    // is an exact value, not a glob.
    let script = format!(
        "setsid /bin/sh -c 'touch {a1}; sleep 300; :' {marker} >/dev/null 2>&1 & \
         (/bin/sh -c 'touch {a2}; sleep 300; :' {marker} >/dev/null 2>&1 &) & \
         nohup /bin/sh -c 'for f in /sys/fs/cgroup/pids/cgroup.procs /sys/fs/cgroup/cgroup.procs; \
         do test -f $f && echo $$ > $f; done; touch {a3}; sleep 300; :' {marker} >/dev/null 2>&1 & \
         while test ! -e {a1} || test ! -e {a2} || test ! -e {a3}; do sleep 0.05; done; \
         echo started",
        a1 = a1.display(),
        a2 = a2.display(),
        a3 = a3.display(),
    );
    node.set_policy(DRIVER, &grant("/bin/sh", &[&["-c", &script]], &[]));
    let (child, pid) = spawn_exec(&node, &driver, "/bin/sh", &["-c", &script]);
    assert_eq!(finish(child).failure(), ran(0, "started\n"));
    assert!(
        a1.exists() && a2.exists() && a3.exists(),
        "the grandchildren ran"
    );
    assert_eq!(processes_with(&marker), Vec::<i32>::new(), "survivors");
    assert_eq!(exec_cgroups_of(pid), Vec::<PathBuf>::new());
}

#[test]
fn the_timeout_kills_the_program_and_everything_it_started() {
    require_root();
    let node = Node::new();
    let driver = node.install(DRIVER, &guest("flex_hostile"));
    let marker = unique_marker("timeout");
    let alive = node.path("alive");
    let script = format!(
        "/bin/sh -c 'sleep 300; :' $0 & setsid /bin/sh -c 'sleep 300; :' $0 & touch {}; sleep 300; :",
        alive.display()
    );
    node.set_policy(
        DRIVER,
        &format!(
            "[exec]\ntimeout_seconds = 2\n{}",
            grant("/bin/sh", &[&["-c", &script, &marker]], &[])
        ),
    );
    // The first call may compile the component; warm it up so the timing is the program's.
    exec(&node, &driver, "/bin/false", &[], &[]).failure();
    let started = Instant::now();
    let (child, pid) = spawn_exec(&node, &driver, "/bin/sh", &["-c", &script, &marker]);
    let message = finish(child).failure();
    assert!(
        message.contains("did not finish within 2s and was killed"),
        "{message}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(alive.exists(), "the program ran");
    assert_eq!(processes_with(&marker), Vec::<i32>::new(), "survivors");
    assert_eq!(exec_cgroups_of(pid), Vec::<PathBuf>::new());
    let audit = node.audit();
    let line = audit.last().unwrap();
    assert_eq!(line["decision"], "allow");
    assert!(line["result"].as_str().unwrap().contains("did not finish"));
}

#[test]
fn everything_dies_with_flex() {
    require_root();
    let node = Node::new();
    let driver = node.install(DRIVER, &guest("flex_hostile"));
    let marker = unique_marker("pdeath");
    let alive = node.path("alive");
    let script = format!(
        "/bin/sh -c 'sleep 300; :' $0 & touch {}; sleep 300; :",
        alive.display()
    );
    node.set_policy(
        DRIVER,
        &format!(
            "[exec]\ntimeout_seconds = 120\n{}{}",
            grant("/bin/sh", &[&["-c", &script, &marker]], &[]),
            grant("/usr/bin/true", &[], &[])
        ),
    );
    let (mut child, pid) = spawn_exec(&node, &driver, "/bin/sh", &["-c", &script, &marker]);
    wait_until("the program to start", Duration::from_secs(60), || {
        alive.exists() && processes_with(&marker).len() == 2
    });
    let cgroups = exec_cgroups_of(pid);
    assert_eq!(cgroups.len(), 1, "the program has its cgroup");
    // As an OOM kill would: flex gets no chance to clean up.
    child.kill().unwrap();
    child.wait().unwrap();
    wait_until(
        "the program and its child to die",
        Duration::from_secs(5),
        || processes_with(&marker).is_empty(),
    );
    // The relay outlives flex just long enough to remove the cgroup.
    wait_until("the cgroup to go", Duration::from_secs(5), || {
        exec_cgroups_of(pid).is_empty()
    });
    // Should the relay die too, the next exec removes what a dead flex left behind.
    let gone = std::process::Command::new("/usr/bin/true").spawn().unwrap();
    let dead = gone.id();
    gone.wait_with_output().unwrap();
    let stale = cgroups[0]
        .parent()
        .unwrap()
        .join(format!("flex-exec-{dead}-0"));
    std::fs::create_dir(&stale).unwrap();
    assert_eq!(
        exec(&node, &driver, "/usr/bin/true", &[], &[]).failure(),
        ran(0, "")
    );
    assert!(!stale.exists(), "{} left behind", stale.display());
}

const BOMB: &str = "b() { b | b & }; b; sleep 3";

#[test]
fn a_fork_bomb_is_bounded_by_exec_processes() {
    require_root();
    let node = Node::new();
    let driver = node.install(DRIVER, &guest("flex_hostile"));
    let marker = unique_marker("bomb");
    node.set_policy(
        DRIVER,
        &format!(
            "[exec]\ntimeout_seconds = 20\n{}{}[limits]\nexec_processes = 12\n",
            grant("/bin/sh", &[&["-c", BOMB, "flexmark*"]], &[]),
            grant("/usr/bin/true", &[], &[])
        ),
    );
    let (child, pid) = spawn_exec(&node, &driver, "/bin/sh", &["-c", BOMB, &marker]);
    let mut most = 0;
    let started = Instant::now();
    let mut cgroup_seen = false;
    while started.elapsed() < Duration::from_secs(30) {
        most = most.max(processes_with(&marker).len());
        cgroup_seen |= !exec_cgroups_of(pid).is_empty();
        if exited(pid as i32) {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let message = finish(child).failure();
    assert!(
        message.starts_with("limit exceeded: limits.exec_processes"),
        "{message}"
    );
    assert!(cgroup_seen);
    assert!(
        most <= 12,
        "{most} bomb processes at once under a limit of 12"
    );
    assert_eq!(processes_with(&marker), Vec::<i32>::new(), "survivors");
    assert_eq!(exec_cgroups_of(pid), Vec::<PathBuf>::new());
    // The node is fine: the next call runs at once.
    let started = Instant::now();
    assert_eq!(
        exec(&node, &driver, "/usr/bin/true", &[], &[]).failure(),
        ran(0, "")
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn concurrent_execs_are_each_contained_and_a_bomb_starves_no_other_call() {
    require_root();
    let node = Node::new();
    let driver = node.install(DRIVER, &guest("flex_hostile"));
    let script = "/bin/sh -c 'sleep 300; :' $0 & sleep 0.5; echo $0 $$";
    node.set_policy(
        DRIVER,
        &format!(
            "[exec]\ntimeout_seconds = 20\n{}[limits]\nexec_processes = 8\n",
            grant(
                "/bin/sh",
                &[&["-c", script, "flexmark*"], &["-c", BOMB, "flexmark*"]],
                &[]
            ),
        ),
    );
    // Warm the artifact so the calls really overlap.
    exec(&node, &driver, "/bin/false", &[], &[]).failure();
    let bomb_marker = unique_marker("cbomb");
    let bomb = spawn_exec(&node, &driver, "/bin/sh", &["-c", BOMB, &bomb_marker]);
    let calls: Vec<(String, (Child, u32))> = (0..4)
        .map(|i| {
            let marker = unique_marker(&format!("c{i}"));
            let call = spawn_exec(&node, &driver, "/bin/sh", &["-c", script, &marker]);
            (marker, call)
        })
        .collect();
    let mut pids = vec![bomb.1];
    for (marker, (child, pid)) in calls {
        // Each is PID 1 of its own namespace, and saw its own arguments.
        assert_eq!(finish(child).failure(), ran(0, &format!("{marker} 1\n")));
        assert_eq!(processes_with(&marker), Vec::<i32>::new(), "survivors");
        pids.push(pid);
    }
    let message = finish(bomb.0).failure();
    assert!(message.contains("limits.exec_processes"), "{message}");
    assert_eq!(processes_with(&bomb_marker), Vec::<i32>::new());
    for pid in pids {
        assert_eq!(exec_cgroups_of(pid), Vec::<PathBuf>::new());
    }
    let allowed = node
        .audit()
        .iter()
        .filter(|l| l["operation"] == "exec" && l["decision"] == "allow")
        .count();
    assert_eq!(allowed, 5);
}

#[test]
fn the_audit_shows_arguments_with_secrets_redacted() {
    let secret = "hunter2xyzzy";
    let (node, driver) = node_with(&grant(
        "/usr/bin/true",
        &[
            &["--password", "*"],
            &["-o", "size=[0-9]*,password=*"],
            &["-n", "node.session.auth.password", "-v", "*"],
        ],
        &["TOKEN"],
    ));
    let secret_option = format!("size=1m,password={secret}");
    for args in [
        vec!["--password", secret],
        vec!["-o", &secret_option],
        vec!["-n", "node.session.auth.password", "-v", secret],
    ] {
        assert_eq!(
            exec(&node, &driver, "/usr/bin/true", &args, &[("TOKEN", secret)]).failure(),
            ran(0, ""),
            "{args:?}"
        );
    }
    // Denied calls are audited, redacted just the same.
    let message = exec(
        &node,
        &driver,
        "/usr/bin/true",
        &["--password", secret, "--token", secret],
        &[],
    )
    .failure();
    assert!(
        message.starts_with("denied: ") && !message.contains(secret),
        "{message}"
    );
    let audit = node.audit();
    let exec_lines: Vec<&Value> = audit.iter().filter(|l| l["operation"] == "exec").collect();
    assert_eq!(exec_lines.len(), 4);
    assert_eq!(
        exec_lines[0]["args"]["args"],
        json!(["--password", "<redacted>"])
    );
    assert_eq!(
        exec_lines[1]["args"]["args"],
        json!(["-o", "size=1m,password=<redacted>"])
    );
    assert_eq!(
        exec_lines[2]["args"]["args"],
        json!(["-n", "node.session.auth.password", "-v", "<redacted>"])
    );
    assert_eq!(exec_lines[0]["args"]["env"], json!(["TOKEN"]));
    assert_eq!(exec_lines[3]["decision"], "deny");
    let trail = std::fs::read_to_string(node.path("log/audit.jsonl")).unwrap();
    assert!(!trail.contains(secret), "{trail}");
    assert!(!node.log().contains(secret));
}

#[test]
fn a_dry_run_checks_and_audits_but_runs_nothing() {
    require_root();
    let node = Node::new();
    let driver = node.install(DRIVER, &guest("flex_hostile"));
    let marks = node.path("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let pattern = format!("{}/[a-z]*", marks.display());
    node.set_policy(DRIVER, &grant("/usr/bin/touch", &[&[&pattern]], &[]));
    let target = marks.join("made");
    let call = exec_call(&node, "/usr/bin/touch", &[target.to_str().unwrap()], &[]);
    let call: Vec<&str> = call.iter().map(String::as_str).collect();
    let mut command = node.command(&driver, &call);
    command.env("FLEX_DRY_RUN", "1");
    let out = finish(command.spawn().unwrap());
    assert_eq!(out.failure(), ran(0, ""));
    assert!(!target.exists(), "a dry run performs nothing");
    let audit = node.audit();
    let line = audit.last().unwrap();
    assert_eq!(
        (line["operation"].as_str(), line["decision"].as_str()),
        (Some("exec"), Some("would-do"))
    );
    // Denials are the same in a dry run.
    let call = exec_call(
        &node,
        "/usr/bin/touch",
        &["-c", target.to_str().unwrap()],
        &[],
    );
    let call: Vec<&str> = call.iter().map(String::as_str).collect();
    let mut command = node.command(&driver, &call);
    command.env("FLEX_DRY_RUN", "1");
    assert!(
        finish(command.spawn().unwrap())
            .failure()
            .starts_with("denied: ")
    );
    last_denial(&node);
}
