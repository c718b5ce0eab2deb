// `hotpath/testing`: hooks for hotpath's own tests (not the public API).
import type { CacheManager } from './hotpath.js'

/** Move hotpath's clock forward by `ms` (TTLs, windows, timers) for every instance in the process, without sleeping. */
export declare function __advanceClock(ms: number): void
/** The raw native binding (the generated index.js): engines whose methods trust their callers. */
export declare const __native: typeof import('../index.js')
/** Pause every L1 fill of `cache` between its L2 read and the fill. */
export declare function pauseFills(cache: CacheManager<any>, on?: boolean): void
/** Resolves when one of `cache`'s fills reached the pause. */
export declare function fillReached(cache: CacheManager<any>): Promise<void>
/** Let one paused fill of `cache` go on. */
export declare function releaseFill(cache: CacheManager<any>): void
/** Pause `cache`'s write path before it sends each batch of L2 writes and deletes. */
export declare function pauseWrites(cache: CacheManager<any>, on?: boolean): void
/** Resolves when `cache`'s write path reached the pause with a batch. */
export declare function writeReached(cache: CacheManager<any>): Promise<void>
/** Let `cache`'s paused write path send one batch. */
export declare function releaseWrite(cache: CacheManager<any>): void
/** Make `cache`'s invalidation subscription drop every message (as a half-open connection would) until it is resubscribed. */
export declare function deafen(cache: CacheManager<any>): void
/** Open handles of the named cache (0 when it does not exist). */
export declare function cacheHandles(name: string): number
/** The next guarded native call (any instance, any class) panics inside its guard: it fails with ERR_INTERNAL and poisons only its instance. */
export declare function panicNextCall(): void
/** CacheManager deleteLater tasks alive in the process (close() ends them). */
export declare function liveDeleteLaterTasks(): number
/** This thread's Redis Cluster routing on the JS-thread path: sends routed, MOVED and ASK followed, sends retried after TRYAGAIN/CLUSTERDOWN, CLUSTER SLOTS reads. */
export declare function clusterRoutes(): { sent: number; moved: number; ask: number; retried: number; refreshes: number }
