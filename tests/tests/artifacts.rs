//! Pinned means pinned: compiled artifacts (native code, run outside the sandbox) come only
//! from the node's root-only cache, are bound to the bytes of the component they were compiled
//! from, and a digest pin holds against every way of swapping one. Through the real binary;
//! each test checks the files, their owners and modes, and which code ran.

use flex_tests::*;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Length of the trailer flex appends to wasmtime's artifact (see host/src/artifact.rs):
/// digest (32), identity (56), engine (8), checksum (8), body length (8), magic (8).
const TRAILER_LEN: usize = 120;
const IDENTITY: std::ops::Range<usize> = 32..88;

fn sha256_of(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    format!("sha256:{}", text.split_whitespace().next().unwrap())
}

fn tmpfs_node() -> (Node, PathBuf) {
    require_root();
    let node = Node::new();
    let driver = node.install("flex~tmpfs", &guest("flex_tmpfs"));
    node.set_policy("flex~tmpfs", &shipped_policy("tmpfs"));
    (node, driver)
}

/// The `message` of every host log line.
fn messages(node: &Node) -> Vec<String> {
    node.log()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter_map(|line| line["message"].as_str().map(String::from))
        .collect()
}

fn compiles(node: &Node) -> usize {
    messages(node)
        .iter()
        .filter(|m| m.starts_with("compiled "))
        .count()
}

/// Did the hostile guest run? Its `print` attack writes to stdout, which lands in the log.
fn hostile_ran(node: &Node) -> bool {
    node.log().contains("noise on stderr")
}

/// `mount` with the hostile guest's `print` attack: the tmpfs driver mounts a tmpfs, the
/// hostile one prints and fails.
fn mount_or_attack(node: &Node, driver: &Path, dir: &Path) -> Output {
    let json = mount_json("vol", false, None, &[("attack", "print")]);
    node.run(driver, &["mount", dir.to_str().unwrap(), &json])
}

/// A root-owned, 0600 regular file in a 0700 root cache dir: the state flex leaves.
fn assert_root_only(node: &Node, artifact: &Path) {
    let dir = node.cache_dir().symlink_metadata().unwrap();
    assert!(dir.is_dir());
    assert_eq!((dir.uid(), dir.mode() & 0o7777), (0, 0o700), "cache dir");
    let meta = artifact.symlink_metadata().unwrap();
    assert!(meta.is_file(), "{}", artifact.display());
    assert_eq!(
        (meta.uid(), meta.mode() & 0o7777),
        (0, 0o600),
        "{}",
        artifact.display()
    );
}

/// The one artifact in the node's cache.
fn only_artifact(node: &Node) -> PathBuf {
    let artifacts = node.artifacts();
    assert_eq!(artifacts.len(), 1, "{artifacts:?}");
    artifacts[0].clone()
}

/// An artifact compiled from `component` on a scratch node: native code of another driver.
fn artifact_of(component: &Path) -> Vec<u8> {
    let node = Node::new();
    let driver = node.install("x~hostile", component);
    node.run(&driver, &["init"]).success();
    std::fs::read(only_artifact(&node)).unwrap()
}

/// `attacker`'s artifact relabelled for `victim`'s component: its trailer's identity replaced
/// by the victim's, so nothing but the recorded digest tells them apart.
fn forge(attacker: &[u8], victim: &[u8]) -> Vec<u8> {
    let mut forged = attacker.to_vec();
    let (a, v) = (forged.len() - TRAILER_LEN, victim.len() - TRAILER_LEN);
    forged[a + IDENTITY.start..a + IDENTITY.end]
        .copy_from_slice(&victim[v + IDENTITY.start..v + IDENTITY.end]);
    forged
}

fn plant(path: &Path, bytes: &[u8], mode: u32) {
    std::fs::write(path, bytes).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A component padded with a custom section to exactly `len` bytes.
fn padded(component: &Path, len: usize) -> Vec<u8> {
    let mut bytes = std::fs::read(component).unwrap();
    let name = b"flex-test-padding";
    let leb = |mut n: usize| {
        let mut out = Vec::new();
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return out;
            }
            out.push(byte | 0x80);
        }
    };
    let room = len - bytes.len(); // id byte + size + name length + name + payload
    let size_len = (1..=5)
        .find(|&l| leb(room - 1 - l).len() == l)
        .expect("a section size");
    let size = room - 1 - size_len;
    bytes.push(0);
    bytes.extend(leb(size));
    bytes.extend(leb(name.len()));
    bytes.extend_from_slice(name);
    bytes.resize(len, 0);
    assert_eq!(bytes.len(), len);
    bytes
}

#[test]
fn artifacts_planted_beside_the_component_or_in_the_plugin_dir_are_ignored() {
    let (node, driver) = tmpfs_node();
    let dir = driver.parent().unwrap().to_path_buf();
    node.run(&driver, &["init"]).success();
    let honest = only_artifact(&node);
    let name = honest.file_name().unwrap().to_owned();
    assert_root_only(&node, &honest);
    // Hostile code, labelled for this very component, everywhere flex used to look or might
    // look: beside the component (old layout), at the top of the plugin dir, under the name
    // the cache uses; then the cached one is removed.
    let forged = forge(
        &artifact_of(&guest("flex_hostile")),
        &std::fs::read(&honest).unwrap(),
    );
    let planted = [
        dir.join(&name),
        dir.join(".tmpfs.wasm.0123456789abcdef.cwasm"),
        dir.join("tmpfs.cwasm"),
        node.path("plugins").join(&name),
    ];
    for path in &planted {
        plant(path, &forged, 0o644);
    }
    std::fs::remove_file(&honest).unwrap();

    let pod = node.pod_dir("pod-a");
    mount_or_attack(&node, &driver, &pod).success();
    assert!(!hostile_ran(&node), "a planted artifact was loaded");
    assert_eq!(mounts_at(&pod).len(), 1, "the tmpfs driver mounted");
    assert_eq!(compiles(&node), 2, "compiled again from the component");
    assert_eq!(only_artifact(&node), honest);
    assert_root_only(&node, &honest);
    for path in &planted {
        assert_eq!(std::fs::read(path).unwrap(), forged, "{}", path.display());
    }
    node.run(&driver, &["unmount", pod.to_str().unwrap()])
        .success();
}

#[test]
fn an_artifact_not_owned_by_root_or_writable_by_others_is_replaced() {
    let (node, driver) = tmpfs_node();
    node.run(&driver, &["init"]).success();
    let artifact = only_artifact(&node);
    let honest = std::fs::read(&artifact).unwrap();
    // A forgery that would run hostile code if it were trusted: only where it lives and who
    // owns it tells it apart (this policy pins no digest).
    let forged = forge(&artifact_of(&guest("flex_hostile")), &honest);
    type Tamper = fn(&Path);
    let cases: [(&str, Tamper, &str); 4] = [
        (
            "owned by another user",
            |p| std::os::unix::fs::chown(p, Some(1000), Some(1000)).unwrap(),
            "owned by uid 1000",
        ),
        (
            "world-writable",
            |p| std::fs::set_permissions(p, PermissionsExt::from_mode(0o666)).unwrap(),
            "writable by group or others",
        ),
        (
            "group-writable",
            |p| std::fs::set_permissions(p, PermissionsExt::from_mode(0o620)).unwrap(),
            "writable by group or others",
        ),
        (
            "owned by another group and group-writable",
            |p| {
                std::os::unix::fs::chown(p, Some(0), Some(1000)).unwrap();
                std::fs::set_permissions(p, PermissionsExt::from_mode(0o660)).unwrap()
            },
            "writable by group or others",
        ),
    ];
    for (round, (what, tamper, why)) in cases.into_iter().enumerate() {
        plant(&artifact, &forged, 0o600);
        tamper(&artifact);
        let pod = node.pod_dir(&format!("pod-{round}"));
        mount_or_attack(&node, &driver, &pod).success();
        assert!(!hostile_ran(&node), "{what}: the forgery ran");
        assert_eq!(mounts_at(&pod).len(), 1, "{what}");
        let discarded = format!("discarding artifact {}: {why}", artifact.display());
        assert!(
            messages(&node).iter().any(|m| m.starts_with(&discarded)),
            "{what}: {}",
            node.log()
        );
        assert_eq!(compiles(&node), round + 2, "{what}: rebuilt");
        assert_eq!(only_artifact(&node), artifact);
        assert_root_only(&node, &artifact);
        assert_eq!(std::fs::read(&artifact).unwrap(), honest, "{what}");
        node.run(&driver, &["unmount", pod.to_str().unwrap()])
            .success();
    }
}

#[test]
fn an_unsafe_cache_dir_fails_the_call_and_nothing_runs() {
    let (node, driver) = tmpfs_node();
    node.run(&driver, &["init"]).success();
    let cache = node.cache_dir();
    type Tamper = fn(&Path);
    let cases: [(&str, Tamper, Tamper, &str); 3] = [
        (
            "world-writable",
            |p| std::fs::set_permissions(p, PermissionsExt::from_mode(0o777)).unwrap(),
            |p| std::fs::set_permissions(p, PermissionsExt::from_mode(0o700)).unwrap(),
            "writable by group or others (mode 777)",
        ),
        (
            "group-writable",
            |p| std::fs::set_permissions(p, PermissionsExt::from_mode(0o770)).unwrap(),
            |p| std::fs::set_permissions(p, PermissionsExt::from_mode(0o700)).unwrap(),
            "writable by group or others (mode 770)",
        ),
        (
            "owned by another user",
            |p| std::os::unix::fs::chown(p, Some(1000), None).unwrap(),
            |p| std::os::unix::fs::chown(p, Some(0), None).unwrap(),
            "owned by uid 1000, not 0",
        ),
    ];
    for (what, tamper, restore, why) in cases {
        tamper(&cache);
        let pod = node.pod_dir("pod");
        let message = mount_or_attack(&node, &driver, &pod).failure();
        assert!(
            message.starts_with("refusing artifact cache") && message.contains(why),
            "{what}: {message}"
        );
        assert!(mounts_at(&pod).is_empty(), "{what}: the driver ran");
        restore(&cache);
    }
    // An ancestor of the cache that others can write (and that is not sticky) is refused too.
    let open = node.path("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = node
        .command(&driver, &["init"])
        .env("FLEX_CACHE_DIR", open.join("cache"))
        .output()
        .unwrap();
    let reply: Value = serde_json::from_slice(&out.stdout).unwrap();
    let message = reply["message"].as_str().unwrap();
    assert!(
        message.contains(&format!(
            "{} is writable by group or others",
            open.display()
        )),
        "{message}"
    );
    assert!(!open.join("cache").exists(), "nothing created under it");
    assert_eq!(compiles(&node), 1);
}

#[test]
fn an_artifact_of_another_component_is_refused_under_a_digest_pin() {
    let (node, driver) = tmpfs_node();
    let tmpfs = guest("flex_tmpfs");
    let hostile = guest("flex_hostile");
    let pin = sha256_of(&tmpfs);
    let pinned = format!("digest = \"{pin}\"\n{}", shipped_policy("tmpfs"));
    node.set_policy("flex~tmpfs", &pinned);
    node.run(&driver, &["init"]).success();
    let artifact = only_artifact(&node);
    let honest = std::fs::read(&artifact).unwrap();
    let attacker = artifact_of(&hostile);

    // 1. The hostile artifact as it is, swapped in by name: it records another component's
    //    identity, so it is discarded and the component compiled again; the pin holds.
    plant(&artifact, &attacker, 0o600);
    let pod = node.pod_dir("pod-a");
    mount_or_attack(&node, &driver, &pod).success();
    assert!(!hostile_ran(&node));
    assert_eq!(mounts_at(&pod).len(), 1);
    assert!(
        messages(&node)
            .iter()
            .any(|m| m.ends_with("compiled from another component file")),
        "{}",
        node.log()
    );
    assert_eq!(std::fs::read(&artifact).unwrap(), honest, "rebuilt");
    node.run(&driver, &["unmount", pod.to_str().unwrap()])
        .success();

    // 2. Relabelled for this component: only the digest it records (of the bytes it was
    //    compiled from) differs. Refused before anything of it is mapped; nothing runs.
    let forged = forge(&attacker, &honest);
    plant(&artifact, &forged, 0o600);
    let compiled_before = compiles(&node);
    let pod = node.pod_dir("pod-b");
    let message = mount_or_attack(&node, &driver, &pod).failure();
    let hostile_digest = sha256_of(&hostile);
    assert_eq!(
        message,
        format!(
            "denied: refusing driver component {}: its digest is {hostile_digest}, the policy requires {pin}",
            driver.with_file_name("tmpfs.wasm").display()
        )
    );
    assert!(!hostile_ran(&node));
    assert!(mounts_at(&pod).is_empty());
    assert_eq!(compiles(&node), compiled_before, "refused, not rebuilt");
    assert_eq!(std::fs::read(&artifact).unwrap(), forged);

    // Control: the forgery is live code. Unpinned, a root-written cache entry is trusted,
    // which is why only root can write the cache.
    node.set_policy("flex~tmpfs", &shipped_policy("tmpfs"));
    assert_eq!(
        mount_or_attack(&node, &driver, &pod).failure(),
        "printed to stdout and stderr"
    );
    assert!(hostile_ran(&node));
}

#[test]
fn a_component_replaced_in_place_is_recompiled_and_the_pin_holds() {
    require_root();
    let node = Node::new();
    let (tmpfs, hostile) = (guest("flex_tmpfs"), guest("flex_hostile"));
    let len = tmpfs
        .metadata()
        .unwrap()
        .len()
        .max(hostile.metadata().unwrap().len()) as usize
        + 64;
    let victim = node.path("victim.wasm");
    std::fs::write(&victim, padded(&tmpfs, len)).unwrap();
    let attacker = padded(&hostile, len);
    let driver = node.install("flex~tmpfs", &victim);
    let component = driver.with_file_name("tmpfs.wasm");
    let pin = sha256_of(&component);
    let pinned = format!("digest = \"{pin}\"\n{}", shipped_policy("tmpfs"));
    node.set_policy("flex~tmpfs", &pinned);
    node.run(&driver, &["init"]).success();
    let first = only_artifact(&node);

    // Same inode, same size, same mtime (restored as `touch -r` would): only ctime moves.
    let before = component.metadata().unwrap();
    {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .open(&component)
            .unwrap();
        file.write_all(&attacker).unwrap();
        file.set_times(
            std::fs::FileTimes::new()
                .set_modified(before.modified().unwrap())
                .set_accessed(before.accessed().unwrap()),
        )
        .unwrap();
    }
    let after = component.metadata().unwrap();
    assert_eq!(
        (after.ino(), after.size(), after.mtime(), after.mtime_nsec()),
        (
            before.ino(),
            before.size(),
            before.mtime(),
            before.mtime_nsec()
        )
    );
    assert_ne!(
        (after.ctime(), after.ctime_nsec()),
        (before.ctime(), before.ctime_nsec())
    );

    let pod = node.pod_dir("pod");
    let message = mount_or_attack(&node, &driver, &pod).failure();
    let attacker_digest = sha256_of(&component);
    assert!(
        message.starts_with("denied: refusing driver component")
            && message.contains(&format!("its digest is {attacker_digest}")),
        "{message}"
    );
    assert!(!hostile_ran(&node));
    assert!(mounts_at(&pod).is_empty());
    assert_eq!(compiles(&node), 2, "recompiled from the new bytes");
    // The artifact of the old contents (same inode) is gone; the new one is the new bytes'.
    let second = only_artifact(&node);
    assert_ne!(second, first);
    assert_root_only(&node, &second);

    // Control: unpinned, the recompiled artifact is indeed the new contents.
    node.set_policy("flex~tmpfs", &shipped_policy("tmpfs"));
    mount_or_attack(&node, &driver, &pod).failure();
    assert!(hostile_ran(&node));
    assert_eq!(compiles(&node), 2);
}

#[test]
fn symlinks_in_place_of_the_cache_or_an_artifact_are_refused() {
    let (node, driver) = tmpfs_node();
    // The cache dir itself a symlink to a root-only directory.
    let real = node.path("real-cache");
    std::fs::create_dir(&real).unwrap();
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::symlink(&real, node.cache_dir()).unwrap();
    let message = node.run(&driver, &["init"]).failure();
    assert_eq!(
        message,
        format!(
            "refusing artifact cache {0}: {0} is a symlink or not a directory",
            node.cache_dir().display()
        )
    );
    assert_eq!(
        std::fs::read_dir(&real).unwrap().count(),
        0,
        "nothing written"
    );

    // A symlink on the way to it.
    std::fs::rename(&real, node.path("real")).unwrap();
    std::fs::remove_file(node.cache_dir()).unwrap();
    std::os::unix::fs::symlink(node.path("real"), node.path("link")).unwrap();
    let out = node
        .command(&driver, &["init"])
        .env("FLEX_CACHE_DIR", node.path("link/cache"))
        .output()
        .unwrap();
    let reply: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        reply["message"]
            .as_str()
            .unwrap()
            .contains(&format!("{} is a symlink", node.path("link").display())),
        "{reply}"
    );
    assert_eq!(std::fs::read_dir(node.path("real")).unwrap().count(), 0);

    // An artifact replaced by a symlink to a root-only forgery elsewhere.
    node.run(&driver, &["init"]).success();
    let artifact = only_artifact(&node);
    let forged = forge(
        &artifact_of(&guest("flex_hostile")),
        &std::fs::read(&artifact).unwrap(),
    );
    let elsewhere = node.path("forged.cwasm");
    plant(&elsewhere, &forged, 0o600);
    std::fs::remove_file(&artifact).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &artifact).unwrap();
    let pod = node.pod_dir("pod");
    mount_or_attack(&node, &driver, &pod).success();
    assert!(!hostile_ran(&node));
    assert!(
        messages(&node)
            .iter()
            .any(|m| m == &format!("discarding artifact {}: a symlink", artifact.display())),
        "{}",
        node.log()
    );
    assert_root_only(&node, &artifact);
    assert_eq!(
        std::fs::read(&elsewhere).unwrap(),
        forged,
        "target untouched"
    );
    node.run(&driver, &["unmount", pod.to_str().unwrap()])
        .success();
}

#[test]
fn concurrent_first_calls_compile_once() {
    let (node, driver) = tmpfs_node();
    let barrier = std::sync::Barrier::new(8);
    std::thread::scope(|scope| {
        let calls: Vec<_> = (0..8)
            .map(|_| {
                scope.spawn(|| {
                    barrier.wait();
                    node.run(&driver, &["init"]).success();
                })
            })
            .collect();
        calls.into_iter().for_each(|call| call.join().unwrap());
    });
    assert_eq!(compiles(&node), 1, "{}", node.log());
    let waited = messages(&node)
        .iter()
        .filter(|m| m.contains("compiled by a concurrent call"))
        .count();
    assert!(waited <= 7, "{waited}");
    let artifact = only_artifact(&node);
    assert_root_only(&node, &artifact);
    let mut entries: Vec<String> = std::fs::read_dir(node.cache_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    let name = artifact.file_name().unwrap().to_string_lossy().into_owned();
    assert_eq!(entries, [".compile.lock".to_string(), name], "no leftovers");
    let lock = node.cache_dir().join(".compile.lock").metadata().unwrap();
    assert_eq!((lock.uid(), lock.mode() & 0o7777), (0, 0o600));
}

/// Writes an executable `sh` script at `node`'s `bin/<name>` that stands in for flex-compile.
fn compiler_script(node: &Node, name: &str, body: &str) -> PathBuf {
    let bin = node.path("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let script = bin.join(name);
    std::fs::write(&script, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

/// A compile runs as root for as long as it takes: it gets a memory limit that grows with the
/// component, it dies with the `flex` that started it (kubelet killing a slow call must not
/// leave a root compiler running), and running out of memory is reported as such.
#[test]
fn a_compiler_is_memory_bounded_and_dies_with_flex() {
    let (node, driver) = tmpfs_node();
    // Records its data limit (KiB) and its pid, then hangs as a slow compile would.
    let slow = compiler_script(
        &node,
        "slow-compile",
        r#"ulimit -d > "$0.limit"; echo $$ > "$0.tmp"; mv "$0.tmp" "$0.pid"; exec sleep 60"#,
    );
    let mut call = node
        .command(&driver, &["init"])
        .env("FLEX_COMPILER", &slow)
        .spawn()
        .expect("exec flex");
    let pid_file = slow.with_extension("pid");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !pid_file.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the compiler never ran"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let compiler: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    call.kill().unwrap();
    call.wait().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !exited(compiler) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let survived = !exited(compiler);
    if survived {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(compiler),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    assert!(!survived, "the compiler outlived the killed flex");

    // 512 MiB plus 24 bytes per byte of component (host/src/artifact.rs), in KiB.
    let component = node.path("plugins/flex~tmpfs/tmpfs.wasm");
    let expected = ((512u64 << 20) + 24 * component.metadata().unwrap().len()) / 1024;
    let limit = std::fs::read_to_string(slow.with_extension("limit")).unwrap();
    assert_eq!(
        limit.trim(),
        expected.to_string(),
        "RLIMIT_DATA of the compiler"
    );

    // What Rust's allocator prints before it aborts on a refused allocation.
    let hungry = compiler_script(
        &node,
        "hungry-compile",
        r#"echo "memory allocation of 1048576 bytes failed" >&2; kill -ABRT $$"#,
    );
    let out = node
        .command(&driver, &["init"])
        .env("FLEX_COMPILER", &hungry)
        .output()
        .expect("exec flex");
    let message = Output::from(out).failure();
    assert!(
        message.contains("needed more than its memory limit")
            && message.contains(&format!("{} MiB", expected >> 10)),
        "{message}"
    );
    assert!(node.artifacts().is_empty());
}

#[test]
fn a_development_run_from_a_world_writable_dir_ignores_artifacts_there() {
    require_root();
    let node = Node::new();
    node.set_policy("flex_tmpfs", &shipped_policy("tmpfs"));
    let open = node.path("dev");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let component = open.join("flex_tmpfs.wasm");
    std::fs::copy(guest("flex_tmpfs"), &component).unwrap();
    let flex = flex_binary();
    let component_arg = format!("--component={}", component.display());
    node.run(&flex, &[&component_arg, "init"]).success();
    let artifact = only_artifact(&node);
    let forged = forge(
        &artifact_of(&guest("flex_hostile")),
        &std::fs::read(&artifact).unwrap(),
    );
    // Anyone may write this directory: they plant hostile code labelled for this component.
    let planted = [
        open.join(artifact.file_name().unwrap()),
        open.join(".flex_tmpfs.wasm.0123456789abcdef.cwasm"),
    ];
    for path in &planted {
        plant(path, &forged, 0o666);
    }
    std::fs::remove_file(&artifact).unwrap();
    for (round, how) in ["flag", "env"].into_iter().enumerate() {
        let pod = node.pod_dir(&format!("pod-{how}"));
        let json = mount_json("vol", false, None, &[("attack", "print")]);
        let args = ["mount", pod.to_str().unwrap(), json.as_str()];
        let out = match how {
            "flag" => node.run(&flex, &[&[component_arg.as_str()][..], &args].concat()),
            _ => {
                let out = node
                    .command(&flex, &args)
                    .env("FLEX_COMPONENT", &component)
                    .output()
                    .unwrap();
                Output {
                    code: out.status.code().unwrap_or(-1),
                    stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                    stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
                }
            }
        };
        out.success();
        assert!(!hostile_ran(&node), "{how}");
        assert_eq!(mounts_at(&pod).len(), 1, "{how}");
        // Compiled from the component's bytes into the root cache once, then loaded from it.
        assert_eq!(compiles(&node), 2, "{how} (round {round})");
        assert_eq!(only_artifact(&node), artifact);
        assert_root_only(&node, &artifact);
        node.run(&flex, &[&component_arg, "unmount", pod.to_str().unwrap()])
            .success();
    }
    for path in &planted {
        assert_eq!(std::fs::read(path).unwrap(), forged, "{}", path.display());
    }
}

#[test]
fn garbage_in_the_cache_is_bounded() {
    let (node, driver) = tmpfs_node();
    node.run(&driver, &["init"]).success();
    let artifact = only_artifact(&node);
    let name = artifact.file_name().unwrap().to_string_lossy().into_owned();
    let inode_prefix: String = name.splitn(3, '-').take(2).collect::<Vec<_>>().join("-");
    let cache = node.cache_dir();
    // Artifacts of other components, oldest first; one of an older content of this component
    // (same inode, another key); a crashed compile's leftover.
    let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
    let others: Vec<PathBuf> = (0..70)
        .map(|i| cache.join(format!("ffff-{i:x}-{:032x}.cwasm", i)))
        .collect();
    for (i, path) in others.iter().enumerate() {
        plant(path, &[0; 1024], 0o600);
        let file = std::fs::File::options().write(true).open(path).unwrap();
        file.set_modified(old + std::time::Duration::from_secs(i as u64))
            .unwrap();
    }
    let stale = cache.join(format!("{inode_prefix}-{:032x}.cwasm", 7));
    plant(&stale, &[0; 1024], 0o600);
    let leftover = cache.join(format!("{name}.tmp4242"));
    plant(&leftover, &[0; 1024], 0o600);

    std::fs::remove_file(&artifact).unwrap();
    node.run(&driver, &["init"]).success();
    assert_eq!(compiles(&node), 2);
    assert!(artifact.is_file());
    assert!(
        !stale.exists(),
        "the same inode's older artifact is removed"
    );
    assert!(
        !leftover.exists(),
        "a crashed compile's leftover is removed"
    );
    // At most 64 artifacts: the 7 oldest others went.
    assert_eq!(node.artifacts().len(), 64);
    for (i, path) in others.iter().enumerate() {
        assert_eq!(path.exists(), i >= 7, "{}", path.display());
    }
}

/// A plugin dir and artifact cache on read-only mounts (a kube-controller-manager container, a
/// node with a read-only `/var`) with no usable artifact: calls still work, compiled into
/// memory, and the log says so as a warning; nothing is written. Both when the cache dir exists
/// without the artifact and when it cannot even be created.
#[test]
fn read_only_cache_and_plugin_dir_compile_in_memory() {
    require_root();
    let node = Node::new();
    let driver = node.install("flex~tmpfs", &guest("flex_tmpfs"));
    node.set_policy("flex~tmpfs", &shipped_policy("tmpfs"));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(node.cache_dir())
        .unwrap();
    let plugin_dir = driver.parent().unwrap().parent().unwrap().to_path_buf();
    let read_only = |dir: &std::path::Path| {
        let dir = dir.to_str().unwrap();
        for args in [vec!["--bind", dir, dir], vec!["-o", "remount,bind,ro", dir]] {
            let status = std::process::Command::new("mount")
                .args(&args)
                .status()
                .unwrap();
            assert!(status.success(), "mount {args:?}");
        }
    };
    read_only(&plugin_dir);
    read_only(&node.cache_dir());
    let nowhere = node.cache_dir().join("not-yet");
    for cache in [node.cache_dir(), nowhere] {
        let pod = node.pod_dir("pod");
        let json = mount_json("vol", false, None, &[("size", "8Mi")]);
        let out = node
            .command(&driver, &["mount", pod.to_str().unwrap(), &json])
            .env("FLEX_CACHE_DIR", &cache)
            .output()
            .unwrap();
        let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(reply["status"], "Success", "{cache:?}: {reply}");
        assert_eq!(mounts_at(&pod).len(), 1, "the driver ran");
        node.run(&driver, &["unmount", pod.to_str().unwrap()])
            .success();
        let warned = node.log().lines().any(|line| {
            line.contains("\"level\":\"warn\"")
                && line.contains("compiled")
                && line.contains("in memory")
        });
        assert!(warned, "{cache:?}: {}", node.log());
        assert!(node.artifacts().is_empty(), "nothing written");
    }
}

/// A `[state]` grant on a machine whose file systems are read-only (kube-controller-manager's
/// container): the state directory cannot be created, and a call that needs none (`init`,
/// `attach`) still runs, without `/state`, with a warning in the log.
#[test]
fn state_dir_on_a_read_only_file_system_is_left_out() {
    require_root();
    let node = Node::new();
    let driver = node.install("flex~tmpfs", &guest("flex_tmpfs"));
    let read_only = node.path("ro");
    std::fs::create_dir(&read_only).unwrap();
    let dir = read_only.to_str().unwrap();
    for args in [vec!["--bind", dir, dir], vec!["-o", "remount,bind,ro", dir]] {
        let status = std::process::Command::new("mount")
            .args(&args)
            .status()
            .unwrap();
        assert!(status.success(), "mount {args:?}");
    }
    let policy = format!(
        "{}\n[state]\ndir = \"{dir}/flex~tmpfs\"\n",
        shipped_policy("tmpfs")
    );
    node.set_policy("flex~tmpfs", &policy);
    node.run(&driver, &["init"]).success();
    assert!(
        node.log()
            .lines()
            .any(|l| l.contains("\"level\":\"warn\"") && l.contains("/state is absent")),
        "{}",
        node.log()
    );
}
