//! Workloads that run while a test injects faults. [`Workload`] is a push workload whose
//! checks run on its history afterwards: every acknowledged push reads back byte-identical
//! everywhere, and the regions' Raft logs never disagree on an entry. [`Mixed`] is the drills'
//! concurrent workload of every kind of operation on every region, recorded for the checkers
//! of [`crate::history`]. Shared by the node's tests and the chaos scenarios.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

use crate::cluster::ClusterMember;
use crate::history::{Event, History as Recorded, Op, Outcome};
use crate::oci::{check_pulls, delete_manifest, image_of_layers, new_image, push, put_manifest, try_get_manifest, upload_blob, Image, Refusal};
use crate::sha256_digest;

/// One acknowledged push: every request of it answered 201.
#[derive(Clone)]
pub struct Ack {
    /// The URL it was pushed through.
    pub via: String,
    pub repo: String,
    pub tag: String,
    pub image: Image,
    /// When it was acknowledged, since the workload started.
    pub at: Duration,
}

/// What the writers saw.
#[derive(Default)]
pub struct History {
    pub acked: Vec<Ack>,
    /// Pushes refused with a 4xx (nothing was written).
    pub refused: usize,
    /// Pushes that got a 5xx or no answer: they may or may not have applied.
    pub unknown: usize,
}

/// Writers pushing small images with new tags, one thread per URL, until [`Workload::stop`].
pub struct Workload {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<History>>,
}

impl Workload {
    /// One writer per URL in `via`, each pushing images (a 4 KiB layer) as `repo:w{i}-{n}`
    /// with a pause of `every` between pushes.
    pub fn start(via: &[String], repo: &str, every: Duration) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let threads = via
            .iter()
            .enumerate()
            .map(|(i, url)| {
                let (stop, url, repo) = (stop.clone(), url.clone(), repo.to_owned());
                std::thread::spawn(move || {
                    let c = reqwest::blocking::Client::builder().no_proxy().timeout(Duration::from_secs(30)).build().unwrap();
                    let mut h = History::default();
                    let mut n = 0;
                    while !stop.load(Ordering::SeqCst) {
                        let (tag, image) = (format!("w{i}-{n}"), new_image(4096));
                        n += 1;
                        match push(&c, &url, &repo, &tag, &image) {
                            Ok(()) => h.acked.push(Ack { via: url.clone(), repo: repo.clone(), tag, image, at: started.elapsed() }),
                            Err(r) if (400..500).contains(&r.status) => h.refused += 1,
                            Err(_) => h.unknown += 1,
                        }
                        std::thread::sleep(every);
                    }
                    h
                })
            })
            .collect();
        Workload { stop, threads }
    }

    /// Stops the writers and returns their history, merged.
    pub fn stop(self) -> History {
        self.stop.store(true, Ordering::SeqCst);
        let mut all = History::default();
        for t in self.threads {
            let h = t.join().expect("workload writer panicked");
            all.acked.extend(h.acked);
            all.refused += h.refused;
            all.unknown += h.unknown;
        }
        all.acked.sort_by_key(|a| a.at);
        all
    }
}

/// Every acknowledged push reads back byte-identical (its manifest by tag, every blob checked
/// against its digest) from every URL in `from`, each within `bound` of the check starting
/// (replication lag). Returns how long the slowest took.
pub fn assert_acked_readable(h: &History, from: &[String], bound: Duration) -> Duration {
    let c = crate::oci::client();
    let started = Instant::now();
    for url in from {
        for a in &h.acked {
            loop {
                match check_pulls(&c, url, &a.repo, &a.tag, &a.image) {
                    Ok(()) => break,
                    Err(e) if started.elapsed() > bound => {
                        panic!("acknowledged push {}:{} (through {}, at {:?}) is lost at {url}: {e}", a.repo, a.tag, a.via, a.at)
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        }
    }
    started.elapsed()
}

/// No two regions' Raft logs hold entries of different terms at one index (Raft's log
/// matching, checked across the durable logs in each region's Postgres). Returns the number of
/// indexes compared.
pub fn assert_logs_agree(regions: &[&ClusterMember]) -> usize {
    let mut seen: BTreeMap<u64, (u64, String)> = BTreeMap::new();
    let mut compared = 0;
    for r in regions {
        let rows = r.pg().psql("SELECT log_index || ':' || term FROM raft_log ORDER BY log_index");
        for line in rows.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let (i, t) = line.split_once(':').expect("index:term");
            let (i, t): (u64, u64) = (i.parse().unwrap(), t.parse().unwrap());
            match seen.get(&i) {
                Some((term, other)) => {
                    compared += 1;
                    assert_eq!(*term, t, "log index {i}: term {term} in {other}'s log but {t} in {}'s", r.name);
                }
                None => {
                    seen.insert(i, (t, r.name.clone()));
                }
            }
        }
    }
    compared
}

/// How a [`Mixed`] workload behaves.
#[derive(Clone, Debug)]
pub struct MixedConfig {
    /// Every client's choices and bytes derive from this (and its client number).
    pub seed: u64,
    pub repo: String,
    /// Hot tags moved at once.
    pub hot_tags: usize,
    /// The taggers move on to fresh hot tags this often, which keeps each tag's history short
    /// enough for the linearizability checker.
    pub tag_generation: Duration,
    /// Tag clients per region (moving hot tags, deleting them, reading them both ways); each
    /// region also has one pusher (new images, pulls and deletes of its own).
    pub taggers: usize,
    /// Pause between two operations of one client.
    pub pause: Duration,
    /// Per request; a request still unanswered then has an unknown outcome.
    pub timeout: Duration,
}

impl Default for MixedConfig {
    fn default() -> Self {
        MixedConfig {
            seed: 1,
            repo: "drill/app".into(),
            hot_tags: 2,
            tag_generation: Duration::from_secs(4),
            taggers: 1,
            pause: Duration::from_millis(40),
            timeout: Duration::from_secs(30),
        }
    }
}

/// The concurrent workload of the failover drills: on every region, a pusher (uploads, pushes
/// of new images sharing a base layer, pulls and deletes of its own images) and taggers
/// (moving and deleting a few hot tags, reading them linearizably and regionally), each
/// recording every operation into a [`crate::history::History`] for the checkers of [`crate::history`].
pub struct Mixed {
    stop: Arc<AtomicBool>,
    started: Instant,
    threads: Vec<std::thread::JoinHandle<(Vec<Event>, Vec<Image>)>>,
}

impl Mixed {
    /// Starts the clients against `regions` (name, URL).
    pub fn start(regions: &[(String, String)], cfg: &MixedConfig) -> Mixed {
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let mut threads = Vec::new();
        let mut id = 0;
        for (name, url) in regions {
            for role in std::iter::once(Role::Pusher).chain(std::iter::repeat_n(Role::Tagger, cfg.taggers)) {
                let mut c = DrillClient::new(id, name, url, cfg, started);
                let (stop, cfg) = (stop.clone(), cfg.clone());
                threads.push(std::thread::spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        match role {
                            Role::Pusher => c.pusher_step(),
                            Role::Tagger => c.tagger_step(&cfg),
                        }
                        std::thread::sleep(cfg.pause);
                    }
                    (c.events, c.images)
                }));
                id += 1;
            }
        }
        Mixed { stop, started, threads }
    }

    /// Time since the workload started: the clock of its history.
    pub fn now(&self) -> Duration {
        self.started.elapsed()
    }

    /// Stops the clients (each finishes its operation) and returns the merged history.
    pub fn stop(self) -> Recorded {
        self.stop.store(true, Ordering::SeqCst);
        let mut h = Recorded::default();
        for t in self.threads {
            let (events, images) = t.join().expect("a drill client panicked");
            h.events.extend(events);
            h.images.extend(images.into_iter().map(|i| (i.digest.clone(), i)));
        }
        h.events.sort_by_key(|e| e.invoked);
        h
    }
}

#[derive(Clone, Copy)]
enum Role {
    Pusher,
    Tagger,
}

struct DrillClient {
    id: usize,
    region: String,
    url: String,
    repo: String,
    http: reqwest::blocking::Client,
    rng: StdRng,
    started: Instant,
    events: Vec<Event>,
    images: Vec<Image>,
    /// The pusher's shared base layer.
    base: Vec<u8>,
    /// The pusher's acknowledged images not deleted since.
    mine: Vec<String>,
    pushed: usize,
}

impl DrillClient {
    fn new(id: usize, region: &str, url: &str, cfg: &MixedConfig, started: Instant) -> DrillClient {
        let mut rng = StdRng::seed_from_u64(cfg.seed.wrapping_mul(1_000_003).wrapping_add(id as u64));
        let base = bytes(&mut rng, 8 * 1024);
        DrillClient {
            id,
            region: region.to_owned(),
            url: url.to_owned(),
            repo: cfg.repo.clone(),
            http: reqwest::blocking::Client::builder().no_proxy().timeout(cfg.timeout).build().unwrap(),
            rng,
            started,
            events: Vec::new(),
            images: Vec::new(),
            base,
            mine: Vec::new(),
            pushed: 0,
        }
    }

    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    fn record(&mut self, op: Op, invoked: Duration, outcome: Outcome) -> bool {
        let ok = outcome == Outcome::Ok;
        self.events.push(Event { client: self.id, region: self.region.clone(), op, invoked, completed: self.now(), outcome });
        ok
    }

    fn record_result<T>(&mut self, op: Op, invoked: Duration, r: Result<T, Refusal>) -> bool {
        let outcome = match r {
            Ok(_) => Outcome::Ok,
            Err(r) => Outcome::of_refusal(r.status, &r.body),
        };
        self.record(op, invoked, outcome)
    }

    /// A new image of a unique config and these layers; remembered for the checkers.
    fn image(&mut self, layers: Vec<Vec<u8>>) -> Image {
        let config = format!(r#"{{"architecture":"amd64","os":"linux","drill":"{}-{}"}}"#, self.id, self.rng.gen::<u64>()).into_bytes();
        let img = image_of_layers(config, layers);
        self.images.push(img.clone());
        img
    }

    /// Uploads every blob of `img`, one recorded operation each; whether all were acknowledged.
    fn upload_all(&mut self, img: &Image) -> bool {
        for (digest, data) in &img.blobs {
            let t = self.now();
            let r = upload_blob(&self.http, &self.url, &self.repo, digest, data);
            if !self.record_result(Op::Upload { repo: self.repo.clone(), digest: digest.clone() }, t, r) {
                return false;
            }
        }
        true
    }

    fn pusher_step(&mut self) {
        let roll = self.rng.gen_range(0..100);
        if roll < 60 || self.mine.is_empty() {
            let unique = bytes(&mut self.rng, 4 * 1024);
            let img = self.image(vec![self.base.clone(), unique]);
            if !self.upload_all(&img) {
                return;
            }
            let tag = format!("c{}-{}", self.id, self.pushed);
            self.pushed += 1;
            let t = self.now();
            let r = put_manifest(&self.http, &self.url, &self.repo, &tag, &img.manifest);
            if self.record_result(Op::Push { repo: self.repo.clone(), tag, digest: img.digest.clone() }, t, r) {
                self.mine.push(img.digest);
            }
        } else if roll < 85 {
            let digest = self.mine[self.rng.gen_range(0..self.mine.len())].clone();
            let img = self.images.iter().find(|i| i.digest == digest).expect("own image").clone();
            let t = self.now();
            let outcome = match check_pulls(&self.http, &self.url, &self.repo, &digest, &img) {
                Ok(()) => Outcome::Ok,
                Err(e) => Outcome::Unknown(format!("pull {e}")),
            };
            self.record(Op::Pull { repo: self.repo.clone(), digest }, t, outcome);
        } else {
            let digest = self.mine.swap_remove(self.rng.gen_range(0..self.mine.len()));
            let t = self.now();
            // A 404 here is not "deleted": the client acknowledged this manifest and never
            // deleted it before, so it is recorded as a refusal and the loss shows up in the
            // checkers.
            let r = match delete_manifest(&self.http, &self.url, &self.repo, &digest) {
                Ok(202) => Ok(()),
                Ok(s) => Err(Refusal { status: s, retry_after: None, body: "manifest unknown".into() }),
                Err(r) => Err(r),
            };
            let refused = matches!(&r, Err(r) if (400..500).contains(&r.status) && r.status != 404);
            self.record_result(Op::DeleteManifest { repo: self.repo.clone(), digest: digest.clone() }, t, r);
            if refused {
                self.mine.push(digest);
            }
        }
    }

    fn tagger_step(&mut self, cfg: &MixedConfig) {
        let generation = self.now().as_millis() / cfg.tag_generation.as_millis().max(1);
        let tag = format!("hot{}-g{generation}", self.rng.gen_range(0..cfg.hot_tags));
        let repo = self.repo.clone();
        let roll = self.rng.gen_range(0..100);
        if roll < 35 {
            let layer = bytes(&mut self.rng, 512);
            let img = self.image(vec![layer]);
            if !self.upload_all(&img) {
                return;
            }
            let t = self.now();
            let r = put_manifest(&self.http, &self.url, &repo, &tag, &img.manifest);
            self.record_result(Op::SetTag { repo, tag, to: Some(img.digest) }, t, r);
        } else if roll < 42 {
            let t = self.now();
            let r = delete_manifest(&self.http, &self.url, &repo, &tag);
            self.record_result(Op::SetTag { repo, tag, to: None }, t, r);
        } else {
            let linearizable = roll < 71;
            let query = if linearizable { "?consistency=linearizable" } else { "" };
            let t = self.now();
            let (got, outcome) = match try_get_manifest(&self.http, &self.url, &repo, &tag, query) {
                Ok((200, body)) => (Some(sha256_digest(&body)), Outcome::Ok),
                Ok((404, _)) => (None, Outcome::Ok),
                Ok((s, body)) => (None, Outcome::of_refusal(s, &String::from_utf8_lossy(&body))),
                Err(e) => (None, Outcome::Unknown(format!("0 {e}"))),
            };
            self.record(Op::ReadTag { repo, tag, linearizable, got }, t, outcome);
        }
    }
}

fn bytes(rng: &mut StdRng, n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    rng.fill_bytes(&mut b);
    b
}
