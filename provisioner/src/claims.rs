//! Provisioning: a Pending claim of one of our StorageClasses becomes a backend volume (the
//! driver's `provision`) and a PersistentVolume pre-bound to the claim; the PV controller in
//! kube-controller-manager then binds the claim to it.
//!
//! Every step can be repeated: the PV's name is `pvc-<claim uid>` and the backend volume is
//! named after the PV, so a retry after a crash anywhere asks the driver for the same volume
//! (which it returns as it is) and creates the same object (an existing one is success).

use crate::driver::Driver;
use crate::{RECHECK, Shared, quantity, step};
use flex_host::bindings::{AccessMode, ProvisionRequest, Provisioned, ProvisionerInfo};
use k8s_openapi::api::core::v1::{
    FlexPersistentVolumeSource, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
    ObjectReference, PersistentVolume, PersistentVolumeClaim, PersistentVolumeSpec,
    VolumeNodeAffinity,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::PostParams;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Set on every PV this provisioner creates, to the StorageClass's `provisioner`: only such
/// volumes are ever deleted (the annotation Kubernetes' own provisioners use).
pub const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
/// The node the scheduler chose, for `WaitForFirstConsumer` classes.
const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
/// The node label a node-local volume's affinity names.
const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";
/// The StorageClass of a claim from before `storageClassName` existed.
const BETA_CLASS: &str = "volume.beta.kubernetes.io/storage-class";

#[derive(Debug)]
pub struct Error(pub String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl From<kube::Error> for Error {
    fn from(e: kube::Error) -> Error {
        Error(format!("API server: {e}"))
    }
}

pub fn error_policy(
    claim: Arc<PersistentVolumeClaim>,
    error: &Error,
    shared: Arc<Shared>,
) -> Action {
    tracing::warn!(claim = %describe(&claim), "{error}");
    shared.retry_after_failure(&claim.uid().unwrap_or_default())
}

pub async fn reconcile(
    claim: Arc<PersistentVolumeClaim>,
    shared: Arc<Shared>,
) -> Result<Action, Error> {
    if !pending(&claim) {
        return Ok(Action::await_change());
    }
    let (class, driver) = match ours(&claim, &shared) {
        Ours::Yes(class, driver) => (class, driver),
        Ours::No => return Ok(Action::await_change()),
        // Created before its class (or the cache has not seen it yet): look again later.
        Ours::NoClassYet => return Ok(Action::requeue(RECHECK)),
    };
    let uid = claim.uid().unwrap_or_default();
    let pv_name = format!("pvc-{uid}");
    let volumes: Api<PersistentVolume> = Api::all(shared.client.clone());
    // The cache may lag our own create; the API server cannot.
    if shared.volumes.get(&ObjectRef::new(&pv_name)).is_some()
        || volumes.get_opt(&pv_name).await?.is_some()
    {
        // Provisioned: the PV controller binds the claim to it.
        return Ok(Action::requeue(RECHECK));
    }
    let selected_node = claim.annotations().get(SELECTED_NODE).cloned();
    let waits = class.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer");
    if waits && selected_node.is_none() {
        // The scheduler picks a node when a pod uses the claim.
        return Ok(Action::await_change());
    }

    let info = match driver.describe().await {
        Ok(info) => info,
        Err(message) => return failed(&shared, &claim, &uid, message).await,
    };
    let this_node = shared.node_name.as_deref();
    let checked = check(
        &claim,
        &class,
        &driver.provisioner,
        &info,
        &pv_name,
        selected_node,
        this_node,
    );
    let request = match checked {
        Ok(request) => request,
        Err(message) => return failed(&shared, &claim, &uid, message).await,
    };
    event(
        &shared,
        claim.as_ref(),
        EventType::Normal,
        "Provisioning",
        format!(
            "External provisioner is provisioning volume for claim \"{}\" ({})",
            describe(&claim),
            driver.provisioner
        ),
    )
    .await;
    step::reached(step::BEFORE_PROVISION).await;
    let provisioned = match driver.provision(request.clone()).await {
        Ok(provisioned) => provisioned,
        Err(message) => return failed(&shared, &claim, &uid, message).await,
    };
    // What the driver returned goes into an API object: checked like any untrusted input.
    // The backend volume stays (a retry returns it again); only the PV is not made.
    if let Err(message) = check_provisioned(&request, &provisioned) {
        let message = format!("driver {} returned {message}", driver.name);
        return failed(&shared, &claim, &uid, message).await;
    }
    step::reached(step::AFTER_PROVISION).await;

    // A claim deleted while the driver worked leaves no PV to delete the volume by: delete it
    // now (the same volume again, if it is recreated, is a new claim with a new UID).
    if !still_there(&shared, &claim).await? {
        tracing::info!(claim = %describe(&claim), "claim gone while provisioning: deleting {pv_name}");
        driver
            .delete(pv_name, provisioned.options)
            .await
            .map_err(Error)?;
        return Ok(Action::await_change());
    }
    let local_node = this_node.filter(|_| info.node_local);
    let volume = persistent_volume(
        &claim,
        &class,
        &driver.provisioner,
        &pv_name,
        provisioned,
        local_node,
    );
    match volumes.create(&PostParams::default(), &volume).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    step::reached(step::AFTER_VOLUME_CREATED).await;
    shared.succeeded(&uid);
    event(
        &shared,
        claim.as_ref(),
        EventType::Normal,
        "ProvisioningSucceeded",
        format!("Successfully provisioned volume {pv_name}"),
    )
    .await;
    tracing::info!(claim = %describe(&claim), volume = %pv_name, "provisioned");
    Ok(Action::requeue(RECHECK))
}

enum Ours {
    Yes(Arc<StorageClass>, Arc<Driver>),
    No,
    NoClassYet,
}

/// The claim's StorageClass and driver, when the class is served by one of our drivers.
fn ours(claim: &PersistentVolumeClaim, shared: &Shared) -> Ours {
    let class_name = claim
        .spec
        .as_ref()
        .and_then(|spec| spec.storage_class_name.clone())
        .or_else(|| claim.annotations().get(BETA_CLASS).cloned())
        .filter(|name| !name.is_empty());
    let Some(class_name) = class_name else {
        return Ours::No;
    };
    let Some(class) = shared.classes.get(&ObjectRef::new(&class_name)) else {
        return Ours::NoClassYet;
    };
    match shared.driver_for(&class.provisioner) {
        Some(driver) => Ours::Yes(class, driver.clone()),
        None => Ours::No,
    }
}

fn pending(claim: &PersistentVolumeClaim) -> bool {
    let bound = claim
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.as_deref())
        .is_some_and(|name| !name.is_empty());
    let phase = claim.status.as_ref().and_then(|s| s.phase.as_deref());
    !bound && matches!(phase, None | Some("Pending")) && claim.metadata.deletion_timestamp.is_none()
}

/// Everything that is refused before the driver's `provision` is called, then the request.
fn check(
    claim: &PersistentVolumeClaim,
    class: &StorageClass,
    provisioner: &str,
    info: &ProvisionerInfo,
    pv_name: &str,
    selected_node: Option<String>,
    this_node: Option<&str>,
) -> Result<ProvisionRequest, String> {
    let spec = claim.spec.as_ref().ok_or("the claim has no spec")?;
    if spec.selector.is_some() {
        return Err(
            "claim Selector is not supported: flex provisions a new volume for each claim".into(),
        );
    }
    if spec.data_source.is_some() || spec.data_source_ref.is_some() {
        return Err("a dataSource (cloning, snapshots) is not supported by flex drivers".into());
    }
    if spec
        .volume_mode
        .as_deref()
        .is_some_and(|mode| mode != "Filesystem")
    {
        return Err("volumeMode Block is not supported: FlexVolume mounts file systems".into());
    }
    if class
        .mount_options
        .as_ref()
        .is_some_and(|options| !options.is_empty())
    {
        return Err(format!(
            "StorageClass {} sets mountOptions, which FlexVolume does not support (kubelet \
             would refuse to mount the volume): put them in the class's parameters for the \
             driver instead",
            class.name_any()
        ));
    }
    let resources = spec.resources.as_ref();
    let size = |field: Option<&BTreeMap<String, Quantity>>| -> Result<Option<u64>, String> {
        field
            .and_then(|map| map.get("storage"))
            .map(|q| quantity::bytes(&q.0))
            .transpose()
    };
    let requested = size(resources.and_then(|r| r.requests.as_ref()))?
        .ok_or("the claim requests no storage (resources.requests.storage)")?;
    let limit = size(resources.and_then(|r| r.limits.as_ref()))?;
    let wanted_modes = spec.access_modes.clone().unwrap_or_default();
    let access_modes = wanted_modes
        .iter()
        .map(|mode| access_mode(mode).ok_or_else(|| format!("access mode {mode} is not supported")))
        .collect::<Result<Vec<_>, _>>()?;
    if access_modes.is_empty() {
        return Err("the claim names no access mode".into());
    }
    if info.node_local {
        let Some(node) = this_node else {
            return Err(format!(
                "{provisioner}'s volumes live on the node that provisions them, and this \
                 provisioner does not know its node: give it --node-name (the Deployment sets \
                 NODE_NAME from spec.nodeName)"
            ));
        };
        if let Some(chosen) = selected_node.as_deref().filter(|chosen| *chosen != node) {
            return Err(format!(
                "the scheduler chose node {chosen}, but {provisioner}'s volumes can only be \
                 made on {node}, where this provisioner runs"
            ));
        }
    }
    if let Some(mode) = wanted_modes
        .iter()
        .zip(&access_modes)
        .find(|(_, mode)| !info.access_modes.contains(mode))
        .map(|(name, _)| name)
    {
        return Err(format!(
            "access mode {mode} is not supported by {provisioner} (it supports {})",
            info.access_modes
                .iter()
                .map(|m| mode_name(*m))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let parameters: Vec<(String, String)> = class
        .parameters
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let unknown: Vec<&str> = parameters
        .iter()
        .map(|(key, _)| key.as_str())
        .filter(|key| !info.parameters.iter().any(|known| known == key))
        .collect();
    if !unknown.is_empty() {
        return Err(format!(
            "StorageClass {} has parameters {} that {provisioner} does not take (it takes: {})",
            class.name_any(),
            unknown.join(", "),
            if info.parameters.is_empty() {
                "none".to_string()
            } else {
                info.parameters.join(", ")
            }
        ));
    }
    let fs_type = parameters
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case("fsType"))
        .map(|(_, value)| value.clone());
    Ok(ProvisionRequest {
        name: pv_name.to_string(),
        requested_bytes: requested,
        limit_bytes: limit,
        parameters,
        access_modes,
        fs_type,
        claim_name: claim.name_any(),
        claim_namespace: claim.namespace().unwrap_or_default(),
        claim_annotations: claim.annotations().clone().into_iter().collect(),
        selected_node,
    })
}

/// At most this many options, of this many bytes in all, from a driver's `provision`.
const MAX_OPTIONS: usize = 32;
const MAX_OPTION_BYTES: usize = 8 << 10;

/// The driver's answer as a PV can carry it: a capacity that serves the claim, and options
/// that are the driver's own (kubelet sets the `kubernetes.io/` keys itself).
fn check_provisioned(request: &ProvisionRequest, provisioned: &Provisioned) -> Result<(), String> {
    let capacity = provisioned.capacity_bytes;
    if capacity < request.requested_bytes {
        return Err(format!(
            "a capacity of {capacity} bytes for a claim of {} bytes",
            request.requested_bytes
        ));
    }
    if let Some(limit) = request.limit_bytes.filter(|limit| capacity > *limit) {
        return Err(format!(
            "a capacity of {capacity} bytes, over the claim's limit of {limit} bytes"
        ));
    }
    let options = &provisioned.options;
    let bytes: usize = options.iter().map(|(k, v)| k.len() + v.len()).sum();
    if options.len() > MAX_OPTIONS || bytes > MAX_OPTION_BYTES {
        return Err(format!(
            "{} options of {bytes} bytes (at most {MAX_OPTIONS}, {MAX_OPTION_BYTES} bytes)",
            options.len()
        ));
    }
    for (key, _) in options {
        let valid = !key.is_empty()
            && key.len() <= 253
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
        if !valid || key.starts_with("kubernetes.io/") {
            return Err(format!(
                "the option key {:?}: a key is letters, digits, `-_./`, and never \
                 kubernetes.io/ (kubelet's own)",
                key.chars().take(80).collect::<String>()
            ));
        }
    }
    let mut keys: Vec<&str> = options.iter().map(|(k, _)| k.as_str()).collect();
    keys.sort_unstable();
    if let Some(pair) = keys.windows(2).find(|pair| pair[0] == pair[1]) {
        return Err(format!("the option {:?} twice", pair[0]));
    }
    Ok(())
}

fn persistent_volume(
    claim: &PersistentVolumeClaim,
    class: &StorageClass,
    provisioner: &str,
    pv_name: &str,
    provisioned: Provisioned,
    local_node: Option<&str>,
) -> PersistentVolume {
    let spec = claim.spec.clone().unwrap_or_default();
    let fs_type = class
        .parameters
        .as_ref()
        .and_then(|p| p.iter().find(|(k, _)| k.eq_ignore_ascii_case("fsType")))
        .map(|(_, v)| v.clone());
    PersistentVolume {
        metadata: ObjectMeta {
            name: Some(pv_name.to_string()),
            annotations: Some(BTreeMap::from([(
                PROVISIONED_BY.to_string(),
                provisioner.to_string(),
            )])),
            ..Default::default()
        },
        spec: Some(PersistentVolumeSpec {
            capacity: Some(BTreeMap::from([(
                "storage".to_string(),
                Quantity(quantity::format(provisioned.capacity_bytes)),
            )])),
            access_modes: spec.access_modes,
            persistent_volume_reclaim_policy: Some(
                class
                    .reclaim_policy
                    .clone()
                    .unwrap_or_else(|| "Delete".into()),
            ),
            storage_class_name: Some(class.name_any()),
            volume_mode: Some("Filesystem".into()),
            claim_ref: Some(ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("PersistentVolumeClaim".into()),
                name: Some(claim.name_any()),
                namespace: claim.namespace(),
                uid: claim.uid(),
                ..Default::default()
            }),
            flex_volume: Some(FlexPersistentVolumeSource {
                driver: provisioner.to_string(),
                fs_type,
                options: Some(provisioned.options.into_iter().collect()),
                read_only: None,
                secret_ref: None,
            }),
            node_affinity: local_node.map(node_affinity),
            ..Default::default()
        }),
        status: None,
    }
}

/// Only pods on `node` can use the volume (the scheduler honours it, and so does kubelet).
fn node_affinity(node: &str) -> VolumeNodeAffinity {
    VolumeNodeAffinity {
        required: Some(NodeSelector {
            node_selector_terms: vec![NodeSelectorTerm {
                match_expressions: Some(vec![NodeSelectorRequirement {
                    key: HOSTNAME_LABEL.into(),
                    operator: "In".into(),
                    values: Some(vec![node.to_string()]),
                }]),
                match_fields: None,
            }],
        }),
    }
}

/// The one node a node-local volume's affinity names.
pub fn affinity_node(volume: &PersistentVolume) -> Option<&str> {
    let required = volume
        .spec
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required
        .as_ref()?;
    let [term] = required.node_selector_terms.as_slice() else {
        return None;
    };
    let [requirement] = term.match_expressions.as_deref()? else {
        return None;
    };
    let [node] = requirement.values.as_deref()? else {
        return None;
    };
    (requirement.key == HOSTNAME_LABEL && requirement.operator == "In").then_some(node.as_str())
}

/// The claim still exists as the same object (not deleted, not recreated under its name).
async fn still_there(shared: &Shared, claim: &PersistentVolumeClaim) -> Result<bool, Error> {
    let api: Api<PersistentVolumeClaim> = Api::namespaced(
        shared.client.clone(),
        &claim.namespace().unwrap_or_default(),
    );
    let current = api.get_opt(&claim.name_any()).await?;
    Ok(current.is_some_and(|c| c.uid() == claim.uid() && c.metadata.deletion_timestamp.is_none()))
}

async fn failed(
    shared: &Shared,
    claim: &PersistentVolumeClaim,
    uid: &str,
    message: String,
) -> Result<Action, Error> {
    tracing::warn!(claim = %describe(claim), "provisioning failed: {message}");
    event(
        shared,
        claim,
        EventType::Warning,
        "ProvisioningFailed",
        message,
    )
    .await;
    Ok(shared.retry_after_failure(uid))
}

pub async fn event<K: Resource<DynamicType = ()>>(
    shared: &Shared,
    object: &K,
    type_: EventType,
    reason: &str,
    note: String,
) {
    // Events are at most 1 kB.
    let note: String = note.chars().take(1000).collect();
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: match reason {
            r if r.starts_with("Provision") => "Provision".into(),
            _ => "Delete".into(),
        },
        secondary: None,
    };
    if let Err(e) = shared
        .recorder
        .publish(&event, &object.object_ref(&()))
        .await
    {
        tracing::warn!("cannot record event {reason}: {e}");
    }
}

pub fn describe(claim: &PersistentVolumeClaim) -> String {
    format!(
        "{}/{}",
        claim.namespace().unwrap_or_default(),
        claim.name_any()
    )
}

fn access_mode(name: &str) -> Option<AccessMode> {
    Some(match name {
        "ReadWriteOnce" => AccessMode::ReadWriteOnce,
        "ReadOnlyMany" => AccessMode::ReadOnlyMany,
        "ReadWriteMany" => AccessMode::ReadWriteMany,
        _ => return None,
    })
}

fn mode_name(mode: AccessMode) -> &'static str {
    match mode {
        AccessMode::ReadWriteOnce => "ReadWriteOnce",
        AccessMode::ReadOnlyMany => "ReadOnlyMany",
        AccessMode::ReadWriteMany => "ReadWriteMany",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(yaml: serde_json::Value) -> PersistentVolumeClaim {
        let mut object = serde_json::json!({
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "data", "namespace": "apps", "uid": "u-1",
                         "annotations": {"team": "storage"}},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "fast",
                     "resources": {"requests": {"storage": "1536Mi"}}},
        });
        merge(&mut object, yaml);
        serde_json::from_value(object).unwrap()
    }

    fn class(yaml: serde_json::Value) -> StorageClass {
        let mut object = serde_json::json!({
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {"name": "fast"},
            "provisioner": "acme/block",
            "parameters": {"type": "gp3", "fsType": "xfs"},
        });
        merge(&mut object, yaml);
        serde_json::from_value(object).unwrap()
    }

    fn merge(into: &mut serde_json::Value, from: serde_json::Value) {
        match (into, from) {
            (serde_json::Value::Object(into), serde_json::Value::Object(from)) => {
                for (key, value) in from {
                    merge(into.entry(key).or_insert(serde_json::Value::Null), value);
                }
            }
            (into, from) => *into = from,
        }
    }

    fn info() -> ProvisionerInfo {
        ProvisionerInfo {
            access_modes: vec![AccessMode::ReadWriteOnce],
            parameters: vec!["type".into(), "fsType".into()],
            node_local: false,
        }
    }

    fn checked(
        claim: &PersistentVolumeClaim,
        class: &StorageClass,
    ) -> Result<ProvisionRequest, String> {
        check(
            claim,
            class,
            "acme/block",
            &info(),
            "pvc-u-1",
            Some("node-a".into()),
            None,
        )
    }

    #[test]
    fn a_claim_becomes_the_drivers_request() {
        let request = checked(
            &claim(serde_json::json!({"spec": {"resources": {"limits": {"storage": "2Gi"}}}})),
            &class(serde_json::json!({})),
        )
        .unwrap();
        assert_eq!(request.name, "pvc-u-1");
        assert_eq!(request.requested_bytes, 1536 << 20);
        assert_eq!(request.limit_bytes, Some(2 << 30));
        assert_eq!(request.fs_type.as_deref(), Some("xfs"));
        assert_eq!(request.claim_name, "data");
        assert_eq!(request.claim_namespace, "apps");
        assert_eq!(request.selected_node.as_deref(), Some("node-a"));
        assert!(request.parameters.contains(&("type".into(), "gp3".into())));
        assert_eq!(
            request.claim_annotations,
            vec![("team".into(), "storage".into())]
        );
    }

    #[test]
    fn what_flex_cannot_serve_is_refused_before_the_driver_runs() {
        let plain = class(serde_json::json!({}));
        for (claim, why) in [
            (
                claim(serde_json::json!({"spec": {"accessModes": ["ReadWriteMany"]}})),
                "ReadWriteMany is not supported by acme/block",
            ),
            (
                claim(serde_json::json!({"spec": {"accessModes": ["ReadWriteOncePod"]}})),
                "ReadWriteOncePod is not supported",
            ),
            (
                claim(serde_json::json!({"spec": {"accessModes": []}})),
                "no access mode",
            ),
            (
                claim(serde_json::json!({"spec": {"selector": {"matchLabels": {"a": "b"}}}})),
                "Selector is not supported",
            ),
            (
                claim(serde_json::json!({"spec": {"volumeMode": "Block"}})),
                "volumeMode Block",
            ),
            (
                claim(
                    serde_json::json!({"spec": {"dataSource": {"kind": "PersistentVolumeClaim", "name": "x"}}}),
                ),
                "dataSource",
            ),
            (
                claim(
                    serde_json::json!({"spec": {"resources": {"requests": {"storage": "1.5Gi"}}}}),
                ),
                "cannot read the size",
            ),
            (
                claim(serde_json::json!({"spec": {"resources": {"requests": null}}})),
                "requests no storage",
            ),
        ] {
            let error = checked(&claim, &plain).unwrap_err();
            assert!(error.contains(why), "{error}");
        }
        let ok = claim(serde_json::json!({}));
        let error = checked(
            &ok,
            &class(serde_json::json!({"parameters": {"colour": "blue"}})),
        )
        .unwrap_err();
        assert!(
            error.contains("colour") && error.contains("takes: type, fsType"),
            "{error}"
        );
        let error = checked(
            &ok,
            &class(serde_json::json!({"mountOptions": ["noatime"]})),
        )
        .unwrap_err();
        assert!(error.contains("mountOptions"), "{error}");
    }

    #[test]
    fn the_volume_is_prebound_to_the_claim_with_the_drivers_options() {
        let claim = claim(serde_json::json!({}));
        let class = class(serde_json::json!({"reclaimPolicy": "Retain"}));
        let provisioned = flex_host::bindings::Provisioned {
            capacity_bytes: 2 << 30,
            options: vec![("volumeID".into(), "vol-1".into())],
        };
        let pv = persistent_volume(&claim, &class, "acme/block", "pvc-u-1", provisioned, None);
        let json = serde_json::to_value(&pv).unwrap();
        assert_eq!(json["metadata"]["name"], "pvc-u-1");
        assert_eq!(
            json["metadata"]["annotations"][PROVISIONED_BY],
            "acme/block"
        );
        let spec = &json["spec"];
        assert_eq!(spec["capacity"]["storage"], "2Gi");
        assert_eq!(spec["persistentVolumeReclaimPolicy"], "Retain");
        assert_eq!(spec["storageClassName"], "fast");
        assert_eq!(spec["claimRef"]["uid"], "u-1");
        assert_eq!(spec["claimRef"]["namespace"], "apps");
        assert_eq!(spec["flexVolume"]["driver"], "acme/block");
        assert_eq!(spec["flexVolume"]["fsType"], "xfs");
        assert_eq!(spec["flexVolume"]["options"]["volumeID"], "vol-1");
        assert_eq!(spec["accessModes"], serde_json::json!(["ReadWriteOnce"]));
        // No reclaim policy in the class: Delete, as Kubernetes defaults it.
        let default = persistent_volume(
            &claim,
            &super::tests::class(serde_json::json!({})),
            "acme/block",
            "pvc-u-1",
            flex_host::bindings::Provisioned {
                capacity_bytes: 1000,
                options: vec![],
            },
            None,
        );
        assert_eq!(
            default
                .spec
                .unwrap()
                .persistent_volume_reclaim_policy
                .as_deref(),
            Some("Delete")
        );
    }

    #[test]
    fn a_node_local_volume_is_made_only_on_this_node_and_pinned_to_it() {
        let local = ProvisionerInfo {
            node_local: true,
            ..info()
        };
        let claim = claim(serde_json::json!({}));
        let class = class(serde_json::json!({}));
        let check_on = |selected: Option<&str>, this: Option<&str>| {
            let selected = selected.map(str::to_string);
            check(
                &claim,
                &class,
                "acme/block",
                &local,
                "pvc-u-1",
                selected,
                this,
            )
        };
        let unknown = check_on(None, None).unwrap_err();
        assert!(unknown.contains("--node-name"), "{unknown}");
        let elsewhere = check_on(Some("node-b"), Some("node-a")).unwrap_err();
        assert!(
            elsewhere.contains("chose node node-b") && elsewhere.contains("made on node-a"),
            "{elsewhere}"
        );
        check_on(Some("node-a"), Some("node-a")).unwrap();
        check_on(None, Some("node-a")).unwrap();

        let provisioned = flex_host::bindings::Provisioned {
            capacity_bytes: 1 << 20,
            options: vec![],
        };
        let pv = persistent_volume(
            &claim,
            &class,
            "acme/block",
            "pvc-u-1",
            provisioned,
            Some("node-a"),
        );
        assert_eq!(affinity_node(&pv), Some("node-a"));
        let json = serde_json::to_value(&pv).unwrap();
        assert_eq!(
            json["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0],
            serde_json::json!({"key": "kubernetes.io/hostname", "operator": "In", "values": ["node-a"]})
        );
    }

    #[test]
    fn a_drivers_answer_is_checked_before_it_becomes_a_volume() {
        let request = checked(
            &claim(serde_json::json!({"spec": {"resources": {"limits": {"storage": "2Gi"}}}})),
            &class(serde_json::json!({})),
        )
        .unwrap();
        let answer = |capacity: u64, options: Vec<(&str, &str)>| Provisioned {
            capacity_bytes: capacity,
            options: options
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        check_provisioned(
            &request,
            &answer(2 << 30, vec![("volumeID", "vol-1"), ("fsType", "xfs")]),
        )
        .unwrap();
        for (bad, why) in [
            (answer(1 << 20, vec![]), "for a claim of"),
            (answer(3 << 30, vec![]), "over the claim's limit"),
            (
                answer(2 << 30, vec![("kubernetes.io/secret/x", "y")]),
                "kubernetes.io/",
            ),
            (answer(2 << 30, vec![("", "y")]), "option key"),
            (answer(2 << 30, vec![("a b", "y")]), "option key"),
            (answer(2 << 30, vec![("id", "1"), ("id", "2")]), "twice"),
        ] {
            let error = check_provisioned(&request, &bad).unwrap_err();
            assert!(error.contains(why), "{error}");
        }
        let many: Vec<(String, String)> = (0..33).map(|i| (format!("k{i}"), "v".into())).collect();
        let error = check_provisioned(
            &request,
            &Provisioned {
                capacity_bytes: 2 << 30,
                options: many,
            },
        )
        .unwrap_err();
        assert!(error.contains("at most 32"), "{error}");
        let big = vec![("k".to_string(), "v".repeat(9000))];
        let error = check_provisioned(
            &request,
            &Provisioned {
                capacity_bytes: 2 << 30,
                options: big,
            },
        )
        .unwrap_err();
        assert!(error.contains("8192 bytes"), "{error}");
    }
}
