//! The PostgreSQL queue (`--queue postgres://…`): several `hyvideo serve` processes, on one
//! machine or many, share one table of jobs. A claim takes the oldest runnable row with
//! `SELECT … FOR UPDATE SKIP LOCKED` in a transaction, so two workers never claim the same job
//! and neither waits for the other; creates take a transaction-scoped advisory lock so the
//! queue-length limit and idempotency keys hold across servers. A finished video and its
//! thumbnail are stored in the database in the transaction that marks the job completed
//! ([`ContentStore::Database`]), so every server answers `/content` for every job; an
//! image-to-video job's input image is stored (`hyvideo_images`) in the transaction that creates
//! the job, so whichever server claims it reads it, and goes with the job's row.
//!
//! The client is the `postgres` crate (rust-postgres' synchronous client, the same crate family
//! as `tokio-postgres`); connections are kept in a small pool and a closed one is replaced.
//! Connections are unencrypted (no TLS support is compiled in): keep the database on a private
//! network or tunnel it.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use postgres::{Client, GenericClient, NoTls, Row};

use super::{
    COLUMNS, Content, ContentStore, Created, Job, JobQueue, JobStatus, MAX_ATTEMPTS, Order,
    QueueError, RawJob, Variant, worker_lost_message,
};

/// The tables' schema; `hyvideo_` names so the queue can share a database with other tables.
/// Integers are `BIGINT` throughout (they map to `i64` like SQLite's).
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS hyvideo_jobs (
    seq             BIGSERIAL PRIMARY KEY,
    id              TEXT   NOT NULL UNIQUE,
    idempotency_key TEXT   UNIQUE,
    created_at      BIGINT NOT NULL,
    status          TEXT   NOT NULL
                    CHECK (status IN ('queued', 'in_progress', 'completed', 'failed')),
    progress        BIGINT NOT NULL DEFAULT 0,
    settings        TEXT   NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    worker          TEXT,
    lease_until     BIGINT,
    error_code      TEXT,
    error_message   TEXT,
    started_at      BIGINT,
    completed_at    BIGINT,
    expires_at      BIGINT,
    result          TEXT
);
CREATE INDEX IF NOT EXISTS hyvideo_jobs_status_created ON hyvideo_jobs (status, created_at, seq);
CREATE INDEX IF NOT EXISTS hyvideo_jobs_created ON hyvideo_jobs (created_at, seq);
CREATE TABLE IF NOT EXISTS hyvideo_videos (
    id        TEXT  PRIMARY KEY REFERENCES hyvideo_jobs (id) ON DELETE CASCADE,
    video     BYTEA NOT NULL,
    thumbnail BYTEA NOT NULL
);
CREATE TABLE IF NOT EXISTS hyvideo_images (
    id    TEXT  PRIMARY KEY REFERENCES hyvideo_jobs (id) ON DELETE CASCADE,
    image BYTEA NOT NULL
);
";

/// The advisory lock key serializing schema creation and creates (any fixed 64-bit number;
/// this one is "hyvideo" in ASCII).
const LOCK: &str = "SELECT pg_advisory_xact_lock(29400104916610415)";

/// Idle connections kept for reuse.
const POOL: usize = 4;

/// How long a connection attempt waits when the URL does not say (`connect_timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A PostgreSQL queue: a connection URL and a pool of idle connections (`Send + Sync`).
pub struct PgQueue {
    config: postgres::Config,
    /// The URL without its password, for messages.
    shown: String,
    idle: Mutex<Vec<Client>>,
}

impl std::fmt::Debug for PgQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgQueue").field("url", &self.shown).finish()
    }
}

/// `url` with the password (between `user:` and `@`) replaced by `***`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (auth, host) = match rest.rsplit_once('@') {
        Some(parts) => parts,
        None => return url.to_owned(),
    };
    match auth.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

impl PgQueue {
    /// Connect to `url` and create the schema if needed (safe when several servers start at
    /// once: it runs under the advisory lock).
    pub fn open(url: &str) -> Result<PgQueue, QueueError> {
        let shown = redact(url);
        let mut config: postgres::Config = url.parse().map_err(|source| QueueError::Connect {
            url: shown.clone(),
            source,
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("hyvideo serve");
        }
        let queue = PgQueue {
            config,
            shown,
            idle: Mutex::new(Vec::new()),
        };
        queue.in_tx(|tx| {
            tx.batch_execute(LOCK)?;
            Ok(tx.batch_execute(SCHEMA)?)
        })?;
        Ok(queue)
    }

    /// Run `f` on a pooled connection (a new one when none is idle or the idle one closed); the
    /// connection goes back to the pool unless it closed meanwhile.
    fn with<T>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<T, QueueError>,
    ) -> Result<T, QueueError> {
        let pooled = {
            let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
            std::iter::from_fn(|| idle.pop()).find(|c| !c.is_closed())
        };
        let mut client = match pooled {
            Some(c) => c,
            None => self
                .config
                .connect(NoTls)
                .map_err(|source| QueueError::Connect {
                    url: self.shown.clone(),
                    source,
                })?,
        };
        let out = f(&mut client);
        if !client.is_closed() {
            let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
            if idle.len() < POOL {
                idle.push(client);
            }
        }
        out
    }

    /// Run `f` in a transaction that commits when `f` returns Ok (a dropped one rolls back).
    fn in_tx<T>(
        &self,
        f: impl FnOnce(&mut postgres::Transaction<'_>) -> Result<T, QueueError>,
    ) -> Result<T, QueueError> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            let out = f(&mut tx)?;
            tx.commit()?;
            Ok(out)
        })
    }

    /// Run one statement that changes rows; how many it changed.
    fn execute(
        &self,
        sql: &str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<u64, QueueError> {
        self.with(|c| Ok(c.execute(sql, params)?))
    }
}

fn raw_job(row: &Row) -> Result<RawJob, postgres::Error> {
    Ok(RawJob {
        id: row.try_get(0)?,
        created_at: row.try_get(1)?,
        status: row.try_get(2)?,
        progress: row.try_get(3)?,
        settings: row.try_get(4)?,
        attempts: row.try_get(5)?,
        worker: row.try_get(6)?,
        error_code: row.try_get(7)?,
        error_message: row.try_get(8)?,
        started_at: row.try_get(9)?,
        completed_at: row.try_get(10)?,
        expires_at: row.try_get(11)?,
        result: row.try_get(12)?,
    })
}

fn get_job(c: &mut impl GenericClient, id: &str) -> Result<Option<Job>, QueueError> {
    let sql = format!("SELECT {COLUMNS} FROM hyvideo_jobs WHERE id = $1");
    match c.query_opt(&sql, &[&id])? {
        Some(row) => Ok(Some(raw_job(&row)?.into_job()?)),
        None => Ok(None),
    }
}

fn count_status(c: &mut impl GenericClient, status: JobStatus) -> Result<usize, QueueError> {
    let n: i64 = c
        .query_one(
            "SELECT COUNT(*) FROM hyvideo_jobs WHERE status = $1",
            &[&status.as_str()],
        )?
        .try_get(0)?;
    Ok(usize::try_from(n).unwrap_or(0))
}

impl JobQueue for PgQueue {
    fn create_with_image(
        &self,
        id: &str,
        settings: &str,
        idempotency_key: Option<&str>,
        max_queued: usize,
        now: i64,
        image: Option<&[u8]>,
    ) -> Result<Created, QueueError> {
        self.in_tx(|tx| {
            tx.batch_execute(LOCK)?;
            if let Some(key) = idempotency_key {
                let sql = format!("SELECT {COLUMNS} FROM hyvideo_jobs WHERE idempotency_key = $1");
                if let Some(row) = tx.query_opt(&sql, &[&key])? {
                    return Ok(Created {
                        job: raw_job(&row)?.into_job()?,
                        existing: true,
                    });
                }
            }
            let queued = count_status(tx, JobStatus::Queued)?;
            if queued >= max_queued {
                return Err(QueueError::Full {
                    queued,
                    max: max_queued,
                });
            }
            let sql = format!(
                "INSERT INTO hyvideo_jobs
                     (id, idempotency_key, created_at, status, progress, settings, attempts)
                 VALUES ($1, $2, $3, 'queued', 0, $4, 0) RETURNING {COLUMNS}"
            );
            let row = tx.query_one(&sql, &[&id, &idempotency_key, &now, &settings])?;
            if let Some(image) = image {
                tx.execute(
                    "INSERT INTO hyvideo_images (id, image) VALUES ($1, $2)",
                    &[&id, &image],
                )?;
            }
            Ok(Created {
                job: raw_job(&row)?.into_job()?,
                existing: false,
            })
        })
    }

    fn get(&self, id: &str) -> Result<Option<Job>, QueueError> {
        self.with(|c| get_job(c, id))
    }

    fn list(
        &self,
        after: Option<&str>,
        limit: usize,
        order: Order,
    ) -> Result<(Vec<Job>, bool), QueueError> {
        let (cmp, dir) = match order {
            Order::Asc => (">", "ASC"),
            Order::Desc => ("<", "DESC"),
        };
        // One more than asked tells whether more follow.
        let fetch = i64::try_from(limit).unwrap_or(i64::MAX).saturating_add(1);
        let rows = self.with(|c| match after {
            None => {
                let sql = format!(
                    "SELECT {COLUMNS} FROM hyvideo_jobs
                     ORDER BY created_at {dir}, seq {dir} LIMIT $1"
                );
                Ok(Some(c.query(&sql, &[&fetch])?))
            }
            Some(after) => {
                let Some(cursor) = c.query_opt(
                    "SELECT created_at, seq FROM hyvideo_jobs WHERE id = $1",
                    &[&after],
                )?
                else {
                    return Ok(None);
                };
                let (created_at, seq): (i64, i64) = (cursor.try_get(0)?, cursor.try_get(1)?);
                let sql = format!(
                    "SELECT {COLUMNS} FROM hyvideo_jobs WHERE (created_at, seq) {cmp} ($1, $2)
                     ORDER BY created_at {dir}, seq {dir} LIMIT $3"
                );
                Ok(Some(c.query(&sql, &[&created_at, &seq, &fetch])?))
            }
        })?;
        let Some(rows) = rows else {
            return Ok((Vec::new(), false));
        };
        let has_more = rows.len() > limit;
        let jobs = rows
            .iter()
            .take(limit)
            .map(|row| raw_job(row)?.into_job())
            .collect::<Result<Vec<_>, QueueError>>()?;
        Ok((jobs, has_more))
    }

    fn claim(&self, worker: &str, lease_secs: i64, now: i64) -> Result<Option<Job>, QueueError> {
        self.in_tx(|tx| {
            loop {
                let Some(row) = tx.query_opt(
                    "SELECT id, status, attempts, worker FROM hyvideo_jobs
                     WHERE status = 'queued'
                        OR (status = 'in_progress' AND COALESCE(lease_until, 0) <= $1)
                     ORDER BY created_at ASC, seq ASC LIMIT 1
                     FOR UPDATE SKIP LOCKED",
                    &[&now],
                )?
                else {
                    return Ok(None);
                };
                let id: String = row.try_get(0)?;
                let status: String = row.try_get(1)?;
                let attempts: i64 = row.try_get(2)?;
                let previous: Option<String> = row.try_get(3)?;
                let attempts = u32::try_from(attempts)
                    .map_err(|_| QueueError::Corrupt(id.clone(), format!("attempts {attempts}")))?;
                if status == JobStatus::InProgress.as_str() && attempts >= MAX_ATTEMPTS {
                    let message = worker_lost_message(previous.as_deref(), attempts);
                    tx.execute(
                        "UPDATE hyvideo_jobs SET status = 'failed', error_code = 'worker_lost',
                             error_message = $2, completed_at = $3, lease_until = NULL
                         WHERE id = $1",
                        &[&id, &message, &now],
                    )?;
                    continue;
                }
                let sql = format!(
                    "UPDATE hyvideo_jobs SET status = 'in_progress', progress = 0,
                         attempts = attempts + 1, worker = $2, started_at = $3, lease_until = $4
                     WHERE id = $1 RETURNING {COLUMNS}"
                );
                let row =
                    tx.query_one(&sql, &[&id, &worker, &now, &now.saturating_add(lease_secs)])?;
                return Ok(Some(raw_job(&row)?.into_job()?));
            }
        })
    }

    fn renew(&self, id: &str, worker: &str, lease_secs: i64, now: i64) -> Result<bool, QueueError> {
        let changed = self.execute(
            "UPDATE hyvideo_jobs SET lease_until = $3
             WHERE id = $1 AND status = 'in_progress' AND worker = $2",
            &[&id, &worker, &now.saturating_add(lease_secs)],
        )?;
        Ok(changed > 0)
    }

    fn release(&self, id: &str, worker: &str) -> Result<bool, QueueError> {
        let changed = self.execute(
            "UPDATE hyvideo_jobs SET lease_until = 0
             WHERE id = $1 AND status = 'in_progress' AND worker = $2",
            &[&id, &worker],
        )?;
        Ok(changed > 0)
    }

    fn set_progress(&self, id: &str, worker: &str, progress: u8) -> Result<bool, QueueError> {
        let changed = self.execute(
            "UPDATE hyvideo_jobs SET progress = $3
             WHERE id = $1 AND status = 'in_progress' AND worker = $2",
            &[&id, &worker, &i64::from(progress.min(100))],
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
        content: &Content,
    ) -> Result<bool, QueueError> {
        self.in_tx(|tx| {
            let changed = tx.execute(
                "UPDATE hyvideo_jobs SET status = 'completed', progress = 100, result = $3,
                     expires_at = $4, completed_at = $5, lease_until = NULL
                 WHERE id = $1 AND status = 'in_progress' AND worker = $2",
                &[&id, &worker, &result, &expires_at, &now],
            )?;
            if changed == 0 {
                return Ok(false);
            }
            tx.execute(
                "INSERT INTO hyvideo_videos (id, video, thumbnail) VALUES ($1, $2, $3)
                 ON CONFLICT (id) DO UPDATE SET video = EXCLUDED.video,
                     thumbnail = EXCLUDED.thumbnail",
                &[&id, &content.video, &content.thumbnail],
            )?;
            Ok(true)
        })
    }

    fn fail(
        &self,
        id: &str,
        worker: &str,
        code: &str,
        message: &str,
        now: i64,
    ) -> Result<bool, QueueError> {
        let changed = self.execute(
            "UPDATE hyvideo_jobs SET status = 'failed', error_code = $3, error_message = $4,
                 completed_at = $5, lease_until = NULL
             WHERE id = $1 AND status = 'in_progress' AND worker = $2",
            &[&id, &worker, &code, &message, &now],
        )?;
        Ok(changed > 0)
    }

    fn input_image(&self, id: &str) -> Result<Option<Vec<u8>>, QueueError> {
        let row = self
            .with(|c| Ok(c.query_opt("SELECT image FROM hyvideo_images WHERE id = $1", &[&id])?))?;
        match row {
            Some(row) => Ok(Some(row.try_get(0)?)),
            None => Ok(None),
        }
    }

    /// The stored video and input image go with the row (`ON DELETE CASCADE`).
    fn delete(&self, id: &str) -> Result<bool, QueueError> {
        let changed = self.execute("DELETE FROM hyvideo_jobs WHERE id = $1", &[&id])?;
        Ok(changed > 0)
    }

    /// Several servers share the queue, so another worker's running job is not an orphan (its
    /// lease tells whether it lives): only the jobs held under this server's own worker id — a
    /// restart with the same `--worker-id` — are released. A dead worker's jobs under another
    /// id run again when their lease runs out.
    fn release_orphans(&self, current_worker: &str) -> Result<usize, QueueError> {
        let changed = self.execute(
            "UPDATE hyvideo_jobs SET lease_until = 0
             WHERE status = 'in_progress' AND worker = $1",
            &[&current_worker],
        )?;
        Ok(usize::try_from(changed).unwrap_or(usize::MAX))
    }

    fn expired(&self, now: i64) -> Result<Vec<String>, QueueError> {
        let rows = self.with(|c| {
            Ok(c.query(
                "SELECT id FROM hyvideo_jobs
                 WHERE status IN ('completed', 'failed') AND expires_at IS NOT NULL
                   AND expires_at <= $1
                 ORDER BY created_at ASC, seq ASC",
                &[&now],
            )?)
        })?;
        Ok(rows
            .iter()
            .map(|row| row.try_get(0))
            .collect::<Result<Vec<String>, _>>()?)
    }

    fn counts(&self) -> Result<BTreeMap<JobStatus, usize>, QueueError> {
        let rows = self.with(|c| {
            Ok(c.query(
                "SELECT status, COUNT(*) FROM hyvideo_jobs GROUP BY status",
                &[],
            )?)
        })?;
        let mut counts: BTreeMap<JobStatus, usize> = JobStatus::ALL
            .into_iter()
            .map(|status| (status, 0))
            .collect();
        for row in rows {
            let status: String = row.try_get(0)?;
            let n: i64 = row.try_get(1)?;
            let parsed = JobStatus::parse(&status).ok_or_else(|| {
                QueueError::Corrupt("?".to_string(), format!("unknown status `{status}`"))
            })?;
            counts.insert(parsed, usize::try_from(n).unwrap_or(0));
        }
        Ok(counts)
    }

    fn queued(&self) -> Result<usize, QueueError> {
        self.with(|c| count_status(c, JobStatus::Queued))
    }

    fn content_store(&self) -> ContentStore {
        ContentStore::Database
    }

    fn stored_content(&self, id: &str, variant: Variant) -> Result<Option<Vec<u8>>, QueueError> {
        let sql = match variant {
            Variant::Video => "SELECT video FROM hyvideo_videos WHERE id = $1",
            Variant::Thumbnail => "SELECT thumbnail FROM hyvideo_videos WHERE id = $1",
        };
        let row = self.with(|c| Ok(c.query_opt(sql, &[&id])?))?;
        match row {
            Some(row) => Ok(Some(row.try_get(0)?)),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted_from_messages() {
        assert_eq!(
            redact("postgres://hy:s3cret@db.internal:5432/videos"),
            "postgres://hy:***@db.internal:5432/videos"
        );
        assert_eq!(redact("postgres://hy@db/videos"), "postgres://hy@db/videos");
        assert_eq!(redact("postgresql://db/videos"), "postgresql://db/videos");
        // A password containing '@' is cut at the last '@'.
        assert_eq!(redact("postgres://u:p@ss@h/d"), "postgres://u:***@h/d");
    }

    #[test]
    fn a_bad_url_names_the_flag_and_hides_the_password() {
        let err = PgQueue::open("postgres://u:pw@host:notaport/db").expect_err("bad port");
        let msg = err.to_string();
        assert!(
            msg.starts_with("--queue postgres://u:***@host:notaport/db"),
            "{msg}"
        );
        assert!(!msg.contains("pw@"), "{msg}");
    }

    #[test]
    fn queue_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<PgQueue>();
    }
}
