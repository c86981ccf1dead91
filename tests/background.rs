//! Background work is bounded (`http.max_background`): past the bound the cache does without
//! the optional work — a client whose validators match gets the full response instead of an
//! early `304` with the body read in the background, and a stale or aging entry is served
//! without starting a revalidation.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full};
use tokio::sync::oneshot;
use tower::util::BoxCloneService;
use tower::{Layer, ServiceExt};
use tower_tiered_cache::{CacheConfig, CacheLayer, CacheService};

const LAST_MODIFIED: &str = "Tue, 15 Nov 1994 12:45:26 GMT";
const FUTURE: &str = "Fri, 01 Jan 2100 00:00:00 GMT";

/// A response body that sends nothing until the test releases it, then one chunk; it counts
/// itself in `open` until it is dropped.
struct Stalled {
    release: oneshot::Receiver<()>,
    sent: bool,
    open: Arc<AtomicUsize>,
}

impl http_body::Body for Stalled {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.sent {
            return Poll::Ready(None);
        }
        // Released by a send or by the sender's drop alike.
        let _ = std::task::ready!(Pin::new(&mut self.release).poll(cx));
        self.sent = true;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"body")))))
    }
}

impl Drop for Stalled {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::SeqCst);
    }
}

type Origin = BoxCloneService<Request<Full<Bytes>>, Response<Stalled>, Infallible>;

/// An origin whose every body stalls: `open` counts the bodies not yet dropped, `holds` keeps
/// what releases them, `calls` counts requests.
#[derive(Default)]
struct StallingOrigin {
    open: Arc<AtomicUsize>,
    holds: Arc<Mutex<Vec<oneshot::Sender<()>>>>,
    calls: Arc<AtomicUsize>,
}

impl StallingOrigin {
    /// Answers `cache-control: headers` with `Last-Modified` in the past.
    fn service(&self, cache_control: &'static str, config: CacheConfig) -> CacheService<Origin> {
        let (open, holds, calls) = (self.open.clone(), self.holds.clone(), self.calls.clone());
        let origin = tower::service_fn(move |_request: Request<Full<Bytes>>| {
            calls.fetch_add(1, Ordering::SeqCst);
            let (hold, release) = oneshot::channel();
            holds.lock().unwrap().push(hold);
            open.fetch_add(1, Ordering::SeqCst);
            let body = Stalled {
                release,
                sent: false,
                open: open.clone(),
            };
            let response = Response::builder()
                .header("cache-control", cache_control)
                .header("last-modified", LAST_MODIFIED)
                .body(body)
                .unwrap();
            async move { Ok::<_, Infallible>(response) }
        });
        CacheLayer::new(config).layer(BoxCloneService::new(origin))
    }

    fn release_all(&self) {
        self.holds.lock().unwrap().clear();
    }

    fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

fn get(path: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut request = Request::get(format!("http://background.example{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(Full::default()).unwrap()
}

fn bounded(tasks: u32) -> CacheConfig {
    CacheConfig::builder()
        .max_background(tasks)
        .build()
        .unwrap()
}

#[tokio::test]
async fn past_max_background_a_matching_conditional_gets_the_full_response_and_no_background_download(
) {
    let origin = StallingOrigin::default();
    let service = origin.service("max-age=60", bounded(16));

    let mut early = 0;
    for n in 0..100 {
        let busting = format!("/page?n={n}");
        let request = get(&busting, &[("if-modified-since", FUTURE)]);
        let response = service.clone().oneshot(request).await.unwrap();
        match response.status() {
            StatusCode::NOT_MODIFIED => early += 1,
            // The client reads it (or goes away: here, at once); nothing runs for it in the
            // background.
            StatusCode::OK => drop(response),
            other => panic!("request {n}: {other}"),
        }
    }
    assert_eq!(origin.calls.load(Ordering::SeqCst), 100);
    assert_eq!(early, 16, "an early 304 for as many as may be drained");
    assert_eq!(
        origin.open(),
        16,
        "bodies still downloading in the background"
    );
    assert_eq!(service.cache().stats().background_skipped, 84);

    origin.release_all();
    while origin.open() > 0 {
        tokio::task::yield_now().await;
    }
    let again = get("/page?n=100", &[("if-modified-since", FUTURE)]);
    let response = service.clone().oneshot(again).await.unwrap();
    assert_eq!(
        response.status(),
        StatusCode::NOT_MODIFIED,
        "finished drains gave their places back"
    );
}

#[tokio::test]
async fn past_max_background_a_stale_entry_is_served_without_starting_a_revalidation() {
    let origin = StallingOrigin::default();
    let config = CacheConfig::builder()
        .max_background(1)
        .stale_while_revalidate(std::time::Duration::from_secs(600))
        .build()
        .unwrap();
    let service = origin.service("max-age=0", config);
    for key in ["/a", "/b"] {
        let response = service.clone().oneshot(get(key, &[])).await.unwrap();
        origin.release_all();
        response.into_body().collect().await.unwrap();
    }
    assert_eq!(service.cache().stats().stores, 2);

    // The revalidation of /a takes the one place, and its body stalls.
    let stale = service.clone().oneshot(get("/a", &[])).await.unwrap();
    assert_eq!(
        stale.headers()["cache-status"],
        "tiered-cache; hit; fwd=stale; detail=memory"
    );
    while origin.open() == 0 {
        tokio::task::yield_now().await;
    }
    let stale = service.clone().oneshot(get("/b", &[])).await.unwrap();
    assert_eq!(
        stale.headers()["cache-status"],
        "tiered-cache; hit; fwd=stale; detail=memory"
    );
    assert_eq!(service.cache().stats().background_skipped, 1);
    assert_eq!(
        origin.calls.load(Ordering::SeqCst),
        3,
        "/b was not revalidated"
    );
}

#[test]
fn max_background_is_between_one_and_65536_tasks() {
    for tasks in [0, 65_537] {
        let err =
            CacheConfig::from_toml_str(&format!("[http]\nmax_background = {tasks}")).unwrap_err();
        assert_eq!(err.key(), Some("http.max_background"), "{tasks}");
    }
    let config = CacheConfig::from_toml_str("[http]\nmax_background = \"8\"").unwrap();
    assert_eq!(config.http.max_background, 8);
    assert_eq!(CacheConfig::default().http.max_background, 64);
}
