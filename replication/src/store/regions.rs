//! SQL over the replicated region list (`regions`): the other regions' Kubo peers for the
//! pinner, this region's own record for its announcement, and the live regions for `/status`
//! and token keys.

use sqlx::PgPool;

type Result<T> = std::result::Result<T, sqlx::Error>;

/// A live region's Kubo, as the pinner dials it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KuboPeer {
    pub region_id: i64,
    /// Swarm addresses, each ending in `/p2p/<peer id>`.
    pub addrs: Vec<String>,
}

/// Every live region's Kubo peer, by region id.
pub async fn region_peers(pool: &PgPool) -> Result<Vec<KuboPeer>> {
    let rows: Vec<(i64, String, Vec<String>)> = sqlx::query_as(
        "SELECT id, kubo_peer_id, kubo_swarm_addrs FROM regions WHERE NOT removed AND kubo_peer_id <> '' ORDER BY id",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, peer, addrs)| {
            let full = addrs
                .into_iter()
                .map(|a| if a.contains("/p2p/") { a } else { format!("{}/p2p/{peer}", a.trim_end_matches('/')) })
                .collect();
            KuboPeer { region_id: id, addrs: full }
        })
        .collect())
}

/// The region row as stored, to tell whether an announcement would change it.
pub async fn region_row(pool: &PgPool, id: u64) -> Result<Option<crate::Region>> {
    let row: Option<(String, String, String, String, Vec<String>, String)> = sqlx::query_as(
        "SELECT name, raft_addr, api_url, kubo_peer_id, kubo_swarm_addrs, token_jwk FROM regions WHERE id = $1 AND NOT removed",
    )
    .bind(id as i64)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(name, raft_addr, api_url, kubo_peer_id, kubo_swarm_addrs, token_jwk)| crate::Region {
        name,
        raft_addr,
        api_url,
        kubo_peer_id,
        kubo_swarm_addrs,
        token_jwk,
    }))
}

/// A region that has not been removed, as `/status` and token verification need it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LiveRegion {
    pub id: i64,
    pub name: String,
    /// Its internal (Raft) endpoint, behind the cluster secret.
    pub raft_addr: String,
    /// Its public registry URL.
    pub api_url: String,
    /// The public JWK that verifies its tokens (empty until it announced itself).
    pub token_jwk: String,
}

/// Every live region, by id.
pub async fn live_regions(pool: &PgPool) -> Result<Vec<LiveRegion>> {
    sqlx::query_as("SELECT id, name, raft_addr, api_url, token_jwk FROM regions WHERE NOT removed ORDER BY id")
        .fetch_all(pool)
        .await
}
