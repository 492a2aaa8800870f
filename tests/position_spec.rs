//! One table of position specs through both doors a position comes in by: the configuration's
//! `[[positions]]` (`config::parse_str`) and the API's `POST /api/v1/positions` (real HTTP into
//! a running control plane and engine). Both use the one parser (`core::spec`): the same spec is
//! accepted by both or refused by both, naming the same field with the same problem.

mod control_support;

use control_support::Appliance;
use tickguard::config;
use tickguard::core::types::Side;

/// A spec: `(key, TOML value, JSON value)`; the expectation: `Ok(side)` or `Err((field,
/// words the problem contains))`.
struct Case {
    name: &'static str,
    fields: &'static [(&'static str, &'static str, &'static str)],
    expect: Result<Side, (&'static str, &'static str)>,
}

const BASE: [(&str, &str, &str); 5] = [
    ("symbol", "\"BTCUSDT\"", "\"BTCUSDT\""),
    ("side", "\"long\"", "\"long\""),
    ("qty", "\"0.5\"", "\"0.5\""),
    ("entry", "60000", "60000"),
    ("stop_loss", "58000", "58000"),
];

const CASES: &[Case] = &[
    Case { name: "long", fields: &[], expect: Ok(Side::Long) },
    Case { name: "buy-upper", fields: &[("side", "\"BUY\"", "\"BUY\"")], expect: Ok(Side::Long) },
    Case {
        name: "sell",
        fields: &[("side", "\"sell\"", "\"sell\""), ("stop_loss", "61000", "61000")],
        expect: Ok(Side::Short),
    },
    Case {
        name: "short-mixed",
        fields: &[("side", "\"Short\"", "\"Short\""), ("stop_loss", "61000", "61000")],
        expect: Ok(Side::Short),
    },
    Case {
        name: "side-word",
        fields: &[("side", "\"up\"", "\"up\"")],
        expect: Err(("side", "must be long or short")),
    },
    Case { name: "side-type", fields: &[("side", "1", "1")], expect: Err(("side", "must be a string")) },
    Case { name: "qty-zero", fields: &[("qty", "0", "0")], expect: Err(("qty", "must be above zero")) },
    Case { name: "qty-neg", fields: &[("qty", "\"-1\"", "\"-1\"")], expect: Err(("qty", "above zero")) },
    Case {
        name: "qty-digits",
        fields: &[("qty", "\"0.123456789\"", "\"0.123456789\"")],
        expect: Err(("qty", "invalid quantity")),
    },
    Case {
        name: "qty-type",
        fields: &[("qty", "true", "true")],
        expect: Err(("qty", "must be a number or a decimal string")),
    },
    Case { name: "entry-fraction", fields: &[("entry", "60000.25", "60000.25")], expect: Ok(Side::Long) },
    Case { name: "entry-missing", fields: &[("entry", "", "")], expect: Err(("entry", "missing")) },
    Case {
        name: "symbol-comma",
        fields: &[("symbol", "\"BTC,USDT\"", "\"BTC,USDT\"")],
        expect: Err(("symbol", "without spaces or commas")),
    },
    Case {
        name: "symbol-long",
        fields: &[(
            "symbol",
            "\"XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX\"",
            "\"XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX\"",
        )],
        expect: Err(("symbol", "33 bytes")),
    },
    Case {
        name: "levels-inverted",
        fields: &[("take_profit", "57000", "57000")],
        expect: Err(("stop_loss", "inverted")),
    },
    Case {
        name: "blind-flatten",
        fields: &[("blind_policy", "\"flatten\"", "\"flatten\"")],
        expect: Ok(Side::Long),
    },
    Case {
        name: "blind-word",
        fields: &[("blind_policy", "\"panic\"", "\"panic\"")],
        expect: Err(("blind_policy", "must be alert or flatten")),
    },
];

/// The case's fields over the base (an empty value removes the key).
fn fields(c: &Case) -> Vec<(&'static str, &'static str, &'static str)> {
    let mut out: Vec<_> = BASE.to_vec();
    for (k, t, j) in c.fields {
        out.retain(|(n, _, _)| n != k);
        if !t.is_empty() {
            out.push((k, t, j));
        }
    }
    out
}

fn via_config(c: &Case, id: &str) -> Result<Side, (String, String)> {
    let mut text = format!("[[positions]]\nid = \"{id}\"\n");
    for (k, t, _) in fields(c) {
        text.push_str(&format!("{k} = {t}\n"));
    }
    match config::parse_str(&text, "spec.toml", Vec::new()) {
        Ok(cfg) => Ok(cfg.positions[0].side),
        Err(e) => {
            let msg = e.to_string();
            // `positions[0].FIELD ...: problem; fix` or `positions[0].FIELD is missing: fix`.
            let field = msg
                .strip_prefix("positions[0].")
                .and_then(|r| r.split(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_')).next())
                .unwrap_or("")
                .to_string();
            Err((field, msg))
        }
    }
}

fn via_api(a: &Appliance, c: &Case, id: &str) -> Result<Side, (String, String)> {
    let mut body = format!("{{\"id\":\"{id}\"");
    for (k, _, j) in fields(c) {
        body.push_str(&format!(",\"{k}\":{j}"));
    }
    body.push('}');
    let r = a.authed("POST", "/api/v1/positions", Some(&body));
    let v = r.json();
    match r.status {
        201 => Ok(if v["side"] == "short" { Side::Short } else { Side::Long }),
        400 => Err((v["field"].as_str().unwrap_or("").to_string(), v["detail"].to_string())),
        s => panic!("{}: unexpected status {s}: {v}", c.name),
    }
}

fn check(name: &str, door: &str, got: &Result<Side, (String, String)>, want: &Result<Side, (&str, &str)>) {
    match (got, want) {
        (Ok(g), Ok(w)) => assert_eq!(g, w, "{name} via {door}"),
        (Err((field, msg)), Err((wf, words))) => {
            assert_eq!(field, wf, "{name} via {door}: {msg}");
            assert!(msg.contains(words), "{name} via {door}: {msg:?} does not say {words:?}");
        }
        _ => panic!("{name} via {door}: got {got:?}, want {want:?}"),
    }
}

#[test]
fn one_table_of_specs_through_the_configuration_and_the_api() {
    let a = Appliance::start();
    for (i, c) in CASES.iter().enumerate() {
        let id = format!("spec-{i}");
        check(c.name, "config", &via_config(c, &id), &c.expect);
        check(c.name, "api", &via_api(&a, c, &id), &c.expect);
    }
}

#[test]
fn a_short_is_refused_at_both_doors_when_the_broker_cannot_close_it() {
    // The configuration: with broker.kind = "binance", a short in [[positions]] is refused.
    let text = "[feed]\nvenue = \"binance\"\n[broker]\nkind = \"binance\"\n[[positions]]\nid = \"s1\"\nsymbol = \"BTCUSDT\"\nside = \"short\"\nqty = 1\nentry = 60000\n";
    let cfg = config::parse_str(text, "spec.toml", Vec::new()).expect("parses");
    let e = config::refuse_unclosable_sides(&cfg).expect_err("refused").to_string();
    assert!(e.starts_with("positions[0].side") && e.contains("cannot close a short"), "{e}");
    // The API with the same rule: 400 naming side, nothing registered.
    let a = Appliance::start_with(control_support::fast_engine(), |c| {
        c.side_rule = config::side_rule(&cfg);
    });
    let r = a.authed(
        "POST",
        "/api/v1/positions",
        Some(r#"{"id":"s1","symbol":"BTCUSDT","side":"sell","qty":"1","entry":"60000"}"#),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    let v = r.json();
    assert_eq!(v["field"], "side", "{v}");
    assert!(v["detail"].as_str().is_some_and(|d| d.contains("cannot close a short")), "{v}");
    assert_eq!(a.req("GET", "/api/v1/positions/s1", &[], None).status, 404);
    // A long passes the same rule.
    let r = a.authed(
        "POST",
        "/api/v1/positions",
        Some(r#"{"id":"l1","symbol":"BTCUSDT","side":"buy","qty":"1","entry":"60000"}"#),
    );
    assert_eq!(r.status, 201, "{}", r.text());
}
