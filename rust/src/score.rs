//! Large-gallery scoring, exact top-k, target ranks and mining straight from features.
//!
//! A gallery is `(N, T, d)`: `T` token embeddings per image (`T = 1` for plain inner product);
//! a query is one `d`-vector; the score is the max over the image's tokens of the dot product.
//! Work is split into tasks of (query block x gallery chunk); each task streams cache-sized
//! gallery blocks through [`crate::kernel`] and hands every finished tile to a consumer, so no
//! `Q x N x T` (or, for top-k and ranks, `Q x N`) buffer is ever built.

use std::ops::Range;

use rayon::prelude::*;

use crate::error::{try_filled, try_reserve, QureError, Result};
pub use crate::kernel::Features;
use crate::kernel::{
    above_masks, pack_group, pack_panels, score_rows, score_rows_direct, score_rows_gl, widen_into,
    Kernel, DIRECT_GROUP_ROWS, DIRECT_QUERIES, MAX_LANES,
};
use crate::keys::{key_index, key_score, rank_key};
use crate::mining::{Exclusions, HardNegatives, MineOptions, Miner};
use crate::strategy::{Candidates, Reference, Spec};
use crate::threads;

/// Gallery token rows per streamed block (a block and the tile it feeds stay in L2).
const BLOCK_ROWS: usize = 512;
/// Queries per task: large, so that each gallery block is packed once per call...
const TASK_QUERIES: usize = 4096;
/// ...except for top-k, whose per-query candidate lists should stay in cache.
const TOPK_TASK_QUERIES: usize = 2048;
/// Target number of tasks per thread (load balance).
const TASKS_PER_THREAD: usize = 4;
/// Score-matrix bytes held at once by [`mine_from_features`].
const MINE_BLOCK_BYTES: usize = 64 << 20;
/// Up to this many queries are scored by the few-query kernel (gallery rows along the vector
/// lanes, work split by gallery chunks), which wastes no lanes on absent queries.
const FEW_QUERIES: usize = 16;
/// From this `k` on, top-k splits work by queries before gallery chunks: each gallery chunk
/// keeps its own top k, and with a large k that repeats most of the selection work per chunk.
const LARGE_K: usize = 256;

/// Row-major query features `(rows, dim)`.
#[derive(Clone, Copy, Debug)]
pub struct Queries<'a> {
    /// `rows * dim` values.
    pub data: &'a [f32],
    /// Number of queries.
    pub rows: usize,
    /// Feature size.
    pub dim: usize,
}

/// Row-major gallery features `(items, tokens, dim)`, in `f32` or half precision.
#[derive(Clone, Copy, Debug)]
pub struct Gallery<'a> {
    /// `items * tokens * dim` values.
    pub data: Features<'a>,
    /// Number of gallery images.
    pub items: usize,
    /// Token embeddings per image (1 for plain inner product).
    pub tokens: usize,
    /// Feature size.
    pub dim: usize,
}

/// The first non-finite value of `data` as an error naming its row and column.
fn check_finite(data: Features<'_>, row_len: usize, what: &'static str) -> Result<()> {
    const CHUNK: usize = 1 << 16;
    let chunks = data.len().div_ceil(CHUNK);
    let chunk = |c: usize| data.slice(c * CHUNK..((c + 1) * CHUNK).min(data.len()));
    let bad_chunk =
        threads::install(|| (0..chunks).into_par_iter().position_first(|c| !chunk(c).all_finite()));
    match bad_chunk {
        None => Ok(()),
        Some(c) => {
            let i = c * CHUNK + chunk(c).first_non_finite().unwrap_or(0);
            Err(QureError::NonFinite { what, row: i / row_len, col: i % row_len })
        }
    }
}

/// A validated scoring problem with the queries packed for the kernel.
///
/// Gallery features are checked for NaN and infinities as they are packed (one read of the
/// gallery serves both); a non-finite value makes the streaming call fail with
/// [`QureError::NonFinite`] naming the first such value of the gallery.
pub struct Scorer<'a> {
    kernel: Kernel,
    /// The few-query kernel ([`score_rows_gl`]) rather than the query-panel one.
    few: bool,
    /// Gallery rows per kernel call.
    rows: usize,
    /// Queries per packed panel (a tile's width).
    lanes: usize,
    packed: Vec<f32>,
    queries: Queries<'a>,
    gallery: Gallery<'a>,
}

/// The view a consumer gets of a finished tile: `scores[i * lanes + l]` is the score of query
/// `first_query + l` against gallery item `first_item + i`.
pub struct Tile<'t> {
    /// First query of the panel.
    pub first_query: usize,
    /// Queries in the panel that exist (`<= lanes`).
    pub queries: usize,
    /// First gallery item.
    pub first_item: usize,
    /// Gallery items in the tile.
    pub items: usize,
    /// Panel width.
    pub lanes: usize,
    /// `items * lanes` scores, item-major.
    pub scores: &'t [f32],
}

impl<'a> Scorer<'a> {
    /// Checks shapes and finiteness and packs the queries.
    pub fn new(queries: Queries<'a>, gallery: Gallery<'a>) -> Result<Self> {
        Scorer::with_kernel(queries, gallery, Kernel::current())
    }

    /// As [`Scorer::new`], with an explicit kernel (tests compare kernels).
    pub fn with_kernel(queries: Queries<'a>, gallery: Gallery<'a>, kernel: Kernel) -> Result<Self> {
        if queries.dim != gallery.dim {
            return Err(QureError::invalid(format!(
                "queries have {} features but the gallery has {}",
                queries.dim, gallery.dim
            )));
        }
        if queries.dim == 0 {
            return Err(QureError::invalid("features must have at least 1 dimension"));
        }
        if gallery.items == 0 {
            return Err(QureError::invalid("the gallery is empty"));
        }
        if gallery.tokens == 0 {
            return Err(QureError::invalid("gallery items must have at least 1 token"));
        }
        if gallery.items > u32::MAX as usize {
            return Err(QureError::invalid(
                "galleries of more than 2^32 - 1 items are not supported",
            ));
        }
        if queries.rows.checked_mul(queries.dim) != Some(queries.data.len()) {
            return Err(QureError::invalid("queries buffer does not match its shape"));
        }
        let gallery_len = gallery.items.checked_mul(gallery.tokens);
        if gallery_len.and_then(|n| n.checked_mul(gallery.dim)) != Some(gallery.data.len()) {
            return Err(QureError::invalid("gallery buffer does not match its shape"));
        }
        check_finite(Features::F32(queries.data), queries.dim, "queries")?;
        if queries.rows == 0 {
            // Nothing streams the gallery: check it here.
            check_finite(gallery.data, gallery.tokens * gallery.dim, "gallery")?;
        }
        let few = queries.rows <= FEW_QUERIES && queries.rows > 0;
        let (rows, lanes) = if few {
            (kernel.gl_rows(), queries.rows.min(kernel.gl_queries()))
        } else {
            (kernel.rows(), kernel.lanes())
        };
        let packed = pack_panels(queries.data, queries.rows, queries.dim, lanes)?;
        Ok(Scorer { kernel, few, rows, lanes, packed, queries, gallery })
    }

    /// The kernel in use.
    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// Number of queries.
    pub fn n_queries(&self) -> usize {
        self.queries.rows
    }

    /// Number of gallery items.
    pub fn n_items(&self) -> usize {
        self.gallery.items
    }

    fn items_per_block(&self) -> usize {
        (BLOCK_ROWS / self.gallery.tokens).max(1)
    }

    /// The error for a block of items `first_item..` that failed the finiteness check.
    fn non_finite(&self, first_item: usize, n_items: usize) -> QureError {
        let row_len = self.gallery.tokens * self.gallery.dim;
        let block = self.gallery.data.slice(first_item * row_len..(first_item + n_items) * row_len);
        let i = block.first_non_finite().unwrap_or(0);
        QureError::NonFinite { what: "gallery", row: first_item + i / row_len, col: i % row_len }
    }

    /// Streams every tile of `panels x items` through `consume`, one thread.
    fn stream<S>(
        &self,
        panels: Range<usize>,
        items: Range<usize>,
        state: &mut S,
        consume: &(impl Fn(&mut S, &Tile<'_>) + Sync),
    ) -> Result<()> {
        let (d, t) = (self.gallery.dim, self.gallery.tokens);
        let (rows, lanes) = (self.rows, self.lanes);
        // Sized for the largest block this range has (a small gallery gets small buffers).
        let per_block = self.items_per_block().min(items.len());
        // With one panel, each group is scored right after it is packed, while it is in L1;
        // otherwise the block is packed once and every panel reuses it.
        let single = panels.len() == 1;
        let groups_per_block = if single { 1 } else { (per_block * t).div_ceil(rows) };
        let mut tile = try_filled("a score tile", &[per_block, lanes], f32::NEG_INFINITY)?;
        // One panel of few queries widens half-precision rows DIRECT_GROUP_ROWS at a time.
        let group_rows = if single { rows.max(DIRECT_GROUP_ROWS) } else { rows };
        let mut packed_block =
            try_filled("packed gallery rows", &[groups_per_block, group_rows, d], 0.0f32)?;
        let score_group = |panel: usize, group: &[f32], tile: &mut [f32], g: usize, n_rows| {
            let queries = &self.packed[panel * d * lanes..(panel + 1) * d * lanes];
            let first_row = g * rows;
            let valid = rows.min(n_rows - first_row);
            if self.few {
                let k = self.kernel;
                score_rows_gl(k, d, group, queries, lanes, tile, first_row, t, valid);
            } else {
                score_rows(self.kernel, d, group, queries, tile, first_row, t, valid);
            }
        };
        for first_item in items.clone().step_by(per_block) {
            let n_items = per_block.min(items.end - first_item);
            let block = self.gallery.data.slice(first_item * t * d..(first_item + n_items) * t * d);
            let n_rows = n_items * t;
            let n_groups = n_rows.div_ceil(rows);
            let pack = |g: usize, packed: &mut [f32]| {
                let end = ((g + 1) * rows).min(n_rows);
                pack_group(self.kernel, block.slice(g * rows * d..end * d), d, rows, packed)
            };
            let mut finite = true;
            if single {
                let tile = &mut tile[..n_items * lanes];
                if t > 1 {
                    tile.fill(f32::NEG_INFINITY); // max over tokens (one token: overwritten)
                }
                // Few queries: scored from the rows as they are stored (f32) or widened a group
                // at a time (half precision), with no transposing pack.
                let panel = panels.start;
                let queries = &self.packed[panel * d * lanes..(panel + 1) * d * lanes];
                let direct = match block {
                    _ if !(self.few && lanes <= DIRECT_QUERIES) => None,
                    Features::F32(block_rows) => {
                        score_rows_direct(self.kernel, d, block_rows, queries, lanes, tile, 0, t)
                    }
                    _ => {
                        let mut all = Some(true);
                        let step = DIRECT_GROUP_ROWS;
                        for g in 0..n_rows.div_ceil(step) {
                            let end = ((g + 1) * step).min(n_rows);
                            let group = &mut packed_block[..(end - g * step) * d];
                            widen_into(self.kernel, block.slice(g * step * d..end * d), group);
                            let first_row = g * step;
                            let k = self.kernel;
                            all =
                                score_rows_direct(k, d, group, queries, lanes, tile, first_row, t)
                                    .and_then(|ok| all.map(|a| a && ok));
                            if all.is_none() {
                                break;
                            }
                        }
                        all
                    }
                };
                match direct {
                    Some(ok) => finite = ok,
                    None => {
                        let packed = &mut packed_block[..rows * d];
                        for g in 0..n_groups {
                            finite &= pack(g, packed);
                            score_group(panels.start, packed, tile, g, n_rows);
                        }
                    }
                }
            } else {
                for (g, packed) in
                    packed_block.chunks_exact_mut(rows * d).take(n_groups).enumerate()
                {
                    finite &= pack(g, packed);
                }
            }
            if !finite {
                return Err(self.non_finite(first_item, n_items));
            }
            for panel in panels.clone() {
                let tile = &mut tile[..n_items * lanes];
                if !single {
                    if t > 1 {
                        tile.fill(f32::NEG_INFINITY);
                    }
                    for (g, group) in packed_block.chunks_exact(rows * d).take(n_groups).enumerate()
                    {
                        score_group(panel, group, tile, g, n_rows);
                    }
                }
                let first_query = panel * lanes;
                consume(
                    state,
                    &Tile {
                        first_query,
                        queries: lanes.min(self.queries.rows - first_query),
                        first_item,
                        items: n_items,
                        lanes,
                        scores: tile,
                    },
                );
            }
        }
        Ok(())
    }

    /// Splits the panels holding `queries` x all items into tasks, runs them on qure's pool and
    /// returns each task's state in task order. A tile can hold queries outside `queries` (the
    /// rest of their panels): consumers skip them. Tasks hold at most `task_queries` queries;
    /// with `by_queries`, queries are split first (as many tasks as the pool wants, if there
    /// are panels enough) and the gallery only when that leaves too few tasks.
    fn run<S: Send>(
        &self,
        queries: Range<usize>,
        task_queries: usize,
        by_queries: bool,
        init: impl Fn(Range<usize>, Range<usize>) -> Result<S> + Sync,
        consume: impl Fn(&mut S, &Tile<'_>) + Sync,
    ) -> Result<Vec<S>> {
        let lanes = self.lanes;
        let panels = queries.start / lanes..queries.end.div_ceil(lanes);
        let wanted = threads::num_threads() * TASKS_PER_THREAD;
        let mut panels_per_task = (task_queries / lanes).max(1);
        if by_queries {
            panels_per_task = panels_per_task.min(panels.len().div_ceil(wanted)).max(1);
        }
        let query_tasks = panels.len().div_ceil(panels_per_task).max(1);
        let blocks = self.gallery.items.div_ceil(self.items_per_block());
        let chunks = wanted.div_ceil(query_tasks).clamp(1, blocks);
        let blocks_per_chunk = blocks.div_ceil(chunks);
        let items_per_chunk = blocks_per_chunk * self.items_per_block();
        let mut tasks = Vec::new();
        for p in (panels.start..panels.end).step_by(panels_per_task) {
            let p_range = p..(p + panels_per_task).min(panels.end);
            for i in (0..self.gallery.items).step_by(items_per_chunk) {
                tasks.push((p_range.clone(), i..(i + items_per_chunk).min(self.gallery.items)));
            }
        }
        threads::install(|| {
            tasks
                .into_par_iter()
                .map(|(p, i)| {
                    let q = p.start * lanes..(p.end * lanes).min(self.queries.rows);
                    let mut state = init(q, i.clone())?;
                    self.stream(p, i, &mut state, &consume)?;
                    Ok(state)
                })
                .collect::<Vec<Result<S>>>()
        })
        .into_iter()
        // The first failure in task order: query tasks cover every item in order, so a
        // non-finite gallery value is reported where it first occurs.
        .collect()
    }

    /// Scores of queries `rows` (any range inside `0..n_queries`) against the whole gallery,
    /// row-major. The output is allocated fallibly ([`QureError::OutOfMemory`]).
    pub fn score_rows(&self, rows: Range<usize>) -> Result<Vec<f32>> {
        let n = self.gallery.items;
        if rows.start > rows.end || rows.end > self.queries.rows {
            return Err(QureError::invalid(format!(
                "query rows {}..{} are not inside the {} queries",
                rows.start, rows.end, self.queries.rows
            )));
        }
        let mut out = try_filled("scores", &[rows.len(), n], 0.0f32)?;
        let out_ptr = SharedOut { ptr: out.as_mut_ptr(), len: out.len() };
        let (first, end) = (rows.start, rows.end);
        self.run(
            rows,
            TASK_QUERIES,
            false,
            |_, _| Ok(()),
            |_, tile| {
                // Only the panel's queries inside `rows` are written (a panel can straddle it).
                let lo = first.max(tile.first_query);
                let hi = end.min(tile.first_query + tile.queries);
                for query in lo..hi {
                    let l = query - tile.first_query;
                    // SAFETY: tasks cover disjoint (query, item) ranges, so no two slices
                    // overlap; `slice` checks the range against `out`, which outlives `run`
                    // (it joins every task before returning).
                    let dst =
                        unsafe { out_ptr.slice((query - first) * n + tile.first_item, tile.items) };
                    for (i, v) in dst.iter_mut().enumerate() {
                        *v = tile.scores[i * tile.lanes + l];
                    }
                }
            },
        )?;
        Ok(out)
    }

    /// The score of query `q` against item `item`, computed by the same chain as every tile.
    pub fn score_one(&self, q: usize, item: usize) -> f32 {
        let d = self.gallery.dim;
        let query = &self.queries.data[q * d..(q + 1) * d];
        let t = self.gallery.tokens;
        (0..t)
            .map(|token| {
                let first = (item * t + token) * d;
                (0..d).fold(0.0f32, |s, k| self.gallery.data.get(first + k).mul_add(query[k], s))
            })
            .fold(f32::NEG_INFINITY, f32::max)
    }
}

/// The output of [`Scorer::score_rows`], written by several tasks at once.
#[derive(Clone, Copy)]
struct SharedOut {
    ptr: *mut f32,
    len: usize,
}
// SAFETY: only used for disjoint writes from tasks joined before the buffer is read.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}
impl SharedOut {
    /// `out[start .. start + len]`.
    ///
    /// # Safety
    /// No other live slice may overlap the range, and the buffer must outlive the slice.
    /// (The range itself is checked: an out-of-bounds request panics.)
    unsafe fn slice<'o>(self, start: usize, len: usize) -> &'o mut [f32] {
        assert!(
            start.checked_add(len).is_some_and(|end| end <= self.len),
            "score output range {start}+{len} outside {}",
            self.len
        );
        std::slice::from_raw_parts_mut(self.ptr.add(start), len)
    }
}

/// `(Q, N)` scores, row-major.
pub fn score(queries: Queries<'_>, gallery: Gallery<'_>) -> Result<Vec<f32>> {
    let scorer = Scorer::new(queries, gallery)?;
    scorer.score_rows(0..queries.rows)
}

/// Exact top-k: `(values, indices)`, each `(Q, k)` row-major, sorted by score descending with
/// ties by ascending index. `exclude` (CSR per query) removes items; queries left with fewer
/// than `k` items are padded with `(-inf, -1)`. An item scoring `-inf` (only features that
/// overflow `f32` can score that) counts as no item: it is never returned.
pub fn topk(
    queries: Queries<'_>,
    gallery: Gallery<'_>,
    k: usize,
    exclude: Option<crate::mining::CsrRef<'_>>,
) -> Result<(Vec<f32>, Vec<i64>)> {
    let scorer = Scorer::new(queries, gallery)?;
    let n = gallery.items;
    if k == 0 || k > n {
        return Err(QureError::invalid(format!(
            "k must be between 1 and the gallery size {n}, got {k}"
        )));
    }
    let q = queries.rows;
    let mut values = try_filled("top-k values", &[q, k], f32::NEG_INFINITY)?;
    let mut indices = try_filled("top-k indices", &[q, k], -1i64)?;
    let mut excluded: Vec<Vec<i64>> = try_filled("exclusion lists", &[q], Vec::new())?;
    if let Some(csr) = exclude {
        crate::mining::validate_csr(csr, q, n, "exclude")?;
        for (i, list) in excluded.iter_mut().enumerate() {
            list.extend_from_slice(csr.row(i));
            list.sort_unstable();
        }
    }
    let kernel = scorer.kernel();
    let parts = scorer.run(
        0..q,
        TOPK_TASK_QUERIES,
        k >= LARGE_K,
        |rows, _| TopKState::new(rows, k),
        |state, tile| state.consume(kernel, tile, &excluded),
    )?;
    // Merge the chunks of each query block (consecutive parts with the same first query): every
    // chunk kept its own exact top k.
    let mut keys: Vec<u64> = Vec::new();
    let mut start = 0;
    while start < parts.len() {
        let first = parts[start].first;
        let end = start + parts[start..].iter().take_while(|p| p.first == first).count();
        let group = &parts[start..end];
        for offset in 0..group[0].heaps.len() {
            keys.clear();
            let total: usize = group.iter().map(|p| p.heaps[offset].keys.len()).sum();
            try_reserve(&mut keys, total, "top-k candidates", &[total])?;
            for part in group {
                keys.extend_from_slice(&part.heaps[offset].keys);
            }
            if keys.len() > k {
                keys.select_nth_unstable(k - 1);
                keys.truncate(k);
            }
            keys.sort_unstable();
            let i = first + offset;
            for (j, &key) in keys.iter().enumerate() {
                values[i * k + j] = key_score(key);
                indices[i * k + j] = i64::from(key_index(key));
            }
        }
        start = end;
    }
    Ok((values, indices))
}

/// The running top k of one query: candidates accumulate up to `2k`, then are cut back to `k`.
struct Heap {
    keys: Vec<u64>,
    /// Worst kept key once `k` are kept (`u64::MAX` before).
    bound: u64,
    /// The score of `bound`: a later item (higher index) enters only with a strictly higher one.
    bound_score: f32,
}

struct TopKState {
    first: usize,
    k: usize,
    heaps: Vec<Heap>,
    /// Per tile row: the lanes whose bound the row beats (from the bounds at the tile's start).
    masks: Vec<u64>,
}

impl TopKState {
    /// Room for `2k` candidates per query of `rows`, allocated fallibly.
    fn new(rows: Range<usize>, k: usize) -> Result<Self> {
        let shape = [rows.len(), k.saturating_mul(2)];
        let mut heaps = Vec::new();
        try_reserve(&mut heaps, rows.len(), "top-k candidates", &shape)?;
        for _ in rows.clone() {
            let mut keys = Vec::new();
            try_reserve(&mut keys, shape[1], "top-k candidates", &shape)?;
            heaps.push(Heap { keys, bound: u64::MAX, bound_score: f32::NEG_INFINITY });
        }
        let mut masks = Vec::new();
        try_reserve(&mut masks, BLOCK_ROWS, "top-k candidates", &[BLOCK_ROWS])?;
        Ok(TopKState { first: rows.start, k, heaps, masks })
    }

    fn consume(&mut self, kernel: Kernel, tile: &Tile<'_>, excluded: &[Vec<i64>]) {
        let offset = tile.first_query - self.first;
        let heaps = &mut self.heaps[offset..offset + tile.queries];
        offer_tile(kernel, tile, heaps, &mut self.masks, self.k, |l, item, _| {
            let query = tile.first_query + l;
            !excluded[query].is_empty() && excluded[query].binary_search(&(item as i64)).is_ok()
        });
    }
}

impl Heap {
    /// Keeps `key` (already known to beat `bound`); once `2k` are held, cuts back to the best
    /// `k` and raises the bound.
    fn push(&mut self, key: u64, k: usize) {
        self.keys.push(key);
        if self.keys.len() == 2 * k {
            self.keys.select_nth_unstable(k - 1);
            self.keys.truncate(k);
            self.bound = self.keys[k - 1];
            self.bound_score = key_score(self.bound);
        }
    }
}

/// Offers every item of `tile` to the running top `k` of each of its queries (`heaps`, one
/// per query of the tile), except those `skip(lane, item, key)` refuses. Which queries' bounds
/// each row beats is found for all rows at once (SIMD); bounds only rise, so a mask from the
/// tile's starting bounds lets through every candidate (and a few the exact key test refuses).
fn offer_tile(
    kernel: Kernel,
    tile: &Tile<'_>,
    heaps: &mut [Heap],
    masks: &mut Vec<u64>,
    k: usize,
    mut skip: impl FnMut(usize, usize, u64) -> bool,
) {
    let lanes = tile.lanes;
    let mut bounds = [f32::INFINITY; MAX_LANES]; // lanes past the last query never hit
    for (b, h) in bounds.iter_mut().zip(heaps.iter()) {
        *b = h.bound_score;
    }
    masks.clear();
    masks.resize(tile.items, 0);
    above_masks(kernel, tile.scores, lanes, &bounds[..lanes], masks);
    // Rows that beat no bound are skipped 64 at a time (once the bounds have risen, most rows).
    for (c, chunk) in masks.chunks(64).enumerate() {
        let mut rows_hit =
            chunk.iter().enumerate().fold(0u64, |hit, (b, &m)| hit | (u64::from(m != 0) << b));
        while rows_hit != 0 {
            let i = c * 64 + rows_hit.trailing_zeros() as usize;
            rows_hit &= rows_hit - 1;
            offer_row(tile, heaps, k, &mut skip, i, masks[i]);
        }
    }
}

/// Offers row `i` of `tile` to the heaps of the lanes set in `mask` ([`offer_tile`]).
#[inline(always)]
fn offer_row(
    tile: &Tile<'_>,
    heaps: &mut [Heap],
    k: usize,
    skip: &mut impl FnMut(usize, usize, u64) -> bool,
    i: usize,
    mask: u64,
) {
    let lanes = tile.lanes;
    let row = &tile.scores[i * lanes..(i + 1) * lanes];
    let item = tile.first_item + i;
    let mut mask = mask;
    while mask != 0 {
        let l = mask.trailing_zeros() as usize;
        mask &= mask - 1;
        if l >= tile.queries {
            break;
        }
        let heap = &mut heaps[l];
        if row[l] < heap.bound_score {
            continue; // the bound rose since the mask was taken
        }
        let key = rank_key(row[l], item as u32);
        if key >= heap.bound || skip(l, item, key) {
            continue;
        }
        heap.push(key, k);
    }
}

/// Each target's 0-based rank: items scoring strictly higher, plus ties with a lower index.
pub fn target_rank(
    queries: Queries<'_>,
    gallery: Gallery<'_>,
    targets: &[i64],
) -> Result<Vec<i64>> {
    let scorer = Scorer::new(queries, gallery)?;
    let q = queries.rows;
    if targets.len() != q {
        return Err(QureError::invalid(format!(
            "target_idx has {} entries but there are {q} queries",
            targets.len()
        )));
    }
    if let Some((i, &t)) =
        targets.iter().enumerate().find(|&(_, &t)| t < 0 || t as u64 >= gallery.items as u64)
    {
        return Err(QureError::invalid(format!(
            "target_idx[{i}] = {t} is out of range for a gallery of {} items",
            gallery.items
        )));
    }
    let target_scores: Vec<f32> =
        (0..q).map(|i| scorer.score_one(i, targets[i] as usize)).collect();
    let parts = scorer.run(
        0..q,
        TASK_QUERIES,
        false,
        |rows, _| Ok((rows.start, vec![0i64; rows.len()])),
        |(first, counts), tile| {
            // Row by row over the tile, all lanes at once (vectorisable).
            let lanes = tile.lanes;
            let mut best = [f32::INFINITY; MAX_LANES];
            let mut target = [0usize; MAX_LANES];
            for l in 0..tile.queries {
                best[l] = target_scores[tile.first_query + l];
                target[l] = targets[tile.first_query + l] as usize;
            }
            let mut above = [0u32; MAX_LANES];
            for (i, row) in tile.scores.chunks_exact(lanes).enumerate() {
                let item = tile.first_item + i;
                for (((count, &s), &b), &t) in above.iter_mut().zip(row).zip(&best).zip(&target) {
                    *count += u32::from(s > b) | (u32::from(s == b) & u32::from(item < t));
                }
            }
            for l in 0..tile.queries {
                counts[tile.first_query + l - *first] += i64::from(above[l]);
            }
        },
    )?;
    let mut ranks = vec![0i64; q];
    for (first, counts) in parts {
        for (offset, c) in counts.into_iter().enumerate() {
            ranks[first + offset] += c;
        }
    }
    Ok(ranks)
}

/// `max_rank` windows at most `1 / WINDOW_FRACTION` of the gallery are mined from a streaming
/// pass that keeps only each query's window (no score rows).
const WINDOW_FRACTION: usize = 4;
/// Window-candidate bytes held at once by the windowed pass (2 M keys of 8 bytes per query).
const WINDOW_BLOCK_BYTES: usize = 16 << 20;

/// One task's state in the windowed pass: per query, the items ranked before its target and
/// the running window (the first `m` items ranked after it, as a top-m selection).
struct WindowState {
    first: usize,
    m: usize,
    /// Collect the best `m` items other than the target (a top-k window) rather than the
    /// first `m` after it.
    top: bool,
    above: Vec<u64>,
    heaps: Vec<Heap>,
    masks: Vec<u64>,
    finite: bool,
}

impl WindowState {
    fn new(rows: Range<usize>, m: usize, top: bool) -> Result<Self> {
        let topk = TopKState::new(rows.clone(), m)?;
        let above = try_filled("target ranks", &[rows.len()], 0u64)?;
        Ok(WindowState {
            first: rows.start,
            m,
            top,
            above,
            heaps: topk.heaps,
            masks: topk.masks,
            finite: true,
        })
    }

    fn consume(&mut self, kernel: Kernel, tile: &Tile<'_>, target_scores: &[f32], targets: &[i64]) {
        let lanes = tile.lanes;
        let offset = tile.first_query - self.first;
        let (mut ts, mut tt) = ([f32::INFINITY; MAX_LANES], [0usize; MAX_LANES]);
        let mut tkey = [0u64; MAX_LANES];
        for l in 0..tile.queries {
            let query = tile.first_query + l;
            ts[l] = target_scores[query];
            tt[l] = targets[query] as usize;
            tkey[l] = rank_key(ts[l], tt[l] as u32);
        }
        self.finite &= tile.scores.iter().fold(true, |ok, s| ok & s.is_finite());
        // Items ranked before the target, all lanes at once (as target_rank counts them).
        let mut above = [0u32; MAX_LANES];
        for (i, row) in tile.scores.chunks_exact(lanes).enumerate() {
            let item = tile.first_item + i;
            for (((count, &s), &b), &t) in above.iter_mut().zip(row).zip(&ts).zip(&tt) {
                *count += u32::from(s > b) | (u32::from(s == b) & u32::from(item < t));
            }
        }
        for (total, &count) in self.above[offset..offset + tile.queries].iter_mut().zip(&above) {
            *total += u64::from(count);
        }
        // Window candidates: as top-k, without the target (and, for a window after the target,
        // without the items ranked before it).
        let heaps = &mut self.heaps[offset..offset + tile.queries];
        let top = self.top;
        offer_tile(kernel, tile, heaps, &mut self.masks, self.m, |l, item, key| {
            if top {
                item == tt[l]
            } else {
                key <= tkey[l]
            }
        });
    }
}

/// `mine_from_features` with a `max_rank = m` window: per block of queries, one streaming pass
/// finds each target's rank and its window (the first `m` items after it), which the miner
/// then mines. `None` when a score overflowed to infinity (the caller then takes the row path,
/// which reports it as it always has).
fn mine_windows(
    scorer: &Scorer<'_>,
    miner: &Miner<'_>,
    targets: &[i64],
    m: usize,
    top: bool,
    progress: &mut impl FnMut(usize, usize),
) -> Result<Option<HardNegatives>> {
    let q = scorer.queries.rows;
    let lanes = scorer.lanes;
    let target_scores: Vec<f32> = threads::install(|| {
        (0..q).into_par_iter().map(|i| scorer.score_one(i, targets[i] as usize)).collect()
    });
    if target_scores.iter().any(|s| !s.is_finite()) {
        return Ok(None);
    }
    let per_query = m.saturating_mul(16).max(1);
    let rows = (WINDOW_BLOCK_BYTES / per_query).clamp(1, q.max(1)).div_ceil(lanes) * lanes;
    let mut out = HardNegatives::try_with_capacity(q)?;
    let kernel = scorer.kernel();
    for first in (0..q).step_by(rows) {
        let last = (first + rows).min(q);
        let parts = scorer.run(
            first..last,
            TOPK_TASK_QUERIES,
            true,
            |r, _| WindowState::new(r, m, top),
            |state, tile| state.consume(kernel, tile, &target_scores, targets),
        )?;
        if parts.iter().any(|p| !p.finite) {
            return Ok(None);
        }
        // Merge the gallery chunks of each query (parts with the same first query).
        let mut ranks = try_filled("target ranks", &[last - first], 0usize)?;
        let mut windows: Vec<Vec<u64>> = try_filled("windows", &[last - first], Vec::new())?;
        for part in parts {
            for (offset, (heap, above)) in part.heaps.into_iter().zip(part.above).enumerate() {
                let query = part.first + offset;
                if query < first || query >= last {
                    continue;
                }
                ranks[query - first] += above as usize;
                let window = &mut windows[query - first];
                if window.is_empty() {
                    *window = heap.keys; // moved, not copied: most queries have one part
                } else {
                    let total = window.len() + heap.keys.len();
                    try_reserve(window, heap.keys.len(), "windows", &[total])?;
                    window.extend_from_slice(&heap.keys);
                }
            }
        }
        for window in windows.iter_mut() {
            if window.len() > m {
                window.select_nth_unstable(m - 1);
                window.truncate(m);
            }
        }
        let scores = &target_scores[first..last];
        threads::install(|| miner.mine_windows(first, &ranks, scores, &windows, &mut out))?;
        progress(last, q);
    }
    Ok(Some(out))
}

/// Scores query blocks and mines them as it goes: the same result as
/// `mine_negatives(score(queries, gallery), ...)`, holding at most one block of score rows.
/// `block_rows` (rounded to the kernel's panel width) defaults to about 64 MiB of scores.
pub fn mine_from_features(
    queries: Queries<'_>,
    gallery: Gallery<'_>,
    targets: &[i64],
    options: MineOptions,
    exclusions: Exclusions<'_>,
    block_rows: Option<usize>,
    progress: impl FnMut(usize, usize),
) -> Result<HardNegatives> {
    mine_from_features_with(
        queries,
        gallery,
        targets,
        options,
        exclusions,
        Spec::default(),
        block_rows,
        progress,
    )
}

/// [`mine_from_features`] with a candidate set, filters and selection ([`crate::strategy`]).
#[allow(clippy::too_many_arguments)]
pub fn mine_from_features_with(
    queries: Queries<'_>,
    gallery: Gallery<'_>,
    targets: &[i64],
    options: MineOptions,
    exclusions: Exclusions<'_>,
    spec: Spec,
    block_rows: Option<usize>,
    mut progress: impl FnMut(usize, usize),
) -> Result<HardNegatives> {
    let miner = Miner::new(gallery.items, targets, options, exclusions)?.with_spec(spec)?;
    if targets.len() != queries.rows {
        return Err(QureError::invalid(format!(
            "target_idx has {} entries but there are {} queries",
            targets.len(),
            queries.rows
        )));
    }
    if block_rows == Some(0) {
        return Err(QureError::invalid("block_size must be at least 1"));
    }
    let scorer = Scorer::new(queries, gallery)?;
    let lanes = scorer.lanes;
    let n = gallery.items;
    let q = queries.rows;
    // A short window (after the target, or a top-k one) streams instead of holding score rows.
    let window = match spec.candidates {
        Candidates::Top { end: Some(e), .. } if spec.filters.reference == Reference::Target => {
            Some((e, true))
        }
        _ if miner.reads_tail_only() => options.max_rank.map(|m| (m, false)),
        _ => None,
    };
    if let Some((m, top)) = window {
        if m.saturating_mul(WINDOW_FRACTION) <= n && block_rows.is_none() {
            if let Some(out) = mine_windows(&scorer, &miner, targets, m, top, &mut progress)? {
                return Ok(out);
            }
        }
    }
    // At most all the queries (so a huge block_size cannot overflow), in whole panels.
    let wanted = block_rows.unwrap_or(MINE_BLOCK_BYTES / 4 / n).clamp(1, q.max(1));
    let rows = wanted.div_ceil(lanes) * lanes;
    let mut out = HardNegatives::try_with_capacity(q)?;
    for first in (0..q).step_by(rows) {
        let last = (first + rows).min(q);
        let block = scorer.score_rows(first..last)?;
        threads::install(|| miner.mine_block(first, &block, &mut out))?;
        progress(last, q);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::dot_chain;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn random(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    fn reference_scores(
        q: &[f32],
        g: &[f32],
        rows: usize,
        items: usize,
        t: usize,
        d: usize,
    ) -> Vec<f32> {
        let mut out = vec![0.0; rows * items];
        for i in 0..rows {
            for j in 0..items {
                out[i * items + j] = (0..t)
                    .map(|tok| {
                        dot_chain(
                            &g[(j * t + tok) * d..(j * t + tok + 1) * d],
                            &q[i * d..(i + 1) * d],
                        )
                    })
                    .fold(f32::NEG_INFINITY, f32::max);
            }
        }
        out
    }

    #[test]
    fn scores_are_the_reference_chain_for_every_kernel_and_shape() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for &(rows, items, t, d) in
            &[(1, 1, 1, 3), (5, 7, 2, 3), (33, 130, 1, 17), (40, 37, 32, 8), (70, 600, 3, 5)]
        {
            let q = random(&mut rng, rows * d);
            let g = random(&mut rng, items * t * d);
            let want = reference_scores(&q, &g, rows, items, t, d);
            for kernel in Kernel::available() {
                let scorer = Scorer::with_kernel(
                    Queries { data: &q, rows, dim: d },
                    Gallery { data: Features::F32(&g), items, tokens: t, dim: d },
                    kernel,
                )
                .unwrap();
                let got = scorer.score_rows(0..rows).unwrap();
                assert_eq!(got, want, "{kernel:?} {rows}x{items}x{t}x{d}");
                // Any sub-range, aligned to the kernel's panels or not, is that slice of rows.
                for (a, b) in [(0, rows.min(10)), (rows / 3, rows), (rows / 2, rows / 2)] {
                    let part = scorer.score_rows(a..b).unwrap();
                    assert_eq!(part, want[a * items..b * items], "{kernel:?} rows {a}..{b}");
                }
            }
        }
    }

    #[test]
    fn topk_ranks_and_mining_agree_with_full_scores() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let (rows, items, t, d) = (45, 1300, 2, 6);
        // Quantised features make exact ties common.
        let q: Vec<f32> =
            random(&mut rng, rows * d).iter().map(|v| (v * 2.0).round() / 2.0).collect();
        let g: Vec<f32> =
            random(&mut rng, items * t * d).iter().map(|v| (v * 2.0).round() / 2.0).collect();
        let queries = Queries { data: &q, rows, dim: d };
        let gallery = Gallery { data: Features::F32(&g), items, tokens: t, dim: d };
        let full = score(queries, gallery).unwrap();
        let targets: Vec<i64> = (0..rows).map(|_| rng.random_range(0..items as i64)).collect();
        let k = 20;
        let (values, indices) = topk(queries, gallery, k, None).unwrap();
        let ranks = target_rank(queries, gallery, &targets).unwrap();
        for i in 0..rows {
            let row = &full[i * items..(i + 1) * items];
            let mut order: Vec<usize> = (0..items).collect();
            order.sort_by(|&a, &b| row[b].partial_cmp(&row[a]).unwrap().then(a.cmp(&b)));
            let want: Vec<i64> = order[..k].iter().map(|&j| j as i64).collect();
            assert_eq!(&indices[i * k..(i + 1) * k], &want[..]);
            assert_eq!(values[i * k], row[order[0]]);
            let p = order.iter().position(|&j| j as i64 == targets[i]).unwrap();
            assert_eq!(ranks[i], p as i64);
        }
        let options = MineOptions::default();
        let want =
            crate::mining::mine_negatives(&full, items, &targets, options, Exclusions::default())
                .unwrap();
        for block in [None, Some(1), Some(40)] {
            let got = mine_from_features(
                queries,
                gallery,
                &targets,
                options,
                Exclusions::default(),
                block,
                |_, _| {},
            )
            .unwrap();
            assert_eq!(got, want);
        }
    }

    #[test]
    fn half_galleries_score_as_their_widened_values_on_every_path() {
        let mut rng = ChaCha8Rng::seed_from_u64(17);
        let (items, t, d) = (700, 3, 19);
        let g = random(&mut rng, items * t * d);
        let f16: Vec<u16> = g.iter().map(|&v| half::f16::from_f32(v).to_bits()).collect();
        let bf16: Vec<u16> = g.iter().map(|&v| half::bf16::from_f32(v).to_bits()).collect();
        for (half, widen) in [
            (Features::F16(&f16), f16.iter().map(|&b| crate::kernel::widen_f16(b)).collect()),
            (Features::Bf16(&bf16), bf16.iter().map(|&b| crate::kernel::widen_bf16(b)).collect()),
        ] {
            let widened: Vec<f32> = widen;
            // Few queries (the few-query kernel) and many (query panels).
            for rows in [1, 3, 16, 17, 70] {
                let q = random(&mut rng, rows * d);
                let queries = Queries { data: &q, rows, dim: d };
                let exact = Gallery { data: Features::F32(&widened), items, tokens: t, dim: d };
                let gallery = Gallery { data: half, items, tokens: t, dim: d };
                let want = reference_scores(&q, &widened, rows, items, t, d);
                for kernel in Kernel::available() {
                    let scorer = Scorer::with_kernel(queries, gallery, kernel).unwrap();
                    let got = scorer.score_rows(0..rows).unwrap();
                    assert_eq!(got, want, "{kernel:?} {} rows={rows}", half.dtype());
                }
                let targets: Vec<i64> = (0..rows).map(|i| (i * 37 % items) as i64).collect();
                assert_eq!(topk(queries, gallery, 50, None), topk(queries, exact, 50, None));
                assert_eq!(
                    target_rank(queries, gallery, &targets),
                    target_rank(queries, exact, &targets)
                );
                let opts = MineOptions::default();
                let none = Exclusions::default();
                let a = mine_from_features(queries, gallery, &targets, opts, none, None, |_, _| {});
                let b = mine_from_features(queries, exact, &targets, opts, none, None, |_, _| {});
                assert_eq!(a, b);
            }
        }
    }

    #[test]
    fn topk_is_exact_and_the_same_for_any_thread_count_query_count_and_k() {
        let mut rng = ChaCha8Rng::seed_from_u64(23);
        let (items, d) = (5000, 8);
        // Quantised: many exact ties.
        let g: Vec<f32> = random(&mut rng, items * d).iter().map(|v| (v * 4.0).round()).collect();
        let gallery = Gallery { data: Features::F32(&g), items, tokens: 1, dim: d };
        for rows in [1, 4, 16, 40] {
            let q: Vec<f32> =
                random(&mut rng, rows * d).iter().map(|v| (v * 4.0).round()).collect();
            let queries = Queries { data: &q, rows, dim: d };
            let full = score(queries, gallery).unwrap();
            for k in [1, 100, 300, 2048] {
                let run = |threads: usize| {
                    let pool =
                        rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                    crate::threads::set_num_threads(threads).unwrap();
                    pool.install(|| topk(queries, gallery, k, None).unwrap())
                };
                let (values, indices) = run(1);
                for i in 0..rows {
                    let row = &full[i * items..(i + 1) * items];
                    let mut order: Vec<usize> = (0..items).collect();
                    order.sort_by(|&a, &b| row[b].partial_cmp(&row[a]).unwrap().then(a.cmp(&b)));
                    let want: Vec<i64> = order[..k].iter().map(|&j| j as i64).collect();
                    assert_eq!(&indices[i * k..(i + 1) * k], &want[..], "rows={rows} k={k}");
                    assert_eq!(values[i * k + k - 1], row[order[k - 1]]);
                }
                assert_eq!(run(3), (values.clone(), indices.clone()), "rows={rows} k={k}");
            }
        }
        crate::threads::set_num_threads(crate::threads::default_num_threads()).unwrap();
    }

    #[test]
    fn a_non_finite_gallery_value_is_named_by_its_first_row_in_every_format() {
        let (items, t, d) = (3000, 2, 5);
        let q = [0.5f32; 5 * 40];
        for rows in [2, 40] {
            let queries = Queries { data: &q[..rows * d], rows, dim: d };
            let mut g = vec![0.25f32; items * t * d];
            g[2100 * t * d + 7] = f32::NAN;
            g[2900 * t * d] = f32::INFINITY;
            let h: Vec<u16> = g.iter().map(|&v| half::f16::from_f32(v).to_bits()).collect();
            let b: Vec<u16> = g.iter().map(|&v| half::bf16::from_f32(v).to_bits()).collect();
            for data in [Features::F32(&g), Features::F16(&h), Features::Bf16(&b)] {
                let gallery = Gallery { data, items, tokens: t, dim: d };
                let want = QureError::NonFinite { what: "gallery", row: 2100, col: 7 };
                assert_eq!(score(queries, gallery).unwrap_err(), want);
                assert_eq!(topk(queries, gallery, 3, None).unwrap_err(), want);
                let none = Queries { data: &[], rows: 0, dim: d };
                assert_eq!(score(none, gallery).unwrap_err(), want);
            }
        }
    }

    #[test]
    fn windowed_mining_from_features_is_mining_the_full_matrix() {
        let mut rng = ChaCha8Rng::seed_from_u64(29);
        for &(rows, items, t, d, quantised) in
            &[(3, 4000, 1, 8, false), (70, 3000, 2, 6, true), (40, 5000, 1, 16, false)]
        {
            let round = |v: f32| if quantised { (v * 2.0).round() / 2.0 } else { v };
            let q: Vec<f32> = random(&mut rng, rows * d).into_iter().map(round).collect();
            let g: Vec<f32> = random(&mut rng, items * t * d).into_iter().map(round).collect();
            let queries = Queries { data: &q, rows, dim: d };
            let gallery = Gallery { data: Features::F32(&g), items, tokens: t, dim: d };
            let full = score(queries, gallery).unwrap();
            let targets: Vec<i64> = (0..rows).map(|_| rng.random_range(0..items as i64)).collect();
            let ids: Vec<i64> = (0..items as i64).map(|i| i % (items as i64 - 7)).collect();
            let indptr: Vec<i64> = (0..=rows as i64).collect();
            let positives: Vec<i64> =
                (0..rows).map(|_| rng.random_range(0..items as i64)).collect();
            let exclusions = [
                Exclusions::default(),
                Exclusions {
                    positives: Some(crate::mining::CsrRef { indptr: &indptr, indices: &positives }),
                    gallery_ids: Some(&ids),
                },
            ];
            for m in [1, 2, 3, 50, items / 4] {
                for pairing in
                    [crate::mining::Pairing::Consecutive, crate::mining::Pairing::Anchored]
                {
                    for excl in exclusions {
                        let options =
                            MineOptions { consecutive_threshold: 1, pairing, max_rank: Some(m) };
                        let want =
                            crate::mining::mine_negatives(&full, items, &targets, options, excl)
                                .unwrap();
                        for threads in [1, 3] {
                            crate::threads::set_num_threads(threads).unwrap();
                            let got = mine_from_features(
                                queries,
                                gallery,
                                &targets,
                                options,
                                excl,
                                None,
                                |_, _| {},
                            )
                            .unwrap();
                            assert_eq!(
                                got, want,
                                "rows={rows} m={m} {pairing:?} threads={threads}"
                            );
                        }
                    }
                }
            }
        }
        crate::threads::set_num_threads(crate::threads::default_num_threads()).unwrap();
    }

    #[test]
    fn topk_excludes_and_pads() {
        let q = [1.0f32];
        let g = [3.0f32, 2.0, 1.0];
        let queries = Queries { data: &q, rows: 1, dim: 1 };
        let gallery = Gallery { data: Features::F32(&g), items: 3, tokens: 1, dim: 1 };
        let indptr = [0i64, 2];
        let indices = [0i64, 2];
        let csr = crate::mining::CsrRef { indptr: &indptr, indices: &indices };
        let (values, idx) = topk(queries, gallery, 2, Some(csr)).unwrap();
        assert_eq!(idx, vec![1, -1]);
        assert_eq!(values, vec![2.0, f32::NEG_INFINITY]);
        assert!(topk(queries, gallery, 4, None).is_err());
        assert!(topk(queries, gallery, 0, None).is_err());
    }

    #[test]
    fn any_row_range_is_written_inside_its_output_only() {
        // 100 queries: no kernel's panel width divides 10 or 7..93, so panels straddle the range.
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let (rows, items, d) = (100, 9, 3);
        let q = random(&mut rng, rows * d);
        let g = random(&mut rng, items * d);
        let scorer = Scorer::new(
            Queries { data: &q, rows, dim: d },
            Gallery { data: Features::F32(&g), items, tokens: 1, dim: d },
        )
        .unwrap();
        let full = scorer.score_rows(0..rows).unwrap();
        assert_eq!(scorer.score_rows(0..10).unwrap(), full[..10 * items]);
        assert_eq!(scorer.score_rows(7..93).unwrap(), full[7 * items..93 * items]);
        assert!(scorer.score_rows(50..101).is_err());
        #[allow(clippy::reversed_empty_ranges)]
        let backwards = 60..50;
        assert!(scorer.score_rows(backwards).is_err());
    }

    #[test]
    fn scores_that_overflow_are_infinite_in_every_kernel() {
        // 2e19 * 2e19 = 4e38 > f32::MAX; a fused step adds the exact product to an infinite
        // sum, so the chain stays +-inf and never turns NaN.
        let big = 2e19f32;
        // More than one panel of every kernel, and few queries (the few-query kernels).
        for rows in [40, 3] {
            let q: Vec<f32> = (0..rows).flat_map(|_| [big, big]).collect();
            let queries = Queries { data: &q, rows, dim: 2 };
            let g = [big, -big, -big, big, 0.5, 0.25];
            let want = [f32::INFINITY, f32::NEG_INFINITY, dot_chain(&g[4..], &q[..2])];
            for kernel in Kernel::available() {
                let gallery = Gallery { data: Features::F32(&g), items: 3, tokens: 1, dim: 2 };
                let scorer = Scorer::with_kernel(queries, gallery, kernel).unwrap();
                for row in scorer.score_rows(0..rows).unwrap().chunks_exact(3) {
                    assert_eq!(row, want, "{kernel:?} {rows} queries");
                }
            }
        }
    }

    #[test]
    fn outputs_too_large_to_allocate_are_errors_not_aborts() {
        // 2^23 x 2^23 scores are 256 TiB: more than any address space holds.
        let n = 1usize << 23;
        let ones = vec![1.0f32; n];
        let queries = Queries { data: &ones, rows: n, dim: 1 };
        let gallery = Gallery { data: Features::F32(&ones), items: n, tokens: 1, dim: 1 };
        let err = score(queries, gallery).unwrap_err();
        assert_eq!(
            err,
            QureError::OutOfMemory { what: "scores", shape: vec![n, n], bytes: Some(4 * n * n) }
        );
        let err = topk(queries, gallery, n, None).unwrap_err();
        assert!(matches!(err, QureError::OutOfMemory { what: "top-k values", .. }), "{err}");
    }

    #[test]
    fn rejects_bad_features() {
        let q = [1.0f32, f32::NAN];
        let g = [1.0f32, 2.0];
        let err = score(
            Queries { data: &q, rows: 1, dim: 2 },
            Gallery { data: Features::F32(&g), items: 1, tokens: 1, dim: 2 },
        )
        .unwrap_err();
        assert_eq!(err, QureError::NonFinite { what: "queries", row: 0, col: 1 });
        assert!(score(
            Queries { data: &q, rows: 2, dim: 1 },
            Gallery { data: Features::F32(&g), items: 1, tokens: 1, dim: 2 }
        )
        .is_err());
    }
}
