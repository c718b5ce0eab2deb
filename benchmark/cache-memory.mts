// One store, 1,000,000 entries (16-byte key; a ~100 B JSON object, or a
// 100-byte string), in its own process: RSS added, V8 heap added, full gc()
// pause. Prints one JSON line. Usage: cache-memory.mts <store> [object|string]
import { LRUCache } from 'lru-cache'
import { CacheManager } from 'hotpath'

const which = process.argv[2]
const shape = process.argv[3] ?? 'object'
const N = 1_000_000
const gc = (globalThis as any).gc as () => void
const key = (i: number) => `key:${String(i).padStart(12, '0')}`
const value =
  shape === 'object'
    ? (i: number) => ({ id: i, name: `user-${i}`, email: `user-${i}@example.com`, active: i % 2 === 0, score: (i % 97) / 7, tags: ['a', 'b'] })
    : (i: number) => 'v'.repeat(99) + (i % 10) // distinct strings
gc()
gc()
const rss0 = process.memoryUsage().rss
const heap0 = process.memoryUsage().heapUsed
let keep: unknown
if (which === 'hotpath') {
  // Default options: the per-thread front cache is on; reading 20k keys
  // (more than it holds) leaves it full, as in a service at steady state.
  const c = new CacheManager({ maxEntries: N + 1 })
  for (let i = 0; i < N; i++) c.setSync(key(i), value(i))
  for (let i = 0; i < 20_000; i++) c.getSync(key(i * 50))
  keep = c
} else if (which === 'lru-cache') {
  const c = new LRUCache<string, object | string>({ max: N + 1 })
  for (let i = 0; i < N; i++) c.set(key(i), value(i))
  keep = c
} else {
  const c = new Map<string, unknown>()
  for (let i = 0; i < N; i++) c.set(key(i), value(i))
  keep = c
}
gc()
gc()
const t0 = performance.now()
gc()
const gcMs = performance.now() - t0
const m = process.memoryUsage()
console.log(JSON.stringify({ store: which, shape, rss: m.rss - rss0, heap: m.heapUsed - heap0, gcMs, keep: !!keep }))
