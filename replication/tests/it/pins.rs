//! The pinner's queue in Postgres: when a pin that is not due now becomes due.

use std::time::Duration;

use afreg_replication::store::pins;

use crate::common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_held_by_its_upload_is_due_when_the_hold_stops_deciding() {
    let pg = testkit::Postgres::start();
    let pool = common::fresh_db(&pg, "region_a").await;
    let sql = |q: &'static str| sqlx::query(q).execute(&pool);
    assert_eq!(pins::next_due(&pool).await.unwrap(), None, "an empty region waits for nothing");

    // An upload whose commit ended unknown: its hold stays, and the record applied anyway.
    sql("INSERT INTO blob_holds (id, cid, expires_at) VALUES (gen_random_uuid(), 'bafyheld', now() + interval '1 hour')").await.unwrap();
    sql("INSERT INTO blobs (digest, cid, size) VALUES ('sha256:held', 'bafyheld', 1)").await.unwrap();
    assert!(pins::due(&pool, 10).await.unwrap().is_empty(), "the hold leaves the pin to its upload for now");
    let wait = pins::next_due(&pool).await.unwrap().expect("the held pin becomes due");
    let window = Duration::from_secs_f64(pins::HOLD_DECIDES_SECS);
    assert!(
        wait <= window && wait > window - Duration::from_secs(5),
        "due in {wait:?}, not at the end of the hold's {window:?}"
    );

    // Once this region records the pin, nothing is left to wake for.
    sql("INSERT INTO pins (cid, state, attempts, fetched_bytes) VALUES ('bafyheld', 'pinned', 0, 0)").await.unwrap();
    assert_eq!(pins::next_due(&pool).await.unwrap(), None);

    // A failed pin is due at its next attempt, and the earlier of the two wins.
    sql("INSERT INTO blobs (digest, cid, size) VALUES ('sha256:failed', 'bafyfailed', 1)").await.unwrap();
    sql("INSERT INTO pins (cid, state, attempts, next_attempt_at) VALUES ('bafyfailed', 'failed', 1, now() + interval '3 seconds')").await.unwrap();
    let wait = pins::next_due(&pool).await.unwrap().expect("the failed pin is retried");
    assert!(wait <= Duration::from_secs(3) && wait > Duration::from_secs(1), "retried in {wait:?}");
}
