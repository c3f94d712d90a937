//! The registry's behaviour, between the HTTP layer and the adapters (`store` for Postgres,
//! `kubo` for IPFS). Services never see HTTP types except the request body stream; handlers
//! never see SQL or Kubo.

pub mod blobs;
mod cache;
mod cid_locks;
pub mod manifests;
pub mod mirror;
mod spool;
pub mod uploads;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use afreg_replication::store::pins;
use afreg_replication::{Applied, Cluster, ClusterError, Command, EventOrigin};

use crate::blob_files::BlobFiles;
use crate::config::Config;
use crate::kubo::Kubo;
use crate::oci::RegistryError;
use crate::store::{self, Store};

pub use uploads::SessionState;

/// The longest a request waits for another request's work on the same CID (pinning, recording
/// a chunk, releasing). That work is local and takes milliseconds; this only bounds a fault.
const CID_LOCK_WAIT: Duration = Duration::from_secs(60);

/// A transaction holding a CID's lock (see [`Registry::lock_cid`]).
struct CidLock {
    tx: store::Tx,
    _local: tokio::sync::OwnedMutexGuard<()>,
}

/// Why a replicated write failed: before it was proposed (the local Postgres is down), or in
/// the cluster, where a timeout leaves its outcome unknown.
#[derive(Debug)]
pub enum WriteError {
    NotProposed(RegistryError),
    Cluster(ClusterError),
}

impl WriteError {
    /// Whether the write may still commit and apply later.
    pub fn outcome_unknown(&self) -> bool {
        matches!(self, WriteError::Cluster(e) if e.outcome_unknown())
    }
}

impl From<WriteError> for RegistryError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::NotProposed(e) => e,
            WriteError::Cluster(e) => e.into(),
        }
    }
}

/// Shared state of the registry services.
pub struct Registry {
    pub store: Store,
    pub kubo: Kubo,
    /// Verified copies of blobs as files, where pulls are served from (None: turned off).
    pub files: Option<Arc<BlobFiles>>,
    pub cfg: Config,
    /// Every metadata write goes through the cluster: committed by a quorum of regions, then
    /// applied to this region's Postgres by the state machine, the only writer of those tables.
    pub cluster: Arc<Cluster>,
    /// Per-session lock and running hash. A session's chunks must append in order, so one
    /// request at a time holds its lock; the hash is a cache that a restart rebuilds from Kubo.
    /// An entry lives only while its session exists.
    sessions: Mutex<HashMap<uuid::Uuid, Arc<tokio::sync::Mutex<SessionState>>>>,
    cid_locks: cid_locks::CidLocks,
    manifests: cache::ManifestCache,
    /// This process, as notification events name their source (`source.instanceID`).
    pub instance: String,
    /// What this region serves, queued for its counts and pull events.
    pub pulls: crate::pulls::Pulls,
    /// The pull-through cache's upstreams (`[mirror]`).
    pub mirror: mirror::Mirror,
}

impl Registry {
    pub fn new(store: Store, kubo: Kubo, files: Option<Arc<BlobFiles>>, cfg: Config, cluster: Arc<Cluster>) -> Self {
        let manifests = cache::ManifestCache::new(cfg.storage.manifest_cache_bytes, cluster.clone());
        let pulls = crate::pulls::Pulls::new(
            cfg.notifications.endpoints.iter().any(|e| e.pulls && !e.disabled),
            cfg.usage.count_pulls,
        );
        // The upstreams' passwords were read when the configuration was checked.
        let mirror = mirror::Mirror::new(&cfg.mirror).expect("the [mirror] upstreams' HTTP clients");
        Registry {
            store,
            kubo,
            files,
            cfg,
            cluster,
            sessions: Mutex::new(HashMap::new()),
            cid_locks: Default::default(),
            manifests,
            instance: uuid::Uuid::new_v4().to_string(),
            pulls,
            mirror,
        }
    }

    /// Replicates a metadata change; returns once it is committed and applied in this region.
    pub async fn replicate(&self, cmd: Command) -> Result<Applied, RegistryError> {
        match self.propose(cmd).await? {
            Applied::Invalid { reason } => {
                Err(RegistryError::internal(format!("the cluster refused the change: {reason}")))
            }
            a => Ok(a),
        }
    }

    /// Like [`Registry::replicate`], telling a write that was never proposed from one whose
    /// outcome is unknown. No connection, lock or transaction is held while it waits.
    pub async fn propose(&self, cmd: Command) -> Result<Applied, WriteError> {
        let t = std::time::Instant::now();
        let op = command_name(&cmd);
        // The entry is applied to this region's Postgres before the client hears back; if that
        // is down, refuse now (503 naming it) rather than propose a write that cannot finish
        // here and would apply later, after the client was told it failed.
        self.store.ping().await.map_err(WriteError::NotProposed)?;
        #[cfg(feature = "unsafe-ack-without-quorum")]
        let pretend = unsafe_ack::pretend(&cmd);
        let r = self.cluster.write(cmd).await;
        metrics::histogram!("afreg_replicated_write_seconds", "op" => op).record(t.elapsed().as_secs_f64());
        #[cfg(feature = "unsafe-ack-without-quorum")]
        if let Err(e) = &r {
            tracing::error!(event = "unsafe_ack", error = %e, "BROKEN BUILD: acknowledging a write the cluster did not commit");
            return Ok(pretend);
        }
        r.map_err(WriteError::Cluster)
    }

    /// Takes `cid`'s lock for a transaction that decides its pin and the rows that go with
    /// it: first in this process, then the advisory lock in Postgres that every process of the
    /// region takes. Both waits are bounded. Committing or dropping the transaction releases it.
    async fn lock_cid(&self, cid: &str) -> Result<CidLock, RegistryError> {
        let local = self.cid_locks.lock(cid, CID_LOCK_WAIT).await.ok_or_else(|| {
            RegistryError::unavailable("blob storage", format!("CID {cid} stayed locked for {CID_LOCK_WAIT:?}"))
        })?;
        let mut tx = self.store.begin().await?;
        store::lock_cid(&mut tx, cid).await?;
        Ok(CidLock { tx, _local: local })
    }

    /// Pins `cid` and runs `record` in the same transaction, under the CID's lock: the pin and
    /// the row that says who needs it appear together, and no unpin can come between. A pin
    /// seen under the lock stays (every unpin takes the same lock), so a CID that is already
    /// pinned is not pinned again.
    async fn pin_and_record<F, T>(&self, cid: &str, record: F) -> Result<T, RegistryError>
    where
        F: for<'c> FnOnce(&'c mut sqlx::PgConnection) -> futures::future::BoxFuture<'c, Result<T, RegistryError>>
            + Send,
        T: Send,
    {
        let mut l = self.lock_cid(cid).await?;
        self.kubo.ensure_pinned(cid).await?;
        let out = record(&mut l.tx).await?;
        l.tx.commit().await?;
        Ok(out)
    }

    /// Unpins `cid` unless a blob, an upload chunk or a blob commit in flight still needs it,
    /// and drops this region's pin record with it, so that the record never claims a pin Kubo
    /// no longer holds. Failures only leak a pin, never lose data, so they are logged rather
    /// than returned.
    pub async fn release_cid(&self, cid: &str) {
        let r = async {
            let mut l = self.lock_cid(cid).await?;
            if !store::cid_in_use(&mut l.tx, cid).await? {
                self.kubo.pin_rm(cid).await?;
                pins::forget(&mut l.tx, cid).await?;
                if let Some(files) = &self.files {
                    files.remove_cid(cid);
                }
            }
            l.tx.commit().await?;
            Ok::<(), RegistryError>(())
        }
        .await;
        if let Err(e) = r {
            tracing::warn!(event = "unpin_failed", ipfs_cid = %cid, error = %e, "could not release a pin");
        }
    }

    /// This region's id in the cluster.
    pub fn region_id(&self) -> u64 {
        self.cluster.id
    }

    /// A blob's write (`put_blob.v1`, `link_blob.v1`) with its request, so that it records a
    /// push or mount event, when this region sends notifications; without endpoints, the plain
    /// write, so that a registry without notifications pays nothing per blob for them. (Every
    /// region should carry the same endpoints; manifest writes always carry their request.)
    pub fn blob_event(&self, origin: EventOrigin, cmd: Command) -> Command {
        if self.cfg.notifications.endpoints.iter().any(|e| !e.disabled) {
            with_origin(origin, cmd)
        } else {
            cmd
        }
    }
}

/// `cmd` with the request that made it, so that applying it records its notification event.
pub fn with_origin(origin: EventOrigin, cmd: Command) -> Command {
    Command::WithOrigin { origin, at: now_millis(), command: Box::new(cmd) }
}

/// The time a command carries (`at`): set here, and stamped again by the leader as it appends
/// the entry (`Command::stamp`), so every region writes the same leader's time.
pub use afreg_replication::types::now_millis;

fn command_name(cmd: &Command) -> &'static str {
    match cmd {
        Command::WithOrigin { command, .. } => command_name(command),
        Command::NotificationsDelivered { .. } => "notifications_delivered",
        Command::NotificationsRetry { .. } => "notifications_retry",
        Command::PutManifest { .. } => "put_manifest",
        Command::DeleteManifest { .. } => "delete_manifest",
        Command::DeleteTag { .. } => "delete_tag",
        Command::PutBlob { .. } => "put_blob",
        Command::LinkBlob { .. } => "link_blob",
        Command::UnlinkBlob { .. } => "unlink_blob",
        Command::CollectLinks { .. } => "collect_links",
        Command::PutUser { .. } => "put_user",
        Command::RemoveUser { .. } => "remove_user",
        Command::PutRegion { .. } => "put_region",
        Command::RemoveRegion { .. } => "remove_region",
    }
}

/// The deliberately broken build that proves the drills' checkers can fail (issue 14): with
/// the test-only feature `unsafe-ack-without-quorum`, a write the cluster did not commit (no
/// quorum, a timeout) is answered as if it had applied. Never enable it anywhere else.
#[cfg(feature = "unsafe-ack-without-quorum")]
mod unsafe_ack {
    use afreg_replication::{Applied, Command};

    /// What the write would have answered had it applied.
    pub fn pretend(cmd: &Command) -> Applied {
        match cmd {
            Command::PutBlob { cid, .. } => Applied::BlobStored { cid: cid.clone() },
            _ => Applied::Ok,
        }
    }
}
