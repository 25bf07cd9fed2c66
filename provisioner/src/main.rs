//! `flex-provisioner` (run as `flex provisioner`): dynamic provisioning for flex drivers.
//!
//! It serves every StorageClass whose `provisioner` is one of its drivers (`vendor/name`, the
//! string a `flexVolume.driver` uses): for a Pending claim of such a class it calls the
//! driver's `provision` and creates the PersistentVolume `pvc-<claim uid>` bound to it; for a
//! Released volume it created, with reclaim policy `Delete`, it calls `delete` and removes the
//! PersistentVolume. The driver's component runs in this process through the same runtime as
//! the per-call `flex`, under the driver's policy, with its audit and log lines.
//!
//! Exactly once in effect: the PV's name comes from the claim's UID and the backend volume's
//! from the PV's, so every retry (after a crash at any point, or by the other replica) asks
//! the driver for the same volume and creates the same object. Only the holder of the Lease
//! acts; the other replica waits to take over.

mod claims;
mod driver;
mod leader;
mod metrics;
mod quantity;
mod release;
mod step;

use anyhow::Context;
use clap::Parser;
use driver::Driver;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How the provisioner is run (see deploy/provisioner.yaml).
#[derive(Parser, Debug)]
#[command(name = "flex provisioner", version, about)]
struct Args {
    /// A driver to provision for, as its plugin directory names it (`vendor~name`); its
    /// StorageClasses say `provisioner: vendor/name`. Repeat for more.
    #[arg(long = "driver", required = true, value_name = "VENDOR~NAME")]
    drivers: Vec<String>,
    /// The kubelet plugin directory the drivers are installed in (by `flex install` or the
    /// DaemonSet).
    #[arg(
        long,
        value_name = "DIR",
        default_value = "/usr/libexec/kubernetes/kubelet-plugins/volume/exec"
    )]
    plugin_dir: PathBuf,
    /// Where `/metrics` and `/healthz` are served.
    #[arg(long, value_name = "ADDR:PORT", default_value = "0.0.0.0:9809")]
    listen: std::net::SocketAddr,
    /// This replica's name in the Lease (default: $POD_NAME, else the host name).
    #[arg(long, value_name = "NAME")]
    identity: Option<String>,
    /// The Lease's namespace (default: $POD_NAMESPACE, else flex-system).
    #[arg(long, value_name = "NS")]
    lease_namespace: Option<String>,
    #[arg(long, value_name = "NAME", default_value = "flex-provisioner")]
    lease_name: String,
    /// The node this replica runs on (default: $NODE_NAME): a driver whose volumes are local
    /// to it (loop images) pins each PV to this node, and deletes only PVs pinned here.
    #[arg(long, value_name = "NODE")]
    node_name: Option<String>,
    /// Seconds a leader's Lease lasts without renewal: how long a dead leader's work waits.
    #[arg(long, value_name = "SECONDS", default_value_t = 15)]
    lease_seconds: u64,
    /// A kubeconfig file (default: $KUBECONFIG, else the in-cluster service account).
    #[arg(long, value_name = "PATH")]
    kubeconfig: Option<PathBuf>,
    /// Driver calls in flight at once, per driver.
    #[arg(long, value_name = "N", default_value_t = 4)]
    workers: u16,
}

/// What every reconciler shares.
pub struct Shared {
    pub client: Client,
    pub drivers: Vec<Arc<Driver>>,
    pub classes: Store<StorageClass>,
    pub volumes: Store<PersistentVolume>,
    pub recorder: Recorder,
    pub metrics: Arc<metrics::Metrics>,
    pub node_name: Option<String>,
    /// Failed attempts per object (by UID), for the retry backoff.
    pub failures: std::sync::Mutex<std::collections::HashMap<String, u32>>,
}

impl Shared {
    /// The driver a StorageClass's `provisioner` names, if it is one of ours.
    pub fn driver_for(&self, provisioner: &str) -> Option<&Arc<Driver>> {
        self.drivers.iter().find(|d| d.provisioner == provisioner)
    }
}

fn main() {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FLEX_PROVISIONER_LOG")
                .unwrap_or_else(|_| "info,kube_lease_manager=warn".into()),
        )
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = runtime.block_on(run(args)) {
        tracing::error!("{e:#}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let metrics = Arc::new(metrics::Metrics::new());
    let identity = args
        .identity
        .clone()
        .or_else(|| std::env::var("POD_NAME").ok())
        .unwrap_or_else(hostname);
    let drivers = args
        .drivers
        .iter()
        .map(|name| Driver::new(&args.plugin_dir, name, &metrics).map(Arc::new))
        .collect::<Result<Vec<_>, _>>()?;
    let client = client(&args).await?;
    tokio::spawn(metrics::serve(args.listen, metrics.clone()));

    let namespace = args
        .lease_namespace
        .clone()
        .or_else(|| std::env::var("POD_NAMESPACE").ok())
        .unwrap_or_else(|| "flex-system".into());
    let mut leadership = leader::Leadership::start(
        client.clone(),
        &namespace,
        &args.lease_name,
        &identity,
        args.lease_seconds,
    )
    .await?;
    tracing::info!(
        %identity,
        drivers = ?args.drivers,
        lease = %format!("{namespace}/{}", args.lease_name),
        "waiting to lead"
    );
    leadership.acquired().await?;
    metrics.set_leader(true);
    tracing::info!(%identity, "leading: provisioning");

    let reporter = Reporter {
        controller: "flex-provisioner".into(),
        instance: Some(identity.clone()),
    };
    let context = Arc::new(Shared {
        recorder: Recorder::new(client.clone(), reporter),
        failures: Default::default(),
        node_name: args
            .node_name
            .clone()
            .or_else(|| std::env::var("NODE_NAME").ok())
            .filter(|name| !name.is_empty()),
        classes: spawn_store(Api::<StorageClass>::all(client.clone())),
        volumes: spawn_store(Api::<PersistentVolume>::all(client.clone())),
        client: client.clone(),
        drivers,
        metrics,
    });
    context.classes.wait_until_ready().await?;
    context.volumes.wait_until_ready().await?;

    let claims = claim_controller(context.clone(), args.workers);
    let released = volume_controller(context.clone(), args.workers);
    // Leadership lost (or the Lease cannot be renewed): stop at once, before another replica
    // acts on the same objects; the Deployment restarts this one as a follower.
    tokio::select! {
        _ = claims => anyhow::bail!("the claim controller stopped"),
        _ = released => anyhow::bail!("the volume controller stopped"),
        lost = leadership.lost() => {
            lost?;
            anyhow::bail!("lost the Lease {namespace}/{}: stopping", args.lease_name)
        }
        _ = shutdown() => {
            tracing::info!("terminated: releasing the Lease");
            leadership.release().await;
            Ok(())
        }
    }
}

/// Pending claims, re-examined when their StorageClass or their PV changes.
async fn claim_controller(context: Arc<Shared>, workers: u16) {
    let api = Api::<PersistentVolumeClaim>::all(context.client.clone());
    let volumes = Api::<PersistentVolume>::all(context.client.clone());
    Controller::new(api, watcher::Config::default())
        .owns_volume(volumes)
        .with_config(kube::runtime::controller::Config::default().concurrency(workers))
        .run(claims::reconcile, claims::error_policy, context)
        .for_each(|_| async {})
        .await
}

/// Volumes this provisioner created: deleted when released under `Delete`.
async fn volume_controller(context: Arc<Shared>, workers: u16) {
    let api = Api::<PersistentVolume>::all(context.client.clone());
    Controller::new(api, watcher::Config::default())
        .with_config(kube::runtime::controller::Config::default().concurrency(workers))
        .run(release::reconcile, release::error_policy, context)
        .for_each(|_| async {})
        .await
}

trait OwnsVolume {
    fn owns_volume(self, volumes: Api<PersistentVolume>) -> Self;
}

impl OwnsVolume for Controller<PersistentVolumeClaim> {
    /// A PV event names its claim (claimRef): a claim whose PV vanished is looked at again.
    fn owns_volume(self, volumes: Api<PersistentVolume>) -> Self {
        self.watches(
            volumes,
            watcher::Config::default(),
            |pv: PersistentVolume| {
                let claim = pv.spec.as_ref()?.claim_ref.as_ref()?;
                Some(ObjectRef::new(claim.name.as_deref()?).within(claim.namespace.as_deref()?))
            },
        )
    }
}

/// A cache of every object of a kind, kept by a watch (no polling).
fn spawn_store<K>(api: Api<K>) -> Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let stream = reflector(writer, watcher(api, watcher::Config::default()))
        .default_backoff()
        .touched_objects();
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(item) = stream.next().await {
            if let Err(e) = item {
                tracing::warn!("watch: {e}");
            }
        }
    });
    store
}

async fn client(args: &Args) -> anyhow::Result<Client> {
    let config = match &args.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?
        }
        None => kube::Config::infer()
            .await
            .context("no cluster: give --kubeconfig, set KUBECONFIG, or run in a pod")?,
    };
    Ok(Client::try_from(config)?)
}

async fn shutdown() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "flex-provisioner".into())
}

/// A claim or volume that waits on something outside (its PV to bind, a class to appear) is
/// looked at again after this, besides every change the watches see.
pub const RECHECK: Duration = Duration::from_secs(60);

impl Shared {
    /// The next retry of an object that failed: 1 s doubling to 5 min, per object.
    pub fn retry_after_failure(&self, uid: &str) -> Action {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let count = failures.entry(uid.to_string()).or_insert(0);
        *count = count.saturating_add(1);
        let seconds = 1u64 << (*count - 1).min(9);
        Action::requeue(Duration::from_secs(seconds.min(300)))
    }

    /// An object that succeeded starts its backoff afresh.
    pub fn succeeded(&self, uid: &str) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        failures.remove(uid);
    }
}
