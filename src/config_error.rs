//! The error every params check returns: which key is wrong, as data, and why.
//!
//! A stage kind's `check` (serde plus its range checks) and the libraries' own config
//! checks (`gan::TrainConfig::validate`) return a [`ConfigError`]; planning
//! (`engine::plan`) turns it into a `file:line:col` message by looking the key up in
//! the pipeline's positions (`pipeline::locate`). Nobody parses a message to find
//! the key. The type sits at the bottom of the crate so that the engine and the
//! libraries that never read YAML can share it without an arrow running back up.

/// A params problem: the dotted key inside the stage's `params` (`generator.width`,
/// `schedules.lr`; empty for the params as a whole) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ConfigError {
    pub key: String,
    pub message: String,
    /// Point at the key itself rather than its value (a name that is wrong).
    pub at_key: bool,
}

impl ConfigError {
    /// An error about the value at `key`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            key: key.into(),
            message: message.into(),
            at_key: false,
        }
    }

    /// The same error, reported at the key rather than its value.
    pub fn on_key(mut self) -> Self {
        self.at_key = true;
        self
    }

    /// A serde error met while deserialising params, at `path` (serde_path_to_error's
    /// dotted path; `.` for the top). An unknown field is reported at the field's own
    /// key: serde says which field only in the text it builds in
    /// `de::Error::unknown_field` ("unknown field `x`, expected ..."), so this is the
    /// one place that reads it.
    pub fn from_serde(path: &str, message: String) -> Self {
        let mut key = if path == "." {
            String::new()
        } else {
            path.to_string()
        };
        let field = message
            .strip_prefix("unknown field `")
            .and_then(|rest| rest.split_once('`'))
            .map(|(field, _)| field.to_string());
        match field {
            Some(field) => {
                if key.is_empty() {
                    key = field;
                } else if key.rsplit('.').next() != Some(field.as_str()) {
                    key = format!("{key}.{field}");
                }
                ConfigError::new(key, message).on_key()
            }
            None => ConfigError::new(key, message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ConfigError;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        width: usize,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        generator: Inner,
        #[serde(default)]
        seed: u64,
    }

    fn de(v: serde_json::Value) -> ConfigError {
        let e = serde_path_to_error::deserialize::<_, Outer>(v).unwrap_err();
        ConfigError::from_serde(&e.path().to_string(), e.into_inner().to_string())
    }

    #[test]
    fn unknown_fields_are_reported_at_their_own_key() {
        let e = de(serde_json::json!({"generator": {"width": 1}, "sead": 3}));
        assert_eq!(e.key, "sead");
        assert!(e.at_key);
        assert!(e.message.starts_with("unknown field `sead`"), "{e}");
        let e = de(serde_json::json!({"generator": {"width": 1, "widht": 2}}));
        assert_eq!((e.key.as_str(), e.at_key), ("generator.widht", true));
    }

    #[test]
    fn type_errors_are_reported_at_the_value() {
        let e = de(serde_json::json!({"generator": {"width": "wide"}}));
        assert_eq!((e.key.as_str(), e.at_key), ("generator.width", false));
        assert!(e.message.contains("invalid type"), "{e}");
        let e = de(serde_json::json!({"seed": 1}));
        assert_eq!((e.key.as_str(), e.at_key), ("", false));
        assert!(e.message.contains("missing field `generator`"), "{e}");
    }
}
