//! `GET /v2/_afreg/usage`: what every region served, beside what each repository stores.
//! Pulls are counted by the region that served them ([`crate::pulls`]) and never replicated,
//! so the region asked puts the answer together: its own figures, and each other region's
//! from that region's internal endpoint ([`INTERNAL_PATH`], behind the cluster secret, asked
//! at once and bounded by [`ASK_TIMEOUT`] as `/status` asks), and it says which regions did
//! not answer. Only the repositories the caller may pull are in the answer
//! ([`crate::auth::Auth::visible`]).

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::auth::Visible;
use crate::oci::{ErrorCode, RegistryError};
use crate::registry::Registry;
use crate::store::usage::{self, DayUsage, ReferenceUsage, RepositoryUsage, Stored};

/// Where a region answers for its own figures, on its internal listener.
pub const INTERNAL_PATH: &str = "/internal/usage";
/// The longest another region's figures are waited for.
const ASK_TIMEOUT: Duration = Duration::from_secs(3);
/// Days asked for when the caller does not say, and the most it may ask.
pub const DEFAULT_DAYS: u32 = 30;
pub const MAX_DAYS: u32 = 400;

/// One region's own figures since a day.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RegionFigures {
    pub repositories: Vec<RepositoryUsage>,
    pub days: Vec<DayUsage>,
    pub references: Vec<ReferenceUsage>,
}

/// A region's part of the answer.
#[derive(Debug, Clone, Serialize)]
pub struct RegionUsage {
    pub region: String,
    pub answered: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(flatten)]
    pub figures: RegionFigures,
}

/// One repository across the regions that answered.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RepositoryTotal {
    pub repository: String,
    pub bytes_stored: i64,
    pub tags: i64,
    pub manifests: i64,
    pub last_push: Option<DateTime<Utc>>,
    pub pulls: i64,
    pub blob_pulls: i64,
    pub bytes_served: i64,
    pub last_pull: Option<DateTime<Utc>>,
}

/// The answer of `GET /v2/_afreg/usage`.
#[derive(Debug, Clone, Serialize)]
pub struct Usage {
    pub since: NaiveDate,
    pub repositories: Vec<RepositoryTotal>,
    pub regions: Vec<RegionUsage>,
    /// The regions whose figures are missing from the totals.
    pub unanswered: Vec<String>,
}

/// The first day of a window of `days` days that ends today.
pub fn since(days: u32) -> NaiveDate {
    Utc::now().date_naive() - chrono::Days::new(u64::from(days.clamp(1, MAX_DAYS)) - 1)
}

/// This region's own figures since `since`.
pub async fn local(pool: &sqlx::PgPool, since: NaiveDate) -> Result<RegionFigures, RegistryError> {
    let (repositories, days, references) = usage::usage(pool, since).await.map_err(unavailable)?;
    Ok(RegionFigures { repositories, days, references })
}

fn unavailable(e: sqlx::Error) -> RegistryError {
    RegistryError::new(ErrorCode::Unavailable, format!("usage figures: PostgreSQL: {e}")).with_source(e)
}

/// Every region's figures over `days` days, and what each repository stores, kept to what
/// `visible` allows.
pub async fn cluster(reg: &Registry, days: u32, visible: &Visible) -> Result<Usage, RegistryError> {
    let since = since(days);
    let pool = reg.store.pool();
    let regions = afreg_replication::store::regions::live_regions(pool).await.map_err(unavailable)?;
    let asks = regions.iter().map(|r| async move {
        if r.id as u64 == reg.cluster.id {
            return (r.name.clone(), local(pool, since).await.map_err(|e| e.message));
        }
        (r.name.clone(), ask(reg, &r.raft_addr, since).await)
    });
    let answers = futures::future::join_all(asks).await;
    let stored = usage::stored(pool).await.map_err(unavailable)?;
    Ok(assemble(since, stored, answers, visible))
}

async fn ask(reg: &Registry, raft_addr: &str, since: NaiveDate) -> Result<RegionFigures, String> {
    let url = format!("{}{INTERNAL_PATH}?since={since}", raft_addr.trim_end_matches('/'));
    let req = reg.cluster.internal_http().get(url).bearer_auth(reg.cluster.secret().expose()).timeout(ASK_TIMEOUT);
    match req.send().await {
        Ok(r) if r.status().is_success() => r.json().await.map_err(|e| format!("reading its answer: {e}")),
        Ok(r) => Err(format!("it answered HTTP {}", r.status())),
        Err(e) if e.is_timeout() => Err(format!("no answer within {} s", ASK_TIMEOUT.as_secs())),
        Err(e) => Err(e.to_string()),
    }
}

/// Puts the answer together: each region's figures kept to `visible`, and the totals per
/// repository over the regions that answered.
fn assemble(
    since: NaiveDate,
    stored: Vec<Stored>,
    answers: Vec<(String, Result<RegionFigures, String>)>,
    visible: &Visible,
) -> Usage {
    let mut totals: BTreeMap<String, RepositoryTotal> = stored
        .into_iter()
        .filter(|s| visible.allows(&s.repository))
        .map(|s| {
            let t = RepositoryTotal {
                repository: s.repository.clone(),
                bytes_stored: s.bytes_stored,
                tags: s.tags,
                manifests: s.manifests,
                last_push: s.last_push,
                ..Default::default()
            };
            (s.repository, t)
        })
        .collect();
    let mut regions = vec![];
    let mut unanswered = vec![];
    for (region, answer) in answers {
        match answer {
            Ok(mut f) => {
                f.repositories.retain(|r| visible.allows(&r.repository));
                f.days.retain(|d| visible.allows(&d.repository));
                f.references.retain(|r| visible.allows(&r.repository));
                for r in &f.repositories {
                    let t = totals
                        .entry(r.repository.clone())
                        .or_insert_with(|| RepositoryTotal { repository: r.repository.clone(), ..Default::default() });
                    t.pulls += r.pulls;
                    t.blob_pulls += r.blob_pulls;
                    t.bytes_served += r.bytes;
                    t.last_pull = t.last_pull.max(r.last_pull);
                }
                regions.push(RegionUsage { region, answered: true, error: None, figures: f });
            }
            Err(e) => {
                unanswered.push(region.clone());
                regions.push(RegionUsage { region, answered: false, error: Some(e), figures: Default::default() });
            }
        }
    }
    Usage { since, repositories: totals.into_values().collect(), regions, unanswered }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Grants;
    use crate::oci::Action;

    fn figures(repo: &str, pulls: i64) -> RegionFigures {
        RegionFigures {
            repositories: vec![RepositoryUsage {
                repository: repo.into(),
                pulls,
                blob_pulls: 0,
                bytes: pulls * 10,
                last_pull: None,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn totals_add_the_regions_that_answered_and_keep_to_what_the_caller_may_pull() {
        let stored = vec![
            Stored { repository: "team/a".into(), bytes_stored: 100, tags: 1, manifests: 1, last_push: None },
            Stored { repository: "other/b".into(), bytes_stored: 5, tags: 1, manifests: 1, last_push: None },
        ];
        let answers = vec![
            ("us".to_owned(), Ok(figures("team/a", 2))),
            ("eu".to_owned(), Ok(figures("team/a", 3))),
            ("asia".to_owned(), Err("no answer within 3 s".to_owned())),
        ];
        let visible = Visible::Grants(Grants(vec![("team/*".into(), vec![Action::Pull])]));
        let u = assemble(since(7), stored, answers, &visible);
        assert_eq!(u.repositories.len(), 1, "other/b is not the caller's: {u:?}");
        assert_eq!(
            (u.repositories[0].pulls, u.repositories[0].bytes_served, u.repositories[0].bytes_stored),
            (5, 50, 100)
        );
        assert_eq!(u.unanswered, vec!["asia".to_owned()]);
        assert!(!u.regions[2].answered);
    }
}
