// The demo (examples/gateway, `npm run demo`) at a small size: its claims
// hold for the peers gateway and the hotpath gateway alike (right answers,
// exact limits, one upstream call per input), and the numbers it prints are
// the ones the services report.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { Redis } from 'ioredis'
import { runDemo, gatewayCost, ratio, type DemoResult, type GatewayStats, type UpstreamStats } from '../examples/gateway/demo.mjs'
import { redisUrl } from './helpers.ts'

const REQUESTS = 300

interface Seen {
  gateways: GatewayStats[]
  upstream: UpstreamStats
}
type SeenAll = { baseline: Seen; peers: Seen; hotpath: Seen }
type Run = { result: DemoResult; printed: string; seen: SeenAll }

async function getJson<T>(url: string): Promise<T> {
  const r = await fetch(url)
  assert.equal(r.status, 200, `GET ${url}`)
  return (await r.json()) as T
}

/** Runs the demo, reading every service's /stats itself (not through the demo) while they are up. */
async function demo(options: { instances?: number; redisUrl?: string; values?: 'string' | 'json' }): Promise<Run> {
  const out: string[] = []
  const seen: Record<string, Seen> = {}
  const result = await runDemo({
    requests: REQUESTS,
    ...options,
    write: (s) => out.push(s),
    onMeasured: async ({ mode, gateways, upstream }) => {
      seen[mode] = {
        gateways: await Promise.all(gateways.map((g) => getJson<GatewayStats>(`${g}/stats`))),
        upstream: await getJson<UpstreamStats>(`${upstream}/stats`),
      }
    },
  })
  return { result, printed: out.join(''), seen: seen as SeenAll }
}

/** The printed table's row `label` as [baseline, peers, hotpath, hotpath/peers] text. */
function row(printed: string, label: string): [string, string, string, string] {
  const line = printed.split('\n').find((l) => l.trimStart().startsWith(label))
  assert.ok(line, `the printed table has a "${label}" row:\n${printed}`)
  const cells = line.trim().split(/\s{2,}/)
  return [cells[1], cells[2], cells[3], cells[4] ?? '']
}

const int = (s: string) => Number(s.replace(/,/g, ''))
const sum = (gs: GatewayStats[], f: (g: GatewayStats) => number) => gs.reduce((n, g) => n + f(g), 0)
const duplicates = (u: UpstreamStats) => u.completeDuplicates + u.embedDuplicates + u.retrieveDuplicates

/** What must hold for a gateway with a cache and limits (peers or hotpath). */
function cachingClaims(run: Run, mode: 'peers' | 'hotpath') {
  const { plan } = run.result
  const m = run.result.measured[mode]
  const seen = run.seen[mode]
  const gws = seen.gateways
  const what = `${mode}:`

  assert.equal(m.load.sent, plan.requests, what)
  for (const g of gws) assert.equal(g.mode, mode, what)
  // Every 200 answer was the right one, cached or not; nothing failed.
  assert.equal(m.load.wrong, 0, `${what} wrong answers`)
  assert.equal(m.load.errors, 0, `${what} errors: ${m.load.errorSamples.join(' | ')}`)
  assert.ok(m.load.ok > 0, what)

  // Fewer upstream calls than requests (and than the baseline's); no upstream
  // 429s (the concurrency cap).
  assert.ok(seen.upstream.calls < plan.requests, `${what} ${seen.upstream.calls} upstream calls for ${plan.requests} requests`)
  assert.ok(seen.upstream.calls < run.seen.baseline.upstream.calls, what)
  assert.equal(seen.upstream.rejected429, 0, what)
  assert.ok(seen.upstream.peakConcurrent <= 16, `${what} peak upstream concurrency ${seen.upstream.peakConcurrent}`)

  // 429s only for the abusive client, which got exactly its limit through
  // (one limit, however many instances).
  assert.deepEqual(Object.keys(m.load.limitedByClient), [plan.abusiveKey], what)
  assert.ok(m.load.limitedByClient[plan.abusiveKey] > 0, what)
  assert.equal(m.load.abusiveAllowed, plan.clientLimit, `${what} the abusive client got exactly its limit through`)
  const gatewayLimited: Record<string, number> = {}
  for (const g of gws) for (const [k, n] of Object.entries(g.gateway.limitedByClient)) gatewayLimited[k] = (gatewayLimited[k] ?? 0) + n
  assert.deepEqual(gatewayLimited, m.load.limitedByClient, what)
  assert.equal(sum(gws, (g) => g.limiter!.denied), m.load.limited, what)

  // Embedding batches larger than 1 (the baseline's are 1); documents chunked in worker threads.
  const avgBatch = sum(gws, (g) => g.embedBatch!.items) / sum(gws, (g) => g.embedBatch!.batches)
  assert.ok(avgBatch > 1, `${what} average embedding batch ${avgBatch}`)
  assert.ok(sum(gws, (g) => g.cpuQueue!.completed) > 0, what)
  return { gws, avgBatch, gatewayLimited }
}

function commonClaims(run: Run) {
  const { result, printed, seen } = run
  const { plan } = result
  const b = result.measured.baseline

  // It ran all three, showed progress and printed the table.
  assert.equal(b.load.sent, plan.requests)
  for (const mode of ['baseline', 'peers', 'hotpath']) assert.match(printed, new RegExp(`${mode}\\s+\\d+/\\d+ requests`))
  assert.ok(printed.includes(result.table))
  assert.match(printed, /machine: \d+ cores/)
  assert.equal(b.load.wrong, 0)
  assert.equal(b.load.limited, 0)
  assert.equal(seen.baseline.upstream.avgEmbedBatchSize, 1)

  const p = cachingClaims(run, 'peers')
  const h = cachingClaims(run, 'hotpath')
  assert.ok(sum(h.gws, (g) => g.bufferPool!.hits) > 0)

  // The printed table shows the numbers /stats reports, in the three columns.
  const up = (s: Seen) => s.upstream
  const three = <T>(f: (s: Seen) => T) => [f(seen.baseline), f(seen.peers), f(seen.hotpath)]
  assert.deepEqual(row(printed, 'upstream calls').slice(0, 3), three((s) => up(s).calls.toLocaleString('en-US')))
  assert.equal(row(printed, 'upstream calls')[3], ratio(up(seen.hotpath).calls, up(seen.peers).calls, false))
  assert.deepEqual(row(printed, 'refused by upstream (429)').slice(0, 3).map(int), three((s) => up(s).rejected429))
  assert.deepEqual(row(printed, 'repeated work').slice(0, 3).map(int), three((s) => duplicates(up(s))))
  assert.deepEqual(
    row(printed, '429s served by the gateway').slice(0, 3).map(int),
    three((s) => sum(s.gateways, (g) => g.gateway.byStatus['429'] ?? 0)),
  )
  assert.equal(int(row(printed, '429s served by the gateway')[2]), result.measured.hotpath.load.limited)
  const hitRatio = (s: Seen) => `${((sum(s.gateways, (g) => g.gateway.cacheHits) / sum(s.gateways, (g) => g.gateway.cacheLookups)) * 100).toFixed(1)}%`
  assert.deepEqual(row(printed, 'cache hit ratio').slice(0, 3), ['-', hitRatio(seen.peers), hitRatio(seen.hotpath)])
  assert.deepEqual(row(printed, 'avg embedding batch size').slice(0, 3), ['1.0', p.avgBatch.toFixed(1), h.avgBatch.toFixed(1)])
  assert.deepEqual(row(printed, 'documents chunked in worker threads').slice(0, 3).map(int), [
    0,
    sum(p.gws, (g) => g.cpuQueue!.completed),
    sum(h.gws, (g) => g.cpuQueue!.completed),
  ])
  assert.deepEqual(row(printed, 'body buffers reused').slice(0, 3).map(int), [0, 0, sum(h.gws, (g) => g.bufferPool!.hits)])
  const split = (l: Record<string, number>) => `${(l[plan.abusiveKey] ?? 0).toLocaleString('en-US')} / 0`
  assert.deepEqual(row(printed, 'to the abusive client / to others').slice(0, 3), ['0 / 0', split(p.gatewayLimited), split(h.gatewayLimited)])
  const modes = ['baseline', 'peers', 'hotpath'] as const
  assert.deepEqual(row(printed, 'requests/s').slice(0, 3).map(int), modes.map((mode) => Math.round(result.measured[mode].load.requestsPerSec)))

  // CPU and memory rows: measured by each gateway process (process.cpuUsage
  // over the load, memoryUsage after a full GC) and printed as measured.
  for (const mode of modes) {
    const m = result.measured[mode]
    for (const [i, g] of m.gateways.entries()) {
      assert.equal(g.process.gcRan, true, `${mode}: the gateway ran a full GC before reporting memory`)
      assert.ok(g.process.heapUsedBytes > 0 && g.process.rssBytes >= g.process.heapUsedBytes, mode)
      assert.ok(g.process.cpuUserUs + g.process.cpuSystemUs > m.before[i].process.cpuUserUs + m.before[i].process.cpuSystemUs, `${mode}: CPU time grew over the load`)
      assert.equal(g.pid, seen[mode].gateways[i].pid)
    }
  }
  const cost = modes.map((mode) => gatewayCost(result.measured[mode]))
  assert.deepEqual(
    row(printed, 'gateway CPU time per request').slice(0, 3),
    cost.map((c) => `${Math.round(c.cpuUsPerRequest).toLocaleString('en-US')} µs`),
  )
  assert.equal(row(printed, 'gateway CPU time per request')[3], ratio(cost[2].cpuUsPerRequest, cost[1].cpuUsPerRequest, false))
  assert.deepEqual(row(printed, 'gateway V8 heap at the end').slice(0, 3), cost.map((c) => `${(c.heapUsedBytes / 1e6).toFixed(1)} MB`))
  assert.deepEqual(row(printed, 'gateway RSS at the end').slice(0, 3), cost.map((c) => `${(c.rssBytes / 1e6).toFixed(1)} MB`))
  assert.match(row(printed, 'latency p99 (200s)')[3], /^\d+\.\d\dx (better|worse|same)$/)
  const ms = (v: number) => (v >= 10 ? `${Math.round(v)} ms` : `${v.toFixed(1)} ms`)
  assert.deepEqual(row(printed, 'gateway GC pauses during the load').slice(0, 3), cost.map((c) => `${ms(c.gcPauseTotalMs)} / ${ms(c.gcPauseMaxMs)}`))
  let gcSeen = 0
  for (const mode of modes) {
    for (const g of result.measured[mode].gateways) {
      assert.ok(g.process.gcPauses >= 0 && g.process.gcPauseMaxMs <= g.process.gcPauseTotalMs, `${mode}: GC pause counts`)
      gcSeen += g.process.gcPauses
    }
  }
  assert.ok(gcSeen > 0, 'the gateways reported the GC pauses of their load')
}

test('ratio(): hotpath over peers, better or worse by the row\'s direction', () => {
  assert.equal(ratio(200, 100, true), '2.00x better')
  assert.equal(ratio(200, 100, false), '2.00x worse')
  assert.equal(ratio(50, 100, false), '0.50x better')
  assert.equal(ratio(101, 100, true), '1.01x same')
  assert.equal(ratio(0, 100, true), '')
})

test('demo, embedded (no Redis), string values: peers and hotpath both answer right with exact limits; the table shows /stats', { timeout: 150_000 }, async () => {
  const run = await demo({})
  commonClaims(run)
  // One process: every repeated input was answered from the cache or joined the flight that fetched it.
  assert.equal(duplicates(run.seen.peers.upstream), 0)
  assert.equal(duplicates(run.seen.hotpath.upstream), 0)
  assert.equal(run.seen.hotpath.gateways[0].redis, false)
  assert.equal(run.seen.peers.gateways[0].redis, false)
  assert.match(run.printed, /cached values: strings/)
})

test('demo, embedded, JSON values: cached objects are served right by both', { timeout: 150_000 }, async () => {
  const run = await demo({ values: 'json' })
  commonClaims(run)
  assert.equal(duplicates(run.seen.peers.upstream), 0)
  assert.equal(duplicates(run.seen.hotpath.upstream), 0)
  for (const mode of ['baseline', 'peers', 'hotpath'] as const) assert.equal(run.seen[mode].gateways[0].values, 'json')
  assert.match(run.printed, /cached values: JSON objects/)
})

test('demo with Redis, two instances, JSON values: one cache and one per-client limit, for peers and hotpath', { timeout: 150_000 }, async (t) => {
  const url = redisUrl(t)
  if (!url) return
  const run = await demo({ instances: 2, redisUrl: url, values: 'json' })
  commonClaims(run)
  const plan = run.result.plan
  for (const mode of ['peers', 'hotpath'] as const) {
    const [a, b] = run.seen[mode].gateways
    assert.ok(a.redis && b.redis, mode)
    // Requests alternate between the instances.
    assert.ok(a.gateway.requests > 0 && b.gateway.requests > 0, mode)
    // An answer cached by one instance is a hit (from Redis) on the other.
    assert.ok(a.cache!.l2Hits! + b.cache!.l2Hits! > 0, `${mode} L2 hits: ${a.cache!.l2Hits} / ${b.cache!.l2Hits}`)
    // One limit across both: both admitted some of the abusive client's requests, together exactly the limit
    // (two separate limits would have let it through twice).
    assert.ok(a.gateway.limitedByClient[plan.abusiveKey] > 0 && b.gateway.limitedByClient[plan.abusiveKey] > 0, mode)
    assert.equal(run.result.measured[mode].load.abusiveAllowed, plan.clientLimit, mode)
  }
  const [a, b] = run.seen.hotpath.gateways
  assert.ok(a.cache!.l2Hits! > 0, `hotpath instance A L2 hits: ${a.cache!.l2Hits}`)
  assert.ok(b.cache!.l2Hits! > 0, `hotpath instance B L2 hits: ${b.cache!.l2Hits}`)
  const l2 = (s: Seen) => s.gateways.map((g) => g.cache!.l2Hits).join(' / ')
  assert.deepEqual(row(run.printed, 'cache L2 (Redis) hits per instance').slice(0, 3), ['-', l2(run.seen.peers), l2(run.seen.hotpath)])
  assert.deepEqual(row(run.printed, 'abusive client allowed').slice(1, 3), [`${plan.clientLimit} (one limit)`, `${plan.clientLimit} (one limit)`])
  // The run's Redis keys are gone (the peers' and hotpath's).
  const redis = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 1 })
  try {
    await redis.connect()
    const pattern = `${run.result.keyPrefix}*`
    let left = 0
    let cursor = '0'
    do {
      const [next, keys] = await redis.scan(cursor, 'MATCH', pattern, 'COUNT', 1000)
      left += keys.length
      cursor = next
    } while (cursor !== '0')
    assert.equal(left, 0, `keys left under ${run.result.keyPrefix}`)
  } finally {
    redis.disconnect()
  }
})
