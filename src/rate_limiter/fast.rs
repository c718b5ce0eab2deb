//! The two JS-facing paths that run per check, kept off napi-rs' generic
//! wrappers (PERF-FLOOR.md: a class method call costs ~95 ns and a `String`
//! argument ~140 ns, before any work):
//!
//! - `rateLimiterCheckSync(handle, key, cost, consume)`: a raw Node-API
//!   function. `handle` indexes a per-thread table of limiter handles; the
//!   key is read into a stack buffer; the numbers of the decision go to the
//!   handle's scratch Float64Array and the return value is `allowed`.
//! - [`Port`]: decisions coming back from Redis reach their JS thread in
//!   batches, through one threadsafe function per handle (not one Promise
//!   and one threadsafe function per check).

use std::cell::{Cell, RefCell, UnsafeCell};
use std::ffi::{c_char, CString};
use std::ptr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::sync::Arc;

use napi::bindgen_prelude::*;
use napi::sys;
use napi::threadsafe_function::{
  ThreadsafeFunction, ThreadsafeFunctionCallMode, UnknownReturnValue,
};
use parking_lot::Mutex;

use super::limiter::{Job, Limiter, Reply, Sink};
use super::local::Decision;
use super::redis::MAX_BATCH;

/// One JS handle's state: the shared limiter, this handle's scratch
/// `[remaining, retryAfterMs, resetMs, waiterId]`, and whether it is closed.
pub struct Handle {
  pub limiter: Arc<Limiter>,
  pub scratch: UnsafeCell<[f64; 4]>,
  pub closed: AtomicBool,
}

// The scratch is written and read only on the handle's own JS thread.
unsafe impl Sync for Handle {}
unsafe impl Send for Handle {}

impl Handle {
  pub fn write(&self, d: &Decision) {
    let s = unsafe { &mut *self.scratch.get() };
    s[0] = d.remaining;
    s[1] = d.retry_after;
    s[2] = d.reset;
  }
}

thread_local! {
  /// This JS thread's handles (a worker thread has its own table).
  static TABLE: RefCell<Vec<Option<Arc<Handle>>>> = const { RefCell::new(Vec::new()) };
}

/// Put a handle in this thread's table; its index is what JS passes back.
pub fn register(h: Arc<Handle>) -> u32 {
  TABLE.with(|t| {
    let mut t = t.borrow_mut();
    match t.iter().position(Option::is_none) {
      Some(i) => {
        t[i] = Some(h);
        i as u32
      }
      None => {
        t.push(Some(h));
        (t.len() - 1) as u32
      }
    }
  })
}

/// Free a table slot (the JS object was collected). Runs on its thread.
pub fn unregister(index: u32) {
  let _ = TABLE.try_with(|t| {
    if let Some(slot) = t.borrow_mut().get_mut(index as usize) {
      *slot = None;
    }
  });
}

unsafe fn throw(env: sys::napi_env, code: &str, msg: &str, type_error: bool) -> sys::napi_value {
  let code = CString::new(code).unwrap_or_default();
  let msg = CString::new(msg.replace('\0', " ")).unwrap_or_default();
  unsafe {
    if type_error {
      sys::napi_throw_type_error(env, code.as_ptr(), msg.as_ptr());
    } else {
      sys::napi_throw_error(env, code.as_ptr(), msg.as_ptr());
    }
  }
  ptr::null_mut()
}

const KEY_BUF: usize = 512;

/// `rateLimiterCheckSync(handle, key, cost, consume): boolean`. A panic
/// inside throws `ERR_INTERNAL` instead of unwinding into C (an abort).
unsafe extern "C" fn check_sync(
  env: sys::napi_env,
  info: sys::napi_callback_info,
) -> sys::napi_value {
  crate::guard::catch(
    || unsafe { check_sync_unguarded(env, info) },
    |m| unsafe {
      throw(
        env,
        "ERR_INTERNAL",
        &format!(
          "internal error in RateLimiter.checkSync (a bug in hotpath, please report it): {m}"
        ),
        false,
      )
    },
  )
}

unsafe fn check_sync_unguarded(
  env: sys::napi_env,
  info: sys::napi_callback_info,
) -> sys::napi_value {
  unsafe {
    let mut argc = 4usize;
    let mut argv = [ptr::null_mut(); 4];
    if sys::napi_get_cb_info(
      env,
      info,
      &mut argc,
      argv.as_mut_ptr(),
      ptr::null_mut(),
      ptr::null_mut(),
    ) != sys::Status::napi_ok
      || argc < 4
    {
      return throw(
        env,
        "ERR_INVALID_ARG",
        "rateLimiterCheckSync(handle, key, cost, consume)",
        true,
      );
    }
    let mut index = 0u32;
    let mut cost = 0f64;
    let mut consume = false;
    if sys::napi_get_value_uint32(env, argv[0], &mut index) != sys::Status::napi_ok
      || sys::napi_get_value_double(env, argv[2], &mut cost) != sys::Status::napi_ok
      || sys::napi_get_value_bool(env, argv[3], &mut consume) != sys::Status::napi_ok
    {
      return throw(
        env,
        "ERR_INVALID_ARG",
        "rateLimiterCheckSync(handle: number, key: string, cost: number, consume: boolean)",
        true,
      );
    }
    if !cost.is_finite() || cost < 0.0 {
      return throw(
        env,
        "ERR_INVALID_ARG",
        &format!("cost must be a finite number >= 0, got {cost}"),
        false,
      );
    }
    // The key, into a stack buffer (V8 never splits a character, so a
    // result this close to the end may be cut: then read it whole).
    let mut buf = std::mem::MaybeUninit::<[u8; KEY_BUF]>::uninit();
    let mut len = 0usize;
    if sys::napi_get_value_string_utf8(
      env,
      argv[1],
      buf.as_mut_ptr() as *mut c_char,
      KEY_BUF,
      &mut len,
    ) != sys::Status::napi_ok
    {
      return throw(env, "ERR_INVALID_ARG", "key must be a string", true);
    }
    let heap: Vec<u8>;
    let bytes: &[u8] = if len + 4 < KEY_BUF {
      // Node-API wrote `len` bytes (and a NUL) at the start of the buffer.
      std::slice::from_raw_parts(buf.as_ptr() as *const u8, len)
    } else {
      let mut full = 0usize;
      sys::napi_get_value_string_utf8(env, argv[1], ptr::null_mut(), 0, &mut full);
      let mut v = vec![0u8; full + 1];
      sys::napi_get_value_string_utf8(
        env,
        argv[1],
        v.as_mut_ptr() as *mut c_char,
        full + 1,
        &mut len,
      );
      v.truncate(len);
      heap = v;
      &heap
    };
    if bytes.is_empty() {
      return throw(
        env,
        "ERR_INVALID_ARG",
        "key must be a non-empty string, got \"\"",
        false,
      );
    }
    // Node-API writes valid UTF-8 (lone surrogates become U+FFFD).
    let key = std::str::from_utf8_unchecked(bytes);
    let r = TABLE.with(|t| {
      let t = t.borrow();
      let h = t.get(index as usize)?.as_ref()?;
      if h.closed.load(Ordering::Relaxed) {
        return Some(Err("ERR_CLOSED"));
      }
      if h.limiter.has_redis() {
        return Some(Err("ERR_INVALID_ARG"));
      }
      let d = h.limiter.check_local(key, cost, consume);
      h.write(&d);
      Some(Ok(d.allowed))
    });
    match r {
      Some(Ok(allowed)) => {
        let mut out = ptr::null_mut();
        sys::napi_get_boolean(env, allowed, &mut out);
        out
      }
      Some(Err("ERR_CLOSED")) => throw(env, "ERR_CLOSED", "RateLimiter is closed", false),
      Some(Err(_)) => throw(
        env,
        "ERR_INVALID_ARG",
        "checkSync is in-process only: a RateLimiter with `redis` checks with check()",
        false,
      ),
      None => throw(
        env,
        "ERR_INVALID_ARG",
        &format!("no rate limiter handle {index} on this thread"),
        false,
      ),
    }
  }
}

/// The raw function behind `RateLimiter.checkSync` (see the module docs).
#[napi_derive::napi(
  js_name = "rateLimiterCheckSync",
  ts_return_type = "(handle: number, key: string, cost: number, consume: boolean) => boolean"
)]
pub fn check_sync_fn(env: &Env) -> Result<Unknown<'_>> {
  let f = env.create_function::<Unknown, Unknown>("rateLimiterCheckSync", check_sync)?;
  Ok(f.to_unknown())
}

// ------------------------------------------------------------------ port

type ResultsFn = ThreadsafeFunction<(), UnknownReturnValue, Float64Array, Status, false, true, 0>;

struct PortQueue {
  /// `[id, allowed (0/1), remaining, retryAfterMs, resetMs]` per decision.
  items: Mutex<Vec<f64>>,
  /// A call to the JS thread is on its way (it will take all items).
  scheduled: AtomicBool,
  /// Checks sent and not yet handed to JS (JS thread only).
  pending: AtomicUsize,
  raw: AtomicPtr<sys::napi_threadsafe_function__>,
}

/// Delivers decisions to one JS thread, many per call. Keeps that thread's
/// event loop alive only while checks are pending.
pub struct Port {
  tsfn: ResultsFn,
  q: Arc<PortQueue>,
}

impl Port {
  /// `on_results(flat)` gets `[id, allowed, remaining, retryAfterMs, resetMs, ...]`.
  pub fn new(on_results: Function<'_, Float64Array, UnknownReturnValue>) -> Result<Arc<Port>> {
    let q = Arc::new(PortQueue {
      items: Mutex::new(Vec::new()),
      scheduled: AtomicBool::new(false),
      pending: AtomicUsize::new(0),
      raw: AtomicPtr::new(ptr::null_mut()),
    });
    let q2 = q.clone();
    let tsfn: ResultsFn = on_results
      .build_threadsafe_function::<()>()
      .callee_handled::<false>()
      .weak::<true>()
      .build_callback(move |ctx| {
        q2.scheduled.store(false, Ordering::SeqCst);
        let items = std::mem::take(&mut *q2.items.lock());
        let n = items.len() / 5;
        let before = q2.pending.fetch_sub(n, Ordering::Relaxed);
        if before == n {
          // Nothing pending any more: let the event loop end.
          unsafe {
            sys::napi_unref_threadsafe_function(ctx.env.raw(), q2.raw.load(Ordering::Relaxed))
          };
        }
        Ok(Float64Array::new(items))
      })?;
    q.raw.store(tsfn.raw(), Ordering::Relaxed);
    Ok(Arc::new(Port { tsfn, q }))
  }

  /// A check was sent (JS thread): keep the event loop alive until it is back.
  pub fn expect(&self, env: &Env) {
    if self.q.pending.fetch_add(1, Ordering::Relaxed) == 0 {
      unsafe { sys::napi_ref_threadsafe_function(env.raw(), self.tsfn.raw()) };
    }
  }
}

impl Sink for Port {
  fn deliver(&self, id: f64, d: &Decision) {
    self.q.items.lock().extend_from_slice(&[
      id,
      d.allowed as u8 as f64,
      d.remaining,
      d.retry_after,
      d.reset,
    ]);
    if !self.q.scheduled.swap(true, Ordering::SeqCst) {
      self.tsfn.call((), ThreadsafeFunctionCallMode::NonBlocking);
    }
  }
}

// ------------------------------------------------------------------ direct

/// Decisions of one batch, gathered before they go to JS in one call.
#[derive(Default)]
pub struct Collect {
  items: Mutex<Vec<f64>>,
}

impl Sink for Collect {
  fn deliver(&self, id: f64, d: &Decision) {
    self.items.lock().extend_from_slice(&[
      id,
      d.allowed as u8 as f64,
      d.remaining,
      d.retry_after,
      d.reset,
    ]);
  }
}

/// Checks queued in one tick that leave at once as one script call, without
/// waiting for the end of the tick (the rest still go together at its end).
/// 32, not 16: with 64 in flight, in 5 paired benchmark runs (issue 12,
/// load 1.7-4.2) 32 gave the higher ratio to rate-limiter-flexible for four
/// algorithms every time (+2% to +50%), for gcra 3 times of 5 (-6% to
/// +41%); 48 and 64 did worse than both.
const EAGER_BATCH: usize = 32;

/// A handle's checks on its own JS thread's Redis connection: the checks of
/// one tick go in one script call (per [`MAX_BATCH`]) written in that tick,
/// and the decisions reach `onResults` from the same thread when the reply
/// is read — no thread hop, no threadsafe function.
pub struct Direct {
  limiter: Arc<Limiter>,
  fast: crate::redis::Fast,
  env: sys::napi_env,
  on_results: sys::napi_ref,
  batch: RefCell<Vec<Job>>,
  scheduled: Cell<bool>,
  sink: Arc<Collect>,
}

impl Drop for Direct {
  fn drop(&mut self) {
    unsafe { sys::napi_delete_reference(self.env, self.on_results) };
  }
}

impl Direct {
  /// For a limiter on a single Redis node, on a thread with a Node loop.
  /// `env` and `on_results` come from the constructor call on this thread.
  #[allow(clippy::not_unsafe_ptr_arg_deref)]
  pub fn new(
    limiter: &Arc<Limiter>,
    on_results: sys::napi_value,
    env: sys::napi_env,
  ) -> Option<Rc<Direct>> {
    let fast = limiter.remote()?.redis.fast(env)?;
    let mut r = ptr::null_mut();
    if unsafe { sys::napi_create_reference(env, on_results, 1, &mut r) } != sys::Status::napi_ok {
      return None;
    }
    Some(Rc::new(Direct {
      limiter: limiter.clone(),
      fast,
      env,
      on_results: r,
      batch: RefCell::new(Vec::new()),
      scheduled: Cell::new(false),
      sink: Arc::new(Collect::default()),
    }))
  }

  /// Queue a check for this tick's script call.
  pub fn check(self: &Rc<Self>, key: String, cost: f64, consume: bool, id: f64) {
    let job = self
      .limiter
      .job(key, cost, consume, Reply::Sink(self.sink.clone(), id));
    let queued = {
      let mut b = self.batch.borrow_mut();
      b.push(job);
      b.len()
    };
    // (On a Cluster the tick's checks are split by slot at its end.)
    if queued >= EAGER_BATCH && !self.fast.is_cluster() && self.limiter.redis_up() {
      // Enough for one call: it leaves now, so Redis runs it while this
      // thread settles and issues the rest of the tick's checks.
      let jobs = std::mem::take(&mut *self.batch.borrow_mut());
      let (keys, args) = {
        let remote = self.limiter.remote().expect("remote");
        remote.call_args(&Limiter::checks(&jobs))
      };
      self.call(jobs, Rc::new((keys, args)), false, 0);
      self.fast.write_now();
      return;
    }
    if !self.scheduled.replace(true) {
      let me = self.clone();
      self.fast.core.defer(Box::new(move || me.flush()));
    }
  }

  fn flush(self: &Rc<Self>) {
    self.scheduled.set(false);
    let jobs = std::mem::take(&mut *self.batch.borrow_mut());
    if !self.limiter.redis_up() {
      // The endpoint's breaker is open: `onRedisError` decides at once.
      self
        .limiter
        .settle(jobs, Err(crate::error::HpError::redis("redis is down")));
      let me = self.clone();
      return self.fast.core.run_js(Box::new(move || me.deliver()));
    }
    if !self.fast.is_cluster() {
      return self.send_calls(0, jobs);
    }
    // A script call touches one slot: the checks grouped by slot, in order.
    let remote = self.limiter.remote().expect("remote");
    let mut groups: Vec<(u16, Vec<Job>)> = Vec::new();
    let mut at: std::collections::HashMap<u16, usize> = std::collections::HashMap::new();
    for j in jobs {
      let slot = remote.slot_of(j.key());
      let i = *at.entry(slot).or_insert_with(|| {
        groups.push((slot, Vec::new()));
        groups.len() - 1
      });
      groups[i].1.push(j);
    }
    for (slot, g) in groups {
      self.send_calls(slot, g);
    }
  }

  /// Script calls of up to [`MAX_BATCH`] checks each (all in `hash_slot`
  /// on a Cluster).
  fn send_calls(self: &Rc<Self>, hash_slot: u16, mut jobs: Vec<Job>) {
    while !jobs.is_empty() {
      let rest = jobs.split_off(jobs.len().min(MAX_BATCH));
      let (keys, args) = {
        let remote = self.limiter.remote().expect("remote");
        remote.call_args(&Limiter::checks(&jobs))
      };
      self.call(jobs, Rc::new((keys, args)), false, hash_slot);
      jobs = rest;
    }
  }

  fn call(
    self: &Rc<Self>,
    jobs: Vec<Job>,
    ka: Rc<(Vec<String>, Vec<String>)>,
    full: bool,
    hash_slot: u16,
  ) {
    let me = self.clone();
    let ka2 = ka.clone();
    let encode = move |b: &mut Vec<u8>| {
      me.limiter
        .remote()
        .expect("remote")
        .encode_call(&ka2.0, &ka2.1, full, b)
    };
    let me = self.clone();
    self.fast.send(
      hash_slot,
      &encode,
      1,
      Box::new(move |r| {
        let remote = me.limiter.remote().expect("remote");
        let n = jobs.len();
        let d = match crate::redis::conn::first(r) {
          Err(e) if !full && e.message.contains("NOSCRIPT") => {
            // Not loaded on this server yet: send it whole, once.
            return me.call(jobs, ka, true, hash_slot);
          }
          Err(e) => Err(e),
          Ok(redis::Value::Array(v)) => remote.decisions(v, n),
          Ok(other) => Err(crate::error::HpError::redis(format!(
            "redis: rate limiter script returned {other:?}"
          ))),
        };
        me.limiter.settle(jobs, d);
        me.deliver();
      }),
    );
  }

  /// Hand the gathered decisions to `onResults`, in one call.
  fn deliver(&self) {
    let items = std::mem::take(&mut *self.sink.items.lock());
    if items.is_empty() {
      return;
    }
    let env = self.env;
    unsafe {
      let mut f = ptr::null_mut();
      sys::napi_get_reference_value(env, self.on_results, &mut f);
      let mut data = ptr::null_mut();
      let mut ab = ptr::null_mut();
      sys::napi_create_arraybuffer(env, items.len() * 8, &mut data, &mut ab);
      ptr::copy_nonoverlapping(items.as_ptr(), data as *mut f64, items.len());
      let mut ta = ptr::null_mut();
      sys::napi_create_typedarray(
        env,
        sys::TypedarrayType::float64_array,
        items.len(),
        ab,
        0,
        &mut ta,
      );
      let mut undef = ptr::null_mut();
      sys::napi_get_undefined(env, &mut undef);
      let mut ret = ptr::null_mut();
      sys::napi_call_function(env, undef, f, 1, &ta, &mut ret);
    }
  }
}
