'use strict'
// Functions instead of keys: cache.wrap (memoize through getOrSet), the
// default key (a canonical, process-independent serialization of the
// arguments), cache.warm (fill the cache from loaders at start-up) and
// limiter.wrap (check the limit, then call). The decorators in
// lib/decorators.js are built on the same pieces.

const { createHash } = require('node:crypto')
const { CODES, hpError, invalidArg, rangeError, checkKey, checkOptions, optNumber, show } = require('./errors')

// ------------------------------------------------------------- default key
//
// key = prefix + ':' + the arguments, each serialized as one token and joined
// with ',':
//   string     JSON text ("a\"b"; lone surrogates are escaped, so every string is exact)
//   number     ECMAScript Number::toString (1, 1.5, 1e+21, NaN, Infinity, -Infinity); -0 is `-0`
//   bigint     digits + `n` (12n)
//   boolean    true / false,   null  null,   undefined  undefined
//   array      [tokens] (a hole is an empty token: [1,,2])
//   object     {"key":token,...} with keys sorted by UTF-16 code units (plain or null-prototype objects)
//   Date       D + getTime()  (DNaN for an invalid date)
//   Buffer     B + base64
// Each token is self-delimiting and no string token can be read as another
// type, so two argument lists that differ (by Object.is on primitives, by
// type, by array length or presence of a property) never give one key.
// When the serialized arguments are longer than HASH_ABOVE characters they
// are replaced by `#` + base64url(sha256(serialization)).
// Anything else (functions, symbols, class instances, Map, Set, typed arrays
// other than Buffer, cycles, arrays with extra properties, objects with
// symbol keys) cannot be serialized exactly: ERR_INVALID_ARG.

const HASH_ABOVE = 200

// A string as JSON text. Most keys need no escaping: then it is just quoted
// (JSON.stringify costs more, and is exact for the rest: lone surrogates too).
const NEEDS_ESCAPE = /["\\\u0000-\u001f\ud800-\udfff]/
function quote(s) {
  return NEEDS_ESCAPE.test(s) ? JSON.stringify(s) : '"' + s + '"'
}

// Thrown while serializing; `path` is filled in on the way out (no path
// strings are built unless something fails).
class Unserializable extends Error {
  constructor(what) {
    super(what)
    this.what = what
    this.path = ''
  }
}

function token(v, stack) {
  switch (typeof v) {
    case 'string':
      return quote(v)
    case 'number':
      if (v === 0) return 1 / v < 0 ? '-0' : '0'
      return String(v)
    case 'boolean':
      return v ? 'true' : 'false'
    case 'undefined':
      return 'undefined'
    case 'bigint':
      return `${v}n`
    case 'object':
      if (v === null) return 'null'
      return objectToken(v, stack)
    default:
      throw new Unserializable(show(v))
  }
}

// Keys in UTF-16 code unit order (what Array.prototype.sort does), by
// insertion sort for the few keys arguments usually have.
function sortKeys(keys) {
  const n = keys.length
  if (n > 16) return keys.sort()
  for (let i = 1; i < n; i++) {
    const k = keys[i]
    let j = i - 1
    while (j >= 0 && keys[j] > k) {
      keys[j + 1] = keys[j]
      j--
    }
    keys[j + 1] = k
  }
  return keys
}

function objectToken(v, stack) {
  const proto = Object.getPrototypeOf(v)
  if (Array.isArray(v)) {
    if (proto !== Array.prototype) throw new Unserializable(`an instance of ${v.constructor?.name || 'an Array subclass'}`)
    if (stack.includes(v)) throw new Unserializable('a cyclic reference')
    const n = v.length
    let holes = false
    const own = Object.keys(v)
    if (own.length !== n) {
      // Holes (fewer own keys) are fine; extra named properties are not.
      for (const k of own) {
        if (String(k >>> 0) !== k || k >>> 0 >= n) throw new Unserializable(`an array with the extra property ${JSON.stringify(k)}`)
      }
      holes = true
    }
    if (Object.getOwnPropertySymbols(v).length > 0) throw new Unserializable('an array with symbol properties')
    stack.push(v)
    let s = '['
    let i = 0
    try {
      for (; i < n; i++) {
        if (i > 0) s += ','
        if (holes && !(i in v)) continue
        s += token(v[i], stack)
      }
    } catch (e) {
      if (e instanceof Unserializable) e.path = `[${i}]` + e.path
      throw e
    }
    stack.pop()
    return s + ']'
  }
  if (proto === Object.prototype || proto === null) {
    if (stack.includes(v)) throw new Unserializable('a cyclic reference')
    const syms = Object.getOwnPropertySymbols(v)
    for (let i = 0; i < syms.length; i++) {
      if (Object.prototype.propertyIsEnumerable.call(v, syms[i])) throw new Unserializable('an object with symbol keys')
    }
    const keys = sortKeys(Object.keys(v))
    stack.push(v)
    let s = '{'
    let i = 0
    try {
      for (; i < keys.length; i++) {
        const k = keys[i]
        if (i > 0) s += ','
        s += quote(k) + ':' + token(v[k], stack)
      }
    } catch (e) {
      if (e instanceof Unserializable) e.path = `.${keys[i]}` + e.path
      throw e
    }
    stack.pop()
    return s + '}'
  }
  if (proto === Date.prototype) return `D${v.getTime()}`
  if (proto === Buffer.prototype) return `B${v.toString('base64')}`
  throw new Unserializable(`an instance of ${v.constructor?.name || 'a class'}`)
}

/** The canonical serialization of an argument list (before hashing). */
function serializeArgs(args) {
  const n = args.length
  if (n === 1) {
    const a = args[0]
    if (typeof a === 'string') return quote(a)
    if (typeof a === 'number' && a !== 0) return String(a)
  }
  const stack = []
  let s = ''
  let i = 0
  try {
    for (; i < n; i++) {
      if (i > 0) s += ','
      s += token(args[i], stack)
    }
  } catch (e) {
    if (!(e instanceof Unserializable)) throw e
    throw invalidArg(
      `cannot build a cache key from argument ${i}${e.path}: ${e.what} has no exact serialization; give wrap a \`key\` function (options.key)`,
    )
  }
  return s
}

/** The default cache key of a call: `prefix:` + the serialized arguments, hashed when long. */
function defaultKey(prefix, args) {
  const s = serializeArgs(args)
  if (s.length <= HASH_ABOVE) return prefix + ':' + s
  return prefix + ':#' + createHash('sha256').update(s).digest('base64url')
}

// ---------------------------------------------------------------- options

const SINGLE_FLIGHT = ['process', 'redis']

function fnOr(o, name, check) {
  const v = o[name]
  if (v === undefined || typeof v === 'function') return v
  check(v)
  return v
}

function checkTtl(v) {
  if (typeof v !== 'number' || Number.isNaN(v)) throw invalidArg(`ttlMs must be a number > 0 or a function of the arguments, got ${show(v)}`)
  if (!(v > 0)) throw rangeError(`ttlMs must be > 0, got ${v}`)
}

function checkTags(v) {
  if (!Array.isArray(v)) throw invalidArg(`tags must be an array of strings or a function of the arguments, got ${show(v)}`)
  for (const t of v) checkKey(t, 'tag')
}

/**
 * Checks WrapOptions once, at wrap time. The result is what every call
 * needs: how to make the key, and the getOrSet options (one shared object
 * when nothing depends on the arguments).
 */
function compileCacheOptions(options, what) {
  checkOptions(options, `${what} options`)
  const o = options ?? {}
  const key = o.key
  if (key !== undefined && typeof key !== 'function') throw invalidArg(`key must be a function of the arguments, got ${show(key)}`)
  const prefix = o.prefix
  if (prefix !== undefined) checkKey(prefix, 'prefix')
  const ttlMs = fnOr(o, 'ttlMs', checkTtl)
  const tags = fnOr(o, 'tags', checkTags)
  const timeoutMs = optNumber(o, 'timeoutMs', { min: 0, exclusiveMin: true })
  const singleFlight = o.singleFlight
  if (singleFlight !== undefined && !SINGLE_FLIGHT.includes(singleFlight)) {
    throw invalidArg(`singleFlight must be 'process' or 'redis', got ${show(singleFlight)}`)
  }
  const dynamic = typeof ttlMs === 'function' || typeof tags === 'function'
  let fixed
  if (!dynamic && (ttlMs !== undefined || tags !== undefined || timeoutMs !== undefined || singleFlight !== undefined)) {
    fixed = {}
    if (ttlMs !== undefined) fixed.ttlMs = ttlMs
    if (tags !== undefined) fixed.tags = tags
    if (timeoutMs !== undefined) fixed.timeoutMs = timeoutMs
    if (singleFlight !== undefined) fixed.singleFlight = singleFlight
  }
  return { key, prefix, ttlMs, tags, timeoutMs, singleFlight, dynamic, fixed }
}

function callOptions(spec, thisArg, args) {
  const o = {}
  const { ttlMs, tags } = spec
  if (ttlMs !== undefined) o.ttlMs = typeof ttlMs === 'function' ? ttlMs.apply(thisArg, args) : ttlMs
  if (tags !== undefined) o.tags = typeof tags === 'function' ? tags.apply(thisArg, args) : tags
  if (spec.timeoutMs !== undefined) o.timeoutMs = spec.timeoutMs
  if (spec.singleFlight !== undefined) o.singleFlight = spec.singleFlight
  return o
}

/** The key of one call: options.key (prefixed when `prefix` is given too), else the default key. */
function callKey(spec, prefix, thisArg, args) {
  if (spec.key === undefined) return defaultKey(prefix, args)
  const k = spec.key.apply(thisArg, args)
  checkKey(k, 'the key returned by options.key')
  return spec.prefix === undefined ? k : spec.prefix + ':' + k
}

/** One call of a memoized function. Never throws: every failure is a rejection. */
function callCached(cache, spec, prefix, fn, thisArg, args) {
  try {
    const key = spec.key === undefined ? defaultKey(prefix, args) : callKey(spec, prefix, thisArg, args)
    const opts = spec.dynamic ? callOptions(spec, thisArg, args) : spec.fixed
    return cache.getOrSet(key, () => fn.apply(thisArg, args), opts)
  } catch (err) {
    return Promise.reject(err)
  }
}

function checkFn(fn, what) {
  if (typeof fn !== 'function') throw invalidArg(`${what}: fn must be a function, got ${show(fn)}`)
}

function cacheWrap(cache, fn, options) {
  checkFn(fn, 'cache.wrap')
  const spec = compileCacheOptions(options, 'cache.wrap')
  const prefix = spec.prefix ?? fn.name
  if (spec.key === undefined && !prefix) {
    throw invalidArg('cache.wrap: an anonymous function needs options.prefix or options.key (its name is the default key prefix)')
  }
  return function wrapped(...args) {
    return callCached(cache, spec, prefix, fn, this, args)
  }
}

// -------------------------------------------------------------------- warm

function abortedError(signal, what) {
  const e = hpError(CODES.ABORTED, `${what} was aborted`)
  if (signal.reason !== undefined) e.cause = signal.reason
  return e
}

function checkSignal(signal) {
  if (signal !== undefined && (signal === null || typeof signal !== 'object' || typeof signal.aborted !== 'boolean' || typeof signal.addEventListener !== 'function')) {
    throw invalidArg(`signal must be an AbortSignal, got ${show(signal)}`)
  }
  return signal
}

function loaderEntries(loaders) {
  if (loaders === null || typeof loaders !== 'object') {
    throw invalidArg(`loaders must be an iterable of [key, loader] pairs or an object of loaders, got ${show(loaders)}`)
  }
  const entries = typeof loaders[Symbol.iterator] === 'function' ? Array.from(loaders) : Object.entries(loaders)
  for (let i = 0; i < entries.length; i++) {
    const e = entries[i]
    if (!Array.isArray(e) || e.length !== 2) throw invalidArg(`loaders[${i}] must be a [key, loader] pair, got ${show(e)}`)
    checkKey(e[0], `loaders[${i}] key`)
    if (typeof e[1] !== 'function') throw invalidArg(`the loader of ${show(e[0])} must be a function, got ${show(e[1])}`)
  }
  return entries
}

/**
 * Runs the loaders at most `concurrency` at once and sets each value (L1 and
 * L2). A loader that throws, or whose value cannot be cached, counts as
 * failed and never stops the others. Resolves { loaded, failed, errors }.
 * Aborting rejects ERR_ABORTED at once and starts no more loaders (those
 * running finish and are still set).
 */
function cacheWarm(cache, loaders, options) {
  try {
    checkOptions(options, 'warm options')
    const o = options ?? {}
    const entries = loaderEntries(loaders)
    const concurrency = optNumber(o, 'concurrency', { min: 1, integer: true, allowInfinity: true }) ?? 8
    const signal = checkSignal(o.signal)
    const onProgress = o.onProgress
    if (onProgress !== undefined && typeof onProgress !== 'function') throw invalidArg(`onProgress must be a function, got ${show(onProgress)}`)
    let setOpts
    if (o.ttlMs !== undefined || o.tags !== undefined) {
      setOpts = {}
      if (o.ttlMs !== undefined) {
        if (typeof o.ttlMs === 'function') throw invalidArg('warm: ttlMs must be a number > 0, got a function')
        checkTtl(o.ttlMs)
        setOpts.ttlMs = o.ttlMs
      }
      if (o.tags !== undefined) {
        if (typeof o.tags === 'function') throw invalidArg('warm: tags must be an array of strings, got a function')
        checkTags(o.tags)
        setOpts.tags = o.tags
      }
    }
    if (signal?.aborted) return Promise.reject(abortedError(signal, 'warm'))
    return new Promise((resolve, reject) => {
      const total = entries.length
      let next = 0
      let loaded = 0
      let failed = 0
      let settled = false
      const errors = []
      const settle = (err) => {
        settled = true
        signal?.removeEventListener('abort', onAbort)
        if (err) reject(err)
        else resolve({ loaded, failed, errors })
      }
      const onAbort = () => {
        if (settled) return
        const e = abortedError(signal, 'warm')
        e.loaded = loaded
        e.failed = failed
        settle(e)
      }
      signal?.addEventListener('abort', onAbort, { once: true })
      const one = async (key, loader) => {
        try {
          const value = await loader()
          await cache.set(key, value, setOpts)
          loaded++
        } catch (error) {
          failed++
          errors.push({ key, error })
        }
        if (settled) return
        if (onProgress !== undefined) {
          try {
            onProgress(loaded + failed, total)
          } catch (err) {
            settle(err)
            return
          }
        }
        if (loaded + failed === total) settle()
        else start()
      }
      const start = () => {
        while (!settled && next - loaded - failed < concurrency && next < total) {
          const [key, loader] = entries[next++]
          one(key, loader)
        }
      }
      if (total === 0) settle()
      else start()
    })
  } catch (err) {
    return Promise.reject(err)
  }
}

// ------------------------------------------------------------ limiter.wrap

function compileLimitOptions(options, what) {
  checkOptions(options, `${what} options`)
  const o = options ?? {}
  const key = o.key
  if (key !== undefined && typeof key !== 'function') checkKey(key)
  const cost = o.cost
  if (cost !== undefined && typeof cost !== 'function') {
    if (typeof cost !== 'number' || !Number.isFinite(cost)) throw invalidArg(`cost must be a finite number >= 0 or a function of the arguments, got ${show(cost)}`)
    if (cost < 0) throw rangeError(`cost must be >= 0, got ${cost}`)
  }
  const wait = o.wait
  if (wait !== undefined && typeof wait !== 'boolean') throw invalidArg(`wait must be a boolean, got ${show(wait)}`)
  const timeoutMs = optNumber(o, 'timeoutMs', { min: 0, allowInfinity: true })
  const signal = checkSignal(o.signal)
  if (!wait && (timeoutMs !== undefined || signal !== undefined)) {
    throw invalidArg(`${what}: timeoutMs and signal bound the wait of \`wait: true\`; without it a denied call rejects at once`)
  }
  let acquireOpts
  if (wait && typeof cost !== 'function') acquireOpts = { cost: cost ?? 1, timeoutMs, signal }
  return { key, cost, wait: wait === true, timeoutMs, signal, acquireOpts }
}

function rateLimitedError(key, r) {
  const when = Number.isFinite(r.retryAfterMs) ? `retry after ${r.retryAfterMs} ms` : 'the cost exceeds the limit and can never be admitted'
  return hpError(CODES.RATE_LIMITED, `rate limit of ${r.limit} exceeded for key ${show(key)}: ${when}`, Error, {
    retryAfterMs: r.retryAfterMs,
    limit: r.limit,
    remaining: r.remaining,
    resetMs: r.resetMs,
  })
}

/** One call of a rate-limited function (async, so a rejection carries the caller's async stack). */
async function callLimited(limiter, spec, defaultKeyName, fn, thisArg, args) {
  const key = spec.key === undefined ? defaultKeyName : typeof spec.key === 'function' ? spec.key.apply(thisArg, args) : spec.key
  if (spec.wait) {
    const opts = spec.acquireOpts ?? { cost: spec.cost.apply(thisArg, args), timeoutMs: spec.timeoutMs, signal: spec.signal }
    await limiter.acquire(key, opts)
  } else {
    const cost = spec.cost === undefined ? 1 : typeof spec.cost === 'function' ? spec.cost.apply(thisArg, args) : spec.cost
    const r = await limiter.check(key, cost)
    if (!r.allowed) throw rateLimitedError(key, r)
  }
  return fn.apply(thisArg, args)
}

function limiterWrap(limiter, fn, options) {
  checkFn(fn, 'limiter.wrap')
  const spec = compileLimitOptions(options, 'limiter.wrap')
  const name = fn.name
  if (spec.key === undefined && !name) {
    throw invalidArg('limiter.wrap: an anonymous function needs options.key (its name is the default limiter key)')
  }
  return function limited(...args) {
    return callLimited(limiter, spec, name, fn, this, args)
  }
}

module.exports = {
  HASH_ABOVE,
  serializeArgs,
  defaultKey,
  compileCacheOptions,
  callCached,
  cacheWrap,
  cacheWarm,
  compileLimitOptions,
  callLimited,
  limiterWrap,
}
