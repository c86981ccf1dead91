//! A request that may change the resource (RFC 9111 §4.4), top to bottom: forwarded (or, on a
//! `write = "behind"` route, queued); on a success or redirect, the target URI and the
//! same-origin `Location` / `Content-Location` URIs are invalidated everywhere, the tags the
//! response names in `Cache-Invalidate` too, and with write-through the response is stored as
//! the resource's new GET representation as it passes to the client.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::header::{CONTENT_LOCATION, LOCATION};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::Body;
use tower::Service;

use super::admit::{self, Representation};
use super::cache_status::{Forward, Status};
use super::exchange::{kept, Fill, Storing};
use super::routes::Rule;
use super::state::{State, Times};
use super::{deadline, key, response, write_behind};
use crate::body::{BoxError, CacheBody};
use crate::config::WriteMode;
use crate::tee::Tee;

pub(crate) async fn mutate<S, ReqBody, ResBody>(
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
    let call = deadline::within(state.origin_timeout, origin.call(request));
    let Ok(answer) = call.await else {
        return Ok(response::gateway_timeout(
            Status::forward(Forward::Method),
            &state.cache_name,
        ));
    };
    let (mut parts, body) = answer?.into_parts();
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
    let changed =
        invalidate_changed(&state, &target, &primary, &request_headers, &parts.headers).await;
    if changed.pending {
        status.detail = Some("invalidation-pending");
    }
    let content_location = changed.content_location;
    // Taken after the write's own invalidations: the entry it stores is newer than they are
    // (its own `Cache-Invalidate` tags included), and any invalidation after this outdates it.
    let ticket = state.cache.ticket();

    // Write-through: the response is the new representation of the target.
    let writes_through =
        rule.write == WriteMode::Through || content_location.as_deref() == Some(target.as_str());
    let representation = matches!(parts.status, StatusCode::OK | StatusCode::CREATED);
    if !(writes_through && representation) {
        return Ok(state.origin_response(parts, CacheBody::streaming(body), status));
    }
    let written = Written {
        primary,
        request_headers,
        times,
        ticket,
    };
    Ok(write_through(&state, &rule, written, parts, body, status))
}

/// A successful write's request, as write-through stores its response.
struct Written {
    primary: String,
    request_headers: HeaderMap,
    times: Times,
    ticket: crate::store::Ticket,
}

/// Passes the response on, and stores it as the new GET representation of the target once
/// it has passed whole, when [`admit`](admit::admit) lets it.
fn write_through<B>(
    state: &Arc<State>,
    rule: &Arc<Rule>,
    written: Written,
    parts: http::response::Parts,
    body: B,
    mut status: Status,
) -> Response<CacheBody<B>>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let response = admit::Response {
        headers: &parts.headers,
        declared_len: body.size_hint().exact(),
        times: written.times,
    };
    let admitted = admit::admit(
        state,
        rule,
        &written.primary,
        &written.request_headers,
        response,
        StatusCode::OK,
        Representation::Complete,
    );
    let Ok(admission) = admitted else {
        return state.origin_response(parts, CacheBody::streaming(body), status);
    };
    let storing = Storing {
        admission,
        primary: written.primary,
        request_headers: written.request_headers,
        variants: None,
        new_variant: true,
        fill: Fill {
            ticket: written.ticket,
            permit: None,
        },
    };
    let tee = Tee::new(state.max_entry_size, Box::new(storing));
    let (body, stored) = kept(body, tee);
    status.stored = stored;
    state.origin_response(parts, body, status)
}

/// What [`invalidate_changed`] did.
struct Changed {
    /// The response's same-origin `Content-Location`, resolved.
    content_location: Option<String>,
    /// Whether an invalidation waits for the shared tier (it is retried until it gets there).
    pending: bool,
}

/// Invalidates what a successful write changed: the target, the same-origin resources the
/// response points to, and everything tagged with what it names in `Cache-Invalidate`.
/// Failures are counted and logged; the origin's answer stands.
async fn invalidate_changed(
    state: &State,
    target: &str,
    primary: &str,
    request_headers: &HeaderMap,
    response_headers: &HeaderMap,
) -> Changed {
    let mut pending = false;
    let mut note = |result: Result<(), crate::Error>| {
        pending |= result.is_err_and(|err| err.is_invalidation_pending());
    };
    let referenced = |name| {
        let value = response_headers.get(name)?.to_str().ok()?;
        key::same_origin(target, value)
    };
    let content_location = referenced(&CONTENT_LOCATION);
    note(state.cache.invalidate(primary).await);
    for uri in [referenced(&LOCATION), content_location.clone()]
        .iter()
        .flatten()
    {
        let path = uri
            .parse::<http::Uri>()
            .map_or_else(|_| "/".to_owned(), |uri| uri.path().to_owned());
        let key_headers = &state.routes.rule_for(&path).key_headers;
        let key = key::key_for(uri, request_headers, key_headers);
        note(state.cache.invalidate(&key).await);
    }
    let tags = state.tags_to_invalidate(response_headers);
    if !tags.is_empty() {
        note(state.cache.invalidate_tags(&tags).await);
    }
    Changed {
        content_location,
        pending,
    }
}
