//! The RFC 9211 `Cache-Status` field this cache appends to every response.

use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;

use crate::store::Source;

/// `Cache-Status` (RFC 9211).
pub(crate) static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// Why a request went forward to the origin (RFC 9211 §2.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Forward {
    /// The cache was not used (method, route rule, request directives).
    Bypass,
    /// Nothing usable was stored.
    Miss,
    /// A stored response existed but was stale, so it was validated.
    Stale,
    /// The request asked for validation (`no-cache`, `max-age=0`, ...).
    Request,
    /// The method must reach the origin (PUT, POST, DELETE, ...).
    Method,
}

impl Forward {
    fn as_str(self) -> &'static str {
        match self {
            Self::Bypass => "bypass",
            Self::Miss => "miss",
            Self::Stale => "stale",
            Self::Request => "request",
            Self::Method => "method",
        }
    }
}

/// What happened to one request, rendered as one `Cache-Status` member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Status {
    pub(crate) hit: bool,
    pub(crate) detail: Option<&'static str>,
    pub(crate) forward: Option<Forward>,
    pub(crate) forward_status: Option<u16>,
    pub(crate) stored: bool,
    pub(crate) collapsed: bool,
}

impl Status {
    pub(crate) fn hit(source: Source) -> Self {
        Self {
            hit: true,
            detail: Some(match source {
                Source::Memory => "memory",
                Source::Redis => "redis",
                Source::Memcached => "memcached",
            }),
            forward: None,
            forward_status: None,
            stored: false,
            collapsed: false,
        }
    }

    pub(crate) fn forward(forward: Forward) -> Self {
        Self {
            hit: false,
            detail: None,
            forward: Some(forward),
            forward_status: None,
            stored: false,
            collapsed: false,
        }
    }

    /// A stale entry served: while it is revalidated in the background (`fwd_status` unknown),
    /// or because the origin failed (`fwd_status` its 5xx, if it answered).
    pub(crate) fn stale(source: Source, fwd_status: Option<u16>) -> Self {
        Self {
            forward: Some(Forward::Stale),
            forward_status: fwd_status,
            ..Self::hit(source)
        }
    }

    /// Not forwarded and not a hit: the cache answered by itself (e.g. `only-if-cached`).
    pub(crate) fn detail(detail: &'static str) -> Self {
        Self {
            hit: false,
            detail: Some(detail),
            forward: None,
            forward_status: None,
            stored: false,
            collapsed: false,
        }
    }

    fn render(&self, name: &str) -> String {
        use std::fmt::Write;
        // Room for the longest members this cache writes: one allocation, no growth.
        let mut value = String::with_capacity(name.len() + 64);
        value.push_str(name);
        if self.hit {
            value.push_str("; hit");
        }
        if let Some(forward) = self.forward {
            value.push_str("; fwd=");
            value.push_str(forward.as_str());
        }
        if let Some(status) = self.forward_status {
            // Writing to a String cannot fail.
            let _ = write!(value, "; fwd-status={status}");
        }
        if self.stored {
            value.push_str("; stored");
        }
        if self.collapsed {
            value.push_str("; collapsed");
        }
        if let Some(detail) = self.detail {
            value.push_str("; detail=");
            value.push_str(detail);
        }
        value
    }

    /// Appends this cache's member after those of caches closer to the origin (RFC 9211 §2).
    pub(crate) fn append_to(&self, name: &str, headers: &mut HeaderMap) {
        if let Ok(value) = self.value(name) {
            headers.append(CACHE_STATUS.clone(), value);
        }
    }

    /// This cache's member as a header value.
    pub(crate) fn value(
        &self,
        name: &str,
    ) -> Result<HeaderValue, http::header::InvalidHeaderValue> {
        // The rendered string becomes the value's bytes as it is, without a copy.
        HeaderValue::from_maybe_shared(bytes::Bytes::from(self.render(name)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_rfc_9211_members() {
        assert_eq!(
            Status::hit(Source::Memory).render("tc"),
            "tc; hit; detail=memory"
        );
        let mut revalidated = Status::forward(Forward::Stale);
        revalidated.forward_status = Some(304);
        revalidated.stored = true;
        assert_eq!(
            revalidated.render("tc"),
            "tc; fwd=stale; fwd-status=304; stored"
        );
        let mut collapsed = Status::forward(Forward::Miss);
        collapsed.collapsed = true;
        assert_eq!(collapsed.render("tc"), "tc; fwd=miss; collapsed");
    }

    #[test]
    fn appends_after_upstream_members() {
        let mut headers = HeaderMap::new();
        headers.insert(
            CACHE_STATUS.clone(),
            HeaderValue::from_static("upstream; hit"),
        );
        Status::forward(Forward::Bypass).append_to("tc", &mut headers);
        let members: Vec<_> = headers.get_all(&CACHE_STATUS).iter().collect();
        assert_eq!(members, ["upstream; hit", "tc; fwd=bypass"]);
    }
}
