//! The one tokio runtime, the process-wide registry behind `name?: string`,
//! and the clock every component reads time from.

use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use parking_lot::Mutex;

use crate::error::{HpError, HpResult};

/// The one runtime for all background work (timers, Redis I/O, zeroing). It
/// is hotpath's own, started on first use and never shut down: it lives as
/// long as the process. (napi-rs' runtime is not used: napi-rs shuts it down
/// when the first environment that loaded the addon exits, so a handle to it
/// cached here went dead when a worker thread that loaded hotpath exited, and
/// a later worker's promises never settled.)
static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();

/// A handle to the one runtime.
pub fn handle() -> &'static tokio::runtime::Handle {
  RUNTIME
    .get_or_init(|| {
      tokio::runtime::Builder::new_multi_thread()
        .thread_name("hotpath")
        .enable_all()
        .build()
        .unwrap_or_else(|e| {
          // Without a runtime nothing asynchronous can work; this happens
          // only when the OS refuses threads, and is reported once, loudly.
          panic!("hotpath: cannot start its tokio runtime: {e}")
        })
    })
    .handle()
}

/// Spawn background work on the one runtime.
pub fn spawn<F>(fut: F) -> tokio::task::JoinHandle<F::Output>
where
  F: std::future::Future + Send + 'static,
  F::Output: Send + 'static,
{
  handle().spawn(fut)
}

// ---------------------------------------------------------------- promises

/// Run `fut` on the runtime and return a JS Promise for its result. An `Err`
/// rejects with an `Error` whose `code` is the `ERR_*` name (built on the JS
/// thread, so the code survives; napi-rs' own path would only carry a Status).
pub fn promise<'e, T, F>(
  env: &'e napi::Env,
  fut: F,
) -> napi::Result<napi::bindgen_prelude::Object<'e>>
where
  T: napi::bindgen_prelude::ToNapiValue + Send + 'static,
  F: std::future::Future<Output = HpResult<T>> + Send + 'static,
{
  type Resolver<T> = Box<dyn FnOnce(napi::Env) -> napi::Result<T> + Send>;
  let (deferred, promise) = env.create_deferred::<T, Resolver<T>>()?;
  spawn(async move {
    use futures_util::FutureExt;
    // A panic in the future rejects with ERR_INTERNAL instead of leaving the
    // Promise pending forever.
    let r = match std::panic::AssertUnwindSafe(fut).catch_unwind().await {
      Ok(r) => r,
      Err(p) => Err(HpError::internal(format!(
        "internal error in background work (a bug in hotpath, please report it): {}",
        crate::guard::panic_message(&*p)
      ))),
    };
    deferred.resolve(Box::new(move |env: napi::Env| {
      r.map_err(|e| js_error(&env, e))
    }));
  });
  Ok(promise)
}

/// A JS `Error` carrying our code, wrapped so napi-rs rejects/throws with that
/// very object.
pub fn js_error(env: &napi::Env, e: HpError) -> napi::Error {
  let err: napi::Error<crate::error::Code> = e.into();
  let raw = match unsafe { napi::bindgen_prelude::ToNapiValue::to_napi_value(env.raw(), err) } {
    Ok(v) => v,
    Err(e) => return e,
  };
  let unknown = unsafe { napi::bindgen_prelude::Unknown::from_raw_unchecked(env.raw(), raw) };
  napi::Error::from(unknown)
}

// ---------------------------------------------------------------- clock

static EPOCH: OnceLock<Instant> = OnceLock::new();
static MOCK_OFFSET_MS: AtomicU64 = AtomicU64::new(0);

/// Monotonic milliseconds since the first call in this process (fractional).
/// Tests may move it forward with [`advance_clock_ms`]; nothing else does.
pub fn now_ms() -> f64 {
  let base = EPOCH.get_or_init(Instant::now);
  base.elapsed().as_secs_f64() * 1000.0 + f64::from_bits(MOCK_OFFSET_MS.load(Ordering::Relaxed))
}

/// Move the clock forward (tests only; exported to JS as `__advanceClock`).
pub fn advance_clock_ms(ms: f64) {
  let mut cur = MOCK_OFFSET_MS.load(Ordering::Relaxed);
  loop {
    let next = (f64::from_bits(cur) + ms).to_bits();
    match MOCK_OFFSET_MS.compare_exchange(cur, next, Ordering::SeqCst, Ordering::Relaxed) {
      Ok(_) => return,
      Err(c) => cur = c,
    }
  }
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn unix_ms() -> f64 {
  std::time::SystemTime::now()
    .duration_since(std::time::UNIX_EPOCH)
    .map(|d| d.as_secs_f64() * 1000.0)
    .unwrap_or(0.0)
}

// ---------------------------------------------------------------- registry

struct Entry {
  fingerprint: String,
  state: Arc<dyn Any + Send + Sync>,
  handles: usize,
}

static REGISTRY: OnceLock<Mutex<HashMap<(&'static str, String), Entry>>> = OnceLock::new();

fn registry() -> &'static Mutex<HashMap<(&'static str, String), Entry>> {
  REGISTRY.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Attach to the named instance of `class`, creating it with `make` when it
/// does not exist. Every thread of the process (main or `worker_threads`)
/// shares this map. An existing name with another `fingerprint` (the
/// normalised options) is `ERR_INVALID_ARG`.
pub fn attach<T, F>(
  class: &'static str,
  name: &str,
  fingerprint: String,
  make: F,
) -> HpResult<Arc<T>>
where
  T: Send + Sync + 'static,
  F: FnOnce() -> HpResult<Arc<T>>,
{
  if name.is_empty() {
    return Err(HpError::invalid(
      "name must be a non-empty string, got \"\"",
    ));
  }
  let mut map = registry().lock();
  let key = (class, name.to_string());
  if let Some(e) = map.get_mut(&key) {
    if e.fingerprint != fingerprint {
      return Err(HpError::invalid(format!(
        "a {class} named \"{name}\" already exists with other options ({}); got ({fingerprint})",
        e.fingerprint
      )));
    }
    let state = e
      .state
      .clone()
      .downcast::<T>()
      .map_err(|_| HpError::invalid(format!("{class} \"{name}\": registry type mismatch")))?;
    e.handles += 1;
    return Ok(state);
  }
  let state = make()?;
  map.insert(
    key,
    Entry {
      fingerprint,
      state: state.clone(),
      handles: 1,
    },
  );
  Ok(state)
}

/// Drop one handle of a named instance. Returns true when it was the last one
/// (the caller then shuts the shared state down).
pub fn detach(class: &'static str, name: &str) -> bool {
  let mut map = registry().lock();
  let key = (class, name.to_string());
  match map.get_mut(&key) {
    Some(e) if e.handles > 1 => {
      e.handles -= 1;
      false
    }
    Some(_) => {
      map.remove(&key);
      true
    }
    None => true,
  }
}

/// How many handles a named instance has (0 when it does not exist).
pub fn handles(class: &'static str, name: &str) -> usize {
  registry()
    .lock()
    .get(&(class, name.to_string()))
    .map(|e| e.handles)
    .unwrap_or(0)
}

// ---------------------------------------------------------------- external memory probe

static ALIASES: OnceLock<bool> = OnceLock::new();

unsafe extern "C" fn free_probe(
  _env: napi::sys::napi_env,
  data: *mut std::ffi::c_void,
  _hint: *mut std::ffi::c_void,
) {
  crate::guard::catch_finalizer(|| drop(unsafe { Box::from_raw(data as *mut [u8; 16]) }));
}

/// Whether an external ArrayBuffer made here is a view of native memory (it
/// is in Node). In a V8 memory cage (Electron's sandbox) Node-API refuses
/// external buffers and napi-rs silently copies instead, so a table shared
/// through one would become a stale snapshot. Probed once per process, on
/// the first construction. `HOTPATH_TEST_NO_EXTERNAL_MEMORY=1` makes the
/// probe fail (tests of what those runtimes get).
pub fn external_memory_aliases(env: &napi::Env) -> bool {
  let env = env.raw();
  *ALIASES.get_or_init(|| {
    if std::env::var_os("HOTPATH_TEST_NO_EXTERNAL_MEMORY").is_some_and(|v| v == "1") {
      return false;
    }
    let data = Box::into_raw(Box::new([0u8; 16]));
    let mut ab = std::ptr::null_mut();
    let s = unsafe {
      napi::sys::napi_create_external_arraybuffer(
        env,
        data as *mut std::ffi::c_void,
        16,
        Some(free_probe),
        std::ptr::null_mut(),
        &mut ab,
      )
    };
    if s != napi::sys::Status::napi_ok {
      drop(unsafe { Box::from_raw(data) });
      return false;
    }
    let (mut p, mut len) = (std::ptr::null_mut(), 0usize);
    let s = unsafe { napi::sys::napi_get_arraybuffer_info(env, ab, &mut p, &mut len) };
    s == napi::sys::Status::napi_ok && p == data as *mut std::ffi::c_void && len == 16
  })
}

/// At construction of a class that shares memory with JS through external
/// ArrayBuffers (the cache's version table, the limiter's scratch, the
/// queue's event buffers): a clear `ERR_INTERNAL` where they would be copies.
pub fn require_external_memory(
  env: &napi::Env,
  class: &str,
) -> std::result::Result<(), napi::Error<crate::error::Code>> {
  if external_memory_aliases(env) {
    return Ok(());
  }
  Err(
    HpError::internal(format!(
      "{class} cannot run here: it shares native memory with JS through external ArrayBuffers, \
       and this runtime copies them (a V8 memory cage, as in Electron's sandbox). \
       BufferPool works here (plain Buffers); CacheManager, RateLimiter and WorkerQueue do not"
    ))
    .into(),
  )
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn attach_shares_state_and_checks_options() {
    let a: Arc<Mutex<u32>> =
      attach("T", "one", "x=1".into(), || Ok(Arc::new(Mutex::new(1)))).unwrap();
    let b: Arc<Mutex<u32>> =
      attach("T", "one", "x=1".into(), || panic!("must not make twice")).unwrap();
    *a.lock() = 7;
    assert_eq!(*b.lock(), 7);
    assert_eq!(handles("T", "one"), 2);
    let err = attach::<Mutex<u32>, _>("T", "one", "x=2".into(), || Ok(Arc::new(Mutex::new(0))))
      .unwrap_err();
    assert_eq!(err.code, crate::error::Code::InvalidArg);
    assert!(!detach("T", "one"));
    assert!(detach("T", "one"));
    assert_eq!(handles("T", "one"), 0);
  }

  #[test]
  fn clock_is_monotonic_and_advances() {
    let a = now_ms();
    advance_clock_ms(1000.0);
    let b = now_ms();
    assert!(b - a >= 1000.0);
  }
}
