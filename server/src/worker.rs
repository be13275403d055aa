//! The job loop of one server process: claim the oldest runnable job from the queue (with a
//! lease that a heartbeat renews while the job runs: `lease`), run it on the loaded
//! `Pipeline` — the engines are loaded once for every job — reporting progress from the real
//! step and tile counts, stop it when it is
//! deleted (cooperative cancellation between denoising steps and decode tiles), and
//! write the MP4 and its first-frame PNG under temporary names renamed into place before the
//! job is marked completed (a queue that stores videos — PostgreSQL — gets them in the same
//! transaction). A worker that dies leaves its lease to run out; the job then runs again from
//! the start on whichever worker claims it (attempts are counted by the queue). Requests may ask
//! for a step cache; its record is kept with the job's timings. An image-to-video job's input
//! image is read back from the queue (which stored it with the job, so any server of a shared
//! queue can run it) and decoded again. Between jobs the retention sweep deletes expired jobs
//! (their stored images go with their rows) and this data dir's files of jobs that no longer
//! exist.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyvideo::generation::{CancelFlag, GenerationError, Pipeline, Progress};
use hyvideo::image::{RgbImage, load_image_bytes};
use hyvideo::video::{Video, save_video};

use crate::lease::LeaseKeeper;
use crate::queue::{Content, ContentStore, Job, JobQueue};
use crate::request::{JobSettings, is_job_id, setting_field};
use crate::video::progress;

/// Unix seconds now.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Where a job's files live under the data dir (from its server-made id only).
pub fn video_path(data_dir: &Path, id: &str) -> PathBuf {
    data_dir.join("videos").join(format!("{id}.mp4"))
}

pub fn thumbnail_path(data_dir: &Path, id: &str) -> PathBuf {
    data_dir.join("videos").join(format!("{id}.png"))
}

/// Remove a job's files from the data dir (those that exist).
pub fn remove_files(data_dir: &Path, id: &str) {
    let _ = std::fs::remove_file(video_path(data_dir, id));
    let _ = std::fs::remove_file(thumbnail_path(data_dir, id));
}

/// The running jobs' cancel flags, shared with the API (DELETE cancels through them).
pub type Running = Arc<Mutex<HashMap<String, CancelFlag>>>;

/// Wakes an idle worker when a job is created in this process (jobs created by other processes
/// on a shared queue are found by the worker's periodic look).
#[derive(Default)]
pub struct Wakeup {
    pending: Mutex<bool>,
    cv: std::sync::Condvar,
}

impl Wakeup {
    pub fn notify(&self) {
        if let Ok(mut p) = self.pending.lock() {
            *p = true;
            self.cv.notify_all();
        }
    }

    /// Wait for a notification or `timeout`, whichever comes first.
    pub fn wait(&self, timeout: Duration) {
        if let Ok(p) = self.pending.lock() {
            let (mut p, _) = self
                .cv
                .wait_timeout_while(p, timeout, |pending| !*pending)
                .unwrap_or_else(|e| e.into_inner());
            *p = false;
        }
    }
}

/// What one worker needs.
pub struct Worker {
    pub queue: Arc<dyn JobQueue>,
    pub pipeline: Pipeline,
    pub data_dir: PathBuf,
    pub id: String,
    pub lease_secs: i64,
    pub retention_secs: i64,
    pub running: Running,
    pub shutdown: Arc<AtomicBool>,
    /// Longest wait when the queue is empty (a create in this process wakes it at once).
    pub idle: Duration,
    pub wakeup: Arc<Wakeup>,
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// What ended a job.
enum Outcome {
    Completed {
        timings: serde_json::Value,
        /// The run record's `step_cache` (what the step cache computed; null without one).
        step_cache: serde_json::Value,
    },
    Failed {
        code: &'static str,
        message: String,
    },
    /// Deleted while it ran, or its lease lost to another worker: nothing to record.
    Abandoned,
    /// Could not start for a reason that may pass (the queue's database did not answer): handed
    /// back to run again.
    Retry {
        message: String,
    },
}

impl Worker {
    /// Run jobs until `shutdown` is set (the running job is finished first); between jobs,
    /// delete the videos whose retention ran out.
    pub fn run(mut self) {
        let mut last_sweep = Instant::now() - Duration::from_secs(3600);
        while !self.shutdown.load(Ordering::SeqCst) {
            if last_sweep.elapsed() >= Duration::from_secs(60) {
                last_sweep = Instant::now();
                self.sweep_expired();
            }
            match self.queue.claim(&self.id, self.lease_secs, now()) {
                Ok(Some(job)) => self.run_job(job),
                Ok(None) => self.wakeup.wait(self.idle),
                Err(e) => {
                    eprintln!("worker {}: claiming a job: {e}", self.id);
                    std::thread::sleep(self.idle);
                }
            }
        }
    }

    /// `--retention`: every finished job past its `expires_at` loses its files and its row.
    /// Then the files in this data dir of jobs that no longer exist go too (on a shared queue
    /// another server may have deleted or expired the job).
    fn sweep_expired(&self) {
        match self.queue.expired(now()) {
            Ok(ids) => {
                for id in ids {
                    remove_files(&self.data_dir, &id);
                    if let Err(e) = self.queue.delete(&id) {
                        eprintln!("retention: deleting {id}: {e}");
                    }
                }
            }
            Err(e) => eprintln!("retention: {e}"),
        }
        let Ok(entries) = std::fs::read_dir(self.data_dir.join("videos")) else {
            return;
        };
        let mut ids: Vec<String> = entries
            .flatten()
            .filter_map(|e| {
                let path = e.path();
                let stem = path.file_stem()?.to_str()?;
                is_job_id(stem).then(|| stem.to_owned())
            })
            .collect();
        ids.sort();
        ids.dedup();
        for id in ids {
            if let Ok(None) = self.queue.get(&id) {
                eprintln!("retention: {id} is gone from the queue; removing its files");
                remove_files(&self.data_dir, &id);
            }
        }
    }

    fn run_job(&mut self, job: Job) {
        let id = job.id.clone();
        eprintln!(
            "job {id}: started by {} (attempt {})",
            self.id, job.attempts
        );
        let cancel = CancelFlag::new();
        if let Ok(mut r) = self.running.lock() {
            r.insert(id.clone(), cancel.clone());
        }
        let lease = LeaseKeeper::start(
            self.queue.clone(),
            &id,
            &self.id,
            self.lease_secs,
            cancel.clone(),
        );
        let outcome = match serde_json::from_str::<JobSettings>(&job.settings) {
            Ok(s) => self.generate(&id, &s, &cancel),
            Err(e) => Outcome::Failed {
                code: "invalid_job",
                message: format!("stored settings do not parse: {e}"),
            },
        };
        // No renewal may follow what is recorded next (a release must stay a release).
        drop(lease);
        if let Ok(mut r) = self.running.lock() {
            r.remove(&id);
        }
        let t = now();
        let recorded = match outcome {
            Outcome::Completed {
                timings,
                step_cache,
            } => {
                if let Some(total) = timings.get("total").and_then(|v| v.as_f64()) {
                    self.metrics.job_done(total);
                }
                let result =
                    serde_json::json!({ "timings": timings, "step_cache": step_cache }).to_string();
                match self.stored_content(&id) {
                    Ok(content) => self.queue.complete(
                        &id,
                        &self.id,
                        &result,
                        t + self.retention_secs,
                        t,
                        &content,
                    ),
                    Err(message) => {
                        eprintln!("job {id}: failed (write_failed): {message}");
                        self.metrics.failed("write_failed");
                        self.queue.fail(&id, &self.id, "write_failed", &message, t)
                    }
                }
            }
            Outcome::Failed { code, message } => {
                eprintln!("job {id}: failed ({code}): {message}");
                self.metrics.failed(code);
                self.queue.fail(&id, &self.id, code, &message, t)
            }
            Outcome::Abandoned if self.shutdown.load(Ordering::SeqCst) => {
                // A graceful stop: hand the job back so it runs again (here after a restart,
                // or on another worker of a shared queue).
                match self.queue.release(&id, &self.id) {
                    Ok(true) => eprintln!("job {id}: released for a later run (server stopping)"),
                    Ok(false) => eprintln!("job {id}: stopped (deleted or taken over)"),
                    Err(e) => eprintln!("job {id}: releasing it: {e}"),
                }
                Ok(true)
            }
            Outcome::Abandoned => {
                eprintln!("job {id}: stopped (deleted or taken over)");
                Ok(false)
            }
            Outcome::Retry { message } => {
                eprintln!("job {id}: handed back to run again: {message}");
                if let Err(e) = self.queue.release(&id, &self.id) {
                    eprintln!("job {id}: releasing it: {e}");
                }
                std::thread::sleep(self.idle);
                return;
            }
        };
        match recorded {
            Ok(true) => eprintln!("job {id}: recorded"),
            Ok(false) => {
                // Deleted meanwhile (or taken over): leave no files behind.
                remove_files(&self.data_dir, &id);
            }
            Err(e) => eprintln!("job {id}: recording the result: {e}"),
        }
    }

    /// The finished files for a queue that stores them in its database (read back from the data
    /// dir, where they were renamed into place); nothing for one that does not.
    fn stored_content(&self, id: &str) -> Result<Content, String> {
        match self.queue.content_store() {
            ContentStore::DataDir => Ok(Content::default()),
            ContentStore::Database => {
                let read =
                    |p: PathBuf| std::fs::read(&p).map_err(|e| format!("{}: {e}", p.display()));
                Ok(Content {
                    video: read(video_path(&self.data_dir, id))?,
                    thumbnail: read(thumbnail_path(&self.data_dir, id))?,
                })
            }
        }
    }

    /// The job's input image, from the queue, decoded (`None` for a text-to-video job).
    fn input_image(&self, id: &str, s: &JobSettings) -> Result<Option<RgbImage>, Outcome> {
        if s.input_reference.is_none() {
            return Ok(None);
        }
        let bytes = match self.queue.input_image(id) {
            Ok(Some(b)) => b,
            Ok(None) => {
                return Err(Outcome::Failed {
                    code: "invalid_job",
                    message: "input_reference: the image stored with the job is missing".into(),
                });
            }
            Err(e) => {
                return Err(Outcome::Retry {
                    message: format!("reading its input_reference: {e}"),
                });
            }
        };
        match load_image_bytes(&bytes, "the stored image") {
            Ok(image) => Ok(Some(image)),
            Err(e) => Err(Outcome::Failed {
                code: "invalid_job",
                message: format!("input_reference: {e}"),
            }),
        }
    }

    fn generate(&mut self, id: &str, s: &JobSettings, cancel: &CancelFlag) -> Outcome {
        let image = match self.input_image(id, s) {
            Ok(image) => image,
            Err(outcome) => return outcome,
        };
        let request = s.generate_request(image);
        let (queue, worker) = (self.queue.clone(), self.id.clone());
        let metrics = self.metrics.clone();
        let mut last_progress = 0u8;
        let (mut step, mut steps, mut tile, mut tiles) = (0, s.num_inference_steps, 0, 0);
        let mut on_progress = |e: Progress| {
            match e {
                Progress::Step {
                    step: i,
                    steps: n,
                    elapsed,
                } => {
                    (step, steps) = (i, n);
                    metrics.step_done(elapsed.as_secs_f64());
                }
                Progress::Tile { tile: i, tiles: n } => (tile, tiles) = (i, n),
                Progress::Stage(_) => {}
            }
            let p = progress(step, steps, tile, tiles);
            // (The lease is renewed by the heartbeat; a progress update that finds the job gone
            // stops it between steps as soon as possible.)
            let held = p == last_progress || queue.set_progress(id, &worker, p).unwrap_or(true);
            last_progress = p;
            if !held {
                cancel.cancel();
            }
        };
        let t = Instant::now();
        let generated = self.pipeline.generate(&request, &mut on_progress, cancel);
        let generated = match generated {
            Ok(g) => g,
            Err(GenerationError::Cancelled { .. }) => return Outcome::Abandoned,
            Err(e) => {
                // A setting the runtime refuses is named by its request field.
                return match e.invalid_setting() {
                    Some(i) => Outcome::Failed {
                        code: "invalid_request",
                        message: format!("{}: {}", setting_field(i.setting), i.reason),
                    },
                    None => Outcome::Failed {
                        code: "generation_failed",
                        message: e.to_string(),
                    },
                };
            }
        };
        let gen_s = t.elapsed().as_secs_f64();
        let write = || -> Result<(), String> {
            let path = video_path(&self.data_dir, id);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            }
            let shape = generated.video.shape();
            let video =
                Video::new(shape, generated.video.data().to_vec()).map_err(|e| e.to_string())?;
            save_video(&path, &video, s.fps).map_err(|e| e.to_string())?;
            let [_, c, _, h, w] = shape;
            let frame: Vec<f32> = (0..c)
                .flat_map(|ch| {
                    let start = ch * shape[2] * h * w;
                    generated.video.data()[start..start + h * w].iter().copied()
                })
                .collect();
            let first = Video::new([1, c, 1, h, w], frame).map_err(|e| e.to_string())?;
            save_video(&thumbnail_path(&self.data_dir, id), &first, s.fps)
                .map_err(|e| e.to_string())?;
            Ok(())
        };
        if let Err(message) = write() {
            return Outcome::Failed {
                code: "write_failed",
                message,
            };
        }
        let mut timings = serde_json::Map::new();
        for (stage, d) in &generated.timings {
            timings.insert(stage.to_string(), d.as_secs_f64().into());
        }
        timings.insert("total".into(), gen_s.into());
        Outcome::Completed {
            timings: timings.into(),
            step_cache: generated
                .step_cache
                .as_ref()
                .map_or(serde_json::Value::Null, |r| r.to_json()),
        }
    }
}
