//! Optimisation profiles: the min / opt / max shape of every graph input an engine is built for,
//! and their encodings (ONNX Runtime's TensorRT provider options, a stable hash for cache keys).
//!
//! Mirrors NVIDIA demoDiffusion's per-model `get_input_profile` (min/opt/max per input) and the
//! `trt_profile_{min,opt,max}_shapes` options of ONNX Runtime's TensorRT execution provider
//! (`name:d0xd1x..,name2:..`).

use sha2::{Digest, Sha256};

use crate::error::{EngineError, Result};

/// The shape range of one graph input.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InputProfile {
    pub name: String,
    pub min: Vec<usize>,
    pub opt: Vec<usize>,
    pub max: Vec<usize>,
}

/// Which end of the ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProfilePoint {
    Min,
    Opt,
    Max,
}

impl InputProfile {
    /// A validated profile: same rank everywhere, every dimension ≥ 1 and min ≤ opt ≤ max.
    pub fn new(
        name: impl Into<String>,
        min: Vec<usize>,
        opt: Vec<usize>,
        max: Vec<usize>,
    ) -> Result<InputProfile> {
        let name = name.into();
        let bad = |reason: String| EngineError::Profile {
            input: name.clone(),
            reason,
        };
        if min.len() != opt.len() || opt.len() != max.len() {
            return Err(bad(format!(
                "ranks differ: min {min:?}, opt {opt:?}, max {max:?}"
            )));
        }
        for (i, ((a, b), c)) in min.iter().zip(&opt).zip(&max).enumerate() {
            if *a == 0 || a > b || b > c {
                return Err(bad(format!(
                    "dimension {i}: need 1 <= min <= opt <= max, got {a} / {b} / {c}"
                )));
            }
        }
        Ok(InputProfile {
            name,
            min,
            opt,
            max,
        })
    }

    /// A fixed shape (min = opt = max).
    pub fn fixed(name: impl Into<String>, shape: Vec<usize>) -> Result<InputProfile> {
        Self::new(name, shape.clone(), shape.clone(), shape)
    }

    pub fn at(&self, point: ProfilePoint) -> &[usize] {
        match point {
            ProfilePoint::Min => &self.min,
            ProfilePoint::Opt => &self.opt,
            ProfilePoint::Max => &self.max,
        }
    }

    /// Whether `shape` lies inside the range.
    pub fn admits(&self, shape: &[usize]) -> bool {
        shape.len() == self.min.len()
            && shape
                .iter()
                .zip(self.min.iter().zip(&self.max))
                .all(|(d, (lo, hi))| lo <= d && d <= hi)
    }
}

/// `name:d0xd1x..,name2:..` — the TensorRT provider's `trt_profile_*_shapes` value.
pub fn trt_shapes(profiles: &[InputProfile], point: ProfilePoint) -> String {
    profiles
        .iter()
        .map(|p| {
            let dims: Vec<String> = p.at(point).iter().map(|d| d.to_string()).collect();
            format!("{}:{}", p.name, dims.join("x"))
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// A stable hex digest of the profiles (order-independent in input names), for cache keys.
pub fn profile_hash(profiles: &[InputProfile]) -> String {
    let mut sorted: Vec<&InputProfile> = profiles.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut h = Sha256::new();
    for p in sorted {
        for point in [ProfilePoint::Min, ProfilePoint::Opt, ProfilePoint::Max] {
            h.update(trt_shapes(std::slice::from_ref(p), point).as_bytes());
            h.update(b";");
        }
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<InputProfile> {
        vec![
            InputProfile::new(
                "hidden_states",
                vec![1, 16, 1, 68, 68],
                vec![1, 16, 33, 90, 160],
                vec![2, 16, 33, 160, 160],
            )
            .unwrap(),
            InputProfile::new("timestep", vec![1], vec![1], vec![2]).unwrap(),
        ]
    }

    #[test]
    fn trt_option_strings() {
        let p = sample();
        assert_eq!(
            trt_shapes(&p, ProfilePoint::Min),
            "hidden_states:1x16x1x68x68,timestep:1"
        );
        assert_eq!(
            trt_shapes(&p, ProfilePoint::Max),
            "hidden_states:2x16x33x160x160,timestep:2"
        );
    }

    #[test]
    fn hash_is_stable_and_order_independent() {
        let mut p = sample();
        let h = profile_hash(&p);
        assert_eq!(h.len(), 64);
        p.reverse();
        assert_eq!(profile_hash(&p), h);
        p[0] = InputProfile::new("timestep", vec![1], vec![1], vec![4]).unwrap();
        assert_ne!(profile_hash(&p), h);
    }

    #[test]
    fn invalid_ranges_are_refused_with_the_input_name() {
        let e = InputProfile::new("x", vec![2], vec![1], vec![3]).unwrap_err();
        assert!(
            e.to_string().contains("x") && e.to_string().contains("dimension 0"),
            "{e}"
        );
        assert!(InputProfile::new("x", vec![1], vec![1, 2], vec![1]).is_err());
        assert!(InputProfile::new("x", vec![0], vec![1], vec![1]).is_err());
        let p = &sample()[0];
        assert!(p.admits(&[1, 16, 9, 90, 160]));
        assert!(!p.admits(&[3, 16, 9, 90, 160]));
        assert!(!p.admits(&[1, 16, 9, 90]));
    }
}
