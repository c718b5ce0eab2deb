'use strict'
// `hotpath/testing`: hooks for hotpath's own tests, not part of the public
// API (they reach into every instance in the process).
const native = require('../index.js')
const { advance } = require('./clock')

module.exports = {
  /** Move hotpath's clock forward by `ms` (TTLs, windows, timers), for every instance in the process. */
  __advanceClock: advance,
  /** The raw native binding (index.js). */
  __native: native,
}
