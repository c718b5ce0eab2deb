// CacheManager with L2 on a real redis-server (started by `npm test`).
import { test, describe, before, after } from 'node:test'
import assert from 'node:assert/strict'
import Redis from 'ioredis'
import { CacheManager } from 'hotpath'
import { redisUrl, eventually, freePort, OwnRedis } from './helpers.ts'

let n = 0
const prefix = () => `hp-test-${process.pid}-${++n}:`

describe('CacheManager on Redis', () => {
  let url: string | null = null
  let raw: Redis
  before(() => {
    url = process.env.REDIS_URL ?? null
    if (url) raw = new Redis(url)
  })
  after(async () => {
    await raw?.quit()
  })

  test('L2 read-through between two instances, and the value format', async (t) => {
    if (!redisUrl(t)) return
    const keyPrefix = prefix()
    const a = new CacheManager({ redis: { url: url!, keyPrefix } })
    const b = new CacheManager({ redis: { url: url!, keyPrefix } })
    await a.set('s', 'hello')
    await a.set('n', 42)
    await a.set('o', { a: [1, 'x'] })
    await a.set('buf', Buffer.from([0, 1, 2]))
    await a.set('nil', null)
    assert.equal(await b.get('s'), 'hello')
    assert.equal(await b.get('n'), 42)
    assert.deepEqual(await b.get('o'), { a: [1, 'x'] })
    assert.deepEqual(await b.get('buf'), Buffer.from([0, 1, 2]))
    assert.equal(await b.get('nil'), null)
    // An L2 hit fills L1.
    assert.equal(b.has('s'), true)
    assert.equal(b.getSync('s'), 'hello')
    const s = b.stats()
    assert.equal(s.l2Hits, 5)
    // Redis holds JSON text other clients can read; Buffers are tagged bytes.
    assert.equal(await raw.get(`${keyPrefix}c:s`), '"hello"')
    assert.equal(await raw.get(`${keyPrefix}c:n`), '42')
    assert.deepEqual(JSON.parse((await raw.get(`${keyPrefix}c:o`))!), { a: [1, 'x'] })
    assert.deepEqual(await raw.getBuffer(`${keyPrefix}c:buf`), Buffer.from([0, 0x42, 0, 1, 2]))
    // Another client's JSON is readable.
    await raw.set(`${keyPrefix}c:ext`, '{"from":"python"}')
    assert.deepEqual(await b.get('ext'), { from: 'python' })
    await a.clear()
    await a.close()
    await b.close()
  })

  test('pub/sub invalidation evicts other instances’ L1 on set, delete, pattern, tag and clear', async (t) => {
    if (!redisUrl(t)) return
    const keyPrefix = prefix()
    const a = new CacheManager({ redis: { url: url!, keyPrefix } })
    const b = new CacheManager({ redis: { url: url!, keyPrefix } })
    // Wait until both subscriptions are live: a write from one is seen by the other.
    await a.set('probe', 0)
    assert.equal(await b.get('probe'), 0)
    await eventually(async () => {
      await a.set('probe', Math.random())
      return b.getSync('probe') === undefined
    }, 5000, 'subscription')

    await a.set('k', 'v1')
    assert.equal(await b.get('k'), 'v1')
    // In b's L1 (and front cache). b's fill is dropped, by design, when the
    // invalidation of a's write reaches b while b's read is in flight: read
    // again until it stays.
    await eventually(async () => (await b.get('k')) === 'v1' && b.getSync('k') === 'v1', 5000, 'k filled into b')
    await a.set('k', 'v2')
    await eventually(() => b.getSync('k') !== 'v1', 5000, 'set invalidation')
    assert.equal(await b.get('k'), 'v2')

    await a.delete('k')
    await eventually(() => b.getSync('k') === undefined, 5000, 'delete invalidation')
    assert.equal(await b.get('k'), undefined)

    await a.set('user:1', 1)
    await a.set('user:2', 2, { tags: ['t'] })
    await a.set('order:1', 3)
    for (const k of ['user:1', 'user:2', 'order:1']) await b.get(k)
    assert.equal(await a.deletePattern('user:1*'), 1)
    await eventually(() => b.getSync('user:1') === undefined, 5000, 'pattern invalidation')
    assert.equal(await a.deleteTag('t'), 1)
    await eventually(() => b.getSync('user:2') === undefined, 5000, 'tag invalidation')
    assert.equal(await raw.exists(`${keyPrefix}c:user:2`), 0)
    assert.equal(b.getSync('order:1'), 3)
    await a.clear()
    await eventually(() => b.getSync('order:1') === undefined, 5000, 'clear invalidation')
    await a.close()
    await b.close()
  })

  test('getMany costs one round trip (MGET) for all L1 misses', async (t) => {
    if (!redisUrl(t)) return
    const keyPrefix = prefix()
    const a = new CacheManager({ redis: { url: url!, keyPrefix } })
    const b = new CacheManager({ redis: { url: url!, keyPrefix }, invalidation: 'none' })
    const keys = Array.from({ length: 100 }, (_, i) => `m${i}`)
    await a.setMany(keys.map((k, i) => [k, i] as [string, number]))
    const before = await commandCalls(raw, ['mget', 'get'])
    const got = await b.getMany(keys)
    const afterCalls = await commandCalls(raw, ['mget', 'get'])
    assert.deepEqual(got, keys.map((_, i) => i))
    assert.equal(afterCalls.mget - before.mget, 1)
    assert.equal(afterCalls.get - before.get, 0)
    // Second time: all L1 hits, no Redis at all.
    assert.deepEqual(await b.getMany(keys), keys.map((_, i) => i))
    assert.equal((await commandCalls(raw, ['mget'])).mget, afterCalls.mget)
    await a.clear()
    await a.close()
    await b.close()
  })

  test('gets issued in one tick go out as one MGET; a write in that tick still wins over their fills', async (t) => {
    if (!redisUrl(t)) return
    const keyPrefix = prefix()
    const a = new CacheManager({ redis: { url: url!, keyPrefix }, invalidation: 'none' })
    const b = new CacheManager({ redis: { url: url!, keyPrefix }, invalidation: 'none' })
    const keys = Array.from({ length: 50 }, (_, i) => `g${i}`)
    await a.setMany(keys.map((k, i) => [k, { i }] as [string, { i: number }]))
    const before = await commandCalls(raw, ['mget', 'get'])
    const reads = keys.map((k) => b.get(k))
    reads.push(b.get('absent'))
    // After the reads were asked, before they went out: a local write.
    b.setSync('g7', { i: -7 })
    const got = await Promise.all(reads)
    const afterCalls = await commandCalls(raw, ['mget', 'get'])
    assert.equal(afterCalls.mget - before.mget, 1)
    assert.equal(afterCalls.get - before.get, 0)
    assert.deepEqual(got.slice(0, 50).filter((_, i) => i !== 7), keys.map((_, i) => ({ i })).filter((_, i) => i !== 7))
    assert.equal(got[50], undefined)
    // The read of g7 may answer the value Redis had when it was asked, but it
    // must not fill L1 over the newer write.
    assert.deepEqual(b.getSync('g7'), { i: -7 })
    assert.deepEqual(b.getSync('g3'), { i: 3 }) // the others were filled
    const st = b.stats()
    assert.equal(st.l2Hits, 50)
    await b.close()
    await a.clear()
    await a.close()
  })

  test('gets of large values leave 16 at a time as they are asked (Redis works while the tick goes on); small ones wait for the end of the tick', async (t) => {
    if (!redisUrl(t)) return
    const keyPrefix = prefix()
    const a = new CacheManager({ redis: { url: url!, keyPrefix }, invalidation: 'none' })
    const big = (i: number) => ({ i, pad: 'x'.repeat(2000) })
    await a.setMany(Array.from({ length: 200 }, (_, i) => [`big${i}`, big(i)] as [string, ReturnType<typeof big>]))
    await a.setMany(Array.from({ length: 200 }, (_, i) => [`small${i}`, i] as [string, number]))
    const b = new CacheManager({ redis: { url: url!, keyPrefix }, invalidation: 'none', frontCacheEntries: 0 })
    // The first tick's reads teach the handle how large the values are.
    assert.deepEqual(await Promise.all([0, 1, 2].map((i) => b.get(`big${i}`))), [0, 1, 2].map(big))
    let before = await commandCalls(raw, ['mget'])
    const got = await Promise.all(Array.from({ length: 64 }, (_, i) => b.get(`big${i + 10}`)))
    assert.deepEqual(got, Array.from({ length: 64 }, (_, i) => big(i + 10)))
    assert.equal((await commandCalls(raw, ['mget'])).mget - before.mget, 4)
    const c = new CacheManager({ redis: { url: url!, keyPrefix }, invalidation: 'none', frontCacheEntries: 0 })
    assert.equal(await c.get('small0'), 0)
    before = await commandCalls(raw, ['mget'])
    assert.deepEqual(await Promise.all(Array.from({ length: 64 }, (_, i) => c.get(`small${i + 10}`))), Array.from({ length: 64 }, (_, i) => i + 10))
    assert.equal((await commandCalls(raw, ['mget'])).mget - before.mget, 1)
    await b.close()
    await c.close()
    await a.clear()
    await a.close()
  })

  test('many gets in one tick (more than one MGET, some taking the Tokio path while a write is queued) each get their own value', async (t) => {
    if (!redisUrl(t)) return
    const keyPrefix = prefix()
    const a = new CacheManager({ redis: { url: url!, keyPrefix }, invalidation: 'none' })
    const values = (i: number) => (i % 3 === 0 ? { i } : i % 3 === 1 ? `s${i}` : i)
    const keys = Array.from({ length: 1300 }, (_, i) => `t${i}`)
    await a.setMany(keys.map((k, i) => [k, values(i)] as [string, ReturnType<typeof values>]))
    for (let round = 0; round < 3; round++) {
      // A fresh reader: every read misses L1.
      const b = new CacheManager({ redis: { url: url!, keyPrefix }, invalidation: 'none', frontCacheEntries: 0 })
      const reads: Promise<unknown>[] = []
      for (let i = 0; i < keys.length; i++) {
        // A write queued mid-tick sends the reads after it to the Tokio
        // side until it lands (which may be within this very tick).
        if (i % 200 === 100) b.setSync(`w${round}-${i}`, i)
        reads.push(i % 97 === 5 ? b.get(`absent${i}`) : b.get(keys[i]))
      }
      const got = await Promise.all(reads)
      got.forEach((v, i) => assert.deepEqual(v, i % 97 === 5 ? undefined : values(i), `read ${i} of round ${round}`))
      await b.close()
    }
    await a.clear()
    await a.close()
  })

  test('deletePattern uses SCAN, never KEYS, and clear touches only this cache', async (t) => {
    if (!redisUrl(t)) return
    const keyPrefix = prefix()
    const c = new CacheManager({ redis: { url: url!, keyPrefix } })
    await raw.set('unrelated:key', 'keep')
    await raw.set(`${keyPrefix}other-component`, 'keep')
    for (let i = 0; i < 1200; i++) c.setSync(`p:${i}`, i)
    await c.close() // flushes write-behind
    const c2 = new CacheManager({ redis: { url: url!, keyPrefix } })
    const before = await commandCalls(raw, ['keys', 'scan'])
    assert.equal(await c2.deletePattern('p:1*'), 1 + 10 + 100 + 200) // 1, 10-19, 100-199, 1000-1199
    const afterCalls = await commandCalls(raw, ['keys', 'scan'])
    assert.equal(afterCalls.keys, before.keys)
    assert.ok(afterCalls.scan > before.scan)
    assert.equal(await raw.exists(`${keyPrefix}c:p:150`), 0)
    assert.equal(await raw.exists(`${keyPrefix}c:p:250`), 1)
    await c2.clear()
    assert.equal(await raw.exists(`${keyPrefix}c:p:250`), 0)
    assert.equal(await raw.get('unrelated:key'), 'keep')
    assert.equal(await raw.get(`${keyPrefix}other-component`), 'keep')
    await raw.del('unrelated:key', `${keyPrefix}other-component`)
    await c2.close()
  })

  test('setSync is write-behind, and close() flushes every pending write', async (t) => {
    if (!redisUrl(t)) return
    const keyPrefix = prefix()
    const c = new CacheManager({ redis: { url: url!, keyPrefix } })
    for (let i = 0; i < 5000; i++) c.setSync(`w${i}`, `v${i}`, { ttlMs: 60_000 })
    await c.close()
    const vals = await raw.mget(Array.from({ length: 5000 }, (_, i) => `${keyPrefix}c:w${i}`))
    assert.equal(vals.filter((v, i) => v === `"v${i}"`).length, 5000)
    const ttl = await raw.pttl(`${keyPrefix}c:w0`)
    assert.ok(ttl > 50_000 && ttl <= 60_000, String(ttl))
    const d = new CacheManager({ redis: { url: url!, keyPrefix } })
    assert.ok(((await d.remainingTtlMs('w1')) ?? 0) > 50_000)
    await d.clear()
    await d.close()
  })

  test('getOrSet with L2: a value in Redis is used, no factory call', async (t) => {
    if (!redisUrl(t)) return
    const keyPrefix = prefix()
    const a = new CacheManager({ redis: { url: url!, keyPrefix } })
    const b = new CacheManager({ redis: { url: url!, keyPrefix } })
    let calls = 0
    assert.equal(await a.getOrSet('g', async () => (calls++, 'made')), 'made')
    assert.equal(await b.getOrSet('g', async () => (calls++, 'again')), 'made')
    assert.equal(calls, 1)
    await a.clear()
    await a.close()
    await b.close()
  })
})

describe('CacheManager when Redis is unreachable or restarts', () => {
  test('unreachable Redis: L1 still works, nothing throws, l2Errors counts, within the timeout', async (t) => {
    if (!redisUrl(t)) return
    const c = new CacheManager({ redis: { url: 'redis://127.0.0.1:1', commandTimeoutMs: 200, connectTimeoutMs: 100 } })
    const t0 = Date.now()
    await c.set('k', 'v') // resolves: L1 set, L2 failed
    assert.equal(c.getSync('k'), 'v')
    assert.equal(await c.get('k'), 'v') // from L1
    assert.equal(await c.get('missing'), undefined)
    assert.deepEqual(await c.getMany(['k', 'missing']), ['v', undefined])
    c.setSync('s', 1)
    assert.ok(Date.now() - t0 < 2000, `took ${Date.now() - t0} ms`)
    const s = c.stats()
    assert.ok(s.l2Errors >= 3, `l2Errors ${s.l2Errors}`)
    // While Redis is down, calls fail fast instead of each waiting for its own
    // reconnect attempt (one probe per 200 ms): 100 misses cost far less than
    // 100 connection attempts.
    const t1 = Date.now()
    for (let i = 0; i < 100; i++) assert.equal(await c.get(`miss${i}`), undefined)
    assert.ok(Date.now() - t1 < 3000, `100 gets with Redis down took ${Date.now() - t1} ms`)
    await c.close()
  })

  test('a Redis stopped and restarted mid-test: degrade, then heal by itself', async (t) => {
    if (!redisUrl(t)) return
    const own = new OwnRedis(await freePort())
    await own.start()
    try {
      const keyPrefix = prefix()
      const opts = { redis: { url: own.url, keyPrefix, commandTimeoutMs: 300, connectTimeoutMs: 200 } }
      const a = new CacheManager(opts)
      const b = new CacheManager(opts)
      await a.set('k', 'before')
      assert.equal(await b.get('k'), 'before')
      await own.stop()
      const t0 = Date.now()
      await a.set('k2', 'during') // L1 only
      assert.equal(await a.get('k2'), 'during')
      assert.equal(await b.get('k2'), undefined) // b's L2 read fails softly
      assert.ok(Date.now() - t0 < 3000)
      assert.ok(a.stats().l2Errors >= 1)
      await own.start() // empty server, same port
      // Heals: writes reach Redis again and the other instance reads them.
      await eventually(async () => {
        await a.set('k3', 'after')
        const r = new Redis(own.url)
        const v = await r.get(`${keyPrefix}c:k3`)
        await r.quit()
        return v === '"after"'
      }, 10_000, 'reconnect')
      // b heals by itself too (its own connection may still be inside the
      // 200 ms fail-fast window of its last failed command).
      await eventually(async () => (await b.get('k3')) === 'after', 10_000, 'b reads Redis again')
      // b's subscription reconnected too, so it flushed L1 (messages may have been missed)
      // and hears invalidations again.
      await eventually(async () => {
        await a.set('k3', 'after-2')
        return (await b.get('k3')) === 'after-2'
      }, 10_000, 'invalidation after reconnect')
      await a.close()
      await b.close()
    } finally {
      await own.dispose()
    }
  })
})

async function commandCalls(r: Redis, cmds: string[]): Promise<Record<string, number>> {
  const info = await r.info('commandstats')
  const out: Record<string, number> = {}
  for (const c of cmds) {
    const m = new RegExp(`cmdstat_${c}:calls=(\\d+)`).exec(info)
    out[c] = m ? Number(m[1]) : 0
  }
  return out
}
