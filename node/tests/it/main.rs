//! The regional node's integration tests: one binary, a module per area. Each test starts
//! real PostgreSQL, Kubo and `afreg serve` processes (testkit), and real clients where a client
//! is the point.

mod acme;
mod auth_flow;
mod bad_input;
mod blob_files;
mod caching;
mod clients;
mod cluster;
mod conformance;
mod console;
mod dashboard;
mod data_safety;
mod dependencies_down;
mod harness;
mod hostile;
mod limits;
mod memory;
mod mirror;
mod notifications;
mod private_swarm;
mod seat;
mod storage;
mod tls;
mod usage;
