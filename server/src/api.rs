//! The HTTP routes: OpenAI's Videos API (`POST/GET /v1/videos`, `GET/DELETE /v1/videos/{id}`,
//! `GET /v1/videos/{id}/content` with Range and `variant=thumbnail` — from this data dir, else
//! from the shared queue's database — `GET
//! /v1/videos/{id}/events` as server-sent events), `GET /v1/server` (what this server runs and
//! accepts: the web page reads it), `GET /healthz` and `GET /metrics` (Prometheus text). Bodies
//! are read by hand so every rejection — bad JSON, an unknown field, a body over the limit —
//! answers in the OpenAI error shape (never axum's default 422), and ids are checked for the
//! server's own form before any lookup, so no request names a path.
//!
//! A create body's fields may take the body limit (`body_limit`, 1 MiB); an `input_reference`
//! image may take `Limits::max_image_bytes` more (as base64 in JSON, a third more). Multipart
//! bodies are read part by part, so an image over its limit is refused (413 naming
//! `input_reference`) as soon as its part says so.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::Value;

use crate::error::ApiError;
use crate::input_reference::{self as image_input, InputReference, media_type, shown_name};
use crate::queue::{JobQueue, JobStatus, Order, QueueError, Variant};
use crate::request::{JobSettings, Limits, MODEL, is_job_id, new_id, parse_create};
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

/// A create body as read: its fields, and the image if it came as a file part.
struct CreateBody {
    fields: BTreeMap<String, Value>,
    upload: Option<InputReference>,
}

/// Bytes of the text of `input_reference` (a data URL) at most: the image's base64 and room for
/// its `data:…;base64,` prefix and JSON quoting.
fn image_text_limit(limits: &Limits) -> usize {
    limits.max_image_bytes.div_ceil(3).saturating_mul(4) + 1024
}

/// The hard limit of a create body: the fields' limit plus the image's, as base64.
pub fn create_body_limit(body_limit: usize, limits: &Limits) -> usize {
    body_limit.saturating_add(image_text_limit(limits))
}

/// Whether a multipart part named `input_reference` is the image file itself rather than its
/// URL as text: it has a file name, or a content type that is not text.
fn is_file_part(file_name: Option<&str>, content_type: Option<&str>) -> bool {
    file_name.is_some() || content_type.is_some_and(|t| !media_type(t).starts_with("text/"))
}

fn multipart_error(e: axum::extract::multipart::MultipartError, limit: usize) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::too_large(limit)
    } else {
        ApiError::bad_request(format!("multipart body: {}", e.body_text()))
    }
}

/// The create body, from JSON or multipart/form-data.
async fn read_create(state: &Shared, req: Request) -> Result<CreateBody, ApiError> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let limits = &state.limits;
    let hard = create_body_limit(state.body_limit, limits);
    if content_type.starts_with("multipart/form-data") {
        return read_multipart(state, req, hard).await;
    }
    let bytes = axum::body::to_bytes(req.into_body(), hard)
        .await
        .map_err(|_| ApiError::too_large(hard))?;
    let parsed = serde_json::from_slice::<Value>(&bytes);
    if bytes.len() > state.body_limit {
        // Only the image may take more than the body limit.
        let image_len = match &parsed {
            Ok(Value::Object(m)) => match m.get(image_input::FIELD) {
                Some(Value::String(s)) => s.len(),
                Some(Value::Object(o)) => o
                    .get("image_url")
                    .and_then(Value::as_str)
                    .map_or(0, str::len),
                _ => 0,
            },
            _ => 0,
        };
        if bytes.len().saturating_sub(image_len) > state.body_limit {
            return Err(ApiError::too_large(state.body_limit));
        }
    }
    let v = parsed.map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))?;
    match v {
        Value::Object(m) => Ok(CreateBody {
            fields: m.into_iter().collect(),
            upload: None,
        }),
        _ => Err(ApiError::bad_request("the body must be a JSON object")),
    }
}

/// A multipart body, part by part: text fields within the body limit, one image file part
/// (`input_reference`) within the image limit. OpenAI's object form of `input_reference`
/// arrives as `input_reference[image_url]` / `input_reference[file_id]` text fields.
async fn read_multipart(state: &Shared, req: Request, hard: usize) -> Result<CreateBody, ApiError> {
    let limits = &state.limits;
    let mut mp = Multipart::from_request(req, &())
        .await
        .map_err(|e| ApiError::bad_request(format!("multipart body: {e}")))?;
    let mut fields = BTreeMap::new();
    let mut reference = serde_json::Map::new();
    let mut upload: Option<InputReference> = None;
    let mut text_bytes = 0usize;
    while let Some(mut field) = mp
        .next_field()
        .await
        .map_err(|e| multipart_error(e, hard))?
    {
        let name = field.name().unwrap_or_default().to_owned();
        let file_name = field.file_name().map(str::to_owned);
        let part_type = field.content_type().map(str::to_owned);
        if name == image_input::FIELD && is_file_part(file_name.as_deref(), part_type.as_deref()) {
            if upload.is_some() {
                return Err(ApiError::invalid(image_input::FIELD, "given twice"));
            }
            let mut bytes = Vec::new();
            let mut size = 0usize;
            while let Some(chunk) = field.chunk().await.map_err(|e| multipart_error(e, hard))? {
                size += chunk.len();
                // Past the limit the rest is read and dropped (answering before the client has
                // sent it all would make it see a reset connection, not the 413).
                if size <= limits.max_image_bytes {
                    bytes.extend_from_slice(&chunk);
                }
            }
            if size > limits.max_image_bytes {
                return Err(image_input::too_large(Some(size), limits.max_image_bytes));
            }
            upload = Some(InputReference {
                bytes,
                content_type: part_type.as_deref().map(media_type),
                name: shown_name(file_name.as_deref()),
            });
            continue;
        }
        if file_name.is_some() {
            return Err(ApiError::invalid(
                &name,
                "file uploads are accepted only as input_reference (the image of an \
                 image-to-video job)",
            ));
        }
        let is_reference =
            name == image_input::FIELD || name.starts_with(&format!("{}[", image_input::FIELD));
        let budget = if is_reference {
            image_text_limit(limits)
        } else {
            state.body_limit
        };
        let mut buf = Vec::new();
        while let Some(chunk) = field.chunk().await.map_err(|e| multipart_error(e, hard))? {
            buf.extend_from_slice(&chunk);
            if is_reference && buf.len() > budget {
                return Err(image_input::too_large(None, limits.max_image_bytes));
            }
            if !is_reference && text_bytes + name.len() + buf.len() > budget {
                return Err(ApiError::too_large(state.body_limit));
            }
        }
        if !is_reference {
            text_bytes += name.len() + buf.len();
        }
        let text = String::from_utf8(buf)
            .map_err(|_| ApiError::invalid(&name, "not text: the value is not UTF-8"))?;
        let key = name
            .strip_prefix(image_input::FIELD)
            .and_then(|k| k.strip_prefix('['))
            .and_then(|k| k.strip_suffix(']'));
        match key {
            Some(k) => {
                reference.insert(k.to_owned(), Value::String(text));
            }
            None => {
                fields.insert(name, Value::String(text));
            }
        }
    }
    if !reference.is_empty() {
        if fields.contains_key(image_input::FIELD) {
            return Err(ApiError::invalid(image_input::FIELD, "given twice"));
        }
        fields.insert(image_input::FIELD.to_owned(), Value::Object(reference));
    }
    Ok(CreateBody { fields, upload })
}

async fn create(State(state): State<Shared>, req: Request) -> Result<Response, ApiError> {
    check_key(&state, req.headers())?;
    let idempotency = req
        .headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = read_create(&state, req).await?;
    // Decoding an image is CPU work: off the async threads.
    let limits = state.limits.clone();
    let created =
        tokio::task::spawn_blocking(move || parse_create(&body.fields, body.upload, &limits))
            .await
            .map_err(|e| ApiError::internal(format!("request task: {e}")))??;
    let json = serde_json::to_string(&created.settings)
        .map_err(|e| ApiError::internal(format!("settings: {e}")))?;
    let (q, max) = (state.queue.clone(), state.max_queue);
    let id = new_id();
    let image = created.image;
    let created = db(move || {
        q.create_with_image(
            &id,
            &json,
            idempotency.as_deref(),
            max,
            now(),
            image.as_deref(),
        )
    })
    .await?;
    state.wakeup.notify();
    let stored: JobSettings = serde_json::from_str(&created.job.settings)
        .map_err(|e| ApiError::internal(format!("stored settings: {e}")))?;
    eprintln!(
        "job {}: {} (model {}{})",
        created.job.id,
        if created.existing {
            "idempotent retry"
        } else {
            "queued"
        },
        stored.model,
        match &stored.input_reference {
            Some(i) => format!(
                ", input_reference {}x{} {} of {} bytes",
                i.width, i.height, i.format, i.bytes
            ),
            None => String::new(),
        }
    );
    Ok(with_poll_header(
        &state,
        Json(VideoObject::new(&created.job, &stored)),
    ))
}

/// `GET /v1/server`: what this server runs and accepts (read-only; the web page shows the
/// image input when `image_to_video`, and takes its guidance default from here).
async fn server_info(
    State(state): State<Shared>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_key(&state, &headers)?;
    let l = &state.limits;
    let kind = l.image_condition;
    Ok(Json(serde_json::json!({
        "object": "server",
        "model": MODEL,
        "image_to_video": kind.is_image_to_video(),
        "image_condition": kind.config_value(),
        "input_reference": {
            "required": kind.is_image_to_video(),
            "content_types": image_input::CONTENT_TYPES,
            "max_bytes": l.max_image_bytes,
        },
        "defaults": {
            "guidance_scale": hyvideo::generation::Sampling::default_embedded_guidance(kind),
            "min_frames": if kind == hyvideo_bundle::ImageCondition::LatentConcat { 5 } else { 1 },
        },
        "limits": {
            "max_steps": l.max_steps,
            "max_frames": l.max_frames,
            "max_size": l.max_size,
            "max_prompt_chars": l.max_prompt_chars,
            "engine_max": l.engine_max,
            "step_cache": l.step_cache,
        },
    }))
    .into_response())
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
    // Multipart bodies are streamed under this hard limit (JSON ones are read under it by hand).
    let hard = create_body_limit(state.body_limit, &state.limits);
    Router::new()
        .route("/v1/videos", get(list).post(create))
        .route("/v1/server", get(server_info))
        .route("/v1/videos/{id}", get(retrieve).delete(delete))
        .route("/v1/videos/{id}/content", get(content))
        .route("/v1/videos/{id}/events", get(events))
        .route("/", get(crate::page::index))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(hard))
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
