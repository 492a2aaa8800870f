//! Fixed-point prices and quantities: integers with eight decimal places, never `f64`.
//!
//! Decimal strings (Binance sends `"575.05000000"`) parse exactly or not at all. A venue that
//! sends binary floating point (Upstox's protobuf `double`) is converted from the float's
//! shortest round-trip decimal form, rounded half-to-even at the instrument's scale, so
//! `2.675` at scale 2 is `2.68` (what the venue meant), not `2.67` (the float's binary value).

use core::fmt;

/// Decimal places every [`Price`] and [`Qty`] carries.
pub const DECIMALS: u32 = 8;
/// `10^DECIMALS`: the integer that stands for 1.
pub const SCALE: i64 = 100_000_000;

/// Why a decimal text or a float could not become a fixed-point number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecimalError {
    /// Empty text, or only a sign or a point.
    Empty,
    /// A character that is not a digit, one leading sign or one point.
    InvalidChar,
    /// More than eight non-zero decimal places: it cannot be held exactly.
    TooPrecise,
    /// Beyond what 64 bits at eight decimals hold (about ±92 billion).
    Overflow,
    /// A float that is NaN or infinite.
    NotFinite,
}

impl fmt::Display for DecimalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DecimalError::Empty => "no digits",
            DecimalError::InvalidChar => "not a decimal number (digits, one '.', optional sign)",
            DecimalError::TooPrecise => "more than 8 decimal places",
            DecimalError::Overflow => "too large (limit about 92 billion)",
            DecimalError::NotFinite => "not a finite number",
        })
    }
}

/// Parses `[+-]digits[.digits]` into units of `10^-DECIMALS`, rounding half-to-even at
/// `keep` decimals (`keep <= DECIMALS`). With `exact`, any non-zero digit past `keep` is an
/// error instead of being rounded.
fn parse_units(s: &[u8], keep: u32, exact: bool) -> Result<i64, DecimalError> {
    let (neg, body) = match s.first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let mut int: i64 = 0;
    let mut frac: i64 = 0; // first `keep` decimals
    let mut frac_digits: u32 = 0;
    let mut seen_digit = false;
    let mut seen_point = false;
    // Rounding state for digits past `keep`: the first dropped digit and whether any
    // non-zero digit follows it.
    let mut first_dropped: Option<u8> = None;
    let mut sticky = false;
    for &c in body {
        match c {
            b'0'..=b'9' => {
                seen_digit = true;
                let d = i64::from(c - b'0');
                if !seen_point {
                    int = int.checked_mul(10).and_then(|v| v.checked_add(d)).ok_or(DecimalError::Overflow)?;
                } else if frac_digits < keep {
                    frac = frac * 10 + d;
                    frac_digits += 1;
                } else if first_dropped.is_none() {
                    if exact && d != 0 {
                        return Err(DecimalError::TooPrecise);
                    }
                    first_dropped = Some(c - b'0');
                } else if d != 0 {
                    if exact {
                        return Err(DecimalError::TooPrecise);
                    }
                    sticky = true;
                }
            }
            b'.' if !seen_point => seen_point = true,
            _ => return Err(DecimalError::InvalidChar),
        }
    }
    if !seen_digit {
        return Err(DecimalError::Empty);
    }
    // Round half to even at `keep` decimals.
    if let Some(d) = first_dropped {
        let last_odd = if keep == 0 { int % 2 == 1 } else { frac % 2 == 1 };
        let round_up = d > 5 || (d == 5 && (sticky || last_odd));
        if round_up {
            frac += 1;
        }
    }
    while frac_digits < keep {
        frac *= 10;
        frac_digits += 1;
    }
    // frac may have carried to 10^keep: the arithmetic below absorbs it.
    let unit = 10_i64.pow(DECIMALS - keep);
    let keep_scale = 10_i64.pow(keep);
    let v = int
        .checked_mul(keep_scale)
        .and_then(|v| v.checked_add(frac))
        .and_then(|v| v.checked_mul(unit))
        .ok_or(DecimalError::Overflow)?;
    Ok(if neg { -v } else { v })
}

/// Shortest round-trip decimal of a float, rounded half-to-even at `scale` decimals.
fn units_from_f64(v: f64, scale: u32) -> Result<i64, DecimalError> {
    use core::fmt::Write;
    if !v.is_finite() {
        return Err(DecimalError::NotFinite);
    }
    if v.abs() >= 9.0e10 {
        return Err(DecimalError::Overflow);
    }
    // Below half of the smallest unit every scale rounds to zero; this also keeps the
    // text short (`{}` never uses an exponent, so 1e-300 would print 300 digits).
    if v.abs() < 1.0e-9 {
        return Ok(0);
    }
    let mut buf: heapless::String<48> = heapless::String::new();
    write!(buf, "{v}").map_err(|_| DecimalError::Overflow)?;
    parse_units(buf.as_bytes(), scale.min(DECIMALS), false)
}

macro_rules! fixed {
    ($(#[$doc:meta])* $name:ident, $min_decimals:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name(i64);

        impl $name {
            /// Zero.
            pub const ZERO: $name = $name(0);

            /// From raw units of `10^-8`.
            pub const fn from_units(units: i64) -> Self {
                $name(units)
            }
            /// Raw units of `10^-8`.
            pub const fn units(self) -> i64 {
                self.0
            }
            /// Parses a decimal text exactly: at most eight non-zero decimal places.
            pub fn parse(s: &str) -> Result<Self, DecimalError> {
                Self::parse_bytes(s.as_bytes())
            }
            /// [`Self::parse`] on bytes straight from a frame.
            pub fn parse_bytes(s: &[u8]) -> Result<Self, DecimalError> {
                parse_units(s, DECIMALS, true).map($name)
            }
            /// From a venue's float, rounded half-to-even at `scale` decimals (clamped to 8).
            pub fn from_f64(v: f64, scale: u32) -> Result<Self, DecimalError> {
                units_from_f64(v, scale).map($name)
            }
            /// Approximate float, for JSON and metrics only; never for decisions.
            pub fn to_f64(self) -> f64 {
                self.0 as f64 / SCALE as f64
            }
            /// True when above zero.
            pub const fn is_positive(self) -> bool {
                self.0 > 0
            }
            /// Sum, `None` on overflow.
            pub fn checked_add(self, o: Self) -> Option<Self> {
                self.0.checked_add(o.0).map($name)
            }
            /// Difference, `None` on overflow.
            pub fn checked_sub(self, o: Self) -> Option<Self> {
                self.0.checked_sub(o.0).map($name)
            }
            /// Difference, clamped at zero below.
            pub fn saturating_sub(self, o: Self) -> Self {
                $name(self.0.saturating_sub(o.0).max(0))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write_fixed(f, self.0, $min_decimals)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write_fixed(f, self.0, $min_decimals)
            }
        }

        impl core::str::FromStr for $name {
            type Err = DecimalError;
            fn from_str(s: &str) -> Result<Self, DecimalError> {
                Self::parse(s)
            }
        }
    };
}

fixed!(
    /// A price: units of `10^-8` of the quote currency.
    Price,
    2
);
fixed!(
    /// A quantity: units of `10^-8` of the base asset or shares.
    Qty,
    0
);

impl Qty {
    /// The smaller of two quantities.
    pub fn min(self, o: Qty) -> Qty {
        if self.0 <= o.0 { self } else { o }
    }
    /// Rounds down to a multiple of `step` (a venue's lot size); `step` zero leaves it as is.
    pub fn round_down_to(self, step: Qty) -> Qty {
        if step.0 <= 0 { self } else { Qty(self.0 - self.0.rem_euclid(step.0)) }
    }
}

/// Notional value `price * qty` in units of `10^-8` (wide, never overflows for real sizes).
pub fn notional(price: Price, qty: Qty) -> i128 {
    i128::from(price.0) * i128::from(qty.0) / i128::from(SCALE)
}

/// Writes `units` with at least `min` and at most eight decimals, trailing zeros trimmed.
fn write_fixed(f: &mut fmt::Formatter<'_>, units: i64, min: usize) -> fmt::Result {
    let neg = units < 0;
    let abs = units.unsigned_abs();
    let scale = SCALE as u64;
    let int = abs / scale;
    let mut frac = abs % scale;
    let mut digits = DECIMALS as usize;
    while digits > min && frac % 10 == 0 {
        frac /= 10;
        digits -= 1;
    }
    if neg {
        f.write_str("-")?;
    }
    if digits == 0 { write!(f, "{int}") } else { write!(f, "{int}.{frac:0digits$}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Price {
        Price::parse(s).expect("valid")
    }

    #[test]
    fn parses_exactly() {
        assert_eq!(p("575").units(), 575 * SCALE);
        assert_eq!(p("575.05000000").units(), 57_505_000_000);
        assert_eq!(p("0.00000001").units(), 1);
        assert_eq!(p("-1.5").units(), -150_000_000);
        assert_eq!(p(".5").units(), 50_000_000);
        assert_eq!(p("5.").units(), 5 * SCALE);
        assert_eq!(p("1.1234567800000").units(), 112_345_678);
        assert_eq!(Price::parse("1.123456789"), Err(DecimalError::TooPrecise));
        assert_eq!(Price::parse(""), Err(DecimalError::Empty));
        assert_eq!(Price::parse("-"), Err(DecimalError::Empty));
        assert_eq!(Price::parse("."), Err(DecimalError::Empty));
        assert_eq!(Price::parse("1e5"), Err(DecimalError::InvalidChar));
        assert_eq!(Price::parse("1.2.3"), Err(DecimalError::InvalidChar));
        assert_eq!(Price::parse(" 1"), Err(DecimalError::InvalidChar));
        assert_eq!(Price::parse("99999999999"), Err(DecimalError::Overflow));
        assert_eq!(Price::parse("92233720368.54775807").map(|p| p.units()), Ok(i64::MAX));
        assert_eq!(Price::parse("92233720368.54775808"), Err(DecimalError::Overflow));
    }

    #[test]
    fn floats_round_half_to_even_at_scale() {
        let f = |v: f64, s: u32| Price::from_f64(v, s).expect("finite").to_string();
        assert_eq!(f(2.675, 2), "2.68"); // shortest decimal is 2.675: half, 7 is odd -> up
        assert_eq!(f(2.665, 2), "2.66"); // half, 6 is even -> stays
        assert_eq!(f(2.6651, 2), "2.67");
        assert_eq!(f(575.0, 2), "575.00");
        assert_eq!(f(204.1, 2), "204.10");
        assert_eq!(f(0.5, 0), "0.00");
        assert_eq!(f(1.5, 0), "2.00");
        assert_eq!(f(2.5, 0), "2.00");
        assert_eq!(f(-2.675, 2), "-2.68");
        assert_eq!(f(9.999, 2), "10.00");
        assert_eq!(f(0.1 + 0.2, 8), "0.30");
        assert_eq!(f(1e-300, 2), "0.00");
        assert_eq!(Price::from_f64(f64::NAN, 2), Err(DecimalError::NotFinite));
        assert_eq!(Price::from_f64(1e11, 2), Err(DecimalError::Overflow));
    }

    #[test]
    fn displays_trimmed() {
        assert_eq!(p("575").to_string(), "575.00");
        assert_eq!(p("698.25").to_string(), "698.25");
        assert_eq!(p("0.00012345").to_string(), "0.00012345");
        assert_eq!(p("-0.5").to_string(), "-0.50");
        assert_eq!(Qty::parse("10").expect("valid").to_string(), "10");
        assert_eq!(Qty::parse("0.125").expect("valid").to_string(), "0.125");
    }

    #[test]
    fn lot_rounding_and_notional() {
        let q = Qty::parse("1.23456").expect("valid");
        assert_eq!(q.round_down_to(Qty::parse("0.001").expect("valid")).to_string(), "1.234");
        assert_eq!(q.round_down_to(Qty::ZERO), q);
        assert_eq!(notional(p("575"), Qty::parse("10.5").expect("valid")), 6037_50000000);
    }
}
