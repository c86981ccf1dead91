//! `PURGE`: invalidation on request, for holders of the configured token.
//!
//! `PURGE <uri>` invalidates that URI; `PURGE` with `Surrogate-Key: a b` invalidates every entry
//! tagged `a` or `b`. With `Soft-Purge: 1`, both mark the entries stale instead of removing them
//! (in every tier and instance): the next request is answered from the stale entry while one
//! background request revalidates it, unless its directives forbid serving stale. Only when `purge.token` is set and the request carries
//! `Authorization: Bearer <token>`: without a token configured the method is not allowed (405),
//! with a wrong or missing token it is unauthorized (401). Never forwarded to the origin.

use http::header::{ALLOW, AUTHORIZATION, RETRY_AFTER, WWW_AUTHENTICATE};
use http::request::Parts;
use http::{HeaderMap, Response, StatusCode};

use super::routes::Rule;
use super::state::State;
use super::{key, response};
use crate::body::CacheBody;

/// `Soft-Purge: 1` (Fastly's name): mark stale instead of removing.
static SOFT_PURGE: http::HeaderName = http::HeaderName::from_static("soft-purge");

pub(crate) async fn handle<ResBody>(
    state: &State,
    request: &Parts,
    rule: &Rule,
) -> Response<CacheBody<ResBody>> {
    let Some(token) = &state.purge_token else {
        let response = answer(
            state,
            StatusCode::METHOD_NOT_ALLOWED,
            "purge is not enabled\n",
        );
        let methods = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";
        return response::with_header(response, ALLOW, methods);
    };
    if !authorized(&request.headers, token) {
        let text = "a valid bearer token is required\n";
        let response = answer(state, StatusCode::UNAUTHORIZED, text);
        return response::with_header(response, WWW_AUTHENTICATE, "Bearer");
    }
    let result = purge(state, request, rule).await;
    outcome(state, result)
}

/// Purges the target, or the tags in `Surrogate-Key`; softly (marked stale, kept) with
/// `Soft-Purge: 1`.
async fn purge(state: &State, request: &Parts, rule: &Rule) -> Result<(), crate::Error> {
    let tags = state.surrogate_keys(&request.headers);
    let soft = request
        .headers
        .get(&SOFT_PURGE)
        .is_some_and(|value| value.as_bytes() == b"1");
    match (tags.is_empty(), soft) {
        (true, false) => {
            let primary = key::primary_key(request, &rule.key_headers);
            state.cache.invalidate(&primary).await
        }
        (true, true) => {
            let primary = key::primary_key(request, &rule.key_headers);
            state.cache.expire(&primary).await
        }
        (false, false) => state.cache.invalidate_tags(&tags).await,
        (false, true) => state.cache.expire_tags(&tags).await,
    }
}

/// The answer to an authorized purge.
fn outcome<ResBody>(
    state: &State,
    result: Result<(), crate::Error>,
) -> Response<CacheBody<ResBody>> {
    match result {
        Ok(()) => answer(state, StatusCode::OK, "purged\n"),
        Err(err) if err.is_invalidation_pending() => {
            // Memory is purged, and the shared tier will be once it answers: kept until then.
            tracing::warn!(error = %err, "purge pending: the shared tier does not answer");
            response::text(
                StatusCode::ACCEPTED,
                "purge accepted: memory is purged, the shared tier will be once it answers\n",
                "invalidation-pending",
                &state.cache_name,
            )
        }
        Err(err) => {
            tracing::warn!(error = %err, "purge did not reach every tier");
            let text = "purge incomplete: the shared tier is unavailable\n";
            let response = answer(state, StatusCode::SERVICE_UNAVAILABLE, text);
            response::with_header(response, RETRY_AFTER, "1")
        }
    }
}

/// `Authorization: Bearer <token>`, compared in constant time.
pub(crate) fn authorized(headers: &HeaderMap, token: &str) -> bool {
    let presented = headers
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim);
    presented.is_some_and(|presented| constant_time_eq(presented.as_bytes(), token.as_bytes()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

fn answer<B>(state: &State, status: StatusCode, text: &'static str) -> Response<CacheBody<B>> {
    response::text(status, text, "purge", &state.cache_name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn tokens_must_match_exactly() {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer s3cret"));
        assert!(authorized(&headers, "s3cret"));
        assert!(!authorized(&headers, "s3cre"));
        assert!(!authorized(&headers, "s3cret!"));
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Basic s3cret"));
        assert!(!authorized(&headers, "s3cret"));
    }
}
