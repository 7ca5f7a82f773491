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
    /// The request body exactly as received.
    pub body: Bytes,
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
    // Layout, do not reorder (FORMAT_V3):
    //   u8 version | str id | opt_str timestamp | str action | str resource_id
    //   | opt_str org_id | opt_str event_id | u64 received_at_ms | opt_str reject_reason
    //   | [V3: u8 copy kind (1 replay, 2 requeue) | u64 copied_at_ms] | u32 body_len | body
    // FORMAT_V2 is the same without the copy fields (written when `copied` is None), FORMAT_V1
    // also without reject_reason.
    // str = u16 len + UTF-8 bytes; opt_str = str, or u16::MAX for none. Little-endian.
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(self.body.len() + 64 + self.id.len());
        b.put_u8(if self.copied.is_some() {
            FORMAT_V3
        } else {
            FORMAT_V2
        });
        put_str(&mut b, Some(&self.id));
        put_str(&mut b, self.timestamp.as_deref());
        put_str(&mut b, Some(&self.action));
        put_str(&mut b, Some(&self.resource_id));
        put_str(&mut b, self.org_id.as_deref());
        put_str(&mut b, self.event_id.as_deref());
        b.put_u64_le(self.received_at_ms);
        put_str(&mut b, self.reject_reason.as_deref());
        if let Some(c) = self.copied {
            b.put_u8(match c.how {
                CopyKind::Replay => 1,
                CopyKind::Requeue => 2,
            });
            b.put_u64_le(c.at_ms);
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
        if !(FORMAT_V1..=FORMAT_V3).contains(&v) {
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
            let how = match p.get_u8() {
                1 => CopyKind::Replay,
                2 => CopyKind::Requeue,
                _ => return Err(DecodeError::Malformed("copy kind")),
            };
            Some(Copied {
                how,
                at_ms: p.get_u64_le(),
            })
        } else {
            None
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
