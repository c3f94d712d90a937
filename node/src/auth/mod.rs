//! Who may do what. The token endpoint turns credentials and requested scopes into a signed
//! token; every API request is then checked against its token for the repository and action
//! it touches. Passwords are argon2 hashes in Postgres and never appear in logs.

pub mod login;
pub mod tokens;

use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use axum::http::HeaderMap;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use crate::config::AuthConfig;
use crate::oci::{Action, ErrorCode, RegistryError, RepoName};
use crate::store::Store;
pub use tokens::{Access, Claims, Keys};

/// What a request needs: an action on a repository, the catalog, or only to be signed in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    /// `GET /v2/`: any valid token (or anonymous access) will do.
    Login,
    Catalog,
    Repo(RepoName, Action),
}

/// A user's grants: actions on repositories matching a pattern (`*`, `prefix/*` or a name).
#[derive(Debug, Clone, Default)]
pub struct Grants(pub Vec<(String, Vec<Action>)>);

impl Grants {
    pub fn allowed(&self, repo: &str) -> Vec<Action> {
        let mut out = vec![];
        for (pattern, actions) in &self.0 {
            let hit = pattern == "*"
                || pattern == repo
                || pattern.strip_suffix('*').is_some_and(|p| p.ends_with('/') && repo.starts_with(p));
            if hit {
                out.extend(actions.iter().copied());
            }
        }
        out.sort();
        out.dedup();
        out
    }
    /// The catalog lists every repository, so it needs pull on all of them.
    pub fn catalog(&self) -> bool {
        self.0.iter().any(|(p, a)| p == "*" && a.contains(&Action::Pull))
    }
    pub fn parse(spec: &str) -> Result<(String, Vec<Action>), String> {
        let (pattern, actions) =
            spec.rsplit_once(':').ok_or_else(|| format!("grant {spec:?}: expected PATTERN:ACTIONS"))?;
        let actions = actions
            .split(',')
            .map(|a| Action::parse(a.trim()).ok_or_else(|| format!("grant {spec:?}: unknown action {a:?}")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((pattern.to_owned(), actions))
    }
}

/// The repositories a caller may see ([`Auth::visible`]).
#[derive(Debug, Clone)]
pub enum Visible {
    All,
    /// Those these grants allow pulling.
    Grants(Grants),
}

impl Visible {
    pub fn allows(&self, repo: &str) -> bool {
        match self {
            Visible::All => true,
            Visible::Grants(g) => g.allowed(repo).contains(&Action::Pull),
        }
    }
}

pub fn hash_password(password: &str) -> String {
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    Argon2::default().hash_password(password.as_bytes(), &salt).expect("argon2 hashing").to_string()
}

pub fn verify_password(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
}

/// A scope as clients request it: `repository:NAME:pull,push` or `registry:catalog:*`.
pub fn parse_scope(s: &str) -> Option<(String, String, Vec<String>)> {
    let (kind, rest) = s.split_once(':')?;
    let (name, actions) = rest.rsplit_once(':')?;
    Some((kind.to_owned(), name.to_owned(), actions.split(',').map(str::to_owned).collect()))
}

pub struct Auth {
    pub cfg: AuthConfig,
    pub keys: Arc<Keys>,
    store: Store,
    realm: String,
    logins: login::LoginGuard,
}

pub struct IssuedToken {
    pub token: String,
    pub claims: Claims,
}

impl Auth {
    pub fn new(cfg: AuthConfig, keys: Arc<Keys>, store: Store, public_url: &str) -> Self {
        let logins = login::LoginGuard::new(&cfg);
        Auth { realm: format!("{}/token", public_url.trim_end_matches('/')), cfg, keys, store, logins }
    }

    fn anonymous(&self) -> Grants {
        Grants(vec![("*".into(), self.cfg.anonymous.clone())])
    }

    /// A 401 with its `WWW-Authenticate` challenge; `error` is RFC 6750's `invalid_token` or
    /// `insufficient_scope` when a token was presented.
    fn challenge(&self, need: &Need, also_pull: Option<&RepoName>, why: &str, error: Option<&str>) -> RegistryError {
        let scope = match need {
            Need::Login => String::new(),
            Need::Catalog => ",scope=\"registry:catalog:*\"".into(),
            Need::Repo(r, a) => {
                // Ask for what a client doing this will want next, as distribution does.
                let actions = if *a == Action::Pull { "pull".into() } else { format!("pull,{}", a.as_str()) };
                // A cross-repository mount also reads its source: ask for both, as distribution
                // does, so the client's one retry carries a token that can mount.
                let from = also_pull.map(|f| format!(" repository:{f}:pull")).unwrap_or_default();
                format!(",scope=\"repository:{r}:{actions}{from}\"")
            }
        };
        let mut e = RegistryError::new(ErrorCode::Unauthorized, why.to_owned());
        let error = error.map(|e| format!(",error=\"{e}\"")).unwrap_or_default();
        e.challenge = Some(format!("Bearer realm=\"{}\",service=\"{}\"{scope}{error}", self.realm, self.cfg.service));
        e
    }

    /// Checks the request's bearer token (or anonymous access) against what it needs; returns
    /// the signed-in user the token names, if any.
    pub fn authorize(&self, headers: &HeaderMap, need: &Need) -> Result<Option<String>, RegistryError> {
        self.authorize_mount(headers, need, None)
    }

    /// As [`Auth::authorize`]; `mount_from` names the source of a cross-repository mount, whose
    /// pull scope a challenge then asks for too.
    pub fn authorize_mount(
        &self,
        headers: &HeaderMap,
        need: &Need,
        mount_from: Option<&RepoName>,
    ) -> Result<Option<String>, RegistryError> {
        if !self.cfg.enabled {
            return Ok(None);
        }
        let anon = self.anonymous();
        let anon_ok = match need {
            // `GET /v2/` always challenges a request without a token: clients decide there
            // whether to run the token flow, and a 200 would make them skip it (and their
            // credentials) for pushes too. Anonymous clients get an anonymous token instead.
            Need::Login => false,
            Need::Catalog => anon.catalog(),
            Need::Repo(r, a) => anon.allowed(r.as_str()).contains(a),
        };
        let Some(token) = bearer(headers) else {
            if anon_ok {
                return Ok(None);
            }
            return Err(self.challenge(need, mount_from, "authentication required", None));
        };
        let claims = match self.keys.verify(token) {
            Ok(c) => c,
            Err(why) => return Err(self.challenge(need, mount_from, &why.to_string(), Some("invalid_token"))),
        };
        let user = (!claims.sub.is_empty()).then(|| claims.sub.clone());
        let (kind, name, action) = match need {
            Need::Login => return Ok(user),
            Need::Catalog => ("registry", "catalog", "*"),
            Need::Repo(r, a) => ("repository", r.as_str(), a.as_str()),
        };
        // Every entry for the resource counts: a token may carry it in several.
        let mut entries = claims.access.iter().filter(|e| e.kind == kind && e.name == name).peekable();
        let listed = entries.peek().is_some();
        let granted = entries.any(|e| e.actions.iter().any(|x| x == action || x == "*"));
        match () {
            _ if granted || anon_ok => Ok(user),
            // Asked for and refused, by a signed-in user: more tokens will not help.
            _ if listed && !claims.sub.is_empty() => {
                Err(RegistryError::new(ErrorCode::Denied, format!("{} may not {action} {kind} {name}", claims.sub)))
            }
            _ => Err(self.challenge(
                need,
                mount_from,
                &format!("token does not grant {action} on {kind} {name}"),
                Some("insufficient_scope"),
            )),
        }
    }

    /// Checks a user's password (limited per address and user, as every login is); returns
    /// the user's grants.
    pub(crate) async fn login(
        &self,
        client: crate::http::ClientAddr,
        user: &str,
        password: &str,
    ) -> Result<Grants, RegistryError> {
        let refused = |r: login::Refused| -> RegistryError {
            let reason = match r {
                login::Refused::Limited { who, .. } => who,
                login::Refused::Busy => "busy",
            };
            metrics::counter!("afreg_logins_refused_total", "reason" => reason).increment(1);
            if self.logins.log_refusal(client.key) {
                // No user name: it is refused before it is looked up, and a name as
                // typed may be a password pasted in the wrong field.
                tracing::warn!(event = "login_limited", client = %client.ip, reason = ?r,
                    "login refused before checking the password (further refusals for this address this minute are only counted, in afreg_logins_refused_total)");
            }
            r.into()
        };
        let admission = self.logins.admit(client.key, user, password).await.map_err(refused)?;
        let found = self.store.user(user).await?;
        let checked = self.logins.verify(admission, found.as_ref().map(|u| u.password_hash.as_str()), password).await;
        let ok = checked.map_err(refused)?;
        if !ok {
            // The name only if it is a user's: one typed wrong may be a password.
            let known = found.as_ref().map(|_| user);
            tracing::info!(event = "login_failed", user = known, unknown_user = known.is_none(), client = %client.ip,
                "invalid username or password");
            return Err(RegistryError::new(ErrorCode::Unauthorized, "invalid username or password"));
        }
        let grants = found
            .map(|u| u.grants)
            .unwrap_or_default()
            .into_iter()
            .map(|(p, a)| (p, a.iter().filter_map(|x| Action::parse(x)).collect()))
            .collect();
        Ok(Grants(grants))
    }

    /// Whether requests are checked at all (`auth.enabled`).
    pub fn enabled(&self) -> bool {
        self.cfg.enabled
    }

    /// What anonymous clients may do (`auth.anonymous`, on every repository).
    pub fn anonymous_grants(&self) -> Grants {
        self.anonymous()
    }

    /// Whether anonymous clients may pull (every repository, then).
    pub fn anonymous_pull(&self) -> bool {
        self.cfg.anonymous.contains(&Action::Pull)
    }

    /// A signed-in user's grants as stored now, with what anonymous clients may do; a user
    /// removed since has only the latter.
    pub async fn grants_of(&self, user: &str) -> Result<Grants, RegistryError> {
        let mut grants = self.anonymous();
        if let Some(u) = self.store.user(user).await? {
            for (pattern, actions) in u.grants {
                grants.0.push((pattern, actions.iter().filter_map(|a| Action::parse(a)).collect()));
            }
        }
        Ok(grants)
    }

    /// Which repositories the caller may see listed with their figures (usage, the console):
    /// those it may pull. A registry user's Basic credentials give their grants; a bearer
    /// token, the repositories it grants pull on (all of them with `registry:catalog:*`); and
    /// anonymous access, what anonymous users may pull. Without credentials and with no
    /// anonymous pull, the answer is a challenge.
    pub async fn visible(
        &self,
        client: crate::http::ClientAddr,
        headers: &HeaderMap,
    ) -> Result<(Option<String>, Visible), RegistryError> {
        if !self.cfg.enabled {
            return Ok((None, Visible::All));
        }
        let anonymous = self.anonymous();
        if let Some((user, password)) = basic_credentials(headers)? {
            let mut grants = self.login(client, &user, &password).await?;
            grants.0.extend(anonymous.0);
            return Ok((Some(user), Visible::Grants(grants)));
        }
        if let Some(token) = bearer(headers) {
            let claims = self
                .keys
                .verify(token)
                .map_err(|why| self.challenge(&Need::Catalog, None, &why.to_string(), Some("invalid_token")))?;
            let user = (!claims.sub.is_empty()).then(|| claims.sub.clone());
            if claims.access.iter().any(|e| e.kind == "registry" && e.name == "catalog") {
                return Ok((user, Visible::All));
            }
            let mut grants = anonymous;
            for e in claims.access.iter().filter(|e| e.kind == "repository") {
                if e.actions.iter().any(|a| a == "pull" || a == "*") {
                    grants.0.push((e.name.clone(), vec![Action::Pull]));
                }
            }
            return Ok((user, Visible::Grants(grants)));
        }
        if self.anonymous_pull() {
            return Ok((None, Visible::Grants(anonymous)));
        }
        Err(self.challenge(&Need::Catalog, None, "authentication required", None))
    }

    /// The token endpoint: authenticates (Basic header or form credentials, from `client`)
    /// and grants the intersection of the requested scopes and the caller's grants.
    pub async fn issue(
        &self,
        client: crate::http::ClientAddr,
        credentials: Option<(String, String)>,
        service: Option<&str>,
        scopes: &[String],
    ) -> Result<IssuedToken, RegistryError> {
        if let Some(s) = service {
            if s != self.cfg.service {
                return Err(RegistryError::new(ErrorCode::Denied, format!("unknown service {s:?}")));
            }
        }
        let (sub, grants) = match credentials {
            None => (String::new(), self.anonymous()),
            Some((user, password)) => {
                let grants = self.login(client, &user, &password).await?;
                (user, grants)
            }
        };
        let access = grant_scopes(&grants, scopes);
        let (token, claims) = self.keys.issue(&sub, access);
        Ok(IssuedToken { token, claims })
    }
}

/// What a token request gets: for each requested scope (`scopes` as sent, each possibly several
/// separated by spaces), the actions `grants` allow of those it asks for, one entry per resource.
pub fn grant_scopes(grants: &Grants, scopes: &[String]) -> Vec<Access> {
    let mut access = vec![];
    for scope in scopes.iter().flat_map(|s| s.split(' ')).filter(|s| !s.is_empty()) {
        let Some((kind, name, wanted)) = parse_scope(scope) else { continue };
        let granted: Vec<String> = match kind.as_str() {
            // Only a valid repository name is granted anything: a pattern such as `team/*`
            // matches text, and `team/../x` or `team//x` begin with `team/` too.
            "repository" if name.parse::<RepoName>().is_err() => vec![],
            "repository" => {
                let allowed = grants.allowed(&name);
                wanted
                    .iter()
                    .filter(|w| w.as_str() == "*" || Action::parse(w).is_some_and(|a| allowed.contains(&a)))
                    .flat_map(|w| {
                        if w == "*" {
                            allowed.iter().map(|a| a.as_str().to_owned()).collect()
                        } else {
                            vec![w.clone()]
                        }
                    })
                    .collect()
            }
            "registry" if name == "catalog" && grants.catalog() => vec!["*".into()],
            _ => vec![],
        };
        // One entry per resource, however many scopes named it, each action in it once.
        let i = match access.iter().position(|a: &Access| a.kind == kind && a.name == name) {
            Some(i) => i,
            None => {
                access.push(Access { kind, name, actions: vec![] });
                access.len() - 1
            }
        };
        for g in granted {
            if !access[i].actions.contains(&g) {
                access[i].actions.push(g);
            }
        }
    }
    access
}

/// The credentials of an `Authorization` header using `scheme` (matched case-insensitively,
/// as RFC 9110 section 11.1 says).
fn credentials<'a>(headers: &'a HeaderMap, scheme: &str) -> Option<&'a str> {
    let v = headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?.trim_start();
    let (s, rest) = v.split_once(' ')?;
    s.eq_ignore_ascii_case(scheme).then(|| rest.trim())
}

/// The token of an `Authorization: Bearer` header.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    credentials(headers, "Bearer")
}

/// Decodes an `Authorization: Basic` header.
pub fn basic_credentials(headers: &HeaderMap) -> Result<Option<(String, String)>, RegistryError> {
    let Some(b64) = credentials(headers, "Basic") else {
        return Ok(None);
    };
    let bad = || RegistryError::new(ErrorCode::Unauthorized, "malformed Basic credentials");
    let raw = STANDARD.decode(b64.trim()).map_err(|_| bad())?;
    let s = String::from_utf8(raw).map_err(|_| bad())?;
    let (u, p) = s.split_once(':').ok_or_else(bad)?;
    Ok(Some((u.to_owned(), p.to_owned())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_match_patterns() {
        let g =
            Grants(vec![("team/*".into(), vec![Action::Pull, Action::Push]), ("public".into(), vec![Action::Pull])]);
        assert_eq!(g.allowed("team/app"), vec![Action::Pull, Action::Push]);
        assert_eq!(g.allowed("public"), vec![Action::Pull]);
        assert!(g.allowed("teamx/app").is_empty());
        assert!(g.allowed("other").is_empty());
        assert!(!g.catalog());
        assert!(Grants(vec![("*".into(), vec![Action::Pull])]).catalog());
    }

    #[test]
    fn grant_specs() {
        assert_eq!(Grants::parse("*:pull,push").unwrap(), ("*".into(), vec![Action::Pull, Action::Push]));
        assert!(Grants::parse("a:fly").is_err());
    }

    #[test]
    fn scopes() {
        assert_eq!(
            parse_scope("repository:a/b:pull,push").unwrap(),
            ("repository".into(), "a/b".into(), vec!["pull".into(), "push".into()])
        );
        assert_eq!(parse_scope("registry:catalog:*").unwrap().1, "catalog");
        assert!(parse_scope("nonsense").is_none());
    }

    #[test]
    fn granted_actions_are_listed_once() {
        // Found by fuzz/ (target token_request): a repeated action within one scope, or `*`
        // beside an action, listed that action twice.
        let g = Grants(vec![("*".into(), vec![Action::Pull, Action::Push])]);
        let scopes = ["repository:a:pull,pull repository:b:*,push,pull".to_string(), "repository:a:pull".into()];
        let access = grant_scopes(&g, &scopes);
        assert_eq!(access.len(), 2);
        assert_eq!((access[0].name.as_str(), access[0].actions.clone()), ("a", vec!["pull".to_string()]));
        assert_eq!(
            (access[1].name.as_str(), access[1].actions.clone()),
            ("b", vec!["pull".to_string(), "push".into()])
        );
    }

    #[test]
    fn schemes_are_matched_case_insensitively() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(axum::http::header::AUTHORIZATION, v.parse().unwrap());
            m
        };
        for v in ["Bearer abc", "bearer abc", "BEARER abc", "bEaReR  abc "] {
            assert_eq!(bearer(&h(v)), Some("abc"), "{v}");
        }
        assert_eq!(bearer(&h("Basic abc")), None);
        assert_eq!(bearer(&h("Bearerabc")), None);
        assert_eq!(basic_credentials(&h("BASIC dTpw")).unwrap(), Some(("u".into(), "p".into())));
    }

    #[test]
    fn password_roundtrip() {
        let h = hash_password("s3cret");
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password(&h, "s3cret"));
        assert!(!verify_password(&h, "S3cret"));
    }
}
