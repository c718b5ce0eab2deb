'use strict'
// hotpath's one error model.
//
// Every error hotpath throws or rejects with is made here, carries a `code`
// from CODES and passes `isHotpathError`. Three classes carry it:
//   - HotpathTypeError (a TypeError): an argument or option of the wrong type;
//   - HotpathRangeError (a RangeError): the right type, a value outside what
//     is allowed (out of range, NaN, not an integer, empty, not one of the
//     allowed strings);
//   - HotpathError (an Error): everything else (closed, timeout, Redis,
//     misuse such as checkSync on a Redis limiter, a Buffer another pool
//     allocated, a bug inside hotpath: ERR_INTERNAL).
// All three share a brand, so `isHotpathError(e)` and `e instanceof
// HotpathError` (through Symbol.hasInstance) hold for each, while `e
// instanceof TypeError` / `RangeError` hold for the first two.

// The codes, by name. The ORDER is the order of `Code` in src/error.rs (the
// native side reports a code by its index, see CODE_BY_INDEX): a test
// (__test__/errors.spec.ts) parses src/error.rs and fails when the two differ.
const CODES = Object.freeze({
  INVALID_ARG: 'ERR_INVALID_ARG',
  CLOSED: 'ERR_CLOSED',
  TIMEOUT: 'ERR_TIMEOUT',
  ABORTED: 'ERR_ABORTED',
  QUEUE_FULL: 'ERR_QUEUE_FULL',
  RATE_LIMITED: 'ERR_RATE_LIMITED',
  REDIS: 'ERR_REDIS',
  BATCH_RESULT: 'ERR_BATCH_RESULT',
  BUFFER_RELEASED: 'ERR_BUFFER_RELEASED',
  TASK_FAILED: 'ERR_TASK_FAILED',
  INTERNAL: 'ERR_INTERNAL',
})

/** src/error.rs `Code` discriminant -> code string. */
const CODE_BY_INDEX = Object.freeze(Object.values(CODES))
const CODE_SET = new Set(CODE_BY_INDEX)

// Symbol.for: one brand even if two copies of this file are loaded (a
// bundler, a second install of the package).
const BRAND = Symbol.for('hotpath.error')

function isHotpathError(e) {
  return e !== null && typeof e === 'object' && e[BRAND] === true
}

class HotpathError extends Error {
  constructor(code, message, options) {
    super(message, options)
    this.code = code
  }

  // `e instanceof HotpathError` holds for every hotpath error, the TypeError
  // and RangeError ones included. A subclass gets ordinary instanceof.
  static [Symbol.hasInstance](v) {
    if (this === HotpathError) return isHotpathError(v)
    return Function.prototype[Symbol.hasInstance].call(this, v)
  }
}

class HotpathTypeError extends TypeError {
  constructor(code, message, options) {
    super(message, options)
    this.code = code
  }
}

class HotpathRangeError extends RangeError {
  constructor(code, message, options) {
    super(message, options)
    this.code = code
  }
}

for (const C of [HotpathError, HotpathTypeError, HotpathRangeError]) {
  Object.defineProperty(C.prototype, BRAND, { value: true })
}
// TypeError and RangeError keep their names (`name: 'TypeError'`), as Node's own.
Object.defineProperty(HotpathError.prototype, 'name', { value: 'HotpathError', writable: true, configurable: true })

/** A hotpath error with `code`; `extra` properties are copied onto it.
 *  Also `hpError(code, message, Base, extra)` with Base Error, TypeError or
 *  RangeError (the kind). */
function hpError(code, message, a, b) {
  let extra = a
  let C = HotpathError
  if (typeof a === 'function') {
    extra = b
    if (a === TypeError) C = HotpathTypeError
    else if (a === RangeError) C = HotpathRangeError
  }
  const e = new C(code, message)
  if (extra) Object.assign(e, extra)
  return e
}

/** ERR_INVALID_ARG, TypeError: an argument or option of the wrong type. */
const invalidArg = (message, Base = TypeError) => (Base === RangeError ? new HotpathRangeError(CODES.INVALID_ARG, message) : Base === Error ? new HotpathError(CODES.INVALID_ARG, message) : new HotpathTypeError(CODES.INVALID_ARG, message))
/** ERR_INVALID_ARG, RangeError: a value outside what is allowed. */
const rangeError = (message) => new HotpathRangeError(CODES.INVALID_ARG, message)
/** ERR_INVALID_ARG, Error: a misuse that is neither (wrong mode, foreign object). */
const misuse = (message) => new HotpathError(CODES.INVALID_ARG, message)
const closedError = (what) => new HotpathError(CODES.CLOSED, `${what} is closed`)

function show(v) {
  if (typeof v === 'string') return JSON.stringify(v.length > 60 ? v.slice(0, 60) + '…' : v)
  if (typeof v === 'bigint') return `${v}n`
  if (typeof v === 'function') return `[function ${v.name || 'anonymous'}]`
  if (typeof v === 'symbol') return v.toString()
  if (typeof v === 'number') return Object.is(v, -0) ? '-0' : String(v)
  if (v === null || typeof v !== 'object') return String(v)
  if (Array.isArray(v)) return `[array(${v.length})]`
  let name = 'object'
  try {
    name = v.constructor?.name ?? 'object'
  } catch {}
  return `[${name}]`
}

/** A key: a non-empty, well-formed string (a lone surrogate would be
 *  replaced by U+FFFD on its way to native code, making two keys one). */
function checkKey(key, what = 'key') {
  if (typeof key !== 'string') throw invalidArg(`${what} must be a string, got ${show(key)}`)
  if (key.length === 0) throw rangeError(`${what} must be a non-empty string, got ""`)
  if (!key.isWellFormed()) throw rangeError(`${what} must be well-formed UTF-16 (it has a lone surrogate), got ${show(key)}`)
}

function checkOptions(options, what) {
  if (options === undefined) return undefined
  if (options === null || typeof options !== 'object' || Array.isArray(options)) {
    throw invalidArg(`${what} must be an object, got ${show(options)}`)
  }
  return options
}

/** The longest duration any option or argument takes: 2^31 - 1 ms (~24.8
 *  days), what a Node timer can wait; longer is a RangeError. */
const MAX_DURATION_MS = 2 ** 31 - 1
/** The longest lifetime of state (ttlMs, idleMs, staleMs, windowMs...):
 *  1e12 ms (~31.7 years). Not a timer, so not bound to 2^31 - 1. */
const MAX_TTL_MS = 1e12
/** The largest count (sizes, limits, capacities): 2^53 - 1. */
const MAX_COUNT = Number.MAX_SAFE_INTEGER

/**
 * A number option or argument `name` = `v`, checked against a stated range:
 * `undefined` passes through (absent); a non-number is a TypeError; NaN, a
 * value out of [min, max] (or equal to min with exclusiveMin), or a
 * non-integer where one is needed is a RangeError naming the range.
 * `allowInfinity`: Infinity is accepted as "no limit" (then max bounds only
 * finite values).
 */
function checkNumber(name, v, { min = 0, max = MAX_COUNT, integer = false, exclusiveMin = false, allowInfinity = false } = {}) {
  if (v === undefined) return undefined
  if (typeof v !== 'number') throw invalidArg(`${name} must be a number, got ${show(v)}`)
  if (v === Infinity && allowInfinity) return v
  if (Number.isNaN(v) || v < min || (exclusiveMin && v === min) || v > max || (integer && !Number.isInteger(v))) {
    throw rangeError(`${name} must be ${describeRange(min, max, integer, exclusiveMin, allowInfinity)}, got ${show(v)}`)
  }
  return v
}

function describeRange(min, max, integer, exclusiveMin, allowInfinity) {
  const kind = integer ? 'an integer' : 'a number'
  const lo = exclusiveMin ? `> ${min}` : `>= ${min}`
  const hi = max === MAX_DURATION_MS ? '2^31 - 1' : max === MAX_COUNT ? '2^53 - 1' : max === MAX_TTL_MS ? '1e12' : String(max)
  return `${kind} ${lo} and <= ${hi}${allowInfinity ? ', or Infinity' : ''}`
}

/** checkNumber on `o[name]`. */
function optNumber(o, name, opts) {
  return checkNumber(name, o?.[name], opts)
}

/** A wait in ms (a timer: timeouts, delays, back-offs): 0 (or > 0 with
 *  exclusiveMin) up to MAX_DURATION_MS. */
function optDuration(o, name, { exclusiveMin = false, allowInfinity = false } = {}) {
  return checkNumber(name, o?.[name], { min: 0, max: MAX_DURATION_MS, exclusiveMin, allowInfinity })
}

/** A lifetime in ms (TTLs, windows): 0 (or > 0 with exclusiveMin) up to MAX_TTL_MS. */
function optTtl(o, name, { exclusiveMin = false } = {}) {
  return checkNumber(name, o?.[name], { min: 0, max: MAX_TTL_MS, exclusiveMin })
}

/** A `name` option: a key (non-empty, well-formed) or absent. */
function optName(o, name = 'name') {
  const v = o?.[name]
  if (v !== undefined) checkKey(v, name)
  return v
}

function optString(o, name, { nonEmpty = true } = {}) {
  const v = o?.[name]
  if (v === undefined) return undefined
  if (typeof v !== 'string') throw invalidArg(`${name} must be a string, got ${show(v)}`)
  if (nonEmpty && v.length === 0) throw rangeError(`${name} must be a non-empty string, got ""`)
  return v
}

function optBoolean(o, name) {
  const v = o?.[name]
  if (v !== undefined && typeof v !== 'boolean') throw invalidArg(`${name} must be a boolean, got ${show(v)}`)
  return v
}

/** One of `allowed` (strings): another string is a RangeError, another type a TypeError. */
function oneOf(o, name, allowed) {
  const v = o?.[name]
  if (v === undefined) return undefined
  if (typeof v !== 'string') throw invalidArg(`${name} must be a string (${allowed.map((a) => `'${a}'`).join(', ')}), got ${show(v)}`)
  if (!allowed.includes(v)) throw rangeError(`${name} must be one of ${allowed.map((a) => `'${a}'`).join(', ')}, got ${show(v)}`)
  return v
}

function isSignal(s) {
  return s !== null && typeof s === 'object' && typeof s.aborted === 'boolean' && typeof s.addEventListener === 'function'
}

function optSignal(o, name = 'signal') {
  const s = o?.[name]
  if (s !== undefined && !isSignal(s)) throw invalidArg(`${name} must be an AbortSignal, got ${show(s)}`)
  return s
}

/**
 * `redis` options, checked before they reach native code (types, and the
 * timeouts' range; the URL itself is parsed natively).
 */
function checkRedisOptions(r, what = 'redis') {
  if (r === undefined) return
  checkOptions(r, what)
  // url may be '' with cluster (the native side says when one is missing).
  if (r.url !== undefined && typeof r.url !== 'string') throw invalidArg(`${what}.url must be a string, got ${show(r.url)}`)
  if (r.cluster !== undefined) {
    if (!Array.isArray(r.cluster)) throw invalidArg(`${what}.cluster must be an array of URLs, got ${show(r.cluster)}`)
    for (let i = 0; i < r.cluster.length; i++) {
      if (typeof r.cluster[i] !== 'string') throw invalidArg(`${what}.cluster[${i}] must be a string, got ${show(r.cluster[i])}`)
    }
  }
  if (r.keyPrefix !== undefined && typeof r.keyPrefix !== 'string') throw invalidArg(`${what}.keyPrefix must be a string, got ${show(r.keyPrefix)}`)
  for (const name of ['connectTimeoutMs', 'commandTimeoutMs']) {
    checkNumber(`${what}.${name}`, r[name], { min: 0, max: MAX_DURATION_MS, exclusiveMin: true })
  }
}

// napi-rs's own messages for a value it could not convert, e.g.
//   Failed to convert napi value String into rust type `f64` on BatchOptions.maxBatchSize
//   Failed to convert JavaScript value `Number 5 ` into rust type `String` on RedisOptions.url on RateLimiterOptions.redis
// napi-rs's status names (err.code of an error napi-rs made itself).
const NAPI_STATUS = new Set(['InvalidArg', 'ObjectExpected', 'StringExpected', 'NameExpected', 'FunctionExpected', 'NumberExpected', 'BooleanExpected', 'ArrayExpected', 'GenericFailure', 'PendingException', 'Cancelled', 'EscapeCalledTwice', 'HandleScopeMismatch', 'CallbackScopeMismatch', 'QueueFull', 'Closing', 'BigintExpected', 'DateExpected', 'ArrayBufferExpected', 'DetachableArraybufferExpected', 'WouldDeadlock', 'NoExternalBuffersAllowed', 'Unknown'])
const NAPI_CONVERT = /^Failed to convert (?:napi value (\w+)|JavaScript value `(\w+)[^`]*`) into rust type `([^`]+)`(?: on ([\w.]+))?/
const RUST_TYPES = { f64: 'a number', f32: 'a number', u32: 'a number', i32: 'a number', i64: 'a number', u64: 'a number', String: 'a string', bool: 'a boolean' }

function jsTermsOf(message) {
  const m = NAPI_CONVERT.exec(message)
  if (m === null) return null
  const got = (m[1] ?? m[2] ?? 'value').toLowerCase()
  const want = RUST_TYPES[m[3]] ?? `of another type (${m[3]})`
  // "RedisOptions.url on RateLimiterOptions.redis" -> "redis.url"
  let where = 'an option'
  if (m[4] !== undefined) where = m[4].split('.').pop()
  const outer = /on \w+Options\.(\w+)\s*$/.exec(message.slice(m[0].length))
  if (outer !== null) where = `${outer[1]}.${where}`
  return `${where} must be ${want}, got a ${got}`
}

/**
 * An error from a native call, as a hotpath error. ERR_* errors keep their
 * code and message (ERR_INVALID_ARG ones become a RangeError: the JS layer
 * checks types first, so what native code still refuses is a value); napi-rs
 * conversion errors become a TypeError in JS terms; anything else (a panic
 * message, an unknown failure) is ERR_INTERNAL. Errors that already are
 * hotpath errors, and anything that is not an Error, pass through.
 */
function fromNative(err) {
  if (isHotpathError(err)) return err
  if (err === null || typeof err !== 'object') return err
  const code = err.code
  const message = typeof err.message === 'string' ? err.message : String(err)
  let e
  if (code === CODES.INVALID_ARG) {
    const js = jsTermsOf(message)
    e = js !== null ? invalidArg(js) : /^(a |an )?name .*exists|already exists|different options/.test(message) ? misuse(message) : rangeError(message)
  } else if (typeof code === 'string' && CODE_SET.has(code)) {
    e = new HotpathError(code, message)
  } else {
    const js = jsTermsOf(message)
    if (js !== null) e = invalidArg(js)
    else if (typeof code === 'string' && code.endsWith('Expected')) e = invalidArg(message)
    else e = new HotpathError(CODES.INTERNAL, `internal error in hotpath (please report it): ${message}`, { cause: err })
  }
  // Properties the native side adds (retryAfterMs, ...).
  for (const k of Object.keys(err)) if (k !== 'code' && k !== 'message' && k !== 'stack') e[k] = err[k]
  return e
}

/**
 * Run a native-async promise so that its rejection is a hotpath error made
 * here, after the await: V8's async stack traces then append the caller's
 * awaiting frames (`at async yourFunction (file:line)`) to its stack at no
 * cost until it rejects. (An explicit capture at every call costs 4–10 µs
 * on the test machine, more than the operations it would decorate.)
 */
async function settled(p) {
  try {
    return await p
  } catch (err) {
    throw restack(err)
  }
}

// Marks a hotpath error made in background work (a timer, an event from
// native code): its stack has no caller, so `settled` re-makes it.
const DETACHED = Symbol('hotpath.detached')

/** `e`, marked as made in background work (see `settled`). */
function detached(e) {
  e[DETACHED] = true
  return e
}

/**
 * A rejection reason, re-made in the current (async) context for its stack
 * when it has none worth keeping: a native error (converted), or a hotpath
 * error made in background work. Anything else (a user's error, a hotpath
 * error thrown synchronously in user code) passes through untouched.
 */
function restack(err) {
  if (err === null || typeof err !== 'object') return err
  if (!isHotpathError(err)) {
    if (typeof err.code === 'string' && (CODE_SET.has(err.code) || NAPI_STATUS.has(err.code))) return fromNative(err)
    return err
  }
  if (err[DETACHED] !== true) return err
  const C = err instanceof TypeError ? HotpathTypeError : err instanceof RangeError ? HotpathRangeError : HotpathError
  const e = new C(err.code, err.message, err.cause !== undefined ? { cause: err.cause } : undefined)
  for (const k of Object.keys(err)) if (k !== 'code' && k !== 'message' && k !== 'stack' && k !== 'cause') e[k] = err[k]
  return e
}

module.exports = {
  CODES,
  CODE_BY_INDEX,
  HotpathError,
  isHotpathError,
  hpError,
  invalidArg,
  rangeError,
  misuse,
  closedError,
  checkKey,
  checkOptions,
  checkNumber,
  optNumber,
  optDuration,
  optTtl,
  optString,
  optName,
  optBoolean,
  oneOf,
  isSignal,
  optSignal,
  checkRedisOptions,
  fromNative,
  settled,
  restack,
  detached,
  show,
  MAX_DURATION_MS,
  MAX_TTL_MS,
  MAX_COUNT,
}
