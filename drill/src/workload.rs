//! The drills' concurrent workload: on every region, a pusher (uploads, pushes of new images
//! sharing a base layer, pulls and deletes of its own images) and taggers (moving and deleting
//! a few hot tags, reading them linearizably and regionally), every client recording each
//! operation into a [`History`](crate::history::History) for the checkers. Each client's
//! choices and bytes derive from the seed, so a drill is reproducible from it.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

use crate::history::{Event, History as Recorded, Op, Outcome};
use crate::oci::{
    check_pulls, delete_manifest, image_of_layers, put_manifest, sha256_digest, try_get_manifest, upload_blob,
    Endpoint, Image, Refusal, TOKEN_REFRESH,
};

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
    progress: Arc<Progress>,
}

/// Running totals of a [`Mixed`] workload, for progress reports while it runs.
#[derive(Default, Debug)]
pub struct Progress {
    pub ops: AtomicUsize,
    pub acked_writes: AtomicUsize,
    pub errors: AtomicUsize,
}

impl Mixed {
    /// Starts the clients against `regions`.
    pub fn start(regions: &[Endpoint], cfg: &MixedConfig) -> Mixed {
        let stop = Arc::new(AtomicBool::new(false));
        let progress = Arc::new(Progress::default());
        let started = Instant::now();
        // The run's own tag names: a cluster that ran drills before still holds their tags
        // (which this run's checkers would read as values nobody wrote). Only the names depend
        // on it; every client's choices and bytes still derive from the seed alone.
        let run = format!(
            "r{:x}",
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis()
                % 0xffff_ffff
        );
        let mut threads = Vec::new();
        let mut id = 0;
        for region in regions {
            for role in std::iter::once(Role::Pusher).chain(std::iter::repeat_n(Role::Tagger, cfg.taggers)) {
                let mut c = DrillClient::new(id, region, cfg, started, progress.clone(), run.clone());
                let (stop, cfg) = (stop.clone(), cfg.clone());
                threads.push(std::thread::spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        c.refresh();
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
        Mixed { stop, started, threads, progress }
    }

    /// Time since the workload started: the clock of its history.
    pub fn now(&self) -> Duration {
        self.started.elapsed()
    }

    /// Totals so far: operations, acknowledged writes, errors.
    pub fn progress(&self) -> (usize, usize, usize) {
        let p = &self.progress;
        (p.ops.load(Ordering::Relaxed), p.acked_writes.load(Ordering::Relaxed), p.errors.load(Ordering::Relaxed))
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
    endpoint: Endpoint,
    repo: String,
    timeout: Duration,
    http: reqwest::blocking::Client,
    /// Starts every tag name of this run.
    run: String,
    /// When to fetch a new token ([`Endpoint::client`]), for an endpoint with credentials.
    next_token: Instant,
    progress: Arc<Progress>,
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
    fn new(
        id: usize,
        region: &Endpoint,
        cfg: &MixedConfig,
        started: Instant,
        progress: Arc<Progress>,
        run: String,
    ) -> DrillClient {
        let mut rng = StdRng::seed_from_u64(cfg.seed.wrapping_mul(1_000_003).wrapping_add(id as u64));
        let base = bytes(&mut rng, 8 * 1024);
        // Until a token comes (the region may be down at the start), requests go without one.
        let plain = reqwest::blocking::Client::builder().no_proxy().timeout(cfg.timeout).build().unwrap();
        DrillClient {
            id,
            region: region.name.clone(),
            url: region.url.clone(),
            endpoint: region.clone(),
            repo: cfg.repo.clone(),
            timeout: cfg.timeout,
            http: plain,
            next_token: Instant::now(),
            run,
            progress,
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

    /// A client with a fresh token every [`TOKEN_REFRESH`], when the region wants one; while
    /// the region cannot issue one (it is down), the last client is kept and the next step
    /// tries again.
    fn refresh(&mut self) {
        if self.endpoint.credentials.is_none() || Instant::now() < self.next_token {
            return;
        }
        match self.endpoint.client(&self.repo, self.timeout) {
            Ok(c) => {
                self.http = c;
                self.next_token = Instant::now() + TOKEN_REFRESH;
            }
            Err(_) => self.next_token = Instant::now() + Duration::from_secs(5),
        }
    }

    fn record(&mut self, op: Op, invoked: Duration, outcome: Outcome) -> bool {
        let ok = outcome == Outcome::Ok;
        self.progress.ops.fetch_add(1, Ordering::Relaxed);
        if ok && op.is_write() {
            self.progress.acked_writes.fetch_add(1, Ordering::Relaxed);
        } else if !ok {
            self.progress.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.events.push(Event {
            client: self.id,
            region: self.region.clone(),
            op,
            invoked,
            completed: self.now(),
            outcome,
            changed_nothing: false,
        });
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
        let config =
            format!(r#"{{"architecture":"amd64","os":"linux","drill":"{}-{}"}}"#, self.id, self.rng.gen::<u64>())
                .into_bytes();
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
            let tag = format!("{}-c{}-{}", self.run, self.id, self.pushed);
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
        let tag = format!("{}-hot{}-g{generation}", self.run, self.rng.gen_range(0..cfg.hot_tags));
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
            let absent = matches!(r, Ok(404));
            self.record_result(Op::SetTag { repo, tag, to: None }, t, r);
            if let Some(e) = self.events.last_mut().filter(|_| absent) {
                e.changed_nothing = true;
            }
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
