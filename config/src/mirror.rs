//! `[mirror]`: upstream registries the cluster mirrors as a pull-through cache, zot's
//! `sync.registries[]` in spirit: per upstream, its `url` and credentials, which of its
//! repositories (`prefix`) appear under which local name (`destination`), and how long a tag
//! is trusted before the upstream is asked again (`tag_ttl`). What a region fetches goes
//! through Raft like a push, so every region serves it afterwards without asking the upstream.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ConfigError;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MirrorConfig {
    pub upstreams: Vec<Upstream>,
    /// How often the leader's region weighs the cached content against each upstream's
    /// `cache_ttl` and `max_bytes`, and evicts.
    pub eviction_interval: String,
}

impl Default for MirrorConfig {
    fn default() -> Self {
        MirrorConfig { upstreams: vec![], eviction_interval: "5m".into() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Upstream {
    /// Names the upstream in logs, metrics and errors; unique.
    pub name: String,
    /// The upstream registry's base URL, e.g. `https://registry-1.docker.io`.
    pub url: String,
    /// The upstream's repositories mirrored: those under this prefix (`library`), or every one
    /// (empty).
    pub prefix: String,
    /// Where they appear here: `destination/<name under prefix>` (`hub/alpine` for the
    /// upstream's `library/alpine`), or under their own names (empty; one such upstream only).
    pub destination: String,
    /// containerd's `?ns=` values that pick this upstream (`docker.io`) when a client mirrors
    /// several registries through one host: `/v2/library/alpine/…?ns=docker.io` is read as
    /// `destination/library/alpine`.
    pub ns: Vec<String>,
    /// Credentials for the upstream (basic, or the Docker token flow its challenge asks for).
    pub username: String,
    /// The password, read from this file at start-up (never logged)…
    pub password_file: Option<PathBuf>,
    /// …or from this environment variable.
    pub password_env: String,
    /// A tag fetched or checked this recently is served without asking the upstream.
    pub tag_ttl: String,
    /// The longest one upstream request may wait for its answer's first byte, and between two
    /// bytes of a blob.
    pub timeout: String,
    /// Cached content that no region has pulled for this long is evicted (`"0s"`: kept until
    /// `max_bytes` needs its room). Seven days by default, distribution's proxy `ttl`.
    pub cache_ttl: String,
    /// The most this upstream's cached content may hold (blobs and manifests); past it, what
    /// was pulled longest ago is evicted first. 0: no bound. 100 GiB by default.
    pub max_bytes: u64,
}

impl Default for Upstream {
    fn default() -> Self {
        Upstream {
            name: String::new(),
            url: String::new(),
            prefix: String::new(),
            destination: String::new(),
            ns: vec![],
            username: String::new(),
            password_file: None,
            password_env: String::new(),
            tag_ttl: "5m".into(),
            timeout: "30s".into(),
            cache_ttl: "168h".into(),
            max_bytes: 100 << 30,
        }
    }
}

fn duration(s: &str) -> Option<Duration> {
    humantime::parse_duration(s.trim()).ok()
}

/// `a/b` of two name parts, either of which may be empty.
fn join(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_owned(),
        (_, true) => a.to_owned(),
        _ => format!("{a}/{b}"),
    }
}

impl Upstream {
    pub fn tag_ttl(&self) -> Duration {
        duration(&self.tag_ttl).unwrap_or(Duration::from_secs(300))
    }

    pub fn timeout(&self) -> Duration {
        duration(&self.timeout).unwrap_or(Duration::from_secs(30))
    }

    /// How long cached content may go unpulled; `None`: no such bound.
    pub fn cache_ttl(&self) -> Option<Duration> {
        duration(&self.cache_ttl).filter(|d| !d.is_zero())
    }

    /// The upstream's name for the local repository `local`, if this upstream mirrors it.
    pub fn upstream_name(&self, local: &str) -> Option<String> {
        let rest = if self.destination.is_empty() {
            local
        } else {
            local.strip_prefix(&self.destination)?.strip_prefix('/')?
        };
        (!rest.is_empty()).then(|| join(&self.prefix, rest))
    }

    /// The password, from `password_file` or `password_env` (none: anonymous or user only).
    pub fn password(&self) -> Result<Option<String>, ConfigError> {
        if let Some(f) = &self.password_file {
            let text = std::fs::read_to_string(f).map_err(|e| {
                ConfigError::Invalid(format!("mirror.upstreams.{}.password_file: {}: {e}", self.name, f.display()))
            })?;
            return Ok(Some(text.trim_end_matches(['\r', '\n']).to_owned()));
        }
        if !self.password_env.is_empty() {
            return std::env::var(&self.password_env).map(Some).map_err(|_| {
                ConfigError::Invalid(format!(
                    "mirror.upstreams.{}.password_env: the variable {} is not set",
                    self.name, self.password_env
                ))
            });
        }
        Ok(None)
    }
}

impl MirrorConfig {
    /// The upstream mirroring the local repository `local` (its index in `upstreams`), and
    /// its name there: the one with the longest `destination` that holds it.
    pub fn upstream_for(&self, local: &str) -> Option<(usize, String)> {
        self.upstreams
            .iter()
            .enumerate()
            .filter_map(|(i, u)| u.upstream_name(local).map(|n| (i, n)))
            .max_by_key(|(i, _)| self.upstreams[*i].destination.len())
    }

    /// containerd's `?ns=`: the request path `rest` (after `/v2/`) as a path under the
    /// destination of the upstream that `ns` names, when it is not there already.
    pub fn in_namespace(&self, rest: &str, ns: &str) -> Option<String> {
        let d = &self.upstreams.iter().find(|u| u.ns.iter().any(|n| n == ns))?.destination;
        let eligible =
            !d.is_empty() && !rest.is_empty() && !rest.starts_with('_') && !rest.starts_with(&format!("{d}/"));
        eligible.then(|| format!("{d}/{rest}"))
    }

    pub fn eviction_interval(&self) -> Duration {
        duration(&self.eviction_interval).unwrap_or(Duration::from_secs(300))
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if duration(&self.eviction_interval).is_none_or(|d| d.is_zero()) {
            return Err(ConfigError::Invalid(format!(
                "mirror.eviction_interval: {:?} is not a positive duration such as \"5m\"",
                self.eviction_interval
            )));
        }
        let bad = |i: usize, field: &str, why: String| {
            Err(ConfigError::Invalid(format!("mirror.upstreams[{i}].{field}: {why}")))
        };
        let mut names = std::collections::BTreeSet::new();
        let mut destinations = std::collections::BTreeSet::new();
        for (i, u) in self.upstreams.iter().enumerate() {
            if u.name.trim().is_empty() {
                return bad(i, "name", "every upstream needs a name".into());
            }
            if !names.insert(u.name.as_str()) {
                return bad(i, "name", format!("{:?} names two upstreams", u.name));
            }
            match url::Url::parse(&u.url) {
                Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {}
                Ok(_) => return bad(i, "url", format!("{:?}: expected an http or https URL with a host", u.url)),
                Err(e) if u.url.is_empty() => return bad(i, "url", format!("missing ({e})")),
                Err(e) => return bad(i, "url", format!("{:?}: {e}", u.url)),
            }
            for (field, v) in [("prefix", &u.prefix), ("destination", &u.destination)] {
                if v.starts_with('/') || v.ends_with('/') || v.contains("//") {
                    return bad(i, field, format!("{v:?}: a repository path without leading or trailing '/'"));
                }
            }
            if !destinations.insert(u.destination.as_str()) {
                return bad(i, "destination", format!("{:?} is another upstream's destination too", u.destination));
            }
            for (field, v) in [("tag_ttl", &u.tag_ttl), ("timeout", &u.timeout)] {
                if duration(v).is_none_or(|d| d <= Duration::ZERO) {
                    return bad(i, field, format!("{v:?} is not a positive duration such as \"30s\" or \"5m\""));
                }
            }
            if duration(&u.cache_ttl).is_none() {
                return bad(
                    i,
                    "cache_ttl",
                    format!("{:?} is not a duration such as \"168h\" (\"0s\": none)", u.cache_ttl),
                );
            }
            if u.password_file.is_some() && !u.password_env.is_empty() {
                return bad(i, "password_env", "set password_file or password_env, not both".into());
            }
            if (u.password_file.is_some() || !u.password_env.is_empty()) && u.username.is_empty() {
                return bad(i, "username", "a password needs a username".into());
            }
            u.password()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(name: &str, prefix: &str, destination: &str) -> Upstream {
        Upstream {
            name: name.into(),
            url: "https://registry.example".into(),
            prefix: prefix.into(),
            destination: destination.into(),
            ..Default::default()
        }
    }

    #[test]
    fn local_names_map_to_the_upstream_under_prefix_and_destination() {
        let hub = up("hub", "library", "hub");
        assert_eq!(hub.upstream_name("hub/alpine").as_deref(), Some("library/alpine"));
        assert_eq!(hub.upstream_name("hubx/alpine"), None);
        assert_eq!(hub.upstream_name("hub"), None);
        let all = up("all", "", "");
        assert_eq!(all.upstream_name("team/app").as_deref(), Some("team/app"));
        let m = MirrorConfig { upstreams: vec![all, up("ghcr", "", "ghcr")], ..Default::default() };
        assert_eq!(m.upstream_for("ghcr/org/app"), Some((1, "org/app".into())));
        assert_eq!(m.upstream_for("org/app"), Some((0, "org/app".into())));
    }

    #[test]
    fn containerds_namespace_puts_a_path_under_its_upstreams_destination() {
        let m = MirrorConfig {
            upstreams: vec![Upstream { ns: vec!["docker.io".into()], ..up("hub", "", "hub") }],
            ..Default::default()
        };
        assert_eq!(
            m.in_namespace("library/alpine/manifests/3", "docker.io").as_deref(),
            Some("hub/library/alpine/manifests/3")
        );
        assert_eq!(m.in_namespace("hub/library/alpine/manifests/3", "docker.io"), None, "already there");
        assert_eq!(m.in_namespace("_catalog", "docker.io"), None);
        assert_eq!(m.in_namespace("library/alpine/manifests/3", "ghcr.io"), None);
    }

    #[test]
    fn bad_upstreams_are_refused_with_the_field_named() {
        let msg =
            |u: Upstream| MirrorConfig { upstreams: vec![u], ..Default::default() }.validate().unwrap_err().to_string();
        assert!(MirrorConfig { upstreams: vec![up("hub", "library", "hub")], ..Default::default() }.validate().is_ok());
        let never = MirrorConfig { eviction_interval: "0s".into(), ..Default::default() };
        assert!(never.validate().unwrap_err().to_string().contains("mirror.eviction_interval"));
        assert!(msg(Upstream { url: String::new(), ..up("a", "", "") }).contains("mirror.upstreams[0].url"));
        assert!(msg(Upstream { url: "ftp://x".into(), ..up("a", "", "") }).contains("mirror.upstreams[0].url"));
        assert!(msg(up("", "", "")).contains("mirror.upstreams[0].name"));
        assert!(msg(Upstream { tag_ttl: "-1s".into(), ..up("a", "", "") }).contains("mirror.upstreams[0].tag_ttl"));
        assert!(
            msg(Upstream { cache_ttl: "a week".into(), ..up("a", "", "") }).contains("mirror.upstreams[0].cache_ttl")
        );
        assert_eq!(Upstream { cache_ttl: "0s".into(), ..up("a", "", "") }.cache_ttl(), None);
        assert_eq!(up("a", "", "").cache_ttl(), Some(Duration::from_secs(7 * 24 * 3600)));
        assert!(msg(up("a", "", "hub/")).contains("mirror.upstreams[0].destination"));
        let env =
            Upstream { username: "u".into(), password_env: "AFREG_TEST_NO_SUCH_VARIABLE".into(), ..up("a", "", "") };
        assert!(msg(env).contains("password_env"));
        let nameless = Upstream { password_env: "HOME".into(), ..up("a", "", "") };
        assert!(msg(nameless).contains("mirror.upstreams[0].username"));
        let two = MirrorConfig { upstreams: vec![up("a", "", "x"), up("b", "", "x")], ..Default::default() };
        assert!(two.validate().unwrap_err().to_string().contains("mirror.upstreams[1].destination"));
    }
}
