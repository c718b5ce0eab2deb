// CacheManager against lru-cache, cache-manager and bentocache, in one process.
import { spawnSync } from 'node:child_process'
import { LRUCache } from 'lru-cache'
import { createCache } from 'cache-manager'
import { BentoCache, bentostore } from 'bentocache'
import { memoryDriver } from 'bentocache/drivers/memory'
import { Redis as IORedis } from 'ioredis'
import { CacheManager } from 'hotpath'
import { compare, gc, inFlight, interleavedRounds, record, startRedis, throughput, type Row } from './harness.mts'

// Interleaved rounds: every task runs `rounds` times for `msPerRound`, in
// alternating order, and its ops/s is the median of its rounds, so drift on a
// noisy machine hits every task alike.
async function interleaved(
  title: string,
  fns: Record<string, () => unknown>,
  opts: { batch: number; note?: string; rounds?: number; msPerRound?: number },
) {
  const names = Object.keys(fns)
  const rounds = opts.rounds ?? 7
  const ms = opts.msPerRound ?? Number(process.env.BENCH_TIME ?? 500) / 5
  const runFor = async (fn: () => unknown, forMs: number) => {
    let calls = 0
    const t0 = performance.now()
    let t = t0
    do {
      const p = fn()
      if (p instanceof Promise) await p
      calls++
    } while ((t = performance.now()) - t0 < forMs)
    return (calls * opts.batch * 1000) / (t - t0)
  }
  for (const n of names) await runFor(fns[n], Math.min(ms, 100)) // warm up (JIT)
  const rates: Record<string, number[]> = Object.fromEntries(names.map((n) => [n, []]))
  for (let r = 0; r < rounds; r++) {
    for (const n of r % 2 ? [...names].reverse() : names) {
      gc() // each task starts without the previous one's garbage
      rates[n].push(await runFor(fns[n], ms))
    }
  }
  const median = (a: number[]) => [...a].sort((x, y) => x - y)[a.length >> 1]
  record({
    title,
    note: (opts.note ? opts.note + ' ' : '') + `Median of ${rounds} interleaved rounds.`,
    rows: names.map((n) => {
      const ops = median(rates[n])
      return { name: n, opsPerSec: ops, meanNs: 1e9 / ops, p99Ns: NaN, samples: rounds, ratio: null }
    }),
  })
}

// The data. Keys are 16 bytes. Objects are JSON records of ~100 B and ~1 KB.
const key = (i: number) => `key:${String(i).padStart(12, '0')}`
const str100 = (i: number) => `${i}:`.padEnd(100, 'v')
const obj100 = (i: number) => ({ id: i, name: `user-${i}`, email: `user-${i}@example.com`, active: i % 2 === 0, score: (i % 97) / 7, tags: ['a', 'b'] })
const obj1k = (i: number) => ({
  id: i,
  name: `order-${i}`,
  customer: { id: i * 7, name: `customer-${i}`, email: `c${i}@example.com`, tier: 'gold' },
  items: Array.from({ length: 10 }, (_, j) => ({ sku: `SKU-${i}-${j}`, title: `Item number ${j} of order ${i}`, qty: j + 1, price: 9.99 + j })),
  createdAt: '2026-01-01T00:00:00.000Z',
  status: 'shipped',
})
const bytes = (v: unknown) => (typeof v === 'string' ? v.length : JSON.stringify(v).length)

// Zipf(s) over n ranks: a fixed-seed stream of `len` ranks.
function zipfStream(n: number, s: number, len: number, seed: number): Int32Array {
  const cdf = new Float64Array(n)
  let acc = 0
  for (let k = 1; k <= n; k++) {
    acc += 1 / Math.pow(k, s)
    cdf[k - 1] = acc
  }
  for (let k = 0; k < n; k++) cdf[k] /= acc
  let x = seed >>> 0
  const out = new Int32Array(len)
  for (let r = 0; r < len; r++) {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0
    const u = x / 2 ** 32
    let lo = 0
    let hi = n - 1
    while (lo < hi) {
      const mid = (lo + hi) >> 1
      if (cdf[mid] < u) lo = mid + 1
      else hi = mid
    }
    out[r] = lo
  }
  return out
}

async function hotReads() {
  const shapes: [string, number, (i: number) => unknown][] = [
    ['100-byte strings', 10_000, str100],
    ['~100 B JSON objects', 10_000, obj100],
    ['~1 KB JSON objects', 4_000, obj1k],
  ]
  for (const [what, n, make] of shapes) {
    const keys = Array.from({ length: n }, (_, i) => key(i))
    const hp = new CacheManager({ maxEntries: 20_000 })
    const hpCopy = new CacheManager({ maxEntries: 20_000, readMode: 'copy' })
    const lru = new LRUCache<string, any>({ max: 20_000 })
    for (let i = 0; i < n; i++) {
      hp.setSync(keys[i], make(i) as any)
      hpCopy.setSync(keys[i], make(i) as any)
      lru.set(keys[i], make(i))
    }
    let i = 0
    let sink = 0
    const B = 1000
    const fns: Record<string, () => unknown> = {
      'hotpath getSync': () => {
        for (let j = 0; j < B; j++) if (hp.getSync(keys[i++ % n]) !== undefined) sink++
      },
      'lru-cache get': () => {
        for (let j = 0; j < B; j++) if (lru.get(keys[i++ % n]) !== undefined) sink++
      },
    }
    if (what.includes('objects')) {
      fns["hotpath getSync, readMode 'copy'"] = () => {
        for (let j = 0; j < B; j++) if (hpCopy.getSync(keys[i++ % n]) !== undefined) sink++
      }
    }
    await interleaved(`getSync hot hit: ${n / 1000}k keys, ${what}`, fns, {
      batch: B,
      note: `Working set (${n} keys, ~${bytes(make(1234))} B values) inside the front cache. Each call reads 1000 keys round-robin; ratio > 1 means hotpath is faster. Goal: within 2x of lru-cache (ratio >= 0.5).`,
    })
    if (sink === 42) console.log(sink)
    await hp.close()
    await hpCopy.close()
  }
}

// Working sets larger than the front cache (default 16,384 entries / 8 MiB).
async function largeWorkingSet() {
  // Read-only: Zipf(0.99) over 100k keys, all in L1.
  {
    const U = 100_000
    const stream = zipfStream(U, 0.99, 1 << 20, 7)
    const keys = Array.from({ length: U }, (_, i) => key(i))
    const hp = new CacheManager({ maxEntries: U })
    const lru = new LRUCache<string, any>({ max: U })
    for (let i = 0; i < U; i++) {
      hp.setSync(keys[i], obj100(i))
      lru.set(keys[i], obj100(i))
    }
    let p = 0
    let sink = 0
    const B = 1000
    const M = stream.length - 1
    await interleaved(
      'getSync, Zipf(0.99) over 100k keys all in L1, ~100 B objects (front cache holds 16k)',
      {
        'hotpath getSync': () => {
          for (let j = 0; j < B; j++) if (hp.getSync(keys[stream[p++ & M]]) !== undefined) sink++
        },
        'lru-cache get': () => {
          for (let j = 0; j < B; j++) if (lru.get(keys[stream[p++ & M]]) !== undefined) sink++
        },
      },
      { batch: B, note: 'A working set 6x the front cache: front misses are native L1 reads (parse + freeze).' },
    )
    if (sink === 42) console.log(sink)
    await hp.close()
  }
  // Mixed: cache-aside (getSync, setSync on a miss), Zipf(0.99) over 200k keys, capacity 100k.
  {
    const U = 200_000
    const CAP = 100_000
    const stream = zipfStream(U, 0.99, 1 << 20, 9)
    const keys = Array.from({ length: U }, (_, i) => key(i))
    const POOL = 4096
    const objs = Array.from({ length: POOL }, (_, i) => obj100(i))
    const hp = new CacheManager({ maxEntries: CAP })
    const lru = new LRUCache<string, any>({ max: CAP })
    const M = stream.length - 1
    let p = 0
    let sets = 0
    let gets = 0
    const B = 1000
    const fns = {
      'hotpath getSync/setSync': () => {
        for (let j = 0; j < B; j++) {
          const k = stream[p++ & M]
          if (hp.getSync(keys[k]) === undefined) hp.setSync(keys[k], objs[k & (POOL - 1)])
        }
      },
      'lru-cache get/set': () => {
        for (let j = 0; j < B; j++) {
          const k = stream[p++ & M]
          if (lru.get(keys[k]) === undefined) lru.set(keys[k], objs[k & (POOL - 1)])
        }
      },
    }
    for (let w = 0; w < 2; w++) {
      for (let j = 0; j < stream.length; j++) {
        const k = stream[j]
        gets++
        if (hp.getSync(keys[k]) === undefined) {
          sets++
          hp.setSync(keys[k], objs[k & (POOL - 1)])
        }
        if (lru.get(keys[k]) === undefined) lru.set(keys[k], objs[k & (POOL - 1)])
      }
    }
    await interleaved('mixed getSync/setSync: Zipf(0.99) over 200k keys, capacity 100k, ~100 B objects', fns, {
      batch: B,
      note: `Cache-aside: each op is a getSync, and a setSync when it misses (${((100 * sets) / gets).toFixed(1)}% of ops in hotpath's warm-up pass). Goal: within 3x of lru-cache (ratio >= 0.33).`,
    })
    await hp.close()
  }
}

async function asyncReads() {
  const N = 10_000
  const keys = Array.from({ length: N }, (_, i) => key(i))
  for (const [what, make] of [
    ['~100 B objects', obj100],
    ['100-byte strings', str100],
  ] as const) {
    const hp = new CacheManager({ maxEntries: 20_000 })
    const lru = new LRUCache<string, any>({ max: 20_000 })
    const cm = createCache()
    const bento = new BentoCache({ default: 'mem', stores: { mem: bentostore().useL1Layer(memoryDriver({ maxItems: 20_000 })) } })
    for (let i = 0; i < N; i++) {
      const v = make(i) as any
      hp.setSync(keys[i], v)
      lru.set(keys[i], v)
      await cm.set(keys[i], v)
      await bento.set({ key: keys[i], value: v })
    }
    let i = 0
    const B = 100
    await interleaved(
      `async get, L1 hit, ${what}`,
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
      { batch: B, note: 'Goal: at least 3x cache-manager.' },
    )
    const factory = () => make(0) as any
    await interleaved(
      `getOrSet / wrap, hit, ${what}`,
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
      { batch: B, note: 'Goal: at least 3x cache-manager.' },
    )
    const POOL = 1024
    const vals = Array.from({ length: POOL }, (_, k) => make(k) as any)
    await interleaved(
      `set, ${what} (sync where the library has it)`,
      {
        'hotpath setSync': () => {
          for (let j = 0; j < B; j++) hp.setSync(keys[i++ % N], vals[i & (POOL - 1)])
        },
        'lru-cache set': () => {
          for (let j = 0; j < B; j++) lru.set(keys[i++ % N], vals[i & (POOL - 1)])
        },
        'cache-manager set': async () => {
          for (let j = 0; j < B; j++) await cm.set(keys[i++ % N], vals[i & (POOL - 1)])
        },
        // setSync's floor for an object: its JSON text (L1 holds every value
        // off the V8 heap, shared by all threads, so it must serialize).
        'JSON.stringify alone (floor)': () => {
          for (let j = 0; j < B; j++) if (JSON.stringify(vals[i++ & (POOL - 1)]).length === 0) i++
        },
      },
      { batch: B, note: 'Overwrites of resident keys. Goal (objects): at least 1.5x cache-manager. The last row is JSON.stringify of the same values alone (no cache).' },
    )
    await hp.close()
    await bento.disconnectAll()
  }
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
  for (const shape of ['object', 'string']) {
    const stores = ['hotpath', 'lru-cache', 'Map']
    const rows: Row[] = []
    const details: string[] = []
    for (const s of stores) {
      const r = spawnSync(process.execPath, ['--expose-gc', '--import', 'tsx', new URL('./cache-memory.mts', import.meta.url).pathname, s, shape], { encoding: 'utf8' })
      if (r.status !== 0) throw new Error(`memory(${s}) failed: ${r.stderr}`)
      const m = JSON.parse(r.stdout.trim().split('\n').pop()!)
      details.push(`${s}: RSS +${(m.rss / 1e6).toFixed(0)} MB (${(m.rss / 1e6).toFixed(0)} B/entry), V8 heap +${(m.heap / 1e6).toFixed(1)} MB, full gc() ${m.gcMs.toFixed(1)} ms`)
      rows.push({ name: s, opsPerSec: m.rss / 1e6, meanNs: m.gcMs * 1e6, p99Ns: m.heap, samples: 1, ratio: null })
    }
    record({
      title: `1,000,000 entries (16-byte key, ${shape === 'object' ? '~100 B JSON object' : '100-byte string'} value): memory and GC`,
      note:
        'ops/s column = RSS added (MB); mean = full gc() pause; ratio column = hotpath RSS ÷ this RSS (lower means hotpath uses less). hotpath runs with its default front cache, filled by reading 20k keys. ' +
        details.join('; '),
      rows,
    })
  }
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
  const value = str100(0)
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
  // An L1 of 1,000 entries (LRU, so no admission filter keeps a fixed set)
  // and no front cache, reading 10,000 keys round-robin: every read misses
  // L1 (checked below: l1Hits stays 0), is answered by Redis and fills L1,
  // evicting one entry, as a working set ten times L1 would. (An L1 of 10
  // entries measured moka's housekeeping at a size nobody runs.)
  const reader = new CacheManager({ redis: { url: server.url, keyPrefix }, maxEntries: 1000, policy: 'lru', invalidation: 'none', frontCacheEntries: 0 })
  const io = new IORedis(server.url)
  const ioAuto = new IORedis(server.url, { enableAutoPipelining: true })
  for (const [shape, make] of Object.entries(shapes)) {
    const tag = shape.startsWith('~1 KB') ? 'b' : 's'
    await writer.setMany(Array.from({ length: K }, (_, i) => [`${tag}${i}`, make(i)] as [string, ReturnType<typeof make>]))
    console.log(`\n${shape}: ${JSON.stringify(make(1)).length} bytes of JSON`)
    // Each task has its own position, so hotpath's reads are round-robin
    // over all keys whatever the others read.
    let i = 0
    let h = 0
    const B = 50
    await interleavedRounds(
      `Redis L2 get (L1 miss), one at a time, ${shape}`,
      {
        'hotpath get (L1 miss, L2 hit)': async () => {
          for (let j = 0; j < B; j++) await reader.get(`${tag}${h++ % K}`)
        },
        'ioredis GET + JSON.parse': async () => {
          for (let j = 0; j < B; j++) JSON.parse((await io.get(`${keyPrefix}c:${tag}${i++ % K}`))!)
        },
      },
      B,
      `10,000 keys round-robin, L1 of 1,000 entries (LRU): every read misses L1, goes to Redis and fills L1 (one eviction). One local redis-server. Goal: hotpath latency <= 1.1x ioredis (ratio >= 0.91).`,
    )
    const N = 1024
    await interleavedRounds(
      `Redis L2 get (L1 miss), 64 in flight, ${shape}`,
      {
        'hotpath get (L1 miss, L2 hit)': () => inFlight(N, 64, () => reader.get(`${tag}${h++ % K}`)),
        'ioredis GET + JSON.parse': () => inFlight(N, 64, async () => JSON.parse((await io.get(`${keyPrefix}c:${tag}${i++ % K}`))!)),
        'ioredis GET + JSON.parse (auto-pipelining)': () => inFlight(N, 64, async () => JSON.parse((await ioAuto.get(`${keyPrefix}c:${tag}${i++ % K}`))!)),
      },
      N,
      `${N} reads per round, 64 outstanding at a time. Goal: >= 1.5x ioredis.`,
    )
  }
  const st = reader.stats()
  console.log(`reader: l2Hits ${st.l2Hits}, l1Hits ${st.l1Hits}, l2Errors ${st.l2Errors}, evictions ${st.evictions}`)
  if (st.l1Hits !== 0) throw new Error(`the L2 benchmark read from L1 (${st.l1Hits} hits): it no longer measures L2 reads`)
  await writer.clear()
  await writer.close()
  await reader.close()
  io.disconnect()
  ioAuto.disconnect()
  await server.stop()
}

// BENCH_CACHE=hot,large,async,ratio,memory,redis runs only those parts
// (default: all); BENCH_ONLY=redis is the same as BENCH_CACHE=redis.
export default async function () {
  const only = process.env.BENCH_ONLY === 'redis' ? ['redis'] : process.env.BENCH_CACHE?.split(',')
  const want = (part: string) => only === undefined || only.includes(part)
  if (want('hot')) await hotReads()
  if (want('large')) await largeWorkingSet()
  if (want('async')) await asyncReads()
  if (want('ratio')) hitRatio()
  if (want('memory')) memory()
  if (want('redis')) {
    await redisGetMany()
    await redisL2()
  }
  void throughput
}
