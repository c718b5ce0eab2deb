//! Arguments of the hot native calls (`getSync`, `setSync`, `has`, `touch`,
//! `peek`), read with fewer N-API calls than napi-rs's `String`, which asks
//! V8 for the UTF-8 length first (a pass over the string), then copies into
//! a zeroed heap buffer one byte longer than needed.
//!
//! Here a string is copied once into a buffer that is large enough for most
//! keys and values (on the stack for keys, a per-thread buffer for values);
//! only a longer one takes the two-call path.

use std::cell::RefCell;

use napi::bindgen_prelude::*;
use napi::sys;

/// Bytes a key may have to be read on the stack.
const INLINE: usize = 256;

/// Read `v` into `buf`; `Some(len)` when the whole string fit. V8 writes
/// whole characters only, so a string is complete when at least 4 bytes (the
/// longest UTF-8 character) of the buffer were left unused.
unsafe fn read_into(
  env: sys::napi_env,
  v: sys::napi_value,
  buf: &mut [u8],
) -> Result<Option<usize>> {
  let mut len = 0;
  check_status!(
    unsafe {
      sys::napi_get_value_string_utf8(env, v, buf.as_mut_ptr().cast(), buf.len(), &mut len)
    },
    "Failed to convert a JavaScript value into a string"
  )?;
  Ok((len + 5 <= buf.len()).then_some(len))
}

/// The two-call path: the exact UTF-8 length, then one copy.
unsafe fn read_exact(env: sys::napi_env, v: sys::napi_value) -> Result<String> {
  let mut len = 0;
  check_status!(
    unsafe { sys::napi_get_value_string_utf8(env, v, std::ptr::null_mut(), 0, &mut len) },
    "Failed to convert a JavaScript value into a string"
  )?;
  let mut b: Vec<u8> = Vec::with_capacity(len + 1);
  let mut written = 0;
  check_status!(
    unsafe {
      sys::napi_get_value_string_utf8(env, v, b.as_mut_ptr().cast(), len + 1, &mut written)
    },
    "Failed to convert a JavaScript value into a string"
  )?;
  unsafe {
    b.set_len(written.min(len));
    // N-API wrote valid UTF-8 (lone surrogates replaced).
    Ok(String::from_utf8_unchecked(b))
  }
}

/// A string argument: on the stack when it has fewer than `INLINE - 4` bytes.
pub struct StrArg {
  len: usize,
  buf: [u8; INLINE],
  heap: Option<String>,
}

impl StrArg {
  pub fn as_str(&self) -> &str {
    match &self.heap {
      Some(s) => s,
      // SAFETY: N-API wrote `len` bytes of valid UTF-8.
      None => unsafe { std::str::from_utf8_unchecked(&self.buf[..self.len]) },
    }
  }
}

impl FromNapiValue for StrArg {
  unsafe fn from_napi_value(env: sys::napi_env, v: sys::napi_value) -> Result<Self> {
    let mut a = StrArg {
      len: 0,
      buf: [0; INLINE],
      heap: None,
    };
    match unsafe { read_into(env, v, &mut a.buf)? } {
      Some(len) => a.len = len,
      None => a.heap = Some(unsafe { read_exact(env, v)? }),
    }
    Ok(a)
  }
}

impl TypeName for StrArg {
  fn type_name() -> &'static str {
    "String"
  }
  fn value_type() -> ValueType {
    ValueType::String
  }
}

impl ValidateNapiValue for StrArg {}

thread_local! {
  /// Where a value's text is read before its exact-size copy.
  static TEXT: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; 64 * 1024].into_boxed_slice());
}

/// A string that becomes an owned `String` of its exact size: one copy out
/// of V8 into a per-thread buffer, one into the `String`.
unsafe fn owned_string(env: sys::napi_env, v: sys::napi_value) -> Result<String> {
  let fit = TEXT.with(|t| -> Result<Option<String>> {
    let mut t = t.borrow_mut();
    Ok(unsafe { read_into(env, v, &mut t)? }.map(|len| {
      // SAFETY: N-API wrote `len` bytes of valid UTF-8.
      unsafe { std::str::from_utf8_unchecked(&t[..len]) }.to_owned()
    }))
  })?;
  match fit {
    Some(s) => Ok(s),
    None => unsafe { read_exact(env, v) },
  }
}

/// `setSync`'s payload: a string (a string value or an object's JSON text),
/// a number (numbers, booleans as 0/1, null as 0) or a Buffer.
pub enum Payload {
  Str(String),
  Num(f64),
  Bytes(Buffer),
}

impl FromNapiValue for Payload {
  unsafe fn from_napi_value(env: sys::napi_env, v: sys::napi_value) -> Result<Self> {
    let mut t = 0;
    check_status!(unsafe { sys::napi_typeof(env, v, &mut t) }, "typeof failed")?;
    Ok(match t {
      sys::ValueType::napi_string => Payload::Str(unsafe { owned_string(env, v)? }),
      sys::ValueType::napi_number => Payload::Num(unsafe { f64::from_napi_value(env, v)? }),
      _ => Payload::Bytes(unsafe { Buffer::from_napi_value(env, v)? }),
    })
  }
}

impl TypeName for Payload {
  fn type_name() -> &'static str {
    "string | number | Buffer"
  }
  fn value_type() -> ValueType {
    ValueType::Unknown
  }
}

impl ValidateNapiValue for Payload {}
