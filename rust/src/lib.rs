//! qure's core: exact two-steep-drop hard-negative mining for composed image retrieval (QuRe),
//! large-gallery scoring (max over image tokens, BLIP-2 style), exact top-k and target ranks,
//! parallel with rayon. Pure Rust; the PyO3 binding lives behind the `python` feature and only
//! converts, checks, releases the GIL and calls in here.

pub mod error;
pub mod kernel;
pub mod keys;
pub mod mining;
mod rowpass;
pub mod sampler;
pub mod score;
pub mod shard;
pub mod strategy;
pub mod threads;

#[cfg(feature = "python")]
mod python;

pub use error::{QureError, Result};
pub use mining::{mine_negatives, CsrRef, Exclusions, HardNegatives, MineOptions, Miner, Pairing};
pub use score::{mine_from_features, score, target_rank, topk, Gallery, Queries, Scorer};
pub use shard::{tail_candidates, TailCandidates};
pub use strategy::{Candidates, Filters, Pick, Reference, Removed, Spec};
