//! The region's Raft seat: several afreg processes may serve one region over its Postgres and
//! Kubo, but exactly one runs the region's Raft member, because two members with one id over
//! one log and one vote would break Raft's safety.
//!
//! The seat is held in the region's Postgres by two things:
//!
//! - an **advisory lock** on a session the holder keeps open (its own connection, outside the
//!   pools). Whoever holds the lock may take the seat; a holder that dies loses it as soon as
//!   Postgres sees its session end (at once for a killed process; within the TCP keepalive
//!   bound set on the session for a host that vanished).
//! - a **lease and an epoch** in `raft_seat`. The holder renews the lease on its session
//!   every `lease / 6`. A holder that stops renewing (paused, cut off) is taken over once its
//!   lease has run out on Postgres' clock: a candidate ends its session
//!   (`pg_terminate_backend`), takes the lock and bumps the **epoch**.
//!
//! Fencing: the Raft storage ([`crate::store`]) checks the epoch it was started with in the
//! transaction of every write (`FOR KEY SHARE` on the row, which a takeover's `FOR UPDATE`
//! waits for and then changes), so a process that lost the seat, even one paused and resumed
//! that still believes it holds it, cannot append, vote or apply: its write fails, openraft
//! stops, and the process steps down. A process answers Raft RPCs only while its lease, as it
//! last renewed it, is valid with a margin ([`Seat::holds`]), checked before and after each
//! one, so a resumed process does not answer from a stale memory either.
//!
//! A new holder starts its Raft member only once the previous holder's lease has run out (at
//! once when it released the seat cleanly), so two members never answer at the same time.
//!
//! A silent Postgres (a half-open connection: the peer gone without a FIN, a relay that stops
//! forwarding) never wedges the seat: every statement on the seat's session, connecting and
//! taking the seat included, is bounded by [`Seat::bound`] (a third of the lease), and the
//! session never idles longer than a sixth of the lease, so a silent session fails within half a
//! lease, well before the lease ends. A holder whose renewal fails steps down at once (its Raft
//! member stops, and it answers as a standby again); a candidate whose session fails connects
//! again. Postgres' own keepalives (set on the session) end the session on its side, releasing
//! the lock. sqlx exposes no socket options, so the client side's keepalive is this bound: the
//! session is never left idle long enough for one to matter.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

/// The seat's advisory lock, `(classid, objid)` of the two-key form (never collides with the
/// one-key locks the CID and upload-owner locks take).
const LOCK: (i32, i32) = (1_634_103_911, 1);

/// How one process takes part in its region's seat.
#[derive(Debug, Clone)]
pub struct SeatOptions {
    /// This process's name, unique in the region (e.g. its host name and pid).
    pub process: String,
    /// Where this process's own internal listener is reached by the region's other processes.
    pub url: String,
    /// The address `url`'s host resolves to, when it is not in DNS (a pod's own IP with the
    /// region's certificate name in `url`); `None`: resolve `url` as usual.
    pub addr: Option<std::net::SocketAddr>,
    /// This process's public URL (reported in `/status`).
    pub public_url: String,
    /// The holder's lease: a holder that has not renewed it for this long is taken over.
    pub lease: Duration,
}

/// The process that holds the seat, as `raft_seat` names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub name: String,
    pub url: String,
    pub addr: Option<std::net::SocketAddr>,
    pub epoch: u64,
}

/// This process's place in the seat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeatState {
    /// This process holds the seat at `epoch` (the previous holder's lease has run out): its
    /// Raft member may run.
    Holding { epoch: u64 },
    /// Another process holds it, or nobody does yet.
    Standby { holder: Option<Holder> },
}

/// One process of the region in `region_processes`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProcessRow {
    pub name: String,
    pub url: String,
    pub public_url: String,
    /// Seconds since it last reported itself.
    pub seen_secs_ago: f64,
}

/// The seat as `/status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct SeatStatus {
    pub epoch: u64,
    pub holder: Option<String>,
    /// Seconds since the holder last renewed its lease (`None`: released).
    pub renewed_secs_ago: Option<f64>,
    /// Seconds since the seat was taken at this epoch.
    pub held_secs: Option<f64>,
    /// Every process seen within the last minute, the holder among them.
    pub processes: Vec<ProcessRow>,
    /// The process that answered.
    pub this_process: String,
}

/// This process's side of the region's seat; [`Seat::run`] keeps it.
pub struct Seat {
    opts: SeatOptions,
    db: PgConnectOptions,
    state: watch::Sender<SeatState>,
    /// Until when this process may answer as the holder (its last renewal plus the lease,
    /// less a margin), on the monotonic clock, which runs on while a process is paused.
    valid_until: Mutex<Option<Instant>>,
    give_up: Notify,
}

/// Why the seat loop left the holder's phase.
enum Left {
    Stopped,
    Lost(String),
}

impl Seat {
    pub fn new(opts: SeatOptions, db: PgConnectOptions) -> Seat {
        Seat {
            opts,
            db,
            state: watch::channel(SeatState::Standby { holder: None }).0,
            valid_until: Mutex::new(None),
            give_up: Notify::new(),
        }
    }

    pub fn options(&self) -> &SeatOptions {
        &self.opts
    }

    /// Sees every change of [`SeatState`].
    pub fn subscribe(&self) -> watch::Receiver<SeatState> {
        self.state.subscribe()
    }

    pub fn state(&self) -> SeatState {
        self.state.borrow().clone()
    }

    /// The holder as this process last saw it (itself when it holds the seat).
    pub fn holder(&self) -> Option<Holder> {
        match self.state() {
            SeatState::Holding { epoch } => Some(Holder {
                name: self.opts.process.clone(),
                url: self.opts.url.clone(),
                addr: self.opts.addr,
                epoch,
            }),
            SeatState::Standby { holder } => holder,
        }
    }

    /// Whether this process holds the seat and its lease is valid right now (no IO).
    pub fn holds(&self) -> bool {
        matches!(self.state(), SeatState::Holding { .. })
            && self.valid_until.lock().unwrap().is_some_and(|until| Instant::now() < until)
    }

    /// Gives the seat up (e.g. the Raft member failed), so another process may take it. The
    /// seat loop then waits a lease before it tries again itself.
    pub fn release(&self) {
        self.give_up.notify_one();
    }

    fn poll(&self) -> Duration {
        self.opts.lease / 6
    }

    /// The longest any statement on the seat's session may take: a third of the lease, so a
    /// holder whose session went silent right after a renewal steps down within half a lease.
    fn bound(&self) -> Duration {
        self.opts.lease / 3
    }

    /// Keeps this process in the seat: a candidate until it takes the seat, then the holder
    /// until it loses it or `stop`, then a candidate again. Never returns before `stop`.
    /// `pool` (the process's own connections, not the seat's session) tells the holder while
    /// the seat's session is down, so a standby cut off from it still relays to the holder.
    pub async fn run(&self, stop: CancellationToken, pool: &PgPool) {
        loop {
            let mut conn = match self.connect().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(event = "seat_unreachable", error = %e, "cannot reach PostgreSQL for the Raft seat; retrying");
                    if self.standby_for(&stop, pool, self.poll() * 2).await {
                        return;
                    }
                    continue;
                }
            };
            let epoch = match self.candidate(&mut conn, &stop).await {
                Ok(Some(taken)) => taken,
                Ok(None) => {
                    self.forget_process(&mut conn).await;
                    return;
                }
                Err(e) => {
                    tracing::warn!(event = "seat_unreachable", error = %e, "lost PostgreSQL while waiting for the Raft seat; reconnecting");
                    drop(conn);
                    if self.standby_for(&stop, pool, self.poll()).await {
                        return;
                    }
                    continue;
                }
            };
            let (epoch, wait) = epoch;
            match self.hold(&mut conn, epoch, wait, &stop).await {
                Left::Stopped => {
                    // Released cleanly: the next holder need not wait out the lease.
                    let _ = within(
                        self.bound(),
                        sqlx::query("UPDATE raft_seat SET renewed_at = NULL WHERE epoch = $1")
                            .bind(epoch as i64)
                            .execute(&mut conn),
                    )
                    .await;
                    self.forget_process(&mut conn).await;
                    let _ = tokio::time::timeout(self.bound(), conn.close()).await;
                    tracing::info!(event = "seat_released", epoch, "released the region's Raft seat");
                    return;
                }
                Left::Lost(why) => {
                    tracing::warn!(event = "seat_lost", epoch, reason = %why, "this process no longer holds the region's Raft seat; stepping down");
                    drop(conn);
                    // Let another process take it before trying again, relaying to it meanwhile.
                    if self.standby_for(&stop, pool, self.opts.lease).await {
                        return;
                    }
                }
            }
        }
    }

    /// Removes this process from `region_processes` on the way out (best effort, bounded).
    async fn forget_process(&self, conn: &mut PgConnection) {
        let forget = sqlx::query("DELETE FROM region_processes WHERE name = $1").bind(&self.opts.process).execute(conn);
        let _ = within(self.bound(), forget).await;
    }

    /// A standby without the seat's session for `d`: every poll it reads the holder through
    /// `pool`. True on `stop`.
    async fn standby_for(&self, stop: &CancellationToken, pool: &PgPool, d: Duration) -> bool {
        let until = Instant::now() + d;
        loop {
            let holder = match within(self.bound(), self.read_holder(pool)).await {
                Ok(h) => h.filter(|h| h.name != self.opts.process),
                Err(_) => None,
            };
            self.set(SeatState::Standby { holder });
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            if pause(stop, left.min(self.poll())).await {
                return true;
            }
        }
    }

    /// The holder `raft_seat` names, if its lease runs.
    async fn read_holder<'c, E: sqlx::PgExecutor<'c>>(&self, db: E) -> Result<Option<Holder>, sqlx::Error> {
        let (_, holder, expired) = self.seat_row(db).await?;
        Ok(holder.filter(|_| !expired))
    }

    /// `raft_seat`: the holder's session pid, the holder, and whether its lease ran out.
    async fn seat_row<'c, E: sqlx::PgExecutor<'c>>(
        &self,
        db: E,
    ) -> Result<(Option<i32>, Option<Holder>, bool), sqlx::Error> {
        let (epoch, name, url, addr, pid, expired): (i64, String, String, Option<String>, Option<i32>, bool) =
            sqlx::query_as(
                "SELECT epoch, holder, holder_url, holder_addr, holder_pid,
                        renewed_at IS NULL OR clock_timestamp() > renewed_at + make_interval(secs => $1)
                   FROM raft_seat",
            )
            .bind(self.opts.lease.as_secs_f64())
            .fetch_one(db)
            .await?;
        let holder = (!name.is_empty()).then(|| Holder {
            name,
            url,
            addr: addr.and_then(|a| a.parse().ok()),
            epoch: epoch as u64,
        });
        Ok((pid, holder, expired))
    }

    async fn connect(&self) -> Result<PgConnection, sqlx::Error> {
        let opts = self.db.clone().application_name(&format!("afreg seat {}", self.opts.process));
        let mut conn = within(self.bound(), opts.connect()).await?;
        // Postgres ends a session whose peer went silent within about keepalives_idle +
        // interval × count (or tcp_user_timeout for unacknowledged data), releasing the lock.
        let secs = self.opts.lease.as_secs().max(1);
        for set in [
            format!("SET tcp_keepalives_idle = {secs}"),
            "SET tcp_keepalives_interval = 1".to_owned(),
            "SET tcp_keepalives_count = 3".to_owned(),
            format!("SET tcp_user_timeout = {}", secs * 2000),
        ] {
            within(self.bound(), sqlx::query(&set).execute(&mut conn)).await?;
        }
        Ok(conn)
    }

    /// Publishes a change of this process's place; `afreg_seat_taken_total` counts the times it
    /// took the seat, and `afreg_seat_epoch` is the epoch of the holder it last saw (a seat
    /// change moves it on in every process of the region).
    fn set(&self, s: SeatState) {
        let changed = self.state.send_if_modified(|cur| {
            if *cur == s {
                return false;
            }
            *cur = s.clone();
            true
        });
        if !changed {
            return;
        }
        match s {
            SeatState::Holding { epoch } => {
                metrics::counter!("afreg_seat_taken_total").increment(1);
                metrics::gauge!("afreg_seat_epoch").set(epoch as f64);
            }
            SeatState::Standby { holder: Some(h) } => metrics::gauge!("afreg_seat_epoch").set(h.epoch as f64),
            SeatState::Standby { holder: None } => {}
        }
    }

    /// Waits for the seat; returns the epoch taken and how long the previous holder's lease
    /// still runs, or `None` on `stop`.
    async fn candidate(
        &self,
        conn: &mut PgConnection,
        stop: &CancellationToken,
    ) -> Result<Option<(u64, Duration)>, sqlx::Error> {
        loop {
            self.report(conn).await?;
            let got: bool = within(
                self.bound(),
                sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
                    .bind(LOCK.0)
                    .bind(LOCK.1)
                    .fetch_one(&mut *conn),
            )
            .await?;
            if got {
                // Bounded as a whole: a session that goes silent while taking the seat is a
                // failed attempt (the lock goes with the session), never a hang.
                return within(self.bound(), self.take(conn)).await.map(Some);
            }
            let (pid, holder, expired) = within(self.bound(), self.seat_row(&mut *conn)).await?;
            if expired {
                if let Some(pid) = pid {
                    // The lock's session outlived its lease (a paused or cut-off holder): end it.
                    let ended: Option<bool> = within(
                        self.bound(),
                        sqlx::query_scalar(
                            "SELECT pg_terminate_backend(l.pid) FROM pg_locks l
                              WHERE l.locktype = 'advisory' AND l.classid = $1::int::oid AND l.objid = $2::int::oid
                                AND l.objsubid = 2 AND l.granted AND l.pid = $3",
                        )
                        .bind(LOCK.0)
                        .bind(LOCK.1)
                        .bind(pid)
                        .fetch_optional(&mut *conn),
                    )
                    .await?;
                    if ended == Some(true) {
                        let epoch = holder.as_ref().map(|h| h.epoch);
                        tracing::warn!(event = "seat_holder_expired", holder = ?holder.as_ref().map(|h| &h.name), epoch,
                            "the seat holder's lease ran out; ended its session to take the seat over");
                    }
                }
            }
            self.set(SeatState::Standby { holder });
            if pause(stop, self.poll()).await {
                return Ok(None);
            }
        }
    }

    /// With the lock held: bumps the epoch and records this process as the holder.
    async fn take(&self, conn: &mut PgConnection) -> Result<(u64, Duration), sqlx::Error> {
        let mut tx = conn.begin().await?;
        // A transaction that still holds the seat's row belongs to the previous holder, whose
        // session is gone: a process paused (or cut off) in the middle of a storage write. It
        // can never commit under the new epoch, and it would hold this FOR UPDATE for as long
        // as that process stays paused, so it is ended; nothing acknowledged depends on it.
        sqlx::query("SET LOCAL lock_timeout = '1s'").execute(&mut *tx).await?;
        let ended: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_locks
              WHERE locktype = 'relation' AND relation = 'raft_seat'::regclass AND pid <> pg_backend_pid()
                AND mode IN ('RowShareLock', 'RowExclusiveLock') AND granted",
        )
        .fetch_all(&mut *tx)
        .await?;
        if !ended.is_empty() {
            tracing::warn!(
                event = "seat_writes_ended",
                transactions = ended.len(),
                "ended the previous holder's unfinished storage transactions to take the seat over"
            );
        }
        let (prev, wait_ms): (String, f64) = sqlx::query_as(
            "SELECT holder, GREATEST(0, EXTRACT(EPOCH FROM (renewed_at + make_interval(secs => $1) - clock_timestamp())) * 1000)::float8
               FROM raft_seat FOR UPDATE",
        )
        .bind(self.opts.lease.as_secs_f64())
        .fetch_one(&mut *tx)
        .await
        .map(|(h, w): (String, Option<f64>)| (h, w.unwrap_or(0.0)))?;
        let epoch: i64 = sqlx::query_scalar(
            "UPDATE raft_seat SET epoch = epoch + 1, holder = $1, holder_url = $2, holder_addr = $3,
                    holder_pid = pg_backend_pid(), taken_at = clock_timestamp(), renewed_at = clock_timestamp()
              RETURNING epoch",
        )
        .bind(&self.opts.process)
        .bind(&self.opts.url)
        .bind(self.opts.addr.map(|a| a.to_string()))
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        let wait = Duration::from_millis(wait_ms as u64);
        tracing::info!(event = "seat_taken", epoch, previous = %prev, wait_ms = wait.as_millis() as u64,
            "took the region's Raft seat; its Raft member starts once the previous lease has run out");
        Ok((epoch as u64, wait))
    }

    /// Renews the lease until the seat is lost or `stop`; publishes [`SeatState::Holding`]
    /// once `wait` (the previous holder's lease) has passed.
    async fn hold(&self, conn: &mut PgConnection, epoch: u64, wait: Duration, stop: &CancellationToken) -> Left {
        let start = Instant::now() + wait;
        let margin = self.opts.lease / 3;
        let mut rounds = 0u64;
        let left = loop {
            let sent = Instant::now();
            let renewed = within(
                self.bound(),
                sqlx::query("UPDATE raft_seat SET renewed_at = clock_timestamp() WHERE epoch = $1")
                    .bind(epoch as i64)
                    .execute(&mut *conn),
            )
            .await;
            match renewed {
                Ok(r) if r.rows_affected() == 1 => {
                    *self.valid_until.lock().unwrap() = Some(sent + self.opts.lease - margin)
                }
                Ok(_) => break Left::Lost("another process took the seat (the epoch moved on)".into()),
                Err(e) => break Left::Lost(format!("renewing the lease failed: {e}")),
            }
            if Instant::now() >= start {
                self.set(SeatState::Holding { epoch });
            }
            rounds += 1;
            if rounds.is_multiple_of(12) {
                if let Err(e) = self.report(conn).await {
                    break Left::Lost(format!("reporting this process failed: {e}"));
                }
            }
            tokio::select! {
                _ = stop.cancelled() => break Left::Stopped,
                _ = self.give_up.notified() => break Left::Lost("its Raft member stopped".into()),
                _ = tokio::time::sleep(self.poll()) => {}
            }
        };
        *self.valid_until.lock().unwrap() = None;
        self.set(SeatState::Standby { holder: None });
        left
    }

    /// Records this process in `region_processes`, and forgets processes gone for a day.
    async fn report(&self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        within(
            self.bound(),
            sqlx::query(
                "INSERT INTO region_processes (name, url, public_url) VALUES ($1, $2, $3)
                 ON CONFLICT (name) DO UPDATE SET url = EXCLUDED.url, public_url = EXCLUDED.public_url, seen_at = now()",
            )
            .bind(&self.opts.process)
            .bind(&self.opts.url)
            .bind(&self.opts.public_url)
            .execute(&mut *conn),
        )
        .await?;
        within(
            self.bound(),
            sqlx::query("DELETE FROM region_processes WHERE seen_at < now() - interval '1 day'").execute(&mut *conn),
        )
        .await?;
        Ok(())
    }
}

/// The seat and the region's processes, for `/status`.
pub async fn status(pool: &PgPool, this_process: &str) -> Result<SeatStatus, sqlx::Error> {
    let (epoch, holder, renewed, taken): (i64, String, Option<f64>, Option<f64>) = sqlx::query_as(
        "SELECT epoch, holder, EXTRACT(EPOCH FROM clock_timestamp() - renewed_at)::float8,
                EXTRACT(EPOCH FROM clock_timestamp() - taken_at)::float8
           FROM raft_seat",
    )
    .fetch_one(pool)
    .await?;
    let processes: Vec<(String, String, String, f64)> = sqlx::query_as(
        "SELECT name, url, public_url, EXTRACT(EPOCH FROM clock_timestamp() - seen_at)::float8 FROM region_processes
          WHERE seen_at > now() - interval '1 minute' ORDER BY name",
    )
    .fetch_all(pool)
    .await?;
    Ok(SeatStatus {
        epoch: epoch as u64,
        holder: (!holder.is_empty() && renewed.is_some()).then_some(holder),
        renewed_secs_ago: renewed,
        held_secs: taken,
        processes: processes
            .into_iter()
            .map(|(name, url, public_url, seen)| ProcessRow { name, url, public_url, seen_secs_ago: seen })
            .collect(),
        this_process: this_process.to_owned(),
    })
}

/// Takes the next epoch without the seat's session lock, for a database that no afreg
/// process serves (openraft's storage suite, offline tools); a running holder is fenced.
pub async fn claim_exclusively(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let epoch: i64 = sqlx::query_scalar(
        "UPDATE raft_seat SET epoch = epoch + 1, holder = 'exclusive', taken_at = clock_timestamp(), renewed_at = NULL RETURNING epoch",
    )
    .fetch_one(pool)
    .await?;
    Ok(epoch as u64)
}

/// Sleeps `d`; true if `stop` came first.
async fn pause(stop: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = stop.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}

/// A statement on the seat's session, bounded: a Postgres that stops answering is a lost
/// seat, not a hang.
async fn within<T>(
    d: Duration,
    f: impl std::future::Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, sqlx::Error> {
    tokio::time::timeout(d, f).await.map_err(|_| sqlx::Error::PoolTimedOut)?
}
