// `hotpath/testing`: hooks for hotpath's own tests (not the public API).

/** Move hotpath's clock forward by `ms` (TTLs, windows, timers) for every instance in the process, without sleeping. */
export declare function __advanceClock(ms: number): void
/** The raw native binding (the generated index.js): engines whose methods trust their callers. */
export declare const __native: typeof import('../index.js')
