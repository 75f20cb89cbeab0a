//! The global budget of bytes buffered for clients (`--max-buffered-bytes`):
//! what every outbox holds, plus what a connection handed to the WebSocket
//! library and the library has not yet written to the socket.
//!
//! The budget only counts; it never refuses a frame itself. The shared
//! policies (`directory::policy`) check [`Budget::over`] after queueing, at a point where it may take its
//! map lock, and then drops the clients holding the most until the total is
//! back under seven eighths of the budget. So one frame per concurrent push
//! (two worker threads: two frames) is the most the total can pass it by.
//!
//! It also decides when memory freed by buffers is worth handing back to
//! the OS: glibc keeps freed heap pages for reuse, so without a trim the
//! process would stay at its peak after an attack.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Bytes buffered for all clients, against a fixed budget.
#[derive(Debug)]
pub struct Budget {
    used: AtomicUsize,
    /// The highest `used` ever seen (a gauge in `/metrics`).
    peak: AtomicUsize,
    /// The highest `used` since the last trim.
    since_trim: AtomicUsize,
    max: usize,
}

/// Freed buffers below this are left to the allocator: a trim walks every
/// arena and is only worth it after a real burst (one slow reader's worth).
const TRIM_AFTER: usize = 1024 * 1024;

impl Budget {
    /// The budget, in bytes.
    pub fn max(&self) -> usize {
        self.max
    }

    pub fn new(max: usize) -> Budget {
        Budget {
            used: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            since_trim: AtomicUsize::new(0),
            max,
        }
    }

    /// Counts `n` more bytes.
    pub fn add(&self, n: usize) {
        let now = self.used.fetch_add(n, Ordering::Relaxed) + n;
        // Loads first: the common case writes nothing shared.
        if now > self.since_trim.load(Ordering::Relaxed) {
            self.since_trim.fetch_max(now, Ordering::Relaxed);
            if now > self.peak.load(Ordering::Relaxed) {
                self.peak.fetch_max(now, Ordering::Relaxed);
            }
        }
    }

    /// Counts `n` bytes as freed.
    pub fn sub(&self, n: usize) {
        if n > 0 {
            self.used.fetch_sub(n, Ordering::Relaxed);
        }
    }

    /// Whether the total has passed the budget.
    pub fn over(&self) -> bool {
        self.used() > self.max
    }

    /// What making room brings the total back to.
    pub fn target(&self) -> usize {
        self.max / 8 * 7
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    /// True at most once per burst: when the total once reached
    /// [`TRIM_AFTER`] and has since fallen to a quarter of that high mark.
    pub fn should_trim(&self) -> bool {
        let high = self.since_trim.load(Ordering::Relaxed);
        let used = self.used();
        if high >= TRIM_AFTER && used <= high / 4 {
            self.since_trim.store(used, Ordering::Relaxed);
            return true;
        }
        false
    }
}

/// Hands freed heap pages back to the OS (glibc only; elsewhere nothing).
pub fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_peaks_and_trims_once_per_burst() {
        let b = Budget::new(16 * 1024 * 1024);
        b.add(10 * 1024 * 1024);
        assert!(!b.over());
        assert!(!b.should_trim(), "still holding it");
        b.add(7 * 1024 * 1024);
        assert!(b.over());
        b.sub(17 * 1024 * 1024);
        assert_eq!(b.used(), 0);
        assert_eq!(b.peak(), 17 * 1024 * 1024);
        assert!(b.should_trim());
        assert!(!b.should_trim(), "once");
        b.add(1024);
        b.sub(1024);
        assert!(!b.should_trim(), "a small burst is left alone");
    }
}
