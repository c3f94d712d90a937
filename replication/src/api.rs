//! The internal endpoints of a region: Raft RPCs, forwarded writes, read index and membership
//! changes. They are served on their own listener (`cluster.listen`), never on the public OCI
//! port, and every request must carry the cluster secret as a bearer token.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};

use crate::cluster::{path, AdminOp, Cluster, ClusterError, ReadIndexReply, WriteReply, FORWARDED};
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
        .route(path::ADMIN, post(admin))
        .with_state(cluster)
        .merge(extra)
        .layer(middleware::from_fn_with_state(secret, require_secret))
        // Snapshots and manifests can be large; the secret already gates who may send them.
        .layer(axum::extract::DefaultBodyLimit::max(512 * 1024 * 1024))
}

async fn require_secret(State(secret): State<ClusterSecret>, req: Request, next: Next) -> Response {
    let auth = req.headers().get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    if !secret.verify(auth) {
        tracing::warn!(event = "internal_unauthorized", path = %req.uri().path(), "internal request without the cluster secret");
        return (StatusCode::UNAUTHORIZED, "the cluster secret is required").into_response();
    }
    next.run(req).await
}

async fn append(State(c): State<Arc<Cluster>>, Json(req): Json<AppendEntriesRequest<TypeConfig>>) -> Response {
    Json(c.raft.append_entries(req).await).into_response()
}

async fn vote(State(c): State<Arc<Cluster>>, Json(req): Json<VoteRequest<crate::NodeId>>) -> Response {
    Json(c.raft.vote(req).await).into_response()
}

async fn snapshot(State(c): State<Arc<Cluster>>, Json(req): Json<InstallSnapshotRequest<TypeConfig>>) -> Response {
    Json(c.raft.install_snapshot(req).await).into_response()
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

/// 409 tells a forwarding region to retry at the new leader; 400 is final; 503 is retriable.
fn error(e: ClusterError) -> Response {
    let status = match e {
        ClusterError::NotLeader(_) => StatusCode::CONFLICT,
        ClusterError::Refused(_) => StatusCode::BAD_REQUEST,
        ClusterError::NoLeader(_) | ClusterError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    (status, e.to_string()).into_response()
}
