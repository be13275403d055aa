//! Flow-matching Euler schedule exactly as diffusers' `HunyuanVideoPipeline` drives
//! `FlowMatchEulerDiscreteScheduler`: σ = linspace(1, 0, N+1)[:-1] (float64, then float32),
//! shifted σ' = s·σ / (1 + (s−1)·σ) in float32, a final 0 appended, timestep = σ'·1000, and the
//! Euler step x ← x + (σ'[i+1] − σ'[i])·v in float32. Pure functions; no state.
//!
//! [`FlowDirection`] is the `--flow-reverse` switch of Tencent's `sample_video.py`
//! (`FlowMatchDiscreteScheduler(reverse=...)`) made explicit: `reverse`, the default, runs σ
//! 1 → 0 as above (diffusers' only mode, and what every published HunyuanVideo command uses);
//! `forward` is Tencent's default without the flag, σ = 1 − σ', running 0 → 1.

/// diffusers' default `num_train_timesteps`.
pub const NUM_TRAIN_TIMESTEPS: f32 = 1000.0;

/// The N + 1 sigmas (last one 0) of an N-step run with shift `shift`.
pub fn sigmas(steps: usize, shift: f32) -> Vec<f32> {
    // numpy.linspace: start + i * step, step = (stop - start) / (num - 1), in float64.
    let step = -1.0 / steps as f64;
    (0..steps)
        .map(|i| {
            let s = (i as f64 * step + 1.0) as f32;
            shift * s / (1.0 + (shift - 1.0) * s)
        })
        .chain(std::iter::once(0.0))
        .collect()
}

/// Direction of the flow-matching integration (`--flow-direction`; Tencent's `--flow-reverse`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowDirection {
    /// t = 1 (noise) → 0 (data): diffusers' pipeline and every published HunyuanVideo command
    /// (Tencent's `--flow-reverse`).
    #[default]
    Reverse,
    /// t = 0 → 1, σ = 1 − σ': Tencent's `sample_video.py` without `--flow-reverse`.
    Forward,
}

impl std::fmt::Display for FlowDirection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FlowDirection::Reverse => "reverse (t = 1 -> 0)",
            FlowDirection::Forward => "forward (t = 0 -> 1)",
        })
    }
}

impl std::str::FromStr for FlowDirection {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "reverse" => Ok(FlowDirection::Reverse),
            "forward" => Ok(FlowDirection::Forward),
            _ => Err(format!("`{s}`: expected reverse or forward")),
        }
    }
}

/// [`sigmas`] in the given direction.
pub fn sigmas_in(steps: usize, shift: f32, direction: FlowDirection) -> Vec<f32> {
    let s = sigmas(steps, shift);
    match direction {
        FlowDirection::Reverse => s,
        FlowDirection::Forward => s.into_iter().map(|v| 1.0 - v).collect(),
    }
}

/// The N timesteps (σ·1000) the transformer sees, for the sigmas of [`sigmas`].
pub fn timesteps(sigmas: &[f32]) -> Vec<f32> {
    sigmas[..sigmas.len().saturating_sub(1)]
        .iter()
        .map(|s| s * NUM_TRAIN_TIMESTEPS)
        .collect()
}

/// One Euler step in place: `x += (σ_next − σ) · v`, as `FlowMatchEulerDiscreteScheduler.step`.
pub fn euler_step(x: &mut [f32], v: &[f32], sigma: f32, sigma_next: f32) {
    let dt = sigma_next - sigma;
    for (xi, vi) in x.iter_mut().zip(v) {
        *xi += dt * vi;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::SafeTensors;

    fn golden(name: &str) -> Vec<f32> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/goldens/scheduler.safetensors"
        );
        let bytes = std::fs::read(path).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let t = st.tensor(name).unwrap();
        t.data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }

    #[test]
    fn sigmas_and_timesteps_match_diffusers_bit_for_bit() {
        for steps in [4, 30, 50] {
            for shift in [7u32, 17] {
                let s = sigmas(steps, shift as f32);
                let want = golden(&format!("sigmas_{steps}_shift{shift}"));
                assert_eq!(s.len(), steps + 1);
                for (i, (a, b)) in s.iter().zip(&want).enumerate() {
                    assert_eq!(
                        a.to_bits(),
                        b.to_bits(),
                        "sigma {i} of {steps} steps, shift {shift}: {a} vs {b}"
                    );
                }
                let t = timesteps(&s);
                let want_t = golden(&format!("timesteps_{steps}_shift{shift}"));
                assert_eq!(t, want_t, "timesteps of {steps} steps, shift {shift}");
            }
        }
    }

    #[test]
    fn forward_direction_is_one_minus_the_reverse_schedule() {
        let r = sigmas_in(4, 7.0, FlowDirection::Reverse);
        let f = sigmas_in(4, 7.0, FlowDirection::Forward);
        assert_eq!(r, sigmas(4, 7.0));
        assert_eq!((r[0], r[4]), (1.0, 0.0));
        assert_eq!((f[0], f[4]), (0.0, 1.0));
        for (a, b) in r.iter().zip(&f) {
            assert_eq!(*b, 1.0 - a);
        }
        assert!(f.windows(2).all(|w| w[1] > w[0]));
        assert_eq!(timesteps(&f)[0], 0.0);
        // 1 -> 0 is the default direction.
        assert_eq!(FlowDirection::default(), FlowDirection::Reverse);
    }

    #[test]
    fn euler_step_moves_by_the_sigma_difference() {
        let mut x = vec![1.0f32, -2.0];
        euler_step(&mut x, &[0.5, 4.0], 0.75, 0.5);
        assert_eq!(x, vec![1.0 - 0.125, -3.0]);
    }
}
