'use strict'
// Every error hotpath throws or rejects with carries one of these codes.
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

function hpError(code, message, Base = Error, extra) {
  const e = new Base(message)
  e.code = code
  if (extra) Object.assign(e, extra)
  return e
}

const invalidArg = (message, Base = TypeError) => hpError(CODES.INVALID_ARG, message, Base)
const rangeError = (message) => hpError(CODES.INVALID_ARG, message, RangeError)
const closedError = (what) => hpError(CODES.CLOSED, `${what} is closed`)

function show(v) {
  if (typeof v === 'string') return JSON.stringify(v.length > 60 ? v.slice(0, 60) + '…' : v)
  if (typeof v === 'bigint') return `${v}n`
  if (typeof v === 'function') return `[function ${v.name || 'anonymous'}]`
  if (typeof v === 'symbol') return v.toString()
  if (v === null || typeof v !== 'object') return String(v)
  if (Array.isArray(v)) return `[array(${v.length})]`
  return `[${v.constructor?.name ?? 'object'}]`
}

function checkKey(key, what = 'key') {
  if (typeof key !== 'string') throw invalidArg(`${what} must be a string, got ${show(key)}`)
  if (key.length === 0) throw invalidArg(`${what} must be a non-empty string, got ""`)
}

function checkOptions(options, what) {
  if (options === undefined) return undefined
  if (options === null || typeof options !== 'object' || Array.isArray(options)) {
    throw invalidArg(`${what} must be an object, got ${show(options)}`)
  }
  return options
}

/** A finite number >= min (or undefined when absent). */
function optNumber(o, name, { min = 0, integer = false, exclusiveMin = false, allowInfinity = false } = {}) {
  const v = o?.[name]
  if (v === undefined) return undefined
  if (typeof v !== 'number' || Number.isNaN(v) || (!allowInfinity && !Number.isFinite(v))) {
    throw invalidArg(`${name} must be a finite number, got ${show(v)}`)
  }
  if (v < min || (exclusiveMin && v === min)) throw rangeError(`${name} must be ${exclusiveMin ? '>' : '>='} ${min}, got ${v}`)
  if (integer && Number.isFinite(v) && !Number.isInteger(v)) throw rangeError(`${name} must be an integer, got ${v}`)
  return v
}

/** Errors from a native constructor or call: ERR_* pass through, napi-rs
 *  conversion errors (wrong JS type in an options object) become ERR_INVALID_ARG. */
function fromNative(err) {
  if (err && typeof err.code === 'string' && err.code.startsWith('ERR_')) return err
  const e = invalidArg(err && err.message ? err.message : String(err))
  return e
}

module.exports = { CODES, hpError, invalidArg, rangeError, closedError, checkKey, checkOptions, optNumber, fromNative, show }
