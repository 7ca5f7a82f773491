//! `spool inspect`: the records themselves, filtered, one JSON line each.

use std::io::Write;
use std::ops::ControlFlow;

use bytes::Bytes;
use serde::Serialize;

use super::{survey, Error};
use crate::clock::rfc3339;
use crate::config::Config;
use crate::delivery::Delivery;
use crate::spool::inspect;

pub(super) struct Filter {
    pub(super) action: Option<String>,
    pub(super) since_ms: Option<u64>,
    pub(super) limit: Option<u64>,
    pub(super) all: bool,
}

#[derive(Serialize)]
pub(super) struct RecordJson<'a> {
    seq: u64,
    appended_at: String,
    confirmed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    action: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resource_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    org_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    event_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    received_at: Option<String>,
    /// Only for a record of an endpoint other than the default one (delivery record V4).
    #[serde(skip_serializing_if = "Option::is_none")]
    endpoint: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    traceparent: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tracestate: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

pub(super) fn inspect_records(
    config: &Config,
    f: &Filter,
    out: &mut dyn Write,
) -> Result<u8, Error> {
    let mut printed = 0u64;
    let mut write_err = None;
    if f.limit == Some(0) {
        return Ok(0);
    }
    let s = survey(config, &mut |r| {
        if (r.confirmed && !f.all) || f.since_ms.is_some_and(|t| r.appended_at_ms < t) {
            return ControlFlow::Continue(());
        }
        let delivery = Delivery::decode(Bytes::copy_from_slice(r.payload));
        if let Some(want) = &f.action {
            if delivery.as_ref().map_or(true, |d| &d.action != want) {
                return ControlFlow::Continue(());
            }
        }
        if let Err(e) = writeln!(out, "{}", record_line(r, &delivery)) {
            write_err = Some(e);
            return ControlFlow::Break(());
        }
        printed += 1;
        if f.limit.is_some_and(|l| printed >= l) {
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    })?;
    if let Some(e) = write_err {
        return Err(Error::Output(e));
    }
    let damage = s.damage().count();
    if damage > 0 {
        eprintln!(
            "note: the scan skipped {damage} damaged region(s) or file(s); run `hookbridge spool verify`"
        );
    }
    Ok(0)
}

/// One JSON line. The body is embedded as JSON when it parses (whitespace removed, so the line
/// stays one line; keys, order and number spelling kept as sent), else as a string.
pub(super) fn record_line(
    r: &inspect::RecordView<'_>,
    delivery: &Result<Delivery, crate::delivery::DecodeError>,
) -> String {
    let mut j = RecordJson {
        seq: r.seq,
        appended_at: rfc3339(r.appended_at_ms),
        confirmed: r.confirmed,
        id: None,
        action: None,
        resource_id: None,
        org_id: None,
        event_id: None,
        received_at: None,
        endpoint: None,
        traceparent: None,
        tracestate: None,
        error: None,
    };
    let body = match delivery {
        Ok(d) => {
            j.id = Some(&d.id);
            j.action = Some(&d.action);
            j.resource_id = Some(&d.resource_id);
            j.org_id = d.org_id.as_deref();
            j.event_id = d.event_id.as_deref();
            j.received_at = Some(rfc3339(d.received_at_ms));
            j.endpoint = d.endpoint.as_deref();
            j.traceparent = d.trace.as_ref().map(|t| t.traceparent.as_str());
            j.tracestate = d.trace.as_ref().and_then(|t| t.tracestate.as_deref());
            Some(body_json(&d.body))
        }
        Err(e) => {
            j.error = Some(format!("payload is not a delivery record: {e}"));
            None
        }
    };
    let mut line = serde_json::to_string(&j).expect("record serializes");
    if let Some(body) = body {
        line.pop(); // the closing brace
        line.push_str(",\"body\":");
        line.push_str(&body);
        line.push('}');
    }
    line
}

pub(super) fn body_json(body: &[u8]) -> String {
    if serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok() {
        // Valid JSON, hence valid UTF-8.
        minify(std::str::from_utf8(body).expect("JSON is UTF-8"))
    } else {
        serde_json::to_string(&String::from_utf8_lossy(body)).expect("string serializes")
    }
}

/// Drops insignificant whitespace from valid JSON.
pub(super) fn minify(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let (mut in_str, mut escaped) = (false, false);
    for c in json.chars() {
        if in_str {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_str = false;
            }
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            in_str = c == '"';
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::now_ms;

    #[test]
    fn minify_keeps_strings_and_order() {
        assert_eq!(
            minify("{\n  \"b\": 1.50,\n  \"a\": \"x y\\\" z\",\n  \"c\": [ 1 , 2 ]\n}"),
            "{\"b\":1.50,\"a\":\"x y\\\" z\",\"c\":[1,2]}"
        );
        assert_eq!(body_json(b"not json"), "\"not json\"");
    }

    #[test]
    fn since_accepts_rfc3339_and_durations() {
        let parse_since = |s| crate::repair::parse_time("--since", s);
        assert_eq!(parse_since("1970-01-01T00:00:01Z").unwrap(), 1000);
        let t = parse_since("15m").unwrap();
        let expect = now_ms() - 15 * 60 * 1000;
        assert!(t.abs_diff(expect) < 5000);
        assert!(matches!(
            parse_since("yesterday"),
            Err(crate::repair::Error::Usage(_))
        ));
    }
}
