//! The request target, validated once, so that the authority and path the cache keys on are the
//! ones it forwards (RFC 9112 §3.2, RFC 9113 §8.3.1, RFC 3986 §6).
//!
//! A client controls the request line and every header, and a naive origin trusts `Host` and
//! reads paths its own way. Before anything is keyed, matched or forwarded:
//!
//! - the request names exactly one valid authority: `uri-host [":" port]`, without userinfo,
//!   path, query, fragment or whitespace. HTTP/1.1 without `Host`, a repeated `Host` and an
//!   invalid one are refused with `400` (RFC 9112 §3.2); so is an HTTP/2 `Host` that names
//!   another authority than `:authority` (RFC 9113 §8.3.1);
//! - an absolute-form target's authority wins over `Host`, which is replaced with it (RFC 9112
//!   §3.2.2: a proxy generates `Host` from the target);
//! - the authority is written in canonical form — lowercase, without an empty or default port —
//!   in both the target and `Host`;
//! - the path is normalised as RFC 3986 §6.2.2 allows (percent-encoded unreserved characters
//!   decoded, the hex digits of the others uppercased, dot segments removed) and forwarded that
//!   way; a malformed percent-encoding is refused. Readings an origin may add on top (merged
//!   slashes, decoded `%2F`, `;` parameters) are the route matcher's concern
//!   ([`Routes::select`](super::routes::Routes::select)).

use http::header::HOST;
use http::request::Parts;
use http::uri::{Authority, PathAndQuery};
use http::{HeaderValue, Uri, Version};

use super::forwarding::{self, ForwardedHeaders};

/// Why a request is refused before the cache or the origin sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// An HTTP/1.1 or HTTP/2 request that names no authority at all.
    MissingHost,
    /// More than one `Host` field line.
    RepeatedHost,
    /// A `Host` (or target authority) that is not `uri-host [":" port]`.
    InvalidHost,
    /// An HTTP/2 `Host` naming another authority than `:authority`.
    ConflictingHost,
    /// A path with a malformed percent-encoding.
    InvalidPath,
}

impl Refusal {
    /// The `Cache-Status` detail of the cache's 400.
    pub(crate) fn detail(self) -> &'static str {
        match self {
            Self::MissingHost => "missing-host",
            Self::RepeatedHost => "repeated-host",
            Self::InvalidHost => "invalid-host",
            Self::ConflictingHost => "conflicting-host",
            Self::InvalidPath => "invalid-path",
        }
    }

    /// The body of the cache's 400.
    pub(crate) fn message(self) -> &'static str {
        match self {
            Self::MissingHost => "the request names no host (RFC 9112 section 3.2)\n",
            Self::RepeatedHost => "the request has more than one Host field\n",
            Self::InvalidHost => "the Host field or target authority is not host[:port]\n",
            Self::ConflictingHost => "the Host field disagrees with :authority\n",
            Self::InvalidPath => "the request path has a malformed percent-encoding\n",
        }
    }
}

/// The one authority of a request (RFC 9112 §3.2): the target's, else `Host`'s (HTTP/2 and
/// later: both, and equal); `None` only for HTTP/1.0 without either.
fn authority(parts: &Parts) -> Result<Option<Canonical<'_>>, Refusal> {
    let mut hosts = parts.headers.get_all(HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(Refusal::RepeatedHost);
    }
    let default_port = default_port(parts.uri.scheme_str());
    let host = host
        .map(|host| Canonical::of(host.as_bytes(), default_port))
        .transpose()?;
    let target = parts
        .uri
        .authority()
        .map(|authority| Canonical::of(authority.as_str().as_bytes(), default_port))
        .transpose()?;
    Ok(match (target, host) {
        (Some(target), Some(host))
            if parts.version >= Version::HTTP_2 && target.bytes() != host.bytes() =>
        {
            return Err(Refusal::ConflictingHost)
        }
        (Some(target), _) => Some(target),
        (None, Some(host)) => Some(host),
        (None, None) if parts.version <= Version::HTTP_10 => None,
        (None, None) => return Err(Refusal::MissingHost),
    })
}

/// Validates the target of `parts` and rewrites it so that what is forwarded is what is keyed:
/// one canonical `Host`, equal to the target's authority when it has one, and a normalised
/// path. URL-overriding forwarding headers are removed when `forwarded` says so.
pub(crate) fn validate(parts: &mut Parts, forwarded: ForwardedHeaders) -> Result<(), Refusal> {
    if forwarded == ForwardedHeaders::Strip {
        forwarding::strip(&mut parts.headers);
    }
    let authority = authority(parts)?;
    let path = normalised_path(parts.uri.path())?;
    let Some(authority) = authority else {
        if let Some(path) = path {
            parts.uri = rebuilt(&parts.uri, None, Some(&path))?;
        }
        return Ok(());
    };
    let authority = authority.bytes();
    let host = (parts.headers.get(HOST).map(HeaderValue::as_bytes) != Some(authority))
        .then(|| HeaderValue::from_bytes(authority))
        .transpose()
        .map_err(|_| Refusal::InvalidHost)?;
    let target_differs = parts
        .uri
        .authority()
        .is_some_and(|target| target.as_str().as_bytes() != authority);
    let uri = (path.is_some() || target_differs)
        .then(|| {
            rebuilt(
                &parts.uri,
                target_differs.then_some(authority),
                path.as_deref(),
            )
        })
        .transpose()?;
    if let Some(host) = host {
        parts.headers.insert(HOST, host);
    }
    if let Some(uri) = uri {
        parts.uri = uri;
    }
    Ok(())
}

fn default_port(scheme: Option<&str>) -> u16 {
    match scheme {
        Some(scheme) if scheme.eq_ignore_ascii_case("https") => 443,
        _ => 80,
    }
}

/// An authority as the request wrote it, or rewritten into canonical form.
enum Canonical<'a> {
    /// Already canonical (the common case: nothing allocated).
    AsSent(&'a [u8]),
    Rewritten(String),
}

impl<'a> Canonical<'a> {
    /// `raw` as `uri-host [":" port]` in canonical form: lowercase, without an empty port or
    /// the scheme's default one. Registered names are restricted to unreserved characters
    /// (letters, digits, `-`, `.`, `_`, `~`), the only ones host names use; IP literals to
    /// bracketed hex digits, colons and dots.
    fn of(raw: &'a [u8], default_port: u16) -> Result<Self, Refusal> {
        let (host, digits) = split_port(raw).ok_or(Refusal::InvalidHost)?;
        if !valid_host(host) {
            return Err(Refusal::InvalidHost);
        }
        let port = match digits {
            None | Some([]) => None,
            Some(digits) => {
                let port = parse_port(digits).ok_or(Refusal::InvalidHost)?;
                (port != default_port).then_some(port)
            }
        };
        let port_as_sent = match (digits, port) {
            (None, _) => true,
            (Some(digits), Some(_)) => digits.first() != Some(&b'0'),
            (Some(_), None) => false,
        };
        if port_as_sent && !host.iter().any(u8::is_ascii_uppercase) {
            return Ok(Self::AsSent(raw));
        }
        let mut text = String::from_utf8_lossy(host).to_ascii_lowercase();
        if let Some(port) = port {
            text.push(':');
            text.push_str(&port.to_string());
        }
        Ok(Self::Rewritten(text))
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Self::AsSent(raw) => raw,
            Self::Rewritten(text) => text.as_bytes(),
        }
    }
}

fn valid_host(host: &[u8]) -> bool {
    if let Some(literal) = host.strip_prefix(b"[") {
        return literal.strip_suffix(b"]").is_some_and(|inner| {
            !inner.is_empty()
                && inner
                    .iter()
                    .all(|byte| byte.is_ascii_hexdigit() || matches!(byte, b':' | b'.'))
        });
    }
    !host.is_empty() && host.iter().copied().all(is_unreserved)
}

/// `host` and the digits after its `:`, if any; `None` for a shape no authority has (an
/// unbracketed colon in the host, text after an IP literal).
fn split_port(raw: &[u8]) -> Option<(&[u8], Option<&[u8]>)> {
    let split_at = if raw.first() == Some(&b'[') {
        let close = raw.iter().position(|byte| *byte == b']')?;
        match raw.get(close + 1) {
            None => return Some((raw, None)),
            Some(b':') => close + 1,
            Some(_) => return None,
        }
    } else {
        match raw.iter().position(|byte| *byte == b':') {
            None => return Some((raw, None)),
            Some(colon) => colon,
        }
    };
    let (host, port) = (&raw[..split_at], &raw[split_at + 1..]);
    port.iter()
        .all(u8::is_ascii_digit)
        .then_some((host, Some(port)))
}

fn parse_port(digits: &[u8]) -> Option<u16> {
    if digits.len() > 5 {
        return None;
    }
    digits
        .iter()
        .try_fold(0u32, |port, digit| {
            let port = port * 10 + u32::from(digit - b'0');
            (port <= u32::from(u16::MAX)).then_some(port)
        })
        .and_then(|port| u16::try_from(port).ok())
}

/// `uri` with `authority` and `path`, where given, in place of its own.
fn rebuilt(uri: &Uri, authority: Option<&[u8]>, path: Option<&str>) -> Result<Uri, Refusal> {
    let mut parts = uri.clone().into_parts();
    if let Some(authority) = authority {
        parts.authority = Some(Authority::try_from(authority).map_err(|_| Refusal::InvalidHost)?);
    }
    if let Some(path) = path {
        let path_and_query = match uri.query() {
            Some(query) => format!("{path}?{query}"),
            None => path.to_owned(),
        };
        parts.path_and_query =
            Some(PathAndQuery::try_from(path_and_query).map_err(|_| Refusal::InvalidPath)?);
    }
    Uri::from_parts(parts).map_err(|_| Refusal::InvalidPath)
}

/// `path` as RFC 3986 §6.2.2 normalises it: percent-encoded unreserved characters decoded, the
/// hex digits of other percent-encodings uppercased, dot segments removed (§5.2.4). `None`
/// when it is normal already (the common case, checked without allocating); paths that are
/// not absolute (`*`) are left alone.
pub(crate) fn normalised_path(path: &str) -> Result<Option<String>, Refusal> {
    if !path.starts_with('/') || !(path.contains('%') || has_dot_segment(path)) {
        return Ok(None);
    }
    let decoded = normalised_percent_encoding(path)?;
    let normal = remove_dot_segments(&decoded);
    Ok((normal != path).then_some(normal))
}

fn has_dot_segment(path: &str) -> bool {
    path.split('/')
        .any(|segment| segment == "." || segment == "..")
}

fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

fn normalised_percent_encoding(path: &str) -> Result<String, Refusal> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut index = 0;
    while index < bytes.len() {
        let byte = bytes[index];
        if byte != b'%' {
            out.push(char::from(byte));
            index += 1;
            continue;
        }
        let value = bytes
            .get(index + 1..index + 3)
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .filter(|hex| hex.bytes().all(|digit| digit.is_ascii_hexdigit()))
            .and_then(|hex| u8::from_str_radix(hex, 16).ok())
            .ok_or(Refusal::InvalidPath)?;
        if is_unreserved(value) {
            out.push(char::from(value));
        } else {
            out.push('%');
            out.push_str(&format!("{value:02X}"));
        }
        index += 3;
    }
    Ok(out)
}

/// RFC 3986 §5.2.4 for an absolute path: `.` segments dropped, `..` segments drop the one
/// before; a path ending in either ends with `/`.
pub(crate) fn remove_dot_segments(path: &str) -> String {
    let mut kept: Vec<&str> = Vec::new();
    let mut segments = path.split('/').skip(1).peekable();
    let mut ends_in_slash = false;
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        match segment {
            "." => ends_in_slash = last,
            ".." => {
                kept.pop();
                ends_in_slash = last;
            }
            other => {
                kept.push(other);
                ends_in_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &kept {
        out.push('/');
        out.push_str(segment);
    }
    if ends_in_slash || kept.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use http::Request;

    use super::*;

    fn parts(uri: &str, version: Version, hosts: &[&str]) -> Parts {
        let mut builder = Request::get(uri).version(version);
        for host in hosts {
            builder = builder.header(HOST, *host);
        }
        builder.body(()).unwrap().into_parts().0
    }

    fn checked(uri: &str, version: Version, hosts: &[&str]) -> Result<(String, String), Refusal> {
        let mut parts = parts(uri, version, hosts);
        validate(&mut parts, ForwardedHeaders::Key)?;
        let host = parts
            .headers
            .get(HOST)
            .map(|host| host.to_str().unwrap().to_owned())
            .unwrap_or_default();
        Ok((host, parts.uri.to_string()))
    }

    #[test]
    fn an_absolute_target_replaces_host() {
        assert_eq!(
            checked("http://a.example/p", Version::HTTP_11, &["evil.example"]),
            Ok(("a.example".into(), "http://a.example/p".into()))
        );
        assert_eq!(
            checked("http://A.Example:80/p", Version::HTTP_11, &[]),
            Ok(("a.example".into(), "http://a.example/p".into()))
        );
    }

    #[test]
    fn hosts_are_refused_unless_one_valid_authority() {
        let refused = |hosts: &[&str]| checked("/x", Version::HTTP_11, hosts).unwrap_err();
        assert_eq!(refused(&[]), Refusal::MissingHost);
        assert_eq!(refused(&["a.example", "a.example"]), Refusal::RepeatedHost);
        for invalid in [
            "a.example/s/hp",
            "a.example?x",
            "a.example#f",
            "user@a.example",
            "a example",
            "a.example:80:80",
            "a.example:99999",
            "a.example:8x",
            "",
            ":80",
            "[::1",
            "[::1]x",
            "a%2eexample",
        ] {
            assert_eq!(refused(&[invalid]), Refusal::InvalidHost, "{invalid:?}");
        }
        assert_eq!(
            checked("/x", Version::HTTP_10, &[]),
            Ok((String::new(), "/x".into()))
        );
    }

    #[test]
    fn host_is_canonical() {
        let host = |raw: &str| checked("/x", Version::HTTP_11, &[raw]).unwrap().0;
        assert_eq!(host("A.EXAMPLE"), "a.example");
        assert_eq!(host("a.example:"), "a.example");
        assert_eq!(host("a.example:0080"), "a.example");
        assert_eq!(host("a.example:8080"), "a.example:8080");
        assert_eq!(host("[::1]:8080"), "[::1]:8080");
        assert_eq!(host("127.0.0.1"), "127.0.0.1");
    }

    #[test]
    fn http2_host_must_agree_with_authority() {
        assert_eq!(
            checked("http://a.example/p", Version::HTTP_2, &["evil.example"]),
            Err(Refusal::ConflictingHost)
        );
        assert_eq!(
            checked("http://a.example/p", Version::HTTP_2, &["A.example:80"]),
            Ok(("a.example".into(), "http://a.example/p".into()))
        );
        assert_eq!(
            checked("http://a.example/p", Version::HTTP_2, &[]),
            Ok(("a.example".into(), "http://a.example/p".into()))
        );
    }

    #[test]
    fn paths_are_normalised_as_rfc_3986_allows() {
        let path = |raw: &str| {
            normalised_path(raw)
                .unwrap()
                .unwrap_or_else(|| raw.to_owned())
        };
        assert_eq!(path("/static/../acct/profile"), "/acct/profile");
        assert_eq!(path("/static/%2e%2e/acct/profile"), "/acct/profile");
        assert_eq!(path("/static/%2E%2e/acct"), "/acct");
        assert_eq!(path("/%61cct/x"), "/acct/x");
        assert_eq!(path("/./acct/x"), "/acct/x");
        assert_eq!(path("/x/../acct/"), "/acct/");
        assert_eq!(path("/a/b/c/./../../g"), "/a/g");
        assert_eq!(path("/a/."), "/a/");
        assert_eq!(path("/.."), "/");
        assert_eq!(path("/a%2fb"), "/a%2Fb");
        assert_eq!(path("/static/..%2Facct"), "/static/..%2Facct");
        assert_eq!(path("//acct/x"), "//acct/x");
        assert_eq!(path("/a;.css"), "/a;.css");
        assert_eq!(path("/a..b/.c"), "/a..b/.c");
        assert_eq!(normalised_path("/plain/path").unwrap(), None);
        assert_eq!(normalised_path("/a%zz"), Err(Refusal::InvalidPath));
        assert_eq!(normalised_path("/a%2"), Err(Refusal::InvalidPath));
        assert_eq!(normalised_path("*").unwrap(), None);
    }

    #[test]
    fn the_query_is_kept_as_sent() {
        assert_eq!(
            checked("http://a.example/x/../y?a=%2e%2e&b", Version::HTTP_11, &[]),
            Ok(("a.example".into(), "http://a.example/y?a=%2e%2e&b".into()))
        );
    }
}
