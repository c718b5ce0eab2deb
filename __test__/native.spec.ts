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

describe('numeric arguments are checked against stated ranges', () => {
  test('every duration/count/size option and argument: the values that used to abort the process are ERR_INVALID_ARG', () => {
    // Before src/validate.rs, the first of these (ttlMs: 1e308) aborted the child with SIGABRT.
    const r = child([fixture('bad_numbers.cjs')])
    assert.equal(r.signal, null, r.out)
    assert.equal(r.status, 0, r.out)
    const line = r.out.split('\n').find((l) => l.startsWith('{'))
    assert.ok(line, r.out)
    const got: Record<string, string> = JSON.parse(line)
    // Infinity means "unbounded" where the docs say so.
    const infinityOk = new Set(['batch.maxBatchSize', 'batch.concurrency', 'batch.maxPending', 'queue.concurrency', 'queue.maxQueueSize', 'queue.timeoutMs', 'limiter.maxWaiters', 'native.limiter.maxWaiters', 'native.batch.maxPending', 'native.queue.timeoutMs'])
    let checked = 0
    for (const [k, v] of Object.entries(got)) {
      const [what, label] = k.split('=')
      if (label === 'Infinity' && infinityOk.has(what)) {
        assert.equal(v, 'ok', k)
        continue
      }
      assert.match(v, /^ERR_INVALID_ARG /, `${k}: ${v}`)
      checked++
    }
    assert.ok(checked >= 290, `only ${checked} cases`)
    // Messages name the argument, its value as JS prints it, and the range
    // (the JS layer checks first; src/validate.rs holds the same ranges).
    assert.match(got['cache.ttlMs=1e308'], /^ERR_INVALID_ARG ttlMs must be .*1e12.* got 1e\+308$/)
    assert.match(got['cache.idleMs=2**53'], /idleMs must be .* got 9007199254740992$/)
    assert.match(got['cache.maxPendingWrites=2**61'], /maxPendingWrites must be .* got 2305843009213694000$/)
    assert.match(got['cache.deleteLater=1e308'], /delayMs must be .* got 1e\+308$/)
    assert.match(got['cache.redis.commandTimeoutMs=1.8e22'], /commandTimeoutMs must be .* got 1\.8e\+22$/)
    assert.match(got['limiter.maxWaiters=NaN'], /maxWaiters must be .*got NaN$/)
    // The same values straight at the native boundary (src/validate.rs).
    assert.equal(got['native.cache.ttlMs=1e308'], 'ERR_INVALID_ARG ttlMs must be a number of milliseconds in (0, 1000000000000] (about 31.7 years), got 1e+308')
    assert.equal(got['native.cache.deleteLater=1e308'], 'ERR_INVALID_ARG delayMs must be a number of milliseconds in [0, 2147483647] (about 24.8 days), got 1e+308')
    assert.equal(got['native.cache.maxPendingWrites=2**61'], 'ERR_INVALID_ARG maxPendingWrites must be an integer in [1, 9007199254740991], got 2305843009213694000')
    assert.equal(got['native.cache.idleMs=2**53'], 'ERR_INVALID_ARG idleMs must be a number of milliseconds in (0, 1000000000000] (about 31.7 years), got 9007199254740992')
    assert.match(got['native.cache.redis.commandTimeoutMs=1.8e22'], /^ERR_INVALID_ARG redis\.commandTimeoutMs must be a number of milliseconds in \(0, 2147483647\] \(about 24\.8 days\), got 1\.8e\+22$/)
    assert.equal(got['native.cache.setSync.ttlMs=1.8e22'], 'ERR_INVALID_ARG ttlMs must be a number of milliseconds in (0, 1000000000000] (about 31.7 years), got 1.8e+22')
  })
})

describe('external ArrayBuffers that do not alias native memory (Electron sandbox)', () => {
  test('the probe turns them into a clear error at construction; BufferPool falls back to plain Buffers', () => {
    // Before: these classes constructed fine and silently worked on copies
    // (stale version table, wrong checks, a hung queue).
    const r = spawnSync(process.execPath, [fixture('no_external_memory.cjs')], {
      cwd: root,
      encoding: 'utf8',
      env: { ...process.env, HOTPATH_TEST_NO_EXTERNAL_MEMORY: '1' },
    })
    assert.equal(r.status, 0, r.stderr)
    const got = JSON.parse(r.stdout.trim().split('\n').pop()!)
    for (const c of ['CacheManager', 'RateLimiter', 'WorkerQueue']) {
      assert.match(got[c], new RegExp(`^ERR_INTERNAL ${c} cannot run here: .*copies them`), c)
    }
    assert.deepEqual(got.BufferPool, { external: false, length: 0 })
    // Without the override the probe passes (Node aliases external memory).
    const ok = spawnSync(process.execPath, [fixture('no_external_memory.cjs')], { cwd: root, encoding: 'utf8' })
    const okGot = JSON.parse(ok.stdout.trim().split('\n').pop()!)
    assert.equal(okGot.CacheManager, 'constructed')
    assert.equal(okGot.BufferPool.external, true)
  })
})
