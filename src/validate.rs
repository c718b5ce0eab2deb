//! The one place numeric options and arguments are checked at the native
//! boundary. Every duration and count a JS caller can pass goes through a
//! function here, so no out-of-range value reaches `Duration::from_secs_f64`,
//! moka or tokio (each of which panics on some values).
//!
//! Ranges (documented in the README, "Errors", and checked the same way by
//! the JS layer first):
//! - waits that are timers (`timeoutMs`, `maxWaitMs`, `retryBackoffMs`,
//!   `delayMs`, `connectTimeoutMs`, `commandTimeoutMs`, `writeRetryMs`,
//!   `leaseMs`): `[0, MAX_TIMER_MS]` (2^31 - 1 ms, what a Node timer can
//!   wait), [`Span::Timer`];
//! - lifetimes (`ttlMs`, `l1TtlMs`, `idleMs`, `staleMs`, `refreshAheadMs`,
//!   `windowMs`): `[0, MAX_LIFETIME_MS]` (1e12 ms, about 31.7 years),
//!   [`Span::Lifetime`];
//! - options that mean "no limit" when absent also accept `Infinity` where
//!   their docs say so;
//! - counts and sizes: integers in `[min, 2^53 - 1]` (`Infinity` where the
//!   option's docs say "default Infinity").
//!
//! A value outside its range is `ERR_INVALID_ARG` with a message naming the
//! argument, its value (as JS prints it) and the allowed range. The JS layer
//! turns these into `RangeError`s (a wrong *type* never gets here: napi-rs'
//! conversion fails first, and that is a `TypeError`).

use std::time::Duration;

use crate::error::{HpError, HpResult};

/// The longest timer wait: 2^31 - 1 ms (about 24.8 days).
pub const MAX_TIMER_MS: f64 = 2_147_483_647.0;
/// The longest lifetime: 1e12 ms (about 31.7 years).
pub const MAX_LIFETIME_MS: f64 = 1e12;
/// The longest duration of any kind (what [`duration`] saturates at: a
/// lifetime plus its stale window).
pub const MAX_DURATION_MS: f64 = 2.0 * MAX_LIFETIME_MS;
/// The largest count any option accepts (2^53 - 1, `Number.MAX_SAFE_INTEGER`).
pub const MAX_COUNT: f64 = 9_007_199_254_740_991.0;

/// Which range a duration has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Span {
  /// A wait that is a timer: at most [`MAX_TIMER_MS`].
  Timer,
  /// How long something lives: at most [`MAX_LIFETIME_MS`].
  Lifetime,
}

impl Span {
  fn max(self) -> f64 {
    match self {
      Span::Timer => MAX_TIMER_MS,
      Span::Lifetime => MAX_LIFETIME_MS,
    }
  }
  fn about(self) -> &'static str {
    match self {
      Span::Timer => "about 24.8 days",
      Span::Lifetime => "about 31.7 years",
    }
  }
}
/// The largest byte size any option accepts (2^53 - 1, `Number.MAX_SAFE_INTEGER`).
pub const MAX_BYTES: f64 = 9_007_199_254_740_991.0;

/// `v` as JavaScript's `String(v)` prints it (close enough for messages:
/// `1e+308`, `NaN`, `-Infinity`, `18446744073709552000`, `0` for `-0`).
pub fn js_num(v: f64) -> String {
  if v.is_nan() {
    return "NaN".into();
  }
  if v.is_infinite() {
    return if v > 0.0 { "Infinity" } else { "-Infinity" }.into();
  }
  if v == 0.0 {
    return "0".into();
  }
  let a = v.abs();
  if !(1e-7..1e21).contains(&a) {
    // Rust: "1e308" / "1e-8"; JS: "1e+308" / "1e-8".
    let s = format!("{v:e}");
    return match s.find('e') {
      Some(i) if !s[i + 1..].starts_with('-') => format!("{}e+{}", &s[..i], &s[i + 1..]),
      _ => s,
    };
  }
  format!("{v}")
}

fn range_err(name: &str, v: f64, range: &str) -> HpError {
  HpError::invalid(format!("{name} must be {range}, got {}", js_num(v)))
}

fn duration_range(span: Span, min_exclusive: bool) -> String {
  format!(
    "a number of milliseconds in {}0, {}] ({})",
    if min_exclusive { "(" } else { "[" },
    span.max() as u64,
    span.about()
  )
}

/// A duration in ms: finite, `0 <= v <= span.max()`.
pub fn duration_ms(name: &str, v: f64, span: Span) -> HpResult<f64> {
  if v.is_finite() && v >= 0.0 && v <= span.max() {
    Ok(if v == 0.0 { 0.0 } else { v })
  } else {
    Err(range_err(name, v, &duration_range(span, false)))
  }
}

/// A duration in ms that must be > 0: `0 < v <= span.max()`.
pub fn positive_duration_ms(name: &str, v: f64, span: Span) -> HpResult<f64> {
  if v.is_finite() && v > 0.0 && v <= span.max() {
    Ok(v)
  } else {
    Err(range_err(name, v, &duration_range(span, true)))
  }
}

/// A `Duration` from milliseconds already checked here. Saturating: never
/// panics, whatever `ms` is (NaN and negatives become zero).
pub fn duration(ms: f64) -> Duration {
  let ms = if ms.is_nan() {
    0.0
  } else {
    ms.clamp(0.0, MAX_DURATION_MS)
  };
  Duration::from_secs_f64(ms / 1000.0)
}

/// An integer count in `[min, MAX_COUNT]`.
pub fn count(name: &str, v: f64, min: u64) -> HpResult<u64> {
  if v.is_finite() && v.fract() == 0.0 && v >= min as f64 && v <= MAX_COUNT {
    Ok(v as u64)
  } else {
    Err(range_err(
      name,
      v,
      &format!("an integer in [{min}, {}]", MAX_COUNT as u64),
    ))
  }
}

/// An integer count in `[min, MAX_COUNT]`, or `Infinity` (returned as `None`).
pub fn count_or_inf(name: &str, v: f64, min: u64) -> HpResult<Option<u64>> {
  if v == f64::INFINITY {
    return Ok(None);
  }
  count(name, v, min).map(Some).map_err(|_| {
    range_err(
      name,
      v,
      &format!("an integer in [{min}, {}] or Infinity", MAX_COUNT as u64),
    )
  })
}

/// An integer byte size in `[min, MAX_BYTES]`.
pub fn bytes(name: &str, v: f64, min: u64) -> HpResult<u64> {
  if v.is_finite() && v.fract() == 0.0 && v >= min as f64 && v <= MAX_BYTES {
    Ok(v as u64)
  } else {
    Err(range_err(
      name,
      v,
      &format!("an integer number of bytes in [{min}, 2^53 - 1]"),
    ))
  }
}

/// A finite number in `[lo, hi]` (for non-count quantities such as a cost).
pub fn number_in(name: &str, v: f64, lo: f64, hi: f64) -> HpResult<f64> {
  if v.is_finite() && v >= lo && v <= hi {
    Ok(v)
  } else {
    Err(range_err(
      name,
      v,
      &format!("a number in [{}, {}]", js_num(lo), js_num(hi)),
    ))
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  const RISKY: [f64; 9] = [
    1e308,
    9_007_199_254_740_992.0,      // 2 ** 53
    18_446_744_073_709_551_616.0, // 2 ** 64
    f64::NAN,
    f64::INFINITY,
    f64::NEG_INFINITY,
    -1.0,
    1.5e22,
    f64::MAX,
  ];

  #[test]
  fn durations_reject_every_risky_value_with_name_value_and_range() {
    for v in RISKY {
      let e = duration_ms("ttlMs", v, Span::Lifetime).unwrap_err();
      assert_eq!(e.code, crate::error::Code::InvalidArg);
      assert!(
        e.message.starts_with(
          "ttlMs must be a number of milliseconds in [0, 1000000000000] (about 31.7 years)"
        ),
        "{}",
        e.message
      );
      assert!(e.message.ends_with(&js_num(v)), "{}", e.message);
      assert!(positive_duration_ms("x", v, Span::Timer).is_err());
    }
    assert_eq!(
      duration_ms("x", -0.0, Span::Timer).unwrap().to_bits(),
      0f64.to_bits()
    );
    assert!(positive_duration_ms("x", 0.0, Span::Lifetime).is_err());
    assert_eq!(
      duration_ms("x", MAX_TIMER_MS, Span::Timer).unwrap(),
      MAX_TIMER_MS
    );
    assert!(duration_ms("x", MAX_TIMER_MS + 1.0, Span::Timer).is_err());
    assert!(duration_ms("x", MAX_TIMER_MS + 1.0, Span::Lifetime).is_ok());
    assert!(duration_ms("x", MAX_LIFETIME_MS + 1.0, Span::Lifetime).is_err());
    // `duration` never panics, whatever it is given.
    for v in RISKY {
      let _ = duration(v);
    }
    assert_eq!(duration(1500.0), Duration::from_millis(1500));
  }

  #[test]
  fn counts_and_bytes() {
    for v in RISKY {
      assert!(count("maxEntries", v, 1).is_err());
    }
    assert!(count("n", 0.0, 1).is_err());
    assert!(count("n", 1.5, 1).is_err());
    assert_eq!(count("n", MAX_COUNT, 1).unwrap(), (1u64 << 53) - 1);
    assert_eq!(count_or_inf("n", f64::INFINITY, 1).unwrap(), None);
    assert!(count_or_inf("n", f64::NAN, 1).is_err());
    assert_eq!(bytes("b", 4096.0, 1).unwrap(), 4096);
    assert!(bytes("b", 9_007_199_254_740_992.0, 1).is_err());
    let e = count("maxPendingWrites", 2f64.powi(62), 1).unwrap_err();
    assert_eq!(
      e.message,
      "maxPendingWrites must be an integer in [1, 9007199254740991], got 4611686018427388000"
    );
  }

  #[test]
  fn numbers_print_as_js_does() {
    assert_eq!(js_num(1e308), "1e+308");
    assert_eq!(js_num(f64::NAN), "NaN");
    assert_eq!(js_num(f64::NEG_INFINITY), "-Infinity");
    assert_eq!(js_num(-0.0), "0");
    assert_eq!(js_num(1.5), "1.5");
    assert_eq!(js_num(18_446_744_073_709_551_616.0), "18446744073709552000");
    assert_eq!(js_num(1e21), "1e+21");
    assert_eq!(js_num(-2.5e-9), "-2.5e-9");
  }
}
