//! `hookbridge asyncapi`: an AsyncAPI 3.0 document of what *this configuration* publishes, and
//! the "Consume" tables of docs/messages.md, both built from one description ([`HEADERS`], each
//! endpoint's router, the catalogue, the payload schemas in `schemas/`) so the two cannot drift
//! apart. Every endpoint (`default` and each `[[endpoints]]` entry) gets its own channels; the
//! default endpoint's keep the ids they had before endpoints existed.
//!
//! Pure functions of a validated configuration: no I/O, no clock, no secret (servers are named by
//! host and port only; user info in a URL is dropped).

use serde_json::{json, Map, Value};

use crate::cloudevents::{header_names, STRUCTURED_CONTENT_TYPE};
use crate::config::{self, CloudEventsMode, Config, NatsMode, SinkKind, DEFAULT_ENDPOINT};
use crate::routing::{Router, KNOWN_ACTIONS};

/// The payload schemas, one file each so they can be reviewed as data. Written from the field
/// lists in Sessionboard's webhook docs and the Public API's Contact and Sponsor schemas;
/// permissive (`additionalProperties`), because Sessionboard adds fields without notice.
const SCHEMAS: &[(&str, &str)] = &[
    ("metadata", include_str!("schemas/metadata.json")),
    ("contact", include_str!("schemas/contact.json")),
    ("session", include_str!("schemas/session.json")),
    ("exhibitor", include_str!("schemas/exhibitor.json")),
    ("sponsor", include_str!("schemas/sponsor.json")),
    ("deleted", include_str!("schemas/deleted.json")),
];

/// Which payload schema describes `data` for an action of the catalogue.
fn data_schema(action: &str) -> &'static str {
    if action.ends_with(".deleted") {
        return "deleted";
    }
    // session.speaker.attached/detached carry the session, like every session.* action.
    ["contact", "session", "exhibitor", "sponsor"]
        .into_iter()
        .find(|r| action.split('.').next() == Some(r))
        .unwrap_or("deleted")
}

/// Who sets a header.
#[derive(Clone, Copy, PartialEq, Eq)]
enum When {
    Always,
    /// Only when the value is present in the delivery and header-safe (visible ASCII).
    IfPresent,
    /// NATS JetStream only.
    JetStream,
    /// Only on a copy an operator put back (`spool replay`, `dead-letter requeue`).
    Copy,
}

/// Every header hookbridge sets besides the CloudEvents ones: name, meaning, when.
const HEADERS: &[(&str, &str, When)] = &[
    ("webhook-id", "The delivery id (the sender's `webhook-id`/`svix-id`, or `sha256:<hex>` of the body): stable across the sender's retries and hookbridge's replays; de-duplicate on it.", When::Always),
    ("content-type", "`application/json` (structured CloudEvents: `application/cloudevents+json; charset=UTF-8`).", When::Always),
    ("hookbridge-endpoint", "The endpoint the delivery came through: `default` for the top-level `http.path`, or an `[[endpoints]]` entry's `name`.", When::Always),
    ("sessionboard-action", "`metadata.action`.", When::IfPresent),
    ("sessionboard-resource-id", "`data.id`: the resource; changes to one resource are published in order.", When::IfPresent),
    ("sessionboard-org-id", "`metadata.org_id`.", When::IfPresent),
    ("sessionboard-event-id", "`metadata.event_id` (absent when null).", When::IfPresent),
    ("webhook-timestamp", "The sender's `webhook-timestamp`/`svix-timestamp` (Unix seconds).", When::IfPresent),
    ("traceparent", "The W3C Trace Context `traceparent` the sender sent with the delivery, when it sent a valid one: continue the trace from it.", When::IfPresent),
    ("tracestate", "The sender's W3C `tracestate`, beside its `traceparent` (at most 512 characters).", When::IfPresent),
    ("Nats-Msg-Id", "The delivery id again (`<endpoint>:<id>` for an endpoint other than `default`, so two senders' ids never collide): JetStream drops a repeat within the stream's duplicate window.", When::JetStream),
    ("hookbridge-copy", "`replay` or `requeue`: this message is a copy an operator put back, published after changes received later; compare `hookbridge-received-at` (or `metadata.datetime`) with the newest you applied.", When::Copy),
    ("hookbridge-received-at", "When hookbridge received the original delivery (RFC 3339, milliseconds).", When::Copy),
];

/// The CloudEvents attributes in binary mode (header name suffixes), meaning, required.
const CE_ATTRIBUTES: &[(&str, &str, bool)] = &[
    ("specversion", "`1.0`.", true),
    ("id", "The delivery id (as `webhook-id`).", true),
    ("source", "`sink.cloudevents_source` with `{org_id}` = `metadata.org_id` (percent-encoded), or `sink.cloudevents_source_fallback`; for an `[[endpoints]]` entry its `cloudevents_source` (default `<sink.cloudevents_source_fallback>/<name>/orgs/{org_id}`), or `<sink.cloudevents_source_fallback>/<name>`.", true),
    ("type", "`sink.cloudevents_type_prefix` + `metadata.action` (`unroutable` for an action that is not a routing token).", true),
    ("subject", "`data.id` (absent when not header-safe).", false),
    ("time", "`metadata.datetime`, only when it is a valid RFC 3339 timestamp.", false),
];

const DEAD_LETTER_STORE: &str = "Records the broker refuses for good (not authorized, too large, invalid or missing topic), records that kept failing while the broker confirmed others (`retries_exhausted`: `forward.max_attempts`, `forward.max_retry_age`) and bodies that are authentic but unusable (not JSON, no `metadata.action`, no `data.id`) are not published: they are kept, fsync'd, in the local dead-letter store `<spool.dir>/dead-letter/` for an operator (`hookbridge spool dead-letter list/requeue`). The resource's later changes are published without it: a consumer sees a gap in that resource's history, never a reordering.";

const KEY: &str =
    "`data.id` (the Kafka record key; on NATS the `sessionboard-resource-id` header).";
const ORDERING: &str = "Per resource: the next change to a `data.id` is published only after the broker confirmed the previous one. NATS: one stream holds every subject in one order. Kafka: one partition per key within a topic; different actions are different topics.";
const DUPLICATES: &str = "At least once: the sender retries and hookbridge replays unconfirmed records after a crash. De-duplicate on `webhook-id` (with several endpoints, on `hookbridge-endpoint` and `webhook-id`: two senders may use the same id).";

/// One endpoint's namespace, as the document describes it.
struct Namespace {
    name: String,
    path: String,
    router: Router,
    /// Its CloudEvents `source` template and the source without an org id.
    sources: (String, String),
}

impl Namespace {
    fn is_default(&self) -> bool {
        self.name == DEFAULT_ENDPOINT
    }
}

/// Every endpoint's namespace, `default` first. Reads no secret file: only the routing.
fn namespaces(c: &Config) -> Result<Vec<Namespace>, config::Error> {
    c.endpoints()
        .iter()
        .map(|e| {
            Ok(Namespace {
                name: e.name.to_owned(),
                path: e.path.to_owned(),
                router: Router::for_endpoint(e)?,
                sources: e.cloudevents_sources(&c.sink),
            })
        })
        .collect()
}

/// One channel: the catalogued action (or `None` for the unroutable channel) and its address.
struct Channel {
    id: String,
    action: Option<&'static str>,
    address: String,
}

/// The channels of one endpoint. The default endpoint's ids are the camel-cased action
/// (`contactCreated`, `unroutable`); another's are `<name>_<camel-cased action>`
/// (`sandbox_contactCreated`): a camel-cased action has no `_`, so no two endpoints' ids meet.
fn channels(ns: &Namespace) -> Vec<Channel> {
    let id = |suffix: String| {
        if ns.is_default() {
            suffix
        } else {
            format!("{}_{suffix}", ns.name)
        }
    };
    let mut out: Vec<Channel> = KNOWN_ACTIONS
        .iter()
        .map(|a| Channel {
            id: id(camel(a)),
            action: Some(a),
            address: ns.router.route(a).destination,
        })
        .collect();
    out.push(Channel {
        id: id("unroutable".into()),
        action: None,
        // Any action that is not a routing token goes here (invariant 5).
        address: ns.router.route("").destination,
    });
    out
}

/// `contact.event.associated` → `contactEventAssociated`.
fn camel(action: &str) -> String {
    let mut out = String::new();
    for (i, part) in action.split(['.', '_', '-']).enumerate() {
        let mut chars = part.chars();
        if let Some(c) = chars.next() {
            if i == 0 {
                out.push(c);
            } else {
                out.extend(c.to_uppercase());
            }
            out.extend(chars);
        }
    }
    out
}

/// Host and port of each configured server, user info and scheme dropped.
fn hosts(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            let s = s.split_once("://").map_or(s, |(_, rest)| rest);
            let s = s.rsplit_once('@').map_or(s, |(_, host)| host);
            s.trim_end_matches('/').to_owned()
        })
        .collect()
}

fn servers(c: &Config) -> Value {
    let (name, protocol, list, description) = match c.sink.kind {
        SinkKind::Nats => {
            let how = match c.sink.nats.mode {
                NatsMode::Jetstream => format!(
                    "JetStream: every message is stored in stream `{}` and confirmed by its PubAck before hookbridge forgets it.",
                    c.sink.nats.stream
                ),
                NatsMode::Core => {
                    "Core NATS: confirmed by a flush only; nothing is stored by the server."
                        .to_owned()
                }
            };
            ("nats", "nats", &c.sink.nats.url, how)
        }
        SinkKind::Kafka => {
            let secure = c
                .sink
                .kafka
                .options
                .get("security.protocol")
                .is_some_and(|p| p.to_ascii_uppercase().contains("SSL"));
            (
                "kafka",
                if secure { "kafka-secure" } else { "kafka" },
                &c.sink.kafka.brokers,
                "Kafka: idempotent producer, acks=all; a record counts as published on its delivery report.".to_owned(),
            )
        }
    };
    let mut out = Map::new();
    for (i, host) in hosts(list).into_iter().enumerate() {
        let key = if i == 0 {
            name.to_owned()
        } else {
            format!("{name}-{}", i + 1)
        };
        out.insert(
            key,
            json!({"host": host, "protocol": protocol, "description": description}),
        );
    }
    Value::Object(out)
}

fn header_schema(c: &Config, ns: &Namespace, action: Option<&str>) -> Value {
    let mut props = Map::new();
    let mut required = vec![];
    for (name, description, when) in HEADERS {
        if *when == When::JetStream
            && !(c.sink.kind == SinkKind::Nats && c.sink.nats.mode == NatsMode::Jetstream)
        {
            continue;
        }
        let mut s = json!({"type": "string", "description": description});
        match *name {
            "content-type" => {
                s["const"] = json!(match c.sink.cloudevents {
                    CloudEventsMode::Structured => STRUCTURED_CONTENT_TYPE,
                    _ => "application/json",
                })
            }
            "hookbridge-copy" => s["enum"] = json!(["replay", "requeue"]),
            "hookbridge-endpoint" => s["const"] = json!(ns.name),
            "sessionboard-action" => {
                if let Some(a) = action {
                    s["const"] = json!(a);
                }
            }
            _ => {}
        }
        if !matches!(when, When::IfPresent | When::Copy) {
            required.push(json!(name));
        }
        props.insert((*name).to_owned(), s);
    }
    if c.sink.cloudevents == CloudEventsMode::Binary {
        let names = header_names(c.sink.kind);
        for ((attr, description, req), name) in CE_ATTRIBUTES.iter().zip(names.iter()) {
            debug_assert!(name.ends_with(attr));
            let mut s = json!({"type": "string", "description": format!("CloudEvents `{attr}`: {description}")});
            match (*attr, action) {
                ("specversion", _) => s["const"] = json!("1.0"),
                ("source", _) if !ns.is_default() => {
                    s["description"] = json!(format!(
                        "CloudEvents `source`: `{}` with `{{org_id}}` = `metadata.org_id` (percent-encoded), or `{}`.",
                        ns.sources.0, ns.sources.1
                    ))
                }
                ("type", Some(a)) => {
                    s["const"] = json!(format!("{}{a}", c.sink.cloudevents_type_prefix))
                }
                _ => {}
            }
            if *req {
                required.push(json!(name));
            }
            props.insert((*name).to_owned(), s);
        }
    }
    json!({"type": "object", "required": required, "properties": props, "additionalProperties": true})
}

/// The schema of the sender's body for `action` (`None`: the unroutable channel, anything JSON).
fn body_schema(action: Option<&str>) -> Value {
    match action {
        Some(a) => json!({
            "type": "object",
            "required": ["data", "metadata"],
            "additionalProperties": true,
            "properties": {
                "data": {"$ref": format!("#/components/schemas/{}", data_schema(a))},
                "metadata": {"allOf": [
                    {"$ref": "#/components/schemas/metadata"},
                    {"type": "object", "properties": {"action": {"const": a}}}
                ]}
            }
        }),
        None => json!({
            "description": "An authentic Sessionboard body whose `metadata.action` is not a routing token (`^[a-z0-9_-]+(\\.[a-z0-9_-]+)*$`, at most 200 characters), forwarded byte for byte."
        }),
    }
}

fn payload_schema(c: &Config, action: Option<&str>) -> Value {
    let body = body_schema(action);
    if c.sink.cloudevents != CloudEventsMode::Structured {
        return body;
    }
    let mut ty = json!({"type": "string", "description": "`sink.cloudevents_type_prefix` + `metadata.action`."});
    if let Some(a) = action {
        ty["const"] = json!(format!("{}{a}", c.sink.cloudevents_type_prefix));
    }
    json!({
        "type": "object",
        "description": "A CloudEvents 1.0 event (JSON format) whose `data` is the sender's body, byte for byte.",
        "required": ["specversion", "id", "source", "type", "datacontenttype", "data"],
        "additionalProperties": true,
        "properties": {
            "specversion": {"type": "string", "const": "1.0"},
            "id": {"type": "string", "description": "The delivery id (as `webhook-id`)."},
            "source": {"type": "string", "format": "uri-reference"},
            "type": ty,
            "subject": {"type": "string", "description": "`data.id`."},
            "time": {"type": "string", "format": "date-time", "description": "`metadata.datetime`, only when it is RFC 3339."},
            "datacontenttype": {"type": "string", "const": "application/json"},
            "data": body
        }
    })
}

/// The AsyncAPI 3.0 document for `c` (validated): every endpoint's channels, `default` first.
/// An error only for a routing that `Config::validate` would have refused.
pub fn document(c: &Config) -> Result<Value, config::Error> {
    let mut schemas = Map::new();
    for (name, text) in SCHEMAS {
        let mut s: Value = serde_json::from_str(text).expect("schemas/*.json are valid JSON");
        // The AsyncAPI schema format is JSON Schema draft 07 inside the document; the files
        // carry `$schema` only for editors and validators reading them on their own.
        if let Some(o) = s.as_object_mut() {
            o.remove("$schema");
        }
        schemas.insert((*name).to_owned(), s);
    }
    let content_type = match c.sink.cloudevents {
        CloudEventsMode::Structured => STRUCTURED_CONTENT_TYPE,
        _ => "application/json",
    };
    let all = namespaces(c)?;
    let several = all.len() > 1;
    let (mut chans, mut ops, mut messages) = (Map::new(), Map::new(), Map::new());
    for ns in &all {
        // With one endpoint the document reads as it did before endpoints existed.
        let through = if several {
            format!(" through endpoint `{}` (`{}`)", ns.name, ns.path)
        } else {
            String::new()
        };
        for ch in channels(ns) {
            let description = match ch.action {
                Some(a) => format!("Sessionboard `{a}` deliveries{through}."),
                None => format!(
                    "Deliveries{through} whose `metadata.action` is not a routing token (`routing.dead_letter`). {DEAD_LETTER_STORE}"
                ),
            };
            let name = ch.action.unwrap_or("unroutable");
            let title = if ns.is_default() {
                name.to_owned()
            } else {
                format!("{name} ({})", ns.name)
            };
            let mut message = json!({
                "name": name,
                "title": title,
                "contentType": content_type,
                "headers": header_schema(c, ns, ch.action),
                "payload": payload_schema(c, ch.action),
            });
            if c.sink.kind == SinkKind::Kafka {
                message["bindings"] = json!({"kafka": {
                    "key": {"type": "string", "description": "`data.id`"},
                    "bindingVersion": "0.5.0"
                }});
            }
            messages.insert(ch.id.clone(), message);
            chans.insert(
                ch.id.clone(),
                json!({
                    "address": ch.address,
                    "description": description,
                    "messages": {ch.id.clone(): {"$ref": format!("#/components/messages/{}", ch.id)}}
                }),
            );
            ops.insert(
                format!("publish{}{}", ch.id[..1].to_uppercase(), &ch.id[1..]),
                json!({
                    "action": "send",
                    "channel": {"$ref": format!("#/channels/{}", ch.id)},
                    "messages": [{"$ref": format!("#/channels/{}/messages/{}", ch.id, ch.id)}]
                }),
            );
        }
    }
    let description = format!(
        "What hookbridge publishes for Sessionboard's webhooks with this configuration. The body is the sender's request body byte for byte{}. Key: {KEY} Ordering: {ORDERING} Duplicates: {DUPLICATES} Dead-letter store: {DEAD_LETTER_STORE}",
        match c.sink.cloudevents {
            CloudEventsMode::Off => "",
            CloudEventsMode::Binary => ", with CloudEvents attributes in headers (binary mode)",
            CloudEventsMode::Structured => ", embedded as `data` of a CloudEvents event (structured mode)",
        }
    );
    Ok(json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "hookbridge: Sessionboard webhooks",
            "version": env!("CARGO_PKG_VERSION"),
            "description": description
        },
        "defaultContentType": content_type,
        "servers": servers(c),
        "channels": chans,
        "operations": ops,
        "components": {"schemas": schemas, "messages": messages}
    }))
}

/// Block-style YAML for a JSON value. Every string is written as a JSON string, which YAML reads
/// as the same double-quoted scalar, so nothing needs YAML-specific escaping.
pub fn to_yaml(v: &Value) -> String {
    let mut out = String::new();
    yaml(v, 0, &mut out);
    out
}

fn scalar(v: &Value) -> String {
    v.to_string()
}

fn yaml(v: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                out.push_str(&format!("{pad}{}:", scalar(&json!(k))));
                nested(v, indent, out);
            }
        }
        Value::Array(a) => {
            for v in a {
                out.push_str(&format!("{pad}-"));
                nested(v, indent, out);
            }
        }
        other => out.push_str(&format!("{pad}{}\n", scalar(other))),
    }
}

fn nested(v: &Value, indent: usize, out: &mut String) {
    match v {
        Value::Object(m) if m.is_empty() => out.push_str(" {}\n"),
        Value::Array(a) if a.is_empty() => out.push_str(" []\n"),
        Value::Object(_) | Value::Array(_) => {
            out.push('\n');
            yaml(v, indent + 2, out);
        }
        other => out.push_str(&format!(" {}\n", scalar(other))),
    }
}

/// The "Consume" tables of docs/messages.md for `c` (validated): each endpoint's destinations
/// (headed by its name and path when there are several), the headers, and key / ordering /
/// duplicates.
pub fn markdown(c: &Config) -> Result<String, config::Error> {
    let all = namespaces(c)?;
    let mut out = String::new();
    for (i, ns) in all.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        if all.len() > 1 {
            out.push_str(&format!("Endpoint `{}` (`{}`):\n\n", ns.name, ns.path));
        }
        out.push_str("| action | subject / topic | `data` schema |\n| --- | --- | --- |\n");
        for ch in channels(ns) {
            let (action, schema) = match ch.action {
                Some(a) => (format!("`{a}`"), format!("`{}`", data_schema(a))),
                None => (
                    "any other (not a routing token)".to_owned(),
                    "any".to_owned(),
                ),
            };
            out.push_str(&format!("| {action} | `{}` | {schema} |\n", ch.address));
        }
    }
    out.push_str("\n| header | value | set |\n| --- | --- | --- |\n");
    for (name, description, when) in HEADERS {
        let when = match when {
            When::Always => "always",
            When::IfPresent => "when present and header-safe",
            When::JetStream => "NATS JetStream",
            When::Copy => "replayed or requeued copies",
        };
        out.push_str(&format!("| `{name}` | {description} | {when} |\n"));
    }
    for (attr, description, req) in CE_ATTRIBUTES {
        out.push_str(&format!(
            "| `ce-{attr}` / `ce_{attr}` | {description} | `sink.cloudevents = \"binary\"`{} |\n",
            if *req { "" } else { ", when present" }
        ));
    }
    out.push_str(&format!(
        "\n- **Key:** {KEY}\n- **Ordering:** {ORDERING}\n- **Duplicates:** {DUPLICATES}\n- **Dead letters:** {DEAD_LETTER_STORE}\n"
    ));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_channel_per_action_plus_unroutable_with_overrides() {
        let mut c = Config::default();
        c.routing
            .routes
            .insert("session.*".into(), "events.sessions".into());
        let doc = document(&c).unwrap();
        let chans = doc["channels"].as_object().unwrap();
        assert_eq!(chans.len(), KNOWN_ACTIONS.len() + 1);
        assert_eq!(
            chans["contactCreated"]["address"],
            "sessionboard.contact.created"
        );
        assert_eq!(chans["sessionUpdated"]["address"], "events.sessions");
        assert_eq!(chans["unroutable"]["address"], "sessionboard.unroutable");
        assert_eq!(doc["servers"]["nats"]["host"], "127.0.0.1:4222");
    }

    /// The default endpoint on `sessionboard.` and `sandbox` (`/webhooks/sandbox`) on
    /// `sandbox.sessionboard.` with one route of its own.
    fn two_endpoints() -> Config {
        let mut c = Config::default();
        let mut routing = crate::config::RoutingConfig {
            prefix: "sandbox.sessionboard.".into(),
            ..Default::default()
        };
        routing
            .routes
            .insert("sponsor.*".into(), "sandbox.partners.sponsors".into());
        c.endpoints.push(crate::config::EndpointConfig {
            name: "sandbox".into(),
            path: "/webhooks/sandbox".into(),
            auth: crate::config::Credentials {
                secrets: vec!["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()],
                ..Default::default()
            },
            routing,
            cloudevents_source: None,
        });
        c.validate().unwrap();
        c
    }

    #[test]
    fn every_endpoint_has_its_channels_and_no_two_share_an_address() {
        let c = two_endpoints();
        let doc = document(&c).unwrap();
        let chans = doc["channels"].as_object().unwrap();
        assert_eq!(chans.len(), 2 * (KNOWN_ACTIONS.len() + 1));
        for (id, address) in [
            // The default endpoint keeps its ids.
            ("contactCreated", "sessionboard.contact.created"),
            (
                "sandbox_contactCreated",
                "sandbox.sessionboard.contact.created",
            ),
            ("sandbox_sponsorCreated", "sandbox.partners.sponsors"),
            ("sandbox_unroutable", "sandbox.sessionboard.unroutable"),
        ] {
            assert_eq!(chans[id]["address"], address, "{id}");
        }
        assert!(chans["sandbox_contactCreated"]["description"]
            .as_str()
            .unwrap()
            .contains("endpoint `sandbox` (`/webhooks/sandbox`)"));
        // Each endpoint's addresses lie in its own namespace, and none is another's.
        let mut seen = std::collections::HashMap::new();
        for (id, ch) in chans {
            let address = ch["address"].as_str().unwrap();
            let sandbox = id.starts_with("sandbox_");
            assert_eq!(address.starts_with("sandbox."), sandbox, "{id}: {address}");
            if !sandbox {
                assert!(address.starts_with("sessionboard."), "{id}: {address}");
            }
            if let Some(other) = seen.insert(address.to_owned(), id.clone()) {
                // Several actions may share a fixed route, never across endpoints.
                assert_eq!(other.starts_with("sandbox_"), sandbox, "{other} and {id}");
            }
        }
        let messages = &doc["components"]["messages"];
        let endpoint_header = |id: &str| {
            messages[id]["headers"]["properties"]["hookbridge-endpoint"]["const"].clone()
        };
        assert_eq!(endpoint_header("contactCreated"), "default");
        assert_eq!(endpoint_header("sandbox_contactCreated"), "sandbox");
        assert_eq!(
            messages["sandbox_contactCreated"]["title"],
            "contact.created (sandbox)"
        );
        assert_eq!(
            doc["operations"].as_object().unwrap().len(),
            chans.len(),
            "one operation per channel"
        );
        let md = markdown(&c).unwrap();
        assert!(
            md.contains("Endpoint `sandbox` (`/webhooks/sandbox`):"),
            "{md}"
        );
        assert!(md.contains("| `contact.created` | `sandbox.sessionboard.contact.created` |"));
    }

    #[test]
    fn one_endpoint_tables_have_no_endpoint_heading() {
        let md = markdown(&Config::default()).unwrap();
        assert!(md.starts_with("| action | subject / topic |"), "{md}");
        assert!(md.contains("| `hookbridge-endpoint` |"));
    }

    #[test]
    fn servers_carry_no_secrets() {
        let mut c = Config::default();
        c.sink.nats.url = "nats://user:hunter2@a.example:4222, tls://b.example:4222".into();
        let hosts: Vec<_> = servers(&c)
            .as_object()
            .unwrap()
            .values()
            .map(|s| s["host"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(hosts, ["a.example:4222", "b.example:4222"]);
    }

    #[test]
    fn cloudevents_headers_follow_the_sink() {
        let mut c = Config::default();
        c.sink.kind = SinkKind::Kafka;
        c.sink.cloudevents = CloudEventsMode::Binary;
        let doc = document(&c).unwrap();
        let h = &doc["components"]["messages"]["sessionUpdated"]["headers"]["properties"];
        assert_eq!(h["ce_type"]["const"], "com.sessionboard.session.updated");
        assert!(h.get("Nats-Msg-Id").is_none());
        assert_eq!(
            doc["components"]["messages"]["sessionUpdated"]["bindings"]["kafka"]["key"]["type"],
            "string"
        );
    }

    #[test]
    fn yaml_reads_back_as_the_same_json_shape() {
        let v = json!({"a": [1, {"b": "x: \"y\"", "c": []}], "d": {}, "e": null});
        assert_eq!(
            to_yaml(&v),
            "\"a\":\n  - 1\n  -\n    \"b\": \"x: \\\"y\\\"\"\n    \"c\": []\n\"d\": {}\n\"e\": null\n"
        );
    }
}
