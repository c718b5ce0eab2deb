//! The limiter core behind `NativeRateLimiter`: validated configuration,
//! the in-process store or Redis (with the `onRedisError` policy), counters,
//! and `acquire`'s per-key FIFO of waiters woken by timers on the runtime.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;

use super::local::{self, Decision, LocalStore, Params, Store};
use super::redis::Remote;
use crate::error::{check_finite, check_positive_int, Code, HpError, HpResult};
use crate::redis::{Redis, RedisConfig};
use crate::runtime::{self, now_ms};

pub const CLASS: &str = "RateLimiter";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algo {
  SlidingWindow,
  SlidingWindowCounter,
  FixedWindow,
  TokenBucket,
  Gcra,
}

impl Algo {
  pub fn parse(s: Option<&str>) -> HpResult<Algo> {
    Ok(match s {
      None | Some("sliding-window") => Algo::SlidingWindow,
      Some("sliding-window-counter") => Algo::SlidingWindowCounter,
      Some("fixed-window") => Algo::FixedWindow,
      Some("token-bucket") => Algo::TokenBucket,
      Some("gcra") => Algo::Gcra,
      Some(o) => {
        return Err(HpError::invalid(format!(
          "algorithm must be 'sliding-window', 'sliding-window-counter', 'fixed-window', 'token-bucket' or 'gcra', got '{o}'"
        )))
      }
    })
  }
  pub fn name(self) -> &'static str {
    match self {
      Algo::SlidingWindow => "sliding-window",
      Algo::SlidingWindowCounter => "sliding-window-counter",
      Algo::FixedWindow => "fixed-window",
      Algo::TokenBucket => "token-bucket",
      Algo::Gcra => "gcra",
    }
  }
}

/// What a check does when Redis fails or is slow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnError {
  Allow,
  Deny,
  Local,
}

impl OnError {
  pub fn parse(s: Option<&str>) -> HpResult<OnError> {
    Ok(match s {
      None | Some("local") => OnError::Local,
      Some("allow") => OnError::Allow,
      Some("deny") => OnError::Deny,
      Some(o) => {
        return Err(HpError::invalid(format!(
          "onRedisError must be 'allow', 'deny' or 'local', got '{o}'"
        )))
      }
    })
  }
}

/// Validated options.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
  pub algo: Algo,
  pub params: Params,
  pub max_keys: usize,
  pub redis: Option<RedisConfig>,
  pub on_error: OnError,
}

impl Config {
  pub fn new(
    limit: f64,
    window_ms: f64,
    algorithm: Option<&str>,
    max_keys: Option<f64>,
    redis: Option<RedisConfig>,
    on_error: Option<&str>,
  ) -> HpResult<Config> {
    let positive = |name: &str, v: f64| -> HpResult<f64> {
      let v = check_finite(name, v)?;
      if v <= 0.0 {
        return Err(HpError::invalid(format!("{name} must be > 0, got {v}")));
      }
      Ok(v)
    };
    Ok(Config {
      params: Params {
        limit: positive("limit", limit)?,
        window: positive("windowMs", window_ms)?,
      },
      algo: Algo::parse(algorithm)?,
      max_keys: check_positive_int("maxKeys", max_keys.unwrap_or(1_000_000.0))? as usize,
      redis,
      on_error: OnError::parse(on_error)?,
    })
  }
}

/// Settles one waiting `acquire` (resolves or rejects its Promise).
pub type Settle = Box<dyn FnOnce(HpResult<()>) + Send>;

struct Waiter {
  id: u64,
  cost: f64,
  owner: u64,
  settle: Settle,
  timer: Option<tokio::task::AbortHandle>,
  /// Set when cancelled while its Redis check is in flight: the check decides.
  cancelled: Option<HpError>,
}

impl Waiter {
  fn finish(self, r: HpResult<()>) {
    if let Some(t) = self.timer {
      t.abort();
    }
    (self.settle)(r);
  }
}

struct KeyQueue {
  waiters: VecDeque<Waiter>,
  notify: Arc<Notify>,
  /// The head's check is in flight (Redis): cancelling it only marks it.
  busy: bool,
}

#[derive(Default)]
struct Queues {
  by_key: HashMap<String, KeyQueue>,
  key_of: HashMap<u64, String>,
}

#[derive(Default)]
pub struct Counters {
  pub allowed: AtomicU64,
  pub denied: AtomicU64,
  pub redis_errors: AtomicU64,
}

/// How long checks skip a failed Redis before trying it again (ms).
const REDIS_RETRY_MS: f64 = 100.0;

/// One limiter's shared state (per name, or per unnamed instance).
pub struct Limiter {
  pub cfg: Config,
  local: Box<dyn LocalStore>,
  remote: Option<Remote>,
  pub c: Counters,
  /// Limiter clock (ms) before which Redis is not tried (it just failed).
  redis_down_until: AtomicU64,
  queues: Mutex<Queues>,
  next_id: AtomicU64,
  closed: AtomicBool,
}

fn store(cfg: &Config) -> Box<dyn LocalStore> {
  let (p, n) = (cfg.params, cfg.max_keys);
  match cfg.algo {
    Algo::SlidingWindow => Box::new(Store::<local::SlidingLog>::new(p, n)),
    Algo::SlidingWindowCounter => Box::new(Store::<local::SlidingCounter>::new(p, n)),
    Algo::FixedWindow => Box::new(Store::<local::FixedWindow>::new(p, n)),
    Algo::TokenBucket => Box::new(Store::<local::TokenBucket>::new(p, n)),
    Algo::Gcra => Box::new(Store::<local::Gcra>::new(p, n)),
  }
}

fn ms(d: f64) -> Duration {
  Duration::from_secs_f64((d / 1000.0).clamp(0.0, 1e9))
}

impl Limiter {
  pub fn new(cfg: Config) -> HpResult<Arc<Limiter>> {
    let remote = match &cfg.redis {
      Some(rc) => Some(Remote::new(Redis::new(rc.clone())?, cfg.algo, cfg.params)),
      None => None,
    };
    let l = Arc::new(Limiter {
      local: store(&cfg),
      remote,
      c: Counters::default(),
      redis_down_until: AtomicU64::new(0f64.to_bits()),
      queues: Mutex::new(Queues::default()),
      next_id: AtomicU64::new(1),
      closed: AtomicBool::new(false),
      cfg,
    });
    l.spawn_sweeper();
    Ok(l)
  }

  /// Now and then drop keys whose limit is fully restored (they hold
  /// nothing a fresh key would not), so memory follows the active keys.
  fn spawn_sweeper(self: &Arc<Self>) {
    let weak = Arc::downgrade(self);
    let every = ms(self.cfg.params.window.clamp(1000.0, 60_000.0));
    runtime::spawn(async move {
      loop {
        tokio::time::sleep(every).await;
        match weak.upgrade() {
          Some(l) if !l.is_closed() => {
            l.local.sweep(now_ms());
          }
          _ => return,
        }
      }
    });
  }

  pub fn has_redis(&self) -> bool {
    self.remote.is_some()
  }

  pub fn is_closed(&self) -> bool {
    self.closed.load(Ordering::Relaxed)
  }

  pub fn keys(&self) -> usize {
    self.local.len()
  }

  fn count(&self, d: &Decision) {
    if d.allowed {
      self.c.allowed.fetch_add(1, Ordering::Relaxed);
    } else {
      self.c.denied.fetch_add(1, Ordering::Relaxed);
    }
  }

  /// In process (no Redis, or the `local` fallback). Counted when consuming.
  pub fn check_local(&self, key: &str, cost: f64, consume: bool) -> Decision {
    let d = self.local.check(key, now_ms(), cost, consume);
    if consume {
      self.count(&d);
    }
    d
  }

  /// The decision when Redis cannot answer.
  fn fallback(&self, key: &str, cost: f64, consume: bool) -> Decision {
    self.c.redis_errors.fetch_add(1, Ordering::Relaxed);
    let p = self.cfg.params;
    match self.cfg.on_error {
      OnError::Allow => Decision {
        allowed: true,
        remaining: p.limit.floor(),
        retry_after: 0.0,
        reset: 0.0,
      },
      OnError::Deny => Decision {
        allowed: false,
        remaining: 0.0,
        retry_after: p.window.ceil(),
        reset: p.window.ceil(),
      },
      OnError::Local => self.local.check(key, now_ms(), cost, consume),
    }
  }

  /// One check: Redis when configured (falling back per `onRedisError`),
  /// else in process. Counted when consuming.
  pub async fn check(&self, key: &str, cost: f64, consume: bool) -> Decision {
    let d = self.decide(key, cost, consume).await;
    if consume {
      self.count(&d);
    }
    d
  }

  async fn decide(&self, key: &str, cost: f64, consume: bool) -> Decision {
    let Some(remote) = &self.remote else {
      return self.local.check(key, now_ms(), cost, consume);
    };
    if now_ms() < f64::from_bits(self.redis_down_until.load(Ordering::Relaxed)) {
      return self.fallback(key, cost, consume);
    }
    match remote.check(key, cost, consume).await {
      Ok(d) => d,
      Err(_) => {
        self
          .redis_down_until
          .store((now_ms() + REDIS_RETRY_MS).to_bits(), Ordering::Relaxed);
        self.fallback(key, cost, consume)
      }
    }
  }

  /// Forget `key` (in process and on Redis).
  pub async fn reset(&self, key: &str) -> HpResult<()> {
    self.local.remove(key);
    if let Some(remote) = &self.remote {
      if let Err(e) = remote.reset(key).await {
        self.c.redis_errors.fetch_add(1, Ordering::Relaxed);
        return Err(e);
      }
    }
    Ok(())
  }

  pub fn reset_local(&self, key: &str) {
    self.local.remove(key);
  }

  pub fn waiting(&self) -> usize {
    self.queues.lock().key_of.len()
  }

  // ------------------------------------------------------------- acquire

  /// Wait until `cost` units of `key` are admitted, after every earlier
  /// waiter of that key (FIFO). `Ok(None)`: admitted at once (in process,
  /// nobody waiting), `make_settle` was not called. `Ok(Some(id))`: queued;
  /// `settle` runs exactly once, with Ok on admission or the error
  /// (ERR_TIMEOUT after `timeout_ms`, ERR_ABORTED via [`Self::cancel`],
  /// ERR_CLOSED on close). A waiter that is not admitted never consumes.
  pub fn acquire<F>(
    self: &Arc<Self>,
    key: &str,
    cost: f64,
    timeout_ms: Option<f64>,
    owner: u64,
    make_settle: F,
  ) -> HpResult<Option<u64>>
  where
    F: FnOnce() -> HpResult<Settle>,
  {
    if self.is_closed() {
      return Err(HpError::closed(CLASS));
    }
    if cost > self.cfg.params.limit {
      return Err(HpError::invalid(format!(
        "cost {cost} exceeds limit {}: it can never be admitted",
        self.cfg.params.limit
      )));
    }
    let mut q = self.queues.lock();
    if self.remote.is_none() && !q.by_key.contains_key(key) {
      let d = self.local.check(key, now_ms(), cost, true);
      if d.allowed {
        self.count(&d);
        return Ok(None);
      }
    }
    let settle = make_settle()?;
    let id = self.next_id.fetch_add(1, Ordering::Relaxed);
    let timer = timeout_ms.map(|t| {
      let weak = Arc::downgrade(self);
      runtime::spawn(async move {
        tokio::time::sleep(ms(t)).await;
        if let Some(l) = weak.upgrade() {
          l.cancel(
            id,
            HpError::new(Code::Timeout, format!("acquire timed out after {t} ms")),
          );
        }
      })
      .abort_handle()
    });
    let w = Waiter {
      id,
      cost,
      owner,
      settle,
      timer,
      cancelled: None,
    };
    q.key_of.insert(id, key.to_string());
    match q.by_key.get_mut(key) {
      Some(kq) => kq.waiters.push_back(w),
      None => {
        let notify = Arc::new(Notify::new());
        q.by_key.insert(
          key.to_string(),
          KeyQueue {
            waiters: VecDeque::from([w]),
            notify: notify.clone(),
            busy: false,
          },
        );
        let this = self.clone();
        let key = key.to_string();
        runtime::spawn(async move { this.drive(key, notify).await });
      }
    }
    Ok(Some(id))
  }

  /// Settle waiter `id` with `err` (ERR_ABORTED, ERR_TIMEOUT) unless it was
  /// admitted already. Returns whether it was still waiting.
  pub fn cancel(&self, id: u64, err: HpError) -> bool {
    let w = {
      let mut q = self.queues.lock();
      let Some(key) = q.key_of.get(&id).cloned() else {
        return false;
      };
      let Some(kq) = q.by_key.get_mut(&key) else {
        return false;
      };
      let Some(pos) = kq.waiters.iter().position(|w| w.id == id) else {
        return false;
      };
      if pos == 0 && kq.busy {
        // Its check is in flight: that check settles it (admitted wins).
        kq.waiters[0].cancelled.get_or_insert(err);
        return true;
      }
      let w = kq.waiters.remove(pos).expect("position");
      if pos == 0 {
        kq.notify.notify_one();
      }
      q.key_of.remove(&id);
      w
    };
    w.finish(Err(err));
    true
  }

  /// Serve one key's queue: check for the head, admit it, or sleep until
  /// its retry-after (or until the head changes), on the runtime.
  async fn drive(self: Arc<Self>, key: String, notify: Arc<Notify>) {
    loop {
      let head = {
        let mut q = self.queues.lock();
        let Some(kq) = q.by_key.get_mut(&key) else {
          return;
        };
        match kq.waiters.front() {
          None => {
            q.by_key.remove(&key);
            return;
          }
          Some(w) => {
            let head = (w.id, w.cost);
            kq.busy = self.remote.is_some();
            head
          }
        }
      };
      let (id, cost) = head;
      let mut done: Option<(Waiter, HpResult<()>)> = None;
      let d = if self.remote.is_some() {
        // Waiting probes are not counted as denials; the admission is.
        let d = self.decide(&key, cost, true).await;
        if d.allowed {
          self.count(&d);
        }
        let mut q = self.queues.lock();
        let Some(kq) = q.by_key.get_mut(&key) else {
          return;
        };
        kq.busy = false;
        let cancelled = kq
          .waiters
          .front()
          .filter(|w| w.id == id)
          .map(|w| w.cancelled.is_some());
        match cancelled {
          Some(c) if d.allowed || c => {
            let mut w = kq.waiters.pop_front().expect("head");
            q.key_of.remove(&id);
            let r = if d.allowed {
              Ok(())
            } else {
              Err(w.cancelled.take().expect("cancelled"))
            };
            done = Some((w, r));
          }
          _ => {}
        }
        d
      } else {
        let mut q = self.queues.lock();
        let Some(kq) = q.by_key.get_mut(&key) else {
          return;
        };
        if kq.waiters.front().map(|w| w.id) != Some(id) {
          continue; // the head left while the lock was free
        }
        let d = self.local.check(&key, now_ms(), cost, true);
        if d.allowed {
          self.count(&d);
          let w = kq.waiters.pop_front().expect("head");
          q.key_of.remove(&id);
          done = Some((w, Ok(())));
        }
        d
      };
      if let Some((w, r)) = done {
        w.finish(r);
        continue;
      }
      if self.is_closed() {
        return;
      }
      let wait = if d.allowed {
        0.0
      } else {
        d.retry_after.max(1.0)
      };
      tokio::select! {
        _ = tokio::time::sleep(ms(wait)) => {}
        _ = notify.notified() => {}
      }
    }
  }

  /// Reject the waiters of `owner` (a closing handle), or of everyone when
  /// `owner` is None, with ERR_CLOSED.
  pub fn close_waiters(&self, owner: Option<u64>) {
    let mut out = Vec::new();
    {
      let mut q = self.queues.lock();
      let Queues { by_key, key_of } = &mut *q;
      for kq in by_key.values_mut() {
        let mut keep = VecDeque::with_capacity(kq.waiters.len());
        let busy_head = kq.busy;
        for (i, mut w) in kq.waiters.drain(..).enumerate() {
          if owner.is_some_and(|o| o != w.owner) {
            keep.push_back(w);
          } else if i == 0 && busy_head {
            // Its check is in flight: that check settles it.
            w.cancelled.get_or_insert(HpError::closed(CLASS));
            keep.push_back(w);
          } else {
            key_of.remove(&w.id);
            out.push(w);
          }
        }
        kq.waiters = keep;
        kq.notify.notify_one();
      }
    }
    for w in out {
      w.finish(Err(HpError::closed(CLASS)));
    }
  }

  /// The last handle closed: reject every waiter, stop the drivers.
  pub fn shutdown(&self) {
    self.closed.store(true, Ordering::SeqCst);
    self.close_waiters(None);
  }
}

#[cfg(test)]
mod tests {
  use super::*;
  use std::sync::mpsc;

  fn limiter(limit: f64, window: f64, algo: &str) -> Arc<Limiter> {
    Limiter::new(Config::new(limit, window, Some(algo), None, None, None).unwrap()).unwrap()
  }

  fn settle_to(
    tx: &mpsc::Sender<(u32, HpResult<()>)>,
    tag: u32,
  ) -> impl FnOnce() -> HpResult<Settle> {
    let tx = tx.clone();
    move || Ok(Box::new(move |r| tx.send((tag, r)).unwrap()) as Settle)
  }

  #[test]
  fn options_are_checked() {
    assert!(Config::new(0.0, 1000.0, None, None, None, None).is_err());
    assert!(Config::new(-1.0, 1000.0, None, None, None, None).is_err());
    assert!(Config::new(f64::NAN, 1000.0, None, None, None, None).is_err());
    assert!(Config::new(5.0, f64::INFINITY, None, None, None, None).is_err());
    assert!(Config::new(5.0, 0.0, None, None, None, None).is_err());
    assert!(Config::new(5.0, 1000.0, Some("leaky"), None, None, None).is_err());
    assert!(Config::new(5.0, 1000.0, None, Some(0.0), None, None).is_err());
    assert!(Config::new(5.0, 1000.0, None, Some(1.5), None, None).is_err());
    assert!(Config::new(5.0, 1000.0, None, None, None, Some("maybe")).is_err());
    let c = Config::new(5.0, 1000.0, None, None, None, None).unwrap();
    assert_eq!(c.algo, Algo::SlidingWindow);
    assert_eq!(c.on_error, OnError::Local);
    assert_eq!(c.max_keys, 1_000_000);
  }

  #[test]
  fn acquire_is_fifo_and_woken_by_timers() {
    let l = limiter(1.0, 60.0, "fixed-window");
    let (tx, rx) = mpsc::channel();
    assert_eq!(
      l.acquire("k", 1.0, None, 1, settle_to(&tx, 0)).unwrap(),
      None
    );
    let started = std::time::Instant::now();
    for tag in 1..=3 {
      assert!(l
        .acquire("k", 1.0, None, 1, settle_to(&tx, tag))
        .unwrap()
        .is_some());
    }
    assert_eq!(l.waiting(), 3);
    // A new caller queues behind the waiters even if... (nothing is free now anyway).
    let order: Vec<u32> = (0..3)
      .map(|_| rx.recv_timeout(Duration::from_secs(5)).unwrap())
      .map(|(t, r)| {
        r.unwrap();
        t
      })
      .collect();
    assert_eq!(order, vec![1, 2, 3]);
    // Three more windows of 60 ms passed, not less.
    assert!(
      started.elapsed() >= Duration::from_millis(150),
      "{:?}",
      started.elapsed()
    );
    assert_eq!(l.waiting(), 0);
    assert_eq!(l.c.allowed.load(Ordering::Relaxed), 4);
  }

  #[test]
  fn a_big_head_is_not_overtaken_and_cancelled_waiters_never_consume() {
    let l = limiter(4.0, 100.0, "token-bucket");
    let (tx, rx) = mpsc::channel();
    assert_eq!(
      l.acquire("k", 4.0, None, 1, settle_to(&tx, 0)).unwrap(),
      None
    );
    let big = l
      .acquire("k", 4.0, None, 1, settle_to(&tx, 1))
      .unwrap()
      .unwrap();
    let small = l
      .acquire("k", 1.0, None, 1, settle_to(&tx, 2))
      .unwrap()
      .unwrap();
    // The small one waits behind the big one (FIFO), then the big one is aborted.
    std::thread::sleep(Duration::from_millis(30));
    assert!(rx.try_recv().is_err());
    assert!(l.cancel(big, HpError::new(Code::Aborted, "aborted")));
    let (t, r) = rx.recv_timeout(Duration::from_secs(1)).unwrap();
    assert_eq!((t, r.unwrap_err().code), (1, Code::Aborted));
    let (t, r) = rx.recv_timeout(Duration::from_secs(1)).unwrap();
    assert_eq!(t, 2);
    r.unwrap();
    assert!(
      !l.cancel(small, HpError::new(Code::Aborted, "late")),
      "settled waiters cannot be cancelled"
    );
    // Only the first 4 and the small 1 were consumed: the aborted 4 was not.
    let d = l.check_local("k", 0.0, false);
    assert!(d.remaining <= 1.0);
  }

  #[test]
  fn acquire_times_out_and_close_rejects_waiters() {
    let l = limiter(1.0, 10_000.0, "sliding-window");
    let (tx, rx) = mpsc::channel();
    assert_eq!(
      l.acquire("k", 1.0, Some(50.0), 1, settle_to(&tx, 0))
        .unwrap(),
      None
    );
    let started = std::time::Instant::now();
    l.acquire("k", 1.0, Some(50.0), 1, settle_to(&tx, 1))
      .unwrap()
      .unwrap();
    let (t, r) = rx.recv_timeout(Duration::from_secs(2)).unwrap();
    assert_eq!((t, r.unwrap_err().code), (1, Code::Timeout));
    assert!(started.elapsed() >= Duration::from_millis(45));
    // Cost above the limit can never pass: refused at once.
    assert_eq!(
      l.acquire("k", 2.0, None, 1, settle_to(&tx, 9))
        .unwrap_err()
        .code,
      Code::InvalidArg
    );
    // close: one owner's waiters, then everyone's.
    l.acquire("k", 1.0, None, 1, settle_to(&tx, 2))
      .unwrap()
      .unwrap();
    l.acquire("k", 1.0, None, 2, settle_to(&tx, 3))
      .unwrap()
      .unwrap();
    l.close_waiters(Some(2));
    let (t, r) = rx.recv_timeout(Duration::from_secs(1)).unwrap();
    assert_eq!((t, r.unwrap_err().code), (3, Code::Closed));
    l.shutdown();
    let (t, r) = rx.recv_timeout(Duration::from_secs(1)).unwrap();
    assert_eq!((t, r.unwrap_err().code), (2, Code::Closed));
    assert_eq!(
      l.acquire("k", 1.0, None, 1, settle_to(&tx, 4))
        .unwrap_err()
        .code,
      Code::Closed
    );
    assert_eq!(l.waiting(), 0);
  }

  #[test]
  fn unreachable_redis_follows_the_policy() {
    for (policy, allowed) in [
      ("allow", Some(true)),
      ("deny", Some(false)),
      ("local", None),
    ] {
      let rc = RedisConfig::from_options(&crate::redis::RedisOptions {
        url: "redis://127.0.0.1:1".into(),
        command_timeout_ms: Some(300.0),
        ..Default::default()
      })
      .unwrap();
      let l = Limiter::new(Config::new(2.0, 10_000.0, None, None, Some(rc), Some(policy)).unwrap())
        .unwrap();
      let started = std::time::Instant::now();
      let ds: Vec<Decision> = runtime::handle().block_on(async {
        let mut v = Vec::new();
        for _ in 0..3 {
          v.push(l.check("k", 1.0, true).await);
        }
        v
      });
      assert!(
        started.elapsed() < Duration::from_millis(1000),
        "{policy}: {:?}",
        started.elapsed()
      );
      match allowed {
        Some(a) => assert!(ds.iter().all(|d| d.allowed == a), "{policy}"),
        None => assert_eq!(
          ds.iter().map(|d| d.allowed).collect::<Vec<_>>(),
          vec![true, true, false]
        ),
      }
      assert_eq!(l.c.redis_errors.load(Ordering::Relaxed), 3);
    }
  }
}
