'use strict'
// BufferPool: the JS-facing class over the native pool (src/buffer_pool.rs).
//
// allocate() is one native call that returns a Buffer over pooled native
// memory (its own external ArrayBuffer). release() is one native call that
// finds the Buffer's outstanding record by its data pointer and length (so a
// foreign Buffer, a view into a pooled one or a released one is refused and
// nothing changes), detaches it and hands the memory to the runtime's threads
// to be zeroed. Only released ArrayBuffers are remembered here (a WeakMap), to
// tell a second release (ERR_BUFFER_RELEASED) from a foreign Buffer.

const { NativeBufferPool } = require('./native.js')
const { CODES, hpError, invalidArg, rangeError, misuse, closedError, checkOptions, optNumber, optName, optBoolean, fromNative, settled, show, MAX_BYTES } = require('./errors')

/** The largest size allocate() accepts: 2 GiB - 1. */
const MAX_SIZE = 2 ** 31 - 1

// ArrayBuffer -> id of the pool that released it.
const released = new WeakMap()
// Zero-length Buffers (no memory, nothing native to find): ArrayBuffer -> pool id.
const empties = new WeakMap()

class BufferPool {
  constructor(options) {
    checkOptions(options, 'options')
    optName(options)
    optNumber(options, 'chunkSize', { min: 1, max: MAX_BYTES, integer: true, unit: 'bytes' })
    optNumber(options, 'maxPooledBytes', { min: 0, max: MAX_BYTES, integer: true, unit: 'bytes' })
    optBoolean(options, 'zeroOnRelease')
    // HOTPATH_BUFFERPOOL_PLAIN=1: plain Buffers, as where external buffers are
    // not allowed (Electron's V8 sandbox) — to test what those users get.
    const plain = process.env.HOTPATH_BUFFERPOOL_PLAIN === '1'
    try {
      this._n = new NativeBufferPool(options, plain)
    } catch (e) {
      throw fromNative(e)
    }
    this._id = this._n.id()
    this._external = this._n.external()
    this._closed = false
  }

  /** false when Buffers are plain (external buffers are not allowed in this
   *  runtime): memory is then not reused, and release only detaches. */
  get external() {
    return this._external
  }

  allocate(size) {
    if (typeof size !== 'number') throw invalidArg(`size must be a number, got ${show(size)}`)
    if (!(size >= 0 && size <= MAX_SIZE) || !Number.isInteger(size)) {
      throw rangeError(`size must be an integer from 0 to ${MAX_SIZE}, got ${size}`)
    }
    if (this._closed) throw closedError('BufferPool')
    let buf
    try {
      buf = this._n.allocate(size)
    } catch (err) {
      throw fromNative(err)
    }
    if (size === 0) empties.set(buf.buffer, this._id)
    return buf
  }

  release(buffer) {
    if (!Buffer.isBuffer(buffer)) throw invalidArg(`release takes a Buffer this pool allocated, got ${show(buffer)}`)
    if (this._closed) throw closedError('BufferPool')
    let done
    try {
      done = this._n.release(buffer)
    } catch (err) {
      throw fromNative(err)
    }
    if (done) {
      released.set(buffer.buffer, this._id)
      return
    }
    const ab = buffer.buffer
    if (released.get(ab) === this._id) {
      throw hpError(CODES.BUFFER_RELEASED, `this Buffer was released already (a Buffer is released once; its length is now ${buffer.length})`)
    }
    if (buffer.length === 0 && empties.get(ab) === this._id) {
      this._n.releaseEmpty()
      released.set(ab, this._id)
      return
    }
    if (buffer.byteOffset !== 0 || buffer.length !== ab.byteLength) {
      throw misuse(
        `release takes a Buffer allocate() returned, not a view (byteOffset ${buffer.byteOffset}, length ${buffer.length} of ${ab.byteLength}); this one this pool did not allocate`,
      )
    }
    throw misuse('release takes a Buffer this pool allocated; this one it did not')
  }

  trim() {
    if (this._closed) throw closedError('BufferPool')
    try {
      this._n.trim()
    } catch (err) {
      throw fromNative(err)
    }
  }

  /** Resolves when every released block has been zeroed and is back in the
   *  pool (allocate hits again), or freed. */
  flush() {
    if (this._closed) return Promise.reject(closedError('BufferPool'))
    return settled(this._n.flush())
  }

  stats() {
    try {
      return this._n.stats()
    } catch (err) {
      throw fromNative(err)
    }
  }

  close() {
    this._closed = true
    return settled(this._n.close())
  }
}

module.exports = { BufferPool, MAX_SIZE }
