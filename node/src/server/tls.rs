//! HTTPS for `afreg serve`: rustls (ring) through axum-server on both listeners (served by
//! `listener`). The certificate comes from files (`server.tls_cert`/
//! `tls_key`, re-read on SIGHUP after a renewal) or from ACME (`server.acme`): rustls-acme
//! obtains it through TLS-ALPN-01 on the public listener (or HTTP-01, answered by `http01`),
//! keeps the account and certificate in
//! `cache_dir` so a restart reuses them, and renews it (at two thirds of its lifetime) in a task
//! of its own; new handshakes get the new certificate, connections in flight keep theirs.

use std::path::PathBuf;
use std::sync::Arc;

use afreg_config::{AcmeChallenge, AcmeConfig};
use anyhow::Context as _;
use axum_server::tls_rustls::RustlsConfig;
use futures::StreamExt as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateDer;
use rustls_acme::{ResolvesServerCertAcme, UseChallenge};
use tokio_util::sync::CancellationToken;

/// Where the listeners' certificate comes from.
#[derive(Clone)]
pub enum Tls {
    Files {
        cert: PathBuf,
        key: PathBuf,
    },
    /// A rustls config whose certificate resolver is ACME's.
    Acme(Arc<rustls::ServerConfig>),
}

/// The one crypto provider: ring (no aws-lc-rs C build).
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The rustls config of `tls` for a listener, and with certificate files the task that re-reads
/// them on SIGHUP (to abort when the listener stops).
pub async fn rustls_config(tls: Tls) -> anyhow::Result<(RustlsConfig, Option<tokio::task::JoinHandle<()>>)> {
    // rustls needs one process-wide crypto provider; installing ring explicitly keeps it the
    // one if another dependency ever enables aws-lc-rs. An Err means one is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    Ok(match tls {
        Tls::Files { cert, key } => {
            let config = RustlsConfig::from_pem_file(&cert, &key).await.with_context(|| {
                format!("TLS: cannot load server.tls_cert {} / server.tls_key {}", cert.display(), key.display())
            })?;
            let reload = tokio::spawn(reload_on_sighup(config.clone(), cert, key));
            (config, Some(reload))
        }
        Tls::Acme(server_config) => (RustlsConfig::from_config(server_config), None),
    })
}

/// Re-reads the certificate and key on SIGHUP; a bad pair is logged and the old one kept.
async fn reload_on_sighup(config: RustlsConfig, cert: PathBuf, key: PathBuf) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else { return };
    while hup.recv().await.is_some() {
        match config.reload_from_pem_file(&cert, &key).await {
            Ok(()) => tracing::info!(event = "tls_reloaded", cert = %cert.display(), "TLS certificate reloaded"),
            Err(e) => {
                tracing::warn!(event = "tls_reload_failed", error = %e, "TLS certificate not reloaded; keeping the previous one")
            }
        }
    }
}

/// Starts ACME for `acme`: returns the server config both listeners use (its certificate
/// resolver answers TLS-ALPN-01 challenges and serves the current certificate) and that
/// resolver (which holds an HTTP-01 challenge's answer), and spawns the task that obtains,
/// caches and renews the certificate until `stop`.
pub fn start_acme(acme: &AcmeConfig, stop: CancellationToken) -> anyhow::Result<(Tls, Arc<ResolvesServerCertAcme>)> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(ca) = &acme.ca_file {
        for cert in
            CertificateDer::pem_file_iter(ca).with_context(|| format!("server.acme.ca_file {}", ca.display()))?
        {
            roots.add(cert.with_context(|| format!("server.acme.ca_file {}", ca.display()))?)?;
        }
    }
    let client = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    std::fs::create_dir_all(&acme.cache_dir)
        .with_context(|| format!("server.acme.cache_dir {}", acme.cache_dir.display()))?;
    let mut state = rustls_acme::AcmeConfig::new_with_client_config(&acme.domains, Arc::new(client))
        .directory(&acme.directory_url)
        .contact(&acme.contact)
        .cache(rustls_acme::caches::DirCache::new(acme.cache_dir.clone()))
        .challenge_type(match acme.challenge {
            AcmeChallenge::TlsAlpn01 => UseChallenge::TlsAlpn01,
            AcmeChallenge::Http01 => UseChallenge::Http01,
        })
        .state();
    let resolver = state.resolver();
    let mut server = (*state.challenge_rustls_config_with_provider(provider())).clone();
    // HTTP/1.1 for clients; `acme-tls/1` (already listed) for the CA's TLS-ALPN-01 check.
    server.alpn_protocols.insert(0, b"http/1.1".to_vec());
    let domains = acme.domains.join(",");
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                event = state.next() => match event {
                    Some(Ok(ok)) => tracing::info!(event = "acme", outcome = ?ok, domains = %domains, "ACME certificate event"),
                    Some(Err(e)) => tracing::warn!(event = "acme_failed", error = %e, domains = %domains, "ACME: will retry"),
                    None => return,
                },
            }
        }
    });
    Ok((Tls::Acme(Arc::new(server)), resolver))
}

/// The node's TLS, if any (ACME's or the files'), and with ACME over HTTP-01 the resolver
/// holding this node's challenge.
pub fn from_config(
    server: &afreg_config::ServerConfig,
    stop: CancellationToken,
) -> anyhow::Result<(Option<Tls>, Option<Arc<ResolvesServerCertAcme>>)> {
    if let Some(acme) = &server.acme {
        let (tls, resolver) = start_acme(acme, stop)?;
        return Ok((Some(tls), (acme.challenge == AcmeChallenge::Http01).then_some(resolver)));
    }
    Ok((server.tls().map(|(cert, key)| Tls::Files { cert: cert.to_owned(), key: key.to_owned() }), None))
}
