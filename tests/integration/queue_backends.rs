//! The job queue's contract, checked the same way on both databases: SQLite in a temporary data
//! dir and a throwaway PostgreSQL server (`crate::postgres`). Each behaviour runs on queue
//! handles opened afresh (two handles stand for two servers sharing the queue); timestamps are
//! passed in, so leases run out without waiting. Image-to-video jobs' input images are stored
//! with the create, read by any handle and deleted with the job.

use std::collections::BTreeSet;
use std::sync::{Arc, Barrier};

use hyvideo_server::queue::{
    Content, ContentStore, JobQueue, JobStatus, MAX_ATTEMPTS, Order, PgQueue, QueueError,
    QueueLocation, SqliteQueue, Variant,
};

use crate::postgres::PgServer;

const MAX: usize = 1000;
const LEASE: i64 = 60;

type Open<'a> = &'a (dyn Fn() -> Box<dyn JobQueue> + Sync);

fn none() -> Content {
    Content::default()
}

fn add(q: &dyn JobQueue, id: &str, now: i64) {
    let c = q.create(id, "{}", None, MAX, now).expect("create");
    assert!(!c.existing);
    assert_eq!(c.job.status, JobStatus::Queued);
}

fn ids(q: &dyn JobQueue, after: Option<&str>, limit: usize, order: Order) -> (Vec<String>, bool) {
    let (jobs, more) = q.list(after, limit, order).expect("list");
    (jobs.into_iter().map(|j| j.id).collect(), more)
}

/// Create, idempotency keys, the queue-length limit and paging.
fn creates_and_lists(open: Open) {
    let q = open();
    let first = q
        .create("video_a", r#"{"n":1}"#, Some("k1"), MAX, 10)
        .unwrap();
    assert_eq!((first.existing, first.job.created_at), (false, 10));
    assert_eq!(first.job.settings, r#"{"n":1}"#);
    // A second handle (another server) sees the key.
    let other = open();
    let again = other.create("video_b", "{}", Some("k1"), MAX, 20).unwrap();
    assert!(again.existing);
    assert_eq!(again.job, first.job);
    assert_eq!(q.get("video_b").unwrap(), None);
    for (i, id) in ["video_c", "video_d", "video_e"].iter().enumerate() {
        add(&*other, id, 30 + i as i64);
    }
    // Four queued: the limit counts them; a repeated key still answers.
    assert!(matches!(
        q.create("video_f", "{}", None, 4, 40),
        Err(QueueError::Full { queued: 4, max: 4 })
    ));
    assert!(
        q.create("video_g", "{}", Some("k1"), 4, 40)
            .unwrap()
            .existing
    );
    let running = q.claim("w", LEASE, 50).unwrap().unwrap();
    assert_eq!(running.id, "video_a");
    assert_eq!(q.queued().unwrap(), 3);
    add(&*q, "video_f", 41);
    assert_eq!(
        ids(&*q, None, 2, Order::Asc),
        (vec!["video_a".into(), "video_c".into()], true)
    );
    assert_eq!(
        ids(&*q, Some("video_c"), 10, Order::Asc),
        (
            vec!["video_d".into(), "video_e".into(), "video_f".into()],
            false
        )
    );
    assert_eq!(
        ids(&*q, Some("video_e"), 10, Order::Desc),
        (
            vec!["video_d".into(), "video_c".into(), "video_a".into()],
            false
        )
    );
    assert_eq!(ids(&*q, Some("video_zz"), 10, Order::Desc), (vec![], false));
    let counts = q.counts().unwrap();
    assert_eq!(counts[&JobStatus::Queued], 4);
    assert_eq!(counts[&JobStatus::InProgress], 1);
    assert_eq!(counts[&JobStatus::Completed], 0);
}

/// Claim order, the holder's rights, leases running out, `worker_lost`, release, delete and
/// retention.
fn claims_and_leases(open: Open) {
    let q = open();
    add(&*q, "video_1", 1);
    add(&*q, "video_2", 2);
    let a = q.claim("w1", LEASE, 10).unwrap().unwrap();
    assert_eq!(
        (a.id.as_str(), a.attempts, a.worker.as_deref(), a.started_at),
        ("video_1", 1, Some("w1"), Some(10))
    );
    assert!(q.set_progress("video_1", "w1", 40).unwrap());
    assert!(!q.set_progress("video_1", "w2", 50).unwrap());
    assert_eq!(q.get("video_1").unwrap().unwrap().progress, 40);
    let b = q.claim("w2", LEASE, 11).unwrap().unwrap();
    assert_eq!(b.id, "video_2");
    assert!(q.claim("w3", LEASE, 12).unwrap().is_none());
    // w1 renews; w2 does not and loses video_2 to w3 once its lease ran out.
    assert!(q.renew("video_1", "w1", LEASE, 60).unwrap());
    let taken = q.claim("w3", LEASE, 11 + LEASE).unwrap().unwrap();
    assert_eq!((taken.id.as_str(), taken.attempts), ("video_2", 2));
    assert!(!q.renew("video_2", "w2", LEASE, 80).unwrap());
    assert!(!q.complete("video_2", "w2", "{}", 999, 80, &none()).unwrap());
    assert!(
        q.fail("video_2", "w3", "generation_failed", "boom", 81)
            .unwrap()
    );
    let failed = q.get("video_2").unwrap().unwrap();
    assert_eq!(failed.status, JobStatus::Failed);
    let err = failed.error.unwrap();
    assert_eq!(
        (err.code.as_str(), err.message.as_str()),
        ("generation_failed", "boom")
    );
    assert!(
        q.complete("video_1", "w1", r#"{"t":1}"#, 500, 90, &none())
            .unwrap()
    );
    let done = q.get("video_1").unwrap().unwrap();
    assert_eq!(
        (
            done.status,
            done.progress,
            done.completed_at,
            done.expires_at
        ),
        (JobStatus::Completed, 100, Some(90), Some(500))
    );
    assert_eq!(done.result.as_deref(), Some(r#"{"t":1}"#));
    assert_eq!(q.expired(499).unwrap(), Vec::<String>::new());
    assert_eq!(q.expired(500).unwrap(), vec!["video_1".to_string()]);

    // A job whose workers keep dying: MAX_ATTEMPTS claims, then worker_lost.
    add(&*q, "video_3", 100);
    let mut t = 200;
    for attempt in 1..=MAX_ATTEMPTS {
        let j = q
            .claim(&format!("dies{attempt}"), LEASE, t)
            .unwrap()
            .unwrap();
        assert_eq!((j.id.as_str(), j.attempts), ("video_3", attempt));
        t += LEASE;
    }
    add(&*q, "video_4", 101);
    let next = q.claim("w9", LEASE, t).unwrap().unwrap();
    assert_eq!(next.id, "video_4", "video_3 is failed, not claimed again");
    let lost = q.get("video_3").unwrap().unwrap();
    assert_eq!(lost.status, JobStatus::Failed);
    assert_eq!(lost.error.unwrap().code, "worker_lost");

    // Release hands a job back at once; only its holder can.
    assert!(!q.release("video_4", "w1").unwrap());
    assert!(q.release("video_4", "w9").unwrap());
    let back = q.claim("w8", LEASE, t + 1).unwrap().unwrap();
    assert_eq!((back.id.as_str(), back.attempts), ("video_4", 2));

    assert!(q.delete("video_4").unwrap());
    assert!(!q.delete("video_4").unwrap());
    assert_eq!(q.get("video_4").unwrap(), None);
    assert!(!q.set_progress("video_4", "w8", 10).unwrap());
}

/// Two handles (two servers) draining one queue at once: each job claimed exactly once.
fn two_handles_never_claim_the_same_job(open: Open) {
    const JOBS: usize = 120;
    let q = open();
    let mut all = BTreeSet::new();
    for i in 0..JOBS {
        let id = format!("video_{i:04}");
        add(&*q, &id, 1);
        all.insert(id);
    }
    let barrier = Arc::new(Barrier::new(2));
    let got: Vec<Vec<String>> = std::thread::scope(|s| {
        let handles: Vec<_> = ["w1", "w2"]
            .into_iter()
            .map(|w| {
                let barrier = barrier.clone();
                s.spawn(move || {
                    let q = open();
                    barrier.wait();
                    let mut got = vec![];
                    while let Some(job) = q.claim(w, LEASE, 100).unwrap() {
                        assert_eq!(job.attempts, 1, "{} claimed twice", job.id);
                        assert!(q.complete(&job.id, w, "{}", 999, 101, &none()).unwrap());
                        got.push(job.id);
                    }
                    got
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut seen = BTreeSet::new();
    for id in got.iter().flatten() {
        assert!(seen.insert(id.clone()), "{id} claimed by both");
    }
    assert_eq!(seen, all);
    assert_eq!(q.counts().unwrap()[&JobStatus::Completed], JOBS);
}

/// An image-to-video job's input image: stored in the create's transaction, read by another
/// handle (the server that claims the job), untouched by an idempotent retry, kept through the
/// job's life and deleted with its row (DELETE or retention).
fn stores_input_images(open: Open) {
    let (q, other) = (open(), open());
    // Every byte value, and more than a page of either database.
    let image: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let c = q
        .create_with_image("video_i", "{}", Some("img"), MAX, 1, Some(&image))
        .unwrap();
    assert!(!c.existing);
    assert_eq!(other.input_image("video_i").unwrap(), Some(image.clone()));
    let retry = other
        .create_with_image("video_j", "{}", Some("img"), MAX, 2, Some(b"other"))
        .unwrap();
    assert!(retry.existing && retry.job.id == "video_i");
    assert_eq!(q.input_image("video_i").unwrap(), Some(image.clone()));
    assert_eq!(q.input_image("video_j").unwrap(), None);
    add(&*q, "video_t", 3);
    assert_eq!(other.input_image("video_t").unwrap(), None, "no image");
    assert_eq!(other.input_image("video_nope").unwrap(), None);
    // A full queue stores nothing.
    assert!(matches!(
        q.create_with_image("video_k", "{}", None, 2, 4, Some(b"x")),
        Err(QueueError::Full { .. })
    ));
    assert_eq!(q.input_image("video_k").unwrap(), None);
    // The worker that claims the job reads its image; it stays until the job is gone.
    let job = other.claim("w", LEASE, 10).unwrap().unwrap();
    assert_eq!(job.id, "video_i");
    assert_eq!(other.input_image(&job.id).unwrap(), Some(image.clone()));
    assert!(
        other
            .complete("video_i", "w", "{}", 20, 11, &none())
            .unwrap()
    );
    assert_eq!(q.input_image("video_i").unwrap(), Some(image.clone()));
    assert_eq!(q.expired(20).unwrap(), vec!["video_i".to_string()]);
    assert!(q.delete("video_i").unwrap());
    assert_eq!(other.input_image("video_i").unwrap(), None);
    // A queued job deleted by the other handle takes its image along.
    q.create_with_image("video_l", "{}", None, MAX, 30, Some(b"\x89PNG"))
        .unwrap();
    assert!(other.delete("video_l").unwrap());
    assert_eq!(q.input_image("video_l").unwrap(), None);
}

/// Every behaviour, each on its own empty queue.
const BEHAVIOURS: [fn(Open); 4] = [
    creates_and_lists,
    claims_and_leases,
    two_handles_never_claim_the_same_job,
    stores_input_images,
];

/// Run every behaviour; `open(i)` opens a handle on the `i`-th empty queue.
fn run_behaviours(open: &(dyn Fn(usize) -> Box<dyn JobQueue> + Sync)) {
    for (i, behaviour) in BEHAVIOURS.into_iter().enumerate() {
        behaviour(&|| open(i));
    }
}

/// A fresh empty SQLite queue per behaviour (each `open` in one behaviour opens the same file).
#[test]
fn the_sqlite_queue_keeps_the_contract() {
    let dirs: Vec<tempfile::TempDir> = (0..BEHAVIOURS.len())
        .map(|_| tempfile::tempdir().unwrap())
        .collect();
    run_behaviours(&|i| QueueLocation::Sqlite.open(dirs[i].path()).unwrap());
    // The SQLite queue keeps videos in the data dir only.
    let q = QueueLocation::Sqlite.open(dirs[0].path()).unwrap();
    assert_eq!(q.content_store(), ContentStore::DataDir);
    assert_eq!(
        q.stored_content("video_0001", Variant::Video).unwrap(),
        None
    );
    let _ = SqliteQueue::open_in_memory().unwrap();
}

#[test]
fn the_postgres_queue_keeps_the_contract_and_stores_the_videos() {
    let pg = PgServer::start();
    let urls: Vec<String> = (0..BEHAVIOURS.len())
        .map(|i| pg.database(&format!("contract_{i}")))
        .collect();
    run_behaviours(&|i| {
        Box::new(PgQueue::open(&urls[i]).unwrap_or_else(|e| {
            panic!(
                "{e}\nserver log:\n{}",
                std::fs::read_to_string(pg.dir().join("server.log")).unwrap_or_default()
            )
        }))
    });

    // Videos are stored with the completion, served to any handle, deleted with the job.
    let url = pg.database("content");
    let (a, b) = (PgQueue::open(&url).unwrap(), PgQueue::open(&url).unwrap());
    assert_eq!(a.content_store(), ContentStore::Database);
    add(&a, "video_x", 1);
    a.claim("w1", LEASE, 2).unwrap().unwrap();
    let content = Content {
        video: b"\0\0\0\x18ftypmp42 not really an mp4".to_vec(),
        thumbnail: vec![0x89, b'P', b'N', b'G', 0, 255],
    };
    assert_eq!(b.stored_content("video_x", Variant::Video).unwrap(), None);
    assert!(!b.complete("video_x", "w2", "{}", 9, 3, &content).unwrap());
    assert_eq!(
        b.stored_content("video_x", Variant::Video).unwrap(),
        None,
        "not the holder"
    );
    assert!(a.complete("video_x", "w1", "{}", 9, 3, &content).unwrap());
    assert_eq!(
        b.stored_content("video_x", Variant::Video).unwrap(),
        Some(content.video.clone())
    );
    assert_eq!(
        b.stored_content("video_x", Variant::Thumbnail).unwrap(),
        Some(content.thumbnail.clone())
    );
    assert!(b.delete("video_x").unwrap());
    assert_eq!(a.stored_content("video_x", Variant::Video).unwrap(), None);

    // Start-up recovery on a shared queue touches only this server's own worker id.
    add(&a, "video_y", 10);
    add(&a, "video_z", 11);
    a.claim("gpu0", 3600, 12).unwrap().unwrap();
    b.claim("gpu1", 3600, 12).unwrap().unwrap();
    assert_eq!(a.release_orphans("gpu0").unwrap(), 1);
    let again = b.claim("gpu0", 3600, 13).unwrap().unwrap();
    assert_eq!((again.id.as_str(), again.attempts), ("video_y", 2));
    assert!(
        b.claim("gpu2", 3600, 13).unwrap().is_none(),
        "gpu1's lease lives"
    );

    // Bad URLs and unreachable servers are errors naming the flag, not panics.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let err = PgQueue::open(&format!(
        "postgres://u:pw@127.0.0.1:{port}/x?connect_timeout=2"
    ))
    .expect_err("nothing listens");
    let msg = err.to_string();
    assert!(
        msg.starts_with("--queue postgres://u:***@127.0.0.1:"),
        "{msg}"
    );
    let err = QueueLocation::parse("mysql://db/x").expect_err("not a queue");
    assert!(err.to_string().contains("`sqlite`"), "{err}");
}
