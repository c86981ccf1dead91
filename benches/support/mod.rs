//! Fixtures shared by the bench binaries: bodies and entries of a given size, an origin service
//! and the request sent to it, and a private `redis-server` (the tests' own).
#![allow(dead_code, unused_imports)]

#[path = "../../tests/common/process.rs"]
mod process;
#[cfg(feature = "redis")]
#[path = "../../tests/common/redis.rs"]
mod redis;
#[cfg(feature = "redis")]
pub use redis::RedisServer;

use std::convert::Infallible;
use std::future::Ready;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{
    HeaderValue, ACCEPT, CACHE_CONTROL, CONTENT_TYPE, ETAG, HOST, LAST_MODIFIED, USER_AGENT,
};
use http::{HeaderMap, Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceExt};
use tower_tiered_cache::CachedEntry;

pub const KIB: usize = 1024;

/// Criterion settings for every group: short, so the whole `cargo bench` takes a few minutes.
pub fn criterion() -> criterion::Criterion {
    criterion::Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50)
}

/// `len` bytes of JSON-like text: compresses about as well as typical API responses.
pub fn body(len: usize) -> Bytes {
    let mut text = String::with_capacity(len + 64);
    let mut id = 0u32;
    while text.len() < len {
        text.push_str(&format!(
            r#"{{"id":{id},"name":"user {id}","email":"user{id}@example.com","score":{}}},"#,
            id.wrapping_mul(2_654_435_761) % 10_007
        ));
        id += 1;
    }
    text.truncate(len);
    Bytes::from(text)
}

/// `len` bytes of base64-like text over pseudo-random bytes: brotli shrinks it by only ~25 %, as
/// the files `scripts/bench-proxy.sh` serves.
pub fn random_text(len: usize) -> Bytes {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let text: Vec<u8> = (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ALPHABET[(state % 64) as usize]
        })
        .collect();
    Bytes::from(text)
}

/// The headers a typical origin sends with a cacheable response.
pub fn response_headers(cache_control: &'static str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static(cache_control));
    headers.insert(ETAG, HeaderValue::from_static("\"5f3a-1b2c3d\""));
    headers.insert(
        LAST_MODIFIED,
        HeaderValue::from_static("Tue, 01 Dec 2026 10:00:00 GMT"),
    );
    headers
}

/// A stored response of `len` bytes of JSON-like text, as the HTTP layer would store it.
pub fn entry(len: usize) -> CachedEntry {
    entry_with_body(body(len))
}

/// A stored response with `body`, as the HTTP layer would store it.
pub fn entry_with_body(body: Bytes) -> CachedEntry {
    let mut headers = response_headers("max-age=3600");
    headers.insert(
        http::header::DATE,
        HeaderValue::from_static("Tue, 01 Dec 2026 10:00:00 GMT"),
    );
    CachedEntry::new(body, Duration::from_secs(3600)).with_headers(headers)
}

/// The request every HTTP bench sends: a GET with the headers a client typically sets.
pub fn request() -> Request<Full<Bytes>> {
    Request::get("/items/42?page=1")
        .header(HOST, "bench.example")
        .header(USER_AGENT, "criterion/0.8")
        .header(ACCEPT, "*/*")
        .body(Full::default())
        .expect("valid request")
}

/// An origin answering every request with the same body and headers, built per call as a
/// handler would. Cloning it is one reference count.
#[derive(Clone)]
pub struct Origin {
    body: Bytes,
    cache_control: &'static str,
}

impl Origin {
    pub fn new(len: usize, cache_control: &'static str) -> Self {
        Self {
            body: body(len),
            cache_control,
        }
    }
}

impl<B> Service<Request<B>> for Origin {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _request: Request<B>) -> Self::Future {
        let mut response = Response::new(Full::new(self.body.clone()));
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static(self.cache_control));
        std::future::ready(Ok(response))
    }
}

/// The single-threaded runtime every bench runs its requests on.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Sends [`request`] through a clone of `service` and drains the response.
pub async fn send<S, B>(service: &S) -> usize
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: Body + Unpin,
{
    drain(service.clone().oneshot(request()).await.unwrap()).await
}

/// Stores the response to [`request`] in `cached`, then checks that the next request is answered
/// with `expected` as its `Cache-Status` (so a bench measures the path it names).
pub async fn prime<S, B>(cached: &S, expected: &str)
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: Body + Unpin,
{
    send(cached).await;
    let hit = cached.clone().oneshot(request()).await.unwrap();
    assert_eq!(cache_status(&hit), expected);
}

/// Reads the body frame by frame, as a server writing it out would, without collecting it.
pub async fn drain<B>(response: Response<B>) -> usize
where
    B: Body + Unpin,
{
    let mut body = response.into_body();
    let mut frames = 0;
    while let Some(frame) = body.frame().await {
        std::hint::black_box(frame.ok());
        frames += 1;
    }
    frames
}

/// The `Cache-Status` of a response, for checking that a bench measures the path it names.
pub fn cache_status<B>(response: &Response<B>) -> String {
    response
        .headers()
        .get("cache-status")
        .and_then(|value| value.to_str().ok())
        .unwrap_or("")
        .to_owned()
}
