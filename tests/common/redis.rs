//! A private `redis-server` per test, and cache builders on it.

use super::process::{free_port, run_installed, ServerProcess};

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fred::clients::Client;
use fred::interfaces::ClientLike;
use fred::types::config::Config;
pub use tower_tiered_cache::CacheConfigBuilder;
use tower_tiered_cache::{CacheConfig, TieredCache};

/// A `redis-server` on a free loopback port, without persistence, killed on drop.
pub struct RedisServer {
    process: ServerProcess,
    port: u16,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts a server on a free port (retrying another port if one is taken meanwhile).
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        for _ in 0..5 {
            let port = free_port();
            if let Some(child) = spawn_redis(port, dir.path()) {
                return Self {
                    process: ServerProcess::running(child),
                    port,
                    dir,
                };
            }
        }
        panic!("redis-server did not start on a free port (5 attempts)");
    }

    /// A port nothing listens on, for "Redis refused" tests; start it later with [`Self::restart`].
    pub fn not_started() -> Self {
        Self {
            process: ServerProcess::default(),
            port: free_port(),
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// SIGKILL, and wait until the process is gone.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts the server again on the same port (after [`Self::kill`] or [`Self::not_started`]).
    pub fn restart(&mut self) {
        self.kill();
        let child =
            spawn_redis(self.port, self.dir.path()).expect("redis-server restarts on its port");
        self.process = ServerProcess::running(child);
    }

    /// SIGSTOP: the server keeps its connections but answers nothing.
    pub fn pause(&self) {
        self.process.pause();
    }

    /// SIGCONT after [`Self::pause`].
    pub fn resume(&self) {
        self.process.resume();
    }

    /// Calls of each command (`get`, `mget`, …) since the server started (`INFO commandstats`).
    pub fn command_calls(&self) -> CommandCalls {
        command_calls(self.port)
    }

    /// A connected fred client, to look at what the cache wrote.
    pub async fn client(&self) -> Client {
        let client = Client::new(Config::from_url(&self.url()).unwrap(), None, None, None);
        client.init().await.expect("test client connects");
        client
    }
}

/// Spawns redis-server and waits for its "Ready to accept connections" line; `None` if it exits
/// first (for example because the port was taken).
fn spawn_redis(port: u16, dir: &std::path::Path) -> Option<Child> {
    spawn_redis_with(port, dir, &[])
}

fn spawn_redis_with(port: u16, dir: &std::path::Path, extra: &[&str]) -> Option<Child> {
    let mut command = Command::new("redis-server");
    command
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--logfile",
            "",
        ])
        .arg("--dir")
        .arg(dir)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = run_installed(&mut command, "redis-server", Command::spawn);
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut lines = BufReader::new(stdout).lines();
    let ready = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|line| line.contains("Ready to accept connections"));
    // Keep draining the log so the server never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    if ready {
        Some(child)
    } else {
        let _ = child.kill();
        let _ = child.wait();
        None
    }
}

/// A config builder for tests: small memory tier, short timeouts, a prefix unique to the test.
pub fn config(prefix: &str) -> CacheConfigBuilder {
    CacheConfig::builder()
        .l1_size(16 * 1024 * 1024)
        .redis_prefix(prefix)
        .l2_timeout(Duration::from_millis(200))
}

/// A cache on `server`, connected before it is returned.
pub async fn cache_on(server: &RedisServer, builder: CacheConfigBuilder) -> TieredCache {
    let cache = TieredCache::new(builder.redis_url(server.url()).build().unwrap()).unwrap();
    assert!(
        cache.wait_for_redis(Duration::from_secs(5)).await,
        "cache connects to its test redis"
    );
    cache
}

/// A three-primary Redis Cluster on loopback (no replicas), killed on drop.
pub struct RedisCluster {
    nodes: Vec<ServerProcess>,
    ports: Vec<u16>,
    dir: tempfile::TempDir,
}

/// Without full coverage the healthy primaries keep serving their slots while one is down
/// (there are no replicas to take over).
const CLUSTER_NODE: [&str; 6] = [
    "--cluster-enabled",
    "yes",
    "--cluster-node-timeout",
    "2000",
    "--cluster-require-full-coverage",
    "no",
];

impl RedisCluster {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut nodes = Vec::new();
        let mut ports = Vec::new();
        while nodes.len() < 3 {
            let port = free_cluster_port();
            let node_dir = dir.path().join(port.to_string());
            std::fs::create_dir_all(&node_dir).expect("node dir");
            if let Some(child) = spawn_redis_with(port, &node_dir, &CLUSTER_NODE) {
                nodes.push(ServerProcess::running(child));
                ports.push(port);
            }
        }
        let addresses: Vec<String> = ports
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect();
        let created = run_installed(
            Command::new("redis-cli")
                .args(["--cluster", "create"])
                .args(&addresses)
                .args(["--cluster-replicas", "0", "--cluster-yes"])
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
            "redis-tools",
            Command::status,
        );
        assert!(created.success(), "redis-cli --cluster create");
        let cluster = Self { nodes, ports, dir };
        cluster.wait_until_ok();
        cluster
    }

    /// Polls `CLUSTER INFO` on every node until the slots are all assigned and agreed on: the
    /// nodes announce nothing a test could wait on.
    fn wait_until_ok(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        for port in &self.ports {
            loop {
                let info = run_installed(
                    Command::new("redis-cli").args(["-p", &port.to_string(), "cluster", "info"]),
                    "redis-tools",
                    Command::output,
                );
                if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "cluster did not become ok"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// The node (an index) whose slots include `key`'s, read from `CLUSTER NODES`.
    pub fn node_of(&self, key: &str) -> usize {
        let slot = fred::util::redis_keyslot(key.as_bytes());
        (0..self.ports.len())
            .find(|&index| {
                self.slots_of(index)
                    .iter()
                    .any(|range| range.contains(&slot))
            })
            .expect("every slot is served")
    }

    /// The slot ranges node `index` serves: the `myself` line of its `CLUSTER NODES`, whose
    /// fields after the eighth are ranges like `0-5460`.
    fn slots_of(&self, index: usize) -> Vec<std::ops::RangeInclusive<u16>> {
        let output = Command::new("redis-cli")
            .args(["-p", &self.ports[index].to_string(), "cluster", "nodes"])
            .output()
            .expect("redis-cli runs");
        let text = String::from_utf8_lossy(&output.stdout);
        let myself = text
            .lines()
            .find(|line| line.contains("myself"))
            .expect("CLUSTER NODES names the node itself");
        myself
            .split_whitespace()
            .skip(8)
            .filter_map(|range| {
                let (first, last) = range.split_once('-').unwrap_or((range, range));
                Some(first.parse().ok()?..=last.parse().ok()?)
            })
            .collect()
    }

    /// SIGKILL node `index`, and wait until it is gone.
    pub fn kill_node(&mut self, index: usize) {
        self.nodes[index].kill();
    }

    /// Starts node `index` again on its port, after [`Self::kill_node`]: it rejoins with the
    /// slots its `nodes.conf` names, empty (nothing is persisted).
    pub fn restart_node(&mut self, index: usize) {
        let port = self.ports[index];
        let node_dir = self.dir.path().join(port.to_string());
        let child = spawn_redis_with(port, &node_dir, &CLUSTER_NODE)
            .expect("a cluster node restarts on its port");
        self.nodes[index] = ServerProcess::running(child);
    }

    /// Calls of each command, summed over the nodes (see [`RedisServer::command_calls`]).
    pub fn command_calls(&self) -> CommandCalls {
        let mut total = CommandCalls::default();
        for port in &self.ports {
            for (command, calls) in command_calls(*port).0 {
                *total.0.entry(command).or_default() += calls;
            }
        }
        total
    }

    /// One node's URL; the others are discovered.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.ports[0])
    }

    /// A cluster-aware fred client, to look at what the cache wrote.
    pub async fn client(&self) -> Client {
        let mut config = Config::from_url(&self.url()).unwrap();
        config.server = fred::types::config::ServerConfig::new_clustered(
            self.ports.iter().map(|port| ("127.0.0.1", *port)).collect(),
        );
        let client = Client::new(config, None, None, None);
        client
            .init()
            .await
            .expect("test client connects to the cluster");
        client
    }
}

/// Calls per command (lower case), from `INFO commandstats`.
#[derive(Clone, Debug, Default)]
pub struct CommandCalls(std::collections::HashMap<String, u64>);

impl CommandCalls {
    /// Calls of `command` (lower case) made after `earlier` was taken.
    pub fn since(&self, earlier: &Self, command: &str) -> u64 {
        let calls = |stats: &Self| stats.0.get(command).copied().unwrap_or(0);
        calls(self) - calls(earlier)
    }
}

/// `INFO commandstats` of the server on `port`: lines like `cmdstat_get:calls=3,usec=…`.
fn command_calls(port: u16) -> CommandCalls {
    let output = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "info", "commandstats"])
        .output()
        .expect("redis-cli runs");
    let text = String::from_utf8_lossy(&output.stdout);
    let calls = text
        .lines()
        .filter_map(|line| {
            let (command, stats) = line.trim().strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = stats
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((command.to_owned(), calls))
        })
        .collect();
    CommandCalls(calls)
}

/// A port that is free, and whose cluster bus port (+10000) is free too.
fn free_cluster_port() -> u16 {
    loop {
        let port = free_port();
        if port <= 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// A cache on `cluster`, connected before it is returned.
pub async fn cache_on_cluster(cluster: &RedisCluster, builder: CacheConfigBuilder) -> TieredCache {
    let cache = TieredCache::new(builder.redis_cluster([cluster.url()]).build().unwrap()).unwrap();
    assert!(
        cache.wait_for_redis(Duration::from_secs(10)).await,
        "cache connects to its test cluster"
    );
    cache
}
