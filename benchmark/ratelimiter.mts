// RateLimiter against rate-limiter-flexible, in one process: in-process
// checks (one hot key, 100,000 keys), Redis checks with 100 in flight on the
// same Redis, and memory with 1,000,000 keys (each store in its own process).
import { spawnSync } from 'node:child_process'
import { RateLimiterMemory, RateLimiterRedis } from 'rate-limiter-flexible'
import { Redis as IORedis } from 'ioredis'
import { RateLimiter } from 'hotpath'
import { inFlight, interleavedRounds, record, startRedis, type Row } from './harness.mts'

const HUGE = 1e12 // never limited: every op is a full admission
const B = 1000
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 7)
/** Interleaved rounds (harness) of fns that each do `B` operations. */
const interleaved = (title: string, fns: Record<string, () => unknown>, note: string) => interleavedRounds(title, fns, B, note, 100)

async function hotKey() {
  const fixed = new RateLimiter({ limit: HUGE, windowMs: 60_000, algorithm: 'fixed-window' })
  const gcra = new RateLimiter({ limit: HUGE, windowMs: 60_000, algorithm: 'gcra' })
  const sliding = new RateLimiter({ limit: 100, windowMs: 60_000 }) // exact; mostly denials once full
  const rlf = new RateLimiterMemory({ points: HUGE, duration: 60 })
  let sink = 0
  await interleaved(
    'checkSync, one hot key',
    {
      'hotpath checkSync (fixed-window)': () => {
        for (let j = 0; j < B; j++) sink += fixed.checkSync('hot').remaining
      },
      'hotpath checkSync (gcra)': () => {
        for (let j = 0; j < B; j++) sink += gcra.checkSync('hot').remaining
      },
      'hotpath checkSync (sliding-window, full)': () => {
        for (let j = 0; j < B; j++) sink += sliding.checkSync('hot').remaining
      },
      'hotpath check (fixed-window, awaited as a batch)': async () => {
        const ps = new Array(B)
        for (let j = 0; j < B; j++) ps[j] = fixed.check('hot')
        for (const r of await Promise.all(ps)) sink += r.remaining
      },
      'rate-limiter-flexible RateLimiterMemory.consume (awaited as a batch)': async () => {
        const ps = new Array(B)
        for (let j = 0; j < B; j++) ps[j] = rlf.consume('hot')
        for (const r of await Promise.all(ps)) sink += r.remainingPoints
      },
    },
    `Each call does ${B} checks of one key. rate-limiter-flexible's consume returns a Promise: its ${B} are awaited together (its fastest use). Goal: checkSync >= 3x consume.`,
  )
  if (sink === 42) console.log(sink)
  await Promise.all([fixed.close(), gcra.close(), sliding.close()])
}

async function manyKeys() {
  const N = 100_000
  const keys = Array.from({ length: N }, (_, i) => `user:${String(i).padStart(8, '0')}`)
  const fixed = new RateLimiter({ limit: HUGE, windowMs: 60_000, algorithm: 'fixed-window' })
  const sliding = new RateLimiter({ limit: 100, windowMs: 60_000 })
  const tb = new RateLimiter({ limit: 100, windowMs: 60_000, algorithm: 'token-bucket' })
  const rlf = new RateLimiterMemory({ points: HUGE, duration: 60 })
  let i = 0
  let sink = 0
  await interleaved(
    'checkSync, 100,000 distinct keys (round-robin)',
    {
      'hotpath checkSync (fixed-window)': () => {
        for (let j = 0; j < B; j++) sink += fixed.checkSync(keys[i++ % N]).remaining
      },
      'hotpath checkSync (sliding-window)': () => {
        for (let j = 0; j < B; j++) sink += sliding.checkSync(keys[i++ % N]).remaining
      },
      'hotpath checkSync (token-bucket)': () => {
        for (let j = 0; j < B; j++) sink += tb.checkSync(keys[i++ % N]).remaining
      },
      'rate-limiter-flexible RateLimiterMemory.consume (awaited as a batch)': async () => {
        const ps = new Array(B)
        for (let j = 0; j < B; j++) ps[j] = rlf.consume(keys[i++ % N])
        for (const r of await Promise.all(ps)) sink += r.remainingPoints
      },
    },
    `Each call checks ${B} keys of 100,000 (16-byte keys), round-robin: every key is revisited each 100 calls (after the first pass every key has state). Goal: checkSync >= 5x consume.`,
  )
  await Promise.all([fixed.close(), sliding.close(), tb.close()])

  // First checks: every key new (state created; rate-limiter-flexible also
  // starts a timer per key). Each round is a fresh limiter and 100,000 keys.
  const rates = new Map<string, number[]>()
  const note = (name: string, ms: number) => rates.set(name, [...(rates.get(name) ?? []), (N * 1000) / ms])
  for (let r = 0; r < Math.min(ROUNDS, 5); r++) {
    for (const algorithm of ['fixed-window', 'sliding-window'] as const) {
      const l = new RateLimiter({ limit: 100, windowMs: 60_000, algorithm })
      const t0 = performance.now()
      for (let j = 0; j < N; j++) sink += l.checkSync(keys[j]).remaining
      note(`hotpath checkSync (${algorithm}), new keys`, performance.now() - t0)
      await l.close()
    }
    const m = new RateLimiterMemory({ points: 100, duration: 60 })
    const t0 = performance.now()
    for (let j = 0; j < N; j += B) {
      const ps = new Array(B)
      for (let k = 0; k < B; k++) ps[k] = m.consume(keys[j + k])
      for (const x of await Promise.all(ps)) sink += x.remainingPoints
    }
    note('rate-limiter-flexible RateLimiterMemory.consume (awaited as a batch), new keys', performance.now() - t0)
  }
  record({
    title: 'checkSync, first check of 100,000 new keys',
    note: 'A fresh limiter per round, each of 100,000 keys checked once (state created). Median of interleaved rounds.',
    rows: [...rates].map(([name, rs]) => {
      const median = rs.sort((a, b) => a - b)[rs.length >> 1]
      return { name, opsPerSec: median, meanNs: 1e9 / median, p99Ns: NaN, samples: rs.length, ratio: null }
    }),
  })
  if (sink === 42) console.log(sink)
}

// ------------------------------------------------------------------ Redis



async function redis() {
  const server = await startRedis()
  if (!server) {
    console.log('\n(skipping Redis scenario: no REDIS_URL and no redis-server)')
    return
  }
  const io = new IORedis(server.url, { enableAutoPipelining: false })
  const ioAuto = new IORedis(server.url, { enableAutoPipelining: true })
  const KEYS = 1000
  const keys = Array.from({ length: KEYS }, (_, i) => `user:${String(i).padStart(8, '0')}`)
  const prefix = `bench-${process.pid}:`
  const algorithms = ['fixed-window', 'sliding-window', 'sliding-window-counter', 'token-bucket', 'gcra'] as const
  const hp: Record<string, RateLimiter> = {}
  for (const algorithm of algorithms) {
    hp[algorithm] = new RateLimiter({ limit: 1e9, windowMs: 60_000, algorithm, redis: { url: server.url, keyPrefix: prefix } })
  }
  const rlf = new RateLimiterRedis({ storeClient: io, points: 1e9, duration: 60, keyPrefix: `${prefix}rlf` })
  const rlfAuto = new RateLimiterRedis({ storeClient: ioAuto, points: 1e9, duration: 60, keyPrefix: `${prefix}rlfa` })
  let i = 0
  const ops: Record<string, () => Promise<unknown>> = {}
  for (const algorithm of algorithms) ops[`hotpath check on Redis (${algorithm})`] = () => hp[algorithm].check(keys[i++ % KEYS])
  ops['rate-limiter-flexible RateLimiterRedis.consume (ioredis)'] = () => rlf.consume(keys[i++ % KEYS])
  const seq: Record<string, () => Promise<unknown>> = {}
  for (const [name, op] of Object.entries(ops)) {
    seq[name] = async () => {
      for (let j = 0; j < 50; j++) await op()
    }
  }
  await interleavedRounds(
    'check on Redis, one at a time',
    seq,
    50,
    `${KEYS} keys round-robin, one local redis-server, each check awaited before the next. rate-limiter-flexible is a fixed window. Goal: every algorithm >= 1.0x RateLimiterRedis.consume.`,
  )
  const N = 1024
  const par: Record<string, () => Promise<unknown>> = {}
  for (const [name, op] of Object.entries(ops)) par[name] = () => inFlight(N, 64, op)
  par['rate-limiter-flexible RateLimiterRedis.consume (ioredis, auto-pipelining)'] = () => inFlight(N, 64, () => rlfAuto.consume(keys[i++ % KEYS]))
  await interleavedRounds(
    'check on Redis, 64 in flight',
    par,
    N,
    `${N} checks per round over ${KEYS} keys, 64 outstanding at a time, one local redis-server. Goal: every algorithm >= 1.5x RateLimiterRedis.consume (ioredis).`,
  )
  for (const l of Object.values(hp)) await l.close()
  io.disconnect()
  ioAuto.disconnect()
  await server.stop()
}


// ------------------------------------------------------------------ memory

function memory() {
  const rows: Row[] = []
  const notes: string[] = []
  const runs = [
    ['hotpath', 'fixed-window', '1000000'],
    ['hotpath', 'gcra', '1000000'],
    ['hotpath', 'sliding-window', '1000000'],
    ['hotpath', 'fixed-window', '100000'],
    ['rate-limiter-flexible', 'fixed-window', '0'],
  ]
  for (const [store, algorithm, maxKeys] of runs) {
    const r = spawnSync(process.execPath, ['--expose-gc', '--import', 'tsx', new URL('./ratelimiter-memory.mts', import.meta.url).pathname, store, algorithm, maxKeys], {
      encoding: 'utf8',
    })
    if (r.status !== 0) throw new Error(`memory run failed: ${r.stderr}`)
    const m = JSON.parse(r.stdout.trim().split('\n').pop()!)
    const name = store === 'hotpath' ? `hotpath (${algorithm}, maxKeys ${Number(maxKeys).toLocaleString('en')})` : 'rate-limiter-flexible RateLimiterMemory'
    // ops/s column: keys per MB of RSS (higher is better), so the ratio reads as memory efficiency.
    rows.push({ name, opsPerSec: (m.keys / m.rss) * 1e6, meanNs: m.rss / m.keys, p99Ns: NaN, samples: 1, ratio: null })
    notes.push(`${name}: ${m.keys.toLocaleString('en')} keys held, RSS +${(m.rss / 2 ** 20).toFixed(0)} MiB (${(m.rss / m.keys).toFixed(0)} B/key held), V8 heap +${(m.heap / 2 ** 20).toFixed(1)} MiB, full gc() ${m.gcMs.toFixed(1)} ms, ${m.seconds.toFixed(2)} s to insert`)
  }
  record({
    title: 'memory, 1,000,000 distinct keys (each store in its own process)',
    note: 'The "ops/s" column is keys held per MB of RSS and "mean" is RSS bytes per key held (not ns).\n' + notes.map((n) => `- ${n}`).join('\n'),
    rows,
  })
}

export default async function () {
  if (process.env.BENCH_ONLY === 'redis') return redis()
  await hotKey()
  await manyKeys()
  await redis()
  memory()
}
