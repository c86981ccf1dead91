//! Message framing (RFC 9112 §6.3), settled before a response is stored or forwarded.
//!
//! A naive origin (or an attacker who controls one response) can send a `Content-Length` that
//! disagrees with the body it frames, for instance `Content-Length: 5` beside `Transfer-Encoding:
//! chunked` around a body holding a second response. The client-side parser and the cache's
//! server then frame the same bytes differently: the next pipelined response is the injected
//! one, and a stored entry would repeat it on every hit (response splitting). The rules here
//! are applied to every response from the origin and every entry read from a shared tier:
//!
//! - `Transfer-Encoding` wins: any `Content-Length` beside it is removed (§6.3 item 3);
//! - several `Content-Length` values must all be the same number, and are then one field
//!   (RFC 9110 §8.6); anything else is invalid framing, answered `502` (§6.3 item 5);
//! - a body whose length is not the declared one is never stored, and is forwarded without
//!   the wrong `Content-Length`, framed by what it is.

use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderValue};

/// A response whose framing cannot be trusted (RFC 9112 §6.3 item 5): a proxy discards it and
/// answers `502`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct InvalidFraming;

/// The length `headers` declare: `None` without `Content-Length`; an error when its lines or
/// list members are not all one and the same decimal number.
pub(crate) fn content_length(headers: &HeaderMap) -> Result<Option<u64>, InvalidFraming> {
    let mut declared = None;
    for line in headers.get_all(CONTENT_LENGTH) {
        let text = line.to_str().map_err(|_| InvalidFraming)?;
        for member in text.split(',') {
            let member = member.trim();
            if member.is_empty() || !member.bytes().all(|byte| byte.is_ascii_digit()) {
                return Err(InvalidFraming);
            }
            let length: u64 = member.parse().map_err(|_| InvalidFraming)?;
            match declared {
                Some(previous) if previous != length => return Err(InvalidFraming),
                _ => declared = Some(length),
            }
        }
    }
    Ok(declared)
}

/// Settles the framing fields of a response from the origin: `Content-Length` removed beside
/// `Transfer-Encoding`, repeated equal values collapsed into one field. Returns the declared
/// length, if any.
pub(crate) fn settle(headers: &mut HeaderMap) -> Result<Option<u64>, InvalidFraming> {
    if headers.contains_key(TRANSFER_ENCODING) {
        headers.remove(CONTENT_LENGTH);
        return Ok(None);
    }
    let length = content_length(headers)?;
    if let Some(length) = length {
        if headers.get_all(CONTENT_LENGTH).iter().nth(1).is_some()
            || headers
                .get(CONTENT_LENGTH)
                .is_some_and(|value| value.as_bytes().contains(&b','))
        {
            headers.insert(CONTENT_LENGTH, HeaderValue::from(length));
        }
    }
    Ok(length)
}

/// Whether a complete body of `len` bytes is the one `headers` declare: no `Content-Length`,
/// or exactly that one.
pub(crate) fn declares(headers: &HeaderMap, len: usize) -> bool {
    match content_length(headers) {
        Ok(None) => true,
        Ok(Some(declared)) => u64::try_from(len).is_ok_and(|len| len == declared),
        Err(InvalidFraming) => false,
    }
}

/// Whether the header fields of a stored entry frame its body of `len` bytes: they
/// [declare](declares) it and carry no `Transfer-Encoding` (the cache never stores one).
pub(crate) fn frames_stored_body(headers: &HeaderMap, len: usize) -> bool {
    !headers.contains_key(TRANSFER_ENCODING) && declares(headers, len)
}

/// For a response on its way to the client with a body of `exact` bytes (when known): a
/// `Content-Length` that says otherwise is removed, so the server frames the body by what it
/// is. An empty body is left alone: HEAD and 304 responses declare the length of a body they
/// do not carry.
pub(crate) fn fit_to_body(headers: &mut HeaderMap, exact: Option<u64>) {
    let Some(exact) = exact.filter(|exact| *exact > 0) else {
        return;
    };
    if headers.contains_key(CONTENT_LENGTH) && content_length(headers) != Ok(Some(exact)) {
        headers.remove(CONTENT_LENGTH);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::http::test_headers as headers;

    #[test]
    fn transfer_encoding_wins_over_content_length() {
        for coding in ["chunked", "identity", "gzip, chunked"] {
            let mut map = headers(&[("content-length", "5"), ("transfer-encoding", coding)]);
            assert_eq!(settle(&mut map), Ok(None));
            assert!(!map.contains_key(CONTENT_LENGTH), "{coding}");
        }
    }

    #[test]
    fn content_lengths_must_agree() {
        let mut same = headers(&[("content-length", "7"), ("content-length", "7, 7")]);
        assert_eq!(settle(&mut same), Ok(Some(7)));
        assert_eq!(same.get_all(CONTENT_LENGTH).iter().count(), 1);
        for invalid in [
            &[("content-length", "5"), ("content-length", "75")][..],
            &[("content-length", "5, 6")],
            &[("content-length", "-1")],
            &[("content-length", "+5")],
            &[("content-length", "")],
            &[("content-length", "0x10")],
            &[("content-length", "99999999999999999999999")],
        ] {
            assert_eq!(
                settle(&mut headers(invalid)),
                Err(InvalidFraming),
                "{invalid:?}"
            );
        }
    }

    #[test]
    fn a_body_of_another_length_is_not_what_was_declared() {
        assert!(declares(&headers(&[("content-length", "3")]), 3));
        assert!(declares(&headers(&[]), 3));
        assert!(!declares(&headers(&[("content-length", "5")]), 75));
        assert!(declares(&headers(&[("transfer-encoding", "chunked")]), 3));
        assert!(!frames_stored_body(
            &headers(&[("transfer-encoding", "chunked")]),
            3
        ));
        let mut forwarded = headers(&[("content-length", "5")]);
        fit_to_body(&mut forwarded, Some(75));
        assert!(!forwarded.contains_key(CONTENT_LENGTH));
        let mut head = headers(&[("content-length", "5")]);
        fit_to_body(&mut head, Some(0));
        assert!(head.contains_key(CONTENT_LENGTH));
    }
}
