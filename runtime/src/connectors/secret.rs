//! Credentials of connectors: named in the manifest, read from the
//! environment or a file (a Kubernetes Secret), never written in it.

/// The password that `passwordEnv` or `passwordFile` under `at` names (a
/// file's trailing newline dropped), else `fallback_env` if that is set;
/// a named variable or file that is missing is an error naming the field.
pub fn read_password(
    at: &str,
    env: Option<&str>,
    file: Option<&str>,
    fallback_env: Option<&str>,
) -> Result<Option<String>, String> {
    match (env, file) {
        (Some(var), _) => std::env::var(var)
            .map(Some)
            .map_err(|_| format!("{at}.passwordEnv: environment variable `{var}` is not set")),
        (None, Some(file)) => std::fs::read_to_string(file)
            .map(|text| Some(text.trim_end_matches(['\n', '\r']).to_string()))
            .map_err(|e| format!("{at}.passwordFile: cannot read {file}: {e}")),
        (None, None) => Ok(fallback_env.and_then(|var| std::env::var(var).ok())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_file_loses_its_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("password");
        std::fs::write(&path, "s3cret\n").unwrap();
        let read = read_password("sink", None, path.to_str(), None).unwrap();
        assert_eq!(read.as_deref(), Some("s3cret"));
    }

    #[test]
    fn a_named_variable_that_is_not_set_is_an_error_naming_the_field() {
        let err = read_password("spec.sink", Some("WEIR_TEST_SURELY_UNSET_VAR"), None, None).unwrap_err();
        assert!(err.to_string().contains("spec.sink.passwordEnv: environment variable `WEIR_TEST_SURELY_UNSET_VAR`"));
    }
}
