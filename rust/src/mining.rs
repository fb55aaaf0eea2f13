//! Two-steep-drop hard-negative mining (QuRe, ICML 2025), exact and parallel over queries.
//!
//! The rule, per query (score row `s`, annotated target `t`):
//! 1. Rank the gallery by score descending, ties by ascending index; `p` is the target's rank.
//! 2. The tail is everything ranked after `p` (at most `max_rank` items when given). Drop `j` is
//!    `s(tail[j + 1]) - s(tail[j])`, in `f32`.
//! 3. Order drops steepest first, ties by position: `o_0, o_1, ...`.
//!    * consecutive pairing: the first pair `(o_k, o_k+1)` more than `threshold` apart;
//!    * anchored pairing: `o_0` with the first `o_k` more than `threshold` away from it.
//! 4. With `a < b` the chosen positions, the band is `tail[a + 1 ..= b]` in rank order; when no
//!    pair qualifies the band is empty.
//! 5. Known positives and duplicates of the target (or of a positive), and repeated ids, are
//!    then removed, keeping rank order.
//!
//! The fast path never sorts the tail. It buckets the tail's scores (as the linear-time maximum
//! gap algorithm does): every drop inside a bucket is no steeper than the widest bucket's own
//! spread, so the drops between buckets that are steeper than that spread are, exactly, the
//! steepest drops of the whole tail. Only the band is then sorted. When the rule needs a drop
//! this certificate cannot order (heavy ties, large thresholds), the row falls back to a full
//! sort, so the result is always the exact rule.

use std::collections::HashSet;

use rayon::prelude::*;

use crate::error::{out_of_memory, try_refill, try_reserve, QureError, Result};
use crate::keys::{drop_key, f32_to_ordered, key_index, key_score, rank_key};
use crate::rowpass::{RowPasses, KEY_SLACK};
use crate::strategy::{
    filtered, pick_key, simans_key, unit, Candidates, Pick, Reference, Removed, Spec,
};
use crate::threads;

/// How the two steep drops are paired.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Pairing {
    /// Scan `(o_0, o_1), (o_1, o_2), ...` (the released training code).
    #[default]
    Consecutive,
    /// Pair `o_0` with the first `o_k` far enough from it (closer to the paper's Eq. 6-7).
    Anchored,
}

/// Settings of the mining rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MineOptions {
    /// The two drops must be more than this many positions apart.
    pub consecutive_threshold: usize,
    /// How drops are paired.
    pub pairing: Pairing,
    /// Keep only the first `max_rank` tail items (an approximation for huge galleries).
    pub max_rank: Option<usize>,
}

impl Default for MineOptions {
    fn default() -> Self {
        MineOptions { consecutive_threshold: 1, pairing: Pairing::Consecutive, max_rank: None }
    }
}

/// A borrowed compressed-sparse-row list of gallery indices per query.
#[derive(Clone, Copy, Debug)]
pub struct CsrRef<'a> {
    /// `(Q + 1,)` offsets into `indices`.
    pub indptr: &'a [i64],
    /// Gallery indices.
    pub indices: &'a [i64],
}

impl<'a> CsrRef<'a> {
    /// Row `i` (call only after validation).
    pub fn row(&self, i: usize) -> &'a [i64] {
        &self.indices[self.indptr[i] as usize..self.indptr[i + 1] as usize]
    }
}

/// What is removed from each band after it is chosen.
#[derive(Clone, Copy, Debug, Default)]
pub struct Exclusions<'a> {
    /// Other known positives per query (gallery indices).
    pub positives: Option<CsrRef<'a>>,
    /// An id per gallery item: items sharing the target's (or a positive's) id are removed, and
    /// only the first occurrence of every id is kept.
    pub gallery_ids: Option<&'a [i64]>,
}

/// Mined bands for a set of queries, in CSR form.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct HardNegatives {
    /// `(Q + 1,)` offsets into `indices`.
    pub indptr: Vec<i64>,
    /// Gallery indices of every band, each band in rank order.
    pub indices: Vec<i64>,
    /// 0-based rank of each query's target.
    pub target_rank: Vec<i64>,
    /// Tail positions `(a, b)` of the chosen drops, `(-1, -1)` when none qualified (and for
    /// candidate sets other than the band).
    pub drops: Vec<[i64; 2]>,
    /// The score of every item of `indices`, as ranked (`-0.0` reads as `0.0`).
    pub scores: Vec<f32>,
    /// Each query's target score.
    pub target_score: Vec<f32>,
    /// How many candidates were examined and removed, over all queries.
    pub removed: Removed,
}

impl HardNegatives {
    /// Number of queries.
    pub fn len(&self) -> usize {
        self.target_rank.len()
    }

    /// True when there are no queries.
    pub fn is_empty(&self) -> bool {
        self.target_rank.is_empty()
    }

    /// The band of query `i`.
    pub fn band(&self, i: usize) -> &[i64] {
        &self.indices[self.indptr[i] as usize..self.indptr[i + 1] as usize]
    }

    /// An empty result with room for `queries` queries (allocated fallibly).
    pub fn try_with_capacity(queries: usize) -> Result<Self> {
        let mut out = HardNegatives { indptr: vec![0], ..HardNegatives::default() };
        out.reserve_rows(queries)?;
        Ok(out)
    }

    fn reserve_rows(&mut self, queries: usize) -> Result<()> {
        try_reserve(&mut self.indptr, queries, "band offsets", &[queries.saturating_add(1)])?;
        try_reserve(&mut self.target_rank, queries, "target ranks", &[queries])?;
        try_reserve(&mut self.target_score, queries, "target scores", &[queries])?;
        try_reserve(&mut self.drops, queries, "drop positions", &[queries, 2])
    }

    /// Appends the parallel tasks' queries in task order, or returns the first task's error (the
    /// first failing task holds the first bad row). Room is reserved fallibly first, so on
    /// [`QureError::OutOfMemory`] nothing was appended. The tasks' rank keys are turned into
    /// indices and scores in parallel (on the current pool), each part straight into its own
    /// slice of the output.
    fn append_parts(&mut self, tasks: Vec<Result<Part>>) -> Result<()> {
        let parts = tasks.into_iter().collect::<Result<Vec<_>>>()?;
        let extra: usize = parts.iter().map(|p| p.keys.len()).sum();
        let total = self.indices.len().saturating_add(extra);
        try_reserve(&mut self.indices, extra, "bands", &[total])?;
        try_reserve(&mut self.scores, extra, "band scores", &[total])?;
        self.reserve_rows(parts.iter().map(|p| p.rows.len()).sum())?;
        let mut indices = &mut self.indices.spare_capacity_mut()[..extra];
        let mut scores = &mut self.scores.spare_capacity_mut()[..extra];
        let mut slots = Vec::new();
        try_reserve(&mut slots, parts.len(), "mining scratch", &[parts.len()])?;
        for part in &parts {
            let (i, rest_i) = indices.split_at_mut(part.keys.len());
            let (s, rest_s) = scores.split_at_mut(part.keys.len());
            slots.push((i, s, part.keys.as_slice()));
            (indices, scores) = (rest_i, rest_s);
        }
        slots.into_par_iter().with_min_len(4).for_each(|(indices, scores, keys)| {
            for ((index, score), &key) in indices.iter_mut().zip(scores.iter_mut()).zip(keys) {
                index.write(i64::from(key_index(key)));
                score.write(key_score(key));
            }
        });
        let old = self.indices.len();
        // SAFETY: the slots tile the first `extra` spare slots of both vectors, and each slot was
        // written in full (a slot is exactly as long as its part's keys).
        unsafe {
            self.indices.set_len(old + extra);
            self.scores.set_len(old + extra);
        }
        let mut offset = old as i64;
        for part in &parts {
            let rows = &part.rows;
            self.indptr.extend(rows.indptr[1..].iter().map(|&p| p + offset));
            offset += part.keys.len() as i64;
            self.target_rank.extend_from_slice(&rows.target_rank);
            self.target_score.extend_from_slice(&rows.target_score);
            self.drops.extend_from_slice(&rows.drops);
            self.removed.add(&rows.removed);
        }
        Ok(())
    }
}

/// One parallel task's queries: their rows as in [`HardNegatives`] (whose `indptr` counts into
/// `keys`; its indices and scores stay empty) and every kept item as its rank key, turned into
/// an index and a score once, in the output ([`HardNegatives::append_parts`]).
struct Part {
    rows: HardNegatives,
    keys: Vec<u64>,
}

impl Part {
    /// An empty part with room for `queries` queries (allocated fallibly).
    fn try_with_capacity(queries: usize) -> Result<Self> {
        Ok(Part { rows: HardNegatives::try_with_capacity(queries)?, keys: Vec::new() })
    }

    /// Appends kept items, in rank order, to the current query.
    fn keep(&mut self, keys: &[u64]) -> Result<()> {
        let total = self.keys.len().saturating_add(keys.len());
        try_reserve(&mut self.keys, keys.len(), "bands", &[total])?;
        self.keys.extend_from_slice(keys);
        Ok(())
    }

    /// Closes the current query, whose kept items were already appended.
    fn finish_row(&mut self, target_rank: usize, target_score: f32, drops: Option<(usize, usize)>) {
        let rows = &mut self.rows;
        rows.indptr.push(self.keys.len() as i64);
        rows.target_rank.push(target_rank as i64);
        rows.target_score.push(target_score);
        rows.drops.push(match drops {
            Some((a, b)) => [a as i64, b as i64],
            None => [-1, -1],
        });
    }
}

/// Checks everything but the scores, once, and mines blocks of score rows.
#[derive(Clone, Copy, Debug)]
pub struct Miner<'a> {
    n_gallery: usize,
    targets: &'a [i64],
    options: MineOptions,
    exclusions: Exclusions<'a>,
    spec: Spec,
}

impl<'a> Miner<'a> {
    /// Validates the targets, options and exclusions for a `(targets.len(), n_gallery)` problem.
    pub fn new(
        n_gallery: usize,
        targets: &'a [i64],
        options: MineOptions,
        exclusions: Exclusions<'a>,
    ) -> Result<Self> {
        if n_gallery == 0 {
            return Err(QureError::invalid("the gallery is empty (scores have 0 columns)"));
        }
        if n_gallery > u32::MAX as usize {
            return Err(QureError::invalid(format!(
                "galleries of more than {} items are not supported (got {n_gallery})",
                u32::MAX
            )));
        }
        if let Some((i, &t)) =
            targets.iter().enumerate().find(|&(_, &t)| t < 0 || t as u64 >= n_gallery as u64)
        {
            return Err(QureError::invalid(format!(
                "target_idx[{i}] = {t} is out of range for a gallery of {n_gallery} items"
            )));
        }
        if options.max_rank == Some(0) {
            return Err(QureError::invalid("max_rank must be at least 1"));
        }
        let n_queries = targets.len();
        if let Some(pos) = exclusions.positives {
            validate_csr(pos, n_queries, n_gallery, "positives")?;
        }
        if let Some(ids) = exclusions.gallery_ids {
            if ids.len() != n_gallery {
                return Err(QureError::invalid(format!(
                    "gallery_ids has {} entries but the gallery has {n_gallery} items",
                    ids.len()
                )));
            }
        }
        Ok(Miner { n_gallery, targets, options, exclusions, spec: Spec::default() })
    }

    /// The same miner with another candidate set, filters and selection (see
    /// [`crate::strategy`]); the default is QuRe's band, unfiltered, every item kept.
    pub fn with_spec(mut self, spec: Spec) -> Result<Self> {
        let bad = |what: &str| Err(QureError::invalid(what.to_string()));
        match spec.candidates {
            Candidates::Top { start, end: Some(end) }
            | Candidates::Window { start, end: Some(end) }
                if end <= start =>
            {
                return bad("rank_range must be (start, end) with start < end");
            }
            _ => {}
        }
        let f = spec.filters;
        for (name, value) in [
            ("margin", f.margin),
            ("relative_margin", f.relative_margin),
            ("max_score", f.max_score),
            ("min_score", f.min_score),
        ] {
            if value.is_some_and(|v| !v.is_finite()) {
                return bad(&format!("{name} must be finite"));
            }
        }
        match spec.pick {
            Pick::First(0) | Pick::Uniform(0) | Pick::SimAns { k: 0, .. } => {
                return bad("num_negatives must be at least 1");
            }
            Pick::SimAns { a, b, .. } if !(a.is_finite() && a > 0.0 && b.is_finite()) => {
                return bad("SimANS needs a finite a > 0 and a finite b");
            }
            _ => {}
        }
        self.spec = spec;
        Ok(self)
    }

    /// Number of queries.
    pub fn n_queries(&self) -> usize {
        self.targets.len()
    }

    /// Mines the score rows of queries `first_query ..` held row-major in `block`, in parallel on
    /// the current rayon pool, and appends them to `out` (which must hold queries
    /// `0 .. first_query` already).
    pub fn mine_block(
        &self,
        first_query: usize,
        block: &[f32],
        out: &mut HardNegatives,
    ) -> Result<()> {
        let n = self.n_gallery;
        if !block.len().is_multiple_of(n) {
            return Err(QureError::invalid("score block is not a whole number of rows"));
        }
        let rows = block.len() / n;
        if first_query != out.len() || first_query + rows > self.n_queries() {
            return Err(QureError::invalid(format!(
                "score rows {first_query}..{} do not continue the {} mined of {} queries",
                first_query + rows,
                out.len(),
                self.n_queries()
            )));
        }
        // Fixed-size tasks, concatenated in order: the same output for any thread count.
        let chunks: Vec<Result<Part>> = block
            .par_chunks(n * ROWS_PER_TASK)
            .enumerate()
            .map(|(c, rows)| {
                SCRATCH.with_borrow_mut(|scratch| {
                    let first = first_query + c * ROWS_PER_TASK;
                    let mut part = Part::try_with_capacity(rows.len() / n)?;
                    for (r, row) in rows.chunks_exact(n).enumerate() {
                        let query = first + r;
                        let target = self.targets[query] as usize;
                        let score = row[target];
                        let (rank, drops) = if let Candidates::Band = self.spec.candidates {
                            // The band needs the whole row's rule: the fast row miner.
                            let (rank, drops) = mine_row(row, target, &self.options, scratch)
                                .map_err(|e| e.at_row(query))?;
                            let chosen = Some(drops);
                            self.choose_and_keep(
                                query,
                                score,
                                Some(row),
                                chosen,
                                scratch,
                                &mut part,
                            )?;
                            (rank, drops)
                        } else {
                            let limit = self.candidate_limit();
                            let rank = rank_row(row, target, self.spec.candidates, limit, scratch)
                                .map_err(|e| e.at_row(query))?;
                            let drops = self.choose_and_keep(
                                query,
                                score,
                                Some(row),
                                None,
                                scratch,
                                &mut part,
                            )?;
                            (rank, drops)
                        };
                        part.finish_row(rank, score, drops);
                    }
                    Ok(part)
                })
            })
            .collect();
        out.append_parts(chunks)
    }

    /// Mines queries `first_query ..` from their windows instead of their score rows: for each,
    /// its target's rank and the rank keys of the first `max_rank` items ranked after the
    /// target (any order; `windows[i]`). The same result as [`Miner::mine_block`] on the rows,
    /// which the rule only reads through these. Appends to `out` as `mine_block` does.
    pub fn mine_windows(
        &self,
        first_query: usize,
        ranks: &[usize],
        target_scores: &[f32],
        windows: &[Vec<u64>],
        out: &mut HardNegatives,
    ) -> Result<()> {
        if first_query != out.len()
            || ranks.len() != windows.len()
            || target_scores.len() != windows.len()
            || first_query + ranks.len() > self.n_queries()
        {
            return Err(QureError::invalid("windows do not continue the queries mined"));
        }
        let chunks: Vec<Result<Part>> = windows
            .par_chunks(ROWS_PER_TASK)
            .zip(ranks.par_chunks(ROWS_PER_TASK))
            .zip(target_scores.par_chunks(ROWS_PER_TASK))
            .enumerate()
            .map(|(c, ((windows, ranks), scores))| {
                SCRATCH.with_borrow_mut(|scratch| {
                    let first = first_query + c * ROWS_PER_TASK;
                    let mut part = Part::try_with_capacity(windows.len())?;
                    for (r, ((window, &rank), &score)) in
                        windows.iter().zip(ranks).zip(scores).enumerate()
                    {
                        let query = first + r;
                        scratch.band.clear();
                        let keys = &mut scratch.keys;
                        keys.clear();
                        try_reserve(keys, window.len(), "mining scratch", &[window.len()])?;
                        keys.extend_from_slice(window);
                        let drops =
                            self.choose_and_keep(query, score, None, None, scratch, &mut part)?;
                        part.finish_row(rank, score, drops);
                    }
                    Ok(part)
                })
            })
            .collect();
        out.append_parts(chunks)
    }

    /// The options.
    pub fn options(&self) -> MineOptions {
        self.options
    }

    /// Whether the candidates and filters read nothing of a row but the target's rank and
    /// score and the first `max_rank` items after it (so windows streamed from features
    /// suffice): not for a top-k candidate set, nor against the lowest positive's score.
    pub fn reads_tail_only(&self) -> bool {
        !matches!(self.spec.candidates, Candidates::Top { .. })
            && self.spec.filters.reference == Reference::Target
    }

    /// Mines queries whose tails were gathered elsewhere (sharded mining): query `i` has
    /// `above[i]` gallery items ranked above its target, and `items[i * width ..][..width]` with
    /// `scores` alike hold candidates ranked after it (global gallery indices, any order, `-1`
    /// for none), which must include its first `max_rank` tail items (all of its tail without a
    /// window). The result is what [`mine_negatives`] gives on the whole score matrix: the rule
    /// only ever looks at those items.
    pub fn mine_tails(
        &self,
        above: &[i64],
        target_scores: &[f32],
        items: &[i64],
        scores: &[f32],
        width: usize,
    ) -> Result<HardNegatives> {
        let q = self.n_queries();
        if target_scores.len() != q {
            return Err(QureError::invalid(format!(
                "target_scores has {} entries but there are {q} queries",
                target_scores.len()
            )));
        }
        if matches!(self.spec.candidates, Candidates::Top { .. })
            || self.spec.filters.reference == Reference::LowestPositive
        {
            return Err(QureError::invalid(
                "merged tails hold no items above the target nor the positives' scores: \
                 mine them with the band or a window after the target, against the target's score",
            ));
        }
        if above.len() != q {
            return Err(QureError::invalid(format!(
                "above has {} entries but there are {q} queries",
                above.len()
            )));
        }
        if q.checked_mul(width) != Some(items.len()) || items.len() != scores.len() {
            return Err(QureError::invalid(format!(
                "candidates must be ({q}, {width}) items and scores, got {} and {} values",
                items.len(),
                scores.len()
            )));
        }
        let n = self.n_gallery as i64;
        if let Some((i, &a)) = above.iter().enumerate().find(|&(_, &a)| a < 0 || a >= n) {
            return Err(QureError::invalid(format!(
                "above[{i}] = {a} is out of range for a gallery of {n} items"
            )));
        }
        if let Some((k, &g)) = items.iter().enumerate().find(|&(_, &g)| g < -1 || g >= n) {
            return Err(QureError::invalid(format!(
                "candidate item {g} of query {} is out of range for a gallery of {n} items",
                k / width.max(1)
            )));
        }
        let mut out = HardNegatives::try_with_capacity(q)?;
        if q == 0 {
            return Ok(out);
        }
        let rows: Vec<usize> = (0..q).collect();
        let chunks: Vec<Result<Part>> = threads::install(|| {
            rows.par_chunks(ROWS_PER_TASK)
                .map_init(Scratch::default, |scratch, chunk| {
                    let mut part = Part::try_with_capacity(chunk.len())?;
                    for &query in chunk {
                        let span = query * width..(query + 1) * width;
                        let keys = &mut scratch.keys;
                        keys.clear();
                        try_reserve(keys, span.len(), "mining scratch", &[span.len()])?;
                        for (&g, &v) in items[span.clone()].iter().zip(&scores[span.clone()]) {
                            if g < 0 {
                                continue;
                            }
                            if !v.is_finite() {
                                return Err(QureError::NonFinite {
                                    what: "scores",
                                    row: query,
                                    col: g as usize,
                                });
                            }
                            keys.push(rank_key(v, g as u32));
                        }
                        scratch.band.clear();
                        let score = target_scores[query];
                        let drops =
                            self.choose_and_keep(query, score, None, None, scratch, &mut part)?;
                        part.finish_row(above[query] as usize, score, drops);
                    }
                    Ok(part)
                })
                .collect()
        });
        threads::install(|| out.append_parts(chunks))?;
        Ok(out)
    }

    /// How many of a row's best candidates the candidate set can ever look at (`None`: all,
    /// or the band, whose rule needs the whole tail or its `max_rank` window as it is).
    fn candidate_limit(&self) -> Option<usize> {
        match self.spec.candidates {
            Candidates::Band => None,
            Candidates::Top { end, .. } => end,
            Candidates::Window { end, .. } => match (end, self.options.max_rank) {
                (Some(e), Some(m)) => Some(e.min(m)),
                (e, m) => e.or(m),
            },
        }
    }

    /// Everything after the ranking, for one query whose candidate keys (the tail's, or every
    /// non-target item's for [`Candidates::Top`]) are in `scratch.keys`, in any order: chooses
    /// the candidates, removes known positives and duplicate ids, applies the filters, selects,
    /// and appends the kept items' rank keys to `part`. `row` is the query's score row
    /// (needed for [`Reference::LowestPositive`]). Returns the band's drops (band only).
    fn choose_and_keep(
        &self,
        query: usize,
        target_score: f32,
        row: Option<&[f32]>,
        chosen: Option<Option<(usize, usize)>>,
        scratch: &mut Scratch,
        part: &mut Part,
    ) -> Result<Option<(usize, usize)>> {
        let spec = self.spec;
        let drops = match (spec.candidates, chosen) {
            (Candidates::Band, Some(drops)) => drops, // the band is already in scratch.band
            (Candidates::Band, None) => choose_in_tail(scratch, &self.options)?,
            _ => None,
        };
        let target = self.targets[query] as usize;
        let positives = self.exclusions.positives.map(|p| p.row(query)).unwrap_or(&[]);
        if let (Candidates::Band, Pick::All, None, true, true) = (
            spec.candidates,
            spec.pick,
            self.exclusions.gallery_ids,
            positives.is_empty(),
            spec.filters.is_empty(),
        ) {
            // Nothing to remove and everything kept: the band is the output.
            part.rows.removed.candidates += scratch.band.len() as u64;
            part.keep(&scratch.band)?;
            return Ok(drops);
        }
        let reference = match (spec.filters.reference, row) {
            (Reference::LowestPositive, Some(row)) => {
                positives.iter().map(|&p| row[p as usize]).fold(target_score, f32::min)
            }
            _ => target_score,
        };
        // Known positives (sorted, for lookups) and the ids already taken.
        let sorted_positives = &mut scratch.positives;
        sorted_positives.clear();
        try_reserve(sorted_positives, positives.len(), "mining scratch", &[positives.len()])?;
        sorted_positives.extend_from_slice(positives);
        sorted_positives.sort_unstable();
        let seen = &mut scratch.seen;
        seen.clear();
        let sorted_positives = &scratch.positives;
        if let Some(ids) = self.exclusions.gallery_ids {
            let room = positives.len() + 1;
            seen.try_reserve(room).map_err(|_| out_of_memory::<i64>("band ids", &[room]))?;
            seen.insert(ids[target]);
            seen.extend(positives.iter().map(|&p| ids[p as usize]));
        }
        let limit = match spec.pick {
            Pick::First(k) => Some(k),
            _ => None,
        };
        let mut keeper = Keeper {
            survivors: &mut scratch.survivors,
            seen,
            positives: sorted_positives,
            ids: self.exclusions.gallery_ids,
            spec: &spec,
            reference,
            limit,
            removed: Removed::default(),
        };
        keeper.survivors.clear();
        match spec.candidates {
            Candidates::Band => {
                for &key in scratch.band.iter() {
                    if keeper.offer(key)? {
                        break;
                    }
                }
            }
            Candidates::Top { start, end } | Candidates::Window { start, end } => {
                let keys = &mut scratch.keys;
                if let (Candidates::Window { .. }, Some(m)) =
                    (spec.candidates, self.options.max_rank)
                {
                    if m < keys.len() {
                        keys.select_nth_unstable(m - 1);
                        keys.truncate(m);
                    }
                }
                let end = end.map_or(keys.len(), |e| e.min(keys.len()));
                let start = start.min(end);
                // Order only as much of the ranking as the selection needs.
                let mut sorted = 0;
                let mut want = match limit {
                    Some(k) => start.saturating_add(k.saturating_mul(4).max(64)).min(end),
                    None => end,
                };
                loop {
                    sorted_prefix(keys, sorted, want);
                    let mut done = false;
                    for &key in &keys[sorted.max(start)..want] {
                        if keeper.offer(key)? {
                            done = true;
                            break;
                        }
                    }
                    sorted = want;
                    if done || want >= end {
                        break;
                    }
                    want = start.saturating_add((want - start).saturating_mul(8)).min(end);
                }
            }
        }
        let removed = keeper.removed;
        part.rows.removed.add(&removed);
        self.select_into(query, reference, &mut scratch.survivors, part)?;
        Ok(drops)
    }

    /// Appends the selected survivors (rank keys in rank order) to `part`.
    fn select_into(
        &self,
        query: usize,
        reference: f32,
        survivors: &mut Vec<u64>,
        part: &mut Part,
    ) -> Result<()> {
        let key = pick_key(self.spec.seed, self.spec.first_query.wrapping_add(query as u64));
        let k = match self.spec.pick {
            Pick::All | Pick::First(_) => survivors.len(),
            Pick::Uniform(k) | Pick::SimAns { k, .. } => k,
        };
        if k < survivors.len() {
            // The k survivors with the largest random keys, then back in rank order.
            let priority = |s: &u64| -> f64 {
                let u = unit(key, u64::from(key_index(*s)));
                match self.spec.pick {
                    Pick::SimAns { a, b, .. } => simans_key(u, key_score(*s), reference, a, b),
                    _ => u,
                }
            };
            let mut ranked: Vec<(f64, u64)> = Vec::new();
            try_reserve(&mut ranked, survivors.len(), "mining scratch", &[survivors.len()])?;
            ranked.extend(survivors.iter().map(|s| (priority(s), *s)));
            // Largest priority first; equal priorities by rank (never in practice).
            ranked.sort_unstable_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)));
            survivors.clear();
            survivors.extend(ranked[..k].iter().map(|&(_, s)| s));
            survivors.sort_unstable();
        }
        part.keep(survivors)
    }
}

/// Walks candidates in rank order: removes known positives and duplicate ids, then filters.
struct Keeper<'s> {
    survivors: &'s mut Vec<u64>,
    seen: &'s mut HashSet<i64>,
    positives: &'s [i64],
    ids: Option<&'s [i64]>,
    spec: &'s Spec,
    reference: f32,
    limit: Option<usize>,
    removed: Removed,
}

impl Keeper<'_> {
    /// Offers the next candidate; true once the selection has all it needs.
    fn offer(&mut self, key: u64) -> Result<bool> {
        self.removed.candidates += 1;
        let item = i64::from(key_index(key));
        let excluded = match self.ids {
            Some(ids) => {
                self.seen.try_reserve(1).map_err(|_| out_of_memory::<i64>("band ids", &[1]))?;
                !self.seen.insert(ids[item as usize])
            }
            None => !self.positives.is_empty() && self.positives.binary_search(&item).is_ok(),
        };
        if excluded {
            self.removed.excluded += 1;
            return Ok(false);
        }
        if filtered(&self.spec.filters, key_score(key), self.reference, &mut self.removed) {
            return Ok(false);
        }
        if self.survivors.len() == self.survivors.capacity() {
            let room = self.survivors.len().max(16);
            try_reserve(self.survivors, room, "mining scratch", &[room * 2])?;
        }
        self.survivors.push(key);
        Ok(self.limit.is_some_and(|k| self.survivors.len() >= k))
    }
}

/// Makes `keys[..want]` sorted, given that `keys[..sorted]` already is and holds the smallest
/// `sorted` keys.
fn sorted_prefix(keys: &mut [u64], sorted: usize, want: usize) {
    if want <= sorted {
        return;
    }
    let rest = &mut keys[sorted..];
    if want - sorted < rest.len() {
        rest.select_nth_unstable(want - sorted - 1);
    }
    rest[..want - sorted].sort_unstable();
}

pub(crate) fn validate_csr(
    csr: CsrRef<'_>,
    rows: usize,
    n_gallery: usize,
    name: &str,
) -> Result<()> {
    if csr.indptr.len() != rows + 1 {
        return Err(QureError::invalid(format!(
            "{name} has {} rows but there are {rows} queries",
            csr.indptr.len().saturating_sub(1)
        )));
    }
    let nnz = csr.indices.len() as i64;
    if csr.indptr[0] != 0 || csr.indptr[rows] != nnz || csr.indptr.windows(2).any(|w| w[0] > w[1]) {
        return Err(QureError::invalid(format!("{name} has inconsistent row offsets")));
    }
    if let Some((k, &g)) =
        csr.indices.iter().enumerate().find(|&(_, &g)| g < 0 || g as u64 >= n_gallery as u64)
    {
        let row = csr.indptr.partition_point(|&p| p <= k as i64) - 1;
        return Err(QureError::invalid(format!(
            "{name}[{row}] holds index {g}, out of range for a gallery of {n_gallery} items"
        )));
    }
    Ok(())
}

/// Mines every row of a row-major `(targets.len(), n_gallery)` score matrix on qure's pool.
pub fn mine_negatives(
    scores: &[f32],
    n_gallery: usize,
    targets: &[i64],
    options: MineOptions,
    exclusions: Exclusions<'_>,
) -> Result<HardNegatives> {
    Miner::new(n_gallery, targets, options, exclusions)?.mine_matrix(scores)
}

impl Miner<'_> {
    /// Mines every row of the row-major `(n_queries, n_gallery)` score matrix on qure's pool.
    pub fn mine_matrix(&self, scores: &[f32]) -> Result<HardNegatives> {
        let (q, n) = (self.n_queries(), self.n_gallery);
        if q.checked_mul(n) != Some(scores.len()) {
            return Err(QureError::invalid(format!(
                "scores hold {} values, expected {q} queries x {n} gallery items",
                scores.len()
            )));
        }
        let mut out = HardNegatives::try_with_capacity(q)?;
        threads::install(|| self.mine_block(0, scores, &mut out))?;
        Ok(out)
    }
}

thread_local! {
    /// Each thread's mining buffers, kept between rows and calls: a fresh set per task would
    /// map (and the kernel zero) new pages for every few rows.
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::default();
}

/// Per-thread buffers, reused across rows; every one grows fallibly.
#[derive(Default)]
struct Scratch {
    /// Coarse bucket counts of the tail (fast path), then their running sums.
    coarse: Vec<u32>,
    /// Which coarse buckets the fast path reads item by item, as flags and as a sorted list.
    wanted: Vec<u8>,
    list: Vec<u32>,
    /// The coarse bucket of each of the band's items, as its keys are found (fast path).
    band_buckets: Vec<u32>,
    /// Which coarse buckets are empty (fast path), a bit each.
    empty: Vec<u64>,
    /// Runs of empty coarse buckets (fast path): length << 32 | the bucket before the run.
    runs: Vec<u64>,
    /// Each item's coarse bucket (fast path).
    ids: Vec<u16>,
    keys: Vec<u64>,
    count: Vec<u32>,
    bucket_min: Vec<f32>,
    bucket_max: Vec<f32>,
    candidates: Vec<u64>,
    cursor: Vec<u32>,
    band: Vec<u64>,
    positives: Vec<i64>,
    seen: HashSet<i64>,
    survivors: Vec<u64>,
}

/// Drops examined in the first round of the steepest-first scan; more only when needed.
const FIRST_SCAN: usize = 16;

/// Score rows per parallel task.
const ROWS_PER_TASK: usize = 4;

/// Bands up to this size are sorted directly; larger ones are bucket-sorted.
const SMALL_BAND: usize = 64;

/// Tail items per bucket in the fast path.
const ITEMS_PER_BUCKET: usize = 8;

/// Why a row could not be mined.
enum RowError {
    /// The column of a non-finite score.
    NonFinite(usize),
    /// Scratch space could not be allocated.
    Alloc(QureError),
}

impl RowError {
    fn at_row(self, row: usize) -> QureError {
        match self {
            RowError::NonFinite(col) => QureError::NonFinite { what: "scores", row, col },
            RowError::Alloc(err) => err,
        }
    }
}

impl From<QureError> for RowError {
    fn from(err: QureError) -> Self {
        RowError::Alloc(err)
    }
}

/// Mines one row; the band's rank keys (before exclusions) are left in `scratch.band`.
/// Returns the target's rank and the chosen drop positions.
///
/// The fast path's streaming passes are in [`crate::rowpass`] (portable, AVX2 and AVX-512
/// builds, identical integers); the rest of the row miner is compiled for the best of AVX2 and
/// AVX-512 the CPU has (run-time detection, capped by `QURE_SIMD` like the scoring kernels).
/// Every build runs the same integer and IEEE operations: the result is the same.
fn mine_row(
    row: &[f32],
    target: usize,
    options: &MineOptions,
    scratch: &mut Scratch,
) -> std::result::Result<(usize, Option<(usize, usize)>), RowError> {
    #[cfg(target_arch = "x86_64")]
    match RowPasses::current().simd() {
        // SAFETY: `RowPasses` runs a vector level only where run-time detection found its
        // instructions, AVX2 with FMA (through `Kernel`) and POPCNT; the functions need nothing
        // else.
        crate::kernel::Simd::Avx512 => {
            return unsafe { mine_row_avx512(row, target, options, scratch) };
        }
        crate::kernel::Simd::Avx2 => {
            return unsafe { mine_row_avx2(row, target, options, scratch) }
        }
        crate::kernel::Simd::Portable => {}
    }
    mine_row_any(row, target, options, scratch)
}

/// [`mine_row`] compiled for AVX-512.
///
/// # Safety
/// The CPU must support AVX-512F, AVX2, FMA and POPCNT.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma,popcnt")]
unsafe fn mine_row_avx512(
    row: &[f32],
    target: usize,
    options: &MineOptions,
    scratch: &mut Scratch,
) -> std::result::Result<(usize, Option<(usize, usize)>), RowError> {
    mine_row_any(row, target, options, scratch)
}

/// [`mine_row`] compiled for AVX2.
///
/// # Safety
/// The CPU must support AVX2, FMA and POPCNT.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,popcnt")]
unsafe fn mine_row_avx2(
    row: &[f32],
    target: usize,
    options: &MineOptions,
    scratch: &mut Scratch,
) -> std::result::Result<(usize, Option<(usize, usize)>), RowError> {
    mine_row_any(row, target, options, scratch)
}

#[inline(always)]
fn mine_row_any(
    row: &[f32],
    target: usize,
    options: &MineOptions,
    scratch: &mut Scratch,
) -> std::result::Result<(usize, Option<(usize, usize)>), RowError> {
    let n = row.len();
    scratch.band.clear();
    if let Some(done) = fast::mine_row(row, target, options, scratch, RowPasses::current())? {
        return Ok(done);
    }
    scratch.band.clear();
    let keys = &mut scratch.keys;
    let (mut len, finite) = compact_tail(row, target, keys)?;
    if !finite {
        return Err(RowError::NonFinite(row.iter().position(|v| !v.is_finite()).unwrap_or(0)));
    }
    let target_rank = n - 1 - len;
    if let Some(m) = options.max_rank {
        if m < len {
            keys[..len].select_nth_unstable(m - 1);
            len = m;
        }
    }
    keys.truncate(len);
    if len < 3 {
        return Ok((target_rank, None));
    }
    let drops = match choose_band_bucketed(scratch, options)? {
        Some(pair) => Some(pair),
        None => choose_band_sorted(scratch, options)?,
    };
    Ok((target_rank, drops))
}

/// Ranks one row: leaves in `scratch.keys` the rank keys of the items ranked after the target
/// (every item but the target for [`Candidates::Top`]) and returns the target's rank.
fn rank_row(
    row: &[f32],
    target: usize,
    candidates: Candidates,
    limit: Option<usize>,
    scratch: &mut Scratch,
) -> std::result::Result<usize, RowError> {
    let n = row.len();
    scratch.band.clear();
    let keys = &mut scratch.keys;
    let target_key = rank_key(row[target], target as u32);
    let top = matches!(candidates, Candidates::Top { .. });
    if let Some(limit) = limit.filter(|&l| l > 0 && l.saturating_mul(4) < n) {
        // Only the best `limit` candidates can matter: keep a running buffer of at most
        // `2 * limit` keys below a bound, cut back to `limit` whenever it fills (what a top-k
        // heap does, without the heap). The buffer then holds the `limit` best, in any order.
        keys.clear();
        try_reserve(keys, 2 * limit, "mining scratch", &[2 * limit])?;
        let mut bound = u64::MAX;
        let mut above = 0usize;
        let mut finite = true;
        for (j, &v) in row.iter().enumerate() {
            finite &= v.is_finite();
            let key = rank_key(v, j as u32);
            above += usize::from(key < target_key);
            let candidate = if top { j != target } else { key > target_key };
            if candidate && key < bound {
                keys.push(key);
                if keys.len() == 2 * limit {
                    keys.select_nth_unstable(limit - 1);
                    keys.truncate(limit);
                    bound = keys[limit - 1];
                }
            }
        }
        if !finite {
            return Err(RowError::NonFinite(row.iter().position(|v| !v.is_finite()).unwrap_or(0)));
        }
        return Ok(above);
    }
    if top {
        try_refill(keys, n, 0, "mining scratch")?;
        let mut len = 0;
        let mut finite = true;
        // Every item but the target; the rank counts those ranked above it.
        let mut above = 0;
        for (j, &v) in row.iter().enumerate() {
            finite &= v.is_finite();
            let key = rank_key(v, j as u32);
            keys[len] = key;
            len += usize::from(j != target);
            above += usize::from(key < target_key);
        }
        if !finite {
            return Err(RowError::NonFinite(row.iter().position(|v| !v.is_finite()).unwrap_or(0)));
        }
        keys.truncate(len);
        return Ok(above);
    }
    let (len, finite) = compact_tail(row, target, keys)?;
    if !finite {
        return Err(RowError::NonFinite(row.iter().position(|v| !v.is_finite()).unwrap_or(0)));
    }
    Ok(n - 1 - len)
}

/// Replaces `keys` by the rank keys of the row's tail (the items ranked after the target), in
/// index order, without clearing the buffer first; returns their number and whether every score
/// is finite.
fn compact_tail(row: &[f32], target: usize, keys: &mut Vec<u64>) -> Result<(usize, bool)> {
    let room = row.len() + KEY_SLACK;
    keys.clear();
    try_reserve(keys, room, "mining scratch", &[room])?;
    let (len, finite) =
        RowPasses::current().tail_keys(row, target, &mut keys.spare_capacity_mut()[..room]);
    // SAFETY: `tail_keys` initialised `keys[..len]`, and `len <= row.len()` is within capacity.
    unsafe { keys.set_len(len) };
    Ok((len, finite))
}

/// Steps 2-4 of the rule on the tail's rank keys in `scratch.keys` (any order): keeps the first
/// `max_rank` of them and chooses the band, whose keys are left in `scratch.band`.
fn choose_in_tail(scratch: &mut Scratch, options: &MineOptions) -> Result<Option<(usize, usize)>> {
    let keys = &mut scratch.keys;
    if let Some(m) = options.max_rank {
        if m < keys.len() {
            keys.select_nth_unstable(m - 1);
            keys.truncate(m);
        }
    }
    if keys.len() < 3 {
        return Ok(None);
    }
    match choose_band_bucketed(scratch, options)? {
        Some(pair) => Ok(Some(pair)),
        None => choose_band_sorted(scratch, options),
    }
}

/// Sorts rank keys in linear expected time: buckets by score, then orders each small bucket.
fn bucket_sort(keys: &mut Vec<u64>, spare: &mut Vec<u64>, starts: &mut Vec<u32>) -> Result<()> {
    let (mut kmin, mut kmax) = (u64::MAX, 0u64);
    for &k in keys.iter() {
        kmin = kmin.min(k);
        kmax = kmax.max(k);
    }
    let (hi, lo) = (key_score(kmin), key_score(kmax));
    let buckets = keys.len().div_ceil(2);
    let scale = buckets as f64 / (f64::from(hi) - f64::from(lo));
    if hi <= lo || !scale.is_finite() {
        keys.sort_unstable();
        return Ok(());
    }
    let last = buckets - 1;
    let bucket_of =
        |k: u64| (((f64::from(hi) - f64::from(key_score(k))) * scale) as usize).min(last);
    try_refill(starts, buckets + 1, 0, "mining scratch")?;
    for &k in keys.iter() {
        starts[bucket_of(k) + 1] += 1;
    }
    for b in 0..buckets {
        starts[b + 1] += starts[b];
    }
    try_refill(spare, keys.len(), 0, "mining scratch")?;
    for &k in keys.iter() {
        let slot = &mut starts[bucket_of(k)];
        spare[*slot as usize] = k;
        *slot += 1;
    }
    // `starts[b]` now holds the end of bucket b.
    let mut begin = 0;
    for &end in &starts[..buckets] {
        let end = end as usize;
        if end - begin > 1 {
            insertion_sort(&mut spare[begin..end]);
        }
        begin = end;
    }
    std::mem::swap(keys, spare);
    Ok(())
}

/// Sorts a short slice (a bucket holds a handful of keys; larger ones fall back to pdqsort).
fn insertion_sort(keys: &mut [u64]) {
    if keys.len() > 32 {
        keys.sort_unstable();
        return;
    }
    for i in 1..keys.len() {
        let key = keys[i];
        let mut j = i;
        while j > 0 && keys[j - 1] > key {
            keys[j] = keys[j - 1];
            j -= 1;
        }
        keys[j] = key;
    }
}

/// Scans a sorted prefix of the drop order for the first qualifying pair.
fn scan_pairs(order: &[u64], options: &MineOptions) -> Option<(usize, usize)> {
    let position = |k: &u64| key_index(*k) as usize;
    let threshold = options.consecutive_threshold;
    match options.pairing {
        Pairing::Consecutive => order.windows(2).find_map(|w| {
            let (x, y) = (position(&w[0]), position(&w[1]));
            let (a, b) = (x.min(y), x.max(y));
            (b - a > threshold).then_some((a, b))
        }),
        Pairing::Anchored => {
            let first = position(order.first()?);
            order[1..]
                .iter()
                .map(position)
                .find(|&y| y.abs_diff(first) > threshold)
                .map(|y| (first.min(y), first.max(y)))
        }
    }
}

/// Finds the first qualifying pair among all of `drops` (drop keys, any order), looking at as few
/// of the steepest as it can. `None` when no pair in the whole list qualifies.
fn choose_pair(drops: &mut [u64], options: &MineOptions) -> Option<(usize, usize)> {
    let m = drops.len();
    let mut k = m.min(FIRST_SCAN);
    loop {
        if k < m {
            drops.select_nth_unstable(k - 1);
            drops[..k].sort_unstable();
        } else {
            drops.sort_unstable();
        }
        if let Some(pair) = scan_pairs(&drops[..k], options) {
            return Some(pair);
        }
        if k >= m {
            return None;
        }
        k = m.min(k * 8);
    }
}

/// Exact rule by a full sort of the tail (fallback, and the reference for the fast path).
fn choose_band_sorted(
    scratch: &mut Scratch,
    options: &MineOptions,
) -> Result<Option<(usize, usize)>> {
    let keys = &mut scratch.keys;
    keys.sort_unstable();
    let drops = &mut scratch.candidates;
    drops.clear();
    try_reserve(drops, keys.len(), "mining scratch", &[keys.len()])?;
    drops.extend(
        keys.windows(2)
            .enumerate()
            .map(|(j, w)| drop_key(key_score(w[1]) - key_score(w[0]), j as u32)),
    );
    let Some((a, b)) = choose_pair(drops, options) else {
        return Ok(None);
    };
    scratch.band.clear();
    try_reserve(&mut scratch.band, b - a, "mining scratch", &[b - a])?;
    scratch.band.extend_from_slice(&keys[a + 1..=b]);
    Ok(Some((a, b)))
}

/// The bucketed fast path; `None` when it cannot certify the answer (the caller then sorts).
fn choose_band_bucketed(
    scratch: &mut Scratch,
    options: &MineOptions,
) -> Result<Option<(usize, usize)>> {
    let keys = &scratch.keys;
    let len = keys.len();
    let (mut kmin, mut kmax) = (u64::MAX, 0u64);
    for &k in keys.iter() {
        kmin = kmin.min(k);
        kmax = kmax.max(k);
    }
    let (hi, lo) = (key_score(kmin), key_score(kmax));
    if hi <= lo {
        return Ok(None); // all scores equal: every drop is 0
    }
    let buckets = len.div_ceil(ITEMS_PER_BUCKET);
    let scale = buckets as f64 / (f64::from(hi) - f64::from(lo));
    if !scale.is_finite() || scale <= 0.0 {
        return Ok(None);
    }
    let last = buckets - 1;
    // Monotone in the score: a higher score never lands in a later bucket.
    let bucket_of = |v: f32| (((f64::from(hi) - f64::from(v)) * scale) as usize).min(last);

    let count = &mut scratch.count;
    let bmin = &mut scratch.bucket_min;
    let bmax = &mut scratch.bucket_max;
    try_refill(count, buckets, 0, "mining scratch")?;
    try_refill(bmin, buckets, f32::INFINITY, "mining scratch")?;
    try_refill(bmax, buckets, f32::NEG_INFINITY, "mining scratch")?;
    for &k in keys.iter() {
        let v = key_score(k);
        let b = bucket_of(v);
        count[b] += 1;
        bmin[b] = bmin[b].min(v);
        bmax[b] = bmax[b].max(v);
    }
    // No drop inside a bucket is steeper than the widest bucket's spread (f32 rounding is
    // monotone, so this holds for the f32 drops too).
    let mut widest = 0.0f32;
    for b in 0..buckets {
        if count[b] > 0 {
            widest = widest.min(bmin[b] - bmax[b]);
        }
    }
    // Drops between consecutive non-empty buckets that are steeper than that are certified to be
    // the steepest drops of the whole tail, in the same order. `count` becomes cumulative.
    let candidates = &mut scratch.candidates;
    candidates.clear();
    try_reserve(candidates, buckets, "mining scratch", &[buckets])?;
    let mut cumulative = 0u32;
    let mut previous: Option<usize> = None;
    for b in 0..buckets {
        let c = count[b];
        if c > 0 {
            if let Some(pb) = previous {
                let drop = bmax[b] - bmin[pb];
                if drop < widest {
                    candidates.push(drop_key(drop, cumulative - 1));
                }
            }
            previous = Some(b);
        }
        cumulative += c;
        count[b] = cumulative;
    }
    if candidates.len() < 2 {
        return Ok(None);
    }
    let Some((a, b)) = choose_pair(candidates, options) else {
        return Ok(None);
    };
    // Both drops lie on bucket boundaries, so the band is exactly a run of whole buckets.
    let first_bucket = count.partition_point(|&c| c as usize <= a + 1);
    let last_bucket = count.partition_point(|&c| c as usize <= b);
    // Equal scores share a bucket, so the band is also exactly a score range.
    let top = u64::from(!f32_to_ordered(bmax[first_bucket])) << 32;
    let bottom = (u64::from(!f32_to_ordered(bmin[last_bucket])) << 32) | u64::from(u32::MAX);
    let size = b - a;
    let band = &mut scratch.band;
    try_refill(band, size, 0, "mining scratch")?;
    let mut n = 0;
    for &k in keys.iter() {
        band[n] = k;
        n += usize::from(k >= top && k <= bottom);
        if n == size {
            break;
        }
    }
    debug_assert_eq!(n, size);
    if size <= SMALL_BAND {
        band.sort_unstable();
    } else {
        bucket_sort(band, &mut scratch.candidates, &mut scratch.cursor)?;
    }
    Ok(Some((a, b)))
}

/// The fast path of [`mine_row`]: one streaming pass over the score row and a few over a
/// `u16` per item, no tail keys.
///
/// 1. Sample: the tail's score range, roughly (its lowest sampled score).
/// 2. Pass 1 ([`RowPasses::tail_buckets`]): each tail item's coarse bucket (about 8 items per
///    bucket, by score) and the bucket counts, hence the target's rank and every bucket's first
///    tail position. A drop between items at most k buckets apart is less than about k + 1
///    bucket widths; steeper drops cross runs of empty buckets.
/// 3. The longest runs of empty buckets ([`LONG_RUNS`], and every run as long as the shortest of
///    them) are chosen, with the last bucket (it holds everything below the sampled range). The
///    items of the buckets at their ends are gathered in a pass over the bucket ids, bucket by
///    bucket, and each bucket sorted: the drops among them steeper than `bound` (the widest a
///    drop crossing no chosen run can be) are, exactly, the steepest drops of the tail, in order.
/// 4. When the pair the rule picks is among those, the band is a run of tail positions between
///    two strict drops, so a score range. Either all of it was gathered, or one more pass over
///    the bucket ids scatters it into its buckets (whose counts are known), and each bucket is
///    sorted ([`RowPasses::sort_segments`]).
///
/// Anything it cannot certify (ties, flat tails, a pair beyond the certified drops, too many
/// items to gather) returns `None` and the row takes the general path: results are exact. Rows
/// whose target ranks far down (more than three quarters of a sample above it) go there
/// directly.
mod fast {
    use super::{choose_pair, insertion_sort, MineOptions, RowError, Scratch};
    use crate::error::{try_refill, try_reserve};
    use crate::keys::{drop_key, key_score, rank_key};
    use crate::rowpass::{BucketMap, RowPasses, KEY_SLACK, SPARE_SLOTS};

    /// Tail items per coarse bucket.
    const ITEMS_PER_COARSE: usize = 8;
    /// At most this many coarse buckets (bucket ids and the spare slots fit a `u16`).
    const MAX_BUCKETS: usize = 1 << 15;
    /// Runs of empty buckets whose ends are read: at least the longest this many (and ties).
    const LONG_RUNS: usize = 8;
    /// An empty bucket range for [`RowPasses::for_each_in_ranges`].
    const NO_RANGE: (u16, u16) = (1, 0);

    type Done = (usize, Option<(usize, usize)>);

    /// The first bit at or after `from` and before `limit` that is set (`set`) or clear.
    #[inline(always)]
    fn next_bit(bits: &[u64], from: usize, limit: usize, set: bool) -> Option<usize> {
        let flip = if set { 0 } else { u64::MAX };
        let mut word = from / 64;
        let mut w = (*bits.get(word)? ^ flip) & (u64::MAX << (from % 64));
        while w == 0 {
            word += 1;
            w = *bits.get(word)? ^ flip;
        }
        let at = word * 64 + w.trailing_zeros() as usize;
        (at < limit).then_some(at)
    }

    #[inline(always)]
    pub(super) fn mine_row(
        row: &[f32],
        target: usize,
        options: &MineOptions,
        scratch: &mut Scratch,
        passes: RowPasses,
    ) -> Result<Option<Done>, RowError> {
        let n = row.len();
        let st = row[target];
        if n < 4 || n > u32::MAX as usize || !st.is_finite() {
            return Ok(None);
        }
        // The range: from the target's score (no tail item scores higher) down to the lowest
        // tail score of a sample. Lower items land in the last bucket, which is always read
        // item by item, so its width does not matter.
        // Sampled in a few contiguous runs (a strided sample would touch a line per value).
        let run = 64.min(n);
        let (mut lo, mut above, mut sampled) = (st, 0usize, 0usize);
        for r in 0..4 {
            let start = (n - run) / 3 * r;
            // Branch-free, so that it vectorises.
            for &v in &row[start..start + run] {
                let tail = if v < st { v } else { st };
                lo = if tail < lo { tail } else { lo };
                above += usize::from(v > st);
            }
            sampled += run;
        }
        // Its passes read the whole row; when the tail is much shorter than the row (a target
        // ranked far down), the general path, which compacts the tail first, is faster.
        if above * 16 > sampled * 15 || lo >= st || !(st - lo).is_finite() {
            return Ok(None);
        }
        // About ITEMS_PER_COARSE of the tail's items per bucket, from the sample's tail share.
        let expected_tail = n / sampled * (sampled - above) + n % sampled;
        let buckets = (expected_tail / ITEMS_PER_COARSE).clamp(16, MAX_BUCKETS);
        let scale = buckets as f32 / (st - lo);
        if !scale.is_finite() || scale <= 0.0 {
            return Ok(None);
        }
        let map = BucketMap { hi: st, scale, last: (buckets - 1) as f32 };
        let last = buckets - 1;
        // With x = st - v, the map computes t = x * scale * (1 + e), |e| <= 2^-23 (two
        // roundings), so items whose buckets, below the last, are at most k apart (t's less
        // than k + 1 apart and below buckets) differ by less than (k + 1 + 2 buckets 2^-22) /
        // scale; the f32 drop rounds by a further 2^-24. `bound` below covers both.

        // Pass 1: each item's bucket, the bucket counts, the tail size, and whether every score
        // is finite.
        let ids = &mut scratch.ids;
        if ids.len() != n {
            try_refill(ids, n, 0, "mining scratch")?; // pass 1 writes every id
        }
        let counts = &mut scratch.coarse;
        try_refill(counts, buckets + SPARE_SLOTS, 0, "mining scratch")?;
        let spare = buckets as u16;
        let (m, finite) = passes.tail_buckets(row, target, map, spare, ids, counts);
        if !finite {
            return Ok(None); // the general path names the value
        }
        let rank = n - 1 - m;
        let window = options.max_rank.map_or(m, |w| w.min(m));
        if window < 3 {
            return Ok(Some((rank, None)));
        }
        // counts[b] becomes the number of tail items in buckets before b (b = 0 ..= buckets);
        // on the way, the runs of empty buckets between occupied ones, as
        // `length << 32 | the occupied bucket before the run`.
        let empty = &mut scratch.empty;
        try_refill(empty, buckets.div_ceil(64), 0, "mining scratch")?;
        counts[buckets] = passes.prefix_counts(&mut counts[..buckets], empty);
        let runs = &mut scratch.runs;
        runs.clear();
        try_reserve(runs, buckets / 2 + 1, "mining scratch", &[buckets / 2 + 1])?;
        let mut from = 0;
        while let Some(first) = next_bit(empty, from, buckets, true) {
            let stop = next_bit(empty, first, buckets, false).unwrap_or(buckets);
            if first > 0 && stop < buckets {
                runs.push(((stop - first) as u64) << 32 | (first - 1) as u64);
            }
            from = stop;
        }
        let counts = &counts[..=buckets];
        let before = |b: usize| counts[b] as usize;
        // The bucket where the window ends.
        let end = counts[1..].partition_point(|&c| (c as usize) < window);
        // Buckets read item by item: the two ends of the longest runs of empty buckets (a steep
        // drop can only cross a run), and the last bucket with the occupied one before it (the
        // last one has no lower edge: it holds everything below the sampled range). Runs are
        // ranked by length and those of at least `shortest` buckets are read: a drop between
        // items that crosses none of them spans at most `shortest` buckets, so it is less than
        // `bound` and cannot be among the steepest.
        let occupied = |b: usize| counts[b + 1] > counts[b];
        let run_end = |run: u64| (run as u32 as usize) + (run >> 32) as usize + 1;
        runs.retain(|&run| run_end(run) <= end);
        // The last bucket and the occupied one before it.
        let mut specials = [0u32; 2];
        let mut n_specials = 0;
        if end == last && occupied(last) {
            let before_last = match runs.last() {
                Some(&run) if run_end(run) == last => Some(run as u32),
                _ => (last > 0 && occupied(last - 1)).then(|| last as u32 - 1),
            };
            for b in before_last.into_iter().chain([last as u32]) {
                specials[n_specials] = b;
                n_specials += 1;
            }
        }
        let list = &mut scratch.list;
        let mut shortest = if runs.len() > LONG_RUNS {
            let (_, kth, _) = runs.select_nth_unstable_by(LONG_RUNS - 1, |x, y| y.cmp(x));
            (*kth >> 32) as usize
        } else {
            1
        };
        // A second attempt reads every run (the certificate then covers every drop steeper than
        // two bucket widths) when the longest runs' drops hold no qualifying pair.
        let (a, b) = loop {
            list.clear();
            try_reserve(list, 2, "mining scratch", &[2])?;
            list.extend_from_slice(&specials[..n_specials]);
            try_reserve(list, 2 * runs.len(), "mining scratch", &[2 * runs.len()])?;
            for &run in runs.iter() {
                let length = (run >> 32) as u32;
                if length as usize >= shortest {
                    let p = run as u32;
                    list.extend([p, p + length + 1]);
                }
            }
            list.sort_unstable();
            list.dedup();
            // Items in buckets at most `shortest` apart (below the last) have t's less than
            // `shortest + 1` apart.
            let bound = (shortest as f64 + 1.0 + 2.0 * (buckets as f64 + 1.0) * 2f64.powi(-22))
                / f64::from(scale)
                * (1.0 + 2f64.powi(-20));
            let wanted = &mut scratch.wanted;
            try_refill(wanted, end + 1, 0, "mining scratch")?;
            let mut gathered = 0usize;
            for &b in list.iter() {
                let b = b as usize;
                wanted[b] = 1;
                gathered += before(b + 1) - before(b);
            }
            if gathered > (window / 4).max(256) {
                return Ok(None);
            }
            // The wanted buckets as two ranges around their widest gap (a cheap vector test).
            let (mut first, mut second) = (NO_RANGE, NO_RANGE);
            if let (Some(&low), Some(&high)) = (list.first(), list.last()) {
                let (gap_from, gap_to) = list
                    .windows(2)
                    .map(|w| (w[0], w[1]))
                    .max_by_key(|&(x, y)| (y - x, u32::MAX - x))
                    .unwrap_or((high, high));
                first = (low as u16, gap_from as u16);
                if gap_to > gap_from {
                    second = (gap_to as u16, high as u16);
                }
            }
            // Gather bucket by bucket (a counting sort by bucket), then sort each small bucket.
            let cursor = &mut scratch.cursor;
            try_refill(cursor, end + 1, 0, "mining scratch")?;
            let mut offset = 0u32;
            for &b in list.iter() {
                let b = b as usize;
                cursor[b] = offset;
                offset += counts[b + 1] - counts[b];
            }
            let keys = &mut scratch.keys;
            try_refill(keys, gathered, 0, "mining scratch")?;
            let mut overflow = false;
            passes.for_each_in_ranges(ids, first, second, |j, b| {
                let b = usize::from(b);
                if wanted[b] != 0 {
                    let slot = &mut cursor[b];
                    match keys.get_mut(*slot as usize) {
                        Some(k) => *k = rank_key(row[j], j as u32),
                        None => {
                            overflow = true; // cannot happen: sizes follow from the counts
                            return false;
                        }
                    }
                    *slot += 1;
                }
                true
            });
            if overflow {
                return Ok(None);
            }
            // Walk the gathered items in rank order with their tail positions.
            let candidates = &mut scratch.candidates;
            candidates.clear();
            try_reserve(candidates, gathered, "mining scratch", &[gathered])?;
            let mut start = 0usize;
            let mut previous: Option<(f32, usize, usize)> = None; // (score, bucket, position)
            for &b in list.iter() {
                let b = b as usize;
                let stop = cursor[b] as usize;
                let bucket_keys = &mut keys[start..stop];
                insertion_sort(bucket_keys);
                let first = before(b);
                for (i, &k) in bucket_keys.iter().enumerate() {
                    let position = first + i;
                    if position >= window {
                        break;
                    }
                    let v = key_score(k);
                    if let Some((w, pb, pp)) = previous {
                        // Consecutive in the tail: same bucket, or only empty buckets between.
                        if pb == b || before(pb + 1) == before(b) {
                            let drop: f32 = v - w;
                            if f64::from(drop) < -bound {
                                candidates.push(drop_key(drop, pp as u32));
                            }
                        }
                    }
                    previous = Some((v, b, position));
                }
                start = stop;
            }
            match choose_pair(candidates, options) {
                Some(pair) => break pair,
                None if shortest > 1 => shortest = 1,
                None => return Ok(None),
            }
        };
        let (wanted, cursor, keys) = (&scratch.wanted, &mut scratch.cursor, &scratch.keys);
        // tail[a + 1] and tail[b] were gathered: find their scores and buckets, and whether
        // every bucket between them was gathered too (then the band is among the gathered keys).
        let (mut top, mut bottom) = (None, None);
        let mut start = 0usize;
        for &bk in list.iter() {
            let bk = bk as usize;
            let stop = cursor[bk] as usize;
            let first = before(bk);
            for (i, &k) in keys[start..stop].iter().enumerate() {
                if first + i == a + 1 {
                    top = Some((key_score(k), bk));
                }
                if first + i == b {
                    bottom = Some((key_score(k), bk));
                }
            }
            start = stop;
        }
        let (Some((top, top_bucket)), Some((bottom, bottom_bucket))) = (top, bottom) else {
            return Ok(None);
        };
        let size = b - a;
        let band_start = a + 1;
        let band = &mut scratch.band;
        try_refill(band, size, 0, "mining scratch")?;
        if (top_bucket..=bottom_bucket).all(|bk| wanted[bk] != 0 || !occupied(bk)) {
            // Every item of the band was gathered, in rank order: copy it.
            let mut start = 0usize;
            let mut filled = 0usize;
            for &bk in list.iter() {
                let bk = bk as usize;
                let stop = cursor[bk] as usize;
                let first = before(bk);
                for (i, &k) in keys[start..stop].iter().enumerate() {
                    if (band_start..=b).contains(&(first + i)) {
                        band[filled] = k;
                        filled += 1;
                    }
                }
                start = stop;
            }
            if filled != size {
                return Ok(None); // cannot happen: the gathered buckets hold the band
            }
            return Ok(Some((rank, Some((a, b)))));
        }
        // The band tail[a + 1 ..= b] lies between two strict drops: exactly the tail items
        // scoring in [bottom, top], in buckets top_bucket ..= bottom_bucket. Scatter them into
        // their buckets (each bucket's share of the band is known from the counts) and sort.
        let offset_of = |bk: usize| before(bk).max(band_start) - band_start;
        for (bk, c) in cursor.iter_mut().enumerate().take(bottom_bucket + 1).skip(top_bucket) {
            *c = offset_of(bk) as u32;
        }
        // The band's keys and buckets in index order (a vector pass), then placed.
        let (found, found_buckets) = (&mut scratch.candidates, &mut scratch.band_buckets);
        let room = n + KEY_SLACK;
        found.clear();
        found_buckets.clear();
        try_reserve(found, room, "mining scratch", &[room])?;
        try_reserve(found_buckets, room, "mining scratch", &[room])?;
        let range = (top_bucket as u16, bottom_bucket as u16);
        let len = passes.band_keys(
            row,
            ids,
            range,
            (bottom, top),
            &mut found.spare_capacity_mut()[..room],
            &mut found_buckets.spare_capacity_mut()[..room],
        );
        // SAFETY: `band_keys` initialised both buffers' first `len <= n` slots.
        unsafe {
            found.set_len(len);
            found_buckets.set_len(len);
        }
        if len != size {
            return Ok(None); // cannot happen: the band is these items
        }
        let (cursor, places) = (cursor.as_mut_slice(), band.as_mut_slice());
        for (&key, &bk) in found.iter().zip(found_buckets.iter()) {
            let slot = &mut cursor[bk as usize];
            match places.get_mut(*slot as usize) {
                Some(s) => *s = key,
                None => return Ok(None), // cannot happen: sizes follow from the counts
            }
            *slot += 1;
        }
        // Each band bucket's cursor now ends its share of the band: sort the shares.
        let ends = &cursor[top_bucket..=bottom_bucket];
        let filled = ends
            .iter()
            .zip(top_bucket..)
            .all(|(&end, bk)| end as usize == (offset_of(bk + 1).min(size)).max(offset_of(bk)));
        if !filled {
            return Ok(None); // cannot happen either; the general path decides
        }
        passes.sort_segments(band, ends);
        Ok(Some((rank, Some((a, b)))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::Kernel;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Straight from the rule: full argsort, explicit drops, explicit scan.
    fn reference(
        row: &[f32],
        target: usize,
        options: &MineOptions,
    ) -> (usize, Option<(usize, usize)>, Vec<i64>) {
        let mut order: Vec<usize> = (0..row.len()).collect();
        order.sort_by(|&x, &y| row[y].partial_cmp(&row[x]).unwrap().then(x.cmp(&y)));
        let p = order.iter().position(|&i| i == target).unwrap();
        let mut tail: Vec<usize> = order[p + 1..].to_vec();
        if let Some(m) = options.max_rank {
            tail.truncate(m);
        }
        if tail.len() < 3 {
            return (p, None, vec![]);
        }
        let drops: Vec<f32> = tail.windows(2).map(|w| row[w[1]] - row[w[0]]).collect();
        let mut o: Vec<usize> = (0..drops.len()).collect();
        o.sort_by(|&x, &y| drops[x].partial_cmp(&drops[y]).unwrap().then(x.cmp(&y)));
        let t = options.consecutive_threshold;
        let pair = match options.pairing {
            Pairing::Consecutive => {
                o.windows(2).map(|w| (w[0].min(w[1]), w[0].max(w[1]))).find(|(a, b)| b - a > t)
            }
            Pairing::Anchored => {
                o[1..].iter().find(|&&y| y.abs_diff(o[0]) > t).map(|&y| (o[0].min(y), o[0].max(y)))
            }
        };
        match pair {
            Some((a, b)) => (p, Some((a, b)), tail[a + 1..=b].iter().map(|&i| i as i64).collect()),
            None => (p, None, vec![]),
        }
    }

    fn check(row: &[f32], target: usize, options: MineOptions) {
        let targets = [target as i64];
        let got = mine_negatives(row, row.len(), &targets, options, Exclusions::default()).unwrap();
        let (p, drops, band) = reference(row, target, &options);
        assert_eq!(got.target_rank[0] as usize, p, "rank {row:?} t={target}");
        let want_drops = drops.map_or([-1, -1], |(a, b)| [a as i64, b as i64]);
        assert_eq!(got.drops[0], want_drops, "drops {row:?} t={target} {options:?}");
        assert_eq!(got.band(0), &band[..], "band {row:?} t={target} {options:?}");
    }

    fn all_options() -> Vec<MineOptions> {
        let mut out = vec![];
        for pairing in [Pairing::Consecutive, Pairing::Anchored] {
            for consecutive_threshold in [0, 1, 3] {
                for max_rank in [None, Some(1), Some(4), Some(50)] {
                    out.push(MineOptions { consecutive_threshold, pairing, max_rank });
                }
            }
        }
        out
    }

    #[test]
    fn matches_reference_on_random_rows() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for case in 0..600 {
            let n = rng.random_range(1..200);
            let quantised = case % 3 == 0;
            let row: Vec<f32> = (0..n)
                .map(|_| {
                    let v: f32 = rng.random_range(-1.0..1.0);
                    if quantised {
                        (v * 4.0).round() / 4.0
                    } else {
                        v * v * v
                    }
                })
                .collect();
            let target = rng.random_range(0..n);
            for options in all_options() {
                check(&row, target, options);
            }
        }
    }

    #[test]
    fn matches_reference_on_large_rows_with_wide_bands() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        for case in 0..40 {
            let n = rng.random_range(500..5000);
            // Gaussian-like scores have their steepest drops at both ends: wide bands.
            let row: Vec<f32> = (0..n)
                .map(|_| {
                    let s: f32 = (0..4).map(|_| rng.random_range(-1.0f32..1.0)).sum();
                    if case % 4 == 0 {
                        (s * 8.0).round() / 8.0
                    } else {
                        s
                    }
                })
                .collect();
            let target = rng.random_range(0..n);
            for pairing in [Pairing::Consecutive, Pairing::Anchored] {
                for max_rank in [None, Some(300)] {
                    check(
                        &row,
                        target,
                        MineOptions { consecutive_threshold: 1, pairing, max_rank },
                    );
                }
            }
        }
    }

    #[test]
    fn matches_reference_on_adversarial_rows() {
        let rows: Vec<Vec<f32>> = vec![
            vec![1.0; 10],
            vec![0.0, -0.0, 0.0, -0.0, 1.0, -1.0],
            vec![3e38, -3e38, 0.0, 1.0, 2.0, 1e-30, -1e-30],
            vec![5.0, 4.0, 3.0, 2.0, 1.0],
            vec![1.0, 1.0, 1.0, 0.0, 0.0, 0.0, -1.0, -1.0],
            (0..100).map(|i| (i as f32).sqrt()).collect(),
            (0..100).map(|i| if i % 2 == 0 { 1.0 } else { 1.0 + 1e-7 * i as f32 }).collect(),
        ];
        for row in rows {
            for target in 0..row.len() {
                for options in all_options() {
                    check(&row, target, options);
                }
            }
        }
    }

    #[test]
    fn the_fast_path_is_taken_and_exact() {
        let mut rng = ChaCha8Rng::seed_from_u64(31);
        let mut taken = 0;
        let mut tried = 0;
        let all_passes: Vec<RowPasses> =
            Kernel::available().into_iter().map(RowPasses::for_kernel).collect();
        let (mut wide, mut narrow) = (0, 0);
        for case in 0..64 {
            // Cases 48.. are rows like random embeddings' scores, where a tenth of the bands
            // (rank-10 targets) hold most of the row.
            let (n, terms) =
                if case < 48 { (rng.random_range(1000..12000), 4) } else { (16384, 12) };
            let mut row: Vec<f32> = (0..n)
                .map(|_| (0..terms).map(|_| rng.random_range(-1.0f32..1.0)).sum::<f32>() * 0.05)
                .collect();
            if case % 4 == 1 {
                for _ in 0..5 {
                    let j = rng.random_range(0..n);
                    row[j] = rng.random_range(0.3f32..0.6); // planted near-duplicates
                }
            }
            let target = if case % 2 == 0 {
                let mut order: Vec<usize> = (0..n).collect();
                order.sort_by(|&a, &b| row[b].partial_cmp(&row[a]).unwrap().then(a.cmp(&b)));
                order[if case < 48 { rng.random_range(0..20) } else { 10 }]
            } else {
                rng.random_range(0..n)
            };
            for max_rank in [None, Some(50), Some(n / 3)] {
                for pairing in [Pairing::Consecutive, Pairing::Anchored] {
                    let options = MineOptions { consecutive_threshold: 1, pairing, max_rank };
                    tried += 1;
                    let (p, want_drops, band) = reference(&row, target, &options);
                    // Every build of the row passes certifies the same rows, exactly.
                    let mut certified = Vec::new();
                    for &passes in &all_passes {
                        let mut scratch = Scratch::default();
                        let fast = fast::mine_row(&row, target, &options, &mut scratch, passes);
                        let fast = fast.ok().flatten();
                        certified.push(fast.is_some());
                        if let Some((rank, drops)) = fast {
                            let what = format!("case {case} {options:?} {:?}", passes.simd());
                            assert_eq!((rank, drops), (p, want_drops), "{what}");
                            let got: Vec<i64> =
                                scratch.band.iter().map(|&k| i64::from(key_index(k))).collect();
                            assert_eq!(got, band, "{what}");
                        }
                    }
                    assert!(certified.iter().all(|&c| c == certified[0]), "case {case}");
                    if certified[0] {
                        taken += 1;
                        if band.len() > n / 2 {
                            wide += 1;
                        } else {
                            narrow += 1;
                        }
                    }
                    check(&row, target, options);
                }
            }
        }
        assert!(taken * 2 > tried, "the fast path certified only {taken} of {tried} rows");
        assert!(wide > 0 && narrow > 0, "certified {wide} wide and {narrow} narrow bands");
    }

    #[test]
    fn the_fast_path_retries_with_every_run() {
        // The steepest drops are 20 adjacent ones at the top of the tail (no pair qualifies among
        // them, and they are all the longest runs of empty buckets hold); the pair needs one
        // more, shallower drop further down, which only the second attempt reads.
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mut row = vec![1.0f32]; // the target
        let mut v = 0.9f32;
        for k in 0..=20 {
            row.push(v);
            v -= 0.02 - 0.0005 * k as f32;
        }
        while row.len() < 4000 {
            let x = rng.random_range(0.2f32..0.594);
            if !(0.40..0.405).contains(&x) {
                row.push(x);
            }
        }
        let options = MineOptions { consecutive_threshold: 1, ..MineOptions::default() };
        let expected = reference(&row, 0, &options);
        assert!(expected.1.is_some_and(|(a, b)| a == 19 && b > 21), "{:?}", expected.1);
        for passes in Kernel::available().into_iter().map(RowPasses::for_kernel) {
            let mut scratch = Scratch::default();
            let fast = fast::mine_row(&row, 0, &options, &mut scratch, passes);
            let Ok(Some((rank, drops))) = fast else {
                panic!("not certified: {:?}", passes.simd())
            };
            assert_eq!((rank, drops), (expected.0, expected.1));
            let got: Vec<i64> = scratch.band.iter().map(|&k| i64::from(key_index(k))).collect();
            assert_eq!(got, expected.2);
        }
        check(&row, 0, options);
    }

    #[test]
    fn empty_band_when_no_pair_qualifies() {
        // Tail [0.9, 0.8, 0.7]: drops at 0 and 1 are adjacent, nothing is more than 1 apart.
        let row = [1.0, 0.9, 0.8, 0.7];
        let got =
            mine_negatives(&row, 4, &[0], MineOptions::default(), Exclusions::default()).unwrap();
        assert_eq!(got.drops[0], [-1, -1]);
        assert!(got.band(0).is_empty());
        assert_eq!(got.target_rank[0], 0);
    }

    #[test]
    fn exclusions_remove_positives_and_duplicates() {
        // Tail after target 0: 1..=6 with a steep drop after 1 and after 5.
        let row = [1.0, 0.9, 0.5, 0.49, 0.48, 0.47, 0.1, 0.09];
        let targets = [0];
        let plain =
            mine_negatives(&row, 8, &targets, MineOptions::default(), Exclusions::default())
                .unwrap();
        assert_eq!(plain.band(0), &[2, 3, 4, 5]);
        let indptr = [0, 1];
        let indices = [3];
        let ids = [10, 11, 12, 13, 10, 12, 16, 17];
        let excl = Exclusions {
            positives: Some(CsrRef { indptr: &indptr, indices: &indices }),
            gallery_ids: Some(&ids),
        };
        let got = mine_negatives(&row, 8, &targets, MineOptions::default(), excl).unwrap();
        // 3 is a positive, 4 shares the target's id, 5 repeats 2's id.
        assert_eq!(got.band(0), &[2]);
    }

    #[test]
    fn rejects_bad_input() {
        let row = [1.0, f32::NAN, 0.5];
        let err = mine_negatives(&row, 3, &[0], MineOptions::default(), Exclusions::default())
            .unwrap_err();
        assert_eq!(err, QureError::NonFinite { what: "scores", row: 0, col: 1 });
        assert!(mine_negatives(
            &[1.0, 2.0],
            2,
            &[2],
            MineOptions::default(),
            Exclusions::default()
        )
        .is_err());
        assert!(mine_negatives(&[], 0, &[], MineOptions::default(), Exclusions::default()).is_err());
        let opts = MineOptions { max_rank: Some(0), ..MineOptions::default() };
        assert!(mine_negatives(&[1.0, 2.0], 2, &[0], opts, Exclusions::default()).is_err());
        let ids = [1];
        let excl = Exclusions { gallery_ids: Some(&ids), ..Exclusions::default() };
        assert!(mine_negatives(&[1.0, 2.0], 2, &[0], MineOptions::default(), excl).is_err());
    }

    #[test]
    fn same_result_for_any_thread_count() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let (q, n) = (64, 500);
        let scores: Vec<f32> = (0..q * n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let targets: Vec<i64> = (0..q).map(|_| rng.random_range(0..n as i64)).collect();
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let miner =
                    Miner::new(n, &targets, MineOptions::default(), Exclusions::default()).unwrap();
                let mut out = HardNegatives::try_with_capacity(q).unwrap();
                miner.mine_block(0, &scores[..n * 10], &mut out).unwrap();
                miner.mine_block(10, &scores[n * 10..], &mut out).unwrap();
                out
            })
        };
        let one = run(1);
        assert_eq!(one, run(2));
        assert_eq!(one, run(5));
    }
}
