//! The state machine on a real PostgreSQL: a log of every command applied, replayed after a
//! "crash", applied in different batches, and carried to another region by snapshot, must
//! always leave the same rows.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};

use afreg_replication::{Applied, Command, Entry, LogId, PgLogStore, PgStateMachine, Region};
use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::{CommittedLeaderId, EntryPayload, Membership, RaftLogReader, RaftSnapshotBuilder};
use serde_json::json;
use sqlx::PgPool;

const T0: i64 = 1_700_000_000_000;

fn region(name: &str, n: u8) -> Region {
    Region {
        name: name.into(),
        raft_addr: format!("http://10.0.0.{n}:7001"),
        api_url: format!("https://{name}.registry.example"),
        kubo_peer_id: format!("12D3KooWpeer{n}"),
        kubo_swarm_addrs: vec![format!("/ip4/10.0.0.{n}/tcp/4001"), format!("/ip4/10.0.0.{n}/udp/4001/quic-v1")],
        token_jwk: format!(r#"{{"kid":"k{n}","kty":"RSA","n":"x","e":"AQAB"}}"#),
    }
}

fn manifest(repo: &str, digest: &str, blobs: &[&str], children: &[&str], tag: Option<&str>, at: i64) -> Command {
    Command::PutManifest {
        repo: repo.into(),
        digest: digest.into(),
        media_type: if children.is_empty() {
            "application/vnd.oci.image.manifest.v1+json".into()
        } else {
            "application/vnd.oci.image.index.v1+json".into()
        },
        body: format!("{{\"manifest\":\"{digest}\",\"bytes\":\"\\u0000\"}}").into_bytes(),
        subject: None,
        artifact_type: None,
        annotations: Some(json!({"org.opencontainers.image.title": digest})),
        blob_refs: blobs.iter().map(|s| s.to_string()).collect(),
        foreign_refs: vec![],
        child_refs: children.iter().map(|s| s.to_string()).collect(),
        tag: tag.map(Into::into),
        at,
    }
}

fn blob(repo: &str, digest: &str, cid: &str, size: i64, at: i64) -> Command {
    Command::PutBlob { repo: repo.into(), digest: digest.into(), cid: cid.into(), size, origin_region: 1, at }
}

/// A log exercising every command and every refusal, with the reply each entry must get.
fn scenario() -> (Vec<Entry>, Vec<Applied>) {
    let nodes: BTreeMap<u64, Region> = [(1, region("eu", 1)), (2, region("us", 2))].into();
    let membership = Membership::new(vec![BTreeSet::from([1, 2])], nodes);
    let mut referrer = manifest("team/app", "sha256:m3", &["sha256:l1"], &[], Some("latest"), T0 + 13);
    if let Command::PutManifest { subject, artifact_type, foreign_refs, .. } = &mut referrer {
        *subject = Some("sha256:m1".into());
        *artifact_type = Some("application/vnd.example.sbom".into());
        foreign_refs.push("sha256:foreign".into());
    }
    let items: Vec<(EntryPayload<afreg_replication::TypeConfig>, Applied)> = vec![
        (EntryPayload::Blank, Applied::Ok),
        (EntryPayload::Membership(membership), Applied::Ok),
        (EntryPayload::Normal(Command::PutRegion { id: 1, region: region("eu", 1) }), Applied::Ok),
        (EntryPayload::Normal(Command::PutRegion { id: 2, region: region("us", 2) }), Applied::Ok),
        (
            EntryPayload::Normal(Command::PutUser {
                name: "alice".into(),
                password_hash: "$argon2id$v=19$x".into(),
                grants: vec![
                    ("*".into(), vec!["pull".into()]),
                    ("team/*".into(), vec!["pull".into(), "push".into()]),
                    ("*".into(), vec!["pull".into(), "delete".into()]),
                ],
                at: T0 + 4,
            }),
            Applied::Ok,
        ),
        (
            EntryPayload::Normal(blob("team/app", "sha256:l1", "bafkl1", 10, T0 + 5)),
            Applied::BlobStored { cid: "bafkl1".into() },
        ),
        (
            EntryPayload::Normal(blob("team/app", "sha256:c1", "bafkc1", 5, T0 + 6)),
            Applied::BlobStored { cid: "bafkc1".into() },
        ),
        (
            EntryPayload::Normal(manifest(
                "team/app",
                "sha256:m1",
                &["sha256:c1", "sha256:l1"],
                &[],
                Some("latest"),
                T0 + 7,
            )),
            Applied::Ok,
        ),
        (
            EntryPayload::Normal(manifest(
                "team/app",
                "sha256:m2",
                &["sha256:c1", "sha256:l2", "sha256:l2"],
                &[],
                None,
                T0 + 8,
            )),
            Applied::MissingBlobs(vec!["sha256:l2".into()]),
        ),
        (
            EntryPayload::Normal(manifest("nobody/here", "sha256:m9", &["sha256:c1"], &[], Some("x"), T0 + 8)),
            Applied::MissingBlobs(vec!["sha256:c1".into()]),
        ),
        (
            EntryPayload::Normal(Command::LinkBlob {
                repo: "team/other".into(),
                digest: "sha256:l1".into(),
                at: T0 + 9,
            }),
            Applied::Ok,
        ),
        (
            EntryPayload::Normal(Command::LinkBlob {
                repo: "team/other".into(),
                digest: "sha256:nope".into(),
                at: T0 + 10,
            }),
            Applied::NotFound,
        ),
        // Same digest uploaded again elsewhere: the first CID is kept.
        (
            EntryPayload::Normal(blob("team/other", "sha256:l1", "bafkOTHER", 10, T0 + 11)),
            Applied::BlobStored { cid: "bafkl1".into() },
        ),
        (
            EntryPayload::Normal(manifest("team/app", "sha256:i1", &[], &["sha256:m1"], Some("v1"), T0 + 12)),
            Applied::Ok,
        ),
        (EntryPayload::Normal(referrer), Applied::Ok),
        (EntryPayload::Normal(Command::DeleteTag { repo: "team/app".into(), tag: "v1".into() }), Applied::Ok),
        (EntryPayload::Normal(Command::DeleteTag { repo: "team/app".into(), tag: "v1".into() }), Applied::NotFound),
        (
            EntryPayload::Normal(manifest("team/app", "sha256:i1", &[], &["sha256:m1"], Some("v2"), T0 + 15)),
            Applied::Ok,
        ),
        (
            EntryPayload::Normal(Command::DeleteManifest { repo: "team/app".into(), digest: "sha256:i1".into() }),
            Applied::Ok,
        ),
        (
            EntryPayload::Normal(Command::UnlinkBlob { repo: "team/other".into(), digest: "sha256:l1".into() }),
            Applied::BlobUnlinked { orphaned_cid: None },
        ),
        (
            EntryPayload::Normal(blob("team/tmp", "sha256:t1", "bafkt1", 1, T0 + 17)),
            Applied::BlobStored { cid: "bafkt1".into() },
        ),
        (
            EntryPayload::Normal(Command::UnlinkBlob { repo: "team/tmp".into(), digest: "sha256:t1".into() }),
            Applied::BlobUnlinked { orphaned_cid: Some("bafkt1".into()) },
        ),
        (
            EntryPayload::Normal(Command::UnlinkBlob { repo: "team/tmp".into(), digest: "sha256:t1".into() }),
            Applied::NotFound,
        ),
        (
            EntryPayload::Normal(Command::PutRegion { id: 3, region: region("eu", 3) }),
            Applied::Invalid { reason: String::new() }, // live name taken: unique index
        ),
        // A constraint violation after a partial write: the savepoint undoes the blob row.
        (
            EntryPayload::Normal(blob("team/neg", "sha256:neg", "bafkneg", -1, T0 + 18)),
            Applied::Invalid { reason: String::new() },
        ),
        (
            EntryPayload::Normal(manifest("team/app", "sha256:m8", &[], &[], Some("far"), i64::MAX)),
            Applied::Invalid { reason: String::new() },
        ),
        (EntryPayload::Normal(Command::RemoveRegion { id: 2 }), Applied::Ok),
        (EntryPayload::Normal(Command::PutRegion { id: 2, region: region("us", 2) }), Applied::RegionRetired),
        (EntryPayload::Normal(Command::RemoveRegion { id: 9 }), Applied::NotFound),
        (
            EntryPayload::Normal(Command::PutUser {
                name: "bob".into(),
                password_hash: "h".into(),
                grants: vec![],
                at: T0 + 20,
            }),
            Applied::Ok,
        ),
        (EntryPayload::Normal(Command::RemoveUser { name: "bob".into() }), Applied::Ok),
        (EntryPayload::Normal(Command::RemoveUser { name: "bob".into() }), Applied::NotFound),
        (EntryPayload::Blank, Applied::Ok),
    ];
    let mut entries = Vec::new();
    let mut replies = Vec::new();
    for (i, (payload, reply)) in items.into_iter().enumerate() {
        entries.push(Entry { log_id: log_id(1 + i as u64 / 10, i as u64 + 1), payload });
        replies.push(reply);
    }
    (entries, replies)
}

/// Refusals that depend on a database message: "Invalid" is compared by kind only.
fn assert_replies(got: &[Applied], want: &[Applied]) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        match (g, w) {
            (Applied::Invalid { .. }, Applied::Invalid { .. }) => {}
            _ => assert_eq!(g, w, "reply to entry {}", i + 1),
        }
    }
}

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

async fn applied_id(pool: &PgPool) -> Option<LogId> {
    common::state_machine(pool).await.applied_state().await.unwrap().0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_after_the_log_is_what_each_command_says() {
    let pg = testkit::Postgres::start();
    let pool = common::fresh_db(&pg, "region_a").await;
    let (entries, want) = scenario();
    let got = common::state_machine(&pool).await.apply(entries.clone()).await.unwrap();
    assert_replies(&got, &want);

    let d = common::dump(&pool).await;
    // The tag moved from m1 to m3; the index and its v2 tag were deleted.
    assert!(d["tags"].contains("\"manifest_digest\":\"sha256:m3\""), "{}", d["tags"]);
    assert!(!d["tags"].contains("sha256:m1") && !d["tags"].contains("sha256:i1"), "{}", d["tags"]);
    // Refused manifests left nothing, not even a repository.
    assert!(!d["manifests"].contains("sha256:m2") && !d["repositories"].contains("nobody/here"));
    // Repeated grant pattern: the last one wins.
    assert!(d["user_grants"].contains("\"actions\":[\"pull\",\"delete\"]"), "{}", d["user_grants"]);
    // Times come from the entries.
    assert!(d["repositories"].contains("2023-11-14T22:13:20.005"), "{}", d["repositories"]);
    assert!(d["regions"].contains("\"removed\":true") && !d["regions"].contains("\"id\":3"), "{}", d["regions"]);
    assert!(d["blobs"].contains("bafkl1") && !d["blobs"].contains("bafkt1") && !d["blobs"].contains("bafkOTHER"));
    assert!(d["manifest_references"].contains("sha256:foreign"));
    assert!(!d["blobs"].contains("sha256:neg") && !d["repositories"].contains("team/neg"), "{}", d["blobs"]);
    assert!(!d["manifests"].contains("sha256:m8") && !d["tags"].contains("\"far\""));
    assert_eq!(applied_id(&pool).await, Some(entries.last().unwrap().log_id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reapplying_after_a_crash_changes_nothing() {
    let pg = testkit::Postgres::start();
    let (entries, want) = scenario();

    // Region A: the whole log in one batch, then a "restart" (new pool) and openraft hands
    // the same entries again, as after a crash before it recorded the apply.
    let a = common::fresh_db(&pg, "region_a").await;
    common::state_machine(&a).await.apply(entries.clone()).await.unwrap();
    let before = common::dump(&a).await;
    a.close().await;
    let a = common::connect(&pg, "region_a").await;
    let again = common::state_machine(&a).await.apply(entries.clone()).await.unwrap();
    assert!(again.iter().all(|r| *r == Applied::AlreadyApplied), "{again:?}");
    assert_eq!(common::dump(&a).await, before);

    // Region B: small overlapping batches, each restarting two entries before where the last
    // one ended; replies to new entries are as in one pass, the overlap is skipped.
    let b = common::fresh_db(&pg, "region_b").await;
    let mut start = 0;
    while start < entries.len() {
        let from = start.saturating_sub(2);
        let end = (start + 4).min(entries.len());
        let got = common::state_machine(&b).await.apply(entries[from..end].to_vec()).await.unwrap();
        assert!(got[..start - from].iter().all(|r| *r == Applied::AlreadyApplied));
        assert_replies(&got[start - from..], &want[start..end]);
        start = end;
    }
    assert_eq!(common::dump(&b).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_carries_every_table_to_another_region() {
    let pg = testkit::Postgres::start();
    let (entries, _) = scenario();
    let a = common::fresh_db(&pg, "region_a").await;
    let mut sm_a = common::state_machine(&a).await;
    sm_a.apply(entries.clone()).await.unwrap();
    let snap = sm_a.get_snapshot_builder().await.build_snapshot().await.unwrap();
    assert_eq!(snap.meta.last_log_id, Some(entries.last().unwrap().log_id));
    let data = snap.snapshot.into_inner();
    let doc: serde_json::Value = serde_json::from_slice(&data).unwrap();
    assert_eq!(doc["version"], 1);

    // Region B is empty; region C has stale rows of its own that the install must replace.
    let b = common::fresh_db(&pg, "region_b").await;
    let c = common::fresh_db(&pg, "region_c").await;
    common::state_machine(&c)
        .await
        .apply(vec![Entry {
            log_id: log_id(1, 1),
            payload: EntryPayload::Normal(blob("stale/repo", "sha256:old", "bafkold", 3, T0)),
        }])
        .await
        .unwrap();
    for pool in [&b, &c] {
        let mut sm = common::state_machine(pool).await;
        let mut rx = sm.begin_receiving_snapshot().await.unwrap();
        rx.get_mut().extend_from_slice(&data);
        sm.install_snapshot(&snap.meta, rx).await.unwrap();
        assert_eq!(common::dump(pool).await, common::dump(&a).await);
        assert_eq!(sm.applied_state().await.unwrap(), sm_a.applied_state().await.unwrap());
        let current = sm.get_current_snapshot().await.unwrap().expect("installed snapshot is current");
        assert_eq!(current.meta, snap.meta);
        // Same state, same document, byte for byte.
        let rebuilt = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
        assert_eq!(rebuilt.snapshot.into_inner(), data);
    }

    // After the install, the log continues where the snapshot ended.
    let next = Entry {
        log_id: log_id(9, entries.len() as u64 + 1),
        payload: EntryPayload::Normal(Command::DeleteTag { repo: "team/app".into(), tag: "latest".into() }),
    };
    let stale = Entry { log_id: log_id(1, 2), payload: EntryPayload::Blank };
    let got = common::state_machine(&b).await.apply(vec![stale, next]).await.unwrap();
    assert_eq!(got, vec![Applied::AlreadyApplied, Applied::Ok]);

    // A format this build does not know is refused, and nothing changes.
    let mut future = doc.clone();
    future["version"] = json!(2);
    let before = common::dump(&c).await;
    let mut sm = common::state_machine(&c).await;
    let rx = Box::new(std::io::Cursor::new(serde_json::to_vec(&future).unwrap()));
    assert!(sm.install_snapshot(&snap.meta, rx).await.is_err());
    assert_eq!(common::dump(&c).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_round_trip_through_the_log() {
    let pg = testkit::Postgres::start();
    let pool = common::fresh_db(&pg, "region_a").await;
    let (entries, _) = scenario();
    let mut log = PgLogStore::new(pool.clone(), common::fence(&pool).await);
    append(&mut log, &entries[..10]).await;
    append(&mut log, &entries[10..]).await;
    let mut reader = log.get_log_reader().await;
    let back = reader.try_get_log_entries(..).await.unwrap();
    assert_eq!(back.len(), entries.len());
    for (b, e) in back.iter().zip(&entries) {
        assert_eq!(b.log_id, e.log_id);
        assert_eq!(serde_json::to_value(&b.payload).unwrap(), serde_json::to_value(&e.payload).unwrap());
    }
    // The stored payload is plain JSON, inspectable with psql.
    let op: String = sqlx::query_scalar("SELECT payload->'Normal'->>'op' FROM raft_log WHERE log_index = 3")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(op, "put_region.v1");
}

/// Appends through `RaftLogStorage::append` and waits for its callback (a `LogFlushed`
/// cannot be built outside openraft, so this uses openraft's own helper).
async fn append(log: &mut PgLogStore, entries: &[Entry]) {
    use openraft::storage::RaftLogStorageExt;
    log.blocking_append(entries.to_vec()).await.unwrap();
}

/// A store whose seat epoch is over (another process took the region's seat) writes
/// nothing: not the log, the vote, the committed id, an applied entry or a snapshot. Each
/// attempt fails, which stops openraft, and the database is as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_whose_seat_epoch_is_over_writes_nothing() {
    use openraft::Vote;
    let pg = testkit::Postgres::start();
    let pool = common::fresh_db(&pg, "region_a").await;
    let (entries, _) = scenario();
    let old = common::fence(&pool).await;
    let mut log = PgLogStore::new(pool.clone(), old);
    let mut sm = PgStateMachine::new(pool.clone(), old);
    append(&mut log, &entries[..5]).await;
    sm.apply(entries[..5].to_vec()).await.unwrap();

    let now = afreg_replication::seat::claim_exclusively(&pool).await.unwrap();
    assert_eq!(now, old.0 + 1);
    let state = |q: &'static str| {
        let pool = pool.clone();
        async move { sqlx::query_scalar::<_, String>(q).fetch_one(&pool).await.unwrap() }
    };
    let log_before = state("SELECT count(*)::text || '/' || coalesce(max(log_index), 0)::text FROM raft_log").await;
    let raft_state_before =
        state("SELECT string_agg(key || '=' || value::text, ',' ORDER BY key) FROM raft_state").await;
    let tables_before = common::dump(&pool).await;

    use openraft::storage::RaftLogStorageExt;
    assert!(log.blocking_append(entries[5..8].to_vec()).await.is_err(), "append after the epoch moved on");
    assert!(log.save_vote(&Vote::new(9, 1)).await.is_err(), "vote after the epoch moved on");
    assert!(log.save_committed(Some(entries[4].log_id)).await.is_err(), "committed id after the epoch moved on");
    assert!(log.truncate(entries[2].log_id).await.is_err(), "truncate after the epoch moved on");
    assert!(log.purge(entries[1].log_id).await.is_err(), "purge after the epoch moved on");
    assert!(sm.apply(entries[5..8].to_vec()).await.is_err(), "apply after the epoch moved on");
    let mut builder = sm.get_snapshot_builder().await;
    assert!(builder.build_snapshot().await.is_err(), "snapshot after the epoch moved on");

    assert_eq!(
        state("SELECT count(*)::text || '/' || coalesce(max(log_index), 0)::text FROM raft_log").await,
        log_before
    );
    assert_eq!(
        state("SELECT string_agg(key || '=' || value::text, ',' ORDER BY key) FROM raft_state").await,
        raft_state_before
    );
    assert_eq!(common::dump(&pool).await, tables_before);
    let snapshots: i64 = sqlx::query_scalar("SELECT count(*) FROM raft_snapshot").fetch_one(&pool).await.unwrap();
    assert_eq!(snapshots, 0);

    // A store at the new epoch writes as before.
    let mut log = PgLogStore::new(pool.clone(), afreg_replication::Fence(now));
    append(&mut log, &entries[5..8]).await;
}

/// Notification events are written by the entry that makes them, keyed by its log index, only
/// when it changed something; the cursor and dead letters move with their own entries; and a
/// snapshot carries all three tables to a region that installs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_written_with_their_entries_and_snapshots_carry_them() {
    use afreg_replication::{DeadLetter, EventOrigin};
    let pg = testkit::Postgres::start();
    let (mut entries, _) = scenario();
    let origin = EventOrigin { region: "eu".into(), actor: "alice".into(), ..Default::default() };
    let wrap = |cmd: Command| Command::WithOrigin { origin: origin.clone(), at: T0 + 50, command: Box::new(cmd) };
    let next = entries.len() as u64 + 1;
    let tail = [
        wrap(Command::DeleteTag { repo: "team/app".into(), tag: "latest".into() }),
        // Nothing to delete: no event.
        wrap(Command::DeleteTag { repo: "team/app".into(), tag: "latest".into() }),
        Command::NotificationsDelivered {
            endpoint: "hooks".into(),
            delivered: next as i64,
            dead: vec![DeadLetter { event_id: next as i64, error: "500".into() }],
            redelivered: vec![],
            at: T0 + 51,
        },
    ];
    for (i, cmd) in tail.into_iter().enumerate() {
        entries.push(Entry { log_id: log_id(9, next + i as u64), payload: EntryPayload::Normal(cmd) });
    }
    let a = common::fresh_db(&pg, "region_a").await;
    let mut sm_a = common::state_machine(&a).await;
    let replies = sm_a.apply(entries.clone()).await.unwrap();
    assert_eq!(replies[replies.len() - 3..], [Applied::Ok, Applied::NotFound, Applied::Ok]);
    let events: Vec<(i64, String, String)> =
        sqlx::query_as("SELECT id, action, tag FROM notification_events ORDER BY id").fetch_all(&a).await.unwrap();
    assert_eq!(events, [(next as i64, "delete".to_owned(), "latest".to_owned())], "one event, keyed by its entry");
    let actor: String =
        sqlx::query_scalar("SELECT origin->>'actor' FROM notification_events").fetch_one(&a).await.unwrap();
    assert_eq!(actor, "alice");

    let snap = sm_a.get_snapshot_builder().await.build_snapshot().await.unwrap();
    let b = common::fresh_db(&pg, "region_b").await;
    let mut sm_b = common::state_machine(&b).await;
    let mut rx = sm_b.begin_receiving_snapshot().await.unwrap();
    rx.get_mut().extend_from_slice(&snap.snapshot.into_inner());
    sm_b.install_snapshot(&snap.meta, rx).await.unwrap();
    for table in ["notification_events", "notification_cursors", "notification_dead_letters"] {
        let q = format!("SELECT coalesce(json_agg(t ORDER BY t::text), '[]')::text FROM {table} t");
        let (in_a, in_b): (String, String) =
            (sqlx::query_scalar(&q).fetch_one(&a).await.unwrap(), sqlx::query_scalar(&q).fetch_one(&b).await.unwrap());
        assert_eq!(in_a, in_b, "{table} after the install");
        assert_ne!(in_a, "[]", "{table} is empty: the test proves nothing");
    }
}
