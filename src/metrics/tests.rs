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
    assert!(text.contains(r#"hookbridge_dead_lettered_total{reason="retries_exhausted"} 0"#));
    assert!(text.contains(r#"hookbridge_http_requests_total{status="429"} 0"#));
}

#[test]
#[cfg(debug_assertions)]
#[should_panic(expected = "not in metrics::labels")]
fn a_label_value_missing_from_its_table_panics_in_debug_builds() {
    Metrics::new().spool_errors.with_label_values(&["rename"]);
}
