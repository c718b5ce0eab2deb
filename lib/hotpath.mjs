// The package entry (ES modules): the same classes as the CommonJS entry.
import { createRequire } from 'node:module'
const require = createRequire(import.meta.url)
const hotpath = require('./hotpath.js')
export const { CacheManager, ERROR_CODES, __advanceClock } = hotpath
export const { RateLimiter } = hotpath
export const { WorkerQueue } = hotpath
export const { BatchProcessor } = hotpath
export const { BufferPool } = hotpath
export const { cached, rateLimited } = hotpath
export default hotpath
