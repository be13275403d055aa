//! Element types of checkpoint tensors and bit-exact conversions between them.
//!
//! The four float types HunyuanVideo checkpoints ship in (F32, F16, BF16 and the official fp8
//! checkpoint's float8_e4m3fn), parsed from safetensors' dtype strings like candle's
//! `safetensors::Load` does. Conversions mirror PyTorch's CPU casts bit for bit:
//! - widening to f32 is exact for every type;
//! - narrowing (f32 → f16 / bf16 / fp8) rounds to nearest, ties to even;
//! - bf16 NaN becomes the canonical `0x7fc0` (c10's `round_to_nearest_even`);
//! - fp8 e4m3fn has no infinity: `0x7f`/`0xff` are NaN, magnitudes ≥ 480 become NaN on the
//!   way in (c10's `fp8e4m3fn_from_fp32_value`), 448 is the largest finite value.
//!
//! Everything works on little-endian byte slices (the safetensors layout) so it can run
//! directly over a memory map of any alignment, in bounded chunks.

use std::fmt;

/// Element type of a tensor we can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    BF16,
    /// float8_e4m3fn: 1 sign, 4 exponent (bias 7), 3 mantissa bits; no infinities.
    F8E4M3,
}

/// The element type a tensor is converted to when it is written out. Every [`DType`] is a valid
/// target; writing a tensor in its own dtype copies its bytes unchanged.
pub type TargetDType = DType;

impl DType {
    /// All supported dtypes.
    pub const ALL: [DType; 4] = [DType::F32, DType::F16, DType::BF16, DType::F8E4M3];

    /// Parse a safetensors header dtype string (`"F32"`, `"F16"`, `"BF16"`, `"F8_E4M3"`).
    /// Returns `None` for dtypes we do not read (I32, F64, F8_E5M2, ...).
    pub fn from_safetensors(s: &str) -> Option<DType> {
        match s {
            "F32" => Some(DType::F32),
            "F16" => Some(DType::F16),
            "BF16" => Some(DType::BF16),
            "F8_E4M3" => Some(DType::F8E4M3),
            _ => None,
        }
    }

    /// The dtype string safetensors uses in its header.
    pub fn safetensors_name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::F8E4M3 => "F8_E4M3",
        }
    }

    /// Bytes per element.
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::F8E4M3 => 1,
        }
    }

    /// The ONNX `TensorProto.DataType` code of this element type
    /// (FLOAT = 1, FLOAT16 = 10, BFLOAT16 = 16, FLOAT8E4M3FN = 17).
    pub fn onnx_code(self) -> i32 {
        match self {
            DType::F32 => 1,
            DType::F16 => 10,
            DType::BF16 => 16,
            DType::F8E4M3 => 17,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.safetensors_name())
    }
}

// ---------------------------------------------------------------------------------------------
// Scalar conversions
// ---------------------------------------------------------------------------------------------

/// Decode one float8_e4m3fn byte exactly (const so the lookup table is built at compile time).
pub const fn f8e4m3_to_f32(byte: u8) -> f32 {
    let sign = ((byte as u32) & 0x80) << 24;
    let exp = ((byte >> 3) & 0x0f) as u32;
    let man = (byte & 0x07) as u32;
    if exp == 0x0f && man == 0x07 {
        // 0x7f / 0xff: the only NaN encodings (e4m3fn has no infinities).
        return f32::from_bits(sign | 0x7fc0_0000);
    }
    let bits = if exp == 0 {
        if man == 0 {
            0
        } else {
            // Subnormal: man * 2^-9. Normalise: shift the mantissa until its top bit is the
            // implicit one (bit 3), lowering the exponent once per shift.
            let mut m = man;
            let mut e: u32 = 127 - 6; // exponent of 2^-6 (the smallest normal) in f32 bias
            while m & 0x08 == 0 {
                m <<= 1;
                e -= 1;
            }
            (e << 23) | ((m & 0x07) << 20)
        }
    } else {
        ((exp + 127 - 7) << 23) | (man << 20)
    };
    f32::from_bits(sign | bits)
}

/// All 256 float8_e4m3fn values as f32.
pub static F8E4M3_TO_F32: [f32; 256] = {
    let mut table = [0.0f32; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = f8e4m3_to_f32(i as u8);
        i += 1;
    }
    table
};

/// Round an f32 to float8_e4m3fn as PyTorch does (`c10::detail::fp8e4m3fn_from_fp32_value`):
/// round to nearest even; magnitudes ≥ 480 (and NaN, ±inf) become NaN (`0x7f`, with sign).
pub fn f32_to_f8e4m3(value: f32) -> u8 {
    const FP8_MAX: u32 = 1087 << 20; // 480.0: first value that rounds past 448
    const DENORM_MASK: u32 = 141 << 23;
    let mut bits = value.to_bits();
    let sign = bits & 0x8000_0000;
    bits ^= sign;
    let result: u8 = if bits >= FP8_MAX {
        0x7f
    } else if bits < (121 << 23) {
        // Below 2^-6 (smallest normal): let the FPU round by adding a magic constant whose
        // ulp is the fp8 subnormal step 2^-9.
        let sum = (f32::from_bits(bits) + f32::from_bits(DENORM_MASK)).to_bits();
        (sum - DENORM_MASK) as u8
    } else {
        let mant_odd = (bits >> 20) & 1;
        let rebias = ((7u32.wrapping_sub(127)) << 23).wrapping_add(0x7ffff);
        bits = bits.wrapping_add(rebias).wrapping_add(mant_odd);
        (bits >> 20) as u8
    };
    result | (sign >> 24) as u8
}

/// bf16 bits → f32 (exact).
#[inline]
pub fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// f32 → bf16 bits, round to nearest even; NaN → `0x7fc0` (PyTorch's
/// `c10::detail::round_to_nearest_even`).
#[inline]
pub fn f32_to_bf16(value: f32) -> u16 {
    if value.is_nan() {
        return 0x7fc0;
    }
    let bits = value.to_bits();
    let rounding_bias = 0x7fff + ((bits >> 16) & 1);
    (bits.wrapping_add(rounding_bias) >> 16) as u16
}

/// f16 bits → f32 (exact).
#[inline]
pub fn f16_to_f32(bits: u16) -> f32 {
    half::f16::from_bits(bits).to_f32()
}

/// f32 → f16 bits, round to nearest even, overflow to ±inf (IEEE `convert`, as torch).
#[inline]
pub fn f32_to_f16(value: f32) -> u16 {
    half::f16::from_f32(value).to_bits()
}

/// Round `value` to `dtype` and back to f32 (used to mirror reference code that casts a scalar
/// to the compute dtype before using it).
pub fn round_through(value: f32, dtype: DType) -> f32 {
    match dtype {
        DType::F32 => value,
        DType::F16 => f16_to_f32(f32_to_f16(value)),
        DType::BF16 => bf16_to_f32(f32_to_bf16(value)),
        DType::F8E4M3 => F8E4M3_TO_F32[f32_to_f8e4m3(value) as usize],
    }
}

// ---------------------------------------------------------------------------------------------
// Slice conversions (little-endian bytes <-> f32)
// ---------------------------------------------------------------------------------------------

/// Decode little-endian `src` bytes of `dtype` into `dst` (`dst.len()` elements). `src` must be
/// exactly `dst.len() * dtype.size_in_bytes()` long; any alignment is fine.
pub fn decode_to_f32(dtype: DType, src: &[u8], dst: &mut [f32]) {
    debug_assert_eq!(src.len(), dst.len() * dtype.size_in_bytes());
    match dtype {
        DType::F32 => {
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *d = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
            }
        }
        DType::F16 => {
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = f16_to_f32(u16::from_le_bytes([s[0], s[1]]));
            }
        }
        DType::BF16 => {
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = bf16_to_f32(u16::from_le_bytes([s[0], s[1]]));
            }
        }
        DType::F8E4M3 => {
            for (d, &s) in dst.iter_mut().zip(src) {
                *d = F8E4M3_TO_F32[s as usize];
            }
        }
    }
}

/// Encode `src` as little-endian `dtype` bytes appended to `dst`.
pub fn encode_from_f32(dtype: DType, src: &[f32], dst: &mut Vec<u8>) {
    dst.reserve(src.len() * dtype.size_in_bytes());
    match dtype {
        DType::F32 => {
            for &v in src {
                dst.extend_from_slice(&v.to_le_bytes());
            }
        }
        DType::F16 => {
            for &v in src {
                dst.extend_from_slice(&f32_to_f16(v).to_le_bytes());
            }
        }
        DType::BF16 => {
            for &v in src {
                dst.extend_from_slice(&f32_to_bf16(v).to_le_bytes());
            }
        }
        DType::F8E4M3 => dst.extend(src.iter().map(|&v| f32_to_f8e4m3(v))),
    }
}

/// Decode a whole little-endian byte slice of `dtype` into a new `Vec<f32>`.
pub fn bytes_to_f32_vec(dtype: DType, src: &[u8]) -> Vec<f32> {
    let n = src.len() / dtype.size_in_bytes();
    let mut out = vec![0.0f32; n];
    decode_to_f32(dtype, &src[..n * dtype.size_in_bytes()], &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_safetensors_names() {
        for d in DType::ALL {
            assert_eq!(DType::from_safetensors(d.safetensors_name()), Some(d));
        }
        for other in ["I32", "F64", "F8_E5M2", "BOOL", "I64", "f32", ""] {
            assert_eq!(DType::from_safetensors(other), None, "{other}");
        }
        assert_eq!(DType::F8E4M3.size_in_bytes(), 1);
        assert_eq!(DType::BF16.size_in_bytes(), 2);
        assert_eq!(DType::F32.onnx_code(), 1);
        assert_eq!(DType::F8E4M3.onnx_code(), 17);
    }

    #[test]
    fn fp8_e4m3fn_decoding_is_exact() {
        assert_eq!(F8E4M3_TO_F32[0x7e], 448.0);
        assert_eq!(F8E4M3_TO_F32[0xfe], -448.0);
        assert_eq!(F8E4M3_TO_F32[0x01], 2f32.powi(-9));
        assert_eq!(F8E4M3_TO_F32[0x07], 7.0 * 2f32.powi(-9));
        assert_eq!(F8E4M3_TO_F32[0x08], 2f32.powi(-6)); // smallest normal
        assert_eq!(F8E4M3_TO_F32[0x38], 1.0);
        assert_eq!(F8E4M3_TO_F32[0x39], 1.125);
        assert_eq!(F8E4M3_TO_F32[0x78], 256.0);
        assert_eq!(F8E4M3_TO_F32[0x77], 240.0); // exp 14, man 7: 1.875 * 2^7
        assert_eq!(F8E4M3_TO_F32[0x00].to_bits(), 0);
        assert_eq!(F8E4M3_TO_F32[0x80].to_bits(), 0x8000_0000); // -0
        assert!(F8E4M3_TO_F32[0x7f].is_nan());
        assert!(F8E4M3_TO_F32[0xff].is_nan());
        // No infinities and no other NaNs.
        for b in 0..=255u8 {
            let v = F8E4M3_TO_F32[b as usize];
            assert!(!v.is_infinite(), "{b:#x}");
            assert_eq!(v.is_nan(), b & 0x7f == 0x7f, "{b:#x}");
        }
        // Reference formula for every byte.
        for b in 0..=255u8 {
            if b & 0x7f == 0x7f {
                continue;
            }
            let s = if b & 0x80 != 0 { -1.0f64 } else { 1.0 };
            let e = ((b >> 3) & 0xf) as i32;
            let m = (b & 7) as f64;
            let v = if e == 0 {
                s * m / 8.0 * 2f64.powi(-6)
            } else {
                s * (1.0 + m / 8.0) * 2f64.powi(e - 7)
            };
            assert_eq!(F8E4M3_TO_F32[b as usize] as f64, v, "{b:#x}");
        }
    }

    #[test]
    fn fp8_e4m3fn_encoding_round_trips_and_rounds_to_even() {
        for b in 0..=255u8 {
            if b & 0x7f == 0x7f {
                continue;
            }
            let v = F8E4M3_TO_F32[b as usize];
            assert_eq!(f32_to_f8e4m3(v), b, "{b:#x} = {v}");
        }
        // 1.0625 lies halfway between 1.0 (0x38, even) and 1.125 (0x39): ties to even.
        assert_eq!(f32_to_f8e4m3(1.0625), 0x38);
        // 1.1875 lies halfway between 1.125 (odd) and 1.25 (0x3a, even).
        assert_eq!(f32_to_f8e4m3(1.1875), 0x3a);
        assert_eq!(f32_to_f8e4m3(1.07), 0x39);
        // Subnormal tie: 1.5 * 2^-9 between 0x01 (odd) and 0x02 (even).
        assert_eq!(f32_to_f8e4m3(1.5 * 2f32.powi(-9)), 0x02);
        assert_eq!(f32_to_f8e4m3(0.5 * 2f32.powi(-9)), 0x00); // tie to zero (even)
        assert_eq!(f32_to_f8e4m3(-0.0), 0x80);
        // Saturation behaviour of torch: [448, 464] -> 448, >= 480 -> NaN.
        assert_eq!(f32_to_f8e4m3(460.0), 0x7e);
        assert_eq!(f32_to_f8e4m3(464.0), 0x7e);
        assert_eq!(f32_to_f8e4m3(480.0), 0x7f);
        assert_eq!(f32_to_f8e4m3(-1e9), 0xff);
        assert_eq!(f32_to_f8e4m3(f32::INFINITY), 0x7f);
        assert_eq!(f32_to_f8e4m3(f32::NAN) & 0x7f, 0x7f);
    }

    #[test]
    fn bf16_rounds_ties_to_even_like_torch() {
        // 1 + 2^-8 is exactly halfway between bf16 1.0 (0x3f80, even) and 1+2^-7 (0x3f81).
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f80_8000)), 0x3f80);
        // Halfway between 0x3f81 (odd) and 0x3f82 (even) -> up.
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f81_8000)), 0x3f82);
        // Just above halfway rounds up, just below rounds down.
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f80_8001)), 0x3f81);
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f80_7fff)), 0x3f80);
        // Rounds into infinity like torch; infinities and NaN.
        assert_eq!(f32_to_bf16(f32::MAX), 0x7f80);
        assert_eq!(f32_to_bf16(f32::NEG_INFINITY), 0xff80);
        assert_eq!(f32_to_bf16(f32::NAN), 0x7fc0);
        assert_eq!(f32_to_bf16(-f32::NAN), 0x7fc0);
        assert_eq!(bf16_to_f32(0x3f80), 1.0);
        assert_eq!(bf16_to_f32(0xc040), -3.0);
    }

    #[test]
    fn f16_rounds_ties_to_even() {
        // 1 + 2^-11 halfway between 1.0 (0x3c00) and 1 + 2^-10 (0x3c01).
        assert_eq!(f32_to_f16(1.0 + 2f32.powi(-11)), 0x3c00);
        assert_eq!(f32_to_f16(1.0 + 3.0 * 2f32.powi(-11)), 0x3c02);
        assert_eq!(f32_to_f16(65520.0), 0x7c00); // rounds to inf
        assert_eq!(f32_to_f16(65519.0), 0x7bff);
        assert_eq!(f32_to_f16(2f32.powi(-24)), 0x0001);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0xc000), -2.0);
    }

    #[test]
    fn slice_conversions_round_trip() {
        let values = [0.0f32, -1.5, 3.25, 448.0, 2f32.powi(-9), -0.0];
        for d in DType::ALL {
            let mut bytes = Vec::new();
            encode_from_f32(d, &values, &mut bytes);
            assert_eq!(bytes.len(), values.len() * d.size_in_bytes());
            let back = bytes_to_f32_vec(d, &bytes);
            for (a, b) in values.iter().zip(&back) {
                assert_eq!(a.to_bits(), b.to_bits(), "{d}: {a} -> {b}");
            }
        }
        // Unaligned source slices decode fine.
        let mut bytes = vec![0u8];
        encode_from_f32(DType::F32, &[1.0, 2.0], &mut bytes);
        assert_eq!(bytes_to_f32_vec(DType::F32, &bytes[1..]), vec![1.0, 2.0]);
        assert_eq!(round_through(1.0 + 2f32.powi(-9), DType::BF16), 1.0);
        assert_eq!(round_through(0.3, DType::F32), 0.3);
    }
}
