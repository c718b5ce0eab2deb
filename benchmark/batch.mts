// BatchProcessor against dataloader and @yornaath/batshit, in one process.
//
// 1. Overhead per add: 100,000 adds, maxBatchSize 100, a handler that returns
//    at once; each run awaits every result.
// 2. A simulated upstream (5 ms per call, at most 8 calls at once, as a
//    connection pool would allow): items/s and mean latency per item for a
//    burst of items, batched (hotpath, dataloader) and one call per item.
// 3. The native scheduler's cost per batch (submit + finish).
import DataLoader from 'dataloader'
import { create, windowedFiniteBatchScheduler } from '@yornaath/batshit'
import { BatchProcessor } from 'hotpath'
import { NativeBatch } from '../index.js'
import { compare, gc, record, type Row } from './harness.mts'

const N = 100_000
const keys = Array.from({ length: N }, (_, i) => i)

async function overhead() {
  const hp = new BatchProcessor<number, number>((items) => items, { maxBatchSize: 100, maxWaitMs: 10 })
  const dl = new DataLoader<number, number>((ks) => Promise.resolve(ks as number[]), { cache: false, maxBatchSize: 100 })
  // batshit keeps every batch it has fetched (its completion handler marks
  // the wrong batch complete, so its cleanup never drops them): one instance
  // reused across runs grows without bound and slows down. A fresh one per run.
  const batshit = () =>
    create<Map<number, number>, number, number>({
      fetcher: async (qs: number[]) => {
        const m = new Map<number, number>()
        for (const q of qs) m.set(q, q)
        return m
      },
      resolver: (m: Map<number, number>, q: number) => m.get(q)!,
      scheduler: windowedFiniteBatchScheduler({ windowMs: 10, maxBatchSize: 100 }),
    })
  const run = (make: () => (k: number) => Promise<number>) => async () => {
    const add = make()
    const ps = new Array(N)
    for (let i = 0; i < N; i++) ps[i] = add(keys[i])
    const r = await Promise.all(ps)
    if (r[N - 1] !== N - 1) throw new Error('wrong result')
  }
  // Interleaved rounds (order rotated each round, a full GC before each run)
  // and the median per contestant: on a shared, noisy machine this is
  // steadier than running one contestant after the other.
  const contestants: [string, () => (k: number) => Promise<number>][] = [
    ['hotpath BatchProcessor.add', () => (k) => hp.add(k)],
    ['dataloader load (cache: false)', () => (k) => dl.load(k)],
    [
      'batshit fetch (windowed, max 100)',
      () => {
        const bs = batshit()
        return (k) => bs.fetch(k)
      },
    ],
  ]
  const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 15)
  const times = contestants.map(() => [] as number[])
  for (let round = 0; round < ROUNDS + 2; round++) {
    for (let j = 0; j < contestants.length; j++) {
      const c = (round + j) % contestants.length
      gc()
      const t0 = performance.now()
      await run(contestants[c][1])()
      if (round >= 2) times[c].push(performance.now() - t0) // 2 warm-up rounds
    }
  }
  const rows: Row[] = contestants.map(([name], c) => {
    const t = times[c].sort((x, y) => x - y)
    const med = t[Math.floor(t.length / 2)]
    return { name, opsPerSec: (N / med) * 1000, meanNs: (med * 1e6) / N, p99Ns: (t[t.length - 1] * 1e6) / N, samples: t.length, ratio: null }
  })
  record({
    title: 'BatchProcessor: overhead per add (100,000 adds, maxBatchSize 100, handler returns at once)',
    note: `ops/s = adds per second; mean = time per add (median of ${ROUNDS} interleaved runs), including its promise and its resolution. batshit resolves through a Map its fetcher builds (its resolver contract), one fresh instance per run (see the comment in benchmark/batch.mts). Goal: hotpath ÷ dataloader >= 0.67 (at most 1.5x its cost), and > 1 against batshit.`,
    rows,
  })
  await hp.close()
}

/** A remote service: 5 ms per call whatever its size, at most `slots` calls at once. */
function upstream(slots: number, ms = 5) {
  let busy = 0
  const waiting: (() => void)[] = []
  return async function call<T>(x: T): Promise<T> {
    if (busy >= slots) await new Promise<void>((r) => waiting.push(r))
    else busy++
    await new Promise((r) => setTimeout(r, ms))
    const next = waiting.shift()
    if (next) next()
    else busy--
    return x
  }
}

async function latency() {
  const M = 2000
  const SLOTS = 8
  const scenarios: Record<string, () => { add: (k: number) => Promise<number>; done?: () => Promise<void> }> = {
    'hotpath BatchProcessor (100/batch, 10 ms window, concurrency 8)': () => {
      const call = upstream(SLOTS)
      const hp = new BatchProcessor<number, number>((items) => call(items), { maxBatchSize: 100, maxWaitMs: 10, concurrency: SLOTS })
      return { add: (k) => hp.add(k), done: () => hp.close() }
    },
    'dataloader (100/batch, cache: false)': () => {
      const call = upstream(SLOTS)
      const dl = new DataLoader<number, number>((ks) => call(ks as number[]), { cache: false, maxBatchSize: 100 })
      return { add: (k) => dl.load(k) }
    },
    'one upstream call per item': () => {
      const call = upstream(SLOTS)
      return { add: (k) => call(k) }
    },
  }
  const rows: Row[] = []
  for (const [name, make] of Object.entries(scenarios)) {
    const best = { opsPerSec: 0, meanNs: 0, p99Ns: 0 }
    for (let round = 0; round < 3; round++) {
      const s = make()
      const lat = new Float64Array(M)
      const t0 = performance.now()
      const ps = new Array(M)
      for (let i = 0; i < M; i++) {
        const a = performance.now()
        ps[i] = s.add(i).then((v) => {
          lat[i] = performance.now() - a
          return v
        })
      }
      await Promise.all(ps)
      const ms = performance.now() - t0
      await s.done?.()
      const sorted = Array.from(lat).sort((x, y) => x - y)
      const mean = sorted.reduce((x, y) => x + y, 0) / M
      const ops = (M / ms) * 1000
      if (ops > best.opsPerSec) {
        best.opsPerSec = ops
        best.meanNs = mean * 1e6
        best.p99Ns = sorted[Math.floor(M * 0.99)] * 1e6
      }
    }
    rows.push({ name, opsPerSec: best.opsPerSec, meanNs: best.meanNs, p99Ns: best.p99Ns, samples: 3, ratio: null })
  }
  record({
    title: `BatchProcessor: ${M} items in a burst against a 5 ms upstream (at most ${SLOTS} calls at once)`,
    note: 'ops/s = items per second through the upstream; mean = mean latency of one item (add to result). Best of 3 runs.',
    rows,
  })
}

async function nativeFloor() {
  const n = new NativeBatch({ maxBatchSize: 100, concurrency: 4 })
  await compare(
    'BatchProcessor: native scheduler calls per batch',
    {
      'hotpath NativeBatch submit + finish (one batch)': () => {
        const id = n.submit(100, 100)
        n.finish(id, false)
      },
      'JS Map set + delete (for scale)': (() => {
        const m = new Map<number, number>()
        let i = 0
        return () => {
          m.set(i, i)
          m.delete(i++)
        }
      })(),
    },
    { note: 'What the scheduler costs a batch of 100: divide by 100 for the cost per item.' },
  )
}

export default async function () {
  await overhead()
  await latency()
  await nativeFloor()
}
