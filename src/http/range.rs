//! Single byte ranges served from complete stored responses (RFC 9110 §14).
//!
//! Only `bytes=first-last`, `bytes=first-` and `bytes=-suffix` with one range are served from the
//! cache; anything else (several ranges, other units, `If-Range`) gets the whole representation,
//! which a server may always send instead of a range.

use std::ops::Range;

use http::header::{CONTENT_LENGTH, CONTENT_RANGE, IF_RANGE, RANGE};
use http::{HeaderMap, HeaderValue, StatusCode};

/// The byte range of a body of `length` bytes that `request` asks for and that can be served.
pub(crate) fn requested(request: &HeaderMap, length: usize) -> Option<Range<usize>> {
    if request.contains_key(IF_RANGE) || length == 0 {
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
}
