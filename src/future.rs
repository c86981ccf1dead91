//! [`ResponseFuture`]: the future of [`CacheService`](crate::CacheService).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::Response;
use pin_project_lite::pin_project;

use crate::body::CacheBody;
use crate::http::cache_status::Status;
use crate::http::response;
use crate::http::state::State;

type CachedFuture<B, E> = Pin<Box<dyn Future<Output = Result<Response<CacheBody<B>>, E>> + Send>>;

pin_project! {
    /// The response future of [`CacheService`](crate::CacheService): the inner service's call
    /// (its readiness, then the call) for requests that bypass the cache, a ready response for
    /// fresh memory hits (neither allocates), a boxed future for the rest.
    pub struct ResponseFuture<F, B, E> {
        #[pin]
        kind: Kind<F, B, E>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, B, E> {
        Bypass {
            #[pin]
            future: F,
            state: Arc<State>,
            status: Status,
        },
        Cached {
            future: CachedFuture<B, E>,
        },
        Ready {
            response: Option<Response<CacheBody<B>>>,
        },
    }
}

impl<F, B, E> ResponseFuture<F, B, E> {
    /// The inner service's future, its response labelled `status`.
    pub(crate) fn bypass(future: F, state: Arc<State>, status: Status) -> Self {
        Self {
            kind: Kind::Bypass {
                future,
                state,
                status,
            },
        }
    }

    pub(crate) fn cached(future: CachedFuture<B, E>) -> Self {
        Self {
            kind: Kind::Cached { future },
        }
    }

    /// A response the cache had at hand: no allocation, ready on the first poll.
    pub(crate) fn ready(response: Response<CacheBody<B>>) -> Self {
        Self {
            kind: Kind::Ready {
                response: Some(response),
            },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: http_body::Body<Data = bytes::Bytes>,
    B::Error: Into<crate::BoxError>,
{
    type Output = Result<Response<CacheBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Bypass {
                future,
                state,
                status,
            } => {
                let (mut parts, body) = ready!(future.poll(cx))?.into_parts();
                if crate::framing::settle(&mut parts.headers).is_err() {
                    return Poll::Ready(Ok(response::bad_gateway(*status, &state.cache_name)));
                }
                Poll::Ready(Ok(state.origin_response(
                    parts,
                    CacheBody::streaming(body),
                    *status,
                )))
            }
            KindProj::Cached { future } => future.as_mut().poll(cx),
            KindProj::Ready { response } => match response.take() {
                Some(response) => Poll::Ready(Ok(response)),
                None => panic!("ResponseFuture polled after completion"),
            },
        }
    }
}

impl<F, B, E> std::fmt::Debug for ResponseFuture<F, B, E> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ResponseFuture")
            .finish_non_exhaustive()
    }
}
