//! The key and the forwarded request name the same resource, however the client writes it:
//! one valid `Host` that agrees with the target (RFC 9112 §3.2, RFC 9113 §8.3.1), paths read
//! as the origin reads them before route rules apply (RFC 3986 §6), forwarding headers keyed or
//! stripped, and no heuristic freshness for pages asked for with credentials.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use tower::util::BoxCloneService;
use tower::{Layer, ServiceExt};
use tower_tiered_cache::config::{ForwardedHeaders, RouteConfig};
use tower_tiered_cache::{CacheBody, CacheConfig, CacheLayer, CacheService};

type Origin = BoxCloneService<Request<Full<Bytes>>, Response<Full<Bytes>>, Infallible>;
type Cached = CacheService<Origin>;

/// The `Host` lines and the path-and-query of one request the origin received.
type Received = (Vec<String>, String);

/// What the origin received.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<Received>>>);

impl Seen {
    fn all(&self) -> Vec<Received> {
        self.0.lock().unwrap().clone()
    }

    fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

/// An in-process origin answering `respond(request)`, recording what it received.
fn origin(
    seen: &Seen,
    respond: impl Fn(&Request<Full<Bytes>>) -> Response<Full<Bytes>> + Clone + Send + Sync + 'static,
) -> Origin {
    let seen = seen.clone();
    BoxCloneService::new(tower::service_fn(move |request: Request<Full<Bytes>>| {
        let hosts = request
            .headers()
            .get_all("host")
            .iter()
            .map(|host| host.to_str().unwrap_or("<binary>").to_owned())
            .collect();
        let path = request
            .uri()
            .path_and_query()
            .map_or("/", |path| path.as_str())
            .to_owned();
        seen.0.lock().unwrap().push((hosts, path));
        let response = respond(&request);
        async move { Ok::<_, Infallible>(response) }
    }))
}

fn header<'a>(request: &'a Request<Full<Bytes>>, name: &str) -> &'a str {
    request
        .headers()
        .get(name)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("")
}

/// A virtual-hosting origin: the page names the host it was asked for, cacheable for a minute.
fn virtual_hosts(request: &Request<Full<Bytes>>) -> Response<Full<Bytes>> {
    let body = format!("site of {}", header(request, "host"));
    Response::builder()
        .header("cache-control", "public, max-age=60")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

struct Reply {
    status: StatusCode,
    cache_status: String,
    body: String,
}

async fn send(service: &Cached, request: Request<Full<Bytes>>) -> Reply {
    let response: Response<CacheBody<Full<Bytes>>> =
        service.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let cache_status = response
        .headers()
        .get("cache-status")
        .map(|value| value.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        cache_status,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

fn get(uri: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut builder = Request::get(uri);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Full::default()).unwrap()
}

#[tokio::test]
async fn an_absolute_form_target_with_another_host_does_not_poison_the_target() {
    let seen = Seen::default();
    let service = CacheLayer::new(CacheConfig::default()).layer(origin(&seen, virtual_hosts));
    let attack = send(
        &service,
        get("http://a.example/p", &[("host", "evil.example")]),
    )
    .await;
    assert_eq!(
        attack.body, "site of a.example",
        "the target's authority wins"
    );
    assert_eq!(
        seen.all()[0].0,
        ["a.example"],
        "Host generated from the target"
    );

    let clean = send(&service, get("/p", &[("host", "a.example")])).await;
    assert_eq!(clean.body, "site of a.example");
    assert!(clean.cache_status.contains("hit"), "{}", clean.cache_status);
    let evil = send(&service, get("/p", &[("host", "evil.example")])).await;
    assert_eq!(evil.body, "site of evil.example");
}

#[tokio::test]
async fn a_host_with_a_path_is_refused_and_overwrites_nothing() {
    let seen = Seen::default();
    let service = CacheLayer::new(CacheConfig::default()).layer(origin(&seen, virtual_hosts));
    let victim = send(&service, get("/s/hp/x", &[("host", "a.example")])).await;
    assert_eq!(victim.body, "site of a.example");
    for forged in [
        "a.example/s/hp",
        "a.example?x=",
        "a.example#x",
        "user@a.example",
        "a.example:80:1",
    ] {
        let attack = send(&service, get("/x", &[("host", forged)])).await;
        assert_eq!(attack.status, StatusCode::BAD_REQUEST, "{forged}");
        assert_eq!(attack.cache_status, "tiered-cache; detail=invalid-host");
    }
    assert_eq!(seen.count(), 1, "no refused request reached the origin");
    let again = send(&service, get("/s/hp/x", &[("host", "a.example")])).await;
    assert!(again.cache_status.contains("hit"));
}

#[tokio::test]
async fn a_repeated_or_missing_host_is_refused() {
    let seen = Seen::default();
    let service = CacheLayer::new(CacheConfig::default()).layer(origin(&seen, virtual_hosts));
    let twice = Request::get("/p")
        .header("host", "a.example")
        .header("host", "evil.example")
        .body(Full::default())
        .unwrap();
    let reply = send(&service, twice).await;
    assert_eq!(
        (reply.status, reply.cache_status.as_str()),
        (
            StatusCode::BAD_REQUEST,
            "tiered-cache; detail=repeated-host"
        )
    );
    let missing = send(&service, get("/p", &[])).await;
    assert_eq!(
        (missing.status, missing.cache_status.as_str()),
        (StatusCode::BAD_REQUEST, "tiered-cache; detail=missing-host")
    );
    let old = Request::get("/p")
        .version(Version::HTTP_10)
        .body(Full::default())
        .unwrap();
    assert_eq!(
        send(&service, old).await.status,
        StatusCode::OK,
        "HTTP/1.0 needs no Host"
    );
    assert_eq!(seen.count(), 1);
}

#[tokio::test]
async fn an_http2_host_that_disagrees_with_the_authority_is_refused() {
    let seen = Seen::default();
    let service = CacheLayer::new(CacheConfig::default()).layer(origin(&seen, virtual_hosts));
    let conflicting = Request::get("http://a.example/p")
        .version(Version::HTTP_2)
        .header("host", "evil.example")
        .body(Full::default())
        .unwrap();
    let reply = send(&service, conflicting).await;
    assert_eq!(
        (reply.status, reply.cache_status.as_str()),
        (
            StatusCode::BAD_REQUEST,
            "tiered-cache; detail=conflicting-host"
        )
    );
    let agreeing = Request::get("http://a.example/p")
        .version(Version::HTTP_2)
        .body(Full::default())
        .unwrap();
    assert_eq!(send(&service, agreeing).await.body, "site of a.example");
    assert_eq!(
        seen.all(),
        [(vec!["a.example".to_owned()], "/p".to_owned())]
    );
}

#[tokio::test]
async fn equivalent_authorities_share_one_entry() {
    let seen = Seen::default();
    let service = CacheLayer::new(CacheConfig::default()).layer(origin(&seen, virtual_hosts));
    send(&service, get("/p", &[("host", "a.example")])).await;
    for host in ["A.EXAMPLE", "a.example:80", "a.example:"] {
        let reply = send(&service, get("/p", &[("host", host)])).await;
        assert!(
            reply.cache_status.contains("hit"),
            "{host}: {}",
            reply.cache_status
        );
    }
    assert_eq!(seen.count(), 1);
}

/// An origin that, like many frameworks, builds absolute links from forwarding headers.
fn link_builder(request: &Request<Full<Bytes>>) -> Response<Full<Bytes>> {
    let forwarded = header(request, "forwarded");
    let proto = if header(request, "x-forwarded-ssl") == "on"
        || header(request, "front-end-https") == "on"
        || forwarded.contains("proto=https")
    {
        "https"
    } else {
        "http"
    };
    let host = forwarded
        .split(';')
        .find_map(|pair| pair.trim().strip_prefix("host="))
        .unwrap_or("shop.example");
    let path = [
        header(request, "x-forwarded-uri"),
        header(request, "x-original-uri"),
    ]
    .into_iter()
    .find(|path| !path.is_empty())
    .unwrap_or(request.uri().path());
    Response::builder()
        .header("cache-control", "public, max-age=60")
        .body(Full::new(Bytes::from(format!(
            "<a href=\"{proto}://{host}{path}\">"
        ))))
        .unwrap()
}

const FORGED: [(&str, &str); 5] = [
    ("forwarded", "for=192.0.2.1;host=evil.example;proto=https"),
    ("x-forwarded-ssl", "on"),
    ("front-end-https", "on"),
    ("x-forwarded-uri", "/admin"),
    ("x-original-uri", "/admin"),
];

#[tokio::test]
async fn forwarding_headers_that_change_links_are_keyed() {
    let seen = Seen::default();
    let service = CacheLayer::new(CacheConfig::default()).layer(origin(&seen, link_builder));
    for (index, forged) in FORGED.into_iter().enumerate() {
        let uri = format!("http://shop.example/page-{index}");
        let attack = send(&service, get(&uri, &[forged])).await;
        let clean = format!("<a href=\"http://shop.example/page-{index}\">");
        assert_ne!(attack.body, clean, "{forged:?} changes the page");
        let victim = send(&service, get(&uri, &[])).await;
        assert_eq!(victim.body, clean, "{forged:?} poisoned the entry");
        assert!(
            victim.cache_status.contains("stored"),
            "{}",
            victim.cache_status
        );
    }
    // Another client's `for=` does not split the cache: only host and proto are keyed.
    let one = get(
        "http://shop.example/f",
        &[("forwarded", "for=192.0.2.1;proto=https")],
    );
    send(&service, one).await;
    let other = get(
        "http://shop.example/f",
        &[("forwarded", "for=198.51.100.7;proto=https")],
    );
    assert!(send(&service, other).await.cache_status.contains("hit"));
}

#[tokio::test]
async fn forwarding_headers_are_stripped_when_so_configured() {
    let seen = Seen::default();
    let config = CacheConfig::builder()
        .forwarded_headers(ForwardedHeaders::Strip)
        .build()
        .unwrap();
    let service = CacheLayer::new(config).layer(origin(&seen, link_builder));
    for forged in FORGED
        .into_iter()
        .chain([("x-forwarded-host", "evil.example")])
    {
        let attack = send(&service, get("http://shop.example/s", &[forged])).await;
        assert_eq!(
            attack.body, "<a href=\"http://shop.example/s\">",
            "{forged:?}"
        );
    }
    assert_eq!(seen.count(), 1, "the stripped requests are one resource");
}

/// A naive origin: it reads paths its own way (decodes `%2F`, merges slashes, drops `;`
/// parameters, resolves dot segments) and answers `/acct/profile` with the caller's private
/// page, without any freshness; every other page says it is cacheable.
fn lenient_app(request: &Request<Full<Bytes>>) -> Response<Full<Bytes>> {
    let raw = request.uri().path().replace("%2F", "/").replace("%2f", "/");
    let mut segments: Vec<&str> = Vec::new();
    for segment in raw
        .split('/')
        .map(|segment| segment.split(';').next().unwrap_or(""))
    {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            other => segments.push(other),
        }
    }
    let path = format!("/{}", segments.join("/"));
    if path.starts_with("/acct/") {
        let user = header(request, "cookie");
        return Response::builder()
            .header("cache-control", "max-age=60")
            .body(Full::new(Bytes::from(format!("private page of {user}"))))
            .unwrap();
    }
    Response::builder()
        .body(Full::new(Bytes::from(format!("public {path}"))))
        .unwrap()
}

fn routed(seen: &Seen) -> Cached {
    let config = CacheConfig::builder()
        .route(RouteConfig::new("/static/**").ttl(Duration::from_secs(300)))
        .route(RouteConfig::new("/acct/**").bypass())
        .build()
        .unwrap();
    CacheLayer::new(config).layer(origin(seen, lenient_app))
}

#[tokio::test]
async fn a_static_route_ttl_cannot_store_a_private_page_through_dot_segments() {
    let seen = Seen::default();
    let service = routed(&seen);
    for path in [
        "/static/../acct/profile",
        "/static/%2e%2e/acct/profile",
        "/static/%2E%2E/acct/profile",
        "/static/..%2Facct/profile",
        "/static/..%2facct/profile",
        "/static/..;/acct/profile",
    ] {
        let uri = format!("http://shop.example{path}");
        let victim = send(&service, get(&uri, &[("cookie", "session=alice")])).await;
        assert_eq!(victim.body, "private page of session=alice", "{path}");
        assert!(
            !victim.cache_status.contains("stored"),
            "{path}: {}",
            victim.cache_status
        );
        let attacker = send(&service, get(&uri, &[])).await;
        assert_eq!(
            attacker.body, "private page of ",
            "{path} leaked alice's page"
        );
    }
    let (_, forwarded) = &seen.all()[0];
    assert_eq!(
        forwarded, "/acct/profile",
        "dot segments are resolved before forwarding"
    );
}

#[tokio::test]
async fn a_bypass_route_cannot_be_side_stepped_by_another_spelling() {
    let seen = Seen::default();
    let service = routed(&seen);
    for path in [
        "/%61cct/profile",
        "//acct/profile",
        "/./acct/profile",
        "/x/../acct/profile",
        "/acct%2Fprofile",
        "/acct;x/profile",
        "/ACCT/../acct/profile",
    ] {
        let uri = format!("http://shop.example{path}");
        let victim = send(&service, get(&uri, &[("cookie", "session=alice")])).await;
        assert_eq!(victim.body, "private page of session=alice", "{path}");
        assert!(
            victim.cache_status.contains("fwd=bypass"),
            "{path}: {}",
            victim.cache_status
        );
        let attacker = send(&service, get(&uri, &[])).await;
        assert_eq!(
            attacker.body, "private page of ",
            "{path} leaked alice's page"
        );
    }
}

#[tokio::test]
async fn unambiguous_paths_keep_their_routes() {
    let seen = Seen::default();
    let service = routed(&seen);
    send(&service, get("http://shop.example/static/app.js", &[])).await;
    let hit = send(&service, get("http://shop.example/static/./app.js", &[])).await;
    assert_eq!(hit.body, "public /static/app.js");
    assert!(hit.cache_status.contains("hit"), "{}", hit.cache_status);
    let encoded = send(&service, get("http://shop.example/static/%61pp.js", &[])).await;
    assert!(
        encoded.cache_status.contains("hit"),
        "{}",
        encoded.cache_status
    );
    assert_eq!(seen.count(), 1);
    let malformed = send(&service, get("http://shop.example/static/%zz", &[])).await;
    assert_eq!(
        (malformed.status, malformed.cache_status.as_str()),
        (StatusCode::BAD_REQUEST, "tiered-cache; detail=invalid-path")
    );
}

/// A page with `Last-Modified` and no freshness, personal to the cookie or credentials.
fn personal_page(request: &Request<Full<Bytes>>) -> Response<Full<Bytes>> {
    let user = format!(
        "{}{}",
        header(request, "cookie"),
        header(request, "authorization")
    );
    Response::builder()
        .header("cache-control", "public")
        .header(
            "date",
            httpdate::fmt_http_date(std::time::SystemTime::now()),
        )
        .header("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT")
        .body(Full::new(Bytes::from(format!("page of {user}"))))
        .unwrap()
}

#[tokio::test]
async fn a_page_without_freshness_asked_for_with_credentials_is_not_shared() {
    let seen = Seen::default();
    let service = CacheLayer::new(CacheConfig::default()).layer(origin(&seen, personal_page));
    for credentials in [
        ("cookie", "session=alice"),
        ("authorization", "Bearer alice"),
    ] {
        let uri = format!("http://shop.example/{}", credentials.0);
        let victim = send(&service, get(&uri, &[credentials])).await;
        assert!(
            !victim.cache_status.contains("stored"),
            "{}",
            victim.cache_status
        );
        let other = send(&service, get(&uri, &[])).await;
        assert_eq!(other.body, "page of ", "{credentials:?} shared");
    }
    let config = CacheConfig::builder()
        .heuristic_with_credentials(true)
        .build()
        .unwrap();
    let opted_in = CacheLayer::new(config).layer(origin(&seen, personal_page));
    let stored = send(
        &opted_in,
        get("http://shop.example/c", &[("cookie", "a=b")]),
    )
    .await;
    assert!(
        stored.cache_status.contains("stored"),
        "{}",
        stored.cache_status
    );
}

mod property {
    use proptest::prelude::*;

    use super::*;

    /// Mostly plain text, with now and then one of the pieces that parsers trip on.
    fn text(
        plain: &'static str,
        tricky: &'static [&'static str],
    ) -> impl Strategy<Value = String> + Clone {
        let piece = prop_oneof![
            8 => plain.prop_map(|text| text),
            1 => proptest::sample::select(tricky).prop_map(str::to_owned),
        ];
        proptest::collection::vec(piece, 1..5).prop_map(|pieces| pieces.concat())
    }

    const TRICKY_AUTHORITY: &[&str] = &[
        ":", ":80", ":0080", ":8080", ":65536", "/", "/s/hp", "?", "#", "@", "[", "]", "[::1]",
        "%", "%2f", " ", "\t", "é", "_", "~", "-", ",", ";", "*", "\\",
    ];

    fn authority() -> impl Strategy<Value = String> + Clone {
        text("[a-zA-Z0-9.-]{1,8}", TRICKY_AUTHORITY)
    }

    fn host() -> impl Strategy<Value = Option<Vec<String>>> {
        prop_oneof![
            1 => Just(None),
            6 => authority().prop_map(|host| Some(vec![host])),
            1 => (authority(), authority()).prop_map(|(a, b)| Some(vec![a, b])),
        ]
    }

    fn path() -> impl Strategy<Value = String> {
        text(
            "[a-zA-Z0-9/._-]{1,6}",
            &[
                "/", "//", "/.", "/..", "./", "../", "%2e", "%2E", "%2f", "%2F", "%5c", "%25", "%",
                "%zz", "%41", "%7e", ";", "..;", "?", "?a=%2e", "#", "\\", " ", "é", "*", "@", ":",
            ],
        )
        .prop_map(|path| format!("/{path}"))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

        /// Whatever the client writes, the cache either refuses the request (and the origin
        /// never sees it) or stores the origin's answer under exactly the authority and path
        /// the origin received.
        #[test]
        fn the_key_names_the_forwarded_authority_and_path(
            hosts in host(),
            authority in proptest::option::of(authority()),
            path in path(),
            version in prop_oneof![Just(Version::HTTP_10), Just(Version::HTTP_11), Just(Version::HTTP_2)],
        ) {
            let target = match &authority {
                Some(authority) => format!("http://{authority}{path}"),
                None => path.clone(),
            };
            let Ok(uri) = target.parse::<http::Uri>() else {
                return Ok(()); // no server hands the layer a request line that does not parse
            };
            let mut request = Request::get(uri).version(version).body(Full::default()).unwrap();
            for host in hosts.iter().flatten() {
                let Ok(value) = http::HeaderValue::from_str(host) else {
                    return Ok(());
                };
                request.headers_mut().append("host", value);
            }
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                let seen = Seen::default();
                let service = CacheLayer::new(CacheConfig::default()).layer(origin(&seen, virtual_hosts));
                let reply = send(&service, request).await;
                if reply.status == StatusCode::BAD_REQUEST {
                    prop_assert_eq!(seen.count(), 0, "a refused request reached the origin");
                    return Ok(());
                }
                let forwarded = seen.all();
                prop_assert_eq!(forwarded.len(), 1);
                let (hosts, path) = &forwarded[0];
                prop_assert!(hosts.len() <= 1, "one Host forwarded: {:?}", hosts);
                let host = hosts.first().cloned().unwrap_or_default();
                prop_assert!(reply.cache_status.contains("stored"), "{}", reply.cache_status);
                let key = format!("http://{host}{path}");
                // The key read back as a URI names the forwarded authority and path, not a
                // different split of the same characters (`Host: a/b` + `/x` is not `a` + `/b/x`).
                // (An HTTP/1.0 request without Host names no authority: `http://` + path.)
                if !host.is_empty() {
                    let read_back: http::Uri = key.parse().map_err(|err| {
                        TestCaseError::fail(format!("key {key:?} is not a URI: {err}"))
                    })?;
                    prop_assert_eq!(
                        read_back.authority().map(|authority| authority.as_str()),
                        Some(host.as_str())
                    );
                    prop_assert_eq!(
                        read_back.path_and_query().map(|path| path.as_str()),
                        Some(path.as_str())
                    );
                }
                prop_assert!(
                    service.cache().get(&key).await.is_some(),
                    "stored under another key than {key:?}"
                );
                Ok(())
            })?;
        }
    }
}
