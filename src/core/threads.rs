//! Worker thread pools: lazy, sized by argument or environment, rebuilt after `fork`.
//!
//! Spark forks Python workers from a parent that may already have used cxrlake. Threads do not
//! survive `fork`, so a pool created in the parent would deadlock in the child: every pool is
//! tagged with the pid that built it and rebuilt (the stale one leaked, never joined) when the
//! pid changes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rayon::{ThreadPool, ThreadPoolBuilder};

use crate::core::error::CoreError;

/// Upper bound on worker threads accepted from arguments or the environment.
pub const MAX_THREADS: usize = 1024;

/// Number of worker threads: `requested`, else env `CXRLAKE_NUM_THREADS`, else
/// `RAYON_NUM_THREADS`, else the number of available CPUs.
pub fn resolve_threads(requested: Option<usize>) -> Result<usize, CoreError> {
    if let Some(n) = requested {
        return validate(n, "threads");
    }
    for name in ["CXRLAKE_NUM_THREADS", "RAYON_NUM_THREADS"] {
        if let Ok(text) = std::env::var(name) {
            let text = text.trim();
            if text.is_empty() {
                continue;
            }
            let n = text.parse::<usize>().map_err(|_| {
                CoreError::InvalidArgument(format!(
                    "environment variable {name}={text:?} is not a positive integer"
                ))
            })?;
            return validate(n, name);
        }
    }
    Ok(std::thread::available_parallelism().map_or(1, |n| n.get()))
}

fn validate(n: usize, what: &str) -> Result<usize, CoreError> {
    if n == 0 || n > MAX_THREADS {
        return Err(CoreError::InvalidArgument(format!(
            "{what} must be between 1 and {MAX_THREADS}, got {n}"
        )));
    }
    Ok(n)
}

struct PoolCache {
    pid: u32,
    pools: HashMap<usize, Arc<ThreadPool>>,
}

static POOLS: Mutex<Option<PoolCache>> = Mutex::new(None);

/// The shared rayon pool with `threads` workers, built on first use in this process.
pub fn thread_pool(threads: usize) -> Result<Arc<ThreadPool>, CoreError> {
    let pid = std::process::id();
    let mut guard = POOLS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let cache = guard.get_or_insert_with(|| PoolCache {
        pid,
        pools: HashMap::new(),
    });
    if cache.pid != pid {
        // Forked child: the parent's worker threads do not exist here. Dropping the pools would
        // wait for them forever, so leak them and start afresh.
        let stale = std::mem::take(&mut cache.pools);
        std::mem::forget(stale);
        cache.pid = pid;
    }
    if let Some(pool) = cache.pools.get(&threads) {
        return Ok(pool.clone());
    }
    let nice = decode_niceness();
    let pool = ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("cxrlake-{i}"))
        .start_handler(move |_| lower_thread_priority(nice))
        .build()
        .map_err(|e| CoreError::InvalidArgument(format!("cannot start {threads} threads: {e}")))?;
    let pool = Arc::new(pool);
    cache.pools.insert(threads, pool.clone());
    Ok(pool)
}

/// Niceness added to decoding threads (env `CXRLAKE_DECODE_NICE`, 0..=19, default 0): with a
/// positive value, inference threads win the cores whenever both are runnable.
fn decode_niceness() -> i32 {
    std::env::var("CXRLAKE_DECODE_NICE")
        .ok()
        .and_then(|v| v.trim().parse::<i32>().ok())
        .map_or(0, |n| n.clamp(0, 19))
}

#[cfg(target_os = "linux")]
fn lower_thread_priority(nice: i32) {
    if nice > 0 {
        // On Linux, niceness is per thread: PRIO_PROCESS with the thread id affects this thread only.
        // SAFETY: plain syscalls on the calling thread; failure just leaves the priority unchanged.
        unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            let current = libc::getpriority(libc::PRIO_PROCESS, tid);
            libc::setpriority(libc::PRIO_PROCESS, tid, (current + nice).min(19));
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_thread_priority(_nice: i32) {}

/// The current process id (pools and model sessions are keyed by it).
pub fn current_pid() -> u32 {
    std::process::id()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_thread_counts_are_validated() {
        assert_eq!(resolve_threads(Some(3)).unwrap(), 3);
        assert!(resolve_threads(Some(0)).is_err());
        assert!(resolve_threads(Some(MAX_THREADS + 1)).is_err());
    }

    #[test]
    fn pools_are_shared_per_size() {
        let a = thread_pool(2).unwrap();
        let b = thread_pool(2).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.current_num_threads(), 2);
    }
}
