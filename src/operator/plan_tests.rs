use k8s_openapi::api::core::v1::LocalObjectReference;
use kube::api::ObjectMeta;
use weir_runtime::distributed::tls::JobIdentity;

use super::*;
use crate::crd::{CheckpointRef, Condition, JobSpec, SavepointRecord};
use crate::operator::objects::{token_secret, Chore, DIGEST_LABEL, ROLE_LABEL, TLS_DIR};

const MANIFEST: &str = r#"
apiVersion: weir.dev/v1alpha1
kind: StreamJob
metadata: {name: counts, namespace: jobs}
spec:
  parallelism: 2
  workers: 2
  checkpoints: {interval: 1s}
  restartStrategy: {fixedDelay: {attempts: 1, delay: 10s}}
  pipeline:
    source: {generator: {keys: 10}}
    steps: [{keyBy: {field: key}}, {aggregate: {count: true}}]
    sink: {file: {path: /out}}
"#;

const T0: u64 = 1_800_000_000_000;
const ATTEMPT: &str = crate::operator::objects::ATTEMPT_LABEL;

fn settings() -> Settings {
    Settings {
        image_pull_secrets: Vec::new(),
        job_image: "weir:test".into(),
        image_pull_policy: "IfNotPresent".into(),
        default_storage: Some("s3://bucket/weir".into()),
        credentials_secret: Some("weir-s3".into()),
        network_policies: true,
        node_lost_after_ms: 60_000,
        progress_deadline_ms: 600_000,
        status_interval_ms: 2_000,
        cert_manager: None,
    }
}

fn job(edit: impl FnOnce(&mut weir_runtime::manifest::StreamJobSpec)) -> StreamJob {
    let parsed = weir_runtime::manifest::StreamJob::from_yaml(MANIFEST).unwrap();
    let mut spec = parsed.spec;
    edit(&mut spec);
    let mut j = StreamJob::new("counts", JobSpec(spec));
    j.metadata = ObjectMeta {
        name: Some("counts".into()),
        namespace: Some("jobs".into()),
        uid: Some("u-1".into()),
        generation: Some(3),
        ..ObjectMeta::default()
    };
    j
}

/// The job's current pods (as its status names them), all in `phase`.
fn pods(job: &StreamJob, phase: PodPhase) -> Vec<PodView> {
    let digest = spec_digest(&job.spec.0);
    let names = job.status.as_ref().and_then(|s| s.deployed.as_ref()).map(|d| d.pods.clone()).unwrap_or_default();
    names
        .into_iter()
        .zip(roles(&job.spec.0))
        .map(|(name, role)| PodView {
            name,
            role,
            phase,
            digest: digest.chars().take(32).collect(),
            exit_code: None,
            reason: None,
            message: None,
            deleting: false,
            node_not_ready_since_ms: None,
            waiting: None,
        })
        .collect()
}

fn names(p: &Plan) -> Vec<String> {
    p.create.iter().map(|pod| pod.metadata.name.clone().unwrap_or_default()).collect()
}

fn running(latest_at: u64) -> Option<CoordinatorView> {
    let latest = CheckpointRef {
        id: 7,
        path: "file:///chk-7".into(),
        completed_at: rfc3339(latest_at),
        duration_ms: 12,
        size_bytes: 99,
    };
    Some(CoordinatorView {
        state: "Running".into(),
        restored_from: Some(5),
        latest: Some(latest.clone()),
        history: vec![latest],
        failed: 0,
    })
}

/// Every pod running and the coordinator reporting checkpoint 7 at `T0`.
fn up(j: &StreamJob, now_ms: u64) -> Observed {
    Observed { pods: pods(j, PodPhase::Running), coordinator: running(T0), now_ms, ..Default::default() }
}

/// A job as `job` makes it, reconciled once while it has no pods and once
/// while they all run.
fn deployed(edit: impl FnOnce(&mut weir_runtime::manifest::StreamJobSpec)) -> StreamJob {
    let mut j = job(edit);
    step(&mut j, &Observed { now_ms: T0, ..Observed::default() });
    let o = up(&j, T0);
    step(&mut j, &o);
    j
}

/// Plans, then feeds the plan's status back as the job's, as the API server would.
fn step(job: &mut StreamJob, observed: &Observed) -> Plan {
    let p = plan(job, observed, &settings());
    job.status = Some(p.status.clone());
    p
}

fn condition<'a>(s: &'a StreamJobStatus, t: &str) -> &'a Condition {
    s.conditions.iter().find(|c| c.type_ == t).unwrap_or_else(|| panic!("no {t} condition"))
}

#[test]
fn first_reconcile_creates_config_map_service_and_one_pod_per_role() {
    let mut j = job(|_| {});
    let p = step(&mut j, &Observed { now_ms: T0, ..Observed::default() });
    assert!(p.config_map.as_ref().unwrap().data.as_ref().unwrap()["job.yaml"].contains("kind: StreamJob"));
    assert_eq!(p.service.as_ref().unwrap().metadata.name.as_deref(), Some("counts-coordinator"));
    assert_eq!(names(&p), ["counts-coordinator-1", "counts-worker-0-1", "counts-worker-1-1"]);
    let selector = p.service.as_ref().unwrap().spec.as_ref().unwrap().selector.clone().unwrap();
    assert_eq!(selector.get(ATTEMPT), Some(&"1".to_string()), "the Service selects this attempt's coordinator");
    let owner = &p.create[0].metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!((owner.kind.as_str(), owner.controller), ("StreamJob", Some(true)));
    assert_eq!(p.status.phase, Phase::Starting);
    assert_eq!(p.status.observed_generation, Some(3));
    assert!(p.events.iter().any(|e| e.reason == "Deploying"));
    let container = &p.create[1].spec.as_ref().unwrap().containers[0];
    assert_eq!(container.image.as_deref(), Some("weir:test"));
    assert_eq!(container.security_context.as_ref().unwrap().read_only_root_filesystem, Some(true));
}

#[test]
fn job_pods_pull_their_image_with_the_operators_pull_secrets() {
    let j = job(|_| {});
    let mut with_secret = settings();
    with_secret.image_pull_secrets = vec!["registry-login".into()];
    let p = plan(&j, &Observed { now_ms: T0, ..Observed::default() }, &with_secret);
    for pod in &p.create {
        let secrets = pod.spec.as_ref().unwrap().image_pull_secrets.clone().unwrap_or_default();
        assert_eq!(secrets, [LocalObjectReference { name: "registry-login".into() }], "{:?}", pod.metadata.name);
    }
    let none = step(&mut job(|_| {}), &Observed { now_ms: T0, ..Observed::default() });
    assert!(none.create.iter().all(|p| p.spec.as_ref().unwrap().image_pull_secrets.is_none()));
}

#[test]
fn every_job_pod_talks_mutual_tls_with_the_identity_in_the_jobs_secret() {
    let mut j = job(|_| {});
    let p = step(&mut j, &Observed { now_ms: T0, ..Observed::default() });
    for pod in &p.create {
        let spec = pod.spec.as_ref().unwrap();
        let tls = spec.volumes.as_ref().unwrap().iter().find(|v| v.name == "tls").expect("a tls volume");
        assert_eq!(tls.secret.as_ref().unwrap().secret_name.as_deref(), Some("counts-token"));
        let c = &spec.containers[0];
        assert!(c.volume_mounts.as_ref().unwrap().iter().any(|m| m.name == "tls" && m.mount_path == TLS_DIR));
        let env: Vec<_> = c.env.as_ref().unwrap().iter().map(|e| (e.name.as_str(), e.value.clone())).collect();
        for (var, file) in [("WEIR_TLS_CERT", "tls.crt"), ("WEIR_TLS_KEY", "tls.key"), ("WEIR_TLS_CA", "ca.crt")] {
            assert!(env.contains(&(var, Some(format!("{TLS_DIR}/{file}")))), "{var} in {env:?}");
        }
    }
    let identity = JobIdentity::generate("counts").unwrap();
    let secret = token_secret(&j, "t0k3n", Some(&identity));
    let data = secret.string_data.unwrap();
    assert_eq!(data.keys().collect::<Vec<_>>(), ["ca.crt", "tls.crt", "tls.key", "token"]);
    assert!(identity.tls().is_ok(), "the identity makes a working TLS set-up");
}

#[test]
fn a_running_job_reports_its_latest_checkpoint_and_is_ready() {
    let mut j = job(|_| {});
    step(&mut j, &Observed { now_ms: T0, ..Observed::default() });
    let p = {
        let o = up(&j, T0 + 500);
        step(&mut j, &o)
    };
    assert_eq!(p.status.phase, Phase::Running);
    assert_eq!(p.status.checkpoints.as_ref().unwrap().latest.as_ref().unwrap().id, 7);
    assert_eq!(p.status.restored_from, Some(5));
    assert_eq!(condition(&p.status, "Ready").status, "True");
    assert_eq!(condition(&p.status, "CheckpointsHealthy").status, "True");
}

#[test]
fn reapplying_an_unchanged_job_changes_no_pod_and_no_status() {
    let mut j = job(|_| {});
    step(&mut j, &Observed { now_ms: T0, ..Observed::default() });
    let observed = Observed {
        pods: pods(&j, PodPhase::Running),
        coordinator: running(T0),
        now_ms: T0 + 1000,
        ..Default::default()
    };
    step(&mut j, &observed);
    let later = Observed { now_ms: T0 + 60_000, coordinator: running(T0 + 59_000), ..observed };
    let before = j.status.clone().unwrap();
    let second = step(&mut j, &later);
    assert!(second.delete.is_empty() && second.actions.is_empty());
    assert!(second.events.is_empty(), "{:?}", second.events);
    let ready = |s: &StreamJobStatus| condition(s, "Ready").last_transition_time.clone();
    assert_eq!(ready(&before), ready(&second.status), "lastTransitionTime kept while unchanged");
    assert_eq!(second.create.len(), 0);
}

#[test]
fn a_failed_pod_is_recreated_after_the_fixed_delay_and_the_budget_then_runs_out() {
    let mut j = deployed(|_| {});
    let mut failed = pods(&j, PodPhase::Running);
    failed[1].phase = PodPhase::Failed;
    failed[1].exit_code = Some(137);
    failed[1].reason = Some("Error".into());
    let p = step(
        &mut j,
        &Observed { pods: failed.clone(), coordinator: running(T0), now_ms: T0 + 1000, ..Default::default() },
    );
    assert_eq!(p.status.phase, Phase::Restarting);
    assert_eq!(p.status.restarts.next_restart_at.as_deref(), Some(rfc3339_millis(T0 + 11_000).as_str()));
    let f = p.status.restarts.last_failure.as_ref().unwrap();
    assert_eq!((f.pod.as_str(), f.exit_code), ("counts-worker-0-1", Some(137)));
    assert!(p.delete.is_empty(), "not before the delay");
    assert!(p.events.iter().any(|e| e.warning && e.reason == "PodFailed"));

    let early = step(
        &mut j,
        &Observed { pods: failed.clone(), coordinator: running(T0), now_ms: T0 + 5000, ..Default::default() },
    );
    assert!(early.delete.is_empty());
    let due = step(
        &mut j,
        &Observed { pods: failed.clone(), coordinator: running(T0), now_ms: T0 + 11_000, ..Default::default() },
    );
    assert_eq!(due.delete, ["counts-worker-0-1"]);
    assert_eq!(names(&due), ["counts-worker-0-2"], "only the failed pod is replaced, under a new name");
    assert_eq!(due.status.restarts.count, 1);

    // The second failure exceeds `attempts: 1`.
    let mut failed = pods(&j, PodPhase::Running);
    failed[1].phase = PodPhase::Failed;
    let p = step(
        &mut j,
        &Observed { pods: failed.clone(), coordinator: running(T0), now_ms: T0 + 20_000, ..Default::default() },
    );
    assert_eq!(p.status.phase, Phase::Failed);
    assert!(p.events.iter().any(|e| e.warning && e.reason == "RestartBudgetExhausted"));
    assert!(p.delete.is_empty(), "failed pods are kept for their logs");
    let after = step(&mut j, &Observed { pods: failed, coordinator: None, now_ms: T0 + 30_000, ..Default::default() });
    assert_eq!(after.status.phase, Phase::Failed);
    assert!(after.create.is_empty() && after.delete.is_empty(), "no further restarts");
}

#[test]
fn a_vanished_pod_counts_as_a_failure() {
    let mut j = deployed(|s| s.restart_strategy = Default::default());
    let mut gone = pods(&j, PodPhase::Running);
    gone.remove(2);
    let p = step(&mut j, &Observed { pods: gone, coordinator: running(T0), now_ms: T0 + 100, ..Default::default() });
    let f = p.status.restarts.last_failure.unwrap();
    assert_eq!((f.pod.as_str(), f.reason.as_str()), ("counts-worker-1-1", "PodDeleted"));
    assert_eq!(p.status.phase, Phase::Restarting, "the default exponential delay restarts");
}

#[test]
fn suspend_deletes_pods_and_resume_recreates_them() {
    let mut j = job(|_| {});
    step(&mut j, &Observed { now_ms: T0, ..Observed::default() });
    j.spec.0.suspend = true;
    let p = {
        let o = up(&j, T0);
        step(&mut j, &o)
    };
    assert_eq!(p.delete.len(), 3);
    assert_eq!(p.status.phase, Phase::Suspended);
    assert_eq!(condition(&p.status, "Suspended").status, "True");
    j.spec.0.suspend = false;
    let p = step(&mut j, &Observed { now_ms: T0 + 1000, ..Observed::default() });
    assert_eq!(names(&p), ["counts-coordinator-2", "counts-worker-0-2", "counts-worker-1-2"]);
    assert_eq!(condition(&p.status, "Suspended").status, "False");
}

#[test]
fn suspend_in_savepoint_mode_stops_with_a_savepoint_first() {
    let mut j = job(|s| s.upgrade_mode = UpgradeMode::Savepoint);
    step(&mut j, &Observed { now_ms: T0, ..Observed::default() });
    j.spec.0.suspend = true;
    let p = {
        let o = up(&j, T0);
        step(&mut j, &o)
    };
    assert_eq!(p.actions, [Action::TriggerSavepoint { kind: SavepointKind::Suspend, nonce: None }]);
    assert!(p.delete.is_empty());
}

#[test]
fn a_parallelism_change_in_last_state_mode_recreates_every_pod() {
    let mut j = job(|_| {});
    step(&mut j, &Observed { now_ms: T0, ..Observed::default() });
    let old_pods = pods(&j, PodPhase::Running);
    j.spec.0.parallelism = 3;
    let p = step(&mut j, &Observed { pods: old_pods, coordinator: running(T0), now_ms: T0, ..Default::default() });
    assert_eq!(p.delete.len(), 3);
    assert!(p.events.iter().any(|e| e.reason == "Upgrading"));
    let p = step(&mut j, &Observed { now_ms: T0 + 2000, ..Observed::default() });
    let digest = p.create[0].metadata.labels.as_ref().unwrap()[DIGEST_LABEL].clone();
    assert!(spec_digest(&j.spec.0).starts_with(&digest));
    assert_eq!(names(&p), ["counts-coordinator-2", "counts-worker-0-2", "counts-worker-1-2"]);
}

#[test]
fn an_invalid_spec_is_reported_in_conditions_naming_the_field() {
    let mut j = job(|s| s.workers = 0);
    let p = step(&mut j, &Observed { now_ms: T0, ..Observed::default() });
    assert!(p.create.is_empty() && p.config_map.is_none());
    let ready = condition(&p.status, "Ready");
    assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "InvalidSpec"));
    assert!(ready.message.contains("spec.workers"), "{}", ready.message);
    assert!(p.events.iter().any(|e| e.warning && e.reason == "InvalidSpec"));
    let again = step(&mut j, &Observed { now_ms: T0 + 1000, ..Observed::default() });
    assert!(again.events.is_empty(), "the same problem is not announced twice");
}

#[test]
fn checkpoints_turn_unhealthy_when_they_stop_advancing() {
    let mut j = job(|_| {});
    step(&mut j, &Observed { now_ms: T0, ..Observed::default() });
    let p = {
        let o = up(&j, T0 + 120_000);
        step(&mut j, &o)
    };
    let c = condition(&p.status, "CheckpointsHealthy");
    assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "Stalled"));
}

#[test]
fn nonces_trigger_one_savepoint_and_one_restart() {
    let mut j = job(|_| {});
    step(&mut j, &Observed { now_ms: T0, ..Observed::default() });
    j.spec.0.savepoint_nonce = Some(1);
    let p = {
        let o = up(&j, T0);
        step(&mut j, &o)
    };
    assert_eq!(p.actions, [Action::TriggerSavepoint { kind: SavepointKind::Manual, nonce: Some(1) }]);
    j.spec.0.restart_nonce = Some(9);
    let p = {
        let o = up(&j, T0);
        step(&mut j, &o)
    };
    assert_eq!(p.delete.len(), 3);
    assert_eq!(p.status.restart_nonce, Some(9));
    let p = {
        let o = up(&j, T0);
        step(&mut j, &o)
    };
    assert!(p.delete.is_empty(), "a nonce acts once");
}

#[test]
fn changing_only_the_restart_strategy_restarts_nothing() {
    let j = job(|_| {});
    let mut k = j.clone();
    k.spec.0.restart_strategy = Default::default();
    k.spec.0.suspend = false;
    assert_eq!(spec_digest(&j.spec.0), spec_digest(&k.spec.0));
}

#[test]
fn a_pod_deleted_for_a_restart_is_recreated_without_counting_another_failure() {
    let mut j = job(|s| s.restart_strategy.fixed_delay.as_mut().unwrap().attempts = 5);
    step(&mut j, &Observed { now_ms: T0, ..Observed::default() });
    let o = up(&j, T0);
    step(&mut j, &o);
    let mut failed = pods(&j, PodPhase::Running);
    failed[0].phase = PodPhase::Failed;
    step(&mut j, &Observed { pods: failed.clone(), coordinator: None, now_ms: T0 + 1000, ..Default::default() });
    let due =
        step(&mut j, &Observed { pods: failed.clone(), coordinator: None, now_ms: T0 + 11_000, ..Default::default() });
    assert_eq!(due.delete, ["counts-coordinator-1"]);
    assert_eq!(names(&due), ["counts-coordinator-2"]);
    let replaced = pods(&j, PodPhase::Pending);
    let p = step(&mut j, &Observed { pods: replaced, coordinator: None, now_ms: T0 + 12_000, ..Default::default() });
    assert_eq!(p.status.restarts.failures, 1, "one failure, not two");
    assert_eq!(p.status.phase, Phase::Starting);
    assert!(p.delete.is_empty() && p.create.is_empty());
}

#[test]
fn a_stateless_upgrade_starts_the_new_pods_without_old_checkpoints() {
    let mut j = job(|s| s.upgrade_mode = UpgradeMode::Stateless);
    step(&mut j, &Observed { now_ms: T0, ..Observed::default() });
    let old_pods = pods(&j, PodPhase::Running);
    j.spec.0.parallelism = 3;
    step(&mut j, &Observed { pods: old_pods, coordinator: running(T0), now_ms: T0 + 5, ..Default::default() });
    let p = step(&mut j, &Observed { now_ms: T0 + 2000, ..Observed::default() });
    let env = p.create[0].spec.as_ref().unwrap().containers[0].env.clone().unwrap();
    let reset = env.iter().find(|e| e.name == "WEIR_IGNORE_CHECKPOINTS_BEFORE_MS").expect("reset marker");
    assert_eq!(reset.value.as_deref(), Some((T0 + 5).to_string().as_str()));
}

#[test]
fn every_restart_strategy_decides_about_a_failed_pod() {
    use weir_runtime::manifest::{ExponentialDelay, FailureRate, FixedDelay, NoRestart, RestartStrategy};
    let fixed = FixedDelay { attempts: 3, delay: "2s".parse().unwrap() };
    let rate =
        FailureRate { max_failures_per_interval: 2, interval: "1m".parse().unwrap(), delay: "1s".parse().unwrap() };
    let strategies = [
        (RestartStrategy { none: Some(NoRestart {}), ..Default::default() }, Phase::Failed),
        (RestartStrategy { fixed_delay: Some(fixed), ..Default::default() }, Phase::Restarting),
        (RestartStrategy { failure_rate: Some(rate), ..Default::default() }, Phase::Restarting),
        (
            RestartStrategy { exponential_delay: Some(ExponentialDelay::default()), ..Default::default() },
            Phase::Restarting,
        ),
    ];
    for (strategy, phase) in strategies {
        let mut j = job(|s| s.restart_strategy = strategy.clone());
        step(&mut j, &Observed { now_ms: T0, ..Observed::default() });
        let o = up(&j, T0);
        step(&mut j, &o);
        let mut lost = pods(&j, PodPhase::Running);
        lost[2].phase = PodPhase::Unknown;
        let p =
            step(&mut j, &Observed { pods: lost, coordinator: running(T0), now_ms: T0 + 100, ..Default::default() });
        assert_eq!(p.status.phase, phase, "{strategy:?}");
        assert_eq!(p.status.restarts.last_failure.unwrap().pod, "counts-worker-1-1", "a lost node is a failure");
    }
}

#[test]
fn failed_checkpoints_turn_checkpoints_unhealthy() {
    let mut j = job(|_| {});
    step(&mut j, &Observed { now_ms: T0, ..Observed::default() });
    let o = up(&j, T0 + 100);
    step(&mut j, &o);
    let mut o = up(&j, T0 + 200);
    if let Some(c) = o.coordinator.as_mut() {
        c.failed = 2;
    }
    let p = step(&mut j, &o);
    let c = condition(&p.status, "CheckpointsHealthy");
    assert_eq!(c.status, "False");
    assert!(c.message.contains("2 checkpoint(s) failed"), "{}", c.message);
}

#[test]
fn operator_defaults_fill_in_storage_and_credentials() {
    let mut j = job(|_| {});
    let p = step(&mut j, &Observed { now_ms: T0, ..Observed::default() });
    let manifest = &p.config_map.unwrap().data.unwrap()["job.yaml"];
    assert!(manifest.contains("storage: s3://bucket/weir"), "{manifest}");
    let env_from = p.create[1].spec.as_ref().unwrap().containers[0].env_from.clone().unwrap();
    assert_eq!(env_from[0].secret_ref.as_ref().unwrap().name, "weir-s3");
}

#[test]
fn a_pod_template_volume_reaches_every_job_pod_but_not_the_job_file() {
    let mut j = job(|s| {
        s.pod_template = Some(serde_json::json!({"spec": {
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "weir-data"}}],
            "containers": [{"name": "weir", "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
        }}));
    });
    let p = step(&mut j, &Observed { now_ms: T0, ..Observed::default() });
    assert_eq!(p.create.len(), 3);
    for pod in &p.create {
        let spec = pod.spec.as_ref().unwrap();
        assert!(spec.volumes.as_ref().unwrap().iter().any(|v| v.name == "data"), "{:?}", pod.metadata.name);
        assert!(spec.containers[0].volume_mounts.as_ref().unwrap().iter().any(|m| m.mount_path == "/data"));
    }
    assert!(!p.config_map.unwrap().data.unwrap()["job.yaml"].contains("podTemplate"));
}

#[test]
fn a_malformed_pod_template_is_an_invalid_spec_naming_the_field() {
    let mut j = job(|s| s.pod_template = Some(serde_json::json!({"spec": {"tolerations": {"key": "x"}}})));
    let p = step(&mut j, &Observed { now_ms: T0, ..Observed::default() });
    assert!(p.create.is_empty());
    let ready = condition(&p.status, "Ready");
    assert_eq!(ready.reason, "InvalidSpec");
    assert!(ready.message.starts_with("spec.podTemplate.spec.tolerations: "), "{}", ready.message);
}

#[test]
fn the_purge_and_savepoint_pods_run_like_a_job_pod_and_name_the_jobs_directory() {
    let j = job(|s| {
        s.pod_template = Some(serde_json::json!({"spec": {
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "weir-data"}}],
            "containers": [{"name": "weir", "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
        }}));
    });
    for (chore, verb) in [(Chore::Purge, "purge"), (Chore::Savepoint, "savepoint")] {
        let p = chore_pod(&j, &settings(), chore);
        assert_eq!(p.metadata.name.as_deref(), Some(format!("counts-{verb}").as_str()));
        assert_eq!(p.metadata.labels.as_ref().unwrap()[ROLE_LABEL], verb);
        assert!(p.metadata.owner_references.is_none(), "a foreground deletion must not collect it mid-{verb}");
        let spec = p.spec.unwrap();
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        let c = &spec.containers[0];
        assert_eq!(c.args.clone().unwrap(), ["checkpoints", verb, "s3://bucket/weir/jobs/counts"]);
        assert_eq!(c.image.as_deref(), Some("weir:test"));
        assert!(c.env_from.is_some(), "the storage credentials are there");
        assert!(c.volume_mounts.as_ref().unwrap().iter().any(|m| m.mount_path == "/data"), "the job's volume is there");
        assert!(c.liveness_probe.is_none() && c.ports.is_none(), "it serves no probes");
        // The job's Secret goes first under foreground deletion; the pod must not wait for it.
        assert!(c.volume_mounts.iter().flatten().all(|m| m.name != "tls"), "{:?}", c.volume_mounts);
        assert!(spec.volumes.iter().flatten().all(|v| v.name != "tls"));
    }
}

#[test]
fn a_failure_seen_mid_second_still_waits_the_whole_delay() {
    let mut j = deployed(|s| {
        s.restart_strategy.fixed_delay =
            Some(weir_runtime::manifest::FixedDelay { attempts: 3, delay: "1s".parse().unwrap() });
    });
    let mut failed = pods(&j, PodPhase::Running);
    failed[1].phase = PodPhase::Failed;
    let seen = T0 + 1_700;
    step(&mut j, &Observed { pods: failed.clone(), coordinator: running(T0), now_ms: seen, ..Default::default() });
    let early = step(
        &mut j,
        &Observed { pods: failed.clone(), coordinator: running(T0), now_ms: seen + 999, ..Default::default() },
    );
    assert!(early.delete.is_empty(), "restarted {} ms after the failure", 999);
    let due =
        step(&mut j, &Observed { pods: failed, coordinator: running(T0), now_ms: seen + 1_000, ..Default::default() });
    assert_eq!(due.delete, ["counts-worker-0-1"]);
}

#[test]
fn a_failed_pods_last_words_reach_status_and_the_event() {
    let mut j = deployed(|_| {});
    let mut failed = pods(&j, PodPhase::Running);
    failed[0].phase = PodPhase::Failed;
    failed[0].exit_code = Some(1);
    failed[0].message = Some(
        "INFO completed checkpoint 3\nerror: task source failed: bad record at /in/a.jsonl:2: expected value\n".into(),
    );
    let p = step(&mut j, &Observed { pods: failed, coordinator: None, now_ms: T0 + 1000, ..Default::default() });
    let f = p.status.restarts.last_failure.unwrap();
    assert_eq!(f.message.as_deref(), Some("task source failed: bad record at /in/a.jsonl:2: expected value"));
    let event = p.events.iter().find(|e| e.reason == "PodFailed").unwrap();
    assert!(event.note.contains("/in/a.jsonl:2"), "{}", event.note);
    let long = "x".repeat(5000);
    assert_eq!(failure_message(&long).unwrap().chars().count(), 484, "kept short: 480 characters and ' ...'");
    assert_eq!(failure_message("\n \n"), None);
}

/// The job after its pods were created and all run.
fn running_job(edit: impl FnOnce(&mut weir_runtime::manifest::StreamJobSpec)) -> StreamJob {
    deployed(edit)
}

#[test]
fn a_pod_on_a_lost_node_is_one_failure_force_deleted_and_replaced_under_a_new_name() {
    let mut j = running_job(|s| {
        s.restart_strategy.fixed_delay =
            Some(weir_runtime::manifest::FixedDelay { attempts: 3, delay: "1s".parse().unwrap() });
    });
    let mut lost = pods(&j, PodPhase::Running);
    lost[2].node_not_ready_since_ms = Some(T0);
    // Within the grace period the node may come back: nothing happens.
    let p = step(
        &mut j,
        &Observed { pods: lost.clone(), coordinator: running(T0), now_ms: T0 + 59_000, ..Default::default() },
    );
    assert!(p.status.restarts.last_failure.is_none() && p.delete.is_empty() && p.force_delete.is_empty());
    // Past it, one failure, however many reconciles see the pod.
    for t in [60_000, 60_200, 60_500] {
        step(&mut j, &Observed { pods: lost.clone(), coordinator: running(T0), now_ms: T0 + t, ..Default::default() });
    }
    assert_eq!(j.status.as_ref().unwrap().restarts.failures, 1);
    assert_eq!(j.status.as_ref().unwrap().restarts.last_failure.as_ref().unwrap().reason, "NodeLost");
    let due = step(
        &mut j,
        &Observed { pods: lost.clone(), coordinator: running(T0), now_ms: T0 + 61_000, ..Default::default() },
    );
    assert_eq!(due.force_delete, ["counts-worker-1-1"], "no kubelet is left to confirm a graceful end");
    assert_eq!(names(&due), ["counts-worker-1-2"], "the stuck pod's name does not block the replacement");
    // The old pod stays stuck Terminating: it is stale now, never a failure.
    let mut seen = pods(&j, PodPhase::Running);
    let mut stuck = lost[2].clone();
    stuck.deleting = true;
    seen.push(stuck);
    let later =
        step(&mut j, &Observed { pods: seen, coordinator: running(T0), now_ms: T0 + 200_000, ..Default::default() });
    assert_eq!(later.status.restarts.failures, 1);
    assert_eq!(later.force_delete, ["counts-worker-1-1"], "asked again until it is gone");
    assert_eq!(later.status.phase, Phase::Running);
}

#[test]
fn a_drain_longer_than_the_restart_delay_is_one_failure_and_the_replacement_waits_for_the_evicted_pod() {
    let mut j = running_job(|s| {
        s.restart_strategy.fixed_delay =
            Some(weir_runtime::manifest::FixedDelay { attempts: 1, delay: "1s".parse().unwrap() });
    });
    let mut evicted = pods(&j, PodPhase::Running);
    evicted[1].deleting = true;
    evicted[1].reason = Some("Evicted".into());
    step(
        &mut j,
        &Observed { pods: evicted.clone(), coordinator: running(T0), now_ms: T0 + 1_000, ..Default::default() },
    );
    assert_eq!(j.status.as_ref().unwrap().restarts.last_failure.as_ref().unwrap().reason, "Evicted");
    // The restart is due while the evicted pod still shuts down gracefully.
    let due = step(
        &mut j,
        &Observed { pods: evicted.clone(), coordinator: running(T0), now_ms: T0 + 2_000, ..Default::default() },
    );
    assert!(due.create.is_empty(), "a stale pod that still runs could write beside the new attempt");
    let waiting = condition(&due.status, "Reconciling");
    assert!(waiting.message.contains("counts-worker-0-1"), "{}", waiting.message);
    for t in [5_000, 20_000, 30_000] {
        let p = step(
            &mut j,
            &Observed { pods: evicted.clone(), coordinator: running(T0), now_ms: T0 + t, ..Default::default() },
        );
        assert!(p.create.is_empty());
    }
    // Gone: the replacement starts, and the budget of one restart holds.
    let mut rest = evicted;
    rest.remove(1);
    let p = step(&mut j, &Observed { pods: rest, coordinator: running(T0), now_ms: T0 + 31_000, ..Default::default() });
    assert_eq!(names(&p), ["counts-worker-0-2"]);
    assert_eq!(p.status.restarts.failures, 1);
    assert_ne!(p.status.phase, Phase::Failed);
}

#[test]
fn a_restart_nonce_after_the_budget_ran_out_starts_again_with_a_fresh_budget() {
    let mut j = running_job(|_| {});
    for (i, t) in [1_000, 30_000].into_iter().enumerate() {
        let mut failed = pods(&j, PodPhase::Running);
        failed[0].phase = PodPhase::Failed;
        step(&mut j, &Observed { pods: failed.clone(), coordinator: None, now_ms: T0 + t, ..Default::default() });
        if i == 0 {
            step(&mut j, &Observed { pods: failed, coordinator: None, now_ms: T0 + t + 10_000, ..Default::default() });
        }
    }
    assert_eq!(j.status.as_ref().unwrap().phase, Phase::Failed, "attempts: 1 allows one restart");
    j.spec.0.restart_nonce = Some(1);
    let mut failed = pods(&j, PodPhase::Running);
    failed[0].phase = PodPhase::Failed;
    let p = step(&mut j, &Observed { pods: failed, coordinator: None, now_ms: T0 + 40_000, ..Default::default() });
    assert_eq!(p.status.phase, Phase::Starting);
    assert_eq!(p.status.restarts.failures, 0, "the budget starts over");
    assert_eq!(p.status.restarts.count, 1, "the count of restarts is the job's history");
    let p = step(&mut j, &Observed { now_ms: T0 + 41_000, ..Observed::default() });
    assert_eq!(names(&p), ["counts-coordinator-3", "counts-worker-0-3", "counts-worker-1-3"]);
    // The first failure of the new run is restarted, not fatal.
    let mut failed = pods(&j, PodPhase::Running);
    failed[0].phase = PodPhase::Failed;
    let p = step(&mut j, &Observed { pods: failed, coordinator: None, now_ms: T0 + 50_000, ..Default::default() });
    assert_eq!(p.status.phase, Phase::Restarting);
}

#[test]
fn a_spec_change_after_the_budget_ran_out_resumes_the_job() {
    let mut j = running_job(|s| {
        s.restart_strategy = weir_runtime::manifest::RestartStrategy {
            none: Some(weir_runtime::manifest::NoRestart {}),
            ..Default::default()
        }
    });
    let mut failed = pods(&j, PodPhase::Running);
    failed[1].phase = PodPhase::Failed;
    let p =
        step(&mut j, &Observed { pods: failed.clone(), coordinator: None, now_ms: T0 + 1_000, ..Default::default() });
    assert_eq!(p.status.phase, Phase::Failed, "{:?}", p.status.conditions);
    j.spec.0.parallelism = 3;
    let p = step(&mut j, &Observed { pods: failed, coordinator: None, now_ms: T0 + 2_000, ..Default::default() });
    assert_eq!(p.status.phase, Phase::Starting);
    assert_eq!(p.delete.len(), 3, "the failed attempt's pods go");
}

#[test]
fn an_operator_upgrade_with_new_defaults_restarts_nothing_and_keeps_the_jobs_storage() {
    let mut j = running_job(|_| {});
    let before = j.status.clone().unwrap().deployed.unwrap();
    let mut upgraded = settings();
    upgraded.job_image = "weir:0.2.0".into();
    upgraded.default_storage = Some("s3://elsewhere/weir".into());
    upgraded.credentials_secret = Some("other".into());
    let p = plan(&j, &up(&j, T0 + 5_000), &upgraded);
    assert!(p.create.is_empty() && p.delete.is_empty() && p.force_delete.is_empty() && p.actions.is_empty());
    assert_eq!(p.status.deployed.as_ref(), Some(&before), "the image and the storage stay as deployed");
    let manifest = &p.config_map.unwrap().data.unwrap()["job.yaml"];
    assert!(manifest.contains("storage: s3://bucket/weir"), "{manifest}");
    // A failover recreates the pod as it was, image included.
    j.status = Some(p.status);
    let mut failed = pods(&j, PodPhase::Running);
    failed[2].phase = PodPhase::Failed;
    let _ = plan(
        &j,
        &Observed { pods: failed.clone(), coordinator: None, now_ms: T0 + 6_000, ..Default::default() },
        &upgraded,
    );
    let mut k = j.clone();
    k.status = Some(
        plan(
            &j,
            &Observed { pods: failed.clone(), coordinator: None, now_ms: T0 + 6_000, ..Default::default() },
            &upgraded,
        )
        .status,
    );
    let due =
        plan(&k, &Observed { pods: failed, coordinator: None, now_ms: T0 + 17_000, ..Default::default() }, &upgraded);
    assert_eq!(due.create.len(), 1);
    assert_eq!(due.create[0].spec.as_ref().unwrap().containers[0].image.as_deref(), Some("weir:test"));
    // A spec change takes the new default image, but never moves the state.
    k.spec.0.parallelism = 3;
    k.status = Some(due.status);
    let p = plan(&k, &up(&k, T0 + 20_000), &upgraded);
    let d = p.status.deployed.unwrap();
    assert_eq!((d.image.as_str(), d.checkpoint_storage.as_str()), ("weir:0.2.0", "s3://bucket/weir"));
}

#[test]
fn the_spec_digest_is_sha256_of_canonical_json_and_stable_across_releases() {
    let j = job(|_| {});
    let digest = spec_digest(&j.spec.0);
    assert_eq!(digest.len(), 64);
    // Computed once and written down: a change here restarts every job
    // whose spec did not change, so it must be deliberate.
    assert_eq!(digest, GOLDEN_DIGEST, "the digest of an unchanged spec changed");
    let mut out = String::new();
    canonical_json(&serde_json::json!({"b": [1, {"z": null, "a": "x"}], "a": true}), &mut out);
    assert_eq!(out, r#"{"a":true,"b":[1,{"a":"x","z":null}]}"#);
}

const GOLDEN_DIGEST: &str = "f3d78da479b5cc9e100205043a5aa8c03b0fc0ac0ee8edf811299a4b4b37a4ed";

#[test]
fn a_job_name_too_long_for_its_pod_names_is_refused_naming_the_field() {
    let mut j = job(|_| {});
    j.metadata.name = Some("a".repeat(41));
    let p = plan(&j, &Observed { now_ms: T0, ..Observed::default() }, &settings());
    let ready = condition(&p.status, "Ready");
    assert!(ready.message.contains("metadata.name: at most 40 characters"), "{}", ready.message);
    assert!(p.create.is_empty());
}

#[test]
fn stale_pods_of_an_older_attempt_are_deleted_and_never_count_as_failures() {
    let mut j = running_job(|_| {});
    let mut seen = pods(&j, PodPhase::Running);
    let mut stale = seen[1].clone();
    stale.name = "counts-worker-0-0".into();
    stale.phase = PodPhase::Failed;
    seen.push(stale);
    let p = step(&mut j, &Observed { pods: seen, coordinator: running(T0), now_ms: T0 + 1_000, ..Default::default() });
    assert_eq!(p.delete, ["counts-worker-0-0"]);
    assert!(p.status.restarts.last_failure.is_none());
    assert_eq!(p.status.phase, Phase::Running);
}

/// The job as the API server would return it after the plan's status.
fn fixture(job: &StreamJob) -> String {
    let mut value = serde_json::to_value(job).unwrap();
    value["metadata"] = serde_json::json!({
        "name": job.metadata.name, "namespace": job.metadata.namespace, "generation": job.metadata.generation,
    });
    serde_yaml::to_string(&value).unwrap()
}

/// Argo CD's health check (`integrations/argocd`) is tested against these
/// statuses; they are made here by the operator's own plan, so the check
/// cannot drift from what the operator writes. `WEIR_BLESS=1` rewrites them.
#[test]
fn argocd_health_fixtures_are_what_the_operator_writes() {
    let mut cases: Vec<(&str, StreamJob)> = Vec::new();
    let fixed = |attempts| {
        move |s: &mut weir_runtime::manifest::StreamJobSpec| {
            s.restart_strategy.fixed_delay =
                Some(weir_runtime::manifest::FixedDelay { attempts, delay: "10s".parse().unwrap() })
        }
    };

    let mut j = running_job(|_| {});
    let o = up(&j, T0 + 1_000);
    step(&mut j, &o);
    cases.push(("running", j.clone()));

    let mut finished = j.clone();
    let done = pods(&finished, PodPhase::Succeeded);
    step(&mut finished, &Observed { pods: done, coordinator: None, now_ms: T0 + 9_000, ..Default::default() });
    cases.push(("finished", finished));

    let mut old = j.clone();
    old.metadata.generation = Some(4);
    cases.push(("old-generation", old));

    let mut stalled = j.clone();
    let o = up(&stalled, T0 + 120_000);
    step(&mut stalled, &o);
    cases.push(("checkpoints-stalled", stalled));

    let mut awaiting = job(|_| {});
    step(&mut awaiting, &Observed { now_ms: T0, ..Observed::default() });
    let mut first = running(T0).unwrap();
    first.latest = None;
    first.history.clear();
    let started = pods(&awaiting, PodPhase::Running);
    step(&mut awaiting, &Observed { pods: started, coordinator: Some(first), now_ms: T0 + 900, ..Default::default() });
    cases.push(("awaiting-checkpoint", awaiting));

    let mut restarting = running_job(fixed(5));
    let mut failed = pods(&restarting, PodPhase::Running);
    failed[2].phase = PodPhase::Failed;
    failed[2].reason = Some("OOMKilled".into());
    failed[2].exit_code = Some(137);
    step(
        &mut restarting,
        &Observed { pods: failed.clone(), coordinator: running(T0), now_ms: T0 + 2_000, ..Default::default() },
    );
    cases.push(("restarting", restarting));

    let mut exhausted = running_job(fixed(0));
    step(&mut exhausted, &Observed { pods: failed, coordinator: None, now_ms: T0 + 2_000, ..Default::default() });
    cases.push(("budget-exhausted", exhausted));

    let mut pulling = job(|s| s.image = Some("weir:typo".into()));
    step(&mut pulling, &Observed { now_ms: T0, ..Observed::default() });
    let mut waiting = pods(&pulling, PodPhase::Pending);
    waiting[1].waiting = Some("ImagePullBackOff: Back-off pulling image \"weir:typo\"".into());
    step(
        &mut pulling,
        &Observed { pods: waiting.clone(), coordinator: None, now_ms: T0 + 1_000, ..Default::default() },
    );
    step(&mut pulling, &Observed { pods: waiting, coordinator: None, now_ms: T0 + 601_000, ..Default::default() });
    cases.push(("image-pull-backoff", pulling));

    let mut suspended = j.clone();
    suspended.spec.0.suspend = true;
    let o = up(&suspended, T0 + 3_000);
    step(&mut suspended, &o);
    cases.push(("suspended", suspended));

    let mut invalid = j.clone();
    invalid.spec.0.parallelism = 0;
    let o = up(&invalid, T0 + 3_000);
    step(&mut invalid, &o);
    cases.push(("invalid-edit", invalid));

    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/integrations/argocd/weir.dev/StreamJob/testdata");
    let bless = std::env::var_os("WEIR_BLESS").is_some();
    for (name, job) in cases {
        let path = format!("{dir}/{name}.yaml");
        let want = fixture(&job);
        if bless {
            std::fs::write(&path, &want).unwrap();
        }
        let stored = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(stored == want, "{path} is stale: run this test with WEIR_BLESS=1 and commit it");
    }
}

#[test]
fn pod_local_file_storage_is_refused_in_operator_mode_and_a_shared_volume_is_not() {
    let refused = |storage: &str, template: Option<serde_json::Value>| {
        let mut j = job(|s| {
            s.checkpoints.storage = storage.into();
            s.pod_template = template;
        });
        let p = step(&mut j, &Observed { now_ms: T0, ..Observed::default() });
        let ready = condition(&p.status, "Ready");
        (ready.reason == "InvalidSpec").then(|| ready.message.clone())
    };
    let volume = |kind: serde_json::Value| {
        let mut v = serde_json::json!({"name": "data"});
        v.as_object_mut().unwrap().extend(kind.as_object().unwrap().clone());
        Some(serde_json::json!({"spec": {
            "volumes": [v],
            "containers": [{"name": "weir", "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
        }}))
    };
    let pvc = serde_json::json!({"persistentVolumeClaim": {"claimName": "weir-data"}});
    let message = refused("file://./chk", None).expect("a relative path is inside the pod");
    assert!(message.starts_with("spec.checkpoints.storage: file://./chk is inside each pod"), "{message}");
    assert!(refused("file:///data/chk", None).is_some(), "no volume at all");
    assert!(
        refused("file:///data/chk", volume(serde_json::json!({"emptyDir": {}}))).is_some(),
        "an emptyDir dies with its pod"
    );
    assert!(refused("file:///database/chk", volume(pvc.clone())).is_some(), "/database is not under /data");
    assert_eq!(refused("file:///data/chk", volume(pvc)), None);
    assert_eq!(refused("s3://bucket/weir", None), None);
}

#[test]
fn a_restart_pending_at_suspension_is_not_counted_on_resume() {
    let mut j = running_job(|_| {});
    let mut failed = pods(&j, PodPhase::Running);
    failed[1].phase = PodPhase::Failed;
    step(&mut j, &Observed { pods: failed.clone(), coordinator: None, now_ms: T0 + 1_000, ..Default::default() });
    assert!(j.status.as_ref().unwrap().restarts.next_restart_at.is_some());
    j.spec.0.suspend = true;
    step(&mut j, &Observed { pods: failed, coordinator: None, now_ms: T0 + 2_000, ..Default::default() });
    j.spec.0.suspend = false;
    let p = step(&mut j, &Observed { now_ms: T0 + 60_000, ..Observed::default() });
    assert_eq!(p.status.restarts.count, 0, "a resume is not a restart");
    assert_eq!(names(&p), ["counts-coordinator-2", "counts-worker-0-2", "counts-worker-1-2"]);
}

// Savepoints: triggered in the background, followed, retried, kept and disposed of.

const SAVEPOINTS: &str = "s3://bucket/weir/jobs/counts/savepoints";

/// `up`, with the coordinator saying `trigger` of the savepoint in flight.
fn up_with(j: &StreamJob, now_ms: u64, trigger: TriggerView) -> Observed {
    Observed { trigger: Some(trigger), ..up(j, now_ms) }
}

/// Plans, and answers the plan's trigger as the controller does when the
/// coordinator accepts it.
fn step_accepting(j: &mut StreamJob, observed: &Observed) -> Plan {
    let mut p = plan(j, observed, &settings());
    for action in p.actions.clone() {
        let Action::TriggerSavepoint { kind, nonce } = action;
        let id = format!("{}-1", observed.now_ms);
        p.events.push(savepoint_triggered(&mut p.status, kind, nonce, id, observed.now_ms));
    }
    j.status = Some(p.status.clone());
    p
}

fn tick(j: &mut StreamJob, now: u64) -> Plan {
    let o = up(j, now);
    step(j, &o)
}

fn tick_with(j: &mut StreamJob, now: u64, trigger: TriggerView) -> Plan {
    let o = up_with(j, now, trigger);
    step(j, &o)
}

fn tick_accepting(j: &mut StreamJob, now: u64) -> Plan {
    let o = up(j, now);
    step_accepting(j, &o)
}

fn manual_savepoint(j: &mut StreamJob, nonce: i64, at: u64) -> Plan {
    j.spec.0.savepoint_nonce = Some(nonce);
    step_accepting(j, &up(j, at));
    let path = format!("{SAVEPOINTS}/sp-{at}");
    step(j, &up_with(j, at + 1000, TriggerView::Completed { path, checkpoint: 7 }))
}

#[test]
fn a_new_savepoint_nonce_triggers_once_and_the_completed_savepoint_enters_the_history() {
    let mut j = running_job(|_| {});
    j.spec.0.savepoint_nonce = Some(1);
    let p = tick_accepting(&mut j, T0);
    assert_eq!(p.actions, [Action::TriggerSavepoint { kind: SavepointKind::Manual, nonce: Some(1) }]);
    let trigger = p.status.savepoint_info.trigger.clone().expect("the trigger is recorded");
    assert_eq!(trigger.id, format!("{T0}-1"));

    let p = tick_with(&mut j, T0 + 1000, TriggerView::InProgress);
    assert!(p.actions.is_empty(), "one trigger at a time");
    assert!(p.requeue_ms <= 1_000, "a savepoint in flight is looked after soon");

    let path = format!("{SAVEPOINTS}/sp-{T0}");
    let p = tick_with(&mut j, T0 + 2000, TriggerView::Completed { path: path.clone(), checkpoint: 7 });
    let record = &p.status.savepoints[0];
    assert_eq!((record.path.as_str(), record.checkpoint, record.kind), (path.as_str(), Some(7), SavepointKind::Manual));
    assert_eq!(record.nonce, Some(1));
    assert_eq!(p.status.savepoint_info.trigger, None);
    assert_eq!(p.status.last_savepoint.as_ref().map(|s| s.path.as_str()), Some(path.as_str()));
    assert!(p.events.iter().any(|e| e.reason == "Savepoint" && e.note.contains("checkpoint 7")));

    let p = tick(&mut j, T0 + 3000);
    assert!(p.actions.is_empty(), "the nonce was acted on");
}

#[test]
fn a_failed_manual_savepoint_is_retried_with_backoff_then_given_up() {
    let mut j = running_job(|_| {});
    j.spec.0.savepoint_nonce = Some(4);
    tick_accepting(&mut j, T0);
    let p = tick_with(&mut j, T0 + 1000, TriggerView::Failed("checkpoint 8 expired".into()));
    let info = &p.status.savepoint_info;
    assert_eq!((info.failures, info.last_error.as_deref()), (1, Some("checkpoint 8 expired")));
    assert!(p.events.iter().any(|e| e.warning && e.reason == "SavepointFailed"));
    assert!(tick(&mut j, T0 + 5000).actions.is_empty(), "not before the backoff");

    let mut at = T0 + 11_000;
    for _ in 0..2 {
        let p = tick_accepting(&mut j, at);
        assert_eq!(p.actions.len(), 1, "tried again after the backoff");
        tick_with(&mut j, at + 500, TriggerView::Unknown("the coordinator restarted".into()));
        at += 400_000;
    }
    let status = j.status.clone().unwrap();
    assert_eq!(status.savepoint_info.nonce, Some(4), "given up after three failures");
    assert!(tick(&mut j, at).actions.is_empty());
    j.spec.0.savepoint_nonce = Some(5);
    assert_eq!(tick(&mut j, at + 1).actions.len(), 1, "a new nonce tries again");
}

#[test]
fn a_savepoint_past_its_timeout_or_without_its_coordinator_counts_as_failed() {
    let mut j = running_job(|s| s.savepoints.timeout = "30s".parse().unwrap());
    j.spec.0.savepoint_nonce = Some(1);
    tick_accepting(&mut j, T0);
    let p = tick_with(&mut j, T0 + 29_000, TriggerView::InProgress);
    assert!(p.status.savepoint_info.trigger.is_some());
    let p = tick_with(&mut j, T0 + 31_000, TriggerView::InProgress);
    assert_eq!(p.status.savepoint_info.trigger, None);
    assert!(p.status.savepoint_info.last_error.as_deref().unwrap().contains("spec.savepoints.timeout"));

    let mut k = running_job(|_| {});
    k.spec.0.savepoint_nonce = Some(1);
    tick_accepting(&mut k, T0);
    let mut gone = up(&k, T0 + 1000);
    gone.pods[0].phase = PodPhase::Failed;
    let p = step(&mut k, &gone);
    assert!(p.status.savepoint_info.last_error.as_deref().unwrap().contains("coordinator ended"));
}

#[test]
fn a_savepoint_mode_upgrade_keeps_the_job_running_while_its_savepoint_fails() {
    let mut j = running_job(|s| s.upgrade_mode = UpgradeMode::Savepoint);
    let generation = j.status.as_ref().unwrap().observed_generation;
    j.spec.0.parallelism = 3;
    j.metadata.generation = Some(4);
    let p = tick_accepting(&mut j, T0);
    assert_eq!(p.actions, [Action::TriggerSavepoint { kind: SavepointKind::Upgrade, nonce: None }]);
    assert!(p.delete.is_empty() && p.create.is_empty(), "nothing goes before the savepoint");
    assert_eq!(p.status.observed_generation, generation, "the new generation is not acted on yet");

    let mut at = T0;
    for n in 1..=3 {
        let p = tick_with(&mut j, at + 1000, TriggerView::Failed("a worker is gone".into()));
        assert!(p.delete.is_empty(), "failure {n}: the job keeps running");
        assert_eq!(p.status.phase, Phase::Running);
        at += 400_000;
        tick_accepting(&mut j, at);
    }
    let p = tick_with(&mut j, at + 1000, TriggerView::Failed("a worker is gone".into()));
    let p2 = tick(&mut j, at + 2000);
    assert!(p.delete.is_empty() && p2.delete.is_empty());
    let stalled = condition(&p2.status, "Stalled");
    assert_eq!((stalled.status.as_str(), stalled.reason.as_str()), ("True", "SavepointFailing"));
    assert!(
        stalled.message.contains("a worker is gone") && stalled.message.contains("onFailure"),
        "{}",
        stalled.message
    );
}

#[test]
fn with_on_failure_last_state_a_failed_upgrade_savepoint_goes_on_from_the_newest_checkpoint() {
    let mut j = running_job(|s| {
        s.upgrade_mode = UpgradeMode::Savepoint;
        s.savepoints.on_failure = weir_runtime::manifest::SavepointFallback::LastState;
    });
    j.spec.0.parallelism = 3;
    tick_accepting(&mut j, T0);
    let p = tick_with(&mut j, T0 + 1000, TriggerView::Failed("expired".into()));
    assert_eq!(p.delete.len(), 3, "the pods go at once");
    assert!(p.events.iter().any(|e| e.warning && e.reason == "NoSavepoint" && e.note.contains("expired")));
    assert!(p.events.iter().any(|e| e.reason == "Upgrading"));
}

#[test]
fn a_stop_savepoint_is_read_from_the_coordinators_last_words_and_the_upgrade_goes_on() {
    let mut j = running_job(|s| s.upgrade_mode = UpgradeMode::Savepoint);
    j.spec.0.parallelism = 3;
    tick_accepting(&mut j, T0);
    let path = format!("{SAVEPOINTS}/sp-{T0}");
    let mut stopped = up(&j, T0 + 3000);
    stopped.pods[0].phase = PodPhase::Succeeded;
    stopped.pods[0].message = Some(weir_runtime::distributed::triggers::stop_message(&path, 12));
    let p = step(&mut j, &stopped);
    let record = &p.status.savepoints[0];
    assert_eq!(
        (record.path.as_str(), record.checkpoint, record.kind),
        (path.as_str(), Some(12), SavepointKind::Upgrade)
    );
    assert!(p.events.iter().any(|e| e.reason == "Stopped"));
    assert_eq!(p.delete.len(), 3, "then the upgrade goes on");
    assert_eq!(p.status.deployed.as_ref().unwrap().digest, spec_digest(&j.spec.0));
}

#[test]
fn a_job_that_is_not_running_is_upgraded_from_its_newest_checkpoint_unless_told_to_wait() {
    let failed_job = |wait: bool| {
        let mut j = running_job(|s| {
            s.upgrade_mode = UpgradeMode::Savepoint;
            s.restart_strategy.fixed_delay = None;
            s.restart_strategy.none = Some(weir_runtime::manifest::NoRestart {});
            if wait {
                s.savepoints.when_not_running = weir_runtime::manifest::SavepointFallback::Wait;
            }
        });
        let mut failed = pods(&j, PodPhase::Running);
        failed[1].phase = PodPhase::Failed;
        step(&mut j, &Observed { pods: failed.clone(), coordinator: None, now_ms: T0 + 1000, ..Default::default() });
        assert_eq!(j.status.as_ref().unwrap().phase, Phase::Failed);
        j.spec.0.parallelism = 3;
        let p = step(&mut j, &Observed { pods: failed, coordinator: None, now_ms: T0 + 2000, ..Default::default() });
        (j, p)
    };
    let (_, p) = failed_job(false);
    assert!(p.actions.is_empty());
    assert_eq!(p.delete.len(), 3);
    assert!(p.events.iter().any(|e| e.warning && e.reason == "NoSavepoint" && e.note.contains("not running")));

    let (_, p) = failed_job(true);
    assert!(p.delete.is_empty() && p.actions.is_empty());
    let stalled = condition(&p.status, "Stalled");
    assert_eq!((stalled.status.as_str(), stalled.reason.as_str()), ("True", "SavepointImpossible"));
    assert!(stalled.message.contains("whenNotRunning"), "{}", stalled.message);
}

#[test]
fn savepoints_past_the_history_limit_are_disposed_of_by_a_pod_of_the_job() {
    let mut j = running_job(|s| s.savepoints.max_history = 2);
    for (nonce, at) in [(1, T0), (2, T0 + 10_000), (3, T0 + 20_000)] {
        manual_savepoint(&mut j, nonce, at);
    }
    let status = j.status.clone().unwrap();
    let kept: Vec<&str> = status.savepoints.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(kept, [format!("{SAVEPOINTS}/sp-{}", T0 + 20_000), format!("{SAVEPOINTS}/sp-{}", T0 + 10_000)]);
    let info = &status.savepoint_info;
    assert_eq!(info.disposing, [format!("sp-{T0}")], "the oldest is being disposed of");

    // The pod was asked for in the reconcile that dropped it.
    let mut k = running_job(|s| s.savepoints.max_history = 1);
    manual_savepoint(&mut k, 1, T0);
    k.spec.0.savepoint_nonce = Some(2);
    tick_accepting(&mut k, T0 + 5000);
    let p = tick_with(&mut k, T0 + 6000, TriggerView::Completed { path: format!("{SAVEPOINTS}/sp-2"), checkpoint: 9 });
    let pod = p.create.iter().find(|p| p.metadata.name.as_deref() == Some("counts-dispose")).expect("a disposal pod");
    let args = pod.spec.as_ref().unwrap().containers[0].args.clone().unwrap();
    assert_eq!(args, ["checkpoints", "dispose", "s3://bucket/weir/jobs/counts", &format!("sp-{T0}")]);
    assert!(pod.metadata.owner_references.is_some(), "owned by the job, so it goes with it");

    let running =
        Observed { disposal: Some(ChoreView { phase: PodPhase::Running, message: None }), ..up(&k, T0 + 7000) };
    let p = step(&mut k, &running);
    assert!(p.create.is_empty() && !p.delete.contains(&"counts-dispose".to_string()));
    let done = ChoreView { phase: PodPhase::Succeeded, message: Some("disposed of 1 savepoint(s)".into()) };
    let ended = Observed { disposal: Some(done), ..up(&k, T0 + 8000) };
    let p = step(&mut k, &ended);
    assert!(p.delete.contains(&"counts-dispose".to_string()));
    assert!(p.status.savepoint_info.dispose.is_empty() && p.status.savepoint_info.disposing.is_empty());
    assert!(p.events.iter().any(|e| e.reason == "SavepointsDisposed"));
    let p = tick(&mut k, T0 + 9000);
    assert!(p.create.is_empty(), "nothing left to dispose of");
}

#[test]
fn savepoints_older_than_max_age_go_but_the_newest_stays_and_foreign_paths_are_only_dropped() {
    let mut j = running_job(|s| s.savepoints.max_age = Some("1h".parse().unwrap()));
    manual_savepoint(&mut j, 1, T0);
    let status = j.status.as_mut().unwrap();
    status.savepoints.push(SavepointRecord {
        path: "s3://elsewhere/old/savepoints/sp-1".into(),
        taken_at: rfc3339(T0 - 1000),
        ..SavepointRecord::default()
    });
    let p = tick(&mut j, T0 + 7_200_000);
    assert_eq!(p.status.savepoints.len(), 1, "the newest is kept whatever its age");
    assert!(p.status.savepoint_info.dispose.is_empty(), "nothing outside the job's savepoints is deleted");
    assert!(p.events.iter().any(|e| e.reason == "SavepointNotDisposed"));
}

#[test]
fn the_job_file_leaves_out_the_operators_savepoint_options() {
    let mut j = job(|s| s.savepoints.max_history = 3);
    let p = step(&mut j, &Observed { now_ms: T0, ..Observed::default() });
    let yaml = &p.config_map.unwrap().data.unwrap()["job.yaml"];
    assert!(!yaml.contains("savepoints"), "{yaml}");
    weir_runtime::manifest::StreamJob::from_yaml(yaml).expect("the pods can read it");
}

#[test]
fn an_invalid_edit_of_a_running_job_keeps_it_reconciled_under_its_last_valid_spec() {
    let mut j = running_job(|_| {});
    j.spec.0.parallelism = 0;
    j.metadata.generation = Some(4);
    let p = tick(&mut j, T0 + 1000);
    assert!(p.delete.is_empty() && p.create.is_empty(), "the running pods are left as they are");
    let stalled = condition(&p.status, "Stalled");
    assert_eq!((stalled.status.as_str(), stalled.reason.as_str()), ("True", "InvalidSpec"));
    assert!(
        stalled.message.contains("spec.parallelism") && stalled.message.contains("last valid spec"),
        "{}",
        stalled.message
    );
    assert_eq!(condition(&p.status, "Ready").status, "False");
    assert_eq!(p.events.iter().filter(|e| e.reason == "InvalidSpec").count(), 1);
    assert!(
        p.config_map.unwrap().data.unwrap()["job.yaml"].contains("parallelism: 2"),
        "the job file is the last valid one"
    );

    // A pod that fails meanwhile is replaced as the last valid spec says.
    let mut failed = up(&j, T0 + 2000);
    failed.pods[1].phase = PodPhase::Failed;
    let p = step(&mut j, &failed);
    assert_eq!(p.status.phase, Phase::Restarting, "the failure is handled, not left until the spec is fixed");
    assert!(tick(&mut j, T0 + 3000).events.iter().all(|e| e.reason != "InvalidSpec"), "announced once");
    let mut replaced = Observed { pods: failed.pods.clone(), ..up(&j, T0 + 13_000) };
    replaced.pods[1].phase = PodPhase::Failed;
    let p = step(&mut j, &replaced);
    assert_eq!(names(&p), ["counts-worker-0-2"], "the failed worker is replaced under the old spec");

    // Fixing the edit deploys it.
    j.spec.0.parallelism = 3;
    let p = tick(&mut j, T0 + 20_000);
    assert!(p.events.iter().any(|e| e.reason == "Upgrading"), "{:?}", p.events);
    assert_eq!(condition(&p.status, "Stalled").status, "False");
}

#[test]
fn a_pod_replaced_after_the_operator_took_cert_manager_keeps_its_deployments_ca_until_the_next_deployment() {
    let mut j = deployed(|_| {});
    let issued = Settings {
        cert_manager: Some(
            crate::operator::certificates::IssuerRef::parse("ClusterIssuer/weir-ca", "cert-manager.io").unwrap(),
        ),
        ..settings()
    };
    let tls_secret = |p: &Plan| {
        let pod = p.create.first().expect("a pod is created");
        let volumes = pod.spec.as_ref().unwrap().volumes.clone().unwrap_or_default();
        volumes.iter().find(|v| v.name == "tls").and_then(|v| v.secret.clone()).and_then(|s| s.secret_name)
    };
    let mut failed = pods(&j, PodPhase::Running);
    failed[1].phase = PodPhase::Failed;
    let at = |j: &mut StreamJob, now_ms| {
        let o = Observed { pods: failed.clone(), coordinator: running(T0), now_ms, ..Default::default() };
        let p = plan(j, &o, &issued);
        j.status = Some(p.status.clone());
        p
    };
    at(&mut j, T0 + 1000);
    let replaced = at(&mut j, T0 + 11_000);
    assert_eq!(names(&replaced), ["counts-worker-0-2"]);
    assert_eq!(tls_secret(&replaced).as_deref(), Some("counts-token"), "its peers hold the job's own CA");

    j.spec.0.parallelism = 3;
    let o = Observed { now_ms: T0 + 20_000, ..Default::default() };
    let redeployed = plan(&j, &o, &issued);
    assert_eq!(redeployed.status.deployed.as_ref().and_then(|d| d.tls_secret.as_deref()), Some("counts-tls"));
    j.status = Some(redeployed.status.clone());
    let created = plan(&j, &o, &issued);
    assert_eq!(tls_secret(&created).as_deref(), Some("counts-tls"), "a new deployment takes the issued certificate");
}
