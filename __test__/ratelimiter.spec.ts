// RateLimiter in process: every algorithm, exactness, acquire, headers, bad
// input, the key bound, worker threads, close.
import { test, describe } from 'node:test'
import assert from 'node:assert/strict'
import { Worker } from 'node:worker_threads'
import { RateLimiter } from 'hotpath'
import { __advanceClock } from 'hotpath/testing'
import type { RateLimitResult, RateLimiterOptions } from 'hotpath'

const entry = require.resolve('hotpath')
const testingEntry = require.resolve('hotpath/testing')

type Algorithm = NonNullable<RateLimiterOptions['algorithm']>
const ALGORITHMS: Algorithm[] = ['sliding-window', 'sliding-window-counter', 'fixed-window', 'token-bucket', 'gcra']

// The test clock: what __advanceClock added, on top of real time. The native
// limiter's clock differs from it by a constant.
let advanced = 0
function advance(ms: number) {
  advanced += ms
  __advanceClock(ms)
}
const now = () => performance.now() + advanced

function admitted(rl: RateLimiter, key: string, n: number, cost = 1): number {
  let ok = 0
  for (let i = 0; i < n; i++) if (rl.checkSync(key, cost).allowed) ok++
  return ok
}

describe('RateLimiter algorithms (in process)', () => {
  for (const algorithm of ALGORITHMS) {
    test(`${algorithm}: admits limit, then denies with a retry-after that is enough`, async () => {
      const rl = new RateLimiter({ limit: 5, windowMs: 10_000, algorithm })
      const first = rl.checkSync('k')
      assert.deepEqual(Object.keys(first).sort(), ['allowed', 'limit', 'remaining', 'resetMs', 'retryAfterMs'])
      assert.equal(first.allowed, true)
      assert.equal(first.limit, 5)
      assert.equal(first.remaining, 4)
      assert.equal(first.retryAfterMs, 0)
      assert.ok(first.resetMs > 0 && first.resetMs <= 20_000, `resetMs ${first.resetMs}`)
      assert.equal(admitted(rl, 'k', 10), 4)
      const denied = rl.checkSync('k')
      assert.equal(denied.allowed, false)
      assert.equal(denied.remaining, 0)
      assert.ok(denied.retryAfterMs > 0 && denied.retryAfterMs <= 20_000, `retryAfterMs ${denied.retryAfterMs}`)
      assert.ok(Number.isInteger(denied.retryAfterMs))
      assert.ok(denied.resetMs >= denied.retryAfterMs)
      // Other keys are independent.
      assert.equal(rl.checkSync('other').allowed, true)
      // Before the retry-after: still denied; at it: admitted.
      advance(denied.retryAfterMs - 50)
      assert.equal(rl.checkSync('k').allowed, false)
      advance(50)
      assert.equal(rl.checkSync('k').allowed, true)
      // Long after: the whole limit again.
      advance(30_000)
      assert.equal(admitted(rl, 'k', 10), 5)
      // check() is the same check, as a Promise.
      const r = await rl.check('k')
      assert.equal(r.allowed, false)
      assert.deepEqual(rl.stats(), { allowed: 12, denied: 14, keys: 2, redisErrors: 0, waiting: 0 })
      await rl.close()
    })

    test(`${algorithm}: cost weights a request; a cost above limit is never admitted and says so`, async () => {
      const rl = new RateLimiter({ limit: 10, windowMs: 10_000, algorithm })
      assert.equal(rl.checkSync('k', 4).remaining, 6)
      assert.equal(rl.checkSync('k', 6).allowed, true)
      assert.equal(rl.checkSync('k', 1).allowed, false)
      const never = rl.checkSync('fresh', 11)
      assert.equal(never.allowed, false)
      assert.equal(never.retryAfterMs, Infinity)
      assert.equal(never.remaining, 10, 'a refused check consumes nothing')
      assert.equal(rl.checkSync('fresh', 10).allowed, true)
      // cost 0 always passes and takes nothing.
      assert.equal(rl.checkSync('k', 0).allowed, true)
      await assert.rejects(rl.acquire('k', { cost: 11 }), { code: 'ERR_INVALID_ARG' })
      await rl.close()
    })

    test(`${algorithm}: peek and retryAfterMs consume nothing; reset forgets`, async () => {
      const rl = new RateLimiter({ limit: 2, windowMs: 60_000, algorithm })
      for (let i = 0; i < 5; i++) assert.equal((await rl.peek('k')).remaining, 2)
      assert.equal(await rl.retryAfterMs('k'), 0)
      rl.checkSync('k')
      rl.checkSync('k')
      const p = await rl.peek('k')
      assert.equal(p.allowed, false)
      assert.ok((await rl.retryAfterMs('k')) > 0)
      assert.equal(rl.stats().allowed, 2)
      assert.equal(rl.stats().denied, 0, 'peeks are not counted')
      await rl.reset('k')
      assert.equal(rl.checkSync('k').remaining, 1)
      await rl.close()
    })
  }

  test('fixed-window: the window starts at the first admission and ends windowMs later', () => {
    const rl = new RateLimiter({ limit: 3, windowMs: 1000, algorithm: 'fixed-window' })
    assert.equal(admitted(rl, 'k', 5), 3)
    const d = rl.checkSync('k')
    assert.ok(d.retryAfterMs >= 990 && d.retryAfterMs <= 1000, `${d.retryAfterMs}`)
    assert.equal(d.resetMs, d.retryAfterMs)
    advance(1000)
    assert.equal(admitted(rl, 'k', 5), 3)
  })

  test('token-bucket and gcra: a burst of limit, then one unit per windowMs / limit', () => {
    for (const algorithm of ['token-bucket', 'gcra'] as const) {
      const rl = new RateLimiter({ limit: 4, windowMs: 1000, algorithm })
      assert.equal(admitted(rl, 'k', 10), 4)
      const d = rl.checkSync('k')
      assert.ok(d.retryAfterMs > 240 && d.retryAfterMs <= 250, `${algorithm} ${d.retryAfterMs}`)
      advance(250)
      assert.equal(admitted(rl, 'k', 10), 1, algorithm)
      advance(500)
      assert.equal(admitted(rl, 'k', 10), 2, algorithm)
    }
  })

  test('sliding-window-counter: the previous window still weighs on the next', () => {
    const rl = new RateLimiter({ limit: 10, windowMs: 1000, algorithm: 'sliding-window-counter' })
    assert.equal(admitted(rl, 'k', 20), 10)
    // One window later most of the old count still weighs: fewer than 10 pass.
    advance(1000)
    const n = admitted(rl, 'k', 20)
    assert.ok(n < 10, `admitted ${n}`)
    advance(2000)
    assert.equal(admitted(rl, 'k', 20), 10)
  })
})

describe('RateLimiter sliding-window exactness', () => {
  test('no interval of windowMs ever holds more than limit admitted units (every window of a run)', () => {
    const limit = 7
    const windowMs = 1000
    const rl = new RateLimiter({ limit, windowMs })
    // Each admission's native time lies in [before, after] + a constant.
    const adm: { before: number; after: number; cost: number }[] = []
    let checks = 0
    let seed = 12345
    const rand = (n: number) => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff
      return seed % n
    }
    for (let i = 0; i < 5000; i++) {
      advance(rand(100)) // 0..99 ms: many checks per window, many windows
      const cost = 1 + rand(3)
      const before = now()
      const r = rl.checkSync('k', cost)
      const after = now()
      checks++
      if (r.allowed) adm.push({ before, after, cost })
    }
    assert.ok(adm.length > 100, `admitted ${adm.length}`)
    // Every window starting at an admission: the admissions that surely fall
    // inside [t_i, t_i + windowMs) must not exceed the limit...
    let best = 0
    for (let i = 0; i < adm.length; i++) {
      let units = 0
      for (let j = i; j < adm.length && adm[j].after - adm[i].before < windowMs; j++) units += adm[j].cost
      assert.ok(units <= limit, `window at admission ${i} holds ${units} > ${limit}`)
      best = Math.max(best, units)
    }
    // ...and the limit is used (it is not trivially strict).
    assert.ok(best >= limit - 1, `best window ${best}`)
    assert.equal(rl.stats().allowed + rl.stats().denied, checks)
  })
})

describe('RateLimiter.acquire', () => {
  test('waits for its turn, FIFO per key, woken by native timers', async () => {
    const rl = new RateLimiter({ limit: 1, windowMs: 60, algorithm: 'fixed-window' })
    const started = performance.now()
    await rl.acquire('k') // at once
    assert.ok(performance.now() - started < 50)
    const order: number[] = []
    const times: number[] = []
    const all = [1, 2, 3, 4].map((i) =>
      rl.acquire('k').then(() => {
        order.push(i)
        times.push(performance.now() - started)
      }),
    )
    assert.equal(rl.stats().waiting, 4)
    // A plain check does not jump the queue's window: the limit is spent.
    assert.equal(rl.checkSync('k').allowed, false)
    await Promise.all(all)
    assert.deepEqual(order, [1, 2, 3, 4])
    // One per window: the 4th waited about four windows.
    assert.ok(times[3] >= 4 * 60 - 10, `times ${times}`)
    assert.equal(rl.stats().waiting, 0)
    await rl.close()
  })

  test('a later small request does not overtake an earlier big one', async () => {
    const rl = new RateLimiter({ limit: 4, windowMs: 200, algorithm: 'token-bucket' })
    await rl.acquire('k', { cost: 4 })
    const order: string[] = []
    const big = rl.acquire('k', { cost: 4 }).then(() => order.push('big'))
    const small = rl.acquire('k', { cost: 1 }).then(() => order.push('small'))
    await Promise.all([big, small])
    assert.deepEqual(order, ['big', 'small'])
    await rl.close()
  })

  test('timeoutMs rejects ERR_TIMEOUT and the waiter consumes nothing', async () => {
    const rl = new RateLimiter({ limit: 1, windowMs: 10_000 })
    await rl.acquire('k')
    const started = performance.now()
    await assert.rejects(rl.acquire('k', { timeoutMs: 50 }), { code: 'ERR_TIMEOUT' })
    assert.ok(performance.now() - started >= 45)
    assert.equal(rl.stats().waiting, 0)
    // timeoutMs 0: only if admitted at once.
    await rl.acquire('other', { timeoutMs: 0 })
    await assert.rejects(rl.acquire('other', { timeoutMs: 0 }), { code: 'ERR_TIMEOUT' })
    assert.equal(rl.stats().allowed, 2)
    await rl.close()
  })

  test('signal: aborted rejects ERR_ABORTED (at once when already aborted) and never consumes', async () => {
    const rl = new RateLimiter({ limit: 1, windowMs: 150, algorithm: 'fixed-window' })
    await assert.rejects(rl.acquire('k', { signal: AbortSignal.abort('stop') }), (e: any) => e.code === 'ERR_ABORTED' && e.cause === 'stop')
    assert.equal((await rl.peek('k')).remaining, 1, 'an already-aborted acquire takes nothing')
    await rl.acquire('k')
    const ac = new AbortController()
    const aborted = rl.acquire('k', { signal: ac.signal })
    const next = rl.acquire('k', { timeoutMs: 2000 })
    setTimeout(() => ac.abort(new Error('client went away')), 20)
    await assert.rejects(aborted, (e: any) => e.code === 'ERR_ABORTED' && e.cause?.message === 'client went away')
    // The next waiter gets the next window (the aborted one took nothing).
    await next
    assert.equal(rl.checkSync('k').allowed, false)
    assert.equal(rl.stats().allowed, 2)
    // A signal that never fires does not hold anything up.
    const idle = new AbortController()
    advance(1000)
    await rl.acquire('k', { signal: idle.signal })
    await rl.close()
  })

  test('bad acquire arguments are ERR_INVALID_ARG', async () => {
    const rl = new RateLimiter({ limit: 3, windowMs: 1000 })
    await assert.rejects(rl.acquire(''), { code: 'ERR_INVALID_ARG' })
    await assert.rejects(rl.acquire('k', { cost: -1 }), { code: 'ERR_INVALID_ARG' })
    await assert.rejects(rl.acquire('k', { timeoutMs: -5 }), { code: 'ERR_INVALID_ARG' })
    await assert.rejects(rl.acquire('k', { timeoutMs: NaN }), { code: 'ERR_INVALID_ARG' })
    await assert.rejects(rl.acquire('k', { signal: {} as AbortSignal }), { code: 'ERR_INVALID_ARG' })
    await assert.rejects(rl.acquire('k', 5 as any), { code: 'ERR_INVALID_ARG' })
    assert.equal(rl.stats().allowed, 0)
    await rl.close()
  })
})

describe('RateLimiter.headers', () => {
  test('RateLimit-* always, Retry-After (whole seconds, rounded up) when denied', () => {
    const rl = new RateLimiter({ limit: 2, windowMs: 2500, algorithm: 'fixed-window' })
    const ok = rl.checkSync('k')
    const h = RateLimiter.headers(ok)
    assert.deepEqual(Object.keys(h).sort(), ['RateLimit-Limit', 'RateLimit-Remaining', 'RateLimit-Reset'])
    assert.equal(h['RateLimit-Limit'], '2')
    assert.equal(h['RateLimit-Remaining'], '1')
    assert.equal(h['RateLimit-Reset'], '3')
    rl.checkSync('k')
    const denied = rl.checkSync('k')
    const hd = RateLimiter.headers(denied)
    assert.equal(hd['RateLimit-Remaining'], '0')
    assert.equal(hd['Retry-After'], String(Math.ceil(denied.retryAfterMs / 1000)))
    assert.equal(hd['Retry-After'], '3')
    assert.ok(Number(hd['Retry-After']) * 1000 >= denied.retryAfterMs, 'never earlier than the reset')
    assert.ok(Number(hd['Retry-After']) >= Number(hd['RateLimit-Reset']))
    // Sub-second waits are 1 second, never 0.
    const r: RateLimitResult = { allowed: false, limit: 5, remaining: 0, retryAfterMs: 20, resetMs: 20 }
    assert.equal(RateLimiter.headers(r)['Retry-After'], '1')
    assert.equal(RateLimiter.headers({ ...r, retryAfterMs: 1001, resetMs: 1001 })['Retry-After'], '2')
    // A cost that can never pass has no Retry-After to give.
    assert.equal(RateLimiter.headers({ ...r, retryAfterMs: Infinity })['Retry-After'], undefined)
    assert.throws(() => RateLimiter.headers(null as any), { code: 'ERR_INVALID_ARG' })
    assert.throws(() => RateLimiter.headers({ ...r, remaining: NaN }), { code: 'ERR_INVALID_ARG' })
  })
})

describe('RateLimiter bad input', () => {
  test('bad options are ERR_INVALID_ARG', () => {
    const bad: unknown[] = [
      undefined,
      null,
      5,
      {},
      { limit: 10 },
      { windowMs: 1000 },
      { limit: 0, windowMs: 1000 },
      { limit: -1, windowMs: 1000 },
      { limit: NaN, windowMs: 1000 },
      { limit: Infinity, windowMs: 1000 },
      { limit: '10', windowMs: 1000 },
      { limit: 10, windowMs: 0 },
      { limit: 10, windowMs: -1 },
      { limit: 10, windowMs: Infinity },
      { limit: 10, windowMs: 1000, algorithm: 'leaky-bucket' },
      { limit: 10, windowMs: 1000, algorithm: 5 },
      { limit: 10, windowMs: 1000, maxKeys: 0 },
      { limit: 10, windowMs: 1000, maxKeys: 1.5 },
      { limit: 10, windowMs: 1000, maxKeys: NaN },
      { limit: 10, windowMs: 1000, onRedisError: 'retry' },
      { limit: 10, windowMs: 1000, name: '' },
      { limit: 10, windowMs: 1000, redis: { url: 'http://x' } },
      { limit: 10, windowMs: 1000, redis: { url: 'redis://127.0.0.1:6379', commandTimeoutMs: -1 } },
    ]
    for (const o of bad) assert.throws(() => new RateLimiter(o as any), { code: 'ERR_INVALID_ARG' }, JSON.stringify(o))
    assert.throws(() => new RateLimiter({ limit: -1, windowMs: 1000 }), RangeError)
  })

  test('bad arguments are ERR_INVALID_ARG and change nothing', async () => {
    const rl = new RateLimiter({ limit: 3, windowMs: 1000 })
    for (const [key, cost] of [
      ['', 1],
      [5, 1],
      [undefined, 1],
      [null, 1],
      ['k', -1],
      ['k', NaN],
      ['k', Infinity],
      ['k', '1'],
      ['k', null],
    ] as [any, any][]) {
      assert.throws(() => rl.checkSync(key, cost), { code: 'ERR_INVALID_ARG' }, `${key} ${cost}`)
      await assert.rejects(rl.check(key, cost), { code: 'ERR_INVALID_ARG' })
    }
    await assert.rejects(rl.peek(''), { code: 'ERR_INVALID_ARG' })
    await assert.rejects(rl.reset(''), { code: 'ERR_INVALID_ARG' })
    await assert.rejects(rl.retryAfterMs(7 as any), { code: 'ERR_INVALID_ARG' })
    assert.deepEqual(rl.stats(), { allowed: 0, denied: 0, keys: 0, redisErrors: 0, waiting: 0 })
    assert.equal(rl.checkSync('k').remaining, 2)
    // The engine itself also refuses what slips past the JS layer.
    const { __native } = require(testingEntry)
    const n = new __native.NativeRateLimiter({ limit: 3, windowMs: 1000 })
    const checkSync = __native.rateLimiterCheckSync()
    assert.equal(checkSync(n.handle, 'k', 1, true), true)
    assert.throws(() => checkSync(n.handle, 'k', -1, true), { code: 'ERR_INVALID_ARG' })
    assert.throws(() => checkSync(n.handle, '', 1, true), { code: 'ERR_INVALID_ARG' })
    assert.throws(() => checkSync(n.handle, 5, 1, true), { code: 'ERR_INVALID_ARG' })
    assert.throws(() => checkSync(n.handle, 'k', '1', true), { code: 'ERR_INVALID_ARG' })
    assert.throws(() => checkSync(99_999, 'k', 1, true), { code: 'ERR_INVALID_ARG' })
    assert.throws(() => checkSync(-1, 'k', 1, true), { code: 'ERR_INVALID_ARG' })
    assert.throws(() => checkSync(n.handle), { code: 'ERR_INVALID_ARG' })
    // A key longer than the native stack buffer is read whole.
    const long = 'x'.repeat(600) + 'é'.repeat(300)
    assert.equal(checkSync(n.handle, long, 3, true), true)
    assert.equal(checkSync(n.handle, long, 1, true), false)
    assert.equal(checkSync(n.handle, long.slice(0, -1), 1, true), true, 'a different (shorter) key')
    assert.throws(() => new __native.NativeRateLimiter({ limit: 0, windowMs: 1000 }), { code: 'ERR_INVALID_ARG' })
    assert.throws(() => new __native.NativeRateLimiter({ limit: 1, windowMs: 1000, redis: { url: 'redis://127.0.0.1:1' } }), { code: 'ERR_INVALID_ARG' })
    await n.close()
    assert.throws(() => checkSync(n.handle, 'k', 1, true), { code: 'ERR_CLOSED' })
    await rl.close()
  })
})

describe('RateLimiter key bound', () => {
  test('maxKeys bounds the keys held; the idle ones go first', async () => {
    const rl = new RateLimiter({ limit: 1, windowMs: 60_000, maxKeys: 1000 })
    rl.checkSync('hot')
    for (let i = 0; i < 20_000; i++) {
      rl.checkSync(`k${i}`)
      if (i % 100 === 0) {
        advance(1)
        assert.equal(rl.checkSync('hot').allowed, false, 'the busy key keeps its state')
      }
      assert.ok(rl.stats().keys <= 1000)
    }
    assert.ok(rl.stats().keys >= 900, `${rl.stats().keys}`)
    // The newest keys are still limited; the oldest were dropped.
    assert.equal(rl.checkSync('k19999').allowed, false)
    assert.equal(rl.checkSync('k0').allowed, true)
    await rl.close()
  })

  test('peeks and denied checks of unknown keys store nothing', async () => {
    const rl = new RateLimiter({ limit: 1, windowMs: 60_000 })
    for (let i = 0; i < 100; i++) {
      await rl.peek(`p${i}`)
      rl.checkSync(`c${i}`, 2)
    }
    assert.equal(rl.stats().keys, 0)
    await rl.close()
  })
})

describe('RateLimiter named and worker threads', () => {
  test('a named limiter is one limit for every worker thread', async () => {
    const name = `rl-shared-${process.pid}`
    const rl = new RateLimiter({ name, limit: 10, windowMs: 60_000 })
    assert.equal(admitted(rl, 'user', 3), 3)
    const code = `
      const { parentPort, workerData } = require('node:worker_threads')
      const { RateLimiter } = require(workerData.entry)
      const rl = new RateLimiter({ name: workerData.name, limit: 10, windowMs: 60_000 })
      let ok = 0
      for (let i = 0; i < 5; i++) if (rl.checkSync('user').allowed) ok++
      let mismatch = null
      try { new RateLimiter({ name: workerData.name, limit: 11, windowMs: 60_000 }) } catch (e) { mismatch = e.code }
      parentPort.postMessage({ ok, mismatch, stats: rl.stats() })
      const acquired = rl.acquire('user', { timeoutMs: 5000 }).then(() => 'acquired', (e) => e.code)
      acquired.then(async (a) => { parentPort.postMessage({ acquired: a }); await rl.close() })
    `
    const w = new Worker(code, { eval: true, workerData: { entry, name } })
    const exited = new Promise((r) => w.once('exit', r))
    const messages: any[] = []
    const done = new Promise<void>((resolve, reject) => {
      w.on('message', (m) => {
        messages.push(m)
        if (m.acquired) resolve()
      })
      w.on('error', reject)
    })
    await new Promise<void>((resolve) => w.once('message', () => resolve()))
    assert.equal(messages[0].ok, 5)
    assert.equal(messages[0].mismatch, 'ERR_INVALID_ARG')
    assert.equal(messages[0].stats.allowed, 8)
    // The worker's 8 of 10 leave 2 here; the worker's acquire takes one.
    await done
    assert.equal(messages[1].acquired, 'acquired')
    assert.equal(admitted(rl, 'user', 5), 1)
    assert.equal(rl.stats().allowed, 10)
    await exited
    // The worker closed its handle; this one still works.
    assert.equal(rl.checkSync('another').allowed, true)
    await rl.close()
  })

  test('named: different options throw ERR_INVALID_ARG; same options share', async () => {
    const name = `rl-named-${process.pid}`
    const a = new RateLimiter({ name, limit: 2, windowMs: 1000, algorithm: 'gcra' })
    assert.throws(() => new RateLimiter({ name, limit: 2, windowMs: 1000 }), { code: 'ERR_INVALID_ARG' })
    assert.throws(() => new RateLimiter({ name, limit: 2, windowMs: 1001, algorithm: 'gcra' }), { code: 'ERR_INVALID_ARG' })
    const b = new RateLimiter({ name, limit: 2, windowMs: 1000, algorithm: 'gcra' })
    a.checkSync('k')
    assert.equal(b.checkSync('k').remaining, 0)
    await a.close()
    assert.equal(b.checkSync('k').allowed, false, 'b still has the shared state')
    await b.close()
    // After the last close the name is free for other options.
    const c = new RateLimiter({ name, limit: 5, windowMs: 1000 })
    assert.equal(c.checkSync('k').remaining, 4)
    await c.close()
  })
})

describe('RateLimiter garbage collection', () => {
  test('a named limiter collected without close() frees its name', async () => {
    const gc = (globalThis as any).gc as () => void
    assert.ok(gc, 'run with --expose-gc')
    const name = `rl-gc-${process.pid}`
    ;(() => {
      const a = new RateLimiter({ name, limit: 1, windowMs: 1000 })
      a.checkSync('k')
    })()
    let other: RateLimiter | null = null
    const deadline = Date.now() + 10_000
    while (!other) {
      gc()
      await new Promise((r) => setImmediate(r))
      try {
        other = new RateLimiter({ name, limit: 2, windowMs: 1000 })
      } catch (e: any) {
        assert.equal(e.code, 'ERR_INVALID_ARG')
        if (Date.now() > deadline) throw new Error('the collected handle never released its name')
      }
    }
    assert.equal(other.checkSync('k').remaining, 1, 'a fresh state with the new options')
    await other.close()
  })
})

describe('RateLimiter close', () => {
  test('waiters reject ERR_CLOSED; later calls ERR_CLOSED; idempotent', async () => {
    const rl = new RateLimiter({ limit: 1, windowMs: 60_000 })
    await rl.acquire('k')
    const waiting = rl.acquire('k')
    const ac = new AbortController()
    const waiting2 = rl.acquire('k', { signal: ac.signal })
    const rejected = [assert.rejects(waiting, { code: 'ERR_CLOSED' }), assert.rejects(waiting2, { code: 'ERR_CLOSED' })]
    assert.equal(rl.stats().waiting, 2)
    await rl.close()
    await Promise.all(rejected)
    ac.abort() // too late: nothing happens
    assert.throws(() => rl.checkSync('k'), { code: 'ERR_CLOSED' })
    await assert.rejects(rl.check('k'), { code: 'ERR_CLOSED' })
    await assert.rejects(rl.acquire('k'), { code: 'ERR_CLOSED' })
    await assert.rejects(rl.peek('k'), { code: 'ERR_CLOSED' })
    await assert.rejects(rl.retryAfterMs('k'), { code: 'ERR_CLOSED' })
    await assert.rejects(rl.reset('k'), { code: 'ERR_CLOSED' })
    await rl.close()
    await rl.close()
  })

  test('closing one handle of a named limiter rejects only its own waiters', async () => {
    const name = `rl-close-${process.pid}`
    const a = new RateLimiter({ name, limit: 1, windowMs: 100 })
    const b = new RateLimiter({ name, limit: 1, windowMs: 100 })
    await a.acquire('k')
    const wa = a.acquire('k')
    const wb = b.acquire('k')
    const rejected = assert.rejects(wa, { code: 'ERR_CLOSED' })
    await a.close()
    await rejected
    await wb // admitted when the window passes
    await b.close()
  })
})
