'use strict'
// The package entry (CommonJS). index.js is the loader `napi build`
// generates; the classes here are the JS-facing layer over its engines.
const native = require('./native.js')
const { CacheManager } = require('./cache')
const { RateLimiter } = require('./rate_limiter')
const { WorkerQueue } = require('./worker_queue')
const { BatchProcessor } = require('./batch')
const { BufferPool } = require('./buffer_pool')
const { CODES } = require('./errors')
const { advance } = require('./clock')

module.exports = {
  CacheManager,
  RateLimiter,
  WorkerQueue,
  BatchProcessor,
  BufferPool,
  ERROR_CODES: CODES,
  /** Tests only: move hotpath's clock forward by `ms` (TTLs, windows, timers). */
  __advanceClock: advance,
  __native: native,
}
