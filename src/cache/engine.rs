//! The cache engine: L1 (moka) in process, L2 on Redis, the write path, L1
//! fills, single flights and the invalidation subscriber. Plain Rust, no
//! napi: `mod.rs` is the `#[napi]` binding that checks and converts, and this
//! file's tests run under `cargo test` without Node.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, watch};

use super::codec::Val;
use super::invalidation::Message;
use super::l1::{self, Entry, L1Config, L1};
use super::l2::{Write, L2};
use crate::error::HpResult;
use crate::redis::{Redis, RedisConfig};
use crate::runtime::{self, now_ms};

/// The validated configuration of one cache.
#[derive(Clone, Debug, PartialEq)]
pub struct CacheConfig {
  pub l1: L1Config,
  pub ttl_ms: Option<f64>,
  pub l1_ttl_ms: Option<f64>,
  pub stale_ms: f64,
  pub refresh_ahead_ms: f64,
  pub redis: Option<RedisConfig>,
  pub pubsub: bool,
  pub front: u64,
  pub max_pending: u64,
}

#[derive(Default)]
pub struct Counters {
  pub l1_hits: AtomicU64,
  pub l2_hits: AtomicU64,
  pub misses: AtomicU64,
  pub sets: AtomicU64,
  pub deletes: AtomicU64,
  pub l2_errors: AtomicU64,
}

enum WbOp {
  Set(Write),
  Flush(oneshot::Sender<()>),
}

pub type FlightResult = std::result::Result<Val, String>;

/// The shared state of one cache (one per name, or per unnamed instance).
pub struct Engine {
  pub cfg: CacheConfig,
  pub l1: L1,
  pub l2: Option<L2>,
  id: String,
  pub c: Counters,
  max_bytes_scale: Option<(u64, u64)>,
  flights: Mutex<HashMap<String, watch::Sender<Option<FlightResult>>>>,
  wb: Mutex<Option<mpsc::Sender<WbOp>>>,
  closed: AtomicBool,
}

impl Engine {
  pub fn new(cfg: CacheConfig) -> HpResult<Arc<Engine>> {
    let l1 = L1::new(&cfg.l1);
    let l2 = match &cfg.redis {
      Some(rc) => Some(L2 {
        redis: Redis::new(rc.clone())?,
      }),
      None => None,
    };
    let max_bytes_scale = cfg.l1.max_bytes.map(|b| (b, cfg.l1.max_entries));
    let inner = Arc::new(Engine {
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

  pub async fn publish(&self, m: Message) {
    if let Some(l2) = &self.l2 {
      if self.cfg.pubsub && l2.redis.publish(&l2.channel(), &m.encode()).await.is_err() {
        self.c.l2_errors.fetch_add(1, Ordering::Relaxed);
      }
    }
  }

  pub async fn write_l2(&self, writes: &[Write]) -> bool {
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
  pub fn put_l1(&self, key: &str, val: Val, ttl_ms: Option<f64>, tags: Option<Box<[String]>>) {
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

  pub fn l2_ttl(&self, ttl_ms: Option<f64>) -> Option<u64> {
    ttl_ms.or(self.cfg.ttl_ms).map(|t| t.ceil() as u64)
  }

  pub async fn get_l2(&self, key: &str) -> Option<Val> {
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
  pub async fn delete_keys(&self, keys: Vec<String>) -> u32 {
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

  pub async fn flush_write_behind(&self) {
    let tx = self.wb.lock().clone();
    if let Some(tx) = tx {
      let (ftx, frx) = oneshot::channel();
      if tx.send(WbOp::Flush(ftx)).await.is_ok() {
        let _ = frx.await;
      }
    }
  }

  pub async fn shutdown(&self) {
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

/// A snapshot of the counters (`stats()`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
  pub l1_hits: f64,
  pub l2_hits: f64,
  pub misses: f64,
  pub sets: f64,
  pub deletes: f64,
  pub evictions: f64,
  pub l1_entries: f64,
  pub l1_bytes: f64,
  pub l2_errors: f64,
  pub hit_ratio: f64,
  pub pending_writes: f64,
}

/// Waiting on a flight led elsewhere.
pub enum FlightOutcome {
  Value(Val),
  Failed(String),
  /// The flight is over (or was never there): look again.
  Gone,
}

impl Engine {
  /// L1 now, L2 in the background (write-behind).
  pub fn set_sync(&self, key: String, val: Val, ttl_ms: Option<f64>, tags: Option<Box<[String]>>) {
    self.c.sets.fetch_add(1, Ordering::Relaxed);
    if let Some(tx) = self.wb.lock().as_ref() {
      let w = Write {
        key: key.clone(),
        val: val.clone(),
        ttl_ms: self.l2_ttl(ttl_ms),
        tags: tags.clone(),
      };
      if tx.try_send(WbOp::Set(w)).is_err() {
        self.c.l2_errors.fetch_add(1, Ordering::Relaxed);
      }
    }
    self.put_l1(&key, val, ttl_ms, tags);
  }

  /// L1 now; the returned future writes L2 (write-through) and resolves
  /// `true` when L2 took it (or there is no L2).
  pub fn set(
    self: &Arc<Self>,
    key: String,
    val: Val,
    ttl_ms: Option<f64>,
    tags: Option<Box<[String]>>,
  ) -> impl Future<Output = bool> + Send + 'static {
    self.set_many(vec![(key, val)], ttl_ms, tags)
  }

  /// Many writes: L1 now, one pipeline to L2.
  pub fn set_many(
    self: &Arc<Self>,
    entries: Vec<(String, Val)>,
    ttl_ms: Option<f64>,
    tags: Option<Box<[String]>>,
  ) -> impl Future<Output = bool> + Send + 'static {
    let ttl = self.l2_ttl(ttl_ms);
    let writes: Vec<Write> = entries
      .into_iter()
      .map(|(key, val)| Write {
        key,
        val,
        ttl_ms: ttl,
        tags: tags.clone(),
      })
      .collect();
    for w in &writes {
      self.put_l1(&w.key, w.val.clone(), ttl_ms, tags.clone());
    }
    self
      .c
      .sets
      .fetch_add(writes.len() as u64, Ordering::Relaxed);
    let this = self.clone();
    async move { this.write_l2(&writes).await }
  }

  /// L1 for each key now; the future does one L2 round trip for the misses.
  pub fn get_many(
    self: &Arc<Self>,
    keys: Vec<String>,
  ) -> impl Future<Output = Vec<Option<Val>>> + Send + 'static {
    let mut out: Vec<Option<Val>> = Vec::with_capacity(keys.len());
    let mut missing: Vec<(usize, String)> = Vec::new();
    for (i, k) in keys.into_iter().enumerate() {
      match self.l1.get_live(&k) {
        Some(e) => {
          self.c.l1_hits.fetch_add(1, Ordering::Relaxed);
          out.push(Some(e.val.clone()));
        }
        None => {
          out.push(None);
          missing.push((i, k));
        }
      }
    }
    let inner = self.clone();
    async move {
      if missing.is_empty() {
        return out;
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
      out
    }
  }

  /// Delete every key matching `glob` on every level.
  pub async fn delete_pattern(&self, glob: String) -> HpResult<u32> {
    let local = self
      .l1
      .keys_matching(|k, _| l1::glob_match(glob.as_bytes(), k.as_bytes()));
    let mut all: HashSet<String> = local.into_iter().collect();
    for k in &all {
      self.l1.remove(k);
    }
    if let Some(l2) = &self.l2 {
      match l2.del_pattern(&glob).await {
        Ok(keys) => all.extend(keys),
        Err(e) => {
          self.c.l2_errors.fetch_add(1, Ordering::Relaxed);
          return Err(e);
        }
      }
      self.publish(Message::pattern(&self.id, &glob)).await;
    }
    self
      .c
      .deletes
      .fetch_add(all.len() as u64, Ordering::Relaxed);
    Ok(all.len() as u32)
  }

  /// Delete every entry written with `tag`.
  pub async fn delete_tag(&self, tag: String) -> HpResult<u32> {
    let local = self
      .l1
      .keys_matching(|_, e| e.tags.as_ref().is_some_and(|t| t.contains(&tag)));
    let mut all: HashSet<String> = local.into_iter().collect();
    for k in &all {
      self.l1.remove(k);
    }
    if let Some(l2) = &self.l2 {
      match l2.del_tag(&tag).await {
        Ok((members, deleted)) => {
          self.publish(Message::keys(&self.id, members)).await;
          all.extend(deleted);
        }
        Err(e) => {
          self.c.l2_errors.fetch_add(1, Ordering::Relaxed);
          return Err(e);
        }
      }
    }
    self
      .c
      .deletes
      .fetch_add(all.len() as u64, Ordering::Relaxed);
    Ok(all.len() as u32)
  }

  /// Delayed double delete: now, and again after `delay_ms`.
  pub fn delete_later(self: &Arc<Self>, key: String, delay_ms: f64) {
    let inner = self.clone();
    inner.l1.remove(&key);
    runtime::spawn(async move {
      inner.delete_keys(vec![key.clone()]).await;
      tokio::time::sleep(Duration::from_secs_f64(delay_ms / 1000.0)).await;
      if !inner.closed.load(Ordering::Relaxed) {
        inner.delete_keys(vec![key]).await;
      }
    });
  }

  /// Remaining TTL: L1 if it has the key (decided now), else L2. Infinity
  /// for no expiry; `None` when absent.
  pub fn remaining_ttl_ms(
    self: &Arc<Self>,
    key: String,
  ) -> impl Future<Output = Option<f64>> + Send + 'static {
    let local = self.l1.get_live(&key).map(|e| {
      if e.expires_at.is_infinite() {
        f64::INFINITY
      } else {
        (e.expires_at - now_ms()).max(0.0)
      }
    });
    let inner = self.clone();
    async move {
      if local.is_some() {
        return local;
      }
      let l2 = inner.l2.as_ref()?;
      match l2.pttl(&key).await {
        Ok(None) => None,
        Ok(Some(-1)) => Some(f64::INFINITY),
        Ok(Some(n)) => Some(n as f64),
        Err(_) => {
          inner.c.l2_errors.fetch_add(1, Ordering::Relaxed);
          None
        }
      }
    }
  }

  /// L1 now; the future clears this cache's keys in L2.
  pub fn clear(self: &Arc<Self>) -> impl Future<Output = HpResult<()>> + Send + 'static {
    self.l1.clear();
    let inner = self.clone();
    async move {
      if let Some(l2) = &inner.l2 {
        inner.flush_write_behind().await;
        if let Err(e) = l2.clear().await {
          inner.c.l2_errors.fetch_add(1, Ordering::Relaxed);
          return Err(e);
        }
        inner.publish(Message::all(&inner.id)).await;
      }
      Ok(())
    }
  }

  // ---------------------------------------------------------- single flight

  /// true: the caller leads the flight for `key` (and must end it).
  pub fn flight_lead(&self, key: String) -> bool {
    let mut f = self.flights.lock();
    if f.contains_key(&key) {
      return false;
    }
    let (tx, _rx) = watch::channel(None);
    f.insert(key, tx);
    true
  }

  /// Wait for the flight on `key` led elsewhere.
  pub fn flight_wait(&self, key: &str) -> impl Future<Output = FlightOutcome> + Send + 'static {
    let rx = self.flights.lock().get(key).map(|tx| tx.subscribe());
    async move {
      let Some(mut rx) = rx else {
        return FlightOutcome::Gone;
      };
      let r = rx.wait_for(|v| v.is_some()).await.map(|v| v.clone());
      match r {
        Ok(Some(Ok(v))) => FlightOutcome::Value(v),
        Ok(Some(Err(e))) => FlightOutcome::Failed(e),
        _ => FlightOutcome::Gone,
      }
    }
  }

  pub fn flight_end(&self, key: &str, val: Val) {
    if let Some(tx) = self.flights.lock().remove(key) {
      let _ = tx.send(Some(Ok(val)));
    }
  }

  pub fn flight_fail(&self, key: &str, code: &str, message: &str, name: &str) {
    if let Some(tx) = self.flights.lock().remove(key) {
      let _ = tx.send(Some(Err(flight_error(code, message, name))));
    }
  }

  pub fn stats(&self) -> Stats {
    let c = &self.c;
    self.l1.cache.run_pending_tasks();
    let (l1h, l2h, m) = (
      c.l1_hits.load(Ordering::Relaxed) as f64,
      c.l2_hits.load(Ordering::Relaxed) as f64,
      c.misses.load(Ordering::Relaxed) as f64,
    );
    let total = l1h + l2h + m;
    let pending = self
      .wb
      .lock()
      .as_ref()
      .map(|tx| (tx.max_capacity() - tx.capacity()) as f64)
      .unwrap_or(0.0);
    Stats {
      l1_hits: l1h,
      l2_hits: l2h,
      misses: m,
      sets: c.sets.load(Ordering::Relaxed) as f64,
      deletes: c.deletes.load(Ordering::Relaxed) as f64,
      evictions: self.l1.evictions.load(Ordering::Relaxed) as f64,
      l1_entries: self.l1.cache.entry_count() as f64,
      l1_bytes: self.l1.bytes() as f64,
      l2_errors: c.l2_errors.load(Ordering::Relaxed) as f64,
      hit_ratio: if total > 0.0 {
        (l1h + l2h) / total
      } else {
        0.0
      },
      pending_writes: pending,
    }
  }

  pub fn is_closed(&self) -> bool {
    self.closed.load(Ordering::Relaxed)
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  pub(crate) fn cfg() -> CacheConfig {
    CacheConfig {
      l1: L1Config {
        max_entries: 100,
        max_bytes: None,
        idle: None,
        lru: false,
      },
      ttl_ms: None,
      l1_ttl_ms: None,
      stale_ms: 0.0,
      refresh_ahead_ms: 0.0,
      redis: None,
      pubsub: false,
      front: 0,
      max_pending: 1000,
    }
  }

  #[test]
  fn l1_only_set_get_delete() {
    let e = Engine::new(cfg()).unwrap();
    e.set_sync("k".into(), Val::Str("v".into()), None, None);
    assert_eq!(e.l1.get_live("k").unwrap().val, Val::Str("v".into()));
    let n = runtime::handle().block_on(e.delete_keys(vec!["k".into()]));
    assert_eq!(n, 1);
    assert!(e.l1.get_live("k").is_none());
  }

  #[test]
  fn flights_lead_once_and_deliver() {
    let e = Engine::new(cfg()).unwrap();
    assert!(e.flight_lead("f".into()));
    assert!(!e.flight_lead("f".into()));
    let w = e.flight_wait("f");
    e.flight_end("f", Val::Num(1.0));
    match runtime::handle().block_on(w) {
      FlightOutcome::Value(v) => assert_eq!(v, Val::Num(1.0)),
      _ => panic!("expected the value"),
    }
    assert!(e.flight_lead("f".into()));
  }
}
