//! `qure._core`: the thin PyO3 layer. It takes C-contiguous NumPy arrays of the exact dtypes the
//! Python package prepares, releases the GIL, calls the core and hands arrays back without copies.

use numpy::{
    IntoPyArray, PyArray1, PyArray2, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2,
    PyReadonlyArray3, PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyMemoryError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::error::QureError;
use crate::kernel::{Features, Kernel};
use crate::mining::{self, CsrRef, Exclusions, HardNegatives, MineOptions, Pairing};
use crate::score::{self as core_score, Gallery, Queries};
use crate::shard;
use crate::strategy::{Candidates, Filters, Pick, Reference, Spec};
use crate::threads;

fn to_py(err: QureError) -> PyErr {
    match err {
        QureError::OutOfMemory { .. } => PyMemoryError::new_err(err.to_string()),
        _ => PyValueError::new_err(err.to_string()),
    }
}

fn contiguous<'a, T: numpy::Element, D: numpy::ndarray::Dimension>(
    array: &'a numpy::PyReadonlyArray<'_, T, D>,
    name: &str,
) -> PyResult<&'a [T]> {
    array.as_slice().map_err(|_| PyValueError::new_err(format!("{name} must be C-contiguous")))
}

type MinedArrays<'py> = (
    Bound<'py, PyArray1<i64>>,
    Bound<'py, PyArray1<i64>>,
    Bound<'py, PyArray1<i64>>,
    Bound<'py, PyArray2<i64>>,
    Bound<'py, PyArray1<f32>>,
    Bound<'py, PyArray1<f32>>,
    Bound<'py, PyDict>,
);

type TopK<'py> = (Bound<'py, PyArray2<f32>>, Bound<'py, PyArray2<i64>>);

/// Mines two-steep-drop bands; see `qure.mine_negatives` for the rule and arguments.
#[pyfunction]
#[pyo3(signature = (scores, target_idx, *, consecutive_threshold, pairing, max_rank=None, positives_indptr=None, positives_indices=None, gallery_ids=None, strategy="band", rank_start=0, rank_end=None, margin=None, relative_margin=None, max_score=None, min_score=None, reference="target", num_negatives=None, sampling="top", simans_a=1.0, simans_b=0.0, seed=0, first_query=0))]
#[allow(clippy::too_many_arguments)]
fn mine_negatives<'py>(
    py: Python<'py>,
    scores: PyReadonlyArray2<'py, f32>,
    target_idx: PyReadonlyArray1<'py, i64>,
    consecutive_threshold: usize,
    pairing: &str,
    max_rank: Option<usize>,
    positives_indptr: Option<PyReadonlyArray1<'py, i64>>,
    positives_indices: Option<PyReadonlyArray1<'py, i64>>,
    gallery_ids: Option<PyReadonlyArray1<'py, i64>>,
    strategy: &str,
    rank_start: usize,
    rank_end: Option<usize>,
    margin: Option<f32>,
    relative_margin: Option<f32>,
    max_score: Option<f32>,
    min_score: Option<f32>,
    reference: &str,
    num_negatives: Option<usize>,
    sampling: &str,
    simans_a: f32,
    simans_b: f32,
    seed: u64,
    first_query: u64,
) -> PyResult<MinedArrays<'py>> {
    let options = MineOptions { consecutive_threshold, pairing: parse_pairing(pairing)?, max_rank };
    let spec = parse_spec(
        strategy,
        (rank_start, rank_end),
        Filters {
            margin,
            relative_margin,
            max_score,
            min_score,
            reference: parse_reference(reference)?,
        },
        num_negatives,
        sampling,
        (simans_a, simans_b),
        (seed, first_query),
    )?;
    let [n_queries, n_gallery] = [scores.shape()[0], scores.shape()[1]];
    let scores_slice = contiguous(&scores, "scores")?;
    let targets = contiguous(&target_idx, "target_idx")?;
    if targets.len() != n_queries {
        return Err(PyValueError::new_err(format!(
            "target_idx has {} entries but scores have {n_queries} rows",
            targets.len()
        )));
    }
    let exclusions = Exclusions {
        positives: optional_csr(&positives_indptr, &positives_indices, "positives")?,
        gallery_ids: optional_slice(&gallery_ids, "gallery_ids")?,
    };
    let mined = py
        .detach(|| {
            mining::Miner::new(n_gallery, targets, options, exclusions)?
                .with_spec(spec)?
                .mine_matrix(scores_slice)
        })
        .map_err(to_py)?;
    mined_to_py(py, mined)
}

fn parse_reference(reference: &str) -> PyResult<Reference> {
    match reference {
        "target" => Ok(Reference::Target),
        "lowest_positive" => Ok(Reference::LowestPositive),
        other => Err(PyValueError::new_err(format!(
            "reference must be 'target' or 'lowest_positive', not {other:?}"
        ))),
    }
}

/// The candidate set, filters and selection from the keyword arguments `qure.mining` passes.
fn parse_spec(
    strategy: &str,
    (start, end): (usize, Option<usize>),
    filters: Filters,
    num_negatives: Option<usize>,
    sampling: &str,
    (a, b): (f32, f32),
    (seed, first_query): (u64, u64),
) -> PyResult<Spec> {
    let candidates = match strategy {
        "band" => Candidates::Band,
        "topk" => Candidates::Top { start, end },
        "window" => Candidates::Window { start, end },
        other => {
            return Err(PyValueError::new_err(format!(
                "strategy must be 'band', 'topk' or 'window', not {other:?}"
            )))
        }
    };
    let pick = match (num_negatives, sampling) {
        (None, "top" | "random" | "simans") => Pick::All,
        (Some(k), "top") => Pick::First(k),
        (Some(k), "random") => Pick::Uniform(k),
        (Some(k), "simans") => Pick::SimAns { k, a, b },
        (_, other) => {
            return Err(PyValueError::new_err(format!(
                "sampling must be 'top', 'random' or 'simans', not {other:?}"
            )))
        }
    };
    Ok(Spec { candidates, filters, pick, seed, first_query })
}

fn parse_pairing(pairing: &str) -> PyResult<Pairing> {
    match pairing {
        "consecutive" => Ok(Pairing::Consecutive),
        "anchored" => Ok(Pairing::Anchored),
        other => Err(PyValueError::new_err(format!(
            "pairing must be 'consecutive' or 'anchored', not {other:?}"
        ))),
    }
}

fn mined_to_py(py: Python<'_>, mined: HardNegatives) -> PyResult<MinedArrays<'_>> {
    let n_queries = mined.target_rank.len();
    let drops: Vec<i64> = mined.drops.iter().flatten().copied().collect();
    let drops = drops.into_pyarray(py).reshape([n_queries, 2])?;
    let removed = PyDict::new(py);
    let r = mined.removed;
    for (name, count) in [
        ("candidates", r.candidates),
        ("excluded", r.excluded),
        ("margin", r.margin),
        ("relative_margin", r.relative_margin),
        ("max_score", r.max_score),
        ("min_score", r.min_score),
    ] {
        removed.set_item(name, count)?;
    }
    Ok((
        mined.indptr.into_pyarray(py),
        mined.indices.into_pyarray(py),
        mined.target_rank.into_pyarray(py),
        drops,
        mined.scores.into_pyarray(py),
        mined.target_score.into_pyarray(py),
        removed,
    ))
}

fn optional_slice<'a>(
    array: &'a Option<PyReadonlyArray1<'_, i64>>,
    name: &str,
) -> PyResult<Option<&'a [i64]>> {
    array.as_ref().map(|a| contiguous(a, name)).transpose()
}

fn optional_csr<'a>(
    indptr: &'a Option<PyReadonlyArray1<'_, i64>>,
    indices: &'a Option<PyReadonlyArray1<'_, i64>>,
    name: &str,
) -> PyResult<Option<CsrRef<'a>>> {
    match (indptr, indices) {
        (Some(p), Some(i)) => {
            Ok(Some(CsrRef { indptr: contiguous(p, name)?, indices: contiguous(i, name)? }))
        }
        (None, None) => Ok(None),
        _ => Err(PyValueError::new_err(format!("{name} needs both indptr and indices"))),
    }
}

/// A gallery as the Python layer passes it: `float32`, or half-precision bits as `uint16`
/// (a view of the caller's `float16`/`bfloat16` buffer, never a converted copy).
#[derive(FromPyObject)]
enum GalleryArray<'py> {
    F32(PyReadonlyArray3<'py, f32>),
    Half(PyReadonlyArray3<'py, u16>),
}

fn features<'a>(
    queries: &'a PyReadonlyArray2<'_, f32>,
    gallery: &'a GalleryArray<'_>,
    gallery_format: &str,
) -> PyResult<(Queries<'a>, Gallery<'a>)> {
    let qs = queries.shape();
    let q = Queries { data: contiguous(queries, "queries")?, rows: qs[0], dim: qs[1] };
    let (data, gs) = match (gallery, gallery_format) {
        (GalleryArray::F32(a), "float32") => (Features::F32(contiguous(a, "gallery")?), a.shape()),
        (GalleryArray::Half(a), "float16") => (Features::F16(contiguous(a, "gallery")?), a.shape()),
        (GalleryArray::Half(a), "bfloat16") => {
            (Features::Bf16(contiguous(a, "gallery")?), a.shape())
        }
        (GalleryArray::F32(_), other) | (GalleryArray::Half(_), other) => {
            return Err(PyValueError::new_err(format!(
                "gallery_format {other:?} does not match the gallery array (float32 arrays are \
                 'float32', uint16 bit patterns 'float16' or 'bfloat16')"
            )))
        }
    };
    Ok((q, Gallery { data, items: gs[0], tokens: gs[1], dim: gs[2] }))
}

/// `(Q, N)` scores: max over each image's tokens of the dot product with the query.
#[pyfunction]
#[pyo3(signature = (queries, gallery, gallery_format="float32"))]
fn score<'py>(
    py: Python<'py>,
    queries: PyReadonlyArray2<'py, f32>,
    gallery: GalleryArray<'py>,
    gallery_format: &str,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let (q, g) = features(&queries, &gallery, gallery_format)?;
    let scores = py.detach(|| core_score::score(q, g)).map_err(to_py)?;
    scores.into_pyarray(py).reshape([q.rows, g.items])
}

/// Exact top-k `(values, indices)`, streaming over gallery blocks.
#[pyfunction]
#[pyo3(signature = (queries, gallery, k, exclude_indptr=None, exclude_indices=None, gallery_format="float32"))]
fn topk<'py>(
    py: Python<'py>,
    queries: PyReadonlyArray2<'py, f32>,
    gallery: GalleryArray<'py>,
    k: usize,
    exclude_indptr: Option<PyReadonlyArray1<'py, i64>>,
    exclude_indices: Option<PyReadonlyArray1<'py, i64>>,
    gallery_format: &str,
) -> PyResult<TopK<'py>> {
    let (q, g) = features(&queries, &gallery, gallery_format)?;
    let exclude = optional_csr(&exclude_indptr, &exclude_indices, "exclude")?;
    let (values, indices) = py.detach(|| core_score::topk(q, g, k, exclude)).map_err(to_py)?;
    Ok((
        values.into_pyarray(py).reshape([q.rows, k])?,
        indices.into_pyarray(py).reshape([q.rows, k])?,
    ))
}

/// Each target's 0-based rank without sorting.
#[pyfunction]
#[pyo3(signature = (queries, gallery, target_idx, gallery_format="float32"))]
fn target_rank<'py>(
    py: Python<'py>,
    queries: PyReadonlyArray2<'py, f32>,
    gallery: GalleryArray<'py>,
    target_idx: PyReadonlyArray1<'py, i64>,
    gallery_format: &str,
) -> PyResult<Bound<'py, PyArray1<i64>>> {
    let (q, g) = features(&queries, &gallery, gallery_format)?;
    let targets = contiguous(&target_idx, "target_idx")?;
    let ranks = py.detach(|| core_score::target_rank(q, g, targets)).map_err(to_py)?;
    Ok(ranks.into_pyarray(py))
}

/// Scores query blocks and mines them as it goes.
#[pyfunction]
#[pyo3(signature = (queries, gallery, target_idx, *, consecutive_threshold, pairing, max_rank=None, positives_indptr=None, positives_indices=None, gallery_ids=None, block_size=None, strategy="band", rank_start=0, rank_end=None, margin=None, relative_margin=None, max_score=None, min_score=None, reference="target", num_negatives=None, sampling="top", simans_a=1.0, simans_b=0.0, seed=0, first_query=0, gallery_format="float32"))]
#[allow(clippy::too_many_arguments)]
fn mine_from_features<'py>(
    py: Python<'py>,
    queries: PyReadonlyArray2<'py, f32>,
    gallery: GalleryArray<'py>,
    target_idx: PyReadonlyArray1<'py, i64>,
    consecutive_threshold: usize,
    pairing: &str,
    max_rank: Option<usize>,
    positives_indptr: Option<PyReadonlyArray1<'py, i64>>,
    positives_indices: Option<PyReadonlyArray1<'py, i64>>,
    gallery_ids: Option<PyReadonlyArray1<'py, i64>>,
    block_size: Option<usize>,
    strategy: &str,
    rank_start: usize,
    rank_end: Option<usize>,
    margin: Option<f32>,
    relative_margin: Option<f32>,
    max_score: Option<f32>,
    min_score: Option<f32>,
    reference: &str,
    num_negatives: Option<usize>,
    sampling: &str,
    simans_a: f32,
    simans_b: f32,
    seed: u64,
    first_query: u64,
    gallery_format: &str,
) -> PyResult<MinedArrays<'py>> {
    let options = MineOptions { consecutive_threshold, pairing: parse_pairing(pairing)?, max_rank };
    let spec = parse_spec(
        strategy,
        (rank_start, rank_end),
        Filters {
            margin,
            relative_margin,
            max_score,
            min_score,
            reference: parse_reference(reference)?,
        },
        num_negatives,
        sampling,
        (simans_a, simans_b),
        (seed, first_query),
    )?;
    let (q, g) = features(&queries, &gallery, gallery_format)?;
    let targets = contiguous(&target_idx, "target_idx")?;
    let exclusions = Exclusions {
        positives: optional_csr(&positives_indptr, &positives_indices, "positives")?,
        gallery_ids: optional_slice(&gallery_ids, "gallery_ids")?,
    };
    let mined = py
        .detach(|| {
            core_score::mine_from_features_with(
                q,
                g,
                targets,
                options,
                exclusions,
                spec,
                block_size,
                |_, _| {},
            )
        })
        .map_err(to_py)?;
    mined_to_py(py, mined)
}

type TailArrays<'py> =
    (Bound<'py, PyArray1<i64>>, Bound<'py, PyArray2<i64>>, Bound<'py, PyArray2<f32>>);

/// Sharded mining, on one rank: per query, the shard's items above the target and its best
/// `max_rank` items after it (see `qure.sharded`).
#[pyfunction]
#[pyo3(signature = (queries, shard, *, first_item, n_gallery, target_idx, target_scores, max_rank, block_size=None, gallery_format="float32"))]
#[allow(clippy::too_many_arguments)]
fn tail_candidates<'py>(
    py: Python<'py>,
    queries: PyReadonlyArray2<'py, f32>,
    shard: GalleryArray<'py>,
    first_item: usize,
    n_gallery: usize,
    target_idx: PyReadonlyArray1<'py, i64>,
    target_scores: PyReadonlyArray1<'py, f32>,
    max_rank: usize,
    block_size: Option<usize>,
    gallery_format: &str,
) -> PyResult<TailArrays<'py>> {
    let (q, g) = features(&queries, &shard, gallery_format)?;
    let targets = contiguous(&target_idx, "target_idx")?;
    let target_scores = contiguous(&target_scores, "target_scores")?;
    let found = py
        .detach(|| {
            shard::tail_candidates(
                q,
                g,
                first_item,
                n_gallery,
                targets,
                target_scores,
                max_rank,
                block_size,
            )
        })
        .map_err(to_py)?;
    let rows = found.above.len();
    Ok((
        found.above.into_pyarray(py),
        found.items.into_pyarray(py).reshape([rows, found.width])?,
        found.scores.into_pyarray(py).reshape([rows, found.width])?,
    ))
}

/// Sharded mining, on the query's rank: mines the merged tails exactly as the whole row.
#[pyfunction]
#[pyo3(signature = (above, target_scores, items, scores, target_idx, *, n_gallery, consecutive_threshold, pairing, max_rank=None, positives_indptr=None, positives_indices=None, gallery_ids=None, strategy="band", rank_start=0, rank_end=None, margin=None, relative_margin=None, max_score=None, min_score=None, reference="target", num_negatives=None, sampling="top", simans_a=1.0, simans_b=0.0, seed=0, first_query=0))]
#[allow(clippy::too_many_arguments)]
fn mine_tails<'py>(
    py: Python<'py>,
    above: PyReadonlyArray1<'py, i64>,
    target_scores: PyReadonlyArray1<'py, f32>,
    items: PyReadonlyArray2<'py, i64>,
    scores: PyReadonlyArray2<'py, f32>,
    target_idx: PyReadonlyArray1<'py, i64>,
    n_gallery: usize,
    consecutive_threshold: usize,
    pairing: &str,
    max_rank: Option<usize>,
    positives_indptr: Option<PyReadonlyArray1<'py, i64>>,
    positives_indices: Option<PyReadonlyArray1<'py, i64>>,
    gallery_ids: Option<PyReadonlyArray1<'py, i64>>,
    strategy: &str,
    rank_start: usize,
    rank_end: Option<usize>,
    margin: Option<f32>,
    relative_margin: Option<f32>,
    max_score: Option<f32>,
    min_score: Option<f32>,
    reference: &str,
    num_negatives: Option<usize>,
    sampling: &str,
    simans_a: f32,
    simans_b: f32,
    seed: u64,
    first_query: u64,
) -> PyResult<MinedArrays<'py>> {
    let options = MineOptions { consecutive_threshold, pairing: parse_pairing(pairing)?, max_rank };
    let spec = parse_spec(
        strategy,
        (rank_start, rank_end),
        Filters {
            margin,
            relative_margin,
            max_score,
            min_score,
            reference: parse_reference(reference)?,
        },
        num_negatives,
        sampling,
        (simans_a, simans_b),
        (seed, first_query),
    )?;
    if items.shape() != scores.shape() {
        return Err(PyValueError::new_err(format!(
            "items {:?} and scores {:?} must have the same shape",
            items.shape(),
            scores.shape()
        )));
    }
    let width = items.shape()[1];
    let above = contiguous(&above, "above")?;
    let target_scores = contiguous(&target_scores, "target_scores")?;
    let items = contiguous(&items, "items")?;
    let scores = contiguous(&scores, "scores")?;
    let targets = contiguous(&target_idx, "target_idx")?;
    let exclusions = Exclusions {
        positives: optional_csr(&positives_indptr, &positives_indices, "positives")?,
        gallery_ids: optional_slice(&gallery_ids, "gallery_ids")?,
    };
    let mined = py
        .detach(|| {
            mining::Miner::new(n_gallery, targets, options, exclusions)?
                .with_spec(spec)?
                .mine_tails(above, target_scores, items, scores, width)
        })
        .map_err(to_py)?;
    mined_to_py(py, mined)
}

/// Measured f32 FMA peak of the machine in GFLOP/s: every pool thread runs a register-resident
/// FMA loop at once with the kernel's vector width.
#[pyfunction]
#[pyo3(signature = (iterations=200_000_000))]
fn fma_peak_gflops(py: Python<'_>, iterations: u64) -> f64 {
    use rayon::prelude::*;
    let kernel = Kernel::current();
    py.detach(|| {
        threads::install(|| {
            let n = rayon::current_num_threads();
            (0..n).into_par_iter().map(|_| crate::kernel::fma_peak_gflops(kernel, iterations)).sum()
        })
    })
}

/// One negative per query from its band (-1 where the band is empty), a pure function of
/// `(seed, query, epoch)`.
#[pyfunction]
fn sample_negatives<'py>(
    py: Python<'py>,
    indptr: PyReadonlyArray1<'py, i64>,
    indices: PyReadonlyArray1<'py, i64>,
    seed: u64,
    queries: PyReadonlyArray1<'py, i64>,
    epoch: u64,
) -> PyResult<Bound<'py, PyArray1<i64>>> {
    let bands = CsrRef {
        indptr: contiguous(&indptr, "indptr")?,
        indices: contiguous(&indices, "indices")?,
    };
    let queries = contiguous(&queries, "query_idx")?;
    let drawn = py.detach(|| crate::sampler::sample(bands, seed, queries, epoch)).map_err(to_py)?;
    Ok(drawn.into_pyarray(py))
}

/// `k` distinct negatives per query from its band, `(len(queries), k)` (-1 past a short band),
/// a pure function of `(seed, query, epoch)`.
#[pyfunction]
fn sample_negatives_k<'py>(
    py: Python<'py>,
    indptr: PyReadonlyArray1<'py, i64>,
    indices: PyReadonlyArray1<'py, i64>,
    seed: u64,
    queries: PyReadonlyArray1<'py, i64>,
    epoch: u64,
    k: usize,
) -> PyResult<Bound<'py, PyArray2<i64>>> {
    let bands = CsrRef {
        indptr: contiguous(&indptr, "indptr")?,
        indices: contiguous(&indices, "indices")?,
    };
    let queries = contiguous(&queries, "query_idx")?;
    let rows = queries.len();
    let drawn =
        py.detach(|| crate::sampler::sample_k(bands, seed, queries, epoch, k)).map_err(to_py)?;
    drawn.into_pyarray(py).reshape([rows, k])
}

/// The SIMD kernel scoring uses: "avx512", "avx2" or "portable".
#[pyfunction]
fn simd_kernel() -> &'static str {
    Kernel::current().name()
}

/// Sets the number of threads qure's parallel calls use (`1 <= n <= MAX_THREADS`).
#[pyfunction]
fn set_num_threads(n: usize) -> PyResult<()> {
    threads::set_num_threads(n).map_err(to_py)
}

/// The number of threads qure's parallel calls use.
#[pyfunction]
fn get_num_threads(py: Python<'_>) -> usize {
    py.detach(threads::num_threads)
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(mine_negatives, m)?)?;
    m.add_function(wrap_pyfunction!(mine_from_features, m)?)?;
    m.add_function(wrap_pyfunction!(score, m)?)?;
    m.add_function(wrap_pyfunction!(topk, m)?)?;
    m.add_function(wrap_pyfunction!(target_rank, m)?)?;
    m.add_function(wrap_pyfunction!(simd_kernel, m)?)?;
    m.add_function(wrap_pyfunction!(sample_negatives, m)?)?;
    m.add_function(wrap_pyfunction!(sample_negatives_k, m)?)?;
    m.add_function(wrap_pyfunction!(fma_peak_gflops, m)?)?;
    m.add_function(wrap_pyfunction!(tail_candidates, m)?)?;
    m.add_function(wrap_pyfunction!(mine_tails, m)?)?;
    m.add_function(wrap_pyfunction!(set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(get_num_threads, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("MAX_THREADS", threads::MAX_THREADS)?;
    Ok(())
}
