//! What to do about a failed job pod, given the job's restart strategy and
//! its recent failures. Pure: times are plain milliseconds since the epoch.

use weir_runtime::keygroup::mix64;
use weir_runtime::manifest::{ExponentialDelay, RestartStrategyKind};

#[derive(Debug, Clone, PartialEq)]
pub enum RestartDecision {
    /// Recreate the failed pods at this time (ms since the epoch).
    RestartAt(u64),
    /// The budget is spent: the job fails.
    GiveUp { reason: String },
}

/// `failures` are the times of failures so far, oldest first, including
/// the one being decided about; `seed` varies the jitter per job.
pub fn next_restart(strategy: &RestartStrategyKind, failures: &[u64], now: u64, seed: u64) -> RestartDecision {
    let n = failures.len() as u64;
    match strategy {
        RestartStrategyKind::None => RestartDecision::GiveUp { reason: "restartStrategy is none".into() },
        RestartStrategyKind::FixedDelay(f) => {
            if n > f.attempts as u64 {
                RestartDecision::GiveUp {
                    reason: format!("fixedDelay allows {} restarts and the job failed {n} times", f.attempts),
                }
            } else {
                RestartDecision::RestartAt(now + f.delay.get().as_millis() as u64)
            }
        }
        RestartStrategyKind::FailureRate(f) => {
            let window = f.interval.get().as_millis() as u64;
            let recent = failures.iter().filter(|t| now.saturating_sub(**t) < window).count() as u32;
            if recent > f.max_failures_per_interval {
                RestartDecision::GiveUp {
                    reason: format!(
                        "failureRate allows {} failures per {} and the job failed {recent} times",
                        f.max_failures_per_interval, f.interval
                    ),
                }
            } else {
                RestartDecision::RestartAt(now + f.delay.get().as_millis() as u64)
            }
        }
        RestartStrategyKind::ExponentialDelay(e) => RestartDecision::RestartAt(now + backoff_ms(e, failures, seed)),
    }
}

/// The delay before the next restart: `initialBackoff * multiplier^(k-1)`
/// for the k-th failure since the job last ran for `resetBackoffThreshold`
/// without failing, capped at `maxBackoff`, varied by up to `jitter`.
pub fn backoff_ms(e: &ExponentialDelay, failures: &[u64], seed: u64) -> u64 {
    let reset = e.reset_backoff_threshold.get().as_millis() as u64;
    let mut streak = 0u32;
    let mut previous: Option<u64> = None;
    for &t in failures {
        streak = match previous {
            Some(p) if t.saturating_sub(p) >= reset => 1,
            _ => streak + 1,
        };
        previous = Some(t);
    }
    let initial = e.initial_backoff.get().as_millis() as f64;
    let max = e.max_backoff.get().as_millis() as f64;
    let base = (initial * e.multiplier.powi(streak.saturating_sub(1) as i32)).min(max);
    // A deterministic factor in [-1, 1] per job and failure, so replays of
    // a reconcile agree on the time.
    let unit = (mix64(seed ^ failures.len() as u64) >> 11) as f64 / (1u64 << 53) as f64;
    let jittered = base * (1.0 + e.jitter * (2.0 * unit - 1.0));
    jittered.clamp(0.0, max.max(initial)) as u64
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use weir_runtime::manifest::{FailureRate, FixedDelay, HumanDuration};

    use super::*;

    fn secs(s: u64) -> HumanDuration {
        HumanDuration(Duration::from_secs(s))
    }

    #[test]
    fn no_restart_gives_up_at_the_first_failure() {
        assert!(matches!(next_restart(&RestartStrategyKind::None, &[1000], 1000, 0), RestartDecision::GiveUp { .. }));
    }

    #[test]
    fn fixed_delay_gives_up_after_the_last_attempt() {
        let s = RestartStrategyKind::FixedDelay(FixedDelay { attempts: 2, delay: secs(5) });
        assert_eq!(next_restart(&s, &[0], 1_000, 0), RestartDecision::RestartAt(6_000));
        assert_eq!(next_restart(&s, &[0, 10_000], 10_000, 0), RestartDecision::RestartAt(15_000));
        let RestartDecision::GiveUp { reason } = next_restart(&s, &[0, 10_000, 20_000], 20_000, 0) else {
            panic!("a third failure exceeds 2 attempts")
        };
        assert!(reason.contains("allows 2 restarts"), "{reason}");
    }

    #[test]
    fn failure_rate_counts_only_failures_inside_the_interval() {
        let s = RestartStrategyKind::FailureRate(FailureRate {
            max_failures_per_interval: 2,
            interval: secs(60),
            delay: secs(1),
        });
        assert_eq!(next_restart(&s, &[0, 30_000], 30_000, 0), RestartDecision::RestartAt(31_000));
        assert!(matches!(next_restart(&s, &[0, 30_000, 50_000], 50_000, 0), RestartDecision::GiveUp { .. }));
        // The first failure has left the window.
        assert_eq!(next_restart(&s, &[0, 30_000, 70_000], 70_000, 0), RestartDecision::RestartAt(71_000));
    }

    #[test]
    fn exponential_delay_grows_caps_and_resets_after_a_quiet_period() {
        let e = ExponentialDelay {
            initial_backoff: secs(1),
            max_backoff: secs(10),
            multiplier: 2.0,
            reset_backoff_threshold: secs(600),
            jitter: 0.0,
        };
        let delays: Vec<u64> =
            (1..=6).map(|k| backoff_ms(&e, &(0..k).map(|i| i * 1000).collect::<Vec<_>>(), 0)).collect();
        assert_eq!(delays, [1000, 2000, 4000, 8000, 10_000, 10_000]);
        // Ten quiet minutes later the streak starts over.
        assert_eq!(backoff_ms(&e, &[0, 1000, 2000, 2000 + 600_000], 0), 1000);
    }

    #[test]
    fn exponential_jitter_stays_within_its_fraction() {
        let e = ExponentialDelay {
            initial_backoff: secs(10),
            max_backoff: secs(100),
            multiplier: 1.0,
            reset_backoff_threshold: secs(3600),
            jitter: 0.2,
        };
        let samples: Vec<u64> = (0..200).map(|seed| backoff_ms(&e, &[0], seed)).collect();
        assert!(samples.iter().all(|d| (8000..=12_000).contains(d)), "{samples:?}");
        assert!(samples.iter().any(|d| *d != 10_000), "jitter varies the delay");
    }

    #[tokio::test(start_paused = true)]
    async fn a_restart_is_due_once_the_paused_clock_reaches_it() {
        let s = RestartStrategyKind::FixedDelay(FixedDelay { attempts: 3, delay: secs(30) });
        let start = tokio::time::Instant::now();
        let failed_at = 1_000_000;
        let RestartDecision::RestartAt(at) = next_restart(&s, &[failed_at], failed_at, 0) else { panic!() };
        let now = |t: tokio::time::Instant| failed_at + t.duration_since(start).as_millis() as u64;
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(now(tokio::time::Instant::now()) < at);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(now(tokio::time::Instant::now()) >= at);
    }
}
