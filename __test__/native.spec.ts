// The native half of "no input can crash or hang the process": the runtime's
// lifetime, panics caught at the boundary, numeric arguments checked against
// stated ranges, and the codes shared by Rust and JS. Risky inputs run in a
// child process; the test asserts that the child survives.
import { test, describe } from 'node:test'
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { join } from 'node:path'

const root = join(__dirname, '..')
const fixture = (f: string) => join(__dirname, 'fixtures', f)

/** Run a node script in a child; returns status, signal and output. */
function child(args: string[], timeout = 60_000) {
  const r = spawnSync(process.execPath, args, { cwd: root, encoding: 'utf8', timeout })
  return { status: r.status, signal: r.signal, out: `${r.stdout}\n${r.stderr}` }
}

describe('native runtime', () => {
  test('worker-only use: a later worker gets settling promises after the first exited', () => {
    // Before hotpath owned its runtime, worker 1 timed out here (its promises
    // were spawned on the runtime napi-rs had shut down when worker 0 exited).
    const r = child([fixture('worker_only.cjs'), '3'])
    assert.equal(r.status, 0, r.out)
    assert.match(r.out, /worker 2: ok 2/)
    assert.match(r.out, /ALL SETTLED/)
  })
})

describe('panics become ERR_INTERNAL', () => {
  test('a panic in any class poisons only its instance; the process survives', () => {
    // Before the guards, the first injected panic aborted the child (SIGABRT).
    const r = child([fixture('panic_guard.cjs')])
    assert.equal(r.signal, null, r.out)
    assert.equal(r.status, 0, r.out)
    const line = r.out.split('\n').find((l) => l.startsWith('{'))
    assert.ok(line, r.out)
    const got = JSON.parse(line)
    assert.deepEqual(got, {
      cachePanic: 'ERR_INTERNAL',
      cacheAfter: 'ERR_INTERNAL', // poisoned
      cacheOther: 'ok', // another instance is untouched
      cacheClose: 'ok', // close() still releases a poisoned instance
      limiterPanic: 'ERR_INTERNAL', // raw extern "C" checkSync
      limiterAfter: 'ok',
      batchPanic: 'ERR_INTERNAL', // add() settles (the panic was in a timer's native call)
      batchOther: 'ok',
      poolPanic: 'ERR_INTERNAL',
      poolAfter: 'ERR_INTERNAL',
      queuePanic: 'ERR_INTERNAL',
      queueOther: 'ok',
      ctorPanic: 'ERR_INTERNAL',
    })
  })
})
