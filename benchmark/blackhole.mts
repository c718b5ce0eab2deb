// Issue 12's blackhole goal, in a process of its own (the test runner's
// heap makes GC pauses of ~10 ms that stall every call): a redis-server
// SIGSTOP'd for 3 s under 50 calls in flight (25 cache gets that miss L1,
// 25 limiter checks). After the first wave waits out commandTimeoutMs, each
// call's latency until SIGCONT; the same load on a healthy Redis before and
// after, and the event loop's own stalls over each phase, for comparison.
//   node --expose-gc --import tsx benchmark/blackhole.mts [runs = 3]
import { monitorEventLoopDelay, PerformanceObserver } from 'node:perf_hooks'
import { CacheManager, RateLimiter } from 'hotpath'
import { OwnRedis, freePort } from '../__test__/helpers.ts'
const own = new OwnRedis(await freePort())
await own.start()
const timeout = 400
const redis = { url: own.url, keyPrefix: `bh-${process.pid}:`, commandTimeoutMs: timeout, connectTimeoutMs: timeout }
const cache = new CacheManager({ redis, maxEntries: 10, invalidation: 'none' })
const limiter = new RateLimiter({ limit: 1e9, windowMs: 60_000, algorithm: 'fixed-window', onRedisError: 'deny', redis })
const keys = Array.from({ length: 50 }, (_, i) => `miss${i}`)
async function phase(name: string, ms: number) {
  const lat: number[] = []
  const stalls = monitorEventLoopDelay({ resolution: 1 })
  stalls.enable()
  let gcMax = 0
  const gcs = new PerformanceObserver((l) => { for (const e of l.getEntries()) gcMax = Math.max(gcMax, e.duration) })
  gcs.observe({ entryTypes: ['gc'] })
  const t00 = performance.now()
  let slowWaves = 0
  while (performance.now() - t00 < ms) {
    const w0 = performance.now()
    const before = lat.length
    await Promise.all(keys.map((k, i) => { const t0 = performance.now(); const p = i % 2 ? limiter.check(k) : cache.get(k); return p.then(() => lat.push(performance.now() - t0)) }))
    if (lat.slice(before).some((x) => x > 5)) slowWaves++
    await new Promise((r) => setTimeout(r, 10))
  }
  stalls.disable(); gcs.disconnect()
  lat.sort((a, b) => a - b)
  const over5 = lat.filter((x) => x > 5).length
  console.log(`${name}: ${lat.length} calls p50 ${lat[lat.length >> 1].toFixed(2)} p99 ${lat[Math.floor(lat.length * 0.99)].toFixed(2)} max ${lat[lat.length - 1].toFixed(2)} ms; >5ms: ${over5} calls in ${slowWaves} waves; loop delay max ${(stalls.max / 1e6).toFixed(2)} ms; gc max ${gcMax.toFixed(2)}`)
}
const runs = Number(process.argv[2] ?? 3)
await cache.set('warm', 1)
for (let r = 1; r <= runs; r++) {
  console.log(`run ${r}`)
  await phase('  healthy', 3000)
  own.pause()
  const t0 = performance.now()
  await Promise.all([...keys.slice(0, 25).map((k) => cache.get(k)), ...keys.slice(25).map((k) => limiter.check(k))])
  console.log(`  first wave (waits commandTimeoutMs ${timeout}): ${(performance.now() - t0).toFixed(0)} ms`)
  await phase('  blackholed', 3000)
  own.resume()
  const t1 = performance.now()
  while (!(await limiter.check('heal')).allowed) await new Promise((res) => setTimeout(res, 1))
  console.log(`  healed ${(performance.now() - t1).toFixed(0)} ms after SIGCONT`)
}
await cache.close(); await limiter.close(); await own.dispose()
