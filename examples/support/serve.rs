//! Serving a tower service on a TCP listener, HTTP/1.1 and h2c (prior knowledge) on the same
//! port, as the `cache_proxy` and `demo` examples do; they include this file by `#[path]` (a
//! folder without `main.rs`, so cargo does not take it for an example).
//!
//! What a client cannot do to the server:
//! - hold a connection with half a request head: [`Timeouts::header_read`] (hyper's HTTP/1
//!   header-read timeout, which needs the timer set here) closes it;
//! - hold an idle connection, HTTP/1.1 or HTTP/2, or one that never sends a byte:
//!   [`Timeouts::idle`] closes it once no request has been in flight for that long (hyper has no
//!   such timeout, so the connection's requests are counted here);
//! - leave a dead HTTP/2 peer's streams open: [`Timeouts::h2_keep_alive_interval`] pings it;
//! - exhaust file descriptors into a busy loop: a failed `accept` pauses the loop
//!   ([`AcceptBackoff`]) and is logged at most once a second.
//!
//! Shutdown stops accepting, lets open connections finish for up to [`DRAIN_TIMEOUT`], then
//! returns.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tower::{BoxError, Service, ServiceExt};

/// How long open connections may take to finish once shutdown begins.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The connection timeouts; `None` turns one off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// HTTP/1: how long a client has to send a whole request head before the connection is
    /// closed (without a response). hyper starts this clock whenever the connection waits for a
    /// head, after a keep-alive response as well, so it also bounds an idle HTTP/1.1 connection;
    /// it starts only once the first bytes of a connection have arrived.
    pub header_read: Option<Duration>,
    /// Both versions: how long a connection may stay open with no request in flight, counted
    /// from its accept or from the end of its last response body. Covers what the header-read
    /// timeout does not: connections that send nothing, and idle HTTP/2 connections.
    pub idle: Option<Duration>,
    /// HTTP/2: ping the client after this long without a frame from it (also while idle).
    pub h2_keep_alive_interval: Option<Duration>,
    /// HTTP/2: close the connection when a ping is not answered within this.
    pub h2_keep_alive_timeout: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            header_read: Some(Duration::from_secs(10)),
            idle: Some(Duration::from_secs(60)),
            h2_keep_alive_interval: Some(Duration::from_secs(20)),
            h2_keep_alive_timeout: Duration::from_secs(20),
        }
    }
}

/// Serves `service` on `listener` until `shutdown` resolves, then lets open connections finish
/// for up to [`DRAIN_TIMEOUT`].
pub async fn serve<S, B>(
    listener: TcpListener,
    service: S,
    timeouts: Timeouts,
    shutdown: impl Future<Output = ()>,
) where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let builder = builder(&timeouts);
    let graceful = GracefulShutdown::new();
    let mut backoff = AcceptBackoff::default();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        match accepted {
            Ok((stream, _)) => {
                backoff.accepted();
                spawn_connection(&builder, &graceful, stream, service.clone(), timeouts.idle);
            }
            Err(err) => {
                let verdict = backoff.failed(Instant::now());
                if let Some(suppressed) = verdict.log {
                    tracing::warn!(error = %err, suppressed, pause = ?verdict.pause, "accept failed");
                }
                tokio::select! {
                    () = tokio::time::sleep(verdict.pause) => {}
                    () = &mut shutdown => break,
                }
            }
        }
    }
    tracing::info!("shutting down: finishing open connections");
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after {DRAIN_TIMEOUT:?}");
    }
}

fn builder(timeouts: &Timeouts) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Without a timer hyper silently drops its default header-read timeout.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.header_read);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(timeouts.h2_keep_alive_interval)
        .keep_alive_timeout(timeouts.h2_keep_alive_timeout);
    builder
}

fn spawn_connection<S, B>(
    builder: &auto::Builder<TokioExecutor>,
    graceful: &GracefulShutdown,
    stream: TcpStream,
    service: S,
    idle: Option<Duration>,
) where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    // Responses are written whole; Nagle's algorithm would only hold back their last segment.
    let _ = stream.set_nodelay(true);
    let activity = Activity::new();
    let counted = {
        let activity = activity.clone();
        hyper::service::service_fn(move |request| {
            let in_flight = activity.begin();
            let service = service.clone();
            async move {
                let response = service.oneshot(request).await?;
                Ok::<_, Infallible>(response.map(|inner| Counted { inner, in_flight }))
            }
        })
    };
    let connection = builder
        .serve_connection(TokioIo::new(stream), counted)
        .into_owned();
    let connection = graceful.watch(connection);
    tokio::spawn(async move {
        tokio::select! {
            result = connection => {
                if let Err(err) = result {
                    tracing::debug!(error = %err, "connection ended with an error");
                }
            }
            // Dropping the connection closes the socket; no request is in flight on it.
            () = activity.idle_for(idle) => tracing::debug!("closing an idle connection"),
        }
    });
}

/// The accept loop's answer to errors, such as EMFILE at the file-descriptor limit, that repeat
/// at once for as long as their cause lasts: pause before the next `accept` (doubling from
/// [`Self::FIRST_PAUSE`] to [`Self::MAX_PAUSE`], back to the start after a success), and log at
/// most one line per [`Self::LOG_INTERVAL`], counting the errors left out.
#[derive(Debug, Default)]
pub struct AcceptBackoff {
    pause: Option<Duration>,
    last_logged: Option<Instant>,
    suppressed: u64,
}

/// What to do about one failed `accept`.
#[derive(Debug, PartialEq, Eq)]
pub struct AcceptVerdict {
    /// How long to wait before the next `accept`.
    pub pause: Duration,
    /// Log this error now, with the number of errors since the last line that were not logged.
    pub log: Option<u64>,
}

impl AcceptBackoff {
    /// The pause after the first of a run of errors.
    pub const FIRST_PAUSE: Duration = Duration::from_millis(5);
    /// The longest pause.
    pub const MAX_PAUSE: Duration = Duration::from_secs(1);
    /// The least time between two logged errors.
    pub const LOG_INTERVAL: Duration = Duration::from_secs(1);

    /// An `accept` failed at `now`.
    pub fn failed(&mut self, now: Instant) -> AcceptVerdict {
        let pause = self
            .pause
            .map_or(Self::FIRST_PAUSE, |pause| (pause * 2).min(Self::MAX_PAUSE));
        self.pause = Some(pause);
        // A success does not reset this: errors between successes must not flood the log.
        let due = self
            .last_logged
            .is_none_or(|at| now.duration_since(at) >= Self::LOG_INTERVAL);
        let log = if due {
            self.last_logged = Some(now);
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        };
        AcceptVerdict { pause, log }
    }

    /// An `accept` succeeded.
    pub fn accepted(&mut self) {
        self.pause = None;
    }
}

/// The requests in flight on one connection.
#[derive(Clone, Copy, Debug)]
struct Load {
    in_flight: usize,
    idle_since: Instant,
}

/// One connection's [`Load`], updated by its requests and watched by its idle timer.
#[derive(Clone, Debug)]
struct Activity(Arc<watch::Sender<Load>>);

impl Activity {
    fn new() -> Self {
        let load = Load {
            in_flight: 0,
            idle_since: Instant::now(),
        };
        Self(Arc::new(watch::Sender::new(load)))
    }

    fn begin(&self) -> InFlight {
        self.0.send_modify(|load| load.in_flight += 1);
        InFlight(self.clone())
    }

    /// Resolves once no request has been in flight for `timeout`; never without one.
    async fn idle_for(&self, timeout: Option<Duration>) {
        let Some(timeout) = timeout else {
            return std::future::pending().await;
        };
        let mut load = self.0.subscribe();
        loop {
            let now = *load.borrow_and_update();
            let expired = async {
                if now.in_flight == 0 {
                    tokio::time::sleep_until(now.idle_since + timeout).await;
                } else {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                () = expired => return,
                // `self` holds the sender, so this only ends with a change.
                _ = load.changed() => {}
            }
        }
    }
}

/// A request counted in its connection's [`Load`] until dropped.
#[derive(Debug)]
struct InFlight(Activity);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0 .0.send_modify(|load| {
            load.in_flight -= 1;
            if load.in_flight == 0 {
                load.idle_since = Instant::now();
            }
        });
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request in flight until hyper has sent or dropped it.
    struct Counted<B> {
        #[pin]
        inner: B,
        in_flight: InFlight,
    }
}

impl<B: Body> Body for Counted<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
