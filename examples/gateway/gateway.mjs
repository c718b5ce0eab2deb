// An agent gateway: the HTTP service AI agents call for completions,
// embeddings, retrieval and document ingestion, in front of a slow,
// rate-limited model API (upstream.mjs).
//
//   node examples/gateway/gateway.mjs --upstream http://127.0.0.1:PORT [--mode hotpath|peers|baseline]
//     [--values string|json] [--port 0] [--client-limit 600] [--client-window-ms 60000]
//     [--upstream-concurrency 12] [--redis-url redis://...] [--key-prefix demo:] [--instance A]
//
// Three builds of the same service:
//
// --mode baseline is the naive gateway: one direct upstream call per request,
// no cache, no batching, no limits, bodies gathered with Buffer.concat,
// chunking on the event loop.
//
// --mode hotpath (the default) and --mode peers have the same routes and the
// same policies (cache TTL and keys, single-flight, per-client limit,
// embedding batches of at most 64 that wait at most 10 ms, upstream
// concurrency cap with 2 retries, chunking in 2 worker threads). hotpath
// builds them on its five primitives, peers on the npm packages a careful
// Node engineer would use today, each set up as its docs recommend:
//
//   what                  hotpath          peers (embedded)                  peers (--redis-url)
//   per-client limit      RateLimiter      rate-limiter-flexible             RateLimiterRedis (ioredis,
//                                          RateLimiterMemory                 enableOfflineQueue: false, insurance limiter)
//   response cache with   CacheManager     lru-cache (fetch + fetchMethod:   bentocache: memory L1 + Redis L2
//   single-flight         getOrSet         concurrent fetches share one)     + Redis bus (getOrSet)
//   embedding batches     BatchProcessor   dataloader (batchScheduleFn 10 ms, maxBatchSize 64, cache: false)
//   upstream cap          WorkerQueue      p-queue (concurrency, timeout) + a 2-retry loop
//   chunking threads      WorkerQueue      piscina (2 threads, chunk-worker.mjs)
//   bodies                BufferPool for   Buffer.allocUnsafe(content-length); res.end(string)
//                         8 KiB and more,
//                         else as peers
//
// --values json caches what the upstream answered as parsed JSON objects (as
// gateways usually do) and serializes them for each response; --values string
// (the default) caches the answer's text. The baseline parses and serializes
// too with --values json, so every mode does the same JSON work per answer.
//
// Routes: POST /v1/complete {prompt, model?}, POST /v1/embed {input},
// POST /v1/retrieve {query, k?}, POST /v1/ingest {id, text},
// GET /stats[?gc=1][&mark=1] (the gateway's counts, every component's stats,
// and this process's CPU time, memory, event-loop delay and GC pauses; gc=1
// runs a full GC first when node was started with --expose-gc; mark=1 restarts
// the event-loop delay and GC pause counts), GET /healthz, POST /admin/shutdown {clear?}.
import http from 'node:http'
import { PerformanceObserver, monitorEventLoopDelay } from 'node:perf_hooks'
import { parseArgs } from 'node:util'
import { fileURLToPath } from 'node:url'
import { MODES, VALUES, isMain, reportReady, sha256, sleep } from './common.mjs'
import { chunkText } from './chunk-worker.mjs'

const MAX_BODY_BYTES = 4 << 20
const MAX_EMBED_BATCH = 64 // the upstream's limit
const EMBED_WAIT_MS = 10
const CHUNK_SIZE = 1000
const CHUNK_THREADS = 2
const UPSTREAM_RETRIES = 2
const UPSTREAM_RETRY_BACKOFF_MS = 50
const UPSTREAM_TIMEOUT_MS = 15_000
const UPSTREAM_MAX_QUEUE = 10_000
const CACHE_MAX_ENTRIES = 100_000
// Bodies at least this large go through hotpath's BufferPool; smaller ones are
// Buffer.allocUnsafe slices of Node's shared 8 KiB slab, which is cheaper for
// them than any pool (a pooled Buffer is one native call to get and one to give back).
const POOL_MIN_BYTES = 8 << 10
const chunkWorkerFile = fileURLToPath(new URL('./chunk-worker.mjs', import.meta.url))

class HttpError extends Error {
  constructor(status, message) {
    super(message)
    this.status = status
  }
}

/** RateLimit-* headers as RateLimiter.headers() writes them, from rate-limiter-flexible's RateLimiterRes. */
function peerLimitHeaders(limit, res, allowed) {
  const resetS = Math.ceil(res.msBeforeNext / 1000)
  const h = { 'RateLimit-Limit': String(limit), 'RateLimit-Remaining': String(Math.max(0, res.remainingPoints)), 'RateLimit-Reset': String(resetS) }
  if (!allowed) h['Retry-After'] = String(resetS)
  return h
}

/**
 * The hotpath build of the gateway's components.
 * Each component object: cached(key, fetch) -> {value, hit}, limit(client), upstream(fn),
 * chunk(payload), embed(input), allocate/release (bodies), stats(), close(clear, clients).
 */
async function hotpathComponents({ redisUrl, keyPrefix, cacheTtlMs, clientLimit, clientWindowMs, upstreamConcurrency, embedBatch, counts }) {
  // Each mode loads only its own libraries, so the memory rows compare the stacks, not the imports.
  const { CacheManager, RateLimiter, BatchProcessor, BufferPool, WorkerQueue } = await import('hotpath')
  const redis = redisUrl ? (suffix) => ({ redis: { url: redisUrl, keyPrefix: `${keyPrefix}${suffix}` } }) : () => ({})
  const cache = new CacheManager({ maxEntries: CACHE_MAX_ENTRIES, ttlMs: cacheTtlMs, ...redis('cache:') })
  const limiter = new RateLimiter({ limit: clientLimit, windowMs: clientWindowMs, algorithm: 'sliding-window', ...redis('limit:') })
  // Every upstream call goes through this queue: never more than
  // upstreamConcurrency in flight, so the upstream's own limit is not hit
  // (and if it is, the call is retried with backoff instead of failing).
  const upstreamQ = new WorkerQueue({
    concurrency: upstreamConcurrency,
    maxQueueSize: UPSTREAM_MAX_QUEUE,
    retries: UPSTREAM_RETRIES,
    retryBackoffMs: UPSTREAM_RETRY_BACKOFF_MS,
    timeoutMs: UPSTREAM_TIMEOUT_MS,
  })
  // CPU work (chunk + sha256 a document) in worker threads.
  const cpuQ = new WorkerQueue({ workers: { filename: chunkWorkerFile, threads: CHUNK_THREADS }, concurrency: CHUNK_THREADS, timeoutMs: UPSTREAM_TIMEOUT_MS })
  // Single embedding requests wait up to 10 ms to share one upstream call.
  const embedder = new BatchProcessor((inputs) => embedBatch(inputs, (fn) => upstreamQ.add(fn)), {
    maxBatchSize: MAX_EMBED_BATCH,
    maxWaitMs: EMBED_WAIT_MS,
    concurrency: upstreamConcurrency,
  })
  const pool = new BufferPool({ chunkSize: 1 << 20, maxPooledBytes: 32 << 20 })
  return {
    async cached(key, fetch) {
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
    },
    async limit(client) {
      const r = await limiter.check(client)
      return { allowed: r.allowed, headers: RateLimiter.headers(r), retryAfterMs: r.retryAfterMs }
    },
    upstream: (fn) => upstreamQ.add(fn),
    chunk: (payload) => cpuQ.run(payload),
    embed: (input) => embedder.add(input),
    // Small bodies come from Node's own slab (allocUnsafe), as the BufferPool
    // section of the README advises: the pool is for large buffers.
    allocate: (n) => (n < POOL_MIN_BYTES ? Buffer.allocUnsafe(n) : pool.allocate(n)),
    release: (buf) => {
      if (buf.length >= POOL_MIN_BYTES) pool.release(buf)
    },
    stats: () => ({
      cache: cache.stats(),
      limiter: limiter.stats(),
      embedBatch: embedder.stats(),
      upstreamQueue: upstreamQ.stats(),
      cpuQueue: cpuQ.stats(),
      bufferPool: pool.stats(),
    }),
    async close(clear, clients) {
      await embedder.close()
      await upstreamQ.close()
      await cpuQ.close()
      if (clear) {
        await cache.clear()
        for (const c of clients) await limiter.reset(c)
      }
      await Promise.all([cache.close(), limiter.close(), pool.close()])
    },
  }
}

/** The same components built on the npm peers, as their docs recommend (see the table at the top). */
async function peerComponents({ redisUrl, keyPrefix, cacheTtlMs, clientLimit, clientWindowMs, upstreamConcurrency, embedBatch, counts }) {
  const [{ RateLimiterMemory, RateLimiterRedis }, { default: DataLoader }, { default: PQueue }, { Piscina }] = await Promise.all([
    import('rate-limiter-flexible'),
    import('dataloader'),
    import('p-queue'),
    import('piscina'),
  ])
  const closers = []
  const ready = []
  let cachedFn, cacheStats, cacheClear
  let rlf
  const l2 = { l1Hits: 0, l2Hits: 0 }
  if (redisUrl) {
    const [{ BentoCache, bentostore }, { memoryDriver }, { redisDriver, redisBusDriver }, { Redis }] = await Promise.all([
      import('bentocache'),
      import('bentocache/drivers/memory'),
      import('bentocache/drivers/redis'),
      import('ioredis'),
    ])
    // bentocache: a memory L1 in each process, Redis as L2, and the Redis bus
    // that keeps the other instances' L1 coherent (its multi-tier setup).
    const connection = new Redis(redisUrl, { lazyConnect: false })
    ready.push(new Promise((resolve, reject) => connection.once('ready', resolve).once('error', reject)))
    const bento = new BentoCache({
      default: 'cache',
      prefix: `${keyPrefix}peers-cache`,
      stores: {
        cache: bentostore()
          .useL1Layer(memoryDriver({ maxItems: CACHE_MAX_ENTRIES }))
          .useL2Layer(redisDriver({ connection }))
          .useBus(redisBusDriver({ connection })),
      },
    })
    bento.on('cache:hit', ({ layer }) => {
      if (layer === 'l2') l2.l2Hits++
      else l2.l1Hits++
    })
    cachedFn = async (key, fetch) => {
      let filled = false
      const value = await bento.getOrSet({
        key,
        ttl: cacheTtlMs,
        factory: () => {
          filled = true
          counts.cacheFills++
          return fetch()
        },
      })
      return { value, hit: !filled }
    }
    cacheStats = () => ({ ...l2 })
    cacheClear = () => bento.clear()
    closers.push(async () => {
      await bento.disconnectAll()
      connection.disconnect()
    })
    // rate-limiter-flexible's Redis setup: its own ioredis client with the
    // offline queue off (fail fast when Redis is down), and an in-memory
    // insurance limiter that takes over while Redis is unreachable.
    const limitClient = new Redis(redisUrl, { enableOfflineQueue: false })
    ready.push(new Promise((resolve, reject) => limitClient.once('ready', resolve).once('error', reject)))
    const duration = Math.ceil(clientWindowMs / 1000)
    rlf = new RateLimiterRedis({
      storeClient: limitClient,
      keyPrefix: `${keyPrefix}peers-limit`,
      points: clientLimit,
      duration,
      insuranceLimiter: new RateLimiterMemory({ points: clientLimit, duration }),
    })
    closers.push(async () => limitClient.disconnect())
  } else {
    const { LRUCache } = await import('lru-cache')
    // lru-cache: fetch() with a fetchMethod is its single-flight getOrSet
    // (concurrent fetches of one key share one call); the route's own fetch
    // rides in the context.
    const lru = new LRUCache({
      max: CACHE_MAX_ENTRIES,
      ttl: cacheTtlMs,
      fetchMethod: (_key, _stale, { context }) => context(),
    })
    cachedFn = async (key, fetch) => {
      let filled = false
      const value = await lru.fetch(key, {
        context: () => {
          filled = true
          counts.cacheFills++
          return fetch()
        },
      })
      return { value, hit: !filled }
    }
    cacheStats = () => ({ entries: lru.size })
    cacheClear = async () => lru.clear()
    rlf = new RateLimiterMemory({ points: clientLimit, duration: Math.ceil(clientWindowMs / 1000) })
  }

  const limiterStats = { allowed: 0, denied: 0 }
  // p-queue caps upstream concurrency; the retry loop stands in for
  // WorkerQueue's retries (p-queue has none).
  const upstreamQ = new PQueue({ concurrency: upstreamConcurrency, timeout: UPSTREAM_TIMEOUT_MS, throwOnTimeout: true })
  const queueStats = { completed: 0, failed: 0, retried: 0 }
  async function withRetries(fn) {
    for (let attempt = 0; ; attempt++) {
      try {
        return await fn()
      } catch (e) {
        if (attempt >= UPSTREAM_RETRIES) throw e
        queueStats.retried++
        await sleep(UPSTREAM_RETRY_BACKOFF_MS * 2 ** attempt)
      }
    }
  }
  const upstream = (fn) => {
    if (upstreamQ.size >= UPSTREAM_MAX_QUEUE) return Promise.reject(new HttpError(503, 'upstream queue full'))
    return upstreamQ.add(() => withRetries(fn)).then(
      (v) => {
        queueStats.completed++
        return v
      },
      (e) => {
        queueStats.failed++
        throw e
      },
    )
  }
  const piscina = new Piscina({ filename: chunkWorkerFile, minThreads: CHUNK_THREADS, maxThreads: CHUNK_THREADS })
  const batchStats = { items: 0, batches: 0 }
  // dataloader: one long-lived loader that batches across requests; the
  // 10 ms window is its documented batchScheduleFn; its per-key memo cache is
  // off because caching is the response cache's job.
  const loader = new DataLoader(
    (inputs) => {
      batchStats.batches++
      batchStats.items += inputs.length
      return embedBatch(inputs, upstream)
    },
    { maxBatchSize: MAX_EMBED_BATCH, batchScheduleFn: (cb) => setTimeout(cb, EMBED_WAIT_MS), cache: false },
  )
  await Promise.all(ready)
  return {
    cached: cachedFn,
    async limit(client) {
      try {
        const r = await rlf.consume(client)
        limiterStats.allowed++
        return { allowed: true, headers: peerLimitHeaders(clientLimit, r, true), retryAfterMs: 0 }
      } catch (r) {
        if (r instanceof Error) throw r
        limiterStats.denied++
        return { allowed: false, headers: peerLimitHeaders(clientLimit, r, false), retryAfterMs: r.msBeforeNext }
      }
    },
    upstream,
    chunk: (payload) => piscina.run(payload),
    embed: (input) => loader.load(input),
    allocate: (n) => Buffer.allocUnsafe(n),
    release: () => {},
    stats: () => ({
      cache: cacheStats(),
      limiter: { ...limiterStats },
      embedBatch: { ...batchStats, avgBatchSize: batchStats.batches ? batchStats.items / batchStats.batches : 0 },
      upstreamQueue: { ...queueStats, queued: upstreamQ.size, running: upstreamQ.pending },
      cpuQueue: { completed: piscina.completed, queued: piscina.queueSize },
    }),
    async close(clear, clients) {
      await upstreamQ.onIdle()
      await piscina.close()
      if (clear) {
        await cacheClear()
        for (const c of clients) await rlf.delete(c)
      }
      for (const c of closers) await c()
    },
  }
}

export async function createGateway(options) {
  const {
    mode = 'hotpath',
    values = 'string',
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
  if (!MODES.includes(mode)) throw new Error(`createGateway: mode must be one of ${MODES.join(', ')}, got ${mode}`)
  if (!VALUES.includes(values)) throw new Error(`createGateway: values must be one of ${VALUES.join(', ')}, got ${values}`)
  const json = values === 'json'
  // What the routes cache: the upstream's text, or (--values json) the object it encodes.
  const decode = json ? (text) => JSON.parse(text) : (text) => text
  const encode = (v) => (typeof v === 'string' ? v : JSON.stringify(v))

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
          const chunks = []
          res.on('data', (c) => chunks.push(c))
          res.on('end', () => {
            const text = Buffer.concat(chunks).toString('utf8')
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

  /** One upstream /v1/embed/batch call through `queue`: one cacheable value per input. */
  async function embedBatch(inputs, queue) {
    const text = await queue(() => post('/v1/embed/batch', JSON.stringify({ inputs })))
    const { embeddings } = JSON.parse(text)
    return json ? embeddings : embeddings.map((e) => JSON.stringify(e))
  }

  // ---- the components (hotpath or peers; none for the baseline) ----
  const shared = { redisUrl, keyPrefix, cacheTtlMs, clientLimit, clientWindowMs, upstreamConcurrency, embedBatch, counts }
  const parts = mode === 'hotpath' ? await hotpathComponents(shared) : mode === 'peers' ? await peerComponents(shared) : null

  function cached(key, fetch) {
    counts.cacheLookups++
    return parts.cached(key, fetch)
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
      // (Checked before building the error: 'close' comes after every request.)
      req.on('close', () => settled || settle(new HttpError(400, 'the client closed the request before its body ended')))
      req.on('error', (e) => settle(e))
      if (parts && Number.isInteger(declared) && declared > 0) {
        // One buffer of the declared size (Buffer.allocUnsafe, or from the
        // BufferPool for a large body in hotpath mode): no chunk list, no
        // concat. (Released on every path; a pooled one that is not would be
        // reclaimed by GC.)
        let buf = parts.allocate(declared)
        let off = 0
        const release = () => {
          if (buf !== null) parts.release(buf)
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
      const chunks = []
      let n = 0
      req.on('data', (c) => {
        n += c.length
        if (n <= MAX_BODY_BYTES) chunks.push(c)
      })
      req.on('end', () => settle(n > MAX_BODY_BYTES ? new HttpError(413, `body over ${MAX_BODY_BYTES} bytes`) : null, Buffer.concat(chunks).toString('utf8')))
    })
  }

  function send(res, status, text, headers) {
    counts.requests++
    counts.byStatus[status] = (counts.byStatus[status] ?? 0) + 1
    const n = Buffer.byteLength(text)
    res.writeHead(status, { ...headers, 'content-type': 'application/json', 'content-length': n })
    if (mode !== 'hotpath' || n < POOL_MIN_BYTES) return res.end(text)
    // A large response: a pooled buffer, back to the pool once the socket has it.
    const buf = parts.allocate(n)
    buf.write(text, 0, 'utf8')
    let released = false
    const release = () => {
      if (!released) {
        released = true
        parts.release(buf)
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

  const embedBody = (embedding) => (json ? JSON.stringify({ embedding }) : `{"embedding":${embedding}}`)

  // ---- routes: one set for hotpath and peers (only the components differ) ----
  async function cachingRoute(path, body) {
    switch (path) {
      case '/v1/complete': {
        const prompt = str(body.prompt, 'prompt')
        const model = typeof body.model === 'string' ? body.model : 'sim-1'
        const payload = JSON.stringify({ model, prompt })
        const r = await cached(`complete:${model}:${sha256(prompt)}`, () => parts.upstream(() => post('/v1/complete', payload)).then(decode))
        return { value: encode(r.value), hit: r.hit }
      }
      case '/v1/embed': {
        const input = str(body.input, 'input')
        const r = await cached(`embed:${sha256(input)}`, () => parts.embed(input))
        return { value: embedBody(r.value), hit: r.hit }
      }
      case '/v1/retrieve': {
        const query = str(body.query, 'query')
        const k = Number.isInteger(body.k) && body.k > 0 && body.k <= 10 ? body.k : 3
        const payload = JSON.stringify({ query, k })
        const r = await cached(`retrieve:${k}:${sha256(query)}`, () => parts.upstream(() => post('/v1/retrieve', payload)).then(decode))
        return { value: encode(r.value), hit: r.hit }
      }
      case '/v1/ingest': {
        const text = str(body.text, 'text')
        const chunks = await parts.chunk({ text, size: CHUNK_SIZE })
        const done = await Promise.all(chunks.map((c) => cached(`embed:${c.hash}`, () => parts.embed(text.slice(c.start, c.end)))))
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
        return { value: encode(decode(await post('/v1/complete', JSON.stringify({ model, prompt })))) }
      }
      case '/v1/embed': {
        const input = str(body.input, 'input')
        const [embedding] = await embedBatch([input], (fn) => fn())
        return { value: embedBody(embedding) }
      }
      case '/v1/retrieve': {
        const query = str(body.query, 'query')
        const k = Number.isInteger(body.k) && body.k > 0 && body.k <= 10 ? body.k : 3
        return { value: encode(decode(await post('/v1/retrieve', JSON.stringify({ query, k })))) }
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
    const [path, query = ''] = req.url.split('?')
    if (req.method === 'GET' && path === '/stats') {
      req.resume()
      const flag = (name) => new RegExp(`(^|&)${name}=1(&|$)`).test(query)
      const out = JSON.stringify(stats({ gc: flag('gc') }))
      if (flag('mark')) mark() // the event-loop delay and GC numbers count from here
      return res.writeHead(200, { 'content-type': 'application/json' }).end(out)
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
    if (parts) {
      const client = String(req.headers['x-api-key'] || req.socket.remoteAddress || 'anonymous')
      if (clientsSeen.size < 10_000) clientsSeen.add(client)
      const result = await parts.limit(client)
      headers = result.headers
      if (!result.allowed) {
        req.resume()
        if (client in counts.limitedByClient || Object.keys(counts.limitedByClient).length < 1000) {
          counts.limitedByClient[client] = (counts.limitedByClient[client] ?? 0) + 1
        }
        return send(res, 429, JSON.stringify({ error: `rate limited: ${clientLimit} requests per ${clientWindowMs} ms`, retryAfterMs: result.retryAfterMs }), headers)
      }
    }
    const body = parseJson(await readBody(req))
    const out = parts ? await cachingRoute(path, body) : await baselineRoute(path, body)
    if (parts) headers['x-cache'] = out.hit ? 'hit' : 'miss'
    send(res, 200, out.value, headers)
  }

  const server = http.createServer((req, res) => {
    handle(req, res).catch((err) => {
      const status =
        err instanceof HttpError ? err.status : err?.code === 'ERR_QUEUE_FULL' ? 503 : err?.code === 'ERR_TIMEOUT' || err?.name === 'TimeoutError' ? 504 : 500
      if (res.headersSent) return res.destroy()
      send(res, status, JSON.stringify({ error: String(err?.message ?? err), code: err?.code }), {})
    })
  })
  server.keepAliveTimeout = 30_000

  // How late the event loop ran its callbacks (a blocked or starved loop delays every request),
  // and the garbage collector's pauses (during which this gateway answers nobody).
  const loopDelay = monitorEventLoopDelay({ resolution: 10 })
  loopDelay.enable()
  const gcPauses = { count: 0, totalMs: 0, maxMs: 0 }
  const gcObserver = new PerformanceObserver((list) => {
    for (const e of list.getEntries()) {
      gcPauses.count++
      gcPauses.totalMs += e.duration
      if (e.duration > gcPauses.maxMs) gcPauses.maxMs = e.duration
    }
  })
  gcObserver.observe({ entryTypes: ['gc'] })
  const mark = () => {
    loopDelay.reset()
    gcPauses.count = gcPauses.totalMs = gcPauses.maxMs = 0
  }

  /** This process's CPU time so far and its memory now (after a full GC if asked and node has --expose-gc). */
  function processStats(gc) {
    const cpu = process.cpuUsage() // before the GC below, which is the measurement's, not the load's
    const gcSinceMark = { gcPauses: gcPauses.count, gcPauseTotalMs: gcPauses.totalMs, gcPauseMaxMs: gcPauses.maxMs }
    const gcRan = Boolean(gc && typeof globalThis.gc === 'function')
    if (gcRan) globalThis.gc()
    const mem = process.memoryUsage()
    return {
      cpuUserUs: cpu.user,
      cpuSystemUs: cpu.system,
      rssBytes: mem.rss,
      heapUsedBytes: mem.heapUsed,
      heapTotalBytes: mem.heapTotal,
      externalBytes: mem.external,
      gcRan,
      // Since the last /stats?mark=1 (the demo marks right before its load):
      eventLoopDelayP99Ms: loopDelay.percentile(99) / 1e6,
      eventLoopDelayMaxMs: loopDelay.max / 1e6,
      ...gcSinceMark,
    }
  }

  function stats({ gc = false } = {}) {
    const gateway = {
      ...counts,
      byStatus: { ...counts.byStatus },
      limitedByClient: { ...counts.limitedByClient },
      cacheHits: counts.cacheLookups - counts.cacheFills,
      cacheHitRatio: counts.cacheLookups ? (counts.cacheLookups - counts.cacheFills) / counts.cacheLookups : 0,
    }
    return { mode, values, instance, pid: process.pid, redis: Boolean(parts && redisUrl), gateway, ...parts?.stats(), process: processStats(gc) }
  }

  let closing = null
  /** Stop accepting, let every component drain, and (clear) remove this run's Redis keys. */
  function shutdown({ clear = false } = {}) {
    if (closing) return closing
    closing = (async () => {
      server.close()
      server.closeIdleConnections()
      if (parts) await parts.close(clear, clientsSeen)
      agent.destroy()
      server.closeAllConnections()
      loopDelay.disable()
      gcObserver.disconnect()
    })()
    return closing
  }

  return { server, stats, shutdown }
}

if (isMain(import.meta.url)) {
  const { values } = parseArgs({
    options: {
      mode: { type: 'string', default: 'hotpath' },
      values: { type: 'string', default: 'string' },
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
  if (!MODES.includes(values.mode) || !VALUES.includes(values.values)) {
    console.error(`gateway: --mode must be one of ${MODES.join(', ')} (got ${values.mode}); --values one of ${VALUES.join(', ')} (got ${values.values})`)
    process.exit(2)
  }
  let gw
  try {
    gw = await createGateway({
      // POST /admin/shutdown: exit once the shutdown it started is done.
      onShutdown: (err) => {
        if (err) console.error(`gateway ${values.instance}: shutdown failed: ${err?.stack ?? err}`)
        process.exit(err ? 1 : 0)
      },
      mode: values.mode,
      values: values.values,
      upstream: values.upstream,
      instance: values.instance,
      clientLimit: Number(values['client-limit']),
      clientWindowMs: Number(values['client-window-ms']),
      upstreamConcurrency: Number(values['upstream-concurrency']),
      redisUrl: values['redis-url'],
      keyPrefix: values['key-prefix'],
    })
  } catch (e) {
    console.error(`gateway ${values.instance}: could not start: ${e?.stack ?? e}`)
    process.exit(1)
  }
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
