//! The loop driver through the real `flex` binary, in kubelet's order and argv, on real loop
//! devices with real mkfs. Each test tears down what it made even when it fails (the loop
//! devices are the machine's): [`LoopNode`] unmounts everything under its node directory and
//! detaches every loop device backed by its images on drop.
//!
//! The verbs split as on a cluster with controller-managed attach: `attach`, `isattached` and
//! `detach` (kube-controller-manager) make no host call and return the placeholder
//! `loop:<volume>`; `waitforattach` (kubelet) attaches the loop device and `unmountdevice`
//! detaches it (and deletes an inline volume's image).

use flex_tests::*;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const NODE: &str = "node-1";
/// The verbs kube-controller-manager runs.
const CONTROLLER_VERBS: [&str; 3] = ["attach", "isattached", "detach"];

struct LoopNode {
    node: Node,
    driver: PathBuf,
}

impl LoopNode {
    /// A worker node: the shipped policy, with the image dir under the node.
    fn new() -> LoopNode {
        require_root();
        let node = Node::new();
        let driver = node.install("flex~loop", &guest("flex_loop"));
        let images = node.path("images");
        let policy = shipped_policy("loop")
            .replace("/var/lib/flex/images/flex~loop", images.to_str().unwrap());
        assert!(policy.contains(images.to_str().unwrap()));
        assert!(
            policy.contains("\n[state]"),
            "the shipped policy grants [state]"
        );
        node.set_policy("flex~loop", &policy);
        LoopNode { node, driver }
    }

    fn images(&self) -> PathBuf {
        self.node.path("images")
    }

    /// The driver's `[state]` directory (`FLEX_STATE_DIR/<vendor~driver>`).
    fn state(&self, record: &str, name: &str) -> PathBuf {
        self.node.path("state/flex~loop").join(record).join(name)
    }

    fn run(&self, args: &[&str]) -> Output {
        self.node.run(&self.driver, args)
    }

    /// kubelet's device mount path for a PV, created as kubelet does before `mountdevice`.
    fn device_mount_path(&self, pv: &str) -> PathBuf {
        self.node.device_mount_path("flex~loop", pv)
    }

    /// A pod's volume directory, created as kubelet does before `mount`.
    fn pod_dir(&self, pod: &str, volume: &str) -> PathBuf {
        self.node.volume_dir("flex~loop", pod, volume)
    }

    fn provision(&self, pv: &str, bytes: u64) {
        let json = json!({"kubernetes.io/pvOrVolumeName": pv, "requestBytes": bytes.to_string(),
                          "requestGiB": bytes.div_ceil(1 << 30).to_string()});
        self.run(&["provision", &json.to_string()]).success();
    }

    fn delete(&self, pv: &str) {
        let json = json!({"kubernetes.io/pvOrVolumeName": pv});
        self.run(&["delete", &json.to_string()]).success();
    }

    /// The controller's `attach`, then kubelet's `waitforattach` with its answer: the device.
    fn attach(&self, pv: &str, fs: &str) -> String {
        self.attach_json(pv, &base_json(pv, fs, &[]))
    }

    fn attach_json(&self, pv: &str, json: &str) -> String {
        let reply = self.run(&["attach", json, NODE]).success();
        let placeholder = format!("loop:{pv}");
        assert_eq!(reply["device"], placeholder.as_str());
        let reply = self.run(&["waitforattach", &placeholder, json]).success();
        let device = reply["device"].as_str().unwrap().to_string();
        assert!(device.starts_with("/dev/loop"), "{device}");
        device
    }

    fn mount_device(&self, pv: &str, device: &str, fs: &str) -> Output {
        let path = self.device_mount_path(pv);
        self.run(&[
            "mountdevice",
            path.to_str().unwrap(),
            device,
            &base_json(pv, fs, &[]),
        ])
    }

    /// `unmountdevice`: unmounted, and the loop device freed.
    fn unmount_device(&self, pv: &str) {
        let path = self.device_mount_path(pv);
        self.run(&["unmountdevice", path.to_str().unwrap()])
            .success();
        assert!(mounts_at(&path).is_empty());
        assert!(self.loops_of(pv).is_empty(), "{pv} still attached");
    }

    /// The loop devices backed by one image.
    fn loops_of(&self, image: &str) -> Vec<PathBuf> {
        loop_devices_under(&self.images())
            .into_iter()
            .filter(|(_, backing)| backing.file_name().is_some_and(|n| n == image))
            .map(|(device, _)| device)
            .collect()
    }

    /// Formats done through the policy (audited and performed), for one device or all.
    fn mkfs_count(&self) -> usize {
        self.node
            .audit()
            .iter()
            .filter(|l| l["operation"] == "mkfs" && l["decision"] == "allow")
            .count()
    }

    /// Nothing of this node left: no mount under it, no loop device on its images, no
    /// unfinished teardown.
    fn assert_nothing_leaks(&self) {
        let left = mounts_under(&self.node.path(""));
        assert!(left.is_empty(), "mounts left: {left:?}");
        let loops = loop_devices_under(&self.images());
        assert!(loops.is_empty(), "loop devices left: {loops:?}");
        let teardowns: Vec<_> = std::fs::read_dir(self.node.path("state/flex~loop/teardown"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(teardowns.is_empty(), "unfinished teardowns: {teardowns:?}");
    }
}

impl Drop for LoopNode {
    fn drop(&mut self) {
        unmount_all_under(&self.node.path(""));
        detach_loop_devices_under(&self.images());
    }
}

fn fs_bytes(path: &Path) -> u64 {
    let stat = nix::sys::statvfs::statvfs(path).unwrap();
    stat.blocks() * stat.fragment_size()
}

/// Wall time of each verb, and the time its privileged operations took (from the audit log).
#[derive(Default)]
struct Timings(Vec<(String, Duration, u64, Vec<String>)>);

impl Timings {
    fn run(&mut self, loop_node: &LoopNode, args: &[&str]) -> Output {
        let before = loop_node.node.audit().len();
        let started = Instant::now();
        let output = loop_node.run(args);
        let wall = started.elapsed();
        let lines = loop_node.node.audit();
        let ops = &lines[before.min(lines.len())..];
        let op_us = ops.iter().filter_map(|l| l["duration_us"].as_u64()).sum();
        let names = ops
            .iter()
            .map(|l| {
                format!(
                    "{} {:.1}ms",
                    l["operation"].as_str().unwrap_or("?"),
                    l["duration_us"].as_u64().unwrap_or(0) as f64 / 1000.0
                )
            })
            .collect();
        self.0.push((args[0].to_string(), wall, op_us, names));
        output
    }

    fn print(&self, title: &str) {
        println!("\n{title}");
        println!(
            "{:<14} {:>9} {:>11} {:>11}  privileged operations",
            "verb", "wall ms", "priv ms", "flex ms"
        );
        let (mut wall, mut ops) = (Duration::ZERO, 0u64);
        for (verb, w, op_us, names) in &self.0 {
            wall += *w;
            ops += op_us;
            let w_ms = w.as_secs_f64() * 1000.0;
            let op_ms = *op_us as f64 / 1000.0;
            println!(
                "{verb:<14} {w_ms:>9.1} {op_ms:>11.1} {:>11.1}  {}",
                w_ms - op_ms,
                names.join(", ")
            );
        }
        let w_ms = wall.as_secs_f64() * 1000.0;
        let op_ms = ops as f64 / 1000.0;
        println!(
            "{:<14} {w_ms:>9.1} {op_ms:>11.1} {:>11.1}  ({} calls)",
            "total",
            w_ms - op_ms,
            self.0.len()
        );
    }
}

/// The whole life of one PV, in kubelet's order, with data surviving a detach and an expansion.
fn lifecycle(fs: &str, size: u64, grown: u64) {
    let n = LoopNode::new();
    let pv = format!("pv-{fs}");
    let json = base_json(&pv, fs, &[]);
    let dmp = n.device_mount_path(&pv);
    let dmp_arg = dmp.to_str().unwrap();
    let pod = n.pod_dir("pod-a", &pv);
    let pod_arg = pod.to_str().unwrap();
    let placeholder = format!("loop:{pv}");
    let mut t = Timings::default();

    n.run(&["init"]).success(); // compiles the component once, outside the timings
    let caps = n.run(&["init"]).success()["capabilities"].clone();
    assert_eq!(caps["attach"], true);
    assert_eq!(caps["requiresFSResize"], true);

    let provision = json!({"kubernetes.io/pvOrVolumeName": pv, "requestBytes": size.to_string()});
    t.run(&n, &["provision", &provision.to_string()]).success();
    // kube-controller-manager: a placeholder, no loop device yet.
    let attached = t.run(&n, &["attach", &json, NODE]).success();
    assert_eq!(attached["device"], placeholder.as_str());
    assert_eq!(
        t.run(&n, &["isattached", &json, NODE]).success()["attached"],
        true
    );
    assert!(n.loops_of(&pv).is_empty());
    // kubelet: waitforattach attaches; a retry gives the same device.
    let device = t.run(&n, &["waitforattach", &placeholder, &json]).success()["device"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(device.starts_with("/dev/loop"), "{device}");
    assert_eq!(n.loops_of(&pv), [PathBuf::from(&device)]);
    let again = n.run(&["waitforattach", &placeholder, &json]).success();
    assert_eq!(again["device"], device.as_str());
    t.run(&n, &["mountdevice", dmp_arg, &device, &json])
        .success();
    let mounted = mounts_at(&dmp);
    assert_eq!(mounted.len(), 1, "{mounted:?}");
    assert_eq!(mounted[0].fs_type, fs);
    // The driver binds the device mount path into the pod itself, hardened: kubelet's own
    // fallback bind would carry neither nosuid nor nodev. Retried, it is still one mount.
    for _ in 0..2 {
        t.run(&n, &["mount", pod_arg, &mount_json(&pv, false, None, &[])])
            .success();
    }
    let bound = mounts_at(&pod);
    assert_eq!(bound.len(), 1, "{bound:?}");
    for flag in ["nosuid", "nodev", "rw"] {
        assert!(bound[0].options.iter().any(|o| o == flag), "{bound:?}");
    }
    std::fs::write(pod.join("data.txt"), b"survives detach and growth").unwrap();
    let small = fs_bytes(&pod);

    for _ in 0..2 {
        t.run(&n, &["unmount", pod_arg]).success();
    }
    assert!(mounts_at(&pod).is_empty());
    // unmountdevice frees the loop device; the provisioned image stays.
    t.run(&n, &["unmountdevice", dmp_arg]).success();
    assert!(mounts_at(&dmp).is_empty());
    assert!(n.loops_of(&pv).is_empty());
    assert!(n.images().join(&pv).exists());
    t.run(&n, &["detach", &pv, NODE]).success();
    // Detach again (the controller retries): still success.
    n.run(&["detach", &pv, NODE]).success();

    // Attach again, elsewhere in kubelet's life (kubelet may pass "" or the old device): the
    // data is still there, not reformatted.
    n.run(&["attach", &json, NODE]).success();
    let device = t.run(&n, &["waitforattach", "", &json]).success()["device"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(n.loops_of(&pv), [PathBuf::from(&device)]);
    t.run(&n, &["mountdevice", dmp_arg, &device, &json])
        .success();
    t.run(&n, &["mount", pod_arg, &mount_json(&pv, false, None, &[])])
        .success();
    assert_eq!(
        std::fs::read(pod.join("data.txt")).unwrap(),
        b"survives detach and growth"
    );
    assert_eq!(n.mkfs_count(), 1, "formatted once only");

    // Online expansion: kubelet passes the PV's new capacity.
    let expand = [
        "expandfs",
        &json,
        &device,
        dmp_arg,
        &grown.to_string(),
        &size.to_string(),
    ];
    if fs == "ext4" && !has_cap_sys_resource() {
        // Growing a mounted ext4 needs CAP_SYS_RESOURCE (EXT4_IOC_RESIZE_FS); some VMs and
        // containers drop it even for root. Then the failure must say so; xfs still proves
        // online growth.
        let message = t.run(&n, &expand).failure();
        assert!(message.contains("CAP_SYS_RESOURCE"), "{message}");
        println!("ext4 online resize not possible here: no CAP_SYS_RESOURCE");
        teardown(&n, &pv, &pod, &dmp, &mut t);
        t.print(&format!("lifecycle, {fs}, {} MiB (no growth)", size / MIB));
        return;
    }
    t.run(&n, &expand).success();
    let large = fs_bytes(&pod);
    assert!(
        large > small + (grown - size) / 2,
        "file system did not grow: {small} -> {large}"
    );
    assert_eq!(
        std::fs::read(pod.join("data.txt")).unwrap(),
        b"survives detach and growth"
    );
    // expandfs again (kubelet retries), also with the placeholder kubelet holds after a
    // restart: nothing changes, still success.
    n.run(&expand).success();
    let mut with_placeholder = expand;
    with_placeholder[2] = placeholder.as_str();
    n.run(&with_placeholder).success();
    assert_eq!(fs_bytes(&pod), large);

    teardown(&n, &pv, &pod, &dmp, &mut t);
    t.print(&format!(
        "lifecycle, {fs}, {} MiB grown to {} MiB",
        size / MIB,
        grown / MIB
    ));
}

#[test]
fn lifecycle_ext4() {
    lifecycle("ext4", 64 * MIB, 128 * MIB);
}

/// mkfs.xfs wants at least 300 MB.
#[test]
fn lifecycle_xfs() {
    lifecycle("xfs", 320 * MIB, 512 * MIB);
}

/// kube-controller-manager's node may grant the driver nothing: `attach`, `isattached` and
/// `detach` still work there, and make no host call at all (no line in the audit trail, where
/// even a refused call would be), on that node or on a worker with every grant.
#[test]
fn controller_verbs_need_no_grant_and_make_no_host_call() {
    let worker = LoopNode::new();
    let kcm = Node::new();
    let kcm_driver = kcm.install("flex~loop", &guest("flex_loop"));
    kcm.set_policy(
        "flex~loop",
        "# kube-controller-manager's node: nothing granted\n",
    );
    worker.provision("pv-ctl", 32 * MIB);
    let volumes = [
        ("pv-ctl", base_json("pv-ctl", "ext4", &[])),
        ("scratch", base_json("scratch", "", &[("size", "16Mi")])),
        (
            "never-provisioned",
            base_json("never-provisioned", "xfs", &[]),
        ),
    ];
    for (driver, node) in [(&kcm_driver, &kcm), (&worker.driver, &worker.node)] {
        let before = node.audit().len();
        for (name, json) in &volumes {
            for _ in 0..2 {
                let reply = node.run(driver, &["attach", json, NODE]).success();
                assert_eq!(reply["device"], format!("loop:{name}").as_str());
                let reply = node.run(driver, &["isattached", json, NODE]).success();
                assert_eq!(reply["attached"], true);
                node.run(driver, &["detach", name, NODE]).success();
            }
        }
        // The options' shape is checked without the host.
        for (bad, why) in [
            (base_json("pv-ctl", "btrfs", &[]), "not supported"),
            (base_json("pv-ctl", "", &[("size", "lots")]), "invalid size"),
            (base_json("../etc", "", &[]), "cannot name"),
            (json!({"kubernetes.io/fsType": ""}).to_string(), "missing"),
        ] {
            let message = node.run(driver, &["attach", &bad, NODE]).failure();
            assert!(message.contains(why), "{message}");
        }
        let lines: Vec<_> = node.audit()[before..]
            .iter()
            .filter(|l| CONTROLLER_VERBS.iter().any(|v| l["verb"] == *v))
            .cloned()
            .collect();
        assert!(
            lines.is_empty(),
            "controller verbs made host calls: {lines:?}"
        );
    }
    assert!(kcm.audit().is_empty(), "{:?}", kcm.audit());
    assert!(loop_devices_under(&worker.images()).is_empty());
    assert!(!worker.images().join("scratch").exists());
    // The worker does the node-local part.
    let device = worker.attach("pv-ctl", "ext4");
    assert_eq!(worker.loops_of("pv-ctl"), [PathBuf::from(&device)]);
    // (The audit names verbs as kubelet does, so the filter above is not vacuous.)
    let attached = worker.node.audit();
    assert!(
        attached
            .iter()
            .any(|l| l["verb"] == "waitforattach" && l["operation"] == "attach-image"),
        "{attached:?}"
    );
    worker.unmount_device("pv-ctl");
    worker.delete("pv-ctl");
    worker.assert_nothing_leaks();
}

#[test]
fn two_volumes_at_once() {
    let n = LoopNode::new();
    let mut devices = Vec::new();
    for (pv, fs) in [("pv-one", "ext4"), ("pv-two", "")] {
        n.provision(pv, 32 * MIB);
        let device = n.attach(pv, fs);
        n.mount_device(pv, &device, fs).success();
        let pod = n.pod_dir("pod-b", pv);
        kubelet_bind(&n.device_mount_path(pv), &pod);
        std::fs::write(pod.join("who"), pv).unwrap();
        devices.push(device);
    }
    assert_ne!(devices[0], devices[1]);
    assert_eq!(loop_devices_under(&n.images()).len(), 2);
    // An unmountdevice while a pod still has the file system (kubelet checks the mount refs
    // first, so only a bug or a race gets here): the device mount path is unmounted, but the
    // host refuses to detach a device that is still mounted, so the pod keeps its data.
    let dmp_one = n.device_mount_path("pv-one");
    let message = n
        .run(&["unmountdevice", dmp_one.to_str().unwrap()])
        .failure();
    assert!(message.contains("mounted"), "{message}");
    let pod_one = n.pod_dir("pod-b", "pv-one");
    assert_eq!(
        std::fs::read_to_string(pod_one.join("who")).unwrap(),
        "pv-one"
    );
    assert_eq!(n.loops_of("pv-one"), [PathBuf::from(&devices[0])]);
    // kubelet never calls unmountdevice again (the path is no longer mounted): once the pod
    // lets go, the driver's next call on the node (pv-two's unmountdevice) finishes it.
    kubelet_unbind(&pod_one);
    let pod_two = n.pod_dir("pod-b", "pv-two");
    assert_eq!(
        std::fs::read_to_string(pod_two.join("who")).unwrap(),
        "pv-two"
    );
    kubelet_unbind(&pod_two);
    n.unmount_device("pv-two");
    assert!(n.loops_of("pv-one").is_empty());
    for pv in ["pv-one", "pv-two"] {
        n.run(&["detach", pv, NODE]).success();
        n.delete(pv);
    }
    n.assert_nothing_leaks();
}

#[test]
fn concurrent_calls_on_one_volume_converge() {
    let n = LoopNode::new();
    let pv = "pv-race";
    n.provision(pv, 64 * MIB);
    n.run(&["init"]).success();
    let json = base_json(pv, "ext4", &[]);
    let placeholder = format!("loop:{pv}");
    let devices = concurrent_waitforattach(&n, 8, &placeholder, &json);
    assert!(devices.iter().all(|d| d == &devices[0]), "{devices:?}");
    assert_eq!(loop_devices_under(&n.images()).len(), 1);

    let dmp = n.device_mount_path(pv);
    let replies: Vec<Output> = std::thread::scope(|s| {
        let calls: Vec<_> = (0..4)
            .map(|_| s.spawn(|| n.mount_device(pv, &devices[0], "ext4")))
            .collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    });
    for reply in &replies {
        reply.success();
    }
    assert_eq!(mounts_at(&dmp).len(), 1, "{:?}", mounts_at(&dmp));
    assert_eq!(n.mkfs_count(), 1);

    // unmountdevice, then concurrent retries of it and of detach: all succeed, nothing left.
    n.unmount_device(pv);
    std::thread::scope(|s| {
        let calls: Vec<_> = (0..4)
            .map(|_| s.spawn(|| n.run(&["unmountdevice", dmp.to_str().unwrap()])))
            .chain((0..4).map(|_| s.spawn(|| n.run(&["detach", pv, NODE]))))
            .collect();
        for call in calls {
            call.join().unwrap().success();
        }
    });
    n.delete(pv);
    n.assert_nothing_leaks();
}

/// kubelet (or the node) kills `flex` in the middle of `mountdevice`; its retry converges: one
/// mount, one format, and the data written after the first mount survives every later call.
#[test]
fn killed_mountdevice_converges_without_reformatting() {
    let n = LoopNode::new();
    n.run(&["init"]).success();
    for (i, delay_ms) in [1u64, 3, 6, 10, 15, 25, 40].into_iter().enumerate() {
        let pv = format!("pv-kill-{i}");
        n.provision(&pv, 64 * MIB);
        let device = n.attach(&pv, "ext4");
        let dmp = n.device_mount_path(&pv);
        let mkfs_before = n.mkfs_count();
        let json = base_json(&pv, "ext4", &[]);
        let args = ["mountdevice", dmp.to_str().unwrap(), &device, &json];

        // Killed on a blank device: somewhere in probe, mkfs or mount.
        let mut child = n.node.command(&n.driver, &args).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        n.run(&args).success();
        assert_eq!(mounts_at(&dmp).len(), 1, "delay {delay_ms} ms");
        // One format: by the retry, or by the killed call's mkfs, which outlives `flex` and
        // holds the device lock until it is done (then it has no audit line: the record is
        // written when the operation returns).
        assert!(n.mkfs_count() - mkfs_before <= 1, "delay {delay_ms} ms");
        let uuid = fs_uuid(&device);
        assert!(!uuid.is_empty());
        std::fs::write(dmp.join("marker"), pv.as_bytes()).unwrap();

        // Killed again with the data in place, mounted, then unmounted and attached again
        // (maybe to another loop device).
        n.run(&args).success();
        n.unmount_device(&pv);
        let device = n.attach(&pv, "ext4");
        let args = ["mountdevice", dmp.to_str().unwrap(), &device, &json];
        let mut child = n.node.command(&n.driver, &args).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        n.run(&args).success();
        assert_eq!(mounts_at(&dmp).len(), 1, "delay {delay_ms} ms");
        assert_eq!(
            std::fs::read(dmp.join("marker")).unwrap(),
            pv.as_bytes(),
            "delay {delay_ms} ms: data lost"
        );
        assert!(n.mkfs_count() - mkfs_before <= 1, "delay {delay_ms} ms");
        assert_eq!(fs_uuid(&device), uuid, "delay {delay_ms} ms: reformatted");
        n.unmount_device(&pv);
        n.run(&["detach", &pv, NODE]).success();
        n.delete(&pv);
    }
    n.assert_nothing_leaks();
}

/// A device with a file system on it is mounted as it is or refused, never formatted.
#[test]
fn a_device_with_data_is_never_formatted() {
    let n = LoopNode::new();
    let pv = "pv-data";
    n.provision(pv, 320 * MIB);
    let device = n.attach(pv, "");
    // Someone put an xfs file system with data on it, outside flex.
    let mkfs = std::process::Command::new("mkfs.xfs")
        .args(["-q", &device])
        .status()
        .unwrap();
    assert!(mkfs.success());
    let scratch = tempfile::tempdir().unwrap();
    nix::mount::mount(
        Some(device.as_str()),
        scratch.path(),
        Some("xfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .unwrap();
    std::fs::write(scratch.path().join("precious"), b"keep me").unwrap();
    flex_tests::unmount(scratch.path());

    // An explicit, different fsType: a clear failure, no format.
    let message = n.mount_device(pv, &device, "ext4").failure();
    assert!(message.contains("not reformatting"), "{message}");
    assert!(mounts_at(&n.device_mount_path(pv)).is_empty());
    // No fsType: mounted as it is.
    n.mount_device(pv, &device, "").success();
    let dmp = n.device_mount_path(pv);
    assert_eq!(mounts_at(&dmp)[0].fs_type, "xfs");
    assert_eq!(std::fs::read(dmp.join("precious")).unwrap(), b"keep me");
    assert_eq!(n.mkfs_count(), 0);
    // A device that is not the volume's own is refused.
    let other = n.mount_device(pv, "/dev/loop999", "").failure();
    assert!(other.contains("not volume"), "{other}");
    n.unmount_device(pv);
    // Detached, mountdevice does not attach it behind kubelet's back: waitforattach does.
    let message = n.mount_device(pv, &device, "").failure();
    assert!(message.contains("not attached"), "{message}");
    n.run(&["detach", pv, NODE]).success();
    n.delete(pv);
    n.assert_nothing_leaks();
}

#[test]
fn provision_and_delete() {
    let n = LoopNode::new();
    // Provisioner keys: requestGiB alone is enough too; the image is sparse.
    let json = json!({"kubernetes.io/pvOrVolumeName": "pv-gib", "requestGiB": "1"});
    n.run(&["provision", &json.to_string()]).success();
    n.run(&["provision", &json.to_string()]).success();
    let image = n.images().join("pv-gib");
    let meta = std::fs::metadata(&image).unwrap();
    assert_eq!(meta.len(), 1 << 30);
    use std::os::unix::fs::MetadataExt;
    assert!(meta.blocks() < 16, "image is not sparse");
    n.delete("pv-gib");
    n.delete("pv-gib");
    assert!(!image.exists());
    // Too large for the policy.
    let huge = json!({"kubernetes.io/pvOrVolumeName": "pv-huge", "requestGiB": "2048"});
    let message = n.run(&["provision", &huge.to_string()]).failure();
    assert!(message.contains("max_image_bytes"), "{message}");
    // getvolumename: kubelet's default (the PV name) is what detach receives.
    let any = base_json("pv-gib", "", &[]);
    assert_eq!(n.run(&["getvolumename", &any]).status(), "Not supported");
    n.assert_nothing_leaks();
}

/// An inline volume (a `size` option, no provisioned image) lives from `waitforattach` to the
/// `unmountdevice` after its last pod; a provisioned PV's image only ends with `delete`.
#[test]
fn inline_images_end_at_unmountdevice_provisioned_ones_at_delete() {
    let n = LoopNode::new();
    let inline = base_json("scratch", "ext4", &[("size", "32Mi")]);
    let dmp = n.device_mount_path("scratch");
    let dmp_arg = dmp.to_str().unwrap();
    let marker = n.state("inline", "scratch");
    // An unprovisioned PV without a size cannot be attached on the node, and marks nothing.
    let none = base_json("pv-none", "", &[]);
    n.run(&["attach", &none, NODE]).success();
    let message = n.run(&["waitforattach", "loop:pv-none", &none]).failure();
    assert!(message.contains("has no image"), "{message}");
    assert!(!n.state("inline", "pv-none").exists());

    for round in 0..2 {
        let device = n.attach_json("scratch", &inline);
        assert!(n.images().join("scratch").exists());
        assert!(marker.exists(), "inline volume not marked");
        // An attached volume cannot be deleted.
        let delete = json!({"kubernetes.io/pvOrVolumeName": "scratch"}).to_string();
        let message = n.run(&["delete", &delete]).failure();
        assert!(message.contains("attached"), "{message}");
        n.run(&["mountdevice", dmp_arg, &device, &inline]).success();
        // Each lifetime starts blank: the last one's file is gone.
        assert!(
            !dmp.join("old").exists(),
            "round {round}: data of a previous lifetime"
        );
        std::fs::write(dmp.join("old"), b"scratch").unwrap();
        n.unmount_device("scratch");
        assert!(!n.images().join("scratch").exists(), "inline image kept");
        assert!(!marker.exists());
        n.run(&["detach", "scratch", NODE]).success();
        // kubelet retries: still success.
        n.run(&["unmountdevice", dmp_arg]).success();
    }
    assert_eq!(n.mkfs_count(), 2, "one format per inline lifetime");

    n.provision("pv-keep", 32 * MIB);
    for round in 0..2 {
        let device = n.attach("pv-keep", "ext4");
        assert!(!n.state("inline", "pv-keep").exists());
        n.mount_device("pv-keep", &device, "ext4").success();
        let dmp = n.device_mount_path("pv-keep");
        if round == 0 {
            std::fs::write(dmp.join("kept"), b"pv").unwrap();
        }
        assert_eq!(std::fs::read(dmp.join("kept")).unwrap(), b"pv");
        n.unmount_device("pv-keep");
        assert!(
            n.images().join("pv-keep").exists(),
            "provisioned image deleted"
        );
    }
    assert_eq!(n.mkfs_count(), 3);
    n.delete("pv-keep");
    assert!(!n.images().join("pv-keep").exists());
    n.assert_nothing_leaks();
}

/// Crashes and retries of the node-side verbs: `unmountdevice` repeated, killed at any point
/// (including after its unmount, when kubelet never calls it again), and concurrent
/// `waitforattach` calls of an inline volume: one image, one loop device, and in the end
/// nothing left.
#[test]
fn killed_and_repeated_node_verbs_converge() {
    let n = LoopNode::new();
    n.run(&["init"]).success();
    let inline = |name: &str| base_json(name, "ext4", &[("size", "32Mi")]);

    // Concurrent waitforattach of a new inline volume: one image, one device for all.
    let json = inline("tmp-race");
    let devices = concurrent_waitforattach(&n, 6, "loop:tmp-race", &json);
    assert!(devices.iter().all(|d| d == &devices[0]), "{devices:?}");
    assert_eq!(n.loops_of("tmp-race").len(), 1);
    assert!(n.state("inline", "tmp-race").exists());
    n.mount_device("tmp-race", &devices[0], "ext4").success();
    // unmountdevice twice.
    n.unmount_device("tmp-race");
    n.unmount_device("tmp-race");
    assert!(!n.images().join("tmp-race").exists());

    // Killed after its unmount, deterministically: the path unmounted, the record written,
    // the loop device still attached. kubelet will not call unmountdevice again; another
    // volume's waitforattach finishes it.
    let device = n.attach_json("tmp-cut", &inline("tmp-cut"));
    n.mount_device("tmp-cut", &device, "ext4").success();
    let dmp = n.device_mount_path("tmp-cut");
    flex_tests::unmount(&dmp);
    std::fs::create_dir_all(n.state("teardown", "")).unwrap();
    std::fs::write(n.state("teardown", "tmp-cut"), dmp.to_str().unwrap()).unwrap();
    assert_eq!(n.loops_of("tmp-cut").len(), 1);
    n.provision("pv-bystander", 16 * MIB);
    n.attach("pv-bystander", "");
    assert!(n.loops_of("tmp-cut").is_empty(), "teardown not finished");
    assert!(!n.images().join("tmp-cut").exists());
    assert!(!n.state("inline", "tmp-cut").exists());
    assert!(!n.state("teardown", "tmp-cut").exists());
    n.unmount_device("pv-bystander");

    // The same, finished by the volume's own next waitforattach: a fresh lifetime.
    let device = n.attach_json("tmp-cut", &inline("tmp-cut"));
    n.mount_device("tmp-cut", &device, "ext4").success();
    std::fs::write(dmp.join("old"), b"x").unwrap();
    flex_tests::unmount(&dmp);
    std::fs::write(n.state("teardown", "tmp-cut"), dmp.to_str().unwrap()).unwrap();
    let device = n.attach_json("tmp-cut", &inline("tmp-cut"));
    n.mount_device("tmp-cut", &device, "ext4").success();
    assert!(
        !dmp.join("old").exists(),
        "the previous lifetime's image was reused"
    );
    n.unmount_device("tmp-cut");

    // Killed at random points, then what kubelet does: unmountdevice again only while the path
    // is still mounted. Any later call of the driver converges the rest.
    let mut cut_after_unmount = 0;
    for (i, delay_ms) in [1u64, 3, 6, 10, 20, 40].into_iter().enumerate() {
        let name = format!("tmp-kill-{i}");
        let device = n.attach_json(&name, &inline(&name));
        n.mount_device(&name, &device, "ext4").success();
        let dmp = n.device_mount_path(&name);
        let args = ["unmountdevice", dmp.to_str().unwrap()];
        let mut child = n.node.command(&n.driver, &args).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        if !mounts_at(&dmp).is_empty() {
            n.run(&args).success();
        } else if !n.loops_of(&name).is_empty() {
            cut_after_unmount += 1;
        }
        n.attach("pv-bystander", "");
        n.unmount_device("pv-bystander");
        assert!(
            n.loops_of(&name).is_empty(),
            "delay {delay_ms} ms: attached"
        );
        assert!(
            !n.images().join(&name).exists(),
            "delay {delay_ms} ms: inline image leaked"
        );
        assert!(!n.state("inline", &name).exists(), "delay {delay_ms} ms");
    }
    println!("killed between unmount and detach: {cut_after_unmount} of 6");
    n.delete("pv-bystander");
    n.assert_nothing_leaks();
}

/// Teardown in kubelet's order, then the provisioner deletes the volume.
fn teardown(n: &LoopNode, pv: &str, pod: &Path, dmp: &Path, t: &mut Timings) {
    t.run(n, &["unmount", pod.to_str().unwrap()]).success();
    assert!(mounts_at(pod).is_empty());
    t.run(n, &["unmountdevice", dmp.to_str().unwrap()])
        .success();
    assert!(n.loops_of(pv).is_empty());
    t.run(n, &["detach", pv, NODE]).success();
    let delete = json!({"kubernetes.io/pvOrVolumeName": pv}).to_string();
    t.run(n, &["delete", &delete]).success();
    assert!(!n.images().join(pv).exists());
    n.delete(pv); // a missing volume is success
    n.assert_nothing_leaks();
}

/// CAP_SYS_RESOURCE in this process's effective set.
fn has_cap_sys_resource() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .unwrap();
    u64::from_str_radix(hex.trim(), 16).unwrap() & (1 << 24) != 0
}

/// The file system's UUID as the disk says (a reformat changes it).
fn fs_uuid(device: &str) -> String {
    let out = std::process::Command::new("blkid")
        .args(["-p", "-o", "value", "-s", "UUID", device])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The pid of a running `mkfs.*` that has `device` open, if any (the host hands mkfs the
/// checked descriptor as `/proc/self/fd/N`, never the device's name).
fn mkfs_running_on(device: &str) -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let is_mkfs = args
                .first()
                .is_some_and(|a| a.windows(5).any(|w| w == b"mkfs."));
            let has_device = || {
                std::fs::read_dir(entry.path().join("fd"))
                    .into_iter()
                    .flatten()
                    .flatten()
                    .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l == Path::new(device)))
            };
            (is_mkfs && has_device()).then_some(pid)
        })
}

/// `flex` SIGKILLed exactly while its mkfs runs: mkfs outlives it and keeps the device lock, so
/// the retry waits for the format to finish and mounts it instead of formatting again.
#[test]
fn killed_during_mkfs_the_retry_waits_for_it() {
    let n = LoopNode::new();
    n.run(&["init"]).success();
    let pv = "pv-mid-mkfs";
    n.provision(pv, 256 * MIB);
    let device = n.attach(pv, "ext4");
    let dmp = n.device_mount_path(pv);
    let json = base_json(pv, "ext4", &[]);
    let args = ["mountdevice", dmp.to_str().unwrap(), &device, &json];

    let mut child = n.node.command(&n.driver, &args).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mkfs = loop {
        if let Some(pid) = mkfs_running_on(&device) {
            break Some(pid);
        }
        if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            break None;
        }
        std::thread::sleep(Duration::from_micros(200));
    };
    let _ = child.kill();
    let _ = child.wait();
    let mkfs = mkfs.expect("mkfs was never seen running");
    let orphan_alive = Path::new(&format!("/proc/{mkfs}")).exists();

    n.run(&args).success();
    assert_eq!(mounts_at(&dmp).len(), 1);
    assert!(
        mkfs_running_on(&device).is_none(),
        "the retry returned before mkfs ended"
    );
    assert_eq!(n.mkfs_count(), 0, "the retry must not format again");
    let uuid = fs_uuid(&device);
    std::fs::write(dmp.join("marker"), b"x").unwrap();
    n.unmount_device(pv);
    let device = n.attach(pv, "ext4");
    n.mount_device(pv, &device, "ext4").success();
    assert_eq!(fs_uuid(&device), uuid);
    assert_eq!(std::fs::read(dmp.join("marker")).unwrap(), b"x");
    println!("mkfs {mkfs} still running when flex was killed: {orphan_alive}");
    n.unmount_device(pv);
    n.run(&["detach", pv, NODE]).success();
    n.delete(pv);
    n.assert_nothing_leaks();
}

/// `FLEX_DRY_RUN=1`: the driver runs and every privileged operation is audited as would-do,
/// but no image, loop device, file system or mount appears.
#[test]
fn dry_run_changes_nothing() {
    let n = LoopNode::new();
    let pv = "pv-dry";
    let run = |args: &[&str]| {
        let out = n
            .node
            .command(&n.driver, args)
            .env("FLEX_DRY_RUN", "1")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert!(out.stderr.is_empty(), "{out:?}");
    };
    let provision = json!({"kubernetes.io/pvOrVolumeName": pv, "requestGiB": "1"});
    run(&["provision", &provision.to_string()]);
    assert!(!n.images().join(pv).exists());
    n.provision(pv, 32 * MIB);
    let json = base_json(pv, "ext4", &[]);
    run(&["attach", &json, NODE]);
    run(&["waitforattach", &format!("loop:{pv}"), &json]);
    assert!(loop_devices_under(&n.images()).is_empty());
    // An inline volume: neither its image nor its marker is made.
    let inline = base_json("scratch-dry", "ext4", &[("size", "16Mi")]);
    run(&["waitforattach", "loop:scratch-dry", &inline]);
    assert!(!n.images().join("scratch-dry").exists());
    assert!(!n.state("inline", "scratch-dry").exists());
    let device = n.attach(pv, "ext4");
    let dmp = n.device_mount_path(pv);
    run(&["mountdevice", dmp.to_str().unwrap(), &device, &json]);
    assert!(mounts_at(&dmp).is_empty());
    assert_eq!(fs_uuid(&device), "", "dry run formatted the device");
    let would: Vec<String> = n
        .node
        .audit()
        .iter()
        .filter(|l| l["decision"] == "would-do")
        .map(|l| l["operation"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        would,
        [
            "create-image",
            "attach-image",
            "create-image",
            "attach-image",
            "mkfs",
            "mount"
        ],
        "{would:?}"
    );
    run(&["unmountdevice", dmp.to_str().unwrap()]);
    assert_eq!(n.loops_of(pv), [PathBuf::from(&device)]);
    n.unmount_device(pv);
    n.run(&["detach", pv, NODE]).success();
    n.delete(pv);
    n.assert_nothing_leaks();
}

/// `calls` simultaneous `waitforattach` calls for one volume; the device each returned.
fn concurrent_waitforattach(n: &LoopNode, calls: usize, device: &str, json: &str) -> Vec<String> {
    std::thread::scope(|s| {
        let calls: Vec<_> = (0..calls)
            .map(|_| s.spawn(|| n.run(&["waitforattach", device, json])))
            .collect();
        calls
            .into_iter()
            .map(|c| {
                c.join().unwrap().success()["device"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    })
}
