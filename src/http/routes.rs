//! `[[route]]` rules, compiled once: the first rule whose glob matches the path applies.

use std::sync::Arc;
use std::time::Duration;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use http::HeaderName;

use crate::config::{CacheConfig, ConfigError, WriteMode};

/// What applies to one request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Rule {
    pub(crate) ttl: Option<Duration>,
    pub(crate) bypass: bool,
    /// Global key headers followed by the route's.
    pub(crate) key_headers: Vec<HeaderName>,
    pub(crate) tags: Vec<String>,
    pub(crate) write: WriteMode,
}

#[derive(Debug)]
pub(crate) struct Routes {
    globs: GlobSet,
    rules: Vec<Arc<Rule>>,
    default: Arc<Rule>,
}

impl Routes {
    pub(crate) fn new(config: &CacheConfig) -> Result<Self, ConfigError> {
        let global_headers = header_names("http.key_headers", &config.http.key_headers)?;
        let mut globs = GlobSetBuilder::new();
        let mut rules = Vec::with_capacity(config.route.len());
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
            rules.push(Arc::new(Rule {
                ttl: route.ttl,
                bypass: route.bypass,
                key_headers,
                tags: route.tags.clone(),
                write: route.write,
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
        })
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
