//! `hyvideo serve` on an image-to-video bundle (the tiny HunyuanVideo-I2V, token_replace),
//! spoken to over real HTTP/1.1: `input_reference` as a multipart file upload (what the openai
//! SDK sends), as a JSON data URL and as OpenAI's `{"image_url": …}` object; the served MP4
//! byte-equal to `hyvideo generate --image`'s for the same settings (whose latents are checked
//! against diffusers' golden); every refusal a 400 (413 for the size) naming `input_reference`
//! with no job made, on an image-to-video and a text-to-video server; the image surviving a
//! `kill -9` of the server with its job queued; and, on a shared PostgreSQL queue, a job uploaded
//! to one server run by another; a latent_concat server's video object reporting the 4 frames
//! fewer that its MP4 holds.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hyvideo::generation::{Pipeline, StageConfigs};
use hyvideo_engines::SessionConfig;
use hyvideo_server::queue::QueueLocation;
use hyvideo_server::serve::{ServeConfig, Server};
use serde_json::{Value, json};

use crate::common::{TINY_VIDEO, fixtures, golden5, mp4_frames, rel_max_err};
use crate::http_client::{Answer, get, http};
use crate::i2v_pipeline::i2v_bundle;
use crate::postgres::PgServer;
use crate::serve_process::{Serve, is_final, wait_for};

const PROMPT: &str = "A cat walks on the grass, realistic style.";
const BOUNDARY: &str = "hyvideo-test-boundary-7f3a9c";
const MULTIPART: (&str, &str) = (
    "Content-Type",
    "multipart/form-data; boundary=hyvideo-test-boundary-7f3a9c",
);
const JSON_TYPE: (&str, &str) = ("Content-Type", "application/json");

/// The tiny I2V pipeline of `kind`, every stage, two intra-op threads (as `hyvideo generate
/// --threads 2`, so the MP4s compare byte for byte).
fn i2v_pipeline(kind: &str) -> Pipeline {
    let cfg = SessionConfig::default().with_intra_threads(Some(2));
    Pipeline::load(i2v_bundle(kind), None, &StageConfigs::all(cfg)).unwrap()
}

fn i2v_image(case: &str) -> PathBuf {
    fixtures().join(format!("goldens/i2v_images/{case}.png"))
}

pub(crate) fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Standard base64 with padding.
pub(crate) fn b64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            s.push(if i <= c.len() {
                A[((n >> (18 - 6 * i)) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    s
}

pub(crate) fn data_url(mime: &str, bytes: &[u8]) -> String {
    format!("data:{mime};base64,{}", b64(bytes))
}

/// A file part: field name, file name, content type, content.
type FilePart<'a> = (&'a str, Option<&'a str>, Option<&'a str>, &'a [u8]);

/// A multipart/form-data body under [`BOUNDARY`]: text fields, then the file parts.
fn multipart(fields: &[(&str, &str)], files: &[FilePart]) -> Vec<u8> {
    let mut out = vec![];
    for (k, v) in fields {
        out.extend_from_slice(
            format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n")
                .as_bytes(),
        );
    }
    for (name, file_name, content_type, bytes) in files {
        let mut head = format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"");
        if let Some(f) = file_name {
            head.push_str(&format!("; filename=\"{f}\""));
        }
        head.push_str("\r\n");
        if let Some(t) = content_type {
            head.push_str(&format!("Content-Type: {t}\r\n"));
        }
        head.push_str("\r\n");
        out.extend_from_slice(head.as_bytes());
        out.extend_from_slice(bytes);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    out
}

/// The golden's settings (48×32, 9 frames, 4 steps, seed 42, shift 7; no guidance: the
/// bundle's default, 6 for token_replace) as multipart text.
const TEXT_FIELDS: [(&str, &str); 6] = [
    ("prompt", PROMPT),
    ("size", "48x32"),
    ("num_frames", "9"),
    ("num_inference_steps", "4"),
    ("seed", "42"),
    ("flow_shift", "7"),
];

/// The same as JSON, with `input_reference` = `image`.
fn json_request(image: Value) -> Value {
    json!({
        "prompt": PROMPT, "size": "48x32", "num_frames": 9, "num_inference_steps": 4,
        "seed": 42, "flow_shift": 7.0, "input_reference": image,
    })
}

fn post(addr: SocketAddr, headers: &[(&str, &str)], body: &[u8]) -> Answer {
    http(addr, "POST", "/v1/videos", headers, body)
}

fn created(a: &Answer) -> String {
    assert_eq!(a.status, 200, "{}", a.text());
    let v = a.json();
    assert_eq!(v["object"], "video", "{v}");
    // The image is not echoed back: the object is the usual fields only.
    assert!(v.get("input_reference").is_none(), "{v}");
    assert!(a.body.len() < 4096, "{} bytes: {v}", a.body.len());
    v["id"].as_str().unwrap().to_owned()
}

fn wait_done(addr: SocketAddr, id: &str) -> Value {
    let t = Instant::now();
    loop {
        let v = get(addr, &format!("/v1/videos/{id}")).json();
        if v["status"] == "completed" || v["status"] == "failed" {
            return v;
        }
        assert!(t.elapsed() < Duration::from_secs(120), "not done: {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn content(addr: SocketAddr, id: &str) -> Vec<u8> {
    let a = get(addr, &format!("/v1/videos/{id}/content"));
    assert_eq!(
        (a.status, a.header("content-type")),
        (200, Some("video/mp4")),
        "{id}"
    );
    assert_eq!(&a.body[4..8], b"ftyp", "{id}");
    a.body
}

/// `hyvideo generate --image` with the golden's settings: its MP4 and final latents.
fn generate_with_image(image: &Path, dir: &Path) -> (Vec<u8>, hyvideo::tensor::Tensor5) {
    let (mp4, latents) = (dir.join("generate.mp4"), dir.join("latents.safetensors"));
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_hyvideo"))
        .arg("generate")
        .arg("--bundle")
        .arg(i2v_bundle("token_replace"))
        .arg("--image")
        .arg(image)
        .args(["--prompt", PROMPT])
        .args(TINY_VIDEO)
        .args(["--infer-steps", "4", "--seed", "42", "--flow-shift", "7.0"])
        .args(["--threads", "2"])
        .arg("--save-path")
        .arg(&mp4)
        .arg("--output-latents")
        .arg(&latents)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let l = hyvideo::latents::read_tensor5(&latents, hyvideo::latents::LATENTS_TENSOR).unwrap();
    (read(&mp4), l)
}

#[test]
fn an_image_to_video_server_runs_the_uploaded_image_as_generate_does() {
    let t0 = Instant::now();
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(
        crate::serve::config(data.path()),
        i2v_pipeline("token_replace"),
    )
    .unwrap();
    let addr = server.addr();
    let info = get(addr, "/v1/server").json();
    assert_eq!(
        (
            &info["image_to_video"],
            &info["image_condition"],
            &info["defaults"]["guidance_scale"]
        ),
        (&json!(true), &json!("token_replace"), &json!(6.0)),
        "{info}"
    );
    assert_eq!(info["input_reference"]["max_bytes"], 20 << 20, "{info}");
    let png = read(&i2v_image("resized"));

    // The openai SDK's form: a file part with its file name and type.
    let upload = post(
        addr,
        &[MULTIPART],
        &multipart(
            &TEXT_FIELDS,
            &[(
                "input_reference",
                Some("resized.png"),
                Some("image/png"),
                &png,
            )],
        ),
    );
    let by_upload = created(&upload);
    assert_eq!(upload.json()["guidance_scale"], 6.0, "the bundle's default");
    // A JSON data URL; a generic content type (the bytes decide); OpenAI's object form as the
    // SDK sends it in multipart (`input_reference[image_url]`).
    let by_url = created(&post(
        addr,
        &[JSON_TYPE],
        json_request(json!(data_url("image/png", &png)))
            .to_string()
            .as_bytes(),
    ));
    let by_octets = created(&post(
        addr,
        &[MULTIPART],
        &multipart(
            &TEXT_FIELDS,
            &[(
                "input_reference",
                Some("blob"),
                Some("application/octet-stream"),
                &png,
            )],
        ),
    ));
    let url = data_url("image/png", &png);
    let mut object_form = TEXT_FIELDS.to_vec();
    object_form.push(("input_reference[image_url]", url.as_str()));
    let by_object = created(&post(addr, &[MULTIPART], &multipart(&object_form, &[])));
    let ids = [by_upload, by_url, by_octets, by_object];

    // The queue holds each image with its job (read here through a second handle).
    let queue = QueueLocation::Sqlite.open(data.path()).unwrap();
    for id in &ids {
        assert_eq!(
            queue.input_image(id).unwrap().as_deref(),
            Some(&png[..]),
            "{id}"
        );
    }
    let mut videos = vec![];
    for id in &ids {
        let v = wait_done(addr, id);
        assert_eq!(
            (v["status"].as_str(), v["progress"].as_u64()),
            (Some("completed"), Some(100)),
            "{v}"
        );
        assert!(v["timings"]["image encode"].as_f64().is_some(), "{v}");
        assert_eq!(
            (&v["num_frames"], &v["output_frames"]),
            (&json!(9), &json!(9))
        );
        videos.push(content(addr, id));
        let thumb = get(addr, &format!("/v1/videos/{id}/content?variant=thumbnail"));
        assert_eq!(&thumb.body[..8], b"\x89PNG\r\n\x1a\n");
    }
    for (id, v) in ids.iter().zip(&videos) {
        assert_eq!(v, &videos[0], "{id}: the same image, settings and seed");
    }
    assert_eq!(mp4_frames(&videos[0]), 9);
    eprintln!(
        "serve_i2v: 4 jobs done in {:.1?} (with the server's start)",
        t0.elapsed()
    );

    // What `hyvideo generate --image` writes for the same request; its latents are the
    // reference pipeline's.
    let out = tempfile::tempdir().unwrap();
    let (want, latents) = generate_with_image(&i2v_image("resized"), out.path());
    assert_eq!(videos[0], want, "served MP4 = generate --image's MP4");
    let golden = golden5("i2v_pipeline_token_replace.safetensors", "resized.latents");
    let err = rel_max_err(latents.data(), golden.data());
    assert!(
        err <= 1e-3,
        "generate --image latents vs diffusers: {err:.3e}"
    );

    // Deleting a job deletes its image.
    let d = http(addr, "DELETE", &format!("/v1/videos/{}", ids[0]), &[], b"");
    assert_eq!(d.status, 200);
    assert_eq!(queue.input_image(&ids[0]).unwrap(), None);
    assert!(queue.input_image(&ids[1]).unwrap().is_some());
    server.stop();
    eprintln!("serve_i2v: done in {:.1?}", t0.elapsed());
}

/// HunyuanVideo-I2V-33ch delivers 4 frames fewer than asked (the reference pipeline drops the
/// conditioning frame's): the video object keeps the requested `num_frames` and says what the
/// MP4 holds in `output_frames` and `seconds`.
#[test]
fn a_latent_concat_server_reports_the_frames_it_delivers() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(
        crate::serve::config(data.path()),
        i2v_pipeline("latent_concat"),
    )
    .unwrap();
    let addr = server.addr();
    let png = read(&i2v_image("resized"));
    let body = json_request(json!(data_url("image/png", &png))).to_string();
    let id = created(&post(addr, &[JSON_TYPE], body.as_bytes()));
    let v = wait_done(addr, &id);
    assert_eq!(v["status"], "completed", "{v}");
    assert_eq!(
        (
            &v["num_frames"],
            &v["output_frames"],
            &v["seconds"],
            &v["guidance_scale"]
        ),
        (&json!(9), &json!(5), &json!("0.21"), &json!(1.0)),
        "{v}"
    );
    assert_eq!(mp4_frames(&content(addr, &id)), 5);
    server.stop();
}

/// Each refusal: status, the error's param, a piece of its message.
fn refused(addr: SocketAddr, what: &str, a: &Answer, status: u16, param: &str, needle: &str) {
    assert_eq!(a.status, status, "{what}: {}", a.text());
    let e = &a.json()["error"];
    assert_eq!(e["param"].as_str(), Some(param), "{what}: {e}");
    let m = e["message"].as_str().unwrap();
    assert!(m.starts_with(param), "{what}: {m}");
    assert!(m.contains(needle), "{what}: `{needle}` not in {m}");
    let l = get(addr, "/v1/videos").json();
    assert_eq!(l["data"], json!([]), "{what}: no job made");
}

#[test]
fn image_refusals_are_400s_naming_input_reference_and_make_no_job() {
    let data = tempfile::tempdir().unwrap();
    let mut cfg = crate::serve::config(data.path());
    // exact.png (3717 bytes) fits, resized.png (7800) does not.
    cfg.limits.max_image_bytes = 6000;
    let server = Server::start(cfg, i2v_pipeline("token_replace")).unwrap();
    let addr = server.addr();
    assert_eq!(
        get(addr, "/v1/server").json()["input_reference"]["max_bytes"],
        6000
    );
    let exact = read(&i2v_image("exact"));
    let resized = read(&i2v_image("resized"));
    let images = fixtures().join("images");
    let file = |name: &'static str, ct: Option<&'static str>, bytes: Vec<u8>| {
        multipart(&TEXT_FIELDS, &[("input_reference", Some(name), ct, &bytes)])
    };
    let m = |body: Vec<u8>| post(addr, &[MULTIPART], &body);
    let j = |v: Value| post(addr, &[JSON_TYPE], v.to_string().as_bytes());
    const F: &str = "input_reference";

    refused(
        addr,
        "no image (JSON)",
        &j(json!({"prompt": PROMPT, "size": "48x32"})),
        400,
        F,
        "is required",
    );
    refused(
        addr,
        "no image (multipart)",
        &m(multipart(&TEXT_FIELDS, &[])),
        400,
        F,
        "image-to-video",
    );
    refused(
        addr,
        "a truncated PNG",
        &m(file(
            "cut.png",
            Some("image/png"),
            exact[..exact.len() / 2].to_vec(),
        )),
        400,
        F,
        "cut.png: truncated PNG data",
    );
    refused(
        addr,
        "16-bit greyscale",
        &m(file(
            "grey16.png",
            Some("image/png"),
            read(&images.join("grey16.png")),
        )),
        400,
        F,
        "unsupported image mode I;16",
    );
    refused(
        addr,
        "CMYK",
        &m(file(
            "jcmyk.jpg",
            Some("image/jpeg"),
            read(&images.join("jcmyk.jpg")),
        )),
        400,
        F,
        "unsupported image mode CMYK",
    );
    refused(
        addr,
        "a GIF content type (refused before decoding)",
        &m(file("x.gif", Some("image/gif"), exact.clone())),
        400,
        F,
        "content type `image/gif`",
    );
    refused(
        addr,
        "text declared generic",
        &m(file(
            "notes.txt",
            Some("application/octet-stream"),
            b"hello".to_vec(),
        )),
        400,
        F,
        "not a PNG or JPEG image",
    );
    refused(
        addr,
        "over the size limit (upload)",
        &m(file("resized.png", Some("image/png"), resized.clone())),
        413,
        F,
        "the image is 7800 bytes; at most 6000 bytes",
    );
    refused(
        addr,
        "over the size limit (data URL)",
        &j(json_request(json!(data_url("image/png", &resized)))),
        413,
        F,
        "the image is 7800 bytes",
    );
    // 65535 × 65535 from the JPEG header: refused before any pixel buffer.
    let mut huge = vec![0xFF, 0xD8, 0xFF, 0xC0, 0, 17, 8, 0xFF, 0xFF, 0xFF, 0xFF];
    huge.extend_from_slice(&[3, 1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1]);
    huge.extend_from_slice(&[
        0xFF, 0xDA, 0, 12, 3, 1, 0, 2, 0x11, 3, 0x11, 0, 63, 0, 0xFF, 0xD9,
    ]);
    refused(
        addr,
        "too many pixels",
        &m(file("huge.jpg", Some("image/jpeg"), huge)),
        400,
        F,
        "over the limit of 67108864 pixels",
    );
    for (what, value, needle) in [
        (
            "an http URL",
            json!("https://example.com/cat.png"),
            "fetches no URLs",
        ),
        (
            "not base64",
            json!("data:image/png;base64,&&&&"),
            "not base64",
        ),
        ("not marked base64", json!("data:image/png,abc"), "base64"),
        (
            "a data URL of text",
            json!(data_url("text/plain", b"hi")),
            "content type `text/plain`",
        ),
        (
            "a broken PNG in a data URL",
            json!(data_url("image/png", &exact[..100])),
            "the data URL: ",
        ),
        ("a file_id", json!({"file_id": "file-abc"}), "no Files API"),
        ("a number", json!(7), "must be an uploaded PNG or JPEG file"),
    ] {
        refused(addr, what, &j(json_request(value)), 400, F, needle);
    }
    // A file under another field's name.
    refused(
        addr,
        "a file as `prompt`",
        &m(multipart(
            &[("size", "48x32")],
            &[("prompt", Some("a.png"), Some("image/png"), &exact)],
        )),
        400,
        "prompt",
        "only as input_reference",
    );
    // A valid image is accepted here (the limits are the cause above), then deleted.
    let ok = m(file("exact.png", Some("image/png"), exact.clone()));
    let id = created(&ok);
    assert_eq!(
        http(addr, "DELETE", &format!("/v1/videos/{id}"), &[], b"").status,
        200
    );
    server.stop();

    // A text-to-video server refuses any image.
    let data = tempfile::tempdir().unwrap();
    let server =
        Server::start(crate::serve::config(data.path()), crate::serve::pipeline()).unwrap();
    let addr = server.addr();
    assert_eq!(get(addr, "/v1/server").json()["image_to_video"], false);
    let m = |body: Vec<u8>| post(addr, &[MULTIPART], &body);
    let j = |v: Value| post(addr, &[JSON_TYPE], v.to_string().as_bytes());
    refused(
        addr,
        "an upload to text-to-video",
        &m(file("exact.png", Some("image/png"), exact.clone())),
        400,
        F,
        "text-to-video",
    );
    refused(
        addr,
        "a data URL to text-to-video",
        &j(json_request(json!(data_url("image/png", &exact)))),
        400,
        F,
        "text-to-video",
    );
    server.stop();
}

fn claimed(v: &Value) -> bool {
    v["status"] == "in_progress"
}

/// A server killed (`kill -9`) with an image-to-video job queued: after the restart the job
/// runs from its stored image, giving the same MP4 as the same request made afresh.
#[test]
fn a_queued_image_job_survives_kill_9() {
    let data = tempfile::tempdir().unwrap();
    let bundle = i2v_bundle("token_replace");
    let args = ["--max-steps", "100000"];
    let mut first = Serve::start_bundle(bundle, data.path(), &args);
    let png = read(&i2v_image("resized"));
    let url = data_url("image/png", &png);
    let mut long = json_request(json!(url));
    long["num_inference_steps"] = json!(100000);
    let blocker = created(&post(first.addr, &[JSON_TYPE], long.to_string().as_bytes()));
    let queued = created(&post(
        first.addr,
        &[MULTIPART],
        &multipart(
            &TEXT_FIELDS,
            &[(
                "input_reference",
                Some("resized.png"),
                Some("image/png"),
                &png,
            )],
        ),
    ));
    wait_for(&first, &blocker, Duration::from_secs(60), claimed);
    assert_eq!(
        get(first.addr, &format!("/v1/videos/{queued}")).json()["status"],
        "queued"
    );
    first.kill9();
    drop(first);

    let second = Serve::start_bundle(bundle, data.path(), &args);
    // The running job runs again from its stored image (attempt 2); then it is deleted. (Wait
    // for the second attempt itself: the restarted server may answer before it has released
    // the dead one's job, which then still reads in_progress, attempt 1.)
    let v = wait_for(&second, &blocker, Duration::from_secs(60), |v| {
        claimed(v) && v["attempts"] == 2
    });
    assert_eq!(v["attempts"], 2, "{v}");
    let d = http(
        second.addr,
        "DELETE",
        &format!("/v1/videos/{blocker}"),
        &[],
        b"",
    );
    assert_eq!(d.status, 200);
    let done = wait_for(&second, &queued, Duration::from_secs(60), is_final);
    assert_eq!(
        (done["status"].as_str(), done["attempts"].as_u64()),
        (Some("completed"), Some(1)),
        "{done}\n{}",
        second.log()
    );
    let again = created(&post(
        second.addr,
        &[JSON_TYPE],
        json_request(json!(url)).to_string().as_bytes(),
    ));
    let again_done = wait_for(&second, &again, Duration::from_secs(60), is_final);
    assert_eq!(again_done["status"], "completed", "{again_done}");
    assert_eq!(
        content(second.addr, &queued),
        content(second.addr, &again),
        "the stored image is the uploaded one"
    );
}

/// Two in-process servers on one PostgreSQL queue: the image uploaded to A (busy with a long job)
/// is run by B, and gives the MP4 the same request gives when made afresh.
#[test]
fn an_image_uploaded_to_one_server_is_run_by_another() {
    let pg = PgServer::start();
    let url = pg.database("i2v_shared");
    let config = |dir: &Path, worker: &str| ServeConfig {
        queue: QueueLocation::Postgres(url.clone()),
        worker_id: worker.into(),
        limits: hyvideo_server::request::Limits {
            max_steps: 100_000,
            ..Default::default()
        },
        ..crate::serve::config(dir)
    };
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Server::start(config(dir_a.path(), "gpu-a"), i2v_pipeline("token_replace")).unwrap();
    let png = read(&i2v_image("resized"));
    let image_url = data_url("image/png", &png);
    let mut long = json_request(json!({ "image_url": image_url }));
    long["num_inference_steps"] = json!(100000);
    let blocker = created(&post(a.addr(), &[JSON_TYPE], long.to_string().as_bytes()));
    let t = Instant::now();
    while get(a.addr(), &format!("/v1/videos/{blocker}")).json()["status"] != "in_progress" {
        assert!(t.elapsed() < Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(20));
    }
    let job = created(&post(
        a.addr(),
        &[MULTIPART],
        &multipart(
            &TEXT_FIELDS,
            &[(
                "input_reference",
                Some("resized.png"),
                Some("image/png"),
                &png,
            )],
        ),
    ));
    // Only now is B up: A is busy, so B's worker takes the job.
    let b = Server::start(config(dir_b.path(), "gpu-b"), i2v_pipeline("token_replace")).unwrap();
    let done = wait_done(b.addr(), &job);
    assert_eq!(
        (done["status"].as_str(), done["worker"].as_str()),
        (Some("completed"), Some("gpu-b")),
        "{done}"
    );
    assert_eq!(
        http(
            a.addr(),
            "DELETE",
            &format!("/v1/videos/{blocker}"),
            &[],
            b""
        )
        .status,
        200
    );
    let again = created(&post(
        b.addr(),
        &[JSON_TYPE],
        json_request(json!(image_url)).to_string().as_bytes(),
    ));
    assert_eq!(wait_done(a.addr(), &again)["status"], "completed");
    // Either server serves either video (A reads B's from the database).
    assert_eq!(content(a.addr(), &job), content(b.addr(), &again));
    let mut db = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let images = |db: &mut postgres::Client| -> i64 {
        db.query_one("SELECT COUNT(*) FROM hyvideo_images", &[])
            .unwrap()
            .get(0)
    };
    assert_eq!(images(&mut db), 2, "the blocker's went with its row");
    for id in [&job, &again] {
        assert_eq!(
            http(b.addr(), "DELETE", &format!("/v1/videos/{id}"), &[], b"").status,
            200
        );
    }
    assert_eq!(images(&mut db), 0);
    a.stop();
    b.stop();
}
