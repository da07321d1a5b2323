//! The pure heart of a reconcile: from the job and what was observed, the
//! objects that should exist, the pods to delete, the actions to take, and
//! the status to write. No I/O; tested with plain values.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvFromSource, EnvVar, EnvVarSource,
    KeyToPath, LocalObjectReference, Pod, PodSecurityContext, PodSpec, PodTemplateSpec, ResourceRequirements, Secret,
    SecretEnvSource, SecretKeySelector, SecretVolumeSource, SecurityContext, Service, ServicePort, ServiceSpec, Volume,
    VolumeMount,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;
use weir_runtime::distributed::tls::JobIdentity;
use weir_runtime::manifest::{StreamJobSpec, UpgradeMode};

use super::pod_template;
use crate::crd::{CheckpointRef, Condition, Failure, Phase, StreamJob, StreamJobStatus};
use crate::restart_strategy::{next_restart, RestartDecision};

pub const JOB_LABEL: &str = "weir.dev/job";
pub const ROLE_LABEL: &str = "weir.dev/role";
pub const HASH_LABEL: &str = "weir.dev/spec-hash";
pub const WORKER_PORT: i32 = 6123;
pub const HTTP_PORT: i32 = 8081;

/// Operator-wide settings: defaults for what a spec leaves out.
#[derive(Debug, Clone)]
pub struct Settings {
    pub job_image: String,
    pub image_pull_policy: String,
    /// Checkpoint storage for jobs that keep the built-in default.
    pub default_storage: Option<String>,
    /// A Secret whose keys become environment variables of job pods.
    pub credentials_secret: Option<String>,
    /// Give every job a NetworkPolicy that admits only its own pods, and
    /// anyone to the coordinator's HTTP port.
    pub network_policies: bool,
    /// Secrets job pods pull their image with (`imagePullSecrets`).
    pub image_pull_secrets: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Coordinator,
    Worker(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodPhase {
    Pending,
    Running,
    Succeeded,
    Failed,
    Unknown,
}

/// A job pod as observed.
#[derive(Debug, Clone, PartialEq)]
pub struct PodView {
    pub name: String,
    pub role: Role,
    pub phase: PodPhase,
    pub spec_hash: String,
    pub exit_code: Option<i32>,
    pub reason: Option<String>,
    /// The terminated container's message (see [`Failure::message`]).
    pub message: Option<String>,
    pub deleting: bool,
}

/// What the coordinator's API said, if it answered.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CoordinatorView {
    pub state: String,
    pub restored_from: Option<u64>,
    pub latest: Option<CheckpointRef>,
    pub history: Vec<CheckpointRef>,
    pub failed: u64,
}

#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub pods: Vec<PodView>,
    pub coordinator: Option<CoordinatorView>,
    pub now_ms: u64,
}

/// Calls to the coordinator's API the reconcile should make.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// `POST /v1/savepoints`; record the path under this nonce.
    Savepoint { nonce: Option<i64> },
    /// `POST /v1/stop` (savepoint, then the job finishes).
    StopWithSavepoint,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub warning: bool,
    pub reason: String,
    pub note: String,
}

#[derive(Debug, Default)]
pub struct Plan {
    pub config_map: Option<ConfigMap>,
    pub service: Option<Service>,
    pub network_policy: Option<NetworkPolicy>,
    pub pods: Vec<Pod>,
    pub delete: Vec<String>,
    pub actions: Vec<Action>,
    pub status: StreamJobStatus,
    pub events: Vec<Event>,
    /// When to look again, in ms from now.
    pub requeue_ms: u64,
}

/// Names of the objects of job `name`.
pub fn coordinator_name(job: &str) -> String {
    format!("{job}-coordinator")
}
pub fn worker_name(job: &str, i: u32) -> String {
    format!("{job}-worker-{i}")
}
/// The Secret holding the job's token (key [`TOKEN_KEY`]).
pub fn token_secret_name(job: &str) -> String {
    format!("{job}-token")
}

pub const TOKEN_KEY: &str = "token";
/// The job's TLS identity in the same Secret: certificate, key, job CA.
pub const TLS_CERT_KEY: &str = "tls.crt";
pub const TLS_KEY_KEY: &str = "tls.key";
pub const TLS_CA_KEY: &str = "ca.crt";
/// Where job pods find them.
/// Not under `/etc/weir`: that is the read-only ConfigMap volume of the
/// coordinator, inside which no mount point can be made.
pub const TLS_DIR: &str = "/etc/weir-tls";

pub fn tls_secret_data(identity: &JobIdentity) -> BTreeMap<String, String> {
    BTreeMap::from([
        (TLS_CERT_KEY.to_string(), identity.cert.clone()),
        (TLS_KEY_KEY.to_string(), identity.key.clone()),
        (TLS_CA_KEY.to_string(), identity.ca.clone()),
    ])
}

/// The job's Secret: its token and its TLS identity. Both are made once,
/// when the Secret is created (never re-applied: new values would lock
/// out running pods).
pub fn token_secret(job: &StreamJob, token: &str, identity: &JobIdentity) -> Secret {
    let name = job.metadata.name.clone().unwrap_or_default();
    Secret {
        metadata: meta(
            token_secret_name(&name),
            job.metadata.namespace.as_deref(),
            labels(&name, None, None),
            &owner(job),
        ),
        string_data: Some({
            let mut data = tls_secret_data(identity);
            data.insert(TOKEN_KEY.to_string(), token.to_string());
            data
        }),
        type_: Some("Opaque".into()),
        ..Secret::default()
    }
}

pub fn config_map_name(job: &str) -> String {
    format!("{job}-job")
}

/// A hash of what the pods run; lifecycle fields (suspend, nonces,
/// restart strategy, deletion policy) do not count, so changing them
/// restarts nothing.
pub fn spec_hash(spec: &StreamJobSpec) -> String {
    let mut s = spec.clone();
    s.suspend = false;
    s.savepoint_nonce = None;
    s.restart_nonce = None;
    s.restart_strategy = Default::default();
    s.deletion_policy = Default::default();
    s.upgrade_mode = Default::default();
    // Read only while the job has no checkpoint of its own, like Flink's.
    s.initial_savepoint_path = None;
    let text = serde_json::to_string(&s).unwrap_or_default();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    format!("{:016x}", h.finish())
}

pub fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms)).to_string()
}

/// With milliseconds, for instants a decision waits for: truncated to the
/// second, a 1 s restart delay could shrink to almost nothing.
pub fn rfc3339_millis(ms: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms)).to_string()
}

fn parse_rfc3339(s: &str) -> Option<u64> {
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

pub fn plan(job: &StreamJob, observed: &Observed, settings: &Settings) -> Plan {
    let name = job.metadata.name.clone().unwrap_or_default();
    let spec = &job.spec.0;
    let old = job.status.clone().unwrap_or_default();
    let generation = job.metadata.generation;
    let now = observed.now_ms;
    let now_text = rfc3339(now);
    let mut p = Plan { status: old.clone(), requeue_ms: 5_000, ..Plan::default() };
    p.status.observed_generation = generation;

    let mut problems = spec.problems();
    let template = pod_template::parse(spec.pod_template.as_ref()).unwrap_or_else(|e| {
        problems.push(e);
        None
    });
    if !problems.is_empty() {
        let message = problems.join("; ");
        p.status.conditions =
            conditions(&old, generation, &now_text, Phase::Failed, Some(("InvalidSpec", &message)), None);
        if old.conditions.iter().all(|c| c.reason != "InvalidSpec" || c.message != message) {
            p.events.push(Event { warning: true, reason: "InvalidSpec".into(), note: message });
        }
        p.requeue_ms = 0;
        return p;
    }

    let hash = spec_hash(spec);
    let coordinator_done =
        observed.pods.iter().any(|pod| pod.role == Role::Coordinator && pod.phase == PodPhase::Succeeded);
    let live: Vec<&PodView> = observed.pods.iter().filter(|pod| !pod.deleting).collect();

    // One-off savepoint.
    let new_nonce =
        spec.savepoint_nonce.is_some() && spec.savepoint_nonce != old.last_savepoint.as_ref().and_then(|s| s.nonce);
    if new_nonce && coordinator_running(observed) {
        p.actions.push(Action::Savepoint { nonce: spec.savepoint_nonce });
    }

    // Suspension.
    if spec.suspend {
        if !live.is_empty() {
            if spec.upgrade_mode == UpgradeMode::Savepoint && !coordinator_done && coordinator_running(observed) {
                p.actions.push(Action::StopWithSavepoint);
            } else {
                p.delete = live.iter().map(|pod| pod.name.clone()).collect();
            }
        }
        if old.phase != Phase::Suspended {
            p.events.push(Event {
                warning: false,
                reason: "Suspended".into(),
                note: "job pods deleted, state kept".into(),
            });
        }
        p.status.phase = Phase::Suspended;
        p.status.conditions =
            conditions(&old, generation, &now_text, Phase::Suspended, None, checkpoints_healthy(spec, observed, now));
        return p;
    }

    // A finished bounded job stays finished.
    if coordinator_done && old.deployed_spec_hash.as_deref() == Some(hash.as_str()) {
        p.status.phase = Phase::Finished;
        fill_checkpoints(&mut p.status, observed);
        p.status.conditions = conditions(&old, generation, &now_text, Phase::Finished, None, None);
        p.requeue_ms = 0;
        return p;
    }

    // Restart budget spent: keep pods for their logs, keep checkpoints.
    if old.phase == Phase::Failed
        && old.deployed_spec_hash.as_deref() == Some(hash.as_str())
        && spec.restart_nonce == old.restart_nonce
    {
        p.status.conditions = conditions(
            &old,
            generation,
            &now_text,
            Phase::Failed,
            Some(("RestartBudgetExhausted", "no further restarts")),
            None,
        );
        p.requeue_ms = 0;
        return p;
    }

    // Spec change or restart request: take the pods down per upgradeMode.
    let outdated = live.iter().any(|pod| pod.spec_hash != hash);
    let restart_requested = spec.restart_nonce.is_some() && spec.restart_nonce != old.restart_nonce;
    if (outdated || restart_requested) && !live.is_empty() {
        if outdated && spec.upgrade_mode == UpgradeMode::Savepoint && coordinator_running(observed) && !coordinator_done
        {
            p.actions.push(Action::StopWithSavepoint);
        } else {
            p.delete = live.iter().map(|pod| pod.name.clone()).collect();
            // Pods deleted on purpose: their absence is not a failure.
            p.status.deployed_spec_hash = None;
            if outdated && spec.upgrade_mode == UpgradeMode::Stateless {
                p.status.state_reset_at_ms = Some(now);
            }
            p.status.restart_nonce = spec.restart_nonce;
            p.events.push(Event {
                warning: false,
                reason: if restart_requested { "RestartRequested" } else { "Upgrading" }.into(),
                note: format!("recreating job pods ({:?})", spec.upgrade_mode),
            });
        }
        p.status.phase = Phase::Starting;
        p.status.conditions = conditions(&old, generation, &now_text, Phase::Starting, None, None);
        p.requeue_ms = 1_000;
        return p;
    }
    p.status.restart_nonce = spec.restart_nonce;

    // Failures: a failed pod, or one that vanished while the job ran.
    // A pod in phase Unknown lost its node: that is a failure too.
    let failed: Vec<&&PodView> =
        live.iter().filter(|pod| matches!(pod.phase, PodPhase::Failed | PodPhase::Unknown)).collect();
    let expected = 1 + spec.workers as usize;
    let vanished = old.deployed_spec_hash.is_some()
        && matches!(old.phase, Phase::Running | Phase::Starting)
        && live.len() < expected;
    if (!failed.is_empty() || vanished) && old.restarts.next_restart_at.is_none() {
        let failure = match failed.first() {
            Some(pod) => Failure {
                pod: pod.name.clone(),
                reason: pod.reason.clone().unwrap_or_else(|| "Failed".into()),
                exit_code: pod.exit_code,
                message: pod.message.as_deref().and_then(failure_message),
                time: now_text.clone(),
            },
            None => Failure {
                pod: missing_pod(&name, spec, &live),
                reason: "PodDeleted".into(),
                exit_code: None,
                message: None,
                time: now_text.clone(),
            },
        };
        let mut times = old.restarts.failure_times_ms.clone();
        times.push(now);
        if times.len() > 32 {
            times.remove(0);
        }
        let strategy = spec.restart_strategy.kind().unwrap_or(weir_runtime::manifest::RestartStrategyKind::None);
        let seed = job.metadata.uid.as_deref().map_or(0, weir_runtime::keygroup::key_hash);
        p.status.restarts.failure_times_ms = times.clone();
        p.status.restarts.last_failure = Some(failure.clone());
        let note = format!(
            "pod {} failed: {}{}{}",
            failure.pod,
            failure.reason,
            failure.exit_code.map_or(String::new(), |c| format!(" (exit code {c})")),
            failure.message.as_deref().map_or(String::new(), |m| format!(": {m}"))
        );
        match next_restart(&strategy, &times, now, seed) {
            RestartDecision::RestartAt(at) => {
                p.status.restarts.next_restart_at = Some(rfc3339_millis(at));
                p.status.phase = Phase::Restarting;
                p.events.push(Event {
                    warning: true,
                    reason: "PodFailed".into(),
                    note: format!("{note}; restarting at {}", rfc3339_millis(at)),
                });
                p.requeue_ms = at.saturating_sub(now).max(100);
            }
            RestartDecision::GiveUp { reason } => {
                p.status.phase = Phase::Failed;
                p.events.push(Event {
                    warning: true,
                    reason: "RestartBudgetExhausted".into(),
                    note: format!("{note}; {reason}"),
                });
                p.status.conditions = conditions(
                    &old,
                    generation,
                    &now_text,
                    Phase::Failed,
                    Some(("RestartBudgetExhausted", &reason)),
                    None,
                );
                p.requeue_ms = 0;
                return p;
            }
        }
        p.status.conditions =
            conditions(&old, generation, &now_text, Phase::Restarting, None, checkpoints_healthy(spec, observed, now));
        return p;
    }
    if let Some(at) = old.restarts.next_restart_at.as_deref().and_then(parse_rfc3339) {
        if now < at {
            p.requeue_ms = at - now;
            return p;
        }
        // Time to restart: failed pods go, missing ones are created below.
        p.delete = failed.iter().map(|pod| pod.name.clone()).collect();
        p.status.restarts.next_restart_at = None;
        p.status.restarts.count += 1;
        p.events.push(Event {
            warning: false,
            reason: "Restarting".into(),
            note: format!("restart {} of the job's pods", p.status.restarts.count),
        });
    }

    // The desired objects.
    let owner = owner(job);
    p.config_map = Some(config_map(job, &owner, settings));
    p.service = Some(service(&name, job.metadata.namespace.as_deref(), &owner));
    if settings.network_policies {
        p.network_policy = Some(network_policy(&name, job.metadata.namespace.as_deref(), &owner));
    }
    let mut coordinator = pod(job, Role::Coordinator, settings, &hash, &owner, template.as_ref());
    if let Some(reset) = p.status.state_reset_at_ms {
        if let Some(c) = coordinator.spec.as_mut().and_then(|s| s.containers.first_mut()) {
            c.env.get_or_insert_with(Vec::new).push(env("WEIR_IGNORE_CHECKPOINTS_BEFORE_MS", reset.to_string()));
        }
    }
    p.pods.push(coordinator);
    for i in 0..spec.workers {
        p.pods.push(pod(job, Role::Worker(i), settings, &hash, &owner, template.as_ref()));
    }
    if old.deployed_spec_hash.as_deref() != Some(hash.as_str()) {
        p.events.push(Event {
            warning: false,
            reason: "Deploying".into(),
            note: format!("creating {} job pods", 1 + spec.workers),
        });
    }
    // Until deleted pods are gone and recreated, missing pods are expected.
    p.status.deployed_spec_hash = if p.delete.is_empty() { Some(hash) } else { None };

    let running = coordinator_running(observed);
    p.status.phase = if running { Phase::Running } else { Phase::Starting };
    if let Some(c) = &observed.coordinator {
        p.status.restored_from = c.restored_from.or(old.restored_from);
    }
    fill_checkpoints(&mut p.status, observed);
    let mut health = checkpoints_healthy(spec, observed, now);
    let failed_before = old.checkpoints.as_ref().map_or(0, |c| c.failed);
    if let Some(c) = observed.coordinator.as_ref().filter(|c| c.failed > failed_before) {
        health = Some((false, format!("{} checkpoint(s) failed since the last look", c.failed - failed_before)));
    }
    if running && old.phase != Phase::Running {
        p.events.push(Event {
            warning: false,
            reason: "Running".into(),
            note: "all job pods run and the coordinator reports Running".into(),
        });
    }
    p.status.conditions = conditions(&old, generation, &now_text, p.status.phase, None, health);
    // Checkpoint completion shows in status within about two seconds.
    p.requeue_ms = if running { 2_000 } else { 1_000 };
    p
}

fn coordinator_running(observed: &Observed) -> bool {
    observed.coordinator.as_ref().is_some_and(|c| c.state == "Running")
}

fn missing_pod(name: &str, spec: &StreamJobSpec, live: &[&PodView]) -> String {
    let mut wanted = vec![coordinator_name(name)];
    wanted.extend((0..spec.workers).map(|i| worker_name(name, i)));
    wanted.into_iter().find(|w| live.iter().all(|p| &p.name != w)).unwrap_or_default()
}

fn fill_checkpoints(status: &mut StreamJobStatus, observed: &Observed) {
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
fn checkpoints_healthy(spec: &StreamJobSpec, observed: &Observed, now: u64) -> Option<(bool, String)> {
    let c = observed.coordinator.as_ref()?;
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

fn conditions(
    old: &StreamJobStatus,
    generation: Option<i64>,
    now: &str,
    phase: Phase,
    failure: Option<(&str, &str)>,
    checkpoints: Option<(bool, String)>,
) -> Vec<Condition> {
    let mut out = Vec::new();
    let stamp = Stamp { old: &old.conditions, generation, now };
    let phase_name = format!("{phase:?}");
    let (reason, message) = failure.unwrap_or((&phase_name, ""));
    let progressing = matches!(phase, Phase::Starting | Phase::Restarting | Phase::Pending);
    set_condition(&mut out, &stamp, "Ready", phase == Phase::Running, reason, message);
    set_condition(&mut out, &stamp, "Progressing", progressing, &phase_name, "");
    set_condition(&mut out, &stamp, "Degraded", matches!(phase, Phase::Restarting | Phase::Failed), reason, message);
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

fn labels(job: &str, role: Option<Role>, hash: Option<&str>) -> BTreeMap<String, String> {
    let mut l = BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "weir".to_string()),
        ("app.kubernetes.io/managed-by".to_string(), "weir-operator".to_string()),
        (JOB_LABEL.to_string(), job.to_string()),
    ]);
    if let Some(role) = role {
        l.insert(
            ROLE_LABEL.into(),
            match role {
                Role::Coordinator => "coordinator".into(),
                Role::Worker(_) => "worker".into(),
            },
        );
    }
    if let Some(h) = hash {
        l.insert(HASH_LABEL.into(), h.into());
    }
    l
}

/// The StreamJob as controller owner, so garbage collection removes what it owns.
fn owner(job: &StreamJob) -> Vec<OwnerReference> {
    job.controller_owner_ref(&()).map(|o| vec![o]).unwrap_or_default()
}

fn meta(
    name: String,
    namespace: Option<&str>,
    labels: BTreeMap<String, String>,
    owner: &[OwnerReference],
) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: namespace.map(Into::into),
        labels: Some(labels),
        owner_references: Some(owner.to_vec()),
        ..ObjectMeta::default()
    }
}

/// Where a job's checkpoints really go: its own storage, or the operator's
/// default when the job keeps the built-in one.
pub fn effective_storage(spec: &StreamJobSpec, settings: &Settings) -> String {
    match &settings.default_storage {
        Some(storage) if spec.checkpoints.storage == weir_runtime::manifest::CheckpointOptions::default().storage => {
            storage.clone()
        }
        _ => spec.checkpoints.storage.clone(),
    }
}

/// What a status can hold of a container's last words: the `error:` line
/// the weir binary prints when it fails, else the last line, shortened.
fn failure_message(text: &str) -> Option<String> {
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let line = lines.iter().rev().find(|l| l.starts_with("error:")).or(lines.last())?;
    let line = line.strip_prefix("error:").unwrap_or(line).trim();
    let mut short: String = line.chars().take(480).collect();
    if short.len() < line.len() {
        short.push_str(" ...");
    }
    Some(short)
}

/// The role label of the pod that purges a deleted job's checkpoints.
pub const PURGE_ROLE: &str = "purge";

pub fn purge_pod_name(job: &str) -> String {
    format!("{job}-purge")
}

/// The short-lived pod that runs `weir checkpoints purge` for a job deleted
/// under `deletionPolicy: Purge`. It runs like the job's own pods (image,
/// pod template, credentials) because a `file://` volume or the storage's
/// credentials may exist only there, not in the operator's pod.
pub fn purge_pod(job: &StreamJob, settings: &Settings) -> Pod {
    let name = job.metadata.name.clone().unwrap_or_default();
    // The operator's own settings only: the template is merged after the
    // worker's arguments and environment are replaced.
    let mut p = pod(job, Role::Worker(0), settings, "", &owner(job), None);
    let mut l = labels(&name, None, None);
    l.insert(ROLE_LABEL.into(), PURGE_ROLE.into());
    p.metadata.name = Some(purge_pod_name(&name));
    p.metadata.labels = Some(l);
    if let Some(c) = p.spec.as_mut().and_then(|s| s.containers.first_mut()) {
        c.args = Some(vec!["checkpoints".into(), "purge".into(), checkpoint_location(job, settings)]);
        c.env = None;
    }
    if let Ok(Some(t)) = pod_template::parse(job.spec.0.pod_template.as_ref()) {
        pod_template::apply(&mut p, &t);
    }
    p
}

/// The job's own directory under its effective storage, as the runtime
/// lays it out (`<storage>/<namespace>/<name>`).
pub fn checkpoint_location(job: &StreamJob, settings: &Settings) -> String {
    let name = job.metadata.name.as_deref().unwrap_or_default();
    let ns = job.metadata.namespace.as_deref().unwrap_or("default");
    format!("{}/{ns}/{name}", effective_storage(&job.spec.0, settings).trim_end_matches('/'))
}

fn config_map(job: &StreamJob, owner: &[OwnerReference], settings: &Settings) -> ConfigMap {
    let name = job.metadata.name.clone().unwrap_or_default();
    let mut spec = job.spec.0.clone();
    spec.checkpoints.storage = effective_storage(&spec, settings);
    spec.pod_template = None;
    let manifest = serde_json::json!({
        "apiVersion": weir_runtime::manifest::API_VERSION,
        "kind": weir_runtime::manifest::KIND,
        "metadata": { "name": name, "namespace": job.metadata.namespace },
        "spec": spec,
    });
    let yaml = serde_yaml::to_string(&manifest).unwrap_or_default();
    ConfigMap {
        metadata: meta(config_map_name(&name), job.metadata.namespace.as_deref(), labels(&name, None, None), owner),
        data: Some(BTreeMap::from([("job.yaml".to_string(), yaml)])),
        ..ConfigMap::default()
    }
}

fn service(job: &str, namespace: Option<&str>, owner: &[OwnerReference]) -> Service {
    Service {
        metadata: meta(coordinator_name(job), namespace, labels(job, None, None), owner),
        spec: Some(ServiceSpec {
            selector: Some(
                labels(job, Some(Role::Coordinator), None).into_iter().filter(|(k, _)| k != HASH_LABEL).collect(),
            ),
            ports: Some(vec![
                ServicePort {
                    name: Some("workers".into()),
                    port: WORKER_PORT,
                    protocol: Some("TCP".into()),
                    ..ServicePort::default()
                },
                ServicePort {
                    name: Some("http".into()),
                    port: HTTP_PORT,
                    protocol: Some("TCP".into()),
                    ..ServicePort::default()
                },
            ]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// Job pods take traffic from each other (worker registration, shuffle
/// channels) on any port, and from anywhere on the coordinator's HTTP port:
/// the operator and Prometheus read it, and its mutating calls need the
/// job token. Outbound traffic (storage, brokers) is not limited.
fn network_policy(job: &str, namespace: Option<&str>, owner: &[OwnerReference]) -> NetworkPolicy {
    let same_job = LabelSelector {
        match_labels: Some(BTreeMap::from([(JOB_LABEL.to_string(), job.to_string())])),
        ..LabelSelector::default()
    };
    NetworkPolicy {
        metadata: meta(job.to_string(), namespace, labels(job, None, None), owner),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(same_job.clone()),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![
                NetworkPolicyIngressRule {
                    from: Some(vec![NetworkPolicyPeer {
                        pod_selector: Some(same_job),
                        ..NetworkPolicyPeer::default()
                    }]),
                    ..NetworkPolicyIngressRule::default()
                },
                NetworkPolicyIngressRule {
                    ports: Some(vec![NetworkPolicyPort {
                        port: Some(IntOrString::Int(HTTP_PORT)),
                        protocol: Some("TCP".into()),
                        ..NetworkPolicyPort::default()
                    }]),
                    ..NetworkPolicyIngressRule::default()
                },
            ]),
            ..NetworkPolicySpec::default()
        }),
    }
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar { name: name.into(), value: Some(value.into()), ..EnvVar::default() }
}

/// A job pod: the operator's settings, then the user's pod template.
fn pod(
    job: &StreamJob,
    role: Role,
    settings: &Settings,
    hash: &str,
    owner: &[OwnerReference],
    template: Option<&PodTemplateSpec>,
) -> Pod {
    let name = job.metadata.name.clone().unwrap_or_default();
    let ns = job.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let spec = &job.spec.0;
    let image = spec.image.as_deref().unwrap_or(&settings.job_image);
    let token = EnvVar {
        name: "WEIR_JOB_TOKEN".into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: token_secret_name(&name),
                key: TOKEN_KEY.into(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    };
    let (pod_name, args, envs, mounts, volumes) = match role {
        Role::Coordinator => (
            coordinator_name(&name),
            vec!["coordinator".to_string()],
            vec![
                env("WEIR_JOB", "/etc/weir/job.yaml"),
                env("WEIR_LISTEN", format!("0.0.0.0:{WORKER_PORT}")),
                env("WEIR_HTTP", format!("0.0.0.0:{HTTP_PORT}")),
                env("WEIR_WORKERS", spec.workers.to_string()),
                token,
            ],
            vec![VolumeMount {
                name: "job".into(),
                mount_path: "/etc/weir".into(),
                read_only: Some(true),
                ..VolumeMount::default()
            }],
            vec![Volume {
                name: "job".into(),
                config_map: Some(ConfigMapVolumeSource {
                    name: config_map_name(&name),
                    ..ConfigMapVolumeSource::default()
                }),
                ..Volume::default()
            }],
        ),
        Role::Worker(i) => (
            worker_name(&name, i),
            vec!["worker".to_string()],
            vec![
                env("WEIR_COORDINATOR", format!("{}.{ns}.svc:{WORKER_PORT}", coordinator_name(&name))),
                env("WEIR_WORKER_NAME", worker_name(&name, i)),
                token,
            ],
            Vec::new(),
            Vec::new(),
        ),
    };
    // Mutual TLS with the job's other pods, from the job's Secret.
    let (mut envs, mut mounts, mut volumes) = (envs, mounts, volumes);
    for (var, key) in [("WEIR_TLS_CERT", TLS_CERT_KEY), ("WEIR_TLS_KEY", TLS_KEY_KEY), ("WEIR_TLS_CA", TLS_CA_KEY)] {
        envs.push(env(var, format!("{TLS_DIR}/{key}")));
    }
    mounts.push(VolumeMount {
        name: "tls".into(),
        mount_path: TLS_DIR.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    });
    volumes.push(Volume {
        name: "tls".into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(token_secret_name(&name)),
            items: Some(
                [TLS_CERT_KEY, TLS_KEY_KEY, TLS_CA_KEY]
                    .map(|k| KeyToPath { key: k.into(), path: k.into(), mode: None })
                    .to_vec(),
            ),
            // Readable by the job's group (fsGroup), by nobody else.
            default_mode: Some(0o440),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    });
    let resources = spec.resources.as_ref().map(|r| ResourceRequirements {
        requests: Some(r.requests.iter().map(|(k, v)| (k.clone(), Quantity(v.clone()))).collect())
            .filter(|m: &BTreeMap<_, _>| !m.is_empty()),
        limits: Some(r.limits.iter().map(|(k, v)| (k.clone(), Quantity(v.clone()))).collect())
            .filter(|m: &BTreeMap<_, _>| !m.is_empty()),
        ..ResourceRequirements::default()
    });
    let ports = match role {
        Role::Coordinator => Some(vec![
            ContainerPort {
                name: Some("workers".into()),
                container_port: WORKER_PORT,
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some("http".into()),
                container_port: HTTP_PORT,
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            },
        ]),
        Role::Worker(_) => None,
    };
    let mut pod = Pod {
        metadata: meta(pod_name, job.metadata.namespace.as_deref(), labels(&name, Some(role), Some(hash)), owner),
        spec: Some(PodSpec {
            restart_policy: Some("Never".into()),
            image_pull_secrets: Some(
                settings.image_pull_secrets.iter().map(|name| LocalObjectReference { name: name.clone() }).collect(),
            )
            .filter(|s: &Vec<_>| !s.is_empty()),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(65532),
                // Makes mounted volumes writable by the job's user.
                fs_group: Some(65532),
                ..PodSecurityContext::default()
            }),
            containers: vec![Container {
                name: pod_template::MAIN_CONTAINER.into(),
                image: Some(image.into()),
                image_pull_policy: Some(settings.image_pull_policy.clone()),
                command: Some(vec!["weir".into()]),
                args: Some(args),
                // Why a container failed reaches status and events through
                // its termination message: the last log lines.
                termination_message_policy: Some("FallbackToLogsOnError".into()),
                env: Some(envs),
                ports,
                resources,
                volume_mounts: Some(mounts).filter(|m: &Vec<_>| !m.is_empty()),
                env_from: settings.credentials_secret.as_ref().map(|secret| {
                    vec![EnvFromSource {
                        secret_ref: Some(SecretEnvSource { name: secret.clone(), optional: Some(false) }),
                        ..EnvFromSource::default()
                    }]
                }),
                security_context: Some(SecurityContext {
                    allow_privilege_escalation: Some(false),
                    read_only_root_filesystem: Some(true),
                    capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), ..Capabilities::default() }),
                    ..SecurityContext::default()
                }),
                ..Container::default()
            }],
            volumes: Some(volumes).filter(|v: &Vec<_>| !v.is_empty()),
            ..PodSpec::default()
        }),
        ..Pod::default()
    };
    if let Some(t) = template {
        pod_template::apply(&mut pod, t);
    }
    pod
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
