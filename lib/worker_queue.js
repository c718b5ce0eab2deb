'use strict'
// WorkerQueue: the JS-facing class over the native engine (src/worker_queue/).
//
// The queue itself (priority order, counts, concurrency, deadlines, back-offs,
// which worker holds which task) lives in Rust. This layer keeps what cannot
// leave the thread — task functions, promises, AbortSignal listeners — in an
// array indexed by a task id it chooses, and talks to the engine with one
// synchronous call to admit a task and one when it ends. The engine answers
// through a shared Float64Array of events (Start task i, task i failed, ...),
// so a call returns a number, never an allocated object. One JS timer per
// queue is armed for the earliest deadline the engine reports.
//
// Worker-thread mode: worker threads (lib/worker_entry.js) take tasks from
// the engine themselves; results wait in the engine and this thread is woken
// once per batch to settle them.
const os = require('node:os')
const path = require('node:path')
const fs = require('node:fs')
const { fileURLToPath } = require('node:url')
const { Worker } = require('node:worker_threads')
const { NativeWorkerQueue } = require('./native.js')
const { CODES, CODE_BY_INDEX, hpError, invalidArg, rangeError, misuse, checkOptions, checkNumber, optName, isSignal, fromNative, settled, detached, show, MAX_DURATION_MS } = require('./errors')
const { enc, encode, decode } = require('./wq_codec')

const HDR = 8
const STRIDE = 6
const EV_START = 1
const EV_RETRYING = 2
const EV_RESULT = 3
const EV_FAILED = 4
const EV_TERMINATE = 5
/** The most worker threads one queue may have. */
const MAX_THREADS = 1024
const ENTRY = path.join(__dirname, 'worker_entry.js')
// How long an idle worker blocks waiting for the next task before it returns
// to its event loop (then a task wakes it through a ThreadsafeFunction).
const SPIN_MS = 2

const closedError = () => hpError(CODES.CLOSED, 'WorkerQueue is closed')

function abortedError(signal) {
  return detached(hpError(CODES.ABORTED, 'task was aborted', signal.reason !== undefined ? { cause: signal.reason } : undefined))
}

function timeoutError(ms) {
  return detached(hpError(CODES.TIMEOUT, `task timed out after ${ms} ms`))
}

function statusError(st, q) {
  if (st === 1) return hpError(CODES.QUEUE_FULL, `queue is full (maxQueueSize ${q._maxQueue})`)
  if (st === 2) return closedError()
  return hpError(CODES.INTERNAL, `WorkerQueue: the engine refused a task with status ${st} (a bug in hotpath)`)
}

// ---------------------------------------------------------------- options

function countOption(o, name, { allowInfinity = false, min = 1, max = undefined } = {}) {
  return checkNumber(name, o[name], { min, max, integer: true, allowInfinity })
}

function msOption(o, name, { allowZero = false, allowInfinity = false } = {}) {
  return checkNumber(name, o[name], { min: 0, max: MAX_DURATION_MS, exclusiveMin: !allowZero, allowInfinity, unit: 'ms' })
}

function resolveFilename(f) {
  let p
  if (f instanceof URL) {
    if (f.protocol !== 'file:') throw invalidArg(`workers.filename must be a path or a file: URL, got ${f.href}`)
    p = fileURLToPath(f)
  } else if (typeof f === 'string' && f.length > 0) {
    p = f.startsWith('file:') ? fileURLToPath(f) : path.resolve(f)
  } else {
    throw invalidArg(`workers.filename must be a non-empty string or a file: URL, got ${show(f)}`)
  }
  if (!fs.existsSync(p)) throw invalidArg(`workers.filename: no such file ${JSON.stringify(p)}`)
  return p
}

// Task options, parsed into these (no allocation per call).
let oPrio = 0
let oTimeout = -1
let oRetries = -1
let oSignal
function taskOptions(o) {
  oPrio = 0
  oTimeout = -1
  oRetries = -1
  oSignal = undefined
  if (o === undefined) return
  checkOptions(o, 'options')
  const p = o.priority
  if (p !== undefined) {
    if (typeof p !== 'number') throw invalidArg(`priority must be a number, got ${show(p)}`)
    if (!Number.isFinite(p)) throw rangeError(`priority must be a finite number, got ${show(p)}`)
    oPrio = p
  }
  const t = msOption(o, 'timeoutMs', { allowInfinity: true })
  if (t !== undefined) oTimeout = t
  const r = countOption(o, 'retries', { min: 0 })
  if (r !== undefined) oRetries = r
  const s = o.signal
  if (s !== undefined) {
    if (!isSignal(s)) throw invalidArg(`signal must be an AbortSignal, got ${show(s)}`)
    oSignal = s
  }
}

// ---------------------------------------------------------------- tasks

/** What a function-mode task is called with. */
class TaskContext {
  constructor(rec, attempt) {
    this.attempt = attempt
    this._rec = rec
    this._ac = undefined
    this._unlink = undefined
  }

  /** Aborts when the task's own signal aborts, when this attempt times out, or
   *  when the task is abandoned: a function that watches it can stop. */
  get signal() {
    if (this._ac === undefined) {
      const ac = new AbortController()
      this._ac = ac
      const user = this._rec.signal
      if (user !== undefined) {
        if (user.aborted) ac.abort(user.reason)
        else {
          const f = () => ac.abort(user.reason)
          user.addEventListener('abort', f, { once: true })
          this._unlink = () => user.removeEventListener('abort', f)
        }
      }
    }
    return this._ac.signal
  }

  _end(reason) {
    if (this._unlink !== undefined) {
      this._unlink()
      this._unlink = undefined
    }
    if (reason !== undefined && this._ac !== undefined && !this._ac.signal.aborted) this._ac.abort(reason)
  }
}

class Task {
  constructor(fn, signal) {
    this.fn = fn
    this.signal = signal
    this.resolve = null
    this.reject = null
    this.run = 0
    this.ctx = null
    this.onAbort = null
  }
}

// ---------------------------------------------------------------- the queue

class WorkerQueue {
  constructor(options) {
    checkOptions(options, 'options')
    const o = options ?? {}
    let workers
    if (o.workers !== undefined) {
      checkOptions(o.workers, 'workers')
      if (o.workers === null) throw invalidArg('workers must be an object, got null')
      const threads = countOption(o.workers, 'threads', { max: MAX_THREADS })
      workers = {
        filename: resolveFilename(o.workers.filename),
        threads: threads ?? os.availableParallelism(),
      }
    }
    optName(o)
    const concurrency = countOption(o, 'concurrency', { allowInfinity: true })
    const maxQueueSize = countOption(o, 'maxQueueSize', { allowInfinity: true, min: 0 })
    const native = {
      concurrency: concurrency ?? (workers ? workers.threads : os.availableParallelism()),
      maxQueueSize,
      timeoutMs: msOption(o, 'timeoutMs', { allowInfinity: true }),
      retries: countOption(o, 'retries', { min: 0 }),
      retryBackoffMs: msOption(o, 'retryBackoffMs', { allowZero: true }),
      workers,
      name: o.name,
    }
    try {
      this._n = new NativeWorkerQueue(native, () => this._drain())
    } catch (e) {
      throw fromNative(e)
    }
    this._sc = new Float64Array(this._n.scratch())
    this._bytes = Buffer.from(this._n.bytes())
    this._maxQueue = maxQueueSize ?? Infinity
    /** Tasks time out by default (timeoutMs set, finite). */
    this._timeouts = native.timeoutMs !== undefined && native.timeoutMs !== Infinity
    this._concurrency = this._n.concurrency()
    this._thread = workers !== undefined
    this._filename = workers?.filename
    this._threads = workers?.threads ?? 0
    // Named or worker-thread: events can come from other threads, so the
    // event loop must stay up while tasks are outstanding.
    this._keepAlive = this._thread || o.name !== undefined
    this._recs = []
    this._free = []
    this._out = 0
    this._startQ = []
    this._starting = false
    this._deferred = []
    this._idleWaiters = []
    this._timer = null
    this._onTimer = () => {
      this._timer = null
      if (this._released) return
      this._n.tick()
      this._process(undefined)
    }
    this._closing = false
    this._closeP = null
    this._released = false
    // Worker-thread mode.
    this._workers = new Set()
    this._spawned = false
    this._stopping = false
    this._allExited = null
    this._broken = null
  }

  /** Tasks running at once. */
  get concurrency() {
    return this._concurrency
  }

  /** Waiting tasks of this queue object (queued, or backing off before a retry). */
  get size() {
    return this._released ? 0 : this._n.size()
  }

  /** Running tasks of this queue object. */
  get pending() {
    return this._released ? 0 : this._n.pending()
  }

  get isPaused() {
    return this._released ? false : this._n.isPaused()
  }

  add(fn, options) {
    if (this._closing) return Promise.reject(closedError())
    if (this._thread) return Promise.reject(misuse('add(fn) is for function mode; this queue runs payloads in worker threads: use run(payload)'))
    if (typeof fn !== 'function') return Promise.reject(invalidArg(`task must be a function, got ${show(fn)}`))
    try {
      taskOptions(options)
    } catch (e) {
      return Promise.reject(e)
    }
    const signal = oSignal
    if (signal !== undefined && signal.aborted) return Promise.reject(abortedError(signal))
    const rec = new Task(fn, signal)
    const p = this._promise(rec)
    const id = this._slot(rec)
    if (this._refused(id, rec, this._n.add(id, oPrio, oTimeout, oRetries))) return p
    // A task that can be rejected by a timeout or its signal: the rejection
    // is re-made on the caller's await chain (settled), so its stack says
    // where the task was added. Other tasks skip the extra promise.
    const relay = signal !== undefined || (oTimeout < 0 ? this._timeouts : oTimeout > 0 && oTimeout !== Infinity)
    this._process(undefined)
    return relay ? settled(p) : p
  }

  addAll(tasks, options) {
    if (!Array.isArray(tasks)) return Promise.reject(invalidArg(`tasks must be an array of functions, got ${show(tasks)}`))
    for (let i = 0; i < tasks.length; i++) {
      if (typeof tasks[i] !== 'function') return Promise.reject(invalidArg(`tasks[${i}] must be a function, got ${show(tasks[i])}`))
    }
    return Promise.all(tasks.map((t) => this.add(t, options)))
  }

  run(payload, options) {
    if (this._closing) return Promise.reject(closedError())
    if (!this._thread) return Promise.reject(misuse('run(payload) needs worker-thread mode: pass workers: { filename } to the constructor, or use add(fn)'))
    if (this._broken !== null) return Promise.reject(this._brokenError())
    try {
      taskOptions(options)
    } catch (e) {
      return Promise.reject(e)
    }
    const signal = oSignal
    if (signal !== undefined && signal.aborted) return Promise.reject(abortedError(signal))
    try {
      encode(payload)
    } catch (e) {
      return Promise.reject(invalidArg(`payload must be structured-cloneable: ${e && e.message}`))
    }
    const rec = new Task(null, signal)
    const p = this._promise(rec)
    const id = this._slot(rec)
    if (this._refused(id, rec, this._n.run(id, oPrio, oTimeout, oRetries, enc.kind, enc.num, enc.str, enc.buf))) return p
    if (!this._spawned) this._spawnAll()
    const sc = this._sc
    if (sc[0] !== 0 || sc[1] !== -1 || sc[2] !== 0) this._process(undefined)
    return settled(p)
  }

  _promise(rec) {
    return new Promise((resolve, reject) => {
      rec.resolve = resolve
      rec.reject = reject
    })
  }

  // A task id (slot in _recs) for `rec`.
  _slot(rec) {
    const id = this._free.length > 0 ? this._free.pop() : this._recs.length
    this._recs[id] = rec
    return id
  }

  // The engine's answer to an admission: non-zero refuses (queue full,
  // closed…) and frees the slot; zero admits the task.
  _refused(id, rec, st) {
    if (st !== 0) {
      this._recs[id] = undefined
      this._free.push(id)
      rec.reject(statusError(st, this))
      return true
    }
    this._admitted(id, rec)
    return false
  }

  _admitted(id, rec) {
    if (this._out++ === 0 && this._keepAlive) this._n.keepAlive(true)
    const signal = rec.signal
    if (signal !== undefined) {
      rec.onAbort = () => this._abort(id, rec)
      signal.addEventListener('abort', rec.onAbort, { once: true })
    }
  }

  _finish(id, rec) {
    this._recs[id] = undefined
    this._free.push(id)
    if (rec.onAbort !== null) rec.signal.removeEventListener('abort', rec.onAbort)
    if (--this._out === 0) {
      if (this._keepAlive && !this._released) this._n.keepAlive(false)
      const w = this._idleWaiters
      if (w.length > 0) {
        this._idleWaiters = []
        for (const r of w) r()
      }
    }
  }

  _abort(id, rec) {
    if (this._recs[id] !== rec) return
    this._n.abort(id)
    this._finish(id, rec)
    const err = abortedError(rec.signal)
    if (rec.ctx !== null) this._deferred.push(rec.ctx, err)
    rec.reject(err)
    this._process(undefined)
  }

  // Function mode: run task `id` (its Start event came).
  _start(id) {
    const rec = this._recs[id]
    if (rec === undefined) return
    const run = ++rec.run
    const ctx = new TaskContext(rec, run)
    rec.ctx = ctx
    let v
    try {
      v = rec.fn(ctx)
    } catch (e) {
      this._settle(id, rec, run, false, e)
      return
    }
    if (v !== null && (typeof v === 'object' || typeof v === 'function') && typeof v.then === 'function') {
      try {
        v.then(
          (x) => this._settle(id, rec, run, true, x),
          (e) => this._settle(id, rec, run, false, e),
        )
      } catch (e) {
        this._settle(id, rec, run, false, e)
      }
    } else {
      this._settle(id, rec, run, true, v)
    }
  }

  _settle(id, rec, run, ok, val) {
    if (this._recs[id] !== rec || rec.run !== run) return
    const d = this._n.done(id, ok)
    if (d === 0) {
      this._finish(id, rec)
      rec.ctx._end(undefined)
      if (ok) rec.resolve(val)
      else rec.reject(val)
    } else if (d === 1) {
      rec.ctx._end(undefined)
    }
    this._process(undefined)
  }

  _runStarts() {
    this._starting = true
    const q = this._startQ
    try {
      for (let i = 0; i < q.length; i++) this._start(q[i])
    } finally {
      q.length = 0
      this._starting = false
    }
  }

  // Read the events the last native call wrote; `big` is drain()'s Buffer.
  _process(big) {
    const sc = this._sc
    for (;;) {
      const n = sc[0]
      const arm = sc[1]
      const more = sc[2]
      if (arm !== -1) this._arm(arm)
      for (let i = 0, o = HDR; i < n; i++, o += STRIDE) {
        const t = sc[o]
        if (t === EV_START) this._startQ.push(sc[o + 1])
        else this._event(t, o, big)
      }
      if (more === 0) break
      big = this._n.drain() ?? undefined
    }
    if (this._deferred.length > 0) this._runDeferred()
    if (this._startQ.length > 0 && !this._starting) this._runStarts()
  }

  _drain() {
    if (this._released) return
    this._process(this._n.drain() ?? undefined)
  }

  _event(t, o, big) {
    const sc = this._sc
    switch (t) {
      case EV_RESULT: {
        const id = sc[o + 1]
        const rec = this._recs[id]
        if (rec === undefined) return
        const ok = sc[o + 2] === 1
        const kind = sc[o + 3]
        let v
        try {
          v = kind === 4 ? this._text(o, big) : decode(kind, sc[o + 4], kind >= 5 ? this._slice(o, big) : undefined)
        } catch (e) {
          this._finish(id, rec)
          rec.reject(detached(hpError(CODES.TASK_FAILED, `the task's result could not be decoded: ${e && e.message}`)))
          return
        }
        this._finish(id, rec)
        if (ok) rec.resolve(v)
        else rec.reject(v)
        return
      }
      case EV_FAILED: {
        const id = sc[o + 1]
        const rec = this._recs[id]
        if (rec === undefined) return
        const code = CODE_BY_INDEX[sc[o + 2]] ?? CODES.TASK_FAILED
        const err = code === CODES.TIMEOUT ? timeoutError(sc[o + 3]) : detached(hpError(code, this._text(o, big) || 'task failed'))
        this._finish(id, rec)
        if (rec.ctx !== null) this._deferred.push(rec.ctx, err)
        rec.reject(err)
        return
      }
      case EV_RETRYING: {
        const rec = this._recs[sc[o + 1]]
        if (rec === undefined) return
        // The abandoned attempt's result is ignored from now on.
        rec.run++
        if (rec.ctx !== null) this._deferred.push(rec.ctx, hpError(CODES.TIMEOUT, 'task attempt timed out (a retry is scheduled)'))
        return
      }
      case EV_TERMINATE:
        this._deferred.push(null, [sc[o + 1], sc[o + 2]])
        return
    }
  }

  _slice(o, big) {
    const off = this._sc[o + 4]
    const len = this._sc[o + 5]
    return off < 0 ? big : this._bytes.subarray(off, off + len)
  }

  _text(o, big) {
    const off = this._sc[o + 4]
    const len = this._sc[o + 5]
    if (len === 0) return ''
    return off < 0 ? big.toString('utf8') : this._bytes.toString('utf8', off, off + len)
  }

  // Work that may run user code (abort listeners) or make native calls, after
  // the events are read: pairs of (TaskContext, reason) or (null, [slot, gen]).
  _runDeferred() {
    const d = this._deferred
    this._deferred = []
    for (let i = 0; i < d.length; i += 2) {
      const a = d[i]
      const b = d[i + 1]
      if (a === null) this._terminate(b[0], b[1])
      else {
        try {
          a._end(b)
        } catch (e) {
          queueMicrotask(() => {
            throw e
          })
        }
      }
    }
  }

  _arm(arm) {
    if (this._timer !== null) {
      clearTimeout(this._timer)
      this._timer = null
    }
    if (arm >= 0 && !this._released) this._timer = setTimeout(this._onTimer, Math.ceil(arm))
  }

  pause() {
    if (this._closeP !== null) throw closedError()
    this._n.pause()
    this._process(undefined)
  }

  resume() {
    if (this._closeP !== null) throw closedError()
    this._n.resume()
    this._process(undefined)
  }

  onIdle() {
    if (this._released) return Promise.reject(closedError())
    if (this._out === 0) return Promise.resolve()
    return new Promise((resolve) => this._idleWaiters.push(resolve))
  }

  stats() {
    return this._n.stats()
  }

  close() {
    if (this._closeP !== null) return this._closeP
    this._closing = true
    this._n.closeBegin()
    this._process(undefined)
    const idle = this._out === 0 ? Promise.resolve() : new Promise((resolve) => this._idleWaiters.push(resolve))
    this._closeP = idle.then(() => this._shutdown())
    return this._closeP
  }

  async _shutdown() {
    if (this._workers.size > 0) {
      this._stopping = true
      const gone = new Promise((resolve) => {
        this._allExited = resolve
      })
      // Keep the event loop up until the threads are gone.
      for (const info of this._workers) info.w.ref()
      if (this._n.sharedWithOthers()) {
        // Our threads may be running tasks of other threads: they finish
        // those, then exit.
        this._n.retireWorkers()
        this._process(undefined)
      } else {
        for (const info of this._workers) {
          info.terminated = true
          info.w.terminate()
        }
      }
      await gone
    }
    if (this._timer !== null) {
      clearTimeout(this._timer)
      this._timer = null
    }
    this._n.keepAlive(false)
    this._n.closeEnd()
    this._released = true
  }

  // ------------------------------------------------------------ worker threads

  _spawnAll() {
    this._spawned = true
    for (let i = 0; i < this._threads; i++) this._spawn()
  }

  _spawn() {
    const sg = this._n.spawnSlot()
    const slot = Math.floor(sg / 4294967296)
    const gen = sg % 4294967296
    const perThread = this._concurrency === Infinity ? Infinity : Math.max(1, Math.ceil(this._concurrency / this._threads))
    const w = new Worker(ENTRY, {
      workerData: { queueId: this._n.queueId(), slot, gen, filename: this._filename, cap: perThread, spinMs: SPIN_MS },
    })
    w.unref()
    const info = { w, slot, gen, terminated: false, error: null }
    this._workers.add(info)
    w.on('error', (e) => {
      info.error = e
    })
    w.on('exit', (code) => this._onExit(info, code))
  }

  _terminate(slot, gen) {
    for (const info of this._workers) {
      if (info.slot === slot && info.gen === gen) {
        info.terminated = true
        info.w.terminate()
        if (!this._stopping) this._spawn()
        return
      }
    }
  }

  _onExit(info, code) {
    this._workers.delete(info)
    if (!this._released) {
      const why = info.error ? `worker thread crashed: ${info.error.message}` : `worker thread exited with code ${code}`
      const started = this._n.workerLost(info.slot, info.gen, `${why} while running the task`)
      this._process(undefined)
      if (!info.terminated && !this._stopping) {
        if (!started) {
          // It died loading the module: every thread would. Fail what waits.
          this._broken = { why, cause: info.error }
          this._n.failWaiting(`cannot start a worker thread for ${this._filename}: ${why}`)
          this._process(undefined)
        } else {
          this._spawn()
        }
      }
    }
    if (this._workers.size === 0 && this._allExited !== null) this._allExited()
  }

  _brokenError() {
    const b = this._broken
    const e = hpError(CODES.TASK_FAILED, `cannot start a worker thread for ${this._filename}: ${b.why}`)
    if (b.cause) e.cause = b.cause
    return e
  }
}

module.exports = { WorkerQueue }
