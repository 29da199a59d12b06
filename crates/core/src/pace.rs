//! Bandwidth limit of one transfer session (`Config::max_rate`, `skiff --limit-rate`).
//!
//! Owns: a GCRA-style pacer (the "theoretical arrival time" of the next byte), allowing a
//! burst of [`BURST`] of traffic ahead of the rate.
//! Must not: sleep itself — callers ask [`Pacer::hold`] and wait in their own `select!`,
//! so pausing, cancelling and control messages are never delayed by the limit.

use std::time::Duration;

use tokio::time::Instant;

/// Lowest limit a shell should accept: at 1 MiB chunks, slower rates approach the
/// peers' stall timeouts (30–60 s without a chunk).
pub const MIN_RATE: u64 = 64 * 1024;

/// How far ahead of the rate a session may run (absorbs scheduling jitter).
pub const BURST: Duration = Duration::from_millis(100);

/// Paces bytes to at most `rate` per second on average.
#[derive(Debug)]
pub struct Pacer {
    /// Bytes per second; `None`: no limit.
    rate: Option<u64>,
    /// When the bytes recorded so far would have been sent at exactly `rate`.
    due: Instant,
}

impl Pacer {
    pub fn new(rate: Option<u64>) -> Self {
        Self {
            rate: rate.filter(|&r| r > 0),
            due: Instant::now(),
        }
    }

    /// `n` bytes went out (or came in) now.
    pub fn record(&mut self, n: u64) {
        if let Some(rate) = self.rate {
            let cost = Duration::from_secs_f64(n as f64 / rate as f64);
            // Idle time earns no more than the burst.
            self.due = self.due.max(Instant::now()) + cost;
        }
    }

    /// `Some(t)`: wait until `t` before the next bytes; `None`: go ahead.
    pub fn hold(&self) -> Option<Instant> {
        self.rate?;
        let ready = self.due.checked_sub(BURST).unwrap_or(self.due);
        (ready > Instant::now()).then_some(ready)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn unlimited_never_holds() {
        let mut p = Pacer::new(None);
        p.record(u64::MAX / 2);
        assert_eq!(p.hold(), None);
        let mut p = Pacer::new(Some(0));
        p.record(1 << 40);
        assert_eq!(p.hold(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn holds_to_the_rate_after_the_burst() {
        let mut p = Pacer::new(Some(1_000_000));
        // 50 ms worth: within the burst.
        p.record(50_000);
        assert_eq!(p.hold(), None);
        // 1 s worth in all: wait until 0.9 s from now (1 s minus the burst).
        p.record(950_000);
        let t = p.hold().unwrap();
        let wait = t - Instant::now();
        assert!(
            wait > Duration::from_millis(890) && wait <= Duration::from_millis(900),
            "{wait:?}"
        );
        tokio::time::sleep_until(t).await;
        assert_eq!(p.hold(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn averages_the_rate_over_many_records() {
        let rate = 8 * 1024 * 1024;
        let mut p = Pacer::new(Some(rate));
        let start = Instant::now();
        let mut sent = 0u64;
        while sent < 4 * rate {
            if let Some(t) = p.hold() {
                tokio::time::sleep_until(t).await;
            }
            p.record(64 * 1024);
            sent += 64 * 1024;
        }
        let took = start.elapsed().as_secs_f64();
        assert!((3.8..=4.0).contains(&took), "4 s of data took {took} s");
    }

    #[tokio::test(start_paused = true)]
    async fn idle_time_earns_at_most_the_burst() {
        let mut p = Pacer::new(Some(1_000_000));
        tokio::time::sleep(Duration::from_secs(10)).await;
        p.record(150_000);
        // 150 ms of data after 10 s idle: 50 ms beyond the burst.
        let wait = p.hold().unwrap() - Instant::now();
        assert!(
            wait > Duration::from_millis(45) && wait <= Duration::from_millis(50),
            "{wait:?}"
        );
    }
}
