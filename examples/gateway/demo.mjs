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
//   npm run demo -- --rounds 3                     # peers and hotpath 3 times each (alternating), medians
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

/** What one run's gateways used: CPU per request and GC pauses over the load (all gateways), memory at the end (per gateway, mean). */
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
    gcPauseTotalMs: run.gateways.reduce((n, g) => n + g.process.gcPauseTotalMs, 0),
    gcPauseMaxMs: Math.max(...run.gateways.map((g) => g.process.gcPauseMaxMs)),
  }
}

/** The median of `f` over `runs` (the mean of the middle two for an even count). */
export function median(runs, f) {
  const v = runs.map(f).sort((x, y) => x - y)
  const mid = v.length >> 1
  return v.length % 2 ? v[mid] : (v[mid - 1] + v[mid]) / 2
}

/**
 * The table rows, from what was measured: `rounds[mode]` is every run of that
 * mode (one for the baseline; `--rounds N` runs of peers and of hotpath).
 * Each row is [label, baseline, peers, hotpath, hotpath/peers]; each number
 * is the median over the mode's runs, except errors and wrong answers, which
 * are totals over every run. Exported for the test, which compares them with
 * /stats.
 */
export function tableRows(rounds, plan, instances) {
  const runs = MODES.map((mode) => rounds[mode])
  const [b, p, h] = runs
  const n = p.length
  const sum = (gws, f) => gws.reduce((k, g) => k + f(g), 0)
  const total = (rs, f) => rs.reduce((k, r) => k + f(r), 0)
  const gw = (s) => s.gateways.map((g) => g.gateway)
  const each = (f) => runs.map((rs) => f(rs))
  const med = (f) => (rs) => median(rs, f)
  const limitedSplit = (rs) => {
    const abusive = median(rs, (s) => sum(gw(s), (g) => g.limitedByClient[plan.abusiveKey] ?? 0))
    const others = median(rs, (s) => sum(gw(s), (g) => Object.values(g.limitedByClient).reduce((k, v) => k + v, 0)) - sum(gw(s), (g) => g.limitedByClient[plan.abusiveKey] ?? 0))
    return `${fmtInt(abusive)} / ${fmtInt(others)}`
  }
  const hitRatio = (s) => sum(gw(s), (g) => g.cacheHits) / Math.max(1, sum(gw(s), (g) => g.cacheLookups))
  const batch = (s) => sum(s.gateways, (g) => g.embedBatch.items) / Math.max(1, sum(s.gateways, (g) => g.embedBatch.batches))
  const dup = (u) => u.completeDuplicates + u.embedDuplicates + u.retrieveDuplicates
  const cost = runs.map((rs) => {
    const c = rs.map(gatewayCost)
    const m = (k) => median(c, (x) => x[k])
    return { cpuUsPerRequest: m('cpuUsPerRequest'), rssBytes: m('rssBytes'), heapUsedBytes: m('heapUsedBytes'), gcPauseTotalMs: m('gcPauseTotalMs'), gcPauseMaxMs: m('gcPauseMaxMs') }
  })
  const load = (f) => each(med((s) => f(s.load)))
  const [, pl, hl] = runs.map((rs) => ({ rps: median(rs, (s) => s.load.requestsPerSec), p50: median(rs, (s) => s.load.p50Ms), p99: median(rs, (s) => s.load.p99Ms), calls: median(rs, (s) => s.upstream.calls) }))
  const per = instances > 1 ? ` (per gateway, mean of ${instances})` : ''
  const allRounds = n > 1 ? ', all runs' : ''
  const rows = [
    [`requests (${plan.clients.length} clients, 1 abusive)`, ...load((l) => l.sent).map(fmtInt), ''],
    ['  answered 200', ...load((l) => l.ok).map(fmtInt), ''],
    [`  errors (upstream refused or failed${allRounds})`, ...each((rs) => fmtInt(total(rs, (s) => s.load.errors))), ''],
    [`  wrong answers${allRounds}`, ...each((rs) => fmtInt(total(rs, (s) => s.load.wrong))), ''],
    ['requests/s', ...load((l) => l.requestsPerSec).map(fmtInt), ratio(hl.rps, pl.rps, true)],
    ['latency p50 (200s)', ...load((l) => l.p50Ms).map(fmtMs), ratio(hl.p50, pl.p50, false)],
    ['latency p99 (200s)', ...load((l) => l.p99Ms).map(fmtMs), ratio(hl.p99, pl.p99, false)],
    ['gateway CPU time per request', ...cost.map((c) => fmtUs(c.cpuUsPerRequest)), ratio(cost[2].cpuUsPerRequest, cost[1].cpuUsPerRequest, false)],
    [
      `gateway GC pauses during the load, total / longest`,
      ...cost.map((c) => `${fmtMs(c.gcPauseTotalMs)} / ${fmtMs(c.gcPauseMaxMs)}`),
      ratio(cost[2].gcPauseTotalMs, cost[1].gcPauseTotalMs, false),
    ],
    [`gateway RSS at the end${per}`, ...cost.map((c) => fmtMB(c.rssBytes)), ratio(cost[2].rssBytes, cost[1].rssBytes, false)],
    [`gateway V8 heap at the end, after GC${per}`, ...cost.map((c) => fmtMB(c.heapUsedBytes)), ratio(cost[2].heapUsedBytes, cost[1].heapUsedBytes, false)],
    ['upstream calls', ...each(med((s) => s.upstream.calls)).map(fmtInt), ratio(hl.calls, pl.calls, false)],
    ['  refused by upstream (429)', ...each(med((s) => s.upstream.rejected429)).map(fmtInt), ''],
    ['  repeated work (same input again)', ...each(med((s) => dup(s.upstream))).map(fmtInt), ''],
    [`  peak concurrent (upstream limit ${b[0].upstream.maxConcurrent})`, ...each(med((s) => s.upstream.peakConcurrent)).map(fmtInt), ''],
    ['429s served by the gateway', ...each(med((s) => sum(gw(s), (g) => g.byStatus[429] ?? 0))).map(fmtInt), ''],
    ['  to the abusive client / to others', ...each(limitedSplit), ''],
    ['cache hit ratio', '-', ...[p, h].map((rs) => fmtPct(median(rs, hitRatio))), ''],
    ['avg embedding batch size', median(b, (s) => s.upstream.embedItems / Math.max(1, s.upstream.embedBatchCalls)).toFixed(1), ...[p, h].map((rs) => median(rs, batch).toFixed(1)), ''],
    ['documents chunked in worker threads', '0', ...[p, h].map((rs) => fmtInt(median(rs, (s) => sum(s.gateways, (g) => g.cpuQueue.completed)))), ''],
    ['body buffers reused from the pool', '0', '0', fmtInt(median(h, (s) => sum(s.gateways, (g) => g.bufferPool.hits))), ''],
  ]
  if (instances > 1) {
    const perInstance = (rs, f) => rs[0].gateways.map((_, i) => fmtInt(median(rs, (s) => f(s.gateways[i])))).join(' / ')
    rows.push(
      [`requests per instance (${h[0].gateways.map((g) => g.instance).join(' / ')})`, ...each((rs) => perInstance(rs, (g) => g.gateway.requests)), ''],
      ['cache L2 (Redis) hits per instance', '-', ...[p, h].map((rs) => perInstance(rs, (g) => g.cache.l2Hits)), ''],
      [
        `abusive client allowed (limit ${plan.clientLimit}/min)`,
        fmtInt(median(b, (s) => s.load.abusiveAllowed)),
        ...[p, h].map((rs) => `${fmtInt(median(rs, (s) => s.load.abusiveAllowed))} (one limit)`),
        '',
      ],
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

/** Progress of one run: one updating line on a terminal, else one line when the run is done. */
function progressPrinter(label, write, tty) {
  let ended = false
  return ({ done, total, elapsedMs }) => {
    if (ended) return
    ended = done === total
    const pct = Math.floor((done / total) * 100)
    const text = `  ${label.padEnd(8)} ${String(done).padStart(String(total).length)}/${total} requests  ${(elapsedMs / 1000).toFixed(1)} s`
    if (tty) {
      const bar = '#'.repeat(Math.floor(pct / 5)).padEnd(20, '.')
      write(`\r${text}  [${bar}]${ended ? '\n' : ''}`)
    } else if (ended) {
      write(`${text}\n`)
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
  const { requests = 2000, instances = 1, redisUrl, values = 'string', rounds: roundCount = 1, write = (s) => process.stdout.write(s), tty = false, onMeasured } = options
  if (!Number.isInteger(roundCount) || roundCount < 1 || roundCount > 9) throw new Error(`--rounds must be an integer from 1 to 9, got ${roundCount}`)
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
      `${redisUrl ? `on Redis (${redisUrl.replace(/\/\/[^@/]*@/, '//***@')})` : 'embedded (in-process, no Redis)'}` +
      (roundCount > 1 ? `; ${roundCount} runs each, alternating which goes first, the table shows medians` : ''),
  )

  try {
    const upstream = await start('upstream.mjs', ['--max-concurrent', String(UPSTREAM_MAX_CONCURRENT)], 'upstream')
    say(`  upstream model API on ${upstream.url} (40-80 ms per completion, at most ${UPSTREAM_MAX_CONCURRENT} concurrent requests, else 429)`)
    const measured = {}
    const rounds = { baseline: [], peers: [], hotpath: [] }
    // The baseline once, then peers and hotpath `rounds` times each,
    // alternating which goes first (a shared machine's load drifts).
    const schedule = [['baseline', 0]]
    for (let r = 0; r < roundCount; r++) for (const mode of r % 2 ? ['hotpath', 'peers'] : ['peers', 'hotpath']) schedule.push([mode, r])
    for (const [mode, round] of schedule) {
      const label = roundCount > 1 && mode !== 'baseline' ? `${mode} #${round + 1}` : mode
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
      say(`  ${label}: gateway${instances > 1 ? 's' : ''} on ${gateways.map((g) => g.url).join(', ')}`)
      try {
        // CPU time is counted from here (start-up and module loading excluded).
        const before = await Promise.all(gateways.map((g) => requestJson(`${g.url}/stats?mark=1`)))
        const load = await runLoad({ targets: gateways.map((g) => g.url), plan, onProgress: progressPrinter(label, write, tty) })
        const upstreamStats = await requestJson(`${upstream.url}/stats`)
        const gatewayStats = await Promise.all(gateways.map((g) => requestJson(`${g.url}/stats?gc=1`)))
        const run = { load, upstream: upstreamStats, gateways: gatewayStats, before }
        rounds[mode].push(run)
        measured[mode] ??= run
        if (load.errorSamples.length && mode !== 'baseline') say(`  (${label} errors, first ${load.errorSamples.length}: ${load.errorSamples.join(' | ')})`)
        if (onMeasured) await onMeasured({ mode, round, gateways: gateways.map((g) => g.url), upstream: upstream.url, measured: run })
      } finally {
        await Promise.all(gateways.map((g) => shutdownGateway(g, Boolean(useRedis))))
      }
    }
    await stopChild(upstream.proc)
    const rows = tableRows(rounds, plan, instances)
    const table = renderTable(rows)
    say('')
    say(table)
    say('')
    say(`done in ${((performance.now() - t0) / 1000).toFixed(1)} s; every number above was measured (client timings, upstream /stats, gateway /stats).`)
    say('hotpath/peers: hotpath\'s number over the peers\' (better or worse for hotpath; "same" within 3%).')
    if (redisUrl) say(`Redis keys of this run (${keyPrefix}*) were removed.`)
    return { table, rows, measured, rounds, plan, keyPrefix }
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
      rounds: { type: 'string', default: '1' },
      help: { type: 'boolean', short: 'h' },
    },
  })
  if (values.help) {
    console.log('usage: npm run demo -- [--requests N] [--instances N] [--values string|json] [--rounds N]   (REDIS_URL=redis://... for --instances > 1)')
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
  const limitS = 120 + 120 * Math.max(1, Number(values.rounds) || 1)
  const watchdog = setTimeout(() => {
    console.error(`demo: still running after ${limitS} s, giving up`)
    stop(1)
  }, limitS * 1000)
  watchdog.unref()
  runDemo({
    requests: Number(values.requests),
    instances: Number(values.instances),
    values: values.values,
    rounds: Number(values.rounds),
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
