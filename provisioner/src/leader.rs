//! One active replica: the holder of a `coordination.k8s.io/v1` Lease (kube-lease-manager,
//! renewed in the background). A follower waits until the Lease is free or expired; a leader
//! that cannot renew stops acting at once.

use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct Leadership {
    state: watch::Receiver<bool>,
    task: JoinHandle<kube_lease_manager::Result<LeaseManager>>,
}

impl Leadership {
    pub async fn start(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        lease_seconds: u64,
    ) -> anyhow::Result<Leadership> {
        let lease_seconds = lease_seconds.max(2);
        let manager = LeaseManagerBuilder::new(client, name)
            .with_namespace(namespace)
            .with_identity(identity)
            .with_duration(lease_seconds)
            // Renewed this long before it expires.
            .with_grace((lease_seconds / 3).max(1))
            .build()
            .await
            .map_err(|e| anyhow::anyhow!("cannot use the Lease {namespace}/{name}: {e}"))?;
        let (state, task) = manager.watch().await;
        Ok(Leadership { state, task })
    }

    /// Returns once this replica holds the Lease.
    pub async fn acquired(&mut self) -> anyhow::Result<()> {
        loop {
            if *self.state.borrow_and_update() {
                return Ok(());
            }
            if self.state.changed().await.is_err() {
                anyhow::bail!("the Lease manager stopped");
            }
        }
    }

    /// Returns when this replica no longer holds the Lease (or cannot tell).
    pub fn lost(&self) -> impl std::future::Future<Output = anyhow::Result<()>> + use<> {
        let mut state = self.state.clone();
        async move {
            loop {
                if state.changed().await.is_err() {
                    anyhow::bail!("the Lease manager stopped");
                }
                if !*state.borrow_and_update() {
                    return Ok(());
                }
            }
        }
    }

    /// Gives the Lease up, so the other replica takes over without waiting for it to expire.
    pub async fn release(self) {
        drop(self.state);
        let _ = self.task.await;
    }
}
