//! Metrics through the [`metrics`](https://docs.rs/metrics) facade (feature `metrics`, on by
//! default): install any recorder (e.g. `metrics-exporter-prometheus`) to collect them. Without
//! the feature every function here is a no-op.
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `tiered_cache_requests_total` | counter | `tier` (`memory`, `redis`, `origin`), `result` (`hit`, `miss`, `stale`, `bypass`, `pass`) |
//! | `tiered_cache_loader_calls_total` | counter | |
//! | `tiered_cache_coalesced_total` | counter | |
//! | `tiered_cache_stores_total` | counter | |
//! | `tiered_cache_l2_errors_total` | counter | `kind` (`error`, `decode`, `skipped`) |
//! | `tiered_cache_tags_dropped_total` | counter | |
//! | `tiered_cache_early_refreshes_total` | counter | |
//! | `tiered_cache_not_stored_total` | counter | `reason` (`method`, `status`, `no_store`, `private`, `authorization`, `set_cookie`, `vary_star`, `credentials`, `useless`, `too_large`, `framing`, `incomplete`, `part_mismatch`, `variants`) |
//! | `tiered_cache_background_skipped_total` | counter | `task` (`drain`, `revalidate`, `refresh_ahead`) |
//! | `tiered_cache_write_behind_dead_trimmed_total` | counter | |
//! | `tiered_cache_bytes` | gauge | `tier` (`memory`) |
//! | `tiered_cache_write_behind_queue` | gauge | |
//! | `tiered_cache_request_duration_seconds` | histogram | `outcome` (`hit`, `stale`, `miss`, `bypass`) |
//! | `tiered_cache_l2_duration_seconds` | histogram | |

use std::time::Duration;

/// A metric label; without the feature, nothing.
#[cfg(feature = "metrics")]
pub(crate) type Label = metrics::Label;

/// A metric label; without the feature, nothing.
#[cfg(not(feature = "metrics"))]
#[derive(Debug)]
pub(crate) struct Label;

/// The label `key = value`, made at compile time (`const { &[label(..)] }` is a `'static`
/// slice), so that counting needs no allocation.
pub(crate) const fn label(key: &'static str, value: &'static str) -> Label {
    #[cfg(feature = "metrics")]
    {
        metrics::Label::from_static_parts(key, value)
    }
    #[cfg(not(feature = "metrics"))]
    {
        let _ = (key, value);
        Label
    }
}

/// Adds `amount` to the counter `name` with `labels` (the mapping of the cache's counters to
/// metrics is [`Counter::metric`](crate::stats)). The key is built from static parts: no
/// allocation, recorder or not.
#[cfg(feature = "metrics")]
pub(crate) fn increment(name: &'static str, labels: &'static [Label], amount: u64) {
    static METADATA: metrics::Metadata<'static> =
        metrics::Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));
    let key = metrics::Key::from_static_parts(name, labels);
    metrics::with_recorder(|recorder| recorder.register_counter(&key, &METADATA)).increment(amount);
}

#[cfg(not(feature = "metrics"))]
pub(crate) fn increment(_: &'static str, _: &'static [Label], _: u64) {}

/// A response not stored, by reason.
#[cfg(feature = "metrics")]
pub(crate) fn not_stored(reason: &'static str) {
    metrics::counter!("tiered_cache_not_stored_total", "reason" => reason).increment(1);
}

#[cfg(not(feature = "metrics"))]
pub(crate) fn not_stored(_reason: &'static str) {}

/// A background task not started, past `http.max_background`, by task.
#[cfg(feature = "metrics")]
pub(crate) fn background_skipped(task: &'static str) {
    metrics::counter!("tiered_cache_background_skipped_total", "task" => task).increment(1);
}

#[cfg(not(feature = "metrics"))]
pub(crate) fn background_skipped(_task: &'static str) {}

/// The memory tier's weighted size.
pub(crate) fn memory_bytes(_bytes: u64) {
    #[cfg(feature = "metrics")]
    metrics::gauge!("tiered_cache_bytes", "tier" => "memory").set(_bytes as f64);
}

/// Writes waiting in the write-behind queue.
pub(crate) fn write_behind_queue(_queued: u64) {
    #[cfg(feature = "metrics")]
    metrics::gauge!("tiered_cache_write_behind_queue").set(_queued as f64);
}

/// Entries trimmed from a durable write-behind dead stream, past `write_behind.dead_max`.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) fn write_behind_dead_trimmed(_trimmed: u64) {
    #[cfg(feature = "metrics")]
    metrics::counter!("tiered_cache_write_behind_dead_trimmed_total").increment(_trimmed);
}

/// One HTTP request through the layer, by outcome.
pub(crate) fn request_duration(_outcome: &'static str, _elapsed: Duration) {
    // Literal labels make static keys: no allocation per request.
    #[cfg(feature = "metrics")]
    {
        use metrics::histogram;
        let histogram = match _outcome {
            "hit" => histogram!("tiered_cache_request_duration_seconds", "outcome" => "hit"),
            "stale" => histogram!("tiered_cache_request_duration_seconds", "outcome" => "stale"),
            "miss" => histogram!("tiered_cache_request_duration_seconds", "outcome" => "miss"),
            "bypass" => {
                histogram!("tiered_cache_request_duration_seconds", "outcome" => "bypass")
            }
            _ => histogram!("tiered_cache_request_duration_seconds", "outcome" => "error"),
        };
        histogram.record(_elapsed);
    }
}

/// One shared-tier (Redis or Memcached) operation.
#[cfg_attr(not(any(feature = "redis", feature = "memcached")), allow(dead_code))]
pub(crate) fn l2_duration(_elapsed: Duration) {
    #[cfg(feature = "metrics")]
    metrics::histogram!("tiered_cache_l2_duration_seconds").record(_elapsed);
}
