#!/usr/bin/env node
// `npm run demo`: what hotpath does for a service, in one command.
//
// Starts a simulated model API (upstream.mjs: 40-80 ms completions, a batch
// embedding endpoint, at most 32 concurrent requests or 429), then runs the
// same bounded load three times through an agent gateway (gateway.mjs):
// naive (--mode baseline), built on the npm peers a careful Node engineer
// would use (--mode peers: lru-cache or bentocache, rate-limiter-flexible,
// dataloader, p-queue, piscina), and built on hotpath's five primitives
// (--mode hotpath), and prints what it measured side by side, with hotpath's
// ratio to the peers. Every number in the table comes from the load
// generator's own timings, the upstream's /stats or the gateways' /stats.
// Stops everything it started and exits 0.
//
//   npm run demo                                   # embedded (in-process) cache and limits, string values
//   npm run demo -- --values json                  # cached answers are JSON objects
//   npm run demo -- --requests 5000                # a bigger load
//   REDIS_URL=redis://127.0.0.1:6379 npm run demo -- --instances 2   # two gateways sharing Redis
import os from 'node:os'
import { parseArgs } from 'node:util'
import { fileURLToPath } from 'node:url'
import { MODES, VALUES, isMain, requestJson, startChild, stopChild } from './common.mjs'
import { planLoad, runLoad } from './load.mjs'

const here = (f) => fileURLToPath(new URL(f, import.meta.url))
const UPSTREAM_MAX_CONCURRENT = 32
const UPSTREAM_CONCURRENCY = 16 // the gateways' cap, shared by the instances: stays under the upstream's limit

/** Every child process started by any runDemo call, to stop on exit/error/signal. */
const children = new Set()

async function stopAll() {
  await Promise.all([...children].map((p) => stopChild(p, 3000)))
  children.clear()
}

async function start(file, args, name, execArgv = []) {
  const c = await startChild(here(file), args, { name, execArgv })
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
const fmtUs = (us) => `${Math.round(us).toLocaleString('en-US')} µs`
const fmtMB = (bytes) => `${(bytes / 1e6).toFixed(1)} MB`

/**
 * hotpath's value over the peers' as "1.23x", and whether that is better or
 * worse for hotpath: `higherIsBetter` says which way the row points. Within
 * 3% either way it says "same" (these runs are noisy).
 */
export function ratio(hotpath, peers, higherIsBetter) {
  if (!(hotpath > 0) || !(peers > 0)) return ''
  const r = hotpath / peers
  const verdict = Math.abs(r - 1) <= 0.03 ? 'same' : r > 1 === higherIsBetter ? 'better' : 'worse'
  return `${r.toFixed(2)}x ${verdict}`
}

/** What one run's gateways used: CPU per request over the load, and memory at the end (per gateway, mean). */
export function gatewayCost(run) {
  const cpuUs = run.gateways.reduce((n, g, i) => {
    const before = run.before[i].process
    return n + (g.process.cpuUserUs - before.cpuUserUs) + (g.process.cpuSystemUs - before.cpuSystemUs)
  }, 0)
  const mean = (f) => run.gateways.reduce((n, g) => n + f(g), 0) / run.gateways.length
  return {
    cpuUsPerRequest: cpuUs / Math.max(1, run.load.sent),
    rssBytes: mean((g) => g.process.rssBytes),
    heapUsedBytes: mean((g) => g.process.heapUsedBytes),
  }
}

/**
 * The table rows, from what was measured. Each row is
 * [label, baseline, peers, hotpath, hotpath/peers]. Exported for the test,
 * which compares them with /stats.
 */
export function tableRows(m, plan, instances) {
  const runs = MODES.map((mode) => m[mode])
  const [b, p, h] = runs
  const sum = (gws, f) => gws.reduce((n, g) => n + f(g), 0)
  const gw = (s) => s.gateways.map((g) => g.gateway)
  const limitedSplit = (s) => {
    const abusive = sum(gw(s), (g) => g.limitedByClient[plan.abusiveKey] ?? 0)
    const all = sum(gw(s), (g) => Object.values(g.limitedByClient).reduce((n, v) => n + v, 0))
    return `${fmtInt(abusive)} / ${fmtInt(all - abusive)}`
  }
  const hitRatio = (s) => sum(gw(s), (g) => g.cacheHits) / Math.max(1, sum(gw(s), (g) => g.cacheLookups))
  const batch = (s) => sum(s.gateways, (g) => g.embedBatch.items) / Math.max(1, sum(s.gateways, (g) => g.embedBatch.batches))
  const dup = (u) => u.completeDuplicates + u.embedDuplicates + u.retrieveDuplicates
  const cost = runs.map(gatewayCost)
  const each = (f) => runs.map(f)
  const per = instances > 1 ? ` (per gateway, mean of ${instances})` : ''
  const rows = [
    [`requests (${plan.clients.length} clients, 1 abusive)`, ...each((s) => fmtInt(s.load.sent)), ''],
    ['  answered 200', ...each((s) => fmtInt(s.load.ok)), ''],
    ['  errors (upstream refused or failed)', ...each((s) => fmtInt(s.load.errors)), ''],
    ['  wrong answers', ...each((s) => fmtInt(s.load.wrong)), ''],
    ['requests/s', ...each((s) => fmtInt(s.load.requestsPerSec)), ratio(h.load.requestsPerSec, p.load.requestsPerSec, true)],
    ['latency p50 (200s)', ...each((s) => fmtMs(s.load.p50Ms)), ratio(h.load.p50Ms, p.load.p50Ms, false)],
    ['latency p99 (200s)', ...each((s) => fmtMs(s.load.p99Ms)), ratio(h.load.p99Ms, p.load.p99Ms, false)],
    ['gateway CPU time per request', ...cost.map((c) => fmtUs(c.cpuUsPerRequest)), ratio(cost[2].cpuUsPerRequest, cost[1].cpuUsPerRequest, false)],
    [`gateway RSS at the end${per}`, ...cost.map((c) => fmtMB(c.rssBytes)), ratio(cost[2].rssBytes, cost[1].rssBytes, false)],
    [`gateway V8 heap at the end, after GC${per}`, ...cost.map((c) => fmtMB(c.heapUsedBytes)), ratio(cost[2].heapUsedBytes, cost[1].heapUsedBytes, false)],
    ['upstream calls', ...each((s) => fmtInt(s.upstream.calls)), ratio(h.upstream.calls, p.upstream.calls, false)],
    ['  refused by upstream (429)', ...each((s) => fmtInt(s.upstream.rejected429)), ''],
    ['  repeated work (same input again)', ...each((s) => fmtInt(dup(s.upstream))), ''],
    [`  peak concurrent (upstream limit ${b.upstream.maxConcurrent})`, ...each((s) => fmtInt(s.upstream.peakConcurrent)), ''],
    ['429s served by the gateway', ...each((s) => fmtInt(sum(gw(s), (g) => g.byStatus[429] ?? 0))), ''],
    ['  to the abusive client / to others', ...each(limitedSplit), ''],
    ['cache hit ratio', '-', fmtPct(hitRatio(p)), fmtPct(hitRatio(h)), ''],
    ['avg embedding batch size', (b.upstream.embedItems / Math.max(1, b.upstream.embedBatchCalls)).toFixed(1), batch(p).toFixed(1), batch(h).toFixed(1), ''],
    ['documents chunked in worker threads', '0', ...[p, h].map((s) => fmtInt(sum(s.gateways, (g) => g.cpuQueue.completed))), ''],
    ['body buffers reused from the pool', '0', '0', fmtInt(sum(h.gateways, (g) => g.bufferPool.hits)), ''],
  ]
  if (instances > 1) {
    const perInstance = (s, f) => s.gateways.map(f).map(fmtInt).join(' / ')
    rows.push(
      [`requests per instance (${h.gateways.map((g) => g.instance).join(' / ')})`, ...each((s) => perInstance(s, (g) => g.gateway.requests)), ''],
      ['cache L2 (Redis) hits per instance', '-', ...[p, h].map((s) => perInstance(s, (g) => g.cache.l2Hits)), ''],
      [`abusive client allowed (limit ${plan.clientLimit}/min)`, fmtInt(b.load.abusiveAllowed), ...[p, h].map((s) => `${fmtInt(s.load.abusiveAllowed)} (one limit)`), ''],
    )
  }
  return rows
}

export function renderTable(rows) {
  const head = ['', ...MODES, 'hotpath/peers']
  const all = [head, ...rows]
  const w = head.map((_, i) => Math.max(...all.map((r) => r[i].length)))
  const line = (r) => [r[0].padEnd(w[0]), ...r.slice(1, 4).map((c, i) => c.padStart(w[i + 1])), r[4]].join('  ').trimEnd()
  return [line(head), w.map((n) => '-'.repeat(n)).join('  '), ...rows.map(line)].join('\n')
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

/** One line about the machine, for reading the numbers (a loaded or small machine changes them). */
function machineLine() {
  const cpus = os.cpus()
  const model = cpus[0]?.model?.replace(/\s+/g, ' ').trim() ?? 'unknown CPU'
  const load = os.loadavg()[0].toFixed(1)
  return `  machine: ${cpus.length} cores (${model}), ${Math.round(os.totalmem() / 2 ** 30)} GiB, ${os.platform()} ${os.arch()}, Node ${process.version}; load average ${load} at start`
}

/**
 * Runs the whole demo. Returns what it measured and the printed table.
 * @param {object} options
 * @param {number} [options.requests] total requests per run (default 2000)
 * @param {number} [options.instances] gateway processes (more than 1 needs redisUrl)
 * @param {string} [options.redisUrl] share the peers' and hotpath's cache and limits through this Redis
 * @param {'string' | 'json'} [options.values] what the gateways cache: the upstream's text or parsed JSON objects
 * @param {(text: string) => void} [options.write] where output goes (default process.stdout)
 * @param {boolean} [options.tty] progress on one updating line
 * @param {(ctx: { mode: string, gateways: string[], upstream: string, measured: object }) => Promise<void>} [options.onMeasured]
 *   called after each run's load, while its processes are still up (the test reads /stats here)
 */
export async function runDemo(options = {}) {
  const { requests = 2000, instances = 1, redisUrl, values = 'string', write = (s) => process.stdout.write(s), tty = false, onMeasured } = options
  if (!Number.isInteger(requests) || requests < 100) throw new Error(`--requests must be an integer >= 100, got ${requests}`)
  if (!Number.isInteger(instances) || instances < 1 || instances > 8) throw new Error(`--instances must be an integer from 1 to 8, got ${instances}`)
  if (!VALUES.includes(values)) throw new Error(`--values must be one of ${VALUES.join(', ')}, got ${values}`)
  if (instances > 1 && !redisUrl) {
    throw new Error('--instances > 1 needs REDIS_URL: the instances share one cache and one per-client limit through Redis')
  }
  const t0 = performance.now()
  const plan = planLoad({ requests })
  const runId = `${Date.now().toString(36)}-${process.pid}`
  const keyPrefix = `hotpath-demo:${runId}:`
  const say = (s) => write(`${s}\n`)
  say(`hotpath demo: an agent gateway in front of a simulated model API`)
  say(machineLine())
  say(
    `  load: ${plan.requests} requests from ${plan.clients.length - 1} agent clients and 1 abusive client ` +
      `(per-client limit ${plan.clientLimit} per ${plan.windowMs / 1000} s), bursts of identical prompts, document ingestion`,
  )
  say(`  cached values: ${values === 'json' ? 'JSON objects (parsed upstream answers, serialized per response)' : "strings (the upstream's answer text)"}`)
  say(
    `  peers and hotpath: ${instances} gateway process${instances > 1 ? 'es' : ''} each, cache and limits ` +
      `${redisUrl ? `on Redis (${redisUrl.replace(/\/\/[^@/]*@/, '//***@')})` : 'embedded (in-process, no Redis)'}`,
  )

  try {
    const upstream = await start('upstream.mjs', ['--max-concurrent', String(UPSTREAM_MAX_CONCURRENT)], 'upstream')
    say(`  upstream model API on ${upstream.url} (40-80 ms per completion, at most ${UPSTREAM_MAX_CONCURRENT} concurrent requests, else 429)`)
    const measured = {}
    for (const mode of MODES) {
      await requestJson(`${upstream.url}/stats/reset`, { method: 'POST', body: {} })
      const useRedis = mode !== 'baseline' && redisUrl
      const gateways = await Promise.all(
        Array.from({ length: instances }, async (_, i) => {
          const name = String.fromCharCode(65 + i)
          const args = ['--mode', mode, '--values', values, '--upstream', upstream.url, '--instance', name]
          args.push('--client-limit', String(plan.clientLimit), '--client-window-ms', String(plan.windowMs))
          args.push('--upstream-concurrency', String(Math.max(1, Math.floor(UPSTREAM_CONCURRENCY / instances))))
          if (useRedis) args.push('--redis-url', redisUrl, '--key-prefix', keyPrefix)
          const g = await start('gateway.mjs', args, `${mode} gateway ${name}`, ['--expose-gc'])
          return { ...g, name }
        }),
      )
      say(`  ${mode}: gateway${instances > 1 ? 's' : ''} on ${gateways.map((g) => g.url).join(', ')}`)
      try {
        // CPU time is counted from here (start-up and module loading excluded).
        const before = await Promise.all(gateways.map((g) => requestJson(`${g.url}/stats`)))
        const load = await runLoad({ targets: gateways.map((g) => g.url), plan, onProgress: progressPrinter(mode, write, tty) })
        const upstreamStats = await requestJson(`${upstream.url}/stats`)
        const gatewayStats = await Promise.all(gateways.map((g) => requestJson(`${g.url}/stats?gc=1`)))
        measured[mode] = { load, upstream: upstreamStats, gateways: gatewayStats, before }
        if (load.errorSamples.length && mode !== 'baseline') say(`  (${mode} errors, first ${load.errorSamples.length}: ${load.errorSamples.join(' | ')})`)
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
    say('hotpath/peers: hotpath\'s number over the peers\' (better or worse for hotpath; "same" within 3%).')
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
      values: { type: 'string', default: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  })
  if (values.help) {
    console.log('usage: npm run demo -- [--requests N] [--instances N] [--values string|json]   (REDIS_URL=redis://... for --instances > 1)')
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
    console.error('demo: still running after 240 s, giving up')
    stop(1)
  }, 240_000)
  watchdog.unref()
  runDemo({
    requests: Number(values.requests),
    instances: Number(values.instances),
    values: values.values,
    redisUrl: process.env.REDIS_URL || undefined,
    tty: Boolean(process.stdout.isTTY),
  }).then(
    () => stop(0),
    (err) => {
      console.error(`demo failed: ${err?.stack ?? err}`)
      stop(1)
    },
  )
}
