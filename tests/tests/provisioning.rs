//! The drivers' `flex:volume/provisioning` export (`describe`, `provision`, `delete`), called
//! in-process through the host library exactly as `flex provisioner` calls it
//! (`flex_host::provisioning`), on the real compiled components, under their shipped policies:
//! the loop driver on real image files and loop devices, the EBS driver against moto (every
//! EC2 state change checked through moto's own API). The node verbs then run through the real
//! `flex` binary with the options `provision` recorded, as kubelet passes them from the PV.
//!
//! The host reads its directories from the environment (`FLEX_POLICY_DIR`, `FLEX_LOG_DIR`...),
//! which is the process's: they are set once for this test binary ([`base`]), and each test
//! installs its drivers under a vendor name of its own (`<test>~loop`), so policies, state and
//! images never mix between tests running in parallel. Everything a test made is removed when
//! its [`Installed`] drops, also when it fails.

use flex_host::bindings::{ProvisionRequest, Provisioned, ProvisionerInfo};
use flex_host::provisioning::{self, AccessMode};
use flex_tests::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const NODE: &str = "node-1";
const REGION: &str = "eu-west-1";

/// The host's directories for this test binary, with the environment pointing at them (set
/// once, before any host call). A previous run's are removed first.
fn base() -> &'static Path {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    BASE.get_or_init(|| {
        require_root();
        let base = root_only_base().join("provisioning");
        unmount_all_under(&base);
        detach_loop_devices_under(&base);
        let _ = std::fs::remove_dir_all(&base);
        for dir in ["policy", "log", "state", "run", "cache"] {
            std::fs::create_dir_all(base.join(dir)).unwrap();
        }
        let compiler = flex_binary().with_file_name("flex-compile");
        assert!(
            compiler.is_file(),
            "{} is missing: build with `make build` first",
            compiler.display()
        );
        // SAFETY: set once, under the OnceLock, before this binary's first host call or exec;
        // every later reader goes through std's environment lock.
        unsafe {
            std::env::set_var("FLEX_POLICY_DIR", base.join("policy"));
            std::env::set_var("FLEX_LOG_DIR", base.join("log"));
            std::env::set_var("FLEX_STATE_DIR", base.join("state"));
            std::env::set_var("FLEX_RUN_DIR", base.join("run"));
            std::env::set_var("FLEX_CACHE_DIR", base.join("cache"));
            std::env::set_var("FLEX_COMPILER", &compiler);
            std::env::remove_var("FLEX_COMPONENT");
            std::env::remove_var("FLEX_DRY_RUN");
        }
        base
    })
}

/// One driver installed as `flex install` lays it out (`<plugins>/<vendor~driver>/<driver>` =
/// the `flex` binary, `<driver>.wasm` beside it), with its policy, under `<base>/<tag>`.
struct Installed {
    name: String,
    short: String,
    dir: PathBuf,
}

impl Installed {
    /// Installs `component` as `<tag>~<short>` with `policy` (given the driver's own directory,
    /// for paths such as its image directory).
    fn new(
        tag: &str,
        short: &str,
        component: &Path,
        policy: impl FnOnce(&Path) -> String,
    ) -> Installed {
        let base = base();
        let name = format!("{tag}~{short}");
        let dir = base.join(tag);
        let _ = std::fs::remove_dir_all(&dir);
        let driver_dir = dir.join("plugins").join(&name);
        std::fs::create_dir_all(&driver_dir).unwrap();
        std::os::unix::fs::symlink(flex_binary(), driver_dir.join(short)).unwrap();
        std::fs::copy(component, driver_dir.join(format!("{short}.wasm"))).unwrap();
        let installed = Installed {
            name,
            short: short.to_string(),
            dir,
        };
        let text = policy(&installed.dir);
        let path = installed.policy_path();
        std::fs::write(&path, text).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        installed
    }

    fn policy_path(&self) -> PathBuf {
        base().join("policy").join(format!("{}.toml", self.name))
    }

    /// The driver as the controller finds it in the plugin directory.
    fn plugin(&self) -> flex_host::locate::Plugin {
        provisioning::installed(&self.dir.join("plugins"), &self.name)
    }

    fn describe(&self) -> ProvisionerInfo {
        provisioning::describe(&self.plugin()).expect("describe")
    }

    fn provision(&self, request: &ProvisionRequest) -> Result<Provisioned, String> {
        provisioning::provision(&self.plugin(), request)
    }

    fn delete(&self, name: &str, options: &[(String, String)]) -> Result<(), String> {
        provisioning::delete(&self.plugin(), name, options)
    }

    /// A node verb, exec'd as kubelet does (no shell, stdin /dev/null), with this binary's
    /// host directories.
    fn run(&self, args: &[&str]) -> Output {
        let executable = self.dir.join("plugins").join(&self.name).join(&self.short);
        let output = Command::new(executable)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("exec flex");
        Output::from(output)
    }

    /// kubelet's device mount path of `pv`, created as kubelet does before `mountdevice`.
    fn device_mount_path(&self, pv: &str) -> PathBuf {
        let (vendor, driver) = self.name.split_once('~').unwrap();
        let path = self
            .dir
            .join("kubelet/plugins/kubernetes.io/flexvolume")
            .join(vendor)
            .join(driver)
            .join("mounts")
            .join(pv);
        std::fs::create_dir_all(&path).unwrap();
        path
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        unmount_all_under(&self.dir);
        detach_loop_devices_under(&self.dir);
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_file(self.policy_path());
    }
}

/// What the controller sends for a claim of `bytes` (ReadWriteOnce, no limit or parameters).
fn request(name: &str, bytes: u64) -> ProvisionRequest {
    ProvisionRequest {
        name: name.into(),
        requested_bytes: bytes,
        limit_bytes: None,
        parameters: Vec::new(),
        access_modes: vec![AccessMode::ReadWriteOnce],
        fs_type: None,
        claim_name: "data".into(),
        claim_namespace: "default".into(),
        claim_annotations: Vec::new(),
        selected_node: None,
    }
}

/// The StorageClass's parameters; `fsType` is also the request's `fs-type`, as the controller
/// sends it.
fn with_parameters(mut request: ProvisionRequest, parameters: &[(&str, &str)]) -> ProvisionRequest {
    for (key, value) in parameters {
        request
            .parameters
            .push((key.to_string(), value.to_string()));
        if *key == "fsType" {
            request.fs_type = Some(value.to_string());
        }
    }
    request
}

fn assert_read_write_once_only(info: &ProvisionerInfo) {
    assert!(
        matches!(info.access_modes.as_slice(), [AccessMode::ReadWriteOnce]),
        "{:?}",
        info.access_modes
    );
}

fn pairs(options: &[(&str, &str)]) -> Vec<(String, String)> {
    options
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn option<'a>(provisioned: &'a Provisioned, key: &str) -> Option<&'a str> {
    provisioned
        .options
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// The options JSON kubelet passes the node verbs of a provisioned PV: its `flexVolume.options`
/// and `kubernetes.io/pvOrVolumeName` (kubelet's `fsType` empty: the PV sets none).
fn pv_json(pv: &str, provisioned: &Provisioned) -> String {
    let options: Vec<(&str, &str)> = provisioned
        .options
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    base_json(pv, "", &options)
}

// ---------------------------------------------------------------------------------------
// loop

/// The loop driver with its shipped policy, the image directory under the test's directory.
fn loop_driver(tag: &str) -> Installed {
    Installed::new(tag, "loop", &guest("flex_loop"), |dir| {
        let images = dir.join("images");
        let policy = shipped_policy("loop")
            .replace("/var/lib/flex/images/flex~loop", images.to_str().unwrap());
        assert!(policy.contains(images.to_str().unwrap()));
        policy
    })
}

/// The image files in the driver's image directory, sorted (none when it does not exist).
fn images(driver: &Installed) -> Vec<(String, u64)> {
    let Ok(entries) = std::fs::read_dir(driver.dir.join("images")) else {
        return Vec::new();
    };
    let mut found: Vec<(String, u64)> = entries
        .flatten()
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().len(),
            )
        })
        .collect();
    found.sort();
    found
}

#[test]
fn loop_provision_is_rounded_idempotent_and_deleted() {
    let d = loop_driver("loop-a");
    let info = d.describe();
    assert_read_write_once_only(&info);
    assert_eq!(info.parameters, ["fsType"]);

    let pv = "pvc-0b6a3c1e-1111-4000-8000-00000000000a";
    let claim = with_parameters(request(pv, 10 * MIB + 1), &[("fsType", "xfs")]);
    let provisioned = d.provision(&claim).unwrap();
    assert_eq!(provisioned.capacity_bytes, 11 * MIB);
    assert_eq!(
        provisioned.options,
        pairs(&[("image", pv), ("fsType", "xfs")])
    );
    assert_eq!(images(&d), [(pv.to_string(), 11 * MIB)]);

    // The controller calls again after a crash: the same answer, still one image.
    let again = d.provision(&claim).unwrap();
    assert_eq!(again.capacity_bytes, provisioned.capacity_bytes);
    assert_eq!(again.options, provisioned.options);
    assert_eq!(images(&d), [(pv.to_string(), 11 * MIB)]);

    // A limit the rounded size reaches exactly is fine; no fsType records only the image.
    let exact = ProvisionRequest {
        limit_bytes: Some(MIB),
        ..request("pvc-exact", 1)
    };
    let small = d.provision(&exact).unwrap();
    assert_eq!(small.capacity_bytes, MIB);
    assert_eq!(small.options, pairs(&[("image", "pvc-exact")]));

    d.delete(pv, &provisioned.options).unwrap();
    assert_eq!(images(&d), [("pvc-exact".to_string(), MIB)]);
    // Deleted already (a retry after a crash): success.
    d.delete(pv, &provisioned.options).unwrap();
    d.delete("pvc-exact", &small.options).unwrap();
    assert_eq!(images(&d), []);
    assert!(d.delete("pvc-never-provisioned", &[]).is_ok());
}

#[test]
fn loop_bad_requests_create_nothing() {
    let d = loop_driver("loop-b");
    let pv = "pvc-0b6a3c1e-2222-4000-8000-00000000000b";
    for (claim, expected) in [
        (
            with_parameters(request(pv, MIB), &[("fsType", "btrfs")]),
            "invalid parameter fsType \"btrfs\"",
        ),
        (
            with_parameters(request(pv, MIB), &[("colour", "red")]),
            "unknown StorageClass parameter \"colour\"",
        ),
        (
            ProvisionRequest {
                access_modes: vec![AccessMode::ReadWriteMany],
                ..request(pv, MIB)
            },
            "access mode ReadWriteMany",
        ),
        (
            ProvisionRequest {
                limit_bytes: Some(10 * MIB + 4096),
                ..request(pv, 10 * MIB + 1)
            },
            "above its limit",
        ),
        (request("../escape", MIB), "cannot name a loop image"),
    ] {
        let message = d.provision(&claim).unwrap_err();
        assert!(message.contains(expected), "{expected}: {message}");
    }
    assert_eq!(images(&d), []);

    // Beyond the policy's max_image_bytes (1 TiB): the host refuses, nothing is created.
    let message = d.provision(&request(pv, 2 << 40)).unwrap_err();
    assert!(message.contains("max_image_bytes"), "{message}");
    assert_eq!(images(&d), []);
}

#[test]
fn loop_node_verbs_use_the_recorded_options() {
    let d = loop_driver("loop-c");
    let pv = "pvc-0b6a3c1e-3333-4000-8000-00000000000c";
    // mkfs.xfs wants at least 300 MB.
    let claim = with_parameters(request(pv, 320 * MIB), &[("fsType", "xfs")]);
    let provisioned = d.provision(&claim).unwrap();
    let json = pv_json(pv, &provisioned);

    // kube-controller-manager's attach, then kubelet's waitforattach and mountdevice: the
    // recorded fsType is the file system made.
    let reply = d.run(&["attach", &json, NODE]).success();
    assert_eq!(reply["device"], format!("loop:{pv}").as_str());
    let reply = d
        .run(&["waitforattach", &format!("loop:{pv}"), &json])
        .success();
    let device = reply["device"].as_str().unwrap().to_string();
    assert!(device.starts_with("/dev/loop"), "{device}");
    let dmp = d.device_mount_path(pv);
    let dmp_arg = dmp.to_str().unwrap();
    d.run(&["mountdevice", dmp_arg, &device, &json]).success();
    let mounted = mounts_at(&dmp);
    assert_eq!(mounted.len(), 1, "{mounted:?}");
    assert_eq!(mounted[0].fs_type, "xfs");

    // Attached: delete is refused by the host, and the image stays.
    let message = d.delete(pv, &provisioned.options).unwrap_err();
    assert!(message.contains("attached"), "{message}");
    assert_eq!(images(&d).len(), 1);

    // An option naming another volume's image is refused by every verb that reads options.
    let other = base_json("pvc-other", "", &[("image", pv)]);
    for args in [
        vec!["attach", other.as_str(), NODE],
        vec!["waitforattach", "", other.as_str()],
    ] {
        let message = d.run(&args).failure();
        assert!(message.contains("does not name"), "{args:?}: {message}");
    }
    let message = d.delete("pvc-other", &pairs(&[("image", pv)])).unwrap_err();
    assert!(message.contains("does not name"), "{message}");

    d.run(&["unmountdevice", dmp_arg]).success();
    assert!(mounts_at(&dmp).is_empty());
    assert!(loop_devices_under(&d.dir.join("images")).is_empty());
    d.delete(pv, &provisioned.options).unwrap();
    assert_eq!(images(&d), []);
}

// ---------------------------------------------------------------------------------------
// hostpath (Python)

/// The Python hostpath driver with its shipped policy, its volumes in its own state directory.
fn hostpath_driver(tag: &str) -> (Installed, PathBuf) {
    let name = format!("{tag}~hostpath-py");
    let volumes = base().join("state").join(&name).join("volumes");
    let driver = Installed::new(tag, "hostpath-py", &guest("flex_hostpath_py"), |_| {
        let policy = shipped_policy("hostpath-py").replace(
            "/var/lib/flex/flex~hostpath-py/volumes",
            volumes.to_str().unwrap(),
        );
        assert!(policy.contains(volumes.to_str().unwrap()));
        policy
    });
    (driver, volumes)
}

fn entries(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn hostpath_py_provision_is_idempotent_checked_usable_and_deleted() {
    let (d, volumes) = hostpath_driver("hp-a");
    let info = d.describe();
    assert_read_write_once_only(&info);
    assert!(info.parameters.is_empty());
    assert!(info.node_local);

    let pv = "pvc-0b6a3c1e-3333-4000-8000-00000000000a";
    let provisioned = d.provision(&request(pv, 64 * MIB)).unwrap();
    assert_eq!(provisioned.capacity_bytes, 64 * MIB);
    assert!(provisioned.options.is_empty());
    assert_eq!(entries(&volumes), [pv]);
    // A retry after a crash keeps what is already there.
    std::fs::write(volumes.join(pv).join("data"), b"kept").unwrap();
    let again = d.provision(&request(pv, 64 * MIB)).unwrap();
    assert_eq!(
        (again.capacity_bytes, again.options),
        (provisioned.capacity_bytes, provisioned.options.clone())
    );
    assert_eq!(
        std::fs::read(volumes.join(pv).join("data")).unwrap(),
        b"kept"
    );

    // Everything is checked before anything is made; each refusal says why.
    let refused = [
        (request("../escape", MIB), "not a valid directory name"),
        (
            with_parameters(request("pvc-p", MIB), &[("fsType", "ext4")]),
            "unknown StorageClass parameter 'fsType'",
        ),
        (
            ProvisionRequest {
                access_modes: vec![AccessMode::ReadWriteMany],
                ..request("pvc-m", MIB)
            },
            "ReadWriteMany is not supported",
        ),
        (request("pvc-big", 2 * GIB), "allows at most 1073741824"),
    ];
    for (claim, why) in refused {
        let error = d.provision(&claim).unwrap_err();
        assert!(error.contains(why), "{}: {error}", claim.name);
    }
    assert_eq!(entries(&volumes), [pv]);
    assert!(!volumes.parent().unwrap().join("escape").exists());

    // kubelet mounts the PV with the options it records: the pod sees the volume's data.
    let dir = d.dir.join("pods/pod-a/volumes/data");
    std::fs::create_dir_all(&dir).unwrap();
    d.run(&["mount", dir.to_str().unwrap(), &pv_json(pv, &provisioned)])
        .success();
    assert_eq!(std::fs::read(dir.join("data")).unwrap(), b"kept");
    d.run(&["unmount", dir.to_str().unwrap()]).success();

    d.delete(pv, &provisioned.options).unwrap();
    assert_eq!(entries(&volumes), Vec::<String>::new());
    // Deleted already (a retry): success. A name that is not one directory: refused.
    d.delete(pv, &provisioned.options).unwrap();
    let error = d.delete("../../policy", &[]).unwrap_err();
    assert!(error.contains("not a valid directory name"), "{error}");
}

// ---------------------------------------------------------------------------------------
// tmpfs (JavaScript)

#[test]
fn tmpfs_js_provision_records_a_rounded_size_that_mounts_enforce() {
    let d = Installed::new("tj-a", "tmpfs-js", &script_guest("flex_tmpfs_js"), |_| {
        shipped_policy("tmpfs-js")
    });
    let info = d.describe();
    assert_read_write_once_only(&info);
    assert_eq!(info.parameters, ["inodes"]);
    assert!(!info.node_local);

    // The request rounded up to whole MiB, and the class's inode count, recorded in the PV.
    let pv = "pvc-0b6a3c1e-4444-4000-8000-00000000000b";
    let claim = with_parameters(request(pv, 3 * MIB + 1), &[("inodes", "500")]);
    let provisioned = d.provision(&claim).unwrap();
    assert_eq!(provisioned.capacity_bytes, 4 * MIB);
    let expected = pairs(&[("size", &(4 * MIB).to_string()), ("inodes", "500")]);
    assert_eq!(provisioned.options, expected);
    // A retry is the same answer.
    let again = d.provision(&claim).unwrap();
    assert_eq!(
        (again.capacity_bytes, again.options),
        (provisioned.capacity_bytes, expected)
    );

    // Each refusal is a Failure with the driver's text, not an exception's type.
    let refused = [
        (
            with_parameters(request("pvc-i", MIB), &[("inodes", "-1")]),
            "StorageClass parameter inodes \"-1\": expected a positive integer",
        ),
        (
            ProvisionRequest {
                limit_bytes: Some(MIB + 1),
                ..request("pvc-l", MIB + 1)
            },
            "the claim's limit of 1048577 bytes is under 2097152",
        ),
        (
            request("pvc-big", (1 << 40) + 1),
            "1099511627777 bytes is over this driver's 1Ti per volume",
        ),
    ];
    for (claim, why) in refused {
        let error = d.provision(&claim).unwrap_err();
        assert!(error.contains(why), "{}: {error}", claim.name);
    }

    // kubelet mounts the PV with the recorded options: a tmpfs of exactly that size.
    let dir = d.dir.join("pods/pod-a/volumes/scratch");
    std::fs::create_dir_all(&dir).unwrap();
    d.run(&["mount", dir.to_str().unwrap(), &pv_json(pv, &provisioned)])
        .success();
    let mounted = mounts_at(&dir);
    assert_eq!(mounted.len(), 1, "{mounted:?}");
    for option in ["size=4096k", "nr_inodes=500", "nosuid", "nodev"] {
        assert!(
            mounted[0].options.iter().any(|o| o == option),
            "{option} missing: {mounted:?}"
        );
    }
    let err = std::fs::write(dir.join("too-big"), vec![7u8; 5 << 20]).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(nix::libc::ENOSPC));
    d.run(&["unmount", dir.to_str().unwrap()]).success();

    // Nothing outside the mounts: delete succeeds, also when retried.
    d.delete(pv, &provisioned.options).unwrap();
    d.delete(pv, &provisioned.options).unwrap();
}

// ---------------------------------------------------------------------------------------
// EBS

/// The EBS driver against its own moto, with one instance (`node-1`, in eu-west-1c).
struct Ebs {
    driver: Installed,
    moto: Moto,
    instance: String,
    /// The volumes there before the test: the instance's root volume.
    preexisting: Vec<Value>,
}

fn ebs_driver(tag: &str) -> Ebs {
    let _ = base();
    let moto = Moto::start();
    let instance = moto.run_instance(REGION, "eu-west-1c");
    let endpoint = moto.endpoint();
    let driver = Installed::new(tag, "ebs", &guest("flex_ebs"), |_| {
        let extra =
            format!("\"instance.{NODE}\" = \"{instance}\"\nattach_timeout_seconds = \"10\"\n");
        let policy = shipped_policy("ebs")
            .replace("https://ec2.eu-west-1.amazonaws.com", &endpoint)
            .replace(
                "access_key_id = \"REPLACE-ME\"",
                "access_key_id = \"AKIDFLEXTEST\"",
            )
            .replace(
                "secret_access_key = \"REPLACE-ME\"",
                "secret_access_key = \"flexTestSecret\"",
            )
            .replace("[config]\n", &format!("[config]\n{extra}"));
        assert!(!policy.contains("REPLACE-ME") && policy.contains(&endpoint));
        policy
    });
    let mut n = Ebs {
        driver,
        moto,
        instance,
        preexisting: Vec::new(),
    };
    n.preexisting = n.all_volumes();
    n
}

impl Ebs {
    fn ec2(&self, method: &str, params: Value) -> Value {
        self.moto.ec2(REGION, method, params)
    }

    /// Every volume EC2 (moto) has but the ones there before the test (the root volume):
    /// tagged or not, what the driver created.
    fn all_volumes(&self) -> Vec<Value> {
        let id = |v: &Value| v["VolumeId"].clone();
        self.ec2("describe_volumes", json!({}))["Volumes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| !self.preexisting.iter().any(|p| id(p) == id(v)))
            .cloned()
            .collect()
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
}

fn tag(volume: &Value, key: &str) -> Option<String> {
    volume["Tags"]
        .as_array()?
        .iter()
        .find(|t| t["Key"] == key)
        .map(|t| t["Value"].as_str().unwrap_or_default().to_string())
}

#[test]
fn ebs_provision_is_rounded_idempotent_and_deleted() {
    let n = ebs_driver("ebs-a");
    let info = n.driver.describe();
    assert_read_write_once_only(&info);
    for key in ["type", "iops", "zone", "encrypted", "fsType"] {
        assert!(info.parameters.iter().any(|p| p == key), "{key}: {info:?}");
    }

    let pv = "pvc-0b6a3c1e-4444-4000-8000-00000000000d";
    let claim = with_parameters(
        request(pv, 9 * GIB + 1),
        &[
            ("type", "gp3"),
            ("iops", "4000"),
            ("zone", "eu-west-1b"),
            ("fsType", "ext4"),
        ],
    );
    let provisioned = n.driver.provision(&claim).unwrap();
    assert_eq!(provisioned.capacity_bytes, 10 * GIB);
    let volume = n.volume(pv);
    let id = volume["VolumeId"].as_str().unwrap().to_string();
    assert_eq!(
        provisioned.options,
        pairs(&[("volumeID", &id), ("fsType", "ext4")])
    );
    assert_eq!(volume["Size"], 10);
    assert_eq!(volume["VolumeType"], "gp3");
    assert_eq!(volume["Iops"], 4000);
    assert_eq!(volume["AvailabilityZone"], "eu-west-1b");
    assert_eq!(volume["State"], "available");
    assert_eq!(tag(&volume, "flex.io/pv-name").as_deref(), Some(pv));
    assert_eq!(
        tag(&volume, "flex.io/managed-by").as_deref(),
        Some("flex-ebs")
    );

    // The controller calls again: the same volume, still one.
    let again = n.driver.provision(&claim).unwrap();
    assert_eq!(again.capacity_bytes, provisioned.capacity_bytes);
    assert_eq!(again.options, provisioned.options);
    assert_eq!(n.all_volumes().len(), 1);

    // The node verbs find the volume by the recorded ID.
    let json = pv_json(pv, &provisioned);
    let reply = n.driver.run(&["isattached", &json, NODE]).success();
    assert_eq!(reply["attached"], false);

    n.driver.delete(pv, &provisioned.options).unwrap();
    assert_eq!(n.volumes(pv), Vec::<Value>::new());
    assert_eq!(n.all_volumes(), Vec::<Value>::new());
    // Deleted already: success, by ID or by name.
    n.driver.delete(pv, &provisioned.options).unwrap();
    n.driver.delete(pv, &[]).unwrap();
}

#[test]
fn ebs_zone_comes_from_the_class_the_scheduler_or_the_config() {
    let n = ebs_driver("ebs-b");
    // WaitForFirstConsumer: the zone of the node the scheduler chose (its instance's).
    let chosen = ProvisionRequest {
        selected_node: Some(NODE.into()),
        ..request("pvc-zone-node", GIB)
    };
    n.driver.provision(&chosen).unwrap();
    assert_eq!(n.volume("pvc-zone-node")["AvailabilityZone"], "eu-west-1c");
    // Otherwise the config's availability_zone.
    n.driver
        .provision(&request("pvc-zone-config", GIB))
        .unwrap();
    assert_eq!(
        n.volume("pvc-zone-config")["AvailabilityZone"],
        "eu-west-1a"
    );
    // A StorageClass zone the chosen node is not in: refused before CreateVolume.
    let conflict = ProvisionRequest {
        selected_node: Some(NODE.into()),
        ..with_parameters(request("pvc-zone-conflict", GIB), &[("zone", "eu-west-1a")])
    };
    let message = n.driver.provision(&conflict).unwrap_err();
    assert!(message.contains("could not attach there"), "{message}");
    assert!(n.volumes("pvc-zone-conflict").is_empty());
    assert_eq!(n.all_volumes().len(), 2);
}

#[test]
fn ebs_bad_requests_create_nothing() {
    let n = ebs_driver("ebs-c");
    let pv = "pvc-0b6a3c1e-5555-4000-8000-00000000000e";
    let bad: Vec<(ProvisionRequest, &str)> = vec![
        (
            with_parameters(request(pv, GIB), &[("type", "fast")]),
            "invalid parameter type \"fast\"",
        ),
        (
            with_parameters(request(pv, GIB), &[("type", "gp2"), ("iops", "3000")]),
            "no provisioned IOPS",
        ),
        (
            with_parameters(request(pv, 4 * GIB), &[("type", "io1")]),
            "needs the iops parameter",
        ),
        (
            with_parameters(request(pv, 4 * GIB), &[("type", "io1"), ("iops", "lots")]),
            "invalid parameter iops \"lots\"",
        ),
        (
            with_parameters(request(pv, 4 * GIB), &[("type", "io1"), ("iops", "1000")]),
            "at most 200",
        ),
        (
            with_parameters(request(pv, 4 * GIB), &[("type", "io2"), ("iops", "50")]),
            "takes 100 to 256000",
        ),
        (
            with_parameters(request(pv, GIB), &[("type", "gp3"), ("iops", "100")]),
            "takes 3000 to 80000",
        ),
        (
            with_parameters(request(pv, 10 * GIB), &[("type", "st1")]),
            "out of range for type st1",
        ),
        (
            with_parameters(request(pv, GIB), &[("encrypted", "yes")]),
            "invalid parameter encrypted",
        ),
        (
            with_parameters(request(pv, GIB), &[("fsType", "btrfs")]),
            "invalid parameter fsType",
        ),
        (
            with_parameters(request(pv, GIB), &[("colour", "blue")]),
            "unknown StorageClass parameter \"colour\"",
        ),
        (
            with_parameters(request(pv, GIB), &[("zone", "")]),
            "invalid parameter zone: empty",
        ),
        (
            ProvisionRequest {
                access_modes: vec![AccessMode::ReadOnlyMany],
                ..request(pv, GIB)
            },
            "access mode ReadOnlyMany",
        ),
        (
            ProvisionRequest {
                limit_bytes: Some(GIB + GIB / 2),
                ..request(pv, GIB + 1)
            },
            "above its limit",
        ),
        (request(pv, 65 << 40), "out of range"),
    ];
    for (claim, expected) in bad {
        let message = n.driver.provision(&claim).unwrap_err();
        assert!(message.contains(expected), "{expected}: {message}");
    }
    assert_eq!(n.all_volumes(), Vec::<Value>::new());

    // io1 within its bounds: created, with its IOPS.
    let io1 = with_parameters(
        request("pvc-io1", 3 * GIB + 1),
        &[("type", "io1"), ("iops", "200"), ("encrypted", "true")],
    );
    assert_eq!(n.driver.provision(&io1).unwrap().capacity_bytes, 4 * GIB);
    let volume = n.volume("pvc-io1");
    assert_eq!(volume["VolumeType"], "io1");
    assert_eq!(volume["Iops"], 200);
    assert_eq!(volume["Encrypted"], true);
}

#[test]
fn ebs_delete_refuses_attached_and_foreign_volumes() {
    let n = ebs_driver("ebs-d");
    let pv = "pvc-0b6a3c1e-6666-4000-8000-00000000000f";
    let provisioned = n.driver.provision(&request(pv, GIB)).unwrap();
    let id = option(&provisioned, "volumeID").unwrap().to_string();
    assert_eq!(option(&provisioned, "fsType"), None);

    // Attached (by the attach/detach controller, here straight through EC2): refused, kept.
    n.ec2(
        "attach_volume",
        json!({"VolumeId": id, "InstanceId": n.instance, "Device": "/dev/xvdf"}),
    );
    let message = n.driver.delete(pv, &provisioned.options).unwrap_err();
    assert!(message.contains("attached"), "{message}");
    assert_eq!(n.volume(pv)["VolumeId"], id.as_str());

    // A recorded ID of another PV's volume is refused, by delete and by the node verbs.
    let other = n.driver.provision(&request("pvc-other", GIB)).unwrap();
    let other_id = option(&other, "volumeID").unwrap().to_string();
    let hostile = pairs(&[("volumeID", &other_id)]);
    let message = n.driver.delete(pv, &hostile).unwrap_err();
    assert!(message.contains("is not"), "{message}");
    assert_eq!(n.volumes("pvc-other").len(), 1);
    let json = base_json(pv, "", &[("volumeID", &other_id)]);
    let message = n.driver.run(&["isattached", &json, NODE]).failure();
    assert!(message.contains("is not"), "{message}");
    let message = n
        .driver
        .delete(pv, &pairs(&[("volumeID", "../../x")]))
        .unwrap_err();
    assert!(message.contains("not an EC2 volume ID"), "{message}");

    // The recorded ID finds it for the node verbs too.
    let json = pv_json(pv, &provisioned);
    let reply = n.driver.run(&["isattached", &json, NODE]).success();
    assert_eq!(reply["attached"], true);

    n.ec2(
        "detach_volume",
        json!({"VolumeId": id, "InstanceId": n.instance}),
    );
    n.driver.delete(pv, &provisioned.options).unwrap();
    assert!(n.volumes(pv).is_empty());
    n.driver.delete("pvc-other", &other.options).unwrap();
    assert_eq!(n.all_volumes(), Vec::<Value>::new());
}
