//! The `StreamJob` custom resource: the runtime's spec type (the one
//! definition `weir run` also reads) plus the status the operator writes.
//! `weir crd` prints the CRD generated from these types; `crds/` holds its
//! output and a test fails when the two drift apart.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What a stream job runs and how: the job, its parallelism, checkpoints, restarts and lifecycle.
#[derive(CustomResource, Clone, Debug, Serialize, Deserialize, JsonSchema, PartialEq)]
#[kube(
    group = "weir.dev",
    version = "v1alpha1",
    kind = "StreamJob",
    plural = "streamjobs",
    shortname = "sj",
    namespaced,
    status = "StreamJobStatus",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Parallelism","type":"integer","jsonPath":".spec.parallelism"}"#,
    printcolumn = r#"{"name":"Checkpoint","type":"integer","jsonPath":".status.checkpoints.latest.id"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(transparent)]
#[schemars(transparent)]
pub struct JobSpec(pub weir_runtime::manifest::StreamJobSpec);

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
pub enum Phase {
    #[default]
    Pending,
    Starting,
    Running,
    Restarting,
    Suspended,
    Failed,
    Finished,
}

/// A standard Kubernetes condition.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    pub reason: String,
    pub message: String,
    /// RFC 3339; changes only when `status` changes.
    pub last_transition_time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointRef {
    pub id: u64,
    pub path: String,
    /// RFC 3339.
    pub completed_at: String,
    pub duration_ms: u64,
    pub size_bytes: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest: Option<CheckpointRef>,
    /// Recent completed checkpoints, newest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<CheckpointRef>,
    /// Failed or expired checkpoints the coordinator counted.
    #[serde(default)]
    pub failed: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Failure {
    pub pod: String,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The end of what the container said before it ended (its termination
    /// message, or its last log lines), e.g. the bad record that failed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// RFC 3339.
    pub time: String,
}

/// The restart budget as Flink's restart strategies keep it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RestartStatus {
    /// Restarts since the job was created.
    pub count: u32,
    /// Failures since the budget was last reset (by a spec change, a new
    /// `restartNonce` or a resume from Failed): what `fixedDelay` counts.
    #[serde(default)]
    pub failures: u32,
    /// When the pending restart happens (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_restart_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<Failure>,
    /// Times of the latest failures (ms since the epoch), oldest first, at
    /// most `maxFailuresPerInterval` of them: what `failureRate` counts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failure_times_ms: Vec<u64>,
    /// Failures in a row, each within `resetBackoffThreshold` of the one
    /// before: what `exponentialDelay`'s backoff grows with.
    #[serde(default)]
    pub backoff_streak: u32,
}

/// What the operator deployed, like Flink's `lastReconciledSpec`: a job
/// keeps its image and checkpoint storage through failovers and operator
/// upgrades, and only a change of its own spec moves it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DeployedStatus {
    /// SHA-256 of the canonical JSON of the spec fields the pods run.
    pub digest: String,
    pub image: String,
    pub checkpoint_storage: String,
    /// The failover attempt of the newest pods; each attempt's pods have
    /// their own names.
    pub attempt: u32,
    /// The job's current pods: the coordinator, then workers 0, 1, ...
    /// Any other pod of the job is stale and is deleted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pods: Vec<String>,
    /// Whether the current pods were created; until then their absence
    /// is expected, not a failure.
    #[serde(default)]
    pub created: bool,
    /// The spec deployed, as JSON (Flink's `lastReconciledSpec`): an invalid
    /// edit leaves the job reconciled under it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<String>,
    /// The Secret the pods take their TLS files from when it is not the
    /// job's own: cert-manager's `<job>-tls`. Fixed per deployment, so a
    /// pod replaced after the operator switched issuers still holds a
    /// certificate its peers trust.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_secret: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SavepointStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<i64>,
    pub path: String,
}

/// Why a savepoint was taken.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
pub enum SavepointKind {
    /// A new `spec.savepointNonce`.
    #[default]
    Manual,
    /// A spec change under `upgradeMode: Savepoint` (the job stops with it).
    Upgrade,
    /// `suspend: true` under `upgradeMode: Savepoint` (the job stops with it).
    Suspend,
}

impl SavepointKind {
    /// Whether the job stops with this savepoint.
    pub fn stops(self) -> bool {
        self != SavepointKind::Manual
    }
}

/// A savepoint in `status.savepoints`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SavepointRecord {
    pub path: String,
    /// The checkpoint it is a copy of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<u64>,
    /// When it completed (RFC 3339).
    pub taken_at: String,
    pub kind: SavepointKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<i64>,
}

/// A savepoint asked of the coordinator and not yet seen to end.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SavepointTrigger {
    /// The coordinator's id for it (`GET /v1/savepoint-triggers/<id>`).
    pub id: String,
    pub kind: SavepointKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<i64>,
    /// When it was asked for (RFC 3339, milliseconds).
    pub triggered_at: String,
}

/// Savepoints in flight, their failures and what is left to dispose of.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SavepointInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<SavepointTrigger>,
    /// Failures in a row of the savepoint wanted now; reset by a success.
    #[serde(default)]
    pub failures: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// No savepoint is asked for before this time (RFC 3339, milliseconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<String>,
    /// The last `savepointNonce` acted on (taken, or given up after failures).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<i64>,
    /// Savepoints past `spec.savepoints` retention, still to be deleted
    /// from storage (their names, `sp-<ms>`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dispose: Vec<String>,
    /// The names the running disposal pod was given.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disposing: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StreamJobStatus {
    #[serde(default)]
    pub phase: Phase,
    /// The generation this status describes; set on every reconcile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoints: Option<CheckpointStatus>,
    /// The checkpoint the running job restored from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_from: Option<u64>,
    #[serde(default)]
    pub restarts: RestartStatus,
    /// What the pods run; a different spec digest means an upgrade.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployed: Option<DeployedStatus>,
    /// The last `restartNonce` acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_nonce: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_savepoint: Option<SavepointStatus>,
    /// Savepoints taken by the operator, newest first, as many as
    /// `spec.savepoints` keeps.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub savepoints: Vec<SavepointRecord>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub savepoint_info: SavepointInfo,
    /// Set by a stateless upgrade: checkpoints completed before this time
    /// (ms since the epoch) are not restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_reset_at_ms: Option<u64>,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// The CRD: the schema from the types, plus the rules on the object as a
/// whole that no field type can carry.
pub fn crd() -> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::ValidationRule;
    use kube::CustomResourceExt;
    let mut crd = StreamJob::crd();
    for version in &mut crd.spec.versions {
        if let Some(schema) = version.schema.as_mut().and_then(|s| s.open_api_v3_schema.as_mut()) {
            schema.x_kubernetes_validations = Some(vec![ValidationRule {
                rule: format!("size(self.metadata.name) <= {}", crate::operator::objects::MAX_JOB_NAME),
                message: Some(format!(
                    "metadata.name: at most {} characters, so that pod names with a role, an index and an \
                     attempt stay valid labels",
                    crate::operator::objects::MAX_JOB_NAME
                )),
                ..ValidationRule::default()
            }]);
        }
    }
    crd
}

/// The CRD as YAML, as `weir crd` prints it.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    serde_yaml::to_string(&crd())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crds_folder_matches_the_types() {
        let generated = crd_yaml().unwrap();
        let stored =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/crds/streamjob.yaml")).unwrap_or_default();
        assert!(
            stored == generated,
            "crds/streamjob.yaml is stale: run `cargo run -- crd > crds/streamjob.yaml` and commit it"
        );
    }

    #[test]
    fn the_chart_ships_the_same_crd() {
        let chart = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/charts/weir/crds/streamjob.yaml"))
            .unwrap_or_default();
        assert!(chart == crd_yaml().unwrap(), "charts/weir/crds/streamjob.yaml is stale: copy crds/streamjob.yaml");
    }

    #[test]
    fn the_crd_is_namespaced_with_short_name_status_and_printer_columns() {
        let crd = crd();
        assert_eq!(crd.metadata.name.as_deref(), Some("streamjobs.weir.dev"));
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.names.short_names, Some(vec!["sj".to_string()]));
        let version = &crd.spec.versions[0];
        assert!(version.subresources.as_ref().and_then(|s| s.status.as_ref()).is_some());
        let columns: Vec<String> =
            version.additional_printer_columns.iter().flatten().map(|c| c.name.clone()).collect();
        assert_eq!(columns, ["Phase", "Parallelism", "Checkpoint", "Age"]);
    }

    /// kubectl and most GitOps tools read YAML 1.1, where a bare `n`, `y`,
    /// `on` or `no` is a boolean: a field so named would arrive as `false`
    /// (an API server refused the CRD itself over a `required: [n, ...]`).
    #[test]
    fn no_field_or_enum_value_of_the_crd_reads_as_a_boolean_or_null_in_yaml_1_1() {
        const AMBIGUOUS: [&str; 11] = ["y", "yes", "n", "no", "true", "false", "on", "off", "null", "~", ""];
        fn walk(node: &serde_json::Value, path: &str, found: &mut Vec<String>) {
            match node {
                serde_json::Value::Object(map) => {
                    for (key, value) in map {
                        let names: Vec<&str> = match (key.as_str(), value) {
                            ("properties", serde_json::Value::Object(props)) => {
                                props.keys().map(String::as_str).collect()
                            }
                            ("enum" | "required", serde_json::Value::Array(items)) => {
                                items.iter().filter_map(|i| i.as_str()).collect()
                            }
                            _ => Vec::new(),
                        };
                        for name in names {
                            if AMBIGUOUS.contains(&name.to_ascii_lowercase().as_str()) {
                                found.push(format!("{path}/{key}: `{name}`"));
                            }
                        }
                        walk(value, &format!("{path}/{key}"), found);
                    }
                }
                serde_json::Value::Array(items) => items.iter().for_each(|i| walk(i, path, found)),
                _ => {}
            }
        }
        let mut found = Vec::new();
        walk(&serde_json::to_value(crd()).unwrap(), "", &mut found);
        assert!(found.is_empty(), "{found:?}");
    }

    #[test]
    fn a_manifest_for_weir_run_is_also_a_valid_custom_resource() {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/counts.yaml")).unwrap();
        let job: StreamJob = serde_yaml::from_str(&text).unwrap();
        assert_eq!(job.spec.0.parallelism, 2);
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;
    use crate::operator::objects::Settings;
    use crate::operator::plan::{self, Observed};

    /// Every StreamJob in `examples/kubernetes/` as the operator would see it.
    fn kubernetes_examples() -> Vec<(String, StreamJob)> {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/kubernetes");
        let mut jobs = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            for doc in serde_yaml::Deserializer::from_str(&text) {
                let value = serde_yaml::Value::deserialize(doc).unwrap();
                if value.get("kind").and_then(|k| k.as_str()) == Some("StreamJob") {
                    let mut job: StreamJob = serde_yaml::from_value(value).unwrap();
                    job.metadata.namespace = Some("default".into());
                    jobs.push((path.display().to_string(), job));
                }
            }
        }
        jobs
    }

    #[test]
    fn the_kubernetes_examples_are_valid_and_mount_their_volume_in_every_pod() {
        let jobs = kubernetes_examples();
        assert!(jobs.len() >= 2, "{jobs:?}");
        let settings = Settings {
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
        };
        for (path, job) in jobs {
            let p = plan::plan(&job, &Observed::default(), &settings);
            assert!(p.status.conditions.iter().all(|c| c.reason != "InvalidSpec"), "{path}: {:?}", p.status.conditions);
            assert_eq!(p.create.len() as u32, 1 + job.spec.0.workers, "{path}");
            for pod in &p.create {
                let mounts = pod.spec.as_ref().and_then(|s| s.containers[0].volume_mounts.clone()).unwrap_or_default();
                assert!(mounts.iter().any(|m| m.mount_path == "/data"), "{path}: {:?}", pod.metadata.name);
            }
        }
    }
}

#[cfg(test)]
mod cel_tests;
