//! One exchange with the origin for a GET the cache could not answer: the (conditional)
//! request, a 304's refresh of the stored entry, or the origin's response streamed to the
//! client as it arrives while a copy is kept for the cache ([`admit`](super::admit) decides
//! whether it is stored).
//!
//! A streamed fill finishes when its body has passed to the client: the entry goes into memory
//! at once, the requests waiting for it get it whole, and the shared tier is written in the
//! background. A body that fails, outgrows `http.max_entry_size` or is left unread by a client
//! that went away is not stored; the waiting requests then ask the origin themselves. They
//! never receive a truncated body.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use http::header::{HeaderMap, HeaderName, HeaderValue, AGE, IF_RANGE};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::BodyExt;
use tower::Service;

use super::admit::{self, Admission, NotStored, Representation};
use super::cache_status::{Forward, Status};
use super::deadline;
use super::entries::{self, Permit, Unshared};
use super::policy::{self, StorePlan};
use super::range::Held;
use super::response;
use super::routes::Rule;
use super::state::{Received, State, Times};
use super::variants::{Found, Placement, Variants};
use crate::body::{BoxError, CacheBody};
use crate::framing;
use crate::store::{CachedEntry, Ticket};
use crate::tee::{Completion, Tee};

/// One exchange with the origin for a request the cache could not answer.
pub(crate) struct Exchange<'a> {
    pub(crate) state: &'a Arc<State>,
    pub(crate) rule: &'a Arc<Rule>,
    /// The request's primary key (`String`, as the hit-for-pass map is keyed, so that it is
    /// looked up there without a copy).
    pub(crate) primary: &'a String,
    pub(crate) variants: Option<&'a Variants>,
    /// The stored response being validated, if any.
    pub(crate) stale: Option<&'a Found>,
    pub(crate) forward: Forward,
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
    /// The client's preconditions are answered from that response, except `If-Range`, which
    /// goes on: only the origin can send the whole representation when it does not hold, and
    /// either answer is stored as what it is.
    pub(crate) async fn fetch_range<S, ReqBody, ResBody>(
        &self,
        mut origin: S,
        mut parts: Parts,
        body: ReqBody,
    ) -> Result<Response<CacheBody<ResBody>>, S::Error>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>>,
        ResBody: Body<Data = Bytes> + Unpin + Send + 'static,
        ResBody::Error: Into<BoxError>,
    {
        let client_headers = parts.headers.clone();
        remove_preconditions(&mut parts.headers, Some(&IF_RANGE));
        self.state.to_origin(&mut parts.headers);
        let ticket = self.state.cache.ticket();
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
        let fill = Fill {
            ticket,
            permit: None,
        };
        Ok(self
            .admitted(parts, body, &client_headers, times, representation, fill)
            .await)
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

    /// Calls the origin, bounded by `http.origin_timeout`; its response's framing settled
    /// ([`framing::settle`]).
    async fn call_origin<S, ReqBody, ResBody>(
        &self,
        origin: &mut S,
        request: Request<ReqBody>,
    ) -> Result<Response<ResBody>, OriginFailure<S::Error>>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    {
        let call = deadline::within(self.state.origin_timeout, origin.call(request));
        let result = call.await.map_err(|_| OriginFailure::Timeout)?;
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
    /// stored, and answers the client. With `permit`, this request fills the key for the
    /// others: they get what is stored, or ask for themselves when nothing is.
    pub(crate) async fn fetch<S, ReqBody, ResBody>(
        &self,
        mut origin: S,
        mut parts: Parts,
        body: ReqBody,
        permit: Option<Permit>,
    ) -> Result<Response<CacheBody<ResBody>>, S::Error>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>>,
        ResBody: Body<Data = Bytes> + Unpin + Send + 'static,
        ResBody::Error: Into<BoxError>,
    {
        let client_headers = self.to_origin(&mut parts);
        // Taken before the origin is asked: an invalidation while it answers outdates it.
        let ticket = self.state.cache.ticket();
        let request_time = SystemTime::now();
        let request = Request::from_parts(parts, body);
        let response = match self.call_origin(&mut origin, request).await {
            Ok(response) if response.status().is_server_error() => {
                let failed = Failed::Status(response.status());
                match self.stale_on_error(&client_headers, failed) {
                    Some(stale) => {
                        unshared(permit);
                        return Ok(stale);
                    }
                    None => response,
                }
            }
            Ok(response) => response,
            Err(failure) => {
                unshared(permit);
                if let Some(stale) = self.stale_on_error(&client_headers, failure.failed()) {
                    return Ok(stale);
                }
                return self.failed(failure);
            }
        };
        let times = Times {
            request: request_time,
            response: SystemTime::now(),
        };
        let (response_parts, response_body) = response.into_parts();
        let headers = &client_headers;
        Ok(match self.stale {
            Some(stale) if response_parts.status == StatusCode::NOT_MODIFIED => {
                let not_modified = &response_parts.headers;
                let fill = Fill { ticket, permit };
                self.refresh(stale, not_modified, headers, times, fill)
                    .await
            }
            _ => {
                let complete = Representation::Complete;
                let fill = Fill { ticket, permit };
                self.admitted(
                    response_parts,
                    response_body,
                    headers,
                    times,
                    complete,
                    fill,
                )
                .await
            }
        })
    }

    /// Prepares the request for the origin; the client's headers as they came. Its answer may
    /// be stored for everyone, so the client's preconditions do not go out: they are answered
    /// from the full response ([`policy::preconditions`]), and the origin is asked with our
    /// validators only.
    fn to_origin(&self, parts: &mut Parts) -> HeaderMap {
        let client_headers = parts.headers.clone();
        remove_preconditions(&mut parts.headers, None);
        self.state.to_origin(&mut parts.headers);
        if let Some(stale) = self.stale {
            for (name, value) in policy::validators(stale.lookup.entry.headers()) {
                parts.headers.insert(name, value);
            }
        }
        client_headers
    }

    /// A 304 to our validation: the stored response, with the 304's header fields, is fresh
    /// again (RFC 9111 §4.3.4); the client gets it whole.
    async fn refresh<B>(
        &self,
        stale: &Found,
        not_modified: &HeaderMap,
        client_headers: &HeaderMap,
        times: Times,
        fill: Fill,
    ) -> Response<CacheBody<B>> {
        let stored = &stale.lookup.entry;
        let mut headers = stored.headers().clone();
        policy::update_headers(&mut headers, not_modified);
        let mut status = Status::forward(self.forward);
        status.forward_status = Some(StatusCode::NOT_MODIFIED.as_u16());
        let refreshed = admit::Response {
            headers: &headers,
            declared_len: None,
            times,
        };
        let admitted = admit::admit(
            self.state,
            self.rule,
            &stale.key,
            client_headers,
            refreshed,
            stored.status(),
            Representation::Complete,
        )
        .and_then(|admission| {
            admission.entry(Some((stored.body().clone(), stored.trailers().clone())))
        });
        let entry = match admitted {
            Ok(entry) => {
                status.stored = self.store(&entry, client_headers, fill);
                entry
            }
            Err(_) => {
                unshared(fill.permit);
                self.forget_stale(client_headers).await;
                self.served_once(stored, headers, times)
            }
        };
        response::from_entry(
            &Method::GET,
            client_headers,
            &entry,
            status,
            &self.state.cache_name,
        )
    }

    /// A validated entry that may no longer be stored: served once, as the origin now
    /// describes it (`headers`), and not kept.
    fn served_once(&self, stored: &CachedEntry, headers: HeaderMap, times: Times) -> CachedEntry {
        let received = Received {
            status: stored.status(),
            headers,
            body: stored.body().clone(),
            trailers: stored.trailers().clone(),
        };
        let plan = StorePlan {
            ttl: Duration::ZERO,
            initial_age: Duration::ZERO,
            keep_stale: Duration::ZERO,
            strip: Vec::new(),
            targeted: None,
        };
        self.state.entry(received, &plan, self.rule, times)
    }

    /// A full response (or a part): passed on as it streams, and stored once it has passed
    /// whole when [`admit`](admit::admit) lets it.
    async fn admitted<B>(
        &self,
        parts: http::response::Parts,
        body: B,
        client_headers: &HeaderMap,
        times: Times,
        representation: Representation,
        fill: Fill,
    ) -> Response<CacheBody<B>>
    where
        B: Body<Data = Bytes> + Unpin + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let response = admit::Response {
            headers: &parts.headers,
            declared_len: body.size_hint().exact(),
            times,
        };
        let admission = match admit::admit(
            self.state,
            self.rule,
            self.primary,
            client_headers,
            response,
            parts.status,
            representation,
        ) {
            Ok(admission) => {
                self.state.passes.admitted(self.primary);
                admission
            }
            Err(reason) => {
                return self
                    .not_stored(reason, parts, body, client_headers, fill)
                    .await
            }
        };
        let mut status = Status::forward(self.forward);
        status.forward_status = Some(parts.status.as_u16());
        let age = admission.plan.initial_age;
        let storing = Storing {
            admission,
            primary: self.primary.to_owned(),
            request_headers: client_headers.clone(),
            variants: self.variants.cloned(),
            new_variant: self.stale.is_none(),
            fill,
        };
        let tee = Tee::new(self.state.max_entry_size, Box::new(storing));
        let answer = policy::preconditions(client_headers, parts.status, &parts.headers);
        if let Some(instead) = response::instead_of(answer, &parts.headers) {
            return self.answered_early(instead, parts, body, tee, age, status);
        }
        let (body, stored) = kept(body, tee);
        status.stored = stored;
        self.state.origin_response(parts, body, status)
    }

    /// A response that may not be stored: passed on as it streams, or, when the client's
    /// preconditions answer it, a 304 or 412 without it. A final answer supersedes what was
    /// stored before; a 5xx does not, and neither does a 1xx, which is no final answer at all.
    async fn not_stored<B>(
        &self,
        reason: NotStored,
        parts: http::response::Parts,
        body: B,
        client_headers: &HeaderMap,
        fill: Fill,
    ) -> Response<CacheBody<B>>
    where
        B: Body<Data = Bytes> + Unpin + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let (status, ticket) = (parts.status, fill.ticket);
        self.state
            .passes
            .refused(self.primary, reason, status, client_headers, ticket);
        unshared(fill.permit);
        if !parts.status.is_server_error() && !parts.status.is_informational() {
            self.forget_stale(client_headers).await;
        }
        let answer = policy::preconditions(client_headers, parts.status, &parts.headers);
        let Some(mut instead) = response::instead_of(answer, &parts.headers) else {
            return self.streamed(parts, body);
        };
        let mut status = Status::forward(self.forward);
        status.forward_status = Some(parts.status.as_u16());
        status.append_to(&self.state.cache_name, instead.headers_mut());
        instead
    }

    /// The client's preconditions answer it from a response that may be stored: `instead` (a
    /// 304 or a 412) goes out now, and the body is read for the cache, in the background when
    /// it is not all there yet. Past `http.max_background` nothing more is read in the
    /// background: a 304's client gets the full response instead (a server may always send it;
    /// it is stored as it streams, and the download stays tied to a client), and a 412's body
    /// is left unread and not stored (the 412 is that client's answer).
    fn answered_early<B>(
        &self,
        mut instead: Response<CacheBody<B>>,
        parts: http::response::Parts,
        mut body: B,
        mut tee: Tee,
        age: Duration,
        mut status: Status,
    ) -> Response<CacheBody<B>>
    where
        B: Body<Data = Bytes> + Unpin + Send + 'static,
        B::Error: Into<BoxError>,
    {
        status.stored = match read_ready(&mut body, &mut tee) {
            Ready::Ended { stored, .. } => stored,
            Ready::Failed { .. } => false,
            Ready::Waiting(prefix) => match self.state.cache.reserve_background("drain") {
                Some(place) => {
                    place.spawn(drain(body, tee, self.state.origin_timeout));
                    true
                }
                None if instead.status() == StatusCode::NOT_MODIFIED => {
                    status.stored = true;
                    let body = CacheBody::filling(prefix, body, tee);
                    return self.state.origin_response(parts, body, status);
                }
                None => false,
            },
        };
        instead
            .headers_mut()
            .insert(AGE, HeaderValue::from(age.as_secs()));
        status.append_to(&self.state.cache_name, instead.headers_mut());
        instead
    }

    /// Stores `entry` as this exchange's response to a request with `request_headers`, and
    /// finishes the fill's permit with it; whether it was stored.
    fn store(&self, entry: &CachedEntry, request_headers: &HeaderMap, fill: Fill) -> bool {
        let placement = Placement {
            primary: self.primary,
            request_headers,
            known: self.variants,
            new_variant: self.stale.is_none(),
            max_variants: self.state.max_variants,
        };
        let stored = entries::store(
            &self.state.cache,
            placement,
            entry,
            fill.permit,
            fill.ticket,
        );
        if let Err(reason) = stored {
            admit::refused(self.state, self.primary, reason);
        }
        stored.is_ok()
    }

    /// Drops the entry being validated, superseded by an answer to a request with
    /// `client_headers` — unless that request carries credentials: the answer may be that
    /// client's alone (a `private` page), and no client may remove what everyone else is served.
    /// A Redis failure is already counted and logged.
    async fn forget_stale(&self, client_headers: &HeaderMap) {
        if policy::has_credentials(client_headers) {
            return;
        }
        if let Some(stale) = self.stale {
            let _ = self.state.cache.invalidate(&stale.key).await;
        }
    }
}

/// Removes the client's preconditions but `kept` from a request whose answer may be stored for
/// others: they are answered from that answer ([`policy::preconditions`]).
fn remove_preconditions(headers: &mut HeaderMap, kept: Option<&HeaderName>) {
    for name in &policy::PRECONDITIONS {
        if Some(name) != kept {
            headers.remove(name);
        }
    }
}

/// Tells the requests waiting on this fill to ask the origin themselves.
fn unshared(permit: Option<Permit>) {
    if let Some(permit) = permit {
        // No entry: the shared lock, if any, goes at once.
        drop(permit.finish(Err(Arc::new(Unshared))));
    }
}

/// What a fill stores with: the ticket it took before asking the origin, and the permit that
/// shares its entry with the requests waiting for it.
pub(crate) struct Fill {
    pub(crate) ticket: Ticket,
    pub(crate) permit: Option<Permit>,
}

/// A response on its way to a client, to be stored once its body has passed whole.
pub(crate) struct Storing {
    pub(crate) admission: Admission,
    pub(crate) primary: String,
    pub(crate) request_headers: HeaderMap,
    pub(crate) variants: Option<Variants>,
    /// Whether no entry was stored for this request's variant before.
    pub(crate) new_variant: bool,
    pub(crate) fill: Fill,
}

impl Completion for Storing {
    fn complete(self: Box<Self>, body: Option<(Bytes, HeaderMap)>) -> bool {
        let Self {
            admission,
            primary,
            request_headers,
            variants,
            new_variant,
            fill,
        } = *self;
        let entry = match admission.entry(body) {
            Ok(entry) => entry,
            Err(_) => {
                unshared(fill.permit);
                return false;
            }
        };
        let state = &admission.state;
        let placement = Placement {
            primary: &primary,
            request_headers: &request_headers,
            known: variants.as_ref(),
            new_variant,
            max_variants: state.max_variants,
        };
        match entries::store(&state.cache, placement, &entry, fill.permit, fill.ticket) {
            Ok(_) => true,
            Err(reason) => {
                admission.refused(reason);
                false
            }
        }
    }
}

/// `body` on its way to the client while `tee` keeps a copy: what is ready at once is read
/// first (and when that is all of it, stored before the response goes out); the rest streams.
/// The flag says whether it was stored: known when the body was read whole, else `true` (it
/// is stored if it passes whole).
pub(crate) fn kept<B>(mut body: B, mut tee: Tee) -> (CacheBody<B>, bool)
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    match read_ready(&mut body, &mut tee) {
        Ready::Ended {
            data,
            trailers,
            stored,
        } => (CacheBody::cached(data, trailers), stored),
        Ready::Failed { prefix, error } => (CacheBody::failed(prefix, error), false),
        Ready::Waiting(prefix) => (CacheBody::filling(prefix, body, tee), true),
    }
}

/// Most bytes read from a response body before the response goes out: what is ready at once.
const READY_LIMIT: usize = 64 * 1024;

/// What [`read_ready`] found.
enum Ready {
    /// The whole body: stored already (if it was to be), as if it had been buffered.
    Ended {
        data: Bytes,
        trailers: HeaderMap,
        stored: bool,
    },
    Failed {
        prefix: Bytes,
        error: BoxError,
    },
    /// The rest is still to come, after this prefix.
    Waiting(Bytes),
}

/// Reads what `body` has ready, without waiting, up to [`READY_LIMIT`] bytes (kept by `tee`
/// too). Bodies that are complete already — most small ones — are then stored before their
/// response goes out; the rest streams.
fn read_ready<B>(body: &mut B, tee: &mut Tee) -> Ready
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let mut prefix = BytesMut::new();
    let mut trailers = HeaderMap::new();
    while prefix.len() < READY_LIMIT && !body.is_end_stream() {
        let frame = match body.frame().now_or_never() {
            None => return Ready::Waiting(prefix.freeze()),
            Some(None) => break,
            Some(Some(Err(error))) => {
                tee.give_up();
                return Ready::Failed {
                    prefix: prefix.freeze(),
                    error: error.into(),
                };
            }
            Some(Some(Ok(frame))) => frame,
        };
        tee.observe(&frame);
        match frame.into_data() {
            Ok(data) => prefix.extend_from_slice(&data),
            Err(frame) => {
                if let Ok(more) = frame.into_trailers() {
                    trailers.extend(more);
                }
            }
        }
    }
    if prefix.len() >= READY_LIMIT && !body.is_end_stream() {
        return Ready::Waiting(prefix.freeze());
    }
    Ready::Ended {
        stored: tee.finish(),
        data: prefix.freeze(),
        trailers,
    }
}

/// Reads `body` to its end for `tee` (a client that needs no body, e.g. a 304), for at most
/// `limit`; stops as soon as `tee` has nothing more to keep.
async fn drain<B>(mut body: B, mut tee: Tee, limit: Option<Duration>)
where
    B: Body<Data = Bytes> + Unpin,
{
    let read = async {
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => tee.observe(&frame),
                Err(_) => tee.give_up(),
            }
            if tee.is_done() {
                return;
            }
        }
        let _ = tee.finish();
    };
    // Past the limit the fill is abandoned: the tee goes unfinished.
    let _ = deadline::within(limit, read).await;
}
