#!/usr/bin/env node
// `npm run demo`: what hotpath does for a service, in one command.
//
// Starts a simulated model API (upstream.mjs: 40-80 ms completions, a batch
// embedding endpoint, at most 16 concurrent requests or 429), then runs the
// same bounded load twice through an agent gateway (gateway.mjs): once naive
// (--mode baseline) and once with hotpath's five primitives (--mode hotpath),
// and prints what it measured side by side. Every number in the table comes
// from the load generator's own timings, the upstream's /stats or the
// gateways' /stats. Stops everything it started and exits 0.
//
//   npm run demo                                   # embedded (in-process) cache and limits
//   npm run demo -- --requests 5000                # a bigger load
//   REDIS_URL=redis://127.0.0.1:6379 npm run demo -- --instances 2   # two gateways sharing Redis
import { parseArgs } from 'node:util'
import { fileURLToPath } from 'node:url'
import { isMain, requestJson, startChild, stopChild } from './common.mjs'
import { planLoad, runLoad } from './load.mjs'

const here = (f) => fileURLToPath(new URL(f, import.meta.url))
const UPSTREAM_MAX_CONCURRENT = 32
const HOTPATH_UPSTREAM_CONCURRENCY = 16 // shared by the instances: stays under the upstream's limit

/** Every child process started by any runDemo call, to stop on exit/error/signal. */
const children = new Set()

async function stopAll() {
  await Promise.all([...children].map((p) => stopChild(p, 3000)))
  children.clear()
}

async function start(file, args, name) {
  const c = await startChild(here(file), args, { name })
  children.add(c.proc)
  c.proc.once('exit', () => children.delete(c.proc))
  return c
}

/** Asks a gateway to shut down (draining its components; `clear` removes the run's Redis keys) and waits for it to exit. */
async function shutdownGateway(g, clear) {
  const exited = new Promise((r) => (g.proc.exitCode !== null ? r() : g.proc.once('exit', r)))
  try {
    await requestJson(`${g.url}/admin/shutdown`, { method: 'POST', body: { clear }, timeoutMs: 10_000 })
  } catch {
    // It may have closed the connection as it exited; fall through to the wait.
  }
  const killer = setTimeout(() => g.proc.kill('SIGKILL'), 15_000)
  await exited
  clearTimeout(killer)
  if (g.proc.exitCode !== 0) throw new Error(`gateway ${g.name} exited with code ${g.proc.exitCode} (signal ${g.proc.signalCode}) on shutdown`)
}

const fmtInt = (n) => Math.round(n).toLocaleString('en-US')
const fmtMs = (ms) => (ms >= 10 ? `${Math.round(ms)} ms` : `${ms.toFixed(1)} ms`)
const fmtPct = (r) => `${(r * 100).toFixed(1)}%`
const fmtX = (a, b) => (a > 0 && b > 0 ? `${(b / a).toFixed(1)}x` : '')

/**
 * The table rows, from what was measured. Each row is
 * [label, baseline, hotpath, change]. Exported for the test, which compares
 * them with /stats.
 */
export function tableRows(m, plan, instances) {
  const b = m.baseline
  const h = m.hotpath
  const sum = (gws, f) => gws.reduce((n, g) => n + f(g), 0)
  const limitedSplit = (gws) => {
    const abusive = sum(gws, (g) => g.limitedByClient[plan.abusiveKey] ?? 0)
    const all = sum(gws, (g) => Object.values(g.limitedByClient).reduce((n, v) => n + v, 0))
    return `${fmtInt(abusive)} / ${fmtInt(all - abusive)}`
  }
  const gw = (s) => s.gateways.map((g) => g.gateway)
  const hCache = sum(gw(h), (g) => g.cacheHits) / Math.max(1, sum(gw(h), (g) => g.cacheLookups))
  const hBatch = sum(h.gateways, (g) => g.embedBatch.items) / Math.max(1, sum(h.gateways, (g) => g.embedBatch.batches))
  const bBatch = b.upstream.embedItems / Math.max(1, b.upstream.embedBatchCalls)
  const dup = (u) => u.completeDuplicates + u.embedDuplicates + u.retrieveDuplicates
  const rows = [
    [`requests (${plan.clients.length} clients, 1 abusive)`, fmtInt(b.load.sent), fmtInt(h.load.sent), ''],
    ['  answered 200', fmtInt(b.load.ok), fmtInt(h.load.ok), ''],
    ['  errors (upstream refused or failed)', fmtInt(b.load.errors), fmtInt(h.load.errors), ''],
    ['  wrong answers', fmtInt(b.load.wrong), fmtInt(h.load.wrong), ''],
    ['requests/s', fmtInt(b.load.requestsPerSec), fmtInt(h.load.requestsPerSec), fmtX(b.load.requestsPerSec, h.load.requestsPerSec)],
    ['latency p50 (200s)', fmtMs(b.load.p50Ms), fmtMs(h.load.p50Ms), ''],
    ['latency p99 (200s)', fmtMs(b.load.p99Ms), fmtMs(h.load.p99Ms), ''],
    ['upstream calls', fmtInt(b.upstream.calls), fmtInt(h.upstream.calls), fmtX(h.upstream.calls, b.upstream.calls).replace(/x$/, 'x fewer')],
    ['  refused by upstream (429)', fmtInt(b.upstream.rejected429), fmtInt(h.upstream.rejected429), ''],
    ['  repeated work (same input again)', fmtInt(dup(b.upstream)), fmtInt(dup(h.upstream)), ''],
    [`  peak concurrent (upstream limit ${b.upstream.maxConcurrent})`, fmtInt(b.upstream.peakConcurrent), fmtInt(h.upstream.peakConcurrent), ''],
    ['429s served by the gateway', fmtInt(sum(gw(b), (g) => g.byStatus[429] ?? 0)), fmtInt(sum(gw(h), (g) => g.byStatus[429] ?? 0)), ''],
    ['  to the abusive client / to others', limitedSplit(gw(b)), limitedSplit(gw(h)), ''],
    ['cache hit ratio', '-', fmtPct(hCache), ''],
    ['avg embedding batch size', bBatch.toFixed(1), hBatch.toFixed(1), ''],
    ['documents chunked in worker threads', '0', fmtInt(sum(h.gateways, (g) => g.cpuQueue.completed)), ''],
    ['body buffers reused from the pool', '0', fmtInt(sum(h.gateways, (g) => g.bufferPool.hits)), ''],
  ]
  if (instances > 1) {
    const per = (s, f) => s.gateways.map(f).map(fmtInt).join(' / ')
    rows.push(
      [`requests per instance (${h.gateways.map((g) => g.instance).join(' / ')})`, per(b, (g) => g.gateway.requests), per(h, (g) => g.gateway.requests), ''],
      ['cache L2 (Redis) hits per instance', '-', per(h, (g) => g.cache.l2Hits), ''],
      [`abusive client allowed (limit ${plan.clientLimit}/min)`, fmtInt(b.load.abusiveAllowed), `${fmtInt(h.load.abusiveAllowed)} (one limit)`, ''],
    )
  }
  return rows
}

export function renderTable(rows) {
  const head = ['', 'baseline', 'hotpath', '']
  const all = [head, ...rows]
  const w = [0, 1, 2, 3].map((i) => Math.max(...all.map((r) => r[i].length)))
  const line = (r) => `${r[0].padEnd(w[0])}  ${r[1].padStart(w[1])}  ${r[2].padStart(w[2])}  ${r[3]}`.trimEnd()
  return [line(head), `${'-'.repeat(w[0])}  ${'-'.repeat(w[1])}  ${'-'.repeat(w[2])}`, ...rows.map(line)].join('\n')
}

function progressPrinter(label, write, tty) {
  let lastStep = -1
  let ended = false
  return ({ done, total, elapsedMs }) => {
    if (ended) return
    ended = done === total
    const pct = Math.floor((done / total) * 100)
    const text = `  ${label.padEnd(8)} ${String(done).padStart(String(total).length)}/${total} requests  ${(elapsedMs / 1000).toFixed(1)} s`
    if (tty) {
      const bar = '#'.repeat(Math.floor(pct / 5)).padEnd(20, '.')
      write(`\r${text}  [${bar}]${ended ? '\n' : ''}`)
    } else {
      const step = Math.floor(pct / 25)
      if (step !== lastStep) {
        lastStep = step
        write(`${text}\n`)
      }
    }
  }
}

/**
 * Runs the whole demo. Returns what it measured and the printed table.
 * @param {object} options
 * @param {number} [options.requests] total requests per run (default 2000)
 * @param {number} [options.instances] gateway processes (more than 1 needs redisUrl)
 * @param {string} [options.redisUrl] share cache and limits through this Redis
 * @param {(text: string) => void} [options.write] where output goes (default process.stdout)
 * @param {boolean} [options.tty] progress on one updating line
 * @param {(ctx: { mode: string, gateways: string[], upstream: string, measured: object }) => Promise<void>} [options.onMeasured]
 *   called after each run's load, while its processes are still up (the test reads /stats here)
 */
export async function runDemo(options = {}) {
  const { requests = 2000, instances = 1, redisUrl, write = (s) => process.stdout.write(s), tty = false, onMeasured } = options
  if (!Number.isInteger(requests) || requests < 100) throw new Error(`--requests must be an integer >= 100, got ${requests}`)
  if (!Number.isInteger(instances) || instances < 1 || instances > 8) throw new Error(`--instances must be an integer from 1 to 8, got ${instances}`)
  if (instances > 1 && !redisUrl) {
    throw new Error('--instances > 1 needs REDIS_URL: the instances share one cache and one per-client limit through Redis')
  }
  const t0 = performance.now()
  const plan = planLoad({ requests })
  const runId = `${Date.now().toString(36)}-${process.pid}`
  const keyPrefix = `hotpath-demo:${runId}:`
  const say = (s) => write(`${s}\n`)
  say(`hotpath demo: an agent gateway in front of a simulated model API`)
  say(
    `  load: ${plan.requests} requests from ${plan.clients.length - 1} agent clients and 1 abusive client ` +
      `(per-client limit ${plan.clientLimit} per ${plan.windowMs / 1000} s), bursts of identical prompts, document ingestion`,
  )
  say(`  hotpath: ${instances} gateway process${instances > 1 ? 'es' : ''}, cache and limits ${redisUrl ? `on Redis (${redisUrl.replace(/\/\/[^@/]*@/, '//***@')})` : 'embedded (in-process, no Redis)'}`)

  try {
    const upstream = await start('upstream.mjs', ['--max-concurrent', String(UPSTREAM_MAX_CONCURRENT)], 'upstream')
    say(`  upstream model API on ${upstream.url} (40-80 ms per completion, at most ${UPSTREAM_MAX_CONCURRENT} concurrent requests, else 429)`)
    const measured = {}
    for (const mode of ['baseline', 'hotpath']) {
      await requestJson(`${upstream.url}/stats/reset`, { method: 'POST', body: {} })
      const useRedis = mode === 'hotpath' && redisUrl
      const gateways = await Promise.all(
        Array.from({ length: instances }, async (_, i) => {
          const name = String.fromCharCode(65 + i)
          const args = ['--mode', mode, '--upstream', upstream.url, '--instance', name]
          args.push('--client-limit', String(plan.clientLimit), '--client-window-ms', String(plan.windowMs))
          args.push('--upstream-concurrency', String(Math.max(1, Math.floor(HOTPATH_UPSTREAM_CONCURRENCY / instances))))
          if (useRedis) args.push('--redis-url', redisUrl, '--key-prefix', keyPrefix)
          const g = await start('gateway.mjs', args, `${mode} gateway ${name}`)
          return { ...g, name }
        }),
      )
      say(`  ${mode}: gateway${instances > 1 ? 's' : ''} on ${gateways.map((g) => g.url).join(', ')}`)
      try {
        const load = await runLoad({ targets: gateways.map((g) => g.url), plan, onProgress: progressPrinter(mode, write, tty) })
        const upstreamStats = await requestJson(`${upstream.url}/stats`)
        const gatewayStats = await Promise.all(gateways.map((g) => requestJson(`${g.url}/stats`)))
        measured[mode] = { load, upstream: upstreamStats, gateways: gatewayStats }
        if (load.errorSamples.length && mode === 'hotpath') say(`  (hotpath errors, first ${load.errorSamples.length}: ${load.errorSamples.join(' | ')})`)
        if (onMeasured) await onMeasured({ mode, gateways: gateways.map((g) => g.url), upstream: upstream.url, measured: measured[mode] })
      } finally {
        await Promise.all(gateways.map((g) => shutdownGateway(g, Boolean(useRedis))))
      }
    }
    await stopChild(upstream.proc)
    const rows = tableRows(measured, plan, instances)
    const table = renderTable(rows)
    say('')
    say(table)
    say('')
    say(`done in ${((performance.now() - t0) / 1000).toFixed(1)} s; every number above was measured (client timings, upstream /stats, gateway /stats).`)
    if (redisUrl) say(`Redis keys of this run (${keyPrefix}*) were removed.`)
    return { table, rows, measured, plan, keyPrefix }
  } finally {
    await stopAll()
  }
}

if (isMain(import.meta.url)) {
  const { values } = parseArgs({
    options: {
      requests: { type: 'string', default: '2000' },
      instances: { type: 'string', default: '1' },
      help: { type: 'boolean', short: 'h' },
    },
  })
  if (values.help) {
    console.log('usage: npm run demo -- [--requests N] [--instances N]   (REDIS_URL=redis://... for --instances > 1)')
    process.exit(0)
  }
  const stop = async (code) => {
    await stopAll().catch(() => {})
    process.exit(code)
  }
  process.on('SIGINT', () => {
    process.stdout.write('\ninterrupted: stopping the upstream and gateways\n')
    stop(130)
  })
  process.on('SIGTERM', () => stop(143))
  const watchdog = setTimeout(() => {
    console.error('demo: still running after 180 s, giving up')
    stop(1)
  }, 180_000)
  watchdog.unref()
  runDemo({ requests: Number(values.requests), instances: Number(values.instances), redisUrl: process.env.REDIS_URL || undefined, tty: Boolean(process.stdout.isTTY) }).then(
    () => stop(0),
    (err) => {
      console.error(`demo failed: ${err?.stack ?? err}`)
      stop(1)
    },
  )
}
