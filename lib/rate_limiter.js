'use strict'
// RateLimiter: the JS-facing class over the native engine (src/rate_limiter/).
//
// In process, a check is one call of a raw Node-API function that writes its
// numbers into a per-handle Float64Array; the result object is built here (a
// JS literal costs far less than a native object). `check()` answers such
// checks with Promise.resolve and never goes through the tokio runtime.
// With Redis, checks go to the engine with a request id and their decisions
// come back in batches through one callback (no Promise or threadsafe
// function per check on the native side).

const { NativeRateLimiter, rateLimiterCheckSync } = require('./native.js')
const { CODES, hpError, invalidArg, rangeError, closedError, checkKey, checkOptions, optNumber, fromNative, show } = require('./errors')

const ALGORITHMS = ['sliding-window', 'sliding-window-counter', 'fixed-window', 'token-bucket', 'gcra']
const ON_REDIS_ERROR = ['allow', 'deny', 'local']

function requiredPositive(o, name) {
  const v = o[name]
  if (typeof v !== 'number' || !Number.isFinite(v)) throw invalidArg(`${name} must be a finite number > 0, got ${show(v)}`)
  if (v <= 0) throw rangeError(`${name} must be > 0, got ${v}`)
  return v
}

function oneOf(o, name, allowed) {
  const v = o[name]
  if (v !== undefined && !allowed.includes(v)) {
    throw invalidArg(`${name} must be ${allowed.map((a) => `'${a}'`).join(', ')}, got ${show(v)}`)
  }
}

function checkCost(cost) {
  if (typeof cost !== 'number' || !Number.isFinite(cost)) throw invalidArg(`cost must be a finite number >= 0, got ${show(cost)}`)
  if (cost < 0) throw rangeError(`cost must be >= 0, got ${cost}`)
}

function abortedError(signal) {
  const e = hpError(CODES.ABORTED, 'acquire was aborted')
  if (signal.reason !== undefined) e.cause = signal.reason
  return e
}

const noop = () => {}

// This thread's raw check function: (handle, key, cost, consume) => allowed.
const nativeCheckSync = rateLimiterCheckSync()

class RateLimiter {
  constructor(options) {
    if (options === undefined) throw invalidArg('options must be an object with limit and windowMs, got undefined')
    checkOptions(options, 'options')
    this._limit = requiredPositive(options, 'limit')
    requiredPositive(options, 'windowMs')
    oneOf(options, 'algorithm', ALGORITHMS)
    oneOf(options, 'onRedisError', ON_REDIS_ERROR)
    optNumber(options, 'maxKeys', { min: 1, integer: true })
    if (options.name !== undefined) checkKey(options.name, 'name')
    if (options.redis !== undefined) checkOptions(options.redis, 'redis')
    // Redis decisions arrive here in batches. The callback holds only what
    // it needs (not `this`), so an unclosed limiter can still be collected.
    const pending = new Map()
    const limit = this._limit
    const onResults = (a) => {
      for (let i = 0; i < a.length; i += 5) {
        const resolve = pending.get(a[i])
        pending.delete(a[i])
        resolve({ allowed: a[i + 1] === 1, limit, remaining: a[i + 2], retryAfterMs: a[i + 3], resetMs: a[i + 4] })
      }
    }
    try {
      this._n = new NativeRateLimiter(options, onResults)
    } catch (e) {
      throw fromNative(e)
    }
    this._h = this._n.handle
    this._sc = new Float64Array(this._n.scratch())
    this._redis = this._n.hasRedis()
    this._pending = pending
    this._nextId = 1
    this._closed = false
  }

  _ask(key, cost, consume) {
    const id = this._nextId++
    this._n.checkAsync(id, key, cost, consume)
    return new Promise((resolve) => this._pending.set(id, resolve))
  }

  _result(allowed) {
    const s = this._sc
    return { allowed, limit: this._limit, remaining: s[0], retryAfterMs: s[1], resetMs: s[2] }
  }

  _args(key, cost) {
    if (typeof key !== 'string' || key.length === 0) checkKey(key)
    if (cost !== 1) checkCost(cost)
    if (this._closed) throw closedError('RateLimiter')
  }

  /** In process: check and consume `cost` (default 1), synchronously. */
  checkSync(key, cost = 1) {
    this._args(key, cost)
    if (this._redis) throw invalidArg('checkSync is in-process only: a RateLimiter with `redis` checks with check()')
    return this._result(nativeCheckSync(this._h, key, cost, true))
  }

  check(key, cost = 1) {
    try {
      this._args(key, cost)
      if (!this._redis) return Promise.resolve(this._result(nativeCheckSync(this._h, key, cost, true)))
      return this._ask(key, cost, true)
    } catch (err) {
      return Promise.reject(err)
    }
  }

  /** Would one unit pass now? Consumes nothing. */
  peek(key) {
    try {
      this._args(key, 1)
      if (!this._redis) return Promise.resolve(this._result(nativeCheckSync(this._h, key, 1, false)))
      return this._ask(key, 1, false)
    } catch (err) {
      return Promise.reject(err)
    }
  }

  retryAfterMs(key) {
    return this.peek(key).then((r) => r.retryAfterMs)
  }

  reset(key) {
    try {
      this._args(key, 1)
      if (!this._redis) {
        this._n.resetSync(key)
        return Promise.resolve()
      }
      return this._n.reset(key)
    } catch (err) {
      return Promise.reject(err)
    }
  }

  /**
   * Wait until `cost` units are admitted, after every earlier waiter of the
   * same key (FIFO). Rejects ERR_TIMEOUT past `timeoutMs`, ERR_ABORTED when
   * `signal` aborts, ERR_INVALID_ARG when `cost` exceeds the limit.
   */
  acquire(key, options) {
    try {
      let cost = 1
      let timeoutMs
      let signal
      if (options !== undefined) {
        checkOptions(options, 'options')
        if (options.cost !== undefined) {
          checkCost(options.cost)
          cost = options.cost
        }
        timeoutMs = optNumber(options, 'timeoutMs', { min: 0 })
        signal = options.signal
        if (signal !== undefined && (signal === null || typeof signal !== 'object' || typeof signal.aborted !== 'boolean' || typeof signal.addEventListener !== 'function')) {
          throw invalidArg(`signal must be an AbortSignal, got ${show(signal)}`)
        }
      }
      this._args(key, cost)
      if (cost > this._limit) throw rangeError(`cost ${cost} exceeds limit ${this._limit}: it can never be admitted`)
      if (signal?.aborted) return Promise.reject(abortedError(signal))
      const p = this._n.acquire(key, cost, timeoutMs)
      if (p === null || p === undefined) return Promise.resolve()
      if (signal === undefined) return p
      const id = this._sc[3]
      const onAbort = () => this._n.cancel(id)
      signal.addEventListener('abort', onAbort, { once: true })
      return p.then(
        () => {
          signal.removeEventListener('abort', onAbort)
        },
        (err) => {
          signal.removeEventListener('abort', onAbort)
          if (err?.code === CODES.ABORTED && signal.reason !== undefined) err.cause = signal.reason
          throw err
        },
      )
    } catch (err) {
      return Promise.reject(err)
    }
  }

  /**
   * IETF RateLimit headers for a result: `RateLimit-Limit`,
   * `RateLimit-Remaining`, `RateLimit-Reset` (seconds, rounded up) and,
   * when denied, `Retry-After` (whole seconds, rounded up, at least 1; left
   * out when the cost can never be admitted).
   */
  static headers(result) {
    if (result === null || typeof result !== 'object') throw invalidArg(`result must be a RateLimitResult, got ${show(result)}`)
    const { allowed, limit, remaining, retryAfterMs, resetMs } = result
    for (const [name, v] of [
      ['limit', limit],
      ['remaining', remaining],
      ['resetMs', resetMs],
    ]) {
      if (typeof v !== 'number' || !(v >= 0)) throw invalidArg(`result.${name} must be a number >= 0, got ${show(v)}`)
    }
    if (typeof allowed !== 'boolean') throw invalidArg(`result.allowed must be a boolean, got ${show(allowed)}`)
    const h = {
      'RateLimit-Limit': String(limit),
      'RateLimit-Remaining': String(Math.floor(remaining)),
      'RateLimit-Reset': String(Math.ceil(resetMs / 1000)),
    }
    if (!allowed) {
      if (typeof retryAfterMs !== 'number' || !(retryAfterMs >= 0)) throw invalidArg(`result.retryAfterMs must be a number >= 0, got ${show(retryAfterMs)}`)
      if (Number.isFinite(retryAfterMs)) h['Retry-After'] = String(Math.max(1, Math.ceil(retryAfterMs / 1000)))
    }
    return h
  }

  stats() {
    return this._n.stats()
  }

  close() {
    this._closed = true
    return this._n.close().then(noop)
  }
}

module.exports = { RateLimiter }
