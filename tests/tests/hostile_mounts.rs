//! Hostile mounts: option smuggling, missing hardening, stacking, remounts that drop required
//! options, oracles, and races that swap path components while the host resolves them. Every
//! attack goes through the real binary and is judged by mountinfo and file contents.

use flex_tests::*;
use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

const DRIVER: &str = "test~hostile";

fn hostile_node(extra_policy: &str) -> (Node, PathBuf) {
    require_root();
    let node = Node::new();
    let driver = node.install(DRIVER, &guest("flex_hostile"));
    node.set_policy(
        DRIVER,
        &format!("{}\n{extra_policy}\n", shipped_policy("tmpfs")),
    );
    (node, driver)
}

/// A granted tmpfs mount onto `dir`, which must succeed.
fn mount_tmpfs(node: &Node, driver: &Path, dir: &Path) {
    node.attack(driver, dir, "mount-options", &[("options", "size=1m")])
        .success();
}

fn pod(node: &Node, name: &str) -> PathBuf {
    node.volume_dir(DRIVER, name, "vol")
}

fn options_of(path: &Path) -> Vec<String> {
    mounts_at(path)
        .last()
        .map(|m| m.options.clone())
        .unwrap_or_default()
}

#[test]
fn comma_joined_options_cannot_smuggle_a_second_option() {
    let (node, driver) = hostile_node("");
    let dir = pod(&node, "p1");
    for options in [
        "size=8m,uid=0",
        "size=8m,huge=always",
        "size=8m;uid=0",
        "mode=0777,suid",
        "size=8m,,nosuid",
        "size=8m x",
    ] {
        let message = node
            .attack(&driver, &dir, "mount-options", &[("options", options)])
            .failure();
        assert!(message.starts_with("denied:"), "{options}: {message}");
        assert!(mounts_at(&dir).is_empty(), "{options} mounted");
    }
    let denials = node
        .audit()
        .iter()
        .filter(|l| l["decision"] == "deny")
        .count();
    assert_eq!(denials, 6);
}

#[test]
fn every_mount_is_nosuid_nodev_unless_the_policy_says_otherwise() {
    let (node, driver) = hostile_node("");
    let dir = pod(&node, "p2");
    mount_tmpfs(&node, &driver, &dir);
    let options = options_of(&dir);
    for flag in ["nosuid", "nodev"] {
        assert!(options.iter().any(|o| o == flag), "{options:?}");
    }
    // Asking for the opposite is refused even when the pattern list would match it.
    with_policy_extra(
        &node,
        "[mount]\nfs_types = [\"tmpfs\"]\nsources = [\"tmpfs\"]\noptions = [\"*\"]",
    );
    let other = pod(&node, "p3");
    for options in ["suid", "dev", "size=1m,suid"] {
        let message = node
            .attack(&driver, &other, "mount-options", &[("options", options)])
            .failure();
        assert!(message.contains("requires"), "{options}: {message}");
    }
    // A policy that explicitly drops the requirement may allow them.
    with_policy_extra(
        &node,
        "[mount]\nfs_types = [\"tmpfs\"]\nsources = [\"tmpfs\"]\noptions = [\"suid\", \"dev\"]\nrequire = []",
    );
    node.attack(&driver, &other, "mount-options", &[("options", "suid;dev")])
        .success();
    let options = options_of(&other);
    assert!(!options.iter().any(|o| o == "nosuid"), "{options:?}");
    unmount_all_under(&node.path(""));
}

/// Replaces the hostile driver's policy with `policy` alone.
fn with_policy_extra(node: &Node, policy: &str) {
    node.set_policy(DRIVER, policy);
}

#[test]
fn remounts_never_drop_required_options_and_mounts_never_stack() {
    let (node, driver) = hostile_node("");
    let dir = pod(&node, "p4");
    mount_tmpfs(&node, &driver, &dir);
    for options in ["suid", "dev", "ro,suid", "nosuid;suid"] {
        let message = node
            .attack(&driver, &dir, "remount", &[("options", options)])
            .failure();
        assert!(message.contains("requires"), "{options}: {message}");
    }
    let options = options_of(&dir);
    assert!(options.iter().any(|o| o == "nosuid"), "{options:?}");
    // A remount that asks for nothing still carries the required options.
    node.attack(&driver, &dir, "remount", &[("options", "ro")])
        .success();
    let options = options_of(&dir);
    assert!(
        ["ro", "nosuid", "nodev"]
            .iter()
            .all(|f| options.iter().any(|o| o == f)),
        "{options:?}"
    );
    // Mounting again on a mount point is refused: no stacking.
    for _ in 0..5 {
        let message = node
            .attack(&driver, &dir, "mount-options", &[("options", "size=1m")])
            .failure();
        assert!(message.contains("already a mount point"), "{message}");
    }
    assert_eq!(mounts_at(&dir).len(), 1);
    unmount_all_under(&node.path(""));
}

#[test]
fn mounts_per_call_are_bounded() {
    let (node, driver) = hostile_node("[limits]\nmounts_per_call = 4");
    let dir = pod(&node, "p5");
    mount_tmpfs(&node, &driver, &dir);
    let message = node
        .attack(&driver, &dir, "remount", &[("repeat", "1000")])
        .failure();
    assert!(message.contains("limits.mounts_per_call"), "{message}");
    assert_eq!(mounts_at(&dir).len(), 1, "the node is unchanged");
    let denied = node
        .audit()
        .iter()
        .filter(|l| l["decision"] == "deny" && l["operation"] == "remount")
        .count();
    assert_eq!(denied, 1, "the call stops at the first refusal");
    unmount_all_under(&node.path(""));
}

#[test]
fn is_mountpoint_is_no_oracle_for_paths_outside_the_call() {
    let (node, driver) = hostile_node("");
    let dir = pod(&node, "p6");
    let answer = |path: &str| {
        node.attack(&driver, &dir, "is-mountpoint", &[("path", path)])
            .failure()
            .replace(path, "<path>")
    };
    let existing = answer("/etc");
    assert!(existing.contains("denied"), "{existing}");
    for other in ["/no/such/dir", "/proc", "/etc/shadow", "/root/.ssh"] {
        assert_eq!(answer(other), existing, "{other}");
    }
    assert_eq!(answer(dir.to_str().unwrap()), "answer Ok(false)");
    let denied = node
        .audit()
        .iter()
        .filter(|l| l["operation"] == "is-mountpoint")
        .count();
    assert_eq!(denied, 5, "denied read-only calls are audited");
}

#[test]
fn only_the_own_volumes_device_mount_path_binds_without_a_grant() {
    let (node, driver) = hostile_node("");
    let dir = pod(&node, "p7");
    let own = node.device_mount_path(DRIVER, "vol");
    std::fs::write(own.join("marker"), "own").unwrap();
    let other = node.device_mount_path(DRIVER, "other-volume");
    std::fs::write(other.join("marker"), "other").unwrap();
    for source in [
        other.clone(),
        own.join("../other-volume"),
        PathBuf::from("/etc"),
    ] {
        let message = node
            .attack(
                &driver,
                &dir,
                "bind",
                &[("source", source.to_str().unwrap())],
            )
            .failure();
        assert!(
            message.contains("bind source"),
            "{}: {message}",
            source.display()
        );
        assert!(mounts_at(&dir).is_empty());
    }
    node.attack(&driver, &dir, "bind", &[("source", own.to_str().unwrap())])
        .success();
    assert_eq!(std::fs::read_to_string(dir.join("marker")).unwrap(), "own");
    let options = options_of(&dir);
    assert!(options.iter().any(|o| o == "nosuid") && options.iter().any(|o| o == "nodev"));
    unmount_all_under(&node.path(""));
}

/// Swaps two paths with `renameat2(RENAME_EXCHANGE)` until stopped; returns the swap count.
fn swapper(a: PathBuf, b: PathBuf, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut swaps = 0;
        while !stop.load(Ordering::Relaxed) {
            if renameat2(AT_FDCWD, &a, AT_FDCWD, &b, RenameFlags::RENAME_EXCHANGE).is_ok() {
                swaps += 1;
            }
        }
        swaps
    })
}

const RACE_ROUNDS: usize = 1500;

#[test]
fn bind_sources_swapped_for_symlinks_never_bind_outside_the_grant() {
    let (node, driver) = hostile_node("");
    let state = node.path("state/test~hostile");
    let vols = state.join("vols");
    std::fs::create_dir_all(vols.join("a")).unwrap();
    std::fs::write(vols.join("a/marker"), "granted").unwrap();
    let secret = node.path("secret");
    std::fs::create_dir_all(&secret).unwrap();
    std::fs::write(secret.join("marker"), "secret").unwrap();
    // `b` is a symlink out of the grant; `vols-link` a symlink standing in for the parent.
    std::os::unix::fs::symlink(&secret, vols.join("b")).unwrap();
    std::os::unix::fs::symlink(&secret, state.join("vols-link")).unwrap();
    with_policy_extra(
        &node,
        &format!(
            "[mount]\nsources = [\"{}/*\"]\n[state]\ndir = \"{}\"",
            vols.display(),
            state.display()
        ),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let leaf = swapper(vols.join("a"), vols.join("b"), stop.clone());
    let parent = swapper(vols.clone(), state.join("vols-link"), stop.clone());
    let dir = pod(&node, "race");
    let source = vols.join("a");
    let (mut bound, mut refused) = (0, 0);
    for round in 0..RACE_ROUNDS {
        let out = node.attack(
            &driver,
            &dir,
            "bind",
            &[("source", source.to_str().unwrap())],
        );
        if out.status() == "Success" {
            bound += 1;
            let marker = std::fs::read_to_string(dir.join("marker")).unwrap_or_default();
            assert_ne!(
                marker, "secret",
                "round {round}: a bind landed outside the grant"
            );
            unmount_busy(&dir);
        } else {
            refused += 1;
        }
        assert!(mounts_at(&dir).is_empty());
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = leaf.join().unwrap() + parent.join().unwrap();
    println!("bind race: {RACE_ROUNDS} rounds, {bound} bound, {refused} refused, {swaps} swaps");
    assert!(swaps > RACE_ROUNDS as u64, "the swapper must really race");
    assert!(refused > 0, "some rounds must have seen a symlink");
}

#[test]
fn targets_swapped_for_symlinks_never_receive_the_mount() {
    let (node, driver) = hostile_node("");
    let dir = pod(&node, "race-target");
    let elsewhere = node.path("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let decoy = dir.with_file_name("decoy");
    std::os::unix::fs::symlink(&elsewhere, &decoy).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let swaps = swapper(dir.clone(), decoy.clone(), stop.clone());
    let (mut mounted, mut refused) = (0, 0);
    for round in 0..RACE_ROUNDS / 3 {
        let out = node.attack(&driver, &dir, "mount-options", &[("options", "size=1m")]);
        assert!(
            mounts_at(&elsewhere).is_empty(),
            "round {round}: the mount followed a swapped-in symlink"
        );
        if out.status() == "Success" {
            mounted += 1;
        } else {
            refused += 1;
        }
        unmount_all_under(&node.path("kubelet"));
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = swaps.join().unwrap();
    println!("target race: {mounted} mounted, {refused} refused, {swaps} swaps");
    assert!(refused > 0 && swaps > 0);
}

#[test]
fn state_files_swapped_for_symlinks_never_expose_host_files() {
    let (node, driver) = hostile_node("");
    let state = node.path("state/test~hostile");
    std::fs::create_dir_all(&state).unwrap();
    let secret = node.path("secret-file");
    std::fs::write(&secret, "the host's secret file").unwrap();
    std::fs::write(state.join("x"), "driver data").unwrap();
    std::os::unix::fs::symlink(&secret, state.join("y")).unwrap();
    with_policy_extra(&node, &format!("[state]\ndir = \"{}\"", state.display()));
    let stop = Arc::new(AtomicBool::new(false));
    let swaps = swapper(state.join("x"), state.join("y"), stop.clone());
    let dir = pod(&node, "race-state");
    let mut read = 0;
    for round in 0..RACE_ROUNDS / 3 {
        let message = node
            .attack(&driver, &dir, "state", &[("path", "/state/x")])
            .failure();
        if message.starts_with("read ") {
            read += 1;
            assert_eq!(
                message,
                format!("read {} bytes", "driver data".len()),
                "round {round}"
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    println!(
        "state race: {read} reads of the driver's own file, {} swaps",
        swaps.join().unwrap()
    );
    assert!(read > 0);
}

/// The test's own cleanup of a bind that landed: the swapper threads may be working inside it
/// at that instant (EBUSY), so it is retried, then detached.
fn unmount_busy(dir: &std::path::Path) {
    use nix::mount::{MntFlags, umount2};
    for _ in 0..100 {
        match umount2(dir, MntFlags::empty()) {
            Err(nix::errno::Errno::EBUSY) => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            result => return result.unwrap(),
        }
    }
    umount2(dir, MntFlags::MNT_DETACH).unwrap();
}
