//! Job certificates from cert-manager: the `Certificate` a job's pods
//! share, and whether its Secret is ready for them.
//!
//! The operator otherwise makes a CA of its own per job (in the job's
//! token Secret); with `--cert-manager-issuer` cert-manager signs and
//! renews the job's certificate instead, and pods wait for it.

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::ResourceExt;
use serde_json::Value;
use weir_runtime::job::coordinate::wall_ms;

use super::controller::{owned_or_absent, Context, Error, FIELD_MANAGER};
use super::objects;
use crate::crd::StreamJob;

pub const CERT_MANAGER_GROUP: &str = "cert-manager.io";

/// A cert-manager issuer (`issuerRef` of a Certificate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerRef {
    pub group: String,
    pub kind: String,
    pub name: String,
}

impl IssuerRef {
    /// From `KIND/NAME`, as the operator's `--cert-manager-issuer` takes it.
    pub fn parse(kind_name: &str, group: &str) -> Result<IssuerRef, String> {
        match kind_name.split_once('/') {
            Some((kind, name)) if !kind.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(IssuerRef { group: group.to_string(), kind: kind.to_string(), name: name.to_string() })
            }
            _ => Err(format!("expected KIND/NAME (for example ClusterIssuer/weir-ca), got {kind_name:?}")),
        }
    }
}

impl std::fmt::Display for IssuerRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{} ({})", self.kind, self.name, self.group)
    }
}

/// The job's cert-manager Certificate, and the Secret it is issued into.
pub fn certificate_name(job: &str) -> String {
    format!("{job}-tls")
}

/// The cert-manager `Certificate` of a job, owned by it: one certificate
/// for every pod of the job (the name every process asks for is
/// [`JOB_NAME`](weir_runtime::distributed::tls::JOB_NAME)), good for
/// both ends of a connection, and a new key at each renewal.
pub fn certificate(job: &StreamJob, issuer: &IssuerRef) -> kube::api::DynamicObject {
    let name = job.metadata.name.clone().unwrap_or_default();
    let resource = kube::api::ApiResource {
        group: CERT_MANAGER_GROUP.into(),
        version: "v1".into(),
        api_version: format!("{CERT_MANAGER_GROUP}/v1"),
        kind: "Certificate".into(),
        plural: "certificates".into(),
    };
    let mut object = kube::api::DynamicObject::new(&certificate_name(&name), &resource);
    object.metadata = objects::meta(
        certificate_name(&name),
        job.metadata.namespace.as_deref(),
        objects::labels(&name, None),
        &objects::owner(job),
    );
    object.data = serde_json::json!({
        "spec": {
            "secretName": certificate_name(&name),
            "commonName": format!("weir job {name}"),
            "dnsNames": [weir_runtime::distributed::tls::JOB_NAME],
            "usages": ["digital signature", "key encipherment", "server auth", "client auth"],
            "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
            "secretTemplate": {"labels": {(objects::JOB_LABEL): name}},
            "issuerRef": {"group": issuer.group, "kind": issuer.kind, "name": issuer.name},
        }
    });
    object
}

/// Where the job's certificate from cert-manager stands.
#[derive(Debug, PartialEq)]
pub enum Issuance {
    /// Its Secret holds a certificate, key and CA: pods may start.
    Issued,
    /// Not yet; why, for status.
    Pending(String),
    /// Not within the progress deadline, or cert-manager is not there: the
    /// user's to fix.
    Failed(String),
}

/// Applies the job's cert-manager Certificate and says whether the Secret
/// it is issued into is complete. Pods wait for it rather than start
/// without their certificate (they would fail to mount it, or fail the
/// handshake with each other).
pub async fn issued(job: &StreamJob, ctx: &Context, ns: &str, issuer: &IssuerRef) -> Result<Issuance, Error> {
    let desired = certificate(job, issuer);
    let name = desired.name_any();
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(CERT_MANAGER_GROUP, "v1", "Certificate"),
        "certificates",
    );
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), ns, &resource);
    let uid = job.metadata.uid.clone().unwrap_or_default();
    // A missing CRD is a 404 whose body is not a Status: get_opt passes it
    // on rather than reading it as no object.
    let missing_crd = |e: &Error| matches!(e, Error::Kube(kube::Error::Api(a)) if a.code == 404);
    let applied = async {
        owned_or_absent(&api, "Certificate", &name, &uid).await?;
        Ok(api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&desired)).await?)
    };
    let applied = match applied.await {
        Ok(applied) => applied,
        Err(e) if missing_crd(&e) => return Ok(Issuance::Failed(not_installed(issuer))),
        Err(e) => return Err(e),
    };
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let secret = secrets.get_opt(&name).await?;
    let complete = secret.as_ref().and_then(|s| s.data.as_ref()).is_some_and(|d| {
        [objects::TLS_CERT_KEY, objects::TLS_KEY_KEY, objects::TLS_CA_KEY]
            .iter()
            .all(|k| d.get(*k).is_some_and(|v| !v.0.is_empty()))
    });
    if complete {
        return Ok(Issuance::Issued);
    }
    let created_ms = applied.metadata.creation_timestamp.as_ref().map_or(wall_ms(), |t| t.0.as_millisecond() as u64);
    Ok(issuance(
        &applied.data,
        &name,
        issuer,
        secret.is_some(),
        wall_ms().saturating_sub(created_ms),
        ctx.settings.progress_deadline_ms,
    ))
}

fn not_installed(issuer: &IssuerRef) -> String {
    format!(
        "the operator is set to take job certificates from cert-manager (issuer {issuer}), but the API server \
         does not serve certificates.{}/v1: install cert-manager or unset the chart's jobTls.certManager",
        CERT_MANAGER_GROUP
    )
}

/// Pure: what an incomplete Secret means, from the Certificate's status
/// and how long it has waited.
pub(super) fn issuance(
    certificate: &Value,
    name: &str,
    issuer: &IssuerRef,
    secret_exists: bool,
    waited_ms: u64,
    deadline_ms: u64,
) -> Issuance {
    let conditions = certificate["status"]["conditions"].as_array().cloned().unwrap_or_default();
    let said: Vec<String> = conditions
        .iter()
        .filter(|c| c["status"] != "True" || c["type"] == "Issuing")
        .filter_map(|c| Some(format!("{}: {}", c["type"].as_str()?, c["message"].as_str()?)))
        .collect();
    let what = if secret_exists { "lacks tls.crt, tls.key or ca.crt" } else { "does not exist yet" };
    let mut why = format!("waiting for cert-manager: Secret {name} of Certificate {name} (issuer {issuer}) {what}");
    if !said.is_empty() {
        why.push_str(&format!("; cert-manager says: {}", said.join("; ")));
    }
    let failed = conditions.iter().any(|c| c["type"] == "Issuing" && c["status"] == "False" && c["reason"] == "Failed");
    if failed || waited_ms > deadline_ms {
        if !failed {
            why.push_str(&format!(" (waited {} s, past the progress deadline)", waited_ms / 1000));
        }
        Issuance::Failed(why)
    } else {
        Issuance::Pending(why)
    }
}

#[cfg(test)]
#[path = "certificates_tests.rs"]
mod tests;
