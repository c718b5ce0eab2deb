//! Panics never cross into JS. Every native entry point runs its body through
//! [`Poison::run`] (the `guarded!` macro) or, for raw `extern "C"` functions
//! and finalizers, [`catch`]. A panic becomes an `Error` with code
//! `ERR_INTERNAL`, and the instance it happened in is marked poisoned: every
//! later call on that instance fails with `ERR_INTERNAL` too (its state may be
//! half-updated), while other instances keep working. `close()` and `stats()`
//! still run on a poisoned instance so that resources can be released.
//!
//! Background work (futures behind Promises) is guarded in
//! `runtime::promise`: a panic there rejects the Promise with `ERR_INTERNAL`
//! instead of leaving it pending forever.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

use crate::error::{Code, HpError};

/// Test hook: the next guarded call (any class) panics inside its guard.
static PANIC_NEXT: AtomicBool = AtomicBool::new(false);

/// Make the next guarded native call panic (tests only: proves that a panic
/// becomes `ERR_INTERNAL` and poisons only its instance).
pub fn panic_next_call() {
  PANIC_NEXT.store(true, Ordering::SeqCst);
}

#[inline]
fn maybe_test_panic() {
  if PANIC_NEXT.load(Ordering::Relaxed) && PANIC_NEXT.swap(false, Ordering::SeqCst) {
    panic!("test panic (hotpath/testing panicNextCall)");
  }
}

/// The message of a panic payload.
pub fn panic_message(p: &(dyn Any + Send)) -> String {
  if let Some(s) = p.downcast_ref::<String>() {
    s.clone()
  } else if let Some(s) = p.downcast_ref::<&str>() {
    (*s).to_string()
  } else {
    "panic with a non-string payload".to_string()
  }
}

/// An error type a guarded body may return, made from an `ERR_INTERNAL`.
pub trait FromInternal {
  fn from_internal(e: HpError) -> Self;
}

impl FromInternal for napi::Error<Code> {
  fn from_internal(e: HpError) -> Self {
    e.into()
  }
}

impl FromInternal for HpError {
  fn from_internal(e: HpError) -> Self {
    e
  }
}

impl FromInternal for napi::Error {
  fn from_internal(e: HpError) -> Self {
    // napi-rs' Status-typed errors cannot carry our code as `err.code`; the
    // reason keeps it as a prefix (the JS layer maps `ERR_INTERNAL: ...`).
    napi::Error::new(
      napi::Status::GenericFailure,
      format!("ERR_INTERNAL: {}", e.message),
    )
  }
}

/// One instance's poison flag and the panic that set it.
pub struct Poison {
  class: &'static str,
  poisoned: AtomicBool,
  why: Mutex<String>,
}

impl Poison {
  pub const fn new(class: &'static str) -> Self {
    Poison {
      class,
      poisoned: AtomicBool::new(false),
      why: Mutex::new(String::new()),
    }
  }

  pub fn is_poisoned(&self) -> bool {
    self.poisoned.load(Ordering::Relaxed)
  }

  fn error(&self) -> HpError {
    HpError::internal(format!(
      "{} is unusable after an internal error (a bug in hotpath, please report it): {}",
      self.class,
      self.why.lock()
    ))
  }

  fn poison(&self, payload: &(dyn Any + Send)) -> HpError {
    let msg = panic_message(payload);
    {
      let mut why = self.why.lock();
      if why.is_empty() {
        *why = msg.clone();
      }
    }
    self.poisoned.store(true, Ordering::SeqCst);
    HpError::internal(format!(
      "internal error in {} (a bug in hotpath, please report it): {msg}; this instance is now unusable",
      self.class
    ))
  }

  /// Run a method body: `ERR_INTERNAL` at once when poisoned; a panic
  /// inside poisons the instance and becomes `ERR_INTERNAL`.
  #[inline]
  pub fn run<T, E: FromInternal>(&self, f: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
    if self.is_poisoned() {
      return Err(E::from_internal(self.error()));
    }
    self.run_always(f)
  }

  /// Like [`Self::run`] but runs even when poisoned (`close`, `stats`).
  #[inline]
  pub fn run_always<T, E: FromInternal>(&self, f: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
    match catch_unwind(AssertUnwindSafe(|| {
      maybe_test_panic();
      f()
    })) {
      Ok(r) => r,
      Err(p) => Err(E::from_internal(self.poison(&*p))),
    }
  }
}

/// Run the body of a raw `extern "C"` function or finalizer: a panic returns
/// `on_panic(message)` instead of unwinding into C (which aborts).
#[inline]
pub fn catch<T>(f: impl FnOnce() -> T, on_panic: impl FnOnce(String) -> T) -> T {
  catch_inner(true, f, on_panic)
}

/// [`catch`] for finalizers: they run whenever GC decides, so they never
/// take the test hook's injected panic (that is for the call a test makes).
#[inline]
pub fn catch_finalizer(f: impl FnOnce()) {
  catch_inner(false, f, |_| ())
}

#[inline]
fn catch_inner<T>(inject: bool, f: impl FnOnce() -> T, on_panic: impl FnOnce(String) -> T) -> T {
  match catch_unwind(AssertUnwindSafe(|| {
    if inject {
      maybe_test_panic();
    }
    f()
  })) {
    Ok(v) => v,
    Err(p) => on_panic(panic_message(&*p)),
  }
}

/// Construct an instance: a panic becomes `ERR_INTERNAL` (there is nothing
/// to poison yet).
#[inline]
pub fn ctor<T, E: FromInternal>(
  class: &'static str,
  f: impl FnOnce() -> Result<T, E>,
) -> Result<T, E> {
  match catch_unwind(AssertUnwindSafe(|| {
    maybe_test_panic();
    f()
  })) {
    Ok(r) => r,
    Err(p) => Err(E::from_internal(HpError::internal(format!(
      "internal error constructing {class} (a bug in hotpath, please report it): {}",
      panic_message(&*p)
    )))),
  }
}

/// Wraps a `#[napi]` method body (brace-delimited, so rustfmt leaves the
/// body's indentation alone):
/// - `guarded! { self, body }`: [`Poison::run`];
/// - `guarded! { always self, body }`: [`Poison::run_always`] (close, stats);
/// - `guarded! { ok self, body }` / `guarded! { always ok self, body }`: the
///   same for a body that yields a plain value (the method returns
///   `Result<T, Code>`);
/// - `guarded! { ctor "Class", body }`: [`ctor`].
#[macro_export]
macro_rules! guarded {
  (ctor $class:literal, $($body:tt)*) => {
    $crate::guard::ctor($class, || { $($body)* })
  };
  (always ok $s:ident, $($body:tt)*) => {
    $s.poison.run_always(|| Ok::<_, napi::Error<$crate::error::Code>>({ $($body)* }))
  };
  (ok $s:ident, $($body:tt)*) => {
    $s.poison.run(|| Ok::<_, napi::Error<$crate::error::Code>>({ $($body)* }))
  };
  (always $s:ident, $($body:tt)*) => {
    $s.poison.run_always(|| { $($body)* })
  };
  ($s:ident, $($body:tt)*) => {
    $s.poison.run(|| { $($body)* })
  };
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn a_panic_poisons_only_its_instance() {
    let a = Poison::new("Thing");
    let b = Poison::new("Thing");
    let r: Result<u32, HpError> = a.run(|| panic!("boom {}", 7));
    let e = r.unwrap_err();
    assert_eq!(e.code, Code::Internal);
    assert!(e.message.contains("boom 7"), "{}", e.message);
    let again: Result<u32, HpError> = a.run(|| Ok(1));
    assert_eq!(again.unwrap_err().code, Code::Internal);
    assert_eq!(a.run_always(|| Ok::<_, HpError>(2)).unwrap(), 2);
    assert_eq!(b.run(|| Ok::<_, HpError>(3)).unwrap(), 3);
    let v = catch(
      || -> u32 { panic!("in C") },
      |m| if m == "in C" { 9 } else { 0 },
    );
    assert_eq!(v, 9);
  }
}
