//! `weir operator`: a kube-rs controller that turns each `StreamJob` into
//! a coordinator pod, worker pods, a Service and a ConfigMap, and keeps
//! the resource's status true.
//!
//! # Layout
//! - [`plan`]: the step a reconcile takes (an explicit decision in priority
//!   order: invalid, suspend, finished, failed, redeploy, failover, restart,
//!   run) and the plan that carries it out, with the status to write (pure);
//!   in it, `observed` (what a reconcile saw), `spec` (the spec digest and
//!   checkpoint storage), `conditions` (the status conditions) and
//!   `savepoints`.
//! - [`objects`]: the job's pods, Service, ConfigMap, Secret and NetworkPolicy (pure).
//! - [`pod_template`]: merging `spec.podTemplate` into the job pods (pure).
//! - [`certificates`]: job certificates from cert-manager and whether pods may use them.
//! - [`controller`]: one reconcile (observe, plan, apply, status) and the finalizer.
//! - [`coordinator_api`]: reading a job's coordinator and asking it for savepoints.
//! - [`leader`]: leader election over a Lease, for several replicas.
//! - [`metrics`]: Prometheus metrics and health endpoints.
//! - [`run`]: watches and namespace scoping.

pub mod certificates;
pub mod controller;
pub mod coordinator_api;
pub mod leader;
pub mod metrics;
pub mod objects;
pub mod plan;
pub mod pod_template;
pub mod run;
