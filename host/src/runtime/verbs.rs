//! What kubelet's call hands a driver (its directories and devices) and the verb's export
//! called with its arguments, answered as the reply kubelet reads.

use crate::bindings::{self, DriverError};
use crate::protocol::{Call, Reply};
use crate::runtime::CallState;
use wasmtime::Store;

pub(super) fn owned(strings: Vec<&str>) -> Vec<String> {
    strings.into_iter().map(str::to_string).collect()
}

/// The directories kubelet handed to this call: the only ones a driver may mount onto.
pub(super) fn call_targets(call: &Call) -> Vec<&str> {
    match call {
        Call::Mount { dir, .. } | Call::Unmount { dir } => vec![dir],
        Call::MountDevice { path, .. } | Call::UnmountDevice { path } => vec![path],
        _ => vec![],
    }
}

/// The devices kubelet handed to this call (named as such in the audit; see caps::block).
pub(super) fn call_devices(call: &Call) -> Vec<&str> {
    match call {
        Call::WaitForAttach { device, .. }
        | Call::MountDevice { device, .. }
        | Call::ExpandFs { device, .. } => vec![device],
        _ => vec![],
    }
}

/// Directories a driver may bind from without a grant: in `mount`, the volume's device mount
/// path, which is what kubelet itself would bind.
pub(super) fn call_bind_sources(call: &Call) -> Vec<String> {
    match call {
        Call::Mount { dir, .. } => crate::caps::mounts::device_mount_path_for(dir)
            .into_iter()
            .collect(),
        _ => vec![],
    }
}

pub(super) fn call_verb(
    verbs: &bindings::Verbs,
    store: &mut Store<CallState>,
    call: Call,
) -> wasmtime::Result<Reply> {
    let s = store;
    Ok(match call {
        Call::Init => reply(verbs.call_init(s)?, |caps| Reply {
            capabilities: Some(caps.into()),
            ..Reply::success()
        }),
        Call::GetVolumeName { options } => {
            reply(verbs.call_get_volume_name(s, &options)?, |name| Reply {
                volume_name: Some(name),
                ..Reply::success()
            })
        }
        Call::Attach { options, node } => {
            reply(verbs.call_attach(s, &options, &node)?, device_reply)
        }
        Call::Detach { volume, node } => reply(verbs.call_detach(s, &volume, &node)?, success),
        Call::WaitForAttach { device, options } => reply(
            verbs.call_wait_for_attach(s, &device, &options)?,
            device_reply,
        ),
        Call::IsAttached { options, node } => {
            reply(verbs.call_is_attached(s, &options, &node)?, |attached| {
                Reply {
                    attached: Some(attached),
                    ..Reply::success()
                }
            })
        }
        Call::MountDevice {
            path,
            device,
            options,
        } => reply(
            verbs.call_mount_device(s, &path, &device, &options)?,
            success,
        ),
        Call::UnmountDevice { path } => reply(verbs.call_unmount_device(s, &path)?, success),
        Call::Mount { dir, options } => reply(verbs.call_mount(s, &dir, &options)?, success),
        Call::Unmount { dir } => reply(verbs.call_unmount(s, &dir)?, success),
        Call::ExpandVolume {
            options,
            path,
            new_size,
            old_size,
        } => reply(
            verbs.call_expand_volume(s, &options, &path, new_size, old_size)?,
            |size| Reply {
                volume_new_size: Some(size),
                ..Reply::success()
            },
        ),
        Call::ExpandFs {
            options,
            device,
            path,
            new_size,
            old_size,
        } => reply(
            verbs.call_expand_fs(s, &options, &device, &path, new_size, old_size)?,
            success,
        ),
        Call::Provision { options } => reply(verbs.call_provision(s, &options)?, success),
        Call::Delete { options } => reply(verbs.call_delete(s, &options)?, success),
    })
}

fn reply<T>(result: Result<T, DriverError>, on_success: impl FnOnce(T) -> Reply) -> Reply {
    match result {
        Ok(value) => on_success(value),
        Err(DriverError::NotSupported) => Reply::not_supported("not supported by this driver"),
        Err(DriverError::Failure(message)) => Reply::failure(message),
    }
}

fn success(_: ()) -> Reply {
    Reply::success()
}

fn device_reply(device: String) -> Reply {
    Reply {
        device: Some(device),
        ..Reply::success()
    }
}
