//! BufferPool: native memory in power-of-two size classes, handed to JS as
//! external ArrayBuffers (one per allocation, so each can be detached).
//!
//! This file is the napi layer: options, and [`NativeBufferPool`], which turns
//! the engine's records (`engine.rs`) into Buffers
//! (`napi_create_external_buffer`, called through napi-sys directly: napi-rs'
//! `from_external` refuses, in debug builds, a data pointer it has seen
//! before, and a pool reuses pointers by design), detaches them on release,
//! watches them with weak references (reclaimed at GC) and reports their
//! bytes to V8.

pub mod engine;

use std::ffi::c_void;
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use napi::bindgen_prelude::{Object, Result, ToNapiValue, Unknown};
use napi::{sys, Env, JsValue};
use napi_derive::napi;
use parking_lot::Mutex;

use crate::error::{Code, HpError, HpResult};
use crate::runtime;
use crate::validate;
pub use engine::{check_size, PoolConfig, Record, Shared, MAX_SIZE, MIN_CLASS};
use engine::{MAX_CHUNK, OUT};

const CLASS: &str = "BufferPool";

/// Options of `new BufferPool(options)`.
#[napi(object, object_to_js = false)]
#[derive(Default, Clone)]
pub struct BufferPoolOptions {
  /// Makes the pool process-wide: every `new BufferPool({ name })` with the
  /// same name, on the main thread or in any worker thread, is the same pool.
  pub name: Option<String>,
  /// Size classes are the powers of two from 64 bytes up to `chunkSize`;
  /// larger requests get whole chunks. A power of two from 64 to 2^30.
  /// Default: `1_048_576` (1 MiB).
  pub chunk_size: Option<f64>,
  /// Most bytes kept for reuse (free, or being zeroed); released memory
  /// beyond it is freed. Default: `67_108_864` (64 MiB).
  pub max_pooled_bytes: Option<f64>,
  /// Released memory is zeroed on the runtime's threads, never the JS thread,
  /// before it is handed out again, so `allocate` never returns another
  /// user's bytes. Default: `true`.
  pub zero_on_release: Option<bool>,
}

/// `stats()` of a BufferPool. All counters are exact.
#[napi(object)]
#[derive(Debug, Clone, PartialEq)]
pub struct BufferPoolStats {
  /// Allocations served with memory from the pool.
  pub hits: f64,
  /// Allocations that needed fresh memory.
  pub misses: f64,
  /// Bytes kept for reuse: free blocks plus released blocks being zeroed.
  pub pooled_bytes: f64,
  /// Bytes of the blocks held by Buffers now (a block is its size class: 1000
  /// bytes asked are 1024 outstanding).
  pub outstanding_bytes: f64,
  /// `allocate` calls that returned a Buffer (`hits + misses`).
  pub allocations: f64,
  /// `release` calls that returned memory.
  pub releases: f64,
  /// Buffers never released whose memory came back when V8 collected them.
  pub reclaimed: f64,
}

impl PoolConfig {
  pub fn from_options(o: &BufferPoolOptions, plain: bool) -> HpResult<Self> {
    let raw = o.chunk_size.unwrap_or(1_048_576.0);
    let chunk = validate::bytes("chunkSize", raw, MIN_CLASS as u64)
      .ok()
      .filter(|&c| c <= MAX_CHUNK as u64 && c.is_power_of_two())
      .ok_or_else(|| {
        HpError::invalid(format!(
          "chunkSize must be a power of two from {MIN_CLASS} to {MAX_CHUNK}, got {}",
          validate::js_num(raw)
        ))
      })?;
    let max = validate::bytes(
      "maxPooledBytes",
      o.max_pooled_bytes.unwrap_or(67_108_864.0),
      0,
    )?;
    Ok(PoolConfig {
      chunk_size: chunk as usize,
      max_pooled: max as u64,
      zero: o.zero_on_release.unwrap_or(true),
      plain,
    })
  }
}

// ------------------------------------------------------------------ napi layer

/// Whether this process allows external buffers (V8 sandbox: no), probed once.
static EXTERNAL_ALLOWED: OnceLock<bool> = OnceLock::new();

unsafe extern "C" fn finalize_probe(_env: sys::napi_env, data: *mut c_void, _hint: *mut c_void) {
  crate::guard::catch_finalizer(|| drop(unsafe { Box::from_raw(data as *mut [u8; 16]) }));
}

fn external_allowed(env: sys::napi_env) -> bool {
  *EXTERNAL_ALLOWED.get_or_init(|| {
    let data = Box::into_raw(Box::new([0u8; 16]));
    let mut out = ptr::null_mut();
    let status = unsafe {
      sys::napi_create_external_buffer(
        env,
        16,
        data as *mut c_void,
        Some(finalize_probe),
        ptr::null_mut(),
        &mut out,
      )
    };
    if status == sys::Status::napi_ok {
      return true;
    }
    drop(unsafe { Box::from_raw(data) });
    status != sys::Status::napi_no_external_buffers_allowed
  })
}

/// The finalizer of every pooled Buffer: `hint` is its `Arc<Record>`.
unsafe extern "C" fn finalize_record(_env: sys::napi_env, _data: *mut c_void, hint: *mut c_void) {
  let rec = unsafe { Arc::from_raw(hint as *const Record) };
  // A panic must not cross into C.
  let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rec.collected()));
}

/// A napi_value made here, returned as is.
pub struct Raw(sys::napi_value);

impl ToNapiValue for Raw {
  unsafe fn to_napi_value(_env: sys::napi_env, val: Self) -> Result<sys::napi_value> {
    Ok(val.0)
  }
}

fn status(s: sys::napi_status, what: &str) -> HpResult<()> {
  if s == sys::Status::napi_ok {
    Ok(())
  } else {
    Err(HpError::invalid(format!("{what} failed (napi status {s})")))
  }
}

/// The native engine behind `BufferPool` (see lib/buffer_pool.js).
#[napi(js_name = "NativeBufferPool")]
pub struct NativeBufferPool {
  /// Set by a panic inside a method: later calls fail with ERR_INTERNAL.
  poison: crate::guard::Poison,
  shared: Arc<Shared>,
  name: Option<String>,
  closed: AtomicBool,
  /// The env (JS thread) this handle lives on: its weak references and V8
  /// accounting belong to it.
  env: usize,
  watch: Mutex<Watch>,
}

/// The external Buffers this handle made, each with a weak reference to its
/// ArrayBuffer. V8 clears a weak reference during the GC that collects the
/// ArrayBuffer, while Node runs the external buffer's finalizer only on a
/// later turn of the event loop; so a sweep of this list finds collected
/// Buffers at once (a synchronous loop that calls `gc()` gets its memory
/// back), and their bytes are reported to V8 as external memory while they
/// are out (so V8 collects sooner under pressure).
#[derive(Default)]
struct Watch {
  list: Vec<(usize, Arc<Record>)>,
  /// Bytes reported to V8 (`napi_adjust_external_memory`) and not yet taken back.
  accounted: i64,
  /// Bytes allocated since the last sweep.
  since: u64,
}

/// Sweep after this many bytes allocated, or half the bytes watched,
/// whichever is more (amortised O(1) per byte allocated).
const SWEEP_MIN_BYTES: u64 = 4 << 20;

impl Watch {
  /// Drop entries whose Buffer was released or collected; reclaim collected
  /// ones now. Returns the bytes to take back from V8's count.
  unsafe fn sweep(&mut self, env: sys::napi_env) -> i64 {
    let mut back = 0i64;
    self.list.retain(|(r, rec)| {
      let mut gone = rec.state.load(Ordering::Acquire) != OUT;
      if !gone {
        let mut v = ptr::null_mut();
        let s = unsafe { sys::napi_get_reference_value(env, *r as sys::napi_ref, &mut v) };
        if s == sys::Status::napi_ok && v.is_null() {
          rec.collected();
          gone = true;
        }
      }
      if gone {
        unsafe { sys::napi_delete_reference(env, *r as sys::napi_ref) };
        back += rec.cap as i64;
      }
      !gone
    });
    self.since = 0;
    self.accounted -= back;
    back
  }

  unsafe fn clear(&mut self, env: sys::napi_env) -> i64 {
    for (r, _) in self.list.drain(..) {
      unsafe { sys::napi_delete_reference(env, r as sys::napi_ref) };
    }
    std::mem::take(&mut self.accounted)
  }
}

fn adjust_external(env: sys::napi_env, delta: i64) {
  if delta != 0 {
    let mut total = 0i64;
    unsafe { sys::napi_adjust_external_memory(env, delta, &mut total) };
  }
}

fn to_js<T>(r: HpResult<T>) -> Result<T, Code> {
  r.map_err(Into::into)
}

#[napi]
impl NativeBufferPool {
  /// `forcePlain`: use plain Buffers even where external ones are allowed
  /// (what Electron's V8 sandbox gets; for tests).
  #[napi(constructor)]
  pub fn new(
    env: Env,
    options: Option<BufferPoolOptions>,
    force_plain: Option<bool>,
  ) -> Result<Self, Code> {
    guarded! { ctor "BufferPool",
    let o = options.unwrap_or_default();
    let plain = force_plain.unwrap_or(false)
      || !external_allowed(env.raw())
      || !runtime::external_memory_aliases(&env);
    let cfg = to_js(PoolConfig::from_options(&o, plain))?;
    let shared = match &o.name {
      Some(name) => to_js(runtime::attach(CLASS, name, format!("{cfg:?}"), || {
        Ok(Shared::new(cfg.clone()))
      }))?,
      None => Shared::new(cfg),
    };
    Ok(NativeBufferPool {
      poison: crate::guard::Poison::new("BufferPool"),
      shared,
      name: o.name,
      closed: AtomicBool::new(false),
      env: env.raw() as usize,
      watch: Mutex::new(Watch::default()),
    })
    }
  }

  /// Reclaim Buffers collected since the last sweep (see [`Watch`]).
  fn sweep(&self, env: sys::napi_env) {
    let back = unsafe { self.watch.lock().sweep(env) };
    adjust_external(env, -back);
  }

  fn open(&self) -> Result<&Arc<Shared>, Code> {
    if self.closed.load(Ordering::Relaxed) {
      return Err(HpError::closed(CLASS).into());
    }
    Ok(&self.shared)
  }

  /// The pool's identity (equal for every handle of a named pool).
  #[napi]
  pub fn id(&self) -> Result<u32, Code> {
    guarded! { ok self,
    self.shared.id
    }
  }

  /// false when Buffers are plain (external buffers not allowed here).
  #[napi]
  pub fn external(&self) -> Result<bool, Code> {
    guarded! { ok self,
    !self.shared.cfg.plain
    }
  }

  /// A Buffer of exactly `size` bytes, zero-filled unless zeroOnRelease is
  /// false and the memory is reused.
  #[napi(ts_return_type = "Buffer")]
  pub fn allocate(&self, env: Env, size: f64) -> Result<Raw, Code> {
    guarded! { self,
    let shared = self.open()?;
    let size = to_js(check_size(size))?;
    let env = env.raw();
    let mut out = ptr::null_mut();
    if size == 0 || shared.cfg.plain {
      let mut data = ptr::null_mut();
      to_js(status(
        unsafe { sys::napi_create_buffer(env, size, &mut data, &mut out) },
        "napi_create_buffer",
      ))?;
      if size == 0 {
        shared.count_empty(false);
        return Ok(Raw(out));
      }
      // Node leaves napi_create_buffer's memory uninitialised.
      unsafe { ptr::write_bytes(data as *mut u8, 0, size) };
      let rec = shared.take_plain(data as usize, size);
      let mut ab = ptr::null_mut();
      let s = unsafe {
        let mut ty = 0;
        let (mut len, mut d, mut off) = (0usize, ptr::null_mut(), 0usize);
        let s =
          sys::napi_get_typedarray_info(env, out, &mut ty, &mut len, &mut d, &mut ab, &mut off);
        if s == sys::Status::napi_ok {
          sys::napi_add_finalizer(
            env,
            ab,
            ptr::null_mut(),
            Some(finalize_record),
            Arc::into_raw(rec.clone()) as *mut c_void,
            ptr::null_mut(),
          )
        } else {
          s
        }
      };
      if s != sys::Status::napi_ok {
        shared.untake(&rec);
        return Err(
          HpError::invalid(format!("could not track a plain Buffer (napi status {s})")).into(),
        );
      }
      return Ok(Raw(out));
    }
    {
      let w = self.watch.lock();
      let due = w.since >= SWEEP_MIN_BYTES.max(w.accounted as u64 / 2);
      drop(w);
      if due {
        self.sweep(env);
      }
    }
    let rec = to_js(shared.take(size))?;
    let hint = Arc::into_raw(rec.clone()) as *mut c_void;
    let s = unsafe {
      sys::napi_create_external_buffer(
        env,
        size,
        rec.ptr as *mut c_void,
        Some(finalize_record),
        hint,
        &mut out,
      )
    };
    if s != sys::Status::napi_ok {
      drop(unsafe { Arc::from_raw(hint as *const Record) });
      shared.untake(&rec);
      return Err(
        HpError::invalid(format!(
          "could not create an external Buffer of {size} bytes (napi status {s})"
        ))
        .into(),
      );
    }
    self.track(env, out, &rec);
    Ok(Raw(out))
    }
  }

  /// Watch a new external Buffer (weak reference to its ArrayBuffer) and
  /// report its bytes to V8. Best effort: if a step fails, the Buffer is
  /// still reclaimed by its finalizer, only later.
  fn track(&self, env: sys::napi_env, buf: sys::napi_value, rec: &Arc<Record>) {
    let (mut ty, mut len, mut data, mut ab, mut off) =
      (0, 0usize, ptr::null_mut(), ptr::null_mut(), 0usize);
    let mut r = ptr::null_mut();
    let ok = unsafe {
      sys::napi_get_typedarray_info(env, buf, &mut ty, &mut len, &mut data, &mut ab, &mut off)
        == sys::Status::napi_ok
        && sys::napi_create_reference(env, ab, 0, &mut r) == sys::Status::napi_ok
    };
    if !ok {
      return;
    }
    let mut w = self.watch.lock();
    w.list.push((r as usize, rec.clone()));
    w.accounted += rec.cap as i64;
    w.since += rec.cap as u64;
    drop(w);
    adjust_external(env, rec.cap as i64);
  }

  /// Return a Buffer's memory and detach it (its length becomes 0). Returns
  /// false, changing nothing, when the Buffer is not an outstanding
  /// allocation of this pool (the JS layer then says which error it is).
  #[napi]
  pub fn release(&self, buffer: Unknown) -> Result<bool, Code> {
    guarded! { self,
    let shared = self.open()?;
    let env = buffer.value().env;
    let (mut ty, mut len, mut data, mut ab, mut off) =
      (0, 0usize, ptr::null_mut(), ptr::null_mut(), 0usize);
    let s = unsafe {
      sys::napi_get_typedarray_info(
        env,
        buffer.raw(),
        &mut ty,
        &mut len,
        &mut data,
        &mut ab,
        &mut off,
      )
    };
    if s != sys::Status::napi_ok || ty != sys::TypedarrayType::uint8_array || off != 0 || len == 0 {
      return Ok(false);
    }
    let Some(rec) = shared.lookup(data as usize, len) else {
      return Ok(false);
    };
    to_js(status(
      unsafe { sys::napi_detach_arraybuffer(env, ab) },
      "release: detaching the Buffer",
    ))?;
    shared.released(&rec);
    Ok(true)
    }
  }

  /// Count the release of a zero-length Buffer (the JS layer tracks those).
  #[napi]
  pub fn release_empty(&self) -> Result<(), Code> {
    guarded! { self,
    self.open()?.count_empty(true);
    Ok(())
    }
  }

  /// Free all pooled memory now (Buffers collected since the last sweep
  /// included).
  #[napi]
  pub fn trim(&self, env: Env) -> Result<(), Code> {
    guarded! { self,
    let shared = self.open()?;
    if env.raw() as usize == self.env {
      self.sweep(env.raw());
    }
    shared.trim();
    Ok(())
    }
  }

  /// Resolves when every released block has been zeroed and is back in the
  /// pool (or freed).
  #[napi(ts_return_type = "Promise<void>")]
  pub fn flush<'e>(&self, env: &'e Env) -> Result<Object<'e>, Code> {
    guarded! { self,
    let shared = self.open()?.clone();
    runtime::promise(env, async move {
      shared.idle().await;
      Ok(())
    })
    .map_err(crate::error::from_napi)
    }
  }

  #[napi]
  pub fn stats(&self) -> Result<BufferPoolStats, Code> {
    guarded! { always ok self,
    self.shared.stats()
    }
  }

  /// Close this handle; the last handle of a pool frees its pooled memory.
  /// Outstanding Buffers stay valid; their memory is freed when collected.
  #[napi(ts_return_type = "Promise<void>")]
  pub fn close<'e>(&self, env: &'e Env) -> Result<Object<'e>, Code> {
    guarded! { always self,
    let first = !self.closed.swap(true, Ordering::SeqCst);
    let last = first
      && match &self.name {
        Some(n) => runtime::detach(CLASS, n),
        None => true,
      };
    let shared = self.shared.clone();
    if first && env.raw() as usize == self.env {
      // Outstanding Buffers stay valid (their finalizers reclaim them); this
      // handle stops watching them and gives V8 its bytes back.
      let back = unsafe { self.watch.lock().clear(env.raw()) };
      adjust_external(env.raw(), -back);
    }
    if last {
      shared.close();
    }
    runtime::promise(env, async move {
      shared.idle().await;
      Ok(())
    })
    .map_err(crate::error::from_napi)
    }
  }
}
