//! The Redis sink: the latest record per key, written as it arrives.
//!
//! Idempotent rather than transactional: a batch is one `MULTI`/`EXEC`
//! (all of it or none), each key written once with the batch's last record
//! for it; a replay after a failure writes the same values again, so Redis
//! ends as if each record was written once, though a reader may see an
//! older value again for a moment after a failure.

use std::marker::PhantomData;
use std::time::Duration;

use ::redis::aio::MultiplexedConnection;
use ::redis::{Client, ClientTlsConfig, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, TlsCertificates};
use async_trait::async_trait;
use serde::Serialize;
use serde_json::Value;
use tracing::warn;

use super::backoff::{Backoff, SINK_ATTEMPTS};
use super::secret::read_password;
use super::tls::{read_ca_pem, read_identity};
use super::upsert::{key_string, last_per_key};
use crate::manifest::{ClientTlsSpec, RedisSinkSpec, RedisValueFormat};
use crate::metrics::JobMetrics;
use crate::task::{Barrier, Collector, TaskContext, TaskError, TaskSnapshot};

/// How long a connection attempt or a batch may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Where records go, resolved from the manifest (the password included).
#[derive(Clone)]
pub struct RedisTarget {
    client: Client,
    /// `host:port/db`, for messages (never the password).
    describe: String,
    key: Vec<String>,
    key_prefix: String,
    format: RedisValueFormat,
}

/// A client of a TLS address, trusting `tls.caFile`'s CAs or the system's
/// and presenting `tls.certFile` if set.
fn tls_client(at: &str, info: ConnectionInfo, tls: Option<&ClientTlsSpec>) -> Result<Client, TaskError> {
    let describe = format!("redis {}/{}", info.addr, info.redis.db);
    let at = format!("{at}.tls");
    let tls = tls.cloned().unwrap_or_default();
    let fail = |e: String| TaskError::sink(&describe, e);
    // Checked here for a message that names the field.
    let root_cert = tls.ca_file.as_deref().map(|file| read_ca_pem(&at, file)).transpose().map_err(fail)?;
    let client_tls = read_identity(&at, &tls)
        .map_err(fail)?
        .map(|id| ClientTlsConfig { client_cert: id.cert_pem, client_key: id.key_pem });
    let client = match (&root_cert, &client_tls) {
        (None, None) => Client::open(info),
        _ => Client::build_with_tls(info, TlsCertificates { client_tls, root_cert }),
    };
    client.map_err(|e| TaskError::sink(&describe, format!("{at}: {e}")))
}

impl RedisTarget {
    pub fn from_spec(spec: &RedisSinkSpec) -> Result<RedisTarget, TaskError> {
        let at = "spec.pipeline.sink.redis";
        let mut info =
            spec.url.as_str().into_connection_info().map_err(|e| TaskError::sink("redis", format!("{at}.url: {e}")))?;
        let password = read_password(at, spec.password_env.as_deref(), spec.password_file.as_deref(), None)
            .map_err(|e| TaskError::sink("redis", e))?;
        if password.is_some() {
            info.redis.password = password;
        }
        let describe = format!("redis {}/{}", info.addr, info.redis.db);
        let client = match (&info.addr, &spec.tls) {
            (ConnectionAddr::TcpTls { insecure: true, .. }, _) => {
                return Err(TaskError::sink(
                    &describe,
                    format!("{at}.url: #insecure is refused: TLS is always verified"),
                ))
            }
            (ConnectionAddr::Tcp(host, port), Some(_)) => {
                info.addr =
                    ConnectionAddr::TcpTls { host: host.clone(), port: *port, insecure: false, tls_params: None };
                tls_client(at, info, spec.tls.as_ref())?
            }
            (ConnectionAddr::TcpTls { .. }, tls) => tls_client(at, info, tls.as_ref())?,
            _ => Client::open(info).map_err(|e| TaskError::sink(&describe, format!("{at}.url: {e}")))?,
        };
        Ok(RedisTarget {
            client,
            describe,
            key: spec.key.clone(),
            key_prefix: spec.key_prefix.clone(),
            format: spec.format,
        })
    }

    fn err(&self, reason: impl std::fmt::Display) -> TaskError {
        TaskError::sink(&self.describe, reason)
    }

    /// The commands for one batch, one write per key.
    pub fn batch(&self, rows: Vec<Value>) -> ::redis::Pipeline {
        let mut pipe = ::redis::pipe();
        pipe.atomic();
        for row in last_per_key(rows, &self.key) {
            let key = format!("{}{}", self.key_prefix, key_string(&row, &self.key));
            match self.format {
                RedisValueFormat::Json => {
                    pipe.set(key, row.to_string()).ignore();
                }
                RedisValueFormat::Hash => {
                    let fields: Vec<(String, String)> = match &row {
                        Value::Object(m) => m
                            .iter()
                            .map(|(k, v)| (k.clone(), v.as_str().map_or_else(|| v.to_string(), str::to_string)))
                            .collect(),
                        other => vec![("value".to_string(), other.to_string())],
                    };
                    if !fields.is_empty() {
                        let cmd = pipe.cmd("HSET").arg(key);
                        for (field, value) in &fields {
                            cmd.arg(field).arg(value);
                        }
                        cmd.ignore();
                    }
                }
            }
        }
        pipe
    }
}

/// The sink of one subtask.
pub struct RedisSink<T> {
    target: RedisTarget,
    ctx: TaskContext,
    conn: Option<MultiplexedConnection>,
    _records: PhantomData<fn(T)>,
}

impl<T> RedisSink<T> {
    pub fn new(target: RedisTarget, ctx: TaskContext) -> RedisSink<T> {
        RedisSink { target, ctx, conn: None, _records: PhantomData }
    }

    /// Connects, retrying with backoff while the server cannot be reached;
    /// a refused password fails at once.
    async fn connect(&mut self) -> Result<MultiplexedConnection, TaskError> {
        if let Some(c) = &self.conn {
            return Ok(c.clone());
        }
        let mut backoff = Backoff::new(SINK_ATTEMPTS);
        loop {
            let outcome =
                tokio::time::timeout(COMMAND_TIMEOUT, self.target.client.get_multiplexed_async_connection()).await;
            let error = match outcome {
                Ok(Ok(conn)) => {
                    self.conn = Some(conn.clone());
                    return Ok(conn);
                }
                Ok(Err(e)) if e.kind() == ::redis::ErrorKind::AuthenticationFailed => {
                    return Err(self.target.err(format!("the server refused the connection: {e}")))
                }
                // A certificate that does not verify will not on the next try either.
                Ok(Err(e)) if e.to_string().to_lowercase().contains("certificate") => {
                    return Err(self.target.err(format!("TLS to the server failed: {e}")))
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {}s", COMMAND_TIMEOUT.as_secs()),
            };
            let attempt = backoff.attempt();
            let Some(delay) = backoff.next_delay() else {
                return Err(self.target.err(format!("cannot connect after {attempt} attempts: {error}")));
            };
            warn!(target = %self.target.describe, attempt, "cannot connect: {error}; retrying in {delay:?}");
            backoff.wait(&self.ctx.metrics).await;
        }
    }
}

#[async_trait]
impl<T: Serialize + Send + 'static> Collector<T> for RedisSink<T> {
    async fn open(&mut self) -> Result<(), TaskError> {
        // A wrong password or an unreachable server shows at start.
        let mut conn = self.connect().await?;
        let ping: Result<String, _> = ::redis::cmd("PING").query_async(&mut conn).await;
        ping.map(|_| ()).map_err(|e| self.target.err(format!("the server refused the connection: {e}")))
    }

    async fn collect(&mut self, batch: Vec<T>) -> Result<(), TaskError> {
        if batch.is_empty() {
            return Ok(());
        }
        JobMetrics::add(&self.ctx.metrics.records_out, batch.len());
        JobMetrics::add(&self.ctx.stage.records_out, batch.len());
        let rows = batch
            .iter()
            .map(serde_json::to_value)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.target.err(format!("cannot encode a record as JSON: {e}")))?;
        let pipe = self.target.batch(rows);
        // A batch can be written again, so a lost connection is retried.
        let mut backoff = Backoff::new(SINK_ATTEMPTS);
        loop {
            let mut conn = self.connect().await?;
            let outcome = tokio::time::timeout(COMMAND_TIMEOUT, pipe.query_async::<()>(&mut conn)).await;
            let error = match outcome {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) if !(e.is_io_error() || e.is_connection_dropped() || e.is_timeout()) => {
                    return Err(self.target.err(format!("cannot write a batch: {e}")))
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {}s", COMMAND_TIMEOUT.as_secs()),
            };
            self.conn = None;
            let attempt = backoff.attempt();
            let Some(delay) = backoff.next_delay() else {
                return Err(self.target.err(format!("cannot write a batch after {attempt} attempts: {error}")));
            };
            warn!(target = %self.target.describe, attempt, "cannot write a batch: {error}; retrying in {delay:?}");
            backoff.wait(&self.ctx.metrics).await;
        }
    }

    async fn barrier(&mut self, _: Barrier, _: &mut TaskSnapshot) -> Result<(), TaskError> {
        // Every batch was written when it arrived.
        Ok(())
    }

    async fn checkpoint_complete(&mut self, _: u64) -> Result<(), TaskError> {
        Ok(())
    }

    async fn end_of_input(&mut self) -> Result<(), TaskError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn target(format: RedisValueFormat) -> RedisTarget {
        let spec = RedisSinkSpec {
            url: "redis://127.0.0.1:1/0".into(),
            tls: None,
            password_env: None,
            password_file: None,
            key: vec!["key".into()],
            key_prefix: "counts:".into(),
            format,
        };
        RedisTarget::from_spec(&spec).unwrap()
    }

    #[test]
    fn a_batch_sets_each_key_once_with_its_last_record_inside_multi_exec() {
        let rows = vec![json!({"key": "a", "count": 1}), json!({"key": "a", "count": 2})];
        let packed =
            String::from_utf8_lossy(&target(RedisValueFormat::Json).batch(rows).get_packed_pipeline()).into_owned();
        assert!(packed.contains("MULTI") && packed.contains("EXEC"), "{packed}");
        assert_eq!(packed.matches("SET").count(), 1, "{packed}");
        assert!(packed.contains("counts:a") && packed.contains(r#"{"count":2,"key":"a"}"#), "{packed}");
    }

    #[test]
    fn the_hash_format_writes_a_field_per_record_field() {
        let rows = vec![json!({"key": "a", "count": 3})];
        let packed =
            String::from_utf8_lossy(&target(RedisValueFormat::Hash).batch(rows).get_packed_pipeline()).into_owned();
        assert!(packed.contains("HSET") && packed.contains("count") && packed.contains("\r\n3\r\n"), "{packed}");
    }
}
