//! Where checkpoints live: a storage URI turned into an OpenDAL operator.
//!
//! `file://` is always available; `s3://` and `hdfs://` are behind the `s3`
//! and `hdfs` cargo features so a local build stays small. Credentials and
//! endpoints come from the environment (the Kubernetes pod gets them from a
//! Secret), never from the manifest.

use opendal::Operator;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("unsupported storage uri `{uri}`: expected file://PATH, s3://BUCKET[/PREFIX] or hdfs://NAMENODE/PATH")]
    UnsupportedScheme { uri: String },
    #[error("storage uri `{uri}` needs the `{feature}` cargo feature, which this build of weir lacks")]
    FeatureMissing { uri: String, feature: &'static str },
    #[error("storage uri `{uri}` has no {what}")]
    Incomplete { uri: String, what: &'static str },
    #[error("cannot open storage `{uri}`: {source}")]
    Open { uri: String, source: Box<opendal::Error> },
    #[error("cannot determine the working directory for `{uri}`: {source}")]
    WorkingDir { uri: String, source: std::io::Error },
}

/// A parsed storage URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageUri {
    /// A local directory (relative paths are relative to the working directory).
    File {
        path: String,
    },
    S3 {
        bucket: String,
        prefix: String,
    },
    Hdfs {
        name_node: String,
        path: String,
    },
}

impl StorageUri {
    pub fn parse(uri: &str) -> Result<StorageUri, StorageError> {
        if let Some(path) = uri.strip_prefix("file://") {
            if path.is_empty() {
                return Err(StorageError::Incomplete { uri: uri.into(), what: "path" });
            }
            return Ok(StorageUri::File { path: path.into() });
        }
        if let Some(rest) = uri.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(StorageError::Incomplete { uri: uri.into(), what: "bucket" });
            }
            return Ok(StorageUri::S3 { bucket: bucket.into(), prefix: prefix.trim_matches('/').into() });
        }
        if let Some(rest) = uri.strip_prefix("hdfs://") {
            let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
            if host.is_empty() {
                return Err(StorageError::Incomplete { uri: uri.into(), what: "name node" });
            }
            return Ok(StorageUri::Hdfs { name_node: format!("hdfs://{host}"), path: format!("/{path}") });
        }
        if !uri.contains("://") && !uri.is_empty() {
            return Ok(StorageUri::File { path: uri.into() });
        }
        Err(StorageError::UnsupportedScheme { uri: uri.into() })
    }

    /// An operator rooted at this URI joined with `sub` (a relative path),
    /// retrying temporary errors with exponential backoff.
    pub fn operator(&self, uri: &str, sub: &str) -> Result<Operator, StorageError> {
        Ok(self.bare_operator(uri, sub)?.layer(opendal::layers::RetryLayer::new().with_jitter()))
    }

    /// The local directory of this URI joined with `sub`, for `file://`
    /// (relative paths are taken from the working directory).
    pub fn local_dir(&self, uri: &str, sub: &str) -> Result<Option<std::path::PathBuf>, StorageError> {
        let StorageUri::File { path } = self else { return Ok(None) };
        let mut root = std::path::PathBuf::from(path);
        if root.is_relative() {
            let cwd = std::env::current_dir().map_err(|source| StorageError::WorkingDir { uri: uri.into(), source })?;
            root = cwd.join(root);
        }
        Ok(Some(root.join(sub)))
    }

    fn bare_operator(&self, uri: &str, sub: &str) -> Result<Operator, StorageError> {
        let open = |source| StorageError::Open { uri: uri.into(), source: Box::new(source) };
        match self {
            StorageUri::File { .. } => {
                let root = self.local_dir(uri, sub)?.unwrap_or_default();
                let root = root.to_string_lossy();
                let builder = opendal::services::Fs::default().root(&root);
                Operator::new(builder).map_err(open)
            }
            #[cfg(feature = "s3")]
            StorageUri::S3 { bucket, prefix } => {
                // Installs the HTTP client once per process (idempotent).
                opendal::install_default();
                let mut builder = opendal::services::S3::default().bucket(bucket).root(&format!("/{}/{}", prefix, sub));
                if let Ok(endpoint) = std::env::var("AWS_ENDPOINT_URL") {
                    builder = builder.endpoint(&endpoint);
                }
                let region = std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into());
                builder = builder.region(&region);
                if let (Ok(id), Ok(secret)) =
                    (std::env::var("AWS_ACCESS_KEY_ID"), std::env::var("AWS_SECRET_ACCESS_KEY"))
                {
                    builder = builder.access_key_id(&id).secret_access_key(&secret);
                }
                Operator::new(builder).map_err(open)
            }
            #[cfg(not(feature = "s3"))]
            StorageUri::S3 { .. } => Err(StorageError::FeatureMissing { uri: uri.into(), feature: "s3" }),
            #[cfg(feature = "hdfs")]
            StorageUri::Hdfs { name_node, path } => {
                let builder = opendal::services::HdfsNative::default().name_node(name_node).root(&format!(
                    "{}/{}",
                    path.trim_end_matches('/'),
                    sub
                ));
                Operator::new(builder).map_err(open)
            }
            #[cfg(not(feature = "hdfs"))]
            StorageUri::Hdfs { .. } => Err(StorageError::FeatureMissing { uri: uri.into(), feature: "hdfs" }),
        }
    }
}

/// Syncs a directory of the local file system, so that a rename in it
/// outlives a crash of the machine (a file's own sync does not cover its name).
pub fn sync_dir(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::File::open(dir).and_then(|d| d.sync_all())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_schemes_and_bare_paths() {
        assert_eq!(StorageUri::parse("file://./weir-data").unwrap(), StorageUri::File { path: "./weir-data".into() });
        assert_eq!(StorageUri::parse("/tmp/x").unwrap(), StorageUri::File { path: "/tmp/x".into() });
        assert_eq!(
            StorageUri::parse("s3://bucket/jobs/").unwrap(),
            StorageUri::S3 { bucket: "bucket".into(), prefix: "jobs".into() }
        );
        assert_eq!(
            StorageUri::parse("hdfs://nn:8020/weir").unwrap(),
            StorageUri::Hdfs { name_node: "hdfs://nn:8020".into(), path: "/weir".into() }
        );
    }

    #[test]
    fn rejects_an_unknown_scheme_listing_the_supported_ones() {
        let err = StorageUri::parse("gs://bucket").unwrap_err().to_string();
        assert!(err.contains("s3://BUCKET"), "{err}");
    }
}
