//! A tiny JSON scanner over bytes for venue frames: no allocation, linear work, never panics.
//!
//! It walks one object's members and hands each key and raw value to the caller; values are
//! returned as byte slices of the input (strings without their quotes; escapes are left as
//! they are, since the fields tickguard reads never contain them). Nested values are skipped
//! with a depth limit, so hostile input cannot recurse.

/// Why a frame is not the JSON we expect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JsonError {
    /// Ended in the middle of a value.
    Truncated,
    /// A byte that cannot start or continue a value here.
    Syntax,
    /// Nested deeper than [`MAX_DEPTH`].
    TooDeep,
}

/// Deepest nesting skipped.
pub const MAX_DEPTH: usize = 16;

/// A raw JSON value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Value<'a> {
    /// A string's contents, without quotes (escapes untouched).
    Str(&'a [u8]),
    /// A number's text.
    Num(&'a [u8]),
    /// An object, braces included.
    Object(&'a [u8]),
    /// An array, brackets included.
    Array(&'a [u8]),
    /// `true` / `false`.
    Bool(bool),
    /// `null`.
    Null,
}

struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Cursor<'a> {
    fn ws(&mut self) {
        while let Some(c) = self.b.get(self.i) {
            if matches!(c, b' ' | b'\n' | b'\r' | b'\t') {
                self.i += 1;
            } else {
                break;
            }
        }
    }
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }
    fn expect(&mut self, c: u8) -> Result<(), JsonError> {
        self.ws();
        match self.peek() {
            Some(x) if x == c => {
                self.i += 1;
                Ok(())
            }
            Some(_) => Err(JsonError::Syntax),
            None => Err(JsonError::Truncated),
        }
    }
    /// After the opening quote: up to the closing quote.
    fn string_body(&mut self) -> Result<&'a [u8], JsonError> {
        let start = self.i;
        loop {
            match self.b.get(self.i) {
                None => return Err(JsonError::Truncated),
                Some(b'"') => {
                    let s = &self.b[start..self.i];
                    self.i += 1;
                    return Ok(s);
                }
                Some(b'\\') => self.i += 2,
                Some(c) if *c < 0x20 => return Err(JsonError::Syntax),
                Some(_) => self.i += 1,
            }
        }
    }
    fn value(&mut self) -> Result<Value<'a>, JsonError> {
        self.ws();
        let start = self.i;
        match self.peek() {
            None => Err(JsonError::Truncated),
            Some(b'"') => {
                self.i += 1;
                self.string_body().map(Value::Str)
            }
            Some(b'{') | Some(b'[') => {
                self.skip_nested()?;
                let raw = &self.b[start..self.i];
                Ok(if raw[0] == b'{' { Value::Object(raw) } else { Value::Array(raw) })
            }
            Some(b't') => self.literal(b"true", Value::Bool(true)),
            Some(b'f') => self.literal(b"false", Value::Bool(false)),
            Some(b'n') => self.literal(b"null", Value::Null),
            Some(c) if c == b'-' || c.is_ascii_digit() => {
                while let Some(c) = self.peek() {
                    if c.is_ascii_digit() || matches!(c, b'-' | b'+' | b'.' | b'e' | b'E') {
                        self.i += 1;
                    } else {
                        break;
                    }
                }
                Ok(Value::Num(&self.b[start..self.i]))
            }
            Some(_) => Err(JsonError::Syntax),
        }
    }
    fn literal(&mut self, word: &[u8], v: Value<'a>) -> Result<Value<'a>, JsonError> {
        match self.b.get(self.i..self.i + word.len()) {
            Some(w) if w == word => {
                self.i += word.len();
                Ok(v)
            }
            Some(_) => Err(JsonError::Syntax),
            None => Err(JsonError::Truncated),
        }
    }
    /// Skips a balanced object or array, strings included, up to `MAX_DEPTH`.
    fn skip_nested(&mut self) -> Result<(), JsonError> {
        let mut depth = 0usize;
        loop {
            match self.b.get(self.i) {
                None => return Err(JsonError::Truncated),
                Some(b'{') | Some(b'[') => {
                    depth += 1;
                    if depth > MAX_DEPTH {
                        return Err(JsonError::TooDeep);
                    }
                    self.i += 1;
                }
                Some(b'}') | Some(b']') => {
                    depth = depth.saturating_sub(1);
                    self.i += 1;
                    if depth == 0 {
                        return Ok(());
                    }
                }
                Some(b'"') => {
                    self.i += 1;
                    self.string_body()?;
                }
                Some(_) => self.i += 1,
            }
        }
    }
}

/// Calls `f(key, value)` for each member of the object `b`, stopping early when `f` returns
/// `false`. Errors on anything that is not one well-formed object (trailing bytes after it
/// other than whitespace are ignored).
pub fn for_each_member<'a>(b: &'a [u8], f: impl FnMut(&'a [u8], Value<'a>) -> bool) -> Result<(), JsonError> {
    walk_members(b, f).map(|_| ())
}

/// As [`for_each_member`], returning how many bytes of `b` the walk consumed: up to and
/// including the object's closing brace, or up to the member where `f` stopped it.
pub fn walk_members<'a>(
    b: &'a [u8],
    mut f: impl FnMut(&'a [u8], Value<'a>) -> bool,
) -> Result<usize, JsonError> {
    let mut c = Cursor { b, i: 0 };
    c.expect(b'{')?;
    c.ws();
    if c.peek() == Some(b'}') {
        return Ok(c.i + 1);
    }
    loop {
        c.expect(b'"')?;
        let key = c.string_body()?;
        c.expect(b':')?;
        let v = c.value()?;
        if !f(key, v) {
            return Ok(c.i);
        }
        c.ws();
        match c.peek() {
            Some(b',') => c.i += 1,
            Some(b'}') => return Ok(c.i + 1),
            Some(_) => return Err(JsonError::Syntax),
            None => return Err(JsonError::Truncated),
        }
    }
}

/// Calls `f(value)` for each element of the array `b`, stopping early when `f` returns
/// `false`.
pub fn for_each_element<'a>(b: &'a [u8], mut f: impl FnMut(Value<'a>) -> bool) -> Result<(), JsonError> {
    let mut c = Cursor { b, i: 0 };
    c.expect(b'[')?;
    c.ws();
    if c.peek() == Some(b']') {
        return Ok(());
    }
    loop {
        let v = c.value()?;
        if !f(v) {
            return Ok(());
        }
        c.ws();
        match c.peek() {
            Some(b',') => c.i += 1,
            Some(b']') => return Ok(()),
            Some(_) => return Err(JsonError::Syntax),
            None => return Err(JsonError::Truncated),
        }
    }
}

/// Parses an unsigned or signed integer's text.
pub fn parse_i64(b: &[u8]) -> Option<i64> {
    let (neg, digits) = match b.first() {
        Some(b'-') => (true, &b[1..]),
        _ => (false, b),
    };
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    let mut v: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(i64::from(d - b'0'))?;
    }
    Some(if neg { -v } else { v })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_members_and_skips_nested() {
        let mut seen = Vec::new();
        let r = for_each_member(
            br#" { "a" : "x\"y", "b":[1,{"c":"}"}], "d":-1.5e3, "e":true, "f":null, "g":{} } "#,
            |k, v| {
                seen.push((k.to_vec(), v));
                true
            },
        );
        assert_eq!(r, Ok(()));
        let keys: Vec<&[u8]> = seen.iter().map(|(k, _)| k.as_slice()).collect();
        assert_eq!(keys, [&b"a"[..], b"b", b"d", b"e", b"f", b"g"]);
        assert_eq!(seen[0].1, Value::Str(br#"x\"y"#));
        assert_eq!(seen[2].1, Value::Num(b"-1.5e3"));
        assert_eq!(seen[3].1, Value::Bool(true));
        assert_eq!(seen[4].1, Value::Null);
    }

    #[test]
    fn rejects_broken_input_without_panicking() {
        for bad in [
            &b""[..],
            b"{",
            b"{\"a\"",
            b"{\"a\":",
            b"{\"a\":\"x",
            b"[1]",
            b"{\"a\":tru}",
            b"{\"a\":1 \"b\":2}",
            b"{\"a\":[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]}",
            b"\xff\xfe",
        ] {
            assert!(for_each_member(bad, |_, _| true).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let mut n = 0;
        assert_eq!(
            for_each_element(br#"[{"a":1}, "x", 3]"#, |_| {
                n += 1;
                true
            }),
            Ok(())
        );
        assert_eq!(n, 3);
        assert!(for_each_element(b"[1,", |_| true).is_err());
        assert_eq!(parse_i64(b"123"), Some(123));
        assert_eq!(parse_i64(b"-7"), Some(-7));
        assert_eq!(parse_i64(b"99999999999999999999"), None);
        assert_eq!(parse_i64(b"1.5"), None);
        assert_eq!(parse_i64(b""), None);
    }
}
