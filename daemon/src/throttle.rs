//! Warnings about input from outside (a peer, signald), at most one a
//! second of each kind: a flood of bad frames must not become a flood of
//! log lines. What is suppressed is counted and said with the next one.

use std::time::{Duration, Instant};

/// One kind of warning.
#[derive(Debug)]
pub struct Throttle {
    last: Option<Instant>,
    suppressed: u64,
}

const EVERY: Duration = Duration::from_secs(1);

impl Throttle {
    pub const fn new() -> Throttle {
        Throttle {
            last: None,
            suppressed: 0,
        }
    }

    /// Whether to log now; if so, how many were suppressed since the last.
    pub fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        match self.last {
            Some(t) if now.duration_since(t) < EVERY => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

impl Default for Throttle {
    fn default() -> Self {
        Self::new()
    }
}

/// At most `max` characters of outside text, escaped (no control bytes or
/// newlines reach the log), with its full length when cut.
pub fn excerpt(text: &str, max: usize) -> String {
    let mut out: String = text
        .chars()
        .take(max)
        .flat_map(char::escape_debug)
        .collect();
    if text.chars().count() > max {
        out.push_str(&format!("… ({} bytes)", text.len()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_a_second_and_the_rest_counted() {
        let mut t = Throttle::new();
        assert_eq!(t.allow(), Some(0));
        for _ in 0..5 {
            assert_eq!(t.allow(), None);
        }
        t.last = Some(Instant::now() - EVERY);
        assert_eq!(t.allow(), Some(5));
    }

    #[test]
    fn excerpts_are_short_and_escaped() {
        assert_eq!(excerpt("a\nb\x1b[31m", 10), "a\\nb\\u{1b}[31m");
        let long = "x".repeat(1000);
        let e = excerpt(&long, 8);
        assert!(
            e.starts_with("xxxxxxxx…") && e.ends_with("(1000 bytes)"),
            "{e}"
        );
    }
}
