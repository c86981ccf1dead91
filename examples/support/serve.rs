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
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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
use tokio::sync::mpsc;
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

/// Accepts connections on `listener` and hands each to `accepted` until `shutdown` resolves;
/// a failed `accept` pauses the loop ([`AcceptBackoff`]).
async fn accept_until(
    listener: &TcpListener,
    shutdown: impl Future<Output = ()>,
    mut accepted: impl FnMut(TcpStream),
) {
    let mut backoff = AcceptBackoff::default();
    tokio::pin!(shutdown);
    loop {
        let result = tokio::select! {
            result = listener.accept() => result,
            () = &mut shutdown => break,
        };
        match result {
            Ok((stream, _)) => {
                backoff.accepted();
                accepted(stream);
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
}

/// Lets open connections finish, for up to [`DRAIN_TIMEOUT`].
async fn drain(graceful: GracefulShutdown) {
    tracing::info!("shutting down: finishing open connections");
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after {DRAIN_TIMEOUT:?}");
    }
}

/// One worker's side of [`serve_workers`]: the connections dealt to it, and how many of them
/// are open.
struct Worker {
    streams: mpsc::UnboundedSender<std::net::TcpStream>,
    open: Arc<AtomicUsize>,
}

/// Serves on `listener` until `shutdown` resolves, then lets open connections finish for up to
/// [`DRAIN_TIMEOUT`]. `workers` workers serve: the first on the current runtime, each other on a thread
/// of its own with a single-threaded runtime, and `services` giving each its service. Like
/// nginx's worker processes, a worker runs its connections start to end: no task moves between
/// threads and no thread wakes another for a request. One loop accepts, and deals each
/// connection to the worker with the fewest open (the first of them, round robin among equals),
/// so that the workers share the load evenly however the clients' ports hash. Shutdown stops
/// accepting; every worker lets its connections finish, and this returns once all have.
pub async fn serve_workers<S, B>(
    listener: TcpListener,
    workers: usize,
    mut services: impl FnMut() -> S,
    timeouts: Timeouts,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()>
where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let mut dealt = Vec::new();
    let mut local = None;
    let mut threads = Vec::new();
    for index in 0..workers.max(1) {
        let (streams, received) = mpsc::unbounded_channel();
        let open = Arc::new(AtomicUsize::new(0));
        dealt.push(Worker {
            streams,
            open: open.clone(),
        });
        let work = run_worker(received, open, services(), timeouts);
        if index == 0 {
            local = Some(tokio::spawn(work));
            continue;
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread = std::thread::Builder::new()
            .name(format!("worker-{index}"))
            .spawn(move || runtime.block_on(work))?;
        threads.push(thread);
    }
    let mut next = 0;
    accept_until(&listener, shutdown, |stream| {
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(err) => return tracing::warn!(error = %err, "cannot hand a connection over"),
        };
        let count = dealt.len();
        let chosen = (0..count)
            .map(|offset| (next + offset) % count)
            .min_by_key(|index| dealt[*index].open.load(Ordering::Acquire))
            .unwrap_or(0);
        next = (chosen + 1) % count;
        dealt[chosen].open.fetch_add(1, Ordering::AcqRel);
        if let Err(err) = dealt[chosen].streams.send(stream) {
            dealt[chosen].open.fetch_sub(1, Ordering::AcqRel);
            drop(err);
            tracing::error!(worker = chosen, "worker is gone; connection closed");
        }
    })
    .await;
    // Closing the channels tells every worker that no connection will come.
    drop(dealt);
    if let Some(local) = local {
        let _ = local.await;
    }
    let _ = tokio::task::spawn_blocking(move || {
        for thread in threads {
            let _ = thread.join();
        }
    })
    .await;
    Ok(())
}

/// One open connection of a worker, counted until it is dropped.
struct Open(Arc<AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves the connections dealt to this worker, on its runtime, until no more can come; then
/// lets them finish.
async fn run_worker<S, B>(
    mut streams: mpsc::UnboundedReceiver<std::net::TcpStream>,
    open: Arc<AtomicUsize>,
    service: S,
    timeouts: Timeouts,
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
    while let Some(stream) = streams.recv().await {
        // The connection's task holds its count until it ends.
        let counted = Open(open.clone());
        match TcpStream::from_std(stream) {
            Ok(stream) => {
                let idle = timeouts.idle;
                spawn_connection(&builder, &graceful, stream, service.clone(), idle, counted);
            }
            Err(err) => tracing::warn!(error = %err, "cannot serve a connection"),
        }
    }
    drain(graceful).await;
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
    held: impl Send + 'static,
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
        // Whatever the caller counts the connection by lives as long as it does.
        let _held = held;
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

/// A connection's requests in flight and when the last one ended, kept in atomics: a request
/// touches no timer and wakes no task. The idle timer is re-armed lazily, like nginx's
/// keep-alive timer: when it fires it looks at the last activity and sleeps again if there was
/// some.
#[derive(Clone, Debug)]
struct Activity(Arc<Load>);

#[derive(Debug)]
struct Load {
    in_flight: AtomicUsize,
    /// When the last request ended (or the connection opened), as time since `opened`.
    idle_since_ms: AtomicU64,
    opened: Instant,
}

impl Activity {
    fn new() -> Self {
        Self(Arc::new(Load {
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            opened: Instant::now(),
        }))
    }

    fn begin(&self) -> InFlight {
        self.0.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    fn idle_since(&self) -> Instant {
        let elapsed = Duration::from_millis(self.0.idle_since_ms.load(Ordering::Acquire));
        self.0.opened + elapsed
    }

    /// Resolves once no request has been in flight for `timeout`; never without one.
    async fn idle_for(&self, timeout: Option<Duration>) {
        let Some(timeout) = timeout else {
            return std::future::pending().await;
        };
        let mut deadline = self.idle_since() + timeout;
        loop {
            tokio::time::sleep_until(deadline).await;
            let now = Instant::now();
            if self.0.in_flight.load(Ordering::Acquire) > 0 {
                // Busy: look again a whole timeout later.
                deadline = now + timeout;
                continue;
            }
            deadline = self.idle_since() + timeout;
            if deadline <= now {
                return;
            }
        }
    }
}

/// One request in flight on a connection, until its response body is done or dropped.
#[derive(Debug)]
struct InFlight(Activity);

impl Drop for InFlight {
    fn drop(&mut self) {
        let load = &self.0 .0;
        // The end time goes in first: the idle timer reads it only once no request is counted.
        let since = u64::try_from(load.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        load.idle_since_ms.fetch_max(since, Ordering::AcqRel);
        load.in_flight.fetch_sub(1, Ordering::AcqRel);
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
