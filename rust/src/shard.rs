//! The rank-local half of sharded mining: what one gallery shard knows of each query's tail.
//!
//! With the gallery split over ranks, the `max_rank` rule only ever looks at each query's first
//! `M` items after its target. Each rank scores every query against its shard and keeps, per
//! query, how many of its items rank above the target and its `M` best items ranked after it
//! ([`tail_candidates`]); the union over shards holds the global first `M`, and
//! [`crate::Miner::mine_tails`] mines them exactly as the whole score row would be mined.
//! Ranking is by [`rank_key`] with global gallery indices, the order every miner uses.

use rayon::prelude::*;

use crate::error::{try_filled, try_reserve, QureError, Result};
use crate::keys::{key_index, key_score, rank_key};
use crate::score::{Gallery, Queries, Scorer};
use crate::threads;

/// Score-matrix bytes held at once.
const BLOCK_BYTES: usize = 64 << 20;

/// Per query, what one gallery shard holds of its tail.
#[derive(Clone, Debug, PartialEq)]
pub struct TailCandidates {
    /// `(Q,)` items of the shard ranked above the query's target.
    pub above: Vec<i64>,
    /// `(Q, width)` global indices of the shard's best items ranked after the target, best
    /// first, `-1` past the end.
    pub items: Vec<i64>,
    /// `(Q, width)` their scores (`0` past the end).
    pub scores: Vec<f32>,
    /// Candidates per query: `min(M, items in the shard)`.
    pub width: usize,
}

/// Scores `queries` against the shard `shard` (global gallery items `first_item ..` of
/// `n_gallery`) and keeps, per query, the count of shard items ranked above its target and the
/// shard's `m` best items ranked after it. `targets` are global gallery indices and
/// `target_scores` the targets' scores (from whichever shard holds them); the target itself is
/// never a candidate.
#[allow(clippy::too_many_arguments)]
pub fn tail_candidates(
    queries: Queries<'_>,
    shard: Gallery<'_>,
    first_item: usize,
    n_gallery: usize,
    targets: &[i64],
    target_scores: &[f32],
    m: usize,
    block_rows: Option<usize>,
) -> Result<TailCandidates> {
    let q = queries.rows;
    if targets.len() != q || target_scores.len() != q {
        return Err(QureError::invalid(format!(
            "targets ({}) and target scores ({}) must have one entry per query ({q})",
            targets.len(),
            target_scores.len()
        )));
    }
    if m == 0 {
        return Err(QureError::invalid("max_rank must be at least 1"));
    }
    if block_rows == Some(0) {
        return Err(QureError::invalid("block_size must be at least 1"));
    }
    if n_gallery > u32::MAX as usize {
        return Err(QureError::invalid(format!(
            "galleries of more than {} items are not supported (got {n_gallery})",
            u32::MAX
        )));
    }
    if first_item.checked_add(shard.items).is_none_or(|end| end > n_gallery) {
        return Err(QureError::invalid(format!(
            "the shard's items {first_item}..{} are not inside the gallery of {n_gallery}",
            first_item.saturating_add(shard.items)
        )));
    }
    if let Some((i, &t)) =
        targets.iter().enumerate().find(|&(_, &t)| t < 0 || t as u64 >= n_gallery as u64)
    {
        return Err(QureError::invalid(format!(
            "target_idx[{i}] = {t} is out of range for a gallery of {n_gallery} items"
        )));
    }
    if let Some(i) = target_scores.iter().position(|v| !v.is_finite()) {
        return Err(QureError::NonFinite { what: "target scores", row: i, col: 0 });
    }
    let n = shard.items;
    let width = m.min(n);
    let mut out = TailCandidates {
        above: try_filled("candidate counts", &[q], 0i64)?,
        items: try_filled("tail candidates", &[q, width], -1i64)?,
        scores: try_filled("tail candidate scores", &[q, width], 0f32)?,
        width,
    };
    if n == 0 || q == 0 {
        return Ok(out);
    }
    let scorer = Scorer::new(queries, shard)?;
    let rows_per_block = block_rows.unwrap_or(BLOCK_BYTES / 4 / n).clamp(1, q);
    for first in (0..q).step_by(rows_per_block) {
        let last = (first + rows_per_block).min(q);
        let block = scorer.score_rows(first..last)?;
        let span = first * width..last * width;
        let result: Result<()> = threads::install(|| {
            block
                .par_chunks(n)
                .zip(out.above[first..last].par_iter_mut())
                .zip(out.items[span.clone()].par_chunks_mut(width.max(1)))
                .zip(out.scores[span.clone()].par_chunks_mut(width.max(1)))
                .enumerate()
                .try_for_each_init(Vec::new, |keys, (r, (((row, above), items), scores))| {
                    let query = first + r;
                    let target = targets[query];
                    let target_key = rank_key(target_scores[query], target as u32);
                    keys.clear(); // room for the whole row once per thread, then reused
                    try_reserve(keys, n, "tail candidates", &[n])?;
                    let mut count = 0i64;
                    for (j, &v) in row.iter().enumerate() {
                        let item = first_item + j;
                        if !v.is_finite() {
                            return Err(QureError::NonFinite {
                                what: "scores",
                                row: query,
                                col: item,
                            });
                        }
                        if item as i64 == target {
                            continue;
                        }
                        let key = rank_key(v, item as u32);
                        if key < target_key {
                            count += 1;
                        } else {
                            keys.push(key);
                        }
                    }
                    *above = count;
                    if keys.len() > width {
                        keys.select_nth_unstable(width - 1);
                        keys.truncate(width);
                    }
                    keys.sort_unstable();
                    for ((slot, value), &key) in
                        items.iter_mut().zip(scores.iter_mut()).zip(keys.iter())
                    {
                        *slot = i64::from(key_index(key));
                        *value = key_score(key);
                    }
                    Ok(())
                })
        });
        result?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::Features;
    use crate::mining::{mine_negatives, CsrRef, Exclusions, MineOptions, Miner, Pairing};
    use crate::score::score;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Splits the gallery into `shards`, gathers each shard's candidates and mines the merged
    /// tails: the bands must equal those mined from the whole score matrix.
    fn check(seed: u64, shards: usize, max_rank: usize, extras: bool) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (q, n, t, d) = (rng.random_range(1..9), rng.random_range(2..60), 2, 3);
        // Coarse values: many exact ties between items.
        let mut coarse = |len: usize| -> Vec<f32> {
            (0..len).map(|_| f32::from(rng.random_range(-2i8..3)) * 0.5).collect()
        };
        let queries = coarse(q * d);
        let gallery = coarse(n * t * d);
        let targets: Vec<i64> = (0..q).map(|_| rng.random_range(0..n as i64)).collect();
        let query_view = Queries { data: &queries, rows: q, dim: d };
        let whole = Gallery { data: Features::F32(&gallery), items: n, tokens: t, dim: d };
        let scores = score(query_view, whole).unwrap();
        let positives_indptr: Vec<i64> = (0..=q as i64).map(|i| i * 2).collect();
        let positives: Vec<i64> = (0..2 * q).map(|_| rng.random_range(0..n as i64)).collect();
        let ids: Vec<i64> = (0..n).map(|_| rng.random_range(0..n as i64 / 2 + 1)).collect();
        let exclusions = if extras {
            Exclusions {
                positives: Some(CsrRef { indptr: &positives_indptr, indices: &positives }),
                gallery_ids: Some(&ids),
            }
        } else {
            Exclusions::default()
        };
        let options = MineOptions {
            consecutive_threshold: rng.random_range(0..3),
            pairing: if rng.random_bool(0.5) { Pairing::Consecutive } else { Pairing::Anchored },
            max_rank: Some(max_rank),
        };
        let expected = mine_negatives(&scores, n, &targets, options, exclusions).unwrap();

        let target_scores: Vec<f32> = (0..q).map(|i| scores[i * n + targets[i] as usize]).collect();
        let (mut above, mut items, mut values) = (vec![0i64; q], vec![], vec![]);
        let mut per_shard = vec![];
        for s in 0..shards {
            let (lo, hi) = (s * n / shards, (s + 1) * n / shards);
            let part = Gallery {
                data: Features::F32(&gallery[lo * t * d..hi * t * d]),
                items: hi - lo,
                tokens: t,
                dim: d,
            };
            let block = Some(rng.random_range(1..4));
            let c =
                tail_candidates(query_view, part, lo, n, &targets, &target_scores, max_rank, block)
                    .unwrap();
            per_shard.push(c);
        }
        let width: usize = per_shard.iter().map(|c| c.width).sum();
        for (i, total) in above.iter_mut().enumerate() {
            for c in &per_shard {
                *total += c.above[i];
                items.extend_from_slice(&c.items[i * c.width..(i + 1) * c.width]);
                values.extend_from_slice(&c.scores[i * c.width..(i + 1) * c.width]);
            }
        }
        let miner = Miner::new(n, &targets, options, exclusions).unwrap();
        let got = miner.mine_tails(&above, &target_scores, &items, &values, width).unwrap();
        assert_eq!(got, expected, "seed {seed}, {shards} shards, max_rank {max_rank}");
    }

    #[test]
    fn merged_shard_tails_mine_like_the_whole_matrix() {
        for seed in 0..300 {
            let shards = 1 + (seed as usize % 4);
            let max_rank = 1 + (seed as usize * 7) % 70;
            check(seed, shards, max_rank, seed % 2 == 1);
        }
    }

    #[test]
    fn bad_input_is_an_error() {
        let queries = [1.0f32, 0.0];
        let gallery = [1.0f32, 0.0, 0.0, 1.0];
        let q = Queries { data: &queries, rows: 1, dim: 2 };
        let g = Gallery { data: Features::F32(&gallery), items: 2, tokens: 1, dim: 2 };
        assert!(tail_candidates(q, g, 0, 2, &[0], &[1.0], 0, None).is_err());
        assert!(tail_candidates(q, g, 1, 2, &[0], &[1.0], 1, None).is_err());
        assert!(tail_candidates(q, g, 0, 2, &[2], &[1.0], 1, None).is_err());
        assert!(tail_candidates(q, g, 0, 2, &[0], &[f32::NAN], 1, None).is_err());
        assert!(tail_candidates(q, g, 0, 2, &[0], &[1.0], 1, Some(0)).is_err());
        let miner = Miner::new(2, &[0], MineOptions::default(), Exclusions::default()).unwrap();
        assert!(miner.mine_tails(&[2], &[1.0], &[1], &[0.0], 1).is_err());
        assert!(miner.mine_tails(&[0], &[1.0], &[5], &[0.0], 1).is_err());
        assert!(miner.mine_tails(&[0], &[1.0], &[1], &[f32::INFINITY], 1).is_err());
        assert!(miner.mine_tails(&[0], &[1.0], &[1, 1], &[0.0], 1).is_err());
        assert!(miner.mine_tails(&[0], &[], &[1], &[0.0], 1).is_err());
        let ok = miner.mine_tails(&[0], &[1.0], &[1], &[0.0], 1).unwrap();
        assert_eq!(ok.target_rank, vec![0]);
    }
}
