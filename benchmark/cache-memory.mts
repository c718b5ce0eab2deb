// One store, 1,000,000 entries (16-byte key, 100-byte value), in its own
// process: RSS added, V8 heap added, full gc() pause. Prints one JSON line.
import { LRUCache } from 'lru-cache'
import { CacheManager } from 'hotpath'

const which = process.argv[2]
const N = 1_000_000
const gc = (globalThis as any).gc as () => void
const value = () => 'v'.repeat(99) + Math.floor(Math.random() * 10) // distinct strings
gc()
gc()
const rss0 = process.memoryUsage().rss
const heap0 = process.memoryUsage().heapUsed
let keep: unknown
if (which === 'hotpath') {
  const c = new CacheManager({ maxEntries: N + 1, frontCacheEntries: 0 })
  for (let i = 0; i < N; i++) c.setSync(`key:${String(i).padStart(12, '0')}`, value())
  keep = c
} else if (which === 'lru-cache') {
  const c = new LRUCache<string, string>({ max: N + 1 })
  for (let i = 0; i < N; i++) c.set(`key:${String(i).padStart(12, '0')}`, value())
  keep = c
} else {
  const c = new Map<string, string>()
  for (let i = 0; i < N; i++) c.set(`key:${String(i).padStart(12, '0')}`, value())
  keep = c
}
gc()
gc()
const t0 = performance.now()
gc()
const gcMs = performance.now() - t0
const m = process.memoryUsage()
console.log(JSON.stringify({ store: which, rss: m.rss - rss0, heap: m.heapUsed - heap0, gcMs, keep: !!keep }))
