//! One accepted delivery and its encoding as a spool record payload.
//!
//! The spool stores opaque bytes; this module owns what those bytes mean. The body is carried
//! byte-exact; the few fields hookbridge needs to route and label a message are extracted once at
//! ingress and stored beside it, so the forwarder never parses JSON.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Record payload format versions. Bump it when the layout below changes, and keep decoding the
/// old ones: a spool written by an older hookbridge must replay after an upgrade.
const FORMAT_V1: u8 = 1;
/// V1 plus `reject_reason` (authentic bodies kept for the dead-letter store).
const FORMAT_V2: u8 = 2;
/// V2 plus `copied` (a copy put back by `spool replay` / `dead-letter requeue`). Written only for
/// copies: every record the ingress writes stays V2, readable by the versions before this one.
const FORMAT_V3: u8 = 3;
/// V3 with the copy fields always present (kind 0 = not a copy), plus `endpoint` and `trace`.
/// Written only when `endpoint` or `trace` is set: a record of the default endpoint without
/// trace context stays V2 (V3 for a copy), byte for byte what earlier releases wrote. The spool
/// keeps V4 records only in segments of format version 2, which a release that cannot decode V4
/// refuses to open (`spool::format`).
const FORMAT_V4: u8 = 4;

/// The endpoint a record with `endpoint: None` came through.
pub const DEFAULT_ENDPOINT: &str = "default";

/// Marks an absent optional string in the encoding.
const NONE_LEN: u16 = u16::MAX;

/// Longest value kept for a metadata field (id, timestamp, action, org, event). Longer values
/// are rejected at ingress (ids) or routed to the dead letter and cut here (actions).
pub const MAX_FIELD_LEN: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The sender's delivery id (`webhook-id` / `svix-id`), or `sha256:<hex>` of the body when
    /// the sender gave none. Stable across the sender's retries, so brokers can de-duplicate.
    pub id: String,
    /// The sender's `webhook-timestamp` / `svix-timestamp` header, as sent.
    pub timestamp: Option<String>,
    /// `metadata.action`, as sent (cut to [`MAX_FIELD_LEN`] bytes); may be unroutable.
    pub action: String,
    /// `data.id` as a string (numbers in their JSON spelling): the ordering key.
    pub resource_id: String,
    /// `metadata.org_id`, when present and not null.
    pub org_id: Option<String>,
    /// `metadata.event_id`, when present and not null.
    pub event_id: Option<String>,
    /// When hookbridge received it, ms since the Unix epoch.
    pub received_at_ms: u64,
    /// Set when the body came from the authenticated sender but cannot be routed (not JSON, no
    /// action, no `data.id`): the record is kept, and the forwarder moves it to the dead-letter
    /// store with this reason instead of publishing it.
    pub reject_reason: Option<String>,
    /// Set on a copy an operator put back into the spool: it is published after records that
    /// were received later, so its messages say so (`hookbridge-copy`, `hookbridge-received-at`).
    pub copied: Option<Copied>,
    /// The endpoint (webhook sender) the delivery came through; `None` is the endpoint named
    /// [`DEFAULT_ENDPOINT`]: every record written before endpoints existed, and every delivery
    /// through the default endpoint. Use `None`, not `Some("default")`, for it: only then does
    /// the record keep the older encoding (see `FORMAT_V4`).
    pub endpoint: Option<String>,
    /// W3C trace context the delivery came with, if any.
    pub trace: Option<TraceContext>,
    /// The request body exactly as received.
    pub body: Bytes,
}

/// W3C trace context (`traceparent`, `tracestate`), stored as received. Like every metadata
/// field (and `endpoint`), each is cut to [`MAX_FIELD_LEN`] bytes when encoded; whoever fills
/// them checks their shape first (a valid `traceparent` is 55 bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    pub traceparent: String,
    pub tracestate: Option<String>,
}

/// Longest `tracestate` carried (W3C Trace Context: 32 list members of at most 256 bytes are
/// allowed, but a platform should propagate at least 512 characters; longer ones are dropped).
pub const MAX_TRACESTATE_LEN: usize = 512;

impl TraceContext {
    /// The context a request's `traceparent` and `tracestate` header values carry, if the
    /// `traceparent` is a valid W3C Trace Context version-00 value (`00-<32 hex trace id>-<16 hex
    /// parent id>-<2 hex flags>`, lower case, ids not all zero). A missing or invalid one gives
    /// `None` (the delivery is taken all the same: tracing is never a reason to refuse it). A
    /// `tracestate` is kept only beside a valid `traceparent`, and only if it is at most
    /// [`MAX_TRACESTATE_LEN`] visible ASCII characters.
    pub fn from_headers(traceparent: Option<&str>, tracestate: Option<&str>) -> Option<Self> {
        let tp = traceparent?.trim();
        let hex = |s: &str| {
            s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        let nonzero = |s: &str| s.bytes().any(|b| b != b'0');
        // `00-<32 trace>-<16 parent>-<2 flags>`: 55 bytes, every field at a fixed offset.
        let field = |at: usize, n: usize| tp.get(at..at + n).unwrap_or("");
        let (trace, parent, flags) = (field(3, 32), field(36, 16), field(53, 2));
        let valid = tp.len() == 55
            && field(0, 3) == "00-"
            && field(35, 1) == "-"
            && field(52, 1) == "-"
            && hex(trace)
            && nonzero(trace)
            && hex(parent)
            && nonzero(parent)
            && hex(flags);
        if !valid {
            return None;
        }
        let tracestate = tracestate.map(str::trim).filter(|s| {
            !s.is_empty()
                && s.len() <= MAX_TRACESTATE_LEN
                && s.bytes().all(|b| (0x20..0x7f).contains(&b))
        });
        Some(TraceContext {
            traceparent: tp.to_owned(),
            tracestate: tracestate.map(str::to_owned),
        })
    }
}

/// How and when a record was copied back into the spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Copied {
    pub how: CopyKind,
    /// When the copy was appended, ms since the Unix epoch.
    pub at_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyKind {
    /// `hookbridge spool replay`: a copy of a confirmed (retained) record or of a dead letter.
    Replay,
    /// `hookbridge spool dead-letter requeue`: a dead letter put back.
    Requeue,
}

impl CopyKind {
    /// The `hookbridge-copy` header value.
    pub fn as_str(self) -> &'static str {
        match self {
            CopyKind::Replay => "replay",
            CopyKind::Requeue => "requeue",
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The payload was written by a newer (or unknown) format.
    #[error("unknown delivery record version {0}")]
    Version(u8),
    /// The payload ends before its fields do, or a field is not UTF-8. The spool's CRC makes this
    /// a bug rather than disk damage.
    #[error("malformed delivery record: {0}")]
    Malformed(&'static str),
}

impl Delivery {
    /// The endpoint's name: [`DEFAULT_ENDPOINT`] when `endpoint` is `None`.
    pub fn endpoint_name(&self) -> &str {
        self.endpoint.as_deref().unwrap_or(DEFAULT_ENDPOINT)
    }

    // Layout, do not reorder (FORMAT_V4):
    //   u8 version | str id | opt_str timestamp | str action | str resource_id
    //   | opt_str org_id | opt_str event_id | u64 received_at_ms | opt_str reject_reason
    //   | [V3, V4: u8 copy kind | u64 copied_at_ms]
    //   | [V4: opt_str endpoint | opt_str traceparent | opt_str tracestate]
    //   | u32 body_len | body
    // Copy kind: 1 replay, 2 requeue; V4 only: 0 = not a copy, with copied_at_ms 0.
    // FORMAT_V4 is written when `endpoint` or `trace` is Some; otherwise FORMAT_V3 when `copied`
    // is Some, else FORMAT_V2 (V3 without the copy fields). FORMAT_V1 is V2 without
    // reject_reason. A tracestate is present only with a traceparent.
    // str = u16 len + UTF-8 bytes; opt_str = str, or u16::MAX for none. Little-endian.
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(self.body.len() + 64 + self.id.len());
        let version = if self.endpoint.is_some() || self.trace.is_some() {
            FORMAT_V4
        } else if self.copied.is_some() {
            FORMAT_V3
        } else {
            FORMAT_V2
        };
        b.put_u8(version);
        put_str(&mut b, Some(&self.id));
        put_str(&mut b, self.timestamp.as_deref());
        put_str(&mut b, Some(&self.action));
        put_str(&mut b, Some(&self.resource_id));
        put_str(&mut b, self.org_id.as_deref());
        put_str(&mut b, self.event_id.as_deref());
        b.put_u64_le(self.received_at_ms);
        put_str(&mut b, self.reject_reason.as_deref());
        match self.copied {
            Some(c) => {
                b.put_u8(match c.how {
                    CopyKind::Replay => 1,
                    CopyKind::Requeue => 2,
                });
                b.put_u64_le(c.at_ms);
            }
            None if version == FORMAT_V4 => {
                b.put_u8(0);
                b.put_u64_le(0);
            }
            None => {}
        }
        if version == FORMAT_V4 {
            put_str(&mut b, self.endpoint.as_deref());
            put_str(&mut b, self.trace.as_ref().map(|t| t.traceparent.as_str()));
            put_str(
                &mut b,
                self.trace.as_ref().and_then(|t| t.tracestate.as_deref()),
            );
        }
        b.put_u32_le(self.body.len() as u32);
        b.put_slice(&self.body);
        b.freeze()
    }

    pub fn decode(mut p: Bytes) -> Result<Delivery, DecodeError> {
        if p.is_empty() {
            return Err(DecodeError::Malformed("empty"));
        }
        let v = p.get_u8();
        if !(FORMAT_V1..=FORMAT_V4).contains(&v) {
            return Err(DecodeError::Version(v));
        }
        let id = get_str(&mut p)?.ok_or(DecodeError::Malformed("id"))?;
        let timestamp = get_str(&mut p)?;
        let action = get_str(&mut p)?.ok_or(DecodeError::Malformed("action"))?;
        let resource_id = get_str(&mut p)?.ok_or(DecodeError::Malformed("resource id"))?;
        let org_id = get_str(&mut p)?;
        let event_id = get_str(&mut p)?;
        if p.remaining() < 8 {
            return Err(DecodeError::Malformed("truncated"));
        }
        let received_at_ms = p.get_u64_le();
        let reject_reason = if v >= FORMAT_V2 {
            get_str(&mut p)?
        } else {
            None
        };
        let copied = if v >= FORMAT_V3 {
            if p.remaining() < 9 {
                return Err(DecodeError::Malformed("truncated"));
            }
            let how = match (p.get_u8(), v) {
                (0, FORMAT_V4) => None,
                (1, _) => Some(CopyKind::Replay),
                (2, _) => Some(CopyKind::Requeue),
                _ => return Err(DecodeError::Malformed("copy kind")),
            };
            let at_ms = p.get_u64_le();
            how.map(|how| Copied { how, at_ms })
        } else {
            None
        };
        let (endpoint, trace) = if v >= FORMAT_V4 {
            let endpoint = get_bounded_str(&mut p, "endpoint")?;
            let traceparent = get_bounded_str(&mut p, "traceparent")?;
            let tracestate = get_bounded_str(&mut p, "tracestate")?;
            let trace = match (traceparent, tracestate) {
                (Some(traceparent), tracestate) => Some(TraceContext {
                    traceparent,
                    tracestate,
                }),
                (None, None) => None,
                (None, Some(_)) => return Err(DecodeError::Malformed("tracestate")),
            };
            (endpoint, trace)
        } else {
            (None, None)
        };
        if p.remaining() < 4 {
            return Err(DecodeError::Malformed("truncated"));
        }
        let len = p.get_u32_le() as usize;
        if p.remaining() != len {
            return Err(DecodeError::Malformed("body length"));
        }
        Ok(Delivery {
            id,
            timestamp,
            action,
            resource_id,
            org_id,
            event_id,
            received_at_ms,
            reject_reason,
            copied,
            endpoint,
            trace,
            body: p,
        })
    }
}

/// The fixed metric label for a stored `reject_reason` (the ingress's JSON error code), so the
/// label set stays bounded whatever a record holds.
pub fn reject_label(reason: &str) -> &'static str {
    match reason {
        "invalid_json" => "invalid_json",
        "missing_action" => "missing_action",
        _ => "missing_data_id",
    }
}

/// Cuts `s` to at most [`MAX_FIELD_LEN`] bytes on a character boundary.
pub fn clip(s: &str) -> &str {
    if s.len() <= MAX_FIELD_LEN {
        return s;
    }
    let mut end = MAX_FIELD_LEN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn put_str(b: &mut BytesMut, s: Option<&str>) {
    match s {
        None => b.put_u16_le(NONE_LEN),
        Some(s) => {
            let s = clip(s);
            b.put_u16_le(s.len() as u16);
            b.put_slice(s.as_bytes());
        }
    }
}

/// [`get_str`] for a field that `put_str` clips to [`MAX_FIELD_LEN`]: anything longer was not
/// written by us.
fn get_bounded_str(p: &mut Bytes, what: &'static str) -> Result<Option<String>, DecodeError> {
    match get_str(p)? {
        Some(s) if s.len() > MAX_FIELD_LEN => Err(DecodeError::Malformed(what)),
        s => Ok(s),
    }
}

fn get_str(p: &mut Bytes) -> Result<Option<String>, DecodeError> {
    if p.remaining() < 2 {
        return Err(DecodeError::Malformed("truncated"));
    }
    let len = p.get_u16_le();
    if len == NONE_LEN {
        return Ok(None);
    }
    let len = len as usize;
    if p.remaining() < len {
        return Err(DecodeError::Malformed("truncated"));
    }
    let s = p.split_to(len);
    String::from_utf8(s.to_vec())
        .map(Some)
        .map_err(|_| DecodeError::Malformed("utf-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_context_from_headers() {
        const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let ctx = TraceContext::from_headers(Some(TP), Some("rojo=00f067aa0ba902b7")).unwrap();
        assert_eq!(ctx.traceparent, TP);
        assert_eq!(ctx.tracestate.as_deref(), Some("rojo=00f067aa0ba902b7"));
        let long = "a=".to_owned() + &"x".repeat(MAX_TRACESTATE_LEN);
        assert_eq!(
            TraceContext::from_headers(Some(TP), Some(&long))
                .unwrap()
                .tracestate,
            None
        );
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
        ] {
            assert_eq!(
                TraceContext::from_headers(Some(bad), Some("a=b")),
                None,
                "{bad}"
            );
        }
        assert_eq!(TraceContext::from_headers(None, Some("a=b")), None);
    }

    fn sample() -> Delivery {
        Delivery {
            id: "msg_2a".into(),
            timestamp: Some("1614265330".into()),
            action: "session.updated".into(),
            resource_id: "0fd630f1".into(),
            org_id: Some("757e8d5b".into()),
            event_id: None,
            received_at_ms: 1_700_000_000_123,
            reject_reason: None,
            copied: None,
            endpoint: None,
            trace: None,
            body: Bytes::from_static("{\"data\":{\"id\":\"é☕\"}}".as_bytes()),
        }
    }

    #[test]
    fn a_copy_round_trips_as_v3_and_an_original_stays_v2() {
        let d = sample();
        assert_eq!(d.encode()[0], FORMAT_V2);
        for how in [CopyKind::Replay, CopyKind::Requeue] {
            let c = Delivery {
                copied: Some(Copied { how, at_ms: 42 }),
                ..sample()
            };
            let bytes = c.encode();
            assert_eq!(bytes[0], FORMAT_V3);
            assert_eq!(Delivery::decode(bytes).unwrap(), c);
        }
    }

    fn trace(state: Option<&str>) -> TraceContext {
        TraceContext {
            traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
            tracestate: state.map(Into::into),
        }
    }

    #[test]
    fn every_combination_round_trips_and_only_endpoint_or_trace_writes_v4() {
        let copies = [
            None,
            Some(Copied {
                how: CopyKind::Replay,
                at_ms: 42,
            }),
            Some(Copied {
                how: CopyKind::Requeue,
                at_ms: 43,
            }),
        ];
        let endpoints = [None, Some("partner-a".to_owned()), Some(String::new())];
        let traces = [
            None,
            Some(trace(None)),
            Some(trace(Some("congo=t61rcWkgMzE"))),
        ];
        let rejects = [None, Some("invalid_json".to_owned())];
        for copied in copies {
            for endpoint in &endpoints {
                for t in &traces {
                    for reject_reason in &rejects {
                        let d = Delivery {
                            copied,
                            endpoint: endpoint.clone(),
                            trace: t.clone(),
                            reject_reason: reject_reason.clone(),
                            ..sample()
                        };
                        let bytes = d.encode();
                        let want = match (&d.endpoint, &d.trace, d.copied) {
                            (None, None, None) => FORMAT_V2,
                            (None, None, Some(_)) => FORMAT_V3,
                            _ => FORMAT_V4,
                        };
                        assert_eq!(bytes[0], want, "{d:?}");
                        assert_eq!(Delivery::decode(bytes).unwrap(), d);
                    }
                }
            }
        }
    }

    /// The V2 and V3 bytes of `sample()`, spelled out: what releases before V4 wrote, and what a
    /// record of the default endpoint without trace context must still be, byte for byte.
    fn sample_v2_v3_bytes(copy: Option<(u8, u64)>) -> Vec<u8> {
        let d = sample();
        let str_ = |b: &mut Vec<u8>, s: &str| {
            b.extend((s.len() as u16).to_le_bytes());
            b.extend(s.as_bytes());
        };
        let mut b = vec![if copy.is_some() { 3 } else { 2 }];
        str_(&mut b, "msg_2a");
        str_(&mut b, "1614265330");
        str_(&mut b, "session.updated");
        str_(&mut b, "0fd630f1");
        str_(&mut b, "757e8d5b");
        b.extend([0xff, 0xff]); // event_id: none
        b.extend(1_700_000_000_123u64.to_le_bytes());
        b.extend([0xff, 0xff]); // reject_reason: none
        if let Some((kind, at)) = copy {
            b.push(kind);
            b.extend(at.to_le_bytes());
        }
        b.extend((d.body.len() as u32).to_le_bytes());
        b.extend(&d.body[..]);
        b
    }

    #[test]
    fn v2_and_v3_records_decode_and_default_records_encode_as_before() {
        let v2 = sample_v2_v3_bytes(None);
        assert_eq!(Delivery::decode(Bytes::from(v2.clone())).unwrap(), sample());
        assert_eq!(sample().encode()[..], v2[..]);
        let v3 = sample_v2_v3_bytes(Some((2, 42)));
        let copy = Delivery {
            copied: Some(Copied {
                how: CopyKind::Requeue,
                at_ms: 42,
            }),
            ..sample()
        };
        assert_eq!(Delivery::decode(Bytes::from(v3.clone())).unwrap(), copy);
        assert_eq!(copy.encode()[..], v3[..]);
        // V3 has no "not a copy" kind; only V4 does.
        let mut v3_kind0 = sample_v2_v3_bytes(Some((0, 0)));
        v3_kind0[0] = FORMAT_V3;
        assert_eq!(
            Delivery::decode(Bytes::from(v3_kind0)),
            Err(DecodeError::Malformed("copy kind"))
        );
    }

    #[test]
    fn v4_layout_and_its_refusals() {
        let d = Delivery {
            endpoint: Some("partner-a".into()),
            trace: Some(trace(Some("k=v"))),
            ..sample()
        };
        let bytes = d.encode();
        // The V2 prefix up to reject_reason, then copy kind 0 and time 0, then the new fields.
        let v2 = sample_v2_v3_bytes(None);
        let prefix = v2.len() - 4 - d.body.len();
        assert_eq!(bytes[1..prefix], v2[1..prefix]);
        assert_eq!(bytes[prefix..prefix + 9], [0u8; 9]);
        assert_eq!(bytes[prefix + 9..prefix + 11], 9u16.to_le_bytes());
        assert_eq!(&bytes[prefix + 11..prefix + 20], b"partner-a");
        assert_eq!(d.endpoint_name(), "partner-a");
        assert_eq!(sample().endpoint_name(), DEFAULT_ENDPOINT);
        for cut in 0..bytes.len() {
            assert!(
                matches!(
                    Delivery::decode(bytes.slice(..cut)),
                    Err(DecodeError::Malformed(_))
                ),
                "cut at {cut}"
            );
        }
        let mut v5 = bytes.to_vec();
        v5[0] = 5;
        assert_eq!(
            Delivery::decode(Bytes::from(v5)),
            Err(DecodeError::Version(5))
        );
        // An endpoint longer than any we write, and a tracestate without a traceparent.
        let mut long = bytes[..prefix + 9].to_vec();
        long.extend(((MAX_FIELD_LEN + 1) as u16).to_le_bytes());
        long.extend(vec![b'e'; MAX_FIELD_LEN + 1]);
        long.extend([0xff, 0xff, 0xff, 0xff]);
        long.extend(0u32.to_le_bytes());
        assert_eq!(
            Delivery::decode(Bytes::from(long)),
            Err(DecodeError::Malformed("endpoint"))
        );
        let mut orphan = bytes[..prefix + 9].to_vec();
        orphan.extend([0xff, 0xff, 0xff, 0xff, 1, 0, b'x']);
        orphan.extend(0u32.to_le_bytes());
        assert_eq!(
            Delivery::decode(Bytes::from(orphan)),
            Err(DecodeError::Malformed("tracestate"))
        );
    }

    #[test]
    fn round_trip() {
        let d = sample();
        assert_eq!(Delivery::decode(d.encode()).unwrap(), d);
        let mut e = sample();
        e.timestamp = None;
        e.org_id = None;
        e.event_id = Some("4001".into());
        e.body = Bytes::new();
        e.reject_reason = Some("invalid_json".into());
        assert_eq!(Delivery::decode(e.encode()).unwrap(), e);
    }

    #[test]
    fn decodes_format_v1_written_by_hookbridge_0_1() {
        // u8 1 | "m" | none | "a.b" | "r" | none | none | u64 7 | u32 2 | "{}"
        let mut v1 = vec![
            1u8, 1, 0, b'm', 0xff, 0xff, 3, 0, b'a', b'.', b'b', 1, 0, b'r',
        ];
        v1.extend([0xff, 0xff, 0xff, 0xff]);
        v1.extend(7u64.to_le_bytes());
        v1.extend(2u32.to_le_bytes());
        v1.extend(b"{}");
        let d = Delivery::decode(Bytes::from(v1)).unwrap();
        assert_eq!(
            (d.id.as_str(), d.action.as_str(), d.resource_id.as_str()),
            ("m", "a.b", "r")
        );
        assert_eq!(
            (d.received_at_ms, d.reject_reason, &d.body[..]),
            (7, None, &b"{}"[..])
        );
    }

    #[test]
    fn long_fields_are_clipped_on_char_boundary() {
        let mut d = sample();
        d.action = "é".repeat(MAX_FIELD_LEN);
        let back = Delivery::decode(d.encode()).unwrap();
        assert!(back.action.len() <= MAX_FIELD_LEN);
        assert!(d.action.starts_with(&back.action));
    }

    #[test]
    fn rejects_truncation_and_unknown_version() {
        let enc = sample().encode();
        for cut in 0..enc.len() {
            assert!(Delivery::decode(enc.slice(..cut)).is_err(), "cut at {cut}");
        }
        let mut v = enc.to_vec();
        v[0] = 9;
        assert_eq!(
            Delivery::decode(Bytes::from(v)),
            Err(DecodeError::Version(9))
        );
    }
}
