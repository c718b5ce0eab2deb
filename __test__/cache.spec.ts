// CacheManager, in process (L1 only). Redis: cache.redis.spec.ts.
import { test, describe } from 'node:test'
import assert from 'node:assert/strict'
import { Worker } from 'node:worker_threads'
import { LRUCache } from 'lru-cache'
import { CacheManager, type CacheValue } from 'hotpath'
import { __advanceClock } from 'hotpath/testing'

const code = (c: string) => ({ code: c })

describe('values keep their type and content', () => {
  const cases: [string, CacheValue][] = [
    ['string', 'hello'],
    ['numeric string', '123'],
    ['empty string', ''],
    ['unicode', 'héllo wörld ✓ 🎉'],
    ['integer', 42],
    ['float', -0.125],
    ['big', 1e300],
    ['true', true],
    ['false', false],
    ['null', null],
    ['object', { a: 1, b: [1, 'x', null, { c: true }] }],
    ['array', [1, 2, [3]]],
    ['empty object', {}],
    ['buffer', Buffer.from([0, 1, 2, 255])],
    ['empty buffer', Buffer.alloc(0)],
  ]
  for (const [name, value] of cases) {
    test(name, async () => {
      const c = new CacheManager()
      await c.set('k', value)
      assert.deepEqual(c.getSync('k'), value)
      assert.deepEqual(c.getSync('k'), value) // second read: front cache for primitives
      assert.deepEqual(await c.get('k'), value)
      assert.equal(typeof c.getSync('k'), typeof value)
      if (Buffer.isBuffer(value)) assert.ok(Buffer.isBuffer(c.getSync('k')))
      c.setSync('s', value)
      assert.deepEqual(c.getSync('s'), value)
      await c.close()
    })
  }

  test('non-finite numbers', () => {
    const c = new CacheManager()
    c.setSync('nan', NaN)
    c.setSync('inf', Infinity)
    assert.ok(Number.isNaN(c.getSync('nan')))
    assert.equal(c.getSync('inf'), Infinity)
  })

  test('a mutation attempt on a read value never changes the cache (frozen by default, copies with readMode copy)', () => {
    const c = new CacheManager()
    c.setSync('o', { n: 1 })
    const a = c.getSync('o') as { n: number }
    assert.throws(() => {
      a.n = 2
    }, TypeError)
    assert.deepEqual(c.getSync('o'), { n: 1 })
    const d = new CacheManager({ readMode: 'copy' })
    d.setSync('o', { n: 1 })
    const b = d.getSync('o') as { n: number }
    b.n = 2
    assert.deepEqual(d.getSync('o'), { n: 1 })
  })
})

test('keys and values of every length around the native read buffers round-trip exactly', async () => {
  // The native side reads a key into a 256-byte stack buffer and a value into
  // a 64 KiB per-thread buffer, falling back to an exact-size read when they
  // do not fit (UTF-8: 1 to 4 bytes per character). Keys that differ only
  // past those boundaries must stay distinct. No front cache: every read is
  // native.
  const c = new CacheManager({ frontCacheEntries: 0, maxEntries: 100_000 })
  const chars = ['a', 'é', '✓', '🎉']
  const distinct = new Set<string>()
  for (const ch of chars) {
    const unit = Buffer.byteLength(ch)
    for (let bytes = 240; bytes <= 270; bytes++) {
      const n = Math.ceil(bytes / unit)
      for (const tail of ['x', 'y']) distinct.add(ch.repeat(n) + tail)
    }
  }
  const keys = [...distinct]
  for (const k of keys) c.setSync(k, k.length)
  for (const k of keys) {
    assert.equal(c.getSync(k), k.length, `key of ${Buffer.byteLength(k)} bytes`)
    assert.ok(c.has(k))
  }
  assert.equal(c.stats().l1Entries, keys.length)
  const values: string[] = []
  for (const ch of chars) {
    const unit = Buffer.byteLength(ch)
    for (const bytes of [100, 65_530, 65_531, 65_532, 65_533, 65_534, 65_535, 65_536, 65_540, 200_000]) {
      values.push(ch.repeat(Math.ceil(bytes / unit)) + 'z')
    }
  }
  for (let i = 0; i < values.length; i++) {
    c.setSync(`v${i}`, values[i])
    c.setSync(`o${i}`, { s: values[i], i })
  }
  for (let i = 0; i < values.length; i++) {
    assert.equal(c.getSync(`v${i}`), values[i], `value of ${Buffer.byteLength(values[i])} bytes`)
    assert.deepEqual(c.getSync(`o${i}`), { s: values[i], i })
  }
  const many = await c.getMany(values.map((_, i) => `v${i}`))
  assert.deepEqual(many, values)
  await c.close()
})

describe('bad input is ERR_INVALID_ARG and changes nothing', () => {
  test('values', async () => {
    const c = new CacheManager()
    c.setSync('k', 'original')
    const cyclic: Record<string, unknown> = {}
    cyclic.self = cyclic
    const bad: unknown[] = [undefined, () => 1, Symbol('s'), 10n, cyclic, { f() {} }, { u: undefined }, [undefined], new Map(), new Date(),
      // class instances nested inside a plain object are rejected too (a Date was silently stringified)
      { d: new Date(0) }, [{ m: new Map() }], { deep: { n: 1n } }, [1, , 3]]
    for (const v of bad) {
      assert.throws(() => c.setSync('k', v as CacheValue), code('ERR_INVALID_ARG'))
      await assert.rejects(c.set('k', v as CacheValue), code('ERR_INVALID_ARG'))
      await assert.rejects(c.setMany([['k', v as CacheValue]]), code('ERR_INVALID_ARG'))
    }
    assert.equal(c.getSync('k'), 'original')
    assert.equal(c.stats().sets, 1)
  })

  test('keys and arguments', async () => {
    const c = new CacheManager()
    for (const k of ['', 1, null, undefined, {}]) {
      assert.throws(() => c.getSync(k as string), code('ERR_INVALID_ARG'))
      assert.throws(() => c.setSync(k as string, 1), code('ERR_INVALID_ARG'))
      assert.throws(() => c.has(k as string), code('ERR_INVALID_ARG'))
      await assert.rejects(c.get(k as string), code('ERR_INVALID_ARG'))
      await assert.rejects(c.delete(k as string), code('ERR_INVALID_ARG'))
    }
    await assert.rejects(c.getMany('x' as unknown as string[]), code('ERR_INVALID_ARG'))
    await assert.rejects(c.getOrSet('k', 'nope' as unknown as () => string), code('ERR_INVALID_ARG'))
    assert.throws(() => c.setSync('k', 1, { ttlMs: -1 }), code('ERR_INVALID_ARG'))
    assert.throws(() => c.setSync('k', 1, { ttlMs: NaN }), code('ERR_INVALID_ARG'))
    assert.throws(() => c.setSync('k', 1, { tags: 'x' as unknown as string[] }), code('ERR_INVALID_ARG'))
    assert.throws(() => c.deleteLater('k', -5), code('ERR_INVALID_ARG'))
    assert.equal(c.getSync('k'), undefined)
  })

  test('options', () => {
    const bad = [
      { maxEntries: 0 },
      { maxEntries: -1 },
      { maxEntries: 1.5 },
      { maxEntries: 'x' },
      { maxBytes: 0 },
      { ttlMs: -1 },
      { ttlMs: NaN },
      { l1TtlMs: 0 },
      { idleMs: Infinity },
      { policy: 'fifo' },
      { invalidation: 'gossip' },
      { staleMs: -1 },
      { redis: { url: 'http://localhost' } },
      { redis: { url: 'redis://x', commandTimeoutMs: -1 } },
    ]
    for (const o of bad) assert.throws(() => new CacheManager(o as never), code('ERR_INVALID_ARG'), JSON.stringify(o))
    assert.throws(() => new CacheManager(5 as never), code('ERR_INVALID_ARG'))
  })
})

describe('methods', () => {
  test('get / getSync / has / delete / deleteMany', async () => {
    const c = new CacheManager()
    assert.equal(await c.get('a'), undefined)
    await c.set('a', 1)
    c.setSync('b', 2)
    assert.equal(c.has('a'), true)
    assert.equal(c.has('zz'), false)
    assert.equal(await c.delete('a'), true)
    assert.equal(await c.delete('a'), false)
    assert.equal(c.getSync('a'), undefined)
    await c.setMany([
      ['x', 1],
      ['y', 2],
      ['z', 3],
    ])
    assert.deepEqual(await c.getMany(['x', 'nope', 'z']), [1, undefined, 3])
    assert.equal(await c.deleteMany(['x', 'y', 'nope']), 2)
    assert.deepEqual(await c.getMany(['x', 'y', 'z']), [undefined, undefined, 3])
  })

  test('a delete is seen by a front-cached reader at once', async () => {
    const c = new CacheManager()
    c.setSync('k', 'v')
    assert.equal(c.getSync('k'), 'v')
    assert.equal(c.getSync('k'), 'v')
    await c.delete('k')
    assert.equal(c.getSync('k'), undefined)
    c.setSync('k', 'w')
    assert.equal(c.getSync('k'), 'w')
  })

  test('deletePattern and deleteTag do not count entries that already expired', async () => {
    const c = new CacheManager()
    c.setSync('gone:1', 1, { ttlMs: 100, tags: ['t'] })
    c.setSync('gone:2', 2, { ttlMs: 100, tags: ['t'] })
    c.setSync('gone:3', 3, { tags: ['t'] })
    __advanceClock(101)
    assert.equal(c.getSync('gone:1'), undefined)
    assert.equal(await c.deletePattern('gone:[12]'), 0)
    c.setSync('gone:4', 4, { ttlMs: 100, tags: ['t'] })
    __advanceClock(101)
    assert.equal(await c.deleteTag('t'), 1) // gone:3
    assert.equal(c.stats().l1Entries, 0)
  })

  test('deletePattern, deleteTag, clear', async () => {
    const c = new CacheManager()
    for (let i = 0; i < 10; i++) c.setSync(`user:${i}`, i, { tags: i % 2 ? ['odd'] : ['even'] })
    c.setSync('order:1', 'o')
    assert.equal(await c.deletePattern('user:[0-4]'), 5)
    assert.equal(c.getSync('user:3'), undefined)
    assert.equal(c.getSync('user:7'), 7)
    assert.equal(await c.deleteTag('odd'), 3) // 5, 7, 9
    assert.equal(c.getSync('user:7'), undefined)
    assert.equal(c.getSync('user:6'), 6)
    assert.equal(c.getSync('order:1'), 'o')
    await c.clear()
    assert.equal(c.getSync('order:1'), undefined)
    assert.equal(c.getSync('user:6'), undefined)
  })

  test('deleteLater deletes now and again later', async () => {
    const c = new CacheManager()
    c.setSync('k', 1)
    c.deleteLater('k', 20)
    assert.equal(c.getSync('k'), undefined)
    c.setSync('k', 2) // a stale write racing the delete…
    assert.equal(c.getSync('k'), 2)
    // …is removed by the second delete.
    const deadline = Date.now() + 5000
    while (c.getSync('k') !== undefined && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5))
    assert.equal(c.getSync('k'), undefined)
  })

  test('TTL: default, per entry, expiry and remainingTtlMs (clock moved, no sleeping)', async () => {
    const c = new CacheManager({ ttlMs: 60_000 })
    c.setSync('d', 'default')
    c.setSync('short', 'x', { ttlMs: 10_000 })
    const r = await c.remainingTtlMs('short')
    assert.ok(r !== undefined && r > 9_000 && r <= 10_000, String(r))
    assert.equal(c.getSync('short'), 'x')
    __advanceClock(10_001)
    assert.equal(c.getSync('short'), undefined)
    assert.equal(await c.get('short'), undefined)
    assert.equal(c.has('short'), false)
    assert.equal(c.getSync('d'), 'default')
    __advanceClock(50_000)
    assert.equal(c.getSync('d'), undefined)
    assert.equal(await c.remainingTtlMs('d'), undefined)
    const n = new CacheManager()
    n.setSync('forever', 1)
    assert.equal(await n.remainingTtlMs('forever'), Infinity)
  })

  test('TTL expiry matches lru-cache', () => {
    const ours = new CacheManager({ ttlMs: 1000 })
    let t = 1_000_000 // lru-cache treats a start time of 0 as "no TTL"
    const lru = new LRUCache<string, string>({ max: 100, ttl: 1000, ttlResolution: 0, perf: { now: () => t } })
    ours.setSync('k', 'v')
    lru.set('k', 'v')
    // Real time passes too (the native clock is monotonic + offset), so stay
    // clear of the boundary by more than this test's own run time.
    __advanceClock(900)
    t = 1_000_900
    assert.equal(ours.getSync('k'), lru.get('k'))
    assert.equal(ours.getSync('k'), 'v')
    __advanceClock(101)
    t = 1_001_001
    assert.equal(ours.getSync('k'), lru.get('k'))
    assert.equal(ours.getSync('k'), undefined)
  })

  test('l1TtlMs caps how long L1 keeps an entry', () => {
    const c = new CacheManager({ ttlMs: 60_000, l1TtlMs: 1_000 })
    c.setSync('k', 'v')
    __advanceClock(1_001)
    assert.equal(c.getSync('k'), undefined)
  })

  test('maxEntries bounds L1 (both policies) and evictions are counted', async () => {
    for (const policy of ['tinylfu', 'lru'] as const) {
      const c = new CacheManager({ maxEntries: 100, policy })
      for (let i = 0; i < 1000; i++) c.setSync(`k${i}`, i)
      const s = c.stats()
      assert.ok(s.l1Entries <= 100, `${policy}: ${s.l1Entries}`)
      assert.ok(s.evictions >= 900 - 1, `${policy}: evictions ${s.evictions}`)
      if (policy === 'lru') assert.equal(c.getSync('k999'), 999)
    }
  })

  test('maxBytes bounds L1 by weighed size', () => {
    const c = new CacheManager({ maxEntries: 100_000, maxBytes: 10_000 })
    for (let i = 0; i < 1000; i++) c.setSync(`k${i}`, 'x'.repeat(100))
    const s = c.stats()
    assert.ok(s.l1Bytes <= 10_000, `l1Bytes ${s.l1Bytes}`)
    assert.ok(s.l1Bytes > 5_000, `l1Bytes ${s.l1Bytes}`)
  })

  test('stats count hits, misses, sets, deletes', async () => {
    const c = new CacheManager()
    c.setSync('a', 'x')
    for (let i = 0; i < 200; i++) c.getSync('a') // mostly front-cache hits
    c.getSync('nope')
    await c.get('nope2')
    await c.delete('a')
    const s = c.stats()
    assert.equal(s.l1Hits, 200)
    assert.equal(s.misses, 2)
    assert.equal(s.sets, 1)
    assert.equal(s.deletes, 1)
    assert.equal(s.l2Hits, 0)
    assert.ok(Math.abs(s.hitRatio - 200 / 202) < 1e-9)
  })
})

describe('getOrSet', () => {
  test('single flight: concurrent callers run the factory once', async () => {
    const c = new CacheManager()
    let calls = 0
    let release!: () => void
    const gate = new Promise<void>((r) => (release = r))
    const factory = async () => {
      calls++
      await gate
      return { v: 1 }
    }
    const all = Array.from({ length: 50 }, () => c.getOrSet('k', factory))
    release()
    const got = await Promise.all(all)
    assert.equal(calls, 1)
    for (const g of got) assert.deepEqual(g, { v: 1 })
    assert.deepEqual(await c.getOrSet('k', factory), { v: 1 })
    assert.equal(calls, 1)
  })

  test('a throwing factory rejects every waiter and caches nothing', async () => {
    const c = new CacheManager()
    let calls = 0
    const boom = Object.assign(new Error('upstream down'), { code: 'E_UP' })
    const factory = async () => {
      calls++
      await new Promise((r) => setImmediate(r))
      throw boom
    }
    const all = Array.from({ length: 10 }, () => c.getOrSet('k', factory))
    const results = await Promise.allSettled(all)
    assert.equal(calls, 1)
    for (const r of results) {
      assert.equal(r.status, 'rejected')
      assert.equal((r as PromiseRejectedResult).reason, boom)
    }
    assert.equal(c.getSync('k'), undefined)
    // A synchronous throw too.
    await assert.rejects(
      c.getOrSet('k', () => {
        throw new TypeError('sync')
      }),
      TypeError,
    )
    assert.equal(await c.getOrSet('k', () => 'ok'), 'ok')
  })

  test('a factory returning a bad value rejects ERR_INVALID_ARG', async () => {
    const c = new CacheManager()
    await assert.rejects(c.getOrSet('k', () => undefined as unknown as string), code('ERR_INVALID_ARG'))
    assert.equal(c.getSync('k'), undefined)
  })

  test('staleMs serves the stale value while one refresh runs', async () => {
    const c = new CacheManager({ ttlMs: 1000, staleMs: 5000 })
    let n = 0
    let release!: () => void
    const factory = async () => {
      n++
      if (n > 1) await new Promise<void>((r) => (release = r))
      return `v${n}`
    }
    assert.equal(await c.getOrSet('k', factory), 'v1')
    __advanceClock(1500) // expired, inside the stale window
    assert.equal(c.getSync('k'), undefined) // plain reads don't serve stale
    assert.equal(await c.getOrSet('k', factory), 'v1')
    assert.equal(await c.getOrSet('k', factory), 'v1')
    assert.equal(n, 2) // one refresh
    release()
    await new Promise((r) => setImmediate(r))
    await new Promise((r) => setImmediate(r))
    assert.equal(await c.getOrSet('k', factory), 'v2')
    __advanceClock(7000) // past the stale window: a miss, the caller waits
    assert.equal(await c.getOrSet('k', async () => 'fresh'), 'fresh')
  })

  test('refreshAheadMs refreshes in the background before expiry', async () => {
    const c = new CacheManager({ ttlMs: 10_000, refreshAheadMs: 2_000 })
    let n = 0
    const factory = async () => `v${++n}`
    assert.equal(await c.getOrSet('k', factory), 'v1')
    assert.equal(await c.getOrSet('k', factory), 'v1')
    assert.equal(n, 1)
    __advanceClock(8_500) // 1.5 s left < 2 s
    assert.equal(await c.getOrSet('k', factory), 'v1') // served, refresh started
    assert.equal(n, 2)
    await new Promise((r) => setImmediate(r))
    assert.equal(await c.getOrSet('k', factory), 'v2')
  })
})

describe('named caches and worker threads', () => {
  const workerCode = (body: string) =>
    `const { parentPort, workerData } = require('node:worker_threads');
     const { CacheManager } = require(${JSON.stringify(require.resolve('hotpath'))});
     (async () => { ${body} })().catch((e) => { parentPort.postMessage({ error: String(e && e.stack || e) }) })`

  function runWorker(body: string, onMessage?: (m: any, w: Worker) => void): Promise<any[]> {
    return new Promise((resolve, reject) => {
      const w = new Worker(workerCode(body), { eval: true })
      const msgs: any[] = []
      w.on('message', (m) => {
        if (m?.error) reject(new Error(m.error))
        msgs.push(m)
        onMessage?.(m, w)
      })
      w.on('error', reject)
      w.on('exit', () => resolve(msgs))
    })
  }

  test('a named cache made on the main thread is the same cache in a worker', async () => {
    const c = new CacheManager({ name: 'shared-1', maxEntries: 1000 })
    c.setSync('from-main', { hello: 'worker' })
    assert.equal(c.getSync('from-main-2'), undefined)
    const msgs = await runWorker(`
      const c = new CacheManager({ name: 'shared-1', maxEntries: 1000 })
      parentPort.postMessage({ seen: c.getSync('from-main') })
      c.setSync('from-worker', 'hi main')
      await c.close()
    `)
    assert.deepEqual(msgs[0].seen, { hello: 'worker' })
    assert.equal(c.getSync('from-worker'), 'hi main')
    await c.close()
  })

  test('a worker write invalidates the main thread front cache', async () => {
    const c = new CacheManager({ name: 'shared-2' })
    c.setSync('k', 'old')
    assert.equal(c.getSync('k'), 'old')
    assert.equal(c.getSync('k'), 'old') // served from the front cache now
    await runWorker(`
      const c = new CacheManager({ name: 'shared-2' })
      c.setSync('k', 'new')
      await c.close()
    `)
    assert.equal(c.getSync('k'), 'new')
    await c.close()
  })

  test('the same name with other options is ERR_INVALID_ARG', async () => {
    const c = new CacheManager({ name: 'shared-3', maxEntries: 10 })
    assert.throws(() => new CacheManager({ name: 'shared-3', maxEntries: 11 }), code('ERR_INVALID_ARG'))
    const again = new CacheManager({ name: 'shared-3', maxEntries: 10 })
    await again.close()
    await c.close()
  })

  test('getOrSet is single-flight across threads', async () => {
    const c = new CacheManager({ name: 'shared-4' })
    let release!: () => void
    const gate = new Promise<void>((r) => (release = r))
    let mainCalls = 0
    const mine = c.getOrSet('k', async () => {
      mainCalls++
      await gate
      return 'from-main-factory'
    })
    const msgs = await runWorker(
      `
      const c = new CacheManager({ name: 'shared-4' })
      let workerCalls = 0
      const p = c.getOrSet('k', async () => { workerCalls++; return 'from-worker-factory' })
      parentPort.postMessage({ waiting: true })
      const v = await p
      parentPort.postMessage({ v, workerCalls })
      await c.close()
    `,
      (m) => {
        if (m.waiting) release()
      },
    )
    assert.equal(await mine, 'from-main-factory')
    assert.equal(mainCalls, 1)
    const last = msgs[msgs.length - 1]
    assert.equal(last.v, 'from-main-factory')
    assert.equal(last.workerCalls, 0)
    await c.close()
  })
})

test('close: later calls are ERR_CLOSED, close is idempotent', async () => {
  const c = new CacheManager()
  c.setSync('k', 'v')
  assert.equal(c.getSync('k'), 'v')
  await c.close()
  await c.close()
  assert.throws(() => c.getSync('k'), code('ERR_CLOSED'))
  assert.throws(() => c.setSync('k', 1), code('ERR_CLOSED'))
  assert.throws(() => c.has('k'), code('ERR_CLOSED'))
  await assert.rejects(c.get('k'), code('ERR_CLOSED'))
  await assert.rejects(c.set('k', 1), code('ERR_CLOSED'))
  await assert.rejects(c.getOrSet('k', () => 1), code('ERR_CLOSED'))
  await assert.rejects(c.delete('k'), code('ERR_CLOSED'))
  await assert.rejects(c.clear(), code('ERR_CLOSED'))
})

test('close while a getOrSet factory runs: every caller settles (ERR_CLOSED)', async () => {
  const c = new CacheManager()
  let release!: () => void
  const gate = new Promise<void>((r) => (release = r))
  const p1 = c.getOrSet('k', async () => {
    await gate
    return 'late'
  })
  const p2 = c.getOrSet('k', () => 'other')
  const closed = c.close()
  release()
  const [r1, r2] = await Promise.allSettled([p1, p2])
  await closed
  assert.equal(r1.status, 'rejected')
  assert.equal((r1 as PromiseRejectedResult).reason.code, 'ERR_CLOSED')
  assert.equal(r2.status, 'rejected')
})

test('getOrSet counts its misses and hits (no Redis)', async () => {
  const c = new CacheManager()
  let runs = 0
  for (let i = 0; i < 3; i++) await c.getOrSet(`k${i}`, () => (runs++, i))
  await c.getOrSet('k0', () => (runs++, -1))
  const s = c.stats()
  assert.equal(runs, 3)
  assert.equal(s.misses, 3)
  assert.equal(s.l1Hits, 1)
  assert.equal(s.hitRatio, 0.25)
})
