//! An in-process lock per CID, taken before the CID's Postgres advisory lock, so that requests
//! waiting for a busy CID (forty repositories pushing the same layer at once) wait here, in
//! memory, instead of each holding a pooled connection while Postgres makes them wait.
//!
//! Hand-written because tokio has no keyed mutex and the crates that offer one are small and
//! little maintained; this is a map of weak references to `tokio::sync::Mutex`es. The
//! advisory lock stays the authority (other processes of the region take it too).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::OwnedMutexGuard;

#[derive(Default)]
pub struct CidLocks {
    map: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
}

impl CidLocks {
    /// Waits up to `within` for `cid`'s lock; `None` if that passed.
    pub async fn lock(&self, cid: &str, within: Duration) -> Option<OwnedMutexGuard<()>> {
        let m = {
            let mut map = self.map.lock().unwrap();
            // Entries nobody holds or waits for are dropped, so the map holds only busy CIDs.
            map.retain(|_, w| w.strong_count() > 0);
            match map.get(cid).and_then(Weak::upgrade) {
                Some(m) => m,
                None => {
                    let m = Arc::new(tokio::sync::Mutex::new(()));
                    map.insert(cid.to_owned(), Arc::downgrade(&m));
                    m
                }
            }
        };
        tokio::time::timeout(within, m.lock_owned()).await.ok()
    }

    /// CIDs locked or waited for now.
    #[cfg(test)]
    fn busy(&self) -> usize {
        self.map.lock().unwrap().values().filter(|w| w.strong_count() > 0).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_holder_per_cid_and_nothing_kept_after() {
        let locks = CidLocks::default();
        let a = locks.lock("a", Duration::from_secs(1)).await.unwrap();
        assert!(locks.lock("a", Duration::from_millis(50)).await.is_none(), "a second holder of the same CID");
        let b = locks.lock("b", Duration::from_millis(50)).await;
        assert!(b.is_some(), "another CID is independent");
        drop((a, b));
        assert!(locks.lock("a", Duration::from_millis(50)).await.is_some());
        assert_eq!(locks.busy(), 0);
    }
}
