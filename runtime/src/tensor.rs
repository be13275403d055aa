//! A minimal owned 5-D `f32` tensor ([B, C, T, H, W], row-major) with the slicing and copying
//! that tiled decoding needs. Plain loops over contiguous rows; no views, no strides.

use std::ops::Range;

#[derive(Debug, Clone, PartialEq)]
pub struct Tensor5 {
    shape: [usize; 5],
    data: Vec<f32>,
}

#[derive(Debug, thiserror::Error)]
#[error("tensor data has {len} elements but shape {shape:?} needs {expected}")]
pub struct ShapeError {
    pub shape: Vec<usize>,
    pub len: usize,
    pub expected: usize,
}

impl Tensor5 {
    pub fn zeros(shape: [usize; 5]) -> Tensor5 {
        Tensor5 {
            shape,
            data: vec![0.0; shape.iter().product()],
        }
    }

    pub fn from_vec(shape: [usize; 5], data: Vec<f32>) -> Result<Tensor5, ShapeError> {
        let expected: usize = shape.iter().product();
        if expected != data.len() {
            return Err(ShapeError {
                shape: shape.to_vec(),
                len: data.len(),
                expected,
            });
        }
        Ok(Tensor5 { shape, data })
    }

    pub fn shape(&self) -> [usize; 5] {
        self.shape
    }
    pub fn data(&self) -> &[f32] {
        &self.data
    }
    pub fn data_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }
    pub fn into_data(self) -> Vec<f32> {
        self.data
    }
    pub fn frames(&self) -> usize {
        self.shape[2]
    }
    pub fn height(&self) -> usize {
        self.shape[3]
    }
    pub fn width(&self) -> usize {
        self.shape[4]
    }

    #[inline]
    fn offset(&self, b: usize, c: usize, t: usize, y: usize, x: usize) -> usize {
        let [_, cs, ts, hs, ws] = self.shape;
        (((b * cs + c) * ts + t) * hs + y) * ws + x
    }

    /// Copy of the sub-block `t`, `y`, `x` (all batches and channels). Ranges are clamped to the
    /// tensor's extent, as Python slicing is.
    pub fn slice(&self, t: Range<usize>, y: Range<usize>, x: Range<usize>) -> Tensor5 {
        let [bs, cs, ts, hs, ws] = self.shape;
        let t = t.start.min(ts)..t.end.min(ts);
        let y = y.start.min(hs)..y.end.min(hs);
        let x = x.start.min(ws)..x.end.min(ws);
        let shape = [bs, cs, t.len(), y.len(), x.len()];
        let mut data = Vec::with_capacity(shape.iter().product());
        for b in 0..bs {
            for c in 0..cs {
                for tt in t.clone() {
                    for yy in y.clone() {
                        let o = self.offset(b, c, tt, yy, 0);
                        data.extend_from_slice(&self.data[o + x.start..o + x.end]);
                    }
                }
            }
        }
        Tensor5 { shape, data }
    }

    /// Write `src` into this tensor with its origin at (`t0`, `y0`, `x0`); `src` must fit.
    pub fn paste(&mut self, src: &Tensor5, t0: usize, y0: usize, x0: usize) {
        let [bs, cs, ts, hs, ws] = src.shape;
        debug_assert!(bs == self.shape[0] && cs == self.shape[1]);
        debug_assert!(
            t0 + ts <= self.shape[2] && y0 + hs <= self.shape[3] && x0 + ws <= self.shape[4]
        );
        for b in 0..bs {
            for c in 0..cs {
                for t in 0..ts {
                    for y in 0..hs {
                        let s = src.offset(b, c, t, y, 0);
                        let d = self.offset(b, c, t0 + t, y0 + y, x0);
                        self.data[d..d + ws].copy_from_slice(&src.data[s..s + ws]);
                    }
                }
            }
        }
    }

    /// Divide every element by `k` in f32 (in place), as `latents / scaling_factor` does.
    pub fn scale_div(&mut self, k: f32) {
        self.data.iter_mut().for_each(|v| *v /= k);
    }

    /// Element at an index (tests and checks).
    pub fn at(&self, b: usize, c: usize, t: usize, y: usize, x: usize) -> f32 {
        self.data[self.offset(b, c, t, y, x)]
    }

    pub(crate) fn at_mut(&mut self, b: usize, c: usize, t: usize, y: usize, x: usize) -> &mut f32 {
        let o = self.offset(b, c, t, y, x);
        &mut self.data[o]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(shape: [usize; 5]) -> Tensor5 {
        let n = shape.iter().product();
        Tensor5::from_vec(shape, (0..n).map(|i| i as f32).collect()).unwrap()
    }

    #[test]
    fn slice_then_paste_round_trips() {
        let a = ramp([2, 3, 4, 5, 6]);
        let s = a.slice(1..3, 2..9, 1..4);
        assert_eq!(s.shape(), [2, 3, 2, 3, 3]);
        assert_eq!(s.at(1, 2, 1, 2, 2), a.at(1, 2, 2, 4, 3));
        let mut z = Tensor5::zeros(a.shape());
        z.paste(&s, 1, 2, 1);
        assert_eq!(z.at(1, 2, 2, 4, 3), a.at(1, 2, 2, 4, 3));
        assert_eq!(z.at(0, 0, 0, 0, 0), 0.0);
    }

    #[test]
    fn from_vec_checks_length() {
        assert!(Tensor5::from_vec([1, 1, 1, 2, 2], vec![0.0; 3]).is_err());
    }
}
