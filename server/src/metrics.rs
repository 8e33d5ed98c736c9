//! Prometheus metrics of the server (`GET /metrics`, OpenMetrics text, crate
//! `prometheus-client`).
//!
//! The contract. Every label has a bounded set of values, whatever clients send: communes come
//! from authenticated devices' scopes (communes that exist, or `province`), refusal reasons from
//! core's refusal codes, routes from the router's matched paths (`unmatched` otherwise), methods
//! from a fixed list (`other` otherwise) and statuses are HTTP status codes. Nothing secret is a
//! label or a value. Counters start at zero with the process (Prometheus handles restarts); the
//! read-model lag is read from storage at each scrape.
//!
//! Series: `communesync_syncs_total{commune}`, `communesync_documents_pushed_total{commune}`,
//! `communesync_bytes_pushed_total{commune}` (stored change bytes),
//! `communesync_refused_documents_total{reason}`, `communesync_http_request_duration_seconds
//! {route,method,status}` (histogram), `communesync_enrollment_failures_total`,
//! `communesync_storage_errors_total{kind}`, `communesync_read_model_lag_documents`.

use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels naming a commune (`province` for province-scoped devices).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommuneLabel {
    /// Commune code.
    pub commune: String,
}

/// Labels naming a refusal reason.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Refusal code (`forged_actor`, `immutable_field`, ...).
    pub reason: String,
}

/// Labels of a storage error.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// `backend` or `full`.
    pub kind: String,
}

/// Labels of an HTTP request.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Matched route (`/v1/sync`, `/v1/admin/records/{id}`, ...).
    pub route: String,
    /// HTTP method.
    pub method: String,
    /// Status code.
    pub status: u16,
}

type Latencies = Family<RequestLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 1 ms .. about 33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// Storage errors, counted where they are turned into HTTP errors (which has no state at hand).
static STORAGE_ERRORS: LazyLock<Family<KindLabel, Counter>> = LazyLock::new(Family::default);

/// Counts a storage error of `kind` (`backend`, `full`).
pub fn storage_error(kind: &str) {
    STORAGE_ERRORS
        .get_or_create(&KindLabel {
            kind: kind.to_owned(),
        })
        .inc();
}

/// The server's metrics and their registry.
pub struct Metrics {
    registry: Registry,
    syncs: Family<CommuneLabel, Counter>,
    documents: Family<CommuneLabel, Counter>,
    bytes: Family<CommuneLabel, Counter>,
    refused: Family<ReasonLabel, Counter>,
    latencies: Latencies,
    enrollment_failures: Counter,
    read_model_lag: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Fresh metrics, registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("communesync");
        let metrics = Metrics {
            syncs: Family::default(),
            documents: Family::default(),
            bytes: Family::default(),
            refused: Family::default(),
            latencies: Latencies::new_with_constructor(latency_histogram),
            enrollment_failures: Counter::default(),
            read_model_lag: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register("syncs", "Sync requests answered", metrics.syncs.clone());
        registry.register(
            "documents_pushed",
            "Documents with changes stored by syncs",
            metrics.documents.clone(),
        );
        registry.register(
            "bytes_pushed",
            "Bytes of changes stored by syncs",
            metrics.bytes.clone(),
        );
        registry.register(
            "refused_documents",
            "Pushed documents refused, by reason",
            metrics.refused.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to answer HTTP requests",
            metrics.latencies.clone(),
        );
        registry.register(
            "enrollment_failures",
            "Enrollment attempts with an invalid code",
            metrics.enrollment_failures.clone(),
        );
        registry.register(
            "storage_errors",
            "Storage errors answered as HTTP errors",
            STORAGE_ERRORS.clone(),
        );
        registry.register(
            "read_model_lag_documents",
            "Stored documents without a read-model row",
            metrics.read_model_lag.clone(),
        );
        Metrics {
            registry,
            ..metrics
        }
    }

    /// A sync answered for a device of `commune`, which stored `documents` documents of `bytes`
    /// change bytes.
    pub fn sync(&self, commune: &str, documents: u64, bytes: u64) {
        let label = CommuneLabel {
            commune: commune.to_owned(),
        };
        self.syncs.get_or_create(&label).inc();
        self.documents.get_or_create(&label).inc_by(documents);
        self.bytes.get_or_create(&label).inc_by(bytes);
    }

    /// A pushed document refused for `reason`.
    pub fn refused(&self, reason: &str) {
        self.refused
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// An enrollment attempt with an invalid code.
    pub fn enrollment_failure(&self) {
        self.enrollment_failures.inc();
    }

    /// A request answered.
    pub fn request(&self, route: &str, method: &str, status: u16, seconds: f64) {
        let method = match method {
            "GET" | "POST" | "PUT" | "DELETE" | "HEAD" => method,
            _ => "other",
        };
        self.latencies
            .get_or_create(&RequestLabels {
                route: route.to_owned(),
                method: method.to_owned(),
                status,
            })
            .observe(seconds);
    }

    /// The metrics as OpenMetrics text, with the read-model lag given.
    pub fn encode(&self, read_model_lag: u64) -> String {
        self.read_model_lag
            .set(i64::try_from(read_model_lag).unwrap_or(i64::MAX));
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_are_named_and_labelled() {
        let metrics = Metrics::new();
        metrics.sync("c1", 3, 1200);
        metrics.sync("c1", 0, 0);
        metrics.refused("forged_actor");
        metrics.enrollment_failure();
        metrics.request("/v1/sync", "PATCH", 200, 0.004);
        let text = metrics.encode(7);
        assert!(
            text.contains("communesync_syncs_total{commune=\"c1\"} 2"),
            "{text}"
        );
        assert!(text.contains("communesync_documents_pushed_total{commune=\"c1\"} 3"));
        assert!(text.contains("communesync_bytes_pushed_total{commune=\"c1\"} 1200"));
        assert!(text.contains("communesync_refused_documents_total{reason=\"forged_actor\"} 1"));
        assert!(text.contains("communesync_enrollment_failures_total 1"));
        assert!(text.contains("communesync_read_model_lag_documents 7"));
        assert!(text.contains(
            "communesync_http_request_duration_seconds_count{route=\"/v1/sync\",method=\"other\",status=\"200\"} 1"
        ));
        assert!(text.ends_with("# EOF\n"));
    }
}
