// One error model: the codes are one list shared with Rust, every error is a
// HotpathError (TypeError / RangeError where that fits), messages are in JS
// terms, and async rejections carry the caller's stack.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { BatchProcessor, BufferPool, CacheManager, ERROR_CODES, HotpathError, isHotpathError, RateLimiter, WorkerQueue } from 'hotpath'

const root = join(__dirname, '..')
const errors = require('../lib/errors.js')

/** `Code` variants of src/error.rs in declaration order, with their strings. */
function rustCodes(): [string, string][] {
  const src = readFileSync(join(root, 'src', 'error.rs'), 'utf8')
  const body = /pub enum Code \{([^}]*)\}/.exec(src)
  assert.ok(body, 'src/error.rs declares `pub enum Code`')
  const variants = body[1]
    .split('\n')
    .map((l) => l.replace(/\/\/.*$/, '').trim())
    .filter((l) => /^[A-Z]\w*,?$/.test(l))
    .map((l) => l.replace(',', ''))
  const strings = new Map([...src.matchAll(/Code::(\w+)\s*=>\s*"(ERR_\w+)"/g)].map((m) => [m[1], m[2]]))
  return variants.map((v) => [v, strings.get(v) ?? `(no string for ${v})`])
}

test('ERROR_CODES is src/error.rs `Code`, in its order (the native side reports a code by its index)', () => {
  const rust = rustCodes()
  const js = Object.entries(ERROR_CODES)
  assert.deepEqual(
    js.map(([k, v]) => [k.toLowerCase().replace(/_(\w)/g, (_, c) => c.toUpperCase()).replace(/^\w/, (c) => c.toUpperCase()), v]),
    rust,
  )
  assert.deepEqual(errors.CODE_BY_INDEX, rust.map(([, s]) => s))
  assert.ok(Object.isFrozen(ERROR_CODES))
})

test('the typings and the README name every code', () => {
  const header = readFileSync(join(root, 'types', 'header.d.ts'), 'utf8')
  const readme = readFileSync(join(root, 'README.md'), 'utf8')
  const union = /export type HotpathErrorCode =([^/]*?)\n\n/.exec(header)
  assert.ok(union)
  const codes = Object.values(ERROR_CODES)
  assert.deepEqual([...union[1].matchAll(/'(ERR_\w+)'/g)].map((m) => m[1]), codes)
  const table = /ERROR_CODES: Readonly<\{([^}]*)\}>/.exec(header)
  assert.ok(table)
  assert.deepEqual([...table[1].matchAll(/(\w+): '(ERR_\w+)'/g)].map((m) => [m[1], m[2]]), Object.entries(ERROR_CODES))
  const errorsSection = readme.slice(readme.indexOf('\n## Errors'))
  for (const c of codes) assert.match(errorsSection, new RegExp(`\\| \`${c}\` \\|`), `README's code table has ${c}`)
})

test('HotpathError: one brand for the Error, TypeError and RangeError kinds; isHotpathError narrows', async () => {
  const pool = new BufferPool()
  const type = (() => {
    try {
      pool.allocate('1' as unknown as number)
    } catch (e) {
      return e
    }
  })()
  const range = (() => {
    try {
      pool.allocate(-1)
    } catch (e) {
      return e
    }
  })()
  await pool.close()
  const closed = (() => {
    try {
      pool.allocate(1)
    } catch (e) {
      return e
    }
  })()
  for (const [e, Base, name] of [
    [type, TypeError, 'TypeError'],
    [range, RangeError, 'RangeError'],
    [closed, Error, 'HotpathError'],
  ] as const) {
    assert.ok(isHotpathError(e), name)
    assert.ok(e instanceof HotpathError, name)
    assert.ok(e instanceof Base, name)
    assert.ok(e instanceof Error, name)
    assert.equal((e as Error).name, name)
  }
  assert.ok(!(type instanceof RangeError) && !(range instanceof TypeError) && !(closed instanceof TypeError))
  assert.equal((type as HotpathError).code, 'ERR_INVALID_ARG')
  assert.equal((closed as HotpathError).code, 'ERR_CLOSED')
  // Not ours: a plain Error with a hotpath-looking code, a TypeError, junk.
  const fake = Object.assign(new Error('x'), { code: 'ERR_CLOSED' })
  for (const v of [fake, new TypeError('x'), null, undefined, 'ERR_CLOSED', { code: 'ERR_CLOSED' }]) {
    assert.equal(isHotpathError(v), false)
    assert.equal(v instanceof HotpathError, false)
  }
  // Users may make one (tests, wrappers); a subclass keeps ordinary instanceof.
  const mine = new HotpathError('ERR_TIMEOUT', 'mine')
  assert.ok(isHotpathError(mine) && mine.code === 'ERR_TIMEOUT' && mine.message === 'mine')
  class Sub extends HotpathError {}
  assert.equal(mine instanceof Sub, false)
  assert.equal(new Sub('ERR_CLOSED', 's') instanceof Sub, true)
})

test('the same mistake is the same class in every class', async () => {
  const makers: Record<string, (o: object) => unknown> = {
    CacheManager: (o) => new CacheManager(o as never),
    RateLimiter: (o) => new RateLimiter({ limit: 1, windowMs: 1000, ...o } as never),
    BufferPool: (o) => new BufferPool(o as never),
    WorkerQueue: (o) => new WorkerQueue(o as never),
  }
  for (const [cls, make] of Object.entries(makers)) {
    assert.throws(() => make({ name: 5 }), (e: unknown) => e instanceof TypeError && isHotpathError(e) && /\bname\b/.test((e as Error).message), `${cls} name: 5`)
    assert.throws(() => make({ name: '' }), (e: unknown) => e instanceof RangeError && isHotpathError(e), `${cls} name: ''`)
  }
  for (const [cls, make] of Object.entries({
    CacheManager: (o: unknown) => new CacheManager(o as never),
    RateLimiter: (o: unknown) => new RateLimiter(o as never),
    BufferPool: (o: unknown) => new BufferPool(o as never),
    WorkerQueue: (o: unknown) => new WorkerQueue(o as never),
    BatchProcessor: (o: unknown) => new BatchProcessor(() => [], o as never),
  })) {
    assert.throws(() => make(5), (e: unknown) => e instanceof TypeError && isHotpathError(e), `${cls} options: 5`)
  }
  // A string where a number belongs: a TypeError naming the option, never napi's words.
  for (const [what, f] of [
    ['maxBatchSize', () => new BatchProcessor(() => [], { maxBatchSize: 'x' as never })],
    ['ttlMs', () => new CacheManager({ ttlMs: 'x' as never })],
    ['chunkSize', () => new BufferPool({ chunkSize: 'x' as never })],
    ['commandTimeoutMs', () => new CacheManager({ redis: { url: 'redis://127.0.0.1:1', commandTimeoutMs: 'x' as never } })],
    ['url', () => new RateLimiter({ limit: 1, windowMs: 1, redis: { url: 5 as never } })],
    ['concurrency', () => new WorkerQueue({ concurrency: 'x' as never })],
  ] as const) {
    assert.throws(f, (e: unknown) => {
      assert.ok(e instanceof TypeError && isHotpathError(e), what)
      assert.match(e.message, new RegExp(`\\b${what} must be a (number|string)`))
      assert.doesNotMatch(e.message, /napi|rust|Failed to convert|Some\(/)
      return true
    })
  }
  // NaN, Infinity, negatives: RangeError naming the value and the range.
  for (const [what, f] of [
    ['maxWaitMs', () => new BatchProcessor(() => [], { maxWaitMs: -1 })],
    ['ttlMs', () => new CacheManager({ ttlMs: NaN })],
    ['idleMs', () => new CacheManager({ idleMs: 2 ** 53 })],
    ['staleMs', () => new CacheManager({ staleMs: 1e308 })],
    ['windowMs', () => new RateLimiter({ limit: 1, windowMs: Infinity })],
    ['limit', () => new RateLimiter({ limit: -1, windowMs: 1 })],
    ['concurrency', () => new WorkerQueue({ concurrency: 1.5 })],
    ['maxPooledBytes', () => new BufferPool({ maxPooledBytes: -0.5 })],
    ['policy', () => new CacheManager({ policy: 'fifo' as never })],
    ['algorithm', () => new RateLimiter({ limit: 1, windowMs: 1, algorithm: 'leaky' as never })],
  ] as const) {
    assert.throws(f, (e: unknown) => {
      assert.ok(e instanceof RangeError && isHotpathError(e) && e.code === 'ERR_INVALID_ARG', what)
      assert.match(e.message, new RegExp(`\\b${what} must be`))
      return true
    })
  }
})

test('napi-rs conversion messages that still reach JS are put in JS terms', () => {
  const napi = Object.assign(new Error('Failed to convert napi value String into rust type `f64` on BatchOptions.maxBatchSize'), { code: 'ERR_INVALID_ARG' })
  const e = errors.fromNative(napi)
  assert.ok(e instanceof TypeError && isHotpathError(e))
  assert.equal(e.message, 'maxBatchSize must be a number, got a string')
  const nested = errors.fromNative(Object.assign(new Error('Failed to convert JavaScript value `Number 5 ` into rust type `String` on RedisOptions.url on RateLimiterOptions.redis'), { code: 'StringExpected' }))
  assert.equal(nested.message, 'redis.url must be a string, got a number')
  const range = errors.fromNative(Object.assign(new Error('chunkSize must be a power of two from 64 to 1073741824, got 3'), { code: 'ERR_INVALID_ARG' }))
  assert.ok(range instanceof RangeError && isHotpathError(range) && range.code === 'ERR_INVALID_ARG')
  const other = errors.fromNative(Object.assign(new Error('a CacheManager named "x" already exists with other options (a); got (b)'), { code: 'ERR_INVALID_ARG' }))
  assert.ok(!(other instanceof RangeError) && !(other instanceof TypeError) && isHotpathError(other))
  const panic = errors.fromNative(Object.assign(new Error('called `Option::unwrap()` on a `None` value'), { code: 'GenericFailure' }))
  assert.equal(panic.code, 'ERR_INTERNAL')
  assert.ok(isHotpathError(panic))
})

// A named function, so the stack can be searched for it.
async function callerOfAcquire(rl: RateLimiter) {
  await rl.acquire('k', { timeoutMs: 5 })
}
async function callerOfAdd(q: WorkerQueue) {
  await q.add(() => new Promise(() => {}), { timeoutMs: 5 })
}

test('a rejection from background work carries the stack of the awaiting caller', async () => {
  // RateLimiter.acquire: the timeout fires on the native runtime.
  const rl = new RateLimiter({ limit: 1, windowMs: 60_000 })
  rl.checkSync('k')
  const e1 = await callerOfAcquire(rl).then(
    () => assert.fail('acquire should time out'),
    (e) => e,
  )
  assert.ok(isHotpathError(e1) && e1.code === 'ERR_TIMEOUT', String(e1))
  assert.match(String(e1.stack), /at async callerOfAcquire/)
  await rl.close()
  // WorkerQueue: the timeout is an event from the native scheduler.
  const q = new WorkerQueue({ concurrency: 1 })
  const e2 = await callerOfAdd(q).then(
    () => assert.fail('the task should time out'),
    (e) => e,
  )
  assert.ok(isHotpathError(e2) && e2.code === 'ERR_TIMEOUT', String(e2))
  assert.match(String(e2.stack), /at async callerOfAdd/)
  await q.close()
})

test("a user's error passes through the async paths untouched (same object, same stack)", async () => {
  const c = new CacheManager()
  const mine = new Error('factory failed')
  const got = await c.getOrSet('k', () => Promise.reject(mine)).catch((e) => e)
  assert.equal(got, mine)
  // A hotpath error a factory throws synchronously keeps its own stack too.
  let inner: unknown
  const pool = new BufferPool()
  const got2 = await c
    .getOrSet('k2', () => {
      try {
        pool.allocate(-1)
      } catch (e) {
        inner = e
        throw e
      }
      return 1
    })
    .catch((e) => e)
  assert.equal(got2, inner)
  await pool.close()
  await c.close()
})
