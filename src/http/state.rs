//! What every clone of a layer and its services share: the cache and the settings taken from
//! the configuration, with the helpers that apply them to responses.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{AGE, DATE};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};

use super::cache_status::{Status, CACHE_STATUS};
use super::policy::{self, Settings, StaleWindows, StorePlan};
use super::routes::{Routes, Rule};
use super::variants::VARIANTS;
use crate::body::CacheBody;
use crate::config::{CacheConfig, ForwardedHeaders, WriteBehindConfig};
use crate::store::coalesce::Coalescer;
use crate::store::{CachedEntry, TieredCache};
use crate::write_behind::{DurableTarget, WriteBehind};
use crate::Error;

use super::exchange::Fetched;

pub(crate) struct State {
    pub(crate) cache: TieredCache,
    pub(crate) cache_name: String,
    /// `Cache-Status` of a fresh memory hit, rendered once.
    pub(crate) memory_hit_status: HeaderValue,
    pub(crate) routes: Routes,
    pub(crate) max_entry_size: u64,
    pub(crate) max_variants: u32,
    pub(crate) default_ttl: Duration,
    pub(crate) keep_stale: Duration,
    pub(crate) default_stale: StaleWindows,
    /// The targeted cache-control fields followed (RFC 9213), in precedence order.
    pub(crate) targeted_fields: Vec<HeaderName>,
    pub(crate) origin_timeout: Option<Duration>,
    pub(crate) flights: Coalescer<Fetched>,
    pub(crate) tag_header: HeaderName,
    pub(crate) surrogate_key_header: HeaderName,
    pub(crate) invalidate_header: HeaderName,
    pub(crate) strip_tag_headers: bool,
    pub(crate) purge_token: Option<String>,
    pub(crate) store_set_cookie: bool,
    pub(crate) heuristic_with_credentials: bool,
    pub(crate) forwarded_headers: ForwardedHeaders,
    /// `Surrogate-Capability: <name>="Surrogate/1.0"`, announced on origin requests so the
    /// origin may target `Surrogate-Control` at this cache.
    pub(crate) surrogate_capability: HeaderValue,
    /// The write-behind queue, once a replay target is given.
    pub(crate) write_behind: OnceLock<WriteBehind>,
    pub(crate) write_behind_config: WriteBehindConfig,
    /// Where a durable write-behind queue lives.
    pub(crate) durable_target: Option<DurableTarget>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("State")
            .field("cache", &self.cache)
            .field("cache_name", &self.cache_name)
            .finish_non_exhaustive()
    }
}

impl State {
    pub(crate) fn new(cache: TieredCache, config: &CacheConfig) -> Result<Self, Error> {
        config.validate()?;
        let header = |name: &str| {
            HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                crate::ConfigError::invalid("tags", format!("invalid header name {name:?}"))
            })
        };
        let memory_hit_status = super::cache_status::Status::hit(crate::store::Source::Memory)
            .value(&config.http.status_header)
            .map_err(|_| {
                crate::ConfigError::invalid("http.status_header", "not a valid header value")
            })?;
        Ok(Self {
            cache,
            cache_name: config.http.status_header.clone(),
            memory_hit_status,
            routes: Routes::new(config)?,
            max_entry_size: config.http.max_entry_size,
            max_variants: config.http.max_variants,
            default_ttl: config.http.default_ttl,
            keep_stale: config.http.keep_stale,
            default_stale: StaleWindows {
                while_revalidate: config.http.stale_while_revalidate,
                if_error: config.http.stale_if_error,
                if_unreachable: config.http.stale_if_unreachable,
            },
            targeted_fields: config
                .http
                .effective_targeted_fields()
                .iter()
                .map(|field| HeaderName::from_bytes(field.as_bytes()))
                .collect::<Result<_, _>>()
                .map_err(|_| {
                    crate::ConfigError::invalid("http.targeted_fields", "not a header name")
                })?,
            origin_timeout: Some(config.http.origin_timeout).filter(|timeout| !timeout.is_zero()),
            flights: Coalescer::new(),
            tag_header: header(&config.tags.tag_header)?,
            surrogate_key_header: header(&config.tags.surrogate_key_header)?,
            invalidate_header: header(&config.tags.invalidate_header)?,
            strip_tag_headers: config.tags.strip_headers,
            purge_token: config.purge.token.clone(),
            store_set_cookie: config.http.store_set_cookie,
            heuristic_with_credentials: config.http.heuristic_with_credentials,
            forwarded_headers: config.http.forwarded_headers,
            write_behind: OnceLock::new(),
            write_behind_config: config.write_behind.clone(),
            durable_target: config.l2.url.as_ref().map(|url| DurableTarget {
                url: url.clone(),
                prefix: config.l2.prefix.clone(),
                queue: "http".to_owned(),
                timeout: config.l2.timeout,
            }),
            surrogate_capability: HeaderValue::from_str(&format!(
                "{}=\"Surrogate/1.0\"",
                config.http.status_header
            ))
            .map_err(|_| crate::ConfigError::invalid("http.status_header", "not a valid token"))?,
        })
    }

    /// Prepares a request for the origin: announces this cache as a surrogate.
    pub(crate) fn to_origin(&self, headers: &mut HeaderMap) {
        headers.insert(
            SURROGATE_CAPABILITY.clone(),
            self.surrogate_capability.clone(),
        );
    }

    /// The origin's response on its way to the client: tag headers removed (unless configured
    /// otherwise) and this cache's `Cache-Status` appended.
    pub(crate) fn origin_response<B>(
        &self,
        mut parts: http::response::Parts,
        body: CacheBody<B>,
        status: Status,
    ) -> Response<CacheBody<B>>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<crate::body::BoxError>,
    {
        self.strip_tag_headers(&mut parts.headers);
        crate::framing::fit_to_body(
            &mut parts.headers,
            http_body::Body::size_hint(&body).exact(),
        );
        let mut response = Response::from_parts(parts, body);
        status.append_to(&self.cache_name, response.headers_mut());
        response
    }

    pub(crate) fn strip_tag_headers(&self, headers: &mut HeaderMap) {
        if self.strip_tag_headers {
            for name in [
                &self.tag_header,
                &self.surrogate_key_header,
                &self.invalidate_header,
            ] {
                headers.remove(name);
            }
        }
    }

    /// The storage policy's settings on `rule`'s route.
    pub(crate) fn settings(&self, rule: &Rule) -> Settings<'_> {
        Settings {
            default_ttl: self.default_ttl,
            ttl_override: rule.ttl,
            keep_stale: self.keep_stale,
            default_stale: self.default_stale,
            store_set_cookie: self.store_set_cookie,
            heuristic_with_credentials: self.heuristic_with_credentials,
            surrogate_token: &self.cache_name,
            targeted_fields: &self.targeted_fields,
        }
    }

    /// An entry's tags: the route's, `Cache-Tag` (comma-separated) and `Surrogate-Key`
    /// (space-separated).
    pub(crate) fn tags_of(&self, headers: &HeaderMap, rule: &Rule) -> Vec<String> {
        let mut tags = rule.tags.clone();
        tags.extend(list(headers, &self.tag_header, |c| c == ','));
        tags.extend(self.surrogate_keys(headers));
        tags.sort();
        tags.dedup();
        tags
    }

    /// The tags named in the `Surrogate-Key` field (space-separated): a response's, or a
    /// `PURGE` request's.
    pub(crate) fn surrogate_keys(&self, headers: &HeaderMap) -> Vec<String> {
        list(headers, &self.surrogate_key_header, char::is_whitespace)
    }

    /// The tags a response to a mutating request asks to invalidate (comma-separated).
    pub(crate) fn tags_to_invalidate(&self, headers: &HeaderMap) -> Vec<String> {
        list(headers, &self.invalidate_header, |c| c == ',')
    }
}

/// A complete response from the origin (or a stored one with refreshed headers).
pub(crate) struct Received {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    pub(crate) trailers: HeaderMap,
}

/// When the request was sent and its response arrived.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Times {
    pub(crate) request: SystemTime,
    pub(crate) response: SystemTime,
}

impl State {
    /// The entry for a response: its tags taken; connection-specific, internal and tag fields
    /// removed (tag fields unless configured otherwise); the fields the origin asked not to
    /// share (`private="…"`, `no-cache="…"`) removed; the targeted field it is stored under
    /// recorded ([`policy::TARGETED`]); a `Date` added if missing (RFC 9110 §6.6.1); its age
    /// counted from when the origin generated it; obtained when the request was sent (so a tag
    /// invalidation during the request kills it).
    pub(crate) fn entry(
        &self,
        received: Received,
        plan: &StorePlan,
        rule: &Rule,
        times: Times,
    ) -> CachedEntry {
        let Received {
            status,
            mut headers,
            body,
            trailers,
        } = received;
        let tags = self.tags_of(&headers, rule);
        policy::remove_hop_by_hop(&mut headers);
        for name in plan
            .strip
            .iter()
            .chain([&AGE, &CACHE_STATUS, &VARIANTS, &policy::TARGETED])
        {
            headers.remove(name);
        }
        if let Some(field) = &plan.targeted {
            headers.insert(policy::TARGETED.clone(), HeaderValue::from(field.clone()));
        }
        self.strip_tag_headers(&mut headers);
        if !headers.contains_key(DATE) {
            if let Ok(date) = HeaderValue::from_str(&httpdate::fmt_http_date(times.response)) {
                headers.insert(DATE, date);
            }
        }
        let generated = times
            .response
            .checked_sub(plan.initial_age)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        CachedEntry::new(body, plan.ttl)
            .with_status(status)
            .with_headers(headers)
            .with_trailers(trailers)
            .with_tags(tags)
            .with_stale_ttl(plan.keep_stale)
            .with_stored_at(generated)
            .with_inserted_at(times.request)
    }
}

static SURROGATE_CAPABILITY: HeaderName = HeaderName::from_static("surrogate-capability");

fn list(headers: &HeaderMap, name: &HeaderName, separator: fn(char) -> bool) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(separator))
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(str::to_owned)
        .collect()
}
