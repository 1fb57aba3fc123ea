//! Idle timeouts: a timer that starts over whenever a body moves.
//!
//! A 200 MiB upload to a slow app can take minutes and still be healthy;
//! what must not last is silence. Timeouts for the app's answer therefore
//! count from the last moment the request body made progress.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// When something last made progress; clones share the same clock.
#[derive(Debug, Clone)]
pub struct Progress {
    origin: Instant,
    /// Milliseconds after `origin` of the last progress.
    last: Arc<AtomicU64>,
}

impl Default for Progress {
    fn default() -> Self {
        Progress::new()
    }
}

impl Progress {
    /// Starts the clock now.
    pub fn new() -> Self {
        Progress {
            origin: Instant::now(),
            last: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Records progress now.
    pub fn touch(&self) {
        let elapsed = self.origin.elapsed().as_millis() as u64;
        self.last.fetch_max(elapsed, Ordering::Relaxed);
    }

    /// The last progress.
    pub fn last(&self) -> Instant {
        self.origin + Duration::from_millis(self.last.load(Ordering::Relaxed))
    }

    /// Resolves once nothing progressed for `limit`.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only waits.
    pub async fn idle_for(&self, limit: Duration) {
        loop {
            let deadline = self.last() + limit;
            tokio::time::sleep_until(deadline).await;
            if self.last() + limit <= Instant::now() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_timer_starts_over_with_each_progress() {
        let progress = Progress::new();
        let waiting = tokio::spawn({
            let progress = progress.clone();
            async move {
                progress.idle_for(Duration::from_secs(10)).await;
                Instant::now()
            }
        });
        let started = Instant::now();
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(6)).await;
            progress.touch();
        }
        let fired = waiting.await.unwrap();
        assert_eq!(fired - started, Duration::from_secs(28));
    }
}
