// The package entry (ES modules): the same names as the CommonJS entry.
import { createRequire } from 'node:module'
const require = createRequire(import.meta.url)
const hotpath = require('./hotpath.js')
export const { CacheManager, RateLimiter, WorkerQueue, BatchProcessor, BufferPool, cached, rateLimited, HotpathError, isHotpathError, ERROR_CODES } = hotpath
export default hotpath
