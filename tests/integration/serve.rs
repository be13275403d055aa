//! `hyvideo serve` in-process on the tiny bundle, spoken to over real HTTP/1.1 sockets: create
//! (JSON and multipart) → poll → content (the MP4 byte-equal to `hyvideo generate`'s with the
//! same settings and seed; Range; thumbnail), list, delete, the error shapes, the API key, and
//! the queue surviving a restart; step caching as request fields (the computed steps those of
//! the golden run; refused by a server without the transformer's stage graphs).

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use hyvideo::denoiser::TransformerForm;
use hyvideo::generation::{Pipeline, StageConfigs};
use hyvideo_engines::SessionConfig;
use hyvideo_server::queue::QueueLocation;
use hyvideo_server::request::Limits;
use hyvideo_server::serve::{ServeConfig, ServeError, Server};
use serde_json::{Value, json};

use crate::common::goldens;
use crate::generate::{full_bundle, generate};
use crate::http_client::{Answer, http};

fn post_json(addr: SocketAddr, v: &Value, headers: &[(&str, &str)]) -> Answer {
    let mut h = vec![("Content-Type", "application/json")];
    h.extend_from_slice(headers);
    http(addr, "POST", "/v1/videos", &h, v.to_string().as_bytes())
}

/// An in-process server's configuration on `data`: loopback, port 0, no key, SQLite.
pub(crate) fn config(data: &Path) -> ServeConfig {
    ServeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data.to_path_buf(),
        queue: QueueLocation::Sqlite,
        api_key: None,
        max_queue: 100,
        limits: Limits::default(),
        lease_secs: 30,
        retention_secs: 3600,
        worker_id: "test-worker".into(),
        body_limit: 1 << 16,
    }
}

/// The tiny bundle's pipeline, every stage, two intra-op threads.
pub(crate) fn pipeline() -> Pipeline {
    let cfg = SessionConfig::default().with_intra_threads(Some(2));
    Pipeline::load(full_bundle(), None, &StageConfigs::all(cfg)).unwrap()
}

/// The tiny bundle's pipeline with the transformer in its stage graphs (what `hyvideo serve`
/// loads from a bundle that has them): requests may ask for a step cache.
fn staged_pipeline() -> Pipeline {
    let cfg = SessionConfig::default().with_intra_threads(Some(2));
    let configs = StageConfigs {
        transformer_form: TransformerForm::Staged,
        ..StageConfigs::all(cfg)
    };
    Pipeline::load(full_bundle(), None, &configs).unwrap()
}

/// A multipart/form-data body of text fields under the boundary `XyZ`.
fn multipart(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut mp = String::new();
    for (k, v) in fields {
        mp.push_str(&format!(
            "--XyZ\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n"
        ));
    }
    mp.push_str("--XyZ--\r\n");
    mp.into_bytes()
}

/// The `generate` golden's settings as an API request.
fn tiny_request() -> Value {
    json!({
        "prompt": "A cat walks on the grass, realistic style.",
        "size": "48x32", "num_frames": 9, "num_inference_steps": 4, "seed": 42,
        "guidance_scale": 6.0, "flow_shift": 7.0,
    })
}

fn wait_final(addr: SocketAddr, id: &str) -> Value {
    let t = Instant::now();
    loop {
        let a = http(addr, "GET", &format!("/v1/videos/{id}"), &[], b"");
        assert_eq!(a.status, 200);
        let v = a.json();
        if v["status"] == "completed" || v["status"] == "failed" {
            return v;
        }
        assert!(t.elapsed() < Duration::from_secs(120), "not done: {v}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn videos_api_creates_polls_serves_lists_and_deletes() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(config(data.path()), pipeline()).unwrap();
    let addr = server.addr();

    let a = post_json(addr, &tiny_request(), &[]);
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let v = a.json();
    assert_eq!(
        (v["object"].as_str(), v["status"].as_str()),
        (Some("video"), Some("queued"))
    );
    assert_eq!(
        (v["size"].as_str(), v["num_frames"].as_u64()),
        (Some("48x32"), Some(9))
    );
    assert!(a.header("openai-poll-after-ms").is_some());
    let id = v["id"].as_str().unwrap().to_owned();

    let done = wait_final(addr, &id);
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["progress"], 100);
    assert_eq!(done["worker"], "test-worker");
    assert_eq!(done["attempts"], 1);
    assert!(done["completed_at"].as_i64() >= done["created_at"].as_i64());
    assert!(done["timings"]["denoise"].as_f64().is_some(), "{done}");
    let metrics = String::from_utf8(http(addr, "GET", "/metrics", &[], b"").body).unwrap();
    for line in [
        "hyvideo_jobs{status=\"completed\"} 1",
        "hyvideo_job_seconds_count 1",
        "hyvideo_step_seconds_count 4",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }

    // The MP4 is exactly what `hyvideo generate` writes for the same settings and seed.
    let mp4 = http(addr, "GET", &format!("/v1/videos/{id}/content"), &[], b"");
    assert_eq!(mp4.status, 200);
    assert_eq!(mp4.header("content-type"), Some("video/mp4"));
    let out = tempfile::tempdir().unwrap();
    let want = out.path().join("video.mp4");
    let o = generate(full_bundle(), &want, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        mp4.body,
        std::fs::read(&want).unwrap(),
        "served MP4 = generate's MP4"
    );
    let part = http(
        addr,
        "GET",
        &format!("/v1/videos/{id}/content"),
        &[("Range", "bytes=4-11")],
        b"",
    );
    assert_eq!(part.status, 206);
    assert_eq!(part.body, &mp4.body[4..12]);
    assert_eq!(
        part.header("content-range"),
        Some(format!("bytes 4-11/{}", mp4.body.len()).as_str())
    );
    let thumb = http(
        addr,
        "GET",
        &format!("/v1/videos/{id}/content?variant=thumbnail"),
        &[],
        b"",
    );
    assert_eq!(
        (thumb.status, thumb.header("content-type")),
        (200, Some("image/png"))
    );
    assert_eq!(&thumb.body[..8], b"\x89PNG\r\n\x1a\n");
    let other = http(
        addr,
        "GET",
        &format!("/v1/videos/{id}/content?variant=spritesheet"),
        &[],
        b"",
    );
    assert_eq!(other.status, 404);
    assert!(other.json()["error"]["message"].as_str().is_some());

    // multipart/form-data, every value text (as the openai SDK sends it); idempotent retries.
    let boundary = "XyZ";
    let mut mp = String::new();
    for (k, v) in [
        ("prompt", "a dog"),
        ("size", "48x32"),
        ("seconds", "0.3"),
        ("num_inference_steps", "2"),
        ("seed", "7"),
    ] {
        mp.push_str(&format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n"
        ));
    }
    mp.push_str(&format!("--{boundary}--\r\n"));
    let ct = format!("multipart/form-data; boundary={boundary}");
    let headers = [
        ("Content-Type", ct.as_str()),
        ("Idempotency-Key", "retry-1"),
    ];
    let m = http(addr, "POST", "/v1/videos", &headers, mp.as_bytes());
    assert_eq!(m.status, 200, "{}", String::from_utf8_lossy(&m.body));
    let m = m.json();
    assert_eq!(
        (m["num_frames"].as_u64(), m["seed"].as_u64()),
        (Some(9), Some(7)),
        "0.3 s at 24 fps → 9 frames"
    );
    let again = http(addr, "POST", "/v1/videos", &headers, mp.as_bytes()).json();
    assert_eq!(
        again["id"], m["id"],
        "an Idempotency-Key makes a retry return the same job"
    );
    let second = wait_final(addr, m["id"].as_str().unwrap());
    assert_eq!(second["status"], "completed");

    // List: newest first, paging with after / limit.
    let l = http(addr, "GET", "/v1/videos?limit=1", &[], b"").json();
    assert_eq!(
        (l["object"].as_str(), l["has_more"].as_bool()),
        (Some("list"), Some(true))
    );
    assert_eq!(l["data"][0]["id"], m["id"]);
    let after = format!(
        "/v1/videos?limit=1&after={}",
        l["last_id"].as_str().unwrap()
    );
    let l2 = http(addr, "GET", &after, &[], b"").json();
    assert_eq!(
        (l2["data"][0]["id"].as_str(), l2["has_more"].as_bool()),
        (Some(id.as_str()), Some(false))
    );

    // Delete: the job and its files are gone.
    let d = http(addr, "DELETE", &format!("/v1/videos/{id}"), &[], b"");
    assert_eq!(
        d.json(),
        json!({"id": id, "object": "video.deleted", "deleted": true})
    );
    assert_eq!(
        http(addr, "GET", &format!("/v1/videos/{id}"), &[], b"").status,
        404
    );
    assert_eq!(
        http(addr, "DELETE", &format!("/v1/videos/{id}"), &[], b"").status,
        404
    );
    assert!(!data.path().join(format!("videos/{id}.mp4")).exists());
    server.stop();

    // A restart on the same data dir still has the other job.
    let server = Server::start(config(data.path()), pipeline()).unwrap();
    let kept = http(
        server.addr(),
        "GET",
        &format!("/v1/videos/{}", m["id"].as_str().unwrap()),
        &[],
        b"",
    );
    assert_eq!(
        (kept.status, kept.json()["status"].as_str()),
        (200, Some("completed"))
    );
    server.stop();
}

#[test]
fn bad_requests_answer_in_the_openai_error_shape() {
    let data = tempfile::tempdir().unwrap();
    let mut cfg = config(data.path());
    cfg.max_queue = 0;
    let server = Server::start(cfg, pipeline()).unwrap();
    let addr = server.addr();
    for (body, status, param) in [
        (json!({"prompt": "a", "colour": "red"}), 400, Some("colour")),
        (json!({"prompt": "a", "size": "47x32"}), 400, Some("size")),
        (
            json!({"prompt": "a", "num_inference_steps": "many"}),
            400,
            Some("num_inference_steps"),
        ),
        (json!({"size": "48x32"}), 400, Some("prompt")),
        (json!(["not", "an", "object"]), 400, None),
        // Valid, but the queue takes none here: 429 with Retry-After.
        (json!({"prompt": "a", "size": "48x32"}), 429, None),
    ] {
        let a = post_json(addr, &body, &[]);
        assert_eq!(
            a.status,
            status,
            "{body}: {}",
            String::from_utf8_lossy(&a.body)
        );
        let e = &a.json()["error"];
        assert!(
            e["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{body}: {e}"
        );
        assert!(e["type"].as_str().is_some());
        assert_eq!(e["param"].as_str(), param, "{body}: {e}");
        if status == 429 {
            assert!(
                a.header("retry-after")
                    .is_some_and(|s| s.parse::<u64>().is_ok())
            );
        }
    }
    let not_json = http(
        addr,
        "POST",
        "/v1/videos",
        &[("Content-Type", "application/json")],
        b"{oops",
    );
    assert_eq!(not_json.status, 400);
    assert!(
        not_json.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("JSON")
    );
    let big = vec![b' '; (1 << 16) + 10];
    assert_eq!(
        http(
            addr,
            "POST",
            "/v1/videos",
            &[("Content-Type", "application/json")],
            &big
        )
        .status,
        413
    );
    for path in [
        "/v1/videos/video_0123456789abcdef01234567",
        "/v1/videos/..%2F..%2Fetc%2Fpasswd",
        "/v1/nothing",
    ] {
        let a = http(addr, "GET", path, &[], b"");
        assert_eq!(a.status, 404, "{path}");
        assert!(a.json()["error"]["message"].as_str().is_some());
    }
    assert_eq!(
        http(addr, "GET", "/v1/videos?limit=0", &[], b"").status,
        400
    );
    assert_eq!(http(addr, "GET", "/healthz", &[], b"").status, 200);
    let m = http(addr, "GET", "/metrics", &[], b"");
    assert!(String::from_utf8_lossy(&m.body).contains("hyvideo_jobs{status=\"queued\"} 0"));
    server.stop();
}

#[test]
fn an_api_key_guards_the_api_and_open_addresses_need_one() {
    let data = tempfile::tempdir().unwrap();
    let mut open = config(data.path());
    open.listen = "0.0.0.0:0".parse().unwrap();
    match Server::start(open.clone(), pipeline()) {
        Err(e @ ServeError::OpenWithoutKey(_)) => {
            let m = e.to_string();
            assert!(
                m.contains("--api-key") && m.contains("HYVIDEO_API_KEY"),
                "{m}"
            );
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("listened on 0.0.0.0 without a key"),
    }
    let mut keyed = config(data.path());
    keyed.api_key = Some("s3cret".into());
    let server = Server::start(keyed, pipeline()).unwrap();
    let addr = server.addr();
    assert_eq!(http(addr, "GET", "/v1/videos", &[], b"").status, 401);
    assert_eq!(
        http(
            addr,
            "GET",
            "/v1/videos",
            &[("Authorization", "Bearer wrong")],
            b""
        )
        .status,
        401
    );
    assert_eq!(
        http(
            addr,
            "GET",
            "/v1/videos",
            &[("Authorization", "Bearer s3cret")],
            b""
        )
        .status,
        200
    );
    assert_eq!(
        http(addr, "GET", "/healthz", &[], b"").status,
        200,
        "health stays open"
    );
    server.stop();
}

#[test]
fn step_cache_fields_run_the_cache_and_the_video_says_what_ran() {
    let golden: Value =
        serde_json::from_slice(&std::fs::read(goldens("step_cache.json")).unwrap()).unwrap();
    let run = &golden["runs"]["teacache/t0.52"];
    let steps = golden["settings"]["num_inference_steps"].as_u64().unwrap();
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(config(data.path()), staged_pipeline()).unwrap();
    let addr = server.addr();
    let plain = json!({
        "prompt": golden["settings"]["prompt"], "size": "48x32", "num_frames": 9,
        "num_inference_steps": steps, "seed": 42,
    });
    let mut cached = plain.clone();
    cached["step_cache"] = json!("teacache");
    cached["step_cache_threshold"] = run["threshold"].clone();

    let a = post_json(addr, &cached, &[]);
    assert_eq!(a.status, 200, "{}", a.text());
    let queued = a.json();
    // Until it completes: the settings as requested (the window resolved to the step count).
    assert_eq!(
        queued["step_cache"],
        json!({"method": "teacache", "threshold": 0.52, "start": 0, "end": steps}),
        "{queued}"
    );
    let a = post_json(addr, &plain, &[]);
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json()["step_cache"], Value::Null);
    let plain_id = a.json()["id"].as_str().unwrap().to_owned();
    // Multipart, every value text (as the openai SDK sends `extra_body`).
    let ct = [("Content-Type", "multipart/form-data; boundary=XyZ")];
    let mp = multipart(&[
        ("prompt", "a dog"),
        ("size", "48x32"),
        ("num_frames", "9"),
        ("num_inference_steps", "6"),
        ("seed", "7"),
        ("step_cache", "fbcache"),
        ("step_cache_threshold", "0.5"),
        ("step_cache_start", "1"),
        ("step_cache_end", "5"),
    ]);
    let m = http(addr, "POST", "/v1/videos", &ct, &mp);
    assert_eq!(m.status, 200, "{}", m.text());
    assert_eq!(
        m.json()["step_cache"],
        json!({"method": "fbcache", "threshold": 0.5, "start": 1, "end": 5})
    );
    let mp_id = m.json()["id"].as_str().unwrap().to_owned();

    let done = wait_final(addr, queued["id"].as_str().unwrap());
    assert_eq!(done["status"], "completed", "{done}");
    let sc = &done["step_cache"];
    assert_eq!(
        (&sc["method"], &sc["threshold"], &sc["start"], &sc["end"]),
        (&json!("teacache"), &json!(0.52), &json!(0), &json!(steps)),
        "{done}"
    );
    // The golden run's decisions (the prompt embeddings come from the same text encoders).
    assert_eq!(sc["computed_steps"], run["computed_steps"], "{done}");
    assert_eq!(sc["computed_steps"], json!([0, 1, 4, 8, 9, 10, 11]));
    let plain_done = wait_final(addr, &plain_id);
    assert_eq!(plain_done["status"], "completed", "{plain_done}");
    assert_eq!(plain_done["step_cache"], Value::Null);
    let content = |id: &str| {
        let a = http(addr, "GET", &format!("/v1/videos/{id}/content"), &[], b"");
        assert_eq!(a.status, 200);
        a.body
    };
    assert_ne!(
        content(queued["id"].as_str().unwrap()),
        content(&plain_id),
        "skipping steps changes the video"
    );
    let mp_done = wait_final(addr, &mp_id);
    assert_eq!(mp_done["status"], "completed", "{mp_done}");
    let computed = mp_done["step_cache"]["computed_steps"].as_array().unwrap();
    // Outside [start, end) every step is computed.
    for step in [0, 5] {
        assert!(computed.contains(&json!(step)), "{mp_done}");
    }

    // Each bad value is a 400 naming its field.
    let with = |extra: Value| {
        let mut b = plain.clone();
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    for (body, param) in [
        (with(json!({"step_cache": "magic"})), "step_cache"),
        (with(json!({"step_cache": true})), "step_cache"),
        (
            with(json!({"step_cache": "teacache", "step_cache_threshold": -1})),
            "step_cache_threshold",
        ),
        (
            with(json!({"step_cache": "teacache", "step_cache_threshold": "abc"})),
            "step_cache_threshold",
        ),
        (
            with(json!({"step_cache": "none", "step_cache_threshold": 0.2})),
            "step_cache_threshold",
        ),
        (
            with(json!({"step_cache_threshold": 0.2})),
            "step_cache_threshold",
        ),
        (
            with(json!({"step_cache": "fbcache", "step_cache_start": 8, "step_cache_end": 4})),
            "step_cache_start",
        ),
        (
            with(json!({"step_cache": "fbcache", "step_cache_end": steps + 1})),
            "step_cache_end",
        ),
        (
            with(json!({"step_cache": "fbcache", "step_cache_start": 1.5})),
            "step_cache_start",
        ),
    ] {
        let a = post_json(addr, &body, &[]);
        assert_eq!(a.status, 400, "{body}: {}", a.text());
        let e = &a.json()["error"];
        assert_eq!(e["param"].as_str(), Some(param), "{body}: {e}");
        assert!(
            e["message"].as_str().unwrap().starts_with(param),
            "{body}: {e}"
        );
    }
    let a = http(
        addr,
        "POST",
        "/v1/videos",
        &ct,
        &multipart(&[
            ("prompt", "a"),
            ("step_cache", "teacache"),
            ("step_cache_threshold", "abc"),
        ]),
    );
    assert_eq!(a.status, 400, "{}", a.text());
    assert_eq!(a.json()["error"]["param"], "step_cache_threshold");
    server.stop();
}

#[test]
fn a_transformer_without_stages_refuses_a_step_cache() {
    let data = tempfile::tempdir().unwrap();
    let mut cfg = config(data.path());
    cfg.max_queue = 0;
    // The single transformer graph: no stage graphs to skip between.
    let server = Server::start(cfg, pipeline()).unwrap();
    let a = post_json(
        server.addr(),
        &json!({"prompt": "a", "size": "48x32", "step_cache": "teacache"}),
        &[],
    );
    assert_eq!(a.status, 400, "{}", a.text());
    let e = &a.json()["error"];
    assert_eq!(e["param"], "step_cache", "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("no stage graphs; re-export the bundle"),
        "{e}"
    );
    // `none` is no cache: valid (refused here only because this queue takes no job).
    let a = post_json(
        server.addr(),
        &json!({"prompt": "a", "size": "48x32", "step_cache": "none"}),
        &[],
    );
    assert_eq!(a.status, 429, "{}", a.text());
    server.stop();
}
