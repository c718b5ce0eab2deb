// Redis server-side time per operation (INFO commandstats), for hotpath's
// limiter checks and cache L2 gets beside rate-limiter-flexible and ioredis,
// each on a fresh redis-server of its own so the stats are only its own.
//
//   node --import tsx benchmark/redis-server-time.mts
//
// Prints, per task and mode (one at a time; 64 in flight), the commands the
// server ran per operation and the server's µs per operation (the sum of
// usec over every command, divided by operations).
import { Redis as IORedis } from 'ioredis'
import { RateLimiterRedis } from 'rate-limiter-flexible'
import { RateLimiter, CacheManager } from 'hotpath'
import { OwnRedis, freePort } from '../__test__/helpers.ts'

const N = Number(process.env.N ?? 4000)
const KEYS = 1000
const keys = Array.from({ length: KEYS }, (_, i) => `user:${String(i).padStart(8, '0')}`)

async function inFlight(total: number, n: number, op: (i: number) => Promise<unknown>) {
  let next = 0
  const lane = async () => {
    while (next < total) await op(next++)
  }
  await Promise.all(Array.from({ length: n }, lane))
}

function parseStats(info: string) {
  const out: Record<string, { calls: number; usec: number }> = {}
  for (const line of info.split('\n')) {
    const m = /^cmdstat_([^:]+):calls=(\d+),usec=(\d+)/.exec(line.trim())
    if (m) out[m[1]] = { calls: Number(m[2]), usec: Number(m[3]) }
  }
  return out
}

async function measure(name: string, setup: (url: string) => Promise<{ op: (i: number) => Promise<unknown>; close: () => Promise<void> }>) {
  for (const par of [1, 64]) {
    const own = new OwnRedis(await freePort())
    await own.start()
    const admin = new IORedis(own.url)
    const { op, close } = await setup(own.url)
    await inFlight(N, par, op) // warm: state exists for every key
    await admin.config('RESETSTAT')
    const t0 = performance.now()
    await inFlight(N, par, op)
    const ms = performance.now() - t0
    const st = parseStats(await admin.info('commandstats'))
    delete st.info
    delete st.config
    let usec = 0
    let calls = 0
    for (const v of Object.values(st)) {
      usec += v.usec
      calls += v.calls
    }
    const detail = Object.entries(st)
      .map(([k, v]) => `${k} ${(v.calls / N).toFixed(2)}/op ${(v.usec / v.calls).toFixed(2)}µs`)
      .join(', ')
    console.log(`${name.padEnd(52)} ${String(par).padStart(2)} in flight: server ${(usec / N).toFixed(2)} µs/op, ${(calls / N).toFixed(2)} cmds/op, ${((N * 1000) / ms).toFixed(0)} ops/s  [${detail}]`)
    await close()
    admin.disconnect()
    await own.dispose()
  }
}

const algorithms = (process.env.ALGOS ?? 'fixed-window,sliding-window,sliding-window-counter,token-bucket,gcra').split(',') as any[]
for (const algorithm of algorithms) {
  await measure(`hotpath check (${algorithm})`, async (url) => {
    const l = new RateLimiter({ limit: 1e9, windowMs: 60_000, algorithm, redis: { url, keyPrefix: 'b:' } })
    return { op: (i) => l.check(keys[i % KEYS]), close: () => l.close() }
  })
}
await measure('rate-limiter-flexible consume (ioredis)', async (url) => {
  const io = new IORedis(url)
  const rlf = new RateLimiterRedis({ storeClient: io, points: 1e9, duration: 60, keyPrefix: 'rlf' })
  return { op: (i) => rlf.consume(keys[i % KEYS]), close: async () => void io.disconnect() }
})
if (!process.env.ALGOS) {
  const obj = (i: number) => ({ id: i, name: `user-${i}`, email: `user${i}@example.com`, roles: ['reader', 'writer'], active: true })
  await measure('hotpath cache get (L1 miss, L2 hit)', async (url) => {
    const w = new CacheManager({ redis: { url, keyPrefix: 'c:' }, invalidation: 'none' })
    await w.setMany(Array.from({ length: 10_000 }, (_, i) => [`k${i}`, obj(i)] as [string, any]))
    await w.close()
    const r = new CacheManager({ redis: { url, keyPrefix: 'c:' }, maxEntries: 10, invalidation: 'none', frontCacheEntries: 0 })
    return { op: (i) => r.get(`k${(i * 7919) % 10_000}`), close: () => r.close() }
  })
  await measure('ioredis GET + JSON.parse', async (url) => {
    const w = new CacheManager({ redis: { url, keyPrefix: 'c:' }, invalidation: 'none' })
    await w.setMany(Array.from({ length: 10_000 }, (_, i) => [`k${i}`, obj(i)] as [string, any]))
    await w.close()
    const io = new IORedis(url)
    return { op: async (i) => JSON.parse((await io.get(`c:c:k${(i * 7919) % 10_000}`))!), close: async () => void io.disconnect() }
  })
}
