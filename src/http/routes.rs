//! `[[route]]` rules, compiled once: the first rule whose glob matches the path applies.
//!
//! Rules are matched against the path [`target::validate`](super::target::validate)
//! normalised, the one the origin receives. Origins may read it further in ways RFC 3986 does
//! not make equivalent: merging repeated slashes (nginx), decoding `%2F` and `%5C` into
//! separators or decoding twice (some servers and frameworks), taking `\` for `/` (IIS), dropping
//! `;` parameters from segments (Tomcat, Spring: `/..;/`). A route could be side-stepped through
//! such a reading (`/static/..%2Facct/me` stored under a `/static/**` TTL, `//acct/me` escaping
//! an `/acct/**` bypass), so [`Routes::select`] matches a path in every reading it has, and when
//! the readings select different rules the path is ambiguous: the request is not cached.

use std::sync::Arc;
use std::time::Duration;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use http::{HeaderName, HeaderValue};

use crate::config::{CacheConfig, ConfigError, RouteConfig, WriteAuth, WriteMode};

/// What applies to one request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Rule {
    pub(crate) ttl: Option<Duration>,
    pub(crate) bypass: bool,
    /// Global key headers followed by the route's.
    pub(crate) key_headers: Vec<HeaderName>,
    pub(crate) tags: Vec<String>,
    pub(crate) write: WriteMode,
    /// Write-behind only: the bearer token writes must carry.
    pub(crate) write_token: Option<String>,
    /// Write-behind only: request headers writes must carry.
    pub(crate) write_requires: Vec<HeaderName>,
    /// Write-behind only: the route's `Content-Type` for stored writes.
    pub(crate) content_type: Option<HeaderValue>,
}

#[derive(Debug)]
pub(crate) struct Routes {
    globs: GlobSet,
    rules: Vec<Arc<Rule>>,
    default: Arc<Rule>,
    /// Paths of write-behind routes that accept writes from anyone.
    open_write_paths: Vec<String>,
}

impl Routes {
    pub(crate) fn new(config: &CacheConfig) -> Result<Self, ConfigError> {
        let global_headers = header_names("http.key_headers", &config.http.key_headers)?;
        let mut globs = GlobSetBuilder::new();
        let mut rules = Vec::with_capacity(config.route.len());
        let mut open_write_paths = Vec::new();
        for (index, route) in config.route.iter().enumerate() {
            let key = format!("route[{index}]");
            let glob = GlobBuilder::new(&route.path)
                .literal_separator(true)
                .build()
                .map_err(|err| {
                    ConfigError::invalid(format!("{key}.path"), err.kind().to_string())
                })?;
            globs.add(glob);
            let mut key_headers = global_headers.clone();
            key_headers.extend(header_names(
                &format!("{key}.key_headers"),
                &route.key_headers,
            )?);
            let write_requires = write_guards(&key, route)?;
            if route.write == WriteMode::Behind && route.write_auth == WriteAuth::Origin {
                open_write_paths.push(route.path.clone());
            }
            rules.push(Arc::new(Rule {
                ttl: route.ttl,
                bypass: route.bypass,
                key_headers,
                tags: route.tags.clone(),
                write: route.write,
                write_token: route.write_token.clone(),
                write_requires,
                content_type: write_content_type(&key, route)?,
            }));
        }
        let globs = globs
            .build()
            .map_err(|err| ConfigError::invalid("route", err.to_string()))?;
        Ok(Self {
            globs,
            rules,
            default: Arc::new(Rule {
                key_headers: global_headers,
                ..Rule::default()
            }),
            open_write_paths,
        })
    }

    /// Paths of the `write = "behind"` routes with `write_auth = "origin"`: anyone's write there
    /// is served until the origin refuses its replay.
    pub(crate) fn open_write_paths(&self) -> &[String] {
        &self.open_write_paths
    }

    /// The rule for `path`, when every reading of it an origin may make selects the same one;
    /// `None` when the path is ambiguous (see the module docs).
    pub(crate) fn select(&self, path: &str) -> Option<&Arc<Rule>> {
        let rule = self.rule_for(path);
        if self.rules.is_empty() || !has_other_readings(path) {
            return Some(rule);
        }
        readings(path)
            .iter()
            .all(|reading| Arc::ptr_eq(self.rule_for(reading), rule))
            .then_some(rule)
    }

    /// The first rule matching `path` as it is; shared, so each request takes it without
    /// copying.
    pub(crate) fn rule_for(&self, path: &str) -> &Arc<Rule> {
        if self.rules.is_empty() {
            return &self.default;
        }
        self.globs
            .matches(path)
            .into_iter()
            .min()
            .and_then(|index| self.rules.get(index))
            .unwrap_or(&self.default)
    }
}

/// Whether an origin may read `path` as another path: it has repeated slashes, an encoded
/// slash, backslash or percent sign, a backslash, or a `;`.
fn has_other_readings(path: &str) -> bool {
    let bytes = path.as_bytes();
    bytes.windows(2).any(|pair| pair == b"//")
        || bytes.iter().any(|byte| matches!(byte, b'\\' | b';'))
        || bytes.windows(3).any(|triple| {
            triple[0] == b'%'
                && matches!(
                    [triple[1], triple[2].to_ascii_uppercase()],
                    [b'2', b'F'] | [b'5', b'C'] | [b'2', b'5']
                )
        })
}

/// Ways of reading a path besides RFC 3986's, each applied or not, in this order.
const READINGS: [fn(&str) -> String; 5] = [
    percent_decoded,
    percent_decoded,
    backslashes_as_slashes,
    without_parameters,
    slashes_merged,
];

/// Every combination of [`READINGS`], each followed by dot-segment removal.
fn readings(path: &str) -> Vec<String> {
    (1..1u32 << READINGS.len())
        .map(|combination| {
            READINGS
                .iter()
                .enumerate()
                .filter(|(index, _)| combination & (1 << index) != 0)
                .fold(path.to_owned(), |path, (_, read)| {
                    super::target::remove_dot_segments(&read(&path))
                })
        })
        .collect()
}

fn percent_decoded(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let decoded = (bytes[index] == b'%')
            .then(|| bytes.get(index + 1..index + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match decoded {
            Some(byte) => {
                out.push(byte);
                index += 3;
            }
            None => {
                out.push(bytes[index]);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn backslashes_as_slashes(path: &str) -> String {
    path.replace('\\', "/")
}

/// Each segment without its `;` parameters, as servlet containers read it.
fn without_parameters(path: &str) -> String {
    path.split('/')
        .map(|segment| segment.split(';').next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("/")
}

fn slashes_merged(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if !(c == '/' && out.ends_with('/')) {
            out.push(c);
        }
    }
    out
}

/// The route's `write_requires` headers, after checking that its write guards fit the route:
/// only write-behind answers for the origin, so only there can the cache demand credentials;
/// and there it must, unless the route says explicitly that the origin alone checks writes.
fn write_guards(key: &str, route: &RouteConfig) -> Result<Vec<HeaderName>, ConfigError> {
    let not_behind = route.write != WriteMode::Behind;
    let guarded = route.write_token.is_some() || !route.write_requires.is_empty();
    match route.write_auth {
        WriteAuth::Origin if not_behind => {
            return Err(ConfigError::invalid(
                format!("{key}.write_auth"),
                "only write = \"behind\" routes take write_auth (the origin checks other writes)",
            ))
        }
        WriteAuth::Origin if guarded => {
            return Err(ConfigError::invalid(
                format!("{key}.write_auth"),
                "write_auth = \"origin\" accepts writes without credentials: drop it, or drop \
                 write_token and write_requires",
            ))
        }
        WriteAuth::Cache if !not_behind && !guarded => {
            return Err(ConfigError::invalid(
                format!("{key}.write_token"),
                "write = \"behind\" serves a write before the origin sees it: set write_token \
                 (or write_requires), or write_auth = \"origin\" to serve anyone's writes until \
                 the origin refuses them",
            ))
        }
        _ => {}
    }
    if let Some(token) = &route.write_token {
        if not_behind {
            return Err(ConfigError::invalid(
                format!("{key}.write_token"),
                "only write = \"behind\" routes take a write token (the origin checks other writes)",
            ));
        }
        if !token.bytes().all(|byte| byte.is_ascii_graphic()) {
            return Err(ConfigError::invalid(
                format!("{key}.write_token"),
                "must be printable ASCII without spaces, as a bearer token",
            ));
        }
    }
    if not_behind && !route.write_requires.is_empty() {
        return Err(ConfigError::invalid(
            format!("{key}.write_requires"),
            "only write = \"behind\" routes take write_requires (the origin checks other writes)",
        ));
    }
    header_names(&format!("{key}.write_requires"), &route.write_requires)
}

/// The `Content-Type` stored writes are served with: the route's, never the writer's.
fn write_content_type(key: &str, route: &RouteConfig) -> Result<Option<HeaderValue>, ConfigError> {
    let key = format!("{key}.content_type");
    match (&route.content_type, route.write) {
        (Some(_), mode) if mode != WriteMode::Behind => Err(ConfigError::invalid(
            key,
            "only write = \"behind\" routes take content_type (other writes store the origin's answer)",
        )),
        (Some(value), _) => HeaderValue::from_str(value)
            .map(Some)
            .map_err(|_| ConfigError::invalid(key, format!("invalid header value {value:?}"))),
        (None, _) => Ok(None),
    }
}

fn header_names(key: &str, names: &[String]) -> Result<Vec<HeaderName>, ConfigError> {
    names
        .iter()
        .map(|name| {
            HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| ConfigError::invalid(key, format!("invalid header name {name:?}")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RouteConfig;

    #[test]
    fn write_guards_belong_to_write_behind_routes() {
        let invalid = |route: RouteConfig| {
            let config = CacheConfig::builder().route(route).build().unwrap_err();
            config.key().map(str::to_owned)
        };
        let through = RouteConfig::new("/a/*").write(WriteMode::Through);
        assert_eq!(
            invalid(through.clone().write_token("t0ken")).as_deref(),
            Some("route[0].write_token")
        );
        assert_eq!(
            invalid(through.write_requires(["authorization"])).as_deref(),
            Some("route[0].write_requires")
        );
        let behind = RouteConfig::new("/a/*")
            .ttl(Duration::from_secs(60))
            .write(WriteMode::Behind);
        assert_eq!(
            invalid(behind.clone().write_token("two words")).as_deref(),
            Some("route[0].write_token")
        );
        assert_eq!(
            invalid(behind.clone().write_requires(["bad header"])).as_deref(),
            Some("route[0].write_requires")
        );
        assert_eq!(
            invalid(behind.clone()).as_deref(),
            Some("route[0].write_token"),
            "an unguarded write-behind route"
        );
        let open = behind.clone().write_auth(WriteAuth::Origin);
        assert_eq!(
            invalid(open.clone().write_token("t0ken")).as_deref(),
            Some("route[0].write_auth")
        );
        assert_eq!(
            invalid(
                RouteConfig::new("/a/*")
                    .write(WriteMode::Through)
                    .write_auth(WriteAuth::Origin)
            )
            .as_deref(),
            Some("route[0].write_auth")
        );
        assert_eq!(
            invalid(behind.clone().write_token("t").content_type("a\nb")).as_deref(),
            Some("route[0].content_type")
        );
        assert_eq!(
            invalid(RouteConfig::new("/a/*").content_type("text/html")).as_deref(),
            Some("route[0].content_type")
        );

        let config = CacheConfig::builder()
            .route(behind.clone().write_token("t0ken"))
            .route(
                RouteConfig::new("/b/*")
                    .ttl(Duration::from_secs(60))
                    .write(WriteMode::Behind)
                    .write_requires(["authorization"]),
            )
            .route(
                RouteConfig::new("/c/*")
                    .ttl(Duration::from_secs(60))
                    .write(WriteMode::Behind)
                    .write_auth(WriteAuth::Origin),
            )
            .build()
            .unwrap();
        assert_eq!(Routes::new(&config).unwrap().open_write_paths(), ["/c/*"]);
    }

    #[test]
    fn first_matching_route_wins_and_star_stays_in_a_segment() {
        let config = CacheConfig::builder()
            .key_header("x-tenant")
            .route(RouteConfig::new("/api/users/*").ttl(Duration::from_secs(30)))
            .route(RouteConfig::new("/api/**").bypass())
            .build()
            .unwrap();
        let routes = Routes::new(&config).unwrap();
        assert_eq!(
            routes.rule_for("/api/users/1").ttl,
            Some(Duration::from_secs(30))
        );
        assert!(routes.rule_for("/api/users/1/posts").bypass);
        assert_eq!(routes.rule_for("/other"), &routes.default);
        assert_eq!(
            routes.rule_for("/other").key_headers,
            [HeaderName::from_static("x-tenant")]
        );
    }

    #[test]
    fn paths_whose_readings_select_other_rules_are_ambiguous() {
        let config = CacheConfig::builder()
            .route(RouteConfig::new("/static/**").ttl(Duration::from_secs(60)))
            .route(RouteConfig::new("/acct/**").bypass())
            .build()
            .unwrap();
        let routes = Routes::new(&config).unwrap();
        for ambiguous in [
            "/static/..%2Facct/profile",
            "/static/..%2facct/profile",
            "/static/..%5Cacct/profile",
            "/static/..\\acct/profile",
            "/static/..%252Facct/profile",
            "/static/..;/acct/profile",
            "//acct/profile",
            "/acct%2Fpub/x",
            "/acct;x/profile",
            "/static//../acct/profile",
        ] {
            assert_eq!(routes.select(ambiguous), None, "{ambiguous}");
        }
        for clear in [
            "/static/app.js",
            "/static/a;v=2.js",
            "/acct/me",
            "/other//x",
            "/p%2Fq",
        ] {
            assert_eq!(
                routes.select(clear),
                Some(routes.rule_for(clear)),
                "{clear}"
            );
        }
        let no_routes = Routes::new(&CacheConfig::default()).unwrap();
        assert!(no_routes.select("//a%2F..;/b").is_some());
    }
}
