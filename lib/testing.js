'use strict'
// `hotpath/testing`: hooks for hotpath's own tests (deterministic races,
// the clock), not part of the public API: they reach into every instance in
// the process.
const native = require('./native.js')
const { advance } = require('./clock')

module.exports = {
  /** Move hotpath's clock forward by `ms` (TTLs, windows, timers), for every instance in the process. */
  __advanceClock: advance,
  /** The raw native binding (index.js). */
  __native: native,
  /** Pause every L1 fill of `cache` between its L2 read and the fill. */
  pauseFills(cache, on = true) {
    cache._n.testPauseFills(on)
  },
  /** Resolves when one of `cache`'s fills reached the pause. */
  fillReached(cache) {
    return cache._n.testFillReached()
  },
  /** Let one paused fill of `cache` go on. */
  releaseFill(cache) {
    cache._n.testReleaseFill()
  },
  /** Pause `cache`'s write path before it sends each batch of L2 writes and deletes. */
  pauseWrites(cache, on = true) {
    cache._n.testPauseWrites(on)
  },
  /** Resolves when `cache`'s write path reached the pause with a batch. */
  writeReached(cache) {
    return cache._n.testWriteReached()
  },
  /** Let `cache`'s paused write path send one batch. */
  releaseWrite(cache) {
    cache._n.testReleaseWrite()
  },
  /** Make `cache`'s invalidation subscription drop every message (as a
   *  half-open connection would) until it is resubscribed. */
  deafen(cache) {
    cache._n.testDeafen()
  },
  /** Open handles of the named cache (0 when it does not exist). */
  cacheHandles(name) {
    return native.testCacheHandles(name)
  },
  /** The next guarded native call (any instance, any class) panics inside
   *  its guard: it fails with ERR_INTERNAL and poisons only its instance. */
  panicNextCall() {
    native.testPanicNextCall()
  },
  /** CacheManager deleteLater tasks alive in the process (close() ends them). */
  liveDeleteLaterTasks() {
    return native.testLiveDeleteLaterTasks()
  },
  /** This thread's Redis Cluster routing on the JS-thread path (counts). */
  clusterRoutes() {
    const [sent, moved, ask, retried, refreshes] = native.testRedisClusterRoutes()
    return { sent, moved, ask, retried, refreshes }
  },
}
