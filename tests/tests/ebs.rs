//! The EBS driver through the real `flex` binary against moto, a local EC2 API: every EC2
//! state change is checked through moto's API (boto3) after each step.
//!
//! moto keeps EC2's bookkeeping but has no disks, so the test plays the hypervisor: when
//! `attach` reports a device path, the test makes a disk appear there (a sparse image on a loop
//! device, exposed at that path with `mknod <path> b <major> <minor>`) and takes it away at
//! detach. Device paths live in a directory of the test's own under /dev (the driver's
//! `device_path_prefix`), so no real device name is touched. [`EbsNode`] unmounts, removes the
//! device nodes and detaches the loop devices on drop, also when a test fails.

use flex_tests::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const NODE: &str = "node-1";
const REGION: &str = "eu-west-1";
/// The secret key in the test policy: it must never reach the audit log or flex.log.
const SECRET: &str = "flexTestSecret/9f3b2c7d1e-never-logged";

static NEXT: AtomicUsize = AtomicUsize::new(0);

struct EbsNode {
    node: Node,
    driver: PathBuf,
    moto: Moto,
    instance: String,
    /// The node's device directory under /dev (`device_path_prefix` is `<dev_dir>/xvd`).
    dev_dir: PathBuf,
    /// Disks the test plugged in: (device node, loop device).
    disks: Mutex<Vec<(PathBuf, String)>>,
}

impl EbsNode {
    fn new() -> EbsNode {
        EbsNode::with_limits(30, |_, policy| policy)
    }

    /// A node with `deadline_seconds`; `edit` may change the policy (given the moto endpoint).
    fn with_limits(deadline: u64, edit: impl FnOnce(&str, String) -> String) -> EbsNode {
        require_root();
        let moto = Moto::start();
        let instance = moto.run_instance(REGION, "eu-west-1a");
        let node = Node::new();
        let driver = node.install("flex~ebs", &guest("flex_ebs"));
        let dev_dir = PathBuf::from(format!(
            "/dev/flex-ebs-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dev_dir).unwrap();
        let n = EbsNode {
            node,
            driver,
            moto,
            instance,
            dev_dir,
            disks: Mutex::new(Vec::new()),
        };
        let policy = edit(&n.moto.endpoint(), n.policy(deadline));
        n.node.set_policy("flex~ebs", &policy);
        n
    }

    /// The shipped policy, pointed at moto, this node's instance and device directory.
    fn policy(&self, deadline: u64) -> String {
        let shipped = shipped_policy("ebs");
        let devices = format!("{}/xvd[f-p]", self.dev_dir.display());
        let extra = format!(
            "\"instance.{NODE}\" = \"{}\"\ndevice_path_prefix = \"{}/xvd\"\n\
             attach_timeout_seconds = \"10\"\nwait_for_device_seconds = \"3\"\n",
            self.instance,
            self.dev_dir.display()
        );
        let policy = shipped
            .replace("https://ec2.eu-west-1.amazonaws.com", &self.moto.endpoint())
            .replace("/dev/xvd[f-p]", &devices)
            .replace(
                "access_key_id = \"REPLACE-ME\"",
                "access_key_id = \"AKIDFLEXTEST\"",
            )
            .replace(
                "secret_access_key = \"REPLACE-ME\"",
                &format!("secret_access_key = \"{SECRET}\""),
            )
            .replace("[config]\n", &format!("[config]\n{extra}"));
        assert!(!policy.contains("REPLACE-ME") && policy.contains(&devices));
        format!("{policy}\n[limits]\ndeadline_seconds = {deadline}\n")
    }

    fn run(&self, args: &[&str]) -> Output {
        self.node.run(&self.driver, args)
    }

    fn ec2(&self, method: &str, params: Value) -> Value {
        self.moto.ec2(REGION, method, params)
    }

    /// Volumes tagged with the PV name, as EC2 (moto) has them.
    fn volumes(&self, pv: &str) -> Vec<Value> {
        self.moto.volumes_of(REGION, pv)
    }

    fn volume(&self, pv: &str) -> Value {
        let volumes = self.volumes(pv);
        assert_eq!(volumes.len(), 1, "{volumes:?}");
        volumes[0].clone()
    }

    fn provision(&self, pv: &str, gib: u64, params: &[(&str, &str)]) -> Output {
        let mut json = json!({"kubernetes.io/pvOrVolumeName": pv,
            "requestBytes": (gib << 30).to_string(), "requestMiB": (gib << 10).to_string(),
            "requestGiB": gib.to_string()});
        for (k, v) in params {
            json[*k] = json!(v);
        }
        self.run(&["provision", &json.to_string()])
    }

    fn delete(&self, pv: &str) -> Output {
        let json = json!({"kubernetes.io/pvOrVolumeName": pv});
        self.run(&["delete", &json.to_string()])
    }

    /// kubelet's device mount path for a PV, created as kubelet does before `mountdevice`.
    fn device_mount_path(&self, pv: &str) -> PathBuf {
        self.node.device_mount_path("flex~ebs", pv)
    }

    fn pod_dir(&self, pod: &str, volume: &str) -> PathBuf {
        self.node.volume_dir("flex~ebs", pod, volume)
    }

    /// The hypervisor's part: the disk `image` appears at `device` (a loop device behind a
    /// device node made with mknod).
    fn plug(&self, device: &str, image: &str) {
        let disks = self.node.path("disks");
        std::fs::create_dir_all(&disks).unwrap();
        let image = disks.join(image);
        if !image.exists() {
            let file = std::fs::File::create(&image).unwrap();
            file.set_len(64 << 20).unwrap();
        }
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&image)
            .output()
            .unwrap();
        assert!(out.status.success(), "losetup: {out:?}");
        let loop_device = String::from_utf8(out.stdout).unwrap().trim().to_string();
        use std::os::unix::fs::MetadataExt;
        let rdev = std::fs::metadata(&loop_device).unwrap().rdev();
        let (major, minor) = (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
        self.disks
            .lock()
            .unwrap()
            .push((PathBuf::from(device), loop_device.clone()));
        let mknod = Command::new("mknod")
            .args([device, "b", &major.to_string(), &minor.to_string()])
            .status()
            .unwrap();
        assert!(mknod.success(), "mknod {device}");
    }

    /// The disk at `device` goes away (the hypervisor's detach).
    fn unplug(&self, device: &str) {
        let mut disks = self.disks.lock().unwrap();
        disks.retain(|(node, loop_device)| {
            if node != Path::new(device) {
                return true;
            }
            remove_disk(node, loop_device);
            false
        });
    }

    /// What EC2 says about the volume's attachments: (instance, device, state).
    fn attachments(&self, pv: &str) -> Vec<(String, String, String)> {
        self.volume(pv)["Attachments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                (
                    a["InstanceId"].as_str().unwrap_or_default().to_string(),
                    a["Device"].as_str().unwrap_or_default().to_string(),
                    a["State"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    fn secret_never_logged(&self) {
        let audit = std::fs::read_to_string(self.node.path("log/audit.jsonl")).unwrap();
        assert!(!audit.is_empty());
        assert!(!audit.contains(SECRET), "secret key in the audit log");
        assert!(!self.node.log().contains(SECRET), "secret key in flex.log");
    }
}

fn remove_disk(node: &Path, loop_device: &str) {
    let _ = std::fs::remove_file(node);
    let _ = Command::new("losetup")
        .args(["-d", loop_device])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

impl Drop for EbsNode {
    fn drop(&mut self) {
        // Mounts first (deepest first), then the disks, then the device directory.
        unmount_all_under(&self.node.path(""));
        let disks = std::mem::take(&mut *self.disks.lock().unwrap_or_else(|e| e.into_inner()));
        for (node, loop_device) in disks {
            remove_disk(&node, &loop_device);
        }
        detach_loop_devices_under(&self.node.path("disks"));
        let _ = std::fs::remove_dir_all(&self.dev_dir);
    }
}

#[test]
fn lifecycle() {
    let n = EbsNode::new();
    let pv = "pvc-0a1b2c3d";
    let json = base_json(pv, "ext4", &[]);
    n.run(&["init"]).success();
    let caps = n.run(&["init"]).success()["capabilities"].clone();
    assert_eq!(caps["attach"], true);

    // provision: one volume, of the requested size, type and zone, tagged with the PV name.
    n.provision(pv, 2, &[("type", "gp2")]).success();
    let volume = n.volume(pv);
    assert_eq!(volume["Size"], 2);
    assert_eq!(volume["VolumeType"], "gp2");
    assert_eq!(volume["AvailabilityZone"], "eu-west-1a");
    assert_eq!(volume["State"], "available");
    let tags = volume["Tags"].to_string();
    assert!(tags.contains("flex.io/managed-by"), "{tags}");
    let id = volume["VolumeId"].as_str().unwrap().to_string();
    // The provisioner retries: still one volume, the same one.
    n.provision(pv, 2, &[("type", "gp2")]).success();
    assert_eq!(n.volume(pv)["VolumeId"], id.as_str());

    // attach: at the first free device name, attached in EC2.
    let device = n.run(&["attach", &json, NODE]).success()["device"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(device, format!("{}/xvdf", n.dev_dir.display()));
    assert_eq!(
        n.attachments(pv),
        [(n.instance.clone(), "/dev/xvdf".into(), "attached".into())]
    );
    assert_eq!(n.volume(pv)["State"], "in-use");
    // Retried attach: the same device, still one attachment.
    let again = n.run(&["attach", &json, NODE]).success();
    assert_eq!(again["device"], device.as_str());
    assert_eq!(n.attachments(pv).len(), 1);
    assert_eq!(
        n.run(&["isattached", &json, NODE]).success()["attached"],
        true
    );
    // An attached volume is not deleted.
    let message = n.delete(pv).failure();
    assert!(message.contains("detach it first"), "{message}");

    // waitforattach: the device is not there yet, then the hypervisor plugs it in.
    let missing = n.run(&["waitforattach", &device, &json]).failure();
    assert!(missing.contains("did not appear"), "{missing}");
    n.plug(&device, pv);
    let waited = n.run(&["waitforattach", &device, &json]).success();
    assert_eq!(waited["device"], device.as_str());
    // kubelet may pass no device: the driver looks it up in EC2.
    let waited = n.run(&["waitforattach", "", &json]).success();
    assert_eq!(waited["device"], device.as_str());

    let dmp = n.device_mount_path(pv);
    let dmp_arg = dmp.to_str().unwrap();
    n.run(&["mountdevice", dmp_arg, &device, &json]).success();
    let mounted = mounts_at(&dmp);
    assert_eq!(mounted.len(), 1, "{mounted:?}");
    assert_eq!(mounted[0].fs_type, "ext4");
    n.run(&["mountdevice", dmp_arg, &device, &json]).success();
    assert_eq!(mounts_at(&dmp).len(), 1);

    // The driver binds the device mount path into the pod, read-only when asked, always
    // nosuid,nodev.
    let pod = n.pod_dir("pod-a", pv);
    let pod_arg = pod.to_str().unwrap();
    n.run(&["mount", pod_arg, &mount_json(pv, false, None, &[])])
        .success();
    let bound = mounts_at(&pod);
    assert_eq!(bound.len(), 1, "{bound:?}");
    assert!(bound[0].options.iter().any(|o| o == "nosuid"), "{bound:?}");
    std::fs::write(pod.join("data.txt"), b"on an EBS volume").unwrap();
    n.run(&["unmount", pod_arg]).success();
    assert!(mounts_at(&pod).is_empty());
    let read_only = n.pod_dir("pod-b", pv);
    let read_only_arg = read_only.to_str().unwrap();
    n.run(&["mount", read_only_arg, &mount_json(pv, true, None, &[])])
        .success();
    assert!(
        std::fs::write(read_only.join("x"), b"x").is_err(),
        "read-only bind"
    );
    assert_eq!(
        std::fs::read(read_only.join("data.txt")).unwrap(),
        b"on an EBS volume"
    );
    n.run(&["unmount", read_only_arg]).success();
    n.run(&["unmountdevice", dmp_arg]).success();
    assert!(mounts_at(&dmp).is_empty());
    n.run(&["unmountdevice", dmp_arg]).success();

    // detach: EC2 has no attachment left; the hypervisor takes the disk away.
    n.run(&["detach", pv, NODE]).success();
    assert!(n.attachments(pv).is_empty());
    assert_eq!(n.volume(pv)["State"], "available");
    n.unplug(&device);
    assert_eq!(
        n.run(&["isattached", &json, NODE]).success()["attached"],
        false
    );
    n.run(&["detach", pv, NODE]).success();

    // Attached again: the data is still there, not reformatted.
    let device = n.run(&["attach", &json, NODE]).success()["device"]
        .as_str()
        .unwrap()
        .to_string();
    n.plug(&device, pv);
    n.run(&["waitforattach", &device, &json]).success();
    n.run(&["mountdevice", dmp_arg, &device, &json]).success();
    assert_eq!(
        std::fs::read(dmp.join("data.txt")).unwrap(),
        b"on an EBS volume"
    );
    n.run(&["unmountdevice", dmp_arg]).success();
    n.run(&["detach", pv, NODE]).success();
    n.unplug(&device);

    // delete: gone from EC2; deleting again succeeds.
    n.delete(pv).success();
    assert!(n.volumes(pv).is_empty());
    let all = n.ec2("describe_volumes", json!({}));
    assert!(!all.to_string().contains(&id), "{all}");
    n.delete(pv).success();
    assert_eq!(n.run(&["getvolumename", &json]).status(), "Not supported");

    // Every EC2 call was audited as method and path only; the secret key appears nowhere.
    let http: Vec<Value> = n
        .node
        .audit()
        .into_iter()
        .filter(|e| e["operation"] == "http")
        .collect();
    assert!(http.len() > 10, "{http:?}");
    for entry in &http {
        assert_eq!(entry["decision"], "allow", "{entry}");
        assert_eq!(entry["args"]["url"], format!("{}/", n.moto.endpoint()));
    }
    n.secret_never_logged();
}

#[test]
fn provision_parameters_are_checked() {
    let n = EbsNode::new();
    for (params, expected) in [
        (vec![("type", "fast")], "invalid parameter type \"fast\""),
        (
            vec![("color", "blue")],
            "unknown StorageClass parameter \"color\"",
        ),
        (
            vec![("type", "gp2"), ("iops", "3000")],
            "no provisioned IOPS",
        ),
        (vec![("type", "io1")], "needs the iops parameter"),
        (
            vec![("type", "io1"), ("iops", "lots")],
            "invalid parameter iops",
        ),
        (vec![("encrypted", "yes")], "invalid parameter encrypted"),
    ] {
        let message = n.provision("pv-bad", 1, &params).failure();
        assert!(message.contains(expected), "{params:?}: {message}");
    }
    assert!(n.volumes("pv-bad").is_empty());
    let message = n.provision("pv-bad", 0, &[]).failure();
    assert!(message.contains("out of range"), "{message}");

    n.provision(
        "pv-io1",
        4,
        &[
            ("type", "io1"),
            ("iops", "200"),
            ("availabilityZone", "eu-west-1b"),
        ],
    )
    .success();
    let volume = n.volume("pv-io1");
    assert_eq!(volume["VolumeType"], "io1");
    assert_eq!(volume["Iops"], 200);
    assert_eq!(volume["AvailabilityZone"], "eu-west-1b");
    assert_eq!(volume["Size"], 4);
    n.delete("pv-io1").success();
    assert!(n.volumes("pv-io1").is_empty());

    // A volume with the PV's tag that this driver did not create is never deleted.
    n.ec2(
        "create_volume",
        json!({"Size": 1, "AvailabilityZone": "eu-west-1a", "TagSpecifications": [
            {"ResourceType": "volume", "Tags": [{"Key": "flex.io/pv-name", "Value": "pv-foreign"}]}]}),
    );
    let message = n.delete("pv-foreign").failure();
    assert!(message.contains("did not create"), "{message}");
    assert_eq!(n.volumes("pv-foreign").len(), 1);
    n.secret_never_logged();
}

#[test]
fn attached_elsewhere_is_a_clear_failure() {
    let n = EbsNode::new();
    // A second node, with its own instance.
    let reply = n.ec2(
        "run_instances",
        json!({"ImageId": "ami-12c6146b", "MinCount": 1, "MaxCount": 1}),
    );
    let instance2 = reply["Instances"][0]["InstanceId"]
        .as_str()
        .unwrap()
        .to_string();
    let policy = n.policy(30).replace(
        "[config]\n",
        &format!(
            "[config]\n\"instance.node-2\" = \"{instance2}\"\n\
             \"instance.node-gone\" = \"i-0123456789abcdef0\"\n"
        ),
    );
    n.node.set_policy("flex~ebs", &policy);

    let pv = "pv-shared";
    let json = base_json(pv, "", &[]);
    n.provision(pv, 1, &[]).success();
    n.run(&["attach", &json, NODE]).success();
    let message = n.run(&["attach", &json, "node-2"]).failure();
    assert!(
        message.contains("detach it there first") && message.contains(&n.instance),
        "{message}"
    );
    assert_eq!(
        n.run(&["isattached", &json, "node-2"]).success()["attached"],
        false
    );
    // Detaching from node-2 leaves node-1's attachment alone.
    n.run(&["detach", pv, "node-2"]).success();
    assert_eq!(n.attachments(pv).len(), 1);
    // A node without an instance in the config.
    let message = n.run(&["attach", &json, "node-9"]).failure();
    assert!(message.contains("instance.node-9"), "{message}");
    // An EC2 error reaches kubelet with its code: an instance EC2 does not know.
    n.run(&["detach", pv, NODE]).success();
    let message = n.run(&["attach", &json, "node-gone"]).failure();
    assert!(
        message.contains("EC2 AttachVolume failed: InvalidInstanceID.NotFound"),
        "{message}"
    );
    assert!(n.attachments(pv).is_empty());
    n.run(&["attach", &json, NODE]).success();
    // Two volumes on one node get two device names.
    n.provision("pv-second", 1, &[]).success();
    let second = n
        .run(&["attach", &base_json("pv-second", "", &[]), NODE])
        .success();
    assert!(
        second["device"].as_str().unwrap().ends_with("/xvdg"),
        "{second}"
    );
    for pv in [pv, "pv-second"] {
        n.run(&["detach", pv, NODE]).success();
        n.delete(pv).success();
    }
    // A detach or delete of a volume that never existed succeeds.
    n.run(&["detach", "pv-never", NODE]).success();
    n.delete("pv-never").success();
}

#[test]
fn a_destination_outside_the_policy_is_denied_and_audited() {
    let elsewhere = LocalHttpServer::start();
    let n = EbsNode::with_limits(30, |moto, policy| {
        // The endpoint points to another port; the policy still lists only moto's.
        policy.replacen(
            &format!("endpoint = \"{moto}\""),
            &format!("endpoint = \"http://127.0.0.1:{}\"", elsewhere.port),
            1,
        )
    });
    let message = n.provision("pv-denied", 1, &[]).failure();
    assert!(
        message.contains("denied") && message.contains("not in the policy"),
        "{message}"
    );
    assert_eq!(elsewhere.requests(), 0, "a denied request left the sandbox");
    let denied: Vec<Value> = n
        .node
        .audit()
        .into_iter()
        .filter(|e| e["operation"] == "http" && e["decision"] == "deny")
        .collect();
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert_eq!(
        denied[0]["args"]["url"],
        format!("http://127.0.0.1:{}/", elsewhere.port)
    );
    assert!(n.volumes("pv-denied").is_empty());
    n.secret_never_logged();
}

/// moto freezes (SIGSTOP) during attach: a clear Failure by the deadline, not a hang; once it
/// runs again (SIGCONT), the retried attach converges on one attachment.
#[test]
fn a_paused_endpoint_fails_by_the_deadline_and_the_retry_succeeds() {
    const DEADLINE: u64 = 3;
    let n = EbsNode::with_limits(DEADLINE, |_, policy| policy);
    let pv = "pv-paused";
    let json = base_json(pv, "", &[]);
    n.provision(pv, 1, &[]).success();
    // Frozen before the call, and frozen in the middle of it (after some of its requests).
    for delay_ms in [0u64, 40] {
        let started = Instant::now();
        let child = n
            .node
            .command(&n.driver, &["attach", &json, NODE])
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        n.moto.pause();
        let output = child.wait_with_output().unwrap();
        let elapsed = started.elapsed();
        n.moto.resume();
        let reply: Value = serde_json::from_slice(&output.stdout).unwrap();
        assert!(
            elapsed < Duration::from_secs(DEADLINE + 5),
            "took {elapsed:?}"
        );
        if delay_ms == 0 {
            assert_eq!(reply["status"], "Failure", "{reply}");
        }
        if reply["status"] == "Failure" {
            let message = reply["message"].as_str().unwrap();
            assert!(
                message.contains("EC2") || message.contains(&format!("within {DEADLINE}s")),
                "{message}"
            );
            println!("frozen after {delay_ms} ms: {message} ({elapsed:?})");
        }
        let device = n.run(&["attach", &json, NODE]).success()["device"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(device.ends_with("/xvdf"), "{device}");
        assert_eq!(
            n.attachments(pv),
            [(n.instance.clone(), "/dev/xvdf".into(), "attached".into())]
        );
        n.run(&["detach", pv, NODE]).success();
    }
    // A provision frozen before it is answered, then retried: one volume.
    n.moto.pause();
    let message = n.provision("pv-retry", 1, &[]).failure();
    n.moto.resume();
    assert!(!message.is_empty());
    n.provision("pv-retry", 1, &[]).success();
    n.provision("pv-retry", 1, &[]).success();
    assert_eq!(n.volumes("pv-retry").len(), 1);
    n.secret_never_logged();
}

/// An AttachVolume that EC2 carries out after the call that sent it gave up (a deadline, a
/// crash) lands while the retry looks for a free device name: the retry answers with that
/// attachment instead of attaching the volume again at the next name. A proxy in front of
/// moto makes the late attach happen exactly then, so this needs no luck with timing.
#[test]
fn a_late_attach_is_taken_up_by_the_retry_not_moved() {
    let late: Arc<Mutex<Option<(String, String)>>> = Default::default();
    let mut proxy = None;
    let n = EbsNode::with_limits(30, |moto, policy| {
        let upstream = moto.rsplit(':').next().unwrap().parse().unwrap();
        let (endpoint, late) = (moto.to_string(), late.clone());
        let hooked = HookedProxy::start(upstream, move |head| {
            let free_name_lookup =
                head.contains("Action=DescribeVolumes") && head.contains("attachment.instance-id");
            if let Some((volume, instance)) = late.lock().unwrap().take_if(|_| free_name_lookup) {
                ec2_call(
                    &endpoint,
                    REGION,
                    "attach_volume",
                    json!({"VolumeId": volume, "InstanceId": instance, "Device": "/dev/xvdf"}),
                );
            }
        });
        let policy = policy.replace(moto, &format!("http://127.0.0.1:{}", hooked.port));
        proxy = Some(hooked);
        policy
    });
    let pv = "pv-late";
    n.provision(pv, 1, &[]).success();
    let volume = n.volume(pv)["VolumeId"].as_str().unwrap().to_string();
    *late.lock().unwrap() = Some((volume, n.instance.clone()));
    let json = base_json(pv, "", &[]);
    let device = n.run(&["attach", &json, NODE]).success()["device"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(late.lock().unwrap().is_none(), "the late attach never ran");
    assert!(device.ends_with("/xvdf"), "{device}");
    assert_eq!(
        n.attachments(pv),
        [(n.instance.clone(), "/dev/xvdf".into(), "attached".into())]
    );
    n.run(&["detach", pv, NODE]).success();
    assert!(n.attachments(pv).is_empty());
    drop(proxy);
}

/// An endpoint that accepts connections and never answers is cut off by the verb's deadline.
#[test]
fn a_hung_endpoint_is_cut_off_by_the_deadline() {
    const DEADLINE: u64 = 2;
    let hung = SilentServer::start();
    let n = EbsNode::with_limits(DEADLINE, |moto, policy| {
        let hung = format!("http://127.0.0.1:{}", hung.port);
        policy.replace(moto, &hung)
    });
    let started = Instant::now();
    let message = n.provision("pv-hung", 1, &[]).failure();
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(DEADLINE - 1) && elapsed < Duration::from_secs(DEADLINE + 5),
        "took {elapsed:?}: {message}"
    );
    assert!(
        message.contains("EC2 DescribeVolumes failed") || message.contains("within 2s"),
        "{message}"
    );
    println!("hung endpoint: {message} ({elapsed:?})");
}
