//! The operator's side of the metrics: `docs/metrics.md` lists exactly what `/metrics` emits,
//! the scrape passes `promtool check metrics`, `docs/alerts.yml` passes `promtool check rules`
//! and its unit tests (`promtool test rules`), and the Grafana dashboard only uses documented
//! names. The LAN relay's (issue 15) groups in `docs/alerts.yml` (`ohlcv-connector`, the OHLCV
//! connector checklist's alerts, and `ohlcv-connector-panels`, the Grafana panels' queries as
//! recording rules) have their own unit tests in `docs/alerts-test.yml`; the dashboard's relay row
//! uses only those queries. promtool comes from Debian's `prometheus` package (`scripts/test`
//! installs it).

mod control_support;

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use control_support::{Appliance, fast_engine};

const METRICS_MD: &str = include_str!("../docs/metrics.md");
const ALERTS: &str = include_str!("../docs/alerts.yml");
const DASHBOARD: &str = include_str!("../docs/grafana-dashboard.json");
const RELAY_ALERT_TESTS: &str = include_str!("../docs/alerts-test.yml");

/// The names the relay exports on its own health port (`relay.health_listen`, job
/// `ohlcv-connector`), not on the guard's /metrics: the connector's names (issue 15).
const RELAY_METRICS: &[&str] = &[
    "connector_quotes_processed_total",
    "connector_active_connections",
    "connector_circuit_breaker_state",
    "connector_queue_depth_closed",
    "connector_queue_depth_open",
    "connector_queue_blocking_events_total",
    "connector_quote_latency_seconds",
    "connector_duplicates_filtered_total",
    "connector_rest_backfills_total",
    "connector_connection_errors_total",
];
/// The Grafana dashboard's row for the relay; every panel after it is the relay's.
const RELAY_ROW: &str = "LAN relay (ohlcv-connector)";

fn promtool() -> &'static str {
    let ok = Command::new("promtool").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status();
    assert!(
        ok.is_ok_and(|s| s.success()),
        "promtool is missing: apt-get install prometheus (Debian's package ships /usr/bin/promtool; scripts/test installs it)"
    );
    "promtool"
}

/// Documented names, and which of them are conditional (*when*).
fn documented() -> (BTreeSet<String>, BTreeSet<String>) {
    let mut all = BTreeSet::new();
    let mut conditional = BTreeSet::new();
    for line in METRICS_MD.lines().filter(|l| l.starts_with("| `tickguard_")) {
        let name = line.split('`').nth(1).expect("name").to_string();
        if line.contains("*when*") {
            conditional.insert(name.clone());
        }
        all.insert(name);
    }
    (all, conditional)
}

/// tickguard's metric names referenced in a PromQL-bearing text.
fn referenced(text: &str) -> BTreeSet<String> {
    referenced_with(text, "tickguard_")
}

/// Metric names starting with `prefix` referenced in a PromQL-bearing text.
fn referenced_with(text: &str, prefix: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find(prefix) {
        let tail = &rest[i..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_sum", "_count"].iter().fold(name, |n, s| n.strip_suffix(s).unwrap_or(n));
        if base != prefix {
            out.insert(base.to_string());
        }
        rest = &tail[end..];
    }
    out
}

#[test]
fn metrics_doc_matches_the_scrape_and_promtool_likes_it() {
    // A webhook to a port nobody listens on, so the per-channel families appear.
    let a = Appliance::start_with(fast_engine(), |c| {
        c.notify = vec![tickguard::control::notify::Target::Webhook("http://127.0.0.1:9/hook".into())];
    });
    assert_eq!(a.register("m1", "BOSCHLTD", "735", "698.25", "800").status, 201);
    a.tick("BOSCHLTD", "735");
    std::thread::sleep(Duration::from_millis(100));
    let scrape = a.req("GET", "/metrics", &[], None);
    assert_eq!(scrape.status, 200);
    assert!(scrape.header("content-type").is_some_and(|c| c.starts_with("text/plain; version=0.0.4")));
    let text = scrape.text();
    let emitted: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# HELP "))
        .map(|l| l.split(' ').next().unwrap_or("").to_string())
        .collect();
    let (doc, conditional) = documented();
    let undocumented: Vec<_> = emitted.difference(&doc).collect();
    assert!(undocumented.is_empty(), "emitted but not in docs/metrics.md: {undocumented:?}");
    let missing: Vec<_> = doc.difference(&emitted).filter(|n| !conditional.contains(*n)).collect();
    assert!(missing.is_empty(), "in docs/metrics.md but not emitted: {missing:?}");
    // Every sample belongs to a family with HELP and TYPE.
    for l in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let name = l.split(['{', ' ']).next().unwrap_or("");
        let fam = ["_bucket", "_sum", "_count"].iter().fold(name, |n, s| n.strip_suffix(s).unwrap_or(n));
        assert!(emitted.contains(fam), "sample without a family: {l}");
        let value = l.rsplit(' ').next().unwrap_or("");
        assert!(value.parse::<f64>().is_ok(), "bad value in {l}");
    }
    // promtool's own reading of the exposition.
    let mut child = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("write");
    let out = child.wait_with_output().expect("promtool");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool check metrics:\n{said}");
    assert!(said.trim().is_empty(), "promtool lint findings:\n{said}");
}

/// The rules of the group `name` in docs/alerts.yml.
fn group<'a>(doc: &'a serde_json::Value, name: &str) -> &'a Vec<serde_json::Value> {
    let groups = doc["groups"].as_array().expect("groups");
    let g = groups.iter().find(|g| g["name"] == name).unwrap_or_else(|| panic!("no group {name}"));
    g["rules"].as_array().expect("rules")
}

#[test]
fn alert_rules_check_and_fire_when_they_should() {
    let p = promtool();
    let rules = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/alerts.yml");
    let out = Command::new(p).args(["check", "rules", rules]).output().expect("promtool");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let (doc, _) = documented();
    let unknown: Vec<_> = referenced(ALERTS).into_iter().filter(|n| !doc.contains(n)).collect();
    assert!(unknown.is_empty(), "alerts.yml uses undocumented names: {unknown:?}");

    let dir = std::env::temp_dir().join(format!("tg-promtool-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    // The expected annotations are the rules' own, rendered for the test's labels and values.
    let doc: serde_json::Value = serde_yaml_ng::from_str(ALERTS).expect("alerts.yml is YAML");
    let rule_list = group(&doc, "tickguard").clone();
    let expect = |alert: &str, value: &str, extra_labels: &str| -> String {
        let r = rule_list.iter().find(|r| r["alert"] == alert).unwrap_or_else(|| panic!("no rule {alert}"));
        let render = |k: &str| {
            let t = r["annotations"][k].as_str().unwrap_or("");
            let t = t.replace("{{ $labels.instance }}", "box:8000").replace("{{ $value }}", value);
            serde_json::Value::String(t).to_string()
        };
        let sev = r["labels"]["severity"].as_str().unwrap_or("");
        format!(
            "\n          - exp_labels: {{severity: {sev}, job: tickguard, instance: \"box:8000\"{extra_labels}}}\n            exp_annotations: {{summary: {}, description: {}}}",
            render("summary"),
            render("description")
        )
    };
    let test = format!(
        r#"rule_files:
  - {rules_file}
evaluation_interval: 15s
tests:
  - interval: 15s
    input_series:
      - series: 'tickguard_feed_connected{{job="tickguard",instance="box:8000"}}'
        values: '1 1 0 0 0 0 0 0 0 0 1'
      - series: 'tickguard_blind_positions{{job="tickguard",instance="box:8000"}}'
        values: '0 0 0 0 0 2 2 0 0 0 0'
      - series: 'tickguard_positions{{job="tickguard",instance="box:8000",state="close_failed"}}'
        values: '0 0 0 0 0 0 1 1 1 1 1'
      - series: 'tickguard_price_age_max_seconds{{job="tickguard",instance="box:8000"}}'
        values: '1 1 5 20 45 60 75 90 105 120 1'
      - series: 'tickguard_engine_responding{{job="tickguard",instance="box:8000"}}'
        values: '1x10'
      - series: 'tickguard_engine_turns_total{{job="tickguard",instance="box:8000"}}'
        values: '0+100x10'
      - series: 'up{{job="tickguard",instance="box:8000"}}'
        values: '1x10'
    alert_rule_test:
      - eval_time: 30s
        alertname: TickguardFeedDown
        exp_alerts: []
      - eval_time: 1m30s
        alertname: TickguardFeedDown
        exp_alerts:{feed}
      - eval_time: 75s
        alertname: TickguardBlindPosition
        exp_alerts:{blind}
      - eval_time: 105s
        alertname: TickguardBlindPosition
        exp_alerts: []
      - eval_time: 90s
        alertname: TickguardCloseFailed
        exp_alerts:{failed}
      - eval_time: 105s
        alertname: TickguardPriceStale
        exp_alerts: []
      - eval_time: 2m
        alertname: TickguardPriceStale
        exp_alerts:{stale}
      - eval_time: 2m
        alertname: TickguardEngineStalled
        exp_alerts: []
      - eval_time: 2m
        alertname: TickguardDown
        exp_alerts: []
"#,
        rules_file = rules,
        feed = expect("TickguardFeedDown", "0", ""),
        blind = expect("TickguardBlindPosition", "2", ""),
        failed = expect("TickguardCloseFailed", "1", ", state: close_failed"),
        stale = expect("TickguardPriceStale", "105", ""),
    );
    let file = dir.join("alerts_test.yml");
    std::fs::write(&file, test).expect("write");
    let out = Command::new(p).arg("test").arg("rules").arg(&file).output().expect("promtool");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_dashboard_uses_documented_metrics() {
    let v: serde_json::Value = serde_json::from_str(DASHBOARD).expect("docs/grafana-dashboard.json is JSON");
    assert_eq!(v["uid"], "tickguard");
    let panels = v["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10);
    let (doc, _) = documented();
    let used = referenced(DASHBOARD);
    let unknown: Vec<_> = used.iter().filter(|n| !doc.contains(*n)).collect();
    assert!(unknown.is_empty(), "dashboard uses undocumented names: {unknown:?}");
    for must in ["tickguard_blind_positions", "tickguard_tick_to_action_seconds", "tickguard_feed_connected"]
    {
        assert!(used.contains(must), "dashboard shows {must}");
    }

    // The relay's row: its panels come from the relay's own /metrics (job ohlcv-connector), so
    // they use only the relay's names, each query exactly one of the recording rules that
    // promtool checks and tests; the guard's panels use none of the relay's names.
    let row = panels
        .iter()
        .position(|p| p["type"] == "row" && p["title"] == RELAY_ROW)
        .unwrap_or_else(|| panic!("dashboard has the row {RELAY_ROW:?}"));
    let (guard_panels, relay_panels) = (&panels[..row], &panels[row + 1..]);
    assert_eq!(relay_panels.len(), 6, "the checklist's six panels");
    let alerts: serde_json::Value = serde_yaml_ng::from_str(ALERTS).expect("alerts.yml is YAML");
    let recorded: Vec<&str> =
        group(&alerts, "ohlcv-connector-panels").iter().map(|r| r["expr"].as_str().expect("expr")).collect();
    let mut shown = BTreeSet::new();
    for p in relay_panels {
        assert_eq!(p["datasource"], panels[0]["datasource"], "{}: the dashboard's datasource", p["title"]);
        for t in p["targets"].as_array().expect("targets") {
            let expr = t["expr"].as_str().expect("expr");
            assert!(
                recorded.contains(&expr),
                "{}: {expr:?} is not a recording rule in alerts.yml",
                p["title"]
            );
            assert!(referenced(expr).is_empty(), "{}: a guard metric in the relay's row: {expr}", p["title"]);
            shown.insert(expr);
        }
    }
    assert_eq!(shown.len(), recorded.len(), "every recorded panel query is on the dashboard");
    let relay_names = referenced_with(&serde_json::to_string(relay_panels).expect("json"), "connector_");
    let unknown: Vec<_> = relay_names.iter().filter(|n| !RELAY_METRICS.contains(&n.as_str())).collect();
    assert!(unknown.is_empty(), "relay panels use names the relay does not export: {unknown:?}");
    let guard_text = serde_json::to_string(guard_panels).expect("json");
    assert!(referenced_with(&guard_text, "connector_").is_empty(), "relay metrics above the relay's row");
}

/// The OHLCV connector checklist's alerts, exactly as it writes them.
#[test]
fn relay_alert_rules_are_the_checklists() {
    let doc: serde_json::Value = serde_yaml_ng::from_str(ALERTS).expect("alerts.yml is YAML");
    let rules = group(&doc, "ohlcv-connector");
    let seed = [
        ("ConnectorDown", r#"up{job="ohlcv-connector"} == 0"#, "1m", "Connector is down"),
        (
            "CircuitBreakerOpen",
            "connector_circuit_breaker_state > 0",
            "2m",
            "Circuit breaker open for {{ $labels.exchange }}",
        ),
        ("HighQueueDepth", "connector_queue_depth_closed > 800", "5m", "Queue depth critical (>80% full)"),
        (
            "HighLatency",
            "histogram_quantile(0.95, rate(connector_quote_latency_seconds_bucket[5m])) > 2",
            "5m",
            "High quote latency (P95 > 2s)",
        ),
    ];
    assert_eq!(rules.len(), seed.len());
    for (r, (alert, expr, for_, summary)) in rules.iter().zip(seed) {
        assert_eq!(r["alert"], alert);
        assert_eq!(r["expr"], expr, "{alert}");
        assert_eq!(r["for"], for_, "{alert}");
        assert_eq!(r["annotations"]["summary"], summary, "{alert}");
    }
    let names = referenced_with(ALERTS, "connector_");
    let unknown: Vec<_> = names.iter().filter(|n| !RELAY_METRICS.contains(&n.as_str())).collect();
    assert!(unknown.is_empty(), "alerts.yml uses names the relay does not export: {unknown:?}");
}

/// `promtool test rules docs/alerts-test.yml`: each relay alert fires after its `for` above its
/// threshold and not at it or below, and the panels' recording rules give the expected values.
#[test]
fn relay_alert_rules_pass_their_unit_tests() {
    let p = promtool();
    let tests = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/alerts-test.yml");
    let out = Command::new(p).args(["test", "rules", tests]).output().expect("promtool");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Every relay alert has a case where it fires and one where it does not; every recording
    // rule is evaluated.
    let t: serde_json::Value = serde_yaml_ng::from_str(RELAY_ALERT_TESTS).expect("alerts-test.yml is YAML");
    let cases: Vec<&serde_json::Value> = t["tests"]
        .as_array()
        .expect("tests")
        .iter()
        .flat_map(|g| g["alert_rule_test"].as_array().into_iter().flatten())
        .collect();
    let doc: serde_json::Value = serde_yaml_ng::from_str(ALERTS).expect("alerts.yml is YAML");
    for r in group(&doc, "ohlcv-connector") {
        let name = r["alert"].as_str().expect("alert");
        let mine: Vec<_> = cases.iter().filter(|c| c["alertname"] == name).collect();
        let fires = |c: &&&serde_json::Value| c["exp_alerts"].as_array().is_some_and(|a| !a.is_empty());
        assert!(mine.iter().any(fires), "no test where {name} fires");
        assert!(mine.iter().any(|c| !fires(c)), "no test where {name} does not fire");
    }
    let exprs: Vec<&str> = t["tests"]
        .as_array()
        .expect("tests")
        .iter()
        .flat_map(|g| g["promql_expr_test"].as_array().into_iter().flatten())
        .filter_map(|c| c["expr"].as_str())
        .collect();
    for r in group(&doc, "ohlcv-connector-panels") {
        let name = r["record"].as_str().expect("record");
        assert!(exprs.iter().any(|e| e.contains(name)), "no promql_expr_test of {name}");
    }
}
