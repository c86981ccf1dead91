//! A private `memcached` per test, a raw client to look at (and poke) what the cache wrote, and
//! cache builders on it.

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_memcached::{AsciiProtocol, Client, MetaProtocol};
use sha2::{Digest, Sha256};

use super::process::{free_port, run_installed, ServerProcess};
pub use tower_tiered_cache::CacheConfigBuilder;
use tower_tiered_cache::{CacheConfig, TieredCache};

/// A `memcached` on a free loopback port (TCP only, default 1 MiB item limit unless told),
/// killed on drop.
pub struct MemcachedServer {
    process: ServerProcess,
    port: u16,
    /// The loopback address it listens on: `127.0.0.1` or `::1`.
    host: &'static str,
    /// Extra `memcached` arguments, kept for [`Self::restart`].
    extra: Vec<String>,
}

impl MemcachedServer {
    /// Starts a server on a free port (retrying another port if one is taken meanwhile).
    pub fn start() -> Self {
        Self::start_with("127.0.0.1", &[])
    }

    /// Starts a server listening on `host` (`127.0.0.1` or `::1`) with `extra` arguments (such
    /// as `-I 512k`).
    pub fn start_with(host: &'static str, extra: &[&str]) -> Self {
        let extra: Vec<String> = extra.iter().map(|arg| (*arg).to_owned()).collect();
        for _ in 0..5 {
            let port = free_port();
            if let Some(child) = spawn_memcached(host, port, &extra) {
                return Self {
                    process: ServerProcess::running(child),
                    port,
                    host,
                    extra,
                };
            }
        }
        panic!("memcached did not start on a free port (5 attempts)");
    }

    /// A port nothing listens on, for "memcached refused" tests; start it later with
    /// [`Self::restart`].
    pub fn not_started() -> Self {
        Self {
            process: ServerProcess::default(),
            port: free_port(),
            host: "127.0.0.1",
            extra: Vec::new(),
        }
    }

    /// The URL the cache is configured with.
    pub fn url(&self) -> String {
        if self.host.contains(':') {
            format!("memcache://[{}]:{}", self.host, self.port)
        } else {
            format!("memcache://{}:{}", self.host, self.port)
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// SIGKILL, and wait until the process is gone.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Starts the server again, empty, on the same port (after [`Self::kill`] or
    /// [`Self::not_started`]).
    pub fn restart(&mut self) {
        self.kill();
        let child = spawn_memcached(self.host, self.port, &self.extra)
            .expect("memcached restarts on its port");
        self.process = ServerProcess::running(child);
    }

    /// SIGSTOP: see [`ServerProcess::pause`].
    pub fn pause(&self) {
        self.process.pause();
    }

    /// SIGCONT after [`Self::pause`].
    pub fn resume(&self) {
        self.process.resume();
    }

    /// A connected client of its own (one connection), to look at what the cache wrote. IPv4
    /// only: the client connects with IPv4 sockets.
    pub async fn raw(&self) -> Client {
        Client::new(format!("tcp://{}:{}", self.host, self.port))
            .await
            .expect("test client connects to memcached")
    }

    /// The bytes stored under `key`, if any.
    pub async fn raw_get(&self, key: &str) -> Option<Vec<u8>> {
        let value = self
            .raw()
            .await
            .get(key)
            .await
            .expect("memcached answers get");
        value.map(|value| value.data.unwrap_or_default())
    }

    /// Stores `value` under `key` without expiry, as a foreign writer would.
    pub async fn raw_set(&self, key: &str, value: &[u8]) {
        self.raw()
            .await
            .set(key, value, None, None)
            .await
            .expect("memcached stores the value");
    }

    /// The remaining lifetime memcached reports for `key` in seconds (`-1`: never expires), or
    /// `None` when the key is absent.
    pub async fn raw_ttl(&self, key: &str) -> Option<i64> {
        let found = self
            .raw()
            .await
            .meta_get(key, false, None, Some(&["t"]))
            .await
            .expect("memcached answers mg");
        found.map(|value| value.ttl_remaining.expect("mg with t returns the ttl"))
    }
}

/// Spawns memcached and waits until its port accepts connections; `None` if it exits first (for
/// example because the port was taken) or never listens.
fn spawn_memcached(host: &str, port: u16, extra: &[String]) -> Option<Child> {
    let mut command = Command::new("memcached");
    command
        .args(["-p", &port.to_string(), "-l", host, "-U", "0", "-t", "2"])
        // memcached refuses to run as root without -u, and ignores -u otherwise.
        .args(["-u", "root"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = run_installed(&mut command, "memcached", Command::spawn);
    let address: SocketAddr = (host.parse::<IpAddr>().expect("an IP address"), port).into();
    let deadline = Instant::now() + Duration::from_secs(5);
    // memcached prints nothing when ready: its port accepting (while it still runs) is the sign.
    while Instant::now() < deadline {
        if child.try_wait().expect("memcached status").is_some() {
            return None;
        }
        if TcpStream::connect(address).is_ok()
            && child.try_wait().expect("memcached status").is_none()
        {
            return Some(child);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// The memcached key of the entry cached under `key`: `{prefix}:e:{sha256 hex of key}`.
pub fn entry_key(prefix: &str, key: &str) -> String {
    format!("{prefix}:e:{}", sha256_hex(key))
}

/// The memcached key of a tag's invalidation stamp: `{prefix}:t:{sha256 hex of tag}`.
pub fn tag_key(prefix: &str, tag: &str) -> String {
    format!("{prefix}:t:{}", sha256_hex(tag))
}

/// The memcached key of the miss lock of `key` (`l2.lock`): `{prefix}:l:{sha256 hex of key}`.
pub fn lock_key(prefix: &str, key: &str) -> String {
    format!("{prefix}:l:{}", sha256_hex(key))
}

/// A config builder for tests: small memory tier, short timeouts, a prefix unique to the test.
pub fn config(prefix: &str) -> CacheConfigBuilder {
    CacheConfig::builder()
        .l1_size(16 * 1024 * 1024)
        .redis_prefix(prefix)
        .l2_timeout(Duration::from_millis(200))
}

/// A cache on `server`, answered by it before it is returned.
pub async fn memcached_cache(server: &MemcachedServer, builder: CacheConfigBuilder) -> TieredCache {
    let config = builder
        .memcached_url(server.url())
        .build()
        .expect("valid memcached config");
    let cache = TieredCache::new(config).expect("cache starts");
    assert!(
        cache.wait_for_l2(Duration::from_secs(5)).await,
        "cache connects to its test memcached"
    );
    cache
}
