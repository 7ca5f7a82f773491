//! Prometheus metrics: one registry per process (or per test app), handles passed as `Arc<Metrics>`.
//!
//! Every label set here is bounded: `action` is one of the catalogued Sessionboard actions or
//! `other` / `unroutable` / `invalid`, `status` is an HTTP status code, `sink` is `nats` or `kafka`, `kind` and
//! `reason` come from fixed enums in the code.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// Latency buckets from 100 µs to 10 s: an fsync on a good disk is well under a millisecond, and
/// anything near the sender's 15 s timeout must still be visible.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// Every `reason` of `hookbridge_http_rejected_bodies_total`, exported at 0 from the start.
pub const HTTP_REJECTED_BODY_REASONS: &[&str] = &["buffer_full", "too_many_bodies"];

pub struct Metrics {
    pub registry: Registry,
    pub http_requests: IntCounterVec,
    pub deliveries_accepted: IntCounterVec,
    pub deliveries_unroutable: IntCounter,
    pub deliveries_duplicate: IntCounter,
    pub dedup_waits: IntCounterVec,
    pub dedup_ids: IntGauge,
    pub dedup_journal_bytes: IntGauge,
    pub deliveries_invalid: IntCounterVec,
    pub http_connection_errors: IntCounterVec,
    pub http_lingering_closes: IntCounterVec,
    pub ack_latency: Histogram,
    pub http_connections: IntGauge,
    pub http_rejected_connections: IntCounter,
    pub http_buffered_bytes: IntGauge,
    pub http_max_buffered_bytes: IntGauge,
    pub http_rejected_bodies: IntCounterVec,
    pub tls_reloads: IntCounterVec,
    pub tls_cert_expiry: IntGauge,

    pub spool_records: IntGauge,
    pub spool_bytes: IntGauge,
    pub spool_segments: IntGauge,
    pub spool_oldest_record_age: prometheus::Gauge,
    pub spool_max_bytes: IntGauge,
    pub spool_confirmed_seq: IntGauge,
    pub spool_fsync: Histogram,
    pub spool_batch_records: Histogram,
    pub spool_errors: IntCounterVec,
    pub spool_corrupt_records: IntCounter,
    pub spool_rejected: IntCounterVec,
    pub spool_retained_records: IntGauge,
    pub spool_retained_bytes: IntGauge,
    pub spool_preallocated_bytes: IntGauge,
    pub spool_oldest_retained_age: prometheus::Gauge,
    pub spool_evicted_segments: IntCounter,
    pub spool_evicted_records: IntCounter,

    pub published: IntCounterVec,
    pub publish_errors: IntCounterVec,
    pub publish_latency: HistogramVec,
    pub broker_up: IntGaugeVec,
    pub forward_in_flight: IntGauge,
    pub forward_retries: IntCounterVec,
    pub forward_in_flight_bytes: IntGauge,
    pub forward_stuck_records: IntGauge,
    pub forward_oldest_age: prometheus::Gauge,
    pub forward_oldest_attempts: IntGauge,
    pub dead_lettered: IntCounterVec,
    pub dead_letter_records: IntGauge,
    pub kafka_queue_messages: IntGauge,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let m = Metrics {
            http_requests: IntCounterVec::new(
                Opts::new("hookbridge_http_requests_total", "Ingress HTTP responses by status code."),
                &["status"],
            )
            .unwrap(),
            deliveries_accepted: IntCounterVec::new(
                Opts::new(
                    "hookbridge_deliveries_accepted_total",
                    "Deliveries made durable and acknowledged with 2xx, by action (catalogued actions, `other`, `unroutable`).",
                ),
                &["action"],
            )
            .unwrap(),
            deliveries_unroutable: IntCounter::new(
                "hookbridge_deliveries_unroutable_total",
                "Accepted deliveries whose action is not a valid subject token, routed to the dead-letter subject.",
            )
            .unwrap(),
            deliveries_duplicate: IntCounter::new(
                "hookbridge_deliveries_duplicate_total",
                "Deliveries whose id was stored before within auth.dedup_window: acknowledged, not stored again.",
            )
            .unwrap(),
            dedup_waits: IntCounterVec::new(
                Opts::new(
                    "hookbridge_dedup_waits_total",
                    "Requests that arrived while an earlier attempt with the same delivery id was still being stored, by how the wait ended (duplicate: it was stored; retried: it failed and this request stored it; timeout: 503 after auth.dedup_wait).",
                ),
                &["outcome"],
            )
            .unwrap(),
            dedup_ids: IntGauge::new(
                "hookbridge_dedup_ids",
                "Delivery ids remembered as stored (at most auth.dedup_max_entries), as keyed 128-bit fingerprints of about 21 bytes each.",
            )
            .unwrap(),
            dedup_journal_bytes: IntGauge::new(
                "hookbridge_dedup_journal_bytes",
                "Size of the de-duplication journal (<spool.dir>/dedup.journal): 32 bytes of header and 24 per record; compacted when it holds more than twice the remembered ids.",
            )
            .unwrap(),
            deliveries_invalid: IntCounterVec::new(
                Opts::new(
                    "hookbridge_deliveries_invalid_total",
                    "Authentic deliveries that cannot be routed (invalid_json, missing_action, missing_data_id): acknowledged and dead-lettered.",
                ),
                &["reason"],
            )
            .unwrap(),
            http_connection_errors: IntCounterVec::new(
                Opts::new(
                    "hookbridge_http_connection_errors_total",
                    "Ingress connections ended by a protocol limit or error (header_timeout, headers_too_large, incomplete, tls_handshake, tls_handshake_timeout, other).",
                ),
                &["kind"],
            )
            .unwrap(),
            http_lingering_closes: IntCounterVec::new(
                Opts::new(
                    "hookbridge_http_lingering_closes_total",
                    "Ingress connections that kept reading (and discarding) after the answer before closing, by how that ended (closed: the client closed; byte_limit: http.linger_bytes read; timeout: http.linger_timeout passed; error).",
                ),
                &["ended"],
            )
            .unwrap(),
            tls_reloads: IntCounterVec::new(
                Opts::new(
                    "hookbridge_tls_reloads_total",
                    "Attempts to load a changed TLS certificate and key (result: ok, error; on error the previous certificate stays in use).",
                ),
                &["result"],
            )
            .unwrap(),
            tls_cert_expiry: IntGauge::new(
                "hookbridge_tls_cert_expiry_timestamp_seconds",
                "notAfter of the certificate the ingress serves, as Unix seconds (0 without TLS).",
            )
            .unwrap(),
            ack_latency: Histogram::with_opts(
                HistogramOpts::new(
                    "hookbridge_ack_latency_seconds",
                    "Time from request head to the 2xx answer for accepted deliveries (includes the fsync).",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
            )
            .unwrap(),
            http_connections: IntGauge::new(
                "hookbridge_http_connections",
                "Open ingress connections.",
            )
            .unwrap(),
            http_rejected_connections: IntCounter::new(
                "hookbridge_http_rejected_connections_total",
                "Ingress connections closed at once because `http.max_connections` was reached.",
            )
            .unwrap(),
            http_buffered_bytes: IntGauge::new(
                "hookbridge_http_buffered_bytes",
                "Bytes of request bodies reserved in memory: bodies being read, and read ones until the spool writer has stored them (at most http.max_buffered_bytes).",
            )
            .unwrap(),
            http_max_buffered_bytes: IntGauge::new(
                "hookbridge_http_max_buffered_bytes",
                "Configured ingress body memory budget (`http.max_buffered_bytes`).",
            )
            .unwrap(),
            http_rejected_bodies: IntCounterVec::new(
                Opts::new(
                    "hookbridge_http_rejected_bodies_total",
                    "Request bodies refused before being read, by reason (buffer_full: 503, http.max_buffered_bytes reached; too_many_bodies: 429, http.max_bodies_per_client reached).",
                ),
                &["reason"],
            )
            .unwrap(),
            spool_records: IntGauge::new(
                "hookbridge_spool_records",
                "Records in the spool not yet confirmed by the broker.",
            )
            .unwrap(),
            spool_bytes: IntGauge::new("hookbridge_spool_bytes", "Bytes of segment files on disk.")
                .unwrap(),
            spool_segments: IntGauge::new("hookbridge_spool_segments", "Segment files on disk.")
                .unwrap(),
            spool_oldest_record_age: prometheus::Gauge::new(
                "hookbridge_spool_oldest_record_age_seconds",
                "Age of the oldest record not yet confirmed by the broker (0 when none).",
            )
            .unwrap(),
            spool_max_bytes: IntGauge::new(
                "hookbridge_spool_max_bytes",
                "Configured spool quota (`spool.max_bytes`).",
            )
            .unwrap(),
            spool_confirmed_seq: IntGauge::new(
                "hookbridge_spool_confirmed_seq",
                "Highest sequence number below which every record is confirmed.",
            )
            .unwrap(),
            spool_fsync: Histogram::with_opts(
                HistogramOpts::new(
                    "hookbridge_spool_fsync_seconds",
                    "Duration of each group-commit fdatasync.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
            )
            .unwrap(),
            spool_batch_records: Histogram::with_opts(
                HistogramOpts::new(
                    "hookbridge_spool_batch_records",
                    "Records covered by one group commit.",
                )
                .buckets(BATCH_BUCKETS.to_vec()),
            )
            .unwrap(),
            spool_errors: IntCounterVec::new(
                Opts::new(
                    "hookbridge_spool_errors_total",
                    "Spool I/O failures by operation (write, fsync, rotate, confirm, read, statvfs).",
                ),
                &["op"],
            )
            .unwrap(),
            spool_corrupt_records: IntCounter::new(
                "hookbridge_spool_corrupt_records_total",
                "Records found corrupt (bad CRC or frame) and skipped, at recovery or while reading.",
            )
            .unwrap(),
            spool_rejected: IntCounterVec::new(
                Opts::new(
                    "hookbridge_spool_rejected_total",
                    "Appends refused by the spool, by reason (full, disk_low, too_large, failed).",
                ),
                &["reason"],
            )
            .unwrap(),
            spool_retained_records: IntGauge::new(
                "hookbridge_spool_retained_records",
                "Confirmed records still on disk (kept for spool.retain_confirmed, for `hookbridge spool replay`).",
            )
            .unwrap(),
            spool_retained_bytes: IntGauge::new(
                "hookbridge_spool_retained_bytes",
                "Bytes of segment files holding only confirmed records: counted in hookbridge_spool_bytes, evicted first when space is needed.",
            )
            .unwrap(),
            spool_preallocated_bytes: IntGauge::new(
                "hookbridge_spool_preallocated_bytes",
                "Zero bytes written ahead of the newest segment's last record (spool.preallocate_bytes), so group commits overwrite existing blocks: counted in hookbridge_spool_bytes, filled by the next records.",
            )
            .unwrap(),
            spool_oldest_retained_age: prometheus::Gauge::new(
                "hookbridge_spool_oldest_retained_age_seconds",
                "Age (since append) of the oldest confirmed record still on disk (0 when none): how far back `spool replay` can reach.",
            )
            .unwrap(),
            spool_evicted_segments: IntCounter::new(
                "hookbridge_spool_evicted_segments_total",
                "Segments of confirmed records deleted before spool.retain_confirmed ran out, because new deliveries needed the space.",
            )
            .unwrap(),
            spool_evicted_records: IntCounter::new(
                "hookbridge_spool_evicted_records_total",
                "Confirmed records in the segments counted by hookbridge_spool_evicted_segments_total.",
            )
            .unwrap(),
            published: IntCounterVec::new(
                Opts::new(
                    "hookbridge_published_total",
                    "Records confirmed by the broker.",
                ),
                &["sink"],
            )
            .unwrap(),
            publish_errors: IntCounterVec::new(
                Opts::new(
                    "hookbridge_publish_errors_total",
                    "Failed publish attempts by sink and error kind (each is retried).",
                ),
                &["sink", "kind"],
            )
            .unwrap(),
            publish_latency: HistogramVec::new(
                HistogramOpts::new(
                    "hookbridge_publish_latency_seconds",
                    "Time from handing a record to the sink until the broker confirmed it.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["sink"],
            )
            .unwrap(),
            broker_up: IntGaugeVec::new(
                Opts::new(
                    "hookbridge_broker_up",
                    "1 while the last publish attempt to the broker succeeded, 0 after a failure.",
                ),
                &["sink"],
            )
            .unwrap(),
            forward_in_flight: IntGauge::new(
                "hookbridge_forward_in_flight",
                "Records handed to the sink and not yet confirmed (including those waiting for a retry).",
            )
            .unwrap(),
            forward_in_flight_bytes: IntGauge::new(
                "hookbridge_forward_in_flight_bytes",
                "Payload bytes of the records in hookbridge_forward_in_flight (bounded by forward.max_in_flight_bytes).",
            )
            .unwrap(),
            forward_stuck_records: IntGauge::new(
                "hookbridge_forward_stuck_records",
                "Unsettled records that failed while the broker confirmed others: refused for a reason retrying may not fix (forward.max_attempts and forward.max_retry_age bound them).",
            )
            .unwrap(),
            forward_oldest_age: prometheus::Gauge::new(
                "hookbridge_forward_oldest_unconfirmed_age_seconds",
                "Seconds since the forwarder first sent the oldest record it has not settled; 0 when none. Grows during an outage and for a stuck record.",
            )
            .unwrap(),
            forward_oldest_attempts: IntGauge::new(
                "hookbridge_forward_oldest_unconfirmed_attempts",
                "Failed publish attempts of the oldest unsettled record; 0 when none.",
            )
            .unwrap(),
            forward_retries: IntCounterVec::new(
                Opts::new(
                    "hookbridge_forward_retries_total",
                    "Records scheduled for another publish attempt, by sink.",
                ),
                &["sink"],
            )
            .unwrap(),
            dead_lettered: IntCounterVec::new(
                Opts::new(
                    "hookbridge_dead_lettered_total",
                    "Records written (fsync'd) to the local dead-letter store, by reason: permanent broker refusals, records that kept failing while others were confirmed (retries_exhausted), undecodable records and unusable bodies; counted once per record, after the write.",
                ),
                &["reason"],
            )
            .unwrap(),
            dead_letter_records: IntGauge::new(
                "hookbridge_dead_letter_records",
                "Records in the local dead-letter store.",
            )
            .unwrap(),
            kafka_queue_messages: IntGauge::new(
                "hookbridge_kafka_queue_messages",
                "Messages in librdkafka's producer queue (sent or waiting, not yet reported).",
            )
            .unwrap(),
            registry,
        };
        m.register_all();
        for reason in HTTP_REJECTED_BODY_REASONS {
            m.http_rejected_bodies.with_label_values(&[reason]);
        }
        m
    }

    fn register_all(&self) {
        for c in self.collectors() {
            self.registry.register(c).expect("metric names are unique");
        }
    }

    /// The name of every metric family registered, whether or not it has a sample yet (a `*Vec`
    /// without label values is left out of `/metrics`). `tests/deploy_files.rs` checks the alert
    /// rules and the dashboard against this list.
    pub fn metric_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .collectors()
            .iter()
            .flat_map(|c| c.desc().into_iter().map(|d| d.fq_name.clone()))
            .collect();
        names.sort();
        names
    }

    fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.http_requests.clone()),
            Box::new(self.deliveries_accepted.clone()),
            Box::new(self.deliveries_unroutable.clone()),
            Box::new(self.ack_latency.clone()),
            Box::new(self.deliveries_duplicate.clone()),
            Box::new(self.dedup_waits.clone()),
            Box::new(self.dedup_ids.clone()),
            Box::new(self.dedup_journal_bytes.clone()),
            Box::new(self.deliveries_invalid.clone()),
            Box::new(self.http_connection_errors.clone()),
            Box::new(self.http_lingering_closes.clone()),
            Box::new(self.http_connections.clone()),
            Box::new(self.http_rejected_connections.clone()),
            Box::new(self.http_buffered_bytes.clone()),
            Box::new(self.http_max_buffered_bytes.clone()),
            Box::new(self.http_rejected_bodies.clone()),
            Box::new(self.tls_reloads.clone()),
            Box::new(self.tls_cert_expiry.clone()),
            Box::new(self.spool_records.clone()),
            Box::new(self.spool_bytes.clone()),
            Box::new(self.spool_segments.clone()),
            Box::new(self.spool_oldest_record_age.clone()),
            Box::new(self.spool_max_bytes.clone()),
            Box::new(self.spool_confirmed_seq.clone()),
            Box::new(self.spool_fsync.clone()),
            Box::new(self.spool_batch_records.clone()),
            Box::new(self.spool_errors.clone()),
            Box::new(self.spool_corrupt_records.clone()),
            Box::new(self.spool_rejected.clone()),
            Box::new(self.spool_retained_records.clone()),
            Box::new(self.spool_retained_bytes.clone()),
            Box::new(self.spool_preallocated_bytes.clone()),
            Box::new(self.spool_oldest_retained_age.clone()),
            Box::new(self.spool_evicted_segments.clone()),
            Box::new(self.spool_evicted_records.clone()),
            Box::new(self.published.clone()),
            Box::new(self.publish_errors.clone()),
            Box::new(self.publish_latency.clone()),
            Box::new(self.broker_up.clone()),
            Box::new(self.forward_in_flight.clone()),
            Box::new(self.forward_retries.clone()),
            Box::new(self.forward_in_flight_bytes.clone()),
            Box::new(self.forward_stuck_records.clone()),
            Box::new(self.forward_oldest_age.clone()),
            Box::new(self.forward_oldest_attempts.clone()),
            Box::new(self.dead_lettered.clone()),
            Box::new(self.dead_letter_records.clone()),
            Box::new(self.kafka_queue_messages.clone()),
        ]
    }

    /// Prometheus text exposition of everything registered.
    pub fn render(&self) -> String {
        use prometheus::Encoder;
        let mut buf = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding into a Vec cannot fail");
        String::from_utf8(buf).expect("prometheus text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
