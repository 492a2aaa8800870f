//! One parser of position specs, for every door a position comes in by: the configuration's
//! `[[positions]]` tables and the API's `POST /api/v1/positions`. Each door turns its own
//! values (TOML, JSON) into [`Field`]s and its errors into its own shape (a `ConfigError`
//! naming `positions[N].field`, a `400` naming `field`); what is accepted, and what the problem
//! is called, is decided here once. `tests/position_spec.rs` runs one table of cases through
//! both doors.

use super::book::{PositionSpec, check_levels};
use super::price::{Price, Qty, SCALE};
use super::types::{BlindPolicy, PositionId, Side, Symbol};
use crate::limits::{CLIENT_ID_MAX, POSITION_ID_MAX, SYMBOL_MAX};

/// A value as the door found it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Field<'a> {
    /// The key is not there.
    Absent,
    /// JSON `null` (treated as absent).
    Null,
    /// A string.
    Text(&'a str),
    /// A whole number (TOML integer, JSON integer).
    Whole(i64),
    /// A number with a fraction (TOML float, JSON number), rounded at 8 decimals.
    Fraction(f64),
    /// A boolean.
    Bool(bool),
    /// Anything else, by its type word (`a list`, `a table`, `an object`, `a date-time`).
    Other(&'static str),
}

impl Field<'_> {
    /// `a string`, `an integer`, ... for messages.
    pub fn type_word(&self) -> &'static str {
        match self {
            Field::Absent | Field::Null => "nothing",
            Field::Text(_) => "a string",
            Field::Whole(_) => "an integer",
            Field::Fraction(_) => "a float",
            Field::Bool(_) => "a boolean",
            Field::Other(w) => w,
        }
    }
}

/// One key of a position spec.
#[derive(Clone, Copy, Debug)]
pub struct SpecKey {
    /// Key name.
    pub name: &'static str,
    /// Type as the documentation writes it.
    pub type_name: &'static str,
    /// Whether it must be present (in the configuration; the API makes up an absent `id`).
    pub required: bool,
    /// Default when absent (`(none)` for no level), or empty when required.
    pub default: &'static str,
    /// What it is.
    pub meaning: &'static str,
    /// An example value, used in error messages' fixes.
    pub example: &'static str,
}

const fn key(
    name: &'static str,
    type_name: &'static str,
    required: bool,
    default: &'static str,
    meaning: &'static str,
    example: &'static str,
) -> SpecKey {
    SpecKey { name, type_name, required, default, meaning, example }
}

/// The keys of a position spec, in documentation order.
pub static SPEC_KEYS: &[SpecKey] = &[
    key("id", "string", true, "", "Unique id: 1 to 20 characters of `A-Z a-z 0-9 _ -`.", "\"btc-1\""),
    key("symbol", "string", true, "", "Instrument as the venue writes it, at most 32 bytes.", "\"BTCUSDT\""),
    key(
        "side",
        "long / short",
        true,
        "",
        "Long (closed by selling) or short (closed by buying); `buy` and `sell` are accepted, in any case.",
        "\"long\"",
    ),
    key("qty", "decimal", true, "", "Quantity held; above zero.", "0.5"),
    key("entry", "decimal", true, "", "Entry price; above zero.", "60000"),
    key("stop_loss", "decimal", false, "(none)", "Stop-loss level; above zero.", "58000"),
    key("take_profit", "decimal", false, "(none)", "Take-profit level; above zero.", "65000"),
    key(
        "blind_policy",
        "alert / flatten",
        false,
        "alert",
        "What the position does once blind past `cache.blind_grace_s`: keep alerting, or close at market.",
        "\"flatten\"",
    ),
    key(
        "product",
        "D / I / MTF",
        false,
        "D",
        "Upstox product the position was opened with: delivery, intraday or margin trading facility (closing orders use it; other brokers ignore it).",
        "\"I\"",
    ),
];

/// The key named `name` (the first key for an unknown name, to stay total).
pub fn spec_key(name: &str) -> &'static SpecKey {
    SPEC_KEYS.iter().find(|k| k.name == name).unwrap_or(&SPEC_KEYS[0])
}

/// Why a spec was refused: the field, what was wrong, and how to fix it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecError {
    /// The field (a [`SPEC_KEYS`] name, or the unknown key itself).
    pub field: String,
    /// What was wrong (`is missing`, `must be above zero`, ...).
    pub problem: String,
    /// How to fix it, in the words of a configuration file (the API shows `problem` only).
    pub fix: String,
    /// The field was missing (the configuration reports these as `Missing`).
    pub missing: bool,
}

fn err(field: &str, problem: impl Into<String>, fix: impl Into<String>) -> SpecError {
    SpecError { field: field.to_string(), problem: problem.into(), fix: fix.into(), missing: false }
}

fn missing(field: &str) -> SpecError {
    SpecError {
        field: field.to_string(),
        problem: "is missing".into(),
        fix: format!("add {field} = {}", spec_key(field).example),
        missing: true,
    }
}

/// A side the broker cannot close is refused with this reason (`broker::binance::check_side`).
pub type SideRule = fn(Side) -> Result<(), &'static str>;

/// What the door adds to the rules.
#[derive(Clone, Debug, Default)]
pub struct SpecRules {
    /// Upper-case the symbol first (the venue's symbols are case-free: Binance).
    pub uppercase_symbols: bool,
    /// The id to use when none is given (the API makes one up; the configuration requires it).
    pub default_id: Option<String>,
    /// The broker cannot close this side: refuse it here, with this reason, rather than fail
    /// at the stop (`broker::binance::check_side`: spot cannot close a short).
    pub side_rule: Option<SideRule>,
}

/// The first key of `keys` that is no spec key, with the nearest spec key's name if one is
/// close (a likely misspelling).
pub fn unknown_key<'k>(mut keys: impl Iterator<Item = &'k str>) -> Option<(&'k str, Option<&'static str>)> {
    let k = keys.find(|k| !SPEC_KEYS.iter().any(|s| s.name == *k))?;
    let near = SPEC_KEYS
        .iter()
        .map(|s| (edit_distance(k, s.name), s.name))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, n)| n);
    Some((k, near))
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The one id rule: 1 to [`POSITION_ID_MAX`] characters of `A-Z a-z 0-9 _ -` (they travel into
/// broker client ids, whose alphabet this is).
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= POSITION_ID_MAX
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The one client-id rule: 1 to [`CLIENT_ID_MAX`] characters of `A-Z a-z 0-9 _ -`, what
/// `engine::client_id` makes (`tg<generation>-<position id>-<attempt>`) and every venue accepts
/// (Binance's `newClientOrderId`, Upstox's `tag`). The brokers check an id against it before
/// sending, never a rule of their own.
pub fn valid_client_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= CLIENT_ID_MAX
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The one symbol rule: 1 to [`SYMBOL_MAX`] bytes of printable ASCII, no space or comma.
/// `None` when `s` follows it, else what is wrong.
pub fn symbol_problem(s: &str) -> Option<String> {
    if s.is_empty() {
        Some("symbol is empty".into())
    } else if s.len() > SYMBOL_MAX {
        Some(format!("symbol is {} bytes, longer than {SYMBOL_MAX} (limits::SYMBOL_MAX)", s.len()))
    } else if !s.bytes().all(|b| b.is_ascii_graphic() && b != b',') {
        Some("symbol must be printable ASCII without spaces or commas".into())
    } else {
        None
    }
}

/// `long`/`buy`, `short`/`sell`, in any case ([`Side::parse`]).
pub fn parse_side(s: &str) -> Option<Side> {
    Side::parse(s)
}

fn text<'a>(name: &str, f: Field<'a>) -> Result<Option<&'a str>, SpecError> {
    match f {
        Field::Absent | Field::Null => Ok(None),
        Field::Text(s) => Ok(Some(s)),
        other => Err(err(
            name,
            format!("must be a string, found {}", other.type_word()),
            format!("write it like {name} = {}", spec_key(name).example),
        )),
    }
}

/// A price or quantity in fixed-point units: a whole number (exact), a number with a fraction
/// (rounded at 8 decimals) or a decimal string (exact); always above zero.
pub fn units(name: &str, f: Field<'_>) -> Result<Option<i64>, SpecError> {
    let ex = spec_key(name).example;
    let fix =
        || format!("write a positive number like {name} = {ex} or a decimal string like {name} = \"{ex}\"");
    let what = if name == "qty" { "quantity" } else { "price" };
    let u = match f {
        Field::Absent | Field::Null => return Ok(None),
        Field::Whole(i) => {
            i.checked_mul(SCALE).ok_or_else(|| err(name, format!("invalid {what}: too large"), fix()))?
        }
        Field::Fraction(x) => Price::from_f64(x, 8)
            .map(Price::units)
            .map_err(|e| err(name, format!("invalid {what}: {e}"), fix()))?,
        Field::Text(s) => Price::parse(s.trim())
            .map(Price::units)
            .map_err(|e| err(name, format!("invalid {what}: {e}"), fix()))?,
        other => {
            return Err(err(
                name,
                format!("must be a number or a decimal string, found {}", other.type_word()),
                fix(),
            ));
        }
    };
    if u <= 0 {
        return Err(err(name, "must be above zero", fix()));
    }
    Ok(Some(u))
}

/// Parses a position spec from its fields (`get` answers [`Field::Absent`] for a missing key).
/// Unknown keys are the door's to refuse first ([`unknown_key`]); `product` is the door's
/// (a venue's) to read.
pub fn parse<'a>(get: impl Fn(&str) -> Field<'a>, rules: &SpecRules) -> Result<PositionSpec, SpecError> {
    let id_text: String = match text("id", get("id"))? {
        Some(s) => s.to_string(),
        None => rules.default_id.clone().ok_or_else(|| missing("id"))?,
    };
    let id = PositionId::try_from(id_text.as_str()).ok().filter(|_| valid_id(&id_text)).ok_or_else(|| {
        err(
            "id",
            format!("must be 1 to {POSITION_ID_MAX} characters of A-Z a-z 0-9 _ -"),
            "write it like id = \"btc-1\"",
        )
    })?;

    let mut sym = text("symbol", get("symbol"))?.ok_or_else(|| missing("symbol"))?.to_string();
    if rules.uppercase_symbols {
        // The venue's symbols are case-free: `btcusdt` is BTCUSDT, the name its frames carry.
        sym.make_ascii_uppercase();
    }
    let fix = "use the venue's symbol, like symbol = \"BTCUSDT\"";
    if let Some(problem) = symbol_problem(&sym) {
        return Err(err("symbol", problem, fix));
    }
    let symbol = Symbol::try_from(sym.as_str())
        .map_err(|_| err("symbol", format!("symbol longer than {SYMBOL_MAX} bytes"), fix))?;

    let side_f = get("side");
    let side_text = text("side", side_f)?.ok_or_else(|| missing("side"))?;
    let side = parse_side(side_text).ok_or_else(|| {
        err(
            "side",
            "must be long or short (buy and sell are accepted)",
            "write side = \"long\" or side = \"short\"",
        )
    })?;
    if let Some(rule) = rules.side_rule {
        rule(side).map_err(|why| {
            err(
                "side",
                format!("position {id}: {why}"),
                "protect only long positions with the binance broker, or use broker.kind = \"paper\"",
            )
        })?;
    }

    let qty = Qty::from_units(units("qty", get("qty"))?.ok_or_else(|| missing("qty"))?);
    let entry = Price::from_units(units("entry", get("entry"))?.ok_or_else(|| missing("entry"))?);
    let stop_loss = units("stop_loss", get("stop_loss"))?.map(Price::from_units);
    let take_profit = units("take_profit", get("take_profit"))?.map(Price::from_units);

    let blind_policy = match text("blind_policy", get("blind_policy"))? {
        None => BlindPolicy::default(),
        Some(t) => BlindPolicy::parse(t).ok_or_else(|| {
            err(
                "blind_policy",
                "must be alert or flatten",
                "write blind_policy = \"alert\" or blind_policy = \"flatten\"",
            )
        })?,
    };

    if let (Some(sl), Some(tp), Err(_)) = (stop_loss, take_profit, check_levels(side, stop_loss, take_profit))
    {
        let (problem, fix) = match side {
            Side::Long => (
                format!(
                    "a long's stop_loss ({sl}) must be below its take_profit ({tp}); position {id} has them inverted"
                ),
                "lower stop_loss or raise take_profit (a long stops out below the market and takes profit above)",
            ),
            Side::Short => (
                format!(
                    "a short's stop_loss ({sl}) must be above its take_profit ({tp}); position {id} has them inverted"
                ),
                "raise stop_loss or lower take_profit (a short stops out above the market and takes profit below)",
            ),
        };
        return Err(err("stop_loss", problem, fix));
    }

    let spec = PositionSpec { id, symbol, side, qty, entry, stop_loss, take_profit, blind_policy };
    // Everything validate() checks has been checked above with the field named; this is the
    // engine's own word on it, in case the two ever disagree.
    spec.validate().map_err(|e| err("id", e.to_string(), "fix the position's fields"))?;
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields<'a>(pairs: &'a [(&'a str, Field<'a>)]) -> impl Fn(&str) -> Field<'a> + 'a {
        move |k| pairs.iter().find(|(n, _)| *n == k).map_or(Field::Absent, |(_, v)| *v)
    }

    #[test]
    fn a_whole_spec_parses() {
        let f = [
            ("id", Field::Text("b-1")),
            ("symbol", Field::Text("btcusdt")),
            ("side", Field::Text("BUY")),
            ("qty", Field::Fraction(0.5)),
            ("entry", Field::Whole(60_000)),
            ("stop_loss", Field::Text("58000.5")),
        ];
        let s = parse(fields(&f), &SpecRules { uppercase_symbols: true, ..SpecRules::default() })
            .expect("parses");
        assert_eq!((s.symbol.as_str(), s.side, s.qty.units()), ("BTCUSDT", Side::Long, SCALE / 2));
        assert_eq!(s.stop_loss.map(Price::units), Some(58_000 * SCALE + SCALE / 2));
    }

    #[test]
    fn the_side_rule_refuses_a_short() {
        let f = [
            ("id", Field::Text("s-1")),
            ("symbol", Field::Text("X")),
            ("side", Field::Text("sell")),
            ("qty", Field::Whole(1)),
            ("entry", Field::Whole(1)),
        ];
        let rules = SpecRules {
            side_rule: Some(|s| if s == Side::Short { Err("no shorts") } else { Ok(()) }),
            ..SpecRules::default()
        };
        let e = parse(fields(&f), &rules).expect_err("refused");
        assert_eq!((e.field.as_str(), e.problem.as_str()), ("side", "position s-1: no shorts"));
    }

    #[test]
    fn unknown_keys_name_the_nearest() {
        assert_eq!(unknown_key(["id", "stop_los"].into_iter()), Some(("stop_los", Some("stop_loss"))));
        assert_eq!(unknown_key(["id", "colour"].into_iter()), Some(("colour", None)));
        assert_eq!(unknown_key(["id", "qty"].into_iter()), None);
    }
}
