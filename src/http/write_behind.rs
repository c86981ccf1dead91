//! Write-behind for HTTP: `write = "behind"` routes answer writes at once from the cache and
//! replay them to a target service from the queue.
//!
//! Trust: the representation is served before the origin has seen the write, so a route can
//! demand credentials first (`write_token`, checked here; `write_requires`, checked by the origin
//! on replay), and a write the origin refuses (or that is dropped after its last retry) is
//! retracted: its representation leaves every tier and instance at once, unless a newer write
//! replaced it meanwhile.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::request::Parts;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::Full;
use tower::{Service, ServiceExt};

use super::buffer::read_body;
use super::routes::Rule;
use super::state::State;
use super::{key, policy, purge, response};
use crate::body::CacheBody;
use crate::store::{CachedEntry, TieredCache};
use crate::write_behind::{EnqueueError, WriteError, WriteJob, Writer};

/// Replays queued writes to a service (the application behind the cache, or an upstream
/// client): 2xx/3xx is done, 5xx and errors are retried, other statuses are permanent failures.
/// A write given up is retracted from `cache`.
pub(crate) struct ReplayTo<T> {
    /// Behind a mutex only so that the writer is `Sync`; each replay calls a clone.
    target: Mutex<T>,
    cache: TieredCache,
}

impl<T> ReplayTo<T> {
    pub(crate) fn new(target: T, cache: TieredCache) -> Self {
        Self {
            target: Mutex::new(target),
            cache,
        }
    }
}

impl<T, B> Writer for ReplayTo<T>
where
    T: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone + Send + 'static,
    T::Future: Send,
    T::Error: std::fmt::Display,
    B: Send + 'static,
{
    fn write(
        &self,
        job: WriteJob,
    ) -> Pin<Box<dyn Future<Output = Result<(), WriteError>> + Send + '_>> {
        let target = self
            .target
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        Box::pin(async move {
            let request = replay_request(job).map_err(WriteError::Permanent)?;
            match target.oneshot(request).await {
                Ok(response) if response.status().is_server_error() => Err(WriteError::Retry(
                    format!("origin answered {}", response.status()),
                )),
                Ok(response) if response.status().is_client_error() => Err(WriteError::Permanent(
                    format!("origin answered {}", response.status()),
                )),
                Ok(_) => Ok(()),
                Err(err) => Err(WriteError::Retry(err.to_string())),
            }
        })
    }

    fn given_up<'a>(&'a self, job: &'a WriteJob) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(retract(&self.cache, job))
    }
}

/// Drops the representation `job`'s write stored, from memory and Redis, and from the memory of
/// the other instances, unless what is stored now is another write's (a newer write replaced
/// it; the origin's own answer after this one expired). If nothing is found, the key is dropped
/// anyway: other instances may still hold a copy.
///
/// What is stored is compared with what the job wrote, its body, so no sequence number has to
/// travel with the job (the content type is the route's, the same for every write). A newer
/// write with the very same body is dropped too, and so is an origin's answer with that body:
/// the next read goes to the origin, a miss, never a refused write served.
async fn retract(cache: &TieredCache, job: &WriteJob) {
    let replaced = cache
        .find(&job.key)
        .await
        .is_some_and(|found| found.entry.body() != &job.body);
    if replaced {
        return;
    }
    match cache.invalidate(&job.key).await {
        Ok(()) => {
            tracing::info!(key = %job.key, "write-behind: retracted a write the origin did not take")
        }
        Err(err) => tracing::warn!(
            key = %job.key,
            error = %err,
            "write-behind: a write the origin did not take may still be served from the shared tier until it expires"
        ),
    }
}

fn replay_request(job: WriteJob) -> Result<Request<Full<Bytes>>, String> {
    let mut builder = Request::builder()
        .method(job.method.as_str())
        .uri(job.uri.as_str());
    for (name, value) in &job.headers {
        builder = builder.header(name.as_str(), value.as_slice());
    }
    builder
        .body(Full::new(job.body))
        .map_err(|err| format!("cannot rebuild the request: {err}"))
}

const DETAIL: &str = "write-behind";

/// Stores (or, for DELETE, drops) the representation, queues the write, and answers `202`; a
/// queue that refuses it (full, unavailable, shut down) is `503` saying which, with
/// `Retry-After`, and nothing stored. A write without the credentials
/// the route demands is `401`, with nothing stored or queued.
pub(crate) async fn accept<ReqBody, B>(
    state: &State,
    request: Request<ReqBody>,
    rule: &Rule,
) -> Response<CacheBody<B>>
where
    ReqBody: Body,
{
    let answer = |status, text| response::text(status, text, DETAIL, &state.cache_name);
    let Some(queue) = state.write_behind.get() else {
        let text = "write-behind has no replay target\n";
        return answer(StatusCode::INTERNAL_SERVER_ERROR, text);
    };
    let (parts, body) = request.into_parts();
    if !carries_credentials(&parts.headers, rule) {
        let text = "this route takes writes with credentials only\n";
        let response = answer(StatusCode::UNAUTHORIZED, text);
        return response::with_header(response, WWW_AUTHENTICATE, "Bearer");
    }
    let Ok(body) = read_body(body, state.max_entry_size).await else {
        let text = "body larger than http.max_entry_size or unreadable\n";
        return answer(StatusCode::PAYLOAD_TOO_LARGE, text);
    };
    let target = key::target_uri(&parts.uri, &parts.headers);
    let primary = key::key_for(&target, &parts.headers, &rule.key_headers);
    let job = WriteJob {
        key: primary.clone(),
        method: parts.method.to_string(),
        uri: target,
        headers: replay_headers(&parts),
        body: body.clone(),
    };
    // Failures are counted and logged; the write goes ahead either way.
    let _ = state.cache.invalidate(&primary).await;
    // Stored before the job is queued: a replay refused at once must find what to retract.
    // The ticket is taken after the write's own invalidation, which it follows.
    let ttl = rule.ttl.unwrap_or(state.default_ttl);
    if parts.method != Method::DELETE && !ttl.is_zero() {
        let ticket = state.cache.ticket();
        state
            .cache
            .store(&primary, &representation(rule, body, ttl), ticket)
            .await;
    }
    if let Err(refused) = queue.enqueue(job.clone()).await {
        tracing::warn!(key = %job.key, error = %refused, "write-behind refused a write");
        retract(&state.cache, &job).await;
        let response = answer(StatusCode::SERVICE_UNAVAILABLE, refusal(&refused));
        return response::with_header(response, RETRY_AFTER, "1");
    }
    answer(StatusCode::ACCEPTED, "accepted\n")
}

/// The `503` body for a write the queue refused.
fn refusal(refused: &EnqueueError) -> &'static str {
    match refused {
        EnqueueError::Full { .. } => "write queue full, retry later\n",
        EnqueueError::Unavailable { .. } => {
            "write queue unavailable (its Redis does not take writes), retry later\n"
        }
        EnqueueError::Closed => "write queue shut down, retry later\n",
    }
}

/// Whether a write carries what `rule` demands: its bearer token (compared in constant time),
/// and every header it requires (which the origin verifies on replay).
fn carries_credentials(headers: &HeaderMap, rule: &Rule) -> bool {
    let token_ok = rule
        .write_token
        .as_deref()
        .is_none_or(|token| purge::authorized(headers, token));
    token_ok
        && rule
            .write_requires
            .iter()
            .all(|name| headers.contains_key(name))
}

/// What a stored write is served as when its route names no `content_type`.
const DEFAULT_CONTENT_TYPE: HeaderValue = HeaderValue::from_static("application/octet-stream");

/// The request body as the resource's representation, typed by the route: the writer's
/// `Content-Type` is not stored, so a write cannot make a resource a page that runs script in
/// every reader's browser.
fn representation(rule: &Rule, body: Bytes, ttl: Duration) -> CachedEntry {
    let content_type = rule.content_type.clone().unwrap_or(DEFAULT_CONTENT_TYPE);
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, content_type);
    CachedEntry::new(body, ttl).with_headers(headers)
}

fn replay_headers(parts: &Parts) -> Vec<(String, Vec<u8>)> {
    let mut headers = parts.headers.clone();
    policy::remove_hop_by_hop(&mut headers);
    headers
        .iter()
        .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
        .collect()
}
