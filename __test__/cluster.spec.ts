// Redis Cluster: real 3-primary clusters started by the test.
import { test, describe, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { CacheManager, RateLimiter } from 'hotpath'
import Redis from 'ioredis'
import { redisUrl, eventually, OwnCluster, freeClusterPort } from './helpers.ts'
import { clusterRoutes } from 'hotpath/testing'

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

  test('the JS-thread path with credentials: MGETs per slot, limiter checks; errors never show the password', async (t) => {
    if (!redisUrl(t)) return
    const keyPrefix = `hp-authfast-${process.pid}:`
    const redis = { cluster: cluster!.urls, keyPrefix, commandTimeoutMs: 5000 }
    const w = new CacheManager({ redis, invalidation: 'none' })
    const keys = Array.from({ length: 40 }, (_, i) => `a${i}`)
    await w.setMany(keys.map((k) => [k, k] as [string, string]))
    const r = new CacheManager({ redis, invalidation: 'none' })
    assert.equal(await r.get('warm-up'), undefined)
    await resetStats(cluster!.nodes, password)
    const before = clusterRoutes()
    assert.deepEqual(await Promise.all(keys.map((k) => r.get(k))), keys)
    const calls = await commandCalls(cluster!.nodes, password)
    assert.equal(calls.get('get') ?? 0, 0)
    assert.ok((calls.get('mget') ?? 0) > 0)
    assert.ok(clusterRoutes().sent > before.sent)
    assert.equal(r.stats().l2Errors, 0)
    const l = new RateLimiter({ limit: 1, windowMs: 60_000, onRedisError: 'deny', redis })
    const sent = clusterRoutes().sent
    assert.deepEqual((await Promise.all(keys.map((k) => l.check(k)))).map((d) => d.allowed), keys.map(() => true))
    assert.ok(clusterRoutes().sent > sent)
    assert.equal(l.stats().redisErrors, 0)
    for (const k of keys) await l.reset(k)
    await Promise.all([l.close(), r.close(), w.close()])

    // A wrong password: in a child with HOTPATH_DEBUG=1, the node
    // connection's own error (the handshake refused, naming the node), and
    // neither password anywhere.
    const wrong = `wrong-${password}`
    const urls = cluster!.urls.map((u) => u.replace(encodeURIComponent(password), encodeURIComponent(wrong)))
    const script = `
      const { CacheManager, RateLimiter } = require(${JSON.stringify(process.cwd())})
      ;(async () => {
        const redis = { cluster: ${JSON.stringify(urls)}, keyPrefix: 'x:', commandTimeoutMs: 2000 }
        const c = new CacheManager({ redis, invalidation: 'none' })
        console.log('get', await c.get('k'), c.stats().l2Errors)
        const l = new RateLimiter({ limit: 1, windowMs: 1000, onRedisError: 'deny', redis })
        console.log('check', (await l.check('k')).allowed, l.stats().redisErrors)
        await c.close(); await l.close()
      })()`
    const { spawnSync } = await import('node:child_process')
    const out = spawnSync(process.execPath, ['-e', script], { env: { ...process.env, HOTPATH_DEBUG: '1' }, encoding: 'utf8', timeout: 30_000 })
    assert.equal(out.status, 0, out.stderr)
    assert.match(out.stdout, /get undefined 1/)
    assert.match(out.stdout, /check false 1/)
    assert.match(out.stderr, /127\.0\.0\.1:\d+ refused the handshake/)
    for (const secret of [password, wrong]) {
      assert.ok(!out.stderr.includes(secret) && !out.stdout.includes(secret), 'no password in the output')
    }
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

// ---------------------------------------------------------------------------
// The JS-thread path on a Cluster (src/redis/route.rs): per-node connections
// on this thread's own loop, routed by slot, following MOVED / ASK.

type Node = { port: number }

function nodeClient(port: number, password?: string) {
  return new Redis({ port, host: '127.0.0.1', password, lazyConnect: true, maxRetriesPerRequest: 0, enableOfflineQueue: false })
}

async function withNode<T>(port: number, password: string | undefined, f: (c: Redis) => Promise<T>): Promise<T> {
  const c = nodeClient(port, password)
  try {
    await c.connect()
    return await f(c)
  } finally {
    c.disconnect()
  }
}

/** `calls` of each command in INFO commandstats, summed over `nodes`. */
async function commandCalls(nodes: Node[], password?: string): Promise<Map<string, number>> {
  const out = new Map<string, number>()
  for (const n of nodes) {
    const info = await withNode(n.port, password, (c) => c.info('commandstats'))
    for (const m of info.matchAll(/^cmdstat_([^:]+):calls=(\d+)/gm)) out.set(m[1], (out.get(m[1]) ?? 0) + Number(m[2]))
  }
  return out
}

async function resetStats(nodes: Node[], password?: string) {
  for (const n of nodes) await withNode(n.port, password, (c) => c.call('CONFIG', 'RESETSTAT'))
}

async function keySlot(port: number, password: string | undefined, key: string): Promise<number> {
  return Number(await withNode(port, password, (c) => c.call('CLUSTER', 'KEYSLOT', key)))
}

/** The port of the primary serving `slot`, as `port` sees it. */
async function ownerOf(port: number, password: string | undefined, slot: number): Promise<number> {
  const slots = (await withNode(port, password, (c) => c.call('CLUSTER', 'SLOTS'))) as [number, number, [string, number]][]
  const r = slots.find(([lo, hi]) => slot >= lo && slot <= hi)
  if (!r) throw new Error(`slot ${slot} is served by nobody`)
  return r[2][1]
}

/** Start moving `slot` from `from` to `to` (MIGRATING / IMPORTING) and move
 *  `keys` (full Redis names) over with MIGRATE. */
async function startMigration(slot: number, from: number, to: number, keys: string[], password?: string) {
  const fromId = await withNode(from, password, (c) => c.call('CLUSTER', 'MYID'))
  const toId = await withNode(to, password, (c) => c.call('CLUSTER', 'MYID'))
  await withNode(to, password, (c) => c.call('CLUSTER', 'SETSLOT', slot, 'IMPORTING', fromId as string))
  await withNode(from, password, (c) => c.call('CLUSTER', 'SETSLOT', slot, 'MIGRATING', toId as string))
  if (keys.length) {
    await withNode(from, password, (c) => c.call('MIGRATE', '127.0.0.1', to, '', 0, 5000, ...(password ? ['AUTH', password] : []), 'KEYS', ...keys))
  }
  return toId as string
}

/** Finish a migration: `slot` belongs to `toId` on every node. */
async function finishMigration(slot: number, toId: string, ports: number[], password?: string) {
  for (const p of ports) await withNode(p, password, (c) => c.call('CLUSTER', 'SETSLOT', slot, 'NODE', toId))
}

describe('Redis Cluster on the JS-thread path (routing, MOVED, ASK, node loss)', () => {
  let cluster: OwnCluster | null = null
  before(async () => {
    if (!wantCluster()) return
    // A paused node leaves the other nodes' slots served.
    cluster = new OwnCluster({ extraArgs: ['--cluster-require-full-coverage', 'no'] })
    await cluster.start()
  })
  after(async () => {
    await cluster?.dispose()
  })

  test('a tick of 64 gets across slots is one MGET per slot (no GET), and limiter checks are routed on this thread', async (t) => {
    if (!redisUrl(t)) return
    const keyPrefix = `hp-fast-${process.pid}:`
    const redis = { cluster: cluster!.urls, keyPrefix, commandTimeoutMs: 5000 }
    const w = new CacheManager({ redis, invalidation: 'none' })
    // 32 keys spread over the slots, 32 sharing one hash tag (one slot).
    const keys = [...Array.from({ length: 32 }, (_, i) => `spread${i}`), ...Array.from({ length: 32 }, (_, i) => `{tag}:${i}`)]
    await w.setMany(keys.map((k, i) => [k, { i }] as [string, { i: number }]))
    assert.equal(w.stats().l2Errors, 0)
    const slots = new Set<number>()
    for (const k of keys) slots.add(await keySlot(cluster!.nodes[0].port, undefined, `${keyPrefix}c:${k}`))
    const r = new CacheManager({ redis, invalidation: 'none' })
    assert.equal(await r.get('warm-up'), undefined) // connects, reads the slot map
    await resetStats(cluster!.nodes)
    const before = clusterRoutes()
    assert.deepEqual(await Promise.all(keys.map((k) => r.get(k))), keys.map((_, i) => ({ i })))
    const calls = await commandCalls(cluster!.nodes)
    assert.equal(calls.get('get') ?? 0, 0, 'no GET: the reads went out as MGETs')
    assert.equal(calls.get('mget'), slots.size, `one MGET per slot (${slots.size} slots)`)
    assert.equal(calls.get('pttl'), keys.length)
    assert.equal(clusterRoutes().sent - before.sent, slots.size)
    assert.equal(r.stats().l2Hits, 64)
    assert.equal(r.stats().l2Errors, 0)

    // The limiter's checks of one tick: one script call per slot, sent here.
    const l = new RateLimiter({ limit: 2, windowMs: 60_000, onRedisError: 'deny', redis })
    const sent = clusterRoutes().sent
    const rs = await Promise.all(keys.flatMap((k) => [l.check(k), l.check(k), l.check(k)]))
    assert.deepEqual(rs.map((x) => x.allowed), keys.flatMap(() => [true, true, false]))
    assert.ok(clusterRoutes().sent - sent >= slots.size, 'checks routed on the JS-thread path')
    assert.equal(l.stats().redisErrors, 0)
    for (const k of keys) await l.reset(k)
    await Promise.all([l.close(), r.close(), w.close()])
  })

  test('MOVED after a slot moved to another node is followed; the reply still arrives', async (t) => {
    if (!redisUrl(t)) return
    const keyPrefix = `hp-moved-${process.pid}:`
    const redis = { cluster: cluster!.urls, keyPrefix, commandTimeoutMs: 5000 }
    const seed = cluster!.nodes[0].port
    const w = new CacheManager({ redis, invalidation: 'none' })
    await w.set('mv', 'moved-value')
    await w.set('other', 'o')
    const full = `${keyPrefix}c:mv`
    const slot = await keySlot(seed, undefined, full)
    const from = await ownerOf(seed, undefined, slot)
    const to = cluster!.nodes.map((n) => n.port).find((p) => p !== from)!
    // This thread's map says `from` serves the slot.
    const r1 = new CacheManager({ redis, invalidation: 'none' })
    assert.equal(await r1.get('mv'), 'moved-value')
    const l = new RateLimiter({ limit: 1, windowMs: 60_000, onRedisError: 'deny', redis })
    assert.equal((await l.check('mv')).allowed, true)

    const toId = await startMigration(slot, from, to, [full])
    await finishMigration(slot, toId, [to, from, ...cluster!.nodes.map((n) => n.port).filter((p) => p !== from && p !== to)])
    const before = clusterRoutes()
    const r2 = new CacheManager({ redis, invalidation: 'none' })
    assert.equal(await r2.get('mv'), 'moved-value', 'read through MOVED')
    assert.ok(clusterRoutes().moved > before.moved, 'a MOVED was followed on this thread')
    assert.equal(r2.stats().l2Errors, 0)
    // Later reads go straight to the new owner (the map learned it).
    const moved = clusterRoutes().moved
    const r3 = new CacheManager({ redis, invalidation: 'none' })
    assert.equal(await r3.get('mv'), 'moved-value')
    assert.equal(clusterRoutes().moved, moved, 'no second MOVED')
    assert.equal((await l.check('mv')).allowed, false, 'the limiter still works')
    assert.equal(l.stats().redisErrors, 0)
    await l.reset('mv')
    await Promise.all([l.close(), r1.close(), r2.close(), r3.close(), w.close()])
  })

  test('ASK during a migration is followed (ASKING + the command on the importing node)', async (t) => {
    if (!redisUrl(t)) return
    const keyPrefix = `hp-ask-${process.pid}:`
    const redis = { cluster: cluster!.urls, keyPrefix, commandTimeoutMs: 5000 }
    const seed = cluster!.nodes[0].port
    const w = new CacheManager({ redis, invalidation: 'none' })
    // Two keys of one slot: one moves now, the other stays until the end.
    await w.set('{ask}:moved', 'on-the-importing-node')
    await w.set('{ask}:stays', 'on-the-migrating-node')
    const slot = await keySlot(seed, undefined, `${keyPrefix}c:{ask}:moved`)
    const from = await ownerOf(seed, undefined, slot)
    const to = cluster!.nodes.map((n) => n.port).find((p) => p !== from)!
    const warm = new CacheManager({ redis, invalidation: 'none' })
    assert.equal(await warm.get('{ask}:stays'), 'on-the-migrating-node')
    const toId = await startMigration(slot, from, to, [`${keyPrefix}c:{ask}:moved`])
    try {
      const before = clusterRoutes()
      const r = new CacheManager({ redis, invalidation: 'none' })
      assert.equal(await r.get('{ask}:moved'), 'on-the-importing-node', 'read through ASK')
      assert.ok(clusterRoutes().ask > before.ask, 'an ASK was followed on this thread')
      assert.equal(clusterRoutes().moved, before.moved, 'ASK does not move the slot')
      assert.equal(await r.get('{ask}:stays'), 'on-the-migrating-node')
      // Both keys in one tick: one MGET the migrating node cannot serve
      // whole (TRYAGAIN), retried a bounded number of times: the reads
      // settle (as misses, counted as L2 errors), nothing hangs.
      const r2 = new CacheManager({ redis, invalidation: 'none' })
      const retried = clusterRoutes().retried
      const both = await Promise.all([r2.get('{ask}:moved'), r2.get('{ask}:stays')])
      assert.ok(clusterRoutes().retried > retried, 'TRYAGAIN was retried')
      assert.ok(both.every((v) => v === undefined) && r2.stats().l2Errors === 2, `settled as errors: ${JSON.stringify(both)}`)
      await Promise.all([r.close(), r2.close()])
    } finally {
      // Finish the migration: the rest of the slot moves too.
      await withNode(from, undefined, (c) => c.call('MIGRATE', '127.0.0.1', to, '', 0, 5000, 'KEYS', `${keyPrefix}c:{ask}:stays`))
      await finishMigration(slot, toId, [to, from, ...cluster!.nodes.map((n) => n.port).filter((p) => p !== from && p !== to)])
    }
    const r3 = new CacheManager({ redis, invalidation: 'none' })
    assert.deepEqual(await Promise.all([r3.get('{ask}:moved'), r3.get('{ask}:stays')]), ['on-the-importing-node', 'on-the-migrating-node'])
    await Promise.all([r3.close(), warm.close(), w.close()])
  })

  test('a node that stops answering: its calls fail after commandTimeoutMs, the other nodes keep serving, it comes back', async (t) => {
    if (!redisUrl(t)) return
    const keyPrefix = `hp-loss-${process.pid}:`
    const redis = { cluster: cluster!.urls, keyPrefix, commandTimeoutMs: 500, connectTimeoutMs: 500 }
    const seed = cluster!.nodes[0].port
    const lost = cluster!.nodes[2]
    const w = new CacheManager({ redis: { ...redis, commandTimeoutMs: 5000 }, invalidation: 'none' })
    // A key on the node that will stop, and one on another node.
    let onLost = '', onOther = ''
    for (let i = 0; !onLost || !onOther; i++) {
      const owner = await ownerOf(seed, undefined, await keySlot(seed, undefined, `${keyPrefix}c:n${i}`))
      if (owner === lost.port && !onLost) onLost = `n${i}`
      if (owner !== lost.port && !onOther) onOther = `n${i}`
    }
    // The limiter's keys: its state's slot is the user key's own (the hash tag).
    let limLost = '', limOther = ''
    for (let i = 0; !limLost || !limOther; i++) {
      const owner = await ownerOf(seed, undefined, await keySlot(seed, undefined, `m${i}`))
      if (owner === lost.port && !limLost) limLost = `m${i}`
      if (owner !== lost.port && !limOther) limOther = `m${i}`
    }
    await w.set(onLost, 'L')
    await w.set(onOther, 'O')
    const l = new RateLimiter({ limit: 100, windowMs: 60_000, onRedisError: 'deny', redis })
    const r0 = new CacheManager({ redis, invalidation: 'none' })
    assert.deepEqual(await Promise.all([r0.get(onLost), r0.get(onOther)]), ['L', 'O']) // map and connections warm
    lost.pause()
    try {
      const r = new CacheManager({ redis, invalidation: 'none' })
      // Settles (a miss, counted as an L2 error) instead of hanging.
      assert.equal(await r.get(onLost), undefined)
      assert.equal(r.stats().l2Errors, 1)
      const d = await l.check(limLost)
      assert.equal(d.allowed, false, 'onRedisError: deny')
      assert.equal(l.stats().redisErrors, 1)
      // The other nodes' keys are not held up by the lost node's breaker.
      const r2 = new CacheManager({ redis, invalidation: 'none' })
      assert.equal(await r2.get(onOther), 'O')
      assert.equal((await l.check(limOther)).allowed, true)
      assert.equal(l.stats().redisErrors, 1)
      await Promise.all([r.close(), r2.close()])
    } finally {
      lost.resume()
    }
    await eventually(async () => {
      const r = new CacheManager({ redis, invalidation: 'none' })
      const v = await r.get(onLost)
      await r.close()
      return v === 'L'
    }, 15_000, 'the node serving again')
    await Promise.all([l.close(), r0.close(), w.close()])
  })
})
