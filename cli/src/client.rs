//! The operator's client for a running region's internal endpoint: commands that change
//! replicated state (users, regions) are sent there with the cluster secret, and reach the
//! leader from there.

use std::time::Duration;

use afreg_replication::{AdminOp, Applied, Command, Region};

use afreg_node::config::Config;

/// A client of a region's internal endpoint, as the configuration names it.
pub struct InternalClient {
    base: String,
    secret: afreg_replication::ClusterSecret,
    http: reqwest::Client,
}

impl InternalClient {
    /// The endpoint at `node` (an internal URL), or else the configured `cluster.listen`
    /// (a wildcard address is reached on loopback).
    pub fn new(cfg: &Config, node: Option<&str>) -> anyhow::Result<InternalClient> {
        let base = match node {
            Some(u) => u.trim_end_matches('/').to_owned(),
            None => {
                let mut a = cfg.cluster.listen;
                if a.ip().is_unspecified() {
                    a.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
                }
                format!("http://{a}")
            }
        };
        let secret = afreg_node::replica::cluster_secret(&cfg.cluster, false)?;
        let http = reqwest::Client::builder().timeout(Duration::from_secs(600)).build()?;
        Ok(InternalClient { base, secret, http })
    }

    async fn post<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &impl serde::Serialize,
    ) -> anyhow::Result<T> {
        let url = format!("{}{path}", self.base);
        let r = self
            .http
            .post(&url)
            .bearer_auth(self.secret.expose())
            .json(body)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("{url}: {e} (is the node running?)"))?;
        let status = r.status();
        if !status.is_success() {
            anyhow::bail!("{url}: {status}: {}", r.text().await.unwrap_or_default());
        }
        Ok(r.json().await?)
    }

    /// Replicates `cmd` through the region (which forwards it to the leader).
    pub async fn write(&self, cmd: &Command) -> anyhow::Result<Applied> {
        #[derive(serde::Deserialize)]
        struct Reply {
            applied: Applied,
        }
        Ok(self.post::<Reply>("/internal/write", cmd).await?.applied)
    }

    /// Adds a region: recorded in the region list, joined as a learner, caught up, promoted.
    pub async fn add_region(&self, id: u64, region: Region) -> anyhow::Result<()> {
        self.post::<()>("/internal/admin", &AdminOp::AddRegion { id, region }).await
    }

    /// Removes a region from the voters and retires its id.
    pub async fn remove_region(&self, id: u64) -> anyhow::Result<()> {
        self.post::<()>("/internal/admin", &AdminOp::RemoveRegion { id }).await
    }
}
