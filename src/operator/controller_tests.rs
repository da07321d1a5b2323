//! The controller against a mocked API server (tower-test): the requests a
//! reconcile makes, in order, and what it does when the server fails.

use std::sync::{Arc, Mutex};

use http::{Request, Response};
use kube::client::Body;
use kube::Client;
use serde_json::{json, Value};

use super::*;
use crate::operator::certificates::IssuerRef;
use crate::operator::coordinator_api::CoordinatorApi;
use crate::operator::metrics::OperatorMetrics;
use crate::operator::objects::ATTEMPT_LABEL;
use crate::operator::plan::CoordinatorView;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

#[derive(Default)]
struct FakeCoordinator {
    view: Option<CoordinatorView>,
    /// The `stop` of each background trigger asked for.
    triggers: Mutex<Vec<bool>>,
    /// What a trigger's status is said to be.
    trigger: Option<plan::TriggerView>,
    fail: bool,
}

#[async_trait]
impl CoordinatorApi for FakeCoordinator {
    async fn view(&self, _: &str, _: &str) -> Option<CoordinatorView> {
        self.view.clone()
    }
    async fn trigger_savepoint(&self, _: &str, _: &str, stop: bool) -> Result<String, String> {
        if let Ok(mut s) = self.triggers.lock() {
            s.push(stop);
        }
        if self.fail {
            Err("coordinator unreachable".into())
        } else {
            Ok("1800000000000-1".into())
        }
    }
    async fn savepoint_trigger(&self, _: &str, _: &str, _: &str) -> Option<plan::TriggerView> {
        self.trigger.clone()
    }
}

#[derive(Default)]
struct CollectedEvents(Mutex<Vec<plan::Event>>);

#[async_trait]
impl Events for CollectedEvents {
    async fn publish(&self, _: &StreamJob, event: &plan::Event) {
        if let Ok(mut e) = self.0.lock() {
            e.push(event.clone());
        }
    }
}

struct Setup {
    ctx: Arc<Context>,
    handle: Handle,
    coordinator: Arc<FakeCoordinator>,
    events: Arc<CollectedEvents>,
}

/// Another context with the same parts (for a fresh mocked API server).
fn clone_context(ctx: &Context) -> Context {
    Context {
        client: ctx.client.clone(),
        coordinator: ctx.coordinator.clone(),
        events: ctx.events.clone(),
        settings: ctx.settings.clone(),
        metrics: ctx.metrics.clone(),
        failures: Default::default(),
        node_warning: Default::default(),
        leadership: None,
        caches: Default::default(),
        deletion_triggers: Default::default(),
    }
}

fn setup(coordinator: FakeCoordinator) -> Setup {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let coordinator = Arc::new(coordinator);
    let events = Arc::new(CollectedEvents::default());
    let ctx = Arc::new(Context {
        client,
        coordinator: coordinator.clone(),
        events: events.clone(),
        settings: Settings {
            image_pull_secrets: Vec::new(),
            job_image: "weir:test".into(),
            image_pull_policy: "IfNotPresent".into(),
            default_storage: None,
            credentials_secret: None,
            network_policies: true,
            node_lost_after_ms: 60_000,
            progress_deadline_ms: 600_000,
            status_interval_ms: 2_000,
            cert_manager: None,
        },
        metrics: Arc::new(OperatorMetrics::default()),
        failures: Default::default(),
        node_warning: Default::default(),
        leadership: None,
        caches: Default::default(),
        deletion_triggers: Default::default(),
    });
    Setup { ctx, handle, coordinator, events }
}

fn job_json(extra_spec: Value, deleting: bool, storage: &str) -> Value {
    let mut spec = json!({
        "parallelism": 1,
        "checkpoints": {"interval": "1s", "storage": storage},
        "restartStrategy": {"fixedDelay": {"attempts": 2, "delay": "10s"}},
        "pipeline": {
            "source": {"generator": {"keys": 10}},
            "steps": [{"keyBy": {"field": "key"}}, {"aggregate": {"count": true}}],
            "sink": {"file": {"path": "/out"}}
        },
        // file:// checkpoints live on a volume every job pod mounts.
        "podTemplate": {"spec": {
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "weir-data"}}],
            "containers": [{"name": "weir", "volumeMounts": [{"name": "data", "mountPath": "/tmp"}]}]
        }}
    });
    if let (Some(s), Some(extra)) = (spec.as_object_mut(), extra_spec.as_object()) {
        for (k, v) in extra {
            s.insert(k.clone(), v.clone());
        }
    }
    let mut metadata = json!({
        "name": "counts", "namespace": "jobs", "uid": "u-1", "generation": 2,
        "resourceVersion": "10", "finalizers": [FINALIZER]
    });
    if deleting {
        metadata["deletionTimestamp"] = json!(plan::rfc3339(wall_ms()));
    }
    json!({"apiVersion": "weir.dev/v1alpha1", "kind": "StreamJob", "metadata": metadata, "spec": spec})
}

fn pod_json(name: &str, role: &str, phase: &str, digest: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "jobs", "labels": {
            JOB_LABEL: "counts", ROLE_LABEL: role, DIGEST_LABEL: digest.chars().take(32).collect::<String>(), ATTEMPT_LABEL: "1"
        }},
        "status": {"phase": phase, "containerStatuses": [{
            "name": "weir", "ready": false, "restartCount": 0, "image": "weir:test", "imageID": "",
            "state": {"terminated": {"exitCode": 137, "reason": "Error"}}
        }]}
    })
}

/// `status.deployed` of a job whose attempt-1 pods were created.
fn deployed(digest: &str) -> Value {
    json!({
        "digest": digest, "image": "weir:test", "checkpointStorage": "file:///tmp/weir-test-none", "attempt": 1,
        "pods": ["counts-coordinator-1", "counts-worker-0-1"], "created": true
    })
}

fn not_found() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"})
}

fn pod_list(items: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "1"}, "items": items})
}

/// What a first reconcile asks before it creates pods: the job's pods,
/// each child object (looked up, then applied), the job's Secret (made).
fn first_deployment() -> Vec<(&'static str, &'static str, u16, Value)> {
    vec![
        ("GET", "/api/v1/namespaces/jobs/pods?", 200, pod_list(vec![])),
        ("GET", "/api/v1/namespaces/jobs/configmaps/counts-job", 404, not_found()),
        ("PATCH", "/api/v1/namespaces/jobs/configmaps/counts-job?", 200, Value::Null),
        ("GET", "/api/v1/namespaces/jobs/services/counts-coordinator", 404, not_found()),
        ("PATCH", "/api/v1/namespaces/jobs/services/counts-coordinator?", 200, Value::Null),
        ("GET", "/apis/networking.k8s.io/v1/namespaces/jobs/networkpolicies/counts", 404, not_found()),
        ("PATCH", "/apis/networking.k8s.io/v1/namespaces/jobs/networkpolicies/counts?", 200, Value::Null),
        ("GET", "/api/v1/namespaces/jobs/secrets/counts-token", 404, not_found()),
        ("POST", "/api/v1/namespaces/jobs/secrets?", 201, Value::Null),
    ]
}

/// Answers requests in order; each expectation is (method, path fragment,
/// status, response). Returns every request's method, URI and JSON body.
async fn serve(mut handle: Handle, script: Vec<(&str, &str, u16, Value)>) -> Vec<(String, String, Value)> {
    let mut seen = Vec::new();
    for (method, fragment, status, response) in script {
        let (request, send) = handle.next_request().await.unwrap_or_else(|| panic!("expected {method} {fragment}"));
        let uri = request.uri().to_string();
        assert_eq!(request.method().as_str(), method, "request to {uri}");
        assert!(uri.contains(fragment), "expected {method} {fragment}, got {uri}");
        let body = request.into_body().collect_bytes().await.unwrap_or_default();
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let reply = if response.is_null() { body.clone() } else { response };
        // A string is sent as plain text, as the API server answers a path
        // it does not serve (an API group that is not installed).
        let bytes = match &reply {
            Value::String(text) => text.clone().into_bytes(),
            _ => serde_json::to_vec(&reply).unwrap(),
        };
        send.send_response(Response::builder().status(status).body(Body::from(bytes)).unwrap());
        seen.push((method.to_string(), uri, body));
    }
    seen
}

fn parse(v: &Value) -> Arc<StreamJob> {
    Arc::new(serde_json::from_value(v.clone()).unwrap())
}

#[tokio::test]
async fn first_creation_applies_config_map_service_pods_then_status() {
    let s = setup(FakeCoordinator::default());
    let job = job_json(json!({}), false, "file:///tmp/weir-test-none");
    let server = tokio::spawn(serve(
        s.handle,
        [
            first_deployment(),
            vec![
                ("POST", "/api/v1/namespaces/jobs/pods?", 201, Value::Null),
                ("POST", "/api/v1/namespaces/jobs/pods?", 201, Value::Null),
                ("PATCH", "/apis/weir.dev/v1alpha1/namespaces/jobs/streamjobs/counts/status?", 200, job.clone()),
            ],
        ]
        .concat(),
    ));
    let action = reconcile(parse(&job), s.ctx.clone()).await.expect("reconcile succeeds");
    let seen = server.await.unwrap();
    assert!(
        seen[2].1.contains("fieldManager=weir-operator"),
        "server-side apply with one field manager: {}",
        seen[2].1
    );
    let policy = &seen[6].2["spec"];
    assert_eq!(policy["podSelector"]["matchLabels"][JOB_LABEL], "counts");
    assert_eq!(policy["ingress"][0]["from"][0]["podSelector"]["matchLabels"][JOB_LABEL], "counts");
    assert_eq!(policy["ingress"][1]["ports"][0]["port"], 8081, "the HTTP API is reachable; it guards mutations");
    let token = seen[8].2["stringData"]["token"].as_str().unwrap_or_default().to_string();
    assert_eq!(token.len(), 64, "a 256-bit token, hex: {}", seen[8].2);
    assert_eq!(seen[8].2["metadata"]["ownerReferences"][0]["kind"], "StreamJob", "deleted with the job");
    let env = seen[9].2["spec"]["containers"][0]["env"].to_string();
    assert!(env.contains("counts-token") && !env.contains(&token), "pods read the token from the Secret: {env}");
    assert_eq!(seen[9].2["metadata"]["ownerReferences"][0]["kind"], "StreamJob");
    assert_eq!(seen[9].2["metadata"]["name"], "counts-coordinator-1");
    assert_eq!(seen[10].2["metadata"]["name"], "counts-worker-0-1");
    let status = &seen[11].2["status"];
    assert_eq!(status["deployed"]["pods"], json!(["counts-coordinator-1", "counts-worker-0-1"]));
    assert_eq!(status["deployed"]["created"], true);
    assert_eq!(status["phase"], "Starting");
    assert_eq!(status["observedGeneration"], 2);
    assert_eq!(action, Action::requeue(Duration::from_millis(1000)));
    assert!(s.events.0.lock().unwrap().iter().any(|e| e.reason == "Deploying"));
}

#[tokio::test]
async fn a_failed_pod_records_the_failure_and_schedules_a_restart() {
    let s = setup(FakeCoordinator::default());
    let mut job = job_json(json!({}), false, "file:///tmp/weir-test-none");
    let hash = plan::spec_digest(&parse(&job).spec.0);
    job["status"] = json!({"phase": "Running", "deployed": deployed(&hash), "restarts": {"count": 0}});
    let pods = pod_list(vec![
        pod_json("counts-coordinator-1", "coordinator", "Running", &hash),
        pod_json("counts-worker-0-1", "worker", "Failed", &hash),
    ]);
    let server = tokio::spawn(serve(
        s.handle,
        vec![("GET", "/pods?", 200, pods), ("PATCH", "/streamjobs/counts/status?", 200, job.clone())],
    ));
    reconcile(parse(&job), s.ctx.clone()).await.expect("reconcile succeeds");
    let seen = server.await.unwrap();
    let status = &seen[1].2["status"];
    assert_eq!(status["phase"], "Restarting");
    assert_eq!(status["restarts"]["lastFailure"]["pod"], "counts-worker-0-1");
    assert_eq!(status["restarts"]["lastFailure"]["exitCode"], 137);
    assert!(status["restarts"]["nextRestartAt"].is_string());
    assert!(s.events.0.lock().unwrap().iter().any(|e| e.warning && e.reason == "PodFailed"));
}

/// A job with `extra_spec` whose attempt-1 pods run: the job, its spec
/// digest and the pod list the API server answers.
fn running_job_json(extra_spec: Value) -> (Value, String, Value) {
    let mut job = job_json(extra_spec, false, "file:///tmp/weir-test-none");
    let hash = plan::spec_digest(&parse(&job).spec.0);
    job["status"] = json!({"phase": "Running", "deployed": deployed(&hash)});
    let pods = pod_list(vec![
        pod_json("counts-coordinator-1", "coordinator", "Running", &hash),
        pod_json("counts-worker-0-1", "worker", "Running", &hash),
    ]);
    (job, hash, pods)
}

#[tokio::test]
async fn suspend_deletes_the_pods_and_keeps_state() {
    let s = setup(FakeCoordinator::default());
    let (job, hash, pods) = running_job_json(json!({"suspend": true}));
    let server = tokio::spawn(serve(
        s.handle,
        vec![
            ("GET", "/pods?", 200, pods),
            (
                "DELETE",
                "/pods/counts-coordinator-1",
                200,
                pod_json("counts-coordinator-1", "coordinator", "Running", &hash),
            ),
            ("DELETE", "/pods/counts-worker-0-1", 200, pod_json("counts-worker-0-1", "worker", "Running", &hash)),
            ("PATCH", "/streamjobs/counts/status?", 200, job.clone()),
        ],
    ));
    reconcile(parse(&job), s.ctx.clone()).await.expect("reconcile succeeds");
    let seen = server.await.unwrap();
    assert_eq!(seen[3].2["status"]["phase"], "Suspended");
}

/// A suspension in savepoint mode of a job whose pods run: one reconcile.
async fn suspend_with_savepoint(coordinator: FakeCoordinator) -> (Arc<FakeCoordinator>, Arc<CollectedEvents>, Value) {
    let s = setup(coordinator);
    let (job, _, pods) = running_job_json(json!({"suspend": true, "upgradeMode": "Savepoint"}));
    let server = tokio::spawn(serve(
        s.handle,
        vec![("GET", "/pods?", 200, pods), ("PATCH", "/streamjobs/counts/status?", 200, job.clone())],
    ));
    let action = reconcile(parse(&job), s.ctx.clone()).await.expect("reconcile succeeds");
    assert_eq!(action, Action::requeue(Duration::from_millis(1000)), "a savepoint is looked after within a second");
    let seen = server.await.unwrap();
    (s.coordinator, s.events, seen[1].2["status"].clone())
}

#[tokio::test]
async fn a_savepoint_mode_suspension_triggers_a_stop_savepoint_and_deletes_nothing_yet() {
    let running = CoordinatorView { state: "Running".into(), ..CoordinatorView::default() };
    let (coordinator, events, status) =
        suspend_with_savepoint(FakeCoordinator { view: Some(running), ..Default::default() }).await;
    assert_eq!(*coordinator.triggers.lock().unwrap(), vec![true], "a stop-with-savepoint, in the background");
    assert_eq!(status["savepointInfo"]["trigger"]["id"], "1800000000000-1");
    assert_eq!(status["savepointInfo"]["trigger"]["kind"], "Suspend");
    assert_eq!(status["phase"], "Running", "the job runs until it stopped with its savepoint");
    assert!(events.0.lock().unwrap().iter().any(|e| e.reason == "SavepointTriggered"));
}

#[tokio::test]
async fn a_savepoint_that_cannot_be_triggered_is_a_failure_with_backoff_in_status() {
    let running = CoordinatorView { state: "Running".into(), ..CoordinatorView::default() };
    let (_, events, status) =
        suspend_with_savepoint(FakeCoordinator { view: Some(running), fail: true, ..Default::default() }).await;
    assert_eq!(status["savepointInfo"]["failures"], 1);
    assert_eq!(status["savepointInfo"]["lastError"], "coordinator unreachable");
    assert!(status["savepointInfo"]["nextAttemptAt"].is_string());
    assert!(status["savepointInfo"].get("trigger").is_none());
    assert!(events.0.lock().unwrap().iter().any(|e| e.warning && e.reason == "SavepointFailed"));
}

#[tokio::test]
async fn a_pod_the_api_server_refuses_is_a_condition_and_a_warning_not_a_retry_storm() {
    let s = setup(FakeCoordinator::default());
    let job = job_json(json!({}), false, "file:///tmp/weir-test-none");
    let forbidden = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden", "code": 403,
        "message": "pods \"counts-coordinator-1\" is forbidden: exceeded quota: jobs-quota, requested: cpu=2"});
    let server = tokio::spawn(serve(
        s.handle,
        [
            first_deployment(),
            vec![
                ("POST", "/api/v1/namespaces/jobs/pods?", 403, forbidden),
                ("PATCH", "/streamjobs/counts/status?", 200, job.clone()),
            ],
        ]
        .concat(),
    ));
    let action = reconcile(parse(&job), s.ctx.clone()).await.expect("a refusal is the user's to fix, not an error");
    let seen = server.await.unwrap();
    let status = &seen[10].2["status"];
    let ready = status["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap().clone();
    assert_eq!(ready["reason"], "PodRejected");
    assert!(ready["message"].as_str().unwrap().contains("exceeded quota"), "{ready}");
    assert_eq!(status["deployed"]["created"], false, "the next reconcile tries again");
    assert_eq!(action, Action::requeue(Duration::from_secs(30)));
    let events = s.events.0.lock().unwrap();
    assert!(events.iter().any(|e| e.warning && e.reason == "PodRejected" && e.note.contains("exceeded quota")));
}

#[tokio::test]
async fn an_object_of_the_same_name_that_the_job_does_not_own_is_refused_not_taken_over() {
    let s = setup(FakeCoordinator::default());
    let job = job_json(json!({}), false, "file:///tmp/weir-test-none");
    let foreign = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "counts-coordinator", "namespace": "jobs", "uid": "someone-else"}});
    let server = tokio::spawn(serve(
        s.handle,
        vec![
            ("GET", "/api/v1/namespaces/jobs/pods?", 200, pod_list(vec![])),
            ("GET", "/configmaps/counts-job", 404, not_found()),
            ("PATCH", "/configmaps/counts-job?", 200, Value::Null),
            ("GET", "/services/counts-coordinator", 200, foreign),
            ("PATCH", "/streamjobs/counts/status?", 200, job.clone()),
        ],
    ));
    reconcile(parse(&job), s.ctx.clone()).await.expect("the user's to fix, not an error");
    let seen = server.await.unwrap();
    assert!(seen.iter().all(|(m, uri, _)| !(m == "PATCH" && uri.contains("/services/"))), "not taken over");
    assert!(seen.iter().all(|(m, uri, _)| !(m == "POST" && uri.contains("/pods"))), "no pod starts");
    let status = &seen[4].2["status"];
    let stalled = status["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Stalled").unwrap().clone();
    assert_eq!((stalled["status"].as_str(), stalled["reason"].as_str()), (Some("True"), Some("NameTaken")));
    assert!(stalled["message"].as_str().unwrap().contains("Service counts-coordinator exists"), "{stalled}");
}

#[tokio::test]
async fn a_pod_of_a_node_not_ready_past_the_grace_period_is_a_node_lost_failure() {
    let s = setup(FakeCoordinator::default());
    let mut job = job_json(json!({}), false, "file:///tmp/weir-test-none");
    let hash = plan::spec_digest(&parse(&job).spec.0);
    job["status"] = json!({"phase": "Running", "deployed": deployed(&hash)});
    let mut worker = pod_json("counts-worker-0-1", "worker", "Running", &hash);
    worker["spec"] = json!({"nodeName": "node-b", "containers": [{"name": "weir"}]});
    let pods = pod_list(vec![pod_json("counts-coordinator-1", "coordinator", "Running", &hash), worker]);
    let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-b"},
        "status": {"conditions": [{"type": "Ready", "status": "Unknown", "lastTransitionTime": "2020-01-01T00:00:00Z"}]}});
    let server = tokio::spawn(serve(
        s.handle,
        vec![
            ("GET", "/pods?", 200, pods),
            ("GET", "/api/v1/nodes/node-b", 200, node),
            ("PATCH", "/streamjobs/counts/status?", 200, job.clone()),
        ],
    ));
    reconcile(parse(&job), s.ctx.clone()).await.expect("reconcile succeeds");
    let seen = server.await.unwrap();
    let failure = &seen[2].2["status"]["restarts"]["lastFailure"];
    assert_eq!((failure["pod"].as_str(), failure["reason"].as_str()), (Some("counts-worker-0-1"), Some("NodeLost")));
}

#[tokio::test]
async fn an_api_server_error_fails_the_reconcile_which_is_requeued_without_panicking() {
    let s = setup(FakeCoordinator::default());
    let job = job_json(json!({}), false, "file:///tmp/weir-test-none");
    let failure = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": "etcd unavailable", "reason": "InternalError", "code": 500});
    let server = tokio::spawn(serve(s.handle, vec![("GET", "/pods?", 500, failure)]));
    let err = reconcile(parse(&job), s.ctx.clone()).await.expect_err("the error is returned");
    server.await.unwrap();
    assert!(err.to_string().contains("etcd unavailable"), "{err}");
    let delays: Vec<Action> = (0..4).map(|_| error_policy(parse(&job), &err, s.ctx.clone())).collect();
    let secs = |n| Action::requeue(Duration::from_secs(n));
    assert_eq!(delays, [secs(1), secs(2), secs(4), secs(8)], "backoff doubles per consecutive failure");
}

fn purge_pod_json(phase: &str, terminated: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "counts-purge", "namespace": "jobs", "labels": {JOB_LABEL: "counts", ROLE_LABEL: "purge"}},
        "status": {"phase": phase, "containerStatuses": [{
            "name": "weir", "ready": false, "restartCount": 0, "image": "weir:test", "imageID": "",
            "state": terminated
        }]}
    })
}

/// Reconciles once against `script`; what was asked, and what came back.
async fn one_reconcile(
    s: &Setup,
    job: &Value,
    script: Vec<(&'static str, &'static str, u16, Value)>,
) -> (Vec<(String, String, Value)>, Result<Action, Error>) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let ctx = Arc::new(Context { client: Client::new(service, "default"), ..clone_context(&s.ctx) });
    let server = tokio::spawn(serve(handle, script));
    let result = reconcile(parse(job), ctx).await;
    (server.await.unwrap(), result)
}

#[tokio::test]
async fn deletion_with_purge_stops_the_job_runs_a_purge_pod_then_removes_the_finalizer_one_step_per_reconcile() {
    let s = setup(FakeCoordinator::default());
    let job = job_json(json!({"deletionPolicy": "Purge"}), true, "s3://bucket/weir");
    let running = purge_pod_json("Running", json!({"running": {}}));
    let done = purge_pod_json("Succeeded", json!({"terminated": {"exitCode": 0}}));
    let coordinator = pod_json("counts-coordinator-1", "coordinator", "Running", &"h".repeat(64));
    let mut terminating = coordinator.clone();
    terminating["metadata"]["deletionTimestamp"] = json!(plan::rfc3339(wall_ms()));
    let requeued = Action::requeue(Duration::from_secs(1));

    // 1: the job's pods are asked to stop; nothing waits inside the reconcile.
    let (seen, result) = one_reconcile(
        &s,
        &job,
        vec![
            ("GET", "/api/v1/namespaces/jobs/pods?", 200, pod_list(vec![coordinator.clone()])),
            ("DELETE", "/pods/counts-coordinator-1", 200, coordinator),
        ],
    )
    .await;
    assert!(seen[0].1.contains("role+in+%28coordinator%2Cworker%29"), "only the job's pods stop: {}", seen[0].1);
    assert_eq!(result.unwrap(), requeued.clone());
    // 2: still terminating: look again later.
    let (_, result) = one_reconcile(&s, &job, vec![("GET", "/pods?", 200, pod_list(vec![terminating]))]).await;
    assert_eq!(result.unwrap(), requeued.clone());
    // 3: gone: the purge pod starts, owned by nobody.
    let (seen, result) = one_reconcile(
        &s,
        &job,
        vec![
            ("GET", "/pods?", 200, pod_list(vec![])),
            ("GET", "/pods/counts-purge", 404, not_found()),
            ("PATCH", "/api/v1/namespaces/jobs/pods/counts-purge?", 200, running.clone()),
        ],
    )
    .await;
    assert_eq!(
        seen[2].2["spec"]["containers"][0]["args"],
        json!(["checkpoints", "purge", "s3://bucket/weir/jobs/counts"])
    );
    assert!(
        seen[2].2["metadata"]["ownerReferences"].is_null(),
        "a foreground deletion must not collect it: {}",
        seen[2].2
    );
    assert_eq!(result.unwrap(), requeued.clone());
    // 4: running.
    let (_, result) = one_reconcile(
        &s,
        &job,
        vec![("GET", "/pods?", 200, pod_list(vec![])), ("GET", "/pods/counts-purge", 200, running)],
    )
    .await;
    assert_eq!(result.unwrap(), requeued);
    // 5: done: the purge pod goes, then the finalizer.
    let (seen, result) = one_reconcile(
        &s,
        &job,
        vec![
            ("GET", "/pods?", 200, pod_list(vec![])),
            ("GET", "/pods/counts-purge", 200, done.clone()),
            ("DELETE", "/pods/counts-purge", 200, done),
            ("PATCH", "/streamjobs/counts?", 200, job.clone()),
        ],
    )
    .await;
    assert!(result.is_ok());
    assert!(seen[3].2.to_string().contains("remove"), "finalizer removed: {}", seen[3].2);
    let events = s.events.0.lock().unwrap().clone();
    assert!(events.iter().any(|e| e.reason == "Purged" && !e.warning), "{events:?}");
}

#[tokio::test]
async fn a_failed_purge_is_reported_and_never_keeps_the_finalizer() {
    let s = setup(FakeCoordinator::default());
    let job = job_json(json!({"deletionPolicy": "Purge"}), true, "s3://bucket/weir");
    let failed = purge_pod_json(
        "Failed",
        json!({"terminated": {"exitCode": 1, "message": "error: cannot purge: permission denied\n"}}),
    );
    let (_, result) = one_reconcile(
        &s,
        &job,
        vec![
            ("GET", "/pods?", 200, pod_list(vec![])),
            ("GET", "/pods/counts-purge", 200, failed.clone()),
            ("DELETE", "/pods/counts-purge", 200, failed),
            ("PATCH", "/streamjobs/counts?", 200, job.clone()),
        ],
    )
    .await;
    result.expect("cleanup succeeds although the purge failed");
    let events = s.events.0.lock().unwrap().clone();
    let failed = events.iter().find(|e| e.reason == "PurgeFailed").expect("a PurgeFailed event");
    assert!(failed.warning && failed.note.ends_with("cannot purge: permission denied"), "{}", failed.note);
}

#[tokio::test]
async fn a_purge_that_outlasts_its_time_gives_up_and_says_the_checkpoints_may_remain() {
    let s = setup(FakeCoordinator::default());
    let mut job = job_json(json!({"deletionPolicy": "Purge"}), true, "s3://bucket/weir");
    job["metadata"]["deletionTimestamp"] = json!(plan::rfc3339(wall_ms() - 121_000));
    let (_, result) = one_reconcile(&s, &job, vec![("PATCH", "/streamjobs/counts?", 200, job.clone())]).await;
    result.expect("cleanup ends");
    let events = s.events.0.lock().unwrap().clone();
    assert!(events.iter().any(|e| e.reason == "PurgeFailed" && e.note.contains("within 120s")), "{events:?}");
}

#[tokio::test]
async fn deletion_with_retain_keeps_checkpoints() {
    let s = setup(FakeCoordinator::default());
    let dir = tempfile::tempdir().unwrap();
    let chk = dir.path().join("jobs/counts/chk-0000000001");
    std::fs::create_dir_all(&chk).unwrap();
    let job = job_json(json!({"deletionPolicy": "Retain"}), true, &format!("file://{}", dir.path().display()));
    let server = tokio::spawn(serve(s.handle, vec![("PATCH", "/streamjobs/counts?", 200, job.clone())]));
    reconcile(parse(&job), s.ctx.clone()).await.expect("cleanup succeeds");
    server.await.unwrap();
    assert!(chk.exists());
}

#[tokio::test]
async fn deletion_with_savepoint_asks_a_coordinator_that_runs_undisturbed() {
    let s = setup(FakeCoordinator::default());
    let job = job_json(json!({"deletionPolicy": "Savepoint"}), true, "s3://bucket/weir");
    let coordinator = pod_json("counts-coordinator-1", "coordinator", "Running", &"h".repeat(64));
    let (seen, result) = one_reconcile(
        &s,
        &job,
        vec![
            ("GET", "/pods/counts-savepoint", 404, not_found()),
            ("GET", "/pods?", 200, pod_list(vec![coordinator.clone()])),
        ],
    )
    .await;
    assert!(result.is_ok(), "requeued while the job stops: {result:?}");
    assert!(seen[1].1.contains("role%3Dcoordinator"), "{}", seen[1].1);
    assert_eq!(*s.coordinator.triggers.lock().unwrap(), vec![true], "a stop-with-savepoint, in the background");

    // The next look finds the coordinator ended, its savepoint in its last words.
    let mut ended = coordinator;
    ended["status"]["phase"] = json!("Succeeded");
    let said = weir_runtime::distributed::triggers::stop_message("s3://bucket/weir/jobs/counts/savepoints/sp-5", 9);
    ended["status"]["containerStatuses"][0]["state"] = json!({"terminated": {"exitCode": 0, "message": said}});
    let (_, result) = one_reconcile(
        &s,
        &job,
        vec![
            ("GET", "/pods/counts-savepoint", 404, not_found()),
            ("GET", "/pods?", 200, pod_list(vec![ended])),
            ("PATCH", "/streamjobs/counts?", 200, job.clone()),
        ],
    )
    .await;
    result.expect("cleanup succeeds");
    let events = s.events.0.lock().unwrap().clone();
    assert!(events.iter().any(|e| e.reason == "Savepoint" && !e.warning && e.note.contains("sp-5")), "{events:?}");
}

fn savepoint_pod_json(phase: &str, terminated: Value) -> Value {
    let mut pod = purge_pod_json(phase, terminated);
    pod["metadata"]["name"] = json!("counts-savepoint");
    pod["metadata"]["labels"][ROLE_LABEL] = json!("savepoint");
    pod
}

#[tokio::test]
async fn under_foreground_deletion_a_pod_copies_the_newest_checkpoint_to_a_savepoint_before_the_finalizer_goes() {
    let s = setup(FakeCoordinator::default());
    let job = job_json(json!({"deletionPolicy": "Savepoint"}), true, "s3://bucket/weir");
    // The garbage collector deleted the job's pods before the operator saw the deletion.
    let mut collected = pod_json("counts-coordinator-1", "coordinator", "Running", &"h".repeat(64));
    collected["metadata"]["deletionTimestamp"] = json!(plan::rfc3339(wall_ms()));
    let requeued = Action::requeue(Duration::from_secs(1));
    let (_, result) = one_reconcile(
        &s,
        &job,
        vec![
            ("GET", "/pods/counts-savepoint", 404, not_found()),
            ("GET", "/pods?", 200, pod_list(vec![collected.clone()])),
            ("GET", "/pods?", 200, pod_list(vec![collected])),
        ],
    )
    .await;
    assert_eq!(result.unwrap(), requeued.clone(), "waits for the pods to be gone");
    assert!(s.coordinator.triggers.lock().unwrap().is_empty(), "a terminating coordinator is not asked");
    let running = savepoint_pod_json("Running", json!({"running": {}}));
    let (seen, result) = one_reconcile(
        &s,
        &job,
        vec![
            ("GET", "/pods/counts-savepoint", 404, not_found()),
            ("GET", "/pods?", 200, pod_list(vec![])),
            ("GET", "/pods?", 200, pod_list(vec![])),
            ("GET", "/pods/counts-savepoint", 404, not_found()),
            ("PATCH", "/api/v1/namespaces/jobs/pods/counts-savepoint?", 200, running),
        ],
    )
    .await;
    assert_eq!(result.unwrap(), requeued);
    assert_eq!(
        seen[4].2["spec"]["containers"][0]["args"],
        json!(["checkpoints", "savepoint", "s3://bucket/weir/jobs/counts"])
    );
    assert!(seen[4].2["metadata"]["ownerReferences"].is_null(), "not collected mid-copy");
    let said = "savepoint of checkpoint 42 at s3://bucket/weir/jobs/counts/savepoints/sp-1";
    let done = savepoint_pod_json("Succeeded", json!({"terminated": {"exitCode": 0, "message": said}}));
    let (_, result) = one_reconcile(
        &s,
        &job,
        vec![
            ("GET", "/pods/counts-savepoint", 200, done.clone()),
            ("GET", "/pods?", 200, pod_list(vec![])),
            ("GET", "/pods/counts-savepoint", 200, done.clone()),
            ("DELETE", "/pods/counts-savepoint", 200, done),
            ("PATCH", "/streamjobs/counts?", 200, job.clone()),
        ],
    )
    .await;
    result.expect("the finalizer goes once the savepoint is there");
    assert!(s.coordinator.triggers.lock().unwrap().is_empty());
    let events = s.events.0.lock().unwrap().clone();
    assert!(events.iter().any(|e| e.reason == "Savepoint" && e.note == said), "{events:?}");
}

#[tokio::test]
async fn deletion_with_savepoint_never_wedges_when_the_savepoint_fails() {
    let s = setup(FakeCoordinator { fail: true, ..FakeCoordinator::default() });
    let job = job_json(json!({"deletionPolicy": "Savepoint"}), true, "s3://bucket/weir");
    let failed = savepoint_pod_json(
        "Failed",
        json!({"terminated": {"exitCode": 1, "message": "error: no committed, intact checkpoint\n"}}),
    );
    let (_, result) = one_reconcile(
        &s,
        &job,
        vec![
            ("GET", "/pods/counts-savepoint", 200, failed.clone()),
            ("GET", "/pods?", 200, pod_list(vec![])),
            ("GET", "/pods/counts-savepoint", 200, failed.clone()),
            ("DELETE", "/pods/counts-savepoint", 200, failed),
            ("PATCH", "/streamjobs/counts?", 200, job.clone()),
        ],
    )
    .await;
    result.expect("cleanup succeeds although the savepoint failed");
    let events = s.events.0.lock().unwrap().clone();
    let failed = events.iter().find(|e| e.reason == "SavepointFailed").expect("a SavepointFailed event");
    assert!(failed.warning && failed.note.ends_with("no committed, intact checkpoint"), "{}", failed.note);
}

#[tokio::test]
async fn an_invalid_spec_sets_a_condition_and_creates_nothing() {
    let s = setup(FakeCoordinator::default());
    let job = job_json(json!({"workers": 5}), false, "file:///tmp/weir-test-none");
    let server = tokio::spawn(serve(
        s.handle,
        vec![("GET", "/pods?", 200, pod_list(vec![])), ("PATCH", "/streamjobs/counts/status?", 200, job.clone())],
    ));
    let action = reconcile(parse(&job), s.ctx.clone()).await.expect("no error: the spec is reported, not retried");
    let seen = server.await.unwrap();
    let ready =
        seen[1].2["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap().clone();
    assert_eq!(ready["reason"], "InvalidSpec");
    assert!(ready["message"].as_str().unwrap().contains("spec.workers"));
    assert_eq!(action, Action::await_change());
}

#[test]
fn the_status_patch_clears_fields_the_new_status_drops() {
    let old = json!({"phase": "Restarting", "restarts": {"count": 0, "nextRestartAt": "2026-11-26T10:00:00Z"}});
    let new = json!({"phase": "Starting", "restarts": {"count": 1}});
    assert_eq!(merge_patch(&old, &new), json!({"phase": "Starting", "restarts": {"count": 1, "nextRestartAt": null}}));
}

/// A first reconcile of the example job with cert-manager set up: the
/// requests after the job's own objects and token Secret are `then`.
async fn first_reconcile_with_cert_manager(
    then: Vec<(&'static str, &'static str, u16, Value)>,
) -> (Vec<(String, String, Value)>, Action) {
    let s = setup(FakeCoordinator::default());
    let mut ctx = clone_context(&s.ctx);
    ctx.settings.cert_manager = Some(IssuerRef::parse("ClusterIssuer/weir-ca", "cert-manager.io").unwrap());
    let job = job_json(json!({}), false, "file:///tmp/weir-test-none");
    let status = ("PATCH", "/streamjobs/counts/status?", 200, job.clone());
    let server = tokio::spawn(serve(s.handle, [first_deployment(), then, vec![status]].concat()));
    let action = reconcile(parse(&job), Arc::new(ctx)).await.expect("neither waiting nor a stall is an error");
    (server.await.unwrap(), action)
}

#[tokio::test]
async fn with_cert_manager_pods_wait_for_the_certificates_secret_and_status_says_so() {
    let (seen, action) = first_reconcile_with_cert_manager(vec![
        ("GET", "/apis/cert-manager.io/v1/namespaces/jobs/certificates/counts-tls", 404, not_found()),
        ("PATCH", "/apis/cert-manager.io/v1/namespaces/jobs/certificates/counts-tls?", 200, Value::Null),
        ("GET", "/api/v1/namespaces/jobs/secrets/counts-tls", 404, not_found()),
    ])
    .await;
    let token = &seen[8].2["stringData"];
    assert!(token["token"].is_string() && token.get("ca.crt").is_none(), "no CA of the operator's own: {token}");
    assert_eq!(seen[10].2["spec"]["issuerRef"]["name"], "weir-ca");
    assert!(seen.iter().all(|(m, uri, _)| !(m == "POST" && uri.contains("/pods"))), "no pod before its certificate");
    let status = &seen[12].2["status"];
    let condition = |t: &str| status["conditions"].as_array().unwrap().iter().find(|c| c["type"] == t).cloned();
    let ready = condition("Ready").unwrap();
    assert_eq!(ready["reason"], "CertificatePending");
    assert!(ready["message"].as_str().unwrap().contains("Secret counts-tls"), "{ready}");
    assert_eq!(condition("Reconciling").unwrap()["status"], "True", "a wait, not a stall");
    assert_eq!(status["deployed"]["created"], false, "the next reconcile creates them");
    assert_eq!(action, Action::requeue(Duration::from_secs(3)));
}

#[tokio::test]
async fn with_cert_manager_issued_pods_start_and_mount_the_certificates_secret() {
    // Base64 of "c", "k" and "ca": what is in them is the pods' to check.
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "counts-tls", "namespace": "jobs"},
        "data": {"tls.crt": "Yw==", "tls.key": "aw==", "ca.crt": "Y2E="}});
    let (seen, _) = first_reconcile_with_cert_manager(vec![
        ("GET", "/certificates/counts-tls", 404, not_found()),
        ("PATCH", "/certificates/counts-tls?", 200, Value::Null),
        ("GET", "/api/v1/namespaces/jobs/secrets/counts-tls", 200, secret),
        ("POST", "/api/v1/namespaces/jobs/pods?", 201, Value::Null),
        ("POST", "/api/v1/namespaces/jobs/pods?", 201, Value::Null),
    ])
    .await;
    let volumes = seen[12].2["spec"]["volumes"].to_string();
    assert!(volumes.contains("\"secretName\":\"counts-tls\""), "{volumes}");
    assert_eq!(seen[14].2["status"]["deployed"]["created"], true);
}

#[tokio::test]
async fn with_cert_manager_not_installed_the_job_stalls_with_the_cause() {
    // What kube-apiserver answers for a group it does not serve: text, not a Status.
    let (seen, action) =
        first_reconcile_with_cert_manager(vec![("GET", "/certificates/counts-tls", 404, json!("404 page not found"))])
            .await;
    let conditions = seen[10].2["status"]["conditions"].as_array().unwrap().clone();
    let stalled = conditions.iter().find(|c| c["type"] == "Stalled").expect("Stalled");
    assert_eq!(stalled["reason"], "CertificateNotIssued");
    assert!(stalled["message"].as_str().unwrap().contains("install cert-manager"), "{stalled}");
    assert_eq!(action, Action::requeue(Duration::from_secs(30)));
}
