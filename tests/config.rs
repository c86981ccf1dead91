//! Configuration from TOML, placeholders and the environment; errors name the key.

use std::time::Duration;

use tower_tiered_cache::{CacheConfig, ConfigError};

fn no_vars(_: &str) -> Option<String> {
    None
}

fn parse(text: &str) -> Result<CacheConfig, ConfigError> {
    CacheConfig::from_toml_str_with_vars(text, no_vars)
}

#[test]
fn the_documented_example_parses() {
    let config = CacheConfig::from_toml_str_with_vars(
        r#"
        [l1]
        size = "${L1_CACHE_SIZE:-100MB}"
        max_ttl = "60s"
        [l2]
        url = "${REDIS_URL:-}"
        prefix = "ttc"
        timeout = "50ms"
        pool_size = 8
        [compression]
        enabled = "${CACHE_COMPRESSION:-true}"
        min_size = "1KiB"
        quality = 5
        [http]
        max_entry_size = "8MB"
        "#,
        |name| (name == "REDIS_URL").then(|| "redis://10.0.0.7:6380/2".to_owned()),
    )
    .unwrap();
    assert_eq!(config.l1.size, 100_000_000);
    assert_eq!(config.l1.max_ttl, Duration::from_secs(60));
    assert_eq!(config.l2.url.as_deref(), Some("redis://10.0.0.7:6380/2"));
    assert_eq!(config.l2.timeout, Duration::from_millis(50));
    assert_eq!(config.l2.pool_size, 8);
    assert!(config.compression.enabled);
    assert_eq!(config.compression.min_size, 1024);
    assert_eq!(config.compression.quality, 5);
    assert_eq!(config.http.max_entry_size, 8_000_000);
}

#[test]
fn an_empty_file_gives_the_defaults() {
    assert_eq!(parse("").unwrap(), CacheConfig::default());
}

#[test]
fn the_environment_fills_keys_the_file_leaves_out() {
    let config =
        CacheConfig::from_toml_str_with_vars("[l1]\nmax_ttl = \"5s\"", |name| match name {
            "L1_CACHE_SIZE" => Some("10MiB".to_owned()),
            "REDIS_URL" => Some("redis://127.0.0.1:7000".to_owned()),
            "CACHE_COMPRESSION" => Some("false".to_owned()),
            _ => None,
        })
        .unwrap();
    assert_eq!(config.l1.size, 10 * 1024 * 1024);
    assert_eq!(config.l2.url.as_deref(), Some("redis://127.0.0.1:7000"));
    assert!(!config.compression.enabled);
}

#[test]
fn errors_name_the_key_and_the_value() {
    let cases = [
        ("[l1]\nsize = \"10XB\"", "l1.size", "invalid size \"10XB\""),
        (
            "[l1]\nmax_ttl = \"soon\"",
            "l1.max_ttl",
            "invalid duration \"soon\"",
        ),
        ("[l1]\nmax_ttl = \"0s\"", "l1.max_ttl", "greater than 0"),
        (
            "[l2]\ntimeout = 50",
            "l2.timeout",
            "a duration like \"50ms\"",
        ),
        (
            "[l2]\nurl = \"http://not-redis\"",
            "l2.url",
            "invalid Redis URL",
        ),
        ("[l2]\npool_size = -1", "l2.pool_size", "non-negative"),
        (
            "[compression]\nenabled = \"maybe\"",
            "compression.enabled",
            "invalid boolean \"maybe\"",
        ),
        (
            "[compression]\nquality = 12",
            "compression.quality",
            "between 0 and 11",
        ),
        (
            "[http]\nmax_entry_size = \"0\"",
            "http.max_entry_size",
            "between 1 byte",
        ),
    ];
    for (text, key, message) in cases {
        let err = parse(text).unwrap_err();
        assert_eq!(err.key(), Some(key), "{text}: {err}");
        let shown = err.to_string();
        assert!(shown.starts_with(&format!("{key}: ")), "{shown}");
        assert!(shown.contains(message), "{shown} should mention {message}");
    }
}

#[test]
fn unknown_keys_are_errors_naming_them() {
    let err = parse("[l1]\nsise = \"1MB\"").unwrap_err();
    assert!(err.to_string().contains("sise"), "{err}");
    assert_eq!(err.key(), Some("l1.sise"));
    let err = parse("[caches]\nl1_size = \"1MB\"").unwrap_err();
    assert!(err.to_string().contains("caches"), "{err}");
    // `[cache]` is the seed article's flat table: its known keys map, others are errors.
    let err = parse("[cache]\nl1_sise = \"1MB\"").unwrap_err();
    assert_eq!(err.key(), Some("cache.l1_sise"));
    assert_eq!(
        parse("[cache]\nl1_size = \"1MB\"").unwrap().l1.size,
        1_000_000
    );
}

#[test]
fn an_unset_variable_without_default_is_an_error() {
    let err = parse("[l2]\nurl = \"${MISSING_REDIS}\"").unwrap_err();
    assert_eq!(err.key(), Some("l2.url"));
    assert!(err.to_string().contains("MISSING_REDIS"), "{err}");
}

#[test]
fn invalid_toml_is_reported() {
    let err = parse("[l1\nsize = 1").unwrap_err();
    assert!(matches!(err, ConfigError::Syntax(_)), "{err}");
}

#[test]
fn files_are_read_and_missing_files_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cache.toml");
    std::fs::write(&path, "[l1]\nsize = \"2MB\"\nmax_ttl = \"2s\"").unwrap();
    let config = CacheConfig::from_path(&path).unwrap();
    assert_eq!(config.l1.max_ttl, Duration::from_secs(2));

    let missing = dir.path().join("missing.toml");
    let err = CacheConfig::from_path(&missing).unwrap_err();
    assert!(err.to_string().contains("missing.toml"), "{err}");
}

#[test]
fn targeted_fields_default_to_this_caches_own_and_cdn_cache_control() {
    let config = parse("[http]\nstatus_header = \"Edge\"").unwrap();
    assert_eq!(config.http.targeted_fields, None);
    assert_eq!(
        config.http.effective_targeted_fields(),
        ["edge-cache-control", "cdn-cache-control"]
    );
    let none = parse("[http]\ntargeted_fields = []").unwrap();
    assert!(none.http.effective_targeted_fields().is_empty());
    assert_eq!(
        CacheConfig::default().http.stale_if_unreachable,
        Duration::from_secs(10)
    );
    let off = parse("[http]\nstale_if_unreachable = \"0s\"").unwrap();
    assert_eq!(off.http.stale_if_unreachable, Duration::ZERO);
}

#[test]
fn targeted_fields_must_be_header_names_other_than_the_ones_they_override() {
    for (fields, says) in [
        ("[\"bad field\"]", "\"bad field\" is not a header name"),
        ("[\"Cache-Control\"]", "is what targeted fields override"),
        (
            "[\"surrogate-control\"]",
            "is what targeted fields override",
        ),
    ] {
        let err = parse(&format!("[http]\ntargeted_fields = {fields}")).unwrap_err();
        assert_eq!(err.key(), Some("http.targeted_fields"), "{fields}");
        assert!(err.to_string().contains(says), "{err}");
    }
    let derived = parse("[http]\nstatus_header = \"a:b\"").unwrap_err();
    assert_eq!(derived.key(), Some("http.targeted_fields"));
    assert!(
        parse("[http]\nstatus_header = \"a:b\"\ntargeted_fields = [\"cdn-cache-control\"]").is_ok()
    );
}
