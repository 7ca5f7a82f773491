//! Building the broker message for a stored delivery: destination and key from routing, the
//! `webhook-*`/`sessionboard-*`/`hookbridge-*` headers, and the body (wrapped or annotated for
//! CloudEvents).

use crate::cloudevents::CloudEvents;
use crate::delivery::Delivery;
use crate::routing::Router;
use crate::sink::{self, Message};

/// Builds the broker message for a stored delivery. CloudEvents only adds headers or wraps the
/// body: destination and key come from routing alone, in every mode.
pub fn message(router: &Router, ce: &CloudEvents, seq: u64, d: Delivery) -> Message {
    let route = router.route(&d.action);
    let optional = [
        ("sessionboard-action", Some(d.action.as_str())),
        ("sessionboard-resource-id", Some(d.resource_id.as_str())),
        ("sessionboard-org-id", d.org_id.as_deref()),
        ("sessionboard-event-id", d.event_id.as_deref()),
        ("webhook-timestamp", d.timestamp.as_deref()),
    ];
    // Room for every header this function and CloudEvents can add: building one never
    // reallocates.
    let mut headers = Vec::with_capacity(4 + optional.len() + CloudEvents::MAX_HEADERS);
    headers.push(("webhook-id", d.id.clone()));
    headers.push(("content-type", "application/json".to_owned()));
    for (name, value) in optional {
        if let Some(v) = value.and_then(sink::header_safe) {
            headers.push((name, v.to_owned()));
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
    Message {
        seq,
        id: d.id,
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

    #[test]
    fn message_headers_and_key() {
        let router = Router::new("sb.", "unroutable", &Default::default()).unwrap();
        let d = Delivery {
            timestamp: Some("1700000000".into()),
            org_id: Some("org\r\nx".into()),
            event_id: Some("4001".into()),
            ..delivery(b"{}")
        };
        let m = message(&router, &CloudEvents::off(), 7, d);
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
        let router = Router::new("sb.", "unroutable", &Default::default()).unwrap();
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
        let original = message(&router, &CloudEvents::off(), 1, d.clone());
        assert_eq!(header(&original, "hookbridge-copy"), None);
        let copy = Delivery {
            copied: Some(crate::delivery::Copied {
                how: crate::delivery::CopyKind::Requeue,
                at_ms: 1_764_939_600_000,
            }),
            ..d
        };
        let m = message(&router, &CloudEvents::off(), 2, copy);
        assert_eq!(header(&m, "hookbridge-copy").as_deref(), Some("requeue"));
        assert_eq!(
            header(&m, "hookbridge-received-at").as_deref(),
            Some("2025-12-05T12:00:00.123Z")
        );
        assert_eq!(m.payload, original.payload, "the body is unchanged");
    }

    #[test]
    fn cloudevents_never_change_destination_or_key() {
        let router = Router::new("sb.", "unroutable", &Default::default()).unwrap();
        let d = delivery(br#"{"data":{"id":"r-1"}}"#);
        let off = message(&router, &CloudEvents::off(), 1, d.clone());
        for mode in ["binary", "structured"] {
            let toml = format!("[sink]\ncloudevents = \"{mode}\"\n");
            let ce = CloudEvents::from_config(&crate::config::tests::load_str(&toml).unwrap());
            let m = message(&router, &ce, 1, d.clone());
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
            let m = message(&router, &ce, 1, rejected);
            assert_eq!(m.payload, bytes::Bytes::from_static(b"not json"), "{mode}");
        }
    }
}
