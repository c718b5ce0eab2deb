// cache.wrap on a hit against a hand-written getOrSet with a literal
// (template) key, and cache-manager's wrap, in one process.
// Data: 10,000 keys per task, all resident (capacity 50,000 for the 30,000
// entries; the run fails if a timed call misses), read round-robin;
// values: a 100-byte string, a ~100-byte object and a ~1 KB object.
// Each round times every task on 20,000 calls, tasks interleaved round by
// round; the note gives the median of the per-round wrap ÷ hand-written ratios.
import { createCache } from 'cache-manager'
import { CacheManager, type JsonObject } from 'hotpath'
import { record, type Row } from './harness.mts'

const N = 10_000
const CALLS = Number(process.env.WRAP_BENCH_CALLS ?? 20_000)
const ROUNDS = Number(process.env.WRAP_BENCH_ROUNDS ?? 7)

function objectOf(bytes: number): JsonObject {
  const o: JsonObject = { id: 12345, name: 'Ada Lovelace', active: true, tags: ['a', 'b'] }
  let i = 0
  while (JSON.stringify(o).length < bytes) o[`f${i++}`] = 'x'.repeat(20)
  return o
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1]

async function timeNs(run: (n: number) => Promise<void>): Promise<number> {
  const t0 = process.hrtime.bigint()
  await run(CALLS)
  return Number(process.hrtime.bigint() - t0) / CALLS
}

async function scenario(label: string, value: string | JsonObject) {
  const hp = new CacheManager({ maxEntries: 50_000 })
  const cm = createCache()
  const factory = () => value
  const getUser = hp.wrap(async function getUser(id: number) {
    return value
  })
  // Object arguments: key order-independent serialization (sorted keys).
  const search = hp.wrap(async function search(q: { user: number; page: number }) {
    return value
  })
  for (let i = 0; i < N; i++) {
    await getUser(i)
    await search({ user: i, page: 1 })
    await hp.getOrSet(`user:${i}`, factory)
    await cm.wrap(`user:${i}`, async () => value)
  }
  let i = 0
  const tasks: Record<string, (n: number) => Promise<void>> = {
    'hotpath wrap(fn)(id)': async (n) => {
      for (let j = 0; j < n; j++) await getUser(i++ % N)
    },
    'hotpath getOrSet(`user:${id}`, factory) (hand-written)': async (n) => {
      for (let j = 0; j < n; j++) await hp.getOrSet(`user:${i++ % N}`, factory)
    },
    'hotpath wrap(fn)({ user, page }) (object argument)': async (n) => {
      for (let j = 0; j < n; j++) await search({ page: 1, user: i++ % N })
    },
    'cache-manager wrap(`user:${id}`, fn)': async (n) => {
      for (let j = 0; j < n; j++) await cm.wrap(`user:${i++ % N}`, async () => value)
    },
  }
  const names = Object.keys(tasks)
  const perRound: Record<string, number[]> = Object.fromEntries(names.map((n) => [n, []]))
  for (const run of Object.values(tasks)) await run(2_000) // warm-up
  const missesBefore = hp.stats().misses
  for (let r = 0; r < ROUNDS; r++) {
    for (const name of names) perRound[name].push(await timeNs(tasks[name]))
  }
  const missed = hp.stats().misses - missesBefore
  if (missed > 0) throw new Error(`wrap benchmark: ${missed} timed calls missed; every call must be a hit`)
  const wrapNs = perRound[names[0]]
  const rows: Row[] = names.map((name) => {
    const ns = median(perRound[name])
    return { name, opsPerSec: 1e9 / ns, meanNs: ns, p99Ns: NaN, samples: ROUNDS, ratio: null }
  })
  const perRoundHand = median(perRound[names[1]].map((t, k) => wrapNs[k] / t))
  record({
    title: `wrap, hit: ${label}`,
    note:
      `${N} keys, all resident, round-robin; ${ROUNDS} interleaved rounds of ${CALLS} awaited calls; mean = median over rounds. ` +
      `Goal: a wrapped call costs at most 1.5x the hand-written getOrSet (its ratio >= 0.67). ` +
      `Median per-round time ratio wrap ÷ hand-written: ${perRoundHand.toFixed(2)}x.`,
    rows,
  })
  await hp.close()
}

export default async function () {
  await scenario('100-byte string values', 'v'.repeat(100))
  await scenario('~100-byte object values', objectOf(100))
  await scenario('~1 KB object values', objectOf(1000))
}
