#![cfg(feature = "memcached")]
//! Memcached as the shared tier: reads across the tiers, the key layout, bad values, the item
//! size limit, failures (killed, refused, stalled), tags across instances, what memcached cannot
//! do, and the configuration it refuses.

mod common;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use common::memcached::{config, entry_key, lock_key, memcached_cache, tag_key, MemcachedServer};
use tower_tiered_cache::config::TagsConfig;
use tower_tiered_cache::{CacheConfig, CachedEntry, ConfigError, Error, Source, TieredCache};

const MINUTE: Duration = Duration::from_secs(60);
const DAY: Duration = Duration::from_secs(24 * 3600);
/// Memcached's default item size limit (`-I 1m`), which is also `l2.max_item_size`'s default.
const ONE_MIB: usize = 1024 * 1024;

fn entry(body: impl Into<Bytes>, ttl: Duration) -> CachedEntry {
    CachedEntry::new(body, ttl)
}

fn tagged(body: &'static str, tags: &[&str]) -> CachedEntry {
    CachedEntry::new(body, Duration::from_secs(300)).with_tags(tags.iter().copied())
}

async fn load(cache: &TieredCache, key: &str, body: &'static str) -> CachedEntry {
    cache
        .get_or_set(key, || async {
            Ok::<_, Infallible>(CachedEntry::new(body, MINUTE))
        })
        .await
        .expect("loader never fails here")
}

/// Sets a new key through `writer` until `reader` (another instance) finds it in memcached, for
/// at most `limit`. Polls: nothing announces that a reconnection or a breaker probe succeeded.
async fn until_shared(writer: &TieredCache, reader: &TieredCache, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let mut attempt = 0;
    while Instant::now() < deadline {
        attempt += 1;
        let key = format!("probe:{attempt}");
        writer.set(&key, entry("probe", MINUTE)).await;
        let found = reader.lookup(&key).await;
        if found.is_some_and(|found| found.source == Source::Memcached) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

// --- Reads across the tiers -----------------------------------------------------------------

#[tokio::test]
async fn second_read_is_a_memory_hit() {
    let server = MemcachedServer::start();
    let cache = memcached_cache(&server, config("second")).await;
    cache.set("k", entry("v", MINUTE)).await;

    let found = cache.lookup("k").await.expect("cached");
    assert_eq!(found.entry.body(), "v");
    assert_eq!(found.source, Source::Memory);
    let stats = cache.stats();
    assert_eq!(
        (stats.memory_hits, stats.redis_hits, stats.misses),
        (1, 0, 0)
    );
}

#[tokio::test]
async fn fresh_instance_reads_memcached_then_promotes_to_memory() {
    let server = MemcachedServer::start();
    let writer = memcached_cache(&server, config("promote")).await;
    writer.set("user:1", entry("Ada", MINUTE)).await;

    // A new instance (a restart, or another replica) starts with an empty memory tier.
    let reader = memcached_cache(&server, config("promote")).await;
    let first = reader.lookup("user:1").await.expect("found in memcached");
    assert_eq!(
        (first.entry.body().as_ref(), first.source),
        (&b"Ada"[..], Source::Memcached)
    );
    let second = reader.lookup("user:1").await.expect("promoted");
    assert_eq!(second.source, Source::Memory);

    let stats = reader.stats();
    assert_eq!(
        (stats.redis_hits, stats.memory_hits, stats.misses),
        (1, 1, 0),
        "shared-tier hits are counted in redis_hits whatever the backend"
    );
    assert_eq!(stats.memory_entries, 1);
}

#[tokio::test]
async fn get_or_set_takes_the_memcached_entry_without_calling_the_loader() {
    let server = MemcachedServer::start();
    let writer = memcached_cache(&server, config("aside")).await;
    writer.set("k", entry("shared", MINUTE)).await;

    let reader = memcached_cache(&server, config("aside")).await;
    assert_eq!(load(&reader, "k", "not called").await.body(), "shared");
    let stats = reader.stats();
    assert_eq!((stats.loader_calls, stats.redis_hits), (0, 1));
}

#[tokio::test]
async fn promotion_keeps_the_remaining_ttl() {
    let server = MemcachedServer::start();
    let writer = memcached_cache(&server, config("remaining")).await;
    let stored_at = SystemTime::now() - Duration::from_secs(50);
    let old = entry("old", MINUTE).with_stored_at(stored_at);
    writer.set("k", old.clone()).await;

    let ttl = server.raw_ttl(&entry_key("remaining", "k")).await;
    assert!(
        matches!(ttl, Some(1..=11)),
        "memcached expiry is the remaining 10 s (rounded up), got {ttl:?}"
    );

    let reader = memcached_cache(&server, config("remaining")).await;
    let promoted = reader.get("k").await.expect("fresh for 10 s more");
    assert_eq!(promoted.stored_at(), old.stored_at());
    assert_eq!(promoted.ttl(), MINUTE);
}

#[tokio::test]
async fn entries_expire_in_both_tiers() {
    let server = MemcachedServer::start();
    let cache = memcached_cache(&server, config("expiry")).await;
    cache.set("short", entry("v", Duration::from_secs(1))).await;
    assert!(cache.get("short").await.is_some());

    // Memcached counts in whole seconds on a clock that ticks once a second: after two ticks a
    // one-second item is gone.
    tokio::time::sleep(Duration::from_millis(2_100)).await;

    assert!(
        cache.get("short").await.is_none(),
        "memory tier honours the entry's TTL"
    );
    assert_eq!(
        server.raw_get(&entry_key("expiry", "short")).await,
        None,
        "memcached expired the item"
    );
    let fresh = memcached_cache(&server, config("expiry")).await;
    assert!(fresh.get("short").await.is_none());
}

#[tokio::test]
async fn stale_entries_are_kept_in_memcached_for_their_stale_window() {
    let server = MemcachedServer::start();
    let writer = memcached_cache(&server, config("stale")).await;
    let stale = entry("stale", Duration::from_secs(1))
        .with_stale_ttl(MINUTE)
        .with_stored_at(SystemTime::now() - Duration::from_secs(5));
    writer.set("k", stale).await;

    let ttl = server.raw_ttl(&entry_key("stale", "k")).await;
    assert!(
        matches!(ttl, Some(50..=57)),
        "kept for the 56 s left of its stale window, got {ttl:?}"
    );
    let reader = memcached_cache(&server, config("stale")).await;
    let found = reader.lookup("k").await.expect("kept for its stale window");
    assert!(!found.is_fresh());
    assert_eq!(
        (found.entry.body().as_ref(), found.source),
        (&b"stale"[..], Source::Memcached)
    );
    assert!(reader.get("k").await.is_none(), "get wants a fresh entry");
}

// --- Key layout and expiry ------------------------------------------------------------------

#[tokio::test]
async fn the_memcached_key_is_the_prefixed_sha256_of_the_cache_key_with_an_expiry() {
    let server = MemcachedServer::start();
    let cache = memcached_cache(&server, config("layout")).await;
    cache.set("user:1", entry("Ada", MINUTE)).await;

    let key = entry_key("layout", "user:1");
    let stored = server
        .raw_get(&key)
        .await
        .expect("entry under {prefix}:e:{sha256}");
    assert!(!stored.is_empty());
    let ttl = server.raw_ttl(&key).await;
    assert!(
        matches!(ttl, Some(55..=60)),
        "expiry of about 60 s, got {ttl:?}"
    );
    assert_eq!(
        server.raw_get("layout:e:user:1").await,
        None,
        "the plain key is not used"
    );
}

#[tokio::test]
async fn keys_memcached_would_refuse_are_stored_hashed() {
    let server = MemcachedServer::start();
    let writer = memcached_cache(&server, config("oddkeys")).await;
    let long = "x".repeat(400);
    let keys = [
        "with spaces",
        "line\r\nbreak",
        "tab\tand\u{7f}control",
        "ünïcödé/😀",
        long.as_str(),
    ];
    for key in keys {
        writer.set(key, entry(key.to_owned(), MINUTE)).await;
    }

    let reader = memcached_cache(&server, config("oddkeys")).await;
    for key in keys {
        let found = reader.lookup(key).await.expect("found in memcached");
        assert_eq!(
            (found.entry.body().as_ref(), found.source),
            (key.as_bytes(), Source::Memcached),
            "{key:?}"
        );
        assert!(server.raw_get(&entry_key("oddkeys", key)).await.is_some());
    }
    assert_eq!(writer.stats().l2_errors, 0);
}

#[tokio::test]
async fn a_sub_second_ttl_never_becomes_an_item_without_expiry() {
    let server = MemcachedServer::start();
    let cache = memcached_cache(&server, config("subsec")).await;
    cache.set("k", entry("v", Duration::from_millis(300))).await;

    // Memcached reads an expiry of 0 as "never": 300 ms must round up to 1 s (or not be stored).
    let ttl = server.raw_ttl(&entry_key("subsec", "k")).await;
    assert!(matches!(ttl, None | Some(0..=1)), "got {ttl:?}");
}

#[tokio::test]
async fn entries_living_longer_than_thirty_days_are_kept() {
    let server = MemcachedServer::start();
    let writer = memcached_cache(&server, config("longlived")).await;
    writer.set("k", entry("v", 40 * DAY)).await;

    // Memcached reads an expiry above 30 days as a Unix time: a relative 40 days is in 1970.
    let ttl = server.raw_ttl(&entry_key("longlived", "k")).await;
    assert!(
        ttl.is_some_and(|ttl| ttl > (39 * DAY).as_secs() as i64),
        "kept about 40 days, got {ttl:?}"
    );
    let reader = memcached_cache(&server, config("longlived")).await;
    let found = reader.lookup("k").await.expect("found in memcached");
    assert_eq!(found.source, Source::Memcached);
}

// --- Values that are not entries ------------------------------------------------------------

async fn assert_treated_as_miss_and_deleted(value: &[u8]) {
    let server = MemcachedServer::start();
    let cache = memcached_cache(&server, config("bad")).await;
    let key = entry_key("bad", "k");
    server.raw_set(&key, value).await;

    assert!(cache.get("k").await.is_none());

    assert_eq!(
        server.raw_get(&key).await,
        None,
        "the bad value was deleted"
    );
    let stats = cache.stats();
    assert_eq!((stats.l2_decode_errors, stats.misses), (1, 1));

    // The loader answers, and its entry replaces the garbage.
    assert_eq!(load(&cache, "k", "good").await.body(), "good");
    let fresh = memcached_cache(&server, config("bad")).await;
    assert_eq!(fresh.get("k").await.unwrap().body(), "good");
}

#[tokio::test]
async fn foreign_text_is_a_miss() {
    assert_treated_as_miss_and_deleted(b"{\"json\": \"from another app\"}").await;
}

#[tokio::test]
async fn empty_value_is_a_miss() {
    assert_treated_as_miss_and_deleted(b"").await;
}

#[tokio::test]
async fn future_format_version_is_a_miss() {
    assert_treated_as_miss_and_deleted(&[200, 0, 0, 0, 0, 0, 1, 2, 3]).await;
}

#[tokio::test]
async fn metadata_announcing_a_huge_length_is_a_miss() {
    let mut value = vec![2u8, 0]; // the current format version
    value.extend_from_slice(&u32::MAX.to_le_bytes());
    value.extend_from_slice(&[0xff; 64]);
    assert_treated_as_miss_and_deleted(&value).await;
}

#[tokio::test]
async fn truncated_entry_is_a_miss() {
    let server = MemcachedServer::start();
    let cache = memcached_cache(&server, config("trunc")).await;
    cache.set("k", entry(vec![b'z'; 5000], MINUTE)).await;
    let valid = server
        .raw_get(&entry_key("trunc", "k"))
        .await
        .expect("entry written");
    drop((cache, server));

    assert_treated_as_miss_and_deleted(&valid[..valid.len() - 3]).await;
}

// --- The item size limit --------------------------------------------------------------------

#[tokio::test]
async fn an_entry_over_the_item_size_limit_stays_in_memory_only() {
    let server = MemcachedServer::start();
    let builder = config("big").compression(false).l2_max_item_size(64 * 1024);
    let cache = memcached_cache(&server, builder).await;
    cache.set("big", entry(vec![b'x'; 100_000], MINUTE)).await;
    cache.set("small", entry("fits", MINUTE)).await;

    let found = cache.lookup("big").await.expect("kept in memory");
    assert_eq!(
        (found.entry.body().len(), found.source),
        (100_000, Source::Memory)
    );
    assert_eq!(server.raw_get(&entry_key("big", "big")).await, None);
    assert!(server.raw_get(&entry_key("big", "small")).await.is_some());
    let stats = cache.stats();
    assert_eq!(
        (stats.l2_too_large, stats.l2_errors),
        (1, 0),
        "counted as too large, not as a failure: {stats:?}"
    );
    let fresh = memcached_cache(&server, config("big")).await;
    assert!(fresh.get("big").await.is_none());
}

#[tokio::test]
async fn oversized_entries_never_open_the_circuit() {
    let server = MemcachedServer::start();
    // The default limit (1 MiB) is memcached's default; the breaker opens after 5 failures.
    let cache = memcached_cache(&server, config("huge").compression(false)).await;
    for i in 0..8 {
        let key = format!("huge:{i}");
        cache
            .set(&key, entry(vec![b'h'; 3 * ONE_MIB / 2], MINUTE))
            .await;
        assert!(cache.get(&key).await.is_some(), "{key} kept in memory");
    }
    let stats = cache.stats();
    assert_eq!((stats.l2_too_large, stats.l2_errors), (8, 0), "{stats:?}");
    assert!(!stats.l2_circuit_open);

    let reader = memcached_cache(&server, config("huge")).await;
    cache.set("small", entry("fits", MINUTE)).await;
    let found = reader.lookup("small").await.expect("memcached still used");
    assert_eq!(found.source, Source::Memcached);
}

#[tokio::test]
async fn an_entry_within_the_default_limit_is_stored_or_counted_too_large_never_a_failure() {
    let server = MemcachedServer::start();
    let cache = memcached_cache(&server, config("edge").compression(false)).await;
    // The codec's overhead for this shape of entry (same body length encoding, same times).
    let probe_len = 1_000_000;
    cache
        .set("probe", entry(vec![b'p'; probe_len], MINUTE))
        .await;
    let probe = server
        .raw_get(&entry_key("edge", "probe"))
        .await
        .expect("a 1 MB entry fits");
    let overhead = probe.len() - probe_len;

    // Encoded entry plus key 20 bytes under l2.max_item_size: not over the limit, so written;
    // memcached counts its own item header (about 50 bytes) against `-I` as well.
    let key = entry_key("edge", "k");
    let body_len = ONE_MIB - 20 - key.len() - overhead;
    cache.set("k", entry(vec![b'k'; body_len], MINUTE)).await;

    let stats = cache.stats();
    let stored = server.raw_get(&key).await.is_some();
    assert!(
        stored || stats.l2_too_large == 1,
        "neither in memcached nor counted too large: {stats:?}"
    );
    assert_eq!(
        stats.l2_errors, 0,
        "an entry memcached refuses for its size is not a tier failure: {stats:?}"
    );
}

#[tokio::test]
async fn a_lower_server_item_limit_counts_as_too_large_and_never_opens_the_circuit() {
    // The server takes 512 KiB items; l2.max_item_size keeps its 1 MiB default.
    let server = MemcachedServer::start_with("127.0.0.1", &["-I", "512k"]);
    let cache = memcached_cache(&server, config("lowlimit").compression(false)).await;
    for i in 0..8 {
        let key = format!("big:{i}");
        cache.set(&key, entry(vec![b'b'; 700_000], MINUTE)).await;
        assert!(cache.get(&key).await.is_some(), "{key} kept in memory");
    }
    let stats = cache.stats();
    assert_eq!(
        (stats.l2_too_large, stats.l2_skipped),
        (8, 0),
        "each refusal counted as too large, none skipped: {stats:?}"
    );
    assert!(!stats.l2_circuit_open, "{stats:?}");

    cache.set("small", entry("fits", MINUTE)).await;
    let reader = memcached_cache(&server, config("lowlimit")).await;
    let found = reader.lookup("small").await.expect("memcached still used");
    assert_eq!(found.source, Source::Memcached);
}

// --- Failures -------------------------------------------------------------------------------

#[tokio::test]
async fn memcached_killed_mid_test_still_gives_correct_answers() {
    let mut server = MemcachedServer::start();
    let cache = memcached_cache(&server, config("killed")).await;
    assert_eq!(
        load(&cache, "before", "stored before").await.body(),
        "stored before"
    );

    server.kill();

    // Memory still answers what it has; misses go to the loader; nothing errors.
    assert_eq!(cache.get("before").await.unwrap().body(), "stored before");
    assert_eq!(
        load(&cache, "after", "loaded after").await.body(),
        "loaded after"
    );
    assert_eq!(
        load(&cache, "after", "not called").await.body(),
        "loaded after"
    );
    assert!(cache.get("never-stored").await.is_none());
    let stats = cache.stats();
    assert!(
        stats.l2_errors >= 2,
        "failed reads and writes are counted: {stats:?}"
    );
    assert_eq!(stats.loader_calls, 2);

    // An invalidation that cannot reach memcached says it is pending, after clearing memory.
    let err = cache.invalidate("before").await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidationPending {
                operation: "invalidate",
                ..
            }
        ),
        "{err}"
    );
    assert!(cache.get("before").await.is_none());

    // Back on the same port: the cache reconnects by itself and uses memcached again.
    server.restart();
    let fresh = memcached_cache(&server, config("killed")).await;
    assert!(
        until_shared(&cache, &fresh, Duration::from_secs(10)).await,
        "the cache writes to memcached again within 10 s of its restart"
    );
    assert!(!cache.stats().l2_circuit_open);
}

#[tokio::test]
async fn memcached_refusing_at_start_does_not_stop_the_cache() {
    let mut server = MemcachedServer::not_started();
    let cache = TieredCache::new(
        config("refused")
            .memcached_url(server.url())
            .build()
            .unwrap(),
    )
    .expect("a cache starts without its memcached");
    assert!(
        !cache.wait_for_l2(Duration::from_millis(100)).await,
        "nothing answers yet"
    );

    assert_eq!(load(&cache, "k", "from loader").await.body(), "from loader");
    assert_eq!(cache.get("k").await.unwrap().body(), "from loader");
    let stats = cache.stats();
    assert!(stats.l2_errors >= 1, "{stats:?}");

    server.restart();
    assert!(
        cache.wait_for_l2(Duration::from_secs(10)).await,
        "answered once memcached is up"
    );
    let other = memcached_cache(&server, config("refused")).await;
    assert!(
        until_shared(&cache, &other, Duration::from_secs(10)).await,
        "the cache writes to memcached once it is up"
    );
}

#[tokio::test]
async fn memcached_slower_than_the_timeout_is_a_miss() {
    let server = MemcachedServer::start();
    let writer = memcached_cache(&server, config("stalled")).await;
    writer.set("k", entry("in memcached", MINUTE)).await;
    let cache = memcached_cache(
        &server,
        config("stalled").l2_timeout(Duration::from_millis(50)),
    )
    .await;

    server.pause();
    let loaded = load(&cache, "k", "from loader").await;
    let missing = cache.get("only-in-memcached").await;
    server.resume();

    assert_eq!(
        loaded.body(),
        "from loader",
        "the stalled memcached was skipped"
    );
    assert!(missing.is_none());
    assert!(cache.stats().l2_errors >= 1);
}

#[tokio::test]
async fn a_reply_arriving_after_its_timeout_is_never_taken_for_another_key() {
    let server = MemcachedServer::start();
    let writer = memcached_cache(&server, config("late")).await;
    for i in 0..8 {
        writer
            .set(&format!("a{i}"), entry(format!("A{i}"), MINUTE))
            .await;
        writer
            .set(&format!("b{i}"), entry(format!("B{i}"), MINUTE))
            .await;
    }
    // A breaker that stays closed, so every read below reaches a connection.
    let reader = memcached_cache(
        &server,
        config("late")
            .l2_timeout(Duration::from_millis(50))
            .l2_breaker(1_000, Duration::from_millis(10)),
    )
    .await;

    server.pause();
    for i in 0..8 {
        assert!(
            reader.get(&format!("a{i}")).await.is_none(),
            "a{i} timed out"
        );
    }
    // Memcached now answers the timed-out reads, on the connections they were sent on.
    server.resume();

    let mut from_memcached = 0;
    for i in 0..8 {
        let key = format!("b{i}");
        if let Some(found) = reader.lookup(&key).await {
            assert_eq!(found.entry.body(), &format!("B{i}"), "{key}");
            from_memcached += 1;
        }
    }
    for i in 0..8 {
        let key = format!("a{i}");
        if let Some(found) = reader.lookup(&key).await {
            assert_eq!(found.entry.body(), &format!("A{i}"), "{key}");
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while from_memcached == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let Some(found) = reader.lookup("b0").await {
            assert_eq!(found.entry.body(), "B0");
            from_memcached += 1;
        }
    }
    assert!(from_memcached > 0, "reads reach memcached again");
}

// --- Tags -----------------------------------------------------------------------------------

#[tokio::test]
async fn tag_invalidation_reaches_instances_that_have_not_read_the_stamp() {
    let server = MemcachedServer::start();
    let first = memcached_cache(&server, config("xtags")).await;
    // No pub/sub on memcached: this instance's copies and stamps live until l1.max_ttl.
    let second = memcached_cache(&server, config("xtags").l1_max_ttl(Duration::from_secs(1))).await;
    first.set("k1", tagged("v", &["t"])).await;
    first.set("k2", tagged("v", &["t"])).await;
    first.set("other", tagged("v", &["u"])).await;
    assert!(
        second.get("k2").await.is_some(),
        "second holds a memory copy"
    );

    first.invalidate_tags(&["t"]).await.unwrap();

    assert!(first.get("k1").await.is_none());
    assert!(
        server.raw_get(&tag_key("xtags", "t")).await.is_some(),
        "the invalidation time is recorded in memcached"
    );
    let third = memcached_cache(&server, config("xtags")).await;
    assert!(third.get("k1").await.is_none(), "a fresh instance sees it");
    assert!(third.get("other").await.is_some());
    assert_eq!(
        server.raw_get(&entry_key("xtags", "k1")).await,
        None,
        "the dead entry was deleted from memcached when read"
    );

    // Waits out second's l1.max_ttl: its copy and its stamp of "t" are then forgotten.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert!(
        second.get("k2").await.is_none(),
        "second sees it after l1.max_ttl"
    );

    // Stamps are in milliseconds; an entry obtained in the same millisecond counts as older.
    tokio::time::sleep(Duration::from_millis(2)).await;
    first.set("k1", tagged("new", &["t"])).await;
    let fourth = memcached_cache(&server, config("xtags")).await;
    assert_eq!(fourth.get("k1").await.unwrap().body(), "new");
}

#[tokio::test]
async fn hits_on_entries_whose_tags_were_never_invalidated_do_not_open_the_circuit() {
    let server = MemcachedServer::start();
    let cache = memcached_cache(&server, config("fresh-tags")).await;
    cache.set("k", tagged("v", &["never", "invalidated"])).await;

    // The first hit asks memcached for the stamps, which finds none: an answer, not a failure.
    for _ in 0..10 {
        assert!(cache.get("k").await.is_some());
    }

    let stats = cache.stats();
    assert_eq!((stats.l2_errors, stats.l2_circuit_open), (0, false));
    let reader = memcached_cache(&server, config("fresh-tags")).await;
    assert_eq!(reader.lookup("k").await.unwrap().source, Source::Memcached);
}

#[tokio::test]
async fn invalidating_thousands_of_tags_is_one_round_trip() {
    let server = MemcachedServer::start();
    let cache = memcached_cache(&server, config("many-tags")).await;
    cache.set("k", tagged("v", &["t4999"])).await;
    let tags: Vec<String> = (0..5_000).map(|i| format!("t{i}")).collect();

    // One pipelined multi-set (one set per tag in turn outlasted `l2.timeout`).
    cache.invalidate_tags(&tags).await.unwrap();

    for tag in ["t0", "t4999"] {
        assert!(
            server.raw_get(&tag_key("many-tags", tag)).await.is_some(),
            "{tag}"
        );
    }
    let reader = memcached_cache(&server, config("many-tags")).await;
    assert!(reader.get("k").await.is_none());
}

#[tokio::test]
async fn tag_stamps_are_kept_for_stamp_ttl_even_beyond_thirty_days() {
    let server = MemcachedServer::start();
    for (prefix, stamp_ttl) in [("stamp30", 30 * DAY), ("stamp40", 40 * DAY)] {
        let mut tags = TagsConfig::default();
        tags.stamp_ttl = stamp_ttl;
        let cache = memcached_cache(&server, config(prefix).tags(tags)).await;
        cache.set("k", tagged("v", &["t"])).await;
        cache.invalidate_tags(&["t"]).await.unwrap();

        // Memcached reads an expiry above 30 days as a Unix time, so 40 days must be sent as one.
        let ttl = server.raw_ttl(&tag_key(prefix, "t")).await;
        let expected = stamp_ttl.as_secs() as i64;
        assert!(
            ttl.is_some_and(|ttl| (expected - 60..=expected + 1).contains(&ttl)),
            "{prefix}: stamp kept {stamp_ttl:?}, memcached says {ttl:?}"
        );
        let fresh = memcached_cache(&server, config(prefix)).await;
        assert!(fresh.get("k").await.is_none(), "{prefix}");
    }
}

// --- Coalescing across instances (l2.lock) --------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_on_two_instances_call_the_loader_once() {
    let server = MemcachedServer::start();
    let locking = || config("lock").l2_lock(Duration::from_secs(5), Duration::from_secs(5));
    let first = memcached_cache(&server, locking()).await;
    let second = memcached_cache(&server, locking()).await;
    let calls = Arc::new(AtomicUsize::new(0));

    let tasks: Vec<_> = [first.clone(), second.clone()]
        .into_iter()
        .cycle()
        .take(20)
        .map(|cache| {
            let calls = calls.clone();
            tokio::spawn(async move {
                let loaded = cache
                    .get_or_set("hot", || async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        // A slow load: the other instance finds the lock taken and waits.
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        Ok::<_, Infallible>(CachedEntry::new("loaded once", MINUTE))
                    })
                    .await
                    .expect("loader never fails here");
                loaded.body().clone()
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), "loaded once");
    }

    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "one load for both instances"
    );
    let filled = first.stats().lock_waits_filled + second.stats().lock_waits_filled;
    assert!(
        filled >= 1,
        "the other instance waited for the holder's entry"
    );
    assert_eq!(
        server.raw_get(&lock_key("lock", "hot")).await,
        None,
        "the holder released its lock"
    );
}

// --- Invalidation ---------------------------------------------------------------------------

#[tokio::test]
async fn invalidate_removes_the_memcached_key() {
    let server = MemcachedServer::start();
    let cache = memcached_cache(&server, config("inval")).await;
    cache.set("k", entry("v", MINUTE)).await;
    let key = entry_key("inval", "k");
    assert!(server.raw_get(&key).await.is_some());

    cache.invalidate("k").await.unwrap();

    assert_eq!(server.raw_get(&key).await, None);
    assert!(cache.get("k").await.is_none());
    let fresh = memcached_cache(&server, config("inval")).await;
    assert!(fresh.get("k").await.is_none());
}

#[tokio::test]
async fn invalidate_prefix_and_flush_are_unsupported_but_clear_memory() {
    let server = MemcachedServer::start();
    let cache = memcached_cache(&server, config("unsup")).await;
    for key in ["p:1", "p:2", "q:1"] {
        cache.set(key, entry("v", MINUTE)).await;
    }

    let err = cache.invalidate_prefix("p:").await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Unsupported {
                operation: "invalidate_prefix",
                backend: "memcached",
            }
        ),
        "{err}"
    );
    // Memory dropped the prefix; memcached, which cannot list its keys, still has them.
    assert_eq!(cache.lookup("p:1").await.unwrap().source, Source::Memcached);
    assert_eq!(cache.lookup("q:1").await.unwrap().source, Source::Memory);

    let err = cache.flush().await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Unsupported {
                operation: "flush",
                backend: "memcached",
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("memcached"), "{err}");
    for key in ["p:1", "q:1"] {
        let found = cache.lookup(key).await.expect("still in memcached");
        assert_eq!(found.source, Source::Memcached, "{key} left memory");
    }
}

// --- Configuration --------------------------------------------------------------------------

#[tokio::test]
async fn a_toml_config_selects_memcached() {
    let server = MemcachedServer::start();
    let text = format!(
        "[l2]\nbackend = \"memcached\"\nurl = \"{}\"\nprefix = \"toml\"\n",
        server.url()
    );
    let writer = TieredCache::new(CacheConfig::from_toml_str(&text).unwrap()).unwrap();
    assert!(writer.wait_for_l2(Duration::from_secs(5)).await);
    writer.set("k", entry("v", MINUTE)).await;

    assert!(server.raw_get(&entry_key("toml", "k")).await.is_some());
    let reader = TieredCache::new(CacheConfig::from_toml_str(&text).unwrap()).unwrap();
    assert!(reader.wait_for_l2(Duration::from_secs(5)).await);
    assert_eq!(reader.lookup("k").await.unwrap().source, Source::Memcached);
}

#[tokio::test]
async fn an_ipv6_memcached_url_is_used_or_refused_by_the_config() {
    let server = MemcachedServer::start_with("::1", &[]);
    let built = config("ipv6").memcached_url(server.url()).build();
    let Ok(built) = built else {
        let err = built.unwrap_err();
        assert_eq!(err.key(), Some("l2.url"), "{err}");
        return;
    };
    // Accepted, so it must work: the cache reaches the server.
    let writer = TieredCache::new(built.clone()).unwrap();
    assert!(
        writer.wait_for_l2(Duration::from_secs(5)).await,
        "{} accepted by the config, but the cache never connects",
        server.url()
    );
    writer.set("k", entry("v", MINUTE)).await;
    let reader = TieredCache::new(built).unwrap();
    assert!(reader.wait_for_l2(Duration::from_secs(5)).await);
    assert_eq!(reader.lookup("k").await.unwrap().source, Source::Memcached);
}

#[tokio::test]
async fn a_prefix_the_config_accepts_works_and_one_it_refuses_names_l2_prefix() {
    let server = MemcachedServer::start();
    // Memcached keys are at most 250 bytes: `{prefix}:e:` and 64 hex digits leave 183 for the
    // prefix. Whatever the config accepts must reach memcached.
    for length in [100, 101, 183, 184, 300] {
        let prefix = "p".repeat(length);
        let built = config(&prefix).memcached_url(server.url()).build();
        let Ok(built) = built else {
            let err = built.unwrap_err();
            assert_eq!(err.key(), Some("l2.prefix"), "{err}");
            continue;
        };
        let writer = TieredCache::new(built.clone()).unwrap();
        let reader = TieredCache::new(built).unwrap();
        for cache in [&writer, &reader] {
            assert!(cache.wait_for_l2(Duration::from_secs(5)).await);
        }
        writer.set("k", entry("v", MINUTE)).await;
        let found = reader.lookup("k").await;
        assert_eq!(
            found.map(|found| found.source),
            Some(Source::Memcached),
            "a {length}-byte prefix is accepted by the config, so entries must reach memcached: {:?}",
            writer.stats()
        );
    }
}

fn config_error(text: &str) -> ConfigError {
    match CacheConfig::from_toml_str(text) {
        Ok(config) => panic!("{text}\nwas accepted: {config:?}"),
        Err(err) => err,
    }
}

#[test]
fn memcached_with_a_cluster_is_an_error_naming_l2_cluster() {
    for text in [
        "[l2]\nbackend = \"memcached\"\nurl = \"memcache://127.0.0.1:11211\"\ncluster = [\"memcache://127.0.0.1:11212\"]",
        "[l2]\nbackend = \"memcached\"\ncluster = [\"memcache://127.0.0.1:11211\"]",
    ] {
        let err = config_error(text);
        assert_eq!(err.key(), Some("l2.cluster"), "{text}: {err}");
    }
}

#[test]
fn memcached_with_a_durable_write_behind_queue_is_an_error() {
    let err = config_error(
        "[l2]\nbackend = \"memcached\"\nurl = \"memcache://127.0.0.1:11211\"\n[write_behind]\ndurable = true",
    );
    assert_eq!(err.key(), Some("write_behind.durable"), "{err}");
}

#[test]
fn a_memcached_url_must_use_the_memcache_scheme() {
    for url in [
        "redis://127.0.0.1:6379",
        "tcp://127.0.0.1:11211",
        "127.0.0.1:11211",
        "memcached://127.0.0.1:11211",
    ] {
        let err = config_error(&format!("[l2]\nbackend = \"memcached\"\nurl = \"{url}\""));
        assert_eq!(err.key(), Some("l2.url"), "{url}: {err}");

        let err = CacheConfig::builder()
            .memcached_url(url)
            .build()
            .expect_err(url);
        assert_eq!(err.key(), Some("l2.url"), "{url}: {err}");
    }
}
