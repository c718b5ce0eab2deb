//! hotpath: native performance primitives for Node.js services.
#![deny(clippy::all)]

pub mod batch;
pub mod buffer_pool;
pub mod cache;
pub mod error;
pub mod rate_limiter;
pub mod redis;
pub mod runtime;
pub mod worker_queue;

use napi_derive::napi;

/// Move hotpath's clock forward by `ms` (tests only: TTLs, windows).
#[napi(js_name = "__advanceClock", skip_typescript)]
pub fn advance_clock(ms: f64) {
  runtime::advance_clock_ms(ms);
}
