//! The internal endpoints of a region: Raft RPCs, forwarded writes, read index and membership
//! changes. They are served on their own listener (`cluster.listen`), never on the public OCI
//! port, and every request must carry the cluster secret as a bearer token.
//!
//! Every process of a region serves them, on the region's internal URL and on its own
//! listener. Only the seat holder answers them; any other process relays the request to the
//! holder once ([`Cluster::relay`]). The holder answers a Raft RPC only while its lease is
//! valid, checked before and after, so a paused holder that wakes up answers nothing.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};

use crate::cluster::{path, AdminOp, Cluster, ClusterError, ReadIndexReply, WriteReply, FORWARDED, RELAYED};
use crate::secret::ClusterSecret;
use crate::{network, Command, TypeConfig};

/// The internal router: the cluster's endpoints plus `extra` (the node's own internal
/// routes, e.g. status), all behind the cluster secret.
pub fn router(cluster: Arc<Cluster>, extra: Router) -> Router {
    let secret = cluster.secret().clone();
    Router::new()
        .route(network::path::APPEND, post(append))
        .route(network::path::VOTE, post(vote))
        .route(network::path::SNAPSHOT, post(snapshot))
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

/// The largest internal request body (a snapshot, a relayed one).
pub(crate) const MAX_BODY: usize = 512 * 1024 * 1024;

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
        Some(h) if h.name != c.seat().options().process => c.relay(&h, req).await,
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            "no process of this region holds its Raft seat yet (a takeover in progress)",
        )
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
    match c.read_index(!forwarded(&headers)).await {
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
