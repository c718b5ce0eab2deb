// The Redis I/O core as users see it: one connection per endpoint shared by
// every instance, the breaker under a blackholed server, secrets kept out of
// errors and logs, TLS. Each test starts a redis-server of its own.
import { test, describe } from 'node:test'
import assert from 'node:assert/strict'
import os from 'node:os'
import { monitorEventLoopDelay, PerformanceObserver } from 'node:perf_hooks'
import { spawnSync } from 'node:child_process'
import { join } from 'node:path'
import { Redis as IORedis } from 'ioredis'
import { CacheManager, RateLimiter } from 'hotpath'
import { redisUrl, eventually, OwnRedis, OwnTlsRedis, freePort } from './helpers.ts'

/** Client connections other than `self` (CLIENT LIST). */
async function clients(io: IORedis): Promise<string[]> {
  const list = (await io.client('LIST')) as string
  const me = await io.client('ID')
  return list
    .split('\n')
    .filter((l) => l.trim() && !l.startsWith(`id=${me} `))
}

describe('Redis connection model', () => {
  test('100 CacheManagers and 100 RateLimiters on one URL in one thread: at most 3 connections, pub/sub included', async (t) => {
    if (!redisUrl(t)) return
    const own = new OwnRedis(await freePort())
    await own.start()
    const io = new IORedis(own.url)
    try {
      const redis = { url: own.url, keyPrefix: `share-${process.pid}:` }
      const caches = Array.from({ length: 100 }, () => new CacheManager({ redis }))
      const limiters = Array.from({ length: 100 }, (_, i) => new RateLimiter({ limit: 10, windowMs: 60_000, algorithm: i % 2 ? 'gcra' : 'sliding-window', redis }))
      await Promise.all(caches.map((c, i) => c.set(`k${i}`, { i })))
      const got = await Promise.all(caches.map((c, i) => c.get(`k${(i + 1) % 100}`)))
      assert.equal(got.filter((v) => v !== undefined).length, 100)
      const rs = await Promise.all(limiters.map((l, i) => l.check(`u${i % 7}`)))
      assert.equal(rs.filter((r) => r.allowed).length, 100)
      await caches[0].deletePattern('k1*')
      const conns = await clients(io)
      assert.ok(conns.length <= 3, `expected at most 3 connections, got ${conns.length}:\n${conns.join('\n')}`)
      assert.ok(conns.some((c) => / sub=1 /.test(c)), 'one of them is the pub/sub connection')
      assert.equal(caches.reduce((n, c) => n + c.stats().l2Errors, 0), 0)
      for (const c of caches) await c.close()
      for (const l of limiters) await l.close()
    } finally {
      io.disconnect()
      await own.dispose()
    }
  })

  test('a blackholed Redis (SIGSTOP, 50 calls in flight): after the first timeout calls fail fast; healed soon after SIGCONT', async (t) => {
    if (!redisUrl(t)) return
    const own = new OwnRedis(await freePort())
    await own.start()
    const timeout = 400
    const redis = { url: own.url, keyPrefix: `bh-${process.pid}:`, commandTimeoutMs: timeout, connectTimeoutMs: timeout }
    const cache = new CacheManager({ redis, maxEntries: 10, invalidation: 'none' })
    const limiter = new RateLimiter({ limit: 1e9, windowMs: 60_000, algorithm: 'fixed-window', onRedisError: 'deny', redis })
    try {
      await cache.set('warm', 1)
      const keys = Array.from({ length: 50 }, (_, i) => `miss${i}`) // never in L1
      assert.equal((await limiter.check('a')).allowed, true)
      own.pause()
      const stoppedAt = performance.now()
      // The first wave waits for the timeout (nothing answers).
      const first = await Promise.all([...keys.slice(0, 25).map((k) => cache.get(k)), ...keys.slice(25).map((k) => limiter.check(k))])
      const firstMs = performance.now() - stoppedAt
      assert.ok(first.slice(0, 25).every((v) => v === undefined))
      assert.ok(first.slice(25).every((r) => (r as { allowed: boolean }).allowed === false), "onRedisError 'deny'")
      // Then, until Redis returns, every call settles without waiting for
      // a timeout: waves of 50 in flight for ~3 s.
      const lat: number[] = []
      // The event loop's own stalls over the same time (GC, or the process
      // not scheduled on a loaded machine): a call can't settle faster than
      // its thread runs, so a max latency near the max stall is not a wait.
      const stalls = monitorEventLoopDelay({ resolution: 1 })
      stalls.enable()
      let gcMax = 0
      const gcs = new PerformanceObserver((list) => {
        for (const e of list.getEntries()) gcMax = Math.max(gcMax, e.duration)
      })
      gcs.observe({ entryTypes: ['gc'] })
      const cpu0 = process.cpuUsage()
      const wall0 = performance.now()
      while (performance.now() - stoppedAt < 3000) {
        await Promise.all(
          keys.map((k, i) => {
            const t0 = performance.now()
            const p = i % 2 ? limiter.check(k) : cache.get(k)
            return p.then(() => lat.push(performance.now() - t0))
          }),
        )
        await new Promise((r) => setTimeout(r, 10))
      }
      lat.sort((a, b) => a - b)
      const p50 = lat[lat.length >> 1]
      const max = lat[lat.length - 1]
      stalls.disable()
      gcs.disconnect()
      const cpu = process.cpuUsage(cpu0)
      const wall = performance.now() - wall0
      t.diagnostic(`first wave ${firstMs.toFixed(0)} ms; then ${lat.length} calls: p50 ${p50.toFixed(2)} ms, p99 ${lat[Math.floor(lat.length * 0.99)].toFixed(2)} ms, max ${max.toFixed(2)} ms`)
      t.diagnostic(
        `meanwhile: event-loop delay max ${(stalls.max / 1e6).toFixed(2)} ms, p99 ${(stalls.percentile(99) / 1e6).toFixed(2)} ms; longest GC pause ${gcMax.toFixed(2)} ms; CPU ${(((cpu.user + cpu.system) / 1000 / wall) * 100).toFixed(0)}% of wall time; load average ${os.loadavg()[0].toFixed(2)}`,
      )
      // Not one waited a whole timeout (they would each take >= 400 ms).
      assert.ok(max < timeout, `a call waited ${max} ms while the breaker was open`)
      own.resume()
      const resumedAt = performance.now()
      await cache.set('after', 2) // may fail fast: the breaker is still open
      await eventually(async () => {
        const r = await limiter.check('b')
        return r.allowed && (await new CacheManager({ redis, invalidation: 'none' }).get('warm')) === 1
      }, 5000, 'heal after SIGCONT')
      t.diagnostic(`healed ${(performance.now() - resumedAt).toFixed(0)} ms after SIGCONT`)
    } finally {
      own.resume()
      await cache.close()
      await limiter.close()
      await own.dispose()
    }
  })
})

describe('Secrets', () => {
  test('no password in any error message or debug log', async (t) => {
    if (!redisUrl(t)) return
    const secret = `s3cret-${process.pid}-pw`
    const own = new OwnRedis(await freePort())
    own.extraArgs = ['--requirepass', 'the-right-one']
    await own.start()
    try {
      const wrong = `redis://:${secret}@127.0.0.1:${own.port}`
      const messages: string[] = []
      const grab = (e: unknown) => messages.push(`${(e as Error).message} ${JSON.stringify(e)} ${(e as Error).stack}`)
      // A named instance with other options.
      const name = `secret-${process.pid}`
      const c1 = new CacheManager({ name, redis: { url: wrong } })
      try {
        new CacheManager({ name, redis: { url: wrong, commandTimeoutMs: 5 } })
        assert.fail('should throw')
      } catch (e) {
        assert.equal((e as { code: string }).code, 'ERR_INVALID_ARG')
        grab(e)
      }
      // Malformed URLs.
      for (const url of [`http://:${secret}@127.0.0.1:1`, `redis://:${secret}@127.0.0.1:notaport`]) {
        try {
          new RateLimiter({ limit: 1, windowMs: 1000, redis: { url } })
          assert.fail('should throw')
        } catch (e) {
          grab(e)
        }
      }
      // The server refuses the password: errors that reach the caller.
      const l = new RateLimiter({ limit: 1, windowMs: 1000, redis: { url: wrong } })
      await l.reset('k').then(() => assert.fail('should reject'), grab)
      await c1.deletePattern('x*').then(() => assert.fail('should reject'), grab)
      await c1.clear().then(() => assert.fail('should reject'), grab)
      assert.ok(messages.length >= 6)
      for (const m of messages) assert.ok(!m.includes(secret), `leaked: ${m}`)
      await l.close()
      await c1.close()
      // Debug output (HOTPATH_DEBUG=1) in a child process.
      const script = `
        const { CacheManager, RateLimiter } = require(${JSON.stringify(join(process.cwd(), 'lib/hotpath.js'))})
        const redis = { url: ${JSON.stringify(wrong)}, commandTimeoutMs: 300 }
        const c = new CacheManager({ redis })
        const l = new RateLimiter({ limit: 1, windowMs: 1000, redis })
        ;(async () => {
          await c.set('k', 1); await c.get('nope'); await l.check('k'); await l.reset('k').catch(() => {})
          await new Promise((r) => setTimeout(r, 300)); await c.get('nope2'); await l.check('k')
          await c.close(); await l.close(); process.exit(0)
        })()`
      const r = spawnSync(process.execPath, ['-e', script], { env: { ...process.env, HOTPATH_DEBUG: '1' }, encoding: 'utf8', timeout: 20_000 })
      assert.equal(r.status, 0, r.stderr)
      assert.ok(r.stderr.includes('hotpath:'), `expected debug output, got: ${r.stderr}`)
      assert.ok(!r.stderr.includes(secret) && !r.stdout.includes(secret), `leaked in debug output: ${r.stderr}`)
    } finally {
      await own.dispose()
    }
  })
})

describe('TLS', () => {
  test('rediss:// against a redis-server with a throwaway certificate', async (t) => {
    if (!redisUrl(t)) return
    const own = new OwnTlsRedis(await freePort())
    await own.start()
    const port = own.port
    try {
      // `#insecure`: the certificate is self-signed (not in the webpki roots).
      const url = own.url
      const io = new IORedis({ ...own.ioredis, lazyConnect: true, retryStrategy: () => null })
      await eventually(async () => {
        try {
          await io.connect()
          return (await io.ping()) === 'PONG'
        } catch {
          io.disconnect()
          return false
        }
      }, 10_000, 'TLS redis-server up')
      assert.equal(url, `rediss://127.0.0.1:${port}/#insecure`)
      const redis = { url, keyPrefix: `tls-${process.pid}:`, commandTimeoutMs: 3000 }
      const a = new CacheManager({ redis })
      const b = new CacheManager({ redis, invalidation: 'none' })
      await a.set('k', { over: 'tls' })
      assert.deepEqual(await b.get('k'), { over: 'tls' })
      assert.equal(await io.get(`tls-${process.pid}:c:k`), '{"over":"tls"}')
      const l = new RateLimiter({ limit: 2, windowMs: 60_000, onRedisError: 'deny', redis })
      assert.deepEqual([(await l.check('u')).allowed, (await l.check('u')).allowed, (await l.check('u')).allowed], [true, true, false])
      assert.equal(l.stats().redisErrors, 0)
      assert.equal(a.stats().l2Errors + b.stats().l2Errors, 0)
      await a.close()
      await b.close()
      await l.close()
      io.disconnect()
    } finally {
      await own.dispose()
    }
  })

  /** Calls per command since the server started (INFO commandstats). */
  async function commandCalls(io: IORedis): Promise<Record<string, number>> {
    const info = (await io.info('commandstats')) as string
    const out: Record<string, number> = {}
    for (const m of info.matchAll(/^cmdstat_([^:]+):calls=(\d+)/gm)) out[m[1]] = Number(m[2])
    return out
  }

  test('rediss:// takes the JS-thread path: 64 gets in flight are one MGET, 64 limiter checks a few script calls, all answered in order', async (t) => {
    if (!redisUrl(t)) return
    const own = new OwnTlsRedis(await freePort())
    await own.start()
    const io = new IORedis({ ...own.ioredis, lazyConnect: true, retryStrategy: () => null })
    try {
      await io.connect()
      const redis = { url: own.url, keyPrefix: `tls64-${process.pid}:`, commandTimeoutMs: 3000 }
      const value = (i: number) => ({ i, pad: 'x'.repeat(i * 300) }) // up to ~19 KB: replies span TLS records
      const writer = new CacheManager({ redis, invalidation: 'none' })
      await writer.setMany(Array.from({ length: 64 }, (_, i) => [`k${i}`, value(i)] as [string, ReturnType<typeof value>]))
      const reader = new CacheManager({ redis, invalidation: 'none' })
      const before = await commandCalls(io)
      const got = await Promise.all(Array.from({ length: 64 }, (_, i) => reader.get(`k${i}`)))
      const after = await commandCalls(io)
      assert.deepEqual(got, Array.from({ length: 64 }, (_, i) => value(i)))
      assert.equal(reader.stats().l2Errors, 0)
      const delta = (a: Record<string, number>, b: Record<string, number>, cmd: string) => (a[cmd] ?? 0) - (b[cmd] ?? 0)
      t.diagnostic(`64 gets: MGET ${delta(after, before, 'mget')}, GET ${delta(after, before, 'get')}, PTTL ${delta(after, before, 'pttl')}`)
      // The JS-thread path sends the reads of one tick as one MGET; the
      // Tokio path (rediss:// before, or HOTPATH_REDIS_NO_FAST=1) sends a
      // GET + PTTL for each.
      assert.equal(delta(after, before, 'mget'), 1, 'one MGET for the tick')
      assert.equal(delta(after, before, 'get'), 0, 'no GET per read')
      // The limiter: 64 checks of one key in one tick, limit 50.
      const l = new RateLimiter({ limit: 50, windowMs: 60_000, algorithm: 'fixed-window', onRedisError: 'deny', redis })
      const b2 = await commandCalls(io)
      const rs = await Promise.all(Array.from({ length: 64 }, () => l.check('same')))
      const a2 = await commandCalls(io)
      assert.equal(l.stats().redisErrors, 0)
      assert.deepEqual(rs.map((r) => r.allowed), Array.from({ length: 64 }, (_, i) => i < 50), 'answered in order')
      const scripts = delta(a2, b2, 'evalsha') + delta(a2, b2, 'eval')
      t.diagnostic(`64 checks: ${scripts} script calls`)
      // 4 calls of 16 (a call leaves as soon as 16 are queued), each sent
      // once more whole on this fresh server (NOSCRIPT); the Tokio path
      // makes one call per check.
      assert.ok(scripts >= 1 && scripts <= 8, `checks batched into a few script calls, got ${scripts}`)
      // 64 in flight, many rounds, a mix of both.
      for (let round = 0; round < 20; round++) {
        const fresh = new CacheManager({ redis, invalidation: 'none', maxEntries: 10 })
        const mixed = await Promise.all(Array.from({ length: 64 }, (_, i) => (i % 2 ? fresh.get(`k${i}`) : l.check(`r${round}:${i}`))))
        mixed.forEach((v, i) => (i % 2 ? assert.deepEqual(v, value(i)) : assert.equal((v as { allowed: boolean }).allowed, true)))
        await fresh.close()
      }
      assert.equal(l.stats().redisErrors, 0)
      await writer.close()
      await reader.close()
      await l.close()
    } finally {
      io.disconnect()
      await own.dispose()
    }
  })

  test('rediss:// blackholed (SIGSTOP) with calls in flight: they fail after commandTimeoutMs; after SIGCONT the probe over TLS heals it (breaker phases: src/redis/tls.rs tests)', async (t) => {
    if (!redisUrl(t)) return
    const own = new OwnTlsRedis(await freePort())
    await own.start()
    const timeout = 400
    const redis = { url: own.url, keyPrefix: `tlsbh-${process.pid}:`, commandTimeoutMs: timeout, connectTimeoutMs: timeout }
    const cache = new CacheManager({ redis, maxEntries: 10, invalidation: 'none' })
    const limiter = new RateLimiter({ limit: 1e9, windowMs: 60_000, algorithm: 'fixed-window', onRedisError: 'deny', redis })
    try {
      await eventually(async () => (await limiter.check('up')).allowed, 10_000, 'TLS redis-server up')
      await cache.set('warm', 1)
      own.pause()
      const stoppedAt = performance.now()
      const keys = Array.from({ length: 40 }, (_, i) => `miss${i}`)
      const first = await Promise.all([...keys.slice(0, 20).map((k) => cache.get(k)), ...keys.slice(20).map((k) => limiter.check(k))])
      const firstMs = performance.now() - stoppedAt
      assert.ok(firstMs >= timeout, `settled before commandTimeoutMs: ${firstMs}`)
      assert.ok(first.slice(0, 20).every((v) => v === undefined))
      assert.ok(first.slice(20).every((r) => (r as { allowed: boolean }).allowed === false), "onRedisError 'deny'")
      const errors = limiter.stats().redisErrors
      assert.ok(errors >= 20, `${errors}`)
      own.resume()
      const resumedAt = performance.now()
      await eventually(async () => {
        const r = await limiter.check('b')
        return r.allowed && (await new CacheManager({ redis, invalidation: 'none' }).get('warm')) === 1
      }, 5000, 'heal after SIGCONT')
      t.diagnostic(`first wave ${firstMs.toFixed(0)} ms; healed ${(performance.now() - resumedAt).toFixed(0)} ms after SIGCONT`)
    } finally {
      own.resume()
      await cache.close()
      await limiter.close()
      await own.dispose()
    }
  })

  test('rediss:// to a server that never answers the TLS handshake: a connect that timed out, then the breaker (no password in the log)', async (t) => {
    if (!redisUrl(t)) return
    const secret = `tls-s3cret-${process.pid}`
    // In a child with HOTPATH_DEBUG=1: its stderr shows why calls failed.
    const script = `
      const net = require('node:net')
      const { CacheManager, RateLimiter } = require(${JSON.stringify(join(process.cwd(), 'lib/hotpath.js'))})
      const srv = net.createServer(() => {}) // takes the connection, never answers
      srv.listen(0, '127.0.0.1', async () => {
        const redis = { url: 'rediss://:${secret}@127.0.0.1:' + srv.address().port + '/#insecure', connectTimeoutMs: 300, commandTimeoutMs: 300, keyPrefix: 'x:' }
        const c = new CacheManager({ redis, invalidation: 'none' })
        const l = new RateLimiter({ limit: 5, windowMs: 60000, onRedisError: 'deny', redis })
        const t0 = performance.now()
        const first = await Promise.all([c.get('a'), l.check('a')])
        const firstMs = performance.now() - t0
        const second = await Promise.all([c.get('b'), l.check('b')])
        console.log(JSON.stringify({ firstMs, first: [first[0], first[1].allowed], second: [second[0], second[1].allowed], l2Errors: c.stats().l2Errors, redisErrors: l.stats().redisErrors }))
        await c.close(); await l.close(); process.exit(0)
      })`
    const r = spawnSync(process.execPath, ['-e', script], { env: { ...process.env, HOTPATH_DEBUG: '1' }, encoding: 'utf8', timeout: 20_000 })
    assert.equal(r.status, 0, r.stderr)
    const out = JSON.parse(r.stdout)
    t.diagnostic(`${r.stdout.trim()}\n${r.stderr.trim()}`)
    assert.ok(out.firstMs >= 300, `settled before connectTimeoutMs: ${out.firstMs}`)
    assert.deepEqual(out.first, [null, false])
    assert.deepEqual(out.second, [null, false])
    assert.ok(out.l2Errors >= 2 && out.redisErrors >= 2, r.stdout)
    assert.match(r.stderr, /TLS handshake with 127\.0\.0\.1:\d+ timed out after 300 ms/)
    assert.ok(!r.stderr.includes(secret) && !r.stdout.includes(secret), `leaked: ${r.stderr}`)
  })
})
