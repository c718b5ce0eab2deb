//! Cache values: how they are held in L1 and how they are written to Redis.
//!
//! Redis format (documented in the README): every value but a Buffer is JSON
//! text, so redis-cli or a Python service can read it (`"a string"`, `42`,
//! `true`, `null`, `{"a":1}`). A Buffer is the byte `0x00`, then `B`, then its
//! raw bytes; a non-finite number is `0x00` `N` then `NaN`, `Infinity` or
//! `-Infinity`. A leading `0x00` never starts valid JSON, so the two can't be
//! confused.

use crate::error::{HpError, HpResult};

/// A value as L1 holds it.
#[derive(Clone, Debug, PartialEq)]
pub enum Val {
  Str(String),
  Num(f64),
  Bool(bool),
  Null,
  /// An object or array, as JSON text (JSON.stringify'd by the JS layer).
  Json(String),
  Bytes(Vec<u8>),
}

/// Kind tags shared with the JS layer (lib/cache.js).
pub const K_STR: u32 = 1;
pub const K_NUM: u32 = 2;
pub const K_BOOL: u32 = 3;
pub const K_NULL: u32 = 4;
pub const K_JSON: u32 = 5;
pub const K_BYTES: u32 = 6;

impl Val {
  pub fn kind(&self) -> u32 {
    match self {
      Val::Str(_) => K_STR,
      Val::Num(_) => K_NUM,
      Val::Bool(_) => K_BOOL,
      Val::Null => K_NULL,
      Val::Json(_) => K_JSON,
      Val::Bytes(_) => K_BYTES,
    }
  }

  /// Bytes this value weighs in L1 (`maxBytes`).
  pub fn weight(&self) -> usize {
    match self {
      Val::Str(s) | Val::Json(s) => s.len(),
      Val::Bytes(b) => b.len(),
      Val::Num(_) => 8,
      Val::Bool(_) | Val::Null => 1,
    }
  }

  /// Encode for Redis.
  pub fn encode(&self) -> Vec<u8> {
    match self {
      Val::Str(s) => serde_json::to_vec(s).expect("string encodes"),
      Val::Num(n) if n.is_finite() => {
        // JSON has no -0; keep integers integral.
        let mut b = ryu_like(*n).into_bytes();
        if b.is_empty() {
          b = b"0".to_vec();
        }
        b
      }
      Val::Num(n) => {
        let mut v = vec![0u8, b'N'];
        v.extend_from_slice(if n.is_nan() {
          b"NaN"
        } else if *n > 0.0 {
          b"Infinity"
        } else {
          b"-Infinity"
        });
        v
      }
      Val::Bool(b) => {
        if *b {
          b"true".to_vec()
        } else {
          b"false".to_vec()
        }
      }
      Val::Null => b"null".to_vec(),
      Val::Json(s) => s.as_bytes().to_vec(),
      Val::Bytes(b) => {
        let mut v = Vec::with_capacity(b.len() + 2);
        v.push(0);
        v.push(b'B');
        v.extend_from_slice(b);
        v
      }
    }
  }

  /// Decode what [`encode`] wrote (or any JSON text another client wrote).
  /// [`Val::decode`] of bytes it may keep: JSON text of an object or array
  /// becomes the value without a copy.
  pub fn decode_owned(raw: Vec<u8>) -> HpResult<Val> {
    if matches!(raw.first(), Some(b'{') | Some(b'[')) {
      return String::from_utf8(raw)
        .map(Val::Json)
        .map_err(|_| HpError::redis("cache: Redis value is neither JSON nor a tagged Buffer"));
    }
    Val::decode(&raw)
  }

  pub fn decode(raw: &[u8]) -> HpResult<Val> {
    if raw.first() == Some(&0) {
      return match raw.get(1) {
        Some(b'B') => Ok(Val::Bytes(raw[2..].to_vec())),
        Some(b'N') => match &raw[2..] {
          b"NaN" => Ok(Val::Num(f64::NAN)),
          b"Infinity" => Ok(Val::Num(f64::INFINITY)),
          b"-Infinity" => Ok(Val::Num(f64::NEG_INFINITY)),
          _ => Err(HpError::redis("cache: unreadable number in Redis value")),
        },
        _ => Err(HpError::redis("cache: unknown binary tag in Redis value")),
      };
    }
    let text = std::str::from_utf8(raw)
      .map_err(|_| HpError::redis("cache: Redis value is neither JSON nor a tagged Buffer"))?;
    let t = text.trim_start();
    match t.as_bytes().first() {
      Some(b'"') => match serde_json::from_str::<String>(t) {
        Ok(s) => Ok(Val::Str(s)),
        // A string with a lone surrogate (`"\ud800"`): Rust strings cannot
        // hold it; JS parses the JSON text back exactly.
        Err(_) if serde_json::from_str::<serde::de::IgnoredAny>(t).is_ok() => {
          Ok(Val::Json(text.to_string()))
        }
        Err(e) => Err(HpError::redis(format!(
          "cache: bad JSON string in Redis: {e}"
        ))),
      },
      Some(b'{') | Some(b'[') => Ok(Val::Json(text.to_string())),
      Some(b't') if t == "true" => Ok(Val::Bool(true)),
      Some(b'f') if t == "false" => Ok(Val::Bool(false)),
      Some(b'n') if t == "null" => Ok(Val::Null),
      _ => t
        .parse::<f64>()
        .map(Val::Num)
        .map_err(|_| HpError::redis(format!("cache: Redis value is not JSON: {:.40}", text))),
    }
  }
}

fn ryu_like(n: f64) -> String {
  // Shortest round-trip representation, as JSON writes numbers.
  if n == n.trunc() && n.abs() < 1e21 {
    format!("{}", n as i128)
  } else {
    let s = format!("{n:?}");
    s
  }
}

#[cfg(test)]
mod tests {
  use super::*;
  #[test]
  fn round_trips_every_kind() {
    for v in [
      Val::Str("héllo \"x\"".into()),
      Val::Str("123".into()),
      Val::Num(42.0),
      Val::Num(-0.5),
      Val::Num(1e300),
      Val::Num(f64::INFINITY),
      Val::Bool(true),
      Val::Bool(false),
      Val::Null,
      Val::Json("{\"a\":[1,2]}".into()),
      Val::Json("[1]".into()),
      Val::Bytes(vec![0, 1, 2, 255]),
    ] {
      let enc = v.encode();
      assert_eq!(Val::decode(&enc).unwrap(), v, "{v:?}");
    }
    assert!(
      matches!(Val::decode(&Val::Num(f64::NAN).encode()).unwrap(), Val::Num(n) if n.is_nan())
    );
    // Plain JSON written by another client is readable.
    assert_eq!(Val::decode(b"\"x\"").unwrap(), Val::Str("x".into()));
    assert_eq!(Val::Str("x".into()).encode(), b"\"x\"");
    assert_eq!(Val::Num(3.0).encode(), b"3");
  }
}
