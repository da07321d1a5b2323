//! Retrying what may fail for a while (a server restarting, a connection
//! lost): growing delays, a bounded number of attempts, each retry counted
//! in `JobMetrics::sink_retries`.

use std::time::Duration;

use crate::metrics::JobMetrics;

/// Attempts a sink makes before its subtask fails (the job then restarts
/// under its restart strategy).
pub const SINK_ATTEMPTS: u32 = 6;

pub struct Backoff {
    attempt: u32,
    attempts: u32,
    delay: Duration,
}

impl Backoff {
    /// 200 ms before the second attempt, doubling up to 5 s.
    pub fn new(attempts: u32) -> Backoff {
        Backoff { attempt: 1, attempts, delay: Duration::from_millis(200) }
    }

    /// The attempt under way, from 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The wait before the next attempt, or `None` if the one that just
    /// failed was the last.
    pub fn next_delay(&self) -> Option<Duration> {
        (self.attempt < self.attempts).then_some(self.delay)
    }

    /// Counts a retry and waits for the next attempt.
    pub async fn wait(&mut self, metrics: &JobMetrics) {
        JobMetrics::add(&metrics.sink_retries, 1);
        tokio::time::sleep(self.delay).await;
        self.delay = (self.delay * 2).min(Duration::from_secs(5));
        self.attempt += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn delays_double_up_to_five_seconds_and_stop_after_the_last_attempt() {
        let metrics = JobMetrics::default();
        let mut backoff = Backoff::new(7);
        let mut delays = Vec::new();
        while let Some(delay) = backoff.next_delay() {
            delays.push(delay.as_millis());
            backoff.wait(&metrics).await;
        }
        assert_eq!(delays, vec![200, 400, 800, 1600, 3200, 5000]);
        assert_eq!(backoff.attempt(), 7);
        assert_eq!(JobMetrics::get(&metrics.sink_retries), 6);
    }
}
