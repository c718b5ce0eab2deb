// The benchmark harness: scenarios run side by side in one process, hotpath
// beside its npm peers on the same data, printed as a table of ops/s with the
// ratio hotpath/peer, and collected into benchmark/results.json.
//
// A scenario:   await compare('title', { hotpath: fn, 'lru-cache': fn }, { iterations })
// where each fn runs ONE operation (sync or async) or, with `batch: n`, n
// operations per call (ops/s is then n x calls/s).
import { Bench } from 'tinybench'
import { writeFileSync, readFileSync, existsSync } from 'node:fs'
import os from 'node:os'
import { spawnSync } from 'node:child_process'
import { OwnRedis, freePort } from '../__test__/helpers.ts'

export interface Row {
  name: string
  opsPerSec: number
  meanNs: number
  p99Ns: number
  samples: number
  ratio: number | null // hotpath ops/s divided by this row's ops/s
}
export interface Table {
  title: string
  note?: string
  rows: Row[]
}

const tables: Table[] = []

export interface CompareOptions {
  /** Time per task in ms (default 500, or BENCH_TIME). */
  time?: number
  /** Operations performed by one call of each fn (default 1). */
  batch?: number
  /** Free-form note printed under the table (what is measured). */
  note?: string
  /** Run before each task's measurement. */
  setup?: (name: string) => void | Promise<void>
}

const defaultTime = Number(process.env.BENCH_TIME ?? 500)

export async function compare(
  title: string,
  fns: Record<string, () => unknown>,
  opts: CompareOptions = {},
): Promise<Table> {
  const batch = opts.batch ?? 1
  const bench = new Bench({ time: opts.time ?? defaultTime, warmupTime: 100, throws: true })
  for (const [name, fn] of Object.entries(fns)) {
    bench.add(name, fn as () => void, opts.setup ? { beforeAll: () => opts.setup!(name) } : {})
  }
  await bench.run()
  const rows: Row[] = bench.tasks.map((t) => {
    const r = t.result as any
    const lat = r?.latency ?? r
    const mean = (lat?.mean ?? NaN) * 1e6 // ms -> ns
    const p99 = (lat?.p99 ?? NaN) * 1e6
    return {
      name: t.name,
      opsPerSec: (1e9 / mean) * batch,
      meanNs: mean / batch,
      p99Ns: p99 / batch,
      samples: lat?.samplesCount ?? lat?.samples?.length ?? 0,
      ratio: null,
    }
  })
  return record({ title, note: opts.note, rows })
}

/** Record a table measured some other way (e.g. throughput of a whole run). */
export function record(table: Table): Table {
  const hp = table.rows.find((r) => r.name.startsWith('hotpath'))
  for (const r of table.rows) r.ratio = hp ? hp.opsPerSec / r.opsPerSec : null
  tables.push(table)
  print(table)
  return table
}

/** Time `n` operations done by `fn` (which runs them all) and return ops/s. */
export async function throughput(n: number, fn: () => Promise<unknown> | unknown): Promise<{ opsPerSec: number; ms: number }> {
  const t0 = process.hrtime.bigint()
  await fn()
  const ms = Number(process.hrtime.bigint() - t0) / 1e6
  return { opsPerSec: (n / ms) * 1000, ms }
}

export function fmt(n: number): string {
  if (!Number.isFinite(n)) return String(n)
  if (n >= 1e6) return (n / 1e6).toFixed(2) + 'M'
  if (n >= 1e3) return (n / 1e3).toFixed(1) + 'k'
  return n.toFixed(n < 10 ? 2 : 0)
}

export function print(t: Table) {
  const lines = [`\n### ${t.title}`]
  if (t.note) lines.push(t.note)
  lines.push('', '| task | ops/s | mean | hotpath ÷ task |', '|---|---:|---:|---:|')
  for (const r of t.rows) {
    const mean = r.meanNs >= 1e6 ? (r.meanNs / 1e6).toFixed(2) + ' ms' : r.meanNs >= 1e3 ? (r.meanNs / 1e3).toFixed(2) + ' µs' : r.meanNs.toFixed(0) + ' ns'
    lines.push(`| ${r.name} | ${fmt(r.opsPerSec)} | ${mean} | ${r.ratio === null ? '' : r.ratio.toFixed(2) + 'x'} |`)
  }
  console.log(lines.join('\n'))
}

/** Merge this run's tables into benchmark/results.json (by title). */
export function save(file = new URL('./results.json', import.meta.url)) {
  let prev: { tables: Table[] } = { tables: [] }
  if (existsSync(file)) {
    try {
      prev = JSON.parse(readFileSync(file, 'utf8'))
    } catch {}
  }
  const byTitle = new Map(prev.tables.map((t) => [t.title, t]))
  for (const t of tables) byTitle.set(t.title, t)
  const out = {
    machine: `${os.cpus().length} x ${os.cpus()[0]?.model ?? 'cpu'}, ${Math.round(os.totalmem() / 2 ** 30)} GiB, Node ${process.version}, ${os.platform()} ${os.arch()}`,
    date: new Date().toISOString(),
    tables: [...byTitle.values()],
  }
  writeFileSync(file, JSON.stringify(out, null, 2) + '\n')
}

export function gc() {
  const g = (globalThis as any).gc as undefined | (() => void)
  if (g) g()
}

/**
 * Runs `fns` in turns: `BENCH_ROUNDS` rounds (default 7) of ~`BENCH_TIME` ms
 * (default 300) each, after a `warmupMs` warm-up of each, so a shared
 * machine's load falls on all alike. Each fn performs `per` operations; each
 * task's median round is recorded.
 */
export async function interleavedRounds(title: string, fns: Record<string, () => unknown>, per: number, note: string, warmupMs = 150): Promise<void> {
  const ms = Number(process.env.BENCH_TIME ?? 300)
  const rounds = Number(process.env.BENCH_ROUNDS ?? 7)
  const rates = new Map<string, number[]>()
  for (const f of Object.values(fns)) {
    const end = performance.now() + warmupMs
    while (performance.now() < end) await f()
  }
  for (let r = 0; r < rounds; r++) {
    for (const [name, f] of Object.entries(fns)) {
      let calls = 0
      const t0 = performance.now()
      while (performance.now() - t0 < ms) {
        await f()
        calls++
      }
      rates.set(name, [...(rates.get(name) ?? []), (calls * per * 1000) / (performance.now() - t0)])
    }
  }
  const rows: Row[] = [...rates].map(([name, rs]) => {
    const median = rs.sort((a, b) => a - b)[rs.length >> 1]
    return { name, opsPerSec: median, meanNs: 1e9 / median, p99Ns: NaN, samples: rs.length, ratio: null }
  })
  record({ title, note: `${note} Median of ${rounds} interleaved rounds.`, rows })
}

/** REDIS_URL, or a throwaway redis-server of the benchmark's own. */
export async function startRedis(): Promise<{ url: string; stop: () => Promise<void> } | null> {
  if (process.env.REDIS_URL) return { url: process.env.REDIS_URL, stop: async () => {} }
  if (spawnSync('sh', ['-c', 'command -v redis-server']).status !== 0) return null
  const own = new OwnRedis(await freePort())
  await own.start()
  return { url: own.url, stop: () => own.dispose() }
}

/** `total` operations, `n` in flight at a time. */
export async function inFlight(total: number, n: number, op: (i: number) => Promise<unknown>) {
  let next = 0
  const lane = async () => {
    while (next < total) await op(next++)
  }
  await Promise.all(Array.from({ length: n }, lane))
}
