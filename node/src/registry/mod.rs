//! The registry's behaviour, between the HTTP layer and the adapters (`store` for Postgres,
//! `kubo` for IPFS). Services never see HTTP types except the request body stream; handlers
//! never see SQL or Kubo.

pub mod blobs;
pub mod manifests;
pub mod uploads;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::config::Config;
use crate::kubo::Kubo;
use crate::store::{self, Store};

pub use uploads::SessionState;

/// Shared state of the registry services.
pub struct Registry {
    pub store: Store,
    pub kubo: Kubo,
    pub cfg: Config,
    /// Per-session lock and running hash. A session's chunks must append in order, so one
    /// request at a time holds its lock; the hash is a cache that a restart rebuilds from Kubo.
    sessions: Mutex<HashMap<uuid::Uuid, Arc<tokio::sync::Mutex<SessionState>>>>,
}

impl Registry {
    pub fn new(store: Store, kubo: Kubo, cfg: Config) -> Self {
        Registry { store, kubo, cfg, sessions: Mutex::new(HashMap::new()) }
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
