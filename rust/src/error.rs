//! The one error type of the core. The Python layer maps [`QureError::OutOfMemory`] to
//! `MemoryError` and every other variant to `ValueError`.

use std::fmt;

/// Why a core call refused its input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QureError {
    /// An argument has the wrong shape, length, range or value; the text names it.
    InvalidArgument(String),
    /// A score (or feature) is NaN or infinite.
    NonFinite {
        /// What holds the value ("scores", "queries", "gallery").
        what: &'static str,
        /// Row of the first offending value.
        row: usize,
        /// Column of the first offending value in that row.
        col: usize,
    },
    /// A buffer whose size follows from the input could not be allocated, or its size in bytes
    /// does not fit in `usize`. Nothing was half-written: the call had no effect.
    OutOfMemory {
        /// What the buffer holds ("scores", "top-k candidates", "bands", ...).
        what: &'static str,
        /// Its shape, in elements.
        shape: Vec<usize>,
        /// Bytes requested; `None` when the size overflows.
        bytes: Option<usize>,
    },
}

impl QureError {
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        QureError::InvalidArgument(message.into())
    }
}

impl fmt::Display for QureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QureError::InvalidArgument(message) => f.write_str(message),
            QureError::NonFinite { what, row, col } => {
                write!(f, "{what} row {row} holds a non-finite value (NaN or inf) at column {col}")
            }
            QureError::OutOfMemory { what, shape, bytes } => {
                let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
                let shape = format!("({})", dims.join(", "));
                match bytes {
                    Some(bytes) => write!(
                        f,
                        "cannot allocate {bytes} bytes ({:.1} GiB) for {what} of shape {shape}",
                        *bytes as f64 / f64::from(1u32 << 30)
                    ),
                    None => write!(
                        f,
                        "{what} of shape {shape} would need more than {} bytes: too large to \
                         allocate",
                        usize::MAX
                    ),
                }
            }
        }
    }
}

impl std::error::Error for QureError {}

/// Result type of the core.
pub type Result<T> = std::result::Result<T, QureError>;

/// Bytes taken by `shape` elements of `T`, or `None` when that overflows `usize`.
pub(crate) fn bytes_of<T>(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(std::mem::size_of::<T>(), |acc, &d| acc.checked_mul(d))
}

/// Elements in `shape`, or the overflow error naming it.
pub(crate) fn checked_len<T>(what: &'static str, shape: &[usize]) -> Result<usize> {
    let overflow = || QureError::OutOfMemory { what, shape: shape.to_vec(), bytes: None };
    bytes_of::<T>(shape).ok_or_else(overflow)?;
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).ok_or_else(overflow)
}

/// The error for a buffer of `shape` elements of `T` that could not be allocated.
pub(crate) fn out_of_memory<T>(what: &'static str, shape: &[usize]) -> QureError {
    QureError::OutOfMemory { what, shape: shape.to_vec(), bytes: bytes_of::<T>(shape) }
}

/// Makes room for exactly `additional` more elements in `v`, or fails with the error naming
/// `what` and `shape` (the whole buffer's shape, for the message). Never aborts.
pub(crate) fn try_reserve<T>(
    v: &mut Vec<T>,
    additional: usize,
    what: &'static str,
    shape: &[usize],
) -> Result<()> {
    v.try_reserve_exact(additional).map_err(|_| out_of_memory::<T>(what, shape))
}

/// A vector of `shape`'s element count copies of `value`, allocated fallibly.
pub(crate) fn try_filled<T: Clone>(
    what: &'static str,
    shape: &[usize],
    value: T,
) -> Result<Vec<T>> {
    let len = checked_len::<T>(what, shape)?;
    let mut v = Vec::new();
    try_reserve(&mut v, len, what, shape)?;
    v.resize(len, value);
    Ok(v)
}

/// Clears `v` and fills it with `len` copies of `value`, allocating fallibly.
pub(crate) fn try_refill<T: Clone>(
    v: &mut Vec<T>,
    len: usize,
    value: T,
    what: &'static str,
) -> Result<()> {
    v.clear();
    if len > v.capacity() {
        try_reserve(v, len, what, &[len])?;
    }
    v.resize(len, value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_checked_not_wrapped() {
        assert_eq!(bytes_of::<f32>(&[3, 5]), Some(60));
        assert_eq!(bytes_of::<f32>(&[usize::MAX / 2, 3]), None);
        assert_eq!(bytes_of::<u64>(&[usize::MAX / 4]), None);
        let err = checked_len::<f32>("scores", &[1 << 40, 1 << 40]).unwrap_err();
        assert_eq!(
            err,
            QureError::OutOfMemory { what: "scores", shape: vec![1 << 40, 1 << 40], bytes: None }
        );
        assert!(err.to_string().contains("scores of shape (1099511627776, 1099511627776)"));
    }

    #[test]
    fn impossible_allocations_fail_instead_of_aborting() {
        // 2^62 bytes: more than any machine has, and more than a Layout allows.
        let err = try_filled::<f32>("scores", &[1 << 30, 1 << 30], 0.0).unwrap_err();
        match &err {
            QureError::OutOfMemory { what, bytes, .. } => {
                assert_eq!(*what, "scores");
                assert_eq!(*bytes, Some(1 << 62));
            }
            other => panic!("{other:?}"),
        }
        assert!(err.to_string().starts_with("cannot allocate 4611686018427387904 bytes"));
        let mut v: Vec<u64> = vec![1];
        assert!(try_refill(&mut v, usize::MAX / 16, 0, "scratch").is_err());
        assert_eq!(try_filled("ok", &[2, 3], 7u8).unwrap(), vec![7; 6]);
    }
}
