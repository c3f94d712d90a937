//! afreg's regional node, as a library: the OCI Distribution API v1.1 over PostgreSQL
//! (metadata) and IPFS Kubo (blob bytes), and this region's part in the cluster. The `afreg`
//! binary (`cli/`) runs it with `afreg serve`.
//!
//! # Layout
//! - [`oci`]: the protocol with no IO: names, digests, the endpoint parser, manifest reading,
//!   error codes and the one mapping of errors to responses.
//! - [`http`]: the axum server; thin handlers over the services.
//! - [`registry`]: the services (blobs, uploads, manifests, the pull-through cache's mirror)
//!   that tie the adapters together.
//! - [`store`]: the node's SQL, against the schema in `migrations/`.
//! - [`kubo`]: the Kubo RPC client; streams blob bytes in and out.
//! - [`upstream`]: the pull-through cache's client of an upstream registry (its challenge and
//!   token flow).
//! - [`blob_files`]: verified copies of blobs as plain files, where pulls are served from.
//! - [`unixfs`]: a chunked upload's UnixFS DAG, built over leaves Kubo already stores.
//! - [`client`]: who a request comes from, as every per-client limit keys it.
//! - [`hashing`]: the running digest (sha256 or sha512) of bytes as they stream through.
//! - [`auth`]: the token service, token checks and users.
//! - [`console`]: the web console at `/ui/`, server-rendered pages for the registry's users.
//! - [`notifications`]: events of pushes and deletes sent to webhooks, from the leader's region,
//!   and of pulls, from the region that served them.
//! - [`pulls`]: what this region serves, counted off the pull's path (usage, pull events).
//! - [`usage`]: `GET /v2/_afreg/usage`, every region's figures put together.
//! - [`mirror_eviction`]: the pull-through cache kept within each upstream's `cache_ttl` and
//!   `max_bytes`, by the leader's region.
//! - [`replica`]: this region as a member of the cluster (`afreg-replication`): start-up,
//!   duties, status.
//! - [`config`] (the `afreg-config` crate), [`telemetry`], [`server`]: configuration, logs and
//!   metrics, start-up and shutdown.

pub use afreg_config as config;

pub mod auth;
pub mod blob_files;
pub mod client;
pub mod console;
pub mod hashing;
pub mod http;
pub mod kubo;
pub mod mirror_eviction;
pub mod notifications;
pub mod oci;
pub mod pulls;
pub mod registry;
pub mod replica;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod unixfs;
pub mod upstream;
pub mod usage;

/// The HTTP layer's private parsers, re-exported for the fuzz targets in `fuzz/` only: not an
/// API, and not stable.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::http::handlers::Query;
    pub use crate::http::token::TokenForm;
}
