//! [`Origin`]: the wrapped service as the paths that forward call it.
//!
//! The cache's own `poll_ready` is always ready: a hit needs nothing from the wrapped service,
//! so it must not wait behind `ConcurrencyLimit`, `LoadShed` or `Buffer` for a slot it would
//! never use. The wrapped service's readiness is acquired only by a request that calls it, at
//! the moment it does, inside the call's future; a request waiting for another's fill holds no
//! slot meanwhile.

use std::task::{Context, Poll};

use tower::util::Oneshot;
use tower::Service;

/// The wrapped service, always ready: each call drives a clone of it to readiness, then calls
/// it. A readiness error is the call's error.
#[derive(Clone, Debug)]
pub(crate) struct Origin<S> {
    inner: S,
}

impl<S> Origin<S> {
    pub(crate) fn new(inner: S) -> Self {
        Self { inner }
    }
}

impl<S, Request> Service<Request> for Origin<S>
where
    S: Service<Request> + Clone,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Oneshot<S, Request>;

    #[inline]
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        // A clone per call, as tower requires of a service called more than once: each clone
        // holds the readiness (a permit, a buffer slot) of its own call.
        Oneshot::new(self.inner.clone(), request)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use tower::ServiceExt;

    use super::*;

    /// A service that is ready only on its second `poll_ready`, counting its polls.
    #[derive(Clone)]
    struct ReadyOnSecondPoll(Arc<AtomicUsize>);

    impl Service<u8> for ReadyOnSecondPoll {
        type Response = u8;
        type Error = &'static str;
        type Future = std::future::Ready<Result<u8, &'static str>>;

        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            if self.0.fetch_add(1, Ordering::SeqCst) == 0 {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: u8) -> Self::Future {
            std::future::ready(Ok(request + 1))
        }
    }

    #[tokio::test]
    async fn readiness_is_acquired_by_the_call_not_before_it() {
        let polls = Arc::new(AtomicUsize::new(0));
        let mut origin = Origin::new(ReadyOnSecondPoll(polls.clone()));
        origin.ready().await.expect("always ready");
        assert_eq!(polls.load(Ordering::SeqCst), 0, "not asked before a call");
        assert_eq!(origin.call(1).await, Ok(2));
        assert_eq!(
            polls.load(Ordering::SeqCst),
            2,
            "driven to readiness by the call"
        );
    }
}
