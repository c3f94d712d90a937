//! Structured JSON logs (tracing) and the Prometheus recorder behind `/metrics`.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Lines waiting for the log thread before a request that logs waits for room (none is
/// dropped: a full queue slows the writers rather than losing what they said).
const LOG_QUEUE_LINES: usize = 64 * 1024;

/// The log thread's guard: dropping it writes out what is queued. Held here so that every way
/// out of the process (`finish_logs` before `process::exit`) can flush.
static LOG_GUARD: std::sync::Mutex<Option<tracing_appender::non_blocking::WorkerGuard>> = std::sync::Mutex::new(None);

/// Logs go to stderr through a thread of their own (tracing-appender): a request formats its
/// line and queues it, and the thread writes the queue out in batches through one buffer,
/// flushed whenever the queue is empty. One `write` per line on the request's thread was most
/// of what the access log cost at the default level.
pub fn init_logs(cfg: &LogConfig) {
    let filter = EnvFilter::try_new(&cfg.level).unwrap_or_else(|_| EnvFilter::new("info"));
    let (out, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .thread_name("afreg-log")
        .finish(std::io::BufWriter::with_capacity(64 * 1024, std::io::stderr()));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(out.clone());
    let installed = match cfg.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_target(false)
            .with_writer(move || ServiceTagged { line: Vec::with_capacity(256), out: out.clone() })
            .try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
    if installed.is_ok() {
        *LOG_GUARD.lock().unwrap() = Some(guard);
    }
}

/// Writes out the queued log lines; call before `std::process::exit`, which skips destructors.
pub fn finish_logs() {
    drop(LOG_GUARD.lock().unwrap().take());
}

/// Queues one JSON log line with `"service":"registry"` first, the field the seed's log format
/// names (tracing's JSON formatter has no static fields). One writer per event.
struct ServiceTagged {
    line: Vec<u8>,
    out: tracing_appender::non_blocking::NonBlocking,
}

impl std::io::Write for ServiceTagged {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.line.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for ServiceTagged {
    fn drop(&mut self) {
        use std::io::Write;
        let out = match self.line.strip_prefix(b"{") {
            Some(rest) => [&b"{\"service\":\"registry\","[..], rest].concat(),
            None => std::mem::take(&mut self.line),
        };
        let _ = self.out.write_all(&out);
    }
}

const LATENCY_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// Installs the global metrics recorder; histograms get latency buckets.
pub fn init_metrics() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)?
        .install_recorder()?;
    metrics::describe_counter!("afreg_http_requests_total", "OCI API requests by route, method and status");
    metrics::describe_histogram!("afreg_http_request_duration_seconds", "OCI API request latency");
    metrics::describe_counter!("afreg_bytes_in_total", "Blob bytes received from clients");
    metrics::describe_counter!("afreg_bytes_out_total", "Blob and manifest bytes sent to clients");
    metrics::describe_histogram!("afreg_kubo_call_seconds", "Kubo RPC latency by command");
    metrics::describe_histogram!("afreg_postgres_query_seconds", "PostgreSQL latency by operation");
    metrics::describe_gauge!("afreg_upload_sessions_open", "Upload sessions in progress");
    metrics::describe_gauge!(
        "afreg_upload_sessions_in_memory",
        "Upload sessions with a lock and running hash in this process"
    );
    metrics::describe_counter!("afreg_seat_taken_total", "Times this process took its region's Raft seat");
    metrics::describe_gauge!("afreg_seat_epoch", "Epoch of the region's Raft seat holder as this process last saw it");
    metrics::describe_counter!(
        "afreg_mirror_stale_total",
        "Cached mirror tags served because their upstream could not be asked"
    );
    metrics::describe_gauge!(
        "afreg_mirror_bytes",
        "Bytes an upstream's pull-through cache holds, per repository summed"
    );
    metrics::describe_counter!(
        "afreg_mirror_evicted_total",
        "Images evicted from the pull-through cache, by reason (cache_ttl, max_bytes)"
    );
    metrics::gauge!("afreg_upload_sessions_in_memory").set(0.0);
    Ok(handle)
}
