//! The durable job queue behind `/v1/videos`, in one of two databases behind one trait
//! ([`JobQueue`]): SQLite in the data dir ([`sqlite`], the default: embedded, one server) or
//! PostgreSQL ([`postgres`]: several servers on several machines share one queue, and the
//! finished videos are stored in the database too). An image-to-video job's input image is
//! stored in the database with the job, in the transaction that creates it, and deleted with the
//! job's row, so it survives restarts and reaches whichever worker claims the job.
//!
//! It mirrors the life of an OpenAI video object: `queued` → `in_progress` (with `progress`) →
//! `completed` or `failed`, with the create request's settings and the worker's result kept as
//! opaque JSON. Jobs are claimed by workers under a lease that a live worker renews, so that a
//! job whose worker died runs again, at most [`MAX_ATTEMPTS`] times. Everything is synchronous
//! (the server calls it from `spawn_blocking` and from its worker thread) and every timestamp is
//! unix seconds passed in by the caller, so tests control time (with PostgreSQL the servers'
//! clocks must agree to well within a lease).

use std::collections::BTreeMap;
use std::path::PathBuf;

pub mod postgres;
pub mod sqlite;

pub use self::postgres::PgQueue;
pub use self::sqlite::SqliteQueue;

/// Claims of one job after which a lease that runs out fails it (`worker_lost`) instead of
/// handing it to another worker.
pub const MAX_ATTEMPTS: u32 = 3;

/// The columns [`RawJob`] holds, in its order (both databases name them alike).
pub(crate) const COLUMNS: &str = "id, created_at, status, progress, settings, attempts, worker, \
                       error_code, error_message, started_at, completed_at, expires_at, result";

/// Where a job is in its life, as the OpenAI video object spells it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    InProgress,
    Completed,
    Failed,
}

impl JobStatus {
    pub const ALL: [JobStatus; 4] = [
        JobStatus::Queued,
        JobStatus::InProgress,
        JobStatus::Completed,
        JobStatus::Failed,
    ];

    /// The API's (and the database's) name of the status.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::InProgress => "in_progress",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Option<JobStatus> {
        JobStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
    }
}

/// One job as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub id: String,
    pub created_at: i64,
    pub status: JobStatus,
    /// 0..=100.
    pub progress: u8,
    /// The validated request as JSON (opaque to the queue).
    pub settings: String,
    /// Times it was claimed.
    pub attempts: u32,
    /// The worker that claimed it last.
    pub worker: Option<String>,
    /// Set when failed.
    pub error: Option<JobError>,
    pub started_at: Option<i64>,
    pub completed_at: Option<i64>,
    pub expires_at: Option<i64>,
    /// JSON the worker stores at completion (timings etc.), opaque to the queue.
    pub result: Option<String>,
}

/// Why a job failed.
#[derive(Debug, Clone, PartialEq)]
pub struct JobError {
    pub code: String,
    pub message: String,
}

/// Order of [`JobQueue::list`]: by `created_at`, then insertion order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    Asc,
    Desc,
}

/// What [`JobQueue::create`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct Created {
    pub job: Job,
    /// An idempotency key matched: `job` is the one created earlier, nothing was inserted.
    pub existing: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("{path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("queue database: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("--queue {url}: connecting to PostgreSQL: {source}")]
    Connect {
        /// The URL without its password.
        url: String,
        source: ::postgres::Error,
    },
    #[error("queue database (PostgreSQL): {0}")]
    Postgres(#[from] ::postgres::Error),
    #[error(
        "--queue {0}: not a queue location; use `sqlite` (in the data dir) or a PostgreSQL URL \
         `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE`"
    )]
    Location(String),
    #[error("the queue is full ({queued} queued, at most {max})")]
    Full { queued: usize, max: usize },
    #[error("job `{0}` has a corrupt row: {1}")]
    Corrupt(String, String),
}

/// One of a finished job's files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// The MP4.
    Video,
    /// The PNG of the first frame.
    Thumbnail,
}

/// A finished job's files, handed to [`JobQueue::complete`] by a queue that stores them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Content {
    pub video: Vec<u8>,
    pub thumbnail: Vec<u8>,
}

/// Where a queue keeps finished videos.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentStore {
    /// Only in the serving process's data dir.
    DataDir,
    /// Also in the database, so every server of a shared queue serves every video.
    Database,
}

/// The queue's operations; both databases give them the same meaning (tested on both).
pub trait JobQueue: Send + Sync {
    /// Insert a queued job. With `idempotency_key` already used, return that job
    /// (`existing = true`) without inserting. Refuse with [`QueueError::Full`] when `max_queued`
    /// jobs are already queued (status Queued; the running one does not count). Atomic.
    fn create(
        &self,
        id: &str,
        settings: &str,
        idempotency_key: Option<&str>,
        max_queued: usize,
        now: i64,
    ) -> Result<Created, QueueError> {
        self.create_with_image(id, settings, idempotency_key, max_queued, now, None)
    }

    /// [`create`](JobQueue::create), storing `image` (an image-to-video job's input file) with
    /// the job in the same transaction: a job is never claimable without its image. An
    /// idempotent retry returns the first job and stores nothing. The image is deleted with the
    /// job ([`delete`](JobQueue::delete), retention).
    fn create_with_image(
        &self,
        id: &str,
        settings: &str,
        idempotency_key: Option<&str>,
        max_queued: usize,
        now: i64,
        image: Option<&[u8]>,
    ) -> Result<Created, QueueError>;

    /// The image stored with job `id` by [`create_with_image`](JobQueue::create_with_image)
    /// (None: the job has none, or is gone). Every handle on the queue reads it.
    fn input_image(&self, id: &str) -> Result<Option<Vec<u8>>, QueueError>;

    fn get(&self, id: &str) -> Result<Option<Job>, QueueError>;

    /// Page of jobs after the job `after` (exclusive) in `order`; at most `limit`; and whether
    /// more follow. An `after` that names no job (never created, or deleted) gives an empty page.
    fn list(
        &self,
        after: Option<&str>,
        limit: usize,
        order: Order,
    ) -> Result<(Vec<Job>, bool), QueueError>;

    /// Claim the oldest runnable job for `worker` with a lease until `now + lease_secs`: a Queued
    /// job, or an InProgress job whose lease ran out (its worker died). Claiming increments
    /// `attempts`; a job whose lease ran out after [`MAX_ATTEMPTS`] claims is instead marked
    /// Failed with code `worker_lost` (and the next job is considered). Sets status InProgress,
    /// progress 0, worker, started_at. Two workers never claim the same job.
    fn claim(&self, worker: &str, lease_secs: i64, now: i64) -> Result<Option<Job>, QueueError>;

    /// Extend the lease of `id` to `now + lease_secs` if `worker` still holds it (InProgress,
    /// same worker); false otherwise (deleted, finished, or taken over after the lease ran out).
    fn renew(&self, id: &str, worker: &str, lease_secs: i64, now: i64) -> Result<bool, QueueError>;

    /// Give back a job `worker` holds without finishing it (a graceful stop): its lease ends now,
    /// so the next claim — by any worker, or by this server after its restart — runs it again
    /// (the attempt is counted). False when `worker` no longer holds it.
    fn release(&self, id: &str, worker: &str) -> Result<bool, QueueError>;

    /// Record progress (capped at 100) if `worker` holds the job; false when it no longer does.
    fn set_progress(&self, id: &str, worker: &str, progress: u8) -> Result<bool, QueueError>;

    /// Mark completed (progress 100) with `result` JSON and `expires_at`, if `worker` holds it;
    /// a queue whose [`content_store`](JobQueue::content_store) is the database stores `content`
    /// in the same transaction (others ignore it).
    fn complete(
        &self,
        id: &str,
        worker: &str,
        result: &str,
        expires_at: i64,
        now: i64,
        content: &Content,
    ) -> Result<bool, QueueError>;

    /// Mark failed with an error, if `worker` holds it. (`expires_at` stays unset.)
    fn fail(
        &self,
        id: &str,
        worker: &str,
        code: &str,
        message: &str,
        now: i64,
    ) -> Result<bool, QueueError>;

    /// Delete the job row, its idempotency key, its input image and any stored content; true if
    /// it existed.
    fn delete(&self, id: &str) -> Result<bool, QueueError>;

    /// At start-up: InProgress jobs that this server's previous process left behind get their
    /// lease expired (`lease_until = 0`) so the next claim runs them again (or fails them as
    /// `worker_lost` after [`MAX_ATTEMPTS`]). Returns how many. Which jobs those are depends on
    /// the database: see each implementation.
    fn release_orphans(&self, current_worker: &str) -> Result<usize, QueueError>;

    /// Ids of Completed/Failed jobs whose `expires_at <= now`, oldest first (for retention).
    fn expired(&self, now: i64) -> Result<Vec<String>, QueueError>;

    /// Number of jobs per status (all four keys present), for `/metrics`.
    fn counts(&self) -> Result<BTreeMap<JobStatus, usize>, QueueError>;

    /// Number of Queued jobs (the running ones not counted).
    fn queued(&self) -> Result<usize, QueueError>;

    /// Where finished videos are kept.
    fn content_store(&self) -> ContentStore;

    /// A completed job's file as stored in the database (None when this queue stores none, or
    /// the job has none).
    fn stored_content(&self, id: &str, variant: Variant) -> Result<Option<Vec<u8>>, QueueError>;
}

/// The error message of a job failed as `worker_lost`: its lease ran out `attempts` times,
/// the last time under `previous`.
pub(crate) fn worker_lost_message(previous: Option<&str>, attempts: u32) -> String {
    format!(
        "the worker running this job stopped (last: `{}`) {attempts} times; it is not tried again",
        previous.unwrap_or("?")
    )
}

/// Which database holds the queue (`--queue`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueLocation {
    /// `sqlite`: `queue.sqlite3` in the data dir.
    Sqlite,
    /// `postgres://…` or `postgresql://…`: a libpq connection URL.
    Postgres(String),
}

impl QueueLocation {
    /// Parse `--queue`.
    pub fn parse(s: &str) -> Result<QueueLocation, QueueError> {
        if s == "sqlite" {
            Ok(QueueLocation::Sqlite)
        } else if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            Ok(QueueLocation::Postgres(s.to_owned()))
        } else {
            Err(QueueError::Location(s.to_owned()))
        }
    }

    /// Open the queue (creating its schema if needed); `data_dir` holds the SQLite file.
    pub fn open(&self, data_dir: &std::path::Path) -> Result<Box<dyn JobQueue>, QueueError> {
        Ok(match self {
            QueueLocation::Sqlite => Box::new(SqliteQueue::open(&data_dir.join("queue.sqlite3"))?),
            QueueLocation::Postgres(url) => Box::new(PgQueue::open(url)?),
        })
    }
}

/// A row as the databases give it, checked into a [`Job`] by [`RawJob::into_job`].
pub(crate) struct RawJob {
    pub(crate) id: String,
    pub(crate) created_at: i64,
    pub(crate) status: String,
    pub(crate) progress: i64,
    pub(crate) settings: String,
    pub(crate) attempts: i64,
    pub(crate) worker: Option<String>,
    pub(crate) error_code: Option<String>,
    pub(crate) error_message: Option<String>,
    pub(crate) started_at: Option<i64>,
    pub(crate) completed_at: Option<i64>,
    pub(crate) expires_at: Option<i64>,
    pub(crate) result: Option<String>,
}

impl RawJob {
    pub(crate) fn into_job(self) -> Result<Job, QueueError> {
        let corrupt = |what: String| QueueError::Corrupt(self.id.clone(), what);
        let status = JobStatus::parse(&self.status)
            .ok_or_else(|| corrupt(format!("unknown status `{}`", self.status)))?;
        let progress = u8::try_from(self.progress)
            .ok()
            .filter(|p| *p <= 100)
            .ok_or_else(|| corrupt(format!("progress {} is not in 0..=100", self.progress)))?;
        let attempts = u32::try_from(self.attempts).map_err(|_| {
            corrupt(format!(
                "attempts {} is negative or too large",
                self.attempts
            ))
        })?;
        let error = match (self.error_code, self.error_message) {
            (Some(code), Some(message)) => Some(JobError { code, message }),
            (None, None) => None,
            (Some(_), None) => return Err(corrupt("an error code without a message".to_string())),
            (None, Some(_)) => return Err(corrupt("an error message without a code".to_string())),
        };
        Ok(Job {
            id: self.id,
            created_at: self.created_at,
            status,
            progress,
            settings: self.settings,
            attempts,
            worker: self.worker,
            error,
            started_at: self.started_at,
            completed_at: self.completed_at,
            expires_at: self.expires_at,
            result: self.result,
        })
    }
}
