//! `hyvideo serve` as a separate process: events, cancellation of a running job, and the queue
//! surviving `kill -9`.
//!
//! Each test starts the real binary (`--listen 127.0.0.1:0`, the port read from its
//! `listening on http://ADDR` line) on the tiny bundle and speaks raw HTTP/1.1 to it over
//! `TcpStream`s; a guard kills the process when the test ends, passing or not. The tiny
//! transformer takes about half a millisecond per step at 48x32 and 9 frames, so a job that has
//! to be running for a while asks for thousands of steps (`--max-steps` raised).
//!
//! The last test fuzzes the create body (JSON, truncated JSON, garbage, multipart with odd
//! boundaries) from a seeded xorshift generator: every answer is 200 or a 4xx in the OpenAI
//! error shape, never a 5xx or a dropped connection.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hyvideo_server::request::FIELDS;
use serde_json::{Value, json};

use crate::common::list_dir;
use crate::generate::full_bundle;
use crate::http_client::{get, get_stream, http, try_http};

// ---------------------------------------------------------------------------------------------
// The server process.

/// A running `hyvideo serve`; dropping it kills the process (SIGKILL) and reaps it.
pub(crate) struct Serve {
    child: Child,
    pub(crate) addr: SocketAddr,
    /// Its stderr.
    log: PathBuf,
    _logdir: tempfile::TempDir,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Serve {
    /// Start `hyvideo serve` on the tiny bundle and `data` (one intra-op thread: tests run side
    /// by side on 2 cores) and wait for its `listening on` line.
    pub(crate) fn start(data: &Path, extra: &[&str]) -> Serve {
        Serve::start_bundle(full_bundle(), data, extra)
    }

    /// [`start`](Serve::start) on `bundle`.
    pub(crate) fn start_bundle(bundle: &Path, data: &Path, extra: &[&str]) -> Serve {
        let logdir = tempfile::tempdir().unwrap();
        let log = logdir.path().join("serve.log");
        let child = Command::new(env!("CARGO_BIN_EXE_hyvideo"))
            .arg("serve")
            .arg("--bundle")
            .arg(bundle)
            .arg("--data-dir")
            .arg(data)
            .args(["--listen", "127.0.0.1:0", "--threads", "1"])
            .args(extra)
            .env_remove("HYVIDEO_API_KEY")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .expect("spawn hyvideo serve");
        // The guard exists before anything can panic.
        let mut s = Serve {
            child,
            addr: "127.0.0.1:0".parse().unwrap(),
            log,
            _logdir: logdir,
        };
        // A thread reads stdout to its end (so the process never blocks on a full pipe or
        // writes to a closed one) and hands over the address of the `listening on` line.
        let stdout = s.child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel::<Result<String, String>>();
        std::thread::spawn(move || {
            let mut seen = String::new();
            let mut sent = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                match line.trim().strip_prefix("listening on http://") {
                    Some(addr) if !sent => {
                        sent = true;
                        let _ = tx.send(Ok(addr.to_owned()));
                    }
                    _ => seen.push_str(&format!("{line}\n")),
                }
            }
            if !sent {
                let _ = tx.send(Err(seen));
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(Ok(addr)) => addr,
            Ok(Err(stdout)) => panic!(
                "the server ended without a `listening on` line; stdout:\n{stdout}\nstderr:\n{}",
                s.log()
            ),
            Err(_) => panic!("no `listening on` line in 60 s; stderr:\n{}", s.log()),
        };
        s.addr = addr
            .parse()
            .unwrap_or_else(|e| panic!("`{addr}`: {e}; stderr:\n{}", s.log()));
        s
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The default worker id of this process: `host:pid`.
    pub(crate) fn worker_id(&self) -> String {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "localhost".into());
        format!("{host}:{}", self.child.id())
    }

    /// `kill -9` and reap; asserts it died of SIGKILL (it was still running).
    pub(crate) fn kill9(&mut self) {
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "the server had exited already:\n{}",
            self.log()
        );
        self.child.kill().unwrap();
        let status = self.child.wait().unwrap();
        assert_eq!(status.signal(), Some(9), "{status:?}");
    }

    pub(crate) fn assert_alive(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("the server exited ({status:?}):\n{}", self.log());
        }
    }
}

/// POST a JSON create body; the new job's id.
pub(crate) fn create(addr: SocketAddr, body: Value) -> String {
    let a = http(
        addr,
        "POST",
        "/v1/videos",
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    );
    assert_eq!(a.status, 200, "{body}: {}", a.text());
    let v = a.json();
    assert_eq!(v["status"], "queued", "{v}");
    v["id"].as_str().unwrap().to_owned()
}

/// A small job on the tiny bundle; `steps` sets how long it runs (~0.5 ms a step here).
pub(crate) fn job(steps: u32, seed: u64) -> Value {
    json!({
        "prompt": "A cat walks on the grass, realistic style.",
        "size": "48x32", "num_frames": 9, "num_inference_steps": steps, "seed": seed,
    })
}

/// Poll `GET /v1/videos/{id}` (every 20 ms) until `until` holds; panics after `limit`.
pub(crate) fn wait_for(
    s: &Serve,
    id: &str,
    limit: Duration,
    until: impl Fn(&Value) -> bool,
) -> Value {
    let t = Instant::now();
    loop {
        let a = get(s.addr, &format!("/v1/videos/{id}"));
        assert_eq!(a.status, 200, "{id}: {}", a.text());
        let v = a.json();
        if until(&v) {
            return v;
        }
        assert!(
            t.elapsed() < limit,
            "{id} still {v} after {limit:?}; server log:\n{}",
            s.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub(crate) fn is_final(v: &Value) -> bool {
    v["status"] == "completed" || v["status"] == "failed"
}

pub(crate) fn running(v: &Value) -> bool {
    v["status"] == "in_progress" && v["progress"].as_u64().is_some_and(|p| p > 0)
}

/// The `data:` payloads of a server-sent event stream (comments and other fields skipped).
fn sse_data(text: &str) -> Vec<String> {
    let text = text.replace("\r\n", "\n");
    text.split("\n\n")
        .filter_map(|event| {
            let data: Vec<&str> = event
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            (!data.is_empty()).then(|| data.join("\n"))
        })
        .collect()
}

pub(crate) fn metric(s: &Serve, status: &str) -> u64 {
    let m = get(s.addr, "/metrics").text();
    let key = format!("hyvideo_jobs{{status=\"{status}\"}} ");
    m.lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} in\n{m}"))
}

/// The panics in a server log: each `panicked at` line and the message after it.
pub(crate) fn panics(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    let mut out = vec![];
    for (i, l) in lines.iter().enumerate() {
        if l.contains("panicked at") {
            out.push(format!("{l} {}", lines.get(i + 1).unwrap_or(&"")));
        }
    }
    out.join("\n")
}

/// Lines of the server log mentioning `id` and containing `what`.
pub(crate) fn log_count(log: &str, id: &str, what: &str) -> usize {
    log.lines()
        .filter(|l| l.contains(id) && l.contains(what))
        .count()
}

// ---------------------------------------------------------------------------------------------
// The tests.

#[test]
fn events_stream_every_change_and_end_after_completed() {
    let data = tempfile::tempdir().unwrap();
    let s = Serve::start(data.path(), &["--max-steps", "100000"]);
    // A job ahead of it keeps the watched one queued at first.
    let blocker = create(s.addr, job(4000, 1));
    let id = create(s.addr, job(3000, 2));
    let t = Instant::now();
    let (a, closed) = get_stream(
        s.addr,
        &format!("/v1/videos/{id}/events"),
        Duration::from_secs(180),
    );
    assert!(
        closed,
        "the event stream was still open after 180 s: {}",
        a.text()
    );
    assert_eq!(a.status, 200, "{}", a.text());
    assert!(
        a.header("content-type")
            .is_some_and(|c| c.starts_with("text/event-stream")),
        "{:?}",
        a.headers
    );
    assert!(
        a.complete,
        "the chunked stream ended without its last chunk"
    );
    let text = a.text();
    let events: Vec<Value> = sse_data(&text)
        .iter()
        .map(|d| serde_json::from_str(d).unwrap_or_else(|e| panic!("{e}: event `{d}`")))
        .collect();
    eprintln!(
        "{} events in {:.1} s",
        events.len(),
        t.elapsed().as_secs_f64()
    );
    assert!(events.len() >= 3, "{text}");

    let rank = |v: &Value| match v["status"].as_str() {
        Some("queued") => 0,
        Some("in_progress") => 1,
        Some("completed") => 2,
        other => panic!("status {other:?} in {v}"),
    };
    assert_eq!(events[0]["status"], "queued", "behind the blocker: {text}");
    for (i, e) in events.iter().enumerate() {
        assert_eq!(
            (e["id"].as_str(), e["object"].as_str()),
            (Some(id.as_str()), Some("video")),
            "{e}"
        );
        assert!(e["progress"].as_u64().is_some_and(|p| p <= 100), "{e}");
        if i > 0 {
            let prev = &events[i - 1];
            assert!(rank(prev) <= rank(e), "status went back: {prev} → {e}");
            assert!(
                prev["progress"].as_u64() <= e["progress"].as_u64(),
                "progress went back: {prev} → {e}"
            );
            assert!(
                (&prev["status"], &prev["progress"]) != (&e["status"], &e["progress"]),
                "an event without a change: {e}"
            );
        }
        if e["status"] == "completed" {
            assert_eq!(i, events.len() - 1, "events after completed: {text}");
        }
    }
    let progress: Vec<u64> = events
        .iter()
        .filter(|e| e["status"] == "in_progress")
        .map(|e| e["progress"].as_u64().unwrap())
        .collect();
    assert!(
        progress.len() >= 3 && progress.iter().any(|p| (1..100).contains(p)),
        "in_progress events seen: {progress:?}"
    );
    let last = events.last().unwrap();
    assert_eq!(
        (last["status"].as_str(), last["progress"].as_u64()),
        (Some("completed"), Some(100)),
        "{last}"
    );
    assert!(last["completed_at"].as_i64().is_some(), "{last}");
    let now = get(s.addr, &format!("/v1/videos/{id}")).json();
    assert_eq!(now["status"], "completed");

    // A finished job: one event, then the end.
    let (a, closed) = get_stream(
        s.addr,
        &format!("/v1/videos/{blocker}/events"),
        Duration::from_secs(10),
    );
    assert!(closed && a.status == 200, "{}", a.text());
    let only = sse_data(&a.text());
    assert_eq!(only.len(), 1, "{}", a.text());
    let only: Value = serde_json::from_str(&only[0]).unwrap();
    assert_eq!(
        (only["id"].as_str(), only["status"].as_str()),
        (Some(blocker.as_str()), Some("completed"))
    );
    // No such job: a 404 in the error shape, not a stream.
    let none = get(s.addr, "/v1/videos/video_0123456789abcdef01234567/events");
    assert_eq!(none.status, 404);
    assert!(none.json()["error"]["message"].as_str().is_some());
}

#[test]
fn deleting_a_running_job_cancels_it_and_the_next_one_runs() {
    let data = tempfile::tempdir().unwrap();
    let s = Serve::start(data.path(), &["--max-steps", "100000"]);
    // ~20 s uncancelled; the short one would wait for all of it.
    let long = create(s.addr, job(40000, 1));
    let short = create(s.addr, job(4, 2));
    let v = wait_for(&s, &long, Duration::from_secs(60), running);
    assert_eq!(v["attempts"], 1, "{v}");
    let q = get(s.addr, &format!("/v1/videos/{short}")).json();
    assert_eq!(q["status"], "queued", "{q}");

    let t = Instant::now();
    let d = http(s.addr, "DELETE", &format!("/v1/videos/{long}"), &[], b"");
    assert_eq!(d.status, 200, "{}", d.text());
    assert_eq!(
        d.json(),
        json!({"id": long, "object": "video.deleted", "deleted": true})
    );
    let gone = get(s.addr, &format!("/v1/videos/{long}"));
    assert_eq!(gone.status, 404, "{}", gone.text());
    assert!(gone.json()["error"]["message"].as_str().is_some());
    assert_eq!(
        http(s.addr, "DELETE", &format!("/v1/videos/{long}"), &[], b"").status,
        404
    );
    assert_eq!(
        get(s.addr, &format!("/v1/videos/{long}/events")).status,
        404
    );

    let done = wait_for(&s, &short, Duration::from_secs(60), is_final);
    let waited = t.elapsed();
    eprintln!(
        "the next job completed {:.2} s after the DELETE",
        waited.as_secs_f64()
    );
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(
        (done["progress"].as_u64(), done["attempts"].as_u64()),
        (Some(100), Some(1))
    );

    // The worker stopped the deleted job (between steps) and recorded nothing for it.
    let log = s.log();
    assert_eq!(
        log_count(&log, &long, "stopped (deleted or taken over)"),
        1,
        "{log}"
    );
    assert_eq!(log_count(&log, &long, "recorded"), 0, "{log}");
    // None of its files (nor a temporary one) is left; the other job's two are there.
    let files = list_dir(&data.path().join("videos"));
    assert!(
        !files.iter().any(|f| f.contains(long.as_str())),
        "{files:?}"
    );
    assert_eq!(files, vec![format!("{short}.mp4"), format!("{short}.png")]);
    let l = get(s.addr, "/v1/videos").json();
    let ids: Vec<&str> = l["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["id"].as_str())
        .collect();
    assert_eq!(ids, vec![short.as_str()]);
    assert_eq!(
        (metric(&s, "in_progress"), metric(&s, "queued")),
        (0, 0),
        "nothing runs any more"
    );
    let mp4 = get(s.addr, &format!("/v1/videos/{short}/content"));
    assert_eq!(
        (mp4.status, mp4.header("content-type")),
        (200, Some("video/mp4"))
    );
}

/// SIGTERM: the server stops within a minute with exit status 0, handing the running job back
/// (it runs again after the restart, its attempt counted) and keeping the queued one.
#[test]
fn sigterm_stops_gracefully_and_the_running_job_runs_again() {
    let data = tempfile::tempdir().unwrap();
    let mut first = Serve::start(data.path(), &["--max-steps", "100000"]);
    let ids = [
        create(first.addr, job(40000, 1)),
        create(first.addr, job(4, 2)),
    ];
    wait_for(&first, &ids[0], Duration::from_secs(60), running);
    let t = Instant::now();
    let term = Command::new("kill")
        .args(["-TERM", &first.child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let status = loop {
        if let Some(s) = first.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "still running:\n{}",
            first.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}\n{}", first.log());
    let log = first.log();
    assert!(log.contains("released for a later run"), "{log}");
    drop(first);
    let second = Serve::start(data.path(), &["--max-steps", "100000"]);
    // The long job is claimable again at once (released, not waiting for its lease). Wait for
    // the second attempt itself: until the new worker claims it, the released job still reads
    // in_progress under the stopped server, attempt 1.
    let v = wait_for(&second, &ids[0], Duration::from_secs(60), |v| {
        running(v) && v["attempts"] == 2
    });
    assert_eq!(v["attempts"].as_u64(), Some(2), "{v}");
    let d = http(
        second.addr,
        "DELETE",
        &format!("/v1/videos/{}", ids[0]),
        &[],
        b"",
    );
    assert_eq!(d.status, 200);
    let short = wait_for(&second, &ids[1], Duration::from_secs(60), is_final);
    assert_eq!(
        (short["status"].as_str(), short["attempts"].as_u64()),
        (Some("completed"), Some(1)),
        "{short}"
    );
}

#[test]
fn the_queue_survives_kill_9_and_every_job_runs_once() {
    let data = tempfile::tempdir().unwrap();
    let mut first = Serve::start(data.path(), &["--max-steps", "100000"]);
    let ids = [
        create(first.addr, job(4000, 1)),
        create(first.addr, job(4, 2)),
        create(first.addr, job(8, 3)),
    ];
    let v = wait_for(&first, &ids[0], Duration::from_secs(60), running);
    assert_eq!(v["worker"].as_str(), Some(first.worker_id().as_str()));
    for id in &ids[1..] {
        let q = get(first.addr, &format!("/v1/videos/{id}")).json();
        assert_eq!(
            (q["status"].as_str(), q["attempts"].as_u64()),
            (Some("queued"), Some(0))
        );
    }
    let old_worker = first.worker_id();
    first.kill9();
    let first_log = first.log();
    drop(first);
    assert!(!first_log.contains("recorded"), "{first_log}");

    let second = Serve::start(data.path(), &["--max-steps", "100000"]);
    let worker = second.worker_id();
    assert_ne!(worker, old_worker);
    let done: Vec<Value> = ids
        .iter()
        .map(|id| wait_for(&second, id, Duration::from_secs(60), is_final))
        .collect();
    for (i, v) in done.iter().enumerate() {
        assert_eq!(
            (v["status"].as_str(), v["progress"].as_u64()),
            (Some("completed"), Some(100)),
            "{v}"
        );
        let attempts = if i == 0 { 2 } else { 1 };
        assert_eq!(v["attempts"].as_u64(), Some(attempts), "{v}");
        assert_eq!(v["worker"].as_str(), Some(worker.as_str()), "{v}");
        assert!(v["timings"]["denoise"].as_f64().is_some(), "{v}");
    }
    // The worker logs `recorded` just after the queue marks the job completed: wait for it.
    let t = Instant::now();
    let mut log = second.log();
    while ids.iter().any(|id| log_count(&log, id, "recorded") == 0)
        && t.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(20));
        log = second.log();
    }
    assert!(
        log.contains("1 job(s) left running by a previous process will run again"),
        "{log}"
    );
    for id in &ids {
        assert_eq!(log_count(&log, id, "started by"), 1, "{id}: {log}");
        assert_eq!(log_count(&log, id, "recorded"), 1, "{id}: {log}");
    }
    assert_eq!(log_count(&log, &ids[0], "(attempt 2)"), 1, "{log}");

    // Exactly those three, each once, and only their files.
    let l = get(second.addr, "/v1/videos?order=asc").json();
    let listed: Vec<&str> = l["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["id"].as_str())
        .collect();
    assert_eq!(listed, ids.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(l["has_more"], false);
    assert_eq!(metric(&second, "completed"), 3);
    let mut want: Vec<String> = ids
        .iter()
        .flat_map(|id| [format!("{id}.mp4"), format!("{id}.png")])
        .collect();
    want.sort();
    assert_eq!(list_dir(&data.path().join("videos")), want);
    for id in &ids {
        let mp4 = get(second.addr, &format!("/v1/videos/{id}/content"));
        assert_eq!(mp4.status, 200);
        assert!(mp4.body.len() > 100 && &mp4.body[4..8] == b"ftyp", "{id}");
    }
}

// ---------------------------------------------------------------------------------------------
// Fuzzing the create body.

/// xorshift64*: a deterministic stream of pseudo-random numbers.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T: ?Sized>(&mut self, xs: &[&'a T]) -> &'a T {
        xs[self.below(xs.len())]
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

const ODD_FIELDS: [&str; 10] = [
    "colour",
    "",
    "Prompt",
    "prompt ",
    "size\u{0}",
    "größe",
    "🎬",
    "num_frames[]",
    "__proto__",
    "a\"b",
];

/// A JSON number as text, including ones JSON numbers cannot hold.
fn number_text(r: &mut Rng) -> String {
    match r.below(14) {
        0 => "0".into(),
        1 => "-1".into(),
        2 => "-0".into(),
        3 => (r.below(200)).to_string(),
        4 => format!("{}.{}", r.below(100), r.below(1000)),
        5 => "18446744073709551615".into(),
        6 => "18446744073709551616".into(),
        7 => "-9223372036854775809".into(),
        8 => "1e300".into(),
        9 => "-1e300".into(),
        10 => "1e400".into(),
        11 => "1e-400".into(),
        12 => "4.9e-324".into(),
        _ => format!("{}e{}", r.below(10), r.below(40)),
    }
}

/// A string value (as JSON text).
fn string_value(r: &mut Rng) -> String {
    let s: String = match r.below(16) {
        0 => "".into(),
        1 => "   ".into(),
        2 => "NaN".into(),
        3 => "inf".into(),
        4 => "-1".into(),
        5 => "48x32".into(),
        6 => "16x16".into(),
        7 => "0x0".into(),
        8 => "48X32 ".into(),
        9 => "99999999999999999999x16".into(),
        10 => "猫が草の上を歩く 🐈\u{200d}⬛".into(),
        11 => "\u{0}\u{1}\u{7f}".into(),
        12 => "a".repeat(r.below(5000)),
        13 => "sora-2".into(),
        14 => number_text(r),
        _ => "hunyuanvideo".into(),
    };
    serde_json::to_string(&s).unwrap()
}

fn value_text(r: &mut Rng, depth: usize) -> String {
    match r.below(if depth > 2 { 6 } else { 8 }) {
        0 | 1 => number_text(r),
        2 | 3 => string_value(r),
        4 => "null".into(),
        5 => r.pick(&["true", "false"]).to_owned(),
        6 => {
            let n = r.below(4);
            let items: Vec<String> = (0..n).map(|_| value_text(r, depth + 1)).collect();
            format!("[{}]", items.join(","))
        }
        _ => {
            let n = r.below(3);
            let items: Vec<String> = (0..n)
                .map(|_| {
                    let k = serde_json::to_string(r.pick(&FIELDS)).unwrap();
                    format!("{k}:{}", value_text(r, depth + 1))
                })
                .collect();
            format!("{{{}}}", items.join(","))
        }
    }
}

/// A valid value for a field, within the fuzz server's limits.
fn good_value(field: &str, r: &mut Rng) -> Option<String> {
    Some(match field {
        "prompt" => serde_json::to_string(r.pick(&["a cat", "ein Hund im Schnee", "🐈"])).unwrap(),
        "size" => r.pick(&["\"48x32\"", "\"32x48\"", "\"64x64\""]).to_owned(),
        "seconds" => r.pick(&["0.2", "\"0.3\"", "0.01"]).to_owned(),
        "num_frames" => r.pick(&["1", "5", "9", "\"9\""]).to_owned(),
        "num_inference_steps" => r.pick(&["1", "2", "\"2\""]).to_owned(),
        "seed" => r.below(1000).to_string(),
        "model" => r.pick(&["\"hunyuanvideo\"", "\"sora-2\""]).to_owned(),
        "guidance_scale" => "5.5".into(),
        "flow_shift" => "7".into(),
        "fps" => r.pick(&["24", "\"12\""]).to_owned(),
        "step_cache" => r
            .pick(&["\"none\"", "\"teacache\"", "\"fbcache\""])
            .to_owned(),
        "step_cache_threshold" => r.pick(&["0", "0.15", "\"0.05\""]).to_owned(),
        "step_cache_start" => r.pick(&["0", "\"1\""]).to_owned(),
        "step_cache_end" => r.pick(&["1", "\"2\""]).to_owned(),
        _ => return None,
    })
}

/// A JSON object: mostly valid fields with sometimes an odd one, or anything at all.
fn json_object(r: &mut Rng) -> String {
    let mut items = vec![];
    if r.chance(85) {
        items.push(format!("\"prompt\":{}", good_value("prompt", r).unwrap()));
    }
    for _ in 0..r.below(6) {
        let field = if r.chance(10) {
            r.pick(&ODD_FIELDS)
        } else {
            r.pick(&FIELDS)
        };
        let value = match good_value(field, r) {
            Some(v) if r.chance(60) => v,
            _ => value_text(r, 0),
        };
        items.push(format!("{}:{value}", serde_json::to_string(field).unwrap()));
    }
    format!("{{{}}}", items.join(","))
}

/// Multipart text fields under `boundary` (sometimes broken).
fn multipart(r: &mut Rng, boundary: &str) -> Vec<u8> {
    let mut out = String::new();
    if r.chance(10) {
        out.push_str("preamble\r\n");
    }
    let mut fields: Vec<(String, String)> = vec![];
    if r.chance(85) {
        fields.push(("prompt".into(), "a cat".into()));
    }
    for _ in 0..r.below(5) {
        let f = if r.chance(15) {
            r.pick(&ODD_FIELDS)
        } else {
            r.pick(&FIELDS)
        };
        let v = match good_value(f, r) {
            Some(v) if r.chance(60) => v.trim_matches('"').to_owned(),
            _ => value_text(r, 1),
        };
        fields.push((f.to_owned(), v));
    }
    for (k, v) in fields {
        out.push_str(&format!("--{boundary}\r\n"));
        match r.below(10) {
            0 => out.push_str("Content-Disposition: form-data\r\n"),
            1 => out.push_str(&format!(
                "Content-Disposition: form-data; name=\"{k}\"; filename=\"x.png\"\r\n\
                 Content-Type: image/png\r\n"
            )),
            2 => out.push_str(&format!("Content-Disposition: attachment; name={k}\r\n")),
            3 => {} // no headers at all
            _ => out.push_str(&format!("Content-Disposition: form-data; name=\"{k}\"\r\n")),
        }
        out.push_str("\r\n");
        out.push_str(&v);
        out.push_str("\r\n");
    }
    match r.below(6) {
        0 => {}                                          // no closing boundary
        1 => out.push_str(&format!("--{boundary}\r\n")), // an open part at the end
        _ => out.push_str(&format!("--{boundary}--\r\n")),
    }
    let mut bytes = out.into_bytes();
    if r.chance(10) {
        bytes.extend_from_slice(&[0xff, 0xfe, 0x00, 0xc3]);
    }
    bytes
}

/// One fuzzed request: headers and body.
/// A create request to send: its headers and its body.
type Case = (Vec<(String, String)>, Vec<u8>);

fn fuzz_case(r: &mut Rng) -> Case {
    let json_type = || vec![("Content-Type".to_owned(), "application/json".to_owned())];
    match r.below(10) {
        0..=3 => {
            let mut h = json_type();
            if r.chance(10) {
                h = vec![];
            }
            (h, json_object(r).into_bytes())
        }
        4 => {
            // Truncated JSON.
            let full = json_object(r);
            let cut = r.below(full.len().max(1));
            (json_type(), full.as_bytes()[..cut].to_vec())
        }
        5 => {
            // Not JSON at all, or JSON that is not an object.
            let body = match r.below(6) {
                0 => value_text(r, 0).into_bytes(),
                1 => (0..r.below(64)).map(|_| r.next() as u8).collect(),
                2 => b"prompt=a+cat&size=48x32".to_vec(),
                3 => b"{\"prompt\": \"a\" \"size\": \"48x32\"}".to_vec(),
                4 => b"{\"prompt\": \"\\ud800\"}".to_vec(),
                _ => vec![],
            };
            let ct = r
                .pick(&[
                    "application/json",
                    "text/plain",
                    "application/x-www-form-urlencoded",
                ])
                .to_owned();
            (vec![("Content-Type".to_owned(), ct)], body)
        }
        _ => {
            let boundary = r
                .pick(&[
                    "XyZ",
                    "----WebKitFormBoundary7MA4YWxkTrZu0gW",
                    "a",
                    "\"quoted boundary\"",
                    "b=c",
                    "with space",
                    "ünïcødé",
                    "--",
                    "x".repeat(80).as_str(),
                ])
                .to_owned();
            let body = multipart(r, boundary.trim_matches('"'));
            let ct = match r.below(8) {
                0 => "multipart/form-data".to_owned(),
                1 => "multipart/form-data; boundary=".to_owned(),
                2 => format!("Multipart/Form-Data; BOUNDARY={boundary}"),
                3 => format!("multipart/form-data; boundary={boundary}; charset=utf-8"),
                4 => format!("multipart/form-data; boundary=other{boundary}"),
                _ => format!("multipart/form-data; boundary={boundary}"),
            };
            (vec![("Content-Type".to_owned(), ct)], body)
        }
    }
}

/// Hand-picked bodies tried before the random ones.
fn edge_cases() -> Vec<Case> {
    let j = |b: &str| {
        (
            vec![("Content-Type".to_owned(), "application/json".to_owned())],
            b.as_bytes().to_vec(),
        )
    };
    vec![
        j(""),
        j("{}"),
        j("null"),
        j("{\"prompt\":\"a\",\"seconds\":1e300}"),
        j("{\"prompt\":\"a\",\"seconds\":\"1e300\"}"),
        j("{\"prompt\":\"a\",\"seconds\":7.7e17}"),
        j("{\"prompt\":\"a\",\"seconds\":1e-300}"),
        j("{\"prompt\":\"a\",\"seed\":18446744073709551616}"),
        j("{\"prompt\":\"a\",\"num_frames\":1e400}"),
        j("{\"prompt\":\"a\",\"num_inference_steps\":-0}"),
        j("{\"prompt\":\"a\",\"size\":\"48x32x16\"}"),
        j("{\"prompt\":\"a\",\"prompt\":3}"),
        j("{\"prompt\":\"a\",\"fps\":1e19}"),
        j("[{\"prompt\":\"a\"}]"),
        (
            vec![(
                "Content-Type".to_owned(),
                "multipart/form-data; boundary=XyZ".to_owned(),
            )],
            b"".to_vec(),
        ),
        (
            vec![(
                "Content-Type".to_owned(),
                "multipart/form-data; boundary=XyZ".to_owned(),
            )],
            b"--XyZ--\r\n".to_vec(),
        ),
    ]
}

#[test]
fn fuzzed_create_bodies_answer_200_or_an_openai_4xx() {
    let data = tempfile::tempdir().unwrap();
    // Small limits, so that the defaults of a valid body make a small job too.
    let mut s = Serve::start(
        data.path(),
        &[
            "--max-size",
            "64",
            "--max-frames",
            "9",
            "--max-steps",
            "2",
            "--max-queue",
            "1000",
        ],
    );
    let mut r = Rng(0x9E37_79B9_7F4A_7C15);
    let mut cases = edge_cases();
    cases.extend((0..400).map(|_| fuzz_case(&mut r)));
    let (mut created, mut refused) = (0usize, 0usize);
    let mut failures: Vec<String> = vec![];
    for (i, (headers, body)) in cases.iter().enumerate() {
        let h: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let shown: String = String::from_utf8_lossy(body).chars().take(300).collect();
        let case = format!("#{i} {headers:?} `{shown}`");
        let a = match try_http(s.addr, "POST", "/v1/videos", &h, body) {
            Ok(a) => a,
            Err(e) => {
                failures.push(format!("{case}: no answer ({e})"));
                continue;
            }
        };
        let parsed: Option<Value> = serde_json::from_slice(&a.body).ok();
        match a.status {
            200 => {
                let id = parsed
                    .as_ref()
                    .filter(|v| v["object"] == "video")
                    .and_then(|v| v["id"].as_str())
                    .map(str::to_owned);
                let Some(id) = id else {
                    failures.push(format!("{case}: 200 without a video: {}", a.text()));
                    continue;
                };
                created += 1;
                let d = http(s.addr, "DELETE", &format!("/v1/videos/{id}"), &[], b"");
                if d.status != 200 {
                    failures.push(format!("{case}: DELETE {id}: {} {}", d.status, d.text()));
                }
            }
            400..=499 => {
                refused += 1;
                let e = parsed.as_ref().map(|v| &v["error"]);
                let shaped = e.is_some_and(|e| {
                    e["message"].as_str().is_some_and(|m| !m.is_empty())
                        && e["type"].as_str().is_some()
                        && e.get("param").is_some_and(|p| p.is_null() || p.is_string())
                        && e.get("code").is_some_and(|c| c.is_null() || c.is_string())
                });
                if !shaped {
                    failures.push(format!(
                        "{case}: {} not in the error shape: {}",
                        a.status,
                        a.text()
                    ));
                }
            }
            other => failures.push(format!("{case}: status {other}: {}", a.text())),
        }
    }
    eprintln!(
        "{} bodies: {created} created (and deleted), {refused} refused, {} failures",
        cases.len(),
        failures.len()
    );
    s.assert_alive();
    assert_eq!(get(s.addr, "/healthz").status, 200);
    assert!(
        failures.is_empty(),
        "{} of {} bodies failed:\n{}\n--- panics in the server log:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n"),
        panics(&s.log())
    );
    assert!(
        created >= 20 && refused >= 100,
        "{created} created, {refused} refused"
    );
    // Every created job was deleted: none is listed and, once the worker let go of the last
    // one, no file is left.
    let l = get(s.addr, "/v1/videos?limit=100").json();
    assert_eq!(l["data"], json!([]), "{l}");
    let t = Instant::now();
    while !list_dir(&data.path().join("videos")).is_empty() {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "{:?}",
            list_dir(&data.path().join("videos"))
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
