//! A JPEG decoder that reproduces libjpeg-turbo's default decompression (what Pillow uses) sample
//! for sample: Huffman-coded baseline, extended and progressive JPEGs with 8-bit samples, 1 or 3
//! components.
//!
//! It mirrors libjpeg-turbo's defaults as Pillow runs them (`JpegDecode.c`: `out_color_space`
//! RGB or grey, `dct_method` `JDCT_ISLOW`, `do_fancy_upsampling` on):
//! - entropy decoding (`jdhuff.c`, `jdphuff.c`): DC/AC first and refinement scans, EOB runs,
//!   restart intervals, coefficients as 16-bit `JCOEF`s, `jpeg_natural_order` with its 16 extra
//!   entries that send overlong runs to coefficient 63;
//! - quantisation tables latched when a component's first scan starts (`latch_quant_tables`);
//! - the accurate integer IDCT `jpeg_idct_islow` (`jidctint.c`: `CONST_BITS` 13, `PASS1_BITS`
//!   2, `DESCALE` rounding, the post-IDCT range limit that wraps at 10 bits);
//! - upsampling (`jdsample.c`): `h2v1_fancy_upsample` and `h2v2_fancy_upsample` (for components
//!   wider than 2 samples, else box), `h1v2_fancy_upsample`, `int_upsample` for other integer
//!   ratios, with the top and bottom context rows duplicated as `jdmainct.c` does;
//! - colour conversion (`jdcolor.c`): `ycc_rgb_convert`'s 16-bit fixed-point tables; the colour
//!   space guessed as `default_decompress_parms` guesses it (JFIF → YCbCr, else an Adobe
//!   transform, else component ids 'R','G','B' → RGB, else YCbCr).
//!
//! Stricter than libjpeg, which warns and fills in: corrupt entropy data, missing restart markers
//! and data running out are errors.

/// What went wrong; the caller adds the file name.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum JpegError {
    /// The data ends early.
    Truncated(&'static str),
    /// Malformed data.
    Corrupt(&'static str),
    /// Valid but not decoded here.
    Unsupported(&'static str),
}

type Result<T> = std::result::Result<T, JpegError>;

use JpegError::{Corrupt, Truncated, Unsupported};

/// The decoded image: interleaved samples, `components` (1 or 3) per pixel.
pub(super) struct Decoded {
    pub width: usize,
    pub height: usize,
    pub components: usize,
    pub samples: Vec<u8>,
}

const NATURAL: [usize; 80] = {
    let zigzag: [usize; 64] = [
        0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27,
        20, 13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51,
        58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
    ];
    let mut t = [63usize; 80];
    let mut i = 0;
    while i < 64 {
        t[i] = zigzag[i];
        i += 1;
    }
    t
};

/// `jpeg_make_d_derived_tbl`'s canonical code tables.
#[derive(Clone)]
struct Huffman {
    maxcode: [i32; 18],
    valoffset: [i32; 17],
    values: Vec<u8>,
}

impl Huffman {
    fn new(counts: &[u8; 16], values: &[u8]) -> Result<Self> {
        let mut sizes = Vec::with_capacity(values.len());
        for (l, &n) in counts.iter().enumerate() {
            sizes.extend(std::iter::repeat_n(l as u8 + 1, usize::from(n)));
        }
        if sizes.len() != values.len() || sizes.len() > 256 {
            return Err(Corrupt("a Huffman table of the wrong size"));
        }
        let mut codes = vec![0i32; sizes.len()];
        let (mut code, mut si, mut p) = (0i32, sizes.first().copied().unwrap_or(1), 0);
        while p < sizes.len() {
            while p < sizes.len() && sizes[p] == si {
                codes[p] = code;
                code += 1;
                p += 1;
            }
            if code >= 1 << si {
                return Err(Corrupt("a Huffman table with too many codes"));
            }
            code <<= 1;
            si += 1;
        }
        let mut maxcode = [-1i32; 18];
        let mut valoffset = [0i32; 17];
        let mut p = 0usize;
        for l in 1..=16 {
            let n = usize::from(counts[l - 1]);
            if n > 0 {
                valoffset[l] = p as i32 - codes[p];
                p += n;
                maxcode[l] = codes[p - 1];
            }
        }
        maxcode[17] = 0xFFFFF;
        Ok(Self {
            maxcode,
            valoffset,
            values: values.to_vec(),
        })
    }
}

/// The entropy-coded data of one scan: bytes with 0xFF00 stuffing, ending at a marker.
struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
    acc: u32,
    n: u32,
    at_marker: bool,
}

impl<'a> Bits<'a> {
    fn new(data: &'a [u8], pos: usize) -> Self {
        Self {
            data,
            pos,
            acc: 0,
            n: 0,
            at_marker: false,
        }
    }

    fn fill(&mut self) {
        while self.n <= 24 && !self.at_marker {
            let Some(&b) = self.data.get(self.pos) else {
                self.at_marker = true;
                break;
            };
            if b == 0xFF {
                // skip fill bytes; FF 00 is a data FF, anything else a marker
                let mut q = self.pos + 1;
                while self.data.get(q) == Some(&0xFF) {
                    q += 1;
                }
                if self.data.get(q) == Some(&0) {
                    self.pos = q + 1;
                } else {
                    self.at_marker = true;
                    break;
                }
            } else {
                self.pos += 1;
            }
            self.acc |= u32::from(b) << (24 - self.n);
            self.n += 8;
        }
    }

    fn bit(&mut self) -> Result<u32> {
        if self.n == 0 {
            self.fill();
            if self.n == 0 {
                return Err(if self.pos >= self.data.len() {
                    Truncated("the file ends inside the image data")
                } else {
                    Corrupt("the image data ends before its last block")
                });
            }
        }
        let b = self.acc >> 31;
        self.acc <<= 1;
        self.n -= 1;
        Ok(b)
    }

    fn bits(&mut self, count: u32) -> Result<i32> {
        let mut v = 0i32;
        for _ in 0..count {
            v = (v << 1) | self.bit()? as i32;
        }
        Ok(v)
    }

    /// `HUFF_EXTEND(receive(s), s)`.
    fn extend(&mut self, s: u32) -> Result<i32> {
        if s == 0 {
            return Ok(0);
        }
        if s > 16 {
            return Err(Corrupt("a coefficient of more than 16 bits"));
        }
        let v = self.bits(s)?;
        Ok(if v < 1 << (s - 1) {
            v + (-1 << s) + 1
        } else {
            v
        })
    }

    fn decode(&mut self, t: &Huffman) -> Result<u8> {
        let mut code = self.bit()? as i32;
        let mut l = 1;
        while code > t.maxcode[l] {
            code = (code << 1) | self.bit()? as i32;
            l += 1;
            if l > 16 {
                return Err(Corrupt("a Huffman code not in its table"));
            }
        }
        let i = code + t.valoffset[l];
        usize::try_from(i)
            .ok()
            .and_then(|i| t.values.get(i).copied())
            .ok_or(Corrupt("a Huffman code not in its table"))
    }

    /// Drops the buffered bits and reads the RSTn marker that must follow.
    fn restart(&mut self) -> Result<()> {
        self.acc = 0;
        self.n = 0;
        self.at_marker = false;
        while self.data.get(self.pos).is_some_and(|&b| b != 0xFF) {
            self.pos += 1;
        }
        while self.data.get(self.pos) == Some(&0xFF) {
            self.pos += 1;
        }
        match self.data.get(self.pos) {
            Some(0xD0..=0xD7) => {
                self.pos += 1;
                Ok(())
            }
            Some(_) => Err(Corrupt("a missing restart marker")),
            None => Err(Truncated("the file ends inside the image data")),
        }
    }
}

struct Component {
    id: u8,
    h: usize,
    v: usize,
    tq: usize,
    /// the quantisation table latched at the component's first scan (natural order)
    quant: Option<[u16; 64]>,
    /// blocks per row and rows of blocks, padded to whole MCUs
    bw: usize,
    bh: usize,
    /// samples of the component (`ceil(width · h / hmax)` × …)
    dw: usize,
    dh: usize,
    coefs: Vec<i16>,
}

struct Scan {
    comps: Vec<(usize, usize, usize)>, // (component index, DC table, AC table)
    ss: usize,
    se: usize,
    ah: u32,
    al: u32,
}

/// Decodes a JPEG file.
pub(super) fn decode(data: &[u8]) -> Result<Decoded> {
    if !data.starts_with(&[0xFF, 0xD8]) {
        return Err(Corrupt("no start-of-image marker"));
    }
    let mut quant: [Option<[u16; 64]>; 4] = [None; 4];
    let mut dc: [Option<Huffman>; 4] = [None, None, None, None];
    let mut ac: [Option<Huffman>; 4] = [None, None, None, None];
    let mut comps: Vec<Component> = Vec::new();
    let (mut width, mut height, mut hmax, mut vmax) = (0usize, 0usize, 1usize, 1usize);
    let mut progressive = false;
    let mut frame_seen = false;
    let mut restart_interval = 0usize;
    let mut jfif = false;
    let mut adobe: Option<u8> = None;
    let mut pos = 2;
    loop {
        while data.get(pos).is_some_and(|&b| b != 0xFF) {
            pos += 1;
        }
        while data.get(pos) == Some(&0xFF) {
            pos += 1;
        }
        let Some(&marker) = data.get(pos) else {
            return Err(Truncated("the file ends before its end-of-image marker"));
        };
        pos += 1;
        match marker {
            0xD9 => break,
            0x00 | 0x01 | 0xD0..=0xD8 => continue,
            _ => {}
        }
        let len = match data.get(pos..pos + 2) {
            Some(b) => usize::from(u16::from_be_bytes([b[0], b[1]])),
            None => return Err(Truncated("the file ends inside a marker segment")),
        };
        if len < 2 {
            return Err(Corrupt("a marker segment of length < 2"));
        }
        let seg = data
            .get(pos + 2..pos + len)
            .ok_or(Truncated("the file ends inside a marker segment"))?;
        pos += len;
        match marker {
            0xDB => {
                let mut s = seg;
                while let Some((&pq_tq, rest)) = s.split_first() {
                    let (pq, tq) = (pq_tq >> 4, usize::from(pq_tq & 15));
                    let n = if pq == 0 { 64 } else { 128 };
                    if tq > 3 || pq > 1 || rest.len() < n {
                        return Err(Corrupt("a bad quantisation table"));
                    }
                    let mut t = [0u16; 64];
                    for (i, &nat) in NATURAL[..64].iter().enumerate() {
                        t[nat] = if pq == 0 {
                            u16::from(rest[i])
                        } else {
                            u16::from_be_bytes([rest[2 * i], rest[2 * i + 1]])
                        };
                    }
                    quant[tq] = Some(t);
                    s = &rest[n..];
                }
            }
            0xC4 => {
                let mut s = seg;
                while s.len() >= 17 {
                    let (tc, th) = (s[0] >> 4, usize::from(s[0] & 15));
                    let mut counts = [0u8; 16];
                    counts.copy_from_slice(&s[1..17]);
                    let n: usize = counts.iter().map(|&c| usize::from(c)).sum();
                    let values = s.get(17..17 + n).ok_or(Corrupt("a short Huffman table"))?;
                    if th > 3 || tc > 1 {
                        return Err(Corrupt("a bad Huffman table class or id"));
                    }
                    let t = Huffman::new(&counts, values)?;
                    if tc == 0 {
                        dc[th] = Some(t);
                    } else {
                        ac[th] = Some(t);
                    }
                    s = &s[17 + n..];
                }
                if !s.is_empty() {
                    return Err(Corrupt("a short Huffman table"));
                }
            }
            0xDD => {
                if seg.len() < 2 {
                    return Err(Corrupt("a short restart interval"));
                }
                restart_interval = usize::from(u16::from_be_bytes([seg[0], seg[1]]));
            }
            0xE0 if seg.len() >= 14 && seg.starts_with(b"JFIF\0") => jfif = true,
            0xEE if seg.len() >= 12 && seg.starts_with(b"Adobe") => adobe = Some(seg[11]),
            0xC0..=0xC2 => {
                if frame_seen {
                    return Err(Unsupported("more than one frame"));
                }
                frame_seen = true;
                progressive = marker == 0xC2;
                if seg.len() < 6 {
                    return Err(Corrupt("a short frame header"));
                }
                if seg[0] != 8 {
                    return Err(Unsupported("samples of other than 8 bits"));
                }
                height = usize::from(u16::from_be_bytes([seg[1], seg[2]]));
                width = usize::from(u16::from_be_bytes([seg[3], seg[4]]));
                let n = usize::from(seg[5]);
                if width == 0 || height == 0 {
                    return Err(Unsupported("a zero or DNL-defined size"));
                }
                if n != 1 && n != 3 {
                    return Err(Unsupported("other than 1 or 3 components"));
                }
                if seg.len() < 6 + 3 * n {
                    return Err(Corrupt("a short frame header"));
                }
                for i in 0..n {
                    let c = &seg[6 + 3 * i..9 + 3 * i];
                    let (h, v) = (usize::from(c[1] >> 4), usize::from(c[1] & 15));
                    if !(1..=4).contains(&h) || !(1..=4).contains(&v) || c[2] > 3 {
                        return Err(Corrupt("bad sampling factors or table id"));
                    }
                    comps.push(Component {
                        id: c[0],
                        h,
                        v,
                        tq: usize::from(c[2]),
                        quant: None,
                        bw: 0,
                        bh: 0,
                        dw: 0,
                        dh: 0,
                        coefs: Vec::new(),
                    });
                }
                hmax = comps.iter().map(|c| c.h).max().unwrap_or(1);
                vmax = comps.iter().map(|c| c.v).max().unwrap_or(1);
                let mcux = width.div_ceil(8 * hmax);
                let mcuy = height.div_ceil(8 * vmax);
                for c in &mut comps {
                    c.bw = mcux * c.h;
                    c.bh = mcuy * c.v;
                    c.dw = (width * c.h).div_ceil(hmax);
                    c.dh = (height * c.v).div_ceil(vmax);
                    c.coefs = vec![0; c.bw * c.bh * 64];
                }
            }
            0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF => {
                return Err(Unsupported(
                    "lossless, hierarchical or arithmetic-coded JPEG",
                ));
            }
            0xDA => {
                if !frame_seen {
                    return Err(Corrupt("a scan before the frame header"));
                }
                let n = usize::from(*seg.first().ok_or(Corrupt("a short scan header"))?);
                if n == 0 || n > 4 || seg.len() < 4 + 2 * n {
                    return Err(Corrupt("a bad scan header"));
                }
                let mut sc = Vec::with_capacity(n);
                for i in 0..n {
                    let (id, tables) = (seg[1 + 2 * i], seg[2 + 2 * i]);
                    let ci = comps
                        .iter()
                        .position(|c| c.id == id)
                        .ok_or(Corrupt("a scan of an unknown component"))?;
                    let (td, ta) = (usize::from(tables >> 4), usize::from(tables & 15));
                    if td > 3 || ta > 3 {
                        return Err(Corrupt("a bad Huffman table id"));
                    }
                    sc.push((ci, td, ta));
                }
                let p = &seg[1 + 2 * n..];
                let scan = Scan {
                    comps: sc,
                    ss: usize::from(p[0]),
                    se: usize::from(p[1]),
                    ah: u32::from(p[2] >> 4),
                    al: u32::from(p[2] & 15),
                };
                if progressive {
                    let ok = scan.ss <= scan.se
                        && scan.se <= 63
                        && (scan.ss == 0) == (scan.se == 0)
                        && (scan.ss == 0 || scan.comps.len() == 1)
                        && scan.ah <= 13
                        && scan.al <= 13;
                    if !ok {
                        return Err(Corrupt("bad progressive scan parameters"));
                    }
                } else if scan.ss != 0 || scan.se != 63 || scan.ah != 0 || scan.al != 0 {
                    // libjpeg only warns; the parameters are meaningless for sequential JPEG
                }
                for &(ci, ..) in &scan.comps {
                    let c = &mut comps[ci];
                    if c.quant.is_none() {
                        c.quant = Some(quant[c.tq].ok_or(Corrupt("a missing quantisation table"))?);
                    }
                }
                let tables = ScanTables { dc: &dc, ac: &ac };
                pos = decode_scan(
                    data,
                    pos,
                    &mut comps,
                    &scan,
                    &tables,
                    progressive,
                    restart_interval,
                )?;
            }
            _ => {}
        }
    }
    if !frame_seen || comps.iter().any(|c| c.quant.is_none()) {
        return Err(Corrupt("no image data for some component"));
    }
    // the colour space (jdapimin.c default_decompress_parms)
    let rgb_source = comps.len() == 3
        && !jfif
        && match adobe {
            Some(t) => t == 0,
            None => (comps[0].id, comps[1].id, comps[2].id) == (82, 71, 66),
        };
    let planes: Vec<Vec<u8>> = comps
        .iter()
        .map(|c| upsample(&idct_plane(c), c, (hmax, vmax), width, height))
        .collect::<Result<_>>()?;
    let n = width * height;
    let samples = if comps.len() == 1 {
        planes.into_iter().next().unwrap_or_default()
    } else {
        let mut out = vec![0u8; n * 3];
        if rgb_source {
            for i in 0..n {
                out[3 * i] = planes[0][i];
                out[3 * i + 1] = planes[1][i];
                out[3 * i + 2] = planes[2][i];
            }
        } else {
            let t = YccTables::new();
            for i in 0..n {
                let px = t.rgb(planes[0][i], planes[1][i], planes[2][i]);
                out[3 * i..3 * i + 3].copy_from_slice(&px);
            }
        }
        out
    };
    Ok(Decoded {
        width,
        height,
        components: comps.len(),
        samples,
    })
}

struct ScanTables<'t> {
    dc: &'t [Option<Huffman>; 4],
    ac: &'t [Option<Huffman>; 4],
}

/// Decodes one scan into the components' coefficients; returns the position after its data.
fn decode_scan(
    data: &[u8],
    pos: usize,
    comps: &mut [Component],
    scan: &Scan,
    tables: &ScanTables<'_>,
    progressive: bool,
    restart_interval: usize,
) -> Result<usize> {
    let table = |t: &[Option<Huffman>; 4], i: usize| -> Result<Huffman> {
        t[i].clone().ok_or(Corrupt("a missing Huffman table"))
    };
    let need_dc = !progressive || (scan.ss == 0 && scan.ah == 0);
    let need_ac = !progressive || scan.ss > 0;
    let mut dcs = Vec::new();
    let mut acs = Vec::new();
    for &(_, td, ta) in &scan.comps {
        dcs.push(if need_dc {
            Some(table(tables.dc, td)?)
        } else {
            None
        });
        acs.push(if need_ac {
            Some(table(tables.ac, ta)?)
        } else {
            None
        });
    }
    let mut bits = Bits::new(data, pos);
    let mut pred = [0i32; 4];
    let mut eobrun = 0u32;
    // the blocks in decoding order: (scan component, block x, block y)
    let single = scan.comps.len() == 1;
    let (units_x, units_y) = if single {
        let c = &comps[scan.comps[0].0];
        (c.dw.div_ceil(8), c.dh.div_ceil(8))
    } else {
        let w = comps.iter().map(|c| c.bw / c.h).next().unwrap_or(0);
        let h = comps.iter().map(|c| c.bh / c.v).next().unwrap_or(0);
        (w, h)
    };
    let total = units_x * units_y;
    for unit in 0..total {
        if restart_interval > 0 && unit > 0 && unit % restart_interval == 0 {
            bits.restart()?;
            pred = [0; 4];
            eobrun = 0;
        }
        let (ux, uy) = (unit % units_x, unit / units_x);
        for (si, &(ci, ..)) in scan.comps.iter().enumerate() {
            let (h, v) = if single {
                (1, 1)
            } else {
                (comps[ci].h, comps[ci].v)
            };
            for by in 0..v {
                for bx in 0..h {
                    let c = &mut comps[ci];
                    let (x, y) = (ux * h + bx, uy * v + by);
                    let start = (y * c.bw + x) * 64;
                    let block = c
                        .coefs
                        .get_mut(start..start + 64)
                        .ok_or(Corrupt("a block outside the image"))?;
                    if !progressive {
                        baseline_block(
                            &mut bits,
                            block,
                            dcs[si].as_ref(),
                            acs[si].as_ref(),
                            &mut pred[si],
                        )?;
                    } else if scan.ss == 0 {
                        if scan.ah == 0 {
                            let t = dcs[si].as_ref().ok_or(Corrupt("a missing Huffman table"))?;
                            let s = u32::from(bits.decode(t)?);
                            pred[si] = pred[si].wrapping_add(bits.extend(s)?);
                            block[0] = (pred[si] << scan.al) as i16;
                        } else if bits.bit()? != 0 {
                            block[0] |= (1i32 << scan.al) as i16;
                        }
                    } else {
                        let t = acs[si].as_ref().ok_or(Corrupt("a missing Huffman table"))?;
                        if scan.ah == 0 {
                            ac_first(&mut bits, block, t, scan, &mut eobrun)?;
                        } else {
                            ac_refine(&mut bits, block, t, scan, &mut eobrun)?;
                        }
                    }
                }
            }
        }
    }
    Ok(bits.pos)
}

fn baseline_block(
    bits: &mut Bits<'_>,
    block: &mut [i16],
    dc: Option<&Huffman>,
    ac: Option<&Huffman>,
    pred: &mut i32,
) -> Result<()> {
    let (Some(dc), Some(ac)) = (dc, ac) else {
        return Err(Corrupt("a missing Huffman table"));
    };
    let s = u32::from(bits.decode(dc)?);
    *pred = pred.wrapping_add(bits.extend(s)?);
    block[0] = *pred as i16;
    let mut k = 1;
    while k < 64 {
        let rs = bits.decode(ac)?;
        let (r, s) = (usize::from(rs >> 4), u32::from(rs & 15));
        if s != 0 {
            k += r;
            block[NATURAL[k]] = bits.extend(s)? as i16;
        } else if r != 15 {
            break;
        } else {
            k += 15;
        }
        k += 1;
    }
    Ok(())
}

fn ac_first(
    bits: &mut Bits<'_>,
    block: &mut [i16],
    t: &Huffman,
    scan: &Scan,
    eobrun: &mut u32,
) -> Result<()> {
    if *eobrun > 0 {
        *eobrun -= 1;
        return Ok(());
    }
    let mut k = scan.ss;
    while k <= scan.se {
        let rs = bits.decode(t)?;
        let (r, s) = (u32::from(rs >> 4), u32::from(rs & 15));
        if s != 0 {
            k += r as usize;
            let v = bits.extend(s)?;
            block[NATURAL[k]] = (v << scan.al) as i16;
        } else if r == 15 {
            k += 15;
        } else {
            *eobrun = 1 << r;
            if r != 0 {
                *eobrun += bits.bits(r)? as u32;
            }
            *eobrun -= 1;
            break;
        }
        k += 1;
    }
    Ok(())
}

fn ac_refine(
    bits: &mut Bits<'_>,
    block: &mut [i16],
    t: &Huffman,
    scan: &Scan,
    eobrun: &mut u32,
) -> Result<()> {
    let p1 = 1i32 << scan.al;
    let m1 = -1i32 << scan.al;
    let mut k = scan.ss;
    let refine = |bits: &mut Bits<'_>, coef: &mut i16| -> Result<()> {
        if bits.bit()? != 0 && (i32::from(*coef) & p1) == 0 {
            let c = i32::from(*coef);
            *coef = if c >= 0 { c + p1 } else { c + m1 } as i16;
        }
        Ok(())
    };
    if *eobrun == 0 {
        while k <= scan.se {
            let rs = bits.decode(t)?;
            let (mut r, s) = (i32::from(rs >> 4), u32::from(rs & 15));
            let mut value = 0i32;
            if s != 0 {
                // s must be 1 (libjpeg warns otherwise)
                value = if bits.bit()? != 0 { p1 } else { m1 };
            } else if r != 15 {
                *eobrun = 1 << r;
                if r != 0 {
                    *eobrun += bits.bits(r as u32)? as u32;
                }
                break;
            }
            loop {
                let coef = &mut block[NATURAL[k]];
                if *coef != 0 {
                    refine(bits, coef)?;
                } else {
                    r -= 1;
                    if r < 0 {
                        break;
                    }
                }
                k += 1;
                if k > scan.se {
                    break;
                }
            }
            if value != 0 {
                block[NATURAL[k]] = value as i16;
            }
            k += 1;
        }
    }
    if *eobrun > 0 {
        while k <= scan.se {
            let coef = &mut block[NATURAL[k]];
            if *coef != 0 {
                refine(bits, coef)?;
            }
            k += 1;
        }
        *eobrun -= 1;
    }
    Ok(())
}

/// The component's samples: `jpeg_idct_islow` of every block (`bw·8` × `bh·8`).
fn idct_plane(c: &Component) -> Vec<u8> {
    let stride = c.bw * 8;
    let mut out = vec![0u8; stride * c.bh * 8];
    let q = c.quant.unwrap_or([1; 64]);
    for by in 0..c.bh {
        for bx in 0..c.bw {
            let start = (by * c.bw + bx) * 64;
            let block = &c.coefs[start..start + 64];
            let mut px = [0u8; 64];
            idct_islow(block, &q, &mut px);
            for y in 0..8 {
                let o = (by * 8 + y) * stride + bx * 8;
                out[o..o + 8].copy_from_slice(&px[y * 8..y * 8 + 8]);
            }
        }
    }
    out
}

const CONST_BITS: u32 = 13;
const PASS1_BITS: u32 = 2;
const FIX_0_298631336: i64 = 2446;
const FIX_0_390180644: i64 = 3196;
const FIX_0_541196100: i64 = 4433;
const FIX_0_765366865: i64 = 6270;
const FIX_0_899976223: i64 = 7373;
const FIX_1_175875602: i64 = 9633;
const FIX_1_501321110: i64 = 12299;
const FIX_1_847759065: i64 = 15137;
const FIX_1_961570560: i64 = 16069;
const FIX_2_053119869: i64 = 16819;
const FIX_2_562915447: i64 = 20995;
const FIX_3_072711026: i64 = 25172;

fn descale(x: i64, n: u32) -> i64 {
    (x + (1 << (n - 1))) >> n
}

/// `IDCT_range_limit(x & RANGE_MASK)`: 10-bit wrap, then +128 clamped to 0..=255.
fn range_limit(x: i64) -> u8 {
    let v = (x & 1023) as i32;
    let s = if v >= 512 { v - 1024 } else { v };
    (s + 128).clamp(0, 255) as u8
}

/// The even and odd parts of one 1-D pass; `x` holds the 8 inputs (already dequantized in
/// pass 1), the results are the 8 outputs before descaling.
fn idct_1d(x: [i64; 8], shift_in: u32) -> [i64; 8] {
    let z2 = x[2];
    let z3 = x[6];
    let z1 = (z2 + z3) * FIX_0_541196100;
    let tmp2 = z1 + z3 * (-FIX_1_847759065);
    let tmp3 = z1 + z2 * FIX_0_765366865;
    let tmp0 = (x[0] + x[4]) << shift_in;
    let tmp1 = (x[0] - x[4]) << shift_in;
    let tmp10 = tmp0 + tmp3;
    let tmp13 = tmp0 - tmp3;
    let tmp11 = tmp1 + tmp2;
    let tmp12 = tmp1 - tmp2;

    let (mut t0, mut t1, mut t2, mut t3) = (x[7], x[5], x[3], x[1]);
    let z1 = t0 + t3;
    let z2 = t1 + t2;
    let z3 = t0 + t2;
    let z4 = t1 + t3;
    let z5 = (z3 + z4) * FIX_1_175875602;
    t0 *= FIX_0_298631336;
    t1 *= FIX_2_053119869;
    t2 *= FIX_3_072711026;
    t3 *= FIX_1_501321110;
    let z1 = z1 * (-FIX_0_899976223);
    let z2 = z2 * (-FIX_2_562915447);
    let z3 = z3 * (-FIX_1_961570560) + z5;
    let z4 = z4 * (-FIX_0_390180644) + z5;
    t0 += z1 + z3;
    t1 += z2 + z4;
    t2 += z2 + z3;
    t3 += z1 + z4;
    [
        tmp10 + t3,
        tmp11 + t2,
        tmp12 + t1,
        tmp13 + t0,
        tmp13 - t0,
        tmp12 - t1,
        tmp11 - t2,
        tmp10 - t3,
    ]
}

/// `jpeg_idct_islow` (jidctint.c) of one block of coefficients (natural order).
fn idct_islow(coef: &[i16], q: &[u16; 64], out: &mut [u8; 64]) {
    let mut ws = [0i64; 64];
    for col in 0..8 {
        let x: [i64; 8] =
            std::array::from_fn(|r| i64::from(coef[r * 8 + col]) * i64::from(q[r * 8 + col]));
        if x[1..].iter().all(|&v| v == 0) {
            let dc = x[0] << PASS1_BITS;
            for r in 0..8 {
                ws[r * 8 + col] = dc;
            }
            continue;
        }
        let y = idct_1d(x, CONST_BITS);
        for r in 0..8 {
            // the C stores an int: DESCALE(...) fits for valid data
            ws[r * 8 + col] = i64::from(descale(y[r], CONST_BITS - PASS1_BITS) as i32);
        }
    }
    for row in 0..8 {
        let x: [i64; 8] = std::array::from_fn(|c| ws[row * 8 + c]);
        if x[1..].iter().all(|&v| v == 0) {
            let v = range_limit(descale(x[0], PASS1_BITS + 3));
            out[row * 8..row * 8 + 8].fill(v);
            continue;
        }
        let y = idct_1d(x, CONST_BITS);
        for c in 0..8 {
            out[row * 8 + c] = range_limit(descale(y[c], CONST_BITS + PASS1_BITS + 3));
        }
    }
}

/// The component at full resolution (`width` × `height`), as `jdsample.c` upsamples it.
fn upsample(
    plane: &[u8],
    c: &Component,
    (hmax, vmax): (usize, usize),
    width: usize,
    height: usize,
) -> Result<Vec<u8>> {
    let stride = c.bw * 8;
    if hmax % c.h != 0 || vmax % c.v != 0 {
        return Err(Unsupported("fractional chroma subsampling"));
    }
    let (rh, rv) = (hmax / c.h, vmax / c.v);
    let (dw, dh) = (c.dw, c.dh);
    let row = |y: usize| &plane[y * stride..y * stride + dw];
    let mut out = vec![0u8; width * height];
    let mut line = vec![0u8; dw * rh.max(2) + 2];
    for y in 0..height {
        let iy = y / rv;
        match (rh, rv) {
            (1, 1) => line[..dw].copy_from_slice(row(iy)),
            (2, 1) if dw > 2 => h2v1(row(iy), &mut line),
            (1, 2) => {
                let (near, far, bias) = v2_rows(iy, y % 2, dh);
                for (i, o) in line[..dw].iter_mut().enumerate() {
                    let sum = u32::from(row(near)[i]) * 3 + u32::from(row(far)[i]);
                    *o = ((sum + bias) >> 2) as u8;
                }
            }
            (2, 2) if dw > 2 => {
                let (near, far, _) = v2_rows(iy, y % 2, dh);
                h2v2(row(near), row(far), &mut line);
            }
            _ => {
                for (i, &v) in row(iy).iter().enumerate() {
                    line[i * rh..i * rh + rh].fill(v);
                }
            }
        }
        out[y * width..(y + 1) * width].copy_from_slice(&line[..width]);
    }
    Ok(out)
}

/// For output row parity `v` of input row `iy`: the nearest row, the next nearest (the edge
/// rows duplicated) and h1v2's rounding bias.
fn v2_rows(iy: usize, v: usize, dh: usize) -> (usize, usize, u32) {
    if v == 0 {
        (iy, iy.saturating_sub(1), 1)
    } else {
        (iy, (iy + 1).min(dh - 1), 2)
    }
}

/// `h2v1_fancy_upsample` of one row (`input.len() > 2`).
fn h2v1(input: &[u8], out: &mut [u8]) {
    let n = input.len();
    let s = |i: usize| u32::from(input[i]);
    out[0] = input[0];
    out[1] = ((s(0) * 3 + s(1) + 2) >> 2) as u8;
    for i in 1..n - 1 {
        let v = s(i) * 3;
        out[2 * i] = ((v + s(i - 1) + 1) >> 2) as u8;
        out[2 * i + 1] = ((v + s(i + 1) + 2) >> 2) as u8;
    }
    out[2 * n - 2] = ((s(n - 1) * 3 + s(n - 2) + 1) >> 2) as u8;
    out[2 * n - 1] = input[n - 1];
}

/// `h2v2_fancy_upsample` of one output row from the nearest and next nearest input rows.
fn h2v2(near: &[u8], far: &[u8], out: &mut [u8]) {
    let n = near.len();
    let sum = |i: usize| u32::from(near[i]) * 3 + u32::from(far[i]);
    out[0] = ((sum(0) * 4 + 8) >> 4) as u8;
    out[1] = ((sum(0) * 3 + sum(1) + 7) >> 4) as u8;
    for i in 1..n - 1 {
        let this = sum(i);
        out[2 * i] = ((this * 3 + sum(i - 1) + 8) >> 4) as u8;
        out[2 * i + 1] = ((this * 3 + sum(i + 1) + 7) >> 4) as u8;
    }
    let last = sum(n - 1);
    out[2 * n - 2] = ((last * 3 + sum(n - 2) + 8) >> 4) as u8;
    out[2 * n - 1] = ((last * 4 + 7) >> 4) as u8;
}

/// `build_ycc_rgb_table` (SCALEBITS 16).
struct YccTables {
    cr_r: [i32; 256],
    cb_b: [i32; 256],
    cr_g: [i64; 256],
    cb_g: [i64; 256],
}

impl YccTables {
    fn new() -> Self {
        const SCALEBITS: u32 = 16;
        const ONE_HALF: i64 = 1 << (SCALEBITS - 1);
        let fix = |x: f64| (x * f64::from(1u32 << SCALEBITS) + 0.5) as i64;
        let mut t = Self {
            cr_r: [0; 256],
            cb_b: [0; 256],
            cr_g: [0; 256],
            cb_g: [0; 256],
        };
        for i in 0..256 {
            let x = i as i64 - 128;
            t.cr_r[i] = ((fix(1.40200) * x + ONE_HALF) >> SCALEBITS) as i32;
            t.cb_b[i] = ((fix(1.77200) * x + ONE_HALF) >> SCALEBITS) as i32;
            t.cr_g[i] = -fix(0.71414) * x;
            t.cb_g[i] = -fix(0.34414) * x + ONE_HALF;
        }
        t
    }

    /// `ycc_rgb_convert` of one pixel.
    fn rgb(&self, y: u8, cb: u8, cr: u8) -> [u8; 3] {
        let (y, cb, cr) = (i32::from(y), usize::from(cb), usize::from(cr));
        let g = ((self.cb_g[cb] + self.cr_g[cr]) >> 16) as i32;
        [
            (y + self.cr_r[cr]).clamp(0, 255) as u8,
            (y + g).clamp(0, 255) as u8,
            (y + self.cb_b[cb]).clamp(0, 255) as u8,
        ]
    }
}
