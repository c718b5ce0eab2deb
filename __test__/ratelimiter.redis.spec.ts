// RateLimiter on Redis: every algorithm, one exact limit across instances and
// processes, the key layout, server time, NOSCRIPT, onRedisError, Cluster.
import { test, describe, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { Redis as IORedis } from 'ioredis'
import { RateLimiter } from 'hotpath'
import { __advanceClock } from 'hotpath/testing'
import type { RateLimiterOptions, RateLimitResult } from 'hotpath'
import { redisUrl, eventually, OwnCluster } from './helpers.ts'

const entry = require.resolve('hotpath')

type Algorithm = NonNullable<RateLimiterOptions['algorithm']>
const ALGORITHMS: Algorithm[] = ['sliding-window', 'sliding-window-counter', 'fixed-window', 'token-bucket', 'gcra']

let run = 0
const prefix = () => `hp-rl-test-${process.pid}-${run++}:`

describe('RateLimiter on Redis', () => {
  for (const algorithm of ALGORITHMS) {
    test(`${algorithm}: admits limit, denies with a retry-after, peek/reset/cost`, async (t) => {
      const url = redisUrl(t)
      if (!url) return
      const rl = new RateLimiter({ limit: 5, windowMs: 60_000, algorithm, redis: { url, keyPrefix: prefix() } })
      assert.throws(() => rl.checkSync('k'), { code: 'ERR_INVALID_ARG' })
      const p = await rl.peek('k')
      assert.deepEqual(p, { allowed: true, limit: 5, remaining: 5, retryAfterMs: 0, resetMs: p.resetMs })
      const rs: RateLimitResult[] = []
      for (let i = 0; i < 7; i++) rs.push(await rl.check('k'))
      assert.deepEqual(
        rs.map((r) => r.allowed),
        [true, true, true, true, true, false, false],
      )
      assert.deepEqual(
        rs.map((r) => r.remaining),
        [4, 3, 2, 1, 0, 0, 0],
      )
      const denied = rs[5]
      assert.ok(denied.retryAfterMs > 0 && denied.retryAfterMs <= 120_000, `${denied.retryAfterMs}`)
      assert.ok(denied.resetMs >= denied.retryAfterMs)
      assert.ok((await rl.retryAfterMs('k')) > 0)
      assert.equal((await rl.check('k', 6)).retryAfterMs, Infinity)
      assert.equal((await rl.check('other', 3)).remaining, 2)
      await rl.reset('k')
      assert.equal((await rl.check('k', 5)).allowed, true)
      assert.deepEqual(rl.stats(), { allowed: 7, denied: 3, keys: 0, redisErrors: 0, waiting: 0 })
      await rl.reset('k')
      await rl.reset('other')
      await rl.close()
    })
  }

  for (const algorithm of ALGORITHMS) {
    test(`${algorithm}: four instances on one Redis admit exactly limit out of 400 concurrent checks`, async (t) => {
      const url = redisUrl(t)
      if (!url) return
      const keyPrefix = prefix()
      const ls = [0, 1, 2, 3].map(() => new RateLimiter({ limit: 37, windowMs: 60_000, algorithm, redis: { url, keyPrefix } }))
      const rs = await Promise.all(Array.from({ length: 400 }, (_, i) => ls[i % 4].check('shared')))
      assert.equal(rs.filter((r) => r.allowed).length, 37)
      assert.equal(
        ls.reduce((n, l) => n + l.stats().allowed, 0),
        37,
      )
      await ls[0].reset('shared')
      for (const l of ls) await l.close()
    })
  }

  test('100 checks issued in one tick (sent in several script calls) are decided in call order', async (t) => {
    const url = redisUrl(t)
    if (!url) return
    for (const algorithm of ALGORITHMS) {
      const l: RateLimiter = new RateLimiter({ limit: 37, windowMs: 60_000, algorithm, redis: { url, keyPrefix: prefix() } })
      const rs: RateLimitResult[] = await Promise.all(Array.from({ length: 100 }, () => l.check('k')))
      assert.deepEqual(
        rs.map((r) => r.allowed),
        Array.from({ length: 100 }, (_, i) => i < 37),
        algorithm,
      )
      assert.deepEqual(
        rs.slice(0, 37).map((r) => r.remaining),
        Array.from({ length: 37 }, (_, i) => 36 - i),
        algorithm,
      )
      await l.reset('k')
      await l.close()
    }
  })

  test('many processes sharing a Redis share one exact limit', async (t) => {
    const url = redisUrl(t)
    if (!url) return
    const keyPrefix = prefix()
    const code = `
      const { RateLimiter } = require(process.argv[1])
      const rl = new RateLimiter({ limit: 50, windowMs: 60000, redis: { url: process.argv[2], keyPrefix: process.argv[3] } })
      Promise.all(Array.from({ length: 100 }, () => rl.check('k'))).then(async (rs) => {
        console.log(rs.filter((r) => r.allowed).length)
        await rl.close()
      })
    `
    const outs = await Promise.all(
      [0, 1, 2].map(
        () =>
          new Promise<number>((resolve, reject) => {
            const p = spawn(process.execPath, ['-e', code, entry, url, keyPrefix], { stdio: ['ignore', 'pipe', 'inherit'] })
            let out = ''
            p.stdout.on('data', (d) => (out += d))
            p.on('exit', (c) => (c === 0 ? resolve(Number(out.trim())) : reject(new Error(`child exited ${c}`))))
          }),
      ),
    )
    assert.equal(
      outs.reduce((a, b) => a + b, 0),
      50,
      `per process: ${outs}`,
    )
    const rl = new RateLimiter({ limit: 50, windowMs: 60000, redis: { url, keyPrefix } })
    assert.equal((await rl.check('k')).allowed, false)
    await rl.reset('k')
    await rl.close()
  })

  test('sliding-window is exact across instances over every window of a run', async (t) => {
    const url = redisUrl(t)
    if (!url) return
    const keyPrefix = prefix()
    const limit = 6
    const windowMs = 300
    const ls = [0, 1, 2, 3].map(() => new RateLimiter({ limit, windowMs, redis: { url, keyPrefix } }))
    // The server's time of each admission is in [sent, received] + a constant.
    const adm: { sent: number; received: number }[] = []
    const until = performance.now() + 1500
    await Promise.all(
      ls.map(async (l) => {
        while (performance.now() < until) {
          const sent = performance.now()
          const r = await l.check('k')
          const received = performance.now()
          if (r.allowed) adm.push({ sent, received })
          await new Promise((res) => setTimeout(res, Math.random() * 15))
        }
      }),
    )
    adm.sort((a, b) => a.sent - b.sent)
    assert.ok(adm.length >= limit * 3, `admitted ${adm.length}`)
    for (let i = 0; i < adm.length; i++) {
      let n = 0
      for (let j = 0; j < adm.length; j++) {
        // Surely inside [t_i, t_i + windowMs): after i, before t_i + windowMs.
        if (adm[j].sent >= adm[i].received && adm[j].received - adm[i].sent < windowMs) n++
      }
      assert.ok(n + 1 <= limit, `the window at admission ${i} holds ${n + 1} > ${limit}`)
    }
    for (const l of ls) await l.close()
  })

  test('keys live under keyPrefix, hash-tagged, expiring with their window', async (t) => {
    const url = redisUrl(t)
    if (!url) return
    const keyPrefix = prefix()
    const io = new IORedis(url)
    const sw = new RateLimiter({ limit: 5, windowMs: 60_000, redis: { url, keyPrefix } })
    const gc = new RateLimiter({ limit: 5, windowMs: 60_000, algorithm: 'gcra', redis: { url, keyPrefix } })
    await sw.check('user:1')
    await gc.check('user:1')
    const keys = (await io.keys(`${keyPrefix}*`)).sort()
    assert.deepEqual(keys, [
      `${keyPrefix}rl:gcra:5:60000:{user:1}`,
      `${keyPrefix}rl:sliding-window:5:60000:{user:1}`,
      `${keyPrefix}rl:sliding-window:5:60000:{user:1}:log`,
    ])
    const ttls = await Promise.all(keys.map((k) => io.pttl(k)))
    for (const [i, k] of keys.entries()) {
      // The log outlives the state beside it, by a window at most.
      const max = k.endsWith(':log') ? 120_001 : 60_001
      assert.ok(ttls[i] > 0 && ttls[i] <= max, `${k} ttl ${ttls[i]}`)
    }
    assert.ok(ttls[2] > ttls[1], `the log (${ttls[2]} ms) must outlive its state (${ttls[1]} ms)`)
    // The log is readable by any client: "<time ms> <cost>".
    const log = await io.lrange(`${keyPrefix}rl:sliding-window:5:60000:{user:1}:log`, 0, -1)
    assert.equal(log.length, 1)
    assert.match(log[0], /^\d+(\.\d+)? 1$/)
    // The state beside it: 7 little-endian doubles, the sum first, then the
    // oldest and newest entries (time, cost), the length, the log's expiry.
    const state = (await io.getBuffer(`${keyPrefix}rl:sliding-window:5:60000:{user:1}`))!
    assert.equal(state.length, 56)
    const [at, cost] = log[0].split(' ').map(Number)
    const d = (i: number) => state.readDoubleLE(8 * i)
    assert.deepEqual([d(0), d(1), d(2), d(3), d(4), d(5)], [1, at, cost, at, cost, 1])
    assert.ok(d(6) > at + 60_000, `log expiry ${d(6)}`)
    // A limiter with other settings never shares (or misreads) this state.
    const other = new RateLimiter({ limit: 6, windowMs: 60_000, redis: { url, keyPrefix } })
    assert.equal((await other.check('user:1')).remaining, 5)
    await sw.reset('user:1')
    await gc.reset('user:1')
    await other.reset('user:1')
    assert.deepEqual(await io.keys(`${keyPrefix}*`), [])
    for (const l of [sw, gc, other]) await l.close()
    io.disconnect()
  })

  test('time comes from the Redis server: the local clock does not move the window', async (t) => {
    const url = redisUrl(t)
    if (!url) return
    const rl = new RateLimiter({ limit: 1, windowMs: 60_000, algorithm: 'token-bucket', redis: { url, keyPrefix: prefix() } })
    assert.equal((await rl.check('k')).allowed, true)
    __advanceClock(3_600_000) // an hour, on this process's clock only
    assert.equal((await rl.check('k')).allowed, false)
    await rl.reset('k')
    await rl.close()
  })

  test('the script is re-sent after SCRIPT FLUSH (NOSCRIPT)', async (t) => {
    const url = redisUrl(t)
    if (!url) return
    const io = new IORedis(url)
    const rl = new RateLimiter({ limit: 2, windowMs: 60_000, redis: { url, keyPrefix: prefix() } })
    assert.equal((await rl.check('k')).allowed, true)
    await io.script('FLUSH')
    assert.equal((await rl.check('k')).allowed, true)
    assert.equal((await rl.check('k')).allowed, false)
    assert.equal(rl.stats().redisErrors, 0)
    await rl.reset('k')
    await rl.close()
    io.disconnect()
  })

  test('acquire on Redis waits its turn (FIFO), woken by native timers', async (t) => {
    const url = redisUrl(t)
    if (!url) return
    const rl = new RateLimiter({ limit: 1, windowMs: 150, algorithm: 'fixed-window', redis: { url, keyPrefix: prefix() } })
    const started = performance.now()
    const order: number[] = []
    await Promise.all([0, 1, 2].map((i) => rl.acquire('k').then(() => order.push(i))))
    assert.deepEqual(order, [0, 1, 2])
    assert.ok(performance.now() - started >= 2 * 150 - 20)
    await assert.rejects(rl.acquire('k', { timeoutMs: 30 }), { code: 'ERR_TIMEOUT' })
    const ac = new AbortController()
    const aborted = assert.rejects(rl.acquire('k', { signal: ac.signal }), { code: 'ERR_ABORTED' })
    ac.abort()
    await aborted
    assert.equal(rl.stats().allowed, 3)
    await rl.reset('k')
    await rl.close()
  })

  test('close: later calls ERR_CLOSED, checks already sent still resolve', async (t) => {
    const url = redisUrl(t)
    if (!url) return
    const rl = new RateLimiter({ limit: 2, windowMs: 60_000, redis: { url, keyPrefix: prefix() } })
    const inFlight = rl.check('k')
    await rl.close()
    assert.equal((await inFlight).allowed, true)
    await assert.rejects(rl.check('k'), { code: 'ERR_CLOSED' })
    await assert.rejects(rl.peek('k'), { code: 'ERR_CLOSED' })
    await assert.rejects(rl.reset('k'), { code: 'ERR_CLOSED' })
    await rl.close()
  })
})

describe('RateLimiter onRedisError', () => {
  const down = { url: 'redis://127.0.0.1:1', commandTimeoutMs: 300, connectTimeoutMs: 300 }

  for (const [policy, expect] of [
    ['allow', [true, true, true]],
    ['deny', [false, false, false]],
    ['local', [true, true, false]],
  ] as const) {
    test(`'${policy}' against an unreachable Redis, never past commandTimeoutMs`, async () => {
      const rl = new RateLimiter({ limit: 2, windowMs: 60_000, onRedisError: policy, redis: down })
      const rs: RateLimitResult[] = []
      for (let i = 0; i < 3; i++) {
        const started = performance.now()
        rs.push(await rl.check('k'))
        assert.ok(performance.now() - started < 300 + 200, `took ${performance.now() - started} ms`)
      }
      assert.deepEqual(
        rs.map((r) => r.allowed),
        expect,
      )
      if (policy === 'deny') assert.ok(RateLimiter.headers(rs[0])['Retry-After'])
      assert.equal(rl.stats().redisErrors, 3)
      assert.equal(rl.stats().keys, policy === 'local' ? 1 : 0)
      // Concurrent checks settle too.
      const many = await Promise.all(Array.from({ length: 50 }, () => rl.peek('x')))
      assert.equal(many.length, 50)
      await rl.close()
    })
  }

  test("a slow Redis: 'local' decides in time, then Redis again once it answers", async (t) => {
    const url = redisUrl(t)
    if (!url) return
    const io = new IORedis(url)
    const rl = new RateLimiter({ limit: 3, windowMs: 60_000, onRedisError: 'local', redis: { url, keyPrefix: prefix(), commandTimeoutMs: 200 } })
    for (let i = 0; i < 3; i++) assert.equal((await rl.check('k')).allowed, true)
    assert.equal((await rl.check('k')).allowed, false) // Redis: spent
    await io.call('CLIENT', 'PAUSE', '1500', 'ALL')
    const started = performance.now()
    const slow = await rl.check('k')
    assert.ok(performance.now() - started < 200 + 200, `took ${performance.now() - started} ms`)
    assert.equal(slow.allowed, true, 'decided in process (a fresh local limit)')
    assert.ok(rl.stats().redisErrors >= 1)
    // Once Redis answers again, the decision is Redis's (still spent).
    await eventually(
      async () => {
        const before = rl.stats().redisErrors
        const r = await rl.check('k')
        return rl.stats().redisErrors === before && r.allowed === false
      },
      10_000,
      'checks answered by Redis again',
    )
    await rl.reset('k')
    await rl.close()
    io.disconnect()
  })
})

describe('RateLimiter on Redis Cluster', () => {
  let cluster: OwnCluster | null = null
  before(async () => {
    if (!process.env.REDIS_URL && process.env.CI !== 'true') return
    cluster = new OwnCluster()
    await cluster.start()
  })
  after(async () => {
    await cluster?.dispose()
  })

  test('keys over every slot: four instances admit exactly limit per key', async (t) => {
    if (!redisUrl(t)) return
    const keyPrefix = prefix()
    for (const algorithm of ['sliding-window', 'gcra'] as const) {
      const ls = [0, 1, 2, 3].map(() => new RateLimiter({ limit: 3, windowMs: 60_000, algorithm, redis: { url: '', cluster: cluster!.urls, keyPrefix, commandTimeoutMs: 5000 } }))
      const keys = Array.from({ length: 60 }, (_, i) => `user:${i}`)
      const rs = await Promise.all(keys.flatMap((k) => [0, 1, 2, 3, 4, 5].map((i) => ls[i % 4].check(k).then((r) => [k, r.allowed] as const))))
      const admitted = new Map<string, number>()
      for (const [k, ok] of rs) if (ok) admitted.set(k, (admitted.get(k) ?? 0) + 1)
      for (const k of keys) assert.equal(admitted.get(k), 3, `${algorithm} ${k}`)
      assert.equal(ls[0].stats().redisErrors, 0)
      for (const k of keys) await ls[0].reset(k)
      for (const l of ls) await l.close()
    }
  })
})
