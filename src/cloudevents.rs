//! CloudEvents 1.0 on the wire (`sink.cloudevents`): the attributes of a stored delivery, and how
//! they ride on a message in binary or structured content mode. Pure functions: no I/O, no clock.
//!
//! - **binary**: the body stays the sender's bytes; the attributes are headers, `ce_` on Kafka
//!   (Kafka protocol binding) and `ce-` on NATS; `datacontenttype` is the `content-type` header.
//! - **structured**: the body is one `application/cloudevents+json` event. Its `data` member is
//!   the sender's body spliced in byte for byte (the ingress checked it is one JSON document), never
//!   parsed and re-serialized; the attribute strings around it are escaped by serde_json.
//!
//! Every attribute comes from what the sender sent, never from our clock: `time` is
//! `metadata.datetime` only when that is a valid RFC 3339 timestamp, and is left out otherwise.

use bytes::Bytes;

use crate::config::{CloudEventsMode, Config, SinkKind, ORG_ID_PLACEHOLDER};
use crate::delivery::Delivery;
use crate::ingress::envelope;
use crate::routing::is_valid_action;
use crate::sink::header_safe;

/// The media type of a structured-mode message (the JSON event format).
pub const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json; charset=UTF-8";

/// The `type` suffix of a delivery whose action is not a routable token (the same word as the
/// routing suffix for those deliveries); the action itself is still in the body.
const UNROUTABLE_TYPE: &str = "unroutable";

/// Header names per protocol binding: specversion, id, source, type, subject, time.
type Names = [&'static str; 6];
const NATS_NAMES: Names = [
    "ce-specversion",
    "ce-id",
    "ce-source",
    "ce-type",
    "ce-subject",
    "ce-time",
];
const KAFKA_NAMES: Names = [
    "ce_specversion",
    "ce_id",
    "ce_source",
    "ce_type",
    "ce_subject",
    "ce_time",
];

/// The configured encoding, built once from a validated configuration.
#[derive(Debug, Clone)]
pub struct CloudEvents {
    mode: CloudEventsMode,
    source: String,
    source_fallback: String,
    type_prefix: String,
    names: &'static Names,
}

/// One event's context attributes (`datacontenttype` is always `application/json`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attributes {
    pub id: String,
    pub source: String,
    pub ty: String,
    /// `data.id`.
    pub subject: String,
    /// `metadata.datetime`, when it is RFC 3339.
    pub time: Option<String>,
}

impl CloudEvents {
    /// The most headers [`CloudEvents::apply`] adds to a message (binary mode: one per name).
    pub const MAX_HEADERS: usize = NATS_NAMES.len();

    /// From a configuration that passed `validate()`.
    pub fn from_config(c: &Config) -> CloudEvents {
        CloudEvents {
            mode: c.sink.cloudevents,
            source: c.sink.cloudevents_source.clone(),
            source_fallback: c.sink.cloudevents_source_fallback.clone(),
            type_prefix: c.sink.cloudevents_type_prefix.clone(),
            names: header_names(c.sink.kind),
        }
    }

    /// The same, with an endpoint's `source` template and fallback
    /// (`config::Endpoint::cloudevents_sources`).
    pub fn with_sources(self, source: String, source_fallback: String) -> CloudEvents {
        CloudEvents {
            source,
            source_fallback,
            ..self
        }
    }

    /// No CloudEvents: messages as before `sink.cloudevents` existed.
    pub fn off() -> CloudEvents {
        CloudEvents::from_config(&Config::default())
    }

    pub fn mode(&self) -> CloudEventsMode {
        self.mode
    }

    /// The attributes of a stored delivery.
    pub fn attributes(&self, d: &Delivery) -> Attributes {
        let source = match &d.org_id {
            Some(org) => self
                .source
                .replace(ORG_ID_PLACEHOLDER, &percent_encode(org)),
            None => self.source_fallback.clone(),
        };
        let action = if is_valid_action(&d.action) {
            d.action.as_str()
        } else {
            UNROUTABLE_TYPE
        };
        Attributes {
            id: d.id.clone(),
            source,
            ty: format!("{}{action}", self.type_prefix),
            subject: d.resource_id.clone(),
            time: envelope::metadata_datetime(&d.body).filter(|t| is_rfc3339(t)),
        }
    }

    /// Adds the attributes to a message built for `d` (headers already holding `content-type`),
    /// and returns the payload to publish: `d.body` itself, or the structured event around it.
    pub fn apply(&self, d: &Delivery, headers: &mut Vec<(&'static str, String)>) -> Bytes {
        match self.mode {
            CloudEventsMode::Off => d.body.clone(),
            CloudEventsMode::Binary => {
                let a = self.attributes(d);
                let [specversion, id, source, ty, subject, time] = *self.names;
                headers.push((specversion, "1.0".to_owned()));
                // The required attributes are header-safe by construction (the delivery id is a
                // header already, the source is percent-encoded, the type a checked token), but
                // a header is never written from a value that is not.
                for (name, value) in [
                    (id, Some(a.id)),
                    (source, Some(a.source)),
                    (ty, Some(a.ty)),
                    (subject, Some(a.subject)),
                    (time, a.time),
                ] {
                    if let Some(v) = value.filter(|v| header_safe(v).is_some()) {
                        headers.push((name, v));
                    }
                }
                d.body.clone()
            }
            CloudEventsMode::Structured => {
                for h in headers.iter_mut().filter(|(n, _)| *n == "content-type") {
                    h.1 = STRUCTURED_CONTENT_TYPE.to_owned();
                }
                structured(&self.attributes(d), &d.body)
            }
        }
    }
}

/// `ce-` for NATS, `ce_` for Kafka.
pub fn header_names(kind: SinkKind) -> &'static Names {
    match kind {
        SinkKind::Nats => &NATS_NAMES,
        SinkKind::Kafka => &KAFKA_NAMES,
    }
}

/// The JSON event format around `data`, which must be one JSON document (it is spliced in).
pub fn structured(a: &Attributes, data: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(data.len() + 256);
    out.extend_from_slice(br#"{"specversion":"1.0""#);
    let mut member = |name: &str, value: &str| {
        out.extend_from_slice(b",\"");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\":");
        // A `&str` always serializes; this is the escaping of every attribute string.
        out.extend_from_slice(&serde_json::to_vec(value).unwrap_or_default());
    };
    member("id", &a.id);
    member("source", &a.source);
    member("type", &a.ty);
    member("subject", &a.subject);
    if let Some(t) = &a.time {
        member("time", t);
    }
    member("datacontenttype", "application/json");
    out.extend_from_slice(br#","data":"#);
    out.extend_from_slice(data);
    out.push(b'}');
    Bytes::from(out)
}

/// Everything but RFC 3986 unreserved characters as `%XX` (UTF-8 bytes).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// RFC 3339 `date-time` (section 5.6): `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`, with real
/// calendar days and a leap second allowed. Nothing is guessed: anything else is not a time.
pub fn is_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Option<u32> {
        let part = b.get(from..from + len)?;
        part.iter()
            .all(u8::is_ascii_digit)
            .then(|| part.iter().fold(0, |n, d| n * 10 + u32::from(d - b'0')))
    };
    let (Some(year), Some(month), Some(day), Some(hour), Some(min), Some(sec)) = (
        num(0, 4),
        num(5, 2),
        num(8, 2),
        num(11, 2),
        num(14, 2),
        num(17, 2),
    ) else {
        return false;
    };
    if b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') || b[13] != b':' {
        return false;
    }
    if b[16] != b':' {
        return false;
    }
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    if day == 0 || day > days || hour > 23 || min > 59 || sec > 60 {
        return false;
    }
    let mut rest = &b[19..];
    if let Some(frac) = rest.strip_prefix(b".") {
        let digits = frac.iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return false;
        }
        rest = &frac[digits..];
    }
    match rest {
        [b'Z' | b'z'] => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => {
            let all = [h1, h2, m1, m2].iter().all(|c| c.is_ascii_digit());
            all && (h1 - b'0') * 10 + (h2 - b'0') <= 23 && (m1 - b'0') * 10 + (m2 - b'0') <= 59
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(body: &'static [u8], org: Option<&str>, action: &str) -> Delivery {
        Delivery {
            id: "msg_1".into(),
            timestamp: None,
            action: action.into(),
            resource_id: "r-\"1\"".into(),
            org_id: org.map(Into::into),
            event_id: None,
            received_at_ms: 0,
            reject_reason: None,
            copied: None,
            endpoint: None,
            trace: None,
            body: Bytes::from_static(body),
        }
    }

    fn with(mode: &str, kind: &str) -> CloudEvents {
        let toml = format!("[sink]\nkind = \"{kind}\"\ncloudevents = \"{mode}\"\n");
        CloudEvents::from_config(&crate::config::tests::load_str(&toml).unwrap())
    }

    #[test]
    fn rfc3339() {
        for ok in [
            "2026-04-28T16:00:00Z",
            "2026-04-28t16:00:00.123456z",
            "2024-02-29T23:59:60+01:00",
            "2026-04-28T16:00:00-05:30",
        ] {
            assert!(is_rfc3339(ok), "{ok}");
        }
        for bad in [
            "",
            "2026-04-28",
            "2026-04-28 16:00:00Z",
            "2026-04-28T16:00:00",
            "2026-04-28T16:00:00+0100",
            "2023-02-29T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-04-31T00:00:00Z",
            "2026-04-28T24:00:00Z",
            "2026-04-28T16:00:00.Z",
            "2026-04-28T16:00:00Z ",
            "1714320000",
            "2026-04-28T16:00:00+24:00",
        ] {
            assert!(!is_rfc3339(bad), "{bad}");
        }
    }

    #[test]
    fn attributes_from_the_delivery() {
        let ce = with("binary", "nats");
        let body = br#"{"metadata":{"action":"session.updated","datetime":"2026-04-28T16:00:00Z"},"data":{"id":"r"}}"#;
        let a = ce.attributes(&delivery(body, Some("org 1/é"), "session.updated"));
        assert_eq!(a.source, "/sessionboard/orgs/org%201%2F%C3%A9");
        assert_eq!(a.ty, "com.sessionboard.session.updated");
        assert_eq!(a.time.as_deref(), Some("2026-04-28T16:00:00Z"));
        let a = ce.attributes(&delivery(
            br#"{"metadata":{"datetime":"yesterday"}}"#,
            None,
            "Bad Action",
        ));
        assert_eq!(a.source, "/sessionboard");
        assert_eq!(a.ty, "com.sessionboard.unroutable");
        assert_eq!(a.time, None, "a time that is not RFC 3339 is left out");
    }

    #[test]
    fn binary_headers_per_binding() {
        let d = delivery(br#"{"data":{"id":1}}"#, Some("o"), "contact.created");
        for (kind, prefix) in [("nats", "ce-"), ("kafka", "ce_")] {
            let mut headers = vec![("content-type", "application/json".to_owned())];
            let body = with("binary", kind).apply(&d, &mut headers);
            assert_eq!(body, d.body, "binary mode keeps the body");
            let names: Vec<_> = headers.iter().map(|(n, _)| *n).collect();
            for attr in ["specversion", "id", "source", "type", "subject"] {
                assert!(
                    names.contains(&format!("{prefix}{attr}").as_str()),
                    "{names:?}"
                );
            }
            assert!(
                !names.iter().any(|n| n.ends_with("time")),
                "no datetime, no time"
            );
            assert_eq!(headers[0].1, "application/json");
        }
    }

    #[test]
    fn structured_embeds_the_body_verbatim() {
        let body =
            b"{ \"data\" : {\"id\":1.50}, \"metadata\":{\"datetime\":\"2026-04-28T16:00:00Z\"} }";
        let d = delivery(body, Some("o\"x"), "contact.created");
        let mut headers = vec![("content-type", "application/json".to_owned())];
        let out = with("structured", "kafka").apply(&d, &mut headers);
        assert_eq!(headers[0].1, STRUCTURED_CONTENT_TYPE);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["specversion"], "1.0");
        assert_eq!(v["subject"], "r-\"1\"");
        assert_eq!(v["source"], "/sessionboard/orgs/o%22x");
        assert_eq!(v["time"], "2026-04-28T16:00:00Z");
        assert_eq!(v["datacontenttype"], "application/json");
        let needle = [&b"\"data\":"[..], body].concat();
        assert!(out.windows(needle.len()).any(|w| w == needle));
    }

    #[test]
    fn off_changes_nothing() {
        let d = delivery(b"{}", None, "a");
        let mut headers = vec![("content-type", "application/json".to_owned())];
        assert_eq!(CloudEvents::off().apply(&d, &mut headers), d.body);
        assert_eq!(headers.len(), 1);
    }
}
