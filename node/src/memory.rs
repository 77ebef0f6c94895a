//! Gives the heap memory a burst freed back to the system. glibc keeps freed memory in
//! its arenas for reuse and returns only the top of the heap on its own, so after a
//! burst of concurrent pulls (50 clients at once: about 230 MB resident) a node stayed
//! at that size long after the requests ended, though its live heap was about 40 MB.
//! Every [`TRIM_EVERY`] this task asks glibc to release the free pages of every arena
//! (`malloc_trim`), which takes the node back near its live size. Before any thread
//! starts, the number of arenas is capped as well.

use std::time::Duration;

use tokio::sync::watch;

/// Time between two trims.
pub const TRIM_EVERY: Duration = Duration::from_secs(10);

/// Trims the heap every [`TRIM_EVERY`] until `shutdown` turns true.
pub async fn trim_periodically(mut shutdown: watch::Receiver<bool>) {
    let mut ticks = tokio::time::interval(TRIM_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        // The walk over the arenas takes each arena's lock; off the async workers.
        let _ = tokio::task::spawn_blocking(trim).await;
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim() {
    // SAFETY: malloc_trim only releases free memory of the allocator's own arenas; it
    // is thread-safe and touches no live allocation.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

/// Malloc arenas a serving node may use unless `MALLOC_ARENA_MAX` says otherwise.
const MALLOC_ARENAS_MAX: i32 = 2;

/// Caps glibc's malloc arenas, before any thread starts. glibc gives threads up to
/// eight arenas per core, and each keeps the memory freed into it. The metadata
/// store's page cache is allocated and evicted on whichever blocking thread runs a
/// transaction, so under write load every arena ends up holding its own share of
/// the cache's churn and resident memory keeps climbing long after the cache is
/// full (with an 8 MiB cache: 95 MB after 95,000 tag writes and still growing; with
/// two arenas it levels off at 67 MB, near the live heap).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn limit_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    // SAFETY: mallopt only changes allocator tuning; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS_MAX);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn limit_malloc_arenas() {}
