// A Redis hot path run in a loop for a profiler (perf or --cpu-prof):
//   node --import tsx benchmark/profile-redis.mts <cache100|cache1k|limiter:<algorithm>|rlf|ioredis1k> [seconds] [inFlight]
import { Redis as IORedis } from 'ioredis'
import { RateLimiterRedis } from 'rate-limiter-flexible'
import { RateLimiter, CacheManager } from 'hotpath'
import { OwnRedis, freePort } from '../__test__/helpers.ts'

const [what = 'cache1k', secs = '5', par = '64'] = process.argv.slice(2)
const own = new OwnRedis(await freePort())
await own.start()
const url = own.url
const K = 10_000
const obj100 = (i: number) => ({ id: i, name: `user-${i}`, email: `user${i}@example.com`, roles: ['reader', 'writer'], active: true })
const obj1k = (i: number) => ({ id: i, items: Array.from({ length: 12 }, (_, j) => ({ sku: `sku-${i}-${j}`, qty: j, price: 9.99 + j, note: 'lorem ipsum dolor' })) })
let op: (i: number) => Promise<unknown>
let close = async () => {}
if (what.startsWith('cache') || what.startsWith('ioredis')) {
  const make = what.endsWith('1k') ? obj1k : obj100
  const w = new CacheManager({ redis: { url, keyPrefix: 'p:' }, invalidation: 'none' })
  await w.setMany(Array.from({ length: K }, (_, i) => [`k${i}`, make(i)] as [string, any]))
  await w.close()
  if (what.startsWith('cache')) {
    const r = new CacheManager({ redis: { url, keyPrefix: 'p:' }, maxEntries: Number(process.env.L1 ?? 10), invalidation: 'none', frontCacheEntries: 0 })
    op = (i) => r.get(`k${i % K}`)
    close = () => r.close()
  } else {
    const io = new IORedis(url, { enableAutoPipelining: !!process.env.AUTO })
    op = async (i) => JSON.parse((await io.get(`p:c:k${i % K}`))!)
    close = async () => void io.disconnect()
  }
} else {
  const keys = Array.from({ length: 1000 }, (_, i) => `user:${String(i).padStart(8, '0')}`)
  if (what === 'rlf') {
    const io = new IORedis(url)
    const rlf = new RateLimiterRedis({ storeClient: io, points: 1e9, duration: 60, keyPrefix: 'rlf' })
    op = (i) => rlf.consume(keys[i % 1000])
    close = async () => void io.disconnect()
  } else {
    const algorithm = what.split(':')[1] as any
    const l = new RateLimiter({ limit: 1e9, windowMs: 60_000, algorithm, redis: { url, keyPrefix: 'b:' } })
    op = (i) => l.check(keys[i % 1000])
    close = () => l.close()
  }
}
let next = 0
const end = performance.now() + Number(secs) * 1000
const lane = async () => {
  while (performance.now() < end) await op(next++)
}
const t0 = performance.now()
await Promise.all(Array.from({ length: Number(par) }, lane))
console.log(`${what}: ${((next * 1000) / (performance.now() - t0)).toFixed(0)} ops/s`)
await close()
await own.dispose()
