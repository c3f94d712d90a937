//! Fault injection for afreg clusters, with real processes and real sockets.
//!
//! afreg's regions talk to each other over their internal endpoints (Raft RPCs, forwarded
//! writes, read indexes, membership). On loopback those round trips take microseconds, which
//! proves nothing about the two things a WAN deployment depends on: that the default Raft
//! timings hold when a round trip takes 100–300 ms, and that a region cut off from the others
//! keeps serving pulls, refuses pushes promptly and catches up once it is reachable again.
//! This crate puts a [`Link`] — a TCP proxy with faults that a test changes while traffic
//! flows — between the regions, so the scenarios in `tests/` can exercise exactly that against
//! real `afreg serve` processes, each with its own Postgres and Kubo (no mocks).
//!
//! * [`Link::start`] forwards every connection to one target (a region's internal listener);
//!   the region advertises the link's address instead of its own, so every other region
//!   reaches it only through the link.
//! * [`Link::http_proxy`] is the same machinery as an HTTP forward proxy: a region whose
//!   `HTTP_PROXY` points at it sends its outbound internal traffic through it. All clients of
//!   a link come from 127.0.0.1, so the inbound link alone cannot tell one region from another;
//!   the per-region outbound proxy is what makes a one-region partition two-sided
//!   ([`RegionNet`]).
//!
//! Faults:
//! * [`Link::set_delay`] adds a one-way delay to every chunk in both directions. Each chunk is
//!   timestamped when read and written once its deadline passes, so the delay does not
//!   serialize throughput (many chunks are in flight, as on a long fat pipe). A new connection
//!   also pays for its TCP handshake: its first bytes leave one round trip later, as they would
//!   over a WAN.
//! * [`Link::set_blackhole`] is a partition: from then on nothing crosses the link in either
//!   direction, on existing connections and on new ones (accepted, then never answered: what a
//!   peer sees when packets are dropped is silence and timeouts, not a reset). When the
//!   blackhole lifts, the connections that lost bytes to it are closed (their byte streams are
//!   broken) and new connections flow again.
//! * [`Link::blackhole_after`] starts that partition at a chosen moment: once a client has sent
//!   a chunk containing the given bytes (a statement's parameters, a request line), its next
//!   chunk is dropped and the blackhole starts, so a test can silence a peer between two steps
//!   of one exchange.
//! * [`Link::sever`] closes every current connection at once (a reset).
//!
//! The links run on their own tokio runtime on background threads, and every method here is
//! synchronous, so plain `#[test]`s (and `#[tokio::test]`s alike) can drive them.
//!
//! Running the scenarios (they use the `afreg` binary of the same build, `testkit::afreg_bin`):
//!
//! ```text
//! cargo build --release -p afreg
//! cargo test --release -p chaos-tests -- --test-threads=1 --nocapture
//! ```
//!
//! `CHAOS_VERBOSE=1` prints per-request timings and election log lines.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// The loopback address inbound links listen on by default in cluster scenarios. It differs
/// from 127.0.0.1 (where Postgres, Kubo's API and the public registry ports listen), so a node
/// can send its traffic to links through an outbound proxy (`HTTP_PROXY`) while
/// `NO_PROXY=127.0.0.1` keeps everything else direct.
pub const LINK_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// The runtime every link runs on (two worker threads, started on first use).
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("chaos-link")
            .enable_all()
            .build()
            .expect("start the links' tokio runtime")
    })
}

/// The faults every connection of a link watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Faults {
    blackhole: bool,
    /// Bumped by [`Link::sever`]: connections from an older epoch close.
    epoch: u64,
    /// The link was dropped.
    closed: bool,
}

struct Shared {
    delay_us: AtomicU64,
    faults: watch::Sender<Faults>,
    live: AtomicUsize,
    accepted: AtomicU64,
    /// [`Link::blackhole_after`]'s bytes, until a client sends them.
    trigger: Mutex<Option<Vec<u8>>>,
}

impl Shared {
    fn delay(&self) -> Duration {
        Duration::from_micros(self.delay_us.load(Ordering::Relaxed))
    }
}

#[derive(Debug, Clone, Copy)]
enum Target {
    /// Every connection goes to this address.
    Fixed(SocketAddr),
    /// An HTTP forward proxy: each connection goes to the authority of its first request's
    /// absolute-form target (`POST http://host:port/path HTTP/1.1`), which is forwarded as is.
    HttpProxy,
}

/// A TCP link with runtime-controllable faults (see the crate documentation). Dropping it
/// stops listening and closes every connection through it.
pub struct Link {
    addr: SocketAddr,
    target: Option<SocketAddr>,
    shared: Arc<Shared>,
}

impl Link {
    /// A link on a free 127.0.0.1 port that forwards every connection to `target`.
    pub fn start(target: SocketAddr) -> Link {
        Self::start_on(Ipv4Addr::LOCALHOST.into(), target)
    }

    /// Like [`Link::start`], listening on a free port of `ip` (any 127.0.0.0/8 address works
    /// on Linux).
    pub fn start_on(ip: IpAddr, target: SocketAddr) -> Link {
        Self::spawn(ip, Target::Fixed(target))
    }

    /// An HTTP forward proxy on a free port of `ip`, with the same faults: point a process's
    /// `HTTP_PROXY` at [`Link::url`] to route its plain-HTTP requests through it.
    pub fn http_proxy(ip: IpAddr) -> Link {
        Self::spawn(ip, Target::HttpProxy)
    }

    fn spawn(ip: IpAddr, target: Target) -> Link {
        let std_listener = std::net::TcpListener::bind((ip, 0)).unwrap_or_else(|e| panic!("link: bind {ip}:0: {e}"));
        std_listener.set_nonblocking(true).expect("link: nonblocking listener");
        let addr = std_listener.local_addr().expect("link: local_addr");
        let rt = runtime();
        let listener = {
            let _in_rt = rt.enter();
            TcpListener::from_std(std_listener).expect("link: register listener")
        };
        let shared = Arc::new(Shared {
            delay_us: AtomicU64::new(0),
            faults: watch::Sender::new(Faults::default()),
            live: AtomicUsize::new(0),
            accepted: AtomicU64::new(0),
            trigger: Mutex::new(None),
        });
        rt.spawn(accept_loop(listener, target, shared.clone()));
        let target = match target {
            Target::Fixed(a) => Some(a),
            Target::HttpProxy => None,
        };
        Link { addr, target, shared }
    }

    /// The address the link listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://IP:PORT` of the link.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Where connections go (`None` for an HTTP proxy).
    pub fn target(&self) -> Option<SocketAddr> {
        self.target
    }

    /// Sets the one-way delay added to every chunk, in both directions (applies to chunks read
    /// from now on).
    pub fn set_delay(&self, d: Duration) {
        self.shared.delay_us.store(d.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn delay(&self) -> Duration {
        self.shared.delay()
    }

    /// Partitions (`true`) or heals (`false`) the link.
    pub fn set_blackhole(&self, on: bool) {
        self.shared.faults.send_modify(|f| f.blackhole = on);
    }

    /// Partitions the link at the chunk a client sends next after one containing `bytes` (which
    /// is forwarded): that next chunk never reaches the target, nor does anything after it in
    /// either direction, until [`Link::set_blackhole`]`(false)`.
    pub fn blackhole_after(&self, bytes: &[u8]) {
        *self.shared.trigger.lock().unwrap() = Some(bytes.to_vec());
    }

    pub fn is_blackholed(&self) -> bool {
        self.shared.faults.borrow().blackhole
    }

    /// Closes every connection currently open through the link (new ones are unaffected).
    pub fn sever(&self) {
        self.shared.faults.send_modify(|f| f.epoch += 1);
    }

    /// Connections open through the link right now (forwarding or held by a blackhole).
    pub fn connections(&self) -> usize {
        self.shared.live.load(Ordering::Relaxed)
    }

    /// Connections accepted since the link started.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.shared.faults.send_modify(|f| f.closed = true);
    }
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("addr", &self.addr)
            .field("target", &self.target)
            .field("delay", &self.delay())
            .field("faults", &*self.shared.faults.borrow())
            .finish()
    }
}

async fn accept_loop(listener: TcpListener, target: Target, shared: Arc<Shared>) {
    let mut faults = shared.faults.subscribe();
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((sock, _)) => {
                    let _ = sock.set_nodelay(true);
                    shared.accepted.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(connection(sock, target, shared.clone()));
                }
                // E.g. out of file descriptors: try again shortly.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            _ = until(&mut faults, |f| f.closed) => return,
        }
    }
}

/// Waits until the faults satisfy `pred` and returns them (as closed if the link is gone).
async fn until(rx: &mut watch::Receiver<Faults>, pred: impl FnMut(&Faults) -> bool) -> Faults {
    match rx.wait_for(pred).await {
        Ok(f) => *f,
        Err(_) => Faults { closed: true, ..Faults::default() },
    }
}

/// Counts a connection as live while it exists.
struct Live(Arc<Shared>);

impl Live {
    fn new(s: &Arc<Shared>) -> Live {
        s.live.fetch_add(1, Ordering::Relaxed);
        Live(s.clone())
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn connection(mut client: TcpStream, target: Target, shared: Arc<Shared>) {
    let _live = Live::new(&shared);
    let accepted = Instant::now();
    let mut faults = shared.faults.subscribe();
    let start = *faults.borrow_and_update();
    if start.closed {
        return;
    }
    let changed = |f: &Faults| f.blackhole || f.closed || f.epoch != start.epoch;
    if start.blackhole {
        silence(&mut client, None, &mut faults, start.epoch).await;
        return;
    }
    let mut head = Vec::new();
    let to = match target {
        Target::Fixed(a) => a,
        Target::HttpProxy => {
            let found = tokio::select! {
                r = proxy_target(&mut client, &mut head) => r.ok_or(None),
                f = until(&mut faults, changed) => Err(Some(f)),
            };
            match found {
                Ok(a) => a,
                Err(f) => {
                    if f.is_some_and(|f| f.blackhole && !f.closed && f.epoch == start.epoch) {
                        silence(&mut client, None, &mut faults, start.epoch).await;
                    }
                    return;
                }
            }
        }
    };
    let connected = tokio::select! {
        r = TcpStream::connect(to) => Ok(r),
        f = until(&mut faults, changed) => Err(f),
    };
    let mut server = match connected {
        Ok(Ok(s)) => s,
        // The target is down: the client sees its connection close, as with a refusal.
        Ok(Err(_)) => return,
        Err(f) => {
            if f.blackhole && !f.closed && f.epoch == start.epoch {
                silence(&mut client, None, &mut faults, start.epoch).await;
            }
            return;
        }
    };
    let _ = server.set_nodelay(true);
    let fault = {
        let (mut cr, mut cw) = client.split();
        let (mut sr, mut sw) = server.split();
        // The client's first bytes leave after one emulated round trip (its TCP handshake).
        let up = pipe(&mut cr, &mut sw, &shared, head, Some(accepted), true);
        let down = pipe(&mut sr, &mut cw, &shared, Vec::new(), None, false);
        tokio::select! {
            _ = async { tokio::try_join!(up, down) } => return,
            f = until(&mut faults, changed) => f,
        }
    };
    if fault.blackhole && !fault.closed && fault.epoch == start.epoch {
        silence(&mut client, Some(&mut server), &mut faults, start.epoch).await;
    }
    // Dropping both sockets closes the connection.
}

/// Copies `r` to `w`, each chunk released `delay` after it was read. `first` goes first (the
/// bytes an HTTP proxy read to find the target). With `handshake_from`, nothing is released
/// before one emulated round trip after that instant. From a client (`upstream`), a chunk that
/// follows one holding [`Shared::trigger`]'s bytes is dropped and starts the blackhole. Err when
/// `w` fails.
async fn pipe<R, W>(
    r: &mut R,
    w: &mut W,
    shared: &Shared,
    first: Vec<u8>,
    handshake_from: Option<Instant>,
    upstream: bool,
) -> Result<(), ()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(1024);
    let release_at = |now: Instant| {
        let d = shared.delay();
        let base = match handshake_from {
            Some(a) => now.max(a + 2 * d),
            None => now,
        };
        base + d
    };
    let reader = async move {
        if !first.is_empty() && tx.send((release_at(Instant::now()), first)).await.is_err() {
            return;
        }
        let mut buf = vec![0u8; 64 * 1024];
        let mut armed = false;
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => return, // dropping `tx` ends the writer after the queue
                Ok(n) => {
                    if armed {
                        shared.faults.send_modify(|f| f.blackhole = true);
                        // The connection's select sees the blackhole and silences it.
                        std::future::pending::<()>().await;
                    }
                    armed = upstream && triggered(shared, &buf[..n]);
                    if tx.send((release_at(Instant::now()), buf[..n].to_vec())).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    let writer = async move {
        while let Some((at, bytes)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            w.write_all(&bytes).await.map_err(|_| ())?;
        }
        let _ = w.shutdown().await;
        Ok::<(), ()>(())
    };
    let ((), written) = tokio::join!(reader, writer);
    written
}

/// Whether `chunk` holds the trigger's bytes; if so the trigger is spent.
fn triggered(shared: &Shared, chunk: &[u8]) -> bool {
    let mut trigger = shared.trigger.lock().unwrap();
    let hit = trigger.as_ref().is_some_and(|t| chunk.windows(t.len()).any(|w| w == t.as_slice()));
    if hit {
        *trigger = None;
    }
    hit
}

/// A blackholed connection: whatever either side sends is dropped and nothing is answered,
/// until the blackhole lifts (or the link is severed or dropped); then the caller closes it.
async fn silence(
    client: &mut TcpStream,
    server: Option<&mut TcpStream>,
    faults: &mut watch::Receiver<Faults>,
    epoch: u64,
) {
    let drain = async {
        let s = async {
            if let Some(s) = server {
                discard(s).await
            }
        };
        tokio::join!(discard(client), s);
    };
    tokio::select! {
        _ = until(faults, |f| !f.blackhole || f.closed || f.epoch != epoch) => {}
        _ = drain => {}
    }
}

async fn discard(s: &mut TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n) = s.read(&mut buf).await {
        if n == 0 {
            return;
        }
    }
}

/// Reads a request line (`METHOD http://host:port/path HTTP/1.1`) into `head` and resolves
/// its authority. `None` for anything else (the connection is closed).
async fn proxy_target(client: &mut TcpStream, head: &mut Vec<u8>) -> Option<SocketAddr> {
    let mut buf = [0u8; 4096];
    while !head.windows(2).any(|w| w == b"\r\n") {
        if head.len() > 16 * 1024 {
            return None;
        }
        let n = client.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line_end = head.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&head[..line_end]).ok()?;
    let uri = line.split_whitespace().nth(1)?;
    let rest = uri.strip_prefix("http://")?;
    let authority = rest.split(['/', '?']).next()?;
    let authority = authority.rsplit('@').next()?; // no credentials expected; ignore them
    let with_port = if authority.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    tokio::net::lookup_host(with_port).await.ok()?.next()
}

/// One region's network in a cluster scenario: an inbound [`Link`] in front of its internal
/// listener (what the region advertises to the others) and an outbound [`Link::http_proxy`]
/// that its own requests to the others' links go through. Cutting both is a real two-sided
/// partition of that region's internal traffic.
pub struct RegionNet {
    pub inbound: Link,
    pub outbound: Link,
}

impl RegionNet {
    /// The inbound link (on [`LINK_IP`]) to the internal listener at `internal`, and the
    /// outbound proxy (on 127.0.0.1).
    pub fn start(internal: SocketAddr) -> RegionNet {
        RegionNet {
            inbound: Link::start_on(LINK_IP.into(), internal),
            outbound: Link::http_proxy(Ipv4Addr::LOCALHOST.into()),
        }
    }

    /// The URL the region advertises to the others (`cluster.advertise_url`).
    pub fn advertise_url(&self) -> String {
        self.inbound.url()
    }

    /// The environment that sends the node's plain-HTTP requests to other regions' links
    /// through [`RegionNet::outbound`] while its own Postgres, Kubo and the public ports
    /// (all on 127.0.0.1) stay direct.
    pub fn node_env(&self) -> Vec<(String, String)> {
        let proxy = self.outbound.url();
        let direct = "127.0.0.1,localhost".to_owned();
        vec![
            ("HTTP_PROXY".into(), proxy.clone()),
            ("http_proxy".into(), proxy),
            ("NO_PROXY".into(), direct.clone()),
            ("no_proxy".into(), direct),
        ]
    }

    /// Cuts the region off from every other region, both ways.
    pub fn partition(&self) {
        self.inbound.set_blackhole(true);
        self.outbound.set_blackhole(true);
    }

    pub fn heal(&self) {
        self.inbound.set_blackhole(false);
        self.outbound.set_blackhole(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream as StdStream;
    use std::time::Instant as StdInstant;

    /// A thread-per-connection echo server on 127.0.0.1.
    fn echo_server() -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16 * 1024];
                    loop {
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if s.write_all(&buf[..n]).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        addr
    }

    fn connect(addr: SocketAddr) -> StdStream {
        let s = StdStream::connect(addr).unwrap();
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    }

    fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// Sends `data` and reads the echo back on another thread (so neither side blocks).
    fn round_trip(s: &StdStream, data: &[u8]) -> Vec<u8> {
        let mut reader = s.try_clone().unwrap();
        let len = data.len();
        let r = std::thread::spawn(move || {
            let mut got = vec![0u8; len];
            reader.read_exact(&mut got).map(|_| got)
        });
        let mut w = s.try_clone().unwrap();
        for chunk in data.chunks(100 * 1024) {
            w.write_all(chunk).unwrap();
        }
        r.join().unwrap().expect("echo back through the link")
    }

    #[test]
    fn bytes_arrive_intact_both_ways_on_many_connections() {
        let link = Link::start(echo_server());
        link.set_delay(Duration::from_millis(5));
        let handles: Vec<_> = (0..4u64)
            .map(|i| {
                let addr = link.addr();
                std::thread::spawn(move || {
                    let data = pseudo_random(3 * 1024 * 1024 + 17 * i as usize, i + 1);
                    let s = connect(addr);
                    assert_eq!(round_trip(&s, &data), data, "connection {i}: bytes changed");
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(link.accepted(), 4);
    }

    #[test]
    fn the_delay_is_added_one_way_in_each_direction() {
        let link = Link::start(echo_server());
        link.set_delay(Duration::from_millis(100));
        let s = connect(link.addr());
        // The first exchange also pays for the emulated handshake; measure later ones.
        round_trip(&s, b"warm-up");
        for i in 0..3 {
            let started = StdInstant::now();
            assert_eq!(round_trip(&s, b"ping"), b"ping");
            let rtt = started.elapsed();
            assert!(rtt >= Duration::from_millis(200), "round trip {i} through a 100 ms link took {rtt:?}");
        }
        // Changing the delay at run time takes effect.
        link.set_delay(Duration::ZERO);
        let started = StdInstant::now();
        round_trip(&s, b"ping");
        let fast = started.elapsed();
        link.set_delay(Duration::from_millis(150));
        let started = StdInstant::now();
        round_trip(&s, b"ping");
        let slow = started.elapsed();
        assert!(slow >= Duration::from_millis(300), "150 ms link: {slow:?}");
        assert!(fast < slow, "no delay {fast:?} vs 150 ms {slow:?}");
    }

    #[test]
    fn a_new_connection_pays_for_its_handshake() {
        let link = Link::start(echo_server());
        link.set_delay(Duration::from_millis(100));
        let started = StdInstant::now();
        let s = connect(link.addr());
        round_trip(&s, b"first");
        // SYN/SYN-ACK (one round trip), then the request and its answer (another).
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(400), "first exchange on a new 100 ms connection took {took:?}");
    }

    #[test]
    fn the_delay_does_not_serialize_chunks() {
        let link = Link::start(echo_server());
        link.set_delay(Duration::from_millis(100));
        let s = connect(link.addr());
        round_trip(&s, b"warm-up");
        let mut reader = s.try_clone().unwrap();
        let n = 40;
        let r = std::thread::spawn(move || {
            let mut got = vec![0u8; n];
            reader.read_exact(&mut got).unwrap();
        });
        let started = StdInstant::now();
        let mut w = s.try_clone().unwrap();
        for _ in 0..n {
            // Separate writes a few ms apart: separate chunks through the link.
            w.write_all(b"x").unwrap();
            std::thread::sleep(Duration::from_millis(5));
        }
        r.join().unwrap();
        let took = started.elapsed();
        // Serialized, 40 chunks would need 40 x 200 ms = 8 s.
        assert!(took >= Duration::from_millis(200), "{took:?}");
        assert!(
            took < Duration::from_secs(3),
            "40 chunks through a 100 ms link took {took:?}: the delay serializes them"
        );
    }

    #[test]
    fn a_blackhole_silences_existing_and_new_connections_until_it_lifts() {
        let link = Link::start(echo_server());
        let old = connect(link.addr());
        assert_eq!(round_trip(&old, b"before"), b"before");
        link.set_blackhole(true);
        assert!(link.is_blackholed());

        // Existing connection: the bytes vanish, nothing comes back.
        let mut o = old.try_clone().unwrap();
        o.set_read_timeout(Some(Duration::from_millis(700))).unwrap();
        o.write_all(b"lost").unwrap();
        let mut buf = [0u8; 16];
        let e = o.read(&mut buf).expect_err("an answer crossed the blackhole");
        assert!(matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut), "{e:?}");

        // New connection: accepted (as the kernel does), then silence.
        let mut new = connect(link.addr());
        new.set_read_timeout(Some(Duration::from_millis(700))).unwrap();
        new.write_all(b"hello?").unwrap();
        let e = new.read(&mut buf).expect_err("a new connection crossed the blackhole");
        assert!(matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut), "{e:?}");
        assert_eq!(link.connections(), 2);

        // Healing closes the connections that lost bytes; new ones flow again.
        link.set_blackhole(false);
        for (name, s) in [("old", &mut o), ("new", &mut new)] {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            match s.read(&mut buf) {
                Ok(0) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
                other => panic!("{name} connection after the heal: {other:?}"),
            }
        }
        let fresh = connect(link.addr());
        assert_eq!(round_trip(&fresh, b"after"), b"after");
    }

    #[test]
    fn sever_closes_current_connections_only() {
        let link = Link::start(echo_server());
        let mut s = connect(link.addr());
        assert_eq!(round_trip(&s, b"a"), b"a");
        link.sever();
        let mut buf = [0u8; 4];
        match s.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("after sever: {other:?}"),
        }
        let fresh = connect(link.addr());
        assert_eq!(round_trip(&fresh, b"b"), b"b");
    }

    #[test]
    fn the_http_proxy_forwards_to_the_request_target_through_a_link() {
        let echo = echo_server();
        let inbound = Link::start_on(LINK_IP.into(), echo);
        inbound.set_delay(Duration::from_millis(50));
        let proxy = Link::http_proxy(Ipv4Addr::LOCALHOST.into());
        let s = connect(proxy.addr());
        let mut request =
            format!("POST {}/internal/raft/append HTTP/1.1\r\nhost: {}\r\n\r\n", inbound.url(), inbound.addr())
                .into_bytes();
        request.extend(pseudo_random(256 * 1024, 7));
        let started = StdInstant::now();
        assert_eq!(round_trip(&s, &request), request, "bytes through proxy and link");
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert_eq!(inbound.accepted(), 1);

        // Cutting the proxy cuts the requests it carries.
        proxy.set_blackhole(true);
        let mut cut = connect(proxy.addr());
        cut.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        cut.write_all(format!("GET {}/ HTTP/1.1\r\n\r\n", inbound.url()).as_bytes()).unwrap();
        let mut buf = [0u8; 8];
        assert!(cut.read(&mut buf).is_err(), "a request crossed the blackholed proxy");
        assert_eq!(inbound.accepted(), 1, "the blackholed proxy connected to the target");
    }
}
