//! The public HTTP server: `/v2/…` (parsed into an `Endpoint`, authorized, then dispatched
//! with one flat `match`), the token service, JWKS, health, readiness and status (Prometheus
//! metrics have a listener of their own).
//! Every `/v2/` request is counted, timed and logged here, in one place.

pub(crate) mod handlers;
mod limits;
pub(crate) mod token;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use tower_http::set_header::SetResponseHeaderLayer;

use crate::auth::{Auth, Need};
use crate::client::{ClientAddresses, ClientKey};
use crate::oci::{self, Action, Endpoint, ErrorCode, RegistryError};
use crate::registry::Registry;

/// The client a request comes from: its address (the TCP peer's, or the one a trusted proxy
/// names) and the key its limits count under (see [`crate::client`]). The limits middleware
/// works it out once and leaves it in the request's extensions; without that (a router driven
/// without it), the TCP peer's with the default keying, and unspecified without a connection.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr {
    pub ip: std::net::IpAddr,
    pub key: ClientKey,
}

impl ClientAddr {
    pub fn of(extensions: &axum::http::Extensions, headers: &HeaderMap, clients: &ClientAddresses) -> ClientAddr {
        let peer = extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip())
            .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        let ip = clients.client_ip(peer, headers);
        ClientAddr { ip, key: clients.key(ip) }
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> Result<Self, Self::Rejection> {
        if let Some(c) = parts.extensions.get::<ClientAddr>() {
            return Ok(*c);
        }
        Ok(ClientAddr::of(&parts.extensions, &HeaderMap::new(), &ClientAddresses::default()))
    }
}

#[derive(Clone)]
pub struct AppState {
    pub registry: Arc<Registry>,
    pub auth: Arc<Auth>,
    pub status: Arc<StatusCache>,
}

/// `/status` is public and the cluster view asks every other region, so it is computed at most
/// once a second, whatever the request rate, with one HTTP client. The local view (one small
/// query, no network) is what the other regions and failover monitors poll, so it is kept
/// fresher: at most ten computations a second. The lock is held
/// while the figures are gathered (each region's answer bounded by 2 s) on purpose: requests
/// that arrive meanwhile wait for that one computation instead of starting their own.
pub struct StatusCache {
    /// The client of the other regions' public `/status` (2 s a request); the console's
    /// cluster page asks through it too.
    pub(crate) http: reqwest::Client,
    local: tokio::sync::Mutex<Option<(Instant, serde_json::Value)>>,
    cluster: tokio::sync::Mutex<Option<(Instant, serde_json::Value)>>,
}

/// How long a computed `/status` is served again: the cluster view, the local one.
const STATUS_FRESH: Duration = Duration::from_secs(1);
const LOCAL_STATUS_FRESH: Duration = Duration::from_millis(100);

impl StatusCache {
    pub fn new() -> anyhow::Result<StatusCache> {
        Ok(StatusCache {
            http: reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?,
            local: Default::default(),
            cluster: Default::default(),
        })
    }
}

/// The label value of an HTTP method: one of a fixed set, so a client cannot grow the
/// metrics' label values with method tokens of its own.
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

pub fn router(state: AppState) -> Router {
    let rates = Arc::new(limits::RequestLimits::new(&state.registry.cfg.server, state.auth.keys.clone()));
    let console = crate::console::router(state.clone());
    let cors = cors(&state.registry.cfg.server.cors);
    let router = Router::new()
        .route("/v2/_afreg/usage", get(usage))
        .route("/v2", any(v2))
        .route("/v2/", any(v2))
        .route("/v2/{*rest}", any(v2))
        .route("/token", get(token::get_token).post(token::post_token))
        .route("/token/jwks.json", get(token::jwks))
        .route("/.well-known/jwks.json", get(token::jwks))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .with_state(state)
        // Stored bytes (manifests, blobs) are served from the registry's origin: never let a
        // browser run anything in them. (The console, merged below, has a policy of its own.)
        .layer(SetResponseHeaderLayer::overriding(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'; sandbox"),
        ))
        .merge(console)
        .layer(axum::middleware::from_fn_with_state(rates, limits::limit))
        // A panic in a handler answers 500 instead of dropping the connection.
        .layer(tower_http::catch_panic::CatchPanicLayer::new())
        // Never let a browser sniff a response into another type.
        .layer(SetResponseHeaderLayer::overriding(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")));
    // Outermost, so that a preflight is answered before the limits and the auth.
    match cors {
        Some(layer) => router.layer(layer),
        None => router,
    }
}

/// `server.cors`: what browser UIs on the listed origins may send and read (None: no
/// cross-origin access). Listed origins may send credentials; `*` may not.
fn cors(c: &crate::config::CorsConfig) -> Option<tower_http::cors::CorsLayer> {
    use axum::http::HeaderName;
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if c.allowed_origins.is_empty() {
        return None;
    }
    let name = HeaderName::from_static;
    let layer = CorsLayer::new()
        .allow_methods([Method::GET, Method::HEAD, Method::POST, Method::PUT, Method::PATCH, Method::DELETE])
        .allow_headers([
            header::AUTHORIZATION,
            header::ACCEPT,
            header::CONTENT_TYPE,
            header::CONTENT_RANGE,
            header::RANGE,
            name("x-afreg-consistency"),
        ])
        .expose_headers([
            name(oci::DOCKER_CONTENT_DIGEST),
            header::LINK,
            header::WWW_AUTHENTICATE,
            header::LOCATION,
            header::RANGE,
            header::CONTENT_RANGE,
            header::CONTENT_LENGTH,
            name("docker-upload-uuid"),
            name("docker-distribution-api-version"),
            name("oci-subject"),
            name("oci-filters-applied"),
        ])
        .max_age(Duration::from_secs(600));
    if c.allowed_origins.iter().any(|o| o == "*") {
        return Some(layer.allow_origin(tower_http::cors::Any));
    }
    let origins: Vec<HeaderValue> = c.allowed_origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()).collect();
    Some(layer.allow_origin(AllowOrigin::list(origins)).allow_credentials(true))
}

/// A console request (a delete) as its notification event names it.
pub(crate) fn console_origin(
    reg: &crate::registry::Registry,
    headers: &HeaderMap,
    client: &ClientAddr,
    user: Option<&str>,
) -> afreg_replication::EventOrigin {
    event_origin(reg, &Method::POST, headers, &client.ip.to_string(), user)
}

/// A request as its notification event names it (distribution's `request`, `actor` and
/// `source`), with a fresh request id.
fn event_origin(
    reg: &crate::registry::Registry,
    method: &Method,
    headers: &HeaderMap,
    addr: &str,
    user: Option<&str>,
) -> afreg_replication::EventOrigin {
    let header =
        |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    afreg_replication::EventOrigin {
        request_id: uuid::Uuid::new_v4().to_string(),
        addr: addr.to_owned(),
        host: header(header::HOST),
        method: method.to_string(),
        user_agent: header(header::USER_AGENT),
        actor: user.unwrap_or_default().to_owned(),
        region: reg.cfg.cluster.region.clone(),
        instance: reg.instance.clone(),
        url_base: reg.cfg.server.public_url.trim_end_matches('/').to_owned(),
    }
}

/// What an endpoint needs from the caller's token.
fn need(ep: &Endpoint, method: &Method) -> Need {
    let action = match (ep, method) {
        (Endpoint::Base, _) => return Need::Login,
        (Endpoint::Catalog, _) => return Need::Catalog,
        (_, &Method::GET | &Method::HEAD) if !matches!(ep, Endpoint::Upload(..)) => Action::Pull,
        (Endpoint::Manifest(..) | Endpoint::Blob(..), &Method::DELETE) => Action::Delete,
        _ => Action::Push,
    };
    Need::Repo(ep.repo().expect("repository endpoint").clone(), action)
}

async fn v2(
    State(st): State<AppState>,
    client: ClientAddr,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let path = percent_encoding::percent_decode_str(uri.path()).decode_utf8_lossy().into_owned();
    let rest = path.strip_prefix("/v2").unwrap_or("").trim_start_matches('/');
    let query = handlers::Query::parse(uri.query());
    // containerd's `?ns=` names the registry a mirrored request is for.
    let in_namespace = st.registry.mirror.with_namespace(rest, query.get("ns"));
    let rest = in_namespace.as_deref().unwrap_or(rest);
    let mut route = "unknown";
    let mut repo = String::new();
    let result = async {
        let ep = match oci::router::parse(rest) {
            // A tag that cannot exist is simply unknown to reads; only a PUT of it is bad input.
            Err(e) if e.code == ErrorCode::TagInvalid && method != Method::PUT => {
                return Err(RegistryError::new(ErrorCode::ManifestUnknown, e.message));
            }
            r => r?,
        };
        route = ep.route();
        repo = ep.repo().map(|r| r.to_string()).unwrap_or_default();
        if !ep.allows(&method) {
            return Err(RegistryError::new(
                ErrorCode::MethodNotAllowed,
                format!("{method} is not supported on this endpoint"),
            ));
        }
        let mount_from = match (&ep, query.get("mount"), query.get("from")) {
            (Endpoint::UploadStart(_), Some(_), Some(from)) => Some(from.parse::<oci::RepoName>()?),
            _ => None,
        };
        let user = st.auth.authorize_mount(&headers, &need(&ep, &method), mount_from.as_ref())?;
        let origin = event_origin(&st.registry, &method, &headers, &client.ip.to_string(), user.as_deref());
        // Whose upload sessions these are (storage.max_uploads_per_user).
        let owner = match user {
            Some(u) => format!("user:{u}"),
            None => format!("address:{}", client.key),
        };
        if linearizable(&query, &headers) && matches!(method, Method::GET | Method::HEAD) {
            // Read index through the leader: this region first applies everything committed.
            st.registry.cluster.read_barrier().await?;
        }
        handlers::handle(&st, ep, &method, &query, &headers, body, &owner, origin).await
    }
    .await;
    let mut resp = result.unwrap_or_else(|e| {
        if e.status().is_server_error() {
            tracing::warn!(event = "request_failed", route, repository = %repo, error = %e, "request failed");
        }
        e.into_response()
    });
    let (k, v) = oci::API_VERSION_HEADER;
    resp.headers_mut().insert(k, HeaderValue::from_static(v));
    let status = resp.status().as_u16().to_string();
    let elapsed = started.elapsed();
    metrics::counter!("afreg_http_requests_total", "route" => route, "method" => method_label(&method), "code" => status.clone())
        .increment(1);
    metrics::histogram!("afreg_http_request_duration_seconds", "route" => route, "method" => method_label(&method))
        .record(elapsed.as_secs_f64());
    tracing::info!(event = "request", method = %method, route, repository = %repo, status = %status,
        duration_ms = elapsed.as_millis() as u64, "request");
    resp
}

/// A read that must see every write acknowledged anywhere before it: `?consistency=linearizable`
/// or the header `X-Afreg-Consistency: linearizable`. Other reads are served from this
/// region's own state, which may trail the leader by the replication lag.
fn linearizable(q: &handlers::Query, h: &HeaderMap) -> bool {
    const L: &str = "linearizable";
    q.get("consistency") == Some(L)
        || h.get("x-afreg-consistency").and_then(|v| v.to_str().ok()).is_some_and(|v| v.eq_ignore_ascii_case(L))
}

/// `GET /status`: every region's role, term, leader, applied index, lag, pin backlog and bytes
/// replicated; `?scope=local` only this region's (what the others ask for).
async fn status(State(st): State<AppState>, uri: Uri) -> Response {
    let q = handlers::Query::parse(uri.query());
    let reg = &st.registry;
    let local = q.get("scope") == Some("local");
    let mut cached = if local { st.status.local.lock().await } else { st.status.cluster.lock().await };
    let fresh = if local { LOCAL_STATUS_FRESH } else { STATUS_FRESH };
    if let Some((_, v)) = cached.as_ref().filter(|(at, _)| at.elapsed() < fresh) {
        return axum::Json(with_blob_files(reg, v.clone())).into_response();
    }
    metrics::counter!("afreg_status_computed_total", "scope" => if local { "local" } else { "cluster" }).increment(1);
    let v = if local {
        match crate::replica::local_status(&reg.cfg, reg.store.pool(), &reg.cluster).await {
            Ok(s) => serde_json::to_value(s).unwrap_or_default(),
            Err(e) => {
                let body = axum::Json(serde_json::json!({"error": e.to_string()}));
                return (ErrorCode::Unavailable.status(), body).into_response();
            }
        }
    } else {
        let regions = crate::replica::cluster_status(&reg.cfg, reg.store.pool(), &reg.cluster, &st.status.http).await;
        let notifications = crate::notifications::status(reg).await;
        serde_json::json!({"region": reg.cfg.cluster.region, "id": reg.cluster.id,
            "process": crate::replica::process_name(&reg.cfg), "regions": regions, "notifications": notifications})
    };
    *cached = Some((Instant::now(), v.clone()));
    axum::Json(with_blob_files(reg, v)).into_response()
}

/// Adds this process's blob-file figures (each process of a region keeps its own; they are
/// counters in memory, so never served from the status cache).
fn with_blob_files(reg: &Registry, mut v: serde_json::Value) -> serde_json::Value {
    if let (Some(files), Some(obj)) = (&reg.files, v.as_object_mut()) {
        obj.insert("blob_files".into(), serde_json::to_value(files.status()).unwrap_or_default());
    }
    v
}

/// `GET /v2/_afreg/usage?days=N`: pulls and bytes served per region, repository, day and
/// reference over the last N days (30 by default), beside what each repository stores; only
/// the repositories the caller may pull ([`crate::usage`]).
async fn usage(State(st): State<AppState>, client: ClientAddr, uri: Uri, headers: HeaderMap) -> Response {
    let q = handlers::Query::parse(uri.query());
    let answer = async {
        let days = match q.get("days") {
            None => crate::usage::DEFAULT_DAYS,
            Some(d) => d.parse().ok().filter(|d| (1..=crate::usage::MAX_DAYS).contains(d)).ok_or_else(|| {
                RegistryError::new(
                    ErrorCode::Unsupported,
                    format!("days={d:?}: expected a whole number from 1 to {}", crate::usage::MAX_DAYS),
                )
            })?,
        };
        let (_, visible) = st.auth.visible(client, &headers).await?;
        crate::usage::cluster(&st.registry, days, &visible).await
    }
    .await;
    let mut resp = match answer {
        Ok(u) => axum::Json(u).into_response(),
        Err(e) => e.into_response(),
    };
    let (k, v) = oci::API_VERSION_HEADER;
    resp.headers_mut().insert(k, HeaderValue::from_static(v));
    resp
}

async fn readyz(State(st): State<AppState>) -> Response {
    let t = Duration::from_secs(2);
    let pg = match tokio::time::timeout(t, st.registry.store.ping()).await {
        Ok(Ok(())) => "ok".to_owned(),
        Ok(Err(e)) => e.message,
        Err(_) => "PostgreSQL did not answer within 2s".into(),
    };
    let kubo = match tokio::time::timeout(t, st.registry.kubo.id()).await {
        Ok(Ok(_)) => "ok".to_owned(),
        Ok(Err(e)) => e.to_string(),
        Err(_) => "Kubo did not answer within 2s".into(),
    };
    let ready = pg == "ok" && kubo == "ok";
    let status = if ready { StatusCode::OK } else { ErrorCode::Unavailable.status() };
    (status, axum::Json(serde_json::json!({"ready": ready, "postgres": pg, "kubo": kubo}))).into_response()
}
