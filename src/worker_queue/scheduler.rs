//! The WorkerQueue scheduler: plain Rust, no napi. One `Core` per queue (per
//! name, or per unnamed instance), always used under one mutex.
//!
//! What it owns:
//! - the ready heap, ordered by (priority desc, seq asc): higher priority
//!   first, equal priority in insertion order (seq is global to the queue, so
//!   this holds across every handle of a named queue);
//! - the running count against `concurrency`, `maxQueueSize`, `paused`;
//! - per handle (one per JS thread that attached to the queue): its tasks
//!   (indexed by the id the JS layer chose), an inbox of events for it, and a
//!   min-heap of timers (run deadlines and retry back-offs) for which that
//!   handle keeps ONE JS timer armed;
//! - in worker-thread mode, the worker slots: which tasks each worker holds,
//!   whether it sleeps (and how to wake it), whether it is doomed (timed-out or
//!   aborted task: its thread is terminated and replaced) or retiring (close).
//!
//! Every state change that a JS thread must act on becomes an [`Event`] in
//! that handle's inbox. The handle that made the call reads its own events
//! right after the call; another handle is woken through its [`Waker`] (edge
//! triggered: once until it drains).

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::Arc;

use crate::error::Code;

/// Wakes a JS thread (a ThreadsafeFunction in the napi layer, a closure in tests).
pub type Waker = Arc<dyn Fn() + Send + Sync>;

/// How far past the highest task slot a new task id may be.
const MAX_ID_GAP: usize = 1 << 20;

/// Longest timer the JS side can arm (setTimeout's limit).
pub const MAX_DELAY_MS: f64 = 2_147_483_647.0;

/// The validated, normalised options the scheduler needs.
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
  /// Tasks running at once (`u32::MAX` = unbounded).
  pub concurrency: u32,
  /// Most tasks waiting (`u64::MAX` = unbounded).
  pub max_queue: u64,
  /// Default run deadline in ms (`0` = none).
  pub timeout_ms: f64,
  /// Default retries.
  pub retries: u32,
  /// Retry back-off base in ms.
  pub backoff_ms: f64,
  /// Worker-thread mode when > 0.
  pub threads: u32,
}

impl Default for Limits {
  fn default() -> Self {
    Limits {
      concurrency: 1,
      max_queue: u64::MAX,
      timeout_ms: 0.0,
      retries: 0,
      backoff_ms: 100.0,
      threads: 0,
    }
  }
}

/// A payload or a result crossing threads (worker-thread mode). The numbers
/// are the `kind` the JS layer passes and reads.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
  Undefined,
  Null,
  Bool(bool),
  Num(f64),
  Str(String),
  /// `v8.serialize` bytes (structured clone).
  Bytes(Vec<u8>),
  /// `v8.serialize` bytes of an error description `{ name, message, stack, code, props }`.
  Error(Vec<u8>),
}

impl Value {
  pub fn kind(&self) -> u32 {
    match self {
      Value::Undefined => 0,
      Value::Null => 1,
      Value::Bool(_) => 2,
      Value::Num(_) => 3,
      Value::Str(_) => 4,
      Value::Bytes(_) => 5,
      Value::Error(_) => 6,
    }
  }

  /// Build from the JS layer's (kind, number, string, bytes).
  pub fn from_parts(
    kind: u32,
    num: f64,
    text: Option<String>,
    bytes: Option<&[u8]>,
  ) -> Option<Value> {
    Some(match kind {
      0 => Value::Undefined,
      1 => Value::Null,
      2 => Value::Bool(num != 0.0),
      3 => Value::Num(num),
      4 => Value::Str(text?),
      5 => Value::Bytes(bytes?.to_vec()),
      6 => Value::Error(bytes?.to_vec()),
      _ => return None,
    })
  }

  /// Bytes this value needs in a drain's byte area.
  pub fn byte_len(&self) -> usize {
    match self {
      Value::Str(s) => s.len(),
      Value::Bytes(b) | Value::Error(b) => b.len(),
      _ => 0,
    }
  }

  pub fn num(&self) -> f64 {
    match self {
      Value::Bool(b) => *b as u8 as f64,
      Value::Num(n) => *n,
      _ => 0.0,
    }
  }

  pub fn bytes(&self) -> &[u8] {
    match self {
      Value::Str(s) => s.as_bytes(),
      Value::Bytes(b) | Value::Error(b) => b,
      _ => &[],
    }
  }
}

/// What a handle's JS layer must act on.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
  /// Function mode: run task `id` now.
  Start(u32),
  /// Function mode: the running attempt of `id` timed out and a retry is
  /// scheduled; results of the abandoned attempt must be ignored.
  Retrying(u32),
  /// Worker-thread mode: task `id` ended (its default export returned or threw).
  Result { id: u32, ok: bool, value: Value },
  /// Task `id` rejects with `code` (ERR_TIMEOUT: `detail` is the timeout in
  /// ms; ERR_TASK_FAILED: `message` says why).
  Failed {
    id: u32,
    code: Code,
    detail: f64,
    message: String,
  },
  /// Worker-thread mode: terminate the worker thread in `slot` (generation
  /// `gen`) and start a replacement.
  Terminate { slot: u32, gen: u32 },
  /// Nothing to do but re-read the timer (another thread changed it).
  Rearm,
}

impl Event {
  pub fn byte_len(&self) -> usize {
    match self {
      Event::Result { value, .. } => value.byte_len(),
      Event::Failed { message, .. } => message.len(),
      _ => 0,
    }
  }
}

/// What the handle's JS timer must do after a call.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Arm {
  /// Keep whatever is armed.
  Keep,
  /// Cancel the timer: no deadline or back-off is pending.
  Disarm,
  /// (Re)arm to fire in this many ms.
  In(f64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
  Queued,
  Delayed,
  Running,
}

#[derive(Debug)]
struct Task {
  priority: f64,
  seq: u64,
  phase: Phase,
  /// Attempts started.
  attempt: u32,
  retries: u32,
  /// Run deadline in ms, 0 = none.
  timeout_ms: f64,
  /// When it was (re)queued, or when its attempt started.
  since: f64,
  /// Token of its live timer (0 = none).
  timer: u64,
  /// Worker-thread mode, while running: (slot, generation).
  worker: Option<(u32, u32)>,
  payload: Value,
}

#[derive(Debug)]
struct Ready {
  priority: f64,
  seq: u64,
  h: u32,
  id: u32,
}

impl PartialEq for Ready {
  fn eq(&self, o: &Self) -> bool {
    self.cmp(o) == Ordering::Equal
  }
}
impl Eq for Ready {}
impl PartialOrd for Ready {
  fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
    Some(self.cmp(o))
  }
}
impl Ord for Ready {
  // Max-heap: higher priority first, then lower seq (earlier insertion).
  fn cmp(&self, o: &Self) -> Ordering {
    self
      .priority
      .total_cmp(&o.priority)
      .then_with(|| o.seq.cmp(&self.seq))
  }
}

#[derive(Debug)]
struct Timer {
  at: f64,
  token: u64,
  id: u32,
}
impl PartialEq for Timer {
  fn eq(&self, o: &Self) -> bool {
    self.cmp(o) == Ordering::Equal
  }
}
impl Eq for Timer {}
impl PartialOrd for Timer {
  fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
    Some(self.cmp(o))
  }
}
impl Ord for Timer {
  // Min-heap on `at`.
  fn cmp(&self, o: &Self) -> Ordering {
    o.at
      .total_cmp(&self.at)
      .then_with(|| o.token.cmp(&self.token))
  }
}

struct Handle {
  tasks: Vec<Option<Task>>,
  inbox: VecDeque<Event>,
  timers: BinaryHeap<Timer>,
  live_timers: u32,
  /// Absolute time (native clock) the JS timer is armed for.
  armed: Option<f64>,
  waker: Option<Waker>,
  wake_pending: bool,
  queued: u32,
  running: u32,
  closing: bool,
}

impl Handle {
  fn task(&self, id: u32) -> Option<&Task> {
    self.tasks.get(id as usize).and_then(|t| t.as_ref())
  }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WState {
  Dead,
  Starting,
  Active,
  SleepSync,
  /// A sync sleeper that was told to wake (counted in `sync_wakes`).
  Woken,
  SleepAsync,
}

struct Worker {
  gen: u32,
  owner: u32,
  state: WState,
  held: Vec<(u32, u32)>,
  ready: bool,
  doomed: bool,
  retiring: bool,
  waker: Option<Waker>,
}

/// What `take` gives a worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Take {
  /// Run task `id` of handle `h`.
  Task { h: u32, id: u32 },
  /// Nothing startable now.
  Empty,
  /// Stop: this worker is doomed, retiring or replaced.
  Stop,
}

/// What happened to a function-mode task that ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Done {
  /// Settle its promise (fulfilled or rejected, as it ended).
  Settle,
  /// It failed and a retry is scheduled: keep the promise pending.
  Retry,
  /// Not running any more (timed out, aborted): ignore.
  Stale,
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Stats {
  pub completed: u64,
  pub failed: u64,
  pub retried: u64,
  pub timed_out: u64,
  pub aborted: u64,
  pub worker_restarts: u64,
  wait_sum: f64,
  wait_n: u64,
  run_sum: f64,
  run_n: u64,
}

impl Stats {
  pub fn avg_wait_ms(&self) -> f64 {
    if self.wait_n == 0 {
      0.0
    } else {
      self.wait_sum / self.wait_n as f64
    }
  }
  pub fn avg_run_ms(&self) -> f64 {
    if self.run_n == 0 {
      0.0
    } else {
      self.run_sum / self.run_n as f64
    }
  }
}

/// One queue's whole state.
pub struct Core {
  lim: Limits,
  paused: bool,
  ready: BinaryHeap<Ready>,
  ready_live: usize,
  running: u32,
  /// Waiting tasks: queued plus delayed (back-off).
  waiting: u32,
  seq: u64,
  token: u64,
  handles: Vec<Option<Handle>>,
  workers: Vec<Worker>,
  sleepers: u32,
  sync_wakes: u32,
  caller: Option<u32>,
  pub stats: Stats,
  /// Source of jitter in [0, 1) (tests make it fixed).
  pub jitter: fn() -> f64,
}

fn random_unit() -> f64 {
  rand::random::<f64>()
}

/// Retry back-off: `base * 2^(retry-1)` with jitter in [0.5x, 1.5x).
pub fn backoff_ms(base: f64, retry: u32, jitter: f64) -> f64 {
  if base <= 0.0 {
    return 0.0;
  }
  let nominal = base * 2f64.powi(retry.saturating_sub(1).min(40) as i32);
  (nominal * (0.5 + jitter)).min(MAX_DELAY_MS)
}

impl Core {
  pub fn new(lim: Limits) -> Core {
    Core {
      lim,
      paused: false,
      ready: BinaryHeap::new(),
      ready_live: 0,
      running: 0,
      waiting: 0,
      seq: 0,
      token: 0,
      handles: Vec::new(),
      workers: Vec::new(),
      sleepers: 0,
      sync_wakes: 0,
      caller: None,
      stats: Stats::default(),
      jitter: random_unit,
    }
  }

  pub fn limits(&self) -> &Limits {
    &self.lim
  }
  fn thread_mode(&self) -> bool {
    self.lim.threads > 0
  }
  pub fn running(&self) -> u32 {
    self.running
  }
  pub fn waiting(&self) -> u32 {
    self.waiting
  }
  pub fn is_paused(&self) -> bool {
    self.paused
  }

  /// The handle whose thread makes the following calls (its events are read
  /// right after the call, so it is not woken); `None` from a worker thread.
  pub fn set_caller(&mut self, h: Option<u32>) {
    self.caller = h;
  }

  /// Sync sleepers to notify (the caller does it after unlocking).
  pub fn take_sync_wakes(&mut self) -> u32 {
    std::mem::take(&mut self.sync_wakes)
  }

  // ------------------------------------------------------------ handles

  pub fn open_handle(&mut self, waker: Option<Waker>) -> u32 {
    let h = Handle {
      tasks: Vec::new(),
      inbox: VecDeque::new(),
      timers: BinaryHeap::new(),
      live_timers: 0,
      armed: None,
      waker,
      wake_pending: false,
      queued: 0,
      running: 0,
      closing: false,
    };
    if let Some(i) = self.handles.iter().position(|x| x.is_none()) {
      self.handles[i] = Some(h);
      i as u32
    } else {
      self.handles.push(Some(h));
      (self.handles.len() - 1) as u32
    }
  }

  pub fn handle_count(&self) -> usize {
    self.handles.iter().filter(|h| h.is_some()).count()
  }

  /// Stop accepting tasks on `h` (close() has begun).
  pub fn close_handle(&mut self, h: u32) {
    if let Some(hs) = self.hs_mut(h) {
      hs.closing = true;
    }
  }

  /// (queued, running) of handle `h`.
  pub fn counts(&self, h: u32) -> (u32, u32) {
    self
      .hs(h)
      .map(|hs| (hs.queued, hs.running))
      .unwrap_or((0, 0))
  }

  fn hs(&self, h: u32) -> Option<&Handle> {
    self.handles.get(h as usize).and_then(|x| x.as_ref())
  }
  fn hs_mut(&mut self, h: u32) -> Option<&mut Handle> {
    self.handles.get_mut(h as usize).and_then(|x| x.as_mut())
  }

  fn emit(&mut self, h: u32, ev: Event) {
    let caller = self.caller;
    if let Some(hs) = self.hs_mut(h) {
      hs.inbox.push_back(ev);
      if caller != Some(h) && !hs.wake_pending {
        if let Some(w) = &hs.waker {
          hs.wake_pending = true;
          w();
        }
      }
    }
  }

  /// Next event for `h` (its JS layer drains after every call and on wake-up).
  pub fn next_event(&mut self, h: u32) -> Option<Event> {
    self.hs_mut(h).and_then(|hs| hs.inbox.pop_front())
  }
  pub fn peek_event(&self, h: u32) -> Option<&Event> {
    self.hs(h).and_then(|hs| hs.inbox.front())
  }
  /// Put an event back at the front (it did not fit this drain).
  pub fn unread_event(&mut self, h: u32, ev: Event) {
    if let Some(hs) = self.hs_mut(h) {
      hs.inbox.push_front(ev);
    }
  }
  /// The JS thread of `h` is draining: later events wake it again.
  pub fn clear_wake(&mut self, h: u32) {
    if let Some(hs) = self.hs_mut(h) {
      hs.wake_pending = false;
    }
  }

  /// Remove handle `h` and everything it owns: its waiting tasks are dropped,
  /// its running tasks release their slots, its worker threads are doomed (the
  /// tasks of other handles they held fail or are retried as after a crash).
  pub fn drop_handle(&mut self, h: u32, now: f64) {
    let Some(hs) = self.hs(h) else { return };
    let ids: Vec<u32> = hs
      .tasks
      .iter()
      .enumerate()
      .filter_map(|(i, t)| t.as_ref().map(|_| i as u32))
      .collect();
    for id in ids {
      self.remove_task(h, id, now);
    }
    let mine: Vec<u32> = (0..self.workers.len() as u32)
      .filter(|&s| {
        let w = &self.workers[s as usize];
        w.owner == h && w.state != WState::Dead
      })
      .collect();
    for s in mine {
      let gen = self.workers[s as usize].gen;
      self.workers[s as usize].doomed = true;
      self.wake_worker(s);
      self.worker_lost(s, gen, "the thread that owned this worker closed it", now);
    }
    self.handles[h as usize] = None;
    self.pump(now);
  }

  // ------------------------------------------------------------ admission

  /// Admit task `id` of handle `h`. `timeout_ms`: `None` = the queue's
  /// default, `Some(0.0)` = none. `retries`: `None` = the queue's default.
  #[allow(clippy::too_many_arguments)]
  pub fn admit(
    &mut self,
    h: u32,
    id: u32,
    priority: f64,
    timeout_ms: Option<f64>,
    retries: Option<u32>,
    payload: Value,
    now: f64,
  ) -> Result<(), Code> {
    let free = if self.paused {
      0
    } else {
      self.lim.concurrency.saturating_sub(self.running) as usize
    };
    let max_queue = self.lim.max_queue;
    // Tasks still waiting once the free slots are filled: queued ones beyond
    // the free slots, plus those backing off before a retry.
    let delayed = self.waiting as usize - self.ready_live;
    let would_wait = self.ready_live >= free;
    let waiting_after_fill = (self.ready_live.saturating_sub(free) + delayed) as u64;
    let timeout_ms = timeout_ms.unwrap_or(self.lim.timeout_ms);
    let retries = retries.unwrap_or(self.lim.retries);
    let seq = self.seq;
    let Some(hs) = self.hs_mut(h) else {
      return Err(Code::Closed);
    };
    if hs.closing {
      return Err(Code::Closed);
    }
    if would_wait && waiting_after_fill >= max_queue {
      return Err(Code::QueueFull);
    }
    let idx = id as usize;
    // Ids are slots the JS layer reuses, so they stay near the number of
    // tasks alive; a wild id must not make this allocate gigabytes.
    if idx > hs.tasks.len() + MAX_ID_GAP {
      return Err(Code::InvalidArg);
    }
    if hs.tasks.len() <= idx {
      hs.tasks.resize_with(idx + 1, || None);
    }
    if hs.tasks[idx].is_some() {
      return Err(Code::InvalidArg);
    }
    hs.tasks[idx] = Some(Task {
      priority,
      seq,
      phase: Phase::Queued,
      attempt: 0,
      retries,
      timeout_ms,
      since: now,
      timer: 0,
      worker: None,
      payload,
    });
    hs.queued += 1;
    self.seq += 1;
    self.waiting += 1;
    self.ready.push(Ready {
      priority,
      seq,
      h,
      id,
    });
    self.ready_live += 1;
    self.pump(now);
    Ok(())
  }

  fn ready_valid(&self, r: &Ready) -> bool {
    matches!(self.hs(r.h).and_then(|hs| hs.task(r.id)), Some(t) if t.phase == Phase::Queued && t.seq == r.seq)
  }

  fn pop_ready(&mut self) -> Option<(u32, u32)> {
    while let Some(r) = self.ready.pop() {
      if self.ready_valid(&r) {
        self.ready_live -= 1;
        return Some((r.h, r.id));
      }
    }
    None
  }

  fn compact_ready(&mut self) {
    let stale = self.ready.len() - self.ready_live;
    if stale > 1024 && stale > self.ready_live {
      let old = std::mem::take(&mut self.ready);
      let mut keep = Vec::with_capacity(self.ready_live);
      for r in old.into_vec() {
        if self.ready_valid(&r) {
          keep.push(r);
        }
      }
      self.ready = BinaryHeap::from(keep);
    }
  }

  fn can_start(&self) -> bool {
    !self.paused && self.running < self.lim.concurrency && self.ready_live > 0
  }

  /// Start what may start: function mode starts tasks (Start events to their
  /// handles); worker-thread mode wakes sleeping workers, which take tasks.
  fn pump(&mut self, now: f64) {
    if self.thread_mode() {
      if self.sleepers == 0 || !self.can_start() {
        return;
      }
      let mut want = (self.lim.concurrency - self.running) as usize;
      want = want.min(self.ready_live);
      for s in 0..self.workers.len() as u32 {
        if want == 0 {
          break;
        }
        let w = &self.workers[s as usize];
        if w.doomed || w.retiring || !matches!(w.state, WState::SleepSync | WState::SleepAsync) {
          continue;
        }
        self.wake_worker(s);
        want -= 1;
      }
      return;
    }
    while self.can_start() {
      let Some((h, id)) = self.pop_ready() else {
        break;
      };
      self.start(h, id, None, now);
      self.emit(h, Event::Start(id));
    }
  }

  fn wake_worker(&mut self, s: u32) {
    let w = &mut self.workers[s as usize];
    match w.state {
      WState::SleepSync => {
        w.state = WState::Woken;
        self.sleepers -= 1;
        self.sync_wakes += 1;
      }
      WState::SleepAsync => {
        w.state = WState::Active;
        self.sleepers -= 1;
        if let Some(wk) = &w.waker {
          wk();
        }
      }
      _ => {}
    }
  }

  fn start(&mut self, h: u32, id: u32, worker: Option<(u32, u32)>, now: f64) {
    self.token += 1;
    let token = self.token;
    let caller = self.caller;
    let hs = self.handles[h as usize]
      .as_mut()
      .expect("started task's handle");
    let t = hs.tasks[id as usize].as_mut().expect("started task");
    t.phase = Phase::Running;
    t.attempt += 1;
    let waited = now - t.since;
    t.since = now;
    t.worker = worker;
    let timeout = t.timeout_ms;
    if timeout > 0.0 {
      t.timer = token;
    }
    hs.queued -= 1;
    hs.running += 1;
    let mut rearm = false;
    if timeout > 0.0 {
      let at = now + timeout;
      hs.timers.push(Timer { at, token, id });
      hs.live_timers += 1;
      rearm = caller != Some(h) && hs.armed.is_none_or(|a| at < a);
    }
    self.waiting -= 1;
    self.running += 1;
    self.stats.wait_sum += waited.max(0.0);
    self.stats.wait_n += 1;
    if rearm {
      self.emit(h, Event::Rearm);
    }
  }

  /// End the running attempt of (h, id): frees its slot, clears its deadline.
  fn end_attempt(&mut self, h: u32, id: u32, now: f64) {
    let hs = self.handles[h as usize].as_mut().expect("handle");
    let t = hs.tasks[id as usize].as_mut().expect("task");
    debug_assert_eq!(t.phase, Phase::Running);
    let ran = now - t.since;
    if t.timer != 0 {
      t.timer = 0;
      hs.live_timers -= 1;
    }
    t.worker = None;
    hs.running -= 1;
    self.running -= 1;
    self.stats.run_sum += ran.max(0.0);
    self.stats.run_n += 1;
  }

  /// Remove a task in any phase (no event).
  fn remove_task(&mut self, h: u32, id: u32, now: f64) {
    let Some(t) = self.hs(h).and_then(|hs| hs.task(id)) else {
      return;
    };
    match t.phase {
      Phase::Queued => {
        self.ready_live -= 1;
        self.waiting -= 1;
        let hs = self.handles[h as usize].as_mut().expect("handle");
        hs.queued -= 1;
      }
      Phase::Delayed => {
        self.waiting -= 1;
        let hs = self.handles[h as usize].as_mut().expect("handle");
        hs.queued -= 1;
        let t = hs.tasks[id as usize].as_mut().expect("task");
        if t.timer != 0 {
          t.timer = 0;
          hs.live_timers -= 1;
        }
      }
      Phase::Running => {
        if let Some((s, _)) = t.worker {
          self.workers[s as usize].held.retain(|&x| x != (h, id));
        }
        self.end_attempt(h, id, now);
      }
    }
    self.hs_mut(h).expect("handle").tasks[id as usize] = None;
    self.compact_ready();
  }

  /// Put a task back in the ready heap (same priority and seq: it keeps its place).
  fn requeue(&mut self, h: u32, id: u32, now: f64) {
    let hs = self.handles[h as usize].as_mut().expect("handle");
    let t = hs.tasks[id as usize].as_mut().expect("task");
    let from = t.phase;
    t.phase = Phase::Queued;
    t.since = now;
    let (priority, seq) = (t.priority, t.seq);
    if from == Phase::Running {
      hs.queued += 1;
      self.waiting += 1;
    }
    self.ready.push(Ready {
      priority,
      seq,
      h,
      id,
    });
    self.ready_live += 1;
  }

  /// The attempt that just ended failed: retry (true) or not (false).
  fn schedule_retry(&mut self, h: u32, id: u32, now: f64) -> bool {
    let (attempt, retries) = {
      let t = self.handles[h as usize]
        .as_ref()
        .expect("handle")
        .task(id)
        .expect("task");
      (t.attempt, t.retries)
    };
    if attempt > retries {
      return false;
    }
    self.stats.retried += 1;
    let delay = backoff_ms(self.lim.backoff_ms, attempt, (self.jitter)());
    if delay <= 0.0 {
      self.requeue(h, id, now);
      return true;
    }
    self.token += 1;
    let token = self.token;
    let caller = self.caller;
    let hs = self.handles[h as usize].as_mut().expect("handle");
    let t = hs.tasks[id as usize].as_mut().expect("task");
    t.phase = Phase::Delayed;
    t.since = now;
    t.timer = token;
    hs.queued += 1;
    let at = now + delay;
    hs.timers.push(Timer { at, token, id });
    hs.live_timers += 1;
    let rearm = caller != Some(h) && hs.armed.is_none_or(|a| at < a);
    self.waiting += 1;
    if rearm {
      self.emit(h, Event::Rearm);
    }
    true
  }

  // ------------------------------------------------------------ function mode

  /// A function-mode task's attempt ended (`ok`: fulfilled).
  pub fn done_fn(&mut self, h: u32, id: u32, ok: bool, now: f64) -> Done {
    match self.hs(h).and_then(|hs| hs.task(id)) {
      Some(t) if t.phase == Phase::Running && t.worker.is_none() => {}
      _ => return Done::Stale,
    }
    self.end_attempt(h, id, now);
    let r = if ok {
      self.stats.completed += 1;
      self.hs_mut(h).expect("handle").tasks[id as usize] = None;
      Done::Settle
    } else if self.schedule_retry(h, id, now) {
      Done::Retry
    } else {
      self.stats.failed += 1;
      self.hs_mut(h).expect("handle").tasks[id as usize] = None;
      Done::Settle
    };
    self.pump(now);
    r
  }

  /// Abort task (h, id) in any phase. Returns whether it existed. A running
  /// worker-thread task dooms its worker (terminated and replaced).
  pub fn abort(&mut self, h: u32, id: u32, now: f64) -> bool {
    let Some(t) = self.hs(h).and_then(|hs| hs.task(id)) else {
      return false;
    };
    if let (Phase::Running, Some((s, g))) = (t.phase, t.worker) {
      // The aborted task itself ends below (remove_task).
      self.doom_worker(s, g, (h, id), now);
    }
    self.remove_task(h, id, now);
    self.stats.aborted += 1;
    self.pump(now);
    true
  }

  /// Fail every waiting task of `h` with `code`/`message` (the worker module
  /// cannot load).
  pub fn fail_waiting(&mut self, h: u32, code: Code, message: &str, now: f64) {
    let Some(hs) = self.hs(h) else { return };
    let ids: Vec<u32> = hs
      .tasks
      .iter()
      .enumerate()
      .filter_map(|(i, t)| match t {
        Some(t) if t.phase != Phase::Running => Some(i as u32),
        _ => None,
      })
      .collect();
    for id in ids {
      self.remove_task(h, id, now);
      self.stats.failed += 1;
      self.emit(
        h,
        Event::Failed {
          id,
          code,
          detail: 0.0,
          message: message.to_string(),
        },
      );
    }
  }

  pub fn pause(&mut self) {
    self.paused = true;
  }

  pub fn resume(&mut self, now: f64) {
    self.paused = false;
    self.pump(now);
  }

  // ------------------------------------------------------------ timers

  fn timer_valid(hs: &Handle, tm: &Timer) -> bool {
    matches!(hs.task(tm.id), Some(t) if t.timer == tm.token)
  }

  /// What the JS timer of `h` must do now.
  pub fn arm(&mut self, h: u32, now: f64) -> Arm {
    let Some(hs) = self.hs_mut(h) else {
      return Arm::Keep;
    };
    if hs.live_timers == 0 {
      hs.timers.clear();
      return match hs.armed.take() {
        Some(_) => Arm::Disarm,
        None => Arm::Keep,
      };
    }
    while let Some(top) = hs.timers.peek() {
      if Self::timer_valid(hs, top) {
        break;
      }
      hs.timers.pop();
    }
    let Some(at) = hs.timers.peek().map(|t| t.at) else {
      return Arm::Keep;
    };
    match hs.armed {
      // A timer armed earlier fires first and re-arms: no churn per task.
      Some(a) if a <= at => Arm::Keep,
      _ => {
        hs.armed = Some(at);
        Arm::In((at - now).clamp(0.0, MAX_DELAY_MS))
      }
    }
  }

  /// The JS timer of `h` fired: time out running tasks past their deadline,
  /// requeue tasks whose back-off is over.
  pub fn expire(&mut self, h: u32, now: f64) {
    let Some(hs) = self.hs_mut(h) else { return };
    hs.armed = None;
    loop {
      let hs = self.handles[h as usize].as_mut().expect("handle");
      let Some(top) = hs.timers.peek() else { break };
      if !Self::timer_valid(hs, top) {
        hs.timers.pop();
        continue;
      }
      if top.at > now {
        break;
      }
      let id = top.id;
      hs.timers.pop();
      let t = hs.tasks[id as usize].as_mut().expect("task");
      match t.phase {
        Phase::Delayed => {
          t.timer = 0;
          hs.live_timers -= 1;
          self.requeue(h, id, now);
        }
        Phase::Running => {
          let timeout = t.timeout_ms;
          let worker = t.worker;
          self.stats.timed_out += 1;
          if let Some((s, g)) = worker {
            self.doom_worker(s, g, (h, id), now);
          }
          self.end_attempt(h, id, now);
          if self.schedule_retry(h, id, now) {
            if worker.is_none() {
              self.emit(h, Event::Retrying(id));
            }
          } else {
            self.stats.failed += 1;
            self.handles[h as usize].as_mut().expect("handle").tasks[id as usize] = None;
            self.emit(
              h,
              Event::Failed {
                id,
                code: Code::Timeout,
                detail: timeout,
                message: String::new(),
              },
            );
          }
        }
        // Queued tasks have no timer; a stale entry is skipped, not trusted.
        Phase::Queued => {}
      }
    }
    self.pump(now);
  }

  // ------------------------------------------------------------ worker threads

  /// A slot for a new worker thread owned by handle `h`: (slot, generation).
  pub fn spawn_slot(&mut self, owner: u32) -> (u32, u32) {
    let w = Worker {
      gen: 0,
      owner,
      state: WState::Starting,
      held: Vec::new(),
      ready: false,
      doomed: false,
      retiring: false,
      waker: None,
    };
    if let Some(s) = self.workers.iter().position(|w| w.state == WState::Dead) {
      let gen = self.workers[s].gen.wrapping_add(1);
      self.workers[s] = Worker { gen, ..w };
      (s as u32, gen)
    } else {
      self.workers.push(w);
      ((self.workers.len() - 1) as u32, 0)
    }
  }

  fn worker_ok(&self, s: u32, gen: u32) -> bool {
    matches!(self.workers.get(s as usize), Some(w) if w.gen == gen && w.state != WState::Dead)
  }

  /// The worker thread registered its waker. False when it was replaced meanwhile.
  pub fn worker_attach(&mut self, s: u32, gen: u32, waker: Waker) -> bool {
    if !self.worker_ok(s, gen) {
      return false;
    }
    self.workers[s as usize].waker = Some(waker);
    true
  }

  /// The worker loaded the module and starts taking tasks.
  pub fn worker_ready(&mut self, s: u32, gen: u32) -> bool {
    if !self.worker_ok(s, gen) {
      return false;
    }
    let w = &mut self.workers[s as usize];
    w.ready = true;
    w.state = WState::Active;
    true
  }

  /// Live (not dead) worker threads of every handle.
  pub fn live_worker_count(&self) -> u32 {
    self
      .workers
      .iter()
      .filter(|w| w.state != WState::Dead)
      .count() as u32
  }

  /// Live (not dead) worker threads owned by `h`.
  pub fn live_workers(&self, h: u32) -> u32 {
    self
      .workers
      .iter()
      .filter(|w| w.owner == h && w.state != WState::Dead)
      .count() as u32
  }

  /// A worker asks for a task.
  pub fn take(&mut self, s: u32, gen: u32, now: f64) -> Take {
    if !self.worker_ok(s, gen) {
      return Take::Stop;
    }
    {
      let w = &mut self.workers[s as usize];
      if w.state == WState::SleepAsync {
        w.state = WState::Active;
        self.sleepers -= 1;
      }
      let w = &self.workers[s as usize];
      if w.doomed || w.retiring {
        return Take::Stop;
      }
    }
    if !self.can_start() {
      return Take::Empty;
    }
    let Some((h, id)) = self.pop_ready() else {
      return Take::Empty;
    };
    self.start(h, id, Some((s, gen)), now);
    let w = &mut self.workers[s as usize];
    w.held.push((h, id));
    Take::Task { h, id }
  }

  /// The payload of (h, id) (read right after `take`, under the same lock).
  pub fn payload(&self, h: u32, id: u32) -> Option<&Value> {
    self.hs(h).and_then(|hs| hs.task(id)).map(|t| &t.payload)
  }

  /// The worker blocks (sync sleep) waiting for a task.
  pub fn sleep_sync(&mut self, s: u32) {
    let Some(w) = self.workers.get_mut(s as usize) else {
      return;
    };
    if w.state != WState::Dead {
      w.state = WState::SleepSync;
      self.sleepers += 1;
    }
  }

  /// The worker's sync sleep ended (notified or timed out).
  pub fn wake_sync(&mut self, s: u32) {
    let Some(w) = self.workers.get_mut(s as usize) else {
      return;
    };
    match w.state {
      WState::SleepSync => {
        w.state = WState::Active;
        self.sleepers = self.sleepers.saturating_sub(1);
      }
      WState::Woken => w.state = WState::Active,
      _ => {}
    }
  }

  /// The worker returns to its event loop and waits for its waker.
  pub fn sleep_async(&mut self, s: u32) {
    let Some(w) = self.workers.get_mut(s as usize) else {
      return;
    };
    if matches!(w.state, WState::Active | WState::Woken | WState::Starting) {
      w.state = WState::SleepAsync;
      self.sleepers += 1;
    }
  }

  /// A worker finished (h, id). `fatal`: the failure cannot be cured by a
  /// retry (the result could not be cloned). Returns false when the task is
  /// no longer this worker's (timed out, aborted, worker replaced).
  #[allow(clippy::too_many_arguments)]
  pub fn done_worker(
    &mut self,
    s: u32,
    gen: u32,
    h: u32,
    id: u32,
    ok: bool,
    value: Value,
    fatal: bool,
    now: f64,
  ) -> bool {
    if !self.worker_ok(s, gen) {
      return false;
    }
    let w = &mut self.workers[s as usize];
    let Some(pos) = w.held.iter().position(|&x| x == (h, id)) else {
      return false;
    };
    w.held.swap_remove(pos);
    self.end_attempt(h, id, now);
    if ok || fatal || !self.schedule_retry(h, id, now) {
      if ok {
        self.stats.completed += 1;
      } else {
        self.stats.failed += 1;
      }
      self.hs_mut(h).expect("handle").tasks[id as usize] = None;
      self.emit(h, Event::Result { id, ok, value });
    }
    self.pump(now);
    true
  }

  /// Doom worker (s, gen): its owner terminates and replaces it. It lets go
  /// of every task it holds: the caller ends `except` (the task that timed
  /// out or was aborted); the others go back to the queue without losing an
  /// attempt (they did nothing wrong).
  fn doom_worker(&mut self, s: u32, gen: u32, except: (u32, u32), now: f64) {
    if !self.worker_ok(s, gen) || self.workers[s as usize].doomed {
      return;
    }
    let w = &mut self.workers[s as usize];
    w.doomed = true;
    let owner = w.owner;
    let held = std::mem::take(&mut w.held);
    for (h, id) in held {
      if (h, id) == except {
        continue;
      }
      self.end_attempt(h, id, now);
      let t = self.handles[h as usize].as_mut().expect("handle").tasks[id as usize]
        .as_mut()
        .expect("task");
      t.attempt -= 1;
      self.requeue(h, id, now);
    }
    self.emit(owner, Event::Terminate { slot: s, gen });
  }

  /// The worker thread (s, gen) exited or crashed. Its tasks fail with
  /// ERR_TASK_FAILED (`message`) or are retried. Returns false only when it
  /// died before loading the module.
  pub fn worker_lost(&mut self, s: u32, gen: u32, message: &str, now: f64) -> bool {
    let Some(w) = self.workers.get_mut(s as usize) else {
      return true;
    };
    // Already handled, or an older thread of a reused slot: nothing to report.
    if w.gen != gen || w.state == WState::Dead {
      return true;
    }
    if matches!(w.state, WState::SleepSync | WState::SleepAsync) {
      self.sleepers -= 1;
    }
    let w = &mut self.workers[s as usize];
    w.state = WState::Dead;
    w.waker = None;
    let was_ready = w.ready;
    let held = std::mem::take(&mut w.held);
    if !w.retiring && !w.doomed {
      self.stats.worker_restarts += 1;
    }
    for (h, id) in held {
      self.end_attempt(h, id, now);
      if !self.schedule_retry(h, id, now) {
        self.stats.failed += 1;
        self.hs_mut(h).expect("handle").tasks[id as usize] = None;
        self.emit(
          h,
          Event::Failed {
            id,
            code: Code::TaskFailed,
            detail: 0.0,
            message: message.to_string(),
          },
        );
      }
    }
    self.pump(now);
    was_ready
  }

  /// Close: the workers of `h` take no more tasks; they finish what they hold
  /// and exit. Sleeping ones are woken.
  pub fn retire_workers(&mut self, h: u32) {
    for s in 0..self.workers.len() as u32 {
      let w = &mut self.workers[s as usize];
      if w.owner == h && w.state != WState::Dead {
        w.retiring = true;
        self.wake_worker(s);
      }
    }
  }
}

#[cfg(test)]
mod tests {
  use super::*;
  use std::sync::atomic::{AtomicUsize, Ordering as AO};

  fn lim(concurrency: u32) -> Limits {
    Limits {
      concurrency,
      ..Limits::default()
    }
  }

  fn core(concurrency: u32) -> (Core, u32) {
    let mut c = Core::new(lim(concurrency));
    c.jitter = || 0.5;
    let h = c.open_handle(None);
    c.set_caller(Some(h));
    (c, h)
  }

  fn drain(c: &mut Core, h: u32) -> Vec<Event> {
    let mut v = Vec::new();
    while let Some(e) = c.next_event(h) {
      v.push(e);
    }
    v
  }

  fn starts(c: &mut Core, h: u32) -> Vec<u32> {
    drain(c, h)
      .into_iter()
      .filter_map(|e| match e {
        Event::Start(id) => Some(id),
        _ => None,
      })
      .collect()
  }

  fn add(c: &mut Core, h: u32, id: u32, prio: f64) -> Result<(), Code> {
    c.admit(h, id, prio, None, None, Value::Undefined, 0.0)
  }

  #[test]
  fn concurrency_bound_and_fifo() {
    let (mut c, h) = core(2);
    for id in 0..5 {
      add(&mut c, h, id, 0.0).unwrap();
    }
    assert_eq!(starts(&mut c, h), vec![0, 1]);
    assert_eq!(c.counts(h), (3, 2));
    assert_eq!(c.done_fn(h, 0, true, 1.0), Done::Settle);
    assert_eq!(starts(&mut c, h), vec![2]);
    assert_eq!(c.done_fn(h, 1, true, 1.0), Done::Settle);
    assert_eq!(c.done_fn(h, 2, true, 1.0), Done::Settle);
    assert_eq!(starts(&mut c, h), vec![3, 4]);
    assert_eq!(c.running(), 2);
    assert_eq!(c.stats.completed, 3);
  }

  #[test]
  fn priority_then_insertion_order() {
    let (mut c, h) = core(1);
    add(&mut c, h, 0, 0.0).unwrap(); // starts
    add(&mut c, h, 1, 1.0).unwrap();
    add(&mut c, h, 2, 5.0).unwrap();
    add(&mut c, h, 3, 1.0).unwrap();
    add(&mut c, h, 4, -2.5).unwrap();
    add(&mut c, h, 5, 5.0).unwrap();
    assert_eq!(starts(&mut c, h), vec![0]);
    let mut order = Vec::new();
    let mut cur = 0;
    for _ in 0..5 {
      c.done_fn(h, cur, true, 0.0);
      let s = starts(&mut c, h);
      assert_eq!(s.len(), 1);
      cur = s[0];
      order.push(cur);
    }
    assert_eq!(order, vec![2, 5, 1, 3, 4]);
  }

  #[test]
  fn queue_full_counts_waiting_only() {
    let mut c = Core::new(Limits {
      concurrency: 1,
      max_queue: 2,
      ..Limits::default()
    });
    let h = c.open_handle(None);
    c.set_caller(Some(h));
    add(&mut c, h, 0, 0.0).unwrap(); // runs
    add(&mut c, h, 1, 0.0).unwrap();
    add(&mut c, h, 2, 0.0).unwrap();
    assert_eq!(add(&mut c, h, 3, 0.0), Err(Code::QueueFull));
    c.done_fn(h, 0, true, 0.0);
    add(&mut c, h, 3, 0.0).unwrap();
    // maxQueueSize 0: only what can start now.
    let mut z = Core::new(Limits {
      concurrency: 1,
      max_queue: 0,
      ..Limits::default()
    });
    let h = z.open_handle(None);
    assert_eq!(
      z.admit(h, 0, 0.0, None, None, Value::Undefined, 0.0),
      Ok(())
    );
    assert_eq!(
      z.admit(h, 1, 0.0, None, None, Value::Undefined, 0.0),
      Err(Code::QueueFull)
    );
  }

  #[test]
  fn abort_queued_never_runs_and_abort_running_frees_slot() {
    let (mut c, h) = core(1);
    add(&mut c, h, 0, 0.0).unwrap();
    add(&mut c, h, 1, 0.0).unwrap();
    add(&mut c, h, 2, 0.0).unwrap();
    assert_eq!(starts(&mut c, h), vec![0]);
    assert!(c.abort(h, 1, 0.0));
    assert!(!c.abort(h, 1, 0.0));
    assert_eq!(c.counts(h), (1, 1));
    assert!(c.abort(h, 0, 0.0)); // running: the slot frees, 2 starts
    assert_eq!(starts(&mut c, h), vec![2]);
    assert_eq!(c.done_fn(h, 0, true, 0.0), Done::Stale);
    assert_eq!(c.stats.aborted, 2);
  }

  #[test]
  fn timeout_rejects_and_frees_the_slot() {
    let (mut c, h) = core(1);
    c.admit(h, 0, 0.0, Some(50.0), None, Value::Undefined, 0.0)
      .unwrap();
    c.admit(h, 1, 0.0, None, None, Value::Undefined, 0.0)
      .unwrap();
    assert_eq!(starts(&mut c, h), vec![0]);
    assert_eq!(c.arm(h, 0.0), Arm::In(50.0));
    assert_eq!(c.arm(h, 0.0), Arm::Keep);
    c.expire(h, 49.0);
    assert!(drain(&mut c, h).is_empty());
    assert_eq!(c.arm(h, 49.0), Arm::In(1.0));
    c.expire(h, 50.0);
    let ev = drain(&mut c, h);
    assert!(
      matches!(ev[0], Event::Failed { id: 0, code: Code::Timeout, detail, .. } if detail == 50.0)
    );
    assert_eq!(ev[1], Event::Start(1));
    assert_eq!(c.arm(h, 50.0), Arm::Keep); // nothing was armed after expire
    assert_eq!(c.done_fn(h, 0, true, 60.0), Done::Stale);
    assert_eq!(c.stats.timed_out, 1);
    assert_eq!(c.stats.failed, 1);
  }

  #[test]
  fn finished_tasks_disarm_the_timer() {
    let (mut c, h) = core(4);
    c.admit(h, 0, 0.0, Some(1000.0), None, Value::Undefined, 0.0)
      .unwrap();
    assert_eq!(c.arm(h, 0.0), Arm::In(1000.0));
    c.done_fn(h, 0, true, 1.0);
    assert_eq!(c.arm(h, 1.0), Arm::Disarm);
    assert_eq!(c.arm(h, 1.0), Arm::Keep);
  }

  #[test]
  fn retries_with_backoff_keep_their_place() {
    let mut c = Core::new(Limits {
      concurrency: 1,
      retries: 2,
      backoff_ms: 100.0,
      ..Limits::default()
    });
    c.jitter = || 0.5; // nominal back-off
    let h = c.open_handle(None);
    c.set_caller(Some(h));
    add(&mut c, h, 0, 0.0).unwrap();
    assert_eq!(starts(&mut c, h), vec![0]);
    assert_eq!(c.done_fn(h, 0, false, 10.0), Done::Retry);
    assert_eq!(c.arm(h, 10.0), Arm::In(100.0));
    add(&mut c, h, 1, 0.0).unwrap(); // starts while 0 backs off
    assert_eq!(starts(&mut c, h), vec![1]);
    c.expire(h, 110.0);
    assert!(starts(&mut c, h).is_empty()); // requeued, but the slot is taken
    add(&mut c, h, 2, 0.0).unwrap();
    c.done_fn(h, 1, true, 120.0);
    assert_eq!(starts(&mut c, h), vec![0]); // 0 kept its seq: ahead of 2
    assert_eq!(c.done_fn(h, 0, false, 130.0), Done::Retry);
    assert_eq!(starts(&mut c, h), vec![2]);
    assert_eq!(c.arm(h, 130.0), Arm::In(200.0)); // 100 * 2^1
    c.done_fn(h, 2, true, 131.0);
    c.expire(h, 330.0);
    assert_eq!(starts(&mut c, h), vec![0]);
    assert_eq!(c.done_fn(h, 0, false, 340.0), Done::Settle); // retries exhausted
    assert_eq!(c.stats.retried, 2);
    assert_eq!(c.stats.failed, 1);
    assert_eq!(c.counts(h), (0, 0));
  }

  #[test]
  fn backoff_grows_with_jitter_bounds() {
    assert_eq!(backoff_ms(100.0, 1, 0.5), 100.0);
    assert_eq!(backoff_ms(100.0, 3, 0.5), 400.0);
    assert_eq!(backoff_ms(100.0, 1, 0.0), 50.0);
    assert!(backoff_ms(100.0, 1, 0.999) < 150.0);
    assert_eq!(backoff_ms(0.0, 5, 0.3), 0.0);
    assert_eq!(backoff_ms(1e9, 60, 0.9), MAX_DELAY_MS);
  }

  #[test]
  fn timeout_with_retry_emits_retrying() {
    let mut c = Core::new(Limits {
      concurrency: 1,
      retries: 1,
      backoff_ms: 0.0,
      ..Limits::default()
    });
    let h = c.open_handle(None);
    c.set_caller(Some(h));
    c.admit(h, 0, 0.0, Some(10.0), None, Value::Undefined, 0.0)
      .unwrap();
    assert_eq!(starts(&mut c, h), vec![0]);
    c.expire(h, 10.0);
    assert_eq!(drain(&mut c, h), vec![Event::Retrying(0), Event::Start(0)]);
    assert_eq!(c.stats.timed_out, 1);
    assert_eq!(c.stats.retried, 1);
  }

  #[test]
  fn pause_and_resume() {
    let (mut c, h) = core(2);
    c.pause();
    add(&mut c, h, 0, 0.0).unwrap();
    add(&mut c, h, 1, 0.0).unwrap();
    assert!(starts(&mut c, h).is_empty());
    c.resume(0.0);
    assert_eq!(starts(&mut c, h), vec![0, 1]);
  }

  #[test]
  fn closed_handle_rejects() {
    let (mut c, h) = core(1);
    c.close_handle(h);
    assert_eq!(add(&mut c, h, 0, 0.0), Err(Code::Closed));
  }

  #[test]
  fn stale_ready_entries_are_compacted() {
    let (mut c, h) = core(1);
    c.pause();
    for id in 0..5000 {
      add(&mut c, h, id, 0.0).unwrap();
    }
    for id in 0..4990 {
      assert!(c.abort(h, id, 0.0));
    }
    assert!(c.ready.len() < 2100, "heap {}", c.ready.len());
    c.resume(0.0);
    assert_eq!(starts(&mut c, h), vec![4990]);
  }

  #[test]
  fn shared_queue_wakes_the_other_handle() {
    let mut c = Core::new(lim(1));
    let woken = Arc::new(AtomicUsize::new(0));
    let w2 = woken.clone();
    let a = c.open_handle(None);
    let b = c.open_handle(Some(Arc::new(move || {
      w2.fetch_add(1, AO::SeqCst);
    })));
    c.set_caller(Some(a));
    add(&mut c, a, 0, 0.0).unwrap();
    c.set_caller(Some(b));
    add(&mut c, b, 0, 0.0).unwrap();
    assert_eq!(woken.load(AO::SeqCst), 0);
    c.set_caller(Some(a));
    c.done_fn(a, 0, true, 0.0);
    assert_eq!(woken.load(AO::SeqCst), 1);
    c.done_fn(a, 1, true, 0.0); // unknown: stale, no wake
    assert_eq!(woken.load(AO::SeqCst), 1);
    assert_eq!(drain(&mut c, b), vec![Event::Start(0)]);
    assert_eq!(c.counts(b), (0, 1));
  }

  fn thread_core(concurrency: u32) -> (Core, u32) {
    let mut c = Core::new(Limits {
      concurrency,
      threads: 2,
      ..Limits::default()
    });
    c.jitter = || 0.5;
    let h = c.open_handle(None);
    c.set_caller(Some(h));
    (c, h)
  }

  #[test]
  fn workers_take_in_priority_order_and_results_reach_the_owner() {
    let (mut c, h) = thread_core(2);
    let (s, g) = c.spawn_slot(h);
    assert!(c.worker_ready(s, g));
    c.admit(h, 0, 0.0, None, None, Value::Num(1.0), 0.0)
      .unwrap();
    c.admit(h, 1, 9.0, None, None, Value::Str("x".into()), 0.0)
      .unwrap();
    c.set_caller(None);
    assert_eq!(c.take(s, g, 1.0), Take::Task { h, id: 1 });
    assert_eq!(c.payload(h, 1), Some(&Value::Str("x".into())));
    assert_eq!(c.take(s, g, 1.0), Take::Task { h, id: 0 });
    assert_eq!(c.take(s, g, 1.0), Take::Empty);
    assert!(c.done_worker(s, g, h, 1, true, Value::Num(2.0), false, 2.0));
    assert!(!c.done_worker(s, g, h, 1, true, Value::Num(2.0), false, 2.0));
    assert_eq!(
      drain(&mut c, h),
      vec![Event::Result {
        id: 1,
        ok: true,
        value: Value::Num(2.0)
      }]
    );
    assert_eq!(c.counts(h), (0, 1));
  }

  #[test]
  fn sleeping_workers_are_woken() {
    let (mut c, h) = thread_core(2);
    let (s1, g1) = c.spawn_slot(h);
    let (s2, g2) = c.spawn_slot(h);
    let woken = Arc::new(AtomicUsize::new(0));
    let w = woken.clone();
    c.worker_attach(
      s2,
      g2,
      Arc::new(move || {
        w.fetch_add(1, AO::SeqCst);
      }),
    );
    c.worker_ready(s1, g1);
    c.worker_ready(s2, g2);
    c.sleep_sync(s1);
    c.sleep_async(s2);
    c.admit(h, 0, 0.0, None, None, Value::Null, 0.0).unwrap();
    // One task: one worker woken (the sync sleeper first).
    assert_eq!(c.take_sync_wakes(), 1);
    assert_eq!(woken.load(AO::SeqCst), 0);
    c.admit(h, 1, 0.0, None, None, Value::Null, 0.0).unwrap();
    assert_eq!(woken.load(AO::SeqCst), 1);
    c.wake_sync(s1);
    assert!(matches!(c.take(s1, g1, 0.0), Take::Task { .. }));
    assert!(matches!(c.take(s2, g2, 0.0), Take::Task { .. }));
  }

  #[test]
  fn timeout_dooms_the_worker_and_requeues_its_other_tasks() {
    let (mut c, h) = thread_core(4);
    let (s, g) = c.spawn_slot(h);
    c.worker_ready(s, g);
    c.admit(h, 0, 0.0, Some(10.0), None, Value::Null, 0.0)
      .unwrap();
    c.admit(h, 1, 0.0, None, None, Value::Null, 0.0).unwrap();
    c.set_caller(None);
    assert_eq!(c.take(s, g, 0.0), Take::Task { h, id: 0 });
    assert_eq!(c.take(s, g, 0.0), Take::Task { h, id: 1 });
    // A deadline started on a worker thread: the owner is told to re-arm.
    assert_eq!(drain(&mut c, h), vec![Event::Rearm]);
    c.set_caller(Some(h));
    assert_eq!(c.arm(h, 0.0), Arm::In(10.0));
    c.expire(h, 10.0);
    let ev = drain(&mut c, h);
    assert!(ev.contains(&Event::Terminate { slot: s, gen: g }));
    assert!(ev.iter().any(|e| matches!(
      e,
      Event::Failed {
        id: 0,
        code: Code::Timeout,
        ..
      }
    )));
    assert_eq!(c.take(s, g, 11.0), Take::Stop);
    assert!(!c.done_worker(s, g, h, 1, true, Value::Null, false, 11.0));
    // The replacement runs task 1 (not lost).
    let (s2, g2) = c.spawn_slot(h);
    c.worker_ready(s2, g2);
    assert_eq!(c.take(s2, g2, 12.0), Take::Task { h, id: 1 });
    // The doomed thread's exit fails nothing and is no restart.
    assert!(c.worker_lost(s, g, "terminated", 12.0));
    assert!(drain(&mut c, h).is_empty());
    assert_eq!(c.stats.worker_restarts, 0);
    assert_eq!(c.counts(h), (0, 1));
  }

  #[test]
  fn crashed_worker_fails_only_its_task() {
    let (mut c, h) = thread_core(2);
    let (s1, g1) = c.spawn_slot(h);
    let (s2, g2) = c.spawn_slot(h);
    c.worker_ready(s1, g1);
    c.worker_ready(s2, g2);
    for id in 0..3 {
      c.admit(h, id, 0.0, None, None, Value::Null, 0.0).unwrap();
    }
    assert_eq!(c.take(s1, g1, 0.0), Take::Task { h, id: 0 });
    assert_eq!(c.take(s2, g2, 0.0), Take::Task { h, id: 1 });
    assert!(c.worker_lost(s1, g1, "exit code 3", 1.0));
    let ev = drain(&mut c, h);
    assert_eq!(
      ev,
      vec![Event::Failed {
        id: 0,
        code: Code::TaskFailed,
        detail: 0.0,
        message: "exit code 3".into()
      }]
    );
    assert_eq!(c.stats.worker_restarts, 1);
    assert_eq!(c.take(s2, g2, 1.0), Take::Task { h, id: 2 });
    // Its slot is reused with a new generation.
    let (s3, g3) = c.spawn_slot(h);
    assert_eq!((s3, g3), (s1, g1 + 1));
    assert_eq!(c.take(s1, g1, 1.0), Take::Stop);
    // The old thread's exit (reported late) changes nothing.
    assert!(c.worker_lost(s1, g1, "late", 2.0));
    assert_eq!(c.stats.worker_restarts, 1);
    assert_eq!(c.live_workers(h), 2);
  }

  #[test]
  fn crash_with_retries_requeues() {
    let mut c = Core::new(Limits {
      concurrency: 1,
      threads: 1,
      retries: 1,
      backoff_ms: 0.0,
      ..Limits::default()
    });
    let h = c.open_handle(None);
    let (s, g) = c.spawn_slot(h);
    c.worker_ready(s, g);
    c.admit(h, 0, 0.0, None, None, Value::Null, 0.0).unwrap();
    assert!(matches!(c.take(s, g, 0.0), Take::Task { .. }));
    c.worker_lost(s, g, "crash", 1.0);
    assert!(drain(&mut c, h).is_empty());
    let (s2, g2) = c.spawn_slot(h);
    c.worker_ready(s2, g2);
    assert_eq!(c.take(s2, g2, 1.0), Take::Task { h, id: 0 });
    assert!(c.done_worker(s2, g2, h, 0, false, Value::Error(vec![1]), false, 2.0));
    assert!(matches!(
      &drain(&mut c, h)[..],
      [Event::Result {
        id: 0,
        ok: false,
        ..
      }]
    ));
  }

  #[test]
  fn retire_stops_workers() {
    let (mut c, h) = thread_core(2);
    let (s, g) = c.spawn_slot(h);
    c.worker_ready(s, g);
    c.sleep_sync(s);
    c.retire_workers(h);
    assert_eq!(c.take_sync_wakes(), 1);
    c.wake_sync(s);
    assert_eq!(c.take(s, g, 0.0), Take::Stop);
  }

  #[test]
  fn dropping_a_handle_releases_its_slots() {
    let mut c = Core::new(lim(1));
    let a = c.open_handle(None);
    let b = c.open_handle(None);
    c.admit(a, 0, 0.0, None, None, Value::Null, 0.0).unwrap();
    c.admit(a, 1, 0.0, None, None, Value::Null, 0.0).unwrap();
    c.admit(b, 0, 0.0, None, None, Value::Null, 0.0).unwrap();
    c.drop_handle(a, 1.0);
    assert_eq!(c.running(), 1);
    assert_eq!(drain(&mut c, b), vec![Event::Start(0)]);
    assert_eq!(c.handle_count(), 1);
  }
}

/// Property tests (proptest): random sequences of add / done / abort /
/// timer ticks (timeouts, retries after back-off) / pause / resume / close
/// over two handles of one queue, checked against a model of what the JS
/// layer sees: invariants hold after every step, and every admitted task ends
/// exactly once (settled, failed by an event, aborted, or dropped at close).
#[cfg(test)]
mod model_tests {
  use super::*;
  use proptest::prelude::*;
  use std::collections::{BTreeMap, BTreeSet};

  #[derive(Clone, Debug)]
  enum Op {
    Add {
      h: usize,
      prio: i8,
      timeout: u8,
      retries: u8,
    },
    Done {
      h: usize,
      pick: usize,
      ok: bool,
    },
    Abort {
      h: usize,
      pick: usize,
    },
    Tick {
      dt: u16,
    },
    Pause,
    Resume,
    Close {
      h: usize,
    },
  }

  fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
      4 => (0..2usize, -2i8..3, 0u8..3, 0u8..3).prop_map(|(h, prio, timeout, retries)| Op::Add { h, prio, timeout, retries }),
      4 => (0..2usize, 0..8usize, prop::bool::weighted(0.6)).prop_map(|(h, pick, ok)| Op::Done { h, pick, ok }),
      1 => (0..2usize, 0..8usize).prop_map(|(h, pick)| Op::Abort { h, pick }),
      3 => (0u16..400).prop_map(|dt| Op::Tick { dt }),
      1 => Just(Op::Pause),
      1 => Just(Op::Resume),
      1 => (0..2usize).prop_map(|h| Op::Close { h }),
    ]
  }

  #[derive(Default)]
  struct Side {
    /// id -> running (the JS layer was told Start and no Retrying since)
    live: BTreeMap<u32, bool>,
    ended: BTreeSet<u32>,
    next: u32,
    open: bool,
  }

  fn end(side: &mut Side, id: u32, how: &str) {
    assert!(
      side.live.remove(&id).is_some(),
      "task {id} ended ({how}) but was not live"
    );
    assert!(side.ended.insert(id), "task {id} ended twice ({how})");
  }

  fn read_events(c: &mut Core, hs: &[u32; 2], sides: &mut [Side; 2]) {
    for k in 0..2 {
      if !sides[k].open {
        continue;
      }
      while let Some(e) = c.next_event(hs[k]) {
        let side = &mut sides[k];
        match e {
          Event::Start(id) => {
            let r = side
              .live
              .get_mut(&id)
              .unwrap_or_else(|| panic!("Start({id}) of a task not live"));
            assert!(!*r, "Start({id}) while running");
            *r = true;
          }
          Event::Retrying(id) => {
            let r = side
              .live
              .get_mut(&id)
              .unwrap_or_else(|| panic!("Retrying({id}) of a task not live"));
            assert!(*r, "Retrying({id}) while not running");
            *r = false;
          }
          Event::Failed { id, code, .. } => {
            assert_eq!(code, Code::Timeout);
            end(side, id, "Failed event");
          }
          Event::Rearm => {}
          other => panic!("unexpected event in function mode: {other:?}"),
        }
      }
    }
  }

  fn check(c: &Core, hs: &[u32; 2], sides: &[Side; 2], concurrency: u32) {
    let running: usize = sides
      .iter()
      .map(|s| s.live.values().filter(|r| **r).count())
      .sum();
    assert_eq!(c.running() as usize, running, "running count");
    assert!(c.running() <= concurrency);
    for k in 0..2 {
      if sides[k].open {
        let (w, r) = c.counts(hs[k]);
        let live = sides[k].live.len() as u32;
        assert_eq!(
          w + r,
          live,
          "handle {k}: waiting {w} + running {r} vs {live} live"
        );
      }
    }
  }

  proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn every_task_ends_exactly_once(concurrency in 1u32..4, max_queue in 1u64..8, ops in prop::collection::vec(op(), 1..120)) {
      let mut c = Core::new(Limits { concurrency, max_queue, backoff_ms: 10.0, ..Limits::default() });
      c.jitter = || 0.5;
      let hs = [c.open_handle(None), c.open_handle(None)];
      let mut sides: [Side; 2] = [Side { open: true, ..Side::default() }, Side { open: true, ..Side::default() }];
      let mut now = 0.0;
      let mut admitted = [0usize; 2];
      for op in ops {
        match op {
          Op::Add { h, prio, timeout, retries } => {
            if !sides[h].open {
              continue;
            }
            let id = sides[h].next;
            sides[h].next += 1;
            let timeout = match timeout { 0 => Some(0.0), 1 => Some(50.0), _ => Some(300.0) };
            c.set_caller(Some(hs[h]));
            match c.admit(hs[h], id, prio as f64, timeout, Some(retries as u32), Value::Undefined, now) {
              Ok(()) => {
                sides[h].live.insert(id, false);
                admitted[h] += 1;
              }
              Err(code) => prop_assert_eq!(code, Code::QueueFull),
            }
          }
          Op::Done { h, pick, ok } => {
            if !sides[h].open || sides[h].live.is_empty() {
              continue;
            }
            let (&id, &running) = sides[h].live.iter().nth(pick % sides[h].live.len()).unwrap();
            match c.done_fn(hs[h], id, ok, now) {
              Done::Settle => {
                prop_assert!(running);
                end(&mut sides[h], id, "done");
              }
              Done::Retry => {
                prop_assert!(running && !ok);
                sides[h].live.insert(id, false);
              }
              Done::Stale => prop_assert!(!running, "done_fn of running task {} was Stale", id),
            }
          }
          Op::Abort { h, pick } => {
            if !sides[h].open || sides[h].live.is_empty() {
              // Aborting an unknown id is a no-op.
              prop_assert!(!c.abort(hs[h], 1_000_000, now));
              continue;
            }
            let id = *sides[h].live.keys().nth(pick % sides[h].live.len()).unwrap();
            prop_assert!(c.abort(hs[h], id, now));
            end(&mut sides[h], id, "abort");
          }
          Op::Tick { dt } => {
            now += dt as f64;
            for k in 0..2 {
              if sides[k].open {
                c.expire(hs[k], now);
                let _ = c.arm(hs[k], now);
              }
            }
          }
          Op::Pause => c.pause(),
          Op::Resume => c.resume(now),
          Op::Close { h } => {
            if !sides[h].open {
              continue;
            }
            read_events(&mut c, &hs, &mut sides);
            c.drop_handle(hs[h], now);
            let ids: Vec<u32> = sides[h].live.keys().copied().collect();
            for id in ids {
              end(&mut sides[h], id, "close");
            }
            sides[h].open = false;
          }
        }
        read_events(&mut c, &hs, &mut sides);
        check(&c, &hs, &sides, concurrency);
      }
      // Close everything: every admitted task has ended exactly once.
      for k in 0..2 {
        if sides[k].open {
          c.drop_handle(hs[k], now);
          let ids: Vec<u32> = sides[k].live.keys().copied().collect();
          for id in ids {
            end(&mut sides[k], id, "final close");
          }
        }
        prop_assert_eq!(sides[k].ended.len(), admitted[k]);
      }
      prop_assert_eq!(c.running(), 0);
      prop_assert_eq!(c.waiting(), 0);
    }

    /// Ids and slots from JS that name nothing are no-ops, never panics.
    #[test]
    fn unknown_ids_and_slots_are_harmless(h in 0u32..5, id in prop::num::u32::ANY, s in prop::num::u32::ANY, gen in prop::num::u32::ANY) {
      let mut c = Core::new(Limits::default());
      let _h0 = c.open_handle(None);
      prop_assert_eq!(c.done_fn(h, id, true, 0.0), Done::Stale);
      prop_assert!(!c.abort(h, id, 0.0));
      c.expire(h, 0.0);
      let _ = c.arm(h, 0.0);
      prop_assert!(c.payload(h, id).is_none());
      prop_assert_eq!(c.take(s, gen, 0.0), Take::Stop);
      c.sleep_sync(s);
      c.wake_sync(s);
      c.sleep_async(s);
      prop_assert!(!c.worker_ready(s, gen));
      c.drop_handle(h + 10, 0.0);
    }
  }
}
