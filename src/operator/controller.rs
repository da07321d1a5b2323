//! One reconcile: observe -> plan (pure) -> apply with server-side apply ->
//! status. Deletion goes through a finalizer whose clean-up never fails
//! because an event, a savepoint or a status write failed.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{ConfigMap, ContainerStateTerminated, Node, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{finalizer, Event as FinalizerEvent};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use serde_json::{json, Value};
use tracing::{info, warn, Instrument};
use weir_runtime::distributed::tls::JobIdentity;
use weir_runtime::distributed::triggers::parse_stop_message;
use weir_runtime::job::coordinate::wall_ms;
use weir_runtime::manifest::DeletionPolicy;

use super::certificates::{self, Issuance};
use super::coordinator_api::CoordinatorApi;
use super::objects::{self, chore_pod_name, Chore, Role, Settings, DIGEST_LABEL, JOB_LABEL, ROLE_LABEL};
use super::plan::{self, Action as PlanAction, ChoreView, Observed, PodPhase, PodView};
use crate::crd::StreamJob;

pub const FINALIZER: &str = "weir.dev/cleanup";
pub const FIELD_MANAGER: &str = "weir-operator";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes api: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(String),
    #[error("streamjob has no namespace")]
    NoNamespace,
    #[error("cannot make a job token or TLS identity: {0}")]
    Token(String),
    #[error("{kind} {name} exists and does not belong to this StreamJob; delete or rename it")]
    NotOwned { kind: String, name: String },
    /// Not a failure: a deletion step that needs another look.
    #[error("{0}")]
    CleanupPending(String),
}

/// Where Kubernetes Events go; a trait so tests can collect them.
#[async_trait]
pub trait Events: Send + Sync {
    async fn publish(&self, job: &StreamJob, event: &plan::Event);
}

pub struct KubeEvents {
    pub client: Client,
}

#[async_trait]
impl Events for KubeEvents {
    async fn publish(&self, job: &StreamJob, event: &plan::Event) {
        let recorder =
            Recorder::new(self.client.clone(), Reporter { controller: FIELD_MANAGER.into(), instance: None });
        let e = KubeEvent {
            type_: if event.warning { EventType::Warning } else { EventType::Normal },
            reason: event.reason.clone(),
            note: Some(event.note.clone()),
            action: event.reason.clone(),
            secondary: None,
        };
        // A busy API server may time out a write: tried three times, as
        // an event that is lost hides what happened from `kubectl describe`.
        // One that cannot be written must not stop the reconcile.
        let reference = job.object_ref(&());
        for attempt in 1..=3u64 {
            match recorder.publish(&e, &reference).await {
                Ok(()) => return,
                Err(kube::Error::Api(a)) if (400..500).contains(&a.code) && a.code != 429 => {
                    warn!(job = %job.name_any(), "event {} refused: {}", event.reason, a.message);
                    return;
                }
                Err(err) if attempt == 3 => {
                    warn!(job = %job.name_any(), "cannot publish event {} after {attempt} tries: {err}", event.reason);
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(250 * attempt)).await,
            }
        }
    }
}

pub struct Context {
    pub client: Client,
    pub coordinator: Arc<dyn CoordinatorApi>,
    pub events: Arc<dyn Events>,
    pub settings: Settings,
    pub metrics: Arc<super::metrics::OperatorMetrics>,
    /// Consecutive failed reconciles per `namespace/name`, for backoff.
    pub failures: std::sync::Mutex<std::collections::HashMap<String, u32>>,
    /// Whether the warning that nodes cannot be read was logged.
    pub node_warning: std::sync::atomic::AtomicBool,
    /// With leader election: whether this replica may act now.
    pub leadership: Option<Arc<super::leader::Leadership>>,
    /// Watched caches; without them (in tests) every reconcile asks the
    /// API server.
    pub caches: Caches,
    /// Stop-with-savepoint triggers of deleted jobs, per `namespace/name`,
    /// with when they were asked for. Kept in memory: an operator that
    /// restarts mid-deletion asks again, which costs one more savepoint.
    pub deletion_triggers: std::sync::Mutex<std::collections::HashMap<String, (String, std::time::Instant)>>,
}

impl Context {
    fn deletion_trigger(&self, key: &str) -> Option<(String, std::time::Instant)> {
        self.deletion_triggers.lock().ok()?.get(key).cloned()
    }

    fn remember_deletion_trigger(&self, key: &str, id: String) {
        if let Ok(mut t) = self.deletion_triggers.lock() {
            t.insert(key.to_string(), (id, std::time::Instant::now()));
        }
    }

    fn forget_deletion_trigger(&self, key: &str) {
        if let Ok(mut t) = self.deletion_triggers.lock() {
            t.remove(key);
        }
    }
}

/// How often an unchanged child object is applied again anyway.
const REAPPLY_EVERY: Duration = Duration::from_secs(600);

/// What reconciles read without calling the API server.
#[derive(Default)]
pub struct Caches {
    /// Job pods, per watched namespace (`None`: all namespaces).
    pub pods: Vec<(Option<String>, Store<Pod>)>,
    /// Nodes, when the operator may watch them.
    pub nodes: Option<Store<Node>>,
    /// A hash of what was last applied per child object and when, so an
    /// unchanged object is not sent again (except every
    /// [`REAPPLY_EVERY`], which repairs an object deleted or edited by hand).
    pub applied: std::sync::Mutex<std::collections::HashMap<String, (u64, std::time::Instant)>>,
}

impl Caches {
    fn pods(&self, ns: &str, job: &str) -> Option<Vec<Pod>> {
        let (_, store) = self.pods.iter().find(|(scope, _)| scope.as_deref().is_none_or(|s| s == ns))?;
        let mine = |p: &Arc<Pod>| {
            p.metadata.namespace.as_deref() == Some(ns)
                && p.metadata.labels.as_ref().and_then(|l| l.get(JOB_LABEL)).map(String::as_str) == Some(job)
        };
        Some(store.state().into_iter().filter(mine).map(|p| (*p).clone()).collect())
    }

    /// Whether `object` differs from what was last applied under `key`.
    fn changed(&self, key: &str, object: &impl serde::Serialize) -> bool {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        serde_json::to_string(object).unwrap_or_default().hash(&mut h);
        let hash = h.finish();
        let now = std::time::Instant::now();
        self.applied.lock().map_or(true, |mut m| match m.get(key) {
            Some((h, at)) if *h == hash && now.duration_since(*at) < REAPPLY_EVERY => false,
            _ => {
                m.insert(key.to_string(), (hash, now));
                true
            }
        })
    }

    fn forget(&self, key: &str) {
        if let Ok(mut m) = self.applied.lock() {
            m.remove(key);
        }
    }
}

pub async fn reconcile(job: Arc<StreamJob>, ctx: Arc<Context>) -> Result<Action, Error> {
    // A leader frozen past its renew deadline may have been replaced: it
    // acts on nothing (and its election task exits the process).
    if ctx.leadership.as_ref().is_some_and(|l| !l.valid()) {
        return Ok(Action::requeue(Duration::from_secs(2)));
    }
    let started = std::time::Instant::now();
    let ns = job.namespace().ok_or(Error::NoNamespace)?;
    let api: Api<StreamJob> = Api::namespaced(ctx.client.clone(), &ns);
    let name = job.name_any();
    let span = tracing::info_span!("reconcile", namespace = %ns, name = %name);
    let result = finalizer(&api, FINALIZER, job, |event| async {
        match event {
            FinalizerEvent::Apply(job) => apply(job, &ctx).await,
            FinalizerEvent::Cleanup(job) => cleanup(job, &ctx).await,
        }
    })
    .instrument(span)
    .await
    .map_or_else(
        |e| match e {
            // A deletion step still under way: look again soon, keeping the finalizer.
            kube::runtime::finalizer::Error::CleanupFailed(Error::CleanupPending(why)) => {
                info!(job = %name, "deletion in progress: {why}");
                Ok(Action::requeue(Duration::from_secs(1)))
            }
            e => Err(Error::Finalizer(e.to_string())),
        },
        Ok,
    );
    ctx.metrics.observe_reconcile(started.elapsed(), result.is_err());
    if result.is_ok() {
        if let Ok(mut f) = ctx.failures.lock() {
            f.remove(&format!("{ns}/{name}"));
        }
    }
    result
}

/// Requeues a failed reconcile with exponential backoff per object:
/// 1 s, 2 s, 4 s ... up to 5 minutes; a success resets it.
pub fn error_policy(job: Arc<StreamJob>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = format!("{}/{}", job.namespace().unwrap_or_default(), job.name_any());
    let failures = ctx.failures.lock().map(|mut f| {
        let n = f.entry(key).or_insert(0);
        *n = (*n + 1).min(20);
        *n
    });
    let delay = Duration::from_secs(1u64 << (failures.unwrap_or(1) - 1).min(8)).min(Duration::from_secs(300));
    warn!(job = %job.name_any(), namespace = ?job.namespace(), "reconcile failed: {error}; retrying in {delay:?}");
    Action::requeue(delay)
}

/// How the pod's (only) container ended, if it has.
fn terminated(pod: &Pod) -> Option<&ContainerStateTerminated> {
    pod.status.as_ref()?.container_statuses.as_ref()?.first()?.state.as_ref()?.terminated.as_ref()
}

/// Since when each node has not been Ready (ms since the epoch); a node
/// missing from the list has been gone since it was looked at.
type NodeHealth = std::collections::HashMap<String, Option<u64>>;

fn pod_view(pod: &Pod, nodes: &NodeHealth, now: u64) -> Option<PodView> {
    let labels = pod.metadata.labels.as_ref()?;
    let name = pod.name_any();
    let role = match labels.get(ROLE_LABEL).map(String::as_str) {
        Some("coordinator") => Role::Coordinator,
        // `<job>-worker-<i>-<attempt>`
        Some("worker") => Role::Worker(name.rsplit('-').nth(1)?.parse().ok()?),
        _ => return None,
    };
    let node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
    let node_not_ready_since_ms = node.and_then(|n| nodes.get(n).copied().unwrap_or(Some(now)));
    let status = pod.status.as_ref();
    let phase = match status.and_then(|s| s.phase.as_deref()) {
        Some("Pending") | None => PodPhase::Pending,
        Some("Running") => PodPhase::Running,
        Some("Succeeded") => PodPhase::Succeeded,
        Some("Failed") => PodPhase::Failed,
        _ => PodPhase::Unknown,
    };
    let terminated = terminated(pod);
    Some(PodView {
        name,
        role,
        phase,
        digest: labels.get(DIGEST_LABEL).cloned().unwrap_or_default(),
        exit_code: terminated.map(|t| t.exit_code),
        message: terminated.and_then(|t| t.message.clone()),
        reason: terminated.and_then(|t| t.reason.clone()).or_else(|| status.and_then(|s| s.reason.clone())),
        deleting: pod.metadata.deletion_timestamp.is_some(),
        node_not_ready_since_ms,
        waiting: waiting(pod),
    })
}

/// Why a pod is not running yet, if it says.
fn waiting(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref().filter(|s| s.phase.as_deref().is_none_or(|p| p == "Pending"))?;
    let container = status.container_statuses.iter().flatten().find_map(|c| c.state.as_ref()?.waiting.clone());
    if let Some(w) = container.filter(|w| w.reason.as_deref() != Some("ContainerCreating")) {
        let reason = w.reason.unwrap_or_else(|| "Waiting".into());
        return Some(w.message.map_or(reason.clone(), |m| format!("{reason}: {m}")));
    }
    let unscheduled = status.conditions.iter().flatten().find(|c| c.type_ == "PodScheduled" && c.status == "False")?;
    let reason = unscheduled.reason.clone().unwrap_or_else(|| "Unschedulable".into());
    Some(unscheduled.message.clone().map_or(reason.clone(), |m| format!("{reason}: {m}")))
}

/// The Ready condition of the nodes the pods run on. Without the right to
/// read nodes the operator cannot tell a lost node, and says so once.
async fn node_health(ctx: &Context, pods: &[Pod], now: u64) -> NodeHealth {
    let api: Api<Node> = Api::all(ctx.client.clone());
    let mut health = NodeHealth::new();
    for name in pods.iter().filter_map(|p| p.spec.as_ref()?.node_name.clone()) {
        if health.contains_key(&name) {
            continue;
        }
        if let Some(store) = &ctx.caches.nodes {
            let node = store.get(&ObjectRef::new(&name));
            health.insert(name, node.map_or(Some(now), |n| not_ready_since(&n, now)));
            continue;
        }
        let since = match api.get_opt(&name).await {
            Ok(Some(node)) => not_ready_since(&node, now),
            Ok(None) => Some(now),
            Err(e) => {
                if !ctx.node_warning.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    warn!("cannot read node {name}, so pods of lost nodes are not replaced: {e}");
                }
                None
            }
        };
        health.insert(name, since);
    }
    health
}

/// When a node stopped being Ready, if it is not.
fn not_ready_since(node: &Node, now: u64) -> Option<u64> {
    let ready = node.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == "Ready");
    match ready {
        Some(c) if c.status == "True" => None,
        Some(c) => Some(c.last_transition_time.as_ref().map_or(now, |t| t.0.as_millisecond().max(0) as u64)),
        None => None,
    }
}

async fn observe(job: &StreamJob, ctx: &Context, ns: &str) -> Result<Observed, Error> {
    let name = job.name_any();
    // The watch cache, unless it lacks a pod this job created: a cache a
    // moment behind must not make a pod look deleted, so then ask.
    let expected = job.status.as_ref().and_then(|s| s.deployed.as_ref()).filter(|d| d.created).map(|d| &d.pods);
    let cached = ctx.caches.pods(ns, &name).filter(|pods| {
        expected.is_none_or(|want| want.iter().all(|w| pods.iter().any(|p| p.metadata.name.as_deref() == Some(w))))
    });
    let items = match cached {
        Some(pods) => pods,
        None => {
            let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
            pods.list(&ListParams::default().labels(&format!("{JOB_LABEL}={name}"))).await?.items
        }
    };
    let now_ms = wall_ms();
    let nodes = node_health(ctx, &items, now_ms).await;
    let pods = items.iter().filter_map(|p| pod_view(p, &nodes, now_ms)).collect::<Vec<_>>();
    let coordinator_up = pods.iter().any(|p| p.role == Role::Coordinator && p.phase == PodPhase::Running);
    let coordinator = if coordinator_up { ctx.coordinator.view(ns, &name).await } else { None };
    let trigger = match job.status.as_ref().and_then(|s| s.savepoint_info.trigger.as_ref()) {
        Some(t) if coordinator_up => ctx.coordinator.savepoint_trigger(ns, &name, &t.id).await,
        _ => None,
    };
    let disposal = items.iter().find(|p| p.name_any() == chore_pod_name(&name, Chore::Dispose)).map(|pod| {
        let phase = match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
            Some("Succeeded") => PodPhase::Succeeded,
            Some("Failed") => PodPhase::Failed,
            Some("Running") => PodPhase::Running,
            _ => PodPhase::Pending,
        };
        ChoreView { phase, message: terminated(pod).and_then(|t| t.message.clone()) }
    });
    Ok(Observed { pods, coordinator, trigger, disposal, now_ms })
}

async fn apply(job: Arc<StreamJob>, ctx: &Context) -> Result<Action, Error> {
    let ns = job.namespace().ok_or(Error::NoNamespace)?;
    let name = job.name_any();
    let observed = observe(&job, ctx, &ns).await?;
    let mut p = plan::plan(&job, &observed, &ctx.settings);

    for action in p.actions.clone() {
        match action {
            PlanAction::TriggerSavepoint { kind, nonce } => {
                match ctx.coordinator.trigger_savepoint(&ns, &name, kind.stops()).await {
                    Ok(id) => {
                        let event = plan::savepoint_triggered(&mut p.status, kind, nonce, id, observed.now_ms);
                        p.events.push(event);
                    }
                    Err(e) => {
                        let events = plan::savepoint_failed(&mut p.status, kind, nonce, &e, observed.now_ms);
                        p.events.extend(events);
                    }
                }
            }
        }
    }

    let pp = PatchParams::apply(FIELD_MANAGER).force();
    let children = async {
        if let Some(cm) = &p.config_map {
            apply_if_changed(ctx, &Api::<ConfigMap>::namespaced(ctx.client.clone(), &ns), cm, &pp).await?;
        }
        if let Some(svc) = &p.service {
            apply_if_changed(ctx, &Api::<Service>::namespaced(ctx.client.clone(), &ns), svc, &pp).await?;
        }
        if let Some(np) = &p.network_policy {
            apply_if_changed(ctx, &Api::<NetworkPolicy>::namespaced(ctx.client.clone(), &ns), np, &pp).await?;
        }
        Ok::<(), Error>(())
    };
    match children.await {
        Ok(()) => {}
        // Nothing of this job starts beside someone else's object.
        Err(e @ Error::NotOwned { .. }) => hold_back(&mut p, &job, "NameTaken", e.to_string()),
        Err(e) => return Err(e),
    }
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let force = DeleteParams { grace_period_seconds: Some(0), ..DeleteParams::default() };
    for (pod_name, params) in
        p.delete.iter().map(|n| (n, DeleteParams::default())).chain(p.force_delete.iter().map(|n| (n, force.clone())))
    {
        match pods.delete(pod_name, &params).await {
            Ok(_) => info!(job = %name, pod = %pod_name, force = params.grace_period_seconds == Some(0), "deleted pod"),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    if !p.create.is_empty() {
        match ensure_token(&job, ctx, &ns).await {
            Ok(()) => {}
            Err(e @ Error::NotOwned { .. }) => hold_back(&mut p, &job, "NameTaken", e.to_string()),
            Err(e) => return Err(e),
        }
    }
    // Pods of a deployment made before the operator took cert-manager keep
    // the job's own CA (status.deployed.tlsSecret), and wait for nothing.
    let from_cert_manager = p.status.deployed.as_ref().is_some_and(|d| d.tls_secret.is_some());
    if let (false, true, Some(issuer)) = (p.create.is_empty(), from_cert_manager, &ctx.settings.cert_manager) {
        match certificates::issued(&job, ctx, &ns, issuer).await {
            Ok(Issuance::Issued) => {}
            Ok(Issuance::Pending(why)) => {
                // Not a failure yet: looked at again soon.
                hold_pods(&mut p);
                conditions(&mut p, &job, "CertificatePending", &why, false);
                p.requeue_ms = 3_000;
            }
            Ok(Issuance::Failed(why)) => hold_back(&mut p, &job, "CertificateNotIssued", why),
            Err(e @ Error::NotOwned { .. }) => hold_back(&mut p, &job, "NameTaken", e.to_string()),
            Err(e) => return Err(e),
        }
    }
    for pod in &p.create {
        let pod_name = pod.name_any();
        match pods.create(&PostParams::default(), pod).await {
            Ok(_) => info!(job = %name, pod = %pod_name, "created pod"),
            Err(kube::Error::Api(e)) if e.code == 409 => {} // made by a reconcile whose status write was lost
            // The API server refused the pod (admission, quota, an invalid
            // field): the user's to fix, so it goes to status and events,
            // and the job waits instead of retrying at full speed.
            Err(kube::Error::Api(e)) if (400..500).contains(&e.code) => {
                let why = format!("the API server refused pod {pod_name}: {}", e.message);
                hold_back(&mut p, &job, "PodRejected", why);
                break;
            }
            Err(e) => return Err(e.into()),
        }
    }

    for event in &p.events {
        ctx.events.publish(&job, event).await;
    }
    if job.status.as_ref() != Some(&p.status) {
        let api: Api<StreamJob> = Api::namespaced(ctx.client.clone(), &ns);
        let old = serde_json::to_value(&job.status).unwrap_or(Value::Null);
        let new = serde_json::to_value(&p.status).unwrap_or(Value::Null);
        // The resourceVersion read is a precondition: a stale reconcile
        // (a frozen leader, a lagging cache) cannot write over a newer
        // status, and so cannot count a failure twice.
        let patch = json!({
            "metadata": { "resourceVersion": job.metadata.resource_version },
            "status": merge_patch(&old, &new),
        });
        match api.patch_status(&name, &PatchParams::default(), &Patch::Merge(patch)).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {
                info!(job = %name, "status changed since it was read; planning again");
                return Ok(Action::requeue(Duration::from_millis(200)));
            }
            Err(e) => return Err(e.into()),
        }
    }
    ctx.metrics.set_phase(&ns, &name, p.status.phase);
    Ok(if p.requeue_ms == 0 { Action::await_change() } else { Action::requeue(Duration::from_millis(p.requeue_ms)) })
}

/// Server-side applies `object` unless this process already applied it
/// unchanged: a job at steady state costs the API server nothing.
async fn apply_if_changed<K>(ctx: &Context, api: &Api<K>, object: &K, pp: &PatchParams) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let key = format!("{}/{}/{}", K::kind(&()), object.namespace().unwrap_or_default(), object.name_any());
    if !ctx.caches.changed(&key, object) {
        return Ok(());
    }
    // Server-side apply with force would take over an object of the same
    // name that someone else made: refuse instead.
    let owner = object.meta().owner_references.as_ref().and_then(|o| o.first()).map(|o| o.uid.clone());
    let applied = async {
        if let Some(uid) = owner {
            owned_or_absent(api, &K::kind(&()), &object.name_any(), &uid).await?;
        }
        api.patch(&object.name_any(), pp, &Patch::Apply(object)).await?;
        Ok(())
    };
    // Anything short of an applied object is tried again next time.
    let result = applied.await;
    if result.is_err() {
        ctx.caches.forget(&key);
    }
    result
}

/// No (further) pod starts, and why is in status: the API server refused
/// one, or an object of the job's name belongs to another. The current pods
/// count as not created, so a later reconcile tries again.
fn hold_back(p: &mut plan::Plan, job: &StreamJob, reason: &str, message: String) {
    hold_pods(p);
    stalled(p, job, reason, message);
}

fn hold_pods(p: &mut plan::Plan) {
    p.create.clear();
    if let Some(d) = p.status.deployed.as_mut() {
        d.created = false;
    }
}

/// Something only the user can fix: Stalled (and not Reconciling, which
/// kstatus reads first), a Warning event once, a slow retry.
fn stalled(p: &mut plan::Plan, job: &StreamJob, reason: &str, message: String) {
    conditions(p, job, reason, &message, true);
    let old = job.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
    if old.iter().all(|c| c.message != message) {
        p.events.push(plan::Event { warning: true, reason: reason.into(), note: message });
    }
    p.requeue_ms = 30_000;
}

/// Not Ready, for `reason`: Stalled (the user's to fix, in kstatus'
/// terms) or Reconciling (the operator's to finish), never both.
fn conditions(p: &mut plan::Plan, job: &StreamJob, reason: &str, message: &str, stalled: bool) {
    let old = job.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
    let now = plan::rfc3339(wall_ms());
    let stamp = plan::Stamp { old, generation: job.metadata.generation, now: &now };
    let mut set = Vec::new();
    plan::set_condition(&mut set, &stamp, "Ready", false, reason, message);
    plan::set_condition(&mut set, &stamp, "Reconciling", !stalled, reason, message);
    if stalled {
        plan::set_condition(&mut set, &stamp, "Stalled", true, reason, message);
    }
    p.status.conditions.retain(|c| !set.iter().any(|f| f.type_ == c.type_) && (stalled || c.type_ != "Stalled"));
    p.status.conditions.splice(0..0, set);
}

/// The object named `name`, if any, when it belongs to the job of `uid`:
/// server-side apply with force would take over someone else's.
pub(super) async fn owned_or_absent<K>(api: &Api<K>, kind: &str, name: &str, uid: &str) -> Result<Option<K>, Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.get_opt(name).await? {
        Some(existing) if !existing.meta().owner_references.iter().flatten().any(|o| o.uid == uid) => {
            Err(Error::NotOwned { kind: kind.into(), name: name.into() })
        }
        existing => Ok(existing),
    }
}

/// A JSON merge patch from `old` to `new`: fields `new` lacks become
/// `null`, or the API server would keep them (a cleared `nextRestartAt`).
pub fn merge_patch(old: &Value, new: &Value) -> Value {
    match (old, new) {
        (Value::Object(o), Value::Object(n)) => {
            let mut patch = serde_json::Map::new();
            for (k, v) in n {
                patch.insert(k.clone(), merge_patch(o.get(k).unwrap_or(&Value::Null), v));
            }
            for k in o.keys().filter(|k| !n.contains_key(*k)) {
                patch.insert(k.clone(), Value::Null);
            }
            Value::Object(patch)
        }
        _ => new.clone(),
    }
}

/// Creates the job's Secret (token and TLS identity) unless it exists.
/// Neither is ever replaced: pods still running would no longer be
/// admitted. A Secret an older operator made without TLS gets its
/// identity added; pods started from then on use it.
async fn ensure_token(job: &StreamJob, ctx: &Context, ns: &str) -> Result<(), Error> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let name = objects::token_secret_name(&job.name_any());
    let identity = || JobIdentity::generate(&job.name_any()).map_err(|e| Error::Token(e.to_string()));
    // Another's Secret would hand this job someone else's token and keys.
    let uid = job.metadata.uid.as_deref().unwrap_or_default();
    if let Some(existing) = owned_or_absent(&secrets, "Secret", &name, uid).await? {
        if ctx.settings.cert_manager.is_some()
            || existing.data.as_ref().is_some_and(|d| d.contains_key(objects::TLS_CA_KEY))
        {
            return Ok(());
        }
        let patch = serde_json::json!({"stringData": objects::tls_secret_data(&identity()?)});
        secrets.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
        return Ok(());
    }
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| Error::Token(e.to_string()))?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    // With cert-manager the TLS files are in the Certificate's Secret.
    let identity = if ctx.settings.cert_manager.is_some() { None } else { Some(identity()?) };
    match secrets.create(&PostParams::default(), &objects::token_secret(job, &token, identity.as_ref())).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()), // made by a concurrent reconcile
        Err(e) => Err(e.into()),
    }
}

/// Deletion under the job's `deletionPolicy`. Owned objects are removed by
/// garbage collection; nothing here may keep the finalizer stuck. A purge
/// is a sequence of steps, each one reconcile that requeues
/// ([`Error::CleanupPending`]), never a wait inside a reconcile.
async fn cleanup(job: Arc<StreamJob>, ctx: &Context) -> Result<Action, Error> {
    let ns = job.namespace().ok_or(Error::NoNamespace)?;
    let name = job.name_any();
    match job.spec.0.deletion_policy {
        DeletionPolicy::Retain => {}
        DeletionPolicy::Savepoint => {
            let event = match savepoint_step(&job, ctx, &ns).await? {
                Ok(note) => plan::Event { warning: false, reason: "Savepoint".into(), note },
                Err(note) => plan::Event { warning: true, reason: "SavepointFailed".into(), note },
            };
            ctx.events.publish(&job, &event).await;
        }
        DeletionPolicy::Purge => {
            let event = match chore_step(&job, ctx, &ns, Chore::Purge).await? {
                Ok(note) => plan::Event { warning: false, reason: "Purged".into(), note },
                Err(note) => plan::Event { warning: true, reason: "PurgeFailed".into(), note },
            };
            ctx.events.publish(&job, &event).await;
        }
    }
    let note = format!("deleted with deletionPolicy {:?}", job.spec.0.deletion_policy);
    ctx.events.publish(&job, &plan::Event { warning: false, reason: "Deleted".into(), note }).await;
    ctx.metrics.forget(&ns, &name);
    Ok(Action::await_change())
}

/// How long a deletion may spend stopping the job and purging before it
/// gives up (the checkpoints then remain, and an event says so).
const PURGE_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a deleted job may take to stop with its savepoint before a
/// pod copies its newest checkpoint instead.
const DELETION_SAVEPOINT_TIMEOUT: Duration = Duration::from_secs(60);

/// The savepoint before a deletion, one step per reconcile: the job takes
/// it itself (a stop-with-savepoint triggered in the background and
/// followed) if its coordinator runs undisturbed; otherwise (its pods went
/// first, as under foreground deletion, or it was not running, or the
/// savepoint failed or took too long) a pod copies its newest committed
/// checkpoint to a savepoint, which is a consistent point of the job too:
/// output after it was never committed.
async fn savepoint_step(job: &StreamJob, ctx: &Context, ns: &str) -> Result<Result<String, String>, Error> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let name = job.name_any();
    let key = format!("{ns}/{name}");
    if pods.get_opt(&chore_pod_name(&name, Chore::Savepoint)).await?.is_none() {
        let selector = format!("{JOB_LABEL}={name},{ROLE_LABEL}=coordinator");
        let coordinators = pods.list(&ListParams::default().labels(&selector)).await?;
        let stopped =
            coordinators.items.iter().find_map(|p| terminated(p)?.message.as_deref().and_then(parse_stop_message));
        if let Some((path, _)) = stopped {
            ctx.forget_deletion_trigger(&key);
            return Ok(Ok(format!("savepoint before deletion at {path}")));
        }
        let undisturbed = coordinators.items.iter().any(|p| {
            p.metadata.deletion_timestamp.is_none()
                && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        });
        if undisturbed {
            match ctx.deletion_trigger(&key) {
                None => match ctx.coordinator.trigger_savepoint(ns, &name, true).await {
                    Ok(id) => {
                        ctx.remember_deletion_trigger(&key, id.clone());
                        return Err(Error::CleanupPending(format!("the job stops with a savepoint ({id})")));
                    }
                    Err(e) => {
                        warn!(job = %name, "the job took no savepoint before deletion ({e}); copying its newest checkpoint")
                    }
                },
                Some((id, since)) => match ctx.coordinator.savepoint_trigger(ns, &name, &id).await {
                    Some(plan::TriggerView::Completed { path, .. }) => {
                        ctx.forget_deletion_trigger(&key);
                        return Ok(Ok(format!("savepoint before deletion at {path}")));
                    }
                    Some(plan::TriggerView::InProgress) | None if since.elapsed() < DELETION_SAVEPOINT_TIMEOUT => {
                        return Err(Error::CleanupPending(format!("the job stops with a savepoint ({id})")));
                    }
                    outcome => {
                        ctx.forget_deletion_trigger(&key);
                        warn!(job = %name, "the job took no savepoint before deletion ({outcome:?}); copying its newest checkpoint")
                    }
                },
            }
        }
    }
    ctx.forget_deletion_trigger(&key);
    chore_step(job, ctx, ns, Chore::Savepoint).await
}

/// One step of a purge or savepoint pod's run: stop the job's pods (a
/// running coordinator would write or delete checkpoints meanwhile), then
/// run the pod, then read its outcome. `Err(CleanupPending)` while a step
/// is under way; at the end the event's note, `Ok` if the chore was done.
async fn chore_step(job: &StreamJob, ctx: &Context, ns: &str, chore: Chore) -> Result<Result<String, String>, Error> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let name = job.name_any();
    let location = plan::checkpoint_location(job, &ctx.settings);
    let verb = chore.verb();
    let since = job.metadata.deletion_timestamp.as_ref().map_or(0, |t| t.0.as_millisecond().max(0) as u64);
    if wall_ms().saturating_sub(since) > PURGE_TIMEOUT.as_millis() as u64 {
        return Ok(Err(format!(
            "no {verb} of {name} within {}s of its deletion; the checkpoints under {location} are as they were",
            PURGE_TIMEOUT.as_secs()
        )));
    }
    let selector = format!("{JOB_LABEL}={name},{ROLE_LABEL} in (coordinator,worker)");
    let running = pods.list(&ListParams::default().labels(&selector)).await?;
    if !running.items.is_empty() {
        for pod in running.items.iter().filter(|p| p.metadata.deletion_timestamp.is_none()) {
            match pods.delete(&pod.name_any(), &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        return Err(Error::CleanupPending(format!("stopping {} job pod(s) before the {verb}", running.items.len())));
    }
    let chore_pod = plan::chore_pod(job, &ctx.settings, chore);
    let pod_name = chore_pod.name_any();
    let Some(seen) = pods.get_opt(&pod_name).await? else {
        pods.patch(&pod_name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&chore_pod)).await?;
        return Err(Error::CleanupPending(format!("pod {pod_name} runs the {verb} of {location}")));
    };
    let said =
        terminated(&seen).and_then(|t| t.message.clone()).map(|m| m.trim().to_string()).filter(|m| !m.is_empty());
    let outcome = match seen.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Succeeded") => Ok(match chore {
            Chore::Purge => format!("purged checkpoints and savepoints under {location}"),
            Chore::Savepoint => {
                said.unwrap_or_else(|| format!("savepoint of the newest checkpoint under {location}/savepoints"))
            }
            Chore::Dispose => said.unwrap_or_else(|| format!("disposed of savepoints under {location}/savepoints")),
        }),
        Some("Failed") => {
            let why = said
                .or_else(|| terminated(&seen).map(|t| format!("exit code {}", t.exit_code)))
                .unwrap_or_else(|| "no reason given".into());
            Err(format!("pod {pod_name} failed the {verb} of {location}: {why}"))
        }
        phase => {
            return Err(Error::CleanupPending(format!(
                "pod {pod_name} runs the {verb} of {location} ({})",
                phase.unwrap_or("new")
            )))
        }
    };
    // The pod has no owner (a foreground deletion would collect it
    // mid-chore), so it is removed here, its outcome being in the event.
    match pods.delete(&pod_name, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => warn!(job = %name, "cannot delete pod {pod_name}: {e}"),
    }
    Ok(outcome)
}

#[cfg(test)]
#[path = "controller_tests.rs"]
mod tests;
