//! The SQLite queue (the default, `--queue sqlite`): one table of jobs in `queue.sqlite3` in the
//! data dir (WAL mode, synchronous FULL, a busy timeout, schema created on open). Every write
//! that reads before it writes runs in a `BEGIN IMMEDIATE` transaction, so two threads or two
//! processes on the same file never claim the same job. Videos stay in the data dir
//! ([`ContentStore::DataDir`]); an image-to-video job's input image is a BLOB in the table
//! `job_images`, written in the create's transaction and deleted in the delete's. One server per
//! data dir (see [`SqliteQueue::release_orphans`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};

use super::{
    COLUMNS, Content, ContentStore, Created, Job, JobQueue, JobStatus, MAX_ATTEMPTS, Order,
    QueueError, RawJob, Variant, worker_lost_message,
};

/// How long a statement waits for another connection's write lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    id              TEXT    NOT NULL UNIQUE,
    idempotency_key TEXT    UNIQUE,
    created_at      INTEGER NOT NULL,
    status          TEXT    NOT NULL
                    CHECK (status IN ('queued', 'in_progress', 'completed', 'failed')),
    progress        INTEGER NOT NULL DEFAULT 0,
    settings        TEXT    NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    worker          TEXT,
    lease_until     INTEGER,
    error_code      TEXT,
    error_message   TEXT,
    started_at      INTEGER,
    completed_at    INTEGER,
    expires_at      INTEGER,
    result          TEXT
);
CREATE INDEX IF NOT EXISTS jobs_status_created ON jobs (status, created_at, seq);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created_at, seq);
CREATE TABLE IF NOT EXISTS job_images (
    id    TEXT PRIMARY KEY,
    image BLOB NOT NULL
);
";

/// The durable job queue: one SQLite connection behind a mutex (`Send + Sync`); open several
/// (threads or processes) on the same file to share the queue.
#[derive(Debug)]
pub struct SqliteQueue {
    conn: Mutex<Connection>,
}

impl SqliteQueue {
    /// Open (creating it and its schema if needed) the queue database at `path`.
    pub fn open(path: &Path) -> Result<SqliteQueue, QueueError> {
        let open_error = |source| QueueError::Open {
            path: path.to_path_buf(),
            source,
        };
        let conn = Connection::open(path).map_err(open_error)?;
        Self::init(conn).map_err(open_error)
    }

    /// A private in-memory queue (gone when dropped), for tests.
    pub fn open_in_memory() -> Result<SqliteQueue, QueueError> {
        let conn = Connection::open_in_memory().map_err(|source| QueueError::Open {
            path: PathBuf::from(":memory:"),
            source,
        })?;
        Self::init(conn).map_err(|source| QueueError::Open {
            path: PathBuf::from(":memory:"),
            source,
        })
    }

    fn init(conn: Connection) -> Result<SqliteQueue, rusqlite::Error> {
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // An in-memory database answers "memory": only a file can be in WAL mode.
        let _mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
        // An accepted job must survive a power cut, not only a crash of the server.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(SCHEMA)?;
        Ok(SqliteQueue {
            conn: Mutex::new(conn),
        })
    }

    /// The connection. A panic while it was held left no transaction open (a dropped
    /// `Transaction` rolls back), so a poisoned lock is still usable.
    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl JobQueue for SqliteQueue {
    fn create_with_image(
        &self,
        id: &str,
        settings: &str,
        idempotency_key: Option<&str>,
        max_queued: usize,
        now: i64,
        image: Option<&[u8]>,
    ) -> Result<Created, QueueError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if let Some(key) = idempotency_key {
            let sql = format!("SELECT {COLUMNS} FROM jobs WHERE idempotency_key = ?1");
            let found = tx.query_row(&sql, params![key], raw_job).optional()?;
            if let Some(raw) = found {
                return Ok(Created {
                    job: raw.into_job()?,
                    existing: true,
                });
            }
        }
        let queued = count_status(&tx, JobStatus::Queued)?;
        if queued >= max_queued {
            return Err(QueueError::Full {
                queued,
                max: max_queued,
            });
        }
        tx.execute(
            "INSERT INTO jobs (id, idempotency_key, created_at, status, progress, settings, attempts)
             VALUES (?1, ?2, ?3, 'queued', 0, ?4, 0)",
            params![id, idempotency_key, now, settings],
        )?;
        if let Some(image) = image {
            tx.execute(
                "INSERT OR REPLACE INTO job_images (id, image) VALUES (?1, ?2)",
                params![id, image],
            )?;
        }
        let job = get_job(&tx, id)?.ok_or_else(|| {
            QueueError::Corrupt(id.to_string(), "not found right after insert".to_string())
        })?;
        tx.commit()?;
        Ok(Created {
            job,
            existing: false,
        })
    }

    fn get(&self, id: &str) -> Result<Option<Job>, QueueError> {
        get_job(&self.conn(), id)
    }

    fn list(
        &self,
        after: Option<&str>,
        limit: usize,
        order: Order,
    ) -> Result<(Vec<Job>, bool), QueueError> {
        let conn = self.conn();
        let (cmp, dir) = match order {
            Order::Asc => (">", "ASC"),
            Order::Desc => ("<", "DESC"),
        };
        // One more than asked tells whether more follow.
        let fetch = i64::try_from(limit).unwrap_or(i64::MAX).saturating_add(1);
        let raws = match after {
            None => {
                let sql = format!(
                    "SELECT {COLUMNS} FROM jobs ORDER BY created_at {dir}, seq {dir} LIMIT ?1"
                );
                let mut stmt = conn.prepare(&sql)?;
                stmt.query_map(params![fetch], raw_job)?
                    .collect::<Result<Vec<_>, _>>()?
            }
            Some(after) => {
                let cursor: Option<(i64, i64)> = conn
                    .query_row(
                        "SELECT created_at, seq FROM jobs WHERE id = ?1",
                        params![after],
                        |row| Ok((row.get(0)?, row.get(1)?)),
                    )
                    .optional()?;
                let Some((created_at, seq)) = cursor else {
                    return Ok((Vec::new(), false));
                };
                let sql = format!(
                    "SELECT {COLUMNS} FROM jobs WHERE (created_at, seq) {cmp} (?1, ?2)
                     ORDER BY created_at {dir}, seq {dir} LIMIT ?3"
                );
                let mut stmt = conn.prepare(&sql)?;
                stmt.query_map(params![created_at, seq, fetch], raw_job)?
                    .collect::<Result<Vec<_>, _>>()?
            }
        };
        drop(conn);
        let has_more = raws.len() > limit;
        let jobs = raws
            .into_iter()
            .take(limit)
            .map(RawJob::into_job)
            .collect::<Result<Vec<_>, _>>()?;
        Ok((jobs, has_more))
    }

    fn claim(&self, worker: &str, lease_secs: i64, now: i64) -> Result<Option<Job>, QueueError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        loop {
            let candidate: Option<(String, String, i64, Option<String>)> = tx
                .query_row(
                    "SELECT id, status, attempts, worker FROM jobs
                     WHERE status = 'queued'
                        OR (status = 'in_progress' AND COALESCE(lease_until, 0) <= ?1)
                     ORDER BY created_at ASC, seq ASC LIMIT 1",
                    params![now],
                    |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
                )
                .optional()?;
            let Some((id, status, attempts, previous)) = candidate else {
                tx.commit()?;
                return Ok(None);
            };
            let attempts = u32::try_from(attempts)
                .map_err(|_| QueueError::Corrupt(id.clone(), format!("attempts {attempts}")))?;
            if status == JobStatus::InProgress.as_str() && attempts >= MAX_ATTEMPTS {
                let message = worker_lost_message(previous.as_deref(), attempts);
                tx.execute(
                    "UPDATE jobs SET status = 'failed', error_code = 'worker_lost',
                         error_message = ?2, completed_at = ?3, lease_until = NULL
                     WHERE id = ?1",
                    params![id, message, now],
                )?;
                continue;
            }
            tx.execute(
                "UPDATE jobs SET status = 'in_progress', progress = 0, attempts = attempts + 1,
                     worker = ?2, started_at = ?3, lease_until = ?4
                 WHERE id = ?1",
                params![id, worker, now, now.saturating_add(lease_secs)],
            )?;
            let job = get_job(&tx, &id)?.ok_or_else(|| {
                QueueError::Corrupt(id.clone(), "not found right after claim".to_string())
            })?;
            tx.commit()?;
            return Ok(Some(job));
        }
    }

    fn renew(&self, id: &str, worker: &str, lease_secs: i64, now: i64) -> Result<bool, QueueError> {
        let changed = self.conn().execute(
            "UPDATE jobs SET lease_until = ?3
             WHERE id = ?1 AND status = 'in_progress' AND worker = ?2",
            params![id, worker, now.saturating_add(lease_secs)],
        )?;
        Ok(changed > 0)
    }

    fn release(&self, id: &str, worker: &str) -> Result<bool, QueueError> {
        let changed = self.conn().execute(
            "UPDATE jobs SET lease_until = 0
             WHERE id = ?1 AND status = 'in_progress' AND worker = ?2",
            params![id, worker],
        )?;
        Ok(changed > 0)
    }

    fn set_progress(&self, id: &str, worker: &str, progress: u8) -> Result<bool, QueueError> {
        let changed = self.conn().execute(
            "UPDATE jobs SET progress = ?3
             WHERE id = ?1 AND status = 'in_progress' AND worker = ?2",
            params![id, worker, progress.min(100)],
        )?;
        Ok(changed > 0)
    }

    fn complete(
        &self,
        id: &str,
        worker: &str,
        result: &str,
        expires_at: i64,
        now: i64,
        _content: &Content,
    ) -> Result<bool, QueueError> {
        let changed = self.conn().execute(
            "UPDATE jobs SET status = 'completed', progress = 100, result = ?3, expires_at = ?4,
                 completed_at = ?5, lease_until = NULL
             WHERE id = ?1 AND status = 'in_progress' AND worker = ?2",
            params![id, worker, result, expires_at, now],
        )?;
        Ok(changed > 0)
    }

    fn fail(
        &self,
        id: &str,
        worker: &str,
        code: &str,
        message: &str,
        now: i64,
    ) -> Result<bool, QueueError> {
        let changed = self.conn().execute(
            "UPDATE jobs SET status = 'failed', error_code = ?3, error_message = ?4,
                 completed_at = ?5, lease_until = NULL
             WHERE id = ?1 AND status = 'in_progress' AND worker = ?2",
            params![id, worker, code, message, now],
        )?;
        Ok(changed > 0)
    }

    fn input_image(&self, id: &str) -> Result<Option<Vec<u8>>, QueueError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT image FROM job_images WHERE id = ?1",
                params![id],
                |row| row.get(0),
            )
            .optional()?)
    }

    fn delete(&self, id: &str) -> Result<bool, QueueError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute("DELETE FROM job_images WHERE id = ?1", params![id])?;
        let changed = tx.execute("DELETE FROM jobs WHERE id = ?1", params![id])?;
        tx.commit()?;
        Ok(changed > 0)
    }

    /// One server per SQLite data dir: after its restart every InProgress job of a worker id
    /// that is not `current_worker` is an orphan and gets its lease expired (`lease_until = 0`) so the next claim runs it
    /// again (or fails it as `worker_lost` after [`MAX_ATTEMPTS`]). Returns how many.
    fn release_orphans(&self, current_worker: &str) -> Result<usize, QueueError> {
        let changed = self.conn().execute(
            "UPDATE jobs SET lease_until = 0
             WHERE status = 'in_progress' AND (worker IS NULL OR worker <> ?1)",
            params![current_worker],
        )?;
        Ok(changed)
    }

    fn expired(&self, now: i64) -> Result<Vec<String>, QueueError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id FROM jobs
             WHERE status IN ('completed', 'failed') AND expires_at IS NOT NULL
               AND expires_at <= ?1
             ORDER BY created_at ASC, seq ASC",
        )?;
        let ids = stmt
            .query_map(params![now], |row| row.get(0))?
            .collect::<Result<Vec<String>, _>>()?;
        Ok(ids)
    }

    fn counts(&self) -> Result<BTreeMap<JobStatus, usize>, QueueError> {
        let conn = self.conn();
        let mut counts: BTreeMap<JobStatus, usize> = JobStatus::ALL
            .into_iter()
            .map(|status| (status, 0))
            .collect();
        let mut stmt = conn.prepare("SELECT status, COUNT(*) FROM jobs GROUP BY status")?;
        let rows = stmt
            .query_map([], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        for (status, n) in rows {
            let parsed = JobStatus::parse(&status).ok_or_else(|| {
                QueueError::Corrupt("?".to_string(), format!("unknown status `{status}`"))
            })?;
            counts.insert(parsed, usize::try_from(n).unwrap_or(0));
        }
        Ok(counts)
    }

    fn queued(&self) -> Result<usize, QueueError> {
        count_status(&self.conn(), JobStatus::Queued)
    }

    fn content_store(&self) -> ContentStore {
        ContentStore::DataDir
    }

    fn stored_content(&self, _id: &str, _variant: Variant) -> Result<Option<Vec<u8>>, QueueError> {
        Ok(None)
    }
}

fn count_status(conn: &Connection, status: JobStatus) -> Result<usize, QueueError> {
    let n: i64 = conn.query_row(
        "SELECT COUNT(*) FROM jobs WHERE status = ?1",
        params![status.as_str()],
        |row| row.get(0),
    )?;
    Ok(usize::try_from(n).unwrap_or(0))
}

fn get_job(conn: &Connection, id: &str) -> Result<Option<Job>, QueueError> {
    let sql = format!("SELECT {COLUMNS} FROM jobs WHERE id = ?1");
    conn.query_row(&sql, params![id], raw_job)
        .optional()?
        .map(RawJob::into_job)
        .transpose()
}

/// Reads the columns of [`COLUMNS`], in that order.
fn raw_job(row: &Row<'_>) -> rusqlite::Result<RawJob> {
    Ok(RawJob {
        id: row.get(0)?,
        created_at: row.get(1)?,
        status: row.get(2)?,
        progress: row.get(3)?,
        settings: row.get(4)?,
        attempts: row.get(5)?,
        worker: row.get(6)?,
        error_code: row.get(7)?,
        error_message: row.get(8)?,
        started_at: row.get(9)?,
        completed_at: row.get(10)?,
        expires_at: row.get(11)?,
        result: row.get(12)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::JobError;
    use std::collections::BTreeSet;
    use std::sync::{Arc, Barrier};

    const LEASE: i64 = 60;
    const NONE: Content = Content {
        video: Vec::new(),
        thumbnail: Vec::new(),
    };
    const MAX: usize = 1000;

    fn queue() -> SqliteQueue {
        SqliteQueue::open_in_memory().expect("in-memory queue")
    }

    fn add(q: &SqliteQueue, id: &str, now: i64) -> Job {
        let created = q
            .create(id, &format!("{{\"id\":\"{id}\"}}"), None, MAX, now)
            .expect("create");
        assert!(!created.existing);
        created.job
    }

    fn ids(jobs: &[Job]) -> Vec<&str> {
        jobs.iter().map(|job| job.id.as_str()).collect()
    }

    #[test]
    fn a_released_job_is_claimable_at_once_only_by_its_holders_release() {
        let q = queue();
        add(&q, "a", 1);
        let job = q.claim("w1", LEASE, 2).unwrap().unwrap();
        assert_eq!(job.id, "a");
        assert!(
            q.claim("w2", LEASE, 3).unwrap().is_none(),
            "lease still live"
        );
        assert!(!q.release("a", "w2").unwrap(), "only the holder releases");
        assert!(q.release("a", "w1").unwrap());
        let again = q.claim("w2", LEASE, 4).unwrap().unwrap();
        assert_eq!((again.id.as_str(), again.attempts), ("a", 2));
        assert!(!q.release("a", "w1").unwrap(), "w1 no longer holds it");
    }

    #[test]
    fn queue_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<SqliteQueue>();
    }

    #[test]
    fn status_names_match_serde() {
        for status in JobStatus::ALL {
            let json = serde_json::to_string(&status).expect("serialize");
            assert_eq!(json, format!("\"{}\"", status.as_str()));
            assert_eq!(JobStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(JobStatus::parse("cancelled"), None);
    }

    #[test]
    fn create_get_round_trip() {
        let q = queue();
        let created = q
            .create("video_1", r#"{"prompt":"a cat"}"#, None, MAX, 1000)
            .expect("create");
        assert!(!created.existing);
        let expected = Job {
            id: "video_1".to_string(),
            created_at: 1000,
            status: JobStatus::Queued,
            progress: 0,
            settings: r#"{"prompt":"a cat"}"#.to_string(),
            attempts: 0,
            worker: None,
            error: None,
            started_at: None,
            completed_at: None,
            expires_at: None,
            result: None,
        };
        assert_eq!(created.job, expected);
        assert_eq!(q.get("video_1").expect("get"), Some(expected));
        assert_eq!(q.get("video_2").expect("get"), None);
    }

    #[test]
    fn duplicate_id_is_a_database_error() {
        let q = queue();
        add(&q, "a", 1);
        let err = q.create("a", "{}", None, MAX, 2).expect_err("duplicate id");
        assert!(matches!(err, QueueError::Db(_)), "{err}");
    }

    #[test]
    fn idempotency_key_returns_the_same_job_and_inserts_nothing() {
        let q = queue();
        let first = q
            .create("a", r#"{"n":1}"#, Some("key-1"), MAX, 10)
            .expect("create");
        assert!(!first.existing);
        let again = q
            .create("b", r#"{"n":2}"#, Some("key-1"), MAX, 20)
            .expect("create again");
        assert!(again.existing);
        assert_eq!(again.job, first.job);
        assert_eq!(q.get("b").expect("get"), None);
        assert_eq!(q.queued().expect("queued"), 1);
        // A full queue still answers a repeated key with the job it made.
        let full = q
            .create("c", "{}", Some("key-1"), 0, 30)
            .expect("repeat when full");
        assert!(full.existing);
        // Another key is a new job; after deleting the job its key is free again.
        let other = q
            .create("d", "{}", Some("key-2"), MAX, 40)
            .expect("other key");
        assert!(!other.existing);
        assert!(q.delete("a").expect("delete"));
        let reused = q
            .create("e", "{}", Some("key-1"), MAX, 50)
            .expect("key reused");
        assert!(!reused.existing);
        assert_eq!(reused.job.id, "e");
    }

    #[test]
    fn full_at_max_queued_not_counting_the_running_job() {
        let q = queue();
        add(&q, "a", 1);
        add(&q, "b", 2);
        let err = q.create("c", "{}", None, 2, 3).expect_err("full");
        assert!(
            matches!(err, QueueError::Full { queued: 2, max: 2 }),
            "{err}"
        );
        assert_eq!(q.get("c").expect("get"), None);
        // Once one runs, there is room for one more queued job.
        let claimed = q.claim("w", LEASE, 4).expect("claim").expect("a job");
        assert_eq!(claimed.id, "a");
        q.create("c", "{}", None, 2, 5).expect("room after claim");
        assert!(matches!(
            q.create("d", "{}", None, 2, 6),
            Err(QueueError::Full { queued: 2, max: 2 })
        ));
    }

    #[test]
    fn list_pages_in_both_orders() {
        let q = queue();
        // Equal created_at keeps insertion order: c before d.
        add(&q, "a", 10);
        add(&q, "b", 20);
        add(&q, "c", 30);
        add(&q, "d", 30);
        add(&q, "e", 40);

        let (page, more) = q.list(None, 2, Order::Asc).expect("list");
        assert_eq!((ids(&page), more), (vec!["a", "b"], true));
        let (page, more) = q.list(Some("b"), 2, Order::Asc).expect("list");
        assert_eq!((ids(&page), more), (vec!["c", "d"], true));
        let (page, more) = q.list(Some("d"), 2, Order::Asc).expect("list");
        assert_eq!((ids(&page), more), (vec!["e"], false));
        let (page, more) = q.list(Some("c"), 2, Order::Asc).expect("list");
        assert_eq!((ids(&page), more), (vec!["d", "e"], false));
        let (page, more) = q.list(None, 5, Order::Asc).expect("list");
        assert_eq!((page.len(), more), (5, false));

        let (page, more) = q.list(None, 2, Order::Desc).expect("list");
        assert_eq!((ids(&page), more), (vec!["e", "d"], true));
        let (page, more) = q.list(Some("d"), 2, Order::Desc).expect("list");
        assert_eq!((ids(&page), more), (vec!["c", "b"], true));
        let (page, more) = q.list(Some("b"), 2, Order::Desc).expect("list");
        assert_eq!((ids(&page), more), (vec!["a"], false));
        let (page, more) = q.list(Some("a"), 2, Order::Desc).expect("list");
        assert_eq!((ids(&page), more), (Vec::<&str>::new(), false));

        let (page, more) = q.list(None, 0, Order::Asc).expect("list");
        assert_eq!((page.len(), more), (0, true));
        let (page, more) = q.list(Some("nope"), 2, Order::Asc).expect("list");
        assert_eq!((page.len(), more), (0, false));
    }

    #[test]
    fn claim_takes_the_oldest_first_and_sets_the_lease_fields() {
        let q = queue();
        add(&q, "late", 50);
        add(&q, "early", 10);
        add(&q, "tie_1", 30);
        add(&q, "tie_2", 30);
        let job = q.claim("w1", LEASE, 100).expect("claim").expect("a job");
        assert_eq!(job.id, "early");
        assert_eq!(job.status, JobStatus::InProgress);
        assert_eq!(job.attempts, 1);
        assert_eq!(job.worker.as_deref(), Some("w1"));
        assert_eq!(job.started_at, Some(100));
        assert_eq!(q.get("early").expect("get"), Some(job));
        let order: Vec<String> = (0..3)
            .map(|_| q.claim("w1", LEASE, 100).expect("claim").expect("a job").id)
            .collect();
        assert_eq!(order, ["tie_1", "tie_2", "late"]);
        // Every job is held under a live lease: nothing left to claim.
        assert_eq!(q.claim("w2", LEASE, 100 + LEASE - 1).expect("claim"), None);
        assert_eq!(q.queued().expect("queued"), 0);
    }

    #[test]
    fn holder_progresses_and_completes_others_cannot() {
        let q = queue();
        add(&q, "a", 1);
        q.claim("w1", LEASE, 10).expect("claim").expect("a job");
        assert!(!q.set_progress("a", "w2", 50).expect("progress"));
        assert!(q.set_progress("a", "w1", 40).expect("progress"));
        assert_eq!(q.get("a").expect("get").expect("job").progress, 40);
        assert!(q.set_progress("a", "w1", 250).expect("progress"));
        assert_eq!(q.get("a").expect("get").expect("job").progress, 100);
        assert!(
            !q.complete("a", "w2", "{}", 99, 20, &NONE)
                .expect("complete")
        );
        assert!(
            q.complete("a", "w1", r#"{"secs":3}"#, 1000, 20, &NONE)
                .expect("complete")
        );
        let job = q.get("a").expect("get").expect("job");
        assert_eq!(job.status, JobStatus::Completed);
        assert_eq!(job.progress, 100);
        assert_eq!(job.result.as_deref(), Some(r#"{"secs":3}"#));
        assert_eq!(job.expires_at, Some(1000));
        assert_eq!(job.completed_at, Some(20));
        // Finished: neither renewable nor claimable again, nor failable.
        assert!(!q.renew("a", "w1", LEASE, 30).expect("renew"));
        assert!(!q.fail("a", "w1", "x", "y", 30).expect("fail"));
        assert_eq!(q.claim("w1", LEASE, 10_000).expect("claim"), None);
    }

    #[test]
    fn fail_records_the_error() {
        let q = queue();
        add(&q, "a", 1);
        q.claim("w1", LEASE, 10).expect("claim").expect("a job");
        assert!(!q.fail("a", "w2", "oom", "out of memory", 11).expect("fail"));
        assert!(q.fail("a", "w1", "oom", "out of memory", 12).expect("fail"));
        let job = q.get("a").expect("get").expect("job");
        assert_eq!(job.status, JobStatus::Failed);
        assert_eq!(
            job.error,
            Some(JobError {
                code: "oom".to_string(),
                message: "out of memory".to_string()
            })
        );
        assert_eq!(job.completed_at, Some(12));
        assert!(
            !q.complete("a", "w1", "{}", 99, 13, &NONE)
                .expect("complete")
        );
    }

    #[test]
    fn lease_expiry_hands_the_job_to_another_worker() {
        let q = queue();
        add(&q, "a", 1);
        q.claim("w1", LEASE, 100).expect("claim").expect("a job");
        // Renewing moves the lease: at 100 + LEASE it has not run out.
        assert!(q.renew("a", "w1", LEASE, 150).expect("renew"));
        assert_eq!(q.claim("w2", LEASE, 100 + LEASE).expect("claim"), None);
        // It runs out at 150 + LEASE; w2 takes over.
        let job = q
            .claim("w2", LEASE, 150 + LEASE)
            .expect("claim")
            .expect("the expired job");
        assert_eq!(job.id, "a");
        assert_eq!(job.attempts, 2);
        assert_eq!(job.worker.as_deref(), Some("w2"));
        assert_eq!(job.started_at, Some(150 + LEASE));
        assert_eq!(job.progress, 0);
        // The old worker lost it.
        assert!(!q.renew("a", "w1", LEASE, 300).expect("renew"));
        assert!(!q.set_progress("a", "w1", 10).expect("progress"));
        assert!(
            !q.complete("a", "w1", "{}", 999, 300, &NONE)
                .expect("complete")
        );
        assert!(!q.fail("a", "w1", "x", "y", 300).expect("fail"));
        // The new one holds it.
        assert!(q.set_progress("a", "w2", 10).expect("progress"));
        assert!(
            q.complete("a", "w2", "{}", 999, 300, &NONE)
                .expect("complete")
        );
    }

    #[test]
    fn max_attempts_then_worker_lost_and_the_next_job_is_claimed() {
        let q = queue();
        add(&q, "doomed", 1);
        let mut now = 100;
        for attempt in 1..=MAX_ATTEMPTS {
            let job = q
                .claim(&format!("w{attempt}"), LEASE, now)
                .expect("claim")
                .expect("a job");
            assert_eq!((job.id.as_str(), job.attempts), ("doomed", attempt));
            now += LEASE;
        }
        add(&q, "next", 2);
        // The third lease ran out: the job fails instead, and the claim returns the next one.
        let job = q.claim("w9", LEASE, now).expect("claim").expect("next job");
        assert_eq!(job.id, "next");
        let doomed = q.get("doomed").expect("get").expect("job");
        assert_eq!(doomed.status, JobStatus::Failed);
        assert_eq!(doomed.attempts, MAX_ATTEMPTS);
        assert_eq!(doomed.completed_at, Some(now));
        let error = doomed.error.expect("an error");
        assert_eq!(error.code, "worker_lost");
        assert!(error.message.contains("w3"), "{}", error.message);
        assert!(
            q.complete("next", "w9", "{}", 999, now, &NONE)
                .expect("complete")
        );
        // With nothing else runnable, failing a lost job leaves the claim empty-handed.
        add(&q, "lonely", 3);
        for attempt in 1..=MAX_ATTEMPTS {
            now += LEASE;
            let job = q.claim("w1", LEASE, now).expect("claim").expect("a job");
            assert_eq!((job.id.as_str(), job.attempts), ("lonely", attempt));
        }
        now += LEASE;
        assert_eq!(q.claim("w1", LEASE, now).expect("claim"), None);
        let lonely = q.get("lonely").expect("get").expect("job");
        assert_eq!(lonely.status, JobStatus::Failed);
        assert_eq!(lonely.error.map(|e| e.code).as_deref(), Some("worker_lost"));
    }

    #[test]
    fn delete_removes_the_row() {
        let q = queue();
        add(&q, "a", 1);
        add(&q, "b", 2);
        assert!(q.delete("a").expect("delete"));
        assert!(!q.delete("a").expect("delete again"));
        assert_eq!(q.get("a").expect("get"), None);
        let (page, _) = q.list(None, 10, Order::Asc).expect("list");
        assert_eq!(ids(&page), ["b"]);
        // A deleted running job is lost to its worker.
        q.claim("w", LEASE, 5).expect("claim").expect("b");
        assert!(q.delete("b").expect("delete running"));
        assert!(!q.renew("b", "w", LEASE, 6).expect("renew"));
        assert!(!q.complete("b", "w", "{}", 9, 6, &NONE).expect("complete"));
    }

    #[test]
    fn expired_lists_finished_jobs_past_their_time() {
        let q = queue();
        for (i, id) in ["done_early", "done_late", "failed", "running", "queued"]
            .into_iter()
            .enumerate()
        {
            add(&q, id, i64::try_from(i).expect("small"));
        }
        for _ in 0..4 {
            q.claim("w", LEASE, 10).expect("claim").expect("a job");
        }
        assert!(
            q.complete("done_early", "w", "{}", 100, 20, &NONE)
                .expect("complete")
        );
        assert!(
            q.complete("done_late", "w", "{}", 200, 20, &NONE)
                .expect("complete")
        );
        assert!(q.fail("failed", "w", "bad", "bad input", 20).expect("fail"));
        assert_eq!(q.expired(99).expect("expired"), Vec::<String>::new());
        assert_eq!(q.expired(100).expect("expired"), ["done_early"]);
        assert_eq!(
            q.expired(1_000_000).expect("expired"),
            ["done_early", "done_late"]
        );
    }

    #[test]
    fn counts_have_all_four_statuses() {
        let q = queue();
        let counts = q.counts().expect("counts");
        assert_eq!(counts.len(), 4);
        assert!(counts.values().all(|n| *n == 0));
        for (i, id) in ["a", "b", "c", "d", "e"].into_iter().enumerate() {
            add(&q, id, i64::try_from(i).expect("small"));
        }
        for _ in 0..3 {
            q.claim("w", LEASE, 10).expect("claim").expect("a job");
        }
        assert!(
            q.complete("a", "w", "{}", 100, 20, &NONE)
                .expect("complete")
        );
        assert!(q.fail("b", "w", "x", "y", 20).expect("fail"));
        let counts = q.counts().expect("counts");
        let expected: BTreeMap<JobStatus, usize> = [
            (JobStatus::Queued, 2),
            (JobStatus::InProgress, 1),
            (JobStatus::Completed, 1),
            (JobStatus::Failed, 1),
        ]
        .into_iter()
        .collect();
        assert_eq!(counts, expected);
        assert_eq!(q.queued().expect("queued"), 2);
    }

    #[test]
    fn corrupt_rows_are_reported_not_panicked_on() {
        let q = queue();
        add(&q, "a", 1);
        q.conn()
            .execute("UPDATE jobs SET progress = 300 WHERE id = 'a'", [])
            .expect("raw update");
        let err = q.get("a").expect_err("corrupt");
        assert!(
            matches!(&err, QueueError::Corrupt(id, _) if id == "a"),
            "{err}"
        );
        assert!(err.to_string().contains("progress 300"), "{err}");
    }

    #[test]
    fn durable_across_reopen_and_orphans_are_released() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("queue.sqlite3");
        {
            let q = SqliteQueue::open(&path).expect("open");
            add(&q, "running", 1);
            add(&q, "waiting", 2);
            q.create("keyed", "{}", Some("k"), MAX, 3).expect("create");
            let job = q
                .claim("dead-worker", 3600, 10)
                .expect("claim")
                .expect("job");
            assert_eq!(job.id, "running");
            assert!(
                q.set_progress("running", "dead-worker", 30)
                    .expect("progress")
            );
            let mode: String = q
                .conn()
                .query_row("PRAGMA journal_mode", [], |row| row.get(0))
                .expect("journal mode");
            assert_eq!(mode, "wal");
        }
        let q = SqliteQueue::open(&path).expect("reopen");
        let (page, more) = q.list(None, 10, Order::Asc).expect("list");
        assert_eq!(
            (ids(&page), more),
            (vec!["running", "waiting", "keyed"], false)
        );
        let running = q.get("running").expect("get").expect("job");
        assert_eq!(running.status, JobStatus::InProgress);
        assert_eq!(running.progress, 30);
        assert!(
            q.create("again", "{}", Some("k"), MAX, 4)
                .expect("create")
                .existing
        );
        // Its lease (an hour) has not run out: without release it stays with the dead worker.
        assert_eq!(
            q.claim("new-worker", 60, 20).expect("claim").map(|j| j.id),
            Some("waiting".into())
        );
        assert_eq!(q.release_orphans("new-worker").expect("release"), 1);
        let job = q
            .claim("new-worker", 60, 21)
            .expect("claim")
            .expect("orphan");
        assert_eq!(job.id, "running");
        assert_eq!(job.attempts, 2);
        assert_eq!(job.progress, 0);
        assert!(
            !q.set_progress("running", "dead-worker", 50)
                .expect("progress")
        );
        // The current worker's own jobs are left alone.
        assert_eq!(q.release_orphans("new-worker").expect("release"), 0);
    }

    #[test]
    fn open_names_the_path_that_failed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("missing").join("queue.sqlite3");
        let err = SqliteQueue::open(&path).expect_err("no such directory");
        assert!(
            matches!(&err, QueueError::Open { path: p, .. } if *p == path),
            "{err}"
        );
        assert!(err.to_string().contains("missing"), "{err}");
    }

    #[test]
    fn two_handles_on_one_file_never_claim_the_same_job() {
        const JOBS: usize = 200;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("queue.sqlite3");
        let q = SqliteQueue::open(&path).expect("open");
        let mut all = BTreeSet::new();
        for i in 0..JOBS {
            let id = format!("job_{i:04}");
            add(&q, &id, 1);
            all.insert(id);
        }
        drop(q);
        let barrier = Arc::new(Barrier::new(2));
        let workers: Vec<_> = ["w1", "w2"]
            .into_iter()
            .map(|worker| {
                let path = path.clone();
                let barrier = Arc::clone(&barrier);
                std::thread::spawn(move || -> Result<Vec<String>, QueueError> {
                    let q = SqliteQueue::open(&path)?;
                    barrier.wait();
                    let mut got = Vec::new();
                    while let Some(job) = q.claim(worker, LEASE, 100)? {
                        assert_eq!(job.attempts, 1, "{} claimed twice", job.id);
                        assert!(q.complete(&job.id, worker, "{}", 1000, 101, &NONE)?);
                        got.push(job.id);
                    }
                    Ok(got)
                })
            })
            .collect();
        let mut seen = BTreeSet::new();
        let mut per_worker = Vec::new();
        for handle in workers {
            let got = handle.join().expect("worker thread").expect("worker");
            per_worker.push(got.len());
            for id in got {
                assert!(seen.insert(id.clone()), "{id} claimed by both workers");
            }
        }
        assert_eq!(seen, all);
        assert_eq!(per_worker.iter().sum::<usize>(), JOBS);
        let q = SqliteQueue::open(&path).expect("reopen");
        assert_eq!(q.counts().expect("counts")[&JobStatus::Completed], JOBS);
    }
}
