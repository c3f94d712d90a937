//! Everything derived from the region files in `regions/`: how a region is deployed, found and
//! checked, and how it runs on one machine. It builds without the server (no axum, sqlx or
//! openraft), so rendering a deployment never builds or links the node.
//!
//! # Layout
//! - [`regions`]: the region files (`regions/<name>.toml`) that every deployment command,
//!   `afreg up` and `afreg serve --region` read.
//! - [`sdl`]: the Akash SDL of each region (`afreg sdl render`), its registry environment
//!   derived from a [`afreg_config::Config`].
//! - [`compose`]: one region as a Compose project (`afreg compose render`), off Akash.
//! - [`dns`]: the PowerDNS GeoDNS zone (`afreg dns render`).
//! - [`discovery`], [`doctor`]: DNS as clients see it: SRV peer discovery (used by a new
//!   cluster's nodes) and `afreg doctor`.
//! - [`swarm_key`]: the key of the regions' private IPFS network.
//! - [`local`]: the recipes for a region's PostgreSQL and Kubo processes on this machine,
//!   shared by `afreg up` and the integration tests.

pub mod compose;
pub mod discovery;
pub mod dns;
pub mod doctor;
pub mod local;
pub mod regions;
pub mod sdl;
pub mod swarm_key;
