// An agent gateway: the HTTP service AI agents call for completions,
// embeddings, retrieval and document ingestion, in front of a slow,
// rate-limited model API (upstream.mjs).
//
//   node examples/gateway/gateway.mjs --upstream http://127.0.0.1:PORT [--mode hotpath|baseline]
//     [--port 0] [--client-limit 600] [--client-window-ms 60000] [--upstream-concurrency 12]
//     [--redis-url redis://...] [--key-prefix demo:] [--instance A]
//
// --mode baseline is the naive gateway: one direct upstream call per request,
// no cache, no batching, no limits, bodies gathered with Buffer.concat,
// chunking on the event loop. --mode hotpath (the default) uses all five
// hotpath primitives:
//
//   RateLimiter     per client key (x-api-key); 429 with RateLimit-* and Retry-After headers
//   CacheManager    getOrSet for completions, retrieval results and embeddings (single-flight:
//                   a burst of identical prompts costs one upstream call); shared via Redis with --redis-url
//   BatchProcessor  single embedding requests -> batched upstream /v1/embed/batch calls
//   WorkerQueue     bounds upstream concurrency under the upstream's limit (and retries its 429s);
//                   a second WorkerQueue runs chunk-worker.mjs in worker threads for ingestion
//   BufferPool      request and response bodies
//
// Routes: POST /v1/complete {prompt, model?}, POST /v1/embed {input},
// POST /v1/retrieve {query, k?}, POST /v1/ingest {id, text},
// GET /stats (every component's stats()), GET /healthz, POST /admin/shutdown {clear?}.
import http from 'node:http'
import { parseArgs } from 'node:util'
import { fileURLToPath } from 'node:url'
import { CacheManager, RateLimiter, BatchProcessor, BufferPool, WorkerQueue } from 'hotpath'
import { isMain, reportReady, sha256 } from './common.mjs'
import { chunkText } from './chunk-worker.mjs'

const MAX_BODY_BYTES = 4 << 20
const MAX_EMBED_BATCH = 64 // the upstream's limit
const CHUNK_SIZE = 1000

class HttpError extends Error {
  constructor(status, message) {
    super(message)
    this.status = status
  }
}

export function createGateway(options) {
  const {
    mode = 'hotpath',
    upstream,
    instance = 'A',
    clientLimit = 600,
    clientWindowMs = 60_000,
    upstreamConcurrency = 12,
    redisUrl,
    keyPrefix = 'hotpath-demo:',
    cacheTtlMs = 10 * 60_000,
  } = options
  if (!upstream) throw new Error('createGateway: upstream (the model API URL) is required')
  const hot = mode === 'hotpath'

  // ---- what the gateway itself counts (beside each component's stats()) ----
  const counts = {
    requests: 0,
    byStatus: {},
    limitedByClient: {}, // client key -> 429s served (a few keys in the demo; capped below)
    upstreamRequests: 0, // HTTP requests this gateway sent upstream (retries included)
    upstreamErrors: 0, // of which failed (upstream 429/5xx or network)
    cacheLookups: 0, // getOrSet calls
    cacheFills: 0, // of which ran their factory (an upstream fetch)
  }

  // ---- upstream client ----
  const agent = new http.Agent({ keepAlive: true, maxSockets: 512 })
  function post(path, payload) {
    counts.upstreamRequests++
    return new Promise((resolve, reject) => {
      const req = http.request(
        `${upstream}${path}`,
        { method: 'POST', agent, headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) } },
        (res) => {
          const parts = []
          res.on('data', (c) => parts.push(c))
          res.on('end', () => {
            const text = Buffer.concat(parts).toString('utf8')
            if (res.statusCode === 200) return resolve(text)
            counts.upstreamErrors++
            reject(new HttpError(502, `upstream ${path} answered ${res.statusCode}: ${text.slice(0, 120)}`))
          })
          res.on('error', reject)
        },
      )
      req.on('error', (e) => {
        counts.upstreamErrors++
        reject(new HttpError(502, `upstream ${path}: ${e.message}`))
      })
      req.end(payload)
    })
  }

  // ---- hotpath components (hotpath mode only) ----
  let cache, limiter, upstreamQ, cpuQ, embedder, pool
  if (hot) {
    const redis = redisUrl ? (suffix) => ({ redis: { url: redisUrl, keyPrefix: `${keyPrefix}${suffix}` } }) : () => ({})
    cache = new CacheManager({ maxEntries: 100_000, ttlMs: cacheTtlMs, ...redis('cache:') })
    limiter = new RateLimiter({ limit: clientLimit, windowMs: clientWindowMs, algorithm: 'sliding-window', ...redis('limit:') })
    // Every upstream call goes through this queue: never more than
    // upstreamConcurrency in flight, so the upstream's own limit is not hit
    // (and if it is, the call is retried with backoff instead of failing).
    upstreamQ = new WorkerQueue({ concurrency: upstreamConcurrency, maxQueueSize: 10_000, retries: 2, retryBackoffMs: 50, timeoutMs: 15_000 })
    // CPU work (chunk + sha256 a document) in worker threads.
    cpuQ = new WorkerQueue({
      workers: { filename: fileURLToPath(new URL('./chunk-worker.mjs', import.meta.url)), threads: 2 },
      concurrency: 2,
      timeoutMs: 15_000,
    })
    // Single embedding requests wait up to 10 ms to share one upstream call.
    embedder = new BatchProcessor(
      async (inputs) => {
        const text = await upstreamQ.add(() => post('/v1/embed/batch', JSON.stringify({ inputs })))
        return JSON.parse(text).embeddings.map((e) => JSON.stringify(e))
      },
      { maxBatchSize: MAX_EMBED_BATCH, maxWaitMs: 10, concurrency: upstreamConcurrency },
    )
    pool = new BufferPool({ chunkSize: 1 << 20, maxPooledBytes: 32 << 20 })
  }

  /** getOrSet, counting whether this request had to go upstream. */
  async function cached(key, fetch) {
    counts.cacheLookups++
    let filled = false
    const value = await cache.getOrSet(
      key,
      () => {
        filled = true
        counts.cacheFills++
        return fetch()
      },
      { ttlMs: cacheTtlMs },
    )
    return { value, hit: !filled }
  }

  // ---- bodies ----
  function readBody(req) {
    const declared = Number(req.headers['content-length'])
    if (declared > MAX_BODY_BYTES) return Promise.reject(new HttpError(413, `body over ${MAX_BODY_BYTES} bytes`))
    return new Promise((resolve, reject) => {
      let settled = false
      const settle = (err, text) => {
        if (settled) return
        settled = true
        if (err) reject(err)
        else resolve(text)
      }
      // A client that goes away mid-body must not leave the request pending.
      req.on('close', () => settle(new HttpError(400, 'the client closed the request before its body ended')))
      req.on('error', (e) => settle(e))
      if (hot && Number.isInteger(declared) && declared > 0) {
        // One pooled buffer of the declared size: no chunk list, no concat.
        // (Released on every path; one that is not would be reclaimed by GC.)
        let buf = pool.allocate(declared)
        let off = 0
        const release = () => {
          if (buf !== null) pool.release(buf)
          buf = null
        }
        req.on('data', (c) => {
          if (buf === null) return
          if (off + c.length > declared) {
            release()
            return settle(new HttpError(400, 'body longer than its content-length'))
          }
          c.copy(buf, off)
          off += c.length
        })
        req.on('end', () => {
          if (buf === null) return
          const text = buf.toString('utf8', 0, off)
          release()
          settle(null, text)
        })
        req.on('close', release)
        return
      }
      const parts = []
      let n = 0
      req.on('data', (c) => {
        n += c.length
        if (n <= MAX_BODY_BYTES) parts.push(c)
      })
      req.on('end', () => settle(n > MAX_BODY_BYTES ? new HttpError(413, `body over ${MAX_BODY_BYTES} bytes`) : null, Buffer.concat(parts).toString('utf8')))
    })
  }

  function send(res, status, text, headers) {
    counts.requests++
    counts.byStatus[status] = (counts.byStatus[status] ?? 0) + 1
    const n = Buffer.byteLength(text)
    res.writeHead(status, { ...headers, 'content-type': 'application/json', 'content-length': n })
    if (!hot) return res.end(text)
    // A pooled response buffer, back to the pool once the socket has it.
    const buf = pool.allocate(n)
    buf.write(text, 0, 'utf8')
    let released = false
    const release = () => {
      if (!released) {
        released = true
        pool.release(buf)
      }
    }
    res.once('close', release)
    res.end(buf, release)
  }

  function parseJson(text) {
    try {
      const v = JSON.parse(text)
      if (v !== null && typeof v === 'object') return v
    } catch {}
    throw new HttpError(400, 'body must be a JSON object')
  }

  function str(v, name) {
    if (typeof v !== 'string' || v.length === 0) throw new HttpError(400, `${name} must be a non-empty string`)
    return v
  }

  // ---- routes ----
  async function hotRoute(path, body) {
    switch (path) {
      case '/v1/complete': {
        const prompt = str(body.prompt, 'prompt')
        const model = typeof body.model === 'string' ? body.model : 'sim-1'
        const payload = JSON.stringify({ model, prompt })
        return cached(`complete:${model}:${sha256(prompt)}`, () => upstreamQ.add(() => post('/v1/complete', payload)))
      }
      case '/v1/embed': {
        const input = str(body.input, 'input')
        const r = await cached(`embed:${sha256(input)}`, () => embedder.add(input))
        return { value: `{"embedding":${r.value}}`, hit: r.hit }
      }
      case '/v1/retrieve': {
        const query = str(body.query, 'query')
        const k = Number.isInteger(body.k) && body.k > 0 && body.k <= 10 ? body.k : 3
        const payload = JSON.stringify({ query, k })
        return cached(`retrieve:${k}:${sha256(query)}`, () => upstreamQ.add(() => post('/v1/retrieve', payload)))
      }
      case '/v1/ingest': {
        const text = str(body.text, 'text')
        const chunks = await cpuQ.run({ text, size: CHUNK_SIZE })
        const done = await Promise.all(chunks.map((c) => cached(`embed:${c.hash}`, () => embedder.add(text.slice(c.start, c.end)))))
        const fresh = done.filter((r) => !r.hit).length
        return { value: JSON.stringify({ id: body.id ?? null, chunks: chunks.length, embedded: fresh }), hit: fresh === 0 }
      }
      default:
        throw new HttpError(404, `no route ${path}`)
    }
  }

  async function baselineRoute(path, body) {
    switch (path) {
      case '/v1/complete': {
        const prompt = str(body.prompt, 'prompt')
        const model = typeof body.model === 'string' ? body.model : 'sim-1'
        return { value: await post('/v1/complete', JSON.stringify({ model, prompt })) }
      }
      case '/v1/embed': {
        const input = str(body.input, 'input')
        const text = await post('/v1/embed/batch', JSON.stringify({ inputs: [input] }))
        return { value: `{"embedding":${JSON.stringify(JSON.parse(text).embeddings[0])}}` }
      }
      case '/v1/retrieve': {
        const query = str(body.query, 'query')
        const k = Number.isInteger(body.k) && body.k > 0 && body.k <= 10 ? body.k : 3
        return { value: await post('/v1/retrieve', JSON.stringify({ query, k })) }
      }
      case '/v1/ingest': {
        const text = str(body.text, 'text')
        const chunks = chunkText(text, CHUNK_SIZE)
        // One embedding call per chunk.
        for (const c of chunks) await post('/v1/embed/batch', JSON.stringify({ inputs: [text.slice(c.start, c.end)] }))
        return { value: JSON.stringify({ id: body.id ?? null, chunks: chunks.length, embedded: chunks.length }) }
      }
      default:
        throw new HttpError(404, `no route ${path}`)
    }
  }

  const clientsSeen = new Set()
  async function handle(req, res) {
    const path = req.url.split('?')[0]
    if (req.method === 'GET' && path === '/stats') {
      req.resume()
      return res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(stats()))
    }
    if (req.method === 'GET' && path === '/healthz') {
      req.resume()
      return res.writeHead(200, { 'content-type': 'application/json' }).end('{"ok":true}')
    }
    if (req.method === 'POST' && path === '/admin/shutdown') {
      const body = parseJson((await readBody(req)) || '{}')
      res.writeHead(200, { 'content-type': 'application/json' }).end('{"ok":true}')
      return shutdown({ clear: body.clear === true }).then(
        () => options.onShutdown?.(null),
        (e) => options.onShutdown?.(e),
      )
    }
    if (req.method !== 'POST') {
      req.resume()
      throw new HttpError(405, `${req.method} ${path}: use POST`)
    }
    let headers = {}
    if (hot) {
      const client = String(req.headers['x-api-key'] || req.socket.remoteAddress || 'anonymous')
      if (clientsSeen.size < 10_000) clientsSeen.add(client)
      const result = await limiter.check(client)
      headers = RateLimiter.headers(result)
      if (!result.allowed) {
        req.resume()
        if (client in counts.limitedByClient || Object.keys(counts.limitedByClient).length < 1000) {
          counts.limitedByClient[client] = (counts.limitedByClient[client] ?? 0) + 1
        }
        return send(res, 429, JSON.stringify({ error: `rate limited: ${result.limit} requests per ${clientWindowMs} ms`, retryAfterMs: result.retryAfterMs }), headers)
      }
    }
    const body = parseJson(await readBody(req))
    const out = hot ? await hotRoute(path, body) : await baselineRoute(path, body)
    if (hot) headers['x-cache'] = out.hit ? 'hit' : 'miss'
    send(res, 200, out.value, headers)
  }

  const server = http.createServer((req, res) => {
    handle(req, res).catch((err) => {
      const status = err instanceof HttpError ? err.status : err?.code === 'ERR_QUEUE_FULL' ? 503 : err?.code === 'ERR_TIMEOUT' ? 504 : 500
      if (res.headersSent) return res.destroy()
      send(res, status, JSON.stringify({ error: String(err?.message ?? err), code: err?.code }), {})
    })
  })
  server.keepAliveTimeout = 30_000

  function stats() {
    const gateway = {
      ...counts,
      byStatus: { ...counts.byStatus },
      limitedByClient: { ...counts.limitedByClient },
      cacheHits: counts.cacheLookups - counts.cacheFills,
      cacheHitRatio: counts.cacheLookups ? (counts.cacheLookups - counts.cacheFills) / counts.cacheLookups : 0,
    }
    const out = { mode, instance, pid: process.pid, redis: Boolean(hot && redisUrl), gateway }
    if (hot) {
      out.cache = cache.stats()
      out.limiter = limiter.stats()
      out.embedBatch = embedder.stats()
      out.upstreamQueue = upstreamQ.stats()
      out.cpuQueue = cpuQ.stats()
      out.bufferPool = pool.stats()
    }
    return out
  }

  let closing = null
  /** Stop accepting, let every component drain, and (clear) remove this run's Redis keys. */
  function shutdown({ clear = false } = {}) {
    if (closing) return closing
    closing = (async () => {
      server.close()
      server.closeIdleConnections()
      if (hot) {
        await embedder.close()
        await upstreamQ.close()
        await cpuQ.close()
        if (clear) {
          await cache.clear()
          for (const c of clientsSeen) await limiter.reset(c)
        }
        await Promise.all([cache.close(), limiter.close(), pool.close()])
      }
      agent.destroy()
      server.closeAllConnections()
    })()
    return closing
  }

  return { server, stats, shutdown }
}

if (isMain(import.meta.url)) {
  const { values } = parseArgs({
    options: {
      mode: { type: 'string', default: 'hotpath' },
      port: { type: 'string', default: '0' },
      upstream: { type: 'string' },
      instance: { type: 'string', default: 'A' },
      'client-limit': { type: 'string', default: '600' },
      'client-window-ms': { type: 'string', default: '60000' },
      'upstream-concurrency': { type: 'string', default: '12' },
      'redis-url': { type: 'string' },
      'key-prefix': { type: 'string', default: 'hotpath-demo:' },
    },
  })
  if (values.mode !== 'hotpath' && values.mode !== 'baseline') {
    console.error(`gateway: --mode must be hotpath or baseline, got ${values.mode}`)
    process.exit(2)
  }
  const gw = createGateway({
    // POST /admin/shutdown: exit once the shutdown it started is done.
    onShutdown: (err) => {
      if (err) console.error(`gateway ${values.instance}: shutdown failed: ${err?.stack ?? err}`)
      process.exit(err ? 1 : 0)
    },
    mode: values.mode,
    upstream: values.upstream,
    instance: values.instance,
    clientLimit: Number(values['client-limit']),
    clientWindowMs: Number(values['client-window-ms']),
    upstreamConcurrency: Number(values['upstream-concurrency']),
    redisUrl: values['redis-url'],
    keyPrefix: values['key-prefix'],
  })
  const stop = (clear) =>
    gw.shutdown({ clear }).then(
      () => process.exit(0),
      (e) => {
        console.error(`gateway ${values.instance}: shutdown failed: ${e?.stack ?? e}`)
        process.exit(1)
      },
    )
  gw.server.listen(Number(values.port), '127.0.0.1', () => {
    reportReady(gw.server.address().port, () => stop(false))
  })
  process.on('SIGTERM', () => stop(false))
  process.on('SIGINT', () => stop(false))
}
