// `hotpath/testing` (ES modules): the same hooks as the CommonJS entry.
import { createRequire } from 'node:module'
const require = createRequire(import.meta.url)
const testing = require('./testing.js')
export const { __advanceClock, __native, pauseFills, fillReached, releaseFill, pauseWrites, writeReached, releaseWrite, deafen, cacheHandles, panicNextCall, liveDeleteLaterTasks, clusterRoutes } = testing
export default testing
