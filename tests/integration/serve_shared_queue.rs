//! Two `hyvideo serve` processes on one PostgreSQL queue (a throwaway server from
//! `crate::postgres`), each with its own data dir, as two GPU machines would run: they drain the
//! jobs between them, each job exactly once; either server answers for every job and serves
//! every video (from the database when another server made it); a worker killed with `kill -9`
//! mid-job leaves its job to the other, which runs it again once the lease runs out.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::http_client::{get, http};
use crate::postgres::PgServer;
use crate::serve_process::{Serve, create, is_final, job, log_count, running, wait_for};

#[test]
fn two_servers_on_one_postgres_queue_share_and_recover_the_jobs() {
    let pg = PgServer::start();
    let url = pg.database("shared_queue");
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let args = |worker: &'static str| -> Vec<String> {
        [
            "--queue",
            &url,
            "--worker-id",
            worker,
            "--lease-seconds",
            "6",
        ]
        .into_iter()
        .map(str::to_owned)
        .chain(["--max-steps".into(), "100000".into()])
        .collect()
    };
    let args_a = args("gpu-a");
    let args_b = args("gpu-b");
    let a = Serve::start(
        dir_a.path(),
        &args_a.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let mut b = Serve::start(
        dir_b.path(),
        &args_b.iter().map(String::as_str).collect::<Vec<_>>(),
    );

    // Eight jobs, created on both servers; each runs a few hundred milliseconds.
    let ids: Vec<String> = (0..8)
        .map(|i| create(if i % 2 == 0 { a.addr } else { b.addr }, job(800, i)))
        .collect();
    let done: Vec<Value> = ids
        .iter()
        .map(|id| wait_for(&a, id, Duration::from_secs(120), is_final))
        .collect();
    let mut workers = BTreeSet::new();
    for v in &done {
        assert_eq!(
            (v["status"].as_str(), v["attempts"].as_u64()),
            (Some("completed"), Some(1)),
            "{v}"
        );
        workers.insert(v["worker"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        workers,
        BTreeSet::from(["gpu-a".to_owned(), "gpu-b".to_owned()]),
        "both workers ran jobs"
    );
    let (log_a, log_b) = (a.log(), b.log());
    for id in &ids {
        let started = log_count(&log_a, id, "started by") + log_count(&log_b, id, "started by");
        assert_eq!(started, 1, "{id} ran once\nA:\n{log_a}\nB:\n{log_b}");
    }

    // Every video from either server, byte-equal, whichever made it (the other one reads the
    // database: its data dir does not have the file).
    for (id, v) in ids.iter().zip(&done) {
        let from_a = get(a.addr, &format!("/v1/videos/{id}/content"));
        let from_b = get(b.addr, &format!("/v1/videos/{id}/content"));
        assert_eq!((from_a.status, from_b.status), (200, 200), "{id}");
        assert_eq!(&from_a.body[4..8], b"ftyp", "{id}");
        assert_eq!(from_a.body, from_b.body, "{id}");
        let (maker, other) = if v["worker"] == "gpu-a" {
            (&dir_a, &dir_b)
        } else {
            (&dir_b, &dir_a)
        };
        let file = format!("videos/{id}.mp4");
        assert!(maker.path().join(&file).exists(), "{id}");
        assert!(!other.path().join(&file).exists(), "{id}");
        let thumb_a = get(
            a.addr,
            &format!("/v1/videos/{id}/content?variant=thumbnail"),
        );
        let thumb_b = get(
            b.addr,
            &format!("/v1/videos/{id}/content?variant=thumbnail"),
        );
        assert_eq!(&thumb_a.body[1..4], b"PNG", "{id}");
        assert_eq!(thumb_a.body, thumb_b.body, "{id}");
    }
    // Range requests work on a video served from the database.
    let remote_id = ids
        .iter()
        .zip(&done)
        .find(|(_, v)| v["worker"] == "gpu-a")
        .map(|(id, _)| id.clone())
        .unwrap();
    let whole = get(b.addr, &format!("/v1/videos/{remote_id}/content")).body;
    let part = http(
        b.addr,
        "GET",
        &format!("/v1/videos/{remote_id}/content"),
        &[("Range", "bytes=4-11")],
        b"",
    );
    assert_eq!(part.status, 206);
    assert_eq!(part.body, whole[4..12]);

    // One list for both servers.
    let la = get(a.addr, "/v1/videos?order=asc&limit=100").json();
    let lb = get(b.addr, "/v1/videos?order=asc&limit=100").json();
    assert_eq!(la["data"].as_array().unwrap().len(), 8);
    assert_eq!(
        la["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["id"].clone())
            .collect::<Vec<_>>(),
        lb["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["id"].clone())
            .collect::<Vec<_>>()
    );

    // A long job; the server running it is killed; the other finishes it after the lease.
    let long = create(a.addr, job(12_000, 99));
    let v = wait_for(&a, &long, Duration::from_secs(60), running);
    let holder = v["worker"].as_str().unwrap().to_owned();
    let (mut dead, survivor, survivor_id) = if holder == "gpu-a" {
        (a, b, "gpu-b")
    } else {
        b.assert_alive();
        (b, a, "gpu-a")
    };
    dead.kill9();
    let killed = Instant::now();
    drop(dead);
    let v = wait_for(&survivor, &long, Duration::from_secs(120), |v| {
        v["status"] == "in_progress" && v["worker"] == survivor_id
    });
    let taken_after = killed.elapsed();
    assert_eq!(v["attempts"].as_u64(), Some(2), "{v}");
    assert!(
        taken_after >= Duration::from_secs(1),
        "taken over {taken_after:?} after the kill, before the 6 s lease could run out: {v}"
    );
    let v = wait_for(&survivor, &long, Duration::from_secs(120), is_final);
    assert_eq!(
        (
            v["status"].as_str(),
            v["attempts"].as_u64(),
            v["worker"].as_str()
        ),
        (Some("completed"), Some(2), Some(survivor_id)),
        "{v}"
    );
    let log = survivor.log();
    assert_eq!(log_count(&log, &long, "(attempt 2)"), 1, "{log}");

    // DELETE on a shared queue removes the row and the stored video for every server; the
    // server that made the video (dead now) drops its file at its next start's retention sweep.
    let dead_id = if survivor_id == "gpu-a" {
        "gpu-b"
    } else {
        "gpu-a"
    };
    let (orphan, dead_dir) = ids
        .iter()
        .zip(&done)
        .find(|(_, v)| v["worker"] == dead_id)
        .map(|(id, _)| (id.clone(), if dead_id == "gpu-a" { &dir_a } else { &dir_b }))
        .unwrap();
    let orphan_file = dead_dir.path().join(format!("videos/{orphan}.mp4"));
    assert!(orphan_file.exists());
    let gone = http(
        survivor.addr,
        "DELETE",
        &format!("/v1/videos/{orphan}"),
        &[],
        b"",
    );
    assert_eq!(gone.status, 200, "{}", gone.text());
    assert_eq!(
        get(survivor.addr, &format!("/v1/videos/{orphan}/content")).status,
        404
    );
    let mut db = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let rows: i64 = db
        .query_one(
            "SELECT (SELECT COUNT(*) FROM hyvideo_jobs WHERE id = $1)
                  + (SELECT COUNT(*) FROM hyvideo_videos WHERE id = $1)",
            &[&orphan],
        )
        .unwrap()
        .get(0);
    assert_eq!(rows, 0);
    let stored: i64 = db
        .query_one("SELECT COUNT(*) FROM hyvideo_videos", &[])
        .unwrap()
        .get(0);
    assert_eq!(
        stored, 8,
        "the other 7 of the 8 and the long job are stored"
    );
    assert!(
        orphan_file.exists(),
        "the dead server's file is still there"
    );
    let dead_args = if dead_id == "gpu-a" { &args_a } else { &args_b };
    let restarted = Serve::start(
        dead_dir.path(),
        &dead_args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let t = Instant::now();
    while orphan_file.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "{} kept {orphan}'s file:\n{}",
            dead_id,
            restarted.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Its other videos stay, and it serves the long job that the survivor made.
    let kept = done.iter().filter(|v| v["worker"] == dead_id).count() - 1;
    let files = std::fs::read_dir(dead_dir.path().join("videos"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "mp4"))
        .count();
    assert_eq!(files, kept);
    let long_video = get(restarted.addr, &format!("/v1/videos/{long}/content"));
    assert_eq!(long_video.status, 200);
    assert_eq!(
        long_video.body,
        get(survivor.addr, &format!("/v1/videos/{long}/content")).body
    );
}

/// `--queue` that is no queue, or a PostgreSQL server that does not answer: `hyvideo serve`
/// exits non-zero naming the flag (the password hidden) before it loads any engine.
#[test]
fn a_bad_queue_is_refused_before_the_engines_load() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let data = tempfile::tempdir().unwrap();
    let unreachable = format!("postgres://hy:s3cret@127.0.0.1:{port}/videos?connect_timeout=2");
    for (queue, want) in [
        (
            "mysql://db/videos",
            "--queue mysql://db/videos: not a queue location",
        ),
        (unreachable.as_str(), "--queue postgres://hy:***@127.0.0.1:"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_hyvideo"))
            .args(["serve", "--bundle", "/nonexistent/bundle", "--queue", queue])
            .arg("--data-dir")
            .arg(data.path())
            .env_remove("HYVIDEO_API_KEY")
            .env_remove("HYVIDEO_QUEUE")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{queue}: {stderr}");
        assert!(stderr.contains(want), "{queue}: {stderr}");
        assert!(!stderr.contains("s3cret"), "{stderr}");
        assert!(
            !stderr.contains("/nonexistent/bundle"),
            "failed before loading: {stderr}"
        );
    }
}
