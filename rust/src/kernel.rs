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
//! sizes or the thread count.

use std::sync::OnceLock;

/// The instruction set a kernel uses.
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
            Simd::Avx512 => 12,
            Simd::Avx2 => 6,
            Simd::Portable => 4,
        }
    }

    /// Queries per packed panel.
    pub fn lanes(self) -> usize {
        match self {
            Simd::Avx512 => 32,
            Simd::Avx2 => 16,
            Simd::Portable => 8,
        }
    }

    /// The best kernel this CPU runs.
    pub fn best_available() -> Simd {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") {
                return Simd::Avx512;
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Simd::Avx2;
            }
        }
        Simd::Portable
    }

    /// Every kernel this CPU runs.
    pub fn available() -> Vec<Simd> {
        let best = Simd::best_available();
        [Simd::Portable, Simd::Avx2, Simd::Avx512].into_iter().filter(|&s| s <= best).collect()
    }

    /// The kernel in use: the best available, capped by `QURE_SIMD` (`portable`, `avx2`,
    /// `avx512`) when set.
    pub fn current() -> Simd {
        static CURRENT: OnceLock<Simd> = OnceLock::new();
        *CURRENT.get_or_init(|| {
            let best = Simd::best_available();
            let cap = match std::env::var("QURE_SIMD").as_deref() {
                Ok("portable") | Ok("scalar") => Simd::Portable,
                Ok("avx2") => Simd::Avx2,
                _ => Simd::Avx512,
            };
            best.min(cap)
        })
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

/// Packs `n` rows of `d` features into panels of `lanes` queries, feature-major:
/// `out[p][k][l] = rows[p * lanes + l][k]`, zero past the last row.
pub fn pack_panels(rows: &[f32], n: usize, d: usize, lanes: usize) -> Vec<f32> {
    let panels = n.div_ceil(lanes);
    let mut out = vec![0.0f32; panels * d * lanes];
    for (i, row) in rows.chunks_exact(d).take(n).enumerate() {
        let base = (i / lanes) * d * lanes + i % lanes;
        for (k, &v) in row.iter().enumerate() {
            out[base + k * lanes] = v;
        }
    }
    out
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
/// `gallery` holds `simd.rows()` rows of `d` features packed by [`pack_group`],
/// `panel` a packed panel of `simd.lanes()` queries. For each of the first `valid` rows `r`, the
/// scores of row `first_row + r` are max-reduced into `tile[(first_row + r) / tokens]`, a row of
/// `lanes` values.
///
/// # Panics
/// If the slices are shorter than the call needs.
#[allow(clippy::too_many_arguments)]
pub fn score_rows(
    simd: Simd,
    d: usize,
    gallery: &[f32],
    panel: &[f32],
    tile: &mut [f32],
    first_row: usize,
    tokens: usize,
    valid: usize,
) {
    let (rows, lanes) = (simd.rows(), simd.lanes());
    assert!(gallery.len() >= rows * d && panel.len() >= lanes * d && valid <= rows && tokens > 0);
    assert!(valid == 0 || tile.len() >= ((first_row + valid - 1) / tokens + 1) * lanes);
    match simd {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU supports the instructions (`Simd::available`), and the asserts above
        // bound every access the kernel makes.
        Simd::Avx512 => unsafe { x86::avx512(d, gallery, panel, tile, first_row, tokens, valid) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
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
    const ROWS: usize = 4;
    const LANES: usize = 8;
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
/// with the widest vectors `simd` has (the machine's FMA peak per core, for context in reports).
pub fn fma_peak_gflops(simd: Simd, iterations: u64) -> f64 {
    let start = std::time::Instant::now();
    let lanes = match simd {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU supports the instructions (`Simd::available`).
        Simd::Avx512 => unsafe { x86::fma_loop_avx512(iterations) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
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

    /// 16 independent zmm FMA chains per iteration; returns the lane count.
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

    /// 12 gallery rows x 32 queries: 24 zmm accumulators.
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
        const ROWS: usize = 12;
        let g = gallery.as_ptr();
        let p = panel.as_ptr();
        let mut acc = [[_mm512_setzero_ps(); 2]; ROWS];
        for k in 0..d {
            let q0 = _mm512_loadu_ps(p.add(k * 32));
            let q1 = _mm512_loadu_ps(p.add(k * 32 + 16));
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
                let slot = t.add(image * 32);
                token += 1;
                if token == tokens {
                    (image, token) = (image + 1, 0);
                }
                _mm512_storeu_ps(slot, _mm512_max_ps(_mm512_loadu_ps(slot), acc_row[0]));
                let slot = slot.add(16);
                _mm512_storeu_ps(slot, _mm512_max_ps(_mm512_loadu_ps(slot), acc_row[1]));
            }
        }
    }

    /// 6 gallery rows x 16 queries: 12 ymm accumulators.
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
        const ROWS: usize = 6;
        let g = gallery.as_ptr();
        let p = panel.as_ptr();
        let mut acc = [[_mm256_setzero_ps(); 2]; ROWS];
        for k in 0..d {
            let q0 = _mm256_loadu_ps(p.add(k * 16));
            let q1 = _mm256_loadu_ps(p.add(k * 16 + 8));
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
                let slot = t.add(image * 16);
                token += 1;
                if token == tokens {
                    (image, token) = (image + 1, 0);
                }
                _mm256_storeu_ps(slot, _mm256_max_ps(_mm256_loadu_ps(slot), acc_row[0]));
                let slot = slot.add(8);
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
        for simd in Simd::available() {
            for &(d, tokens) in &[(1usize, 1usize), (3, 2), (17, 3), (64, 8), (256, 32)] {
                let (rows, lanes) = (simd.rows(), simd.lanes());
                let gallery: Vec<f32> =
                    (0..rows * d).map(|_| rng.random_range(-1.0..1.0)).collect();
                let queries: Vec<f32> =
                    (0..lanes * d).map(|_| rng.random_range(-1.0..1.0)).collect();
                let panel = pack_panels(&queries, lanes, d, lanes);
                let mut group = vec![0.0; rows * d];
                for first_row in [0, 1, tokens] {
                    for valid in [rows, rows - 1, 1] {
                        let slots = (first_row + rows) / tokens + 1;
                        let mut tile = vec![f32::NEG_INFINITY; slots * lanes];
                        pack_group(&gallery[..valid * d], d, rows, &mut group);
                        score_rows(simd, d, &group, &panel, &mut tile, first_row, tokens, valid);
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
                            "{simd:?} d={d} tokens={tokens} first_row={first_row} valid={valid}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn packing_is_feature_major_and_zero_padded() {
        let rows: Vec<f32> = (0..6).map(|v| v as f32).collect(); // 3 rows x 2 features
        let packed = pack_panels(&rows, 3, 2, 2);
        assert_eq!(packed, vec![0.0, 2.0, 1.0, 3.0, 4.0, 0.0, 5.0, 0.0]);
    }
}

#[cfg(test)]
mod timing {
    use super::*;

    #[test]
    #[ignore]
    fn kernel_in_cache_throughput() {
        let simd = Simd::best_available();
        let (rows, lanes, d) = (simd.rows(), simd.lanes(), 256);
        let group = vec![0.5f32; rows * d];
        let panel = vec![0.25f32; lanes * d];
        let mut tile = vec![f32::NEG_INFINITY; (rows + 2) * lanes];
        let calls = 200_000;
        let start = std::time::Instant::now();
        for i in 0..calls {
            score_rows(simd, d, &group, &panel, &mut tile, i % 2, 1, rows);
        }
        let secs = start.elapsed().as_secs_f64();
        let gflops = 2.0 * (rows * lanes * d * calls) as f64 / secs / 1e9;
        let peak = fma_peak_gflops(simd, 100_000_000);
        eprintln!(
            "{simd:?}: kernel {gflops:.1} GFLOP/s, peak {peak:.1} ({:.0}%)",
            gflops / peak * 100.0
        );
    }
}
