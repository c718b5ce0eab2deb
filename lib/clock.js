'use strict'
// The JS side of hotpath's clock. `advance` (tests only) moves both this and
// the native clock, so TTLs and windows can be tested without sleeping.
const { __advanceClock } = require('./native.js')
let offset = 0
const now = () => performance.now() + offset
function advance(ms) {
  offset += ms
  __advanceClock(ms)
}
module.exports = { now, advance }
