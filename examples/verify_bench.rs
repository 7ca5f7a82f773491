//! Cost of signature verification per request: times `ingress::signature::verify` (HMAC-SHA256
//! over `{id}.{timestamp}.{body}` plus the constant-time compare) for typical and large bodies,
//! with one secret and with two (rotation), and the body scan that follows it.
//!
//! ```text
//! cargo run --release --example verify_bench
//! ```

use std::time::{Duration, Instant};

use hookbridge::ingress::{envelope, signature};

fn time<F: FnMut()>(iterations: u32, mut f: F) -> Duration {
    for _ in 0..iterations / 10 {
        f(); // warm up
    }
    let start = Instant::now();
    for _ in 0..iterations {
        f();
    }
    start.elapsed() / iterations
}

fn main() {
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let old = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    let one = [signature::Key::parse(secret).unwrap()];
    let two = [
        signature::Key::parse(old).unwrap(),
        signature::Key::parse(secret).unwrap(),
    ];
    let tolerance = Duration::from_secs(300);
    let fixture = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/fixtures/session.updated.json"
    ))
    .unwrap();
    println!(
        "{:<28} {:>10} {:>14} {:>14} {:>14}",
        "body", "bytes", "verify 1 key", "verify 2 keys", "envelope scan"
    );
    for (name, body) in [
        ("session.updated fixture", fixture.clone()),
        ("64 KiB", pad(&fixture, 64 * 1024)),
        ("1 MiB (the default limit)", pad(&fixture, 1024 * 1024)),
    ] {
        let (id, ts) = ("msg_bench", "1700000000");
        let sig = signature::sign_v1(secret, id, ts, &body);
        let iterations = (20_000_000 / body.len().max(1000)) as u32;
        let v1 = time(iterations, || {
            signature::verify(&one, tolerance, id, ts, &sig, &body, 1_700_000_000).unwrap();
        });
        let v2 = time(iterations, || {
            signature::verify(&two, tolerance, id, ts, &sig, &body, 1_700_000_000).unwrap();
        });
        let scan = time(iterations, || {
            envelope::parse(&body).unwrap();
        });
        println!(
            "{name:<28} {:>10} {:>11.1} µs {:>11.1} µs {:>11.1} µs",
            body.len(),
            us(v1),
            us(v2),
            us(scan)
        );
    }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// The fixture with a padding field so the body is about `size` bytes.
fn pad(fixture: &[u8], size: usize) -> Vec<u8> {
    let text = String::from_utf8(fixture.to_vec()).unwrap();
    let padded = text.replacen(
        "\"data\": {",
        &format!(
            "\"data\": {{\n    \"pad\": \"{}\",",
            "x".repeat(size.saturating_sub(fixture.len()))
        ),
        1,
    );
    padded.into_bytes()
}
