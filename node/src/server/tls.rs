//! HTTPS for `afreg serve` when `server.tls_cert` and `server.tls_key` are set: rustls (ring)
//! through axum-server, with the same graceful shutdown as plain HTTP and SIGHUP to re-read the
//! certificate after a renewal.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use axum::Router;
use axum_server::tls_rustls::RustlsConfig;
use axum_server::Handle;

/// Serves `app` over TLS on `listener` until `shutdown` completes, then drains connections
/// (like `axum::serve(..).with_graceful_shutdown`).
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    cert: &Path,
    key: &Path,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // rustls needs one process-wide crypto provider; ring is the only one compiled in, and
    // installing it explicitly keeps that so if another dependency ever enables aws-lc-rs.
    // An Err means one is installed already, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = RustlsConfig::from_pem_file(cert, key)
        .await
        .with_context(|| format!("TLS: cannot load server.tls_cert {} / server.tls_key {}", cert.display(), key.display()))?;
    let reload = tokio::spawn(reload_on_sighup(config.clone(), cert.to_owned(), key.to_owned()));

    let handle = Handle::new();
    let h = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        h.graceful_shutdown(None);
    });
    let result = axum_server::from_tcp_rustls(listener.into_std()?, config)?
        .handle(handle)
        .serve(app.into_make_service())
        .await;
    reload.abort();
    Ok(result?)
}

/// Re-reads the certificate and key on SIGHUP; a bad pair is logged and the old one kept.
async fn reload_on_sighup(config: RustlsConfig, cert: PathBuf, key: PathBuf) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else { return };
    while hup.recv().await.is_some() {
        match config.reload_from_pem_file(&cert, &key).await {
            Ok(()) => tracing::info!(event = "tls_reloaded", cert = %cert.display(), "TLS certificate reloaded"),
            Err(e) => tracing::warn!(event = "tls_reload_failed", error = %e, "TLS certificate not reloaded; keeping the previous one"),
        }
    }
}
