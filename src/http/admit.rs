//! Admission: the one place where a response from the origin becomes an entry, or a typed
//! reason why not ([`NotStored`], counted in `Stats::not_stored` and by reason in
//! `tiered_cache_not_stored_total`, and traced at debug level with the key).
//!
//! A response is judged twice: on its header fields ([`admit`]: the RFC 9111 policy, the
//! declared size), and once its body has passed through ([`Admission::entry`]: the actual size,
//! whether it is the length `Content-Length` declared and the range `Content-Range` names).
//! Misses, revalidations, range answers and write-through all use it.

use std::sync::Arc;

use bytes::Bytes;
use http::header::CONTENT_RANGE;
use http::{HeaderMap, Method, StatusCode};

use super::policy::{self, StorePlan};
use super::range::Held;
use super::routes::Rule;
use super::state::{Received, State, Times};
use crate::framing;
use crate::stats::Counter;
use crate::store::CachedEntry;

/// Why a response is not stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NotStored {
    /// The RFC 9111 policy (or this cache's stricter rules) refuses it.
    Policy(policy::NotStored),
    /// Its body is (or declares to be) larger than `http.max_entry_size`.
    TooLarge,
    /// Its body is not the length its `Content-Length` declares.
    Framing,
    /// Its body failed, or the client went away before it ended.
    Incomplete,
    /// A `206` whose body is not the range its `Content-Range` names.
    PartMismatch,
    /// The resource has `http.max_variants` variants already.
    Variants,
    /// An invalidation of the key, a tag, a prefix or everything came after the fill began.
    Outdated,
}

impl NotStored {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Policy(reason) => reason.as_str(),
            Self::TooLarge => "too_large",
            Self::Framing => "framing",
            Self::Incomplete => "incomplete",
            Self::PartMismatch => "part_mismatch",
            Self::Variants => "variants",
            Self::Outdated => "outdated",
        }
    }
}

/// What a response to be stored is.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Representation {
    /// The whole resource.
    Complete,
    /// A `206` holding one range of it (RFC 9111 §3.3).
    Partial(Held),
}

impl Representation {
    /// The status whose storage rules apply: a part is judged as the complete `200` would be
    /// (RFC 9111 §3.3; 206 is heuristically cacheable too, RFC 9110 §15.1).
    fn judged_as(self, status: StatusCode) -> StatusCode {
        match self {
            Self::Complete => status,
            Self::Partial(_) => StatusCode::OK,
        }
    }

    /// Whether a body of `len` bytes is what this representation says it is.
    fn fits(self, len: usize) -> bool {
        match self {
            Self::Complete => true,
            Self::Partial(held) => held.len() == len,
        }
    }
}

/// A response whose header fields passed: it becomes an entry once its body is in.
pub(crate) struct Admission {
    pub(crate) state: Arc<State>,
    pub(crate) rule: Arc<Rule>,
    /// The key it is stored for, in traces.
    pub(crate) key: String,
    /// The status stored (write-through stores a 201 as the resource's 200).
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) plan: StorePlan,
    pub(crate) times: Times,
    pub(crate) representation: Representation,
}

/// The response to be judged: its header fields, and when it was asked for and came.
pub(crate) struct Response<'a> {
    pub(crate) headers: &'a HeaderMap,
    /// The exact length its body announces, if it does.
    pub(crate) declared_len: Option<u64>,
    pub(crate) times: Times,
}

/// Judges `response` to a GET with `request` headers on `rule`'s route, stored as `status`
/// (the response's own, unless write-through stores it as another).
#[allow(clippy::too_many_arguments)]
pub(crate) fn admit(
    state: &Arc<State>,
    rule: &Arc<Rule>,
    key: &str,
    request: &HeaderMap,
    response: Response<'_>,
    stored_as: StatusCode,
    representation: Representation,
) -> Result<Admission, NotStored> {
    let plan = policy::plan_store(
        &Method::GET,
        request,
        representation.judged_as(stored_as),
        response.headers,
        response.times.request,
        response.times.response,
        &state.settings(rule),
    )
    .map_err(|reason| refused(state, key, NotStored::Policy(reason)))?;
    if let Some(length) = response.declared_len {
        if length > state.max_entry_size {
            return Err(refused(state, key, NotStored::TooLarge));
        }
        if !representation.fits(usize::try_from(length).unwrap_or(usize::MAX)) {
            return Err(refused(state, key, NotStored::PartMismatch));
        }
    }
    Ok(Admission {
        state: Arc::clone(state),
        rule: Arc::clone(rule),
        key: key.to_owned(),
        status: stored_as,
        headers: response.headers.clone(),
        plan,
        times: response.times,
        representation,
    })
}

impl Admission {
    /// The entry for the body that passed through (`None`: it did not pass whole).
    pub(crate) fn entry(&self, body: Option<(Bytes, HeaderMap)>) -> Result<CachedEntry, NotStored> {
        let Some((data, trailers)) = body else {
            return Err(self.refused(NotStored::Incomplete));
        };
        if data.len() as u64 > self.state.max_entry_size {
            return Err(self.refused(NotStored::TooLarge));
        }
        if !framing::declares(&self.headers, data.len()) {
            return Err(self.refused(NotStored::Framing));
        }
        if !self.representation.fits(data.len()) {
            return Err(self.refused(NotStored::PartMismatch));
        }
        let mut received = Received {
            status: self.status,
            headers: self.headers.clone(),
            body: data,
            trailers,
        };
        if matches!(self.representation, Representation::Partial(held) if held.is_whole()) {
            // All of it (a `bytes=0-` answer): stored as the complete response (§3.4).
            received.status = StatusCode::OK;
            received.headers.remove(CONTENT_RANGE);
        }
        Ok(self
            .state
            .entry(received, &self.plan, &self.rule, self.times))
    }

    pub(crate) fn refused(&self, reason: NotStored) -> NotStored {
        refused(&self.state, &self.key, reason)
    }
}

/// Counts and traces a response not stored.
pub(crate) fn refused(state: &State, key: &str, reason: NotStored) -> NotStored {
    state.cache.count(Counter::NotStored);
    crate::metrics::not_stored(reason.as_str());
    tracing::debug!(key, reason = reason.as_str(), "response not stored");
    reason
}
