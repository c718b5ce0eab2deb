// Bounds with backpressure, and hangs that used to happen: BatchProcessor
// maxPending / unreadable results / flush() timers, RateLimiter maxWaiters,
// CacheManager deleteLater tasks after close().
import { test, describe } from 'node:test'
import assert from 'node:assert/strict'
import { BatchProcessor, RateLimiter, CacheManager } from 'hotpath'
import { liveDeleteLaterTasks } from 'hotpath/testing'

const code = (c: string) => (e: any) => {
  assert.equal(e?.code, c, `expected ${c}, got ${e?.code}: ${e?.message}`)
  return true
}
const timeouts = () => process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length

describe('BatchProcessor bounds', () => {
  test('a handler result whose length getter throws rejects the batch; add() settles', { timeout: 10_000 }, async () => {
    // Before: an unhandled rejection, and add() never settled.
    const evil = new Proxy([1, 2], {
      get(t, k, r) {
        if (k === 'length') throw new Error('length getter throws')
        return Reflect.get(t, k, r)
      },
    })
    const b = new BatchProcessor(async () => evil, { maxWaitMs: 0 })
    const rs = await Promise.allSettled([b.add(1), b.add(2)])
    for (const r of rs) {
      assert.equal(r.status, 'rejected')
      assert.equal((r as PromiseRejectedResult).reason.code, 'ERR_BATCH_RESULT')
      assert.match((r as PromiseRejectedResult).reason.message, /length getter throws/)
    }
    assert.equal(b.stats().failedBatches, 1)
    // The processor still works.
    const ok = new BatchProcessor(async (xs: number[]) => xs.map((x) => x * 2), { maxWaitMs: 0 })
    assert.equal(await ok.add(4), 8)
    await Promise.all([b.close(), ok.close()])
  })

  test('flush() leaves no timer armed', async () => {
    // Before: the maxWaitMs timer stayed armed after flush(), keeping the process alive.
    const before = timeouts()
    const b = new BatchProcessor(async (xs: number[]) => xs, { maxWaitMs: 600_000 })
    const p = b.add(1)
    assert.equal(timeouts(), before + 1)
    await b.flush()
    assert.equal(await p, 1)
    assert.equal(timeouts(), before)
    // A later add arms it again, and close() disarms it.
    const q = b.add(2)
    assert.equal(timeouts(), before + 1)
    await b.close()
    assert.equal(await q, 2)
    assert.equal(timeouts(), before)
  })

  test('maxPending: add() rejects ERR_QUEUE_FULL beyond it, and accepts again once items settle', async () => {
    let release!: () => void
    const gate = new Promise<void>((r) => (release = r))
    const b = new BatchProcessor(
      async (xs: number[]) => {
        await gate
        return xs
      },
      { maxWaitMs: 0, maxBatchSize: 2, maxPending: 3 },
    )
    const accepted = [b.add(1), b.add(2), b.add(3)]
    await assert.rejects(b.add(4), code('ERR_QUEUE_FULL'))
    await assert.rejects(b.addMany([5, 6]), code('ERR_QUEUE_FULL'))
    assert.ok(b.stats().pending + b.stats().inFlight * 2 >= 3)
    release()
    assert.deepEqual(await Promise.all(accepted), [1, 2, 3])
    assert.equal(await b.add(7), 7)
    await b.close()
  })

  test('maxPending with dedupe counts slots: a shared key is never refused', async () => {
    let release!: () => void
    const gate = new Promise<void>((r) => (release = r))
    const b = new BatchProcessor(
      async (xs: string[]) => {
        await gate
        return xs.map((x) => x.toUpperCase())
      },
      { maxWaitMs: 600_000, keyFn: (x: unknown) => String(x), maxPending: 1 },
    )
    const a1 = b.add('a')
    const a2 = b.add('a')
    await assert.rejects(b.add('b'), code('ERR_QUEUE_FULL'))
    release()
    const f = b.flush()
    assert.deepEqual(await Promise.all([a1, a2]), ['A', 'A'])
    await f
    await b.close()
  })

  test('maxPending is range-checked', () => {
    assert.throws(() => new BatchProcessor(async (x) => x, { maxPending: 0 }), code('ERR_INVALID_ARG'))
    assert.throws(() => new BatchProcessor(async (x) => x, { maxPending: 1.5 }), code('ERR_INVALID_ARG'))
    assert.throws(() => new BatchProcessor(async (x) => x, { maxPending: NaN }), code('ERR_INVALID_ARG'))
  })
})

describe('RateLimiter bounds', () => {
  test('maxWaiters: acquire() beyond it rejects ERR_QUEUE_FULL, per key', async () => {
    const l = new RateLimiter({ limit: 1, windowMs: 600_000, maxWaiters: 2 })
    await l.acquire('k')
    const w1 = l.acquire('k')
    const w2 = l.acquire('k')
    await assert.rejects(l.acquire('k'), code('ERR_QUEUE_FULL'))
    // Another key has its own queue.
    await l.acquire('other')
    const o1 = l.acquire('other')
    assert.equal(l.stats().waiting, 3)
    const settled = Promise.allSettled([w1, w2, o1])
    await l.close()
    for (const r of await settled) {
      assert.equal(r.status, 'rejected')
      code('ERR_CLOSED')((r as PromiseRejectedResult).reason)
    }
  })

  test('maxWaiters is range-checked', () => {
    assert.throws(() => new RateLimiter({ limit: 1, windowMs: 1000, maxWaiters: 0 }), code('ERR_INVALID_ARG'))
    assert.throws(() => new RateLimiter({ limit: 1, windowMs: 1000, maxWaiters: -1 }), code('ERR_INVALID_ARG'))
  })
})

describe('CacheManager bounds', () => {
  test('deleteLater tasks end at close() instead of holding the cache for their delay', async () => {
    const base = liveDeleteLaterTasks()
    const c = new CacheManager({ maxEntries: 100 })
    c.setSync('a', 1)
    c.deleteLater('a', 600_000)
    c.deleteLater('b', 600_000)
    c.deleteLater('c', 600_000)
    assert.equal(liveDeleteLaterTasks(), base + 3)
    assert.equal(c.getSync('a'), undefined) // the first delete is immediate
    await c.close()
    // The tasks wake on the runtime; wait for them without a fixed sleep.
    for (let i = 0; i < 2000 && liveDeleteLaterTasks() !== base; i++) await new Promise((r) => setImmediate(r))
    assert.equal(liveDeleteLaterTasks(), base)
  })
})
