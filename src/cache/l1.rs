//! L1: moka (TinyLFU or LRU), bounded by entries and/or bytes, TTL per entry,
//! and a table of version counters the JS layer reads to know when its
//! per-thread front cache is stale.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::notification::RemovalCause;
use moka::policy::{EvictionPolicy, Expiry};
use moka::sync::Cache;

use super::codec::Val;
use crate::runtime::now_ms;

/// Number of version slots (a power of two). 64 Ki slots = 256 KiB per cache.
pub const SLOTS: usize = 1 << 16;

pub struct Entry {
  pub val: Val,
  /// Absolute time (crate clock, ms) when the value expires; INFINITY = never.
  pub expires_at: f64,
  /// Until when an expired value may still be served stale by getOrSet.
  pub stale_until: f64,
  /// How long moka keeps it (TTL capped by l1TtlMs, plus staleMs).
  pub keep_for: Option<Duration>,
  pub tags: Option<Box<[String]>>,
  pub weight: u32,
}

struct EntryExpiry;

impl Expiry<String, Arc<Entry>> for EntryExpiry {
  fn expire_after_create(&self, _k: &String, v: &Arc<Entry>, _now: Instant) -> Option<Duration> {
    v.keep_for
  }
  fn expire_after_update(
    &self,
    _k: &String,
    v: &Arc<Entry>,
    _now: Instant,
    _d: Option<Duration>,
  ) -> Option<Duration> {
    v.keep_for
  }
}

#[derive(Clone, Debug, PartialEq)]
pub struct L1Config {
  pub max_entries: u64,
  pub max_bytes: Option<u64>,
  pub idle: Option<Duration>,
  pub lru: bool,
}

pub struct L1 {
  pub cache: Cache<String, Arc<Entry>>,
  versions: Arc<Versions>,
  pub evictions: Arc<AtomicU64>,
  bytes: Arc<AtomicI64>,
  hasher: ahash_like::Builder,
  weighed: bool,
}

/// The version table, shared (read-only) with JS through an external
/// ArrayBuffer. Every write, delete, eviction or expiry of a key bumps its
/// slot, so a front-cache entry captured at version v is valid iff the slot
/// still reads v.
pub struct Versions {
  pub slots: Box<[AtomicU32]>,
}

impl Versions {
  fn new() -> Self {
    Versions {
      slots: (0..SLOTS).map(|_| AtomicU32::new(0)).collect(),
    }
  }
  #[inline]
  pub fn bump(&self, slot: usize) {
    self.slots[slot].fetch_add(1, Ordering::Release);
  }
  #[inline]
  pub fn get(&self, slot: usize) -> u32 {
    self.slots[slot].load(Ordering::Acquire)
  }
  pub fn bump_all(&self) {
    for s in self.slots.iter() {
      s.fetch_add(1, Ordering::Release);
    }
  }
}

mod ahash_like {
  //! FNV-1a: a fixed, cheap hash for 16-to-64-byte keys (slot selection only).
  #[derive(Clone, Default)]
  pub struct Builder;
  pub struct H(u64);
  impl std::hash::Hasher for H {
    fn finish(&self) -> u64 {
      self.0
    }
    fn write(&mut self, bytes: &[u8]) {
      for b in bytes {
        self.0 ^= *b as u64;
        self.0 = self.0.wrapping_mul(0x100000001b3);
      }
    }
  }
  impl std::hash::BuildHasher for Builder {
    type Hasher = H;
    fn build_hasher(&self) -> H {
      H(0xcbf29ce484222325)
    }
  }
}

impl L1 {
  pub fn new(cfg: &L1Config) -> L1 {
    let versions = Arc::new(Versions::new());
    let evictions = Arc::new(AtomicU64::new(0));
    let v2 = versions.clone();
    let ev2 = evictions.clone();
    let bytes = Arc::new(AtomicI64::new(0));
    let b2 = bytes.clone();
    let hasher = ahash_like::Builder;
    let h2 = hasher.clone();
    let mut b = Cache::builder()
      .expire_after(EntryExpiry)
      .eviction_listener(move |k: Arc<String>, v: Arc<Entry>, cause: RemovalCause| {
        // A replaced value is removed inside `insert`, which bumps the slot
        // itself right after: one bump per write, so `insert` can tell
        // whether any other change hit the slot meanwhile.
        if cause != RemovalCause::Replaced {
          v2.bump(slot_of(&h2, &k));
        }
        b2.fetch_sub((k.len() + v.val.weight()) as i64, Ordering::Relaxed);
        if cause == RemovalCause::Size {
          ev2.fetch_add(1, Ordering::Relaxed);
        }
      });
    let weighed = cfg.max_bytes.is_some();
    if let Some(max_bytes) = cfg.max_bytes {
      // Both bounds at once: capacity S = maxEntries * 1024; an entry weighs
      // max(1024, ceil(bytes * S / maxBytes)). Total weight <= S implies
      // count <= maxEntries and bytes <= maxBytes.
      let s = cfg.max_entries.saturating_mul(1024);
      b = b.max_capacity(s);
      let _ = max_bytes;
    } else {
      b = b.max_capacity(cfg.max_entries);
    }
    if weighed {
      b = b.weigher(|_k: &String, v: &Arc<Entry>| v.weight);
    }
    if let Some(idle) = cfg.idle {
      b = b.time_to_idle(idle);
    }
    if cfg.lru {
      b = b.eviction_policy(EvictionPolicy::lru());
    }
    L1 {
      cache: b.build(),
      versions,
      evictions,
      bytes,
      hasher,
      weighed,
    }
  }

  pub fn versions(&self) -> Arc<Versions> {
    self.versions.clone()
  }

  #[inline]
  pub fn slot(&self, key: &str) -> usize {
    slot_of(&self.hasher, key)
  }

  pub fn is_weighed(&self) -> bool {
    self.weighed
  }

  /// A live (not expired) entry.
  pub fn get_live(&self, key: &str) -> Option<Arc<Entry>> {
    let e = self.cache.get(key)?;
    if e.expires_at <= now_ms() {
      return None;
    }
    Some(e)
  }

  /// An entry that may be expired but is still inside its stale window.
  pub fn get_any(&self, key: &str) -> Option<Arc<Entry>> {
    let e = self.cache.get(key)?;
    if e.stale_until <= now_ms() {
      return None;
    }
    Some(e)
  }

  /// Bytes (key + value) of the entries in L1.
  pub fn bytes(&self) -> i64 {
    self.bytes.load(Ordering::Relaxed).max(0)
  }

  /// Insert (or replace) and bump the key's slot. Returns the slot and, when
  /// nothing else changed that slot between the start of this call and its
  /// bump, the version the slot now has: a front cache may then hold the
  /// written value under that version (any later change bumps it again).
  pub fn insert(&self, key: String, e: Entry) -> (usize, Option<u32>) {
    let slot = self.slot(&key);
    let before = self.versions.get(slot);
    self
      .bytes
      .fetch_add((key.len() + e.val.weight()) as i64, Ordering::Relaxed);
    self.cache.insert(key, Arc::new(e));
    let prev = self.versions.slots[slot].fetch_add(1, Ordering::AcqRel);
    (slot, (prev == before).then(|| before.wrapping_add(1)))
  }

  pub fn remove(&self, key: &str) -> bool {
    let r = self.cache.remove(key).is_some();
    self.versions.bump(self.slot(key));
    r
  }

  pub fn clear(&self) {
    self.cache.invalidate_all();
    self.cache.run_pending_tasks();
    self.versions.bump_all();
  }

  pub fn keys_matching(&self, mut pred: impl FnMut(&str, &Entry) -> bool) -> Vec<String> {
    self
      .cache
      .iter()
      .filter(|(k, v)| pred(k, v))
      .map(|(k, _)| (*k).clone())
      .collect()
  }
}

fn slot_of(h: &ahash_like::Builder, key: &str) -> usize {
  (h.hash_one(key) as usize) & (SLOTS - 1)
}

/// Glob match as Redis MATCH does: `*`, `?`, `[abc]`, `[^a]`, `[a-z]`, `\x`.
pub fn glob_match(pat: &[u8], s: &[u8]) -> bool {
  let (mut p, mut i) = (0usize, 0usize);
  let (mut star_p, mut star_i) = (usize::MAX, 0usize);
  while i < s.len() {
    if p < pat.len() {
      match pat[p] {
        b'*' => {
          star_p = p;
          star_i = i;
          p += 1;
          continue;
        }
        b'?' => {
          p += 1;
          i += 1;
          continue;
        }
        b'[' => {
          if let Some((matched, next)) = class_match(pat, p, s[i]) {
            if matched {
              p = next;
              i += 1;
              continue;
            }
          }
        }
        b'\\' if p + 1 < pat.len() => {
          if pat[p + 1] == s[i] {
            p += 2;
            i += 1;
            continue;
          }
        }
        c => {
          if c == s[i] {
            p += 1;
            i += 1;
            continue;
          }
        }
      }
    }
    if star_p != usize::MAX {
      p = star_p + 1;
      star_i += 1;
      i = star_i;
      continue;
    }
    return false;
  }
  while p < pat.len() && pat[p] == b'*' {
    p += 1;
  }
  p == pat.len()
}

fn class_match(pat: &[u8], start: usize, c: u8) -> Option<(bool, usize)> {
  let mut p = start + 1;
  let neg = p < pat.len() && pat[p] == b'^';
  if neg {
    p += 1;
  }
  let mut matched = false;
  while p < pat.len() && pat[p] != b']' {
    if pat[p] == b'\\' && p + 1 < pat.len() {
      p += 1;
      if pat[p] == c {
        matched = true;
      }
    } else if p + 2 < pat.len() && pat[p + 1] == b'-' && pat[p + 2] != b']' {
      let (lo, hi) = (pat[p].min(pat[p + 2]), pat[p].max(pat[p + 2]));
      if lo <= c && c <= hi {
        matched = true;
      }
      p += 2;
    } else if pat[p] == c {
      matched = true;
    }
    p += 1;
  }
  if p >= pat.len() {
    return None;
  }
  Some((matched != neg, p + 1))
}

/// Escape glob metacharacters (for a key prefix inside a MATCH pattern).
pub fn glob_escape(s: &str) -> String {
  let mut o = String::with_capacity(s.len());
  for c in s.chars() {
    if matches!(c, '*' | '?' | '[' | ']' | '\\') {
      o.push('\\');
    }
    o.push(c);
  }
  o
}

#[cfg(test)]
mod tests {
  use super::*;

  fn entry(v: &str, ttl: Option<f64>) -> Entry {
    let now = now_ms();
    Entry {
      val: Val::Str(v.into()),
      expires_at: ttl.map(|t| now + t).unwrap_or(f64::INFINITY),
      stale_until: ttl.map(|t| now + t).unwrap_or(f64::INFINITY),
      keep_for: ttl.map(|t| Duration::from_secs_f64(t / 1000.0)),
      tags: None,
      weight: 1024,
    }
  }

  #[test]
  fn versions_bump_on_every_change() {
    let l1 = L1::new(&L1Config {
      max_entries: 100,
      max_bytes: None,
      idle: None,
      lru: false,
    });
    let s = l1.slot("k");
    let v0 = l1.versions.get(s);
    let (slot, fill) = l1.insert("k".into(), entry("a", None));
    let v1 = l1.versions.get(s);
    assert_ne!(v0, v1);
    assert_eq!((slot, fill), (s, Some(v1)));
    // Replacing bumps exactly once: the writer may still fill its front cache.
    let (_, fill) = l1.insert("k".into(), entry("b", None));
    assert_eq!(fill, Some(v1.wrapping_add(1)));
    let v1 = l1.versions.get(s);
    assert!(matches!(&l1.get_live("k").unwrap().val, Val::Str(x) if x == "b"));
    assert!(l1.remove("k"));
    assert_ne!(l1.versions.get(s), v1);
    assert!(l1.get_live("k").is_none());
  }

  #[test]
  fn bounded_by_entries() {
    let l1 = L1::new(&L1Config {
      max_entries: 50,
      max_bytes: None,
      idle: None,
      lru: true,
    });
    for i in 0..500 {
      l1.insert(format!("k{i}"), entry("v", None));
    }
    l1.cache.run_pending_tasks();
    assert!(l1.cache.entry_count() <= 50, "{}", l1.cache.entry_count());
    assert!(l1.evictions.load(Ordering::Relaxed) >= 450);
  }

  #[test]
  fn expiry_follows_the_clock() {
    let l1 = L1::new(&L1Config {
      max_entries: 10,
      max_bytes: None,
      idle: None,
      lru: false,
    });
    l1.insert("t".into(), entry("v", Some(60_000.0)));
    assert!(l1.get_live("t").is_some());
    crate::runtime::advance_clock_ms(61_000.0);
    assert!(l1.get_live("t").is_none());
  }

  #[test]
  fn glob() {
    assert!(glob_match(b"user:*", b"user:1"));
    assert!(!glob_match(b"user:*", b"usr:1"));
    assert!(glob_match(b"a?c", b"abc"));
    assert!(glob_match(b"[ab]x", b"bx"));
    assert!(!glob_match(b"[^ab]x", b"bx"));
    assert!(glob_match(b"k[0-9]", b"k7"));
    assert!(glob_match(b"*", b""));
    assert!(glob_match(b"a\\*", b"a*"));
    assert!(!glob_match(b"a\\*", b"ab"));
    assert_eq!(glob_escape("p*:"), "p\\*:");
  }
}

#[cfg(test)]
mod cost {
  //! `cargo test --release l1_write_cost -- --ignored --nocapture`: what an L1
  //! write costs, piece by piece (the floor under `setSync`).
  use super::*;
  use std::time::Instant;

  fn time(name: &str, n: usize, mut f: impl FnMut(usize)) {
    for i in 0..n / 4 {
      f(i);
    }
    let t0 = Instant::now();
    for i in 0..n {
      f(i);
    }
    println!(
      "{name:<44} {:>6.0} ns/op",
      t0.elapsed().as_nanos() as f64 / n as f64
    );
  }

  #[test]
  #[ignore]
  fn l1_write_cost() {
    const K: usize = 10_000;
    const N: usize = 1_000_000;
    let keys: Vec<String> = (0..K).map(|i| format!("key:{i:012}")).collect();
    let text = "x".repeat(110);
    let plain: Cache<String, Arc<String>> = Cache::builder().max_capacity(20_000).build();
    time("moka insert (no listener, no expiry)", N, |i| {
      plain.insert(keys[i % K].clone(), Arc::new(text.clone()))
    });
    let listened: Cache<String, Arc<String>> = Cache::builder()
      .max_capacity(20_000)
      .eviction_listener(|_k, _v, _c| {})
      .build();
    time("moka insert + eviction listener", N, |i| {
      listened.insert(keys[i % K].clone(), Arc::new(text.clone()))
    });
    struct NoExpiry;
    impl Expiry<String, Arc<String>> for NoExpiry {}
    let expiring: Cache<String, Arc<String>> = Cache::builder()
      .max_capacity(20_000)
      .expire_after(NoExpiry)
      .build();
    time("moka insert + expire_after (None)", N, |i| {
      expiring.insert(keys[i % K].clone(), Arc::new(text.clone()))
    });
    time("moka get", N, |i| {
      std::hint::black_box(plain.get(&keys[i % K]));
    });
    let l1 = L1::new(&L1Config {
      max_entries: 20_000,
      max_bytes: None,
      idle: None,
      lru: false,
    });
    time("L1::insert (listener, expiry, versions)", N, |i| {
      std::hint::black_box(l1.insert(
        keys[i % K].clone(),
        Entry {
          val: Val::Json(text.clone()),
          expires_at: f64::INFINITY,
          stale_until: f64::INFINITY,
          keep_for: None,
          tags: None,
          weight: 1,
        },
      ));
    });
    time("L1::get_live", N, |i| {
      std::hint::black_box(l1.get_live(&keys[i % K]));
    });
    time("key + value String copies", N, |i| {
      std::hint::black_box((keys[i % K].clone(), text.clone()));
    });
    let mut m = std::collections::HashMap::new();
    time("std HashMap insert (reference)", N, |i| {
      m.insert(keys[i % K].clone(), Arc::new(text.clone()));
    });
  }
}
