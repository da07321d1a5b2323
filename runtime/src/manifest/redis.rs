//! `spec.pipeline.sink.redis`: the latest record per key into Redis.

use ::redis::IntoConnectionInfo;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Each record is written under a key made of its `key` fields; a replay
/// writes the same values again, so the store ends as if each record was
/// written once (the idempotent path to exactly-once results).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RedisSinkSpec {
    /// `redis://host:port/db` (or `rediss://` for TLS), without a password.
    pub url: String,
    /// TLS to the server (implied by `rediss://`), verified against
    /// `caFile` or the system's CAs; never unverified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<super::ClientTlsSpec>,
    /// The environment variable that holds the password (a Kubernetes
    /// Secret through `podTemplate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// A file that holds the password (a mounted Secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<String>,
    /// The record fields whose values, joined by `:` after `keyPrefix`,
    /// make the Redis key.
    pub key: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key_prefix: String,
    #[serde(default)]
    pub format: RedisValueFormat,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
pub enum RedisValueFormat {
    /// `SET key <the record as JSON>`.
    #[default]
    Json,
    /// `HSET key field value ...`, a hash field per record field.
    Hash,
}

impl RedisSinkSpec {
    /// What is wrong with this sink, each naming its field under `at`.
    pub fn problems(&self, at: &str) -> Vec<String> {
        let mut errors = Vec::new();
        match self.url.as_str().into_connection_info() {
            Err(e) => errors.push(format!("{at}.url: expected redis://host:port/db: {e}")),
            Ok(info) if info.redis.password.is_some() => errors.push(format!(
                "{at}.url: holds a password in clear; put it in a Secret and name it with passwordEnv or passwordFile"
            )),
            Ok(_) => {}
        }
        if self.password_env.is_some() && self.password_file.is_some() {
            errors.push(format!("{at}: expected at most one of passwordEnv, passwordFile"));
        }
        if let Some(tls) = &self.tls {
            errors.extend(tls.problems(&format!("{at}.tls")));
        }
        if self.key.is_empty() {
            errors.push(format!("{at}.key: expected at least one record field to key by"));
        }
        for (i, k) in self.key.iter().enumerate() {
            if k.is_empty() {
                errors.push(format!("{at}.key[{i}]: expected a field name, got an empty one"));
            }
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> RedisSinkSpec {
        RedisSinkSpec {
            url: "redis://127.0.0.1:6379/0".into(),
            tls: None,
            password_env: None,
            password_file: None,
            key: vec!["key".into()],
            key_prefix: "counts:".into(),
            format: RedisValueFormat::Json,
        }
    }

    #[test]
    fn a_keyed_redis_sink_is_accepted() {
        assert_eq!(spec().problems("sink"), Vec::<String>::new());
    }

    #[test]
    fn refuses_a_password_in_the_url_without_echoing_it() {
        let s = RedisSinkSpec { url: "redis://:hunter2@127.0.0.1:6379/0".into(), ..spec() };
        let problems = s.problems("spec.pipeline.sink.redis");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].starts_with("spec.pipeline.sink.redis.url: holds a password"), "{problems:?}");
        assert!(!problems[0].contains("hunter2"));
    }

    #[test]
    fn a_sink_without_key_fields_is_refused() {
        let s = RedisSinkSpec { key: vec![], ..spec() };
        assert_eq!(s.problems("sink"), vec!["sink.key: expected at least one record field to key by"]);
    }
}
