//! Losing workers that stopped talking: a worker silent for longer than the
//! heartbeat timeout is dropped from the registry, which fails the attempt
//! it served (and closes its connection, so it fences itself off).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::registry::Shared;

pub(super) async fn watch_heartbeats(shared: Arc<Shared>, timeout: Duration) {
    let mut tick = tokio::time::interval((timeout / 4).max(Duration::from_millis(50)));
    loop {
        tick.tick().await;
        let seen: Vec<(u64, Instant)> =
            shared.workers.lock().map(|w| w.iter().map(|(id, c)| (*id, c.last_seen)).collect()).unwrap_or_default();
        for id in silent(&seen, Instant::now(), timeout) {
            shared.lose_worker(id, &format!("no heartbeat for {timeout:?}")).await;
        }
    }
}

/// Workers (by registry id) last heard from longer than `timeout` before `now`.
fn silent(last_seen: &[(u64, Instant)], now: Instant, timeout: Duration) -> Vec<u64> {
    last_seen.iter().filter(|(_, seen)| now.saturating_duration_since(*seen) > timeout).map(|(id, _)| *id).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_workers_silent_for_longer_than_the_timeout_are_lost() {
        let now = Instant::now();
        let seen = [(1, now - Duration::from_millis(900)), (2, now - Duration::from_millis(1100)), (3, now)];
        assert_eq!(silent(&seen, now, Duration::from_secs(1)), vec![2]);
    }
}
