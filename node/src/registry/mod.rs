//! The registry's behaviour, between the HTTP layer and the adapters (`store` for Postgres,
//! `kubo` for IPFS). Services never see HTTP types except the request body stream; handlers
//! never see SQL or Kubo.

pub mod blobs;
pub mod manifests;
pub mod uploads;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use afreg_replication::{Applied, Cluster, Command};

use crate::config::Config;
use crate::kubo::Kubo;
use crate::oci::RegistryError;
use crate::store::{self, Store};

pub use uploads::SessionState;

/// Shared state of the registry services.
pub struct Registry {
    pub store: Store,
    pub kubo: Kubo,
    pub cfg: Config,
    /// Every metadata write goes through the cluster: committed by a quorum of regions, then
    /// applied to this region's Postgres by the state machine, the only writer of those tables.
    pub cluster: Arc<Cluster>,
    /// Per-session lock and running hash. A session's chunks must append in order, so one
    /// request at a time holds its lock; the hash is a cache that a restart rebuilds from Kubo.
    sessions: Mutex<HashMap<uuid::Uuid, Arc<tokio::sync::Mutex<SessionState>>>>,
}

impl Registry {
    pub fn new(store: Store, kubo: Kubo, cfg: Config, cluster: Arc<Cluster>) -> Self {
        Registry { store, kubo, cfg, cluster, sessions: Mutex::new(HashMap::new()) }
    }

    /// Replicates a metadata change; returns once it is committed and applied in this region.
    pub async fn replicate(&self, cmd: Command) -> Result<Applied, RegistryError> {
        let t = std::time::Instant::now();
        let op = command_name(&cmd);
        // The entry is applied to this region's Postgres before the client hears back; if that
        // is down, refuse now (503 naming it) rather than propose a write that cannot finish
        // here and would apply later, after the client was told it failed.
        self.store.ping().await?;
        let r = self.cluster.write(cmd).await;
        metrics::histogram!("afreg_replicated_write_seconds", "op" => op).record(t.elapsed().as_secs_f64());
        match r? {
            Applied::Invalid { reason } => Err(RegistryError::internal(format!("the cluster refused the change: {reason}"))),
            a => Ok(a),
        }
    }

    /// This region's id in the cluster.
    pub fn region_id(&self) -> u64 {
        self.cluster.id
    }

    /// Unpins `cid` unless a blob or an upload chunk still needs it. Failures only leak a pin,
    /// never lose data, so they are logged rather than returned.
    pub async fn release_cid(&self, cid: &str) {
        let r: Result<(), crate::oci::RegistryError> = async {
            let mut tx = self.store.begin().await?;
            store::lock_cid(&mut tx, cid).await?;
            if !store::cid_in_use(&mut tx, cid).await? {
                self.kubo.pin_rm(cid).await?;
            }
            tx.commit().await?;
            Ok(())
        }
        .await;
        if let Err(e) = r {
            tracing::warn!(event = "unpin_failed", ipfs_cid = %cid, error = %e, "could not release a pin");
        }
    }
}

/// The time a command carries (`at`): chosen once here, so every region writes the same.
pub fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn command_name(cmd: &Command) -> &'static str {
    match cmd {
        Command::PutManifest { .. } => "put_manifest",
        Command::DeleteManifest { .. } => "delete_manifest",
        Command::DeleteTag { .. } => "delete_tag",
        Command::PutBlob { .. } => "put_blob",
        Command::LinkBlob { .. } => "link_blob",
        Command::UnlinkBlob { .. } => "unlink_blob",
        Command::PutUser { .. } => "put_user",
        Command::RemoveUser { .. } => "remove_user",
        Command::PutRegion { .. } => "put_region",
        Command::RemoveRegion { .. } => "remove_region",
    }
}
