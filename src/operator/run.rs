//! Starting the controller: watches, namespace scoping, health endpoints.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Service};
use kube::runtime::watcher::{self, Config};
use kube::runtime::Controller;
use kube::runtime::{reflector, WatchStreamExt};
use kube::Api;
use tracing::{info, warn};

use super::controller::{error_policy, reconcile, Caches, Context, KubeEvents};
use super::coordinator_api::HttpCoordinatorApi;
use super::leader::{Election, Timing};
use super::metrics::{router, OperatorMetrics};
use super::objects::{Settings, JOB_LABEL};
use crate::crd::StreamJob;

pub struct OperatorOptions {
    /// Namespaces to watch; empty: all.
    pub namespaces: Vec<String>,
    pub settings: Settings,
    pub health: SocketAddr,
    pub coordinator_url: Option<String>,
    /// `Some((namespace, lease name))`: run for leadership first.
    pub leader_election: Option<(String, String)>,
    /// How long the leader's lease holds without renewal.
    pub leader_lease_duration: std::time::Duration,
}

/// Feeds `writer` from a watch for as long as the process runs.
fn spawn_reflector<K>(api: Api<K>, config: Config, writer: reflector::store::Writer<K>)
where
    K: kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let stream = reflector::reflector(writer, watcher::watcher(api, config)).default_backoff().touched_objects();
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(item) = stream.next().await {
            if let Err(e) = item {
                warn!("watch: {e}");
            }
        }
    });
}

/// Watched caches of job pods (per scope) and of nodes, so a reconcile at
/// steady state makes no API call. Nodes are cached only where the
/// operator may list them; otherwise reconciles read the nodes they need.
async fn caches(client: &kube::Client, scopes: &[Option<String>]) -> Caches {
    let mut caches = Caches::default();
    let owned = Config::default().labels(JOB_LABEL);
    for scope in scopes {
        let api: Api<Pod> = match scope {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        let (store, writer) = reflector::store();
        spawn_reflector(api, owned.clone(), writer);
        caches.pods.push((scope.clone(), store));
    }
    let nodes: Api<Node> = Api::all(client.clone());
    match nodes.list(&kube::api::ListParams::default().limit(1)).await {
        Ok(_) => {
            let (store, writer) = reflector::store();
            spawn_reflector(nodes, Config::default(), writer);
            caches.nodes = Some(store);
        }
        Err(e) => warn!("cannot list nodes ({e}); lost nodes are checked per pod, if at all"),
    }
    // Reconciles start once the caches hold what exists, or after a while
    // with whatever they hold (a missing pod is then asked for directly).
    let ready = async {
        futures::future::join_all(caches.pods.iter().map(|(_, s)| s.wait_until_ready())).await;
        if let Some(nodes) = &caches.nodes {
            let _ = nodes.wait_until_ready().await;
        }
    };
    if tokio::time::timeout(std::time::Duration::from_secs(30), ready).await.is_err() {
        warn!("caches not filled within 30s; going on");
    }
    caches
}

pub async fn run(opts: OperatorOptions) -> anyhow::Result<()> {
    let metrics = Arc::new(OperatorMetrics::default());
    // Every request to the API server is counted (weir_operator_api_requests_total):
    // what the operator costs the control plane, per method.
    let counting = metrics.clone();
    let client = kube::client::ClientBuilder::try_from(kube::Config::infer().await?)?
        .with_layer(&tower::util::MapRequestLayer::new(move |request: http::Request<kube::client::Body>| {
            counting.api_request(request.method().as_str());
            request
        }))
        .build();
    let listener = tokio::net::TcpListener::bind(opts.health).await?;
    let health = router(metrics.clone());
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, health).await {
            warn!("health endpoint stopped: {e}");
        }
    });
    // Ready as soon as serving: a follower waiting for the lease is a healthy
    // standby, and a rolling upgrade needs the new pod ready before the old
    // one (the leader) goes away.
    metrics.ready.store(true, Ordering::Relaxed);
    let mut leadership = None;
    if let Some((namespace, lease)) = &opts.leader_election {
        let identity = std::env::var("POD_NAME").unwrap_or_else(|_| format!("weir-operator-{}", std::process::id()));
        info!(%identity, %lease, "waiting to lead");
        let timing = Timing::for_lease(opts.leader_lease_duration);
        leadership = Some(Election::new(client.clone(), namespace, lease, &identity, timing).lead().await);
    }
    let scopes: Vec<Option<String>> =
        if opts.namespaces.is_empty() { vec![None] } else { opts.namespaces.clone().into_iter().map(Some).collect() };
    let caches = caches(&client, &scopes).await;
    let ctx = Arc::new(Context {
        client: client.clone(),
        coordinator: Arc::new(HttpCoordinatorApi::new(
            opts.coordinator_url,
            client.clone(),
            opts.settings.cert_manager.is_some(),
        )),
        events: Arc::new(KubeEvents { client: client.clone() }),
        settings: opts.settings,
        metrics: metrics.clone(),
        failures: Default::default(),
        node_warning: Default::default(),
        leadership,
        caches,
        deletion_triggers: Default::default(),
    });
    let owned = Config::default().labels(JOB_LABEL);
    info!(namespaces = ?scopes, "weir operator starting");
    let controllers = scopes.into_iter().map(|ns| {
        let (jobs, pods, services, maps) = match &ns {
            Some(ns) => (
                Api::<StreamJob>::namespaced(client.clone(), ns),
                Api::<Pod>::namespaced(client.clone(), ns),
                Api::<Service>::namespaced(client.clone(), ns),
                Api::<ConfigMap>::namespaced(client.clone(), ns),
            ),
            None => {
                (Api::all(client.clone()), Api::all(client.clone()), Api::all(client.clone()), Api::all(client.clone()))
            }
        };
        Controller::new(jobs, Config::default())
            .owns(pods, owned.clone())
            .owns(services, owned.clone())
            .owns(maps, owned.clone())
            .shutdown_on_signal()
            .run(reconcile, error_policy, ctx.clone())
            .for_each(|result| async move {
                match result {
                    Ok((obj, _)) => tracing::debug!(namespace = ?obj.namespace, name = %obj.name, "reconciled"),
                    Err(e) => tracing::debug!("reconcile error: {e}"),
                }
            })
    });
    futures::future::join_all(controllers).await;
    // The controllers end on SIGTERM (after in-flight reconciles): hand the
    // lease over now rather than after it expires.
    super::leader::release().await;
    Ok(())
}
