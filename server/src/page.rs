//! The web page at `/`: one HTML file with its script inline (`server/static/index.html`,
//! compiled into the binary; no build step), speaking only the public `/v1/videos` API.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

const INDEX: &str = include_str!("../static/index.html");

/// `GET /`: the page.
pub async fn index() -> Response {
    let mut r = INDEX.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}
