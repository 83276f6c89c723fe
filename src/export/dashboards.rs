//! The Grafana dashboards in `dashboards/`, read as data: every panel's
//! PromQL, the template variables, and the metric names they use. The unit
//! tests check each query against what the exporter renders, and the VM
//! test evaluates each one through a real Prometheus, so the dashboards and
//! the exporter cannot drift apart.

use std::collections::BTreeSet;

use serde_json::Value;

/// The dashboards shipped, by file name (embedded, so tests and tools need
/// no path).
pub const DASHBOARDS: [(&str, &str); 1] =
    [("skprof.json", include_str!("../../dashboards/skprof.json"))];

/// One query of one panel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PanelQuery {
    pub panel: String,
    pub ref_id: String,
    pub expr: String,
}

/// Every panel's queries, rows' nested panels included, in order.
pub fn panel_queries(dashboard: &Value) -> Vec<PanelQuery> {
    let mut out = Vec::new();
    collect(dashboard.get("panels"), &mut out);
    out
}

fn collect(panels: Option<&Value>, out: &mut Vec<PanelQuery>) {
    let Some(panels) = panels.and_then(Value::as_array) else {
        return;
    };
    for p in panels {
        let title = p["title"].as_str().unwrap_or("").to_string();
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = t["expr"].as_str() {
                out.push(PanelQuery {
                    panel: title.clone(),
                    ref_id: t["refId"].as_str().unwrap_or("").to_string(),
                    expr: expr.to_string(),
                });
            }
        }
        collect(p.get("panels"), out);
    }
}

/// Panels (rows excluded) and how many queries each has.
pub fn panels(dashboard: &Value) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    fn walk(panels: Option<&Value>, out: &mut Vec<(String, usize)>) {
        for p in panels.and_then(Value::as_array).into_iter().flatten() {
            if p["type"] != "row" {
                let n = p["targets"].as_array().map_or(0, Vec::len);
                out.push((p["title"].as_str().unwrap_or("").to_string(), n));
            }
            walk(p.get("panels"), out);
        }
    }
    walk(dashboard.get("panels"), &mut out);
    out
}

/// The query variables: (name, PromQL that lists their values). Grafana's
/// `label_values(METRIC, LABEL)` becomes `group by (LABEL) (METRIC)`, which
/// returns the same label values.
pub fn variable_queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for v in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if v["type"] != "query" {
            continue;
        }
        let q = match &v["query"] {
            Value::String(s) => s.clone(),
            o => o["query"].as_str().unwrap_or("").to_string(),
        };
        let name = v["name"].as_str().unwrap_or("").to_string();
        let promql = match q
            .trim()
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
            .and_then(|r| r.rsplit_once(','))
        {
            Some((metric, label)) => format!("group by ({}) ({})", label.trim(), metric.trim()),
            None => q,
        };
        out.push((name, promql));
    }
    out
}

/// A query as Grafana would send it with every variable at "All": the
/// rate window set to `window`, each `$var` / `${var}` matching anything.
pub fn instantiate(expr: &str, window: &str) -> String {
    let mut s = expr
        .replace("$__rate_interval", window)
        .replace("${__rate_interval}", window)
        .replace("$__interval", window)
        .replace("$__range", window);
    // Remaining variables sit in label matchers (`=~"$helper"`).
    while let Some(i) = s.find('$') {
        let rest = &s[i + 1..];
        let name_len = match rest.strip_prefix('{') {
            // `{name}`: through the closing brace.
            Some(r) => r.find('}').map_or(rest.len(), |e| e + 2),
            None => rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len()),
        };
        s.replace_range(i..i + 1 + name_len, ".*");
    }
    s
}

/// The `skprof_*` metric names a query uses.
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = expr.as_bytes();
    let mut i = 0;
    while let Some(off) = expr[i..].find("skprof_") {
        let start = i + off;
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        let preceded = start > 0 && (b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'_');
        if !preceded {
            out.insert(expr[start..end].to_string());
        }
        i = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::tests::sample_exposition;

    fn dashboards() -> Vec<(&'static str, Value)> {
        DASHBOARDS
            .iter()
            .map(|(name, text)| {
                (
                    *name,
                    serde_json::from_str(text).unwrap_or_else(|e| panic!("{name}: {e}")),
                )
            })
            .collect()
    }

    #[test]
    fn extraction_finds_nested_panels_and_variables() {
        let d: Value = serde_json::json!({
            "panels": [
                {"type": "timeseries", "title": "a", "targets": [{"refId": "A", "expr": "x"}]},
                {"type": "row", "title": "r", "panels": [
                    {"type": "stat", "title": "b", "targets": [
                        {"refId": "A", "expr": "y"}, {"refId": "B", "expr": "z"}]}
                ]}
            ],
            "templating": {"list": [
                {"type": "datasource", "name": "datasource"},
                {"type": "query", "name": "helper",
                 "query": {"query": "label_values(skprof_helper_calls_total, helper)"}}
            ]}
        });
        let q: Vec<(String, String)> = panel_queries(&d)
            .into_iter()
            .map(|q| (q.panel, q.expr))
            .collect();
        assert_eq!(
            q,
            [("a", "x"), ("b", "y"), ("b", "z")]
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .to_vec()
        );
        assert_eq!(panels(&d), vec![("a".into(), 1), ("b".into(), 2)]);
        assert_eq!(
            variable_queries(&d),
            vec![(
                "helper".to_string(),
                "group by (helper) (skprof_helper_calls_total)".to_string()
            )]
        );
    }

    #[test]
    fn variables_are_instantiated() {
        assert_eq!(
            instantiate(
                r#"sum by (helper) (rate(skprof_helper_calls_total{helper=~"$helper",program=~"${program}"}[$__rate_interval]))"#,
                "1m"
            ),
            r#"sum by (helper) (rate(skprof_helper_calls_total{helper=~".*",program=~".*"}[1m]))"#
        );
        assert_eq!(
            metric_names("a(skprof_x_total) / b(rate(skprof_y_bucket[1m])) + not_skprof_z"),
            ["skprof_x_total", "skprof_y_bucket"]
                .map(String::from)
                .into()
        );
    }

    /// Every query names only metrics the exporter renders, every panel
    /// has a query, and the variables list labels that exist.
    #[test]
    fn every_query_uses_exported_metrics() {
        let exposition = sample_exposition();
        let exported: BTreeSet<String> = exposition
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split(['{', ' ']).next())
            .map(String::from)
            .collect();
        for (file, d) in dashboards() {
            let queries = panel_queries(&d);
            assert!(queries.len() >= 12, "{file}: {} queries", queries.len());
            for (title, n) in panels(&d) {
                assert!(n > 0, "{file}: panel {title:?} has no query");
            }
            for q in &queries {
                let names = metric_names(&q.expr);
                assert!(!names.is_empty(), "{file} {:?}: no skprof metric", q.panel);
                for n in names {
                    assert!(
                        exported.contains(&n),
                        "{file} panel {:?}: {n} is not exported (have {exported:?})",
                        q.panel
                    );
                }
                assert!(
                    !instantiate(&q.expr, "1m").contains('$'),
                    "{file} {:?}: variable left in {}",
                    q.panel,
                    q.expr
                );
            }
            let vars = variable_queries(&d);
            assert!(vars.iter().any(|(n, _)| n == "helper"), "{file}: {vars:?}");
            assert!(vars.iter().any(|(n, _)| n == "program"), "{file}: {vars:?}");
            for (_, q) in vars {
                for n in metric_names(&q) {
                    assert!(exported.contains(&n), "{file}: variable uses {n}");
                }
            }
            // The required views are there.
            let titles: Vec<String> = panels(&d).into_iter().map(|p| p.0).collect();
            for want in [
                "Call rate by helper",
                "Hit ratio by helper",
                "Latency heatmap",
                "p99 latency by helper",
                "p99 latency by program",
                "References outstanding",
                "References leaked",
                "Drops",
            ] {
                assert!(
                    titles.iter().any(|t| t == want),
                    "{file}: no panel {want:?}"
                );
            }
        }
    }

    #[test]
    fn provisioning_names_the_dashboard_datasource() {
        let ds = include_str!("../../dashboards/provisioning/datasources/skprof.yaml");
        let dash = include_str!("../../dashboards/provisioning/dashboards/skprof.yaml");
        assert!(ds.contains("uid: skprof-prometheus") && ds.contains("type: prometheus"));
        assert!(dash.contains("path: /var/lib/grafana/dashboards/skprof"));
        for (file, d) in dashboards() {
            let ds_var = d["templating"]["list"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["type"] == "datasource")
                .unwrap_or_else(|| panic!("{file}: no datasource variable"));
            assert_eq!(ds_var["query"], "prometheus", "{file}");
        }
    }
}
