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
    sql("UPDATE pins SET state = 'pinned' WHERE cid = 'bafyheld'").await.unwrap();
    assert_eq!(pins::next_due(&pool).await.unwrap(), None);

    // A failed pin is due at its next attempt, and the earlier of the two wins.
    sql("INSERT INTO blobs (digest, cid, size) VALUES ('sha256:failed', 'bafyfailed', 1)").await.unwrap();
    sql("UPDATE pins SET state = 'failed', attempts = 1, next_attempt_at = now() + interval '3 seconds' WHERE cid = 'bafyfailed'").await.unwrap();
    let wait = pins::next_due(&pool).await.unwrap().expect("the failed pin is retried");
    assert!(wait <= Duration::from_secs(3) && wait > Duration::from_secs(1), "retried in {wait:?}");
}

/// The queue is stored: every blob CID gets a `wanted` row whichever path writes `blobs`, a
/// pinned one leaves the queue, a deleted one becomes an orphan (and a re-push brings it back
/// without losing its pin), and a snapshot install, which deletes and re-inserts every blob,
/// keeps what was pinned. A pass reads the queue, not every blob the region holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pin_queue_follows_the_blobs_and_a_pass_reads_only_the_queue() {
    let pg = testkit::Postgres::start();
    let pool = common::fresh_db(&pg, "region_q").await;
    let pool = &pool;
    let sql = |q: String| async move { sqlx::query(&q).execute(pool).await.unwrap() };
    let cids = |v: Vec<pins::PinJob>| v.into_iter().map(|j| j.cid).collect::<Vec<_>>();

    sql("INSERT INTO blobs (digest, cid, size, origin_region) VALUES ('sha256:a', 'bafya', 10, 2)".into()).await;
    let due = pins::due(pool, 10).await.unwrap();
    assert_eq!(cids(due.clone()), ["bafya"], "a new blob is wanted");
    assert_eq!((due[0].size, due[0].origin_region), (10, Some(2)), "the job carries the blob's size and origin");

    let mut tx = pool.begin().await.unwrap();
    pins::mark_pinned(&mut tx, "bafya", 10).await.unwrap();
    tx.commit().await.unwrap();
    assert!(pins::due(pool, 10).await.unwrap().is_empty(), "a pinned blob leaves the queue");
    assert_eq!(pins::stats(pool).await.unwrap().pinned, 1);

    sql("DELETE FROM blobs WHERE digest = 'sha256:a'".into()).await;
    assert_eq!(pins::orphans(pool, 10).await.unwrap(), ["bafya"], "a deleted blob's pin is an orphan");
    sql("INSERT INTO blobs (digest, cid, size) VALUES ('sha256:a', 'bafya', 10)".into()).await;
    assert!(pins::orphans(pool, 10).await.unwrap().is_empty(), "pushed again, it is needed again");
    assert!(pins::due(pool, 10).await.unwrap().is_empty(), "and its pin was kept");
    let mut tx = pool.begin().await.unwrap();
    pins::forget(&mut tx, "bafya").await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(pins::stats(pool).await.unwrap().pinned, 1, "a record a blob names is never forgotten");

    // A snapshot install deletes every blob and inserts them again, in one transaction.
    sql("INSERT INTO blobs (digest, cid, size) VALUES ('sha256:b', 'bafyb', 1)".into()).await;
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("DELETE FROM blobs").execute(&mut *tx).await.unwrap();
    sqlx::query("INSERT INTO blobs (digest, cid, size) VALUES ('sha256:a', 'bafya', 10), ('sha256:b', 'bafyb', 1)")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(cids(pins::due(pool, 10).await.unwrap()), ["bafyb"], "only the unpinned one is wanted after an install");
    assert!(pins::orphans(pool, 10).await.unwrap().is_empty());

    // Thousands of pinned blobs: a pass still reads only the rows still to do.
    sql(
        "INSERT INTO blobs (digest, cid, size) SELECT 'sha256:n' || i, 'bafyn' || i, 1 FROM generate_series(1, 5000) i"
            .into(),
    )
    .await;
    sql("UPDATE pins SET state = 'pinned' WHERE cid LIKE 'bafyn%'".into()).await;
    sql("ANALYZE blobs".into()).await;
    sql("ANALYZE pins".into()).await;
    let read = || async {
        sqlx::query("SELECT pg_stat_force_next_flush()").execute(pool).await.unwrap();
        let (blobs, pins): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT seq_tup_read + coalesce(idx_tup_fetch, 0) FROM pg_stat_user_tables WHERE relname = 'blobs'),
                    (SELECT seq_tup_read + coalesce(idx_tup_fetch, 0) FROM pg_stat_user_tables WHERE relname = 'pins')",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        blobs + pins
    };
    let before = read().await;
    assert_eq!(cids(pins::due(pool, 10).await.unwrap()), ["bafyb"]);
    assert!(pins::orphans(pool, 10).await.unwrap().is_empty());
    pins::next_due(pool).await.unwrap();
    sqlx::query("SELECT 1").execute(pool).await.unwrap();
    let rows = read().await - before;
    assert!(rows < 100, "a pass read {rows} rows of blobs and pins, with 5002 blobs held");
}
