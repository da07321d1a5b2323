//! The PostgreSQL sink against a real PostgreSQL server (started by
//! `scripts/test-postgres`, which exports libpq's `PG*` variables):
//! `kill -9` of `weir run`, a server crash mid-job, and configuration
//! errors. Every table is checked for each update exactly once.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

mod common;

use common::run::{
    finish, kill_nine_at, kill_nine_repeatedly, run_to_failure, wait_for_progress, weir, write_manifest, Job, KEYS,
};

fn psql(sql: &str) -> String {
    let out = Command::new("psql").args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql]).output().unwrap();
    assert!(out.status.success(), "psql {sql}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn rows(table: &str) -> Vec<Value> {
    let json = psql(&format!("SELECT coalesce(json_agg(t), '[]') FROM {table} t"));
    serde_json::from_str(&json).unwrap()
}

/// The ids of weir's prepared transactions on the server, with when each
/// was prepared, so a failure says whose transaction was left.
fn prepared_weir_transactions() -> Vec<String> {
    let listed = psql("SELECT gid || ' (prepared ' || prepared || ')' FROM pg_prepared_xacts WHERE gid LIKE 'weir:%'");
    listed.lines().map(str::to_string).collect()
}

fn connection() -> String {
    let host = std::env::var("PGHOST").expect("PGHOST: scripts/test-postgres starts a server and sets it");
    let port = std::env::var("PGPORT").unwrap_or_else(|_| "5432".into());
    format!("host={host} port={port} user=weir dbname=weir")
}

fn pg_ctl(args: &[&str]) {
    let bin = std::env::var("WEIR_TEST_PG_BIN").expect("WEIR_TEST_PG_BIN");
    let data = std::env::var("WEIR_TEST_PG_DATA").expect("WEIR_TEST_PG_DATA");
    let log = format!("{data}/../server.log");
    let status = Command::new("runuser")
        .args(["-u", "postgres", "--", &format!("{bin}/pg_ctl"), "-D", &data, "-l", &log])
        .args(args)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "pg_ctl {args:?}: {status}");
}

#[test]
#[ignore = "needs a PostgreSQL server: scripts/test-postgres starts one and runs these"]
fn two_phase_commit_table_holds_every_update_exactly_once_after_kill_9_of_weir_run() {
    const COUNT: u64 = 300_000;
    psql("DROP TABLE IF EXISTS counts_2pc; CREATE TABLE counts_2pc (id bigserial PRIMARY KEY, key text NOT NULL, count bigint NOT NULL, sum_value bigint NOT NULL)");
    let dir = tempfile::tempdir().unwrap();
    let sink = format!("postgres: {{connection: '{}', table: counts_2pc}}", connection());
    let job = Job { name: "pg-2pc", count: COUNT, rate: 60_000, sink, restart: "{none: {}}" };
    let manifest = write_manifest(dir.path(), &job);

    // Where a two-phase commit can go wrong: prepared before the job's
    // first checkpoint completed (the next run has no checkpoint to learn
    // the attempt's transaction names from), prepared but the checkpoint
    // not complete, complete but not committed, one of several committed,
    // committed in the ledger but no sink told.
    for stop_at in
        ["PreCommitted:1", "PreCommitted:3", "BeforeCommit:4", "Committed:5", "LedgerCommitted:4", "PreCommitted:9"]
    {
        if let Err(log) = kill_nine_at(&manifest, dir.path(), stop_at) {
            panic!("the job ended before {stop_at}: {log}");
        }
    }
    let kills = kill_nine_repeatedly(&manifest, dir.path(), &[900, 500, 1100]);
    assert!(kills >= 2, "the job finished before it could be killed enough ({kills} kills)");
    let status = finish(weir(&manifest, dir.path(), "final.log"), Duration::from_secs(120), dir.path(), "final.log");
    assert!(status.success(), "final run: {}", std::fs::read_to_string(dir.path().join("final.log")).unwrap());

    let updates = weir_runtime::verify::updates_of(rows("counts_2pc")).unwrap();
    if let Err(e) = weir_runtime::verify::check_updates_exactly_once(&updates, COUNT, KEYS) {
        panic!("table after {kills} kill -9 and a rerun: {e}");
    }
    assert_eq!(
        prepared_weir_transactions(),
        Vec::<String>::new(),
        "transactions of killed attempts were left prepared"
    );
    let kept: u64 = psql("SELECT count(*) FROM weir_sink_transactions").parse().unwrap();
    assert!(kept > 0, "every commit is recorded in the transactions table");
}

/// `psql` as a session named like an attempt of weir (`PGAPPNAME`),
/// reading `sql` from its standard input one statement at a time.
fn psql_as_attempt(name: &str, sql: &str) -> std::process::Child {
    use std::io::Write;
    let mut child = Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", "-"])
        .env("PGAPPNAME", name)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(sql.as_bytes()).unwrap();
    child
}

#[test]
#[ignore = "needs a PostgreSQL server: scripts/test-postgres starts one and runs these"]
fn sessions_and_transactions_of_earlier_attempts_are_ended_and_rolled_back_not_left_prepared() {
    const COUNT: u64 = 300_000;
    psql(
        "DROP TABLE IF EXISTS counts_fence; DROP TABLE IF EXISTS fence_transactions; \
          CREATE TABLE counts_fence (key text NOT NULL, count bigint NOT NULL, sum_value bigint NOT NULL)",
    );
    let dir = tempfile::tempdir().unwrap();
    let sink = format!(
        "postgres: {{connection: '{}', table: counts_fence, transactionsTable: fence_transactions}}",
        connection()
    );
    let job = Job { name: "pg-fence", count: COUNT, rate: 50_000, sink, restart: "{none: {}}" };
    let manifest = write_manifest(dir.path(), &job);

    let mut first = weir(&manifest, dir.path(), "first.log");
    // The sink creates its transactions table when it starts, so the first
    // polls may come before the table exists.
    let recorded = || {
        psql("SELECT to_regclass('fence_transactions') IS NOT NULL") == "t"
            && psql("SELECT count(*) FROM fence_transactions") != "0"
    };
    wait_for_progress(&mut first, "a first commit", recorded);
    first.kill().unwrap();
    first.wait().unwrap();
    let incarnation = psql("SELECT DISTINCT incarnation FROM fence_transactions");

    // An earlier attempt's PREPARE TRANSACTION still under way on the
    // server when the next attempt starts (here held back by a sleep).
    let late_attempt = format!("weir:{incarnation}:00000000000000aa:");
    let late = psql_as_attempt(
        &format!("{late_attempt}0"),
        &format!(
            "BEGIN;\nINSERT INTO counts_fence VALUES ('late', 1, 1);\nSELECT pg_sleep(60);\n\
             PREPARE TRANSACTION '{late_attempt}0:1';\n"
        ),
    );
    let sleeping = || {
        psql(&format!("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE '{late_attempt}%' AND query LIKE '%pg_sleep%'"))
            == "1"
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !sleeping() {
        assert!(std::time::Instant::now() < deadline, "the late session never started its sleep");
        std::thread::sleep(Duration::from_millis(50));
    }

    let mut rerun = weir(&manifest, dir.path(), "rerun.log");
    let before: u64 = psql("SELECT count(*) FROM fence_transactions").parse().unwrap();
    wait_for_progress(&mut rerun, "the rerun committing", || {
        psql("SELECT count(*) FROM fence_transactions").parse::<u64>().unwrap() > before
    });
    // A stale worker of an earlier attempt that reconnects and prepares a
    // transaction while the job runs.
    let stale_attempt = format!("weir:{incarnation}:00000000000000bb:");
    let stale = psql_as_attempt(
        &format!("{stale_attempt}1"),
        &format!(
            "BEGIN;\nINSERT INTO counts_fence VALUES ('stale', 1, 1);\nPREPARE TRANSACTION '{stale_attempt}1:5';\n"
        ),
    );
    let stale = stale.wait_with_output().unwrap();
    assert!(stale.status.success(), "the stale prepare: {}", String::from_utf8_lossy(&stale.stderr));
    assert!(rerun.try_wait().unwrap().is_none(), "the job ended before the stale transaction was prepared");
    let status = finish(rerun, Duration::from_secs(120), dir.path(), "rerun.log");
    assert!(status.success(), "rerun: {}", std::fs::read_to_string(dir.path().join("rerun.log")).unwrap());

    let late = late.wait_with_output().unwrap();
    assert!(!late.status.success(), "the earlier attempt's session was not ended; it prepared after the restore");
    assert!(String::from_utf8_lossy(&late.stderr).contains("terminating connection"), "{late:?}");
    assert_eq!(
        prepared_weir_transactions(),
        Vec::<String>::new(),
        "a transaction of an earlier attempt was left prepared"
    );
    assert_eq!(psql("SELECT count(*) FROM counts_fence WHERE key IN ('late', 'stale')"), "0");
    let updates = weir_runtime::verify::updates_of(rows("counts_fence")).unwrap();
    if let Err(e) = weir_runtime::verify::check_updates_exactly_once(&updates, COUNT, KEYS) {
        panic!("table after an earlier attempt's late and stale transactions: {e}");
    }
}

#[test]
#[ignore = "needs a PostgreSQL server: scripts/test-postgres starts one and runs these"]
fn upsert_table_ends_with_each_keys_final_count_after_kill_9_of_weir_run() {
    const COUNT: u64 = 150_000;
    psql("DROP TABLE IF EXISTS counts_upsert; CREATE TABLE counts_upsert (key text PRIMARY KEY, count bigint NOT NULL, sum_value bigint NOT NULL)");
    let dir = tempfile::tempdir().unwrap();
    let sink = format!("postgres: {{connection: '{}', table: counts_upsert, mode: Upsert, key: [key]}}", connection());
    let job = Job { name: "pg-upsert", count: COUNT, rate: 60_000, sink, restart: "{none: {}}" };
    let manifest = write_manifest(dir.path(), &job);

    let kills = kill_nine_repeatedly(&manifest, dir.path(), &[800, 600, 1000]);
    assert!(kills >= 2, "the job finished before it could be killed enough ({kills} kills)");
    let status = finish(weir(&manifest, dir.path(), "final.log"), Duration::from_secs(120), dir.path(), "final.log");
    assert!(status.success(), "final run: {}", std::fs::read_to_string(dir.path().join("final.log")).unwrap());

    if let Err(e) = weir_runtime::verify::check_final_per_key(rows("counts_upsert"), COUNT, KEYS) {
        panic!("upserted table after {kills} kill -9 and a rerun: {e}");
    }
}

#[test]
#[ignore = "needs a PostgreSQL server: scripts/test-postgres starts one and runs these"]
fn a_database_crash_mid_job_is_survived_with_every_update_exactly_once() {
    const COUNT: u64 = 200_000;
    psql("DROP TABLE IF EXISTS counts_crash; CREATE TABLE counts_crash (key text NOT NULL, count bigint NOT NULL, sum_value bigint NOT NULL)");
    let dir = tempfile::tempdir().unwrap();
    let sink = format!("postgres: {{connection: '{}', table: counts_crash}}", connection());
    let restart = "{fixedDelay: {attempts: 30, delay: 300ms}}";
    let job = Job { name: "pg-crash", count: COUNT, rate: 50_000, sink, restart };
    let manifest = write_manifest(dir.path(), &job);

    let mut child = weir(&manifest, dir.path(), "run.log");
    wait_for_progress(&mut child, "the job committing rows", || psql("SELECT count(*) FROM counts_crash") != "0");
    assert!(child.try_wait().unwrap().is_none(), "the job ended before the server crashed");
    // A crash, not a shutdown: no checkpoint, every connection cut at once.
    pg_ctl(&["-m", "immediate", "stop"]);
    std::thread::sleep(Duration::from_millis(1500));
    pg_ctl(&["-w", "start"]);
    let status = finish(child, Duration::from_secs(120), dir.path(), "run.log");
    let log = std::fs::read_to_string(dir.path().join("run.log")).unwrap();
    assert!(status.success(), "the job did not survive the crash: {log}");
    // The crash either fails the attempt (a write on the lost connection)
    // or is ridden out by the sink's reconnects (it hit between a prepare
    // and the next write): both must leave each update exactly once.
    let noticed = log.contains("job failed") || log.contains("retrying");
    assert!(noticed && log.contains("postgres"), "the crash never reached the job: {log}");

    let updates = weir_runtime::verify::updates_of(rows("counts_crash")).unwrap();
    if let Err(e) = weir_runtime::verify::check_updates_exactly_once(&updates, COUNT, KEYS) {
        panic!("table after a server crash: {e}");
    }
    assert_eq!(prepared_weir_transactions(), Vec::<String>::new());
}

#[test]
#[ignore = "needs a PostgreSQL server: scripts/test-postgres starts one and runs these"]
fn a_missing_table_stops_the_job_at_start_naming_the_field() {
    let sink = format!("postgres: {{connection: '{}', table: no_such_table}}", connection());
    let log = run_to_failure(&Job { name: "pg-missing", count: 1000, rate: 0, sink, restart: "{none: {}}" });
    assert!(
        log.contains("spec.pipeline.sink.postgres.table: table `no_such_table` does not exist"),
        "the error does not name the table: {log}"
    );
}

#[test]
#[ignore = "needs a PostgreSQL server: scripts/test-postgres starts one and runs these"]
fn a_wrong_password_is_refused_without_echoing_it() {
    psql("CREATE TABLE IF NOT EXISTS counts_pw (key text, count bigint, sum_value bigint)");
    std::env::set_var("WEIR_TEST_WRONG_PASSWORD", "not-the-password-4711");
    let sink = format!(
        "postgres: {{connection: '{}', table: counts_pw, passwordEnv: WEIR_TEST_WRONG_PASSWORD}}",
        connection()
    );
    let log = run_to_failure(&Job { name: "pg-password", count: 1000, rate: 0, sink, restart: "{none: {}}" });
    assert!(log.contains("the server refused the connection"), "{log}");
    assert!(log.contains("password authentication failed"), "{log}");
    assert!(!log.contains("not-the-password-4711"), "the password reached the log: {log}");
    assert_eq!(psql("SELECT count(*) FROM counts_pw"), "0");
}

#[test]
#[ignore = "needs a PostgreSQL server: scripts/test-postgres starts one and runs these"]
fn tls_to_the_server_is_verified_against_the_ca_file_and_a_foreign_ca_is_refused() {
    const COUNT: u64 = 20_000;
    let ca = std::env::var("WEIR_TEST_PG_CA").expect("WEIR_TEST_PG_CA");
    let other_ca = std::env::var("WEIR_TEST_PG_OTHER_CA").expect("WEIR_TEST_PG_OTHER_CA");
    psql(
        "DROP TABLE IF EXISTS counts_tls; \
         CREATE TABLE counts_tls (key text NOT NULL, count bigint NOT NULL, sum_value bigint NOT NULL); \
         GRANT ALL ON counts_tls TO weir_tls",
    );
    // weir_tls may connect over TLS only (pg_hba.conf: hostnossl ... reject).
    let connection = connection().replace("user=weir ", "user=weir_tls ");
    let sink = |tls: &str| {
        format!("postgres: {{connection: '{connection}', table: counts_tls, transactionsTable: weir_tls_txns{tls}}}")
    };
    let verified = sink(&format!(", tls: {{caFile: '{ca}'}}"));
    let job = Job { name: "pg-tls", count: COUNT, rate: 0, sink: verified, restart: "{none: {}}" };
    let dir = tempfile::tempdir().unwrap();
    let manifest = write_manifest(dir.path(), &job);
    let status = finish(weir(&manifest, dir.path(), "run.log"), Duration::from_secs(120), dir.path(), "run.log");
    assert!(status.success(), "over TLS: {}", std::fs::read_to_string(dir.path().join("run.log")).unwrap());
    let updates = weir_runtime::verify::updates_of(rows("counts_tls")).unwrap();
    if let Err(e) = weir_runtime::verify::check_updates_exactly_once(&updates, COUNT, KEYS) {
        panic!("table written over TLS: {e}");
    }

    let plain = run_to_failure(&Job { name: "pg-plain", sink: sink(""), ..job });
    assert!(plain.contains("no encryption"), "the server takes weir_tls over TLS only: {plain}");
    let foreign = sink(&format!(", tls: {{caFile: '{other_ca}'}}"));
    let foreign = run_to_failure(&Job { name: "pg-foreign-ca", sink: foreign, ..job });
    assert!(foreign.contains("TLS to the server failed"), "a certificate the CA did not sign is refused: {foreign}");
    let count: u64 = psql("SELECT count(*) FROM counts_tls").parse().unwrap();
    assert_eq!(count, COUNT, "the refused runs wrote nothing");
}

#[test]
#[ignore = "needs a PostgreSQL server: scripts/test-postgres starts one and runs these"]
fn a_client_certificate_logs_in_where_the_server_asks_for_one_and_without_it_the_job_stops_naming_why() {
    const COUNT: u64 = 20_000;
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name}: scripts/test-postgres sets it"));
    let (ca, cert, key) = (var("WEIR_TEST_PG_CA"), var("WEIR_TEST_PG_CLIENT_CERT"), var("WEIR_TEST_PG_CLIENT_KEY"));
    psql(
        "DROP TABLE IF EXISTS counts_cert; \
         CREATE TABLE counts_cert (key text NOT NULL, count bigint NOT NULL, sum_value bigint NOT NULL); \
         GRANT ALL ON counts_cert TO \"weir-client\"",
    );
    // pg_hba.conf: hostssl ... weir-client ... cert, so no password helps.
    let connection = connection().replace("user=weir ", "user=weir-client ");
    let sink = |tls: &str| {
        format!("postgres: {{connection: '{connection}', table: counts_cert, transactionsTable: weir_cert_txns, tls: {{{tls}}}}}")
    };
    let with_cert = sink(&format!("caFile: '{ca}', certFile: '{cert}', keyFile: '{key}'"));
    let job = Job { name: "pg-cert", count: COUNT, rate: 0, sink: with_cert, restart: "{none: {}}" };
    let dir = tempfile::tempdir().unwrap();
    let manifest = write_manifest(dir.path(), &job);
    let status = finish(weir(&manifest, dir.path(), "run.log"), Duration::from_secs(120), dir.path(), "run.log");
    assert!(
        status.success(),
        "with a client certificate: {}",
        std::fs::read_to_string(dir.path().join("run.log")).unwrap()
    );
    let updates = weir_runtime::verify::updates_of(rows("counts_cert")).unwrap();
    if let Err(e) = weir_runtime::verify::check_updates_exactly_once(&updates, COUNT, KEYS) {
        panic!("table written with a client certificate: {e}");
    }
    let without = run_to_failure(&Job { name: "pg-no-cert", sink: sink(&format!("caFile: '{ca}'")), ..job });
    assert!(without.contains("requires a valid client certificate"), "the refusal says why: {without}");
    let count: u64 = psql("SELECT count(*) FROM counts_cert").parse().unwrap();
    assert_eq!(count, COUNT, "the refused run wrote nothing");
}

#[test]
#[ignore = "needs a PostgreSQL server: scripts/test-postgres starts one and runs these"]
fn rows_the_table_refuses_are_dead_lettered_once_and_the_rest_committed_once_through_kill_9() {
    const COUNT: u64 = 120_000;
    for mode in ["TwoPhaseCommit", "Upsert"] {
        let table = format!("counts_refused_{}", mode.to_lowercase());
        // Every update of key k7 breaks the table's rule.
        psql(&format!(
            "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (key text NOT NULL CHECK (key <> 'k7'), \
             count bigint NOT NULL, sum_value bigint NOT NULL{unique})",
            unique = if mode == "Upsert" { ", PRIMARY KEY (key)" } else { "" }
        ));
        let dir = tempfile::tempdir().unwrap();
        let key = if mode == "Upsert" { ", key: [key]" } else { "" };
        let sink = format!("postgres: {{connection: '{}', table: {table}, mode: {mode}{key}}}", connection());
        let name = format!("pg-refused-{}", mode.to_lowercase());
        let job = Job { name: &name, count: COUNT, rate: 60_000, sink, restart: "{none: {}}" };
        let manifest = write_manifest(dir.path(), &job);
        let dead = dir.path().join("dead");
        let text = std::fs::read_to_string(&manifest).unwrap().replace(
            "spec:\n",
            &format!("spec:\n  errorPolicy: {{onBadRecord: deadLetter, deadLetterPath: '{}'}}\n", dead.display()),
        );
        std::fs::write(&manifest, text).unwrap();

        let kills = kill_nine_repeatedly(&manifest, dir.path(), &[700, 900]);
        assert!(kills >= 1, "{mode}: the job finished before it could be killed");
        let status =
            finish(weir(&manifest, dir.path(), "final.log"), Duration::from_secs(120), dir.path(), "final.log");
        assert!(status.success(), "{mode}: {}", std::fs::read_to_string(dir.path().join("final.log")).unwrap());

        let refused = weir_runtime::connectors::file_sink::read_committed(&dead).unwrap();
        assert!(!refused.is_empty(), "{mode}: nothing was dead-lettered");
        for r in &refused {
            assert!(r["reason"].as_str().unwrap().contains("check constraint"), "{mode}: the table's error: {r}");
        }
        let refused_rows: Vec<Value> =
            refused.iter().map(|r| serde_json::from_str(r["record"].as_str().unwrap()).unwrap()).collect();
        assert!(refused_rows.iter().all(|r| r["key"] == "k7"), "{mode}: only k7's rows are refused");
        let table_rows = rows(&table);
        assert!(table_rows.iter().all(|r| r["key"] != "k7"), "{mode}: no k7 row in the table");
        assert_eq!(prepared_weir_transactions(), Vec::<String>::new(), "{mode}: transactions left prepared");
        if mode == "TwoPhaseCommit" {
            // The table's rows and the dead letters together: every update once.
            let all = weir_runtime::verify::updates_of(table_rows.into_iter().chain(refused_rows).collect()).unwrap();
            if let Err(e) = weir_runtime::verify::check_updates_exactly_once(&all, COUNT, KEYS) {
                panic!("table and dead letters after {kills} kill -9: {e}");
            }
        } else {
            let want = weir_runtime::verify::expected_per_key(COUNT, KEYS);
            assert_eq!(table_rows.len() as u64, KEYS - 1, "upsert: one row per key but k7");
            for r in &table_rows {
                let (n, sum) = want[r["key"].as_str().unwrap()];
                assert_eq!((r["count"].as_u64().unwrap(), r["sum_value"].as_i64().unwrap()), (n, sum), "{r}");
            }
        }
    }
}
