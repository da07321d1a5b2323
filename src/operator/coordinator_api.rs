//! Reading a job's coordinator API (`/v1/job`, `/v1/checkpoints`) and
//! asking it for savepoints. Behind a trait so controller tests need no
//! coordinator.

use std::time::Duration;

use async_trait::async_trait;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use k8s_openapi::api::core::v1::Secret;

use super::objects::{coordinator_name, token_secret_name, HTTP_PORT, TOKEN_KEY};
use super::plan::{rfc3339, CoordinatorView};
use crate::crd::CheckpointRef;

#[async_trait]
pub trait CoordinatorApi: Send + Sync {
    /// `None` when the coordinator does not answer (yet).
    async fn view(&self, namespace: &str, job: &str) -> Option<CoordinatorView>;
    /// Takes a savepoint (`stop`: then the job finishes); returns its path.
    async fn savepoint(&self, namespace: &str, job: &str, stop: bool) -> Result<String, String>;
}

/// Talks HTTP to `http://<job>-coordinator.<namespace>.svc:8081` (or the
/// template given, with `{name}` and `{namespace}` replaced).
pub struct HttpCoordinatorApi {
    template: String,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    /// Reads each job's token Secret for the calls that need it.
    kube: kube::Client,
}

impl HttpCoordinatorApi {
    pub fn new(template: Option<String>, kube: kube::Client) -> Self {
        let template = template.unwrap_or_else(|| format!("http://{{name}}.{{namespace}}.svc:{HTTP_PORT}"));
        HttpCoordinatorApi { template, client: Client::builder(TokioExecutor::new()).build_http(), kube }
    }

    /// The job's token, from the Secret the operator created with its pods.
    async fn token(&self, namespace: &str, job: &str) -> Result<Option<String>, String> {
        let secrets: kube::Api<Secret> = kube::Api::namespaced(self.kube.clone(), namespace);
        let name = token_secret_name(job);
        let secret = secrets.get_opt(&name).await.map_err(|e| format!("cannot read secret {name}: {e}"))?;
        Ok(secret
            .and_then(|s| s.data)
            .and_then(|d| d.get(TOKEN_KEY).cloned())
            .and_then(|b| String::from_utf8(b.0).ok()))
    }

    fn url(&self, namespace: &str, job: &str, path: &str) -> String {
        let base = self.template.replace("{name}", &coordinator_name(job)).replace("{namespace}", namespace);
        format!("{}{path}", base.trim_end_matches('/'))
    }

    async fn call(
        &self,
        method: hyper::Method,
        url: &str,
        token: Option<&str>,
        timeout: Duration,
    ) -> Result<Value, String> {
        let mut request = hyper::Request::builder().method(method).uri(url);
        if let Some(token) = token {
            request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request.body(Empty::<Bytes>::new()).map_err(|e| e.to_string())?;
        let response = tokio::time::timeout(timeout, self.client.request(request))
            .await
            .map_err(|_| format!("{url} did not answer within {timeout:?}"))?
            .map_err(|e| format!("{url}: {e}"))?;
        let status = response.status();
        let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        let value: Value = serde_json::from_slice(&body).map_err(|e| format!("{url}: not JSON: {e}"))?;
        if !status.is_success() {
            return Err(format!("{url}: {status}: {}", value["error"].as_str().unwrap_or("")));
        }
        Ok(value)
    }
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
        let j = self.call(hyper::Method::GET, &self.url(namespace, job, "/v1/job"), None, short).await.ok()?;
        let c = self.call(hyper::Method::GET, &self.url(namespace, job, "/v1/checkpoints"), None, short).await.ok()?;
        Some(CoordinatorView {
            state: j["state"].as_str().unwrap_or("").to_string(),
            restored_from: j["restoredFrom"].as_u64(),
            latest: checkpoint(&c["latest"]),
            history: c["history"].as_array().map(|h| h.iter().filter_map(checkpoint).collect()).unwrap_or_default(),
            failed: c["failed"].as_u64().unwrap_or(0),
        })
    }

    async fn savepoint(&self, namespace: &str, job: &str, stop: bool) -> Result<String, String> {
        let path = if stop { "/v1/stop" } else { "/v1/savepoints" };
        let token = self.token(namespace, job).await?;
        let url = self.url(namespace, job, path);
        let v = self.call(hyper::Method::POST, &url, token.as_deref(), Duration::from_secs(120)).await?;
        v["path"].as_str().map(str::to_string).ok_or_else(|| format!("no path in {v}"))
    }
}
