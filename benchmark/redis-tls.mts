// rediss:// (TLS) against ioredis with `tls` on the same redis-server: L2
// reads that miss L1 and rate-limiter checks, one at a time and 64 in
// flight. The server also serves plain TCP, so hotpath over redis:// runs
// beside as the no-TLS reference.
//
// hotpath's path is chosen once per process: the JS-thread path (the
// default since rediss:// takes it), or the Tokio path with
// HOTPATH_REDIS_NO_FAST=1 (what rediss:// always took before). Run as a
// component (`npm run bench redis-tls`) or by itself
// (`node --expose-gc --import tsx benchmark/redis-tls.mts`), it measures the
// default path, then runs itself once more with HOTPATH_REDIS_NO_FAST=1
// against the same server (BENCH_TLS_TOKIO=0 skips that); the table titles
// say which path each measured.
import { spawnSync } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { Redis as IORedis } from 'ioredis'
import { RateLimiterRedis } from 'rate-limiter-flexible'
import { CacheManager, RateLimiter } from 'hotpath'
import { OwnTlsRedis, freePort } from '../__test__/helpers.ts'
import { inFlight, interleavedRounds, save } from './harness.mts'

const tokio = !!process.env.HOTPATH_REDIS_NO_FAST && process.env.HOTPATH_REDIS_NO_FAST !== '0'
const path = tokio ? 'Tokio path, HOTPATH_REDIS_NO_FAST=1 (as before)' : 'JS-thread path'

/** The server: BENCH_TLS_PORTS=tls,plain (the parent's), or one of our own. */
async function server(): Promise<{ tls: number; plain: number; stop: () => Promise<void> }> {
  const given = process.env.BENCH_TLS_PORTS?.split(',').map(Number)
  if (given) return { tls: given[0], plain: given[1], stop: async () => {} }
  const own = new OwnTlsRedis(await freePort(), await freePort())
  await own.start()
  return { tls: own.port, plain: own.plainPort, stop: () => own.dispose() }
}

async function measure(ports: { tls: number; plain: number }) {
  const tlsUrl = `rediss://127.0.0.1:${ports.tls}/#insecure`
  const plainUrl = `redis://127.0.0.1:${ports.plain}`
  const ioOpts = { host: '127.0.0.1', port: ports.tls, tls: { rejectUnauthorized: false } }
  const io = new IORedis({ ...ioOpts, enableAutoPipelining: false })
  const ioAuto = new IORedis({ ...ioOpts, enableAutoPipelining: true })
  const keyPrefix = `hp-bench-tls-${process.pid}:`
  const K = 10_000
  const shapes = {
    '~100 B object': (i: number) => ({ id: i, name: `user-${i}`, email: `user${i}@example.com`, roles: ['reader', 'writer'], active: true }),
    '~1 KB object': (i: number) => ({ id: i, items: Array.from({ length: 12 }, (_, j) => ({ sku: `sku-${i}-${j}`, qty: j, price: 9.99 + j, note: 'lorem ipsum dolor' })) }),
  }
  const writer = new CacheManager({ redis: { url: plainUrl, keyPrefix }, invalidation: 'none' })
  // As in cache.mts: an L1 of 1,000 (LRU), no front cache, 10,000 keys
  // round-robin: every read misses L1 and goes to Redis.
  const reader = (url: string) => new CacheManager({ redis: { url, keyPrefix }, maxEntries: 1000, policy: 'lru', invalidation: 'none', frontCacheEntries: 0 })
  const rTls = reader(tlsUrl)
  const rPlain = reader(plainUrl)
  let h = 0
  let p = 0
  let i = 0
  const B = 50
  const N = 1024
  for (const [name, make] of Object.entries(shapes)) {
    const tag = name.startsWith('~1 KB') ? 'b' : 's'
    await writer.setMany(Array.from({ length: K }, (_, j) => [`${tag}${j}`, make(j)] as [string, ReturnType<typeof make>]))
    const shape = `${name} (${JSON.stringify(make(1)).length} B of JSON)`
    await interleavedRounds(
      `rediss:// L2 get (L1 miss), one at a time, ${shape} [${path}]`,
      {
        'hotpath get over rediss://': async () => {
          for (let j = 0; j < B; j++) await rTls.get(`${tag}${h++ % K}`)
        },
        'ioredis (tls) GET + JSON.parse': async () => {
          for (let j = 0; j < B; j++) JSON.parse((await io.get(`${keyPrefix}c:${tag}${i++ % K}`))!)
        },
        'hotpath get over redis:// (same server, no TLS)': async () => {
          for (let j = 0; j < B; j++) await rPlain.get(`${tag}${p++ % K}`)
        },
      },
      B,
      '10,000 keys round-robin, L1 of 1,000 entries (LRU): every read misses L1. One local redis-server serving TLS and plain TCP.',
    )
    await interleavedRounds(
      `rediss:// L2 get (L1 miss), 64 in flight, ${shape} [${path}]`,
      {
        'hotpath get over rediss://': () => inFlight(N, 64, () => rTls.get(`${tag}${h++ % K}`)),
        'ioredis (tls) GET + JSON.parse': () => inFlight(N, 64, async () => JSON.parse((await io.get(`${keyPrefix}c:${tag}${i++ % K}`))!)),
        'ioredis (tls) GET + JSON.parse (auto-pipelining)': () => inFlight(N, 64, async () => JSON.parse((await ioAuto.get(`${keyPrefix}c:${tag}${i++ % K}`))!)),
        'hotpath get over redis:// (same server, no TLS)': () => inFlight(N, 64, () => rPlain.get(`${tag}${p++ % K}`)),
      },
      N,
      `${N} reads per round, 64 outstanding at a time.`,
    )
  }
  for (const r of [rTls, rPlain]) {
    const st = r.stats()
    if (st.l1Hits !== 0 || st.l2Errors !== 0) throw new Error(`L2 benchmark: l1Hits ${st.l1Hits}, l2Errors ${st.l2Errors}`)
  }

  const KEYS = 1000
  const keys = Array.from({ length: KEYS }, (_, j) => `user:${String(j).padStart(8, '0')}`)
  const lim = (url: string, algorithm: 'fixed-window' | 'sliding-window') => new RateLimiter({ limit: 1e9, windowMs: 60_000, algorithm, redis: { url, keyPrefix } })
  const fixedTls = lim(tlsUrl, 'fixed-window')
  const slidingTls = lim(tlsUrl, 'sliding-window')
  const fixedPlain = lim(plainUrl, 'fixed-window')
  const rlf = new RateLimiterRedis({ storeClient: io, points: 1e9, duration: 60, keyPrefix: `${keyPrefix}rlf` })
  const rlfAuto = new RateLimiterRedis({ storeClient: ioAuto, points: 1e9, duration: 60, keyPrefix: `${keyPrefix}rlfa` })
  const ops: Record<string, () => Promise<unknown>> = {
    'hotpath check over rediss:// (fixed-window)': () => fixedTls.check(keys[i++ % KEYS]),
    'hotpath check over rediss:// (sliding-window)': () => slidingTls.check(keys[i++ % KEYS]),
    'rate-limiter-flexible RateLimiterRedis.consume (ioredis, tls)': () => rlf.consume(keys[i++ % KEYS]),
    'hotpath check over redis:// (fixed-window, same server, no TLS)': () => fixedPlain.check(keys[i++ % KEYS]),
  }
  const seq: Record<string, () => Promise<unknown>> = {}
  for (const [name, op] of Object.entries(ops)) {
    seq[name] = async () => {
      for (let j = 0; j < B; j++) await op()
    }
  }
  await interleavedRounds(`rediss:// limiter check, one at a time [${path}]`, seq, B, `${KEYS} keys round-robin, each check awaited before the next. rate-limiter-flexible is a fixed window.`)
  const par: Record<string, () => Promise<unknown>> = {}
  for (const [name, op] of Object.entries(ops)) par[name] = () => inFlight(N, 64, op)
  par['rate-limiter-flexible RateLimiterRedis.consume (ioredis, tls, auto-pipelining)'] = () => inFlight(N, 64, () => rlfAuto.consume(keys[i++ % KEYS]))
  await interleavedRounds(`rediss:// limiter check, 64 in flight [${path}]`, par, N, `${N} checks per round over ${KEYS} keys, 64 outstanding at a time.`)
  for (const l of [fixedTls, slidingTls, fixedPlain]) {
    if (l.stats().redisErrors !== 0) throw new Error(`limiter benchmark: ${l.stats().redisErrors} Redis errors`)
    await l.close()
  }
  await writer.clear()
  for (const c of [writer, rTls, rPlain]) await c.close()
  io.disconnect()
  ioAuto.disconnect()
}

export default async function main() {
  const s = await server()
  try {
    await measure(s)
    if (!tokio && process.env.BENCH_TLS_TOKIO !== '0') {
      // The same, on the Tokio path, in a process of its own (the path is
      // chosen once per process). It prints and saves its own tables.
      save()
      const r = spawnSync(process.execPath, ['--expose-gc', '--import', 'tsx', fileURLToPath(import.meta.url)], {
        stdio: 'inherit',
        env: { ...process.env, HOTPATH_REDIS_NO_FAST: '1', BENCH_TLS_PORTS: `${s.tls},${s.plain}` },
      })
      if (r.status !== 0) throw new Error(`the Tokio-path run failed (${r.status ?? r.signal})`)
    }
  } finally {
    await s.stop()
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  await main()
  save()
}
