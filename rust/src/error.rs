//! The one error type of the core. The Python layer maps every variant to `ValueError`.

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
        }
    }
}

impl std::error::Error for QureError {}

/// Result type of the core.
pub type Result<T> = std::result::Result<T, QureError>;
