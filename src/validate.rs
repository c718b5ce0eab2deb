//! The one place numeric options and arguments are checked at the native
//! boundary. Every duration and count a JS caller can pass goes through a
//! function here, so no out-of-range value reaches `Duration::from_secs_f64`,
//! moka or tokio (each of which panics on some values).
//!
//! Ranges (documented in the README, "Errors"):
//! - durations (`...Ms`): a finite number of milliseconds in
//!   `[0, MAX_DURATION_MS]` (365 days); options that mean "wait forever" when
//!   absent also accept `Infinity` where their docs say so;
//! - counts (`max...`, `limit`, ...): an integer in `[min, MAX_COUNT]`
//!   (2^32 - 1), or `Infinity` where the option's docs say "default Infinity";
//! - sizes in bytes: an integer in `[min, MAX_BYTES]` (2^53 - 1).
//!
//! A value outside its range is `ERR_INVALID_ARG` with a message naming the
//! argument, its value (as JS prints it) and the allowed range. The JS layer
//! turns these into `RangeError`s (a wrong *type* never gets here: napi-rs'
//! conversion fails first, and that is a `TypeError`).

use std::time::Duration;

use crate::error::{HpError, HpResult};

/// The longest duration any option or argument accepts: 365 days in ms.
pub const MAX_DURATION_MS: f64 = 365.0 * 24.0 * 3600.0 * 1000.0;
/// The largest count any option accepts (2^32 - 1).
pub const MAX_COUNT: f64 = 4_294_967_295.0;
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

fn duration_range(min_exclusive: bool) -> String {
  format!(
    "a number of milliseconds in {}0, {}] (365 days)",
    if min_exclusive { "(" } else { "[" },
    MAX_DURATION_MS as u64
  )
}

/// A duration in ms: finite, `0 <= v <= MAX_DURATION_MS`.
pub fn duration_ms(name: &str, v: f64) -> HpResult<f64> {
  if v.is_finite() && (0.0..=MAX_DURATION_MS).contains(&v) {
    Ok(if v == 0.0 { 0.0 } else { v })
  } else {
    Err(range_err(name, v, &duration_range(false)))
  }
}

/// A duration in ms that must be > 0: `0 < v <= MAX_DURATION_MS`.
pub fn positive_duration_ms(name: &str, v: f64) -> HpResult<f64> {
  if v.is_finite() && v > 0.0 && v <= MAX_DURATION_MS {
    Ok(v)
  } else {
    Err(range_err(name, v, &duration_range(true)))
  }
}

/// An optional duration where `Infinity` means the same as absent (`None`).
pub fn duration_or_inf(name: &str, v: Option<f64>, positive: bool) -> HpResult<Option<f64>> {
  match v {
    None => Ok(None),
    Some(x) if x == f64::INFINITY => Ok(None),
    Some(x) => {
      let r = if positive {
        positive_duration_ms(name, x)
      } else {
        duration_ms(name, x)
      };
      r.map(Some).map_err(|_| {
        range_err(
          name,
          x,
          &format!("{} or Infinity", duration_range(positive)),
        )
      })
    }
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
      let e = duration_ms("ttlMs", v).unwrap_err();
      assert_eq!(e.code, crate::error::Code::InvalidArg);
      assert!(
        e.message
          .starts_with("ttlMs must be a number of milliseconds in [0, 31536000000]"),
        "{}",
        e.message
      );
      assert!(e.message.ends_with(&js_num(v)), "{}", e.message);
      assert!(positive_duration_ms("x", v).is_err());
    }
    assert_eq!(duration_ms("x", -0.0).unwrap().to_bits(), 0f64.to_bits());
    assert!(positive_duration_ms("x", 0.0).is_err());
    assert_eq!(duration_ms("x", MAX_DURATION_MS).unwrap(), MAX_DURATION_MS);
    assert!(duration_ms("x", MAX_DURATION_MS + 1.0).is_err());
    assert_eq!(
      duration_or_inf("x", Some(f64::INFINITY), true).unwrap(),
      None
    );
    assert!(duration_or_inf("x", Some(f64::NAN), true).is_err());
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
    assert_eq!(count("n", MAX_COUNT, 1).unwrap(), u32::MAX as u64);
    assert_eq!(count_or_inf("n", f64::INFINITY, 1).unwrap(), None);
    assert!(count_or_inf("n", f64::NAN, 1).is_err());
    assert_eq!(bytes("b", 4096.0, 1).unwrap(), 4096);
    assert!(bytes("b", 9_007_199_254_740_992.0, 1).is_err());
    let e = count("maxPendingWrites", 2f64.powi(62), 1).unwrap_err();
    assert_eq!(
      e.message,
      "maxPendingWrites must be an integer in [1, 4294967295], got 4611686018427388000"
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
