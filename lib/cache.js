'use strict'
// CacheManager: the JS-facing class over the native engine (src/cache/).
//
// Hot reads never cross into native code: each thread keeps a small front
// cache of immutable values (strings, numbers, booleans, null). An entry is
// served only while the version counter of its key's slot — which the native
// side bumps on every write, delete, eviction, expiry and remote invalidation,
// in memory shared by every thread — still reads what it read when the entry
// was filled. So a hot read is a Map lookup plus one typed-array compare.

const { NativeCache } = require('./native.js')
const { CODES, hpError, invalidArg, closedError, checkKey, checkOptions, optNumber, fromNative, show } = require('./errors')
const { now } = require('./clock')

const K_STR = 1
const K_NUM = 2
const K_BOOL = 3
const K_NULL = 4
const K_JSON = 5
const K_BYTES = 6

// Every 64th front hit (per handle) goes native: it records the 64 hits in
// the stats and touches the key hit, so L1's policy sees hot keys in
// proportion to their reads (a 1-in-64 sample).
const TOUCH_EVERY = 64
const TOUCH_MASK = TOUCH_EVERY - 1

function strictReplacer(k, v) {
  const t = typeof v
  if (t === 'function' || t === 'symbol' || t === 'undefined' || t === 'bigint') {
    throw invalidArg(`cache values must be JSON-serialisable: ${k ? `property "${k}" is` : 'got'} ${show(v)}`)
  }
  return v
}

// encode() leaves its result here (no allocation per call).
let encKind = 0
let encPayload = null
function encode(value) {
  switch (typeof value) {
    case 'string':
      encKind = K_STR
      encPayload = value
      return
    case 'number':
      encKind = K_NUM
      encPayload = value
      return
    case 'boolean':
      encKind = K_BOOL
      encPayload = value ? 1 : 0
      return
    case 'object':
      if (value === null) {
        encKind = K_NULL
        encPayload = 0
        return
      }
      if (Buffer.isBuffer(value)) {
        encKind = K_BYTES
        encPayload = value
        return
      }
      if (Array.isArray(value) || Object.getPrototypeOf(value) === Object.prototype || Object.getPrototypeOf(value) === null) {
        let text
        try {
          text = JSON.stringify(value, strictReplacer)
        } catch (e) {
          if (e.code === CODES.INVALID_ARG) throw e
          throw invalidArg(`cache values must be JSON-serialisable: ${e.message}`)
        }
        encKind = K_JSON
        encPayload = text
        return
      }
      throw invalidArg(`cache values must be a string, number, boolean, null, Buffer, plain object or array, got ${show(value)}`)
    default:
      throw invalidArg(`cache values must be a string, number, boolean, null, Buffer, plain object or array, got ${show(value)}`)
  }
}

function decode(kind, payload) {
  switch (kind) {
    case 0:
      return undefined
    case K_JSON:
      return JSON.parse(payload)
    case K_NULL:
      return null
    default:
      return payload
  }
}

function decodeOne(arr) {
  return decode(arr[0], arr[1])
}

function decodeMany(arr) {
  const out = new Array(arr.length >> 1)
  for (let i = 0; i < out.length; i++) out[i] = decode(arr[2 * i], arr[2 * i + 1])
  return out
}

function setOptions(options) {
  if (options === undefined) return
  checkOptions(options, 'options')
  const ttl = optNumber(options, 'ttlMs', { min: 0, exclusiveMin: true })
  let tags = options.tags
  if (tags !== undefined) {
    if (!Array.isArray(tags)) throw invalidArg(`tags must be an array of strings, got ${show(tags)}`)
    for (const t of tags) checkKey(t, 'tag')
  }
  optTtl = ttl
  optTags = tags
}
let optTtl
let optTags

function flightError(json) {
  const o = JSON.parse(json)
  const e = new Error(o.message)
  if (o.name && o.name !== 'Error') e.name = o.name
  if (o.code) e.code = o.code
  return e
}

const noop = () => {}

class CacheManager {
  constructor(options) {
    checkOptions(options, 'options')
    try {
      this._n = new NativeCache(options)
    } catch (e) {
      throw fromNative(e)
    }
    this._ver = new Uint32Array(this._n.versions())
    this._sc = new Float64Array(this._n.scratch())
    this._cap = this._n.frontCapacity()
    this._front = new Map()
    this._hasL2 = this._n.hasL2()
    this._flights = new Map()
    this._closed = false
    this._hits = 0 // front hits; every 64th is reported (see TOUCH_EVERY)
    this._ra = options?.refreshAheadMs > 0 ? options.refreshAheadMs : 0
  }

  // Fill from L1 (native), caching immutable values in the front cache.
  _load(key, countMiss) {
    const v = this._n.getSync(key, countMiss)
    const sc = this._sc
    const kind = sc[3]
    if (kind === 0) return undefined
    if (kind === K_JSON) return JSON.parse(v)
    if (kind === K_BYTES) return v
    if (this._cap > 0) {
      if (this._front.size >= this._cap) this._flushFront()
      this._front.set(key, { val: v, s: sc[0], v: sc[1], x: sc[2] < 0 ? 0 : now() + sc[2] })
    }
    return kind === K_NULL ? null : v
  }

  _flushFront() {
    this._front.clear()
    this._flushHits()
  }

  _flushHits() {
    const pending = this._hits & TOUCH_MASK
    if (pending > 0) {
      this._hits -= pending
      this._n.addHits(pending)
    }
  }

  getSync(key) {
    const e = this._front.get(key)
    if (e !== undefined) {
      if (this._ver[e.s] === e.v && (e.x === 0 || e.x > now())) {
        if ((++this._hits & TOUCH_MASK) === 0) this._n.touch(key, TOUCH_EVERY)
        return e.val
      }
      this._front.delete(key)
    }
    checkKey(key)
    return this._load(key, true)
  }

  get(key) {
    try {
      const e = this._front.get(key)
      if (e !== undefined && this._ver[e.s] === e.v && (e.x === 0 || e.x > now())) {
        if ((++this._hits & TOUCH_MASK) === 0) this._n.touch(key, TOUCH_EVERY)
        return Promise.resolve(e.val)
      }
      checkKey(key)
      const v = this._load(key, !this._hasL2)
      if (v !== undefined || !this._hasL2) return Promise.resolve(v)
      return this._n.getL2(key).then(decodeOne)
    } catch (err) {
      return Promise.reject(err)
    }
  }

  getMany(keys) {
    try {
      if (!Array.isArray(keys)) throw invalidArg(`keys must be an array of strings, got ${show(keys)}`)
      for (const k of keys) checkKey(k)
      return this._n.getMany(keys).then(decodeMany)
    } catch (err) {
      return Promise.reject(err)
    }
  }

  set(key, value, options) {
    try {
      checkKey(key)
      encode(value)
      optTtl = optTags = undefined
      setOptions(options)
      return this._n.set(key, encKind, encPayload, optTtl, optTags).then(noop)
    } catch (err) {
      return Promise.reject(err)
    }
  }

  setSync(key, value, options) {
    checkKey(key)
    encode(value)
    optTtl = optTags = undefined
    setOptions(options)
    this._n.setSync(key, encKind, encPayload, optTtl, optTags)
  }

  setMany(entries, options) {
    try {
      if (!Array.isArray(entries)) throw invalidArg(`entries must be an array of [key, value] pairs, got ${show(entries)}`)
      const keys = new Array(entries.length)
      const kinds = new Array(entries.length)
      const payloads = new Array(entries.length)
      for (let i = 0; i < entries.length; i++) {
        const en = entries[i]
        if (!Array.isArray(en) || en.length !== 2) throw invalidArg(`entries[${i}] must be a [key, value] pair, got ${show(en)}`)
        checkKey(en[0], `entries[${i}][0]`)
        encode(en[1])
        keys[i] = en[0]
        kinds[i] = encKind
        payloads[i] = encPayload
      }
      optTtl = optTags = undefined
      setOptions(options)
      return this._n.setMany(keys, kinds, payloads, optTtl, optTags).then(noop)
    } catch (err) {
      return Promise.reject(err)
    }
  }

  has(key) {
    const e = this._front.get(key)
    if (e !== undefined && this._ver[e.s] === e.v && (e.x === 0 || e.x > now())) return true
    checkKey(key)
    return this._n.has(key)
  }

  getOrSet(key, factory, options) {
    try {
      checkKey(key)
      if (typeof factory !== 'function') throw invalidArg(`factory must be a function, got ${show(factory)}`)
      if (options !== undefined) {
        setOptions(options)
      }
      const e = this._front.get(key)
      // A front hit inside the refresh-ahead margin goes to peek(), which
      // starts the background refresh.
      if (e !== undefined && this._ver[e.s] === e.v && (e.x === 0 || e.x - now() > this._ra)) {
        if ((++this._hits & TOUCH_MASK) === 0) this._n.touch(key, TOUCH_EVERY)
        return Promise.resolve(e.val)
      }
      const v = this._n.peek(key)
      const kind = this._sc[3]
      if (kind !== 0) {
        const state = this._sc[4]
        const value = decode(kind, v)
        if (state !== 0) this._refresh(key, factory, options)
        return Promise.resolve(value)
      }
      let p = this._flights.get(key)
      if (p !== undefined) return p
      p = this._fly(key, factory, options)
      this._flights.set(key, p)
      const done = () => {
        if (this._flights.get(key) === p) this._flights.delete(key)
      }
      p.then(done, done)
      return p
    } catch (err) {
      return Promise.reject(err)
    }
  }

  // Stale or nearly expired: refresh once in the background (single flight).
  _refresh(key, factory, options) {
    if (this._flights.has(key)) return
    const p = this._lead(key, factory, options, true)
    this._flights.set(key, p)
    const done = () => {
      if (this._flights.get(key) === p) this._flights.delete(key)
    }
    p.then(done, done)
  }

  async _fly(key, factory, options) {
    if (this._hasL2) {
      const r = await this._n.getL2(key)
      if (r[0] !== 0) return decodeOne(r)
    }
    for (;;) {
      const led = await this._lead(key, factory, options, false)
      if (led !== NOT_LEADER) return led
      const r = await this._n.flightWait(key)
      if (typeof r === 'string') throw flightError(r)
      if (r.length > 0) return decodeOne(r)
      // The flight ended before we could wait on it: its value is in L1 now,
      // unless it failed (then we try to lead).
      const v = this._load(key, false)
      if (v !== undefined) return v
    }
  }

  async _lead(key, factory, options, background) {
    if (!this._n.flightLead(key)) return background ? undefined : NOT_LEADER
    // From here the flight must end exactly once, whatever happens, or waiters
    // in other threads would wait forever.
    let ended = false
    try {
      const value = await factory()
      encode(value)
      const kind = encKind
      const payload = encPayload
      optTtl = optTags = undefined
      setOptions(options)
      const written = this._n.set(key, kind, payload, optTtl, optTags)
      this._n.flightEnd(key, kind, payload)
      ended = true
      // The value is in L1 now: later misses must not join this flight while
      // its L2 write finishes.
      this._flights.delete(key)
      await written
      return value
    } catch (err) {
      if (!ended) this._n.flightFail(key, String(err?.code ?? ''), String(err?.message ?? err), String(err?.name ?? 'Error'))
      if (background) return undefined
      throw err
    }
  }

  delete(key) {
    try {
      checkKey(key)
      return this._n.deleteMany([key]).then((n) => n > 0)
    } catch (err) {
      return Promise.reject(err)
    }
  }

  deleteMany(keys) {
    try {
      if (!Array.isArray(keys)) throw invalidArg(`keys must be an array of strings, got ${show(keys)}`)
      for (const k of keys) checkKey(k)
      return this._n.deleteMany(keys)
    } catch (err) {
      return Promise.reject(err)
    }
  }

  deletePattern(glob) {
    try {
      checkKey(glob, 'glob')
      return this._n.deletePattern(glob)
    } catch (err) {
      return Promise.reject(err)
    }
  }

  deleteTag(tag) {
    try {
      checkKey(tag, 'tag')
      return this._n.deleteTag(tag)
    } catch (err) {
      return Promise.reject(err)
    }
  }

  deleteLater(key, delayMs) {
    checkKey(key)
    optNumber({ delayMs }, 'delayMs')
    if (delayMs === undefined) throw invalidArg('delayMs must be a finite number, got undefined')
    this._n.deleteLater(key, delayMs)
  }

  remainingTtlMs(key) {
    try {
      checkKey(key)
      return this._n.remainingTtlMs(key).then((ms) => (ms === -2 ? undefined : ms))
    } catch (err) {
      return Promise.reject(err)
    }
  }

  clear() {
    try {
      this._front.clear()
      return this._n.clear()
    } catch (err) {
      return Promise.reject(err)
    }
  }

  stats() {
    this._flushHits()
    return this._n.stats()
  }

  close() {
    if (!this._closed) {
      this._closed = true
      this._flushFront()
      this._cap = 0
    }
    return this._n.close()
  }
}

const NOT_LEADER = Symbol('not leader')

module.exports = { CacheManager, encode, decode }
