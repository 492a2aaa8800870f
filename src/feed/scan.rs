//! Byte scans of the per-frame decode path, sixteen bytes a step.
//!
//! The Binance decoder spends most of its time finding where a string ends. These scans
//! classify sixteen bytes at once with the CPU's vector unit: SSE2 on x86_64 and NEON on
//! aarch64, both part of those architectures' baseline (every such CPU has them and rustc's
//! targets enable them), so there is no run-time detection and no fallback to choose at run
//! time. Other architectures use a scalar loop with the same results.
//!
//! This is the only module of tickguard with `unsafe`: a vector load of sixteen bytes from a
//! `&[u8; 16]`, and calls of the architecture's baseline intrinsics. Each block says why it
//! is sound; `tests` check every scan against a byte-by-byte reference, and `scripts/test`
//! also runs them on aarch64 (under qemu) so that both vector paths are exercised.
#![allow(unsafe_code)]

/// How many mask bits stand for one byte in a [`Class`] mask.
#[cfg(target_arch = "aarch64")]
const BITS: u32 = 4;
#[cfg(not(target_arch = "aarch64"))]
const BITS: u32 = 1;

/// Which bytes a scan stops at.
#[derive(Clone, Copy)]
enum Class {
    /// The bytes that end a plain JSON string: below `#` (control bytes, space, `!` and `"`
    /// itself) or a backslash.
    Stops,
    /// Anything but an ASCII digit.
    NonDigits,
}

/// A mask of the bytes of `c` in `class`. Byte `k` is flagged by bit `k * BITS` (on
/// aarch64 also by the three bits above it), so [`first`] of the mask is the first such byte.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn mask(c: &[u8; 16], class: Class) -> u64 {
    use core::arch::x86_64::{
        _mm_and_si128, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_max_epu8, _mm_min_epu8, _mm_movemask_epi8,
        _mm_set1_epi8,
    };
    // SAFETY: the load reads 16 bytes from `c`, a reference to exactly 16 initialised
    // bytes, and `_mm_loadu_si128` has no alignment requirement. The other calls are SSE2
    // intrinsics without memory access; SSE2 is part of the x86_64 baseline, enabled on every
    // x86_64 target rustc builds for, so calling them cannot execute an unsupported
    // instruction.
    let m = unsafe {
        let v = _mm_loadu_si128(c.as_ptr().cast());
        // max(v, x) == v exactly when v >= x, min(v, x) == v when v <= x (unsigned).
        match class {
            Class::Stops => {
                let plain = _mm_cmpeq_epi8(_mm_max_epu8(v, _mm_set1_epi8(0x23)), v);
                let backslash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8));
                !_mm_movemask_epi8(plain) | _mm_movemask_epi8(backslash)
            }
            Class::NonDigits => {
                let ge0 = _mm_cmpeq_epi8(_mm_max_epu8(v, _mm_set1_epi8(b'0' as i8)), v);
                let le9 = _mm_cmpeq_epi8(_mm_min_epu8(v, _mm_set1_epi8(b'9' as i8)), v);
                !_mm_movemask_epi8(_mm_and_si128(ge0, le9))
            }
        }
    };
    u64::from(m as u32 & 0xFFFF)
}

#[cfg(target_arch = "aarch64")]
#[inline(always)]
fn mask(c: &[u8; 16], class: Class) -> u64 {
    use core::arch::aarch64::{
        vceqq_u8, vcgtq_u8, vcltq_u8, vdupq_n_u8, vget_lane_u64, vld1q_u8, vorrq_u8, vreinterpret_u64_u8,
        vreinterpretq_u16_u8, vshrn_n_u16,
    };
    // SAFETY: the load reads 16 bytes from `c`, a reference to exactly 16 initialised bytes
    // (`vld1q_u8` has no alignment requirement beyond a byte's). The other calls are NEON
    // intrinsics without memory access; NEON is part of the aarch64 baseline, enabled on
    // every aarch64 target rustc builds for.
    unsafe {
        let v = vld1q_u8(c.as_ptr());
        let m = match class {
            Class::Stops => vorrq_u8(vcltq_u8(v, vdupq_n_u8(0x23)), vceqq_u8(v, vdupq_n_u8(b'\\'))),
            Class::NonDigits => vorrq_u8(vcltq_u8(v, vdupq_n_u8(b'0')), vcgtq_u8(v, vdupq_n_u8(b'9'))),
        };
        // Narrow each 16-bit lane by 4: one nibble per byte, in byte order.
        vget_lane_u64::<0>(vreinterpret_u64_u8(vshrn_n_u16::<4>(vreinterpretq_u16_u8(m))))
    }
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
#[inline(always)]
fn mask(c: &[u8; 16], class: Class) -> u64 {
    c.iter().enumerate().fold(0, |m, (k, &b)| {
        let hit = match class {
            Class::Stops => b < 0x23 || b == b'\\',
            Class::NonDigits => !b.is_ascii_digit(),
        };
        m | u64::from(hit) << k
    })
}

/// The first byte a mask flags (`16` when it flags none).
#[inline(always)]
pub fn first(m: u64) -> usize {
    (m.trailing_zeros() / BITS).min(16) as usize
}

/// The sixteen bytes at `b[i..]`, if there are that many.
#[inline(always)]
fn chunk(b: &[u8], i: usize) -> Option<&[u8; 16]> {
    b.get(i..i.checked_add(16)?).and_then(|c| <&[u8; 16]>::try_from(c).ok())
}

/// The non-digits among the sixteen bytes at `b[i..]` as a mask for [`first`];
/// `None` when fewer than sixteen bytes are left.
#[inline(always)]
pub fn non_digits(b: &[u8], i: usize) -> Option<u64> {
    chunk(b, i).map(|c| mask(c, Class::NonDigits))
}

#[inline(always)]
fn stops(c: &[u8; 16]) -> u64 {
    mask(c, Class::Stops)
}

/// Where the plain string starting at `b[i]` ends: the index of its closing `"`. A plain
/// string has no byte below `#` (control bytes, space, `!`) and no backslash; `None` for any
/// other string (a slower path then reads it) and when the end comes first.
#[inline(always)]
pub fn plain_end(b: &[u8], mut i: usize) -> Option<usize> {
    let hit = |j: usize| (b.get(j) == Some(&b'"')).then_some(j);
    while let Some(c) = chunk(b, i) {
        let m = stops(c);
        if m != 0 {
            return hit(i + first(m));
        }
        i += 16;
    }
    // Fewer than 16 bytes left: scan the last 16 of `b` (overlapping what was scanned) and
    // drop the flags of the bytes before `i`; a shorter `b` byte by byte.
    if i >= b.len() {
        return None;
    }
    let m = match b.len().checked_sub(16).and_then(|start| Some((start, chunk(b, start)?))) {
        Some((start, c)) => stops(c) >> ((i - start) as u32 * BITS),
        None => {
            let j = i + b[i..].iter().position(|&c| c < 0x23 || c == b'\\')?;
            return hit(j);
        }
    };
    (m != 0).then(|| hit(i + first(m)))?
}

/// Where the plain string whose closing quote is `b[end]` starts: the index of its opening
/// `"`, found scanning backward from `end` sixteen bytes at a time. `None` when the byte
/// before the string's contents is not a quote (the string is not plain) or the start of
/// `b` comes first.
#[inline(always)]
pub fn plain_start(b: &[u8], end: usize) -> Option<usize> {
    let hit = |j: usize| (b.get(j) == Some(&b'"')).then_some(j);
    let mut e = end.min(b.len());
    while let Some(s) = e.checked_sub(16) {
        let m = stops(chunk(b, s)?);
        if m != 0 {
            return hit(s + ((63 - m.leading_zeros()) / BITS) as usize);
        }
        e = s;
    }
    hit(b.get(..e)?.iter().rposition(|&c| c < 0x23 || c == b'\\')?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reference_start(b: &[u8], end: usize) -> Option<usize> {
        let j = b.get(..end.min(b.len()))?.iter().rposition(|&c| c < 0x23 || c == b'\\')?;
        (b[j] == b'"').then_some(j)
    }

    fn reference(b: &[u8], i: usize) -> Option<usize> {
        let j = i + b.get(i..)?.iter().position(|&c| c < 0x23 || c == b'\\')?;
        (b[j] == b'"').then_some(j)
    }

    #[test]
    fn finds_the_closing_quote_and_refuses_what_is_not_plain() {
        let f = br#"{"stream":"bnbusdt@bookTicker","data":{"u":400900217,"s":"BNBUSDT"}}"#;
        assert_eq!(plain_end(f, 11), Some(29));
        assert_eq!(plain_end(f, 60), Some(65));
        assert_eq!(plain_end(b"abc\"", 0), Some(3));
        assert_eq!(plain_end(b"0123456789abcdefghij\"", 0), Some(20));
        assert_eq!(plain_end(b"0123456789abcdefghij\"", 19), Some(20));
        assert_eq!(plain_end(b"0123456789abcdefghij\"", 21), None);
        assert_eq!(plain_end(b"0123456789abcdefghij\"", 99), None);
        assert_eq!(plain_end(b"0123456789ab\\\"", 0), None);
        assert_eq!(plain_end(b"0123 5678\"", 0), None);
        assert_eq!(plain_end(b"\xff\x80\xfe\"", 0), Some(3));
        assert_eq!(plain_end(b"no quote at all, long enough", 0), None);
    }

    proptest! {
        #[test]
        fn agrees_with_the_reference(
            b in prop::collection::vec(prop::sample::select(vec![b'a', b'Z', b'0', b'"', b'\\', b' ', b'!', b'#', 0, 0x1f, 0x7f, 0x80, 0xff]), 0..80),
            i in 0usize..90,
        ) {
            prop_assert_eq!(plain_end(&b, i), reference(&b, i));
            prop_assert_eq!(plain_start(&b, i), reference_start(&b, i));
        }
    }
}
