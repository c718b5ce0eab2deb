#!/usr/bin/env node
// Print benchmark/results.json as the markdown the README quotes.
import { readFileSync } from 'node:fs'

const r = JSON.parse(readFileSync(new URL('../benchmark/results.json', import.meta.url), 'utf8'))
const fmt = (n) => (!Number.isFinite(n) ? '' : n >= 1e6 ? (n / 1e6).toFixed(2) + 'M' : n >= 1e3 ? (n / 1e3).toFixed(1) + 'k' : n.toFixed(n < 10 ? 2 : 0))
const time = (ns) => (!Number.isFinite(ns) ? '' : ns >= 1e6 ? (ns / 1e6).toFixed(2) + ' ms' : ns >= 1e3 ? (ns / 1e3).toFixed(2) + ' µs' : ns.toFixed(0) + ' ns')
const out = [`Machine: ${r.machine}. Run: ${r.date.slice(0, 16).replace('T', ' ')} UTC.`]
for (const t of r.tables) {
  out.push('', `#### ${t.title}`, '')
  if (t.note) out.push(t.note, '')
  out.push('| task | ops/s | mean | hotpath ÷ task |', '|---|---:|---:|---:|')
  for (const row of t.rows) out.push(`| ${row.name} | ${fmt(row.opsPerSec)} | ${time(row.meanNs)} | ${row.ratio == null ? '' : row.ratio.toFixed(2) + 'x'} |`)
}
console.log(out.join('\n'))
