// Redis Cluster: a real 3-primary cluster started by the test.
import { test, describe, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { CacheManager } from 'hotpath'
import { redisUrl, eventually, OwnCluster } from './helpers.ts'

describe('CacheManager on Redis Cluster', () => {
  let cluster: OwnCluster | null = null
  before(async () => {
    if (!process.env.REDIS_URL && process.env.CI !== 'true') return
    cluster = new OwnCluster()
    await cluster.start()
  })
  after(async () => {
    await cluster?.dispose()
  })

  test('read-through, getMany across slots, pattern/tag deletes on every node, invalidation, clear', async (t) => {
    if (!redisUrl(t)) return
    const keyPrefix = `hp-cluster-${process.pid}:`
    // Generous timeouts: a loaded 2-core CI machine, and a cluster seconds old.
    const opts = { redis: { url: '', cluster: cluster!.urls, keyPrefix, commandTimeoutMs: 5000 } }
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
})
