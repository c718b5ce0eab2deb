import { test } from 'node:test'
import assert from 'node:assert/strict'
import { setImmediate as tick } from 'node:timers/promises'
import DataLoader from 'dataloader'
import { BatchProcessor } from 'hotpath'
import { deferred } from './helpers.ts'

/** The settled state of each promise, without waiting for pending ones. */
async function states<T>(ps: Promise<T>[]): Promise<string[]> {
  const out = ps.map(() => 'pending')
  ps.forEach((p, i) =>
    p.then(
      (v) => (out[i] = `ok:${String(v)}`),
      (e) => (out[i] = `err:${e?.code ?? e?.message}`),
    ),
  )
  await tick()
  return out
}

test('splits by maxBatchSize, keeps add order, resolves each item with its own result', async () => {
  const seen: number[][] = []
  const bp = new BatchProcessor<number, number>((items) => {
    seen.push([...items])
    return items.map((x) => x * 2)
  }, { maxBatchSize: 3, maxWaitMs: 60_000 })
  const ps = [0, 1, 2, 3, 4, 5, 6].map((x) => bp.add(x))
  assert.deepEqual(seen, [], 'the handler never runs inside add()')
  await tick()
  assert.deepEqual(seen, [[0, 1, 2], [3, 4, 5]], 'full batches go at once; the partial one waits')
  assert.deepEqual(await Promise.all(ps.slice(0, 6)), [0, 2, 4, 6, 8, 10])
  assert.deepEqual(await states([ps[6]]), ['pending'])
  await bp.flush()
  assert.deepEqual(seen, [[0, 1, 2], [3, 4, 5], [6]])
  assert.equal(await ps[6], 12)
  const m = bp.addMany([7, 8])
  await bp.flush()
  assert.deepEqual(await m, [14, 16])
  await bp.close()
})

test('addMany resolves to the results in order', async () => {
  const bp = new BatchProcessor<string, string>((items) => items.map((s) => s.toUpperCase()), { maxBatchSize: 2, maxWaitMs: 1 })
  assert.deepEqual(await bp.addMany(['a', 'b', 'c', 'd', 'e']), ['A', 'B', 'C', 'D', 'E'])
  await assert.rejects(bp.addMany('nope' as any), { code: 'ERR_INVALID_ARG' })
  await bp.close()
})

test('a partial batch is dispatched maxWaitMs after its first item', async () => {
  const calls: { items: number[]; at: number }[] = []
  const bp = new BatchProcessor<number, number>((items) => {
    calls.push({ items: [...items], at: performance.now() })
    return items
  }, { maxBatchSize: 100, maxWaitMs: 40 })
  const t0 = performance.now()
  const a = bp.add(1)
  await tick()
  const b = bp.add(2)
  await tick()
  assert.equal(calls.length, 0, 'not dispatched before the window ends')
  assert.deepEqual(await Promise.all([a, b]), [1, 2])
  assert.equal(calls.length, 1)
  assert.deepEqual(calls[0].items, [1, 2])
  const waited = calls[0].at - t0
  assert.ok(waited >= 38, `dispatched after ${waited.toFixed(1)} ms, before the 40 ms window`)
  assert.ok(waited < 1000, `dispatched after ${waited.toFixed(1)} ms`)
  await bp.close()
})

test('maxWaitMs 0 batches what is added in one turn of the event loop', async () => {
  const seen: number[][] = []
  const bp = new BatchProcessor<number, number>((items) => (seen.push([...items]), items), { maxWaitMs: 0 })
  const ps = [1, 2, 3].map((x) => bp.add(x))
  await Promise.resolve()
  ps.push(bp.add(4))
  assert.deepEqual(await Promise.all(ps), [1, 2, 3, 4])
  assert.deepEqual(seen, [[1, 2, 3, 4]])
  await bp.close()
})

test('flush dispatches now and waits for the handler', async () => {
  const gate = deferred()
  let calls = 0
  const bp = new BatchProcessor<number, number>(async (items) => {
    calls++
    await gate.promise
    return items.map((x) => x + 1)
  }, { maxWaitMs: 60_000 })
  const ps = [1, 2, 3].map((x) => bp.add(x))
  let flushed = false
  const f = bp.flush().then(() => (flushed = true))
  await tick()
  assert.equal(calls, 1, 'flush dispatched the open batch')
  assert.equal(flushed, false, 'flush waits for the batch to finish')
  gate.resolve()
  await f
  assert.deepEqual(await states(ps), ['ok:2', 'ok:3', 'ok:4'])
  await bp.flush() // nothing pending: resolves
  await bp.close()
})

test('an Error at position i rejects item i only (like dataloader)', async () => {
  const handler = async (items: readonly number[]) => items.map((x) => (x % 2 ? new Error(`odd ${x}`) : x * 10))
  const bp = new BatchProcessor<number, number>(handler, { maxWaitMs: 1 })
  const ps = [0, 1, 2, 3].map((x) => bp.add(x))
  const dl = new DataLoader<number, number>(handler, { cache: false })
  const qs = [0, 1, 2, 3].map((x) => dl.load(x))
  const [ours, theirs] = await Promise.all([Promise.allSettled(ps), Promise.allSettled(qs)])
  const show = (r: PromiseSettledResult<number>) => (r.status === 'fulfilled' ? r.value : (r.reason as Error).message)
  assert.deepEqual(ours.map(show), [0, 'odd 1', 20, 'odd 3'])
  assert.deepEqual(ours.map(show), theirs.map(show))
  assert.equal(bp.stats().failedBatches, 0)
  await bp.close()
})

test('a result of the wrong length rejects the whole batch with ERR_BATCH_RESULT', async () => {
  let mode = 'short'
  const bp = new BatchProcessor<number, unknown>((items) => (mode === 'short' ? items.slice(1) : (({ n: 1 }) as any)), {
    maxWaitMs: 1,
    retries: 3,
    retryBackoffMs: 1,
  })
  const rs = await Promise.allSettled([1, 2, 3].map((x) => bp.add(x)))
  for (const r of rs) {
    assert.equal(r.status, 'rejected')
    const e = (r as PromiseRejectedResult).reason
    assert.equal(e.code, 'ERR_BATCH_RESULT')
    assert.match(e.message, /array of 3/)
  }
  mode = 'object'
  await assert.rejects(bp.add(1), { code: 'ERR_BATCH_RESULT' })
  const s = bp.stats()
  assert.equal(s.failedBatches, 2)
  assert.equal(s.retries, 0, 'a wrong length is not retried')
  await bp.close()
})

test('a failing handler is retried with backoff, then succeeds', async () => {
  const starts: number[] = []
  const bp = new BatchProcessor<number, number>(async (items) => {
    starts.push(performance.now())
    if (starts.length < 3) throw new Error(`flaky ${starts.length}`)
    return items
  }, { maxWaitMs: 1, retries: 3, retryBackoffMs: 20 })
  assert.deepEqual(await bp.addMany([1, 2]), [1, 2])
  assert.equal(starts.length, 3)
  // backoff * 2^attempt * [0.5, 1]: >= 10 ms then >= 20 ms.
  assert.ok(starts[1] - starts[0] >= 9, `first backoff ${starts[1] - starts[0]} ms`)
  assert.ok(starts[2] - starts[1] >= 19, `second backoff ${starts[2] - starts[1]} ms`)
  const s = bp.stats()
  assert.equal(s.retries, 2)
  assert.equal(s.batches, 1, 'a retried batch counts once')
  assert.equal(s.failedBatches, 0)
  await bp.close()
})

test('retries exhausted: every item of the batch rejects with the error', async () => {
  let calls = 0
  const boom = new Error('upstream down')
  const bp = new BatchProcessor<number, number>(() => {
    calls++
    return Promise.reject(boom)
  }, { maxWaitMs: 1, retries: 2, retryBackoffMs: 1 })
  const rs = await Promise.allSettled([1, 2, 3].map((x) => bp.add(x)))
  assert.deepEqual(rs.map((r) => r.status === 'rejected' && r.reason === boom), [true, true, true])
  assert.equal(calls, 3, 'one call and two retries')
  const s = bp.stats()
  assert.equal(s.failedBatches, 1)
  assert.equal(s.retries, 2)
  assert.equal(s.inFlight, 0)
  await bp.close()
})

test('a handler that throws synchronously rejects its items and never crashes', async () => {
  let calls = 0
  const bp = new BatchProcessor<number, number>((items) => {
    calls++
    if (calls === 1) throw new TypeError('sync boom')
    return items
  }, { maxWaitMs: 1 })
  const rs = await Promise.allSettled([1, 2].map((x) => bp.add(x)))
  for (const r of rs) assert.ok(r.status === 'rejected' && r.reason.name === 'TypeError' && r.reason.message === 'sync boom')
  assert.equal(await bp.add(3), 3, 'the processor keeps working')
  // ...and with retries, a synchronous throw is retried like a rejection.
  let n = 0
  const bp2 = new BatchProcessor<number, number>((items) => {
    if (n++ === 0) throw new Error('once')
    return items
  }, { maxWaitMs: 1, retries: 1, retryBackoffMs: 1 })
  assert.equal(await bp2.add(7), 7)
  assert.equal(bp2.stats().retries, 1)
  await Promise.all([bp.close(), bp2.close()])
})

test('a result that throws while being read rejects the rest; each add settles once', async () => {
  const bp = new BatchProcessor<number, number>((items) => {
    const arr = [...items]
    Object.defineProperty(arr, 1, {
      get() {
        throw new Error('bad getter')
      },
    })
    return arr
  }, { maxWaitMs: 1 })
  const r = await Promise.allSettled([1, 2, 3].map((x) => bp.add(x)))
  assert.deepEqual(
    r.map((x) => (x.status === 'fulfilled' ? x.value : (x.reason as Error).message)),
    [1, 'bad getter', 'bad getter'],
  )
  await bp.close()
})

test('at most `concurrency` batches in flight; the rest wait their turn in order', async () => {
  const gates: { items: number[]; d: ReturnType<typeof deferred<void>> }[] = []
  let active = 0
  let peak = 0
  const bp = new BatchProcessor<number, number>(async (items) => {
    active++
    peak = Math.max(peak, active)
    const d = deferred()
    gates.push({ items: [...items], d })
    await d.promise
    active--
    return items
  }, { maxBatchSize: 2, maxWaitMs: 1, concurrency: 3 })
  const ps = Array.from({ length: 12 }, (_, i) => bp.add(i))
  await tick()
  assert.equal(gates.length, 3, 'three batches started')
  assert.equal(bp.stats().inFlight, 3)
  assert.equal(bp.stats().pending, 6, 'three sealed batches wait for a slot')
  // Finish the second one first: the next in line (4, 5)... is [6, 7].
  gates[1].d.resolve()
  await tick()
  assert.equal(gates.length, 4)
  assert.deepEqual(gates[3].items, [6, 7])
  for (let i = 0; i < 6; i++) {
    for (const g of gates) g.d.resolve()
    await tick()
  }
  assert.deepEqual(await Promise.all(ps), Array.from({ length: 12 }, (_, i) => i))
  assert.equal(peak, 3)
  assert.deepEqual(
    gates.map((g) => g.items[0]),
    [0, 2, 4, 6, 8, 10],
  )
  assert.equal(bp.stats().inFlight, 0)
  await bp.close()
})

test('dedupe: equal keys pending together share one slot and one result', async () => {
  const seen: { id: string }[][] = []
  const bp = new BatchProcessor<{ id: string }, string>((items) => {
    seen.push(items)
    return items.map((x) => `user ${x.id}`)
  }, { maxWaitMs: 5, keyFn: (x) => (x as { id: string }).id })
  const a1 = bp.add({ id: 'a' })
  const b = bp.add({ id: 'b' })
  const a2 = bp.add({ id: 'a' })
  assert.equal(a1, a2, 'the same promise')
  assert.deepEqual(await Promise.all([a1, b, a2]), ['user a', 'user b', 'user a'])
  assert.deepEqual(seen.map((s) => s.map((x) => x.id)), [['a', 'b']])
  // Not pending together any more: a new slot.
  assert.equal(await bp.add({ id: 'a' }), 'user a')
  const s = bp.stats()
  assert.equal(s.items, 4)
  assert.equal(s.batches, 2)
  assert.equal(s.avgBatchSize, 1.5)
  // dedupe: false with a keyFn does not dedupe.
  const bp2 = new BatchProcessor<number, number>((items) => items, { maxWaitMs: 1, dedupe: false, keyFn: String })
  assert.notEqual(bp2.add(1), bp2.add(1))
  // A throwing keyFn rejects that add only.
  const bp3 = new BatchProcessor<number, number>((items) => items, {
    maxWaitMs: 1,
    dedupe: true,
    keyFn: (x) => {
      if (x === 0) throw new Error('no key')
      return String(x)
    },
  })
  await assert.rejects(bp3.add(0), { message: 'no key' })
  assert.equal(await bp3.add(1), 1)
  await Promise.all([bp.close(), bp2.close(), bp3.close()])
})

test('close dispatches what is pending, waits for in-flight batches, then rejects add ERR_CLOSED', async () => {
  const gate = deferred()
  let calls = 0
  const bp = new BatchProcessor<number, number>(async (items) => {
    calls++
    await gate.promise
    return items
  }, { maxBatchSize: 2, maxWaitMs: 60_000 })
  const ps = [1, 2, 3].map((x) => bp.add(x))
  let closed = false
  const c = bp.close().then(() => (closed = true))
  assert.equal(bp.close(), bp.close(), 'idempotent')
  await assert.rejects(bp.add(4), { code: 'ERR_CLOSED' })
  await assert.rejects(bp.addMany([4]), { code: 'ERR_CLOSED' })
  await assert.rejects(bp.flush(), { code: 'ERR_CLOSED' })
  await tick()
  assert.equal(calls, 2, 'the open batch was dispatched')
  assert.equal(closed, false, 'close waits for in-flight batches')
  gate.resolve()
  await c
  assert.deepEqual(await Promise.all(ps), [1, 2, 3])
  await bp.close()
  assert.equal(typeof bp.stats().items, 'number', 'stats still answers after close')
})

test('bad options are ERR_INVALID_ARG', () => {
  const h = (items: number[]) => items
  const bad: unknown[] = [
    { maxBatchSize: 0 },
    { maxBatchSize: -1 },
    { maxBatchSize: 1.5 },
    { maxBatchSize: NaN },
    { maxBatchSize: '10' },
    { maxWaitMs: -1 },
    { maxWaitMs: Infinity },
    { maxWaitMs: NaN },
    { concurrency: 0 },
    { concurrency: -2 },
    { concurrency: 0.5 },
    { retries: -1 },
    { retries: 1.5 },
    { retryBackoffMs: -5 },
    { retryBackoffMs: Infinity },
    { dedupe: true },
    { dedupe: 'yes' },
    { keyFn: 'id' },
    'options',
    null,
  ]
  for (const o of bad) {
    assert.throws(() => new BatchProcessor(h, o as any), { code: 'ERR_INVALID_ARG' }, `options ${JSON.stringify(o)}`)
  }
  assert.throws(() => new BatchProcessor(null as any), { code: 'ERR_INVALID_ARG', name: 'TypeError' })
  // Accepted: unbounded size and concurrency, zero wait and backoff.
  new BatchProcessor(h, { maxBatchSize: Infinity, concurrency: Infinity, maxWaitMs: 0, retryBackoffMs: 0 }).close()
})

test('stats are exact', async () => {
  let fail = false
  const bp = new BatchProcessor<number, number>((items) => {
    if (fail) throw new Error('down')
    return items
  }, { maxBatchSize: 4, maxWaitMs: 60_000, concurrency: 1, retries: 1, retryBackoffMs: 1 })
  assert.deepEqual(bp.stats(), { items: 0, batches: 0, avgBatchSize: 0, pending: 0, inFlight: 0, failedBatches: 0, retries: 0 })
  const ps = [1, 2, 3, 4, 5, 6].map((x) => bp.add(x))
  let s = bp.stats()
  assert.equal(s.items, 6)
  assert.equal(s.batches, 1, 'the full batch was admitted')
  assert.equal(s.inFlight, 1)
  assert.equal(s.pending, 2, 'two items in the open batch')
  await Promise.all(ps.slice(0, 4))
  await bp.flush()
  await Promise.all(ps)
  s = bp.stats()
  assert.deepEqual(s, { items: 6, batches: 2, avgBatchSize: 3, pending: 0, inFlight: 0, failedBatches: 0, retries: 0 })
  fail = true
  const m = bp.addMany([7])
  await bp.flush()
  await assert.rejects(m, { message: 'down' })
  s = bp.stats()
  assert.deepEqual(s, { items: 7, batches: 3, avgBatchSize: 7 / 3, pending: 0, inFlight: 0, failedBatches: 1, retries: 1 })
  await bp.close()
})

test('many items, one promise each, all settle', async () => {
  let batches = 0
  const bp = new BatchProcessor<number, number>((items) => {
    batches++
    return items
  }, { maxBatchSize: 100, maxWaitMs: 5 })
  const n = 100_000
  const ps = new Array(n)
  for (let i = 0; i < n; i++) ps[i] = bp.add(i)
  const r = await Promise.all(ps)
  assert.equal(r.length, n)
  assert.equal(r[n - 1], n - 1)
  assert.equal(batches, 1000)
  await bp.close()
})
