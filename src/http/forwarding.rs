//! Request headers that change the URL an application believes it serves.
//!
//! Frameworks rebuild absolute URLs, redirects and links from `X-Forwarded-Host`, `Forwarded`,
//! `X-Original-URL` and their kin. Unkeyed, a request carrying a forged one makes a naive origin
//! generate a response that is then stored for everyone: the classic cache-poisoning vector.
//! `http.forwarded_headers` decides what the cache does with them, in one place:
//!
//! - `key` (default): they stay on the request and are part of its key when present, so such a
//!   response is only ever served to requests carrying the same values. Of `Forwarded`
//!   (RFC 7239) only the `host` and `proto` parameters are keyed: `for` and `by` name a client
//!   or proxy, not a URL, and would split the cache per client.
//! - `strip`: they are removed before the request is keyed and forwarded, so the origin never
//!   sees a client's values (for a cache at the edge, with no trusted proxy in front of it).

use http::{HeaderMap, HeaderName};

use super::key::push_value;

pub(crate) use crate::config::ForwardedHeaders;

static FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// The headers besides `Forwarded`: de facto standards (`X-Forwarded-*`), the ones IIS, nginx
/// modules, Symfony, Rails and Spring read, and method overrides (which change what a GET does).
static URL_OVERRIDING: [HeaderName; 20] = [
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-forwarded-scheme"),
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("x-forwarded-prefix"),
    HeaderName::from_static("x-forwarded-server"),
    HeaderName::from_static("x-forwarded-ssl"),
    HeaderName::from_static("x-forwarded-uri"),
    HeaderName::from_static("x-forwarded-path"),
    HeaderName::from_static("front-end-https"),
    HeaderName::from_static("x-url-scheme"),
    HeaderName::from_static("x-host"),
    HeaderName::from_static("x-original-url"),
    HeaderName::from_static("x-original-uri"),
    HeaderName::from_static("x-rewrite-url"),
    HeaderName::from_static("x-original-host"),
    HeaderName::from_static("x-http-method-override"),
    HeaderName::from_static("x-http-method"),
    HeaderName::from_static("x-method-override"),
    HeaderName::from_static("x-scheme"),
];

/// Whether `headers` may carry one of them: most requests carry a handful of common headers,
/// and this one pass over the names spares the lookups.
fn may_carry_any(headers: &HeaderMap) -> bool {
    headers.keys().any(|name| {
        let name = name.as_str();
        name.starts_with("x-") || name == "forwarded" || name == "front-end-https"
    })
}

/// Removes every URL-overriding header (`http.forwarded_headers = "strip"`).
pub(crate) fn strip(headers: &mut HeaderMap) {
    if !may_carry_any(headers) {
        return;
    }
    headers.remove(&FORWARDED);
    for name in &URL_OVERRIDING {
        headers.remove(name);
    }
}

/// Appends the URL-overriding headers present on the request to `key`, each with
/// `append_field` (which writes `␟name=value`); `separator` is the key's `␟`.
pub(crate) fn append_to_key(
    key: &mut String,
    headers: &HeaderMap,
    separator: char,
    append_field: impl Fn(&mut String, &str, &HeaderMap),
) {
    if !may_carry_any(headers) {
        return;
    }
    for name in &URL_OVERRIDING {
        if headers.contains_key(name) {
            append_field(key, name.as_str(), headers);
        }
    }
    append_forwarded(key, headers, separator);
}

/// The `host` and `proto` parameters of every `Forwarded` element, in order, as
/// `␟forwarded=host=a;proto=https,host=b`.
fn append_forwarded(key: &mut String, headers: &HeaderMap, separator: char) {
    let mut lines = headers.get_all(&FORWARDED).iter().peekable();
    if lines.peek().is_none() {
        return;
    }
    key.push(separator);
    key.push_str("forwarded=");
    let mut first_element = true;
    for line in lines {
        for element in line.as_bytes().split(|byte| *byte == b',') {
            if !first_element {
                key.push(',');
            }
            first_element = false;
            let mut first_pair = true;
            for pair in element.split(|byte| *byte == b';') {
                let Some(equals) = pair.iter().position(|byte| *byte == b'=') else {
                    continue;
                };
                let name = match pair[..equals].trim_ascii() {
                    name if name.eq_ignore_ascii_case(b"host") => "host",
                    name if name.eq_ignore_ascii_case(b"proto") => "proto",
                    _ => continue,
                };
                if !first_pair {
                    key.push(';');
                }
                first_pair = false;
                key.push_str(name);
                key.push('=');
                // By its bytes: forged values that differ only in non-UTF-8 bytes stay apart.
                push_value(key, pair[equals + 1..].trim_ascii());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    use crate::http::test_headers as headers;

    fn key_of(pairs: &[(&str, &str)]) -> String {
        let mut key = String::new();
        append_to_key(&mut key, &headers(pairs), '\u{1f}', |key, name, _| {
            key.push('|');
            key.push_str(name);
        });
        key
    }

    #[test]
    fn forwarded_is_keyed_by_host_and_proto_only() {
        let a = key_of(&[("forwarded", "for=1.2.3.4;host=evil.example;proto=https")]);
        let b = key_of(&[("forwarded", "for=5.6.7.8; Host=evil.example ;proto=https")]);
        assert_eq!(a, b);
        assert!(a.contains("host=evil.example;proto=https"), "{a}");
        assert_ne!(a, key_of(&[("forwarded", "for=1.2.3.4")]));
        assert_ne!(key_of(&[]), key_of(&[("forwarded", "for=1.2.3.4")]));
    }

    #[test]
    fn forwarded_hosts_differing_only_in_bytes_that_are_not_utf8_get_different_keys() {
        let key_of_bytes = |value: &[u8]| {
            let mut headers = HeaderMap::new();
            let value = HeaderValue::from_bytes(value).expect("obs-text is a valid header value");
            headers.insert(FORWARDED.clone(), value);
            let mut key = String::new();
            append_to_key(&mut key, &headers, '\u{1f}', |_, _, _| {});
            key
        };
        let ff = key_of_bytes(b"host=evil\xff.example");
        assert_ne!(ff, key_of_bytes(b"host=evil\xfe.example"));
        assert_ne!(ff, key_of_bytes("host=evil\u{fffd}.example".as_bytes()));
        assert_eq!(
            ff,
            key_of_bytes(b"for=1.2.3.4; HOST = evil\xff.example"),
            "still keyed by host and proto only"
        );
    }

    #[test]
    fn every_url_overriding_header_is_keyed_and_stripped() {
        for name in URL_OVERRIDING
            .iter()
            .map(HeaderName::as_str)
            .chain(["forwarded"])
        {
            let present = key_of(&[(name, "host=x")]);
            assert_ne!(present, key_of(&[]), "{name} is keyed");
            let mut stripped = headers(&[(name, "x"), ("accept", "*/*")]);
            strip(&mut stripped);
            assert_eq!(stripped.len(), 1, "{name} is stripped");
        }
    }
}
