//! afreg's regional node: the OCI Distribution API v1.1 over PostgreSQL (metadata) and IPFS
//! Kubo (blob bytes).
//!
//! # Layout
//! - [`oci`]: the protocol with no IO: names, digests, the endpoint parser, manifest reading,
//!   error codes and the one mapping of errors to responses.
//! - [`http`]: the axum server; thin handlers over the services.
//! - [`registry`]: the services (blobs, uploads, manifests) that tie the adapters together.
//! - [`store`]: every SQL statement, against the schema in `migrations/`.
//! - [`kubo`]: the Kubo RPC client; streams blob bytes in and out.
//! - [`auth`]: the token service, token checks and users.
//! - [`cluster`]: this region in the cluster (`afreg-replication`): start-up, duties, status.
//! - [`regions`]: the region files in `regions/` that deployment, DNS and the cluster share.
//! - [`deploy`]: artefacts rendered from the region files (the PowerDNS GeoDNS zone).
//! - [`discovery`], [`doctor`]: DNS as clients see it: SRV peer discovery, `afreg doctor`.
//! - [`sdl`]: the Akash SDL of each region (`afreg sdl render`).
//! - [`config`], [`telemetry`], [`server`]: configuration, logs and metrics, start-up and shutdown.
//! - [`admin`], [`up`]: the operator's commands against a running region, and the local cluster.

pub mod admin;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod deploy;
pub mod discovery;
pub mod doctor;
pub mod hashing;
pub mod http;
pub mod kubo;
pub mod oci;
pub mod regions;
pub mod registry;
pub mod sdl;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod up;
