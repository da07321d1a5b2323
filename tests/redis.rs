//! The Redis sink against a real Redis server (started by
//! `scripts/test-redis`): `kill -9` of `weir run` and of the server
//! mid-job; Redis ends holding each key's final count and sum.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;

use common::run::{finish, kill_nine_repeatedly, run_to_failure, wait_for_progress, weir, write_manifest, Job, KEYS};

fn port() -> String {
    std::env::var("WEIR_TEST_REDIS_PORT").expect("WEIR_TEST_REDIS_PORT: scripts/test-redis starts a server")
}

/// `redis-cli` (its password comes from `REDISCLI_AUTH`), one line per reply element.
fn redis_cli(args: &[&str]) -> Vec<String> {
    let out = Command::new("redis-cli").args(["-p", &port(), "--raw"]).args(args).output().unwrap();
    assert!(out.status.success(), "redis-cli {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(str::to_string).collect()
}

/// The JSON values of every key under `prefix`.
fn json_values(prefix: &str) -> Vec<Value> {
    let script = "local r = {} for _, k in ipairs(redis.call('KEYS', ARGV[1])) do \
                  table.insert(r, redis.call('GET', k)) end return r";
    let pattern = format!("{prefix}*");
    redis_cli(&["EVAL", script, "0", &pattern])
        .iter()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn sink(prefix: &str, extra: &str) -> String {
    format!(
        "redis: {{url: 'redis://127.0.0.1:{}/0', passwordEnv: WEIR_TEST_REDIS_PASSWORD, key: [key], keyPrefix: '{prefix}'{extra}}}",
        port()
    )
}

#[test]
#[ignore = "needs a Redis server: scripts/test-redis starts one and runs these"]
fn redis_holds_each_keys_final_count_after_kill_9_of_weir_run() {
    const COUNT: u64 = 150_000;
    let dir = tempfile::tempdir().unwrap();
    let job = Job { name: "redis-kill", count: COUNT, rate: 60_000, sink: sink("kill:", ""), restart: "{none: {}}" };
    let manifest = write_manifest(dir.path(), &job);
    let kills = kill_nine_repeatedly(&manifest, dir.path(), &[800, 500, 900]);
    assert!(kills >= 2, "the job finished before it could be killed enough ({kills} kills)");
    let status = finish(weir(&manifest, dir.path(), "final.log"), Duration::from_secs(120), dir.path(), "final.log");
    assert!(status.success(), "final run: {}", std::fs::read_to_string(dir.path().join("final.log")).unwrap());
    if let Err(e) = weir_runtime::verify::check_final_per_key(json_values("kill:"), COUNT, KEYS) {
        panic!("redis after {kills} kill -9 and a rerun: {e}");
    }
}

fn restart_server_after_kill_9() {
    let conf = std::env::var("WEIR_TEST_REDIS_CONF").expect("WEIR_TEST_REDIS_CONF");
    let pidfile = std::path::Path::new(&conf).with_file_name("redis.pid");
    let pid = std::fs::read_to_string(&pidfile).unwrap().trim().to_string();
    assert!(Command::new("kill").args(["-9", &pid]).status().unwrap().success());
    std::thread::sleep(Duration::from_millis(1500));
    let _ = std::fs::remove_file(&pidfile);
    assert!(Command::new("redis-server").arg(&conf).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(20);
    while Command::new("redis-cli").args(["-p", &port(), "PING"]).output().map_or(true, |o| !o.status.success()) {
        assert!(Instant::now() < deadline, "redis did not come back");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
#[ignore = "needs a Redis server: scripts/test-redis starts one and runs these"]
fn a_redis_crash_mid_job_is_survived_with_each_keys_final_count() {
    const COUNT: u64 = 200_000;
    let dir = tempfile::tempdir().unwrap();
    let restart = "{fixedDelay: {attempts: 30, delay: 300ms}}";
    let job = Job { name: "redis-crash", count: COUNT, rate: 50_000, sink: sink("crash:", ""), restart };
    let manifest = write_manifest(dir.path(), &job);
    let mut child = weir(&manifest, dir.path(), "run.log");
    wait_for_progress(&mut child, "the job writing keys", || !json_values("crash:").is_empty());
    assert!(child.try_wait().unwrap().is_none(), "the job ended before the server crashed");
    restart_server_after_kill_9();
    let status = finish(child, Duration::from_secs(120), dir.path(), "run.log");
    let log = std::fs::read_to_string(dir.path().join("run.log")).unwrap();
    assert!(status.success(), "the job did not survive the crash: {log}");
    assert!(log.contains("redis 127.0.0.1"), "the crash never reached the sink: {log}");
    if let Err(e) = weir_runtime::verify::check_final_per_key(json_values("crash:"), COUNT, KEYS) {
        panic!("redis after a server crash: {e}");
    }
}

#[test]
#[ignore = "needs a Redis server: scripts/test-redis starts one and runs these"]
fn the_hash_format_holds_the_fields_of_each_keys_latest_record() {
    const COUNT: u64 = 5_000;
    let dir = tempfile::tempdir().unwrap();
    let job =
        Job { name: "redis-hash", count: COUNT, rate: 0, sink: sink("hash:", ", format: Hash"), restart: "{none: {}}" };
    let manifest = write_manifest(dir.path(), &job);
    let status = finish(weir(&manifest, dir.path(), "run.log"), Duration::from_secs(60), dir.path(), "run.log");
    assert!(status.success(), "{}", std::fs::read_to_string(dir.path().join("run.log")).unwrap());
    let want = weir_runtime::verify::expected_per_key(COUNT, KEYS);
    for (key, (count, sum)) in want {
        let fields = redis_cli(&["HGETALL", &format!("hash:{key}")]);
        let map: std::collections::BTreeMap<&str, &str> =
            fields.chunks(2).map(|p| (p[0].as_str(), p[1].as_str())).collect();
        assert_eq!(map.get("key"), Some(&key.as_str()), "{fields:?}");
        assert_eq!(map.get("count"), Some(&count.to_string().as_str()), "key {key}: {fields:?}");
        assert_eq!(map.get("sum_value"), Some(&sum.to_string().as_str()), "key {key}: {fields:?}");
    }
}

#[test]
#[ignore = "needs a Redis server: scripts/test-redis starts one and runs these"]
fn a_wrong_redis_password_is_refused_without_echoing_it() {
    std::env::set_var("WEIR_TEST_WRONG_REDIS_PASSWORD", "not-the-password-4711");
    let sink = format!(
        "redis: {{url: 'redis://127.0.0.1:{}/0', passwordEnv: WEIR_TEST_WRONG_REDIS_PASSWORD, key: [key], keyPrefix: 'pw:'}}",
        port()
    );
    let log = run_to_failure(&Job { name: "redis-password", count: 1000, rate: 0, sink, restart: "{none: {}}" });
    assert!(log.contains("the server refused the connection"), "{log}");
    assert!(!log.contains("not-the-password-4711"), "the password reached the log: {log}");
    assert!(json_values("pw:").is_empty());
}

#[test]
#[ignore = "needs a Redis server: scripts/test-redis starts one and runs these"]
fn tls_to_the_server_is_verified_against_the_ca_file_with_a_client_certificate_and_a_foreign_ca_is_refused() {
    const COUNT: u64 = 20_000;
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name}: scripts/test-redis sets it"));
    let tls_port = var("WEIR_TEST_REDIS_TLS_PORT");
    let (ca, other_ca) = (var("WEIR_TEST_REDIS_CA"), var("WEIR_TEST_REDIS_OTHER_CA"));
    let identity =
        format!("certFile: '{}', keyFile: '{}'", var("WEIR_TEST_REDIS_CLIENT_CERT"), var("WEIR_TEST_REDIS_CLIENT_KEY"));
    let sink = |tls: &str| {
        format!(
            "redis: {{url: 'rediss://127.0.0.1:{tls_port}/0', passwordEnv: WEIR_TEST_REDIS_PASSWORD, key: [key], \
             keyPrefix: 'tls:', tls: {{{tls}}}}}"
        )
    };
    let job = Job {
        name: "redis-tls",
        count: COUNT,
        rate: 0,
        sink: sink(&format!("caFile: '{ca}', {identity}")),
        restart: "{none: {}}",
    };
    let dir = tempfile::tempdir().unwrap();
    let manifest = write_manifest(dir.path(), &job);
    let status = finish(weir(&manifest, dir.path(), "run.log"), Duration::from_secs(120), dir.path(), "run.log");
    assert!(status.success(), "over TLS: {}", std::fs::read_to_string(dir.path().join("run.log")).unwrap());
    if let Err(e) = weir_runtime::verify::check_final_per_key(json_values("tls:"), COUNT, KEYS) {
        panic!("redis written over TLS: {e}");
    }
    let foreign = run_to_failure(&Job {
        name: "redis-foreign-ca",
        sink: sink(&format!("caFile: '{other_ca}', {identity}")),
        ..job
    });
    assert!(foreign.contains("TLS to the server failed"), "a certificate the CA did not sign is refused: {foreign}");
    // The server requires a client certificate (`tls-auth-clients yes`).
    let anonymous =
        run_to_failure(&Job { name: "redis-no-client-cert", sink: sink(&format!("caFile: '{ca}'")), ..job });
    println!("ANON: {anonymous}");
    assert!(anonymous.contains("TLS to the server failed: received fatal alert: CertificateRequired"), "{anonymous}");
}
