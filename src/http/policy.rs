//! Shared-cache semantics of RFC 9111: what may be stored, for how long, and when a stored
//! response may answer a request. Pure functions over headers and times; the service applies
//! them in request order.

mod date;

use std::time::{Duration, SystemTime};

use http::header::{
    HeaderMap, HeaderName, AGE, AUTHORIZATION, CONNECTION, COOKIE, DATE, ETAG, EXPIRES, IF_MATCH,
    IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, IF_UNMODIFIED_SINCE, LAST_MODIFIED, PRAGMA,
    PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, SET_COOKIE, TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
    VARY,
};
use http::{Method, StatusCode};

use super::cache_control::{self, CacheControl, Delta, MaxStale, Qualified, SurrogateControl};

/// Heuristic freshness is 10 % of the time since Last-Modified (§4.2.2), at most this long.
const HEURISTIC_CAP: Duration = Duration::from_secs(24 * 3600);

/// Settings of the policy that come from configuration.
#[derive(Clone, Debug)]
pub(crate) struct Settings<'a> {
    /// Freshness for storable responses with none of their own (0 = RFC only).
    pub(crate) default_ttl: Duration,
    /// Route override of the freshness lifetime.
    pub(crate) ttl_override: Option<Duration>,
    /// How long stale entries with validators are kept.
    pub(crate) keep_stale: Duration,
    /// `stale-while-revalidate` and `stale-if-error` for responses without their own.
    pub(crate) default_stale: StaleWindows,
    /// Store responses that set cookies (off by default: a cookie is for one client).
    pub(crate) store_set_cookie: bool,
    /// Heuristic freshness and `default_ttl` for responses to requests with credentials.
    pub(crate) heuristic_with_credentials: bool,
    /// This cache's name as a surrogate, for targeted `Surrogate-Control` directives.
    pub(crate) surrogate_token: &'a str,
    /// The targeted cache-control fields this cache follows, in precedence order (RFC 9213).
    pub(crate) targeted_fields: &'a [HeaderName],
}

/// Marks a stored response whose policy came from a targeted field, naming that field, so that
/// reusing it follows the same directives it was stored under. Internal: never sent.
pub(crate) static TARGETED: HeaderName = HeaderName::from_static("x-tiered-cache-targeted");

/// Why a response is not stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NotStored {
    Method,
    Status,
    NoStore,
    Private,
    Authorization,
    SetCookie,
    VaryStar,
    /// No explicit freshness, for a request with `Cookie` or `Authorization`: the page may be
    /// that client's, and a shared cache would hand it to the next one.
    Credentials,
    /// Would never be usable: stale at once and without validators.
    Useless,
}

impl NotStored {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Method => "method",
            Self::Status => "status",
            Self::NoStore => "no_store",
            Self::Private => "private",
            Self::Authorization => "authorization",
            Self::SetCookie => "set_cookie",
            Self::VaryStar => "vary_star",
            Self::Credentials => "credentials",
            Self::Useless => "useless",
        }
    }
}

/// How to store a response that may be stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StorePlan {
    /// Freshness lifetime (§4.2.1).
    pub(crate) ttl: Duration,
    /// Corrected initial age (§4.2.3): the entry counts as generated this long before it arrived.
    pub(crate) initial_age: Duration,
    /// How long it is kept once stale.
    pub(crate) keep_stale: Duration,
    /// Fields named by `private=` / `no-cache=`, removed before storing (§5.2.2.4, §5.2.2.7).
    pub(crate) strip: Vec<HeaderName>,
    /// The targeted field (RFC 9213) whose directives apply, when one does: recorded with the
    /// entry as [`TARGETED`].
    pub(crate) targeted: Option<HeaderName>,
}

/// Statuses a cache may store without explicit freshness (RFC 9110 §15.1).
fn heuristically_cacheable(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// Statuses this cache stores as a resource's response (§3): final, not partial content (a part
/// is judged as its complete response would be, by the caller), not 304 or 412 (answers to one
/// request's preconditions, not the resource: a stored 412 would fail every later request).
fn storable_status(status: StatusCode) -> bool {
    let code = status.as_u16();
    (200..600).contains(&code) && !matches!(code, 206 | 304 | 412)
}

/// Statuses whose caching requirements this cache knows (RFC 9110 §15, RFC 6585, RFC 7725), for
/// `must-understand` (§5.2.2.3).
fn understood(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200..=206 | 300..=305 | 307 | 308 | 400..=417 | 421 | 422 | 426 | 428 | 429 | 431 | 451 | 500..=505 | 511
    )
}

/// Whether `response` to `request` may be stored by a shared cache (RFC 9111 §3), and how.
pub(crate) fn plan_store(
    method: &Method,
    request: &HeaderMap,
    status: StatusCode,
    response: &HeaderMap,
    request_time: SystemTime,
    response_time: SystemTime,
    settings: &Settings,
) -> Result<StorePlan, NotStored> {
    if method != Method::GET {
        return Err(NotStored::Method);
    }
    if !storable_status(status) {
        return Err(NotStored::Status);
    }
    // A targeted field (RFC 9213) replaces Cache-Control and Expires, and Surrogate-Control,
    // the older convention for the same purpose; without one, a surrogate's own directives win
    // over Cache-Control (W3C Edge Architecture).
    let (cc, targeted) = cache_control::governing(response, settings.targeted_fields);
    let surrogate = match targeted {
        Some(_) => None,
        None => SurrogateControl::from_headers(response, settings.surrogate_token),
    };
    if surrogate
        .as_ref()
        .is_some_and(|surrogate| surrogate.no_store)
    {
        return Err(NotStored::NoStore);
    }
    let surrogate_max_age = surrogate.and_then(|surrogate| surrogate.max_age);
    if let Some(reason) = refusal(status, request, response, &cc, surrogate_max_age, settings) {
        return Err(reason);
    }
    let explicit = match surrogate_max_age {
        Some(delta) => Some(Duration::from_secs(delta.seconds().unwrap_or(0))),
        None => explicit_lifetime(&cc, targeted.is_none(), response, response_time),
    };
    let heuristic_allowed = cc.public || heuristically_cacheable(status);
    if explicit.is_none() && !heuristic_allowed && settings.ttl_override.is_none() {
        return Err(NotStored::Status);
    }
    // Not an RFC rule (§4.2.2 allows it), but what careful caches do: a response without
    // explicit freshness to a request with credentials is likely personal.
    if explicit.is_none()
        && settings.ttl_override.is_none()
        && !settings.heuristic_with_credentials
        && has_credentials(request)
    {
        return Err(NotStored::Credentials);
    }
    let ttl = settings
        .ttl_override
        .or(explicit)
        .or_else(|| {
            heuristic_allowed
                .then(|| heuristic_lifetime(response, response_time))
                .flatten()
        })
        .unwrap_or(settings.default_ttl);
    let (useful_stale, keep_stale) = stale_keeping(&cc, response, settings);
    if ttl.is_zero() && useful_stale.is_zero() {
        return Err(NotStored::Useless);
    }
    Ok(StorePlan {
        ttl,
        initial_age: initial_age(response, request_time, response_time),
        keep_stale,
        strip: stripped_fields(&cc),
        targeted: targeted.cloned(),
    })
}

/// How long an entry is kept past its freshness: `(useful, kept)`. Useful: for validation when
/// it has validators, and within the stale windows its directives (or the defaults) allow.
/// Kept: a little longer, for when the origin cannot be reached, which is no reason to store.
fn stale_keeping(
    cc: &CacheControl,
    response: &HeaderMap,
    settings: &Settings,
) -> (Duration, Duration) {
    let has_validators = response.contains_key(ETAG) || response.contains_key(LAST_MODIFIED);
    let for_validation = if has_validators {
        settings.keep_stale
    } else {
        Duration::ZERO
    };
    let windows = stale_windows_of(cc, None, settings.default_stale);
    let useful = for_validation
        .max(windows.while_revalidate)
        .max(windows.if_error);
    (useful, useful.max(windows.if_unreachable))
}

/// The directives and fields that keep a response out of a shared cache (§3, §5.2.2), in the
/// order they are checked; `None` when they let it in.
fn refusal(
    status: StatusCode,
    request: &HeaderMap,
    response: &HeaderMap,
    cc: &CacheControl,
    surrogate_max_age: Option<Delta>,
    settings: &Settings,
) -> Option<NotStored> {
    // §5.2.2.3: must-understand stores only understood statuses, and then overrides no-store.
    if cc.must_understand && !understood(status) {
        return Some(NotStored::Status);
    }
    if cc.no_store && !cc.must_understand && surrogate_max_age.is_none() {
        return Some(NotStored::NoStore);
    }
    // §5.2.2.7: a shared cache must not store a private response.
    if cc.private.is_all() {
        return Some(NotStored::Private);
    }
    if authorization_unshared(request, cc) {
        return Some(NotStored::Authorization);
    }
    // Not an RFC rule: a cookie set for one client must never reach another.
    if response.contains_key(SET_COOKIE) && !settings.store_set_cookie && !strips(cc, &SET_COOKIE) {
        return Some(NotStored::SetCookie);
    }
    // §4.1: Vary: * never matches; neither does a field name that is not a token.
    if vary_fields(response)
        .iter()
        .any(|field| field == "*" || HeaderName::from_bytes(field.as_bytes()).is_err())
    {
        return Some(NotStored::VaryStar);
    }
    None
}

fn strips(cc: &CacheControl, field: &HeaderName) -> bool {
    [&cc.private, &cc.no_cache]
        .iter()
        .any(|qualified| matches!(qualified, Qualified::Fields(fields) if fields.iter().any(|f| f == field.as_str())))
}

fn stripped_fields(cc: &CacheControl) -> Vec<HeaderName> {
    let mut fields = Vec::new();
    for qualified in [&cc.private, &cc.no_cache] {
        if let Qualified::Fields(names) = qualified {
            fields.extend(
                names
                    .iter()
                    .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok()),
            );
        }
    }
    fields
}

/// §4.2.1: `s-maxage` (shared caches), then `max-age`, then (when `with_expires`: not under a
/// targeted field) `Expires` − `Date`. An invalid value makes the response stale at once.
fn explicit_lifetime(
    cc: &CacheControl,
    with_expires: bool,
    response: &HeaderMap,
    response_time: SystemTime,
) -> Option<Duration> {
    if let Some(delta) = cc.s_maxage.or(cc.max_age) {
        return Some(Duration::from_secs(delta.seconds().unwrap_or(0)));
    }
    if !with_expires {
        return None;
    }
    let mut expires = response.get_all(EXPIRES).iter();
    let first = expires.next()?;
    // §5.3: an invalid (or repeated) Expires means "already expired".
    let Some(expires_at) = (expires.next().is_none())
        .then(|| http_date(first))
        .flatten()
    else {
        return Some(Duration::ZERO);
    };
    let date = response_date(response).unwrap_or(response_time);
    Some(expires_at.duration_since(date).unwrap_or(Duration::ZERO))
}

/// §4.2.2: 10 % of the time since `Last-Modified`, capped.
fn heuristic_lifetime(response: &HeaderMap, response_time: SystemTime) -> Option<Duration> {
    let last_modified = http_date(response.get(LAST_MODIFIED)?)?;
    let date = response_date(response).unwrap_or(response_time);
    let since = date.duration_since(last_modified).ok()?;
    Some((since / 10).min(HEURISTIC_CAP))
}

/// §4.2.3: the corrected initial age of a response received at `response_time`.
fn initial_age(
    response: &HeaderMap,
    request_time: SystemTime,
    response_time: SystemTime,
) -> Duration {
    let apparent_age = response_date(response)
        .and_then(|date| response_time.duration_since(date).ok())
        .unwrap_or(Duration::ZERO);
    let response_delay = response_time
        .duration_since(request_time)
        .unwrap_or(Duration::ZERO);
    let corrected_age_value = age_value(response).unwrap_or_default() + response_delay;
    apparent_age.max(corrected_age_value)
}

/// §5.1: the `Age` of a response. A list (`0, 7200`, or several field lines) counts by its
/// first member; a value that is not delta-seconds (`abc`, `-1`, `1.5`) is ignored, as if
/// there were no `Age`; a huge one counts as 2^31 seconds (§1.2.2). Parameters after the number
/// (`7200;foo=bar`, as Structured Fields would read an Integer) are dropped and the number
/// counts: of the two readings §5.1 leaves open, the one that takes the response as older.
fn age_value(response: &HeaderMap) -> Option<Duration> {
    let first = response
        .get_all(AGE)
        .iter()
        .flat_map(|line| line.as_bytes().split(|byte| *byte == b','))
        .map(|member| member.trim_ascii())
        // RFC 9110 §5.6.1: empty list members do not count.
        .find(|member| !member.is_empty())?;
    let number = first
        .split(|byte| *byte == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii_end();
    match std::str::from_utf8(number).map(Delta::parse_str) {
        Ok(Delta::Seconds(seconds)) => Some(Duration::from_secs(seconds)),
        _ => None,
    }
}

fn response_date(response: &HeaderMap) -> Option<SystemTime> {
    http_date(response.get(DATE)?)
}

/// An HTTP-date field value in any of the formats recipients must accept (RFC 9110 §5.6.7).
pub(crate) fn http_date(value: &http::HeaderValue) -> Option<SystemTime> {
    http_date_text(value.to_str().ok()?)
}

fn http_date_text(text: &str) -> Option<SystemTime> {
    date::parse(text, date::year_of(SystemTime::now()))
}

/// The lowercased field names of `Vary`.
pub(crate) fn vary_fields(response: &HeaderMap) -> Vec<String> {
    response
        .get_all(VARY)
        .iter()
        .flat_map(|line| {
            String::from_utf8_lossy(line.as_bytes())
                .split(',')
                .map(|name| name.trim().to_ascii_lowercase())
                .filter(|name| !name.is_empty())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// How long past its freshness a stored response may still be served (RFC 5861).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct StaleWindows {
    /// While one background request revalidates it.
    pub(crate) while_revalidate: Duration,
    /// When the origin answers 5xx, fails or times out.
    pub(crate) if_error: Duration,
    /// When the origin gives no answer at all (connection refused or closed, timeout): the
    /// cache is then "disconnected" (RFC 9111 §4.2.4) and may serve stale without a directive.
    pub(crate) if_unreachable: Duration,
}

/// The stale windows of a stored response for a request: its own directives (the request may
/// also grant `stale-if-error`), else `defaults`; none where the response forbids serving
/// stale (`must-revalidate`, `proxy-revalidate`, `s-maxage`, `no-cache`, RFC 9111 §4.2.4).
pub(crate) fn stale_windows(
    stored: &HeaderMap,
    request: &HeaderMap,
    defaults: StaleWindows,
) -> StaleWindows {
    let requested = CacheControl::from_headers(request).stale_if_error;
    stale_windows_of(&stored_directives(stored), requested, defaults)
}

/// Whether a stored response forbids being served stale (`must-revalidate`,
/// `proxy-revalidate`, `s-maxage`, `no-cache`, RFC 9111 §4.2.4).
pub(crate) fn forbids_stale(stored: &HeaderMap) -> bool {
    forbids_stale_by(&stored_directives(stored))
}

fn forbids_stale_by(cc: &CacheControl) -> bool {
    cc.must_revalidate || cc.proxy_revalidate || cc.s_maxage.is_some() || cc.no_cache.is_all()
}

/// [`stale_windows`] from the stored response's parsed directives and the request's
/// `stale-if-error`.
fn stale_windows_of(
    cc: &CacheControl,
    requested_if_error: Option<Delta>,
    defaults: StaleWindows,
) -> StaleWindows {
    if forbids_stale_by(cc) {
        return StaleWindows::default();
    }
    let seconds = |delta: Option<Delta>| delta.and_then(Delta::seconds).map(Duration::from_secs);
    let requested = seconds(requested_if_error).unwrap_or_default();
    StaleWindows {
        while_revalidate: seconds(cc.stale_while_revalidate).unwrap_or(defaults.while_revalidate),
        if_error: seconds(cc.stale_if_error)
            .unwrap_or(defaults.if_error)
            .max(requested),
        if_unreachable: defaults.if_unreachable,
    }
}

/// The directives a stored response was stored under: those of the targeted field its
/// [`TARGETED`] marker names, else its `Cache-Control`.
fn stored_directives(stored: &HeaderMap) -> CacheControl {
    stored
        .get(&TARGETED)
        .and_then(|field| HeaderName::from_bytes(field.as_bytes()).ok())
        .and_then(|field| CacheControl::from_targeted(stored, &field))
        .unwrap_or_else(|| CacheControl::from_headers(stored))
}

/// Whether a stored response of `age` and freshness lifetime `ttl` is stale by no more than
/// `window`, one of its [`StaleWindows`] (a zero window allows nothing).
pub(crate) fn within_window(window: Duration, age: Duration, ttl: Duration) -> bool {
    !window.is_zero() && age.saturating_sub(ttl) <= window
}

/// What a stored response can do for a request (RFC 9111 §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reuse {
    /// Serve it as is.
    Fresh,
    /// Validate it with the origin first: it is stale (or marked `no-cache`).
    ValidateStale,
    /// Validate it first: the request asked for that.
    ValidateRequested,
    /// It must not answer this request at all.
    Unusable,
}

/// §4 (with §5.2.1 request directives and §3.5 for Authorization).
pub(crate) fn reuse(
    request: &HeaderMap,
    stored: &HeaderMap,
    age: Duration,
    ttl: Duration,
) -> Reuse {
    let stored_cc = stored_directives(stored);
    if authorization_unshared(request, &stored_cc) {
        return Reuse::Unusable;
    }
    let request_cc = CacheControl::from_headers(request);
    // §5.4: Pragma: no-cache counts only when the request has no Cache-Control.
    let pragma_no_cache = !request_cc.present
        && request
            .get_all(PRAGMA)
            .iter()
            .any(|value| value.as_bytes().eq_ignore_ascii_case(b"no-cache"));
    if request_cc.no_cache.is_all() || pragma_no_cache {
        return Reuse::ValidateRequested;
    }
    if let Some(max_age) = request_cc.max_age {
        if age > Duration::from_secs(max_age.seconds().unwrap_or(0)) {
            return Reuse::ValidateRequested;
        }
    }
    let remaining = ttl.saturating_sub(age);
    if let Some(min_fresh) = request_cc.min_fresh {
        if remaining.as_secs() < min_fresh.seconds().unwrap_or(u64::MAX) {
            return Reuse::ValidateRequested;
        }
    }
    if stored_cc.no_cache.is_all() {
        return Reuse::ValidateStale;
    }
    if age < ttl {
        return Reuse::Fresh;
    }
    // §4.2.4: stale responses only where the request allows and the response does not forbid.
    let stale_for = age - ttl;
    let forbids_stale = forbids_stale_by(&stored_cc);
    let allowed = match request_cc.max_stale {
        Some(MaxStale::Any) => true,
        Some(MaxStale::Seconds(limit)) => stale_for.as_secs() <= limit,
        None => false,
    };
    if allowed && !forbids_stale {
        Reuse::Fresh
    } else {
        Reuse::ValidateStale
    }
}

/// §3.5: whether a request with `Authorization` must not share a response with directives
/// `cc`: only `public`, `s-maxage` or `must-revalidate` allow it, for storing and for reuse.
fn authorization_unshared(request: &HeaderMap, cc: &CacheControl) -> bool {
    request.contains_key(AUTHORIZATION)
        && !(cc.public || cc.s_maxage.is_some() || cc.must_revalidate)
}

/// Conditional headers to validate a stored response (§4.3.1).
pub(crate) fn validators(stored: &HeaderMap) -> Vec<(HeaderName, http::HeaderValue)> {
    let mut out = Vec::new();
    if let Some(etag) = stored.get(ETAG) {
        out.push((IF_NONE_MATCH, etag.clone()));
    }
    if let Some(last_modified) = stored.get(LAST_MODIFIED) {
        out.push((IF_MODIFIED_SINCE, last_modified.clone()));
    }
    out
}

/// Whether `request` carries credentials (`Authorization`, `Cookie`): its answer may be that
/// client's alone, so it says nothing about what other clients should get.
pub(crate) fn has_credentials(request: &HeaderMap) -> bool {
    request.contains_key(AUTHORIZATION) || request.contains_key(COOKIE)
}

/// The request fields that make a GET conditional (RFC 9110 §13.1). The cache answers them
/// itself ([`preconditions`]); a request that may fill the cache for others goes out without
/// them, or one client's conditions would decide what everyone gets.
pub(crate) const PRECONDITIONS: [HeaderName; 5] = [
    IF_MATCH,
    IF_UNMODIFIED_SINCE,
    IF_NONE_MATCH,
    IF_MODIFIED_SINCE,
    IF_RANGE,
];

/// What a request's preconditions make of a response ([`preconditions`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Precondition {
    /// None failed: the response as it is. `ranges`: whether a `Range` may be answered (no
    /// `If-Range`, or one that holds); otherwise the whole representation is sent (§13.1.5).
    Proceed { ranges: bool },
    /// `304 Not Modified`: `If-None-Match` or `If-Modified-Since` is false.
    NotModified,
    /// `412 Precondition Failed`: `If-Match` or `If-Unmodified-Since` is false.
    Failed,
}

/// Evaluates the preconditions of a GET or HEAD `request` against a response (stored, or just
/// fetched) with `status` and `response` header fields, in the order of RFC 9110 §13.2.2. They
/// apply to a 2xx only (§13.2.1): to anything else the request proceeds, so `If-None-Match: *`
/// on a stored 404 gets the 404.
pub(crate) fn preconditions(
    request: &HeaderMap,
    status: StatusCode,
    response: &HeaderMap,
) -> Precondition {
    if !status.is_success() {
        return Precondition::Proceed { ranges: true };
    }
    let etag = response.get(ETAG).and_then(|etag| etag.to_str().ok());
    let unmodified = if request.contains_key(IF_MATCH) {
        if_match(request, etag)
    } else {
        request
            .get(IF_UNMODIFIED_SINCE)
            .and_then(http_date)
            .is_none_or(|since| last_modified(response).is_none_or(|at| at <= since))
    };
    if !unmodified {
        return Precondition::Failed;
    }
    let modified = if request.contains_key(IF_NONE_MATCH) {
        if_none_match(request, etag)
    } else {
        // RFC 9111 §4.3.2: without Last-Modified, a stored response counts from its Date.
        let at = last_modified(response).or_else(|| response.get(DATE).and_then(http_date));
        request
            .get(IF_MODIFIED_SINCE)
            .and_then(http_date)
            .is_none_or(|since| at.is_none_or(|at| at > since))
    };
    if !modified {
        return Precondition::NotModified;
    }
    Precondition::Proceed {
        ranges: if_range(request, etag, response),
    }
}

/// The members of a list of entity tags in `name` (`*` is a member too).
fn entity_tags<'a>(request: &'a HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'a str> {
    request
        .get_all(name)
        .iter()
        .filter_map(|line| line.to_str().ok())
        .flat_map(|line| line.split(','))
        .map(str::trim)
}

/// §8.8.3.2 strong comparison: neither tag weak, the same opaque tag.
fn strong_match(candidate: &str, etag: &str) -> bool {
    let etag = etag.trim();
    !candidate.starts_with("W/") && !etag.starts_with("W/") && candidate == etag
}

/// §8.8.3.2 weak comparison: the same opaque tag, weak or not.
fn weak_match(candidate: &str, etag: &str) -> bool {
    let opaque = |tag: &str| tag.trim().trim_start_matches("W/").to_owned();
    opaque(candidate) == opaque(etag)
}

/// §13.1.1: `*` holds for any current representation (the response is a 2xx); a list holds
/// when a member matches the entity tag strongly.
fn if_match(request: &HeaderMap, etag: Option<&str>) -> bool {
    entity_tags(request, &IF_MATCH)
        .any(|candidate| candidate == "*" || etag.is_some_and(|etag| strong_match(candidate, etag)))
}

/// §13.1.2: false (the response is "not modified") for `*` or a member matching weakly.
fn if_none_match(request: &HeaderMap, etag: Option<&str>) -> bool {
    !entity_tags(request, &IF_NONE_MATCH)
        .any(|candidate| candidate == "*" || etag.is_some_and(|etag| weak_match(candidate, etag)))
}

/// §13.1.5: an entity tag that matches strongly, or a date that is exactly `Last-Modified`;
/// without `If-Range`, ranges are answered as asked.
fn if_range(request: &HeaderMap, etag: Option<&str>, response: &HeaderMap) -> bool {
    let Some(value) = request.get(IF_RANGE) else {
        return true;
    };
    let Ok(value) = value.to_str().map(str::trim) else {
        return false;
    };
    if value.starts_with('"') || value.starts_with("W/") {
        return etag.is_some_and(|etag| strong_match(value, etag));
    }
    http_date_text(value).is_some_and(|date| last_modified(response) == Some(date))
}

fn last_modified(response: &HeaderMap) -> Option<SystemTime> {
    response.get(LAST_MODIFIED).and_then(http_date)
}

/// Removes the fields that describe one connection (RFC 9110 §7.6.1: `Connection` and the
/// fields it names, `Keep-Alive`, `Proxy-Connection`, `TE`, `Trailer`, `Transfer-Encoding`,
/// `Upgrade`, `Proxy-Authenticate`, `Proxy-Authorization`). The cache never stores them; a proxy
/// removes them from what it forwards.
///
/// ```
/// use http::HeaderMap;
/// let mut headers = HeaderMap::new();
/// headers.insert("connection", "close, x-hop".parse().unwrap());
/// headers.insert("x-hop", "1".parse().unwrap());
/// headers.insert("etag", "\"a\"".parse().unwrap());
/// tower_tiered_cache::remove_hop_by_hop(&mut headers);
/// assert_eq!(headers.len(), 1);
/// ```
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
    static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
    let hop_by_hop = [
        &CONNECTION,
        &PROXY_AUTHENTICATE,
        &PROXY_AUTHORIZATION,
        &TE,
        &TRAILER,
        &TRANSFER_ENCODING,
        &UPGRADE,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
    ];
    // Most messages carry none of them: one pass over the names, nothing removed.
    if !headers.keys().any(|name| hop_by_hop.contains(&name)) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in hop_by_hop {
        headers.remove(name);
    }
}

/// §3.2: a 304 updates the stored header fields, except those describing the stored body.
pub(crate) fn update_headers(stored: &mut HeaderMap, not_modified: &HeaderMap) {
    let mut fresh = not_modified.clone();
    remove_hop_by_hop(&mut fresh);
    // The stored body keeps its own description, and its validator (a 304 may carry another).
    for name in [
        http::header::CONTENT_LENGTH,
        http::header::CONTENT_ENCODING,
        http::header::CONTENT_RANGE,
        ETAG,
        HeaderName::from_static("content-md5"),
    ] {
        fresh.remove(name);
    }
    let names: Vec<HeaderName> = fresh.keys().cloned().collect();
    for name in names {
        stored.remove(&name);
        for value in fresh.get_all(&name) {
            stored.append(name.clone(), value.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    use crate::http::test_headers as headers;

    fn settings() -> Settings<'static> {
        Settings {
            default_ttl: Duration::ZERO,
            ttl_override: None,
            keep_stale: Duration::from_secs(600),
            default_stale: StaleWindows::default(),
            store_set_cookie: false,
            heuristic_with_credentials: false,
            surrogate_token: "tc",
            targeted_fields: &TARGETS,
        }
    }

    static TARGETS: [HeaderName; 2] = [
        HeaderName::from_static("tc-cache-control"),
        HeaderName::from_static("cdn-cache-control"),
    ];

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000 + seconds)
    }

    fn date(seconds: u64) -> String {
        httpdate::fmt_http_date(at(seconds))
    }

    fn plan(status: u16, response: &[(&str, &str)]) -> Result<StorePlan, NotStored> {
        plan_store(
            &Method::GET,
            &HeaderMap::new(),
            StatusCode::from_u16(status).unwrap(),
            &headers(response),
            at(100),
            at(100),
            &settings(),
        )
    }

    #[test]
    fn s_maxage_wins_over_max_age_over_expires() {
        let d = date(100);
        let e = date(400);
        assert_eq!(
            plan(
                200,
                &[("cache-control", "max-age=60, s-maxage=5"), ("date", &d)]
            )
            .unwrap()
            .ttl,
            Duration::from_secs(5)
        );
        assert_eq!(
            plan(
                200,
                &[
                    ("cache-control", "max-age=60"),
                    ("expires", &e),
                    ("date", &d)
                ]
            )
            .unwrap()
            .ttl,
            Duration::from_secs(60)
        );
        assert_eq!(
            plan(200, &[("expires", &e), ("date", &d)]).unwrap().ttl,
            Duration::from_secs(300)
        );
    }

    #[test]
    fn invalid_expires_means_expired() {
        let result = plan(200, &[("expires", "0"), ("etag", "\"a\"")]).unwrap();
        assert_eq!(result.ttl, Duration::ZERO);
        assert_eq!(plan(200, &[("expires", "0")]), Err(NotStored::Useless));
    }

    #[test]
    fn private_no_store_set_cookie_and_vary_star_are_not_stored() {
        assert_eq!(
            plan(200, &[("cache-control", "max-age=60, private")]),
            Err(NotStored::Private)
        );
        assert_eq!(
            plan(200, &[("cache-control", "max-age=60, no-store")]),
            Err(NotStored::NoStore)
        );
        assert_eq!(
            plan(
                200,
                &[("cache-control", "max-age=60"), ("set-cookie", "a=b")]
            ),
            Err(NotStored::SetCookie)
        );
        assert_eq!(
            plan(200, &[("cache-control", "max-age=60"), ("vary", "*")]),
            Err(NotStored::VaryStar)
        );
        let stripped = plan(
            200,
            &[
                ("cache-control", "max-age=60, private=\"set-cookie\""),
                ("set-cookie", "a=b"),
            ],
        )
        .unwrap();
        assert_eq!(stripped.strip, vec![SET_COOKIE]);
    }

    #[test]
    fn authorized_responses_need_explicit_permission() {
        let request = headers(&[("authorization", "Bearer x")]);
        let store = |cc: &str| {
            plan_store(
                &Method::GET,
                &request,
                StatusCode::OK,
                &headers(&[("cache-control", cc)]),
                at(0),
                at(0),
                &settings(),
            )
        };
        assert_eq!(store("max-age=60"), Err(NotStored::Authorization));
        assert!(store("max-age=60, public").is_ok());
        assert!(store("s-maxage=60").is_ok());
    }

    #[test]
    fn no_heuristic_freshness_for_requests_with_credentials() {
        let d = date(1000);
        let lm = date(0);
        let response = headers(&[
            ("date", &d),
            ("last-modified", &lm),
            ("cache-control", "public"),
        ]);
        let store = |request: &[(&str, &str)], allow: bool| {
            let settings = Settings {
                heuristic_with_credentials: allow,
                ..settings()
            };
            plan_store(
                &Method::GET,
                &headers(request),
                StatusCode::OK,
                &response,
                at(1000),
                at(1000),
                &settings,
            )
        };
        assert_eq!(
            store(&[("cookie", "session=alice")], false),
            Err(NotStored::Credentials)
        );
        assert_eq!(
            store(&[("authorization", "Bearer a")], false),
            Err(NotStored::Credentials)
        );
        assert_eq!(
            store(&[("cookie", "session=alice")], true).unwrap().ttl,
            Duration::from_secs(100)
        );
        assert_eq!(store(&[], false).unwrap().ttl, Duration::from_secs(100));
        let explicit = headers(&[("cache-control", "max-age=60")]);
        let with_cookie = plan_store(
            &Method::GET,
            &headers(&[("cookie", "a=b")]),
            StatusCode::OK,
            &explicit,
            at(0),
            at(0),
            &settings(),
        );
        assert_eq!(with_cookie.unwrap().ttl, Duration::from_secs(60));
    }

    #[test]
    fn heuristic_freshness_only_for_cacheable_statuses() {
        let d = date(1000);
        let lm = date(0);
        assert_eq!(
            plan(200, &[("date", &d), ("last-modified", &lm)])
                .unwrap()
                .ttl,
            Duration::from_secs(100)
        );
        assert_eq!(
            plan(201, &[("date", &d), ("last-modified", &lm)]),
            Err(NotStored::Status)
        );
        assert_eq!(plan(200, &[]), Err(NotStored::Useless));
    }

    #[test]
    fn initial_age_takes_the_larger_of_apparent_and_corrected_age() {
        let response = headers(&[("date", &date(90)), ("age", "30")]);
        assert_eq!(
            initial_age(&response, at(98), at(100)),
            Duration::from_secs(32)
        );
        let response = headers(&[("date", &date(50))]);
        assert_eq!(
            initial_age(&response, at(100), at(100)),
            Duration::from_secs(50)
        );
    }

    fn age(lines: &[&str]) -> Option<u64> {
        let lines: Vec<(&str, &str)> = lines.iter().map(|line| ("age", *line)).collect();
        age_value(&headers(&lines)).map(|age| age.as_secs())
    }

    #[test]
    fn the_first_member_of_an_age_list_counts_across_lines() {
        assert_eq!(age(&[]), None);
        assert_eq!(age(&["7200"]), Some(7200));
        assert_eq!(age(&["0, 7200"]), Some(0));
        assert_eq!(age(&["7200, 0"]), Some(7200));
        assert_eq!(age(&["0", "7200"]), Some(0));
        assert_eq!(age(&["7200", "0"]), Some(7200));
        assert_eq!(age(&["3600", "3600"]), Some(3600));
        assert_eq!(age(&[" , 5"]), Some(5));
        assert_eq!(age(&["99999999999999999999"]), Some(2_147_483_648));
        assert_eq!(age(&["7200;foo=bar"]), Some(7200));
        assert_eq!(age(&["7200 ;foo=111"]), Some(7200));
    }

    #[test]
    fn an_age_that_is_not_delta_seconds_is_ignored() {
        for invalid in ["abc", "-7200", "7200.0", "", "0x10", ";7200", "a;7200"] {
            assert_eq!(age(&[invalid]), None, "{invalid:?}");
        }
        // Ignored, not "stale on arrival": the response is as fresh as its Date says.
        let d = date(100);
        let stored = plan(
            200,
            &[
                ("cache-control", "max-age=3600"),
                ("age", "abc"),
                ("date", &d),
            ],
        )
        .unwrap();
        assert_eq!(stored.ttl, Duration::from_secs(3600));
        assert_eq!(stored.initial_age, Duration::ZERO);
        let old = plan(
            200,
            &[
                ("cache-control", "max-age=3600"),
                ("age", "7200, 0"),
                ("date", &d),
            ],
        )
        .unwrap();
        assert_eq!(old.initial_age, Duration::from_secs(7200));
    }

    #[test]
    fn expires_in_obsolete_formats_and_any_case_gives_freshness() {
        let d = "Thu, 18 Aug 2050 01:01:18 GMT";
        let ttl = |expires: &str| {
            plan(200, &[("expires", expires), ("date", d), ("etag", "\"e\"")]).map(|plan| plan.ttl)
        };
        let hour = Ok(Duration::from_secs(3600));
        for expires in [
            "Thu, 18 Aug 2050 02:01:18 GMT",
            "THU, 18 AUG 2050 02:01:18 gMT",
            "Thursday, 18-Aug-50 02:01:18 GMT",
            "Mon Aug 18 02:01:18 2050",
        ] {
            assert_eq!(ttl(expires), hour, "{expires:?}");
        }
        for invalid in [
            "Thu, 18 Aug 2050 02:01:18 UTC",
            "Thu, 18  Aug  2050 02:01:18 GMT",
            "Thu, 18 Aug 2050 2:01:18 GMT",
        ] {
            assert_eq!(ttl(invalid), Ok(Duration::ZERO), "{invalid:?}");
        }
    }

    #[test]
    fn a_targeted_field_replaces_cache_control_and_expires() {
        let d = date(100);
        let past = date(0);
        let ttl = |response: &[(&str, &str)]| plan(200, response).map(|plan| plan.ttl);
        assert_eq!(
            ttl(&[
                ("cache-control", "max-age=1"),
                ("cdn-cache-control", "max-age=3600")
            ]),
            Ok(Duration::from_secs(3600))
        );
        assert_eq!(
            ttl(&[
                ("cache-control", "max-age=3600"),
                ("cdn-cache-control", "max-age=1")
            ]),
            Ok(Duration::from_secs(1))
        );
        assert_eq!(
            ttl(&[
                ("cache-control", "no-store"),
                ("cdn-cache-control", "max-age=60")
            ]),
            Ok(Duration::from_secs(60))
        );
        assert_eq!(
            ttl(&[
                ("cdn-cache-control", "max-age=3600"),
                ("expires", &past),
                ("date", &d)
            ]),
            Ok(Duration::from_secs(3600))
        );
        for forbidding in ["no-store", "private"] {
            assert!(
                plan(
                    200,
                    &[
                        ("cache-control", "max-age=3600"),
                        ("cdn-cache-control", forbidding)
                    ]
                )
                .is_err(),
                "{forbidding}"
            );
        }
        // Without freshness of its own, Expires does not lend it any.
        assert_eq!(
            ttl(&[
                ("cdn-cache-control", "public"),
                ("expires", &date(1000)),
                ("date", &d)
            ]),
            Err(NotStored::Useless)
        );
    }

    #[test]
    fn this_caches_own_field_wins_and_an_invalid_one_is_skipped() {
        let plan_of = |response: &[(&str, &str)]| plan(200, response).unwrap();
        let own = plan_of(&[
            ("cdn-cache-control", "max-age=60"),
            ("tc-cache-control", "max-age=5"),
        ]);
        assert_eq!(own.ttl, Duration::from_secs(5));
        assert_eq!(own.targeted, Some(TARGETS[0].clone()));
        let fallback = plan_of(&[
            ("tc-cache-control", "max-age=5, &&&"),
            ("cdn-cache-control", "max-age=60"),
        ]);
        assert_eq!(fallback.ttl, Duration::from_secs(60));
        assert_eq!(fallback.targeted, Some(TARGETS[1].clone()));
        for invalid in [
            "max-age=\"60\"",
            "max-age=-1",
            "max-age=60, &&&",
            "",
            "no-store=?0",
        ] {
            let untargeted = plan_of(&[
                ("cdn-cache-control", invalid),
                ("cache-control", "max-age=7"),
            ]);
            assert_eq!(untargeted.ttl, Duration::from_secs(7), "{invalid:?}");
            assert_eq!(untargeted.targeted, None);
        }
        // Fields not on the target list change nothing.
        let other = plan_of(&[
            ("other-cache-control", "no-store"),
            ("cache-control", "max-age=7"),
        ]);
        assert_eq!(other.ttl, Duration::from_secs(7));
    }

    #[test]
    fn a_targeted_field_wins_over_surrogate_control() {
        let stored = plan(
            200,
            &[
                ("surrogate-control", "max-age=600;tc"),
                ("cdn-cache-control", "max-age=60"),
            ],
        );
        assert_eq!(stored.map(|plan| plan.ttl), Ok(Duration::from_secs(60)));
        let stored = plan(
            200,
            &[
                ("surrogate-control", "no-store"),
                ("cdn-cache-control", "max-age=60"),
            ],
        );
        assert!(stored.is_ok());
    }

    #[test]
    fn a_stored_response_is_reused_under_the_field_it_was_stored_under() {
        let mut stored = headers(&[
            ("cache-control", "max-age=3600"),
            (
                "cdn-cache-control",
                "no-cache, must-revalidate, stale-while-revalidate=60",
            ),
        ]);
        let age = Duration::from_secs(1);
        let ttl = Duration::from_secs(100);
        let max_stale = headers(&[("cache-control", "max-stale")]);
        let defaults = StaleWindows {
            while_revalidate: Duration::from_secs(5),
            if_error: Duration::from_secs(5),
            if_unreachable: Duration::from_secs(5),
        };
        // Unmarked (stored before, or under Cache-Control): Cache-Control's directives.
        assert_eq!(reuse(&HeaderMap::new(), &stored, age, ttl), Reuse::Fresh);
        stored.insert(
            TARGETED.clone(),
            http::HeaderValue::from_static("cdn-cache-control"),
        );
        assert_eq!(
            reuse(&HeaderMap::new(), &stored, age, ttl),
            Reuse::ValidateStale
        );
        assert_eq!(
            reuse(&max_stale, &stored, Duration::from_secs(200), ttl),
            Reuse::ValidateStale
        );
        assert_eq!(
            stale_windows(&stored, &HeaderMap::new(), defaults),
            StaleWindows::default()
        );
    }

    #[test]
    fn surrogate_control_overrides_cache_control() {
        let ttl = |response: &[(&str, &str)]| plan(200, response).map(|plan| plan.ttl);
        assert_eq!(
            ttl(&[
                ("cache-control", "no-store"),
                ("surrogate-control", "max-age=60;tc")
            ]),
            Ok(Duration::from_secs(60))
        );
        assert_eq!(
            ttl(&[
                ("cache-control", "max-age=60"),
                ("surrogate-control", "no-store")
            ]),
            Err(NotStored::NoStore)
        );
        assert_eq!(
            ttl(&[
                ("cache-control", "max-age=60"),
                ("surrogate-control", "max-age=1")
            ]),
            Ok(Duration::from_secs(1))
        );
    }

    #[test]
    fn must_understand_stores_only_understood_statuses() {
        let cc = [("cache-control", "max-age=60, must-understand, no-store")];
        assert_eq!(plan(599, &cc), Err(NotStored::Status));
        assert!(plan(200, &cc).is_ok());
    }

    #[test]
    fn stale_windows_come_from_directives_or_defaults_unless_forbidden() {
        let defaults = StaleWindows {
            while_revalidate: Duration::from_secs(5),
            if_error: Duration::from_secs(7),
            if_unreachable: Duration::from_secs(9),
        };
        let windows = |stored: &[(&str, &str)], request: &[(&str, &str)]| {
            stale_windows(&headers(stored), &headers(request), defaults)
        };
        assert_eq!(windows(&[("cache-control", "max-age=1")], &[]), defaults);
        assert_eq!(
            windows(
                &[(
                    "cache-control",
                    "max-age=1, stale-while-revalidate=30, stale-if-error=60"
                )],
                &[]
            ),
            StaleWindows {
                while_revalidate: Duration::from_secs(30),
                if_error: Duration::from_secs(60),
                if_unreachable: Duration::from_secs(9),
            }
        );
        assert_eq!(
            windows(
                &[("cache-control", "max-age=1")],
                &[("cache-control", "stale-if-error=90")]
            )
            .if_error,
            Duration::from_secs(90)
        );
        for forbidding in [
            "must-revalidate",
            "proxy-revalidate",
            "s-maxage=1",
            "no-cache",
        ] {
            let stored = [("cache-control", forbidding)];
            assert_eq!(
                windows(&stored, &[]),
                StaleWindows::default(),
                "{forbidding}"
            );
        }
    }

    #[test]
    fn stale_windows_keep_entries_without_validators() {
        let stored = plan(200, &[("cache-control", "max-age=0, stale-if-error=60")]).unwrap();
        assert_eq!(stored.keep_stale, Duration::from_secs(60));
    }

    #[test]
    fn entries_are_kept_for_the_unreachable_window_but_not_stored_for_it() {
        let settings = Settings {
            default_stale: StaleWindows {
                if_unreachable: Duration::from_secs(10),
                ..StaleWindows::default()
            },
            ..settings()
        };
        let store = |cache_control: &str| {
            plan_store(
                &Method::GET,
                &HeaderMap::new(),
                StatusCode::OK,
                &headers(&[("cache-control", cache_control)]),
                at(0),
                at(0),
                &settings,
            )
        };
        assert_eq!(
            store("max-age=60").map(|plan| plan.keep_stale),
            Ok(Duration::from_secs(10))
        );
        assert_eq!(
            store("max-age=60, must-revalidate").map(|plan| plan.keep_stale),
            Ok(Duration::ZERO)
        );
        assert_eq!(store("max-age=0"), Err(NotStored::Useless));
    }

    #[test]
    fn request_directives_force_validation() {
        let stored = headers(&[("cache-control", "max-age=100")]);
        let age = Duration::from_secs(10);
        let ttl = Duration::from_secs(100);
        assert_eq!(reuse(&HeaderMap::new(), &stored, age, ttl), Reuse::Fresh);
        assert_eq!(
            reuse(
                &headers(&[("cache-control", "no-cache")]),
                &stored,
                age,
                ttl
            ),
            Reuse::ValidateRequested
        );
        assert_eq!(
            reuse(
                &headers(&[("cache-control", "max-age=0")]),
                &stored,
                age,
                ttl
            ),
            Reuse::ValidateRequested
        );
        assert_eq!(
            reuse(&headers(&[("pragma", "no-cache")]), &stored, age, ttl),
            Reuse::ValidateRequested
        );
        assert_eq!(
            reuse(
                &headers(&[("cache-control", "min-fresh=95")]),
                &stored,
                age,
                ttl
            ),
            Reuse::ValidateRequested
        );
        assert_eq!(
            reuse(&headers(&[("authorization", "x")]), &stored, age, ttl),
            Reuse::Unusable
        );
    }

    #[test]
    fn stale_needs_max_stale_and_no_must_revalidate() {
        let age = Duration::from_secs(110);
        let ttl = Duration::from_secs(100);
        let plain = headers(&[("cache-control", "max-age=100")]);
        let strict = headers(&[("cache-control", "max-age=100, must-revalidate")]);
        let max_stale = headers(&[("cache-control", "max-stale=20")]);
        assert_eq!(
            reuse(&HeaderMap::new(), &plain, age, ttl),
            Reuse::ValidateStale
        );
        assert_eq!(reuse(&max_stale, &plain, age, ttl), Reuse::Fresh);
        assert_eq!(reuse(&max_stale, &strict, age, ttl), Reuse::ValidateStale);
    }

    fn evaluate(request: &[(&str, &str)], status: u16, stored: &HeaderMap) -> Precondition {
        let status = StatusCode::from_u16(status).unwrap();
        preconditions(&headers(request), status, stored)
    }

    #[test]
    fn conditional_requests_compare_weakly() {
        let stored = headers(&[("etag", "W/\"v1\""), ("last-modified", &date(0))]);
        let not_modified =
            |request: &[(&str, &str)]| evaluate(request, 200, &stored) == Precondition::NotModified;
        assert!(not_modified(&[("if-none-match", "\"x\", \"v1\"")]));
        assert!(not_modified(&[("if-none-match", "*")]));
        assert!(!not_modified(&[("if-none-match", "\"v2\"")]));
        assert!(not_modified(&[("if-modified-since", &date(5))]));
        assert!(!not_modified(&[
            ("if-none-match", "\"v2\""),
            ("if-modified-since", &date(5))
        ]));
    }

    #[test]
    fn preconditions_are_evaluated_in_rfc_9110_order_for_2xx_only() {
        let stored = headers(&[("etag", "\"v1\""), ("last-modified", &date(10))]);
        let proceed = Precondition::Proceed { ranges: true };
        for (request, expected) in [
            (&[("if-match", "\"v1\"")][..], proceed),
            (&[("if-match", "W/\"v1\"")], Precondition::Failed),
            (&[("if-match", "*")], proceed),
            (&[("if-unmodified-since", &date(5))], Precondition::Failed),
            (&[("if-unmodified-since", &date(10))], proceed),
            (
                &[("if-match", "\"v1\""), ("if-unmodified-since", &date(5))],
                proceed,
            ),
            (
                &[("if-match", "\"v2\""), ("if-none-match", "\"v1\"")],
                Precondition::Failed,
            ),
            (
                &[("if-unmodified-since", &date(5)), ("if-none-match", "*")],
                Precondition::Failed,
            ),
            (
                &[
                    ("if-none-match", "\"v2\""),
                    ("if-modified-since", &date(20)),
                ],
                proceed,
            ),
            (&[("if-modified-since", "not a date")], proceed),
        ] {
            assert_eq!(evaluate(request, 200, &stored), expected, "{request:?}");
        }
        for status in [301, 404, 500] {
            let request = &[("if-none-match", "*"), ("if-match", "\"v2\"")];
            assert_eq!(evaluate(request, status, &stored), proceed, "{status}");
        }
        let no_etag = headers(&[("date", &date(10))]);
        assert_eq!(
            evaluate(&[("if-none-match", "*")], 200, &no_etag),
            Precondition::NotModified,
            "any current representation matches *"
        );
        assert_eq!(
            evaluate(&[("if-match", "\"v1\"")], 200, &no_etag),
            Precondition::Failed
        );
    }

    #[test]
    fn if_range_holds_for_a_strong_tag_or_the_exact_last_modified() {
        let stored = headers(&[("etag", "\"v1\""), ("last-modified", &date(10))]);
        for (if_range, ranges) in [
            ("\"v1\"", true),
            ("W/\"v1\"", false),
            ("\"v2\"", false),
            (date(10).as_str(), true),
            (date(11).as_str(), false),
            ("garbage", false),
        ] {
            assert_eq!(
                evaluate(
                    &[("range", "bytes=0-1"), ("if-range", if_range)],
                    200,
                    &stored
                ),
                Precondition::Proceed { ranges },
                "{if_range}"
            );
        }
    }

    #[test]
    fn a_412_is_never_stored() {
        assert_eq!(
            plan(412, &[("cache-control", "public, max-age=300")]),
            Err(NotStored::Status)
        );
    }

    #[test]
    fn a_304_updates_headers_but_not_the_body_description() {
        let mut stored = headers(&[
            ("content-length", "10"),
            ("etag", "\"a\""),
            ("x-old", "1"),
            ("cache-control", "max-age=1"),
        ]);
        update_headers(
            &mut stored,
            &headers(&[
                ("content-length", "0"),
                ("cache-control", "max-age=60"),
                ("connection", "x-hop"),
                ("x-hop", "1"),
            ]),
        );
        assert_eq!(stored.get("content-length").unwrap(), "10");
        assert_eq!(stored.get("cache-control").unwrap(), "max-age=60");
        assert_eq!(stored.get("x-old").unwrap(), "1");
        assert!(stored.get("x-hop").is_none());
    }
}
