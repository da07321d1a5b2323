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
//! (see `job::fence`), unique per job incarnation and attempt.
//!
//! Every transaction also inserts its id into the *transactions table*, so
//! that whether it committed can be answered after the fact: a `COMMIT
//! PREPARED` retried after a lost reply finds no prepared transaction, and
//! the row tells committed (fine) from rolled back (its rows are lost: the
//! job fails saying so instead of going on). After a restore the same rows
//! show output committed after the restored checkpoint, which a table
//! cannot take back: the job refuses to start, as the file sink does.

use std::marker::PhantomData;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Config, NoTls, Statement};
use tracing::{debug, warn};

use super::secret::read_password;
use super::two_phase::TwoPhaseCommitSink;
use super::upsert::last_per_key;
use crate::job::fence::Fence;
use crate::manifest::postgres::DEFAULT_PASSWORD_ENV;
use crate::manifest::PostgresSinkSpec;
use crate::metrics::JobMetrics;
use crate::task::{Barrier, Collector, TaskContext, TaskError, TaskSnapshot};

/// How long one statement or connection attempt may take.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(60);
/// Connection attempts before the subtask fails (the job then restarts
/// under its restart strategy).
const CONNECT_ATTEMPTS: u32 = 6;
/// Rows of the transactions table kept per subtask, counted in
/// checkpoints: enough for any restore that falls back past damaged
/// checkpoints to tell committed from lost.
const KEEP_TRANSACTION_ROWS: u64 = 1000;

/// A transaction handle, as stored in checkpoints.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PgTxn {
    pub gid: String,
    pub subtask: u32,
    /// The checkpoint interval it covers (the `txn` of `begin`).
    pub checkpoint: u64,
}

/// Where rows go, resolved from the manifest (the password included).
#[derive(Clone)]
pub struct PgTarget {
    config: Config,
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
        let password = read_password(
            "postgres",
            at,
            spec.password_env.as_deref(),
            spec.password_file.as_deref(),
            Some(DEFAULT_PASSWORD_ENV),
        )?;
        if let Some(p) = password {
            config.password(p);
        }
        config.connect_timeout(Duration::from_secs(10));
        config.application_name("weir");
        Ok(PgTarget {
            config,
            table: spec.table.clone(),
            quoted_table: quote(&spec.table),
            columns: spec.columns.clone(),
            key: spec.key.clone(),
            transactions_table: quote(&spec.transactions_table),
        })
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
        let mut delay = Duration::from_millis(200);
        let mut attempt = 1;
        loop {
            let outcome = tokio::time::timeout(STATEMENT_TIMEOUT, self.config.connect(NoTls)).await;
            let error = match outcome {
                Ok(Ok((client, connection))) => {
                    tokio::spawn(async move {
                        if let Err(e) = connection.await {
                            debug!("postgres connection ended: {e}");
                        }
                    });
                    return Ok(client);
                }
                Ok(Err(e)) if e.code().is_some() => {
                    return Err(self.err(format!("the server refused the connection: {}", describe_error(&e))))
                }
                Ok(Err(e)) => describe_error(&e),
                Err(_) => format!("no answer within {}s", STATEMENT_TIMEOUT.as_secs()),
            };
            if attempt >= CONNECT_ATTEMPTS {
                return Err(self.err(format!("cannot connect after {attempt} attempts: {error}")));
            }
            warn!(target = %self.describe(), attempt, "cannot connect: {error}; retrying in {delay:?}");
            JobMetrics::add(&metrics.sink_retries, 1);
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
            attempt += 1;
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

/// The rows of a batch as the JSON array `json_populate_recordset` reads.
fn json_array<T: Serialize>(target: &PgTarget, batch: &[T]) -> Result<String, TaskError> {
    serde_json::to_string(batch).map_err(|e| target.err(format!("cannot encode a record as JSON: {e}")))
}

/// A connection with its prepared statements.
struct Conn {
    client: Client,
    insert: Statement,
    mark: Statement,
}

/// The two-phase-commit sink of one subtask.
pub struct PostgresSink<T> {
    target: PgTarget,
    fence: Fence,
    subtask: u32,
    metrics: std::sync::Arc<JobMetrics>,
    retract_on_fallback: bool,
    data: Option<Conn>,
    control: Option<Client>,
    _records: PhantomData<fn(T)>,
}

impl<T> PostgresSink<T> {
    pub fn for_task(target: PgTarget, ctx: &TaskContext) -> PostgresSink<T> {
        PostgresSink {
            target,
            fence: ctx.fence,
            subtask: ctx.subtask(),
            metrics: ctx.metrics.clone(),
            retract_on_fallback: ctx.retract_on_fallback,
            data: None,
            control: None,
            _records: PhantomData,
        }
    }

    fn gid_prefix(&self) -> String {
        format!("weir:{}:", self.fence.incarnation_tag())
    }

    fn gid(&self, txn: u64) -> String {
        format!("{}{}:{}:{txn}", self.gid_prefix(), self.fence.epoch_tag(), self.subtask)
    }

    /// The control connection, made (with the transactions table) on first use.
    async fn ensure_control(&mut self) -> Result<(), TaskError> {
        if self.control.as_ref().is_some_and(|c| !c.is_closed()) {
            return Ok(());
        }
        let client = self.target.connect(&self.metrics).await?;
        let max: String = self
            .target
            .timed("cannot read max_prepared_transactions", client.query_one("SHOW max_prepared_transactions", &[]))
            .await?
            .get(0);
        if max.trim() == "0" {
            return Err(self.target.err(
                "the server has max_prepared_transactions = 0, so it cannot prepare transactions; set it above the \
                 sink's parallelism (or use mode: Upsert)",
            ));
        }
        // Concurrent CREATE TABLE IF NOT EXISTS can still collide; one
        // subtask at a time creates it.
        let tt = &self.target.transactions_table;
        let ddl = format!(
            "BEGIN; SELECT pg_advisory_xact_lock(hashtext('{lock}')); \
             CREATE TABLE IF NOT EXISTS {tt} (gid text PRIMARY KEY, incarnation text NOT NULL, \
             subtask integer NOT NULL, checkpoint bigint NOT NULL, written_at timestamptz NOT NULL DEFAULT now()); \
             COMMIT",
            lock = tt.replace('\'', "")
        );
        self.target.timed("cannot create the transactions table", client.batch_execute(&ddl)).await?;
        self.control = Some(client);
        Ok(())
    }

    /// The control connection, once [`Self::ensure_control`] made it.
    fn control_client<'a>(control: &'a Option<Client>, target: &PgTarget) -> Result<&'a Client, TaskError> {
        control.as_ref().ok_or_else(|| target.err("no control connection"))
    }

    async fn ensure_data(&mut self) -> Result<(), TaskError> {
        if self.data.as_ref().is_some_and(|c| !c.client.is_closed()) {
            return Ok(());
        }
        self.ensure_control().await?;
        let client = self.target.connect(&self.metrics).await?;
        let columns = self.target.resolve_columns(&client).await?;
        let insert =
            self.target.timed("cannot prepare the insert", client.prepare(&self.target.insert_sql(&columns))).await?;
        let mark_sql = format!(
            "INSERT INTO {} (gid, incarnation, subtask, checkpoint) VALUES ($1, $2, $3, $4)",
            self.target.transactions_table
        );
        let mark = self.target.timed("cannot prepare the transaction record", client.prepare(&mark_sql)).await?;
        self.data = Some(Conn { client, insert, mark });
        Ok(())
    }

    /// `COMMIT PREPARED`, answering "already committed" from the
    /// transactions table when the prepared transaction is gone.
    async fn commit_once(&mut self, txn: &PgTxn) -> Result<(), TaskError> {
        let target = self.target.clone();
        self.ensure_control().await?;
        let control = Self::control_client(&self.control, &target)?;
        let sql = format!("COMMIT PREPARED '{}'", txn.gid);
        match tokio::time::timeout(STATEMENT_TIMEOUT, control.batch_execute(&sql)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) if e.code() == Some(&SqlState::UNDEFINED_OBJECT) => {
                let check = format!("SELECT 1 FROM {} WHERE gid = $1", target.transactions_table);
                let found =
                    target.timed("cannot look up a transaction", control.query_opt(&check, &[&txn.gid])).await?;
                if found.is_none() {
                    return Err(target.err(format!(
                        "transaction {} of checkpoint {} is neither prepared nor committed: its rows are lost \
                         (was it rolled back by hand?)",
                        txn.gid, txn.checkpoint
                    )));
                }
                debug!(gid = %txn.gid, "already committed");
            }
            Ok(Err(e)) => {
                self.control = None;
                return Err(target.err(format!("cannot commit {}: {}", txn.gid, describe_error(&e))));
            }
            Err(_) => {
                self.control = None;
                return Err(target.err(format!("cannot commit {}: no answer", txn.gid)));
            }
        }
        let oldest_kept = txn.checkpoint.saturating_sub(KEEP_TRANSACTION_ROWS) as i64;
        let trim = format!(
            "DELETE FROM {} WHERE incarnation = $1 AND subtask = $2 AND checkpoint < $3",
            target.transactions_table
        );
        let incarnation = self.fence.incarnation_tag();
        if let Some(control) = &self.control {
            let args: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
                [&incarnation, &(txn.subtask as i32), &oldest_kept];
            target.timed("cannot trim the transactions table", control.execute(&trim, &args)).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl<T: Serialize + Send + Sync + 'static> TwoPhaseCommitSink<T> for PostgresSink<T> {
    type Txn = PgTxn;

    async fn begin(&mut self, txn_id: u64) -> Result<PgTxn, TaskError> {
        let target = self.target.clone();
        self.ensure_data().await?;
        let conn = self.data.as_ref().ok_or_else(|| target.err("no data connection"))?;
        target.timed("cannot begin a transaction", conn.client.batch_execute("BEGIN")).await?;
        Ok(PgTxn { gid: self.gid(txn_id), subtask: self.subtask, checkpoint: txn_id })
    }

    async fn write(&mut self, _txn: &mut PgTxn, batch: Vec<T>) -> Result<(), TaskError> {
        let target = self.target.clone();
        let rows = json_array(&target, &batch)?;
        let conn = self.data.as_ref().ok_or_else(|| target.err("write outside a transaction"))?;
        target.timed("cannot insert rows", conn.client.execute(&conn.insert, &[&rows])).await?;
        Ok(())
    }

    async fn pre_commit(&mut self, txn: PgTxn) -> Result<PgTxn, TaskError> {
        let target = self.target.clone();
        let incarnation = self.fence.incarnation_tag();
        let conn = self.data.as_ref().ok_or_else(|| target.err("pre-commit outside a transaction"))?;
        let args: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
            [&txn.gid, &incarnation, &(txn.subtask as i32), &(txn.checkpoint as i64)];
        target.timed("cannot record the transaction", conn.client.execute(&conn.mark, &args)).await?;
        let prepare = format!("PREPARE TRANSACTION '{}'", txn.gid);
        target.timed("cannot prepare the transaction", conn.client.batch_execute(&prepare)).await?;
        Ok(txn)
    }

    async fn commit(&mut self, txn: &PgTxn) -> Result<(), TaskError> {
        // Commits are idempotent: a connection lost mid-commit is retried
        // once on a new connection before the subtask fails.
        match self.commit_once(txn).await {
            Ok(()) => Ok(()),
            Err(e) if self.control.is_none() => {
                warn!(gid = %txn.gid, "commit failed ({e}); retrying on a new connection");
                JobMetrics::add(&self.metrics.sink_retries, 1);
                self.commit_once(txn).await
            }
            Err(e) => Err(e),
        }
    }

    async fn abort(&mut self, _txn: PgTxn) -> Result<(), TaskError> {
        if let Some(conn) = &self.data {
            if let Err(e) = self.target.timed("cannot roll back", conn.client.batch_execute("ROLLBACK")).await {
                // A connection that is gone has rolled back already.
                debug!("{e}");
                self.data = None;
            }
        }
        Ok(())
    }

    async fn recover(&mut self, restored: Option<u64>, committed: &[PgTxn]) -> Result<(), TaskError> {
        let target = self.target.clone();
        let prefix = self.gid_prefix();
        let ours = format!("{prefix}{}:", self.fence.epoch_tag());
        self.ensure_control().await?;
        let control = Self::control_client(&self.control, &target)?;
        let listed = target
            .timed(
                "cannot list prepared transactions",
                control.query(
                    "SELECT gid FROM pg_prepared_xacts WHERE database = current_database() AND starts_with(gid, $1)",
                    &[&prefix],
                ),
            )
            .await?;
        for row in listed {
            let gid: String = row.get(0);
            // This attempt's own transactions are live; the restored
            // checkpoint's were committed just before this call.
            if gid.starts_with(&ours) || committed.iter().any(|c| c.gid == gid) {
                continue;
            }
            debug!(%gid, "rolling back a transaction no completed checkpoint covers");
            match tokio::time::timeout(STATEMENT_TIMEOUT, control.batch_execute(&format!("ROLLBACK PREPARED '{gid}'")))
                .await
            {
                Ok(Ok(())) => {}
                Ok(Err(e)) if e.code() == Some(&SqlState::UNDEFINED_OBJECT) => {}
                Ok(Err(e)) => return Err(target.err(format!("cannot roll back {gid}: {}", describe_error(&e)))),
                Err(_) => return Err(target.err(format!("cannot roll back {gid}: no answer"))),
            }
        }
        let Some(restored) = restored else { return Ok(()) };
        let ahead_sql = format!(
            "SELECT gid, checkpoint FROM {} WHERE incarnation = $1 AND checkpoint > $2 ORDER BY checkpoint",
            target.transactions_table
        );
        let incarnation = self.fence.incarnation_tag();
        let restored_id = restored as i64;
        let args: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&incarnation, &restored_id];
        let rows = target.timed("cannot read the transactions table", control.query(&ahead_sql, &args)).await?;
        let ahead: Vec<(String, i64)> = rows
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1)))
            .filter(|(gid, _)| !committed.iter().any(|c| &c.gid == gid))
            .collect();
        let Some((example, _)) = ahead.first() else { return Ok(()) };
        let newest = ahead.iter().map(|(_, c)| *c as u64).max().unwrap_or(restored);
        if self.retract_on_fallback {
            return Err(target.err(format!(
                "restore fell back to checkpoint {restored}, but rows of checkpoint {newest} are already committed \
                 (transaction {example}); onFallbackPastCommittedOutput: Retract cannot take rows back out of a table"
            )));
        }
        Err(TaskError::CommittedOutputAhead { sink: target.describe(), restored, newest, example: example.clone() })
    }
}

/// The upsert sink of one subtask: each batch is written at once, later
/// rows of a key replacing earlier ones; nothing is kept in checkpoints.
pub struct PostgresUpsertSink<T> {
    target: PgTarget,
    ctx: TaskContext,
    conn: Option<(Client, Statement)>,
    _records: PhantomData<fn(T)>,
}

impl<T> PostgresUpsertSink<T> {
    pub fn new(target: PgTarget, ctx: TaskContext) -> PostgresUpsertSink<T> {
        PostgresUpsertSink { target, ctx, conn: None, _records: PhantomData }
    }

    async fn ensure_conn(&mut self) -> Result<(), TaskError> {
        if self.conn.as_ref().is_some_and(|(c, _)| !c.is_closed()) {
            return Ok(());
        }
        let client = self.target.connect(&self.ctx.metrics).await?;
        let columns = self.target.resolve_columns(&client).await?;
        let upsert =
            self.target.timed("cannot prepare the upsert", client.prepare(&self.target.upsert_sql(&columns))).await?;
        self.conn = Some((client, upsert));
        Ok(())
    }
}

#[async_trait]
impl<T: Serialize + Send + 'static> Collector<T> for PostgresUpsertSink<T> {
    async fn open(&mut self) -> Result<(), TaskError> {
        // Configuration errors (no table, wrong password) show at start.
        self.ensure_conn().await
    }

    async fn collect(&mut self, batch: Vec<T>) -> Result<(), TaskError> {
        if batch.is_empty() {
            return Ok(());
        }
        JobMetrics::add(&self.ctx.metrics.records_out, batch.len());
        JobMetrics::add(&self.ctx.stage.records_out, batch.len());
        let target = self.target.clone();
        let rows = batch
            .iter()
            .map(serde_json::to_value)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| target.err(format!("cannot encode a record as JSON: {e}")))?;
        let rows = json_array(&target, &last_per_key(rows, &target.key))?;
        // An upsert can be repeated, so a lost connection is retried once.
        for attempt in 1..=2 {
            self.ensure_conn().await?;
            let (client, upsert) = self.conn.as_ref().ok_or_else(|| target.err("no connection"))?;
            match target.timed("cannot upsert rows", client.execute(upsert, &[&rows])).await {
                Ok(_) => return Ok(()),
                Err(e) if attempt == 1 && client.is_closed() => {
                    warn!("{e}; retrying on a new connection");
                    JobMetrics::add(&self.ctx.metrics.sink_retries, 1);
                    self.conn = None;
                }
                Err(e) => return Err(e),
            }
        }
        Err(target.err("cannot upsert rows"))
    }

    async fn barrier(&mut self, _: Barrier, _: &mut TaskSnapshot) -> Result<(), TaskError> {
        // Every batch was written (and autocommitted) when it arrived.
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

    #[test]
    fn names_are_quoted_part_by_part() {
        assert_eq!(quote("public.counts"), "\"public\".\"counts\"");
        assert_eq!(quote("counts"), "\"counts\"");
    }

    fn target(key: &[&str]) -> PgTarget {
        PgTarget {
            config: Config::from_str("host=127.0.0.1 user=weir password=hunter2 dbname=app").unwrap(),
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
