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

/// The git revision the running binary was built from, as `afreg serve` names it (the
/// binary's crate reads it from git: `cli/build.rs`); `unknown` until then.
static REVISION: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();

/// Names the revision `afreg_build_info` reports; the first call wins.
pub fn set_revision(revision: &'static str) {
    let _ = REVISION.set(revision);
}

/// What kind of series a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One metric the node exports.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    /// Its labels, each with a bounded set of values.
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

const fn m(name: &'static str, kind: Kind, labels: &'static [&'static str], help: &'static str) -> Metric {
    Metric { name, kind, labels, help }
}

use Kind::{Counter, Gauge, Histogram};

/// Every metric the node exports, described to the recorder at start (so `/metrics` has its
/// `HELP` and `TYPE`). The README's metric table is exactly this list (a unit test), and a
/// region's `/metrics` carries no other family (the dashboard test, beside `promtool check
/// metrics`). Names follow Prometheus's conventions: base units in the name, `_total` on
/// counters, `code` for a status.
pub const METRICS: &[Metric] = &[
    m("afreg_build_info", Gauge, &["version", "revision"], "Always 1: the node's version and git revision"),
    m(
        "afreg_http_requests_total",
        Counter,
        &["route", "method", "code"],
        "OCI API requests by route template, method and status code",
    ),
    m("afreg_http_request_duration_seconds", Histogram, &["route", "method"], "OCI API request latency"),
    m("afreg_blob_received_bytes_total", Counter, &[], "Blob bytes received from clients"),
    m("afreg_sent_bytes_total", Counter, &[], "Blob and manifest bytes sent to clients"),
    m("afreg_connections_open", Gauge, &["listener"], "Connections open on a listener"),
    m(
        "afreg_connections_refused_total",
        Counter,
        &["listener", "reason"],
        "Connections closed at once, past a connection cap",
    ),
    m("afreg_requests_limited_total", Counter, &[], "Requests answered 429 by the request-rate limits"),
    m("afreg_logins_refused_total", Counter, &["reason"], "Logins refused before their password was checked"),
    m("afreg_status_computed_total", Counter, &["scope"], "/status answers computed (not served from its cache)"),
    m(
        "afreg_manifest_cache_total",
        Counter,
        &["result"],
        "Manifest reads served from memory (hit) or PostgreSQL (miss)",
    ),
    m("afreg_upload_sessions_open", Gauge, &[], "Upload sessions in progress"),
    m("afreg_upload_sessions_in_memory", Gauge, &[], "Upload sessions with a lock and running hash in this process"),
    m("afreg_blob_files", Gauge, &[], "Verified blob files this region holds"),
    m("afreg_blob_files_bytes", Gauge, &[], "Bytes of the verified blob files this region holds"),
    m(
        "afreg_blob_file_reads_total",
        Counter,
        &["result"],
        "Blob pulls served from a blob file (hit) or through Kubo (miss)",
    ),
    m("afreg_blob_files_fills_total", Counter, &[], "Blob files written"),
    m("afreg_blob_files_evictions_total", Counter, &[], "Blob files evicted, least recently used first"),
    m("afreg_blob_files_corrupt_total", Counter, &[], "Blob files found not to match their digest, and removed"),
    m("afreg_kubo_call_seconds", Histogram, &["cmd"], "Kubo RPC latency by command"),
    m("afreg_postgres_query_seconds", Histogram, &["op"], "PostgreSQL latency by operation"),
    m(
        "afreg_replicated_write_seconds",
        Histogram,
        &["op"],
        "Time from proposing a write to its commit by a quorum, by command",
    ),
    m("afreg_raft_is_leader", Gauge, &[], "1 while this region's Raft member leads"),
    m("afreg_raft_term", Gauge, &[], "The Raft term this member is in"),
    m("afreg_raft_last_log_index", Gauge, &[], "The last Raft log index this member holds"),
    m("afreg_raft_last_applied", Gauge, &[], "The last Raft log index applied to this region's PostgreSQL"),
    m("afreg_raft_replication_lag_entries", Gauge, &["region_id"], "On the leader: entries a follower has yet to take"),
    m("afreg_seat_taken_total", Counter, &[], "Times this process took its region's Raft seat"),
    m("afreg_seat_epoch", Gauge, &[], "Epoch of the region's Raft seat holder as this process last saw it"),
    m("afreg_pinned_blobs", Gauge, &[], "Blobs pinned in this region's Kubo"),
    m("afreg_pin_backlog", Gauge, &[], "Blobs this region has yet to pin"),
    m("afreg_pins_failing", Gauge, &[], "Blobs whose pin failed and waits for its retry"),
    m("afreg_pins_total", Counter, &["result"], "Pins attempted, by result"),
    m("afreg_replicated_bytes_total", Counter, &[], "Blob bytes this region fetched from other regions' Kubo to pin"),
    m(
        "afreg_pull_records_dropped_total",
        Counter,
        &[],
        "Pulls not counted for usage: the queue was full or its write failed",
    ),
    m("afreg_notifications_pending", Gauge, &["endpoint"], "Replicated events an endpoint has yet to be sent"),
    m(
        "afreg_notifications_pull_events_pending",
        Gauge,
        &["endpoint"],
        "This region's pull events an endpoint has yet to be sent",
    ),
    m(
        "afreg_notifications_total",
        Counter,
        &["endpoint", "result"],
        "Notification events delivered, failed and dead-lettered",
    ),
    m(
        "afreg_mirror_bytes",
        Gauge,
        &["upstream"],
        "Bytes an upstream's pull-through cache holds, per repository summed",
    ),
    m(
        "afreg_mirror_evicted_total",
        Counter,
        &["upstream", "reason"],
        "Images evicted from the pull-through cache, by reason (cache_ttl, max_bytes)",
    ),
    m(
        "afreg_mirror_stale_total",
        Counter,
        &["upstream"],
        "Cached mirror tags served because their upstream could not be asked",
    ),
];

/// Installs the global metrics recorder; histograms get latency buckets.
pub fn init_metrics() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)?
        .install_recorder()?;
    for metric in METRICS {
        match metric.kind {
            Counter => metrics::describe_counter!(metric.name, metric.help),
            Gauge => metrics::describe_gauge!(metric.name, metric.help),
            Histogram => metrics::describe_histogram!(metric.name, metric.help),
        }
    }
    let revision = *REVISION.get().unwrap_or(&"unknown");
    metrics::gauge!("afreg_build_info", "version" => env!("CARGO_PKG_VERSION"), "revision" => revision).set(1.0);
    metrics::gauge!("afreg_upload_sessions_in_memory").set(0.0);
    Ok(handle)
}

/// The README's table of [`METRICS`], as the test of it expects it.
pub fn metrics_table() -> String {
    let mut out = String::from("| metric | type | labels | what it counts |\n|---|---|---|---|\n");
    for m in METRICS {
        let labels = m.labels.iter().map(|l| format!("`{l}`")).collect::<Vec<_>>().join(", ");
        out += &format!("| `{}` | {} | {} | {} |\n", m.name, m.kind.as_str(), labels, m.help);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's metric table, between its markers, is [`metrics_table`].
    #[test]
    fn the_readme_lists_every_metric_and_no_other() {
        let readme = include_str!("../../README.md");
        let (begin, end) = ("<!-- metrics: begin -->\n", "<!-- metrics: end -->");
        let start = readme.find(begin).expect("the README's metrics table begin marker") + begin.len();
        let stop = readme[start..].find(end).expect("its end marker") + start;
        assert_eq!(readme[start..stop], metrics_table(), "README.md's metric table: write this between the markers");
    }

    #[test]
    fn metric_names_follow_prometheus_conventions() {
        let mut seen = std::collections::BTreeSet::new();
        for m in METRICS {
            assert!(seen.insert(m.name), "{} listed twice", m.name);
            assert!(m.name.starts_with("afreg_"), "{}", m.name);
            assert_eq!(
                m.kind == Counter,
                m.name.ends_with("_total"),
                "{}: _total is for counters, and every counter's",
                m.name
            );
            if m.kind == Histogram {
                assert!(m.name.ends_with("_seconds"), "{}: a histogram of seconds", m.name);
            }
            assert!(!m.labels.contains(&"status"), "{}: the status label is `code`", m.name);
        }
    }
}
