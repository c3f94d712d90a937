//! afreg's replication layer: what the regions agree on, and where each region keeps it.
//!
//! Every region runs one Raft node, in whichever of its processes holds the region's seat. The replicated state is the registry's metadata (which
//! repositories, blobs, manifests, tags, users and regions exist); blob bytes never go through
//! Raft, only their digest → CID mapping does. Each region keeps both the Raft log and the
//! state machine in its own PostgreSQL, in the tables of `migrations/`.
//!
//! # Layout
//!
//! - [`TypeConfig`] (this file): the openraft type configuration, `declare_raft_types!`.
//! - [`types`]: [`Command`], the versioned entries of the log; [`Applied`], the result of
//!   applying one; [`Region`], the node type of the membership; [`Timings`], the Raft timings.
//! - [`store::log`]: [`PgLogStore`], the Raft log, vote and committed id (`raft_log`,
//!   `raft_state`), durable before openraft hears it was written.
//! - [`store::state_machine`]: [`PgStateMachine`], which applies committed commands to the
//!   metadata tables, and its snapshots (`raft_snapshot`).
//! - `store::apply` (private): one function per [`Command`], the only SQL that writes the
//!   replicated tables.
//! - `store::snapshot` (private): the versioned snapshot format, dumped from and restored to
//!   the replicated tables.
//!
//! - [`rpc`]: the internal endpoints over HTTP, behind the [`secret`] (cluster secret).
//!   `rpc::wire` (private): their paths, headers and reply bodies, and [`AdminOp`];
//!   [`rpc::client`]: openraft's RPCs as JSON over HTTP to the other regions;
//!   [`rpc::server`]: the router that answers them, plus forwarded writes, read index and
//!   membership, and relays what reaches a standby process to the region's seat holder.
//! - [`cluster`]: [`Cluster`], one region's handle: start, replicate a write (forwarding to the
//!   leader), linearizable read point, membership changes, status.
//! - `forward` (private): the HTTP clients that send an operation to the leader's region or
//!   to the region's seat holder, and what their answers mean; `error` (private):
//!   [`ClusterError`], shared by the cluster, the forwarding and the server.
//! - `election` (private): campaigns at once when a lagging candidate would otherwise cost
//!   the cluster a wasted term after the leader is lost.
//! - [`seat`]: which of the region's processes runs its Raft member (an advisory lock, a
//!   lease and an epoch in Postgres), and the [`Fence`] every storage write checks.
//! - [`pinner`]: keeps every blob CID pinned in the region's Kubo; [`duties`]: announcing the
//!   region in the region list, and garbage collection on the leader.
//! - [`store::pins`], [`store::regions`], [`store::gc`]: the SQL of the pinner (and the
//!   per-CID lock), of the region list, and of GC's listing.
//!
//! The files never import each other in a circle (`tests/it/modules.rs` checks it):
//! `rpc::server` uses `cluster`, which uses `forward`, `rpc::client` and `election`
//! (`rpc::client` uses `election` too), and below them the leaves, `rpc::wire`, `error`,
//! `seat`, `secret`, `types` and `store`, import none of those.
//!
//! # Invariants
//!
//! - Nothing but [`PgStateMachine`] writes the replicated tables (`repositories`, `blobs`,
//!   `repository_blobs`, `manifests`, `manifest_references`, `tags`, `users`, `user_grants`,
//!   `regions`) once a region runs replicated.
//! - Applying is deterministic: it uses only values carried in the entry (times included,
//!   see [`Command`]) and the state left by earlier entries, so every region ends up with the
//!   same rows. `repositories.id` is the one local value; commands name repositories.
//! - Applying is idempotent: the last applied log id is written in the same transaction as
//!   the change, and entries at or below it are skipped.

pub mod cluster;
pub mod duties;
mod election;
mod error;
mod forward;
pub mod pinner;
pub mod rpc;
pub mod seat;
pub mod secret;
pub mod store;
pub mod types;

pub use cluster::{Cluster, ClusterOptions, RaftStatus, Role};
pub use error::ClusterError;
pub use rpc::wire::AdminOp;
pub use seat::{Seat, SeatOptions, SeatState};
pub use secret::ClusterSecret;
pub use store::{Fence, PgLogStore, PgSnapshotBuilder, PgStateMachine};
pub use types::{Applied, Command, DeadLetter, EventOrigin, Region, Timings};

/// A region's Raft node id. Ids are never reused: a removed region stays in `regions` as a
/// tombstone.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// The openraft type configuration of an afreg cluster.
    pub TypeConfig:
        D = Command,
        R = Applied,
        NodeId = NodeId,
        Node = Region,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = std::io::Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A Raft node of an afreg cluster.
pub type Raft = openraft::Raft<TypeConfig>;
/// A log entry of an afreg cluster.
pub type Entry = openraft::Entry<TypeConfig>;
/// The error every storage method returns.
pub type StorageError = openraft::StorageError<NodeId>;
/// A log id of an afreg cluster.
pub type LogId = openraft::LogId<NodeId>;
/// The membership config as the state machine stores it.
pub type StoredMembership = openraft::StoredMembership<NodeId, Region>;
