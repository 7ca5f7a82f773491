//! Reads the few fields hookbridge needs out of a Sessionboard body, and checks that the whole
//! body is one well-formed JSON document. Everything else, unknown fields included, is left
//! untouched: the body is forwarded as the raw bytes, never re-serialized.

use serde::Deserialize;
use std::borrow::Cow;

/// What routing and message headers need from the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub action: String,
    pub resource_id: String,
    pub org_id: Option<String>,
    pub event_id: Option<String>,
}

/// Why a body was refused; each maps to a 400 with this text as the error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// Not one JSON document: syntax error, trailing bytes, invalid UTF-8, nesting deeper than
    /// serde_json's limit of 128, or a duplicated `data` / `metadata` / `action` / `id` key.
    #[error("invalid_json")]
    InvalidJson(String),
    /// Top level is not an object, or `metadata.action` is missing, null or not a string.
    #[error("missing_action")]
    MissingAction,
    /// `data.id` is missing, null, empty, longer than 1024 bytes, or not a string or number.
    #[error("missing_data_id")]
    MissingDataId,
}

impl EnvelopeError {
    /// The JSON `error` code.
    pub fn code(&self) -> &'static str {
        match self {
            EnvelopeError::InvalidJson(_) => "invalid_json",
            EnvelopeError::MissingAction => "missing_action",
            EnvelopeError::MissingDataId => "missing_data_id",
        }
    }
}

#[derive(Deserialize)]
struct Body<'a> {
    #[serde(borrow, default)]
    data: Option<Data<'a>>,
    #[serde(borrow, default)]
    metadata: Option<Metadata<'a>>,
}

#[derive(Deserialize)]
struct Data<'a> {
    #[serde(borrow, default)]
    id: Option<Scalar<'a>>,
}

#[derive(Deserialize)]
struct Metadata<'a> {
    #[serde(borrow, default)]
    action: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    org_id: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    event_id: Option<Scalar<'a>>,
}

/// A JSON value that may be a string or a number; objects, arrays and booleans count as absent
/// for our purposes but are still fully parsed (and so validated).
///
/// Deserialized by hand rather than as an untagged enum: an untagged enum first buffers the
/// value into serde's private `Content` and then tries each variant against it, which cost more
/// than reading the rest of the body. The outcome is the same: a string (borrowed unless it
/// had escapes), a number as serde_json reads it, anything else consumed and ignored.
enum Scalar<'a> {
    Str(Cow<'a, str>),
    Num(serde_json::Number),
    Other,
}

impl<'de: 'a, 'a> Deserialize<'de> for Scalar<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<Scalar<'a>>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = Scalar<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Scalar<'a>, E> {
                Ok(Scalar::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Scalar<'a>, E> {
                Ok(Scalar::Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Scalar<'a>, E> {
                Ok(Scalar::Str(Cow::Owned(v)))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Scalar<'a>, E> {
                Ok(Scalar::Num(v.into()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Scalar<'a>, E> {
                Ok(Scalar::Num(v.into()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Scalar<'a>, E> {
                Ok(serde_json::Number::from_f64(v).map_or(Scalar::Other, Scalar::Num))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Scalar<'a>, E> {
                Ok(Scalar::Other)
            }
            fn visit_unit<E>(self) -> Result<Scalar<'a>, E> {
                Ok(Scalar::Other)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Scalar<'a>, A::Error> {
                while a.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(Scalar::Other)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Scalar<'a>, A::Error> {
                while a
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(Scalar::Other)
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

impl Scalar<'_> {
    fn into_string(self) -> Option<String> {
        match self {
            Scalar::Str(s) => Some(s.into_owned()),
            Scalar::Num(n) => Some(n.to_string()),
            Scalar::Other => None,
        }
    }
}

/// Deepest nesting of arrays and objects accepted. serde_json skips unknown fields without
/// recursion, so a depth bomb in a field we ignore would parse here and then break a consumer
/// that uses a recursive parser (serde_json's own limit is 128): refuse it at the door instead.
pub const MAX_DEPTH: usize = 128;

/// Whether the JSON text nests arrays/objects deeper than `max`. A single pass over the bytes
/// that only tracks strings and escapes; syntax is checked by the real parser. String contents,
/// most of a body, are skipped with `memchr` rather than byte by byte.
fn nests_deeper_than(body: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    let mut i = 0;
    while let Some(&b) = body.get(i) {
        i += 1;
        match b {
            b'"' => {
                // To the closing quote; an escape hides the byte after the backslash. An
                // unterminated string holds no more structure (and the parser refuses it).
                loop {
                    let Some(j) = body
                        .get(i..)
                        .and_then(|rest| memchr::memchr2(b'"', b'\\', rest))
                    else {
                        return false;
                    };
                    let quote = body[i + j] == b'"';
                    i += j + if quote { 1 } else { 2 };
                    if quote {
                        break;
                    }
                }
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

pub fn parse(body: &[u8]) -> Result<Envelope, EnvelopeError> {
    if nests_deeper_than(body, MAX_DEPTH) {
        return Err(EnvelopeError::InvalidJson(format!(
            "nesting deeper than {MAX_DEPTH} levels"
        )));
    }
    let parsed: Body<'_> = match serde_json::from_slice(body) {
        Ok(b) => b,
        Err(e) if e.is_data() => {
            // Valid JSON whose shape does not fit (top level not an object, `metadata` a string,
            // a duplicate key...). Tell the two cases apart: a shape problem in an otherwise valid
            // document is reported by what is missing.
            return match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
                Ok(_) if e.to_string().starts_with("duplicate field") => {
                    Err(EnvelopeError::InvalidJson(e.to_string()))
                }
                Ok(_) => Err(EnvelopeError::MissingAction),
                Err(e) => Err(EnvelopeError::InvalidJson(e.to_string())),
            };
        }
        Err(e) => return Err(EnvelopeError::InvalidJson(e.to_string())),
    };
    let meta = parsed.metadata.ok_or(EnvelopeError::MissingAction)?;
    let action = match meta.action {
        Some(Scalar::Str(s)) => s.into_owned(),
        _ => return Err(EnvelopeError::MissingAction),
    };
    let resource_id = parsed
        .data
        .and_then(|d| d.id)
        .and_then(Scalar::into_string)
        .filter(|id| !id.is_empty() && id.len() <= crate::delivery::MAX_FIELD_LEN)
        .ok_or(EnvelopeError::MissingDataId)?;
    Ok(Envelope {
        action,
        resource_id,
        org_id: meta.org_id.and_then(Scalar::into_string),
        event_id: meta.event_id.and_then(Scalar::into_string),
    })
}

/// `metadata.datetime` when it is a JSON string, else `None`. Read at publish time (for the
/// CloudEvents `time` attribute) from the stored body, so the spool record format needs no new
/// field and records written before CloudEvents existed get the same answer.
pub fn metadata_datetime(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Body<'a> {
        #[serde(borrow, default)]
        metadata: Option<Meta<'a>>,
    }
    #[derive(Deserialize)]
    struct Meta<'a> {
        #[serde(borrow, default)]
        datetime: Option<Scalar<'a>>,
    }
    match serde_json::from_slice::<Body<'_>>(body)
        .ok()?
        .metadata?
        .datetime?
    {
        Scalar::Str(s) => Some(s.into_owned()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_fields_and_tolerates_unknown() {
        let e = parse(
            br#"{"data":{"id":"abc","x":[1,{"y":null}]},"metadata":{"action":"session.updated","org_id":"o-1","event_id":4001,"new":true},"extra":1}"#,
        )
        .unwrap();
        assert_eq!(e.action, "session.updated");
        assert_eq!(e.resource_id, "abc");
        assert_eq!(e.org_id.as_deref(), Some("o-1"));
        assert_eq!(e.event_id.as_deref(), Some("4001"));
    }

    #[test]
    fn metadata_datetime_is_read_only_as_a_string() {
        let b = br#"{"metadata":{"action":"a","datetime":"2026-04-28T16:00:00Z"},"data":{"id":1}}"#;
        assert_eq!(
            metadata_datetime(b).as_deref(),
            Some("2026-04-28T16:00:00Z")
        );
        assert_eq!(metadata_datetime(br#"{"metadata":{"datetime":5}}"#), None);
        assert_eq!(metadata_datetime(br#"{"metadata":{}}"#), None);
        assert_eq!(metadata_datetime(b"not json"), None);
    }

    #[test]
    fn numeric_id_and_null_event() {
        let e = parse(
            br#"{"metadata":{"action":"a.b","event_id":null,"org_id":null},"data":{"id":42}}"#,
        )
        .unwrap();
        assert_eq!(e.resource_id, "42");
        assert_eq!(e.event_id, None);
        assert_eq!(e.org_id, None);
    }

    #[test]
    fn escaped_strings_are_unescaped() {
        let e = parse(br#"{"metadata":{"action":"a\u002eb"},"data":{"id":"x\"y"}}"#).unwrap();
        assert_eq!(e.action, "a.b");
        assert_eq!(e.resource_id, "x\"y");
    }

    #[test]
    fn bad_bodies() {
        use EnvelopeError::*;
        type Check = fn(&EnvelopeError) -> bool;
        let cases: &[(&[u8], Check)] = &[
            (b"", |e| matches!(e, InvalidJson(_))),
            (b"{", |e| matches!(e, InvalidJson(_))),
            (b"{}x", |e| matches!(e, InvalidJson(_))),
            (b"\xff\xfe", |e| matches!(e, InvalidJson(_))),
            (b"[1,2]", |e| *e == MissingAction),
            (b"\"str\"", |e| *e == MissingAction),
            (b"{}", |e| *e == MissingAction),
            (br#"{"metadata":{"action":7},"data":{"id":"a"}}"#, |e| {
                *e == MissingAction
            }),
            (br#"{"metadata":{"action":null},"data":{"id":"a"}}"#, |e| {
                *e == MissingAction
            }),
            (br#"{"metadata":"x","data":{"id":"a"}}"#, |e| {
                *e == MissingAction
            }),
            (br#"{"metadata":{"action":"a"}}"#, |e| *e == MissingDataId),
            (br#"{"metadata":{"action":"a"},"data":{"id":null}}"#, |e| {
                *e == MissingDataId
            }),
            (br#"{"metadata":{"action":"a"},"data":{"id":""}}"#, |e| {
                *e == MissingDataId
            }),
            (
                br#"{"metadata":{"action":"a"},"data":{"id":{"k":1}}}"#,
                |e| *e == MissingDataId,
            ),
            (br#"{"metadata":{"action":"a"},"data":[]}"#, |e| {
                *e == MissingDataId
            }),
            (
                br#"{"metadata":{"action":"a"},"metadata":{"action":"b"},"data":{"id":"1"}}"#,
                |e| matches!(e, InvalidJson(_)),
            ),
        ];
        for (body, ok) in cases {
            let err = parse(body).unwrap_err();
            assert!(ok(&err), "{}: {err:?}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn deep_nesting_is_rejected_not_a_crash() {
        let mut body = br#"{"metadata":{"action":"a"},"data":{"id":"1","x":"#.to_vec();
        body.extend(std::iter::repeat_n(b'[', 100_000));
        body.extend(std::iter::repeat_n(b']', 100_000));
        body.extend(b"}}");
        let got = parse(&body);
        assert!(matches!(got, Err(EnvelopeError::InvalidJson(_))), "{got:?}");
    }

    #[test]
    fn depth_counting_ignores_brackets_in_strings() {
        assert!(!nests_deeper_than(br#"{"a":"[[[[\"[[["}"#, 1));
        assert!(nests_deeper_than(br#"{"a":[]}"#, 1));
        assert!(!nests_deeper_than(br#"{"a":[]}"#, 2));
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(!nests_deeper_than(ok.as_bytes(), MAX_DEPTH));
    }

    #[test]
    fn depth_counting_skips_escapes_like_a_byte_by_byte_scan() {
        // The byte-at-a-time scan the memchr version replaced, as the reference.
        fn reference(body: &[u8], max: usize) -> bool {
            let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
            for &b in body {
                if in_string {
                    match b {
                        _ if escaped => escaped = false,
                        b'\\' => escaped = true,
                        b'"' => in_string = false,
                        _ => {}
                    }
                    continue;
                }
                match b {
                    b'"' => in_string = true,
                    b'[' | b'{' => {
                        depth += 1;
                        if depth > max {
                            return true;
                        }
                    }
                    b']' | b'}' => depth = depth.saturating_sub(1),
                    _ => {}
                }
            }
            false
        }
        let cases: &[&[u8]] = &[
            br#"{"a":"\\"}[[["#,
            br#"{"a":"\"[[["}"#,
            br#"{"a":"x\"#,
            br#"{"a":"x\\"#,
            br#""[[[""#,
            br#"[["\\\"]"]]"#,
            b"[[[\\",
            b"\"\\",
            b"",
            b"[",
        ];
        for body in cases {
            for max in 0..4 {
                assert_eq!(
                    nests_deeper_than(body, max),
                    reference(body, max),
                    "{} at {max}",
                    String::from_utf8_lossy(body)
                );
            }
        }
    }

    #[test]
    fn scalars_other_than_strings_and_numbers_count_as_absent() {
        let e = parse(br#"{"metadata":{"action":"a","org_id":true,"event_id":[1,{"x":2}]},"data":{"id":1.5e3}}"#)
            .unwrap();
        assert_eq!(e.resource_id, "1500.0");
        assert_eq!((e.org_id, e.event_id), (None, None));
        let e =
            parse(br#"{"metadata":{"action":"a","event_id":-7},"data":{"id":"\u00e9"}}"#).unwrap();
        assert_eq!(
            (e.resource_id.as_str(), e.event_id.as_deref()),
            ("é", Some("-7"))
        );
    }

    #[test]
    fn every_fixture_parses() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/fixtures");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "json") {
                let e = parse(&std::fs::read(&path).unwrap()).unwrap();
                assert!(crate::routing::is_valid_action(&e.action), "{path:?}");
                n += 1;
            }
        }
        assert_eq!(n, 21);
    }
}
