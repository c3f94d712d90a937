//! One region's handle on the cluster: starts its Raft node, and gives the node the few
//! operations it needs: replicate a write (forwarding it to the leader), wait for a
//! linearizable read point, change the membership, and report status.
//!
//! Every operation is bounded in time. With no leader, or a leader cut off from its quorum, a
//! write fails fast with [`ClusterError::NoLeader`] or [`ClusterError::Unavailable`], which
//! the node answers as a retriable 503; it never hangs a client.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, ServerState};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use crate::network::HttpNetwork;
use crate::secret::ClusterSecret;
use crate::{Applied, Command, NodeId, PgLogStore, PgStateMachine, Raft, Region};

/// Paths of the cluster's own internal endpoints (besides the Raft RPCs).
pub(crate) mod path {
    pub const WRITE: &str = "/internal/write";
    pub const READ_INDEX: &str = "/internal/read-index";
    pub const ADMIN: &str = "/internal/admin";
}

/// Header on a request one region forwards to another; the receiver never forwards again.
pub(crate) const FORWARDED: &str = "x-afreg-forwarded";

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

/// How a region's Raft node starts.
pub struct ClusterOptions {
    /// This region's id; never reused for another region.
    pub id: NodeId,
    /// This region as the others reach it (Kubo fields may still be empty).
    pub me: Region,
    /// The voters of a brand-new cluster, this region included (`{me}` for a one-region
    /// cluster). Only the lowest id initializes; the others wait to be contacted. `None`:
    /// initialize nothing now (a region being joined, or one that discovers its peers first
    /// and then calls [`Cluster::initialize`]).
    pub bootstrap: Option<BTreeMap<NodeId, Region>>,
    pub secret: ClusterSecret,
    pub timings: Timings,
    /// How long a write may take from proposal to local apply before it fails with 503.
    pub write_timeout: Duration,
    /// Entries between snapshots.
    pub snapshot_every: u64,
}

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
}

impl ClusterError {
    /// Whether the write may still commit and apply later (a timeout after it was proposed or
    /// forwarded): its effects must be kept ready for it, not undone.
    pub fn outcome_unknown(&self) -> bool {
        matches!(self, ClusterError::Unavailable(_))
    }
}

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

/// A region's place in the Raft group, as openraft reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Leader,
    Follower,
    Candidate,
    Learner,
    Shutdown,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::Learner => "learner",
            Role::Shutdown => "shutdown",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// This region's view of the Raft group.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RaftStatus {
    pub id: NodeId,
    pub role: Role,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub last_log_index: Option<u64>,
    pub last_applied: Option<u64>,
    /// Voters and learners of the current membership.
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    /// On the leader: the last log index each region has matched.
    pub matched: Option<BTreeMap<NodeId, Option<u64>>>,
}

/// A running region's Raft node and the means to reach the others.
pub struct Cluster {
    pub raft: Raft,
    pub id: NodeId,
    secret: ClusterSecret,
    http: reqwest::Client,
    timings: Timings,
    write_timeout: Duration,
    changed: tokio::sync::watch::Receiver<u64>,
    /// One membership change at a time (openraft refuses overlapping ones).
    admin_lock: tokio::sync::Mutex<()>,
}

impl Cluster {
    /// Starts the Raft node over the region's Postgres (migrations applied) and, for a new
    /// cluster, initializes it.
    pub async fn start(pool: PgPool, opts: ClusterOptions) -> anyhow::Result<Arc<Cluster>> {
        let t = opts.timings;
        anyhow::ensure!(
            t.election_timeout_min_ms >= 3 * t.heartbeat_ms && t.election_timeout_max_ms > t.election_timeout_min_ms,
            "raft timings: the election timeout must be at least 3 x the heartbeat and max > min"
        );
        let config = openraft::Config {
            cluster_name: "afreg".into(),
            heartbeat_interval: t.heartbeat_ms,
            election_timeout_min: t.election_timeout_min_ms,
            election_timeout_max: t.election_timeout_max_ms,
            install_snapshot_timeout: (t.heartbeat_ms * 20).max(10_000),
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(opts.snapshot_every),
            max_in_snapshot_log_to_keep: 1000,
            ..Default::default()
        }
        .validate()?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(t.election_timeout_min_ms))
            .pool_idle_timeout(Duration::from_secs(60))
            .build()?;
        let sm = PgStateMachine::new(pool.clone());
        let changed = sm.subscribe();
        let network = HttpNetwork::new(http.clone(), opts.secret.clone());
        let raft = Raft::new(opts.id, Arc::new(config), network, PgLogStore::new(pool), sm).await?;

        let cluster = Arc::new(Cluster {
            raft,
            id: opts.id,
            secret: opts.secret,
            http,
            timings: t,
            write_timeout: opts.write_timeout,
            changed,
            admin_lock: tokio::sync::Mutex::new(()),
        });
        if let Some(members) = opts.bootstrap {
            cluster.initialize(members).await?;
        }
        Ok(cluster)
    }

    /// Initializes a new cluster with these voters if this region has no Raft state yet and
    /// has the lowest id among them (the others wait to be contacted). Returns whether it did.
    pub async fn initialize(&self, members: BTreeMap<NodeId, Region>) -> anyhow::Result<bool> {
        anyhow::ensure!(members.contains_key(&self.id), "the initial voters must include this region (id {})", self.id);
        if self.raft.is_initialized().await? || members.keys().next() != Some(&self.id) {
            return Ok(false);
        }
        tracing::info!(event = "raft_initialize", voters = ?members.keys().collect::<Vec<_>>(), "initializing a new cluster");
        self.raft.initialize(members).await?;
        Ok(true)
    }

    /// Sees a new value whenever applied entries changed the replicated tables.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.clone()
    }

    pub fn secret(&self) -> &ClusterSecret {
        &self.secret
    }

    /// Replicates `cmd` and returns once it is committed by a quorum and applied here, with
    /// what applying it decided. A follower forwards it to the leader.
    pub async fn write(&self, cmd: Command) -> Result<Applied, ClusterError> {
        self.write_inner(cmd, true).await.map(|(_, a)| a)
    }

    /// `may_forward` is false for a write another region forwarded here.
    pub(crate) async fn write_inner(&self, cmd: Command, may_forward: bool) -> Result<(u64, Applied), ClusterError> {
        let deadline = Instant::now() + self.write_timeout;
        let mut last = String::from("no attempt");
        loop {
            let (leader, leader_node) = self.leader()?;
            match leader {
                Some(l) if l == self.id => match tokio::time::timeout(left(deadline), self.raft.client_write(cmd.clone())).await {
                    Ok(Ok(r)) => return Ok((r.log_id.index, r.data)),
                    Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => last = "leadership moved".into(),
                    Ok(Err(e)) => return Err(ClusterError::Unavailable(format!("raft write failed: {e}"))),
                    Err(_) => {
                        return Err(ClusterError::Unavailable(format!(
                            "the write was not committed by a quorum within {:?}; it may still apply, retry",
                            self.write_timeout
                        )))
                    }
                },
                Some(l) if !may_forward => {
                    return Err(ClusterError::NotLeader(format!("region {} is not the leader (region {l} is)", self.id)))
                }
                Some(l) => {
                    let Some(node) = leader_node else { return Err(ClusterError::NoLeader(format!("leader {l} is not in the membership"))) };
                    match self.forward::<WriteReply>(&node, path::WRITE, &cmd, deadline).await {
                        Ok(r) => {
                            self.wait_applied(r.index, deadline).await?;
                            return Ok((r.index, r.applied));
                        }
                        Err(Forward::Retry(e)) => last = e,
                        Err(Forward::Fail(e)) => return Err(e),
                    }
                }
                None => self.wait_for_leader(deadline).await?,
            }
            if Instant::now() >= deadline {
                return Err(ClusterError::Unavailable(format!("write not committed within {:?}: {last}", self.write_timeout)));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until this region has applied everything committed when it was called, as
    /// confirmed by the leader with a quorum (a linearizable read point).
    pub async fn read_barrier(&self) -> Result<(), ClusterError> {
        let index = self.read_index(true).await?;
        if let Some(i) = index {
            self.wait_applied(i, Instant::now() + self.write_timeout).await?;
        }
        Ok(())
    }

    pub(crate) async fn read_index(&self, may_forward: bool) -> Result<Option<u64>, ClusterError> {
        let deadline = Instant::now() + self.write_timeout;
        loop {
            let (leader, node) = self.leader()?;
            match leader {
                Some(l) if l == self.id => {
                    return match tokio::time::timeout(left(deadline), self.raft.get_read_log_id()).await {
                        Ok(Ok((read, _))) => Ok(read.map(|l| l.index)),
                        Ok(Err(e)) => Err(ClusterError::Unavailable(format!("read index: {e}"))),
                        Err(_) => Err(ClusterError::Unavailable("the leader could not confirm its quorum in time".into())),
                    }
                }
                Some(l) if !may_forward => return Err(ClusterError::NotLeader(format!("region {l} is the leader"))),
                Some(_) => {
                    let Some(node) = node else { return Err(ClusterError::NoLeader("leader unknown".into())) };
                    match self.forward::<ReadIndexReply>(&node, path::READ_INDEX, &(), deadline).await {
                        Ok(r) => return Ok(r.index),
                        Err(Forward::Fail(e)) => return Err(e),
                        Err(Forward::Retry(_)) if Instant::now() < deadline => {}
                        Err(Forward::Retry(e)) => return Err(ClusterError::Unavailable(e)),
                    }
                }
                None => self.wait_for_leader(deadline).await?,
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs a membership change on the leader (forwarding it there).
    pub async fn admin(&self, op: AdminOp) -> Result<(), ClusterError> {
        self.admin_inner(op, true).await
    }

    pub(crate) async fn admin_inner(&self, op: AdminOp, may_forward: bool) -> Result<(), ClusterError> {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let (leader, node) = self.leader()?;
            match leader {
                Some(l) if l == self.id => return self.admin_here(op).await,
                Some(l) if !may_forward => return Err(ClusterError::NotLeader(format!("region {l} is the leader"))),
                Some(_) => {
                    let Some(node) = node else { return Err(ClusterError::NoLeader("leader unknown".into())) };
                    match self.forward::<()>(&node, path::ADMIN, &op, deadline).await {
                        Ok(()) => return Ok(()),
                        Err(Forward::Fail(e)) => return Err(e),
                        Err(Forward::Retry(_)) if Instant::now() + Duration::from_secs(10) < deadline => {}
                        Err(Forward::Retry(e)) => return Err(ClusterError::Unavailable(e)),
                    }
                }
                None => self.wait_for_leader(Instant::now() + self.write_timeout).await?,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn admin_here(&self, op: AdminOp) -> Result<(), ClusterError> {
        let _one_at_a_time = self.admin_lock.lock().await;
        let unavailable = |what: &str, e: &dyn std::fmt::Display| ClusterError::Unavailable(format!("{what}: {e}"));
        match op {
            AdminOp::AddRegion { id, region } => {
                match self.write(Command::PutRegion { id, region: region.clone() }).await? {
                    Applied::Ok => {}
                    Applied::RegionRetired => {
                        return Err(ClusterError::Refused(format!("region id {id} belonged to a removed region; ids are never reused")))
                    }
                    other => return Err(ClusterError::Refused(format!("region {} refused: {other:?}", region.name))),
                }
                tracing::info!(event = "region_add", region_id = id, region = %region.name, "adding a region as a learner");
                let added = self.raft.add_learner(id, region.clone(), false).await.map_err(|e| unavailable("add learner", &e))?;
                // Catch up: the learner must hold everything the log had when it joined (its
                // own learner entry included) before it may vote.
                let target = added.log_id.index;
                let caught_up = self
                    .raft
                    .wait(Some(Duration::from_secs(240)))
                    .metrics(
                        |m| m.replication.as_ref().and_then(|r| r.get(&id).copied().flatten()).is_some_and(|l| l.index >= target),
                        "learner caught up",
                    )
                    .await;
                if caught_up.is_err() {
                    return Err(ClusterError::Unavailable(format!(
                        "region {} joined as a learner but did not catch up within 240s; run region add again",
                        region.name
                    )));
                }
                tracing::info!(event = "region_caught_up", region_id = id, index = target, "learner caught up");
                self.raft
                    .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                    .await
                    .map_err(|e| unavailable("promote to voter", &e))?;
                tracing::info!(event = "region_voter", region_id = id, region = %region.name, "region is a voter");
                Ok(())
            }
            AdminOp::RemoveRegion { id } => {
                let m = self.raft.metrics().borrow().membership_config.clone();
                let is_voter = m.membership().voter_ids().any(|v| v == id);
                if is_voter {
                    self.raft
                        .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
                        .await
                        .map_err(|e| unavailable("remove voter", &e))?;
                } else if m.membership().get_node(&id).is_some() {
                    self.raft
                        .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                        .await
                        .map_err(|e| unavailable("remove learner", &e))?;
                }
                match self.write(Command::RemoveRegion { id }).await? {
                    Applied::Ok | Applied::NotFound => {}
                    other => return Err(ClusterError::Refused(format!("retiring region {id}: {other:?}"))),
                }
                tracing::info!(event = "region_remove", region_id = id, "region removed; its id is retired");
                Ok(())
            }
        }
    }

    /// This region's view of the group, from openraft's metrics (no IO).
    pub fn status(&self) -> RaftStatus {
        let m = self.raft.metrics().borrow().clone();
        let role = match m.state {
            ServerState::Leader => Role::Leader,
            ServerState::Follower => Role::Follower,
            ServerState::Candidate => Role::Candidate,
            ServerState::Learner => Role::Learner,
            ServerState::Shutdown => Role::Shutdown,
        };
        let membership = m.membership_config.membership();
        RaftStatus {
            id: m.id,
            role,
            term: m.current_term,
            leader: m.current_leader,
            last_log_index: m.last_log_index,
            last_applied: m.last_applied.map(|l| l.index),
            voters: membership.voter_ids().collect(),
            learners: membership.learner_ids().collect(),
            matched: m.replication.map(|r| r.into_iter().map(|(id, l)| (id, l.map(|l| l.index))).collect()),
        }
    }

    /// The leader as this region knows it, with its node. Fails when Raft has stopped.
    fn leader(&self) -> Result<(Option<NodeId>, Option<Region>), ClusterError> {
        let m = self.raft.metrics();
        let m = m.borrow();
        if let Err(e) = &m.running_state {
            return Err(ClusterError::Unavailable(format!("raft stopped: {e}")));
        }
        if m.state == ServerState::Leader {
            // A leader that has not heard from a quorum for an election timeout is likely cut
            // off; answering now beats a write that would wait for the full timeout.
            if let Some(ms) = m.millis_since_quorum_ack {
                if ms > self.timings.election_timeout_max_ms && m.membership_config.membership().voter_ids().count() > 1 {
                    return Err(ClusterError::NoLeader(format!(
                        "this region leads but has not heard from a quorum for {ms} ms"
                    )));
                }
            }
        }
        let node = m.current_leader.and_then(|l| m.membership_config.membership().get_node(&l).cloned());
        Ok((m.current_leader, node))
    }

    async fn wait_for_leader(&self, deadline: Instant) -> Result<(), ClusterError> {
        // At most one election's worth: longer means there is no quorum to elect one.
        let wait = left(deadline).min(Duration::from_millis(self.timings.election_timeout_max_ms * 2));
        self.raft
            .wait(Some(wait))
            .metrics(|m| m.current_leader.is_some(), "a leader")
            .await
            .map(|_| ())
            .map_err(|_| ClusterError::NoLeader(format!("no region has been leader for {wait:?}: a quorum of regions is unreachable")))
    }

    async fn wait_applied(&self, index: u64, deadline: Instant) -> Result<(), ClusterError> {
        self.raft
            .wait(Some(left(deadline)))
            .applied_index_at_least(Some(index), "applied here")
            .await
            .map(|_| ())
            .map_err(|_| ClusterError::Unavailable(format!("entry {index} is committed but not yet applied in this region; retry")))
    }

    async fn forward<R: serde::de::DeserializeOwned>(
        &self,
        to: &Region,
        path: &str,
        body: &impl Serialize,
        deadline: Instant,
    ) -> Result<R, Forward> {
        let url = format!("{}{path}", to.raft_addr.trim_end_matches('/'));
        let resp = self
            .http
            .post(&url)
            .bearer_auth(self.secret.expose())
            .header(FORWARDED, "1")
            .timeout(left(deadline).max(Duration::from_millis(1)))
            .json(body)
            .send()
            .await;
        let resp = match resp {
            Ok(r) => r,
            // Not sent: safe to try again (perhaps at a new leader).
            Err(e) if e.is_connect() => return Err(Forward::Retry(format!("leader {} unreachable: {e}", to.name))),
            Err(e) => {
                return Err(Forward::Fail(ClusterError::Unavailable(format!(
                    "forwarding to leader {}: {e}; the outcome is unknown, retry",
                    to.name
                ))))
            }
        };
        let status = resp.status();
        if status.is_success() {
            return resp.json::<R>().await.map_err(|e| Forward::Fail(ClusterError::Unavailable(format!("leader reply: {e}"))));
        }
        let text = resp.text().await.unwrap_or_default();
        match status.as_u16() {
            // The leader moved before the request arrived: nothing was proposed.
            409 => Err(Forward::Retry(text)),
            400 => Err(Forward::Fail(ClusterError::Refused(text))),
            _ => Err(Forward::Fail(ClusterError::Unavailable(format!("leader {} answered {status}: {text}", to.name)))),
        }
    }
}

enum Forward {
    Retry(String),
    Fail(ClusterError),
}

fn left(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}
