//! RateLimiter: the native engine `NativeRateLimiter` (this file, thin) over
//! the limiter core (`limiter.rs`), the algorithms and in-process store
//! (`local.rs`) and the Redis scripts (`redis.rs` and the `.lua` files);
//! `fast.rs` has the per-check paths to JS. `lib/rate_limiter.js` is the
//! JS-facing class.

pub mod fast;
pub mod limiter;
pub mod local;
pub mod redis;

use std::cell::UnsafeCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use napi::bindgen_prelude::*;
use napi::threadsafe_function::UnknownReturnValue;
use napi_derive::napi;

use crate::error::{Code, HpError, HpResult};
use crate::redis::{RedisConfig, RedisOptions};
use crate::runtime;
use fast::{Handle, Port};
pub use limiter::Algo;
use limiter::{Config, Limiter, Reply, Settle, CLASS};

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
  /// `acquire()` callers waiting at once per key; past it `acquire` rejects
  /// `ERR_QUEUE_FULL` at once. A positive integer (up to 2^32 - 1) or
  /// `Infinity`. Default: `Infinity`.
  pub max_waiters: Option<f64>,
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

static OWNERS: AtomicU64 = AtomicU64::new(1);

/// The native engine behind `RateLimiter` (see lib/rate_limiter.js).
#[napi(js_name = "NativeRateLimiter")]
pub struct NativeRateLimiter {
  /// Set by a panic inside a method: later calls fail with ERR_INTERNAL.
  poison: crate::guard::Poison,
  inner: Arc<Limiter>,
  h: Arc<Handle>,
  /// This handle's index in its thread's table (for `rateLimiterCheckSync`).
  index: u32,
  name: Option<String>,
  owner: u64,
  port: Option<Arc<Port>>,
  /// Checks on this thread's own Redis connection (single node).
  direct: Option<Rc<fast::Direct>>,
}

impl Drop for NativeRateLimiter {
  /// Collected without `close()`: free its name so the state can go with the
  /// last handle. Its waiting `acquire`s, if any, still complete (their
  /// timers hold the state).
  fn drop(&mut self) {
    fast::unregister(self.index);
    if !self.h.closed.swap(true, Ordering::SeqCst) {
      if let Some(n) = &self.name {
        runtime::detach(CLASS, n);
      }
    }
  }
}

fn to_js<T>(r: HpResult<T>) -> Result<T, Code> {
  r.map_err(Into::into)
}

fn check_cost(cost: f64) -> HpResult<f64> {
  crate::validate::number_in("cost", cost, 0.0, crate::validate::MAX_COUNT)
}

fn check_key(key: &str) -> HpResult<()> {
  crate::error::check_key("key", key)
}

#[napi]
impl NativeRateLimiter {
  /// `onResults` (required with `redis`) receives the decisions of
  /// `checkAsync` calls, in batches: `[id, allowed (0/1), remaining,
  /// retryAfterMs, resetMs, ...]`.
  #[napi(constructor)]
  pub fn new(
    env: Env,
    options: RateLimiterOptions,
    on_results: Option<Function<'_, Float64Array, UnknownReturnValue>>,
  ) -> Result<Self, Code> {
    guarded! { ctor "RateLimiter",
    runtime::require_external_memory(&env, CLASS)?;
    let o = options;
    let redis = to_js(o.redis.as_ref().map(RedisConfig::from_options).transpose())?;
    let cfg = to_js(Config::new(
      o.limit,
      o.window_ms,
      o.algorithm.as_deref(),
      o.max_keys,
      o.max_waiters,
      redis,
      o.on_redis_error.as_deref(),
    ))?;
    let mut results_fn = None;
    let port = match (cfg.redis.is_some(), on_results) {
      (true, Some(f)) => {
        let v = f.value();
        results_fn = Some((v.env, v.value));
        Some(Port::new(f).map_err(crate::error::from_napi)?)
      }
      (true, None) => {
        return Err(HpError::invalid("a RateLimiter with `redis` needs onResults").into())
      }
      (false, _) => None,
    };
    let inner = match &o.name {
      Some(name) => to_js(runtime::attach(CLASS, name, format!("{cfg:?}"), || {
        Limiter::new(cfg.clone())
      }))?,
      None => to_js(Limiter::new(cfg))?,
    };
    let h = Arc::new(Handle {
      limiter: inner.clone(),
      scratch: UnsafeCell::new([0.0; 4]),
      closed: AtomicBool::new(false),
    });
    let direct = results_fn.and_then(|(env, f)| fast::Direct::new(&inner, f, env));
    Ok(NativeRateLimiter {
      direct,
      poison: crate::guard::Poison::new("RateLimiter"),
      inner,
      index: fast::register(h.clone()),
      h,
      name: o.name,
      owner: OWNERS.fetch_add(1, Ordering::Relaxed),
      port,
    })
    }
  }

  fn open(&self) -> Result<&Arc<Limiter>, Code> {
    if self.h.closed.load(Ordering::Relaxed) {
      return Err(HpError::closed(CLASS).into());
    }
    Ok(&self.inner)
  }

  /// This handle's index for `rateLimiterCheckSync` (valid on this thread).
  #[napi(getter)]
  pub fn handle(&self) -> Result<u32, Code> {
    guarded! { ok self,
    self.index
    }
  }

  /// The scratch array (Float64 x 4) this handle writes results into:
  /// `[remaining, retryAfterMs, resetMs, waiterId]`.
  #[napi]
  pub fn scratch(&self, env: Env) -> Result<ArrayBuffer<'_>> {
    guarded! { self,
    let h = self.h.clone();
    let ptr = h.scratch.get() as *mut u8;
    unsafe { ArrayBuffer::from_external(&env, ptr, 32, h, |_, h| drop(h)) }
    }
  }

  #[napi]
  pub fn has_redis(&self) -> Result<bool, Code> {
    guarded! { ok self,
    self.inner.has_redis()
    }
  }

  /// With Redis: check (and consume when `consume`); the decision comes back
  /// through `onResults` with this `id`. Never fails once sent: when Redis
  /// cannot answer within `commandTimeoutMs`, `onRedisError` decides.
  #[napi]
  pub fn check_async(
    &self,
    env: Env,
    id: f64,
    key: String,
    cost: f64,
    consume: bool,
  ) -> Result<(), Code> {
    guarded! { self,
    let inner = self.open()?;
    to_js(check_key(&key).and_then(|_| check_cost(cost)))?;
    if let Some(d) = &self.direct {
      d.check(key, cost, consume, id);
      return Ok(());
    }
    let Some(port) = &self.port else {
      return Err(
        HpError::invalid("checkAsync needs `redis`: in process, use rateLimiterCheckSync").into(),
      );
    };
    port.expect(&env);
    inner.submit(key, cost, consume, true, Reply::Sink(port.clone(), id));
    Ok(())
    }
  }

  /// In process: forget `key`.
  #[napi]
  pub fn reset_sync(&self, key: String) -> Result<(), Code> {
    guarded! { self,
    let inner = self.open()?;
    to_js(check_key(&key))?;
    inner.reset_local(&key);
    Ok(())
    }
  }

  /// Forget `key` in process and on Redis.
  #[napi(ts_return_type = "Promise<void>")]
  pub fn reset<'e>(&self, env: &'e Env, key: String) -> Result<Object<'e>, Code> {
    guarded! { self,
    let inner = self.open()?.clone();
    to_js(check_key(&key))?;
    runtime::promise(env, async move { inner.reset(&key).await }).map_err(crate::error::from_napi)
    }
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
    guarded! { self,
    let inner = self.open()?;
    to_js(check_key(&key).and_then(|_| check_cost(cost)))?;
    if let Some(t) = timeout_ms {
      to_js(crate::validate::duration_ms("timeoutMs", t, crate::validate::Span::Timer))?;
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
        unsafe { (*self.h.scratch.get())[3] = id as f64 };
        Ok(promise)
      }
    }
    }
  }

  /// Reject waiter `id` with ERR_ABORTED (its AbortSignal fired). Returns
  /// whether it was still waiting.
  #[napi]
  pub fn cancel(&self, id: f64) -> Result<bool, Code> {
    guarded! { ok self,
    self.inner.cancel(
      id as u64,
      HpError::new(Code::Aborted, "acquire was aborted"),
    )
    }
  }

  #[napi]
  pub fn stats(&self) -> Result<RateLimiterStats, Code> {
    guarded! { always ok self,
    let c = &self.inner.c;
    RateLimiterStats {
      allowed: c.allowed.load(Ordering::Relaxed) as f64,
      denied: c.denied.load(Ordering::Relaxed) as f64,
      keys: self.inner.keys() as f64,
      redis_errors: c.redis_errors.load(Ordering::Relaxed) as f64,
      waiting: self.inner.waiting() as f64,
    }
    }
  }

  /// Close this handle: its waiters reject ERR_CLOSED. The shared state
  /// shuts down with its last handle. Idempotent.
  #[napi(ts_return_type = "Promise<void>")]
  pub fn close<'e>(&self, env: &'e Env) -> Result<Object<'e>, Code> {
    guarded! { always self,
    if !self.h.closed.swap(true, Ordering::SeqCst) {
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
}
