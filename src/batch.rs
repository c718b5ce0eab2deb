//! BatchProcessor: the scheduler behind `lib/batch.js`.
//!
//! Items and their promises are JS values and stay in JS (per item the JS
//! layer does a push and creates a promise). What lives here is the state
//! machine of whole batches: admission against the concurrency bound, the
//! FIFO of sealed batches waiting for a slot, retry/backoff with jitter, and
//! the counters behind `stats()`. The JS layer calls it once per batch event
//! (sealed, finished, failed), never per item: PERF-FLOOR.md puts a class
//! method call at ~95 ns, which over a batch of 100 is ~1 ns an item.

use std::collections::{BTreeSet, VecDeque};

use napi::bindgen_prelude::Result;
use napi_derive::napi;

use crate::error::{Code, HpError, HpResult};
use crate::validate;

/// Options of `new BatchProcessor(handler, options)`, as the native engine
/// takes them. The public `BatchOptions<T>` (types/header.d.ts) is this with
/// `keyFn` typed by the item type.
#[napi(object, object_to_js = false, js_name = "NativeBatchOptions")]
#[derive(Default, Clone)]
pub struct BatchOptions {
  /// Most items (slots, after dedupe) in one batch; a batch that reaches it is
  /// dispatched at once. A positive integer or `Infinity`. Default: `100`.
  pub max_batch_size: Option<f64>,
  /// A partial batch is dispatched this many ms after its first item (`0`:
  /// on the next turn of the event loop, after everything added in this one).
  /// Default: `10`.
  pub max_wait_ms: Option<f64>,
  /// Batches in the handler at once; further sealed batches wait their turn
  /// in order. A positive integer or `Infinity`. Default: `4`.
  pub concurrency: Option<f64>,
  /// Whole-batch retries after the handler throws or rejects. Default: `0`.
  pub retries: Option<f64>,
  /// Backoff before retry n (0-based) is `retryBackoffMs * 2^n`, scaled by a
  /// random factor in [0.5, 1] (jitter). Default: `100`.
  pub retry_backoff_ms: Option<f64>,
  /// Equal items (by `keyFn`) pending together share one slot in the batch and
  /// one result. Needs `keyFn`. Default: `true` when `keyFn` is given, else `false`.
  pub dedupe: Option<bool>,
  /// The key of an item for `dedupe`.
  #[napi(ts_type = "(item: unknown) => string")]
  pub key_fn: Option<()>,
  /// Items accepted but not yet settled (after dedupe: one per slot); past
  /// it `add()` rejects `ERR_QUEUE_FULL` at once. A positive integer (up to
  /// 2^32 - 1) or `Infinity`. Default: `Infinity`.
  pub max_pending: Option<f64>,
}

/// `stats()` of a BatchProcessor.
#[napi(object)]
#[derive(Debug, Clone, PartialEq)]
pub struct BatchStats {
  /// Items accepted by `add`/`addMany` (deduplicated ones included).
  pub items: f64,
  /// Batches given to the handler (a retried batch counts once).
  pub batches: f64,
  /// Mean slots per dispatched batch.
  pub avg_batch_size: f64,
  /// Items not yet given to the handler (the open batch and sealed batches
  /// waiting for a concurrency slot).
  pub pending: f64,
  /// Batches in the handler now (or waiting for a retry).
  pub in_flight: f64,
  /// Batches that failed as a whole: the handler threw after all retries, or
  /// returned a result of the wrong length.
  pub failed_batches: f64,
  /// Handler retries performed.
  pub retries: f64,
}

/// Validated options.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchConfig {
  /// `f64::INFINITY` for unbounded.
  pub max_batch_size: f64,
  pub max_wait_ms: f64,
  /// `usize::MAX` for unbounded.
  pub concurrency: usize,
  pub retries: u32,
  pub retry_backoff_ms: f64,
  /// `f64::INFINITY` for unbounded.
  pub max_pending: f64,
}

/// A positive integer (up to 2^32 - 1), or `Infinity`.
fn positive_int_or_inf(name: &str, v: f64) -> HpResult<f64> {
  Ok(validate::count_or_inf(name, v, 1)?.map_or(f64::INFINITY, |n| n as f64))
}

/// Longest backoff (setTimeout's limit is 2^31 - 1 ms).
const MAX_DELAY_MS: f64 = 2_147_483_647.0;

impl BatchConfig {
  pub fn from_options(o: &BatchOptions) -> HpResult<Self> {
    let max_batch_size = positive_int_or_inf("maxBatchSize", o.max_batch_size.unwrap_or(100.0))?;
    let max_wait_ms = validate::duration_ms(
      "maxWaitMs",
      o.max_wait_ms.unwrap_or(10.0),
      validate::Span::Timer,
    )?;
    if max_wait_ms > MAX_DELAY_MS {
      return Err(HpError::invalid(format!(
        "maxWaitMs must be a number of milliseconds in [0, {MAX_DELAY_MS}], got {}",
        validate::js_num(max_wait_ms)
      )));
    }
    let c = positive_int_or_inf("concurrency", o.concurrency.unwrap_or(4.0))?;
    let concurrency = if c.is_infinite() {
      usize::MAX
    } else {
      c as usize
    };
    let retries = validate::count("retries", o.retries.unwrap_or(0.0), 0)?;
    let retry_backoff_ms = validate::duration_ms(
      "retryBackoffMs",
      o.retry_backoff_ms.unwrap_or(100.0),
      validate::Span::Timer,
    )?;
    let max_pending = positive_int_or_inf("maxPending", o.max_pending.unwrap_or(f64::INFINITY))?;
    Ok(BatchConfig {
      max_pending,
      max_batch_size,
      max_wait_ms,
      concurrency,
      retries: retries as u32,
      retry_backoff_ms,
    })
  }

  /// The backoff before retry `attempt` (0-based) given a uniform random
  /// `r` in [0, 1): `retryBackoffMs * 2^attempt * (0.5 + r / 2)`, capped.
  pub fn backoff_ms(&self, attempt: u32, r: f64) -> f64 {
    let base = self.retry_backoff_ms * 2f64.powi(attempt.min(1023) as i32);
    (base * (0.5 + r.clamp(0.0, 1.0) / 2.0)).min(MAX_DELAY_MS)
  }
}

struct Sealed {
  id: u64,
  slots: u32,
  adds: u32,
}

/// The scheduler: plain Rust, no JS.
pub struct Scheduler {
  pub cfg: BatchConfig,
  next_id: u64,
  in_flight: usize,
  ready: VecDeque<Sealed>,
  /// Sealed and not finished (queued or in flight): what `flush` waits for.
  outstanding: BTreeSet<u64>,
  queued_adds: u64,
  items: u64,
  batches: u64,
  slots: u64,
  failed_batches: u64,
  retries: u64,
}

/// What `submit` decided.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Admit {
  /// Start it now (a concurrency slot is taken).
  Start(u64),
  /// Queued behind others; `finish` hands it out in order.
  Queued(u64),
}

impl Scheduler {
  pub fn new(cfg: BatchConfig) -> Self {
    Scheduler {
      cfg,
      next_id: 0,
      in_flight: 0,
      ready: VecDeque::new(),
      outstanding: BTreeSet::new(),
      queued_adds: 0,
      items: 0,
      batches: 0,
      slots: 0,
      failed_batches: 0,
      retries: 0,
    }
  }

  fn start(&mut self, slots: u32) {
    self.in_flight += 1;
    self.batches += 1;
    self.slots += slots as u64;
  }

  /// A batch of `slots` distinct items (`adds` add calls) was sealed.
  pub fn submit(&mut self, slots: u32, adds: u32) -> Admit {
    let id = self.next_id;
    self.next_id += 1;
    self.items += adds as u64;
    self.outstanding.insert(id);
    if self.ready.is_empty() && self.in_flight < self.cfg.concurrency {
      self.start(slots);
      Admit::Start(id)
    } else {
      self.queued_adds += adds as u64;
      self.ready.push_back(Sealed { id, slots, adds });
      Admit::Queued(id)
    }
  }

  /// Batch `id` is over (`failed`: as a whole). Frees its slot and returns
  /// the next queued batch to start, if any (its slot is taken).
  pub fn finish(&mut self, id: u64, failed: bool) -> Option<u64> {
    if !self.outstanding.remove(&id) {
      return None;
    }
    self.in_flight = self.in_flight.saturating_sub(1);
    if failed {
      self.failed_batches += 1;
    }
    self.next_ready()
  }

  fn next_ready(&mut self) -> Option<u64> {
    if self.in_flight >= self.cfg.concurrency {
      return None;
    }
    let s = self.ready.pop_front()?;
    self.queued_adds -= s.adds as u64;
    self.start(s.slots);
    Some(s.id)
  }

  /// The handler failed on attempt `attempt` (0-based). Returns the delay
  /// before the retry, or None when retries are exhausted.
  pub fn retry(&mut self, attempt: u32, r: f64) -> Option<f64> {
    if attempt >= self.cfg.retries {
      return None;
    }
    self.retries += 1;
    Some(self.cfg.backoff_ms(attempt, r))
  }

  /// The oldest sealed batch not finished yet.
  pub fn oldest(&self) -> Option<u64> {
    self.outstanding.first().copied()
  }

  pub fn in_flight(&self) -> usize {
    self.in_flight
  }

  /// Stats; `open_adds` are the items of the batch still open in JS.
  pub fn stats(&self, open_adds: u64) -> BatchStats {
    BatchStats {
      items: (self.items + open_adds) as f64,
      batches: self.batches as f64,
      avg_batch_size: if self.batches == 0 {
        0.0
      } else {
        self.slots as f64 / self.batches as f64
      },
      pending: (self.queued_adds + open_adds) as f64,
      in_flight: self.in_flight as f64,
      failed_batches: self.failed_batches as f64,
      retries: self.retries as f64,
    }
  }
}

/// The native engine behind `BatchProcessor` (see lib/batch.js).
#[napi(js_name = "NativeBatch")]
pub struct NativeBatch {
  /// Set by a panic inside a method: later calls fail with ERR_INTERNAL.
  poison: crate::guard::Poison,
  s: Scheduler,
}

fn to_js<T>(r: HpResult<T>) -> Result<T, Code> {
  r.map_err(Into::into)
}

#[napi]
impl NativeBatch {
  #[napi(constructor)]
  pub fn new(options: Option<BatchOptions>) -> Result<Self, Code> {
    guarded! { ctor "BatchProcessor",
    let cfg = to_js(BatchConfig::from_options(&options.unwrap_or_default()))?;
    Ok(NativeBatch {
      poison: crate::guard::Poison::new("BatchProcessor"),
      s: Scheduler::new(cfg),
    })
    }
  }

  /// The validated `[maxBatchSize, maxWaitMs, maxPending]` (Infinity for unbounded).
  #[napi]
  pub fn limits(&self) -> Result<Vec<f64>, Code> {
    guarded! { ok self,
    vec![self.s.cfg.max_batch_size, self.s.cfg.max_wait_ms, self.s.cfg.max_pending]
    }
  }

  /// A batch was sealed. Returns its id (>= 0) when it may start now, or
  /// `-1 - id` when it waits for a slot (then `finish` hands it out).
  #[napi]
  pub fn submit(&mut self, slots: u32, adds: u32) -> Result<f64, Code> {
    guarded! { ok self,
    match self.s.submit(slots, adds) {
      Admit::Start(id) => id as f64,
      Admit::Queued(id) => -1.0 - id as f64,
    }
    }
  }

  /// Batch `id` is over. Returns the id of the next batch to start, or -1.
  #[napi]
  pub fn finish(&mut self, id: f64, failed: bool) -> Result<f64, Code> {
    guarded! { ok self,
    match self.s.finish(id as u64, failed) {
      Some(n) => n as f64,
      None => -1.0,
    }
    }
  }

  /// The handler failed on attempt `attempt`: the delay before the retry in
  /// ms, or -1 when retries are exhausted.
  #[napi]
  pub fn retry(&mut self, attempt: u32) -> Result<f64, Code> {
    guarded! { ok self,
    self.s.retry(attempt, rand::random::<f64>()).unwrap_or(-1.0)
    }
  }

  /// The oldest sealed batch not finished, or -1 when none.
  #[napi]
  pub fn oldest(&self) -> Result<f64, Code> {
    guarded! { ok self,
    self.s.oldest().map(|i| i as f64).unwrap_or(-1.0)
    }
  }

  #[napi]
  pub fn stats(&self, open_adds: u32) -> Result<BatchStats, Code> {
    guarded! { always ok self,
    self.s.stats(open_adds as u64)
    }
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  fn cfg(concurrency: usize, retries: u32) -> BatchConfig {
    BatchConfig {
      max_batch_size: 10.0,
      max_wait_ms: 5.0,
      concurrency,
      retries,
      retry_backoff_ms: 100.0,
      max_pending: f64::INFINITY,
    }
  }

  #[test]
  fn admission_respects_concurrency_and_fifo() {
    let mut s = Scheduler::new(cfg(2, 0));
    assert_eq!(s.submit(10, 10), Admit::Start(0));
    assert_eq!(s.submit(10, 12), Admit::Start(1));
    assert_eq!(s.submit(10, 10), Admit::Queued(2));
    assert_eq!(s.submit(3, 3), Admit::Queued(3));
    assert_eq!(s.in_flight(), 2);
    let st = s.stats(4);
    assert_eq!(st.pending, 13.0 + 4.0);
    assert_eq!(st.items, 35.0 + 4.0);
    assert_eq!(st.batches, 2.0);
    // Out-of-order completion still hands out the queue in order.
    assert_eq!(s.finish(1, false), Some(2));
    assert_eq!(s.in_flight(), 2);
    assert_eq!(s.oldest(), Some(0));
    assert_eq!(s.finish(0, true), Some(3));
    assert_eq!(s.finish(2, false), None);
    assert_eq!(s.in_flight(), 1);
    assert_eq!(s.finish(3, false), None);
    assert_eq!(s.in_flight(), 0);
    assert_eq!(s.oldest(), None);
    let st = s.stats(0);
    assert_eq!(st.batches, 4.0);
    assert_eq!(st.failed_batches, 1.0);
    assert_eq!(st.avg_batch_size, 33.0 / 4.0);
    assert_eq!(st.pending, 0.0);
    // Finishing twice changes nothing.
    assert_eq!(s.finish(3, true), None);
    assert_eq!(s.stats(0).failed_batches, 1.0);
  }

  #[test]
  fn a_queued_batch_never_overtakes() {
    let mut s = Scheduler::new(cfg(1, 0));
    assert_eq!(s.submit(1, 1), Admit::Start(0));
    assert_eq!(s.submit(1, 1), Admit::Queued(1));
    assert_eq!(s.finish(0, false), Some(1));
    // A slot is free only after 1 finishes; a new batch queues behind none.
    assert_eq!(s.submit(1, 1), Admit::Queued(2));
    assert_eq!(s.finish(1, false), Some(2));
    assert_eq!(s.finish(2, false), None);
    assert_eq!(s.submit(1, 1), Admit::Start(3));
  }

  #[test]
  fn unbounded_concurrency() {
    let mut s = Scheduler::new(cfg(usize::MAX, 0));
    for i in 0..1000 {
      assert_eq!(s.submit(1, 1), Admit::Start(i));
    }
  }

  #[test]
  fn retries_back_off_exponentially_with_jitter() {
    let mut s = Scheduler::new(cfg(1, 3));
    assert_eq!(s.retry(0, 0.0), Some(50.0));
    assert_eq!(s.retry(1, 0.999_999).map(|d| d.round()), Some(200.0));
    let d = s.retry(2, 0.5).unwrap();
    assert_eq!(d, 400.0 * 0.75);
    assert_eq!(s.retry(3, 0.5), None);
    assert_eq!(s.stats(0).retries, 3.0);
    // Bounded by setTimeout's limit, however many attempts.
    let c = cfg(1, u32::MAX);
    assert_eq!(c.backoff_ms(5000, 1.0), MAX_DELAY_MS);
  }

  #[test]
  fn options_are_checked() {
    let ok = BatchConfig::from_options(&BatchOptions::default()).unwrap();
    assert_eq!(ok.max_batch_size, 100.0);
    assert_eq!(ok.max_wait_ms, 10.0);
    assert_eq!(ok.concurrency, 4);
    assert_eq!(ok.retries, 0);
    let bad = |o: BatchOptions| BatchConfig::from_options(&o).unwrap_err().code;
    assert_eq!(
      bad(BatchOptions {
        max_batch_size: Some(0.0),
        ..Default::default()
      }),
      Code::InvalidArg
    );
    assert_eq!(
      bad(BatchOptions {
        max_batch_size: Some(1.5),
        ..Default::default()
      }),
      Code::InvalidArg
    );
    assert_eq!(
      bad(BatchOptions {
        max_wait_ms: Some(-1.0),
        ..Default::default()
      }),
      Code::InvalidArg
    );
    assert_eq!(
      bad(BatchOptions {
        max_wait_ms: Some(f64::INFINITY),
        ..Default::default()
      }),
      Code::InvalidArg
    );
    assert_eq!(
      bad(BatchOptions {
        concurrency: Some(0.0),
        ..Default::default()
      }),
      Code::InvalidArg
    );
    assert_eq!(
      bad(BatchOptions {
        retries: Some(-1.0),
        ..Default::default()
      }),
      Code::InvalidArg
    );
    assert_eq!(
      bad(BatchOptions {
        retry_backoff_ms: Some(f64::NAN),
        ..Default::default()
      }),
      Code::InvalidArg
    );
    let inf = BatchConfig::from_options(&BatchOptions {
      max_batch_size: Some(f64::INFINITY),
      concurrency: Some(f64::INFINITY),
      ..Default::default()
    })
    .unwrap();
    assert_eq!(inf.concurrency, usize::MAX);
  }
}
