//! `hookbridge status`: a one-screen summary of a running bridge, read from its admin listener
//! (`/readyz` and two samples of `/metrics`, `--interval` apart, for the rates).
//!
//! It only reads over HTTP: no spool file is opened, so it is safe anywhere the admin port is
//! reachable. Exit codes: 0 the bridge is ready, 1 it answered but is not ready, 2 it could not
//! be asked (unreachable, not a hookbridge admin listener, bad configuration or arguments).

use std::fmt::Write as _;
use std::time::Duration;

use super::admin_client::{self, AdminClient};
use crate::admin::Readyz;
use crate::config::{self, Config};

/// Most bytes of a `/metrics` page read.
const MAX_PAGE_BYTES: usize = 64 << 20;

/// `hookbridge status [--admin URL] [--interval D]`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Admin listener to ask, e.g. `http://127.0.0.1:9090`; default: `admin.listen` from the
    /// configuration (an unspecified address such as 0.0.0.0 is asked on loopback).
    #[arg(long, value_name = "URL")]
    pub admin: Option<String>,
    /// Time between the two `/metrics` samples the rates are computed from.
    #[arg(long, value_name = "D", default_value = "1s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Give up on a request to the admin listener after this long.
    #[arg(long, value_name = "D", default_value = "5s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// Why `status` could not produce a summary (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration could not be loaded (only when `--admin` is not given).
    #[error(transparent)]
    Config(#[from] config::Error),
    /// `--admin` is not an `http://host:port` URL.
    #[error("--admin {0:?} is not an http://host:port URL")]
    BadUrl(String),
    /// Connecting, sending or reading failed, or took longer than `--timeout`.
    #[error("admin listener {url} unreachable: {detail}")]
    Unreachable { url: String, detail: String },
    /// It answered, but not like a hookbridge admin listener.
    #[error("{url} does not look like a hookbridge admin listener: {detail}")]
    NotHookbridge { url: String, detail: String },
}

/// Exit code when the bridge answered and is ready.
pub const READY: u8 = 0;
/// Exit code when the bridge answered `/readyz` with "not ready".
pub const NOT_READY: u8 = 1;
/// Exit code when the bridge could not be asked.
pub const UNREACHABLE: u8 = 2;

/// Runs the command: prints the summary on `out` and returns the exit code.
pub fn run(
    config: Option<&std::path::Path>,
    args: &StatusArgs,
    out: &mut dyn std::io::Write,
) -> Result<u8, Error> {
    let client = match &args.admin {
        Some(url) => AdminClient::for_url(url)
            .ok_or_else(|| Error::BadUrl(url.trim_end_matches('/').to_owned()))?,
        None => AdminClient::for_listener(Config::load(config)?.admin.listen),
    };
    let status = collect(&client, args.interval, args.timeout)?;
    let _ = out.write_all(status.render().as_bytes());
    Ok(if status.ready.ready { READY } else { NOT_READY })
}

/// Everything the summary is made of.
#[derive(Debug)]
pub struct Status {
    pub admin: String,
    pub ready: Readyz,
    /// The first and the second `/metrics` sample.
    pub before: Scrape,
    pub after: Scrape,
    /// Time between the two samples as measured.
    pub elapsed: Duration,
}

/// One sample line of the Prometheus text format.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// A parsed `/metrics` page (what a scraper sees, not the bridge's own
/// [`Metrics`](crate::metrics::Metrics)).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scrape(pub Vec<Sample>);

impl Scrape {
    /// Parses the Prometheus text exposition format; comment lines and lines that do not parse
    /// are skipped (a summary is better with one number missing than not at all).
    pub fn parse(text: &str) -> Scrape {
        Scrape(text.lines().filter_map(parse_sample).collect())
    }

    /// The sum over every label set of `name`; `None` if the page has no such series.
    pub fn sum(&self, name: &str) -> Option<f64> {
        let mut found = None;
        for s in self.0.iter().filter(|s| s.name == name) {
            *found.get_or_insert(0.0) += s.value;
        }
        found
    }

    /// `name` summed per value of `label`, in page order.
    pub fn by(&self, name: &str, label: &str) -> Vec<(String, f64)> {
        let mut out: Vec<(String, f64)> = Vec::new();
        for s in self.0.iter().filter(|s| s.name == name) {
            let key = s
                .labels
                .iter()
                .find(|(k, _)| k == label)
                .map_or("", |(_, v)| v.as_str());
            match out.iter_mut().find(|(k, _)| k == key) {
                Some((_, v)) => *v += s.value,
                None => out.push((key.to_owned(), s.value)),
            }
        }
        out
    }
}

fn parse_sample(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (name, labels, rest) = match line.find(['{', ' ']) {
        Some(i) if line.as_bytes()[i] == b'{' => {
            let (labels, rest) = parse_labels(&line[i + 1..])?;
            (&line[..i], labels, rest)
        }
        Some(i) => (&line[..i], Vec::new(), &line[i..]),
        None => return None,
    };
    // An optional timestamp may follow the value.
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Parses `k="v",k2="v2"}` (after the `{`); returns the labels and what follows the `}`.
fn parse_labels(mut s: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start_matches([',', ' ']);
        if let Some(rest) = s.strip_prefix('}') {
            return Some((labels, rest));
        }
        let (key, rest) = s.split_once('=')?;
        let mut chars = rest.strip_prefix('"')?.char_indices();
        let mut value = String::new();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        labels.push((key.trim().to_owned(), value));
        s = &rest[1 + end + 1..];
    }
}

/// `/readyz`, then two `/metrics` samples `interval` apart.
fn collect(client: &AdminClient, interval: Duration, timeout: Duration) -> Result<Status, Error> {
    let not_ours = |detail: String| Error::NotHookbridge {
        url: client.url().to_owned(),
        detail,
    };
    let ready = get(client, "/readyz", timeout)?;
    let ready: Readyz = serde_json::from_slice(&ready.body)
        .map_err(|_| not_ours("/readyz did not answer JSON with `ready`".into()))?;
    let metrics = |answer: admin_client::Answer| {
        if answer.status != 200 {
            return Err(not_ours(format!("/metrics answered {}", answer.status)));
        }
        Ok(Scrape::parse(&String::from_utf8_lossy(&answer.body)))
    };
    let started = std::time::Instant::now();
    let before = metrics(get(client, "/metrics", timeout)?)?;
    if before.sum("hookbridge_spool_records").is_none() {
        return Err(not_ours("/metrics has no hookbridge_spool_records".into()));
    }
    std::thread::sleep(interval);
    let after = metrics(get(client, "/metrics", timeout)?)?;
    Ok(Status {
        admin: client.url().to_owned(),
        ready,
        before,
        after,
        elapsed: started.elapsed(),
    })
}

/// One GET through the admin client; a failure is [`Error::Unreachable`], a garbled answer
/// [`Error::NotHookbridge`].
fn get(client: &AdminClient, path: &str, timeout: Duration) -> Result<admin_client::Answer, Error> {
    let url = client.url().to_owned();
    client
        .get(path, timeout, MAX_PAGE_BYTES)
        .map_err(|e| match e {
            admin_client::Error::Io(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                Error::Unreachable {
                    url,
                    detail: format!("no answer to {path} within {timeout:?}"),
                }
            }
            admin_client::Error::Io(e) => Error::Unreachable {
                url,
                detail: e.to_string(),
            },
            admin_client::Error::Malformed => Error::NotHookbridge {
                url,
                detail: format!("{path} did not answer HTTP"),
            },
        })
}

impl Status {
    /// The human summary: one `label  value` line per topic, labels padded to one column.
    pub fn render(&self) -> String {
        let a = &self.after;
        let mut lines: Vec<(&str, String)> = vec![
            ("ready", self.ready_line()),
            ("broker", self.broker_line()),
            ("backlog", self.backlog_line()),
            (
                "in flight",
                format!(
                    "{:.0}",
                    a.sum("hookbridge_forward_in_flight").unwrap_or(0.0)
                ),
            ),
        ];
        lines.extend(self.failing_line());
        lines.push(("rates", self.rates_line()));
        let accepted = a.sum("hookbridge_deliveries_accepted_total").unwrap_or(0.0);
        let published = a.sum("hookbridge_published_total").unwrap_or(0.0);
        let duplicates = a
            .sum("hookbridge_deliveries_duplicate_total")
            .unwrap_or(0.0);
        lines.push((
            "since start",
            format!("{accepted:.0} accepted, {published:.0} published, {duplicates:.0} duplicates"),
        ));
        lines.extend(self.endpoints_line());
        lines.push(("dead letters", self.dead_letters_line()));
        lines.push((
            "dedup waits",
            or_none(counts(&a.by("hookbridge_dedup_waits_total", "outcome"), "")),
        ));
        lines.push(("errors", self.errors_line()));
        lines.push(("http answers", self.http_line()));

        let width = lines.iter().map(|(l, _)| l.len()).max().unwrap_or(0) + 2;
        let mut out = format!("hookbridge at {}\n", self.admin);
        for (label, value) in lines {
            let _ = writeln!(out, "{label:<width$}{value}");
        }
        out
    }

    fn ready_line(&self) -> String {
        let r = &self.ready;
        if r.ready {
            return format!("yes (spool {})", r.spool);
        }
        let why = match r.spool.as_str() {
            "full" => "spool full: quota or spool.min_free_bytes reached, deliveries get 503 until the broker drains it",
            "failed" => "spool failed: a write or fsync error; the bridge drains, then exits for a restart",
            _ => "see /readyz",
        };
        format!("NO — {why}")
    }

    fn broker_line(&self) -> String {
        let sinks = self.after.by("hookbridge_broker_up", "sink");
        // `hookbridge_broker_up` exists from the start (1 before the first attempt): the readiness
        // answer says whether an attempt was made.
        if sinks.is_empty() || self.ready.broker == "unknown" {
            return format!("{} (no publish attempt yet)", self.ready.broker);
        }
        sinks
            .iter()
            .map(|(sink, up)| format!("{sink} {}", if *up >= 1.0 { "up" } else { "DOWN" }))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn backlog_line(&self) -> String {
        let a = &self.after;
        let records = a.sum("hookbridge_spool_records").unwrap_or(0.0);
        let bytes = a.sum("hookbridge_spool_bytes").unwrap_or(0.0);
        let quota = a.sum("hookbridge_spool_max_bytes").unwrap_or(0.0);
        let oldest = a
            .sum("hookbridge_spool_oldest_record_age_seconds")
            .unwrap_or(0.0);
        let percent = if quota > 0.0 {
            format!(" ({:.1}%)", 100.0 * bytes / quota)
        } else {
            String::new()
        };
        let oldest = if records > 0.0 {
            format!(", oldest {}", age(oldest))
        } else {
            String::new()
        };
        format!(
            "{records:.0} records, {} of {} on disk{percent}{oldest}",
            size(bytes),
            size(quota)
        )
    }

    /// Only a record that has failed is worth a line: during normal flow the oldest record
    /// changes many times a second.
    fn failing_line(&self) -> Option<(&'static str, String)> {
        let r = &self.ready;
        let o = r.oldest_unconfirmed.as_ref().filter(|o| o.attempts > 0)?;
        let stuck = r.stuck_records;
        let (label, kind) = if stuck > 0 {
            (
                "STUCK",
                format!("{stuck} failing while others are confirmed; oldest"),
            )
        } else {
            ("retrying", "oldest".to_owned())
        };
        Some((
            label,
            format!(
                "{kind} seq {} ({}) to {}: {} failed attempts over {}{}",
                o.seq,
                o.delivery_id,
                o.destination,
                o.attempts,
                age(o.age_seconds as f64),
                o.last_error
                    .as_deref()
                    .map(|e| format!(", last error: {e}"))
                    .unwrap_or_default()
            ),
        ))
    }

    fn rates_line(&self) -> String {
        let secs = self.elapsed.as_secs_f64().max(1e-3);
        let rate = |name: &str| {
            let d = self.after.sum(name).unwrap_or(0.0) - self.before.sum(name).unwrap_or(0.0);
            d.max(0.0) / secs
        };
        format!(
            "{:.1} acks/s, {:.1} published/s (over {:.1}s)",
            rate("hookbridge_deliveries_accepted_total"),
            rate("hookbridge_published_total"),
            secs
        )
    }

    /// With several endpoints, each one's counts since start: accepted, rejected, published and
    /// dead-lettered (`hookbridge_*_total{endpoint}`).
    fn endpoints_line(&self) -> Option<(&'static str, String)> {
        let a = &self.after;
        let accepted = a.by("hookbridge_deliveries_accepted_total", "endpoint");
        if accepted.len() < 2 {
            return None;
        }
        let of = |name: &str, endpoint: &str| {
            a.by(name, "endpoint")
                .iter()
                .find(|(e, _)| e == endpoint)
                .map_or(0.0, |(_, v)| *v)
        };
        let each: Vec<String> = accepted
            .iter()
            .map(|(e, n)| {
                format!(
                    "{e}: {n:.0} accepted, {:.0} rejected, {:.0} published, {:.0} dead-lettered",
                    of("hookbridge_deliveries_rejected_total", e),
                    of("hookbridge_published_total", e),
                    of("hookbridge_dead_lettered_total", e),
                )
            })
            .collect();
        Some(("endpoints", each.join("; ")))
    }

    fn dead_letters_line(&self) -> String {
        let a = &self.after;
        let store = a
            .sum("hookbridge_dead_letter_records")
            .unwrap_or(self.ready.dead_letters as f64);
        format!(
            "{store:.0} in store{}",
            counts(
                &a.by("hookbridge_dead_lettered_total", "reason"),
                ", written: "
            )
        )
    }

    fn errors_line(&self) -> String {
        let a = &self.after;
        let errors = [
            ("publish", a.by("hookbridge_publish_errors_total", "kind")),
            ("spool", a.by("hookbridge_spool_errors_total", "op")),
            (
                "rejected",
                a.by("hookbridge_spool_rejected_total", "reason"),
            ),
            ("corrupt", {
                let n = a
                    .sum("hookbridge_spool_corrupt_records_total")
                    .unwrap_or(0.0);
                vec![("records".to_owned(), n)]
            }),
        ];
        let errors: Vec<String> = errors
            .iter()
            .filter_map(|(what, by)| {
                let c = counts(by, "");
                (!c.is_empty()).then(|| format!("{what}: {c}"))
            })
            .collect();
        or_none(errors.join("; "))
    }

    fn http_line(&self) -> String {
        let http = self.after.by("hookbridge_http_requests_total", "status");
        let class = |c: char| -> f64 {
            http.iter()
                .filter(|(s, _)| s.starts_with(c))
                .fold(0.0, |sum, (_, n)| sum + n)
        };
        format!(
            "{:.0} 2xx, {:.0} 4xx, {:.0} 5xx",
            class('2'),
            class('4'),
            class('5')
        )
    }
}

/// `a 3, b 1` for the non-zero entries, prefixed by `lead`; empty when all are zero.
fn counts(by: &[(String, f64)], lead: &str) -> String {
    let parts: Vec<String> = by
        .iter()
        .filter(|(_, n)| *n > 0.0)
        .map(|(k, n)| format!("{k} {n:.0}"))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("{lead}{}", parts.join(", "))
    }
}

fn or_none(s: String) -> String {
    if s.is_empty() {
        "none".to_owned()
    } else {
        s
    }
}

/// Bytes in binary units with one decimal.
fn size(bytes: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{v:.0} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Seconds as `42s`, `3m 20s`, `2h 5m`, `3d 4h`.
fn age(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86400, s % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured from a bridge with a NATS sink that had taken 40 deliveries, published 30, had
    /// two connection errors and one dead letter (histograms trimmed).
    const METRICS: &str = r#"# HELP hookbridge_broker_up 1 while the last publish attempt to the broker succeeded, 0 after a failure.
# TYPE hookbridge_broker_up gauge
hookbridge_broker_up{sink="nats"} 0
# HELP hookbridge_dead_letter_records Records in the local dead-letter store.
# TYPE hookbridge_dead_letter_records gauge
hookbridge_dead_letter_records 1
# TYPE hookbridge_dead_lettered_total counter
hookbridge_dead_lettered_total{reason="invalid_json"} 1
# TYPE hookbridge_dedup_waits_total counter
hookbridge_dedup_waits_total{outcome="duplicate"} 2
hookbridge_dedup_waits_total{outcome="timeout"} 0
# TYPE hookbridge_deliveries_accepted_total counter
hookbridge_deliveries_accepted_total{action="session.updated"} 30
hookbridge_deliveries_accepted_total{action="contact.created"} 10
hookbridge_deliveries_duplicate_total 3
# TYPE hookbridge_forward_in_flight gauge
hookbridge_forward_in_flight 9
hookbridge_http_requests_total{status="200"} 43
hookbridge_http_requests_total{status="401"} 2
hookbridge_http_requests_total{status="503"} 1
hookbridge_publish_errors_total{kind="connection",sink="nats"} 2
hookbridge_published_total{sink="nats"} 30
hookbridge_spool_bytes 1572864
hookbridge_spool_max_bytes 1073741824
hookbridge_spool_oldest_record_age_seconds 75.4
hookbridge_spool_records 10
hookbridge_ack_latency_seconds_bucket{le="+Inf"} 40
hookbridge_ack_latency_seconds_sum 0.21
"#;

    fn status(ready: &str, before: &str, after: &str) -> Status {
        Status {
            admin: "http://127.0.0.1:9090".into(),
            ready: serde_json::from_str(ready).unwrap(),
            before: Scrape::parse(before),
            after: Scrape::parse(after),
            elapsed: Duration::from_secs(2),
        }
    }

    /// Name, labels and value of the sample a line should parse to.
    type Want<'a> = Option<(&'a str, &'a [(&'a str, &'a str)], f64)>;

    #[test]
    fn parses_the_text_format() {
        let check = |line: &str, want: Want<'_>| {
            let got = parse_sample(line);
            let want = want.map(|(name, labels, value)| Sample {
                name: name.into(),
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                value,
            });
            assert_eq!(got, want, "{line}");
        };
        check(
            "hookbridge_spool_records 10",
            Some(("hookbridge_spool_records", &[], 10.0)),
        );
        check(
            "a{x=\"1\",y=\"b c\"} 2.5",
            Some(("a", &[("x", "1"), ("y", "b c")], 2.5)),
        );
        check(
            "a{x=\"q\\\"}\\\\\"} 1 1700000000",
            Some(("a", &[("x", "q\"}\\")], 1.0)),
        );
        check(
            "a{le=\"+Inf\"} +Inf",
            Some(("a", &[("le", "+Inf")], f64::INFINITY)),
        );
        check("a{} 3", Some(("a", &[], 3.0)));
        check("# HELP a b", None);
        check("", None);
        check("a{x=\"1\" 3", None);
        check("a notanumber", None);
        let m = Scrape::parse(METRICS);
        assert_eq!(m.sum("hookbridge_deliveries_accepted_total"), Some(40.0));
        assert_eq!(m.sum("hookbridge_nonexistent"), None);
        assert_eq!(
            m.by("hookbridge_publish_errors_total", "kind"),
            vec![("connection".to_owned(), 2.0)]
        );
    }

    #[test]
    fn summary_of_a_ready_bridge_with_a_broker_down() {
        let before = METRICS
            .replace("\"session.updated\"} 30", "\"session.updated\"} 20")
            .replace(
                "hookbridge_published_total{sink=\"nats\"} 30",
                "hookbridge_published_total{sink=\"nats\"} 29",
            );
        let s = status(
            r#"{"ready":true,"spool":"ok","broker":"down","backlog_records":10,"backlog_bytes":1572864,"dead_letters":1}"#,
            &before,
            METRICS,
        );
        let want = "\
hookbridge at http://127.0.0.1:9090
ready         yes (spool ok)
broker        nats DOWN
backlog       10 records, 1.5 MiB of 1.0 GiB on disk (0.1%), oldest 1m 15s
in flight     9
rates         5.0 acks/s, 0.5 published/s (over 2.0s)
since start   40 accepted, 30 published, 3 duplicates
dead letters  1 in store, written: invalid_json 1
dedup waits   duplicate 2
errors        publish: connection 2
http answers  43 2xx, 2 4xx, 1 5xx
";
        assert_eq!(s.render(), want);
    }

    #[test]
    fn summary_shows_a_stuck_record() {
        let s = status(
            r#"{"ready":true,"spool":"ok","broker":"up","backlog_records":10,"backlog_bytes":10,"dead_letters":0,"stuck_records":1,"oldest_unconfirmed":{"seq":7,"delivery_id":"msg_7","destination":"sb.contact.created","attempts":4,"age_seconds":75,"last_error":"timeout"}}"#,
            METRICS,
            METRICS,
        );
        let text = s.render();
        assert!(
            text.contains("STUCK         1 failing while others are confirmed; oldest seq 7 (msg_7) to sb.contact.created: 4 failed attempts over 1m 15s, last error: timeout"),
            "{text}"
        );
    }

    #[test]
    fn summary_of_a_full_spool_says_why() {
        let s = status(
            r#"{"ready":false,"spool":"full","broker":"unknown","backlog_records":0,"backlog_bytes":0,"dead_letters":0}"#,
            "hookbridge_spool_records 0\n",
            "hookbridge_spool_records 0\nhookbridge_spool_rejected_total{reason=\"full\"} 4\n",
        );
        let text = s.render();
        assert!(text.contains("ready         NO — spool full"), "{text}");
        assert!(
            text.contains("broker        unknown (no publish attempt yet)"),
            "{text}"
        );
        assert!(
            text.contains("backlog       0 records, 0 B of 0 B on disk\n"),
            "{text}"
        );
        assert!(text.contains("errors        rejected: full 4\n"), "{text}");
        assert!(text.contains("dedup waits   none\n"), "{text}");
    }

    #[test]
    fn summary_counts_each_endpoint_when_there_are_several() {
        let several = r#"hookbridge_deliveries_accepted_total{action="session.updated",endpoint="default"} 30
hookbridge_deliveries_accepted_total{action="session.updated",endpoint="sandbox"} 5
hookbridge_deliveries_rejected_total{endpoint="sandbox",reason="no_matching_signature"} 2
hookbridge_published_total{action="session.updated",endpoint="default",sink="nats"} 29
hookbridge_published_total{action="session.updated",endpoint="sandbox",sink="nats"} 5
hookbridge_dead_lettered_total{endpoint="default",reason="invalid_json"} 1
"#;
        let ready = r#"{"ready":true,"spool":"ok","broker":"up","backlog_records":0,"backlog_bytes":0,"dead_letters":1}"#;
        let text = status(ready, several, several).render();
        assert!(
            text.contains("endpoints     default: 30 accepted, 0 rejected, 29 published, 1 dead-lettered; sandbox: 5 accepted, 2 rejected, 5 published, 0 dead-lettered"),
            "{text}"
        );
        let one = status(ready, METRICS, METRICS).render();
        assert!(!one.contains("endpoints"), "one endpoint: no line");
    }

    #[test]
    fn sizes_and_ages() {
        assert_eq!(size(0.0), "0 B");
        assert_eq!(size(1536.0), "1.5 KiB");
        assert_eq!(size(1073741824.0), "1.0 GiB");
        assert_eq!(age(0.4), "0s");
        assert_eq!(age(200.0), "3m 20s");
        assert_eq!(age(7500.0), "2h 5m");
        assert_eq!(age(90000.0), "1d 1h");
    }
}
