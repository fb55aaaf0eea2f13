//! The thread pool every parallel core call runs on.
//!
//! Size: `set_num_threads(n)`, else the `QURE_NUM_THREADS` environment variable, else the number
//! of available cores. Results never depend on the size: work is split by query, never by a
//! reduction whose order could change.

use std::sync::{Arc, RwLock};

use rayon::{ThreadPool, ThreadPoolBuilder};

use crate::error::{QureError, Result};

static POOL: RwLock<Option<Arc<ThreadPool>>> = RwLock::new(None);

/// Parses a `QURE_NUM_THREADS` value: a positive integer, else `None`.
pub fn parse_num_threads(value: &str) -> Option<usize> {
    value.trim().parse::<usize>().ok().filter(|&n| n >= 1)
}

/// The pool size used when none was set: `QURE_NUM_THREADS` if valid, else the core count.
pub fn default_num_threads() -> usize {
    std::env::var("QURE_NUM_THREADS")
        .ok()
        .and_then(|v| parse_num_threads(&v))
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

fn build(n: usize) -> Result<Arc<ThreadPool>> {
    ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(|i| format!("qure-{i}"))
        .build()
        .map(Arc::new)
        .map_err(|e| QureError::invalid(format!("could not start {n} threads: {e}")))
}

/// Sets the number of threads for later calls (`n >= 1`).
pub fn set_num_threads(n: usize) -> Result<()> {
    if n == 0 {
        return Err(QureError::invalid("the number of threads must be at least 1"));
    }
    let pool = build(n)?;
    *POOL.write().unwrap_or_else(|e| e.into_inner()) = Some(pool);
    Ok(())
}

/// The number of threads parallel calls use.
pub fn num_threads() -> usize {
    pool().current_num_threads()
}

fn pool() -> Arc<ThreadPool> {
    if let Some(pool) = POOL.read().unwrap_or_else(|e| e.into_inner()).as_ref() {
        return Arc::clone(pool);
    }
    let mut slot = POOL.write().unwrap_or_else(|e| e.into_inner());
    if let Some(pool) = slot.as_ref() {
        return Arc::clone(pool);
    }
    let n = default_num_threads();
    let pool = build(n).unwrap_or_else(|_| build(1).expect("a one-thread pool always starts"));
    *slot = Some(Arc::clone(&pool));
    pool
}

/// Runs `f` on qure's pool (directly when already on one of its threads).
pub fn install<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    pool().install(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_thread_counts() {
        assert_eq!(parse_num_threads("4"), Some(4));
        assert_eq!(parse_num_threads(" 2 "), Some(2));
        assert_eq!(parse_num_threads("0"), None);
        assert_eq!(parse_num_threads("-1"), None);
        assert_eq!(parse_num_threads("many"), None);
    }

    #[test]
    fn zero_threads_is_refused() {
        assert!(set_num_threads(0).is_err());
    }
}
