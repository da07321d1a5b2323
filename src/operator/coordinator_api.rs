//! Reading a job's coordinator API (`/v1/job`, `/v1/checkpoints`) and
//! asking it for savepoints in the background (`/v1/savepoint-triggers`).
//! Behind a trait so controller tests need no coordinator.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;
use tracing::warn;

use k8s_openapi::api::core::v1::Secret;
use weir_runtime::distributed::tls::{peer_speaks_plain, JobTrust};

use super::certificates::certificate_name;
use super::objects::{coordinator_name, token_secret_name, HTTP_PORT, TLS_CA_KEY, TOKEN_KEY};
use super::plan::{rfc3339, CoordinatorView, TriggerView};
use crate::crd::CheckpointRef;

#[async_trait]
pub trait CoordinatorApi: Send + Sync {
    /// `None` when the coordinator does not answer (yet).
    async fn view(&self, namespace: &str, job: &str) -> Option<CoordinatorView>;
    /// Asks for a savepoint in the background; returns its trigger id.
    async fn trigger_savepoint(&self, namespace: &str, job: &str, stop: bool) -> Result<String, String>;
    /// Where trigger `id` stands; `None` when the coordinator does not answer.
    async fn savepoint_trigger(&self, namespace: &str, job: &str, id: &str) -> Option<TriggerView>;
}

/// Talks to `<job>-coordinator.<namespace>.svc:8081` (or the template
/// given, with `{name}` and `{namespace}` replaced): over TLS, checking the
/// server against the job's CA, whenever the job's Secret holds one.
pub struct HttpCoordinatorApi {
    template: String,
    /// Reads each job's Secret (token and CA) for the calls.
    kube: kube::Client,
    /// Each job's Secret as last read. A job's identity is made once, so
    /// it is read again only after a handshake or the token was refused.
    secrets: Mutex<HashMap<(String, String), JobSecrets>>,
    /// The job CA is in the Secret cert-manager issues, not the job's own.
    cert_manager: bool,
}

#[derive(Clone, Default)]
struct JobSecrets {
    token: Option<String>,
    trust: Option<JobTrust>,
}

impl HttpCoordinatorApi {
    pub fn new(template: Option<String>, kube: kube::Client, cert_manager: bool) -> Self {
        let template = template.unwrap_or_else(|| format!("http://{{name}}.{{namespace}}.svc:{HTTP_PORT}"));
        HttpCoordinatorApi { template, kube, secrets: Mutex::default(), cert_manager }
    }

    /// The job's token and CA, from the Secret the operator created with its pods.
    async fn secrets(&self, namespace: &str, job: &str) -> Result<JobSecrets, String> {
        let key = (namespace.to_string(), job.to_string());
        if let Some(known) = self.secrets.lock().ok().and_then(|s| s.get(&key).cloned()) {
            return Ok(known);
        }
        let secrets: kube::Api<Secret> = kube::Api::namespaced(self.kube.clone(), namespace);
        let read = |name: String| async {
            let secret = secrets.get_opt(&name).await.map_err(|e| format!("cannot read secret {name}: {e}"))?;
            Ok::<_, String>((secret.and_then(|s| s.data).unwrap_or_default(), name))
        };
        let (data, _) = read(token_secret_name(job)).await?;
        let token = data.get(TOKEN_KEY).and_then(|b| String::from_utf8(b.0.clone()).ok());
        // Both CAs with cert-manager: pods deployed before the operator was
        // switched to it still hold a certificate of the job's own CA.
        let mut cas: Vec<(Vec<u8>, String)> =
            data.get(TLS_CA_KEY).map(|ca| (ca.0.clone(), token_secret_name(job))).into_iter().collect();
        if self.cert_manager {
            let (data, name) = read(certificate_name(job)).await?;
            cas.extend(data.get(TLS_CA_KEY).map(|ca| (ca.0.clone(), name)));
        }
        let trust = match cas.as_slice() {
            [] => None,
            _ => {
                let names = cas.iter().map(|(_, n)| n.as_str()).collect::<Vec<_>>().join(" and ");
                let pem: Vec<u8> = cas.iter().flat_map(|(ca, _)| [ca.as_slice(), b"\n"]).flatten().copied().collect();
                Some(JobTrust::from_ca_pem(&pem).map_err(|e| format!("secret {names}: {TLS_CA_KEY}: {e}"))?)
            }
        };
        let found = JobSecrets { token, trust };
        if let Ok(mut s) = self.secrets.lock() {
            s.insert(key, found.clone());
        }
        Ok(found)
    }

    fn forget(&self, namespace: &str, job: &str) {
        if let Ok(mut s) = self.secrets.lock() {
            s.remove(&(namespace.to_string(), job.to_string()));
        }
    }

    fn url(&self, namespace: &str, job: &str, path: &str) -> String {
        let base = self.template.replace("{name}", &coordinator_name(job)).replace("{namespace}", namespace);
        format!("{}{path}", base.trim_end_matches('/'))
    }

    /// One request on a connection of its own; calls are seconds apart.
    async fn call(
        &self,
        at: (&str, &str),
        method: hyper::Method,
        path: &str,
        with_token: bool,
        timeout: Duration,
    ) -> Result<Value, String> {
        let (status, value) = self.call_with_status(at, method, path, with_token, timeout).await?;
        if !status.is_success() {
            let url = self.url(at.0, at.1, path);
            return Err(format!("{url}: {status}: {}", value["error"].as_str().unwrap_or("")));
        }
        Ok(value)
    }

    /// The answer's status and JSON body, whatever the status.
    async fn call_with_status(
        &self,
        (namespace, job): (&str, &str),
        method: hyper::Method,
        path: &str,
        with_token: bool,
        timeout: Duration,
    ) -> Result<(hyper::StatusCode, Value), String> {
        let url = self.url(namespace, job, path);
        let secrets = self.secrets(namespace, job).await?;
        let answer = tokio::time::timeout(timeout, self.exchange(&url, method, &secrets, with_token))
            .await
            .unwrap_or_else(|_| Err(format!("did not answer within {timeout:?}")));
        // Whatever failed, the Secret is read again for the next call: a job
        // made again has a new CA and token, and an older operator's Secret
        // gains its CA only once this one patched it.
        let (status, body) =
            answer.inspect_err(|_| self.forget(namespace, job)).map_err(|why| format!("{url}: {why}"))?;
        if !status.is_success() {
            self.forget(namespace, job);
        }
        let value: Value = serde_json::from_slice(&body).map_err(|e| format!("{url}: not JSON: {e}"))?;
        Ok((status, value))
    }

    async fn exchange(
        &self,
        url: &str,
        method: hyper::Method,
        secrets: &JobSecrets,
        with_token: bool,
    ) -> Result<(hyper::StatusCode, Bytes), String> {
        let uri: hyper::Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
        let host = uri.host().ok_or_else(|| "no host".to_string())?.to_string();
        let port = uri.port_u16().unwrap_or(HTTP_PORT as u16);
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(uri.path_and_query().map_or("/", |p| p.as_str()))
            .header(hyper::header::HOST, format!("{host}:{port}"));
        if let (true, Some(token)) = (with_token, &secrets.token) {
            request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request.body(Empty::<Bytes>::new()).map_err(|e| e.to_string())?;
        let connect =
            || async { TcpStream::connect((host.as_str(), port)).await.map_err(|e| format!("cannot connect: {e}")) };
        let tcp = connect().await?;
        let response = match &secrets.trust {
            None => send(TokioIo::new(tcp), request).await?,
            Some(trust) => match trust.connect(tcp).await {
                Ok(tls) => send(TokioIo::new(tls), request).await?,
                Err(e) if peer_speaks_plain(&e) => {
                    // A coordinator of an image from before TLS on its API.
                    if with_token {
                        warn!("{url} answers only plain HTTP (an older image); the job token travels in clear");
                    }
                    send(TokioIo::new(connect().await?), request).await?
                }
                Err(e) => return Err(format!("TLS handshake with the job's CA failed: {e}")),
            },
        };
        let status = response.status();
        let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok((status, body))
    }
}

async fn send<I>(io: I, request: hyper::Request<Empty<Bytes>>) -> Result<hyper::Response<Incoming>, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    sender.send_request(request).await.map_err(|e| e.to_string())
}

fn checkpoint(v: &Value) -> Option<CheckpointRef> {
    Some(CheckpointRef {
        id: v["id"].as_u64()?,
        path: v["path"].as_str()?.to_string(),
        completed_at: rfc3339(v["completedAtMs"].as_u64()?),
        duration_ms: v["durationMs"].as_u64().unwrap_or(0),
        size_bytes: v["sizeBytes"].as_u64().unwrap_or(0),
    })
}

#[async_trait]
impl CoordinatorApi for HttpCoordinatorApi {
    async fn view(&self, namespace: &str, job: &str) -> Option<CoordinatorView> {
        let short = Duration::from_secs(2);
        let at = (namespace, job);
        let j = self.call(at, hyper::Method::GET, "/v1/job", false, short).await.ok()?;
        let c = self.call(at, hyper::Method::GET, "/v1/checkpoints", false, short).await.ok()?;
        Some(CoordinatorView {
            state: j["state"].as_str().unwrap_or("").to_string(),
            restored_from: j["restoredFrom"].as_u64(),
            latest: checkpoint(&c["latest"]),
            history: c["history"].as_array().map(|h| h.iter().filter_map(checkpoint).collect()).unwrap_or_default(),
            failed: c["failed"].as_u64().unwrap_or(0),
        })
    }

    async fn trigger_savepoint(&self, namespace: &str, job: &str, stop: bool) -> Result<String, String> {
        let path = if stop { "/v1/savepoint-triggers?stop=true" } else { "/v1/savepoint-triggers" };
        let v = self.call((namespace, job), hyper::Method::POST, path, true, Duration::from_secs(10)).await?;
        v["id"].as_str().map(str::to_string).ok_or_else(|| format!("no id in {v}"))
    }

    async fn savepoint_trigger(&self, namespace: &str, job: &str, id: &str) -> Option<TriggerView> {
        let path = format!("/v1/savepoint-triggers/{id}");
        let at = (namespace, job);
        let (status, v) =
            self.call_with_status(at, hyper::Method::GET, &path, false, Duration::from_secs(5)).await.ok()?;
        if status == hyper::StatusCode::NOT_FOUND {
            return Some(TriggerView::Unknown(format!(
                "the coordinator does not know savepoint {id} (it restarted since)"
            )));
        }
        if !status.is_success() {
            return None;
        }
        Some(match v["status"].as_str() {
            Some("Completed") => TriggerView::Completed {
                path: v["path"].as_str().unwrap_or_default().to_string(),
                checkpoint: v["checkpoint"].as_u64().unwrap_or(0),
            },
            Some("Failed") => TriggerView::Failed(v["reason"].as_str().unwrap_or("no reason given").to_string()),
            _ => TriggerView::InProgress,
        })
    }
}
