//! The Redis tier on a three-primary Redis Cluster: the L2 behaviour of the single-node tests
//! (promotion, expiry, prefix invalidation, corrupt values) and tag and cross-instance
//! invalidation, with keys spread over every slot.
#![cfg(feature = "redis")]

mod common;

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use common::{cache_on_cluster, config, RedisCluster};
use fred::interfaces::KeysInterface;
use tower_tiered_cache::{CachedEntry, Invalidation, Source};

fn entry(body: &'static str) -> CachedEntry {
    CachedEntry::new(body, Duration::from_secs(300))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_tier_works_on_a_cluster() {
    let cluster = RedisCluster::start();
    let client = cluster.client().await;

    // Promotion: another instance reads what the first stored.
    let writer = cache_on_cluster(&cluster, config("cl")).await;
    for i in 0..200 {
        writer.set(&format!("user:{i}"), entry("v")).await;
    }
    let reader = cache_on_cluster(&cluster, config("cl")).await;
    for i in 0..200 {
        let found = reader
            .lookup(&format!("user:{i}"))
            .await
            .expect("in the cluster");
        assert_eq!(found.source, Source::Redis);
    }
    assert_eq!(writer.stats().l2_errors + reader.stats().l2_errors, 0);

    // Expiry in both tiers.
    writer
        .set("short", CachedEntry::new("v", Duration::from_millis(300)))
        .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(reader.get("short").await.is_none());
    let exists: u64 = client.exists("cl:e:short").await.unwrap();
    assert_eq!(exists, 0);

    // Prefix invalidation scans every primary and deletes across slots.
    writer.set("order:1", entry("o")).await;
    let purged = writer.invalidate_prefix("user:").await.unwrap();
    assert_eq!(purged.redis, 200);
    let fresh = cache_on_cluster(&cluster, config("cl")).await;
    assert!(fresh.get("user:7").await.is_none());
    assert!(fresh.get("order:1").await.is_some());

    // Garbage under a key is a miss, deleted and counted.
    let _: () = client
        .set(
            "cl:e:junk",
            Bytes::from_static(b"not an entry"),
            None,
            None,
            false,
        )
        .await
        .unwrap();
    assert!(fresh.get("junk").await.is_none());
    let exists: u64 = client.exists("cl:e:junk").await.unwrap();
    assert_eq!(exists, 0);
    assert_eq!(fresh.stats().l2_decode_errors, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_and_cross_instance_invalidation_work_on_a_cluster() {
    let cluster = RedisCluster::start();
    let first = cache_on_cluster(&cluster, config("ct")).await;
    let second = cache_on_cluster(&cluster, config("ct")).await;
    for i in 0..1000 {
        let tag = if i % 2 == 0 { "even" } else { "odd" };
        first
            .set(&format!("item:{i}"), entry("v").with_tags([tag, "all"]))
            .await;
    }
    // The second instance holds memory copies of a few.
    for i in 0..10 {
        assert!(second.get(&format!("item:{i}")).await.is_some());
    }
    let mut events = second.invalidation_events();

    first.invalidate_tags(&["even"]).await.unwrap();
    let event = tokio::time::timeout(Duration::from_secs(1), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(event, Invalidation::Tags { .. }), "{event:?}");

    for cache in [&first, &second] {
        for i in 0..1000 {
            assert_eq!(
                cache.get(&format!("item:{i}")).await.is_some(),
                i % 2 == 1,
                "item:{i}"
            );
        }
    }
    first.invalidate("item:1").await.unwrap();
    let event = tokio::time::timeout(Duration::from_secs(1), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(event, Invalidation::Key("item:1".into()));
    assert!(second.get("item:1").await.is_none());
    assert_eq!(first.stats().l2_errors + second.stats().l2_errors, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heavily_tagged_entry_reads_its_stamps_with_one_mget_per_hash_slot() {
    let cluster = RedisCluster::start();
    let writer = cache_on_cluster(&cluster, config("cm")).await;
    // Half the tags share a hash slot (`{shared}`); the others spread over the cluster.
    let tags: Vec<String> = (0..60)
        .map(|i| format!("{{shared}}{i}"))
        .chain((0..60).map(|i| format!("own{i}")))
        .collect();
    writer.set("k", entry("v").with_tags(tags.clone())).await;
    writer
        .set("other", entry("v").with_tags(["{shared}8", "own8"]))
        .await;
    writer.invalidate_tags(&["{shared}7"]).await.unwrap();

    // A new instance knows no stamp: reading "k" asks for all 120.
    let reader = cache_on_cluster(&cluster, config("cm")).await;
    let before = cluster.command_calls();
    assert!(reader.get("k").await.is_none(), "killed by {{shared}}7");
    let after = cluster.command_calls();
    let slots: HashSet<u16> = tags
        .iter()
        .map(|tag| fred::util::redis_keyslot(format!("cm:tag:{tag}").as_bytes()))
        .collect();
    assert_eq!(
        slots.len(),
        61,
        "one slot for the shared ones, 60 for the others"
    );
    assert_eq!(after.since(&before, "mget"), slots.len() as u64);
    assert_eq!(after.since(&before, "get"), 1, "the entry itself");

    // The stamps read landed on their own tags: "other" is alive.
    assert!(reader.get("other").await.is_some());
    assert_eq!(reader.stats().l2_errors, 0);
}

/// The primary that serves none of `keys`, so that killing it leaves them on healthy shards.
fn a_node_without(cluster: &RedisCluster, keys: &[&str]) -> usize {
    let used: HashSet<usize> = keys.iter().map(|key| cluster.node_of(key)).collect();
    (0..3)
        .find(|node| !used.contains(node))
        .expect("three primaries, at most two used")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_on_the_healthy_shards_stay_shared_while_one_master_is_down() {
    let mut cluster = RedisCluster::start();
    let writer = cache_on_cluster(&cluster, config("down")).await;
    let reader = cache_on_cluster(&cluster, config("down")).await;
    let keys: Vec<String> = (0..60).map(|i| format!("k{i}")).collect();
    let owners: Vec<usize> = keys
        .iter()
        .map(|key| cluster.node_of(&format!("down:e:{key}")))
        .collect();
    let dead = 0;
    assert!(owners.contains(&dead) && owners.iter().any(|owner| *owner != dead));

    cluster.kill_node(dead);

    // The dead master's keys fail, more often than the breaker threshold (5): one breaker for
    // the whole cluster would now skip the healthy masters too.
    for (key, _) in keys
        .iter()
        .zip(&owners)
        .filter(|(_, owner)| **owner == dead)
    {
        writer.set(key, entry("v")).await;
    }
    assert!(writer.stats().l2_errors >= 5, "{:?}", writer.stats());
    assert!(writer.stats().l2_circuit_open, "the dead master's circuit");
    for (key, _) in keys
        .iter()
        .zip(&owners)
        .filter(|(_, owner)| **owner != dead)
    {
        writer.set(key, entry("v")).await;
        let found = reader.lookup(key).await;
        assert_eq!(
            found.map(|found| found.source),
            Some(Source::Redis),
            "{key} is stored in and read from its healthy master"
        );
    }
}

mod http {
    use common::origin::{cached, get, request, send, Cached};
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    use super::*;

    async fn layer(cluster: &RedisCluster, server: &MockServer) -> Cached {
        let config = config("pend")
            .redis_cluster([cluster.url()])
            .build()
            .unwrap();
        let service = cached(config, server);
        assert!(
            service
                .cache()
                .wait_for_redis(Duration::from_secs(10))
                .await
        );
        service
    }

    /// A `GET` answered `first` once, then `then`, tagged `tag`.
    async fn versions(server: &MockServer, at: &str, first: &str, then: &str, tag: &str) {
        for (body, times) in [(first, Some(1)), (then, None)] {
            let response = ResponseTemplate::new(200)
                .insert_header("cache-control", "max-age=300")
                .insert_header("surrogate-key", tag)
                .set_body_string(body);
            let mock = Mock::given(method("GET"))
                .and(path(at))
                .respond_with(response);
            match times {
                Some(times) => mock.up_to_n_times(times).mount(server).await,
                None => mock.mount(server).await,
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_invalidation_made_while_a_master_is_down_is_applied_when_it_returns() {
        let mut cluster = RedisCluster::start();
        let item = "pend:e:http://test.local/item";
        let other = "pend:e:http://test.local/other";
        let dead = a_node_without(&cluster, &[item, other]);
        // A tag whose stamp lives on the master that goes down.
        let tag = (0..)
            .map(|i| format!("t{i}"))
            .find(|tag| cluster.node_of(&format!("pend:tag:{tag}")) == dead)
            .expect("some tag hashes there");
        let server = MockServer::start().await;
        versions(&server, "/item", "item v1", "item v2", "item").await;
        versions(&server, "/other", "other v1", "other v2", &tag).await;
        Mock::given(method("PUT"))
            .and(path("/item"))
            .respond_with(
                ResponseTemplate::new(200).insert_header("cache-invalidate", tag.as_str()),
            )
            .mount(&server)
            .await;
        let (a, b) = (
            layer(&cluster, &server).await,
            layer(&cluster, &server).await,
        );
        for at in ["/item", "/other"] {
            send(&a, get(at, &[])).await;
            // The shared tier is written after the response went out.
            a.cache().wait_for_writes().await;
            assert_eq!(
                send(&b, get(at, &[])).await.cache_status(),
                "tiered-cache; hit; detail=redis"
            );
        }

        cluster.kill_node(dead);
        // The item's key is on a healthy master; the tag's stamp is not.
        let written = send(&a, request("PUT", "/item", &[])).await;
        assert_eq!(written.status, 200);
        cluster.restart_node(dead);

        let old = |reply: &common::origin::Reply| reply.body.ends_with(b"v1");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let mut stale = Vec::new();
            for (name, service) in [("a", &a), ("b", &b)] {
                for at in ["/item", "/other"] {
                    let reply = send(service, get(at, &[])).await;
                    if old(&reply) {
                        stale.push(format!("{name}{at}: {}", reply.cache_status()));
                    }
                }
            }
            let pending = a.cache().stats().invalidations_pending;
            if stale.is_empty() && pending == 0 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "still served the old version: {stale:?}, {pending} pending"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for service in [&a, &b] {
            for at in ["/item", "/other"] {
                assert!(!old(&send(service, get(at, &[])).await), "{at} stays new");
            }
        }
    }
}
