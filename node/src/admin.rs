//! The operator's client for a running region: commands that change replicated state (users,
//! regions) are sent to the region's internal endpoint with the cluster secret, and reach the
//! leader from there; `status` reads the public `/status`.

use std::time::Duration;

use afreg_replication::{AdminOp, Applied, Command, Region};

use crate::config::Config;

/// A region's internal endpoint, as the configuration names it.
pub struct Internal {
    base: String,
    secret: afreg_replication::ClusterSecret,
    http: reqwest::Client,
}

impl Internal {
    /// The endpoint at `node` (an internal URL), or else the configured `cluster.listen`
    /// (a wildcard address is reached on loopback).
    pub fn new(cfg: &Config, node: Option<&str>) -> anyhow::Result<Internal> {
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
        let secret = cfg.cluster.load_secret(false)?;
        let http = reqwest::Client::builder().timeout(Duration::from_secs(600)).build()?;
        Ok(Internal { base, secret, http })
    }

    async fn post<T: serde::de::DeserializeOwned>(&self, path: &str, body: &impl serde::Serialize) -> anyhow::Result<T> {
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

/// Prints `GET {url}/status` as a table; returns the JSON.
pub async fn print_status(url: &str) -> anyhow::Result<serde_json::Value> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
    let v: serde_json::Value = http.get(format!("{}/status", url.trim_end_matches('/'))).send().await?.error_for_status()?.json().await?;
    println!(
        "{:<4} {:<10} {:<10} {:>5} {:>7} {:>9} {:>5} {:>8} {:>14}  {}",
        "ID", "REGION", "ROLE", "TERM", "LEADER", "APPLIED", "LAG", "PIN-Q", "REPLICATED-B", "URL"
    );
    let opt = |x: &serde_json::Value| if x.is_null() { "-".to_owned() } else { x.to_string().trim_matches('"').to_owned() };
    for r in v["regions"].as_array().into_iter().flatten() {
        let role = if r["reachable"] == true { opt(&r["role"]) } else { "unreachable".into() };
        println!(
            "{:<4} {:<10} {:<10} {:>5} {:>7} {:>9} {:>5} {:>8} {:>14}  {}",
            opt(&r["id"]),
            opt(&r["name"]),
            role,
            opt(&r["term"]),
            opt(&r["leader"]),
            opt(&r["last_applied"]),
            opt(&r["replication_lag"]),
            opt(&r["pin_backlog"]),
            opt(&r["replicated_bytes"]),
            opt(&r["url"]),
        );
    }
    Ok(v)
}
