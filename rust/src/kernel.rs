//! The f32 scoring micro-kernel, with run-time SIMD dispatch (AVX-512, AVX2+FMA, portable).
//!
//! A kernel call multiplies a group of `ROWS` gallery token rows (packed feature-major by
//! [`pack_group`]) by a packed panel of `LANES` queries and max-reduces each row into its image's
//! slot of a tile laid out `[image][lane]`: the max over an image's tokens (BLIP-2 style scoring)
//! is fused into the epilogue, so the `queries x gallery x tokens` block never exists.
//!
//! Every score is one fused multiply-add chain over the feature dimension, in order, starting from
//! +0.0: `s = fma(g[k], q[k], s)` for `k = 0 .. d`. Every kernel (and [`dot_chain`]) computes that
//! same chain, so a score's bits do not depend on the kernel, its position in a tile, the block
//! sizes or the thread count. Features are finite (checked), so a chain never turns NaN: a fused
//! step rounds once, and once the sum has overflowed to +-inf no finite product can cancel it.
//! Scores that overflow are +-inf in every kernel.
//!
//! With a handful of queries, [`score_rows_gl`] swaps the roles (gallery rows along the vector
//! lanes, queries broadcast) so no lane is wasted; it computes the same chain. [`pack_group`]
//! transposes gallery rows in registers (16 x 16 on AVX-512, 8 x 8 on AVX2), widening float16 and
//! bfloat16 bits exactly to `f32` as it loads them and checking finiteness on the way, so a
//! half-precision gallery is scored, bit for bit, as the `f32` gallery of its values.
//!
//! Soundness: the SIMD kernels are `unsafe` (`target_feature`) and private. Safe code reaches them
//! only through [`score_rows`], [`score_rows_gl`], [`pack_group`], [`above_masks`] and
//! [`fma_peak_gflops`], which take a [`Kernel`], a value that only run-time CPU detection
//! creates, and which check every slice length with checked arithmetic before the first
//! instruction runs.

use std::sync::OnceLock;

use crate::error::{try_filled, Result};

// The register tile of each micro-kernel (gallery rows x queries per call), defined once: the
// kernels, the packing and the bounds checks all read these.
const AVX512_ROWS: usize = 12;
const AVX512_LANES: usize = 32;
const AVX2_ROWS: usize = 6;
const AVX2_LANES: usize = 16;
const PORTABLE_ROWS: usize = 4;
const PORTABLE_LANES: usize = 8;
// The few-query kernels ("gallery lanes"): gallery rows run along the vector lanes and at most
// `*_GL_QUERIES` queries are broadcast, so a handful of queries wastes no lanes.
const AVX512_GL_ROWS: usize = 32;
const AVX512_GL_QUERIES: usize = 8;
const AVX2_GL_ROWS: usize = 16;
const AVX2_GL_QUERIES: usize = 4;
const PORTABLE_GL_ROWS: usize = 8;
const PORTABLE_GL_QUERIES: usize = 4;
/// The widest panel any kernel uses (consumers size per-lane arrays with it).
pub const MAX_LANES: usize = AVX512_LANES;

/// An instruction set, by name. Naming one does not run it: SIMD code runs only through a
/// [`Kernel`], which run-time detection alone hands out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Simd {
    /// Portable code (any CPU).
    Portable,
    /// x86-64 AVX2 with FMA.
    Avx2,
    /// x86-64 AVX-512F.
    Avx512,
}

impl Simd {
    /// Gallery rows per kernel call.
    pub fn rows(self) -> usize {
        match self {
            Simd::Avx512 => AVX512_ROWS,
            Simd::Avx2 => AVX2_ROWS,
            Simd::Portable => PORTABLE_ROWS,
        }
    }

    /// Queries per packed panel.
    pub fn lanes(self) -> usize {
        match self {
            Simd::Avx512 => AVX512_LANES,
            Simd::Avx2 => AVX2_LANES,
            Simd::Portable => PORTABLE_LANES,
        }
    }

    /// Gallery rows per call of the few-query kernel.
    pub fn gl_rows(self) -> usize {
        match self {
            Simd::Avx512 => AVX512_GL_ROWS,
            Simd::Avx2 => AVX2_GL_ROWS,
            Simd::Portable => PORTABLE_GL_ROWS,
        }
    }

    /// The most queries one call of the few-query kernel takes.
    pub fn gl_queries(self) -> usize {
        match self {
            Simd::Avx512 => AVX512_GL_QUERIES,
            Simd::Avx2 => AVX2_GL_QUERIES,
            Simd::Portable => PORTABLE_GL_QUERIES,
        }
    }

    /// Whether this CPU runs the instructions (run-time detection).
    pub fn is_supported(self) -> bool {
        match self {
            Simd::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2 => {
                is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Simd::Avx512 => is_x86_feature_detected!("avx512f"),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// Name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Simd::Avx512 => "avx512",
            Simd::Avx2 => "avx2",
            Simd::Portable => "portable",
        }
    }
}

/// A kernel this CPU is known to run. Its field is private: the only ways to get one are
/// run-time detection ([`Kernel::detect`], [`Kernel::best`], [`Kernel::available`],
/// [`Kernel::current`]), so safe code cannot ask for instructions the CPU lacks.
///
/// Neither forging one nor naming an instruction set where a kernel is expected compiles:
///
/// ```compile_fail
/// use qure::kernel::{Kernel, Simd};
/// let forged = Kernel(Simd::Avx512);
/// ```
///
/// ```compile_fail
/// use qure::kernel::{fma_peak_gflops, Simd};
/// fma_peak_gflops(Simd::Avx512, 10);
/// ```
///
/// ```
/// use qure::kernel::{fma_peak_gflops, Kernel, Simd};
/// let kernel = Kernel::detect(Simd::Portable).expect("every CPU runs portable code");
/// assert!(fma_peak_gflops(kernel, 10) >= 0.0);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Kernel(Simd);

impl Kernel {
    /// `simd` if this CPU runs it.
    pub fn detect(simd: Simd) -> Option<Kernel> {
        simd.is_supported().then_some(Kernel(simd))
    }

    /// The best kernel this CPU runs.
    pub fn best() -> Kernel {
        [Simd::Avx512, Simd::Avx2]
            .into_iter()
            .find_map(Kernel::detect)
            .unwrap_or(Kernel(Simd::Portable))
    }

    /// Every kernel this CPU runs, portable first.
    pub fn available() -> Vec<Kernel> {
        [Simd::Portable, Simd::Avx2, Simd::Avx512].into_iter().filter_map(Kernel::detect).collect()
    }

    /// The kernel in use: the best available, capped by `QURE_SIMD` (`portable`, `avx2`,
    /// `avx512`) when set.
    pub fn current() -> Kernel {
        static CURRENT: OnceLock<Kernel> = OnceLock::new();
        *CURRENT.get_or_init(|| {
            let cap = match std::env::var("QURE_SIMD").as_deref() {
                Ok("portable") | Ok("scalar") => Simd::Portable,
                Ok("avx2") => Simd::Avx2,
                _ => Simd::Avx512,
            };
            Kernel::available().into_iter().rfind(|k| k.0 <= cap).unwrap_or(Kernel(Simd::Portable))
        })
    }

    /// The instruction set.
    pub fn simd(self) -> Simd {
        self.0
    }

    /// Gallery rows per kernel call.
    pub fn rows(self) -> usize {
        self.0.rows()
    }

    /// Queries per packed panel.
    pub fn lanes(self) -> usize {
        self.0.lanes()
    }

    /// Gallery rows per call of the few-query kernel ([`score_rows_gl`]).
    pub fn gl_rows(self) -> usize {
        self.0.gl_rows()
    }

    /// The most queries one call of the few-query kernel takes.
    pub fn gl_queries(self) -> usize {
        self.0.gl_queries()
    }

    /// Name for reports.
    pub fn name(self) -> &'static str {
        self.0.name()
    }
}

/// Packs `n` rows of `d` features into panels of `lanes` queries, feature-major:
/// `out[p][k][l] = rows[p * lanes + l][k]`, zero past the last row. The buffer is allocated
/// fallibly ([`crate::QureError::OutOfMemory`]).
pub fn pack_panels(rows: &[f32], n: usize, d: usize, lanes: usize) -> Result<Vec<f32>> {
    let panels = n.div_ceil(lanes.max(1));
    let mut out = try_filled("packed queries", &[panels, d, lanes], 0.0f32)?;
    for (i, row) in rows.chunks_exact(d.max(1)).take(n).enumerate() {
        let base = (i / lanes) * d * lanes + i % lanes;
        for (k, &v) in row.iter().enumerate() {
            out[base + k * lanes] = v;
        }
    }
    Ok(out)
}

/// Gallery features as stored: `f32`, or half precision (IEEE binary16 or bfloat16) as raw
/// bits. Half-precision values are widened to `f32` exactly (every half value is an `f32`) as they
/// are packed, so a half gallery is scored by the very chain an `f32` gallery holding the widened
/// values would be: the result is that of the `f32` path on `widen(gallery)`, bit for bit.
#[derive(Clone, Copy, Debug)]
pub enum Features<'a> {
    /// `f32` values.
    F32(&'a [f32]),
    /// IEEE 754 binary16 (`numpy.float16`, `torch.float16`) bits.
    F16(&'a [u16]),
    /// bfloat16 (`torch.bfloat16`) bits: the upper half of an `f32`.
    Bf16(&'a [u16]),
}

impl<'a> Features<'a> {
    /// Number of values.
    pub fn len(&self) -> usize {
        match self {
            Features::F32(s) => s.len(),
            Features::F16(s) | Features::Bf16(s) => s.len(),
        }
    }

    /// True when there are no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Values `range` (panics when out of bounds, as slicing does).
    pub fn slice(&self, range: std::ops::Range<usize>) -> Features<'a> {
        match self {
            Features::F32(s) => Features::F32(&s[range]),
            Features::F16(s) => Features::F16(&s[range]),
            Features::Bf16(s) => Features::Bf16(&s[range]),
        }
    }

    /// Value `i`, widened exactly to `f32`.
    #[inline]
    pub fn get(&self, i: usize) -> f32 {
        match self {
            Features::F32(s) => s[i],
            Features::F16(s) => widen_f16(s[i]),
            Features::Bf16(s) => widen_bf16(s[i]),
        }
    }

    /// The storage type's name ("float32", "float16", "bfloat16").
    pub fn dtype(&self) -> &'static str {
        match self {
            Features::F32(_) => "float32",
            Features::F16(_) => "float16",
            Features::Bf16(_) => "bfloat16",
        }
    }

    /// Index of the first value that is NaN or infinite, if any.
    pub fn first_non_finite(&self) -> Option<usize> {
        // Exponent all ones is inf or NaN, in every format.
        match self {
            Features::F32(s) => s.iter().position(|v| !v.is_finite()),
            Features::F16(s) => s.iter().position(|&v| v & 0x7c00 == 0x7c00),
            Features::Bf16(s) => s.iter().position(|&v| v & 0x7f80 == 0x7f80),
        }
    }

    /// Whether every value is finite (a branch-free pass the compiler vectorises).
    pub fn all_finite(&self) -> bool {
        match self {
            Features::F32(s) => {
                s.iter().fold(0u32, |bad, v| bad | u32::from(v.to_bits() & EXP32 == EXP32)) == 0
            }
            Features::F16(s) => {
                s.iter().fold(0u16, |bad, &v| bad | u16::from(v & 0x7c00 == 0x7c00)) == 0
            }
            Features::Bf16(s) => {
                s.iter().fold(0u16, |bad, &v| bad | u16::from(v & 0x7f80 == 0x7f80)) == 0
            }
        }
    }
}

const EXP32: u32 = 0x7f80_0000;

/// An IEEE binary16 value (raw bits) as `f32`, exactly.
#[inline]
pub fn widen_f16(bits: u16) -> f32 {
    half::f16::from_bits(bits).to_f32()
}

/// A bfloat16 value (raw bits) as `f32`, exactly.
#[inline]
pub fn widen_bf16(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

/// Packs up to `rows` gallery rows of `d` features feature-major for a kernel call, widened to
/// `f32`: `out[k * rows + r] = group[r][k]`, zero past the last row (`group` holds whole rows).
/// Returns whether every value packed was finite.
///
/// # Panics
/// If `group` holds more than `rows` rows, or `out` is not `rows * d` long.
pub fn pack_group(
    kernel: Kernel,
    group: Features<'_>,
    d: usize,
    rows: usize,
    out: &mut [f32],
) -> bool {
    assert!(d > 0, "pack_group: no features");
    let valid = group.len() / d;
    assert!(
        valid <= rows && valid * d == group.len() && rows.checked_mul(d) == Some(out.len()),
        "pack_group: {} values do not fit {rows} rows of {d} features, or out is not {rows} x {d}",
        group.len()
    );
    match kernel.simd() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512F was detected (the kernel exists), and the assert above bounds every
        // access: reads stay inside `group`'s `valid * d` values, writes inside `out`.
        Simd::Avx512 => unsafe { x86::pack_avx512(group, d, rows, valid, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above, with AVX2, FMA and F16C detected.
        Simd::Avx2 => unsafe { x86::pack_avx2(group, d, rows, valid, out) },
        _ => pack_portable(group, d, rows, valid, out),
    }
}

fn pack_portable(
    group: Features<'_>,
    d: usize,
    rows: usize,
    valid: usize,
    out: &mut [f32],
) -> bool {
    let mut finite = true;
    for r in 0..rows {
        for k in 0..d {
            let v = if r < valid { group.get(r * d + k) } else { 0.0 };
            finite &= v.is_finite();
            out[k * rows + r] = v;
        }
    }
    finite
}

/// The reference chain every kernel reproduces bit for bit.
#[inline]
pub fn dot_chain(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).fold(0.0f32, |s, (&x, &y)| x.mul_add(y, s))
}

/// One kernel call.
///
/// `gallery` holds `kernel.rows()` rows of `d` features packed by [`pack_group`],
/// `panel` a packed panel of `kernel.lanes()` queries. For each of the first `valid` rows `r`,
/// the scores of row `first_row + r` are max-reduced into `tile[(first_row + r) / tokens]`, a
/// row of `lanes` values; with one token per image (`tokens == 1`) each row has its own tile row,
/// which is overwritten (no read, so the tile needs no filling first).
///
/// # Panics
/// If the slices are shorter than the call needs, `valid > kernel.rows()` or `tokens == 0`
/// (sizes are computed with checked arithmetic, so no argument can make an access escape them).
#[allow(clippy::too_many_arguments)]
pub fn score_rows(
    kernel: Kernel,
    d: usize,
    gallery: &[f32],
    panel: &[f32],
    tile: &mut [f32],
    first_row: usize,
    tokens: usize,
    valid: usize,
) {
    let (rows, lanes) = (kernel.rows(), kernel.lanes());
    assert!(valid <= rows && tokens > 0, "score_rows: valid {valid} > {rows} or no tokens");
    let fits = |need: Option<usize>, have: usize| need.is_some_and(|n| n <= have);
    assert!(
        fits(rows.checked_mul(d), gallery.len()) && fits(lanes.checked_mul(d), panel.len()),
        "score_rows: gallery group or query panel shorter than {rows} or {lanes} x {d}"
    );
    if valid > 0 {
        // The last image slot written is (first_row + valid - 1) / tokens.
        let slots = first_row.checked_add(valid - 1).map(|last| last / tokens + 1);
        assert!(
            fits(slots.and_then(|s| s.checked_mul(lanes)), tile.len()),
            "score_rows: tile too short for rows {first_row}.. of {tokens}-token images"
        );
    }
    match kernel.simd() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a `Kernel` holding `Avx512` exists only where run-time detection found
        // AVX-512F, and the asserts above bound every access the kernel makes.
        Simd::Avx512 => unsafe { x86::avx512(d, gallery, panel, tile, first_row, tokens, valid) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above, with AVX2 and FMA detected.
        Simd::Avx2 => unsafe { x86::avx2(d, gallery, panel, tile, first_row, tokens, valid) },
        _ => portable(d, gallery, panel, tile, first_row, tokens, valid),
    }
}

fn portable(
    d: usize,
    gallery: &[f32],
    panel: &[f32],
    tile: &mut [f32],
    first_row: usize,
    tokens: usize,
    valid: usize,
) {
    const ROWS: usize = PORTABLE_ROWS;
    const LANES: usize = PORTABLE_LANES;
    let mut acc = [[0.0f32; LANES]; ROWS];
    for k in 0..d {
        let q = &panel[k * LANES..k * LANES + LANES];
        for (r, acc_row) in acc.iter_mut().enumerate() {
            let g = gallery[k * ROWS + r];
            for (a, &qv) in acc_row.iter_mut().zip(q) {
                *a = g.mul_add(qv, *a);
            }
        }
    }
    for (r, acc_row) in acc.iter().enumerate().take(valid) {
        let slot = (first_row + r) / tokens * LANES;
        for (t, &a) in tile[slot..slot + LANES].iter_mut().zip(acc_row) {
            *t = if tokens == 1 { a } else { t.max(a) };
        }
    }
}

/// One call of the few-query kernel: the same chain as [`score_rows`], with the roles swapped.
///
/// `gallery` holds `kernel.gl_rows()` rows packed by [`pack_group`] (with that many rows),
/// `panel` a packed panel of `queries` queries (`1 ..= kernel.gl_queries()`, packed by
/// [`pack_panels`] with `lanes = queries`). For each of the first `valid` rows `r`, the scores of
/// row `first_row + r` are max-reduced into `tile[(first_row + r) / tokens]`, a row of `queries`
/// values (overwritten when `tokens == 1`, as in [`score_rows`]). Gallery rows run along the
/// vector lanes, so no lane is spent on absent queries.
///
/// # Panics
/// As [`score_rows`], and if `queries` is 0 or more than `kernel.gl_queries()`.
#[allow(clippy::too_many_arguments)]
pub fn score_rows_gl(
    kernel: Kernel,
    d: usize,
    gallery: &[f32],
    panel: &[f32],
    queries: usize,
    tile: &mut [f32],
    first_row: usize,
    tokens: usize,
    valid: usize,
) {
    let rows = kernel.gl_rows();
    assert!(valid <= rows && tokens > 0, "score_rows_gl: valid {valid} > {rows} or no tokens");
    assert!(
        (1..=kernel.gl_queries()).contains(&queries),
        "score_rows_gl: {queries} queries, expected 1 to {}",
        kernel.gl_queries()
    );
    let fits = |need: Option<usize>, have: usize| need.is_some_and(|n| n <= have);
    assert!(
        fits(rows.checked_mul(d), gallery.len()) && fits(queries.checked_mul(d), panel.len()),
        "score_rows_gl: gallery group or query panel shorter than {rows} or {queries} x {d}"
    );
    if valid > 0 {
        let slots = first_row.checked_add(valid - 1).map(|last| last / tokens + 1);
        assert!(
            fits(slots.and_then(|s| s.checked_mul(queries)), tile.len()),
            "score_rows_gl: tile too short for rows {first_row}.. of {tokens}-token images"
        );
    }
    match kernel.simd() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512F detected (the kernel exists); the asserts above bound every access.
        Simd::Avx512 => unsafe {
            x86::avx512_gl(d, gallery, panel, queries, tile, first_row, tokens, valid)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above, with AVX2 and FMA detected.
        Simd::Avx2 => unsafe {
            x86::avx2_gl(d, gallery, panel, queries, tile, first_row, tokens, valid)
        },
        _ => portable_gl(d, gallery, panel, queries, tile, first_row, tokens, valid),
    }
}

/// Queries [`score_rows_direct`] takes at most (one `f32` per lane of a 256-bit vector).
pub const DIRECT_QUERIES: usize = 8;

/// Rows to hand [`score_rows_direct`] at a time when they are widened first: a multiple of the
/// rows it scores together (8), so that no row but the gallery's last few is scored alone.
pub const DIRECT_GROUP_ROWS: usize = 16;

/// The few-query kernel on unpacked `f32` rows, where the CPU has AVX2 and FMA (`None`
/// otherwise: then pack the rows for [`score_rows_gl`]).
///
/// `rows` holds whole rows of `d` values, row-major as the gallery stores them; `panel` a packed
/// panel of `queries` queries (`1 ..= DIRECT_QUERIES`, packed by [`pack_panels`] with
/// `lanes = queries`). Each (row, query) score is the same chain of FMAs over the features as in
/// [`score_rows_gl`] and [`score_rows`], so the same `f32`: the queries run along the vector
/// lanes instead of the rows, and the rows need no transposing copy. Row `r`'s scores are
/// max-reduced into `tile[(first_row + r) / tokens]`, a row of `queries` values (overwritten when
/// `tokens == 1`, as in [`score_rows`]). Returns whether every value of `rows` is finite.
///
/// # Panics
/// If `d` is 0, `rows` is not whole rows, `queries` is 0 or more than `DIRECT_QUERIES`, `panel`
/// is shorter than `d * queries`, `tokens` is 0 or `tile` is too short for the rows.
#[allow(clippy::too_many_arguments)]
pub fn score_rows_direct(
    kernel: Kernel,
    d: usize,
    rows: &[f32],
    panel: &[f32],
    queries: usize,
    tile: &mut [f32],
    first_row: usize,
    tokens: usize,
) -> Option<bool> {
    assert!(
        d > 0 && tokens > 0 && rows.len().is_multiple_of(d),
        "score_rows_direct: bad row shape"
    );
    assert!(
        (1..=DIRECT_QUERIES).contains(&queries) && panel.len() >= d * queries,
        "score_rows_direct: {queries} queries or a panel of {} values for d = {d}",
        panel.len()
    );
    let valid = rows.len() / d;
    if valid > 0 {
        let slots = first_row.checked_add(valid - 1).map(|last| last / tokens + 1);
        assert!(
            slots.and_then(|s| s.checked_mul(queries)).is_some_and(|n| n <= tile.len()),
            "score_rows_direct: tile too short for rows {first_row}.. of {tokens}-token images"
        );
    }
    #[cfg(target_arch = "x86_64")]
    if kernel.simd() != Simd::Portable && Kernel::detect(Simd::Avx2).is_some() {
        // SAFETY: AVX2 and FMA were detected; the asserts above bound every access.
        return Some(unsafe { x86::avx2_direct(d, rows, panel, queries, tile, first_row, tokens) });
    }
    let _ = (kernel, first_row);
    None
}

/// `src` widened exactly to `f32` into `out` (as long as `src`: checked, panics otherwise).
pub fn widen_into(kernel: Kernel, src: Features<'_>, out: &mut [f32]) {
    assert_eq!(src.len(), out.len(), "widen_into: lengths differ");
    if let Features::F32(s) = src {
        out.copy_from_slice(s);
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if kernel.simd() != Simd::Portable {
        // SAFETY: a vector kernel exists only where AVX2 and F16C (or AVX-512F, whose CPUs have
        // both, checked again here) were detected; the lengths are equal.
        if Kernel::detect(Simd::Avx2).is_some() {
            unsafe { x86::widen_avx2(src, out) };
            return;
        }
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = src.get(i);
    }
}

/// Max-reduces the scores of a few-query call (`acc[j][r]`: query `j`, row `r`) into the tile.
#[inline]
fn gl_epilogue<const ROWS: usize>(
    acc: &[[f32; ROWS]],
    tile: &mut [f32],
    first_row: usize,
    tokens: usize,
    valid: usize,
) {
    let queries = acc.len();
    for r in 0..valid {
        let slot = &mut tile[(first_row + r) / tokens * queries..][..queries];
        for (t, row) in slot.iter_mut().zip(acc) {
            *t = if tokens == 1 { row[r] } else { t.max(row[r]) };
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn portable_gl(
    d: usize,
    gallery: &[f32],
    panel: &[f32],
    queries: usize,
    tile: &mut [f32],
    first_row: usize,
    tokens: usize,
    valid: usize,
) {
    const ROWS: usize = PORTABLE_GL_ROWS;
    let mut acc = [[0.0f32; ROWS]; PORTABLE_GL_QUERIES];
    for k in 0..d {
        let g = &gallery[k * ROWS..k * ROWS + ROWS];
        for (j, acc_row) in acc.iter_mut().enumerate().take(queries) {
            let q = panel[k * queries + j];
            for (a, &gv) in acc_row.iter_mut().zip(g) {
                *a = gv.mul_add(q, *a);
            }
        }
    }
    gl_epilogue(&acc[..queries], tile, first_row, tokens, valid);
}

/// For each `lanes`-wide row of `scores`, the bit mask of lanes `l` with `score > bounds[l]`
/// (`false` for NaN). `masks` gets one entry per row.
///
/// # Panics
/// If `lanes` is 0 or over 64, `bounds` is shorter than `lanes`, `scores` is not whole rows or
/// `masks` is shorter than the rows.
pub fn above_masks(
    kernel: Kernel,
    scores: &[f32],
    lanes: usize,
    bounds: &[f32],
    masks: &mut [u64],
) {
    assert!(
        (1..=64).contains(&lanes)
            && bounds.len() >= lanes
            && scores.len().is_multiple_of(lanes)
            && masks.len() >= scores.len() / lanes,
        "above_masks: {} scores, {lanes} lanes, {} bounds, {} masks",
        scores.len(),
        bounds.len(),
        masks.len()
    );
    match (kernel.simd(), lanes) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512F detected; rows of 32 lanes and the lengths were checked above.
        (Simd::Avx512, 32) => unsafe { x86::masks32_avx512(scores, bounds, masks) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 detected (the kernel exists); rows of 16 lanes and the lengths were
        // checked above.
        (Simd::Avx2, 16) => unsafe { x86::masks16_avx2(scores, bounds, masks) },
        _ => {
            for (row, mask) in scores.chunks_exact(lanes).zip(masks.iter_mut()) {
                let mut m = 0u64;
                for (l, (s, b)) in row.iter().zip(bounds).enumerate() {
                    m |= u64::from(s > b) << l;
                }
                *mask = m;
            }
        }
    }
}

/// Calibration: f32 GFLOP/s of a register-resident loop of independent FMAs on one thread,
/// with the widest vectors `kernel` has (the machine's FMA peak per core, for context in reports).
pub fn fma_peak_gflops(kernel: Kernel, iterations: u64) -> f64 {
    let start = std::time::Instant::now();
    let lanes = match kernel.simd() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a `Kernel` holding `Avx512` exists only where AVX-512F was detected.
        Simd::Avx512 => unsafe { x86::fma_loop_avx512(iterations) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above, with AVX2 and FMA detected.
        Simd::Avx2 => unsafe { x86::fma_loop_avx2(iterations) },
        _ => fma_loop_portable(iterations),
    };
    let flops = 2.0 * 16.0 * lanes as f64 * iterations as f64;
    flops / start.elapsed().as_secs_f64() / 1e9
}

fn fma_loop_portable(iterations: u64) -> usize {
    let mut acc = [[0.0f32; 4]; 16];
    let (a, b) = (std::hint::black_box(0.999_f32), std::hint::black_box(1e-3_f32));
    for _ in 0..iterations {
        for row in acc.iter_mut() {
            for v in row.iter_mut() {
                *v = v.mul_add(a, b);
            }
        }
    }
    std::hint::black_box(acc);
    4
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{
        gl_epilogue, Features, AVX2_GL_QUERIES, AVX2_GL_ROWS, AVX2_LANES, AVX2_ROWS,
        AVX512_GL_QUERIES, AVX512_GL_ROWS, AVX512_LANES, AVX512_ROWS, EXP32,
    };

    /// Rows [`avx2_direct`] scores at a time: enough independent FMA chains to hide the FMA
    /// latency, all sharing each load of the queries' values for one feature.
    const DIRECT_ROWS: usize = 8;

    /// [`super::score_rows_direct`] with AVX2 and FMA.
    ///
    /// # Safety
    /// AVX2 and FMA, and the lengths `super::score_rows_direct` asserts.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn avx2_direct(
        d: usize,
        rows: &[f32],
        panel: &[f32],
        queries: usize,
        tile: &mut [f32],
        first_row: usize,
        tokens: usize,
    ) -> bool {
        let valid = rows.len() / d;
        let lanes: [i32; 8] = std::array::from_fn(|l| if l < queries { -1 } else { 0 });
        let mask = _mm256_loadu_si256(lanes.as_ptr().cast());
        let exp = _mm256_set1_epi32(EXP32 as i32);
        let mut bad = _mm256_setzero_si256();
        let mut r = 0;
        while r < valid {
            let block = if valid - r >= DIRECT_ROWS { DIRECT_ROWS } else { 1 };
            // Finiteness, from the rows just read (in L1).
            let span = &rows[r * d..(r + block) * d];
            let whole = span.len() - span.len() % 8;
            for at in (0..whole).step_by(8) {
                let bits = _mm256_and_si256(_mm256_loadu_si256(span.as_ptr().add(at).cast()), exp);
                bad = _mm256_or_si256(bad, _mm256_cmpeq_epi32(bits, exp));
            }
            if !span[whole..].iter().all(|v| v.is_finite()) {
                bad = _mm256_set1_epi32(-1);
            }
            let mut out = [[0.0f32; 8]; DIRECT_ROWS];
            let (g, p) = (rows.as_ptr().add(r * d), panel.as_ptr());
            if block == DIRECT_ROWS {
                direct_rows::<DIRECT_ROWS>(d, g, p, queries, mask, &mut out);
            } else {
                direct_rows::<1>(d, g, p, queries, mask, &mut out);
            }
            for (i, scores) in out.iter().enumerate().take(block) {
                let slot = (first_row + r + i) / tokens * queries;
                for (t, &a) in tile[slot..slot + queries].iter_mut().zip(scores) {
                    *t = if tokens == 1 { a } else { t.max(a) };
                }
            }
            r += block;
        }
        _mm256_testz_si256(bad, bad) == 1
    }

    /// `R` rows of [`avx2_direct`] from `g` (row-major, `d` values each): their scores
    /// against the panel's queries go to `out[i][..queries]`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn direct_rows<const R: usize>(
        d: usize,
        g: *const f32,
        p: *const f32,
        queries: usize,
        mask: __m256i,
        out: &mut [[f32; 8]; DIRECT_ROWS],
    ) {
        let mut acc = [_mm256_setzero_ps(); R];
        for k in 0..d {
            if k % 16 == 0 {
                // The next rows' line at this feature, into L2 only (measured faster than into
                // L1 with 4 queries; a prefetch reads nothing, cannot fault).
                for i in 0..R {
                    _mm_prefetch::<_MM_HINT_T1>(g.wrapping_add((2 * R + i) * d + k).cast());
                }
            }
            // Lanes past `queries` are not read (the masked load) and stay unused.
            let q = _mm256_maskload_ps(p.add(k * queries), mask);
            for (i, a) in acc.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(_mm256_set1_ps(*g.add(i * d + k)), q, *a);
            }
        }
        for (o, a) in out.iter_mut().zip(&acc) {
            _mm256_storeu_ps(o.as_mut_ptr(), *a);
        }
    }

    /// 16 independent zmm FMA chains per iteration; returns the lane count.
    ///
    /// # Safety
    /// The CPU must support AVX-512F (hold a `Kernel` of `Simd::Avx512`).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn fma_loop_avx512(iterations: u64) -> usize {
        let a = _mm512_set1_ps(std::hint::black_box(0.999));
        let b = _mm512_set1_ps(std::hint::black_box(1e-3));
        let mut acc = [_mm512_setzero_ps(); 16];
        for _ in 0..iterations {
            for v in acc.iter_mut() {
                *v = _mm512_fmadd_ps(*v, a, b);
            }
        }
        std::hint::black_box(acc);
        16
    }

    /// 16 independent ymm FMA chains per iteration; returns the lane count.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA (hold a `Kernel` of `Simd::Avx2`).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn fma_loop_avx2(iterations: u64) -> usize {
        let a = _mm256_set1_ps(std::hint::black_box(0.999));
        let b = _mm256_set1_ps(std::hint::black_box(1e-3));
        let mut acc = [_mm256_setzero_ps(); 16];
        for _ in 0..iterations {
            for v in acc.iter_mut() {
                *v = _mm256_fmadd_ps(*v, a, b);
            }
        }
        std::hint::black_box(acc);
        8
    }

    /// `AVX512_ROWS` (12) gallery rows x `AVX512_LANES` (32) queries: 24 zmm accumulators.
    ///
    /// # Safety
    /// The CPU must support AVX-512F, and the slices must be as long as `super::score_rows`
    /// asserts (gallery `ROWS * d`, panel `LANES * d`, tile up to the last image slot written).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn avx512(
        d: usize,
        gallery: &[f32],
        panel: &[f32],
        tile: &mut [f32],
        first_row: usize,
        tokens: usize,
        valid: usize,
    ) {
        const ROWS: usize = AVX512_ROWS;
        const LANES: usize = AVX512_LANES;
        const HALF: usize = LANES / 2; // one zmm register of f32
        let g = gallery.as_ptr();
        let p = panel.as_ptr();
        let mut acc = [[_mm512_setzero_ps(); 2]; ROWS];
        for k in 0..d {
            let q0 = _mm512_loadu_ps(p.add(k * LANES));
            let q1 = _mm512_loadu_ps(p.add(k * LANES + HALF));
            for (r, acc_row) in acc.iter_mut().enumerate() {
                let gv = _mm512_set1_ps(*g.add(k * ROWS + r));
                acc_row[0] = _mm512_fmadd_ps(gv, q0, acc_row[0]);
                acc_row[1] = _mm512_fmadd_ps(gv, q1, acc_row[1]);
            }
        }
        let t = tile.as_mut_ptr();
        let (mut image, mut token) = (first_row / tokens, first_row % tokens);
        for (r, acc_row) in acc.iter().enumerate() {
            if r < valid {
                let slot = t.add(image * LANES);
                token += 1;
                if token == tokens {
                    (image, token) = (image + 1, 0);
                }
                if tokens == 1 {
                    _mm512_storeu_ps(slot, acc_row[0]);
                    _mm512_storeu_ps(slot.add(HALF), acc_row[1]);
                } else {
                    _mm512_storeu_ps(slot, _mm512_max_ps(_mm512_loadu_ps(slot), acc_row[0]));
                    let slot = slot.add(HALF);
                    _mm512_storeu_ps(slot, _mm512_max_ps(_mm512_loadu_ps(slot), acc_row[1]));
                }
            }
        }
    }

    /// `AVX2_ROWS` (6) gallery rows x `AVX2_LANES` (16) queries: 12 ymm accumulators.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA, and the slices must be as long as
    /// `super::score_rows` asserts.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn avx2(
        d: usize,
        gallery: &[f32],
        panel: &[f32],
        tile: &mut [f32],
        first_row: usize,
        tokens: usize,
        valid: usize,
    ) {
        const ROWS: usize = AVX2_ROWS;
        const LANES: usize = AVX2_LANES;
        const HALF: usize = LANES / 2; // one ymm register of f32
        let g = gallery.as_ptr();
        let p = panel.as_ptr();
        let mut acc = [[_mm256_setzero_ps(); 2]; ROWS];
        for k in 0..d {
            let q0 = _mm256_loadu_ps(p.add(k * LANES));
            let q1 = _mm256_loadu_ps(p.add(k * LANES + HALF));
            for (r, acc_row) in acc.iter_mut().enumerate() {
                let gv = _mm256_set1_ps(*g.add(k * ROWS + r));
                acc_row[0] = _mm256_fmadd_ps(gv, q0, acc_row[0]);
                acc_row[1] = _mm256_fmadd_ps(gv, q1, acc_row[1]);
            }
        }
        let t = tile.as_mut_ptr();
        let (mut image, mut token) = (first_row / tokens, first_row % tokens);
        for (r, acc_row) in acc.iter().enumerate() {
            if r < valid {
                let slot = t.add(image * LANES);
                token += 1;
                if token == tokens {
                    (image, token) = (image + 1, 0);
                }
                if tokens == 1 {
                    _mm256_storeu_ps(slot, acc_row[0]);
                    _mm256_storeu_ps(slot.add(HALF), acc_row[1]);
                } else {
                    _mm256_storeu_ps(slot, _mm256_max_ps(_mm256_loadu_ps(slot), acc_row[0]));
                    let slot = slot.add(HALF);
                    _mm256_storeu_ps(slot, _mm256_max_ps(_mm256_loadu_ps(slot), acc_row[1]));
                }
            }
        }
    }
    // ---- packing: 16 x 16 (AVX-512) and 8 x 8 (AVX2) in-register transposes ----------------

    /// Permutation indices for one transpose stage (stride `s`): row `i` (bit `s` clear) takes
    /// `lo`, row `i + s` takes `hi`, from the pair `(row i, row i + s)`.
    const fn stage_index(s: usize, hi: bool) -> [i32; 16] {
        let mut out = [0i32; 16];
        let mut c = 0;
        while c < 16 {
            out[c] = match (c & s == 0, hi) {
                (true, false) => c as i32,
                (false, false) => (16 + c - s) as i32,
                (true, true) => (c + s) as i32,
                (false, true) => (16 + c) as i32,
            };
            c += 1;
        }
        out
    }
    const STAGES: [(usize, [i32; 16], [i32; 16]); 4] = [
        (8, stage_index(8, false), stage_index(8, true)),
        (4, stage_index(4, false), stage_index(4, true)),
        (2, stage_index(2, false), stage_index(2, true)),
        (1, stage_index(1, false), stage_index(1, true)),
    ];

    /// Transposes 16 rows of 16 `f32` in registers: afterwards `v[j][i]` is the old `v[i][j]`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn transpose16(v: &mut [__m512; 16]) {
        for (s, lo, hi) in STAGES {
            let lo = _mm512_loadu_si512(lo.as_ptr().cast());
            let hi = _mm512_loadu_si512(hi.as_ptr().cast());
            for i in 0..16 {
                if i & s == 0 {
                    let (a, b) = (v[i], v[i + s]);
                    v[i] = _mm512_permutex2var_ps(a, lo, b);
                    v[i + s] = _mm512_permutex2var_ps(a, hi, b);
                }
            }
        }
    }

    /// Asks for the cache line holding `src[at]` (a hint: `at` may lie past the end of `src`,
    /// as the next rows of the gallery do; no memory is accessed, so it cannot fault).
    #[inline]
    #[target_feature(enable = "sse")]
    unsafe fn prefetch(src: Features<'_>, at: usize) {
        let p: *const i8 = match src {
            Features::F32(s) => s.as_ptr().wrapping_add(at).cast(),
            Features::F16(s) | Features::Bf16(s) => s.as_ptr().wrapping_add(at).cast(),
        };
        _mm_prefetch::<_MM_HINT_T0>(p);
    }

    /// Rows ahead of the one being packed whose lines are prefetched: the transposing loads
    /// visit 16 rows a line at a time, an order the hardware prefetchers follow poorly.
    const PREFETCH_ROWS: usize = 16;

    /// 16 values from `src[at..]`, widened to `f32`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load16(src: Features<'_>, at: usize) -> __m512 {
        match src {
            Features::F32(s) => _mm512_loadu_ps(s.as_ptr().add(at)),
            Features::F16(s) => _mm512_cvtph_ps(_mm256_loadu_si256(s.as_ptr().add(at).cast())),
            Features::Bf16(s) => {
                let wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(s.as_ptr().add(at).cast()));
                _mm512_castsi512_ps(_mm512_slli_epi32::<16>(wide))
            }
        }
    }

    /// `super::pack_group` for AVX-512: row slabs of 16, 16 features at a time.
    ///
    /// # Safety
    /// AVX-512F, `src.len() == valid * d`, `valid <= rows`, `out.len() == rows * d`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn pack_avx512(
        src: Features<'_>,
        d: usize,
        rows: usize,
        valid: usize,
        out: &mut [f32],
    ) -> bool {
        let exp = _mm512_set1_epi32(EXP32 as i32);
        let mut bad: __mmask16 = 0;
        let o = out.as_mut_ptr();
        let full = d / 16 * 16;
        for slab in (0..rows).step_by(16) {
            let width = (rows - slab).min(16);
            let present = valid.saturating_sub(slab).min(width);
            let mask: __mmask16 = ((1u32 << width) - 1) as __mmask16;
            for k0 in (0..full).step_by(16) {
                let mut v = [_mm512_setzero_ps(); 16];
                // One line per row, PREFETCH_ROWS rows ahead; the next row is d values on.
                let mut ahead = (slab + PREFETCH_ROWS) * d + k0;
                for _ in 0..16 {
                    prefetch(src, ahead);
                    ahead += d;
                }
                for (i, vi) in v.iter_mut().enumerate().take(present) {
                    *vi = load16(src, (slab + i) * d + k0);
                    let bits = _mm512_and_si512(_mm512_castps_si512(*vi), exp);
                    bad |= _mm512_cmpeq_epi32_mask(bits, exp);
                }
                transpose16(&mut v);
                for (j, vj) in v.iter().enumerate() {
                    _mm512_mask_storeu_ps(o.add((k0 + j) * rows + slab), mask, *vj);
                }
            }
            for k in full..d {
                for i in 0..width {
                    let x = if i < present { src.get((slab + i) * d + k) } else { 0.0 };
                    bad |= __mmask16::from(!x.is_finite());
                    *o.add(k * rows + slab + i) = x;
                }
            }
        }
        bad == 0
    }

    /// Transposes 8 rows of 8 `f32` in registers.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn transpose8(v: &mut [__m256; 8]) {
        for i in 0..4 {
            let (a, b) = (v[i], v[i + 4]);
            v[i] = _mm256_permute2f128_ps::<0x20>(a, b);
            v[i + 4] = _mm256_permute2f128_ps::<0x31>(a, b);
        }
        for i in [0, 1, 4, 5] {
            let (a, b) = (v[i], v[i + 2]);
            v[i] = _mm256_shuffle_ps::<0x44>(a, b);
            v[i + 2] = _mm256_shuffle_ps::<0xEE>(a, b);
        }
        for i in [0, 2, 4, 6] {
            let (a, b) = (v[i], v[i + 1]);
            v[i] = _mm256_blend_ps::<0xAA>(a, _mm256_permute_ps::<0xB1>(b));
            v[i + 1] = _mm256_blend_ps::<0xAA>(_mm256_permute_ps::<0xB1>(a), b);
        }
    }

    /// 8 values from `src[at..]`, widened to `f32`.
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn load8(src: Features<'_>, at: usize) -> __m256 {
        match src {
            Features::F32(s) => _mm256_loadu_ps(s.as_ptr().add(at)),
            Features::F16(s) => _mm256_cvtph_ps(_mm_loadu_si128(s.as_ptr().add(at).cast())),
            Features::Bf16(s) => {
                let wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(s.as_ptr().add(at).cast()));
                _mm256_castsi256_ps(_mm256_slli_epi32::<16>(wide))
            }
        }
    }

    /// `super::widen_into` for half precision, 8 values at a time.
    ///
    /// # Safety
    /// AVX2 and F16C; `src.len() == out.len()`.
    #[target_feature(enable = "avx2,f16c")]
    pub(super) unsafe fn widen_avx2(src: Features<'_>, out: &mut [f32]) {
        let whole = out.len() - out.len() % 8;
        for at in (0..whole).step_by(8) {
            _mm256_storeu_ps(out.as_mut_ptr().add(at), load8(src, at));
        }
        for (i, o) in out.iter_mut().enumerate().skip(whole) {
            *o = src.get(i);
        }
    }

    /// `super::pack_group` for AVX2: row slabs of 8, 8 features at a time.
    ///
    /// # Safety
    /// AVX2 and F16C, `src.len() == valid * d`, `valid <= rows`, `out.len() == rows * d`.
    #[target_feature(enable = "avx2,f16c")]
    pub(super) unsafe fn pack_avx2(
        src: Features<'_>,
        d: usize,
        rows: usize,
        valid: usize,
        out: &mut [f32],
    ) -> bool {
        let exp = _mm256_set1_epi32(EXP32 as i32);
        let mut bad = 0i32;
        let o = out.as_mut_ptr();
        let full = d / 8 * 8;
        for slab in (0..rows).step_by(8) {
            let width = (rows - slab).min(8);
            let present = valid.saturating_sub(slab).min(width);
            let lanes: [i32; 8] = std::array::from_fn(|l| if l < width { -1 } else { 0 });
            let mask = _mm256_loadu_si256(lanes.as_ptr().cast());
            for k0 in (0..full).step_by(8) {
                let mut v = [_mm256_setzero_ps(); 8];
                for i in 0..8 {
                    prefetch(src, (slab + i + PREFETCH_ROWS) * d + k0);
                }
                for (i, vi) in v.iter_mut().enumerate().take(present) {
                    *vi = load8(src, (slab + i) * d + k0);
                    let bits = _mm256_and_si256(_mm256_castps_si256(*vi), exp);
                    bad |= _mm256_movemask_epi8(_mm256_cmpeq_epi32(bits, exp));
                }
                transpose8(&mut v);
                for (j, vj) in v.iter().enumerate() {
                    _mm256_maskstore_ps(o.add((k0 + j) * rows + slab), mask, *vj);
                }
            }
            for k in full..d {
                for i in 0..width {
                    let x = if i < present { src.get((slab + i) * d + k) } else { 0.0 };
                    bad |= i32::from(!x.is_finite());
                    *o.add(k * rows + slab + i) = x;
                }
            }
        }
        bad == 0
    }

    // ---- the few-query kernels -------------------------------------------------------------

    /// # Safety
    /// AVX-512F and the lengths `super::score_rows_gl` asserts.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    unsafe fn avx512_gl_n<const P: usize>(
        d: usize,
        gallery: &[f32],
        panel: &[f32],
        tile: &mut [f32],
        first_row: usize,
        tokens: usize,
        valid: usize,
    ) {
        const ROWS: usize = AVX512_GL_ROWS;
        let g = gallery.as_ptr();
        let p = panel.as_ptr();
        let mut acc = [[_mm512_setzero_ps(); 2]; P];
        for k in 0..d {
            let g0 = _mm512_loadu_ps(g.add(k * ROWS));
            let g1 = _mm512_loadu_ps(g.add(k * ROWS + 16));
            for (j, acc_q) in acc.iter_mut().enumerate() {
                let q = _mm512_set1_ps(*p.add(k * P + j));
                acc_q[0] = _mm512_fmadd_ps(g0, q, acc_q[0]);
                acc_q[1] = _mm512_fmadd_ps(g1, q, acc_q[1]);
            }
        }
        let mut out = [[0.0f32; ROWS]; P];
        for (o, a) in out.iter_mut().zip(&acc) {
            _mm512_storeu_ps(o.as_mut_ptr(), a[0]);
            _mm512_storeu_ps(o.as_mut_ptr().add(16), a[1]);
        }
        gl_epilogue(&out, tile, first_row, tokens, valid);
    }

    /// # Safety
    /// AVX-512F and the lengths `super::score_rows_gl` asserts.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn avx512_gl(
        d: usize,
        gallery: &[f32],
        panel: &[f32],
        queries: usize,
        tile: &mut [f32],
        first_row: usize,
        tokens: usize,
        valid: usize,
    ) {
        const _: () = assert!(AVX512_GL_QUERIES == 8);
        let (d, g, p, t, f, n, v) = (d, gallery, panel, tile, first_row, tokens, valid);
        match queries {
            1 => avx512_gl_n::<1>(d, g, p, t, f, n, v),
            2 => avx512_gl_n::<2>(d, g, p, t, f, n, v),
            3 => avx512_gl_n::<3>(d, g, p, t, f, n, v),
            4 => avx512_gl_n::<4>(d, g, p, t, f, n, v),
            5 => avx512_gl_n::<5>(d, g, p, t, f, n, v),
            6 => avx512_gl_n::<6>(d, g, p, t, f, n, v),
            7 => avx512_gl_n::<7>(d, g, p, t, f, n, v),
            _ => avx512_gl_n::<8>(d, g, p, t, f, n, v),
        }
    }

    /// # Safety
    /// AVX2 and FMA, and the lengths `super::score_rows_gl` asserts.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn avx2_gl_n<const P: usize>(
        d: usize,
        gallery: &[f32],
        panel: &[f32],
        tile: &mut [f32],
        first_row: usize,
        tokens: usize,
        valid: usize,
    ) {
        const ROWS: usize = AVX2_GL_ROWS;
        let g = gallery.as_ptr();
        let p = panel.as_ptr();
        let mut acc = [[_mm256_setzero_ps(); 2]; P];
        for k in 0..d {
            let g0 = _mm256_loadu_ps(g.add(k * ROWS));
            let g1 = _mm256_loadu_ps(g.add(k * ROWS + 8));
            for (j, acc_q) in acc.iter_mut().enumerate() {
                let q = _mm256_set1_ps(*p.add(k * P + j));
                acc_q[0] = _mm256_fmadd_ps(g0, q, acc_q[0]);
                acc_q[1] = _mm256_fmadd_ps(g1, q, acc_q[1]);
            }
        }
        let mut out = [[0.0f32; ROWS]; P];
        for (o, a) in out.iter_mut().zip(&acc) {
            _mm256_storeu_ps(o.as_mut_ptr(), a[0]);
            _mm256_storeu_ps(o.as_mut_ptr().add(8), a[1]);
        }
        gl_epilogue(&out, tile, first_row, tokens, valid);
    }

    /// # Safety
    /// AVX2 and FMA, and the lengths `super::score_rows_gl` asserts.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn avx2_gl(
        d: usize,
        gallery: &[f32],
        panel: &[f32],
        queries: usize,
        tile: &mut [f32],
        first_row: usize,
        tokens: usize,
        valid: usize,
    ) {
        const _: () = assert!(AVX2_GL_QUERIES == 4);
        let (d, g, p, t, f, n, v) = (d, gallery, panel, tile, first_row, tokens, valid);
        match queries {
            1 => avx2_gl_n::<1>(d, g, p, t, f, n, v),
            2 => avx2_gl_n::<2>(d, g, p, t, f, n, v),
            3 => avx2_gl_n::<3>(d, g, p, t, f, n, v),
            _ => avx2_gl_n::<4>(d, g, p, t, f, n, v),
        }
    }

    // ---- top-k candidate masks ---------------------------------------------------------------

    /// `super::above_masks` for rows of 32 lanes.
    ///
    /// # Safety
    /// AVX-512F; `scores` whole rows of 32, `bounds` at least 32, `masks` one per row.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn masks32_avx512(scores: &[f32], bounds: &[f32], masks: &mut [u64]) {
        let b0 = _mm512_loadu_ps(bounds.as_ptr());
        let b1 = _mm512_loadu_ps(bounds.as_ptr().add(16));
        for (row, mask) in scores.chunks_exact(32).zip(masks.iter_mut()) {
            let lo = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(_mm512_loadu_ps(row.as_ptr()), b0);
            let hi = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(_mm512_loadu_ps(row.as_ptr().add(16)), b1);
            *mask = u64::from(lo) | (u64::from(hi) << 16);
        }
    }

    /// `super::above_masks` for rows of 16 lanes.
    ///
    /// # Safety
    /// AVX2; `scores` whole rows of 16, `bounds` at least 16, `masks` one per row.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn masks16_avx2(scores: &[f32], bounds: &[f32], masks: &mut [u64]) {
        let b0 = _mm256_loadu_ps(bounds.as_ptr());
        let b1 = _mm256_loadu_ps(bounds.as_ptr().add(8));
        for (row, mask) in scores.chunks_exact(16).zip(masks.iter_mut()) {
            let lo = _mm256_cmp_ps::<_CMP_GT_OQ>(_mm256_loadu_ps(row.as_ptr()), b0);
            let hi = _mm256_cmp_ps::<_CMP_GT_OQ>(_mm256_loadu_ps(row.as_ptr().add(8)), b1);
            let m = (_mm256_movemask_ps(lo) as u32) | ((_mm256_movemask_ps(hi) as u32) << 8);
            *mask = u64::from(m);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn every_kernel_reproduces_the_reference_chain_bit_for_bit() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for kernel in Kernel::available() {
            for &(d, tokens) in &[(1usize, 1usize), (3, 2), (17, 3), (64, 8), (256, 32)] {
                let (rows, lanes) = (kernel.rows(), kernel.lanes());
                let gallery: Vec<f32> =
                    (0..rows * d).map(|_| rng.random_range(-1.0..1.0)).collect();
                let queries: Vec<f32> =
                    (0..lanes * d).map(|_| rng.random_range(-1.0..1.0)).collect();
                let panel = pack_panels(&queries, lanes, d, lanes).unwrap();
                let mut group = vec![0.0; rows * d];
                for first_row in [0, 1, tokens] {
                    for valid in [rows, rows - 1, 1] {
                        let slots = (first_row + rows) / tokens + 1;
                        let mut tile = vec![f32::NEG_INFINITY; slots * lanes];
                        pack_group(
                            kernel,
                            Features::F32(&gallery[..valid * d]),
                            d,
                            rows,
                            &mut group,
                        );
                        score_rows(kernel, d, &group, &panel, &mut tile, first_row, tokens, valid);
                        let want = reference_tile(
                            &gallery[..valid * d],
                            &queries,
                            d,
                            lanes,
                            tokens,
                            first_row,
                            slots,
                        );
                        let same = tile
                            .iter()
                            .zip(&want)
                            .all(|(a, b)| a.to_bits() == b.to_bits() || a == b);
                        assert!(
                            same,
                            "{kernel:?} d={d} tokens={tokens} first_row={first_row} valid={valid}"
                        );
                    }
                }
            }
        }
    }

    /// Random features in every storage format, and their exact `f32` values.
    fn formats(rng: &mut ChaCha8Rng, n: usize) -> (Vec<f32>, Vec<u16>, Vec<u16>) {
        let f32s: Vec<f32> = (0..n).map(|_| rng.random_range(-4.0f32..4.0)).collect();
        let f16s = f32s.iter().map(|&v| half::f16::from_f32(v).to_bits()).collect();
        let bf16s = f32s.iter().map(|&v| half::bf16::from_f32(v).to_bits()).collect();
        (f32s, f16s, bf16s)
    }

    #[test]
    fn every_kernel_packs_every_format_like_the_portable_code() {
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        let portable = Kernel::detect(Simd::Portable).unwrap();
        for kernel in Kernel::available() {
            for rows in [kernel.rows(), kernel.gl_rows(), 5, 16, 17] {
                for d in [1usize, 7, 8, 15, 16, 17, 40, 256] {
                    for valid in [0, 1, rows / 2, rows] {
                        let (f, h, b) = formats(&mut rng, valid * d);
                        for src in [Features::F32(&f), Features::F16(&h), Features::Bf16(&b)] {
                            let mut want = vec![f32::NAN; rows * d];
                            let mut got = vec![f32::NAN; rows * d];
                            assert!(pack_group(portable, src, d, rows, &mut want));
                            assert!(pack_group(kernel, src, d, rows, &mut got));
                            let same =
                                got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
                            assert!(
                                same,
                                "{kernel:?} {} rows={rows} d={d} valid={valid}",
                                src.dtype()
                            );
                            for r in 0..valid {
                                for k in 0..d {
                                    assert_eq!(
                                        want[k * rows + r].to_bits(),
                                        src.get(r * d + k).to_bits()
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn packing_widens_every_half_value_exactly_and_flags_non_finite_ones() {
        let all: Vec<u16> = (0..=u16::MAX).collect();
        let d = 64;
        for kernel in Kernel::available() {
            let rows = kernel.gl_rows();
            for (format, chunk_of) in [("f16", 0), ("bf16", 1)] {
                for chunk in all.chunks(rows * d) {
                    let src =
                        if chunk_of == 0 { Features::F16(chunk) } else { Features::Bf16(chunk) };
                    let mut out = vec![0.0f32; rows * d];
                    let finite = pack_group(kernel, src, d, rows, &mut out);
                    let any_bad = (0..chunk.len()).any(|i| !src.get(i).is_finite());
                    assert_eq!(finite, !any_bad, "{kernel:?} {format}");
                    for (i, &bits) in chunk.iter().enumerate() {
                        let want = if chunk_of == 0 {
                            half::f16::from_bits(bits).to_f32()
                        } else {
                            half::bf16::from_bits(bits).to_f32()
                        };
                        let got = out[(i % d) * rows + i / d];
                        assert!(
                            got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                            "{kernel:?} {format} {bits:#06x}: {got} != {want}"
                        );
                    }
                }
            }
            // One non-finite f32 anywhere in a group is flagged.
            let rows = kernel.rows();
            for at in [0, 5, rows * 17 - 1] {
                let mut values = vec![0.5f32; rows * 17];
                values[at] = f32::INFINITY;
                let mut out = vec![0.0f32; rows * 17];
                assert!(!pack_group(kernel, Features::F32(&values), 17, rows, &mut out));
            }
        }
    }

    /// The tile a kernel call should leave: each of `gallery`'s rows (`first_row..`) against
    /// each of the `width` queries by [`dot_chain`], max-reduced into its image's row of
    /// `slots` rows.
    fn reference_tile(
        gallery: &[f32],
        queries: &[f32],
        d: usize,
        width: usize,
        tokens: usize,
        first_row: usize,
        slots: usize,
    ) -> Vec<f32> {
        let mut want = vec![f32::NEG_INFINITY; slots * width];
        for (r, row) in gallery.chunks_exact(d).enumerate() {
            for (l, query) in queries.chunks_exact(d).take(width).enumerate() {
                let slot = &mut want[(first_row + r) / tokens * width + l];
                *slot = slot.max(dot_chain(row, query));
            }
        }
        want
    }

    #[test]
    fn the_few_query_kernel_reproduces_the_reference_chain_bit_for_bit() {
        let mut rng = ChaCha8Rng::seed_from_u64(13);
        for kernel in Kernel::available() {
            let rows = kernel.gl_rows();
            for queries in 1..=kernel.gl_queries() {
                for &(d, tokens) in &[(1usize, 1usize), (3, 2), (17, 3), (64, 8), (256, 32)] {
                    let gallery: Vec<f32> =
                        (0..rows * d).map(|_| rng.random_range(-1.0..1.0)).collect();
                    let qs: Vec<f32> =
                        (0..queries * d).map(|_| rng.random_range(-1.0..1.0)).collect();
                    let panel = pack_panels(&qs, queries, d, queries).unwrap();
                    let mut group = vec![0.0; rows * d];
                    for first_row in [0, 1, tokens] {
                        for valid in [rows, rows - 1, 1] {
                            let slots = (first_row + rows) / tokens + 1;
                            let mut tile = vec![f32::NEG_INFINITY; slots * queries];
                            let src = Features::F32(&gallery[..valid * d]);
                            pack_group(kernel, src, d, rows, &mut group);
                            score_rows_gl(
                                kernel, d, &group, &panel, queries, &mut tile, first_row, tokens,
                                valid,
                            );
                            let want = reference_tile(
                                &gallery[..valid * d],
                                &qs,
                                d,
                                queries,
                                tokens,
                                first_row,
                                slots,
                            );
                            assert!(
                                tile.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()),
                                "{kernel:?} q={queries} d={d} t={tokens} first={first_row} valid={valid}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn the_direct_few_query_kernel_reproduces_the_reference_chain_bit_for_bit() {
        let mut rng = ChaCha8Rng::seed_from_u64(14);
        let mut ran = false;
        for kernel in Kernel::available() {
            for queries in 1..=DIRECT_QUERIES {
                for &(d, tokens) in &[(1usize, 1usize), (3, 2), (17, 3), (64, 8), (256, 32)] {
                    // Fewer rows than one block of the vector build, several blocks and a rest.
                    for valid in [0usize, 1, 7, 8, 19] {
                        let gallery: Vec<f32> =
                            (0..valid * d).map(|_| rng.random_range(-1.0..1.0)).collect();
                        let qs: Vec<f32> =
                            (0..queries * d).map(|_| rng.random_range(-1.0..1.0)).collect();
                        let panel = pack_panels(&qs, queries, d, queries).unwrap();
                        for first_row in [0, 1, tokens] {
                            let slots = (first_row + valid) / tokens + 1;
                            let mut tile = vec![f32::NEG_INFINITY; slots * queries];
                            let Some(finite) = score_rows_direct(
                                kernel, d, &gallery, &panel, queries, &mut tile, first_row, tokens,
                            ) else {
                                assert_eq!(kernel.simd(), Simd::Portable);
                                continue;
                            };
                            ran = true;
                            assert!(finite);
                            let want = reference_tile(
                                &gallery[..valid * d],
                                &qs,
                                d,
                                queries,
                                tokens,
                                first_row,
                                slots,
                            );
                            assert!(
                                tile.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()),
                                "{kernel:?} q={queries} d={d} t={tokens} first={first_row} valid={valid}"
                            );
                            // A NaN or an infinity anywhere in the rows is reported.
                            if valid > 0 {
                                for bad in [f32::NAN, f32::NEG_INFINITY] {
                                    let mut g = gallery.clone();
                                    let at = rng.random_range(0..g.len());
                                    g[at] = bad;
                                    let mut tile = vec![f32::NEG_INFINITY; slots * queries];
                                    let finite = score_rows_direct(
                                        kernel, d, &g, &panel, queries, &mut tile, first_row,
                                        tokens,
                                    );
                                    assert_eq!(finite, Some(false), "{kernel:?} d={d} at {at}");
                                }
                            }
                        }
                    }
                }
            }
        }
        assert!(ran || Kernel::best().simd() == Simd::Portable);
    }

    #[test]
    fn widening_is_exact_in_every_kernel() {
        let mut rng = ChaCha8Rng::seed_from_u64(15);
        for len in [0usize, 1, 7, 8, 9, 100] {
            let bits: Vec<u16> = (0..len).map(|_| rng.random()).collect();
            for src in [Features::F16(&bits), Features::Bf16(&bits)] {
                for kernel in Kernel::available() {
                    let mut out = vec![0.0f32; len];
                    widen_into(kernel, src, &mut out);
                    for (i, &v) in out.iter().enumerate() {
                        let want = src.get(i);
                        let same = v.to_bits() == want.to_bits() || (v.is_nan() && want.is_nan());
                        assert!(same, "{kernel:?} {} {i}: {v} vs {want}", src.dtype());
                    }
                }
            }
        }
    }

    #[test]
    fn candidate_masks_match_the_scalar_comparison() {
        let mut rng = ChaCha8Rng::seed_from_u64(21);
        let portable = Kernel::detect(Simd::Portable).unwrap();
        for kernel in Kernel::available() {
            for lanes in [1, 4, 8, 16, 32] {
                let scores: Vec<f32> =
                    (0..lanes * 50)
                        .map(|i| {
                            if i % 7 == 0 {
                                f32::NEG_INFINITY
                            } else {
                                rng.random_range(-1.0..1.0)
                            }
                        })
                        .collect();
                let mut bounds: Vec<f32> =
                    (0..lanes).map(|_| rng.random_range(-1.0..1.0)).collect();
                bounds[0] = f32::NEG_INFINITY;
                bounds[lanes - 1] = f32::INFINITY;
                let (mut got, mut want) = (vec![0u64; 50], vec![0u64; 50]);
                above_masks(kernel, &scores, lanes, &bounds, &mut got);
                above_masks(portable, &scores, lanes, &bounds, &mut want);
                assert_eq!(got, want, "{kernel:?} lanes={lanes}");
                for (row, &m) in scores.chunks_exact(lanes).zip(&want) {
                    for l in 0..lanes {
                        assert_eq!(m >> l & 1 == 1, row[l] > bounds[l]);
                    }
                }
            }
        }
    }

    #[test]
    fn packing_is_feature_major_and_zero_padded() {
        let rows: Vec<f32> = (0..6).map(|v| v as f32).collect(); // 3 rows x 2 features
        let packed = pack_panels(&rows, 3, 2, 2).unwrap();
        assert_eq!(packed, vec![0.0, 2.0, 1.0, 3.0, 4.0, 0.0, 5.0, 0.0]);
        assert!(pack_panels(&rows, usize::MAX / 2, 2, 2).is_err());
    }

    #[test]
    fn kernels_come_only_from_detection() {
        assert_eq!(Kernel::detect(Simd::Portable), Some(Kernel::available()[0]));
        for simd in [Simd::Portable, Simd::Avx2, Simd::Avx512] {
            assert_eq!(Kernel::detect(simd).is_some(), simd.is_supported());
        }
        assert!(Kernel::available().contains(&Kernel::best()));
        assert!(Kernel::current() <= Kernel::best());
        assert_eq!(Kernel::available().last(), Some(&Kernel::best()));
    }

    fn call(first_row: usize, tile_len: usize, d: usize, gallery_len: usize) {
        let kernel = Kernel::best();
        let (rows, lanes) = (kernel.rows(), kernel.lanes());
        let gallery = vec![0.0f32; gallery_len];
        let panel = vec![0.0f32; lanes * d];
        let mut tile = vec![0.0f32; tile_len];
        score_rows(kernel, d, &gallery, &panel, &mut tile, first_row, 1, rows);
    }

    #[test]
    fn a_well_sized_call_passes_the_checks() {
        let kernel = Kernel::best();
        call(3, (3 + kernel.rows()) * kernel.lanes(), 4, kernel.rows() * 4);
    }

    #[test]
    #[should_panic(expected = "tile too short")]
    fn a_short_tile_is_refused() {
        let kernel = Kernel::best();
        call(3, (3 + kernel.rows()) * kernel.lanes() - 1, 4, kernel.rows() * 4);
    }

    #[test]
    #[should_panic(expected = "tile too short")]
    fn a_row_offset_that_would_wrap_is_refused() {
        call(usize::MAX - 1, 64, 4, 64);
    }

    #[test]
    #[should_panic(expected = "shorter than")]
    fn a_feature_size_that_would_wrap_is_refused() {
        // rows * d wraps to a small number: the check must not wrap with it.
        let d = usize::MAX / 2 + 1;
        let kernel = Kernel::best();
        let gallery = vec![0.0f32; 64];
        let mut tile = vec![0.0f32; 64 * 64];
        score_rows(kernel, d, &gallery, &gallery, &mut tile, 0, 1, 1);
    }
}
