//! The Grafana dashboard in `examples/grafana-dashboard.json` imports as is (every panel reads
//! the Prometheus data source chosen in its `datasource` variable), and it queries only what the
//! crate emits: every metric, label and label value in its PromQL is found in the text that
//! metrics-exporter-prometheus renders after traffic that feeds every panel.
#![cfg(all(feature = "metrics", feature = "redis"))]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use common::origin::{get, origin, request, send, Cached};
use common::{config, RedisServer};
use http_body_util::Full;
use metrics_exporter_prometheus::PrometheusBuilder;
use serde_json::Value;
use tower::Layer;
use tower_tiered_cache::config::{RouteConfig, WriteAuth, WriteMode};
use tower_tiered_cache::{CacheLayer, CachedEntry};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

/// Labels Prometheus adds to every series it scrapes: a query may select on them.
const SCRAPE_LABELS: [&str; 2] = ["instance", "job"];

/// PromQL words that are neither metrics nor functions.
const KEYWORDS: [&str; 11] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
];

fn dashboard() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/grafana-dashboard.json"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|err| panic!("{path}: {err}"));
    serde_json::from_str(&text).unwrap_or_else(|err| panic!("{path}: {err}"))
}

/// Every panel, those inside collapsed rows included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(panels: &'a Value, into: &mut Vec<&'a Value>) {
        for panel in panels.as_array().into_iter().flatten() {
            into.push(panel);
            walk(&panel["panels"], into);
        }
    }
    let mut all = Vec::new();
    walk(&dashboard["panels"], &mut all);
    all
}

fn title(panel: &Value) -> &str {
    panel["title"].as_str().unwrap_or("(untitled)")
}

#[test]
fn every_panel_queries_prometheus_through_the_datasource_variable() {
    let dashboard = dashboard();
    assert!(
        dashboard["schemaVersion"].as_u64().is_some(),
        "an importable dashboard has a schemaVersion"
    );
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("variables");
    let datasource = variables
        .iter()
        .find(|variable| variable["type"] == "datasource" && variable["query"] == "prometheus")
        .and_then(|variable| variable["name"].as_str())
        .expect("a Prometheus datasource variable");
    let uid = format!("${{{datasource}}}");

    let mut ids = BTreeSet::new();
    for panel in panels(&dashboard)
        .into_iter()
        .filter(|p| p["type"] != "row")
    {
        let title = title(panel);
        assert!(ids.insert(panel["id"].as_u64()), "{title}: duplicate id");
        assert!(panel["gridPos"]["w"].as_u64().is_some(), "{title}: gridPos");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        for source in std::iter::once(panel).chain(targets) {
            assert_eq!(source["datasource"]["type"], "prometheus", "{title}");
            assert_eq!(source["datasource"]["uid"], uid.as_str(), "{title}");
        }
        let ref_ids: BTreeSet<_> = targets.iter().map(|t| t["refId"].as_str()).collect();
        assert_eq!(ref_ids.len(), targets.len(), "{title}: refIds repeat");
        assert!(
            targets.iter().all(|t| t["expr"].as_str().is_some()),
            "{title}: a target without expr"
        );
    }
}

#[tokio::test]
async fn every_metric_the_dashboard_queries_is_one_the_crate_emits() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    // A current-thread runtime: the layer, its Redis client and its write-behind workers all
    // run on this thread, so they all record into this test's own recorder.
    let scraped = {
        let _local = metrics::set_default_local_recorder(&recorder);
        feed_every_panel().await;
        handle.render()
    };
    let emitted = Emitted::parse(&scraped);

    let mut problems = Vec::new();
    let dashboard = dashboard();
    for panel in panels(&dashboard) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap_or_default();
            let legend = target["legendFormat"].as_str().unwrap_or_default();
            let context = format!("{:?} `{expr}`", title(panel));
            problems.extend(
                emitted
                    .check(expr, legend)
                    .into_iter()
                    .map(|p| format!("{context}: {p}")),
            );
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(query) = variable["query"]["query"].as_str() {
            problems.extend(emitted.check_label_values(query));
        }
    }
    assert!(
        problems.is_empty(),
        "the dashboard queries what the crate does not emit:\n{}\n\nthe crate emitted:\n{scraped}",
        problems.join("\n")
    );
}

/// Traffic that makes the crate emit every series the dashboard reads: memory and Redis hits,
/// misses, a coalesced library load, a write-behind write, an L2 error and an open circuit.
async fn feed_every_panel() {
    let mut redis = RedisServer::start();
    let server = MockServer::start().await;
    // Larger than 1/16 of the memory budget below, so storing it publishes the memory size.
    let body = "x".repeat(8 * 1024);
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("cache-control", "max-age=60")
                .set_body_string(body),
        )
        .mount(&server)
        .await;
    Mock::given(method("PUT"))
        .respond_with(ResponseTemplate::new(204))
        .mount(&server)
        .await;
    let instance = || async {
        let config = config("dashboard")
            .redis_url(redis.url())
            .l1_size(64 * 1024)
            // One failure opens the circuit, which then stays open for the rest of the test.
            .l2_breaker(1, Duration::from_secs(600))
            .route(
                RouteConfig::new("/docs/*")
                    .ttl(Duration::from_secs(60))
                    .write(WriteMode::Behind)
                    .write_auth(WriteAuth::Origin),
            )
            .build()
            .unwrap();
        let layer = CacheLayer::new(config)
            .write_behind_to(origin(&server))
            .unwrap();
        assert!(layer.cache().wait_for_redis(Duration::from_secs(5)).await);
        layer.layer(origin(&server))
    };
    let first = instance().await;
    let second = instance().await;

    send(&first, get("/page", &[])).await; // miss, stored in memory and Redis
    first.cache().wait_for_writes().await;
    send(&first, get("/page", &[])).await; // memory hit
    send(&second, get("/page", &[])).await; // Redis hit
    coalesced_load(&first).await;
    let mut write = request("PUT", "/docs/note", &[("content-type", "text/plain")]);
    *write.body_mut() = Full::new(Bytes::from("note"));
    send(&first, write).await; // queued for write-behind

    redis.kill();
    // The Redis read fails (an L2 error, opening the circuit); the Redis write is then skipped.
    send(&first, get("/after-redis", &[])).await;
}

/// Two library callers of one missing key: one loads, the other waits for its load.
async fn coalesced_load(service: &Cached) {
    let cache = service.cache();
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let load = || async {
        Ok::<_, std::convert::Infallible>(CachedEntry::new("value", Duration::from_secs(60)))
    };
    // join! polls in order: the leader starts the load and waits for `released`, the follower
    // joins it, and only then is the load released.
    let (leader, follower, ()) = tokio::join!(
        cache.get_or_set("library", || async {
            released.await.ok();
            load().await
        }),
        cache.get_or_set("library", load),
        async {
            let _ = release.send(());
        },
    );
    assert!(leader.is_ok() && follower.is_ok());
}

/// The series the exporter rendered: each name with the label pairs seen on it.
struct Emitted(BTreeMap<String, BTreeSet<(String, String)>>);

impl Emitted {
    fn parse(scraped: &str) -> Self {
        let mut series: BTreeMap<String, BTreeSet<(String, String)>> = BTreeMap::new();
        for line in scraped.lines().filter(|line| !line.starts_with('#')) {
            let Some((series_text, _value)) = line.rsplit_once(' ') else {
                continue;
            };
            let (name, labels) = match series_text.split_once('{') {
                Some((name, labels)) => (name, matchers(labels).0),
                None => (series_text, Vec::new()),
            };
            let pairs = series.entry(name.to_owned()).or_default();
            pairs.extend(labels.into_iter().map(|m| (m.label, m.value)));
        }
        Self(series)
    }

    fn label_names(&self, metric: &str) -> BTreeSet<&str> {
        let pairs = self.0.get(metric).into_iter().flatten();
        pairs
            .map(|(label, _)| label.as_str())
            .chain(SCRAPE_LABELS)
            .collect()
    }

    /// What in one panel query is not emitted: metrics, labels, label values, and the labels
    /// its grouping and legend name.
    fn check(&self, expr: &str, legend: &str) -> Vec<String> {
        let query = Query::parse(expr);
        let mut problems = Vec::new();
        if query.selectors.is_empty() {
            problems.push("selects no metric".to_owned());
        }
        let mut labels = BTreeSet::new();
        for selector in &query.selectors {
            if !self.0.contains_key(&selector.metric) {
                problems.push(format!("metric {} is not emitted", selector.metric));
                continue;
            }
            labels.extend(self.label_names(&selector.metric));
            problems.extend(self.check_matchers(selector));
        }
        let grouped: BTreeSet<&str> = query.grouping.iter().map(String::as_str).collect();
        for label in grouped.difference(&labels) {
            problems.push(format!("groups by {label}, which its metrics do not have"));
        }
        // After an aggregation only its `by` labels are left for the legend to show.
        let kept = if grouped.is_empty() {
            &labels
        } else {
            &grouped
        };
        for label in legend_labels(legend) {
            if !kept.contains(label) {
                problems.push(format!(
                    "legend names {label}, which the query does not keep"
                ));
            }
        }
        problems
    }

    fn check_matchers(&self, selector: &Selector) -> Vec<String> {
        let metric = &selector.metric;
        let names = self.label_names(metric);
        let mut problems = Vec::new();
        for matcher in &selector.matchers {
            if !names.contains(matcher.label.as_str()) {
                problems.push(format!("{metric} has no label {}", matcher.label));
                continue;
            }
            for value in matcher.values() {
                let pair = (matcher.label.clone(), value.to_owned());
                if !self.0[metric].contains(&pair) {
                    problems.push(format!("{metric} never has {}={value:?}", matcher.label));
                }
            }
        }
        problems
    }

    /// A `label_values(metric, label)` variable query.
    fn check_label_values(&self, query: &str) -> Option<String> {
        let arguments = query.strip_prefix("label_values(")?.strip_suffix(')')?;
        let (metric, label) = arguments.split_once(',')?;
        let (metric, label) = (metric.trim(), label.trim());
        let known = self.0.contains_key(metric) && self.label_names(metric).contains(label);
        (!known)
            .then(|| format!("variable query {query}: {metric} with label {label} is not emitted"))
    }
}

/// `{{label}}` placeholders of a legend.
fn legend_labels(legend: &str) -> Vec<&str> {
    legend
        .split("{{")
        .skip(1)
        .filter_map(|part| part.split_once("}}").map(|(label, _)| label.trim()))
        .collect()
}

/// What a PromQL expression reads: its metric selectors and its `by`/`without` labels.
#[derive(Default)]
struct Query {
    selectors: Vec<Selector>,
    grouping: Vec<String>,
}

struct Selector {
    metric: String,
    matchers: Vec<Matcher>,
}

struct Matcher {
    label: String,
    op: String,
    value: String,
}

impl Matcher {
    /// The label values this matcher names: one for `=`, each alternative of a plain `a|b`
    /// for `=~`; none for negations, patterns, dashboard variables and scrape labels.
    fn values(&self) -> Vec<&str> {
        let named = match self.op.as_str() {
            "=" => !self.value.contains('$'),
            "=~" => (self.value.chars()).all(|c| c.is_ascii_alphanumeric() || "_|".contains(c)),
            _ => false,
        };
        if !named || SCRAPE_LABELS.contains(&self.label.as_str()) {
            return Vec::new();
        }
        self.value.split('|').collect()
    }
}

impl Query {
    fn parse(expr: &str) -> Self {
        let mut query = Self::default();
        let mut rest = expr;
        while let Some(next) = rest.chars().next() {
            rest = if next == '"' {
                skip_string(rest)
            } else if next == '[' {
                // A range (`[5m]`, `[$__rate_interval]`).
                rest.split_once(']').map_or("", |(_, after)| after)
            } else if next.is_ascii_digit() {
                rest.trim_start_matches(|c: char| c.is_ascii_alphanumeric() || c == '.')
            } else if next.is_ascii_alphabetic() || next == '_' || next == ':' {
                query.word(rest)
            } else {
                &rest[next.len_utf8()..]
            };
        }
        query
    }

    /// Reads the word at the start of `text` (a function, keyword or metric) and what belongs
    /// to it; returns the rest.
    fn word<'a>(&mut self, text: &'a str) -> &'a str {
        let end = text
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(text.len());
        let (word, rest) = text.split_at(end);
        let after = rest.trim_start();
        if word == "by" || word == "without" {
            let Some((labels, rest)) = after.strip_prefix('(').and_then(|l| l.split_once(')'))
            else {
                return rest;
            };
            self.grouping.extend(
                labels
                    .split(',')
                    .map(|l| l.trim().to_owned())
                    .filter(|l| !l.is_empty()),
            );
            return rest;
        }
        // A function call, or an aggregation whose `by`/`without` comes before its argument.
        let applied = after.starts_with('(')
            || ["by", "without"].iter().any(|clause| {
                after
                    .strip_prefix(clause)
                    .is_some_and(|tail| tail.trim_start().starts_with('('))
            });
        if KEYWORDS.contains(&word) || applied {
            return rest;
        }
        let (matchers, rest) = match after.strip_prefix('{') {
            Some(inside) => matchers(inside),
            None => (Vec::new(), rest),
        };
        self.selectors.push(Selector {
            metric: word.to_owned(),
            matchers,
        });
        rest
    }
}

/// The matchers of a selector, from just after its `{`: `label op "value"` pairs up to the
/// closing `}`, and the text after it.
fn matchers(mut text: &str) -> (Vec<Matcher>, &str) {
    let mut found = Vec::new();
    loop {
        text = text.trim_start_matches(|c: char| c == ',' || c.is_whitespace());
        if let Some(rest) = text.strip_prefix('}') {
            return (found, rest);
        }
        let Some(op_at) = text.find(['=', '!']) else {
            return (found, "");
        };
        let label = text[..op_at].trim().to_owned();
        let op_len = if text[op_at + 1..].starts_with(['=', '~']) {
            2
        } else {
            1
        };
        let op = text[op_at..op_at + op_len].to_owned();
        let quoted = text[op_at + op_len..].trim_start();
        if !quoted.starts_with('"') {
            return (found, "");
        }
        let rest = skip_string(quoted);
        let value = quoted[1..quoted.len() - rest.len() - 1].replace("\\\"", "\"");
        found.push(Matcher { label, op, value });
        text = rest;
    }
}

/// The text after the double-quoted string at the start of `text` (escapes honoured).
fn skip_string(text: &str) -> &str {
    let mut escaped = false;
    for (at, c) in text.char_indices().skip(1) {
        match c {
            '\\' if !escaped => escaped = true,
            '"' if !escaped => return &text[at + 1..],
            _ => escaped = false,
        }
    }
    ""
}
