//! The video object every `/v1/videos` route answers with, as OpenAI's Videos API defines it
//! (`id`, `object: "video"`, `status` one of `queued` / `in_progress` / `completed` / `failed`,
//! integer `progress`, `created_at`, `completed_at`, `expires_at`, `model`, `size`, `seconds`,
//! `prompt`, `error`), plus this server's fields (`num_frames` as requested, `output_frames` in
//! the delivered video — 4 fewer for a latent_concat bundle, whose `seconds` is that video's
//! length — `seed`, `attempts`, `worker`, `timings`, the sampling settings, `step_cache`).

use serde::Serialize;
use serde_json::Value;

use crate::queue::{Job, JobStatus};
use crate::request::JobSettings;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VideoError {
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VideoObject {
    pub id: String,
    pub object: &'static str,
    pub status: JobStatus,
    pub progress: u8,
    pub created_at: i64,
    pub completed_at: Option<i64>,
    pub expires_at: Option<i64>,
    pub model: String,
    pub size: String,
    pub seconds: String,
    pub prompt: String,
    pub error: Option<VideoError>,
    pub num_frames: usize,
    pub output_frames: usize,
    pub num_inference_steps: usize,
    pub guidance_scale: f32,
    pub true_cfg_scale: f32,
    pub flow_shift: f32,
    pub fps: u32,
    pub seed: u64,
    pub attempts: u32,
    pub worker: Option<String>,
    /// Seconds per stage of a finished job, as the worker recorded them.
    pub timings: Option<Value>,
    /// The step cache: as requested (`method`, `threshold`, `start`, `end`) until the job
    /// completes, then what ran (the run record's, with `computed_steps`); null without one.
    pub step_cache: Option<Value>,
}

impl VideoObject {
    pub fn new(job: &Job, settings: &JobSettings) -> VideoObject {
        let result = job
            .result
            .as_deref()
            .and_then(|r| serde_json::from_str::<Value>(r).ok());
        VideoObject {
            id: job.id.clone(),
            object: "video",
            status: job.status,
            progress: job.progress.min(100),
            created_at: job.created_at,
            completed_at: job.completed_at,
            expires_at: job.expires_at,
            model: settings.model.clone(),
            size: settings.size(),
            seconds: settings.seconds(),
            prompt: settings.prompt.clone(),
            error: job.error.as_ref().map(|e| VideoError {
                code: e.code.clone(),
                message: e.message.clone(),
            }),
            num_frames: settings.num_frames,
            output_frames: settings.delivered_frames(),
            num_inference_steps: settings.num_inference_steps,
            guidance_scale: settings.guidance_scale,
            true_cfg_scale: settings.true_cfg_scale,
            flow_shift: settings.flow_shift,
            fps: settings.fps,
            seed: settings.seed,
            attempts: job.attempts,
            worker: job.worker.clone(),
            timings: result.as_ref().and_then(|v| v.get("timings").cloned()),
            step_cache: match result.as_ref().and_then(|v| v.get("step_cache")) {
                Some(record) if job.status == JobStatus::Completed => {
                    Some(record.clone()).filter(|r| !r.is_null())
                }
                _ => settings
                    .step_cache
                    .map(|c| c.to_json(settings.num_inference_steps)),
            },
        }
    }

    /// The end of the job's life: no further status or progress change.
    pub fn is_final(&self) -> bool {
        matches!(self.status, JobStatus::Completed | JobStatus::Failed)
    }
}

/// Progress 0–100 of a generation from its real step and tile counts: the denoising steps are
/// the first 90 %, the decode tiles the rest.
pub fn progress(step: usize, steps: usize, tile: usize, tiles: usize) -> u8 {
    let denoise = if steps == 0 {
        0.0
    } else {
        step.min(steps) as f64 / steps as f64
    };
    let decode = if tiles == 0 {
        0.0
    } else {
        tile.min(tiles) as f64 / tiles as f64
    };
    ((denoise * 90.0 + decode * 10.0).floor() as u8).min(99)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_follows_steps_then_tiles_and_stays_below_100_until_done() {
        assert_eq!(progress(0, 50, 0, 0), 0);
        assert_eq!(progress(25, 50, 0, 0), 45);
        assert_eq!(progress(50, 50, 0, 4), 90);
        assert_eq!(progress(50, 50, 2, 4), 95);
        assert_eq!(progress(50, 50, 4, 4), 99);
        assert_eq!(progress(0, 0, 0, 0), 0);
    }
}
