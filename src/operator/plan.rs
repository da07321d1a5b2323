//! The pure heart of a reconcile: from the job, its status and what was
//! observed, one [`Step`] (what to do, decided in one place in priority
//! order), then the [`Plan`] that carries it out: objects to apply, pods to
//! create and delete, coordinator calls and the status to write. No I/O;
//! tested with plain values.
//!
//! Each failover is one attempt with pods of its own names
//! (`<job>-worker-<i>-<attempt>`), recorded in `status.deployed`. A pod of
//! the current attempt that fails, vanishes, is evicted or sits on a lost
//! node is one failure however many reconciles see it; pods of older
//! attempts are stale, never a failure, and are deleted (forcibly when
//! their node is lost) before the new attempt's pods start.

use weir_runtime::manifest::{StreamJobSpec, UpgradeMode};

use super::objects::{self, pod_name, Deployment, Role, Settings, MAX_JOB_NAME};
use super::pod_template;
use crate::crd::{DeployedStatus, Failure, Phase, RestartStatus, SavepointKind, StreamJob, StreamJobStatus};

mod conditions;
mod observed;
mod savepoints;
mod spec;
use crate::restart_strategy::{record_failure, RestartDecision};
use conditions::{checkpoints_healthy, conditions, failure_message, fill_checkpoints};
pub use conditions::{parse_rfc3339, rfc3339, rfc3339_millis, set_condition, Stamp};
pub use observed::{ChoreView, CoordinatorView, Observed, PodPhase, PodView, TriggerView};
pub use savepoints::{savepoint_failed, savepoint_triggered};
#[cfg(test)]
use spec::canonical_json;
use spec::pod_local_storage;
pub use spec::{effective_storage, spec_digest};

/// Calls to the coordinator's API the reconcile should make.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// `POST /v1/savepoint-triggers` (`?stop=true` for the kinds that stop
    /// the job); the id goes to `status.savepointInfo.trigger`.
    TriggerSavepoint { kind: SavepointKind, nonce: Option<i64> },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub warning: bool,
    pub reason: String,
    pub note: String,
}

#[derive(Debug, Default)]
pub struct Plan {
    pub config_map: Option<k8s_openapi::api::core::v1::ConfigMap>,
    pub service: Option<k8s_openapi::api::core::v1::Service>,
    pub network_policy: Option<k8s_openapi::api::networking::v1::NetworkPolicy>,
    /// Pods to create: current pods that do not exist yet.
    pub create: Vec<k8s_openapi::api::core::v1::Pod>,
    pub delete: Vec<String>,
    /// Pods of a lost node: deleted with no grace period, since no kubelet
    /// is left to confirm their end.
    pub force_delete: Vec<String>,
    pub actions: Vec<Action>,
    pub status: StreamJobStatus,
    pub events: Vec<Event>,
    /// When to look again, in ms from now.
    pub requeue_ms: u64,
}

/// Why the job is deployed anew.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redeploy {
    SpecChanged,
    RestartRequested,
}

/// What one reconcile does. [`decide`] takes the first that applies, in
/// the order of the variants.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// The spec is invalid: pods stay as they are, the reason goes to status.
    Invalid(String),
    /// `suspend: true`: the pods go (after a savepoint in savepoint mode);
    /// state and checkpoints stay.
    Suspend,
    /// The current coordinator ended successfully: a bounded job is done.
    Finished,
    /// The restart budget is spent; stays so until the spec or
    /// `restartNonce` changes.
    Failed,
    /// The spec or `restartNonce` changed: all pods go (per `upgradeMode`)
    /// and a new attempt starts with a fresh restart budget.
    Redeploy(Redeploy),
    /// A current pod failed: one failure counted, a restart scheduled or
    /// the budget spent.
    Failover(Failure),
    /// A restart is scheduled for this time (ms since the epoch).
    AwaitRestart(u64),
    /// The scheduled restart is due: failed pods are replaced by pods of a
    /// new attempt.
    Restart,
    /// Keep the current pods: create what is missing, report.
    Run,
}

/// The roles of a job's pods, in the order of `status.deployed.pods`.
fn roles(spec: &StreamJobSpec) -> Vec<Role> {
    std::iter::once(Role::Coordinator).chain((0..spec.workers).map(Role::Worker)).collect()
}

/// The attempt a pod name ends with.
fn attempt_of(name: &str) -> u32 {
    name.rsplit('-').next().and_then(|a| a.parse().ok()).unwrap_or(0)
}

/// Why a current pod counts as failed, if it does.
fn failure_of(pod: Option<&PodView>, name: &str, now: u64, settings: &Settings) -> Option<Failure> {
    let now_text = rfc3339(now);
    let Some(pod) = pod else {
        return Some(Failure {
            pod: name.into(),
            reason: "PodDeleted".into(),
            exit_code: None,
            message: None,
            time: now_text,
        });
    };
    if let Some(since) = pod.node_not_ready_since_ms.filter(|s| now.saturating_sub(*s) >= settings.node_lost_after_ms) {
        return Some(Failure {
            pod: pod.name.clone(),
            reason: "NodeLost".into(),
            exit_code: None,
            message: Some(format!("its node has not been Ready since {}", rfc3339(since))),
            time: now_text,
        });
    }
    if matches!(pod.phase, PodPhase::Failed | PodPhase::Unknown) {
        return Some(Failure {
            pod: pod.name.clone(),
            reason: pod.reason.clone().unwrap_or_else(|| "Failed".into()),
            exit_code: pod.exit_code,
            message: pod.message.as_deref().and_then(failure_message),
            time: now_text,
        });
    }
    if pod.deleting {
        // Evicted, drained or deleted by hand: the operator never deletes
        // a current pod.
        return Some(Failure {
            pod: pod.name.clone(),
            reason: pod.reason.clone().unwrap_or_else(|| "PodDeleted".into()),
            exit_code: None,
            message: None,
            time: now_text,
        });
    }
    None
}

fn node_lost(pod: &PodView, now: u64, settings: &Settings) -> bool {
    pod.node_not_ready_since_ms.is_some_and(|s| now.saturating_sub(s) >= settings.node_lost_after_ms)
}

/// Everything [`decide`] and the step builders share.
struct Ctx<'a> {
    job: &'a StreamJob,
    name: String,
    spec: &'a StreamJobSpec,
    old: StreamJobStatus,
    observed: &'a Observed,
    settings: &'a Settings,
    digest: String,
    now: u64,
}

impl Ctx<'_> {
    fn pod(&self, name: &str) -> Option<&PodView> {
        self.observed.pods.iter().find(|p| p.name == name)
    }

    /// The current pods' names, or none before the first deployment.
    fn current(&self) -> &[String] {
        self.old.deployed.as_ref().map_or(&[], |d| d.pods.as_slice())
    }

    fn created(&self) -> bool {
        self.old.deployed.as_ref().is_some_and(|d| d.created)
    }

    /// Pods that are not deleted yet.
    fn live(&self) -> impl Iterator<Item = &PodView> {
        self.observed.pods.iter().filter(|p| !p.deleting)
    }

    fn coordinator_done(&self) -> bool {
        self.current().first().and_then(|n| self.pod(n)).is_some_and(|p| p.phase == PodPhase::Succeeded)
    }

    fn coordinator_running(&self) -> bool {
        self.observed.coordinator.as_ref().is_some_and(|c| c.state == "Running")
    }

    /// What the current pods wait for, e.g. `counts-worker-0-1:
    /// ImagePullBackOff: ...` or `Unschedulable: 0/2 nodes are available`.
    fn waiting(&self) -> Option<String> {
        let reasons: Vec<String> = self
            .current()
            .iter()
            .filter_map(|n| self.pod(n))
            .filter_map(|p| p.waiting.as_ref().map(|w| format!("{}: {w}", p.name)))
            .collect();
        (!reasons.is_empty()).then(|| reasons.join("; "))
    }

    /// The current pods that failed, with why.
    fn failures(&self) -> Vec<(usize, Failure)> {
        if !self.created() {
            return Vec::new();
        }
        self.current()
            .iter()
            .enumerate()
            .filter_map(|(slot, name)| failure_of(self.pod(name), name, self.now, self.settings).map(|f| (slot, f)))
            .collect()
    }
}

/// What this reconcile does, in priority order.
fn decide(c: &Ctx<'_>, problems: &[String]) -> Step {
    if !problems.is_empty() {
        return Step::Invalid(problems.join("; "));
    }
    if c.spec.suspend {
        return Step::Suspend;
    }
    let same_spec = c.old.deployed.as_ref().is_some_and(|d| d.digest == c.digest);
    if c.coordinator_done() && same_spec {
        return Step::Finished;
    }
    let restart_requested = c.spec.restart_nonce.is_some() && c.spec.restart_nonce != c.old.restart_nonce;
    if c.old.phase == Phase::Failed && same_spec && !restart_requested {
        return Step::Failed;
    }
    if restart_requested {
        return Step::Redeploy(Redeploy::RestartRequested);
    }
    if c.old.deployed.is_some() && !same_spec {
        return Step::Redeploy(Redeploy::SpecChanged);
    }
    let next_restart = c.old.restarts.next_restart_at.as_deref().and_then(parse_rfc3339);
    match next_restart {
        Some(at) if c.now < at => Step::AwaitRestart(at),
        Some(_) => Step::Restart,
        None => match c.failures().into_iter().next() {
            Some((_, failure)) => Step::Failover(failure),
            None => Step::Run,
        },
    }
}

/// What is wrong with the job's spec (each naming its field), and its
/// parsed pod template.
fn problems(
    job: &StreamJob,
    settings: &Settings,
) -> (Vec<String>, Option<k8s_openapi::api::core::v1::PodTemplateSpec>) {
    let spec = &job.spec.0;
    let name = job.metadata.name.as_deref().unwrap_or_default();
    let mut problems = spec.problems();
    if name.len() > MAX_JOB_NAME {
        problems.push(format!(
            "metadata.name: at most {MAX_JOB_NAME} characters (pod names add a role, an index and an attempt), got {}",
            name.len()
        ));
    }
    let template = pod_template::parse(spec.pod_template.as_ref()).unwrap_or_else(|e| {
        problems.push(e);
        None
    });
    let old_deployed = job.status.as_ref().and_then(|s| s.deployed.as_ref());
    problems.extend(pod_local_storage(&effective_storage(spec, old_deployed, settings), template.as_ref()));
    (problems, template)
}

/// The job as it was last deployed (`status.deployed.spec`), if that spec
/// is on record and still valid.
fn last_valid(job: &StreamJob, settings: &Settings) -> Option<StreamJob> {
    let text = job.status.as_ref()?.deployed.as_ref()?.spec.as_deref()?;
    let spec: StreamJobSpec = serde_json::from_str(text).ok()?;
    let mut last = job.clone();
    last.spec.0 = spec;
    problems(&last, settings).0.is_empty().then_some(last)
}

/// The plan for the job as it is; for an invalid edit of a deployed job,
/// the plan of its last valid spec (failures are still replaced and
/// checkpoints still reported, as Flink's operator keeps reconciling its
/// `lastReconciledSpec`), with the edit's problems in status.
pub fn plan(job: &StreamJob, observed: &Observed, settings: &Settings) -> Plan {
    let (problems, template) = problems(job, settings);
    if problems.is_empty() {
        return plan_spec(job, observed, settings, Vec::new(), template.as_ref());
    }
    let Some(last) = last_valid(job, settings) else {
        return plan_spec(job, observed, settings, problems, template.as_ref());
    };
    let last_template = pod_template::parse(last.spec.0.pod_template.as_ref()).ok().flatten();
    let mut p = plan_spec(&last, observed, settings, Vec::new(), last_template.as_ref());
    let message = format!("{}; the job runs on under its last valid spec", problems.join("; "));
    let now = rfc3339(observed.now_ms);
    let old = job.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
    let stamp = Stamp { old: &old, generation: job.metadata.generation, now: &now };
    let mut marked = Vec::new();
    set_condition(&mut marked, &stamp, "Ready", false, "InvalidSpec", &message);
    set_condition(&mut marked, &stamp, "Stalled", true, "InvalidSpec", &message);
    for new in marked {
        match p.status.conditions.iter_mut().find(|x| x.type_ == new.type_) {
            Some(x) => *x = new,
            None => p.status.conditions.push(new),
        }
    }
    if old.iter().all(|x| x.reason != "InvalidSpec" || x.message != message) {
        p.events.push(Event { warning: true, reason: "InvalidSpec".into(), note: message });
    }
    p
}

fn plan_spec(
    job: &StreamJob,
    observed: &Observed,
    settings: &Settings,
    problems: Vec<String>,
    template: Option<&k8s_openapi::api::core::v1::PodTemplateSpec>,
) -> Plan {
    let spec = &job.spec.0;
    let name = job.metadata.name.clone().unwrap_or_default();
    let c = Ctx {
        job,
        name,
        spec,
        old: job.status.clone().unwrap_or_default(),
        observed,
        settings,
        digest: spec_digest(spec),
        now: observed.now_ms,
    };
    let step = decide(&c, &problems);
    let mut p = Plan { status: c.old.clone(), requeue_ms: 5_000, ..Plan::default() };
    p.status.observed_generation = job.metadata.generation;

    // A savepoint in flight is followed whatever else happens; a new nonce
    // asks for one once the job runs.
    savepoints::track(&c, &mut p);
    if !matches!(step, Step::Invalid(_)) {
        savepoints::manual(&c, &mut p);
    }

    match step {
        Step::Invalid(message) => invalid(&c, &mut p, message),
        Step::Suspend => suspend(&c, &mut p),
        Step::Finished => {
            p.status.phase = Phase::Finished;
            fill_checkpoints(&mut p.status, observed);
            p.status.conditions = conditions(&c, Phase::Finished, None, None);
            p.requeue_ms = 0;
        }
        Step::Failed => {
            p.status.conditions =
                conditions(&c, Phase::Failed, Some(("RestartBudgetExhausted", "no further restarts")), None);
            p.requeue_ms = 0;
        }
        Step::Redeploy(why) => redeploy(&c, &mut p, why),
        Step::Failover(failure) => failover(&c, &mut p, failure),
        Step::AwaitRestart(at) => p.requeue_ms = at - c.now,
        Step::Restart => {
            restart(&c, &mut p);
            run(&c, &mut p, template);
        }
        Step::Run => run(&c, &mut p, template),
    }
    savepoints::retain(&c, &mut p);
    savepoints::dispose(&c, &mut p);
    if p.status.savepoint_info.trigger.is_some() || !p.actions.is_empty() {
        // A savepoint is looked after every second or so, whatever the step.
        p.requeue_ms = if p.requeue_ms == 0 { 1_000 } else { p.requeue_ms.min(1_000) };
    }
    p
}

fn invalid(c: &Ctx<'_>, p: &mut Plan, message: String) {
    p.status.conditions = conditions(c, Phase::Failed, Some(("InvalidSpec", &message)), None);
    if c.old.conditions.iter().all(|x| x.reason != "InvalidSpec" || x.message != message) {
        p.events.push(Event { warning: true, reason: "InvalidSpec".into(), note: message });
    }
    p.requeue_ms = 0;
}

fn suspend(c: &Ctx<'_>, p: &mut Plan) {
    let live: Vec<&PodView> = c.live().collect();
    if !live.is_empty() {
        if c.spec.upgrade_mode == UpgradeMode::Savepoint && !savepoints::gate(c, p, SavepointKind::Suspend) {
            // The job runs on until it stopped with its savepoint.
            return;
        }
        delete_pods(c, p, live.into_iter());
        if let Some(d) = p.status.deployed.as_mut() {
            d.pods.clear();
            d.created = false;
        }
    }
    // A restart pending at suspension is moot: resuming starts every pod anew.
    p.status.restarts.next_restart_at = None;
    if c.old.phase != Phase::Suspended {
        p.events.push(Event {
            warning: false,
            reason: "Suspended".into(),
            note: "job pods deleted, state kept".into(),
        });
    }
    p.status.phase = Phase::Suspended;
    p.status.conditions = conditions(c, Phase::Suspended, None, checkpoints_healthy(c));
}

/// Deletes pods, forcibly where their node is lost.
fn delete_pods<'a>(c: &Ctx<'_>, p: &mut Plan, pods: impl Iterator<Item = &'a PodView>) {
    for pod in pods {
        if node_lost(pod, c.now, c.settings) {
            p.force_delete.push(pod.name.clone());
        } else if !pod.deleting {
            p.delete.push(pod.name.clone());
        }
    }
}

fn redeploy(c: &Ctx<'_>, p: &mut Plan, why: Redeploy) {
    let live: Vec<&PodView> = c.live().collect();
    let spec_changed = c.old.deployed.as_ref().is_some_and(|d| d.digest != c.digest);
    if spec_changed
        && !live.is_empty()
        && c.spec.upgrade_mode == UpgradeMode::Savepoint
        && !savepoints::gate(c, p, SavepointKind::Upgrade)
    {
        // The new attempt starts once the job stopped with its savepoint;
        // until then this generation is not acted on.
        p.status.observed_generation = c.old.observed_generation;
        return;
    }
    delete_pods(c, p, c.observed.pods.iter());
    if spec_changed && c.spec.upgrade_mode == UpgradeMode::Stateless {
        p.status.state_reset_at_ms = Some(c.now);
    }
    let attempt = c.old.deployed.as_ref().map_or(0, |d| d.attempt) + 1;
    p.status.deployed = Some(new_deployment(c, c.old.deployed.as_ref(), attempt));
    // A fresh budget, as after a Flink job is resubmitted.
    p.status.restarts = RestartStatus { count: c.old.restarts.count, ..RestartStatus::default() };
    p.status.restart_nonce = c.spec.restart_nonce;
    let reason = match why {
        Redeploy::RestartRequested => "RestartRequested",
        Redeploy::SpecChanged => "Upgrading",
    };
    p.events.push(Event {
        warning: false,
        reason: reason.into(),
        note: format!("recreating job pods as attempt {attempt} ({:?})", c.spec.upgrade_mode),
    });
    p.status.phase = Phase::Starting;
    p.status.conditions = conditions(c, Phase::Starting, None, None);
    p.requeue_ms = 1_000;
}

/// A deployment of the spec as it is now, every pod of `attempt`, none
/// created yet. Defaults are read afresh (a new spec takes the operator's
/// image); the checkpoint storage stays where `previous` kept it.
fn new_deployment(c: &Ctx<'_>, previous: Option<&DeployedStatus>, attempt: u32) -> DeployedStatus {
    DeployedStatus {
        digest: c.digest.clone(),
        image: c.spec.image.clone().unwrap_or_else(|| c.settings.job_image.clone()),
        checkpoint_storage: effective_storage(c.spec, previous, c.settings),
        attempt,
        pods: roles(c.spec).into_iter().map(|r| pod_name(&c.name, r, attempt)).collect(),
        created: false,
        spec: serde_json::to_string(c.spec).ok(),
        tls_secret: c.settings.cert_manager.as_ref().map(|_| super::certificates::certificate_name(&c.name)),
    }
}

fn failover(c: &Ctx<'_>, p: &mut Plan, failure: Failure) {
    let strategy = c.spec.restart_strategy.kind().unwrap_or(weir_runtime::manifest::RestartStrategyKind::None);
    let seed = c.job.metadata.uid.as_deref().map_or(0, weir_runtime::keygroup::key_hash);
    p.status.restarts.last_failure = Some(failure.clone());
    let note = format!(
        "pod {} failed: {}{}{}",
        failure.pod,
        failure.reason,
        failure.exit_code.map_or(String::new(), |code| format!(" (exit code {code})")),
        failure.message.as_deref().map_or(String::new(), |m| format!(": {m}"))
    );
    match record_failure(&mut p.status.restarts, &strategy, c.now, seed) {
        RestartDecision::RestartAt(at) => {
            p.status.restarts.next_restart_at = Some(rfc3339_millis(at));
            p.status.phase = Phase::Restarting;
            p.events.push(Event {
                warning: true,
                reason: "PodFailed".into(),
                note: format!("{note}; restarting at {}", rfc3339_millis(at)),
            });
            p.requeue_ms = at.saturating_sub(c.now).max(100);
            p.status.conditions = conditions(c, Phase::Restarting, None, checkpoints_healthy(c));
        }
        RestartDecision::GiveUp { reason } => {
            p.status.phase = Phase::Failed;
            p.events.push(Event {
                warning: true,
                reason: "RestartBudgetExhausted".into(),
                note: format!("{note}; {reason}"),
            });
            p.status.conditions = conditions(c, Phase::Failed, Some(("RestartBudgetExhausted", &reason)), None);
            p.requeue_ms = 0;
        }
    }
}

/// Failed pods give way to pods of a new attempt, which [`run`] creates.
fn restart(c: &Ctx<'_>, p: &mut Plan) {
    let failed = c.failures();
    p.status.restarts.next_restart_at = None;
    p.status.restarts.count += 1;
    let Some(d) = p.status.deployed.as_mut() else { return };
    d.attempt += 1;
    let roles = roles(c.spec);
    for (slot, _) in &failed {
        if let (Some(name), Some(role)) = (d.pods.get_mut(*slot), roles.get(*slot)) {
            *name = pod_name(&c.name, *role, d.attempt);
        }
    }
    if !failed.is_empty() {
        d.created = false;
    }
    p.events.push(Event {
        warning: false,
        reason: "Restarting".into(),
        note: format!(
            "restart {}: replacing {} pod(s) as attempt {}",
            p.status.restarts.count,
            failed.len(),
            d.attempt
        ),
    });
}

/// Keeps the current pods: stale pods go, missing current pods are created
/// once no stale pod runs any more, and status reports progress.
fn run(c: &Ctx<'_>, p: &mut Plan, template: Option<&k8s_openapi::api::core::v1::PodTemplateSpec>) {
    let expected = roles(c.spec);
    let mut deployed = p.status.deployed.clone().unwrap_or_else(|| new_deployment(c, None, 1));
    if deployed.pods.len() != expected.len() {
        // First deployment, or a resume: a new attempt of every pod.
        deployed.attempt += 1;
        deployed.pods = expected.iter().map(|r| pod_name(&c.name, *r, deployed.attempt)).collect();
        deployed.created = false;
    }
    deployed.checkpoint_storage = effective_storage(c.spec, Some(&deployed), c.settings);
    if deployed.spec.is_none() && deployed.digest == c.digest {
        // Recorded since this operator version; an older status gains it here.
        deployed.spec = serde_json::to_string(c.spec).ok();
    }

    // Stale pods: anything of the job that is not a current pod.
    let stale: Vec<&PodView> = c.observed.pods.iter().filter(|pod| !deployed.pods.contains(&pod.name)).collect();
    delete_pods(c, p, stale.iter().copied());
    // A stale pod still running could write beside the new attempt; it
    // is waited for unless it has ended or its node is lost.
    let waiting_for: Vec<&str> = stale
        .iter()
        .filter(|pod| {
            !matches!(pod.phase, PodPhase::Succeeded | PodPhase::Failed) && !node_lost(pod, c.now, c.settings)
        })
        .map(|pod| pod.name.as_str())
        .collect();

    let d = Deployment {
        job: c.job,
        digest: &deployed.digest,
        image: &deployed.image,
        storage: &deployed.checkpoint_storage,
        template,
        tls_secret: deployed.tls_secret.as_deref(),
    };
    p.config_map = Some(objects::config_map(&d));
    p.service = Some(objects::service(c.job, deployed.pods.first().map_or(0, |n| attempt_of(n))));
    if c.settings.network_policies {
        p.network_policy = Some(objects::network_policy(c.job));
    }
    let creating = !deployed.created;
    if creating && waiting_for.is_empty() {
        for (name, role) in deployed.pods.iter().zip(&expected) {
            if c.pod(name).is_some() {
                continue;
            }
            let mut pod = objects::pod(&d, *role, attempt_of(name), c.settings);
            if let (Role::Coordinator, Some(reset)) = (role, p.status.state_reset_at_ms) {
                if let Some(container) = pod.spec.as_mut().and_then(|s| s.containers.first_mut()) {
                    container.env.get_or_insert_with(Vec::new).push(k8s_openapi::api::core::v1::EnvVar {
                        name: "WEIR_IGNORE_CHECKPOINTS_BEFORE_MS".into(),
                        value: Some(reset.to_string()),
                        ..Default::default()
                    });
                }
            }
            p.create.push(pod);
        }
        if !p.create.is_empty() && c.old.deployed.as_ref().is_none_or(|o| o.digest != deployed.digest || !o.created) {
            p.events.push(Event {
                warning: false,
                reason: "Deploying".into(),
                note: format!("creating {} job pod(s) of attempt {}", p.create.len(), deployed.attempt),
            });
        }
        deployed.created = true;
    }
    p.status.deployed = Some(deployed);

    let running = c.coordinator_running();
    p.status.phase = if running && !creating { Phase::Running } else { Phase::Starting };
    if let Some(coordinator) = &c.observed.coordinator {
        p.status.restored_from = coordinator.restored_from.or(c.old.restored_from);
    }
    fill_checkpoints(&mut p.status, c.observed);
    let mut health = checkpoints_healthy(c);
    let failed_before = c.old.checkpoints.as_ref().map_or(0, |x| x.failed);
    if let Some(x) = c.observed.coordinator.as_ref().filter(|x| x.failed > failed_before) {
        health = Some((false, format!("{} checkpoint(s) failed since the last look", x.failed - failed_before)));
    }
    if p.status.phase == Phase::Running && c.old.phase != Phase::Running {
        p.events.push(Event {
            warning: false,
            reason: "Running".into(),
            note: "all job pods run and the coordinator reports Running".into(),
        });
    }
    let waiting = (!waiting_for.is_empty() && creating)
        .then(|| format!("waiting for stale pods to end: {}", waiting_for.join(", ")));
    p.status.conditions = conditions(c, p.status.phase, None, health);
    if let Some(w) = waiting {
        if let Some(x) = p.status.conditions.iter_mut().find(|x| x.type_ == "Reconciling") {
            x.message = w;
        }
    }
    // A running job's coordinator is asked for its checkpoints every
    // status interval; a starting one sooner. Pod changes wake the
    // reconcile anyway.
    p.requeue_ms = if p.status.phase == Phase::Running { c.settings.status_interval_ms } else { 1_000 };
}

/// The pod of a deleted job's purge or savepoint, as the job's own pods run.
pub fn chore_pod(job: &StreamJob, settings: &Settings, chore: objects::Chore) -> k8s_openapi::api::core::v1::Pod {
    let spec = &job.spec.0;
    let status = job.status.clone().unwrap_or_default();
    let storage = effective_storage(spec, status.deployed.as_ref(), settings);
    let image = status
        .deployed
        .as_ref()
        .map(|d| d.image.clone())
        .or_else(|| spec.image.clone())
        .unwrap_or_else(|| settings.job_image.clone());
    let template = pod_template::parse(spec.pod_template.as_ref()).ok().flatten();
    let digest = spec_digest(spec);
    // Chore pods hold no TLS files: they talk to no other pod of the job.
    let d = Deployment {
        job,
        digest: &digest,
        image: &image,
        storage: &storage,
        template: template.as_ref(),
        tls_secret: None,
    };
    objects::chore_pod(&d, settings, chore)
}

/// The pod deleting savepoints `names` of a job past its retention.
pub fn dispose_pod(
    job: &StreamJob,
    status: &StreamJobStatus,
    settings: &Settings,
    names: &[String],
) -> k8s_openapi::api::core::v1::Pod {
    let mut with_status = job.clone();
    with_status.status = Some(status.clone());
    let mut pod = chore_pod(&with_status, settings, objects::Chore::Dispose);
    if let Some(args) = pod.spec.as_mut().and_then(|s| s.containers.first_mut()).and_then(|c| c.args.as_mut()) {
        args.extend(names.iter().cloned());
    }
    pod
}

/// Where the purge of a deleted job deletes.
pub fn checkpoint_location(job: &StreamJob, settings: &Settings) -> String {
    let status = job.status.clone().unwrap_or_default();
    objects::checkpoint_location(job, &effective_storage(&job.spec.0, status.deployed.as_ref(), settings))
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
