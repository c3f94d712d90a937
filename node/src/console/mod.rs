//! The web console at `/ui/`, served by every node: repositories, tags, manifests and their
//! referrers, the cluster's health and the usage figures, for the registry's own users, each
//! seeing only the repositories their grants let them pull.
//!
//! Pages are rendered on the server with maud (compiled templates that escape every value),
//! so the console needs no build step and no script to show anything: its one small script
//! (`assets/console.js`) refreshes the cluster table and copies a pull command. Everything is
//! served by the node (no CDN, no web font: the system's fonts), so it works offline, under a
//! Content-Security-Policy that allows only the node's own files.
//!
//! **Sessions.** `POST /ui/login` checks the password as `/token` does (the same per-address
//! and per-user limits) and sets an HttpOnly, SameSite=Strict cookie holding a token the node
//! signs, whose one access entry (`console:session:*`) `/token` can never grant; the token
//! lives `auth.token_ttl_secs` and is renewed by each page viewed in its second half. Grants
//! are read from the users table on every request, so a change applies at once. Writes (the
//! delete) are `POST`s from the console's own pages: the cookie is never sent cross-site, and
//! an `Origin` from elsewhere is refused.

mod charts;
mod pages;

use std::collections::BTreeMap;

use axum::extract::{Form, Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use tower_http::set_header::SetResponseHeaderLayer;

use crate::auth::tokens::Access;
use crate::auth::{Grants, Visible};
use crate::http::{AppState, ClientAddr};
use crate::oci::{Action, Digest, ErrorCode, Reference, RegistryError, RepoName};
use crate::store::usage;

const COOKIE: &str = "afreg_console";
const SESSION_KIND: &str = "console";

/// The console's routes, each answered with its own Content-Security-Policy.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(|| async { Redirect::to("/ui/repositories") }))
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/logout", axum::routing::post(logout))
        .route("/ui/repositories", get(repositories))
        .route("/ui/repository", get(repository))
        .route("/ui/manifest", get(manifest))
        .route("/ui/delete", get(confirm_delete).post(delete))
        .route("/ui/cluster", get(cluster))
        .route("/ui/usage", get(usage_page))
        .route("/ui/console.css", get(|| async { asset("text/css", include_str!("assets/console.css")) }))
        .route("/ui/console.js", get(|| async { asset("text/javascript", include_str!("assets/console.js")) }))
        .route("/ui/favicon.svg", get(|| async { asset("image/svg+xml", include_str!("assets/favicon.svg")) }))
        .with_state(state)
        .layer(SetResponseHeaderLayer::overriding(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; \
                 form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
            ),
        ))
        .layer(SetResponseHeaderLayer::overriding(header::CACHE_CONTROL, HeaderValue::from_static("no-store")))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// Who is looking: the signed-in user (None: signed out, or auth off), what they may see, and
/// their grants (None: auth off, everything allowed).
pub(crate) struct Viewer {
    pub user: Option<String>,
    pub visible: Visible,
    grants: Option<Grants>,
    /// A renewed session cookie to send back.
    renew: Option<String>,
}

impl Viewer {
    fn may(&self, repo: &str, action: Action) -> bool {
        self.grants.as_ref().is_none_or(|g| g.allowed(repo).contains(&action))
    }
}

/// What a console page answers when it cannot be shown.
enum Refusal {
    /// Not signed in, and anonymous users may not pull: to the login page.
    SignIn,
    Error(RegistryError),
}

impl From<RegistryError> for Refusal {
    fn from(e: RegistryError) -> Self {
        Refusal::Error(e)
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::SignIn => Redirect::to("/ui/login").into_response(),
            Refusal::Error(e) => {
                let status = e.status();
                (status, pages::error(status, &e.message)).into_response()
            }
        }
    }
}

fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
}

/// The viewer of a request: its session's user and grants, or the anonymous view.
async fn viewer(st: &AppState, headers: &HeaderMap) -> Result<Viewer, Refusal> {
    let auth = &st.auth;
    if !auth.enabled() {
        return Ok(Viewer { user: None, visible: Visible::All, grants: None, renew: None });
    }
    let session = session_cookie(headers).and_then(|t| {
        let claims = auth.keys.verify(t).ok()?;
        let is_session = claims
            .access
            .iter()
            .any(|a| a.kind == SESSION_KIND && a.name == "session" && a.actions.iter().any(|x| x == "*"));
        (is_session && !claims.sub.is_empty()).then_some(claims)
    });
    match session {
        Some(claims) => {
            let grants = auth.grants_of(&claims.sub).await?;
            let now = chrono::Utc::now().timestamp() as u64;
            let renew = (claims.exp.saturating_sub(now) < auth.keys.ttl() / 2).then(|| new_session(st, &claims.sub));
            Ok(Viewer { user: Some(claims.sub), visible: Visible::Grants(grants.clone()), grants: Some(grants), renew })
        }
        None if auth.anonymous_pull() => {
            let grants = auth.anonymous_grants();
            Ok(Viewer { user: None, visible: Visible::Grants(grants.clone()), grants: Some(grants), renew: None })
        }
        None => Err(Refusal::SignIn),
    }
}

/// A session cookie for `user`.
fn new_session(st: &AppState, user: &str) -> String {
    let access = vec![Access { kind: SESSION_KIND.into(), name: "session".into(), actions: vec!["*".into()] }];
    let (token, _) = st.auth.keys.issue(user, access);
    let secure = if st.registry.cfg.server.https() { "; Secure" } else { "" };
    format!("{COOKIE}={token}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={}{secure}", st.auth.keys.ttl())
}

/// `page`, with the viewer's renewed cookie when there is one.
fn answer(v: &Viewer, page: maud::Markup) -> Response {
    let mut resp = page.into_response();
    if let Some(c) = v.renew.as_deref().and_then(|c| HeaderValue::from_str(c).ok()) {
        resp.headers_mut().insert(header::SET_COOKIE, c);
    }
    resp
}

async fn login_page(State(st): State<AppState>) -> Response {
    pages::login(&st.registry.cfg.cluster.region, None).into_response()
}

#[derive(Deserialize)]
struct LoginForm {
    username: String,
    password: String,
}

async fn login(
    State(st): State<AppState>,
    client: ClientAddr,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    if let Err(r) = same_origin(&headers) {
        return r.into_response();
    }
    let region = &st.registry.cfg.cluster.region;
    if !st.auth.enabled() {
        return Redirect::to("/ui/repositories").into_response();
    }
    match st.auth.login(client, &f.username, &f.password).await {
        Ok(_) => {
            let mut resp = Redirect::to("/ui/repositories").into_response();
            if let Ok(c) = HeaderValue::from_str(&new_session(&st, &f.username)) {
                resp.headers_mut().insert(header::SET_COOKIE, c);
            }
            resp
        }
        Err(e) => (e.status(), pages::login(region, Some(&e.message))).into_response(),
    }
}

async fn logout(headers: HeaderMap) -> Response {
    if let Err(r) = same_origin(&headers) {
        return r.into_response();
    }
    let mut resp = Redirect::to("/ui/login").into_response();
    let gone = format!("{COOKIE}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0");
    resp.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_str(&gone).expect("a cookie"));
    resp
}

/// Refuses a form posted from another site (the `Origin` a browser sends with every `POST`
/// names a host other than the one asked).
fn same_origin(headers: &HeaderMap) -> Result<(), Refusal> {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let origin = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok());
    match (origin, host) {
        (None, _) => Ok(()),
        (Some(o), Some(h)) if url::Url::parse(o).ok().is_some_and(|u| host_port(&u) == h) => Ok(()),
        _ => Err(Refusal::Error(RegistryError::new(ErrorCode::Denied, "a form posted from another site"))),
    }
}

fn host_port(u: &url::Url) -> String {
    match (u.host_str(), u.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_owned(),
        _ => String::new(),
    }
}

#[derive(Deserialize, Default)]
struct ListQuery {
    #[serde(default)]
    filter: String,
}

async fn repositories(
    State(st): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Result<Response, Refusal> {
    let v = viewer(&st, &headers).await?;
    let figures = crate::usage::cluster(&st.registry, 7, &v.visible).await?;
    let filter = q.filter.trim().to_lowercase();
    let rows: Vec<_> = figures.repositories.into_iter().filter(|r| r.repository.contains(&filter)).collect();
    Ok(answer(&v, pages::repositories(&v, &q.filter, &rows, &figures.unanswered)))
}

#[derive(Deserialize)]
struct RepositoryQuery {
    name: String,
    #[serde(default)]
    deleted: Option<String>,
}

/// A repository the viewer may pull, or the refusal the registry gives.
fn readable(v: &Viewer, name: &str) -> Result<RepoName, Refusal> {
    let repo: RepoName = name.parse()?;
    if !v.visible.allows(repo.as_str()) {
        // As for a pull: say nothing of what the viewer may not see.
        return Err(RegistryError::new(ErrorCode::NameUnknown, format!("repository {name} is not known")).into());
    }
    Ok(repo)
}

/// A tag of the repository page, with what the page shows of it.
pub(crate) struct TagView {
    pub detail: usage::TagDetail,
    pub platforms: Vec<String>,
    pub pulls: i64,
    /// The pulls of its manifest in each region that answered (those with any).
    pub by_region: Vec<(String, i64)>,
    pub last_pull: Option<chrono::DateTime<chrono::Utc>>,
    pub referrers: Vec<Referrer>,
}

pub(crate) struct Referrer {
    pub digest: String,
    pub artifact_type: String,
}

async fn repository(
    State(st): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<RepositoryQuery>,
) -> Result<Response, Refusal> {
    let v = viewer(&st, &headers).await?;
    let repo = readable(&v, &q.name)?;
    let reg = &st.registry;
    let tags = usage::tag_details(reg.store.pool(), repo.as_str()).await.map_err(unavailable)?;
    let only_repo = Visible::Grants(Grants(vec![(repo.to_string(), vec![Action::Pull])]));
    let figures = crate::usage::cluster(reg, crate::usage::DEFAULT_DAYS, &only_repo).await?;
    let mut pulls: BTreeMap<&str, (i64, Option<chrono::DateTime<chrono::Utc>>)> = BTreeMap::new();
    let mut by_region: BTreeMap<&str, BTreeMap<&str, i64>> = BTreeMap::new();
    for region in &figures.regions {
        for r in &region.figures.references {
            let e = pulls.entry(r.digest.as_str()).or_default();
            e.0 += r.pulls;
            e.1 = e.1.max(r.last_pull);
            *by_region.entry(r.digest.as_str()).or_default().entry(region.region.as_str()).or_default() += r.pulls;
        }
    }
    let mut views = vec![];
    for t in tags {
        let digest: Digest = t.digest.parse()?;
        let m = reg.get_manifest(&repo, &Reference::Digest(digest.clone()), true).await?;
        let (body, _) = reg.referrers(&repo, &digest, None, 100, None).await?;
        let (count, last) = pulls.get(t.digest.as_str()).copied().unwrap_or_default();
        let regions = by_region.get(t.digest.as_str());
        views.push(TagView {
            platforms: platforms(&m.body),
            pulls: count,
            by_region: regions.map(|r| r.iter().map(|(k, v)| (k.to_string(), *v)).collect()).unwrap_or_default(),
            last_pull: last,
            referrers: referrers(&body),
            detail: t,
        });
    }
    let host = url::Url::parse(&reg.cfg.server.public_url).ok().map(|u| host_port(&u)).unwrap_or_default();
    let delete = v.may(repo.as_str(), Action::Delete);
    Ok(answer(&v, pages::repository(&v, &repo, &host, &views, delete, q.deleted.as_deref())))
}

fn unavailable(e: sqlx::Error) -> RegistryError {
    RegistryError::new(ErrorCode::Unavailable, format!("PostgreSQL: {e}")).with_source(e)
}

/// The platforms an index lists (`os/architecture[/variant]`).
fn platforms(body: &[u8]) -> Vec<String> {
    let Ok(m) = serde_json::from_slice::<serde_json::Value>(body) else { return vec![] };
    let Some(list) = m["manifests"].as_array() else { return vec![] };
    list.iter()
        .filter_map(|d| {
            let p = d.get("platform")?;
            let mut s = format!("{}/{}", p["os"].as_str()?, p["architecture"].as_str()?);
            if let Some(variant) = p["variant"].as_str() {
                s.push('/');
                s.push_str(variant);
            }
            Some(s)
        })
        .collect()
}

fn referrers(index: &[u8]) -> Vec<Referrer> {
    let Ok(m) = serde_json::from_slice::<serde_json::Value>(index) else { return vec![] };
    m["manifests"]
        .as_array()
        .map(|l| {
            l.iter()
                .map(|d| Referrer {
                    digest: d["digest"].as_str().unwrap_or_default().to_owned(),
                    artifact_type: d["artifactType"].as_str().unwrap_or("").to_owned(),
                })
                .collect()
        })
        .unwrap_or_default()
}

#[derive(Deserialize)]
struct ManifestQuery {
    name: String,
    digest: String,
}

async fn manifest(
    State(st): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<ManifestQuery>,
) -> Result<Response, Refusal> {
    let v = viewer(&st, &headers).await?;
    let repo = readable(&v, &q.name)?;
    let digest: Digest = q.digest.parse()?;
    let m = st.registry.get_manifest(&repo, &Reference::Digest(digest.clone()), true).await?;
    let parsed: serde_json::Value = serde_json::from_slice(&m.body).unwrap_or_default();
    let (index, _) = st.registry.referrers(&repo, &digest, None, 100, None).await?;
    let delete = v.may(repo.as_str(), Action::Delete);
    Ok(answer(&v, pages::manifest(&v, &repo, &m.digest, &m.media_type, m.size, &parsed, &referrers(&index), delete)))
}

/// What the console deletes: a manifest (`digest`, with every tag that names it) or a tag.
#[derive(Deserialize)]
struct DeleteForm {
    name: String,
    #[serde(default)]
    digest: Option<String>,
    #[serde(default)]
    tag: Option<String>,
}

impl DeleteForm {
    fn reference(&self) -> Result<Reference, RegistryError> {
        match (&self.digest, &self.tag) {
            (Some(d), None) => Ok(Reference::Digest(d.parse()?)),
            (None, Some(t)) => Ok(Reference::Tag(t.parse()?)),
            _ => Err(RegistryError::new(ErrorCode::Unsupported, "name a digest or a tag to delete, not both")),
        }
    }
}

async fn confirm_delete(
    State(st): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<DeleteForm>,
) -> Result<Response, Refusal> {
    let v = viewer(&st, &headers).await?;
    let repo = readable(&v, &q.name)?;
    let reference = q.reference()?;
    if !v.may(repo.as_str(), Action::Delete) {
        return Err(denied(&v, &repo).into());
    }
    Ok(answer(&v, pages::confirm_delete(&v, &repo, &reference)))
}

fn denied(v: &Viewer, repo: &RepoName) -> RegistryError {
    let who = v.user.as_deref().unwrap_or("an anonymous user");
    RegistryError::new(ErrorCode::Denied, format!("{who} may not delete from {repo}"))
}

async fn delete(
    State(st): State<AppState>,
    client: ClientAddr,
    headers: HeaderMap,
    Form(f): Form<DeleteForm>,
) -> Result<Response, Refusal> {
    same_origin(&headers)?;
    let v = viewer(&st, &headers).await?;
    let repo = readable(&v, &f.name)?;
    let reference = f.reference()?;
    if !v.may(repo.as_str(), Action::Delete) {
        return Err(denied(&v, &repo).into());
    }
    let origin = crate::http::console_origin(&st.registry, &headers, &client, v.user.as_deref());
    st.registry.delete_manifest(&repo, &reference, origin).await?;
    let gone = reference.to_string();
    let to = format!("/ui/repository?name={}&deleted={}", pages::encode(repo.as_str()), pages::encode(&gone));
    Ok(Redirect::to(&to).into_response())
}

#[derive(Deserialize, Default)]
struct ClusterQuery {
    #[serde(default)]
    fragment: bool,
}

async fn cluster(
    State(st): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<ClusterQuery>,
) -> Result<Response, Refusal> {
    let v = viewer(&st, &headers).await?;
    let reg = &st.registry;
    let regions = crate::replica::cluster_status(&reg.cfg, reg.store.pool(), &reg.cluster, &st.status.http).await;
    let table = pages::cluster_table(&regions);
    if q.fragment {
        return Ok(answer(&v, table));
    }
    Ok(answer(&v, pages::cluster(&v, table)))
}

#[derive(Deserialize, Default)]
struct UsageQuery {
    #[serde(default)]
    days: Option<u32>,
}

async fn usage_page(
    State(st): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<UsageQuery>,
) -> Result<Response, Refusal> {
    let v = viewer(&st, &headers).await?;
    let days = q.days.unwrap_or(crate::usage::DEFAULT_DAYS).clamp(1, crate::usage::MAX_DAYS);
    let figures = crate::usage::cluster(&st.registry, days, &v.visible).await?;
    Ok(answer(&v, pages::usage(&v, days, &figures)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("a=1; afreg_console=tok.en; b=2"));
        assert_eq!(session_cookie(&h), Some("tok.en"));
        h.insert(header::COOKIE, HeaderValue::from_static("afreg_consoleX=1"));
        assert_eq!(session_cookie(&h), None);
    }

    #[test]
    fn a_form_from_another_site_is_refused() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("registry.example:5000"));
        assert!(same_origin(&h).is_ok(), "no Origin: not a cross-site browser form");
        h.insert(header::ORIGIN, HeaderValue::from_static("http://registry.example:5000"));
        assert!(same_origin(&h).is_ok());
        h.insert(header::ORIGIN, HeaderValue::from_static("https://evil.example"));
        let refused = same_origin(&h).unwrap_err().into_response();
        assert_eq!(refused.status(), axum::http::StatusCode::FORBIDDEN);
    }

    #[test]
    fn an_index_lists_its_platforms() {
        let body = br#"{"manifests":[{"platform":{"os":"linux","architecture":"amd64"}},
            {"platform":{"os":"linux","architecture":"arm64","variant":"v8"}},{"digest":"x"}]}"#;
        assert_eq!(platforms(body), vec!["linux/amd64", "linux/arm64/v8"]);
        assert!(platforms(b"{}").is_empty());
    }
}
