//! One region's handle on the cluster: runs its Raft member while this process holds the
//! region's seat ([`crate::seat`]), and gives the node the few operations it needs: replicate a
//! write (forwarding it to the leader), wait for a linearizable read point, change the
//! membership, and report status.
//!
//! In a process that does not hold the seat (a standby), every operation goes to the holder's
//! own internal listener, which answers once the region's Postgres has applied the entry, so
//! read-your-writes holds whichever process a client's requests land on.
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

use tokio_util::sync::CancellationToken;

use crate::error::ClusterError;
use crate::forward::{Forward, Forwarder, Target};
use crate::rpc::client::HttpNetwork;
use crate::rpc::wire::{path, AdminOp, ReadIndexReply, WriteReply};
use crate::seat::{Holder, Seat, SeatState};
use crate::secret::ClusterSecret;
use crate::types::Timings;
use crate::{Applied, Command, Fence, NodeId, PgLogStore, PgStateMachine, Raft, Region};

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
    /// Entries kept in the log behind a snapshot.
    pub snapshot_keep_logs: u64,
    /// CA certificates trusted on the other regions' and processes' internal endpoints,
    /// besides the public roots.
    pub roots: Vec<reqwest::Certificate>,
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

/// A region's place in the cluster: its Raft member while this process holds the seat, and
/// the means to reach the others.
pub struct Cluster {
    pub id: NodeId,
    /// The internal endpoints' clients, which forward to the leader and the seat holder.
    forwarder: Forwarder,
    timings: Timings,
    write_timeout: Duration,
    config: Arc<openraft::Config>,
    pool: PgPool,
    bootstrap: Option<BTreeMap<NodeId, Region>>,
    seat: Arc<Seat>,
    /// The Raft member, while this process holds the seat.
    member: std::sync::RwLock<Option<Raft>>,
    /// The epoch the member runs at (`None`: no member).
    serving: tokio::sync::watch::Sender<Option<u64>>,
    changed: Arc<tokio::sync::watch::Sender<u64>>,
    /// Applied changes, counted by this process's state machine before `apply` returns.
    generation: Arc<std::sync::atomic::AtomicU64>,
    /// One membership change at a time (openraft refuses overlapping ones).
    admin_lock: tokio::sync::Mutex<()>,
    nudge: Arc<crate::election::Nudge>,
}

impl Cluster {
    /// This region's handle over its Postgres (migrations applied). No Raft member runs yet:
    /// [`Cluster::run`] starts one whenever this process holds the seat.
    pub fn new(pool: PgPool, opts: ClusterOptions, seat: Arc<Seat>) -> anyhow::Result<Arc<Cluster>> {
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
            max_in_snapshot_log_to_keep: opts.snapshot_keep_logs,
            ..Default::default()
        }
        .validate()?;
        let forwarder = Forwarder::new(opts.secret, opts.roots, t)?;
        Ok(Arc::new(Cluster {
            id: opts.id,
            forwarder,
            timings: t,
            write_timeout: opts.write_timeout,
            config: Arc::new(config),
            pool,
            bootstrap: opts.bootstrap,
            seat,
            member: Default::default(),
            serving: tokio::sync::watch::channel(None).0,
            changed: Arc::new(tokio::sync::watch::channel(0).0),
            generation: Default::default(),
            admin_lock: tokio::sync::Mutex::new(()),
            nudge: Arc::new(crate::election::Nudge::new()),
        }))
    }

    /// Takes part in the region's seat until `stop`: runs the Raft member while this process
    /// holds the seat (from the durable state in Postgres), stops it when the seat is lost,
    /// and gives the seat up if the member fails. Follows the replicated tables (applied here
    /// or by another process) for [`Cluster::subscribe`]. On `stop`, the member is shut down
    /// before the seat is released.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let seat_stop = CancellationToken::new();
        let seat = self.seat.clone();
        let seat_task = tokio::spawn({
            let stop = seat_stop.clone();
            let pool = self.pool.clone();
            async move { seat.run(stop, &pool).await }
        });
        let listen = tokio::spawn(follow_applied(self.pool.clone(), self.changed.clone(), stop.clone()));
        let mut state = self.seat.subscribe();
        loop {
            let s = state.borrow_and_update().clone();
            let serving = *self.serving.borrow();
            match s {
                SeatState::Holding { epoch } if serving != Some(epoch) => {
                    self.stop_member().await;
                    if let Err(e) = self.start_member(epoch).await {
                        tracing::error!(event = "raft_member_failed", epoch, error = %e, "could not start the Raft member; giving the seat up");
                        self.seat.release();
                    }
                }
                SeatState::Standby { .. } if serving.is_some() => self.stop_member().await,
                _ => {}
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                r = state.changed() => if r.is_err() { break },
                _ = tokio::time::sleep(Duration::from_millis(200)) => {
                    if let Some(raft) = self.raft() {
                        if let Err(e) = &raft.metrics().borrow().running_state {
                            tracing::error!(event = "raft_member_stopped", error = %e, "the Raft member stopped; giving the seat up");
                            self.seat.release();
                        }
                    }
                }
            }
        }
        self.stop_member().await;
        seat_stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), seat_task).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), listen).await;
    }

    async fn start_member(&self, epoch: u64) -> anyhow::Result<()> {
        let fence = Fence(epoch);
        let sm = PgStateMachine::new(self.pool.clone(), fence).with_generation(self.generation.clone());
        let mut applied = sm.subscribe();
        let network = HttpNetwork::new(self.forwarder.http().clone(), self.forwarder.secret().clone());
        // A member that takes over from another process must not start an election before
        // the leader has had a chance to reach it at the region's URL: that would change the
        // cluster's term for nothing. Elections start disabled, and are enabled once a leader
        // is seen, at once in a cluster of this region alone, or after two election timeouts.
        let config = Arc::new(openraft::Config { enable_elect: false, ..(*self.config).clone() });
        let raft = Raft::new(self.id, config, network, PgLogStore::new(self.pool.clone(), fence), sm).await?;
        self.nudge.member_started();
        tokio::spawn({
            let (raft, id, nudge) = (raft.clone(), self.id, self.nudge.clone());
            let grace = Duration::from_millis(self.timings.election_timeout_max_ms * 2);
            async move {
                let alone = |m: &openraft::RaftMetrics<NodeId, Region>| {
                    let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
                    voters == [id]
                };
                let _ = raft
                    .wait(Some(grace))
                    .metrics(|m| m.current_leader.is_some_and(|l| l != id) || alone(m), "a leader, or no other voter")
                    .await;
                raft.runtime_config().elect(true);
                nudge.elections_enabled();
            }
        });
        let changed = self.changed.clone();
        tokio::spawn(async move {
            while applied.changed().await.is_ok() {
                changed.send_modify(|n| *n += 1);
            }
        });
        // Another process may have applied writes since this one last served: nothing cached
        // at an earlier generation holds.
        self.generation.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        *self.member.write().unwrap() = Some(raft);
        self.serving.send_replace(Some(epoch));
        tracing::info!(
            event = "raft_member_started",
            epoch,
            region_id = self.id,
            "this process runs the region's Raft member"
        );
        if let Some(members) = self.bootstrap.clone() {
            self.initialize(members).await?;
        }
        Ok(())
    }

    async fn stop_member(&self) {
        let raft = self.member.write().unwrap().take();
        self.serving.send_replace(None);
        if let Some(raft) = raft {
            let _ = tokio::time::timeout(Duration::from_secs(5), raft.shutdown()).await;
            tracing::info!(
                event = "raft_member_stopped",
                region_id = self.id,
                "this process no longer runs the region's Raft member"
            );
        }
    }

    /// The Raft member, while this process holds the seat.
    pub fn raft(&self) -> Option<Raft> {
        self.member.read().unwrap().clone()
    }

    /// Sees the epoch of the member each time one starts or stops (`None`: no member).
    pub fn serving(&self) -> tokio::sync::watch::Receiver<Option<u64>> {
        self.serving.subscribe()
    }

    pub fn seat(&self) -> &Arc<Seat> {
        &self.seat
    }

    /// Answers a leader's AppendEntries with this region's member.
    pub(crate) async fn append(
        &self,
        raft: &Raft,
        req: openraft::raft::AppendEntriesRequest<crate::TypeConfig>,
    ) -> Result<openraft::raft::AppendEntriesResponse<NodeId>, RaftError<NodeId>> {
        let r = raft.append_entries(req).await;
        self.nudge.appended(&r);
        r
    }

    /// Answers a candidate's vote request with this region's member (see `election`).
    pub(crate) async fn vote(
        &self,
        raft: &Raft,
        req: openraft::raft::VoteRequest<NodeId>,
    ) -> Result<openraft::raft::VoteResponse<NodeId>, RaftError<NodeId>> {
        let r = raft.vote(req.clone()).await;
        self.nudge.voted(raft, self.timings, &req, &r);
        r
    }

    /// Whether this process runs the member and its lease is valid now (no IO).
    pub(crate) fn serves(&self) -> bool {
        self.member.read().unwrap().is_some() && self.seat.holds()
    }

    /// The count of changes this process has applied, while it serves as the region's member
    /// with a valid lease; `None` otherwise (a standby, or a holder whose lease ran out), when
    /// another process may be applying writes this one would not see. An in-process cache
    /// whose entry was filled at the generation returned now is exact: every write applied
    /// since (and so every write acknowledged since) changed it.
    pub fn applied_generation(&self) -> Option<u64> {
        self.serves().then(|| self.generation.load(std::sync::atomic::Ordering::SeqCst))
    }

    /// Whether the cluster has been initialized (`false` in a standby: only the holder
    /// initializes).
    pub async fn is_initialized(&self) -> bool {
        match self.raft() {
            Some(r) => r.is_initialized().await.unwrap_or(false),
            None => false,
        }
    }

    /// Initializes a new cluster with these voters if this region has no Raft state yet and
    /// has the lowest id among them (the others wait to be contacted). Returns whether it did.
    pub async fn initialize(&self, members: BTreeMap<NodeId, Region>) -> anyhow::Result<bool> {
        anyhow::ensure!(members.contains_key(&self.id), "the initial voters must include this region (id {})", self.id);
        let raft = self.raft().ok_or_else(|| anyhow::anyhow!("this process does not hold the region's Raft seat"))?;
        if raft.is_initialized().await? || members.keys().next() != Some(&self.id) {
            return Ok(false);
        }
        tracing::info!(event = "raft_initialize", voters = ?members.keys().collect::<Vec<_>>(), "initializing a new cluster");
        raft.initialize(members).await?;
        Ok(true)
    }

    /// Sees a new value whenever applied entries changed the replicated tables (applied by
    /// this process or, announced through Postgres, by the region's seat holder).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub fn secret(&self) -> &ClusterSecret {
        self.forwarder.secret()
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
            let Some(raft) = self.raft() else {
                match self.via_holder::<WriteReply>(path::WRITE, &cmd, may_forward, deadline).await? {
                    Some(r) => return Ok((r.index, r.applied)),
                    None => continue,
                }
            };
            let (leader, leader_node) = leader_of(&raft, self.timings)?;
            match leader {
                Some(l) if l == self.id => {
                    // The leader's clock, not the proposer's: see `Command::stamp`.
                    let mut cmd = cmd.clone();
                    cmd.stamp(crate::types::now_millis());
                    let write = tokio::time::timeout(left(deadline), raft.client_write(cmd));
                    let r = tokio::select! {
                        r = write => r,
                        lost = leadership_lost(&raft, l, self.timings) => {
                            return Err(ClusterError::Unavailable(format!(
                                "{lost} while the write waited for its quorum commit; it may still apply, retry"
                            )))
                        }
                    };
                    match r {
                        Ok(Ok(r)) => return Ok((r.log_id.index, r.data)),
                        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {
                            last = "leadership moved".into()
                        }
                        Ok(Err(e)) => return Err(ClusterError::Unavailable(format!("raft write failed: {e}"))),
                        Err(_) => {
                            return Err(ClusterError::Unavailable(format!(
                                "the write was not committed by a quorum within {:?}; it may still apply, retry",
                                self.write_timeout
                            )))
                        }
                    }
                }
                Some(l) if !may_forward => {
                    return Err(ClusterError::NotLeader(format!(
                        "region {} is not the leader (region {l} is)",
                        self.id
                    )))
                }
                Some(l) => {
                    let Some(node) = leader_node else {
                        return Err(ClusterError::NoLeader(format!("leader {l} is not in the membership")));
                    };
                    let to = Target::Region(&node);
                    let forwarded = self.forwarder.forward::<WriteReply>(&to, path::WRITE, &cmd, deadline);
                    let forwarded = tokio::select! {
                        r = forwarded => r,
                        lost = leadership_lost(&raft, l, self.timings) => Err(Forward::Fail(ClusterError::Unavailable(format!(
                            "the write was forwarded to region {} ({}), and then {lost}; it may still apply, retry", l, node.name
                        )))),
                    };
                    match forwarded {
                        Ok(r) => {
                            wait_applied(&raft, r.index, deadline).await?;
                            return Ok((r.index, r.applied));
                        }
                        Err(Forward::Retry(e)) => last = e,
                        Err(Forward::Fail(e)) => return Err(e),
                    }
                }
                None => self.wait_for_leader(&raft, deadline).await?,
            }
            if Instant::now() >= deadline {
                return Err(ClusterError::Unavailable(format!(
                    "write not committed within {:?}: {last}",
                    self.write_timeout
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until this region has applied everything committed when it was called, as
    /// confirmed by the leader with a quorum (a linearizable read point). One deadline, the
    /// write timeout, bounds the whole wait: finding the read index and applying up to it.
    pub async fn read_barrier(&self) -> Result<(), ClusterError> {
        let deadline = self.write_deadline();
        let raft = loop {
            match self.raft() {
                Some(raft) => break raft,
                // The holder waits until the region's Postgres has applied that far.
                None => match self.via_holder::<()>(path::READ_BARRIER, &(), true, deadline).await? {
                    Some(()) => return Ok(()),
                    None => continue,
                },
            }
        };
        let index = self.read_index(true, deadline).await?;
        if let Some(i) = index {
            wait_applied(&raft, i, deadline).await?;
        }
        Ok(())
    }

    /// A deadline one write timeout from now.
    pub(crate) fn write_deadline(&self) -> Instant {
        Instant::now() + self.write_timeout
    }

    /// The leader's read index, found by `deadline`.
    pub(crate) async fn read_index(&self, may_forward: bool, deadline: Instant) -> Result<Option<u64>, ClusterError> {
        loop {
            let raft = self.raft().ok_or_else(|| {
                ClusterError::NotSeatHolder("this process does not run the region's Raft member".into())
            })?;
            let (leader, node) = leader_of(&raft, self.timings)?;
            match leader {
                Some(l) if l == self.id => {
                    return match tokio::time::timeout(left(deadline), raft.get_read_log_id()).await {
                        Ok(Ok((read, _))) => Ok(read.map(|l| l.index)),
                        Ok(Err(e)) => Err(ClusterError::Unavailable(format!("read index: {e}"))),
                        Err(_) => {
                            Err(ClusterError::Unavailable("the leader could not confirm its quorum in time".into()))
                        }
                    }
                }
                Some(l) if !may_forward => return Err(ClusterError::NotLeader(format!("region {l} is the leader"))),
                Some(l) => {
                    let Some(node) = node else { return Err(ClusterError::NoLeader("leader unknown".into())) };
                    let to = Target::Region(&node);
                    let forwarded = self.forwarder.forward::<ReadIndexReply>(&to, path::READ_INDEX, &(), deadline);
                    let forwarded = tokio::select! {
                        r = forwarded => r,
                        lost = leadership_lost(&raft, l, self.timings) => Err(Forward::Retry(lost)),
                    };
                    match forwarded {
                        Ok(r) => return Ok(r.index),
                        Err(Forward::Fail(e)) => return Err(e),
                        Err(Forward::Retry(_)) if Instant::now() < deadline => {}
                        Err(Forward::Retry(e)) => return Err(ClusterError::Unavailable(e)),
                    }
                }
                None => self.wait_for_leader(&raft, deadline).await?,
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
            let Some(raft) = self.raft() else {
                match self.via_holder::<()>(path::ADMIN, &op, may_forward, deadline).await? {
                    Some(()) => return Ok(()),
                    None => continue,
                }
            };
            let (leader, node) = leader_of(&raft, self.timings)?;
            match leader {
                Some(l) if l == self.id => return self.admin_here(&raft, op).await,
                Some(l) if !may_forward => return Err(ClusterError::NotLeader(format!("region {l} is the leader"))),
                Some(_) => {
                    let Some(node) = node else { return Err(ClusterError::NoLeader("leader unknown".into())) };
                    match self.forwarder.forward::<()>(&Target::Region(&node), path::ADMIN, &op, deadline).await {
                        Ok(()) => return Ok(()),
                        Err(Forward::Fail(e)) => return Err(e),
                        Err(Forward::Retry(_)) if Instant::now() + Duration::from_secs(10) < deadline => {}
                        Err(Forward::Retry(e)) => return Err(ClusterError::Unavailable(e)),
                    }
                }
                None => self.wait_for_leader(&raft, Instant::now() + self.write_timeout).await?,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn admin_here(&self, raft: &Raft, op: AdminOp) -> Result<(), ClusterError> {
        let _one_at_a_time = self.admin_lock.lock().await;
        let unavailable = |what: &str, e: &dyn std::fmt::Display| ClusterError::Unavailable(format!("{what}: {e}"));
        match op {
            AdminOp::AddRegion { id, region } => {
                match self.write(Command::PutRegion { id, region: region.clone() }).await? {
                    Applied::Ok => {}
                    Applied::RegionRetired => {
                        return Err(ClusterError::Refused(format!(
                            "region id {id} belonged to a removed region; ids are never reused"
                        )))
                    }
                    other => return Err(ClusterError::Refused(format!("region {} refused: {other:?}", region.name))),
                }
                tracing::info!(event = "region_add", region_id = id, region = %region.name, "adding a region as a learner");
                let added =
                    raft.add_learner(id, region.clone(), false).await.map_err(|e| unavailable("add learner", &e))?;
                // Catch up: the learner must hold everything the log had when it joined (its
                // own learner entry included) before it may vote.
                let target = added.log_id.index;
                let caught_up = raft
                    .wait(Some(Duration::from_secs(240)))
                    .metrics(
                        |m| {
                            m.replication
                                .as_ref()
                                .and_then(|r| r.get(&id).copied().flatten())
                                .is_some_and(|l| l.index >= target)
                        },
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
                raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                    .await
                    .map_err(|e| unavailable("promote to voter", &e))?;
                tracing::info!(event = "region_voter", region_id = id, region = %region.name, "region is a voter");
                Ok(())
            }
            AdminOp::RemoveRegion { id } => {
                let m = raft.metrics().borrow().membership_config.clone();
                let is_voter = m.membership().voter_ids().any(|v| v == id);
                if is_voter {
                    raft.change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
                        .await
                        .map_err(|e| unavailable("remove voter", &e))?;
                } else if m.membership().get_node(&id).is_some() {
                    raft.change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
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

    /// This region's view of the group, from openraft's metrics (no IO); `None` in a process
    /// that does not run the member.
    pub fn status(&self) -> Option<RaftStatus> {
        let raft = self.raft()?;
        let m = raft.metrics().borrow().clone();
        let role = match m.state {
            ServerState::Leader => Role::Leader,
            ServerState::Follower => Role::Follower,
            ServerState::Candidate => Role::Candidate,
            ServerState::Learner => Role::Learner,
            ServerState::Shutdown => Role::Shutdown,
        };
        let membership = m.membership_config.membership();
        Some(RaftStatus {
            id: m.id,
            role,
            term: m.current_term,
            leader: m.current_leader,
            last_log_index: m.last_log_index,
            last_applied: m.last_applied.map(|l| l.index),
            voters: membership.voter_ids().collect(),
            learners: membership.learner_ids().collect(),
            matched: m.replication.map(|r| r.into_iter().map(|(id, l)| (id, l.map(|l| l.index))).collect()),
        })
    }

    async fn wait_for_leader(&self, raft: &Raft, deadline: Instant) -> Result<(), ClusterError> {
        // At most one election's worth: longer means there is no quorum to elect one.
        let wait = left(deadline).min(Duration::from_millis(self.timings.election_timeout_max_ms * 2));
        raft.wait(Some(wait)).metrics(|m| m.current_leader.is_some(), "a leader").await.map(|_| ()).map_err(|_| {
            ClusterError::NoLeader(format!(
                "no region has been leader for {wait:?}: a quorum of regions is unreachable"
            ))
        })
    }

    /// Sends a standby's operation to the region's seat holder, retrying while no process
    /// holds it (a takeover in progress) until `deadline`. `None`: this process now runs the
    /// member itself, so the caller does the operation here. Unless `may_forward`, the holder
    /// does it only if this region leads (GC's entries carry this leader's clock), and a
    /// holder that does not lead makes it fail with [`ClusterError::NotLeader`].
    async fn via_holder<R: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
        may_forward: bool,
        deadline: Instant,
    ) -> Result<Option<R>, ClusterError> {
        let me = &self.seat.options().process;
        let mut last;
        loop {
            if self.raft().is_some() {
                return Ok(None);
            }
            match self.seat.holder() {
                Some(h) if &h.name != me => {
                    match self.forwarder.forward::<R>(&Target::Holder(&h, may_forward), path, body, deadline).await {
                        Ok(r) => return Ok(Some(r)),
                        Err(Forward::Retry(e)) => last = e,
                        Err(Forward::Fail(e)) => return Err(e),
                    }
                }
                _ => last = String::from("no process of this region holds its Raft seat (a takeover in progress?)"),
            }
            if Instant::now() + Duration::from_millis(100) >= deadline {
                return Err(ClusterError::NoLeader(last));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The client of the other regions' internal endpoints (with the cluster's TLS roots);
    /// requests need the cluster secret ([`Cluster::secret`]) and their own timeout.
    pub fn internal_http(&self) -> &reqwest::Client {
        self.forwarder.http()
    }

    /// The client that reaches `h` (its URL's host pinned to its address, when it has one, so
    /// that TLS checks the region's certificate name). Its requests need their own timeout.
    pub fn client_for(&self, h: &Holder) -> reqwest::Client {
        self.forwarder.client_for(h)
    }
}

/// The leader as `raft` knows it, with its node. Fails when Raft has stopped, or when this
/// region leads but has not heard from a quorum for an election timeout (likely cut off:
/// answering now beats a write that would wait for the full timeout).
fn leader_of(raft: &Raft, timings: Timings) -> Result<(Option<NodeId>, Option<Region>), ClusterError> {
    let m = raft.metrics();
    let m = m.borrow();
    if let Err(e) = &m.running_state {
        return Err(ClusterError::Unavailable(format!("raft stopped: {e}")));
    }
    if let Some(ms) = quorum_silence(&m, timings) {
        return Err(ClusterError::NoLeader(format!("this region leads but has not heard from a quorum for {ms} ms")));
    }
    let node = m.current_leader.and_then(|l| m.membership_config.membership().get_node(&l).cloned());
    Ok((m.current_leader, node))
}

/// Resolves, with the reason, once `leader` can no longer be trusted to answer an operation
/// already sent to it: this region's Raft names another leader or none (an election started:
/// the leader has been silent for an election timeout), or, when `leader` is this region, it
/// has not heard from a quorum for longer than the longest election timeout (it is cut off,
/// and the majority elects another). An operation waiting on such a leader would otherwise
/// wait out the whole write timeout (10 s by default) on a leader that is paused, dead or
/// isolated; this bounds it by about one election timeout, the check-quorum bound etcd and
/// TiKV use. Polls the metrics every 50 ms (no IO).
async fn leadership_lost(raft: &Raft, leader: NodeId, timings: Timings) -> String {
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        tick.tick().await;
        let m = raft.metrics();
        let m = m.borrow();
        if let Err(e) = &m.running_state {
            return format!("raft stopped: {e}");
        }
        if m.current_leader != Some(leader) {
            return match m.current_leader {
                Some(n) => format!("leadership moved from region {leader} to region {n}"),
                None => format!("region {leader} stopped answering as leader (an election started)"),
            };
        }
        if m.id == leader && m.state != ServerState::Leader {
            return "this region is no longer the leader".into();
        }
        if let Some(ms) = quorum_silence(&m, timings) {
            return format!("this region leads but has not heard from a quorum for {ms} ms");
        }
    }
}

/// How long this region, leading a group of several voters, has not heard from a quorum, once
/// that is longer than the longest election timeout (the majority has likely elected another).
fn quorum_silence(m: &openraft::RaftMetrics<NodeId, Region>, timings: Timings) -> Option<u64> {
    let several = m.membership_config.membership().voter_ids().count() > 1;
    m.millis_since_quorum_ack
        .filter(|ms| m.state == ServerState::Leader && several && *ms > timings.election_timeout_max_ms)
}

async fn wait_applied(raft: &Raft, index: u64, deadline: Instant) -> Result<(), ClusterError> {
    raft.wait(Some(left(deadline))).applied_index_at_least(Some(index), "applied here").await.map(|_| ()).map_err(
        |_| ClusterError::Unavailable(format!("entry {index} is committed but not yet applied in this region; retry")),
    )
}

/// Bumps `changed` whenever the region's seat holder announces applied entries through
/// Postgres (`LISTEN`), so that a standby's services follow the replicated tables too.
/// Reconnects after a lost connection (and bumps once, for what it may have missed).
async fn follow_applied(pool: PgPool, changed: Arc<tokio::sync::watch::Sender<u64>>, stop: CancellationToken) {
    loop {
        let listener = async {
            let mut l = sqlx::postgres::PgListener::connect_with(&pool).await?;
            l.listen(crate::store::state_machine::APPLIED_CHANNEL).await?;
            changed.send_modify(|n| *n += 1);
            loop {
                l.recv().await?;
                changed.send_modify(|n| *n += 1);
            }
            #[allow(unreachable_code)]
            Ok::<(), sqlx::Error>(())
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            r = listener => if let Err(e) = r {
                tracing::debug!(event = "applied_listen_lost", error = %e, "lost the applied-entries listener; reconnecting");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

fn left(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}
