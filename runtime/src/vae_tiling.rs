//! Tiled VAE decoding: frame-wise temporal tiles and spatial tiles with linear blending.
//!
//! Mirrors diffusers `AutoencoderKLHunyuanVideo._decode`, `_temporal_tiled_decode`,
//! `tiled_decode` and `blend_v/h/t` exactly, including their in-place semantics (a tile is
//! blended with neighbours that were themselves already blended) and float rounding (blend
//! weights computed in f64 then used as f32 factors). Unlike diffusers it streams: only the
//! previous row of tiles and the previous temporal chunk are kept, and finished pixels go
//! straight into the output, so working memory is bounded by the tile size, not the video.
//!
//! Planning ([`TilePlan::new`]) is a pure function of the latent shape and the settings.

use std::ops::Range;

use crate::setting::{InvalidSetting, Setting};
use crate::tensor::Tensor5;

/// diffusers' `enable_tiling()` defaults, in pixels and frames.
pub const DEFAULT_TILE_SIZE: usize = 256;
pub const DEFAULT_TILE_STRIDE: usize = 192;
pub const DEFAULT_TILE_FRAMES: usize = 16;
pub const DEFAULT_TILE_STRIDE_FRAMES: usize = 12;

/// Spatial tiling settings, in output pixels (the same for height and width).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpatialTiling {
    pub tile: usize,
    pub stride: usize,
}

impl Default for SpatialTiling {
    fn default() -> Self {
        SpatialTiling {
            tile: DEFAULT_TILE_SIZE,
            stride: DEFAULT_TILE_STRIDE,
        }
    }
}

/// Frame-wise (temporal) tiling settings, in output frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TemporalTiling {
    pub tile: usize,
    pub stride: usize,
}

impl Default for TemporalTiling {
    fn default() -> Self {
        TemporalTiling {
            tile: DEFAULT_TILE_FRAMES,
            stride: DEFAULT_TILE_STRIDE_FRAMES,
        }
    }
}

/// How to split a decode. `None` turns a kind of tiling off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TilingConfig {
    pub spatial: Option<SpatialTiling>,
    pub temporal: Option<TemporalTiling>,
    /// The VAE's compression ratios (8 and 4 for HunyuanVideo).
    pub spatial_ratio: usize,
    pub temporal_ratio: usize,
}

impl Default for TilingConfig {
    /// Spatial tiling on with diffusers' `enable_tiling()` defaults, frame-wise decoding on as
    /// diffusers has it by default.
    fn default() -> Self {
        TilingConfig {
            spatial: Some(SpatialTiling::default()),
            temporal: Some(TemporalTiling::default()),
            spatial_ratio: 8,
            temporal_ratio: 4,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TilingError {
    #[error(transparent)]
    Invalid(#[from] InvalidSetting),
    #[error("latents must have at least one frame and a non-empty spatial size, got {0:?}")]
    EmptyLatents([usize; 5]),
}

impl TilingConfig {
    /// Check the settings (names the setting at fault).
    pub fn validate(&self) -> Result<(), TilingError> {
        let bad = |setting, value, reason: String| {
            Err(InvalidSetting::new(setting, format!("{value}: {reason}")).into())
        };
        if let Some(s) = self.spatial {
            let r = self.spatial_ratio;
            if s.tile == 0 || s.tile % r != 0 {
                return bad(
                    Setting::TileSize,
                    s.tile,
                    format!("must be a positive multiple of {r}"),
                );
            }
            if s.stride == 0 || s.stride % r != 0 || s.stride > s.tile {
                return bad(
                    Setting::TileStride,
                    s.stride,
                    format!(
                        "must be a positive multiple of {r} and at most the tile size ({})",
                        s.tile
                    ),
                );
            }
        }
        if let Some(t) = self.temporal {
            let r = self.temporal_ratio;
            if t.tile == 0 || t.tile % r != 0 {
                return bad(
                    Setting::TileFrames,
                    t.tile,
                    format!("must be a positive multiple of {r}"),
                );
            }
            if t.stride == 0 || t.stride % r != 0 || t.stride > t.tile {
                return bad(
                    Setting::TileStrideFrames,
                    t.stride,
                    format!(
                        "must be a positive multiple of {r} and at most the tile frames ({})",
                        t.tile
                    ),
                );
            }
        }
        Ok(())
    }
}

/// One temporal chunk of the latent video.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemporalChunk {
    /// Latent frames decoded for this chunk.
    pub latent: Range<usize>,
    /// Drop the first decoded frame (every chunk but the first).
    pub drop_first: bool,
    /// Output frames this chunk writes, after blending with the previous chunk.
    pub output: Range<usize>,
}

/// The spatial tile grid of one chunk, in latent coordinates; one tile when untiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpatialGrid {
    pub rows: Vec<Range<usize>>,
    pub cols: Vec<Range<usize>>,
    /// Output pixels each tile contributes from its top-left corner (the stride), and the
    /// blend width; `None` when the chunk is decoded whole.
    pub stride_px: Option<usize>,
    pub blend_px: usize,
}

impl SpatialGrid {
    pub fn tiles(&self) -> usize {
        self.rows.len() * self.cols.len()
    }
}

/// The full decode plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TilePlan {
    pub latent_shape: [usize; 5],
    pub output_shape: [usize; 5],
    pub chunks: Vec<TemporalChunk>,
    pub blend_frames: usize,
    pub grid: SpatialGrid,
    /// Output frames per latent frame after the first.
    pub temporal_ratio: usize,
}

impl TilePlan {
    /// Plan the decode of latents of `shape` [B, C, t, h, w] (output has `out_channels`).
    pub fn new(
        shape: [usize; 5],
        out_channels: usize,
        cfg: &TilingConfig,
    ) -> Result<TilePlan, TilingError> {
        cfg.validate()?;
        let [b, _, t, h, w] = shape;
        if t == 0 || h == 0 || w == 0 {
            return Err(TilingError::EmptyLatents(shape));
        }
        let (sr, tr) = (cfg.spatial_ratio, cfg.temporal_ratio);
        let frames = (t - 1) * tr + 1;
        let output_shape = [b, out_channels, frames, h * sr, w * sr];

        let mut chunks = Vec::new();
        let mut blend_frames = 0;
        match cfg.temporal {
            Some(tt) if t > tt.tile / tr => {
                let (tile_lat, stride_lat) = (tt.tile / tr, tt.stride / tr);
                blend_frames = tt.tile - tt.stride;
                let mut out_start = 0;
                for (k, i) in (0..t).step_by(stride_lat).enumerate() {
                    let latent = i..(i + tile_lat + 1).min(t);
                    let decoded = (latent.len() - 1) * tr + 1 - usize::from(k > 0);
                    let keep = if k == 0 { tt.stride + 1 } else { tt.stride };
                    let n = keep.min(decoded).min(frames.saturating_sub(out_start));
                    if n == 0 {
                        break;
                    }
                    chunks.push(TemporalChunk {
                        latent,
                        drop_first: k > 0,
                        output: out_start..out_start + n,
                    });
                    out_start += n;
                }
            }
            _ => chunks.push(TemporalChunk {
                latent: 0..t,
                drop_first: false,
                output: 0..frames,
            }),
        }

        let grid = match cfg.spatial {
            Some(s) if h > s.tile / sr || w > s.tile / sr => {
                let (tile_lat, stride_lat) = (s.tile / sr, s.stride / sr);
                let split = |n: usize| -> Vec<Range<usize>> {
                    (0..n)
                        .step_by(stride_lat)
                        .map(|i| i..(i + tile_lat).min(n))
                        .collect()
                };
                SpatialGrid {
                    rows: split(h),
                    cols: split(w),
                    stride_px: Some(s.stride),
                    blend_px: s.tile - s.stride,
                }
            }
            _ => SpatialGrid {
                rows: std::iter::once(0..h).collect(),
                cols: std::iter::once(0..w).collect(),
                stride_px: None,
                blend_px: 0,
            },
        };
        Ok(TilePlan {
            latent_shape: shape,
            output_shape,
            chunks,
            blend_frames,
            grid,
            temporal_ratio: tr,
        })
    }

    /// Number of decoder calls the plan makes.
    pub fn decoder_calls(&self) -> usize {
        self.chunks.len() * self.grid.tiles()
    }
}

/// Blend weights as diffusers computes them: `1 - y/extent` and `y/extent` in double precision,
/// used as f32 factors.
#[inline]
fn weights(y: usize, extent: usize) -> (f32, f32) {
    let r = y as f64 / extent as f64;
    ((1.0 - r) as f32, r as f32)
}

/// The axis a blend runs along.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlendAxis {
    Frames,
    Height,
    Width,
}

impl BlendAxis {
    fn dim(self) -> usize {
        match self {
            BlendAxis::Frames => 2,
            BlendAxis::Height => 3,
            BlendAxis::Width => 4,
        }
    }
}

/// diffusers `blend_t` / `blend_v` / `blend_h`: the first `extent` slices of `b` along `axis`
/// fade in from the last `extent` slices of `a`, where `extent = min(a, b, blend)` along it.
pub fn blend(a: &Tensor5, b: &mut Tensor5, blend: usize, axis: BlendAxis) {
    let d = axis.dim();
    let (sa, sb) = (a.shape(), b.shape());
    let extent = sa[d].min(sb[d]).min(blend);
    // Iterate over b's shape, limited to a's extent on the other axes.
    let mut lim = sb;
    for k in 2..5 {
        if k != d {
            lim[k] = lim[k].min(sa[k]);
        }
    }
    lim[d] = 1; // the blended index along `d` is `i`
    for i in 0..extent {
        let (wa, wb) = weights(i, extent);
        for bb in 0..lim[0] {
            for c in 0..lim[1] {
                for t in 0..lim[2] {
                    for y in 0..lim[3] {
                        for x in 0..lim[4] {
                            let mut ia = [bb, c, t, y, x];
                            let mut ib = ia;
                            ia[d] = sa[d] - extent + i;
                            ib[d] = i;
                            let av = a.at(ia[0], ia[1], ia[2], ia[3], ia[4]);
                            let v = b.at_mut(ib[0], ib[1], ib[2], ib[3], ib[4]);
                            *v = av * wa + *v * wb;
                        }
                    }
                }
            }
        }
    }
}

/// The part of the previous temporal chunk the next one blends with: its last frames (after
/// its own blending) and its full frame count (which bounds the blend extent, as in diffusers).
struct Tail {
    frames: Tensor5,
    chunk_frames: usize,
}

/// Decode `z` following `plan`, calling `decode` once per tile (on latents that are already
/// scaled for the decoder) and `on_tile` after each call. Returns the [B, C, F, H, W] video.
///
/// Every blended tile crop goes straight into the output (or into the tail kept for the next
/// chunk): beyond the output, memory holds one row of tiles and two chunk tails.
pub fn decode_tiled<E>(
    z: &Tensor5,
    plan: &TilePlan,
    mut decode: impl FnMut(&Tensor5) -> Result<Tensor5, E>,
    mut on_tile: impl FnMut(),
) -> Result<Tensor5, E> {
    let mut out = Tensor5::zeros(plan.output_shape);
    let [b, c, _, oh, ow] = plan.output_shape;
    let [_, _, _, h, w] = z.shape();
    let mut prev: Option<Tail> = None;
    for (k, chunk) in plan.chunks.iter().enumerate() {
        let zc = z.slice(chunk.latent.clone(), 0..h, 0..w);
        let decoded_frames =
            (chunk.latent.len() - 1) * plan.temporal_ratio + 1 - usize::from(chunk.drop_first);
        let extent = prev.as_ref().map_or(0, |p| {
            p.chunk_frames.min(decoded_frames).min(plan.blend_frames)
        });
        let tail_len = if k + 1 < plan.chunks.len() {
            plan.blend_frames.min(decoded_frames)
        } else {
            0
        };
        let mut tail = Tensor5::zeros([b, c, tail_len, oh, ow]);
        let mut emit = |mut crop: Tensor5, y0: usize, x0: usize| {
            if chunk.drop_first {
                crop = crop.slice(1..crop.frames(), 0..crop.height(), 0..crop.width());
            }
            let (ch, cw) = (crop.height(), crop.width());
            if let Some(p) = prev.as_ref().filter(|_| extent > 0) {
                let pf = p.frames.frames();
                let a = p.frames.slice(pf - extent..pf, y0..y0 + ch, x0..x0 + cw);
                blend(&a, &mut crop, extent, BlendAxis::Frames);
            }
            let n = chunk.output.len();
            out.paste(&crop.slice(0..n, 0..ch, 0..cw), chunk.output.start, y0, x0);
            if tail_len > 0 {
                let f = crop.frames();
                tail.paste(&crop.slice(f - tail_len..f, 0..ch, 0..cw), 0, y0, x0);
            }
        };
        decode_chunk(&zc, &plan.grid, &mut decode, &mut on_tile, &mut emit)?;
        prev = Some(Tail {
            frames: tail,
            chunk_frames: decoded_frames,
        });
    }
    Ok(out)
}

/// Decode one temporal chunk, spatially tiled or whole, handing each finished (blended,
/// cropped) piece and its output origin to `emit`.
fn decode_chunk<E>(
    zc: &Tensor5,
    grid: &SpatialGrid,
    decode: &mut impl FnMut(&Tensor5) -> Result<Tensor5, E>,
    on_tile: &mut impl FnMut(),
    emit: &mut impl FnMut(Tensor5, usize, usize),
) -> Result<(), E> {
    let Some(stride) = grid.stride_px else {
        let dec = decode(zc)?;
        on_tile();
        emit(dec, 0, 0);
        return Ok(());
    };
    let t = zc.frames();
    let mut prev_row: Vec<Tensor5> = Vec::new();
    for (i, rows) in grid.rows.iter().enumerate() {
        let mut row: Vec<Tensor5> = Vec::with_capacity(grid.cols.len());
        for (j, cols) in grid.cols.iter().enumerate() {
            let mut tile = decode(&zc.slice(0..t, rows.clone(), cols.clone()))?;
            on_tile();
            if i > 0 {
                blend(&prev_row[j], &mut tile, grid.blend_px, BlendAxis::Height);
            }
            if j > 0 {
                blend(&row[j - 1], &mut tile, grid.blend_px, BlendAxis::Width);
            }
            let ratio = tile.height() / rows.len();
            let (full_h, full_w) = (zc.height() * ratio, zc.width() * ratio);
            let (y0, x0) = (i * stride, j * stride);
            let hh = stride.min(tile.height()).min(full_h.saturating_sub(y0));
            let ww = stride.min(tile.width()).min(full_w.saturating_sub(x0));
            emit(tile.slice(0..tile.frames(), 0..hh, 0..ww), y0, x0);
            row.push(tile);
        }
        prev_row = row;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg_small() -> TilingConfig {
        TilingConfig {
            spatial: Some(SpatialTiling {
                tile: 64,
                stride: 48,
            }),
            temporal: Some(TemporalTiling::default()),
            spatial_ratio: 8,
            temporal_ratio: 4,
        }
    }

    #[test]
    fn default_plan_at_720p_129_frames() {
        // 720x1280, 129 frames -> latents 33 x 90 x 160.
        let plan = TilePlan::new([1, 16, 33, 90, 160], 3, &TilingConfig::default()).unwrap();
        assert_eq!(plan.output_shape, [1, 3, 129, 720, 1280]);
        // Rows start every 24 latent px: 0,24,48,72 ; cols 0..144 step 24 -> 7 tiles.
        assert_eq!(plan.grid.rows, vec![0..32, 24..56, 48..80, 72..90]);
        assert_eq!(plan.grid.cols.len(), 7);
        assert_eq!(plan.grid.cols[6], 144..160);
        assert_eq!(plan.grid.blend_px, 64);
        // Temporal chunks start every 3 latent frames and decode 5 of them.
        assert_eq!(
            plan.chunks[0],
            TemporalChunk {
                latent: 0..5,
                drop_first: false,
                output: 0..13
            }
        );
        assert_eq!(
            plan.chunks[1],
            TemporalChunk {
                latent: 3..8,
                drop_first: true,
                output: 13..25
            }
        );
        assert_eq!(plan.blend_frames, 4);
        let last = plan.chunks.last().unwrap();
        assert_eq!(last.output.end, 129);
        // Every output frame is written exactly once.
        let total: usize = plan.chunks.iter().map(|c| c.output.len()).sum();
        assert_eq!(total, 129);
        for w in plan.chunks.windows(2) {
            assert_eq!(w[0].output.end, w[1].output.start);
        }
    }

    #[test]
    fn chunks_that_add_no_frames_are_skipped() {
        // t = 7: diffusers decodes z[6:7] too, then drops its only frame.
        let plan = TilePlan::new([1, 4, 7, 6, 8], 3, &cfg_small()).unwrap();
        assert_eq!(plan.chunks.len(), 2);
        assert_eq!(plan.chunks[1].latent, 3..7);
        assert_eq!(plan.chunks[1].output, 13..25);
    }

    #[test]
    fn small_inputs_are_not_tiled() {
        let plan = TilePlan::new([1, 4, 4, 32, 32], 3, &TilingConfig::default()).unwrap();
        assert_eq!(plan.chunks.len(), 1);
        assert_eq!(plan.grid.tiles(), 1);
        assert_eq!(plan.grid.stride_px, None);
        assert_eq!(plan.decoder_calls(), 1);
    }

    #[test]
    fn tiling_off_decodes_whole() {
        let cfg = TilingConfig {
            spatial: None,
            temporal: None,
            ..Default::default()
        };
        let plan = TilePlan::new([1, 16, 33, 90, 160], 3, &cfg).unwrap();
        assert_eq!(plan.decoder_calls(), 1);
    }

    #[test]
    fn settings_are_validated_naming_the_setting() {
        let setting = |cfg: &TilingConfig| match cfg.validate() {
            Err(TilingError::Invalid(i)) => Some(i.setting),
            _ => None,
        };
        let mut cfg = TilingConfig {
            spatial: Some(SpatialTiling {
                tile: 256,
                stride: 300,
            }),
            ..TilingConfig::default()
        };
        assert_eq!(setting(&cfg), Some(Setting::TileStride));
        assert!(cfg.validate().unwrap_err().to_string().contains("300"));
        cfg.spatial = Some(SpatialTiling {
            tile: 250,
            stride: 192,
        });
        assert_eq!(setting(&cfg), Some(Setting::TileSize));
        cfg.spatial = None;
        cfg.temporal = Some(TemporalTiling {
            tile: 16,
            stride: 10,
        });
        assert_eq!(setting(&cfg), Some(Setting::TileStrideFrames));
        cfg.temporal = None;
        assert_eq!(setting(&cfg), None);
    }

    /// A stand-in decoder with the VAE's shape contract (nearest upsampling x8 spatially,
    /// 1 + 4(t-1) frames) whose values depend on position, so misplaced tiles show.
    fn fake_decode(z: &Tensor5) -> Result<Tensor5, ()> {
        let [b, _, t, h, w] = z.shape();
        let f = (t - 1) * 4 + 1;
        let mut out = Tensor5::zeros([b, 3, f, h * 8, w * 8]);
        for bb in 0..b {
            for c in 0..3 {
                for ff in 0..f {
                    for y in 0..h * 8 {
                        for x in 0..w * 8 {
                            *out.at_mut(bb, c, ff, y, x) =
                                z.at(bb, c, ff.div_ceil(4), y / 8, x / 8);
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    #[test]
    fn tiled_decode_of_a_position_only_decoder_equals_whole_decode() {
        // With a decoder whose output depends only on the latent at that position, blending
        // identical overlaps must reproduce the untiled result exactly (weights sum to 1).
        let shape = [1, 3, 9, 14, 18];
        let n: usize = shape.iter().product();
        let z = Tensor5::from_vec(shape, (0..n).map(|i| (i % 97) as f32 * 0.25).collect()).unwrap();
        let plan = TilePlan::new(shape, 3, &cfg_small()).unwrap();
        assert!(plan.grid.tiles() > 4 && plan.chunks.len() > 1);
        let mut calls = 0;
        let tiled = decode_tiled(&z, &plan, fake_decode, || calls += 1).unwrap();
        assert_eq!(calls, plan.decoder_calls());
        let whole = fake_decode(&z).unwrap();
        assert_eq!(tiled.shape(), whole.shape());
        let max = tiled
            .data()
            .iter()
            .zip(whole.data())
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(max < 1e-5, "max diff {max}");
    }

    #[test]
    fn blend_matches_diffusers_formula() {
        let a = Tensor5::from_vec([1, 1, 1, 4, 1], vec![10.0, 20.0, 30.0, 40.0]).unwrap();
        let mut b = Tensor5::from_vec([1, 1, 1, 4, 1], vec![0.0; 4]).unwrap();
        blend(&a, &mut b, 3, BlendAxis::Height);
        // extent 3: b[y] = a[1 + y] * (1 - y/3)
        assert_eq!(
            b.data(),
            &[
                20.0,
                30.0 * (2.0f64 / 3.0) as f32,
                40.0 * (1.0f64 / 3.0) as f32,
                0.0
            ]
        );
    }
}
