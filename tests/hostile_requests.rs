//! Hostile and malformed requests against a bridge that requires Svix signatures: each gets its
//! documented answer, nothing is published that should not be, and nothing acknowledged is lost
//! (it is either on the broker or in the dead-letter store).

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use hookbridge::ingress::signature::sign_v1;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PATH: &str = "/webhooks/sessionboard";
const OLD: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
const NEW: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn now() -> i64 {
    hookbridge::ingress::auth::system_clock()
}

/// Headers a Standard Webhooks sender would send for `body`.
fn signed(secret: &str, id: &str, ts: i64, body: &[u8]) -> Vec<(String, String)> {
    vec![
        ("content-type".into(), "application/json".into()),
        ("webhook-id".into(), id.into()),
        ("webhook-timestamp".into(), ts.to_string()),
        (
            "webhook-signature".into(),
            sign_v1(secret, id, &ts.to_string(), body),
        ),
    ]
}

struct Case {
    name: &'static str,
    method: &'static str,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    status: u16,
    /// Expected JSON `error` (for refusals) or `dead_letter_reason` (for kept invalid bodies).
    code: Option<&'static str>,
    /// The delivery id that must end up published (`Some`) — or dead-lettered, see `code`.
    id: Option<String>,
}

fn case(
    name: &'static str,
    headers: Vec<(String, String)>,
    body: impl Into<Vec<u8>>,
    status: u16,
    code: Option<&'static str>,
) -> Case {
    Case {
        name,
        method: "POST",
        path: PATH.into(),
        headers,
        body: body.into(),
        status,
        code,
        id: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_request_table() {
    if !require(&[Tier::Nats]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path(), "hos");
    cfg.auth.secrets = vec![OLD.into(), NEW.into()];
    cfg.http.max_body_bytes = 64 * 1024;
    cfg.http.max_headers = 40;
    cfg.http.max_header_bytes = 8192;
    cfg.auth.allow_cidrs = vec!["127.0.0.0/8".parse().unwrap()];
    cfg.http.header_timeout = Duration::from_secs(1);
    cfg.http.request_timeout = Duration::from_secs(1);
    let prefix = cfg.routing.prefix.clone();
    let stream = cfg.sink.nats.stream.clone();
    let app = TestApp::start(cfg).await;
    let client = http_client();
    let t = now();
    let valid = |n: u32| body("session.updated", &format!("r{n}"), n as u64).into_bytes();

    let mut cases: Vec<Case> = Vec::new();
    let mut published: Vec<String> = Vec::new();
    let mut ok = |name, id: &str, headers, body: Vec<u8>| {
        published.push(id.to_owned());
        let mut c = case(name, headers, body, 200, None);
        c.id = Some(id.to_owned());
        c
    };
    cases.push(ok(
        "valid, new secret",
        "h-1",
        signed(NEW, "h-1", t, &valid(1)),
        valid(1),
    ));
    cases.push(ok(
        "valid, old secret (rotation)",
        "h-2",
        signed(OLD, "h-2", t, &valid(2)),
        valid(2),
    ));
    let mut multi = signed(NEW, "h-3", t, &valid(3));
    let good_sig = multi[3].1.clone();
    multi[3].1 = format!("v1,AAAA v2,unknown-version {good_sig}");
    cases.push(ok(
        "several signatures, valid one last",
        "h-3",
        multi,
        valid(3),
    ));
    let svix: Vec<(String, String)> = signed(NEW, "h-4", t, &valid(4))
        .into_iter()
        .map(|(k, v)| (k.replace("webhook-", "svix-"), v))
        .collect();
    cases.push(ok("svix-* header spelling", "h-4", svix, valid(4)));
    let mut textplain = signed(NEW, "h-5", t, &valid(5));
    textplain[0].1 = "text/plain".into();
    cases.push(ok(
        "wrong content type, authentic JSON (kept)",
        "h-5",
        textplain,
        valid(5),
    ));
    let mut xff = signed(NEW, "h-6", t, &valid(6));
    xff.push(("x-forwarded-for".into(), "198.51.100.7".into()));
    cases.push(ok(
        "forged X-Forwarded-For from an untrusted peer is ignored",
        "h-6",
        xff,
        valid(6),
    ));
    let hostile_action = br#"{"data":{"id":"x"},"metadata":{"action":"session.>"}}"#.to_vec();
    cases.push(ok(
        "wildcard action goes to the dead-letter subject",
        "h-7",
        signed(NEW, "h-7", t, &hostile_action),
        hostile_action.clone(),
    ));

    // Signature failures: 401, naming the check.
    let v = valid(10);
    let unsigned = vec![("content-type".to_owned(), "application/json".to_owned())];
    cases.push(case(
        "no signature headers",
        unsigned.clone(),
        v.clone(),
        401,
        Some("missing_signature_headers"),
    ));
    let mut no_sig = signed(NEW, "x-1", t, &v);
    no_sig.pop();
    cases.push(case(
        "signature header missing",
        no_sig,
        v.clone(),
        401,
        Some("missing_signature_headers"),
    ));
    let mut no_ts = signed(NEW, "x-2", t, &v);
    no_ts.remove(2);
    cases.push(case(
        "timestamp header missing",
        no_ts,
        v.clone(),
        401,
        Some("missing_signature_headers"),
    ));
    let mut flipped = signed(NEW, "x-3", t, &v);
    let s = flipped[3].1.clone();
    // A character in the middle: the last ones before the padding carry unused bits, and
    // changing those can make the base64 non-canonical (malformed) rather than wrong.
    let mid = s.len() / 2;
    let other = if s.as_bytes()[mid] == b'A' { "B" } else { "A" };
    flipped[3].1 = format!("{}{}{}", &s[..mid], other, &s[mid + 1..]);
    cases.push(case(
        "one character of the signature changed",
        flipped,
        v.clone(),
        401,
        Some("no_matching_signature"),
    ));
    cases.push(case(
        "signature of another body",
        signed(NEW, "x-4", t, &valid(11)),
        v.clone(),
        401,
        Some("no_matching_signature"),
    ));
    cases.push(case(
        "signature by an unknown secret",
        signed("whsec_dGhpcyBpcyBub3QgYSBrZXkgd2UgdXNl", "x-5", t, &v),
        v.clone(),
        401,
        Some("no_matching_signature"),
    ));
    let mut other_id = signed(NEW, "x-6", t, &v);
    other_id[1].1 = "x-6-replayed-under-another-id".into();
    cases.push(case(
        "signature replayed under another id",
        other_id,
        v.clone(),
        401,
        Some("no_matching_signature"),
    ));
    cases.push(case(
        "stale timestamp (10 min old)",
        signed(NEW, "x-7", t - 600, &v),
        v.clone(),
        401,
        Some("timestamp_out_of_tolerance"),
    ));
    cases.push(case(
        "future timestamp (10 min ahead)",
        signed(NEW, "x-8", t + 600, &v),
        v.clone(),
        401,
        Some("timestamp_out_of_tolerance"),
    ));
    let mut bad_ts = signed(NEW, "x-9", t, &v);
    bad_ts[2].1 = "yesterday".into();
    cases.push(case(
        "timestamp not a number",
        bad_ts,
        v.clone(),
        401,
        Some("invalid_timestamp"),
    ));
    let mut garbage = signed(NEW, "x-10", t, &v);
    garbage[3].1 = "garbage".into();
    cases.push(case(
        "signature header garbage",
        garbage,
        v.clone(),
        401,
        Some("malformed_signature"),
    ));
    let mut v2 = signed(NEW, "x-11", t, &v);
    v2[3].1 = "v2,c2lnbmF0dXJl".into();
    cases.push(case(
        "only unknown signature versions",
        v2,
        v.clone(),
        401,
        Some("malformed_signature"),
    ));
    // Conflicting / duplicated / oversized headers.
    let mut conflict = signed(NEW, "x-12", t, &v);
    conflict.push(("svix-id".into(), "x-12-other".into()));
    cases.push(case(
        "webhook-id and svix-id differ",
        conflict,
        v.clone(),
        400,
        Some("conflicting_headers"),
    ));
    let mut dup = signed(NEW, "x-13", t, &v);
    dup.push(("webhook-id".into(), "x-13".into()));
    cases.push(case(
        "webhook-id repeated",
        dup,
        v.clone(),
        400,
        Some("conflicting_headers"),
    ));
    let long = "i".repeat(300);
    cases.push(case(
        "delivery id too long",
        signed(NEW, &long, t, &v),
        v.clone(),
        400,
        Some("invalid_header"),
    ));
    let mut huge = signed(NEW, "x-14", t, &v);
    huge.push(("x-padding".into(), "p".repeat(20_000)));
    cases.push(case("one huge header", huge, v.clone(), 431, None));
    let mut many = signed(NEW, "x-15", t, &v);
    for i in 0..60 {
        many.push((format!("x-h{i}"), "1".into()));
    }
    cases.push(case("too many headers", many, v.clone(), 431, None));
    // Bodies.
    let big = format!(
        r#"{{"data":{{"id":"b","pad":"{}"}},"metadata":{{"action":"a.b"}}}}"#,
        "x".repeat(70_000)
    );
    cases.push(case(
        "body over http.max_body_bytes",
        signed(NEW, "x-16", t, big.as_bytes()),
        big.clone(),
        413,
        Some("payload_too_large"),
    ));
    // Authentic but unusable bodies: acknowledged and dead-lettered, never refused.
    let mut dead = Vec::new();
    let mut keep = |name, id: &str, body: Vec<u8>, reason| {
        dead.push(id.to_owned());
        let mut c = case(name, signed(NEW, id, t, &body), body, 200, Some(reason));
        c.id = Some(id.to_owned());
        c
    };
    cases.push(keep(
        "invalid UTF-8",
        "d-1",
        b"{\"data\":{\"id\":\"\xff\xfe\"}}".to_vec(),
        "invalid_json",
    ));
    let mut bomb = br#"{"metadata":{"action":"a.b"},"data":{"id":"1","x":"#.to_vec();
    bomb.extend(std::iter::repeat_n(b'[', 5000));
    bomb.extend(std::iter::repeat_n(b']', 5000));
    bomb.extend(b"}}");
    cases.push(keep("nesting depth bomb", "d-2", bomb, "invalid_json"));
    cases.push(keep(
        "truncated JSON",
        "d-3",
        v[..v.len() / 2].to_vec(),
        "invalid_json",
    ));
    cases.push(keep(
        "no metadata.action",
        "d-4",
        br#"{"data":{"id":"1"},"metadata":{}}"#.to_vec(),
        "missing_action",
    ));
    cases.push(keep(
        "no data.id",
        "d-5",
        br#"{"data":{},"metadata":{"action":"a.b"}}"#.to_vec(),
        "missing_data_id",
    ));
    cases.push(keep("empty body", "d-6", Vec::new(), "invalid_json"));
    // Wrong method / path (signature irrelevant).
    let mut get = case(
        "GET",
        signed(NEW, "x-17", t, b""),
        Vec::new(),
        405,
        Some("method_not_allowed"),
    );
    get.method = "GET";
    cases.push(get);
    let mut put = case(
        "PUT",
        signed(NEW, "x-18", t, &v),
        v.clone(),
        405,
        Some("method_not_allowed"),
    );
    put.method = "PUT";
    cases.push(put);
    let mut other = case(
        "unknown path",
        signed(NEW, "x-19", t, &v),
        v.clone(),
        404,
        Some("not_found"),
    );
    other.path = "/admin".into();
    cases.push(other);

    assert!(cases.len() >= 30, "{} cases", cases.len());
    for c in &cases {
        let headers: Vec<(&str, &str)> = c
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let (status, _, json) = request(
            &client,
            c.method,
            &format!("http://{}{}", app.http, c.path),
            &headers,
            c.body.clone(),
        )
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", c.name));
        assert_eq!(status, c.status, "{}: {json}", c.name);
        match (status, c.code) {
            (200, Some(reason)) => assert_eq!(json["dead_letter_reason"], reason, "{}", c.name),
            (200, None) => assert_eq!(json["status"], "accepted", "{}", c.name),
            (_, Some(code)) => {
                assert_eq!(json["error"], code, "{}: {json}", c.name);
                let text = json.to_string();
                assert!(
                    !text.contains("MfKQ") && !text.contains("C2FV"),
                    "no secret material"
                );
            }
            _ => {}
        }
    }

    // Slow clients, over raw TCP. A request head not complete within `http.header_timeout`
    // (1 s here) gets no answer: hyper's `header_read_timeout` ends the connection without
    // writing anything (of its own accord hyper answers only unparsable heads: 400, 414, 431),
    // and no handler of ours has run. So: a clean close, nothing sent, at the timeout.
    let started = std::time::Instant::now();
    let (slow_head, end) = raw_exchange(
        app.http,
        &[b"POST /webhooks/sessionboard HTTP/1.1\r\nhost: x\r\n"],
        Duration::from_secs(6),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(
        (slow_head.as_str(), end),
        ("", End::Closed),
        "slow head: closed without a response"
    );
    // Not before the timeout; the upper bound is only "it did time out", several times the
    // timeout, so a busy 2-core machine cannot fail it.
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_secs(5),
        "slow head closed after {took:?}, not at the 1 s header timeout"
    );
    // A trickled body gets 408 and the connection is closed.
    let b = valid(20);
    let head = format!(
        "POST {PATH} HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n",
        b.len() + 10
    );
    let (truncated, end) = raw_exchange(
        app.http,
        &[head.as_bytes(), &b],
        Duration::from_millis(2500),
    )
    .await;
    assert_eq!(end, End::Closed, "truncated body: {truncated}");
    assert!(
        truncated.contains(" 408 "),
        "truncated body must time out, not be stored: {truncated}"
    );

    // Everything acknowledged is on the broker or in the dead-letter store; nothing else is.
    let js = jetstream(&nats_url()).await;
    let got = read_stream(&js, &stream, published.len(), Duration::from_secs(20)).await;
    let ids: HashSet<String> = got
        .iter()
        .map(|m| m.header("webhook-id").unwrap().to_owned())
        .collect();
    assert_eq!(ids, published.iter().cloned().collect::<HashSet<_>>());
    for m in &got {
        let expected = if m.header("webhook-id") == Some("h-7") {
            "unroutable"
        } else {
            "session.updated"
        };
        assert_eq!(m.subject, format!("{prefix}{expected}"));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, _, ready) = request(&client, "GET", &app.admin_url("/readyz"), &[], "")
            .await
            .unwrap();
        if ready["dead_letters"] == dead.len() && ready["backlog_records"] == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{ready}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.stop().await;
    let store = hookbridge::deadletter::DeadLetters::open(dir.path()).unwrap();
    let stored: HashSet<String> = store
        .list()
        .unwrap()
        .into_iter()
        .map(|m| m.unwrap().id)
        .collect();
    assert_eq!(stored, dead.iter().cloned().collect::<HashSet<_>>());
    delete_stream(&js, &stream).await;
}

/// How a [`raw_exchange`] ended.
#[derive(Debug, PartialEq)]
enum End {
    /// The server closed the connection (end of stream).
    Closed,
    /// The server reset the connection.
    Reset,
    /// Still open when the wait ran out.
    Open,
}

/// Writes `parts` to a fresh connection with a pause between them, then reads until the server
/// closes or `wait` passes. Returns what the server sent and how the exchange ended.
async fn raw_exchange(
    addr: std::net::SocketAddr,
    parts: &[&[u8]],
    wait: Duration,
) -> (String, End) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    for p in parts {
        s.write_all(p).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut out = Vec::new();
    let end = match tokio::time::timeout(wait, s.read_to_end(&mut out)).await {
        Ok(Ok(_)) => End::Closed,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => End::Reset,
        Ok(Err(e)) => panic!("reading the answer: {e}"),
        Err(_) => End::Open,
    };
    (String::from_utf8_lossy(&out).into_owned(), end)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_allowlist_uses_forwarded_for_only_from_trusted_proxies() {
    if !require(&[Tier::Nats]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path(), "cidr");
    cfg.auth.secrets = vec![NEW.into()];
    cfg.auth.allow_cidrs = vec!["203.0.113.0/24".parse().unwrap()];
    let stream = cfg.sink.nats.stream.clone();
    let app = TestApp::start(cfg.clone()).await;
    let client = http_client();
    let b = body("session.updated", "r", 1).into_bytes();
    let mut h = signed(NEW, "c-1", now(), &b);
    h.push(("x-forwarded-for".into(), "203.0.113.5".into()));
    let hv: Vec<(&str, &str)> = h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (s, _, json) = request(&client, "POST", &app.url(PATH), &hv, b.clone())
        .await
        .unwrap();
    assert_eq!(
        (s, json["error"].as_str()),
        (403, Some("forbidden_source")),
        "forged header is not believed"
    );
    app.stop().await;

    // Behind a trusted proxy (the test client on loopback plays the proxy) it is believed.
    let dir2 = tempfile::tempdir().unwrap();
    cfg.spool.dir = dir2.path().to_owned();
    cfg.http.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    let app = TestApp::start(cfg).await;
    let (s, _, json) = request(&client, "POST", &app.url(PATH), &hv, b)
        .await
        .unwrap();
    assert_eq!(s, 200, "{json}");
    app.stop().await;
    delete_stream(&jetstream(&nats_url()).await, &stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_delivery_id_is_acknowledged_and_stored_once_also_across_a_restart() {
    if !require(&[Tier::Nats]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path(), "dup");
    cfg.auth.secrets = vec![NEW.into()];
    cfg.sink.nats.mode = hookbridge::config::NatsMode::Core;
    let prefix = cfg.routing.prefix.clone();
    let nats = async_nats::connect(nats_url()).await.unwrap();
    let mut sub = nats.subscribe(format!("{prefix}>")).await.unwrap();
    nats.flush().await.unwrap();
    let client = http_client();
    let b = body("contact.updated", "c", 1).into_bytes();
    let send = |app: &TestApp| {
        let h = signed(NEW, "dup-1", now(), &b);
        let url = app.url(PATH);
        let (client, b) = (client.clone(), b.clone());
        async move {
            let hv: Vec<(&str, &str)> = h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            request(&client, "POST", &url, &hv, b).await.unwrap()
        }
    };

    let app = TestApp::start(cfg.clone()).await;
    let (s, _, first) = send(&app).await;
    assert_eq!((s, first["status"].as_str()), (200, Some("accepted")));
    let (s, _, second) = send(&app).await;
    assert_eq!(
        (s, second["status"].as_str()),
        (200, Some("duplicate")),
        "{second}"
    );
    app.stop().await;

    let app = TestApp::start(cfg).await;
    let (s, _, third) = send(&app).await;
    assert_eq!(
        (s, third["status"].as_str()),
        (200, Some("duplicate")),
        "after a restart: {third}"
    );
    assert_eq!(
        metric(
            &client,
            app.admin,
            "hookbridge_deliveries_duplicate_total",
            ""
        )
        .await,
        1.0
    );

    use futures_util::StreamExt;
    let m = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        m.headers.unwrap().get("webhook-id").unwrap().as_str(),
        "dup-1"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), sub.next())
            .await
            .is_err(),
        "published once"
    );
    app.stop().await;
}
