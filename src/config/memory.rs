//! What a configuration lets the bridge hold in memory at most: [`Config::memory_estimate`],
//! printed by `hookbridge check-config` and compared there with a memory limit (`--memory-limit`,
//! or the cgroup's own).
//!
//! The formula (docs/operations.md, "Memory"):
//!
//! ```text
//! base (+ Kafka client base)
//! + http.max_connections × PER_CONNECTION_BYTES
//! + min(http.max_buffered_bytes, http.max_connections × http.max_body_bytes)
//! + auth.dedup_max_entries × DEDUP_BYTES_PER_ID            (0 when auth.dedup_window is 0)
//! + min(forward.max_in_flight × (http.max_body_bytes + RECORD_OVERHEAD),
//!       forward.max_in_flight_bytes + http.max_body_bytes + forward.max_in_flight × RECORD_OVERHEAD,
//!       spool.max_bytes)                                   (the window may pass its byte bound by one record)
//!   × 2 for Kafka (librdkafka keeps its own copy of each message it has not had confirmed),
//!   at most queue.buffering.max.kbytes more when that option is set
//! + spool.max_batch_bytes                                   (the writer's group-commit buffer)
//! + admin.max_replay_bytes + admin.max_connections × admin.max_request_bytes
//!                                                          (only with admin.token_file: without
//!                                                           a token no request body is read and
//!                                                           no live replay can run)
//! ```
//!
//! The constants are measured figures (docs/operations.md, BENCHMARKS.md); the estimate is an
//! upper bound for what the configuration allows, not a prediction of typical use.

use super::{Config, SinkKind};

/// Binary, runtime, metrics, spool index and buffers of an idle bridge, as measured
/// (docs/operations.md, "Memory"), rounded up.
pub const BASE_BYTES: u64 = 16 << 20;
/// librdkafka's threads, metadata and buffers beyond the NATS client's, as measured, rounded up.
pub const KAFKA_BASE_BYTES: u64 = 8 << 20;
/// One open ingress connection without its body: hyper's read buffer (at most
/// `http.max_header_bytes`, 16 KiB by default), its write buffer, the task, the socket, the
/// lingering close's 8 KiB and, with TLS, rustls' record buffers: the most measured on plain
/// HTTP (`benches/ingress_flood.py`, `tests/ingress_budget.rs`; figures in docs/operations.md),
/// rounded up. TLS connections were not measured.
pub const PER_CONNECTION_BYTES: u64 = 64 << 10;
/// One remembered delivery id in the de-duplication set, as `examples/dedup_mem.rs` measures
/// it, rounded up.
pub const DEDUP_BYTES_PER_ID: u64 = 22;
/// A spool record beyond its body: the delivery's metadata (ids, action, resource id) and the
/// frame, generously.
pub const RECORD_OVERHEAD: u64 = 1024;

/// [`Config::memory_estimate`]: each term in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryEstimate {
    /// The fixed part: [`BASE_BYTES`], plus [`KAFKA_BASE_BYTES`] for Kafka.
    pub base: u64,
    /// `http.max_connections × PER_CONNECTION_BYTES`.
    pub connections: u64,
    /// Request bodies: the budget, or all connections at the body limit if that is less.
    pub bodies: u64,
    /// The de-duplication set at `auth.dedup_max_entries`.
    pub dedup: u64,
    /// Records the forwarder has handed to the sink and not had confirmed.
    pub window: u64,
    /// The spool writer's group-commit buffer.
    pub writer: u64,
    /// The admin API: one live replay's records and the request bodies of authenticated
    /// clients; 0 without `admin.token_file`.
    pub admin: u64,
}

impl MemoryEstimate {
    pub fn total(&self) -> u64 {
        self.base
            + self.connections
            + self.bodies
            + self.dedup
            + self.window
            + self.writer
            + self.admin
    }

    /// One line per term, for `check-config` (in MiB, one decimal).
    pub fn lines(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("base (binary, runtime, broker client)", self.base),
            ("connections (http.max_connections)", self.connections),
            ("request bodies (http.max_buffered_bytes)", self.bodies),
            ("de-duplication (auth.dedup_max_entries)", self.dedup),
            (
                "forwarder window (forward.max_in_flight_bytes)",
                self.window,
            ),
            ("spool writer (spool.max_batch_bytes)", self.writer),
            ("admin API (admin.max_replay_bytes)", self.admin),
            ("total", self.total()),
        ]
    }
}

impl Config {
    /// The most memory this configuration lets the bridge use, term by term (module doc).
    pub fn memory_estimate(&self) -> MemoryEstimate {
        let kafka = self.sink.kind == SinkKind::Kafka;
        let conns = self.http.max_connections as u64;
        let body = u64::from(self.http.max_body_bytes);
        let dedup = if self.auth.dedup_window.is_zero() {
            0
        } else {
            self.auth.dedup_max_entries as u64 * DEDUP_BYTES_PER_ID
        };
        let records = self.forward.max_in_flight as u64;
        let forwarder = records
            .saturating_mul(body + RECORD_OVERHEAD)
            .min(
                self.forward
                    .max_in_flight_bytes
                    .saturating_add(body)
                    .saturating_add(records.saturating_mul(RECORD_OVERHEAD)),
            )
            .min(self.spool.max_bytes);
        let window = if kafka {
            let client_copy = match kafka_queue_bytes(self) {
                Some(cap) => forwarder.min(cap),
                None => forwarder,
            };
            forwarder + client_copy
        } else {
            forwarder
        };
        MemoryEstimate {
            base: BASE_BYTES + if kafka { KAFKA_BASE_BYTES } else { 0 },
            connections: conns.saturating_mul(PER_CONNECTION_BYTES),
            bodies: self.http.max_buffered_bytes.min(conns.saturating_mul(body)),
            dedup,
            window,
            writer: self.spool.max_batch_bytes as u64,
            admin: match self.admin.token_file {
                None => 0,
                Some(_) => self.admin.max_replay_bytes.saturating_add(
                    (self.admin.max_connections as u64)
                        .saturating_mul(self.admin.max_request_bytes),
                ),
            },
        }
    }
}

/// librdkafka's producer queue cap in bytes, when `sink.kafka.options` sets it.
fn kafka_queue_bytes(c: &Config) -> Option<u64> {
    let kb: u64 = c
        .sink
        .kafka
        .options
        .get("queue.buffering.max.kbytes")?
        .trim()
        .parse()
        .ok()?;
    Some(kb.saturating_mul(1024))
}

/// Parses a byte count as Kubernetes writes it: a plain number, or with a binary suffix `Ki`,
/// `Mi`, `Gi`, `Ti` or a decimal one `k`/`K`, `M`, `G`, `T`.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, suffix) = s.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{s}` is not a byte count (examples: 268435456, 256Mi, 1Gi)"))?;
    let unit: u64 = match suffix {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "k" | "K" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        other => {
            return Err(format!(
                "unknown suffix `{other}` in `{s}` (use Ki, Mi, Gi, Ti, or k, M, G, T)"
            ))
        }
    };
    n.checked_mul(unit)
        .ok_or_else(|| format!("`{s}` is too large"))
}

/// The memory limit of this process' cgroup, if one is set and readable: cgroup v2
/// `memory.max` (`max` is no limit), else v1 `memory.limit_in_bytes` (a value near `u64::MAX` is
/// no limit).
pub fn cgroup_memory_limit() -> Option<u64> {
    cgroup_limit_in(std::path::Path::new("/sys/fs/cgroup"))
}

/// [`cgroup_memory_limit`] under a given mount point (tests).
pub fn cgroup_limit_in(root: &std::path::Path) -> Option<u64> {
    if let Ok(v2) = std::fs::read_to_string(root.join("memory.max")) {
        return v2.trim().parse().ok();
    }
    let v1 = std::fs::read_to_string(root.join("memory/memory.limit_in_bytes"))
        .or_else(|_| std::fs::read_to_string(root.join("memory.limit_in_bytes")))
        .ok()?;
    v1.trim().parse().ok().filter(|n| *n < 1 << 62)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::load_str;

    const MIB: u64 = 1 << 20;

    #[test]
    fn defaults_term_by_term() {
        let e = Config::default().memory_estimate();
        assert_eq!(e.base, 16 * MIB);
        assert_eq!(e.connections, 64 * MIB);
        assert_eq!(e.bodies, 64 * MIB, "the budget, less than 1024 × 1 MiB");
        assert_eq!(e.dedup, 22_000_000);
        assert_eq!(
            e.window,
            (32 << 20) + MIB + 1024 * RECORD_OVERHEAD,
            "forward.max_in_flight_bytes, one record over, and 1024 records' overhead"
        );
        assert_eq!(e.writer, 4 * MIB);
        assert_eq!(e.admin, 0, "no admin token, no live replay");
        assert_eq!(e.total(), e.lines().last().unwrap().1);
        let c = load_str("[admin]\ntoken_file = \"/run/t\"\n").unwrap();
        assert_eq!(c.memory_estimate().admin, 64 * MIB + 64 * 64 * 1024);
    }

    #[test]
    fn each_setting_moves_its_term() {
        let c = load_str(
            "[http]\nmax_connections = 10\nmax_body_bytes = 65536\n[auth]\ndedup_window = \"0s\"\n[forward]\nmax_in_flight = 100\n[spool]\nmax_batch_bytes = 1048576\n",
        )
        .unwrap();
        let e = c.memory_estimate();
        assert_eq!(
            e.bodies,
            10 * 65536,
            "connections × body limit, under the budget"
        );
        assert_eq!(e.connections, 10 * PER_CONNECTION_BYTES);
        assert_eq!(e.dedup, 0, "no de-duplication");
        assert_eq!(e.window, 100 * (65536 + RECORD_OVERHEAD));
        assert_eq!(e.writer, MIB);
        // The window never exceeds what the spool can hold.
        let c = load_str("[spool]\nmax_bytes = 8388608\nsegment_bytes = 1048576\n").unwrap();
        assert_eq!(c.memory_estimate().window, 8 * MIB);
    }

    #[test]
    fn kafka_counts_the_client_copy_and_its_cap() {
        let c = load_str(
            "[sink]\nkind = \"kafka\"\n[forward]\nmax_in_flight = 64\nmax_in_flight_bytes = 1073741824\n",
        )
        .unwrap();
        let e = c.memory_estimate();
        assert_eq!(e.base, BASE_BYTES + KAFKA_BASE_BYTES);
        assert_eq!(e.window, 2 * 64 * (MIB + RECORD_OVERHEAD));
        let c = load_str(
            "[sink]\nkind = \"kafka\"\n[forward]\nmax_in_flight = 64\nmax_in_flight_bytes = 1073741824\n[sink.kafka.options]\n\"queue.buffering.max.kbytes\" = \"1024\"\n",
        )
        .unwrap();
        assert_eq!(
            c.memory_estimate().window,
            64 * (MIB + RECORD_OVERHEAD) + MIB
        );
    }

    #[test]
    fn byte_counts_parse_like_kubernetes_quantities() {
        for (s, n) in [
            ("268435456", 268_435_456),
            ("256Mi", 256 * MIB),
            ("64Ki", 65536),
            ("1Gi", 1 << 30),
            ("2Ti", 2 << 40),
            ("500M", 500_000_000),
            ("1k", 1000),
            (" 3G ", 3_000_000_000),
        ] {
            assert_eq!(parse_bytes(s), Ok(n), "{s}");
        }
        for bad in ["", "Mi", "256MB", "1.5Gi", "-1", "99999999999999Ti"] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cgroup_limits_v2_v1_and_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(cgroup_limit_in(dir.path()), None, "nothing readable");
        std::fs::write(
            dir.path().join("memory.limit_in_bytes"),
            "9223372036854771712\n",
        )
        .unwrap();
        assert_eq!(cgroup_limit_in(dir.path()), None, "v1 without a limit");
        std::fs::write(dir.path().join("memory.limit_in_bytes"), "268435456\n").unwrap();
        assert_eq!(cgroup_limit_in(dir.path()), Some(256 * MIB), "v1");
        std::fs::write(dir.path().join("memory.max"), "max\n").unwrap();
        assert_eq!(
            cgroup_limit_in(dir.path()),
            None,
            "v2 without a limit wins over v1"
        );
        std::fs::write(dir.path().join("memory.max"), "134217728\n").unwrap();
        assert_eq!(cgroup_limit_in(dir.path()), Some(128 * MIB), "v2");
    }
}
