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

const { NativeCache } = require('./native.js')
const { CODES, HotpathError, hpError, invalidArg, checkKey, checkOptions, optNumber, optDuration, optTtl: ttlOption, optName, oneOf, checkRedisOptions, fromNative, settled, restack, detached, show, MAX_COUNT, MAX_BYTES } = require('./errors')
const { FrontCache, deepFreeze } = require('./front_cache')
const { cacheWrap, cacheWarm } = require('./wrap')

const K_STR = 1
const K_NUM = 2
const K_BOOL = 3
const K_NULL = 4
const K_JSON = 5
const K_BYTES = 6

// Every 256th front hit (per handle) goes native: it records the 256 hits in
// the stats and touches the key hit (counted as 8 reads by TinyLFU), so L1's
// policy sees hot keys in proportion to their reads (a 1-in-256 sample). A
// touch is a native L1 access with its cache misses (~1-1.5 µs measured
// here): at 1-in-64 it was ~30% of a hot getSync.
const TOUCH_EVERY = 256
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
      if (value.isWellFormed()) {
        encKind = K_STR
        encPayload = value
      } else {
        // Lone surrogates survive as JSON escapes (`"\ud800"`), not as UTF-8.
        encKind = K_JSON
        encPayload = JSON.stringify(value)
      }
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
  }
}

// The reads of one tick share one native Promise, resolved with all their
// results (`[kind0, payload0, kind1, ...]`); read `i` takes `[kind, payload]`
// at `2 * i`. One function per index and read mode, made once, so a read
// costs no closure.
const PICKS = [[], []]
function picker(frozen, i) {
  const picks = PICKS[frozen ? 1 : 0]
  let f = picks[i]
  if (f === undefined) {
    const one = frozen ? decodeFrozen : decode
    const k = 2 * i
    f = picks[i] = (r) => one(r[k], r[k + 1])
  }
  return f
}

// A rejection of a native read, as `settled` would rethrow it.
function rejected(err) {
  throw restack(err)
}

function setOptions(options) {
  if (options === undefined) return
  checkOptions(options, 'options')
  const ttl = ttlOption(options, 'ttlMs', { exclusiveMin: true })
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
  const e = o.name === 'HotpathError' && typeof o.code === 'string' ? new HotpathError(o.code, o.message) : new Error(o.message)
  if (o.name && o.name !== 'Error' && o.name !== 'HotpathError') e.name = o.name
  if (o.code) e.code = o.code
  return e
}

/** The options a CacheManager takes, checked before they reach native code. */
function checkCacheOptions(o) {
  if (o === undefined) return
  checkOptions(o, 'options')
  optName(o)
  optNumber(o, 'maxEntries', { min: 1, integer: true })
  optNumber(o, 'maxBytes', { min: 1, max: MAX_BYTES, integer: true, unit: 'bytes' })
  ttlOption(o, 'ttlMs', { exclusiveMin: true })
  ttlOption(o, 'l1TtlMs', { exclusiveMin: true })
  ttlOption(o, 'idleMs', { exclusiveMin: true })
  oneOf(o, 'policy', ['tinylfu', 'lru'])
  checkRedisOptions(o.redis)
  oneOf(o, 'invalidation', ['pubsub', 'none'])
  ttlOption(o, 'staleMs')
  ttlOption(o, 'refreshAheadMs')
  optNumber(o, 'frontCacheEntries', { min: 0, max: MAX_COUNT, integer: true })
  optNumber(o, 'frontCacheBytes', { min: 0, max: MAX_BYTES, integer: true })
  oneOf(o, 'readMode', ['frozen', 'copy'])
  optNumber(o, 'maxPendingWrites', { min: 1, max: MAX_COUNT, integer: true })
}

// A native call that may throw (closed, a bug): its error as a hotpath error.
function rethrow(err) {
  throw fromNative(err)
}

const noop = () => {}

// singleFlight 'redis': how often a process waiting on another's lease looks
// at Redis when no invalidation message woke it.
const LEASE_POLL_MS = 100

function abortedError(signal) {
  return detached(hpError(CODES.ABORTED, 'getOrSet was aborted', signal.reason !== undefined ? { cause: signal.reason } : undefined))
}

function isSignal(s) {
  return typeof s === 'object' && s !== null && typeof s.aborted === 'boolean' && typeof s.addEventListener === 'function'
}

/** getOrSet's `timeoutMs` and `signal`, checked; null when neither is set. */
function waitOptions(options) {
  const timeoutMs = optDuration(options, 'timeoutMs', { exclusiveMin: true })
  const signal = options.signal
  if (signal !== undefined && !isSignal(signal)) throw invalidArg(`signal must be an AbortSignal, got ${show(signal)}`)
  oneOf(options, 'singleFlight', ['process', 'redis'])
  if (timeoutMs === undefined && signal === undefined) return null
  return { timeoutMs, signal }
}

/** One caller's bound: rejects `stop` with ERR_TIMEOUT after timeoutMs, or
 *  ERR_ABORTED when the signal aborts. `done()` releases the timer. */
class Wait {
  constructor({ timeoutMs, signal }) {
    this.end = timeoutMs === undefined ? 0 : Date.now() + timeoutMs
    this.reason = null
    this.timer = null
    this.signal = signal
    this.onAbort = null
    this.stop = new Promise((_, reject) => {
      const fail = (e) => {
        if (this.reason === null) {
          this.reason = e
          reject(e)
        }
      }
      if (timeoutMs !== undefined) {
        this.timer = setTimeout(() => fail(detached(hpError(CODES.TIMEOUT, `getOrSet timed out after ${timeoutMs} ms`))), timeoutMs)
      }
      if (signal !== undefined) {
        this.onAbort = () => fail(abortedError(signal))
        signal.addEventListener('abort', this.onAbort, { once: true })
      }
    })
    this.stop.catch(noop)
  }

  remainingMs() {
    return this.end === 0 ? -1 : Math.max(1, this.end - Date.now())
  }

  done() {
    if (this.timer !== null) clearTimeout(this.timer)
    if (this.onAbort !== null) this.signal.removeEventListener('abort', this.onAbort)
    this.timer = this.onAbort = null
  }
}

function race(p, wait) {
  return wait === null ? p : Promise.race([p, wait.stop])
}

class CacheManager {
  constructor(options) {
    checkCacheOptions(options)
    const readMode = options?.readMode
    try {
      this._n = new NativeCache(options)
    } catch (e) {
      throw fromNative(e)
    }
    this._ver = new Int32Array(this._n.versions())
    this._sc = new Float64Array(this._n.scratch())
    this._copy = readMode === 'copy'
    this._front = new FrontCache(this._ver, this._n.frontCapacity(), this._n.frontBytes(), this._copy)
    const d = decoders(!this._copy)
    this._decode = this._copy ? decode : decodeFrozen
    this._decodeOne = d.one
    this._hasL2 = this._n.hasL2()
    this._flights = new Map()
    this._l2p = null // the Promise of this tick's L2 reads (see _l2)
    this._l2i = 0
    this._closed = false
    this._hits = 0 // front hits; every 256th is reported (see TOUCH_EVERY)
    this._ra = options?.refreshAheadMs > 0 ? options.refreshAheadMs : 0
  }

  // Fill from L1 (native) into the front cache.
  _load(key, countMiss, missed) {
    let v
    try {
      v = this._n.getSync(key, countMiss)
    } catch (err) {
      rethrow(err)
    }
    const kind = this._sc[3]
    if (kind === 0) return undefined
    // `missed`: the caller's live(key, 0) just missed, so the front cache
    // has no entry for the key (live dropped any it had).
    return this._keep(key, kind, v, missed ? undefined : this._front.map.get(key))
  }

  // A value just read natively (its slot, version and TTL in the scratch
  // array): hold it in the front cache and return what the read returns.
  // `e`: the key's front entry, if it has one.
  _keep(key, kind, v, e) {
    const sc = this._sc
    const f = this._front
    if (kind === K_BYTES) return v
    if (kind === K_JSON) {
      if (this._copy) {
        f.put(key, e, undefined, v, v.length, sc[0], sc[1], sc[2])
        return JSON.parse(v)
      }
      const o = deepFreeze(JSON.parse(v))
      f.put(key, e, o, null, v.length, sc[0], sc[1], sc[2])
      return o
    }
    if (kind === K_NULL) v = null
    f.put(key, e, v, null, kind === K_STR ? v.length : 8, sc[0], sc[1], sc[2])
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
    return this._load(key, true, true)
  }

  get(key) {
    try {
      const e = this._front.live(key, 0)
      if (e !== undefined) {
        if ((++this._hits & TOUCH_MASK) === 0) this._n.touch(key, TOUCH_EVERY)
        return Promise.resolve(this._front.value(e))
      }
      checkKey(key)
      if (!this._hasL2) return Promise.resolve(this._load(key, true, true))
      // L1, then (on a miss) L2, in one native call.
      let v
      try {
        v = this._n.get(key)
      } catch (err) {
        rethrow(err)
      }
      const kind = this._sc[3]
      if (kind !== 0) return Promise.resolve(this._keep(key, kind, v, undefined))
      const p = this._batch(v)
      return p.then(picker(!this._copy, this._l2i), rejected)
    } catch (err) {
      return Promise.reject(err)
    }
  }

  // Native getL2: the Promise of the read's batch results, the read's index
  // in them left in `_l2i` (see NativeCache#getL2).
  _l2(key) {
    return this._batch(this._n.getL2(key))
  }

  // What native getL2 (or get, on an L1 miss) returned, `p`: the Promise of
  // the read's batch results; its index in them is left in `_l2i`.
  _batch(p) {
    const i = this._sc[5]
    if (i < 0) {
      this._l2i = 0
      return p
    }
    this._l2i = i
    if (i === 0) this._l2p = p
    return this._l2p
  }

  // One L2 read's `[kind, payload]` (getOrSet).
  _l2Pair(key) {
    const p = this._l2(key)
    const k = 2 * this._l2i
    return k === 0 ? p : p.then((r) => [r[k], r[k + 1]])
  }

  // Front hits first; one native call (and at most one L2 round trip) for
  // the keys this thread's front cache does not hold.
  getMany(keys) {
    try {
      if (!Array.isArray(keys)) throw invalidArg(`keys must be an array of strings, got ${show(keys)}`)
      for (const k of keys) checkKey(k)
      const out = new Array(keys.length)
      let missing = null
      let where = null
      for (let i = 0; i < keys.length; i++) {
        const key = keys[i]
        const e = this._front.live(key, 0)
        if (e !== undefined) {
          if ((++this._hits & TOUCH_MASK) === 0) this._n.touch(key, TOUCH_EVERY)
          out[i] = this._front.value(e)
        } else if (missing === null) {
          missing = [key]
          where = [i]
        } else {
          missing.push(key)
          where.push(i)
        }
      }
      if (missing === null) return Promise.resolve(out)
      const decode = this._decode
      return settled(this._n.getMany(missing)).then((arr) => {
        for (let j = 0; j < where.length; j++) out[where[j]] = decode(arr[2 * j], arr[2 * j + 1])
        return out
      })
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
      const p = this._n.set(key, encKind, encPayload, optTtl, optTags)
      this._keepWritten(key, value)
      return settled(p).then(noop)
    } catch (err) {
      return Promise.reject(err)
    }
  }

  setSync(key, value, options) {
    checkKey(key)
    encode(value)
    optTtl = optTags = undefined
    setOptions(options)
    try {
      this._n.setSync(key, encKind, encPayload, optTtl, optTags)
    } catch (err) {
      rethrow(err)
    }
    this._keepWritten(key, value)
  }

  // After set/setSync: hold what was written (encode()'s result), so a
  // following read on this thread is a front hit (an object as its JSON
  // text, parsed on first read: the caller's own object is never shared or
  // frozen). The native side left the slot and the version to hold it under,
  // or -1 when the value was not kept or another change raced this one.
  _keepWritten(key, value) {
    const sc = this._sc
    if (sc[1] < 0 || encKind === K_BYTES) {
      this._front.delete(key)
      return
    }
    if (encKind === K_JSON) this._front.set(key, undefined, encPayload, encPayload.length, sc[0], sc[1], sc[2])
    else this._front.set(key, encKind === K_NULL ? null : value, null, encKind === K_STR ? value.length : 8, sc[0], sc[1], sc[2])
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
      return settled(this._n.setMany(keys, kinds, payloads, optTtl, optTags)).then(noop)
    } catch (err) {
      return Promise.reject(err)
    }
  }

  has(key) {
    if (this._front.live(key, 0) !== undefined) return true
    checkKey(key)
    try {
      return this._n.has(key)
    } catch (err) {
      rethrow(err)
    }
  }

  // getOrSet: the whole protocol is here (the engine keeps the flights).
  //  1. L1 (front cache, then native peek): a fresh value is served; a stale
  //     one or one due for refresh-ahead is served and refreshed once in the
  //     background.
  //  2. L2 (with redis).
  //  3. The flight: one caller per key in the process leads (runs the
  //     factory, writes the value, ends the flight with its token); the others
  //     wait for its value or error. A leader that gives up (timeoutMs,
  //     signal) abandons the flight, and one whose thread died is detected by
  //     the engine: either way the waiters look again and one of them leads.
  //  Every caller's wait (leader's included) is bounded by its own timeoutMs
  //  and signal.
  getOrSet(key, factory, options) {
    try {
      checkKey(key)
      if (typeof factory !== 'function') throw invalidArg(`factory must be a function, got ${show(factory)}`)
      let wait = null
      let acrossProcesses = false
      if (options !== undefined) {
        setOptions(options)
        wait = waitOptions(options)
        if (options.singleFlight === 'redis') {
          if (!this._hasL2) throw invalidArg("singleFlight 'redis' needs the redis option")
          acrossProcesses = true
        }
      }
      // A front hit inside the refresh-ahead margin goes to peek(), which
      // starts the background refresh.
      const e = this._front.live(key, this._ra)
      if (e !== undefined) {
        if ((++this._hits & TOUCH_MASK) === 0) this._n.touch(key, TOUCH_EVERY)
        return Promise.resolve(this._front.value(e))
      }
      let v
      try {
        v = this._n.peek(key)
      } catch (err) {
        rethrow(err)
      }
      const kind = this._sc[3]
      if (kind !== 0) {
        const state = this._sc[4]
        // Fresh: hold it in the front cache (stale or due: not).
        const value = state === 0 ? this._keep(key, kind, v, this._front.map.get(key)) : this._decode(kind, v)
        if (state !== 0) this._refresh(key, factory, options)
        return Promise.resolve(value)
      }
      if (wait !== null && wait.signal?.aborted) throw abortedError(wait.signal)
      // settled: a rejection made in background work (a native wait, a
      // timer) is re-made on the caller's await chain, for its stack.
      return settled(this._fly(key, factory, options, wait === null ? null : new Wait(wait), acrossProcesses))
    } catch (err) {
      return Promise.reject(err)
    }
  }

  // Stale or nearly expired: refresh once in the background (single flight).
  _refresh(key, factory, options) {
    if (this._flights.has(key)) return
    const token = this._n.flightLead(key)
    if (token !== 0) this._start(key, token, factory, options, null, false).p.catch(noop)
  }

  // Lead the flight: callers on this thread join `entry.p` (and so get the
  // very value or error); callers on other threads wait natively.
  _start(key, token, factory, options, wait, acrossProcesses) {
    const entry = { p: null, abandoned: false, acrossProcesses }
    this._flights.set(key, entry)
    entry.p = this._lead(key, token, factory, options, wait, entry)
    const done = () => {
      if (this._flights.get(key) === entry) this._flights.delete(key)
    }
    entry.p.then(done, done)
    return entry
  }

  async _fly(key, factory, options, wait, acrossProcesses) {
    try {
      if (this._hasL2) {
        const r = await race(this._l2Pair(key), wait)
        if (r[0] !== 0) return this._decodeOne(r)
      }
      for (;;) {
        const local = this._flights.get(key)
        if (local !== undefined) {
          try {
            return await race(local.p, wait)
          } catch (err) {
            // The leader on this thread gave up (its own timeout or signal):
            // look again; anything else is the flight's error.
            if (!local.abandoned || (wait !== null && err === wait.reason)) throw err
            if (this._flights.get(key) === local) this._flights.delete(key)
            continue
          }
        }
        const token = this._n.flightLead(key)
        if (token !== 0) return await this._start(key, token, factory, options, wait, acrossProcesses).p
        const r = await race(this._n.flightWait(key, wait === null ? -1 : wait.remainingMs()), wait)
        if (typeof r === 'string') throw flightError(r)
        if (r.length > 0) return this._decodeOne(r)
        // The flight is over without a value for us (it ended before we
        // looked, or its leader gave up or died): its value may be in L1 now;
        // if not, lead.
        const v = this._load(key, false, false)
        if (v !== undefined) return v
      }
    } finally {
      wait?.done()
    }
  }

  async _lead(key, token, factory, options, wait, entry) {
    // From here the flight must end exactly once, whatever happens, or waiters
    // would wait until their own timeout.
    let ended = false
    let leased = false
    let taking = null // a lease request whose answer this caller may not wait for
    try {
      if (entry.acrossProcesses) {
        // singleFlight 'redis': one factory run across processes. Take the
        // lease, or wait for the holder's value (woken by its invalidation
        // message, polled as a fallback); a dead holder's lease expires and
        // is taken over here.
        for (;;) {
          taking = this._n.leaseAcquire(key)
          leased = await race(taking, wait)
          taking = null
          // Double check after taking it: the last holder may just have
          // written the value and released.
          const r = leased ? await race(this._l2Pair(key), wait) : await race(this._n.leaseWait(key, LEASE_POLL_MS), wait)
          if (r.length > 0 && r[0] !== 0) {
            const value = this._decodeOne(r)
            encode(value)
            this._n.flightEnd(key, token, encKind, encPayload)
            ended = true
            return value
          }
          if (leased) break
        }
      }
      const value = await race(new Promise((resolve) => resolve(factory())), wait)
      encode(value)
      const kind = encKind
      const payload = encPayload
      optTtl = optTags = undefined
      setOptions(options)
      const written = this._n.set(key, kind, payload, optTtl, optTags)
      this._n.flightEnd(key, token, kind, payload)
      ended = true
      // The value is in L1 now: later misses must not join this flight while
      // its L2 write finishes.
      if (this._flights.get(key) === entry) this._flights.delete(key)
      await written
      return value
    } catch (err) {
      if (!ended) {
        if (wait !== null && err === wait.reason) {
          entry.abandoned = true
          this._n.flightAbandon(key, token)
        } else this._n.flightFail(key, token, String(err?.code ?? ''), String(err?.message ?? err), String(err?.name ?? 'Error'))
      }
      throw err
    } finally {
      // Released once the value has landed in Redis (or the factory failed).
      if (leased) this._n.leaseRelease(key).catch(noop)
      else if (taking !== null) {
        taking.then((got) => {
          if (got) this._n.leaseRelease(key).catch(noop)
        }, noop)
      }
    }
  }

  delete(key) {
    try {
      checkKey(key)
      return settled(this._n.deleteMany([key])).then((n) => n > 0)
    } catch (err) {
      return Promise.reject(err)
    }
  }

  deleteMany(keys) {
    try {
      if (!Array.isArray(keys)) throw invalidArg(`keys must be an array of strings, got ${show(keys)}`)
      for (const k of keys) checkKey(k)
      return settled(this._n.deleteMany(keys))
    } catch (err) {
      return Promise.reject(err)
    }
  }

  deletePattern(glob) {
    try {
      checkKey(glob, 'glob')
      return settled(this._n.deletePattern(glob))
    } catch (err) {
      return Promise.reject(err)
    }
  }

  deleteTag(tag) {
    try {
      checkKey(tag, 'tag')
      return settled(this._n.deleteTag(tag))
    } catch (err) {
      return Promise.reject(err)
    }
  }

  deleteLater(key, delayMs) {
    checkKey(key)
    if (delayMs === undefined) throw invalidArg('delayMs must be a number, got undefined')
    optDuration({ delayMs }, 'delayMs')
    try {
      this._n.deleteLater(key, delayMs)
    } catch (err) {
      rethrow(err)
    }
  }

  remainingTtlMs(key) {
    try {
      checkKey(key)
      return settled(this._n.remainingTtlMs(key)).then((ms) => (ms === -2 ? undefined : ms))
    } catch (err) {
      return Promise.reject(err)
    }
  }

  clear() {
    try {
      this._front.clear()
      return settled(this._n.clear())
    } catch (err) {
      return Promise.reject(err)
    }
  }

  stats() {
    try {
      this._flushHits()
      return this._n.stats()
    } catch (err) {
      rethrow(err)
    }
  }

  close() {
    if (!this._closed) {
      this._closed = true
      this._flushFront()
      this._front.maxEntries = 0
    }
    return settled(this._n.close())
  }

  // Functions instead of keys (lib/wrap.js).
  wrap(fn, options) {
    return cacheWrap(this, fn, options)
  }

  warm(loaders, options) {
    return cacheWarm(this, loaders, options)
  }
}

module.exports = { CacheManager, encode, decode }
