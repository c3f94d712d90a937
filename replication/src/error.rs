//! [`ClusterError`], why a cluster operation did not happen. A file of its own because three
//! others need it and must not need each other for it: the cluster returns it, the forwarding
//! code makes it from what the leader or the seat holder answered, and the internal server
//! turns it into the status code the forwarding code reads back.

/// Why a cluster operation did not happen. Every variant but `Refused` is retriable.
/// `Unavailable` may follow a write that was proposed, so its outcome is unknown; the others
/// mean nothing was proposed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("no leader: {0}")]
    NoLeader(String),
    /// A forwarded request reached a region that is no longer the leader; nothing was done.
    #[error("not the leader: {0}")]
    NotLeader(String),
    #[error("{0}")]
    Unavailable(String),
    /// The operation is wrong, not the cluster: e.g. a region id that was retired.
    #[error("{0}")]
    Refused(String),
    /// A relayed request reached a process that no longer holds the region's seat; nothing
    /// was done.
    #[error("{0}")]
    NotSeatHolder(String),
}

impl ClusterError {
    /// Whether the write may still commit and apply later (a timeout after it was proposed or
    /// forwarded): its effects must be kept ready for it, not undone.
    pub fn outcome_unknown(&self) -> bool {
        matches!(self, ClusterError::Unavailable(_))
    }
}
