//! CacheManager: L1 in process (moka), L2 on Redis, coherence over pub/sub,
//! process-wide single flight. This is the native engine; `lib/cache.js` is
//! the JS-facing class (per-thread front cache, value encoding, getOrSet).

pub mod codec;
pub mod invalidation;
pub mod l1;
pub mod l2;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use napi::bindgen_prelude::*;
use napi::sys;
use napi_derive::napi;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, watch};

use crate::error::{check_non_negative, check_positive_int, Code, HpError, HpResult};
use crate::redis::{Redis, RedisConfig, RedisOptions};
use crate::runtime::{self, now_ms};
use codec::*;
use invalidation::Message;
use l1::{Entry, L1Config, Versions, L1};
use l2::{Write, L2};

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
  /// Entries in each thread's front cache (hot reads of strings, numbers,
  /// booleans and null that never cross into native code; validated against
  /// version counters on every read). `0` turns it off. Default: `16_384`.
  pub front_cache_entries: Option<f64>,
  /// Most `setSync` writes waiting for Redis; beyond it a write-behind is
  /// dropped and counted in `l2Errors`. Default: `100_000`.
  pub max_pending_writes: Option<f64>,
}

#[derive(Clone, Debug, PartialEq)]
struct CacheConfig {
  l1: L1Config,
  ttl_ms: Option<f64>,
  l1_ttl_ms: Option<f64>,
  stale_ms: f64,
  refresh_ahead_ms: f64,
  redis: Option<RedisConfig>,
  pubsub: bool,
  front: u64,
  max_pending: u64,
}

fn opt_ms(name: &str, v: Option<f64>) -> HpResult<Option<f64>> {
  v.map(|x| {
    let x = check_non_negative(name, x)?;
    if x == 0.0 {
      return Err(HpError::invalid(format!("{name} must be > 0, got 0")));
    }
    Ok(x)
  })
  .transpose()
}

impl CacheConfig {
  fn from_options(o: &CacheOptions) -> HpResult<Self> {
    let max_entries = check_positive_int("maxEntries", o.max_entries.unwrap_or(10_000.0))?;
    let max_bytes = o
      .max_bytes
      .map(|b| check_positive_int("maxBytes", b))
      .transpose()?;
    let idle = opt_ms("idleMs", o.idle_ms)?.map(|ms| Duration::from_secs_f64(ms / 1000.0));
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
    let front = match o.front_cache_entries {
      None => 16_384u64.min(max_entries),
      Some(v) => check_non_negative("frontCacheEntries", v)? as u64,
    };
    Ok(CacheConfig {
      l1: L1Config {
        max_entries,
        max_bytes,
        idle,
        lru,
      },
      ttl_ms: opt_ms("ttlMs", o.ttl_ms)?,
      l1_ttl_ms: opt_ms("l1TtlMs", o.l1_ttl_ms)?,
      stale_ms: check_non_negative("staleMs", o.stale_ms.unwrap_or(0.0))?,
      refresh_ahead_ms: check_non_negative("refreshAheadMs", o.refresh_ahead_ms.unwrap_or(0.0))?,
      redis,
      pubsub,
      front,
      max_pending: check_positive_int(
        "maxPendingWrites",
        o.max_pending_writes.unwrap_or(100_000.0),
      )?,
    })
  }
}

#[derive(Default)]
struct Counters {
  l1_hits: AtomicU64,
  l2_hits: AtomicU64,
  misses: AtomicU64,
  sets: AtomicU64,
  deletes: AtomicU64,
  l2_errors: AtomicU64,
}

enum WbOp {
  Set(Write),
  Flush(oneshot::Sender<()>),
}

type FlightResult = std::result::Result<Val, String>;

/// The shared state of one cache (one per name, or per unnamed instance).
pub struct CacheInner {
  cfg: CacheConfig,
  l1: L1,
  l2: Option<L2>,
  id: String,
  c: Counters,
  max_bytes_scale: Option<(u64, u64)>,
  flights: Mutex<HashMap<String, watch::Sender<Option<FlightResult>>>>,
  wb: Mutex<Option<mpsc::Sender<WbOp>>>,
  closed: AtomicBool,
}

impl CacheInner {
  fn new(cfg: CacheConfig) -> HpResult<Arc<CacheInner>> {
    let l1 = L1::new(&cfg.l1);
    let l2 = match &cfg.redis {
      Some(rc) => Some(L2 {
        redis: Redis::new(rc.clone())?,
      }),
      None => None,
    };
    let max_bytes_scale = cfg.l1.max_bytes.map(|b| (b, cfg.l1.max_entries));
    let inner = Arc::new(CacheInner {
      id: format!("{:016x}", rand::random::<u64>()),
      l1,
      l2,
      c: Counters::default(),
      max_bytes_scale,
      flights: Mutex::new(HashMap::new()),
      wb: Mutex::new(None),
      closed: AtomicBool::new(false),
      cfg,
    });
    if inner.l2.is_some() {
      inner.start_write_behind();
      if inner.cfg.pubsub {
        inner.start_subscriber();
      }
    }
    Ok(inner)
  }

  fn start_write_behind(self: &Arc<Self>) {
    let (tx, mut rx) = mpsc::channel::<WbOp>(self.cfg.max_pending as usize);
    *self.wb.lock() = Some(tx);
    let weak = Arc::downgrade(self);
    runtime::spawn(async move {
      let mut batch: Vec<Write> = Vec::new();
      let mut flushes: Vec<oneshot::Sender<()>> = Vec::new();
      while let Some(op) = rx.recv().await {
        let mut next = Some(op);
        while let Some(op) = next.take() {
          match op {
            WbOp::Set(w) => batch.push(w),
            WbOp::Flush(f) => flushes.push(f),
          }
          if batch.len() < 256 {
            next = rx.try_recv().ok();
          }
        }
        if let Some(inner) = weak.upgrade() {
          if !batch.is_empty() {
            inner.write_l2(&batch).await;
            batch.clear();
          }
        }
        for f in flushes.drain(..) {
          let _ = f.send(());
        }
      }
    });
  }

  fn start_subscriber(self: &Arc<Self>) {
    let l2 = self.l2.as_ref().expect("l2");
    let (w1, w2, w3) = (
      Arc::downgrade(self),
      Arc::downgrade(self),
      Arc::downgrade(self),
    );
    l2.redis.subscribe(
      l2.channel(),
      move |payload| {
        if let (Some(inner), Some(m)) = (w1.upgrade(), Message::decode(payload)) {
          inner.apply_message(m);
        }
      },
      move |reconnected| {
        if reconnected {
          if let Some(inner) = w2.upgrade() {
            // Messages may have been missed while disconnected.
            inner.l1.clear();
          }
        }
      },
      move || {
        w3.upgrade()
          .map(|i| !i.closed.load(Ordering::Relaxed))
          .unwrap_or(false)
      },
    );
  }

  fn apply_message(&self, m: Message) {
    if m.s == self.id {
      return;
    }
    if m.all {
      self.l1.clear();
    }
    for k in &m.k {
      self.l1.remove(k);
    }
    if let Some(p) = &m.p {
      for k in self
        .l1
        .keys_matching(|k, _| l1::glob_match(p.as_bytes(), k.as_bytes()))
      {
        self.l1.remove(&k);
      }
    }
  }

  async fn publish(&self, m: Message) {
    if let Some(l2) = &self.l2 {
      if self.cfg.pubsub && l2.redis.publish(&l2.channel(), &m.encode()).await.is_err() {
        self.c.l2_errors.fetch_add(1, Ordering::Relaxed);
      }
    }
  }

  async fn write_l2(&self, writes: &[Write]) -> bool {
    let Some(l2) = &self.l2 else { return true };
    match l2.set_many(writes).await {
      Ok(()) => {
        self
          .publish(Message::keys(
            &self.id,
            writes.iter().map(|w| w.key.clone()).collect(),
          ))
          .await;
        true
      }
      Err(_) => {
        self.c.l2_errors.fetch_add(1, Ordering::Relaxed);
        false
      }
    }
  }

  fn weight(&self, key: &str, val: &Val) -> u32 {
    let bytes = (key.len() + val.weight()) as u64;
    match self.max_bytes_scale {
      None => 1,
      Some((max_bytes, max_entries)) => {
        let s = max_entries.saturating_mul(1024) as u128;
        let w = (bytes as u128 * s).div_ceil(max_bytes as u128);
        w.clamp(1024, u32::MAX as u128) as u32
      }
    }
  }

  /// Put a value in L1 with `ttl_ms` (None: the default TTL).
  fn put_l1(&self, key: &str, val: Val, ttl_ms: Option<f64>, tags: Option<Box<[String]>>) {
    let ttl = ttl_ms.or(self.cfg.ttl_ms);
    let now = now_ms();
    let l1_ttl = match (ttl, self.cfg.l1_ttl_ms) {
      (Some(t), Some(c)) => Some(t.min(c)),
      (t, c) => t.or(c),
    };
    let capped = matches!((ttl, self.cfg.l1_ttl_ms), (Some(t), Some(c)) if c < t)
      || (ttl.is_none() && self.cfg.l1_ttl_ms.is_some());
    let stale = if capped { 0.0 } else { self.cfg.stale_ms };
    let expires_at = l1_ttl.map(|t| now + t).unwrap_or(f64::INFINITY);
    let stale_until = expires_at + stale;
    let keep_for = l1_ttl.map(|t| Duration::from_secs_f64((t + stale) / 1000.0));
    let weight = self.weight(key, &val);
    self.l1.insert(
      key.to_string(),
      Entry {
        val,
        expires_at,
        stale_until,
        keep_for,
        tags,
        weight,
      },
    );
  }

  fn l2_ttl(&self, ttl_ms: Option<f64>) -> Option<u64> {
    ttl_ms.or(self.cfg.ttl_ms).map(|t| t.ceil() as u64)
  }

  async fn get_l2(&self, key: &str) -> Option<Val> {
    let l2 = self.l2.as_ref()?;
    match l2.get(key).await {
      Ok(Some((v, pttl))) => {
        self.c.l2_hits.fetch_add(1, Ordering::Relaxed);
        self.put_l1(key, v.clone(), pttl.map(|t| t as f64), None);
        Some(v)
      }
      Ok(None) => {
        self.c.misses.fetch_add(1, Ordering::Relaxed);
        None
      }
      Err(_) => {
        self.c.l2_errors.fetch_add(1, Ordering::Relaxed);
        self.c.misses.fetch_add(1, Ordering::Relaxed);
        None
      }
    }
  }

  /// Delete from L1 and L2; how many keys existed on either level.
  async fn delete_keys(&self, keys: Vec<String>) -> u32 {
    let mut existed: Vec<bool> = keys.iter().map(|k| self.l1.remove(k)).collect();
    if let Some(l2) = &self.l2 {
      match l2.del_many(&keys).await {
        Ok(in_l2) => {
          for (e, x) in existed.iter_mut().zip(in_l2) {
            *e |= x;
          }
          self.publish(Message::keys(&self.id, keys)).await;
        }
        Err(_) => {
          self.c.l2_errors.fetch_add(1, Ordering::Relaxed);
        }
      }
    }
    let n = existed.iter().filter(|x| **x).count() as u32;
    self.c.deletes.fetch_add(n as u64, Ordering::Relaxed);
    n
  }

  async fn flush_write_behind(&self) {
    let tx = self.wb.lock().clone();
    if let Some(tx) = tx {
      let (ftx, frx) = oneshot::channel();
      if tx.send(WbOp::Flush(ftx)).await.is_ok() {
        let _ = frx.await;
      }
    }
  }

  async fn shutdown(&self) {
    self.flush_write_behind().await;
    self.closed.store(true, Ordering::Relaxed);
    *self.wb.lock() = None;
    // Waiters of flights that will never end (their leader is gone).
    for (_, tx) in self.flights.lock().drain() {
      let _ = tx.send(Some(Err(flight_error(
        "ERR_CLOSED",
        "CacheManager is closed",
        "Error",
      ))));
    }
  }
}

fn flight_error(code: &str, message: &str, name: &str) -> String {
  serde_json::json!({ "code": code, "message": message, "name": name }).to_string()
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

unsafe fn val_to_js(env: sys::napi_env, v: &Val) -> Result<sys::napi_value> {
  unsafe {
    match v {
      Val::Str(s) | Val::Json(s) => String::to_napi_value(env, s.clone()),
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
        Out::Vals(vs) => {
          let mut arr = std::ptr::null_mut();
          check_status!(sys::napi_create_array_with_length(
            env,
            vs.len() * 2,
            &mut arr
          ))?;
          for (i, v) in vs.iter().enumerate() {
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
    }
  }
}

/// A value returned synchronously; its kind goes to the scratch array.
pub struct SyncVal(Val);

impl ToNapiValue for SyncVal {
  unsafe fn to_napi_value(env: sys::napi_env, val: Self) -> Result<sys::napi_value> {
    unsafe { val_to_js(env, &val.0) }
  }
}

/// A per-handle scratch array the JS layer reads after a sync read:
/// `[slot, version, remainingMs (-1 = no expiry), kind, state]` where state is
/// 0 fresh, 1 stale (past expiry, inside staleMs), 2 due for refresh-ahead.
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
  /// Entries in L1 now (moka's count: it may lag a write by a moment).
  pub l1_entries: f64,
  /// Weighed size of L1 now (key bytes + value bytes), in bytes.
  pub l1_bytes: f64,
  /// Redis (L2) operations that failed or timed out; none of them threw.
  pub l2_errors: f64,
  /// `(l1Hits + l2Hits) / (l1Hits + l2Hits + misses)`; `0` before any read.
  pub hit_ratio: f64,
  /// Writes from `setSync` not yet on Redis.
  pub pending_writes: f64,
}

/// The native engine behind `CacheManager` (see lib/cache.js).
#[napi(js_name = "NativeCache")]
pub struct NativeCache {
  inner: Arc<CacheInner>,
  name: Option<String>,
  closed: AtomicBool,
  scratch: Arc<Scratch>,
}

const CLASS: &str = "CacheManager";

fn to_js<T>(r: HpResult<T>) -> Result<T, Code> {
  r.map_err(Into::into)
}

#[napi]
impl NativeCache {
  #[napi(constructor)]
  pub fn new(options: Option<CacheOptions>) -> Result<Self, Code> {
    let o = options.unwrap_or_default();
    let cfg = to_js(CacheConfig::from_options(&o))?;
    let inner = match &o.name {
      Some(name) => to_js(runtime::attach(CLASS, name, format!("{cfg:?}"), || {
        CacheInner::new(cfg.clone())
      }))?,
      None => to_js(CacheInner::new(cfg))?,
    };
    Ok(NativeCache {
      inner,
      name: o.name,
      closed: AtomicBool::new(false),
      scratch: Arc::new(Scratch(std::cell::UnsafeCell::new([0.0; 8]))),
    })
  }

  fn open(&self) -> Result<&CacheInner, Code> {
    if self.closed.load(Ordering::Relaxed) {
      return Err(HpError::closed(CLASS).into());
    }
    Ok(&self.inner)
  }

  /// The version table (Uint32 per slot), shared with every thread.
  #[napi]
  pub fn versions(&self, env: Env) -> Result<ArrayBuffer<'_>> {
    let v: Arc<Versions> = self.inner.l1.versions();
    let ptr = v.slots.as_ptr() as *mut u8;
    let len = v.slots.len() * 4;
    unsafe { ArrayBuffer::from_external(&env, ptr, len, v, |_, v| drop(v)) }
  }

  /// The scratch array (Float64 x 8) this handle writes read metadata into.
  #[napi]
  pub fn scratch(&self, env: Env) -> Result<ArrayBuffer<'_>> {
    let s = self.scratch.clone();
    let ptr = s.0.get() as *mut u8;
    unsafe { ArrayBuffer::from_external(&env, ptr, 64, s, |_, s| drop(s)) }
  }

  #[napi]
  pub fn front_capacity(&self) -> f64 {
    if self.inner.cfg.l1.idle.is_some() {
      // Front hits would not refresh time-to-idle: go native every time.
      return 0.0;
    }
    self.inner.cfg.front as f64
  }

  #[napi]
  pub fn has_l2(&self) -> bool {
    self.inner.l2.is_some()
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

  /// L1 read. `countMiss`: count a miss here (false when L2 is asked next).
  #[napi(ts_return_type = "string | number | boolean | null | Buffer")]
  pub fn get_sync(&self, key: String, count_miss: bool) -> Result<Option<SyncVal>, Code> {
    let inner = self.open()?;
    let slot = inner.l1.slot(&key);
    let ver = inner.l1.versions().get(slot);
    let now = now_ms();
    match inner.l1.get_live(&key) {
      Some(e) => {
        inner.c.l1_hits.fetch_add(1, Ordering::Relaxed);
        self.fill_scratch(slot, ver, Some(&e), now);
        Ok(Some(SyncVal(e.val.clone())))
      }
      None => {
        if count_miss {
          inner.c.misses.fetch_add(1, Ordering::Relaxed);
        }
        self.fill_scratch(slot, ver, None, now);
        Ok(None)
      }
    }
  }

  /// L1 read for getOrSet: also returns a value inside its stale window
  /// (scratch state 1) and flags one due for refresh-ahead (state 2).
  #[napi(ts_return_type = "string | number | boolean | null | Buffer")]
  pub fn peek(&self, key: String) -> Result<Option<SyncVal>, Code> {
    let inner = self.open()?;
    let slot = inner.l1.slot(&key);
    let ver = inner.l1.versions().get(slot);
    let now = now_ms();
    match inner.l1.get_any(&key) {
      Some(e) => {
        inner.c.l1_hits.fetch_add(1, Ordering::Relaxed);
        self.fill_scratch(slot, ver, Some(&e), now);
        Ok(Some(SyncVal(e.val.clone())))
      }
      None => {
        if inner.l2.is_none() {
          // Without L2 this is the miss getOrSet answers with its factory
          // (with L2, getL2 counts the hit or miss).
          inner.c.misses.fetch_add(1, Ordering::Relaxed);
        }
        self.fill_scratch(slot, ver, None, now);
        Ok(None)
      }
    }
  }

  /// A front-cache hit batch: record `hits` L1 hits and touch the key in L1
  /// (so TinyLFU/LRU see that it is hot).
  #[napi]
  pub fn touch(&self, key: String, hits: u32) {
    self
      .inner
      .c
      .l1_hits
      .fetch_add(hits as u64, Ordering::Relaxed);
    let _ = self.inner.l1.cache.get(&key);
  }

  #[napi]
  pub fn add_hits(&self, hits: u32) {
    self
      .inner
      .c
      .l1_hits
      .fetch_add(hits as u64, Ordering::Relaxed);
  }

  #[napi]
  pub fn has(&self, key: String) -> Result<bool, Code> {
    Ok(self.open()?.l1.get_live(&key).is_some())
  }

  fn tags(tags: Option<Vec<String>>) -> Option<Box<[String]>> {
    tags.filter(|t| !t.is_empty()).map(|t| t.into_boxed_slice())
  }

  /// L1 now, L2 in the background (write-behind).
  #[napi]
  pub fn set_sync(
    &self,
    key: String,
    kind: u32,
    payload: Either3<String, f64, Buffer>,
    ttl_ms: Option<f64>,
    tags: Option<Vec<String>>,
  ) -> Result<(), Code> {
    let inner = self.open()?;
    let val = to_js(val_from_js(kind, payload))?;
    let tags = Self::tags(tags);
    inner.c.sets.fetch_add(1, Ordering::Relaxed);
    if let Some(tx) = inner.wb.lock().as_ref() {
      let w = Write {
        key: key.clone(),
        val: val.clone(),
        ttl_ms: inner.l2_ttl(ttl_ms),
        tags: tags.clone(),
      };
      if tx.try_send(WbOp::Set(w)).is_err() {
        inner.c.l2_errors.fetch_add(1, Ordering::Relaxed);
      }
    }
    inner.put_l1(&key, val, ttl_ms, tags);
    Ok(())
  }

  /// L1 and L2 (write-through). Resolves `true` when L2 took it (or there is
  /// no L2), `false` when L2 failed (counted in l2Errors).
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
    self.open()?;
    let val = to_js(val_from_js(kind, payload))?;
    let tags = Self::tags(tags);
    let inner = self.inner.clone();
    inner.c.sets.fetch_add(1, Ordering::Relaxed);
    inner.put_l1(&key, val.clone(), ttl_ms, tags.clone());
    let ttl = inner.l2_ttl(ttl_ms);
    runtime::promise(env, async move {
      Ok(
        inner
          .write_l2(&[Write {
            key,
            val,
            ttl_ms: ttl,
            tags,
          }])
          .await,
      )
    })
    .map_err(crate::error::from_napi)
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
    self.open()?;
    if keys.len() != kinds.len() || keys.len() != payloads.len() {
      return Err(HpError::invalid("setMany: keys, kinds and payloads differ in length").into());
    }
    let tags = Self::tags(tags);
    let inner = self.inner.clone();
    let ttl = inner.l2_ttl(ttl_ms);
    let mut writes = Vec::with_capacity(keys.len());
    for ((key, kind), payload) in keys.into_iter().zip(kinds).zip(payloads) {
      let val = to_js(val_from_js(kind, payload))?;
      writes.push(Write {
        key,
        val,
        ttl_ms: ttl,
        tags: tags.clone(),
      });
    }
    for w in &writes {
      inner.put_l1(&w.key, w.val.clone(), ttl_ms, tags.clone());
    }
    inner
      .c
      .sets
      .fetch_add(writes.len() as u64, Ordering::Relaxed);
    runtime::promise(env, async move { Ok(inner.write_l2(&writes).await) })
      .map_err(crate::error::from_napi)
  }

  /// L2 read of one key that missed L1 (fills L1 on a hit).
  #[napi(ts_return_type = "Promise<Array<number | string | boolean | null | Buffer | undefined>>")]
  pub fn get_l2<'e>(&self, env: &'e Env, key: String) -> Result<Object<'e>, Code> {
    self.open()?;
    let inner = self.inner.clone();
    runtime::promise(
      env,
      async move { Ok(Out::Vals(vec![inner.get_l2(&key).await])) },
    )
    .map_err(crate::error::from_napi)
  }

  /// L1 for each key, then one MGET for all misses.
  #[napi(ts_return_type = "Promise<Array<number | string | boolean | null | Buffer | undefined>>")]
  pub fn get_many<'e>(&self, env: &'e Env, keys: Vec<String>) -> Result<Object<'e>, Code> {
    let inner = self.open()?;
    let mut out: Vec<Option<Val>> = Vec::with_capacity(keys.len());
    let mut missing: Vec<(usize, String)> = Vec::new();
    for (i, k) in keys.into_iter().enumerate() {
      match inner.l1.get_live(&k) {
        Some(e) => {
          inner.c.l1_hits.fetch_add(1, Ordering::Relaxed);
          out.push(Some(e.val.clone()));
        }
        None => {
          out.push(None);
          missing.push((i, k));
        }
      }
    }
    let inner = self.inner.clone();
    runtime::promise(env, async move {
      if missing.is_empty() {
        return Ok(Out::Vals(out));
      }
      match &inner.l2 {
        None => {
          inner
            .c
            .misses
            .fetch_add(missing.len() as u64, Ordering::Relaxed);
        }
        Some(l2) => {
          let keys: Vec<String> = missing.iter().map(|(_, k)| k.clone()).collect();
          match l2.get_many(&keys).await {
            Ok(vals) => {
              for ((i, k), v) in missing.into_iter().zip(vals) {
                match v {
                  Some(v) => {
                    inner.c.l2_hits.fetch_add(1, Ordering::Relaxed);
                    inner.put_l1(&k, v.clone(), None, None);
                    out[i] = Some(v);
                  }
                  None => {
                    inner.c.misses.fetch_add(1, Ordering::Relaxed);
                  }
                }
              }
            }
            Err(_) => {
              inner.c.l2_errors.fetch_add(1, Ordering::Relaxed);
              inner
                .c
                .misses
                .fetch_add(missing.len() as u64, Ordering::Relaxed);
            }
          }
        }
      }
      Ok(Out::Vals(out))
    })
    .map_err(crate::error::from_napi)
  }

  #[napi(ts_return_type = "Promise<number>")]
  pub fn delete_many<'e>(&self, env: &'e Env, keys: Vec<String>) -> Result<Object<'e>, Code> {
    self.open()?;
    let inner = self.inner.clone();
    runtime::promise(env, async move { Ok(inner.delete_keys(keys).await) })
      .map_err(crate::error::from_napi)
  }

  #[napi(ts_return_type = "Promise<number>")]
  pub fn delete_pattern<'e>(&self, env: &'e Env, glob: String) -> Result<Object<'e>, Code> {
    self.open()?;
    let inner = self.inner.clone();
    runtime::promise(env, async move {
      let local = inner
        .l1
        .keys_matching(|k, _| l1::glob_match(glob.as_bytes(), k.as_bytes()));
      let mut all: std::collections::HashSet<String> = local.into_iter().collect();
      for k in &all {
        inner.l1.remove(k);
      }
      if let Some(l2) = &inner.l2 {
        match l2.del_pattern(&glob).await {
          Ok(keys) => all.extend(keys),
          Err(e) => {
            inner.c.l2_errors.fetch_add(1, Ordering::Relaxed);
            return Err(e);
          }
        }
        inner.publish(Message::pattern(&inner.id, &glob)).await;
      }
      inner
        .c
        .deletes
        .fetch_add(all.len() as u64, Ordering::Relaxed);
      Ok(all.len() as u32)
    })
    .map_err(crate::error::from_napi)
  }

  #[napi(ts_return_type = "Promise<number>")]
  pub fn delete_tag<'e>(&self, env: &'e Env, tag: String) -> Result<Object<'e>, Code> {
    self.open()?;
    let inner = self.inner.clone();
    runtime::promise(env, async move {
      let local = inner
        .l1
        .keys_matching(|_, e| e.tags.as_ref().is_some_and(|t| t.contains(&tag)));
      let mut all: std::collections::HashSet<String> = local.into_iter().collect();
      for k in &all {
        inner.l1.remove(k);
      }
      if let Some(l2) = &inner.l2 {
        match l2.del_tag(&tag).await {
          Ok((members, deleted)) => {
            inner.publish(Message::keys(&inner.id, members)).await;
            all.extend(deleted);
          }
          Err(e) => {
            inner.c.l2_errors.fetch_add(1, Ordering::Relaxed);
            return Err(e);
          }
        }
      }
      inner
        .c
        .deletes
        .fetch_add(all.len() as u64, Ordering::Relaxed);
      Ok(all.len() as u32)
    })
    .map_err(crate::error::from_napi)
  }

  /// Delayed double delete: now, and again after `delayMs`.
  #[napi]
  pub fn delete_later(&self, key: String, delay_ms: f64) -> Result<(), Code> {
    self.open()?;
    let delay = to_js(check_non_negative("delayMs", delay_ms))?;
    let inner = self.inner.clone();
    inner.l1.remove(&key);
    runtime::spawn(async move {
      inner.delete_keys(vec![key.clone()]).await;
      tokio::time::sleep(Duration::from_secs_f64(delay / 1000.0)).await;
      if !inner.closed.load(Ordering::Relaxed) {
        inner.delete_keys(vec![key]).await;
      }
    });
    Ok(())
  }

  /// Remaining TTL: L1 if it has the key, else L2. Infinity for no expiry;
  /// undefined (as -2 here) when absent.
  #[napi(ts_return_type = "Promise<number>")]
  pub fn remaining_ttl_ms<'e>(&self, env: &'e Env, key: String) -> Result<Object<'e>, Code> {
    let inner = self.open()?;
    if let Some(e) = inner.l1.get_live(&key) {
      let r = if e.expires_at.is_infinite() {
        f64::INFINITY
      } else {
        (e.expires_at - now_ms()).max(0.0)
      };
      return runtime::promise(env, async move { Ok(r) }).map_err(crate::error::from_napi);
    }
    let inner = self.inner.clone();
    runtime::promise(env, async move {
      match &inner.l2 {
        None => Ok(-2.0),
        Some(l2) => match l2.pttl(&key).await {
          Ok(None) => Ok(-2.0),
          Ok(Some(-1)) => Ok(f64::INFINITY),
          Ok(Some(n)) => Ok(n as f64),
          Err(_) => {
            inner.c.l2_errors.fetch_add(1, Ordering::Relaxed);
            Ok(-2.0)
          }
        },
      }
    })
    .map_err(crate::error::from_napi)
  }

  #[napi(ts_return_type = "Promise<void>")]
  pub fn clear<'e>(&self, env: &'e Env) -> Result<Object<'e>, Code> {
    self.open()?;
    let inner = self.inner.clone();
    inner.l1.clear();
    runtime::promise(env, async move {
      if let Some(l2) = &inner.l2 {
        inner.flush_write_behind().await;
        if let Err(e) = l2.clear().await {
          inner.c.l2_errors.fetch_add(1, Ordering::Relaxed);
          return Err(e);
        }
        inner.publish(Message::all(&inner.id)).await;
      }
      Ok(())
    })
    .map_err(crate::error::from_napi)
  }

  // ---------------------------------------------------------- single flight

  /// true: the caller leads the flight for `key` (runs the factory and must
  /// end it); false: another caller in the process leads it.
  #[napi]
  pub fn flight_lead(&self, key: String) -> Result<bool, Code> {
    let inner = self.open()?;
    let mut f = inner.flights.lock();
    if f.contains_key(&key) {
      return Ok(false);
    }
    let (tx, _rx) = watch::channel(None);
    f.insert(key, tx);
    Ok(true)
  }

  /// Wait for the flight on `key` led elsewhere. Resolves to the value, to a
  /// JSON error string, or to `[]` when the flight is already over.
  #[napi(
    ts_return_type = "Promise<string | Array<number | string | boolean | null | Buffer | undefined>>"
  )]
  pub fn flight_wait<'e>(&self, env: &'e Env, key: String) -> Result<Object<'e>, Code> {
    let inner = self.open()?;
    let rx = inner.flights.lock().get(&key).map(|tx| tx.subscribe());
    runtime::promise(env, async move {
      let Some(mut rx) = rx else {
        return Ok(Out::Vals(vec![]));
      };
      let r = rx.wait_for(|v| v.is_some()).await.map(|v| v.clone());
      Ok(match r {
        Ok(Some(Ok(v))) => Out::Vals(vec![Some(v)]),
        Ok(Some(Err(e))) => Out::Err(e),
        _ => Out::Vals(vec![]),
      })
    })
    .map_err(crate::error::from_napi)
  }

  #[napi]
  pub fn flight_end(
    &self,
    key: String,
    kind: u32,
    payload: Either3<String, f64, Buffer>,
  ) -> Result<(), Code> {
    let val = to_js(val_from_js(kind, payload))?;
    if let Some(tx) = self.inner.flights.lock().remove(&key) {
      let _ = tx.send(Some(Ok(val)));
    }
    Ok(())
  }

  #[napi]
  pub fn flight_fail(&self, key: String, code: String, message: String, name: String) {
    if let Some(tx) = self.inner.flights.lock().remove(&key) {
      let _ = tx.send(Some(Err(flight_error(&code, &message, &name))));
    }
  }

  #[napi]
  pub fn stats(&self) -> CacheStats {
    let i = &self.inner;
    let c = &i.c;
    i.l1.cache.run_pending_tasks();
    let (l1h, l2h, m) = (
      c.l1_hits.load(Ordering::Relaxed) as f64,
      c.l2_hits.load(Ordering::Relaxed) as f64,
      c.misses.load(Ordering::Relaxed) as f64,
    );
    let total = l1h + l2h + m;
    let pending = i
      .wb
      .lock()
      .as_ref()
      .map(|tx| (tx.max_capacity() - tx.capacity()) as f64)
      .unwrap_or(0.0);
    CacheStats {
      l1_hits: l1h,
      l2_hits: l2h,
      misses: m,
      sets: c.sets.load(Ordering::Relaxed) as f64,
      deletes: c.deletes.load(Ordering::Relaxed) as f64,
      evictions: i.l1.evictions.load(Ordering::Relaxed) as f64,
      l1_entries: i.l1.cache.entry_count() as f64,
      l1_bytes: i.l1.bytes() as f64,
      l2_errors: c.l2_errors.load(Ordering::Relaxed) as f64,
      hit_ratio: if total > 0.0 {
        (l1h + l2h) / total
      } else {
        0.0
      },
      pending_writes: pending,
    }
  }

  /// Close this handle. The shared state (write-behind queue, subscription)
  /// shuts down with its last handle, after pending writes reach Redis.
  #[napi(ts_return_type = "Promise<void>")]
  pub fn close<'e>(&self, env: &'e Env) -> Result<Object<'e>, Code> {
    let first = !self.closed.swap(true, Ordering::SeqCst);
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

  #[napi]
  pub fn is_closed(&self) -> bool {
    self.closed.load(Ordering::Relaxed)
  }
}

#[allow(dead_code)]
fn _assert_send() {
  fn s<T: Send + Sync>() {}
  s::<CacheInner>();
  let _: Option<Weak<CacheInner>> = None;
  let _ = Code::Closed;
}
