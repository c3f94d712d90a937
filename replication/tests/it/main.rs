//! The replication layer against a real PostgreSQL: openraft's own storage suite, the state
//! machine's apply, snapshots and determinism across regions, and the pinner's queue; and,
//! with no database, that the crate's files import each other without a cycle. One binary, a
//! module per area.

mod common;
mod modules;
mod pins;
mod state_machine;
mod suite;
