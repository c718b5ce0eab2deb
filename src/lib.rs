//! hotpath: native performance primitives for Node.js services.
#![deny(clippy::all)]

#[macro_use]
pub mod guard;
pub mod batch;
pub mod buffer_pool;
pub mod cache;
pub mod error;
pub mod rate_limiter;
pub mod redis;
pub mod runtime;
pub mod validate;
pub mod worker_queue;

use napi_derive::napi;

/// Move hotpath's clock forward by `ms` (tests only: TTLs, windows).
#[napi(js_name = "__advanceClock", skip_typescript)]
pub fn advance_clock(ms: f64) {
  runtime::advance_clock_ms(ms);
}

/// Test hook (lib/testing.js): the next guarded native call panics inside its guard (proves
/// that a panic becomes `ERR_INTERNAL` and poisons only its instance).
#[napi]
pub fn test_panic_next_call() {
  guard::panic_next_call();
}

/// Test hook (lib/testing.js): deleteLater tasks alive in the process (close() ends them).
#[napi]
pub fn test_live_delete_later_tasks() -> f64 {
  cache::engine::LATER_TASKS.load(std::sync::atomic::Ordering::Relaxed) as f64
}

/// Test hook (lib/testing.js): this thread's Redis Cluster routing on the
/// JS-thread path, `[sends, MOVED followed, ASK followed, retried after
/// TRYAGAIN/CLUSTERDOWN, CLUSTER SLOTS reads]`.
#[napi]
pub fn test_redis_cluster_routes() -> Vec<f64> {
  let c = redis::route::counts();
  [c.sent, c.moved, c.ask, c.retried, c.refreshes]
    .iter()
    .map(|&n| n as f64)
    .collect()
}
