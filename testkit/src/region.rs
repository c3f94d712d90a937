//! One region for a test: its own Postgres, Kubo and node.

use std::path::Path;

use crate::{Kubo, Node, NodeConfig, Postgres};

/// One region: Postgres + Kubo + an afreg node wired to them. Fields drop in order, so the node
/// stops before its backends.
pub struct TestRegion {
    pub node: Node,
    pub kubo: Kubo,
    pub pg: Postgres,
}

impl TestRegion {
    /// Starts Postgres, Kubo and the node with the default [`NodeConfig`] (auth on, anonymous
    /// pull).
    pub fn start(bin: &Path) -> TestRegion {
        Self::start_with(bin, |_| {})
    }

    /// Like [`TestRegion::start`], letting `f` adjust the node's config (database and Kubo URLs
    /// are already filled in).
    pub fn start_with(bin: &Path, f: impl FnOnce(&mut NodeConfig)) -> TestRegion {
        let pg = Postgres::start();
        let kubo = Kubo::start();
        let mut cfg = NodeConfig::for_kubo(pg.url(), &kubo);
        f(&mut cfg);
        let node = Node::start(bin, cfg);
        TestRegion { node, kubo, pg }
    }
}
