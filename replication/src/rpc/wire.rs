//! What goes over the wire between regions and between a region's processes: the paths of the
//! internal endpoints, the headers that stop a request from being forwarded or relayed twice,
//! and the bodies of the replies. Both sides ([`super::client`], [`super::server`]) and the
//! cluster that forwards to them import this file, and it imports none of them.

use serde::{Deserialize, Serialize};

use crate::types::{Applied, Region};
use crate::NodeId;

/// Paths of the internal endpoints: the Raft RPCs, and the cluster's own.
pub(crate) mod path {
    pub const APPEND: &str = "/internal/raft/append";
    pub const VOTE: &str = "/internal/raft/vote";
    pub const SNAPSHOT: &str = "/internal/raft/snapshot";

    pub const WRITE: &str = "/internal/write";
    pub const READ_INDEX: &str = "/internal/read-index";
    pub const ADMIN: &str = "/internal/admin";
    pub const READ_BARRIER: &str = "/internal/read-barrier";
}

/// Header on a request one process of a region relays to its seat holder; the receiver never
/// relays again (it answers 421 if it no longer holds the seat).
pub(crate) const RELAYED: &str = "x-afreg-relayed";

/// Header on a request one region forwards to another; the receiver never forwards again.
pub(crate) const FORWARDED: &str = "x-afreg-forwarded";

/// The largest internal request body (a snapshot, a relayed one).
pub(crate) const MAX_BODY: usize = 512 * 1024 * 1024;

/// What a leader answers a forwarded write.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct WriteReply {
    pub index: u64,
    pub applied: Applied,
}

/// What a leader answers a read-index request.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ReadIndexReply {
    pub index: Option<u64>,
}

/// A membership change, run on the leader.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum AdminOp {
    /// Records the region, joins it as a learner, waits for it to catch up, makes it a voter.
    AddRegion { id: NodeId, region: Region },
    /// Takes the region out of the voters and the membership, then retires its id.
    RemoveRegion { id: NodeId },
}
