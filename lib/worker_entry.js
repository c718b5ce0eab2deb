'use strict'
// The worker thread of a WorkerQueue in worker-thread mode. It loads the
// user's module (CommonJS or ES module, through import()), then pulls tasks
// from the queue's native core itself: no message per task. See
// src/worker_queue/threads.rs for how it waits for work.
const { workerData, parentPort } = require('node:worker_threads')
const { pathToFileURL } = require('node:url')
const { NativeQueueWorker } = require('./native.js')
const { enc, encode, decode, encodeThrown } = require('./wq_codec')

const { queueId, slot, gen, filename, cap, spinMs } = workerData

let w = null
let sc = null
let bytes = null
let fn = null
let inflight = 0
let looping = false
let stopping = false

function pickDefault(mod) {
  let f = mod.default
  // A CommonJS module compiled from `export default` (exports.default = fn).
  if (typeof f !== 'function' && f !== null && typeof f === 'object' && typeof f.default === 'function') f = f.default
  return f
}

function stop() {
  stopping = true
  if (inflight === 0) process.exit(0)
}

function finish(h, id, ok, v) {
  inflight--
  let fatal = false
  if (ok) {
    try {
      encode(v)
    } catch (e) {
      ok = false
      fatal = true
      encodeThrown(Object.assign(new Error(`the task's result cannot be cloned to the main thread: ${e && e.message}`), { code: 'ERR_TASK_FAILED' }))
    }
  } else {
    encodeThrown(v)
  }
  w.done(h, id, ok, enc.kind, enc.num, enc.str, enc.buf, fatal)
  if (stopping && inflight === 0) process.exit(0)
}

function start(h, id, kind, prim, len) {
  inflight++
  let r
  try {
    const payload = decode(kind, prim, kind >= 5 ? (prim != null ? prim : bytes.subarray(0, len)) : undefined)
    r = fn(payload)
  } catch (e) {
    finish(h, id, false, e)
    return
  }
  if (r !== null && (typeof r === 'object' || typeof r === 'function') && typeof r.then === 'function') {
    Promise.resolve(r).then(
      (v) => {
        finish(h, id, true, v)
        pump()
      },
      (e) => {
        finish(h, id, false, e)
        pump()
      },
    )
  } else {
    finish(h, id, true, r)
  }
}

// Take and run tasks while there is room; called again when an async task
// ends and when the native side wakes this thread.
function pump() {
  if (looping || stopping || w === null) return
  looping = true
  try {
    while (inflight < cap) {
      // Block briefly only when nothing is in flight (nothing else to do).
      const v = w.take(inflight === 0 ? spinMs : 0)
      const st = sc[0]
      if (st === 1) start(sc[1], sc[2], sc[3], v, sc[4])
      else if (st === 0) break
      else {
        stop()
        break
      }
    }
  } finally {
    looping = false
  }
}

async function main() {
  const mod = await import(pathToFileURL(filename).href)
  fn = pickDefault(mod)
  if (typeof fn !== 'function') {
    throw new TypeError(`WorkerQueue: ${filename} has no default export function (got ${fn === null ? 'null' : typeof fn})`)
  }
  w = new NativeQueueWorker(queueId, slot, gen, pump)
  sc = new Float64Array(w.scratch())
  bytes = Buffer.from(w.bytes())
  // Keeps this thread's event loop alive while it sleeps between tasks.
  parentPort.on('message', () => {})
  if (!w.ready()) process.exit(0)
  pump()
}

main()
