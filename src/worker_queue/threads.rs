//! The worker-thread side of WorkerQueue: each worker thread (lib/worker_entry.js)
//! holds a `NativeQueueWorker` and pulls tasks from the shared core itself.
//!
//! Waiting for work: `take(waitMs)` first blocks on the queue's condition
//! variable for up to `waitMs` (the worker has nothing in flight, so blocking
//! its event loop costs nothing, and a task admitted meanwhile wakes it in
//! microseconds), then marks the worker asleep and returns; the next task then
//! wakes it through its ThreadsafeFunction. Termination (`worker.terminate()`,
//! process exit) never waits longer than `waitMs` for a blocked worker.

use std::sync::Arc;
use std::time::{Duration, Instant};

use napi::bindgen_prelude::*;
use napi_derive::napi;

use super::scheduler::{Take, Value};
use super::{area_buffer, make_waker, waker_of, Area, Shared, WakeFn};
use crate::error::{Code, HpError};
use crate::runtime::now_ms;

/// Payloads up to this size are copied into the worker's byte area (no
/// Buffer allocation per task).
const WORKER_BYTES: usize = 64 * 1024;

/// The engine a worker thread uses (see lib/worker_entry.js).
#[napi(js_name = "NativeQueueWorker")]
pub struct NativeQueueWorker {
  /// Set by a panic inside a method: later calls fail with ERR_INTERNAL.
  poison: crate::guard::Poison,
  shared: Arc<Shared>,
  slot: u32,
  gen: u32,
  /// `[status (0 none, 1 task, 2 stop), handle, id, kind, byteLength]`
  scratch: Arc<Area<f64>>,
  bytes: Arc<Area<u8>>,
  _wake: Arc<WakeFn>,
}

#[napi]
impl NativeQueueWorker {
  /// Attach worker `slot`/`gen` to queue `queueId`. `wake` is called when a
  /// task is startable while this worker sleeps in its event loop.
  #[napi(constructor)]
  pub fn new(queue_id: f64, slot: u32, gen: u32, wake: Function<'_, (), ()>) -> Result<Self, Code> {
    guarded! { ctor "WorkerQueue",
    let shared = Shared::find(queue_id as u64).ok_or_else(|| HpError::closed("WorkerQueue"))?;
    let wake = make_waker(&wake).map_err(crate::error::from_napi)?;
    if !shared.lock().worker_attach(slot, gen, waker_of(&wake)) {
      return Err(HpError::closed("WorkerQueue worker").into());
    }
    Ok(NativeQueueWorker {
      poison: crate::guard::Poison::new("WorkerQueue"),
      shared,
      slot,
      gen,
      scratch: Area::new(8),
      bytes: Area::new(WORKER_BYTES),
      _wake: wake,
    })
    }
  }

  #[napi]
  pub fn scratch(&self, env: Env) -> Result<ArrayBuffer<'_>> {
    guarded! { self,
    area_buffer(&env, &self.scratch)
    }
  }

  #[napi]
  pub fn bytes(&self, env: Env) -> Result<ArrayBuffer<'_>> {
    guarded! { self,
    area_buffer(&env, &self.bytes)
    }
  }

  /// The module loaded: start taking tasks. False when this worker was
  /// replaced or its queue closed meanwhile.
  #[napi]
  pub fn ready(&self) -> Result<bool, Code> {
    guarded! { ok self,
    self.shared.lock().worker_ready(self.slot, self.gen)
    }
  }

  /// The next task, waiting up to `waitMs` for one. The scratch says what
  /// came: `[status, handle, id, kind, byteLength]`. The return value is the
  /// payload for kinds 2-4, a Buffer for structured-clone bytes larger than
  /// the byte area, and `undefined` otherwise (bytes are in the byte area).
  #[napi(ts_return_type = "number | string | Buffer | undefined")]
  pub fn take(&self, wait_ms: f64) -> Result<Option<Either3<f64, String, Buffer>>, Code> {
    guarded! { ok self,
    let sc = self.scratch.get();
    let deadline = if wait_ms > 0.0 {
      Some(Instant::now() + Duration::from_secs_f64(wait_ms.min(60_000.0) / 1000.0))
    } else {
      None
    };
    let mut g = self.shared.lock();
    g.set_caller(None);
    let out = loop {
      match g.take(self.slot, self.gen, now_ms()) {
        Take::Stop => {
          sc[0] = 2.0;
          break None;
        }
        Take::Task { h, id } => {
          sc[0] = 1.0;
          sc[1] = h as f64;
          sc[2] = id as f64;
          let v = g.payload(h, id).expect("taken task has a payload");
          sc[3] = v.kind() as f64;
          sc[4] = 0.0;
          break match v {
            Value::Bool(_) | Value::Num(_) => Some(Either3::A(v.num())),
            Value::Str(s) => Some(Either3::B(s.clone())),
            Value::Bytes(b) | Value::Error(b) => {
              sc[4] = b.len() as f64;
              if b.len() <= WORKER_BYTES {
                self.bytes.get()[..b.len()].copy_from_slice(b);
                None
              } else {
                Some(Either3::C(Buffer::from(b.clone())))
              }
            }
            Value::Undefined | Value::Null => None,
          };
        }
        Take::Empty => {
          match deadline {
            Some(d) if Instant::now() < d => {
              g.sleep_sync(self.slot);
              self.shared.cv.wait_until(&mut g, d);
              g.wake_sync(self.slot);
              continue;
            }
            _ => {}
          }
          g.sleep_async(self.slot);
          sc[0] = 0.0;
          break None;
        }
      }
    };
    self.shared.unlock(g);
    out
    }
  }

  /// Task (h, id) ended: `ok` (returned) or not (threw); the value as in
  /// `NativeWorkerQueue#run`, or kind 6 for an error description. `fatal`:
  /// do not retry (the result could not be cloned).
  #[napi]
  #[allow(clippy::too_many_arguments)]
  pub fn done(
    &self,
    h: u32,
    id: u32,
    ok: bool,
    kind: u32,
    num: f64,
    text: Option<String>,
    bytes: Option<BufferSlice>,
    fatal: bool,
  ) -> Result<bool, Code> {
    guarded! { ok self,
    let value = Value::from_parts(kind, num, text, bytes.as_deref()).unwrap_or(Value::Undefined);
    let mut g = self.shared.lock();
    g.set_caller(None);
    let r = g.done_worker(self.slot, self.gen, h, id, ok, value, fatal, now_ms());
    self.shared.unlock(g);
    r
    }
  }
}
