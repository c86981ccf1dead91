//! One exchange with the origin for a GET the cache could not answer: the (conditional)
//! request, the 304 refresh or the store decision, and the response to the client.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{HeaderMap, CONTENT_RANGE, IF_MODIFIED_SINCE, IF_NONE_MATCH};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use tower::Service;

use super::buffer::{buffer, Buffered};
use super::cache_status::{Forward, Status};
use super::policy::{self, Settings, StorePlan};
use super::range::Held;
use super::response;
use super::routes::Rule;
use super::state::{Received, State, Times};
use super::variants::{self, Found, Placement, Stored, Variants};
use crate::body::{BoxError, CacheBody};
use crate::framing;
use crate::store::CachedEntry;

/// A stored response shared with the requests that waited for it.
#[derive(Clone)]
pub(crate) struct Fetched {
    pub(crate) entry: CachedEntry,
    pub(crate) stored: Stored,
}

/// The flight's error when the leader's response could not be shared (not storable, too large,
/// failed): each waiting request then asks the origin itself.
#[derive(Debug)]
pub(crate) struct Unshared;

/// One exchange with the origin for a request the cache could not answer.
pub(crate) struct Exchange<'a> {
    pub(crate) state: &'a State,
    pub(crate) rule: &'a Rule,
    pub(crate) primary: &'a str,
    pub(crate) variants: Option<&'a Variants>,
    /// The stored response being validated, if any.
    pub(crate) stale: Option<&'a Found>,
    pub(crate) forward: Forward,
}

/// What a response to be stored is.
#[derive(Clone, Copy)]
enum Representation {
    /// The whole resource.
    Complete,
    /// A `206` holding one range of it (RFC 9111 §3.3).
    Partial(Held),
}

impl Representation {
    /// The status whose storage rules apply: a part is judged as the complete `200` would be
    /// (RFC 9111 §3.3; 206 is heuristically cacheable too, RFC 9110 §15.1).
    fn judged_as(self, status: StatusCode) -> StatusCode {
        match self {
            Self::Complete => status,
            Self::Partial(_) => StatusCode::OK,
        }
    }

    /// Whether a body of `len` bytes is what this representation says it is.
    fn fits(self, len: usize) -> bool {
        match self {
            Self::Complete => true,
            Self::Partial(held) => held.len() == len,
        }
    }
}

/// Why the origin gave no usable response.
enum OriginFailure<E> {
    Error(E),
    Timeout,
    /// Its framing cannot be trusted (RFC 9112 §6.3): discarded.
    Framing,
}

impl<E> OriginFailure<E> {
    /// An error or a timeout is no answer at all: the cache is "disconnected" (RFC 9111
    /// §4.2.4). An answer with broken framing is an answer, judged like a 5xx.
    fn failed(&self) -> Failed {
        match self {
            Self::Error(_) | Self::Timeout => Failed::Unreachable,
            Self::Framing => Failed::Unusable,
        }
    }
}

/// What the origin did instead of answering usefully, for [`Exchange::stale_on_error`].
#[derive(Clone, Copy)]
enum Failed {
    /// It answered with this 5xx.
    Status(StatusCode),
    /// It gave a response that cannot be used.
    Unusable,
    /// It gave none.
    Unreachable,
}

pub(crate) type Outcome<B, E> = (Result<Response<CacheBody<B>>, E>, Option<Fetched>);

impl Exchange<'_> {
    /// Forwards unchanged and passes the response on without storing it.
    pub(crate) async fn pass_on<S, ReqBody, ResBody>(
        &self,
        mut origin: S,
        parts: Parts,
        body: ReqBody,
    ) -> Result<Response<CacheBody<ResBody>>, S::Error>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>>,
        ResBody: Body<Data = Bytes>,
        ResBody::Error: Into<BoxError>,
    {
        let mut parts = parts;
        self.state.to_origin(&mut parts.headers);
        let response = match self
            .call_origin(&mut origin, Request::from_parts(parts, body))
            .await
        {
            Ok(response) => response,
            Err(failure) => return self.failed(failure),
        };
        let (parts, body) = response.into_parts();
        Ok(self.streamed(parts, body))
    }

    /// Forwards a range request for which nothing complete is stored. A `206` with one byte
    /// range is stored, so that later requests for ranges inside it are answered from the cache
    /// (RFC 9111 §3.3), and one holding every byte as the complete response; a `200` (an origin
    /// may ignore `Range`) is stored as the complete response; anything else passes through.
    pub(crate) async fn fetch_range<S, ReqBody, ResBody>(
        &self,
        mut origin: S,
        mut parts: Parts,
        body: ReqBody,
    ) -> Result<Response<CacheBody<ResBody>>, S::Error>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>>,
        ResBody: Body<Data = Bytes> + Unpin,
        ResBody::Error: Into<BoxError>,
    {
        let client_headers = parts.headers.clone();
        self.state.to_origin(&mut parts.headers);
        let request_time = SystemTime::now();
        let request = Request::from_parts(parts, body);
        let response = match self.call_origin(&mut origin, request).await {
            Ok(response) => response,
            Err(failure) => return self.failed(failure),
        };
        let times = Times {
            request: request_time,
            response: SystemTime::now(),
        };
        let (parts, body) = response.into_parts();
        let representation = match parts.status {
            StatusCode::OK => Representation::Complete,
            StatusCode::PARTIAL_CONTENT => match Held::from_headers(&parts.headers) {
                Some(held) => Representation::Partial(held),
                None => return Ok(self.streamed(parts, body)),
            },
            _ => return Ok(self.streamed(parts, body)),
        };
        let (response, _) = self
            .store_or_pass(parts, body, &client_headers, times, representation)
            .await;
        response
    }

    /// The origin's response passed on as it streams, not stored.
    fn streamed<B>(&self, parts: http::response::Parts, body: B) -> Response<CacheBody<B>>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        let mut status = Status::forward(self.forward);
        status.forward_status = Some(parts.status.as_u16());
        self.state
            .origin_response(parts, CacheBody::streaming(body), status)
    }

    /// Calls the origin, bounded by `http.origin_timeout` when one is set; its response's
    /// framing settled ([`framing::settle`]).
    async fn call_origin<S, ReqBody, ResBody>(
        &self,
        origin: &mut S,
        request: Request<ReqBody>,
    ) -> Result<Response<ResBody>, OriginFailure<S::Error>>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    {
        let call = origin.call(request);
        let result = match self.state.origin_timeout {
            Some(limit) => tokio::time::timeout(limit, call)
                .await
                .map_err(|_| OriginFailure::Timeout)?,
            None => call.await,
        };
        let mut response = result.map_err(OriginFailure::Error)?;
        framing::settle(response.headers_mut()).map_err(|_| OriginFailure::Framing)?;
        Ok(response)
    }

    /// The answer to the client when the origin gave none that can be used.
    fn failed<B, E>(&self, failure: OriginFailure<E>) -> Result<Response<CacheBody<B>>, E> {
        match failure {
            OriginFailure::Error(error) => Err(error),
            OriginFailure::Timeout => Ok(self.timed_out()),
            OriginFailure::Framing => Ok(response::bad_gateway(
                Status::forward(self.forward),
                &self.state.cache_name,
            )),
        }
    }

    /// The stale entry, when the origin failed and `stale-if-error` allows it (RFC 5861 §4), or
    /// the origin gave no answer and `http.stale_if_unreachable` does (RFC 9111 §4.2.4). Both
    /// windows are zero for entries whose directives forbid serving stale.
    fn stale_on_error<B>(
        &self,
        client_headers: &HeaderMap,
        failed: Failed,
    ) -> Option<Response<CacheBody<B>>> {
        let stale = self.stale?;
        let entry = &stale.lookup.entry;
        let windows =
            policy::stale_windows(entry.headers(), client_headers, self.state.default_stale);
        let window = match failed {
            Failed::Unreachable => windows.if_error.max(windows.if_unreachable),
            Failed::Status(_) | Failed::Unusable => windows.if_error,
        };
        let age = entry.age_at(SystemTime::now());
        if !policy::within_window(window, age, entry.ttl()) {
            return None;
        }
        tracing::debug!(key = stale.key, "origin failed; serving stale");
        let fwd_status = match failed {
            Failed::Status(status) => Some(status.as_u16()),
            Failed::Unusable | Failed::Unreachable => None,
        };
        let status = Status::stale(stale.lookup.source, fwd_status);
        Some(response::from_entry(
            &Method::GET,
            client_headers,
            entry,
            status,
            &self.state.cache_name,
        ))
    }

    /// The cache's own answer when the origin did not answer in time.
    fn timed_out<B>(&self) -> Response<CacheBody<B>> {
        let status = Status::forward(self.forward);
        response::gateway_timeout(status, &self.state.cache_name)
    }

    /// Asks the origin (conditionally, when a stale entry has validators), stores what may be
    /// stored, and answers the client. The second value is the stored result, for sharing.
    pub(crate) async fn fetch<S, ReqBody, ResBody>(
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
        self.state.to_origin(&mut parts.headers);
        if let Some(stale) = self.stale {
            for (name, value) in policy::validators(stale.lookup.entry.headers()) {
                parts.headers.insert(name, value);
            }
        }
        let request_time = SystemTime::now();
        let request = Request::from_parts(parts, body);
        let response = match self.call_origin(&mut origin, request).await {
            Ok(response) if response.status().is_server_error() => {
                let failed = Failed::Status(response.status());
                match self.stale_on_error(&client_headers, failed) {
                    Some(stale) => return (Ok(stale), None),
                    None => response,
                }
            }
            Ok(response) => response,
            Err(failure) => {
                if let Some(stale) = self.stale_on_error(&client_headers, failure.failed()) {
                    return (Ok(stale), None);
                }
                return (self.failed(failure), None);
            }
        };
        let times = Times {
            request: request_time,
            response: SystemTime::now(),
        };
        let (response_parts, response_body) = response.into_parts();
        match self.stale {
            Some(stale) if response_parts.status == StatusCode::NOT_MODIFIED => {
                self.refresh(stale, &response_parts.headers, &client_headers, times)
                    .await
            }
            _ => {
                let complete = Representation::Complete;
                self.store_or_pass(
                    response_parts,
                    response_body,
                    &client_headers,
                    times,
                    complete,
                )
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
        times: Times,
    ) -> Outcome<B, E> {
        let stored = &stale.lookup.entry;
        let mut headers = stored.headers().clone();
        policy::update_headers(&mut headers, not_modified);
        let received = |headers| Received {
            status: stored.status(),
            headers,
            body: stored.body().clone(),
            trailers: stored.trailers().clone(),
        };
        let Times {
            request: request_time,
            response: response_time,
        } = times;
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
                let entry = self.state.entry(received(headers), &plan, self.rule, times);
                let stored = self.store(&entry, client_headers).await;
                status.stored = stored.is_some();
                let fetched = stored.map(|stored| Fetched {
                    entry: entry.clone(),
                    stored,
                });
                (entry, fetched)
            }
            Err(_) => {
                self.forget_stale().await;
                let plan = StorePlan {
                    ttl: Duration::ZERO,
                    initial_age: Duration::ZERO,
                    keep_stale: Duration::ZERO,
                    strip: Vec::new(),
                    targeted: None,
                };
                (
                    self.state.entry(received(headers), &plan, self.rule, times),
                    None,
                )
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
        times: Times,
        representation: Representation,
    ) -> Outcome<B, E>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: Into<BoxError>,
    {
        let plan = policy::plan_store(
            &Method::GET,
            client_headers,
            representation.judged_as(parts.status),
            &parts.headers,
            times.request,
            times.response,
            &self.settings(),
        );
        let declared_too_large = body
            .size_hint()
            .exact()
            .is_some_and(|length| length > self.state.max_entry_size);
        let plan = match plan {
            Ok(plan) if !declared_too_large => plan,
            _ => {
                // A final answer that may not be stored supersedes what was stored before; a
                // 5xx does not, and neither does a 1xx, which is no final answer at all.
                if !parts.status.is_server_error() && !parts.status.is_informational() {
                    self.forget_stale().await;
                }
                return (Ok(self.streamed(parts, body)), None);
            }
        };
        let mut status = Status::forward(self.forward);
        status.forward_status = Some(parts.status.as_u16());
        let cache_name = &self.state.cache_name;
        match buffer(body, self.state.max_entry_size).await {
            Buffered::Complete { data, trailers }
                if !representation.fits(data.len())
                    || !framing::declares(&parts.headers, data.len()) =>
            {
                // A body that is not the range its Content-Range names, or not the length its
                // Content-Length declares, is passed on, not stored.
                let body = CacheBody::cached(data, trailers);
                (Ok(self.state.origin_response(parts, body, status)), None)
            }
            Buffered::Complete { data, trailers } => {
                let mut received = Received {
                    status: parts.status,
                    headers: parts.headers.clone(),
                    body: data.clone(),
                    trailers: trailers.clone(),
                };
                if matches!(representation, Representation::Partial(held) if held.is_whole()) {
                    // All of it (a `bytes=0-` answer): stored as the complete response (§3.4).
                    received.status = StatusCode::OK;
                    received.headers.remove(CONTENT_RANGE);
                }
                let entry = self.state.entry(received, &plan, self.rule, times);
                let stored = self.store(&entry, client_headers).await;
                status.stored = stored.is_some();
                // The client gets the origin's response as it came (its own Age, fields the
                // cache may not store), or a 304 when its own conditionals match.
                let response = if policy::not_modified(client_headers, entry.headers()) {
                    response::from_entry(&Method::GET, client_headers, &entry, status, cache_name)
                } else {
                    self.state
                        .origin_response(parts, CacheBody::cached(data, trailers), status)
                };
                let fetched = stored.map(|stored| Fetched { entry, stored });
                (Ok(response), fetched)
            }
            Buffered::TooLarge { prefix, rest } => {
                let body = CacheBody::prefixed(prefix, rest);
                (Ok(self.state.origin_response(parts, body, status)), None)
            }
            Buffered::Failed { prefix, error } => {
                let body = CacheBody::failed(prefix, error);
                (Ok(self.state.origin_response(parts, body, status)), None)
            }
        }
    }

    fn settings(&self) -> Settings<'_> {
        self.state.settings(self.rule)
    }

    async fn store(&self, entry: &CachedEntry, request_headers: &HeaderMap) -> Option<Stored> {
        let placement = Placement {
            primary: self.primary,
            request_headers,
            known: self.variants,
            new_variant: self.stale.is_none(),
            max_variants: self.state.max_variants,
        };
        variants::store(&self.state.cache, placement, entry).await
    }

    /// Drops the entry being validated; a Redis failure is already counted and logged.
    async fn forget_stale(&self) {
        if let Some(stale) = self.stale {
            let _ = self.state.cache.invalidate(&stale.key).await;
        }
    }
}
