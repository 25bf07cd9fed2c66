//! `flex test`, the conformance runner: the shipped drivers pass (the tmpfs component through
//! this flex, the loop driver installed as kubelet finds it), a minimal correct shell driver
//! passes, and a broken shell driver fails with a message naming each of its problems. Each
//! run's scratch node lives under the test's own directory, which must be empty afterwards:
//! nothing mounted, no loop device, no leftover directory.

use flex_tests::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

fn workspace(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join(relative)
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

impl Run {
    /// The lines of one kind: `PASS`, `FAIL`, `SKIP` or `WARN`.
    fn lines(&self, tag: &str) -> Vec<&str> {
        self.stdout
            .lines()
            .filter(|l| l.starts_with(&format!("{tag}  ")))
            .collect()
    }

    /// The case's line with its warning lines.
    fn line(&self, tag: &str, case: &str) -> String {
        let lines: Vec<&str> = self.stdout.lines().collect();
        let start = lines
            .iter()
            .position(|l| {
                l.strip_prefix(&format!("{tag}  "))
                    .is_some_and(|l| l.starts_with(case))
            })
            .unwrap_or_else(|| panic!("no {tag} line for {case:?}:\n{}", self.stdout));
        let more = lines[start + 1..]
            .iter()
            .take_while(|l| l.starts_with("      "))
            .count();
        lines[start..=start + more].join("\n")
    }

    fn passed(&self) {
        assert_eq!(
            (self.code, self.lines("FAIL")),
            (0, Vec::<&str>::new()),
            "{}\n{}",
            self.stdout,
            self.stderr
        );
    }
}

/// `flex test ARGS` as root at a shell, its scratch nodes under the node's directory.
fn flex_test(node: &Node, args: &[&str]) -> Run {
    let base = node.path("runs");
    let started = Instant::now();
    let output = node
        .command(&flex_binary(), &["test"])
        .args(args)
        .arg("--scratch-base")
        .arg(&base)
        .output()
        .expect("exec flex test");
    let run = Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        elapsed: started.elapsed(),
    };
    // Torn down whatever the result: no mount, no loop device, no run directory left.
    assert!(
        mounts_under(&base).is_empty(),
        "{:?}\n{}",
        mounts_under(&base),
        run.stdout
    );
    assert!(loop_devices_under(&base).is_empty(), "{}", run.stdout);
    let left: Vec<_> = std::fs::read_dir(&base)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left behind: {left:?}\n{}", run.stderr);
    println!(
        "flex test {args:?}: {:.2} s\n{}",
        run.elapsed.as_secs_f64(),
        run.stdout
    );
    run
}

/// Counts in JUnit XML, read by Python's XML parser (a well-formedness check too).
fn junit_counts(file: &Path) -> (u64, u64, u64, u64) {
    const SCRIPT: &str = "import sys, xml.etree.ElementTree as E\n\
        r = E.parse(sys.argv[1]).getroot(); s = r.find('testsuite'); c = s.findall('testcase')\n\
        assert r.tag == 'testsuites' and int(s.get('tests')) == len(c)\n\
        f = sum(1 for t in c if t.find('failure') is not None)\n\
        k = sum(1 for t in c if t.find('skipped') is not None)\n\
        assert int(s.get('failures')) == f and int(s.get('skipped')) == k\n\
        print(len(c), f, k, int(s.get('errors')))\n";
    let output = Command::new("python3")
        .args(["-c", SCRIPT])
        .arg(file)
        .output()
        .expect("python3");
    assert!(
        output.status.success(),
        "invalid JUnit XML: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        std::fs::read_to_string(file).unwrap_or_default()
    );
    let text = String::from_utf8_lossy(&output.stdout);
    let n: Vec<u64> = text
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    (n[0], n[1], n[2], n[3])
}

#[test]
fn the_tmpfs_component_passes() {
    require_root();
    let node = Node::new();
    let junit = node.path("tmpfs.xml");
    let component = guest("flex_tmpfs");
    let policy = workspace("plugins/tmpfs/policy.toml");
    let run = flex_test(
        &node,
        &[
            "--component",
            component.to_str().unwrap(),
            "--policy",
            policy.to_str().unwrap(),
            "--options",
            "size=8Mi",
            "--junit",
            junit.to_str().unwrap(),
        ],
    );
    run.passed();
    for case in [
        "init: succeeds",
        "init: capabilities explicit",
        "mount: repeated call succeeds",
        "mount: volume mounted and writable",
        "mount: fsGroup: the driver applies fsGroup 2000 itself",
        "mount: read-only volume (readwrite: ro)",
        "unmount: never-mounted directory",
        "unmount: nothing left mounted",
        "sandbox: deny by default: mount failed (",
        "sandbox: dry run performs nothing",
        "secrets: not in driver output",
        "secrets: not in flex.log or audit.jsonl",
        "teardown: no mounts left",
        "mount: one JSON reply on stdout+stderr",
        "mount: exit code matches status",
    ] {
        run.line("PASS", case);
    }
    // A mount-only driver: the attach verbs are never called.
    assert!(!run.stdout.contains("attach:"), "{}", run.stdout);
    let summary = run.stdout.lines().last().unwrap();
    assert!(
        summary.starts_with("flex test: ") && summary.ends_with("conformant"),
        "{summary}"
    );
    let cases = run.lines("PASS").len() + run.lines("WARN").len() + run.lines("SKIP").len();
    let (tests, failures, skipped, errors) = junit_counts(&junit);
    assert_eq!(
        (tests, failures, skipped, errors),
        (cases as u64, 0, run.lines("SKIP").len() as u64, 0)
    );
}

#[test]
fn the_installed_loop_driver_passes() {
    require_root();
    let node = Node::new();
    let driver = node.install("flex~loop", &guest("flex_loop"));
    // Installed with its shipped policy; `flex test` moves the image dir into its scratch node.
    node.set_policy("flex~loop", &shipped_policy("loop"));
    let node_images = Path::new("/var/lib/flex/images/flex~loop");
    let images_before = std::fs::read_dir(node_images).map_or(0, |d| d.count());
    let run = flex_test(
        &node,
        &[
            "--driver",
            driver.to_str().unwrap(),
            // xfs: growing a mounted ext4 needs CAP_SYS_RESOURCE, which some containers drop
            // even for root (the loop tests check that failure); mkfs.xfs wants 300 MB.
            "--fs-type",
            "xfs",
            "--options",
            "size=320Mi",
        ],
    );
    run.passed();
    assert!(run.stdout.contains("flex driver"), "{}", run.stdout);
    for case in [
        "init: capabilities explicit",
        "attach: succeeds",
        "attach: repeated call succeeds",
        "waitforattach: succeeds",
        "mountdevice: succeeds",
        "mountdevice: repeated call succeeds",
        "mount: volume mounted and writable: xfs",
        "mount: read-only volume (readwrite: ro)",
        "isattached: attached while in use",
        "expandfs: file system grew",
        "unmountdevice: device mount path clean",
        "detach: repeated call succeeds",
        "sandbox: deny by default",
        "sandbox: dry run performs nothing",
        "teardown: no loop devices left",
    ] {
        run.line("PASS", case);
    }
    // Nothing of the run reached the node's own image dir.
    let images_after = std::fs::read_dir(node_images).map_or(0, |d| d.count());
    assert_eq!(images_before, images_after);
}

#[test]
fn the_loop_driver_on_the_nodes_own_directories() {
    require_root();
    let node = Node::new();
    let driver = node.install("flex~loop", &guest("flex_loop"));
    let images = node.path("images");
    let policy =
        shipped_policy("loop").replace("/var/lib/flex/images/flex~loop", images.to_str().unwrap());
    node.set_policy("flex~loop", &policy);
    let run = flex_test(
        &node,
        &[
            "--driver",
            driver.to_str().unwrap(),
            "--env",
            "node",
            "--fs-type",
            "xfs",
            "-o",
            "size=320Mi",
        ],
    );
    run.passed();
    assert!(run.stdout.contains("node env"), "{}", run.stdout);
    run.line("PASS", "secrets: not in flex.log or audit.jsonl");
    // The calls went to the node's log, and the run's images were deleted from its image dir.
    assert!(node.log().contains("\"verb\":\"mountdevice\""));
    let left: Vec<_> = std::fs::read_dir(&images)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    assert!(loop_devices_under(&images).is_empty());
}

#[test]
fn a_minimal_shell_driver_passes() {
    require_root();
    let node = Node::new();
    let junit = node.path("sh.xml");
    let driver = fixture("tmpfs-driver.sh");
    let run = flex_test(
        &node,
        &[
            "--driver",
            driver.to_str().unwrap(),
            "--junit",
            junit.to_str().unwrap(),
        ],
    );
    run.passed();
    assert!(run.lines("WARN").is_empty(), "{}", run.stdout);
    run.line("PASS", "mount: fsGroup: fsGroup: true, and kubelet's chown");
    run.line("PASS", "mount: read-only volume (readwrite: ro)");
    // Not a flex driver: no sandbox checks, no flex log to search.
    assert!(!run.stdout.contains("sandbox:"), "{}", run.stdout);
    assert!(!run.stdout.contains("flex.log"), "{}", run.stdout);
    assert_eq!(junit_counts(&junit).1, 0);
}

#[test]
fn a_broken_shell_driver_fails_naming_each_problem() {
    require_root();
    let node = Node::new();
    let junit = node.path("broken.xml");
    let driver = fixture("broken-driver.sh");
    let run = flex_test(
        &node,
        &[
            "--driver",
            driver.to_str().unwrap(),
            "--junit",
            junit.to_str().unwrap(),
        ],
    );
    assert_eq!(run.code, 1, "{}", run.stdout);
    let fail = |case: &str, says: &str| {
        let line = run.line("FAIL", case);
        assert!(line.contains(says), "{line}");
    };
    fail(
        "unmount: one JSON reply on stdout+stderr",
        "2 JSON documents",
    );
    fail("unmount: succeeds", "2 JSON documents");
    fail("mount: repeated call succeeds", "already mounted");
    fail("mount: read-only volume (readwrite: ro)", "is rw");
    fail("secrets: not in driver output", "mount printed the secret");
    let warned = run.line("WARN", "mount: exit code matches status");
    assert!(warned.contains("\"Failure\" with exit code 0"), "{warned}");
    let caps = run.line("WARN", "init: capabilities explicit");
    assert!(
        caps.contains("fsGroup absent: kubelet assumes true"),
        "{caps}"
    );
    assert!(run.stdout.contains("NOT CONFORMANT"), "{}", run.stdout);
    let (_, failures, _, _) = junit_counts(&junit);
    assert_eq!(failures, run.lines("FAIL").len() as u64);

    // --strict: the warnings fail too.
    let strict = flex_test(
        &node,
        &["--driver", driver.to_str().unwrap(), "--strict", "-q"],
    );
    assert_eq!(strict.code, 1);
    strict.line("FAIL", "mount: exit code matches status");
    assert!(strict.lines("PASS").is_empty(), "-q prints failures only");
}

#[test]
fn a_hanging_driver_is_bounded_and_cleaned_up() {
    require_root();
    let node = Node::new();
    let driver = node.path("hang~hang/hang");
    std::fs::create_dir_all(driver.parent().unwrap()).unwrap();
    // Mounts, then hangs in a child that keeps stdout open (kubelet would wait forever).
    let script = std::fs::read_to_string(fixture("tmpfs-driver.sh"))
        .unwrap()
        .replace(
            "    mountpoint -q \"$dir\" && ok\n",
            "    mount -t tmpfs tmpfs \"$dir\"; sleep 300 &\n    mountpoint -q \"$dir\" && ok\n",
        );
    std::fs::write(&driver, script).unwrap();
    let executable = std::os::unix::fs::PermissionsExt::from_mode(0o755);
    std::fs::set_permissions(&driver, executable).unwrap();
    let run = flex_test(
        &node,
        &["--driver", driver.to_str().unwrap(), "--timeout", "2"],
    );
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(run.stdout.contains("as hang~hang"), "{}", run.stdout);
    let line = run.line("FAIL", "mount: succeeds");
    assert!(line.contains("kept stdout/stderr open"), "{line}");
    assert!(run.elapsed < Duration::from_secs(40), "{:?}", run.elapsed);
}

#[test]
fn skipped_verbs_are_reported_and_the_cleanup_still_unmounts() {
    require_root();
    let node = Node::new();
    let driver = fixture("tmpfs-driver.sh");
    // Without unmount the driver's mounts stay: the runner's cleanup removes them (checked
    // in flex_test), and the teardown cases say why they did not run.
    let run = flex_test(
        &node,
        &["--driver", driver.to_str().unwrap(), "--skip", "unmount"],
    );
    run.passed();
    run.line("SKIP", "unmount: succeeds: --skip/--only");
    run.line("SKIP", "teardown: no mounts left");
}

#[test]
fn usage_errors_and_missing_drivers() {
    require_root();
    let node = Node::new();
    let usage = Command::new(flex_binary()).arg("test").output().unwrap();
    assert_eq!(usage.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&usage.stderr).contains("--driver"));
    let bad_skip = Command::new(flex_binary())
        .args(["test", "--driver", "/bin/true", "--skip", "mount,nonsense"])
        .output()
        .unwrap();
    assert_eq!(bad_skip.status.code(), Some(2));
    let missing = flex_test(&node, &["--driver", "/nonexistent/acme~x/x"]);
    assert_eq!(missing.code, 1);
    assert!(
        missing.stderr.contains("/nonexistent/acme~x/x"),
        "{}",
        missing.stderr
    );
    // `test` is an operator command, never a FlexVolume verb kubelet could send.
    let help = Command::new(flex_binary())
        .args(["help", "test"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("--junit"));
}
