// The bad-input matrix: per class and method, the risky inputs (1e308,
// 2 ** 53, 2 ** 64, -0, NaN, ±Infinity, a 64 MiB string, lone surrogates,
// wrong types) run in child processes. The process must survive every one,
// and the outcome must be the documented one: accepted, or a hotpath error of
// the documented class (TypeError for a wrong type, RangeError for a value
// out of range, both ERR_INVALID_ARG) — never a hang. A child that dies is
// recorded against the case it was running and a new child goes on after it.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { join } from 'node:path'

const { buildCases } = require('./fixtures/badinput_cases.cjs') as {
  buildCases: () => { id: number; title: string; expect: string }[]
}
const CHILD = join(__dirname, 'fixtures', 'badinput_child.cjs')

// Native-boundary cases that still abort the process on a branch without the
// native range checks (h14r: src/validate.rs). Listed so the expectation is
// explicit: for these an abort is tolerated (and reported as a diagnostic);
// every other case must be exactly as documented. Empty this list once the
// native fixes are merged.
const KNOWN_NATIVE_ABORTS: string[] = [
  'native: new NativeCache({ idleMs }) = 1e308',
  'native: new NativeCache({ idleMs }) = 2 ** 53',
  'native: new NativeCache({ idleMs }) = 2 ** 64',
  'native: new NativeCache({ redis: { connectTimeoutMs } }) = 1e308',
  'native: new NativeRateLimiter({ redis: { connectTimeoutMs } }) = 1e308',
  'native: new NativeCache({ redis: { commandTimeoutMs } }) = 1e308',
  'native: new NativeRateLimiter({ redis: { commandTimeoutMs } }) = 1e308',
  'native: NativeCache.setSync(k, v, ttlMs) = 1e308',
  'native: NativeCache.setSync(k, v, ttlMs) = Infinity',
  'native: NativeCache.setSync(k, v, ttlMs) = NaN',
  'native: NativeCache.setSync(k, v, ttlMs) = -1',
]

type Outcome =
  | { kind: 'ok' }
  | { kind: 'hang' }
  | { kind: 'crash'; detail: string }
  | { kind: 'error'; name: string; code?: string; brand: boolean; type: boolean; range: boolean; message: string }

function runChild(from: number, to: number): Promise<{ results: Map<number, Outcome>; running: number | null; detail: string; unhandled: string[] }> {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, [CHILD, String(from), String(to)], { stdio: ['ignore', 'pipe', 'pipe'] })
    const results = new Map<number, Outcome>()
    const unhandled: string[] = []
    let running: number | null = null
    let buf = ''
    let err = ''
    p.stdout.setEncoding('utf8')
    p.stdout.on('data', (d: string) => {
      buf += d
      let i
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i)
        buf = buf.slice(i + 1)
        if (line.startsWith('S ')) running = Number(line.slice(2))
        else if (line.startsWith('R ')) {
          const sp = line.indexOf(' ', 2)
          results.set(Number(line.slice(2, sp)), JSON.parse(line.slice(sp + 1)))
          running = null
        } else if (line.startsWith('U ') || line.startsWith('F ')) unhandled.push(line)
      }
    })
    p.stderr.setEncoding('utf8')
    p.stderr.on('data', (d: string) => {
      err = (err + d).slice(-2000)
    })
    p.on('close', (code, signal) => {
      resolve({ results, running: code === 0 ? null : running, detail: `exit ${code} ${signal ?? ''}: ${err.trim().split('\n').slice(-3).join(' | ')}`, unhandled })
    })
  })
}

function matches(expect: string, r: Outcome): boolean {
  if (expect === 'ok') return r.kind === 'ok'
  if (expect === 'native') return r.kind === 'ok' || (r.kind === 'error' && r.code === 'ERR_INVALID_ARG')
  if (r.kind !== 'error' || !r.brand) return false
  if (expect === 'TypeError') return r.type && !r.range && r.code === 'ERR_INVALID_ARG' && r.name === 'TypeError'
  if (expect === 'RangeError') return r.range && !r.type && r.code === 'ERR_INVALID_ARG' && r.name === 'RangeError'
  return r.code === expect && !r.type && !r.range
}

test('bad inputs: no abort, no hang, the documented error class and code', { timeout: 30 * 60_000 }, async (t) => {
  const cases = buildCases()
  const all = new Map<number, Outcome>()
  const unhandled: string[] = []
  let from = 0
  let children = 0
  while (from < cases.length) {
    children++
    const r = await runChild(from, cases.length)
    for (const [id, o] of r.results) all.set(id, o)
    unhandled.push(...r.unhandled)
    if (r.running === null) {
      // Finished (or died between cases: then resume after the last result).
      const last = Math.max(from - 1, ...r.results.keys())
      if (last + 1 >= cases.length || r.results.size === 0) break
      from = last + 1
      continue
    }
    all.set(r.running, { kind: 'crash', detail: r.detail })
    from = r.running + 1
  }
  const wrong: string[] = []
  const abortedKnown: string[] = []
  for (const c of cases) {
    const r = all.get(c.id) ?? ({ kind: 'crash', detail: 'no result' } as Outcome)
    if (matches(c.expect, r)) continue
    if (r.kind === 'crash' && KNOWN_NATIVE_ABORTS.includes(c.title)) {
      abortedKnown.push(c.title)
      continue
    }
    wrong.push(`${c.title}: expected ${c.expect}, got ${JSON.stringify(r)}`)
  }
  t.diagnostic(`${cases.length} cases in ${children} child process(es); known native aborts still aborting: ${abortedKnown.length}`)
  for (const a of abortedKnown) t.diagnostic(`still aborts (needs the native fix): ${a}`)
  assert.deepEqual(unhandled, [], 'no unhandled rejection in the child')
  assert.deepEqual(wrong, [])
})
