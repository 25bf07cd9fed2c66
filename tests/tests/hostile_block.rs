//! Hostile block drivers through the real binary: device ownership, blank means blank, races
//! on devices and images, oracles in read-only calls, dry runs, and image dirs overlapping
//! state dirs. Every test checks the host: loop devices in sysfs, device contents, image
//! files, the device registry, the audit.
//!
//! Two drivers share one node: `test~a` (images only: its own loop devices) and `test~b`
//! (images and a glob over every loop device). Both run the hostile guest, whose `mount` verb
//! performs one `block-op`.

use flex_tests::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const A: &str = "test~a";
const B: &str = "test~b";

struct BlockNode {
    node: Node,
    drivers: [(String, PathBuf); 2],
}

fn policy(images: &Path, glob: bool, extra: &str) -> String {
    let devices = if glob {
        "devices = [\"/dev/loop[0-9]*\"]\n"
    } else {
        ""
    };
    format!(
        "[block]\n{devices}fs_types = [\"ext4\", \"xfs\"]\nimage_dir = \"{}\"\nmax_image_bytes = 1073741824\n{extra}\n\
         [mount]\nfs_types = [\"ext4\"]\nsources = [\"/dev/loop[0-9]*\"]\noptions = [\"nosuid\", \"nodev\"]\n",
        images.display()
    )
}

/// A's policy with B's glob over every loop device.
fn with_glob(name: &str, policy: String) -> String {
    match name {
        A => policy.replacen(
            "fs_types = [",
            "devices = [\"/dev/loop[0-9]*\"]\nfs_types = [",
            1,
        ),
        _ => policy,
    }
}

impl BlockNode {
    fn new() -> BlockNode {
        BlockNode::with(|_, p| p)
    }

    /// `edit` may change each driver's policy.
    fn with(edit: impl Fn(&str, String) -> String) -> BlockNode {
        require_root();
        let node = Node::new();
        let drivers = [A, B].map(|name| {
            let executable = node.install(name, &guest("flex_hostile"));
            let images = node.path(&format!("images-{name}"));
            node.set_policy(name, &edit(name, policy(&images, name == B, "")));
            (name.to_string(), executable)
        });
        BlockNode { node, drivers }
    }

    fn images(&self, driver: &str) -> PathBuf {
        self.node.path(&format!("images-{driver}"))
    }

    fn executable(&self, driver: &str) -> &Path {
        &self.drivers.iter().find(|(n, _)| n == driver).unwrap().1
    }

    fn command(&self, driver: &str, options: &[(&str, &str)]) -> Command {
        let dir = self.node.volume_dir(driver, "pod", "vol");
        let mut all = vec![("attack", "block-op")];
        all.extend_from_slice(options);
        let json = mount_json("vol", false, None, &all);
        let mut command = self.node.command(
            self.executable(driver),
            &["mount", dir.to_str().unwrap(), &json],
        );
        command.stdout(std::process::Stdio::piped());
        command
    }

    /// One `block-op` call; the result line of each repetition.
    fn op(&self, driver: &str, options: &[(&str, &str)]) -> Vec<String> {
        self.op_env(driver, options, &[])
    }

    fn op_env(&self, driver: &str, options: &[(&str, &str)], env: &[(&str, &str)]) -> Vec<String> {
        let mut command = self.command(driver, options);
        command.envs(env.iter().copied());
        let out = command.output().unwrap();
        let output = Output {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        output.failure().lines().map(String::from).collect()
    }

    /// The one result of a single call.
    fn one(&self, driver: &str, options: &[(&str, &str)]) -> String {
        let lines = self.op(driver, options);
        assert_eq!(lines.len(), 1, "{lines:?}");
        lines[0].clone()
    }

    /// Creates and attaches an image of `driver`; its loop device.
    fn attached(&self, driver: &str, name: &str, size: u64) -> String {
        let size = size.to_string();
        let created = self.one(
            driver,
            &[("op", "create-image"), ("name", name), ("size", &size)],
        );
        assert!(created.starts_with("ok"), "{created}");
        let attached = self.one(driver, &[("op", "attach-image"), ("name", name)]);
        attached
            .strip_prefix("ok ")
            .unwrap_or_else(|| panic!("{attached}"))
            .to_string()
    }

    fn audit(&self) -> Vec<Value> {
        self.node.audit()
    }
}

impl Drop for BlockNode {
    fn drop(&mut self) {
        unmount_all_under(&self.node.path(""));
        detach_loop_devices_under(&self.node.path(""));
    }
}

/// A loop device attached outside flex (by an admin), on a file under the node.
fn foreign_loop(node: &BlockNode, name: &str, size: u64) -> String {
    let file = node.node.path(name);
    std::fs::File::create(&file).unwrap().set_len(size).unwrap();
    let out = Command::new("losetup")
        .args(["--find", "--show"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn read_at(device: &str, offset: u64, len: usize) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(device).unwrap();
    file.seek(SeekFrom::Start(offset)).unwrap();
    let mut bytes = vec![0; len];
    file.read_exact(&mut bytes).unwrap();
    bytes
}

fn write_at(device: &str, offset: u64, bytes: &[u8]) {
    use std::io::{Seek, SeekFrom, Write};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(device)
        .unwrap();
    file.seek(SeekFrom::Start(offset)).unwrap();
    file.write_all(bytes).unwrap();
    file.sync_all().unwrap();
}

/// A device's first and last MiB, to show nothing wrote to it.
fn ends(device: &str, size: u64) -> (Vec<u8>, Vec<u8>) {
    (
        read_at(device, 0, MIB as usize),
        read_at(device, size - MIB, MIB as usize),
    )
}

fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn blkid_type(device: &str) -> String {
    let out = Command::new("blkid")
        .args(["-p", "-s", "TYPE", "-o", "value", device])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Backing files of every loop device on the node.
fn all_backing_files() -> Vec<(String, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/sys/block").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Ok(text) = std::fs::read_to_string(entry.path().join("loop/backing_file")) {
            found.push((name, text.trim_end().to_string()));
        }
    }
    found
}

fn held_text(device: &str) -> String {
    format!("err denied: device {device} is held by another driver")
}

fn not_granted_text(device: &str) -> String {
    format!(
        "err denied: device {device:?} is not granted to this driver (block.devices, its own images)"
    )
}

// ---------------------------------------------------------------- ownership

/// Driver B's glob covers every loop device; A's loop device is still A's alone: probe, mkfs,
/// resize, size and mount of it are denied, and its bytes do not change.
#[test]
fn another_drivers_loop_device_is_never_handed_out_by_a_glob() {
    let n = BlockNode::new();
    let device = n.attached(A, "vol", 64 * MIB);
    write_at(&device, 4096, b"A's data");
    let before = ends(&device, 64 * MIB);
    let held = held_text(&device);
    let dmp = n.node.path("mnt");
    std::fs::create_dir_all(&dmp).unwrap();
    for op in ["probe", "mkfs", "size", "mount-device"] {
        assert_eq!(n.one(B, &[("op", op), ("device", &device)]), held, "{op}");
    }
    let resize = n.one(
        B,
        &[
            ("op", "resize"),
            ("device", &device),
            ("path", dmp.to_str().unwrap()),
        ],
    );
    assert_eq!(resize, held);
    assert_eq!(ends(&device, 64 * MIB), before, "A's device was written to");
    assert_eq!(blkid_type(&device), "");
    assert!(mounts_under(&n.node.path("")).is_empty());
    // The registry names A, the audit shows B's denials.
    let registry = n.node.path("run/devices");
    let claims: Vec<String> = std::fs::read_dir(&registry)
        .unwrap()
        .flatten()
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect();
    assert!(
        claims.iter().any(|c| c.contains("\"test~a\"")),
        "{claims:?}"
    );
    let denials = n
        .audit()
        .iter()
        .filter(|l| l["driver"] == B && l["decision"] == "deny")
        .count();
    assert!(denials >= 5, "{denials}");
    // A itself may use it.
    assert_eq!(n.one(A, &[("op", "probe"), ("device", &device)]), "ok None");
}

/// Without a glob a driver holds only its own loop devices: not B's, not an admin's.
#[test]
fn without_a_glob_only_the_drivers_own_loop_devices_are_usable() {
    let n = BlockNode::new();
    let own = n.attached(A, "mine", 16 * MIB);
    let theirs = n.attached(B, "theirs", 16 * MIB);
    let admin = foreign_loop(&n, "admin.img", 16 * MIB);
    assert_eq!(
        n.one(A, &[("op", "size"), ("device", &own)]),
        format!("ok {}", 16 * MIB)
    );
    for device in [&theirs, &admin, &"/dev/loop-control".to_string()] {
        for op in ["probe", "size", "mkfs"] {
            assert_eq!(
                n.one(A, &[("op", op), ("device", device)]),
                not_granted_text(device),
                "{op} {device}"
            );
        }
    }
    assert_eq!(blkid_type(&theirs), "");
    assert_eq!(blkid_type(&admin), "");
}

/// An image of the same name in another driver's image dir is not this driver's image.
#[test]
fn a_drivers_images_are_its_own() {
    let n = BlockNode::new();
    let device = n.attached(A, "shared-name", 16 * MIB);
    // B has no image of that name: nothing to attach, detach or delete, A's stays attached.
    assert!(
        n.one(B, &[("op", "attach-image"), ("name", "shared-name")])
            .contains("does not exist")
    );
    assert_eq!(
        n.one(B, &[("op", "image-device"), ("name", "shared-name")]),
        "ok None"
    );
    assert_eq!(
        n.one(B, &[("op", "detach-image"), ("name", "shared-name")]),
        "ok ()"
    );
    assert_eq!(
        n.one(B, &[("op", "delete-image"), ("name", "shared-name")]),
        "ok ()"
    );
    let backing = loop_devices_under(&n.images(A));
    assert_eq!(backing.len(), 1);
    assert_eq!(backing[0].0, PathBuf::from(&device));
    assert!(n.images(A).join("shared-name").exists());
}

/// Once A detaches, its claim is released; a later attach by B of the same device number is
/// B's, and A cannot touch it.
#[test]
fn a_claim_ends_with_the_disk_and_does_not_follow_the_number() {
    let n = BlockNode::new();
    let device = n.attached(A, "first", 16 * MIB);
    assert_eq!(
        n.one(A, &[("op", "detach-image"), ("name", "first")]),
        "ok ()"
    );
    let registry = n.node.path("run/devices");
    assert_eq!(
        std::fs::read_dir(&registry).unwrap().count(),
        0,
        "claim not released"
    );
    // B's image is attached next: usually the same free number.
    let again = n.attached(B, "second", 16 * MIB);
    for op in ["probe", "mkfs"] {
        assert_eq!(
            n.one(A, &[("op", op), ("device", &again)]),
            not_granted_text(&again)
        );
    }
    assert_eq!(n.one(B, &[("op", "probe"), ("device", &again)]), "ok None");
    println!("A had {device}, B got {again}");
}

/// A device granted by glob and held by nobody becomes the first user's: after B formats an
/// admin's loop device, a third driver with the same glob cannot format or mount it.
#[test]
fn the_first_driver_to_change_an_unclaimed_device_holds_it() {
    let n = BlockNode::with(with_glob);
    let admin = foreign_loop(&n, "admin.img", 32 * MIB);
    assert_eq!(n.one(B, &[("op", "mkfs"), ("device", &admin)]), "ok ()");
    assert_eq!(blkid_type(&admin), "ext4");
    let held = held_text(&admin);
    for op in ["probe", "mkfs", "mount-device", "size"] {
        assert_eq!(n.one(A, &[("op", op), ("device", &admin)]), held, "{op}");
    }
    assert!(mounts_under(&n.node.path("")).is_empty());
}

// ---------------------------------------------------------------- blank means blank

/// Each way a device can hold data without a signature: formatting is refused and the
/// device is left exactly as it was.
#[test]
fn data_without_a_signature_is_never_formatted() {
    let n = BlockNode::new();
    const SIZE: u64 = 8 * MIB;
    let size = SIZE;
    type Fill = Box<dyn Fn(&str)>;
    let cases: [(&str, Fill); 4] = [
        (
            "random everywhere",
            Box::new(|d| write_at(d, 0, &pseudo_random(SIZE as usize, 7))),
        ),
        (
            "a few bytes in the first MiB",
            Box::new(|d| write_at(d, 700 << 10, b"customer table")),
        ),
        (
            "one sector at the very end",
            Box::new(|d| write_at(d, SIZE - 512, &[0x5a; 512])),
        ),
        (
            "a GPT backup header only at the end",
            Box::new(|d| {
                let mut header = b"EFI PART".to_vec();
                header.extend([0, 0, 1, 0, 92, 0, 0, 0]);
                write_at(d, SIZE - 512, &header)
            }),
        ),
    ];
    for (i, (what, fill)) in cases.iter().enumerate() {
        let device = foreign_loop(&n, &format!("disk-{i}.img"), size);
        fill(&device);
        let before = ends(&device, size);
        let result = n.one(B, &[("op", "mkfs"), ("device", &device), ("fs", "xfs")]);
        assert!(
            result.starts_with("err refused to format") && result.contains("left untouched")
                || result.contains("already carries a signature"),
            "{what}: {result}"
        );
        assert_eq!(ends(&device, size), before, "{what}: device changed");
        assert_eq!(blkid_type(&device), "", "{what}");
    }
}

/// A RAID member or file-system signature anywhere blkid looks refuses, even where the policy
/// opts out of the zero check; a partition table refuses too.
#[test]
fn a_signature_refuses_even_with_the_opt_out() {
    let n = BlockNode::with(|name, p| match name {
        B => p.replace(
            "max_image_bytes",
            "format_nonzero = [\"/dev/loop[0-9]*\"]\nmax_image_bytes",
        ),
        _ => p,
    });
    let device = foreign_loop(&n, "ext.img", 32 * MIB);
    assert!(
        Command::new("mkfs.ext4")
            .args(["-q", &device])
            .status()
            .unwrap()
            .success()
    );
    let before = ends(&device, 32 * MIB);
    let result = n.one(B, &[("op", "mkfs"), ("device", &device), ("fs", "xfs")]);
    assert!(
        result.contains("already carries a signature (ext4)"),
        "{result}"
    );
    assert_eq!(ends(&device, 32 * MIB), before);

    let table = foreign_loop(&n, "mbr.img", 8 * MIB);
    let mut entry = vec![0u8, 0, 0, 0, 0x83, 0, 0, 0];
    entry.extend(2048u32.to_le_bytes());
    entry.extend(4096u32.to_le_bytes());
    write_at(&table, 446, &entry);
    write_at(&table, 510, &[0x55, 0xaa]);
    let result = n.one(B, &[("op", "mkfs"), ("device", &table)]);
    assert!(result.contains("dos partition table"), "{result}");

    // The opt-out does format data without a signature.
    let data = foreign_loop(&n, "data.img", 8 * MIB);
    write_at(&data, 1 << 20, &pseudo_random(4096, 3));
    assert_eq!(n.one(B, &[("op", "mkfs"), ("device", &data)]), "ok ()");
    assert_eq!(blkid_type(&data), "ext4");
}

/// Without the opt-out, the same device is refused; a fresh image is blank and formats.
#[test]
fn blank_devices_format_and_mounted_ones_never() {
    let n = BlockNode::new();
    let device = n.attached(A, "fresh", 32 * MIB);
    assert_eq!(n.one(A, &[("op", "mkfs"), ("device", &device)]), "ok ()");
    assert_eq!(blkid_type(&device), "ext4");
    let again = n.one(A, &[("op", "mkfs"), ("device", &device), ("fs", "xfs")]);
    assert!(
        again.contains("already carries a signature (ext4)"),
        "{again}"
    );
    // Mounted (by the admin): refused before anything is read.
    let wiped = n.attached(A, "wiped", 32 * MIB);
    let mnt = n.node.path("admin-mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    assert!(
        Command::new("mkfs.ext4")
            .args(["-q", &wiped])
            .status()
            .unwrap()
            .success()
    );
    nix::mount::mount(
        Some(wiped.as_str()),
        &mnt,
        Some("ext4"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .unwrap();
    let result = n.one(A, &[("op", "mkfs"), ("device", &wiped)]);
    flex_tests::unmount(&mnt);
    assert!(
        result.contains("is mounted at") || result.contains("signature"),
        "{result}"
    );
}

// ---------------------------------------------------------------- races

/// Two drivers format the same unclaimed device at once: exactly one format happens, the
/// other driver is refused.
#[test]
fn concurrent_mkfs_from_two_drivers_formats_once() {
    let n = BlockNode::with(with_glob);
    for round in 0..3 {
        let device = foreign_loop(&n, &format!("race-{round}.img"), 32 * MIB);
        let results: Vec<String> = std::thread::scope(|s| {
            let calls: Vec<_> = [A, B, A, B]
                .into_iter()
                .map(|d| {
                    let device = device.clone();
                    let n = &n;
                    s.spawn(move || n.one(d, &[("op", "mkfs"), ("device", &device)]))
                })
                .collect();
            calls.into_iter().map(|c| c.join().unwrap()).collect()
        });
        let ok = results.iter().filter(|r| *r == "ok ()").count();
        assert_eq!(ok, 1, "{results:?}");
        assert_eq!(blkid_type(&device), "ext4");
        let formats = n
            .audit()
            .iter()
            .filter(|l| l["operation"] == "mkfs" && l["decision"] == "allow" && l["result"] == "ok")
            .count();
        assert_eq!(formats, round + 1);
    }
}

/// While the driver attaches and detaches its image in a loop, the image name is swapped
/// (renameat2 exchange) with a symlink to a device and one to another driver's image,
/// thousands of times: no loop device is ever backed by anything outside the image dir.
#[test]
fn swapping_the_image_for_symlinks_never_attaches_anything_else() {
    let n = BlockNode::new();
    let other = n.attached(A, "secret", 16 * MIB);
    let created = n.one(
        B,
        &[
            ("op", "create-image"),
            ("name", "vol"),
            ("size", "16777216"),
        ],
    );
    assert!(created.starts_with("ok"), "{created}");
    let dir = n.images(B);
    std::os::unix::fs::symlink(&other, dir.join("to-device")).unwrap();
    std::os::unix::fs::symlink(n.images(A).join("secret"), dir.join("to-image")).unwrap();
    let b_dir = dir.canonicalize().unwrap();
    let a_image = n.images(A).canonicalize().unwrap().join("secret");
    let stop = std::sync::atomic::AtomicBool::new(false);
    let swaps = std::sync::atomic::AtomicUsize::new(0);
    let mut outside = Vec::new();
    let lines = std::thread::scope(|s| {
        s.spawn(|| {
            let names = ["to-device", "to-image"];
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = nix::fcntl::renameat2(
                    nix::fcntl::AT_FDCWD,
                    &dir.join("vol"),
                    nix::fcntl::AT_FDCWD,
                    &dir.join(names[i % 2]),
                    nix::fcntl::RenameFlags::RENAME_EXCHANGE,
                );
                i += 1;
                swaps.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        });
        let watcher = s.spawn(|| {
            let mut seen = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let backing = all_backing_files();
                // Through a symlink: a device as backing file, or A's image a second time.
                let on_a = backing
                    .iter()
                    .filter(|(_, b)| Path::new(b) == a_image)
                    .count();
                for (device, file) in backing {
                    if file.starts_with("/dev/") || on_a > 1 && Path::new(&file) == a_image {
                        seen.push((device, file));
                    }
                }
            }
            seen
        });
        let mut lines = Vec::new();
        // A reply holds 4 KiB: 60 short lines per call.
        for _ in 0..17 {
            let options = [("op", "attach-detach"), ("name", "vol"), ("repeat", "60")];
            lines.extend(n.op(B, &options));
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        outside = watcher.join().unwrap();
        lines
    });
    let swaps = swaps.into_inner();
    let attached = lines.iter().filter(|l| l.starts_with("ok ")).count();
    println!(
        "{swaps} swaps, {attached} of {} attaches went through",
        lines.len()
    );
    assert!(swaps >= 1000, "{swaps}");
    assert_eq!(lines.len(), 17 * 60, "a reply was cut");
    assert!(
        outside.is_empty(),
        "attached outside the image dir: {outside:?}"
    );
    for line in &lines {
        assert!(
            line.starts_with("ok /dev/loop")
                || line.contains("symlink")
                || line.contains("does not exist")
                || line.contains("not a regular file"),
            "{line}"
        );
    }
    // Whatever B left attached is backed by a file in B's image dir; A's image has one device.
    for (device, backing) in loop_devices_under(n.node.path("").as_path()) {
        assert!(
            backing.starts_with(&b_dir) || backing == a_image,
            "{device:?}: {backing:?}"
        );
    }
    assert_eq!(loop_devices_under(&n.images(A)).len(), 1);
}

/// Eight calls attach one image at once: one loop device, the same answer for all.
#[test]
fn concurrent_attaches_of_one_image_make_one_device() {
    let n = BlockNode::new();
    let created = n.one(
        B,
        &[
            ("op", "create-image"),
            ("name", "vol"),
            ("size", "16777216"),
        ],
    );
    assert!(created.starts_with("ok"), "{created}");
    let answers: Vec<String> = std::thread::scope(|s| {
        let calls: Vec<_> = (0..8)
            .map(|_| s.spawn(|| n.one(B, &[("op", "attach-image"), ("name", "vol")])))
            .collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    });
    assert!(
        answers
            .iter()
            .all(|a| a == &answers[0] && a.starts_with("ok /dev/loop")),
        "{answers:?}"
    );
    assert_eq!(loop_devices_under(&n.images(B)).len(), 1);
}

/// Delete and attach race: an image is never deleted while attached, and no loop device is
/// left on a deleted file.
#[test]
fn delete_racing_attach_never_orphans_a_loop_device() {
    let n = BlockNode::new();
    for round in 0..20 {
        let created = n.one(
            B,
            &[("op", "create-image"), ("name", "vol"), ("size", "8388608")],
        );
        assert!(created.starts_with("ok"), "{created}");
        let (attach, delete) = std::thread::scope(|s| {
            let a = s.spawn(|| n.one(B, &[("op", "attach-image"), ("name", "vol")]));
            let d = s.spawn(|| n.one(B, &[("op", "delete-image"), ("name", "vol")]));
            (a.join().unwrap(), d.join().unwrap())
        });
        let image = n.images(B).join("vol");
        let attached = loop_devices_under(&n.images(B));
        match (image.exists(), attached.len()) {
            (true, 1) => assert!(delete.contains("attached"), "{round}: {delete}"),
            (false, 0) => assert!(attach.contains("does not exist"), "{round}: {attach}"),
            other => panic!("round {round}: {other:?} ({attach}; {delete})"),
        }
        let node = n.node.path("").to_string_lossy().into_owned();
        let deleted = all_backing_files()
            .into_iter()
            .any(|(_, b)| b.starts_with(&node) && b.ends_with("(deleted)"));
        assert!(!deleted);
        n.one(B, &[("op", "detach-image"), ("name", "vol")]);
        n.one(B, &[("op", "delete-image"), ("name", "vol")]);
    }
}

/// A call holding a device lock longer than `limits.lock_hold_seconds` loses it: a waiting
/// call gets the device after the limit, not when the holder ends, and the holder's next use
/// of the device fails naming the limit.
#[test]
fn device_locks_are_held_for_a_bounded_time() {
    let n = BlockNode::with(|_, p| format!("{p}\n[limits]\nlock_hold_seconds = 2\n"));
    let device = n.attached(B, "vol", 16 * MIB);
    let (holder, waiter, waited) = std::thread::scope(|s| {
        let holder = s.spawn(|| {
            n.op(
                B,
                &[
                    ("op", "probe"),
                    ("device", &device),
                    ("repeat", "2"),
                    ("sleep_ms", "5000"),
                ],
            )
        });
        std::thread::sleep(Duration::from_millis(500));
        let started = Instant::now();
        let waiter = n.one(B, &[("op", "probe"), ("device", &device)]);
        let waited = started.elapsed();
        (holder.join().unwrap(), waiter, waited)
    });
    assert_eq!(waiter, "ok None");
    assert!(waited < Duration::from_millis(4000), "waited {waited:?}");
    assert_eq!(holder[0], "ok None");
    assert!(
        holder[1].starts_with("err limit exceeded: limits.lock_hold_seconds"),
        "{holder:?}"
    );
    // wait-for-device takes no lock: it answers at once while another call holds the device.
    let (quick, _) = std::thread::scope(|s| {
        let holder = s.spawn(|| {
            n.op(
                B,
                &[
                    ("op", "probe"),
                    ("device", &device),
                    ("repeat", "2"),
                    ("sleep_ms", "1500"),
                ],
            )
        });
        std::thread::sleep(Duration::from_millis(300));
        let started = Instant::now();
        let answer = n.one(
            B,
            &[("op", "wait"), ("device", &device), ("timeout_ms", "100")],
        );
        assert_eq!(answer, "ok true");
        (started.elapsed(), holder.join().unwrap())
    });
    assert!(quick < Duration::from_millis(1000), "{quick:?}");
}

// ---------------------------------------------------------------- oracles

/// wait-for-device on a path outside the grant is denied at once, with the same words whether
/// the path exists, is a symlink (dangling or not), or is not a block device.
#[test]
fn wait_for_device_is_no_existence_oracle() {
    let n = BlockNode::new();
    let link = format!("/dev/flex-test-link-{}", std::process::id());
    let dangling = format!("/dev/flex-test-dangling-{}", std::process::id());
    let _ = std::fs::remove_file(&link);
    let _ = std::fs::remove_file(&dangling);
    std::os::unix::fs::symlink("/dev/vda", &link).unwrap();
    std::os::unix::fs::symlink("/dev/nothing-here", &dangling).unwrap();
    let paths = [
        "/dev/ungranted",
        "/dev/vda",
        "/dev/null",
        "/dev/loop-control",
        &link,
        &dangling,
        "/etc/passwd",
        "/etc/nothing",
        "relative",
    ];
    for path in paths {
        let started = Instant::now();
        let answer = n.one(
            A,
            &[("op", "wait"), ("device", path), ("timeout_ms", "5000")],
        );
        assert!(started.elapsed() < Duration::from_secs(2), "{path} waited");
        assert_eq!(answer, not_granted_text(path), "{path}");
    }
    let _ = std::fs::remove_file(&link);
    let _ = std::fs::remove_file(&dangling);
    let denied: Vec<_> = n
        .audit()
        .into_iter()
        .filter(|l| l["operation"] == "wait-for-device" && l["decision"] == "deny")
        .collect();
    assert_eq!(
        denied.len(),
        paths.len(),
        "denied read-only calls are audited"
    );
}

/// probe-fs and device-size say the same about every path outside the grant.
#[test]
fn probe_and_size_are_no_existence_oracles() {
    let n = BlockNode::new();
    for op in ["probe", "size"] {
        for path in [
            "/dev/vda",
            "/dev/nothing",
            "/dev/zero",
            "/dev/loop-control",
            "/proc/self/fd/0",
            "/dev/fd/0",
            "/dev/../etc/passwd",
            "/dev/disk/by-id/nothing",
        ] {
            assert_eq!(
                n.one(A, &[("op", op), ("device", path)]),
                not_granted_text(path),
                "{op} {path}"
            );
        }
    }
}

/// A granted loop device that does not exist may say so (it is in the grant); a waited-for
/// granted name is waited for, then reported missing.
#[test]
fn granted_names_may_be_waited_for() {
    let n = BlockNode::new();
    let started = Instant::now();
    let answer = n.one(
        B,
        &[
            ("op", "wait"),
            ("device", "/dev/loop4000"),
            ("timeout_ms", "600"),
        ],
    );
    assert_eq!(answer, "ok false");
    assert!(started.elapsed() >= Duration::from_millis(600));
    let probe = n.one(B, &[("op", "probe"), ("device", "/dev/loop4000")]);
    assert!(probe.starts_with("err device /dev/loop4000"), "{probe}");
}

/// resize-fs says the same about every mount path that is not a mount of the device.
#[test]
fn resize_is_no_mount_path_oracle() {
    let n = BlockNode::new();
    let device = n.attached(A, "vol", 16 * MIB);
    for path in [
        "/etc",
        "/nonexistent",
        "/proc",
        "/",
        "/etc/../etc",
        "relative",
    ] {
        let answer = n.one(A, &[("op", "resize"), ("device", &device), ("path", path)]);
        assert_eq!(
            answer,
            format!("err denied: {path:?} is not a mount point of {device}")
        );
    }
}

/// Image names never reach outside the image dir, and say nothing of what is there.
#[test]
fn image_calls_are_no_oracles() {
    let n = BlockNode::new();
    for op in ["image-size", "image-device", "attach-image", "create-image"] {
        for name in [
            "../../../etc/passwd",
            "../../../etc/nothing",
            "/etc/passwd",
            ".hidden",
            "a/b",
        ] {
            let answer = n.one(A, &[("op", op), ("name", name)]);
            assert!(
                answer.starts_with("err denied: invalid image name"),
                "{op} {name}: {answer}"
            );
        }
    }
    let denied = n
        .audit()
        .into_iter()
        .filter(|l| l["operation"] == "image-size" && l["decision"] == "deny")
        .count();
    assert_eq!(denied, 5);
}

// ---------------------------------------------------------------- dry run

/// A dry run makes no image, no image dir, no loop device, no file system, no claim, and no
/// audit line says "allow"; its answers look like a real run's.
#[test]
fn dry_run_performs_nothing_and_answers_plausibly() {
    let n = BlockNode::new();
    let dry = [("FLEX_DRY_RUN", "1")];
    let created = n.op_env(
        B,
        &[
            ("op", "create-image"),
            ("name", "vol"),
            ("size", "33554432"),
        ],
        &dry,
    );
    assert_eq!(created, ["ok 33554432"]);
    assert!(!n.images(B).exists(), "the image dir was created");
    let missing = n.op_env(B, &[("op", "image-size"), ("name", "vol")], &dry);
    assert_eq!(missing, ["ok None"], "read-only calls really run");

    // A real image, then dry attach, grow, detach, delete.
    n.one(
        B,
        &[
            ("op", "create-image"),
            ("name", "vol"),
            ("size", "33554432"),
        ],
    );
    let attach = n.op_env(B, &[("op", "attach-image"), ("name", "vol")], &dry);
    assert!(attach[0].starts_with("ok /dev/loop"), "{attach:?}");
    assert!(
        loop_devices_under(&n.images(B)).is_empty(),
        "dry attach attached"
    );
    let grown = n.op_env(
        B,
        &[("op", "grow-image"), ("name", "vol"), ("size", "67108864")],
        &dry,
    );
    assert_eq!(grown, ["ok ()"]);
    assert_eq!(
        std::fs::metadata(n.images(B).join("vol")).unwrap().len(),
        32 * MIB
    );
    assert_eq!(
        n.op_env(B, &[("op", "delete-image"), ("name", "vol")], &dry),
        ["ok ()"]
    );
    assert!(n.images(B).join("vol").exists());

    let device = n.attached(B, "vol", 32 * MIB);
    let claims = || {
        std::fs::read_dir(n.node.path("run/devices"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let claims_before = claims();
    let admin = foreign_loop(&n, "blank.img", 32 * MIB);
    assert_eq!(
        n.op_env(B, &[("op", "mkfs"), ("device", &admin)], &dry),
        ["ok ()"]
    );
    assert_eq!(blkid_type(&admin), "", "dry mkfs formatted");
    assert_eq!(claims(), claims_before, "dry mkfs claimed the device");
    assert_eq!(
        n.op_env(B, &[("op", "image-device"), ("name", "vol")], &dry),
        [format!("ok Some({device:?})")]
    );
    assert_eq!(
        n.op_env(B, &[("op", "detach-image"), ("name", "vol")], &dry),
        ["ok ()"]
    );
    assert_eq!(
        loop_devices_under(&n.images(B)).len(),
        1,
        "dry detach detached"
    );

    let dry_lines: Vec<Value> = n
        .audit()
        .into_iter()
        .filter(|l| l["decision"] == "would-do")
        .collect();
    assert_eq!(dry_lines.len(), 6, "{dry_lines:?}");
    let allowed_in_dry_calls = n
        .audit()
        .iter()
        .filter(|l| l["decision"] == "allow")
        .filter(|l| dry_lines.iter().any(|d| d["pid"] == l["pid"]))
        .count();
    assert_eq!(allowed_in_dry_calls, 0);
}

/// In one dry-run call, what earlier dry-run operations "made" is what later read-only calls
/// see, as in a real run: a driver cannot tell it is being reviewed by its own answers.
#[test]
fn dry_run_answers_are_consistent_within_a_call() {
    let n = BlockNode::new();
    let dry = [("FLEX_DRY_RUN", "1")];
    let lines = n.op_env(
        B,
        &[("op", "attach-image"), ("name", "never-created")],
        &dry,
    );
    assert!(lines[0].contains("does not exist"), "{lines:?}");
    let before = all_backing_files().len();
    let ops = "create-image,image-size,image-device,attach-image,image-device,grow-image,image-size,detach-image,image-device,delete-image,image-size";
    let lines = n.op_env(B, &[("op", ops), ("name", "v"), ("size", "1048576")], &dry);
    let device = lines[3]
        .strip_prefix("ok ")
        .unwrap_or_else(|| panic!("{lines:?}"));
    assert!(device.starts_with("/dev/loop"), "{lines:?}");
    let expected = [
        "ok 1048576".to_string(),
        "ok Some(1048576)".into(),
        "ok None".into(),
        format!("ok {device}"),
        format!("ok Some({device:?})"),
        "ok ()".into(),
        "ok Some(1048576)".into(),
        "ok ()".into(),
        "ok None".into(),
        "ok ()".into(),
        "ok None".into(),
    ];
    assert_eq!(lines, expected);
    assert_eq!(all_backing_files().len(), before);
    assert!(!n.images(B).exists());
    assert!(!n.node.path("run/devices").exists());
}

// ---------------------------------------------------------------- policies that overlap

/// An image dir inside the driver's state dir (or containing the state root, or inside
/// another driver's) is refused by `flex policy check` and by every call.
#[test]
fn image_dir_overlapping_state_dirs_is_refused() {
    let n = BlockNode::new();
    let state_root = n.node.path("state");
    for (image_dir, expected) in [
        (
            state_root.join(A).join("images"),
            "lies inside the driver's state dir",
        ),
        (state_root.join(B).join("images"), "but not in"),
        (state_root.clone(), "contains the driver's state dir"),
        (state_root.join("images").join(B), "but not in"),
    ] {
        let text = policy(&image_dir, false, "") + "[state]\n";
        let file = n.node.path(&format!("policy/{A}.toml"));
        std::fs::write(&file, &text).unwrap();
        let check = n
            .node
            .run(&flex_binary(), &["policy", "check", file.to_str().unwrap()]);
        // The message may go to either stream, as the operator reads them both.
        let said = format!("{}{}", check.stdout, check.stderr);
        assert_eq!(check.code, 1, "{said}");
        assert!(said.contains(expected), "{}: {said}", image_dir.display());
        let call = n.node.run(n.executable(A), &["init"]);
        assert!(call.failure().contains(expected));
    }
    assert!(!state_root.join(A).join("images").exists());
    // The default layout is fine.
    n.node
        .set_policy(A, &policy(&state_root.join("images").join(A), false, ""));
    n.node.run(n.executable(A), &["init"]).success();
}

/// An image dir anyone else can write, or one reached through a symlink, is refused at call
/// time, and nothing is created in it.
#[test]
fn image_dir_writable_by_others_or_through_a_symlink_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let n = BlockNode::new();
    let open = n.node.path("open-images");
    std::fs::create_dir_all(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    n.node.set_policy(A, &policy(&open, false, ""));
    let answer = n.one(A, &[("op", "create-image"), ("name", "v")]);
    assert!(
        answer.contains("writable by users other than root"),
        "{answer}"
    );
    let link = n.node.path("link-images");
    std::os::unix::fs::symlink(n.images(B), &link).unwrap();
    n.node.set_policy(A, &policy(&link, false, ""));
    let answer = n.one(A, &[("op", "create-image"), ("name", "v")]);
    assert!(answer.contains("symlink"), "{answer}");
    assert_eq!(std::fs::read_dir(&open).unwrap().count(), 0);
    assert!(!n.images(B).join("v").exists());
}

/// `flex policy check` warns about block grants nothing can use.
#[test]
fn policy_check_warns_on_unusable_block_grants() {
    let n = BlockNode::new();
    let file = n.node.path("policy/acme~w.toml");
    std::fs::write(
        &file,
        "[block]\nfs_types = [\"ext4\"]\ndevices = [\"/dev/nothing-[0-9]\"]\n",
    )
    .unwrap();
    let out = n
        .node
        .run(&flex_binary(), &["policy", "check", file.to_str().unwrap()]);
    let said = format!("{}{}", out.stdout, out.stderr);
    assert_eq!(out.code, 0, "{said}");
    assert!(
        said.contains("warning: block.devices \"/dev/nothing-[0-9]\" matches nothing"),
        "{said}"
    );
    std::fs::write(&file, "[block]\nfs_types = [\"ext4\"]\n").unwrap();
    let out = n
        .node
        .run(&flex_binary(), &["policy", "check", file.to_str().unwrap()]);
    let said = format!("{}{}", out.stdout, out.stderr);
    assert!(said.contains("mkfs can format nothing"), "{said}");
}
