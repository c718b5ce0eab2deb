//! One error-code enum. Every error that reaches JS is an `Error` whose `code`
//! is one of these names (see API.md, "Conventions").

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
  InvalidArg,
  Closed,
  Timeout,
  Aborted,
  QueueFull,
  RateLimited,
  Redis,
  BatchResult,
  BufferReleased,
  TaskFailed,
  /// A bug inside hotpath (a caught panic); the instance it happened in is
  /// unusable afterwards. Keep this enum's order: lib/errors.js lists the
  /// codes in this order (a test checks both).
  Internal,
}

impl Code {
  /// Every code, in declaration order (lib/errors.js's CODES lists them in
  /// this same order; `codes_match_lib_errors_js` checks it).
  pub const ALL: [Code; 11] = [
    Code::InvalidArg,
    Code::Closed,
    Code::Timeout,
    Code::Aborted,
    Code::QueueFull,
    Code::RateLimited,
    Code::Redis,
    Code::BatchResult,
    Code::BufferReleased,
    Code::TaskFailed,
    Code::Internal,
  ];

  pub const fn as_str(self) -> &'static str {
    match self {
      Code::InvalidArg => "ERR_INVALID_ARG",
      Code::Closed => "ERR_CLOSED",
      Code::Timeout => "ERR_TIMEOUT",
      Code::Aborted => "ERR_ABORTED",
      Code::QueueFull => "ERR_QUEUE_FULL",
      Code::RateLimited => "ERR_RATE_LIMITED",
      Code::Redis => "ERR_REDIS",
      Code::BatchResult => "ERR_BATCH_RESULT",
      Code::BufferReleased => "ERR_BUFFER_RELEASED",
      Code::TaskFailed => "ERR_TASK_FAILED",
      Code::Internal => "ERR_INTERNAL",
    }
  }
}

impl AsRef<str> for Code {
  fn as_ref(&self) -> &str {
    self.as_str()
  }
}

/// The library's error: a code and a message naming what was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HpError {
  pub code: Code,
  pub message: String,
}

impl HpError {
  pub fn new(code: Code, message: impl Into<String>) -> Self {
    HpError {
      code,
      message: message.into(),
    }
  }
  pub fn invalid(message: impl Into<String>) -> Self {
    Self::new(Code::InvalidArg, message)
  }
  pub fn closed(what: &str) -> Self {
    Self::new(Code::Closed, format!("{what} is closed"))
  }
  pub fn redis(message: impl Into<String>) -> Self {
    Self::new(Code::Redis, message)
  }
  pub fn internal(message: impl Into<String>) -> Self {
    Self::new(Code::Internal, message)
  }
}

impl fmt::Display for HpError {
  fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    write!(f, "{}: {}", self.code.as_str(), self.message)
  }
}

impl std::error::Error for HpError {}

impl From<HpError> for napi::Error<Code> {
  fn from(e: HpError) -> Self {
    // `napi_create_error(code, message)`: JS sees `err.code === "ERR_..."`.
    napi::Error::new(e.code, e.message)
  }
}

/// Results inside the crate.
pub type HpResult<T> = std::result::Result<T, HpError>;

/// Results of `#[napi]` methods: the error carries our code to JS.
pub type JsResult<T> = napi::Result<T, Code>;

pub fn js_err(code: Code, message: impl Into<String>) -> napi::Error<Code> {
  napi::Error::new(code, message.into())
}

/// A napi-rs conversion error (wrong JS type) as ERR_INVALID_ARG.
pub fn from_napi(e: napi::Error) -> napi::Error<Code> {
  napi::Error::new(Code::InvalidArg, e.reason.clone())
}

/// Helpers for argument checking at the boundary.
pub fn check_finite(name: &str, v: f64) -> HpResult<f64> {
  if v.is_finite() {
    Ok(v)
  } else {
    Err(HpError::invalid(format!(
      "{name} must be a finite number, got {v}"
    )))
  }
}

pub fn check_non_negative(name: &str, v: f64) -> HpResult<f64> {
  let v = check_finite(name, v)?;
  if v < 0.0 {
    return Err(HpError::invalid(format!("{name} must be >= 0, got {v}")));
  }
  Ok(v)
}

pub fn check_positive_int(name: &str, v: f64) -> HpResult<u64> {
  let v = check_finite(name, v)?;
  if v < 1.0 || v.fract() != 0.0 {
    return Err(HpError::invalid(format!(
      "{name} must be a positive integer, got {v}"
    )));
  }
  Ok(v as u64)
}

pub fn check_key(name: &str, key: &str) -> HpResult<()> {
  if key.is_empty() {
    return Err(HpError::invalid(format!(
      "{name} must be a non-empty string, got \"\""
    )));
  }
  Ok(())
}

#[cfg(test)]
mod tests {
  use super::*;
  #[test]
  fn codes_are_the_api_names() {
    assert_eq!(Code::InvalidArg.as_str(), "ERR_INVALID_ARG");
    assert_eq!(Code::BufferReleased.as_str(), "ERR_BUFFER_RELEASED");
    assert!(check_positive_int("limit", 0.0).is_err());
    assert!(check_positive_int("limit", 1.5).is_err());
    assert_eq!(check_positive_int("limit", 3.0).unwrap(), 3);
    assert!(check_non_negative("ttlMs", f64::NAN).is_err());
    assert!(check_key("key", "").is_err());
  }

  /// One source for the codes: lib/errors.js's CODES must list exactly these
  /// names in this order (the JS side maps a native code by name; reordering
  /// or renaming one side without the other fails here).
  #[test]
  fn codes_match_lib_errors_js() {
    let js =
      std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/lib/errors.js")).unwrap();
    let start = js
      .find("const CODES = Object.freeze({")
      .expect("CODES in lib/errors.js");
    let block = &js[start..start + js[start..].find("})").unwrap()];
    let listed: Vec<&str> = block
      .split('\'')
      .filter(|s| s.starts_with("ERR_"))
      .collect();
    let ours: Vec<&str> = Code::ALL.iter().map(|c| c.as_str()).collect();
    assert_eq!(listed, ours);
  }
}
