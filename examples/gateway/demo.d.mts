// Types of demo.mjs for TypeScript callers (the integration test).

/** What the load generator measured in one run (client side). */
export interface LoadResult {
  sent: number
  wallMs: number
  requestsPerSec: number
  ok: number
  limited: number
  errors: number
  byStatus: Record<string, number>
  byClient: Record<string, { sent: number; ok: number; limited: number; errors: number }>
  limitedByClient: Record<string, number>
  abusiveAllowed: number
  p50Ms: number
  p99Ms: number
  byRoute: Record<string, { ok: number; p50Ms: number; p99Ms: number }>
  xCache: { hit: number; miss: number }
  wrong: number
  perTarget: { url: string; sent: number; byStatus: Record<string, number> }[]
  errorSamples: string[]
}

/** The simulated model API's GET /stats. */
export interface UpstreamStats {
  calls: number
  completeCalls: number
  embedBatchCalls: number
  embedItems: number
  retrieveCalls: number
  rejected429: number
  badRequests: number
  completeDuplicates: number
  embedDuplicates: number
  retrieveDuplicates: number
  inFlight: number
  peakConcurrent: number
  maxConcurrent: number
  avgEmbedBatchSize: number
}

/** A gateway's GET /stats (the component sections only in hotpath mode). */
export interface GatewayStats {
  mode: 'baseline' | 'hotpath'
  instance: string
  pid: number
  redis: boolean
  gateway: {
    requests: number
    byStatus: Record<string, number>
    limitedByClient: Record<string, number>
    upstreamRequests: number
    upstreamErrors: number
    cacheLookups: number
    cacheFills: number
    cacheHits: number
    cacheHitRatio: number
  }
  cache?: import('hotpath').CacheStats
  limiter?: { allowed: number; denied: number; keys: number; redisErrors: number }
  embedBatch?: { items: number; batches: number; avgBatchSize: number; pending: number; inFlight: number; failedBatches: number; retries: number }
  upstreamQueue?: { completed: number; failed: number; retried: number; timedOut: number; queued: number; running: number; avgWaitMs: number; avgRunMs: number }
  cpuQueue?: { completed: number; failed: number; retried: number; timedOut: number; queued: number; running: number; avgWaitMs: number; avgRunMs: number }
  bufferPool?: { hits: number; misses: number; pooledBytes: number; outstandingBytes: number; allocations: number; releases: number }
}

export interface Measured {
  load: LoadResult
  upstream: UpstreamStats
  gateways: GatewayStats[]
}

export interface LoadPlan {
  requests: number
  clientLimit: number
  windowMs: number
  abusiveKey: string
  clients: { key: string; abusive: boolean; connections: number; items: unknown[] }[]
  bursts: { at: number; items: unknown[] }[]
}

export interface DemoOptions {
  /** Total requests per run (default 2000, at least 100). */
  requests?: number
  /** Gateway processes (more than 1 needs redisUrl). */
  instances?: number
  /** Share the hotpath gateways' cache and limits through this Redis. */
  redisUrl?: string
  /** Where output goes (default process.stdout). */
  write?: (text: string) => void
  /** Progress on one updating line. */
  tty?: boolean
  /** Called after each run's load while its processes are still up. */
  onMeasured?: (ctx: { mode: 'baseline' | 'hotpath'; gateways: string[]; upstream: string; measured: Measured }) => Promise<void> | void
}

export interface DemoResult {
  table: string
  rows: [string, string, string, string][]
  measured: { baseline: Measured; hotpath: Measured }
  plan: LoadPlan
  keyPrefix: string
}

export function runDemo(options?: DemoOptions): Promise<DemoResult>
export function tableRows(measured: { baseline: Measured; hotpath: Measured }, plan: LoadPlan, instances: number): [string, string, string, string][]
export function renderTable(rows: [string, string, string, string][]): string
