//! The internal endpoints over HTTP, both ends: `wire` (private) holds what the two agree
//! on (paths, headers, bodies), [`client`] is openraft's network to the other regions, and
//! [`server`] the axum router that answers it, and forwarded and relayed operations, for
//! [`crate::Cluster`]. Kept apart so that the cluster uses the client and the server uses
//! the cluster without either file importing the other.

pub mod client;
pub mod server;
pub(crate) mod wire;
