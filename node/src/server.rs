//! Start-up and shutdown of `afreg serve`: connect the adapters, start this region's Raft node
//! with its internal listener and duties, start the upload sweeper, serve the public API until
//! a signal, then stop in order (public HTTP, duties and internal endpoints, Raft, the pool).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::auth::{Auth, Keys};
use crate::config::Config;
use crate::http::{self, AppState};
use crate::kubo::Kubo;
use crate::registry::Registry;
use crate::store::Store;

mod http01;
mod listener;
mod tls;

use listener::Limits;

pub async fn serve(cfg: Config) -> anyhow::Result<()> {
    raise_open_files_limit();
    let metrics = crate::telemetry::init_metrics()?;
    let limits = Limits::from_config(&cfg.server);
    if let Some((cert, key)) = cfg.server.tls() {
        wait_for_files(&[("server.tls_cert", cert), ("server.tls_key", key)]).await;
    }
    let app = format!("afreg {}", crate::replica::process_name(&cfg));
    let store = Store::connect(&cfg.database, Duration::from_secs(60), &app).await?;
    let kubo = Kubo::new(&cfg.kubo);
    if let Err(e) = kubo.id().await {
        tracing::warn!(event = "kubo_unreachable", error = %e, "Kubo is not reachable yet; blob requests will get 503");
    }
    let keys = Arc::new(region_keys(&cfg, &store).await?);
    let auth = Arc::new(Auth::new(cfg.auth.clone(), keys.clone(), store.clone(), &cfg.server.public_url));

    // The cluster: this region's Raft seat and member, its internal endpoints and duties.
    let shared = cfg.cluster.shared_listeners;
    let internal_listener = listener::bind(cfg.cluster.listen, shared)
        .map_err(|e| anyhow::anyhow!("cluster.listen {}: {e}", cfg.cluster.listen))?;
    let process_at = cfg.cluster.process_listen.unwrap_or(std::net::SocketAddr::new(cfg.cluster.listen.ip(), 0));
    let process_listener =
        listener::bind(process_at, false).map_err(|e| anyhow::anyhow!("cluster.process_listen {process_at}: {e}"))?;
    let (process_url, process_addr) = crate::replica::process_url(&cfg, process_listener.local_addr()?);
    let seat = Arc::new(crate::replica::seat(&cfg, process_url.clone(), process_addr)?);
    let me = crate::replica::this_region(&cfg, &kubo, &keys).await;
    let raft_pool = Store::raft_pool(&cfg.database, &format!("{app} raft"))?;
    let cluster = crate::replica::cluster(&cfg, raft_pool, me, seat)?;
    let shutdown = CancellationToken::new();
    let member = tokio::spawn(cluster.clone().run(shutdown.clone()));
    let who = crate::replica::identity(&cfg);
    let (status_cfg, status_pool, status_cluster) = (cfg.clone(), store.pool().clone(), cluster.clone());
    let extra = axum::Router::new()
        .route("/internal/identity", axum::routing::get(move || async move { axum::Json(who) }))
        .route(
            crate::replica::LOCAL_STATUS_PATH,
            axum::routing::get(move || async move {
                use axum::response::IntoResponse;
                match crate::replica::local_status(&status_cfg, &status_pool, &status_cluster).await {
                    Ok(s) => axum::Json(s).into_response(),
                    Err(e) => (crate::oci::ErrorCode::Unavailable.status(), e.to_string()).into_response(),
                }
            }),
        );
    let usage_pool = store.pool().clone();
    let extra = extra.route(
        crate::usage::INTERNAL_PATH,
        axum::routing::get(move |q: axum::extract::Query<InternalUsageQuery>| async move {
            use axum::response::IntoResponse;
            match crate::usage::local(&usage_pool, q.since).await {
                Ok(f) => axum::Json(f).into_response(),
                Err(e) => e.into_response(),
            }
        }),
    );
    let internal = afreg_replication::rpc::server::router(cluster.clone(), extra);
    tracing::info!(event = "internal_listening", addr = %cfg.cluster.listen, process_url = %process_url, region = %cfg.cluster.region,
        region_id = cfg.cluster.id, process = %crate::replica::process_name(&cfg), "internal endpoints (raft, forwarding) serving");
    let stop_internal = shutdown.clone();
    // With TLS configured, the internal endpoint uses the same certificate: the cluster secret
    // crosses the WAN only encrypted.
    let (node_tls, http01) = tls::from_config(&cfg.server, shutdown.clone())?;
    let http01 = match (http01, &cfg.server.acme) {
        (Some(resolver), Some(acme)) => {
            let responder = Arc::new(http01::Responder::new(resolver, acme, &cfg, store.pool().clone())?);
            Some(http01::start(acme.http_listen, responder, limits.clone(), shutdown.clone()).await?)
        }
        _ => None,
    };
    let internal_tls = node_tls.clone();
    let (process_app, process_tls, stop_process) = (internal.clone(), node_tls.clone(), stop_internal.clone());
    let internal_limits = limits.clone();
    let internal_server = tokio::spawn(async move {
        let stop = stop_internal.cancelled_owned();
        if let Err(e) =
            listener::serve("internal", internal_listener, internal, internal_tls, internal_limits, stop).await
        {
            tracing::error!(event = "internal_server_failed", error = %e, "internal server stopped");
        }
    });
    // This process's own internal listener: where the region's other processes relay to it
    // while it holds the Raft seat.
    let process_limits = limits.clone();
    let process_server = tokio::spawn(async move {
        let stop = stop_process.cancelled_owned();
        if let Err(e) =
            listener::serve("process", process_listener, process_app, process_tls, process_limits, stop).await
        {
            tracing::error!(event = "process_server_failed", error = %e, "process listener stopped");
        }
    });
    let st = &cfg.storage;
    let files = crate::blob_files::BlobFiles::open(&st.blob_cache_dir, st.blob_cache_bytes)
        .map_err(|e| anyhow::anyhow!("storage.blob_cache_dir {}: {e}", st.blob_cache_dir.display()))?;
    let metrics_server =
        spawn_metrics(cfg.server.metrics_listen, metrics.clone(), files.clone(), limits.clone(), shutdown.clone())
            .await?;
    let duties = crate::replica::spawn_duties(
        &cfg,
        store.pool().clone(),
        cluster.clone(),
        kubo.clone(),
        files.clone(),
        keys,
        shutdown.clone(),
    );
    let scrub = files.clone().map(|f| {
        let (every, rate) = (st.blob_cache_scrub_interval_secs, st.blob_cache_scrub_bytes_per_second);
        tokio::spawn(scrub_blob_files(f, every, rate, shutdown.clone()))
    });

    let registry = Arc::new(Registry::new(store.clone(), kubo, files, cfg.clone(), cluster.clone()));
    if let Ok(n) = store.open_uploads().await {
        metrics::gauge!("afreg_upload_sessions_open").set(n as f64);
    }
    let sweeper = tokio::spawn(sweep_uploads(registry.clone(), shutdown.clone()));
    let notifiers = crate::notifications::spawn(registry.clone(), shutdown.clone());
    let evictor = crate::mirror_eviction::spawn(registry.clone(), shutdown.clone());
    let pull_endpoints = cfg
        .notifications
        .endpoints
        .iter()
        .filter(|e| e.pulls && !e.disabled)
        .map(|e| (e.name.clone(), e.max_age()))
        .collect();
    let pull_writer = registry.pulls.spawn_writer(store.clone(), pull_endpoints, shutdown.clone());
    let kubo_gc =
        tokio::spawn(collect_kubo_garbage(registry.kubo.clone(), cfg.kubo.gc_interval_secs, shutdown.clone()));
    let upkeep = tokio::spawn(metrics_upkeep(metrics.clone(), shutdown.clone()));

    let app = http::router(AppState { registry, auth, status: Arc::new(http::StatusCache::new()?) });
    let listener = listener::bind(cfg.server.listen, shared)
        .map_err(|e| anyhow::anyhow!("server.listen {}: {e}", cfg.server.listen))?;
    tracing::info!(event = "listening", addr = %cfg.server.listen, public_url = %cfg.server.public_url, tls = cfg.server.https(), "afreg node serving");
    // The public listener drains first (`server.drain_secs`) while Raft, the internal endpoints
    // and the duties still run, so a write in flight commits or fails on its own terms; only
    // then does the rest stop. (Stopping Raft at the signal left such a write waiting out the
    // write timeout for a member that was gone, and the node's exit with it.)
    let stop = async move {
        signal().await;
        tracing::info!(event = "shutdown", "shutting down: draining the requests in flight");
    };
    listener::serve("public", listener, app, node_tls, limits.clone(), stop).await?;
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), metrics_server).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), sweeper).await;
    for t in notifiers {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    if let Some(t) = pull_writer {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    if let Some(t) = evictor {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), kubo_gc).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), upkeep).await;
    if let Some(t) = scrub {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    for t in duties {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), internal_server).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), process_server).await;
    if let Some(t) = http01 {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    // Stops the Raft member, then releases the seat, so another process takes it at once.
    let _ = tokio::time::timeout(Duration::from_secs(12), member).await;
    store_close(store).await;
    Ok(())
}

async fn store_close(_store: Store) {}

/// The token signing key: the one the region's Postgres records for all its processes (each
/// may have its own volume), else this process's `auth.signing_key`, which then becomes the
/// region's. The file is created if missing.
async fn region_keys(cfg: &Config, store: &Store) -> anyhow::Result<Keys> {
    let local = Keys::load_or_create(&cfg.auth)?;
    let pem = std::fs::read_to_string(&cfg.auth.signing_key)?;
    let shared =
        store.share_signing_key(&pem).await.map_err(|e| anyhow::anyhow!("recording the region's signing key: {e}"))?;
    if shared == pem {
        return Ok(local);
    }
    tracing::warn!(event = "signing_key_shared", path = %cfg.auth.signing_key.display(),
        "auth.signing_key differs from the key this region's processes share (in its Postgres); signing with the shared one");
    Ok(Keys::from_pem(&cfg.auth, &shared)?)
}

/// Serves Prometheus `/metrics` on `server.metrics_listen`, a listener of its own (loopback
/// by default), so the figures are not on the public port.
async fn spawn_metrics(
    addr: std::net::SocketAddr,
    handle: metrics_exporter_prometheus::PrometheusHandle,
    files: Option<Arc<crate::blob_files::BlobFiles>>,
    limits: Limits,
    stop: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener =
        tokio::net::TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("server.metrics_listen {addr}: {e}"))?;
    if !addr.ip().is_loopback() {
        tracing::warn!(event = "metrics_not_loopback", addr = %addr, "/metrics is served beyond loopback: keep that address off the public network");
    }
    // The blob files' counters move with every pull: set from them at each scrape (they were
    // set only when a file landed or went, so hits and misses read stale).
    let render = move || {
        if let Some(f) = &files {
            f.publish();
        }
        handle.render()
    };
    let app = axum::Router::new().route("/metrics", axum::routing::get(move || async move { render() }));
    tracing::info!(event = "metrics_listening", addr = %addr, "Prometheus /metrics serving");
    Ok(tokio::spawn(async move {
        if let Err(e) = listener::serve("metrics", listener, app, None, limits, stop.cancelled_owned()).await {
            tracing::error!(event = "metrics_server_failed", error = %e, "metrics listener stopped");
        }
    }))
}

/// The connection caps assume the process may open that many files: raise the soft limit to
/// the hard one (what Go's runtime does at start), and say so when even that is lower.
fn raise_open_files_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) if n < 8192 => tracing::warn!(
            event = "open_files_limit",
            limit = n,
            "the open-files limit is low for server.max_connections; raise the hard limit (ulimit -Hn)"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(event = "open_files_limit", error = %e, "could not raise the open-files limit"),
    }
}

/// Waits until every file exists and is not empty, saying every 10 s which it is waiting for:
/// a fresh volume gets its certificate copied in after the node started, and a node that
/// exits instead would only restart in a loop. Ends the process on SIGTERM meanwhile.
async fn wait_for_files(files: &[(&str, &std::path::Path)]) {
    let ready = |p: &std::path::Path| std::fs::metadata(p).is_ok_and(|m| m.len() > 0);
    let mut stop = std::pin::pin!(signal());
    for second in 0u64.. {
        let missing: Vec<String> =
            files.iter().filter(|(_, p)| !ready(p)).map(|(field, p)| format!("{field} {}", p.display())).collect();
        if missing.is_empty() {
            return;
        }
        if second % 10 == 0 {
            tracing::warn!(event = "waiting_for_files", missing = %missing.join(", "), "waiting for these files before serving");
        }
        tokio::select! {
            _ = &mut stop => {
                crate::telemetry::finish_logs();
                std::process::exit(0)
            }
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

async fn signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal handler");
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}

/// Runs Kubo's repository GC at most every `every_secs` (0: never), when something was
/// unpinned since the last run, so the bytes of rejected, cancelled, deleted and collected
/// blobs leave the disk.
async fn collect_kubo_garbage(kubo: crate::kubo::Kubo, every_secs: u64, stop: CancellationToken) {
    if every_secs == 0 {
        return;
    }
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(every_secs)) => {}
        }
        let started = std::time::Instant::now();
        match kubo.collect_garbage().await {
            Ok(None) => {}
            Ok(Some(blocks)) => tracing::info!(
                event = "kubo_gc",
                blocks_removed = blocks,
                duration_ms = started.elapsed().as_millis() as u64,
                "Kubo repository GC done"
            ),
            Err(e) => tracing::warn!(event = "kubo_gc_failed", error = %e, "Kubo repository GC failed; will retry"),
        }
    }
}

/// Re-reads every blob file once per `every_secs` (0: never) at `bytes_per_second`, removing
/// those whose bytes no longer match their digest (see [`crate::blob_files`]).
async fn scrub_blob_files(
    files: Arc<crate::blob_files::BlobFiles>,
    every_secs: u64,
    bytes_per_second: u64,
    stop: CancellationToken,
) {
    if every_secs == 0 {
        return;
    }
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(every_secs)) => {}
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = files.scrub(bytes_per_second) => {}
        }
    }
}

/// Drains the Prometheus recorder's histogram samples into their buckets every few seconds,
/// so that memory does not grow between scrapes (or without any).
async fn metrics_upkeep(handle: metrics_exporter_prometheus::PrometheusHandle, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => handle.run_upkeep(),
        }
    }
}

/// Removes stale upload sessions periodically; one sweep is one uninterrupted unit of work.
async fn sweep_uploads(reg: Arc<Registry>, stop: CancellationToken) {
    let every = Duration::from_secs(reg.cfg.storage.upload_sweep_interval_secs.max(1));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        if let Err(e) = reg.sweep_uploads().await {
            tracing::warn!(event = "upload_sweep_failed", error = %e, "stale-upload sweep failed");
        }
    }
}

/// What another region asks of `/internal/usage`: this region's figures since a day.
#[derive(serde::Deserialize)]
struct InternalUsageQuery {
    since: chrono::NaiveDate,
}
