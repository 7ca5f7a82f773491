//! `/ui`: one server-rendered page and a little inline script, no build step and no CDN.
//! The page holds no data: its script asks for the token, keeps it in `sessionStorage` and
//! calls `/api/v1/` with it as a bearer token, so the page is behind the same token as the API.
//! The Content-Security-Policy allows only this response's script and style (a fresh nonce each
//! time) and connections to this origin.

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;

use crate::server::HttpResponse;

const PAGE: &str = include_str!("ui.html");

pub fn page() -> HttpResponse {
    let nonce = {
        use base64::Engine;
        let raw: [u8; 16] = rand::random();
        base64::engine::general_purpose::STANDARD.encode(raw)
    };
    let csp = format!(
        "default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    );
    Response::builder()
        .header(http::header::CONTENT_TYPE, "text/html; charset=utf-8")
        .header(http::header::CONTENT_SECURITY_POLICY, csp)
        .header(http::header::CACHE_CONTROL, "no-store")
        .header(http::header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header("referrer-policy", "no-referrer")
        .body(Full::new(Bytes::from(PAGE.replace("{{NONCE}}", &nonce))))
        .expect("static response parts are valid")
}
