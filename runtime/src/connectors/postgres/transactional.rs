//! The two-phase-commit sink: a prepared transaction per subtask and
//! checkpoint, committed when the checkpoint completes.

use std::marker::PhantomData;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Statement};
use tracing::{debug, warn};

use super::{describe_error, refused_rows, PgTarget, STATEMENT_TIMEOUT};
use crate::connectors::two_phase::TwoPhaseCommitSink;
use crate::job::fence::Fence;
use crate::metrics::JobMetrics;
use crate::record::Rejects;
use crate::task::{TaskContext, TaskError};

/// How long earlier attempts' sessions may take to end once told to.
const SESSION_END_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Rows of the transactions table kept per subtask, counted in
/// checkpoints: enough for any restore that falls back past damaged
/// checkpoints to tell committed from lost.
const KEEP_TRANSACTION_ROWS: u64 = 1000;

/// Rows gathered across input batches before one statement writes them:
/// a statement per input batch made small batches (a slow source, a
/// selective filter) cost a round trip each.
const FLUSH_ROWS: usize = 8192;
/// ... or this many bytes of their JSON, whichever comes first.
const FLUSH_BYTES: usize = 8 << 20;

/// A transaction handle, as stored in checkpoints.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PgTxn {
    pub gid: String,
    pub subtask: u32,
    /// The checkpoint interval it covers (the `txn` of `begin`).
    pub checkpoint: u64,
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
    /// Where refused rows go; without it a refused batch fails the subtask.
    rejects: Option<Rejects>,
    data: Option<Conn>,
    /// Rows of the open transaction not yet sent: a JSON array's elements.
    unsent: String,
    unsent_rows: usize,
    control: Option<Client>,
    /// Set once `recover` ran: from then on a prepared transaction of an
    /// earlier attempt is a leftover (of a stale worker), swept by subtask 0
    /// after each commit. Before it, the restored checkpoint's
    /// transactions are still being committed.
    recovered: bool,
    _records: PhantomData<fn(T)>,
}

impl<T> PostgresSink<T> {
    pub fn for_task(target: PgTarget, ctx: &TaskContext) -> PostgresSink<T> {
        PostgresSink {
            target: target.for_attempt(&ctx.fence, ctx.subtask()),
            fence: ctx.fence,
            subtask: ctx.subtask(),
            metrics: ctx.metrics.clone(),
            retract_on_fallback: ctx.retract_on_fallback,
            rejects: None,
            data: None,
            unsent: String::new(),
            unsent_rows: 0,
            control: None,
            recovered: false,
            _records: PhantomData,
        }
    }

    /// Refused rows go to `rejects` instead of failing the subtask.
    pub fn rejecting(mut self, rejects: Option<Rejects>) -> Self {
        self.rejects = rejects;
        self
    }

    fn gid_prefix(&self) -> String {
        format!("weir:{}:", self.fence.incarnation_tag())
    }

    /// What this attempt's transaction ids (and session names) start with.
    fn attempt_prefix(&self) -> String {
        format!("{}{}:", self.gid_prefix(), self.fence.epoch_tag())
    }

    fn gid(&self, txn: u64) -> String {
        format!("{}{}:{txn}", self.attempt_prefix(), self.subtask)
    }

    /// Writes the unsent rows into the open transaction in one statement.
    /// A row the table refuses goes to `rejects` (each row then on its own,
    /// under a savepoint) or fails the subtask.
    async fn send_rows(&mut self) -> Result<(), TaskError> {
        if self.unsent_rows == 0 {
            return Ok(());
        }
        self.unsent.push(']');
        let rows = std::mem::take(&mut self.unsent);
        self.unsent_rows = 0;
        let target = &self.target;
        let conn = self.data.as_ref().ok_or_else(|| target.err("write outside a transaction"))?;
        let Some(rejects) = &self.rejects else {
            target.timed("cannot insert rows", conn.client.execute(&conn.insert, &[&rows])).await?;
            return Ok(());
        };
        target.timed("cannot set a savepoint", conn.client.batch_execute("SAVEPOINT weir_batch")).await?;
        match tokio::time::timeout(STATEMENT_TIMEOUT, conn.client.execute(&conn.insert, &[&rows])).await {
            Ok(Ok(_)) => {
                let release = conn.client.batch_execute("RELEASE SAVEPOINT weir_batch");
                target.timed("cannot release a savepoint", release).await
            }
            Ok(Err(e)) if refused_rows(&e) => {
                let undo = conn.client.batch_execute("ROLLBACK TO SAVEPOINT weir_batch");
                target.timed("cannot roll back to a savepoint", undo).await?;
                let values: Vec<serde_json::Value> = serde_json::from_str(&rows)
                    .map_err(|e| target.err(format!("cannot read back the rows' JSON: {e}")))?;
                target.write_one_by_one(&conn.client, &conn.insert, values, true, rejects).await
            }
            Ok(Err(e)) => Err(target.err(format!("cannot insert rows: {}", describe_error(&e)))),
            Err(_) => Err(target.err(format!("cannot insert rows: no answer within {}s", STATEMENT_TIMEOUT.as_secs()))),
        }
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
            if self.recovered && self.subtask == 0 {
                let prefix = self.gid_prefix();
                roll_back_leftovers(&target, control, &prefix, &self.attempt_prefix(), &[]).await?;
            }
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
        for record in &batch {
            self.unsent.push(if self.unsent_rows == 0 { '[' } else { ',' });
            let json = serde_json::to_string(record)
                .map_err(|e| self.target.err(format!("cannot encode a record as JSON: {e}")))?;
            self.unsent.push_str(&json);
            self.unsent_rows += 1;
        }
        if self.unsent_rows >= FLUSH_ROWS || self.unsent.len() >= FLUSH_BYTES {
            self.send_rows().await?;
        }
        Ok(())
    }

    async fn pre_commit(&mut self, txn: PgTxn) -> Result<PgTxn, TaskError> {
        let target = self.target.clone();
        let incarnation = self.fence.incarnation_tag();
        self.send_rows().await?;
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
        self.unsent.clear();
        self.unsent_rows = 0;
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
        let ours = self.attempt_prefix();
        self.ensure_control().await?;
        let control = Self::control_client(&self.control, &target)?;
        end_earlier_sessions(&target, control, &prefix, &ours).await?;
        roll_back_leftovers(&target, control, &prefix, &ours, committed).await?;
        self.recovered = true;
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

/// Ends the sessions that earlier attempts of this incarnation still hold
/// (their application name starts with `prefix`, not with `ours`) and
/// waits until they are gone. A statement that a killed process sent just
/// before it died still runs to its end on the server: a `PREPARE
/// TRANSACTION` must land before the leftovers are listed, not after. A
/// frozen worker's session is cut the same way. Sessions that cannot be
/// ended (another role's) are left, with a warning: their leftovers are
/// swept when they show up, at the next commit of subtask 0.
async fn end_earlier_sessions(target: &PgTarget, control: &Client, prefix: &str, ours: &str) -> Result<(), TaskError> {
    let sql = "SELECT pid FROM pg_stat_activity WHERE datname = current_database() \
               AND starts_with(application_name, $1) AND NOT starts_with(application_name, $2) \
               AND pid <> pg_backend_pid()";
    let rows = target.timed("cannot list earlier attempts' sessions", control.query(sql, &[&prefix, &ours])).await?;
    let pids: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    if pids.is_empty() {
        return Ok(());
    }
    debug!(?pids, "ending sessions of earlier attempts");
    for pid in &pids {
        let args: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [pid];
        let end = control.query_one("SELECT pg_terminate_backend($1)", &args);
        match tokio::time::timeout(STATEMENT_TIMEOUT, end).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => warn!(pid, "cannot end a session of an earlier attempt: {}", describe_error(&e)),
            Err(_) => return Err(target.err("cannot end a session of an earlier attempt: no answer")),
        }
    }
    let deadline = tokio::time::Instant::now() + SESSION_END_TIMEOUT;
    loop {
        let left = target
            .timed(
                "cannot check for earlier attempts' sessions",
                control.query_one("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)", &[&pids]),
            )
            .await?
            .get::<_, i64>(0);
        if left == 0 {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            warn!(left, "sessions of earlier attempts still open after {:?}", SESSION_END_TIMEOUT);
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Rolls back the prepared transactions of this incarnation (`prefix`)
/// that are not this attempt's (`ours`) and were not just committed: no
/// completed checkpoint covers them, and they hold their locks until
/// someone does.
async fn roll_back_leftovers(
    target: &PgTarget,
    control: &Client,
    prefix: &str,
    ours: &str,
    committed: &[PgTxn],
) -> Result<(), TaskError> {
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
        if gid.starts_with(ours) || committed.iter().any(|c| c.gid == gid) {
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
    Ok(())
}
