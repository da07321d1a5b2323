//! Savepoints taken in the background: `POST /v1/savepoint-triggers`
//! answers at once with an id, and `GET /v1/savepoint-triggers/<id>` tells
//! how it went, as Flink's REST API does. A caller (the operator) never
//! holds a connection, or a reconcile, open for the length of a checkpoint.
//!
//! A stop-with-savepoint ends the coordinator, and with it the answer to
//! `GET`; so it is also written to the container's termination message
//! (`/dev/termination-log`), where the operator reads it off the ended pod.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::Serialize;

/// How many finished triggers are remembered for `GET`: the operator looks
/// within seconds, so a handful is plenty and memory stays bounded.
const KEEP_FINISHED: usize = 32;

/// Where a trigger stands, as `GET /v1/savepoint-triggers/<id>` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "status")]
pub enum TriggerState {
    InProgress,
    #[serde(rename_all = "camelCase")]
    Completed {
        path: String,
        checkpoint: u64,
    },
    Failed {
        reason: String,
    },
}

/// The triggers of this coordinator's life, by id.
#[derive(Debug, Default)]
pub struct Triggers {
    inner: Mutex<TriggersInner>,
}

#[derive(Debug, Default)]
struct TriggersInner {
    next: u64,
    /// By sequence number: the full id, and where it stands.
    states: BTreeMap<u64, (String, TriggerState)>,
}

impl Triggers {
    /// A new trigger, in progress. Its id (`<ms>-<n>`) says when it began,
    /// so a restarted coordinator, counting from 1 again, never answers for
    /// an id an earlier one handed out.
    pub fn start(&self, now_ms: u64) -> String {
        let Ok(mut t) = self.inner.lock() else { return format!("{now_ms}-0") };
        t.next += 1;
        let n = t.next;
        let id = format!("{now_ms}-{n}");
        t.states.insert(n, (id.clone(), TriggerState::InProgress));
        // Drop the oldest finished ones beyond the bound; running ones stay.
        while t.states.len() > KEEP_FINISHED {
            let Some(oldest) =
                t.states.iter().find(|(_, (_, s))| !matches!(s, TriggerState::InProgress)).map(|(n, _)| *n)
            else {
                break;
            };
            t.states.remove(&oldest);
        }
        id
    }

    pub fn finish(&self, id: &str, state: TriggerState) {
        if let (Some(n), Ok(mut t)) = (Self::number(id), self.inner.lock()) {
            if let Some(entry) = t.states.get_mut(&n).filter(|(known, _)| known == id) {
                entry.1 = state;
            }
        }
    }

    pub fn get(&self, id: &str) -> Option<TriggerState> {
        let n = Self::number(id)?;
        let t = self.inner.lock().ok()?;
        t.states.get(&n).filter(|(known, _)| known == id).map(|(_, s)| s.clone())
    }

    fn number(id: &str) -> Option<u64> {
        id.rsplit_once('-')?.1.parse().ok()
    }
}

/// What a stopped coordinator leaves as its termination message, and the
/// operator parses back: `stopped with a savepoint at <path> (checkpoint <id>)`.
pub fn stop_message(path: &str, checkpoint: u64) -> String {
    format!("stopped with a savepoint at {path} (checkpoint {checkpoint})")
}

/// The savepoint path and checkpoint in a [`stop_message`], wherever it
/// sits in the text (the message may end with log lines).
pub fn parse_stop_message(text: &str) -> Option<(String, u64)> {
    const HEAD: &str = "stopped with a savepoint at ";
    let rest = &text[text.rfind(HEAD)? + HEAD.len()..];
    let (path, rest) = rest.split_once(" (checkpoint ")?;
    let id = rest.split_once(')')?.0.parse().ok()?;
    Some((path.to_string(), id))
}

/// Writes the termination message where a kubelet looks for it; outside a
/// pod there is no such file, and nothing is written.
pub fn write_termination_message(text: &str) {
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new().write(true).truncate(true).open("/dev/termination-log") {
        let _ = f.write_all(text.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trigger_is_in_progress_until_finished_and_unknown_ids_are_none() {
        let t = Triggers::default();
        let id = t.start(1_000);
        assert_eq!(t.get(&id), Some(TriggerState::InProgress));
        t.finish(&id, TriggerState::Completed { path: "file:///sp".into(), checkpoint: 7 });
        assert_eq!(t.get(&id), Some(TriggerState::Completed { path: "file:///sp".into(), checkpoint: 7 }));
        assert_eq!(t.get("1000-99"), None);
        assert_eq!(t.get("999-1"), None, "the same number from another coordinator's life");
        assert_eq!(t.get("garbage"), None);
    }

    #[test]
    fn finished_triggers_are_forgotten_beyond_the_bound_but_running_ones_are_kept() {
        let t = Triggers::default();
        let running = t.start(1);
        let mut ids = Vec::new();
        for _ in 0..KEEP_FINISHED + 5 {
            let id = t.start(1);
            t.finish(&id, TriggerState::Failed { reason: "x".into() });
            ids.push(id);
        }
        assert_eq!(t.get(&running), Some(TriggerState::InProgress));
        assert_eq!(t.get(&ids[0]), None, "the oldest finished one is forgotten");
        assert!(t.get(ids.last().unwrap()).is_some());
    }

    #[test]
    fn the_stop_message_is_read_back_even_after_log_lines() {
        let text = format!("{}\nsome log line", stop_message("s3://b/jobs/x/savepoints/sp-17", 42));
        assert_eq!(parse_stop_message(&text), Some(("s3://b/jobs/x/savepoints/sp-17".into(), 42)));
        assert_eq!(parse_stop_message("exit 1"), None);
    }

    #[test]
    fn trigger_states_serialize_as_the_api_shows_them() {
        let v = serde_json::to_value(TriggerState::Completed { path: "p".into(), checkpoint: 3 }).unwrap();
        assert_eq!(v, serde_json::json!({"status": "Completed", "path": "p", "checkpoint": 3}));
    }
}
