//! `spec.podTemplate`: a user's pod template merged into the pods the
//! operator builds, the way Flink's operator treats its pod templates.
//!
//! The template is the base and the operator's pod goes on top, with three
//! exceptions that let a template do what a cluster needs: lists keyed by
//! name (volumes, env, volume mounts) keep the template's entries the
//! operator does not set itself; security contexts are merged field by field
//! with the template's fields winning (a volume may need `fsGroup`, a
//! sidecar a writable root); and the container named `weir` is merged with
//! the operator's container while other containers are kept as sidecars.

use k8s_openapi::api::core::v1::{Container, Pod, PodTemplateSpec};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The name of the operator's container in every job pod.
pub const MAIN_CONTAINER: &str = "weir";

/// Reads `spec.podTemplate`; an error names the field and what is wrong.
pub fn parse(value: Option<&serde_json::Value>) -> Result<Option<PodTemplateSpec>, String> {
    let Some(value) = value else { return Ok(None) };
    let mut value = value.clone();
    // A template that only adds volumes or a node selector need not list
    // containers, although Kubernetes' PodSpec requires the field.
    if let Some(spec) = value.get_mut("spec").and_then(|s| s.as_object_mut()) {
        spec.entry("containers").or_insert_with(|| serde_json::Value::Array(Vec::new()));
    }
    let template: PodTemplateSpec = serde_path_to_error::deserialize(&value).map_err(|e| {
        let path = e.path().to_string();
        let at = if path == "." { String::new() } else { format!(".{path}") };
        format!("spec.podTemplate{at}: {}", e.inner())
    })?;
    let containers = template.spec.as_ref().map(|s| s.containers.as_slice()).unwrap_or_default();
    for (i, c) in containers.iter().enumerate() {
        if c.name != MAIN_CONTAINER {
            continue;
        }
        for (field, set) in [("command", c.command.is_some()), ("args", c.args.is_some())] {
            if set {
                return Err(format!(
                    "spec.podTemplate.spec.containers[{i}].{field}: set by the operator for the `{MAIN_CONTAINER}` \
                     container; leave it out"
                ));
            }
        }
    }
    Ok(Some(template))
}

/// Merges `template` into `pod` (see the module docs for the rules).
pub fn apply(pod: &mut Pod, template: &PodTemplateSpec) {
    if let Some(meta) = &template.metadata {
        pod.metadata.labels = extended(meta.labels.clone(), pod.metadata.labels.take());
        pod.metadata.annotations = extended(meta.annotations.clone(), pod.metadata.annotations.take());
    }
    let (Some(ours), Some(theirs)) = (pod.spec.as_mut(), template.spec.as_ref()) else { return };
    let mut merged = theirs.clone();
    merged.restart_policy = ours.restart_policy.take();
    merged.security_context = overlay(ours.security_context.take(), theirs.security_context.clone());
    merged.volumes = union_by(theirs.volumes.clone(), ours.volumes.take(), |v| v.name.clone());
    let mut containers = std::mem::take(&mut ours.containers);
    let mut sidecars = Vec::new();
    for c in &theirs.containers {
        match containers.iter_mut().find(|o| o.name == c.name) {
            Some(main) => merge_container(main, c),
            None => sidecars.push(c.clone()),
        }
    }
    containers.extend(sidecars);
    merged.containers = containers;
    *ours = merged;
}

fn merge_container(ours: &mut Container, theirs: &Container) {
    ours.env = union_by(theirs.env.clone(), ours.env.take(), |e| e.name.clone());
    ours.env_from = extended(theirs.env_from.clone(), ours.env_from.take());
    ours.volume_mounts = union_by(theirs.volume_mounts.clone(), ours.volume_mounts.take(), |m| m.mount_path.clone());
    ours.resources = overlay(theirs.resources.clone(), ours.resources.take());
    ours.security_context = overlay(ours.security_context.take(), theirs.security_context.clone());
    ours.liveness_probe = ours.liveness_probe.take().or_else(|| theirs.liveness_probe.clone());
    ours.readiness_probe = ours.readiness_probe.take().or_else(|| theirs.readiness_probe.clone());
    ours.startup_probe = ours.startup_probe.take().or_else(|| theirs.startup_probe.clone());
    ours.lifecycle = ours.lifecycle.take().or_else(|| theirs.lifecycle.clone());
    ours.working_dir = ours.working_dir.take().or_else(|| theirs.working_dir.clone());
}

/// The base extended by the top: a list appended, a map's keys overridden.
fn extended<C: Extend<I> + IntoIterator<Item = I>, I>(base: Option<C>, top: Option<C>) -> Option<C> {
    match (base, top) {
        (Some(mut base), Some(top)) => {
            base.extend(top);
            Some(base)
        }
        (base, top) => top.or(base),
    }
}

/// The base's entries whose key the top does not have, then the top's.
fn union_by<T, K: PartialEq>(base: Option<Vec<T>>, top: Option<Vec<T>>, key: impl Fn(&T) -> K) -> Option<Vec<T>> {
    match (base, top) {
        (Some(base), Some(top)) => {
            let mut out: Vec<T> = base.into_iter().filter(|b| !top.iter().any(|t| key(t) == key(b))).collect();
            out.extend(top);
            Some(out)
        }
        (base, top) => top.or(base),
    }
}

/// `top`'s fields over `base`'s, recursively through nested objects.
fn overlay<T: Serialize + DeserializeOwned>(base: Option<T>, top: Option<T>) -> Option<T> {
    let (base, top) = match (base, top) {
        (Some(base), Some(top)) => (base, top),
        (base, top) => return top.or(base),
    };
    let (Ok(mut b), Ok(t)) = (serde_json::to_value(&base), serde_json::to_value(&top)) else { return Some(top) };
    merge_json(&mut b, t);
    serde_json::from_value(b).ok().or(Some(top))
}

fn merge_json(base: &mut serde_json::Value, top: serde_json::Value) {
    match (base, top) {
        (serde_json::Value::Object(b), serde_json::Value::Object(t)) => {
            for (k, v) in t {
                match b.get_mut(&k) {
                    Some(slot) => merge_json(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, top) => *slot = top,
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{EnvVar, PodSecurityContext, PodSpec, SecurityContext, Volume, VolumeMount};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;

    fn operator_pod() -> Pod {
        Pod {
            metadata: ObjectMeta {
                labels: Some(BTreeMap::from([("weir.dev/job".to_string(), "counts".to_string())])),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                restart_policy: Some("Never".into()),
                security_context: Some(PodSecurityContext {
                    run_as_non_root: Some(true),
                    run_as_user: Some(65532),
                    ..PodSecurityContext::default()
                }),
                containers: vec![Container {
                    name: MAIN_CONTAINER.into(),
                    image: Some("weir:1".into()),
                    command: Some(vec!["weir".into()]),
                    env: Some(vec![EnvVar {
                        name: "WEIR_JOB".into(),
                        value: Some("/etc/weir/job.yaml".into()),
                        ..EnvVar::default()
                    }]),
                    volume_mounts: Some(vec![VolumeMount {
                        name: "job".into(),
                        mount_path: "/etc/weir".into(),
                        ..VolumeMount::default()
                    }]),
                    security_context: Some(SecurityContext {
                        read_only_root_filesystem: Some(true),
                        allow_privilege_escalation: Some(false),
                        ..SecurityContext::default()
                    }),
                    ..Container::default()
                }],
                volumes: Some(vec![Volume { name: "job".into(), ..Volume::default() }]),
                ..PodSpec::default()
            }),
            ..Pod::default()
        }
    }

    fn merged(template: serde_json::Value) -> Pod {
        let template = parse(Some(&template)).unwrap().unwrap();
        let mut pod = operator_pod();
        apply(&mut pod, &template);
        pod
    }

    #[test]
    fn a_shared_volume_is_mounted_beside_the_operators_own() {
        let pod = merged(json!({"spec": {
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "weir-data"}}],
            "containers": [{"name": "weir", "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
        }}));
        let spec = pod.spec.unwrap();
        let volumes: Vec<_> = spec.volumes.unwrap().into_iter().map(|v| v.name).collect();
        assert_eq!(volumes, ["data", "job"]);
        assert_eq!(spec.containers.len(), 1);
        let mounts: Vec<_> =
            spec.containers[0].volume_mounts.clone().unwrap().into_iter().map(|m| m.mount_path).collect();
        assert_eq!(mounts, ["/data", "/etc/weir"]);
        assert_eq!(spec.containers[0].image.as_deref(), Some("weir:1"));
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
    }

    #[test]
    fn the_template_cannot_replace_what_the_operator_sets() {
        let pod = merged(json!({
            "metadata": {"labels": {"weir.dev/job": "other", "team": "data"}},
            "spec": {
                "restartPolicy": "Always",
                "volumes": [{"name": "job", "emptyDir": {}}],
                "containers": [{"name": "weir", "image": "evil:1",
                                "env": [{"name": "WEIR_JOB", "value": "/tmp/x"}, {"name": "TZ", "value": "UTC"}]}],
            },
        }));
        let labels = pod.metadata.labels.unwrap();
        assert_eq!(labels["weir.dev/job"], "counts");
        assert_eq!(labels["team"], "data");
        let spec = pod.spec.unwrap();
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        assert!(spec.volumes.unwrap().iter().all(|v| v.empty_dir.is_none()));
        let c = &spec.containers[0];
        assert_eq!(c.image.as_deref(), Some("weir:1"));
        let env: Vec<_> = c.env.clone().unwrap().into_iter().map(|e| (e.name, e.value.unwrap_or_default())).collect();
        assert_eq!(
            env,
            [("TZ".to_string(), "UTC".to_string()), ("WEIR_JOB".to_string(), "/etc/weir/job.yaml".to_string())]
        );
    }

    #[test]
    fn security_contexts_merge_field_by_field_with_the_template_winning() {
        let pod = merged(json!({"spec": {
            "securityContext": {"fsGroup": 2000},
            "containers": [{"name": "weir", "securityContext": {"readOnlyRootFilesystem": false}}],
        }}));
        let spec = pod.spec.unwrap();
        let psc = spec.security_context.unwrap();
        assert_eq!((psc.fs_group, psc.run_as_user, psc.run_as_non_root), (Some(2000), Some(65532), Some(true)));
        let csc = spec.containers[0].security_context.clone().unwrap();
        assert_eq!((csc.read_only_root_filesystem, csc.allow_privilege_escalation), (Some(false), Some(false)));
    }

    #[test]
    fn other_containers_and_scheduling_fields_are_kept() {
        let pod = merged(json!({"spec": {
            "nodeSelector": {"disk": "ssd"},
            "serviceAccountName": "weir-jobs",
            "tolerations": [{"key": "dedicated", "operator": "Exists"}],
            "containers": [{"name": "log-shipper", "image": "fluent-bit:3"}],
        }}));
        let spec = pod.spec.unwrap();
        assert_eq!(spec.node_selector.unwrap()["disk"], "ssd");
        assert_eq!(spec.service_account_name.as_deref(), Some("weir-jobs"));
        assert_eq!(spec.tolerations.unwrap().len(), 1);
        let names: Vec<_> = spec.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["weir", "log-shipper"]);
    }

    #[test]
    fn a_malformed_template_is_refused_naming_the_field() {
        let err =
            parse(Some(&json!({"spec": {"volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": 5}}]}})))
                .unwrap_err();
        assert!(err.starts_with("spec.podTemplate.spec.volumes[0].persistentVolumeClaim"), "{err}");
        assert!(err.contains("claimName") && err.contains("string"), "{err}");
        let err = parse(Some(&json!({"spec": {"nodeSelector": "ssd"}}))).unwrap_err();
        assert!(err.starts_with("spec.podTemplate.spec.nodeSelector: "), "{err}");
        let err = parse(Some(&json!({"spec": {"containers": [{"name": "weir", "command": ["sh"]}]}}))).unwrap_err();
        assert!(err.starts_with("spec.podTemplate.spec.containers[0].command: set by the operator"), "{err}");
    }
}
