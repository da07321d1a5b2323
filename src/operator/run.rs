//! Starting the controller: watches, namespace scoping, health endpoints.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use kube::runtime::watcher::Config;
use kube::runtime::Controller;
use kube::{Api, Client};
use tracing::{info, warn};

use super::controller::{error_policy, reconcile, Context, KubeEvents};
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

pub async fn run(opts: OperatorOptions) -> anyhow::Result<()> {
    let client = Client::try_default().await?;
    let metrics = Arc::new(OperatorMetrics::default());
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
    let ctx = Arc::new(Context {
        client: client.clone(),
        coordinator: Arc::new(HttpCoordinatorApi::new(opts.coordinator_url, client.clone())),
        events: Arc::new(KubeEvents { client: client.clone() }),
        settings: opts.settings,
        metrics: metrics.clone(),
        failures: Default::default(),
        node_warning: Default::default(),
        leadership,
    });
    let owned = Config::default().labels(JOB_LABEL);
    let scopes: Vec<Option<String>> =
        if opts.namespaces.is_empty() { vec![None] } else { opts.namespaces.into_iter().map(Some).collect() };
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
