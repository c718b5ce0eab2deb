'use strict'
// How WorkerQueue payloads, results and errors cross threads (worker-thread
// mode). Primitives go to native code as they are; everything else as
// `v8.serialize` bytes (the structured clone algorithm postMessage uses).
// Kinds: 0 undefined, 1 null, 2 boolean, 3 number, 4 string, 5 bytes,
// 6 error description.
const v8 = require('node:v8')

/** encode() leaves its result here (no allocation per call). */
const enc = { kind: 0, num: 0, str: undefined, buf: undefined }

/** Throws (DataCloneError) when `v` is not structured-cloneable. */
function encode(v) {
  enc.num = 0
  enc.str = undefined
  enc.buf = undefined
  switch (typeof v) {
    case 'undefined':
      enc.kind = 0
      return
    case 'boolean':
      enc.kind = 2
      enc.num = v ? 1 : 0
      return
    case 'number':
      enc.kind = 3
      enc.num = v
      return
    case 'string':
      // Lone surrogates would not survive UTF-8: clone those as bytes.
      if (v.isWellFormed()) {
        enc.kind = 4
        enc.str = v
        return
      }
      break
    case 'object':
      if (v === null) {
        enc.kind = 1
        return
      }
      break
  }
  enc.buf = v8.serialize(v)
  enc.kind = 5
}

/** Decode a value: `prim` is the primitive (kinds 2-4), `bytes` the bytes (kinds 5, 6). */
function decode(kind, prim, bytes) {
  switch (kind) {
    case 0:
      return undefined
    case 1:
      return null
    case 2:
      return prim !== 0
    case 3:
      return prim
    case 4:
      return prim
    case 5:
      return v8.deserialize(bytes)
    case 6:
      return reviveError(v8.deserialize(bytes))
    default:
      throw new Error(`WorkerQueue: unknown value kind ${kind}`)
  }
}

function cloneable(v) {
  try {
    v8.serialize(v)
    return true
  } catch {
    return false
  }
}

/** Encode what a task threw: an Error keeps its class name, message, stack,
 *  cause and own properties (`code`, ...); anything else is cloned as is. */
function encodeThrown(e) {
  if (e instanceof Error || (e !== null && typeof e === 'object' && typeof e.message === 'string' && 'stack' in e)) {
    const d = { name: String(e.name ?? 'Error'), message: String(e.message), stack: typeof e.stack === 'string' ? e.stack : undefined, props: {}, cause: undefined }
    for (const k of Object.keys(e)) d.props[k] = e[k]
    if ('cause' in e) d.cause = e.cause
    try {
      enc.buf = v8.serialize(d)
    } catch {
      for (const k of Object.keys(d.props)) if (!cloneable(d.props[k])) delete d.props[k]
      if (!cloneable(d.cause)) d.cause = String(d.cause)
      enc.buf = v8.serialize(d)
    }
    enc.kind = 6
    enc.num = 0
    enc.str = undefined
    return
  }
  try {
    encode(e)
  } catch {
    encodeThrown(new Error(`task threw a value that cannot be cloned: ${String(e)}`))
  }
}

const CTORS = { Error, TypeError, RangeError, SyntaxError, ReferenceError, EvalError, URIError }

function reviveError(d) {
  const C = Object.hasOwn(CTORS, d.name) ? CTORS[d.name] : Error
  const err = d.cause !== undefined ? new C(d.message, { cause: d.cause }) : new C(d.message)
  if (err.name !== d.name) Object.defineProperty(err, 'name', { value: d.name, writable: true, configurable: true, enumerable: false })
  if (d.stack !== undefined) err.stack = d.stack
  if (d.props) Object.assign(err, d.props)
  return err
}

module.exports = { enc, encode, decode, encodeThrown, reviveError }
