//! The chaos scenarios: one binary, a module per kind of fault, sharing [`common`]'s cluster
//! whose regions reach each other only through fault-injecting links.

mod common;
mod drill;
mod partition;
mod seat;
mod wan;
