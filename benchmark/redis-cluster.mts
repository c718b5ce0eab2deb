// Redis Cluster (a local 3-primary cluster of our own, on loopback) against
// ioredis' Cluster client: L2 reads that miss L1 (hotpath `get` vs `GET` +
// `JSON.parse`) and rate-limiter checks (vs rate-limiter-flexible on an
// ioredis Cluster), one at a time and 64 in flight.
//
// hotpath's path is chosen once per process: the JS-thread path (per-node
// connections on this thread's loop, the default), or the Tokio path with
// HOTPATH_REDIS_NO_FAST=1 (what every Cluster command took before). Run as a
// component (`npm run bench redis-cluster`) or by itself
// (`node --expose-gc --import tsx benchmark/redis-cluster.mts`), it measures
// the default path, then runs itself once more with HOTPATH_REDIS_NO_FAST=1
// against the same cluster (BENCH_CLUSTER_TOKIO=0 skips that); the table
// titles say which path each measured.
import { spawnSync } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { Cluster as IOCluster } from 'ioredis'
import { RateLimiterRedis } from 'rate-limiter-flexible'
import { CacheManager, RateLimiter } from 'hotpath'
import { OwnCluster } from '../__test__/helpers.ts'
import { inFlight, interleavedRounds, save } from './harness.mts'

const tokio = !!process.env.HOTPATH_REDIS_NO_FAST && process.env.HOTPATH_REDIS_NO_FAST !== '0'
const path = tokio ? 'Tokio path, HOTPATH_REDIS_NO_FAST=1 (as before)' : 'JS-thread path'

/** The cluster: BENCH_CLUSTER_PORTS=a,b,c (the parent's), or one of our own. */
async function cluster(): Promise<{ ports: number[]; stop: () => Promise<void> }> {
  const given = process.env.BENCH_CLUSTER_PORTS?.split(',').map(Number)
  if (given) return { ports: given, stop: async () => {} }
  const own = new OwnCluster()
  await own.start()
  return { ports: own.nodes.map((n) => n.port), stop: () => own.dispose() }
}

async function measure(ports: number[]) {
  const urls = ports.map((p) => `redis://127.0.0.1:${p}`)
  const nodes = ports.map((port) => ({ host: '127.0.0.1', port }))
  const io = new IOCluster(nodes, { enableAutoPipelining: false })
  const ioAuto = new IOCluster(nodes, { enableAutoPipelining: true })
  const keyPrefix = `hp-bench-cluster-${process.pid}:`
  const redis = { cluster: urls, keyPrefix }
  const K = 10_000
  const make = (i: number) => ({ id: i, name: `user-${i}`, email: `user${i}@example.com`, roles: ['reader', 'writer'], active: true })
  const writer = new CacheManager({ redis, invalidation: 'none' })
  // As in cache.mts: an L1 of 1,000 (LRU), no front cache, 10,000 keys
  // round-robin: every read misses L1 and goes to Redis.
  const reader = new CacheManager({ redis, maxEntries: 1000, policy: 'lru', invalidation: 'none', frontCacheEntries: 0 })
  await writer.setMany(Array.from({ length: K }, (_, j) => [`s${j}`, make(j)] as [string, ReturnType<typeof make>]))
  let h = 0
  let i = 0
  const B = 50
  const N = 1024
  const shape = `~100 B object (${JSON.stringify(make(1)).length} B of JSON)`
  const data = '10,000 keys round-robin over 3 primaries, L1 of 1,000 entries (LRU): every read misses L1. A local 3-primary cluster on loopback, on the same 2 cores.'
  await interleavedRounds(
    `Cluster L2 get (L1 miss), one at a time, ${shape} [${path}]`,
    {
      'hotpath get': async () => {
        for (let j = 0; j < B; j++) await reader.get(`s${h++ % K}`)
      },
      'ioredis Cluster GET + JSON.parse': async () => {
        for (let j = 0; j < B; j++) JSON.parse((await io.get(`${keyPrefix}c:s${i++ % K}`))!)
      },
    },
    B,
    data,
  )
  await interleavedRounds(
    `Cluster L2 get (L1 miss), 64 in flight, ${shape} [${path}]`,
    {
      'hotpath get': () => inFlight(N, 64, () => reader.get(`s${h++ % K}`)),
      'ioredis Cluster GET + JSON.parse': () => inFlight(N, 64, async () => JSON.parse((await io.get(`${keyPrefix}c:s${i++ % K}`))!)),
      'ioredis Cluster GET + JSON.parse (auto-pipelining)': () => inFlight(N, 64, async () => JSON.parse((await ioAuto.get(`${keyPrefix}c:s${i++ % K}`))!)),
    },
    N,
    `${N} reads per round, 64 outstanding at a time. ${data}`,
  )
  const st = reader.stats()
  if (st.l1Hits !== 0 || st.l2Errors !== 0) throw new Error(`L2 benchmark: l1Hits ${st.l1Hits}, l2Errors ${st.l2Errors}`)

  const KEYS = 1000
  const keys = Array.from({ length: KEYS }, (_, j) => `user:${String(j).padStart(8, '0')}`)
  const lim = (algorithm: 'fixed-window' | 'sliding-window') => new RateLimiter({ limit: 1e9, windowMs: 60_000, algorithm, redis })
  const fixed = lim('fixed-window')
  const sliding = lim('sliding-window')
  const rlf = new RateLimiterRedis({ storeClient: io, points: 1e9, duration: 60, keyPrefix: `${keyPrefix}rlf` })
  const rlfAuto = new RateLimiterRedis({ storeClient: ioAuto, points: 1e9, duration: 60, keyPrefix: `${keyPrefix}rlfa` })
  const ops: Record<string, () => Promise<unknown>> = {
    'hotpath check (fixed-window)': () => fixed.check(keys[i++ % KEYS]),
    'hotpath check (sliding-window)': () => sliding.check(keys[i++ % KEYS]),
    'rate-limiter-flexible RateLimiterRedis.consume (ioredis Cluster)': () => rlf.consume(keys[i++ % KEYS]),
  }
  const seq: Record<string, () => Promise<unknown>> = {}
  for (const [name, op] of Object.entries(ops)) {
    seq[name] = async () => {
      for (let j = 0; j < B; j++) await op()
    }
  }
  await interleavedRounds(`Cluster limiter check, one at a time [${path}]`, seq, B, `${KEYS} keys round-robin over 3 primaries, each check awaited before the next. rate-limiter-flexible is a fixed window.`)
  const par: Record<string, () => Promise<unknown>> = {}
  for (const [name, op] of Object.entries(ops)) par[name] = () => inFlight(N, 64, op)
  par['rate-limiter-flexible RateLimiterRedis.consume (ioredis Cluster, auto-pipelining)'] = () => inFlight(N, 64, () => rlfAuto.consume(keys[i++ % KEYS]))
  await interleavedRounds(`Cluster limiter check, 64 in flight [${path}]`, par, N, `${N} checks per round over ${KEYS} keys, 64 outstanding at a time.`)
  for (const l of [fixed, sliding]) {
    if (l.stats().redisErrors !== 0) throw new Error(`limiter benchmark: ${l.stats().redisErrors} Redis errors`)
    await l.close()
  }
  for (const c of [writer, reader]) await c.close()
  io.disconnect()
  ioAuto.disconnect()
}

export default async function main() {
  const c = await cluster()
  try {
    await measure(c.ports)
    if (!tokio && process.env.BENCH_CLUSTER_TOKIO !== '0') {
      // The same, on the Tokio path, in a process of its own (the path is
      // chosen once per process). It prints and saves its own tables.
      save()
      const r = spawnSync(process.execPath, ['--expose-gc', '--import', 'tsx', fileURLToPath(import.meta.url)], {
        stdio: 'inherit',
        env: { ...process.env, HOTPATH_REDIS_NO_FAST: '1', BENCH_CLUSTER_PORTS: c.ports.join(',') },
      })
      if (r.status !== 0) throw new Error(`the Tokio-path run failed (${r.status ?? r.signal})`)
    }
  } finally {
    await c.stop()
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  await main()
  save()
}
