//! `qure._core`: the thin PyO3 layer. It takes C-contiguous NumPy arrays of the exact dtypes the
//! Python package prepares, releases the GIL, calls the core and hands arrays back without copies.

use numpy::{
    IntoPyArray, PyArray1, PyArray2, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2,
    PyUntypedArrayMethods,
};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::error::QureError;
use crate::mining::{self, CsrRef, Exclusions, MineOptions, Pairing};
use crate::threads;

fn to_py(err: QureError) -> PyErr {
    PyValueError::new_err(err.to_string())
}

fn contiguous<'a, T: numpy::Element, D: numpy::ndarray::Dimension>(
    array: &'a numpy::PyReadonlyArray<'_, T, D>,
    name: &str,
) -> PyResult<&'a [T]> {
    array
        .as_slice()
        .map_err(|_| PyValueError::new_err(format!("{name} must be C-contiguous")))
}

type MinedArrays<'py> = (
    Bound<'py, PyArray1<i64>>,
    Bound<'py, PyArray1<i64>>,
    Bound<'py, PyArray1<i64>>,
    Bound<'py, PyArray2<i64>>,
);

/// Mines two-steep-drop bands; see `qure.mine_negatives` for the rule and arguments.
#[pyfunction]
#[pyo3(signature = (scores, target_idx, consecutive_threshold, pairing, max_rank=None, positives_indptr=None, positives_indices=None, gallery_ids=None))]
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
) -> PyResult<MinedArrays<'py>> {
    let pairing = match pairing {
        "consecutive" => Pairing::Consecutive,
        "anchored" => Pairing::Anchored,
        other => {
            return Err(PyValueError::new_err(format!(
                "pairing must be 'consecutive' or 'anchored', not {other:?}"
            )))
        }
    };
    let [n_queries, n_gallery] = [scores.shape()[0], scores.shape()[1]];
    let scores_slice = contiguous(&scores, "scores")?;
    let targets = contiguous(&target_idx, "target_idx")?;
    if targets.len() != n_queries {
        return Err(PyValueError::new_err(format!(
            "target_idx has {} entries but scores have {n_queries} rows",
            targets.len()
        )));
    }
    let positives = match (&positives_indptr, &positives_indices) {
        (Some(p), Some(i)) => Some(CsrRef {
            indptr: contiguous(p, "positives")?,
            indices: contiguous(i, "positives")?,
        }),
        (None, None) => None,
        _ => {
            return Err(PyValueError::new_err(
                "positives needs both indptr and indices",
            ))
        }
    };
    let ids = match &gallery_ids {
        Some(ids) => Some(contiguous(ids, "gallery_ids")?),
        None => None,
    };
    let options = MineOptions {
        consecutive_threshold,
        pairing,
        max_rank,
    };
    let exclusions = Exclusions {
        positives,
        gallery_ids: ids,
    };
    let mined = py
        .detach(|| mining::mine_negatives(scores_slice, n_gallery, targets, options, exclusions))
        .map_err(to_py)?;
    let drops: Vec<i64> = mined.drops.iter().flatten().copied().collect();
    let drops = drops.into_pyarray(py).reshape([n_queries, 2])?;
    Ok((
        mined.indptr.into_pyarray(py),
        mined.indices.into_pyarray(py),
        mined.target_rank.into_pyarray(py),
        drops,
    ))
}

/// Sets the number of threads qure's parallel calls use (`n >= 1`).
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
    m.add_function(wrap_pyfunction!(set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(get_num_threads, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
