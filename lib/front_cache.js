'use strict'
// The per-thread front cache of CacheManager: hot values on this thread's JS
// heap, so a hot read is a Map lookup and a typed-array compare, with no
// native call, no copy and no parse.
//
// Coherence: every entry is held under the (slot, version) of the shared
// version table (an Int32Array over native memory, the same for every thread)
// that it was read or written under. The native side bumps a key's slot after
// every write, delete, eviction, expiry and remote invalidation, from any
// thread, so an entry is served only while its slot still reads its version
// (and before its own expiry).
//
// Objects and arrays: in 'frozen' mode an entry holds the value parsed once
// and deep-frozen, and every reader gets that same value; in 'copy' mode it
// holds the JSON text and every read parses a fresh copy. A value written on
// this thread by setSync is held as its JSON text and parsed on its first read.
//
// Bounds: at most `maxEntries` entries and `maxBytes` bytes (UTF-16 code
// units of key + value: a string's length, an object's JSON text length, 8
// for other values), kept with CLOCK (second chance): a hit sets the entry's
// reference bit; to make room, a hand sweeps the ring, clearing set bits and
// evicting the first entry whose bit is clear (or whose version is stale).
// A new entry starts with its bit clear, so a scan of one-off keys evicts
// itself rather than the hot set, and a working set larger than the cache
// costs one eviction per fill instead of a wholesale clear.

const { now } = require('./clock')

/** Freeze `v` and every object and array inside it; returns `v`. */
function deepFreeze(v) {
  if (Array.isArray(v)) {
    for (let i = 0; i < v.length; i++) {
      const x = v[i]
      if (typeof x === 'object' && x !== null) deepFreeze(x)
    }
  } else {
    for (const k in v) {
      const x = v[k]
      if (typeof x === 'object' && x !== null) deepFreeze(x)
    }
  }
  return Object.freeze(v)
}

class FrontEntry {
  constructor(key, val, text, weight, slot, ver, exp, pos) {
    this.key = key
    /** The value served when `text` is null (objects: deep-frozen). */
    this.val = val
    /** An object's or array's JSON text, while it is not (or, in copy mode, never) held parsed. */
    this.text = text
    /** Bytes this entry counts against `maxBytes`. */
    this.weight = weight
    /** Version-table slot of the key, and the version the value is valid under. */
    this.slot = slot
    this.ver = ver
    /** Absolute expiry on the JS clock (ms); 0 = none. */
    this.exp = exp
    /** CLOCK reference bit: 1 after a hit, cleared by the sweeping hand. */
    this.ref = 0
    /** Index in the ring. */
    this.pos = pos
  }
}

class FrontCache {
  /**
   * @param {Int32Array} versions the shared version table (native u32 counters read as int32)
   * @param {number} maxEntries 0 disables the front cache
   * @param {number} maxBytes
   * @param {boolean} copy objects and arrays are parsed afresh on every read
   */
  constructor(versions, maxEntries, maxBytes, copy) {
    this.versions = versions
    this.maxEntries = maxEntries
    this.maxBytes = maxBytes
    this.copy = copy
    this.map = new Map()
    this.ring = []
    this.free = []
    this.hand = 0
    this.bytes = 0
  }

  get size() {
    return this.map.size
  }

  /**
   * The entry for `key` if it is still valid and has more than `marginMs`
   * left before its expiry (marks it referenced); a stale entry is dropped.
   */
  live(key, marginMs) {
    const e = this.map.get(key)
    if (e === undefined) return undefined
    if (this.versions[e.slot] === e.ver && (e.exp === 0 || e.exp - now() > marginMs)) {
      e.ref = 1
      return e
    }
    if (this.versions[e.slot] !== e.ver || e.exp <= now()) this.remove(e)
    return undefined
  }

  /** What a read of entry `e` returns. */
  value(e) {
    const text = e.text
    if (text === null) return e.val
    if (this.copy) return JSON.parse(text)
    const v = deepFreeze(JSON.parse(text))
    e.val = v
    e.text = null
    return v
  }

  /**
   * Hold a value: `val` (strings, numbers, booleans, null, or a deep-frozen
   * object) or `text` (an object's JSON text, parsed on read), weighing
   * `valueWeight` bytes, valid while `slot` reads `ver`, for `remainingMs`
   * (< 0: no expiry).
   */
  set(key, val, text, valueWeight, slot, ver, remainingMs) {
    this.put(key, this.map.get(key), val, text, valueWeight, slot, ver, remainingMs)
  }

  /** As set(), for a key whose entry `e` the caller looked up (undefined: absent). */
  put(key, e, val, text, valueWeight, slot, ver, remainingMs) {
    if (this.maxEntries === 0) return
    // Small integers (not the doubles the scratch array holds), so an entry
    // keeps them unboxed and a hit compares two int32s.
    slot |= 0
    ver |= 0
    const weight = key.length + valueWeight
    if (weight > this.maxBytes) {
      if (e !== undefined) this.remove(e)
      return
    }
    const exp = remainingMs < 0 ? 0 : now() + remainingMs
    if (e !== undefined) {
      this.bytes += weight - e.weight
      e.val = val
      e.text = text
      e.weight = weight
      e.slot = slot
      e.ver = ver
      e.exp = exp
    } else {
      while (this.map.size >= this.maxEntries) this.evictOne(null)
      const pos = this.free.length > 0 ? this.free.pop() : this.ring.length
      e = new FrontEntry(key, val, text, weight, slot, ver, exp, pos)
      this.ring[pos] = e
      this.map.set(key, e)
      this.bytes += weight
    }
    while (this.bytes > this.maxBytes) this.evictOne(e)
  }

  delete(key) {
    const e = this.map.get(key)
    if (e !== undefined) this.remove(e)
  }

  remove(e) {
    this.map.delete(e.key)
    this.ring[e.pos] = null
    this.free.push(e.pos)
    this.bytes -= e.weight
  }

  /** Evict one entry (never `keep`): the first unreferenced or stale one after the hand. */
  evictOne(keep) {
    const ring = this.ring
    for (;;) {
      if (this.hand >= ring.length) this.hand = 0
      const e = ring[this.hand++]
      if (e === null || e === keep) continue
      if (e.ref === 1 && this.versions[e.slot] === e.ver) {
        e.ref = 0
        continue
      }
      this.remove(e)
      return
    }
  }

  clear() {
    this.map.clear()
    this.ring = []
    this.free = []
    this.hand = 0
    this.bytes = 0
  }
}

module.exports = { FrontCache, deepFreeze }
