//! The BufferPool engine: size classes, free lists, the record of every
//! outstanding allocation, zeroing and freeing on the runtime's threads.
//! Plain Rust (no napi), with its unit tests at the bottom; `mod.rs` is the
//! napi layer that turns records into Buffers.
//!
//! Every allocation has an `Arc<Record>` with an atomic state. Whoever moves
//! it away from OUT (a `release`, the Buffer's finalizer, or the binding's
//! GC sweep when V8 collected the ArrayBuffer) returns the block to the pool,
//! exactly once.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::collections::{BTreeMap, HashMap};
use std::ffi::c_void;
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::Notify;

use super::BufferPoolStats;
use crate::error::{HpError, HpResult};
use crate::runtime;

/// The smallest size class (bytes).
pub const MIN_CLASS: usize = 64;
/// The largest `allocate` size: 2 GiB - 1.
pub const MAX_SIZE: usize = (1 << 31) - 1;
pub const MAX_CHUNK: usize = 1 << 30;
const ALIGN: usize = 16;
/// How long the zeroing worker waits for more work before it ends.
const LINGER: Duration = Duration::from_micros(200);

/// Validated options.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
  pub chunk_size: usize,
  pub max_pooled: u64,
  pub zero: bool,
  /// Plain (non-external) Buffers: where external buffers are not allowed.
  pub plain: bool,
}

impl PoolConfig {
  /// The block size serving a request of `size` bytes.
  pub fn cap_for(&self, size: usize) -> usize {
    if size <= MIN_CLASS {
      MIN_CLASS
    } else if size <= self.chunk_size {
      size.next_power_of_two()
    } else {
      size.div_ceil(self.chunk_size) * self.chunk_size
    }
  }
}

/// A size as JS gives it: an integer from 0 to [`MAX_SIZE`].
pub fn check_size(size: f64) -> HpResult<usize> {
  if !size.is_finite() || size.fract() != 0.0 || size < 0.0 || size > MAX_SIZE as f64 {
    return Err(HpError::invalid(format!(
      "size must be an integer from 0 to {MAX_SIZE}, got {size}"
    )));
  }
  Ok(size as usize)
}

// ------------------------------------------------------------------ blocks

/// One block of memory the pool owns.
pub struct Block {
  ptr: NonNull<u8>,
  cap: usize,
}

// A Block is plain memory owned by whoever holds it.
unsafe impl Send for Block {}

impl Block {
  fn layout(cap: usize) -> Layout {
    Layout::from_size_align(cap, ALIGN).expect("block layout")
  }

  /// Fresh zeroed memory. Blocks of [`MMAP_MIN`] bytes and more are mapped
  /// directly on unix: fresh zero pages without a memset, returned to the OS
  /// when freed, and no effect on malloc's heuristics for everyone else's
  /// allocations. Smaller ones come from calloc.
  fn new_zeroed(cap: usize) -> HpResult<Block> {
    let oom = || HpError::invalid(format!("could not allocate {cap} bytes (out of memory)"));
    #[cfg(unix)]
    if cap >= MMAP_MIN {
      let p = unsafe {
        libc::mmap(
          ptr::null_mut(),
          cap,
          libc::PROT_READ | libc::PROT_WRITE,
          libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
          -1,
          0,
        )
      };
      if p == libc::MAP_FAILED {
        return Err(oom());
      }
      return NonNull::new(p as *mut u8)
        .map(|ptr| Block { ptr, cap })
        .ok_or_else(oom);
    }
    let p = unsafe { alloc_zeroed(Self::layout(cap)) };
    NonNull::new(p)
      .map(|ptr| Block { ptr, cap })
      .ok_or_else(oom)
  }

  fn zero(&mut self, len: usize) {
    zero_bytes(self.ptr.as_ptr(), len.min(self.cap));
  }

  pub fn addr(&self) -> usize {
    self.ptr.as_ptr() as usize
  }
}

impl Drop for Block {
  fn drop(&mut self) {
    #[cfg(unix)]
    if self.cap >= MMAP_MIN {
      unsafe { libc::munmap(self.ptr.as_ptr() as *mut c_void, self.cap) };
      return;
    }
    unsafe { dealloc(self.ptr.as_ptr(), Self::layout(self.cap)) }
  }
}

/// Blocks at least this large are mapped directly (unix).
#[cfg(unix)]
const MMAP_MIN: usize = 128 * 1024;

/// Zero `len` bytes at `p` (16-byte aligned). Large ranges use streaming
/// (non-temporal) stores on x86_64: the zeroing worker runs on another core,
/// and ordinary stores would leave every line of the block modified in that
/// core's cache, for the JS thread to pull across one line at a time when it
/// next writes the Buffer. Streaming stores send the zeros to memory instead.
fn zero_bytes(p: *mut u8, len: usize) {
  #[cfg(target_arch = "x86_64")]
  {
    if len >= NT_MIN {
      use std::arch::x86_64::{__m128i, _mm_setzero_si128, _mm_sfence, _mm_stream_si128};
      let n = len / 16;
      // SAFETY: `p` is a block start (ALIGN = 16, so every 16-byte store is
      // aligned) and `len` is within the block; SSE2 is baseline on x86_64.
      // The fence orders the streaming stores before the lock release that
      // hands the block to another thread.
      unsafe {
        let z = _mm_setzero_si128();
        let q = p as *mut __m128i;
        for i in 0..n {
          _mm_stream_si128(q.add(i), z);
        }
        _mm_sfence();
        ptr::write_bytes(p.add(n * 16), 0, len - n * 16);
      }
      return;
    }
  }
  unsafe { ptr::write_bytes(p, 0, len) }
}

/// Ranges at least this long are zeroed with streaming stores (measured on a
/// 2-core EPYC VM: 1 MiB allocate + fill + release ~30% faster; at 64 KiB
/// no clear difference either way).
#[cfg(target_arch = "x86_64")]
const NT_MIN: usize = 256 * 1024;

// ------------------------------------------------------------------ records

pub(super) const OUT: u8 = 0;
const RELEASED: u8 = 1;
const RECLAIMED: u8 = 2;

/// One allocation handed to JS.
pub struct Record {
  /// Data pointer of the Buffer (the block's, or V8's in plain mode).
  pub(super) ptr: usize,
  /// Block size (plain mode: the size).
  pub(super) cap: usize,
  /// Buffer length.
  len: usize,
  pub(super) state: AtomicU8,
  /// Served from the free list (for undoing the count).
  hit: bool,
  /// The block, while outstanding (None in plain mode). Taken by whoever
  /// moves `state` away from OUT.
  block: Mutex<Option<Block>>,
  pool: Arc<Shared>,
}

impl Record {
  /// V8 collected the Buffer (or its backing store went after a release).
  pub fn collected(self: &Arc<Self>) {
    if self
      .state
      .compare_exchange(OUT, RECLAIMED, Ordering::AcqRel, Ordering::Acquire)
      .is_ok()
    {
      self.pool.reclaim(self);
    }
  }

  pub fn ptr(&self) -> usize {
    self.ptr
  }
}

// ------------------------------------------------------------------ the pool

#[derive(Default)]
struct Counters {
  hits: u64,
  misses: u64,
  allocations: u64,
  releases: u64,
  reclaimed: u64,
}

#[derive(Default)]
struct State {
  /// Free zeroed blocks whose size is a power of two, by log2(size).
  pow2: Vec<Vec<Block>>,
  /// Free blocks of other sizes (whole chunks), by size.
  big: BTreeMap<usize, Vec<Block>>,
  /// Free + dirty + being zeroed.
  pooled: u64,
  outstanding: u64,
  /// Outstanding allocations by data pointer (release checks a Buffer here).
  live: HashMap<usize, Arc<Record>>,
  /// Released blocks waiting to be zeroed, with the length that was exposed.
  dirty: Vec<(Block, usize)>,
  /// Blocks to free (beyond maxPooledBytes, or after close).
  to_free: Vec<Block>,
  /// The worker is running (zeroing, or lingering for more work).
  working: bool,
  /// The worker holds a batch it is zeroing or freeing.
  busy: bool,
  /// Bumped by trim: blocks being zeroed then are freed, not pooled.
  gen: u64,
  c: Counters,
}

impl State {
  fn pop_free(&mut self, cap: usize) -> Option<Block> {
    let b = if cap.is_power_of_two() {
      self.pow2.get_mut(cap.trailing_zeros() as usize)?.pop()
    } else {
      self.big.get_mut(&cap)?.pop()
    }?;
    self.pooled -= cap as u64;
    Some(b)
  }

  /// A zeroed block onto its free list (already counted in `pooled`).
  fn push_free(&mut self, b: Block) {
    if b.cap.is_power_of_two() {
      let i = b.cap.trailing_zeros() as usize;
      if self.pow2.len() <= i {
        self.pow2.resize_with(i + 1, Vec::new);
      }
      self.pow2[i].push(b);
    } else {
      self.big.entry(b.cap).or_default().push(b);
    }
  }

  /// Make room for `need` more pooled bytes under `max` by freeing free
  /// blocks of other sizes, largest first (the workload moved on to another
  /// size). Returns false when that is not enough.
  fn make_room(&mut self, need: u64, max: u64, keep_cap: usize) -> bool {
    if need > max {
      return false;
    }
    while self.pooled + need > max {
      let mut victim = None;
      if let Some((&cap, v)) = self
        .big
        .iter_mut()
        .rev()
        .find(|(c, v)| **c != keep_cap && !v.is_empty())
      {
        victim = v.pop().map(|b| (cap, b));
      }
      if victim.is_none() {
        for (i, v) in self.pow2.iter_mut().enumerate().rev() {
          if (1usize << i) != keep_cap && !v.is_empty() {
            victim = v.pop().map(|b| (1usize << i, b));
            break;
          }
        }
      }
      let Some((cap, b)) = victim else { return false };
      self.pooled -= cap as u64;
      self.to_free.push(b);
    }
    true
  }

  fn free_bytes(&self) -> u64 {
    let a: usize = self.pow2.iter().flatten().map(|b| b.cap).sum();
    let b: usize = self.big.values().flatten().map(|b| b.cap).sum();
    (a + b) as u64
  }
}

static NEXT_ID: AtomicU32 = AtomicU32::new(1);

/// The shared state of one pool (one per name, or per unnamed instance).
pub struct Shared {
  pub cfg: PoolConfig,
  /// Identifies the pool to the JS layer (its ownership check).
  pub id: u32,
  st: Mutex<State>,
  /// Work was queued since the worker last took it (read without the lock
  /// while the worker lingers).
  queued: AtomicBool,
  idle: Notify,
  closed: AtomicBool,
}

impl Shared {
  pub fn new(cfg: PoolConfig) -> Arc<Shared> {
    Arc::new(Shared {
      cfg,
      id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
      st: Mutex::new(State::default()),
      queued: AtomicBool::new(false),
      idle: Notify::new(),
      closed: AtomicBool::new(false),
    })
  }

  /// A block for `size` bytes (from the free list, or fresh and zeroed), and
  /// its record, now outstanding.
  pub fn take(self: &Arc<Self>, size: usize) -> HpResult<Arc<Record>> {
    let cap = self.cfg.cap_for(size);
    let reused = self.st.lock().pop_free(cap);
    let hit = reused.is_some();
    let block = match reused {
      Some(b) => b,
      None => Block::new_zeroed(cap)?,
    };
    let rec = Arc::new(Record {
      ptr: block.addr(),
      cap,
      len: size,
      state: AtomicU8::new(OUT),
      hit,
      block: Mutex::new(Some(block)),
      pool: self.clone(),
    });
    let mut st = self.st.lock();
    st.live.insert(rec.ptr, rec.clone());
    st.outstanding += cap as u64;
    st.c.allocations += 1;
    if hit {
      st.c.hits += 1;
    } else {
      st.c.misses += 1;
    }
    Ok(rec)
  }

  /// Plain mode: record a Buffer V8 allocated (no block).
  pub fn take_plain(self: &Arc<Self>, ptr: usize, size: usize) -> Arc<Record> {
    let rec = Arc::new(Record {
      ptr,
      cap: size,
      len: size,
      state: AtomicU8::new(OUT),
      hit: false,
      block: Mutex::new(None),
      pool: self.clone(),
    });
    let mut st = self.st.lock();
    st.live.insert(ptr, rec.clone());
    st.outstanding += size as u64;
    st.c.allocations += 1;
    st.c.misses += 1;
    rec
  }

  /// A zero-length allocation (no memory).
  pub fn count_empty(&self, release: bool) {
    let mut st = self.st.lock();
    if release {
      st.c.releases += 1;
    } else {
      st.c.allocations += 1;
      st.c.hits += 1;
    }
  }

  /// Move an outstanding record to released (once: None if it already was)
  /// and take its block.
  fn claim(rec: &Record) -> Option<Option<Block>> {
    rec
      .state
      .compare_exchange(OUT, RELEASED, Ordering::AcqRel, Ordering::Acquire)
      .ok()?;
    Some(rec.block.lock().take())
  }

  /// Undo `take` when no Buffer could be made of the record.
  pub fn untake(self: &Arc<Self>, rec: &Arc<Record>) {
    let Some(block) = Self::claim(rec) else {
      return;
    };
    let mut st = self.st.lock();
    if st.live.get(&rec.ptr).is_some_and(|r| Arc::ptr_eq(r, rec)) {
      st.live.remove(&rec.ptr);
    }
    st.outstanding -= rec.cap as u64;
    st.c.allocations -= 1;
    if rec.hit {
      st.c.hits -= 1;
    } else {
      st.c.misses -= 1;
    }
    if let Some(b) = block {
      // It never reached JS: still zeroed.
      if st.pooled + b.cap as u64 <= self.cfg.max_pooled && !self.closed.load(Ordering::Relaxed) {
        st.pooled += b.cap as u64;
        st.push_free(b);
      } else {
        st.to_free.push(b);
      }
    }
    self.kick(st);
  }

  /// The outstanding record of the Buffer at `ptr` of length `len`.
  pub fn lookup(&self, ptr: usize, len: usize) -> Option<Arc<Record>> {
    let st = self.st.lock();
    match st.live.get(&ptr) {
      Some(r) if r.len == len && r.state.load(Ordering::Acquire) == OUT => Some(r.clone()),
      _ => None,
    }
  }

  /// `release` of a looked-up record, after its Buffer was detached.
  pub fn released(self: &Arc<Self>, rec: &Arc<Record>) {
    let Some(block) = Self::claim(rec) else {
      return;
    };
    let mut st = self.st.lock();
    st.c.releases += 1;
    self.retire(&mut st, rec, block);
    self.kick(st);
  }

  /// A Buffer never released was collected.
  fn reclaim(self: &Arc<Self>, rec: &Arc<Record>) {
    let block = rec.block.lock().take();
    let mut st = self.st.lock();
    st.c.reclaimed += 1;
    self.retire(&mut st, rec, block);
    self.kick(st);
  }

  fn retire(&self, st: &mut State, rec: &Arc<Record>, block: Option<Block>) {
    if st.live.get(&rec.ptr).is_some_and(|r| Arc::ptr_eq(r, rec)) {
      st.live.remove(&rec.ptr);
    }
    st.outstanding -= rec.cap as u64;
    let Some(b) = block else { return };
    let cap = b.cap as u64;
    if self.closed.load(Ordering::Relaxed) || !st.make_room(cap, self.cfg.max_pooled, b.cap) {
      st.to_free.push(b);
    } else if self.cfg.zero {
      st.pooled += cap;
      st.dirty.push((b, rec.len));
    } else {
      st.pooled += cap;
      st.push_free(b);
    }
  }

  /// Start the worker if there is work and it is not running.
  fn kick(self: &Arc<Self>, mut st: parking_lot::MutexGuard<'_, State>) {
    if st.dirty.is_empty() && st.to_free.is_empty() {
      return;
    }
    self.queued.store(true, Ordering::Release);
    if st.working {
      return;
    }
    st.working = true;
    drop(st);
    let me = self.clone();
    runtime::handle().spawn_blocking(move || me.work());
  }

  /// The worker: zero released blocks and put them back; free what must go.
  /// Runs on the runtime's blocking threads, never the JS thread. After its
  /// last batch it lingers for [`LINGER`] before it ends, so a steady stream
  /// of releases costs the JS thread a push under a lock, not a thread
  /// wake-up (a futex call and a context switch: microseconds) each.
  fn work(&self) {
    loop {
      let (mut dirty, frees, gen) = {
        let mut st = self.st.lock();
        self.queued.store(false, Ordering::Release);
        if st.dirty.is_empty() && st.to_free.is_empty() {
          // Always wake flush() waiters here, not only after a batch of our
          // own: a trim() or close() may have taken the work this worker was
          // started for, and a waiter that saw it queued must still wake.
          st.busy = false;
          drop(st);
          self.idle.notify_waiters();
          let since = Instant::now();
          while !self.queued.load(Ordering::Acquire) && since.elapsed() < LINGER {
            for _ in 0..64 {
              std::hint::spin_loop();
            }
            std::thread::yield_now();
          }
          let mut st = self.st.lock();
          if st.dirty.is_empty() && st.to_free.is_empty() {
            st.working = false;
            return;
          }
          continue;
        }
        st.busy = true;
        (
          std::mem::take(&mut st.dirty),
          std::mem::take(&mut st.to_free),
          st.gen,
        )
      };
      drop(frees);
      for (b, len) in dirty.iter_mut() {
        b.zero(*len);
      }
      let mut late = Vec::new();
      {
        let mut st = self.st.lock();
        let keep = st.gen == gen && !self.closed.load(Ordering::Relaxed);
        // Kept blocks move from "being zeroed" to "free": `pooled` is
        // unchanged. After a trim (or close) they were uncounted already.
        for (b, _) in dirty {
          if keep {
            st.push_free(b);
          } else {
            late.push(b);
          }
        }
      }
      drop(late);
    }
  }

  /// Free every pooled block now (blocks being zeroed are freed when done).
  pub fn trim(&self) {
    let freed: Vec<Block>;
    {
      let mut st = self.st.lock();
      let mut all: Vec<Block> = st.pow2.iter_mut().flat_map(std::mem::take).collect();
      for (_, v) in std::mem::take(&mut st.big) {
        all.extend(v);
      }
      all.extend(std::mem::take(&mut st.dirty).into_iter().map(|(b, _)| b));
      st.pooled = 0;
      st.gen += 1;
      freed = all;
    }
    drop(freed);
    // The work a flush() waiter saw queued may be gone now: let it look again.
    self.idle.notify_waiters();
  }

  /// Nothing waiting to be zeroed or freed.
  pub fn is_idle(&self) -> bool {
    let st = self.st.lock();
    !st.busy && st.dirty.is_empty() && st.to_free.is_empty()
  }

  /// Wait until the worker has nothing left to do.
  pub async fn idle(&self) {
    loop {
      let n = self.idle.notified();
      tokio::pin!(n);
      n.as_mut().enable();
      if self.is_idle() {
        return;
      }
      n.await;
    }
  }

  pub fn close(&self) {
    self.closed.store(true, Ordering::SeqCst);
    self.trim();
  }

  pub fn stats(&self) -> BufferPoolStats {
    let st = self.st.lock();
    BufferPoolStats {
      hits: st.c.hits as f64,
      misses: st.c.misses as f64,
      pooled_bytes: st.pooled as f64,
      outstanding_bytes: st.outstanding as f64,
      allocations: st.c.allocations as f64,
      releases: st.c.releases as f64,
      reclaimed: st.c.reclaimed as f64,
    }
  }

  /// Free-list bytes (tests).
  pub fn free_bytes(&self) -> u64 {
    self.st.lock().free_bytes()
  }
}

#[cfg(test)]
mod tests {
  use super::*;
  use crate::buffer_pool::BufferPoolOptions;
  use crate::error::Code;

  fn pool(max: u64, zero: bool) -> Arc<Shared> {
    Shared::new(PoolConfig {
      chunk_size: 1 << 20,
      max_pooled: max,
      zero,
      plain: false,
    })
  }

  fn wait(p: &Arc<Shared>) {
    runtime::handle().block_on(p.idle());
  }

  /// The flush/trim race, made deterministic: a released block is queued
  /// (the worker is marked started but has not run), flush() starts
  /// waiting, then trim() takes the queued work. The waiter must wake: it
  /// used to wait forever (the worker only notified after a batch of its
  /// own, and trim never did).
  #[test]
  fn flush_settles_when_trim_takes_the_queued_work() {
    use std::future::Future;
    use std::task::{Context, Poll};
    for trim_first in [true, false] {
      let p = pool(1 << 30, true);
      let rec = p.take(4096).unwrap();
      p.st.lock().working = true; // as if the worker were spawned but not yet running
      p.released(&rec);
      assert!(!p.is_idle());
      let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
      let mut idle = std::pin::pin!(p.idle());
      assert!(idle.as_mut().poll(&mut cx).is_pending());
      if trim_first {
        p.trim();
      } else {
        p.close();
      }
      // The worker finally runs and finds nothing to do.
      p.work();
      assert_eq!(
        idle.as_mut().poll(&mut cx),
        Poll::Ready(()),
        "trim_first={trim_first}"
      );
    }
  }

  // The block's bytes, as JS would see them through the Buffer.
  #[allow(clippy::mut_from_ref)]
  fn bytes(rec: &Record) -> &mut [u8] {
    unsafe { std::slice::from_raw_parts_mut(rec.ptr as *mut u8, rec.len) }
  }

  #[test]
  fn size_classes() {
    let c = PoolConfig {
      chunk_size: 1 << 20,
      max_pooled: 0,
      zero: true,
      plain: false,
    };
    assert_eq!(c.cap_for(0), 64);
    assert_eq!(c.cap_for(1), 64);
    assert_eq!(c.cap_for(64), 64);
    assert_eq!(c.cap_for(65), 128);
    assert_eq!(c.cap_for(1000), 1024);
    assert_eq!(c.cap_for(1 << 20), 1 << 20);
    assert_eq!(c.cap_for((1 << 20) + 1), 2 << 20);
    assert_eq!(c.cap_for(3 * (1 << 20) - 5), 3 << 20);
    assert_eq!(c.cap_for(MAX_SIZE), 1 << 31);
    assert!(check_size(-1.0).is_err());
    assert!(check_size(1.5).is_err());
    assert!(check_size(f64::NAN).is_err());
    assert!(check_size(MAX_SIZE as f64 + 1.0).is_err());
    assert_eq!(check_size(0.0).unwrap(), 0);
  }

  #[test]
  fn options_are_checked() {
    let ok = PoolConfig::from_options(&BufferPoolOptions::default(), false).unwrap();
    assert_eq!(
      (ok.chunk_size, ok.max_pooled, ok.zero),
      (1 << 20, 64 << 20, true)
    );
    for bad in [
      BufferPoolOptions {
        chunk_size: Some(1000.0),
        ..Default::default()
      },
      BufferPoolOptions {
        chunk_size: Some(32.0),
        ..Default::default()
      },
      BufferPoolOptions {
        chunk_size: Some(f64::INFINITY),
        ..Default::default()
      },
      BufferPoolOptions {
        max_pooled_bytes: Some(-1.0),
        ..Default::default()
      },
      BufferPoolOptions {
        max_pooled_bytes: Some(f64::NAN),
        ..Default::default()
      },
    ] {
      assert_eq!(
        PoolConfig::from_options(&bad, false).unwrap_err().code,
        Code::InvalidArg
      );
    }
  }

  #[test]
  fn release_zeroes_off_thread_and_reuses() {
    let p = pool(1 << 30, true);
    let a = p.take(1000).unwrap();
    assert!(bytes(&a).iter().all(|&x| x == 0));
    bytes(&a).fill(0xAB);
    let ptr = a.ptr;
    let got = p.lookup(ptr, 1000).unwrap();
    p.released(&got);
    drop((a, got));
    let s = p.stats();
    assert_eq!(
      (s.outstanding_bytes, s.pooled_bytes, s.releases),
      (0.0, 1024.0, 1.0)
    );
    wait(&p);
    assert_eq!(p.free_bytes(), 1024);
    let b = p.take(1024).unwrap();
    assert_eq!(b.ptr, ptr, "the released block is reused");
    assert!(bytes(&b).iter().all(|&x| x == 0), "and it is zeroed");
    let s = p.stats();
    assert_eq!(
      (
        s.hits,
        s.misses,
        s.allocations,
        s.pooled_bytes,
        s.outstanding_bytes
      ),
      (1.0, 1.0, 2.0, 0.0, 1024.0)
    );
  }

  #[test]
  fn large_blocks_are_zeroed_too() {
    let p = pool(1 << 30, true);
    let size = 300 * 1024 + 5; // streaming stores, and an odd tail
    let a = p.take(size).unwrap();
    bytes(&a).fill(0xFF);
    p.released(&a);
    wait(&p);
    let b = p.take(size).unwrap();
    assert_eq!(b.ptr, a.ptr);
    assert!(bytes(&b).iter().all(|&x| x == 0));
  }

  #[test]
  fn released_then_collected_returns_once() {
    let p = pool(1 << 30, true);
    let a = p.take(100).unwrap();
    p.released(&a);
    a.collected(); // the finalizer after a detach: nothing to do
    p.released(&a); // and a second release changes nothing
    wait(&p);
    let s = p.stats();
    assert_eq!((s.releases, s.reclaimed, s.pooled_bytes), (1.0, 0.0, 128.0));
    // Never released: reclaimed once when collected.
    let b = p.take(100).unwrap();
    b.collected();
    b.collected();
    wait(&p);
    let s = p.stats();
    assert_eq!(
      (s.releases, s.reclaimed, s.pooled_bytes, s.outstanding_bytes),
      (1.0, 1.0, 128.0, 0.0)
    );
  }

  #[test]
  fn a_stale_finalizer_never_touches_the_next_owner() {
    let p = pool(1 << 30, false);
    let a = p.take(64).unwrap();
    p.released(&a);
    let b = p.take(64).unwrap();
    assert_eq!(a.ptr, b.ptr, "same memory, new record");
    a.collected(); // the old Buffer's finalizer runs late
    assert!(
      p.lookup(b.ptr, 64).is_some(),
      "the new allocation is still outstanding"
    );
    assert_eq!(p.stats().outstanding_bytes, 64.0);
  }

  #[test]
  fn bounded_by_max_pooled_and_trim() {
    let p = pool(3 * 1024, true);
    let recs: Vec<_> = (0..5).map(|_| p.take(1024).unwrap()).collect();
    for r in &recs {
      p.released(r);
    }
    assert_eq!(p.stats().pooled_bytes, 3072.0, "two of five were freed");
    wait(&p);
    assert_eq!(p.free_bytes(), 3072);
    p.trim();
    assert_eq!(p.stats().pooled_bytes, 0.0);
    assert_eq!(p.free_bytes(), 0);
    // Above chunkSize: whole chunks, pooled by size.
    let big = p.take((1 << 20) + 1).unwrap();
    assert_eq!(p.stats().outstanding_bytes, (2 << 20) as f64);
    p.released(&big);
    assert_eq!(
      p.stats().pooled_bytes,
      0.0,
      "2 MiB is beyond maxPooledBytes: freed"
    );
  }

  #[test]
  fn a_new_size_evicts_free_blocks_of_other_sizes() {
    let p = pool(4096, false);
    let small: Vec<_> = (0..4).map(|_| p.take(1024).unwrap()).collect();
    for r in &small {
      p.released(r);
    }
    assert_eq!(p.free_bytes(), 4096);
    let big = p.take(2048).unwrap();
    p.released(&big);
    let s = p.stats();
    assert_eq!(s.pooled_bytes, 4096.0, "still within the bound");
    assert_eq!(
      p.free_bytes(),
      4096,
      "two 1 KiB blocks made room for the 2 KiB one"
    );
    assert_eq!(p.take(2048).unwrap().ptr, big.ptr);
    // A block of the same size never evicts its own kind.
    let p = pool(2048, false);
    let a: Vec<_> = (0..3).map(|_| p.take(1024).unwrap()).collect();
    for r in &a {
      p.released(r);
    }
    assert_eq!(p.free_bytes(), 2048);
  }

  #[test]
  fn without_zeroing_memory_is_reused_as_is() {
    let p = pool(1 << 30, false);
    let a = p.take(64).unwrap();
    bytes(&a).fill(7);
    p.released(&a);
    let b = p.take(10).unwrap();
    assert_eq!(b.ptr, a.ptr);
    assert_eq!(bytes(&b)[0], 7);
  }

  #[test]
  fn closed_pools_free_what_comes_back() {
    let p = pool(1 << 30, true);
    let a = p.take(4096).unwrap();
    p.close();
    p.released(&a);
    wait(&p);
    let s = p.stats();
    assert_eq!((s.pooled_bytes, s.outstanding_bytes), (0.0, 0.0));
  }
}
