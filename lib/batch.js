'use strict'
// BatchProcessor: the JS-facing class over the native scheduler (src/batch.rs).
//
// Items and their promises are JS values and stay here. Per item, `add` does
// a push and creates a promise (the executor is one closure made once, not
// one per item). Per batch, the native scheduler is called when the batch is
// sealed and when it is over: it decides whether it may start (concurrency
// slots, FIFO of sealed batches), computes retry backoff with jitter, and
// keeps the counters. One JS timer at most is armed at a time for the open
// batch; a batch's results are delivered in one pass.

const { NativeBatch } = require('./native.js')
const { CODES, hpError, invalidArg, closedError, checkOptions, optNumber, optDuration, optBoolean, fromNative, show } = require('./errors')
const { now } = require('./clock')

class Batch {
  constructor(dedupe) {
    /** The distinct items, in add order: what the handler receives. */
    this.items = []
    /** resolve, reject of slot i at 2i, 2i + 1. */
    this.cb = []
    /** add calls (> items.length with dedupe). */
    this.adds = 0
    /** key -> the promise of its slot (dedupe only). */
    this.keys = dedupe ? new Map() : null
    /** When its first item came (the time window). */
    this.t0 = 0
    /** Scheduler id once sealed. */
    this.id = -1
    /** Handler attempts so far (retries). */
    this.attempt = 0
  }
}

function describe(out) {
  if (Array.isArray(out)) return `an array of ${out.length}`
  return show(out)
}

class BatchProcessor {
  constructor(handler, options) {
    if (typeof handler !== 'function') throw invalidArg(`handler must be a function, got ${show(handler)}`)
    checkOptions(options, 'options')
    let keyFn = null
    let native = options
    if (options !== undefined) {
      optNumber(options, 'maxBatchSize', { min: 1, integer: true, allowInfinity: true })
      optDuration(options, 'maxWaitMs')
      optNumber(options, 'concurrency', { min: 1, integer: true, allowInfinity: true })
      optNumber(options, 'retries', { min: 0, integer: true })
      optDuration(options, 'retryBackoffMs')
      const kf = options.keyFn
      const dd = optBoolean(options, 'dedupe')
      if (kf !== undefined && typeof kf !== 'function') throw invalidArg(`keyFn must be a function, got ${show(kf)}`)
      if (dd === true && kf === undefined) {
        throw invalidArg('dedupe: true needs keyFn (a function giving the key of an item), got keyFn undefined')
      }
      if (kf !== undefined && dd !== false) keyFn = kf
      native = { ...options, keyFn: undefined }
    }
    try {
      this._n = new NativeBatch(native)
    } catch (e) {
      throw fromNative(e)
    }
    const [max, wait, maxPending] = this._n.limits()
    this._handler = handler
    /** Items (slots) accepted and not yet settled, and their bound. */
    this._pending = 0
    this._maxPending = maxPending
    this._keyFn = keyFn
    this._max = max
    this._wait = wait
    /** The open batch (items still coming), or null. */
    this._cur = null
    /** Sealed batches waiting for a concurrency slot, by id. */
    this._queued = new Map()
    this._lastId = -1
    this._timer = null
    this._closed = false
    this._closing = null
    /** flush() waiters: { target: id, resolve }. */
    this._waiters = []
    // One executor for every promise: it files the resolvers in the open batch.
    this._exec = (resolve, reject) => {
      this._cur.cb.push(resolve, reject)
    }
    this._onTimer = () => {
      this._timer = null
      const b = this._cur
      if (b === null) return
      // One timer serves every batch: if the batch it was armed for has been
      // sealed by size since, wait the rest of the open batch's window.
      const rest = b.t0 + this._wait - now()
      if (rest > 1) this._arm(rest)
      else this._seal()
    }
  }

  add(item) {
    if (this._closed) return Promise.reject(closedError('BatchProcessor'))
    if (this._keyFn !== null) return this._addKeyed(item)
    if (this._pending >= this._maxPending) return Promise.reject(this._full())
    this._pending++
    let b = this._cur
    if (b === null) b = this._open()
    b.items.push(item)
    const p = new Promise(this._exec)
    if (b.items.length >= this._max) this._seal()
    return p
  }

  _addKeyed(item) {
    let key
    try {
      key = this._keyFn(item)
    } catch (err) {
      return Promise.reject(err)
    }
    let b = this._cur
    if (b === null) b = this._open()
    b.adds++
    const shared = b.keys.get(key)
    if (shared !== undefined) return shared
    if (this._pending >= this._maxPending) {
      b.adds--
      if (b.items.length === 0 && b.adds === 0) this._discardEmpty(b)
      return Promise.reject(this._full())
    }
    this._pending++
    b.items.push(item)
    const p = new Promise(this._exec)
    b.keys.set(key, p)
    if (b.items.length >= this._max) this._seal()
    return p
  }

  addMany(items) {
    if (!Array.isArray(items)) return Promise.reject(invalidArg(`items must be an array, got ${show(items)}`))
    const ps = new Array(items.length)
    for (let i = 0; i < items.length; i++) ps[i] = this.add(items[i])
    return Promise.all(ps)
  }

  flush() {
    if (this._closed) return Promise.reject(closedError('BatchProcessor'))
    return this._flush()
  }

  _full() {
    return hpError(
      CODES.QUEUE_FULL,
      `BatchProcessor has ${this._pending} items pending, the maxPending limit: add() is refused until some settle`,
    )
  }

  /** An open batch that got no item (its only add was refused). */
  _discardEmpty(b) {
    if (this._cur === b) this._cur = null
    this._disarm()
  }

  _disarm() {
    if (this._timer !== null) {
      if (this._wait === 0) clearImmediate(this._timer)
      else clearTimeout(this._timer)
      this._timer = null
    }
  }

  stats() {
    const b = this._cur
    return this._n.stats(b === null ? 0 : this._keyFn !== null ? b.adds : b.items.length)
  }

  close() {
    if (this._closing === null) {
      this._closed = true
      this._closing = this._flush()
    }
    return this._closing
  }

  // ------------------------------------------------------------ internals

  _open() {
    const b = new Batch(this._keyFn !== null)
    this._cur = b
    if (this._max !== 1) {
      b.t0 = now()
      if (this._timer === null) this._arm(this._wait)
    }
    return b
  }

  _arm(ms) {
    this._timer = ms === 0 ? setImmediate(this._onTimer) : setTimeout(this._onTimer, ms)
  }

  /** Close the open batch and hand it to the scheduler. */
  _seal() {
    const b = this._cur
    this._cur = null
    if (b === null || b.items.length === 0) return
    if (b.keys === null) b.adds = b.items.length
    let r
    try {
      r = this._n.submit(b.items.length, b.adds)
    } catch (err) {
      // The scheduler failed (ERR_INTERNAL): the batch's items reject with it.
      this._rejectAll(b, err)
      return
    }
    if (r >= 0) {
      b.id = r
      this._lastId = r
      // Not inside add(): the handler runs after the caller's synchronous code.
      queueMicrotask(() => this._run(b))
    } else {
      b.id = -1 - r
      this._lastId = b.id
      this._queued.set(b.id, b)
    }
  }

  /** Run batches: the one given, then each queued batch whose turn comes
   *  when a batch finishes synchronously (a loop, not recursion). */
  _run(b) {
    while (b !== null) b = this._invoke(b)
  }

  _invoke(b) {
    try {
      const out = this._handler(b.items)
      if (out !== null && typeof out === 'object' && typeof out.then === 'function') {
        Promise.resolve(out).then(
          (res) => this._run(this._settle(b, res)),
          (err) => this._run(this._failed(b, err)),
        )
        return null
      }
      return this._settle(b, out)
    } catch (err) {
      return this._failed(b, err)
    }
  }

  /** Deliver a batch's results in one pass. Returns the next batch to run. */
  _settle(b, out) {
    const n = b.items.length
    const cb = b.cb
    let bad = null
    try {
      if (!Array.isArray(out) || out.length !== n) {
        bad = hpError(
          CODES.BATCH_RESULT,
          `the batch handler must return an array of ${n} results (one per item, in order), got ${describe(out)}`,
        )
      }
    } catch (err) {
      // Reading the result's shape threw (a `length` getter, a revoked
      // Proxy): the whole batch rejects, nothing escapes as unhandled.
      bad = hpError(
        CODES.BATCH_RESULT,
        `the batch handler's result could not be read (${err && err.message ? err.message : String(err)})`,
        Error,
        { cause: err },
      )
    }
    if (bad !== null) {
      this._pending -= n
      for (let i = 0; i < n; i++) cb[2 * i + 1](bad)
      return this._finish(b, true)
    }
    this._pending -= n
    let i = 0
    try {
      for (; i < n; i++) {
        const r = out[i]
        if (r instanceof Error) cb[2 * i + 1](r)
        else cb[2 * i](r)
      }
    } catch (err) {
      // Reading a result threw (a getter, a Proxy): that item and the rest
      // reject with the error. Each settles exactly once.
      for (; i < n; i++) cb[2 * i + 1](err)
    }
    return this._finish(b, false)
  }

  _failed(b, err) {
    let delay = -1
    try {
      delay = this._n.retry(b.attempt)
    } catch (e) {
      err = e
    }
    if (delay >= 0) {
      b.attempt++
      setTimeout(() => this._run(b), delay)
      return null
    }
    this._pending -= b.items.length
    const cb = b.cb
    for (let i = 0; i < b.items.length; i++) cb[2 * i + 1](err)
    return this._finish(b, true)
  }

  _rejectAll(b, err) {
    this._pending -= b.items.length
    for (let i = 0; i < b.items.length; i++) b.cb[2 * i + 1](err)
  }

  _finish(b, failed) {
    let next
    try {
      next = this._n.finish(b.id, failed)
    } catch (err) {
      // The scheduler failed (ERR_INTERNAL): batches waiting for a slot will
      // never get one; they reject, and flush() waiters are released.
      for (const qb of this._queued.values()) this._rejectAll(qb, err)
      this._queued.clear()
      for (const w of this._waiters) w.resolve()
      this._waiters = []
      return null
    }
    if (this._waiters.length > 0) this._wake()
    if (next < 0) return null
    const nb = this._queued.get(next)
    this._queued.delete(next)
    return nb ?? null
  }

  _flush() {
    if (this._cur !== null) this._seal()
    // Nothing is open now: the window timer has nothing to do, and must not
    // keep the process alive for maxWaitMs.
    this._disarm()
    let oldest
    try {
      oldest = this._n.oldest()
    } catch {
      return Promise.resolve()
    }
    if (oldest < 0 || oldest > this._lastId) return Promise.resolve()
    return new Promise((resolve) => this._waiters.push({ target: this._lastId, resolve }))
  }

  _wake() {
    let oldest = -1
    try {
      oldest = this._n.oldest()
    } catch {}
    const keep = []
    for (const w of this._waiters) {
      if (oldest < 0 || oldest > w.target) w.resolve()
      else keep.push(w)
    }
    this._waiters = keep
  }
}

module.exports = { BatchProcessor }
