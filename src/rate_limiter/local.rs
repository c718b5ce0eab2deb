//! The five algorithms as pure state transitions over an injected clock, and
//! the in-process store (a DashMap of per-key state bounded by `maxKeys`).
//!
//! Every algorithm is `check(state, now, cost, params, consume) -> Decision`:
//! no clock is read and nothing but `state` changes, so the unit tests below
//! drive them with any timeline they like. Times are milliseconds (f64).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::DashMap;
use parking_lot::Mutex;

/// Slack for float comparisons of units (sums of fractional costs, refills).
const EPS: f64 = 1e-6;
/// Slack for float comparisons of times (ms): instants closer than this are
/// one instant, so waiting a reported retry-after is always enough.
const TEPS: f64 = 1e-9;

/// The limit of one limiter: `limit` units per `window` ms.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
  pub limit: f64,
  pub window: f64,
}

/// The answer to one check. `retry_after` is `f64::INFINITY` when the cost
/// can never be admitted (cost > limit).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
  pub allowed: bool,
  /// Whole units still available after this check.
  pub remaining: f64,
  /// 0 when allowed; else ms until this cost would be admitted.
  pub retry_after: f64,
  /// ms until the limit is fully restored (nothing consumed remains counted).
  pub reset: f64,
}

impl Decision {
  /// Whole ms, rounded up (waiting `retry_after` is always enough), and
  /// whole remaining units, rounded down.
  pub(crate) fn new(allowed: bool, remaining: f64, retry_after: f64, reset: f64) -> Decision {
    Decision {
      allowed,
      remaining: (remaining + EPS).floor().max(0.0),
      retry_after: if allowed { 0.0 } else { ceil_ms(retry_after) },
      reset: ceil_ms(reset),
    }
  }
}

fn ceil_ms(ms: f64) -> f64 {
  if ms.is_infinite() {
    return ms;
  }
  // 700.0000000001 is 700: float noise must not add a millisecond.
  (ms - TEPS).ceil().max(0.0)
}

/// One rate-limiting algorithm.
pub trait Algorithm: Send + Sync + 'static {
  type State: Default + Send + Sync + 'static;
  /// Check `cost` units at `now`; when allowed and `consume`, take them.
  fn check(s: &mut Self::State, now: f64, cost: f64, p: &Params, consume: bool) -> Decision;
  /// True when the state says nothing a fresh state would not (it may be dropped).
  fn is_idle(s: &Self::State, now: f64, p: &Params) -> bool;
}

// ------------------------------------------------------------ sliding window

/// Exact sliding window: a log of admissions. An admission at `t` counts
/// against every check in `[t, t + window)`, so no half-open interval of
/// length `window` ever holds more than `limit` admitted units.
pub struct SlidingLog;

/// The sliding-window log is exact for `limit <= 1024`; above it each key
/// keeps at most 1025 entries (16 bytes each: about 16 KiB a key) by
/// recording admissions at the end of their `windowMs / 1024` slot, which
/// admits at most `limit` in any window and can deny up to one slot early.
pub const SLIDING_LOG_MAX_ENTRIES: usize = 1024;

#[derive(Default, Debug, Clone)]
pub struct LogState {
  /// (time, cost) in time order.
  log: VecDeque<(f64, f64)>,
  sum: f64,
}

impl LogState {
  fn prune(&mut self, now: f64, window: f64) {
    while let Some(&(t, c)) = self.log.front() {
      if t + window > now + TEPS {
        break;
      }
      self.sum -= c;
      self.log.pop_front();
    }
    if self.log.is_empty() {
      self.sum = 0.0;
    }
  }
  fn reset_at(&self, now: f64, window: f64) -> f64 {
    self
      .log
      .back()
      .map(|&(t, _)| t + window - now)
      .unwrap_or(0.0)
  }
}

impl Algorithm for SlidingLog {
  type State = LogState;
  fn check(s: &mut LogState, now: f64, cost: f64, p: &Params, consume: bool) -> Decision {
    s.prune(now, p.window);
    if cost > p.limit {
      return Decision::new(
        false,
        p.limit - s.sum,
        f64::INFINITY,
        s.reset_at(now, p.window),
      );
    }
    if s.sum + cost <= p.limit + EPS {
      if consume && cost > 0.0 {
        // A clock that stepped back must not break the log's order.
        let mut t = s.log.back().map(|&(b, _)| b.max(now)).unwrap_or(now);
        // Memory bound: up to SLIDING_LOG_MAX_ENTRIES the log is exact (at
        // most ceil(limit) entries). Above it, admissions are recorded at
        // the end of their slot of window / SLIDING_LOG_MAX_ENTRIES ms, so
        // a key holds at most SLIDING_LOG_MAX_ENTRIES + 1 entries; units then
        // count up to one slot longer than exact, which only ever makes the
        // limit stricter (never more than `limit` in any window).
        let exact = p.limit.ceil() <= SLIDING_LOG_MAX_ENTRIES as f64;
        if !exact {
          let slot = p.window / SLIDING_LOG_MAX_ENTRIES as f64;
          t = (t / slot).ceil() * slot;
        }
        // Past the bound anyway (fractional costs) the newest entry absorbs
        // this one, which is stricter too (units are counted until later).
        let max_entries = if exact {
          p.limit.ceil().max(1.0) as usize
        } else {
          SLIDING_LOG_MAX_ENTRIES + 1
        };
        let full = s.log.len() >= max_entries;
        match s.log.back_mut() {
          Some(b) if b.0 == t || full => {
            b.0 = t;
            b.1 += cost;
          }
          _ => s.log.push_back((t, cost)),
        }
        s.sum += cost;
      }
      return Decision::new(true, p.limit - s.sum, 0.0, s.reset_at(now, p.window));
    }
    // Denied: the cost fits once enough of the oldest units have left.
    let need = s.sum + cost - p.limit;
    let mut freed = 0.0;
    let mut retry = f64::INFINITY;
    for &(t, c) in &s.log {
      freed += c;
      if freed + EPS >= need {
        retry = t + p.window - now;
        break;
      }
    }
    Decision::new(false, p.limit - s.sum, retry, s.reset_at(now, p.window))
  }
  fn is_idle(s: &LogState, now: f64, p: &Params) -> bool {
    s.log
      .back()
      .is_none_or(|&(t, _)| t + p.window <= now + TEPS)
  }
}

// ---------------------------------------------------- sliding window counter

/// The sliding-window approximation (O(1) per key): the previous fixed
/// window's count, weighted by how much of it still overlaps the sliding
/// window, plus the current window's count. Windows are aligned to multiples
/// of `window` on the limiter's clock.
pub struct SlidingCounter;

#[derive(Debug, Clone, Copy)]
pub struct CounterState {
  idx: f64,
  prev: f64,
  curr: f64,
}

impl Default for CounterState {
  fn default() -> Self {
    CounterState {
      idx: f64::NEG_INFINITY,
      prev: 0.0,
      curr: 0.0,
    }
  }
}

impl CounterState {
  /// The state as of `now` (windows rolled forward).
  fn at(&self, now: f64, window: f64) -> CounterState {
    let k = ((now + TEPS) / window).floor();
    if k == self.idx {
      *self
    } else if k == self.idx + 1.0 {
      CounterState {
        idx: k,
        prev: self.curr,
        curr: 0.0,
      }
    } else {
      CounterState {
        idx: k,
        prev: 0.0,
        curr: 0.0,
      }
    }
  }
}

impl Algorithm for SlidingCounter {
  type State = CounterState;
  fn check(s: &mut CounterState, now: f64, cost: f64, p: &Params, consume: bool) -> Decision {
    let (l, w) = (p.limit, p.window);
    let mut st = s.at(now, w);
    let e = now - st.idx * w;
    let est = |st: &CounterState| st.prev * (1.0 - e / w) + st.curr;
    let reset = |st: &CounterState| {
      if st.curr > 0.0 {
        2.0 * w - e
      } else if st.prev > 0.0 {
        w - e
      } else {
        0.0
      }
    };
    if cost > l {
      return Decision::new(false, l - est(&st), f64::INFINITY, reset(&st));
    }
    if est(&st) + cost <= l + EPS {
      if consume && cost > 0.0 {
        st.curr += cost;
        *s = st;
      }
      return Decision::new(true, l - est(&st), 0.0, reset(&st));
    }
    // Denied. Inside this window the previous count keeps fading; if the
    // current count alone is too much, wait for the next window, where this
    // window's count fades in turn.
    let retry = if st.curr + cost <= l && st.prev > 0.0 {
      w * (1.0 - (l - st.curr - cost) / st.prev) - e
    } else {
      (w - e) + (w * (1.0 - (l - cost) / st.curr)).max(0.0)
    };
    Decision::new(false, l - est(&st), retry, reset(&st))
  }
  fn is_idle(s: &CounterState, now: f64, p: &Params) -> bool {
    let st = s.at(now, p.window);
    st.prev == 0.0 && st.curr == 0.0
  }
}

// --------------------------------------------------------------- fixed window

/// Fixed window: a window of `window` ms starts at the first admission after
/// the previous one ended (like rate-limiter-flexible and Redis `PX`).
pub struct FixedWindow;

#[derive(Debug, Clone, Copy)]
pub struct FixedState {
  start: f64,
  count: f64,
}

impl Default for FixedState {
  fn default() -> Self {
    FixedState {
      start: f64::NEG_INFINITY,
      count: 0.0,
    }
  }
}

impl Algorithm for FixedWindow {
  type State = FixedState;
  fn check(s: &mut FixedState, now: f64, cost: f64, p: &Params, consume: bool) -> Decision {
    let live = now + TEPS < s.start + p.window;
    let count = if live { s.count } else { 0.0 };
    let reset = if live && count > 0.0 {
      s.start + p.window - now
    } else {
      0.0
    };
    if cost > p.limit {
      return Decision::new(false, p.limit - count, f64::INFINITY, reset);
    }
    if count + cost <= p.limit + EPS {
      if consume && cost > 0.0 {
        if !live {
          s.start = now;
        }
        s.count = count + cost;
        let reset = s.start + p.window - now;
        return Decision::new(true, p.limit - s.count, 0.0, reset);
      }
      return Decision::new(true, p.limit - count, 0.0, reset);
    }
    Decision::new(false, p.limit - count, reset, reset)
  }
  fn is_idle(s: &FixedState, now: f64, p: &Params) -> bool {
    now + TEPS >= s.start + p.window
  }
}

// --------------------------------------------------------------- token bucket

/// Token bucket: holds up to `limit` tokens, refilled continuously at
/// `limit / window` per ms; starts full.
pub struct TokenBucket;

#[derive(Debug, Clone, Copy)]
pub struct BucketState {
  tokens: f64,
  last: f64,
}

impl Default for BucketState {
  fn default() -> Self {
    BucketState {
      tokens: 0.0,
      last: f64::NEG_INFINITY,
    }
  }
}

fn refill(s: &BucketState, now: f64, p: &Params) -> f64 {
  let elapsed = (now - s.last).max(0.0);
  (s.tokens + elapsed * p.limit / p.window).min(p.limit)
}

impl Algorithm for TokenBucket {
  type State = BucketState;
  fn check(s: &mut BucketState, now: f64, cost: f64, p: &Params, consume: bool) -> Decision {
    let rate = p.limit / p.window;
    let tokens = refill(s, now, p);
    if cost > p.limit {
      return Decision::new(false, tokens, f64::INFINITY, (p.limit - tokens) / rate);
    }
    if tokens + EPS >= cost {
      let left = if consume {
        (tokens - cost).max(0.0)
      } else {
        tokens
      };
      if consume && cost > 0.0 {
        *s = BucketState {
          tokens: left,
          last: now.max(s.last),
        };
      }
      return Decision::new(true, left, 0.0, (p.limit - left) / rate);
    }
    Decision::new(
      false,
      tokens,
      (cost - tokens) / rate,
      (p.limit - tokens) / rate,
    )
  }
  fn is_idle(s: &BucketState, now: f64, p: &Params) -> bool {
    refill(s, now, p) >= p.limit
  }
}

// ----------------------------------------------------------------------- gcra

/// GCRA (generic cell rate algorithm): one timestamp per key, the
/// theoretical arrival time. Each unit moves it `window / limit` ms forward;
/// a request passes while it stays within `window` of now (a burst of up to
/// `limit` units, then one unit every `window / limit` ms).
pub struct Gcra;

#[derive(Debug, Clone, Copy)]
pub struct GcraState {
  tat: f64,
}

impl Default for GcraState {
  fn default() -> Self {
    GcraState {
      tat: f64::NEG_INFINITY,
    }
  }
}

impl Algorithm for Gcra {
  type State = GcraState;
  fn check(s: &mut GcraState, now: f64, cost: f64, p: &Params, consume: bool) -> Decision {
    let t = p.window / p.limit;
    let tat = s.tat.max(now);
    let remaining = |tat: f64| (p.window - (tat - now)) / t;
    if cost > p.limit {
      return Decision::new(false, remaining(tat), f64::INFINITY, tat - now);
    }
    let new_tat = tat + cost * t;
    let allow_at = new_tat - p.window;
    if allow_at <= now + EPS * t {
      let after = if consume { new_tat } else { tat };
      if consume && cost > 0.0 {
        s.tat = new_tat;
      }
      return Decision::new(true, remaining(after).min(p.limit), 0.0, after - now);
    }
    Decision::new(false, remaining(tat), allow_at - now, tat - now)
  }
  fn is_idle(s: &GcraState, now: f64, _p: &Params) -> bool {
    s.tat <= now
  }
}

// ---------------------------------------------------------------------- store

const INLINE: usize = 22;

/// A key of the store: up to 22 bytes inline (most keys: ids, IPs), else on
/// the heap. Inline keys cost no allocation and no extra cache miss per
/// lookup, and take 24 bytes instead of 16 plus a heap block.
#[derive(Clone)]
enum Key {
  Inline { len: u8, bytes: [u8; INLINE] },
  Heap(Box<str>),
}

impl Key {
  fn new(s: &str) -> Key {
    if s.len() <= INLINE {
      let mut bytes = [0u8; INLINE];
      bytes[..s.len()].copy_from_slice(s.as_bytes());
      Key::Inline {
        len: s.len() as u8,
        bytes,
      }
    } else {
      Key::Heap(s.into())
    }
  }
  fn as_str(&self) -> &str {
    match self {
      // Built from a &str, so valid UTF-8.
      Key::Inline { len, bytes } => unsafe {
        std::str::from_utf8_unchecked(&bytes[..*len as usize])
      },
      Key::Heap(s) => s,
    }
  }
}

impl std::borrow::Borrow<str> for Key {
  fn borrow(&self) -> &str {
    self.as_str()
  }
}

// Hash and Eq exactly as `str`'s, so the map can be searched with a `&str`.
impl std::hash::Hash for Key {
  fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
    self.as_str().hash(h)
  }
}

impl PartialEq for Key {
  fn eq(&self, o: &Key) -> bool {
    self.as_str() == o.as_str()
  }
}

impl Eq for Key {}

struct Slot<S> {
  state: S,
  /// When the key was last checked (limiter clock, ms).
  last: f64,
}

/// Per-key state in process, for one algorithm. Memory is bounded by
/// `max_keys`: past it, the keys idle longest (fully restored keys first)
/// are dropped in a batch.
pub struct Store<A: Algorithm> {
  map: DashMap<Key, Slot<A::State>>,
  len: AtomicUsize,
  params: Params,
  max_keys: usize,
  evicting: Mutex<()>,
}

/// What the engine needs from a store, whatever its algorithm.
pub trait LocalStore: Send + Sync {
  fn check(&self, key: &str, now: f64, cost: f64, consume: bool) -> Decision;
  fn remove(&self, key: &str);
  fn len(&self) -> usize;
  fn is_empty(&self) -> bool {
    self.len() == 0
  }
  /// Drop every key whose state is fully restored. Returns how many went.
  fn sweep(&self, now: f64) -> usize;
}

impl<A: Algorithm> Store<A> {
  pub fn new(params: Params, max_keys: usize) -> Self {
    Store {
      map: DashMap::new(),
      len: AtomicUsize::new(0),
      params,
      max_keys: max_keys.max(1),
      evicting: Mutex::new(()),
    }
  }

  /// Drop the keys idle longest until the store is a batch below its bound.
  /// O(n) for n / 16 keys: amortised O(1) per new key.
  fn evict(&self, now: f64) {
    let Some(_guard) = self.evicting.try_lock() else {
      return;
    };
    let len = self.len.load(Ordering::Relaxed);
    if len <= self.max_keys {
      return;
    }
    let batch = (self.max_keys / 16).max(1).min(self.max_keys - 1);
    let target = self.max_keys - batch;
    let p = self.params;
    let rank = |s: &Slot<A::State>| {
      if A::is_idle(&s.state, now, &p) {
        f64::NEG_INFINITY
      } else {
        s.last
      }
    };
    let mut ranks: Vec<f64> = self.map.iter().map(|e| rank(e.value())).collect();
    if ranks.len() <= target {
      return;
    }
    let drop_n = ranks.len() - target;
    let (below, nth, _) = ranks.select_nth_unstable_by(drop_n - 1, |a, b| a.total_cmp(b));
    let threshold = *nth;
    // Ties at the threshold: drop only as many as needed.
    let mut ties = drop_n - below.iter().filter(|r| **r < threshold).count();
    let mut removed = 0usize;
    self.map.retain(|_, s| {
      let r = rank(s);
      let go = r < threshold || (r == threshold && ties > 0);
      if go {
        if r == threshold {
          ties -= 1;
        }
        removed += 1;
      }
      !go
    });
    self.len.fetch_sub(removed, Ordering::Relaxed);
  }
}

impl<A: Algorithm> LocalStore for Store<A> {
  fn check(&self, key: &str, now: f64, cost: f64, consume: bool) -> Decision {
    // A fresh state admits any cost up to the limit, so such a check stores
    // the key whether or not it is there: one lookup that inserts if absent
    // (for inline keys, whose `Key` costs no allocation).
    let stores = consume && cost > 0.0 && cost <= self.params.limit;
    if !(stores && key.len() <= INLINE) {
      if let Some(mut e) = self.map.get_mut(key) {
        e.last = now;
        return A::check(&mut e.state, now, cost, &self.params, consume);
      }
      if !stores {
        // Unknown key, nothing taken: answer for a fresh state, store nothing.
        return A::check(&mut A::State::default(), now, cost, &self.params, consume);
      }
    }
    let mut inserted = false;
    let d = {
      let mut e = self.map.entry(Key::new(key)).or_insert_with(|| {
        inserted = true;
        Slot {
          state: A::State::default(),
          last: now,
        }
      });
      e.last = now;
      A::check(&mut e.state, now, cost, &self.params, consume)
    };
    if inserted && self.len.fetch_add(1, Ordering::Relaxed) + 1 > self.max_keys {
      self.evict(now);
    }
    d
  }

  fn remove(&self, key: &str) {
    if self.map.remove(key).is_some() {
      self.len.fetch_sub(1, Ordering::Relaxed);
    }
  }

  fn len(&self) -> usize {
    self.len.load(Ordering::Relaxed)
  }

  fn sweep(&self, now: f64) -> usize {
    let p = self.params;
    let mut removed = 0usize;
    self.map.retain(|_, s| {
      let idle = A::is_idle(&s.state, now, &p);
      removed += idle as usize;
      !idle
    });
    self.len.fetch_sub(removed, Ordering::Relaxed);
    removed
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  fn p(limit: f64, window: f64) -> Params {
    Params { limit, window }
  }

  /// A tiny deterministic PRNG (xorshift), so property runs are reproducible.
  struct Rng(u64);
  impl Rng {
    fn next(&mut self) -> u64 {
      self.0 ^= self.0 << 13;
      self.0 ^= self.0 >> 7;
      self.0 ^= self.0 << 17;
      self.0
    }
    fn below(&mut self, n: u64) -> u64 {
      self.next() % n
    }
  }

  fn run<A: Algorithm>(pp: &Params, times: &[f64]) -> Vec<Decision> {
    let mut s = A::State::default();
    times
      .iter()
      .map(|&t| A::check(&mut s, t, 1.0, pp, true))
      .collect()
  }

  fn admitted(ds: &[Decision]) -> usize {
    ds.iter().filter(|d| d.allowed).count()
  }

  /// Every half-open window [t, t + w) of a run of admissions (time, cost)
  /// holds at most `limit` units (instants closer than TEPS are one instant).
  fn assert_exact(adm: &[(f64, f64)], limit: f64, w: f64) {
    let mut j = 0;
    let mut sum = 0.0;
    // Two pointers: for each start i, units in [t_i, t_i + w).
    for i in 0..adm.len() {
      if j < i {
        j = i;
        sum = 0.0;
      }
      while j < adm.len() && adm[j].0 < adm[i].0 + w - TEPS {
        sum += adm[j].1;
        j += 1;
      }
      assert!(
        sum <= limit + 1e-6,
        "window starting at {} holds {} > {}",
        adm[i].0,
        sum,
        limit
      );
      sum -= adm[i].1;
    }
  }

  #[test]
  fn sliding_log_admits_limit_then_retries_when_the_oldest_leaves() {
    let pp = p(3.0, 1000.0);
    let mut s = LogState::default();
    assert!(SlidingLog::check(&mut s, 0.0, 1.0, &pp, true).allowed);
    assert!(SlidingLog::check(&mut s, 100.0, 1.0, &pp, true).allowed);
    let d = SlidingLog::check(&mut s, 200.0, 1.0, &pp, true);
    assert!(d.allowed);
    assert_eq!(d.remaining, 0.0);
    assert_eq!(d.reset, 1000.0);
    let d = SlidingLog::check(&mut s, 300.0, 1.0, &pp, true);
    assert!(!d.allowed);
    assert_eq!(d.retry_after, 700.0);
    assert_eq!(d.reset, 900.0);
    // Cost 2 must wait for two entries to leave.
    let d = SlidingLog::check(&mut s, 300.0, 2.0, &pp, true);
    assert_eq!(d.retry_after, 800.0);
    // Exactly at t + window the first admission no longer counts.
    assert!(!SlidingLog::check(&mut s, 999.9, 1.0, &pp, true).allowed);
    assert!(SlidingLog::check(&mut s, 1000.0, 1.0, &pp, true).allowed);
    assert!(!SlidingLog::check(&mut s, 1000.0, 1.0, &pp, true).allowed);
  }

  #[test]
  fn sliding_log_is_exact_over_every_window_of_random_runs() {
    for seed in 1..=40u64 {
      let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
      let limit = (1 + rng.below(20)) as f64;
      let w = (50 + rng.below(2000)) as f64;
      let pp = p(limit, w);
      let mut s = LogState::default();
      let mut now = 0.0;
      let mut adm = Vec::new();
      for _ in 0..3000 {
        now += (rng.below(1000) as f64) * w / 4000.0;
        let cost = rng.below(4) as f64;
        let d = SlidingLog::check(&mut s, now, cost, &pp, true);
        if d.allowed {
          adm.push((now, cost));
        } else if cost <= limit {
          // retry_after is right: waiting it is enough, and one ms less is not.
          let mut probe = s.clone();
          assert!(
            SlidingLog::check(&mut probe.clone(), now + d.retry_after, cost, &pp, false).allowed
          );
          if d.retry_after >= 1.0 {
            assert!(
              !SlidingLog::check(&mut probe, now + d.retry_after - 1.0, cost, &pp, false).allowed
            );
          }
        }
      }
      assert_exact(&adm, limit, w);
      // And it is not trivially strict: with steady demand it admits its limit.
      assert!(!adm.is_empty());
    }
  }

  #[test]
  fn sliding_log_admits_exactly_limit_per_window_under_steady_demand() {
    let pp = p(10.0, 1000.0);
    let times: Vec<f64> = (0..10_000).map(|i| i as f64).collect(); // one request per ms for 10 s
    let ds = run::<SlidingLog>(&pp, &times);
    assert_eq!(admitted(&ds), 100);
    let adm: Vec<(f64, f64)> = times
      .iter()
      .zip(&ds)
      .filter(|(_, d)| d.allowed)
      .map(|(&t, _)| (t, 1.0))
      .collect();
    assert_exact(&adm, 10.0, 1000.0);
  }

  #[test]
  fn sliding_log_fractional_costs_stay_bounded_and_exact() {
    let pp = p(3.0, 100.0);
    let mut s = LogState::default();
    let mut adm = Vec::new();
    for i in 0..10_000 {
      let now = i as f64 * 0.37;
      if SlidingLog::check(&mut s, now, 0.1, &pp, true).allowed {
        adm.push((now, 0.1));
      }
      assert!(s.log.len() <= 3);
    }
    assert_exact(&adm, 3.0, 100.0);
    assert!(adm.len() > 300);
  }

  #[test]
  fn cost_above_limit_is_never_admitted_and_says_so() {
    let pp = p(5.0, 1000.0);
    fn never<A: Algorithm>(pp: &Params) {
      let mut s = A::State::default();
      let d = A::check(&mut s, 0.0, 6.0, pp, true);
      assert!(!d.allowed);
      assert_eq!(d.retry_after, f64::INFINITY);
      assert_eq!(d.remaining, 5.0);
      assert!(A::is_idle(&s, 0.0, pp), "a refused check must not consume");
    }
    never::<SlidingLog>(&pp);
    never::<SlidingCounter>(&pp);
    never::<FixedWindow>(&pp);
    never::<TokenBucket>(&pp);
    never::<Gcra>(&pp);
  }

  #[test]
  fn peek_never_consumes() {
    let pp = p(2.0, 1000.0);
    fn peek<A: Algorithm>(pp: &Params) {
      let mut s = A::State::default();
      for _ in 0..5 {
        let d = A::check(&mut s, 10.0, 1.0, pp, false);
        assert!(d.allowed);
        assert_eq!(d.remaining, 2.0);
      }
      assert!(A::is_idle(&s, 10.0, pp));
      assert!(A::check(&mut s, 10.0, 1.0, pp, true).allowed);
      assert_eq!(A::check(&mut s, 10.0, 1.0, pp, false).remaining, 1.0);
    }
    peek::<SlidingLog>(&pp);
    peek::<SlidingCounter>(&pp);
    peek::<FixedWindow>(&pp);
    peek::<TokenBucket>(&pp);
    peek::<Gcra>(&pp);
  }

  #[test]
  fn fixed_window_counts_and_resets_at_the_window_end() {
    let pp = p(3.0, 1000.0);
    let mut s = FixedState::default();
    for (i, t) in [100.0, 200.0, 300.0].iter().enumerate() {
      let d = FixedWindow::check(&mut s, *t, 1.0, &pp, true);
      assert!(d.allowed);
      assert_eq!(d.remaining, 2.0 - i as f64);
      assert_eq!(d.reset, 1100.0 - t);
    }
    let d = FixedWindow::check(&mut s, 400.0, 1.0, &pp, true);
    assert!(!d.allowed);
    assert_eq!(d.retry_after, 700.0);
    assert_eq!(d.reset, 700.0);
    assert!(!FixedWindow::check(&mut s, 1099.0, 1.0, &pp, true).allowed);
    let d = FixedWindow::check(&mut s, 1100.0, 1.0, &pp, true);
    assert!(d.allowed);
    assert_eq!(d.remaining, 2.0);
    assert_eq!(d.reset, 1000.0);
    // Steady demand: limit per window, windows back to back.
    let ds = run::<FixedWindow>(&pp, &(0..10_000).map(|i| i as f64).collect::<Vec<_>>());
    assert_eq!(admitted(&ds), 30);
  }

  #[test]
  fn sliding_counter_weights_the_previous_window() {
    let pp = p(10.0, 1000.0);
    let mut s = CounterState::default();
    // 10 in window 0 (at t = 500..509).
    for i in 0..10 {
      assert!(SlidingCounter::check(&mut s, 500.0 + i as f64, 1.0, &pp, true).allowed);
    }
    let d = SlidingCounter::check(&mut s, 900.0, 1.0, &pp, true);
    assert!(!d.allowed);
    // The current window's own count must fade: next window, then until
    // 10 * (1 - e/1000) + 1 <= 10, i.e. e >= 100.
    assert_eq!(d.retry_after, 100.0 + 100.0);
    // At t = 1250 (25% into window 1): estimate 10 * 0.75 = 7.5: two more fit.
    assert!(SlidingCounter::check(&mut s, 1250.0, 1.0, &pp, true).allowed);
    assert!(SlidingCounter::check(&mut s, 1250.0, 1.0, &pp, true).allowed);
    let d = SlidingCounter::check(&mut s, 1250.0, 1.0, &pp, true);
    assert!(!d.allowed);
    // 10 * (1 - e/1000) + 2 + 1 <= 10  => e >= 300: 50 ms from now.
    assert_eq!(d.retry_after, 50.0);
    assert!(!SlidingCounter::check(&mut s, 1299.0, 1.0, &pp, true).allowed);
    assert!(SlidingCounter::check(&mut s, 1300.0, 1.0, &pp, true).allowed);
    // Two windows later everything is forgotten.
    assert!(SlidingCounter::is_idle(&s, 3000.0, &pp));
    // Steady demand over 10 s: about limit per window (the approximation).
    let ds = run::<SlidingCounter>(&pp, &(0..10_000).map(|i| i as f64).collect::<Vec<_>>());
    let n = admitted(&ds);
    assert!((85..=100).contains(&n), "admitted {n}");
  }

  #[test]
  fn sliding_counter_retry_after_is_right_on_random_runs() {
    let mut rng = Rng(77);
    let pp = p(7.0, 300.0);
    let mut s = CounterState::default();
    let mut now = 0.0;
    for _ in 0..5000 {
      now += rng.below(60) as f64;
      let cost = (1 + rng.below(3)) as f64;
      let d = SlidingCounter::check(&mut s, now, cost, &pp, true);
      if !d.allowed {
        assert!(
          SlidingCounter::check(&mut s.clone(), now + d.retry_after, cost, &pp, false).allowed,
          "at {now}: {d:?}"
        );
        if d.retry_after >= 1.0 {
          assert!(
            !SlidingCounter::check(&mut s.clone(), now + d.retry_after - 1.0, cost, &pp, false)
              .allowed
          );
        }
      }
    }
  }

  #[test]
  fn token_bucket_bursts_then_refills_at_the_rate() {
    let pp = p(4.0, 1000.0); // 1 token / 250 ms
    let mut s = BucketState::default();
    for i in 0..4 {
      let d = TokenBucket::check(&mut s, 0.0, 1.0, &pp, true);
      assert!(d.allowed);
      assert_eq!(d.remaining, 3.0 - i as f64);
    }
    let d = TokenBucket::check(&mut s, 0.0, 1.0, &pp, true);
    assert!(!d.allowed);
    assert_eq!(d.retry_after, 250.0);
    assert_eq!(d.reset, 1000.0);
    let d = TokenBucket::check(&mut s, 100.0, 2.0, &pp, true);
    assert_eq!(d.retry_after, 400.0);
    assert!(TokenBucket::check(&mut s, 250.0, 1.0, &pp, true).allowed);
    assert!(!TokenBucket::check(&mut s, 250.0, 1.0, &pp, true).allowed);
    assert!(TokenBucket::is_idle(&s, 1250.0, &pp));
    // Steady demand for 10 s: burst + rate.
    let ds = run::<TokenBucket>(&pp, &(0..10_000).map(|i| i as f64).collect::<Vec<_>>());
    assert_eq!(admitted(&ds), 4 + 39);
  }

  #[test]
  fn gcra_matches_the_token_bucket() {
    let pp = p(4.0, 1000.0);
    let mut s = GcraState::default();
    for i in 0..4 {
      let d = Gcra::check(&mut s, 0.0, 1.0, &pp, true);
      assert!(d.allowed, "burst {i}");
      assert_eq!(d.remaining, 3.0 - i as f64);
    }
    let d = Gcra::check(&mut s, 0.0, 1.0, &pp, true);
    assert!(!d.allowed);
    assert_eq!(d.retry_after, 250.0);
    assert_eq!(d.reset, 1000.0);
    assert!(!Gcra::check(&mut s, 249.0, 1.0, &pp, true).allowed);
    assert!(Gcra::check(&mut s, 250.0, 1.0, &pp, true).allowed);
    // Random runs: same decisions as the token bucket.
    let mut rng = Rng(5);
    let pp = p(6.0, 600.0);
    let (mut g, mut b) = (GcraState::default(), BucketState::default());
    let mut now = 0.0;
    for _ in 0..5000 {
      now += rng.below(200) as f64;
      let cost = rng.below(4) as f64;
      let dg = Gcra::check(&mut g, now, cost, &pp, true);
      let db = TokenBucket::check(&mut b, now, cost, &pp, true);
      assert_eq!(dg.allowed, db.allowed, "at {now} cost {cost}");
      assert_eq!(dg.retry_after, db.retry_after);
      assert_eq!(dg.remaining, db.remaining);
    }
  }

  #[test]
  fn store_bounds_keys_dropping_the_idle_first() {
    let st: Store<FixedWindow> = Store::new(p(1.0, 1000.0), 100);
    // Key "old" is checked first and never again; "hot" is checked often.
    st.check("old", 0.0, 1.0, true);
    for i in 0..1000 {
      let now = 1.0 + i as f64 * 0.01;
      st.check(&format!("k{i}"), now, 1.0, true);
      st.check("hot", now, 1.0, true);
      assert!(st.len() <= 100, "len {}", st.len());
    }
    assert_eq!(st.len(), st.map.len());
    assert!(st.map.get("old").is_none());
    assert!(st.map.contains_key("k999"));
    assert!(st.map.contains_key("hot"));
    // A fully restored key goes before a busy one.
    let st: Store<FixedWindow> = Store::new(p(1.0, 10.0), 3);
    st.check("a", 0.0, 1.0, true); // restored at 10
    st.check("b", 5.0, 1.0, true);
    st.check("c", 6.0, 1.0, true);
    st.check("a", 7.0, 0.0, true); // still busy, checked last...
    st.check("d", 11.0, 1.0, true); // ...but at 11 it is restored: it goes
    assert!(st.map.get("a").is_none());
    assert!(st.map.get("b").is_none());
    assert!(st.map.contains_key("c") && st.map.contains_key("d"));
    assert_eq!(st.len(), 2);
  }

  #[test]
  fn keys_inline_or_on_the_heap_find_the_same_state() {
    assert_eq!(std::mem::size_of::<Key>(), 24);
    let st: Store<FixedWindow> = Store::new(p(1.0, 1000.0), 100);
    let long = "k".repeat(23);
    for k in [
      "",
      "a",
      "é",
      "exactly-twenty-two-b22",
      long.as_str(),
      "emoji-🦀-key-that-is-quite-long",
    ] {
      assert!(st.check(k, 0.0, 1.0, true).allowed, "{k}");
      assert!(!st.check(k, 0.0, 1.0, true).allowed, "{k}: same state");
      assert!(matches!(Key::new(k), Key::Inline { .. }) == (k.len() <= INLINE));
      assert_eq!(Key::new(k).as_str(), k);
    }
    assert_eq!(st.len(), 6);
  }

  #[test]
  fn store_sweep_drops_restored_keys_and_peeks_do_not_insert() {
    let st: Store<SlidingLog> = Store::new(p(2.0, 100.0), 1000);
    assert!(st.check("x", 0.0, 1.0, false).allowed);
    assert_eq!(st.len(), 0);
    st.check("x", 0.0, 1.0, true);
    st.check("y", 50.0, 1.0, true);
    assert_eq!(st.sweep(120.0), 1);
    assert_eq!(st.len(), 1);
    st.remove("y");
    assert_eq!(st.len(), 0);
  }
}

/// Property tests: each algorithm against a simple reference model written
/// in exact integer arithmetic (times and costs are whole numbers, so the
/// model needs no float slack), over random timelines (proptest, fixed
/// seed from its config: failures shrink to a minimal timeline).
#[cfg(test)]
mod model_tests {
  use super::*;
  use proptest::prelude::*;

  /// (ms since the previous check, cost, consume)
  type Op = (u64, u64, bool);

  fn ops(max_dt: u64) -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec((0..max_dt, 0u64..4, prop::bool::weighted(0.9)), 1..300)
  }

  fn drive<A: Algorithm>(p: &Params, ops: &[Op], mut model: impl FnMut(u64, u64, bool) -> bool) {
    let mut s = A::State::default();
    let mut now = 0u64;
    for (i, &(dt, cost, consume)) in ops.iter().enumerate() {
      now += dt;
      let d = A::check(&mut s, now as f64, cost as f64, p, consume);
      let want = model(now, cost, consume);
      assert_eq!(
        d.allowed, want,
        "op {i} at t={now} cost={cost} consume={consume}"
      );
    }
  }

  proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn sliding_log_matches_the_exact_log(limit in 1u64..20, window in 1u64..5000, ops in ops(3000)) {
      let p = Params { limit: limit as f64, window: window as f64 };
      let mut log: Vec<(u64, u64)> = Vec::new();
      drive::<SlidingLog>(&p, &ops, |now, cost, consume| {
        log.retain(|&(t, _)| t + window > now);
        let used: u64 = log.iter().map(|&(_, c)| c).sum();
        let ok = cost <= limit && used + cost <= limit;
        if ok && consume && cost > 0 {
          log.push((now, cost));
        }
        ok
      });
    }

    #[test]
    fn fixed_window_matches_its_model(limit in 1u64..20, window in 1u64..5000, ops in ops(3000)) {
      let p = Params { limit: limit as f64, window: window as f64 };
      let (mut start, mut count) = (None::<u64>, 0u64);
      drive::<FixedWindow>(&p, &ops, |now, cost, consume| {
        let live = matches!(start, Some(s) if now < s + window);
        let c = if live { count } else { 0 };
        let ok = cost <= limit && c + cost <= limit;
        if ok && consume && cost > 0 {
          if !live {
            start = Some(now);
          }
          count = c + cost;
        }
        ok
      });
    }

    #[test]
    fn token_bucket_matches_its_model(limit in 1u64..20, window in 1u64..5000, ops in ops(3000)) {
      let p = Params { limit: limit as f64, window: window as f64 };
      // Tokens scaled by `window`: refill adds `elapsed * limit`, exactly.
      let cap = limit * window;
      let (mut scaled, mut last) = (cap, 0u64);
      drive::<TokenBucket>(&p, &ops, |now, cost, consume| {
        let t = (scaled + (now - last) * limit).min(cap);
        let ok = cost <= limit && t >= cost * window;
        if ok && consume && cost > 0 {
          scaled = t - cost * window;
          last = now;
        }
        ok
      });
    }

    #[test]
    fn gcra_matches_its_model(limit in 1u64..20, per in 1u64..300, ops in ops(3000)) {
      // window = limit * per: the emission interval is a whole `per` ms.
      let window = limit * per;
      let p = Params { limit: limit as f64, window: window as f64 };
      let mut tat = 0u64;
      drive::<Gcra>(&p, &ops, |now, cost, consume| {
        let base = tat.max(now);
        let new_tat = base + cost * per;
        let ok = cost <= limit && new_tat <= now + window;
        if ok && consume && cost > 0 {
          tat = new_tat;
        }
        ok
      });
    }

    #[test]
    fn sliding_counter_matches_its_model(limit in 1u64..20, window in 1u64..5000, ops in ops(3000)) {
      let p = Params { limit: limit as f64, window: window as f64 };
      let (mut idx, mut prev, mut curr) = (None::<u64>, 0u64, 0u64);
      drive::<SlidingCounter>(&p, &ops, |now, cost, consume| {
        let k = now / window;
        match idx {
          Some(i) if i == k => {}
          Some(i) if i + 1 == k => {
            prev = curr;
            curr = 0;
          }
          _ => {
            prev = 0;
            curr = 0;
          }
        }
        idx = Some(k);
        let e = now - k * window;
        // prev * (1 - e / w) + curr + cost <= limit, times w.
        let ok = cost <= limit && prev * (window - e) + (curr + cost) * window <= limit * window;
        if ok && consume && cost > 0 {
          curr += cost;
        }
        ok
      });
    }

    /// Above SLIDING_LOG_MAX_ENTRIES the log is a bounded approximation: a
    /// key never holds more than SLIDING_LOG_MAX_ENTRIES + 1 entries, and no
    /// window of length `window` ever admits more than `limit` units.
    #[test]
    fn sliding_log_above_the_bound_stays_bounded_and_never_over_admits(
      limit in 1025u64..5000,
      window in 1000u64..20_000,
      steps in prop::collection::vec((0u64..40, 1u64..4), 1..3000),
    ) {
      let p = Params { limit: limit as f64, window: window as f64 };
      let mut s = LogState::default();
      let mut now = 0u64;
      let mut admitted: Vec<(u64, u64)> = Vec::new();
      for (dt, cost) in steps {
        now += dt;
        if SlidingLog::check(&mut s, now as f64, cost as f64, &p, true).allowed {
          admitted.push((now, cost));
        }
        prop_assert!(s.log.len() <= SLIDING_LOG_MAX_ENTRIES + 1, "{} entries", s.log.len());
      }
      let mut j = 0;
      let mut sum = 0u64;
      for i in 0..admitted.len() {
        sum += admitted[i].1;
        while admitted[j].0 + window <= admitted[i].0 {
          sum -= admitted[j].1;
          j += 1;
        }
        prop_assert!(sum <= limit, "{sum} units in a window of {window} ms, limit {limit}");
      }
    }
  }

  /// The memory bound, directly: 10,000-unit limit, one check per ms for
  /// three windows: the log stays at most 1,025 entries (exact would hold 10,000).
  #[test]
  fn sliding_log_memory_is_bounded_for_large_limits() {
    let p = Params {
      limit: 10_000.0,
      window: 10_000.0,
    };
    let mut s = LogState::default();
    let mut admitted = 0;
    for t in 0..30_000u64 {
      if SlidingLog::check(&mut s, t as f64, 1.0, &p, true).allowed {
        admitted += 1;
      }
      assert!(s.log.len() <= SLIDING_LOG_MAX_ENTRIES + 1);
    }
    // Steady traffic under the limit is (nearly) all admitted.
    assert!(admitted >= 29_000, "{admitted}");
  }
}
