//! Seeded noise exactly as PyTorch draws it on the CPU, so that `--seed S` gives the initial
//! latents diffusers gets from `randn_tensor(shape, generator=torch.Generator("cpu")
//! .manual_seed(S), dtype=torch.float32)`.
//!
//! Mirrors, in pure Rust:
//! - `at::mt19937` (ATen/core/MT19937RNGEngine.h) and `at::CPUGeneratorImpl`
//!   (ATen/CPUGeneratorImpl.cpp): a 32-bit Mersenne Twister seeded with the low 32 bits of the
//!   seed; `random()` is one draw, `random64()` is `(first << 32) | second`.
//! - `at::uniform_real_distribution` (ATen/core/DistributionsHelper.h, TransformationHelper.h):
//!   float32 = the low 24 bits of one `random()` times 2⁻²⁴; float64 = the low 53 bits of one
//!   `random64()` times 2⁻⁵³. This is `torch.rand`.
//! - `normal_kernel` / `normal_fill` (ATen/native/cpu/DistributionTemplates.h), which is
//!   `torch.randn`. For a float32 tensor of at least 16 elements: fill the buffer with float32
//!   uniforms, then Box–Muller in place on each block of 16 (`u1 = 1 − d[j]`, `u2 = d[j+8]`,
//!   `d[j] = √(−2 ln u1)·cos 2πu2`, `d[j+8] = √(−2 ln u1)·sin 2πu2`, j < 8); when the size is
//!   not a multiple of 16 the last 16 elements are refilled with fresh uniforms and transformed
//!   again. Below 16 elements each value is `at::normal_distribution<double>`: two float64
//!   uniforms u1, u2, `r = √(−2 log1p(−u2))`, θ = 2πu1, return `r cos θ` and cache `r sin θ`
//!   in the generator for the next value, rounded to float32.
//! - On x86-64 torch runs the 16-block transform with AVX2 and the Cephes-derived
//!   `log256_ps`/`sincos256_ps` of ATen/native/cpu/avx_mathfun.h, built by GCC with `-mfma`,
//!   which fuses each product into the add or subtract that consumes it. `cephes_log` and
//!   `cephes_sincos` evaluate the same polynomials in the same order with the same fusions,
//!   lane by lane, and reproduce those builds bit for bit. Other torch builds (aarch64, no AVX2)
//!   use libm `logf`/`sinf`/`cosf` and compute θ in float64, and differ from these by a few
//!   ulp — or by more near a zero of sin/cos, where a 1-ulp change of θ is a large relative
//!   change of the result.

use crate::tensor::{ShapeError, Tensor5};

const MT_N: usize = 624;
const MT_M: usize = 397;
const MT_MATRIX_A: u32 = 0x9908_b0df;
const MT_UPPER: u32 = 0x8000_0000;
const MT_LOWER: u32 = 0x7fff_ffff;

/// Block size of torch's vectorised normal fill; smaller tensors use the scalar path.
const BLOCK: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum NoiseError {
    #[error("noise shape {shape:?} has too many elements")]
    TooLarge { shape: Vec<usize> },
    #[error(transparent)]
    Shape(#[from] ShapeError),
}

/// PyTorch's CPU generator (`torch.Generator("cpu").manual_seed(seed)`): the Mersenne-Twister
/// stream plus the cached second Box–Muller sample of the scalar normal path.
#[derive(Clone)]
pub struct TorchGenerator {
    seed: u64,
    state: [u32; MT_N],
    /// Index of the next state word to temper; `MT_N` means "regenerate first".
    next: usize,
    next_double_normal: Option<f64>,
}

impl std::fmt::Debug for TorchGenerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TorchGenerator")
            .field("seed", &self.seed)
            .field("next", &self.next)
            .field("next_double_normal", &self.next_double_normal)
            .finish_non_exhaustive()
    }
}

impl TorchGenerator {
    /// A generator in the state `manual_seed(seed)` leaves it in. Only the low 32 bits of the
    /// seed reach the Mersenne Twister, as in torch.
    pub fn new(seed: u64) -> TorchGenerator {
        let mut state = [0u32; MT_N];
        state[0] = seed as u32;
        for i in 1..MT_N {
            let prev = state[i - 1];
            state[i] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(i as u32);
        }
        TorchGenerator {
            seed,
            state,
            next: MT_N,
            next_double_normal: None,
        }
    }

    /// The seed this generator was created with (`Generator.initial_seed()`).
    pub fn seed(&self) -> u64 {
        self.seed
    }

    fn regenerate(&mut self) {
        let twist = |upper: u32, lower: u32| {
            let mixed = (upper & MT_UPPER) | (lower & MT_LOWER);
            (mixed >> 1) ^ if lower & 1 == 1 { MT_MATRIX_A } else { 0 }
        };
        for i in 0..MT_N {
            let t = twist(self.state[i], self.state[(i + 1) % MT_N]);
            self.state[i] = self.state[(i + MT_M) % MT_N] ^ t;
        }
        self.next = 0;
    }

    /// One 32-bit draw (`CPUGeneratorImpl::random`).
    pub fn random_u32(&mut self) -> u32 {
        if self.next >= MT_N {
            self.regenerate();
        }
        let mut y = self.state[self.next];
        self.next += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// Two 32-bit draws, the first in the high half (`CPUGeneratorImpl::random64`).
    pub fn random_u64(&mut self) -> u64 {
        let hi = self.random_u32() as u64;
        let lo = self.random_u32() as u64;
        (hi << 32) | lo
    }

    /// A float32 uniform in [0, 1): the low 24 bits of one draw times 2⁻²⁴ (exact).
    pub fn uniform_f32(&mut self) -> f32 {
        (self.random_u32() & 0x00ff_ffff) as f32 * (1.0 / 16_777_216.0)
    }

    /// A float64 uniform in [0, 1): the low 53 bits of one 64-bit draw times 2⁻⁵³ (exact).
    pub fn uniform_f64(&mut self) -> f64 {
        (self.random_u64() & ((1u64 << 53) - 1)) as f64 * (1.0 / 9_007_199_254_740_992.0)
    }

    /// One standard normal from `at::normal_distribution<double>`: Box–Muller on two float64
    /// uniforms, returning the cosine sample and caching the sine sample for the next call.
    pub fn normal_f64(&mut self) -> f64 {
        if let Some(cached) = self.next_double_normal.take() {
            return cached;
        }
        let u1 = self.uniform_f64();
        let u2 = self.uniform_f64();
        let r = (-2.0 * (-u2).ln_1p()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * u1;
        self.next_double_normal = Some(r * theta.sin());
        r * theta.cos()
    }

    /// `torch.rand` into `out` (row-major), continuing this generator's stream.
    pub fn fill_rand(&mut self, out: &mut [f32]) {
        for x in out {
            *x = self.uniform_f32();
        }
    }

    /// `torch.randn` (float32, contiguous) into `out`, continuing this generator's stream.
    pub fn fill_randn(&mut self, out: &mut [f32]) {
        let n = out.len();
        if n < BLOCK {
            for x in out {
                *x = self.normal_f64() as f32;
            }
            return;
        }
        self.fill_rand(out);
        for block in out.chunks_exact_mut(BLOCK) {
            box_muller_16(block);
        }
        if !n.is_multiple_of(BLOCK) {
            let tail = &mut out[n - BLOCK..];
            self.fill_rand(tail);
            box_muller_16(tail);
        }
    }
}

/// `numel` float32 uniforms in [0, 1): `torch.rand(numel, generator=manual_seed(seed))`.
pub fn rand(numel: usize, seed: u64) -> Vec<f32> {
    let mut out = vec![0.0; numel];
    TorchGenerator::new(seed).fill_rand(&mut out);
    out
}

/// `numel` float32 standard normals: `torch.randn(numel, generator=manual_seed(seed))`. The
/// values depend only on the element count, not on how it is shaped.
pub fn randn(numel: usize, seed: u64) -> Vec<f32> {
    let mut out = vec![0.0; numel];
    TorchGenerator::new(seed).fill_randn(&mut out);
    out
}

/// The initial latents diffusers draws for `shape` ([B, C, T, H, W]) and `seed` with one CPU
/// generator (`randn_tensor(shape, generator=torch.Generator("cpu").manual_seed(seed))`; the
/// whole batch comes from one draw).
pub fn randn_latents(shape: [usize; 5], seed: u64) -> Result<Tensor5, NoiseError> {
    let numel = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= isize::MAX as usize / std::mem::size_of::<f32>())
        .ok_or_else(|| NoiseError::TooLarge {
            shape: shape.to_vec(),
        })?;
    Ok(Tensor5::from_vec(shape, randn(numel, seed))?)
}

/// torch's `normal_fill_16` on one block of 16 uniforms (mean 0, std 1), as its AVX2 kernel
/// computes it: θ = (float)2π · u2 in float32, radius = √(−2·log u1), and the final
/// `fmadd(n, std, mean)`, which only turns −0 into +0.
fn box_muller_16(block: &mut [f32]) {
    const TWO_PI: f32 = (2.0 * std::f64::consts::PI) as f32;
    let (lo, hi) = block.split_at_mut(BLOCK / 2);
    for (a, b) in lo.iter_mut().zip(hi.iter_mut()) {
        let u1 = 1.0 - *a;
        let u2 = *b;
        let radius = (-2.0 * cephes_log(u1)).sqrt();
        let (sin, cos) = cephes_sincos(TWO_PI * u2);
        *a = (radius * cos).mul_add(1.0, 0.0);
        *b = (radius * sin).mul_add(1.0, 0.0);
    }
}

/// A Cephes constant as avx_mathfun.h declares it: a C double literal stored in a float.
const fn c(x: f64) -> f32 {
    x as f32
}

/// One lane of avx_mathfun's `log256_ps` (Cephes `logf`) for x > 0, with GCC's contractions:
/// `p·x + c` steps, `y·z + e·q1` (the first product fused), `y − z·0.5`, and
/// `(x + y) + e·q2` each become one fused multiply-add.
#[allow(clippy::excessive_precision)] // upstream's decimal literals, kept as written
fn cephes_log(x: f32) -> f32 {
    const SQRTHF: f32 = c(std::f64::consts::FRAC_1_SQRT_2);
    const P: [f32; 9] = [
        c(7.0376836292E-2),
        c(-1.1514610310E-1),
        c(1.1676998740E-1),
        c(-1.2420140846E-1),
        c(1.4249322787E-1),
        c(-1.6668057665E-1),
        c(2.0000714765E-1),
        c(-2.4999993993E-1),
        c(3.3333331174E-1),
    ];
    const Q1: f32 = c(-2.12194440e-4);
    const Q2: f32 = c(0.693359375);

    // Split into a mantissa in [0.5, 1) and an exponent (denormals are cut off).
    let bits = x.max(f32::MIN_POSITIVE).to_bits();
    let mut e = ((bits >> 23) as i32 - 0x7f) as f32 + 1.0;
    let m = f32::from_bits((bits & !0x7f80_0000) | 0.5f32.to_bits());
    // if m < √½: e −= 1, x = m + m − 1, else x = m − 1 (computed as (m − 1) + m or + 0).
    let small = m < SQRTHF;
    if small {
        e -= 1.0;
    }
    let x = (m - 1.0) + if small { m } else { 0.0 };

    let z = x * x;
    let mut y = P[0];
    for &p in &P[1..] {
        y = y.mul_add(x, p);
    }
    y *= x;
    y = y.mul_add(z, e * Q1);
    y = (-z).mul_add(0.5, y);
    e.mul_add(Q2, x + y)
}

/// One lane of avx_mathfun's `sincos256_ps` (Cephes `sinf`/`cosf` with a shared reduction),
/// returning (sin, cos), with GCC's contractions: the three-step reduction
/// `x + y·(−DP_k)`, the `·z + c` polynomial steps, `y·z − z·0.5` (the first product fused) and
/// `y2·x + x` each become one fused multiply-add.
#[allow(clippy::excessive_precision)] // upstream's decimal literals, kept as written
fn cephes_sincos(x: f32) -> (f32, f32) {
    const FOPI: f32 = c(1.27323954473516);
    const MINUS_DP1: f32 = c(-0.78515625);
    const MINUS_DP2: f32 = c(-2.4187564849853515625e-4);
    const MINUS_DP3: f32 = c(-3.77489497744594108e-8);
    const SINCOF: [f32; 3] = [c(-1.9515295891E-4), c(8.3321608736E-3), c(-1.6666654611E-1)];
    const COSCOF: [f32; 3] = [
        c(2.443315711809948E-005),
        c(-1.388731625493765E-003),
        c(4.166664568298827E-002),
    ];
    const SIGN: u32 = 0x8000_0000;

    let mut sign_sin = x.to_bits() & SIGN;
    let ax = x.abs();
    // Octant j = (trunc(|x|·4/π) + 1) & !1, as a 32-bit integer (cvttps).
    let j = ((ax * FOPI) as i32).wrapping_add(1) & !1;
    let yj = j as f32;
    sign_sin ^= ((j & 4) as u32) << 29;
    let sign_cos = ((!j.wrapping_sub(2) & 4) as u32) << 29;
    let sin_poly_first = j & 2 == 0;

    // Extended-precision reduction x − j·π/4.
    let mut x = yj.mul_add(MINUS_DP1, ax);
    x = yj.mul_add(MINUS_DP2, x);
    x = yj.mul_add(MINUS_DP3, x);

    let z = x * x;
    // cos polynomial on [0, π/4].
    let mut yc = COSCOF[0].mul_add(z, COSCOF[1]);
    yc = yc.mul_add(z, COSCOF[2]);
    yc *= z;
    yc = yc.mul_add(z, -(z * 0.5));
    yc += 1.0;
    // sin polynomial on [0, π/4].
    let mut ys = SINCOF[0].mul_add(z, SINCOF[1]);
    ys = ys.mul_add(z, SINCOF[2]);
    ys *= z;
    ys = ys.mul_add(x, x);

    // The masked select, with its adds of zero, as the vector code does it.
    let (sin_part, cos_part) = if sin_poly_first { (ys, 0.0) } else { (0.0, yc) };
    let s = cos_part + sin_part;
    let c = (yc - cos_part) + (ys - sin_part);
    (
        f32::from_bits(s.to_bits() ^ sign_sin),
        f32::from_bits(c.to_bits() ^ sign_cos),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::SafeTensors;

    const SEEDS: [u64; 3] = [0, 42, 1234];

    fn golden(file: &str, name: &str) -> (Vec<usize>, Vec<f32>) {
        let path = format!(
            "{}/../tests/fixtures/goldens/{file}.safetensors",
            env!("CARGO_MANIFEST_DIR")
        );
        let bytes = std::fs::read(path).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let t = st.tensor(name).unwrap();
        assert_eq!(t.dtype(), safetensors::Dtype::F32, "{name}");
        let data = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        (t.shape().to_vec(), data)
    }

    /// Distance in units in the last place between two finite floats (across zero too).
    fn ulps(a: f32, b: f32) -> u64 {
        let key = |x: f32| {
            let m = (x.to_bits() & 0x7fff_ffff) as i64;
            if x.is_sign_negative() { -m } else { m }
        };
        (key(a) - key(b)).unsigned_abs()
    }

    /// (bit-identical count, max ulp distance); panics on a length mismatch.
    fn compare(got: &[f32], want: &[f32]) -> (usize, u64) {
        assert_eq!(got.len(), want.len());
        let same = got
            .iter()
            .zip(want)
            .filter(|(a, b)| a.to_bits() == b.to_bits())
            .count();
        let worst = got.iter().zip(want).map(|(a, b)| ulps(*a, *b)).max();
        (same, worst.unwrap_or(0))
    }

    #[test]
    fn mersenne_twister_matches_the_reference_stream() {
        // C++ [rand.predef]: the 10000th output of a default-seeded (5489) mt19937 is 4123659995.
        let mut g = TorchGenerator::new(5489);
        let mut last = 0;
        for _ in 0..10_000 {
            last = g.random_u32();
        }
        assert_eq!(last, 4_123_659_995);
        // Only the low 32 bits of the seed matter, as in at::mt19937.
        let mut a = TorchGenerator::new(7);
        let mut b = TorchGenerator::new(7 + (1 << 32));
        assert_eq!(a.random_u64(), b.random_u64());
        assert_eq!(b.seed(), 7 + (1 << 32));
    }

    #[test]
    fn random64_is_two_draws_high_first() {
        let mut a = TorchGenerator::new(3);
        let mut b = TorchGenerator::new(3);
        let hi = a.random_u32() as u64;
        let lo = a.random_u32() as u64;
        assert_eq!(b.random_u64(), (hi << 32) | lo);
    }

    #[test]
    fn uniforms_match_torch_rand_bit_for_bit() {
        for seed in SEEDS {
            for n in [7usize, 17, 1000] {
                let (shape, want) = golden("randn", &format!("rand_{seed}_{n}"));
                assert_eq!(shape, [n]);
                let got = rand(n, seed);
                let (same, worst) = compare(&got, &want);
                eprintln!("rand seed {seed} n {n}: {same}/{n} bit-identical");
                assert_eq!(same, n, "rand seed {seed} n {n}: max {worst} ulp");
            }
        }
    }

    #[test]
    fn normals_match_torch_randn_within_4_ulp() {
        let shapes: [&[usize]; 5] = [&[7], &[16], &[17], &[1, 4, 3, 4, 6], &[2, 3, 5, 7, 11]];
        let (mut total, mut total_same) = (0, 0);
        for seed in SEEDS {
            for shape in shapes {
                let name = shape
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join("x");
                let (gshape, want) = golden("randn", &format!("randn_{seed}_{name}"));
                assert_eq!(gshape, shape);
                let n = shape.iter().product();
                let got = randn(n, seed);
                let (same, worst) = compare(&got, &want);
                eprintln!(
                    "randn seed {seed} shape {name}: {same}/{n} bit-identical, max {worst} ulp"
                );
                assert!(worst <= 4, "randn seed {seed} shape {name}: {worst} ulp");
                total += n;
                total_same += same;
            }
        }
        eprintln!("randn: {total_same}/{total} bit-identical overall");
    }

    #[test]
    fn pipeline_init_latents_are_the_seed_42_draw() {
        let (shape, want) = golden("pipeline", "init_latents");
        assert_eq!(shape, [1, 4, 3, 4, 6]);
        let got = randn_latents([1, 4, 3, 4, 6], 42).unwrap();
        assert_eq!(got.shape(), [1, 4, 3, 4, 6]);
        let (same, worst) = compare(got.data(), &want);
        eprintln!(
            "init_latents: {same}/{} bit-identical, max {worst} ulp",
            want.len()
        );
        assert!(worst <= 4, "init_latents: {worst} ulp");
    }

    #[test]
    fn scalar_path_caches_the_sine_sample() {
        // Sizes below 16: values come in (cos, sin) pairs of one Box–Muller draw, and an odd
        // count leaves the sine cached in the generator.
        let mut g = TorchGenerator::new(42);
        let u1 = g.uniform_f64();
        let u2 = g.uniform_f64();
        let r = (-2.0 * (1.0 - u2).ln()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * u1;
        let two = randn(2, 42);
        assert!((two[0] as f64 - r * theta.cos()).abs() < 1e-6);
        assert!((two[1] as f64 - r * theta.sin()).abs() < 1e-6);
        let mut g = TorchGenerator::new(42);
        let mut three = [0.0f32; 3];
        g.fill_randn(&mut three);
        assert_eq!(&three[..2], &two[..]);
        assert!(g.next_double_normal.is_some());
        assert!(randn(0, 42).is_empty());
    }

    #[test]
    fn tail_block_is_redrawn_from_fresh_uniforms() {
        // 17 elements: one block from uniforms 0..16, then elements 1..17 are replaced by a
        // block made from uniforms 17..33, so element 0 is the only survivor of the first.
        let n17 = randn(17, 1234);
        let n16 = randn(16, 1234);
        assert_eq!(n17[0].to_bits(), n16[0].to_bits());
        let mut g = TorchGenerator::new(1234);
        let mut skip = [0.0f32; 17];
        g.fill_rand(&mut skip);
        let mut tail = [0.0f32; 16];
        g.fill_rand(&mut tail);
        box_muller_16(&mut tail);
        assert_eq!(&n17[1..], &tail[..]);
    }

    #[test]
    fn cephes_functions_are_accurate_over_the_sampled_ranges() {
        // log on (0, 1] (u1 = 1 − u ≥ 2⁻²⁴) and sin/cos on [0, 2π): all u these kernels see.
        let mut worst_log = 0.0f64;
        let mut worst_trig = 0.0f64;
        for k in 0..=(1u32 << 16) {
            let u = (k << 8) as f32 / 16_777_216.0;
            let u1 = 1.0 - u.min(1.0 - 1.0 / 16_777_216.0);
            let want = (u1 as f64).ln();
            let err = (cephes_log(u1) as f64 - want).abs() / want.abs().max(1e-30);
            if u1 < 1.0 {
                worst_log = worst_log.max(err);
            } else {
                assert_eq!(cephes_log(u1), 0.0);
            }
            let theta = (2.0 * std::f64::consts::PI) as f32 * u;
            let (s, c) = cephes_sincos(theta);
            let t = theta as f64;
            worst_trig = worst_trig
                .max((s as f64 - t.sin()).abs())
                .max((c as f64 - t.cos()).abs());
        }
        assert!(worst_log < 3e-7, "log relative error {worst_log}");
        assert!(worst_trig < 2e-7, "sin/cos absolute error {worst_trig}");
        assert_eq!(cephes_sincos(0.0), (0.0, 1.0));
    }

    #[test]
    fn oversized_shapes_are_an_error_not_a_panic() {
        let huge = usize::MAX / 2;
        assert!(matches!(
            randn_latents([huge, 4, 1, 1, 1], 0),
            Err(NoiseError::TooLarge { .. })
        ));
        let ok = randn_latents([1, 1, 1, 2, 3], 0).unwrap();
        assert_eq!(ok.data(), &randn(6, 0)[..]);
    }
}
