//! Building client responses: from stored entries, from the origin, and the cache's own 504.

use std::time::{Duration, SystemTime};

use http::header::{
    HeaderValue, AGE, CACHE_CONTROL, CONTENT_LOCATION, DATE, ETAG, EXPIRES, LAST_MODIFIED, VARY,
};
use http::{HeaderMap, Method, Response, StatusCode};

use super::cache_status::Status;
use super::policy::Precondition;
use super::target::Refusal;
use super::{policy, range};
use crate::body::CacheBody;
use crate::store::CachedEntry;

/// A response from a stored entry, with its current `Age`. The request's preconditions are
/// evaluated against the entry ([`policy::preconditions`]): `304 Not Modified` or `412
/// Precondition Failed` when they say so; a single byte range of a complete 200, or inside a
/// stored 206, gets `206` (unless `If-Range` says the whole); a HEAD request gets no body.
pub(crate) fn from_entry<B>(
    method: &Method,
    request: &HeaderMap,
    entry: &CachedEntry,
    status: Status,
    cache_name: &str,
) -> Response<CacheBody<B>> {
    let age = entry.age_at(SystemTime::now());
    from_entry_with_status(method, request, entry, age, status.value(cache_name).ok())
}

/// [`from_entry`] with the entry's `age` known and its `Cache-Status` member rendered already
/// (`None` when it did not render as a header value).
pub(crate) fn from_entry_with_status<B>(
    method: &Method,
    request: &HeaderMap,
    entry: &CachedEntry,
    age: Duration,
    cache_status: Option<HeaderValue>,
) -> Response<CacheBody<B>> {
    let answer = policy::preconditions(request, entry.status(), entry.headers());
    let mut response = match instead_of(answer, entry.headers()) {
        Some(instead) => instead,
        None => {
            let ranges = answer == Precondition::Proceed { ranges: true };
            stored(method, request, entry, ranges)
        }
    };
    response.headers_mut().insert(AGE, age_value(age.as_secs()));
    if let Some(cache_status) = cache_status {
        response
            .headers_mut()
            .append(super::cache_status::CACHE_STATUS.clone(), cache_status);
    }
    response
}

/// The stored response itself, or (`ranges`) the byte range the request asks for.
fn stored<B>(
    method: &Method,
    request: &HeaderMap,
    entry: &CachedEntry,
    ranges: bool,
) -> Response<CacheBody<B>> {
    let mut code = entry.status();
    let mut headers = HeaderMap::with_capacity(entry.headers().len() + 2);
    headers.extend(
        entry
            .headers()
            .iter()
            .filter(|(name, _)| *name != policy::TARGETED)
            .map(|(name, value)| (name.clone(), value.clone())),
    );
    let mut body = entry.body().clone();
    let length = body.len();
    match code {
        StatusCode::OK if ranges => {
            if let Some(range) = range::requested(request, length) {
                range::partial(&mut code, &mut headers, &range, length);
                body = body.slice(range);
            }
        }
        StatusCode::PARTIAL_CONTENT if ranges => {
            if let Some((wanted, held)) = range::within_partial(request, &headers, length) {
                range::narrow(&mut headers, &mut body, &wanted, held);
            }
        }
        _ => {}
    }
    let body = if method == Method::HEAD {
        CacheBody::empty()
    } else {
        CacheBody::cached(body, entry.trailers().clone())
    };
    let mut response = Response::new(body);
    *response.status_mut() = code;
    *response.headers_mut() = headers;
    response
}

/// `Age` values: the first hour is made once and shared (a clone of a static value costs no
/// allocation), later ones are formatted.
fn age_value(seconds: u64) -> HeaderValue {
    const SHARED: u64 = 3600;
    static AGES: std::sync::OnceLock<Vec<HeaderValue>> = std::sync::OnceLock::new();
    if seconds >= SHARED {
        return HeaderValue::from(seconds);
    }
    let ages = AGES.get_or_init(|| {
        let mut text = String::new();
        let mut ends = Vec::with_capacity(SHARED as usize);
        for age in 0..SHARED {
            text.push_str(&age.to_string());
            ends.push(text.len());
        }
        let text: &'static str = Box::leak(text.into_boxed_str());
        let mut start = 0;
        ends.into_iter()
            .map(|end| {
                let value = HeaderValue::from_static(&text[start..end]);
                start = end;
                value
            })
            .collect()
    });
    ages.get(seconds as usize)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from(seconds))
}

/// RFC 9110 §15.4.5: a 304 carries the fields a 200 would have that describe the
/// representation's identity and freshness.
pub(crate) fn not_modified<B>(stored: &HeaderMap) -> Response<CacheBody<B>> {
    let mut response = Response::new(CacheBody::empty());
    *response.status_mut() = StatusCode::NOT_MODIFIED;
    for name in [
        CACHE_CONTROL,
        CONTENT_LOCATION,
        DATE,
        ETAG,
        EXPIRES,
        LAST_MODIFIED,
        VARY,
    ] {
        for value in stored.get_all(&name) {
            response.headers_mut().append(name.clone(), value.clone());
        }
    }
    response
}

/// What goes out instead of a response with `headers` when the request's preconditions say so
/// (`answer`, from [`policy::preconditions`]): a 304 or a 412; `None` when the response goes out.
pub(crate) fn instead_of<B>(
    answer: Precondition,
    headers: &HeaderMap,
) -> Option<Response<CacheBody<B>>> {
    match answer {
        Precondition::NotModified => Some(not_modified(headers)),
        Precondition::Failed => Some(precondition_failed()),
        Precondition::Proceed { .. } => None,
    }
}

/// RFC 9110 §15.5.13: a precondition of the request is false. No content, and nothing of the
/// representation: the client learns only that its condition failed.
fn precondition_failed<B>() -> Response<CacheBody<B>> {
    let mut response = Response::new(CacheBody::empty());
    *response.status_mut() = StatusCode::PRECONDITION_FAILED;
    response
}

/// A short plain-text answer of the cache's own (purge, write-behind), labelled `detail`.
pub(crate) fn text<B>(
    status: StatusCode,
    text: &'static str,
    detail: &'static str,
    cache_name: &str,
) -> Response<CacheBody<B>> {
    with_status(status, text, Status::detail(detail), cache_name)
}

/// `response` with `name: value` added (`Allow`, `Retry-After`, `WWW-Authenticate`).
pub(crate) fn with_header<B>(
    mut response: Response<B>,
    name: http::HeaderName,
    value: &'static str,
) -> Response<B> {
    response
        .headers_mut()
        .insert(name, HeaderValue::from_static(value));
    response
}

/// A `text/plain` answer of the cache's own, with `cache_status` as its member.
fn with_status<B>(
    status: StatusCode,
    text: &'static str,
    cache_status: Status,
    cache_name: &str,
) -> Response<CacheBody<B>> {
    let body = CacheBody::cached(bytes::Bytes::from_static(text.as_bytes()), HeaderMap::new());
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain"),
    );
    cache_status.append_to(cache_name, response.headers_mut());
    response
}

/// The origin's response could not be framed (RFC 9112 §6.3 item 5): discarded, and `502`.
pub(crate) fn bad_gateway<B>(mut status: Status, cache_name: &str) -> Response<CacheBody<B>> {
    status.detail = Some("invalid-framing");
    let text = "the origin's response has conflicting Content-Length fields\n";
    with_status(StatusCode::BAD_GATEWAY, text, status, cache_name)
}

/// A request refused before anything was looked up or forwarded: `400`, saying why.
pub(crate) fn refused<B>(refusal: Refusal, cache_name: &str) -> Response<CacheBody<B>> {
    text(
        StatusCode::BAD_REQUEST,
        refusal.message(),
        refusal.detail(),
        cache_name,
    )
}

/// RFC 9111 §5.2.1.7: `only-if-cached` without a usable stored response.
pub(crate) fn gateway_timeout<B>(status: Status, cache_name: &str) -> Response<CacheBody<B>> {
    let mut response = Response::new(CacheBody::empty());
    *response.status_mut() = StatusCode::GATEWAY_TIMEOUT;
    status.append_to(cache_name, response.headers_mut());
    response
}

#[cfg(test)]
mod tests {
    use super::age_value;

    #[test]
    fn shared_and_formatted_ages_read_the_same() {
        for seconds in [0, 1, 9, 10, 99, 100, 3599, 3600, 86_400, u64::MAX] {
            assert_eq!(age_value(seconds), seconds.to_string().as_str());
        }
    }
}
