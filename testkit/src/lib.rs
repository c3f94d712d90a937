//! Test harness for afreg: starts REAL components — PostgreSQL, an IPFS Kubo daemon and the
//! `afreg` binary — each on free loopback ports in its own temporary directory, and cleans
//! each up on `Drop` (process killed, directory removed). Postgres and Kubo are set up with the
//! same recipes as `afreg up` (`afreg_deploy::local`), and a node's configuration is an
//! `afreg_config::Config` value.
//!
//! Every function here is synchronous and may be called from plain `#[test]`s as well as from
//! inside `#[tokio::test]`s: HTTP calls run the blocking `reqwest` client on a scoped thread,
//! so they never trip tokio's "blocking inside a runtime" guard (they do block the calling
//! thread for their duration, which is what a test wants).
//!
//! # Layout
//! - [`tools`]: the installed tools and the afreg binary, ports, process statistics, random
//!   bytes, running commands.
//! - [`postgres`], [`kubo`], [`node`]: one real process each; [`region`] is the three of them.
//! - [`cluster`]: several regions in one Raft group.
//! - [`conformance`]: the OCI conformance suite and its JUnit report.
//! - [`containers`]: podman and a dockerd of the test's own.
//! - [`dns`]: PowerDNS on a loopback port, serving the zone `afreg dns render` writes or a
//!   plain zone of A records.
//! - [`api`]: a raw client of a node's API (exact statuses, headers, error bodies).
//! - [`receiver`]: webhook receivers (`receivers/`: distribution's contract, the CloudEvents
//!   SDK) for the notification tests and the benchmark.
//! - [`workload`]: workloads run under faults; [`history`]: the drills' recorded history and
//!   the checkers that rule on it (both from `afreg_drill`, plus checks that read a region's
//!   Postgres and Kubo).
//! - [`oci`]: the one OCI client and image fixture (`afreg_drill::oci`); [`stream`]: streamed
//!   pushes of blobs too big to hold (async).

pub mod api;
pub mod cluster;
pub mod conformance;
pub mod containers;
pub mod dns;
pub mod history;
pub mod kubo;
pub mod node;
pub mod oci;
pub mod postgres;
pub mod receiver;
pub mod region;
pub mod stream;
pub mod tools;
pub mod workload;

pub use afreg_config::{Action, Config};
pub use conformance::{run_conformance, ConformanceRun, Junit, JunitCase};
pub use kubo::{json_set, Kubo};
pub use node::{Node, NodeConfig};
pub use postgres::Postgres;
pub use region::TestRegion;
pub use tools::*;
