//! One circuit breaker per Redis endpoint, shared by every connection, every
//! instance and every thread that talks to that endpoint.
//!
//! - **Closed**: calls go to Redis.
//! - **Open** (after a connection-level failure: refused, reset, closed by
//!   the server while replies were owed, a connect that timed out, or a
//!   connection silent for `commandTimeoutMs` while replies were owed): calls
//!   fail at once with `ERR_REDIS` instead of each waiting for a timeout.
//! - **Half-open**: when the backoff has passed, the first caller is told to
//!   run one probe (a fresh connection and a PING, in the background); every
//!   other call still fails fast until the probe answers. Success closes the
//!   breaker; failure opens it again with the backoff doubled (from
//!   [`BASE_BACKOFF_MS`] up to [`MAX_BACKOFF_MS`]).
//!
//! Time comes in as an argument (the crate clock in production), so tests
//! drive it deterministically.

use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

/// First backoff after the breaker opens, in ms.
pub const BASE_BACKOFF_MS: f64 = 25.0;
/// Longest backoff, in ms: Redis coming back is noticed within about this.
pub const MAX_BACKOFF_MS: f64 = 400.0;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Phase {
  Closed,
  /// Failing fast until `until` (crate clock, ms).
  Open {
    until: f64,
  },
  /// One probe in flight; everything else fails fast.
  HalfOpen,
}

/// What a caller may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
  /// Send.
  Pass,
  /// Fail at once.
  FailFast,
  /// Fail this call at once, and run the one probe.
  Probe,
}

struct State {
  phase: Phase,
  backoff: f64,
  last_error: String,
}

pub struct Breaker {
  st: Mutex<State>,
  /// 0 closed, 1 open or half-open: a lock-free fast path for `gate`.
  tripped: AtomicU8,
  /// How many times it opened (for stats and tests).
  pub opened: AtomicU64,
}

impl Default for Breaker {
  fn default() -> Self {
    Breaker {
      st: Mutex::new(State {
        phase: Phase::Closed,
        backoff: BASE_BACKOFF_MS,
        last_error: String::new(),
      }),
      tripped: AtomicU8::new(0),
      opened: AtomicU64::new(0),
    }
  }
}

impl Breaker {
  pub fn phase(&self) -> Phase {
    self.st.lock().phase
  }

  pub fn is_closed(&self) -> bool {
    self.tripped.load(Ordering::Acquire) == 0
  }

  /// Why it last opened (already redacted by the caller).
  pub fn last_error(&self) -> String {
    self.st.lock().last_error.clone()
  }

  pub fn gate(&self, now: f64) -> Gate {
    if self.tripped.load(Ordering::Acquire) == 0 {
      return Gate::Pass;
    }
    let mut st = self.st.lock();
    match st.phase {
      Phase::Closed => Gate::Pass,
      Phase::HalfOpen => Gate::FailFast,
      Phase::Open { until } if now >= until => {
        st.phase = Phase::HalfOpen;
        Gate::Probe
      }
      Phase::Open { .. } => Gate::FailFast,
    }
  }

  /// A command or probe got an answer: close.
  pub fn success(&self) {
    if self.tripped.load(Ordering::Acquire) == 0 {
      return;
    }
    let mut st = self.st.lock();
    st.phase = Phase::Closed;
    st.backoff = BASE_BACKOFF_MS;
    self.tripped.store(0, Ordering::Release);
  }

  /// A connection-level failure (or a failed probe): open, or stay open with
  /// a longer backoff after a failed probe.
  pub fn failure(&self, now: f64, why: &str) {
    let mut st = self.st.lock();
    match st.phase {
      Phase::Closed => {
        st.backoff = BASE_BACKOFF_MS;
        self.opened.fetch_add(1, Ordering::Relaxed);
      }
      Phase::HalfOpen => {
        st.backoff = (st.backoff * 2.0).min(MAX_BACKOFF_MS);
      }
      // Already open (another connection failing too): keep the schedule.
      Phase::Open { .. } => return,
    }
    st.phase = Phase::Open {
      until: now + st.backoff,
    };
    st.last_error = why.to_string();
    self.tripped.store(1, Ordering::Release);
  }

  /// The message of a call refused while open.
  pub fn refusal(&self, what: &str) -> String {
    let st = self.st.lock();
    format!(
      "redis: {what} not sent: Redis is unreachable ({}); retrying in the background",
      if st.last_error.is_empty() {
        "connection failed"
      } else {
        &st.last_error
      }
    )
  }
}

#[cfg(test)]
mod tests {
  use super::*;

  #[test]
  fn closed_open_half_open_with_one_probe_and_exponential_backoff() {
    let b = Breaker::default();
    assert_eq!(b.gate(0.0), Gate::Pass);
    b.failure(0.0, "refused");
    assert_eq!(
      b.phase(),
      Phase::Open {
        until: BASE_BACKOFF_MS
      }
    );
    assert_eq!(b.gate(1.0), Gate::FailFast);
    // Backoff over: exactly one caller probes, the others fail fast.
    assert_eq!(b.gate(BASE_BACKOFF_MS), Gate::Probe);
    assert_eq!(b.gate(BASE_BACKOFF_MS), Gate::FailFast);
    assert_eq!(b.phase(), Phase::HalfOpen);
    // A failing probe doubles the backoff, up to the cap.
    let mut now = BASE_BACKOFF_MS;
    let mut expect = BASE_BACKOFF_MS;
    for _ in 0..10 {
      b.failure(now, "probe timed out");
      expect = (expect * 2.0).min(MAX_BACKOFF_MS);
      assert_eq!(
        b.phase(),
        Phase::Open {
          until: now + expect
        }
      );
      assert_eq!(b.gate(now + expect - 0.5), Gate::FailFast);
      now += expect;
      assert_eq!(b.gate(now), Gate::Probe);
    }
    assert_eq!(expect, MAX_BACKOFF_MS);
    // Another connection failing while open does not move the schedule.
    b.success();
    assert_eq!(b.gate(now), Gate::Pass);
    b.failure(now, "reset");
    b.failure(now + 10.0, "reset again");
    assert_eq!(
      b.phase(),
      Phase::Open {
        until: now + BASE_BACKOFF_MS
      }
    );
    assert_eq!(b.opened.load(Ordering::Relaxed), 2);
    assert!(b.refusal("GET").contains("reset"));
  }
}
