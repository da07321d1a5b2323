//! Savepoints as steps of the plan, never a wait inside a reconcile: a
//! savepoint is triggered (the coordinator answers with an id at once),
//! followed on later reconciles until it completes, fails or times out,
//! retried with backoff, kept in `status.savepoints` and disposed of by a
//! short-lived pod once it falls out of `spec.savepoints` retention.
//!
//! A savepoint-mode upgrade or suspension stops the job with a savepoint
//! first. If that savepoint fails the job keeps running under its current
//! spec, and only `spec.savepoints.onFailure: LastState` lets it go on
//! from the newest checkpoint instead; a job that is not running (so no
//! savepoint can be had) goes on from the newest checkpoint with a Warning
//! event unless `whenNotRunning: Wait` says to wait, as Flink's
//! last-state fallback does.

use weir_runtime::distributed::triggers::parse_stop_message;
use weir_runtime::manifest::{SavepointFallback, SavepointOptions};

use super::{
    conditions, effective_storage, parse_rfc3339, rfc3339, rfc3339_millis, set_condition, Action, Ctx, Event, PodPhase,
    Stamp, TriggerView,
};
use super::{objects, Plan};
use crate::crd::{Phase, SavepointKind, SavepointRecord, SavepointStatus, SavepointTrigger, StreamJobStatus};

/// Failures of a manual savepoint (`savepointNonce`) before it is given
/// up; an upgrade's or suspension's savepoint is retried for as long as
/// the spec asks for it.
const MANUAL_ATTEMPTS: u32 = 3;

/// Failures in a row after which a blocked upgrade or suspension is
/// `Stalled`: it will not get anywhere without the user.
const STALLED_AFTER: u32 = 3;

/// The wait before the next try after `failures` failures in a row:
/// 10 s doubling, at most 5 minutes.
fn backoff_ms(failures: u32) -> u64 {
    (10_000u64 << failures.saturating_sub(1).min(5)).min(300_000)
}

/// Records a trigger the coordinator accepted (called by the controller
/// with the id it was given).
pub fn savepoint_triggered(
    status: &mut StreamJobStatus,
    kind: SavepointKind,
    nonce: Option<i64>,
    id: String,
    now: u64,
) -> Event {
    status.savepoint_info.trigger =
        Some(SavepointTrigger { id: id.clone(), kind, nonce, triggered_at: rfc3339_millis(now) });
    Event { warning: false, reason: "SavepointTriggered".into(), note: format!("{kind:?} savepoint triggered ({id})") }
}

/// Records a savepoint that failed (or could not be triggered): the next
/// try waits with backoff; a manual one is given up after a few.
pub fn savepoint_failed(
    status: &mut StreamJobStatus,
    kind: SavepointKind,
    nonce: Option<i64>,
    reason: &str,
    now: u64,
) -> Vec<Event> {
    let info = &mut status.savepoint_info;
    info.trigger = None;
    info.failures += 1;
    info.last_error = Some(reason.to_string());
    let failures = info.failures;
    let mut events = Vec::new();
    if kind == SavepointKind::Manual && failures >= MANUAL_ATTEMPTS {
        info.nonce = nonce;
        info.failures = 0;
        info.next_attempt_at = None;
        events.push(Event {
            warning: true,
            reason: "SavepointAbandoned".into(),
            note: format!(
                "savepoint for savepointNonce {} failed {failures} times, the last: {reason}; set a new nonce to try again",
                nonce.map_or("-".into(), |n| n.to_string())
            ),
        });
        return events;
    }
    let at = now + backoff_ms(failures);
    info.next_attempt_at = Some(rfc3339_millis(at));
    events.push(Event {
        warning: true,
        reason: "SavepointFailed".into(),
        note: format!("{kind:?} savepoint failed ({failures} in a row): {reason}; next try at {}", rfc3339_millis(at)),
    });
    events
}

/// Follows the savepoint in flight to its end: completed (into the
/// history), failed, or past `spec.savepoints.timeout`.
pub(super) fn track(c: &Ctx<'_>, p: &mut Plan) {
    let Some(t) = c.old.savepoint_info.trigger.clone() else { return };
    let coordinator = c.current().first().and_then(|n| c.pod(n));
    let outcome = if t.kind.stops() && c.coordinator_done() {
        // A stopped coordinator answers nothing: its last words say where
        // the savepoint went.
        match coordinator.and_then(|p| p.message.as_deref()).and_then(parse_stop_message) {
            Some((path, id)) => Some(Ok((path, Some(id)))),
            None => Some(Err("the job finished before its savepoint completed".to_string())),
        }
    } else {
        match &c.observed.trigger {
            Some(TriggerView::Completed { path, checkpoint }) => Some(Ok((path.clone(), Some(*checkpoint)))),
            Some(TriggerView::Failed(reason)) | Some(TriggerView::Unknown(reason)) => Some(Err(reason.clone())),
            Some(TriggerView::InProgress) | None => {
                let started = parse_rfc3339(&t.triggered_at).unwrap_or(c.now);
                let timeout = c.spec.savepoints.timeout.get().as_millis() as u64;
                let alive = coordinator.is_some_and(|p| !p.deleting && p.phase == PodPhase::Running);
                if !alive {
                    Some(Err("the coordinator ended before the savepoint completed".to_string()))
                } else if c.now.saturating_sub(started) > timeout {
                    Some(Err(format!(
                        "not completed within {} (spec.savepoints.timeout)",
                        humantime::format_duration(c.spec.savepoints.timeout.get())
                    )))
                } else {
                    None
                }
            }
        }
    };
    match outcome {
        None => {}
        Some(Ok((path, checkpoint))) => completed(c, p, &t, path, checkpoint),
        Some(Err(reason)) => {
            let events = savepoint_failed(&mut p.status, t.kind, t.nonce, &reason, c.now);
            p.events.extend(events);
        }
    }
}

fn completed(c: &Ctx<'_>, p: &mut Plan, t: &SavepointTrigger, path: String, checkpoint: Option<u64>) {
    let info = &mut p.status.savepoint_info;
    info.trigger = None;
    info.failures = 0;
    info.last_error = None;
    info.next_attempt_at = None;
    if t.kind == SavepointKind::Manual {
        info.nonce = t.nonce;
    }
    p.status.last_savepoint = Some(SavepointStatus { nonce: t.nonce, path: path.clone() });
    p.status.savepoints.insert(
        0,
        SavepointRecord { path: path.clone(), checkpoint, taken_at: rfc3339(c.now), kind: t.kind, nonce: t.nonce },
    );
    let of = checkpoint.map_or(String::new(), |id| format!(" of checkpoint {id}"));
    let (reason, note) = match t.kind {
        SavepointKind::Manual => ("Savepoint", format!("savepoint{of} at {path}")),
        _ => ("Stopped", format!("stopped with a savepoint{of} at {path}")),
    };
    p.events.push(Event { warning: false, reason: reason.into(), note });
}

/// The nonce last acted on: from `savepointInfo`, or from
/// `lastSavepoint` as operators before it recorded it.
fn handled_nonce(status: &StreamJobStatus) -> Option<i64> {
    status.savepoint_info.nonce.or(status.last_savepoint.as_ref().and_then(|s| s.nonce))
}

fn backoff_over(c: &Ctx<'_>, p: &Plan) -> bool {
    p.status.savepoint_info.next_attempt_at.as_deref().and_then(parse_rfc3339).is_none_or(|at| c.now >= at)
}

/// A new `savepointNonce` asks for one savepoint, taken once the job runs.
pub(super) fn manual(c: &Ctx<'_>, p: &mut Plan) {
    let nonce = c.spec.savepoint_nonce;
    if nonce.is_none() || nonce == handled_nonce(&p.status) {
        return;
    }
    if p.status.savepoint_info.trigger.is_none() && c.coordinator_running() && backoff_over(c, p) {
        p.actions.push(Action::TriggerSavepoint { kind: SavepointKind::Manual, nonce });
    }
}

/// Whether a savepoint-mode upgrade or suspension may take the job's pods
/// now: the job stopped with its savepoint, or it cannot take one and the
/// spec says to go on from the newest checkpoint. Otherwise it asks for
/// the savepoint (or waits for it) and says so in status.
pub(super) fn gate(c: &Ctx<'_>, p: &mut Plan, kind: SavepointKind) -> bool {
    let what = if kind == SavepointKind::Suspend { "suspending" } else { "upgrading" };
    if c.coordinator_done() {
        return true;
    }
    let opts: &SavepointOptions = &c.spec.savepoints;
    if let Some(t) = &p.status.savepoint_info.trigger {
        let message = format!("taking a savepoint before {what} (trigger {}, since {})", t.id, t.triggered_at);
        hold(c, p, message, None);
        return false;
    }
    let failing = !c.failures().is_empty() || c.old.phase == Phase::Failed;
    if !c.coordinator_running() {
        if !failing {
            // Starting or restarting: a savepoint can be had once it runs.
            hold(c, p, format!("waiting for the job to run, to take a savepoint before {what}"), None);
            return false;
        }
        if opts.when_not_running == SavepointFallback::LastState {
            p.events.push(Event {
                warning: true,
                reason: "NoSavepoint".into(),
                note: format!(
                    "the job is not running, so no savepoint can be taken; {what} from its newest completed \
                     checkpoint (spec.savepoints.whenNotRunning: LastState)"
                ),
            });
            return true;
        }
        let message = format!(
            "upgradeMode Savepoint needs a running job to take a savepoint before {what}, and the job is not running; \
             set spec.savepoints.whenNotRunning: LastState (or upgradeMode: LastState) to go on from its newest \
             completed checkpoint"
        );
        hold(c, p, message, Some("SavepointImpossible"));
        return false;
    }
    let info = &p.status.savepoint_info;
    if info.failures > 0 && opts.on_failure == SavepointFallback::LastState {
        p.events.push(Event {
            warning: true,
            reason: "NoSavepoint".into(),
            note: format!(
                "the savepoint failed ({}); {what} from the newest completed checkpoint (spec.savepoints.onFailure: \
                 LastState)",
                info.last_error.as_deref().unwrap_or("no reason given")
            ),
        });
        return true;
    }
    if backoff_over(c, p) {
        p.actions.push(Action::TriggerSavepoint { kind, nonce: None });
        hold(c, p, format!("taking a savepoint before {what}"), None);
        return false;
    }
    let info = &p.status.savepoint_info;
    let message = format!(
        "the savepoint before {what} failed {} time(s), the last: {}; the job runs on under its current spec and \
         the savepoint is tried again at {} (spec.savepoints.onFailure: Wait)",
        info.failures,
        info.last_error.as_deref().unwrap_or("no reason given"),
        info.next_attempt_at.as_deref().unwrap_or("once the job runs")
    );
    let stalled = (info.failures >= STALLED_AFTER).then_some("SavepointFailing");
    hold(c, p, message, stalled);
    false
}

/// The job stays as it is while a savepoint is awaited: its phase holds,
/// `Reconciling` (or `Stalled`) says what it waits for.
fn hold(c: &Ctx<'_>, p: &mut Plan, message: String, stalled: Option<&str>) {
    let phase = c.old.phase;
    p.status.phase = phase;
    p.status.conditions = conditions(c, phase, stalled.map(|r| (r, message.as_str())), None);
    if stalled.is_none() {
        let now = rfc3339(c.now);
        let stamp = Stamp { old: &c.old.conditions, generation: c.job.metadata.generation, now: &now };
        let mut updated = Vec::new();
        set_condition(&mut updated, &stamp, "Reconciling", true, "Savepoint", &message);
        for x in p.status.conditions.iter_mut().filter(|x| x.type_ == "Reconciling") {
            if let Some(u) = updated.pop() {
                *x = u;
            }
        }
    }
    p.requeue_ms = 1_000;
}

/// The savepoints' directory of the job under its checkpoint storage.
fn savepoints_dir(c: &Ctx<'_>, status: &StreamJobStatus) -> String {
    let storage = effective_storage(c.spec, status.deployed.as_ref(), c.settings);
    format!("{}/savepoints/", objects::checkpoint_location(c.job, &storage))
}

/// Keeps `spec.savepoints.maxHistory` savepoints no older than `maxAge`
/// (the newest always), and queues the rest for disposal. One that lies
/// outside the job's storage (the storage moved since) is dropped from
/// status but not deleted: nothing outside the job's own directory is.
pub(super) fn retain(c: &Ctx<'_>, p: &mut Plan) {
    let opts = &c.spec.savepoints;
    let max_age = opts.max_age.map(|a| a.get().as_millis() as u64);
    let dir = savepoints_dir(c, &p.status);
    let history = std::mem::take(&mut p.status.savepoints);
    for (i, record) in history.into_iter().enumerate() {
        let too_many = opts.max_history > 0 && i >= opts.max_history as usize;
        let too_old = i > 0
            && max_age
                .is_some_and(|age| parse_rfc3339(&record.taken_at).is_some_and(|at| c.now.saturating_sub(at) > age));
        if !(too_many || too_old) {
            p.status.savepoints.push(record);
            continue;
        }
        let name = record.path.strip_prefix(&dir).map(|n| n.trim_end_matches('/')).filter(|n| !n.contains('/'));
        match name {
            Some(name) => {
                let info = &mut p.status.savepoint_info;
                if !info.dispose.iter().any(|n| n == name) {
                    info.dispose.push(name.to_string());
                }
            }
            None => p.events.push(Event {
                warning: true,
                reason: "SavepointNotDisposed".into(),
                note: format!(
                    "savepoint {} is past retention but lies outside the job's savepoints ({dir}); it is dropped \
                     from status and left in place",
                    record.path
                ),
            }),
        }
    }
}

/// Runs the disposal pod over the savepoints past retention: one pod at a
/// time, its names recorded, its end read and the pod removed. It runs
/// whether the job runs or not.
pub(super) fn dispose(c: &Ctx<'_>, p: &mut Plan) {
    let name = objects::chore_pod_name(&c.name, objects::Chore::Dispose);
    let info = &mut p.status.savepoint_info;
    match &c.observed.disposal {
        Some(pod) if pod.phase == PodPhase::Succeeded => {
            let done = std::mem::take(&mut info.disposing);
            info.dispose.retain(|n| !done.contains(n));
            p.delete.push(name);
            p.events.push(Event {
                warning: false,
                reason: "SavepointsDisposed".into(),
                note: pod.message.clone().unwrap_or_else(|| format!("deleted savepoints {}", done.join(", "))),
            });
        }
        Some(pod) if matches!(pod.phase, PodPhase::Failed | PodPhase::Unknown) => {
            info.disposing.clear();
            p.delete.push(name.clone());
            p.events.push(Event {
                warning: true,
                reason: "SavepointDisposalFailed".into(),
                note: format!(
                    "pod {name} failed: {}; it is tried again",
                    pod.message.as_deref().map(str::trim).unwrap_or("no reason given")
                ),
            });
        }
        Some(_) => {}
        None if !info.disposing.is_empty() => {
            // Gone before it ended (deleted by hand, or its deletion seen
            // late): the names go into the next pod.
            info.disposing.clear();
        }
        None if !info.dispose.is_empty() => {
            info.disposing = info.dispose.clone();
            let names = info.disposing.clone();
            p.create.push(super::dispose_pod(c.job, &p.status, c.settings, &names));
        }
        None => {}
    }
}
