//! [`CacheService`]: the request path, top to bottom.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{
    HeaderMap, AGE, AUTHORIZATION, DATE, IF_MODIFIED_SINCE, IF_NONE_MATCH, RANGE, UPGRADE,
};
use http::request::Parts;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body;
use tower::Service;

use crate::body::{BoxError, CacheBody};
use crate::config::CacheConfig;
use crate::future::ResponseFuture;
use crate::http::buffer::{buffer, Buffered};
use crate::http::cache_control::CacheControl;
use crate::http::cache_status::{Forward, Status, CACHE_STATUS};
use crate::http::policy::{self, Reuse, Settings, StorePlan};
use crate::http::routes::Rule;
use crate::http::variants::{self, Found, Stored, Variants, VARIANTS};
use crate::http::{key, response, Routes};
use crate::store::coalesce::{Coalescer, Turn};
use crate::store::{CachedEntry, TieredCache};
use crate::Error;

/// Caches the responses of the wrapped service; built by [`CacheLayer`](crate::CacheLayer).
///
/// GET and HEAD requests are looked up (memory, then Redis) and answered from the cache while
/// fresh; misses and revalidations go to the inner service, one request per key at a time, and
/// storable responses are stored. Every other request passes straight through. Every response
/// carries a `Cache-Status` member (RFC 9211) naming what happened.
#[derive(Clone, Debug)]
pub struct CacheService<S> {
    inner: S,
    state: Arc<State>,
}

/// What every clone of a layer and its services share.
pub(crate) struct State {
    pub(crate) cache: TieredCache,
    pub(crate) cache_name: String,
    routes: Routes,
    max_entry_size: u64,
    default_ttl: Duration,
    keep_stale: Duration,
    flights: Coalescer<Fetched>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("State")
            .field("cache", &self.cache)
            .field("cache_name", &self.cache_name)
            .finish_non_exhaustive()
    }
}

impl State {
    pub(crate) fn new(cache: TieredCache, config: &CacheConfig) -> Result<Self, Error> {
        config.validate()?;
        Ok(Self {
            cache,
            cache_name: config.http.status_header.clone(),
            routes: Routes::new(config)?,
            max_entry_size: config.http.max_entry_size,
            default_ttl: config.http.default_ttl,
            keep_stale: config.http.keep_stale,
            flights: Coalescer::new(),
        })
    }
}

/// A stored response shared with the requests that waited for it.
#[derive(Clone)]
struct Fetched {
    entry: CachedEntry,
    stored: Stored,
}

/// The flight's error when the leader's response could not be shared (not storable, too large,
/// failed): each waiting request then asks the origin itself.
#[derive(Debug)]
struct Unshared;

impl<S> CacheService<S> {
    pub(crate) fn new(inner: S, state: Arc<State>) -> Self {
        Self { inner, state }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The cache behind this service, for statistics and invalidation.
    pub fn cache(&self) -> &TieredCache {
        &self.state.cache
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for CacheService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Body + Send + 'static,
    ResBody: Body<Data = Bytes> + Unpin + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<CacheBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // Call the service that was driven to readiness, leave a fresh clone in its place.
        let fresh = self.inner.clone();
        let mut origin = std::mem::replace(&mut self.inner, fresh);
        let rule = self.state.routes.rule_for(request.uri().path());
        if bypasses(&request, rule) {
            return ResponseFuture::bypass(origin.call(request), self.state.clone());
        }
        let rule = rule.clone();
        ResponseFuture::cached(Box::pin(serve(self.state.clone(), origin, request, rule)))
    }
}

/// Requests the cache does not touch: methods other than GET and HEAD, route rules, range and
/// upgrade requests, `Cache-Control: no-store`, and requests with a body.
fn bypasses<B: Body>(request: &Request<B>, rule: &Rule) -> bool {
    let headers = request.headers();
    rule.bypass
        || !matches!(*request.method(), Method::GET | Method::HEAD)
        || headers.contains_key(RANGE)
        || headers.contains_key(UPGRADE)
        || CacheControl::from_headers(headers).no_store
        || !(request.body().is_end_stream() || request.body().size_hint().exact() == Some(0))
}

/// The cached path of one GET or HEAD request.
async fn serve<S, ReqBody, ResBody>(
    state: Arc<State>,
    origin: S,
    request: Request<ReqBody>,
    rule: Rule,
) -> Result<Response<CacheBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body<Data = Bytes> + Unpin,
    ResBody::Error: Into<BoxError>,
{
    let (parts, body) = request.into_parts();
    let primary = key::primary_key(&parts, &rule.key_headers);

    // 1. What is stored for this request: memory, then Redis; its Vary variant if it has one.
    let resolved = variants::lookup(&state.cache, &primary, &parts.headers).await;
    let now = SystemTime::now();
    let reuse = resolved.found.as_ref().map(|found| {
        let entry = &found.lookup.entry;
        policy::reuse(
            &parts.headers,
            entry.headers(),
            entry.age_at(now),
            entry.ttl(),
        )
    });

    // 2. Fresh: answered from the cache.
    if let (Some(found), Some(Reuse::Fresh)) = (&resolved.found, reuse) {
        let status = Status::hit(found.lookup.source);
        return Ok(response::from_entry(
            &parts.method,
            &parts.headers,
            &found.lookup.entry,
            status,
            &state.cache_name,
        ));
    }

    // 3. `only-if-cached` with nothing usable: no request to the origin (RFC 9111 §5.2.1.7).
    if CacheControl::from_headers(&parts.headers).only_if_cached {
        let status = Status::detail("only-if-cached");
        return Ok(response::gateway_timeout(status, &state.cache_name));
    }

    let forward = match reuse {
        Some(Reuse::ValidateStale) => Forward::Stale,
        Some(Reuse::ValidateRequested) => Forward::Request,
        _ => Forward::Miss,
    };
    let stale = resolved.found.filter(|_| reuse != Some(Reuse::Unusable));
    let exchange = Exchange {
        state: &state,
        rule: &rule,
        primary: &primary,
        variants: resolved.variants.as_ref(),
        stale: stale.as_ref(),
        forward,
    };

    // 4. HEAD goes to the origin as is: it never creates or changes an entry.
    if parts.method == Method::HEAD {
        return exchange.pass_on(origin, parts, body).await;
    }

    // 5. An authorized GET is answered for that client alone.
    if parts.headers.contains_key(AUTHORIZATION) {
        return exchange.fetch(origin, parts, body).await.0;
    }

    // 6. Other GETs: one origin request per key at a time; the others share its result.
    let flight_key = match (&stale, &resolved.variants) {
        (Some(found), _) => found.key.clone(),
        (None, Some(variants)) => variants.key_for(&primary, &parts.headers),
        (None, None) => primary.clone(),
    };
    match state.flights.turn::<Unshared>(&flight_key).await {
        Turn::Lead(flight) => {
            let (result, fetched) = exchange.fetch(origin, parts, body).await;
            flight.finish(fetched.ok_or(Arc::new(Unshared)));
            result
        }
        Turn::Follow(Ok(fetched)) if fetched.stored.selected_by(&primary, &parts.headers) => {
            let mut status = Status::forward(Forward::Miss);
            status.collapsed = true;
            Ok(response::from_entry(
                &parts.method,
                &parts.headers,
                &fetched.entry,
                status,
                &state.cache_name,
            ))
        }
        Turn::Follow(_) => exchange.fetch(origin, parts, body).await.0,
    }
}

/// One exchange with the origin for a request the cache could not answer.
struct Exchange<'a> {
    state: &'a State,
    rule: &'a Rule,
    primary: &'a str,
    variants: Option<&'a Variants>,
    /// The stored response being validated, if any.
    stale: Option<&'a Found>,
    forward: Forward,
}

type Outcome<B, E> = (Result<Response<CacheBody<B>>, E>, Option<Fetched>);

impl Exchange<'_> {
    /// Forwards unchanged and passes the response on without storing it.
    async fn pass_on<S, ReqBody, ResBody>(
        &self,
        mut origin: S,
        parts: Parts,
        body: ReqBody,
    ) -> Result<Response<CacheBody<ResBody>>, S::Error>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    {
        let response = origin.call(Request::from_parts(parts, body)).await?;
        let (parts, body) = response.into_parts();
        let mut status = Status::forward(self.forward);
        status.forward_status = Some(parts.status.as_u16());
        Ok(response::from_origin(
            parts,
            CacheBody::streaming(body),
            status,
            &self.state.cache_name,
        ))
    }

    /// Asks the origin (conditionally, when a stale entry has validators), stores what may be
    /// stored, and answers the client. The second value is the stored result, for sharing.
    async fn fetch<S, ReqBody, ResBody>(
        &self,
        mut origin: S,
        mut parts: Parts,
        body: ReqBody,
    ) -> Outcome<ResBody, S::Error>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>>,
        ResBody: Body<Data = Bytes> + Unpin,
        ResBody::Error: Into<BoxError>,
    {
        // The client's own validators are answered from the full response; ask with ours.
        let client_headers = parts.headers.clone();
        parts.headers.remove(IF_NONE_MATCH);
        parts.headers.remove(IF_MODIFIED_SINCE);
        if let Some(stale) = self.stale {
            for (name, value) in policy::validators(stale.lookup.entry.headers()) {
                parts.headers.insert(name, value);
            }
        }
        let request_time = SystemTime::now();
        let response = match origin.call(Request::from_parts(parts, body)).await {
            Ok(response) => response,
            Err(error) => return (Err(error), None),
        };
        let times = (request_time, SystemTime::now());
        let (response_parts, response_body) = response.into_parts();
        match self.stale {
            Some(stale) if response_parts.status == StatusCode::NOT_MODIFIED => {
                self.refresh(stale, &response_parts.headers, &client_headers, times)
                    .await
            }
            _ => {
                self.store_or_pass(response_parts, response_body, &client_headers, times)
                    .await
            }
        }
    }

    /// A 304 to our validation: the stored response, with the 304's header fields, is fresh
    /// again (RFC 9111 §4.3.4); the client gets it whole.
    async fn refresh<B, E>(
        &self,
        stale: &Found,
        not_modified: &HeaderMap,
        client_headers: &HeaderMap,
        (request_time, response_time): (SystemTime, SystemTime),
    ) -> Outcome<B, E> {
        let stored = &stale.lookup.entry;
        let mut headers = stored.headers().clone();
        policy::update_headers(&mut headers, not_modified);
        let plan = policy::plan_store(
            &Method::GET,
            client_headers,
            stored.status(),
            &headers,
            request_time,
            response_time,
            &self.settings(),
        );
        let mut status = Status::forward(self.forward);
        status.forward_status = Some(StatusCode::NOT_MODIFIED.as_u16());
        let (entry, fetched) = match plan {
            Ok(plan) => {
                let entry = entry_from(
                    stored.status(),
                    headers,
                    stored.body().clone(),
                    stored.trailers().clone(),
                    &plan,
                    response_time,
                );
                let stored = self.store(&entry, client_headers).await;
                status.stored = true;
                (entry.clone(), Some(Fetched { entry, stored }))
            }
            Err(_) => {
                self.forget_stale().await;
                let plan = StorePlan {
                    ttl: Duration::ZERO,
                    initial_age: Duration::ZERO,
                    keep_stale: Duration::ZERO,
                    strip: Vec::new(),
                };
                let entry = entry_from(
                    stored.status(),
                    headers,
                    stored.body().clone(),
                    stored.trailers().clone(),
                    &plan,
                    response_time,
                );
                (entry, None)
            }
        };
        let response = response::from_entry(
            &Method::GET,
            client_headers,
            &entry,
            status,
            &self.state.cache_name,
        );
        (Ok(response), fetched)
    }

    /// A full response: stored when the policy allows and it fits, else streamed through.
    async fn store_or_pass<B, E>(
        &self,
        parts: http::response::Parts,
        body: B,
        client_headers: &HeaderMap,
        (request_time, response_time): (SystemTime, SystemTime),
    ) -> Outcome<B, E>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: Into<BoxError>,
    {
        let mut status = Status::forward(self.forward);
        status.forward_status = Some(parts.status.as_u16());
        let plan = policy::plan_store(
            &Method::GET,
            client_headers,
            parts.status,
            &parts.headers,
            request_time,
            response_time,
            &self.settings(),
        );
        let declared_too_large = body
            .size_hint()
            .exact()
            .is_some_and(|length| length > self.state.max_entry_size);
        let plan = match plan {
            Ok(plan) if !declared_too_large => plan,
            _ => {
                // A final answer that may not be stored supersedes what was stored before.
                if !parts.status.is_server_error() {
                    self.forget_stale().await;
                }
                let response = response::from_origin(
                    parts,
                    CacheBody::streaming(body),
                    status,
                    &self.state.cache_name,
                );
                return (Ok(response), None);
            }
        };
        let cache_name = &self.state.cache_name;
        match buffer(body, self.state.max_entry_size).await {
            Buffered::Complete { data, trailers } => {
                let entry = entry_from(
                    parts.status,
                    parts.headers,
                    data,
                    trailers,
                    &plan,
                    response_time,
                );
                let stored = self.store(&entry, client_headers).await;
                status.stored = true;
                let response =
                    response::from_entry(&Method::GET, client_headers, &entry, status, cache_name);
                (Ok(response), Some(Fetched { entry, stored }))
            }
            Buffered::TooLarge { prefix, rest } => {
                let body = CacheBody::prefixed(prefix, rest);
                (
                    Ok(response::from_origin(parts, body, status, cache_name)),
                    None,
                )
            }
            Buffered::Failed { prefix, error } => {
                let body = CacheBody::failed(prefix, error);
                (
                    Ok(response::from_origin(parts, body, status, cache_name)),
                    None,
                )
            }
        }
    }

    fn settings(&self) -> Settings {
        Settings {
            default_ttl: self.state.default_ttl,
            ttl_override: self.rule.ttl,
            keep_stale: self.state.keep_stale,
        }
    }

    async fn store(&self, entry: &CachedEntry, request_headers: &HeaderMap) -> Stored {
        variants::store(
            &self.state.cache,
            self.primary,
            request_headers,
            entry,
            self.variants,
        )
        .await
    }

    /// Drops the entry being validated; a Redis failure is already counted and logged.
    async fn forget_stale(&self) {
        if let Some(stale) = self.stale {
            let _ = self.state.cache.invalidate(&stale.key).await;
        }
    }
}

/// The entry for a response: connection-specific and internal fields removed, the fields the
/// origin asked not to share (`private="…"`, `no-cache="…"`) removed, a `Date` added if missing
/// (RFC 9110 §6.6.1), and its age counted from when the origin generated it.
fn entry_from(
    status: StatusCode,
    mut headers: HeaderMap,
    body: Bytes,
    trailers: HeaderMap,
    plan: &StorePlan,
    response_time: SystemTime,
) -> CachedEntry {
    policy::remove_hop_by_hop(&mut headers);
    for name in plan.strip.iter().chain([&AGE, &CACHE_STATUS, &VARIANTS]) {
        headers.remove(name);
    }
    if !headers.contains_key(DATE) {
        if let Ok(date) = HeaderValue::from_str(&httpdate::fmt_http_date(response_time)) {
            headers.insert(DATE, date);
        }
    }
    CachedEntry::new(body, plan.ttl)
        .with_status(status)
        .with_headers(headers)
        .with_trailers(trailers)
        .with_stale_ttl(plan.keep_stale)
        .with_stored_at(
            response_time
                .checked_sub(plan.initial_age)
                .unwrap_or(SystemTime::UNIX_EPOCH),
        )
}
