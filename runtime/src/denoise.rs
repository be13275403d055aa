//! The denoising loop: flow-matching Euler steps driving any [`VelocityModel`] (one loop for
//! every backend), with embedded guidance and optional true classifier-free guidance.
//!
//! Mirrors the loop of diffusers `HunyuanVideoPipeline.__call__`: per step the transformer sees
//! `timestep = σ·1000` and `guidance = scale·1000`; with `true_cfg_scale > 1` and a negative
//! prompt, `v = v_neg + s·(v − v_neg)` (diffusers runs the two passes one after the other; here
//! they are one B = 2 call); then `FlowMatchEulerDiscreteScheduler.step` in f32. An
//! image-to-video run (`HunyuanVideoImageToVideoPipeline`) feeds and fixes the latents as its
//! condition type says ([`crate::i2v`]).

use std::time::{Duration, Instant};

use crate::i2v::ImageConditioning;
use crate::scheduler::{FlowDirection, NUM_TRAIN_TIMESTEPS, euler_step, sigmas_in};
use crate::setting::{InvalidSetting, Setting};
use crate::tensor::Tensor5;
use crate::transformer::{StepInput, TextConditioning, TransformerError, VelocityModel};

#[derive(Debug, thiserror::Error)]
pub enum DenoiseError {
    #[error("step {step} of {steps}: {source}")]
    Model {
        step: usize,
        steps: usize,
        #[source]
        source: TransformerError,
    },
    #[error(
        "step {step} of {steps} (timestep {timestep}): the latents became NaN or infinite \
         ({bad} of {total} values); stopping"
    )]
    NonFinite {
        step: usize,
        steps: usize,
        timestep: f32,
        bad: usize,
        total: usize,
    },
    #[error(transparent)]
    Invalid(#[from] InvalidSetting),
    /// Conditioning that does not fit the latents (a caller's inconsistency, not a setting).
    #[error("{0}")]
    Batch(String),
}

/// True classifier-free guidance with a negative prompt (a cfg scale above 1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrueCfg {
    pub scale: f32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DenoiseSettings {
    pub steps: usize,
    /// The flow-matching time shift.
    pub shift: f32,
    /// Default reverse, t = 1 → 0.
    pub direction: FlowDirection,
    /// Embedded guidance scale (passed to the transformer as scale·1000); `None` for models
    /// without guidance embedding.
    pub embedded_guidance: Option<f32>,
    /// True CFG with a negative prompt.
    pub true_cfg: Option<TrueCfg>,
}

/// What the loop reports after each step.
#[derive(Debug, Clone, Copy)]
pub struct StepReport {
    /// 1-based.
    pub step: usize,
    pub steps: usize,
    pub timestep: f32,
    pub elapsed: Duration,
}

/// Run the loop from `latents` (the initial noise) with the prompt's conditioning (`negative`
/// is required with true CFG). `on_step` sees every step's report and latents.
pub fn denoise(
    model: &mut dyn VelocityModel,
    latents: Tensor5,
    text: &TextConditioning,
    negative: Option<&TextConditioning>,
    settings: &DenoiseSettings,
    on_step: impl FnMut(&StepReport, &Tensor5),
) -> Result<Tensor5, DenoiseError> {
    denoise_from_image(model, latents, text, negative, settings, None, on_step)
}

/// [`denoise`] with an image-to-video model's image latent (`image`): the model input and the
/// latents after each step are the condition type's ([`ImageConditioning`]).
pub fn denoise_from_image(
    model: &mut dyn VelocityModel,
    mut latents: Tensor5,
    text: &TextConditioning,
    negative: Option<&TextConditioning>,
    settings: &DenoiseSettings,
    image: Option<&ImageConditioning>,
    mut on_step: impl FnMut(&StepReport, &Tensor5),
) -> Result<Tensor5, DenoiseError> {
    if settings.steps == 0 {
        return Err(InvalidSetting::new(Setting::Steps, "must be at least 1").into());
    }
    if !(settings.shift.is_finite() && settings.shift > 0.0) {
        return Err(InvalidSetting::new(
            Setting::FlowShift,
            format!("must be a positive number, got {}", settings.shift),
        )
        .into());
    }
    let b = latents.shape()[0];
    if text.batch() != b {
        return Err(DenoiseError::Batch(format!(
            "{} prompt embedding rows for a latent batch of {b}",
            text.batch()
        )));
    }
    let cfg = match settings.true_cfg {
        Some(c) if c.scale > 1.0 => {
            let neg = negative.ok_or_else(|| {
                InvalidSetting::new(
                    Setting::NegativePrompt,
                    "a cfg scale above 1 (true classifier-free guidance) needs a negative prompt",
                )
            })?;
            if neg.batch() != b {
                return Err(DenoiseError::Batch(format!(
                    "{} negative prompt rows for a latent batch of {b}",
                    neg.batch()
                )));
            }
            Some((c.scale, neg))
        }
        _ => None,
    };
    // With true CFG the model sees [prompt; negative] in one call. Padding past the longest
    // prompt is dropped (exact: see `TextConditioning::cropped_to_prompts`).
    let model_text = match cfg {
        Some((_, neg)) => text.stack(neg).map_err(|e| DenoiseError::Model {
            step: 0,
            steps: settings.steps,
            source: e,
        })?,
        None => text.clone(),
    }
    .cropped_to_prompts();
    let model_text = &model_text;
    let rows = model_text.batch();
    let sigmas = sigmas_in(settings.steps, settings.shift, settings.direction);
    let guidance = settings
        .embedded_guidance
        .map(|g| vec![g * NUM_TRAIN_TIMESTEPS; rows]);
    let steps = settings.steps;
    for i in 0..steps {
        let t0 = Instant::now();
        let t = sigmas[i] * NUM_TRAIN_TIMESTEPS;
        let timestep = vec![t; rows];
        let x = match image {
            Some(c) => c.model_input(&latents),
            None => latents.clone(),
        };
        let input_latents = match cfg {
            Some(_) => stack_batch(&x, &x)?,
            None => x,
        };
        let v = model
            .predict(&StepInput {
                latents: &input_latents,
                timestep: &timestep,
                text: model_text,
                guidance: guidance.as_deref(),
            })
            .map_err(|source| DenoiseError::Model {
                step: i + 1,
                steps,
                source,
            })?;
        let v = match cfg {
            Some((scale, _)) => combine_cfg(v.data(), scale),
            None => v.into_data(),
        };
        euler_step(latents.data_mut(), &v, sigmas[i], sigmas[i + 1]);
        if let Some(c) = image {
            c.after_step(&mut latents);
        }
        let bad = latents.data().iter().filter(|x| !x.is_finite()).count();
        if bad > 0 {
            return Err(DenoiseError::NonFinite {
                step: i + 1,
                steps,
                timestep: t,
                bad,
                total: latents.data().len(),
            });
        }
        on_step(
            &StepReport {
                step: i + 1,
                steps,
                timestep: t,
                elapsed: t0.elapsed(),
            },
            &latents,
        );
    }
    Ok(latents)
}

/// `[a; b]` along the batch axis.
fn stack_batch(a: &Tensor5, b: &Tensor5) -> Result<Tensor5, DenoiseError> {
    let mut shape = a.shape();
    shape[0] += b.shape()[0];
    let data = [a.data(), b.data()].concat();
    Tensor5::from_vec(shape, data).map_err(|e| DenoiseError::Batch(e.to_string()))
}

/// `v_neg + s·(v_pos − v_neg)` from a [prompt rows; negative rows] prediction, in f32 as
/// diffusers computes it.
pub fn combine_cfg(v: &[f32], scale: f32) -> Vec<f32> {
    let half = v.len() / 2;
    let (pos, neg) = v.split_at(half);
    pos.iter()
        .zip(neg)
        .map(|(p, n)| n + scale * (p - n))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// v = a·x + c, with a NaN injected at a chosen call.
    struct Linear {
        a: f32,
        c: f32,
        calls: usize,
        nan_at: Option<usize>,
        seen_batches: Vec<usize>,
        seen_guidance: Vec<Option<Vec<f32>>>,
        seen_timesteps: Vec<Vec<f32>>,
    }

    impl Linear {
        fn new(a: f32, c: f32) -> Self {
            Linear {
                a,
                c,
                calls: 0,
                nan_at: None,
                seen_batches: vec![],
                seen_guidance: vec![],
                seen_timesteps: vec![],
            }
        }
    }

    impl VelocityModel for Linear {
        fn predict(&mut self, input: &StepInput<'_>) -> Result<Tensor5, TransformerError> {
            self.calls += 1;
            self.seen_batches.push(input.latents.shape()[0]);
            self.seen_guidance.push(input.guidance.map(<[f32]>::to_vec));
            self.seen_timesteps.push(input.timestep.to_vec());
            let rows = input.text.batch();
            let per_row = input.latents.data().len() / rows;
            let mut out = input.latents.clone();
            for (j, x) in out.data_mut().iter_mut().enumerate() {
                // the second half of a CFG batch (negative rows) gets another offset
                let neg = rows == 2 && j >= per_row;
                *x = self.a * *x + if neg { -self.c } else { self.c };
            }
            if self.nan_at == Some(self.calls) {
                out.data_mut()[0] = f32::NAN;
            }
            Ok(out)
        }
    }

    fn text(batch: usize) -> TextConditioning {
        TextConditioning::new(
            (&[batch, 3, 2], vec![0.5; batch * 6]),
            (&[batch, 3], vec![1; batch * 3]),
            (&[batch, 2], vec![0.1; batch * 2]),
        )
        .unwrap()
    }

    fn settings() -> DenoiseSettings {
        DenoiseSettings {
            steps: 4,
            shift: 7.0,
            direction: FlowDirection::Reverse,
            embedded_guidance: Some(6.0),
            true_cfg: None,
        }
    }

    #[test]
    fn euler_loop_matches_a_hand_computed_run() {
        let x0 = Tensor5::from_vec([1, 1, 1, 1, 2], vec![1.0, -2.0]).unwrap();
        let mut m = Linear::new(0.5, 0.25);
        let mut reports = vec![];
        let out = denoise(&mut m, x0.clone(), &text(1), None, &settings(), |r, _| {
            reports.push(*r)
        })
        .unwrap();
        let s = sigmas_in(4, 7.0, FlowDirection::Reverse);
        let mut want = x0.data().to_vec();
        for i in 0..4 {
            let v: Vec<f32> = want.iter().map(|x| 0.5 * x + 0.25).collect();
            euler_step(&mut want, &v, s[i], s[i + 1]);
        }
        assert_eq!(out.data(), want.as_slice());
        assert_eq!(reports.len(), 4);
        assert_eq!(reports[3].step, 4);
        assert_eq!(m.seen_guidance[0], Some(vec![6000.0]));
        assert_eq!(m.seen_timesteps[0], vec![1000.0]);
        assert_eq!(m.seen_timesteps[1], vec![s[1] * 1000.0]);
    }

    #[test]
    fn true_cfg_batches_prompt_and_negative_in_one_call() {
        let x0 = Tensor5::from_vec([1, 1, 1, 1, 2], vec![1.0, -2.0]).unwrap();
        let mut m = Linear::new(0.5, 0.25);
        let cfg = DenoiseSettings {
            true_cfg: Some(TrueCfg { scale: 4.0 }),
            ..settings()
        };
        let neg = text(1);
        let out = denoise(&mut m, x0.clone(), &text(1), Some(&neg), &cfg, |_, _| {}).unwrap();
        assert_eq!(m.calls, 4);
        assert!(m.seen_batches.iter().all(|&b| b == 2));
        assert_eq!(m.seen_guidance[0], Some(vec![6000.0, 6000.0]));
        let s = sigmas_in(4, 7.0, FlowDirection::Reverse);
        let mut want = x0.data().to_vec();
        for i in 0..4 {
            let v: Vec<f32> = want
                .iter()
                .map(|x| {
                    let (p, n) = (0.5 * x + 0.25, 0.5 * x - 0.25);
                    n + 4.0 * (p - n)
                })
                .collect();
            euler_step(&mut want, &v, s[i], s[i + 1]);
        }
        assert_eq!(out.data(), want.as_slice());
        // a scale of 1 is plain conditional sampling: no negative needed, B = 1
        let mut m = Linear::new(0.5, 0.25);
        let one = DenoiseSettings {
            true_cfg: Some(TrueCfg { scale: 1.0 }),
            ..settings()
        };
        denoise(&mut m, x0.clone(), &text(1), None, &one, |_, _| {}).unwrap();
        assert!(m.seen_batches.iter().all(|&b| b == 1));
        // > 1 without a negative prompt is refused
        let err = denoise(
            &mut Linear::new(0.5, 0.25),
            x0,
            &text(1),
            None,
            &cfg,
            |_, _| {},
        )
        .unwrap_err();
        assert!(err.to_string().contains("negative prompt"), "{err}");
    }

    #[test]
    fn nan_latents_stop_with_the_step_number() {
        let x0 = Tensor5::from_vec([1, 1, 1, 1, 2], vec![1.0, -2.0]).unwrap();
        let mut m = Linear::new(0.5, 0.25);
        m.nan_at = Some(3);
        let mut seen = 0;
        let err = denoise(&mut m, x0, &text(1), None, &settings(), |_, _| seen += 1).unwrap_err();
        match err {
            DenoiseError::NonFinite {
                step, steps, bad, ..
            } => {
                assert_eq!((step, steps, bad), (3, 4, 1));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(seen, 2, "steps 1 and 2 completed");
    }

    #[test]
    fn bad_settings_are_refused() {
        let x0 = Tensor5::from_vec([1, 1, 1, 1, 2], vec![1.0, -2.0]).unwrap();
        for (s, setting) in [
            (
                DenoiseSettings {
                    steps: 0,
                    ..settings()
                },
                Setting::Steps,
            ),
            (
                DenoiseSettings {
                    shift: f32::NAN,
                    ..settings()
                },
                Setting::FlowShift,
            ),
        ] {
            let e = denoise(
                &mut Linear::new(1.0, 0.0),
                x0.clone(),
                &text(1),
                None,
                &s,
                |_, _| {},
            );
            match e {
                Err(DenoiseError::Invalid(i)) => assert_eq!(i.setting, setting),
                other => panic!("{other:?}"),
            }
        }
        let e = denoise(
            &mut Linear::new(1.0, 0.0),
            x0,
            &text(2),
            None,
            &settings(),
            |_, _| {},
        );
        assert!(matches!(e, Err(DenoiseError::Batch(_))), "{e:?}");
    }

    #[test]
    fn cropping_keeps_every_valid_token_of_the_longest_prompt() {
        // rows with 2 and 3 valid tokens out of 5
        let t = TextConditioning::new(
            (&[2, 5, 1], (0..10).map(|v| v as f32).collect()),
            (&[2, 5], vec![1, 1, 0, 0, 0, 1, 1, 1, 0, 0]),
            (&[2, 1], vec![0.5, 0.25]),
        )
        .unwrap();
        let c = t.cropped_to_prompts();
        assert_eq!(c.len(), 3);
        assert_eq!(c.embeds(), [0.0, 1.0, 2.0, 5.0, 6.0, 7.0]);
        assert_eq!(c.mask(), [1, 1, 0, 1, 1, 1]);
        assert_eq!(c.pooled(), t.pooled());
        // nothing to drop, and never below one token
        assert_eq!(c.cropped_to_prompts(), c);
        let empty = TextConditioning::new(
            (&[1, 2, 1], vec![0.0; 2]),
            (&[1, 2], vec![0, 0]),
            (&[1, 1], vec![0.0]),
        )
        .unwrap();
        assert_eq!(empty.cropped_to_prompts().len(), 1);
    }

    #[test]
    fn text_conditioning_checks_shapes() {
        let ok = TextConditioning::new(
            (&[1, 2, 3], vec![0.0; 6]),
            (&[1, 2], vec![1, 0]),
            (&[1, 4], vec![0.0; 4]),
        );
        assert!(ok.is_ok());
        let bad_mask = TextConditioning::new(
            (&[1, 2, 3], vec![0.0; 6]),
            (&[1, 3], vec![1, 0, 0]),
            (&[1, 4], vec![0.0; 4]),
        );
        assert!(
            bad_mask
                .unwrap_err()
                .to_string()
                .contains("expected [1, 2]")
        );
        let short = TextConditioning::new(
            (&[1, 2, 3], vec![0.0; 5]),
            (&[1, 2], vec![1, 0]),
            (&[1, 4], vec![0.0; 4]),
        );
        assert!(short.unwrap_err().to_string().contains("5 values"));
    }
}
