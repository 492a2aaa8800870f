//! `docs/relay.md` against the relay's protocol: every `Schema: <type>` JSON block is a strict
//! JSON Schema (draft 2020-12) that real messages made by `tickguard::relay::protocol` validate
//! against; every message type the protocol has is documented; every `Example:` validates
//! against its schema (and every example request parses); every `relay.*` key of
//! `docs/configuration.md`, every `CONNECTOR_*` name, every request field and every metric the
//! relay exports is mentioned.
//!
//! The validator is small and written here: `type` (a name or a list, so `["integer","null"]`
//! is nullable), `required`, `properties`, `additionalProperties` (false or a schema), `items`,
//! `enum`, `const`, `minimum`, `maximum`, `minLength`, `maxLength`, `minItems`, `maxItems`, and
//! the annotations `$schema`, `title`, `description`. Any other keyword in the docs fails the
//! test, so a schema never claims something that is not checked.

use std::collections::BTreeSet;

use serde_json::Value;
use tickguard::core::price::{Price, Qty};
use tickguard::relay::Exchange;
use tickguard::relay::candle::{Candle, Interval, Source};
use tickguard::relay::protocol::{self, Head, QuoteFields, REQUEST_FIELDS, RequestError, parse_request};
use tickguard::relay::stats::RelayStats;

const DOC: &str = include_str!("../docs/relay.md");
const CONFIG_DOC: &str = include_str!("../docs/configuration.md");
const PROTOCOL_SRC: &str = include_str!("../src/relay/protocol.rs");

const DRAFT: &str = "https://json-schema.org/draft/2020-12/schema";
const EPOCH: i64 = 1_764_820_800_000;
const T0: i64 = 1_764_825_600_000;

// ----- the docs' blocks -----

/// The ```json blocks headed by a line `<label> <name>` (e.g. `Schema: snapshot`), in order.
fn blocks(label: &str) -> Vec<(String, String)> {
    let lines: Vec<&str> = DOC.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let Some(name) = lines[i].trim().strip_prefix(label) else {
            i += 1;
            continue;
        };
        let name = name.trim().to_string();
        assert!(!name.is_empty() && !name.contains(' '), "line {}: `{label} <type>` expected", i + 1);
        let mut j = i + 1;
        while j < lines.len() && lines[j].trim().is_empty() {
            j += 1;
        }
        assert!(
            j < lines.len() && lines[j].trim() == "```json",
            "line {}: `{label} {name}` must be followed by a ```json block",
            i + 1
        );
        let mut body = String::new();
        let mut k = j + 1;
        while k < lines.len() && lines[k].trim() != "```" {
            body.push_str(lines[k]);
            body.push('\n');
            k += 1;
        }
        assert!(k < lines.len(), "line {}: unterminated ```json block of {name}", j + 1);
        out.push((name, body));
        i = k + 1;
    }
    out
}

fn schemas() -> Vec<(String, Value)> {
    let all: Vec<(String, Value)> = blocks("Schema:")
        .into_iter()
        .map(|(n, b)| {
            let v: Value =
                serde_json::from_str(&b).unwrap_or_else(|e| panic!("Schema: {n} is not JSON: {e}"));
            (n, v)
        })
        .collect();
    let mut seen = BTreeSet::new();
    for (n, s) in &all {
        assert!(seen.insert(n.clone()), "Schema: {n} appears twice");
        assert_eq!(s["$schema"], DRAFT, "Schema: {n} must declare draft 2020-12");
        check_schema(s, &format!("Schema: {n}"));
    }
    all
}

fn schema_of<'a>(all: &'a [(String, Value)], name: &str) -> &'a Value {
    &all.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("docs/relay.md has no `Schema: {name}`")).1
}

// ----- the validator -----

const KEYWORDS: [&str; 17] = [
    "$schema",
    "title",
    "description",
    "type",
    "required",
    "properties",
    "additionalProperties",
    "items",
    "enum",
    "const",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "examples",
];
const TYPES: [&str; 7] = ["object", "array", "string", "integer", "number", "boolean", "null"];

/// Every keyword known, every sub-schema well formed, every object schema strict.
fn check_schema(s: &Value, at: &str) {
    let Value::Object(m) = s else { panic!("{at}: a schema must be an object") };
    for k in m.keys() {
        assert!(
            KEYWORDS.contains(&k.as_str()),
            "{at}: keyword {k:?} is not supported by the test's validator"
        );
    }
    if let Some(t) = m.get("type") {
        let names: Vec<&Value> = match t {
            Value::Array(a) => a.iter().collect(),
            one => vec![one],
        };
        for n in names {
            assert!(n.as_str().is_some_and(|n| TYPES.contains(&n)), "{at}: unknown type {n}");
        }
    }
    if let Some(p) = m.get("properties") {
        let Value::Object(p) = p else { panic!("{at}: properties must be an object") };
        for (k, sub) in p {
            check_schema(sub, &format!("{at}.{k}"));
        }
        // Strict: an object with named properties says so.
        assert!(
            m.get("additionalProperties").is_some(),
            "{at}: an object schema must set additionalProperties (false) so new fields fail the test"
        );
    }
    if let Some(r) = m.get("required") {
        let props = m.get("properties").and_then(Value::as_object);
        for k in r.as_array().unwrap_or_else(|| panic!("{at}: required must be a list")) {
            let k = k.as_str().unwrap_or_else(|| panic!("{at}: required names are strings"));
            assert!(props.is_some_and(|p| p.contains_key(k)), "{at}: required {k:?} has no property");
        }
    }
    match m.get("additionalProperties") {
        None | Some(Value::Bool(false)) => {}
        Some(Value::Bool(true)) => panic!("{at}: additionalProperties true makes the schema loose"),
        Some(sub) => check_schema(sub, &format!("{at}[*]")),
    }
    if let Some(i) = m.get("items") {
        check_schema(i, &format!("{at}[]"));
    }
    if let Some(e) = m.get("enum") {
        assert!(e.as_array().is_some_and(|a| !a.is_empty()), "{at}: enum must be a non-empty list");
    }
}

fn type_ok(t: &str, v: &Value) -> bool {
    match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        _ => false,
    }
}

/// Validates `v` against `s`, pushing one line per violation.
fn validate(s: &Value, v: &Value, at: &str, errs: &mut Vec<String>) {
    let Value::Object(m) = s else { return };
    if let Some(t) = m.get("type") {
        let ok = match t {
            Value::Array(a) => a.iter().filter_map(Value::as_str).any(|t| type_ok(t, v)),
            Value::String(t) => type_ok(t, v),
            _ => false,
        };
        if !ok {
            errs.push(format!("{at}: {v} is not of type {t}"));
            return;
        }
    }
    if let Some(c) = m.get("const") {
        if c != v {
            errs.push(format!("{at}: {v} is not {c}"));
        }
    }
    if let Some(Value::Array(e)) = m.get("enum") {
        if !e.contains(v) {
            errs.push(format!("{at}: {v} is not one of {}", Value::Array(e.clone())));
        }
    }
    if let Some(x) = v.as_f64() {
        if let Some(min) = m.get("minimum").and_then(Value::as_f64) {
            if x < min {
                errs.push(format!("{at}: {v} is below the minimum {min}"));
            }
        }
        if let Some(max) = m.get("maximum").and_then(Value::as_f64) {
            if x > max {
                errs.push(format!("{at}: {v} is above the maximum {max}"));
            }
        }
    }
    if let Some(st) = v.as_str() {
        let n = st.chars().count() as u64;
        if m.get("minLength").and_then(Value::as_u64).is_some_and(|l| n < l) {
            errs.push(format!("{at}: {v} is shorter than minLength"));
        }
        if m.get("maxLength").and_then(Value::as_u64).is_some_and(|l| n > l) {
            errs.push(format!("{at}: {v} is longer than maxLength"));
        }
    }
    if let Value::Array(a) = v {
        let n = a.len() as u64;
        if m.get("minItems").and_then(Value::as_u64).is_some_and(|l| n < l) {
            errs.push(format!("{at}: {n} items, fewer than minItems"));
        }
        if m.get("maxItems").and_then(Value::as_u64).is_some_and(|l| n > l) {
            errs.push(format!("{at}: {n} items, more than maxItems"));
        }
        if let Some(items) = m.get("items") {
            for (i, x) in a.iter().enumerate() {
                validate(items, x, &format!("{at}[{i}]"), errs);
            }
        }
    }
    if let Value::Object(o) = v {
        if let Some(Value::Array(req)) = m.get("required") {
            for k in req.iter().filter_map(Value::as_str) {
                if !o.contains_key(k) {
                    errs.push(format!("{at}: required field {k:?} is missing"));
                }
            }
        }
        let props = m.get("properties").and_then(Value::as_object);
        for (k, x) in o {
            match props.and_then(|p| p.get(k)) {
                Some(sub) => validate(sub, x, &format!("{at}.{k}"), errs),
                None => match m.get("additionalProperties") {
                    Some(Value::Bool(false)) => {
                        errs.push(format!("{at}: field {k:?} is not documented (additionalProperties false)"))
                    }
                    Some(sub @ Value::Object(_)) => validate(sub, x, &format!("{at}.{k}"), errs),
                    _ => {}
                },
            }
        }
    }
}

fn errors(s: &Value, v: &Value) -> Vec<String> {
    let mut e = Vec::new();
    validate(s, v, "$", &mut e);
    e
}

// ----- real messages -----

/// A book quote (Binance, the demo).
fn book(bid: Price, ask: Price, ts_event: Option<i64>, ts_recv: i64) -> QuoteFields {
    QuoteFields { bid: Some(bid), ask: Some(ask), last: None, ts_event, ts_recv }
}

fn p(s: &str) -> Price {
    Price::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn q(s: &str) -> Qty {
    Qty::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn bar(open_time: i64, closed: bool, revision: u32, source: Source) -> Candle {
    Candle {
        open_time,
        open: p("93001.1"),
        high: p("93020"),
        low: p("92990.01"),
        close: p("93010.5"),
        volume: q("12.41"),
        closed,
        revision,
        source,
    }
}

/// The relay's refusals, as `parse_request` makes them (one per field at least), plus the
/// hub's own (`request`: relay full or stopping; `symbols`: relay full, unknown symbol).
fn refusals() -> Vec<RequestError> {
    let iv = [Interval::M1, Interval::M5];
    let mut out: Vec<RequestError> = [
        "{",
        r#"{"exchange":"binance","symbols":["A"],"colour":1}"#,
        r#"{"symbols":["A"]}"#,
        r#"{"exchange":"kraken","symbols":["A"]}"#,
        r#"{"exchange":"binance","contract_type":"futures","symbols":["A"]}"#,
        r#"{"exchange":"binance","symbols":[]}"#,
        r#"{"exchange":"binance","symbols":["BTC \"USDT\""]}"#,
        r#"{"exchange":"binance","symbols":["A"],"limit":1001}"#,
        r#"{"exchange":"binance","symbols":["A"],"interval":"1h"}"#,
        r#"{"exchange":"binance","symbols":["A"],"resume_from":61000}"#,
        r#"{"exchange":"binance","symbols":["A"],"resume_from":{"B":60000}}"#,
    ]
    .iter()
    .map(|r| parse_request(r.as_bytes(), Exchange::Binance, &iv).expect_err(r))
    .collect();
    out.push(RequestError { field: "request", problem: "the relay is shutting down".into() });
    out.push(RequestError { field: "symbols", problem: "X: the venue does not know it (HTTP 400)".into() });
    // Every field the request has can be named.
    for f in REQUEST_FIELDS {
        out.push(RequestError { field: f, problem: format!("{f} was wrong") });
    }
    out
}

/// One or more messages of every type the protocol sends, made by its own functions.
fn messages() -> Vec<String> {
    let h = Head { epoch: EPOCH, exchange: Exchange::Binance, symbol: "BTCUSDT" };
    let up = Head { epoch: EPOCH, exchange: Exchange::Upstox, symbol: "NSE_EQ|INE002A01018" };
    let m1 = Interval::M1;
    let closed = [bar(T0 - 120_000, true, 1, Source::Kline), bar(T0 - 60_000, true, 2, Source::Rest)];
    let mut v = vec![
        // candle: open, closed, built from trades, corrected; another interval; Upstox.
        protocol::candle(&h, m1, 0, &bar(T0, false, 0, Source::Kline)),
        protocol::candle(&h, m1, 7, &bar(T0, false, 0, Source::Trades)),
        protocol::candle(&h, m1, 8, &bar(T0, true, 1, Source::Kline)),
        protocol::candle(&h, m1, 9, &bar(T0 + 60_000, true, 1, Source::Trades)),
        protocol::candle(&h, m1, 10, &bar(T0 + 60_000, true, 2, Source::Rest)),
        protocol::candle(&h, Interval::H4, 3, &bar(T0, true, 1, Source::Kline)),
        protocol::candle(&up, Interval::M5, 1, &bar(T0, false, 0, Source::Trades)),
        // snapshot: empty, two candles.
        protocol::snapshot(&h, m1, 0, [].iter()),
        protocol::snapshot(&h, m1, 41, closed.iter()),
        protocol::snapshot(&up, Interval::D1, 5, closed[..1].iter()),
        // gap.
        protocol::gap(&h, m1, 43, T0 + 120_000, T0 + 300_000),
        // quote: no venue time, a venue time; Upstox.
        protocol::quote(&h, 1, &book(p("93012.35"), p("93012.36"), None, T0 + 41_302)),
        protocol::quote(&h, 90_817, &book(p("93012.35"), p("93012.36"), Some(T0 + 41_299), T0 + 41_302)),
        protocol::quote(
            &up,
            2,
            &QuoteFields {
                last: Some(p("2950.25")),
                ts_event: Some(T0),
                ts_recv: T0 + 3,
                ..QuoteFields::default()
            },
        ),
        // status: stale (also the catch-up one with seq 0), live.
        protocol::status(EPOCH, Exchange::Binance, 0, false, EPOCH),
        protocol::status(EPOCH, Exchange::Binance, 3, false, T0 + 102_113),
        protocol::status(EPOCH, Exchange::Upstox, 4, true, T0 + 131_870),
        // bye: shutdown with a cursor, slow consumer without one.
        protocol::bye(EPOCH, "shutdown", &[("BTCUSDT", T0), ("ETHUSDT", T0 - 60_000)]),
        protocol::bye(EPOCH, "slow_consumer", &[]),
    ];
    // Every venue a relay can serve (the demo's simulated one too).
    for ex in all_exchanges() {
        let h = Head { epoch: EPOCH, exchange: ex, symbol: "ETHUSDT" };
        v.push(protocol::candle(&h, m1, 2, &bar(T0, true, 1, Source::Kline)));
        v.push(protocol::snapshot(&h, m1, 2, closed.iter()));
        v.push(protocol::gap(&h, m1, 3, T0, T0));
        v.push(protocol::quote(&h, 5, &book(p("1.5"), p("1.6"), None, T0)));
        v.push(protocol::status(EPOCH, ex, 1, true, T0));
    }
    // error: every refusal.
    v.extend(refusals().iter().map(|e| protocol::error(EPOCH, e)));
    v
}

/// Every venue; the match fails to compile when a venue is added, so that its name is
/// documented (and tested) too.
fn all_exchanges() -> Vec<Exchange> {
    let all = vec![Exchange::Binance, Exchange::Upstox, Exchange::Sim];
    for e in &all {
        match e {
            Exchange::Binance | Exchange::Upstox | Exchange::Sim => {}
        }
    }
    all
}

fn json(m: &str) -> Value {
    serde_json::from_str(m).unwrap_or_else(|e| panic!("not JSON: {m}: {e}"))
}

fn kind(v: &Value) -> String {
    v["type"].as_str().unwrap_or_else(|| panic!("no type: {v}")).to_string()
}

/// Message types named by `src/relay/protocol.rs` itself: `head(&mut out, "<type>", ..)` and
/// `"type":"<type>"` in its format strings.
fn types_in_source() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for pat in ["head(&mut out, \"", "\\\"type\\\":\\\""] {
        for (i, _) in PROTOCOL_SRC.match_indices(pat) {
            let rest = &PROTOCOL_SRC[i + pat.len()..];
            let name: String = rest.chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

// ----- the tests -----

#[test]
fn real_messages_validate_against_their_documented_schema() {
    let all = schemas();
    let mut seen = BTreeSet::new();
    for m in messages() {
        let v = json(&m);
        let t = kind(&v);
        let e = errors(schema_of(&all, &t), &v);
        assert!(
            e.is_empty(),
            "a real {t} message does not match `Schema: {t}` in docs/relay.md:\n{m}\n{}",
            e.join("\n")
        );
        seen.insert(t);
    }
    for t in ["snapshot", "candle", "quote", "gap", "status", "error", "bye"] {
        assert!(seen.contains(t), "no {t} message was checked");
    }
}

#[test]
fn every_message_type_of_the_protocol_is_documented_and_nothing_else() {
    let made: BTreeSet<String> = messages().iter().map(|m| kind(&json(m))).collect();
    let source = types_in_source();
    assert_eq!(made, source, "the test makes every type protocol.rs names (add the new one to messages())");
    let documented: BTreeSet<String> =
        schemas().into_iter().map(|(n, _)| n).filter(|n| n != "request").collect();
    assert_eq!(documented, source, "docs/relay.md's `Schema:` blocks vs the message types of protocol.rs");
    for t in &source {
        assert!(DOC.contains(&format!("### {t}\n")), "docs/relay.md has no `### {t}` section");
        assert!(blocks("Example:").iter().any(|(n, _)| n == t), "docs/relay.md has no `Example: {t}` block");
    }
}

#[test]
fn the_schemas_are_strict_a_new_field_a_missing_one_or_a_wrong_value_fails() {
    let all = schemas();
    for m in messages() {
        let v = json(&m);
        let t = kind(&v);
        let s = schema_of(&all, &t);
        // An undocumented field.
        let mut extra = v.clone();
        extra["undocumented"] = Value::from(1);
        assert!(!errors(s, &extra).is_empty(), "{t}: an extra field passes");
        // Each field missing, each field of the wrong type.
        for k in v.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>()).unwrap_or_default() {
            let mut missing = v.clone();
            missing.as_object_mut().map(|o| o.remove(&k));
            assert!(!errors(s, &missing).is_empty(), "{t}: without {k} passes");
            let mut wrong = v.clone();
            wrong[&k] = Value::from(vec![Value::Bool(true)]);
            assert!(!errors(s, &wrong).is_empty(), "{t}: {k} as a list passes");
        }
        // A wrong type tag.
        let mut tag = v.clone();
        tag["type"] = Value::from("nonsense");
        assert!(!errors(s, &tag).is_empty(), "{t}: another type tag passes");
    }
    // A field inside a snapshot's candle, and the nullable quote time.
    let snap = json(&messages()[8]);
    assert_eq!(snap["candles"].as_array().map(Vec::len), Some(2));
    let mut bad = snap.clone();
    bad["candles"][1]["interval"] = Value::from("1m");
    assert!(!errors(schema_of(&all, "snapshot"), &bad).is_empty(), "snapshot: a candle's extra field passes");
    let mut neg = json(&messages()[11]);
    neg["ts_event"] = Value::from(-1);
    assert!(!errors(schema_of(&all, "quote"), &neg).is_empty(), "quote: a negative ts_event passes");
    neg["ts_event"] = Value::from("1");
    assert!(!errors(schema_of(&all, "quote"), &neg).is_empty(), "quote: ts_event as a string passes");
}

#[test]
fn messages_hold_what_the_docs_say_streams_and_close_times() {
    for m in messages() {
        let v = json(&m);
        assert_eq!(v["epoch"], EPOCH, "{m}");
        match kind(&v).as_str() {
            "candle" | "snapshot" | "gap" => {
                let stream = format!(
                    "{}@{}",
                    v["symbol"].as_str().unwrap_or(""),
                    v["interval"].as_str().unwrap_or("")
                );
                assert_eq!(v["stream"], stream.as_str(), "{m}");
                let iv = Interval::parse(v["interval"].as_str().unwrap_or("")).expect("interval");
                let candles = match v.get("candles") {
                    Some(Value::Array(a)) => a.clone(),
                    _ if kind(&v) == "candle" => vec![v.clone()],
                    _ => vec![],
                };
                for c in candles {
                    let (o, cl) =
                        (c["open_time"].as_i64().unwrap_or(0), c["close_time"].as_i64().unwrap_or(0));
                    assert_eq!(cl, o + iv.millis() - 1, "close_time is open_time + interval - 1: {m}");
                    let (closed, rev) = (c["closed"].as_bool(), c["revision"].as_u64());
                    assert!(matches!((closed, rev), (Some(false), Some(0)) | (Some(true), Some(1..))), "{m}");
                }
            }
            "quote" => {
                assert_eq!(
                    v["stream"],
                    format!("{}@quote", v["symbol"].as_str().unwrap_or("")).as_str(),
                    "{m}"
                )
            }
            "status" => assert_eq!(v["stream"], "status", "{m}"),
            _ => {}
        }
    }
}

#[test]
fn every_example_matches_its_schema_and_every_example_request_parses() {
    let all = schemas();
    let examples = blocks("Example:");
    assert!(examples.len() >= 8, "docs/relay.md has too few examples");
    for (n, b) in &examples {
        let v: Value =
            serde_json::from_str(b).unwrap_or_else(|e| panic!("Example: {n} is not JSON: {e}\n{b}"));
        let e = errors(schema_of(&all, n), &v);
        assert!(e.is_empty(), "Example: {n} does not match its schema:\n{b}\n{}", e.join("\n"));
        if n == "request" {
            let r = parse_request(b.trim().as_bytes(), Exchange::Binance, &[Interval::M1, Interval::M5]);
            assert!(r.is_ok(), "Example: request is refused by the relay: {r:?}\n{b}");
        } else {
            assert_eq!(kind(&v), *n, "Example: {n} holds another type");
        }
    }
    // The seed's own request, and what the request schema refuses that the relay refuses too.
    let seed = json(r#"{"exchange":"binance","contract_type":"spot","symbols":["BTCUSDT"],"limit":3}"#);
    assert!(errors(schema_of(&all, "request"), &seed).is_empty());
    for bad in [
        r#"{"exchange":"binance","symbols":["A"],"colour":1}"#,
        r#"{"exchange":"binance","symbols":[]}"#,
        r#"{"exchange":"binance","symbols":["A"],"limit":1001}"#,
        r#"{"exchange":"binance","symbols":["A"],"interval":"7m"}"#,
        r#"{"exchange":"binance","symbols":["A"],"resume_from":"soon"}"#,
        r#"{"symbols":["A"]}"#,
    ] {
        assert!(!errors(schema_of(&all, "request"), &json(bad)).is_empty(), "the request schema takes {bad}");
        assert!(parse_request(bad.as_bytes(), Exchange::Binance, &[Interval::M1]).is_err(), "{bad}");
    }
}

#[test]
fn the_request_fields_and_errors_are_documented() {
    let all = schemas();
    let props = schema_of(&all, "request")["properties"].as_object().cloned().unwrap_or_default();
    let documented: BTreeSet<&str> = props.keys().map(String::as_str).collect();
    let fields: BTreeSet<&str> = REQUEST_FIELDS.into_iter().collect();
    assert_eq!(documented, fields, "`Schema: request` vs protocol::REQUEST_FIELDS");
    for f in REQUEST_FIELDS.iter().chain(["request"].iter()) {
        assert!(DOC.contains(&format!("| `{f}` |")), "docs/relay.md has no table row for `{f}`");
    }
    // Every field an error can name is in the error schema's enum.
    let named: Vec<Value> =
        schema_of(&all, "error")["properties"]["field"]["enum"].as_array().cloned().unwrap_or_default();
    for e in refusals() {
        assert!(named.contains(&Value::from(e.field)), "error field {} is not in `Schema: error`", e.field);
    }
}

/// `relay.xxx` keys written in backticks in a text.
fn relay_keys(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices("`relay.") {
        let rest = &text[i + "`relay.".len()..];
        let key: String = rest.chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
        if !key.is_empty() && key != "md" {
            out.insert(format!("relay.{key}"));
        }
    }
    out
}

#[test]
fn every_relay_key_and_connector_name_of_the_configuration_is_in_the_relay_docs() {
    let keys = relay_keys(CONFIG_DOC);
    assert!(keys.len() >= 15, "docs/configuration.md: expected the relay's keys, found {keys:?}");
    let missing: Vec<&String> = keys.iter().filter(|k| !DOC.contains(&format!("`{k}`"))).collect();
    assert!(missing.is_empty(), "docs/relay.md does not mention {missing:?}");
    // No key in the relay docs that the configuration does not have.
    let unknown: Vec<String> = relay_keys(DOC).difference(&keys).cloned().collect();
    assert!(unknown.is_empty(), "docs/relay.md names keys docs/configuration.md does not have: {unknown:?}");
    for (i, _) in CONFIG_DOC.match_indices("`CONNECTOR_") {
        let name: String =
            CONFIG_DOC[i + 1..].chars().take_while(|c| c.is_ascii_uppercase() || *c == '_').collect();
        if name.ends_with('_') {
            continue; // `CONNECTOR_*`
        }
        assert!(DOC.contains(&format!("`{name}`")), "docs/relay.md does not mention {name}");
    }
}

#[test]
fn every_exported_metric_is_in_the_metrics_table() {
    let text = RelayStats::default().render("binance");
    let names: Vec<&str> =
        text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split(' ').next()).collect();
    assert!(names.len() >= 19, "{text}");
    for n in names {
        assert!(DOC.contains(&format!("| `{n}` |")), "docs/relay.md's metrics table has no row for {n}");
    }
}
