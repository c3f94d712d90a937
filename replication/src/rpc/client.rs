//! The Raft network: openraft's RPCs as JSON over HTTP to the other regions' internal
//! endpoints ([`super::server`]), authenticated with the cluster secret.
//!
//! The address of a peer is the `raft_addr` of its node in the Raft membership, which comes
//! from configuration or `afreg region add`, so a test (or an operator) can route it through
//! any link it controls.

use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::rpc::wire::path;
use crate::secret::ClusterSecret;
use crate::{NodeId, Region, TypeConfig};

/// Makes one [`Peer`] per target region; all share one connection pool.
#[derive(Clone)]
pub struct HttpNetwork {
    http: reqwest::Client,
    secret: ClusterSecret,
}

impl HttpNetwork {
    pub fn new(http: reqwest::Client, secret: ClusterSecret) -> Self {
        HttpNetwork { http, secret }
    }
}

impl RaftNetworkFactory<TypeConfig> for HttpNetwork {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &Region) -> Peer {
        Peer {
            target,
            base: node.raft_addr.trim_end_matches('/').to_owned(),
            http: self.http.clone(),
            secret: self.secret.clone(),
        }
    }
}

/// The connection to one other region.
pub struct Peer {
    target: NodeId,
    base: String,
    http: reqwest::Client,
    secret: ClusterSecret,
}

impl Peer {
    async fn call<Req, Resp, E>(
        &self,
        path: &str,
        req: &Req,
        ttl: Duration,
    ) -> Result<Resp, RPCError<NodeId, Region, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        // The request runs in its own task and openraft's deadline is applied to waiting for
        // it, not to the request: a request that misses the deadline still completes in the
        // background and returns its connection to the pool. Cancelling it would drop the
        // connection, and over a long round trip a new one (TCP, maybe TLS handshakes, then
        // the request) can cost more than the deadline every time, so replication would never
        // recover from a single reset.
        // Bounded all the same, so requests to an unreachable peer do not pile up.
        let request = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(self.secret.expose())
            .timeout((ttl * 10).max(Duration::from_secs(5)))
            .json(req);
        let task = tokio::spawn(async move {
            let resp = request.send().await?;
            let status = resp.status();
            let body = resp.bytes().await?;
            Ok::<_, reqwest::Error>((status, body))
        });
        let (status, body) = match tokio::time::timeout(ttl, task).await {
            Err(_) => {
                let e = std::io::Error::new(std::io::ErrorKind::TimedOut, format!("{path}: no answer within {ttl:?}"));
                return Err(RPCError::Unreachable(Unreachable::new(&e)));
            }
            Ok(Err(join)) => return Err(RPCError::Network(NetworkError::new(&join))),
            Ok(Ok(Err(e))) if e.is_connect() => return Err(RPCError::Unreachable(Unreachable::new(&e))),
            Ok(Ok(Err(e))) => return Err(RPCError::Network(NetworkError::new(&e))),
            Ok(Ok(Ok(r))) => r,
        };
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body);
            let e = std::io::Error::other(format!("{path} answered {status}: {text}"));
            return Err(RPCError::Network(NetworkError::new(&e)));
        }
        let r: Result<Resp, RaftError<NodeId, E>> =
            serde_json::from_slice(&body).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Region, RaftError<NodeId>>> {
        self.call(path::APPEND, &rpc, option.hard_ttl()).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, Region, RaftError<NodeId, InstallSnapshotError>>>
    {
        self.call(path::SNAPSHOT, &rpc, option.hard_ttl()).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Region, RaftError<NodeId>>> {
        let mut resp = self.call(path::VOTE, &rpc, option.hard_ttl()).await?;
        crate::election::withhold_longer_log(self.target, &rpc, &mut resp);
        Ok(resp)
    }
}
