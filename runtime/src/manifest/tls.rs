//! Verified TLS to a broker, database or cache, shared by the connectors' settings.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Verified TLS to a broker, database or cache, with a client certificate
/// where the server asks for one.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientTlsSpec {
    /// PEM CA certificates to trust instead of the system's, e.g. a
    /// mounted Secret's `ca.crt` for a server with a private CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// The client's PEM certificate chain (a mounted Secret's `tls.crt`),
    /// for servers that authenticate clients by certificate; with `keyFile`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<String>,
    /// The unencrypted PEM private key of `certFile` (a mounted Secret's
    /// `tls.key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<String>,
}

impl ClientTlsSpec {
    /// What is wrong with these settings, each naming its field under `at`.
    pub fn problems(&self, at: &str) -> Vec<String> {
        let mut errors = Vec::new();
        for (field, value) in [("caFile", &self.ca_file), ("certFile", &self.cert_file), ("keyFile", &self.key_file)] {
            if value.as_deref() == Some("") {
                errors.push(format!("{at}.{field}: expected a file path, got an empty one"));
            }
        }
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => errors.push(format!("{at}.keyFile: required with certFile")),
            (None, Some(_)) => errors.push(format!("{at}.certFile: required with keyFile")),
            _ => {}
        }
        errors
    }
}
