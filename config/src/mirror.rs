//! `[mirror]`: upstream registries the cluster mirrors as a pull-through cache, zot's
//! `sync.registries[]` in spirit: per upstream, its `url` and credentials, which of its
//! repositories (`prefix`) appear under which local name (`destination`), and how long a tag
//! is trusted before the upstream is asked again (`tag_ttl`). What a region fetches goes
//! through Raft like a push, so every region serves it afterwards without asking the upstream.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ConfigError;

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MirrorConfig {
    pub upstreams: Vec<Upstream>,
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
    /// The upstream mirroring the local repository `local`, and its name there: the one with
    /// the longest `destination` that holds it.
    pub fn upstream_for(&self, local: &str) -> Option<(&Upstream, String)> {
        self.upstreams
            .iter()
            .filter_map(|u| u.upstream_name(local).map(|n| (u, n)))
            .max_by_key(|(u, _)| u.destination.len())
    }

    /// The upstream containerd's `?ns=` names.
    pub fn by_namespace(&self, ns: &str) -> Option<&Upstream> {
        self.upstreams.iter().find(|u| u.ns.iter().any(|n| n == ns))
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
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
        let m = MirrorConfig { upstreams: vec![all, up("ghcr", "", "ghcr")] };
        assert_eq!(m.upstream_for("ghcr/org/app").map(|(u, n)| (u.name.as_str(), n)), Some(("ghcr", "org/app".into())));
        assert_eq!(m.upstream_for("org/app").map(|(u, _)| u.name.as_str()), Some("all"));
    }

    #[test]
    fn bad_upstreams_are_refused_with_the_field_named() {
        let msg = |u: Upstream| MirrorConfig { upstreams: vec![u] }.validate().unwrap_err().to_string();
        assert!(MirrorConfig { upstreams: vec![up("hub", "library", "hub")] }.validate().is_ok());
        assert!(msg(Upstream { url: String::new(), ..up("a", "", "") }).contains("mirror.upstreams[0].url"));
        assert!(msg(Upstream { url: "ftp://x".into(), ..up("a", "", "") }).contains("mirror.upstreams[0].url"));
        assert!(msg(up("", "", "")).contains("mirror.upstreams[0].name"));
        assert!(msg(Upstream { tag_ttl: "-1s".into(), ..up("a", "", "") }).contains("mirror.upstreams[0].tag_ttl"));
        assert!(msg(up("a", "", "hub/")).contains("mirror.upstreams[0].destination"));
        let env =
            Upstream { username: "u".into(), password_env: "AFREG_TEST_NO_SUCH_VARIABLE".into(), ..up("a", "", "") };
        assert!(msg(env).contains("password_env"));
        let nameless = Upstream { password_env: "HOME".into(), ..up("a", "", "") };
        assert!(msg(nameless).contains("mirror.upstreams[0].username"));
        let two = MirrorConfig { upstreams: vec![up("a", "", "x"), up("b", "", "x")] };
        assert!(two.validate().unwrap_err().to_string().contains("mirror.upstreams[1].destination"));
    }
}
