//! `http.origin_timeout`, applied one way wherever the cache waits for the origin: a response's
//! headers (reads and writes), a background revalidation, a body read for the cache only.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{error::Elapsed, Timeout};

pin_project! {
    /// A future given at most a limit, or as long as it takes; a named future rather than an
    /// `async fn`, which would keep the future it wraps twice in its state.
    #[project = WithinProj]
    pub(crate) enum Within<F> {
        Bounded { #[pin] future: Timeout<F> },
        Unbounded { #[pin] future: F },
    }
}

/// `future`, abandoned with [`Elapsed`] once `limit` has passed (`None`: never).
pub(crate) fn within<F: Future>(limit: Option<Duration>, future: F) -> Within<F> {
    match limit {
        Some(limit) => Within::Bounded {
            future: tokio::time::timeout(limit, future),
        },
        None => Within::Unbounded { future },
    }
}

impl<F: Future> Future for Within<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            WithinProj::Bounded { future } => future.poll(cx),
            WithinProj::Unbounded { future } => Poll::Ready(Ok(ready!(future.poll(cx)))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_future_past_its_limit_is_abandoned_and_one_without_a_limit_is_not() {
        let limit = Some(Duration::from_secs(30));
        assert!(within(limit, std::future::pending::<()>()).await.is_err());
        assert_eq!(within(limit, async { 7 }).await, Ok(7));
        let later = tokio::time::sleep(Duration::from_secs(3600));
        assert_eq!(within(None, later).await, Ok(()));
    }
}
