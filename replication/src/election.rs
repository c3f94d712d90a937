//! Starts an election at once where openraft 0.9 would lose one to a lagging follower.
//!
//! When the leader is lost, the first follower whose timer fires asks for votes. If that
//! follower's log is shorter (it had not yet received the leader's last entries, common under a
//! steady write load), the up-to-date follower refuses it, but the lagging candidate has
//! already voted for itself in the new term; the up-to-date follower's own campaign in that term
//! is then refused in turn, and it waits a whole election timeout before trying a term higher.
//! Measured in the failover drills, that costs ~2 s on top of the usual lease + timeout, and
//! pushes failover past its 6 s bound. etcd avoids the wasted term with pre-vote, which openraft
//! 0.9 lacks.
//!
//! So when this region refuses a vote because the candidate's log is behind its own, and it has
//! not heard from a leader for the leader lease (`election_timeout_max`: exactly when openraft
//! itself would have granted a vote to an up-to-date candidate), it campaigns now, and once more
//! a term higher if that first campaign meets the candidate's self-vote. Starting an election is
//! always safe in Raft; this only makes the region that would win anyway start sooner. A member
//! still in its start-up grace (elections disabled, see `Cluster::start_member`) does not.
//!
//! The lagging candidate's side has a bug to work around. When a vote comes back refused with
//! a longer log than the candidate's, openraft 0.9 sets a flag that adds `smaller_log_timeout`
//! (2 × `election_timeout_max`, 4.6 s by default) to every later election timeout of that
//! region, and clears it only when the region next campaigns on its own timer, which the flag
//! itself delays past the next leader's election. So the flag outlives the catching up it was
//! for: once both followers of three had once campaigned behind, losing the leader cost
//! 8.4–9.2 s with no election at all (a leader paused for 8 s resumed as leader in its term).
//! openraft fixed it after 0.9 (databendlabs/openraft#2087: the backoff holds only while the
//! log is still behind). Here the nudge above already gives the longer log its chance, at
//! once, so the backoff is not needed: [`withhold_longer_log`] hands openraft a refused vote
//! with the candidate's own last log id in place of the longer one, which openraft uses for
//! nothing but that flag (0.9.25: `Engine::handle_vote_resp`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::raft::{AppendEntriesResponse, VoteRequest, VoteResponse};
use openraft::MessageSummary;
use openraft::ServerState;

use crate::types::Timings;
use crate::{NodeId, Raft};

/// What a region's member needs to decide whether to campaign at once.
pub(crate) struct Nudge {
    last_heard: Mutex<Instant>,
    may_elect: AtomicBool,
    running: AtomicBool,
}

impl Nudge {
    pub(crate) fn new() -> Nudge {
        Nudge {
            last_heard: Mutex::new(Instant::now()),
            may_elect: AtomicBool::new(false),
            running: AtomicBool::new(false),
        }
    }

    /// A member starts: elections stay off until [`Nudge::elections_enabled`].
    pub(crate) fn member_started(&self) {
        self.may_elect.store(false, Ordering::SeqCst);
        *self.last_heard.lock().unwrap() = Instant::now();
    }

    pub(crate) fn elections_enabled(&self) {
        self.may_elect.store(true, Ordering::SeqCst);
    }

    /// An AppendEntries answered: unless it came from a stale leader, a leader was heard.
    pub(crate) fn appended<E>(&self, r: &Result<AppendEntriesResponse<NodeId>, E>) {
        if matches!(r, Ok(r) if !matches!(r, AppendEntriesResponse::HigherVote(_))) {
            *self.last_heard.lock().unwrap() = Instant::now();
        }
    }

    /// After this region answered `req` with `resp`: campaigns at once (on a task of its own)
    /// when the refusal was for a shorter log and no leader has been heard for the lease.
    pub(crate) fn voted<E>(
        self: &Arc<Self>,
        raft: &Raft,
        timings: Timings,
        req: &VoteRequest<NodeId>,
        resp: &Result<VoteResponse<NodeId>, E>,
    ) {
        let Ok(resp) = resp else { return };
        let lease = Duration::from_millis(timings.election_timeout_max_ms);
        let behind = req.last_log_id < resp.last_log_id;
        if resp.vote_granted
            || !behind
            || !self.may_elect.load(Ordering::SeqCst)
            || self.last_heard.lock().unwrap().elapsed() <= lease
        {
            return;
        }
        if self.running.swap(true, Ordering::SeqCst) {
            return;
        }
        let (raft, me) = (raft.clone(), self.clone());
        tokio::spawn(async move {
            campaign(&raft, timings).await;
            me.running.store(false, Ordering::SeqCst);
        });
    }
}

/// Up to two campaigns: the second, a term higher, if the first ended without a leader.
async fn campaign(raft: &Raft, timings: Timings) {
    // One vote round trip, at most: the AppendEntries/vote RPCs time out at a heartbeat.
    let round = Duration::from_millis(timings.heartbeat_ms * 2);
    for attempt in 0..2 {
        let term = raft.metrics().borrow().current_term;
        if raft.metrics().borrow().state == ServerState::Leader || raft.trigger().elect().await.is_err() {
            return;
        }
        tracing::info!(
            event = "raft_campaign",
            attempt,
            term,
            "a candidate with a shorter log asked for this region's vote after the leader's lease: campaigning now"
        );
        let settled = raft
            .wait(Some(round))
            .metrics(|m| m.current_term > term && m.state != ServerState::Candidate, "the campaign settled")
            .await;
        let m = raft.metrics().borrow().clone();
        if settled.is_err() || m.state == ServerState::Leader || m.current_leader.is_some() {
            return;
        }
    }
}

/// A vote this region asked `from` for, refused with a longer log than the one it campaigned
/// with: logs `raft_campaign_behind` and reports the candidate's own last log id to openraft
/// instead (see the module doc). A granted vote, or one refused for any other log, is left as
/// it came.
pub(crate) fn withhold_longer_log(from: NodeId, req: &VoteRequest<NodeId>, resp: &mut VoteResponse<NodeId>) {
    if resp.vote_granted || resp.last_log_id <= req.last_log_id {
        return;
    }
    tracing::info!(
        event = "raft_campaign_behind",
        from,
        term = req.vote.leader_id().term,
        ours = %req.last_log_id.summary(),
        theirs = %resp.last_log_id.summary(),
        "this region campaigned with a shorter log than a region that refused it"
    );
    resp.last_log_id = req.last_log_id;
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, LogId, Vote};

    use super::*;

    fn log_id(term: u64, index: u64) -> Option<LogId<NodeId>> {
        Some(LogId::new(CommittedLeaderId::new(term, 0), index))
    }

    fn exchange(ours: Option<LogId<NodeId>>, theirs: Option<LogId<NodeId>>, granted: bool) -> VoteResponse<NodeId> {
        let req = VoteRequest::new(Vote::new(9, 2), ours);
        let mut resp = VoteResponse::new(Vote::new(9, 1), theirs, granted);
        withhold_longer_log(1, &req, &mut resp);
        resp
    }

    #[test]
    fn a_vote_refused_for_a_longer_log_reports_the_candidates_own() {
        let resp = exchange(log_id(8, 40), log_id(8, 45), false);
        assert_eq!(resp.last_log_id, log_id(8, 40));
        assert!(!resp.vote_granted);
        assert_eq!(resp.vote, Vote::new(9, 1), "the refusing region's vote is what it said");
    }

    #[test]
    fn other_answers_are_left_as_they_came() {
        assert_eq!(exchange(log_id(8, 40), log_id(8, 45), true).last_log_id, log_id(8, 45), "granted");
        assert_eq!(exchange(log_id(8, 40), log_id(8, 40), false).last_log_id, log_id(8, 40), "same log");
        assert_eq!(exchange(log_id(8, 40), log_id(7, 30), false).last_log_id, log_id(7, 30), "shorter log");
        assert_eq!(exchange(None, None, false).last_log_id, None, "empty logs");
    }
}
