//! L1: the in-process store every thread of the process shares, the source
//! of truth under each thread's JS front cache. A hash table split into
//! shards, each behind its own mutex, with a recency list per shard and, for
//! policy 'tinylfu', a frequency sketch per shard that decides whether a new
//! key may displace the shard's least recently used entry (TinyLFU
//! admission). `maxEntries` and `maxBytes` are enforced inside `insert`, so
//! they hold when it returns. Expiry is per entry on the crate clock; an
//! entry past its stale window is dropped where it is met (a read, the tail
//! of its shard's list, `sweep`).
//!
//! It replaced moka (0.12): `cargo test --release --lib l1_write_cost --
//! --ignored --nocapture` measured a moka insert at 0.8–1.3 µs without an
//! eviction listener and 1.7–2.3 µs with one, a moka get at 0.3–0.4 µs,
//! against ~0.1 µs for a plain hash map insert and 0.09–0.16 µs / 0.04–0.06
//! µs for this store's insert / read — moka's buffered, amortised policy
//! upkeep (read and write logs, an epoch GC flush per update, a key-lock map
//! for the listener) was most of `setSync`. Here every operation does its
//! policy work inline under one shard lock.
//!
//! The table of version counters the JS layer reads to know when its
//! per-thread front cache is stale lives here too: every write, delete,
//! eviction or expiry of a key bumps its slot.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hashbrown::hash_table::HashTable;
use parking_lot::{Mutex, MutexGuard};

use super::codec::Val;
use crate::runtime::now_ms;

/// Number of version slots (a power of two). 64 Ki slots = 256 KiB per cache.
pub const SLOTS: usize = 1 << 16;

pub struct Entry {
  pub val: Val,
  /// Absolute time (crate clock, ms) when the value expires; INFINITY = never.
  pub expires_at: f64,
  /// Until when an expired value may still be served stale by getOrSet; L1
  /// drops the entry after it.
  pub stale_until: f64,
  pub tags: Option<Box<[String]>>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct L1Config {
  pub max_entries: u64,
  pub max_bytes: Option<u64>,
  pub idle: Option<Duration>,
  pub lru: bool,
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
  /// Bump `slot` and return its new version. Only under the lock of the
  /// shard that owns the slot (every key of a slot is in one shard), so a
  /// plain load and store do: no locked read-modify-write (`lock xadd`, a
  /// full barrier that perf showed costing more than the rest of an insert).
  #[inline]
  fn bump(&self, slot: usize) -> u32 {
    let v = self.slots[slot].load(Ordering::Relaxed).wrapping_add(1);
    self.slots[slot].store(v, Ordering::Release);
    v
  }
  #[inline]
  pub fn get(&self, slot: usize) -> u32 {
    self.slots[slot].load(Ordering::Acquire)
  }
  /// Bump slots `range` (a shard's, under its lock).
  fn bump_range(&self, range: std::ops::Range<usize>) {
    for slot in range {
      self.bump(slot);
    }
  }
}

const NIL: u32 = u32::MAX;
const M: u64 = 0x9E37_79B9_7F4A_7C15;

/// A keyed 64-bit hash of a key (8 bytes a step, then a 64-bit finaliser):
/// its top 16 bits pick the version slot, its top `shard_bits` the shard
/// (so keys sharing a slot share a shard), and a remix of it the bucket.
fn hash_key(seed: u64, k: &[u8]) -> u64 {
  let mut h = seed ^ (k.len() as u64).wrapping_mul(M);
  let mut words = k.chunks_exact(8);
  for w in &mut words {
    let x = u64::from_le_bytes(w.try_into().expect("8 bytes"));
    h = (h ^ x).wrapping_mul(M).rotate_left(29);
  }
  let rest = words.remainder();
  if !rest.is_empty() {
    let mut b = [0u8; 8];
    b[..rest.len()].copy_from_slice(rest);
    h = (h ^ u64::from_le_bytes(b)).wrapping_mul(M).rotate_left(29);
  }
  h ^= h >> 33;
  h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
  h ^= h >> 33;
  h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
  h ^ (h >> 33)
}

/// The hash a shard's table files a key under: shard and slot fix the top
/// bits of the key hash, so the table gets a remix with every bit live.
#[inline]
fn table_hash(h: u64) -> u64 {
  (h ^ (h >> 29)).wrapping_mul(0xbf58_476d_1ce4_e5b9)
}

#[inline]
fn slot_of_hash(h: u64) -> usize {
  (h >> 48) as usize & (SLOTS - 1)
}

/// Count-min sketch of 4-bit counters (one byte each, saturating at 15),
/// halved every `sample` increments (TinyLFU's reset). A key's four
/// counters lie in one 64-byte block (as Caffeine's sketch does), so an
/// update or a lookup touches one cache line, not four.
/// Counters per entry of capacity.
const SKETCH_PER_ENTRY: usize = 8;

struct Sketch {
  t: Box<[u8]>,
  /// Blocks - 1 (a power of two).
  mask: usize,
  adds: usize,
  sample: usize,
}

impl Sketch {
  fn new(capacity: usize) -> Sketch {
    let w = (capacity.max(16) * SKETCH_PER_ENTRY)
      .next_power_of_two()
      .max(64);
    Sketch {
      t: vec![0u8; w].into_boxed_slice(),
      mask: w / 64 - 1,
      adds: 0,
      sample: capacity.max(16) * 10,
    }
  }
  /// The four counters of hash `h`: a block from its low bits, a counter in
  /// it from each of four further 6-bit fields (of a remix: the key hash's
  /// top bits are shared by every key of a shard).
  #[inline]
  fn idx(&self, h: u64) -> [usize; 4] {
    let x = (h ^ (h >> 32)).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    let base = ((x as usize) & self.mask) << 6;
    let y = x >> 40;
    [
      base | (y & 63) as usize,
      base | ((y >> 6) & 63) as usize,
      base | ((y >> 12) & 63) as usize,
      base | ((y >> 18) & 63) as usize,
    ]
  }
  fn freq(&self, h: u64) -> u8 {
    let mut f = u8::MAX;
    for j in self.idx(h) {
      f = f.min(self.t[j]);
    }
    f
  }
  fn incr(&mut self, h: u64) {
    let mut added = false;
    for j in self.idx(h) {
      if self.t[j] < 15 {
        self.t[j] += 1;
        added = true;
      }
    }
    if added {
      self.adds += 1;
      if self.adds >= self.sample {
        for c in self.t.iter_mut() {
          *c >>= 1;
        }
        self.adds /= 2;
      }
    }
  }
}

struct Node {
  key: Box<str>,
  hash: u64,
  /// None: a free node.
  entry: Option<Arc<Entry>>,
  /// Key + value bytes (what `maxBytes` bounds).
  bytes: u64,
  /// Last read or write (crate clock, ms), for time-to-idle.
  touched: f64,
  prev: u32,
  next: u32,
}

struct Shard {
  table: HashTable<u32>,
  nodes: Vec<Node>,
  free: Vec<u32>,
  /// Most recently used.
  head: u32,
  /// Least recently used: the eviction candidate.
  tail: u32,
  sketch: Option<Sketch>,
}

/// What removed an entry (for the counters).
#[derive(Clone, Copy, PartialEq)]
enum Cause {
  Removed,
  Evicted,
  Expired,
}

impl Shard {
  fn new(sketch: Option<Sketch>) -> Shard {
    Shard {
      table: HashTable::new(),
      nodes: Vec::new(),
      free: Vec::new(),
      head: NIL,
      tail: NIL,
      sketch,
    }
  }

  #[inline]
  fn find(&self, h: u64, key: &str) -> Option<u32> {
    let nodes = &self.nodes;
    self
      .table
      .find(table_hash(h), |&i| {
        let n = &nodes[i as usize];
        n.hash == h && &*n.key == key
      })
      .copied()
  }

  fn unlink(&mut self, i: u32) {
    let (p, n) = {
      let x = &self.nodes[i as usize];
      (x.prev, x.next)
    };
    if p == NIL {
      self.head = n;
    } else {
      self.nodes[p as usize].next = n;
    }
    if n == NIL {
      self.tail = p;
    } else {
      self.nodes[n as usize].prev = p;
    }
  }

  fn push_front(&mut self, i: u32) {
    let old = self.head;
    {
      let x = &mut self.nodes[i as usize];
      x.prev = NIL;
      x.next = old;
    }
    if old == NIL {
      self.tail = i;
    } else {
      self.nodes[old as usize].prev = i;
    }
    self.head = i;
  }

  #[inline]
  fn move_to_front(&mut self, i: u32) {
    if self.head != i {
      self.unlink(i);
      self.push_front(i);
    }
  }

  fn add(&mut self, key: Box<str>, h: u64, e: Arc<Entry>, bytes: u64, now: f64) -> u32 {
    let node = Node {
      key,
      hash: h,
      entry: Some(e),
      bytes,
      touched: now,
      prev: NIL,
      next: NIL,
    };
    let i = match self.free.pop() {
      Some(i) => {
        self.nodes[i as usize] = node;
        i
      }
      None => {
        self.nodes.push(node);
        (self.nodes.len() - 1) as u32
      }
    };
    let nodes = &self.nodes;
    self
      .table
      .insert_unique(table_hash(h), i, |&j| table_hash(nodes[j as usize].hash));
    self.push_front(i);
    i
  }

  /// Take node `i` out; returns its hash, bytes and entry.
  fn take(&mut self, i: u32) -> (u64, u64, Arc<Entry>) {
    let h = self.nodes[i as usize].hash;
    if let Ok(en) = self.table.find_entry(table_hash(h), |&j| j == i) {
      en.remove();
    }
    self.unlink(i);
    self.free.push(i);
    let n = &mut self.nodes[i as usize];
    n.key = Box::default();
    let e = n.entry.take().expect("a live node");
    (h, n.bytes, e)
  }
}

#[repr(align(64))]
struct Padded<T>(T);

pub struct L1 {
  shards: Box<[Padded<Mutex<Shard>>]>,
  shard_bits: u32,
  seed: u64,
  versions: Arc<Versions>,
  pub evictions: AtomicU64,
  bytes: AtomicI64,
  count: AtomicI64,
  max_entries: i64,
  max_bytes: i64,
  idle_ms: Option<f64>,
  lru: bool,
  /// Some entry may expire (a TTL or idle): `sweep` has work to do.
  expiring: AtomicBool,
}

/// A read's answer: the key's slot, the slot's version read before the
/// lookup, and the entry.
pub struct Read {
  pub slot: usize,
  pub ver: u32,
  pub entry: Option<Arc<Entry>>,
}

impl L1 {
  pub fn new(cfg: &L1Config) -> L1 {
    // Shards of at least 4096 entries (small caches: one list, one sketch),
    // at most 32 of them.
    let want = (cfg.max_entries / 4096).clamp(1, 32);
    let shard_bits = 63 - want.leading_zeros();
    let n = 1usize << shard_bits;
    // TinyLFU sketch: 8 one-byte counters per entry of capacity (moka's
    // sketch has 16 four-bit ones), 16-32 MiB at most in all.
    let per = ((cfg.max_entries as usize).div_ceil(n)).min((1 << 21) / n);
    let shards = (0..n)
      .map(|_| Padded(Mutex::new(Shard::new((!cfg.lru).then(|| Sketch::new(per))))))
      .collect();
    L1 {
      shards,
      shard_bits,
      seed: rand::random::<u64>(),
      versions: Arc::new(Versions::new()),
      evictions: AtomicU64::new(0),
      bytes: AtomicI64::new(0),
      count: AtomicI64::new(0),
      max_entries: cfg.max_entries.min(i64::MAX as u64) as i64,
      max_bytes: cfg
        .max_bytes
        .unwrap_or(i64::MAX as u64)
        .min(i64::MAX as u64) as i64,
      idle_ms: cfg.idle.map(|d| d.as_secs_f64() * 1000.0),
      lru: cfg.lru,
      expiring: AtomicBool::new(cfg.idle.is_some()),
    }
  }

  pub fn versions(&self) -> Arc<Versions> {
    self.versions.clone()
  }

  #[inline]
  fn hash(&self, key: &str) -> u64 {
    hash_key(self.seed, key.as_bytes())
  }

  #[inline]
  fn shard_index(&self, h: u64) -> usize {
    if self.shard_bits == 0 {
      0
    } else {
      (h >> (64 - self.shard_bits)) as usize
    }
  }

  #[inline]
  fn lock(&self, h: u64) -> MutexGuard<'_, Shard> {
    self.shards[self.shard_index(h)].0.lock()
  }

  #[inline]
  pub fn slot(&self, key: &str) -> usize {
    slot_of_hash(self.hash(key))
  }

  /// Whether node `i` is past its stale window or its idle time.
  #[inline]
  fn dead(&self, n: &Node, now: &mut f64) -> bool {
    let e = n.entry.as_ref().expect("a live node");
    if e.stale_until.is_infinite() && self.idle_ms.is_none() {
      return false;
    }
    if now.is_nan() {
      *now = now_ms();
    }
    e.stale_until <= *now || self.idle_ms.is_some_and(|d| *now - n.touched >= d)
  }

  /// Drop node `i` of shard `s` (held): counters and its slot's version.
  fn drop_node(&self, s: &mut Shard, i: u32, cause: Cause) -> Arc<Entry> {
    let (h, bytes, e) = s.take(i);
    self.count.fetch_sub(1, Ordering::Relaxed);
    self.bytes.fetch_sub(bytes as i64, Ordering::Relaxed);
    if cause == Cause::Evicted {
      self.evictions.fetch_add(1, Ordering::Relaxed);
    }
    self.versions.bump(slot_of_hash(h));
    e
  }

  /// Look `key` up: a hit counts as a use (recency, frequency, idle).
  /// `stale`: also an entry past its expiry but inside its stale window.
  pub fn read(&self, key: &str, stale: bool) -> Read {
    let h = self.hash(key);
    let slot = slot_of_hash(h);
    let ver = self.versions.get(slot);
    let mut s = self.lock(h);
    if let Some(sk) = s.sketch.as_mut() {
      sk.incr(h);
    }
    let Some(i) = s.find(h, key) else {
      return Read {
        slot,
        ver,
        entry: None,
      };
    };
    let mut now = f64::NAN;
    if self.dead(&s.nodes[i as usize], &mut now) {
      let old = self.drop_node(&mut s, i, Cause::Expired);
      drop(s);
      drop(old);
      return Read {
        slot,
        ver,
        entry: None,
      };
    }
    let n = &mut s.nodes[i as usize];
    let e = n.entry.as_ref().expect("a live node");
    if !stale && e.expires_at.is_finite() && e.expires_at <= now {
      return Read {
        slot,
        ver,
        entry: None,
      };
    }
    let e = e.clone();
    if self.idle_ms.is_some() {
      n.touched = now;
    }
    s.move_to_front(i);
    Read {
      slot,
      ver,
      entry: Some(e),
    }
  }

  /// A live (not expired) entry.
  pub fn get_live(&self, key: &str) -> Option<Arc<Entry>> {
    self.read(key, false).entry
  }

  /// An entry that may be expired but is still inside its stale window.
  pub fn get_any(&self, key: &str) -> Option<Arc<Entry>> {
    self.read(key, true).entry
  }

  /// Uses of `key` seen elsewhere (a sample of front-cache hits): recency,
  /// frequency (counted `weight` times) and idle time, with no copy of the
  /// entry.
  pub fn touch(&self, key: &str, weight: u32) {
    let h = self.hash(key);
    let mut s = self.lock(h);
    if let Some(sk) = s.sketch.as_mut() {
      for _ in 0..weight {
        sk.incr(h);
      }
    }
    if let Some(i) = s.find(h, key) {
      if self.idle_ms.is_some() {
        s.nodes[i as usize].touched = now_ms();
      }
      s.move_to_front(i);
    }
  }

  /// Entries in L1.
  pub fn entry_count(&self) -> u64 {
    self.count.load(Ordering::Relaxed).max(0) as u64
  }

  /// Bytes (key + value) of the entries in L1.
  pub fn bytes(&self) -> i64 {
    self.bytes.load(Ordering::Relaxed).max(0)
  }

  #[inline]
  fn over(&self, add_count: i64, add_bytes: i64) -> bool {
    self.count.load(Ordering::Relaxed) + add_count > self.max_entries
      || self.bytes.load(Ordering::Relaxed) + add_bytes > self.max_bytes
  }

  /// Make room in shard `s` for `add_count` more entries and `add_bytes`
  /// more bytes, never evicting node `keep`. With `admit` (a new key under
  /// TinyLFU): false, evicting nothing more, as soon as the candidate is not
  /// more frequent than the victim. True also when this shard ran out of
  /// victims (the caller evicts elsewhere).
  fn make_room(
    &self,
    s: &mut Shard,
    add_count: i64,
    add_bytes: i64,
    keep: u32,
    admit: Option<u64>,
  ) -> bool {
    let mut now = f64::NAN;
    while self.over(add_count, add_bytes) {
      let mut v = s.tail;
      if v == keep && v != NIL {
        v = s.nodes[v as usize].prev;
      }
      if v == NIL {
        return true;
      }
      if self.dead(&s.nodes[v as usize], &mut now) {
        self.drop_node(s, v, Cause::Expired);
        continue;
      }
      if let (Some(h), Some(sk)) = (admit, s.sketch.as_ref()) {
        // A candidate at the counters' ceiling ties a victim there for good
        // (saturated reads do not age the sketch): admit it then.
        let f = sk.freq(h);
        if f <= sk.freq(s.nodes[v as usize].hash) && f < 15 {
          return false;
        }
      }
      self.drop_node(s, v, Cause::Evicted);
    }
    true
  }

  /// Over the bounds after an insert into shard `home` that had no victims
  /// left: evict from the other shards' tails, one shard lock at a time.
  fn evict_elsewhere(&self, home: usize) {
    let n = self.shards.len();
    loop {
      let mut progressed = false;
      for j in 1..=n {
        if !self.over(0, 0) {
          return;
        }
        let idx = (home + j) & (n - 1);
        let mut s = self.shards[idx].0.lock();
        let v = s.tail;
        // The home shard's only node is the one just written: it fits alone.
        if v != NIL && !(idx == home && s.head == v) {
          let mut now = f64::NAN;
          let cause = if self.dead(&s.nodes[v as usize], &mut now) {
            Cause::Expired
          } else {
            Cause::Evicted
          };
          self.drop_node(&mut s, v, cause);
          progressed = true;
        }
      }
      if !progressed {
        return;
      }
    }
  }

  /// Insert (or replace) and bump the key's slot. Returns the slot and, when
  /// the value is in L1, the version the slot now has: a front cache may
  /// then hold the written value under that version (any later change bumps
  /// it again). `maxEntries` and `maxBytes` hold when it returns: a
  /// value heavier than `maxBytes` is not kept (the key's old value goes),
  /// and under TinyLFU a new key less frequent than the entry it would
  /// displace is not admitted (counted as an eviction).
  pub fn insert(&self, key: &str, e: Entry) -> (usize, Option<u32>) {
    let h = self.hash(key);
    let slot = slot_of_hash(h);
    let bytes = (key.len() + e.val.weight()) as i64;
    if bytes > self.max_bytes {
      self.remove(key);
      return (slot, None);
    }
    let now = if e.stale_until.is_finite() || self.idle_ms.is_some() {
      if e.stale_until.is_finite() && !self.expiring.load(Ordering::Relaxed) {
        self.expiring.store(true, Ordering::Relaxed);
      }
      now_ms()
    } else {
      0.0
    };
    let e = Arc::new(e);
    let home = self.shard_index(h);
    let mut s = self.shards[home].0.lock();
    let mut old = None;
    let mut kept = true;
    match s.find(h, key) {
      Some(i) => {
        let n = &mut s.nodes[i as usize];
        let grow = bytes - n.bytes as i64;
        old = n.entry.replace(e);
        n.bytes = bytes as u64;
        n.touched = now;
        self.bytes.fetch_add(grow, Ordering::Relaxed);
        s.move_to_front(i);
        if grow > 0 {
          self.make_room(&mut s, 0, 0, i, None);
        }
      }
      None => {
        let admit = if self.lru { None } else { Some(h) };
        if self.make_room(&mut s, 1, bytes, NIL, admit) {
          s.add(key.into(), h, e, bytes as u64, now);
          self.count.fetch_add(1, Ordering::Relaxed);
          self.bytes.fetch_add(bytes, Ordering::Relaxed);
        } else {
          kept = false;
          self.evictions.fetch_add(1, Ordering::Relaxed);
        }
      }
    }
    // Every change of this slot is made under this lock: the value is the
    // latest as of this version.
    let ver = self.versions.bump(slot);
    drop(s);
    drop(old);
    if self.over(0, 0) {
      self.evict_elsewhere(home);
    }
    (slot, kept.then_some(ver))
  }

  /// Remove `key`; true when it was there (live or inside its stale window).
  pub fn remove(&self, key: &str) -> bool {
    let h = self.hash(key);
    let mut s = self.lock(h);
    let mut existed = false;
    let mut old = None;
    if let Some(i) = s.find(h, key) {
      let mut now = f64::NAN;
      existed = !self.dead(&s.nodes[i as usize], &mut now);
      old = Some(self.drop_node(&mut s, i, Cause::Removed));
    } else {
      self.versions.bump(slot_of_hash(h));
    }
    drop(s);
    drop(old);
    existed
  }

  pub fn clear(&self) {
    let per = SLOTS >> self.shard_bits;
    for (k, sh) in self.shards.iter().enumerate() {
      let mut s = sh.0.lock();
      self.versions.bump_range(k * per..(k + 1) * per);
      let sketch = s.sketch.take();
      let old = std::mem::replace(&mut *s, Shard::new(sketch));
      let (n, b) = old
        .nodes
        .iter()
        .filter(|x| x.entry.is_some())
        .fold((0i64, 0i64), |(n, b), x| (n + 1, b + x.bytes as i64));
      self.count.fetch_sub(n, Ordering::Relaxed);
      self.bytes.fetch_sub(b, Ordering::Relaxed);
      drop(s);
      drop(old);
    }
  }

  /// Bump every slot, dropping nothing: a change to keys that cannot be
  /// listed (a glob delete in L2 of keys this L1 may not hold) so that no
  /// fill or front-cache entry taken at an older version is kept. Each
  /// shard's slots under its lock.
  pub fn bump_all(&self) {
    let per = SLOTS >> self.shard_bits;
    for (k, sh) in self.shards.iter().enumerate() {
      let _s = sh.0.lock();
      self.versions.bump_range(k * per..(k + 1) * per);
    }
  }

  /// Drop every entry past its stale window or idle time (before counting).
  pub fn sweep(&self) {
    if !self.expiring.load(Ordering::Relaxed) {
      return;
    }
    for sh in self.shards.iter() {
      let mut s = sh.0.lock();
      let mut now = f64::NAN;
      let mut i = s.tail;
      while i != NIL {
        let prev = s.nodes[i as usize].prev;
        if self.dead(&s.nodes[i as usize], &mut now) {
          self.drop_node(&mut s, i, Cause::Expired);
        }
        i = prev;
      }
    }
  }

  /// Keys of the entries matching `pred`, but for those past their stale
  /// window or idle time (gone, though not dropped yet).
  pub fn keys_matching(&self, mut pred: impl FnMut(&str, &Entry) -> bool) -> Vec<String> {
    let mut out = Vec::new();
    let mut now = f64::NAN;
    for sh in self.shards.iter() {
      let s = sh.0.lock();
      for n in s.nodes.iter() {
        if let Some(e) = &n.entry {
          if !self.dead(n, &mut now) && pred(&n.key, e) {
            out.push(n.key.to_string());
          }
        }
      }
    }
    out
  }
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
      tags: None,
    }
  }

  fn cfg(max_entries: u64, max_bytes: Option<u64>, lru: bool) -> L1Config {
    L1Config {
      max_entries,
      max_bytes,
      idle: None,
      lru,
    }
  }

  #[test]
  fn versions_bump_on_every_change() {
    let l1 = L1::new(&cfg(100, None, false));
    let s = l1.slot("k");
    let v0 = l1.versions.get(s);
    let (slot, fill) = l1.insert("k", entry("a", None));
    let v1 = l1.versions.get(s);
    assert_ne!(v0, v1);
    assert_eq!((slot, fill), (s, Some(v1)));
    // Replacing bumps exactly once: the writer may still fill its front cache.
    let (_, fill) = l1.insert("k", entry("b", None));
    assert_eq!(fill, Some(v1.wrapping_add(1)));
    let v1 = l1.versions.get(s);
    assert!(matches!(&l1.get_live("k").unwrap().val, Val::Str(x) if x == "b"));
    assert!(l1.remove("k"));
    assert_ne!(l1.versions.get(s), v1);
    assert!(l1.get_live("k").is_none());
  }

  #[test]
  fn bounded_by_entries_after_every_insert() {
    for lru in [true, false] {
      for cap in [1u64, 7, 50, 300, 5000] {
        let l1 = L1::new(&cfg(cap, None, lru));
        for i in 0..(cap * 10) {
          l1.insert(&format!("k{i}"), entry("v", None));
          assert!(
            l1.entry_count() <= cap,
            "cap {cap} lru {lru}: {}",
            l1.entry_count()
          );
          if i % 97 == 0 {
            let live = l1.keys_matching(|_, _| true).len() as u64;
            assert_eq!(live, l1.entry_count());
          }
        }
        assert!(l1.evictions.load(Ordering::Relaxed) >= cap * 9);
      }
    }
  }

  #[test]
  fn bounded_by_bytes_after_every_insert() {
    for cap in [300u64, 5000] {
      let l1 = L1::new(&cfg(1_000_000, Some(cap), false));
      for i in 0..2000 {
        let v = "x".repeat(i % 97);
        l1.insert(&format!("k{}", i % 500), entry(&v, None));
        assert!(l1.bytes() as u64 <= cap, "{}", l1.bytes());
        let sum: usize = l1
          .keys_matching(|_, _| true)
          .iter()
          .map(|k| k.len() + l1.get_any(k).unwrap().val.weight())
          .sum();
        assert_eq!(sum as i64, l1.bytes());
      }
    }
    // Heavier than the whole cache: not kept, and the old value goes.
    let l1 = L1::new(&cfg(10, Some(100), false));
    l1.insert("k", entry("small", None));
    let (_, fill) = l1.insert("k", entry(&"x".repeat(200), None));
    assert_eq!(fill, None);
    assert!(l1.get_any("k").is_none());
    assert_eq!((l1.entry_count(), l1.bytes()), (0, 0));
  }

  #[test]
  fn tinylfu_keeps_hot_keys_through_a_scan() {
    let l1 = L1::new(&cfg(1000, None, false));
    for _ in 0..5 {
      for i in 0..500 {
        if l1.get_live(&format!("hot{i}")).is_none() {
          l1.insert(&format!("hot{i}"), entry("v", None));
        }
      }
    }
    // One-off keys, 20 times the capacity, while the hot keys are still read.
    for i in 0..20_000 {
      if l1.get_live(&format!("scan{i}")).is_none() {
        l1.insert(&format!("scan{i}"), entry("v", None));
      }
      if l1.get_live(&format!("hot{}", i % 500)).is_none() {
        l1.insert(&format!("hot{}", i % 500), entry("v", None));
      }
    }
    let kept = (0..500)
      .filter(|i| l1.get_live(&format!("hot{i}")).is_some())
      .count();
    assert!(kept >= 450, "{kept} of 500 hot keys kept");
    // LRU: the scan flushes them.
    let lru = L1::new(&cfg(1000, None, true));
    for i in 0..500 {
      lru.insert(&format!("hot{i}"), entry("v", None));
    }
    for i in 0..2_000 {
      lru.insert(&format!("scan{i}"), entry("v", None));
    }
    assert_eq!(
      (0..500)
        .filter(|i| lru.get_live(&format!("hot{i}")).is_some())
        .count(),
      0
    );
  }

  #[test]
  fn tinylfu_admits_a_new_hot_key_once_the_old_ones_go_cold() {
    // Keys read until their counters saturate (15), then never again; then
    // a small new working set read over and over: each of its keys
    // saturates at 15 too, and reads of saturated keys do not age the
    // sketch, so "more frequent than the victim" alone never lets it in.
    for (cap, old, new) in [(1u64, 1usize, 1usize), (50, 50, 3)] {
      let l1 = L1::new(&cfg(cap, None, false));
      for i in 0..old {
        let k = format!("old{i}");
        l1.insert(&k, entry("v", None));
        for _ in 0..40 {
          l1.get_live(&k);
        }
      }
      let mut admitted = 0;
      for r in 0..20_000 {
        let k = format!("new{}", r % new);
        if l1.get_live(&k).is_none() {
          l1.insert(&k, entry("v", None));
        }
        if r >= 19_000 && l1.get_live(&k).is_some() {
          admitted += 1;
        }
      }
      assert!(
        admitted > 0,
        "cap {cap}: the new hot keys were never admitted"
      );
    }
  }

  #[test]
  fn expiry_follows_the_clock() {
    let l1 = L1::new(&cfg(10, None, false));
    l1.insert("t", entry("v", Some(60_000.0)));
    assert!(l1.get_live("t").is_some());
    crate::runtime::advance_clock_ms(61_000.0);
    assert!(l1.get_live("t").is_none());
    l1.insert("u", entry("v", Some(1_000.0)));
    assert_eq!(l1.entry_count(), 1);
    crate::runtime::advance_clock_ms(2_000.0);
    l1.sweep();
    assert_eq!((l1.entry_count(), l1.bytes()), (0, 0));
  }

  #[test]
  fn threads_see_each_others_writes() {
    let l1 = Arc::new(L1::new(&cfg(100_000, None, false)));
    let hs: Vec<_> = (0..4)
      .map(|t| {
        let l1 = l1.clone();
        std::thread::spawn(move || {
          for i in 0..20_000 {
            l1.insert(&format!("t{t}:{i}"), entry(&format!("{i}"), None));
            let other = (t + 1) % 4;
            if let Some(e) = l1.get_live(&format!("t{other}:{i}")) {
              assert!(matches!(&e.val, Val::Str(x) if *x == i.to_string()));
            }
          }
        })
      })
      .collect();
    for h in hs {
      h.join().unwrap();
    }
    assert_eq!(l1.entry_count(), 80_000);
    assert!(l1.get_live("t3:19999").is_some());
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
  //! `cargo test --release --lib l1_write_cost -- --ignored --nocapture`:
  //! what an L1 write and read cost, beside moka (what L1 was before) and a
  //! plain hash map (the floor under `setSync`).
  use super::*;
  use moka::sync::Cache;
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
    time("moka get", N, |i| {
      std::hint::black_box(plain.get(&keys[i % K]));
    });
    let new_entry = || Entry {
      val: Val::Json(text.clone()),
      expires_at: f64::INFINITY,
      stale_until: f64::INFINITY,
      tags: None,
    };
    for (name, cap) in [
      ("resident", 20_000),
      ("full: every insert evicts", K as u64 / 2),
    ] {
      for lru in [false, true] {
        let l1 = L1::new(&L1Config {
          max_entries: cap,
          max_bytes: None,
          idle: None,
          lru,
        });
        let policy = if lru { "lru" } else { "tinylfu" };
        time(&format!("L1::insert, {policy}, {name}"), N, |i| {
          std::hint::black_box(l1.insert(&keys[(i * 7919) % K], new_entry()));
        });
        time(&format!("L1::read, {policy}, {name}"), N, |i| {
          std::hint::black_box(l1.read(&keys[(i * 7919) % K], false));
        });
      }
    }
    time("key + value String copies", N, |i| {
      std::hint::black_box((keys[i % K].clone(), text.clone()));
    });
    let mut m = std::collections::HashMap::new();
    time("std HashMap insert (reference)", N, |i| {
      m.insert(keys[i % K].clone(), Arc::new(text.clone()));
    });
  }
}

#[cfg(test)]
mod hit_ratio {
  //! `cargo test --lib hit_ratio_zipf_with_scans -- --ignored --nocapture`:
  //! the benchmark's hit-ratio workload (benchmark/cache.mts `hitRatio`) on
  //! L1 alone.
  use super::*;

  #[test]
  #[ignore]
  fn hit_ratio_zipf_with_scans() {
    let (u, cap, s) = (100_000usize, 2_000u64, 0.9f64);
    let mut cdf = vec![0f64; u];
    let mut acc = 0.0;
    for k in 1..=u {
      acc += 1.0 / (k as f64).powf(s);
      cdf[k - 1] = acc;
    }
    for c in cdf.iter_mut() {
      *c /= acc;
    }
    let mut seed: u64 = 12345;
    let mut rnd = || {
      seed = (seed * 1103515245 + 12345) % 2147483648;
      seed as f64 / 2147483648.0
    };
    let mut stream = Vec::new();
    let mut scan = 0;
    for r in 0..400_000 {
      let x = rnd();
      let k = cdf.partition_point(|c| *c < x);
      stream.push(format!("z{k}"));
      if r % 20_000 == 19_999 {
        for _ in 0..5_000 {
          stream.push(format!("scan{scan}"));
          scan += 1;
        }
      }
    }
    for lru in [false, true] {
      let l1 = L1::new(&L1Config {
        max_entries: cap,
        max_bytes: None,
        idle: None,
        lru,
      });
      let mut hits = 0;
      for k in &stream {
        if l1.get_live(k).is_some() {
          hits += 1;
        } else {
          l1.insert(
            k,
            Entry {
              val: Val::Num(1.0),
              expires_at: f64::INFINITY,
              stale_until: f64::INFINITY,
              tags: None,
            },
          );
        }
      }
      println!(
        "{}: hit ratio {:.1}%",
        if lru { "lru" } else { "tinylfu" },
        100.0 * hits as f64 / stream.len() as f64
      );
    }
    let moka: moka::sync::Cache<String, u32> =
      moka::sync::Cache::builder().max_capacity(cap).build();
    let mut hits = 0;
    for k in &stream {
      if moka.get(k).is_some() {
        hits += 1;
      } else {
        moka.insert(k.clone(), 1);
        moka.run_pending_tasks();
      }
    }
    println!(
      "moka: hit ratio {:.1}%",
      100.0 * hits as f64 / stream.len() as f64
    );
  }
}

#[cfg(test)]
mod stress {
  use super::*;
  use rand::{Rng, SeedableRng};
  use std::collections::HashMap;

  fn ent(v: String) -> Entry {
    Entry {
      val: Val::Str(v),
      expires_at: f64::INFINITY,
      stale_until: f64::INFINITY,
      tags: None,
    }
  }

  fn check_counters(l1: &L1) {
    let (mut n, mut b) = (0i64, 0i64);
    for sh in l1.shards.iter() {
      let s = sh.0.lock();
      for x in s.nodes.iter().filter(|x| x.entry.is_some()) {
        n += 1;
        b += x.bytes as i64;
      }
    }
    assert_eq!(l1.count.load(Ordering::Relaxed), n, "count drifted");
    assert_eq!(l1.bytes.load(Ordering::Relaxed), b, "bytes drifted");
  }

  /// Many threads: replaces of other sizes, removes, clears, reads; a model
  /// front cache per thread must never validate a value that changed.
  #[test]
  fn concurrent_churn_keeps_counters_bounds_and_versions() {
    for (max_entries, max_bytes, lru) in [
      (9000u64, Some(3000u64), false),
      (9000, Some(3000), true),
      (40_000, None, false),
      (5, Some(400), false),
    ] {
      let l1 = Arc::new(L1::new(&L1Config {
        max_entries,
        max_bytes,
        idle: None,
        lru,
      }));
      let hs: Vec<_> = (0..8u64)
        .map(|t| {
          let l1 = l1.clone();
          std::thread::spawn(move || {
            let mut rng = rand::rngs::StdRng::seed_from_u64(42 + t);
            let mut front: HashMap<String, (u32, String)> = HashMap::new();
            for i in 0..60_000u64 {
              let key = format!("k{}", rng.random_range(0..300u32));
              let slot = l1.slot(&key);
              match rng.random_range(0..100u32) {
                0..=39 => {
                  let v = format!("{t}:{i}:{}", "x".repeat(rng.random_range(0..120)));
                  match l1.insert(&key, ent(v.clone())) {
                    (_, Some(ver)) => {
                      front.insert(key, (ver, v));
                    }
                    _ => {
                      front.remove(&key);
                    }
                  }
                }
                40..=49 => {
                  l1.remove(&key);
                }
                50 if t == 0 && i % 16 == 0 => l1.clear(),
                _ => {
                  let v1 = l1.versions.get(slot);
                  let r = l1.read(&key, true);
                  let v2 = l1.versions.get(slot);
                  if let Some((fv, fval)) = front.get(&key) {
                    if *fv == v1 && v1 == v2 {
                      match &r.entry {
                        Some(e) => assert!(
                          matches!(&e.val, Val::Str(x) if x == fval),
                          "front cache valid at {fv} but L1 changed"
                        ),
                        None => panic!("front cache valid at {fv} but key gone"),
                      }
                    }
                  }
                  match r.entry {
                    Some(e) => {
                      if let Val::Str(x) = &e.val {
                        front.insert(key, (r.ver, x.clone()));
                      }
                    }
                    None => {
                      front.remove(&key);
                    }
                  }
                }
              }
            }
          })
        })
        .collect();
      for h in hs {
        h.join().unwrap();
      }
      check_counters(&l1);
      assert!(l1.entry_count() <= max_entries, "{}", l1.entry_count());
      if let Some(mb) = max_bytes {
        assert!(l1.bytes() as u64 <= mb, "{}", l1.bytes());
      }
    }
  }
}
