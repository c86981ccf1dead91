//! The cached path of a GET or HEAD request, in the order a request takes it:
//!
//! 0. a key whose last response could not be stored goes straight to the origin for
//!    `http.pass_ttl` (hit-for-pass, see [`pass`](super::pass)), in a future of its own
//!    ([`pass`]);
//! 1. [`look_up`]: what is stored for it (memory, then the shared tier; its `Vary` variant),
//!    and what that entry may do for it (RFC 9111 §4);
//! 2. fresh: answered from the cache;
//! 3. stale within `stale-while-revalidate`: answered from the cache while one background
//!    request revalidates it (at most one per entry, bounded by `http.origin_timeout`; the
//!    cache's own GET, never started by a request with credentials, see
//!    [`background_request`]);
//! 4. `only-if-cached` with nothing usable: `504`, the origin is not asked;
//! 5. HEAD and ranges go to the origin as they are (a range answer is stored when nothing is);
//! 6. authorized requests are fetched for that client alone;
//! 7. the rest [`fill`](crate::store::TieredCache::fill) the key: one request per key at a
//!    time asks the origin (and with `l2.lock`, one instance), the others share what it stores.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::header::{AUTHORIZATION, RANGE};
use http::request::Parts;
use http::{HeaderMap, Method, Request, Response};
use http_body::Body;
use http_body_util::BodyExt;
use tower::Service;

use super::cache_control::CacheControl;
use super::cache_status::{Forward, Status};
use super::coding;
use super::deadline;
use super::entries::{self, Fetched, Permit, Unshared};
use super::exchange::Exchange;
use super::policy::{self, Precondition, Reuse};
use super::range;
use super::response;
use super::routes::Rule;
use super::state::State;
use super::variants::{Found, Resolved, Stored};
use crate::body::{BoxError, CacheBody};
use crate::stats::Counter;
use crate::store::codec::Reading;
use crate::store::{Fill, FillOptions};

/// What is stored for a request, and what it may do for it.
struct LookedUp {
    resolved: Resolved,
    reuse: Option<Reuse>,
}

/// The cached path of one GET or HEAD request whose primary key is `primary`.
pub(crate) async fn serve<S, ReqBody, ResBody>(
    state: Arc<State>,
    origin: S,
    parts: Parts,
    body: ReqBody,
    primary: String,
    rule: Arc<Rule>,
) -> Result<Response<CacheBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send,
    S::Error: Send,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Unpin + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    tracing::Span::current().record("key", primary.as_str());
    let LookedUp { resolved, reuse } = look_up(&state, &parts, &primary).await;
    let stale = match answer_stored(&state, &parts, resolved.found, reuse) {
        FromStore::Fresh {
            response,
            refresh_due,
        } => {
            if refresh_due {
                refresh_ahead(&state, origin, parts, body, primary, rule);
            }
            return Ok(response);
        }
        FromStore::Stale { response, found } => {
            let variants = resolved.variants.clone();
            revalidate_in_background(
                &state, origin, parts, body, &primary, &rule, found, variants,
            );
            return Ok(response);
        }
        FromStore::Unused(stale) => stale,
    };
    let exchange = Exchange {
        state: &state,
        rule: &rule,
        primary: &primary,
        variants: resolved.variants.as_ref(),
        stale: stale.as_ref(),
        forward: match reuse {
            Some(Reuse::ValidateStale) => Forward::Stale,
            Some(Reuse::ValidateRequested) => Forward::Request,
            _ => Forward::Miss,
        },
    };
    forward(&exchange, origin, parts, body, reuse).await
}

/// Whether a request for `primary` takes step 0, hit-for-pass: a GET without `Range` for a key
/// whose last response could not be stored.
pub(crate) fn is_pass(state: &State, parts: &Parts, primary: &String) -> bool {
    parts.method == Method::GET
        && !parts.headers.contains_key(RANGE)
        && state.passes.is_marked(primary, &state.cache)
}

/// Step 0, hit-for-pass ([`is_pass`]): straight to the origin, no lookup, no waiting. Its own
/// future, much smaller than [`serve`]'s, since most requests of an API that is not cacheable
/// take it. The answer is still judged, and stored when it may be.
pub(crate) async fn pass<S, ReqBody, ResBody>(
    state: Arc<State>,
    origin: S,
    parts: Parts,
    body: ReqBody,
    primary: String,
    rule: Arc<Rule>,
) -> Result<Response<CacheBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send,
    S::Error: Send,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Unpin + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    tracing::Span::current().record("key", primary.as_str());
    state.cache.count(Counter::Passes);
    let exchange = Exchange {
        state: &state,
        rule: &rule,
        primary: &primary,
        variants: None,
        stale: None,
        forward: Forward::Bypass,
    };
    exchange.fetch(origin, parts, body, None).await
}

/// What a stored entry does for a request.
enum FromStore<B> {
    /// Step 2: fresh; answered, and refreshed ahead in the background when due.
    Fresh {
        response: Response<CacheBody<B>>,
        refresh_due: bool,
    },
    /// Step 3: stale but answered at once, while it is revalidated in the background.
    Stale {
        response: Response<CacheBody<B>>,
        found: Found,
    },
    /// Not answered from the cache; a stale entry to validate, if any.
    Unused(Option<Found>),
}

fn answer_stored<B>(
    state: &State,
    parts: &Parts,
    found: Option<Found>,
    reuse: Option<Reuse>,
) -> FromStore<B> {
    match (found, reuse) {
        (Some(found), Some(Reuse::Fresh)) => {
            let entry = &found.lookup.entry;
            let response = from_entry(state, parts, entry, Status::hit(found.lookup.source));
            let refresh_due = state.refresh_due(entry, entry.age_at(SystemTime::now()));
            FromStore::Fresh {
                response,
                refresh_due,
            }
        }
        (Some(found), Some(Reuse::ValidateStale)) if may_serve_stale(state, parts, &found) => {
            let status = Status::stale(found.lookup.source, None);
            let response = from_entry(state, parts, &found.lookup.entry, status);
            FromStore::Stale { response, found }
        }
        (_, Some(Reuse::Unusable)) => FromStore::Unused(None),
        (found, _) => FromStore::Unused(found),
    }
}

/// Steps 4 to 7: nothing stored answers the request, so the origin is asked (or, for
/// `only-if-cached`, not).
async fn forward<S, ReqBody, ResBody>(
    exchange: &Exchange<'_>,
    origin: S,
    parts: Parts,
    body: ReqBody,
    reuse: Option<Reuse>,
) -> Result<Response<CacheBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send,
    S::Error: Send,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Unpin + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    if CacheControl::from_headers(&parts.headers).only_if_cached {
        let status = Status::detail("only-if-cached");
        return Ok(response::gateway_timeout(
            status,
            &exchange.state.cache_name,
        ));
    }
    // HEAD never creates or changes an entry; a range answer is stored when nothing is (a
    // fresh complete entry answered ranges above).
    if parts.method == Method::HEAD || parts.headers.contains_key(RANGE) {
        if parts.method == Method::GET && reuse.is_none() {
            return exchange.fetch_range(origin, parts, body).await;
        }
        return exchange.pass_on(origin, parts, body).await;
    }
    if parts.headers.contains_key(AUTHORIZATION) {
        return exchange.fetch(origin, parts, body, None).await;
    }
    fill(exchange, origin, parts, body).await
}

/// Step 1: memory, then the shared tier, then the `Vary` variant; a stored partial response
/// counts only for a GET of a range inside it while fresh (otherwise it is as if nothing were
/// stored, and a complete response replaces it). The lookup is counted here, once.
async fn look_up(state: &State, parts: &Parts, primary: &str) -> LookedUp {
    let headers = &parts.headers;
    let mut resolved =
        entries::resolve_for(&state.cache, primary, headers, reading_for(parts)).await;
    let mut reuse = reuse_of(parts, &resolved);
    let encoded = resolved
        .found
        .as_ref()
        .is_some_and(|found| found.lookup.entry.is_encoded());
    if encoded && reuse != Some(Reuse::Fresh) {
        // The stored brotli bytes answer only as they are: what is validated, served stale or
        // kept is the entry itself.
        resolved = entries::resolve(&state.cache, primary, headers).await;
        reuse = reuse_of(parts, &resolved);
    }
    let unusable_part = resolved.found.as_ref().is_some_and(|found| {
        let entry = &found.lookup.entry;
        range::is_partial(entry) && !(reuse == Some(Reuse::Fresh) && part_answers(parts, entry))
    });
    let looked_up = if unusable_part {
        LookedUp {
            resolved: Resolved {
                found: None,
                variants: resolved.variants,
            },
            reuse: None,
        }
    } else {
        LookedUp { resolved, reuse }
    };
    state
        .cache
        .count_lookup(looked_up.resolved.found.as_ref().map(|found| &found.lookup));
    looked_up
}

/// Whether a stored part answers the request: a GET of a range inside it, unless `If-Range`
/// asks for the whole representation instead.
fn part_answers(parts: &Parts, entry: &crate::store::CachedEntry) -> bool {
    let headers = &parts.headers;
    parts.method == Method::GET
        && range::within_partial(headers, entry.headers(), entry.body().len()).is_some()
        && policy::preconditions(headers, entry.status(), entry.headers())
            != Precondition::Proceed { ranges: false }
}

/// How to read the shared tier for this request: a plain GET from a client that accepts `br`
/// may get a compressed body as it is stored.
fn reading_for(parts: &Parts) -> Reading {
    let plain_get = parts.method == Method::GET && !parts.headers.contains_key(RANGE);
    if plain_get && coding::accepts_brotli(&parts.headers) {
        Reading::BrotliAccepted
    } else {
        Reading::Decoded
    }
}

/// What the entry found may do for the request (RFC 9111 §4).
fn reuse_of(parts: &Parts, resolved: &Resolved) -> Option<Reuse> {
    let now = SystemTime::now();
    resolved
        .found
        .as_ref()
        .map(|found| entries::reuse_at(&found.lookup.entry, &parts.headers, now))
}

fn from_entry<B>(
    state: &State,
    parts: &Parts,
    entry: &crate::store::CachedEntry,
    status: Status,
) -> Response<CacheBody<B>> {
    response::from_entry(
        &parts.method,
        &parts.headers,
        entry,
        status,
        &state.cache_name,
    )
}

/// Step 3: a stale entry may answer a GET without a range at once when it is within its
/// `stale-while-revalidate` window, or was soft-purged and its directives allow serving stale.
fn may_serve_stale(state: &State, parts: &Parts, found: &Found) -> bool {
    let entry = &found.lookup.entry;
    let windows = policy::stale_windows(entry.headers(), &parts.headers, state.default_stale);
    let age = entry.age_at(SystemTime::now());
    let soft_purged = entry.expired_early_at().is_some() && !policy::forbids_stale(entry.headers());
    (soft_purged || policy::within_window(windows.while_revalidate, age, entry.ttl()))
        && parts.method == Method::GET
        && !parts.headers.contains_key(RANGE)
}

/// Starts one background revalidation of `found` — none when one runs already (checked
/// before anything is spawned) or the request carries credentials ([`background_request`]) —
/// bounded by `http.origin_timeout`.
#[allow(clippy::too_many_arguments)]
fn revalidate_in_background<S, ReqBody, ResBody>(
    state: &Arc<State>,
    origin: S,
    parts: Parts,
    body: ReqBody,
    primary: &str,
    rule: &Arc<Rule>,
    found: Found,
    variants: Option<super::variants::Variants>,
) where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send,
    S::Error: Send,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Unpin + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let Some(parts) = background_request(parts) else {
        return;
    };
    let Some(permit) = state
        .cache
        .try_fill::<Fetched, Unshared>(&state.flights, &found.key)
    else {
        return;
    };
    let revalidation = Revalidation {
        state: Arc::clone(state),
        rule: Arc::clone(rule),
        primary: primary.to_owned(),
        found,
        variants,
    };
    spawn_bounded(
        state,
        "revalidate",
        revalidation.run(origin, parts, body, permit),
    );
}

/// Refresh-ahead (`http.refresh_ahead`): a fresh memory hit for `primary` past that fraction of
/// its lifetime starts one background revalidation — none when one runs for the key already
/// (checked before anything is spawned) or the request carries credentials
/// ([`background_request`]), and with `l2.lock` none when another instance runs one.
pub(crate) fn refresh_ahead<S, ReqBody, ResBody>(
    state: &Arc<State>,
    origin: S,
    parts: Parts,
    body: ReqBody,
    primary: String,
    rule: Arc<Rule>,
) where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send,
    S::Error: Send,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Unpin + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let Some(parts) = background_request(parts) else {
        return;
    };
    let Some(permit) = state
        .cache
        .try_fill::<Fetched, Unshared>(&state.flights, &primary)
    else {
        return;
    };
    let task_state = Arc::clone(state);
    spawn_bounded(state, "refresh_ahead", async move {
        let state = task_state;
        let resolved = entries::resolve(&state.cache, &primary, &parts.headers).await;
        let Some(found) = resolved.found.filter(|found| found.lookup.is_fresh()) else {
            return;
        };
        let Some(permit) = permit.across_instances(&state.cache, &found.key).await else {
            return;
        };
        state.cache.count(Counter::EarlyRefreshes);
        let revalidation = Revalidation {
            state: Arc::clone(&state),
            rule,
            primary,
            found,
            variants: resolved.variants,
        };
        revalidation.run(origin, parts, body, permit).await;
    });
}

/// The request a background revalidation sends, made from the one that started it: the cache's
/// own GET for the whole representation (a HEAD or `Range` hit may start a refresh-ahead; the
/// client's preconditions are removed by the exchange, as on every fill). `None` for a request
/// with credentials, which starts none: sent with them, the answer could be that client's page,
/// stored for everyone; sent without, an answer like a `401` would evict the entry for
/// everyone. The next request without credentials starts it.
fn background_request(mut parts: Parts) -> Option<Parts> {
    if policy::has_credentials(&parts.headers) {
        return None;
    }
    parts.method = Method::GET;
    parts.headers.remove(RANGE);
    Some(parts)
}

/// Spawns a background revalidation (`task` names it), abandoned after `http.origin_timeout`
/// (the next stale hit then tries again). Past `http.max_background` it is skipped: the entry
/// was served already, and a later hit starts it again.
fn spawn_bounded(
    state: &State,
    task: &'static str,
    revalidation: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let bounded = deadline::within(state.origin_timeout, revalidation);
    // Past the limit the revalidation is abandoned: its permit goes unfinished.
    state.cache.try_spawn(task, async move {
        let _ = bounded.await;
    });
}

/// One revalidation of a stored entry, in the background.
struct Revalidation {
    state: Arc<State>,
    rule: Arc<Rule>,
    primary: String,
    found: Found,
    variants: Option<super::variants::Variants>,
}

impl Revalidation {
    async fn run<S, ReqBody, ResBody>(self, origin: S, parts: Parts, body: ReqBody, permit: Permit)
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>>,
        ResBody: Body<Data = Bytes> + Unpin + Send + 'static,
        ResBody::Error: Into<BoxError>,
    {
        let Self {
            state,
            rule,
            primary,
            found,
            variants,
        } = self;
        let refreshed_meanwhile = state
            .cache
            .find(&found.key)
            .await
            .filter(|current| current.is_fresh() && current.entry != found.lookup.entry);
        if let Some(current) = refreshed_meanwhile {
            let stored = Stored::at(found.key.clone(), variants);
            drop(permit.finish(Ok(Fetched {
                source: current.source,
                entry: current.entry,
                stored,
            })));
            return;
        }
        let exchange = Exchange {
            state: &state,
            rule: &rule,
            primary: &primary,
            variants: variants.as_ref(),
            stale: Some(&found),
            forward: Forward::Stale,
        };
        // The client was answered already; the body is read only for what it stores.
        if let Ok(response) = exchange.fetch(origin, parts, body, Some(permit)).await {
            let mut body = response.into_body();
            while let Some(Ok(_)) = body.frame().await {}
        }
    }
}

/// Step 7: one request per key asks the origin; the others wait (`http.coalesce_wait` at
/// most) and are answered with what it stored, or ask themselves when it stored nothing.
async fn fill<S, ReqBody, ResBody>(
    exchange: &Exchange<'_>,
    origin: S,
    parts: Parts,
    body: ReqBody,
) -> Result<Response<CacheBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body<Data = Bytes> + Unpin + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let state = exchange.state;
    let primary = exchange.primary;
    let key = match (exchange.stale, exchange.variants) {
        (Some(found), _) => found.key.clone(),
        (None, Some(variants)) => variants.key_for(primary, &parts.headers),
        (None, None) => primary.to_owned(),
    };
    let options = FillOptions {
        across_instances: exchange.stale.is_none(),
        wait: Some(state.coalesce_wait),
    };
    let stored = || stored_meanwhile(state, primary, &parts.headers);
    match state
        .cache
        .fill(&state.flights, &key, options, stored)
        .await
    {
        Fill::Lead(permit) => exchange.fetch(origin, parts, body, Some(permit)).await,
        Fill::Found(fetched) => {
            let mut status = Status::hit(fetched.source);
            status.collapsed = true;
            Ok(from_entry(state, &parts, &fetched.entry, status))
        }
        Fill::Shared(fetched) if fetched.stored.selected_by(primary, &parts.headers) => {
            let mut status = Status::forward(Forward::Miss);
            status.collapsed = true;
            Ok(from_entry(state, &parts, &fetched.entry, status))
        }
        Fill::Shared(_) | Fill::Failed(_) | Fill::Alone => {
            exchange.fetch(origin, parts, body, None).await
        }
    }
}

/// A complete response stored for this request meanwhile (by another request here, or by the
/// instance that held the lock) that may answer it as it is, as step 2 would have.
async fn stored_meanwhile(state: &State, primary: &str, headers: &HeaderMap) -> Option<Fetched> {
    let resolved = entries::resolve(&state.cache, primary, headers).await;
    let now = SystemTime::now();
    let found = resolved
        .found
        .filter(|found| entries::answers_fresh(&found.lookup.entry, headers, now))?;
    Some(Fetched {
        source: found.lookup.source,
        entry: found.lookup.entry,
        stored: Stored::at(found.key, resolved.variants),
    })
}
