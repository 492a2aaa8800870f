//! The Upstox frame decoder (`feed::upstox_proto`) against two reference codecs:
//!
//! 1. frames built by Google's protobuf runtime from the Upstox SDK's own descriptor (the schema
//!    `proto/MarketDataFeedV3.proto` was printed from), stored in
//!    `tests/fixtures/upstox/frames.json` by `tests/fixtures/upstox/gen_frames.py`, with what
//!    Google's decoder reads from them: every frame decodes to exactly that;
//! 2. prost, with the messages of `proto/MarketDataFeedV3.proto` declared field for field in
//!    `tests/support/upstox_feed.rs` (the fake Upstox encodes its frames with them):
//!    - random well-formed `FeedResponse`s (proptest) encoded by prost decode to what prost
//!      decodes;
//!    - arbitrary bytes, and mutated valid frames: the decoder never panics, accepts exactly the
//!      frames prost accepts, and reads the same prices from them (a differential fuzz).

use std::collections::BTreeMap;

use proptest::prelude::*;
use prost::Message;
use tickguard::feed::upstox_proto::{self as up, Entry, Sink};

// ----- the reference: prost messages from proto/MarketDataFeedV3.proto (tests/support) ---------

mod support;

use support::upstox_feed::pb::*;

// ----- a normal form both sides are compared in ----------------------------------------------

/// A last price as compared: bits of `ltp`, `ltt`, where it was found.
type LastRead = (u64, i64, &'static str);

/// Per key: (mode, last price); plus type, currentTs and segments.
#[derive(Debug, PartialEq, Eq, Default)]
struct Read {
    kind: i32,
    current_ts: i64,
    market_info: bool,
    entries: BTreeMap<String, (i32, Option<LastRead>)>,
    segments: BTreeMap<String, i32>,
}

#[derive(Default)]
struct Collect(Read);

impl Sink for Collect {
    fn entry(&mut self, e: &Entry<'_>) {
        let key = String::from_utf8(e.key.to_vec()).expect("the decoder checked UTF-8");
        let last = e.last.map(|l| (l.ltp.to_bits(), l.ltt, l.via.as_str()));
        // A map: the last entry of a key wins, as in the reference.
        self.0.entries.insert(key, (e.mode, last));
    }
    fn segment(&mut self, s: &[u8], st: i32) {
        self.0.segments.insert(String::from_utf8(s.to_vec()).expect("UTF-8"), st);
    }
}

fn ours(bytes: &[u8]) -> Result<Read, up::DecodeError> {
    let mut c = Collect::default();
    let s = up::decode(bytes, &mut c)?;
    c.0.kind = s.kind;
    c.0.current_ts = s.current_ts;
    c.0.market_info = s.market_info;
    Ok(c.0)
}

fn last_of(f: &Feed) -> Option<LastRead> {
    let (l, via) = match f.feed_union.as_ref()? {
        FeedUnion::Ltpc(l) => (Some(l), "ltpc"),
        FeedUnion::FullFeed(ff) => match ff.full_feed_union.as_ref()? {
            FullFeedUnion::MarketFf(m) => (m.ltpc.as_ref(), "marketFF"),
            FullFeedUnion::IndexFf(i) => (i.ltpc.as_ref(), "indexFF"),
        },
        FeedUnion::FirstLevelWithGreeks(g) => (g.ltpc.as_ref(), "firstLevelWithGreeks"),
    };
    let l = l?;
    (l.ltp != 0.0).then_some((l.ltp.to_bits(), l.ltt, via))
}

fn reference(bytes: &[u8]) -> Option<Read> {
    let r = FeedResponse::decode(bytes).ok()?;
    Some(Read {
        kind: r.r#type,
        current_ts: r.current_ts,
        market_info: r.market_info.is_some(),
        entries: r.feeds.iter().map(|(k, f)| (k.clone(), (f.request_mode, last_of(f)))).collect(),
        segments: r.market_info.map(|m| m.segment_status.into_iter().collect()).unwrap_or_default(),
    })
}

// ----- 1. Google's encoder, from the SDK's descriptor ----------------------------------------

fn hex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
}

fn fixtures() -> Vec<(String, Vec<u8>, serde_json::Value)> {
    let text = include_str!("fixtures/upstox/frames.json");
    let v: serde_json::Value = serde_json::from_str(text).expect("frames.json");
    v["frames"]
        .as_array()
        .expect("frames")
        .iter()
        .map(|f| {
            (f["name"].as_str().expect("name").to_string(), hex(f["hex"].as_str().expect("hex")), f.clone())
        })
        .collect()
}

#[test]
fn frames_built_by_googles_encoder_decode_to_what_googles_decoder_reads() {
    let all = fixtures();
    assert!(all.len() >= 12, "fixtures present");
    for (name, bytes, want) in &all {
        let got = ours(bytes).unwrap_or_else(|e| panic!("{name}: rejected: {e}"));
        assert_eq!(i64::from(got.kind), want["type"].as_i64().expect("type"), "{name}: type");
        assert_eq!(got.current_ts, want["current_ts"].as_i64().expect("ts"), "{name}: currentTs");
        assert_eq!(got.market_info, want["has_market_info"].as_bool().expect("mi"), "{name}: marketInfo");
        let prices = want["prices"].as_array().expect("prices");
        assert_eq!(got.entries.len(), prices.len(), "{name}: entries {:?}", got.entries);
        for p in prices {
            let key = p["key"].as_str().expect("key");
            let (mode, last) = got.entries.get(key).unwrap_or_else(|| panic!("{name}: no entry {key}"));
            assert_eq!(i64::from(*mode), p["mode"].as_i64().expect("mode"), "{name}: {key} mode");
            match p.get("ltp") {
                None => assert_eq!(*last, None, "{name}: {key} has no price"),
                Some(ltp) => {
                    let ltp: f64 = ltp.as_str().expect("repr").parse().expect("float");
                    let (bits, ltt, via) = last.unwrap_or_else(|| panic!("{name}: {key} lost its price"));
                    assert_eq!(bits, ltp.to_bits(), "{name}: {key} ltp");
                    assert_eq!(ltt, p["ltt"].as_i64().expect("ltt"), "{name}: {key} ltt");
                    assert_eq!(via, p["via"].as_str().expect("via"), "{name}: {key} via");
                }
            }
        }
        let market: BTreeMap<String, i32> = want["market"]
            .as_array()
            .expect("market")
            .iter()
            .map(|m| {
                (m["segment"].as_str().expect("seg").to_string(), m["status"].as_i64().expect("st") as i32)
            })
            .collect();
        assert_eq!(got.segments, market, "{name}: segment statuses");
        // prost reads the same from Google's bytes (so the declarations above match the schema).
        assert_eq!(reference(bytes), Some(got), "{name}: prost agrees");
    }
}

#[test]
fn the_seed_incident_frame_reads_boschltd_at_575() {
    let (_, bytes, _) = fixtures().into_iter().find(|(n, _, _)| n == "ltpc_one").expect("fixture");
    let got = ours(&bytes).expect("valid");
    let (_, last) = got.entries["NSE_EQ|INE323A01026"];
    assert_eq!(last.map(|(b, _, via)| (f64::from_bits(b), via)), Some((575.0, "ltpc")));
    let p = tickguard::core::price::Price::from_f64(575.0, 2).expect("price");
    assert_eq!(p.to_string(), "575.00");
}

// ----- 2. prost: random messages, arbitrary bytes ---------------------------------------------

fn finite() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(0.0),
        Just(-0.0),
        (1u32..10_000_000).prop_map(|c| f64::from(c) / 100.0),
        any::<f64>().prop_filter("finite", |v| v.is_finite()),
    ]
}

fn ltpc() -> impl Strategy<Value = Ltpc> {
    (finite(), any::<i64>(), any::<i64>(), finite(), proptest::option::of(finite())).prop_map(
        |(ltp, ltt, ltq, cp, iep)| Ltpc { ltp, ltt, ltq, cp, iep: iep.map(|value| DoubleValue { value }) },
    )
}

fn quote() -> impl Strategy<Value = Quote> {
    (any::<i64>(), finite(), any::<i64>(), finite()).prop_map(|(bid_q, bid_p, ask_q, ask_p)| Quote {
        bid_q,
        bid_p,
        ask_q,
        ask_p,
    })
}

fn ohlc() -> impl Strategy<Value = MarketOhlc> {
    proptest::collection::vec(
        ("[a-zA-Z0-9é]{0,4}", finite(), finite(), any::<i64>()).prop_map(|(interval, open, close, ts)| {
            Ohlc { interval, open, high: open, low: close, close, vol: ts / 3, ts }
        }),
        0..3,
    )
    .prop_map(|ohlc| MarketOhlc { ohlc })
}

fn greeks() -> impl Strategy<Value = OptionGreeks> {
    (finite(), finite()).prop_map(|(delta, theta)| OptionGreeks {
        delta,
        theta,
        gamma: 0.1,
        vega: 0.2,
        rho: 0.3,
    })
}

fn feed() -> impl Strategy<Value = Feed> {
    let market = (
        proptest::option::of(ltpc()),
        proptest::option::of(
            proptest::collection::vec(quote(), 0..6).prop_map(|q| MarketLevel { bid_ask_quote: q }),
        ),
        proptest::option::of(greeks()),
        proptest::option::of(ohlc()),
        finite(),
        any::<i64>(),
        any::<bool>(),
    )
        .prop_map(|(ltpc, market_level, option_greeks, market_ohlc, atp, vtt, cas_eligible)| {
            MarketFullFeed {
                ltpc,
                market_level,
                option_greeks,
                market_ohlc,
                atp,
                vtt,
                cas_eligible,
                ..MarketFullFeed::default()
            }
        });
    let index = (proptest::option::of(ltpc()), proptest::option::of(ohlc()))
        .prop_map(|(ltpc, market_ohlc)| IndexFullFeed { ltpc, market_ohlc });
    let greeks_feed = (
        proptest::option::of(ltpc()),
        proptest::option::of(quote()),
        proptest::option::of(greeks()),
        any::<i64>(),
    )
        .prop_map(|(ltpc, first_depth, option_greeks, vtt)| FirstLevelWithGreeks {
            ltpc,
            first_depth,
            option_greeks,
            vtt,
            oi: 1.0,
            iv: 0.5,
        });
    let union = prop_oneof![
        Just(None),
        ltpc().prop_map(|l| Some(FeedUnion::Ltpc(l))),
        market.prop_map(|m| Some(FeedUnion::FullFeed(FullFeed {
            full_feed_union: Some(FullFeedUnion::MarketFf(m))
        }))),
        index.prop_map(|i| Some(FeedUnion::FullFeed(FullFeed {
            full_feed_union: Some(FullFeedUnion::IndexFf(i))
        }))),
        Just(Some(FeedUnion::FullFeed(FullFeed { full_feed_union: None }))),
        greeks_feed.prop_map(|g| Some(FeedUnion::FirstLevelWithGreeks(g))),
    ];
    (union, -1i32..5).prop_map(|(feed_union, request_mode)| Feed { feed_union, request_mode })
}

fn response() -> impl Strategy<Value = FeedResponse> {
    let key = "(NSE_EQ|NSE_FO|NSE_INDEX|BSE_EQ|MCX_FO)\\|[A-Z0-9 ]{1,12}";
    (
        -1i32..4,
        proptest::collection::hash_map(key, feed(), 0..6),
        any::<i64>(),
        proptest::option::of(proptest::collection::hash_map("[A-Z_]{2,9}", -1i32..7, 0..5)),
    )
        .prop_map(|(t, feeds, current_ts, seg)| FeedResponse {
            r#type: t,
            feeds,
            current_ts,
            market_info: seg.map(|segment_status| MarketInfo { segment_status, ..MarketInfo::default() }),
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 768, ..ProptestConfig::default() })]

    /// Well-formed frames from prost's encoder decode to what prost decodes.
    #[test]
    fn random_messages_decode_as_prost_reads_them(msg in response()) {
        let bytes = msg.encode_to_vec();
        let got = ours(&bytes);
        prop_assert!(got.is_ok(), "rejected a valid frame: {:?}", got);
        prop_assert_eq!(reference(&bytes), got.ok());
    }

    /// Arbitrary bytes: never a panic; accepted exactly when prost accepts, with the same read.
    #[test]
    fn arbitrary_bytes_never_panic_and_agree_with_prost(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let got = ours(&bytes).ok();
        prop_assert_eq!(reference(&bytes), got);
    }

    /// Valid frames with bytes flipped, cut or inserted: the same differential check, on inputs
    /// that get much deeper into the structure than random bytes do.
    #[test]
    fn mutated_frames_agree_with_prost(
        msg in response(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..4),
    ) {
        let mut bytes = msg.encode_to_vec();
        for (at, b, op) in edits {
            if bytes.is_empty() { break; }
            let i = at.index(bytes.len());
            match op {
                0 => bytes[i] = b,
                1 => bytes.truncate(i),
                _ => bytes.insert(i, b),
            }
        }
        let got = ours(&bytes).ok();
        prop_assert_eq!(reference(&bytes), got);
    }
}

#[test]
fn fixture_frames_mutated_everywhere_agree_with_prost() {
    // Every single-byte change of every fixture frame, to a few values.
    for (name, bytes, _) in fixtures() {
        for i in 0..bytes.len() {
            for v in [0x00u8, 0x01, 0x7f, 0x80, 0xff, bytes[i] ^ 0x04] {
                let mut m = bytes.clone();
                m[i] = v;
                assert_eq!(reference(&m), ours(&m).ok(), "{name}: byte {i} set to {v:#x}");
            }
        }
        for cut in 0..bytes.len() {
            assert_eq!(reference(&bytes[..cut]), ours(&bytes[..cut]).ok(), "{name}: cut at {cut}");
        }
    }
}
