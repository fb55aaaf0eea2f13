//! Negative sampling from mined bands: a pure function of `(seed, query, epoch)`.
//!
//! Query `q` with band `B` (size `m`) draws, at epoch `e`, `B[perm(e mod m)]` where `perm` is a
//! pseudo-random permutation of `0..m` keyed by `(seed, q, e div m)`. So every query walks its
//! band without repeats until the band is used up, then starts a fresh permutation; and because
//! there is no state, every DataLoader worker and every rank draws the same negatives (the
//! released code's no-repeat history lived in worker copies and did nothing).
//!
//! The permutation is a Fisher-Yates shuffle keyed by `(seed, query, cycle)`, run lazily: only
//! its first `e mod m + 1` steps, with the swaps kept in a small sparse map, so a draw costs
//! O(min(epoch, band size)) time and memory. The map is reserved fallibly up front, and a call
//! draws once per distinct query, so repeating a query in a request costs nothing extra.

use std::collections::HashMap;

use crate::error::{out_of_memory, QureError, Result};
use crate::mining::CsrRef;

/// SplitMix64's finaliser: a strong 64-bit mixer.
#[inline]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn key(seed: u64, query: u64, cycle: u64) -> u64 {
    mix(mix(mix(seed ^ 0x5155_5245_5341_4d50) ^ query) ^ cycle.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// SplitMix64 stream with unbiased bounded draws (Lemire's method).
struct Stream(u64);

impl Stream {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    /// Uniform in `0..n` (n >= 1).
    fn below(&mut self, n: u64) -> u64 {
        let threshold = n.wrapping_neg() % n;
        loop {
            let product = u128::from(self.next()) * u128::from(n);
            if (product as u64) >= threshold {
                return (product >> 64) as u64;
            }
        }
    }
}

/// Position `position` of the uniformly random permutation of `0..n` keyed by `key`
/// (`position < n`). The swap map (two entries per step) is allocated fallibly.
pub fn permuted(n: u64, key: u64, position: u64) -> Result<u64> {
    if position >= n {
        return Err(QureError::invalid(format!("position {position} is outside 0..{n}")));
    }
    let mut rng = Stream(key);
    // Sparse Fisher-Yates: `swaps` holds the slots whose content is no longer their own index.
    let mut swaps: HashMap<u64, u64> = HashMap::new();
    let entries = usize::try_from(position).ok().and_then(|p| p.checked_add(1)?.checked_mul(2));
    let oom = || out_of_memory::<(u64, u64)>("sampler state", &[entries.unwrap_or(usize::MAX)]);
    swaps.try_reserve(entries.ok_or_else(oom)?).map_err(|_| oom())?;
    for i in 0..=position {
        let j = i + rng.below(n - i);
        let vi = swaps.get(&i).copied().unwrap_or(i);
        let vj = swaps.get(&j).copied().unwrap_or(j);
        if i == position {
            return Ok(vj);
        }
        swaps.insert(i, vj);
        swaps.insert(j, vi);
    }
    unreachable!("the loop returns at i == position")
}

/// Positions `start .. start + count` of the permutation of [`permuted`] (`start + count <= n`),
/// in one lazy Fisher-Yates pass.
pub fn permuted_range(n: u64, key: u64, start: u64, count: u64) -> Result<Vec<u64>> {
    let end = start.checked_add(count).filter(|&e| e <= n).ok_or_else(|| {
        QureError::invalid(format!("positions {start}..{start}+{count} are outside 0..{n}"))
    })?;
    let mut out = Vec::new();
    let wanted =
        usize::try_from(count).map_err(|_| out_of_memory::<u64>("draws", &[usize::MAX]))?;
    out.try_reserve_exact(wanted).map_err(|_| out_of_memory::<u64>("draws", &[wanted]))?;
    if count == 0 {
        return Ok(out);
    }
    let mut rng = Stream(key);
    let mut swaps: HashMap<u64, u64> = HashMap::new();
    let entries = usize::try_from(end).ok().and_then(|p| p.checked_mul(2));
    let oom = || out_of_memory::<(u64, u64)>("sampler state", &[entries.unwrap_or(usize::MAX)]);
    swaps.try_reserve(entries.ok_or_else(oom)?).map_err(|_| oom())?;
    for i in 0..end {
        let j = i + rng.below(n - i);
        let vi = swaps.get(&i).copied().unwrap_or(i);
        let vj = swaps.get(&j).copied().unwrap_or(j);
        if i >= start {
            out.push(vj);
        }
        swaps.insert(i, vj);
        swaps.insert(j, vi);
    }
    Ok(out)
}

/// `k` distinct negatives for `query` at `epoch` (fewer, padded with -1, when the band holds
/// fewer than `k`). Each permutation of the band serves `m div k` epochs, `k` fresh items each,
/// so nothing repeats until fewer than `k` unused items are left; then a new permutation
/// starts. With `k = 1` this is [`sample_one`].
pub fn sample_k_one(
    bands: CsrRef<'_>,
    seed: u64,
    query: usize,
    epoch: u64,
    k: usize,
    out: &mut [i64],
) -> Result<()> {
    let band = bands.row(query);
    let m = band.len() as u64;
    out.fill(-1);
    if m == 0 {
        return Ok(());
    }
    let k64 = k as u64;
    let (cycle, start, count) = if k64 >= m {
        (epoch, 0, m)
    } else {
        let per_cycle = m / k64;
        (epoch / per_cycle, (epoch % per_cycle) * k64, k64)
    };
    let drawn = permuted_range(m, key(seed, query as u64, cycle), start, count)?;
    for (slot, position) in out.iter_mut().zip(drawn) {
        *slot = band[position as usize];
    }
    Ok(())
}

/// The negative drawn for `query` at `epoch`, or -1 when its band is empty.
pub fn sample_one(bands: CsrRef<'_>, seed: u64, query: usize, epoch: u64) -> Result<i64> {
    let band = bands.row(query);
    let m = band.len() as u64;
    if m == 0 {
        return Ok(-1);
    }
    Ok(band[permuted(m, key(seed, query as u64, epoch / m), epoch % m)? as usize])
}

/// `k` draws per entry of `queries`, row-major `(len, k)` (see [`sample_k_one`]).
pub fn sample_k(
    bands: CsrRef<'_>,
    seed: u64,
    queries: &[i64],
    epoch: u64,
    k: usize,
) -> Result<Vec<i64>> {
    if k == 0 {
        return Err(QureError::invalid("k must be at least 1"));
    }
    check_bands(bands, queries)?;
    let total = queries
        .len()
        .checked_mul(k)
        .ok_or_else(|| out_of_memory::<i64>("draws", &[queries.len(), k]))?;
    let mut out = Vec::new();
    out.try_reserve_exact(total).map_err(|_| out_of_memory::<i64>("draws", &[queries.len(), k]))?;
    out.resize(total, -1);
    for (row, &q) in out.chunks_exact_mut(k).zip(queries) {
        sample_k_one(bands, seed, q as usize, epoch, k, row)?;
    }
    Ok(out)
}

fn check_bands(bands: CsrRef<'_>, queries: &[i64]) -> Result<()> {
    let n = bands.indptr.len().saturating_sub(1);
    if bands.indptr.first() != Some(&0)
        || bands.indptr.last().copied() != Some(bands.indices.len() as i64)
        || bands.indptr.windows(2).any(|w| w[0] > w[1])
    {
        return Err(QureError::invalid("bands have inconsistent row offsets"));
    }
    if let Some(&q) = queries.iter().find(|&&q| q < 0 || q as u64 >= n as u64) {
        return Err(QureError::invalid(format!("query {q} is out of range for {n} queries")));
    }
    Ok(())
}

/// One draw per entry of `queries` (see the module docs).
pub fn sample(bands: CsrRef<'_>, seed: u64, queries: &[i64], epoch: u64) -> Result<Vec<i64>> {
    check_bands(bands, queries)?;
    // Draw once per distinct query (a draw costs up to the band size), in query order.
    let mut order: Vec<usize> = (0..queries.len()).collect();
    order.sort_unstable_by_key(|&i| queries[i]);
    let mut out = vec![-1i64; queries.len()];
    let mut previous: Option<(i64, i64)> = None;
    for i in order {
        let q = queries[i];
        out[i] = match previous {
            Some((p, drawn)) if p == q => drawn,
            _ => sample_one(bands, seed, q as usize, epoch)?,
        };
        previous = Some((q, out[i]));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutations_are_bijections() {
        for n in [1u64, 2, 3, 5, 16, 17, 100, 1000] {
            for k in 0..3 {
                let mut seen = vec![false; n as usize];
                for i in 0..n {
                    let y = permuted(n, mix(k), i).unwrap() as usize;
                    assert!(!seen[y], "n={n}");
                    seen[y] = true;
                }
            }
        }
    }

    #[test]
    fn no_repeats_until_the_band_is_used_up() {
        let indptr = [0i64, 5, 5, 12];
        let indices: Vec<i64> = (100..112).collect();
        let bands = CsrRef { indptr: &indptr, indices: &indices };
        for query in [0usize, 2] {
            let m = bands.row(query).len() as u64;
            for cycle in 0..4 {
                let mut drawn: Vec<i64> = (cycle * m..(cycle + 1) * m)
                    .map(|e| sample_one(bands, 7, query, e).unwrap())
                    .collect();
                drawn.sort_unstable();
                assert_eq!(drawn, bands.row(query));
            }
        }
        assert_eq!(sample_one(bands, 7, 1, 3), Ok(-1));
        assert!(sample(bands, 7, &[3], 0).is_err());
        // A batch is each query's own draw, repeats included.
        let batch = sample(bands, 7, &[2, 0, 2, 1, 0], 9).unwrap();
        let one = |q| sample_one(bands, 7, q, 9).unwrap();
        assert_eq!(batch, vec![one(2), one(0), one(2), -1, one(0)]);
    }

    #[test]
    fn draws_are_roughly_uniform_over_seeds() {
        let indptr = [0i64, 10];
        let indices: Vec<i64> = (0..10).collect();
        let bands = CsrRef { indptr: &indptr, indices: &indices };
        let mut counts = [0u32; 10];
        for seed in 0..20_000u64 {
            counts[sample_one(bands, seed, 0, 0).unwrap() as usize] += 1;
        }
        // Chi-square with 9 degrees of freedom: 99.9% quantile is 27.9.
        let expected = 2000.0;
        let chi2: f64 = counts.iter().map(|&c| (f64::from(c) - expected).powi(2) / expected).sum();
        assert!(chi2 < 27.9, "{counts:?} chi2={chi2}");
    }

    #[test]
    fn k_draws_are_distinct_and_extend_single_draws() {
        let indptr = [0i64, 7, 7, 9];
        let indices: Vec<i64> = (100..109).collect();
        let bands = CsrRef { indptr: &indptr, indices: &indices };
        for epoch in 0..20u64 {
            // k = 1 is the single draw.
            for q in 0..3 {
                let mut one = [0i64];
                sample_k_one(bands, 3, q, epoch, 1, &mut one).unwrap();
                assert_eq!(one[0], sample_one(bands, 3, q, epoch).unwrap());
            }
            // k = 3 of 7: three distinct band items per epoch; two epochs per permutation use
            // six distinct items.
            let mut row = [0i64; 3];
            sample_k_one(bands, 3, 0, epoch, 3, &mut row).unwrap();
            let mut sorted = row.to_vec();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), 3);
            assert!(row.iter().all(|x| bands.row(0).contains(x)));
            if epoch % 2 == 0 {
                let mut next = [0i64; 3];
                sample_k_one(bands, 3, 0, epoch + 1, 3, &mut next).unwrap();
                assert!(next.iter().all(|x| !row.contains(x)), "no repeats within a permutation");
            }
            // More than the band: the whole band, then -1.
            let mut wide = [0i64; 4];
            sample_k_one(bands, 3, 2, epoch, 4, &mut wide).unwrap();
            assert_eq!(wide[2..], [-1, -1]);
            let mut both = wide[..2].to_vec();
            both.sort_unstable();
            assert_eq!(both, vec![107, 108]);
        }
        assert!(sample_k(bands, 3, &[0], 0, 0).is_err());
        assert_eq!(sample_k(bands, 3, &[1], 0, 2).unwrap(), vec![-1, -1]);
        assert_eq!(permuted_range(5, 9, 1, 3).unwrap()[0], permuted(5, 9, 1).unwrap());
        assert!(permuted_range(5, 9, 4, 2).is_err());
    }

    #[test]
    fn sampler_state_is_bounded_and_fallible() {
        assert!(permuted(5, 1, 5).is_err());
        // A position no map can hold is an error, not an abort.
        let err = permuted(u64::MAX, 1, u64::MAX - 1).unwrap_err();
        assert!(matches!(err, QureError::OutOfMemory { what: "sampler state", .. }), "{err}");
    }
}
