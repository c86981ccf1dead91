//! Cache poisoning and deception attempts never reach other users: URL-overriding headers are
//! keyed when present, paths are normalised only as far as RFC 3986 makes them equivalent,
//! GETs with a body bypass the cache, and
//! responses that set cookies or answer authorized requests are not shared.

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{Layer, ServiceExt};
use tower_tiered_cache::{CacheConfig, CacheLayer, CacheService};

/// An origin that, like many frameworks, builds absolute links from `X-Forwarded-Host` and
/// `X-Original-URL`, and says the page is cacheable.
fn reflecting_origin() -> CacheService<
    impl tower::Service<
            Request<Full<Bytes>>,
            Response = Response<Full<Bytes>>,
            Error = Infallible,
            Future = impl Send,
        > + Clone
        + Send
        + 'static,
> {
    let origin = tower::service_fn(|request: Request<Full<Bytes>>| async move {
        let header = |name: &str| {
            request
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let host = header("x-forwarded-host").unwrap_or_else(|| "shop.example".to_owned());
        let path = header("x-original-url").unwrap_or_else(|| request.uri().path().to_owned());
        let body = format!("<a href=\"https://{host}{path}\">");
        let response = Response::builder()
            .header("cache-control", "public, max-age=60")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        Ok::<_, Infallible>(response)
    });
    CacheLayer::new(CacheConfig::default()).layer(origin)
}

async fn page<S>(service: &CacheService<S>, uri: &str, headers: &[(&str, &str)]) -> (String, String)
where
    CacheService<S>: tower::Service<
            Request<Full<Bytes>>,
            Response = Response<tower_tiered_cache::CacheBody<Full<Bytes>>>,
            Error = Infallible,
        > + Clone,
{
    let mut request = Request::get(uri);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = service
        .clone()
        .oneshot(request.body(Full::default()).unwrap())
        .await
        .unwrap();
    let status = response.headers()["cache-status"]
        .to_str()
        .unwrap()
        .to_owned();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (String::from_utf8(body.to_vec()).unwrap(), status)
}

#[tokio::test]
async fn a_forged_forwarded_host_on_a_miss_does_not_poison_the_entry() {
    let service = reflecting_origin();
    for forged in [
        ("x-forwarded-host", "evil.example"),
        ("x-original-url", "/admin"),
    ] {
        let uri = format!("http://shop.example/page-{}", forged.0);
        let (attacker, _) = page(&service, &uri, &[forged]).await;
        assert!(
            attacker.contains("evil.example") || attacker.contains("/admin"),
            "{attacker}"
        );

        let (victim, status) = page(&service, &uri, &[]).await;
        assert!(
            !victim.contains("evil") && !victim.contains("/admin"),
            "{forged:?} poisoned: {victim}"
        );
        assert_eq!(status, "tiered-cache; fwd=miss; fwd-status=200; stored");
        // And the clean entry is what clean requests keep getting.
        let (again, status) = page(&service, &uri, &[]).await;
        assert_eq!(
            (again, status.as_str()),
            (victim, "tiered-cache; hit; detail=memory")
        );
    }
}

#[tokio::test]
async fn path_confusion_does_not_share_entries() {
    let service = reflecting_origin();
    let (css, _) = page(&service, "http://shop.example/a.css", &[]).await;
    let (confused, status) = page(&service, "http://shop.example/a;.css", &[]).await;
    assert_ne!(css, confused);
    assert_eq!(status, "tiered-cache; fwd=miss; fwd-status=200; stored");
    // `%2e` is an encoded unreserved `.`: the same URI (RFC 3986 §6.2.2.2), forwarded and keyed
    // as `/a.css`, so it is answered with that entry and the origin never sees the encoding.
    let (encoded, status) = page(&service, "http://shop.example/a%2ecss", &[]).await;
    assert_eq!(encoded, css);
    assert_eq!(status, "tiered-cache; hit; detail=memory");
}

#[tokio::test]
async fn a_get_with_a_body_bypasses_the_cache() {
    let service = reflecting_origin();
    let mut fat = Request::get("http://shop.example/fat")
        .body(Full::new(Bytes::from("x=1")))
        .unwrap();
    fat.headers_mut()
        .insert("x-forwarded-host", "evil.example".parse().unwrap());
    let response = service.clone().oneshot(fat).await.unwrap();
    assert_eq!(
        response.headers()["cache-status"],
        "tiered-cache; fwd=bypass"
    );
    let (clean, status) = page(&service, "http://shop.example/fat", &[]).await;
    assert!(!clean.contains("evil"));
    assert_eq!(status, "tiered-cache; fwd=miss; fwd-status=200; stored");
}

#[tokio::test]
async fn responses_setting_cookies_or_answering_authorized_requests_are_not_shared() {
    let origin = tower::service_fn(|request: Request<Full<Bytes>>| async move {
        let user = request
            .headers()
            .get("authorization")
            .map_or("anonymous".to_owned(), |v| v.to_str().unwrap().to_owned());
        let response = Response::builder()
            .header("cache-control", "max-age=60")
            .header("set-cookie", format!("session={user}"))
            .body(Full::new(Bytes::from(format!("hello {user}"))))
            .unwrap();
        Ok::<_, Infallible>(response)
    });
    let service = CacheLayer::new(CacheConfig::default()).layer(origin);
    let (alice, _) = page(&service, "http://app/me", &[("authorization", "alice")]).await;
    assert_eq!(alice, "hello alice");
    let (anonymous, status) = page(&service, "http://app/me", &[]).await;
    assert_eq!(anonymous, "hello anonymous");
    assert_eq!(
        status, "tiered-cache; fwd=miss; fwd-status=200",
        "nothing of alice's was stored"
    );
    // The anonymous answer set a cookie too: not stored, and the key is passed from now on.
    let (again, status) = page(&service, "http://app/me", &[]).await;
    assert_eq!(
        (again.as_str(), status.as_str()),
        (
            "hello anonymous",
            "tiered-cache; fwd=bypass; fwd-status=200"
        )
    );
}
