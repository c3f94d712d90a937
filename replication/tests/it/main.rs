//! The replication layer against a real PostgreSQL: openraft's own storage suite, and the state
//! machine's apply, snapshots and determinism across regions. One binary, a module per area.

mod common;
mod state_machine;
mod suite;
