'use strict'
// Test hooks: deterministic races for the specs. Not part of the public API
// and not exported from 'hotpath' (require('hotpath/lib/testing.js') in tests).
const { testCacheHandles } = require('../index.js')

module.exports = {
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
  /** Make `cache`'s invalidation subscription drop every message (as a
   *  half-open connection would) until it is resubscribed. */
  deafen(cache) {
    cache._n.testDeafen()
  },
  /** Open handles of the named cache (0 when it does not exist). */
  cacheHandles(name) {
    return testCacheHandles(name)
  },
}
