//! What every clone of a layer and its services share: the cache and the settings taken from
//! the configuration, with the helpers that apply them to responses.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{AGE, DATE};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};

use super::cache_status::{Status, CACHE_STATUS};
use super::pass::Passes;
use super::policy::{self, Settings, StaleWindows, StorePlan};
use super::routes::{Routes, Rule};
use super::variants::VARIANTS;
use crate::body::CacheBody;
use crate::config::{CacheConfig, ForwardedHeaders, WriteBehindConfig};
use crate::store::coalesce::Coalescer;
use crate::store::{CachedEntry, TieredCache};
use crate::write_behind::{DurableTarget, WriteBehind};
use crate::Error;

use super::entries::Fetched;

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
    pub(crate) flights: Arc<Coalescer<Fetched>>,
    /// Longest wait for another request's fill of the same key (`http.coalesce_wait`).
    pub(crate) coalesce_wait: Duration,
    /// Keys whose last response could not be stored (`http.pass_ttl`).
    pub(crate) passes: Passes,
    /// `http.refresh_ahead`: the fraction of an entry's freshness after which a hit refreshes
    /// it (0: off).
    pub(crate) refresh_ahead: f64,
    pub(crate) tag_header: HeaderName,
    pub(crate) surrogate_key_header: HeaderName,
    pub(crate) invalidate_header: HeaderName,
    pub(crate) strip_tag_headers: bool,
    /// `tags.max_header_bytes`: what an entry takes of each tag field.
    pub(crate) max_tag_header_bytes: usize,
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
            flights: Arc::new(Coalescer::new()),
            coalesce_wait: config.http.coalesce_wait,
            passes: Passes::new(config.http.pass_ttl),
            refresh_ahead: config.http.refresh_ahead,
            tag_header: header(&config.tags.tag_header)?,
            surrogate_key_header: header(&config.tags.surrogate_key_header)?,
            invalidate_header: header(&config.tags.invalidate_header)?,
            strip_tag_headers: config.tags.strip_headers,
            max_tag_header_bytes: usize::try_from(config.tags.max_header_bytes)
                .unwrap_or(usize::MAX),
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

    /// Whether a fresh `entry` of `age` is due for refresh-ahead.
    pub(crate) fn refresh_due(&self, entry: &CachedEntry, age: Duration) -> bool {
        self.refresh_ahead > 0.0
            && age.as_secs_f64() >= self.refresh_ahead * entry.ttl().as_secs_f64()
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

    /// An entry's tags, in order: the route's, `Cache-Tag` (comma-separated), `Surrogate-Key`
    /// (space-separated). Of each field only the tags entirely within its first
    /// `tags.max_header_bytes` are taken (the others are counted as dropped); duplicates and the
    /// bounds on number and length are the cache's, applied where every entry is stored.
    pub(crate) fn tags_of(&self, headers: &HeaderMap, rule: &Rule) -> Vec<String> {
        let mut tags = rule.tags.clone();
        for (name, separator) in [
            (&self.tag_header, COMMA),
            (&self.surrogate_key_header, char::is_whitespace as Separator),
        ] {
            let field = Field::read(headers, name, separator, self.max_tag_header_bytes);
            self.cache
                .tags_dropped(field.beyond, name.as_str(), "tags.max_header_bytes");
            tags.extend(field.within);
        }
        tags
    }

    /// The tags named in the `Surrogate-Key` field (space-separated) of a `PURGE` request. All
    /// of them: an invalidation left out would serve stale entries.
    pub(crate) fn surrogate_keys(&self, headers: &HeaderMap) -> Vec<String> {
        list(headers, &self.surrogate_key_header, char::is_whitespace)
    }

    /// The tags a response to a mutating request asks to invalidate (comma-separated); all of
    /// them, as for `PURGE`.
    pub(crate) fn tags_to_invalidate(&self, headers: &HeaderMap) -> Vec<String> {
        list(headers, &self.invalidate_header, COMMA)
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
    }
}

static SURROGATE_CAPABILITY: HeaderName = HeaderName::from_static("surrogate-capability");

type Separator = fn(char) -> bool;

const COMMA: Separator = |c| c == ',';

/// Every item of the `name` fields.
fn list(headers: &HeaderMap, name: &HeaderName, separator: Separator) -> Vec<String> {
    Field::read(headers, name, separator, usize::MAX).within
}

/// The items of a list-valued field, split at `separator` and trimmed, blanks left out.
#[derive(Debug, Default, PartialEq, Eq)]
struct Field {
    /// Those entirely within the first `budget` bytes of the field's lines (joined by one byte),
    /// in order.
    within: Vec<String>,
    /// How many lie (partly) beyond: counted, not copied.
    beyond: u64,
}

impl Field {
    fn read(headers: &HeaderMap, name: &HeaderName, separator: Separator, budget: usize) -> Self {
        let mut field = Self::default();
        // `to_str` admits visible ASCII only, so every separator is one byte.
        let mut position = 0usize;
        for value in headers.get_all(name).iter().filter_map(|v| v.to_str().ok()) {
            for item in value.split(separator) {
                let end = position.saturating_add(item.len());
                position = end.saturating_add(1);
                let item = item.trim();
                if item.is_empty() {
                    continue;
                }
                if end <= budget {
                    field.within.push(item.to_owned());
                } else {
                    field.beyond += 1;
                }
            }
        }
        field
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_tags_entirely_within_the_budget_are_taken() {
        let name = HeaderName::from_static("cache-tag");
        let mut headers = HeaderMap::new();
        headers.append(&name, HeaderValue::from_static("aa, bb,,cc"));
        headers.append(&name, HeaderValue::from_static("dd"));
        // The lines joined by one byte: "bb" ends at byte 6, "cc" at 10, "dd" at 13.
        let field = Field::read(&headers, &name, COMMA, 9);
        let within = vec!["aa".to_owned(), "bb".to_owned()];
        assert_eq!(field, Field { within, beyond: 2 });
        assert_eq!(Field::read(&headers, &name, COMMA, 13).beyond, 0);
    }
}
