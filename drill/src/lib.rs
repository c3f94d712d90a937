//! Failover drills, the way Jepsen and etcd's robustness tests judge a replicated store: a
//! concurrent workload of every kind of operation on every region ([`workload`]), a fault per
//! round against whichever region leads ([`run::Target`]), and checkers that read the whole
//! recorded history once the fault has healed ([`history`]). `afreg drill` runs them against a
//! running cluster; the chaos scenarios run them against regions behind fault-injecting
//! proxies. It is a library of its own so that the operator's command and the tests share
//! one workload, one set of checkers and one report, and so that the command does not depend
//! on the test harness.
//!
//! - [`oci`]: the plain-HTTP OCI client and image fixture (also the tests' client);
//! - [`workload`]: the mixed workload, recording every operation;
//! - [`history`]: the history and its checkers;
//! - [`run`]: one drill from start to report.

pub mod history;
pub mod oci;
pub mod run;
pub mod workload;
