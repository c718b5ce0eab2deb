'use strict'
// The package entry (CommonJS): what API.md and the README name, nothing
// else. index.js is the loader `napi build` generates; the classes here are
// the JS-facing layer over its engines. Test hooks are in `hotpath/testing`.
const { CacheManager } = require('./cache')
const { RateLimiter } = require('./rate_limiter')
const { WorkerQueue } = require('./worker_queue')
const { BatchProcessor } = require('./batch')
const { BufferPool } = require('./buffer_pool')
const { cached, rateLimited } = require('./decorators')
const { CODES, HotpathError, isHotpathError } = require('./errors')

module.exports = {
  CacheManager,
  RateLimiter,
  WorkerQueue,
  BatchProcessor,
  BufferPool,
  cached,
  rateLimited,
  HotpathError,
  isHotpathError,
  ERROR_CODES: CODES,
}
