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
//! the OS: the allocator keeps freed pages for reuse (jemalloc for about
//! ten seconds, and only while something allocates), so without a trim
//! the process could stay at its peak after an attack.

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

/// Hands freed heap pages back to the OS at once (jemalloc would in
/// about ten seconds, and only while something allocates).
pub fn trim_heap() {
    let rc = purge();
    debug_assert_eq!(rc, 0, "jemalloc refused the purge");
}

/// Purges every arena's unused pages; jemalloc's answer (0: done).
fn purge() -> libc::c_int {
    // 4096 is jemalloc's MALLCTL_ARENAS_ALL.
    let name = c"arena.4096.purge";
    // SAFETY: a void control (no old or new value) by a NUL-terminated
    // static name.
    unsafe {
        tikv_jemalloc_sys::mallctl(
            name.as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Resident bytes of this process.
    fn rss() -> usize {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        let pages: usize = statm.split(' ').nth(1).unwrap().parse().unwrap();
        pages * 4096
    }

    #[test]
    fn a_trim_gives_freed_pages_back_at_once() {
        // 64 MiB in frame-sized pieces, touched, then freed.
        let chunks: Vec<Vec<u8>> = (0..16 * 1024).map(|i| vec![i as u8; 4096]).collect();
        let full = rss();
        drop(chunks);
        assert_eq!(purge(), 0, "jemalloc knows the control");
        let after = rss();
        assert!(
            after + 32 * 1024 * 1024 < full,
            "RSS {full} bytes with the pieces, {after} after the trim"
        );
    }

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
