//! What is replicated: the commands in the Raft log, what applying one returns, and the
//! region record that is both a Raft node and a row of `regions`. Also the Raft [`Timings`]:
//! they are configuration, not replicated, but here (a file that imports none of the others)
//! both the cluster and the election nudge can use them without importing each other.
//!
//! # Versioning
//!
//! A [`Command`] is stored in every region's log and in snapshots for as long as the cluster
//! lives, and regions are upgraded one at a time, so its JSON form is a contract:
//!
//! - Each variant is tagged with its name and a version, `{"op": "put_manifest.v1", …}`.
//! - The fields of a published variant never change. A command that needs another field is a
//!   new variant (`put_manifest.v2`), and `apply` keeps handling the old one for as long as old
//!   logs or snapshots may hold it.
//! - Unknown fields are refused (`deny_unknown_fields`): a region too old to understand an
//!   entry fails loudly instead of applying part of it and drifting from the others.
//!
//! Times are Unix milliseconds carried in the command (`at`), so every region writes the same
//! `created_at`. The leader stamps them ([`Command::stamp`]) as it appends the entry, and
//! garbage collection takes its cut-off from the same leader's clock, so a region whose clock
//! is off cannot make its own uploads look old enough to collect (see `ARCHITECTURE.md`,
//! "Clocks").

use serde::{Deserialize, Serialize};

/// One region of the cluster: a Raft node, and where to reach its services.
///
/// Stored in the Raft membership (so in log entries and snapshots) and in `regions`. New
/// fields must come with `#[serde(default)]`, so that entries written before them still decode.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Region {
    /// Human name, e.g. `eu-west`; unique among regions not removed.
    pub name: String,
    /// Base URL of the region's internal (Raft) endpoint, e.g. `http://10.0.0.5:7001`.
    pub raft_addr: String,
    /// Public registry URL of the region, e.g. `https://eu.registry.example`.
    pub api_url: String,
    /// Peer id of the region's Kubo, so other regions can fetch blob bytes from it.
    pub kubo_peer_id: String,
    /// Swarm multiaddrs of the region's Kubo.
    pub kubo_swarm_addrs: Vec<String>,
    /// Public key (a JWK as JSON text) that verifies the tokens this region signs, so every
    /// region accepts them. Empty until the region announces itself.
    #[serde(default)]
    pub token_jwk: String,
}

impl std::fmt::Display for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name, self.raft_addr)
    }
}

/// A change to the registry metadata, as proposed to Raft and applied by every region.
///
/// Digests and names arrive here already validated by the node's OCI layer; the state machine
/// does not re-check them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", deny_unknown_fields)]
pub enum Command {
    /// Stores a manifest (byte for byte) and optionally points a tag at it. Refused with
    /// [`Applied::MissingBlobs`], writing nothing, unless every `blob_refs` digest is linked
    /// into `repo`.
    #[serde(rename = "put_manifest.v1")]
    PutManifest {
        repo: String,
        digest: String,
        media_type: String,
        #[serde(with = "base64_bytes")]
        body: Vec<u8>,
        subject: Option<String>,
        artifact_type: Option<String>,
        annotations: Option<serde_json::Value>,
        /// Blobs the manifest requires (config, layers): must be linked into `repo`.
        blob_refs: Vec<String>,
        /// Blobs it names but that need not be here (foreign layers): recorded, not checked.
        foreign_refs: Vec<String>,
        /// Child manifests (of an index).
        child_refs: Vec<String>,
        tag: Option<String>,
        /// Unix milliseconds: `created_at` of new rows, `updated_at` of the tag.
        at: i64,
    },
    /// Deletes a manifest with its tags and references.
    #[serde(rename = "delete_manifest.v1")]
    DeleteManifest { repo: String, digest: String },
    /// Deletes a tag, leaving its manifest.
    #[serde(rename = "delete_tag.v1")]
    DeleteTag { repo: String, tag: String },
    /// Records a blob uploaded in `origin_region` (if the digest is new) and links it into
    /// `repo`. A digest already known keeps its older CID; see [`Applied::BlobStored`].
    #[serde(rename = "put_blob.v1")]
    PutBlob { repo: String, digest: String, cid: String, size: i64, origin_region: u64, at: i64 },
    /// Links a known blob into `repo` (cross-repository mount).
    #[serde(rename = "link_blob.v1")]
    LinkBlob { repo: String, digest: String, at: i64 },
    /// Removes `repo`'s link to a blob; the blob row goes when no repository links it.
    #[serde(rename = "unlink_blob.v1")]
    UnlinkBlob { repo: String, digest: String },
    /// Garbage collection: removes each `(repo, digest)` link, like [`Command::UnlinkBlob`],
    /// but only where the condition still holds when the entry is applied, checked in every
    /// region alike: no manifest of `repo` references the blob, and the link was last made
    /// (uploaded or mounted) before `linked_before` (Unix milliseconds, chosen once by the
    /// proposer). A manifest or a re-upload that commits after GC listed the link keeps it.
    #[serde(rename = "collect_links.v1")]
    CollectLinks { links: Vec<(String, String)>, linked_before: i64 },
    /// Creates or replaces a user and its grants: `(pattern, actions)`, the last one winning
    /// for a repeated pattern.
    #[serde(rename = "put_user.v1")]
    PutUser { name: String, password_hash: String, grants: Vec<(String, Vec<String>)>, at: i64 },
    #[serde(rename = "remove_user.v1")]
    RemoveUser { name: String },
    /// Adds or updates a region. Refused for an id that was removed: ids are never reused.
    #[serde(rename = "put_region.v1")]
    PutRegion { id: u64, region: Region },
    /// Marks a region removed (kept as a tombstone so its id is never reused).
    #[serde(rename = "remove_region.v1")]
    RemoveRegion { id: u64 },
    /// Applies `command` (a manifest pushed or deleted, a tag deleted, a blob deleted) and, if
    /// it changed something, records its notification event in the same transaction, with
    /// the log index as its id, so every region holds the same event (see
    /// `store::events`). `origin` is the request that made it; `at`, stamped by the leader,
    /// the event's time.
    #[serde(rename = "with_origin.v1")]
    WithOrigin { origin: EventOrigin, at: i64, command: Box<Command> },
    /// The delivering region sent `endpoint` every event up to `delivered` (or dead-lettered
    /// those in `dead`), and the dead letters in `redelivered` once more: the cursor a region
    /// that delivers next resumes from.
    #[serde(rename = "notifications_delivered.v1")]
    NotificationsDelivered { endpoint: String, delivered: i64, dead: Vec<DeadLetter>, redelivered: Vec<i64>, at: i64 },
    /// `afreg notifications retry`: these dead letters of `endpoint` (all, if empty) are sent
    /// again by the delivering region.
    #[serde(rename = "notifications_retry.v1")]
    NotificationsRetry { endpoint: String, event_ids: Vec<i64> },
}

/// The request behind an event, as distribution's envelope names it (`request`, `actor`,
/// `source`), and the public URL its target is reachable at.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EventOrigin {
    pub request_id: String,
    pub addr: String,
    pub host: String,
    pub method: String,
    pub user_agent: String,
    /// The user the request was authorized as; empty when anonymous.
    pub actor: String,
    /// The region (and its process) that took the request.
    pub region: String,
    pub instance: String,
    /// That region's public URL, the base of the target's `url`.
    pub url_base: String,
}

/// An event given up on for an endpoint, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub event_id: i64,
    pub error: String,
}

impl Command {
    /// Sets the time the command carries to `now` (Unix milliseconds). The leader calls it
    /// on every command it appends, so every `at` in the log comes from a leader's clock, the
    /// clock GC's cut-off (`linked_before`) comes from too.
    pub fn stamp(&mut self, now: i64) {
        match self {
            Command::PutManifest { at, .. }
            | Command::PutBlob { at, .. }
            | Command::LinkBlob { at, .. }
            | Command::PutUser { at, .. }
            | Command::NotificationsDelivered { at, .. } => *at = now,
            Command::WithOrigin { command, at, .. } => {
                *at = now;
                command.stamp(now);
            }
            Command::DeleteManifest { .. }
            | Command::DeleteTag { .. }
            | Command::UnlinkBlob { .. }
            | Command::CollectLinks { .. }
            | Command::RemoveUser { .. }
            | Command::PutRegion { .. }
            | Command::RemoveRegion { .. }
            | Command::NotificationsRetry { .. } => {}
        }
    }
}

/// Now, in Unix milliseconds: the time [`Command::stamp`] gives and GC's cut-offs are taken from.
pub fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The result of applying one log entry, returned to the proposer by `client_write`.
///
/// Every outcome except a storage failure is a value here, decided by the replicated state
/// alone, so all regions reach the same one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applied {
    /// Applied (also the result of blank and membership entries).
    Ok,
    /// The manifest, tag, link, user or region to delete does not exist; nothing changed.
    NotFound,
    /// `PutManifest` refused: these required blobs are not linked into the repository.
    MissingBlobs(Vec<String>),
    /// `PutBlob` applied; `cid` is the one the registry keeps for the digest, which is an older
    /// one if the digest was already stored (the proposer can then unpin its own).
    BlobStored { cid: String },
    /// `UnlinkBlob` applied; `orphaned_cid` is set when no repository links the blob any more
    /// and its row was deleted, so its CID may be unpinned.
    BlobUnlinked { orphaned_cid: Option<String> },
    /// `CollectLinks` applied: how many links it removed, and the CIDs of blobs that lost their
    /// last link (their rows are gone; every region's pinner unpins them).
    Collected { unlinked: u64, orphaned_cids: Vec<String> },
    /// `PutRegion` refused: this id belonged to a removed region.
    RegionRetired,
    /// Refused, writing nothing, because the command contradicts the schema (a constraint or
    /// an out-of-range value, such as a negative size or a live region name used twice).
    Invalid { reason: String },
    /// The entry was at or below the last applied log id, so it was skipped. Openraft does not
    /// re-deliver applied entries; this answers a replay after a crash.
    AlreadyApplied,
}

/// Raft timings (their defaults are the node's `[cluster]` configuration's). openraft uses the
/// heartbeat interval as the AppendEntries timeout, so it must exceed the p99 round trip plus a
/// follower's commit, and elections wait several heartbeats.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Timings {
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
}

/// `Vec<u8>` as a base64 string (standard alphabet, padded) in JSON.
pub(crate) mod base64_bytes {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        STANDARD.decode(s.as_bytes()).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn stamp_sets_the_time_of_every_timed_command_and_only_that() {
        let mut blob = Command::PutBlob {
            repo: "r".into(),
            digest: "d".into(),
            cid: "c".into(),
            size: 1,
            origin_region: 2,
            at: 5,
        };
        blob.stamp(42);
        assert_eq!(
            blob,
            Command::PutBlob {
                repo: "r".into(),
                digest: "d".into(),
                cid: "c".into(),
                size: 1,
                origin_region: 2,
                at: 42
            }
        );
        let mut link = Command::LinkBlob { repo: "r".into(), digest: "d".into(), at: -3_600_000 };
        link.stamp(7);
        assert_eq!(link, Command::LinkBlob { repo: "r".into(), digest: "d".into(), at: 7 });
        let mut gc = Command::CollectLinks { links: vec![("r".into(), "d".into())], linked_before: 9 };
        gc.stamp(42);
        assert_eq!(
            gc,
            Command::CollectLinks { links: vec![("r".into(), "d".into())], linked_before: 9 },
            "GC's cut-off is its own"
        );
    }

    #[test]
    fn command_json_is_tagged_with_a_version_and_body_is_base64() {
        let cmd = Command::PutManifest {
            repo: "team/app".into(),
            digest: "sha256:aa".into(),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            body: b"{}".to_vec(),
            subject: None,
            artifact_type: None,
            annotations: Some(json!({"k": "v"})),
            blob_refs: vec!["sha256:bb".into()],
            foreign_refs: vec![],
            child_refs: vec![],
            tag: Some("latest".into()),
            at: 1_700_000_000_123,
        };
        let v = serde_json::to_value(&cmd).unwrap();
        assert_eq!(v["op"], "put_manifest.v1");
        assert_eq!(v["body"], "e30=");
        assert_eq!(serde_json::from_value::<Command>(v).unwrap(), cmd);
    }

    #[test]
    fn every_variant_round_trips() {
        let region = Region {
            name: "eu".into(),
            raft_addr: "http://10.0.0.1:7001".into(),
            api_url: "https://eu.example".into(),
            kubo_peer_id: "12D3KooW".into(),
            kubo_swarm_addrs: vec!["/ip4/10.0.0.1/tcp/4001".into()],
            token_jwk: String::new(),
        };
        let cmds = vec![
            Command::DeleteManifest { repo: "r".into(), digest: "d".into() },
            Command::DeleteTag { repo: "r".into(), tag: "t".into() },
            Command::PutBlob {
                repo: "r".into(),
                digest: "d".into(),
                cid: "c".into(),
                size: 3,
                origin_region: 2,
                at: 1,
            },
            Command::LinkBlob { repo: "r".into(), digest: "d".into(), at: 1 },
            Command::UnlinkBlob { repo: "r".into(), digest: "d".into() },
            Command::CollectLinks { links: vec![("r".into(), "d".into())], linked_before: 1 },
            Command::PutUser {
                name: "u".into(),
                password_hash: "h".into(),
                grants: vec![("*".into(), vec!["pull".into()])],
                at: 1,
            },
            Command::RemoveUser { name: "u".into() },
            Command::PutRegion { id: u64::MAX, region },
            Command::RemoveRegion { id: 7 },
        ];
        for cmd in cmds {
            let s = serde_json::to_string(&cmd).unwrap();
            assert!(s.contains(".v1\""), "{s}");
            assert_eq!(serde_json::from_str::<Command>(&s).unwrap(), cmd);
        }
    }

    #[test]
    fn unknown_fields_and_versions_are_refused() {
        let extra = json!({"op": "delete_tag.v1", "repo": "r", "tag": "t", "force": true});
        assert!(serde_json::from_value::<Command>(extra).is_err());
        let future = json!({"op": "delete_tag.v9", "repo": "r", "tag": "t"});
        assert!(serde_json::from_value::<Command>(future).is_err());
    }

    #[test]
    fn applied_round_trips() {
        for a in [
            Applied::Ok,
            Applied::MissingBlobs(vec!["sha256:aa".into()]),
            Applied::BlobStored { cid: "bafk".into() },
            Applied::BlobUnlinked { orphaned_cid: None },
            Applied::Invalid { reason: "x".into() },
        ] {
            let s = serde_json::to_string(&a).unwrap();
            assert_eq!(serde_json::from_str::<Applied>(&s).unwrap(), a);
        }
    }
}
