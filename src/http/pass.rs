//! Hit-for-pass: keys whose last response could not be stored, remembered for `http.pass_ttl`.
//!
//! Most API traffic is not cacheable, and every such request would otherwise pay a shared-tier
//! lookup and wait in line behind another request for the same key, only to be passed on. A
//! key whose response is refused for what the response itself says (`no-store`, `private`,
//! `Set-Cookie`, `Vary: *`, a status that is never stored, no freshness and no validators, a
//! declared size over `http.max_entry_size`) is marked; requests for a marked key go straight to
//! the origin without a lookup and without coalescing, as Varnish's hit-for-pass does. The
//! origin's answer is still judged: a storable one is stored and clears the mark. Reasons that
//! depend on the request (credentials, the method) or on one exchange (a body cut off, a wrong
//! length) mark nothing, and neither does any answer to a request with `Authorization` or
//! `Cookie`: the origin may have answered that client alone (a personal page is `private`), and
//! a client must not be able to switch the cache off for everyone else. A mark is one more
//! thing filled under a ticket: an invalidation of the key after it (a write, a `PURGE`) lifts
//! it, by the same check that decides whether an entry is current.

use std::time::Duration;

use http::{HeaderMap, StatusCode};
use mini_moka::sync::Cache;

use super::admit::NotStored;
use super::policy;
use crate::store::{Ticket, TieredCache};

/// Most keys remembered; the least recently used are forgotten first.
const MAX_KEYS: u64 = 100_000;

pub(crate) struct Passes {
    /// Key → the ticket of the fill whose response marked it; `None` when `http.pass_ttl` is
    /// zero (off).
    keys: Option<Cache<String, Ticket>>,
}

impl Passes {
    pub(crate) fn new(ttl: Duration) -> Self {
        let keys = (!ttl.is_zero()).then(|| {
            Cache::builder()
                .max_capacity(MAX_KEYS)
                .time_to_live(ttl)
                .build()
        });
        Self { keys }
    }

    /// Whether `key` was marked within `http.pass_ttl`, by a fill that no invalidation of the
    /// key has overtaken since (a write or a purge may have made it cacheable: the next request
    /// takes the cached path again). Judged by `cache`'s one record of invalidations, so a
    /// mark also lapses once its ticket is past that record's horizon.
    #[allow(clippy::ptr_arg)] // the map is keyed by `String`
    pub(crate) fn is_marked(&self, key: &String, cache: &TieredCache) -> bool {
        let Some(keys) = &self.keys else {
            return false;
        };
        let Some(ticket) = keys.get(key) else {
            return false;
        };
        if cache.still_current(ticket, key) {
            return true;
        }
        keys.invalidate(key);
        false
    }

    /// Records why `key`'s response, of `status`, to a request with `request` header fields was
    /// not stored: marks it when the response itself says so and is a final answer that is no
    /// server error (a 5xx or a 1xx says nothing about the next response, and a stale entry may
    /// still answer for it), to a request without credentials.
    #[allow(clippy::ptr_arg)] // the map is keyed by `String`: looked up without a copy
    pub(crate) fn refused(
        &self,
        key: &String,
        reason: NotStored,
        status: StatusCode,
        request: &HeaderMap,
        ticket: Ticket,
    ) {
        let lasting = !status.is_server_error() && !status.is_informational();
        let marking = lasting && marks(reason) && !policy::has_credentials(request);
        let Some(keys) = self.keys.as_ref().filter(|_| marking) else {
            return;
        };
        // A marked key keeps its mark's time: it is not written again on every pass (a
        // hit-for-pass answer refused again only costs this lookup), and once `http.pass_ttl`
        // is over, one request looks the key up again and marks it anew.
        if !keys.contains_key(key) {
            keys.insert(key.clone(), ticket);
        }
    }

    /// `key`'s response was stored: it is cacheable again.
    #[allow(clippy::ptr_arg)] // the map is keyed by `String`: looked up without a copy
    pub(crate) fn admitted(&self, key: &String) {
        if let Some(keys) = self.keys.as_ref().filter(|keys| keys.contains_key(key)) {
            keys.invalidate(key);
        }
    }
}

/// Whether `reason` comes from the response itself, so that the next response for the key is
/// likely refused too.
fn marks(reason: NotStored) -> bool {
    use policy::NotStored as Policy;
    match reason {
        NotStored::Policy(
            Policy::Status
            | Policy::NoStore
            | Policy::Private
            | Policy::SetCookie
            | Policy::VaryStar
            | Policy::Useless,
        )
        | NotStored::TooLarge => true,
        NotStored::Policy(Policy::Method | Policy::Authorization | Policy::Credentials)
        | NotStored::Framing
        | NotStored::Incomplete
        | NotStored::PartMismatch
        | NotStored::Variants
        | NotStored::Outdated => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_the_response_says_marks_a_key() {
        let cache = TieredCache::new(crate::CacheConfig::default()).unwrap();
        let ticket = cache.ticket();
        let passes = Passes::new(Duration::from_secs(60));
        let key = "k".to_owned();
        let ok = StatusCode::OK;
        let plain = HeaderMap::new();
        let no_store = NotStored::Policy(policy::NotStored::NoStore);
        passes.refused(
            &key,
            NotStored::Policy(policy::NotStored::Credentials),
            ok,
            &plain,
            ticket,
        );
        assert!(!passes.is_marked(&key, &cache));
        for transient in [StatusCode::BAD_GATEWAY, StatusCode::EARLY_HINTS] {
            let status = NotStored::Policy(policy::NotStored::Status);
            passes.refused(&key, status, transient, &plain, ticket);
            assert!(!passes.is_marked(&key, &cache), "{transient}");
        }
        for credential in [http::header::AUTHORIZATION, http::header::COOKIE] {
            let mut request = HeaderMap::new();
            request.insert(credential.clone(), http::HeaderValue::from_static("x"));
            passes.refused(&key, no_store, ok, &request, ticket);
            assert!(!passes.is_marked(&key, &cache), "{credential}");
        }
        passes.refused(&key, no_store, ok, &plain, ticket);
        assert!(passes.is_marked(&key, &cache));
        passes.admitted(&key);
        assert!(!passes.is_marked(&key, &cache));
        let off = Passes::new(Duration::ZERO);
        off.refused(&key, NotStored::TooLarge, ok, &plain, ticket);
        assert!(!off.is_marked(&key, &cache));
    }

    #[tokio::test]
    async fn an_invalidation_of_the_key_after_its_mark_lifts_it() {
        let cache = TieredCache::new(crate::CacheConfig::default()).unwrap();
        let passes = Passes::new(Duration::from_secs(60));
        let (key, other) = ("k".to_owned(), "other".to_owned());
        let no_store = NotStored::Policy(policy::NotStored::NoStore);
        for marked in [&key, &other] {
            passes.refused(
                marked,
                no_store,
                StatusCode::OK,
                &HeaderMap::new(),
                cache.ticket(),
            );
        }
        cache.invalidate("k").await.unwrap();
        assert!(
            !passes.is_marked(&key, &cache),
            "the write may have made it cacheable"
        );
        assert!(passes.is_marked(&other, &cache));
    }
}
