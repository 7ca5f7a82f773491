//! Sends Sessionboard-shaped deliveries to a hookbridge the way Sessionboard's sender (Svix) does:
//! signed with Standard Webhooks headers and retried with exponential backoff.
//!
//! ```text
//! cargo run --example send_signed -- --secret whsec_… [--url URL] [FILE.json …]
//! ```
//! Without files it sends every `examples/fixtures/*.json`. Each delivery gets a fresh
//! `webhook-id` (`msg_…`), a `webhook-timestamp` and `webhook-signature: v1,<base64 HMAC-SHA256 of
//! "{id}.{timestamp}.{body}">` keyed with the base64-decoded part of the `whsec_` secret (the same
//! function the bridge's own tests sign with). A retry keeps the id, so the bridge's
//! de-duplication sees it as the same delivery, and is signed afresh with the current time.
//!
//! Retries connection errors, 408, 429 and 5xx with exponential backoff (honouring
//! `Retry-After` on 429/503), up to `--attempts`; any other 4xx is final and its body printed.
//! Prints one line per delivery: `<id> <status> attempts=<n> <file>`. Exit code 0 if every
//! delivery got a 2xx, 1 otherwise.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use hookbridge::ingress::signature::{sign_v1, Key};

#[derive(Parser)]
#[command(about = "POST signed Sessionboard deliveries to a hookbridge, retrying like Svix")]
struct Args {
    /// The bridge's webhook URL.
    #[arg(long, default_value = "http://127.0.0.1:8080/webhooks/sessionboard")]
    url: String,
    /// Signing secret, as shown in Sessionboard's webhook settings (`whsec_…`).
    #[arg(long, env = "HOOKBRIDGE_SECRET", hide_env_values = true)]
    secret: String,
    /// Most attempts per delivery.
    #[arg(long, default_value_t = 8)]
    attempts: u32,
    /// First retry delay; doubles on each retry (with jitter), capped at --max-backoff.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    backoff: Duration,
    /// Longest wait between attempts (also caps `Retry-After`).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    max_backoff: Duration,
    /// Time allowed for one attempt, like the sender's own request timeout.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// JSON bodies to send; default: every `examples/fixtures/*.json`.
    files: Vec<PathBuf>,
}

/// How one attempt ended.
enum Outcome {
    Delivered(u16),
    /// Worth another attempt, after the server's `Retry-After` if it gave one.
    Retry(String, Option<Duration>),
    /// A 4xx that will not improve: the status and the body.
    Final(u16, String),
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if !matches!(Key::parse(&args.secret), Ok(Key::Hmac(_))) {
        eprintln!("send_signed: --secret must be a whsec_ secret (base64 of at least 16 bytes)");
        return std::process::ExitCode::from(2);
    }
    let files = if args.files.is_empty() {
        fixtures()
    } else {
        args.files.clone()
    };
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let run = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let mut failed = 0;
    for (n, file) in files.iter().enumerate() {
        let body = match std::fs::read(file) {
            Ok(b) => Bytes::from(b),
            Err(e) => {
                eprintln!("send_signed: {}: {e}", file.display());
                failed += 1;
                continue;
            }
        };
        let id = format!("msg_{run:x}_{n}");
        let (status, attempts) = deliver(&client, &args, &id, body).await;
        if !status.starts_with('2') {
            failed += 1;
        }
        println!("{id} {status} attempts={attempts} {}", file.display());
    }
    if failed == 0 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

/// Sends one delivery until it is acknowledged, refused for good, or out of attempts; returns
/// the last status (or `error`) and the number of attempts.
async fn deliver(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    args: &Args,
    id: &str,
    body: Bytes,
) -> (String, u32) {
    let mut delay = args.backoff;
    for attempt in 1..=args.attempts {
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            .to_string();
        let req = http::Request::post(&args.url)
            .header("content-type", "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", &ts)
            .header("webhook-signature", sign_v1(&args.secret, id, &ts, &body))
            .body(Full::new(body.clone()))
            .expect("valid request parts");
        let outcome = match tokio::time::timeout(args.timeout, attempt_once(client, req)).await {
            Ok(o) => o,
            Err(_) => Outcome::Retry(format!("no answer within {:?}", args.timeout), None),
        };
        let (why, retry_after) = match outcome {
            Outcome::Delivered(code) => return (code.to_string(), attempt),
            Outcome::Final(code, body) => {
                eprintln!("send_signed: {id}: {code} {}", body.trim());
                return (code.to_string(), attempt);
            }
            Outcome::Retry(why, after) => (why, after),
        };
        if attempt == args.attempts {
            eprintln!("send_signed: {id}: giving up after {attempt} attempts: {why}");
            return (why.split(' ').next().unwrap_or("error").to_owned(), attempt);
        }
        // Equal jitter: half the delay fixed, half random, so many senders do not retry in step.
        let wait =
            retry_after.unwrap_or_else(|| delay / 2 + delay.mul_f64(rand::random::<f64>() / 2.0));
        let wait = wait.min(args.max_backoff);
        eprintln!(
            "send_signed: {id}: {why}; attempt {} in {wait:?}",
            attempt + 1
        );
        tokio::time::sleep(wait).await;
        delay = (delay * 2).min(args.max_backoff);
    }
    ("error".to_owned(), args.attempts)
}

async fn attempt_once(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    req: http::Request<Full<Bytes>>,
) -> Outcome {
    let resp = match client.request(req).await {
        Ok(r) => r,
        Err(e) => return Outcome::Retry(format!("error connecting: {e}"), None),
    };
    let code = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let body = match resp.into_body().collect().await {
        Ok(b) => String::from_utf8_lossy(&b.to_bytes()).into_owned(),
        Err(e) => return Outcome::Retry(format!("error reading the answer: {e}"), None),
    };
    match code {
        200..=299 => Outcome::Delivered(code),
        429 | 503 => Outcome::Retry(format!("{code} {}", body.trim()), retry_after),
        408 | 500..=599 => Outcome::Retry(format!("{code} {}", body.trim()), None),
        _ => Outcome::Final(code, body),
    }
}

/// Every `examples/fixtures/*.json`, sorted.
fn fixtures() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/fixtures");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
}
