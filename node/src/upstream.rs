//! The client of an upstream registry of the pull-through cache (`[mirror]`): manifests and
//! blobs fetched with the credentials the upstream asks for. A 401 names its scheme in
//! `WWW-Authenticate`: `Basic` is answered with the configured user and password, `Bearer`
//! with the Docker token flow (a GET of the realm with its `service` and the `scope`, with
//! Basic auth when a user is configured), and the token is kept until shortly before it
//! expires. The challenge's parameters are parsed here, a few lines of one small grammar: the
//! crates that parse `WWW-Authenticate` are unmaintained or give the scheme without its
//! parameter list.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use afreg_config::mirror::Upstream;
use reqwest::{Method, StatusCode};

/// Why an upstream request did not give an answer to use.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No answer: refused, timed out, or cut off.
    #[error("upstream {name} is unreachable: {why}")]
    Unreachable { name: String, why: String },
    /// It answered, but not with what was asked for (404 is [`UpstreamError::NotFound`]).
    #[error("upstream {name} answered {status}: {why}")]
    Refused { name: String, status: u16, why: String },
    #[error("upstream {name} has no {what}")]
    NotFound { name: String, what: String },
}

impl UpstreamError {
    /// Whether the cached copy should be served instead: the upstream is down, throttling or
    /// failing, not saying the content is gone.
    pub fn is_outage(&self) -> bool {
        match self {
            UpstreamError::Unreachable { .. } => true,
            UpstreamError::Refused { status, .. } => *status == 429 || *status >= 500 || *status == 401,
            UpstreamError::NotFound { .. } => false,
        }
    }
}

/// Tokens are dropped this long before the upstream says they expire.
const TOKEN_MARGIN: Duration = Duration::from_secs(10);

pub struct UpstreamClient {
    pub cfg: Upstream,
    password: Option<String>,
    http: reqwest::Client,
    /// Bearer tokens by scope, with when to stop using them.
    tokens: Mutex<HashMap<String, (String, Instant)>>,
}

/// A challenge's scheme and parameters (`Bearer realm="…",service="…",scope="…"`).
#[derive(Debug, PartialEq)]
pub struct Challenge {
    pub scheme: String,
    pub params: HashMap<String, String>,
}

/// Parses the first challenge of a `WWW-Authenticate` value.
pub fn parse_challenge(v: &str) -> Option<Challenge> {
    let v = v.trim();
    let (scheme, mut rest) = v.split_once(' ').unwrap_or((v, ""));
    let mut params = HashMap::new();
    loop {
        rest = rest.trim_start_matches([' ', ',']);
        let Some((key, after)) = rest.split_once('=') else { break };
        let key = key.trim().to_ascii_lowercase();
        let (value, tail) = if let Some(quoted) = after.strip_prefix('"') {
            let mut out = String::new();
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            out.push(n);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => out.push(c),
                }
            }
            (out, &quoted[end.min(quoted.len())..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_owned(), &after[end..])
        };
        params.insert(key, value);
        rest = tail;
    }
    (!scheme.is_empty()).then(|| Challenge { scheme: scheme.to_ascii_lowercase(), params })
}

impl UpstreamClient {
    pub fn new(cfg: Upstream) -> anyhow::Result<Self> {
        let password = cfg.password()?;
        let http = reqwest::Client::builder()
            .connect_timeout(cfg.timeout())
            .read_timeout(cfg.timeout())
            .user_agent(concat!("afreg/", env!("CARGO_PKG_VERSION"), " (pull-through cache)"))
            .build()?;
        Ok(UpstreamClient { cfg, password, http, tokens: Mutex::new(HashMap::new()) })
    }

    fn unreachable(&self, e: impl std::fmt::Display) -> UpstreamError {
        UpstreamError::Unreachable { name: self.cfg.name.clone(), why: e.to_string() }
    }

    fn cached_token(&self, scope: &str) -> Option<String> {
        let tokens = self.tokens.lock().expect("token lock");
        tokens.get(scope).filter(|(_, until)| Instant::now() < *until).map(|(t, _)| t.clone())
    }

    /// `GET` (or `HEAD`) of `/v2/<repo>/<tail>` upstream, answering its challenge once. The
    /// answer is a success, or an error.
    pub async fn fetch(
        &self,
        method: Method,
        repo: &str,
        tail: &str,
        accept: &[&str],
    ) -> Result<reqwest::Response, UpstreamError> {
        let url = format!("{}/v2/{repo}/{tail}", self.cfg.url.trim_end_matches('/'));
        let scope = format!("repository:{repo}:pull");
        let request = |auth: Auth| {
            let mut r = self.http.request(method.clone(), &url);
            for a in accept {
                r = r.header(reqwest::header::ACCEPT, *a);
            }
            match auth {
                Auth::None => r,
                Auth::Bearer(t) => r.bearer_auth(t),
                Auth::Basic => r.basic_auth(&self.cfg.username, self.password.as_deref()),
            }
        };
        let first = match self.cached_token(&scope) {
            Some(t) => Auth::Bearer(t),
            None => Auth::None,
        };
        let mut resp = request(first).send().await.map_err(|e| self.unreachable(e))?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            let challenge = resp
                .headers()
                .get(reqwest::header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_challenge);
            let again = match challenge {
                Some(c) if c.scheme == "bearer" => Some(Auth::Bearer(self.token(&c, &scope).await?)),
                Some(c) if c.scheme == "basic" && !self.cfg.username.is_empty() => Some(Auth::Basic),
                _ => None,
            };
            if let Some(auth) = again {
                resp = request(auth).send().await.map_err(|e| self.unreachable(e))?;
            }
        }
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        if status == StatusCode::NOT_FOUND {
            return Err(UpstreamError::NotFound { name: self.cfg.name.clone(), what: format!("{repo}/{tail}") });
        }
        let why = resp.text().await.unwrap_or_default().chars().take(300).collect::<String>();
        Err(UpstreamError::Refused { name: self.cfg.name.clone(), status: status.as_u16(), why })
    }

    /// A bearer token for `scope` from the challenge's realm.
    async fn token(&self, c: &Challenge, scope: &str) -> Result<String, UpstreamError> {
        let realm = c.params.get("realm").ok_or_else(|| UpstreamError::Refused {
            name: self.cfg.name.clone(),
            status: 401,
            why: "a Bearer challenge without a realm".into(),
        })?;
        let mut query: Vec<(&str, &str)> = vec![("scope", c.params.get("scope").map(String::as_str).unwrap_or(scope))];
        if let Some(service) = c.params.get("service") {
            query.push(("service", service));
        }
        let mut r = self.http.get(realm).query(&query);
        if !self.cfg.username.is_empty() {
            r = r.basic_auth(&self.cfg.username, self.password.as_deref());
        }
        let resp = r.send().await.map_err(|e| self.unreachable(format!("token service {realm}: {e}")))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(UpstreamError::Refused {
                name: self.cfg.name.clone(),
                status: status.as_u16(),
                why: format!("its token service {realm} refused the credentials"),
            });
        }
        #[derive(serde::Deserialize)]
        struct TokenAnswer {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let t: TokenAnswer = resp.json().await.map_err(|e| self.unreachable(format!("token service {realm}: {e}")))?;
        let token = t.token.or(t.access_token).ok_or_else(|| UpstreamError::Refused {
            name: self.cfg.name.clone(),
            status: 401,
            why: format!("its token service {realm} answered without a token"),
        })?;
        // The spec's default lifetime is 60 s.
        let life = Duration::from_secs(t.expires_in.unwrap_or(60).max(60));
        let until = Instant::now() + life.saturating_sub(TOKEN_MARGIN);
        self.tokens.lock().expect("token lock").insert(scope.to_owned(), (token.clone(), until));
        Ok(token)
    }
}

enum Auth {
    None,
    Bearer(String),
    Basic,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_are_read_with_their_parameters() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#,
        )
        .unwrap();
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.params["realm"], "https://auth.docker.io/token");
        assert_eq!(c.params["service"], "registry.docker.io");
        assert_eq!(c.params["scope"], "repository:library/alpine:pull");
        let b = parse_challenge(r#"Basic realm="Registry Realm""#).unwrap();
        assert_eq!((b.scheme.as_str(), b.params["realm"].as_str()), ("basic", "Registry Realm"));
        let odd = parse_challenge(r#"Bearer realm="a\"b", error=invalid_token"#).unwrap();
        assert_eq!(odd.params["realm"], "a\"b");
        assert_eq!(odd.params["error"], "invalid_token");
    }

    #[test]
    fn an_outage_is_what_serves_the_cached_copy() {
        let r = |status| UpstreamError::Refused { name: "u".into(), status, why: String::new() };
        assert!(r(503).is_outage() && r(429).is_outage());
        assert!(!r(400).is_outage());
        assert!(!UpstreamError::NotFound { name: "u".into(), what: "x".into() }.is_outage());
        assert!(UpstreamError::Unreachable { name: "u".into(), why: "refused".into() }.is_outage());
    }
}
