//! The history of a concurrent workload ([`crate::workload::Mixed`]) and the checkers that rule
//! on it once the faults have healed, the way Jepsen and etcd's robustness tests judge a
//! replicated store: every operation is recorded with its invoke and complete times, its
//! outcome and the values it wrote or read, and each checker reads the whole history.
//!
//! Outcomes: [`Outcome::Ok`] (acknowledged), [`Outcome::Failed`] (a 4xx: nothing was written)
//! and [`Outcome::Unknown`] (a 5xx, no answer or a timeout: it may or may not have applied,
//! now or later).
//!
//! * [`check_tags_linearizable`]: the writes and linearizable reads of each hot tag are a
//!   register (`Option<digest>`, `None` when the tag is absent), decided by stateright's
//!   `LinearizabilityTester`. An operation with an unknown outcome stays in flight for ever (it
//!   may take effect at any later point, or never) and its client goes on under a fresh thread
//!   id. The tester searches interleavings without memoising, so the workload keeps each tag's
//!   history short by moving on to fresh hot tags as time passes; linearizability is local, so
//!   checking every tag on its own is checking them all. The search runs on its own thread
//!   with a bound: a history it cannot decide in time is a failure, not a pass.
//! * [`check_regional_reads`]: plain reads promise less — never a value nobody wrote, and a
//!   region's own acknowledged writes read back from it at once (README, "Reads").
//! * [`check_acked_readable`]: nothing acknowledged is lost — every acknowledged manifest not
//!   deleted since reads back byte-identical from every region, with every blob it references.
//! * [`check_converged`]: all regions hold the same tag → digest map, and every blob record a
//!   region holds is pinned in its own Kubo, within a bound.
//! * [`check_available`]: no pull of content the region already served failed while the
//!   region's own node, Postgres and Kubo were healthy.
//! * [`check_fail_fast`]: no request took longer than a bound (outside the windows where the
//!   region's own process was down or paused, when its clients can only wait).
//! * [`check_no_early_gc`]: no push was refused for a missing blob its client had uploaded,
//!   and seen acknowledged, within GC's grace.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use stateright::semantics::register::{Register, RegisterOp, RegisterRet};
use stateright::semantics::{ConsistencyTester, LinearizabilityTester};

use reqwest::blocking::Client;

use crate::oci::{check_pulls, Endpoint, Image};

/// How an operation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// A definite refusal (4xx): nothing was written.
    Failed(String),
    /// A 5xx, no answer or a timeout: it may have applied.
    Unknown(String),
}

impl Outcome {
    /// The outcome of a request that got `status` (0: no answer) with `body`. A connection
    /// that was never made sent nothing, so it is a definite failure too.
    pub fn of_refusal(status: u16, body: &str) -> Outcome {
        let why = format!("{status} {}", body.trim().chars().take(200).collect::<String>());
        if (400..500).contains(&status) || (status == 0 && body.starts_with(crate::oci::NOT_CONNECTED)) {
            Outcome::Failed(why)
        } else {
            Outcome::Unknown(why)
        }
    }

    /// The kind of error, for reports: `503`, `409`, `no answer`, …
    pub fn kind(&self) -> Option<String> {
        match self {
            Outcome::Ok => None,
            Outcome::Failed(w) | Outcome::Unknown(w) => {
                let status = w.split(' ').next().unwrap_or("");
                Some(match status {
                    "0" if w[2..].starts_with(crate::oci::NOT_CONNECTED) => "not connected".to_owned(),
                    "0" => "no answer".to_owned(),
                    _ => status.to_owned(),
                })
            }
        }
    }
}

/// One operation of the workload.
#[derive(Clone, Debug)]
pub enum Op {
    /// A blob uploaded (monolithic `POST …/blobs/uploads/?digest=`).
    Upload { repo: String, digest: String },
    /// A new image's manifest pushed under a tag of its own (`PUT …/manifests/<tag>`).
    Push { repo: String, tag: String, digest: String },
    /// `DELETE …/manifests/<digest>` of an image this client pushed.
    DeleteManifest { repo: String, digest: String },
    /// A hot tag moved to a manifest (`Some`, `PUT …/manifests/<tag>`) or deleted (`None`).
    SetTag { repo: String, tag: String, to: Option<String> },
    /// A read of a hot tag and what it resolved to (`None`: 404).
    ReadTag { repo: String, tag: String, linearizable: bool, got: Option<String> },
    /// A pull (manifest by digest and every blob, checked) of an image this client pushed
    /// through this region, so the region had it.
    Pull { repo: String, digest: String },
}

impl Op {
    pub fn is_write(&self) -> bool {
        matches!(self, Op::Upload { .. } | Op::Push { .. } | Op::DeleteManifest { .. } | Op::SetTag { .. })
    }
}

/// One operation, as its client saw it. Times are since the workload started.
#[derive(Clone, Debug)]
pub struct Event {
    pub client: usize,
    /// The region whose URL the request went to.
    pub region: String,
    pub op: Op,
    pub invoked: Duration,
    pub completed: Duration,
    pub outcome: Outcome,
    /// A write acknowledged that found nothing to change: a tag delete answered 404.
    pub changed_nothing: bool,
}

impl Event {
    pub fn took(&self) -> Duration {
        self.completed - self.invoked
    }
}

/// Everything the clients did, in invoke order, and the images they wrote.
#[derive(Default)]
pub struct History {
    pub events: Vec<Event>,
    /// Every image a client wrote (or tried to), by manifest digest.
    pub images: BTreeMap<String, Image>,
}

/// A stretch of time when a region's own process was down or paused (its clients can only
/// wait, and its pulls may fail).
#[derive(Clone, Debug)]
pub struct Outage {
    pub region: String,
    pub from: Duration,
    pub to: Duration,
}

fn in_outage(outages: &[Outage], region: &str, from: Duration, to: Duration) -> bool {
    outages.iter().any(|o| o.region == region && from <= o.to && to >= o.from)
}

/// Counts for the report.
#[derive(Debug, Default, Clone)]
pub struct Counts {
    pub ops: usize,
    /// Writes (uploads, pushes, deletes, tag moves) acknowledged, refused and unknown.
    pub acked_writes: usize,
    pub failed: usize,
    pub unknown: usize,
    /// Errors of every operation (reads and pulls too) by kind (`503`, `no answer`, …).
    pub errors: BTreeMap<String, usize>,
    /// The first error of each kind: the operation, its region and what it was answered.
    pub examples: BTreeMap<String, String>,
}

impl History {
    pub fn counts(&self) -> Counts {
        let mut c = Counts { ops: self.events.len(), ..Counts::default() };
        for e in &self.events {
            match &e.outcome {
                _ if !e.op.is_write() => {}
                Outcome::Ok => c.acked_writes += 1,
                Outcome::Failed(_) => c.failed += 1,
                Outcome::Unknown(_) => c.unknown += 1,
            }
            if let Some(k) = e.outcome.kind() {
                c.examples
                    .entry(k.clone())
                    .or_insert_with(|| format!("{:?} via {} at {:.1?}: {:?}", e.op, e.region, e.invoked, e.outcome));
                *c.errors.entry(k).or_default() += 1;
            }
        }
        c
    }

    /// The first write acknowledged that was invoked at or after `at`: how long after `at` it
    /// was acknowledged, and through which region.
    pub fn first_ack_after(&self, at: Duration) -> Option<(Duration, String)> {
        self.events
            .iter()
            .filter(|e| e.op.is_write() && e.outcome == Outcome::Ok && e.invoked >= at)
            .min_by_key(|e| e.completed)
            .map(|e| (e.completed - at, e.region.clone()))
    }

    /// Digests of manifests a delete was sent for (whatever its outcome, but a 4xx).
    fn deleted(&self) -> std::collections::BTreeSet<&str> {
        self.events
            .iter()
            .filter_map(|e| match (&e.op, &e.outcome) {
                (_, Outcome::Failed(_)) => None,
                (Op::DeleteManifest { digest, .. }, _) => Some(digest.as_str()),
                _ => None,
            })
            .collect()
    }
}

type Tid = u64;
type Reg = Register<Option<String>>;

/// Every hot tag's writes and linearizable reads form a linearizable register. `Ok` names the
/// tags and operations checked; `Err` the first tag that is not, with its history.
pub fn check_tags_linearizable(h: &History, bound: Duration) -> Result<String, String> {
    // (repo, tag) → its events, in invoke order.
    let mut tags: BTreeMap<(&str, &str), Vec<&Event>> = BTreeMap::new();
    for e in &h.events {
        let (repo, tag) = match &e.op {
            Op::SetTag { repo, tag, .. } if !matches!(e.outcome, Outcome::Failed(_)) => (repo, tag),
            Op::ReadTag { repo, tag, linearizable: true, .. } if e.outcome == Outcome::Ok => (repo, tag),
            _ => continue,
        };
        tags.entry((repo, tag)).or_default().push(e);
    }
    let started = Instant::now();
    let mut checked = 0;
    for ((repo, tag), events) in &tags {
        checked += events.len();
        let left = bound.saturating_sub(started.elapsed());
        let tester = tester_of(events);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(tester.map(|t| t.serialized_history().is_some()));
        });
        match rx.recv_timeout(left) {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => return Err(format!("tag {repo}:{tag} is not linearizable:\n{}", listing(events))),
            Ok(Err(e)) => {
                return Err(format!("tag {repo}:{tag}: the history is malformed ({e}):\n{}", listing(events)))
            }
            Err(_) => {
                return Err(format!(
                    "tag {repo}:{tag}: linearizability undecided within {bound:?} ({} operations)",
                    events.len()
                ))
            }
        }
    }
    Ok(format!("{} tags, {checked} operations linearizable (checked in {:.1?})", tags.len(), started.elapsed()))
}

/// Feeds one tag's events to a tester in real-time order: every invoke and every return, by
/// time (a return before an invoke at the same instant, so a client's next operation follows
/// its last). A client's operation with an unknown outcome is never returned, and the client
/// continues under a fresh thread id.
fn tester_of(events: &[&Event]) -> Result<LinearizabilityTester<Tid, Reg>, String> {
    let mut epoch: BTreeMap<usize, u64> = BTreeMap::new();
    // (time, 0 return | 1 invoke, thread, op, ret)
    type Mark = (Duration, u8, Tid, Option<RegisterOp<Option<String>>>, Option<RegisterRet<Option<String>>>);
    let mut marks: Vec<Mark> = Vec::new();
    for e in events {
        let ep = epoch.entry(e.client).or_default();
        let tid = e.client as u64 * 1_000_000 + *ep;
        let (op, ret) = match &e.op {
            Op::SetTag { to, .. } => (RegisterOp::Write(to.clone()), RegisterRet::WriteOk),
            Op::ReadTag { got, .. } => (RegisterOp::Read, RegisterRet::ReadOk(got.clone())),
            _ => unreachable!("only tag operations are checked"),
        };
        marks.push((e.invoked, 1, tid, Some(op), None));
        match e.outcome {
            Outcome::Ok => marks.push((e.completed, 0, tid, None, Some(ret))),
            _ => *ep += 1,
        }
    }
    marks.sort_by_key(|m| (m.0, m.1));
    let mut t = LinearizabilityTester::new(Register(None));
    for (_, _, tid, op, ret) in marks {
        match (op, ret) {
            (Some(op), _) => t.on_invoke(tid, op).map(|_| ())?,
            (_, Some(ret)) => t.on_return(tid, ret).map(|_| ())?,
            _ => unreachable!(),
        }
    }
    Ok(t)
}

fn listing(events: &[&Event]) -> String {
    let mut s = String::new();
    for e in events {
        let _ = writeln!(
            s,
            "  client {} via {}: [{:>9.3?} .. {:>9.3?}] {:?} -> {:?}",
            e.client, e.region, e.invoked, e.completed, e.op, e.outcome
        );
    }
    s
}

/// Plain (regional) tag reads: never a value nobody wrote, and never older than the last
/// write acknowledged through the same region before the read began.
pub fn check_regional_reads(h: &History) -> Result<String, String> {
    let writes: Vec<&Event> = h
        .events
        .iter()
        .filter(|e| matches!(e.op, Op::SetTag { .. }) && !matches!(e.outcome, Outcome::Failed(_)))
        .collect();
    let mut checked = 0;
    for r in &h.events {
        let Op::ReadTag { repo, tag, linearizable: false, got } = &r.op else { continue };
        if r.outcome != Outcome::Ok {
            continue;
        }
        checked += 1;
        let of_tag: Vec<&&Event> = writes
            .iter()
            .filter(|w| matches!(&w.op, Op::SetTag { repo: wr, tag: wt, .. } if wr == repo && wt == tag))
            .collect();
        let to = |w: &Event| match &w.op {
            Op::SetTag { to, .. } => to.clone(),
            _ => unreachable!(),
        };
        // Written by someone before the read ended (or the initial absence).
        if got.is_some() && !of_tag.iter().any(|w| to(w) == *got && w.invoked <= r.completed) {
            return Err(format!(
                "regional read of {repo}:{tag} via {} at {:?} returned {got:?}, which nobody wrote",
                r.region, r.invoked
            ));
        }
        // Not older than this region's own last acknowledged write.
        let own = of_tag
            .iter()
            .filter(|w| w.region == r.region && w.outcome == Outcome::Ok && w.completed < r.invoked)
            .max_by_key(|w| w.completed);
        if let Some(last) = own {
            // A write of `got` that does not wholly precede `last` (an unknown outcome never
            // completes); the initial absence precedes everything.
            let fresh = of_tag.iter().any(|w| {
                let done = if w.outcome == Outcome::Ok { w.completed } else { Duration::MAX };
                to(w) == *got && done >= last.invoked
            });
            if !fresh {
                return Err(format!(
                    "regional read of {repo}:{tag} via {} at {:?} returned {got:?}, older than {:?} acknowledged there at {:?}",
                    r.region,
                    r.invoked,
                    to(last),
                    last.completed
                ));
            }
        }
    }
    Ok(format!("{checked} regional reads saw written values and their region's own writes"))
}

/// Every acknowledged manifest (a push, or a hot tag moved to it) that no delete was sent for
/// reads back byte-identical by digest from every URL, with every blob, each within `bound`
/// of the check starting. `Ok` says how many, and how long the slowest wait was.
pub fn check_acked_readable(h: &History, regions: &[Endpoint], repo: &str, bound: Duration) -> Result<String, String> {
    let acked = h.acked_manifests();
    let started = Instant::now();
    // Every region is read by READERS clients at once, each taking every READERS-th manifest:
    // one after another, a read-back of every manifest took 5 to 25 s of each drill.
    // The readers of a region share its one client, so its token too.
    let clients = regions
        .iter()
        .map(|r| Ok((r.client(repo, Duration::from_secs(30))?, &r.url)))
        .collect::<Result<Vec<_>, String>>()?;
    let (acked, images) = (&acked, &h.images);
    let readers: Vec<Result<(), String>> = std::thread::scope(|s| {
        let handles: Vec<_> = clients
            .iter()
            .flat_map(|client| (0..READERS).map(move |reader| (client, reader)))
            .map(|((c, url), reader)| {
                s.spawn(move || -> Result<(), String> {
                    for (e, repo, digest) in acked.iter().skip(reader).step_by(READERS) {
                        let img = &images[*digest];
                        loop {
                            match check_pulls(c, url, repo, digest, img) {
                                Ok(()) => break,
                                Err(err) if started.elapsed() > bound => {
                                    return Err(format!(
                                    "LOST: {:?} acknowledged through {} at {:?} does not read back from {url}: {err}",
                                    e.op, e.region, e.completed
                                ))
                                }
                                Err(_) => std::thread::sleep(Duration::from_millis(100)),
                            }
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err("a reader panicked".to_owned()))).collect()
    });
    readers.into_iter().collect::<Result<Vec<()>, String>>()?;
    Ok(format!(
        "{} acknowledged manifests read back from {} regions ({:.1?})",
        acked.len(),
        regions.len(),
        started.elapsed()
    ))
}

/// Clients reading back at once from each region in [`check_acked_readable`].
const READERS: usize = 4;

impl History {
    /// Every acknowledged manifest (a push, or a hot tag moved to it) that no delete was sent
    /// for: its event, repository and digest.
    fn acked_manifests(&self) -> Vec<(&Event, &str, &str)> {
        let deleted = self.deleted();
        self.events
            .iter()
            .filter(|e| e.outcome == Outcome::Ok)
            .filter_map(|e| match &e.op {
                Op::Push { repo, digest, .. } | Op::SetTag { repo, to: Some(digest), .. } => {
                    Some((e, repo.as_str(), digest.as_str()))
                }
                _ => None,
            })
            .filter(|(_, _, d)| !deleted.contains(d))
            .collect()
    }

    /// How many acknowledged manifests do not read back (at once) from some region: the count
    /// of lost writes once [`check_acked_readable`] has failed.
    pub fn unreadable(&self, regions: &[Endpoint], repo: &str) -> usize {
        let clients: Vec<(Client, &str)> = regions
            .iter()
            .filter_map(|r| r.client(repo, Duration::from_secs(30)).ok().map(|c| (c, r.url.as_str())))
            .collect();
        self.acked_manifests()
            .iter()
            .filter(|(_, repo, digest)| {
                clients.iter().any(|(c, url)| check_pulls(c, url, repo, digest, &self.images[*digest]).is_err())
            })
            .count()
    }
}

/// All regions hold identical tag → digest maps of `repo` (its tag list, each tag resolved by a
/// `HEAD`), and report no pin backlog in `/status` (every blob record pinned in its own Kubo),
/// within `bound`: convergence as a client and an operator see it, through the public API.
/// `Ok` gives how long it took.
pub fn check_converged_api(regions: &[Endpoint], repo: &str, bound: Duration) -> Result<Duration, String> {
    let started = Instant::now();
    loop {
        let mut why = String::new();
        let maps: Vec<Result<BTreeMap<String, String>, String>> =
            regions.iter().map(|r| tag_map_api(r, repo)).collect();
        for (r, m) in regions.iter().zip(&maps) {
            if let Err(e) = m {
                let _ = writeln!(why, "{}: {e}", r.name);
            }
        }
        let maps: Vec<&BTreeMap<String, String>> = maps.iter().filter_map(|m| m.as_ref().ok()).collect();
        if maps.len() == regions.len() {
            for (r, m) in regions.iter().zip(&maps).skip(1) {
                let differ: Vec<String> = maps[0]
                    .iter()
                    .filter(|(t, d)| m.get(*t) != Some(*d))
                    .chain(m.iter().filter(|(t, _)| !maps[0].contains_key(*t)))
                    .take(5)
                    .map(|(t, d)| format!("{t} {d}"))
                    .collect();
                if !differ.is_empty() {
                    let _ = writeln!(
                        why,
                        "{} and {} differ ({} vs {} tags), e.g. {differ:?}",
                        regions[0].name,
                        r.name,
                        maps[0].len(),
                        m.len()
                    );
                }
            }
        }
        for r in regions {
            match pin_backlog(r) {
                Ok(0) => {}
                Ok(n) => {
                    let _ = writeln!(why, "{}: {n} blobs not pinned yet", r.name);
                }
                Err(e) => {
                    let _ = writeln!(why, "{}: {e}", r.name);
                }
            }
        }
        if why.is_empty() {
            return Ok(started.elapsed());
        }
        if started.elapsed() > bound {
            return Err(format!("regions did not converge within {bound:?}:\n{why}"));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// `repo`'s tags at `r`, each with the digest it resolves to.
fn tag_map_api(r: &Endpoint, repo: &str) -> Result<BTreeMap<String, String>, String> {
    let c = r.client(repo, Duration::from_secs(10))?;
    let resp = c.get(format!("{}/v2/{repo}/tags/list?n=100000", r.url)).send().map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body: serde_json::Value = resp.json().unwrap_or_default();
    let tags: Vec<String> = match status {
        200 => body["tags"].as_array().into_iter().flatten().filter_map(|t| t.as_str().map(String::from)).collect(),
        404 => Vec::new(),
        s => return Err(format!("tags/list: {s} {body}")),
    };
    let mut map = BTreeMap::new();
    for t in tags {
        let resp = c
            .head(format!("{}/v2/{repo}/manifests/{t}", r.url))
            .header("accept", crate::oci::OCI_MANIFEST)
            .send()
            .map_err(|e| e.to_string())?;
        match resp.status().as_u16() {
            200 => {
                let d =
                    resp.headers().get("docker-content-digest").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                map.insert(t, d);
            }
            // Deleted between the list and the HEAD: the next round sees it gone.
            404 => {}
            s => return Err(format!("HEAD {repo}:{t}: {s}")),
        }
    }
    Ok(map)
}

/// The region's own pin backlog, from its `/status?scope=local`.
fn pin_backlog(r: &Endpoint) -> Result<u64, String> {
    let c = Client::builder().no_proxy().timeout(Duration::from_secs(5)).build().map_err(|e| e.to_string())?;
    let v: serde_json::Value = c
        .get(format!("{}/status?scope=local", r.url))
        .send()
        .and_then(|r| r.json())
        .map_err(|e| format!("/status: {e}"))?;
    v["pins"]["backlog"]
        .as_u64()
        .or_else(|| v["pin_backlog"].as_u64())
        .ok_or_else(|| format!("/status has no pin backlog: {v}"))
}

/// No pull failed in a region outside its outages.
pub fn check_available(h: &History, outages: &[Outage]) -> Result<String, String> {
    let pulls: Vec<&Event> = h.events.iter().filter(|e| matches!(e.op, Op::Pull { .. })).collect();
    for e in &pulls {
        if e.outcome != Outcome::Ok && !in_outage(outages, &e.region, e.invoked, e.completed) {
            return Err(format!(
                "a pull failed in healthy region {} at {:?}: {:?} -> {:?}",
                e.region, e.invoked, e.op, e.outcome
            ));
        }
    }
    Ok(format!("{} pulls, none failed in a healthy region", pulls.len()))
}

/// No request took longer than `bound` outside its region's outages.
pub fn check_fail_fast(h: &History, outages: &[Outage], bound: Duration) -> Result<String, String> {
    let slowest =
        h.events.iter().filter(|e| !in_outage(outages, &e.region, e.invoked, e.completed)).max_by_key(|e| e.took());
    match slowest {
        Some(e) if e.took() > bound => Err(format!(
            "a request via {} took {:?} (bound {bound:?}): {:?} -> {:?} at {:?}",
            e.region,
            e.took(),
            e.op,
            e.outcome,
            e.invoked
        )),
        Some(e) => Ok(format!("slowest request {:.1?} ({:?})", e.took(), e.outcome)),
        None => Ok("no requests".into()),
    }
}

/// GC never takes a blob inside its grace: no manifest push was refused for a missing blob
/// when its client had uploaded every blob it names (each acknowledged) less than `grace`
/// before the push completed. A link's time is stamped while its upload is in flight and GC's
/// cut-off is its listing time less the grace, so a blob uploaded that recently cannot be a
/// candidate yet, whatever GC's schedule; a refusal then is a blob collected early (a clock,
/// or a race between GC and an upload).
pub fn check_no_early_gc(h: &History, grace: Duration) -> Result<String, String> {
    let mut by_client: BTreeMap<usize, Vec<&Event>> = BTreeMap::new();
    for e in &h.events {
        by_client.entry(e.client).or_default().push(e);
    }
    let mut checked = 0;
    for events in by_client.values() {
        for (i, e) in events.iter().enumerate() {
            let digest = match &e.op {
                Op::Push { digest, .. } | Op::SetTag { to: Some(digest), .. } => digest,
                _ => continue,
            };
            let Some(img) = h.images.get(digest) else { continue };
            // The client uploaded the image's blobs right before pushing it, one event each.
            let uploads = &events[i.saturating_sub(img.blobs.len())..i];
            let fresh = uploads.len() == img.blobs.len()
                && img.blobs.iter().all(|(d, _)| {
                    uploads.iter().any(|u| {
                        matches!(&u.op, Op::Upload { digest, .. } if digest == d)
                            && u.outcome == Outcome::Ok
                            && u.invoked + grace > e.completed
                    })
                });
            if !fresh {
                continue;
            }
            checked += 1;
            if let Outcome::Failed(why) = &e.outcome {
                if why.contains("MANIFEST_BLOB_UNKNOWN") {
                    return Err(format!(
                        "a blob was collected inside its grace ({grace:?}): {:?} via {} at {:.1?} was refused ({why}), {:.1?} after its client began uploading its blobs (all acknowledged)",
                        e.op,
                        e.region,
                        e.invoked,
                        e.completed - uploads[0].invoked
                    ));
                }
            }
        }
    }
    Ok(format!("{checked} pushes of blobs uploaded within the grace ({grace:?}), none refused for a missing blob"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(client: usize, op: Op, invoked: u64, completed: u64, outcome: Outcome) -> Event {
        Event {
            client,
            region: "us".into(),
            op,
            invoked: Duration::from_millis(invoked),
            completed: Duration::from_millis(completed),
            outcome,
            changed_nothing: false,
        }
    }
    fn set(v: Option<&str>) -> Op {
        Op::SetTag { repo: "r".into(), tag: "t".into(), to: v.map(String::from) }
    }
    fn read(v: Option<&str>) -> Op {
        Op::ReadTag { repo: "r".into(), tag: "t".into(), linearizable: true, got: v.map(String::from) }
    }
    fn check(events: Vec<Event>) -> Result<String, String> {
        check_tags_linearizable(&History { events, images: BTreeMap::new() }, Duration::from_secs(10))
    }

    #[test]
    fn a_read_after_an_acknowledged_write_must_see_it() {
        let ok = vec![ev(0, set(Some("a")), 0, 10, Outcome::Ok), ev(1, read(Some("a")), 20, 30, Outcome::Ok)];
        assert!(check(ok).is_ok());
        let stale = vec![ev(0, set(Some("a")), 0, 10, Outcome::Ok), ev(1, read(None), 20, 30, Outcome::Ok)];
        assert!(check(stale).unwrap_err().contains("not linearizable"));
    }

    #[test]
    fn an_unknown_write_may_apply_late_or_never_but_only_once() {
        let u = Outcome::Unknown("503".into());
        // Never applied.
        assert!(check(vec![ev(0, set(Some("a")), 0, 10, u.clone()), ev(1, read(None), 20, 30, Outcome::Ok)]).is_ok());
        // Applied after its client went on to another write.
        let late = vec![
            ev(0, set(Some("a")), 0, 10, u.clone()),
            ev(0, set(Some("b")), 20, 30, Outcome::Ok),
            ev(1, read(Some("b")), 40, 50, Outcome::Ok),
            ev(1, read(Some("a")), 60, 70, Outcome::Ok),
        ];
        assert!(check(late).is_ok());
        // But a value cannot come back once overwritten by a later acknowledged write.
        let flicker = vec![
            ev(0, set(Some("a")), 0, 10, u),
            ev(1, read(Some("a")), 20, 30, Outcome::Ok),
            ev(2, set(Some("b")), 40, 50, Outcome::Ok),
            ev(1, read(Some("a")), 60, 70, Outcome::Ok),
        ];
        assert!(check(flicker).is_err());
    }

    #[test]
    fn a_push_refused_for_blobs_uploaded_within_the_grace_is_early_gc() {
        let img = crate::oci::image_of_layers(b"{}".to_vec(), vec![b"layer".to_vec()]);
        let up = |(d, _): &(String, Vec<u8>), at| {
            ev(0, Op::Upload { repo: "r".into(), digest: d.clone() }, at, at + 10, Outcome::Ok)
        };
        let push = |at, outcome| {
            ev(0, Op::Push { repo: "r".into(), tag: "t".into(), digest: img.digest.clone() }, at, at + 10, outcome)
        };
        let refused = Outcome::Failed(r#"400 {"errors":[{"code":"MANIFEST_BLOB_UNKNOWN"}]}"#.into());
        let h = |push_at| {
            let mut events: Vec<Event> = img.blobs.iter().enumerate().map(|(i, b)| up(b, i as u64 * 20)).collect();
            events.push(push(push_at, refused.clone()));
            History { events, images: [(img.digest.clone(), img.clone())].into() }
        };
        let grace = Duration::from_secs(1);
        assert!(check_no_early_gc(&h(100), grace).unwrap_err().contains("inside its grace"));
        // Uploaded longer ago than the grace: GC may have taken it.
        assert!(check_no_early_gc(&h(2_000), grace).unwrap().starts_with("0 pushes"));
    }

    #[test]
    fn regional_reads_must_see_their_regions_own_writes() {
        let mut r = read(None);
        if let Op::ReadTag { linearizable, .. } = &mut r {
            *linearizable = false;
        }
        let h = |got: Option<&str>| {
            let mut r = r.clone();
            if let Op::ReadTag { got: g, .. } = &mut r {
                *g = got.map(String::from);
            }
            History {
                events: vec![ev(0, set(Some("a")), 0, 10, Outcome::Ok), ev(1, r, 20, 30, Outcome::Ok)],
                images: BTreeMap::new(),
            }
        };
        assert!(check_regional_reads(&h(Some("a"))).is_ok());
        assert!(check_regional_reads(&h(None)).unwrap_err().contains("older than"));
        assert!(check_regional_reads(&h(Some("z"))).unwrap_err().contains("nobody wrote"));
    }
}
