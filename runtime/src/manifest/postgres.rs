//! `spec.pipeline.sink.postgres`: rows into a PostgreSQL table, exactly once.

use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Where the password comes from when `passwordEnv` and `passwordFile` are
/// both absent: libpq's own variable.
pub const DEFAULT_PASSWORD_ENV: &str = "PGPASSWORD";

/// Rows written to a PostgreSQL table: each record's fields go to the
/// columns of the same names.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PostgresSinkSpec {
    /// A libpq connection string without the password, as key/value pairs
    /// (`host=pg port=5432 user=weir dbname=app`) or a URL
    /// (`postgresql://weir@pg:5432/app`).
    pub connection: String,
    /// The environment variable that holds the password (a Kubernetes
    /// Secret through `podTemplate`); `PGPASSWORD` when neither this nor
    /// `passwordFile` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// A file that holds the password (a mounted Secret); its trailing
    /// newline is ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<String>,
    /// The table, `name` or `schema.name`.
    pub table: String,
    /// The columns written; by default every column of the table that has
    /// no default value and is not generated.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub columns: Vec<String>,
    #[serde(default)]
    pub mode: PostgresSinkMode,
    /// The columns of a unique constraint that `Upsert` writes over
    /// (`ON CONFLICT (key) DO UPDATE`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key: Vec<String>,
    /// TLS to the server, verified against `caFile` or the system's CAs
    /// (`tls: {}` for a server with a public certificate). A connection
    /// string with `sslmode=require` gets it too; Weir never uses TLS
    /// without checking the server's certificate and name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<super::ClientTlsSpec>,
    /// Where `TwoPhaseCommit` records which of its transactions committed
    /// (created if absent; it holds a row per subtask and checkpoint, and
    /// old rows are deleted as the job goes on).
    #[serde(default = "default_transactions_table")]
    pub transactions_table: String,
}

fn default_transactions_table() -> String {
    "weir_sink_transactions".into()
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
pub enum PostgresSinkMode {
    /// Rows of a checkpoint interval go into one transaction per subtask,
    /// prepared (`PREPARE TRANSACTION`) at the barrier and committed
    /// (`COMMIT PREPARED`) when the checkpoint completes; readers see each
    /// row once. Needs `max_prepared_transactions` > 0 on the server.
    #[default]
    TwoPhaseCommit,
    /// Rows are written at once with `INSERT ... ON CONFLICT (key) DO
    /// UPDATE`: a replay after a failure writes the same rows again, so the
    /// table ends up exactly as if each record was written once, though
    /// readers may see older values again for a moment after a failure.
    Upsert,
}

/// A plain or schema-qualified SQL name, as written in the manifest.
pub fn check_identifier(name: &str) -> Result<(), String> {
    let part_ok = |p: &str| {
        !p.is_empty()
            && p.len() <= 63
            && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !p.starts_with(|c: char| c.is_ascii_digit())
    };
    let parts: Vec<&str> = name.split('.').collect();
    if parts.len() > 2 || !parts.iter().all(|p| part_ok(p)) {
        return Err(format!(
            "expected a name of letters, digits and `_` (not first), optionally `schema.name`, got `{name}`"
        ));
    }
    Ok(())
}

impl PostgresSinkSpec {
    /// What is wrong with this sink, each naming its field under `at`.
    pub fn problems(&self, at: &str) -> Vec<String> {
        let mut errors = Vec::new();
        match tokio_postgres::Config::from_str(&self.connection) {
            Err(e) => errors.push(format!("{at}.connection: expected a libpq connection string: {e}")),
            Ok(c) if c.get_password().is_some() => errors.push(format!(
                "{at}.connection: holds a password in clear; put it in a Secret and name it with passwordEnv or \
                 passwordFile"
            )),
            Ok(c) if c.get_hosts().is_empty() => {
                errors.push(format!("{at}.connection: names no host (expected host=... or a URL with a host)"))
            }
            Ok(_) => {}
        }
        if let Some(tls) = &self.tls {
            errors.extend(tls.problems(&format!("{at}.tls")));
        }
        if self.password_env.is_some() && self.password_file.is_some() {
            errors.push(format!("{at}: expected at most one of passwordEnv, passwordFile"));
        }
        if let Err(e) = check_identifier(&self.table) {
            errors.push(format!("{at}.table: {e}"));
        }
        if let Err(e) = check_identifier(&self.transactions_table) {
            errors.push(format!("{at}.transactionsTable: {e}"));
        }
        for (i, c) in self.columns.iter().enumerate() {
            if let Err(e) = check_identifier(c).and_then(|()| unqualified(c)) {
                errors.push(format!("{at}.columns[{i}]: {e}"));
            }
        }
        for (i, c) in self.key.iter().enumerate() {
            if let Err(e) = check_identifier(c).and_then(|()| unqualified(c)) {
                errors.push(format!("{at}.key[{i}]: {e}"));
            } else if !self.columns.is_empty() && !self.columns.contains(c) {
                errors.push(format!("{at}.key[{i}]: `{c}` is not one of the columns written"));
            }
        }
        match self.mode {
            PostgresSinkMode::Upsert if self.key.is_empty() => {
                errors.push(format!("{at}.key: mode Upsert needs the columns of a unique constraint"))
            }
            PostgresSinkMode::TwoPhaseCommit if !self.key.is_empty() => {
                errors.push(format!("{at}.key: only mode Upsert uses a key; remove it or set mode: Upsert"))
            }
            _ => {}
        }
        errors
    }
}

fn unqualified(name: &str) -> Result<(), String> {
    if name.contains('.') {
        return Err(format!("expected a column name, got `{name}`"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> PostgresSinkSpec {
        PostgresSinkSpec {
            connection: "host=127.0.0.1 port=5432 user=weir dbname=app".into(),
            password_env: None,
            password_file: None,
            table: "public.counts".into(),
            columns: vec![],
            mode: PostgresSinkMode::TwoPhaseCommit,
            key: vec![],
            tls: None,
            transactions_table: default_transactions_table(),
        }
    }

    #[test]
    fn a_plain_two_phase_commit_sink_is_accepted() {
        assert_eq!(spec().problems("sink"), Vec::<String>::new());
    }

    #[test]
    fn refuses_a_password_in_the_connection_string_naming_the_field() {
        let s = PostgresSinkSpec { connection: "postgresql://weir:secret@pg/app".into(), ..spec() };
        let problems = s.problems("spec.pipeline.sink.postgres");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].starts_with("spec.pipeline.sink.postgres.connection: holds a password"), "{problems:?}");
        assert!(!problems[0].contains("secret"), "the password must not be echoed: {problems:?}");
    }

    #[test]
    fn upsert_without_a_key_is_refused() {
        let s = PostgresSinkSpec { mode: PostgresSinkMode::Upsert, ..spec() };
        assert_eq!(s.problems("sink"), vec!["sink.key: mode Upsert needs the columns of a unique constraint"]);
    }

    #[test]
    fn refuses_table_names_that_are_not_plain_identifiers() {
        let s = PostgresSinkSpec { table: "counts; drop table x".into(), ..spec() };
        let problems = s.problems("sink");
        assert!(problems[0].starts_with("sink.table: expected a name of letters"), "{problems:?}");
    }

    #[test]
    fn a_key_column_must_be_written() {
        let s = PostgresSinkSpec {
            mode: PostgresSinkMode::Upsert,
            columns: vec!["key".into(), "count".into()],
            key: vec!["id".into()],
            ..spec()
        };
        assert_eq!(s.problems("sink"), vec!["sink.key[0]: `id` is not one of the columns written"]);
    }
}
