//! The objects of a job: pods, Service, ConfigMap, Secret and
//! NetworkPolicy, built from a [`Deployment`] (pure, no I/O).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvFromSource, EnvVar, EnvVarSource,
    HTTPGetAction, KeyToPath, LocalObjectReference, Pod, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SeccompProfile, Secret, SecretEnvSource, SecretKeySelector, SecretVolumeSource,
    SecurityContext, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
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

use super::pod_template;
use crate::crd::StreamJob;

pub const JOB_LABEL: &str = "weir.dev/job";
pub const ROLE_LABEL: &str = "weir.dev/role";
/// The digest of the spec a pod runs (its first 32 hex digits).
pub const DIGEST_LABEL: &str = "weir.dev/spec-digest";
/// The failover attempt that created a pod; the Service selects the
/// coordinator of the current attempt only.
pub const ATTEMPT_LABEL: &str = "weir.dev/attempt";
pub const WORKER_PORT: i32 = 6123;
pub const HTTP_PORT: i32 = 8081;
/// The volume of the job's Secret (TLS files) in its pods.
const TLS_VOLUME: &str = "tls";
/// A worker's `/healthz` and `/readyz`.
pub const WORKER_HEALTH_PORT: i32 = 8082;
/// A job's name must leave room for `-worker-<index>-<attempt>` in a
/// 63-character label value.
pub const MAX_JOB_NAME: usize = 40;

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
    /// How long a pod's node may be NotReady or Unknown before its pods
    /// count as lost: force-deleted and replaced.
    pub node_lost_after_ms: u64,
    /// How long a job may take to run after a deployment, upgrade or
    /// restart before it counts as Stalled.
    pub progress_deadline_ms: u64,
    /// How often a running job's coordinator is asked for its checkpoints.
    pub status_interval_ms: u64,
    /// Job certificates from cert-manager, signed by this issuer, instead
    /// of a CA of the operator's own per job.
    pub cert_manager: Option<super::certificates::IssuerRef>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Coordinator,
    Worker(u32),
}

/// What one deployment of a job runs, fixed when it is deployed and kept
/// in status (`status.deployed`), so failovers and operator upgrades
/// recreate pods exactly as they were.
#[derive(Debug, Clone, Copy)]
pub struct Deployment<'a> {
    pub job: &'a StreamJob,
    pub digest: &'a str,
    pub image: &'a str,
    pub storage: &'a str,
    pub template: Option<&'a PodTemplateSpec>,
    /// The Secret with the pods' TLS files; `None`: the job's own.
    pub tls_secret: Option<&'a str>,
}

/// The coordinator's Service (stable: workers reach it by this name).
pub fn coordinator_name(job: &str) -> String {
    format!("{job}-coordinator")
}

/// A job pod's name: one per role and attempt, as Flink names its
/// TaskManager pods, so a pod stuck terminating on a lost node never
/// blocks its replacement.
pub fn pod_name(job: &str, role: Role, attempt: u32) -> String {
    match role {
        Role::Coordinator => format!("{job}-coordinator-{attempt}"),
        Role::Worker(i) => format!("{job}-worker-{i}-{attempt}"),
    }
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
pub fn token_secret(job: &StreamJob, token: &str, identity: Option<&JobIdentity>) -> Secret {
    let name = job.metadata.name.clone().unwrap_or_default();
    Secret {
        metadata: meta(token_secret_name(&name), job.metadata.namespace.as_deref(), labels(&name, None), &owner(job)),
        string_data: Some({
            let mut data = identity.map(tls_secret_data).unwrap_or_default();
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

pub(super) fn labels(job: &str, role: Option<Role>) -> BTreeMap<String, String> {
    let mut l = BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "weir".to_string()),
        ("app.kubernetes.io/managed-by".to_string(), "weir-operator".to_string()),
        (JOB_LABEL.to_string(), job.to_string()),
    ]);
    if let Some(role) = role {
        let value = match role {
            Role::Coordinator => "coordinator",
            Role::Worker(_) => "worker",
        };
        l.insert(ROLE_LABEL.into(), value.into());
    }
    l
}

/// Labels and names are DNS labels: at most 63 characters.
fn digest_label(digest: &str) -> String {
    digest.chars().take(32).collect()
}

/// The StreamJob as controller owner, so garbage collection removes what it owns.
pub fn owner(job: &StreamJob) -> Vec<OwnerReference> {
    job.controller_owner_ref(&()).map(|o| vec![o]).unwrap_or_default()
}

pub(super) fn meta(
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

/// What a short-lived storage pod does for a deleted job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chore {
    /// `weir checkpoints purge` (deletionPolicy Purge).
    Purge,
    /// `weir checkpoints savepoint`: the newest committed checkpoint copied
    /// to a savepoint (deletionPolicy Savepoint, when the job could not
    /// take one itself: its pods were gone first, as under foreground
    /// deletion, or it was not running).
    Savepoint,
    /// `weir checkpoints dispose`: savepoints past `spec.savepoints`
    /// retention deleted, for a job that exists.
    Dispose,
}

impl Chore {
    pub fn verb(self) -> &'static str {
        match self {
            Chore::Purge => "purge",
            Chore::Savepoint => "savepoint",
            Chore::Dispose => "dispose",
        }
    }
}

pub fn chore_pod_name(job: &str, chore: Chore) -> String {
    format!("{job}-{}", chore.verb())
}

/// The short-lived pod that runs `weir checkpoints purge` or `savepoint`
/// for a deleted job. It runs like the job's own pods (image, pod
/// template, credentials) because a `file://` volume or the storage's
/// credentials may exist only there, not in the operator's pod.
pub fn chore_pod(d: &Deployment<'_>, settings: &Settings, chore: Chore) -> Pod {
    let name = d.job.metadata.name.clone().unwrap_or_default();
    // The operator's own settings only: the template is merged after the
    // worker's arguments and environment are replaced.
    let mut p = pod(&Deployment { template: None, ..*d }, Role::Worker(0), 0, settings);
    let mut l = labels(&name, None);
    l.insert(ROLE_LABEL.into(), chore.verb().into());
    p.metadata.name = Some(chore_pod_name(&name, chore));
    p.metadata.labels = Some(l);
    // A deleted job's chores are not owned by it: a foreground deletion
    // would collect them mid-chore. The operator deletes them once ended.
    if chore != Chore::Dispose {
        p.metadata.owner_references = None;
    }
    if let Some(spec) = p.spec.as_mut() {
        // The job's Secret (token, TLS) is owned by the job: a foreground
        // deletion removes it first, and this pod talks to no other pod.
        if let Some(volumes) = spec.volumes.as_mut() {
            volumes.retain(|v| v.name != TLS_VOLUME);
        }
        if let Some(c) = spec.containers.first_mut() {
            c.args = Some(vec!["checkpoints".into(), chore.verb().into(), checkpoint_location(d.job, d.storage)]);
            c.env = None;
            if let Some(mounts) = c.volume_mounts.as_mut() {
                mounts.retain(|m| m.name != TLS_VOLUME);
            }
            // A worker's probes and port; this pod serves nothing.
            c.ports = None;
            c.liveness_probe = None;
            c.readiness_probe = None;
        }
    }
    if let Some(t) = d.template {
        pod_template::apply(&mut p, t);
    }
    p
}

/// The job's own directory under its effective storage, as the runtime
/// lays it out (`<storage>/<namespace>/<name>`).
pub fn checkpoint_location(job: &StreamJob, storage: &str) -> String {
    let name = job.metadata.name.as_deref().unwrap_or_default();
    let ns = job.metadata.namespace.as_deref().unwrap_or("default");
    format!("{}/{ns}/{name}", storage.trim_end_matches('/'))
}

/// The job file the coordinator reads, with the deployment's storage.
pub fn config_map(d: &Deployment<'_>) -> ConfigMap {
    let job = d.job;
    let name = job.metadata.name.clone().unwrap_or_default();
    let mut spec = job.spec.0.clone();
    spec.checkpoints.storage = d.storage.to_string();
    spec.pod_template = None;
    let mut spec = serde_json::to_value(&spec).unwrap_or_default();
    // The operator's own fields: an image older than them would refuse
    // the job file (it denies unknown fields).
    if let Some(fields) = spec.as_object_mut() {
        fields.remove("savepoints");
    }
    let manifest = serde_json::json!({
        "apiVersion": weir_runtime::manifest::API_VERSION,
        "kind": weir_runtime::manifest::KIND,
        "metadata": { "name": name, "namespace": job.metadata.namespace },
        "spec": spec,
    });
    let yaml = serde_yaml::to_string(&manifest).unwrap_or_default();
    ConfigMap {
        metadata: meta(config_map_name(&name), job.metadata.namespace.as_deref(), labels(&name, None), &owner(job)),
        data: Some(BTreeMap::from([("job.yaml".to_string(), yaml)])),
        ..ConfigMap::default()
    }
}

/// The coordinator's address; it selects the coordinator pod of
/// `attempt` only, never a stale one left on a lost node.
pub fn service(job: &StreamJob, attempt: u32) -> Service {
    let name = job.metadata.name.clone().unwrap_or_default();
    let mut selector = labels(&name, Some(Role::Coordinator));
    selector.insert(ATTEMPT_LABEL.into(), attempt.to_string());
    Service {
        metadata: meta(coordinator_name(&name), job.metadata.namespace.as_deref(), labels(&name, None), &owner(job)),
        spec: Some(ServiceSpec {
            selector: Some(selector),
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
            publish_not_ready_addresses: Some(true),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// Job pods take traffic from each other (worker registration, shuffle
/// channels) on any port, and from anywhere on the coordinator's HTTP port:
/// the operator and Prometheus read it, and its mutating calls need the
/// job token. Outbound traffic (storage, brokers) is not limited.
pub fn network_policy(job: &StreamJob) -> NetworkPolicy {
    let (namespace, owner) = (job.metadata.namespace.as_deref(), &owner(job));
    let job = job.metadata.name.as_deref().unwrap_or_default();
    let same_job = LabelSelector {
        match_labels: Some(BTreeMap::from([(JOB_LABEL.to_string(), job.to_string())])),
        ..LabelSelector::default()
    };
    NetworkPolicy {
        metadata: meta(job.to_string(), namespace, labels(job, None), owner),
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

/// A probe of a named HTTP port. The coordinator's readiness means the
/// job runs; the Service publishes the coordinator before that, since
/// workers must reach it to make it run.
fn http_probe(port: &str, path: &str, period_seconds: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(port.into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period_seconds),
        timeout_seconds: Some(5),
        failure_threshold: Some(failure_threshold),
        ..Probe::default()
    }
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar { name: name.into(), value: Some(value.into()), ..EnvVar::default() }
}

/// A job pod: the operator's settings, then the user's pod template.
/// A job pod of `attempt`: the deployment's image and spec, the
/// operator's settings, then the user's pod template.
pub fn pod(d: &Deployment<'_>, role: Role, attempt: u32, settings: &Settings) -> Pod {
    let job = d.job;
    let name = job.metadata.name.clone().unwrap_or_default();
    let ns = job.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let spec = &job.spec.0;
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
    let own_name = pod_name(&name, role, attempt);
    let (args, envs, mounts, volumes) = match role {
        Role::Coordinator => (
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
        Role::Worker(_) => (
            vec!["worker".to_string()],
            vec![
                env("WEIR_COORDINATOR", format!("{}.{ns}.svc:{WORKER_PORT}", coordinator_name(&name))),
                env("WEIR_WORKER_NAME", own_name.clone()),
                env("WEIR_HEALTH", format!("0.0.0.0:{WORKER_HEALTH_PORT}")),
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
        name: TLS_VOLUME.into(),
        mount_path: TLS_DIR.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    });
    volumes.push(Volume {
        name: TLS_VOLUME.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(d.tls_secret.map_or_else(|| token_secret_name(&name), String::from)),
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
        Role::Worker(_) => Some(vec![ContainerPort {
            name: Some("health".into()),
            container_port: WORKER_HEALTH_PORT,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
    };
    // A worker is live while its control loop turns (a hung one is killed,
    // its pod fails and the job fails over); ready while it has a session
    // with the coordinator.
    let probes = match role {
        Role::Coordinator => (Some(http_probe("http", "/healthz", 10, 3)), Some(http_probe("http", "/readyz", 5, 1))),
        Role::Worker(_) => (Some(http_probe("health", "/healthz", 10, 3)), Some(http_probe("health", "/readyz", 5, 1))),
    };
    let mut pod_labels = labels(&name, Some(role));
    pod_labels.insert(DIGEST_LABEL.into(), digest_label(d.digest));
    pod_labels.insert(ATTEMPT_LABEL.into(), attempt.to_string());
    let mut pod = Pod {
        metadata: meta(own_name, job.metadata.namespace.as_deref(), pod_labels, &owner(job)),
        spec: Some(PodSpec {
            restart_policy: Some("Never".into()),
            image_pull_secrets: Some(
                settings.image_pull_secrets.iter().map(|name| LocalObjectReference { name: name.clone() }).collect(),
            )
            .filter(|s: &Vec<_>| !s.is_empty()),
            // Job pods never call the API server.
            automount_service_account_token: Some(false),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(65532),
                run_as_group: Some(65532),
                seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..SeccompProfile::default() }),
                // Makes mounted volumes writable by the job's user.
                fs_group: Some(65532),
                ..PodSecurityContext::default()
            }),
            containers: vec![Container {
                name: pod_template::MAIN_CONTAINER.into(),
                image: Some(d.image.into()),
                image_pull_policy: Some(settings.image_pull_policy.clone()),
                command: Some(vec!["weir".into()]),
                args: Some(args),
                // Why a container failed reaches status and events through
                // its termination message: the last log lines.
                termination_message_policy: Some("FallbackToLogsOnError".into()),
                env: Some(envs),
                ports,
                resources,
                liveness_probe: probes.0,
                readiness_probe: probes.1,
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
    if let Some(t) = d.template {
        pod_template::apply(&mut pod, t);
    }
    pod
}

#[cfg(test)]
#[path = "objects_tests.rs"]
mod tests;
