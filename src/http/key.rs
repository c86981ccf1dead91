//! Cache keys: the primary key of a request, and the variant key selected by `Vary`.
//!
//! The primary key is the absolute URI, `scheme://host/path?query`, with the host lowercased and
//! nothing else normalised (so `/a.css` and `/a;.css` stay distinct), followed by any configured
//! key headers. It is readable, so prefix invalidation works on URLs.
//!
//! Headers that frameworks use to rebuild URLs (`X-Forwarded-Host`, `X-Original-URL`, ...) are
//! classic cache-poisoning vectors: unkeyed, a request carrying a forged one could make the
//! origin generate a response that is then stored for everyone. They are part of the key when
//! present, so such a response is only ever served to requests carrying the same values.

use http::header::HOST;
use http::request::Parts;
use http::{HeaderMap, HeaderName, Uri};

/// Separates the parts of a key; cannot occur in a URI or a header value.
const SEPARATOR: char = '\u{1f}';

/// Request headers that can change the URL an application believes it serves.
static URL_OVERRIDING_HEADERS: [HeaderName; 13] = [
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-forwarded-scheme"),
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("x-forwarded-prefix"),
    HeaderName::from_static("x-forwarded-server"),
    HeaderName::from_static("x-host"),
    HeaderName::from_static("x-original-url"),
    HeaderName::from_static("x-rewrite-url"),
    HeaderName::from_static("x-original-host"),
    HeaderName::from_static("x-http-method-override"),
    HeaderName::from_static("x-http-method"),
    HeaderName::from_static("x-method-override"),
];

/// The primary key of a request. HEAD and GET share it: HEAD is answered from GET entries.
pub(crate) fn primary_key(parts: &Parts, key_headers: &[HeaderName]) -> String {
    let mut key = target_uri(&parts.uri, &parts.headers);
    append_key_fields(&mut key, &parts.headers, key_headers);
    key
}

/// The primary key of the resource at `target` (an absolute URI, as [`target_uri`] makes).
pub(crate) fn key_for(target: &str, headers: &HeaderMap, key_headers: &[HeaderName]) -> String {
    let mut key = target.to_owned();
    append_key_fields(&mut key, headers, key_headers);
    key
}

/// The configured key headers, then the URL-overriding headers the request carries.
fn append_key_fields(key: &mut String, headers: &HeaderMap, key_headers: &[HeaderName]) {
    for name in key_headers {
        append_field(key, name.as_str(), headers);
    }
    // Most requests carry a handful of headers: look for these only when there may be one.
    let may_override = headers.keys().any(|name| name.as_str().starts_with("x-"));
    if may_override {
        for name in &URL_OVERRIDING_HEADERS {
            if headers.contains_key(name) {
                append_field(key, name.as_str(), headers);
            }
        }
    }
}

/// The absolute target URI of a request, `scheme://host/path?query`, with the host from the
/// request line's authority or else the `Host` header, lowercased.
pub(crate) fn target_uri(uri: &Uri, headers: &HeaderMap) -> String {
    let scheme = uri.scheme_str().unwrap_or("http");
    let host = match uri.authority() {
        Some(authority) => authority.as_str().as_bytes(),
        None => headers.get(HOST).map_or(&b""[..], |host| host.as_bytes()),
    };
    let path = uri
        .path_and_query()
        .map_or("/", |path_and_query| path_and_query.as_str());
    // Room for a few key fields too, so appending them rarely reallocates.
    let mut target = String::with_capacity(scheme.len() + 3 + host.len() + path.len() + 32);
    target.push_str(scheme);
    target.push_str("://");
    match std::str::from_utf8(host) {
        Ok(host) => target.extend(host.chars().map(|c| c.to_ascii_lowercase())),
        Err(_) => target.push_str(&String::from_utf8_lossy(host).to_ascii_lowercase()),
    }
    target.push_str(path);
    target
}

/// `reference` (a `Location` or `Content-Location` value) resolved against `target`, when it
/// names a resource of the same origin (RFC 9111 §4.4 only invalidates those).
pub(crate) fn same_origin(target: &str, reference: &str) -> Option<String> {
    let base = url::Url::parse(target).ok()?;
    let resolved = base.join(reference.trim()).ok()?;
    let same = resolved.scheme() == base.scheme()
        && resolved.host_str() == base.host_str()
        && resolved.port_or_known_default() == base.port_or_known_default();
    same.then(|| resolved.to_string())
}

/// The key of one variant of `primary`: the request's values of the `Vary` fields, under the
/// generation of the variant list so that variants stored before an invalidation are unreachable.
pub(crate) fn variant_key(
    primary: &str,
    generation: &str,
    vary: &[String],
    headers: &HeaderMap,
) -> String {
    let mut key = format!("{primary}{SEPARATOR}v{generation}");
    for name in vary {
        append_field(&mut key, name, headers);
    }
    key
}

/// Appends `␟name=value` (all field lines combined, whitespace around commas normalised), or
/// `␟name` when the request lacks the field: an absent field differs from an empty one.
fn append_field(key: &mut String, name: &str, headers: &HeaderMap) {
    key.push(SEPARATOR);
    key.push_str(name);
    let mut lines = headers.get_all(name).iter().peekable();
    if lines.peek().is_none() {
        return;
    }
    key.push('=');
    let mut first = true;
    for line in lines {
        for value in String::from_utf8_lossy(line.as_bytes()).split(',') {
            if !first {
                key.push(',');
            }
            first = false;
            key.push_str(value.trim());
        }
    }
}

#[cfg(test)]
mod tests {
    use http::Request;

    use super::*;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut builder = Request::get(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap().into_parts().0
    }

    #[test]
    fn host_comes_from_the_authority_or_the_host_header() {
        assert_eq!(
            primary_key(&parts("http://Example.COM/a?b=1", &[]), &[]),
            "http://example.com/a?b=1"
        );
        assert_eq!(
            primary_key(&parts("/a", &[("host", "Shop.Example")]), &[]),
            "http://shop.example/a"
        );
    }

    #[test]
    fn url_overriding_headers_are_keyed_when_present() {
        let plain = primary_key(&parts("/a", &[("host", "h"), ("x-unrelated", "1")]), &[]);
        assert_eq!(plain, "http://h/a");
        let forwarded = primary_key(
            &parts(
                "/a",
                &[
                    ("host", "h"),
                    ("x-forwarded-host", "evil"),
                    ("x-original-url", "/admin"),
                ],
            ),
            &[],
        );
        assert_ne!(plain, forwarded);
    }

    #[test]
    fn paths_are_not_normalised() {
        let a = primary_key(&parts("/a.css", &[("host", "h")]), &[]);
        let b = primary_key(&parts("/a;.css", &[("host", "h")]), &[]);
        assert_ne!(a, b);
    }

    #[test]
    fn key_headers_distinguish_absent_from_empty() {
        let tenant = [HeaderName::from_static("x-tenant")];
        let absent = primary_key(&parts("/a", &[]), &tenant);
        let empty = primary_key(&parts("/a", &[("x-tenant", "")]), &tenant);
        let one = primary_key(&parts("/a", &[("x-tenant", "1")]), &tenant);
        assert_ne!(absent, empty);
        assert_ne!(empty, one);
    }

    #[test]
    fn only_same_origin_references_resolve() {
        let target = "http://h.example/a/b";
        assert_eq!(
            same_origin(target, "/c").as_deref(),
            Some("http://h.example/c")
        );
        assert_eq!(
            same_origin(target, "c?x=1").as_deref(),
            Some("http://h.example/a/c?x=1")
        );
        assert_eq!(
            same_origin(target, "http://h.example:80/d").as_deref(),
            Some("http://h.example/d")
        );
        assert_eq!(same_origin(target, "http://other.example/c"), None);
        assert_eq!(same_origin(target, "https://h.example/c"), None);
    }

    #[test]
    fn variant_keys_normalise_list_whitespace() {
        let vary = vec!["accept-encoding".to_owned()];
        let a = variant_key(
            "k",
            "1",
            &vary,
            &parts("/", &[("accept-encoding", "gzip, br")]).headers,
        );
        let b = variant_key(
            "k",
            "1",
            &vary,
            &parts("/", &[("accept-encoding", "gzip,br")]).headers,
        );
        let c = variant_key(
            "k",
            "2",
            &vary,
            &parts("/", &[("accept-encoding", "gzip,br")]).headers,
        );
        assert_eq!(a, b);
        assert_ne!(b, c, "a new generation makes old variants unreachable");
    }
}
