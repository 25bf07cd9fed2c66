//! `flex/ebs`: cloud block volumes through the EC2 API (EBS), with the whole attach lifecycle
//! and provisioning. Every EC2 call is a SigV4-signed request through `wasi:http`, so the host
//! checks it against the policy's `[http]` destinations and audits its method and URL path
//! (never headers or query: credentials stay out of the audit log).
//!
//! A volume is found by its tag `flex.io/pv-name` = the PV name, never by a stored id: the
//! FlexVolume provisioner cannot hand options back to the PV, and `detach` only receives the
//! PV name. Settings come from the policy's `[config]` table:
//!
//! | key | meaning |
//! |---|---|
//! | `endpoint` | `https://ec2.<region>.amazonaws.com` (or any EC2-compatible endpoint) |
//! | `region` | the signing region |
//! | `access_key_id`, `secret_access_key`, `session_token` | credentials (the session token is optional) |
//! | `instance.<node name>` | the EC2 instance id of each node |
//! | `availability_zone` | where volumes are created unless the StorageClass says |
//! | `device_path_prefix` | where an attached device shows up on the node, followed by the letter (default `/dev/xvd`) |
//! | `request_timeout_seconds` | per EC2 request (default 20; the verb's deadline caps it) |
//! | `attach_timeout_seconds` | how long attach, detach, provision wait for EC2 to settle (default 60) |
//! | `wait_for_device_seconds` | how long `waitforattach` waits for the device (default 120) |
//!
//! Credentials may also come as the kubelet secrets `access_key_id`/`secret_access_key`, but
//! kubelet passes secrets to `mount` only, which makes no EC2 call: in practice they are in
//! the policy, which only the security team can read. Never from the environment.
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
use flex_sdk::{Capabilities, Driver, Options, Result, block, config, failure, log, mounts};
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
        let volume = match find_volume(&ec2, pv)? {
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
                volume
            }
            None => {
                let zone = match &request.zone {
                    Some(zone) => zone.clone(),
                    None => config::get("availability_zone").ok_or_else(|| {
                        failure(
                            "no availability zone: set the StorageClass parameter availabilityZone or availability_zone in the policy's [config]",
                        )
                    })?,
                };
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
            "available" | "in-use" => Ok(()),
            "creating" => wait_until(&format!("{} to become available", volume.id), || match ec2
                .volume(&volume.id)
                .map_err(ec2_failure)?
            {
                Some(v) if v.state == "available" || v.state == "in-use" => Ok(Some(())),
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

    fn delete(options: Options) -> Result<()> {
        let pv = volume_name(&options)?;
        let ec2 = client(&options)?;
        let Some(volume) = find_volume(&ec2, pv)? else {
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

    fn attach(options: Options, node: String) -> Result<String> {
        let pv = volume_name(&options)?;
        let instance = instance_of(&node)?;
        let ec2 = client(&options)?;
        let volume = find_volume(&ec2, pv)?.ok_or_else(|| {
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
        let pv = volume_name(&options)?;
        let instance = instance_of(&node)?;
        let ec2 = client(&options)?;
        Ok(find_volume(&ec2, pv)?.is_some_and(|v| {
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
        let device = if device.is_empty() {
            attached_device(&options)?
        } else {
            device
        };
        flex_sdk::filesystem::mount_device(
            pv,
            &device,
            &device_mount_path,
            options.fs_type.as_deref(),
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

flex_sdk::export_driver!(Ebs);

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
        if !(1..=65536).contains(&size_gib) {
            return Err(failure(format!(
                "requested size {size_gib} GiB is out of range (1 to 65536 GiB)"
            )));
        }
        let volume_type = options.get("type").unwrap_or("gp3").to_string();
        if !VOLUME_TYPES.contains(&volume_type.as_str()) {
            return Err(failure(format!(
                "invalid parameter type {volume_type:?} (one of {})",
                VOLUME_TYPES.join(", ")
            )));
        }
        let iops = match options.get("iops") {
            None => None,
            Some(text) => Some(text.parse::<u32>().ok().filter(|n| *n > 0).ok_or_else(|| {
                failure(format!(
                    "invalid parameter iops {text:?}: a positive number"
                ))
            })?),
        };
        match (volume_type.as_str(), iops) {
            ("io1" | "io2", None) => {
                return Err(failure(format!(
                    "type {volume_type} needs the iops parameter"
                )));
            }
            ("io1" | "io2" | "gp3", _) | (_, None) => {}
            (_, Some(_)) => {
                return Err(failure(format!(
                    "invalid parameter iops: type {volume_type} has no provisioned IOPS (io1, io2 or gp3 only)"
                )));
            }
        }
        let zone = match options.get("availabilityZone") {
            Some("") => return Err(failure("invalid parameter availabilityZone: empty")),
            zone => zone.map(String::from),
        };
        let encrypted = match options.get("encrypted") {
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
            zone,
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
fn attach_at_free_device(ec2: &Ec2, volume: &Volume, instance: &str) -> Result<String> {
    let used: Vec<String> = ec2
        .describe_volumes(&[("attachment.instance-id", &[instance])])
        .map_err(ec2_failure)?
        .into_iter()
        .flat_map(|v| v.attachments)
        .filter(|a| a.instance_id == instance)
        .map(|a| a.device)
        .collect();
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
    let volume = find_volume(&client(options)?, pv)?
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
    let volume = find_volume(&ec2, pv)?
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
