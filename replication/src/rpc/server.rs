//! The internal endpoints of a region: Raft RPCs, forwarded writes, read index and membership
//! changes. They are served on their own listener (`cluster.listen`), never on the public OCI
//! port, and every request must carry the cluster secret as a bearer token.
//!
//! Every process of a region serves them, on the region's internal URL and on its own
//! listener. Only the seat holder answers them; any other process relays the request to the
//! holder once (`relay`). The holder answers a Raft RPC only while its lease is valid, checked
//! before and after, so a paused holder that wakes up answers nothing.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};

use crate::cluster::Cluster;
use crate::error::ClusterError;
use crate::rpc::wire::{path, AdminOp, ReadIndexReply, WriteReply, FORWARDED, MAX_BODY, RELAYED};
use crate::seat::Holder;
use crate::secret::ClusterSecret;
use crate::{Command, TypeConfig};

/// The internal router: the cluster's endpoints plus `extra` (the node's own internal
/// routes, e.g. status), all behind the cluster secret.
pub fn router(cluster: Arc<Cluster>, extra: Router) -> Router {
    let secret = cluster.secret().clone();
    Router::new()
        .route(path::APPEND, post(append))
        .route(path::VOTE, post(vote))
        .route(path::SNAPSHOT, post(snapshot))
        .route(path::WRITE, post(write))
        .route(path::READ_INDEX, post(read_index))
        .route(path::READ_BARRIER, post(read_barrier))
        .route(path::ADMIN, post(admin))
        .route_layer(middleware::from_fn_with_state(cluster.clone(), seat_gate))
        .with_state(cluster)
        .merge(extra)
        .layer(middleware::from_fn_with_state(secret, require_secret))
        // Snapshots and manifests can be large; the secret already gates who may send them.
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
}

/// The longest a relayed request may take, its body included.
const RELAY_TIMEOUT: Duration = Duration::from_secs(60);

/// Lets the seat holder answer; relays everything else to it, once.
async fn seat_gate(State(c): State<Arc<Cluster>>, req: Request, next: Next) -> Response {
    let raft_rpc = req.uri().path().starts_with("/internal/raft/");
    if c.serves() {
        let resp = next.run(req).await;
        if raft_rpc && !c.seat().holds() {
            // Paused or cut off while answering: what it computed may be stale.
            return (StatusCode::SERVICE_UNAVAILABLE, "this process lost the region's Raft seat while answering")
                .into_response();
        }
        return resp;
    }
    if req.headers().contains_key(RELAYED) {
        return error(ClusterError::NotSeatHolder("this process does not hold the region's Raft seat".into()));
    }
    match c.seat().holder() {
        Some(h) if h.name != c.seat().options().process => relay(&c, &h, req).await,
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            "no process of this region holds its Raft seat yet (a takeover in progress)",
        )
            .into_response(),
    }
}

/// Relays a request that reached this process (not the seat holder) to the holder, once.
/// Both bodies stream through: a relayed snapshot or append is never held here whole (the
/// holder's own extractors enforce the body limit).
async fn relay(c: &Cluster, to: &Holder, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let pq = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut r = c
        .client_for(to)
        .request(parts.method, format!("{}{pq}", to.url.trim_end_matches('/')))
        .header(RELAYED, "1")
        .timeout(RELAY_TIMEOUT)
        .body(reqwest::Body::wrap_stream(body.into_data_stream()));
    for h in [header::AUTHORIZATION.as_str(), header::CONTENT_TYPE.as_str(), header::CONTENT_LENGTH.as_str(), FORWARDED]
    {
        if let Some(v) = parts.headers.get(h) {
            r = r.header(h, v);
        }
    }
    match r.send().await {
        Ok(resp) => {
            let status = resp.status();
            let kept: Vec<_> = [header::CONTENT_TYPE, header::CONTENT_LENGTH]
                .into_iter()
                .filter_map(|h| resp.headers().get(&h).cloned().map(|v| (h, v)))
                .collect();
            let mut out = (status, axum::body::Body::from_stream(resp.bytes_stream())).into_response();
            out.headers_mut().extend(kept);
            out
        }
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("relaying to the region's seat holder {}: {e}", to.name))
            .into_response(),
    }
}

async fn require_secret(State(secret): State<ClusterSecret>, req: Request, next: Next) -> Response {
    let auth = req.headers().get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    if !secret.verify(auth) {
        tracing::warn!(event = "internal_unauthorized", path = %req.uri().path(), "internal request without the cluster secret");
        return (StatusCode::UNAUTHORIZED, "the cluster secret is required").into_response();
    }
    next.run(req).await
}

fn no_member() -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, "this process does not run the region's Raft member").into_response()
}

async fn append(State(c): State<Arc<Cluster>>, Json(req): Json<AppendEntriesRequest<TypeConfig>>) -> Response {
    let Some(raft) = c.raft() else { return no_member() };
    Json(c.append(&raft, req).await).into_response()
}

async fn vote(State(c): State<Arc<Cluster>>, Json(req): Json<VoteRequest<crate::NodeId>>) -> Response {
    let Some(raft) = c.raft() else { return no_member() };
    Json(c.vote(&raft, req).await).into_response()
}

async fn snapshot(State(c): State<Arc<Cluster>>, Json(req): Json<InstallSnapshotRequest<TypeConfig>>) -> Response {
    let Some(raft) = c.raft() else { return no_member() };
    Json(raft.install_snapshot(req).await).into_response()
}

/// A standby's linearizable read point: answered once this region has applied that far.
async fn read_barrier(State(c): State<Arc<Cluster>>) -> Response {
    match c.read_barrier().await {
        Ok(()) => Json(()).into_response(),
        Err(e) => error(e),
    }
}

fn forwarded(h: &HeaderMap) -> bool {
    h.contains_key(FORWARDED)
}

async fn write(State(c): State<Arc<Cluster>>, headers: HeaderMap, Json(cmd): Json<Command>) -> Response {
    match c.write_inner(cmd, !forwarded(&headers)).await {
        Ok((index, applied)) => Json(WriteReply { index, applied }).into_response(),
        Err(e) => error(e),
    }
}

async fn read_index(State(c): State<Arc<Cluster>>, headers: HeaderMap) -> Response {
    match c.read_index(!forwarded(&headers), c.write_deadline()).await {
        Ok(index) => Json(ReadIndexReply { index }).into_response(),
        Err(e) => error(e),
    }
}

async fn admin(State(c): State<Arc<Cluster>>, headers: HeaderMap, Json(op): Json<AdminOp>) -> Response {
    match c.admin_inner(op, !forwarded(&headers)).await {
        Ok(()) => Json(()).into_response(),
        Err(e) => error(e),
    }
}

/// 409 tells a forwarding region to retry at the new leader, 421 a relaying process to retry
/// at the new seat holder; 400 is final; 503 is retriable.
fn error(e: ClusterError) -> Response {
    let status = match e {
        ClusterError::NotLeader(_) => StatusCode::CONFLICT,
        ClusterError::NotSeatHolder(_) => StatusCode::MISDIRECTED_REQUEST,
        ClusterError::Refused(_) => StatusCode::BAD_REQUEST,
        ClusterError::NoLeader(_) | ClusterError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    (status, e.to_string()).into_response()
}
