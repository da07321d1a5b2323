use kube::ResourceExt;
use serde_json::json;

use super::*;
use crate::crd::{JobSpec, StreamJob};

fn job() -> StreamJob {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/counts.yaml")).unwrap();
    let mut j = StreamJob::new("counts", JobSpec(weir_runtime::manifest::StreamJob::from_yaml(&text).unwrap().spec));
    j.metadata.namespace = Some("jobs".into());
    j.metadata.uid = Some("u-1".into());
    j
}

#[test]
fn the_certificate_is_the_jobs_names_the_issuer_and_serves_both_ends() {
    let issuer = IssuerRef::parse("ClusterIssuer/weir-ca", "cert-manager.io").unwrap();
    let c = serde_json::to_value(certificate(&job(), &issuer)).unwrap();
    assert_eq!(c["apiVersion"], "cert-manager.io/v1");
    assert_eq!(c["kind"], "Certificate");
    assert_eq!(c["metadata"]["name"], "counts-tls");
    assert_eq!(c["metadata"]["ownerReferences"][0]["uid"], "u-1", "deleted with the job");
    assert_eq!(c["spec"]["secretName"], "counts-tls");
    assert_eq!(c["spec"]["dnsNames"], json!([weir_runtime::distributed::tls::JOB_NAME]));
    let usages = c["spec"]["usages"].to_string();
    assert!(usages.contains("server auth") && usages.contains("client auth"), "both ends of a connection: {usages}");
    assert_eq!(c["spec"]["issuerRef"], json!({"group": "cert-manager.io", "kind": "ClusterIssuer", "name": "weir-ca"}));
    assert_eq!(certificate(&job(), &issuer).name_any(), certificate_name("counts"));
}

#[test]
fn an_issuer_is_named_kind_slash_name() {
    assert!(IssuerRef::parse("Issuer/ca", "cert-manager.io").is_ok());
    for bad in ["ca", "/ca", "Issuer/", "a/b/c"] {
        let e = IssuerRef::parse(bad, "cert-manager.io").unwrap_err();
        assert!(e.contains("KIND/NAME"), "{bad}: {e}");
    }
}

#[test]
fn a_certificate_that_cert_manager_failed_to_issue_is_a_stall_with_its_message() {
    let issuer = IssuerRef::parse("Issuer/ca", "cert-manager.io").unwrap();
    let failed = json!({"status": {"conditions": [
        {"type": "Ready", "status": "False", "reason": "DoesNotExist", "message": "Issuing certificate as Secret does not exist"},
        {"type": "Issuing", "status": "False", "reason": "Failed", "message": "The certificate request has failed to complete"},
    ]}});
    let Issuance::Failed(why) = issuance(&failed, "counts-tls", &issuer, false, 1_000, 600_000) else { panic!() };
    assert!(why.contains("failed to complete") && why.contains("Issuer/ca"), "{why}");

    let issuing = json!({"status": {"conditions": [{"type": "Issuing", "status": "True", "reason": "MissingData", "message": "Issuing certificate as Secret does not exist"}]}});
    assert!(matches!(issuance(&issuing, "counts-tls", &issuer, false, 1_000, 600_000), Issuance::Pending(_)));
    let Issuance::Failed(why) = issuance(&issuing, "counts-tls", &issuer, false, 700_000, 600_000) else { panic!() };
    assert!(why.contains("past the progress deadline"), "{why}");
}
