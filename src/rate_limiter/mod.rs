//! RateLimiter: the native engine `NativeRateLimiter` (this file, thin) over
//! the limiter core (`limiter.rs`), the algorithms and in-process store
//! (`local.rs`) and the Redis scripts (`redis.rs` and the `.lua` files).
//! `lib/rate_limiter.js` is the JS-facing class.

pub mod limiter;
pub mod local;
pub mod redis;

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use napi::bindgen_prelude::*;
use napi_derive::napi;

use crate::error::{Code, HpError, HpResult};
use crate::redis::{RedisConfig, RedisOptions};
use crate::runtime;
pub use limiter::Algo;
use limiter::{Config, Limiter, Settle, CLASS};
use local::Decision;

/// Options of `new RateLimiter(options)`.
#[napi(object, object_to_js = false)]
#[derive(Default, Clone)]
pub struct RateLimiterOptions {
  /// Units admitted per window (token bucket / gcra: the burst capacity).
  /// Required, a finite number > 0.
  pub limit: f64,
  /// The window in ms (token bucket / gcra: the time to refill `limit`
  /// units). Required, a finite number > 0.
  pub window_ms: f64,
  /// Default: `'sliding-window'` (exact).
  #[napi(
    ts_type = "'sliding-window' | 'sliding-window-counter' | 'fixed-window' | 'token-bucket' | 'gcra'"
  )]
  pub algorithm: Option<String>,
  /// Makes the limiter process-wide: every `new RateLimiter({ name, ... })`
  /// with this name, on the main thread or in any worker thread, is one limit.
  pub name: Option<String>,
  /// One limit across processes and machines: every check is one atomic
  /// round trip (a Lua script) timed by the Redis server's clock.
  /// Default: none (in process).
  pub redis: Option<RedisOptions>,
  /// With `redis`, when Redis fails or is slower than `commandTimeoutMs`:
  /// `'allow'` (fail open), `'deny'` (fail closed) or `'local'` (this
  /// process's own limit until Redis answers again). Default: `'local'`.
  #[napi(ts_type = "'allow' | 'deny' | 'local'")]
  pub on_redis_error: Option<String>,
  /// Most keys kept in process; past it the keys idle longest (fully
  /// restored ones first) are dropped. Default: `1_000_000`.
  pub max_keys: Option<f64>,
}

/// `RateLimiter.stats()`.
#[napi(object)]
pub struct RateLimiterStats {
  /// Checks (and acquires) admitted.
  pub allowed: f64,
  /// Checks refused.
  pub denied: f64,
  /// Keys held in process (with `redis`: by the `local` fallback).
  pub keys: f64,
  /// Checks Redis could not answer (decided by `onRedisError`), and failed resets.
  pub redis_errors: f64,
  /// `acquire` calls waiting now.
  pub waiting: f64,
}

/// Per-handle scratch the JS layer reads after a sync check:
/// `[remaining, retryAfterMs, resetMs, waiterId]`.
struct Scratch(UnsafeCell<[f64; 4]>);
unsafe impl Sync for Scratch {}
unsafe impl Send for Scratch {}

static OWNERS: AtomicU64 = AtomicU64::new(1);

/// The native engine behind `RateLimiter` (see lib/rate_limiter.js).
#[napi(js_name = "NativeRateLimiter")]
pub struct NativeRateLimiter {
  inner: Arc<Limiter>,
  name: Option<String>,
  owner: u64,
  closed: AtomicBool,
  scratch: Arc<Scratch>,
}

fn to_js<T>(r: HpResult<T>) -> Result<T, Code> {
  r.map_err(Into::into)
}

fn check_cost(cost: f64) -> HpResult<f64> {
  if !cost.is_finite() || cost < 0.0 {
    return Err(HpError::invalid(format!(
      "cost must be a finite number >= 0, got {cost}"
    )));
  }
  Ok(cost)
}

fn check_key(key: &str) -> HpResult<()> {
  crate::error::check_key("key", key)
}

fn decision_array(d: Decision) -> Vec<f64> {
  vec![d.allowed as u8 as f64, d.remaining, d.retry_after, d.reset]
}

#[napi]
impl NativeRateLimiter {
  #[napi(constructor)]
  pub fn new(options: RateLimiterOptions) -> Result<Self, Code> {
    let o = options;
    let redis = to_js(o.redis.as_ref().map(RedisConfig::from_options).transpose())?;
    let cfg = to_js(Config::new(
      o.limit,
      o.window_ms,
      o.algorithm.as_deref(),
      o.max_keys,
      redis,
      o.on_redis_error.as_deref(),
    ))?;
    let inner = match &o.name {
      Some(name) => to_js(runtime::attach(CLASS, name, format!("{cfg:?}"), || {
        Limiter::new(cfg.clone())
      }))?,
      None => to_js(Limiter::new(cfg))?,
    };
    Ok(NativeRateLimiter {
      inner,
      name: o.name,
      owner: OWNERS.fetch_add(1, Ordering::Relaxed),
      closed: AtomicBool::new(false),
      scratch: Arc::new(Scratch(UnsafeCell::new([0.0; 4]))),
    })
  }

  fn open(&self) -> Result<&Arc<Limiter>, Code> {
    if self.closed.load(Ordering::Relaxed) {
      return Err(HpError::closed(CLASS).into());
    }
    Ok(&self.inner)
  }

  fn local_only(&self) -> Result<&Arc<Limiter>, Code> {
    let inner = self.open()?;
    if inner.has_redis() {
      return Err(
        HpError::invalid(
          "checkSync is in-process only: a RateLimiter with `redis` checks with check()",
        )
        .into(),
      );
    }
    Ok(inner)
  }

  fn write(&self, d: &Decision) -> bool {
    let s = unsafe { &mut *self.scratch.0.get() };
    s[0] = d.remaining;
    s[1] = d.retry_after;
    s[2] = d.reset;
    d.allowed
  }

  /// The scratch array (Float64 x 4) this handle writes results into.
  #[napi]
  pub fn scratch(&self, env: Env) -> Result<ArrayBuffer<'_>> {
    let s = self.scratch.clone();
    let ptr = s.0.get() as *mut u8;
    unsafe { ArrayBuffer::from_external(&env, ptr, 32, s, |_, s| drop(s)) }
  }

  #[napi]
  pub fn has_redis(&self) -> bool {
    self.inner.has_redis()
  }

  /// In process: check and consume. Returns `allowed`; the numbers go to scratch.
  #[napi]
  pub fn check_sync(&self, key: String, cost: f64) -> Result<bool, Code> {
    let inner = self.local_only()?;
    to_js(check_key(&key).and_then(|_| check_cost(cost)))?;
    Ok(self.write(&inner.check_local(&key, cost, true)))
  }

  /// In process: would `cost` pass now? Consumes nothing.
  #[napi]
  pub fn peek_sync(&self, key: String, cost: f64) -> Result<bool, Code> {
    let inner = self.local_only()?;
    to_js(check_key(&key).and_then(|_| check_cost(cost)))?;
    Ok(self.write(&inner.check_local(&key, cost, false)))
  }

  /// In process: forget `key`.
  #[napi]
  pub fn reset_sync(&self, key: String) -> Result<(), Code> {
    let inner = self.local_only()?;
    to_js(check_key(&key))?;
    inner.reset_local(&key);
    Ok(())
  }

  /// With Redis: check (and consume when `consume`). Resolves
  /// `[allowed (0/1), remaining, retryAfterMs, resetMs]`.
  #[napi(ts_return_type = "Promise<number[]>")]
  pub fn check<'e>(
    &self,
    env: &'e Env,
    key: String,
    cost: f64,
    consume: bool,
  ) -> Result<Object<'e>, Code> {
    let inner = self.open()?.clone();
    to_js(check_key(&key).and_then(|_| check_cost(cost)))?;
    runtime::promise(env, async move {
      Ok(decision_array(inner.check(&key, cost, consume).await))
    })
    .map_err(crate::error::from_napi)
  }

  /// Forget `key` in process and on Redis.
  #[napi(ts_return_type = "Promise<void>")]
  pub fn reset<'e>(&self, env: &'e Env, key: String) -> Result<Object<'e>, Code> {
    let inner = self.open()?.clone();
    to_js(check_key(&key))?;
    runtime::promise(env, async move { inner.reset(&key).await }).map_err(crate::error::from_napi)
  }

  /// Wait (FIFO per key) until `cost` is admitted. Returns `null` when it
  /// was admitted at once; else a Promise, and the waiter id (for `cancel`)
  /// is in scratch[3].
  #[napi(ts_return_type = "Promise<void> | null")]
  pub fn acquire<'e>(
    &self,
    env: &'e Env,
    key: String,
    cost: f64,
    timeout_ms: Option<f64>,
  ) -> Result<Option<Object<'e>>, Code> {
    let inner = self.open()?;
    to_js(check_key(&key).and_then(|_| check_cost(cost)))?;
    if let Some(t) = timeout_ms {
      to_js(crate::error::check_non_negative("timeoutMs", t))?;
    }
    let mut promise = None;
    let queued = to_js(inner.acquire(&key, cost, timeout_ms, self.owner, || {
      type Resolver = Box<dyn FnOnce(Env) -> napi::Result<()> + Send>;
      let (deferred, p) = env
        .create_deferred::<(), Resolver>()
        .map_err(|e| HpError::invalid(e.reason.clone()))?;
      promise = Some(p);
      Ok(Box::new(move |r: HpResult<()>| {
        deferred.resolve(Box::new(move |env: Env| {
          r.map_err(|e| runtime::js_error(&env, e))
        }))
      }) as Settle)
    }))?;
    match queued {
      None => Ok(None),
      Some(id) => {
        unsafe { (*self.scratch.0.get())[3] = id as f64 };
        Ok(promise)
      }
    }
  }

  /// Reject waiter `id` with ERR_ABORTED (its AbortSignal fired). Returns
  /// whether it was still waiting.
  #[napi]
  pub fn cancel(&self, id: f64) -> bool {
    self.inner.cancel(
      id as u64,
      HpError::new(Code::Aborted, "acquire was aborted"),
    )
  }

  #[napi]
  pub fn stats(&self) -> RateLimiterStats {
    let c = &self.inner.c;
    RateLimiterStats {
      allowed: c.allowed.load(Ordering::Relaxed) as f64,
      denied: c.denied.load(Ordering::Relaxed) as f64,
      keys: self.inner.keys() as f64,
      redis_errors: c.redis_errors.load(Ordering::Relaxed) as f64,
      waiting: self.inner.waiting() as f64,
    }
  }

  /// Close this handle: its waiters reject ERR_CLOSED. The shared state
  /// shuts down with its last handle. Idempotent.
  #[napi(ts_return_type = "Promise<void>")]
  pub fn close<'e>(&self, env: &'e Env) -> Result<Object<'e>, Code> {
    if !self.closed.swap(true, Ordering::SeqCst) {
      let last = match &self.name {
        Some(n) => runtime::detach(CLASS, n),
        None => true,
      };
      if last {
        self.inner.shutdown();
      } else {
        self.inner.close_waiters(Some(self.owner));
      }
    }
    runtime::promise(env, async { Ok(()) }).map_err(crate::error::from_napi)
  }
}
