//! qure's core: exact two-steep-drop hard-negative mining for composed image retrieval (QuRe),
//! parallel over queries with rayon. Pure Rust; the PyO3 binding lives behind the `python`
//! feature and only converts, checks, releases the GIL and calls in here.

pub mod error;
pub mod keys;
pub mod mining;
pub mod threads;

#[cfg(feature = "python")]
mod python;

pub use error::{QureError, Result};
pub use mining::{mine_negatives, CsrRef, Exclusions, HardNegatives, MineOptions, Miner, Pairing};
