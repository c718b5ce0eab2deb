// A simulated model API: the slow, rate-limited upstream an agent gateway sits
// in front of. It runs as its own process (demo.mjs starts it) and uses no
// hotpath code: it stands for somebody else's service.
//
//   POST /v1/complete      { model, prompt }  -> { model, text, usage }   40-80 ms
//   POST /v1/embed/batch   { inputs: [...] }  -> { embeddings: [[...]] } 15 ms + 0.25 ms per input, at most 64 inputs
//   POST /v1/retrieve      { query, k }       -> { documents: [...] }    20-40 ms
//   GET  /stats            what it was asked (the demo's table reads it)
//   POST /stats/reset
//
// Its own limit: at most --max-concurrent requests in flight (default 32);
// one more is answered 429 with Retry-After, like a model provider's
// concurrency limit. Answers are deterministic functions of the request, so
// the load generator can check every answer it gets, cached or not.
//
//   node examples/gateway/upstream.mjs [--port 0] [--max-concurrent 32] [--latency-scale 1]
import http from 'node:http'
import { parseArgs } from 'node:util'
import { createHash } from 'node:crypto'
import { isMain, reportReady, sleep } from './common.mjs'

export const EMBED_DIM = 8
export const MAX_EMBED_BATCH = 64

function digest(text) {
  return createHash('sha256').update(text).digest()
}

const WORDS = ['agent', 'cache', 'token', 'vector', 'latency', 'context', 'retrieval', 'model', 'batch', 'stream',
  'prompt', 'answer', 'window', 'budget', 'tool', 'plan', 'memory', 'index', 'shard', 'queue']

/** The answer the model gives to `prompt` (deterministic). */
export function completionText(model, prompt) {
  const d = digest(`${model}\n${prompt}`)
  const words = []
  for (let i = 0; i < 24; i++) words.push(WORDS[d[i] % WORDS.length])
  return `${words.join(' ')}.`
}

export function completionBody(model, prompt) {
  const text = completionText(model, prompt)
  return JSON.stringify({ model, text, usage: { promptTokens: Math.ceil(prompt.length / 4), completionTokens: 24 } })
}

/** The embedding of `input` (deterministic, EMBED_DIM numbers). */
export function embedVector(input) {
  const d = digest(input)
  const v = new Array(EMBED_DIM)
  for (let i = 0; i < EMBED_DIM; i++) v[i] = Math.round((d.readUInt16BE(2 * i) / 65535 - 0.5) * 10000) / 10000
  return v
}

/** The documents retrieval returns for `query` (deterministic). */
export function retrieveDocuments(query, k) {
  const d = digest(query)
  const docs = []
  for (let i = 0; i < k; i++) docs.push({ id: `doc-${d.readUInt16BE(2 * i) % 5000}`, score: Math.round((1 - i * 0.07 - d[20 + i] / 2550) * 1000) / 1000 })
  return docs
}

export function retrieveBody(query, k) {
  return JSON.stringify({ query, documents: retrieveDocuments(query, k) })
}

function newStats(maxConcurrent) {
  return {
    calls: 0, // every request to /v1/*, including the ones answered 429
    completeCalls: 0,
    embedBatchCalls: 0,
    embedItems: 0,
    retrieveCalls: 0,
    rejected429: 0,
    badRequests: 0,
    // Work done twice: an answer computed again for an input it already answered.
    completeDuplicates: 0,
    embedDuplicates: 0,
    retrieveDuplicates: 0,
    inFlight: 0,
    peakConcurrent: 0,
    maxConcurrent,
  }
}

export function createUpstream({ maxConcurrent = 32, latencyScale = 1 } = {}) {
  let stats = newStats(maxConcurrent)
  let seen = { complete: new Set(), embed: new Set(), retrieve: new Set() }
  const jitter = (lo, hi) => (lo + Math.random() * (hi - lo)) * latencyScale

  function send(res, status, body, headers = {}) {
    res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), ...headers })
    res.end(body)
  }

  function once(set, key) {
    if (set.has(key)) return 1
    set.add(key)
    return 0
  }

  async function answer(path, req) {
    switch (path) {
      case '/v1/complete': {
        if (typeof req.prompt !== 'string') return null
        const model = typeof req.model === 'string' ? req.model : 'sim-1'
        stats.completeCalls++
        stats.completeDuplicates += once(seen.complete, `${model}\n${req.prompt}`)
        await sleep(jitter(40, 80))
        return completionBody(model, req.prompt)
      }
      case '/v1/embed/batch': {
        const inputs = req.inputs
        if (!Array.isArray(inputs) || inputs.length === 0 || inputs.length > MAX_EMBED_BATCH || !inputs.every((s) => typeof s === 'string')) return null
        stats.embedBatchCalls++
        stats.embedItems += inputs.length
        for (const s of inputs) stats.embedDuplicates += once(seen.embed, s)
        await sleep((15 + 0.25 * inputs.length) * latencyScale)
        return JSON.stringify({ embeddings: inputs.map(embedVector) })
      }
      case '/v1/retrieve': {
        if (typeof req.query !== 'string') return null
        const k = Number.isInteger(req.k) && req.k > 0 && req.k <= 10 ? req.k : 3
        stats.retrieveCalls++
        stats.retrieveDuplicates += once(seen.retrieve, `${k}\n${req.query}`)
        await sleep(jitter(20, 40))
        return retrieveBody(req.query, k)
      }
      default:
        return undefined
    }
  }

  const server = http.createServer((req, res) => {
    const path = req.url.split('?')[0]
    if (req.method === 'GET' && path === '/stats') {
      return send(res, 200, JSON.stringify({ ...stats, avgEmbedBatchSize: stats.embedBatchCalls ? stats.embedItems / stats.embedBatchCalls : 0 }))
    }
    if (req.method === 'POST' && path === '/stats/reset') {
      req.resume()
      const inFlight = stats.inFlight
      stats = newStats(maxConcurrent)
      stats.inFlight = inFlight
      seen = { complete: new Set(), embed: new Set(), retrieve: new Set() }
      return send(res, 200, '{"ok":true}')
    }
    if (req.method !== 'POST' || !path.startsWith('/v1/')) return send(res, 404, '{"error":"not found"}')
    stats.calls++
    if (stats.inFlight >= maxConcurrent) {
      stats.rejected429++
      req.resume()
      return send(res, 429, JSON.stringify({ error: `too many concurrent requests (limit ${maxConcurrent})` }), { 'retry-after': '1' })
    }
    stats.inFlight++
    if (stats.inFlight > stats.peakConcurrent) stats.peakConcurrent = stats.inFlight
    const parts = []
    req.on('data', (c) => parts.push(c))
    req.on('end', async () => {
      let body
      try {
        const parsed = JSON.parse(Buffer.concat(parts).toString('utf8'))
        body = await answer(path, parsed)
      } catch {
        body = null
      }
      stats.inFlight--
      if (body === undefined) return send(res, 404, '{"error":"not found"}')
      if (body === null) {
        stats.badRequests++
        return send(res, 400, '{"error":"bad request"}')
      }
      send(res, 200, body)
    })
  })
  server.keepAliveTimeout = 30_000
  return server
}

if (isMain(import.meta.url)) {
  const { values } = parseArgs({
    options: {
      port: { type: 'string', default: '0' },
      'max-concurrent': { type: 'string', default: '32' },
      'latency-scale': { type: 'string', default: '1' },
    },
  })
  const server = createUpstream({ maxConcurrent: Number(values['max-concurrent']), latencyScale: Number(values['latency-scale']) })
  server.listen(Number(values.port), '127.0.0.1', () => {
    const stop = () => {
      server.closeAllConnections()
      server.close(() => process.exit(0))
      setTimeout(() => process.exit(0), 1000).unref()
    }
    process.on('SIGTERM', stop)
    process.on('SIGINT', stop)
    reportReady(server.address().port, stop)
  })
}
