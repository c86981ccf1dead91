//! Content codings a request accepts (RFC 9110 §12.5.3), for sending a body stored brotli-
//! compressed as it is.

use http::header::ACCEPT_ENCODING;
use http::HeaderMap;

/// Whether `Accept-Encoding` accepts `br`: listed with a weight above zero, or covered by `*`
/// with one and not refused by name. No field, or an empty one, accepts only the identity.
pub(crate) fn accepts_brotli(headers: &HeaderMap) -> bool {
    let mut named = None;
    let mut any = None;
    for value in headers.get_all(ACCEPT_ENCODING) {
        let Ok(value) = value.to_str() else {
            return false;
        };
        for member in value.split(',') {
            let mut parts = member.split(';');
            let coding = parts.next().unwrap_or_default().trim();
            let weight = parts
                .filter_map(|parameter| parameter.split_once('='))
                .find(|(name, _)| name.trim().eq_ignore_ascii_case("q"))
                .map_or(Some(1.0), |(_, q)| q.trim().parse::<f32>().ok());
            let accepted = weight.is_some_and(|q| q > 0.0);
            if coding.eq_ignore_ascii_case("br") {
                named = Some(named.unwrap_or(true) && accepted);
            } else if coding == "*" {
                any = Some(any.unwrap_or(true) && accepted);
            }
        }
    }
    named.or(any).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn accepts(values: &[&'static str]) -> bool {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(ACCEPT_ENCODING, HeaderValue::from_static(value));
        }
        accepts_brotli(&headers)
    }

    #[test]
    fn br_is_accepted_by_name_or_by_star_with_a_weight_above_zero() {
        assert!(accepts(&["gzip, deflate, br"]));
        assert!(accepts(&["gzip", "BR;q=0.5"]));
        assert!(accepts(&["*"]));
        assert!(accepts(&["gzip;q=1, *;q=0.1"]));
        assert!(!accepts(&[]));
        assert!(!accepts(&[""]));
        assert!(!accepts(&["gzip, deflate"]));
        assert!(!accepts(&["br;q=0"]));
        assert!(!accepts(&["br;q=0.000"]));
        assert!(!accepts(&["*, br;q=0"]), "refused by name");
        assert!(
            !accepts(&["br;q=abc"]),
            "an unreadable weight accepts nothing"
        );
        assert!(!accepts(&["*;q=0"]));
    }
}
