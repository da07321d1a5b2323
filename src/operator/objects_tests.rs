use k8s_openapi::api::core::v1::{Container, Pod, PodSecurityContext, SecurityContext};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::*;
use crate::crd::JobSpec;

fn settings() -> Settings {
    Settings {
        job_image: "weir:test".into(),
        image_pull_policy: "IfNotPresent".into(),
        default_storage: None,
        credentials_secret: None,
        network_policies: true,
        image_pull_secrets: Vec::new(),
        node_lost_after_ms: 60_000,
        progress_deadline_ms: 600_000,
        status_interval_ms: 2_000,
        cert_manager: None,
    }
}

fn job(pod_template: Option<serde_json::Value>) -> StreamJob {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/counts.yaml")).unwrap();
    let mut spec = weir_runtime::manifest::StreamJob::from_yaml(&text).unwrap().spec;
    spec.pod_template = pod_template;
    let mut j = StreamJob::new("counts", JobSpec(spec));
    j.metadata.namespace = Some("jobs".into());
    j.metadata.uid = Some("u-1".into());
    j
}

fn job_pods(j: &StreamJob) -> Vec<Pod> {
    let template = pod_template::parse(j.spec.0.pod_template.as_ref()).unwrap();
    let d = Deployment {
        job: j,
        digest: "d1",
        image: "weir:test",
        storage: "file:///data",
        template: template.as_ref(),
        tls_secret: None,
    };
    vec![pod(&d, Role::Coordinator, 1, &settings()), pod(&d, Role::Worker(0), 1, &settings())]
}

/// The rules of the Pod Security Standards' `restricted` profile (v1.30),
/// as the API server's PodSecurity admission checks them: what is wrong.
fn restricted_violations(pod: &Pod) -> Vec<String> {
    let mut out = Vec::new();
    let Some(spec) = pod.spec.as_ref() else { return vec!["no spec".into()] };
    let psc = spec.security_context.clone().unwrap_or_default();
    if spec.host_network == Some(true) || spec.host_pid == Some(true) || spec.host_ipc == Some(true) {
        out.push("host namespaces".into());
    }
    const ALLOWED: [&str; 8] =
        ["configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"];
    for v in spec.volumes.iter().flatten() {
        let kind = serde_json::to_value(v).unwrap();
        let kinds: Vec<String> = kind.as_object().unwrap().keys().filter(|k| *k != "name").cloned().collect();
        if kinds.iter().any(|k| !ALLOWED.contains(&k.as_str())) {
            out.push(format!("volume {} of type {kinds:?}", v.name));
        }
    }
    let containers: Vec<&Container> = spec.containers.iter().chain(spec.init_containers.iter().flatten()).collect();
    for c in containers {
        let csc: SecurityContext = c.security_context.clone().unwrap_or_default();
        if csc.privileged == Some(true) {
            out.push(format!("{}: privileged", c.name));
        }
        if csc.allow_privilege_escalation != Some(false) {
            out.push(format!("{}: allowPrivilegeEscalation must be false", c.name));
        }
        let caps = csc.capabilities.clone().unwrap_or_default();
        if !caps.drop.iter().flatten().any(|d| d == "ALL") {
            out.push(format!("{}: capabilities must drop ALL", c.name));
        }
        if caps.add.iter().flatten().any(|a| a != "NET_BIND_SERVICE") {
            out.push(format!("{}: only NET_BIND_SERVICE may be added", c.name));
        }
        if csc.run_as_non_root.or(psc.run_as_non_root) != Some(true) {
            out.push(format!("{}: runAsNonRoot must be true", c.name));
        }
        if csc.run_as_user.or(psc.run_as_user) == Some(0) {
            out.push(format!("{}: runAsUser 0", c.name));
        }
        let seccomp = csc.seccomp_profile.as_ref().or(psc.seccomp_profile.as_ref()).map(|s| s.type_.as_str());
        if !matches!(seccomp, Some("RuntimeDefault" | "Localhost")) {
            out.push(format!("{}: seccompProfile must be RuntimeDefault or Localhost", c.name));
        }
        if c.ports.iter().flatten().any(|p| p.host_port.is_some_and(|h| h != 0)) {
            out.push(format!("{}: hostPort", c.name));
        }
    }
    out
}

#[test]
fn job_pods_pass_the_restricted_pod_security_profile() {
    for pod in job_pods(&job(None)) {
        assert_eq!(restricted_violations(&pod), Vec::<String>::new(), "{:?}", pod.metadata.name);
        assert_eq!(pod.spec.as_ref().unwrap().automount_service_account_token, Some(false));
    }
}

#[test]
fn the_restricted_profile_check_catches_what_a_template_loosens() {
    let loose = job(Some(serde_json::json!({"spec": {
        "securityContext": {"seccompProfile": {"type": "Unconfined"}},
        "volumes": [{"name": "host", "hostPath": {"path": "/var/data"}}],
    }})));
    let violations = restricted_violations(&job_pods(&loose)[0]);
    assert!(violations.iter().any(|v| v.contains("seccompProfile")), "{violations:?}");
    assert!(violations.iter().any(|v| v.contains("hostPath")), "{violations:?}");
    let mut bare = job_pods(&job(None)).remove(0);
    bare.spec.as_mut().unwrap().security_context = Some(PodSecurityContext::default());
    assert!(!restricted_violations(&bare).is_empty());
}

#[test]
fn every_job_pod_has_probes_on_a_port_it_declares_and_the_service_publishes_the_coordinator_before_it_is_ready() {
    let j = job(None);
    let pods = job_pods(&j);
    assert!(pods.len() >= 2, "a coordinator and workers");
    for pod in &pods {
        let c = &pod.spec.as_ref().unwrap().containers[0];
        let get = |p: &Option<k8s_openapi::api::core::v1::Probe>| p.as_ref().unwrap().http_get.clone().unwrap();
        let (live, ready) = (get(&c.liveness_probe), get(&c.readiness_probe));
        assert_eq!(live.path.as_deref(), Some("/healthz"));
        assert_eq!(ready.path.as_deref(), Some("/readyz"));
        let IntOrString::String(port) = live.port else { panic!("probes name their port") };
        let declared = c.ports.iter().flatten().find(|p| p.name.as_deref() == Some(port.as_str()));
        let declared = declared.unwrap_or_else(|| panic!("{:?}: no port named {port}", pod.metadata.name));
        if port == "health" {
            let served = c.env.iter().flatten().find(|e| e.name == "WEIR_HEALTH").and_then(|e| e.value.clone());
            assert_eq!(served, Some(format!("0.0.0.0:{}", declared.container_port)), "the worker serves there");
        }
    }
    let svc = service(&j, 1);
    assert_eq!(svc.spec.unwrap().publish_not_ready_addresses, Some(true), "workers must reach it to make it ready");
}

#[test]
fn pod_names_carry_role_index_and_attempt_and_fit_a_label_value() {
    let long = "j".repeat(MAX_JOB_NAME);
    assert_eq!(pod_name("counts", Role::Worker(3), 7), "counts-worker-3-7");
    assert_eq!(pod_name("counts", Role::Coordinator, 1), "counts-coordinator-1");
    assert!(pod_name(&long, Role::Worker(1023), u32::MAX).len() <= 63);
}

#[test]
fn with_cert_manager_pods_mount_the_certificates_secret() {
    let j = job(None);
    let d = |tls_secret| Deployment {
        job: &j,
        digest: "d1",
        image: "weir:test",
        storage: "file:///data",
        template: None,
        tls_secret,
    };
    let tls_secret = |p: &Pod| {
        let volumes = p.spec.as_ref().unwrap().volumes.clone().unwrap_or_default();
        volumes.iter().find(|v| v.name == "tls").and_then(|v| v.secret.clone()).and_then(|s| s.secret_name)
    };
    let issued = pod(&d(Some("counts-tls")), Role::Worker(0), 1, &settings());
    assert_eq!(tls_secret(&issued).as_deref(), Some("counts-tls"));
    assert_eq!(tls_secret(&pod(&d(None), Role::Worker(0), 1, &settings())).as_deref(), Some("counts-token"));
}
