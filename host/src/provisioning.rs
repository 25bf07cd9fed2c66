//! The `provisioning` export, for a long-running caller (`flex provisioner`): each call runs
//! the driver's component in a fresh instance under its policy, with its audit and log lines,
//! exactly as a verb from kubelet does (see `runtime.rs`).

use crate::bindings::{
    DriverError, ProvisionRequest, Provisioned, ProvisionerInfo, Provisioning, ProvisioningIndices,
};
use crate::locate::Plugin;
use crate::logfile::Logger;
use crate::policy::{self, Policy};
use crate::runtime::{self, CallSpec};
use std::path::Path;

pub use crate::bindings::AccessMode;

/// A driver installed in a kubelet plugin directory (`<dir>/<vendor~name>/<name>.wasm`), the
/// layout `flex install` writes. The component link is resolved once per call, so a call that
/// races an upgrade runs one version.
pub fn installed(plugin_dir: &Path, driver: &str) -> Plugin {
    let short = driver.split_once('~').map_or(driver, |(_, name)| name);
    let link = plugin_dir.join(driver).join(format!("{short}.wasm"));
    Plugin {
        name: driver.to_string(),
        component: std::fs::canonicalize(&link).unwrap_or(link),
    }
}

/// What the driver supports: checked before any `provision`.
pub fn describe(plugin: &Plugin) -> Result<ProvisionerInfo, String> {
    call(plugin, "describe", |export, store| {
        Ok(Ok(export.call_describe(store)?))
    })
}

/// Creates (or finds) the backend volume `request.name`.
pub fn provision(plugin: &Plugin, request: &ProvisionRequest) -> Result<Provisioned, String> {
    call(plugin, "provision", |export, store| {
        export.call_provision(store, request)
    })
}

/// Deletes the backend volume `name`; a missing one is success.
pub fn delete(plugin: &Plugin, name: &str, options: &[(String, String)]) -> Result<(), String> {
    call(plugin, "delete", |export, store| {
        export.call_delete(store, name, options)
    })
}

type Store = wasmtime::Store<runtime::CallState>;
type Invoke<'a, T> =
    Box<dyn FnOnce(&Provisioning, &mut Store) -> wasmtime::Result<Result<T, DriverError>> + 'a>;

fn call<'a, T>(
    plugin: &Plugin,
    verb: &str,
    invoke: impl FnOnce(&Provisioning, &mut Store) -> wasmtime::Result<Result<T, DriverError>> + 'a,
) -> Result<T, String> {
    let invoke: Invoke<'a, T> = Box::new(invoke);
    let mut logger = Logger::open(&plugin.name, verb);
    let result = match policy::load(&plugin.name) {
        Ok(policy) => {
            let (result, returned) = run(plugin, &policy, verb, logger, invoke);
            logger = returned;
            result
        }
        Err(e) => Err(e),
    };
    match &result {
        Ok(_) => logger.info("reply success"),
        Err(message) => logger.error(&format!("reply failure: {message}")),
    }
    result
}

fn run<T>(
    plugin: &Plugin,
    policy: &Policy,
    verb: &str,
    logger: Logger,
    invoke: Invoke<'_, T>,
) -> (Result<T, String>, Logger) {
    let spec = CallSpec {
        plugin,
        policy,
        verb,
        dry_run: false,
        targets: vec![],
        bind_sources: vec![],
        devices: vec![],
        per_call_process: false,
    };
    let (outcome, logger) = runtime::run_call(spec, logger, |store, instance| {
        let indices = ProvisioningIndices::new(&instance.instance_pre(&*store)).map_err(|_| {
            wasmtime::Error::msg(
                "its component exports no flex:volume/provisioning (build it for the world \
                 `provisioning-driver`)",
            )
        })?;
        let export = indices.load(&mut *store, instance)?;
        invoke(&export, store)
    });
    let result = match outcome {
        Err(message) => Err(message),
        Ok(Ok(value)) => Ok(value),
        Ok(Err(DriverError::NotSupported)) => {
            Err(format!("driver {} does not support {verb}", plugin.name))
        }
        Ok(Err(DriverError::Failure(message))) => Err(message),
    };
    (result, logger)
}
