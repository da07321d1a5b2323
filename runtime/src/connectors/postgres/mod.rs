//! PostgreSQL sinks: two-phase commit (exactly once) and upsert by key
//! (idempotent).
//!
//! Rows are sent a batch per statement, as one JSON array that the server
//! turns into rows of the table's own types (`json_populate_recordset`),
//! so a batch costs one round trip and types are checked by the table.
//!
//! **Two-phase commit.** A subtask writes the rows of a checkpoint interval
//! into one transaction on its *data* connection and prepares it at the
//! barrier (`PREPARE TRANSACTION`), which makes it durable and detaches it
//! from the session. When the checkpoint completes, the *control*
//! connection commits it (`COMMIT PREPARED` cannot run inside the next
//! transaction, which is already open on the data connection by then).
//! Transaction ids are `weir:<incarnation>:<epoch>:<subtask>:<txn>`
//! (see `job::fence`), unique per job incarnation and attempt; sessions are
//! named after the attempt the same way (`application_name`), so that a
//! new attempt can end an earlier one's sessions before it rolls back
//! their leftovers.
//!
//! Every transaction also inserts its id into the *transactions table*, so
//! that whether it committed can be answered after the fact: a `COMMIT
//! PREPARED` retried after a lost reply finds no prepared transaction, and
//! the row tells committed (fine) from rolled back (its rows are lost: the
//! job fails saying so instead of going on). After a restore the same rows
//! show output committed after the restored checkpoint, which a table
//! cannot take back: the job refuses to start, as the file sink does.
//!
//! **Refused rows.** Under an error policy other than `fail`, each batch
//! runs under a savepoint; a batch the table refuses (a value of the wrong
//! type, a violated constraint) is rolled back to it and written row by
//! row, and the refused rows go to the policy (skipped or dead-lettered
//! with the table's error), the others on into the transaction.
//!
//! # Layout
//! - this module: the target (server, table, columns) and its connections.
//! - [`transactional`]: the two-phase-commit sink.
//! - [`upsert`]: the upsert sink.

use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;
use tokio_postgres::config::SslMode;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Config, NoTls};
use tracing::{debug, warn};

use super::backoff::{Backoff, SINK_ATTEMPTS};
use super::secret::read_password;
use super::tls::client_config;
use crate::job::fence::Fence;
use crate::manifest::postgres::DEFAULT_PASSWORD_ENV;
use crate::manifest::PostgresSinkSpec;
use crate::metrics::JobMetrics;
use crate::record::{BadRecord, Rejects};
use crate::task::TaskError;

mod transactional;
mod upsert;

pub use transactional::{PgTxn, PostgresSink};
pub use upsert::PostgresUpsertSink;

/// How long one statement or connection attempt may take.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(60);

/// Where rows go, resolved from the manifest (the password included).
#[derive(Clone)]
pub struct PgTarget {
    config: Config,
    /// Verified TLS, when the spec asks for it.
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    /// The table as written in the manifest, and quoted for SQL.
    table: String,
    quoted_table: String,
    columns: Vec<String>,
    key: Vec<String>,
    transactions_table: String,
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PgTarget({})", self.describe())
    }
}

fn quote(name: &str) -> String {
    name.split('.').map(|p| format!("\"{}\"", p.replace('"', "\"\""))).collect::<Vec<_>>().join(".")
}

impl PgTarget {
    /// Reads the password from where the spec says; a named variable or
    /// file that is missing is an error naming the field.
    pub fn from_spec(spec: &PostgresSinkSpec) -> Result<PgTarget, TaskError> {
        let at = "spec.pipeline.sink.postgres";
        let mut config = Config::from_str(&spec.connection)
            .map_err(|e| TaskError::sink("postgres", format!("{at}.connection: {e}")))?;
        let password =
            read_password(at, spec.password_env.as_deref(), spec.password_file.as_deref(), Some(DEFAULT_PASSWORD_ENV))
                .map_err(|e| TaskError::sink("postgres", e))?;
        if let Some(p) = password {
            config.password(p);
        }
        config.connect_timeout(Duration::from_secs(10));
        config.application_name("weir");
        let wants_tls = spec.tls.is_some() || config.get_ssl_mode() == SslMode::Require;
        let tls = match wants_tls {
            true => {
                let settings = spec.tls.clone().unwrap_or_default();
                let client =
                    client_config(&format!("{at}.tls"), &settings).map_err(|e| TaskError::sink("postgres", e))?;
                config.ssl_mode(SslMode::Require);
                Some(tokio_postgres_rustls::MakeRustlsConnect::new((*client).clone()))
            }
            false => None,
        };
        Ok(PgTarget {
            config,
            tls,
            table: spec.table.clone(),
            quoted_table: quote(&spec.table),
            columns: spec.columns.clone(),
            key: spec.key.clone(),
            transactions_table: quote(&spec.transactions_table),
        })
    }

    /// Names the sessions after the attempt and subtask
    /// (`weir:<incarnation>:<epoch>:<subtask>`, the prefix of its
    /// transaction ids), so that a later attempt can find and end them.
    pub fn for_attempt(mut self, fence: &Fence, subtask: u32) -> PgTarget {
        let name = format!("weir:{}:{}:{subtask}", fence.incarnation_tag(), fence.epoch_tag());
        self.config.application_name(&name);
        self
    }

    /// The server and table, for messages: never the password.
    pub fn describe(&self) -> String {
        let host = match self.config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => "?".into(),
        };
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        let db = self.config.get_dbname().or(self.config.get_user()).unwrap_or("?");
        format!("postgres {host}:{port}/{db} table {}", self.table)
    }

    fn err(&self, reason: impl std::fmt::Display) -> TaskError {
        TaskError::sink(&self.describe(), reason)
    }

    /// Runs `fut` with the statement deadline.
    async fn timed<T>(
        &self,
        what: &str,
        fut: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, TaskError> {
        match tokio::time::timeout(STATEMENT_TIMEOUT, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.err(format!("{what}: {}", describe_error(&e)))),
            Err(_) => Err(self.err(format!("{what}: no answer within {}s", STATEMENT_TIMEOUT.as_secs()))),
        }
    }

    /// Connects, retrying with backoff while the server cannot be reached;
    /// a refusal (password, missing database) fails at once.
    async fn connect(&self, metrics: &JobMetrics) -> Result<Client, TaskError> {
        let mut backoff = Backoff::new(SINK_ATTEMPTS);
        loop {
            let outcome = match &self.tls {
                None => {
                    tokio::time::timeout(STATEMENT_TIMEOUT, async {
                        let (client, connection) = self.config.connect(NoTls).await?;
                        tokio::spawn(drive(connection));
                        Ok::<_, tokio_postgres::Error>(client)
                    })
                    .await
                }
                Some(tls) => {
                    tokio::time::timeout(STATEMENT_TIMEOUT, async {
                        let (client, connection) = self.config.connect(tls.clone()).await?;
                        tokio::spawn(drive(connection));
                        Ok::<_, tokio_postgres::Error>(client)
                    })
                    .await
                }
            };
            let error = match outcome {
                Ok(Ok(client)) => return Ok(client),
                Ok(Err(e)) if e.code().is_some() => {
                    return Err(self.err(format!("the server refused the connection: {}", describe_error(&e))))
                }
                // A certificate that does not verify will not verify on
                // the next try either.
                Ok(Err(e)) if self.tls.is_some() && tls_refused(&e) => {
                    return Err(self.err(format!("TLS to the server failed: {}", describe_error(&e))))
                }
                Ok(Err(e)) => describe_error(&e),
                Err(_) => format!("no answer within {}s", STATEMENT_TIMEOUT.as_secs()),
            };
            let attempt = backoff.attempt();
            let Some(delay) = backoff.next_delay() else {
                return Err(self.err(format!("cannot connect after {attempt} attempts: {error}")));
            };
            warn!(target = %self.describe(), attempt, "cannot connect: {error}; retrying in {delay:?}");
            backoff.wait(metrics).await;
        }
    }

    /// The columns to write: those the spec names (each checked to exist),
    /// else every column without a default that is not generated.
    async fn resolve_columns(&self, client: &Client) -> Result<Vec<String>, TaskError> {
        let sql = "SELECT a.attname::text, (a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> '') \
                   FROM pg_attribute a WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 \
                   AND NOT a.attisdropped ORDER BY a.attnum";
        let rows = match tokio::time::timeout(STATEMENT_TIMEOUT, client.query(sql, &[&self.quoted_table])).await {
            Ok(Ok(rows)) => rows,
            Ok(Err(e)) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => {
                return Err(self.err(format!(
                    "spec.pipeline.sink.postgres.table: table `{}` does not exist; create it first",
                    self.table
                )))
            }
            Ok(Err(e)) => return Err(self.err(format!("cannot read the table's columns: {}", describe_error(&e)))),
            Err(_) => return Err(self.err("cannot read the table's columns: no answer")),
        };
        let table: Vec<(String, bool)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        if self.columns.is_empty() {
            let cols: Vec<String> = table.into_iter().filter(|(_, defaulted)| !defaulted).map(|(c, _)| c).collect();
            if cols.is_empty() {
                return Err(self.err("spec.pipeline.sink.postgres.columns: the table has no column to write"));
            }
            return Ok(cols);
        }
        for c in self.columns.iter().chain(&self.key) {
            if !table.iter().any(|(name, _)| name == c) {
                return Err(self.err(format!("spec.pipeline.sink.postgres.columns: the table has no column `{c}`")));
            }
        }
        Ok(self.columns.clone())
    }

    fn insert_sql(&self, columns: &[String]) -> String {
        let cols = columns.iter().map(|c| quote(c)).collect::<Vec<_>>().join(", ");
        format!(
            "INSERT INTO {t} ({cols}) SELECT {cols} FROM json_populate_recordset(NULL::{t}, $1::text::json)",
            t = self.quoted_table
        )
    }

    fn upsert_sql(&self, columns: &[String]) -> String {
        let key = self.key.iter().map(|c| quote(c)).collect::<Vec<_>>().join(", ");
        let updates: Vec<String> =
            columns.iter().filter(|c| !self.key.contains(c)).map(|c| format!("{0} = EXCLUDED.{0}", quote(c))).collect();
        let action =
            if updates.is_empty() { "NOTHING".to_string() } else { format!("UPDATE SET {}", updates.join(", ")) };
        format!("{} ON CONFLICT ({key}) DO {action}", self.insert_sql(columns))
    }
}

/// The server's message and, for errors it reports, its SQLSTATE and detail.
fn describe_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let detail = db.detail().map(|d| format!(" ({d})")).unwrap_or_default();
            format!("{}{detail} [SQLSTATE {}]", db.message(), db.code().code())
        }
        None => e.to_string(),
    }
}

/// Whether the server refused the rows themselves (a data exception or a
/// violated constraint: SQLSTATE classes 22 and 23), not the connection.
fn refused_rows(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|c| c.code().starts_with("22") || c.code().starts_with("23"))
}

impl PgTarget {
    /// Writes `rows` with `statement` one at a time, each under its own
    /// savepoint when inside a transaction, so that one refused row costs
    /// only itself; refused rows go to `rejects`, named by the table's error.
    async fn write_one_by_one(
        &self,
        client: &Client,
        statement: &tokio_postgres::Statement,
        rows: Vec<serde_json::Value>,
        in_transaction: bool,
        rejects: &Rejects,
    ) -> Result<(), TaskError> {
        for row in rows {
            let one = json_array(self, std::slice::from_ref(&row))?;
            if in_transaction {
                self.timed("cannot set a savepoint", client.batch_execute("SAVEPOINT weir_row")).await?;
            }
            match tokio::time::timeout(STATEMENT_TIMEOUT, client.execute(statement, &[&one])).await {
                Ok(Ok(_)) if in_transaction => {
                    self.timed("cannot release a savepoint", client.batch_execute("RELEASE SAVEPOINT weir_row"))
                        .await?;
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) if refused_rows(&e) => {
                    if in_transaction {
                        let undo = client.batch_execute("ROLLBACK TO SAVEPOINT weir_row");
                        self.timed("cannot roll back to a savepoint", undo).await?;
                    }
                    let reason = format!("the table refused the row: {}", describe_error(&e));
                    if let Ok(mut r) = rejects.lock() {
                        r.push(BadRecord { origin: self.describe(), raw: row.to_string(), reason });
                    }
                }
                Ok(Err(e)) => return Err(self.err(format!("cannot write a row: {}", describe_error(&e)))),
                Err(_) => {
                    return Err(
                        self.err(format!("cannot write a row: no answer within {}s", STATEMENT_TIMEOUT.as_secs()))
                    )
                }
            }
        }
        Ok(())
    }
}

/// The rows of a batch as the JSON array `json_populate_recordset` reads.
fn json_array<T: Serialize>(target: &PgTarget, batch: &[T]) -> Result<String, TaskError> {
    serde_json::to_string(batch).map_err(|e| target.err(format!("cannot encode a record as JSON: {e}")))
}

/// Runs a connection's I/O until it ends.
async fn drive<S, T>(connection: tokio_postgres::Connection<S, T>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if let Err(e) = connection.await {
        debug!("postgres connection ended: {e}");
    }
}

/// Whether a connection failed in the TLS handshake (an untrusted or
/// wrongly named certificate, a server without TLS), not on the network.
fn tls_refused(e: &tokio_postgres::Error) -> bool {
    let text = describe_error(e).to_lowercase();
    ["certificate", "tls", "ssl", "handshake"].iter().any(|w| text.contains(w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_quoted_part_by_part() {
        assert_eq!(quote("public.counts"), "\"public\".\"counts\"");
        assert_eq!(quote("counts"), "\"counts\"");
    }

    fn target(key: &[&str]) -> PgTarget {
        PgTarget {
            config: Config::from_str("host=127.0.0.1 user=weir password=hunter2 dbname=app").unwrap(),
            tls: None,
            table: "counts".into(),
            quoted_table: quote("counts"),
            columns: vec![],
            key: key.iter().map(|s| s.to_string()).collect(),
            transactions_table: quote("weir_sink_transactions"),
        }
    }

    #[test]
    fn an_upsert_updates_every_column_but_the_key() {
        let sql = target(&["key"]).upsert_sql(&["key".into(), "count".into(), "sum_value".into()]);
        assert!(
            sql.ends_with("ON CONFLICT (\"key\") DO UPDATE SET \"count\" = EXCLUDED.\"count\", \"sum_value\" = EXCLUDED.\"sum_value\""),
            "{sql}"
        );
    }

    #[test]
    fn messages_name_the_server_and_table_but_never_the_password() {
        let t = target(&[]);
        let text = t.err("boom").to_string();
        assert!(text.contains("127.0.0.1:5432/app table counts"), "{text}");
        assert!(!text.contains("hunter2") && !format!("{t:?}").contains("hunter2"));
    }
}
