//! Write-behind for HTTP: `write = "behind"` routes answer writes at once from the cache and
//! replay them to a target service from the queue.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use http::request::Parts;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::Full;
use tower::{Service, ServiceExt};

use super::buffer::read_body;
use super::routes::Rule;
use super::state::State;
use super::{key, policy, response};
use crate::body::CacheBody;
use crate::store::CachedEntry;
use crate::write_behind::{WriteError, WriteJob, Writer};

/// Replays queued writes to a service (the application behind the cache, or an upstream
/// client): 2xx/3xx is done, 5xx and errors are retried, other statuses are permanent failures.
pub(crate) struct ReplayTo<T> {
    /// Behind a mutex only so that the writer is `Sync`; each replay calls a clone.
    target: Mutex<T>,
}

impl<T> ReplayTo<T> {
    pub(crate) fn new(target: T) -> Self {
        Self {
            target: Mutex::new(target),
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
/// full queue is `503` with `Retry-After`, with nothing stored.
pub(crate) async fn accept<ReqBody, B>(
    state: &State,
    request: Request<ReqBody>,
    rule: &Rule,
) -> Response<CacheBody<B>>
where
    ReqBody: Body,
{
    let Some(queue) = state.write_behind.get() else {
        return response::text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "write-behind has no replay target\n",
            DETAIL,
            &state.cache_name,
        );
    };
    let (parts, body) = request.into_parts();
    let Ok(body) = read_body(body, state.max_entry_size).await else {
        return response::text(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body larger than http.max_entry_size or unreadable\n",
            DETAIL,
            &state.cache_name,
        );
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
    if let Err(full) = queue.enqueue(job).await {
        tracing::warn!(error = %full, "write-behind refused a write");
        let mut response = response::text(
            StatusCode::SERVICE_UNAVAILABLE,
            "write queue full, retry later\n",
            DETAIL,
            &state.cache_name,
        );
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    }
    // Failures are counted and logged; the write is queued either way.
    let _ = state.cache.invalidate(&primary).await;
    let ttl = rule.ttl.unwrap_or(state.default_ttl);
    if parts.method != Method::DELETE && !ttl.is_zero() {
        state
            .cache
            .store(&primary, &representation(&parts, body, ttl))
            .await;
    }
    response::text(
        StatusCode::ACCEPTED,
        "accepted\n",
        DETAIL,
        &state.cache_name,
    )
}

/// The request body as the resource's representation, with the request's `Content-Type`.
fn representation(parts: &Parts, body: Bytes, ttl: Duration) -> CachedEntry {
    let mut headers = HeaderMap::new();
    if let Some(content_type) = parts.headers.get(CONTENT_TYPE) {
        headers.insert(CONTENT_TYPE, content_type.clone());
    }
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
