//! Property tests ("fuzzing" within `cargo test`) of the venue-frame decoders: the Binance
//! frame decoder, the JSON scanner under it and the REST answer parser.
//!
//! - On arbitrary bytes they never panic (every result is an `Ok` or a typed error).
//! - On mutations of valid frames (bytes flipped, inserted, removed, truncated, spliced) they
//!   never panic either.
//! - Valid frames generated from random symbols and prices decode to exactly those values,
//!   whatever the order of the fields and the unknown fields around them.
//!
//! `PROPTEST_CASES` raises the number of cases for a longer run.

use proptest::prelude::*;

use tickguard::core::price::Price;
use tickguard::feed::binance::{self, Frame};
use tickguard::feed::json::{self, Value};
use tickguard::feed::rest::parse_prices;

/// Real frames of every kind the session sees.
const SEEDS: [&str; 9] = [
    r#"{"stream":"bnbusdt@bookTicker","data":{"u":400900217,"s":"BNBUSDT","b":"25.35190000","B":"31.21000000","a":"25.36520000","A":"40.66000000"}}"#,
    r#"{"stream":"bnbbtc@trade","data":{"e":"trade","E":1672515782136,"s":"BNBBTC","t":12345,"p":"0.001","q":"100","T":1672515782136,"m":true,"M":true}}"#,
    r#"{"stream":"bnbbtc@aggTrade","data":{"e":"aggTrade","E":1672515782136,"s":"BNBBTC","a":12345,"p":"0.001","q":"100","f":100,"l":105,"T":1672515782136,"m":true,"M":true}}"#,
    r#"{"result":null,"id":1}"#,
    r#"{"error":{"code":2,"msg":"Invalid request: unknown variant"},"id":7}"#,
    r#"{"stream":"!serverShutdown","data":{"e":"serverShutdown","E":1672515782136}}"#,
    r#"{"e":"trade","E":5,"s":"X","p":"1.5"}"#,
    r#"{"stream":"x@depth","data":{"e":"depthUpdate","s":"X","U":1,"b":[["1.0","2"]],"a":[]}}"#,
    r#"[{"symbol":"BOSCHLTD","price":"575.00000000"},{"symbol":"BTCUSDT","price":"97000.12"}]"#,
];

/// Runs every decoder entry point on `b`; only a panic can fail this.
fn run_all(b: &[u8]) {
    let _ = binance::decode(b);
    let mut n = 0usize;
    let _ = json::for_each_member(b, |_, v| {
        n += 1;
        if let Value::Object(o) | Value::Array(o) = v {
            let _ = json::for_each_member(o, |_, _| true);
            let _ = json::for_each_element(o, |_| true);
        }
        n < 10_000
    });
    let _ = json::for_each_element(b, |_| true);
    let _ = parse_prices(b, |_, _| {});
    let _ = json::parse_i64(b);
    let _ = Price::parse_bytes(b);
}

#[derive(Clone, Debug)]
enum Mutation {
    Flip(usize, u8),
    Insert(usize, u8),
    Remove(usize),
    Truncate(usize),
    Splice(usize, Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<usize>(), prop::sample::select(b"{}[]\",:\\0123456789.-e ntf\x00\xff".to_vec()))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<usize>().prop_map(Mutation::Remove),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 0..16)).prop_map(|(i, v)| Mutation::Splice(i, v)),
    ]
}

fn apply(mut b: Vec<u8>, m: &Mutation) -> Vec<u8> {
    let len = b.len().max(1);
    match m {
        Mutation::Flip(i, x) => {
            if let Some(c) = b.get_mut(i % len) {
                *c ^= x | 1;
            }
        }
        Mutation::Insert(i, x) => b.insert(i % (b.len() + 1), *x),
        Mutation::Remove(i) => {
            if !b.is_empty() {
                b.remove(i % len);
            }
        }
        Mutation::Truncate(i) => b.truncate(i % len),
        Mutation::Splice(i, v) => {
            let at = i % (b.len() + 1);
            b.splice(at..at, v.iter().copied());
        }
    }
    b
}

/// A decimal string Binance could send: up to 10 integer digits, up to 8 decimals (prices are
/// fixed-point i64 at 8 decimals: at most about 9.2e10).
fn decimal() -> impl Strategy<Value = String> {
    (0u64..10_000_000_000, 0u32..=8, any::<u64>()).prop_map(|(int, places, frac)| {
        if places == 0 {
            int.to_string()
        } else {
            let f = frac % 10u64.pow(places);
            format!("{int}.{f:0width$}", width = places as usize)
        }
    })
}

/// `PROPTEST_CASES`, or 2 048.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2048)
}

fn symbol() -> impl Strategy<Value = String> {
    "[A-Z0-9]{2,20}"
}

/// The quote a `bookTicker` of these texts decodes to.
fn book_quote<'a>(sym: &'a str, bid: &str, ask: &str) -> Frame<'a> {
    Frame::Quote {
        symbol: sym.as_bytes(),
        bid: Price::parse(bid).ok(),
        ask: Price::parse(ask).ok(),
        last: None,
        exch_ts: None,
    }
}

fn mutate(mut b: Vec<u8>, muts: &[Mutation]) -> Vec<u8> {
    for m in muts {
        b = apply(b, m);
    }
    b
}

/// The same frame with a space after the first brace (insignificant in JSON) takes the
/// general path: the result must be the same.
fn fast_agrees_with_general(b: &[u8]) -> Result<(), TestCaseError> {
    if b.first() == Some(&b'{') {
        let mut spaced = b.to_vec();
        spaced.insert(1, b' ');
        prop_assert_eq!(binance::decode(b), binance::decode(&spaced), "{:?}", String::from_utf8_lossy(b));
    }
    Ok(())
}

/// A price or quantity as Binance writes it: eight decimals, always.
fn decimal8() -> impl Strategy<Value = String> {
    (prop_oneof![0u64..10, 0u64..1_000_000, 0u64..10_000_000_000], 0u64..100_000_000)
        .prop_map(|(int, frac)| format!("{int}.{frac:08}"))
}

/// A combined-stream `bookTicker` exactly in Binance's layout: the shape the decoder's
/// fastest path reads (src/feed/binance.rs, `combined_book_ticker`).
fn binance_book_ticker() -> impl Strategy<Value = (String, String, String, String)> {
    (symbol(), decimal8(), decimal8(), decimal8(), decimal8(), any::<u64>()).prop_map(|(sym, b, bq, a, aq, u)| {
        let frame = format!(
            r#"{{"stream":"{}@bookTicker","data":{{"u":{u},"s":"{sym}","b":"{b}","B":"{bq}","a":"{a}","A":"{aq}"}}}}"#,
            sym.to_ascii_lowercase()
        );
        (frame, sym, b, a)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    /// Frames in Binance's own layout take the fast path; they decode to their values, and
    /// so do the same frames mutated, exactly as through the general path.
    #[test]
    fn binance_layout_book_tickers_agree_with_the_general_path(
        case in binance_book_ticker(),
        muts in prop::collection::vec(mutation(), 0..3),
    ) {
        let (frame, sym, bid, ask) = case;
        let want = book_quote(&sym, &bid, &ask);
        prop_assert_eq!(binance::decode(frame.as_bytes()), Ok(want));
        fast_agrees_with_general(&mutate(frame.into_bytes(), &muts))?;
    }

    #[test]
    fn arbitrary_bytes_never_panic(b in prop::collection::vec(any::<u8>(), 0..512)) {
        run_all(&b);
    }

    #[test]
    fn json_like_bytes_never_panic(
        b in prop::collection::vec(prop::sample::select(b"{}[]\",:\\0123456789.-+eEntrufals \x00\x7f".to_vec()), 0..256)
    ) {
        run_all(&b);
    }

    #[test]
    fn mutated_valid_frames_never_panic(
        seed in prop::sample::select(SEEDS.to_vec()),
        muts in prop::collection::vec(mutation(), 1..6),
    ) {
        run_all(&mutate(seed.as_bytes().to_vec(), &muts));
    }

    /// Binance's compact frames take a one-pass fast path; the same frame with a space after
    /// the first brace (insignificant in JSON) takes the general path. Both must agree, on
    /// valid and mutated frames alike.
    #[test]
    fn fast_and_general_paths_agree(
        seed in prop::sample::select(SEEDS.to_vec()),
        muts in prop::collection::vec(mutation(), 0..3),
    ) {
        fast_agrees_with_general(&mutate(seed.as_bytes().to_vec(), &muts))?;
    }

    #[test]
    fn deep_nesting_is_refused_not_recursed(depth in 0usize..4096, open in prop::sample::select(vec![b'[', b'{'])) {
        let mut b = br#"{"data":"#.to_vec();
        b.extend(std::iter::repeat_n(open, depth));
        run_all(&b);
    }

    #[test]
    fn valid_book_tickers_decode_to_their_values(
        sym in symbol(),
        bid in decimal(),
        ask in decimal(),
        u in any::<u64>(),
        extra in prop::collection::vec(("[a-zA-Z]{1,6}", decimal()), 0..4),
        shuffle in any::<bool>(),
    ) {
        let mut fields = vec![
            format!(r#""u":{u}"#),
            format!(r#""s":"{sym}""#),
            format!(r#""b":"{bid}""#),
            format!(r#""B":"1.5""#),
            format!(r#""a":"{ask}""#),
            format!(r#""A":"2""#),
        ];
        for (k, v) in &extra {
            // Unknown fields are ignored (ours are single letters; these are longer or upper).
            if !matches!(k.as_str(), "s" | "b" | "a" | "p" | "e" | "E") {
                fields.push(format!(r#""x{k}":"{v}""#));
            }
        }
        if shuffle {
            fields.reverse();
        }
        let frame = format!(
            r#"{{"stream":"{}@bookTicker","data":{{{}}}}}"#,
            sym.to_ascii_lowercase(),
            fields.join(",")
        );
        let got = binance::decode(frame.as_bytes());
        let want = book_quote(&sym, &bid, &ask);
        prop_assert_eq!(got, Ok(want), "{}", frame);
    }

    #[test]
    fn valid_trades_decode_to_their_values(
        sym in symbol(),
        price in decimal(),
        e_ts in 0i64..4_000_000_000_000,
        agg in any::<bool>(),
    ) {
        let kind = if agg { "aggTrade" } else { "trade" };
        let frame = format!(
            r#"{{"stream":"{}@{kind}","data":{{"e":"{kind}","E":{e_ts},"s":"{sym}","a":7,"p":"{price}","q":"1","T":{e_ts},"m":true,"M":true}}}}"#,
            sym.to_ascii_lowercase()
        );
        let got = binance::decode(frame.as_bytes());
        let want = Frame::Quote {
            symbol: sym.as_bytes(),
            bid: None,
            ask: None,
            last: Price::parse(&price).ok(),
            exch_ts: Some(e_ts),
        };
        prop_assert_eq!(got, Ok(want), "{}", frame);
    }

    #[test]
    fn prices_beyond_the_fixed_point_range_are_refused(int in 92_233_720_369u64..u64::MAX, sym in symbol()) {
        let frame = format!(r#"{{"stream":"x@bookTicker","data":{{"s":"{sym}","b":"{int}","a":"1.0"}}}}"#);
        prop_assert_eq!(binance::decode(frame.as_bytes()), Err(binance::DecodeError::BadPrice));
    }

    #[test]
    fn valid_rest_answers_parse_to_their_values(
        items in prop::collection::vec((symbol(), decimal()), 1..8),
    ) {
        let body = format!(
            "[{}]",
            items.iter().map(|(s, p)| format!(r#"{{"symbol":"{s}","price":"{p}"}}"#)).collect::<Vec<_>>().join(",")
        );
        let mut got = Vec::new();
        parse_prices(body.as_bytes(), |s, p| got.push((String::from_utf8_lossy(s).into_owned(), p)))
            .map_err(TestCaseError::fail)?;
        let want: Vec<(String, Price)> =
            items.iter().filter_map(|(s, p)| Some((s.clone(), Price::parse(p).ok()?))).collect();
        prop_assert_eq!(got, want);
    }
}
