//! `flex/ebs`: cloud block volumes through the EC2 API (EBS), with the whole attach lifecycle
//! and provisioning. Every EC2 call is a SigV4-signed request through `wasi:http`, so the host
//! checks it against the policy's `[http]` destinations and audits its method and URL path
//! (never headers or query: credentials stay out of the audit log).
//!
//! A volume is found by its tag `flex.io/pv-name` = the PV name: the protocol's external
//! provisioner cannot hand options back to the PV, and `detach` only receives the PV name.
//! A PV made by `flex provisioner` also records the volume's ID (option `volumeID`), which the
//! verbs that receive options use, checking the volume carries the PV's tag (so no option can
//! point a volume at another PV's disk). Settings come from the policy's `[config]` table:
//!
//! | key | meaning |
//! |---|---|
//! | `endpoint` | `https://ec2.<region>.amazonaws.com` (or any EC2-compatible endpoint) |
//! | `region` | the signing region |
//! | `access_key_id`, `secret_access_key`, `session_token` | credentials (the session token is optional) |
//! | `instance.<node name>` | the EC2 instance id of each node |
//! | `availability_zone` | where volumes are created unless the StorageClass or the scheduler's node says |
//! | `device_path_prefix` | where an attached device shows up on the node, followed by the letter (default `/dev/xvd`) |
//! | `request_timeout_seconds` | per EC2 request (default 20; the verb's deadline caps it) |
//! | `attach_timeout_seconds` | how long attach, detach, provision wait for EC2 to settle (default 60) |
//! | `wait_for_device_seconds` | how long `waitforattach` waits for the device (default 120) |
//!
//! Credentials may also come as the kubelet secrets `access_key_id`/`secret_access_key`, but
//! kubelet passes secrets to `mount` only, which makes no EC2 call: in practice they are in
//! the policy, which only the security team can read. Never from the environment.
//!
//! Dynamic provisioning (`flex provisioner`, the exported `flex:volume/provisioning`):
//! - `describe`: access mode `ReadWriteOnce`; StorageClass parameters `type` (gp2, gp3 (the
//!   default), io1, io2, st1, sc1, standard), `iops` (required for io1 and io2, allowed for gp3,
//!   refused otherwise; within EC2's bounds for the type and size), `zone` (or
//!   `availabilityZone`), `encrypted` (true or false), `fsType` (ext4 or xfs).
//! - `provision`: checks every parameter, the access modes and the size (the claim's request
//!   rounded up to whole GiB, never above its limit, within the type's size range) before any
//!   EC2 call. An existing volume tagged with the PV name (a retry) is returned as it is;
//!   otherwise CreateVolume in the StorageClass's zone, else the zone of the node the scheduler
//!   chose (`WaitForFirstConsumer`: DescribeInstances of its `instance.<node>`), else the
//!   config's `availability_zone`, then a bounded wait until it is available. The PV's capacity
//!   is the volume's size in GiB; its options record `volumeID` and `fsType` (when set).
//! - `delete`: DeleteVolume of the recorded `volumeID` (if it carries the PV's tag), else of the
//!   volume tagged with the PV name; a missing volume is success, an attached one a failure.
//!
//! Verbs:
//! - `provision`: CreateVolume of `requestGiB` (or `requestBytes` rounded up) with the
//!   StorageClass parameters `type`, `iops`, `availabilityZone`, `encrypted`; any other
//!   parameter fails. Tagged with the PV name, so a retry finds the volume instead of creating
//!   a second one. Waits (bounded) until it is available.
//! - `delete`: DeleteVolume of the volume tagged with the PV name (only ours can match); a
//!   missing volume is success, an attached one a failure.
//! - `attach <json> <node>`: AttachVolume to the node's instance at the first free device name
//!   `/dev/xvd[f-p]`, then DescribeVolumes until attached (bounded). Already attached to this
//!   node: the same device; attached to another instance: a failure naming it.
//! - `isattached`, `detach <pv> <node>` (DetachVolume, wait until detached; already detached
//!   is success).
//! - `waitforattach`: the device (looked up in EC2 when kubelet passes none) must appear on
//!   the node within `wait_for_device_seconds`, under its EC2 name or, on Nitro instances,
//!   udev's stable NVMe name `/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol…` (which the
//!   policy must grant; the reply names the one that appeared).
//! - `mountdevice` / `unmountdevice`: [`flex_sdk::filesystem::mount_device`] (format only a
//!   blank device, never reformat), unmount if mounted.
//!
//! - `mount` / `unmount`: bind the device mount path onto the pod directory with
//!   `nosuid,nodev` (`ro` for a read-only volume) and undo it, because kubelet's own fallback
//!   bind carries neither flag ([`flex_sdk::pod`]).
//!
//! `getvolumename` answers `Not supported`: kubelet uses the PV name.

mod ec2;

use aws_credential_types::Credentials;
use ec2::{Ec2, Volume};
use flex_sdk::{
    AccessMode, Capabilities, Driver, Options, ProvisionRequest, Provisioned, Provisioner,
    ProvisionerInfo, Result, block, config, failure, log, mounts,
};
use std::time::{Duration, Instant};

/// The tag that names a volume's PV: how every verb finds it.
const TAG_PV: &str = "flex.io/pv-name";
/// The tag that marks a volume as created by this driver.
const TAG_OWNER: &str = "flex.io/managed-by";
const OWNER: &str = "flex-ebs";
const FILE_SYSTEMS: [&str; 2] = ["ext4", "xfs"];
/// EC2 device names used for data volumes: `/dev/xvdf` ... `/dev/xvdp`.
const EC2_DEVICE_PREFIX: &str = "/dev/xvd";
const DEVICE_LETTERS: std::ops::RangeInclusive<char> = 'f'..='p';
const VOLUME_TYPES: [&str; 7] = ["gp2", "gp3", "io1", "io2", "st1", "sc1", "standard"];
const PROVISIONER_KEYS: [&str; 3] = ["requestBytes", "requestMiB", "requestGiB"];
const PARAMETERS: [&str; 4] = ["type", "iops", "availabilityZone", "encrypted"];
/// The StorageClass parameters `flex provisioner` may pass.
const CLASS_PARAMETERS: [&str; 6] = [
    "type",
    "iops",
    "zone",
    "availabilityZone",
    "encrypted",
    FS_OPTION,
];
/// The option `provision` records: the EC2 volume ID.
const VOLUME_ID_OPTION: &str = "volumeID";
/// The StorageClass parameter, and the option `provision` records, for the file system.
const FS_OPTION: &str = "fsType";
const GIB: u64 = 1 << 30;

struct Ebs;

impl Driver for Ebs {
    fn init() -> Result<Capabilities> {
        Ok(Capabilities {
            attach: true,
            supports_metrics: true,
            ..Capabilities::default()
        })
    }

    fn provision(options: Options) -> Result<()> {
        let pv = volume_name(&options)?;
        let request = CreateRequest::from_options(&options)?;
        let ec2 = client(&options)?;
        ensure_volume(&ec2, pv, &request, || match &request.zone {
            Some(zone) => Ok(zone.clone()),
            None => config::get("availability_zone").ok_or_else(|| {
                failure(
                    "no availability zone: set the StorageClass parameter availabilityZone or availability_zone in the policy's [config]",
                )
            }),
        })
        .map(drop)
    }

    fn delete(options: Options) -> Result<()> {
        let pv = volume_name(&options)?;
        let ec2 = client(&options)?;
        delete_found(&ec2, pv, find_volume(&ec2, pv)?)
    }

    fn attach(options: Options, node: String) -> Result<String> {
        let pv = volume_name(&options)?;
        let instance = instance_of(&node)?;
        let ec2 = client(&options)?;
        let volume = volume_of(&ec2, &options)?.ok_or_else(|| {
            failure(format!(
                "{pv} has no EC2 volume (tag {TAG_PV}={pv}): provision it first"
            ))
        })?;
        let device = match volume.attachments.first() {
            Some(a) if a.instance_id == instance && a.state != "detaching" => {
                log::info(&format!(
                    "{} ({pv}) is already {} to {instance} as {}",
                    volume.id, a.state, a.device
                ));
                a.device.clone()
            }
            Some(a) => {
                return Err(failure(format!(
                    "volume {} ({pv}) is {} to instance {} as {}, not to node {node} ({instance}): detach it there first",
                    volume.id, a.state, a.instance_id, a.device
                )));
            }
            None => {
                if volume.state == "creating" {
                    wait_until(&format!("{} to become available", volume.id), || {
                        Ok(ec2
                            .volume(&volume.id)
                            .map_err(ec2_failure)?
                            .filter(|v| v.state != "creating")
                            .map(drop))
                    })?;
                }
                attach_at_free_device(&ec2, &volume, &instance)?
            }
        };
        wait_until(
            &format!("{} to be attached to {instance}", volume.id),
            || {
                let Some(v) = ec2.volume(&volume.id).map_err(ec2_failure)? else {
                    return Err(failure(format!(
                        "volume {} ({pv}) no longer exists",
                        volume.id
                    )));
                };
                match v.attachments.iter().find(|a| a.instance_id == instance) {
                    Some(a) if a.state == "attached" => Ok(Some(())),
                    Some(a) if a.state == "attaching" => Ok(None),
                    Some(a) => Err(failure(format!(
                        "volume {} ({pv}) is {} on {instance} instead of attached",
                        v.id, a.state
                    ))),
                    None => Err(failure(format!(
                        "volume {} ({pv}) is not attached to {instance} any more ({})",
                        v.id, v.state
                    ))),
                }
            },
        )?;
        let path = node_device_path(&device)?;
        log::info(&format!(
            "{} ({pv}) is attached to {instance} as {device}: {path}",
            volume.id
        ));
        Ok(path)
    }

    fn is_attached(options: Options, node: String) -> Result<bool> {
        volume_name(&options)?;
        let instance = instance_of(&node)?;
        let ec2 = client(&options)?;
        Ok(volume_of(&ec2, &options)?.is_some_and(|v| {
            v.attachments
                .iter()
                .any(|a| a.instance_id == instance && a.state == "attached")
        }))
    }

    fn detach(volume_name: String, node: String) -> Result<()> {
        let pv = volume_name.as_str();
        let instance = instance_of(&node)?;
        let ec2 = client_with(None)?;
        let Some(volume) = find_volume(&ec2, pv)? else {
            log::info(&format!("{pv} has no volume: nothing to detach"));
            return Ok(());
        };
        let Some(attachment) = volume
            .attachments
            .iter()
            .find(|a| a.instance_id == instance)
        else {
            log::info(&format!(
                "{} ({pv}) is not attached to {instance}",
                volume.id
            ));
            return Ok(());
        };
        if attachment.state != "detaching" && attachment.state != "detached" {
            match ec2.detach_volume(&volume.id, &instance) {
                Ok(()) => {}
                // Detached between our look and our call.
                Err(e) if e.code() == Some("IncorrectState") => {}
                Err(e) if e.code() == Some("InvalidAttachment.NotFound") => {}
                Err(e) => return Err(ec2_failure(e)),
            }
        }
        wait_until(
            &format!("{} to be detached from {instance}", volume.id),
            || {
                let attached = ec2
                    .volume(&volume.id)
                    .map_err(ec2_failure)?
                    .is_some_and(|v| {
                        v.attachments
                            .iter()
                            .any(|a| a.instance_id == instance && a.state != "detached")
                    });
                Ok((!attached).then_some(()))
            },
        )?;
        log::info(&format!("detached {} ({pv}) from {instance}", volume.id));
        Ok(())
    }

    fn wait_for_attach(device: String, options: Options) -> Result<String> {
        let device = if device.is_empty() {
            attached_device(&options)?
        } else {
            device
        };
        let seconds = config_number("wait_for_device_seconds", 120)?;
        let deadline = Instant::now() + Duration::from_secs(seconds);
        // On Nitro instances the disk is an NVMe device whatever name EC2 was given; udev's
        // stable link names the volume. Looked up (one EC2 call) only if the EC2 name is not
        // there at once; used only if the policy grants it.
        let mut stable: Option<Option<String>> = None;
        loop {
            let named = block::wait_for_device(&device, 0);
            if matches!(named, Ok(true)) {
                return Ok(device);
            }
            let stable = stable.get_or_insert_with(|| stable_device_path(&options).ok());
            if let Some(name) = stable.clone() {
                match block::wait_for_device(&name, 0) {
                    Ok(true) => return Ok(name),
                    Ok(false) => {}
                    // Not granted: not asked again (each refusal is audited).
                    Err(_) => *stable = None,
                }
            }
            // A refusal of the EC2 name (e.g. a symlink to an NVMe name the policy does not
            // grant) is final.
            named?;
            if Instant::now() >= deadline {
                return Err(failure(format!(
                    "{device} did not appear on this node within {seconds} s"
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn mount_device(device_mount_path: String, device: String, options: Options) -> Result<()> {
        let pv = volume_name(&options)?;
        recorded_volume_id(&options)?;
        let device = if device.is_empty() {
            attached_device(&options)?
        } else {
            device
        };
        let fs_type = wanted_fs(&options)?;
        flex_sdk::filesystem::mount_device(
            pv,
            &device,
            &device_mount_path,
            fs_type,
            options.read_only,
            &FILE_SYSTEMS,
        )
    }

    fn unmount_device(device_mount_path: String) -> Result<()> {
        if mounts::is_mountpoint(&device_mount_path)? {
            mounts::unmount(&device_mount_path)?;
        }
        Ok(())
    }

    fn mount(target_dir: String, options: Options) -> Result<()> {
        flex_sdk::pod::bind_device_mount(&target_dir, options.read_only)
    }

    fn unmount(target_dir: String) -> Result<()> {
        flex_sdk::pod::unbind(&target_dir)
    }
}

impl Provisioner for Ebs {
    fn describe() -> ProvisionerInfo {
        ProvisionerInfo::new([AccessMode::ReadWriteOnce], CLASS_PARAMETERS)
    }

    fn provision(request: ProvisionRequest) -> Result<Provisioned> {
        // Everything is checked before the first EC2 call.
        let pv = request.name.as_str();
        if pv.is_empty() {
            return Err(failure("the request names no volume"));
        }
        if let Some(key) = request.unknown_parameter(&CLASS_PARAMETERS) {
            return Err(failure(format!(
                "unknown StorageClass parameter {key:?} (known: {})",
                CLASS_PARAMETERS.join(", ")
            )));
        }
        if let Some(mode) = request
            .access_modes
            .iter()
            .find(|m| **m != AccessMode::ReadWriteOnce)
        {
            return Err(failure(format!(
                "access mode {} is not supported: an EBS volume attaches to one node (ReadWriteOnce)",
                mode.kubernetes_name()
            )));
        }
        let fs_type = request.file_system(&FILE_SYSTEMS)?;
        let size_gib = request.rounded_size(GIB)? / GIB;
        let mut create = CreateRequest::new(size_gib, |key| request.parameter(key))?;
        create.zone = class_zone(&request)?;
        let ec2 = client_with(None)?;
        let volume = ensure_volume(&ec2, pv, &create, || {
            choose_zone(
                &ec2,
                create.zone.as_deref(),
                request.selected_node.as_deref(),
            )
        })?;
        if volume.size_gib == 0 {
            return Err(failure(format!(
                "EC2 reports no size for volume {} ({pv})",
                volume.id
            )));
        }
        let mut provisioned =
            Provisioned::new(volume.size_gib * GIB).with_option(VOLUME_ID_OPTION, &volume.id);
        if let Some(fs) = fs_type {
            provisioned = provisioned.with_option(FS_OPTION, fs);
        }
        Ok(provisioned)
    }

    fn delete(name: String, options: Vec<(String, String)>) -> Result<()> {
        let pv = name.as_str();
        if pv.is_empty() {
            return Err(failure("the request names no volume"));
        }
        let recorded = flex_sdk::option(&options, VOLUME_ID_OPTION);
        if let Some(id) = recorded {
            check_volume_id(id)?;
        }
        let ec2 = client_with(None)?;
        let volume = match recorded {
            Some(id) => match ec2.volume(id).map_err(ec2_failure)? {
                Some(volume) => Some(ours(pv, volume)?),
                None => {
                    log::info(&format!(
                        "{id} ({pv}) no longer exists: looking for a volume tagged {TAG_PV}={pv}"
                    ));
                    find_volume(&ec2, pv)?
                }
            },
            None => find_volume(&ec2, pv)?,
        };
        delete_found(&ec2, pv, volume)
    }
}

flex_sdk::export_provisioning_driver!(Ebs);

/// The volume for `pv`, created (in the zone `zone` gives) unless it exists, once it is
/// available.
fn ensure_volume(
    ec2: &Ec2,
    pv: &str,
    request: &CreateRequest,
    zone: impl FnOnce() -> Result<String>,
) -> Result<Volume> {
    let volume = match find_volume(ec2, pv)? {
        Some(volume) => {
            log::info(&format!(
                "{pv} is already provisioned as {} ({} GiB {} in {}, {})",
                volume.id, volume.size_gib, volume.volume_type, volume.zone, volume.state
            ));
            if volume.size_gib != request.size_gib {
                log::warn(&format!(
                    "{}: {} GiB, the request asks {} GiB",
                    volume.id, volume.size_gib, request.size_gib
                ));
            }
            if volume.volume_type != request.volume_type {
                log::warn(&format!(
                    "{}: type {}, the request asks {}",
                    volume.id, volume.volume_type, request.volume_type
                ));
            }
            volume
        }
        None => {
            let zone = zone()?;
            let id = ec2
                .create_volume(request.params(&zone), &[(TAG_PV, pv), (TAG_OWNER, OWNER)])
                .map_err(ec2_failure)?;
            log::info(&format!(
                "created {id} for {pv}: {} GiB {} in {zone}",
                request.size_gib, request.volume_type
            ));
            Volume {
                id,
                state: "creating".into(),
                size_gib: request.size_gib,
                zone,
                volume_type: request.volume_type.clone(),
                attachments: Vec::new(),
                tags: Vec::new(),
            }
        }
    };
    match volume.state.as_str() {
        "available" | "in-use" => Ok(volume),
        "creating" => wait_until(&format!("{} to become available", volume.id), || match ec2
            .volume(&volume.id)
            .map_err(ec2_failure)?
        {
            Some(v) if v.state == "available" || v.state == "in-use" => Ok(Some(v)),
            Some(v) if v.state == "creating" => Ok(None),
            Some(v) => Err(failure(format!(
                "volume {} for {pv} is {}: delete it and provision again",
                v.id, v.state
            ))),
            None => Err(failure(format!(
                "volume {} for {pv} disappeared while being created",
                volume.id
            ))),
        }),
        state => Err(failure(format!(
            "volume {} for {pv} is {state}: delete it and provision again",
            volume.id
        ))),
    }
}

/// Deletes the volume found for `pv` (only one this driver created); none is success.
fn delete_found(ec2: &Ec2, pv: &str, volume: Option<Volume>) -> Result<()> {
    let Some(volume) = volume else {
        log::info(&format!("{pv} has no volume: nothing to delete"));
        return Ok(());
    };
    if volume.tag(TAG_OWNER) != Some(OWNER) {
        return Err(failure(format!(
            "volume {} carries {TAG_PV}={pv} but not {TAG_OWNER}={OWNER}: not deleting a volume this driver did not create",
            volume.id
        )));
    }
    match volume.state.as_str() {
        "deleting" | "deleted" => return Ok(()),
        _ => {}
    }
    if let Some(a) = volume.attachments.first() {
        return Err(failure(format!(
            "volume {} ({pv}) is still {} to instance {} as {}: detach it first",
            volume.id, a.state, a.instance_id, a.device
        )));
    }
    match ec2.delete_volume(&volume.id) {
        Ok(()) => {
            log::info(&format!("deleted {} ({pv})", volume.id));
            Ok(())
        }
        Err(e) if e.code() == Some("InvalidVolume.NotFound") => Ok(()),
        Err(e) => Err(ec2_failure(e)),
    }
}

/// The StorageClass's zone: `zone` or `availabilityZone` (both set must agree).
fn class_zone(request: &ProvisionRequest) -> Result<Option<String>> {
    let mut zone: Option<&str> = None;
    for key in ["zone", "availabilityZone"] {
        match (request.parameter(key), zone) {
            (None, _) => {}
            (Some(""), _) => return Err(failure(format!("invalid parameter {key}: empty"))),
            (Some(value), Some(other)) if value != other => {
                return Err(failure(format!(
                    "the parameters zone {other:?} and availabilityZone {value:?} differ"
                )));
            }
            (Some(value), _) => zone = Some(value),
        }
    }
    Ok(zone.map(String::from))
}

/// Where to create a volume: the StorageClass's zone, else the zone of the node the scheduler
/// chose (when the config names its instance), else the config's `availability_zone`. A
/// StorageClass zone the chosen node is not in fails: the volume could never attach there.
fn choose_zone(ec2: &Ec2, class: Option<&str>, node: Option<&str>) -> Result<String> {
    let node_zone = match node.filter(|n| !n.is_empty()) {
        Some(node) => match config::get(&format!("instance.{node}")).filter(|i| !i.is_empty()) {
            Some(instance) => Some((
                node,
                ec2.instance_zone(&instance)
                    .map_err(ec2_failure)?
                    .ok_or_else(|| {
                        failure(format!(
                            "node {node}'s instance {instance} is unknown to EC2 (instance.{node} in the policy's [config])"
                        ))
                    })?,
            )),
            None => {
                log::info(&format!(
                    "the selected node {node} has no instance.{node} in the config: its zone is unknown"
                ));
                None
            }
        },
        None => None,
    };
    match (class, node_zone) {
        (Some(zone), Some((node, node_zone))) if zone != node_zone => Err(failure(format!(
            "the StorageClass asks zone {zone}, but the scheduler chose node {node} in {node_zone}: the volume could not attach there"
        ))),
        (Some(zone), _) => Ok(zone.to_string()),
        (None, Some((_, node_zone))) => Ok(node_zone),
        (None, None) => config::get("availability_zone")
            .filter(|z| !z.is_empty())
            .ok_or_else(|| {
                failure(
                    "no availability zone: set the StorageClass parameter zone, availability_zone in the policy's [config], or use volumeBindingMode WaitForFirstConsumer with instance.<node> in the config",
                )
            }),
    }
}

/// The file system `mountdevice` wants: kubelet's `kubernetes.io/fsType`, else the `fsType`
/// option `provision` recorded; both set must agree.
fn wanted_fs(options: &Options) -> Result<Option<&str>> {
    let kubelet = options.fs_type.as_deref().filter(|fs| !fs.is_empty());
    let recorded = options.get(FS_OPTION).filter(|fs| !fs.is_empty());
    match (kubelet, recorded) {
        (Some(a), Some(b)) if a != b => Err(failure(format!(
            "fsType {a:?} differs from the volume's option fsType {b:?}"
        ))),
        (a, b) => Ok(a.or(b)),
    }
}

/// An EC2 volume ID: `vol-` and hex digits.
fn check_volume_id(id: &str) -> Result<()> {
    let valid = id.strip_prefix("vol-").is_some_and(|hex| {
        !hex.is_empty() && hex.len() <= 32 && hex.bytes().all(|b| b.is_ascii_hexdigit())
    });
    if valid {
        Ok(())
    } else {
        Err(failure(format!(
            "option {VOLUME_ID_OPTION}={id:?} is not an EC2 volume ID (vol-<hex>)"
        )))
    }
}

/// The `volumeID` option, if the PV records one (checked for shape).
fn recorded_volume_id(options: &Options) -> Result<Option<&str>> {
    let id = options.get(VOLUME_ID_OPTION).filter(|id| !id.is_empty());
    if let Some(id) = id {
        check_volume_id(id)?;
    }
    Ok(id)
}

/// A volume found by a recorded ID must be `pv`'s: tagged with its name.
fn ours(pv: &str, volume: Volume) -> Result<Volume> {
    if volume.tag(TAG_PV) == Some(pv) {
        Ok(volume)
    } else {
        Err(failure(format!(
            "volume {} is not {pv}'s (its tag {TAG_PV} is {:?}): refusing the option {VOLUME_ID_OPTION}",
            volume.id,
            volume.tag(TAG_PV).unwrap_or("absent")
        )))
    }
}

/// The volume of the PV the options name: by its recorded `volumeID` (which must carry the
/// PV's tag) when there is one, else by the tag.
fn volume_of(ec2: &Ec2, options: &Options) -> Result<Option<Volume>> {
    let pv = volume_name(options)?;
    match recorded_volume_id(options)? {
        Some(id) => match ec2.volume(id).map_err(ec2_failure)? {
            Some(volume) if volume.state != "deleted" => ours(pv, volume).map(Some),
            _ => Ok(None),
        },
        None => find_volume(ec2, pv),
    }
}

/// What `provision` asks EC2 for, from the provisioner's keys and the StorageClass parameters.
struct CreateRequest {
    size_gib: u64,
    volume_type: String,
    iops: Option<u32>,
    zone: Option<String>,
    encrypted: Option<bool>,
}

impl CreateRequest {
    fn from_options(options: &Options) -> Result<CreateRequest> {
        for (key, _) in &options.extra {
            if !PARAMETERS.contains(&key.as_str())
                && !PROVISIONER_KEYS.contains(&key.as_str())
                && !key.starts_with("kubernetes.io/")
            {
                return Err(failure(format!(
                    "unknown StorageClass parameter {key:?} (known: {})",
                    PARAMETERS.join(", ")
                )));
            }
        }
        let size_gib = match (options.get("requestGiB"), options.get("requestBytes")) {
            (Some(gib), _) => gib
                .parse::<u64>()
                .map_err(|_| failure(format!("requestGiB must be a number, not {gib:?}")))?,
            (None, Some(bytes)) => bytes
                .parse::<u64>()
                .map_err(|_| failure(format!("requestBytes must be a number, not {bytes:?}")))?
                .div_ceil(1 << 30),
            (None, None) => return Err(failure("provision needs requestGiB or requestBytes")),
        };
        let mut request = CreateRequest::new(size_gib, |key| options.get(key))?;
        request.zone = match options.get("availabilityZone") {
            Some("") => return Err(failure("invalid parameter availabilityZone: empty")),
            zone => zone.map(String::from),
        };
        Ok(request)
    }

    /// A request of `size_gib` with the parameters `type`, `iops` and `encrypted` (from
    /// `parameter`), checked against EC2's rules for the volume type; no zone yet.
    fn new<'a>(size_gib: u64, parameter: impl Fn(&str) -> Option<&'a str>) -> Result<Self> {
        if !(1..=65536).contains(&size_gib) {
            return Err(failure(format!(
                "requested size {size_gib} GiB is out of range (1 to 65536 GiB)"
            )));
        }
        let volume_type = parameter("type").unwrap_or("gp3").to_string();
        let Some(rules) = VolumeRules::of(&volume_type) else {
            return Err(failure(format!(
                "invalid parameter type {volume_type:?} (one of {})",
                VOLUME_TYPES.join(", ")
            )));
        };
        let iops = match parameter("iops") {
            None => None,
            Some(text) => Some(text.parse::<u32>().ok().filter(|n| *n > 0).ok_or_else(|| {
                failure(format!(
                    "invalid parameter iops {text:?}: a positive number"
                ))
            })?),
        };
        match (&rules.iops, iops) {
            (None, Some(_)) => {
                return Err(failure(format!(
                    "invalid parameter iops: type {volume_type} has no provisioned IOPS (io1, io2 or gp3 only)"
                )));
            }
            (Some(iops_rules), None) if iops_rules.required => {
                return Err(failure(format!(
                    "type {volume_type} needs the iops parameter"
                )));
            }
            _ => {}
        }
        let (min_gib, max_gib) = rules.size_gib;
        if !(min_gib..=max_gib).contains(&size_gib) {
            return Err(failure(format!(
                "requested size {size_gib} GiB is out of range for type {volume_type} ({min_gib} to {max_gib} GiB)"
            )));
        }
        if let (Some(iops_rules), Some(iops)) = (&rules.iops, iops) {
            iops_rules.check(&volume_type, iops, size_gib)?;
        }
        let encrypted = match parameter("encrypted") {
            None => None,
            Some("true") => Some(true),
            Some("false") => Some(false),
            Some(other) => {
                return Err(failure(format!(
                    "invalid parameter encrypted {other:?}: true or false"
                )));
            }
        };
        Ok(CreateRequest {
            size_gib,
            volume_type,
            iops,
            zone: None,
            encrypted,
        })
    }

    fn params(&self, zone: &str) -> Vec<(String, String)> {
        let mut params = vec![
            ("Size".into(), self.size_gib.to_string()),
            ("AvailabilityZone".into(), zone.into()),
            ("VolumeType".into(), self.volume_type.clone()),
        ];
        if let Some(iops) = self.iops {
            params.push(("Iops".into(), iops.to_string()));
        }
        if let Some(encrypted) = self.encrypted {
            params.push(("Encrypted".into(), encrypted.to_string()));
        }
        params
    }
}

/// EC2's limits for one volume type.
struct VolumeRules {
    /// Smallest and largest size, in GiB.
    size_gib: (u64, u64),
    /// Provisioned IOPS, for the types that have them.
    iops: Option<IopsRules>,
}

struct IopsRules {
    required: bool,
    min: u32,
    max: u32,
    /// At most this many IOPS per GiB of size...
    per_gib: u64,
    /// ...except that up to this many are allowed at any size (gp3's baseline).
    baseline: u32,
}

impl VolumeRules {
    /// EC2's documented limits (EBS volume types, 2025): gp3 1 GiB-64 TiB, 3,000-80,000
    /// IOPS at 500 per GiB above the 3,000 baseline; io1 4 GiB-16 TiB, 100-64,000 IOPS at 50
    /// per GiB; io2 (Block Express) 4 GiB-64 TiB, 100-256,000 IOPS at 1,000 per GiB; gp2
    /// 1 GiB-16 TiB; st1 and sc1 125 GiB-16 TiB; standard (magnetic) 1 GiB-1 TiB.
    fn of(volume_type: &str) -> Option<VolumeRules> {
        let iops = |required, min, max, per_gib, baseline| {
            Some(IopsRules {
                required,
                min,
                max,
                per_gib,
                baseline,
            })
        };
        let (size_gib, iops) = match volume_type {
            "gp3" => ((1, 65536), iops(false, 3000, 80_000, 500, 3000)),
            "io1" => ((4, 16384), iops(true, 100, 64_000, 50, 0)),
            "io2" => ((4, 65536), iops(true, 100, 256_000, 1000, 0)),
            "gp2" => ((1, 16384), None),
            "st1" | "sc1" => ((125, 16384), None),
            "standard" => ((1, 1024), None),
            _ => return None,
        };
        Some(VolumeRules { size_gib, iops })
    }
}

impl IopsRules {
    fn check(&self, volume_type: &str, iops: u32, size_gib: u64) -> Result<()> {
        if !(self.min..=self.max).contains(&iops) {
            return Err(failure(format!(
                "invalid parameter iops {iops}: type {volume_type} takes {} to {}",
                self.min, self.max
            )));
        }
        let most = (self.per_gib * size_gib).max(u64::from(self.baseline));
        if u64::from(iops) > most {
            return Err(failure(format!(
                "invalid parameter iops {iops}: a {size_gib} GiB {volume_type} volume takes at most {most} ({} per GiB)",
                self.per_gib
            )));
        }
        Ok(())
    }
}

/// The PV name (or inline volume name), as kubelet and the provisioner pass it.
fn volume_name(options: &Options) -> Result<&str> {
    options
        .pv_or_volume_name
        .as_deref()
        .ok_or_else(|| failure("kubernetes.io/pvOrVolumeName is missing"))
}

/// A required `[config]` value.
fn setting(key: &str) -> Result<String> {
    config::get(key)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| failure(format!("the policy's [config] has no {key}")))
}

fn config_number(key: &str, default: u64) -> Result<u64> {
    match config::get(key) {
        None => Ok(default),
        Some(text) => text.parse().map_err(|_| {
            failure(format!(
                "[config] {key} must be a number of seconds, not {text:?}"
            ))
        }),
    }
}

/// The EC2 instance of a node, from `instance.<node>` in the config.
fn instance_of(node: &str) -> Result<String> {
    if node.is_empty() {
        return Err(failure("no node name given"));
    }
    config::get(&format!("instance.{node}"))
        .filter(|id| !id.is_empty())
        .ok_or_else(|| {
            failure(format!(
                "node {node} has no EC2 instance: add instance.{node} to the policy's [config]"
            ))
        })
}

fn client(options: &Options) -> Result<Ec2> {
    client_with(Some(options))
}

/// The EC2 client: endpoint, region and credentials from the config (or, for credentials,
/// kubelet secrets when a verb receives any).
fn client_with(options: Option<&Options>) -> Result<Ec2> {
    let secret = |name: &str| {
        options
            .and_then(|o| o.secret(name))
            .map(|v| String::from_utf8_lossy(v).trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let (key_id, secret_key) = match (secret("access_key_id"), secret("secret_access_key")) {
        (Some(id), Some(key)) => (id, key),
        _ => (setting("access_key_id")?, setting("secret_access_key")?),
    };
    let token = config::get("session_token").filter(|t| !t.is_empty());
    let credentials = Credentials::new(key_id, secret_key, token, None, "flex-policy");
    let timeout = Duration::from_secs(config_number("request_timeout_seconds", 20)?);
    Ec2::new(
        &setting("endpoint")?,
        &setting("region")?,
        credentials,
        timeout,
    )
    .map_err(failure)
}

fn ec2_failure(error: ec2::Error) -> flex_sdk::Error {
    failure(error.to_string())
}

/// The volume tagged with `pv`; a failure if several are.
fn find_volume(ec2: &Ec2, pv: &str) -> Result<Option<Volume>> {
    let filter = format!("tag:{TAG_PV}");
    let volumes: Vec<Volume> = ec2
        .describe_volumes(&[(&filter, &[pv])])
        .map_err(ec2_failure)?
        .into_iter()
        .filter(|v| v.tag(TAG_PV) == Some(pv) && v.state != "deleted")
        .collect();
    match volumes.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(one.clone())),
        many => Err(failure(format!(
            "several volumes are tagged {TAG_PV}={pv}: {}",
            many.iter()
                .map(|v| v.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// AttachVolume at the first device name no volume on `instance` uses; returns that name.
/// A name taken meanwhile (a concurrent attach of another volume) moves on to the next one.
/// If the volume itself is among them by now (an earlier call's AttachVolume that EC2 carried
/// out after that call gave up), that attachment is the answer: attaching again at another
/// name would move it, or fail.
fn attach_at_free_device(ec2: &Ec2, volume: &Volume, instance: &str) -> Result<String> {
    let on_instance = ec2
        .describe_volumes(&[("attachment.instance-id", &[instance])])
        .map_err(ec2_failure)?;
    let mut used = Vec::new();
    for v in on_instance {
        for a in v.attachments {
            if a.instance_id != instance {
                continue;
            }
            if v.id == volume.id && a.state != "detaching" {
                log::info(&format!(
                    "{} is already {} to {instance} as {}",
                    v.id, a.state, a.device
                ));
                return Ok(a.device);
            }
            used.push(a.device);
        }
    }
    let mut last_error = None;
    for letter in DEVICE_LETTERS {
        let device = format!("{EC2_DEVICE_PREFIX}{letter}");
        let sd = format!("/dev/sd{letter}");
        if used.iter().any(|u| *u == device || *u == sd) {
            continue;
        }
        match ec2.attach_volume(&volume.id, instance, &device) {
            Ok(()) => {
                log::info(&format!(
                    "attaching {} to {instance} as {device}",
                    volume.id
                ));
                return Ok(device);
            }
            Err(e)
                if e.code() == Some("InvalidParameterValue")
                    && e.to_string().contains("in use") =>
            {
                last_error = Some(e);
            }
            // A concurrent attach of this volume won: go on with its attachment if it is to
            // this instance.
            Err(e) if e.code() == Some("VolumeInUse") || e.code() == Some("IncorrectState") => {
                let mine = ec2.volume(&volume.id).map_err(ec2_failure)?.and_then(|v| {
                    v.attachments
                        .into_iter()
                        .find(|a| a.instance_id == instance && a.state != "detaching")
                });
                return match mine {
                    Some(a) => Ok(a.device),
                    None => Err(ec2_failure(e)),
                };
            }
            Err(e) => return Err(ec2_failure(e)),
        }
    }
    Err(match last_error {
        Some(e) => ec2_failure(e),
        None => failure(format!(
            "instance {instance} has no free device name ({EC2_DEVICE_PREFIX}[f-p] are all in use)"
        )),
    })
}

/// Where EC2 device `/dev/xvdf` (or `/dev/sdf`) shows up on the node.
fn node_device_path(ec2_device: &str) -> Result<String> {
    let letter = ec2_device
        .strip_prefix(EC2_DEVICE_PREFIX)
        .or_else(|| ec2_device.strip_prefix("/dev/sd"))
        .filter(|l| l.len() == 1 && l.chars().all(|c| c.is_ascii_lowercase()))
        .ok_or_else(|| {
            failure(format!(
                "unexpected EC2 device name {ec2_device:?} (expected {EC2_DEVICE_PREFIX}[f-p])"
            ))
        })?;
    let prefix = config::get("device_path_prefix").unwrap_or_else(|| EC2_DEVICE_PREFIX.into());
    Ok(format!("{prefix}{letter}"))
}

/// udev's stable name of the volume's disk on Nitro instances (NVMe): the volume id without
/// its dash, e.g. `/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol0123456789abcdef0`.
fn stable_device_path(options: &Options) -> Result<String> {
    let pv = volume_name(options)?;
    let volume = volume_of(&client(options)?, options)?
        .ok_or_else(|| failure(format!("{pv} has no EC2 volume (tag {TAG_PV}={pv})")))?;
    Ok(format!(
        "/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_{}",
        volume.id.replace('-', "")
    ))
}

/// The node device of a volume that is attached (kubelet passed no device).
fn attached_device(options: &Options) -> Result<String> {
    let pv = volume_name(options)?;
    let ec2 = client(options)?;
    let volume = volume_of(&ec2, options)?
        .ok_or_else(|| failure(format!("{pv} has no EC2 volume (tag {TAG_PV}={pv})")))?;
    match volume.attachments.iter().find(|a| a.state == "attached") {
        Some(a) => node_device_path(&a.device),
        None => Err(failure(format!(
            "volume {} ({pv}) is not attached",
            volume.id
        ))),
    }
}

/// Polls `check` until it gives a value, for at most `attach_timeout_seconds`.
fn wait_until<T>(what: &str, mut check: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    let seconds = config_number("attach_timeout_seconds", 60)?;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut pause = Duration::from_millis(100);
    loop {
        if let Some(value) = check()? {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            return Err(failure(format!(
                "timed out after {seconds} s waiting for {what}"
            )));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

#[cfg(test)]
mod tests {
    //! What the driver decides before any EC2 call, against the SDK's fake host (`cargo test
    //! -p flex-ebs`): the fake has no HTTP, so every case here must fail (or answer) without
    //! one. The EC2 side runs against moto in `tests/tests/ebs.rs` and
    //! `tests/tests/provisioning.rs`.

    use super::*;
    use flex_sdk::testing::Host;

    fn provision(request: ProvisionRequest) -> Result<Provisioned> {
        <Ebs as Provisioner>::provision(request)
    }

    fn failure_of<T: std::fmt::Debug>(result: Result<T>) -> String {
        match result {
            Err(flex_sdk::Error::Failure(message)) => message,
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[test]
    fn describe_lists_read_write_once_and_the_parameters() {
        let host = Host::new();
        let info = Ebs::describe();
        assert_eq!(info.access_modes, [AccessMode::ReadWriteOnce]);
        assert_eq!(
            info.parameters,
            [
                "type",
                "iops",
                "zone",
                "availabilityZone",
                "encrypted",
                "fsType"
            ]
        );
        assert_eq!(host.calls(), []);
    }

    #[test]
    fn a_bad_request_fails_before_any_host_call() {
        let host = Host::new();
        let pv = "pvc-1";
        let gib = |n: u64| ProvisionRequest::new(pv, n * GIB);
        for (request, why) in [
            (
                gib(1).with_parameter("type", "fast"),
                "invalid parameter type",
            ),
            (
                gib(1)
                    .with_parameter("type", "gp2")
                    .with_parameter("iops", "3000"),
                "no provisioned IOPS",
            ),
            (
                gib(4).with_parameter("type", "io2"),
                "needs the iops parameter",
            ),
            (
                gib(4)
                    .with_parameter("type", "io1")
                    .with_parameter("iops", "-1"),
                "a positive number",
            ),
            (
                gib(4)
                    .with_parameter("type", "io1")
                    .with_parameter("iops", "201"),
                "at most 200",
            ),
            (
                gib(1)
                    .with_parameter("type", "io1")
                    .with_parameter("iops", "100"),
                "out of range for type io1",
            ),
            (
                gib(4)
                    .with_parameter("type", "io1")
                    .with_parameter("iops", "99"),
                "takes 100 to 64000",
            ),
            (
                gib(1)
                    .with_parameter("type", "gp3")
                    .with_parameter("iops", "80001"),
                "takes 3000 to 80000",
            ),
            (
                gib(10)
                    .with_parameter("type", "gp3")
                    .with_parameter("iops", "6000"),
                "at most 5000",
            ),
            (
                gib(100).with_parameter("type", "sc1"),
                "out of range for type sc1",
            ),
            (
                gib(2000).with_parameter("type", "standard"),
                "out of range for type standard",
            ),
            (
                gib(1).with_parameter("encrypted", "1"),
                "invalid parameter encrypted",
            ),
            (gib(1).with_fs_type("ntfs"), "invalid parameter fsType"),
            (
                gib(1).with_parameter("zone", ""),
                "invalid parameter zone: empty",
            ),
            (
                gib(1)
                    .with_parameter("zone", "eu-west-1a")
                    .with_parameter("availabilityZone", "eu-west-1b"),
                "differ",
            ),
            (
                gib(1).with_parameter("size", "1Gi"),
                "unknown StorageClass parameter",
            ),
            (
                gib(1).with_access_modes([AccessMode::ReadWriteMany]),
                "access mode ReadWriteMany",
            ),
            (
                ProvisionRequest::new(pv, GIB + 1).with_limit_bytes(GIB + GIB / 2),
                "above its limit",
            ),
            (gib(65537), "out of range"),
            (ProvisionRequest::new("", GIB), "names no volume"),
        ] {
            let message = failure_of(provision(request));
            assert!(message.contains(why), "{why}: {message}");
        }
        assert_eq!(host.calls(), []);
    }

    #[test]
    fn sizes_round_up_to_whole_gib() {
        let _host = Host::new();
        let request = ProvisionRequest::new("pvc-1", GIB + 1);
        let size = request.rounded_size(GIB).unwrap() / GIB;
        assert_eq!(size, 2);
        let create = CreateRequest::new(size, |key| request.parameter(key)).unwrap();
        assert_eq!(create.volume_type, "gp3");
        assert_eq!(
            create.params("eu-west-1a"),
            [
                ("Size".to_string(), "2".to_string()),
                ("AvailabilityZone".into(), "eu-west-1a".into()),
                ("VolumeType".into(), "gp3".into()),
            ]
        );
        // gp3's 3,000 IOPS baseline holds at any size; io2 allows 1,000 per GiB.
        let gp3 = |iops: &'static str| {
            move |key: &str| match key {
                "type" => Some("gp3"),
                "iops" => Some(iops),
                _ => None,
            }
        };
        assert!(CreateRequest::new(1, gp3("3000")).is_ok());
        let io2 = |key: &str| match key {
            "type" => Some("io2"),
            "iops" => Some("4000"),
            _ => None,
        };
        assert_eq!(CreateRequest::new(4, io2).unwrap().iops, Some(4000));
    }

    #[test]
    fn the_recorded_options_are_checked() {
        let _host = Host::new();
        let options = Options::default()
            .with_pv_or_volume_name("pvc-1")
            .with_extra(VOLUME_ID_OPTION, "vol-0123abcd")
            .with_extra(FS_OPTION, "xfs");
        assert_eq!(recorded_volume_id(&options).unwrap(), Some("vol-0123abcd"));
        assert_eq!(wanted_fs(&options).unwrap(), Some("xfs"));
        assert_eq!(
            wanted_fs(&options.clone().with_fs_type("xfs")).unwrap(),
            Some("xfs")
        );
        assert!(failure_of(wanted_fs(&options.clone().with_fs_type("ext4"))).contains("differs"));
        for bad in ["vol-", "vol-xyz", "../vol-1", "i-0123", "vol-1/../2"] {
            let options = Options::default().with_extra(VOLUME_ID_OPTION, bad);
            assert!(
                failure_of(recorded_volume_id(&options)).contains("not an EC2 volume ID"),
                "{bad}"
            );
        }
        let mut volume = Volume {
            id: "vol-1".into(),
            state: "available".into(),
            size_gib: 1,
            zone: "eu-west-1a".into(),
            volume_type: "gp3".into(),
            attachments: Vec::new(),
            tags: vec![(TAG_PV.into(), "pvc-other".into())],
        };
        assert!(failure_of(ours("pvc-1", volume.clone())).contains("is not pvc-1's"));
        volume.tags.clear();
        assert!(failure_of(ours("pvc-1", volume.clone())).contains("absent"));
        volume.tags.push((TAG_PV.into(), "pvc-1".into()));
        assert_eq!(ours("pvc-1", volume).unwrap().id, "vol-1");
    }

    #[test]
    fn a_mountdevice_with_a_malformed_volume_id_fails_before_ec2() {
        let host = Host::new();
        let options = Options::default()
            .with_pv_or_volume_name("pvc-1")
            .with_extra(VOLUME_ID_OPTION, "vol-../x");
        let message = failure_of(Ebs::mount_device(
            "/var/lib/kubelet/plugins/kubernetes.io/flexvolume/flex/ebs/mounts/pvc-1".into(),
            "/dev/xvdf".into(),
            options,
        ));
        assert!(message.contains("not an EC2 volume ID"), "{message}");
        assert_eq!(host.calls(), []);
    }
}
