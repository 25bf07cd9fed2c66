//! One driver's provisioning calls, made off the async runtime (a call runs WebAssembly and
//! blocking host calls) and timed into the metrics.

use crate::metrics::Metrics;
use flex_host::bindings::{ProvisionRequest, Provisioned, ProvisionerInfo};
use flex_host::provisioning;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Driver {
    /// `vendor~name`: the plugin directory, the policy file, the log and audit names.
    pub name: String,
    /// `vendor/name`: a StorageClass's `provisioner`, a PV's `flexVolume.driver`.
    pub provisioner: String,
    plugin_dir: PathBuf,
    metrics: Arc<Metrics>,
}

/// How long past the policy's deadline a call may take before it is given up (the runtime
/// stops the driver's code at the deadline; only a host call stuck outside outlasts it).
const STUCK_GRACE: Duration = Duration::from_secs(10);

impl Driver {
    pub fn new(plugin_dir: &Path, name: &str, metrics: &Arc<Metrics>) -> anyhow::Result<Driver> {
        let Some((vendor, short)) = name.split_once('~') else {
            anyhow::bail!("--driver {name:?}: expected vendor~name, the plugin directory's name");
        };
        let valid = |part: &str| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                && !part.starts_with('.')
        };
        if !valid(vendor) || !valid(short) {
            anyhow::bail!("--driver {name:?}: expected vendor~name, the plugin directory's name");
        }
        let driver = Driver {
            name: name.to_string(),
            provisioner: format!("{vendor}/{short}"),
            plugin_dir: plugin_dir.to_path_buf(),
            metrics: metrics.clone(),
        };
        let component = provisioning::installed(plugin_dir, name).component;
        if !component.exists() {
            tracing::warn!(
                driver = name,
                "{} does not exist (yet): install the driver with `flex install`",
                component.display()
            );
        }
        Ok(driver)
    }

    pub async fn describe(&self) -> Result<ProvisionerInfo, String> {
        self.call("describe", provisioning::describe).await
    }

    pub async fn provision(&self, request: ProvisionRequest) -> Result<Provisioned, String> {
        let result = self
            .call("provision", move |plugin| {
                provisioning::provision(plugin, &request)
            })
            .await;
        self.metrics.count_provision(&self.name, result.is_ok());
        result
    }

    pub async fn delete(&self, name: String, options: Vec<(String, String)>) -> Result<(), String> {
        let result = self
            .call("delete", move |plugin| {
                provisioning::delete(plugin, &name, &options)
            })
            .await;
        self.metrics.count_delete(&self.name, result.is_ok());
        result
    }

    async fn call<T: Send + 'static>(
        &self,
        verb: &'static str,
        run: impl FnOnce(&flex_host::locate::Plugin) -> Result<T, String> + Send + 'static,
    ) -> Result<T, String> {
        let plugin = provisioning::installed(&self.plugin_dir, &self.name);
        let deadline = flex_host::policy::load(&self.name)
            .map(|policy| Duration::from_secs(policy.limits.deadline_seconds))
            .unwrap_or(Duration::from_secs(60))
            + STUCK_GRACE;
        let started = Instant::now();
        let call = tokio::task::spawn_blocking(move || run(&plugin));
        let result = match tokio::time::timeout(deadline, call).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(format!(
                "driver {} crashed during {verb}: {join}",
                self.name
            )),
            Err(_) => Err(format!(
                "driver {} did not finish {verb} within {}s (blocked in a host call)",
                self.name,
                deadline.as_secs()
            )),
        };
        self.metrics
            .observe_call(&self.name, verb, started.elapsed().as_secs_f64());
        result
    }
}
