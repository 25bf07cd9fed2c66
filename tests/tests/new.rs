//! `flex new`, end to end, per language: a project generated into a temporary directory
//! outside the repository, its own unit tests, its build, then the built component through
//! the real `flex` exactly as kubelet drives it (init, mount with a size and an fsGroup, the
//! retried mount, unmount twice, a bad size) under the generated `policy.toml`, and `flex test`
//! (the conformance runner).
//!
//! Each test prints the time from `flex new` to a built driver passing, by phase (run with
//! `--nocapture` to see it). They run one at a time so the times are not shared with each
//! other's builds.
//!
//! What the builds need, all offline:
//! - Rust: the `wasm32-wasip2` target and the SDK's dependencies in cargo's cache (building
//!   the workspace put them there); cargo runs with `CARGO_NET_OFFLINE=true` and the lock file
//!   `flex new` writes;
//! - Python: componentize-py 0.25.1 where `scripts/build-guests.sh` installs it
//!   (`target/guest-tools/python`, or `$COMPONENTIZE_PY`);
//! - JavaScript: node and npm, and componentize-js in npm's cache (`scripts/build-guests.sh`
//!   runs `npm ci` in sdk/js, which fills it); `npm ci --prefer-offline`.

use flex_tests::*;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const NAME: &str = "acme~scratch";

/// One build at a time: two cores, and honest times.
static SERIAL: Mutex<()> = Mutex::new(());

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Runs `command` in `dir`, asserting success; returns its output.
fn run(dir: &Path, program: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let mut command = Command::new(program);
    command
        .args(args)
        .current_dir(dir)
        .stdin(std::process::Stdio::null());
    // The nested cargo builds the project's own target dir, with its own flags.
    for var in [
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
    ] {
        command.env_remove(var);
    }
    command.envs(env.iter().copied());
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "{program} {args:?} in {} failed ({}):\n{text}",
        dir.display(),
        output.status
    );
    text
}

/// `flex new NAME --lang LANG --dir DIR`.
fn flex_new(lang: &str, dir: &Path) -> String {
    let out = Command::new(flex_binary())
        .args(["new", NAME, "--lang", lang, "--dir"])
        .arg(dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "flex new: {out:?}"
    );
    stdout
}

/// Times phases of one language's run and prints them.
struct Clock {
    lang: &'static str,
    start: Instant,
    last: Instant,
    phases: Vec<(&'static str, Duration)>,
}

impl Clock {
    fn start(lang: &'static str) -> Clock {
        let now = Instant::now();
        Clock {
            lang,
            start: now,
            last: now,
            phases: Vec::new(),
        }
    }

    fn lap(&mut self, phase: &'static str) {
        let now = Instant::now();
        self.phases.push((phase, now - self.last));
        self.last = now;
    }

    fn report(&self) {
        let phases: Vec<String> = self
            .phases
            .iter()
            .map(|(phase, d)| format!("{phase} {:.1}s", d.as_secs_f64()))
            .collect();
        eprintln!(
            "flex new --lang {}: {:.1}s from `flex new` to a built driver passing ({})",
            self.lang,
            self.start.elapsed().as_secs_f64(),
            phases.join(", ")
        );
    }
}

/// kubelet's calls against the generated driver under the generated policy.
fn drive_as_kubelet(component: &Path, policy: &Path) {
    require_root();
    let node = Node::new();
    let driver = node.install(NAME, component);
    node.set_policy(NAME, &std::fs::read_to_string(policy).unwrap());

    let reply = node.run(&driver, &["init"]).success();
    assert_eq!(
        reply["capabilities"],
        json!({"attach": false, "selinuxRelabel": true, "supportsMetrics": true,
               "fsGroup": false, "requiresFSResize": false})
    );
    let attach = node.run(&driver, &["attach", &base_json("pv", "", &[]), "node-1"]);
    assert_eq!(attach.status(), "Not supported", "{attach:?}");

    let dir = node.volume_dir(NAME, "pod-a", "scratch");
    let dir_arg = dir.to_str().unwrap();
    let json = mount_json("scratch", false, Some(2000), &[("size", "2Mi")]);
    for _ in 0..2 {
        // kubelet retries: the second mount finds the first.
        node.run(&driver, &["mount", dir_arg, &json]).success();
        let mounted = mounts_at(&dir);
        assert_eq!(mounted.len(), 1, "{mounted:?}");
        assert_eq!(mounted[0].fs_type, "tmpfs");
        for option in ["nosuid", "nodev", "size=2048k", "gid=2000", "mode=2775"] {
            assert!(
                mounted[0].options.iter().any(|o| o == option),
                "{option} missing: {mounted:?}"
            );
        }
    }
    let meta = std::fs::metadata(&dir).unwrap();
    assert_eq!((meta.gid(), meta.mode() & 0o7777), (2000, 0o2775));
    std::fs::write(dir.join("data"), b"hello").unwrap();
    let err = std::fs::write(dir.join("too-big"), vec![7u8; 3 << 20]).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(nix::libc::ENOSPC));
    for _ in 0..2 {
        // kubelet also unmounts a directory that is not mounted.
        node.run(&driver, &["unmount", dir_arg]).success();
        assert!(mounts_at(&dir).is_empty());
    }

    let ro = node.volume_dir(NAME, "pod-ro", "scratch");
    let json = mount_json("scratch", true, None, &[]);
    node.run(&driver, &["mount", ro.to_str().unwrap(), &json])
        .success();
    let mounted = mounts_at(&ro);
    assert!(mounted[0].options.iter().any(|o| o == "ro"), "{mounted:?}");
    assert!(mounted[0].options.iter().any(|o| o == "size=65536k"));
    node.run(&driver, &["unmount", ro.to_str().unwrap()])
        .success();

    let bad = node.volume_dir(NAME, "pod-bad", "scratch");
    let json = mount_json("scratch", false, None, &[("size", "2Ti")]);
    let out = node.run(&driver, &["mount", bad.to_str().unwrap(), &json]);
    assert_eq!(out.failure(), "size \"2Ti\" is out of range: 1 byte to 1Ti");
    assert!(mounts_at(&bad).is_empty());
    assert!(
        node.audit().iter().all(|line| line["decision"] == "allow"),
        "the generated policy grants everything the driver does"
    );
}

/// `flex test --component X --policy P`, the conformance runner.
fn conformance(component: &Path, policy: &Path) {
    let node = Node::new();
    let component = component.to_str().unwrap();
    let policy = policy.to_str().unwrap();
    let out = node.run(
        &flex_binary(),
        &["test", "--component", component, "--policy", policy],
    );
    assert_eq!(out.code, 0, "flex test failed: {out:?}");
    let report = format!("{}{}", out.stdout, out.stderr);
    assert!(report.contains(" 0 failed"), "{report}");
}

/// Generation, unit tests and build per language, then kubelet's calls and `flex test`.
fn new_project_passes(lang: &'static str, build: impl FnOnce(&Path, &mut Clock), component: &str) {
    require_root();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let base = tempfile::tempdir().unwrap();
    assert!(!base.path().starts_with(workspace_root()));
    let dir = base.path().join("acme-scratch");

    let mut clock = Clock::start(lang);
    let steps = flex_new(lang, &dir);
    clock.lap("new");
    assert!(steps.contains(&format!("cd {}", dir.display())), "{steps}");
    assert!(steps.contains(component), "{steps}");
    for file in ["README.md", "policy.toml", ".gitignore"] {
        assert!(dir.join(file).is_file(), "{file}");
    }
    let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
    assert!(
        readme.contains(&format!(
            "flex test --component {component} --policy policy.toml"
        )),
        "{readme}"
    );
    assert!(readme.contains(&format!("    {NAME} {component} --policy policy.toml")));

    build(&dir, &mut clock);
    let component = dir.join(component);
    assert!(component.is_file(), "{} was not built", component.display());

    let policy = dir.join("policy.toml");
    drive_as_kubelet(&component, &policy);
    clock.lap("kubelet calls");
    conformance(&component, &policy);
    clock.lap("flex test");
    clock.report();
}

#[test]
fn a_new_rust_driver_builds_and_passes() {
    new_project_passes(
        "rust",
        |dir, clock| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let offline = [("CARGO_NET_OFFLINE", "true")];
            let lock = std::fs::read_to_string(dir.join("Cargo.lock")).unwrap();
            assert!(lock.contains("name = \"wit-bindgen\""), "{lock}");
            let tests = run(dir, &cargo, &["test"], &offline);
            assert!(tests.contains("test result: ok. 7 passed"), "{tests}");
            clock.lap("cargo test");
            run(
                dir,
                &cargo,
                &["build", "--release", "--target", "wasm32-wasip2"],
                &offline,
            );
            clock.lap("cargo build");
            // The size-optimised release profile: a simple driver stays small.
            let size =
                std::fs::metadata(dir.join("target/wasm32-wasip2/release/acme_scratch.wasm"))
                    .unwrap()
                    .len();
            assert!(size < 200_000, "{size} bytes");
        },
        "target/wasm32-wasip2/release/acme_scratch.wasm",
    );
}

#[test]
fn a_new_python_driver_builds_and_passes() {
    new_project_passes(
        "python",
        |dir, clock| {
            let tool = std::env::var("COMPONENTIZE_PY").unwrap_or_else(|_| {
                let target = std::env::var("CARGO_TARGET_DIR")
                    .map(PathBuf::from)
                    .unwrap_or_else(|_| workspace_root().join("target"));
                let tool = target.join("guest-tools/python/bin/componentize-py");
                assert!(
                    tool.is_file(),
                    "{} is missing: install it with `scripts/build-guests.sh`",
                    tool.display()
                );
                tool.to_string_lossy().into_owned()
            });
            let tests = run(dir, "python3", &["-m", "unittest", "-v"], &[]);
            assert!(tests.contains("Ran 7 tests"), "{tests}");
            clock.lap("unittest");
            run(dir, "./build.sh", &[], &[("COMPONENTIZE_PY", &tool)]);
            clock.lap("build.sh");
        },
        "target/acme_scratch.wasm",
    );
}

#[test]
fn a_new_javascript_driver_builds_and_passes() {
    new_project_passes(
        "js",
        |dir, clock| {
            run(
                dir,
                "npm",
                &["ci", "--prefer-offline", "--no-audit", "--no-fund"],
                &[],
            );
            clock.lap("npm ci");
            let tests = run(dir, "npm", &["test"], &[]);
            assert!(tests.contains("# pass 7"), "{tests}");
            clock.lap("npm test");
            run(dir, "npm", &["run", "build"], &[]);
            clock.lap("npm run build");
        },
        "target/acme_scratch.wasm",
    );
}

#[test]
fn refusals_write_nothing() {
    let base = tempfile::tempdir().unwrap();
    let new = |args: &[&str]| {
        Command::new(flex_binary())
            .arg("new")
            .args(args)
            .current_dir(base.path())
            .output()
            .unwrap()
    };
    // An invalid name, with install's rule.
    for name in ["acme", "acme~", "a~b~c", "acme~x/y", "acme~.x"] {
        let out = new(&[name, "--lang", "rust"]);
        assert_eq!(out.status.code(), Some(1), "{name}: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("invalid driver name"),
            "{name}: {out:?}"
        );
    }
    assert_eq!(std::fs::read_dir(base.path()).unwrap().count(), 0);
    // An unknown language is a usage error.
    let out = new(&[NAME, "--lang", "cobol"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    // A directory that is not empty.
    let taken = base.path().join("taken");
    std::fs::create_dir(&taken).unwrap();
    std::fs::write(taken.join("notes.txt"), "mine").unwrap();
    let out = new(&[NAME, "--lang", "python", "--dir", taken.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not empty"));
    assert_eq!(std::fs::read_dir(&taken).unwrap().count(), 1);
    // The default directory is ./vendor-driver, and rust the default language.
    let out = new(&[NAME]);
    assert!(out.status.success(), "{out:?}");
    assert!(base.path().join("acme-scratch/src/lib.rs").is_file());
    assert!(
        base.path()
            .join("acme-scratch/vendor/flex-guest-sdk/wit/flex.wit")
            .is_file()
    );
    // Once there, never again.
    let out = new(&[NAME]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
}

#[test]
fn help_names_the_languages() {
    let out = Command::new(flex_binary())
        .args(["new", "--help"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    for word in [
        "Usage: flex new",
        "--lang",
        "rust",
        "python",
        "js",
        "--dir",
        "Examples",
    ] {
        assert!(text.contains(word), "{word}: {text}");
    }
}

/// The Rust SDK as crates.io would take it: `cargo publish --dry-run` packages it (the WIT
/// inside, as files: `guest-sdk/wit` is a symlink to the repository's) and builds the package
/// on its own, outside the workspace. It needs crates.io, as CI's build does.
#[test]
fn the_rust_sdk_is_publishable() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let offline = [("CARGO_NET_OFFLINE", "true")];
    let root = workspace_root();
    let sdk = ["-p", "flex-guest-sdk", "--allow-dirty"];
    let files = run(
        &root,
        &cargo,
        &[&["package", "--list"][..], &sdk].concat(),
        &offline,
    );
    for file in ["wit/flex.wit", "src/lib.rs", "README.md", "Cargo.toml"] {
        assert!(files.lines().any(|line| line == file), "{file}: {files}");
    }
    // Online: a dry run asks crates.io what it would be published over.
    let out = run(
        &root,
        &cargo,
        &[&["publish", "--dry-run"][..], &sdk].concat(),
        &[],
    );
    assert!(out.contains("Compiling flex-guest-sdk"), "{out}");
    assert!(out.contains("aborting upload due to dry run"), "{out}");
}
