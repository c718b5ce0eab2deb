// Redis Cluster: real 3-primary clusters started by the test.
import { test, describe, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { CacheManager, RateLimiter } from 'hotpath'
import Redis from 'ioredis'
import { redisUrl, eventually, OwnCluster, freeClusterPort } from './helpers.ts'

const wantCluster = () => !!process.env.REDIS_URL || process.env.CI === 'true'

// CI failed once when a node got an ephemeral port above 55535: its cluster
// bus (port + 10000) can't exist, the node exits at start-up.
test('test helper: a cluster node port leaves room for its bus port', async () => {
  for (let i = 0; i < 50; i++) {
    const p = await freeClusterPort()
    assert.ok(p > 0 && p <= 55535, `port ${p}`)
  }
})

describe('CacheManager on Redis Cluster', () => {
  let cluster: OwnCluster | null = null
  before(async () => {
    if (!wantCluster()) return
    cluster = new OwnCluster()
    await cluster.start()
  })
  after(async () => {
    await cluster?.dispose()
  })

  test('read-through, getMany across slots, pattern/tag deletes on every node, invalidation, clear', async (t) => {
    if (!redisUrl(t)) return
    const keyPrefix = `hp-cluster-${process.pid}:`
    // `cluster` alone, no `url`. Generous timeouts: a loaded 2-core CI
    // machine, and a cluster seconds old.
    const opts = { redis: { cluster: cluster!.urls, keyPrefix, commandTimeoutMs: 5000 } }
    const a = new CacheManager(opts)
    const b = new CacheManager(opts)
    const keys = Array.from({ length: 200 }, (_, i) => `k${i}`) // spread over all slots/nodes
    await a.setMany(keys.map((k, i) => [k, { i }] as [string, { i: number }]), { tags: ['all'] })
    assert.equal(a.stats().l2Errors, 0)
    assert.deepEqual(await b.getMany(keys), keys.map((_, i) => ({ i })))
    assert.equal(b.stats().l2Hits, 200)
    assert.equal(b.stats().l2Errors, 0)

    // Invalidation reaches b (PUBLISH is cluster-wide).
    await eventually(async () => {
      await a.set('k0', { i: -1 })
      return b.has('k0') === false
    }, 10_000, 'cluster pub/sub invalidation')
    assert.deepEqual(await b.get('k0'), { i: -1 })

    assert.equal(await a.deletePattern('k1*'), 1 + 10 + 100) // k1, k10-k19, k100-k199
    // b's L1 still had them until the invalidation arrives.
    await eventually(async () => (await b.get('k150')) === undefined, 10_000, 'pattern invalidation')
    assert.deepEqual(await b.get('k20'), { i: 20 })
    const left = await a.deleteTag('all')
    assert.equal(left, 200 - 111)
    await eventually(async () => (await b.get('k20')) === undefined, 10_000, 'tag invalidation')
    await a.set('x', 1)
    assert.equal(await b.get('x'), 1)
    await a.clear()
    await eventually(async () => (await b.get('x')) === undefined, 10_000, 'clear invalidation')
    assert.equal(a.stats().l2Errors, 0)
    await a.close()
    await b.close()
  })

  test('limiter keys with { and } never split across slots (no CROSSSLOT)', async (t) => {
    if (!redisUrl(t)) return
    const keyPrefix = `hp-cluster-braces-${process.pid}:`
    const keys = ['}', '}x', '{', '{}', 'a{b}c', '}{', 'x}y{z', '\\', '{user:1}']
    for (const algorithm of ['sliding-window', 'fixed-window', 'gcra'] as const) {
      const l = new RateLimiter({ limit: 2, windowMs: 60_000, algorithm, onRedisError: 'deny', redis: { cluster: cluster!.urls, keyPrefix, commandTimeoutMs: 5000 } })
      for (const k of keys) {
        const rs = [await l.check(k), await l.check(k), await l.check(k)]
        assert.deepEqual(rs.map((r) => r.allowed), [true, true, false], `${algorithm} ${JSON.stringify(k)}`)
      }
      assert.equal(l.stats().redisErrors, 0, algorithm)
      // Two keys that differ only by braces are two limits.
      assert.equal((await l.check('p{q')).allowed, true)
      assert.equal((await l.check('p}q')).allowed, true)
      for (const k of [...keys, 'p{q', 'p}q']) await l.reset(k)
      await l.close()
    }
  })
})

describe('Authenticated Redis Cluster (requirepass / masterauth)', () => {
  const password = `pw-${process.pid}-s3cret`
  let cluster: OwnCluster | null = null
  before(async () => {
    if (!wantCluster()) return
    // Losing a node leaves the other nodes' slots served.
    cluster = new OwnCluster({ password, extraArgs: ['--cluster-require-full-coverage', 'no'] })
    await cluster.start()
  })
  after(async () => {
    await cluster?.dispose()
  })

  test('deletePattern and clear reach every node with the seed credentials', async (t) => {
    if (!redisUrl(t)) return
    const keyPrefix = `hp-auth-${process.pid}:`
    const opts = { redis: { cluster: cluster!.urls, keyPrefix, commandTimeoutMs: 5000 } }
    const a = new CacheManager(opts)
    const keys = Array.from({ length: 60 }, (_, i) => `u${i}`)
    await a.setMany(keys.map((k) => [k, k] as [string, string]))
    assert.equal(a.stats().l2Errors, 0)
    // Before the fix: NOAUTH (node connections were made without the password).
    assert.equal(await a.deletePattern('u1*'), 11) // u1, u10-u19
    await a.set('y', 1)
    await a.clear()
    const b = new CacheManager({ ...opts, invalidation: 'none' as const })
    assert.deepEqual(await b.getMany(['u2', 'u33', 'y']), [undefined, undefined, undefined])
    assert.equal(a.stats().l2Errors, 0)
    assert.equal(b.stats().l2Errors, 0)
    const l = new RateLimiter({ limit: 1, windowMs: 60_000, onRedisError: 'deny', redis: opts.redis })
    assert.equal((await l.check('}k')).allowed, true)
    assert.equal((await l.check('}k')).allowed, false)
    assert.equal(l.stats().redisErrors, 0)
    await l.reset('}k')
    await l.close()
    await a.close()
    await b.close()
  })

  test('losing the first seed: invalidation is still delivered', async (t) => {
    if (!redisUrl(t)) return
    const keyPrefix = `hp-seedloss-${process.pid}:`
    const opts = { redis: { cluster: cluster!.urls, keyPrefix, commandTimeoutMs: 3000, connectTimeoutMs: 1000 } }
    const a = new CacheManager(opts)
    const b = new CacheManager(opts)
    // Both subscriptions live: a write from a evicts b's copy.
    await eventually(async () => {
      await a.set('probe', Math.random())
      await b.get('probe')
      await a.set('probe', Math.random())
      await new Promise((r) => setTimeout(r, 50))
      return !b.has('probe')
    }, 15_000, 'subscriptions')
    // Keys whose slots the surviving nodes serve. (A write to a slot of the
    // lost node is retried for writeRetryMs, and this instance's later writes
    // wait behind it in order: with such keys in the loop below, CI once ran
    // out of its 30 s.)
    const node1 = new Redis({ port: cluster!.nodes[1].port, host: '127.0.0.1', password, lazyConnect: true })
    let keys: string[]
    try {
      await node1.connect()
      const slots = (await node1.call('CLUSTER', 'SLOTS')) as [number, number, [string, number]][]
      const lost = slots.filter((r) => r[2][1] === cluster!.nodes[0].port)
      keys = []
      for (let i = 0; keys.length < 30; i++) {
        const slot = Number(await node1.call('CLUSTER', 'KEYSLOT', `${keyPrefix}c:s${i}`))
        if (!lost.some(([lo, hi]) => slot >= lo && slot <= hi)) keys.push(`s${i}`)
      }
    } finally {
      node1.disconnect()
    }
    await cluster!.nodes[0].stop() // the first seed is gone for good
    // Keys on the surviving nodes keep working, and b hears a's writes.
    await eventually(async () => {
      for (const k of keys) {
        const before = a.stats().l2Errors
        await a.set(k, 'v1')
        if (a.stats().l2Errors !== before) continue // its slot was on the lost node
        if ((await b.get(k)) !== 'v1') continue
        await a.set(k, 'v2')
        if (a.stats().l2Errors !== before) continue
        const deadline = Date.now() + 2000
        while (Date.now() < deadline) {
          if (!b.has(k)) return (await b.get(k)) === 'v2'
          await new Promise((r) => setTimeout(r, 20))
        }
      }
      return false
    }, 30_000, 'invalidation after the first seed died')
    await a.close()
    await b.close()
  })
})
