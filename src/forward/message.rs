//! Building the broker message for a stored delivery: destination and key from routing, the
//! `webhook-*`/`sessionboard-*`/`hookbridge-*` headers, and the body (wrapped or annotated for
//! CloudEvents).

use crate::cloudevents::CloudEvents;
use crate::delivery::Delivery;
use crate::endpoint::Endpoint;
use crate::sink::{self, Message};

/// Builds the broker message for a delivery stored through `endpoint`. CloudEvents only adds
/// headers or wraps the body: destination and key come from the endpoint's routing alone, in
/// every mode.
pub fn message(endpoint: &Endpoint, seq: u64, d: Delivery) -> Message {
    let ce: &CloudEvents = &endpoint.cloudevents;
    let route = endpoint.router.route(&d.action);
    let optional = [
        ("sessionboard-action", Some(d.action.as_str())),
        ("sessionboard-resource-id", Some(d.resource_id.as_str())),
        ("sessionboard-org-id", d.org_id.as_deref()),
        ("sessionboard-event-id", d.event_id.as_deref()),
        ("webhook-timestamp", d.timestamp.as_deref()),
    ];
    // Room for every header this function and CloudEvents can add: building one never
    // reallocates.
    let mut headers = Vec::with_capacity(7 + optional.len() + CloudEvents::MAX_HEADERS);
    headers.push(("webhook-id", d.id.clone()));
    headers.push(("content-type", "application/json".to_owned()));
    headers.push(("hookbridge-endpoint", endpoint.name.clone()));
    for (name, value) in optional {
        if let Some(v) = value.and_then(sink::header_safe) {
            headers.push((name, v.to_owned()));
        }
    }
    // The sender's trace context, so a consumer's span can join the sender's trace.
    if let Some(t) = &d.trace {
        headers.push(("traceparent", t.traceparent.clone()));
        if let Some(state) = &t.tracestate {
            headers.push(("tracestate", state.clone()));
        }
    }
    // A copy an operator put back reaches consumers after changes received later: say so, with
    // the time the original was received, so a consumer can keep the newest state.
    if let Some(c) = d.copied {
        headers.push(("hookbridge-copy", c.how.as_str().to_owned()));
        headers.push((
            "hookbridge-received-at",
            crate::clock::rfc3339(d.received_at_ms),
        ));
    }
    // An unusable body is never published (it goes to the dead-letter store as the spool
    // record), and may not even be JSON: it is not wrapped.
    let payload = match d.reject_reason {
        None => ce.apply(&d, &mut headers),
        Some(_) => d.body.clone(),
    };
    let id = if endpoint.name == crate::delivery::DEFAULT_ENDPOINT {
        d.id
    } else {
        format!("{}:{}", endpoint.name, d.id)
    };
    Message {
        seq,
        id,
        destination: route.destination,
        key: d.resource_id,
        headers,
        payload,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `msg_1`, a `session.updated` of resource `r-1` with `body` and nothing optional.
    fn delivery(body: &'static [u8]) -> Delivery {
        Delivery {
            id: "msg_1".into(),
            timestamp: None,
            action: "session.updated".into(),
            resource_id: "r-1".into(),
            org_id: None,
            event_id: None,
            received_at_ms: 0,
            reject_reason: None,
            copied: None,
            endpoint: None,
            trace: None,
            body: bytes::Bytes::from_static(body),
        }
    }

    /// An endpoint named `name` routing to `sb.<action>`, with `ce`.
    fn endpoint(name: &str, ce: CloudEvents) -> Endpoint {
        Endpoint {
            name: name.into(),
            path: "/hooks".into(),
            gate: crate::ingress::auth::Gate::open(),
            router: crate::routing::Router::new("sb.", "unroutable", &Default::default()).unwrap(),
            cloudevents: ce,
        }
    }

    #[test]
    fn every_message_names_its_endpoint() {
        for name in ["default", "sandbox"] {
            let m = message(&endpoint(name, CloudEvents::off()), 1, delivery(b"{}"));
            let value = m.headers.iter().find(|(n, _)| *n == "hookbridge-endpoint");
            assert_eq!(value.map(|(_, v)| v.as_str()), Some(name));
            let id = m.headers.iter().find(|(n, _)| *n == "webhook-id");
            assert_eq!(id.map(|(_, v)| v.as_str()), Some("msg_1"), "as sent");
            let dedup_key = if name == "default" {
                "msg_1"
            } else {
                "sandbox:msg_1"
            };
            assert_eq!(
                m.id, dedup_key,
                "the broker's de-duplication key is per endpoint"
            );
        }
    }

    #[test]
    fn the_senders_trace_context_is_published_as_headers() {
        let d = Delivery {
            trace: Some(crate::delivery::TraceContext {
                traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
                tracestate: Some("rojo=1".into()),
            }),
            ..delivery(b"{}")
        };
        let m = message(&endpoint("default", CloudEvents::off()), 1, d);
        let header = |name: &str| {
            m.headers
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(
            header("traceparent"),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        );
        assert_eq!(header("tracestate"), Some("rojo=1"));
        let untraced = message(&endpoint("default", CloudEvents::off()), 1, delivery(b"{}"));
        assert!(!untraced.headers.iter().any(|(n, _)| n.starts_with("trace")));
    }

    #[test]
    fn message_headers_and_key() {
        let d = Delivery {
            timestamp: Some("1700000000".into()),
            org_id: Some("org\r\nx".into()),
            event_id: Some("4001".into()),
            ..delivery(b"{}")
        };
        let m = message(&endpoint("default", CloudEvents::off()), 7, d);
        assert_eq!(m.destination, "sb.session.updated");
        assert_eq!(m.key, "r-1");
        let names: Vec<_> = m.headers.iter().map(|(n, _)| *n).collect();
        assert!(names.contains(&"sessionboard-event-id"));
        assert!(
            !names.contains(&"sessionboard-org-id"),
            "unsafe value must be dropped"
        );
        assert_eq!(m.payload, bytes::Bytes::from_static(b"{}"));
    }

    #[test]
    fn a_copy_says_so_with_the_original_receive_time() {
        let d = Delivery {
            received_at_ms: 1_764_936_000_123,
            ..delivery(b"{}")
        };
        let header = |m: &Message, name: &str| {
            m.headers
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.clone())
        };
        let original = message(&endpoint("default", CloudEvents::off()), 1, d.clone());
        assert_eq!(header(&original, "hookbridge-copy"), None);
        let copy = Delivery {
            copied: Some(crate::delivery::Copied {
                how: crate::delivery::CopyKind::Requeue,
                at_ms: 1_764_939_600_000,
            }),
            ..d
        };
        let m = message(&endpoint("default", CloudEvents::off()), 2, copy);
        assert_eq!(header(&m, "hookbridge-copy").as_deref(), Some("requeue"));
        assert_eq!(
            header(&m, "hookbridge-received-at").as_deref(),
            Some("2025-12-05T12:00:00.123Z")
        );
        assert_eq!(m.payload, original.payload, "the body is unchanged");
    }

    #[test]
    fn cloudevents_never_change_destination_or_key() {
        let d = delivery(br#"{"data":{"id":"r-1"}}"#);
        let off = message(&endpoint("default", CloudEvents::off()), 1, d.clone());
        for mode in ["binary", "structured"] {
            let toml = format!("[sink]\ncloudevents = \"{mode}\"\n");
            let ce = CloudEvents::from_config(&crate::config::tests::load_str(&toml).unwrap());
            let m = message(&endpoint("default", ce.clone()), 1, d.clone());
            assert_eq!(
                (&m.destination, &m.key, &m.id),
                (&off.destination, &off.key, &off.id)
            );
            let rejected = Delivery {
                reject_reason: Some("invalid_json".into()),
                copied: None,
                body: bytes::Bytes::from_static(b"not json"),
                ..d.clone()
            };
            let m = message(&endpoint("default", ce.clone()), 1, rejected);
            assert_eq!(m.payload, bytes::Bytes::from_static(b"not json"), "{mode}");
        }
    }
}
