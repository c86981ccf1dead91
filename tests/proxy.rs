//! The `cache_proxy` example's server, run in-process in front of origins started here: its
//! accept loop under errors, its connection timeouts, HTTP/2, and wire-level attacks on the
//! request target, `Host` and response framing.

#[path = "../examples/cache_proxy/server.rs"]
mod server;
#[path = "common/wire.rs"]
mod wire;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, HOST};
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use server::serve::{AcceptBackoff, AcceptVerdict};
use server::{Proxy, Timeouts};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tower_tiered_cache::CacheConfig;
use wire::{read_head, read_response, read_until_closed};

/// An upper bound for what should happen in a fraction of a second: only a failure waits this.
const GUARD: Duration = Duration::from_secs(10);
/// A short timeout for the tests that wait for one to fire.
const SHORT: Duration = Duration::from_millis(200);
/// A timeout the tests never reach.
const LONG: Duration = Duration::from_secs(60);

fn timeouts(header_read: Duration, idle: Duration) -> Timeouts {
    Timeouts {
        header_read: Some(header_read),
        idle: Some(idle),
        ..Timeouts::default()
    }
}

/// The proxy, memory only, in front of `origin`, with two workers as `cache_proxy` runs on two
/// cores (one on the test's runtime, one on a thread of its own); its address.
async fn start_proxy(origin: SocketAddr, timeouts: Timeouts) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let upstream = format!("http://{origin}").parse().unwrap();
    let proxy = Proxy::new(&upstream, CacheConfig::default()).unwrap();
    tokio::spawn(proxy.serve_workers(listener, 2, timeouts, std::future::pending()));
    addr
}

/// An origin hosting one site per `Host`: `GET /path` answers `path on host`, cacheable for a
/// minute (`/slow` after a while); it records every `Host` it is sent.
#[derive(Clone, Default)]
struct VirtualHosts {
    hosts: Arc<Mutex<Vec<String>>>,
}

impl VirtualHosts {
    /// How long `/slow` takes: longer than [`SHORT`], the idle timeout of the tests using it.
    const SLOW: Duration = Duration::from_millis(600);

    async fn start(&self) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let origin = self.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let origin = origin.clone();
                let service =
                    hyper::service::service_fn(move |request| origin.clone().answer(request));
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        addr
    }

    async fn answer(self, request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
        let host = request
            .headers()
            .get(HOST)
            .map_or("", |host| host.to_str().unwrap_or("?"))
            .to_owned();
        self.hosts.lock().unwrap().push(host.clone());
        if request.uri().path() == "/slow" {
            tokio::time::sleep(Self::SLOW).await;
        }
        let body = format!("{} on {host}", request.uri().path());
        Ok(Response::builder()
            .header(CACHE_CONTROL, "max-age=60")
            .body(Full::new(Bytes::from(body)))
            .unwrap())
    }

    fn hosts(&self) -> Vec<String> {
        self.hosts.lock().unwrap().clone()
    }
}

/// A proxy in front of a fresh [`VirtualHosts`] origin.
async fn proxy_to_virtual_hosts(timeouts: Timeouts) -> (SocketAddr, VirtualHosts) {
    let origin = VirtualHosts::default();
    let proxy = start_proxy(origin.start().await, timeouts).await;
    (proxy, origin)
}

/// Sends `request` bytes on a new connection and reads one response.
async fn exchange(proxy: SocketAddr, request: &str) -> wire::WireResponse {
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    read_response(&mut BufReader::new(stream)).await.unwrap()
}

/// Waits (up to [`GUARD`]) for the peer to close `stream`; whether it did.
async fn closed_by_peer(stream: &mut TcpStream) -> bool {
    tokio::time::timeout(GUARD, read_until_closed(stream))
        .await
        .is_ok()
}

// ----- accept errors -----

/// Errors, each right after the pause the previous one asked for, for `span` of simulated time.
fn run_of_errors(
    backoff: &mut AcceptBackoff,
    start: Instant,
    span: Duration,
) -> Vec<(Instant, AcceptVerdict)> {
    let mut now = start;
    let mut verdicts = Vec::new();
    // The count bounds a backoff that would not advance the clock.
    while now < start + span && verdicts.len() < 10_000 {
        let verdict = backoff.failed(now);
        let pause = verdict.pause;
        verdicts.push((now, verdict));
        now += pause;
    }
    verdicts
}

#[test]
fn accept_errors_back_off_and_are_logged_at_a_bounded_rate() {
    let start = Instant::now();
    let mut backoff = AcceptBackoff::default();
    let verdicts = run_of_errors(&mut backoff, start, Duration::from_secs(60));

    let pauses: Vec<u64> = verdicts
        .iter()
        .take(10)
        .map(|(_, v)| v.pause.as_millis() as u64)
        .collect();
    assert_eq!(pauses, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
    assert!(verdicts
        .iter()
        .all(|(_, v)| v.pause <= AcceptBackoff::MAX_PAUSE));

    // The first error is logged at once; then at most one line a second, each counting the
    // errors left out since the line before, so that none goes unaccounted.
    assert_eq!(verdicts[0].1.log, Some(0));
    let logged: Vec<(Instant, u64)> = verdicts
        .iter()
        .filter_map(|(at, v)| v.log.map(|suppressed| (*at, suppressed)))
        .collect();
    assert!(logged
        .windows(2)
        .all(|pair| pair[1].0 - pair[0].0 >= AcceptBackoff::LOG_INTERVAL));
    assert!(logged.len() <= 61, "{} lines in a minute", logged.len());
    assert_eq!(logged[1].1, 7, "the 7 errors between 5 ms and 635 ms");
    let accounted: u64 = logged.iter().map(|(_, suppressed)| suppressed + 1).sum();
    let after_last_line = verdicts.len() as u64 - accounted;
    assert!(
        after_last_line <= 1,
        "errors logged or counted: {accounted} of {}",
        verdicts.len()
    );

    // A success restarts the pauses, not the log's clock: errors between successes still make
    // one line a second.
    let now = verdicts.last().unwrap().0;
    backoff.accepted();
    let next = backoff.failed(now + Duration::from_millis(1));
    assert_eq!(next.pause, AcceptBackoff::FIRST_PAUSE);
    let mut lines = 0;
    for step in 2..1000 {
        backoff.accepted();
        lines += usize::from(
            backoff
                .failed(now + Duration::from_millis(step))
                .log
                .is_some(),
        );
    }
    assert!(
        lines <= 1,
        "{lines} lines in one second of alternating errors"
    );
}

const CHILD_ENV: &str = "TIERED_CACHE_PROXY_TEST_CHILD";
const FD_LIMIT: &str = "64";

/// The test binary re-runs this test as a child process under `prlimit --nofile`, where it is
/// the proxy (upstream unreachable, so every request is a 502); the parent exhausts the child's
/// file descriptors with idle connections and reads its log.
#[tokio::test]
async fn a_proxy_out_of_file_descriptors_logs_about_once_a_second_and_recovers() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return run_as_child().await;
    }
    let mut child = tokio::process::Command::new("prlimit")
        .arg(format!("--nofile={FD_LIMIT}:{FD_LIMIT}"))
        .arg("--")
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_proxy_out_of_file_descriptors_logs_about_once_a_second_and_recovers",
        ])
        .args(["--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("prlimit (util-linux) runs");
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    // The harness prints the test's name on the same line, before the child's own output.
    let proxy: SocketAddr = loop {
        let line = tokio::time::timeout(GUARD, stdout.next_line())
            .await
            .expect("the child starts")
            .unwrap()
            .expect("the child prints its address");
        if let Some((_, addr)) = line.split_once("proxy listening on ") {
            break addr.trim().parse().unwrap();
        }
    };

    // More connections than the child has descriptors; the kernel completes them all.
    let mut flood = Vec::new();
    for _ in 0..128 {
        flood.push(TcpStream::connect(proxy).await.unwrap());
    }
    let mut log = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut lines = 0u32;
    let mut first = None;
    let mut suppressed = false;
    // Until a line reports errors it left out (the rate limit at work), or a flood of lines.
    while !suppressed && lines < 1000 {
        let line = tokio::time::timeout(GUARD, log.next_line())
            .await
            .expect("the child logs")
            .unwrap()
            .expect("the child runs");
        if line.contains("accept failed") {
            first.get_or_insert_with(Instant::now);
            lines += 1;
            suppressed = reports_suppressed_errors(&line);
        }
    }
    let seconds = first.map_or(0, |first| first.elapsed().as_secs()) as u32;
    assert!(
        lines <= seconds + 2,
        "{lines} `accept failed` lines in about {seconds} s"
    );

    // With the descriptors back, the loop accepts again (after a pause of at most a second).
    drop(flood);
    let answered = tokio::time::timeout(
        GUARD,
        exchange(proxy, "GET / HTTP/1.1\r\nHost: a.example\r\n\r\n"),
    )
    .await;
    assert_eq!(answered.expect("answered").head.status(), 502);
}

/// Whether a log line counts errors it left out (`suppressed=N`, N > 0).
fn reports_suppressed_errors(line: &str) -> bool {
    line.split_once("suppressed=")
        .and_then(|(_, count)| count.split(' ').next()?.parse::<u64>().ok())
        .is_some_and(|count| count > 0)
}

async fn run_as_child() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .init();
    let unreachable = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let proxy = start_proxy(unreachable, Timeouts::default()).await;
    println!("proxy listening on {proxy}");
    std::future::pending::<()>().await;
}

// ----- connection timeouts -----

#[tokio::test]
async fn a_half_sent_request_header_is_closed_after_the_header_read_timeout() {
    let (proxy, _origin) = proxy_to_virtual_hosts(timeouts(SHORT, LONG)).await;
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    stream
        .write_all(b"GET /p HTTP/1.1\r\nHost: a.example\r\nX-Slow: ")
        .await
        .unwrap();
    assert!(
        closed_by_peer(&mut stream).await,
        "still open after {GUARD:?}"
    );
}

/// `cache_proxy --no-cache`, the benchmarks' baseline: every request reaches the origin, with
/// the proxy's own header handling (Host from the target, `Via`), on every worker.
#[tokio::test]
async fn without_the_cache_every_request_reaches_the_origin() {
    let origin = VirtualHosts::default();
    let upstream = format!("http://{}", origin.start().await).parse().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = listener.local_addr().unwrap();
    tokio::spawn(server::serve_uncached(
        upstream,
        listener,
        2,
        Timeouts::default(),
        std::future::pending(),
    ));
    for _ in 0..4 {
        let response = exchange(proxy, "GET /p HTTP/1.1\r\nHost: a.example\r\n\r\n").await;
        assert_eq!(response.head.status(), 200);
        assert_eq!(response.body_text(), "/p on a.example");
        assert_eq!(response.head.all("via"), ["1.1 tiered-cache"]);
        assert!(response.head.all("cache-status").is_empty());
    }
    assert_eq!(origin.hosts().len(), 4, "every request reached the origin");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let (proxy, _origin) = proxy_to_virtual_hosts(timeouts(LONG, SHORT)).await;
    let stream = TcpStream::connect(proxy).await.unwrap();
    let mut stream = BufReader::new(stream);
    stream
        .get_mut()
        .write_all(b"GET /p HTTP/1.1\r\nHost: a.example\r\n\r\n")
        .await
        .unwrap();
    let response = read_response(&mut stream).await.unwrap();
    assert_eq!(response.head.status(), 200);
    assert!(
        closed_by_peer(stream.get_mut()).await,
        "still open after {GUARD:?}"
    );
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_after_the_idle_timeout() {
    let (proxy, _origin) = proxy_to_virtual_hosts(timeouts(LONG, SHORT)).await;
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    assert!(
        closed_by_peer(&mut stream).await,
        "still open after {GUARD:?}"
    );
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_after_the_idle_timeout() {
    let (proxy, _origin) = proxy_to_virtual_hosts(timeouts(LONG, SHORT)).await;
    let stream = TcpStream::connect(proxy).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    let connection = tokio::spawn(connection);
    let request = Request::get(format!("http://{proxy}/p"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    response.into_body().collect().await.unwrap();
    let ended = tokio::time::timeout(GUARD, connection).await;
    assert!(ended.is_ok(), "still open after {GUARD:?}");
}

#[tokio::test]
async fn a_request_in_flight_longer_than_the_idle_timeout_is_answered() {
    let (proxy, _origin) = proxy_to_virtual_hosts(timeouts(LONG, SHORT)).await;
    let response = exchange(proxy, "GET /slow HTTP/1.1\r\nHost: a.example\r\n\r\n").await;
    assert_eq!(response.head.status(), 200);
    assert_eq!(response.body_text(), "/slow on a.example");
}

// ----- HTTP/2 -----

#[tokio::test]
async fn http2_misses_and_hits_are_answered() {
    let (proxy, origin) = proxy_to_virtual_hosts(Timeouts::default()).await;
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Empty<Bytes>>();
    let get = || async {
        let response = client
            .get(format!("http://{proxy}/h2").parse().unwrap())
            .await
            .unwrap();
        let status = response.status();
        let cache_status = response
            .headers()
            .get("cache-status")
            .map_or(String::new(), |value| value.to_str().unwrap().to_owned());
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, cache_status, body)
    };

    let (status, cache_status, body) = get().await;
    assert_eq!(status, 200, "miss: {cache_status}");
    assert_eq!(body, format!("/h2 on {proxy}"));
    assert!(!cache_status.contains("hit"), "{cache_status}");
    let (status, cache_status, body) = get().await;
    assert_eq!(status, 200);
    assert_eq!(body, format!("/h2 on {proxy}"));
    assert!(cache_status.contains("hit"), "{cache_status}");
    assert_eq!(
        origin.hosts(),
        [proxy.to_string()],
        "the :authority as Host, once"
    );
}

// ----- request target and Host -----

#[tokio::test]
async fn an_absolute_form_target_with_another_host_does_not_poison_the_target() {
    let (proxy, origin) = proxy_to_virtual_hosts(Timeouts::default()).await;
    // Refused or answered for a.example (RFC 9112 §3.2.2: the target's authority wins) — never
    // stored as a.example with evil.example's answer.
    let attack = exchange(
        proxy,
        "GET http://a.example/p HTTP/1.1\r\nHost: evil.example\r\n\r\n",
    )
    .await;
    assert_ne!(attack.body_text(), "/p on evil.example");

    let clean = exchange(proxy, "GET /p HTTP/1.1\r\nHost: a.example\r\n\r\n").await;
    assert_eq!(clean.head.status(), 200);
    assert_eq!(clean.body_text(), "/p on a.example");
    assert!(
        origin.hosts().iter().all(|host| host == "a.example"),
        "the origin was sent {:?}",
        origin.hosts()
    );
}

/// A request the proxy must answer 400 without asking the origin.
async fn assert_refused(request: &str) {
    let (proxy, origin) = proxy_to_virtual_hosts(Timeouts::default()).await;
    let response = exchange(proxy, request).await;
    assert_eq!(response.head.status(), 400, "{}", response.body_text());
    assert_eq!(
        origin.hosts(),
        Vec::<String>::new(),
        "forwarded to the origin"
    );
}

#[tokio::test]
async fn a_host_with_a_path_is_refused() {
    assert_refused("GET /p HTTP/1.1\r\nHost: a.example/s/hp\r\n\r\n").await;
}

#[tokio::test]
async fn two_host_lines_are_refused() {
    assert_refused("GET /p HTTP/1.1\r\nHost: a.example\r\nHost: evil.example\r\n\r\n").await;
}

#[tokio::test]
async fn an_http11_request_without_host_is_refused() {
    assert_refused("GET /p HTTP/1.1\r\n\r\n").await;
}

// ----- response framing -----

/// What the splitting origin smuggles after the five bytes its `Content-Length` claims.
const INJECTED: &str =
    "HTTP/1.1 200 OK\r\nContent-Length: 8\r\nCache-Control: max-age=60\r\n\r\ninjected";

/// The body of `/split`: "hello", then a whole response of its own.
fn split_body() -> String {
    format!("hello{INJECTED}")
}

/// A raw origin: `/split` answers `Content-Length: 5` together with `Transfer-Encoding:
/// {coding}` around [`split_body`] (chunked, or else until it closes the connection); any other
/// path answers `real {path}`.
async fn splitting_origin(coding: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(answer_splitting(stream, coding));
        }
    });
    addr
}

async fn answer_splitting(stream: TcpStream, coding: &str) {
    let mut stream = BufReader::new(stream);
    while let Ok(Some(request)) = read_head(&mut stream).await {
        let out = stream.get_mut();
        if request.target() != "/split" {
            let body = format!("real {}", request.target());
            let head = format!(
                "HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            let _ = out.write_all(format!("{head}{body}").as_bytes()).await;
            continue;
        }
        let head = format!(
            "HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 5\r\nTransfer-Encoding: {coding}\r\n\r\n"
        );
        let body = split_body();
        if coding == "chunked" {
            let chunked = format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len());
            let _ = out.write_all(format!("{head}{chunked}").as_bytes()).await;
        } else {
            let _ = out.write_all(format!("{head}{body}").as_bytes()).await;
            let _ = out.shutdown().await;
            return;
        }
    }
}

/// `/split` pipelined with `/{next}` on one connection: both responses as a client reads them.
async fn pipelined(proxy: SocketAddr, next: &str) -> (wire::WireResponse, wire::WireResponse) {
    let mut stream = BufReader::new(TcpStream::connect(proxy).await.unwrap());
    let requests = format!(
        "GET /split HTTP/1.1\r\nHost: a.example\r\n\r\nGET /{next} HTTP/1.1\r\nHost: a.example\r\n\r\n"
    );
    stream
        .get_mut()
        .write_all(requests.as_bytes())
        .await
        .unwrap();
    let split = read_response(&mut stream)
        .await
        .expect("the first response, whole");
    let after = tokio::time::timeout(GUARD, read_response(&mut stream))
        .await
        .expect("a second response")
        .unwrap();
    (split, after)
}

async fn assert_not_split(coding: &'static str) {
    let proxy = start_proxy(splitting_origin(coding).await, Timeouts::default()).await;
    for (round, next) in ["first", "second"].into_iter().enumerate() {
        let (split, after) = pipelined(proxy, next).await;
        assert_eq!(
            split.body_text(),
            split_body(),
            "round {round}: {:?}",
            split.head
        );
        assert_ne!(split.head.all("content-length"), ["5"], "round {round}");
        assert_eq!(
            after.body_text(),
            format!("real /{next}"),
            "round {round}: {:?}",
            after.head
        );
    }
}

#[tokio::test]
async fn a_response_with_content_length_and_chunked_is_not_split() {
    assert_not_split("chunked").await;
}

#[tokio::test]
async fn a_response_with_content_length_and_transfer_encoding_identity_is_not_split() {
    assert_not_split("identity").await;
}
