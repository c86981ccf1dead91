//! [`CacheService`]: the request path, top to bottom.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_LOCATION, LOCATION, RANGE, UPGRADE};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use tower::Service;

use crate::body::{BoxError, CacheBody};
use crate::config::WriteMode;
use crate::future::ResponseFuture;
use crate::http::buffer::{buffer, Buffered};
use crate::http::cache_control::CacheControl;
use crate::http::cache_status::{Forward, Status, CACHE_STATUS};
use crate::http::exchange::{Exchange, Fetched, Unshared};
use crate::http::policy::{self, Reuse};
use crate::http::routes::Rule;
use crate::http::state::{Received, State, Times};
use crate::http::variants::{Found, Placement, Resolved, Stored, Variants};
use crate::http::{key, purge, range, response, target, variants, write_behind};
use crate::stats::Counter;
use crate::store::coalesce::Turn;
use crate::store::{LoadLock, Lookup, TieredCache};

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
    // No `'static` bounds on the projections (`S: 'static` implies them): stated, they make
    // futures awaiting this service unprovably `Send` when `S::Error` is a trait object.
    S::Future: Send,
    S::Error: Send,
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
        let (mut parts, body) = request.into_parts();
        // 1. One validated target: what is keyed and matched is what the origin receives.
        if let Err(refusal) = target::validate(&mut parts, self.state.forwarded_headers) {
            tracing::debug!(uri = %parts.uri, reason = refusal.detail(), "request refused");
            return ResponseFuture::ready(response::refused(refusal, &self.state.cache_name));
        }
        let routes = &self.state.routes;
        let selected = routes.select(parts.uri.path());
        let rule = selected
            .unwrap_or_else(|| routes.rule_for(parts.uri.path()))
            .clone();
        let request = Request::from_parts(parts, body);
        let started = Instant::now();
        let span = tracing::debug_span!(
            "tiered_cache",
            method = %request.method(),
            uri = %request.uri(),
            key = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
        match classify(&request, &rule, selected.is_none()) {
            Path::Purge => {
                let state = self.state.clone();
                let (parts, _body) = request.into_parts();
                ResponseFuture::cached(Box::pin(async move {
                    Ok(purge::handle(&state, &parts, &rule).await)
                }))
            }
            Path::Bypass(detail) => {
                self.state.cache.count(Counter::Bypasses);
                let future = self.take_ready_origin().call(request);
                let mut status = Status::forward(Forward::Bypass);
                status.detail = detail;
                ResponseFuture::bypass(future, self.state.clone(), status)
            }
            Path::Mutate => {
                let future = mutate(self.state.clone(), self.take_ready_origin(), request, rule);
                ResponseFuture::cached(Box::pin(Timed::new(future, span, started)))
            }
            Path::Read => {
                let (parts, body) = request.into_parts();
                let primary = key::primary_key(&parts, &rule.key_headers);
                // The common case needs no future: a fresh entry in memory answers at once.
                if let Some(response) = fresh_in_memory(&self.state, &parts, &primary) {
                    span.record("key", primary.as_str());
                    span.record("outcome", "hit");
                    crate::metrics::request_duration("hit", started.elapsed());
                    return ResponseFuture::ready(response);
                }
                let origin = self.take_ready_origin();
                let future = serve(self.state.clone(), origin, parts, body, primary, rule);
                ResponseFuture::cached(Box::pin(Timed::new(future, span, started)))
            }
        }
    }
}

impl<S: Clone> CacheService<S> {
    /// The inner service driven to readiness by `poll_ready`, for a request that calls it; a
    /// clone takes its place. Requests the cache answers itself leave the ready one in place.
    fn take_ready_origin(&mut self) -> S {
        let fresh = self.inner.clone();
        std::mem::replace(&mut self.inner, fresh)
    }
}

/// A fresh entry in memory for this request, answered without touching any other tier: the
/// same answer as step 2 of [`serve`], without its future. `None` sends the request the long
/// way (which also handles every case this declines: Redis, stale entries, unknown tags).
#[allow(clippy::ptr_arg)] // the memory map is keyed by `String`
fn fresh_in_memory<B>(
    state: &State,
    parts: &Parts,
    primary: &String,
) -> Option<Response<CacheBody<B>>> {
    let now = SystemTime::now();
    let entry = variants::fresh_in_memory(&state.cache, primary, &parts.headers, now)
        .filter(|entry| !range::is_partial(entry))?;
    let age = entry.age_at(now);
    if policy::reuse(&parts.headers, entry.headers(), age, entry.ttl()) != Reuse::Fresh {
        return None;
    }
    state.cache.count(Counter::MemoryHits);
    Some(response::from_entry_with_status(
        &parts.method,
        &parts.headers,
        &entry,
        age,
        Some(state.memory_hit_status.clone()),
    ))
}

pin_project_lite::pin_project! {
    /// A request through the cache: polled inside its tracing span; on completion, its duration
    /// is recorded by outcome (and the outcome in the span). A struct rather than an `async fn`,
    /// which would hold a second copy of the request's (large) future.
    struct Timed<F> {
        #[pin]
        request: F,
        span: tracing::Span,
        started: Instant,
    }
}

impl<F> Timed<F> {
    fn new(request: F, span: tracing::Span, started: Instant) -> Self {
        Self {
            request,
            span,
            started,
        }
    }
}

impl<F, B, E> std::future::Future for Timed<F>
where
    F: std::future::Future<Output = Result<Response<CacheBody<B>>, E>>,
{
    type Output = F::Output;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        let result = std::task::ready!(this.request.poll(cx));
        let outcome = match &result {
            Ok(response) => outcome_of(response.headers()),
            Err(_) => "error",
        };
        this.span.record("outcome", outcome);
        crate::metrics::request_duration(outcome, this.started.elapsed());
        Poll::Ready(result)
    }
}

/// `hit`, `stale`, `miss` or `bypass` (an unsafe method), read from this cache's `Cache-Status`
/// member (the last). Bypassed requests are not timed here: they never reach a `Timed`.
fn outcome_of(headers: &http::HeaderMap) -> &'static str {
    let member = headers
        .get_all(&CACHE_STATUS)
        .iter()
        .next_back()
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    if member.contains("fwd=stale") && member.contains("; hit") {
        "stale"
    } else if member.contains("; hit") {
        "hit"
    } else if member.contains("fwd=method") {
        "bypass"
    } else {
        "miss"
    }
}

/// Which path a request takes through the cache.
enum Path {
    /// GET or HEAD: looked up, answered or fetched and stored.
    Read,
    /// A method that may change the resource: forwarded, then invalidates (or writes through).
    Mutate,
    /// `PURGE`: answered by the cache itself.
    Purge,
    /// Untouched: bypass routes, OPTIONS and TRACE, upgrade requests, `Cache-Control: no-store`,
    /// GETs with a body; and requests whose path is ambiguous (the `Cache-Status` detail says).
    Bypass(Option<&'static str>),
}

fn classify<B: Body>(request: &Request<B>, rule: &Rule, ambiguous_path: bool) -> Path {
    let method = request.method();
    let headers = request.headers();
    if method.as_str() == "PURGE" {
        Path::Purge
    } else if ambiguous_path {
        Path::Bypass(Some("ambiguous-path"))
    } else if rule.bypass {
        Path::Bypass(None)
    } else if !method.is_safe() {
        Path::Mutate
    } else if !matches!(*method, Method::GET | Method::HEAD)
        || headers.contains_key(UPGRADE)
        || CacheControl::from_headers(headers).no_store
        || !(request.body().is_end_stream() || request.body().size_hint().exact() == Some(0))
    {
        Path::Bypass(None)
    } else {
        Path::Read
    }
}

/// The cached path of one GET or HEAD request whose primary key is `primary`.
async fn serve<S, ReqBody, ResBody>(
    state: Arc<State>,
    origin: S,
    parts: Parts,
    body: ReqBody,
    primary: String,
    rule: Arc<Rule>,
) -> Result<Response<CacheBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send,
    S::Error: Send,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Unpin + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    tracing::Span::current().record("key", primary.as_str());

    // 1. What is stored for this request: memory, then Redis; its Vary variant if it has one. A
    //    stored partial response (206) counts only for a GET of a range inside it while fresh;
    //    otherwise it is as if nothing were stored, and a complete response replaces it.
    let resolved = variants::resolve(&state.cache, &primary, &parts.headers).await;
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
    let (resolved, reuse) = without_unusable_partial(&parts, resolved, reuse);
    let nothing_stored = resolved.found.is_none();
    state
        .cache
        .count_lookup(resolved.found.as_ref().map(|found| &found.lookup));

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

    // 3. Stale, but within stale-while-revalidate: answered at once, refreshed in the background.
    if let (Some(found), Some(Reuse::ValidateStale)) = (&resolved.found, reuse) {
        let entry = &found.lookup.entry;
        let windows = policy::stale_windows(entry.headers(), &parts.headers, state.default_stale);
        let may_serve_stale =
            policy::within_window(windows.while_revalidate, entry.age_at(now), entry.ttl());
        if may_serve_stale && parts.method == Method::GET && !parts.headers.contains_key(RANGE) {
            let response = response::from_entry(
                &parts.method,
                &parts.headers,
                entry,
                Status::stale(found.lookup.source, None),
                &state.cache_name,
            );
            let refresh = Refresh {
                found: found.clone(),
                variants: resolved.variants.clone(),
                primary,
                rule,
            };
            tokio::spawn(refresh.run(state, origin, parts, body));
            return Ok(response);
        }
    }

    // 4. `only-if-cached` with nothing usable: no request to the origin (RFC 9111 §5.2.1.7).
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

    // 5. HEAD and range requests go to the origin as they are. HEAD never creates or changes an
    //    entry; a range answer is stored when nothing is (a fresh complete entry answers
    //    ranges, above).
    if parts.method == Method::HEAD || parts.headers.contains_key(RANGE) {
        if parts.method == Method::GET && nothing_stored {
            return exchange.fetch_range(origin, parts, body).await;
        }
        return exchange.pass_on(origin, parts, body).await;
    }

    // 6. An authorized GET is answered for that client alone.
    if parts.headers.contains_key(AUTHORIZATION) {
        return exchange.fetch(origin, parts, body).await.0;
    }

    // 7. Other GETs: one origin request per key at a time; the others share its result.
    let flight_key = match (&stale, &resolved.variants) {
        (Some(found), _) => found.key.clone(),
        (None, Some(variants)) => variants.key_for(&primary, &parts.headers),
        (None, None) => primary.clone(),
    };
    match state.flights.turn::<Unshared>(&flight_key).await {
        Turn::Lead(flight) => {
            // Across instances (`l2.lock`): one loads, the others take its stored response.
            let lock = match &stale {
                Some(_) => LoadLock::NotNeeded,
                None => {
                    let filled = || stored_by_another(&state, &primary, &parts.headers);
                    state.cache.lock_load(&flight_key, filled).await
                }
            };
            let held = match lock {
                LoadLock::Filled(fetched) => {
                    let mut status = Status::hit(state.cache.shared_source());
                    status.collapsed = true;
                    let response = response::from_entry(
                        &parts.method,
                        &parts.headers,
                        &fetched.entry,
                        status,
                        &state.cache_name,
                    );
                    flight.finish(Ok(fetched));
                    return Ok(response);
                }
                LoadLock::Held(lock) => Some(lock),
                LoadLock::NotNeeded => None,
            };
            let (result, fetched) = exchange.fetch(origin, parts, body).await;
            state.cache.release(held).await;
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

/// `resolved` and `reuse`, without a stored partial response that cannot answer `request`: one
/// that is not fresh, or a request other than a GET of a range inside it.
fn without_unusable_partial(
    request: &Parts,
    resolved: Resolved,
    reuse: Option<Reuse>,
) -> (Resolved, Option<Reuse>) {
    let unusable = resolved.found.as_ref().is_some_and(|found| {
        let entry = &found.lookup.entry;
        range::is_partial(entry)
            && !(reuse == Some(Reuse::Fresh)
                && request.method == Method::GET
                && range::within_partial(&request.headers, entry.headers(), entry.body().len())
                    .is_some())
    });
    if !unusable {
        return (resolved, reuse);
    }
    let resolved = Resolved {
        found: None,
        variants: resolved.variants,
    };
    (resolved, None)
}

/// A request that may change the resource (RFC 9111 §4.4), top to bottom: forwarded; on a
/// success or redirect, the target URI and the same-origin `Location` / `Content-Location` URIs
/// are invalidated everywhere, the tags the response names in `Cache-Invalidate` too, and with
/// write-through the response is stored as the resource's new GET representation.
async fn mutate<S, ReqBody, ResBody>(
    state: Arc<State>,
    mut origin: S,
    request: Request<ReqBody>,
    rule: Arc<Rule>,
) -> Result<Response<CacheBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ReqBody: Body,
    ResBody: Body<Data = Bytes> + Unpin,
    ResBody::Error: Into<BoxError>,
{
    if rule.write == WriteMode::Behind {
        if state.write_behind.get().is_some() {
            return Ok(write_behind::accept(&state, request, &rule).await);
        }
        tracing::warn!("write = \"behind\" without CacheLayer::write_behind_to: writing through");
    }
    let target = key::target_uri(request.uri(), request.headers());
    let primary = key::key_for(&target, request.headers(), &rule.key_headers);
    let request_headers = request.headers().clone();
    let request_time = SystemTime::now();
    let (mut parts, body) = origin.call(request).await?.into_parts();
    let times = Times {
        request: request_time,
        response: SystemTime::now(),
    };
    let mut status = Status::forward(Forward::Method);
    if crate::framing::settle(&mut parts.headers).is_err() {
        return Ok(response::bad_gateway(status, &state.cache_name));
    }
    status.forward_status = Some(parts.status.as_u16());
    if !(parts.status.is_success() || parts.status.is_redirection()) {
        return Ok(state.origin_response(parts, CacheBody::streaming(body), status));
    }

    // 1. The target, and the same-origin resources the response points to, changed.
    let referenced = |name| {
        let value = parts.headers.get(name)?.to_str().ok()?;
        key::same_origin(&target, value)
    };
    let content_location = referenced(&CONTENT_LOCATION);
    // Failures are counted and logged; the origin's answer stands.
    let _ = state.cache.invalidate(&primary).await;
    for uri in [referenced(&LOCATION), content_location.clone()]
        .iter()
        .flatten()
    {
        let path = uri
            .parse::<http::Uri>()
            .map_or_else(|_| "/".to_owned(), |uri| uri.path().to_owned());
        let key_headers = &state.routes.rule_for(&path).key_headers;
        let _ = state
            .cache
            .invalidate(&key::key_for(uri, &request_headers, key_headers))
            .await;
    }

    // 2. So did everything tagged with what the origin names.
    let tags = state.tags_to_invalidate(&parts.headers);
    if !tags.is_empty() {
        let _ = state.cache.invalidate_tags(&tags).await;
    }

    // 3. Write-through: the response is the new representation of the target.
    let writes_through =
        rule.write == WriteMode::Through || content_location.as_deref() == Some(target.as_str());
    let representation = matches!(parts.status, StatusCode::OK | StatusCode::CREATED);
    let plan = policy::plan_store(
        &Method::GET,
        &request_headers,
        StatusCode::OK,
        &parts.headers,
        times.request,
        times.response,
        &state.settings(&rule),
    );
    let plan = match plan {
        Ok(plan) if writes_through && representation => plan,
        _ => return Ok(state.origin_response(parts, CacheBody::streaming(body), status)),
    };
    let (data, trailers) = match buffer(body, state.max_entry_size).await {
        Buffered::Complete { data, trailers }
            if !crate::framing::declares(&parts.headers, data.len()) =>
        {
            return Ok(state.origin_response(parts, CacheBody::cached(data, trailers), status))
        }
        Buffered::Complete { data, trailers } => (data, trailers),
        Buffered::TooLarge { prefix, rest } => {
            return Ok(state.origin_response(parts, CacheBody::prefixed(prefix, rest), status))
        }
        Buffered::Failed { prefix, error } => {
            return Ok(state.origin_response(parts, CacheBody::failed(prefix, error), status))
        }
    };
    let received = Received {
        status: StatusCode::OK,
        headers: parts.headers.clone(),
        body: data.clone(),
        trailers: trailers.clone(),
    };
    let entry = state.entry(received, &plan, &rule, times);
    let placement = Placement {
        primary: &primary,
        request_headers: &request_headers,
        known: None,
        new_variant: true,
        max_variants: state.max_variants,
    };
    status.stored = variants::store(&state.cache, placement, &entry)
        .await
        .is_some();
    Ok(state.origin_response(parts, CacheBody::cached(data, trailers), status))
}

/// A fresh response another instance stored for this request meanwhile.
async fn stored_by_another(
    state: &State,
    primary: &str,
    headers: &http::HeaderMap,
) -> Option<Fetched> {
    let resolved = variants::resolve(&state.cache, primary, headers).await;
    let found = resolved
        .found
        .filter(|found| found.lookup.is_fresh() && !range::is_partial(&found.lookup.entry))?;
    Some(Fetched {
        entry: found.lookup.entry,
        stored: Stored::at(found.key, resolved.variants),
    })
}

/// A background revalidation of an entry served stale (stale-while-revalidate): at most one
/// per entry at a time, and none if another request refreshed it meanwhile.
struct Refresh {
    found: Found,
    variants: Option<Variants>,
    primary: String,
    rule: Arc<Rule>,
}

impl Refresh {
    async fn run<S, ReqBody, ResBody>(
        self,
        state: Arc<State>,
        origin: S,
        parts: Parts,
        body: ReqBody,
    ) where
        S: Service<Request<ReqBody>, Response = Response<ResBody>>,
        ResBody: Body<Data = Bytes> + Unpin,
        ResBody::Error: Into<BoxError>,
    {
        let Turn::Lead(flight) = state.flights.turn::<Unshared>(&self.found.key).await else {
            return;
        };
        if let Some(current) = state
            .cache
            .find(&self.found.key)
            .await
            .filter(Lookup::is_fresh)
        {
            let stored = Stored::at(self.found.key.clone(), self.variants.clone());
            flight.finish(Ok(Fetched {
                entry: current.entry,
                stored,
            }));
            return;
        }
        let exchange = Exchange {
            state: &state,
            rule: &self.rule,
            primary: &self.primary,
            variants: self.variants.as_ref(),
            stale: Some(&self.found),
            forward: Forward::Stale,
        };
        // The client was answered already; the response only matters for what it stored.
        let (_response, fetched) = exchange.fetch(origin, parts, body).await;
        flight.finish(fetched.ok_or(Arc::new(Unshared)));
    }
}
