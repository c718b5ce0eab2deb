'use strict'
// CacheManager: the JS-facing class over the native engine (src/cache/).
//
// Hot reads never cross into native code: each thread keeps a bounded front
// cache (lib/front_cache.js) of strings, numbers, booleans, null and, as
// deep-frozen parsed values (or JSON text in readMode 'copy'), objects and
// arrays. An entry is served only while the version counter of its key's
// slot — which the native side bumps on every write, delete, eviction, expiry
// and remote invalidation, in memory shared by every thread — still reads
// what it read when the entry was filled. So a hot read is a Map lookup plus
// one typed-array compare.

const { NativeCache } = require('../index.js')
const { CODES, hpError, invalidArg, closedError, checkKey, checkOptions, optNumber, fromNative, show } = require('./errors')
const { FrontCache, deepFreeze } = require('./front_cache')

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

// After JSON.stringify succeeded (so the value is acyclic): every value
// inside must be JSON itself — no function, symbol, undefined or BigInt (which
// JSON.stringify would silently drop or turn into null) and no class instance
// (a Date would silently become a string). A walk of typeof checks costs far
// less than a JSON.stringify replacer, which is a JS call per property.
function checkJson(v) {
  if (Array.isArray(v)) {
    for (let i = 0; i < v.length; i++) checkJsonValue(v[i], i)
  } else {
    for (const k in v) checkJsonValue(v[k], k)
  }
}

function checkJsonValue(x, k) {
  switch (typeof x) {
    case 'string':
    case 'number':
    case 'boolean':
      return
    case 'object': {
      if (x === null) return
      if (Array.isArray(x)) return checkJson(x)
      const proto = Object.getPrototypeOf(x)
      if (proto === Object.prototype || proto === null) return checkJson(x)
      throw invalidArg(`cache values must be plain JSON: property "${k}" is ${show(x)}`)
    }
    default:
      throw invalidArg(`cache values must be JSON-serialisable: property "${k}" is ${show(x)}`)
  }
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
          text = JSON.stringify(value)
        } catch (e) {
          throw invalidArg(`cache values must be JSON-serialisable: ${e.message}`)
        }
        checkJson(value)
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

// As decode(), for readMode 'frozen': objects and arrays come back deep-frozen.
function decodeFrozen(kind, payload) {
  return kind === K_JSON ? deepFreeze(JSON.parse(payload)) : decode(kind, payload)
}

function decoders(frozen) {
  const one = frozen ? decodeFrozen : decode
  return {
    one: (arr) => one(arr[0], arr[1]),
    many: (arr) => {
      const out = new Array(arr.length >> 1)
      for (let i = 0; i < out.length; i++) out[i] = one(arr[2 * i], arr[2 * i + 1])
      return out
    },
  }
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
    const readMode = options?.readMode
    if (readMode !== undefined && readMode !== 'frozen' && readMode !== 'copy') {
      throw invalidArg(`readMode must be 'frozen' or 'copy', got ${show(readMode)}`)
    }
    try {
      this._n = new NativeCache(options)
    } catch (e) {
      throw fromNative(e)
    }
    this._ver = new Uint32Array(this._n.versions())
    this._sc = new Float64Array(this._n.scratch())
    this._copy = readMode === 'copy'
    this._front = new FrontCache(this._ver, this._n.frontCapacity(), this._n.frontBytes(), this._copy)
    const d = decoders(!this._copy)
    this._decode = this._copy ? decode : decodeFrozen
    this._decodeOne = d.one
    this._decodeMany = d.many
    this._hasL2 = this._n.hasL2()
    this._flights = new Map()
    this._closed = false
    this._hits = 0 // front hits; every 64th is reported (see TOUCH_EVERY)
    this._ra = options?.refreshAheadMs > 0 ? options.refreshAheadMs : 0
  }

  // Fill from L1 (native) into the front cache.
  _load(key, countMiss) {
    const v = this._n.getSync(key, countMiss)
    const kind = this._sc[3]
    if (kind === 0) return undefined
    return this._keep(key, kind, v)
  }

  // A value just read natively (its slot, version and TTL in the scratch
  // array): hold it in the front cache and return what the read returns.
  _keep(key, kind, v) {
    const sc = this._sc
    if (kind === K_BYTES) return v
    if (kind === K_JSON) {
      if (this._copy) {
        this._front.set(key, undefined, v, v.length, sc[0], sc[1], sc[2])
        return JSON.parse(v)
      }
      const o = deepFreeze(JSON.parse(v))
      this._front.set(key, o, null, v.length, sc[0], sc[1], sc[2])
      return o
    }
    if (kind === K_NULL) v = null
    this._front.set(key, v, null, kind === K_STR ? v.length : 8, sc[0], sc[1], sc[2])
    return v
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
    const e = this._front.live(key, 0)
    if (e !== undefined) {
      if ((++this._hits & TOUCH_MASK) === 0) this._n.touch(key, TOUCH_EVERY)
      return this._front.value(e)
    }
    checkKey(key)
    return this._load(key, true)
  }

  get(key) {
    try {
      const e = this._front.live(key, 0)
      if (e !== undefined) {
        if ((++this._hits & TOUCH_MASK) === 0) this._n.touch(key, TOUCH_EVERY)
        return Promise.resolve(this._front.value(e))
      }
      checkKey(key)
      const v = this._load(key, !this._hasL2)
      if (v !== undefined || !this._hasL2) return Promise.resolve(v)
      return this._n.getL2(key).then(this._decodeOne)
    } catch (err) {
      return Promise.reject(err)
    }
  }

  getMany(keys) {
    try {
      if (!Array.isArray(keys)) throw invalidArg(`keys must be an array of strings, got ${show(keys)}`)
      for (const k of keys) checkKey(k)
      return this._n.getMany(keys).then(this._decodeMany)
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
    // Hold what was written, so a following read on this thread is a front
    // hit (an object as its JSON text, parsed on first read: the caller's own
    // object is never shared or frozen). The native side left the slot and
    // the version to hold it under, or -1 when another change raced this one.
    const sc = this._sc
    if (sc[1] < 0 || encKind === K_BYTES) return
    if (encKind === K_JSON) this._front.set(key, undefined, encPayload, encPayload.length, sc[0], sc[1], sc[2])
    else this._front.set(key, value, null, encKind === K_STR ? value.length : 8, sc[0], sc[1], sc[2])
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
    if (this._front.live(key, 0) !== undefined) return true
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
      // A front hit inside the refresh-ahead margin goes to peek(), which
      // starts the background refresh.
      const e = this._front.live(key, this._ra)
      if (e !== undefined) {
        if ((++this._hits & TOUCH_MASK) === 0) this._n.touch(key, TOUCH_EVERY)
        return Promise.resolve(this._front.value(e))
      }
      const v = this._n.peek(key)
      const kind = this._sc[3]
      if (kind !== 0) {
        const state = this._sc[4]
        // Fresh: hold it in the front cache (stale or due: not).
        const value = state === 0 ? this._keep(key, kind, v) : this._decode(kind, v)
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
      if (r[0] !== 0) return this._decodeOne(r)
    }
    for (;;) {
      const led = await this._lead(key, factory, options, false)
      if (led !== NOT_LEADER) return led
      const r = await this._n.flightWait(key)
      if (typeof r === 'string') throw flightError(r)
      if (r.length > 0) return this._decodeOne(r)
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
      this._front.maxEntries = 0
    }
    return this._n.close()
  }
}

const NOT_LEADER = Symbol('not leader')

module.exports = { CacheManager, encode, decode }
