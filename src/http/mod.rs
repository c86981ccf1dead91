//! HTTP caching pieces used by [`CacheService`](crate::CacheService): keys, `Cache-Control`,
//! the RFC 9111 policy, `Cache-Status`, `Vary` variants, route rules, and response building.

pub(crate) mod admit;
pub(crate) mod buffer;
pub(crate) mod cache_control;
pub(crate) mod cache_status;
pub(crate) mod coding;
pub(crate) mod deadline;
pub(crate) mod entries;
pub(crate) mod exchange;
pub(crate) mod forwarding;
pub(crate) mod key;
pub(crate) mod pass;
pub(crate) mod policy;
pub(crate) mod purge;
pub(crate) mod range;
pub(crate) mod read;
pub(crate) mod response;
pub(crate) mod routes;
pub(crate) mod state;
pub(crate) mod target;
pub(crate) mod variants;
pub(crate) mod write;
pub(crate) mod write_behind;

pub(crate) use routes::Routes;

/// A header map from `(name, value)` pairs, in order: the fixture the unit tests share.
#[cfg(test)]
pub(crate) fn test_headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
    let mut map = http::HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            http::HeaderValue::from_str(value).unwrap(),
        );
    }
    map
}
