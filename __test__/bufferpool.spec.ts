// BufferPool. The runner starts node with --expose-gc (reclaim after GC).
import { test, describe } from 'node:test'
import assert from 'node:assert/strict'
import { setImmediate as tick } from 'node:timers/promises'
import { Worker } from 'node:worker_threads'
import { BufferPool } from 'hotpath'

const code = (c: string) => ({ code: c })
const KiB = 1024
const MiB = 1024 * 1024

function gc() {
  const g = (globalThis as { gc?: () => void }).gc
  if (!g) throw new Error('run with --expose-gc (node scripts/test.mjs does)')
  g()
}

/** GC until `cond` holds: finalizers of collected Buffers run on a later
 *  turn of the event loop, after V8 has freed their backing stores. */
async function collectUntil(cond: () => boolean, what: string) {
  for (let i = 0; i < 500; i++) {
    if (cond()) return
    gc()
    await tick()
  }
  throw new Error(`after 500 GCs, still not: ${what}`)
}

const classOf = (size: number, chunk: number) =>
  size <= 64 ? 64 : size <= chunk ? 2 ** Math.ceil(Math.log2(size)) : Math.ceil(size / chunk) * chunk

test('allocate returns exactly `size` bytes, each Buffer with its own ArrayBuffer', async () => {
  const chunk = 64 * KiB
  const pool = new BufferPool({ chunkSize: chunk })
  const sizes = [1, 63, 64, 65, 1000, 1024, 4097, chunk - 1, chunk, chunk + 1, 3 * chunk - 5, 5 * chunk]
  let expected = 0
  const bufs = sizes.map((size) => {
    const b = pool.allocate(size)
    assert.ok(Buffer.isBuffer(b))
    assert.equal(b.length, size)
    assert.equal(b.byteOffset, 0)
    assert.equal(b.buffer.byteLength, size, 'its own ArrayBuffer, not a slice of a block')
    expected += classOf(size, chunk)
    return b
  })
  assert.equal(new Set(bufs.map((b) => b.buffer)).size, sizes.length)
  const s = pool.stats()
  assert.equal(s.outstandingBytes, expected, 'block bytes: the size class, or whole chunks above chunkSize')
  assert.equal(s.allocations, sizes.length)
  assert.equal(s.misses, sizes.length)
  // Size 0: an empty Buffer, counted, releasable once.
  const empty = pool.allocate(0)
  assert.equal(empty.length, 0)
  pool.release(empty)
  assert.throws(() => pool.release(empty), code('ERR_BUFFER_RELEASED'))
  for (const b of bufs) pool.release(b)
  assert.equal(pool.stats().outstandingBytes, 0)
  await pool.close()
})

test('memory is zeroed on first use and on reuse after dirty writes', async () => {
  const chunk = 64 * KiB
  const pool = new BufferPool({ chunkSize: chunk })
  for (const size of [100, 4096, 60_000, chunk, 2 * chunk + 7]) {
    const a = pool.allocate(size)
    assert.ok(a.every((x) => x === 0), `fresh ${size} bytes are zero`)
    a.fill(0xa5)
    const hits = pool.stats().hits
    pool.release(a)
    await pool.flush() // zeroed on the runtime's threads, then back in the pool
    const b = pool.allocate(size)
    assert.equal(pool.stats().hits, hits + 1, `the ${size}-byte block was reused`)
    assert.equal(b.length, size)
    assert.ok(b.every((x) => x === 0), `reused ${size} bytes are zero after another user's writes`)
    pool.release(b)
  }
  await pool.close()
})

test('allocate never hands out a block that is still being zeroed', async () => {
  const pool = new BufferPool()
  for (let round = 0; round < 20; round++) {
    const bufs = Array.from({ length: 8 }, () => pool.allocate(256 * KiB))
    for (const b of bufs) {
      assert.ok(b[0] === 0 && b[b.length - 1] === 0 && b.every((x) => x === 0))
      b.fill(0xff)
    }
    for (const b of bufs) pool.release(b) // no flush: allocate races the zeroing
  }
  await pool.close()
})

test('release detaches the Buffer: a stale reference can never touch reused memory', async () => {
  const pool = new BufferPool()
  const a = pool.allocate(4096)
  const view = new Uint8Array(a.buffer) // another view of the same memory
  a.fill(1)
  pool.release(a)
  assert.equal(a.length, 0)
  assert.equal(a.buffer.byteLength, 0)
  assert.equal(view.length, 0, 'every view of it is detached')
  await pool.flush()
  const b = pool.allocate(4096)
  assert.equal(pool.stats().hits, 1, 'same memory, new owner')
  b.fill(2)
  a[0] = 99 // writes to a detached Buffer go nowhere
  assert.equal(a[0], undefined)
  assert.equal(b[0], 2)
  assert.equal(a.toString('hex'), '')
  assert.throws(() => a.readUInt8(0), RangeError)
  pool.release(b)
  await pool.close()
})

test('double and foreign release throw and change nothing', async () => {
  const pool = new BufferPool()
  const other = new BufferPool()
  const a = pool.allocate(1000)
  const keep = pool.allocate(2000)
  keep.fill(3)
  pool.release(a)
  const before = pool.stats()
  assert.throws(() => pool.release(a), code('ERR_BUFFER_RELEASED'))
  assert.throws(() => pool.release(Buffer.alloc(10)), code('ERR_INVALID_ARG'))
  assert.throws(() => pool.release(Buffer.allocUnsafe(10)), code('ERR_INVALID_ARG'))
  assert.throws(() => pool.release(new Uint8Array(10) as Buffer), code('ERR_INVALID_ARG'))
  assert.throws(() => pool.release('buf' as unknown as Buffer), { code: 'ERR_INVALID_ARG', name: 'TypeError' })
  assert.throws(() => pool.release(null as unknown as Buffer), code('ERR_INVALID_ARG'))
  const foreign = other.allocate(1000)
  assert.throws(() => pool.release(foreign), code('ERR_INVALID_ARG'))
  assert.throws(() => pool.release(keep.subarray(8)), code('ERR_INVALID_ARG'), 'a view into a pooled Buffer is not the Buffer')
  assert.throws(() => pool.release(keep.subarray(0, 100)), code('ERR_INVALID_ARG'))
  assert.deepEqual(pool.stats(), before)
  assert.equal(keep.length, 2000, 'not detached by the refused release')
  assert.ok(keep.every((x) => x === 3))
  assert.equal(foreign.length, 1000)
  other.release(foreign)
  assert.throws(() => pool.release(foreign), code('ERR_INVALID_ARG'), "released by its own pool: still not this pool's")
  pool.release(keep)
  await Promise.all([pool.close(), other.close()])
})

test('pooled memory never exceeds maxPooledBytes; trim frees it all', async () => {
  const pool = new BufferPool({ maxPooledBytes: 4 * KiB })
  const bufs = Array.from({ length: 8 }, () => pool.allocate(KiB))
  for (const b of bufs) pool.release(b)
  assert.equal(pool.stats().pooledBytes, 4 * KiB, 'four kept, four freed')
  await pool.flush()
  assert.equal(pool.stats().pooledBytes, 4 * KiB)
  const again = Array.from({ length: 5 }, () => pool.allocate(KiB))
  let s = pool.stats()
  assert.equal(s.hits, 4)
  assert.equal(s.misses, 9)
  assert.equal(s.pooledBytes, 0)
  for (const b of again) pool.release(b)
  await pool.flush()
  assert.equal(pool.stats().pooledBytes, 4 * KiB)
  pool.trim()
  s = pool.stats()
  assert.equal(s.pooledBytes, 0)
  pool.allocate(KiB)
  assert.equal(pool.stats().misses, s.misses + 1, 'nothing left to reuse')
  // A block larger than maxPooledBytes is never kept.
  const big = pool.allocate(8 * KiB)
  pool.release(big)
  assert.equal(pool.stats().pooledBytes, 0)
  // maxPooledBytes 0: nothing is pooled.
  const none = new BufferPool({ maxPooledBytes: 0 })
  none.release(none.allocate(100))
  assert.equal(none.stats().pooledBytes, 0)
  await Promise.all([pool.close(), none.close()])
})

test('a Buffer never released is reclaimed when V8 collects it', async () => {
  const pool = new BufferPool({ maxPooledBytes: 64 * MiB })
  ;(() => {
    for (let i = 0; i < 40; i++) pool.allocate(64 * KiB).fill(0xee)
  })()
  assert.equal(pool.stats().outstandingBytes, 40 * 64 * KiB)
  await collectUntil(() => pool.stats().reclaimed === 40, '40 Buffers reclaimed')
  await pool.flush()
  const s = pool.stats()
  assert.equal(s.outstandingBytes, 0)
  assert.equal(s.pooledBytes, 40 * 64 * KiB, 'their memory is back in the pool')
  assert.equal(s.releases, 0)
  const b = pool.allocate(64 * KiB)
  assert.equal(pool.stats().hits, 1)
  assert.ok(b.every((x) => x === 0), 'and zeroed before reuse')
  await pool.close()
})

test("V8's external memory accounts outstanding Buffers, and only those", async () => {
  const pool = new BufferPool()
  gc()
  const before = process.memoryUsage().external
  const bufs = Array.from({ length: 32 }, () => pool.allocate(MiB))
  const during = process.memoryUsage().external
  const grown = during - before
  assert.ok(grown >= 31 * MiB && grown <= 34 * MiB, `external grew by ${(grown / MiB).toFixed(2)} MiB for 32 MiB outstanding`)
  for (const b of bufs) pool.release(b)
  gc()
  const after = process.memoryUsage().external
  assert.ok(after - before < MiB, `external is back (${((after - before) / MiB).toFixed(2)} MiB) while ${pool.stats().pooledBytes} bytes are pooled`)
  await pool.close()
})

test('stats are exact', async () => {
  const pool = new BufferPool({ chunkSize: 4 * KiB, maxPooledBytes: 64 * KiB })
  const zero = { hits: 0, misses: 0, pooledBytes: 0, outstandingBytes: 0, allocations: 0, releases: 0, reclaimed: 0 }
  assert.deepEqual(pool.stats(), zero)
  const a = pool.allocate(100) // 128
  const b = pool.allocate(4096) // 4096
  const c = pool.allocate(5000) // 2 chunks: 8192
  assert.deepEqual(pool.stats(), { ...zero, misses: 3, allocations: 3, outstandingBytes: 128 + 4096 + 8192 })
  pool.release(a)
  pool.release(c)
  assert.deepEqual(pool.stats(), { ...zero, misses: 3, allocations: 3, releases: 2, outstandingBytes: 4096, pooledBytes: 128 + 8192 })
  await pool.flush()
  const c2 = pool.allocate(8000) // the 2-chunk block again
  const a2 = pool.allocate(65) // 128: reused
  const d = pool.allocate(3000) // 4096: fresh
  assert.deepEqual(pool.stats(), {
    ...zero,
    hits: 2,
    misses: 4,
    allocations: 6,
    releases: 2,
    outstandingBytes: 4096 + 8192 + 128 + 4096,
    pooledBytes: 0,
  })
  for (const x of [b, c2, a2, d]) pool.release(x)
  assert.deepEqual(pool.stats(), { ...zero, hits: 2, misses: 4, allocations: 6, releases: 6, pooledBytes: 4096 + 8192 + 128 + 4096 })
  pool.trim()
  assert.equal(pool.stats().pooledBytes, 0)
  await pool.close()
})

test('zeroOnRelease: false reuses memory as it was left (opt-in, like allocUnsafe)', async () => {
  const pool = new BufferPool({ zeroOnRelease: false })
  const a = pool.allocate(64)
  assert.ok(a.every((x) => x === 0), 'fresh memory is still zero')
  a.fill(7)
  pool.release(a)
  const b = pool.allocate(64)
  assert.equal(pool.stats().hits, 1, 'reused at once: no zeroing to wait for')
  assert.equal(b[0], 7)
  await pool.close()
})

test('bad sizes and options are ERR_INVALID_ARG', async () => {
  const pool = new BufferPool()
  for (const size of [-1, 1.5, NaN, Infinity, -Infinity, 2 ** 31, 2 ** 53]) {
    assert.throws(() => pool.allocate(size), { code: 'ERR_INVALID_ARG', name: 'RangeError' }, `size ${size}`)
  }
  for (const size of ['10', undefined, null, 10n, {}]) {
    assert.throws(() => pool.allocate(size as unknown as number), { code: 'ERR_INVALID_ARG', name: 'TypeError' }, `size ${String(size)}`)
  }
  assert.deepEqual(pool.stats().allocations, 0, 'nothing changed')
  for (const o of [
    { chunkSize: 1000 },
    { chunkSize: 0 },
    { chunkSize: -1024 },
    { chunkSize: 2 ** 31 },
    { chunkSize: NaN },
    { maxPooledBytes: -1 },
    { maxPooledBytes: 1.5 },
    { maxPooledBytes: NaN },
    { zeroOnRelease: 'yes' },
    { name: '' },
    'pool',
    null,
  ]) {
    assert.throws(() => new BufferPool(o as never), code('ERR_INVALID_ARG'), `options ${JSON.stringify(o)}`)
  }
  await pool.close()
})

test('close: later calls throw ERR_CLOSED, outstanding Buffers stay usable', async () => {
  const pool = new BufferPool()
  const a = pool.allocate(1000)
  await pool.close()
  await pool.close()
  assert.throws(() => pool.allocate(1), code('ERR_CLOSED'))
  assert.throws(() => pool.release(a), code('ERR_CLOSED'))
  assert.throws(() => pool.trim(), code('ERR_CLOSED'))
  await assert.rejects(pool.flush(), code('ERR_CLOSED'))
  a.fill(5)
  assert.equal(a[999], 5)
  assert.equal(typeof pool.stats().allocations, 'number')
})

test('plain Buffers where external buffers are not allowed (HOTPATH_BUFFERPOOL_PLAIN=1)', async () => {
  process.env.HOTPATH_BUFFERPOOL_PLAIN = '1'
  let pool: BufferPool
  try {
    pool = new BufferPool()
  } finally {
    delete process.env.HOTPATH_BUFFERPOOL_PLAIN
  }
  assert.equal(pool.external, false)
  assert.equal(new BufferPool().external, true)
  const a = pool.allocate(3000)
  assert.equal(a.length, 3000)
  assert.ok(a.every((x) => x === 0))
  a.fill(1)
  pool.release(a)
  assert.equal(a.length, 0, 'still detached on release')
  assert.throws(() => pool.release(a), code('ERR_BUFFER_RELEASED'))
  let s = pool.stats()
  assert.deepEqual([s.allocations, s.releases, s.pooledBytes, s.outstandingBytes], [1, 1, 0, 0], 'nothing is pooled')
  ;(() => {
    pool.allocate(5000)
  })()
  assert.equal(pool.stats().outstandingBytes, 5000)
  await collectUntil(() => pool.stats().reclaimed === 1, 'the plain Buffer reclaimed')
  s = pool.stats()
  assert.equal(s.outstandingBytes, 0)
  await pool.close()
})

describe('named pools and worker threads', () => {
  const lib = require.resolve('hotpath')
  function runWorker(body: string): Promise<any[]> {
    return new Promise((resolve, reject) => {
      const w = new Worker(
        `const { parentPort } = require('node:worker_threads');
         const { BufferPool } = require(${JSON.stringify(lib)});
         (async () => { ${body} })().catch((e) => parentPort.postMessage({ error: String(e && e.stack || e) }))`,
        { eval: true },
      )
      const msgs: any[] = []
      w.on('message', (m) => (m?.error ? reject(new Error(m.error)) : msgs.push(m)))
      w.on('error', reject)
      w.on('exit', () => resolve(msgs))
    })
  }

  test('a named pool is one pool for every worker thread', async () => {
    const pool = new BufferPool({ name: 'bp-shared', maxPooledBytes: 1 * MiB })
    const mine = pool.allocate(8192)
    mine.fill(9)
    pool.release(mine)
    await pool.flush()
    const msgs = await runWorker(`
      const p = new BufferPool({ name: 'bp-shared', maxPooledBytes: 1048576 })
      const a = p.allocate(8192)            // the block the main thread released
      const zero = a.every((x) => x === 0)
      const b = p.allocate(100)
      const kept = p.allocate(4096)         // never released: reclaimed when the worker exits
      kept.fill(1)
      p.release(a)
      p.release(b)
      let threw = null
      try { new BufferPool({ name: 'bp-shared', maxPooledBytes: 1 }) } catch (e) { threw = e.code }
      parentPort.postMessage({ zero, stats: p.stats(), threw })
      await p.close()
    `)
    assert.equal(msgs.length, 1)
    assert.equal(msgs[0].zero, true)
    assert.equal(msgs[0].threw, 'ERR_INVALID_ARG', 'same name, other options')
    assert.equal(msgs[0].stats.hits, 1, "the worker reused the main thread's block")
    assert.equal(msgs[0].stats.allocations, 4)
    assert.equal(msgs[0].stats.releases, 3)
    // The worker is gone; its unreleased Buffer came back when its heap went.
    await collectUntil(() => pool.stats().reclaimed === 1, "the worker's unreleased Buffer reclaimed")
    const s = pool.stats()
    assert.equal(s.outstandingBytes, 0)
    assert.equal(s.allocations, 4)
    await pool.flush()
    assert.equal(pool.stats().pooledBytes, 8192 + 128 + 4096)
    // Memory released in the worker serves the main thread.
    pool.allocate(4096)
    assert.equal(pool.stats().hits, 2)
    await pool.close()
  })
})
