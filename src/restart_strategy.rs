//! The restart budget: what to do about a failure, given the job's restart
//! strategy and the budget kept in its status. Pure: times are plain
//! milliseconds since the epoch. The semantics are Flink's restart
//! strategies': `fixedDelay` allows `attempts` restarts in all,
//! `failureRate` fails on the `maxFailuresPerInterval`-th failure within
//! `interval`, and `exponentialDelay` never gives up.

use weir_runtime::keygroup::mix64;
use weir_runtime::manifest::{ExponentialDelay, RestartStrategyKind};

use crate::crd::RestartStatus;

#[derive(Debug, Clone, PartialEq)]
pub enum RestartDecision {
    /// Recreate the failed pods at this time (ms since the epoch).
    RestartAt(u64),
    /// The budget is spent: the job fails.
    GiveUp { reason: String },
}

/// Counts one failure at `now` into `budget` and decides. `seed` varies
/// the jitter per job. Call it once per failover, never per pod.
pub fn record_failure(
    budget: &mut RestartStatus,
    strategy: &RestartStrategyKind,
    now: u64,
    seed: u64,
) -> RestartDecision {
    budget.failures = budget.failures.saturating_add(1);
    let previous = budget.failure_times_ms.last().copied();
    match strategy {
        RestartStrategyKind::None => {
            budget.failure_times_ms = vec![now];
            RestartDecision::GiveUp { reason: "restartStrategy is none".into() }
        }
        RestartStrategyKind::FixedDelay(f) => {
            budget.failure_times_ms = vec![now];
            if budget.failures > f.attempts {
                RestartDecision::GiveUp {
                    reason: format!(
                        "fixedDelay allows {} restart(s) and the job failed {} time(s)",
                        f.attempts, budget.failures
                    ),
                }
            } else {
                RestartDecision::RestartAt(now + f.delay.get().as_millis() as u64)
            }
        }
        RestartStrategyKind::FailureRate(f) => {
            let window = f.interval.get().as_millis() as u64;
            let keep = f.max_failures_per_interval.max(1) as usize;
            budget.failure_times_ms.push(now);
            let excess = budget.failure_times_ms.len().saturating_sub(keep);
            budget.failure_times_ms.drain(..excess);
            let oldest = budget.failure_times_ms.first().copied().unwrap_or(now);
            if budget.failure_times_ms.len() >= keep && now.saturating_sub(oldest) <= window {
                RestartDecision::GiveUp {
                    reason: format!(
                        "failureRate fails the job on its {} failure(s) within {}, and it failed {keep} time(s) since {}",
                        f.max_failures_per_interval,
                        f.interval,
                        crate::operator::plan::rfc3339(oldest)
                    ),
                }
            } else {
                RestartDecision::RestartAt(now + f.delay.get().as_millis() as u64)
            }
        }
        RestartStrategyKind::ExponentialDelay(e) => {
            let reset = e.reset_backoff_threshold.get().as_millis() as u64;
            budget.backoff_streak = match previous {
                Some(p) if now.saturating_sub(p) < reset => budget.backoff_streak.saturating_add(1),
                _ => 1,
            };
            budget.failure_times_ms = vec![now];
            RestartDecision::RestartAt(now + backoff_ms(e, budget.backoff_streak, seed ^ budget.failures as u64))
        }
    }
}

/// The delay before the next restart: `initialBackoff * multiplier^(k-1)`
/// for the k-th failure in a row (`streak`), capped at `maxBackoff`,
/// varied by up to `jitter`.
pub fn backoff_ms(e: &ExponentialDelay, streak: u32, seed: u64) -> u64 {
    let initial = e.initial_backoff.get().as_millis() as f64;
    let max = e.max_backoff.get().as_millis() as f64;
    let base = (initial * e.multiplier.powi(streak.saturating_sub(1).min(1024) as i32)).min(max);
    // A deterministic factor in [-1, 1] per job and failure, so replays of
    // a reconcile agree on the time.
    let unit = (mix64(seed) >> 11) as f64 / (1u64 << 53) as f64;
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

    /// Failures at the given times, one decision each.
    fn failures(strategy: &RestartStrategyKind, times: &[u64]) -> Vec<RestartDecision> {
        let mut budget = RestartStatus::default();
        times.iter().map(|t| record_failure(&mut budget, strategy, *t, 7)).collect()
    }

    fn gives_up(d: &RestartDecision) -> bool {
        matches!(d, RestartDecision::GiveUp { .. })
    }

    #[test]
    fn no_restart_gives_up_at_the_first_failure() {
        assert!(gives_up(&failures(&RestartStrategyKind::None, &[1000])[0]));
    }

    #[test]
    fn fixed_delay_gives_up_after_the_last_attempt() {
        let s = RestartStrategyKind::FixedDelay(FixedDelay { attempts: 2, delay: secs(5) });
        let d = failures(&s, &[1_000, 10_000, 20_000]);
        assert_eq!(d[..2], [RestartDecision::RestartAt(6_000), RestartDecision::RestartAt(15_000)]);
        let RestartDecision::GiveUp { reason } = &d[2] else { panic!("a third failure exceeds 2 attempts") };
        assert!(reason.contains("allows 2 restart(s)"), "{reason}");
    }

    #[test]
    fn fixed_delay_budgets_beyond_32_attempts_run_out_too() {
        let s = RestartStrategyKind::FixedDelay(FixedDelay { attempts: 50, delay: secs(1) });
        let d = failures(&s, &(0..51).map(|i| i * 60_000).collect::<Vec<_>>());
        assert!(d[..50].iter().all(|d| !gives_up(d)));
        assert!(gives_up(&d[50]), "the 51st failure spends a budget of 50");
    }

    #[test]
    fn failure_rate_fails_on_the_nth_failure_inside_the_interval() {
        let s = RestartStrategyKind::FailureRate(FailureRate {
            max_failures_per_interval: 3,
            interval: secs(60),
            delay: secs(1),
        });
        let d = failures(&s, &[0, 30_000, 50_000]);
        assert_eq!(d[..2], [RestartDecision::RestartAt(1_000), RestartDecision::RestartAt(31_000)]);
        assert!(gives_up(&d[2]), "three failures within 60 s with a limit of 3: {d:?}");
        // Spread out, the oldest has left the window each time.
        let d = failures(&s, &[0, 30_000, 61_000, 95_000, 130_000]);
        assert!(d.iter().all(|d| !gives_up(d)), "{d:?}");
    }

    #[test]
    fn failure_rate_keeps_no_more_times_than_it_counts() {
        let s = RestartStrategyKind::FailureRate(FailureRate {
            max_failures_per_interval: 2,
            interval: secs(1),
            delay: secs(1),
        });
        let mut budget = RestartStatus::default();
        for t in 0..100 {
            record_failure(&mut budget, &s, t * 10_000, 0);
        }
        assert_eq!(budget.failure_times_ms, [980_000, 990_000]);
        assert_eq!(budget.failures, 100);
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
        let s = RestartStrategyKind::ExponentialDelay(e);
        let times = [0, 1_000, 2_000, 3_000, 4_000, 5_000, 5_000 + 600_000];
        let delays: Vec<u64> = failures(&s, &times)
            .iter()
            .zip(times)
            .map(|(d, t)| match d {
                RestartDecision::RestartAt(at) => at - t,
                RestartDecision::GiveUp { .. } => panic!("exponentialDelay never gives up"),
            })
            .collect();
        // Ten quiet minutes later the streak starts over.
        assert_eq!(delays, [1000, 2000, 4000, 8000, 10_000, 10_000, 1000]);
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
        let samples: Vec<u64> = (0..200).map(|seed| backoff_ms(&e, 1, seed)).collect();
        assert!(samples.iter().all(|d| (8000..=12_000).contains(d)), "{samples:?}");
        assert!(samples.iter().any(|d| *d != 10_000), "jitter varies the delay");
    }

    #[tokio::test(start_paused = true)]
    async fn a_restart_is_due_once_the_paused_clock_reaches_it() {
        let s = RestartStrategyKind::FixedDelay(FixedDelay { attempts: 3, delay: secs(30) });
        let start = tokio::time::Instant::now();
        let failed_at = 1_000_000;
        let RestartDecision::RestartAt(at) = failures(&s, &[failed_at])[0] else { panic!() };
        let now = |t: tokio::time::Instant| failed_at + t.duration_since(start).as_millis() as u64;
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(now(tokio::time::Instant::now()) < at);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(now(tokio::time::Instant::now()) >= at);
    }
}
