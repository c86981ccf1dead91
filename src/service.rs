//! [`CacheService`]: the request path, top to bottom.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::header::UPGRADE;
use http::request::Parts;
use http::{Method, Request, Response};
use http_body::Body;
use tower::util::Oneshot;
use tower::{Service, ServiceExt};

use crate::body::{BoxError, CacheBody};
use crate::future::ResponseFuture;
use crate::http::cache_control::CacheControl;
use crate::http::cache_status::{Forward, Status, CACHE_STATUS};
use crate::http::routes::Rule;
use crate::http::state::State;
use crate::http::{entries, key, purge, read, response, target, write};
use crate::origin::Origin;
use crate::stats::Counter;
use crate::store::TieredCache;

/// Caches the responses of the wrapped service; built by [`CacheLayer`](crate::CacheLayer).
///
/// GET and HEAD requests are looked up (memory, then Redis) and answered from the cache while
/// fresh; misses and revalidations go to the inner service, one request per key at a time, and
/// storable responses are stored. Every other request passes straight through. Every response
/// carries a `Cache-Status` member (RFC 9211) naming what happened.
///
/// The service is always ready: the inner service's readiness (a `ConcurrencyLimit` permit, a
/// `Buffer` slot) is acquired only by a request that calls it, when it does, so hits never
/// wait for the origin's capacity and requests waiting for another's fill hold none of it.
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
    type Future = ResponseFuture<Oneshot<S, Request<ReqBody>>, ResBody, S::Error>;

    /// Always ready: the cache itself has no capacity limit (see [`CacheService`]).
    #[inline]
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
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
        let span = request_span(&request);
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
                let future = self.inner.clone().oneshot(request);
                let mut status = Status::forward(Forward::Bypass);
                status.detail = detail;
                ResponseFuture::bypass(future, self.state.clone(), status)
            }
            Path::Mutate => {
                let origin = self.origin();
                let future = write::mutate(self.state.clone(), origin, request, rule);
                ResponseFuture::cached(Box::pin(Timed::new(future, span, started)))
            }
            Path::Read => {
                let (parts, body) = request.into_parts();
                let primary = key::primary_key(&parts, &rule.key_headers);
                // The common case needs no future: a fresh entry in memory answers at once.
                if let Some((response, due)) = fresh_in_memory(&self.state, &parts, &primary) {
                    record_memory_hit(&span, &primary, started);
                    if due {
                        let origin = self.origin();
                        read::refresh_ahead(&self.state, origin, parts, body, primary, rule);
                    }
                    return ResponseFuture::ready(response);
                }
                let origin = self.origin();
                let state = self.state.clone();
                if read::is_pass(&state, &parts, &primary) {
                    let future = read::pass(state, origin, parts, body, primary, rule);
                    return ResponseFuture::cached(Box::pin(Timed::new(future, span, started)));
                }
                let future = read::serve(state, origin, parts, body, primary, rule);
                ResponseFuture::cached(Box::pin(Timed::new(future, span, started)))
            }
        }
    }
}

impl<S: Clone> CacheService<S> {
    /// The inner service for a path that may call it: made ready by each call, not before.
    fn origin(&self) -> Origin<S> {
        Origin::new(self.inner.clone())
    }
}

/// The span of one request; `key` and `outcome` are recorded as they become known.
fn request_span<B>(request: &Request<B>) -> tracing::Span {
    tracing::debug_span!(
        "tiered_cache",
        method = %request.method(),
        uri = %request.uri(),
        key = tracing::field::Empty,
        outcome = tracing::field::Empty,
    )
}

/// What the fast path records of a memory hit, as [`Timed`] does for the others.
fn record_memory_hit(span: &tracing::Span, primary: &str, started: Instant) {
    span.record("key", primary);
    span.record("outcome", "hit");
    crate::metrics::request_duration("hit", started.elapsed());
}

/// A fresh entry in memory for this request, answered without touching any other tier: the
/// same answer as step 2 of [`serve`], without its future. `None` sends the request the long
/// way (which also handles every case this declines: Redis, stale entries, unknown tags).
///
/// The flag says whether the entry is due for refresh-ahead (`http.refresh_ahead`).
#[allow(clippy::ptr_arg)] // the memory map is keyed by `String`
fn fresh_in_memory<B>(
    state: &State,
    parts: &Parts,
    primary: &String,
) -> Option<(Response<CacheBody<B>>, bool)> {
    let now = SystemTime::now();
    let entry = entries::fresh_in_memory(&state.cache, primary, &parts.headers, now)
        .filter(|entry| entries::answers_fresh(entry, &parts.headers, now))?;
    let age = entry.age_at(now);
    state.cache.count(Counter::MemoryHits);
    let response = response::from_entry_with_status(
        &parts.method,
        &parts.headers,
        &entry,
        age,
        Some(state.memory_hit_status.clone()),
    );
    Some((response, state.refresh_due(&entry, age)))
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
