//! Prometheus metrics: one registry per process (or per test app), handles passed as `Arc<Metrics>`.
//!
//! Every label set here is bounded, and known in advance: each labelled family is a [`Family`]
//! whose label values come from the tables in [`labels`]. Every combination of known values is
//! created at 0 when [`Metrics`] is built (the sink's families when the sink is known,
//! [`Metrics::start_sink`]), so a freshly started bridge already exports every series the alert
//! rules and the dashboard use: `rate()` has a first sample and panels show 0, not "no data"
//! (Prometheus' instrumentation guidance). In debug builds a label value missing from its table
//! panics, so the tables cannot drift from the code that counts.

mod family;

pub use family::Family;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// The label values each labelled family may take, one table per kind of value. A value the
/// code counts must be in a table of its dimension (debug builds panic otherwise, see
/// [`Family`]); every value is exported at 0 from the start. To add a value, add it here; to add
/// a dimension, add a table and name it in the family's [`Dim`] in [`Metrics::new`].
pub mod labels {
    /// `hookbridge_http_requests_total{status}`: every status the ingress service answers with.
    /// (hyper answers 431 and unparsable requests itself; those are not counted there.)
    pub const STATUSES: &[&str] = &[
        "200", "400", "401", "403", "404", "405", "408", "413", "429", "503",
    ];
    /// `action`: the routing catalogue ([`crate::routing::KNOWN_ACTIONS`]) plus these.
    pub const ACTION_FALLBACKS: &[&str] = &["other", "unroutable", "invalid"];
    /// Why an authentic body cannot be routed ([`crate::delivery::reject_label`]):
    /// `hookbridge_deliveries_invalid_total{reason}`, and a dead-letter reason.
    pub const UNUSABLE_REASONS: &[&str] = &["invalid_json", "missing_action", "missing_data_id"];
    /// `hookbridge_dedup_waits_total{outcome}`.
    pub const DEDUP_WAIT_OUTCOMES: &[&str] = &["duplicate", "retried", "timeout"];
    /// Why a connection ended early (`server::ConnError::kind`), ingress and admin.
    pub const CONNECTION_ERROR_KINDS: &[&str] = &[
        "header_timeout",
        "headers_too_large",
        "incomplete",
        "write_timeout",
        "probe_timeout",
        "tls_handshake",
        "tls_handshake_timeout",
        "other",
    ];
    /// `hookbridge_http_lingering_closes_total{ended}`.
    pub const LINGER_ENDS: &[&str] = &["closed", "byte_limit", "timeout", "error"];
    /// `hookbridge_admin_rejected_connections_total{reason}`: every slot taken (`limit`), or a
    /// connection in the probe reserve that asked for something other than a probe.
    pub const ADMIN_REJECT_REASONS: &[&str] = &["limit", "not_probe"];
    /// `hookbridge_admin_actions_total{action}` (and `…_records_total`): what the admin API did.
    pub const ADMIN_ACTIONS: &[&str] = &["requeue", "purge", "replay", "replay_plan"];
    /// `hookbridge_admin_actions_total{outcome}`: done, refused (bad input, busy, too large,
    /// nothing selected), unauthorized (401/403), failed (the store or the spool failed).
    pub const ADMIN_OUTCOMES: &[&str] = &["ok", "refused", "unauthorized", "failed"];
    /// `hookbridge_tls_reloads_total{result}`.
    pub const TLS_RELOAD_RESULTS: &[&str] = &["ok", "error"];
    /// `hookbridge_spool_errors_total{op}`.
    pub const SPOOL_OPS: &[&str] = &["write", "fsync", "rotate", "confirm", "read", "statvfs"];
    /// `hookbridge_spool_rejected_total{reason}`.
    pub const SPOOL_REJECT_REASONS: &[&str] = &["full", "disk_low", "too_large", "failed"];
    /// `sink`: [`crate::sink::Sink::name`].
    pub const SINKS: &[&str] = &["nats", "kafka"];
    /// `SendError::kind` of the NATS sink (`sink/nats.rs`), retryable and permanent.
    pub const NATS_ERROR_KINDS: &[&str] = &[
        "connection",
        "timeout",
        "broker",
        "stream_unavailable",
        "stream_not_found",
        "too_large",
        "invalid_destination",
    ];
    /// `SendError::kind` of the Kafka sink (`sink/kafka.rs`), retryable and permanent.
    pub const KAFKA_ERROR_KINDS: &[&str] = &[
        "connection",
        "timeout",
        "broker",
        "client",
        "queue_full",
        "create_topic",
        "unknown_topic",
        "producer_fatal",
        "topic_authorization_failed",
        "message_too_large",
        "invalid_topic",
        "invalid_message",
    ];
    /// What the forwarder itself records: `retries_exhausted` (a record that kept failing while
    /// the broker confirmed others) and `undecodable` (a record that passed its CRC but does not
    /// decode); a publish-error kind and a dead-letter reason.
    pub const FORWARD_REASONS: &[&str] = &["retries_exhausted", "undecodable", "unknown_endpoint"];
    /// `hookbridge_http_rejected_bodies_total{reason}` (the ingress memory budget): the budget
    /// is spent, or one client has too many unfinished bodies.
    pub const HTTP_REJECTED_BODY_REASONS: &[&str] = &["buffer_full", "too_many_bodies"];
    /// `hookbridge_deliveries_rejected_total{reason}`: every error code the ingress answers a
    /// request to a configured endpoint with (the JSON `error` field).
    pub const REJECT_REASONS: &[&str] = &[
        "body_read_failed",
        "buffer_full",
        "conflicting_headers",
        "forbidden_source",
        "in_progress",
        "invalid_header",
        "invalid_json",
        "invalid_timestamp",
        "invalid_token",
        "malformed_signature",
        "method_not_allowed",
        "missing_action",
        "missing_data_id",
        "missing_signature_headers",
        "missing_token",
        "no_matching_signature",
        "payload_too_large",
        "request_timeout",
        "shutting_down",
        "spool_failed",
        "spool_full",
        "timestamp_out_of_tolerance",
        "too_many_bodies",
    ];
    /// The `endpoint` label of a record whose endpoint is not configured (any more), or that does
    /// not decode: the label set stays bounded by the configuration.
    pub const NO_ENDPOINT: &str = "none";
    /// Values only the unit tests' sinks use (accepted only in `cfg(test)` builds).
    pub(super) const TEST_ONLY: &[&str] = &["scripted"];
}

/// One label dimension: the union of these tables.
pub type Dim = &'static [&'static [&'static str]];

const STATUS: Dim = &[labels::STATUSES];
const ACTION: Dim = &[crate::routing::KNOWN_ACTIONS, labels::ACTION_FALLBACKS];
const SINK: Dim = &[labels::SINKS];
/// Every kind a sink or the forwarder records as a failed attempt.
const SEND_ERROR: Dim = &[
    labels::NATS_ERROR_KINDS,
    labels::KAFKA_ERROR_KINDS,
    labels::FORWARD_REASONS,
];
/// Why a record is in the dead-letter store: a broker's permanent refusal, an unusable body, or
/// the forwarder's own reasons.
const DEAD_LETTER_REASON: Dim = &[
    labels::NATS_ERROR_KINDS,
    labels::KAFKA_ERROR_KINDS,
    labels::UNUSABLE_REASONS,
    labels::FORWARD_REASONS,
];

/// Latency buckets from 100 µs to 10 s: an fsync on a good disk is well under a millisecond, and
/// anything near the sender's 15 s timeout must still be visible.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

pub struct Metrics {
    pub registry: Registry,
    /// The configured endpoint names, `default` first: the values of every `endpoint` label
    /// (plus [`labels::NO_ENDPOINT`] where a record may name none).
    endpoints: &'static [&'static str],
    pub http_requests: Family<IntCounterVec>,
    /// `{endpoint, action}`.
    pub deliveries_accepted: Family<IntCounterVec>,
    /// `hookbridge_deliveries_rejected_total{endpoint, reason}`.
    pub deliveries_rejected: Family<IntCounterVec>,
    pub deliveries_unroutable: IntCounter,
    pub deliveries_duplicate: IntCounter,
    pub dedup_waits: Family<IntCounterVec>,
    pub dedup_ids: IntGauge,
    pub dedup_journal_bytes: IntGauge,
    pub deliveries_invalid: Family<IntCounterVec>,
    pub http_connection_errors: Family<IntCounterVec>,
    pub http_lingering_closes: Family<IntCounterVec>,
    pub ack_latency: Histogram,
    pub http_connections: IntGauge,
    pub http_rejected_connections: IntCounter,
    pub http_buffered_bytes: IntGauge,
    pub http_max_buffered_bytes: IntGauge,
    pub http_rejected_bodies: Family<IntCounterVec>,
    pub admin_connections: IntGauge,
    pub admin_rejected_connections: Family<IntCounterVec>,
    /// `hookbridge_admin_actions_total{action,outcome}`, `hookbridge_admin_records_total{action}`.
    pub admin_actions: Family<IntCounterVec>,
    pub admin_records: Family<IntCounterVec>,
    pub admin_connection_errors: Family<IntCounterVec>,
    pub tls_reloads: Family<IntCounterVec>,
    pub tls_cert_expiry: IntGauge,

    pub spool_records: IntGauge,
    pub spool_bytes: IntGauge,
    pub spool_segments: IntGauge,
    pub spool_oldest_record_age: prometheus::Gauge,
    pub spool_max_bytes: IntGauge,
    pub spool_confirmed_seq: IntGauge,
    pub spool_fsync: Histogram,
    pub spool_batch_records: Histogram,
    pub spool_errors: Family<IntCounterVec>,
    pub spool_corrupt_records: IntCounter,
    pub spool_rejected: Family<IntCounterVec>,
    pub spool_retained_records: IntGauge,
    pub spool_retained_bytes: IntGauge,
    pub spool_preallocated_bytes: IntGauge,
    pub spool_oldest_retained_age: prometheus::Gauge,
    pub spool_evicted_segments: IntCounter,
    pub spool_evicted_records: IntCounter,

    /// `{sink, endpoint, action}`.
    pub published: Family<IntCounterVec>,
    pub publish_errors: Family<IntCounterVec>,
    pub publish_latency: Family<HistogramVec>,
    pub broker_up: Family<IntGaugeVec>,
    pub forward_in_flight: IntGauge,
    pub forward_retries: Family<IntCounterVec>,
    pub forward_in_flight_bytes: IntGauge,
    pub forward_stuck_records: IntGauge,
    pub forward_oldest_age: prometheus::Gauge,
    pub forward_oldest_attempts: IntGauge,
    /// `{endpoint, reason}`.
    pub dead_lettered: Family<IntCounterVec>,
    pub dead_letter_records: IntGauge,
    pub kafka_queue_messages: IntGauge,
}

impl Metrics {
    /// The metrics of a bridge with only the endpoint `default`.
    pub fn new() -> Metrics {
        Metrics::for_endpoints(&[crate::delivery::DEFAULT_ENDPOINT.to_owned()])
    }

    // One table on purpose: every family's name, help, labels and buckets, read top to bottom.
    /// The metrics of a bridge serving `endpoints` (their names, `default` first). The names are
    /// kept for the life of the process (label values are `&'static`); a bridge builds its
    /// metrics once.
    pub fn for_endpoints(endpoints: &[String]) -> Metrics {
        let names: &'static [&'static str] = Box::leak(
            endpoints
                .iter()
                .map(|n| &*Box::leak(n.clone().into_boxed_str()))
                .collect::<Vec<&'static str>>()
                .into_boxed_slice(),
        );
        let endpoint: Dim = Box::leak(Box::new([names]));
        let endpoint_or_none: Dim = Box::leak(Box::new([names, &[labels::NO_ENDPOINT][..]]));
        let dims = |d: Vec<Dim>| -> &'static [Dim] { Box::leak(d.into_boxed_slice()) };
        let registry = Registry::new();
        let m = Metrics {
            endpoints: names,
            http_requests: counter_family("hookbridge_http_requests_total", "Ingress HTTP responses by status code.", &["status"], &[STATUS]),
            deliveries_accepted: counter_family("hookbridge_deliveries_accepted_total", "Deliveries made durable and acknowledged with 2xx, by endpoint and action (catalogued actions, `other`, `unroutable`, `invalid`).", &["endpoint", "action"], dims(vec![endpoint, ACTION])),
            deliveries_rejected: counter_family("hookbridge_deliveries_rejected_total", "Requests to an endpoint's path answered with an error, by endpoint and reason (the JSON `error` code): authentication, malformed requests, and a full or failed spool. Requests to no endpoint's path are only in hookbridge_http_requests_total.", &["endpoint", "reason"], dims(vec![endpoint, &[labels::REJECT_REASONS]])),
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
            dedup_waits: counter_family("hookbridge_dedup_waits_total", "Requests that arrived while an earlier attempt with the same delivery id was still being stored, by how the wait ended (duplicate: it was stored; retried: it failed and this request stored it; timeout: 503 after auth.dedup_wait).", &["outcome"], &[&[labels::DEDUP_WAIT_OUTCOMES]]),
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
            deliveries_invalid: counter_family("hookbridge_deliveries_invalid_total", "Authentic deliveries that cannot be routed (invalid_json, missing_action, missing_data_id): acknowledged and dead-lettered.", &["reason"], &[&[labels::UNUSABLE_REASONS]]),
            http_connection_errors: counter_family("hookbridge_http_connection_errors_total", "Ingress connections ended by a protocol limit or error (header_timeout, headers_too_large, incomplete, write_timeout: the client read nothing for http.write_timeout, tls_handshake, tls_handshake_timeout, other).", &["kind"], &[&[labels::CONNECTION_ERROR_KINDS]]),
            http_lingering_closes: counter_family("hookbridge_http_lingering_closes_total", "Ingress connections that kept reading (and discarding) after the answer before closing, by how that ended (closed: the client closed; byte_limit: http.linger_bytes read; timeout: http.linger_timeout passed; error).", &["ended"], &[&[labels::LINGER_ENDS]]),
            tls_reloads: counter_family("hookbridge_tls_reloads_total", "Attempts to load a changed TLS certificate and key (result: ok, error; on error the previous certificate stays in use).", &["result"], &[&[labels::TLS_RELOAD_RESULTS]]),
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
            http_rejected_bodies: counter_family("hookbridge_http_rejected_bodies_total", "Request bodies refused before being read, by reason (buffer_full: 503, http.max_buffered_bytes reached; too_many_bodies: 429, http.max_bodies_per_client reached).", &["reason"], &[&[labels::HTTP_REJECTED_BODY_REASONS]]),
            admin_connections: IntGauge::new(
                "hookbridge_admin_connections",
                "Open admin connections (metrics and probes).",
            )
            .unwrap(),
            admin_rejected_connections: counter_family("hookbridge_admin_rejected_connections_total", "Admin connections closed unserved, by reason (limit: admin.max_connections and the probe reserve were all taken; not_probe: a connection in the probe reserve asked for something other than /livez or /readyz).", &["reason"], &[&[labels::ADMIN_REJECT_REASONS]]),
            admin_actions: counter_family(
                "hookbridge_admin_actions_total",
                "Admin API actions (requeue, purge, replay, replay_plan), by outcome (ok, refused, unauthorized, failed); one audit log line each.",
                &["action", "outcome"],
                &[&[labels::ADMIN_ACTIONS], &[labels::ADMIN_OUTCOMES]],
            ),
            admin_records: counter_family(
                "hookbridge_admin_records_total",
                "Records the admin API requeued, purged or replayed (replay_plan stays 0).",
                &["action"],
                &[&[labels::ADMIN_ACTIONS]],
            ),
            admin_connection_errors: counter_family("hookbridge_admin_connection_errors_total", "Admin connections ended by a limit or an error, by kind (header_timeout: idle or no whole request within admin.idle_timeout; write_timeout: the client read nothing for admin.write_timeout; probe_timeout: a reserve connection not done within admin.probe_timeout; headers_too_large, incomplete, other).", &["kind"], &[&[labels::CONNECTION_ERROR_KINDS]]),
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
            spool_errors: counter_family("hookbridge_spool_errors_total", "Spool I/O failures by operation (write, fsync, rotate, confirm, read, statvfs).", &["op"], &[&[labels::SPOOL_OPS]]),
            spool_corrupt_records: IntCounter::new(
                "hookbridge_spool_corrupt_records_total",
                "Records found corrupt (bad CRC or frame) and skipped, at recovery or while reading.",
            )
            .unwrap(),
            spool_rejected: counter_family("hookbridge_spool_rejected_total", "Appends refused by the spool, by reason (full, disk_low, too_large, failed).", &["reason"], &[&[labels::SPOOL_REJECT_REASONS]]),
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
            published: counter_family("hookbridge_published_total", "Records confirmed by the broker, by endpoint and action.", &["sink", "endpoint", "action"], dims(vec![SINK, endpoint, ACTION])),
            publish_errors: counter_family("hookbridge_publish_errors_total", "Failed publish attempts by sink and error kind (each is retried).", &["sink", "kind"], &[SINK, SEND_ERROR]),
            publish_latency: Family::new(
                HistogramVec::new(
                    HistogramOpts::new(
                        "hookbridge_publish_latency_seconds",
                        "Time from handing a record to the sink until the broker confirmed it.",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                    &["sink"],
                )
                .unwrap(),
                &[SINK],
            ),
            broker_up: Family::new(
                IntGaugeVec::new(
                    Opts::new(
                        "hookbridge_broker_up",
                        "1 while the last publish attempt to the broker succeeded (and before the first attempt), 0 after a failure.",
                    ),
                    &["sink"],
                )
                .unwrap(),
                &[SINK],
            ),
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
            forward_retries: counter_family("hookbridge_forward_retries_total", "Records scheduled for another publish attempt, by sink.", &["sink"], &[SINK]),
            dead_lettered: counter_family("hookbridge_dead_lettered_total", "Records written (fsync'd) to the local dead-letter store, by reason: permanent broker refusals, records that kept failing while others were confirmed (retries_exhausted), undecodable records and unusable bodies; counted once per record, after the write.", &["endpoint", "reason"], dims(vec![endpoint_or_none, DEAD_LETTER_REASON])),
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
        m.precreate();
        m
    }

    /// Every known label combination at 0, except the sink's (see [`Self::start_sink`]).
    fn precreate(&self) {
        for f in [
            &self.http_requests,
            &self.deliveries_accepted,
            &self.deliveries_rejected,
            &self.dedup_waits,
            &self.deliveries_invalid,
            &self.http_connection_errors,
            &self.http_lingering_closes,
            &self.admin_rejected_connections,
            &self.admin_connection_errors,
            &self.admin_actions,
            &self.admin_records,
            &self.http_rejected_bodies,
            &self.tls_reloads,
            &self.spool_errors,
            &self.spool_rejected,
            &self.dead_lettered,
        ] {
            f.precreate(None);
        }
    }

    /// Creates the `sink`-labelled series of the one sink this bridge publishes to (series for
    /// the other sink would hold a `broker_up` of 0 forever, and page). `hookbridge_broker_up`
    /// starts at 1 unless the broker is already known to be down: it turns 0 on a failed
    /// attempt, and "no attempt yet" is not a failure.
    pub fn start_sink(&self, sink: &str, down: bool) {
        for f in [&self.published, &self.publish_errors, &self.forward_retries] {
            f.precreate(Some(sink));
        }
        self.publish_latency.precreate(Some(sink));
        self.broker_up
            .with_label_values(&[sink])
            .set(i64::from(!down));
    }

    fn register_all(&self) {
        for c in self.collectors() {
            self.registry.register(c).expect("metric names are unique");
        }
    }

    /// The name of every metric family registered (a `*Vec` without label values would be left
    /// out of `/metrics`; [`labels`] makes sure none is). `tests/deploy_files.rs` checks the alert
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
            Box::new(self.http_requests.vec().clone()),
            Box::new(self.deliveries_accepted.vec().clone()),
            Box::new(self.deliveries_rejected.vec().clone()),
            Box::new(self.deliveries_unroutable.clone()),
            Box::new(self.ack_latency.clone()),
            Box::new(self.deliveries_duplicate.clone()),
            Box::new(self.dedup_waits.vec().clone()),
            Box::new(self.dedup_ids.clone()),
            Box::new(self.dedup_journal_bytes.clone()),
            Box::new(self.deliveries_invalid.vec().clone()),
            Box::new(self.http_connection_errors.vec().clone()),
            Box::new(self.http_lingering_closes.vec().clone()),
            Box::new(self.http_connections.clone()),
            Box::new(self.http_rejected_connections.clone()),
            Box::new(self.http_buffered_bytes.clone()),
            Box::new(self.http_max_buffered_bytes.clone()),
            Box::new(self.http_rejected_bodies.vec().clone()),
            Box::new(self.admin_connections.clone()),
            Box::new(self.admin_rejected_connections.vec().clone()),
            Box::new(self.admin_connection_errors.vec().clone()),
            Box::new(self.admin_actions.vec().clone()),
            Box::new(self.admin_records.vec().clone()),
            Box::new(self.tls_reloads.vec().clone()),
            Box::new(self.tls_cert_expiry.clone()),
            Box::new(self.spool_records.clone()),
            Box::new(self.spool_bytes.clone()),
            Box::new(self.spool_segments.clone()),
            Box::new(self.spool_oldest_record_age.clone()),
            Box::new(self.spool_max_bytes.clone()),
            Box::new(self.spool_confirmed_seq.clone()),
            Box::new(self.spool_fsync.clone()),
            Box::new(self.spool_batch_records.clone()),
            Box::new(self.spool_errors.vec().clone()),
            Box::new(self.spool_corrupt_records.clone()),
            Box::new(self.spool_rejected.vec().clone()),
            Box::new(self.spool_retained_records.clone()),
            Box::new(self.spool_retained_bytes.clone()),
            Box::new(self.spool_preallocated_bytes.clone()),
            Box::new(self.spool_oldest_retained_age.clone()),
            Box::new(self.spool_evicted_segments.clone()),
            Box::new(self.spool_evicted_records.clone()),
            Box::new(self.published.vec().clone()),
            Box::new(self.publish_errors.vec().clone()),
            Box::new(self.publish_latency.vec().clone()),
            Box::new(self.broker_up.vec().clone()),
            Box::new(self.forward_in_flight.clone()),
            Box::new(self.forward_retries.vec().clone()),
            Box::new(self.forward_in_flight_bytes.clone()),
            Box::new(self.forward_stuck_records.clone()),
            Box::new(self.forward_oldest_age.clone()),
            Box::new(self.forward_oldest_attempts.clone()),
            Box::new(self.dead_lettered.vec().clone()),
            Box::new(self.dead_letter_records.clone()),
            Box::new(self.kafka_queue_messages.clone()),
        ]
    }

    /// The configured endpoint names, `default` first.
    pub fn endpoint_names(&self) -> &'static [&'static str] {
        self.endpoints
    }

    /// The `endpoint` label of a record through `endpoint` (`None`: the default):
    /// [`labels::NO_ENDPOINT`] when it is not configured.
    pub fn endpoint_label(&self, endpoint: Option<&str>) -> &'static str {
        let name = endpoint.unwrap_or(crate::delivery::DEFAULT_ENDPOINT);
        self.endpoints
            .iter()
            .find(|n| **n == name)
            .copied()
            .unwrap_or(labels::NO_ENDPOINT)
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

fn counter_family(
    name: &str,
    help: &str,
    labels: &[&str],
    dims: &'static [Dim],
) -> Family<IntCounterVec> {
    Family::new(
        IntCounterVec::new(Opts::new(name, help), labels).unwrap(),
        dims,
    )
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests;
