//! TOML text → [`CacheConfig`]: placeholder expansion, environment defaults, key-named errors.

use std::path::{Path, PathBuf};

use super::CacheConfig;

/// Keys read from the environment when the TOML leaves them out: (section, key, variable).
const ENV_DEFAULTS: &[(&str, &str, &str)] = &[
    ("l1", "size", "L1_CACHE_SIZE"),
    ("l2", "url", "REDIS_URL"),
    // The seed article's name; REDIS_URL wins when both are set.
    ("l2", "url", "REDIS_URI"),
    ("compression", "enabled", "CACHE_COMPRESSION"),
    ("l3", "url", "DATABASE_URL"),
];

/// A configuration that cannot be used. The message names the key at fault where there is one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file asked for.
        path: PathBuf,
        /// Why it could not be read.
        source: std::io::Error,
    },
    /// The text is not valid TOML.
    #[error("config is not valid TOML: {0}")]
    Syntax(String),
    /// A key has a value that cannot be used, or is not a known key.
    #[error("{key}: {message}")]
    Invalid {
        /// Dotted path of the key, e.g. `l1.size`.
        key: String,
        /// What is wrong with it.
        message: String,
    },
}

impl ConfigError {
    pub(crate) fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }

    /// The dotted key at fault (`l1.size`), when the error is about one key.
    pub fn key(&self) -> Option<&str> {
        match self {
            Self::Invalid { key, .. } => Some(key),
            Self::Read { .. } | Self::Syntax(_) => None,
        }
    }
}

impl CacheConfig {
    /// Parses TOML, expanding `${VAR}` / `${VAR:-default}` placeholders in string values from the
    /// process environment, and taking `L1_CACHE_SIZE`, `REDIS_URL` and `CACHE_COMPRESSION` for
    /// keys the text leaves out. Unknown keys are errors.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        Self::from_toml_str_with_vars(text, |name| std::env::var(name).ok())
    }

    /// Like [`from_toml_str`](Self::from_toml_str), reading variables from `vars` instead of the
    /// process environment (a secrets store, or a fixed map in tests).
    pub fn from_toml_str_with_vars(
        text: &str,
        vars: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut table: toml::Table = text
            .parse()
            .map_err(|err: toml::de::Error| ConfigError::Syntax(err.to_string()))?;
        expand_table(&mut table, "", &vars)?;
        apply_seed_aliases(&mut table)?;
        apply_env_defaults(&mut table, &vars)?;
        let config: Self = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|err| ConfigError::invalid(err.path().to_string(), err.inner().message()))?;
        config.validate()?;
        Ok(config)
    }

    /// Reads and parses a TOML file; see [`from_toml_str`](Self::from_toml_str).
    pub fn from_path(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml_str(&text)
    }

    /// The defaults, with `L1_CACHE_SIZE`, `REDIS_URL` (or `REDIS_URI`), `CACHE_COMPRESSION` and
    /// `DATABASE_URL` taken from the environment when set.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_toml_str("")
    }
}

fn expand_table(
    table: &mut toml::Table,
    path: &str,
    vars: &impl Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    for (key, value) in table.iter_mut() {
        expand_value(value, &join(path, key), vars)?;
    }
    Ok(())
}

fn expand_value(
    value: &mut toml::Value,
    path: &str,
    vars: &impl Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    match value {
        toml::Value::String(text) => *text = expand(text, path, vars)?,
        toml::Value::Table(table) => expand_table(table, path, vars)?,
        toml::Value::Array(items) => {
            for (index, item) in items.iter_mut().enumerate() {
                expand_value(item, &format!("{path}[{index}]"), vars)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn expand(
    text: &str,
    path: &str,
    vars: &impl Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
    shellexpand::env_with_context(text, |name| match vars(name) {
        Some(value) => Ok(Some(value)),
        None => Err("it is not set; give a default with ${VAR:-default}"),
    })
    .map(|expanded| expanded.into_owned())
    .map_err(|err| {
        ConfigError::invalid(
            path,
            format!("environment variable {}: {}", err.var_name, err.cause),
        )
    })
}

fn apply_env_defaults(
    table: &mut toml::Table,
    vars: &impl Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    for &(section, key, var) in ENV_DEFAULTS {
        let Some(value) = vars(var) else { continue };
        section_mut(table, section)?
            .entry(key)
            .or_insert(toml::Value::String(value));
    }
    Ok(())
}

/// The `[section]` table of `table`, created when absent.
fn section_mut<'a>(
    table: &'a mut toml::Table,
    section: &str,
) -> Result<&'a mut toml::Table, ConfigError> {
    let entry = table
        .entry(section)
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    match entry {
        toml::Value::Table(section_table) => Ok(section_table),
        _ => Err(ConfigError::invalid(section, "must be a table")),
    }
}

/// A key of the seed article's flat `[cache]` table.
enum SeedKey {
    /// Lands on `[section] key`.
    Alias(&'static str, &'static str),
    /// Names a fixed part of this design: only this value is accepted.
    Fixed(&'static str),
}

const SEED_KEYS: &[(&str, SeedKey)] = &[
    ("l1_backend", SeedKey::Fixed("memory")),
    ("l1_size", SeedKey::Alias("l1", "size")),
    ("l2_backend", SeedKey::Alias("l2", "backend")),
    ("l2_uri", SeedKey::Alias("l2", "url")),
    ("l3_backend", SeedKey::Fixed("database")),
    ("l3_query", SeedKey::Alias("l3", "query")),
    ("compression", SeedKey::Alias("compression", "enabled")),
];

/// Moves the keys of a `[cache]` table (the seed article's vocabulary) to their sections.
/// Unknown keys, and a key given both ways, are errors naming it.
fn apply_seed_aliases(table: &mut toml::Table) -> Result<(), ConfigError> {
    let Some(cache) = table.remove("cache") else {
        return Ok(());
    };
    let toml::Value::Table(cache) = cache else {
        return Err(ConfigError::invalid("cache", "must be a table"));
    };
    for (key, value) in cache {
        let path = format!("cache.{key}");
        let Some((_, seed_key)) = SEED_KEYS.iter().find(|(name, _)| *name == key) else {
            let known: Vec<&str> = SEED_KEYS.iter().map(|(name, _)| *name).collect();
            return Err(ConfigError::invalid(
                &path,
                format!("unknown key; [cache] accepts {}", known.join(", ")),
            ));
        };
        let (section, name) = match *seed_key {
            SeedKey::Fixed(fixed) if value.as_str() == Some(fixed) => continue,
            SeedKey::Fixed(fixed) => {
                return Err(ConfigError::invalid(
                    &path,
                    format!("only {fixed:?} is supported, got {value}"),
                ))
            }
            SeedKey::Alias(section, name) => (section, name),
        };
        let section_table = section_mut(table, section)?;
        if section_table.contains_key(name) {
            return Err(ConfigError::invalid(
                &path,
                format!("{section}.{name} is set too; give one of them"),
            ));
        }
        section_table.insert(name.to_owned(), value);
    }
    Ok(())
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            pairs
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| (*value).to_owned())
        }
    }

    #[test]
    fn the_seed_vocabulary_maps_to_sections() {
        let config = CacheConfig::from_toml_str_with_vars(
            r#"
            [cache]
            l1_backend = "memory"
            l1_size = "${L1_CACHE_SIZE:-100MB}"
            l2_backend = "redis"
            l2_uri = "${REDIS_URI}"
            l3_backend = "database"
            l3_query = "SELECT value FROM cache_store WHERE key = ?"
            compression = false
            "#,
            vars(&[("REDIS_URI", "redis://127.0.0.1:6379")]),
        )
        .unwrap();
        assert_eq!(config.l1.size, 100_000_000);
        assert_eq!(config.l2.url.as_deref(), Some("redis://127.0.0.1:6379"));
        assert_eq!(
            config.l3.query,
            "SELECT value FROM cache_store WHERE key = ?"
        );
        assert!(!config.compression.enabled);
    }

    #[test]
    fn seed_keys_that_do_not_map_are_errors_naming_them() {
        let none = vars(&[]);
        let err = CacheConfig::from_toml_str_with_vars("[cache]\nmetrics = 1", &none).unwrap_err();
        assert_eq!(err.key(), Some("cache.metrics"));
        let err = CacheConfig::from_toml_str_with_vars("[cache]\nl1_backend = \"disk\"", &none)
            .unwrap_err();
        assert_eq!(err.key(), Some("cache.l1_backend"));
        let both = "[cache]\nl1_size = \"1MB\"\n[l1]\nsize = \"2MB\"";
        let err = CacheConfig::from_toml_str_with_vars(both, &none).unwrap_err();
        assert_eq!(err.key(), Some("cache.l1_size"));
    }

    #[test]
    fn redis_uri_is_read_when_redis_url_is_absent() {
        let config = CacheConfig::from_toml_str_with_vars(
            "",
            vars(&[("REDIS_URI", "redis://10.0.0.1:6379")]),
        )
        .unwrap();
        assert_eq!(config.l2.url.as_deref(), Some("redis://10.0.0.1:6379"));
        let config = CacheConfig::from_toml_str_with_vars(
            "",
            vars(&[
                ("REDIS_URI", "redis://10.0.0.1:6379"),
                ("REDIS_URL", "redis://10.0.0.2:6379"),
            ]),
        )
        .unwrap();
        assert_eq!(config.l2.url.as_deref(), Some("redis://10.0.0.2:6379"));
    }

    #[test]
    fn env_fills_keys_the_text_leaves_out() {
        let config = CacheConfig::from_toml_str_with_vars(
            "",
            vars(&[("L1_CACHE_SIZE", "2MiB"), ("CACHE_COMPRESSION", "false")]),
        )
        .unwrap();
        assert_eq!(config.l1.size, 2 * 1024 * 1024);
        assert!(!config.compression.enabled);
    }

    #[test]
    fn text_wins_over_env_defaults() {
        let config = CacheConfig::from_toml_str_with_vars(
            "[l1]\nsize = \"1MB\"",
            vars(&[("L1_CACHE_SIZE", "2MB")]),
        )
        .unwrap();
        assert_eq!(config.l1.size, 1_000_000);
    }

    #[test]
    fn unset_placeholder_without_default_names_key_and_variable() {
        let err =
            CacheConfig::from_toml_str_with_vars("[l2]\nurl = \"${NOPE}\"", vars(&[])).unwrap_err();
        assert_eq!(err.key(), Some("l2.url"));
        assert!(err.to_string().contains("NOPE"), "{err}");
    }

    #[test]
    fn placeholder_default_and_empty_url_mean_no_l2() {
        let config =
            CacheConfig::from_toml_str_with_vars("[l2]\nurl = \"${REDIS_URL:-}\"", vars(&[]))
                .unwrap();
        assert_eq!(config.l2.url, None);
    }

    #[test]
    fn invalid_env_value_is_reported_under_its_key() {
        let err = CacheConfig::from_toml_str_with_vars("", vars(&[("L1_CACHE_SIZE", "lots")]))
            .unwrap_err();
        assert_eq!(err.key(), Some("l1.size"));
    }
}
