//! Streaming passes over one score row for the fast row miner (`mining::fast`).
//!
//! Three passes, each a portable loop with AVX2 and AVX-512 builds that compute exactly the same
//! integers (tested bit for bit below):
//!
//! 1. [`RowPasses::tail_buckets`]: each item's coarse bucket (a `u16`) and the bucket counts. An
//!    item in the tail (ranked after the target) gets its score's bucket; any other item gets one
//!    of [`SPARE_SLOTS`] spare slots after the real buckets, chosen by its index, so that runs of
//!    such items do not all increment one counter.
//! 2. [`RowPasses::for_each_in_ranges`]: calls back for each item whose bucket lies in one of two
//!    ranges (the few buckets the miner reads item by item).
//! 3. The same pass for the band's buckets.
//!
//! The vector builds test 16 items at a time and only visit the items that pass; the per-item
//! work (counting, the callbacks) stays scalar, checked Rust.

use crate::kernel::{Kernel, Simd};
use crate::keys::rank_key;
use std::mem::MaybeUninit;

fn has_avx512bw() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx512bw");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

fn has_popcnt() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("popcnt");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Spare count slots after the real buckets (items not in the tail).
pub(crate) const SPARE_SLOTS: usize = 16;

/// The coarse bucket map: `min(trunc((hi - v) * scale), last)` in `f32`. Every step rounds
/// monotonically, so a higher score never lands in a later bucket and equal scores share one.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BucketMap {
    pub hi: f32,
    pub scale: f32,
    pub last: f32,
}

impl BucketMap {
    /// The bucket of a tail score (`v <= hi`, not NaN).
    #[inline(always)]
    pub fn bucket(self, v: f32) -> u16 {
        ((self.hi - v) * self.scale).min(self.last) as i32 as u16
    }
}

/// Which builds of the row passes this CPU runs (from run-time detection, through [`Kernel`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct RowPasses {
    simd: Simd,
    /// AVX-512BW (16-bit lanes) is there too: the `u16` passes use it with AVX-512.
    bw: bool,
}

impl RowPasses {
    /// The passes for the kernel in use (`QURE_SIMD` caps it as for scoring).
    pub fn current() -> Self {
        Self::for_kernel(Kernel::current())
    }

    /// The passes for `kernel`: its instruction set where the CPU also has AVX2 with FMA and
    /// POPCNT (the `u16` passes use AVX2, and the row miner is compiled for AVX2, FMA and
    /// POPCNT), portable code otherwise.
    pub fn for_kernel(kernel: Kernel) -> Self {
        let simd = match kernel.simd() {
            Simd::Portable => Simd::Portable,
            level => match Kernel::detect(Simd::Avx2) {
                Some(_) if has_popcnt() => level,
                _ => Simd::Portable,
            },
        };
        RowPasses { simd, bw: simd == Simd::Avx512 && has_avx512bw() }
    }

    /// The instruction set the passes run.
    pub fn simd(self) -> Simd {
        self.simd
    }

    /// Pass 1. Writes each item's bucket to `ids` (`map.bucket(v)` for tail items, else
    /// `spare + j % SPARE_SLOTS`) and adds one to `counts[ids[j]]`. The tail is every item
    /// scoring below `row[target]`, and those after the target scoring equal to it. Returns the
    /// tail size and whether every score is finite.
    ///
    /// `ids` must be as long as `row`, `counts` at least `spare + SPARE_SLOTS` long, and
    /// `map.last < spare` (so tail buckets stay below the spare slots): checked, panics otherwise.
    pub fn tail_buckets(
        self,
        row: &[f32],
        target: usize,
        map: BucketMap,
        spare: u16,
        ids: &mut [u16],
        counts: &mut [u32],
    ) -> (usize, bool) {
        assert!(
            ids.len() == row.len()
                && target < row.len()
                && counts.len() >= usize::from(spare) + SPARE_SLOTS
                && usize::from(spare) + SPARE_SLOTS <= usize::from(u16::MAX)
                && map.last < f32::from(spare)
                && map.last >= 0.0
        );
        #[cfg(target_arch = "x86_64")]
        match self.simd {
            // SAFETY: `RowPasses` holds a vector level only where run-time detection found it
            // (through `Kernel`), AVX2 and POPCNT; the functions' bounds are the asserts above.
            Simd::Avx512 => {
                return unsafe { x86::tail_buckets_avx512(row, target, map, spare, ids, counts) }
            }
            Simd::Avx2 => {
                return unsafe { x86::tail_buckets_avx2(row, target, map, spare, ids, counts) }
            }
            Simd::Portable => {}
        }
        tail_buckets_portable(row, 0, target, map, spare, ids, counts)
    }

    /// Passes 2 and 3: calls `visit(j, ids[j])` for every item, in index order, whose bucket lies
    /// in `first` or `second` (inclusive ranges; an empty range is `(1, 0)`). Stops early, and
    /// returns false, when `visit` does.
    pub fn for_each_in_ranges(
        self,
        ids: &[u16],
        first: (u16, u16),
        second: (u16, u16),
        mut visit: impl FnMut(usize, u16) -> bool,
    ) -> bool {
        #[cfg(target_arch = "x86_64")]
        if self.bw && ids.len() <= u32::MAX as usize {
            // SAFETY: AVX-512F (through `Kernel`), AVX-512BW and POPCNT were detected; the
            // positions fit the `u32` lanes.
            return unsafe { x86::for_each_in_ranges_avx512bw(ids, first, second, &mut visit) };
        }
        #[cfg(target_arch = "x86_64")]
        if self.simd != Simd::Portable {
            // SAFETY: as in `tail_buckets`: AVX2 was detected.
            return unsafe { x86::for_each_in_ranges_avx2(ids, first, second, &mut visit) };
        }
        for_each_in_ranges_portable(ids, 0, first, second, &mut visit)
    }
}

/// Slots [`RowPasses::tail_keys`] needs beyond the row's length (whole-vector stores).
pub(crate) const KEY_SLACK: usize = 16;

impl RowPasses {
    /// Writes the rank keys ([`rank_key`]) of the tail, in index order, to `keys[..len]` (every
    /// one of those slots is initialised; later ones may be written too) and returns `len`
    /// (at most `row.len()`) and whether every score is finite. The tail is every item scoring
    /// below `row[target]`, and those after the target scoring equal to it (float comparisons:
    /// for finite rows, exactly the items whose keys exceed the target's). `keys` must hold
    /// `row.len() + KEY_SLACK` slots: checked, panics otherwise.
    pub fn tail_keys(
        self,
        row: &[f32],
        target: usize,
        keys: &mut [MaybeUninit<u64>],
    ) -> (usize, bool) {
        assert!(
            target < row.len()
                && row.len() <= u32::MAX as usize
                && keys.len() >= row.len() + KEY_SLACK
        );
        #[cfg(target_arch = "x86_64")]
        if self.simd == Simd::Avx512 {
            // SAFETY: AVX-512F (through `Kernel`) and POPCNT were detected; bounds are checked above.
            return unsafe { x86::tail_keys_avx512(row, target, keys) };
        }
        tail_keys_portable(row, 0, target, row[target], keys)
    }

    /// Pass 3: writes to `keys[..len]` and `buckets[..len]` (every one of those slots is
    /// initialised; later ones may be written too) the rank key and the bucket of every item,
    /// in index order, whose bucket `ids[j]` lies in `range` (inclusive) and whose score lies in
    /// `[low, high]`; returns `len`. `ids` must be as long as `row`, the row must fit `u32`
    /// indices and `keys` and `buckets` must hold `row.len() + KEY_SLACK` slots: checked,
    /// panics otherwise.
    pub fn band_keys(
        self,
        row: &[f32],
        ids: &[u16],
        range: (u16, u16),
        (low, high): (f32, f32),
        keys: &mut [MaybeUninit<u64>],
        buckets: &mut [MaybeUninit<u32>],
    ) -> usize {
        assert!(
            ids.len() == row.len()
                && row.len() <= u32::MAX as usize
                && keys.len() >= row.len() + KEY_SLACK
                && buckets.len() >= row.len() + KEY_SLACK
        );
        #[cfg(target_arch = "x86_64")]
        if self.simd == Simd::Avx512 {
            // SAFETY: AVX-512F (through `Kernel`) and POPCNT were detected; bounds are checked
            // above.
            return unsafe { x86::band_keys_avx512(row, ids, range, (low, high), keys, buckets) };
        }
        band_keys_portable(row, ids, 0, range, (low, high), keys, buckets)
    }

    /// Replaces each count by the sum of the counts before it and marks the zero counts in
    /// `empty` (bit `b % 64` of word `b / 64` for count `b`; all of `empty` is overwritten).
    /// Returns the sum of all counts (wrapping, as the running sums do). `empty` must hold
    /// `counts.len().div_ceil(64)` words: checked, panics otherwise.
    pub fn prefix_counts(self, counts: &mut [u32], empty: &mut [u64]) -> u32 {
        assert!(empty.len() >= counts.len().div_ceil(64));
        empty.fill(0);
        #[cfg(target_arch = "x86_64")]
        if self.simd == Simd::Avx512 {
            // SAFETY: AVX-512F was detected (through `Kernel`); bounds are checked above.
            return unsafe { x86::prefix_counts_avx512(counts, empty) };
        }
        prefix_counts_portable(counts, 0, 0, empty)
    }

    /// Sorts each segment `keys[ends[i - 1]..ends[i]]` (the first from 0) of distinct keys.
    /// Segments of up to 32 keys are sorted without branches: each key's place is the number of
    /// smaller keys in its segment. `ends` must be non-decreasing and within `keys`: checked.
    pub fn sort_segments(self, keys: &mut [u64], ends: &[u32]) {
        assert!(
            ends.windows(2).all(|w| w[0] <= w[1])
                && ends.last().is_none_or(|&e| e as usize <= keys.len())
        );
        #[cfg(target_arch = "x86_64")]
        if self.simd == Simd::Avx512 {
            // SAFETY: AVX-512F (through `Kernel`) and POPCNT were detected; bounds are checked above.
            unsafe { x86::sort_segments_avx512(keys, ends) };
            return;
        }
        let mut start = 0;
        for &end in ends {
            sort_segment_portable(&mut keys[start..end as usize]);
            start = end as usize;
        }
    }
}

/// One segment of [`RowPasses::sort_segments`], portable.
#[inline(always)]
fn sort_segment_portable(keys: &mut [u64]) {
    match keys.len() {
        0 | 1 => {}
        2..=32 => {
            let mut padded = [u64::MAX; 32];
            padded[..keys.len()].copy_from_slice(keys);
            for &key in &padded[..keys.len()] {
                let place = padded.iter().fold(0usize, |n, &other| n + usize::from(other < key));
                keys[place] = key;
            }
        }
        _ => keys.sort_unstable(),
    }
}

#[inline(always)]
fn in_range(id: u16, range: (u16, u16)) -> bool {
    id >= range.0 && id <= range.1
}

/// Portable pass 1 over `row`, whose first item has index `offset` in the whole row.
#[inline(always)]
fn tail_buckets_portable(
    row: &[f32],
    offset: usize,
    target: usize,
    map: BucketMap,
    spare: u16,
    ids: &mut [u16],
    counts: &mut [u32],
) -> (usize, bool) {
    let mut tail = 0usize;
    let mut finite = true;
    for (i, (id, &v)) in ids.iter_mut().zip(row).enumerate() {
        let j = offset + i;
        finite &= v.is_finite();
        let in_tail = v < map.hi || (v == map.hi && j > target);
        tail += usize::from(in_tail);
        *id = if in_tail { map.bucket(v) } else { spare + (j % SPARE_SLOTS) as u16 };
        counts[usize::from(*id)] += 1;
    }
    (tail, finite)
}

/// Portable [`RowPasses::tail_keys`] over `row`, whose first item has index `offset`; the
/// keys go to `keys[0..]`.
#[inline(always)]
fn tail_keys_portable(
    row: &[f32],
    offset: usize,
    target: usize,
    st: f32,
    keys: &mut [MaybeUninit<u64>],
) -> (usize, bool) {
    let mut len = 0;
    let mut finite = true;
    // Branch-free compaction: every key is written, only tail keys advance.
    for (i, &v) in row.iter().enumerate() {
        let j = offset + i;
        finite &= v.is_finite();
        keys[len] = MaybeUninit::new(rank_key(v, j as u32));
        len += usize::from(v < st || (v == st && j > target));
    }
    (len, finite)
}

/// Portable [`RowPasses::band_keys`] over `row` and `ids`, whose first item has index
/// `offset`; the keys and buckets go to `keys[0..]` and `buckets[0..]`.
#[inline(always)]
fn band_keys_portable(
    row: &[f32],
    ids: &[u16],
    offset: usize,
    range: (u16, u16),
    (low, high): (f32, f32),
    keys: &mut [MaybeUninit<u64>],
    buckets: &mut [MaybeUninit<u32>],
) -> usize {
    let mut len = 0;
    // Branch-free compaction: every key is written, only the band's advance.
    for (i, (&v, &id)) in row.iter().zip(ids).enumerate() {
        keys[len] = MaybeUninit::new(rank_key(v, (offset + i) as u32));
        buckets[len] = MaybeUninit::new(u32::from(id));
        len += usize::from(in_range(id, range) && v >= low && v <= high);
    }
    len
}

/// Portable [`RowPasses::prefix_counts`] over `counts`, the counts from `first` on, whose sum
/// before them is `running`; `empty` is zero where it is set.
#[inline(always)]
fn prefix_counts_portable(
    counts: &mut [u32],
    first: usize,
    running: u32,
    empty: &mut [u64],
) -> u32 {
    let mut running = running;
    for (i, c) in counts.iter_mut().enumerate() {
        let b = first + i;
        let here = *c;
        empty[b / 64] |= u64::from(here == 0) << (b % 64);
        *c = running;
        running = running.wrapping_add(here);
    }
    running
}

/// Portable passes 2 and 3 over `ids`, whose first item has index `offset`.
#[inline(always)]
fn for_each_in_ranges_portable(
    ids: &[u16],
    offset: usize,
    first: (u16, u16),
    second: (u16, u16),
    visit: &mut impl FnMut(usize, u16) -> bool,
) -> bool {
    for (i, &id) in ids.iter().enumerate() {
        if (in_range(id, first) || in_range(id, second)) && !visit(offset + i, id) {
            return false;
        }
    }
    true
}

/// Items whose ids the vector builds write before counting them.
#[cfg(target_arch = "x86_64")]
const COUNT_CHUNK: usize = 1024;

/// Adds one to `counts[id]` for every id, which must be below `counts.len()`: checked once.
#[inline(always)]
fn count_ids(ids: &[u16], counts: &mut [u32]) {
    let max = ids.iter().fold(0u16, |m, &id| m.max(id));
    assert!(usize::from(max) < counts.len() || ids.is_empty());
    for &id in ids {
        // SAFETY: every id is at most `max`, checked against the length above.
        unsafe { *counts.get_unchecked_mut(usize::from(id)) += 1 };
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{
        band_keys_portable, count_ids, for_each_in_ranges_portable, prefix_counts_portable,
        tail_buckets_portable, tail_keys_portable, BucketMap, COUNT_CHUNK, SPARE_SLOTS,
    };
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;

    /// Lane `l` is `l`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn lane_numbers() -> __m512i {
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)
    }

    /// The lanes of `v`, the scores of items `start..start + 16`, whose value is NaN or infinite.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn non_finite_lanes(v: __m512) -> __mmask16 {
        let exponent = _mm512_set1_epi32(0x7f80_0000);
        _mm512_cmpeq_epi32_mask(_mm512_and_si512(_mm512_castps_si512(v), exponent), exponent)
    }

    /// The lanes of `v`, the scores of items `start..start + 16`, in the tail of the row whose
    /// target `target` scores `hi`: below it, or equal to it after the target.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn tail_lanes(v: __m512, hi: __m512, target: usize, start: usize) -> __mmask16 {
        let below = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(v, hi);
        let equal = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(v, hi);
        // j > target for lane l: l > target - start (as a signed lane compare, clamped).
        let after = if target < start {
            0xffff
        } else if target - start >= 16 {
            0
        } else {
            _mm512_cmpgt_epi32_mask(lane_numbers(), _mm512_set1_epi32((target - start) as i32))
        };
        below | (equal & after)
    }

    /// Writes the rank keys of the lanes of `v` (the scores of items `start..start + 16`) set
    /// in `mask`, in lane order, to `out[len..]`, and returns the new length. The keys are built
    /// in vectors (the high half is the score's bits with all but the sign flipped for positive
    /// scores, which is `!f32_to_ordered`), compressed and stored 8 at a time, whole.
    ///
    /// # Safety
    /// AVX-512F and POPCNT; `out[len..len + 16]` is writable; `start + 16` fits `u32`.
    #[inline]
    #[target_feature(enable = "avx512f,popcnt")]
    unsafe fn store_rank_keys(
        out: *mut MaybeUninit<u64>,
        mut len: usize,
        v: __m512,
        start: usize,
        mask: __mmask16,
    ) -> usize {
        // -0.0 + 0.0 = +0.0: both zeros get one key, as in `f32_to_ordered`.
        let bits = _mm512_castps_si512(_mm512_add_ps(v, _mm512_setzero_ps()));
        let negative = _mm512_srai_epi32::<31>(bits);
        let magnitude = _mm512_set1_epi32(0x7fff_ffff);
        let high = _mm512_xor_si512(bits, _mm512_andnot_si512(negative, magnitude));
        // Indices wrap as u32 lanes and are widened unsigned.
        let index = _mm512_add_epi32(_mm512_set1_epi32(start as u32 as i32), lane_numbers());
        for half in 0..2 {
            let (h, i) = if half == 0 {
                (_mm512_castsi512_si256(high), _mm512_castsi512_si256(index))
            } else {
                (_mm512_extracti64x4_epi64::<1>(high), _mm512_extracti64x4_epi64::<1>(index))
            };
            let key = _mm512_or_si512(
                _mm512_slli_epi64::<32>(_mm512_cvtepu32_epi64(h)),
                _mm512_cvtepu32_epi64(i),
            );
            let lanes = (mask >> (8 * half)) as u8;
            // The first half wrote at most 8: these 8 slots end by the 16 the caller has.
            _mm512_storeu_si512(out.add(len).cast(), _mm512_maskz_compress_epi64(lanes, key));
            len += lanes.count_ones() as usize;
        }
        len
    }

    /// [`super::RowPasses::tail_keys`], 16 items per step with AVX-512F ([`store_rank_keys`]).
    ///
    /// # Safety
    /// The CPU must support AVX-512F and POPCNT; `keys` holds `row.len() + KEY_SLACK` slots and the row
    /// fits `u32` indices (checked by the caller).
    #[target_feature(enable = "avx512f,popcnt")]
    pub(super) unsafe fn tail_keys_avx512(
        row: &[f32],
        target: usize,
        keys: &mut [MaybeUninit<u64>],
    ) -> (usize, bool) {
        let n = row.len();
        let whole = n - n % 16;
        let st = row[target];
        let hi = _mm512_set1_ps(st);
        let out = keys.as_mut_ptr();
        let mut len = 0usize;
        let mut bad: __mmask16 = 0;
        let mut start = 0;
        while start < whole {
            let v = _mm512_loadu_ps(row.as_ptr().add(start));
            bad |= non_finite_lanes(v);
            // len <= start, so the 16 slots written end by n <= keys.len().
            len = store_rank_keys(out, len, v, start, tail_lanes(v, hi, target, start));
            start += 16;
        }
        let (rest, rest_finite) =
            tail_keys_portable(&row[whole..], whole, target, st, &mut keys[len..]);
        (len + rest, bad == 0 && rest_finite)
    }

    /// Pass 1, 16 items per step with AVX-512F.
    ///
    /// # Safety
    /// The CPU must support AVX-512F, AVX2 and POPCNT; the caller checked the slice lengths.
    #[target_feature(enable = "avx512f,avx2,popcnt")]
    pub(super) unsafe fn tail_buckets_avx512(
        row: &[f32],
        target: usize,
        map: BucketMap,
        spare: u16,
        ids: &mut [u16],
        counts: &mut [u32],
    ) -> (usize, bool) {
        let n = row.len();
        let whole = n - n % 16;
        let hi = _mm512_set1_ps(map.hi);
        let scale = _mm512_set1_ps(map.scale);
        let last = _mm512_set1_ps(map.last);
        // Spare slot of lane l: spare + l (blocks start at multiples of 16, so l = j % 16).
        let spare_ids = _mm512_add_epi32(_mm512_set1_epi32(i32::from(spare)), lane_numbers());
        let top = _mm512_set1_epi32(i32::from(spare) + SPARE_SLOTS as i32 - 1);
        let mut tail = 0usize;
        let mut bad: __mmask16 = 0;
        let mut start = 0;
        while start < whole {
            let v = _mm512_loadu_ps(row.as_ptr().add(start));
            bad |= non_finite_lanes(v);
            let in_tail = tail_lanes(v, hi, target, start);
            tail += in_tail.count_ones() as usize;
            let scaled = _mm512_min_ps(_mm512_mul_ps(_mm512_sub_ps(hi, v), scale), last);
            let bucket = _mm512_mask_blend_epi32(in_tail, spare_ids, _mm512_cvttps_epi32(scaled));
            // Clamped as unsigned integers: every id indexes `counts` whatever the float math did.
            let bucket = _mm512_min_epu32(bucket, top);
            let packed = _mm512_cvtepi32_epi16(bucket);
            _mm256_storeu_si256(ids.as_mut_ptr().add(start).cast(), packed);
            start += 16;
            if start % COUNT_CHUNK == 0 || start == whole {
                // Count the chunk just written (a separate loop: no store forwarding stalls),
                // asking for the next chunk's scores on the way (the loads would otherwise wait
                // for memory after the count).
                let chunk = start - (start - 1) % COUNT_CHUNK - 1..start;
                count_ids_prefetching(&ids[chunk], counts, row, start);
            }
        }
        let (rest_tail, rest_finite) = tail_buckets_portable(
            &row[whole..],
            whole,
            target,
            map,
            spare,
            &mut ids[whole..],
            counts,
        );
        (tail + rest_tail, bad == 0 && rest_finite)
    }

    /// [`count_ids`], asking on the way for the cache line of `row[next + 16 g]` before the
    /// ids `16 g ..` are counted (those that exist): one request at a time, spread over the
    /// count, so they never fill the line buffers.
    #[inline(always)]
    fn count_ids_prefetching(ids: &[u16], counts: &mut [u32], row: &[f32], next: usize) {
        for (g, group) in ids.chunks(16).enumerate() {
            let at = next + 16 * g;
            if at < row.len() {
                // SAFETY: `at < row.len()`; a prefetch reads nothing and cannot fault.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(row.as_ptr().add(at).cast()) };
            }
            count_ids(group, counts);
        }
    }

    /// Pass 1, 8 items per step with AVX2.
    ///
    /// # Safety
    /// The CPU must support AVX2 and POPCNT; the caller checked the slice lengths.
    #[target_feature(enable = "avx2,popcnt")]
    pub(super) unsafe fn tail_buckets_avx2(
        row: &[f32],
        target: usize,
        map: BucketMap,
        spare: u16,
        ids: &mut [u16],
        counts: &mut [u32],
    ) -> (usize, bool) {
        let n = row.len();
        let whole = n - n % 16;
        let hi = _mm256_set1_ps(map.hi);
        let scale = _mm256_set1_ps(map.scale);
        let last = _mm256_set1_ps(map.last);
        let exponent = _mm256_set1_epi32(0x7f80_0000);
        let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let top = _mm256_set1_epi32(i32::from(spare) + SPARE_SLOTS as i32 - 1);
        let mut tail = 0usize;
        let mut bad = _mm256_setzero_si256();
        let mut block = [0i32; 8];
        let mut start = 0;
        while start < whole {
            for half in 0..2 {
                let at = start + 8 * half;
                let v = _mm256_loadu_ps(row.as_ptr().add(at));
                bad = _mm256_or_si256(
                    bad,
                    _mm256_cmpeq_epi32(
                        _mm256_and_si256(_mm256_castps_si256(v), exponent),
                        exponent,
                    ),
                );
                let below = _mm256_cmp_ps::<_CMP_LT_OQ>(v, hi);
                let equal = _mm256_cmp_ps::<_CMP_EQ_OQ>(v, hi);
                let after = if target < at {
                    _mm256_set1_epi32(-1)
                } else if target - at >= 8 {
                    _mm256_setzero_si256()
                } else {
                    _mm256_cmpgt_epi32(lane, _mm256_set1_epi32((target - at) as i32))
                };
                let in_tail = _mm256_or_ps(below, _mm256_and_ps(equal, _mm256_castsi256_ps(after)));
                let mask = _mm256_movemask_ps(in_tail);
                tail += mask.count_ones() as usize;
                let scaled = _mm256_min_ps(_mm256_mul_ps(_mm256_sub_ps(hi, v), scale), last);
                let spare_ids =
                    _mm256_add_epi32(_mm256_set1_epi32(i32::from(spare) + 8 * half as i32), lane);
                let bucket = _mm256_blendv_epi8(
                    spare_ids,
                    _mm256_cvttps_epi32(scaled),
                    _mm256_castps_si256(in_tail),
                );
                // Clamped as unsigned integers: every id indexes `counts` whatever the float
                // math did.
                let bucket = _mm256_min_epu32(bucket, top);
                _mm256_storeu_si256(block.as_mut_ptr().cast(), bucket);
                for l in 0..8 {
                    ids[at + l] = block[l] as u16;
                }
            }
            start += 16;
            if start % COUNT_CHUNK == 0 || start == whole {
                count_ids(&ids[start - (start - 1) % COUNT_CHUNK - 1..start], counts);
            }
        }
        let (rest_tail, rest_finite) = tail_buckets_portable(
            &row[whole..],
            whole,
            target,
            map,
            spare,
            &mut ids[whole..],
            counts,
        );
        (tail + rest_tail, _mm256_testz_si256(bad, bad) == 1 && rest_finite)
    }

    /// [`super::RowPasses::for_each_in_ranges`], 32 ids per step with AVX-512BW.
    ///
    /// # Safety
    /// The CPU must support AVX-512F, AVX-512BW and POPCNT.
    #[target_feature(enable = "avx512f,avx512bw,popcnt")]
    pub(super) unsafe fn for_each_in_ranges_avx512bw(
        ids: &[u16],
        first: (u16, u16),
        second: (u16, u16),
        visit: &mut impl FnMut(usize, u16) -> bool,
    ) -> bool {
        // Positions that pass are compressed into `found` a chunk at a time, then visited in a
        // plain loop (no branch per vector, which the sparse hits would mispredict).
        const CHUNK: usize = 1024;
        let mut found = [0u32; CHUNK + 16];
        let (a0, a1) = (_mm512_set1_epi16(first.0 as i16), _mm512_set1_epi16(first.1 as i16));
        let (b0, b1) = (_mm512_set1_epi16(second.0 as i16), _mm512_set1_epi16(second.1 as i16));
        let lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        let whole = ids.len() - ids.len() % 32;
        let mut chunk = 0;
        while chunk < whole {
            let stop = (chunk + CHUNK).min(whole);
            let mut len = 0usize;
            let mut start = chunk;
            while start < stop {
                let x = _mm512_loadu_si512(ids.as_ptr().add(start).cast());
                let mask = (_mm512_cmpge_epu16_mask(x, a0) & _mm512_cmple_epu16_mask(x, a1))
                    | (_mm512_cmpge_epu16_mask(x, b0) & _mm512_cmple_epu16_mask(x, b1));
                for half in 0..2 {
                    let m = (mask >> (16 * half)) as u16;
                    let at = _mm512_add_epi32(_mm512_set1_epi32((start + 16 * half) as i32), lane);
                    // len <= start - chunk + 16 * half < CHUNK, so 16 slots fit.
                    _mm512_storeu_si512(
                        found.as_mut_ptr().add(len).cast(),
                        _mm512_maskz_compress_epi32(m, at),
                    );
                    len += m.count_ones() as usize;
                }
                start += 32;
            }
            for &j in &found[..len] {
                let j = j as usize;
                if !visit(j, ids[j]) {
                    return false;
                }
            }
            chunk = stop;
        }
        for_each_in_ranges_portable(&ids[whole..], whole, first, second, visit)
    }

    /// [`super::RowPasses::band_keys`], 16 items per step with AVX-512F: the keys by
    /// [`store_rank_keys`], the buckets compressed beside them.
    ///
    /// # Safety
    /// The CPU must support AVX-512F and POPCNT; `ids` is as long as `row`, `keys` and
    /// `buckets` hold `row.len() + KEY_SLACK` slots and the row fits `u32` indices.
    #[target_feature(enable = "avx512f,popcnt")]
    pub(super) unsafe fn band_keys_avx512(
        row: &[f32],
        ids: &[u16],
        range: (u16, u16),
        (low, high): (f32, f32),
        keys: &mut [MaybeUninit<u64>],
        buckets: &mut [MaybeUninit<u32>],
    ) -> usize {
        let n = row.len();
        let whole = n - n % 16;
        let (lo, hi) = (_mm512_set1_ps(low), _mm512_set1_ps(high));
        let first = _mm512_set1_epi32(i32::from(range.0));
        let last = _mm512_set1_epi32(i32::from(range.1));
        let (key_out, bucket_out) = (keys.as_mut_ptr(), buckets.as_mut_ptr());
        let mut len = 0usize;
        let mut start = 0;
        while start < whole {
            let id = _mm512_cvtepu16_epi32(_mm256_loadu_si256(ids.as_ptr().add(start).cast()));
            let inside = _mm512_cmpge_epu32_mask(id, first) & _mm512_cmple_epu32_mask(id, last);
            if inside != 0 {
                let v = _mm512_loadu_ps(row.as_ptr().add(start));
                let hit = inside
                    & _mm512_cmp_ps_mask::<_CMP_GE_OQ>(v, lo)
                    & _mm512_cmp_ps_mask::<_CMP_LE_OQ>(v, hi);
                // len <= start, so the 16 slots written end by n <= the buffers' lengths.
                _mm512_storeu_si512(
                    bucket_out.add(len).cast(),
                    _mm512_maskz_compress_epi32(hit, id),
                );
                len = store_rank_keys(key_out, len, v, start, hit);
            }
            start += 16;
        }
        len + band_keys_portable(
            &row[whole..],
            &ids[whole..],
            whole,
            range,
            (low, high),
            &mut keys[len..],
            &mut buckets[len..],
        )
    }

    /// [`super::RowPasses::prefix_counts`], 16 counts per step with AVX-512F (a log-step scan
    /// in the register, then the running sum before the step added).
    ///
    /// # Safety
    /// The CPU must support AVX-512F; `empty` holds `counts.len().div_ceil(64)` zeroed words.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn prefix_counts_avx512(counts: &mut [u32], empty: &mut [u64]) -> u32 {
        let whole = counts.len() - counts.len() % 16;
        let zero = _mm512_setzero_si512();
        let mut carry = _mm512_setzero_si512();
        let last = _mm512_set1_epi32(15);
        let mut start = 0;
        while start < whole {
            let at = counts.as_mut_ptr().add(start);
            let x = _mm512_loadu_si512(at.cast());
            let zeros = _mm512_cmpeq_epi32_mask(x, zero);
            empty[start / 64] |= u64::from(zeros) << (start % 64);
            // Inclusive scan: lane i gets x[0] + ... + x[i].
            let mut sum = _mm512_add_epi32(x, _mm512_alignr_epi32::<15>(x, zero));
            sum = _mm512_add_epi32(sum, _mm512_alignr_epi32::<14>(sum, zero));
            sum = _mm512_add_epi32(sum, _mm512_alignr_epi32::<12>(sum, zero));
            sum = _mm512_add_epi32(sum, _mm512_alignr_epi32::<8>(sum, zero));
            // Exclusive, after the counts of earlier steps.
            let before = _mm512_add_epi32(_mm512_sub_epi32(sum, x), carry);
            _mm512_storeu_si512(at.cast(), before);
            carry = _mm512_add_epi32(carry, _mm512_permutexvar_epi32(last, sum));
            start += 16;
        }
        let running = _mm_cvtsi128_si32(_mm512_castsi512_si128(carry)) as u32;
        prefix_counts_portable(&mut counts[whole..], whole, running, empty)
    }

    /// [`super::RowPasses::sort_segments`] with AVX-512F: 8 comparisons per instruction.
    ///
    /// # Safety
    /// The CPU must support AVX-512F and POPCNT; `ends` is non-decreasing and within `keys`.
    #[target_feature(enable = "avx512f,popcnt")]
    pub(super) unsafe fn sort_segments_avx512(keys: &mut [u64], ends: &[u32]) {
        let mut start = 0usize;
        let mut copy = [u64::MAX; 32];
        let high = _mm512_set1_epi64(-1); // u64::MAX: pads past the segment's end
        for &end in ends {
            let end = end as usize;
            let segment = &mut keys[start..end];
            let len = segment.len();
            start = end;
            if len <= 1 {
                continue;
            }
            if len > 32 {
                segment.sort_unstable();
                continue;
            }
            // The segment in up to four vectors, padded with u64::MAX (masked loads read only
            // the segment's own slots), and a copy to read the keys from while they move.
            let vectors = len.div_ceil(8);
            let mut v = [high; 4];
            for (i, x) in v.iter_mut().enumerate().take(vectors) {
                let lanes = (len - 8 * i).min(8);
                let mask: u8 = if lanes == 8 { 0xff } else { (1u8 << lanes) - 1 };
                *x = _mm512_mask_loadu_epi64(high, mask, segment.as_ptr().add(8 * i).cast());
                _mm512_storeu_si512(copy.as_mut_ptr().add(8 * i).cast(), *x);
            }
            for &key in &copy[..len] {
                let k = _mm512_set1_epi64(key as i64);
                let mut place = 0u32;
                for x in &v[..vectors] {
                    place += u32::from(_mm512_cmplt_epu64_mask(*x, k)).count_ones();
                }
                // Distinct keys: `place < len`; checked indexing all the same.
                segment[place as usize] = key;
            }
        }
    }

    /// Passes 2 and 3, 16 buckets per test with AVX2.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn for_each_in_ranges_avx2(
        ids: &[u16],
        first: (u16, u16),
        second: (u16, u16),
        visit: &mut impl FnMut(usize, u16) -> bool,
    ) -> bool {
        // Unsigned x <= c is max(x, c) == c; x >= c is min(x, c) == c.
        let (a0, a1) = (_mm256_set1_epi16(first.0 as i16), _mm256_set1_epi16(first.1 as i16));
        let (b0, b1) = (_mm256_set1_epi16(second.0 as i16), _mm256_set1_epi16(second.1 as i16));
        let within = |x: __m256i, lo: __m256i, hi: __m256i| {
            _mm256_and_si256(
                _mm256_cmpeq_epi16(_mm256_max_epu16(x, lo), x),
                _mm256_cmpeq_epi16(_mm256_min_epu16(x, hi), x),
            )
        };
        let whole = ids.len() - ids.len() % 16;
        let mut start = 0;
        while start < whole {
            let x = _mm256_loadu_si256(ids.as_ptr().add(start).cast());
            let hit = _mm256_or_si256(within(x, a0, a1), within(x, b0, b1));
            // Two mask bits per u16 lane.
            let mut mask = _mm256_movemask_epi8(hit) as u32;
            while mask != 0 {
                let lane = (mask.trailing_zeros() / 2) as usize;
                mask &= !(0b11 << (2 * lane));
                if !visit(start + lane, ids[start + lane]) {
                    return false;
                }
            }
            start += 16;
        }
        for_each_in_ranges_portable(&ids[whole..], whole, first, second, visit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Every build this CPU runs (AVX-512 also without its 16-bit lanes).
    fn all_passes() -> Vec<RowPasses> {
        let mut passes: Vec<RowPasses> =
            Kernel::available().into_iter().map(RowPasses::for_kernel).collect();
        let without_bw: Vec<RowPasses> =
            passes.iter().filter(|p| p.bw).map(|p| RowPasses { bw: false, ..*p }).collect();
        passes.extend(without_bw);
        passes
    }

    fn special(rng: &mut ChaCha8Rng, st: f32) -> f32 {
        match rng.random_range(0..12) {
            0 => st,
            1 => -0.0,
            2 => 0.0,
            3 => f32::NAN,
            4 => f32::INFINITY,
            5 => f32::NEG_INFINITY,
            6 => 1e-40,
            7 => -1e-40,
            8 => f32::MAX,
            9 => f32::MIN,
            _ => rng.random_range(-1.0..1.0),
        }
    }

    #[test]
    fn tail_buckets_are_identical_in_every_build() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let passes = all_passes();
        for case in 0..400 {
            let n = rng.random_range(1..200);
            let target = rng.random_range(0..n);
            let st = if case % 3 == 0 { 0.0 } else { rng.random_range(-0.5f32..0.5) };
            let mut row: Vec<f32> = (0..n)
                .map(|_| {
                    if rng.random_range(0..4) == 0 {
                        special(&mut rng, st)
                    } else {
                        rng.random_range(-1.0..1.0)
                    }
                })
                .collect();
            if case % 5 != 0 {
                for v in row.iter_mut() {
                    if !v.is_finite() {
                        *v = st;
                    }
                }
            }
            row[target] = st;
            let buckets = rng.random_range(1..300u16);
            let map = BucketMap {
                hi: st,
                scale: rng.random_range(0.1f32..5000.0),
                last: f32::from(buckets - 1),
            };
            let spare = buckets;
            let mut results = Vec::new();
            for &p in &passes {
                let mut ids = vec![0u16; n];
                let mut counts = vec![0u32; usize::from(spare) + SPARE_SLOTS];
                let got = p.tail_buckets(&row, target, map, spare, &mut ids, &mut counts);
                results.push((got, ids, counts));
            }
            // The obvious reference.
            let mut ids = vec![0u16; n];
            let mut counts = vec![0u32; usize::from(spare) + SPARE_SLOTS];
            let mut tail = 0;
            for (j, &v) in row.iter().enumerate() {
                let in_tail = v < st || (v == st && j > target);
                ids[j] = if in_tail {
                    tail += 1;
                    map.bucket(v)
                } else {
                    spare + (j % SPARE_SLOTS) as u16
                };
                counts[usize::from(ids[j])] += 1;
            }
            let expected = ((tail, row.iter().all(|v| v.is_finite())), ids, counts);
            for (p, got) in passes.iter().zip(&results) {
                assert_eq!(got, &expected, "{:?} case {case}", p.simd());
            }
        }
    }

    #[test]
    fn tail_keys_are_identical_in_every_build() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let passes = all_passes();
        for case in 0..400 {
            let n = rng.random_range(1..if case % 10 == 0 { 2000 } else { 200 });
            let target = rng.random_range(0..n);
            let st = match case % 4 {
                0 => 0.0,
                1 => -0.0,
                _ => rng.random_range(-0.5f32..0.5),
            };
            let mut row: Vec<f32> = (0..n)
                .map(|_| {
                    if rng.random_range(0..4) == 0 {
                        special(&mut rng, st)
                    } else {
                        rng.random_range(-1.0..1.0)
                    }
                })
                .collect();
            if case % 5 != 0 {
                for v in row.iter_mut() {
                    if !v.is_finite() {
                        *v = st;
                    }
                }
            }
            row[target] = st;
            // The rule, one item at a time.
            let expected: Vec<u64> = (0..n)
                .filter(|&j| row[j] < st || (row[j] == st && j > target))
                .map(|j| rank_key(row[j], j as u32))
                .collect();
            let finite = row.iter().all(|v| v.is_finite());
            if finite {
                // For finite rows the tail is exactly the keys above the target's.
                let target_key = rank_key(st, target as u32);
                let by_key: Vec<u64> = (0..n)
                    .map(|j| rank_key(row[j], j as u32))
                    .filter(|&k| k > target_key)
                    .collect();
                assert_eq!(by_key, expected, "case {case}");
            }
            for &p in &passes {
                let mut keys = vec![MaybeUninit::new(7u64); n + KEY_SLACK];
                let (len, all_finite) = p.tail_keys(&row, target, &mut keys);
                // SAFETY: every slot was initialised above.
                let keys: Vec<u64> = keys.iter().map(|k| unsafe { k.assume_init() }).collect();
                assert_eq!(all_finite, finite, "case {case} {:?}", p.simd());
                assert_eq!(&keys[..len], &expected[..], "case {case} {:?}", p.simd());
            }
        }
    }

    #[test]
    fn band_keys_are_identical_in_every_build() {
        let mut rng = ChaCha8Rng::seed_from_u64(17);
        let passes = all_passes();
        for case in 0..400 {
            let n = rng.random_range(1..if case % 10 == 0 { 2000 } else { 200 });
            let row: Vec<f32> = (0..n)
                .map(|_| {
                    if rng.random_range(0..4) == 0 {
                        special(&mut rng, 0.25)
                    } else {
                        rng.random_range(-1.0..1.0)
                    }
                })
                .collect();
            let ids: Vec<u16> = (0..n).map(|_| rng.random_range(0..40)).collect();
            let range = match case % 4 {
                0 => (1, 0), // empty
                1 => (0, 39),
                _ => {
                    let a = rng.random_range(0..40);
                    (a, rng.random_range(a..45))
                }
            };
            let low = rng.random_range(-1.0f32..0.5);
            let high = if case % 5 == 0 { low } else { rng.random_range(low..1.0) };
            let expected: Vec<(u64, u32)> = (0..n)
                .filter(|&j| {
                    ids[j] >= range.0 && ids[j] <= range.1 && row[j] >= low && row[j] <= high
                })
                .map(|j| (rank_key(row[j], j as u32), u32::from(ids[j])))
                .collect();
            for &p in &passes {
                let mut keys = vec![MaybeUninit::new(7u64); n + KEY_SLACK];
                let mut buckets = vec![MaybeUninit::new(9u32); n + KEY_SLACK];
                let len = p.band_keys(&row, &ids, range, (low, high), &mut keys, &mut buckets);
                // SAFETY: every slot was initialised above.
                let got: Vec<(u64, u32)> = keys[..len]
                    .iter()
                    .zip(&buckets[..len])
                    .map(|(k, b)| unsafe { (k.assume_init(), b.assume_init()) })
                    .collect();
                assert_eq!(got, expected, "case {case} {:?}", p.simd());
            }
        }
    }

    #[test]
    fn prefix_counts_are_identical_in_every_build() {
        let mut rng = ChaCha8Rng::seed_from_u64(13);
        let passes = all_passes();
        for case in 0..300 {
            let len = rng.random_range(0..if case % 10 == 0 { 3000 } else { 200 });
            let zeros = rng.random_range(0.0..1.0);
            let counts: Vec<u32> = (0..len)
                .map(|_| {
                    if rng.random_bool(zeros) {
                        0
                    } else if case % 7 == 0 {
                        rng.random_range(0..=u32::MAX) // sums wrap
                    } else {
                        rng.random_range(1..50)
                    }
                })
                .collect();
            let mut expected = Vec::with_capacity(len);
            let mut running = 0u32;
            for &c in &counts {
                expected.push(running);
                running = running.wrapping_add(c);
            }
            let mut expected_empty = vec![0u64; len.div_ceil(64) + 1];
            for (b, &c) in counts.iter().enumerate() {
                if c == 0 {
                    expected_empty[b / 64] |= 1 << (b % 64);
                }
            }
            for &p in &passes {
                let mut got = counts.clone();
                let mut empty = vec![u64::MAX; len.div_ceil(64) + 1];
                let total = p.prefix_counts(&mut got, &mut empty);
                assert_eq!(total, running, "case {case} {:?}", p.simd());
                assert_eq!(got, expected, "case {case} {:?}", p.simd());
                assert_eq!(empty, expected_empty, "case {case} {:?}", p.simd());
            }
        }
    }

    #[test]
    fn segment_sorts_are_identical_in_every_build() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        for _ in 0..300 {
            let n = rng.random_range(0..400);
            // Distinct keys (as rank keys are: the index is in the low bits), few distinct scores.
            let keys: Vec<u64> = (0..n as u64)
                .map(|j| {
                    (rng.random_range(0..6u64) << 32 | j) ^ if j % 3 == 0 { 1 << 63 } else { 0 }
                })
                .collect();
            let mut ends: Vec<u32> =
                (0..rng.random_range(0..40)).map(|_| rng.random_range(0..=n as u32)).collect();
            ends.sort_unstable();
            let mut expected = keys.clone();
            let mut start = 0;
            for &e in &ends {
                expected[start..e as usize].sort_unstable();
                start = e as usize;
            }
            for p in all_passes() {
                let mut got = keys.clone();
                p.sort_segments(&mut got, &ends);
                assert_eq!(got, expected, "{:?}", p.simd());
            }
        }
    }

    #[test]
    fn range_visits_are_identical_in_every_build() {
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        for case in 0..300 {
            // Some rows span several of the AVX-512BW build's chunks of 1,024 ids.
            let n = rng.random_range(0..if case % 10 == 0 { 5000 } else { 300 });
            let ids: Vec<u16> = (0..n).map(|_| rng.random_range(0..40)).collect();
            let mut range = || {
                let a = rng.random_range(0..45u16);
                (a, a.saturating_add(rng.random_range(0..10)).saturating_sub(2))
            };
            let (first, second) = (range(), range());
            let stop_after = rng.random_range(0..n + 2);
            let hits: Vec<(usize, u16)> = ids
                .iter()
                .enumerate()
                .filter(|(_, &b)| in_range(b, first) || in_range(b, second))
                .map(|(j, &b)| (j, b))
                .collect();
            let expected: Vec<_> = hits.iter().copied().take(stop_after).collect();
            for p in all_passes() {
                let mut seen = Vec::new();
                let finished = p.for_each_in_ranges(&ids, first, second, |j, b| {
                    seen.push((j, b));
                    seen.len() < stop_after
                });
                let truncated: Vec<_> = seen.iter().copied().take(stop_after).collect();
                assert_eq!(truncated, expected, "{:?}", p.simd());
                // `visit` says stop once it has seen `stop_after` (at least one) items.
                assert_eq!(finished, hits.len() < stop_after.max(1), "{:?}", p.simd());
            }
        }
    }
}
