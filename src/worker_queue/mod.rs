//! WorkerQueue: the native engine. The queue itself (priority order,
//! counts, deadlines, back-offs, which worker holds which task, wake-ups)
//! lives in [`scheduler::Core`], under one mutex shared by every JS thread
//! that uses the queue. `lib/worker_queue.js` is the JS-facing class: it keeps
//! the closures (function mode) and the promises, keyed by a task id it
//! chooses, and makes one synchronous native call to admit a task and one when
//! it ends. Nothing per task goes through tokio or a ThreadsafeFunction.
//!
//! Worker-thread mode (`threads.rs`): worker threads pull tasks from the
//! shared core themselves (`NativeQueueWorker::take`), so there is no
//! dispatch round trip. An idle worker first blocks on a condition variable
//! for a short while (a wake-up costs microseconds), then returns to its event
//! loop and is woken through a ThreadsafeFunction. Results are stored in the
//! core (so a worker that dies never takes finished results with it) and the
//! owning thread is woken once per batch (edge-triggered ThreadsafeFunction).

pub mod scheduler;
pub mod threads;

use std::cell::UnsafeCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use napi::bindgen_prelude::*;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi_derive::napi;
use parking_lot::{Condvar, Mutex, MutexGuard};

use crate::error::{Code, HpError, HpResult};
use crate::runtime::{self, now_ms};
use crate::validate;
use scheduler::{Arm, Core, Done, Event, Limits, Value, Waker};

const CLASS: &str = "WorkerQueue";

/// Options of `new WorkerQueue(options)`.
#[napi(object, object_to_js = false)]
#[derive(Default, Clone)]
pub struct WorkerQueueOptions {
  /// Tasks running at once (a positive integer or `Infinity`).
  /// Default: `os.availableParallelism()`; in worker-thread mode, `threads`.
  pub concurrency: Option<f64>,
  /// Most tasks waiting (not running); `add()`/`run()` beyond it reject
  /// `ERR_QUEUE_FULL`. Default: `Infinity`.
  pub max_queue_size: Option<f64>,
  /// Default run deadline of a task, in ms: an attempt running longer
  /// rejects `ERR_TIMEOUT` (or is retried) and frees its slot. In
  /// worker-thread mode the worker running it is terminated and replaced.
  /// Default: none.
  pub timeout_ms: Option<f64>,
  /// Default retries of a task that throws, times out or whose worker
  /// crashes. Default: `0`.
  pub retries: Option<f64>,
  /// Retry back-off: `retryBackoffMs * 2^(retry - 1)`, with jitter in
  /// [0.5x, 1.5x). Default: `100`.
  pub retry_backoff_ms: Option<f64>,
  /// Worker-thread mode: `run(payload)` calls the default export of
  /// `filename` in one of `threads` worker threads. Default: none (function mode).
  pub workers: Option<WorkerThreadsOptions>,
  /// Makes the queue process-wide: every `new WorkerQueue({ name })` with the
  /// same name and options, on any thread, shares its queue (priority order
  /// across all of them), its concurrency budget, pause state and stats.
  pub name: Option<String>,
}

/// Worker-thread mode options.
#[napi(object, object_to_js = false)]
#[derive(Default, Clone)]
pub struct WorkerThreadsOptions {
  /// The module whose default export runs each payload (CommonJS or ES
  /// module; a path or a `file:` URL).
  #[napi(ts_type = "string | URL")]
  pub filename: String,
  /// Worker threads. Default: `os.availableParallelism()`.
  pub threads: Option<f64>,
}

/// `WorkerQueue#stats()`. For a named queue: the whole shared queue.
#[napi(object)]
pub struct WorkerQueueStats {
  /// Tasks fulfilled.
  pub completed: f64,
  /// Tasks rejected after their last attempt (error, timeout, worker crash); aborted ones are not counted here.
  pub failed: f64,
  /// Retries scheduled.
  pub retried: f64,
  /// Attempts that ran past their timeout.
  pub timed_out: f64,
  /// Tasks waiting (queued, or backing off before a retry).
  pub queued: f64,
  /// Tasks running.
  pub running: f64,
  /// Mean time from (re)queueing to start, in ms.
  pub avg_wait_ms: f64,
  /// Mean run time of an attempt, in ms.
  pub avg_run_ms: f64,
  /// Tasks aborted through their `signal`.
  pub aborted: f64,
  /// Live worker threads (worker-thread mode).
  pub threads: f64,
  /// Worker threads replaced after they crashed or exited on their own.
  pub worker_restarts: f64,
}

#[derive(Clone, Debug, PartialEq)]
struct QueueConfig {
  limits: Limits,
  filename: Option<String>,
}

fn count_opt(name: &str, v: Option<f64>, default: f64, allow_inf: bool) -> HpResult<f64> {
  let v = v.unwrap_or(default);
  if allow_inf && v == f64::INFINITY {
    return Ok(v);
  }
  Ok(validate::count(name, v, 1)? as f64)
}

impl QueueConfig {
  fn from_options(o: &WorkerQueueOptions) -> HpResult<Self> {
    let parallelism = std::thread::available_parallelism()
      .map(|n| n.get())
      .unwrap_or(1) as f64;
    let (threads, filename) = match &o.workers {
      Some(w) => {
        if w.filename.is_empty() {
          return Err(HpError::invalid(
            "workers.filename must be a non-empty string, got \"\"",
          ));
        }
        let t = count_opt("workers.threads", w.threads, parallelism, false)?;
        if t > 1024.0 {
          return Err(HpError::invalid(format!(
            "workers.threads must be <= 1024, got {t}"
          )));
        }
        (t as u32, Some(w.filename.clone()))
      }
      None => (0, None),
    };
    let default_conc = if threads > 0 {
      threads as f64
    } else {
      parallelism
    };
    let conc = count_opt("concurrency", o.concurrency, default_conc, true)?;
    let max_queue = match o.max_queue_size {
      None => u64::MAX,
      Some(v) if v == f64::INFINITY => u64::MAX,
      Some(v) => validate::count_or_inf("maxQueueSize", v, 0)?.unwrap_or(u64::MAX),
    };
    let timeout_ms = match o.timeout_ms {
      None => 0.0,
      Some(v) if v == f64::INFINITY => 0.0,
      Some(v) => validate::positive_duration_ms("timeoutMs", v, validate::Span::Timer)?,
    };
    let retries = match o.retries {
      None => 0,
      Some(v) => {
        let v = validate::count("retries", v, 0)?;
        if v > 1_000_000 {
          return Err(HpError::invalid(format!(
            "retries must be an integer in [0, 1000000], got {v}"
          )));
        }
        v as u32
      }
    };
    let backoff = validate::duration_ms(
      "retryBackoffMs",
      o.retry_backoff_ms.unwrap_or(100.0),
      validate::Span::Timer,
    )?;
    Ok(QueueConfig {
      limits: Limits {
        concurrency: if conc.is_infinite() {
          u32::MAX
        } else {
          conc.min(u32::MAX as f64) as u32
        },
        max_queue,
        timeout_ms,
        retries,
        backoff_ms: backoff,
        threads,
      },
      filename,
    })
  }
}

// ---------------------------------------------------------------- shared state

/// One queue's state, shared by every handle (JS thread) and worker thread.
pub struct Shared {
  qid: u64,
  cfg: QueueConfig,
  core: Mutex<Core>,
  /// Sync-sleeping workers wait on this (paired with `core`).
  cv: Condvar,
}

static QUEUE_IDS: AtomicU64 = AtomicU64::new(1);
static QUEUES: OnceLock<Mutex<HashMap<u64, Weak<Shared>>>> = OnceLock::new();

fn queues() -> &'static Mutex<HashMap<u64, Weak<Shared>>> {
  QUEUES.get_or_init(|| Mutex::new(HashMap::new()))
}

impl Shared {
  fn new(cfg: QueueConfig) -> HpResult<Arc<Shared>> {
    let qid = QUEUE_IDS.fetch_add(1, Ordering::Relaxed);
    let s = Arc::new(Shared {
      qid,
      core: Mutex::new(Core::new(cfg.limits.clone())),
      cfg,
      cv: Condvar::new(),
    });
    queues().lock().insert(qid, Arc::downgrade(&s));
    Ok(s)
  }

  /// The queue a worker thread belongs to.
  pub fn find(qid: u64) -> Option<Arc<Shared>> {
    queues().lock().get(&qid).and_then(|w| w.upgrade())
  }

  fn lock(&self) -> MutexGuard<'_, Core> {
    self.core.lock()
  }

  /// Release the lock, then notify the sync sleepers the last calls asked for.
  fn unlock(&self, mut g: MutexGuard<'_, Core>) {
    let n = g.take_sync_wakes();
    drop(g);
    for _ in 0..n {
      if !self.cv.notify_one() {
        break;
      }
    }
  }
}

impl Drop for Shared {
  fn drop(&mut self) {
    queues().lock().remove(&self.qid);
  }
}

// ---------------------------------------------------------------- shared memory with JS

/// A buffer this side writes and JS reads through an external ArrayBuffer.
pub(crate) struct Area<T>(UnsafeCell<Box<[T]>>);
unsafe impl<T> Send for Area<T> {}
unsafe impl<T> Sync for Area<T> {}

impl<T: Copy + Default> Area<T> {
  pub(crate) fn new(len: usize) -> Arc<Self> {
    Arc::new(Area(UnsafeCell::new(
      vec![T::default(); len].into_boxed_slice(),
    )))
  }
  /// Only the JS thread that owns the handle touches it, inside a native
  /// call (JS reads it between calls).
  #[allow(clippy::mut_from_ref)]
  pub(crate) fn get(&self) -> &mut [T] {
    unsafe { &mut *self.0.get() }
  }
}

pub(crate) fn area_buffer<'e, T: Copy + Default + 'static>(
  env: &Env,
  a: &Arc<Area<T>>,
) -> Result<ArrayBuffer<'e>> {
  let a = a.clone();
  let s = a.get();
  let ptr = s.as_mut_ptr() as *mut u8;
  let len = std::mem::size_of_val(s);
  unsafe { ArrayBuffer::from_external(env, ptr, len, a, |_, a| drop(a)) }
}

/// Event layout in a handle's scratch (Float64Array): a header, then events.
const HDR: usize = 8;
const STRIDE: usize = 6;
const MAX_EVENTS: usize = 512;
const MAIN_BYTES: usize = 256 * 1024;

const EV_START: f64 = 1.0;
const EV_RETRYING: f64 = 2.0;
const EV_RESULT: f64 = 3.0;
const EV_FAILED: f64 = 4.0;
const EV_TERMINATE: f64 = 5.0;

type WakeFn = ThreadsafeFunction<(), (), (), Status, false, true>;

fn make_waker(f: &Function<'_, (), ()>) -> Result<Arc<WakeFn>> {
  Ok(Arc::new(
    f.build_threadsafe_function::<()>().weak::<true>().build()?,
  ))
}

fn waker_of(t: &Arc<WakeFn>) -> Waker {
  let t = t.clone();
  Arc::new(move || {
    t.call((), ThreadsafeFunctionCallMode::NonBlocking);
  })
}

fn to_js<T>(r: HpResult<T>) -> Result<T, Code> {
  r.map_err(Into::into)
}

/// The native engine behind `WorkerQueue` (see lib/worker_queue.js). One per
/// JS object; it is a handle on the (possibly shared) queue.
#[napi(js_name = "NativeWorkerQueue")]
pub struct NativeWorkerQueue {
  /// Set by a panic inside a method: later calls fail with ERR_INTERNAL.
  poison: crate::guard::Poison,
  shared: Arc<Shared>,
  h: u32,
  name: Option<String>,
  scratch: Arc<Area<f64>>,
  bytes: Arc<Area<u8>>,
  wake: Option<Arc<WakeFn>>,
  closed: AtomicBool,
}

#[napi]
impl NativeWorkerQueue {
  /// `wake` is called (from any thread, batched) when events wait for this
  /// handle that no call of its own returned: results from worker threads,
  /// starts granted by another thread of a named queue.
  #[napi(constructor)]
  pub fn new(
    env: Env,
    options: Option<WorkerQueueOptions>,
    wake: Function<'_, (), ()>,
  ) -> Result<Self, Code> {
    guarded! { ctor "WorkerQueue",
    crate::runtime::require_external_memory(&env, "WorkerQueue")?;
    let o = options.unwrap_or_default();
    let cfg = to_js(QueueConfig::from_options(&o))?;
    let shared = match &o.name {
      Some(name) => to_js(runtime::attach(CLASS, name, format!("{cfg:?}"), || {
        Shared::new(cfg.clone())
      }))?,
      None => to_js(Shared::new(cfg))?,
    };
    let needs_wake = o.name.is_some() || shared.cfg.limits.threads > 0;
    let wake = if needs_wake {
      Some(make_waker(&wake).map_err(crate::error::from_napi)?)
    } else {
      None
    };
    let h = shared.lock().open_handle(wake.as_ref().map(waker_of));
    Ok(NativeWorkerQueue {
      poison: crate::guard::Poison::new("WorkerQueue"),
      shared,
      h,
      name: o.name,
      scratch: Area::new(HDR + STRIDE * MAX_EVENTS),
      bytes: Area::new(MAIN_BYTES),
      wake,
      closed: AtomicBool::new(false),
    })
    }
  }

  /// The event scratch (Float64Array) this handle's calls write into.
  #[napi]
  pub fn scratch(&self, env: Env) -> Result<ArrayBuffer<'_>> {
    guarded! { self,
    area_buffer(&env, &self.scratch)
    }
  }

  /// The byte area drained results and messages are copied into.
  #[napi]
  pub fn bytes(&self, env: Env) -> Result<ArrayBuffer<'_>> {
    guarded! { self,
    area_buffer(&env, &self.bytes)
    }
  }

  /// Id worker threads use to find this queue.
  #[napi]
  pub fn queue_id(&self) -> Result<f64, Code> {
    guarded! { ok self,
    self.shared.qid as f64
    }
  }

  /// Worker threads per handle (0: function mode).
  #[napi]
  pub fn threads(&self) -> Result<u32, Code> {
    guarded! { ok self,
    self.shared.cfg.limits.threads
    }
  }

  /// The concurrency (`Infinity` when unbounded).
  #[napi]
  pub fn concurrency(&self) -> Result<f64, Code> {
    guarded! { ok self,
    match self.shared.cfg.limits.concurrency {
      u32::MAX => f64::INFINITY,
      c => c as f64,
    }
    }
  }

  fn lock(&self) -> MutexGuard<'_, Core> {
    let mut g = self.shared.lock();
    g.set_caller(Some(self.h));
    g
  }

  /// Write this handle's pending events into the scratch. Values with bytes
  /// (results, messages) are only written by `drain` (`allow_bytes`); other
  /// calls stop before them and flag `more`.
  fn flush(&self, g: &mut Core, allow_bytes: bool) -> Option<Vec<u8>> {
    let sc = self.scratch.get();
    let area = self.bytes.get();
    let mut n = 0usize;
    let mut boff = 0usize;
    let mut big: Option<Vec<u8>> = None;
    let mut more = false;
    while let Some(ev) = g.peek_event(self.h) {
      if matches!(ev, Event::Rearm) {
        g.next_event(self.h);
        continue;
      }
      if n == MAX_EVENTS {
        more = true;
        break;
      }
      let bl = ev.byte_len();
      let mut off = 0.0;
      let mut to_big = false;
      if bl > 0 {
        if !allow_bytes {
          more = true;
          break;
        }
        if boff + bl <= area.len() {
          off = boff as f64;
        } else if big.is_none() {
          off = -1.0;
          to_big = true;
        } else {
          more = true;
          break;
        }
      }
      let ev = g.next_event(self.h).expect("peeked");
      let o = HDR + n * STRIDE;
      let e = &mut sc[o..o + STRIDE];
      let mut put_bytes = |b: &[u8]| {
        if to_big {
          big = Some(b.to_vec());
        } else if !b.is_empty() {
          area[boff..boff + b.len()].copy_from_slice(b);
          boff += b.len();
        }
      };
      match ev {
        Event::Start(id) => {
          e[0] = EV_START;
          e[1] = id as f64;
        }
        Event::Retrying(id) => {
          e[0] = EV_RETRYING;
          e[1] = id as f64;
        }
        Event::Result { id, ok, value } => {
          e[0] = EV_RESULT;
          e[1] = id as f64;
          e[2] = ok as u8 as f64;
          e[3] = value.kind() as f64;
          if bl > 0 {
            e[4] = off;
            e[5] = bl as f64;
            put_bytes(value.bytes());
          } else {
            e[4] = value.num();
            e[5] = 0.0;
          }
        }
        Event::Failed {
          id,
          code,
          detail,
          message,
        } => {
          e[0] = EV_FAILED;
          e[1] = id as f64;
          e[2] = code as u32 as f64;
          e[3] = detail;
          e[4] = off;
          e[5] = bl as f64;
          put_bytes(message.as_bytes());
        }
        Event::Terminate { slot, gen } => {
          e[0] = EV_TERMINATE;
          e[1] = slot as f64;
          e[2] = gen as f64;
        }
        Event::Rearm => unreachable!(),
      }
      n += 1;
    }
    sc[0] = n as f64;
    sc[1] = match g.arm(self.h, now_ms()) {
      Arm::Keep => -1.0,
      Arm::Disarm => -2.0,
      Arm::In(ms) => ms,
    };
    sc[2] = more as u8 as f64;
    big
  }

  fn finish(&self, mut g: MutexGuard<'_, Core>) {
    self.flush(&mut g, false);
    self.shared.unlock(g);
  }

  fn check_open(&self) -> Result<(), Code> {
    if self.closed.load(Ordering::Relaxed) {
      return Err(HpError::closed(CLASS).into());
    }
    Ok(())
  }

  /// Function mode: admit task `id`. `timeoutMs` < 0: the queue's default, 0
  /// or Infinity: none. `retries` < 0: the queue's default. Returns 0, or 1
  /// when the queue is full, 2 when closed. Events (its Start if it may run
  /// now) are in the scratch.
  #[napi]
  pub fn add(&self, id: u32, priority: f64, timeout_ms: f64, retries: f64) -> Result<u32, Code> {
    guarded! { ok self,
    self.admit(id, priority, timeout_ms, retries, Value::Undefined)
    }
  }

  fn admit(&self, id: u32, priority: f64, timeout_ms: f64, retries: f64, payload: Value) -> u32 {
    // The JS layer checked the task's options; a value that slipped through
    // is saturated here rather than trusted (NaN: no timeout).
    let timeout = if timeout_ms < 0.0 || timeout_ms.is_nan() {
      None
    } else if timeout_ms == 0.0 || timeout_ms.is_infinite() {
      Some(0.0)
    } else {
      Some(timeout_ms.min(validate::MAX_TIMER_MS))
    };
    let retries = if retries < 0.0 {
      None
    } else {
      Some(retries.min(u32::MAX as f64) as u32)
    };
    let mut g = self.lock();
    let r = g.admit(self.h, id, priority, timeout, retries, payload, now_ms());
    self.finish(g);
    match r {
      Ok(()) => 0,
      Err(Code::QueueFull) => 1,
      Err(Code::Closed) => 2,
      Err(_) => 3,
    }
  }

  /// Worker-thread mode: admit task `id` with its payload (`kind`: 0
  /// undefined, 1 null, 2 boolean (`num`), 3 number (`num`), 4 string
  /// (`text`), 5 structured-clone bytes (`bytes`)). Returns as `add`.
  #[napi]
  #[allow(clippy::too_many_arguments)]
  pub fn run(
    &self,
    id: u32,
    priority: f64,
    timeout_ms: f64,
    retries: f64,
    kind: u32,
    num: f64,
    text: Option<String>,
    bytes: Option<BufferSlice>,
  ) -> Result<u32, Code> {
    guarded! { ok self,
    let Some(v) = Value::from_parts(kind, num, text, bytes.as_deref()) else {
      return Ok(3);
    };
    self.admit(id, priority, timeout_ms, retries, v)
    }
  }

  /// Function mode: the running attempt of `id` ended (`ok`: fulfilled).
  /// Returns 0: settle the promise, 1: a retry is scheduled, 2: stale (ignore).
  #[napi]
  pub fn done(&self, id: u32, ok: bool) -> Result<u32, Code> {
    guarded! { ok self,
    let mut g = self.lock();
    let d = g.done_fn(self.h, id, ok, now_ms());
    self.finish(g);
    match d {
      Done::Settle => 0,
      Done::Retry => 1,
      Done::Stale => 2,
    }
    }
  }

  /// Abort task `id` (waiting: it never runs; running: its slot frees, and in
  /// worker-thread mode its worker is terminated). False when unknown.
  #[napi]
  pub fn abort(&self, id: u32) -> Result<bool, Code> {
    guarded! { ok self,
    let mut g = self.lock();
    let r = g.abort(self.h, id, now_ms());
    self.finish(g);
    r
    }
  }

  /// The JS timer fired: deadlines and back-offs due now.
  #[napi]
  pub fn tick(&self) -> Result<(), Code> {
    guarded! { ok self,
    let mut g = self.lock();
    g.expire(self.h, now_ms());
    self.finish(g);
    }
  }

  /// Drain every pending event (with values). Returns a Buffer for one value
  /// too large for the byte area (its event says offset -1).
  #[napi]
  pub fn drain(&self, env: Env) -> Result<Option<BufferSlice<'_>>> {
    guarded! { self,
    let mut g = self.lock();
    g.clear_wake(self.h);
    let big = self.flush(&mut g, true);
    self.shared.unlock(g);
    match big {
      Some(b) => Ok(Some(BufferSlice::copy_from(&env, b)?)),
      None => Ok(None),
    }
    }
  }

  #[napi]
  pub fn pause(&self) -> Result<(), Code> {
    guarded! { self,
    self.check_open()?;
    let mut g = self.lock();
    g.pause();
    self.finish(g);
    Ok(())
    }
  }

  #[napi]
  pub fn resume(&self) -> Result<(), Code> {
    guarded! { self,
    self.check_open()?;
    let mut g = self.lock();
    g.resume(now_ms());
    self.finish(g);
    Ok(())
    }
  }

  #[napi]
  pub fn is_paused(&self) -> Result<bool, Code> {
    guarded! { ok self,
    self.shared.lock().is_paused()
    }
  }

  /// This handle's waiting tasks.
  #[napi]
  pub fn size(&self) -> Result<u32, Code> {
    guarded! { ok self,
    self.shared.lock().counts(self.h).0
    }
  }

  /// This handle's running tasks.
  #[napi]
  pub fn pending(&self) -> Result<u32, Code> {
    guarded! { ok self,
    self.shared.lock().counts(self.h).1
    }
  }

  #[napi]
  pub fn stats(&self) -> Result<WorkerQueueStats, Code> {
    guarded! { always ok self,
    let g = self.shared.lock();
    let s = g.stats;
    WorkerQueueStats {
      completed: s.completed as f64,
      failed: s.failed as f64,
      retried: s.retried as f64,
      timed_out: s.timed_out as f64,
      queued: g.waiting() as f64,
      running: g.running() as f64,
      avg_wait_ms: s.avg_wait_ms(),
      avg_run_ms: s.avg_run_ms(),
      aborted: s.aborted as f64,
      threads: g.live_worker_count() as f64,
      worker_restarts: s.worker_restarts as f64,
    }
    }
  }

  /// Keep the event loop alive (`true`) while this handle waits for events
  /// from other threads; `false` when it has nothing outstanding.
  #[napi]
  pub fn keep_alive(&self, env: Env, on: bool) -> Result<(), Code> {
    guarded! { ok self,
    if let Some(w) = &self.wake {
      if w.aborted() {
        return Ok(());
      }
      unsafe {
        if on {
          napi::sys::napi_ref_threadsafe_function(env.raw(), w.raw());
        } else {
          napi::sys::napi_unref_threadsafe_function(env.raw(), w.raw());
        }
      }
    }
    }
  }

  /// A slot for a new worker thread of this handle: `slot * 2^32 + generation`.
  #[napi]
  pub fn spawn_slot(&self) -> Result<f64, Code> {
    guarded! { ok self,
    let (s, gen) = self.lock().spawn_slot(self.h);
    s as f64 * 4_294_967_296.0 + gen as f64
    }
  }

  /// The worker thread (slot, gen) exited. Its tasks fail with
  /// ERR_TASK_FAILED (`message`) or are retried. Returns whether it had
  /// started (loaded the module).
  #[napi]
  pub fn worker_lost(&self, slot: u32, gen: u32, message: String) -> Result<bool, Code> {
    guarded! { ok self,
    let mut g = self.lock();
    let r = g.worker_lost(slot, gen, &message, now_ms());
    self.finish(g);
    r
    }
  }

  /// The module cannot load: every waiting task of this handle fails.
  #[napi]
  pub fn fail_waiting(&self, message: String) -> Result<(), Code> {
    guarded! { ok self,
    let mut g = self.lock();
    g.fail_waiting(self.h, Code::TaskFailed, &message, now_ms());
    self.finish(g);
    }
  }

  /// Close, step 1: accept no more tasks (a paused queue resumes, so what is
  /// queued can finish).
  #[napi]
  pub fn close_begin(&self) -> Result<(), Code> {
    guarded! { ok self,
    let mut g = self.lock();
    g.close_handle(self.h);
    if g.is_paused() {
      g.resume(now_ms());
    }
    self.finish(g);
    }
  }

  /// Whether other handles (threads) use this queue.
  #[napi]
  pub fn shared_with_others(&self) -> Result<bool, Code> {
    guarded! { ok self,
    self.shared.lock().handle_count() > 1
    }
  }

  /// Close: the worker threads of this handle take no more tasks and exit
  /// once they hold none.
  #[napi]
  pub fn retire_workers(&self) -> Result<(), Code> {
    guarded! { ok self,
    let mut g = self.lock();
    g.retire_workers(self.h);
    self.finish(g);
    }
  }

  /// Close, last step: this handle leaves the queue.
  #[napi]
  pub fn close_end(&self) -> Result<(), Code> {
    guarded! { ok self,
    self.release();
    }
  }

  #[napi]
  pub fn is_closed(&self) -> Result<bool, Code> {
    guarded! { always ok self,
    self.closed.load(Ordering::Relaxed)
    }
  }

  fn release(&self) {
    if self.closed.swap(true, Ordering::SeqCst) {
      return;
    }
    {
      let mut g = self.lock();
      g.set_caller(None);
      g.drop_handle(self.h, now_ms());
      self.shared.unlock(g);
    }
    if let Some(n) = &self.name {
      runtime::detach(CLASS, n);
    }
  }
}

impl Drop for NativeWorkerQueue {
  fn drop(&mut self) {
    // Collected (or its thread ended) without close(): leave the queue.
    self.release();
  }
}
