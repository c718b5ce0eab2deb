// The demo (examples/gateway, `npm run demo`) at a small size: its claims
// hold, and the numbers it prints are the ones the services report.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { Redis } from 'ioredis'
import { runDemo, type DemoResult, type GatewayStats, type UpstreamStats } from '../examples/gateway/demo.mjs'
import { redisUrl } from './helpers.ts'

const REQUESTS = 300

interface Seen {
  gateways: GatewayStats[]
  upstream: UpstreamStats
}

async function getJson<T>(url: string): Promise<T> {
  const r = await fetch(url)
  assert.equal(r.status, 200, `GET ${url}`)
  return (await r.json()) as T
}

/** Runs the demo, reading every service's /stats itself (not through the demo) while they are up. */
async function demo(options: { instances?: number; redisUrl?: string }) {
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
  return { result, printed: out.join(''), seen: seen as { baseline: Seen; hotpath: Seen } }
}

/** The printed table's row `label` as [baseline, hotpath] text. */
function row(printed: string, label: string): [string, string] {
  const line = printed.split('\n').find((l) => l.trimStart().startsWith(label))
  assert.ok(line, `the printed table has a "${label}" row:\n${printed}`)
  const cells = line.trim().split(/\s{2,}/)
  return [cells[1], cells[2]]
}

const int = (s: string) => Number(s.replace(/,/g, ''))
const sum = (gs: GatewayStats[], f: (g: GatewayStats) => number) => gs.reduce((n, g) => n + f(g), 0)
const duplicates = (u: UpstreamStats) => u.completeDuplicates + u.embedDuplicates + u.retrieveDuplicates

function commonClaims({ result, printed, seen }: { result: DemoResult; printed: string; seen: { baseline: Seen; hotpath: Seen } }) {
  const { plan } = result
  const h = result.measured.hotpath
  const b = result.measured.baseline
  const gws = seen.hotpath.gateways

  // It ran, showed progress and printed the table.
  assert.equal(h.load.sent, plan.requests)
  assert.equal(b.load.sent, plan.requests)
  assert.match(printed, /hotpath\s+\d+\/\d+ requests/)
  assert.ok(printed.includes(result.table))

  // Every 200 answer was the right one, cached or not; nothing failed in hotpath mode.
  assert.equal(h.load.wrong, 0)
  assert.equal(b.load.wrong, 0)
  assert.equal(h.load.errors, 0, `hotpath errors: ${h.load.errorSamples.join(' | ')}`)

  // Fewer upstream calls than requests (and than the baseline's); no input computed twice upstream
  // within one instance (cache + single-flight), no upstream 429s (the WorkerQueue bound).
  assert.ok(seen.hotpath.upstream.calls < plan.requests, `${seen.hotpath.upstream.calls} upstream calls for ${plan.requests} requests`)
  assert.ok(seen.hotpath.upstream.calls < seen.baseline.upstream.calls)
  assert.equal(seen.hotpath.upstream.rejected429, 0)
  assert.ok(seen.hotpath.upstream.peakConcurrent <= seen.hotpath.upstream.maxConcurrent)

  // 429s only for the abusive client, which got exactly its limit through (one limit, however many instances).
  assert.deepEqual(Object.keys(h.load.limitedByClient), [plan.abusiveKey])
  assert.ok(h.load.limitedByClient[plan.abusiveKey] > 0)
  assert.equal(h.load.abusiveAllowed, plan.clientLimit)
  const gatewayLimited: Record<string, number> = {}
  for (const g of gws) for (const [k, n] of Object.entries(g.gateway.limitedByClient)) gatewayLimited[k] = (gatewayLimited[k] ?? 0) + n
  assert.deepEqual(gatewayLimited, h.load.limitedByClient)
  assert.equal(sum(gws, (g) => g.limiter!.denied), h.load.limited)
  assert.equal(b.load.limited, 0)

  // Embedding batches larger than 1 (the baseline's are 1).
  const avgBatch = sum(gws, (g) => g.embedBatch!.items) / sum(gws, (g) => g.embedBatch!.batches)
  assert.ok(avgBatch > 1, `average embedding batch ${avgBatch}`)
  assert.equal(seen.baseline.upstream.avgEmbedBatchSize, 1)
  // Worker threads chunked the ingested documents; the pool reused body buffers.
  assert.ok(sum(gws, (g) => g.cpuQueue!.completed) > 0)
  assert.ok(sum(gws, (g) => g.bufferPool!.hits) > 0)

  // The printed table shows the numbers /stats reports.
  assert.deepEqual(row(printed, 'upstream calls'), [seen.baseline.upstream.calls, seen.hotpath.upstream.calls].map((n) => n.toLocaleString('en-US')))
  assert.deepEqual(row(printed, 'refused by upstream (429)').map(int), [seen.baseline.upstream.rejected429, seen.hotpath.upstream.rejected429])
  assert.deepEqual(row(printed, 'repeated work').map(int), [duplicates(seen.baseline.upstream), duplicates(seen.hotpath.upstream)])
  assert.deepEqual(row(printed, '429s served by the gateway').map(int), [0, sum(gws, (g) => g.gateway.byStatus['429'] ?? 0)])
  assert.equal(int(row(printed, '429s served by the gateway')[1]), h.load.limited)
  const ratio = sum(gws, (g) => g.gateway.cacheHits) / sum(gws, (g) => g.gateway.cacheLookups)
  assert.equal(row(printed, 'cache hit ratio')[1], `${(ratio * 100).toFixed(1)}%`)
  assert.deepEqual(row(printed, 'avg embedding batch size'), ['1.0', avgBatch.toFixed(1)])
  assert.equal(int(row(printed, 'documents chunked in worker threads')[1]), sum(gws, (g) => g.cpuQueue!.completed))
  assert.equal(int(row(printed, 'body buffers reused')[1]), sum(gws, (g) => g.bufferPool!.hits))
  assert.deepEqual(row(printed, 'to the abusive client / to others'), ['0 / 0', `${gatewayLimited[plan.abusiveKey].toLocaleString('en-US')} / 0`])
}

test('demo, embedded (no Redis): the load\'s claims hold and the table shows /stats', { timeout: 120_000 }, async () => {
  const run = await demo({})
  commonClaims(run)
  const h = run.seen.hotpath
  // One process: every repeated input was answered from the cache or joined the flight that fetched it.
  assert.equal(duplicates(h.upstream), 0)
  assert.equal(h.gateways[0].redis, false)
})

test('demo with Redis, two instances: one cache and one per-client limit', { timeout: 120_000 }, async (t) => {
  const url = redisUrl(t)
  if (!url) return
  const run = await demo({ instances: 2, redisUrl: url })
  commonClaims(run)
  const [a, b] = run.seen.hotpath.gateways
  assert.ok(a.redis && b.redis)
  // Requests alternate between the instances.
  assert.ok(a.gateway.requests > 0 && b.gateway.requests > 0)
  // An answer cached by one instance is a hit (from Redis) on the other.
  assert.ok(a.cache!.l2Hits > 0, `instance A L2 hits: ${a.cache!.l2Hits}`)
  assert.ok(b.cache!.l2Hits > 0, `instance B L2 hits: ${b.cache!.l2Hits}`)
  assert.equal(row(run.printed, 'cache L2 (Redis) hits per instance')[1], `${a.cache!.l2Hits} / ${b.cache!.l2Hits}`)
  // One limit across both: both admitted some of the abusive client's requests, together exactly the limit
  // (two separate limits would have let it through twice).
  const plan = run.result.plan
  assert.ok(a.gateway.limitedByClient[plan.abusiveKey] > 0 && b.gateway.limitedByClient[plan.abusiveKey] > 0)
  assert.equal(run.result.measured.hotpath.load.abusiveAllowed, plan.clientLimit)
  assert.ok(row(run.printed, 'abusive client allowed')[1].startsWith(String(plan.clientLimit)))
  // The run's Redis keys are gone.
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
