//! The driver that runs Redis connections on a JS thread's own event loop:
//! each socket is watched by a libuv `uv_poll` handle of the loop Node-API
//! gives (`napi_get_uv_event_loop`), so a command is written during the tick
//! that issued it and its reply settles its Promise on the same thread — no
//! thread hop in either direction.
//!
//! Per thread: one [`Core`] holding one connection per endpoint, shared by
//! every instance on that thread. Commands issued in one tick leave in one
//! write: sends only append to the connection's buffer, and a `uv_prepare`
//! and a `uv_check` handle (run before the loop blocks, and right after I/O)
//! flush every dirty connection. Work a component wants to batch per tick
//! (the rate limiter's script calls) registers with [`Core::defer`] and runs
//! just before that flush.
//!
//! libuv's functions are found at run time (`dlsym` in the Node process), so
//! the crate still links and tests without Node; without them (a runtime
//! that is not Node) [`core`] answers `None` and callers use the Tokio path.

// The `napi_env`s taken here come from the Node-API call on this thread
// that asked (and live as long as its environment): not arbitrary pointers.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::ffi::{c_int, c_void};
use std::rc::Rc;
use std::sync::{Arc, OnceLock};

use napi::sys;

use super::conn::{Conn, Done, Out, Target};
use super::resp::Reply;
use crate::error::HpError;

type PollCb = unsafe extern "C" fn(*mut c_void, c_int, c_int);
type HandleCb = unsafe extern "C" fn(*mut c_void);

const UV_CHECK: c_int = 2;
const UV_POLL: c_int = 8;
const UV_PREPARE: c_int = 9;
const UV_TIMER: c_int = 13;
const UV_READABLE: c_int = 1;
const UV_WRITABLE: c_int = 2;

struct Api {
  handle_size: unsafe extern "C" fn(c_int) -> usize,
  poll_init_socket: unsafe extern "C" fn(*mut c_void, *mut c_void, c_int) -> c_int,
  poll_start: unsafe extern "C" fn(*mut c_void, c_int, PollCb) -> c_int,
  poll_stop: unsafe extern "C" fn(*mut c_void) -> c_int,
  close: unsafe extern "C" fn(*mut c_void, Option<HandleCb>),
  timer_init: unsafe extern "C" fn(*mut c_void, *mut c_void) -> c_int,
  timer_start: unsafe extern "C" fn(*mut c_void, HandleCb, u64, u64) -> c_int,
  timer_stop: unsafe extern "C" fn(*mut c_void) -> c_int,
  prepare_init: unsafe extern "C" fn(*mut c_void, *mut c_void) -> c_int,
  prepare_start: unsafe extern "C" fn(*mut c_void, HandleCb) -> c_int,
  check_init: unsafe extern "C" fn(*mut c_void, *mut c_void) -> c_int,
  check_start: unsafe extern "C" fn(*mut c_void, HandleCb) -> c_int,
  uv_ref: unsafe extern "C" fn(*mut c_void),
  uv_unref: unsafe extern "C" fn(*mut c_void),
}

#[allow(clippy::missing_transmute_annotations)]
fn api() -> Option<&'static Api> {
  static API: OnceLock<Option<Api>> = OnceLock::new();
  API
    .get_or_init(|| unsafe {
      macro_rules! sym {
        ($name:literal) => {{
          let p = libc::dlsym(
            libc::RTLD_DEFAULT,
            concat!($name, "\0").as_ptr() as *const _,
          );
          if p.is_null() {
            return None;
          }
          std::mem::transmute::<*mut c_void, _>(p)
        }};
      }
      Some(Api {
        handle_size: sym!("uv_handle_size"),
        poll_init_socket: sym!("uv_poll_init_socket"),
        poll_start: sym!("uv_poll_start"),
        poll_stop: sym!("uv_poll_stop"),
        close: sym!("uv_close"),
        timer_init: sym!("uv_timer_init"),
        timer_start: sym!("uv_timer_start"),
        timer_stop: sym!("uv_timer_stop"),
        prepare_init: sym!("uv_prepare_init"),
        prepare_start: sym!("uv_prepare_start"),
        check_init: sym!("uv_check_init"),
        check_start: sym!("uv_check_start"),
        uv_ref: sym!("uv_ref"),
        uv_unref: sym!("uv_unref"),
      })
    })
    .as_ref()
}

unsafe fn alloc_handle(a: &Api, kind: c_int, data: *const c_void) -> *mut c_void {
  unsafe {
    let h = libc::calloc(1, (a.handle_size)(kind));
    // `void* data` is the first field of every uv handle.
    *(h as *mut *const c_void) = data;
    h
  }
}

unsafe extern "C" fn free_handle(h: *mut c_void) {
  unsafe { libc::free(h) }
}

unsafe fn data<T>(h: *mut c_void) -> *const T {
  unsafe { *(h as *const *const T) }
}

/// One connection and its libuv handles.
pub struct Slot {
  pub conn: RefCell<Conn>,
  poll: Cell<*mut c_void>,
  poll_gen: Cell<u64>,
  poll_events: Cell<c_int>,
  poll_refd: Cell<bool>,
  timer: Cell<*mut c_void>,
  timer_at: Cell<f64>,
  dirty: Cell<bool>,
  core: *const Core,
}

/// A thread's Redis connections (one per endpoint) and its flush hooks.
pub struct Core {
  env: sys::napi_env,
  lp: *mut c_void,
  api: &'static Api,
  slots: RefCell<HashMap<String, Rc<Slot>>>,
  prepare: Cell<*mut c_void>,
  check: Cell<*mut c_void>,
  /// A 0 ms timer, started when work was queued by the callbacks of a
  /// flush itself (after this phase's flush), so the loop does not block
  /// in poll before writing it.
  kick: Cell<*mut c_void>,
  prepare_refd: Cell<bool>,
  dirty: RefCell<Vec<Rc<Slot>>>,
  deferred: RefCell<Vec<Box<dyn FnOnce()>>>,
  /// Inside a libuv callback: completions wait in `out` for the callback
  /// scope (so Promise reactions run right after them).
  in_hook: Cell<bool>,
  out: RefCell<Out>,
  async_ctx: Cell<sys::napi_async_context>,
  closed: Cell<bool>,
  /// Redis Cluster routers, per endpoint (see `route.rs`).
  routers: RefCell<HashMap<String, Rc<super::route::Router>>>,
}

/// Work for [`Core::after`]: the core and what to run.
struct Later {
  core: *const Core,
  f: Option<Box<dyn FnOnce()>>,
}

thread_local! {
  static CORE: RefCell<Option<Rc<Core>>> = const { RefCell::new(None) };
}

/// This JS thread's core (made on first use), or None outside Node.
pub fn core(env: sys::napi_env) -> Option<Rc<Core>> {
  if let Some(c) = CORE.with(|c| c.borrow().clone()) {
    return (!c.closed.get()).then_some(c);
  }
  let api = api()?;
  let mut lp: *mut sys::uv_loop_s = std::ptr::null_mut();
  if unsafe { sys::napi_get_uv_event_loop(env, &mut lp) } != sys::Status::napi_ok || lp.is_null() {
    return None;
  }
  let core = Rc::new(Core {
    env,
    lp: lp as *mut c_void,
    api,
    slots: RefCell::new(HashMap::new()),
    prepare: Cell::new(std::ptr::null_mut()),
    check: Cell::new(std::ptr::null_mut()),
    kick: Cell::new(std::ptr::null_mut()),
    prepare_refd: Cell::new(false),
    dirty: RefCell::new(Vec::new()),
    deferred: RefCell::new(Vec::new()),
    in_hook: Cell::new(false),
    out: RefCell::new(Vec::new()),
    async_ctx: Cell::new(std::ptr::null_mut()),
    closed: Cell::new(false),
    routers: RefCell::new(HashMap::new()),
  });
  unsafe {
    let me = Rc::as_ptr(&core) as *const c_void;
    let p = alloc_handle(api, UV_PREPARE, me);
    (api.prepare_init)(core.lp, p);
    (api.prepare_start)(p, on_tick);
    (api.uv_unref)(p);
    core.prepare.set(p);
    let c = alloc_handle(api, UV_CHECK, me);
    (api.check_init)(core.lp, c);
    (api.check_start)(c, on_tick);
    (api.uv_unref)(c);
    core.check.set(c);
    let k = alloc_handle(api, UV_TIMER, me);
    (api.timer_init)(core.lp, k);
    (api.uv_unref)(k);
    core.kick.set(k);
    let mut name = std::ptr::null_mut();
    sys::napi_create_string_utf8(env, c"hotpath.redis".as_ptr(), 13, &mut name);
    let mut ctx = std::ptr::null_mut();
    sys::napi_async_init(env, std::ptr::null_mut(), name, &mut ctx);
    core.async_ctx.set(ctx);
    sys::napi_add_env_cleanup_hook(env, Some(cleanup), std::ptr::null_mut());
  }
  CORE.with(|c| *c.borrow_mut() = Some(core.clone()));
  Some(core)
}

unsafe extern "C" fn cleanup(_arg: *mut c_void) {
  let Some(core) = CORE.with(|c| c.borrow_mut().take()) else {
    return;
  };
  core.closed.set(true);
  // Routers hold slots (forgotten below) and nothing owed to JS but
  // through them.
  std::mem::forget(core.routers.take());
  let a = core.api;
  unsafe {
    for (_, s) in core.slots.borrow_mut().drain() {
      let mut out = Vec::new();
      s.conn.borrow_mut().shutdown(&mut out);
      // The env is going away: the callers' Promises go with it.
      std::mem::forget(out);
      let p = s.poll.replace(std::ptr::null_mut());
      if !p.is_null() {
        (a.poll_stop)(p);
        (a.close)(p, Some(free_handle));
      }
      let t = s.timer.replace(std::ptr::null_mut());
      if !t.is_null() {
        (a.timer_stop)(t);
        (a.close)(t, Some(free_handle));
      }
      // Handles no longer point at the slot; it may go.
      std::mem::forget(s);
    }
    (a.timer_stop)(core.kick.get());
    (a.close)(core.kick.get(), Some(free_handle));
    (a.close)(core.prepare.get(), Some(free_handle));
    (a.close)(core.check.get(), Some(free_handle));
  }
  std::mem::forget(core);
}

/// Milliseconds on a monotonic clock (not the crate's mockable clock: a test
/// moving time forward must not time out real sockets).
pub fn real_ms() -> f64 {
  static EPOCH: OnceLock<std::time::Instant> = OnceLock::new();
  EPOCH
    .get_or_init(std::time::Instant::now)
    .elapsed()
    .as_secs_f64()
    * 1000.0
}

impl Core {
  pub fn env(&self) -> sys::napi_env {
    self.env
  }

  /// The connection to the endpoint `key` (made by `target` on first use).
  pub fn slot(&self, key: &str, target: impl FnOnce() -> Arc<Target>) -> Rc<Slot> {
    if let Some(s) = self.slots.borrow().get(key) {
      return s.clone();
    }
    let s = Rc::new(Slot {
      conn: RefCell::new(Conn::new(target())),
      poll: Cell::new(std::ptr::null_mut()),
      poll_gen: Cell::new(0),
      poll_events: Cell::new(0),
      poll_refd: Cell::new(true),
      timer: Cell::new(std::ptr::null_mut()),
      timer_at: Cell::new(f64::INFINITY),
      dirty: Cell::new(false),
      core: self as *const Core,
    });
    unsafe {
      let t = alloc_handle(self.api, UV_TIMER, Rc::as_ptr(&s) as *const c_void);
      (self.api.timer_init)(self.lp, t);
      (self.api.uv_unref)(t);
      s.timer.set(t);
    }
    self.slots.borrow_mut().insert(key.to_string(), s.clone());
    s
  }

  /// Open sockets on this thread (for tests).
  pub fn connections(&self) -> usize {
    self
      .slots
      .borrow()
      .values()
      .filter(|s| s.conn.borrow().fd().is_some())
      .count()
  }

  /// Queue `replies` commands on `slot`, written by `encode`; `done` runs
  /// once on this thread with their replies (or at once, failing fast).
  pub fn send(&self, slot: &Rc<Slot>, encode: &dyn Fn(&mut Vec<u8>), replies: usize, done: Done) {
    let mut out = Vec::new();
    slot
      .conn
      .borrow_mut()
      .send(real_ms(), encode, replies, done, &mut out);
    self.mark_dirty(slot);
    self.sync(slot);
    self.complete(out);
  }

  /// Write what `slot` holds now, not at the end of the tick: for a batch
  /// already big enough that the server may start on it while this thread
  /// goes on (the rest of the tick follows in the tick's own write).
  pub fn write_now(&self, slot: &Rc<Slot>) {
    let mut out = Vec::new();
    if let Ok(mut c) = slot.conn.try_borrow_mut() {
      c.flush(real_ms(), &mut out);
    }
    self.sync(slot);
    self.complete(out);
  }

  /// This thread's Redis Cluster router for endpoint `key`, if made.
  pub fn router(&self, key: &str) -> Option<Rc<super::route::Router>> {
    self.routers.borrow().get(key).cloned()
  }

  pub fn set_router(&self, key: &str, r: Rc<super::route::Router>) {
    self.routers.borrow_mut().insert(key.to_string(), r);
  }

  /// Run `f` on this thread after `ms` (as a libuv callback); `keep`: the
  /// timer keeps the loop alive (something owed to JS waits on it).
  pub fn after(&self, ms: f64, keep: bool, f: Box<dyn FnOnce()>) {
    let job = Box::into_raw(Box::new(Later {
      core: self as *const Core,
      f: Some(f),
    }));
    unsafe {
      let t = alloc_handle(self.api, UV_TIMER, job as *const c_void);
      (self.api.timer_init)(self.lp, t);
      if !keep {
        (self.api.uv_unref)(t);
      }
      (self.api.timer_start)(t, on_later, ms.max(0.0).ceil() as u64, 0);
    }
  }

  /// Run `f` just before this tick's writes (to batch work per tick).
  pub fn defer(&self, f: Box<dyn FnOnce()>) {
    self.deferred.borrow_mut().push(f);
    self.keep_alive();
  }

  /// Run `f`, which calls into JS: at once inside a JS call, or (inside a
  /// libuv callback) with the completions, in their callback scope.
  pub fn run_js(&self, f: Box<dyn FnOnce()>) {
    self.complete(vec![(Box::new(move |_| f()), Ok(Vec::new()))]);
  }

  fn keep_alive(&self) {
    if !self.prepare_refd.replace(true) {
      unsafe { (self.api.uv_ref)(self.prepare.get()) };
    }
  }

  fn mark_dirty(&self, slot: &Rc<Slot>) {
    if !slot.dirty.replace(true) {
      self.dirty.borrow_mut().push(slot.clone());
      self.keep_alive();
    }
  }

  fn complete(&self, out: Out) {
    if out.is_empty() {
      return;
    }
    if self.in_hook.get() {
      self.out.borrow_mut().extend(out);
      return;
    }
    for (d, r) in out {
      d(r);
    }
  }

  /// Bring the slot's libuv handles in line with its connection.
  fn sync(&self, slot: &Slot) {
    let a = self.api;
    let c = slot.conn.borrow();
    unsafe {
      if c.generation != slot.poll_gen.get() {
        let old = slot.poll.replace(std::ptr::null_mut());
        if !old.is_null() {
          (a.poll_stop)(old);
          (a.close)(old, Some(free_handle));
        }
        if let Some(fd) = c.fd() {
          let h = alloc_handle(a, UV_POLL, slot as *const Slot as *const c_void);
          if (a.poll_init_socket)(self.lp, h, fd) == 0 {
            slot.poll.set(h);
          } else {
            libc::free(h);
          }
        }
        slot.poll_gen.set(c.generation);
        slot.poll_events.set(0);
        slot.poll_refd.set(true);
      }
      let h = slot.poll.get();
      if !h.is_null() {
        let ev = UV_READABLE | if c.want_write() { UV_WRITABLE } else { 0 };
        if ev != slot.poll_events.get() {
          (a.poll_start)(h, ev, on_poll);
          slot.poll_events.set(ev);
        }
        let want_ref = c.owes_replies();
        if want_ref != slot.poll_refd.get() {
          if want_ref {
            (a.uv_ref)(h);
          } else {
            (a.uv_unref)(h);
          }
          slot.poll_refd.set(want_ref);
        }
      }
      match c.next_deadline() {
        Some(d) if d < slot.timer_at.get() => {
          let wait = (d - real_ms()).max(0.0).ceil() as u64;
          (a.timer_start)(slot.timer.get(), on_timer, wait, 0);
          slot.timer_at.set(d);
        }
        Some(_) => {}
        None => {
          if slot.timer_at.get().is_finite() {
            (a.timer_stop)(slot.timer.get());
            slot.timer_at.set(f64::INFINITY);
          }
        }
      }
    }
  }

  /// Run `f` (which may produce completions) as one libuv callback: the
  /// completions run inside a Node-API callback scope, so the Promise
  /// reactions they cause run right after them, before the loop goes on.
  fn hook(&self, f: impl FnOnce()) {
    let was = self.in_hook.replace(true);
    f();
    self.in_hook.set(was);
    if was {
      return;
    }
    let out = std::mem::take(&mut *self.out.borrow_mut());
    if out.is_empty() {
      return;
    }
    let env = self.env;
    unsafe {
      let mut hs = std::ptr::null_mut();
      sys::napi_open_handle_scope(env, &mut hs);
      let mut resource = std::ptr::null_mut();
      sys::napi_create_object(env, &mut resource);
      let mut scope = std::ptr::null_mut();
      let scoped = sys::napi_open_callback_scope(env, resource, self.async_ctx.get(), &mut scope)
        == sys::Status::napi_ok;
      self.in_hook.set(true);
      let mut out = out;
      loop {
        for (d, r) in out {
          d(r);
          let mut pending = false;
          sys::napi_is_exception_pending(env, &mut pending);
          if pending {
            let mut e = std::ptr::null_mut();
            sys::napi_get_and_clear_last_exception(env, &mut e);
            sys::napi_fatal_exception(env, e);
          }
        }
        out = std::mem::take(&mut *self.out.borrow_mut());
        if out.is_empty() {
          break;
        }
      }
      self.in_hook.set(false);
      if scoped {
        sys::napi_close_callback_scope(env, scope);
      }
      sys::napi_close_handle_scope(env, hs);
    }
  }

  fn flush_all(&self) {
    loop {
      let deferred = std::mem::take(&mut *self.deferred.borrow_mut());
      if deferred.is_empty() {
        break;
      }
      for f in deferred {
        f();
      }
    }
    let dirty = std::mem::take(&mut *self.dirty.borrow_mut());
    let now = real_ms();
    for s in dirty {
      s.dirty.set(false);
      let mut out = Vec::new();
      s.conn.borrow_mut().flush(now, &mut out);
      self.sync(&s);
      self.complete(out);
    }
  }
}

unsafe extern "C" fn on_tick(h: *mut c_void) {
  let core = unsafe { &*data::<Core>(h) };
  if core.closed.get() || (core.deferred.borrow().is_empty() && core.dirty.borrow().is_empty()) {
    return;
  }
  core.hook(|| core.flush_all());
  if core.deferred.borrow().is_empty() && core.dirty.borrow().is_empty() {
    if core.prepare_refd.replace(false) {
      unsafe { (core.api.uv_unref)(core.prepare.get()) };
    }
  } else {
    // Sends made by what this flush settled: write them next iteration
    // without blocking in poll first.
    unsafe { (core.api.timer_start)(core.kick.get(), on_tick, 0, 0) };
  }
}

unsafe extern "C" fn on_later(h: *mut c_void) {
  let mut job = unsafe { Box::from_raw(data::<Later>(h) as *mut Later) };
  let a = api().expect("libuv");
  unsafe { (a.close)(h, Some(free_handle)) };
  let core = unsafe { &*job.core };
  let Some(f) = job.f.take() else { return };
  if core.closed.get() {
    // The env is going away: what `f` would settle goes with it.
    std::mem::forget(f);
    return;
  }
  core.hook(f);
}

unsafe extern "C" fn on_poll(h: *mut c_void, status: c_int, events: c_int) {
  let slot = unsafe { &*data::<Slot>(h) };
  let core = unsafe { &*slot.core };
  if core.closed.get() {
    return;
  }
  let (r, w) = if status < 0 {
    (true, true)
  } else {
    (events & UV_READABLE != 0, events & UV_WRITABLE != 0)
  };
  core.hook(|| {
    let mut out = Vec::new();
    slot.conn.borrow_mut().on_io(real_ms(), r, w, &mut out);
    core.sync(slot);
    core.complete(out);
  });
}

unsafe extern "C" fn on_timer(h: *mut c_void) {
  let slot = unsafe { &*data::<Slot>(h) };
  let core = unsafe { &*slot.core };
  if core.closed.get() {
    return;
  }
  slot.timer_at.set(f64::INFINITY);
  core.hook(|| {
    let mut out = Vec::new();
    slot.conn.borrow_mut().on_timer(real_ms(), &mut out);
    core.sync(slot);
    core.complete(out);
  });
}

/// An HpError as the JS Error (with `code`) to reject with.
pub fn js_error(env: sys::napi_env, e: HpError) -> sys::napi_value {
  unsafe {
    let mut code = std::ptr::null_mut();
    let c = e.code.as_str();
    sys::napi_create_string_utf8(env, c.as_ptr() as *const _, c.len() as isize, &mut code);
    let mut msg = std::ptr::null_mut();
    sys::napi_create_string_utf8(
      env,
      e.message.as_ptr() as *const _,
      e.message.len() as isize,
      &mut msg,
    );
    let mut err = std::ptr::null_mut();
    sys::napi_create_error(env, code, msg, &mut err);
    err
  }
}

/// Replies as values (server errors become `ERR_REDIS`).
pub fn values(r: Result<Vec<Reply>, HpError>) -> Result<Vec<redis::Value>, HpError> {
  r?.into_iter()
    .map(|x| match x {
      Reply::Value(v) => Ok(v),
      Reply::Error(e) => Err(HpError::redis(format!("redis: {e}"))),
    })
    .collect()
}
