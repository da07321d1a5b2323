//! The status conditions a reconcile writes (`Ready`, `Reconciling`,
//! `Stalled`, `CheckpointsHealthy`, `Suspended`), with the meanings kstatus,
//! Flux and Argo CD give them, and the timestamps they carry.

use super::{Ctx, Observed};
use crate::crd::{Condition, Phase, StreamJobStatus};

pub fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms)).to_string()
}

/// With milliseconds, for instants a decision waits for: truncated to the
/// second, a 1 s restart delay could shrink to almost nothing.
pub fn rfc3339_millis(ms: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms)).to_string()
}

pub fn parse_rfc3339(s: &str) -> Option<u64> {
    humantime::parse_rfc3339(s).ok()?.duration_since(std::time::UNIX_EPOCH).ok().map(|d| d.as_millis() as u64)
}

/// What every condition of one reconcile shares.
pub struct Stamp<'a> {
    pub old: &'a [Condition],
    pub generation: Option<i64>,
    pub now: &'a str,
}

/// Sets a condition, keeping its transition time while its status holds.
pub fn set_condition(
    out: &mut Vec<Condition>,
    stamp: &Stamp<'_>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
) {
    let status = if status { "True" } else { "False" }.to_string();
    let since = stamp
        .old
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or_else(|| stamp.now.to_string(), |c| c.last_transition_time.clone());
    out.push(Condition {
        type_: type_.into(),
        status,
        reason: reason.into(),
        // Never empty: some API servers turn "" into null and refuse it.
        message: if message.is_empty() { format!("the job is {reason}") } else { message.into() },
        last_transition_time: since,
        observed_generation: stamp.generation,
    });
}

/// What a status can hold of a container's last words: the `error:` line
/// the weir binary prints when it fails, else the last line, shortened.
pub(super) fn failure_message(text: &str) -> Option<String> {
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let line = lines.iter().rev().find(|l| l.starts_with("error:")).or(lines.last())?;
    let line = line.strip_prefix("error:").unwrap_or(line).trim();
    let mut short: String = line.chars().take(480).collect();
    if short.len() < line.len() {
        short.push_str(" ...");
    }
    Some(short)
}

pub(super) fn fill_checkpoints(status: &mut StreamJobStatus, observed: &Observed) {
    let Some(c) = &observed.coordinator else { return };
    let mut cs = status.checkpoints.clone().unwrap_or_default();
    if c.latest.is_some() {
        cs.latest = c.latest.clone();
        cs.history = c.history.iter().take(10).cloned().collect();
    }
    cs.failed = c.failed;
    status.checkpoints = Some(cs);
}

/// `Some(true)` while checkpoints complete on time, `Some(false)` when they
/// stopped advancing, `None` while there is nothing to judge.
pub(super) fn checkpoints_healthy(ctx: &Ctx<'_>) -> Option<(bool, String)> {
    let (spec, now) = (ctx.spec, ctx.now);
    let c = ctx.observed.coordinator.as_ref()?;
    let interval = spec.checkpoints.interval.get().as_millis() as u64;
    if interval == 0 {
        return None;
    }
    let latest = c.latest.as_ref()?;
    let at = parse_rfc3339(&latest.completed_at)?;
    let limit = 3 * interval + 30_000;
    Some(if now.saturating_sub(at) <= limit {
        (true, format!("checkpoint {} completed at {}", latest.id, latest.completed_at))
    } else {
        (false, format!("no checkpoint completed since {} (checkpoint {})", latest.completed_at, latest.id))
    })
}

/// The conditions, with the meanings kstatus, Flux and Argo CD give them:
/// `Ready` when the job runs and checkpoints (or finished), `Reconciling`
/// while the operator works towards the spec, `Stalled` when it cannot get
/// there without the user: an invalid spec, a spent restart budget, a pod
/// the API server refuses, or no progress within the progress deadline.
pub(super) fn conditions(
    ctx: &Ctx<'_>,
    phase: Phase,
    failure: Option<(&str, &str)>,
    checkpoints: Option<(bool, String)>,
) -> Vec<Condition> {
    let mut out = Vec::new();
    let old = &ctx.old;
    let now = rfc3339(ctx.now);
    let stamp = Stamp { old: &old.conditions, generation: ctx.job.metadata.generation, now: &now };
    let phase_name = format!("{phase:?}");
    let mut reconciling = matches!(phase, Phase::Starting | Phase::Restarting | Phase::Pending);
    let waiting = ctx.waiting();
    let mut reconciling_message = match &waiting {
        Some(w) => format!("the job is {phase_name}: {w}"),
        None => String::new(),
    };
    let mut stalled = failure.map(|(r, m)| (r.to_string(), m.to_string()));
    // Reconciling for longer than the deadline: the job is stuck, and
    // what the pods wait for says why.
    let since = old
        .conditions
        .iter()
        .find(|c| c.type_ == "Reconciling" && c.status == "True")
        .and_then(|c| parse_rfc3339(&c.last_transition_time));
    if let Some(since) = since.filter(|s| reconciling && ctx.now.saturating_sub(*s) > ctx.settings.progress_deadline_ms)
    {
        let message = format!(
            "not running {} after it started reconciling at {}{}",
            humantime::format_duration(std::time::Duration::from_secs(ctx.settings.progress_deadline_ms / 1000)),
            rfc3339(since),
            waiting.map_or(String::new(), |w| format!(": {w}"))
        );
        stalled.get_or_insert(("ProgressDeadlineExceeded".into(), message));
        // kstatus reads Reconciling before Stalled.
        reconciling = false;
        reconciling_message.clear();
    }
    let checkpointing = !ctx.spec.checkpoints.interval.get().is_zero();
    let (ready, ready_reason, ready_message) = match (&stalled, phase) {
        (Some((r, m)), _) => (false, r.clone(), m.clone()),
        (None, Phase::Finished) => (true, "Finished".to_string(), "the job finished".to_string()),
        (None, Phase::Running) => match &checkpoints {
            Some((true, m)) => (true, "Running".into(), m.clone()),
            Some((false, m)) => (false, "CheckpointsStalled".into(), m.clone()),
            None if !checkpointing => (true, "Running".into(), "the job runs without checkpoints".into()),
            None => (false, "AwaitingCheckpoint".into(), "the job runs; no checkpoint completed yet".into()),
        },
        (None, _) => (false, phase_name.clone(), reconciling_message.clone()),
    };
    set_condition(&mut out, &stamp, "Ready", ready, &ready_reason, &ready_message);
    set_condition(&mut out, &stamp, "Reconciling", reconciling, &phase_name, &reconciling_message);
    match &stalled {
        Some((reason, message)) => set_condition(&mut out, &stamp, "Stalled", true, reason, message),
        None => set_condition(&mut out, &stamp, "Stalled", false, "Progressing", "nothing blocks the job"),
    }
    match checkpoints {
        Some((ok, message)) => {
            let reason = if ok { "Completing" } else { "Stalled" };
            set_condition(&mut out, &stamp, "CheckpointsHealthy", ok, reason, &message)
        }
        None => {
            if let Some(c) = old.conditions.iter().find(|c| c.type_ == "CheckpointsHealthy") {
                out.push(c.clone());
            }
        }
    }
    set_condition(&mut out, &stamp, "Suspended", phase == Phase::Suspended, &phase_name, "");
    out
}
