//! The HTTP routes: OpenAI's Videos API (`POST/GET /v1/videos`, `GET/DELETE /v1/videos/{id}`,
//! `GET /v1/videos/{id}/content` with Range and `variant=thumbnail` — from this data dir, else
//! from the shared queue's database — `GET
//! /v1/videos/{id}/events` as server-sent events), `GET /healthz` and `GET /metrics`
//! (Prometheus text). Bodies are read by hand so every rejection — bad JSON, an unknown field,
//! a body over the limit — answers in the OpenAI error shape (never axum's default 422), and ids
//! are checked for the server's own form before any lookup, so no request names a path.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::Value;

use crate::error::ApiError;
use crate::queue::{JobQueue, JobStatus, Order, QueueError, Variant};
use crate::request::{JobSettings, Limits, is_job_id, new_id, parse};
use crate::video::VideoObject;
use crate::worker::{Running, now, remove_files, thumbnail_path, video_path};

/// What the routes share.
pub struct AppState {
    pub queue: Arc<dyn JobQueue>,
    pub data_dir: PathBuf,
    pub limits: Limits,
    pub api_key: Option<String>,
    pub max_queue: usize,
    pub running: Running,
    pub ready: AtomicBool,
    /// `openai-poll-after-ms`.
    pub poll_after_ms: u64,
    pub body_limit: usize,
    pub wakeup: Arc<crate::worker::Wakeup>,
    pub metrics: Arc<crate::metrics::Metrics>,
}

type Shared = Arc<AppState>;

fn db_err(e: QueueError) -> ApiError {
    match e {
        QueueError::Full { queued, .. } => ApiError::queue_full(queued, 30),
        other => ApiError::internal(other.to_string()),
    }
}

/// Run a queue call off the async threads.
async fn db<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, QueueError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("queue task: {e}")))?
        .map_err(db_err)
}

/// Constant-time comparison of the bearer token with the key.
fn authorized(headers: &HeaderMap, key: &str) -> bool {
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let (a, b) = (given.as_bytes(), key.as_bytes());
    let mut diff = (a.len() ^ b.len()) as u8;
    for i in 0..a.len().max(b.len()) {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

fn check_key(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    match &state.api_key {
        Some(k) if !authorized(headers, k) => Err(ApiError::unauthorized()),
        _ => Ok(()),
    }
}

fn check_id(id: &str) -> Result<(), ApiError> {
    if is_job_id(id) {
        Ok(())
    } else {
        Err(ApiError::not_found(format!("no video `{id}`")))
    }
}

async fn object(state: &Shared, id: &str) -> Result<VideoObject, ApiError> {
    check_id(id)?;
    let q = state.queue.clone();
    let key = id.to_owned();
    let job = db(move || q.get(&key))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no video `{id}`")))?;
    let settings: JobSettings = serde_json::from_str(&job.settings)
        .map_err(|e| ApiError::internal(format!("job {id}: stored settings: {e}")))?;
    Ok(VideoObject::new(&job, &settings))
}

fn with_poll_header(state: &AppState, body: impl IntoResponse) -> Response {
    let mut r = body.into_response();
    if let Ok(v) = HeaderValue::from_str(&state.poll_after_ms.to_string()) {
        r.headers_mut().insert("openai-poll-after-ms", v);
    }
    r
}

/// The create body's fields, from JSON or multipart/form-data.
async fn fields(state: &Shared, req: Request) -> Result<BTreeMap<String, Value>, ApiError> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, state.body_limit)
        .await
        .map_err(|_| ApiError::too_large(state.body_limit))?;
    if content_type.starts_with("multipart/form-data") {
        let req = Request::from_parts(parts, Body::from(bytes));
        let mut mp = Multipart::from_request(req, &())
            .await
            .map_err(|e| ApiError::bad_request(format!("multipart body: {e}")))?;
        let mut out = BTreeMap::new();
        while let Some(field) = mp
            .next_field()
            .await
            .map_err(|e| ApiError::bad_request(format!("multipart body: {e}")))?
        {
            let name = field.name().unwrap_or_default().to_owned();
            if field.file_name().is_some() {
                return Err(ApiError::invalid(
                    &name,
                    "file uploads are not accepted by this text-to-video server",
                ));
            }
            let text = field
                .text()
                .await
                .map_err(|e| ApiError::invalid(&name, format!("not text: {e}")))?;
            out.insert(name, Value::String(text));
        }
        Ok(out)
    } else {
        let v: Value = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))?;
        match v {
            Value::Object(m) => Ok(m.into_iter().collect()),
            _ => Err(ApiError::bad_request("the body must be a JSON object")),
        }
    }
}

async fn create(State(state): State<Shared>, req: Request) -> Result<Response, ApiError> {
    check_key(&state, req.headers())?;
    let idempotency = req
        .headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let fields = fields(&state, req).await?;
    let settings = parse(&fields, &state.limits)?;
    let json = serde_json::to_string(&settings)
        .map_err(|e| ApiError::internal(format!("settings: {e}")))?;
    let (q, max) = (state.queue.clone(), state.max_queue);
    let id = new_id();
    let created = db(move || q.create(&id, &json, idempotency.as_deref(), max, now())).await?;
    state.wakeup.notify();
    let stored: JobSettings = serde_json::from_str(&created.job.settings)
        .map_err(|e| ApiError::internal(format!("stored settings: {e}")))?;
    eprintln!(
        "job {}: {} (model {})",
        created.job.id,
        if created.existing {
            "idempotent retry"
        } else {
            "queued"
        },
        stored.model
    );
    Ok(with_poll_header(
        &state,
        Json(VideoObject::new(&created.job, &stored)),
    ))
}

async fn retrieve(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    check_key(&state, &headers)?;
    let o = object(&state, &id).await?;
    Ok(with_poll_header(&state, Json(o)))
}

async fn list(
    State(state): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<BTreeMap<String, String>>,
) -> Result<Response, ApiError> {
    check_key(&state, &headers)?;
    if let Some(k) = q
        .keys()
        .find(|k| !["after", "limit", "order"].contains(&k.as_str()))
    {
        return Err(ApiError::invalid(k, "unknown query parameter"));
    }
    let limit = match q.get("limit") {
        None => 20,
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=100).contains(&n) => n,
            _ => {
                return Err(ApiError::invalid(
                    "limit",
                    format!("`{l}` is not in 1..=100"),
                ));
            }
        },
    };
    let order = match q.get("order").map(String::as_str) {
        None | Some("desc") => Order::Desc,
        Some("asc") => Order::Asc,
        Some(o) => return Err(ApiError::invalid("order", format!("`{o}`: asc or desc"))),
    };
    let after = q.get("after").cloned();
    if let Some(a) = &after {
        check_id(a).map_err(|_| ApiError::invalid("after", format!("`{a}` is not a video id")))?;
    }
    let queue = state.queue.clone();
    let (jobs, has_more) = db(move || queue.list(after.as_deref(), limit, order)).await?;
    let mut data = Vec::with_capacity(jobs.len());
    for j in &jobs {
        let s: JobSettings = serde_json::from_str(&j.settings)
            .map_err(|e| ApiError::internal(format!("job {}: stored settings: {e}", j.id)))?;
        data.push(VideoObject::new(j, &s));
    }
    Ok(Json(serde_json::json!({
        "object": "list",
        "first_id": data.first().map(|v| v.id.clone()),
        "last_id": data.last().map(|v| v.id.clone()),
        "has_more": has_more,
        "data": data,
    }))
    .into_response())
}

/// `bytes=a-b` / `bytes=a-` / `bytes=-n` of a `len`-byte file, as an inclusive range.
pub fn byte_range(header: &str, len: u64) -> Option<(u64, u64)> {
    let spec = header.trim().strip_prefix("bytes=")?;
    if spec.contains(',') || len == 0 {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().ok()?;
            (len.saturating_sub(n), len - 1)
        }
        (a, "") => (a.parse().ok()?, len - 1),
        (a, b) => (a.parse().ok()?, b.parse::<u64>().ok()?.min(len - 1)),
    };
    (start <= end && start < len).then_some((start, end))
}

async fn content(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Result<Response, ApiError> {
    check_key(&state, &headers)?;
    let o = object(&state, &id).await?;
    let (variant, path, mime) = match q.get("variant").map(String::as_str) {
        None | Some("video") => (
            Variant::Video,
            video_path(&state.data_dir, &o.id),
            "video/mp4",
        ),
        Some("thumbnail") => (
            Variant::Thumbnail,
            thumbnail_path(&state.data_dir, &o.id),
            "image/png",
        ),
        Some(v) => return Err(ApiError::not_found(format!("no `{v}` variant of a video"))),
    };
    if o.status != JobStatus::Completed {
        return Err(ApiError::not_found(format!(
            "video `{}` is {}; its content exists once it is completed",
            o.id,
            o.status.as_str()
        )));
    }
    // This server's data dir first; a shared queue also has every video in the database.
    let bytes = match tokio::fs::read(&path).await {
        Ok(b) => b,
        Err(_) => {
            let (q, key) = (state.queue.clone(), o.id.clone());
            db(move || q.stored_content(&key, variant))
                .await?
                .ok_or_else(|| ApiError::not_found(format!("the content of `{}` is gone", o.id)))?
        }
    };
    let len = bytes.len() as u64;
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(|r| byte_range(r, len));
    let mut r = match range {
        None => (StatusCode::OK, Bytes::from(bytes)).into_response(),
        Some(None) => {
            let mut r = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(r);
        }
        Some(Some((a, b))) => {
            let part = Bytes::from(bytes).slice(a as usize..=b as usize);
            let mut r = (StatusCode::PARTIAL_CONTENT, part).into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {a}-{b}/{len}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            r
        }
    };
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(mime));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    Ok(r)
}

async fn delete(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    check_key(&state, &headers)?;
    check_id(&id)?;
    if let Ok(r) = state.running.lock()
        && let Some(c) = r.get(&id)
    {
        c.cancel();
    }
    let (q, dir, key) = (state.queue.clone(), state.data_dir.clone(), id.clone());
    let deleted = db(move || {
        let deleted = q.delete(&key)?;
        remove_files(&dir, &key);
        Ok(deleted)
    })
    .await?;
    if !deleted {
        return Err(ApiError::not_found(format!("no video `{id}`")));
    }
    eprintln!("job {id}: deleted");
    Ok(
        Json(serde_json::json!({"id": id, "object": "video.deleted", "deleted": true}))
            .into_response(),
    )
}

async fn events(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    check_key(&state, &headers)?;
    let first = object(&state, &id).await?;
    // One event per status or progress change, polled from the queue (which every server of a
    // shared queue sees); the stream ends after the final state (or when the job is deleted).
    type Seen = Option<(JobStatus, u8)>;
    let stream = futures_util::stream::unfold(
        (state, first.id, None::<(JobStatus, u8)>, false),
        |(state, id, last, done): (Shared, String, Seen, bool)| async move {
            if done {
                return None;
            }
            loop {
                let o = object(&state, &id).await.ok()?;
                let key = (o.status, o.progress);
                if Some(key) != last {
                    let data = serde_json::to_string(&o).unwrap_or_default();
                    let ev: Result<Event, std::convert::Infallible> =
                        Ok(Event::default().data(data));
                    let done = o.is_final();
                    return Some((ev, (state, id, Some(key), done)));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        },
    );
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

async fn healthz(State(state): State<Shared>) -> Response {
    if state.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "loading\n").into_response()
    }
}

async fn metrics(State(state): State<Shared>) -> Result<Response, ApiError> {
    let q = state.queue.clone();
    let counts = db(move || q.counts()).await?;
    let mut out = String::from(
        "# HELP hyvideo_jobs Jobs in the queue by status.\n# TYPE hyvideo_jobs gauge\n",
    );
    for (status, n) in counts {
        out.push_str(&format!(
            "hyvideo_jobs{{status=\"{}\"}} {n}\n",
            status.as_str()
        ));
    }
    out.push_str(&state.metrics.render());
    let mut r = (StatusCode::OK, out).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    Ok(r)
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

/// The server's routes over `state`.
pub fn router(state: Shared) -> Router {
    Router::new()
        .route("/v1/videos", get(list).post(create))
        .route("/v1/videos/{id}", get(retrieve).delete(delete))
        .route("/v1/videos/{id}/content", get(content))
        .route("/v1/videos/{id}/events", get(events))
        .route("/", get(crate::page::index))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_parsed_as_rfc_9110_says() {
        assert_eq!(byte_range("bytes=0-9", 100), Some((0, 9)));
        assert_eq!(byte_range("bytes=90-", 100), Some((90, 99)));
        assert_eq!(byte_range("bytes=-10", 100), Some((90, 99)));
        assert_eq!(byte_range("bytes=50-500", 100), Some((50, 99)));
        for bad in [
            "bytes=100-",
            "bytes=9-0",
            "items=0-1",
            "bytes=0-1,3-4",
            "bytes=x-1",
        ] {
            assert_eq!(byte_range(bad, 100), None, "{bad}");
        }
    }

    #[test]
    fn bearer_keys_compare_exactly() {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer s3cret"),
        );
        assert!(authorized(&h, "s3cret"));
        assert!(!authorized(&h, "s3cre"));
        assert!(!authorized(&h, "s3cret!"));
        assert!(!authorized(&HeaderMap::new(), "s3cret"));
    }
}
