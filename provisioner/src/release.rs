//! Deletion: a PersistentVolume this provisioner created (its `provisioned-by` annotation
//! and its `flexVolume.driver` both name one of our drivers), Released, with reclaim policy
//! `Delete`: the driver's `delete` with the options `provision` recorded, then the PV object.
//! `Retain` keeps both; a PV anyone else made is never touched.
//!
//! Repeatable: a crash after the backend volume is gone leaves the PV Released, and the next
//! `delete` finds nothing to delete (success); the PV is removed only with the UID it was read
//! with, so a PV recreated under the same name is not.

use crate::claims::{Error, PROVISIONED_BY, affinity_node, event};
use crate::{Shared, step};
use k8s_openapi::api::core::v1::PersistentVolume;
use kube::api::{DeleteParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use std::sync::Arc;

pub fn error_policy(volume: Arc<PersistentVolume>, error: &Error, shared: Arc<Shared>) -> Action {
    tracing::warn!(volume = %volume.name_any(), "{error}");
    shared.retry_after_failure(&volume.uid().unwrap_or_default())
}

pub async fn reconcile(
    volume: Arc<PersistentVolume>,
    shared: Arc<Shared>,
) -> Result<Action, Error> {
    let Some(spec) = volume.spec.as_ref() else {
        return Ok(Action::await_change());
    };
    let Some(flex) = spec.flex_volume.as_ref() else {
        return Ok(Action::await_change());
    };
    let provisioned_by = volume.annotations().get(PROVISIONED_BY);
    let Some(driver) = shared
        .driver_for(&flex.driver)
        .filter(|driver| provisioned_by == Some(&driver.provisioner))
        .cloned()
    else {
        return Ok(Action::await_change());
    };
    let released = volume.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Released");
    let delete = spec.persistent_volume_reclaim_policy.as_deref() == Some("Delete");
    if !released || !delete || volume.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let name = volume.name_any();
    // Ours are named after the claim they were made for; a hand-made PV that copied the
    // annotation but not that pairing is not ours to delete.
    let claim_uid = spec.claim_ref.as_ref().and_then(|c| c.uid.as_deref());
    if claim_uid.is_none_or(|uid| name != format!("pvc-{uid}")) {
        tracing::info!(volume = %name, "released, but not named after its claim: not deleting it");
        return Ok(Action::await_change());
    }
    // A node-local volume (a loop image) exists only on its node: deleting it anywhere else
    // would find nothing, succeed, and leave the image behind.
    if let Some(node) = affinity_node(&volume)
        && shared.node_name.as_deref() != Some(node)
    {
        tracing::info!(volume = %name, "released, but its volume is on node {node}: left to the provisioner there");
        return Ok(Action::await_change());
    }
    let uid = volume.uid().unwrap_or_default();
    let options: Vec<(String, String)> = flex
        .options
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    step::reached(step::BEFORE_DELETE).await;
    if let Err(message) = driver.delete(name.clone(), options).await {
        tracing::warn!(volume = %name, "delete failed: {message}");
        event(
            &shared,
            volume.as_ref(),
            EventType::Warning,
            "VolumeFailedDelete",
            message,
        )
        .await;
        return Ok(shared.retry_after_failure(&uid));
    }
    step::reached(step::AFTER_DELETE).await;
    let api: Api<PersistentVolume> = Api::all(shared.client.clone());
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some(uid.clone()),
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete(&name, &params).await {
        Ok(_) => {}
        // Gone already, or a different object now has the name: nothing of ours to remove.
        Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    shared.succeeded(&uid);
    tracing::info!(volume = %name, driver = %driver.provisioner, "deleted");
    Ok(Action::await_change())
}
