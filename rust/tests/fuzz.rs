//! Fuzz campaign for the core, as property tests (proptest) that run on stable Rust.
//!
//! Each target draws arbitrary inputs (f32 values with ties, `-0.0`, subnormals and the extremes;
//! NaN/inf poison; arbitrary shapes, options, exclusions, ids) and compares the core with a
//! straightforward reference written from the rule, where one exists, or checks that bad input
//! is an error and not a panic. A panic anywhere is a failure (proptest catches and shrinks it).
//!
//! `cargo test --release --test fuzz` runs a few hundred cases per target. With
//! `QURE_FUZZ_SECONDS=S` every target runs fresh rounds of cases (deterministic seeds: round `r`
//! of target `t` always draws the same inputs) until `S` seconds have passed, and prints
//! `FUZZ target=... cases=... seconds=...` (run with `-- --nocapture` to see it).

use std::fmt::Debug;
use std::time::Instant;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseResult, TestRng, TestRunner};

use qure::kernel::{dot_chain, pack_group, pack_panels, score_rows, Features, Kernel};
use qure::mining::{mine_negatives, CsrRef, Exclusions, MineOptions, Pairing};
use qure::sampler::{sample, sample_one};
use qure::score::{mine_from_features, score, target_rank, topk, Gallery, Queries, Scorer};
use qure::QureError;

// --------------------------------------------------------------------------------------------
// the runner

fn fuzz<S: Strategy>(target: &str, strategy: S, test: impl Fn(S::Value) -> TestCaseResult)
where
    S::Value: Debug,
{
    let budget: Option<f64> = std::env::var("QURE_FUZZ_SECONDS").ok().and_then(|v| v.parse().ok());
    let cases: u32 = if budget.is_some() { 64 } else { 256 };
    let started = Instant::now();
    let (mut total, mut round) = (0u64, 0u64);
    loop {
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&round.to_le_bytes());
        for (i, b) in target.bytes().enumerate().take(24) {
            seed[8 + i] = b;
        }
        let config = Config { cases, failure_persistence: None, ..Config::default() };
        let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &seed);
        let mut runner = TestRunner::new_with_rng(config, rng);
        if let Err(failure) = runner.run(&strategy, &test) {
            panic!("fuzz target {target}, round {round}: {failure}");
        }
        total += u64::from(cases);
        round += 1;
        match budget {
            Some(seconds) if started.elapsed().as_secs_f64() < seconds => {}
            _ => break,
        }
    }
    println!(
        "FUZZ target={target} cases={total} rounds={round} seconds={:.1}",
        started.elapsed().as_secs_f64()
    );
}

// --------------------------------------------------------------------------------------------
// values

/// Finite f32 values: many ties, `-0.0`, subnormals, the extremes.
fn value() -> impl Strategy<Value = f32> {
    use proptest::num::f32 as f;
    prop_oneof![
        4 => (-8i32..=8).prop_map(|v| v as f32 / 4.0),
        4 => -1.0f32..1.0,
        1 => f::POSITIVE | f::NEGATIVE | f::NORMAL | f::SUBNORMAL | f::ZERO,
        1 => prop::sample::select(vec![
            0.0f32,
            -0.0,
            f32::MAX,
            f32::MIN,
            f32::MIN_POSITIVE,
            -f32::MIN_POSITIVE,
            1e-45,
            -1e-45,
            1.0,
            -1.0,
        ]),
    ]
}

fn poison() -> impl Strategy<Value = f32> {
    prop::sample::select(vec![f32::NAN, f32::INFINITY, f32::NEG_INFINITY])
}

/// A gallery size: mostly small, sometimes large enough for the bucketed fast path.
fn gallery_size() -> impl Strategy<Value = usize> {
    prop_oneof![6 => 1usize..40, 3 => 40usize..400, 1 => 400usize..3000]
}

fn options(n: usize) -> impl Strategy<Value = MineOptions> {
    let threshold = prop_oneof![4 => 0usize..4, 1 => 0..n + 2, 1 => Just(usize::MAX)];
    let pairing = prop_oneof![Just(Pairing::Consecutive), Just(Pairing::Anchored)];
    let window = prop_oneof![1usize..8, 1..n + 5, Just(usize::MAX)];
    (threshold, pairing, prop::option::of(window)).prop_map(
        |(consecutive_threshold, pairing, max_rank)| MineOptions {
            consecutive_threshold,
            pairing,
            max_rank,
        },
    )
}

/// Per-row lists of indices in `0..n` (duplicates and any order), as CSR.
fn csr(rows: usize, n: usize) -> impl Strategy<Value = (Vec<i64>, Vec<i64>)> {
    prop::collection::vec(prop::collection::vec(0..n as i64, 0..5), rows).prop_map(|lists| {
        let mut indptr = vec![0i64];
        let mut indices = vec![];
        for list in lists {
            indices.extend(list);
            indptr.push(indices.len() as i64);
        }
        (indptr, indices)
    })
}

// --------------------------------------------------------------------------------------------
// mining: arbitrary rows, targets, options and exclusions against the rule

#[derive(Debug, Clone)]
struct MiningCase {
    n: usize,
    scores: Vec<f32>,
    targets: Vec<i64>,
    options: MineOptions,
    positives: Option<(Vec<i64>, Vec<i64>)>,
    ids: Option<Vec<i64>>,
    poison: Option<(usize, f32)>,
}

fn mining_case() -> impl Strategy<Value = MiningCase> {
    (0usize..6, gallery_size()).prop_flat_map(|(q, n)| {
        let poison = prop::option::weighted(0.15, (0..(q * n).max(1), poison()));
        (
            prop::collection::vec(value(), q * n),
            prop::collection::vec(0..n as i64, q),
            options(n),
            prop::option::of(csr(q, n)),
            prop::option::of(prop::collection::vec(0..(n / 2 + 1) as i64, n)),
            poison,
        )
            .prop_map(move |(scores, targets, options, positives, ids, poison)| {
                MiningCase {
                    n,
                    scores,
                    targets,
                    options,
                    positives,
                    ids,
                    poison: poison.filter(|_| q > 0),
                }
            })
    })
}

/// The rule, straight: full argsort, explicit drops, explicit scan, then the exclusions.
fn reference_row(
    row: &[f32],
    target: usize,
    options: &MineOptions,
    positives: &[i64],
    ids: Option<&[i64]>,
) -> (i64, [i64; 2], Vec<i64>) {
    let mut order: Vec<usize> = (0..row.len()).collect();
    order.sort_by(|&x, &y| row[y].partial_cmp(&row[x]).unwrap().then(x.cmp(&y)));
    let p = order.iter().position(|&i| i == target).unwrap();
    let mut tail: Vec<usize> = order[p + 1..].to_vec();
    if let Some(m) = options.max_rank {
        tail.truncate(m);
    }
    let pair = if tail.len() < 3 {
        None
    } else {
        let drops: Vec<f32> = tail.windows(2).map(|w| row[w[1]] - row[w[0]]).collect();
        let mut o: Vec<usize> = (0..drops.len()).collect();
        o.sort_by(|&x, &y| drops[x].partial_cmp(&drops[y]).unwrap().then(x.cmp(&y)));
        let t = options.consecutive_threshold;
        match options.pairing {
            Pairing::Consecutive => {
                o.windows(2).map(|w| (w[0].min(w[1]), w[0].max(w[1]))).find(|(a, b)| b - a > t)
            }
            Pairing::Anchored => {
                o[1..].iter().find(|&&y| y.abs_diff(o[0]) > t).map(|&y| (o[0].min(y), o[0].max(y)))
            }
        }
    };
    let Some((a, b)) = pair else {
        return (p as i64, [-1, -1], vec![]);
    };
    let band = tail[a + 1..=b].iter().map(|&i| i as i64).filter(|i| !positives.contains(i));
    let band: Vec<i64> = match ids {
        None => band.collect(),
        Some(ids) => {
            let mut seen: Vec<i64> = vec![ids[target]];
            seen.extend(positives.iter().map(|&g| ids[g as usize]));
            band.filter(|&i| {
                let id = ids[i as usize];
                let new = !seen.contains(&id);
                seen.push(id);
                new
            })
            .collect()
        }
    };
    (p as i64, [a as i64, b as i64], band)
}

#[test]
fn fuzz_mining_against_the_rule() {
    fuzz("mining", mining_case(), |case| {
        let mut scores = case.scores.clone();
        if let Some((at, v)) = case.poison {
            scores[at] = v;
        }
        let positives = case.positives.as_ref().map(|(p, i)| CsrRef { indptr: p, indices: i });
        let exclusions = Exclusions { positives, gallery_ids: case.ids.as_deref() };
        let got = mine_negatives(&scores, case.n, &case.targets, case.options, exclusions);
        if let Some((at, _)) = case.poison {
            let want = QureError::NonFinite { what: "scores", row: at / case.n, col: at % case.n };
            prop_assert_eq!(got, Err(want));
            return Ok(());
        }
        let got = got.expect("valid input mines");
        prop_assert_eq!(got.len(), case.targets.len());
        for (i, &t) in case.targets.iter().enumerate() {
            let row = &scores[i * case.n..(i + 1) * case.n];
            let pos = positives.map_or(&[][..], |p| p.row(i));
            let (rank, drops, band) =
                reference_row(row, t as usize, &case.options, pos, case.ids.as_deref());
            prop_assert_eq!(got.target_rank[i], rank, "query {} rank", i);
            prop_assert_eq!(got.drops[i], drops, "query {} drops", i);
            prop_assert_eq!(got.band(i), &band[..], "query {} band", i);
        }
        Ok(())
    });
}

// --------------------------------------------------------------------------------------------
// scoring: arbitrary shapes and values, every kernel, against the reference chain

#[derive(Debug, Clone)]
struct ScoreCase {
    q: usize,
    n: usize,
    t: usize,
    d: usize,
    queries: Vec<f32>,
    gallery: Vec<f32>,
    k: usize,
    exclude: (Vec<i64>, Vec<i64>),
    targets: Vec<i64>,
    rows: (usize, usize),
    block: Option<usize>,
    options: MineOptions,
}

fn feature() -> impl Strategy<Value = f32> {
    prop_oneof![
        6 => (-4i32..=4).prop_map(|v| v as f32 / 2.0),
        6 => -1.0f32..1.0,
        1 => value(),
    ]
}

fn score_case() -> impl Strategy<Value = ScoreCase> {
    let shape =
        (0usize..70, 1usize..60, prop_oneof![3 => Just(1usize), 1 => 1usize..5], 1usize..24);
    // One case in ten has features near 1e19: their products overflow to +-inf, and chains that
    // meet both infinities turn NaN (which the max over tokens must ignore in every kernel).
    let scale = prop_oneof![9 => Just(1.0f32), 1 => Just(1e19f32)];
    (shape, scale).prop_flat_map(|((q, n, t, d), scale)| {
        let scaled = move |v: Vec<f32>| {
            v.into_iter().map(|x| if (x * scale).is_finite() { x * scale } else { x }).collect()
        };
        (
            prop::collection::vec(feature(), q * d).prop_map(scaled),
            prop::collection::vec(feature(), n * t * d).prop_map(scaled),
            1..=n,
            csr(q, n),
            prop::collection::vec(0..n as i64, q),
            (0..=q, 0..=q),
            prop::option::of(prop_oneof![1usize..40, Just(usize::MAX)]),
            options(n),
        )
            .prop_map(
                move |(queries, gallery, k, exclude, targets, (a, b), block, options)| ScoreCase {
                    q,
                    n,
                    t,
                    d,
                    queries,
                    gallery,
                    k,
                    exclude,
                    targets,
                    rows: (a.min(b), a.max(b)),
                    block,
                    options,
                },
            )
    })
}

fn reference_scores(c: &ScoreCase) -> Vec<f32> {
    let (d, t) = (c.d, c.t);
    let mut out = vec![0.0; c.q * c.n];
    for i in 0..c.q {
        let query = &c.queries[i * d..(i + 1) * d];
        for j in 0..c.n {
            out[i * c.n + j] = (0..t)
                .map(|tok| dot_chain(&c.gallery[(j * t + tok) * d..(j * t + tok + 1) * d], query))
                .fold(f32::NEG_INFINITY, f32::max);
        }
    }
    out
}

fn same(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits() || x == y)
}

#[test]
fn fuzz_scoring_topk_ranks_and_mining_from_features() {
    fuzz("scoring", score_case(), |c| {
        let queries = Queries { data: &c.queries, rows: c.q, dim: c.d };
        let gallery =
            Gallery { data: Features::F32(&c.gallery), items: c.n, tokens: c.t, dim: c.d };
        let want = reference_scores(&c);
        for kernel in Kernel::available() {
            let scorer = Scorer::with_kernel(queries, gallery, kernel).expect("valid shapes");
            let got = scorer.score_rows(0..c.q).expect("small output");
            prop_assert!(same(&got, &want), "{:?} scores differ", kernel);
            let (a, b) = c.rows;
            let part = scorer.score_rows(a..b).expect("rows inside");
            prop_assert!(same(&part, &want[a * c.n..b * c.n]), "{:?} rows {}..{}", kernel, a, b);
        }
        let full = score(queries, gallery).expect("scores");

        // top-k: score descending, ties by index, minus exclusions and -inf (no item).
        let (indptr, indices) = &c.exclude;
        let exclude = CsrRef { indptr, indices };
        let (values, idx) = topk(queries, gallery, c.k, Some(exclude)).expect("top-k");
        for i in 0..c.q {
            let row = &full[i * c.n..(i + 1) * c.n];
            let excluded = exclude.row(i);
            let mut order: Vec<usize> = (0..c.n)
                .filter(|&j| !excluded.contains(&(j as i64)) && row[j] > f32::NEG_INFINITY)
                .collect();
            order.sort_by(|&x, &y| row[y].partial_cmp(&row[x]).unwrap().then(x.cmp(&y)));
            order.truncate(c.k);
            let mut want_idx: Vec<i64> = order.iter().map(|&j| j as i64).collect();
            want_idx.resize(c.k, -1);
            prop_assert_eq!(&idx[i * c.k..(i + 1) * c.k], &want_idx[..], "top-k of query {}", i);
            for (j, &g) in want_idx.iter().enumerate() {
                let v = if g < 0 { f32::NEG_INFINITY } else { row[g as usize] };
                prop_assert!(values[i * c.k + j] == v);
            }
        }

        // target ranks: items scoring higher, plus ties with a lower index.
        let ranks = target_rank(queries, gallery, &c.targets).expect("ranks");
        for (i, &t) in c.targets.iter().enumerate() {
            let row = &full[i * c.n..(i + 1) * c.n];
            let s = row[t as usize];
            let want = (0..c.n).filter(|&j| row[j] > s || (row[j] == s && j < t as usize)).count();
            prop_assert_eq!(ranks[i], want as i64, "rank of query {}", i);
        }

        // mining from features == mining the full score matrix, for any block size.
        let mined = mine_from_features(
            queries,
            gallery,
            &c.targets,
            c.options,
            Exclusions::default(),
            c.block,
            |_, _| {},
        );
        let direct = mine_negatives(&full, c.n, &c.targets, c.options, Exclusions::default());
        prop_assert_eq!(mined, direct);
        Ok(())
    });
}

/// Shapes that do not match their buffers, or whose sizes overflow: errors, never panics.
#[test]
fn fuzz_inconsistent_shapes_are_errors() {
    let big = prop_oneof![0usize..5, Just(usize::MAX), Just(usize::MAX / 2 + 1), Just(1 << 32)];
    let case = (big.clone(), big.clone(), big.clone(), big.clone(), big, 0usize..6, 0usize..6);
    fuzz("shapes", case, |(rows, dim, items, tokens, gdim, q_len, g_len)| {
        let qd = vec![0.5f32; q_len];
        let gd = vec![0.25f32; g_len];
        let queries = Queries { data: &qd, rows, dim };
        let gallery = Gallery { data: Features::F32(&gd), items, tokens, dim: gdim };
        let consistent = rows.checked_mul(dim) == Some(q_len)
            && items.checked_mul(tokens).and_then(|x| x.checked_mul(gdim)) == Some(g_len)
            && dim == gdim
            && dim > 0
            && items > 0
            && tokens > 0;
        let got = score(queries, gallery);
        prop_assert_eq!(got.is_ok(), consistent, "{:?}", got);
        if consistent {
            prop_assert!(topk(queries, gallery, items.min(3), None).is_ok());
        } else {
            prop_assert!(topk(queries, gallery, 1, None).is_err());
            prop_assert!(target_rank(queries, gallery, &vec![0; rows.min(8)]).is_err());
        }
        Ok(())
    });
}

// --------------------------------------------------------------------------------------------
// the micro-kernel on arbitrary call shapes

#[derive(Debug, Clone)]
struct KernelCase {
    kernel: usize,
    d: usize,
    tokens: usize,
    first_row: usize,
    valid: usize,
    rows: Vec<f32>,
    queries: Vec<f32>,
}

fn kernel_case() -> impl Strategy<Value = KernelCase> {
    let kernels = Kernel::available().len();
    (0..kernels, 1usize..40, 1usize..6, 0usize..20, 0usize..=12).prop_flat_map(
        move |(kernel, d, tokens, first_row, valid)| {
            let k = Kernel::available()[kernel];
            let valid = valid.min(k.rows());
            (
                prop::collection::vec(value(), valid * d),
                prop::collection::vec(feature(), k.lanes() * d),
            )
                .prop_map(move |(rows, queries)| KernelCase {
                    kernel,
                    d,
                    tokens,
                    first_row,
                    valid,
                    rows,
                    queries,
                })
        },
    )
}

#[test]
fn fuzz_kernel_calls_against_the_reference_chain() {
    fuzz("kernel", kernel_case(), |c| {
        let kernel = Kernel::available()[c.kernel];
        let (rows, lanes) = (kernel.rows(), kernel.lanes());
        let panel = pack_panels(&c.queries, lanes, c.d, lanes).expect("small panel");
        let mut group = vec![0.0f32; rows * c.d];
        pack_group(kernel, Features::F32(&c.rows), c.d, rows, &mut group);
        let slots = (c.first_row + rows) / c.tokens + 1;
        let mut tile = vec![f32::NEG_INFINITY; slots * lanes];
        score_rows(kernel, c.d, &group, &panel, &mut tile, c.first_row, c.tokens, c.valid);
        let mut want = vec![f32::NEG_INFINITY; slots * lanes];
        for r in 0..c.valid {
            for l in 0..lanes {
                let s =
                    dot_chain(&c.rows[r * c.d..(r + 1) * c.d], &c.queries[l * c.d..(l + 1) * c.d]);
                let slot = &mut want[(c.first_row + r) / c.tokens * lanes + l];
                *slot = slot.max(s);
            }
        }
        prop_assert!(same(&tile, &want), "{:?}", kernel);
        Ok(())
    });
}

// --------------------------------------------------------------------------------------------
// the sampler on arbitrary bands, queries, seeds and epochs

#[test]
fn fuzz_sampler() {
    let case = (
        prop::collection::vec(prop::collection::vec(0i64..1000, 0..30), 0..8),
        prop::collection::vec(-2i64..10, 0..20),
        any::<u64>(),
        prop_oneof![0u64..100, any::<u64>()],
        prop::option::of((0usize..10, -3i64..40)),
    );
    fuzz("sampler", case, |(bands, queries, seed, epoch, damage)| {
        let mut indptr = vec![0i64];
        let mut indices = vec![];
        for band in &bands {
            indices.extend(band);
            indptr.push(indices.len() as i64);
        }
        if let Some((at, v)) = damage {
            if at < indptr.len() {
                indptr[at] = v;
            }
        }
        let consistent = indptr[0] == 0
            && indptr.last() == Some(&(indices.len() as i64))
            && indptr.windows(2).all(|w| w[0] <= w[1]);
        let csr = CsrRef { indptr: &indptr, indices: &indices };
        let in_range = queries.iter().all(|&q| q >= 0 && (q as usize) < bands.len());
        let got = sample(csr, seed, &queries, epoch);
        prop_assert_eq!(got.is_ok(), consistent && in_range, "{:?}", got);
        if let Ok(drawn) = got {
            for (&q, &g) in queries.iter().zip(&drawn) {
                let band = csr.row(q as usize);
                let drawn_from_band = if band.is_empty() { g == -1 } else { band.contains(&g) };
                prop_assert!(drawn_from_band, "query {} drew {}", q, g);
                prop_assert_eq!(Ok(g), sample_one(csr, seed, q as usize, epoch));
            }
        }
        Ok(())
    });
}
