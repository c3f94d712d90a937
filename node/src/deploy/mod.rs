//! Deployment artefacts rendered from the region files in `regions/`.
//!
//! - [`dns`]: the PowerDNS GeoDNS configuration (`afreg dns render`).

pub mod dns;
