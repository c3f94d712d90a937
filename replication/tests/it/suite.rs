//! openraft's own storage test suite (`openraft::testing::Suite`) against [`PgLogStore`] and
//! [`PgStateMachine`] on a real PostgreSQL, each test on a fresh database.

use crate::common;

use std::sync::atomic::{AtomicUsize, Ordering};

use afreg_replication::{PgLogStore, PgStateMachine, StorageError, TypeConfig};
use openraft::testing::{StoreBuilder, Suite};

/// One Postgres server for the whole suite; every `build` creates a new database on it.
struct PgStoreBuilder {
    pg: testkit::Postgres,
    next: AtomicUsize,
}

impl StoreBuilder<TypeConfig, PgLogStore, PgStateMachine, ()> for PgStoreBuilder {
    async fn build(&self) -> Result<((), PgLogStore, PgStateMachine), StorageError> {
        let name = format!("suite_{}", self.next.fetch_add(1, Ordering::SeqCst));
        let pool = common::fresh_db(&self.pg, &name).await;
        let fence = common::fence(&pool).await;
        Ok(((), PgLogStore::new(pool.clone(), fence), PgStateMachine::new(pool, fence)))
    }
}

// A plain #[test]: the suite runs each case in its own tokio runtime.
#[test]
fn openraft_storage_suite() {
    let builder = PgStoreBuilder { pg: testkit::Postgres::start(), next: AtomicUsize::new(0) };
    Suite::test_all(builder).expect("openraft storage suite");
}
