//! The web page at `/` in a real headless Chromium (Debian's `chromium` and `chromium-driver`,
//! which `scripts/setup-test-services.sh` installs), driven over WebDriver, against the server
//! in-process on the tiny bundle with an API key: the page asks for the key, shows the server's
//! 400 naming the field, submits a job, follows its events to `completed` and plays the MP4
//! inline (a `<video>` at 48x32, playing); after a reload the stored key lists it again; its
//! delete button removes it. A screenshot goes to `/tmp/hyvideo-page.png`. On an image-to-video
//! server (the tiny HunyuanVideo-I2V) the page shows its image input (hidden on text-to-video),
//! shows the 400 naming `input_reference` without an image, and sends the chosen file (set
//! through WebDriver as ChromeDriver sets file inputs: the path typed into the element) as the
//! multipart `input_reference`: the job completes from it and plays.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use hyvideo::generation::{Pipeline, StageConfigs};
use hyvideo_engines::SessionConfig;
use hyvideo_server::serve::{ServeConfig, Server};
use serde_json::Value;

use crate::http_client::http;
use crate::webdriver::Browser;

const KEY: &str = "page-key";
const PROMPT: &str = "A cat walks on the grass, realistic style.";
const SCREENSHOT: &str = "/tmp/hyvideo-page.png";

/// The in-process server's configuration, with the page's key.
fn config(data: &Path) -> ServeConfig {
    ServeConfig {
        api_key: Some(KEY.into()),
        worker_id: "page-worker".into(),
        ..crate::serve::config(data)
    }
}

fn api(addr: SocketAddr, method: &str, path: &str) -> (u16, Value) {
    let auth = format!("Bearer {KEY}");
    let a = http(addr, method, path, &[("Authorization", auth.as_str())], b"");
    let v = if a.body.is_empty() {
        Value::Null
    } else {
        a.json()
    };
    (a.status, v)
}

/// Collect the page's uncaught errors, rejected promises and CSP violations in `__errors`.
const WATCH_ERRORS: &str = "window.__errors = [];
    addEventListener('error', e => __errors.push('error: ' + e.message));
    addEventListener('unhandledrejection', e => __errors.push('rejection: ' + e.reason));
    document.addEventListener('securitypolicyviolation',
      e => __errors.push('csp: ' + e.violatedDirective + ' ' + e.blockedURI));";

fn assert_no_page_errors(b: &Browser) {
    let errors = b.js("return window.__errors;", &[]);
    assert_eq!(errors, serde_json::json!([]), "the page's errors");
}

/// The row of `id`, its `<video>` and `<progress>`, as the test reads them.
const ROW_STATE: &str = "const id = arguments[0];
    const row = document.querySelector(`[data-video-id=\"${id}\"]`);
    if (!row) return {ok: false, row: null};
    const v = row.querySelector('video'), p = row.querySelector('progress');
    const s = {
      status: row.querySelector('.status').textContent,
      progress: p.value, pct: row.querySelector('.pct').textContent,
      rowError: row.querySelector('.error').textContent,
      video: v && {readyState: v.readyState, paused: v.paused, t: v.currentTime,
                   width: v.videoWidth, height: v.videoHeight, muted: v.muted, loop: v.loop,
                   error: v.error && {code: v.error.code, message: v.error.message},
                   src: v.src.slice(0, 5)},
    };
    s.ok = s.status === 'completed' && !!v && v.readyState >= 2 && !v.paused && v.currentTime > 0;
    return s;";

fn row_state(b: &Browser, id: &str, what: &str, limit: Duration) -> Value {
    let script = format!("return (function() {{ {ROW_STATE} }}).apply(null, ['{id}']);");
    b.wait(what, limit, &script)
}

#[test]
fn the_page_submits_a_job_follows_it_and_plays_the_video() {
    let t0 = Instant::now();
    // The browser first: a missing Chromium fails at once with what to run.
    let b = Browser::start();
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(config(data.path()), crate::serve::pipeline()).unwrap();
    let addr = server.addr();
    let url = format!("http://{addr}/");
    eprintln!("web_page: browser and server up in {:.1?}", t0.elapsed());

    // The page itself: open, with a strict content security policy.
    let page = http(addr, "GET", "/", &[], b"");
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let csp = page.header("content-security-policy").unwrap_or_default();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("media-src blob:"),
        "{csp}"
    );

    // Without a key the list answers 401, and the page asks for the key.
    b.goto(&url);
    b.js(WATCH_ERRORS, &[]);
    let asked = b.wait(
        "the page asks for the API key",
        Duration::from_secs(30),
        "const s = document.querySelector('#key-status').textContent;
         return {ok: s.includes('API key') && document.activeElement.id === 'api-key',
                 status: s, focus: document.activeElement.id};",
    );
    eprintln!("web_page: asked for the key: {}", asked["status"]);
    b.fill("#api-key", KEY);
    b.click("#save-key");
    b.wait(
        "the list loads with the key",
        Duration::from_secs(30),
        "const l = document.querySelector('#videos');
         return {ok: l.dataset.loaded === 'true' && l.querySelectorAll('[data-video-id]').length === 0,
                 list: document.querySelector('#list-status').textContent,
                 key: document.querySelector('#key-status').textContent};",
    );
    // Text-to-video: the server says so, and there is no image input.
    b.wait(
        "the server info says text-to-video",
        Duration::from_secs(30),
        "return {ok: document.querySelector('#kind').textContent === 'text-to-video'
                     && document.querySelector('#image-box').hidden,
                 kind: document.querySelector('#kind').textContent};",
    );

    // A frame count that is not 4k + 1: the server's 400 shown next to the form, naming the
    // field, which is marked invalid; no job made.
    let custom = "return [document.querySelector('#width').checkVisibility(),
                          document.querySelector('#size').value];";
    assert_eq!(
        b.js(custom, &[]),
        serde_json::json!([false, "960x544"]),
        "custom size hidden"
    );
    b.click("#size option[value='custom']");
    assert_eq!(
        b.js(custom, &[]),
        serde_json::json!([true, "custom"]),
        "custom size shown"
    );
    b.fill("#prompt", PROMPT);
    b.click("#size option[value='48x32']");
    assert_eq!(b.js(custom, &[]), serde_json::json!([false, "48x32"]));
    b.fill("#frames", "10");
    b.fill("#steps", "4");
    b.fill("#seed", "42");
    b.click("#submit");
    let shown = b.wait(
        "the server's error on the page",
        Duration::from_secs(30),
        "const e = document.querySelector('#form-error').textContent;
         const f = document.querySelector('#frames');
         return {ok: e.includes('num_frames') && e.includes('4k + 1')
                     && f.getAttribute('aria-invalid') === 'true'
                     && document.activeElement === f,
                 error: e, invalid: f.getAttribute('aria-invalid'),
                 focus: document.activeElement.id,
                 rows: document.querySelectorAll('[data-video-id]').length};",
    );
    assert_eq!(shown["rows"], 0, "{shown}");
    eprintln!("web_page: error shown: {}", shown["error"]);
    let (s, list) = api(addr, "GET", "/v1/videos");
    assert_eq!((s, &list["data"]), (200, &serde_json::json!([])), "{list}");

    // Fixed: the job is made, its row appears at the top and follows the events.
    b.js(
        "window.__statuses = [];
         new MutationObserver(() => {
           const s = document.querySelector('[data-video-id] .status');
           const p = document.querySelector('[data-video-id] progress');
           const seen = s && `${s.textContent} ${p.value}`;
           if (seen && __statuses[__statuses.length - 1] !== seen) __statuses.push(seen);
         }).observe(document.querySelector('#videos'),
                    {subtree: true, childList: true, characterData: true, attributes: true});",
        &[],
    );
    b.fill("#frames", "9");
    let t_submit = Instant::now();
    b.click("#submit");
    let row = b.wait(
        "the new row",
        Duration::from_secs(30),
        "const r = document.querySelector('#videos > [data-video-id]');
         return {ok: !!r && document.querySelector('#form-error').textContent === ''
                     && !document.querySelector('#frames').hasAttribute('aria-invalid'),
                 id: r && r.dataset.videoId,
                 error: document.querySelector('#form-error').textContent};",
    );
    let id = row["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("video_") && id.len() == 30, "{id}");

    // Completed, and the MP4 plays inline at its size.
    let s = row_state(
        &b,
        &id,
        "the row completed with its video playing",
        Duration::from_secs(90),
    );
    eprintln!(
        "web_page: completed and playing {:.1?} after submit: {s}",
        t_submit.elapsed()
    );
    let v = &s["video"];
    assert_eq!(
        (v["width"].as_u64(), v["height"].as_u64()),
        (Some(48), Some(32)),
        "{s}"
    );
    assert_eq!(
        (s["progress"].as_f64(), s["pct"].as_str()),
        (Some(100.0), Some("100%")),
        "{s}"
    );
    assert_eq!(
        (v["muted"].as_bool(), v["loop"].as_bool()),
        (Some(true), Some(true))
    );
    assert_eq!(v["src"], "blob:", "played from the fetched blob");
    assert_eq!(s["rowError"], "");
    // Playing: the position moves (within 15 s: a loaded machine can stall the player).
    let current_time = || {
        b.js(
            "return document.querySelector(`[data-video-id=\"${arguments[0]}\"] video`).currentTime;",
            &[Value::from(id.as_str())],
        )
        .as_f64()
        .unwrap()
    };
    let (first, t) = (current_time(), Instant::now());
    while current_time() == first {
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "currentTime stands still at {first}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let statuses = b.js("return window.__statuses;", &[]);
    eprintln!("web_page: the row showed {statuses}");
    assert_eq!(
        statuses
            .as_array()
            .and_then(|a| a.last())
            .and_then(Value::as_str),
        Some("completed 100"),
        "{statuses}"
    );
    assert_no_page_errors(&b);

    // The API agrees: the job ran with the page's settings.
    let (s, job) = api(addr, "GET", &format!("/v1/videos/{id}"));
    assert_eq!(s, 200);
    assert_eq!(
        (
            job["status"].as_str(),
            job["progress"].as_u64(),
            job["size"].as_str(),
            job["num_frames"].as_u64(),
            job["num_inference_steps"].as_u64(),
            job["seed"].as_u64(),
            job["prompt"].as_str(),
        ),
        (
            Some("completed"),
            Some(100),
            Some("48x32"),
            Some(9),
            Some(4),
            Some(42),
            Some(PROMPT)
        ),
        "{job}"
    );
    assert_eq!(
        (job["guidance_scale"].as_f64(), job["flow_shift"].as_f64()),
        (Some(6.0), Some(7.0))
    );

    b.js("window.scrollTo(0, 0);", &[]);
    let png = b.screenshot();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    std::fs::write(SCREENSHOT, &png).unwrap();
    eprintln!("web_page: screenshot in {SCREENSHOT} ({} bytes)", png.len());

    // A reload: the stored key lists the job again, and it plays again.
    b.goto(&url);
    b.js(WATCH_ERRORS, &[]);
    let again = row_state(
        &b,
        &id,
        "the listed job plays after a reload",
        Duration::from_secs(60),
    );
    assert_eq!(again["video"]["width"], 48, "{again}");
    let key = b.js("return [document.querySelector('#api-key').value, localStorage.getItem('hyvideo.apiKey')];", &[]);
    assert_eq!(key, serde_json::json!([KEY, KEY]));

    // Its delete button deletes it.
    b.click(&format!("[data-video-id='{id}'] .delete"));
    b.wait(
        "the row is gone",
        Duration::from_secs(30),
        "return {ok: !document.querySelector('[data-video-id]') && !!document.querySelector('#videos .empty')};",
    );
    assert_eq!(api(addr, "GET", &format!("/v1/videos/{id}")).0, 404);
    assert_no_page_errors(&b);

    drop(b);
    server.stop();
    eprintln!("web_page: done in {:.1?}", t0.elapsed());
}

#[test]
fn the_page_sends_an_image_to_an_image_to_video_server() {
    let t0 = Instant::now();
    let b = Browser::start();
    let data = tempfile::tempdir().unwrap();
    let cfg = SessionConfig::default().with_intra_threads(Some(2));
    let bundle = crate::i2v_pipeline::i2v_bundle("token_replace");
    let pipeline = Pipeline::load(bundle, None, &StageConfigs::all(cfg)).unwrap();
    let server = Server::start(config(data.path()), pipeline).unwrap();
    let addr = server.addr();
    b.goto(&format!("http://{addr}/"));
    b.js(WATCH_ERRORS, &[]);
    b.fill("#api-key", KEY);
    b.click("#save-key");
    // The server info arrives with the key: the image input shows, the guidance default is the
    // bundle's.
    let shown = b.wait(
        "the image input shown",
        Duration::from_secs(30),
        "const box = document.querySelector('#image-box');
         return {ok: !box.hidden && document.querySelector('#image').checkVisibility(),
                 kind: document.querySelector('#kind').textContent,
                 guidance: document.querySelector('#guidance').value,
                 accept: document.querySelector('#image').accept};",
    );
    assert_eq!(shown["kind"], "image-to-video (token_replace)", "{shown}");
    assert_eq!(shown["guidance"], "6.0", "{shown}");
    assert_eq!(shown["accept"], "image/png,image/jpeg", "{shown}");

    b.fill("#prompt", PROMPT);
    b.click("#size option[value='48x32']");
    b.fill("#frames", "9");
    b.fill("#steps", "4");
    b.fill("#seed", "42");
    // Without an image: the server's 400 naming input_reference, the file input marked.
    b.click("#submit");
    let e = b.wait(
        "the missing image named",
        Duration::from_secs(30),
        "const e = document.querySelector('#form-error').textContent;
         const f = document.querySelector('#image');
         return {ok: e.startsWith('input_reference') && f.getAttribute('aria-invalid') === 'true',
                 error: e};",
    );
    eprintln!("web_page: {}", e["error"]);
    assert_eq!(
        api(addr, "GET", "/v1/videos").1["data"],
        serde_json::json!([])
    );

    // ChromeDriver sets a file input from the path typed into it.
    let image = crate::common::fixtures().join("goldens/i2v_images/resized.png");
    let input = b.find("#image");
    b.send_keys(&input, image.to_str().unwrap());
    let chosen = b.js(
        "const f = document.querySelector('#image').files; return f.length ? [f[0].name, f[0].size] : null;",
        &[],
    );
    assert_eq!(chosen, serde_json::json!(["resized.png", 7800]), "{chosen}");
    b.click("#submit");
    let row = b.wait(
        "the new row",
        Duration::from_secs(30),
        "const r = document.querySelector('#videos > [data-video-id]');
         return {ok: !!r && document.querySelector('#form-error').textContent === '',
                 id: r && r.dataset.videoId,
                 error: document.querySelector('#form-error').textContent};",
    );
    let id = row["id"].as_str().unwrap().to_owned();
    let s = row_state(
        &b,
        &id,
        "the image-to-video row playing",
        Duration::from_secs(90),
    );
    assert_eq!(
        (s["video"]["width"].as_u64(), s["video"]["height"].as_u64()),
        (Some(48), Some(32)),
        "{s}"
    );
    let (status, job) = api(addr, "GET", &format!("/v1/videos/{id}"));
    assert_eq!(status, 200);
    assert_eq!(
        (
            job["status"].as_str(),
            job["seed"].as_u64(),
            job["guidance_scale"].as_f64()
        ),
        (Some("completed"), Some(42), Some(6.0)),
        "{job}"
    );
    // The uploaded file is the one the queue stored.
    let q = hyvideo_server::queue::QueueLocation::Sqlite
        .open(data.path())
        .unwrap();
    assert_eq!(
        q.input_image(&id).unwrap(),
        Some(std::fs::read(&image).unwrap())
    );
    assert_no_page_errors(&b);
    drop(b);
    server.stop();
    eprintln!("web_page: image-to-video done in {:.1?}", t0.elapsed());
}
