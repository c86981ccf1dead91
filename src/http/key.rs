//! Cache keys: the primary key of a request, and the variant key selected by `Vary`.
//!
//! The primary key is the absolute URI, `scheme://host/path?query`, of a request whose target
//! [`target::validate`](super::target::validate) checked and normalised (one canonical
//! authority; the path as RFC 3986 §6.2.2 normalises it, nothing more, so `/a.css` and
//! `/a;.css` stay distinct), followed by any configured key headers and the URL-overriding
//! headers the request carries ([`forwarding`](super::forwarding)). It is readable, so prefix
//! invalidation works on URLs.
//!
//! Header values are keyed by their bytes: text as it is, and a value that is not UTF-8 (obs-text
//! bytes) percent-encoded after a marker ([`push_value`]), so that values differing only in such
//! bytes never share a key. List members are trimmed of the whitespace HTTP allows around them
//! (spaces and tabs), nothing else.

use http::header::{GetAll, HOST};
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Uri};

use super::forwarding;

/// Separates the parts of a key; cannot occur in a URI or a header value.
pub(crate) const SEPARATOR: char = '\u{1f}';

/// Begins a value keyed by its bytes ([`push_value`]); cannot occur in a header value, so no
/// value keyed as text begins with it.
const BYTES: char = '\u{7f}';

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
    forwarding::append_to_key(key, headers, SEPARATOR, append_field);
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
        // Unreachable after target validation, which admits only ASCII hosts.
        Err(_) => push_value(&mut target, &host.to_ascii_lowercase()),
    }
    target.push_str(path);
    target
}

/// `reference` (a `Location` or `Content-Location` value) resolved against `target`, when it
/// names a resource of the same origin (RFC 9111 §4.4 only invalidates those). Its path is
/// normalised as a request's is ([`target::normalised_path`](super::target::normalised_path)),
/// so it names the key its resource is stored under: `/a%7Eb` is `/a~b`. A path a request could
/// not have (a malformed escape) names nothing stored.
pub(crate) fn same_origin(target: &str, reference: &str) -> Option<String> {
    let base = url::Url::parse(target).ok()?;
    let mut resolved = base.join(reference.trim()).ok()?;
    let same = resolved.scheme() == base.scheme()
        && resolved.host_str() == base.host_str()
        && resolved.port_or_known_default() == base.port_or_known_default();
    if !same {
        return None;
    }
    if let Some(path) = super::target::normalised_path(resolved.path()).ok()? {
        resolved.set_path(&path);
    }
    Some(resolved.to_string())
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

/// Selecting fields whose members are case-insensitive tokens with an optional weight:
/// language ranges (RFC 9110 §12.5.4, RFC 4647 §2.1) and content codings (§12.5.3, §8.4.1).
/// They are keyed by [`append_weighted_members`], so `en-US, de;q=0.5` and `DE; Q=0.5, en-us` select
/// one variant.
fn has_weighted_members(name: &str) -> bool {
    name.eq_ignore_ascii_case("accept-language") || name.eq_ignore_ascii_case("accept-encoding")
}

/// Appends `␟name=value` (all field lines combined, whitespace around commas normalised), or
/// `␟name` when the request lacks the field: an absent field differs from an empty one.
fn append_field(key: &mut String, name: &str, headers: &HeaderMap) {
    key.push(SEPARATOR);
    key.push_str(name);
    let lines = headers.get_all(name);
    if lines.iter().next().is_none() {
        return;
    }
    key.push('=');
    // A weighted list is folded by meaning only when it is text; one with other bytes is keyed
    // member by member as it came.
    if has_weighted_members(name) && lines.iter().all(|line| text(line).is_some()) {
        append_weighted_lines(key, lines.iter().filter_map(text));
        return;
    }
    append_members(key, lines);
}

fn text(line: &HeaderValue) -> Option<&str> {
    std::str::from_utf8(line.as_bytes()).ok()
}

/// Appends every comma-separated member of every line, trimmed, each by [`push_value`].
fn append_members(key: &mut String, lines: GetAll<'_, HeaderValue>) {
    let mut first = true;
    for line in lines {
        for value in line.as_bytes().split(|byte| *byte == b',') {
            if !first {
                key.push(',');
            }
            first = false;
            push_value(key, value.trim_ascii());
        }
    }
}

/// Appends a piece of a header value so that different bytes never give the same text: as it is
/// when it is UTF-8, else as [`BYTES`] and then its bytes with `%` and every byte outside visible
/// ASCII percent-encoded.
pub(crate) fn push_value(key: &mut String, value: &[u8]) {
    if let Ok(text) = std::str::from_utf8(value) {
        key.push_str(text);
        return;
    }
    key.push(BYTES);
    for &byte in value {
        if byte == b'%' || !(0x20..0x7f).contains(&byte) {
            key.push('%');
            key.push(hex_digit(byte >> 4));
            key.push(hex_digit(byte & 0xf));
        } else {
            key.push(char::from(byte));
        }
    }
}

fn hex_digit(nibble: u8) -> char {
    char::from_digit(u32::from(nibble), 16).map_or('0', |digit| digit.to_ascii_uppercase())
}

/// The lines of a weighted field, combined as one list and appended by
/// [`append_weighted_members`]; one line (what clients send) without a copy.
fn append_weighted_lines<'a>(key: &mut String, mut lines: impl Iterator<Item = &'a str>) {
    let first = lines.next().unwrap_or_default();
    match lines.next() {
        None => append_weighted_members(key, first),
        Some(second) => {
            let mut combined = format!("{first},{second}");
            for line in lines {
                combined.push(',');
                combined.push_str(line);
            }
            append_weighted_members(key, &combined);
        }
    }
}

/// `text` without the whitespace HTTP allows around list members and parameters (RFC 9110
/// §5.6.1): spaces and tabs, not every Unicode space.
fn trim_ows(text: &str) -> &str {
    text.trim_matches([' ', '\t'])
}

/// Appends the members of a weighted list lower-cased, without whitespace around `;`, with
/// canonical weights (`q=0.50` as `q=0.5`, `q=1` left out), ordered by weight, highest first.
/// Members of equal weight keep their order: origins commonly prefer the earlier one, so
/// `en, de` and `de, en` stay distinct. A list with a weight that does not parse keeps its order.
/// Lists already in order (what clients send) are written without allocating.
fn append_weighted_members(key: &mut String, list: &str) {
    let start = key.len();
    let mut previous = u16::MAX;
    let (mut all_valid, mut in_order) = (true, true);
    for (index, member) in list.split(',').enumerate() {
        if index > 0 {
            key.push(',');
        }
        let weight = member_weight(member);
        match weight {
            Some(weight) => {
                in_order &= weight <= previous;
                previous = weight;
            }
            None => all_valid = false,
        }
        append_member(key, member, weight);
    }
    if all_valid && !in_order {
        key.truncate(start);
        let mut members: Vec<(Option<u16>, &str)> = list
            .split(',')
            .map(|member| (member_weight(member), member))
            .collect();
        members.sort_by_key(|(weight, _)| std::cmp::Reverse(*weight));
        for (index, (weight, member)) in members.into_iter().enumerate() {
            if index > 0 {
                key.push(',');
            }
            append_member(key, member, weight);
        }
    }
}

/// One member of a weighted list with its `weight`, folded as [`append_weighted_members`] says.
fn append_member(key: &mut String, member: &str, weight: Option<u16>) {
    let mut parts = member.split(';');
    push_lowercase(key, trim_ows(parts.next().unwrap_or_default()));
    for parameter in parts.map(trim_ows) {
        if weight.is_some() && is_weight(parameter) {
            continue;
        }
        key.push(';');
        push_lowercase(key, parameter);
    }
    match weight {
        None | Some(1000) => {}
        Some(0) => key.push_str(";q=0"),
        Some(thousandths) => {
            key.push_str(";q=0.");
            let digits = [thousandths / 100, thousandths / 10 % 10, thousandths % 10];
            let significant = if digits[2] != 0 {
                3
            } else if digits[1] != 0 {
                2
            } else {
                1
            };
            for digit in &digits[..significant] {
                key.push(char::from_digit(u32::from(*digit), 10).unwrap_or('0'));
            }
        }
    }
}

fn push_lowercase(key: &mut String, text: &str) {
    let start = key.len();
    key.push_str(text);
    key[start..].make_ascii_lowercase();
}

fn is_weight(parameter: &str) -> bool {
    let bytes = parameter.as_bytes();
    bytes.len() >= 2 && bytes[0].eq_ignore_ascii_case(&b'q') && bytes[1] == b'='
}

/// A member's weight in thousandths (RFC 9110 §12.4.2): 1000 without a `q` parameter, `None`
/// when it is not a valid qvalue.
fn member_weight(member: &str) -> Option<u16> {
    if !member.contains(';') {
        return Some(1000);
    }
    let Some(q) = member
        .split(';')
        .skip(1)
        .map(trim_ows)
        .find(|p| is_weight(p))
    else {
        return Some(1000);
    };
    let q = &q[2..];
    let (whole, fraction) = q.split_once('.').unwrap_or((q, ""));
    if fraction.len() > 3 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let thousandths = fraction
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(3)
        .fold(0u16, |value, digit| value * 10 + u16::from(digit - b'0'));
    match whole {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
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
    fn paths_are_keyed_as_validated() {
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

    /// `parts` with `name: value` added as raw bytes (obs-text, not UTF-8).
    fn with_bytes(mut parts: Parts, name: &'static str, value: &[u8]) -> Parts {
        let value = HeaderValue::from_bytes(value).expect("obs-text is a valid header value");
        parts.headers.append(name, value);
        parts
    }

    #[test]
    fn values_differing_only_in_bytes_that_are_not_utf8_get_different_keys() {
        let tenant = [HeaderName::from_static("x-tenant")];
        let key =
            |value: &[u8]| primary_key(&with_bytes(parts("/a", &[]), "x-tenant", value), &tenant);
        let keys = [
            key(b"a\xff"),
            key(b"a\xfe"),
            key(b"a\xff\xff"),
            key("a\u{fffd}".as_bytes()),
            key(b"a%FF"),
            key(b"a"),
        ];
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(key(b"a\xff"), "http:///a\u{1f}x-tenant=\u{7f}a%FF");
        assert_eq!(
            key("caf\u{e9}".as_bytes()),
            "http:///a\u{1f}x-tenant=caf\u{e9}"
        );
    }

    #[test]
    fn weighted_lists_with_bytes_that_are_not_utf8_get_different_keys() {
        let vary = vec!["accept-language".to_owned()];
        let key = |value: &[u8]| {
            let parts = with_bytes(parts("/", &[]), "accept-language", value);
            variant_key("k", "1", &vary, &parts.headers)
        };
        assert_ne!(key(b"en, \xff"), key(b"en, \xfe"));
        assert_ne!(key(b"en, \xff"), key("en, \u{fffd}".as_bytes()));
        assert_eq!(key(b"en ,\xff"), key(b"en, \xff"), "still trimmed");
    }

    #[test]
    fn only_spaces_and_tabs_are_trimmed_from_members() {
        let tenant = [HeaderName::from_static("x-tenant")];
        let key = |value: &str| primary_key(&parts("/a", &[("x-tenant", value)]), &tenant);
        assert_eq!(key(" a ,\tb"), key("a,b"));
        assert_ne!(
            key("a\u{a0}"),
            key("a"),
            "a no-break space is part of the value"
        );
        assert_ne!(language_key("en\u{a0}"), language_key("en"));
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
        assert_eq!(
            same_origin(target, "/x%7eb/%2f/../%c3").as_deref(),
            Some("http://h.example/x~b/%C3"),
            "normalised as a request path is"
        );
        assert_eq!(same_origin(target, "/bad%zz"), None);
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

    fn language_key(accept_language: &str) -> String {
        let vary = vec!["accept-language".to_owned()];
        let headers = parts("/", &[("accept-language", accept_language)]).headers;
        variant_key("k", "1", &vary, &headers)
    }

    #[test]
    fn language_ranges_and_codings_are_keyed_by_meaning() {
        let same = [
            ("en-US, de;q=0.5", "EN-us ,De ; Q=0.5"),
            ("en-US, de;q=0.5", "de;q=0.50, en-us"),
            ("fr;q=0.2, en, de;q=0.9", "en;q=1.0, de;q=0.9, fr;q=0.2"),
            ("en, *;q=0", "*;q=0.000, en;q=1"),
            ("da;q=0.125, en;q=0.1", "EN;Q=0.100, da;q=0.125"),
        ];
        for (a, b) in same {
            assert_eq!(language_key(a), language_key(b), "{a} vs {b}");
        }
        let two_lines = parts(
            "/",
            &[("accept-language", "fr;q=0.5"), ("accept-language", "EN")],
        );
        let vary = vec!["accept-language".to_owned()];
        assert_eq!(
            variant_key("k", "1", &vary, &two_lines.headers),
            "k\u{1f}v1\u{1f}accept-language=en,fr;q=0.5"
        );
        let vary = vec!["accept-encoding".to_owned()];
        let encoding = |value| {
            let headers = parts("/", &[("accept-encoding", value)]).headers;
            variant_key("k", "1", &vary, &headers)
        };
        assert_eq!(encoding("gzip, br;q=0.8"), encoding("BR; q=0.8,GZIP"));
    }

    #[test]
    fn member_order_and_other_fields_keep_their_meaning() {
        let different = [
            ("en, de", "de, en"), // equal weights keep the client's order
            ("en", "fr"),
            ("en;q=0.5", "en;q=0.6"),
            ("de;q=oops, en", "en, de;q=oops"), // an invalid weight: nothing reordered
        ];
        for (a, b) in different {
            assert_ne!(language_key(a), language_key(b), "{a} vs {b}");
        }
        let vary = vec!["x-tenant".to_owned()];
        let tenant = |value| {
            let headers = parts("/", &[("x-tenant", value)]).headers;
            variant_key("k", "1", &vary, &headers)
        };
        assert_ne!(
            tenant("Acme"),
            tenant("acme"),
            "unknown fields are case-sensitive"
        );
    }
}
