use super::*;

#[test]
fn every_family_has_a_sample_from_the_start() {
    let m = Metrics::new();
    m.start_sink("nats", false);
    let text = m.render();
    for name in m.metric_names() {
        assert!(
            text.lines()
                .any(|l| !l.starts_with('#') && l.starts_with(&name)),
            "{name} has no sample on a fresh registry"
        );
    }
    assert!(text.contains(r#"hookbridge_broker_up{sink="nats"} 1"#));
    assert!(
        !text.contains(r#"sink="kafka""#),
        "only the configured sink's series"
    );
    assert!(text.contains(
        r#"hookbridge_dead_lettered_total{endpoint="default",reason="retries_exhausted"} 0"#
    ));
    assert!(text.contains(r#"hookbridge_http_requests_total{status="429"} 0"#));
}

#[test]
#[cfg(debug_assertions)]
#[should_panic(expected = "not in metrics::labels")]
fn a_label_value_missing_from_its_table_panics_in_debug_builds() {
    Metrics::new().spool_errors.with_label_values(&["rename"]);
}

#[test]
fn every_configured_endpoint_has_its_series_and_only_those() {
    let m = Metrics::for_endpoints(&["default".into(), "sandbox".into()]);
    m.start_sink("kafka", false);
    let text = m.render();
    for series in [
        r#"hookbridge_deliveries_accepted_total{action="session.updated",endpoint="sandbox"} 0"#,
        r#"hookbridge_deliveries_rejected_total{endpoint="sandbox",reason="no_matching_signature"} 0"#,
        r#"hookbridge_published_total{action="session.updated",endpoint="sandbox",sink="kafka"} 0"#,
        r#"hookbridge_dead_lettered_total{endpoint="none",reason="unknown_endpoint"} 0"#,
    ] {
        assert!(text.contains(series), "{series}");
    }
    assert_eq!(m.endpoint_label(None), "default");
    assert_eq!(m.endpoint_label(Some("sandbox")), "sandbox");
    assert_eq!(m.endpoint_label(Some("removed")), labels::NO_ENDPOINT);
    assert!(!text.contains(r#"endpoint="removed""#));
}
