//! The markdown table the benchmark prints: every figure beside the "now" and target,
//! one group of rows per scenario.

use serde_json::{Map, Value};

use crate::{brokers, Run};

/// `x` with a k or M suffix.
pub fn k(x: f64) -> String {
    if x >= 1_000_000.0 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 10_000.0 {
        format!("{:.1}k", x / 1000.0)
    } else {
        format!("{x:.0}")
    }
}

/// The markdown table of `run`; ratios are to `ceiling` (req/s of the no-op server).
pub fn table(run: &Run, ceiling: Option<f64>) -> String {
    let mut t = Table {
        r: &run.results,
        ceiling,
        rows: Vec::new(),
    };
    let backlog = run.args.params.backlog as f64;
    t.ack_rows();
    t.endpoint_rows();
    t.open_loop_rows();
    t.end_to_end_rows();
    t.replay_rows(backlog);
    let mut out = String::from(
        "| scenario | measured | ratio | peak RSS | issue \"now\" | target |\n| --- | --- | --- | --- | --- | --- |\n",
    );
    for r in t.rows {
        out.push_str(&format!("| {} |\n", r.join(" | ")));
    }
    out
}

struct Table<'a> {
    r: &'a Map<String, Value>,
    ceiling: Option<f64>,
    /// scenario, measured, ratio, peak RSS, issue "now", target
    rows: Vec<[String; 6]>,
}

impl Table<'_> {
    fn f(&self, key: &str, field: &str) -> Option<f64> {
        self.r
            .get(key)
            .and_then(|v| v.get(field))
            .and_then(Value::as_f64)
    }

    fn lat(&self, key: &str, field: &str) -> String {
        self.r
            .get(key)
            .and_then(|v| v.get(field))
            .map(|l| {
                let g = |n: &str| l.get(n).and_then(Value::as_f64).unwrap_or(f64::NAN);
                format!(
                    "p50 {:.2} / p99 {:.2} / p99.9 {:.2} / max {:.1} ms",
                    g("p50_ms"),
                    g("p99_ms"),
                    g("p99_9_ms"),
                    g("max_ms")
                )
            })
            .unwrap_or_default()
    }

    fn rss(&self, key: &str) -> String {
        self.f(key, "peak_rss_mib")
            .map_or(String::new(), |m| format!("{m:.0} MiB"))
    }

    fn ratio(&self, x: f64) -> String {
        self.ceiling
            .map_or(String::new(), |c| format!("{:.2}×", x / c))
    }

    fn row(&mut self, a: &str, b: String, c: String, d: String, e: &str, g: &str) {
        self.rows.push([a.into(), b, c, d, e.into(), g.into()]);
    }

    /// Rows 1, 2 and 7: the ceiling and durable acks, plain and signed.
    fn ack_rows(&mut self) {
        if let (Some(b), Some(a)) = (
            self.f("ceiling_before", "per_s"),
            self.f("ceiling_after", "per_s"),
        ) {
            self.row(
                "1 ceiling: no-op server, 64 conns (before / after)",
                format!("{} / {} req/s", k(b), k(a)),
                String::new(),
                self.rss("ceiling_before"),
                "46.4k / 58.3k req/s",
                "",
            );
        }
        if let Some(x) = self.f("spool_only", "per_s") {
            self.row(
                "2 durable acks, spool only, 64 conns",
                format!("{} acks/s; {}", k(x), self.lat("spool_only", "latency")),
                self.ratio(x),
                self.rss("spool_only"),
                "21.7k (0.41×), p50 2.5 / p99 7.5 ms, 53 MiB",
                "≥ 0.6×",
            );
        }
        if let Some(x) = self.f("spool_signed", "per_s") {
            self.row(
                "7 same, Standard Webhooks signed",
                format!("{} acks/s; {}", k(x), self.lat("spool_signed", "latency")),
                self.ratio(x),
                self.rss("spool_signed"),
                "",
                "≥ 0.55×",
            );
        }
    }

    /// Row 8: several endpoints against one, the means of rounds of runs.
    fn endpoint_rows(&mut self) {
        let (Some(one), Some(n), Some(rounds)) = (
            self.f("endpoints", "one_per_s"),
            self.f("endpoints", "endpoints"),
            self.f("endpoints", "rounds"),
        ) else {
            return;
        };
        for (name, what) in [
            ("round_robin", "round-robin"),
            ("last", "all to the last one"),
        ] {
            let Some(x) = self.f("endpoints", &format!("{name}_per_s")) else {
                continue;
            };
            let p99 = |name: &str| {
                self.f("endpoints", &format!("{name}_p99_ms"))
                    .unwrap_or(f64::NAN)
            };
            self.row(
                &format!("8 durable acks, {n} endpoints ({what}) / 1 endpoint (means of {rounds} rounds)"),
                format!(
                    "{} / {} acks/s; p99 {:.2} / {:.2} ms",
                    k(x),
                    k(one),
                    p99(name),
                    p99("one")
                ),
                format!("{:.2}× of 1 endpoint", x / one),
                String::new(),
                "",
                "≥ 1 endpoint's (issue 26)",
            );
        }
    }

    /// Row 3: the open-loop runs, latency from the intended send time.
    fn open_loop_rows(&mut self) {
        for (key, what) in [
            ("open_loop_noop", "0.4 × ceiling, no-op server"),
            ("open_loop", "0.4 × ceiling"),
            ("open_loop_half_acks", "0.5 × row 2's acks/s"),
        ] {
            let Some(rate) = self.f(key, "rate_target") else {
                continue;
            };
            let r = &self.r[key];
            let p99 = |field: &str| {
                r[field]["p99_ms"]
                    .as_f64()
                    .map_or(String::new(), |x| format!("{x:.2}"))
            };
            let bridge_own = match (
                r["bridge_ack_ms_bucket"]["p99"].as_f64(),
                r["bridge_ack_ms_bucket"]["p99_9"].as_f64(),
            ) {
                (Some(a), Some(b)) => format!("; the bridge's own p99 ≤ {a} / p99.9 ≤ {b} ms"),
                _ => String::new(),
            };
            let measured = format!(
                "{} req/s offered, {} ok/s; {}; {} missed slots; p99 service {} / send lateness {} ms; steal {:.0} ms{}",
                k(rate),
                k(self.f(key, "per_s").unwrap_or(0.0)),
                self.lat(key, "latency"),
                self.f(key, "missed_slots").unwrap_or(0.0),
                p99("service"),
                p99("send_lateness"),
                self.f(key, "steal_ms").unwrap_or(0.0),
                bridge_own,
            );
            let noop = key == "open_loop_noop";
            self.row(
                &format!("3 open loop at {what} (latency from intended send)"),
                measured,
                String::new(),
                self.rss(key),
                if noop {
                    ""
                } else {
                    "(closed loop: p50 2.5 / p99 7.5 ms)"
                },
                if noop {
                    ""
                } else {
                    "p99 ≤ 5 ms, p99.9 ≤ 10 ms"
                },
            );
        }
    }

    /// Row 4: end to end to each broker, and the broker alone.
    fn end_to_end_rows(&mut self) {
        for (kind, name, now) in [
            ("nats", "JetStream", "12.0k"),
            ("kafka", "Kafka (tansu)", "14.8k"),
        ] {
            let key = format!("{kind}_e2e");
            if let Some(x) = self.f(&key, "confirmed_per_s") {
                let growing = if self.r[&key]["backlog_bounded"] == true {
                    ""
                } else {
                    " (growing)"
                };
                self.row(
                    &format!("4 end to end → {name}, sustained"),
                    format!(
                        "{} confirmed/s ({} acks/s); backlog max {} end {}{growing}",
                        k(x),
                        k(self.f(&key, "per_s").unwrap_or(0.0)),
                        k(self.f(&key, "max_backlog").unwrap_or(0.0)),
                        k(self.f(&key, "backlog_end").unwrap_or(0.0)),
                    ),
                    self.f(&key, "ratio_to_alone")
                        .map_or(String::new(), |r| format!("{r:.2}× alone")),
                    self.rss(&key),
                    now,
                    "≥ 20k/s and ≥ 0.7× alone",
                );
            }
            if let Some(x) = self.f(&format!("{kind}_alone"), "per_s") {
                self.row(
                    &format!(
                        "4 {name} alone (Rust client, {} acks in flight)",
                        brokers::WINDOW
                    ),
                    format!("{} msgs/s", k(x)),
                    String::new(),
                    String::new(),
                    "",
                    "",
                );
            }
        }
    }

    /// Rows 5 and 6: filling a backlog of `backlog` deliveries, replaying it to each broker,
    /// and the memory the ids take.
    fn replay_rows(&mut self, backlog: f64) {
        if let Some(x) = self.f("replay_fill", "per_s") {
            self.row(
                &format!("5 fill: {} deliveries, broker unreachable", k(backlog)),
                format!("{} acks/s; {}", k(x), self.lat("replay_fill", "latency")),
                String::new(),
                self.rss("replay_fill"),
                "",
                "",
            );
        }
        for (kind, name, now) in [
            ("nats", "JetStream", "27–34k rec/s; restart 2.24 s (950k)"),
            ("kafka", "Kafka (tansu)", ""),
        ] {
            let key = format!("replay_{kind}");
            if let Some(x) = self.f(&key, "per_s") {
                let incomplete = if self.r[&key]["complete"] == true {
                    ""
                } else {
                    " (incomplete)"
                };
                self.row(
                    &format!("5 replay → {name}; startup with backlog + ids"),
                    format!(
                        "{} rec/s{incomplete}; startup {:.2} s",
                        k(x),
                        self.f(&key, "startup_s").unwrap_or(f64::NAN)
                    ),
                    String::new(),
                    self.rss(&key),
                    now,
                    "≥ 60k rec/s; startup ≤ 1 s",
                );
            }
        }
        if let Some(m) = self.f("replay_fill", "peak_rss_mib") {
            self.row(
                &format!("6 memory after {} distinct delivery ids", k(backlog)),
                format!(
                    "peak {m:.0} MiB, now {:.0} MiB",
                    self.f("replay_fill", "rss_mib").unwrap_or(f64::NAN)
                ),
                String::new(),
                String::new(),
                "53 MiB (spool only)",
                "≤ 48 MiB everywhere",
            );
        }
    }
}
