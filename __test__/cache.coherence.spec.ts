// CacheManager coherence: one test per item of issue 13 (key layout per cache
// name, bounds on every write, lone surrogates, deleteLater, ordered writes,
// write-behind retries, getOrSet timeouts and leader death), on a real
// redis-server where Redis is the point.
import { test, describe, before, after } from 'node:test'
import assert from 'node:assert/strict'
import Redis from 'ioredis'
import { CacheManager } from 'hotpath'
import { Worker } from 'node:worker_threads'
import { join } from 'node:path'
import { spawn, type ChildProcess } from 'node:child_process'
import { redisUrl, freePort, OwnRedis, eventually } from './helpers.ts'

let n = 0
const prefix = () => `hp-coh-${process.pid}-${++n}:`
const uniq = (s: string) => `${s}-${process.pid}-${++n}`
const hooks = require('../lib/testing.js')
const never = () => new Promise<never>(() => {})

/** Fails the test instead of hanging when `p` never settles (a wedged key). */
function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout
  return Promise.race([
    p,
    new Promise<T>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: still pending after ${ms} ms (wedged)`)), ms)
    }),
  ]).finally(() => clearTimeout(timer))
}

describe('CacheManager coherence (L1 only)', () => {
  test('#6 maxEntries holds after every write, without stats() running maintenance', () => {
    const c = new CacheManager({ maxEntries: 10 })
    for (let i = 0; i < 60; i++) {
      c.setSync(`k${i}`, i)
      let readable = 0
      for (let j = 0; j <= i; j++) if (c.has(`k${j}`)) readable++
      assert.ok(readable <= 10, `after write ${i}: ${readable} entries readable, maxEntries 10`)
    }
    void c.close()
  })

  test('#6 maxBytes holds after every write; a value larger than maxBytes is never resident', () => {
    const c = new CacheManager({ maxBytes: 1 << 20 })
    const big = Buffer.alloc(4 << 20, 1)
    for (let i = 0; i < 8; i++) {
      c.setSync(`b${i}`, big)
      assert.equal(c.getSync(`b${i}`), undefined, `4 MiB value ${i} readable with maxBytes 1 MiB`)
    }
    const d = new CacheManager({ maxBytes: 10_000 })
    const v = 'x'.repeat(1000)
    for (let i = 0; i < 60; i++) {
      d.setSync(`s${i}`, v)
      let bytes = 0
      for (let j = 0; j <= i; j++) if (d.getSync(`s${j}`) !== undefined) bytes += 1000 + `s${j}`.length
      assert.ok(bytes <= 10_000, `after write ${i}: ${bytes} bytes readable, maxBytes 10000`)
    }
    void c.close()
    void d.close()
  })

  test('#11 lone surrogates: keys rejected with ERR_INVALID_ARG, string values stored exactly', async () => {
    const c = new CacheManager()
    assert.throws(() => c.setSync('a\uD800', 1), { code: 'ERR_INVALID_ARG' })
    assert.throws(() => c.getSync('a\uDC00'), { code: 'ERR_INVALID_ARG' })
    await assert.rejects(c.set('a\uDC00', 1), { code: 'ERR_INVALID_ARG' })
    await assert.rejects(c.get('a\uDC00'), { code: 'ERR_INVALID_ARG' })
    assert.throws(() => c.has('x\uDFFF'), { code: 'ERR_INVALID_ARG' })
    c.setSync('ok', 'a\uD800b')
    assert.equal(c.getSync('ok'), 'a\uD800b')
    await c.set('ok2', '\uDC00')
    assert.equal(await c.get('ok2'), '\uDC00')
    assert.deepEqual(await c.getMany(['ok', 'ok2']), ['a\uD800b', '\uDC00'])
    // Well-formed pairs are untouched.
    c.setSync('emoji\uD83D\uDE00', '\uD83D\uDE00')
    assert.equal(c.getSync('emoji\uD83D\uDE00'), '\uD83D\uDE00')
    await c.close()
  })

  test('#7 deleteLater: a write made just after it returns is not deleted by its first pass', async () => {
    const c = new CacheManager()
    for (let i = 0; i < 50; i++) {
      c.deleteLater(`d${i}`, 60_000)
      c.setSync(`d${i}`, i)
    }
    await new Promise((r) => setTimeout(r, 20))
    for (let i = 0; i < 50; i++) assert.equal(c.getSync(`d${i}`), i, `d${i} vanished`)
    await c.close()
  })
})

describe('getOrSet never wedges a key (#5)', () => {
  test('timeoutMs bounds the leader and every waiter; the key is usable again afterwards', async () => {
    const c = new CacheManager()
    const leader = c.getOrSet('k', never, { timeoutMs: 50 })
    const waiter = c.getOrSet('k', never, { timeoutMs: 80 })
    await assert.rejects(within(leader, 10_000, 'leader'), { code: 'ERR_TIMEOUT' })
    // The waiter took the flight over once the leader gave up, then timed out itself.
    await assert.rejects(within(waiter, 10_000, 'waiter'), { code: 'ERR_TIMEOUT' })
    let calls = 0
    assert.equal(await within(c.getOrSet('k', () => (calls++, 'ok')), 10_000, 'after'), 'ok')
    assert.equal(calls, 1)
    assert.equal(c.getSync('k'), 'ok')
    await c.close()
  })

  test('a waiter without timeoutMs takes over when the leader times out', async () => {
    const c = new CacheManager()
    const leader = c.getOrSet('k', never, { timeoutMs: 30 })
    const waiter = c.getOrSet('k', () => 'second')
    await assert.rejects(leader, { code: 'ERR_TIMEOUT' })
    assert.equal(await within(waiter, 10_000, 'waiter'), 'second')
    await c.close()
  })

  test('signal aborts the wait with ERR_ABORTED (leader or waiter); the key is usable again', async () => {
    const c = new CacheManager()
    const ac = new AbortController()
    const leader = c.getOrSet('k', never, { signal: ac.signal })
    const ac2 = new AbortController()
    const waiter = c.getOrSet('k', never, { signal: ac2.signal })
    ac2.abort()
    await assert.rejects(within(waiter, 10_000, 'waiter'), { code: 'ERR_ABORTED' })
    ac.abort()
    await assert.rejects(within(leader, 10_000, 'leader'), { code: 'ERR_ABORTED' })
    const pre = new AbortController()
    pre.abort()
    await assert.rejects(c.getOrSet('k', () => 'x', { signal: pre.signal }), { code: 'ERR_ABORTED' })
    assert.equal(await within(c.getOrSet('k', () => 'ok'), 10_000, 'after'), 'ok')
    await assert.rejects(c.getOrSet('k', () => 'x', { timeoutMs: -1 }), { code: 'ERR_INVALID_ARG' })
    await assert.rejects(c.getOrSet('k', () => 'x', { signal: {} as AbortSignal }), { code: 'ERR_INVALID_ARG' })
    await c.close()
  })

  test('a leader in a worker thread that is terminated mid-factory hands the flight over', async () => {
    const name = uniq('flight-handover')
    const c = new CacheManager({ name })
    const w = new Worker(
      `const { parentPort } = require('node:worker_threads');
       const { CacheManager } = require(${JSON.stringify(require.resolve('hotpath'))});
       const c = new CacheManager({ name: ${JSON.stringify(name)} });
       c.getOrSet('k', () => { parentPort.postMessage('leading'); return new Promise(() => {}) });`,
      { eval: true },
    )
    await new Promise<void>((resolve, reject) => {
      w.once('message', () => resolve())
      w.once('error', reject)
    })
    let calls = 0
    const mine = c.getOrSet('k', () => (calls++, 'from-main'))
    await w.terminate()
    assert.equal(await within(mine, 10_000, 'waiter after the leader thread died'), 'from-main')
    assert.equal(calls, 1)
    await c.close()
  })
})

/** A child process of cache_sf_child.mjs, with its output lines. */
class Child {
  proc: ChildProcess
  lines: string[] = []
  exited: Promise<number | null>
  constructor(args: string[]) {
    this.proc = spawn(process.execPath, ['--import', 'tsx', join(__dirname, 'fixtures', 'cache_sf_child.mjs'), ...args], {
      stdio: ['pipe', 'pipe', 'inherit'],
    })
    let buf = ''
    this.proc.stdout!.on('data', (d) => {
      buf += d
      let i
      while ((i = buf.indexOf('\n')) >= 0) {
        this.lines.push(buf.slice(0, i))
        buf = buf.slice(i + 1)
      }
    })
    this.exited = new Promise((r) => this.proc.once('exit', (code) => r(code)))
  }
  has(prefix: string) {
    return this.lines.some((l) => l.startsWith(prefix))
  }
  count(prefix: string) {
    return this.lines.filter((l) => l.startsWith(prefix)).length
  }
}

describe("getOrSet singleFlight 'redis': one factory run across processes", () => {
  test('3 processes x 50 concurrent getOrSet of one missing key run the factory exactly once', async (t) => {
    if (!redisUrl(t)) return
    const keyPrefix = prefix()
    const kids = [0, 1, 2].map(() => new Child([process.env.REDIS_URL!, keyPrefix, 'k', '300', '50']))
    try {
      await eventually(() => kids.every((k) => k.has('ready')), 30_000, 'children ready')
      for (const k of kids) k.proc.stdin!.write('go\n')
      await eventually(() => kids.every((k) => k.has('done')), 30_000, 'children done')
      const factories = kids.reduce((n, k) => n + k.count('factory'), 0)
      assert.equal(factories, 1, kids.map((k) => k.lines.join('|')).join(' / '))
      const values = new Set(kids.map((k) => k.lines.find((l) => l.startsWith('done'))))
      assert.equal(values.size, 1, [...values].join(' / '))
    } finally {
      for (const k of kids) k.proc.kill('SIGKILL')
    }
  })

  test('the lease holder SIGKILLed mid-factory: the lease expires, passes on, and the factory runs exactly once more', async (t) => {
    if (!redisUrl(t)) return
    const keyPrefix = prefix()
    const kids = [0, 1, 2].map(() => new Child([process.env.REDIS_URL!, keyPrefix, 'k', '1500', '50']))
    try {
      await eventually(() => kids.every((k) => k.has('ready')), 30_000, 'children ready')
      for (const k of kids) k.proc.stdin!.write('go\n')
      await eventually(() => kids.some((k) => k.has('factory')), 30_000, 'a factory started')
      const holder = kids.find((k) => k.has('factory'))!
      holder.proc.kill('SIGKILL')
      await holder.exited
      const rest = kids.filter((k) => k !== holder)
      await eventually(() => rest.every((k) => k.has('done')), 30_000, 'the others done')
      const factories = kids.reduce((n, k) => n + k.count('factory'), 0)
      assert.equal(factories, 2, kids.map((k) => k.lines.join('|')).join(' / '))
      const values = new Set(rest.map((k) => k.lines.find((l) => l.startsWith('done'))))
      assert.equal(values.size, 1)
    } finally {
      for (const k of kids) k.proc.kill('SIGKILL')
    }
  })

  test("singleFlight 'redis' without redis is ERR_INVALID_ARG; a bad singleFlight too", async () => {
    const c = new CacheManager()
    await assert.rejects(c.getOrSet('k', () => 1, { singleFlight: 'redis' }), { code: 'ERR_INVALID_ARG' })
    await assert.rejects(c.getOrSet('k', () => 1, { singleFlight: 'cluster' as 'redis' }), { code: 'ERR_INVALID_ARG' })
    await c.close()
  })
})

describe('CacheManager coherence on Redis', () => {
  let url: string | null = null
  let raw: Redis
  before(() => {
    url = process.env.REDIS_URL ?? null
    if (url) raw = new Redis(url)
  })
  after(async () => {
    await raw?.quit()
  })

  test('#1 caches with different names never share keys; clear, deletePattern and deleteTag stay inside', async (t) => {
    if (!redisUrl(t)) return
    const keyPrefix = prefix()
    const [un, sn] = [uniq('users'), uniq('sessions')]
    const users = new CacheManager({ name: un, redis: { url: url!, keyPrefix } })
    const sessions = new CacheManager({ name: sn, redis: { url: url!, keyPrefix } })
    await users.set('k', 'from-users', { tags: ['t'] })
    assert.equal(await sessions.get('k'), undefined)
    await sessions.set('k', 'from-sessions', { tags: ['t'] })
    await sessions.set('k2', 'from-sessions')
    assert.equal(users.getSync('k'), 'from-users')
    // The layout: <keyPrefix>c@<name>:<key>
    assert.equal(await raw.get(`${keyPrefix}c@${un}:k`), '"from-users"')
    assert.equal(await raw.get(`${keyPrefix}c@${sn}:k`), '"from-sessions"')
    assert.equal(await users.deleteTag('t'), 1)
    assert.equal(await raw.get(`${keyPrefix}c@${sn}:k`), '"from-sessions"')
    await users.set('k', 'again')
    assert.equal(await users.deletePattern('k*'), 1)
    assert.equal(await raw.get(`${keyPrefix}c@${sn}:k2`), '"from-sessions"')
    await users.set('k3', 'u')
    await users.clear()
    assert.equal(await raw.exists(`${keyPrefix}c@${un}:k3`), 0)
    assert.equal(await raw.get(`${keyPrefix}c@${sn}:k`), '"from-sessions"')
    assert.equal(await raw.get(`${keyPrefix}c@${sn}:k2`), '"from-sessions"')
    assert.equal(sessions.getSync('k'), 'from-sessions')
    assert.equal(await sessions.deleteTag('t'), 1)
    assert.equal(await sessions.deletePattern('k*'), 1)
    // A name with ':' cannot alias another name's keys: 'x:y' + 'k' vs 'x' + 'y:k'.
    const base = uniq('x')
    const a = new CacheManager({ name: `${base}:y`, redis: { url: url!, keyPrefix } })
    const b = new CacheManager({ name: base, redis: { url: url!, keyPrefix } })
    await a.set('k', 'from-a')
    await b.set('y:k', 'from-b')
    assert.equal(await raw.get(`${keyPrefix}c@${base}%3Ay:k`), '"from-a"')
    assert.equal(await raw.get(`${keyPrefix}c@${base}:y:k`), '"from-b"')
    await a.clear()
    assert.equal(await raw.get(`${keyPrefix}c@${base}:y:k`), '"from-b"')
    await b.clear()
    await b.close()
    await users.close()
    await sessions.close()
    await a.close()
  })

  test('#1 two instances with the same name share keys across processes (a fresh attach reads Redis)', async (t) => {
    if (!redisUrl(t)) return
    const keyPrefix = prefix()
    const name = uniq('shared')
    const a = new CacheManager({ name, redis: { url: url!, keyPrefix } })
    await a.set('x', 1)
    await a.close()
    const b = new CacheManager({ name, redis: { url: url!, keyPrefix } })
    assert.equal(await b.get('x'), 1)
    const other = new CacheManager({ name: uniq('other'), redis: { url: url!, keyPrefix } })
    assert.equal(await other.get('x'), undefined)
    await b.clear()
    await b.close()
    await other.close()
  })

  test('#11 lone surrogates round-trip through Redis', async (t) => {
    if (!redisUrl(t)) return
    const keyPrefix = prefix()
    const a = new CacheManager({ redis: { url: url!, keyPrefix } })
    const b = new CacheManager({ redis: { url: url!, keyPrefix } })
    await a.set('s', 'a\uD800b')
    assert.equal(await b.get('s'), 'a\uD800b')
    assert.deepEqual(await b.getMany(['s']), ['a\uD800b'])
    await a.clear()
    await a.close()
    await b.close()
  })

  test('#7 deleteLater then set: neither L1 nor Redis loses the new value', async (t) => {
    if (!redisUrl(t)) return
    const keyPrefix = prefix()
    const c = new CacheManager({ redis: { url: url!, keyPrefix } })
    for (let i = 0; i < 20; i++) {
      c.deleteLater(`d${i}`, 60_000)
      await c.set(`d${i}`, i)
    }
    await c.close()
    for (let i = 0; i < 20; i++) assert.equal(await raw.get(`${keyPrefix}c:d${i}`), String(i), `d${i} lost in Redis`)
    const d = new CacheManager({ redis: { url: url!, keyPrefix } })
    await d.clear()
    await d.close()
  })

  test('#3 setSync then delete: the delete lands after the write (no resurrection in Redis)', async (t) => {
    if (!redisUrl(t)) return
    const keyPrefix = prefix()
    const c = new CacheManager({ redis: { url: url!, keyPrefix } })
    const keys = Array.from({ length: 300 }, (_, i) => `r${i}`)
    for (const k of keys) c.setSync(k, k)
    assert.equal(await c.deleteMany(keys), 300)
    for (let i = 0; i < 100; i++) {
      c.setSync(`s${i}`, i)
      assert.equal(await c.delete(`s${i}`), true)
    }
    await c.close() // drains everything still queued
    const left = await raw.keys(`${keyPrefix}c:*`)
    assert.deepEqual(left, [])
  })

  test('#2 a fill that raced a remote invalidation is dropped (hook pauses between the L2 read and the fill)', async (t) => {
    if (!redisUrl(t)) return
    const keyPrefix = prefix()
    const a = new CacheManager({ redis: { url: url!, keyPrefix } })
    const b = new CacheManager({ redis: { url: url!, keyPrefix } })
    await a.set('k', 'v1')
    await a.set('probe', 1)
    assert.equal(await b.get('probe'), 1) // b subscribed and filled
    hooks.pauseFills(b)
    const reached = hooks.fillReached(b)
    const read = b.get('k') // reads v1 from Redis, then pauses before filling
    await reached
    hooks.pauseFills(b, false)
    await a.set('k', 'v2')
    await a.set('probe', 2)
    // Messages arrive in order: once probe's invalidation is in, k's is too.
    await eventually(() => b.getSync('probe') === undefined, 10_000, 'invalidation delivered')
    hooks.releaseFill(b)
    assert.equal(await read, 'v1') // what it read
    assert.equal(b.getSync('k'), undefined) // but L1 was not filled with it
    assert.equal(await b.get('k'), 'v2')
    await a.clear()
    await a.close()
    await b.close()
  })

  // deletePattern's message names a glob, not keys: a key the receiver did
  // not hold in L1 (its L2 read in flight) had no slot bumped, so the read's
  // fill passed its version check and kept the deleted value in L1.
  test('#2 a fill that raced a remote deletePattern is dropped (the key was not in L1)', async (t) => {
    if (!redisUrl(t)) return
    const keyPrefix = prefix()
    const a = new CacheManager({ redis: { url: url!, keyPrefix } })
    const b = new CacheManager({ redis: { url: url!, keyPrefix } })
    await a.set('pk', 'v1')
    await a.set('probe', 1)
    assert.equal(await b.get('probe'), 1) // b subscribed and filled
    hooks.pauseFills(b)
    const reached = hooks.fillReached(b)
    const read = b.get('pk') // reads v1 from Redis, then pauses before filling
    await reached
    hooks.pauseFills(b, false)
    assert.equal(await a.deletePattern('pk*'), 1)
    await a.set('probe', 2)
    await eventually(() => b.getSync('probe') === undefined, 10_000, 'invalidation delivered')
    hooks.releaseFill(b)
    assert.equal(await read, 'v1') // what it read
    assert.equal(b.getSync('pk'), undefined, 'L1 kept a value deletePattern deleted')
    assert.equal(await b.get('pk'), undefined)
    // The same on the instance that deletes.
    await a.set('pk', 'v1')
    hooks.pauseFills(b)
    const reached2 = hooks.fillReached(b)
    const read2 = b.get('pk')
    await reached2
    hooks.pauseFills(b, false)
    assert.equal(await b.deletePattern('pk*'), 1)
    hooks.releaseFill(b)
    assert.equal(await read2, 'v1')
    assert.equal(b.getSync('pk'), undefined, 'L1 kept a value its own deletePattern deleted')
    assert.equal(await b.get('pk'), undefined)
    await a.clear()
    await a.close()
    await b.close()
  })

  // clear() empties L1 first and Redis after: a read started in between
  // took its fill version after L1's bump and could read the value the
  // clear was about to delete from Redis, then fill L1 with it for good.
  test('#2 a read racing this instance\'s clear() does not keep a cleared value in L1', async (t) => {
    if (!redisUrl(t)) return
    const keyPrefix = prefix()
    const a = new CacheManager({ redis: { url: url!, keyPrefix } })
    const b = new CacheManager({ redis: { url: url!, keyPrefix } })
    await a.set('ck', 'v1')
    assert.equal(await b.get('nothing'), undefined) // b subscribed
    // Deterministic: the write path holds clear()'s Redis step (it waits for
    // earlier writes first), so the read's GET surely sees 'v1'; the fill is
    // held until the clear landed. (Before, the test assumed the GET beat the
    // DEL: when it did not, the read never reached the fill pause and the
    // test hung.)
    hooks.pauseWrites(b)
    const writeHeld = hooks.writeReached(b)
    hooks.pauseFills(b)
    const fillHeld = hooks.fillReached(b)
    const cleared = b.clear() // L1 now; SCAN + DEL in Redis once the write path goes on
    await writeHeld
    const read = b.get('ck') // reads 'v1': the DEL is not sent yet
    await fillHeld
    hooks.pauseWrites(b, false)
    hooks.releaseWrite(b)
    await cleared
    hooks.pauseFills(b, false)
    hooks.releaseFill(b)
    const got = await read
    assert.equal(got, 'v1')
    assert.equal(await raw.get(`${keyPrefix}c:ck`), null)
    if (got === 'v1') assert.equal(b.getSync('ck'), undefined, 'L1 kept a value clear() deleted')
    assert.equal(await b.get('ck'), undefined)
    await a.close()
    await b.close()
  })

  // Found by the randomized test under load: an L2 read that overtakes this
  // instance's own queued DEL (the write path is its own task) read the old
  // value and filled L1 with it, under a version taken after the delete's own
  // bump: L1 then served the deleted value forever (an instance ignores its
  // own invalidation messages). The hook holds the DEL before it is sent.
  for (const how of ['get', 'getMany'] as const) {
    test(`#2/#3 ${how} right after delete never reads (or fills L1 with) the value the queued DEL removes`, async (t) => {
      if (!redisUrl(t)) return
      const keyPrefix = prefix()
      const a = new CacheManager({ redis: { url: url!, keyPrefix } })
      const b = new CacheManager({ redis: { url: url!, keyPrefix } })
      await b.set('k', 'old')
      await a.get('probe') // a subscribed
      hooks.pauseWrites(a)
      const reached = hooks.writeReached(a)
      const del = a.delete('k') // queued; the write path holds it
      await reached
      const read = how === 'get' ? a.get('k') : a.getMany(['k']).then((r) => r[0])
      // The read must not overtake the DEL: give it every chance to.
      await new Promise((r) => setTimeout(r, 50))
      hooks.pauseWrites(a, false)
      hooks.releaseWrite(a)
      assert.equal(await del, true)
      assert.equal(await read, undefined, 'a read after delete returned the deleted value')
      assert.equal(await raw.get(`${keyPrefix}c:k`), null)
      assert.equal(a.getSync('k'), undefined, 'L1 holds the deleted value')
      assert.equal(await a.get('k'), undefined)
      await a.close()
      await b.close()
    })
  }

  test('#2 a fill that raced a local set does not overwrite it (get and getMany)', async (t) => {
    if (!redisUrl(t)) return
    const keyPrefix = prefix()
    const a = new CacheManager({ redis: { url: url!, keyPrefix } })
    const b = new CacheManager({ redis: { url: url!, keyPrefix } })
    await a.set('k', 'old')
    await a.set('m', 'old')
    assert.equal(await b.get('nothing'), undefined) // b subscribed
    hooks.pauseFills(b)
    let reached = hooks.fillReached(b)
    const read = b.get('k')
    await reached
    b.setSync('k', 'new')
    hooks.releaseFill(b)
    assert.equal(await read, 'old')
    assert.equal(b.getSync('k'), 'new')
    reached = hooks.fillReached(b)
    const many = b.getMany(['m'])
    await reached
    await b.set('m', 'new')
    hooks.pauseFills(b, false)
    hooks.releaseFill(b)
    assert.deepEqual(await many, ['old'])
    assert.equal(b.getSync('m'), 'new')
    await a.clear()
    await a.close()
    await b.close()
  })

  test('#2 getMany fills L1 with the key\'s Redis TTL (an entry Redis expires does not stay in L1)', async (t) => {
    if (!redisUrl(t)) return
    const keyPrefix = prefix()
    const b = new CacheManager({ redis: { url: url!, keyPrefix } })
    await raw.set(`${keyPrefix}c:t`, '"short"', 'PX', 60_000)
    assert.deepEqual(await b.getMany(['t']), ['short'])
    assert.equal(b.has('t'), true) // served from L1 now
    const ttl = await b.remainingTtlMs('t') // from L1
    assert.ok(ttl !== undefined && ttl <= 60_000 && ttl > 0, String(ttl))
    await b.clear()
    await b.close()
  })

  test('#9 a named cache whose last handle is dropped without close() (worker exit) releases it and flushes', async (t) => {
    if (!redisUrl(t)) return
    const keyPrefix = prefix()
    const name = uniq('dropped')
    const w = new Worker(
      `const { parentPort } = require('node:worker_threads');
       const { CacheManager } = require(${JSON.stringify(require.resolve('hotpath'))});
       const c = new CacheManager({ name: ${JSON.stringify(name)}, redis: { url: ${JSON.stringify(url)}, keyPrefix: ${JSON.stringify(keyPrefix)} } });
       for (let i = 0; i < 100; i++) c.setSync('w' + i, i);
       parentPort.postMessage('done');`,
      { eval: true },
    )
    await new Promise((resolve) => w.once('exit', resolve))
    assert.equal(hooks.cacheHandles(name), 0)
    await eventually(async () => (await raw.exists(...Array.from({ length: 100 }, (_, i) => `${keyPrefix}c@${name}:w${i}`))) === 100, 10_000, 'flushed')
    const c = new CacheManager({ name, redis: { url: url!, keyPrefix } })
    assert.equal(await c.get('w99'), 99)
    await c.clear()
    await c.close()
  })

  // Found by the randomized test: a key another instance wrote with a tag,
  // read here from L2 (the fill carries no tags), survived this instance's
  // own deleteTag in L1 for good: the local pass only knew local tags, and
  // an instance ignores its own invalidation messages.
  test('#8 deleteTag removes from L1 the members Redis deleted, tagged by another instance (get and getMany fills)', async (t) => {
    if (!redisUrl(t)) return
    const keyPrefix = prefix()
    const a = new CacheManager({ redis: { url: url!, keyPrefix } })
    const b = new CacheManager({ redis: { url: url!, keyPrefix } })
    await b.set('x', { n: 1 }, { tags: ['t'] })
    await b.set('y', 2, { tags: ['t'] })
    assert.deepEqual(await a.get('x'), { n: 1 }) // filled into a's L1 (and its front cache)
    assert.deepEqual(await a.getMany(['y']), [2])
    assert.equal(a.getSync('y'), 2)
    assert.equal(await a.deleteTag('t'), 2)
    assert.equal(await raw.get(`${keyPrefix}c:x`), null)
    assert.equal(a.getSync('x'), undefined, "a's L1 still serves a key its own deleteTag deleted")
    assert.equal(a.getSync('y'), undefined)
    assert.equal(await a.get('x'), undefined)
    await a.close()
    await b.close()
  })

  test('#8 deleteTag is atomic against concurrent tagged sets: no key escapes a later deleteTag', async (t) => {
    if (!redisUrl(t)) return
    const keyPrefix = prefix()
    const a = new CacheManager({ redis: { url: url!, keyPrefix }, invalidation: 'none' })
    const b = new CacheManager({ redis: { url: url!, keyPrefix }, invalidation: 'none' })
    let writing = true
    const deleter = (async () => {
      while (writing) await b.deleteTag('t')
    })()
    for (let round = 0; round < 40; round++) {
      for (let i = 0; i < 50; i++) a.setSync(`k${round}-${i}`, i, { tags: ['t'] })
      await a.set(`k${round}`, round, { tags: ['t'] })
    }
    writing = false
    await deleter
    await b.deleteTag('t')
    // Every key that was set is gone: each was in the tag set when it existed.
    assert.deepEqual(await raw.keys(`${keyPrefix}c:*`), [])
    await a.close()
    await b.close()
  })

  test('#8 tag sets expire with their longest-lived member and shrink as members go', async (t) => {
    if (!redisUrl(t)) return
    const keyPrefix = prefix()
    const c = new CacheManager({ redis: { url: url!, keyPrefix } })
    await c.set('x', 1, { tags: ['short'], ttlMs: 30_000 })
    await c.set('y', 1, { tags: ['short'], ttlMs: 60_000 })
    const ttl = await raw.pttl(`${keyPrefix}t:short`)
    assert.ok(ttl > 30_000 && ttl <= 60_000, `tag set PTTL ${ttl}`)
    await c.set('z', 1, { tags: ['short'] }) // a member without TTL: the set lives on
    assert.equal(await raw.pttl(`${keyPrefix}t:short`), -1)
    for (let i = 0; i < 100; i++) await c.set(`d${i}`, i, { tags: ['grow'] })
    await c.deleteMany(Array.from({ length: 100 }, (_, i) => `d${i}`))
    for (let i = 0; i < 200; i++) await c.set('live', i, { tags: ['grow'] })
    const card = await raw.scard(`${keyPrefix}t:grow`)
    assert.ok(card <= 50, `tag set still has ${card} members for 1 live key`)
    await c.clear()
    await c.close()
  })

  test('#10 a subscription that silently stops delivering is detected by its health check, resubscribed, and L1 flushed once', async (t) => {
    if (!redisUrl(t)) return
    const keyPrefix = prefix()
    const a = new CacheManager({ redis: { url: url!, keyPrefix } })
    const b = new CacheManager({ redis: { url: url!, keyPrefix } })
    await a.set('k', 'v1')
    assert.equal(await b.get('k'), 'v1')
    hooks.deafen(b) // b's subscription now drops every message, as a half-open connection would
    await a.set('k', 'v2')
    // The health check notices its pings do not come back, resubscribes and
    // flushes L1 (the missed invalidation cannot leave v1 there).
    await eventually(() => b.getSync('k') === undefined, 20_000, 'health check')
    assert.equal(await b.get('k'), 'v2')
    // And invalidations are heard again.
    await a.set('k', 'v3')
    await eventually(() => b.getSync('k') === undefined, 10_000, 'invalidation after resubscribe')
    await a.clear()
    await a.close()
    await b.close()
  })

  test('#4 write-behind retries: setSync writes made while Redis is down land when it returns; close waits', async (t) => {
    if (!redisUrl(t)) return
    const own = new OwnRedis(await freePort())
    await own.start()
    try {
      const keyPrefix = prefix()
      const c = new CacheManager({ redis: { url: own.url, keyPrefix, commandTimeoutMs: 300, connectTimeoutMs: 200 } })
      await c.set('warm', 1)
      await own.stop()
      for (let i = 0; i < 5000; i++) c.setSync(`w${i}`, i)
      // A write-through set behind them resolves while Redis is still down
      // (it does not wait out the retries), and still lands later, in order.
      await c.set('during', 'x')
      assert.equal(await c.delete('w0'), true)
      await own.start()
      await c.close()
      const r = new Redis(own.url)
      const vals = await r.mget(Array.from({ length: 5000 }, (_, i) => `${keyPrefix}c:w${i}`))
      await r.quit()
      assert.equal(vals[0], null) // deleted after it was written
      assert.equal(vals.filter((v, i) => v === String(i)).length, 4999)
      const r2 = new Redis(own.url)
      assert.equal(await r2.get(`${keyPrefix}c:during`), '"x"')
      await r2.quit()
      const s = c.stats()
      assert.equal(s.droppedWrites, 0)
    } finally {
      await own.dispose()
    }
  })

  test('#4 write-behind gives up after writeRetryMs, counts every dropped write, and close() returns', async (t) => {
    if (!redisUrl(t)) return
    const c = new CacheManager({ redis: { url: 'redis://127.0.0.1:1', commandTimeoutMs: 100, connectTimeoutMs: 100 }, writeRetryMs: 300 })
    for (let i = 0; i < 1000; i++) c.setSync(`w${i}`, i)
    await c.close()
    const s = c.stats()
    assert.equal(s.droppedWrites, 1000)
    assert.equal(s.pendingWrites, 0)
  })
})
