//! The web page at `/`: one HTML file with its script and style inline
//! (`server/static/index.html`, compiled into the binary; no build step, no external resources),
//! speaking only the public `/v1/videos` API (and `GET /v1/server`, which says whether the bundle
//! is image-to-video: then the page shows an image file input, sent as the multipart
//! `input_reference`) with the key the user enters (kept in the browser's localStorage, sent as
//! `Authorization: Bearer`). Served with a strict
//! `Content-Security-Policy`: inline script and style, fetches to this origin only, media from
//! `blob:` URLs (the page fetches each MP4 with the key and plays it from a blob), images
//! only as `data:` URLs (the empty favicon), nothing else.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

const INDEX: &str = include_str!("../static/index.html");

/// The page's `Content-Security-Policy`.
pub const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; \
    style-src 'unsafe-inline'; connect-src 'self'; media-src blob:; img-src data:; \
    base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// `GET /`: the page.
pub async fn index() -> Response {
    let mut r = INDEX.into_response();
    for (k, v) in [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (header::CONTENT_SECURITY_POLICY, CSP),
        // A new binary's page is picked up at once (revalidated, never served stale).
        (header::CACHE_CONTROL, "no-cache"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
    ] {
        r.headers_mut().insert(k, HeaderValue::from_static(v));
    }
    r
}
