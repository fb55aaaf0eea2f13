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
//! Soundness: the SIMD kernels are `unsafe` (`target_feature`) and private. Safe code reaches them
//! only through [`score_rows`] and [`fma_peak_gflops`], which take a [`Kernel`], a value that
//! only run-time CPU detection creates, and which check every slice length with checked
//! arithmetic before the first instruction runs.

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

    /// Whether this CPU runs the instructions (run-time detection).
    pub fn is_supported(self) -> bool {
        match self {
            Simd::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
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

/// Packs up to `rows` gallery rows of `d` features feature-major for a kernel call:
/// `out[k * rows + r] = group[r][k]`, zero past the last row.
pub fn pack_group(group: &[f32], d: usize, rows: usize, out: &mut [f32]) {
    let valid = group.len() / d;
    debug_assert!(valid <= rows && out.len() == rows * d);
    for k in 0..d {
        for r in 0..rows {
            out[k * rows + r] = if r < valid { group[r * d + k] } else { 0.0 };
        }
    }
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
/// row of `lanes` values.
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
            *t = t.max(a);
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

    use super::{AVX2_LANES, AVX2_ROWS, AVX512_LANES, AVX512_ROWS};

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
                _mm512_storeu_ps(slot, _mm512_max_ps(_mm512_loadu_ps(slot), acc_row[0]));
                let slot = slot.add(HALF);
                _mm512_storeu_ps(slot, _mm512_max_ps(_mm512_loadu_ps(slot), acc_row[1]));
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
                _mm256_storeu_ps(slot, _mm256_max_ps(_mm256_loadu_ps(slot), acc_row[0]));
                let slot = slot.add(HALF);
                _mm256_storeu_ps(slot, _mm256_max_ps(_mm256_loadu_ps(slot), acc_row[1]));
            }
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
                        pack_group(&gallery[..valid * d], d, rows, &mut group);
                        score_rows(kernel, d, &group, &panel, &mut tile, first_row, tokens, valid);
                        let mut want = vec![f32::NEG_INFINITY; slots * lanes];
                        for r in 0..valid {
                            for l in 0..lanes {
                                let s = dot_chain(
                                    &gallery[r * d..(r + 1) * d],
                                    &queries[l * d..(l + 1) * d],
                                );
                                let slot = &mut want[(first_row + r) / tokens * lanes + l];
                                *slot = slot.max(s);
                            }
                        }
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

#[cfg(test)]
mod timing {
    use super::*;

    #[test]
    #[ignore]
    fn kernel_in_cache_throughput() {
        let kernel = Kernel::best();
        let (rows, lanes, d) = (kernel.rows(), kernel.lanes(), 256);
        let group = vec![0.5f32; rows * d];
        let panel = vec![0.25f32; lanes * d];
        let mut tile = vec![f32::NEG_INFINITY; (rows + 2) * lanes];
        let calls = 200_000;
        let start = std::time::Instant::now();
        for i in 0..calls {
            score_rows(kernel, d, &group, &panel, &mut tile, i % 2, 1, rows);
        }
        let secs = start.elapsed().as_secs_f64();
        let gflops = 2.0 * (rows * lanes * d * calls) as f64 / secs / 1e9;
        let peak = fma_peak_gflops(kernel, 100_000_000);
        eprintln!(
            "{kernel:?}: kernel {gflops:.1} GFLOP/s, peak {peak:.1} ({:.0}%)",
            gflops / peak * 100.0
        );
    }
}
