//! Property tests ("fuzzing" within `cargo test`) of the relay's request parser
//! (`relay::protocol::parse_request`), which reads whatever a LAN client sends:
//!
//! - arbitrary bytes and mutations of valid requests never panic, and every refusal names one
//!   of the request's fields (or `request` for the frame as a whole) with a non-empty reason;
//! - generated requests (random symbols, limits, intervals, cursors, field order, case) parse
//!   to exactly what they say, within the relay's bounds.
//!
//! `PROPTEST_CASES` raises the number of cases for a longer run.

use proptest::prelude::*;

use tickguard::limits::{RELAY_RING, RELAY_SYMBOLS_PER_CLIENT, SYMBOL_MAX};
use tickguard::relay::Exchange;
use tickguard::relay::candle::Interval;
use tickguard::relay::protocol::{REQUEST_FIELDS, parse_request};

const SERVED: [Interval; 2] = [Interval::M1, Interval::M5];

const SEEDS: [&str; 5] = [
    r#"{"exchange":"binance","contract_type":"spot","symbols":["BTCUSDT"],"limit":3}"#,
    r#"{"exchange":"binance","contract_type":"spot","symbols":["BTCUSDT","ETHUSDT"],"limit":1,"interval":"5m"}"#,
    r#"{"exchange":"binance","symbols":["BTCUSDT"],"resume_from":{"BTCUSDT":120000}}"#,
    r#"{"exchange":"binance","symbols":["btcusdt"],"resume_from":60000,"limit":0}"#,
    r#"{"exchange":"upstox","contract_type":"equity","symbols":["NSE_EQ|INE002A01018"]}"#,
];

/// Parses for both venues; checks what a refusal or an acceptance promises.
fn check(b: &[u8]) {
    for ex in [Exchange::Binance, Exchange::Upstox] {
        match parse_request(b, ex, &SERVED) {
            Ok(r) => {
                assert_eq!(r.exchange, ex);
                assert!(!r.symbols.is_empty() && r.symbols.len() <= RELAY_SYMBOLS_PER_CLIENT);
                assert!(r.symbols.iter().all(|s| !s.is_empty() && s.len() <= SYMBOL_MAX));
                assert!(r.limit <= RELAY_RING);
                assert!(SERVED.contains(&r.interval));
                for (s, t) in &r.resume_from {
                    assert!(r.symbols.contains(s));
                    assert_eq!(r.interval.floor(*t), *t);
                }
            }
            Err(e) => {
                assert!(e.field == "request" || REQUEST_FIELDS.contains(&e.field), "{e}");
                assert!(!e.problem.is_empty());
                assert!(e.problem.len() < 400, "a refusal stays short: {}", e.problem.len());
            }
        }
    }
}

fn mutate(seed: &[u8], ops: &[(u8, usize, u8)]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for &(op, at, byte) in ops {
        let i = if v.is_empty() { 0 } else { at % v.len() };
        match op % 4 {
            0 if !v.is_empty() => v[i] = byte,
            1 => v.insert(i.min(v.len()), byte),
            2 if !v.is_empty() => {
                v.remove(i);
            }
            _ => v.truncate(i),
        }
    }
    v
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, .. ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..300)) {
        check(&b);
    }

    #[test]
    fn mutated_requests_never_panic(
        seed in 0..SEEDS.len(),
        ops in proptest::collection::vec((any::<u8>(), any::<usize>(), any::<u8>()), 1..8),
    ) {
        check(&mutate(SEEDS[seed].as_bytes(), &ops));
    }

    #[test]
    fn generated_requests_parse_to_what_they_say(
        syms in proptest::collection::btree_set("[A-Z0-9]{1,12}", 1..10),
        limit in 0usize..=RELAY_RING,
        five in any::<bool>(),
        lower in any::<bool>(),
        bars in 0i64..1_000_000,
        reversed in any::<bool>(),
    ) {
        let syms: Vec<String> = syms.into_iter().collect();
        let iv = if five { Interval::M5 } else { Interval::M1 };
        let cursor = bars * iv.millis();
        let list: Vec<String> = syms
            .iter()
            .map(|s| format!("\"{}\"", if lower { s.to_ascii_lowercase() } else { s.clone() }))
            .collect();
        let mut fields = [
            r#""exchange":"binance""#.to_string(),
            r#""contract_type":"spot""#.to_string(),
            format!(r#""symbols":[{}]"#, list.join(",")),
            format!(r#""limit":{limit}"#),
            format!(r#""interval":"{iv}""#),
            format!(r#""resume_from":{cursor}"#),
        ];
        if reversed {
            fields.reverse();
        }
        let text = format!("{{{}}}", fields.join(","));
        let r = parse_request(text.as_bytes(), Exchange::Binance, &SERVED).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
        prop_assert_eq!(&r.symbols, &syms);
        prop_assert_eq!(r.limit, limit);
        prop_assert_eq!(r.interval, iv);
        prop_assert_eq!(r.resume_from.len(), syms.len());
        prop_assert!(r.resume_from.iter().all(|(_, t)| *t == cursor));
    }
}
