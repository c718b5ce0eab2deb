// The demo's bounded load: several agent clients and one abusive client
// calling the gateway, a mix of repeated and unique prompts, embeddings,
// retrieval and document ingestion, plus bursts of one identical prompt.
//
// planLoad() makes the plan (seeded: the baseline and hotpath runs send the
// same requests); runLoad() sends it and returns what it measured on the
// client side. Every 200 answer is checked against what the upstream would
// answer for that request (`wrong` counts mismatches), so a cached answer is
// also a correct one.
import http from 'node:http'
import { prng } from './common.mjs'
import { completionBody, embedVector, retrieveBody } from './upstream.mjs'
import { chunkText } from './chunk-worker.mjs'

const WINDOW_MS = 60_000
const BURSTS = 3
const BURST_PER_CLIENT = 2

const TASKS = ['Summarize', 'Classify', 'Translate to French', 'Extract the action items from', 'Draft a reply to', 'Find the root cause in']
const THINGS = ['the incident report', 'the customer email', 'the pull request', 'the support ticket', 'the meeting notes', 'the error log']
const WORDS = ('the agent calls a tool and the gateway answers from the cache while the model thinks about latency budgets ' +
  'retrieval augmented generation needs embeddings for every chunk of every document in the index before a query can be answered ' +
  'rate limits protect the upstream provider and batching turns many small calls into one large call').split(' ')

/** An index in [0, n) with Zipf-like popularity (low indexes are hot). */
function zipf(rand, n) {
  return Math.min(n - 1, Math.floor(n ** rand() - 1))
}

function makeDocument(rand, id, bytes) {
  const sentences = []
  let len = 0
  while (len < bytes) {
    const words = []
    const n = 8 + Math.floor(rand() * 14)
    for (let i = 0; i < n; i++) words.push(WORDS[Math.floor(rand() * WORDS.length)])
    const s = `${words.join(' ')} (${id}.${sentences.length}). `
    sentences.push(s)
    len += s.length
  }
  return sentences.join('')
}

/**
 * @param {{ requests?: number, seed?: number, normalClients?: number }} options
 *   requests: the total to send (every client, bursts included)
 */
export function planLoad({ requests = 2000, seed = 7, normalClients = 8 } = {}) {
  const rand = prng(seed)
  const popularPrompts = Array.from({ length: 40 }, (_, i) => `${TASKS[i % TASKS.length]} ${THINGS[Math.floor(i / TASKS.length) % THINGS.length]} (variant ${i})`)
  const popularInputs = Array.from({ length: 60 }, (_, i) => `frequently embedded passage ${i}: ${WORDS.slice(i % 20, (i % 20) + 12).join(' ')}`)
  const popularQueries = Array.from({ length: 20 }, (_, i) => `how do I ${['rotate keys', 'scale workers', 'debug latency', 'tune the cache', 'shard the index'][i % 5]} (${i})`)
  const docs = Array.from({ length: 4 }, (_, i) => makeDocument(rand, `doc${i}`, 40_000 + i * 8_000))
  const docChunks = docs.map((d) => chunkText(d).length)

  // Each normal client sends `perClient` requests (BURSTS * BURST_PER_CLIENT of
  // them in bursts) = 80% of its limit; the abusive client sends the rest,
  // about three times its limit.
  const perClient = Math.max(12, Math.round(requests * 0.085))
  const clientLimit = Math.ceil(perClient * 1.25)
  const abusive = Math.max(clientLimit + 1, requests - normalClients * perClient)

  let unique = 0
  const complete = (prompt) => ({ path: '/v1/complete', body: JSON.stringify({ prompt }), check: { kind: 'complete', prompt } })
  const normalItem = () => {
    const r = rand()
    if (r < 0.03) {
      const d = Math.floor(rand() * docs.length)
      return { path: '/v1/ingest', body: JSON.stringify({ id: `doc${d}`, text: docs[d] }), check: { kind: 'ingest', chunks: docChunks[d] } }
    }
    if (r < 0.55) {
      return complete(rand() < 0.6 ? popularPrompts[zipf(rand, popularPrompts.length)] : `Summarize ticket #${seed}-${++unique} for the on-call engineer`)
    }
    if (r < 0.85) {
      const input = rand() < 0.5 ? popularInputs[zipf(rand, popularInputs.length)] : `user note ${seed}-${++unique}: ${WORDS.slice(0, 10).join(' ')}`
      return { path: '/v1/embed', body: JSON.stringify({ input }), check: { kind: 'embed', input } }
    }
    const query = rand() < 0.7 ? popularQueries[zipf(rand, popularQueries.length)] : `where is setting ${seed}-${++unique} documented`
    return { path: '/v1/retrieve', body: JSON.stringify({ query, k: 3 }), check: { kind: 'retrieve', query, k: 3 } }
  }

  const clients = []
  for (let c = 0; c < normalClients; c++) {
    const items = []
    for (let i = 0; i < perClient - BURSTS * BURST_PER_CLIENT; i++) items.push(normalItem())
    clients.push({ key: `agent-${String.fromCharCode(97 + c)}`, abusive: false, connections: 3, items })
  }
  const abuser = { key: 'abusive-scraper', abusive: true, connections: 8, items: [] }
  for (let i = 0; i < abusive; i++) {
    abuser.items.push(complete(rand() < 0.7 ? popularPrompts[zipf(rand, popularPrompts.length)] : `Scrape page ${seed}-${++unique}`))
  }
  clients.push(abuser)

  // A burst: every normal client asks the same new prompt at the same moment.
  const bursts = []
  for (let b = 0; b < BURSTS; b++) {
    const prompt = `Explain incident ${seed}-${b} to a customer in two sentences`
    const items = []
    for (let c = 0; c < normalClients; c++) for (let k = 0; k < BURST_PER_CLIENT; k++) items.push({ client: clients[c].key, ...complete(prompt) })
    bursts.push({ at: (b + 1) / (BURSTS + 1), items })
  }

  const total = clients.reduce((n, c) => n + c.items.length, 0) + bursts.reduce((n, b) => n + b.items.length, 0)
  return { requests: total, clientLimit, windowMs: WINDOW_MS, clients, bursts, abusiveKey: abuser.key }
}

function expected(check) {
  switch (check.kind) {
    case 'complete':
      return completionBody('sim-1', check.prompt)
    case 'embed':
      return `{"embedding":${JSON.stringify(embedVector(check.input))}}`
    case 'retrieve':
      return retrieveBody(check.query, check.k)
    default:
      return null
  }
}

function valid(check, body) {
  if (check.kind === 'ingest') {
    try {
      return JSON.parse(body).chunks === check.chunks
    } catch {
      return false
    }
  }
  return body === expected(check)
}

function percentile(sorted, p) {
  if (sorted.length === 0) return 0
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]
}

/**
 * Sends `plan` to the gateways at `targets` (requests alternate between
 * them) and measures.
 * @param {{ targets: string[], plan: ReturnType<typeof planLoad>, onProgress?: (p: { done: number, total: number, elapsedMs: number }) => void, requestTimeoutMs?: number }} options
 */
export async function runLoad({ targets, plan, onProgress, requestTimeoutMs = 30_000 }) {
  const connections = plan.clients.reduce((n, c) => n + c.connections, 0) + plan.bursts.reduce((n, b) => Math.max(n, b.items.length), 0)
  const agents = targets.map(() => new http.Agent({ keepAlive: true, maxSockets: connections }))
  const perTarget = targets.map((url) => ({ url, sent: 0, byStatus: {} }))
  const byClient = {}
  for (const c of plan.clients) byClient[c.key] = { sent: 0, ok: 0, limited: 0, errors: 0 }
  const byStatus = {}
  const okLatencies = []
  const kindLatencies = {}
  const xCache = { hit: 0, miss: 0 }
  let wrong = 0
  let done = 0
  let next = 0
  const errorSamples = []

  function send(client, item) {
    const t = next++ % targets.length
    perTarget[t].sent++
    byClient[client].sent++
    const start = performance.now()
    return new Promise((resolve) => {
      const finish = (status, body, cacheHeader) => {
        const ms = performance.now() - start
        done++
        byStatus[status] = (byStatus[status] ?? 0) + 1
        perTarget[t].byStatus[status] = (perTarget[t].byStatus[status] ?? 0) + 1
        const c = byClient[client]
        if (status === 200) {
          c.ok++
          okLatencies.push(ms)
          ;(kindLatencies[item.path] ??= []).push(ms)
          if (cacheHeader) (kindLatencies[`x-cache ${cacheHeader}`] ??= []).push(ms)
          if (!valid(item.check, body)) wrong++
          if (cacheHeader === 'hit') xCache.hit++
          else if (cacheHeader === 'miss') xCache.miss++
        } else if (status === 429) c.limited++
        else {
          c.errors++
          if (errorSamples.length < 5) errorSamples.push(`${status} ${item.path}: ${String(body).slice(0, 160)}`)
        }
        resolve()
      }
      const req = http.request(
        `${targets[t]}${item.path}`,
        {
          method: 'POST',
          agent: agents[t],
          headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(item.body), 'x-api-key': client },
          timeout: requestTimeoutMs,
        },
        (res) => {
          const parts = []
          res.on('data', (c) => parts.push(c))
          res.on('end', () => finish(res.statusCode, Buffer.concat(parts).toString('utf8'), res.headers['x-cache']))
          res.on('error', (e) => finish('error', e.message))
        },
      )
      req.on('timeout', () => req.destroy(new Error(`no answer within ${requestTimeoutMs} ms`)))
      req.on('error', (e) => finish('error', e.message))
      req.end(item.body)
    })
  }

  const started = performance.now()
  const progress = onProgress ? setInterval(() => onProgress({ done, total: plan.requests, elapsedMs: performance.now() - started }), 250) : null
  const mainTotal = plan.requests - plan.bursts.reduce((n, b) => n + b.items.length, 0)
  let mainDone = 0
  const burstRuns = []
  let nextBurst = 0
  const maybeBurst = () => {
    while (nextBurst < plan.bursts.length && mainDone >= plan.bursts[nextBurst].at * mainTotal) {
      const b = plan.bursts[nextBurst++]
      burstRuns.push(Promise.all(b.items.map((it) => send(it.client, it))))
    }
  }

  const workers = []
  for (const c of plan.clients) {
    let i = 0
    for (let k = 0; k < c.connections; k++) {
      workers.push(
        (async () => {
          while (i < c.items.length) {
            await send(c.key, c.items[i++])
            mainDone++
            maybeBurst()
          }
        })(),
      )
    }
  }
  await Promise.all(workers)
  maybeBurst()
  await Promise.all(burstRuns)
  const wallMs = performance.now() - started
  if (progress) clearInterval(progress)
  onProgress?.({ done, total: plan.requests, elapsedMs: wallMs })
  for (const a of agents) a.destroy()

  okLatencies.sort((a, b) => a - b)
  const byRoute = {}
  for (const [path, l] of Object.entries(kindLatencies)) {
    l.sort((a, b) => a - b)
    byRoute[path] = { ok: l.length, p50Ms: percentile(l, 50), p99Ms: percentile(l, 99) }
  }
  const limitedByClient = {}
  for (const [k, v] of Object.entries(byClient)) if (v.limited > 0) limitedByClient[k] = v.limited
  const limited = byStatus[429] ?? 0
  const ok = byStatus[200] ?? 0
  return {
    sent: done,
    wallMs,
    requestsPerSec: done / (wallMs / 1000),
    ok,
    limited,
    errors: done - ok - limited,
    byStatus,
    byClient,
    limitedByClient,
    abusiveAllowed: byClient[plan.abusiveKey].sent - byClient[plan.abusiveKey].limited,
    p50Ms: percentile(okLatencies, 50),
    p99Ms: percentile(okLatencies, 99),
    byRoute,
    xCache,
    wrong,
    perTarget,
    errorSamples,
  }
}
