//! Single byte ranges (RFC 9110 §14) served from stored responses: from complete ones, and from
//! stored partial ones (a `206` with one range, RFC 9111 §3.3) when the range lies inside.
//!
//! Only `bytes=first-last`, `bytes=first-` and `bytes=-suffix` with one range are served from the
//! cache; anything else (several ranges, other units) gets the whole representation, which a
//! server may always send instead of a range. `If-Range` is a precondition, evaluated with the
//! others ([`policy::preconditions`](super::policy::preconditions)) before a range is served.

use std::ops::Range;

use http::header::{CONTENT_LENGTH, CONTENT_RANGE, RANGE};
use http::{HeaderMap, HeaderValue, StatusCode};

use crate::store::CachedEntry;

/// The byte range of a body of `length` bytes that `request` asks for and that can be served.
pub(crate) fn requested(request: &HeaderMap, length: usize) -> Option<Range<usize>> {
    if length == 0 {
        return None;
    }
    let mut values = request.get_all(RANGE).iter();
    let spec = values.next()?.to_str().ok()?.trim();
    if values.next().is_some() {
        return None;
    }
    let spec = spec.strip_prefix("bytes=")?.trim();
    if spec.contains(',') {
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    let (first, last) = (first.trim(), last.trim());
    let range = if first.is_empty() {
        let suffix: usize = last.parse().ok()?;
        length.saturating_sub(suffix)..length
    } else {
        let first: usize = first.parse().ok()?;
        let last: usize = if last.is_empty() {
            length - 1
        } else {
            last.parse::<usize>().ok()?.min(length - 1)
        };
        if first > last {
            return None;
        }
        first..last + 1
    };
    (range.start < length && !range.is_empty()).then_some(range)
}

/// Turns a 200's status and headers into those of a 206 for `range` of a `length`-byte body.
pub(crate) fn partial(
    status: &mut StatusCode,
    headers: &mut HeaderMap,
    range: &Range<usize>,
    length: usize,
) {
    *status = StatusCode::PARTIAL_CONTENT;
    let content_range = format!("bytes {}-{}/{length}", range.start, range.end - 1);
    if let Ok(value) = HeaderValue::from_str(&content_range) {
        headers.insert(CONTENT_RANGE, value);
    }
    headers.insert(CONTENT_LENGTH, HeaderValue::from(range.len()));
}

/// The bytes a partial response holds, from its `Content-Range: bytes first-last/complete`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Held {
    first: usize,
    last: usize,
    complete: usize,
}

impl Held {
    /// From a single `Content-Range` with a known complete length; `None` for anything else
    /// (`*` lengths, several fields, other units, first > last, last past the end).
    pub(crate) fn from_headers(headers: &HeaderMap) -> Option<Self> {
        let mut values = headers.get_all(CONTENT_RANGE).iter();
        let value = values.next()?.to_str().ok()?.trim();
        if values.next().is_some() {
            return None;
        }
        let (range, complete) = value.strip_prefix("bytes ")?.split_once('/')?;
        let (first, last) = range.split_once('-')?;
        let held = Self {
            first: first.trim().parse().ok()?,
            last: last.trim().parse().ok()?,
            complete: complete.trim().parse().ok()?,
        };
        (held.first <= held.last && held.last < held.complete).then_some(held)
    }

    /// How many bytes the body holds.
    pub(crate) fn len(&self) -> usize {
        self.last - self.first + 1
    }

    /// Whether it holds every byte of the representation.
    pub(crate) fn is_whole(&self) -> bool {
        self.first == 0 && self.last + 1 == self.complete
    }
}

/// Whether `entry` is a stored partial response (only 206s with one valid range are stored).
pub(crate) fn is_partial(entry: &CachedEntry) -> bool {
    entry.status() == StatusCode::PARTIAL_CONTENT
}

/// The range `request` asks for, when the stored partial response (`stored` headers, a body of
/// `body_len` bytes) holds all of it: the range within the complete representation and what is
/// held.
pub(crate) fn within_partial(
    request: &HeaderMap,
    stored: &HeaderMap,
    body_len: usize,
) -> Option<(Range<usize>, Held)> {
    let held = Held::from_headers(stored).filter(|held| held.len() == body_len)?;
    let wanted = requested(request, held.complete)?;
    (wanted.start >= held.first && wanted.end <= held.last + 1).then_some((wanted, held))
}

/// A stored partial response narrowed to `wanted` (from [`within_partial`]): its status,
/// headers and body become those of a 206 for exactly that range.
pub(crate) fn narrow(
    headers: &mut HeaderMap,
    body: &mut bytes::Bytes,
    wanted: &Range<usize>,
    held: Held,
) {
    let mut status = StatusCode::PARTIAL_CONTENT;
    partial(&mut status, headers, wanted, held.complete);
    *body = body.slice(wanted.start - held.first..wanted.end - held.first);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(spec: &str, length: usize) -> Option<Range<usize>> {
        let mut headers = HeaderMap::new();
        headers.insert(RANGE, HeaderValue::from_str(spec).unwrap());
        requested(&headers, length)
    }

    #[test]
    fn single_ranges_are_served() {
        assert_eq!(range("bytes=0-1", 11), Some(0..2));
        assert_eq!(range("bytes=1-", 11), Some(1..11));
        assert_eq!(range("bytes=-1", 11), Some(10..11));
        assert_eq!(range("bytes=5-100", 11), Some(5..11));
    }

    #[test]
    fn anything_else_gets_the_whole_body() {
        for spec in [
            "bytes=0-1,3-4",
            "items=0-1",
            "bytes=5-2",
            "bytes=20-",
            "bytes=x-1",
            "bytes=-0",
        ] {
            assert_eq!(range(spec, 11), None, "{spec}");
        }
    }

    fn headers(pairs: &[(http::HeaderName, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(name.clone(), HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    #[test]
    fn held_ranges_need_one_valid_content_range() {
        let held = |value: &str| Held::from_headers(&headers(&[(CONTENT_RANGE, value)]));
        assert_eq!(
            held("bytes 4-9/10"),
            Some(Held {
                first: 4,
                last: 9,
                complete: 10
            })
        );
        assert_eq!(held("bytes 4-9/10").map(|held| held.len()), Some(6));
        assert_eq!(
            held("bytes 4-9/10").map(|held| held.is_whole()),
            Some(false)
        );
        assert_eq!(held("bytes 0-9/10").map(|held| held.is_whole()), Some(true));
        for value in [
            "bytes 4-9/*",
            "bytes 9-4/10",
            "bytes 4-10/10",
            "items 0-1/2",
            "4-9/10",
        ] {
            assert_eq!(held(value), None, "{value}");
        }
        let two = headers(&[
            (CONTENT_RANGE, "bytes 0-1/10"),
            (CONTENT_RANGE, "bytes 0-1/10"),
        ]);
        assert_eq!(Held::from_headers(&two), None);
    }

    #[test]
    fn partial_responses_answer_ranges_inside_them() {
        let stored = headers(&[(CONTENT_RANGE, "bytes 4-9/10")]);
        let ask = |spec: &str| {
            let request = headers(&[(RANGE, spec)]);
            within_partial(&request, &stored, 6).map(|(wanted, _)| wanted)
        };
        assert_eq!(ask("bytes=-5"), Some(5..10));
        assert_eq!(ask("bytes=4-"), Some(4..10));
        assert_eq!(ask("bytes=5-6"), Some(5..7));
        assert_eq!(ask("bytes=3-6"), None, "starts before what is held");
        assert_eq!(ask("bytes=0-"), None);
        let short_body = within_partial(&headers(&[(RANGE, "bytes=5-6")]), &stored, 5);
        assert_eq!(
            short_body, None,
            "a body that does not match its Content-Range"
        );

        let mut response = stored.clone();
        let mut body = bytes::Bytes::from_static(b"456789");
        let (wanted, held) = within_partial(&headers(&[(RANGE, "bytes=5-6")]), &stored, 6).unwrap();
        narrow(&mut response, &mut body, &wanted, held);
        assert_eq!(body, "56");
        assert_eq!(response[CONTENT_RANGE], "bytes 5-6/10");
        assert_eq!(response[CONTENT_LENGTH], "2");
    }
}
