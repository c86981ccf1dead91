//! `[[route]]` rules, compiled once: the first rule whose glob matches the path applies.

use std::sync::Arc;
use std::time::Duration;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use http::HeaderName;

use crate::config::{CacheConfig, ConfigError, RouteConfig, WriteMode};

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
            if route.write == WriteMode::Behind
                && route.write_token.is_none()
                && write_requires.is_empty()
            {
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

    /// Paths of the `write = "behind"` routes with neither `write_token` nor `write_requires`:
    /// anyone's write there is served until the origin refuses its replay.
    pub(crate) fn open_write_paths(&self) -> &[String] {
        &self.open_write_paths
    }

    /// Shared, so each request takes it without copying.
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

/// The route's `write_requires` headers, after checking that its write guards fit the route:
/// only write-behind answers for the origin, so only there can the cache demand credentials.
fn write_guards(key: &str, route: &RouteConfig) -> Result<Vec<HeaderName>, ConfigError> {
    let not_behind = route.write != WriteMode::Behind;
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
        let behind = RouteConfig::new("/a/*").write(WriteMode::Behind);
        assert_eq!(
            invalid(behind.clone().write_token("two words")).as_deref(),
            Some("route[0].write_token")
        );
        assert_eq!(
            invalid(behind.clone().write_requires(["bad header"])).as_deref(),
            Some("route[0].write_requires")
        );

        let config = CacheConfig::builder()
            .route(behind.clone().write_token("t0ken"))
            .route(
                RouteConfig::new("/b/*")
                    .write(WriteMode::Behind)
                    .write_requires(["authorization"]),
            )
            .route(RouteConfig::new("/c/*").write(WriteMode::Behind))
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
}
