//! What a miner keeps once the gallery is ranked: the candidate set, positive-aware filters and
//! the selection, composable and exact, after the published miners:
//!
//! * candidates: QuRe's two-steep-drop band ([`Candidates::Band`], the default), a window of the
//!   ranking counted from the top ([`Candidates::Top`]: top-k, sentence-transformers'
//!   `range_min`/`range_max`) or after the target ([`Candidates::Window`]);
//! * filters, against a reference score `r` (the target's, or the lowest of the target's and the
//!   known positives' scores, as sentence-transformers does with several positives), in `f32`:
//!   `margin` removes `s + margin > r` (sentence-transformers' `absolute_margin`),
//!   `relative_margin` removes `s > r - |r| * m` (sign-safe; NV-Retriever's TopK-PercPos with
//!   `perc = 1 - m` for positive `r`), `max_score` removes `s > max`, `min_score` removes
//!   `s < min`. Known positives and duplicate ids are removed before the filters;
//! * selection among the survivors, in rank order: all of them, the first `k`, `k` uniformly at
//!   random, or `k` SimANS-weighted (`w = exp(-a (s - r - b)^2)`, arXiv 2210.11773), the random
//!   ones a pure function of `(seed, query)`.

/// Which ranked items are candidates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Candidates {
    /// The band between the two steepest drops after the target (QuRe).
    #[default]
    Band,
    /// Positions `start .. end` of the ranking without the target (`None`: to its end).
    Top {
        /// First position kept (0: the best-scored non-target item).
        start: usize,
        /// One past the last position kept.
        end: Option<usize>,
    },
    /// Tail positions `start .. end` after the target (`None`: to the end of the tail).
    Window {
        /// First tail position kept (0: the item ranked just after the target).
        start: usize,
        /// One past the last tail position kept.
        end: Option<usize>,
    },
}

/// Whose score the positive-aware filters compare against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Reference {
    /// The annotated target's score.
    #[default]
    Target,
    /// The lowest of the target's and the known positives' scores.
    LowestPositive,
}

/// Positive-aware score filters (`None`: off).
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct Filters {
    /// Removes candidates with `s + margin > r`.
    pub margin: Option<f32>,
    /// Removes candidates with `s > r - |r| * relative_margin`.
    pub relative_margin: Option<f32>,
    /// Removes candidates with `s > max_score`.
    pub max_score: Option<f32>,
    /// Removes candidates with `s < min_score`.
    pub min_score: Option<f32>,
    /// The reference score `r`.
    pub reference: Reference,
}

impl Filters {
    /// True when no filter is on.
    pub fn is_empty(&self) -> bool {
        self.margin.is_none()
            && self.relative_margin.is_none()
            && self.max_score.is_none()
            && self.min_score.is_none()
    }
}

/// Which survivors are kept (always in rank order).
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub enum Pick {
    /// Every survivor.
    #[default]
    All,
    /// The first `k` survivors.
    First(usize),
    /// `k` survivors uniformly at random (all when fewer).
    Uniform(usize),
    /// `k` survivors drawn without replacement with weights `exp(-a (s - r - b)^2)`.
    SimAns {
        /// How many.
        k: usize,
        /// Sharpness `a` (> 0).
        a: f32,
        /// Offset `b` from the reference score.
        b: f32,
    },
}

/// Everything after the ranking.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct Spec {
    /// The candidate set.
    pub candidates: Candidates,
    /// The filters.
    pub filters: Filters,
    /// The selection.
    pub pick: Pick,
    /// Seeds the random selections.
    pub seed: u64,
    /// The global index of the first query (random selections are keyed by the global query
    /// index, so a split query set draws what the whole set would).
    pub first_query: u64,
}

/// How many candidates were looked at, and how many each step removed (summed over queries).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Removed {
    /// Candidates examined (a `First(k)` selection stops once it has `k` survivors).
    pub candidates: u64,
    /// Known positives and duplicates of the target, a positive or an earlier candidate.
    pub excluded: u64,
    /// By `margin`.
    pub margin: u64,
    /// By `relative_margin`.
    pub relative_margin: u64,
    /// By `max_score`.
    pub max_score: u64,
    /// By `min_score`.
    pub min_score: u64,
}

impl Removed {
    /// The sum of two counts.
    pub fn add(&mut self, other: &Removed) {
        self.candidates += other.candidates;
        self.excluded += other.excluded;
        self.margin += other.margin;
        self.relative_margin += other.relative_margin;
        self.max_score += other.max_score;
        self.min_score += other.min_score;
    }
}

/// The filter that removes a candidate of score `s` against reference `r`, if any (counted in
/// `removed`); `None` keeps it.
#[inline]
pub(crate) fn filtered(filters: &Filters, s: f32, r: f32, removed: &mut Removed) -> bool {
    if let Some(m) = filters.margin {
        if s + m > r {
            removed.margin += 1;
            return true;
        }
    }
    if let Some(m) = filters.relative_margin {
        if s > r - r.abs() * m {
            removed.relative_margin += 1;
            return true;
        }
    }
    if let Some(m) = filters.max_score {
        if s > m {
            removed.max_score += 1;
            return true;
        }
    }
    if let Some(m) = filters.min_score {
        if s < m {
            removed.min_score += 1;
            return true;
        }
    }
    false
}

/// SplitMix64's finaliser.
#[inline]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The key of a query's random selection.
pub(crate) fn pick_key(seed: u64, query: u64) -> u64 {
    mix(mix(seed ^ 0x5049_434b_5345_4c45) ^ query)
}

/// A uniform number in `(0, 1)` for `item`, a pure function of the key.
#[inline]
pub(crate) fn unit(key: u64, item: u64) -> f64 {
    let bits = mix(key ^ mix(item.wrapping_add(0x9e37_79b9_7f4a_7c15))) >> 11; // 53 bits
    (bits as f64 + 0.5) / (1u64 << 53) as f64
}

/// SimANS's Efraimidis-Spirakis key for a survivor of score `s` (larger is drawn first): with
/// `u` uniform, `ln(u) / w` for weight `w = exp(-a (s - r - b)^2)`; `-inf` for weight 0.
#[inline]
pub(crate) fn simans_key(u: f64, s: f32, r: f32, a: f32, b: f32) -> f64 {
    let d = f64::from(s) - f64::from(r) - f64::from(b);
    let w = (-f64::from(a) * d * d).exp();
    if w > 0.0 {
        u.ln() / w
    } else {
        f64::NEG_INFINITY
    }
}
