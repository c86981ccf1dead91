//! `Cache-Control` parsing (RFC 9111 §5.2), for requests and responses.
//!
//! Tolerant by design: directive names are case-insensitive, values may be tokens or quoted
//! strings, all field lines are combined, and anything that does not parse is ignored rather than
//! failing the message. Numeric values that are not valid delta-seconds are kept as
//! [`Delta::Invalid`] so the policy can treat them conservatively.
//!
//! Targeted fields (RFC 9213, `CDN-Cache-Control`) are the exception: they are Structured Field
//! Dictionaries, parsed strictly, and one that does not parse is ignored as a whole.

mod structured;

use std::borrow::Cow;

use http::header::{HeaderMap, HeaderName, CACHE_CONTROL};

use structured::{Invalid, Value};

/// RFC 9111 §1.2.2: delta-seconds too large to represent are 2^31.
const DELTA_SECONDS_CAP: u64 = 2_147_483_648;

/// A delta-seconds directive value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Delta {
    Seconds(u64),
    /// Present but not a non-negative integer (`max-age=-1`, `max-age=ab`, `max-age`).
    Invalid,
}

impl Delta {
    fn parse(value: Option<&str>) -> Self {
        match value {
            Some(text) if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) => {
                Self::Seconds(
                    text.parse()
                        .unwrap_or(DELTA_SECONDS_CAP)
                        .min(DELTA_SECONDS_CAP),
                )
            }
            _ => Self::Invalid,
        }
    }

    pub(crate) fn parse_str(text: &str) -> Self {
        Self::parse(Some(text))
    }

    pub(crate) fn seconds(self) -> Option<u64> {
        match self {
            Self::Seconds(seconds) => Some(seconds),
            Self::Invalid => None,
        }
    }
}

/// `no-cache` and `private` may list field names (RFC 9111 §5.2.2.4, §5.2.2.7).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) enum Qualified {
    #[default]
    Absent,
    /// Without field names: applies to the whole response.
    All,
    /// With field names (lowercased): applies to those fields only.
    Fields(Vec<String>),
}

impl Qualified {
    pub(crate) fn is_all(&self) -> bool {
        matches!(self, Self::All)
    }

    fn merge(&mut self, value: Option<&str>) {
        let fields: Vec<String> = value
            .map(|list| {
                list.split(',')
                    .map(|name| name.trim().to_ascii_lowercase())
                    .filter(|name| !name.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        *self = match (std::mem::take(self), fields.is_empty()) {
            (Self::All, _) | (_, true) => Self::All,
            (Self::Fields(mut existing), false) => {
                existing.extend(fields);
                Self::Fields(existing)
            }
            (Self::Absent, false) => Self::Fields(fields),
        };
    }
}

/// Directives of one message. For a directive repeated with different values, the first wins.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct CacheControl {
    pub(crate) max_age: Option<Delta>,
    pub(crate) s_maxage: Option<Delta>,
    pub(crate) stale_while_revalidate: Option<Delta>,
    pub(crate) stale_if_error: Option<Delta>,
    pub(crate) max_stale: Option<MaxStale>,
    pub(crate) min_fresh: Option<Delta>,
    pub(crate) no_cache: Qualified,
    pub(crate) private: Qualified,
    pub(crate) no_store: bool,
    pub(crate) public: bool,
    pub(crate) must_revalidate: bool,
    pub(crate) proxy_revalidate: bool,
    pub(crate) must_understand: bool,
    pub(crate) only_if_cached: bool,
    pub(crate) immutable: bool,
    /// Whether any `Cache-Control` field line was present.
    pub(crate) present: bool,
}

/// Request `max-stale` (RFC 9111 §5.2.1.2): without a value, any staleness is accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MaxStale {
    Any,
    Seconds(u64),
}

impl CacheControl {
    pub(crate) fn from_headers(headers: &HeaderMap) -> Self {
        let mut parsed = Self::default();
        for line in headers.get_all(CACHE_CONTROL) {
            parsed.present = true;
            // Non-ASCII bytes cannot be part of a directive; the rest of the line still counts.
            let text = String::from_utf8_lossy(line.as_bytes());
            each_directive(&text, |name, value| {
                parsed.apply(&lowercase(name), value.as_deref());
            });
        }
        parsed
    }

    fn apply(&mut self, name: &str, value: Option<&str>) {
        let first = |slot: &mut Option<Delta>| {
            slot.get_or_insert(Delta::parse(value));
        };
        match name {
            "max-age" => first(&mut self.max_age),
            "s-maxage" => first(&mut self.s_maxage),
            "stale-while-revalidate" => first(&mut self.stale_while_revalidate),
            "stale-if-error" => first(&mut self.stale_if_error),
            "min-fresh" => first(&mut self.min_fresh),
            "max-stale" => {
                self.max_stale.get_or_insert(match value {
                    None => MaxStale::Any,
                    Some(_) => match Delta::parse(value) {
                        Delta::Seconds(seconds) => MaxStale::Seconds(seconds),
                        // An unusable max-stale accepts no extra staleness.
                        Delta::Invalid => MaxStale::Seconds(0),
                    },
                });
            }
            "no-cache" => self.no_cache.merge(value),
            "private" => self.private.merge(value),
            "no-store" => self.no_store = true,
            "public" => self.public = true,
            "must-revalidate" => self.must_revalidate = true,
            "proxy-revalidate" => self.proxy_revalidate = true,
            "must-understand" => self.must_understand = true,
            "only-if-cached" => self.only_if_cached = true,
            "immutable" => self.immutable = true,
            _ => {}
        }
    }
}

impl CacheControl {
    /// RFC 9213 §2.1: the directives of the targeted field `field`, or `None` when it is
    /// absent, empty or not a valid Dictionary. A directive this cache knows with a value of
    /// the wrong type (`max-age="60"`, `no-store=?0`) makes the field invalid too: a cache that
    /// guessed would apply a policy the origin did not state (§2.1: implementations SHOULD NOT
    /// consume values that violate the directive's type).
    pub(crate) fn from_targeted(headers: &HeaderMap, field: &HeaderName) -> Option<Self> {
        let mut combined = String::new();
        for line in headers.get_all(field) {
            let line = line.to_str().ok()?.trim_matches([' ', '\t']);
            if line.is_empty() {
                continue;
            }
            if !combined.is_empty() {
                combined.push_str(", ");
            }
            combined.push_str(line);
        }
        let members = structured::parse_dictionary(&combined).ok()?;
        if members.is_empty() {
            return None;
        }
        let mut parsed = Self {
            present: true,
            ..Self::default()
        };
        for (name, value) in members {
            parsed.apply_targeted(&name, value).ok()?;
        }
        Some(parsed)
    }

    /// One member of a targeted field, typed as RFC 9213 §2.1 maps Cache-Control's syntax:
    /// delta-seconds are Integers, flags are Boolean true, field lists are Strings (or a
    /// Token naming one field). Request directives and extensions are ignored.
    fn apply_targeted(&mut self, name: &str, value: Value) -> Result<(), Invalid> {
        let seconds = |value: Value| match value {
            Value::Integer(seconds) => u64::try_from(seconds)
                .map(|seconds| Some(Delta::Seconds(seconds.min(DELTA_SECONDS_CAP))))
                .map_err(|_| Invalid),
            _ => Err(Invalid),
        };
        let flag = |value: Value| match value {
            Value::Boolean(true) => Ok(true),
            _ => Err(Invalid),
        };
        let fields = |value: Value| match value {
            Value::Boolean(true) => Ok(None),
            Value::String(fields) | Value::Token(fields) => Ok(Some(fields)),
            _ => Err(Invalid),
        };
        match name {
            "max-age" => self.max_age = seconds(value)?,
            "s-maxage" => self.s_maxage = seconds(value)?,
            "stale-while-revalidate" => self.stale_while_revalidate = seconds(value)?,
            "stale-if-error" => self.stale_if_error = seconds(value)?,
            "no-cache" => self.no_cache.merge(fields(value)?.as_deref()),
            "private" => self.private.merge(fields(value)?.as_deref()),
            "no-store" => self.no_store = flag(value)?,
            "public" => self.public = flag(value)?,
            "must-revalidate" => self.must_revalidate = flag(value)?,
            "proxy-revalidate" => self.proxy_revalidate = flag(value)?,
            "must-understand" => self.must_understand = flag(value)?,
            "immutable" => self.immutable = flag(value)?,
            _ => {}
        }
        Ok(())
    }
}

/// RFC 9213 §2.2: the directives this cache follows for `headers` — those of the first field of
/// `targets` (its target list, in precedence order) that is present, valid and non-empty, else
/// `Cache-Control`'s — and the targeted field they came from, if any. When one applies,
/// `Cache-Control` and `Expires` are for other caches and are ignored here.
pub(crate) fn governing<'t>(
    headers: &HeaderMap,
    targets: &'t [HeaderName],
) -> (CacheControl, Option<&'t HeaderName>) {
    targets
        .iter()
        .find_map(|field| Some((CacheControl::from_targeted(headers, field)?, Some(field))))
        .unwrap_or_else(|| (CacheControl::from_headers(headers), None))
}

/// `Surrogate-Control` (W3C Edge Architecture 1.0): directives for reverse proxies, which
/// override `Cache-Control` and `Expires` for them. A directive may target one surrogate with a
/// `;token` suffix (`max-age=60;edge`); only untargeted ones and those for `token` apply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct SurrogateControl {
    pub(crate) max_age: Option<Delta>,
    pub(crate) no_store: bool,
}

impl SurrogateControl {
    /// The directives that apply to the surrogate named `token`; `None` when there are none.
    pub(crate) fn from_headers(headers: &HeaderMap, token: &str) -> Option<Self> {
        let mut parsed = Self::default();
        let mut applies = false;
        for line in headers.get_all("surrogate-control") {
            let text = String::from_utf8_lossy(line.as_bytes());
            each_directive(&text, |name, value| {
                let name = lowercase(name);
                let (name, name_target) = split_target(&name);
                let (value, value_target) = match &value {
                    Some(value) => {
                        let (value, target) = split_target(value);
                        (Some(value), target)
                    }
                    None => (None, None),
                };
                let target = name_target.or(value_target);
                if target.is_some_and(|target| !target.eq_ignore_ascii_case(token)) {
                    return;
                }
                match name {
                    "max-age" => {
                        parsed.max_age.get_or_insert(Delta::parse(value));
                        applies = true;
                    }
                    "no-store" => {
                        parsed.no_store = true;
                        applies = true;
                    }
                    _ => {}
                }
            });
        }
        applies.then_some(parsed)
    }
}

fn split_target(text: &str) -> (&str, Option<&str>) {
    match text.split_once(';') {
        Some((directive, target)) => (directive.trim(), Some(target.trim())),
        None => (text, None),
    }
}

/// Calls `each` with every (name, unquoted value) pair of a field line, honouring quoted
/// strings. Names are trimmed but keep their case. Allocates only for values with escapes.
fn each_directive<'a>(line: &'a str, mut each: impl FnMut(&'a str, Option<Cow<'a, str>>)) {
    let mut rest = line;
    loop {
        // Skip separators and whitespace before a directive.
        rest = rest.trim_start_matches(|c: char| c == ',' || c.is_whitespace());
        if rest.is_empty() {
            return;
        }
        let name_end = rest.find(['=', ',']).unwrap_or(rest.len());
        let name = rest[..name_end].trim();
        rest = &rest[name_end..];
        let value = match rest.strip_prefix('=') {
            Some(after) => {
                let after = after.trim_start_matches([' ', '\t']);
                if let Some(body) = after.strip_prefix('"') {
                    let (value, remaining) = unquote(body);
                    rest = remaining;
                    Some(value)
                } else {
                    let end = after.find(',').unwrap_or(after.len());
                    rest = &after[end..];
                    Some(Cow::Borrowed(after[..end].trim()))
                }
            }
            None => None,
        };
        // Text after a quoted value up to the next comma is garbage; skip it.
        rest = &rest[rest.find(',').unwrap_or(rest.len())..];
        if !name.is_empty() && !name.contains(char::is_whitespace) {
            each(name, value);
        }
    }
}

/// The body of a quoted string (after its opening quote) with `\x` unescaped, and the text after
/// its closing quote. An unterminated string runs to the end.
fn unquote(body: &str) -> (Cow<'_, str>, &str) {
    let mut unescaped: Option<String> = None;
    let mut chars = body.char_indices();
    while let Some((index, c)) = chars.next() {
        match c {
            '"' => {
                let value = unescaped.map_or(Cow::Borrowed(&body[..index]), Cow::Owned);
                return (value, &body[index + 1..]);
            }
            '\\' => {
                let value = unescaped.get_or_insert_with(|| body[..index].to_owned());
                value.extend(chars.next().map(|(_, escaped)| escaped));
            }
            other => {
                if let Some(value) = &mut unescaped {
                    value.push(other);
                }
            }
        }
    }
    (unescaped.map_or(Cow::Borrowed(body), Cow::Owned), "")
}

/// `name` in lower case, borrowed when it already is.
fn lowercase(name: &str) -> Cow<'_, str> {
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn parse(lines: &[&str]) -> CacheControl {
        let mut headers = HeaderMap::new();
        for line in lines {
            headers.append(CACHE_CONTROL, HeaderValue::from_str(line).unwrap());
        }
        CacheControl::from_headers(&headers)
    }

    #[test]
    fn names_are_case_insensitive_and_lines_combine() {
        let cc = parse(&["Max-Age=60, PUBLIC", "s-maxage=10"]);
        assert_eq!(cc.max_age, Some(Delta::Seconds(60)));
        assert_eq!(cc.s_maxage, Some(Delta::Seconds(10)));
        assert!(cc.public && cc.present);
    }

    #[test]
    fn quoted_values_are_accepted() {
        let cc = parse(&["max-age=\"3600\", no-cache=\"Set-Cookie, X-Foo\""]);
        assert_eq!(cc.max_age, Some(Delta::Seconds(3600)));
        assert_eq!(
            cc.no_cache,
            Qualified::Fields(vec!["set-cookie".into(), "x-foo".into()])
        );
    }

    #[test]
    fn quoted_commas_do_not_split_directives() {
        let cc = parse(&["private=\"a, b\", max-age=5"]);
        assert_eq!(cc.private, Qualified::Fields(vec!["a".into(), "b".into()]));
        assert_eq!(cc.max_age, Some(Delta::Seconds(5)));
    }

    #[test]
    fn invalid_numbers_are_marked_invalid() {
        for value in ["-1", "1.5", "abc", "", "10 20"] {
            let cc = parse(&[&format!("max-age={value}")]);
            assert_eq!(cc.max_age, Some(Delta::Invalid), "{value}");
        }
        assert_eq!(parse(&["max-age"]).max_age, Some(Delta::Invalid));
    }

    #[test]
    fn huge_numbers_are_capped() {
        let cc = parse(&["max-age=99999999999999999999999"]);
        assert_eq!(cc.max_age, Some(Delta::Seconds(DELTA_SECONDS_CAP)));
    }

    #[test]
    fn first_of_duplicates_wins() {
        assert_eq!(
            parse(&["max-age=10, max-age=20"]).max_age,
            Some(Delta::Seconds(10))
        );
    }

    #[test]
    fn garbage_is_ignored_without_losing_the_rest() {
        let cc = parse(&[",,, =x, \"junk\", max-age=7 trailing, no-store"]);
        assert!(cc.no_store);
        assert_eq!(cc.max_age, Some(Delta::Invalid));
        assert_eq!(parse(&["no-cache, , private"]).private, Qualified::All);
    }

    #[test]
    fn surrogate_control_applies_untargeted_and_own_directives() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "surrogate-control",
            HeaderValue::from_static("max-age=3600;not-for-you"),
        );
        assert_eq!(SurrogateControl::from_headers(&headers, "edge"), None);
        headers.insert(
            "surrogate-control",
            HeaderValue::from_static("MaX-aGe=60;edge, foobar"),
        );
        assert_eq!(
            SurrogateControl::from_headers(&headers, "edge"),
            Some(SurrogateControl {
                max_age: Some(Delta::Seconds(60)),
                no_store: false
            })
        );
        headers.insert("surrogate-control", HeaderValue::from_static("no-store"));
        assert!(
            SurrogateControl::from_headers(&headers, "edge")
                .unwrap()
                .no_store
        );
    }

    fn targeted(lines: &[&str]) -> Option<CacheControl> {
        let mut headers = HeaderMap::new();
        for line in lines {
            headers.append("cdn-cache-control", HeaderValue::from_str(line).unwrap());
        }
        CacheControl::from_targeted(&headers, &HeaderName::from_static("cdn-cache-control"))
    }

    #[test]
    fn targeted_fields_map_directives_by_structured_type() {
        let cc = targeted(&[
            "max-age=99999999999, private=\"set-cookie, x-a\"",
            "no-cache=x-b, foo=?0",
        ])
        .unwrap();
        assert_eq!(cc.max_age, Some(Delta::Seconds(DELTA_SECONDS_CAP)));
        assert_eq!(
            cc.private,
            Qualified::Fields(vec!["set-cookie".into(), "x-a".into()])
        );
        assert_eq!(cc.no_cache, Qualified::Fields(vec!["x-b".into()]));
        assert!(cc.present);
        let flags = targeted(&["no-store, must-revalidate=?1, public;x=1"]).unwrap();
        assert!(flags.no_store && flags.must_revalidate && flags.public);
    }

    #[test]
    fn a_targeted_field_with_a_wrongly_typed_directive_is_ignored_whole() {
        for line in [
            "max-age=\"60\"",
            "max-age=-1",
            "max-age=1.5",
            "no-store=?0",
            "no-store=1",
            "private=1",
            "max-age=60, &&&",
            "MaX-aGe=60",
        ] {
            assert_eq!(targeted(&[line]), None, "{line:?}");
        }
        assert_eq!(targeted(&[]), None);
        assert_eq!(targeted(&["", " "]), None);
        // Unknown directives may have any type, and an empty line adds nothing.
        assert_eq!(
            targeted(&["", "x=1.5, max-age=5"]).and_then(|cc| cc.max_age),
            Some(Delta::Seconds(5))
        );
    }

    #[test]
    fn the_first_valid_targeted_field_governs() {
        let targets = [
            HeaderName::from_static("own-cache-control"),
            HeaderName::from_static("cdn-cache-control"),
        ];
        let mut headers = HeaderMap::new();
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("max-age=1"));
        let (cc, field) = governing(&headers, &targets);
        assert_eq!((cc.max_age, field), (Some(Delta::Seconds(1)), None));
        headers.insert("cdn-cache-control", HeaderValue::from_static("max-age=2"));
        headers.insert(
            "own-cache-control",
            HeaderValue::from_static("max-age=\"3\""),
        );
        let (cc, field) = governing(&headers, &targets);
        assert_eq!(
            (cc.max_age, field),
            (Some(Delta::Seconds(2)), Some(&targets[1]))
        );
        headers.insert("own-cache-control", HeaderValue::from_static("max-age=3"));
        let (cc, field) = governing(&headers, &targets);
        assert_eq!(
            (cc.max_age, field),
            (Some(Delta::Seconds(3)), Some(&targets[0]))
        );
    }

    #[test]
    fn max_stale_without_value_accepts_any() {
        assert_eq!(parse(&["max-stale"]).max_stale, Some(MaxStale::Any));
        assert_eq!(
            parse(&["max-stale=5"]).max_stale,
            Some(MaxStale::Seconds(5))
        );
    }
}
