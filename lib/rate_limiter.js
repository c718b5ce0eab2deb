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
const { limiterWrap } = require('./wrap')
const { CODES, hpError, invalidArg, rangeError, misuse, closedError, checkKey, checkOptions, checkNumber, optNumber, optDuration, optTtl, optName, oneOf, optSignal, checkRedisOptions, fromNative, settled, show, MAX_COUNT } = require('./errors')

const ALGORITHMS = ['sliding-window', 'sliding-window-counter', 'fixed-window', 'token-bucket', 'gcra']
const ON_REDIS_ERROR = ['allow', 'deny', 'local']

function required(o, name) {
  if (o[name] === undefined) throw invalidArg(`${name} is required (a number > 0), got undefined`)
}

function checkCost(cost) {
  checkNumber('cost', cost, { min: 0 })
}

// A native call that may throw (closed, a bug): its error as a hotpath error.
function rethrow(err) {
  throw fromNative(err)
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
    required(options, 'limit')
    required(options, 'windowMs')
    this._limit = optNumber(options, 'limit', { min: 0, max: MAX_COUNT, exclusiveMin: true })
    optTtl(options, 'windowMs', { exclusiveMin: true })
    oneOf(options, 'algorithm', ALGORITHMS)
    oneOf(options, 'onRedisError', ON_REDIS_ERROR)
    optNumber(options, 'maxKeys', { min: 1, integer: true })
    optName(options)
    checkRedisOptions(options.redis)
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
    if (typeof key !== 'string' || key.length === 0 || !key.isWellFormed()) checkKey(key)
    if (cost !== 1) checkCost(cost)
    if (this._closed) throw closedError('RateLimiter')
  }

  /** In process: check and consume `cost` (default 1), synchronously. */
  checkSync(key, cost = 1) {
    this._args(key, cost)
    if (this._redis) throw misuse('checkSync is in-process only: a RateLimiter with `redis` checks with check()')
    let allowed
    try {
      allowed = nativeCheckSync(this._h, key, cost, true)
    } catch (err) {
      rethrow(err)
    }
    return this._result(allowed)
  }

  check(key, cost = 1) {
    try {
      this._args(key, cost)
      if (!this._redis) return Promise.resolve(this._result(nativeCheckSync(this._h, key, cost, true)))
      return this._ask(key, cost, true)
    } catch (err) {
      return Promise.reject(fromNative(err))
    }
  }

  /** Would one unit pass now? Consumes nothing. */
  peek(key) {
    try {
      this._args(key, 1)
      if (!this._redis) return Promise.resolve(this._result(nativeCheckSync(this._h, key, 1, false)))
      return this._ask(key, 1, false)
    } catch (err) {
      return Promise.reject(fromNative(err))
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
      return settled(this._n.reset(key))
    } catch (err) {
      return Promise.reject(fromNative(err))
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
        timeoutMs = optDuration(options, 'timeoutMs', { allowInfinity: true })
        if (timeoutMs === Infinity) timeoutMs = undefined
        signal = optSignal(options)
      }
      this._args(key, cost)
      if (cost > this._limit) throw rangeError(`cost ${cost} exceeds limit ${this._limit}: it can never be admitted`)
      if (signal?.aborted) return Promise.reject(abortedError(signal))
      const np = this._n.acquire(key, cost, timeoutMs)
      if (np === null || np === undefined) return Promise.resolve()
      const p = settled(np)
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
      return Promise.reject(fromNative(err))
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
      if (typeof v !== 'number') throw invalidArg(`result.${name} must be a number, got ${show(v)}`)
      if (!(v >= 0)) throw rangeError(`result.${name} must be a number >= 0, got ${show(v)}`)
    }
    if (typeof allowed !== 'boolean') throw invalidArg(`result.allowed must be a boolean, got ${show(allowed)}`)
    const h = {
      'RateLimit-Limit': String(limit),
      'RateLimit-Remaining': String(Math.floor(remaining)),
      'RateLimit-Reset': String(Math.ceil(resetMs / 1000)),
    }
    if (!allowed) {
      if (typeof retryAfterMs !== 'number') throw invalidArg(`result.retryAfterMs must be a number, got ${show(retryAfterMs)}`)
      if (!(retryAfterMs >= 0)) throw rangeError(`result.retryAfterMs must be a number >= 0, got ${show(retryAfterMs)}`)
      if (Number.isFinite(retryAfterMs)) h['Retry-After'] = String(Math.max(1, Math.ceil(retryAfterMs / 1000)))
    }
    return h
  }

  stats() {
    try {
      return this._n.stats()
    } catch (err) {
      rethrow(err)
    }
  }

  close() {
    this._closed = true
    return settled(this._n.close()).then(noop)
  }

  /** A function that checks the limit, then calls `fn` (lib/wrap.js). */
  wrap(fn, options) {
    return limiterWrap(this, fn, options)
  }
}

module.exports = { RateLimiter }
