//! Every listener of the node (the public API, the internal endpoints, `/metrics`) is served
//! here, with the bounds a stranger must not be able to exceed:
//! - at most `server.max_connections` connections per listener, and
//!   `server.max_connections_per_client` per client (an IPv4 address or an IPv6 prefix, as
//!   [`crate::client`] keys it; a trusted proxy is many clients, so only the listener's cap
//!   applies to it); one over is closed in the accept
//!   loop itself, before the next connection is accepted, so half-open connections (and a flood
//!   of new ones outrunning the tasks that serve them) cannot exhaust the node's file
//!   descriptors, which would also cut it off from Postgres, Kubo and Raft;
//! - a request's head (and a TLS handshake, and an idle keep-alive connection's next request)
//!   must arrive within `server.header_read_timeout_secs`;
//! - a request body that sends nothing, and a response the client stops reading, fail after
//!   `server.body_idle_timeout_secs` without progress;
//! - on shutdown, requests in flight get `server.drain_secs`, then the node stops anyway.
//!
//! axum-server runs the accept loop, the TLS handshake with its timeout, hyper's header-read
//! timeout and the bounded drain, and tower-http's `TimeoutBody` the request-body bound. What no
//! crate offers, the connection caps and the bound on a stalled response write, is the small
//! listener ([`Capped`], plugged into axum-server as its own [`Address`]) and stream wrapper
//! below. The caps sit in the listener rather than in an axum-server acceptor because the
//! acceptor runs in each connection's spawned task: under a flood the accept loop would run
//! ahead of those tasks, and every connection waiting for its task would hold a descriptor.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use afreg_config::ServerConfig;
use axum::extract::connect_info::Connected;
use axum::Router;
use axum_server::tls_rustls::RustlsAcceptor;
use axum_server::{AddrListener, Address, Handle};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower_http::timeout::RequestBodyTimeoutLayer;

use super::tls::{self, Tls};
use crate::client::{ClientAddresses, ClientKey};

/// The bounds of one listener.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    pub max_connections_per_client: usize,
    pub clients: ClientAddresses,
    pub header_read: Duration,
    pub body_idle: Duration,
    pub drain: Duration,
}

impl Limits {
    pub fn from_config(s: &ServerConfig) -> Limits {
        Limits {
            max_connections: s.max_connections,
            max_connections_per_client: s.max_connections_per_client,
            clients: ClientAddresses::new(s),
            header_read: Duration::from_secs(s.header_read_timeout_secs),
            body_idle: Duration::from_secs(s.body_idle_timeout_secs),
            drain: Duration::from_secs(s.drain_secs),
        }
    }
}

/// Binds a listener on `addr`; `shared` sets SO_REUSEPORT, so that several processes of a
/// region on one host serve one port (the kernel spreads connections over them, and a
/// process that exits leaves the others serving it).
pub fn bind(addr: SocketAddr, shared: bool) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    if shared {
        socket.set_reuseport(true)?;
    }
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Serves `app` on `listener` (over TLS when `tls` is set) within `limits` until `shutdown`
/// completes, then drains for at most `limits.drain`. `name` labels the listener's metrics.
pub async fn serve(
    name: &'static str,
    listener: tokio::net::TcpListener,
    app: Router,
    tls: Option<Tls>,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = app.layer(RequestBodyTimeoutLayer::new(limits.body_idle));
    let make = app.into_make_service_with_connect_info::<SocketAddr>();
    let handle = Handle::new();
    let h = handle.clone();
    let drain = limits.drain;
    tokio::spawn(async move {
        shutdown.await;
        h.graceful_shutdown(Some(drain));
    });
    let listener = Capped { inner: listener, slots: Slots::new(name, limits.clone()) };
    let result = match tls {
        None => {
            let mut server = axum_server::Server::<Peer>::from_listener(listener);
            configure(server.http_builder(), &limits);
            server.first_request_timeout(limits.header_read).handle(handle).serve(make).await
        }
        Some(t) => {
            let (config, reload) = tls::rustls_config(t).await?;
            let acceptor = RustlsAcceptor::new(config).handshake_timeout(limits.header_read);
            let mut server = axum_server::Server::<Peer>::from_listener(listener).acceptor(acceptor);
            configure(server.http_builder(), &limits);
            let r = server.first_request_timeout(limits.header_read).handle(handle).serve(make).await;
            if let Some(task) = reload {
                task.abort();
            }
            r
        }
    };
    Ok(result?)
}

fn configure(b: &mut hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>, limits: &Limits) {
    // hyper starts this clock whenever it waits for a request head: on a new connection and
    // on an idle keep-alive one alike.
    b.http1().header_read_timeout(Some(limits.header_read));
}

/// A client's address, as axum-server's [`Address`] of a [`Capped`] listener (handlers see it
/// as the plain `SocketAddr` of `ConnectInfo`).
#[derive(Debug, Clone, Copy)]
pub struct Peer(SocketAddr);

impl Address for Peer {
    type Stream = Guarded<TcpStream>;
    type Listener = Capped;
}

impl Connected<Peer> for SocketAddr {
    fn connect_info(peer: Peer) -> SocketAddr {
        peer.0
    }
}

/// A TCP listener that yields only the connections within its caps: one past them is closed
/// here, in the accept loop, before the next is accepted.
pub struct Capped {
    inner: TcpListener,
    slots: Slots,
}

impl AddrListener<Guarded<TcpStream>, Peer> for Capped {
    async fn bind_to(_: Peer) -> io::Result<Self> {
        Err(io::Error::new(io::ErrorKind::Unsupported, "a capped listener is made from a bound socket"))
    }

    async fn accept_stream(&self) -> io::Result<(Guarded<TcpStream>, Peer)> {
        loop {
            // `accept` spends tokio's cooperative budget, so a flood of refusals still yields.
            let (stream, peer) = self.inner.accept().await?;
            if let Some(admitted) = self.slots.admit(stream, peer.ip()) {
                return Ok((admitted, Peer(peer)));
            }
        }
    }

    fn get_local_addr(&self) -> io::Result<Peer> {
        self.inner.local_addr().map(Peer)
    }
}

/// A listener's caps: the open connections in all, and per client.
struct Slots {
    name: &'static str,
    total: Arc<Semaphore>,
    per_client: Arc<Mutex<HashMap<ClientKey, usize>>>,
    limits: Limits,
}

impl Slots {
    fn new(name: &'static str, limits: Limits) -> Slots {
        Slots { name, total: Arc::new(Semaphore::new(limits.max_connections)), per_client: Default::default(), limits }
    }

    /// The connection within the caps, or `None` (and the stream closed) past them.
    fn admit(&self, stream: TcpStream, client: IpAddr) -> Option<Guarded<TcpStream>> {
        let refused = |reason: &'static str| {
            metrics::counter!("afreg_connections_refused_total", "listener" => self.name, "reason" => reason)
                .increment(1);
            None
        };
        let Ok(permit) = self.total.clone().try_acquire_owned() else { return refused("listener") };
        let client = (!self.limits.clients.is_trusted_proxy(client)).then(|| self.limits.clients.key(client));
        if let Some(key) = client {
            let mut map = self.per_client.lock().unwrap();
            let n = map.entry(key).or_insert(0);
            if *n >= self.limits.max_connections_per_client {
                return refused("client");
            }
            *n += 1;
        }
        metrics::gauge!("afreg_connections_open", "listener" => self.name).increment(1.0);
        let slot = Slot { name: self.name, _permit: permit, client, per_client: self.per_client.clone() };
        Some(Guarded { inner: stream, _slot: slot, write_idle: self.limits.body_idle, stall: None })
    }
}

/// A connection's place in its listener's caps, given back when the connection closes.
struct Slot {
    name: &'static str,
    _permit: OwnedSemaphorePermit,
    /// `None`: a trusted proxy, outside the per-client cap.
    client: Option<ClientKey>,
    per_client: Arc<Mutex<HashMap<ClientKey, usize>>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(client) = &self.client {
            let mut map = self.per_client.lock().unwrap();
            if let Some(n) = map.get_mut(client) {
                *n -= 1;
                if *n == 0 {
                    map.remove(client);
                }
            }
        }
        metrics::gauge!("afreg_connections_open", "listener" => self.name).decrement(1.0);
    }
}

/// An accepted connection: holds its [`Slot`], and fails a write that the client has not let
/// through (its receive window stayed full) for `write_idle`.
pub struct Guarded<S> {
    inner: S,
    _slot: Slot,
    write_idle: Duration,
    stall: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> Guarded<S> {
    /// Called with the result of a write: progress clears the stall clock; `Pending` starts it
    /// (or checks it), and past `write_idle` the write fails.
    fn bound_write<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if r.is_ready() {
            self.stall = None;
            return r;
        }
        let idle = self.write_idle;
        let stall = self.stall.get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
        match stall.as_mut().poll(cx) {
            Poll::Ready(()) => {
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "the client stopped reading the response")))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.bound_write(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.bound_write(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.bound_write(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
