// One limiter, 1,000,000 distinct keys each checked once, in its own process:
// keys held, RSS added, V8 heap added, full gc() pause. Prints one JSON line.
//   ratelimiter-memory.ts <hotpath|rate-limiter-flexible> <algorithm> <maxKeys>
import { RateLimiterMemory } from 'rate-limiter-flexible'
import { RateLimiter } from 'hotpath'

const [store, algorithm, maxKeys] = process.argv.slice(2)
const N = 1_000_000
const gc = (globalThis as any).gc as () => void
const key = (i: number) => `user:${String(i).padStart(11, '0')}` // 16 bytes
gc()
gc()
const rss0 = process.memoryUsage().rss
const heap0 = process.memoryUsage().heapUsed
const t0 = performance.now()
let keys = N
let keep: unknown
if (store === 'hotpath') {
  const rl = new RateLimiter({ limit: 10, windowMs: 600_000, algorithm: algorithm as any, maxKeys: Number(maxKeys) })
  for (let i = 0; i < N; i++) rl.checkSync(key(i))
  keys = rl.stats().keys
  keep = rl
} else {
  const rl = new RateLimiterMemory({ points: 10, duration: 600 })
  for (let i = 0; i < N; i += 1000) {
    const ps = []
    for (let j = i; j < i + 1000; j++) ps.push(rl.consume(key(j)))
    await Promise.all(ps)
  }
  keep = rl
}
const seconds = (performance.now() - t0) / 1000
gc()
gc()
const g0 = performance.now()
gc()
const gcMs = performance.now() - g0
const m = process.memoryUsage()
console.log(JSON.stringify({ store, algorithm, keys, rss: m.rss - rss0, heap: m.heapUsed - heap0, gcMs, seconds, keep: !!keep }))
process.exit(0)
