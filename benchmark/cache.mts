// CacheManager against lru-cache, cache-manager and bentocache, in one process.
import { spawnSync } from 'node:child_process'
import { LRUCache } from 'lru-cache'
import { createCache } from 'cache-manager'
import { BentoCache, bentostore } from 'bentocache'
import { memoryDriver } from 'bentocache/drivers/memory'
import { Redis as IORedis } from 'ioredis'
import { CacheManager } from 'hotpath'
import { compare, record, throughput, type Row } from './harness.mts'
import { OwnRedis, freePort } from '../__test__/helpers.ts'

const N = 10_000
const keys = Array.from({ length: N }, (_, i) => `key:${String(i).padStart(12, '0')}`) // 16 bytes
const value = 'v'.repeat(100)

async function hotReads() {
  const hp = new CacheManager({ maxEntries: 20_000 })
  const lru = new LRUCache<string, string>({ max: 20_000 })
  const map = new Map<string, string>()
  for (const k of keys) {
    hp.setSync(k, value)
    lru.set(k, value)
    map.set(k, value)
  }
  let i = 0
  let sink = 0
  const B = 1000
  await compare(
    'getSync hot hit: 10k keys, 16-byte keys, 100-byte strings',
    {
      'hotpath getSync': () => {
        for (let j = 0; j < B; j++) sink += (hp.getSync(keys[i++ % N]) as string).length
      },
      'lru-cache get': () => {
        for (let j = 0; j < B; j++) sink += lru.get(keys[i++ % N])!.length
      },
      'Map.get (reference)': () => {
        for (let j = 0; j < B; j++) sink += map.get(keys[i++ % N])!.length
      },
    },
    { batch: B, note: 'Each call reads 1000 keys round-robin; ratio > 1 means hotpath is faster. Goal: within 2x of lru-cache (ratio >= 0.5).' },
  )
  if (sink === 42) console.log(sink)
  await hp.close()
}

async function asyncReads() {
  const hp = new CacheManager({ maxEntries: 20_000 })
  const lru = new LRUCache<string, string>({ max: 20_000 })
  const cm = createCache()
  const bento = new BentoCache({ default: 'mem', stores: { mem: bentostore().useL1Layer(memoryDriver({ maxItems: 20_000 })) } })
  for (const k of keys) {
    hp.setSync(k, value)
    lru.set(k, value)
    await cm.set(k, value)
    await bento.set({ key: k, value })
  }
  let i = 0
  const B = 100
  await compare(
    'async get, L1 hit',
    {
      'hotpath get': async () => {
        for (let j = 0; j < B; j++) await hp.get(keys[i++ % N])
      },
      'cache-manager get': async () => {
        for (let j = 0; j < B; j++) await cm.get(keys[i++ % N])
      },
      'bentocache get': async () => {
        for (let j = 0; j < B; j++) await bento.get({ key: keys[i++ % N] })
      },
      'await Promise.resolve(lru.get) (floor)': async () => {
        for (let j = 0; j < B; j++) await Promise.resolve(lru.get(keys[i++ % N]))
      },
    },
    { batch: B, note: 'Goal: at least 3x the faster of cache-manager and bentocache.' },
  )
  const factory = () => value
  await compare(
    'getOrSet / wrap, hit',
    {
      'hotpath getOrSet': async () => {
        for (let j = 0; j < B; j++) await hp.getOrSet(keys[i++ % N], factory)
      },
      'cache-manager wrap': async () => {
        for (let j = 0; j < B; j++) await cm.wrap(keys[i++ % N], factory)
      },
      'bentocache getOrSet': async () => {
        for (let j = 0; j < B; j++) await bento.getOrSet({ key: keys[i++ % N], factory })
      },
    },
    { batch: B, note: 'Goal: at least 3x the faster of cache-manager and bentocache.' },
  )
  await compare(
    'set (sync where the library has it)',
    {
      'hotpath setSync': () => {
        for (let j = 0; j < B; j++) hp.setSync(keys[i++ % N], value)
      },
      'lru-cache set': () => {
        for (let j = 0; j < B; j++) lru.set(keys[i++ % N], value)
      },
      'cache-manager set': async () => {
        for (let j = 0; j < B; j++) await cm.set(keys[i++ % N], value)
      },
    },
    { batch: B },
  )
  await hp.close()
  await bento.disconnectAll()
}

// Zipf(0.9) over 100k keys with periodic one-off scans; capacity 2,000.
function hitRatio() {
  const U = 100_000
  const CAP = 2_000
  const s = 0.9
  const cdf = new Float64Array(U)
  let acc = 0
  for (let k = 1; k <= U; k++) {
    acc += 1 / Math.pow(k, s)
    cdf[k - 1] = acc
  }
  for (let k = 0; k < U; k++) cdf[k] /= acc
  let seed = 12345
  const rnd = () => ((seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648)
  const zipf = () => {
    const u = rnd()
    let lo = 0
    let hi = U - 1
    while (lo < hi) {
      const mid = (lo + hi) >> 1
      if (cdf[mid] < u) lo = mid + 1
      else hi = mid
    }
    return lo
  }
  const stream: string[] = []
  let scanId = 0
  for (let r = 0; r < 400_000; r++) {
    stream.push(`z${zipf()}`)
    if (r % 20_000 === 19_999) for (let j = 0; j < 5_000; j++) stream.push(`scan${scanId++}`) // one-off scan
  }
  const run = (get: (k: string) => unknown, set: (k: string) => void) => {
    let hits = 0
    for (const k of stream) {
      if (get(k) !== undefined) hits++
      else set(k)
    }
    return hits / stream.length
  }
  const hp = new CacheManager({ maxEntries: CAP })
  const hpLru = new CacheManager({ maxEntries: CAP, policy: 'lru' })
  const lru = new LRUCache<string, number>({ max: CAP })
  const rows: Row[] = [
    { name: 'hotpath (tinylfu)', ...ratioRow(run((k) => hp.getSync(k), (k) => hp.setSync(k, 1))) },
    { name: 'hotpath (policy: lru)', ...ratioRow(run((k) => hpLru.getSync(k), (k) => hpLru.setSync(k, 1))) },
    { name: 'lru-cache', ...ratioRow(run((k) => lru.get(k), (k) => lru.set(k, 1))) },
  ]
  record({
    title: 'hit ratio: Zipf(0.9) over 100k keys + one-off scans, capacity 2,000',
    note: `${stream.length} requests; 5,000-key scan every 20,000 requests. "ops/s" column shows the hit ratio x 100 (percent). Goal: >= 5 points above lru-cache.`,
    rows,
  })
  void hp.close()
  void hpLru.close()
}
function ratioRow(r: number) {
  return { opsPerSec: r * 100, meanNs: NaN, p99Ns: NaN, samples: 1, ratio: null }
}

// Memory with 1,000,000 entries: each store in its own process.
function memory() {
  const stores = ['hotpath', 'lru-cache', 'Map']
  const rows: Row[] = []
  const details: string[] = []
  for (const s of stores) {
    const r = spawnSync(process.execPath, ['--expose-gc', '--import', 'tsx', new URL('./cache-memory.mts', import.meta.url).pathname, s], { encoding: 'utf8' })
    if (r.status !== 0) throw new Error(`memory(${s}) failed: ${r.stderr}`)
    const m = JSON.parse(r.stdout.trim().split('\n').pop()!)
    details.push(`${s}: RSS +${(m.rss / 1e6).toFixed(0)} MB (${(m.rss / 1e6).toFixed(0)} B/entry), V8 heap +${(m.heap / 1e6).toFixed(1)} MB, full gc() ${m.gcMs.toFixed(1)} ms`)
    rows.push({ name: s, opsPerSec: m.rss / 1e6, meanNs: m.gcMs * 1e6, p99Ns: m.heap, samples: 1, ratio: null })
  }
  record({
    title: '1,000,000 entries (16-byte key, 100-byte value): memory and GC',
    note: 'ops/s column = RSS added (MB); mean = full gc() pause; ratio column = hotpath RSS ÷ this RSS (lower means hotpath uses less). ' + details.join('; '),
    rows,
  })
}

async function redisGetMany() {
  const url = process.env.REDIS_URL
  if (!url) {
    console.log('\n(skipping Redis getMany: set REDIS_URL)')
    return
  }
  const keyPrefix = `hp-bench-${process.pid}:`
  const writer = new CacheManager({ redis: { url, keyPrefix } })
  const K = 10_000
  await writer.setMany(Array.from({ length: K }, (_, i) => [`r${i}`, value] as [string, string]))
  const reader = new CacheManager({ redis: { url, keyPrefix }, maxEntries: 10, invalidation: 'none', frontCacheEntries: 0 })
  let i = 0
  const batchKeys = () => Array.from({ length: 100 }, () => `r${i++ % K}`)
  await compare(
    'Redis: 100 L1-missing keys, getMany vs 100 sequential get',
    {
      'hotpath getMany(100)': async () => {
        await reader.getMany(batchKeys())
      },
      'hotpath 100 x await get': async () => {
        for (const k of batchKeys()) await reader.get(k)
      },
    },
    { batch: 100, note: 'Redis on loopback; ops/s counts keys. getMany is one MGET round trip.' },
  )
  await writer.clear()
  await writer.close()
  await reader.close()
}

/** REDIS_URL, or a throwaway redis-server of the benchmark's own. */
async function startRedis(): Promise<{ url: string; stop: () => Promise<void> } | null> {
  if (process.env.REDIS_URL) return { url: process.env.REDIS_URL, stop: async () => {} }
  if (spawnSync('sh', ['-c', 'command -v redis-server']).status !== 0) return null
  const own = new OwnRedis(await freePort())
  await own.start()
  return { url: own.url, stop: () => own.dispose() }
}

/**
 * Tasks take turns (`rounds` rounds of ~`ms` each, after a warm-up), so a
 * shared machine's load falls on all alike; each task's median round is
 * reported. Each fn performs `per` operations.
 */
async function interleavedRounds(title: string, fns: Record<string, () => Promise<unknown>>, per: number, note: string) {
  const ms = Number(process.env.BENCH_TIME ?? 300)
  const rounds = Number(process.env.BENCH_ROUNDS ?? 7)
  const rates = new Map<string, number[]>()
  for (const f of Object.values(fns)) {
    const end = performance.now() + 150
    while (performance.now() < end) await f()
  }
  for (let r = 0; r < rounds; r++) {
    for (const [name, f] of Object.entries(fns)) {
      let calls = 0
      const t0 = performance.now()
      while (performance.now() - t0 < ms) {
        await f()
        calls++
      }
      rates.set(name, [...(rates.get(name) ?? []), (calls * per * 1000) / (performance.now() - t0)])
    }
  }
  const rows: Row[] = [...rates].map(([name, rs]) => {
    const median = rs.sort((a, b) => a - b)[rs.length >> 1]
    return { name, opsPerSec: median, meanNs: 1e9 / median, p99Ns: NaN, samples: rs.length, ratio: null }
  })
  record({ title, note: `${note} Median of ${rounds} interleaved rounds.`, rows })
}

/** `total` operations, `n` in flight at a time. */
async function inFlight(total: number, n: number, op: (i: number) => Promise<unknown>) {
  let next = 0
  const lane = async () => {
    while (next < total) await op(next++)
  }
  await Promise.all(Array.from({ length: n }, lane))
}

// L2 reads that miss L1, against ioredis GET + JSON.parse on the same
// redis-server: one at a time, and 64 in flight.
async function redisL2() {
  const server = await startRedis()
  if (!server) {
    console.log('\n(skipping Redis L2: no REDIS_URL and no redis-server)')
    return
  }
  const keyPrefix = `hp-bench-l2-${process.pid}:`
  const K = 10_000
  const shapes = {
    '~100 B object': (i: number) => ({ id: i, name: `user-${i}`, email: `user${i}@example.com`, roles: ['reader', 'writer'], active: true }),
    '~1 KB object': (i: number) => ({ id: i, items: Array.from({ length: 12 }, (_, j) => ({ sku: `sku-${i}-${j}`, qty: j, price: 9.99 + j, note: 'lorem ipsum dolor' })) }),
  }
  const writer = new CacheManager({ redis: { url: server.url, keyPrefix }, invalidation: 'none' })
  // L1 of 10 entries and no front cache: reads of 10,000 keys round-robin miss L1.
  const reader = new CacheManager({ redis: { url: server.url, keyPrefix }, maxEntries: 10, invalidation: 'none', frontCacheEntries: 0 })
  const io = new IORedis(server.url)
  const ioAuto = new IORedis(server.url, { enableAutoPipelining: true })
  for (const [shape, make] of Object.entries(shapes)) {
    const tag = shape.startsWith('~1 KB') ? 'b' : 's'
    await writer.setMany(Array.from({ length: K }, (_, i) => [`${tag}${i}`, make(i)] as [string, ReturnType<typeof make>]))
    console.log(`\n${shape}: ${JSON.stringify(make(1)).length} bytes of JSON`)
    let i = 0
    const B = 50
    await interleavedRounds(
      `Redis L2 get (L1 miss), one at a time, ${shape}`,
      {
        'hotpath get (L1 miss, L2 hit)': async () => {
          for (let j = 0; j < B; j++) await reader.get(`${tag}${i++ % K}`)
        },
        'ioredis GET + JSON.parse': async () => {
          for (let j = 0; j < B; j++) JSON.parse((await io.get(`${keyPrefix}c:${tag}${i++ % K}`))!)
        },
      },
      B,
      `10,000 keys round-robin, L1 of 10 entries (every read goes to Redis), one local redis-server. Goal: hotpath latency <= 1.1x ioredis (ratio >= 0.91).`,
    )
    const N = 1024
    await interleavedRounds(
      `Redis L2 get (L1 miss), 64 in flight, ${shape}`,
      {
        'hotpath get (L1 miss, L2 hit)': () => inFlight(N, 64, () => reader.get(`${tag}${i++ % K}`)),
        'ioredis GET + JSON.parse': () => inFlight(N, 64, async () => JSON.parse((await io.get(`${keyPrefix}c:${tag}${i++ % K}`))!)),
        'ioredis GET + JSON.parse (auto-pipelining)': () => inFlight(N, 64, async () => JSON.parse((await ioAuto.get(`${keyPrefix}c:${tag}${i++ % K}`))!)),
      },
      N,
      `${N} reads per round, 64 outstanding at a time. Goal: >= 1.5x ioredis.`,
    )
  }
  const st = reader.stats()
  console.log(`reader: l2Hits ${st.l2Hits}, l1Hits ${st.l1Hits}, l2Errors ${st.l2Errors}`)
  await writer.clear()
  await writer.close()
  await reader.close()
  io.disconnect()
  ioAuto.disconnect()
  await server.stop()
}

export default async function () {
  if (process.env.BENCH_ONLY !== 'redis') {
    await hotReads()
    await asyncReads()
    hitRatio()
    memory()
    await redisGetMany()
  }
  await redisL2()
  void throughput
}
