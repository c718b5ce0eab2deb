//! CacheManager's `#[napi]` binding: it checks arguments, converts values and
//! calls the engine (`engine.rs`: write path, fills, flights, subscriber).
//! `lib/cache.js` is the JS-facing class (per-thread front cache, value
//! encoding, getOrSet).

pub mod arg;
pub mod codec;
pub mod engine;
pub mod invalidation;
pub mod l1;
pub mod l2;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use napi::bindgen_prelude::*;
use napi::sys;
use napi_derive::napi;

use crate::error::{Code, HpError, HpResult};
use crate::redis::{RedisConfig, RedisOptions};
use crate::runtime::{self, now_ms};
use crate::validate;
use arg::{Payload, StrArg};
use codec::*;
use engine::{CacheConfig, Engine, FlightOutcome};
use l1::{Entry, L1Config, Versions};
use tokio::sync::watch;

/// Options of `new CacheManager(options)`.
#[napi(object, object_to_js = false)]
#[derive(Default, Clone)]
pub struct CacheOptions {
  /// Makes the cache process-wide: every `new CacheManager({ name })` with the
  /// same name, on the main thread or in any worker thread, is the same cache.
  pub name: Option<String>,
  /// L1 capacity by count. Default: `10_000`.
  pub max_entries: Option<f64>,
  /// L1 capacity by weighed size (key bytes + value bytes). Default: unbounded
  /// (only `maxEntries` applies).
  pub max_bytes: Option<f64>,
  /// Default TTL for L1 and L2, in ms. Default: no expiry.
  pub ttl_ms: Option<f64>,
  /// Cap on how long L1 keeps an entry, in ms (L2 keeps `ttlMs`). Default: none.
  pub l1_ttl_ms: Option<f64>,
  /// L1 time-to-idle, in ms: an entry not read for this long leaves L1. Default: none.
  pub idle_ms: Option<f64>,
  /// L1 eviction policy. Default: `'tinylfu'`.
  #[napi(ts_type = "'tinylfu' | 'lru'")]
  pub policy: Option<String>,
  /// L2 on Redis. Default: none (L1 only).
  pub redis: Option<RedisOptions>,
  /// With `redis`: evict other instances' L1 entries on set/delete. Default: `'pubsub'`.
  #[napi(ts_type = "'pubsub' | 'none'")]
  pub invalidation: Option<String>,
  /// `getOrSet` may serve a value this long (ms) past its expiry while one
  /// refresh runs. Default: `0`.
  pub stale_ms: Option<f64>,
  /// `getOrSet` refreshes in the background when the remaining TTL is below
  /// this (ms). Default: `0` (off).
  pub refresh_ahead_ms: Option<f64>,
  /// Entries in each thread's front cache: hot values kept on the JS heap of
  /// the reading thread (strings, numbers, booleans, null, and objects and
  /// arrays as parsed values), so a hot read never crosses into native code;
  /// every read checks the entry against shared version counters, so it never
  /// returns a value that was since replaced or deleted by any thread.
  /// Bounded by a CLOCK policy. `0` turns it off. Default: `16_384` (at most
  /// `maxEntries`).
  pub front_cache_entries: Option<f64>,
  /// Size bound of each thread's front cache, in bytes counted as UTF-16 code
  /// units of key + value (a string's length, an object's JSON text length;
  /// 8 for other values). A value larger than this is never front-cached.
  /// Default: `8_388_608` (8 MiB).
  pub front_cache_bytes: Option<f64>,
  /// What reads return for objects and arrays. `'frozen'`: every reader of a
  /// key gets the same deep-frozen value (`Object.isFrozen`, typed
  /// `DeepReadonly<V>`), so a hot read costs no parse and no copy; a mutation
  /// attempt throws in strict mode and never changes what anyone reads.
  /// `'copy'`: every read returns a fresh mutable copy (parsed from JSON text,
  /// no native call on a front hit). Strings, numbers, booleans and null are
  /// immutable either way; a Buffer is always a fresh copy. Per handle (it may
  /// differ between handles of one named cache). Default: `'frozen'`.
  #[napi(ts_type = "'frozen' | 'copy'")]
  pub read_mode: Option<String>,
  /// Most writes waiting for Redis; beyond it a write is dropped (L1 keeps
  /// it) and counted in `droppedWrites`. Default: `100_000`.
  pub max_pending_writes: Option<f64>,
  /// How long (ms) a write to Redis that failed is retried, with backoff,
  /// before it is dropped and counted in `droppedWrites`; also bounds how
  /// long `close()` waits for pending writes. Default: `10_000`.
  pub write_retry_ms: Option<f64>,
  /// `getOrSet(..., { singleFlight: 'redis' })`: how long (ms) the Redis
  /// lease lasts if its holder dies; renewed every third of it while the
  /// factory runs. Default: `3_000`.
  pub lease_ms: Option<f64>,
}

fn opt_ms(name: &str, v: Option<f64>) -> HpResult<Option<f64>> {
  v.map(|x| validate::positive_duration_ms(name, x, validate::Span::Lifetime))
    .transpose()
}

/// A per-call `ttlMs` (absent: the cache's default).
fn call_ttl(ttl_ms: Option<f64>) -> Result<Option<f64>, Code> {
  to_js(opt_ms("ttlMs", ttl_ms))
}

/// How many reads one sampled front-hit report counts in L1's TinyLFU sketch.
const TOUCH_WEIGHT: u32 = 8;

/// The clock reading `fill_scratch` needs for entry `e`: none (0) when it
/// never expires, so a read of such an entry skips the clock.
fn scratch_now(e: &Entry) -> f64 {
  if e.stale_until.is_finite() {
    now_ms()
  } else {
    0.0
  }
}

/// Check the options once and turn them into the engine's configuration.
fn config_from_options(o: &CacheOptions) -> HpResult<CacheConfig> {
  let max_entries = validate::count("maxEntries", o.max_entries.unwrap_or(10_000.0), 1)?;
  let max_bytes = o
    .max_bytes
    .map(|b| validate::bytes("maxBytes", b, 1))
    .transpose()?;
  let idle = opt_ms("idleMs", o.idle_ms)?.map(validate::duration);
  let lru = match o.policy.as_deref() {
    None | Some("tinylfu") => false,
    Some("lru") => true,
    Some(p) => {
      return Err(HpError::invalid(format!(
        "policy must be 'tinylfu' or 'lru', got '{p}'"
      )))
    }
  };
  let pubsub = match o.invalidation.as_deref() {
    None | Some("pubsub") => true,
    Some("none") => false,
    Some(p) => {
      return Err(HpError::invalid(format!(
        "invalidation must be 'pubsub' or 'none', got '{p}'"
      )))
    }
  };
  let redis = o
    .redis
    .as_ref()
    .map(RedisConfig::from_options)
    .transpose()?;
  // Per handle: checked here, applied by the JS layer.
  if let Some(m) = o.read_mode.as_deref() {
    if m != "frozen" && m != "copy" {
      return Err(HpError::invalid(format!(
        "readMode must be 'frozen' or 'copy', got '{m}'"
      )));
    }
  }
  let front = match o.front_cache_entries {
    None => 16_384u64.min(max_entries),
    Some(v) => validate::count("frontCacheEntries", v, 0)?,
  };
  Ok(CacheConfig {
    name: o.name.clone(),
    write_retry_ms: validate::duration_ms(
      "writeRetryMs",
      o.write_retry_ms.unwrap_or(10_000.0),
      validate::Span::Timer,
    )?,
    lease_ms: validate::positive_duration_ms(
      "leaseMs",
      o.lease_ms.unwrap_or(3_000.0),
      validate::Span::Timer,
    )?
    .ceil() as u64,
    l1: L1Config {
      max_entries,
      max_bytes,
      idle,
      lru,
    },
    ttl_ms: opt_ms("ttlMs", o.ttl_ms)?,
    l1_ttl_ms: opt_ms("l1TtlMs", o.l1_ttl_ms)?,
    stale_ms: validate::duration_ms(
      "staleMs",
      o.stale_ms.unwrap_or(0.0),
      validate::Span::Lifetime,
    )?,
    refresh_ahead_ms: validate::duration_ms(
      "refreshAheadMs",
      o.refresh_ahead_ms.unwrap_or(0.0),
      validate::Span::Lifetime,
    )?,
    redis,
    pubsub,
    front,
    front_bytes: validate::count(
      "frontCacheBytes",
      o.front_cache_bytes.unwrap_or(8_388_608.0),
      0,
    )?,
    max_pending: validate::count(
      "maxPendingWrites",
      o.max_pending_writes.unwrap_or(100_000.0),
      1,
    )?,
  })
}

// ------------------------------------------------------------ JS values

/// Payload of a value as the JS layer passes it: strings for K_STR and
/// K_JSON, numbers for K_NUM / K_BOOL (0/1) / K_NULL, Buffers for K_BYTES.
fn val_from_js(kind: u32, payload: Either3<String, f64, Buffer>) -> HpResult<Val> {
  Ok(match (kind, payload) {
    (K_STR, Either3::A(s)) => Val::Str(s),
    (K_JSON, Either3::A(s)) => Val::Json(s),
    (K_NUM, Either3::B(n)) => Val::Num(n),
    (K_BOOL, Either3::B(n)) => Val::Bool(n != 0.0),
    (K_NULL, _) => Val::Null,
    (K_BYTES, Either3::C(b)) => Val::Bytes(b.to_vec()),
    (k, _) => {
      return Err(HpError::invalid(format!(
        "value of kind {k} does not match its payload"
      )))
    }
  })
}

/// A JS string straight from L1's bytes (no intermediate `String` copy);
/// ASCII text, the common case, takes V8's cheaper Latin-1 constructor.
unsafe fn str_to_js(env: sys::napi_env, s: &str) -> Result<sys::napi_value> {
  let mut out = std::ptr::null_mut();
  unsafe {
    if s.is_ascii() {
      check_status!(sys::napi_create_string_latin1(
        env,
        s.as_ptr().cast(),
        s.len() as isize,
        &mut out
      ))?;
    } else {
      check_status!(sys::napi_create_string_utf8(
        env,
        s.as_ptr().cast(),
        s.len() as isize,
        &mut out
      ))?;
    }
  }
  Ok(out)
}

unsafe fn val_to_js(env: sys::napi_env, v: &Val) -> Result<sys::napi_value> {
  unsafe {
    match v {
      Val::Str(s) | Val::Json(s) => str_to_js(env, s),
      Val::Num(n) => f64::to_napi_value(env, *n),
      Val::Bool(b) => bool::to_napi_value(env, *b),
      Val::Null => Null::to_napi_value(env, Null),
      Val::Bytes(b) => Buffer::to_napi_value(env, Buffer::from(b.clone())),
    }
  }
}

/// Results of async reads: a flat array `[kind0, payload0, kind1, ...]`
/// (kind 0 = missing), or a JSON error string (flight failure).
pub enum Out {
  Vals(Vec<Option<Val>>),
  Err(String),
}

impl ToNapiValue for Out {
  unsafe fn to_napi_value(env: sys::napi_env, val: Self) -> Result<sys::napi_value> {
    unsafe {
      match val {
        Out::Err(s) => String::to_napi_value(env, s),
        Out::Vals(vs) => vals_to_js(env, vs.iter().map(Option::as_ref), vs.len()),
      }
    }
  }
}

/// `Out::Vals` of `n` values, from references.
unsafe fn vals_to_js<'v>(
  env: sys::napi_env,
  vs: impl Iterator<Item = Option<&'v Val>>,
  n: usize,
) -> Result<sys::napi_value> {
  unsafe {
    let mut arr = std::ptr::null_mut();
    check_status!(sys::napi_create_array_with_length(env, n * 2, &mut arr))?;
    for (i, v) in vs.enumerate() {
      let (k, p) = match v {
        None => (
          u32::to_napi_value(env, 0)?,
          Undefined::to_napi_value(env, ())?,
        ),
        Some(v) => (u32::to_napi_value(env, v.kind())?, val_to_js(env, v)?),
      };
      check_status!(sys::napi_set_element(env, arr, (2 * i) as u32, k))?;
      check_status!(sys::napi_set_element(env, arr, (2 * i + 1) as u32, p))?;
    }
    Ok(arr)
  }
}

/// A value returned synchronously (converted straight from the L1 entry,
/// without cloning it); its kind goes to the scratch array.
pub struct SyncVal(Arc<Entry>);

impl ToNapiValue for SyncVal {
  unsafe fn to_napi_value(env: sys::napi_env, val: Self) -> Result<sys::napi_value> {
    unsafe { val_to_js(env, &val.0.val) }
  }
}

/// A per-handle scratch array the JS layer reads after a sync read:
/// `[slot, version, remainingMs (-1 = no expiry), kind, state]` where state is
/// 0 fresh, 1 stale (past expiry, inside staleMs), 2 due for refresh-ahead;
/// after `getL2`, `scratch[5]` is the read's index in its batch's results.
struct Scratch(std::cell::UnsafeCell<[f64; 8]>);
unsafe impl Sync for Scratch {}
unsafe impl Send for Scratch {}

/// `CacheManager#stats()`. For a named cache: every handle of it. Counters
/// only grow; `l1Entries`, `l1Bytes` and `pendingWrites` are levels now.
#[napi(object)]
pub struct CacheStats {
  /// Reads answered by L1 (front-cache hits included).
  pub l1_hits: f64,
  /// Reads that missed L1 and were answered by Redis (L2).
  pub l2_hits: f64,
  /// Reads answered by neither level (also when L2 failed).
  pub misses: f64,
  /// Entries written by `set`, `setSync` and `setMany` (one per entry).
  pub sets: f64,
  /// Keys that `delete`, `deleteMany` or `deleteLater` found and deleted.
  pub deletes: f64,
  /// Entries L1 dropped to stay within `maxEntries` / `maxBytes`.
  pub evictions: f64,
  /// Entries in L1 now.
  pub l1_entries: f64,
  /// Weighed size of L1 now (key bytes + value bytes), in bytes.
  pub l1_bytes: f64,
  /// Redis (L2) operations that failed or timed out; none of them threw.
  pub l2_errors: f64,
  /// `(l1Hits + l2Hits) / (l1Hits + l2Hits + misses)`; `0` before any read.
  pub hit_ratio: f64,
  /// Writes (and deletes) queued for Redis, not yet landed or dropped.
  pub pending_writes: f64,
  /// Writes (and deletes) to Redis given up on: the queue was full, or
  /// Redis kept failing for `writeRetryMs`. L1 kept them.
  pub dropped_writes: f64,
}

/// The native engine behind `CacheManager` (see lib/cache.js).
#[napi(js_name = "NativeCache")]
pub struct NativeCache {
  /// Set by a panic inside a method: later calls fail with ERR_INTERNAL.
  poison: crate::guard::Poison,
  /// Set to true at close() (or drop): pending deleteLater tasks stop
  /// waiting and let go of the cache.
  later: watch::Sender<bool>,
  inner: Arc<Engine>,
  name: Option<String>,
  closed: AtomicBool,
  scratch: Arc<Scratch>,
  /// L2 reads of this tick, waiting for its end (this handle's JS thread).
  gets: Gets,
}

/// One L2 read waiting for the end of its tick.
struct Pending {
  key: String,
  /// The key's L1 slot version when the read was asked.
  ver: u32,
}

/// The L2 reads of one tick (at most [`MGET_MAX`]): one MGET, and one
/// Promise for all of them, resolved once with their results in order
/// (`[kind0, payload0, kind1, ...]`, see [`Out`]); each read's index in it
/// goes to the scratch array (see `get_l2`).
struct GetBatch {
  items: Vec<Pending>,
  /// The batch's Promise (null while `items` is empty).
  deferred: sys::napi_deferred,
  scheduled: bool,
  /// Bytes of a value read from L2, on average (a moving average over the
  /// replies so far): how much work a batch is for Redis (see [`EAGER_BYTES`]).
  value_bytes: f64,
}

impl Default for GetBatch {
  fn default() -> Self {
    GetBatch {
      items: Vec::new(),
      deferred: std::ptr::null_mut(),
      scheduled: false,
      value_bytes: 0.0,
    }
  }
}

/// Only touched on the handle's own JS thread (like `Scratch`).
struct Gets(std::rc::Rc<std::cell::RefCell<GetBatch>>);
unsafe impl Sync for Gets {}
unsafe impl Send for Gets {}

/// Most keys in one MGET.
const MGET_MAX: usize = 512;

/// A batch whose values are expected to weigh this much leaves at once
/// (when it has at least [`EAGER_GETS`] reads), not at the end of the tick:
/// Redis works on it while this thread goes on with the tick (parsing the
/// replies of the batch before, asking the next reads). Below it, the cost
/// of another round trip (a write, a wake-up and a read on each side) is
/// more than Redis' work that would overlap: measured at 64 in flight on
/// a 2-core VM shared with other work, batches of 16 made ~1 KB objects
/// -12% to +29% faster (median about +7%) and ~100 B objects 9-23% slower.
/// The overlap needs a free core: on a loaded machine it buys little.
const EAGER_BYTES: f64 = 8.0 * 1024.0;
const EAGER_GETS: usize = 16;

/// Send the L2 reads gathered in this tick (see [`send_gets`]).
fn flush_gets(
  env: sys::napi_env,
  inner: &Arc<Engine>,
  gets: &std::rc::Rc<std::cell::RefCell<GetBatch>>,
  fast: &crate::redis::Fast,
) {
  let (items, deferred) = {
    let mut b = gets.borrow_mut();
    b.scheduled = false;
    (
      std::mem::take(&mut b.items),
      std::mem::replace(&mut b.deferred, std::ptr::null_mut()),
    )
  };
  if !items.is_empty() {
    send_gets(env, inner, gets, items, deferred, fast);
  }
}

/// Send one batch of L2 reads: one MGET and a PTTL per key, in one send (one
/// reply set). Its Promise settles when the replies come back, each fill
/// guarded by the version read when its read was asked.
fn send_gets(
  env: sys::napi_env,
  inner: &Arc<Engine>,
  gets: &std::rc::Rc<std::cell::RefCell<GetBatch>>,
  batch: Vec<Pending>,
  deferred: sys::napi_deferred,
  fast: &crate::redis::Fast,
) {
  let Some(l2) = inner.l2.as_ref() else { return };
  let n = batch.len();
  let keys: Vec<String> = batch.iter().map(|p| l2.value_key(&p.key)).collect();
  let encode_of = |idx: &[usize]| {
    let keys = &keys;
    let idx = idx.to_vec();
    move |b: &mut Vec<u8>| {
      let mut args: Vec<&[u8]> = Vec::with_capacity(idx.len() + 1);
      args.push(b"MGET");
      args.extend(idx.iter().map(|&i| keys[i].as_bytes()));
      crate::redis::resp::encode(b, &args);
      for &i in &idx {
        crate::redis::resp::encode(b, &[b"PTTL", keys[i].as_bytes()]);
      }
    }
  };
  let inner = inner.clone();
  let gets = gets.clone();
  if !fast.is_cluster() {
    let all: Vec<usize> = (0..n).collect();
    fast.send(
      0,
      &encode_of(&all),
      n + 1,
      Box::new(move |r| {
        let got = match l2::L2::got_many(r, n) {
          Ok(v) => v,
          Err(e) => vec![Err(e); n],
        };
        got_gets(env, &inner, &gets, batch, got, deferred);
      }),
    );
    return;
  }
  // On a Cluster an MGET may not cross hash slots: one per slot (the sends
  // to one node still leave in its one write of the tick), and the batch's
  // Promise settles when the last of them has answered.
  let mut groups: Vec<(u16, Vec<usize>)> = Vec::new();
  let mut at: std::collections::HashMap<u16, usize> = std::collections::HashMap::new();
  for (i, k) in keys.iter().enumerate() {
    let slot = crate::redis::cluster::slot(k.as_bytes());
    let g = *at.entry(slot).or_insert_with(|| {
      groups.push((slot, Vec::new()));
      groups.len() - 1
    });
    groups[g].1.push(i);
  }
  struct Joint {
    batch: Vec<Pending>,
    got: Vec<Option<engine::L2Read>>,
    left: usize,
  }
  let joint = std::rc::Rc::new(std::cell::RefCell::new(Joint {
    batch,
    got: (0..n).map(|_| None).collect(),
    left: groups.len(),
  }));
  for (slot, idx) in groups {
    let m = idx.len();
    let encode = encode_of(&idx);
    let (joint, inner, gets) = (joint.clone(), inner.clone(), gets.clone());
    fast.send(
      slot,
      &encode,
      m + 1,
      Box::new(move |r| {
        let got = match l2::L2::got_many(r, m) {
          Ok(v) => v,
          Err(e) => vec![Err(e); m],
        };
        let mut j = joint.borrow_mut();
        for (&i, g) in idx.iter().zip(got) {
          j.got[i] = Some(g);
        }
        j.left -= 1;
        if j.left == 0 {
          let batch = std::mem::take(&mut j.batch);
          let got = std::mem::take(&mut j.got)
            .into_iter()
            .map(|g| g.unwrap_or_else(|| Err(HpError::redis("redis: no reply for an MGET key"))))
            .collect();
          drop(j);
          got_gets(env, &inner, &gets, batch, got, deferred);
        }
      }),
    );
  }
}

/// The replies of one batch of L2 reads (in the batch's order): settle its
/// Promise with every value and fill L1.
fn got_gets(
  env: sys::napi_env,
  inner: &Arc<Engine>,
  gets: &std::rc::Rc<std::cell::RefCell<GetBatch>>,
  batch: Vec<Pending>,
  got: Vec<engine::L2Read>,
  deferred: sys::napi_deferred,
) {
  let n = batch.len();
  let (bytes, vals) = got.iter().fold((0, 0), |(b, c), r| match r {
    Ok(Some((v, _))) => (b + v.weight(), c + 1),
    _ => (b, c),
  });
  if vals > 0 {
    if let Ok(mut g) = gets.try_borrow_mut() {
      let mean = bytes as f64 / vals as f64;
      g.value_bytes = if g.value_bytes == 0.0 {
        mean
      } else {
        0.75 * g.value_bytes + 0.25 * mean
      };
    }
  }
  // The JS values first, from references: then the values move into L1.
  let js = unsafe {
    vals_to_js(
      env,
      got.iter().map(|r| match r {
        Ok(Some((v, _))) => Some(v),
        _ => None,
      }),
      n,
    )
  };
  // Filled together: two keys of one MGET may share a version slot.
  inner.got_l2_fill(
    batch
      .iter()
      .zip(got)
      .map(|(p, r)| (p.key.as_str(), p.ver, r))
      .collect(),
  );
  unsafe {
    match js {
      Ok(val) => sys::napi_resolve_deferred(env, deferred, val),
      Err(e) => sys::napi_reject_deferred(
        env,
        deferred,
        crate::redis::uv::js_error(env, HpError::redis(e.reason.clone())),
      ),
    };
  }
}

const CLASS: &str = "CacheManager";

fn to_js<T>(r: HpResult<T>) -> Result<T, Code> {
  r.map_err(Into::into)
}

#[napi]
impl NativeCache {
  #[napi(constructor)]
  pub fn new(env: Env, options: Option<CacheOptions>) -> Result<Self, Code> {
    guarded! { ctor "CacheManager",
    runtime::require_external_memory(&env, CLASS)?;
    let o = options.unwrap_or_default();
    let cfg = to_js(config_from_options(&o))?;
    let inner = match &o.name {
      Some(name) => to_js(runtime::attach(CLASS, name, format!("{cfg:?}"), || {
        Engine::new(cfg.clone())
      }))?,
      None => to_js(Engine::new(cfg))?,
    };
    Ok(NativeCache {
      poison: crate::guard::Poison::new("CacheManager"),
      later: watch::channel(false).0,
      inner,
      name: o.name,
      closed: AtomicBool::new(false),
      scratch: Arc::new(Scratch(std::cell::UnsafeCell::new([0.0; 8]))),
      gets: Gets(Default::default()),
    })
    }
  }

  fn open(&self) -> Result<&Engine, Code> {
    if self.closed.load(Ordering::Relaxed) {
      return Err(HpError::closed(CLASS).into());
    }
    Ok(&self.inner)
  }

  /// The version table (Uint32 per slot), shared with every thread.
  #[napi]
  pub fn versions(&self, env: Env) -> Result<ArrayBuffer<'_>> {
    guarded! { self,
    let v: Arc<Versions> = self.inner.l1.versions();
    let ptr = v.slots.as_ptr() as *mut u8;
    let len = v.slots.len() * 4;
    unsafe { ArrayBuffer::from_external(&env, ptr, len, v, |_, v| drop(v)) }
    }
  }

  /// The scratch array (Float64 x 8) this handle writes read metadata into.
  #[napi]
  pub fn scratch(&self, env: Env) -> Result<ArrayBuffer<'_>> {
    guarded! { self,
    let s = self.scratch.clone();
    let ptr = s.0.get() as *mut u8;
    unsafe { ArrayBuffer::from_external(&env, ptr, 64, s, |_, s| drop(s)) }
    }
  }

  #[napi]
  pub fn front_capacity(&self) -> Result<f64, Code> {
    guarded! { ok self,
    if self.inner.cfg.l1.idle.is_some() {
      // Front hits would not refresh time-to-idle: go native every time.
      return Ok(0.0);
    }
    self.inner.cfg.front as f64
    }
  }

  /// Byte bound of the JS front cache (see `frontCacheBytes`).
  #[napi]
  pub fn front_bytes(&self) -> f64 {
    self.inner.cfg.front_bytes as f64
  }

  #[napi]
  pub fn has_l2(&self) -> Result<bool, Code> {
    guarded! { ok self,
    self.inner.l2.is_some()
    }
  }

  fn fill_scratch(&self, slot: usize, ver: u32, e: Option<&Entry>, now: f64) {
    let s = unsafe { &mut *self.scratch.0.get() };
    s[0] = slot as f64;
    s[1] = ver as f64;
    if let Some(e) = e {
      s[2] = if e.expires_at.is_infinite() {
        -1.0
      } else {
        (e.expires_at - now).max(0.0)
      };
      s[3] = e.val.kind() as f64;
      s[4] = if e.expires_at <= now {
        1.0
      } else if self.inner.cfg.refresh_ahead_ms > 0.0
        && e.expires_at - now < self.inner.cfg.refresh_ahead_ms
      {
        2.0
      } else {
        0.0
      };
    } else {
      s[3] = 0.0;
    }
  }

  /// `get_l2`'s index of a read in its batch's results (scratch[5]).
  fn set_read_index(&self, i: f64) {
    unsafe { (*self.scratch.0.get())[5] = i };
  }

  /// After a write: scratch for the JS front cache, `[slot, version or -1,
  /// remainingMs or -1]`.
  fn scratch_fill(&self, (slot, fill, expires_at): (usize, Option<u32>, f64)) {
    let s = unsafe { &mut *self.scratch.0.get() };
    s[0] = slot as f64;
    s[1] = fill.map_or(-1.0, |v| v as f64);
    s[2] = if expires_at.is_infinite() {
      -1.0
    } else {
      (expires_at - now_ms()).max(0.0)
    };
  }

  /// L1 read. `countMiss`: count a miss here (false when L2 is asked next).
  #[napi(
    ts_args_type = "key: string, countMiss: boolean",
    ts_return_type = "string | number | boolean | null | Buffer"
  )]
  pub fn get_sync(&self, key: StrArg, count_miss: bool) -> Result<Option<SyncVal>, Code> {
    guarded! { self,
    let inner = self.open()?;
    let l1::Read { slot, ver, entry } = inner.l1.read(key.as_str(), false);
    match entry {
      Some(e) => {
        inner.c.l1_hits.fetch_add(1, Ordering::Relaxed);
        self.fill_scratch(slot, ver, Some(&e), scratch_now(&e));
        Ok(Some(SyncVal(e)))
      }
      None => {
        if count_miss {
          inner.c.misses.fetch_add(1, Ordering::Relaxed);
        }
        self.fill_scratch(slot, ver, None, 0.0);
        Ok(None)
      }
    }
    }
  }

  /// L1 read for getOrSet: also returns a value inside its stale window
  /// (scratch state 1) and flags one due for refresh-ahead (state 2).
  #[napi(
    ts_args_type = "key: string",
    ts_return_type = "string | number | boolean | null | Buffer"
  )]
  pub fn peek(&self, key: StrArg) -> Result<Option<SyncVal>, Code> {
    guarded! { self,
    let inner = self.open()?;
    let l1::Read { slot, ver, entry } = inner.l1.read(key.as_str(), true);
    match entry {
      Some(e) => {
        inner.c.l1_hits.fetch_add(1, Ordering::Relaxed);
        self.fill_scratch(slot, ver, Some(&e), scratch_now(&e));
        Ok(Some(SyncVal(e)))
      }
      None => {
        if inner.l2.is_none() {
          // Without L2 this is the miss getOrSet answers with its factory
          // (with L2, getL2 counts the hit or miss).
          inner.c.misses.fetch_add(1, Ordering::Relaxed);
        }
        self.fill_scratch(slot, ver, None, 0.0);
        Ok(None)
      }
    }
    }
  }

  /// A front-cache hit batch: record `hits` L1 hits and touch the key in L1
  /// (so TinyLFU/LRU see that it is hot).
  #[napi(ts_args_type = "key: string, hits: number")]
  pub fn touch(&self, key: StrArg, hits: u32) -> Result<(), Code> {
    guarded! { ok self,
    self
      .inner
      .c
      .l1_hits
      .fetch_add(hits as u64, Ordering::Relaxed);
    // A sample of `hits` front hits: TinyLFU sees it as several reads (a
    // key read only from the front would otherwise look `hits` times colder
    // than it is and lose its L1 place to keys read a few times natively).
    self.inner.l1.touch(key.as_str(), TOUCH_WEIGHT);
    }
  }

  #[napi]
  pub fn add_hits(&self, hits: u32) -> Result<(), Code> {
    guarded! { ok self,
    self
      .inner
      .c
      .l1_hits
      .fetch_add(hits as u64, Ordering::Relaxed);
    }
  }

  #[napi(ts_args_type = "key: string")]
  pub fn has(&self, key: StrArg) -> Result<bool, Code> {
    guarded! { self,
    Ok(self.open()?.l1.get_live(key.as_str()).is_some())
    }
  }

  fn tags(tags: Option<Vec<String>>) -> Option<Box<[String]>> {
    tags.filter(|t| !t.is_empty()).map(|t| t.into_boxed_slice())
  }

  /// L1 now, L2 in the background (write-behind). Leaves in the scratch
  /// array `[slot, version (-1: don't front-cache), remainingMs (-1: none)]`.
  #[napi(
    ts_args_type = "key: string, kind: number, payload: string | number | Buffer, ttlMs?: number | undefined | null, tags?: Array<string> | undefined | null"
  )]
  pub fn set_sync(
    &self,
    key: StrArg,
    kind: u32,
    payload: Payload,
    ttl_ms: Option<f64>,
    tags: Option<Vec<String>>,
  ) -> Result<(), Code> {
    guarded! { self,
    let inner = self.open()?;
    let ttl_ms = call_ttl(ttl_ms)?;
    let val = to_js(val_from_js(kind, match payload {
      Payload::Str(s) => Either3::A(s),
      Payload::Num(n) => Either3::B(n),
      Payload::Bytes(b) => Either3::C(b),
    }))?;
    let fill = inner.set_sync(key.as_str(), val, ttl_ms, Self::tags(tags));
    self.scratch_fill(fill);
    Ok(())
    }
  }

  /// L1 and L2 (write-through). Resolves `true` when L2 took it (or there is
  /// no L2), `false` when L2 failed (counted in l2Errors). Leaves the same
  /// scratch as `setSync`.
  #[napi(ts_return_type = "Promise<boolean>")]
  pub fn set<'e>(
    &self,
    env: &'e Env,
    key: String,
    kind: u32,
    payload: Either3<String, f64, Buffer>,
    ttl_ms: Option<f64>,
    tags: Option<Vec<String>>,
  ) -> Result<Object<'e>, Code> {
    guarded! { self,
    self.open()?;
    let ttl_ms = call_ttl(ttl_ms)?;
    let val = to_js(val_from_js(kind, payload))?;
    let (fill, fut) = self.inner.set(key, val, ttl_ms, Self::tags(tags));
    self.scratch_fill(fill);
    runtime::promise(env, async move { Ok(fut.await) }).map_err(crate::error::from_napi)
    }
  }

  /// Many writes; one pipeline to L2.
  #[napi(ts_return_type = "Promise<boolean>")]
  pub fn set_many<'e>(
    &self,
    env: &'e Env,
    keys: Vec<String>,
    kinds: Vec<u32>,
    payloads: Vec<Either3<String, f64, Buffer>>,
    ttl_ms: Option<f64>,
    tags: Option<Vec<String>>,
  ) -> Result<Object<'e>, Code> {
    guarded! { self,
    self.open()?;
    let ttl_ms = call_ttl(ttl_ms)?;
    if keys.len() != kinds.len() || keys.len() != payloads.len() {
      return Err(HpError::invalid("setMany: keys, kinds and payloads differ in length").into());
    }
    let mut entries = Vec::with_capacity(keys.len());
    for ((key, kind), payload) in keys.into_iter().zip(kinds).zip(payloads) {
      entries.push((key, to_js(val_from_js(kind, payload))?));
    }
    let fut = self.inner.set_many(entries, ttl_ms, Self::tags(tags));
    runtime::promise(env, async move { Ok(fut.await) }).map_err(crate::error::from_napi)
    }
  }

  /// `getSync` and, on an L1 miss with L2, `getL2` in one call: what JS
  /// `get` does on a front-cache miss. `scratch[3]` (the kind) says which
  /// came back: > 0 an L1 hit (the value, with the scratch of `getSync`); 0
  /// a miss: without L2 nothing (counted as a miss), with L2 what `getL2`
  /// returns, its index in `scratch[5]`.
  #[napi(
    ts_args_type = "key: string",
    ts_return_type = "string | number | boolean | null | Buffer | Promise<Array<number | string | boolean | null | Buffer | undefined>> | undefined"
  )]
  pub fn get<'e>(
    &self,
    env: &'e Env,
    key: StrArg,
  ) -> Result<Either<SyncVal, Option<Object<'e>>>, Code> {
    guarded! { self,
    let inner = self.open()?;
    let l1::Read { slot, ver, entry } = inner.l1.read(key.as_str(), false);
    if let Some(e) = entry {
      inner.c.l1_hits.fetch_add(1, Ordering::Relaxed);
      self.fill_scratch(slot, ver, Some(&e), scratch_now(&e));
      return Ok(Either::A(SyncVal(e)));
    }
    self.fill_scratch(slot, ver, None, 0.0);
    if inner.l2.is_none() {
      inner.c.misses.fetch_add(1, Ordering::Relaxed);
      return Ok(Either::B(None));
    }
    self.l2_read(env, key.as_str().to_string()).map(Either::B)
    }
  }

  /// L2 read of one key that missed L1 (fills L1 on a hit). Its results
  /// are `[kind, payload]` at index `2 * i` of what the returned Promise
  /// resolves to, where `i` is left in the scratch array (`scratch[5]`):
  /// `-1` (read as `0`) when the read has a Promise of its own; `0` when it
  /// opened a new batch, whose Promise it returns; `i > 0` when it joined
  /// the batch of the last read that returned one (nothing returned). So
  /// the reads of one tick cost one Promise, settled once.
  #[napi(
    ts_args_type = "key: string",
    ts_return_type = "Promise<Array<number | string | boolean | null | Buffer | undefined>> | undefined"
  )]
  pub fn get_l2<'e>(&self, env: &'e Env, key: StrArg) -> Result<Option<Object<'e>>, Code> {
    guarded! { self,
    self.open()?;
    self.l2_read(env, key.as_str().to_string())
    }
  }

  /// L1 for each key, then one MGET for all misses.
  #[napi(ts_return_type = "Promise<Array<number | string | boolean | null | Buffer | undefined>>")]
  pub fn get_many<'e>(&self, env: &'e Env, keys: Vec<String>) -> Result<Object<'e>, Code> {
    guarded! { self,
    self.open()?;
    let fut = self.inner.get_many(keys);
    runtime::promise(env, async move { Ok(Out::Vals(fut.await)) }).map_err(crate::error::from_napi)
    }
  }

  #[napi(ts_return_type = "Promise<number>")]
  pub fn delete_many<'e>(&self, env: &'e Env, keys: Vec<String>) -> Result<Object<'e>, Code> {
    guarded! { self,
    self.open()?;
    let fut = self.inner.delete(keys);
    runtime::promise(env, async move { Ok(fut.await) }).map_err(crate::error::from_napi)
    }
  }

  #[napi(ts_return_type = "Promise<number>")]
  pub fn delete_pattern<'e>(&self, env: &'e Env, glob: String) -> Result<Object<'e>, Code> {
    guarded! { self,
    self.open()?;
    let inner = self.inner.clone();
    runtime::promise(env, async move { inner.delete_pattern(glob).await })
      .map_err(crate::error::from_napi)
    }
  }

  #[napi(ts_return_type = "Promise<number>")]
  pub fn delete_tag<'e>(&self, env: &'e Env, tag: String) -> Result<Object<'e>, Code> {
    guarded! { self,
    self.open()?;
    let inner = self.inner.clone();
    runtime::promise(env, async move { inner.delete_tag(tag).await })
      .map_err(crate::error::from_napi)
    }
  }

  /// Delayed double delete: now, and again after `delayMs`.
  #[napi]
  pub fn delete_later(&self, key: String, delay_ms: f64) -> Result<(), Code> {
    guarded! { self,
    self.open()?;
    let delay = to_js(validate::duration_ms("delayMs", delay_ms, validate::Span::Timer))?;
    self.inner.delete_later(key, delay, self.later.subscribe());
    Ok(())
    }
  }

  /// Remaining TTL: L1 if it has the key, else L2. Infinity for no expiry;
  /// undefined (as -2 here) when absent.
  #[napi(ts_return_type = "Promise<number>")]
  pub fn remaining_ttl_ms<'e>(&self, env: &'e Env, key: String) -> Result<Object<'e>, Code> {
    guarded! { self,
    self.open()?;
    let fut = self.inner.remaining_ttl_ms(key);
    runtime::promise(env, async move { Ok(fut.await.unwrap_or(-2.0)) })
      .map_err(crate::error::from_napi)
    }
  }

  #[napi(ts_return_type = "Promise<void>")]
  pub fn clear<'e>(&self, env: &'e Env) -> Result<Object<'e>, Code> {
    guarded! { self,
    self.open()?;
    let fut = self.inner.clear();
    runtime::promise(env, fut).map_err(crate::error::from_napi)
    }
  }

  // ---------------------------------------------------------- single flight

  /// A token (> 0): the caller leads the flight for `key` (runs the factory
  /// and must end it with that token); 0: a live caller leads it.
  #[napi]
  pub fn flight_lead(&self, key: String) -> Result<f64, Code> {
    guarded! { self,
    Ok(
      self
        .open()?
        .flight_lead(key)
        .map(|t| t as f64)
        .unwrap_or(0.0),
    )
    }
  }

  /// Wait for the flight on `key` led elsewhere, at most `timeoutMs` (< 0:
  /// no bound). Resolves to the value, to a JSON error string, or to `[]`
  /// when the flight is over without a value (look again, or lead).
  #[napi(
    ts_return_type = "Promise<string | Array<number | string | boolean | null | Buffer | undefined>>"
  )]
  pub fn flight_wait<'e>(
    &self,
    env: &'e Env,
    key: String,
    timeout_ms: f64,
  ) -> Result<Object<'e>, Code> {
    guarded! { self,
    self.open()?;
    let timeout = (timeout_ms >= 0.0 && timeout_ms.is_finite())
      .then(|| Duration::from_secs_f64(timeout_ms / 1000.0));
    let fut = self.inner.flight_wait(key, timeout);
    runtime::promise(env, async move {
      Ok(match fut.await {
        FlightOutcome::Value(v) => Out::Vals(vec![Some(v)]),
        FlightOutcome::Failed(e) => Out::Err(e),
        FlightOutcome::Gone => Out::Vals(vec![]),
      })
    })
    .map_err(crate::error::from_napi)
    }
  }

  #[napi]
  pub fn flight_end(
    &self,
    key: String,
    token: f64,
    kind: u32,
    payload: Either3<String, f64, Buffer>,
  ) -> Result<(), Code> {
    guarded! { self,
    let val = to_js(val_from_js(kind, payload))?;
    self.inner.flight_end(&key, token as u64, val);
    Ok(())
    }
  }

  #[napi]
  pub fn flight_fail(
    &self,
    key: String,
    token: f64,
    code: String,
    message: String,
    name: String,
  ) -> Result<(), Code> {
    guarded! { ok self,
    self
      .inner
      .flight_fail(&key, token as u64, &code, &message, &name);
    }
  }

  /// singleFlight 'redis': take the Redis lease on `key` (true: run the
  /// factory here; false: another process holds it).
  #[napi(ts_return_type = "Promise<boolean>")]
  pub fn lease_acquire<'e>(&self, env: &'e Env, key: String) -> Result<Object<'e>, Code> {
    guarded! { self,
    self.open()?;
    let inner = self.inner.clone();
    runtime::promise(env, async move { Ok(inner.lease_acquire(key).await) })
      .map_err(crate::error::from_napi)
    }
  }

  #[napi(ts_return_type = "Promise<void>")]
  pub fn lease_release<'e>(&self, env: &'e Env, key: String) -> Result<Object<'e>, Code> {
    guarded! { self,
    let inner = self.inner.clone();
    runtime::promise(env, async move {
      inner.lease_release(key).await;
      Ok(())
    })
    .map_err(crate::error::from_napi)
    }
  }

  /// Wait (at most `pollMs`) for another process's value of `key`, then
  /// read L2: `[kind, payload]`, or `[]` when there is none yet.
  #[napi(ts_return_type = "Promise<Array<number | string | boolean | null | Buffer | undefined>>")]
  pub fn lease_wait<'e>(
    &self,
    env: &'e Env,
    key: String,
    poll_ms: f64,
  ) -> Result<Object<'e>, Code> {
    guarded! { self,
    self.open()?;
    let inner = self.inner.clone();
    let poll = Duration::from_secs_f64(poll_ms.clamp(1.0, 60_000.0) / 1000.0);
    runtime::promise(env, async move {
      Ok(match inner.lease_wait(key, poll).await {
        Some(v) => Out::Vals(vec![Some(v)]),
        None => Out::Vals(vec![]),
      })
    })
    .map_err(crate::error::from_napi)
    }
  }

  /// The leader gave up (its wait timed out or was aborted): the key is free.
  #[napi]
  pub fn flight_abandon(&self, key: String, token: f64) -> Result<(), Code> {
    guarded! { ok self,
    self.inner.flight_abandon(&key, token as u64);
    }
  }

  #[napi]
  pub fn stats(&self) -> Result<CacheStats, Code> {
    guarded! { always ok self,
    let s = self.inner.stats();
    CacheStats {
      l1_hits: s.l1_hits,
      l2_hits: s.l2_hits,
      misses: s.misses,
      sets: s.sets,
      deletes: s.deletes,
      evictions: s.evictions,
      l1_entries: s.l1_entries,
      l1_bytes: s.l1_bytes,
      l2_errors: s.l2_errors,
      hit_ratio: s.hit_ratio,
      pending_writes: s.pending_writes,
      dropped_writes: s.dropped_writes,
    }
    }
  }

  /// Close this handle. The shared state (write-behind queue, subscription)
  /// shuts down with its last handle, after pending writes reach Redis.
  #[napi(ts_return_type = "Promise<void>")]
  pub fn close<'e>(&self, env: &'e Env) -> Result<Object<'e>, Code> {
    guarded! { always self,
    let first = !self.closed.swap(true, Ordering::SeqCst);
    let _ = self.later.send(true);
    let last = first
      && match &self.name {
        Some(n) => runtime::detach(CLASS, n),
        None => true,
      };
    let inner = self.inner.clone();
    runtime::promise(env, async move {
      if last {
        inner.shutdown().await;
      }
      Ok(())
    })
    .map_err(crate::error::from_napi)
    }
  }

  #[napi]
  pub fn is_closed(&self) -> Result<bool, Code> {
    guarded! { always ok self,
    self.closed.load(Ordering::Relaxed)
    }
  }
}

/// Test hooks (lib/testing.js; not exported from the package).
#[napi]
impl NativeCache {
  /// Pause (`true`) or stop pausing every L1 fill between its L2 read and
  /// the fill.
  #[napi]
  pub fn test_pause_fills(&self, on: bool) -> Result<(), Code> {
    guarded! { ok self,
    self.inner.fill_pause.on.store(on, Ordering::Relaxed);
    }
  }

  /// Resolves when a fill reached the pause.
  #[napi(ts_return_type = "Promise<void>")]
  pub fn test_fill_reached<'e>(&self, env: &'e Env) -> Result<Object<'e>, Code> {
    guarded! { self,
    let inner = self.inner.clone();
    runtime::promise(env, async move {
      inner.fill_pause.reached.notified().await;
      Ok(())
    })
    .map_err(crate::error::from_napi)
    }
  }

  /// Pause (`true`) or stop pausing the write path before it sends each
  /// batch of this instance's L2 writes and deletes.
  #[napi]
  pub fn test_pause_writes(&self, on: bool) -> Result<(), Code> {
    guarded! { ok self,
    self.inner.write_pause.on.store(on, Ordering::Relaxed);
    }
  }

  /// Resolves when the write path reached its pause with a batch.
  #[napi(ts_return_type = "Promise<void>")]
  pub fn test_write_reached<'e>(&self, env: &'e Env) -> Result<Object<'e>, Code> {
    guarded! { self,
    let inner = self.inner.clone();
    runtime::promise(env, async move {
      inner.write_pause.reached.notified().await;
      Ok(())
    })
    .map_err(crate::error::from_napi)
    }
  }

  /// Let the paused write path send one batch.
  #[napi]
  pub fn test_release_write(&self) -> Result<(), Code> {
    guarded! { ok self,
    self.inner.write_pause.release.notify_one();
    }
  }

  /// Make the subscription drop every message until it is resubscribed.
  #[napi]
  pub fn test_deafen(&self) -> Result<(), Code> {
    guarded! { ok self,
    self.inner.deaf.store(true, Ordering::Relaxed);
    }
  }

  /// Let one paused fill go on.
  #[napi]
  pub fn test_release_fill(&self) -> Result<(), Code> {
    guarded! { ok self,
    self.inner.fill_pause.release.notify_one();
    }
  }
}

/// Test hook: how many open handles the named cache has (0: none).
#[napi]
pub fn test_cache_handles(name: String) -> u32 {
  runtime::handles(CLASS, &name) as u32
}

impl Drop for NativeCache {
  /// A handle dropped without `close()` (garbage collected, or its worker
  /// thread exited) still lets go of the shared state: the last one flushes
  /// the write path and ends the subscription.
  fn drop(&mut self) {
    let _ = self.later.send(true);
    if self.closed.swap(true, Ordering::SeqCst) {
      return;
    }
    let last = match &self.name {
      Some(n) => runtime::detach(CLASS, n),
      None => true,
    };
    if last {
      let inner = self.inner.clone();
      runtime::spawn(async move { inner.shutdown().await });
    }
  }
}

impl NativeCache {
  /// The L2 read of `getL2` (see there).
  fn l2_read<'e>(&self, env: &'e Env, key: String) -> Result<Option<Object<'e>>, Code> {
    let inner = self.inner.clone();
    let raw = env.raw();
    if let Some((_, fast, ver)) = inner.fast_l2(raw, &key) {
      // This thread's connection: the L2 reads of one tick go out together
      // at its end, as one MGET (see `GetBatch`), and are answered on this
      // thread (no thread hop either way).
      let mut b = self.gets.0.borrow_mut();
      let mut promise = None;
      if b.items.is_empty() {
        let mut deferred = std::ptr::null_mut();
        let mut p = std::ptr::null_mut();
        check_status!(unsafe { sys::napi_create_promise(raw, &mut deferred, &mut p) })
          .map_err(crate::error::from_napi)?;
        b.deferred = deferred;
        promise =
          Some(unsafe { Object::from_napi_value(raw, p) }.map_err(crate::error::from_napi)?);
      }
      self.set_read_index(b.items.len() as f64);
      // `ver`: the slot version before the request, taken with the check
      // for queued writes; a fill is dropped if it moved.
      b.items.push(Pending { key, ver });
      let n = b.items.len();
      if n >= MGET_MAX || (n >= EAGER_GETS && n as f64 * b.value_bytes >= EAGER_BYTES) {
        // Full, or enough work for Redis: it leaves now; later reads start
        // a new batch.
        let items = std::mem::take(&mut b.items);
        let deferred = std::mem::replace(&mut b.deferred, std::ptr::null_mut());
        drop(b);
        send_gets(raw, &inner, &self.gets.0, items, deferred, &fast);
        fast.write_now();
      } else if !b.scheduled {
        b.scheduled = true;
        let gets = self.gets.0.clone();
        let core = fast.core.clone();
        core.defer(Box::new(move || flush_gets(raw, &inner, &gets, &fast)));
      }
      return Ok(promise);
    }
    self.set_read_index(-1.0);
    runtime::promise(
      env,
      async move { Ok(Out::Vals(vec![inner.get_l2(&key).await])) },
    )
    .map(Some)
    .map_err(crate::error::from_napi)
  }
}
