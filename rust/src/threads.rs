//! The thread pool every parallel core call runs on.
//!
//! Size: `set_num_threads(n)`, else the `QURE_NUM_THREADS` environment variable, else the number
//! of available cores; at most [`MAX_THREADS`]. Results never depend on the size: work is split
//! by query, never by a reduction whose order could change.

use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;

use rayon::{ThreadPool, ThreadPoolBuilder};

use crate::error::{QureError, Result};

static POOL: RwLock<Option<Arc<Pool>>> = RwLock::new(None);

/// A rayon pool with the handles of its threads. Dropping it waits until they have exited, so
/// replacing the pool never leaves an old set of threads (and their stacks) winding down while
/// later work allocates: in a capped address space that could starve an allocation, and an
/// allocation that fails aborts.
struct Pool {
    pool: Option<ThreadPool>,
    threads: Vec<JoinHandle<()>>,
}

impl Pool {
    fn get(&self) -> &ThreadPool {
        self.pool.as_ref().expect("the pool lives until Pool is dropped")
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let own_thread = self.pool.as_ref().is_some_and(|p| p.current_thread_index().is_some());
        drop(self.pool.take()); // tells the threads to stop
        if !own_thread {
            // (A thread cannot wait for itself; from one of the pool's threads, they detach.)
            for handle in self.threads.drain(..) {
                let _ = handle.join();
            }
        }
    }
}

/// The most threads qure starts. Results never depend on the count, and past a few threads per
/// core more only cost memory and start-up time; a bound keeps a typo (`100000`) from trying to
/// start that many threads.
pub const MAX_THREADS: usize = 1024;

/// Parses a `QURE_NUM_THREADS` value: an integer in `1..=MAX_THREADS`, else `None`.
pub fn parse_num_threads(value: &str) -> Option<usize> {
    value.trim().parse::<usize>().ok().filter(|&n| (1..=MAX_THREADS).contains(&n))
}

/// The pool size used when none was set: `QURE_NUM_THREADS` if valid, else the core count
/// (at most `MAX_THREADS`).
pub fn default_num_threads() -> usize {
    std::env::var("QURE_NUM_THREADS").ok().and_then(|v| parse_num_threads(&v)).unwrap_or_else(
        || std::thread::available_parallelism().map_or(1, |n| n.get()).min(MAX_THREADS),
    )
}

/// Stack size of qure's threads. Their work keeps its buffers on the heap and recurses only as
/// deep as a sort (about log2 n frames), so 1 MiB is ample; half the usual 2 MiB keeps a large
/// pool (up to `MAX_THREADS`) light on address space where that is capped (`ulimit -v`).
const STACK_BYTES: usize = 1 << 20;

/// Address space asked for, and given back, before a pool of `n` threads starts: room for
/// their stacks and as much again for what each thread allocates when it starts (thread-local
/// state, a malloc arena's first block), plus a fixed margin. A thread that starts and then
/// cannot allocate its thread-local state aborts the process (glibc cannot report it), so
/// where the address space is capped (`ulimit -v`) a pool that would not fit is refused before
/// any thread starts. The reservation is only address space: nothing is touched.
fn headroom(n: usize) -> usize {
    n.saturating_mul(2 * STACK_BYTES).saturating_add(64 << 20)
}

fn build(n: usize) -> Result<Arc<Pool>> {
    let room = headroom(n);
    let mut probe: Vec<u8> = Vec::new();
    if probe.try_reserve_exact(room).is_err() {
        return Err(QureError::invalid(format!(
            "could not start {n} threads: {} MiB of address space for their stacks is not \
             available (is it capped, e.g. by ulimit -v?)",
            room >> 20
        )));
    }
    drop(probe);
    let mut started = Vec::new();
    let built = ThreadPoolBuilder::new()
        .num_threads(n)
        .spawn_handler(|thread| {
            let handle = std::thread::Builder::new()
                .name(format!("qure-{}", thread.index()))
                .stack_size(STACK_BYTES)
                .spawn(|| thread.run())?;
            started.push(handle);
            Ok(())
        })
        .build();
    match built {
        Ok(pool) => Ok(Arc::new(Pool { pool: Some(pool), threads: started })),
        Err(e) => {
            // The threads that did start have been told to stop: wait until they have, so a
            // failed start leaves nothing behind (in a capped address space, their stacks
            // would starve the next allocation).
            for handle in started {
                let _ = handle.join();
            }
            Err(QureError::invalid(format!("could not start {n} threads: {e}")))
        }
    }
}

/// Sets the number of threads for later calls (`1 <= n <= MAX_THREADS`).
pub fn set_num_threads(n: usize) -> Result<()> {
    if n == 0 {
        return Err(QureError::invalid("the number of threads must be at least 1"));
    }
    if n > MAX_THREADS {
        return Err(QureError::invalid(format!(
            "the number of threads must be at most {MAX_THREADS}, got {n}"
        )));
    }
    let pool = build(n)?;
    let old = POOL.write().unwrap_or_else(|e| e.into_inner()).replace(pool);
    drop(old); // outside the lock: waits for the old threads unless a call still uses them
    Ok(())
}

/// The number of threads parallel calls use.
pub fn num_threads() -> usize {
    pool().get().current_num_threads()
}

fn pool() -> Arc<Pool> {
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
    pool().get().install(f)
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
        assert_eq!(parse_num_threads("1024"), Some(MAX_THREADS));
        assert_eq!(parse_num_threads("1025"), None);
        assert_eq!(parse_num_threads("100000"), None);
    }

    #[test]
    fn thread_counts_outside_the_bounds_are_refused() {
        assert!(set_num_threads(0).is_err());
        // Refused before any thread starts: returns at once.
        let err = set_num_threads(100_000).unwrap_err();
        assert!(err.to_string().contains("at most 1024"), "{err}");
        assert!(set_num_threads(usize::MAX).is_err());
    }

    #[test]
    fn pools_can_be_replaced_again_and_again() {
        let old = build(3).unwrap();
        let weak = Arc::downgrade(&old);
        assert_eq!(old.get().install(rayon::current_num_threads), 3);
        drop(old);
        assert!(weak.upgrade().is_none());
        // Dropping joined the threads: a pool built and dropped many times leaves none behind.
        for n in [1, 2, 5, 2] {
            let pool = build(n).unwrap();
            assert_eq!(pool.get().install(rayon::current_num_threads), n);
        }
    }
}
