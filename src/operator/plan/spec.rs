//! What of a job's spec its pods run: the digest that tells a changed spec
//! from a lifecycle edit, and where its checkpoints go.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};
use weir_runtime::manifest::{CheckpointOptions, StreamJobSpec};

use super::{pod_template, DeployedStatus, Settings};

/// The first 64 hex digits of SHA-256 over the canonical JSON (keys
/// sorted) of what the pods run. Lifecycle fields (suspend, nonces,
/// restart strategy, deletion and upgrade policy, the initial savepoint,
/// savepoint options)
/// are left out, so changing them restarts nothing; so are operator
/// settings, so an operator upgrade restarts nothing either. Stable across
/// Rust releases and operator versions, unlike `DefaultHasher`.
pub fn spec_digest(spec: &StreamJobSpec) -> String {
    let mut s = spec.clone();
    s.suspend = false;
    s.savepoint_nonce = None;
    s.restart_nonce = None;
    s.restart_strategy = Default::default();
    s.deletion_policy = Default::default();
    s.upgrade_mode = Default::default();
    // Read only while the job has no checkpoint of its own, like Flink's.
    s.initial_savepoint_path = None;
    let mut value = serde_json::to_value(&s).unwrap_or_default();
    // Lifecycle fields added since digests were first recorded are left
    // out entirely: a default written out would change every digest, and
    // an operator upgrade would restart every job.
    if let Some(fields) = value.as_object_mut() {
        fields.remove("savepoints");
    }
    let mut text = String::new();
    canonical_json(&value, &mut text);
    Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// JSON with object keys sorted and no whitespace, whatever order the
/// serializer keeps maps in.
pub(super) fn canonical_json(v: &serde_json::Value, out: &mut String) {
    match v {
        serde_json::Value::Object(map) => {
            let sorted: BTreeMap<&String, &serde_json::Value> = map.iter().collect();
            out.push('{');
            for (i, (k, v)) in sorted.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::Value::String(k.clone()).to_string());
                out.push(':');
                canonical_json(v, out);
            }
            out.push('}');
        }
        serde_json::Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_json(v, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// Where a job's checkpoints go: its own storage if the spec names one;
/// else where the job already keeps them (an operator whose default
/// changed never moves a job's state behind its back); else the
/// operator's default.
pub fn effective_storage(spec: &StreamJobSpec, deployed: Option<&DeployedStatus>, settings: &Settings) -> String {
    if spec.checkpoints.storage != CheckpointOptions::default().storage {
        return spec.checkpoints.storage.clone();
    }
    if let Some(d) = deployed.filter(|d| !d.checkpoint_storage.is_empty()) {
        return d.checkpoint_storage.clone();
    }
    settings.default_storage.clone().unwrap_or_else(|| spec.checkpoints.storage.clone())
}

/// A `file://` checkpoint storage that lies inside each pod's own
/// filesystem: a replaced pod would find none of its checkpoints (and a
/// coordinator and its workers would not see each other's files). In
/// operator mode it must be on a volume that every job pod mounts and that
/// outlives pods: a claim, a host path, NFS, CSI and the like.
pub(super) fn pod_local_storage(
    storage: &str,
    template: Option<&k8s_openapi::api::core::v1::PodTemplateSpec>,
) -> Option<String> {
    let path = storage.strip_prefix("file://")?;
    let spec = template.and_then(|t| t.spec.as_ref());
    let container = spec.and_then(|s| s.containers.iter().find(|c| c.name == pod_template::MAIN_CONTAINER));
    let lasting = |volume: &str| {
        spec.and_then(|s| s.volumes.as_ref()).and_then(|v| v.iter().find(|v| v.name == volume)).is_some_and(|v| {
            v.empty_dir.is_none()
                && v.config_map.is_none()
                && v.secret.is_none()
                && v.downward_api.is_none()
                && v.projected.is_none()
        })
    };
    let under = |mount: &str| {
        let mount = mount.trim_end_matches('/');
        path == mount || path.starts_with(&format!("{mount}/"))
    };
    let shared = path.starts_with('/')
        && container
            .and_then(|c| c.volume_mounts.as_ref())
            .is_some_and(|m| m.iter().any(|m| under(&m.mount_path) && lasting(&m.name)));
    (!shared).then(|| {
        format!(
            "spec.checkpoints.storage: {storage} is inside each pod; give the job a volume every pod mounts \
             (spec.podTemplate: a persistentVolumeClaim mounted in the `weir` container at a parent of {path}) \
             or use object storage (s3://)"
        )
    })
}
