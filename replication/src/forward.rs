//! Sending an operation to where it can run: a write, a read index or a membership change to
//! the leader's region, or anything a standby process cannot do to this region's seat holder.
//! [`Forwarder`] holds the clients of the other regions' and processes' internal endpoints and
//! reads their answers as retry (nothing was done) or fail. Where to send is the cluster's
//! decision; this file only sends, and so imports neither the cluster nor the Raft member.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::ClusterError;
use crate::rpc::wire::{FORWARDED, RELAYED};
use crate::seat::Holder;
use crate::secret::ClusterSecret;
use crate::types::{Region, Timings};

/// The internal endpoints' clients: one for the other regions (and the Raft network), and one
/// per seat holder whose URL's host is pinned to an address.
pub(crate) struct Forwarder {
    secret: ClusterSecret,
    http: reqwest::Client,
    timings: Timings,
    roots: Vec<reqwest::Certificate>,
    /// A client per holder whose URL's host resolves to a given address.
    relay_client: std::sync::Mutex<Option<(Holder, reqwest::Client)>>,
}

impl Forwarder {
    /// Clients that trust the public roots and `roots`, and connect within the shortest
    /// election timeout.
    pub(crate) fn new(
        secret: ClusterSecret,
        roots: Vec<reqwest::Certificate>,
        timings: Timings,
    ) -> reqwest::Result<Forwarder> {
        let http = client_builder(&roots, timings).build()?;
        Ok(Forwarder { secret, http, timings, roots, relay_client: Default::default() })
    }

    pub(crate) fn secret(&self) -> &ClusterSecret {
        &self.secret
    }

    /// The client of the other regions' internal endpoints.
    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The client that reaches `h` (its URL's host pinned to its address, when it has one, so
    /// that TLS checks the region's certificate name). Its requests need their own timeout.
    pub(crate) fn client_for(&self, h: &Holder) -> reqwest::Client {
        let Some(addr) = h.addr else { return self.http.clone() };
        let mut cached = self.relay_client.lock().unwrap();
        if let Some((for_holder, c)) = cached.as_ref() {
            if for_holder.url == h.url && for_holder.addr == h.addr {
                return c.clone();
            }
        }
        let host = reqwest::Url::parse(&h.url).ok().and_then(|u| u.host_str().map(str::to_owned)).unwrap_or_default();
        let c = client_builder(&self.roots, self.timings)
            .resolve(&host, addr)
            .build()
            .unwrap_or_else(|_| self.http.clone());
        *cached = Some((h.clone(), c.clone()));
        c
    }

    /// Sends an operation to the leader's region (marked forwarded: it is not forwarded again)
    /// or to this region's seat holder (marked only when the holder must not forward it).
    pub(crate) async fn forward<R: serde::de::DeserializeOwned>(
        &self,
        to: &Target<'_>,
        path: &str,
        body: &impl Serialize,
        deadline: Instant,
    ) -> Result<R, Forward> {
        let (req, name) = match to {
            Target::Region(r) => (
                self.http.post(format!("{}{path}", r.raft_addr.trim_end_matches('/'))).header(FORWARDED, "1"),
                format!("leader {}", r.name),
            ),
            Target::Holder(h, may_forward) => {
                let req =
                    self.client_for(h).post(format!("{}{path}", h.url.trim_end_matches('/'))).header(RELAYED, "1");
                (if *may_forward { req } else { req.header(FORWARDED, "1") }, format!("seat holder {}", h.name))
            }
        };
        let resp = req
            .bearer_auth(self.secret.expose())
            .timeout(deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1)))
            .json(body)
            .send()
            .await;
        let resp = match resp {
            Ok(r) => r,
            // Not sent: safe to try again (perhaps at a new leader).
            Err(e) if e.is_connect() => return Err(Forward::Retry(format!("{name} unreachable: {e}"))),
            Err(e) => {
                return Err(Forward::Fail(ClusterError::Unavailable(format!(
                    "forwarding to {name}: {e}; the outcome is unknown, retry"
                ))))
            }
        };
        let status = resp.status();
        if status.is_success() {
            return resp
                .json::<R>()
                .await
                .map_err(|e| Forward::Fail(ClusterError::Unavailable(format!("leader reply: {e}"))));
        }
        let text = resp.text().await.unwrap_or_default();
        match status.as_u16() {
            // The holder does not lead, and the operation must not be forwarded: final.
            409 if matches!(to, Target::Holder(_, false)) => Err(Forward::Fail(ClusterError::NotLeader(text))),
            // The leader moved, or the seat did, before the request arrived: nothing was proposed.
            409 | 421 => Err(Forward::Retry(text)),
            400 => Err(Forward::Fail(ClusterError::Refused(text))),
            _ => Err(Forward::Fail(ClusterError::Unavailable(format!("{name} answered {status}: {text}")))),
        }
    }
}

/// Why a forwarded operation did not come back with an answer.
pub(crate) enum Forward {
    /// Nothing was done (not sent, or the receiver was no longer the leader or the seat
    /// holder): safe to try again.
    Retry(String),
    /// Final, or the outcome is unknown ([`ClusterError::Unavailable`]).
    Fail(ClusterError),
}

/// The internal endpoints' client: the public roots and `roots`, a connect timeout of one
/// election timeout, idle connections kept a minute.
fn client_builder(roots: &[reqwest::Certificate], t: Timings) -> reqwest::ClientBuilder {
    let mut b = reqwest::Client::builder()
        .connect_timeout(Duration::from_millis(t.election_timeout_min_ms))
        .pool_idle_timeout(Duration::from_secs(60));
    for r in roots {
        b = b.add_root_certificate(r.clone());
    }
    b
}

/// Where [`Forwarder::forward`] sends an operation.
pub(crate) enum Target<'a> {
    /// The leader's region, at its internal URL.
    Region(&'a Region),
    /// This region's seat holder, at its own internal listener, and whether the holder may
    /// forward the operation to the leader's region (if not, it is marked forwarded, and a
    /// holder that does not lead refuses it).
    Holder(&'a Holder, bool),
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use axum::http::{HeaderMap, StatusCode};

    use super::*;

    /// A holder that does not lead: it answers 409 (as its write endpoint does for a write
    /// marked forwarded) and records whether each request was marked.
    async fn holder_that_does_not_lead() -> (Holder, Arc<Mutex<Vec<bool>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let app = axum::Router::new().fallback(move |h: HeaderMap| {
            let record = record.clone();
            async move {
                record.lock().unwrap().push(h.contains_key(FORWARDED));
                (StatusCode::CONFLICT, "region 9 is the leader")
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (Holder { name: "p1".into(), url, addr: None, epoch: 1 }, seen)
    }

    #[tokio::test]
    async fn an_operation_that_must_not_be_forwarded_is_marked_for_the_holder_and_refused_when_it_does_not_lead() {
        let (holder, seen) = holder_that_does_not_lead().await;
        let timings = Timings { heartbeat_ms: 100, election_timeout_min_ms: 1000, election_timeout_max_ms: 2000 };
        let f = Forwarder::new(ClusterSecret::new("0123456789abcdef0123").unwrap(), vec![], timings).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let kept = f.forward::<()>(&Target::Holder(&holder, false), "/internal/write", &(), deadline).await;
        assert!(matches!(kept, Err(Forward::Fail(ClusterError::NotLeader(_)))), "GC's entry must fail, not be retried");
        let onward = f.forward::<()>(&Target::Holder(&holder, true), "/internal/write", &(), deadline).await;
        assert!(matches!(onward, Err(Forward::Retry(_))), "a client's write is retried at the holder");
        assert_eq!(*seen.lock().unwrap(), [true, false], "only the first was marked forwarded");
    }
}
