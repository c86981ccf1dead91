//! Interim (1xx) responses are not final answers (RFC 9110 §15.2): never stored, never a
//! reason to drop what is stored. hyper's client consumes them before the layer sees a response
//! (and hyper's server cannot send them, hyperium/hyper#2426), so this is what the layer does
//! with an inner service that returns one as its response.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tower::{Layer, ServiceExt};
use tower_tiered_cache::{CacheConfig, CacheLayer};

/// Call 1: a stale response with a validator. Then, per call: a `103 Early Hints` that claims
/// freshness; a `304` if the request carries the stored validator, else a new `200`.
fn origin() -> impl tower::Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = std::convert::Infallible,
    Future = impl Send,
> + Clone
       + Send
       + 'static {
    let calls = Arc::new(AtomicUsize::new(0));
    tower::service_fn(move |request: Request<Full<Bytes>>| {
        let call = calls.fetch_add(1, Ordering::SeqCst);
        let conditional = request.headers().get("if-none-match").is_some();
        async move {
            let response = match call {
                0 => Response::builder()
                    .header("cache-control", "max-age=60")
                    .header("age", "120")
                    .header("etag", "\"v1\"")
                    .body(Full::new(Bytes::from("stored body"))),
                1 | 2 => Response::builder()
                    .status(StatusCode::EARLY_HINTS)
                    .header("cache-control", "max-age=3600")
                    .header("link", "</style.css>; rel=preload")
                    .body(Full::default()),
                _ if conditional => Response::builder()
                    .status(StatusCode::NOT_MODIFIED)
                    .header("cache-control", "max-age=60")
                    .body(Full::default()),
                _ => Response::builder()
                    .header("cache-control", "max-age=60")
                    .body(Full::new(Bytes::from("new body"))),
            };
            Ok(response.unwrap())
        }
    })
}

#[tokio::test]
async fn an_interim_response_is_never_stored_and_does_not_replace_the_stored_one() {
    let service = CacheLayer::new(CacheConfig::default()).layer(origin());
    let request = || {
        Request::get("http://h/x")
            .body(Full::<Bytes>::default())
            .unwrap()
    };
    let status = |response: &Response<_>| {
        response.headers()["cache-status"]
            .to_str()
            .unwrap()
            .to_owned()
    };
    service.clone().oneshot(request()).await.unwrap();

    for _ in 0..2 {
        let interim = service.clone().oneshot(request()).await.unwrap();
        assert_eq!(interim.status(), StatusCode::EARLY_HINTS);
        assert!(!status(&interim).contains("stored"), "{}", status(&interim));
    }

    // The stored response is still there, and is validated, not fetched again.
    let validated = service.oneshot(request()).await.unwrap();
    assert_eq!(validated.status(), StatusCode::OK);
    assert_eq!(
        status(&validated),
        "tiered-cache; fwd=stale; fwd-status=304; stored"
    );
}
