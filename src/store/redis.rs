//! L2 on Redis, through fred connection pools: the [`Backend`] of one Redis or a Redis Cluster.
//!
//! Every command carries `l2.timeout`. While a connection is down commands fail at once, except
//! during start-up (until the first connection, at most `l2.connect_wait`), when they wait for
//! it within the timeout, so requests sent right after start reach Redis. Pools reconnect in the
//! background with exponential backoff from 1 ms to 500 ms, the first attempt at once.
//!
//! On a cluster each primary has its own pool, routed to by the key's hash slot from a
//! `CLUSTER SLOTS` table this backend keeps (re-read every few seconds, and at once after a
//! redirection): fred's cluster client stops serving every node while it cannot reach one, and
//! one dead master must not switch off the healthy ones.
//!
//! Layout: `{prefix}:e:{key}` holds the encoded entry, with `PX` set to the entry's remaining
//! lifetime (fresh plus stale window); `{prefix}:tag:{tag}` holds the tag's last invalidation
//! time; invalidations are published on `{prefix}:inv` and a subscriber connection receives the
//! other instances'. A re-connection of the subscriber after it was lost is reported (events may
//! have been missed meanwhile); the first connection is not.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use fred::clients::{Client, Pool, SubscriberClient, WithOptions};
use fred::error::{Error as RedisError, ErrorKind};
use fred::interfaces::{
    ClientLike, ClusterInterface, EventInterface, KeysInterface, LuaInterface, PubsubInterface,
};
use fred::types::cluster::ClusterRouting;
use fred::types::config::{Config, Options, ReconnectPolicy, Server, ServerConfig};
use fred::types::scan::Scanner;
use fred::types::{Expiration, SetOptions, Value};
use fred::util::redis_keyslot;
use futures_util::StreamExt;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use super::backend::{Answer, Backend, OnConnect, Place, Shard};
use super::events::{EventSink, Invalidation};
use super::tags;
use super::tier::TierError;
use super::Source;
use crate::config::{CacheConfig, ConfigError, L2Config};
use crate::Error;

/// Keys asked for per SCAN page, and so deleted per UNLINK, in prefix invalidation.
const SCAN_PAGE: u32 = 1000;
/// Most keys in one multi-key command (MGET, stamp script, UNLINK): Redis serves nobody else
/// while it runs one.
const SLOT_BATCH: usize = 1024;
/// Writes the stamp `ARGV[1]` under every key of `KEYS`, expiring in `ARGV[2]` ms.
/// Stamps `KEYS` with the generation `ARGV[1]` unless one holds a newer one (two invalidations
/// may reach Redis in the other order than they took their generations), for `ARGV[2]` ms.
const STAMP_SCRIPT: &str = "local new = tonumber(ARGV[1]) \
    for _, key in ipairs(KEYS) do \
    if (tonumber(redis.call('GET', key)) or 0) < new then \
    redis.call('SET', key, ARGV[1], 'PX', ARGV[2]) \
    else redis.call('PEXPIRE', key, ARGV[2]) end end return 0";
/// Deletes the lock `KEYS[1]` if `ARGV[1]` holds it.
const RELEASE_SCRIPT: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";
/// Redis rejects expiries that overflow its clock; a century is far enough.
const MAX_PX_MS: u64 = 100 * 365 * 24 * 3600 * 1000;
/// The policy sleeps before every attempt, the first included: 1 ms, doubling to
/// [`RECONNECT_MAX_DELAY_MS`].
const RECONNECT_MIN_DELAY_MS: u32 = 1;
/// Short, so that Redis coming back is noticed within about half a second.
const RECONNECT_MAX_DELAY_MS: u32 = 500;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a cluster's slot table is re-read when nothing redirected a command.
const ROUTING_REFRESH: Duration = Duration::from_secs(5);

/// `ttl` in whole milliseconds, at most [`MAX_PX_MS`].
fn millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis())
        .unwrap_or(u64::MAX)
        .min(MAX_PX_MS)
}

/// The `PX` expiry for `ttl`: at least a millisecond, at most [`MAX_PX_MS`].
fn px(ttl: Duration) -> Expiration {
    // `millis` is at most a century, well inside i64.
    Expiration::PX(i64::try_from(millis(ttl).max(1)).unwrap_or(i64::MAX))
}

pub(crate) struct RedisBackend {
    route: Route,
    subscriber: SubscriberClient,
    /// Becomes true once the subscriber listens on the invalidation channel.
    subscribed: watch::Receiver<bool>,
    channel: String,
    /// Identifies this instance's own events on the channel.
    instance: String,
    prefix: String,
    /// Commands on a connection that was made: fail at once while it is down.
    options: Options,
    /// Commands before a connection was made, during start-up: wait for it, within the timeout.
    starting: Options,
    startup_until: Instant,
}

/// Where commands go: the one server, or a cluster's primaries.
enum Route {
    Single(Arc<Node>),
    Cluster(Arc<Cluster>),
}

/// A pool of connections to one server.
struct Node {
    pool: Pool,
    /// Pooled connections that were made at least once.
    made: Arc<AtomicUsize>,
}

impl Node {
    fn connected(&self) -> bool {
        self.pool.clients().iter().all(ClientLike::is_connected)
    }

    /// Whether every pooled connection was made once: from then on a lost connection is a
    /// failure, not start-up.
    fn made(&self) -> bool {
        self.made.load(Ordering::Acquire) >= self.pool.size()
    }
}

/// What it takes to connect to one more server.
struct Connector {
    config: Config,
    timeout: Duration,
    pool_size: usize,
    on_connect: OnConnect,
}

impl Connector {
    /// A pool to `server` (`None`: the configured one), connecting in the background; each
    /// (re)connection is reported to the shard's breaker.
    fn node(&self, server: Option<&Server>) -> Result<Node, RedisError> {
        let mut config = self.config.clone();
        if let Some(server) = server {
            config.server = ServerConfig::Centralized {
                server: server.clone(),
            };
        }
        let pool = builder(config, self.timeout).build_pool(self.pool_size)?;
        let shard = server.map_or_else(Shard::default, |server| Shard::named(&server.to_string()));
        let made = Arc::new(AtomicUsize::new(0));
        for client in pool.clients() {
            let (on_connect, shard, made) = (
                Arc::clone(&self.on_connect),
                shard.clone(),
                Arc::clone(&made),
            );
            let first = AtomicBool::new(true);
            drop(client.on_reconnect(move |_server| {
                if first.swap(false, Ordering::AcqRel) {
                    made.fetch_add(1, Ordering::AcqRel);
                }
                on_connect(&shard);
                async { Ok(()) }
            }));
        }
        // The connection tasks run until `quit`; failures are retried by the policy.
        drop(pool.connect());
        Ok(Node { pool, made })
    }
}

/// A Redis Cluster: one pool per primary, found by hash slot.
struct Cluster {
    connector: Connector,
    seeds: Vec<Server>,
    routing: RwLock<ClusterRouting>,
    nodes: RwLock<HashMap<Server, Arc<Node>>>,
    /// Becomes true once the slot table was read.
    known: watch::Sender<bool>,
    /// Asks for the slot table to be read again (a redirection, an unknown slot).
    refresh: Arc<Notify>,
}

impl RedisBackend {
    /// Builds the pools and the subscriber and starts connecting in the background; never waits
    /// for Redis.
    pub(crate) fn connect(
        config: &CacheConfig,
        on_connect: OnConnect,
        events: EventSink,
    ) -> Result<Self, Error> {
        tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let redis_config = redis_config(&config.l2)?;
        let timeout = config.l2.timeout;
        let subscriber = builder(redis_config.clone(), timeout)
            .build_subscriber_client()
            .map_err(client_error)?;
        let channel = format!("{}:inv", config.l2.prefix);
        let instance = super::random_id();
        let subscribed = listen(&subscriber, &channel, &instance, events);
        drop(subscriber.connect());
        let seeds = redis_config.server.hosts();
        let clustered = redis_config.server.is_clustered();
        let connector = Connector {
            config: redis_config,
            timeout,
            pool_size: config.l2.pool_size,
            on_connect,
        };
        let route = if clustered {
            Route::Cluster(Cluster::start(connector, seeds))
        } else {
            Route::Single(Arc::new(connector.node(None).map_err(client_error)?))
        };
        let options = |fail_fast| Options {
            timeout: Some(timeout),
            fail_fast,
            max_attempts: Some(1),
            ..Options::default()
        };
        Ok(Self {
            route,
            subscriber,
            subscribed,
            channel,
            instance,
            prefix: config.l2.prefix.clone(),
            options: options(true),
            starting: options(false),
            startup_until: Instant::now() + config.l2.connect_wait,
        })
    }

    fn entry_key(&self, key: &str) -> String {
        format!("{}:e:{key}", self.prefix)
    }

    /// `{prefix}:tag:{tag}`; a tag's soft-purge stamp is kept in the same hash slot as its
    /// stamp, so reading both stays one `MGET` per slot on a cluster.
    fn tag_key(&self, tag: &str) -> String {
        match tags::soft_of(tag) {
            None => format!("{}:tag:{tag}", self.prefix),
            Some(hard) => soft_stamp_key(&self.tag_key(hard)),
        }
    }

    fn lock_key(&self, key: &str) -> String {
        format!("{}:lock:{key}", self.prefix)
    }

    fn redis_key(&self, place: Place<'_>) -> String {
        match place {
            Place::Entry(key) => self.entry_key(key),
            Place::Tag(tag) => self.tag_key(tag),
            Place::Lock(key) => self.lock_key(key),
            Place::Events => self.channel.clone(),
            Place::Generation => self.generation_key(),
        }
    }

    /// `{prefix}:gen`: the counter every instance takes invalidation generations from.
    fn generation_key(&self) -> String {
        format!("{}:gen", self.prefix)
    }

    fn is_cluster(&self) -> bool {
        matches!(self.route, Route::Cluster(_))
    }

    /// The pool serving `redis_key`.
    fn node(&self, redis_key: &str) -> Result<Arc<Node>, TierError> {
        match &self.route {
            Route::Single(node) => Ok(Arc::clone(node)),
            Route::Cluster(cluster) => cluster.node_for(redis_key),
        }
    }

    /// The pool of a shard named by [`Backend::shard`].
    fn node_of_shard(&self, shard: &Shard) -> Result<Arc<Node>, TierError> {
        match (&self.route, shard.name()) {
            (Route::Single(node), _) => Ok(Arc::clone(node)),
            (Route::Cluster(cluster), Some(name)) => cluster.node_named(name),
            (Route::Cluster(_), None) => Err(unknown_slots()),
        }
    }

    /// A client of `node` with the options for now: waiting for the connection during start-up
    /// while it has not been made; failing at once otherwise.
    fn client(&self, node: &Node) -> WithOptions<Client> {
        let starting = !node.made() && Instant::now() < self.startup_until;
        node.pool.next().with_options(if starting {
            &self.starting
        } else {
            &self.options
        })
    }

    /// The tier's error for `err`; a redirection on a cluster also has the slot table re-read.
    fn error(&self, err: RedisError) -> TierError {
        if let Route::Cluster(cluster) = &self.route {
            let details = err.details();
            if ["MOVED", "ASK", "CLUSTERDOWN"]
                .iter()
                .any(|reply| details.starts_with(reply))
            {
                cluster.refresh.notify_one();
            }
        }
        tier_error(err)
    }

    /// UNLINK `keys`, all on `node`: one command per batch of [`slot_batches`], sent together.
    async fn unlink(&self, node: &Node, keys: &[String]) -> Result<u64, TierError> {
        let client = self.client(node);
        let unlinks = slot_batches(keys, self.is_cluster())
            .into_iter()
            .map(|batch| client.unlink::<u64, _>(batch.keys));
        let mut removed = 0;
        for result in futures_util::future::join_all(unlinks).await {
            removed += result.map_err(|err| self.error(err))?;
        }
        Ok(removed)
    }

    /// One command per batch of [`slot_batches`] of `keys`, each on the pool of its slot, sent
    /// together; `command` makes a batch's command from a client and the batch's keys.
    async fn per_batch<'a, T, F, Fut>(
        &self,
        keys: &'a [String],
        command: F,
    ) -> Result<Vec<(Batch<'a>, T)>, TierError>
    where
        F: Fn(WithOptions<Client>, Vec<&'a str>) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let mut sends = Vec::new();
        for batch in slot_batches(keys, self.is_cluster()) {
            let node = self.node(batch.keys[0])?;
            let send = command(self.client(&node), batch.keys.clone());
            sends.push(async move { (batch, send.await) });
        }
        let mut answers = Vec::with_capacity(sends.len());
        for (batch, answer) in futures_util::future::join_all(sends).await {
            answers.push((batch, answer.map_err(|err| self.error(err))?));
        }
        Ok(answers)
    }
}

impl Backend for RedisBackend {
    fn source(&self) -> Source {
        Source::Redis
    }

    fn shard(&self, place: Place<'_>) -> Shard {
        match &self.route {
            Route::Single(_) => Shard::default(),
            Route::Cluster(cluster) => cluster.shard_of(&self.redis_key(place)),
        }
    }

    fn shards(&self) -> Vec<Shard> {
        match &self.route {
            Route::Single(_) => vec![Shard::default()],
            Route::Cluster(cluster) => cluster.shards(),
        }
    }

    /// Until every pooled connection is up and the subscriber listens, or `timeout`.
    fn wait_connected(&self, timeout: Duration) -> Pin<Box<dyn Future<Output = bool> + Send + '_>> {
        Box::pin(async move {
            let mut subscribed = self.subscribed.clone();
            let connected = async {
                let nodes = match &self.route {
                    Route::Single(node) => vec![Arc::clone(node)],
                    Route::Cluster(cluster) => cluster.primaries_connecting().await,
                };
                for node in nodes {
                    while !node.connected() {
                        // Resolves with the outcome of the next connection attempt.
                        let _ = node.pool.wait_for_connect().await;
                    }
                }
                let _ = subscribed.wait_for(|listening| *listening).await;
            };
            tokio::time::timeout(timeout, connected).await.is_ok()
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> Answer<'a, Option<Bytes>> {
        Box::pin(async move {
            let redis_key = self.entry_key(key);
            let node = self.node(&redis_key)?;
            self.client(&node)
                .get(redis_key.as_str())
                .await
                .map_err(|err| self.error(err))
        })
    }

    fn set<'a>(&'a self, key: &'a str, value: Bytes, ttl: Duration) -> Answer<'a, ()> {
        Box::pin(async move {
            let redis_key = self.entry_key(key);
            let node = self.node(&redis_key)?;
            self.client(&node)
                .set::<(), _, _>(redis_key, value, Some(px(ttl)), None, false)
                .await
                .map_err(|err| self.error(err))
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> Answer<'a, ()> {
        Box::pin(async move {
            let redis_key = self.entry_key(key);
            let node = self.node(&redis_key)?;
            self.unlink(&node, &[redis_key]).await.map(drop)
        })
    }

    /// SCAN (never KEYS) page by page on the shard's server, deleting each page.
    fn delete_prefix<'a>(&'a self, shard: &'a Shard, prefix: &'a str) -> Answer<'a, u64> {
        Box::pin(async move {
            let node = self.node_of_shard(shard)?;
            let pattern = format!("{}*", glob_escape(&self.entry_key(prefix)));
            let mut pages = node
                .pool
                .next()
                .scan(pattern, Some(SCAN_PAGE), None)
                .boxed();
            let mut removed = 0;
            while let Some(page) = pages.next().await {
                let mut page = page.map_err(|err| self.error(err))?;
                let keys: Vec<String> = page
                    .take_results()
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|key| key.into_string())
                    .collect();
                removed += self.unlink(&node, &keys).await?;
                page.next();
            }
            Ok(removed)
        })
    }

    /// One MGET per batch of [`slot_batches`] (one on one Redis; on a cluster one per hash
    /// slot, since a multi-key command must stay within one), sent together.
    fn tag_stamps<'a>(&'a self, tags: &'a [&'a str]) -> Answer<'a, Vec<u64>> {
        Box::pin(async move {
            let keys: Vec<String> = tags.iter().map(|tag| self.tag_key(tag)).collect();
            let reads = self
                .per_batch(&keys, |client, keys| async move {
                    client.mget::<Vec<Option<u64>>, _>(keys).await
                })
                .await?;
            let mut stamps = vec![0; keys.len()];
            for (batch, read) in reads {
                for (&position, stamp) in batch.positions.iter().zip(read) {
                    stamps[position] = stamp.unwrap_or_default();
                }
            }
            Ok(stamps)
        })
    }

    /// One script per batch of [`slot_batches`] (so one command for a few tags on one Redis),
    /// sent together.
    fn stamp_tags<'a>(&'a self, tags: &'a [&'a str], stamp: u64, ttl: Duration) -> Answer<'a, ()> {
        Box::pin(async move {
            let keys: Vec<String> = tags.iter().map(|tag| self.tag_key(tag)).collect();
            let args = vec![stamp.to_string(), millis(ttl).max(1).to_string()];
            self.per_batch(&keys, |client, keys| {
                let args = args.clone();
                async move { client.eval::<(), _, _, _>(STAMP_SCRIPT, keys, args).await }
            })
            .await
            .map(drop)
        })
    }

    /// INCR: atomic, and one key, so one slot on a cluster.
    fn next_generation(&self) -> Answer<'_, u64> {
        Box::pin(async move {
            let redis_key = self.generation_key();
            let node = self.node(&redis_key)?;
            self.client(&node)
                .incr::<u64, _>(redis_key)
                .await
                .map_err(|err| self.error(err))
        })
    }

    fn generation(&self) -> Answer<'_, u64> {
        Box::pin(async move {
            let redis_key = self.generation_key();
            let node = self.node(&redis_key)?;
            let generation: Option<u64> = self
                .client(&node)
                .get(redis_key)
                .await
                .map_err(|err| self.error(err))?;
            Ok(generation.unwrap_or_default())
        })
    }

    /// SET NX PX.
    fn try_lock<'a>(&'a self, key: &'a str, token: &'a str, ttl: Duration) -> Answer<'a, bool> {
        Box::pin(async move {
            let redis_key = self.lock_key(key);
            let node = self.node(&redis_key)?;
            let taken: Option<String> = self
                .client(&node)
                .set(redis_key, token, Some(px(ttl)), Some(SetOptions::NX), false)
                .await
                .map_err(|err| self.error(err))?;
            Ok(taken.is_some())
        })
    }

    /// A script, so that a lock that expired and was taken by another instance stays.
    fn unlock<'a>(&'a self, key: &'a str, token: &'a str) -> Answer<'a, ()> {
        Box::pin(async move {
            let redis_key = self.lock_key(key);
            let node = self.node(&redis_key)?;
            self.client(&node)
                .eval::<i64, _, _, _>(RELEASE_SCRIPT, redis_key, token)
                .await
                .map(drop)
                .map_err(|err| self.error(err))
        })
    }

    /// On a cluster through the primary of the channel's slot: Redis Cluster passes a message
    /// published on any node to the subscribers of every node.
    fn publish<'a>(&'a self, event: &'a Invalidation) -> Answer<'a, ()> {
        Box::pin(async move {
            let node = self.node(&self.channel)?;
            self.client(&node)
                .publish::<(), _, _>(self.channel.as_str(), event.encode(&self.instance))
                .await
                .map_err(|err| self.error(err))
        })
    }
}

impl Cluster {
    /// The cluster of `seeds`; its slot table is read in the background, at once.
    fn start(connector: Connector, seeds: Vec<Server>) -> Arc<Self> {
        let cluster = Arc::new(Self {
            connector,
            seeds,
            routing: RwLock::new(ClusterRouting::new()),
            nodes: RwLock::new(HashMap::new()),
            known: watch::Sender::new(false),
            refresh: Arc::new(Notify::new()),
        });
        tokio::spawn(keep_routing(Arc::downgrade(&cluster)));
        cluster
    }

    fn primaries(&self) -> Vec<Server> {
        self.routing
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .unique_primary_nodes()
    }

    fn server_for(&self, redis_key: &str) -> Option<Server> {
        self.routing
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get_server(redis_keyslot(redis_key.as_bytes()))
            .cloned()
    }

    fn shard_of(&self, redis_key: &str) -> Shard {
        self.server_for(redis_key)
            .map_or_else(Shard::default, |server| Shard::named(&server.to_string()))
    }

    fn shards(&self) -> Vec<Shard> {
        let primaries = self.primaries();
        if primaries.is_empty() {
            return vec![Shard::default()];
        }
        primaries
            .iter()
            .map(|server| Shard::named(&server.to_string()))
            .collect()
    }

    fn node_for(&self, redis_key: &str) -> Result<Arc<Node>, TierError> {
        match self.server_for(redis_key) {
            Some(server) => self.node(&server),
            None => {
                self.refresh.notify_one();
                Err(unknown_slots())
            }
        }
    }

    fn node_named(&self, name: &str) -> Result<Arc<Node>, TierError> {
        let server = self
            .primaries()
            .into_iter()
            .find(|server| server.to_string() == name)
            .ok_or_else(unknown_slots)?;
        self.node(&server)
    }

    /// The pool of `server`, made on first use.
    fn node(&self, server: &Server) -> Result<Arc<Node>, TierError> {
        let known = self
            .nodes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(server)
            .cloned();
        if let Some(node) = known {
            return Ok(node);
        }
        let mut nodes = self.nodes.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(node) = nodes.get(server) {
            return Ok(Arc::clone(node));
        }
        let node = Arc::new(
            self.connector
                .node(Some(server))
                .map_err(|err| TierError::Backend(err.to_string()))?,
        );
        nodes.insert(server.clone(), Arc::clone(&node));
        Ok(node)
    }

    /// The pools of every primary, once the slot table is known.
    async fn primaries_connecting(&self) -> Vec<Arc<Node>> {
        let _ = self.known.subscribe().wait_for(|known| *known).await;
        self.primaries()
            .iter()
            .filter_map(|server| self.node(server).ok())
            .collect()
    }

    /// Reads `CLUSTER SLOTS` from whichever known primary or seed answers first, and connects
    /// to every primary it names.
    async fn read_routing(&self) -> Result<(), TierError> {
        let mut candidates = self.primaries();
        for seed in &self.seeds {
            if !candidates.contains(seed) {
                candidates.push(seed.clone());
            }
        }
        // Waiting for the connection: a pool made just now is still connecting.
        let options = Options {
            timeout: Some(self.connector.timeout.max(Duration::from_millis(500))),
            fail_fast: false,
            max_attempts: Some(1),
            ..Options::default()
        };
        let mut reads = Vec::with_capacity(candidates.len());
        for server in candidates {
            let node = self.node(&server)?;
            let options = options.clone();
            reads.push(Box::pin(async move {
                let slots: Value = node
                    .pool
                    .with_options(&options)
                    .cluster_slots()
                    .await
                    .map_err(tier_error)?;
                ClusterRouting::from_cluster_slots(slots, server.host.clone())
                    .map_err(|err| TierError::Backend(err.to_string()))
            }));
        }
        let (routing, _) = futures_util::future::select_ok(reads).await?;
        let primaries = routing.unique_primary_nodes();
        *self.routing.write().unwrap_or_else(PoisonError::into_inner) = routing;
        for server in &primaries {
            self.node(server)?;
        }
        self.known.send_replace(true);
        Ok(())
    }
}

/// Keeps a cluster's slot table current while the cluster is in use: read at once (retried with
/// the reconnection backoff until it answers), then every [`ROUTING_REFRESH`] or when asked.
async fn keep_routing(cluster: Weak<Cluster>) {
    let first_pause = Duration::from_millis(u64::from(RECONNECT_MIN_DELAY_MS));
    let mut pause = first_pause;
    loop {
        let Some(current) = cluster.upgrade() else {
            return;
        };
        let refresh = Arc::clone(&current.refresh);
        let wait = match current.read_routing().await {
            Ok(()) => {
                pause = first_pause;
                ROUTING_REFRESH
            }
            Err(err) => {
                tracing::debug!(error = %err, "cannot read the cluster's slots yet");
                pause = (pause * 2).min(Duration::from_millis(u64::from(RECONNECT_MAX_DELAY_MS)));
                pause
            }
        };
        drop(current);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = refresh.notified() => {}
        }
    }
}

fn unknown_slots() -> TierError {
    TierError::Unavailable("the cluster's slots are not known yet".to_owned())
}

/// The fred configuration for `[l2]`: one Redis (`url`) or a cluster (`cluster` nodes).
fn redis_config(l2: &L2Config) -> Result<Config, ConfigError> {
    let parse = |key: String, url: &str| {
        Config::from_url(url).map_err(|err| {
            ConfigError::invalid(key, format!("invalid Redis URL: {}", err.details()))
        })
    };
    if let Some(url) = &l2.url {
        return parse("l2.url".to_owned(), url);
    }
    let mut nodes = Vec::with_capacity(l2.cluster.len());
    let mut first = None;
    for (index, url) in l2.cluster.iter().enumerate() {
        let node = parse(format!("l2.cluster[{index}]"), url)?;
        nodes.extend(node.server.hosts());
        first.get_or_insert(node);
    }
    let mut config = first.ok_or_else(|| ConfigError::invalid("l2.url", "no Redis configured"))?;
    config.server = ServerConfig::Clustered {
        hosts: nodes,
        policy: Default::default(),
    };
    Ok(config)
}

/// A fred builder with the cache's connection rules: every command bounded by `timeout` and
/// tried once, background reconnection with exponential backoff (also after a refused start),
/// the first attempt at once.
pub(crate) fn builder(mut config: Config, timeout: Duration) -> fred::types::Builder {
    // Retry the first connection too (fred gives up after one attempt otherwise); commands
    // still fail fast while disconnected, through their own options.
    config.fail_fast = false;
    let mut builder = fred::types::Builder::from_config(config);
    let mut policy =
        ReconnectPolicy::new_exponential(0, RECONNECT_MIN_DELAY_MS, RECONNECT_MAX_DELAY_MS, 2);
    // The default jitter adds up to 50 ms to every sleep, the one before the first attempt too.
    policy.set_jitter(0);
    builder
        .with_performance_config(|performance| performance.default_command_timeout = timeout)
        .with_connection_config(|connection| {
            connection.connection_timeout = CONNECT_TIMEOUT;
            connection.internal_command_timeout = timeout.max(Duration::from_millis(500));
            connection.max_command_attempts = 1;
        })
        .set_policy(policy);
    builder
}

/// A client that cannot be built: reported as a problem of `l2.url`.
pub(crate) fn client_error(err: RedisError) -> ConfigError {
    ConfigError::invalid(
        "l2.url",
        format!("cannot build a Redis client: {}", err.details()),
    )
}

impl Drop for RedisBackend {
    fn drop(&mut self) {
        // Stop the reconnecting connection tasks; without a runtime they end with the runtime.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let pools: Vec<Pool> = match &self.route {
            Route::Single(node) => vec![node.pool.clone()],
            Route::Cluster(cluster) => cluster
                .nodes
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .values()
                .map(|node| node.pool.clone())
                .collect(),
        };
        let subscriber = self.subscriber.clone();
        runtime.spawn(async move {
            for pool in pools {
                let _ = pool.quit().await;
            }
            let _ = subscriber.quit().await;
        });
    }
}

/// Subscribes on every (re)connection and forwards other instances' events to `events`. A
/// connection error marks the subscription lost; the next connection after that is reported as
/// [`Invalidation::Resubscribed`], since events may have been missed meanwhile. The first
/// connection of a start that met no error is not: there was nothing to miss.
fn listen(
    subscriber: &SubscriberClient,
    channel: &str,
    instance: &str,
    events: EventSink,
) -> watch::Receiver<bool> {
    let (subscribed, receiver) = watch::channel(false);
    let lost = Arc::new(AtomicBool::new(false));
    let (disconnected, lost_on_error) = (subscribed.clone(), Arc::clone(&lost));
    drop(subscriber.on_error(move |_| {
        // A connection error ends the subscription until the next reconnection.
        disconnected.send_replace(false);
        lost_on_error.store(true, Ordering::Release);
        async { Ok(()) }
    }));
    let reconnect_events = events.clone();
    let resubscriber = subscriber.clone();
    let subscription = channel.to_owned();
    drop(subscriber.on_reconnect(move |_server| {
        let (subscriber, channel, events) = (
            resubscriber.clone(),
            subscription.clone(),
            reconnect_events.clone(),
        );
        let subscribed = subscribed.clone();
        let missed = lost.swap(false, Ordering::AcqRel);
        async move {
            if missed {
                events(Invalidation::Resubscribed);
            }
            match subscriber.subscribe(channel).await {
                Ok(()) => {
                    subscribed.send_replace(true);
                }
                Err(err) => tracing::warn!(error = %err, "cannot subscribe to invalidation events"),
            }
            Ok(())
        }
    }));
    let own = instance.to_owned();
    drop(subscriber.on_message(move |message| {
        let text = message.value.as_str().map(|text| text.into_owned());
        match text.as_deref().and_then(Invalidation::decode) {
            Some((sender, event)) if sender != own => events(event),
            Some(_) => {}
            None => tracing::debug!("ignoring a malformed invalidation event"),
        }
        async { Ok(()) }
    }));
    receiver
}

fn tier_error(err: RedisError) -> TierError {
    match err.kind() {
        ErrorKind::Timeout => TierError::Timeout,
        ErrorKind::IO | ErrorKind::Canceled | ErrorKind::Backpressure => {
            TierError::Unavailable(err.details().to_owned())
        }
        _ => TierError::Backend(err.to_string()),
    }
}

/// Keys for one multi-key command, with their positions in the list they were taken from.
#[derive(Debug)]
struct Batch<'a> {
    positions: Vec<usize>,
    keys: Vec<&'a str>,
}

/// `keys` in batches that one multi-key command can take: at most [`SLOT_BATCH`] keys, and on a
/// cluster (which refuses a command whose keys hash to different slots) keys of one slot.
fn slot_batches(keys: &[String], clustered: bool) -> Vec<Batch<'_>> {
    let mut slots: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
    for (position, key) in keys.iter().enumerate() {
        let slot = if clustered {
            redis_keyslot(key.as_bytes())
        } else {
            0
        };
        slots.entry(slot).or_default().push(position);
    }
    let batch = |positions: &[usize]| Batch {
        positions: positions.to_vec(),
        keys: positions
            .iter()
            .map(|&position| keys[position].as_str())
            .collect(),
    };
    slots
        .values()
        .flat_map(|positions| positions.chunks(SLOT_BATCH).map(batch))
        .collect()
}

/// Escapes Redis glob metacharacters so a prefix matches literally.
fn glob_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for ch in text.chars() {
        if matches!(ch, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(ch);
    }
    escaped
}

/// The key of a tag's soft-purge stamp, hashed like `hard` (the tag's stamp key) unless `hard`
/// has a `}` but no hash tag (then it is one more `MGET`, nothing else).
fn soft_stamp_key(hard: &str) -> String {
    if has_hash_tag(hard) {
        format!("{hard}:soft")
    } else {
        format!("{{{hard}}}:soft")
    }
}

/// Whether Redis Cluster hashes `key` by a hash tag: the part between its first `{` and the
/// first `}` after it, when that part is not empty.
fn has_hash_tag(key: &str) -> bool {
    key.split_once('{')
        .and_then(|(_, rest)| rest.find('}'))
        .is_some_and(|end| end > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_batched_by_slot_only_on_a_cluster() {
        let keys: Vec<String> = ["{a}1", "b", "{a}2", "c"]
            .iter()
            .map(|key| (*key).to_owned())
            .collect();
        let positions = |batches: Vec<Batch<'_>>| -> Vec<Vec<usize>> {
            batches.into_iter().map(|batch| batch.positions).collect()
        };
        assert_eq!(positions(slot_batches(&keys, false)), [vec![0, 1, 2, 3]]);
        let clustered = slot_batches(&keys, true);
        assert_eq!(
            clustered.len(),
            3,
            "{{a}}1 and {{a}}2 share a slot: {clustered:?}"
        );
        let shared = clustered.iter().find(|batch| batch.positions == [0, 2]);
        assert_eq!(
            shared.map(|batch| batch.keys.clone()),
            Some(vec!["{a}1", "{a}2"])
        );
        let many: Vec<String> = (0..SLOT_BATCH + 1).map(|i| i.to_string()).collect();
        let sizes: Vec<usize> = positions(slot_batches(&many, false))
            .iter()
            .map(Vec::len)
            .collect();
        assert_eq!(sizes, [SLOT_BATCH, 1]);
    }

    #[test]
    fn a_soft_purge_stamp_shares_its_tags_hash_slot() {
        for hard in ["ttc:tag:own8", "ttc:tag:{shared}8", "ttc:tag:{"] {
            let soft = soft_stamp_key(hard);
            assert_ne!(soft, hard);
            assert_eq!(
                redis_keyslot(soft.as_bytes()),
                redis_keyslot(hard.as_bytes()),
                "{hard} → {soft}"
            );
        }
    }

    #[test]
    fn glob_metacharacters_are_escaped() {
        assert_eq!(glob_escape("ttc:e:a*b?[c]\\"), "ttc:e:a\\*b\\?\\[c\\]\\\\");
    }
}
