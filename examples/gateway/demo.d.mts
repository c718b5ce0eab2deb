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

export type Mode = 'baseline' | 'peers' | 'hotpath'

/** The gateway process's own numbers in GET /stats (gc: memory after a full GC). */
export interface ProcessStats {
  cpuUserUs: number
  cpuSystemUs: number
  rssBytes: number
  heapUsedBytes: number
  heapTotalBytes: number
  externalBytes: number
  gcRan: boolean
  /** Since the last /stats?mark=1: event-loop delay (monitorEventLoopDelay) and GC pauses (PerformanceObserver 'gc'). */
  eventLoopDelayP99Ms: number
  eventLoopDelayMaxMs: number
  gcPauses: number
  gcPauseTotalMs: number
  gcPauseMaxMs: number
}

/**
 * A gateway's GET /stats. The component sections are absent for the
 * baseline; for the peers they hold the counts the gateway keeps around
 * lru-cache/bentocache, rate-limiter-flexible, dataloader, p-queue and piscina
 * (same names where they mean the same thing: limiter.denied, embedBatch.items,
 * cpuQueue.completed, cache.l2Hits with Redis).
 */
export interface GatewayStats {
  mode: Mode
  values: 'string' | 'json'
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
  /** hotpath: CacheManager.stats(); peers: { entries } (lru-cache) or { l1Hits, l2Hits } (bentocache events). */
  cache?: Partial<import('hotpath').CacheStats> & { entries?: number }
  limiter?: { allowed: number; denied: number; keys?: number; redisErrors?: number }
  embedBatch?: { items: number; batches: number; avgBatchSize: number; pending?: number; inFlight?: number; failedBatches?: number; retries?: number }
  upstreamQueue?: { completed: number; failed: number; retried: number; timedOut?: number; queued: number; running: number; avgWaitMs?: number; avgRunMs?: number }
  cpuQueue?: { completed: number; queued: number; failed?: number; retried?: number; timedOut?: number; running?: number; avgWaitMs?: number; avgRunMs?: number }
  /** hotpath only. */
  bufferPool?: { hits: number; misses: number; pooledBytes: number; outstandingBytes: number; allocations: number; releases: number }
  process: ProcessStats
}

export interface Measured {
  load: LoadResult
  upstream: UpstreamStats
  /** Each gateway's /stats?gc=1 right after the load. */
  gateways: GatewayStats[]
  /** Each gateway's /stats right before the load (CPU time is counted from there). */
  before: GatewayStats[]
}

export type MeasuredAll = { baseline: Measured; peers: Measured; hotpath: Measured }
export type Row = [label: string, baseline: string, peers: string, hotpath: string, hotpathOverPeers: string]

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
  /** Share the peers' and the hotpath gateways' cache and limits through this Redis. */
  redisUrl?: string
  /** What the gateways cache: the upstream's answer text (default) or the parsed JSON object. */
  values?: 'string' | 'json'
  /** Runs of peers and of hotpath (default 1), alternating which goes first; the table shows medians. */
  rounds?: number
  /** Where output goes (default process.stdout). */
  write?: (text: string) => void
  /** Progress on one updating line. */
  tty?: boolean
  /** Called after each run's load while its processes are still up. */
  onMeasured?: (ctx: { mode: Mode; round: number; gateways: string[]; upstream: string; measured: Measured }) => Promise<void> | void
}

export interface DemoResult {
  table: string
  rows: Row[]
  /** Each mode's first run. */
  measured: MeasuredAll
  /** Every run of each mode (one for the baseline). */
  rounds: { baseline: Measured[]; peers: Measured[]; hotpath: Measured[] }
  plan: LoadPlan
  keyPrefix: string
}

export function runDemo(options?: DemoOptions): Promise<DemoResult>
export function tableRows(rounds: DemoResult['rounds'], plan: LoadPlan, instances: number): Row[]
/** The median of f over runs (the mean of the middle two for an even count). */
export function median<T>(runs: T[], f: (run: T) => number): number
export function renderTable(rows: Row[]): string
/** hotpath's value over the peers' as "1.23x better|worse|same" (same: within 3%); '' when either is not positive. */
export function ratio(hotpath: number, peers: number, higherIsBetter: boolean): string
/** CPU time per request and GC pauses over the load (all instances; longest: the longest on any), memory at the end (mean per gateway). */
export function gatewayCost(run: Measured): { cpuUsPerRequest: number; rssBytes: number; heapUsedBytes: number; gcPauseTotalMs: number; gcPauseMaxMs: number }
