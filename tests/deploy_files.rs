//! The alert rules and the Grafana dashboard in `deploy/` name only metrics hookbridge exports.
//!
//! A metric renamed in `src/metrics.rs`, or a typo in a PromQL expression, would otherwise leave an
//! alert that can never fire or a panel that is always empty. The reference list is
//! `Metrics::metric_names` (every registered family); the test first checks that list against
//! what a running bridge really serves on `/metrics`. And a name that exists is not enough: the
//! first scrape of a fresh bridge must already hold a sample of each, with the label values the
//! rules select (`first_scrape_of_a_fresh_bridge_holds_every_metric_deploy_files_use`).

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::*;
use hookbridge::metrics::Metrics;
use prometheus::core::Collector;

/// Files whose `hookbridge_*` names must exist. The promtool tests are included so that a test
/// series cannot be named after a metric that does not exist (such a test would prove nothing).
const FILES: &[&str] = &[
    "deploy/prometheus/alerts.yml",
    "deploy/prometheus/alerts.test.yml",
    // Generated from alerts.yml (the deploy check keeps them identical); named here too, so a
    // stale copy cannot keep an old metric name.
    "deploy/kubernetes/base/prometheusrule.yaml",
    "deploy/grafana/hookbridge.json",
];

/// Every `hookbridge_[a-z0-9_]+` token in `text` that is not the tail of a longer identifier (the
/// bare prefix, as in `hookbridge_*`, is not a name).
fn metric_tokens(text: &str) -> BTreeSet<String> {
    let ident = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_';
    let bytes = text.as_bytes();
    let mut found = BTreeSet::new();
    let mut from = 0;
    while let Some(at) = text[from..].find("hookbridge_") {
        let start = from + at;
        let mut end = start + "hookbridge_".len();
        while end < bytes.len() && ident(bytes[end]) {
            end += 1;
        }
        let standalone =
            start == 0 || !(ident(bytes[start - 1]) || bytes[start - 1].is_ascii_uppercase());
        if standalone && end > start + "hookbridge_".len() {
            found.insert(text[start..end].to_owned());
        }
        from = end;
    }
    found
}

/// The names of `tokens` that are not metrics hookbridge registers. `_bucket`, `_sum` and
/// `_count` are accepted only on a histogram's name.
fn unknown(
    tokens: &BTreeSet<String>,
    names: &BTreeSet<String>,
    histograms: &[String],
) -> Vec<String> {
    tokens
        .iter()
        .filter(|t| {
            let base = ["_bucket", "_sum", "_count"].iter().find_map(|s| {
                t.strip_suffix(s)
                    .filter(|b| histograms.iter().any(|h| h == b))
            });
            !names.contains(base.unwrap_or(t))
        })
        .cloned()
        .collect()
}

fn histograms(m: &Metrics) -> Vec<String> {
    let mut descs = Vec::new();
    descs.extend(m.ack_latency.desc());
    descs.extend(m.spool_fsync.desc());
    descs.extend(m.spool_batch_records.desc());
    descs.extend(m.publish_latency.vec().desc());
    descs.into_iter().map(|d| d.fq_name.clone()).collect()
}

/// Family names in a Prometheus text exposition (`# TYPE name kind` lines).
fn exported_families(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn deploy_files_name_only_exported_metrics() {
    let metrics = Metrics::new();
    let names: BTreeSet<String> = metrics.metric_names().into_iter().collect();
    let histograms = histograms(&metrics);

    // The reference list is what a running bridge serves: every family on /metrics is in it.
    // (No broker is needed: the bridge serves /metrics while it buffers.)
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::start(test_config(dir.path(), "deployfiles")).await;
    let served = metrics_text(&http_client(), app.admin).await;
    app.stop().await;
    let exported = exported_families(&served);
    assert!(exported.len() >= 15, "/metrics served only {exported:?}");
    let not_listed: Vec<_> = exported.difference(&names).collect();
    assert!(
        not_listed.is_empty(),
        "/metrics serves families missing from Metrics::metric_names: {not_listed:?}"
    );

    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut failures = Vec::new();
    for file in FILES {
        let text = std::fs::read_to_string(root.join(file))
            .unwrap_or_else(|e| panic!("reading {file}: {e}"));
        let tokens = metric_tokens(&text);
        assert!(!tokens.is_empty(), "{file} names no hookbridge metric");
        for bad in unknown(&tokens, &names, &histograms) {
            failures.push(format!("{file}: {bad}"));
        }
    }
    assert!(
        failures.is_empty(),
        "names hookbridge does not export (see src/metrics.rs):\n  {}",
        failures.join("\n  ")
    );
}

/// The check itself: a typo, a suffix on a non-histogram, or a histogram suffix that does not
/// exist are caught; identifiers that merely end in `hookbridge_` are not metric names.
#[test]
fn the_check_catches_typos() {
    let metrics = Metrics::new();
    let names: BTreeSet<String> = metrics.metric_names().into_iter().collect();
    let histograms = histograms(&metrics);
    let text = r#"rate(hookbridge_spool_bytez[5m]) hookbridge_spool_bytes_count
        histogram_quantile(0.9, rate(hookbridge_ack_latency_seconds_bucket[5m]))
        hookbridge_ack_latency_seconds_total hookbridge_spool_records{a="b"}
        x_hookbridge_not_a_metric HOOKBRIDGE_AUTH__SECRETS every hookbridge_* metric"#;
    let tokens = metric_tokens(text);
    assert_eq!(
        unknown(&tokens, &names, &histograms),
        [
            "hookbridge_ack_latency_seconds_total",
            "hookbridge_spool_bytes_count",
            "hookbridge_spool_bytez",
        ]
    );
    assert!(tokens.contains("hookbridge_spool_records"));
    assert!(!tokens.iter().any(|t| t.contains("not_a_metric")));
    // Every family is listed, `*Vec` families included.
    for name in [
        "hookbridge_http_requests_total",
        "hookbridge_publish_latency_seconds",
        "hookbridge_broker_up",
        "hookbridge_spool_bytes",
    ] {
        assert!(names.contains(name), "{name} missing from metric_names");
    }
}

/// Alert rules and panels need series before anything goes wrong: `rate()` and `increase()`
/// have nothing to work on, and panels show "no data", for a labelled family that appears only
/// after its first event. So the FIRST scrape of a freshly started bridge (the real binary) must
/// hold a sample of every family the alert rules and the dashboard name, and a sample with
/// every `label="value"` they select on.
#[tokio::test]
async fn first_scrape_of_a_fresh_bridge_holds_every_metric_deploy_files_use() {
    let dir = tempfile::tempdir().unwrap();
    let id = unique("firstscrape");
    let bridge = BridgeProcess::spawn(&bridge_env(dir.path(), &id, &id.to_uppercase())).await;
    let served = metrics_text(&http_client(), bridge.admin).await;
    drop(bridge);

    // name → the label sets of its samples (`_bucket`/`_sum`/`_count` count for the histogram).
    let mut samples: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for line in served.lines().filter(|l| !l.starts_with('#')) {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line[..name_end];
        let labels = line[name_end..].split(' ').next().unwrap_or("");
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|b| served.contains(&format!("# TYPE {b} histogram")))
            .unwrap_or(name);
        samples.entry(base).or_default().push(labels);
    }

    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut missing = Vec::new();
    for file in [
        "deploy/prometheus/alerts.yml",
        "deploy/grafana/hookbridge.json",
    ] {
        // The dashboard is JSON: its PromQL quotes are escaped.
        let text = std::fs::read_to_string(root.join(file))
            .unwrap()
            .replace("\\\"", "\"");
        for (name, matchers) in selectors(&text) {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|b| samples.contains_key(b)))
                .unwrap_or(&name);
            let Some(sets) = samples.get(base) else {
                missing.push(format!("{file}: {name} has no sample"));
                continue;
            };
            for m in matchers {
                if !sets.iter().any(|s| s.contains(&m)) {
                    missing.push(format!("{file}: no sample of {name}{{{m}}}"));
                }
            }
        }
    }
    missing.sort();
    missing.dedup();
    assert!(
        missing.is_empty(),
        "a fresh bridge's first scrape lacks what deploy files use (pre-create the label \
         values in src/metrics.rs `labels`):\n  {}",
        missing.join("\n  ")
    );
}

/// Every `hookbridge_*` name in `text` with its `label="value"` matchers (`=~`, `!=` and `!~`
/// select nothing in particular and are left out).
fn selectors(text: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for name in metric_tokens(text) {
        let mut matchers = Vec::new();
        let pattern = format!("{name}{{");
        let mut from = 0;
        while let Some(at) = text[from..].find(&pattern) {
            let start = from + at + pattern.len();
            let end = start + text[start..].find('}').unwrap_or(0);
            for m in text[start..end].split(',') {
                let m = m.trim();
                if let Some((k, v)) = m.split_once('=') {
                    if !k.ends_with('!') && !v.starts_with('~') {
                        matchers.push(format!("{}={}", k.trim(), v.trim()));
                    }
                }
            }
            from = end;
        }
        out.push((name, matchers));
    }
    out
}
