// CacheManager's per-thread front cache (lib/front_cache.js): what a read
// returns (frozen or copied), the bounds and the CLOCK policy, coherence with
// other threads' writes, and stats.
import { test, describe } from 'node:test'
import assert from 'node:assert/strict'
import { Worker } from 'node:worker_threads'
import { CacheManager, type CacheRead, type DeepReadonly, type JsonObject } from 'hotpath'
import { __advanceClock } from 'hotpath/testing'

// eslint-disable-next-line @typescript-eslint/no-require-imports
const { FrontCache } = require('../lib/front_cache.js')

interface User extends JsonObject {
  id: number
  name: string
  tags: string[]
  address: { city: string }
}
const user = (id: number): User => ({ id, name: `user ${id}`, tags: ['a', 'b'], address: { city: 'Lyon' } })

// A fixed-seed generator (deterministic "random" tests).
function lcg(seed: number) {
  let s = seed >>> 0
  return () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32
}

describe("readMode 'frozen' (default): every reader gets the same deep-frozen value", () => {
  test('getSync, get, getMany and getOrSet return one frozen value; mutation attempts throw and change nothing', async () => {
    const c = new CacheManager<User>()
    c.setSync('u', user(1))
    const a = c.getSync('u')!
    const b = c.getSync('u')!
    assert.equal(a, b, 'one shared value')
    assert.ok(Object.isFrozen(a) && Object.isFrozen(a.tags) && Object.isFrozen(a.address))
    assert.deepEqual(a, user(1))
    assert.equal(await c.get('u'), a)
    assert.equal(await c.getOrSet('u', () => user(99)), a)
    // (a fresh binding: assert.deepEqual above narrowed `a` to User)
    const r = c.getSync('u')!
    assert.throws(() => {
      // @ts-expect-error read-only (DeepReadonly<User>)
      r.name = 'x'
    }, TypeError)
    assert.throws(() => {
      // @ts-expect-error read-only array
      r.tags.push('c')
    }, TypeError)
    assert.throws(() => {
      // @ts-expect-error read-only nested object
      r.address.city = 'Paris'
    }, TypeError)
    assert.deepEqual(c.getSync('u'), user(1))
    // Values read natively (getMany, an L1 read after the front entry went) are frozen too.
    const [m] = await c.getMany(['u'])
    assert.ok(Object.isFrozen(m) && Object.isFrozen(m!.address))
    await c.set('w', user(2)) // front-cached as JSON text: the first read parses and freezes
    const w = c.getSync('w')!
    assert.ok(Object.isFrozen(w.address))
    assert.equal(c.getSync('w'), w)
    await c.close()
  })

  test("setSync never freezes or shares the caller's object", () => {
    const c = new CacheManager()
    const mine = { n: 1, inner: { m: 1 } }
    c.setSync('o', mine)
    assert.ok(!Object.isFrozen(mine) && !Object.isFrozen(mine.inner))
    mine.n = 2
    mine.inner.m = 2
    const read = c.getSync('o') as { n: number; inner: { m: number } }
    assert.notEqual(read, mine)
    assert.deepEqual(read, { n: 1, inner: { m: 1 } })
    assert.ok(Object.isFrozen(read.inner))
  })

  test('arrays and a key named __proto__ freeze without touching prototypes', () => {
    const c = new CacheManager()
    c.setSync('a', [1, [2, { x: 3 }]])
    const a = c.getSync('a') as [number, [number, { x: number }]]
    assert.ok(Object.isFrozen(a) && Object.isFrozen(a[1]) && Object.isFrozen(a[1][1]))
    c.setSync('p', JSON.parse('{"__proto__": {"polluted": 1}}'))
    const p = c.getSync('p') as Record<string, unknown>
    assert.ok(Object.isFrozen(p))
    assert.ok(!Object.isFrozen(Object.prototype))
    assert.equal(({} as Record<string, unknown>).polluted, undefined)
  })
})

describe("readMode 'copy': every read returns a fresh mutable copy", () => {
  test('reads are distinct, mutable, and a mutation never reaches another reader', async () => {
    const c = new CacheManager<User, 'copy'>({ readMode: 'copy' })
    c.setSync('u', user(1))
    const a = c.getSync('u')!
    const b = c.getSync('u')!
    assert.notEqual(a, b)
    assert.ok(!Object.isFrozen(a))
    a.name = 'changed' // typed mutable in copy mode: no @ts-expect-error
    a.tags.push('c')
    a.address.city = 'Paris'
    assert.deepEqual(b, user(1))
    assert.deepEqual(c.getSync('u'), user(1))
    const g = (await c.get('u'))!
    g.id = 7
    assert.deepEqual(await c.getOrSet('u', () => user(9)), user(1))
    const [m] = await c.getMany(['u'])
    assert.ok(!Object.isFrozen(m))
    await c.close()
  })

  test('an unknown readMode is ERR_INVALID_ARG', () => {
    // @ts-expect-error not a read mode
    assert.throws(() => new CacheManager({ readMode: 'shared' }), { code: 'ERR_INVALID_ARG' })
    // @ts-expect-error not a read mode
    assert.throws(() => new CacheManager({ readMode: 1 }), { code: 'ERR_INVALID_ARG' })
  })
})

test('typings: CacheRead and DeepReadonly', () => {
  // Type-level assertions (tsc runs over this file in `npm test`).
  const frozen: CacheRead<User> = user(1)
  const copied: CacheRead<User, 'copy'> = user(1)
  copied.address.city = 'x'
  // @ts-expect-error frozen reads are read-only all the way down
  frozen.address.city = 'x'
  const buf: DeepReadonly<Buffer> = Buffer.from('x')
  buf[0] = 1 // a Buffer read is always a fresh copy: stays writable
  const c = new CacheManager<string | number>()
  c.setSync('s', 's')
  const s: string | number | undefined = c.getSync('s') // primitives keep their type
  assert.equal(s, 's')
})

describe('a working set larger than the front cache', () => {
  test('stays bounded by entries and bytes and every read is right (random, fixed seed)', () => {
    const c = new CacheManager({ maxEntries: 5_000, frontCacheEntries: 64, frontCacheBytes: 4_000 })
    const rnd = lcg(11)
    const expect = new Map<string, unknown>()
    for (let i = 0; i < 20_000; i++) {
      const k = `k${Math.floor(rnd() * 1_000)}`
      const r = rnd()
      if (r < 0.2) {
        const v = r < 0.1 ? { k, i, pad: 'x'.repeat(Math.floor(rnd() * 120)) } : `s${i}`.repeat(1 + Math.floor(rnd() * 30))
        c.setSync(k, v)
        expect.set(k, v)
      } else {
        assert.deepEqual(c.getSync(k), expect.get(k), `read ${i} of ${k}`)
      }
      const f = (c as any)._front
      assert.ok(f.size <= 64, `front entries ${f.size}`)
      assert.ok(f.bytes <= 4_000, `front bytes ${f.bytes}`)
    }
    const f = (c as any)._front
    let bytes = 0
    for (const e of f.map.values()) bytes += e.weight
    assert.equal(bytes, f.bytes, 'byte accounting')
  })

  test('a value larger than frontCacheBytes is served natively, never front-cached', () => {
    const c = new CacheManager({ frontCacheBytes: 100 })
    c.setSync('big', 'x'.repeat(200))
    assert.equal(c.getSync('big'), 'x'.repeat(200))
    assert.equal((c as any)._front.size, 0)
  })

  test('CLOCK: hot keys survive a scan of one-off keys; stale entries go first', () => {
    const versions = new Uint32Array(16)
    const f = new FrontCache(versions, 10, 1e9, false)
    for (let i = 0; i < 5; i++) f.set(`hot${i}`, i, null, 8, 0, 0, -1)
    for (let i = 0; i < 5; i++) assert.ok(f.live(`hot${i}`, 0))
    for (let i = 0; i < 1_000; i++) {
      f.set(`scan${i}`, i, null, 8, 1, 0, -1)
      for (let h = 0; h < 5; h++) if (i % 4 === 0) f.live(`hot${h}`, 0) // the hot set keeps being read
      assert.ok(f.size <= 10)
    }
    for (let i = 0; i < 5; i++) assert.equal(f.live(`hot${i}`, 0)?.val, i, `hot${i} evicted by a scan`)
    // An entry whose slot moved on is evicted before referenced live ones.
    versions[1]++
    f.set('new', 1, null, 8, 2, 0, -1)
    for (let i = 0; i < 5; i++) assert.ok(f.map.has(`hot${i}`))
  })
})

describe('coherence', () => {
  const workerCode = (body: string) =>
    `const { parentPort } = require('node:worker_threads');
     const { CacheManager } = require(${JSON.stringify(require.resolve('hotpath'))});
     (async () => { ${body} })().catch((e) => { parentPort.postMessage({ error: String(e && e.stack || e) }) })`
  function runWorker(body: string): Promise<unknown[]> {
    return new Promise((resolve, reject) => {
      const w = new Worker(workerCode(body), { eval: true })
      const msgs: unknown[] = []
      w.on('message', (m) => {
        if (m?.error) reject(new Error(m.error))
        msgs.push(m)
      })
      w.on('error', reject)
      w.on('exit', () => resolve(msgs))
    })
  }

  test("a worker thread's write and delete invalidate the main thread's front-cached object", async () => {
    const c = new CacheManager({ name: 'front-coherence-1' })
    c.setSync('u', { v: 'old' })
    const old = c.getSync('u')
    assert.equal(c.getSync('u'), old) // the front cache serves it now
    await runWorker(`
      const c = new CacheManager({ name: 'front-coherence-1' })
      c.setSync('u', { v: 'new' })
      await c.close()
    `)
    assert.deepEqual(c.getSync('u'), { v: 'new' })
    assert.deepEqual(await c.get('u'), { v: 'new' })
    await runWorker(`
      const c = new CacheManager({ name: 'front-coherence-1' })
      await c.delete('u')
      await c.close()
    `)
    assert.equal(c.getSync('u'), undefined)
    assert.equal(c.has('u'), false)
    await c.close()
  })

  test('a write on another handle of the same thread invalidates this handle', async () => {
    const a = new CacheManager({ name: 'front-coherence-2' })
    const b = new CacheManager({ name: 'front-coherence-2' })
    a.setSync('k', [1])
    assert.deepEqual(a.getSync('k'), [1])
    assert.deepEqual(b.getSync('k'), [1])
    b.setSync('k', [2])
    assert.deepEqual(a.getSync('k'), [2])
    await a.set('k', [3])
    assert.deepEqual(b.getSync('k'), [3])
    await a.close()
    await b.close()
  })

  test('an L1 eviction invalidates the front-cached value', () => {
    const c = new CacheManager({ maxEntries: 10, policy: 'lru' })
    c.setSync('first', { n: 1 })
    assert.deepEqual(c.getSync('first'), { n: 1 })
    for (let i = 0; i < 200; i++) c.setSync(`x${i}`, i)
    c.stats() // runs L1's pending maintenance
    assert.equal(c.getSync('first'), undefined)
  })

  test('front-cached entries expire with their TTL (clock moved)', () => {
    const c = new CacheManager()
    c.setSync('t', { n: 1 }, { ttlMs: 1_000 })
    assert.deepEqual(c.getSync('t'), { n: 1 })
    __advanceClock(1_001)
    assert.equal(c.getSync('t'), undefined)
  })
})

test('stats count front hits exactly, for objects and strings', async () => {
  const c = new CacheManager()
  c.setSync('o', { n: 1 })
  c.setSync('s', 'x')
  for (let i = 0; i < 1_000; i++) c.getSync('o')
  for (let i = 0; i < 300; i++) await c.get('s')
  for (let i = 0; i < 77; i++) c.has('o') // has() is not a read: not counted
  const s = c.stats()
  assert.equal(s.l1Hits, 1_300)
  assert.equal(s.misses, 0)
  await c.close()
})

test('async set fills the front cache; getMany serves front hits without a native call', async () => {
  const c = new CacheManager<User>()
  const front = (c as any)._front
  const native = (c as any)._n
  await c.set('a', user(1))
  assert.ok(front.map.has('a'), 'set() holds what it wrote in the front cache')
  let nativeReads = 0
  for (const m of ['getSync', 'getMany', 'peek']) {
    const f = native[m].bind(native)
    native[m] = (...args: unknown[]) => {
      nativeReads++
      return f(...args)
    }
  }
  const a = c.getSync('a')!
  assert.deepEqual(a, user(1))
  assert.ok(Object.isFrozen(a))
  c.setSync('b', user(2))
  assert.equal(nativeReads, 0)
  // Every key front-cached: no native call; values are the front's own.
  const [x, y, z] = await c.getMany(['a', 'b', 'a'])
  assert.equal(nativeReads, 0)
  assert.equal(x, a)
  assert.equal(z, a)
  assert.deepEqual(y, user(2))
  // One key the front cache does not hold: one native call, order kept.
  front.delete('b')
  const r = await c.getMany(['a', 'b', 'missing', 'a'])
  assert.equal(nativeReads, 1)
  assert.equal(r[0], a)
  assert.deepEqual(r[1], user(2))
  assert.ok(Object.isFrozen(r[1]))
  assert.equal(r[2], undefined)
  assert.equal(r[3], a)
  // Front hits of getMany count as L1 hits; the native misses as misses.
  const s = c.stats()
  // (getSync 1, first getMany 3, second getMany 2 from the front + 1 native)
  assert.equal(s.l1Hits, 1 + 3 + 2 + 1)
  assert.equal(s.misses, 1)
  await c.close()
})

test("a write the cache did not keep leaves nothing in the writer's front cache", async () => {
  const c = new CacheManager({ maxBytes: 100 })
  c.setSync('k', 'small')
  assert.equal(c.getSync('k'), 'small')
  await c.set('k', 'x'.repeat(200)) // heavier than maxBytes: not kept, the old value goes
  assert.equal(c.getSync('k'), undefined)
  assert.equal((c as any)._front.map.has('k'), false)
  await c.close()
})

test("front hits reach L1's policy: a hot key read only from the front survives a flood of cold keys", () => {
  const c = new CacheManager({ maxEntries: 200 })
  c.setSync('hot', { hot: true })
  for (let round = 0; round < 20; round++) {
    for (let i = 0; i < 200; i++) c.getSync('hot') // front hits, sampled into L1
    for (let i = 0; i < 200; i++) c.setSync(`cold${round}:${i}`, i)
  }
  c.stats()
  assert.deepEqual(c.getSync('hot'), { hot: true })
})
