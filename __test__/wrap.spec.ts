// cache.wrap, the default key, cache.warm, limiter.wrap and the decorators
// @cached / @rateLimited (fixtures compiled with both decorator settings).
import { test, describe } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync, spawnSync } from 'node:child_process'
import { existsSync, readFileSync, rmSync } from 'node:fs'
import { join } from 'node:path'
import { createHash } from 'node:crypto'
import { Redis } from 'ioredis'
import { CacheManager, RateLimiter, isHotpathError, type CacheValue } from 'hotpath'
import { __advanceClock } from 'hotpath/testing'
import { redisUrl, deferred } from './helpers.ts'

const root = join(__dirname, '..')
// The key functions are internal (lib/wrap.js); tests pin their output.
const { defaultKey, serializeArgs, HASH_ABOVE } = require('../lib/wrap.js') as {
  defaultKey: (prefix: string, args: unknown[]) => string
  serializeArgs: (args: unknown[]) => string
  HASH_ABOVE: number
}

const code = (c: string) => ({ code: c })

// A seeded PRNG (mulberry32): randomized tests are reproducible.
function rng(seed: number) {
  return () => {
    seed |= 0
    seed = (seed + 0x6d2b79f5) | 0
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed)
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

describe('the default key', () => {
  test('is the prefix plus a canonical, type-tagged serialization (pinned: other processes and machines compute it too)', () => {
    const cases: [unknown[], string][] = [
      [[], 'f:'],
      [['a'], 'f:"a"'],
      [['1'], 'f:"1"'],
      [[1], 'f:1'],
      [[1.5], 'f:1.5'],
      [[1e21], 'f:1e+21'],
      [[0], 'f:0'],
      [[-0], 'f:-0'],
      [[NaN], 'f:NaN'],
      [[-Infinity], 'f:-Infinity'],
      [[12n], 'f:12n'],
      [[true, false, null], 'f:true,false,null'],
      [[undefined], 'f:undefined'],
      [[1, undefined], 'f:1,undefined'],
      [['a,b'], 'f:"a,b"'],
      [['a', 'b'], 'f:"a","b"'],
      [[['a', 'b']], 'f:["a","b"]'],
      [[[1, , 3]], 'f:[1,,3]'],
      [[[1, undefined, 3]], 'f:[1,undefined,3]'],
      [[{ b: 2, a: 1 }], 'f:{"a":1,"b":2}'],
      [[{ a: { d: [1], c: 'x' } }], 'f:{"a":{"c":"x","d":[1]}}'],
      [[{ a: undefined }], 'f:{"a":undefined}'],
      [[{}], 'f:{}'],
      [[{ 0: 1 }], 'f:{"0":1}'],
      [[[1]], 'f:[1]'],
      [[new Date(86_400_000)], 'f:D86400000'],
      [[new Date(NaN)], 'f:DNaN'],
      [[Buffer.from('hi')], 'f:BaGk='],
      [['quote"and\\slash'], 'f:"quote\\"and\\\\slash"'],
      [['\ud800'], 'f:"\\ud800"'],
      [['héllo ✓'], 'f:"héllo ✓"'],
    ]
    for (const [args, key] of cases) assert.equal(defaultKey('f', args), key, `args ${String(args)}`)
    const nullProto = Object.assign(Object.create(null), { b: 1, a: 2 })
    assert.equal(defaultKey('f', [nullProto]), defaultKey('f', [{ a: 2, b: 1 }]))
  })

  test('object key order does not matter, at any depth', () => {
    const a = { user: { id: 7, roles: ['x', 'y'], meta: { z: 1, y: 2 } }, page: 2 }
    const b = { page: 2, user: { meta: { y: 2, z: 1 }, roles: ['x', 'y'], id: 7 } }
    assert.equal(defaultKey('f', [a, 'q']), defaultKey('f', [b, 'q']))
    assert.notEqual(defaultKey('f', [{ roles: ['x', 'y'] }]), defaultKey('f', [{ roles: ['y', 'x'] }]), 'array order matters')
  })

  test('distinct argument lists never share a key', () => {
    const lists: unknown[][] = [
      [], [undefined], [null], [undefined, undefined], [''], ['undefined'], ['null'],
      [0], [-0], ['0'], [0n], [false], ['false'], [NaN], ['NaN'], [Infinity], ['Infinity'],
      [1], ['1'], [1n], [[1]], [{ 0: 1 }], [['1']], [1, 1], [[1, 1]], [[1], 1], [1, [1]],
      ['a,b'], ['a', 'b'], [['a', 'b']], [['a,b']], ['"a"'], ['a"', '"b'], ['a', '', 'b'],
      [[, 1]], [[undefined, 1]], [[null, 1]], [[]], [{}], [[[]]], [[{}]],
      [{ a: 1 }], [{ a: '1' }], [{ a: 1, b: undefined }], [{ a: [1] }], [{ 'a":1,"b': 2 }], [{ a: 1, b: 2 }],
      [new Date(0)], [0, 'D'], ['D0'], [Buffer.from('')], [Buffer.from('a')], ['B'], ['BYQ=='],
      ['x'.repeat(HASH_ABOVE)], ['x'.repeat(HASH_ABOVE + 1)], ['x'.repeat(HASH_ABOVE + 2)],
    ]
    const keys = lists.map((l) => defaultKey('f', l))
    const seen = new Map<string, unknown[]>()
    for (let i = 0; i < keys.length; i++) {
      assert.ok(!seen.has(keys[i]), `${JSON.stringify(keys[i])} is shared by two argument lists (#${i})`)
      seen.set(keys[i], lists[i])
    }
  })

  test('randomized (seed 1234): equal keys mean exactly equal arguments; shuffled keys give the same key', () => {
    const rand = rng(1234)
    const pick = <T>(xs: T[]): T => xs[Math.floor(rand() * xs.length)]
    const leaf = () => pick<unknown>([0, -0, 1, -1, 0.5, NaN, Infinity, '', '0', '1', 'a', 'a,b', '"', true, false, null, undefined, 1n, 'é', new Date(5)])
    const value = (depth: number): unknown => {
      const r = rand()
      if (depth > 2 || r < 0.5) return leaf()
      const n = Math.floor(rand() * 3)
      if (r < 0.75) return Array.from({ length: n }, () => value(depth + 1))
      const o: Record<string, unknown> = {}
      for (let i = 0; i < n; i++) o[pick(['a', 'b', 'c', '0', 'a,b'])] = value(depth + 1)
      return o
    }
    const shuffled = (v: unknown): unknown => {
      if (Array.isArray(v)) return v.map(shuffled)
      if (v !== null && typeof v === 'object' && !(v instanceof Date)) {
        const entries = Object.entries(v).map(([k, x]) => [k, shuffled(x)] as const)
        for (let i = entries.length - 1; i > 0; i--) {
          const j = Math.floor(rand() * (i + 1))
          ;[entries[i], entries[j]] = [entries[j], entries[i]]
        }
        return Object.fromEntries(entries)
      }
      return v
    }
    // Exact equality: Object.is on primitives, same shape, same own keys.
    const same = (a: unknown, b: unknown): boolean => {
      if (a instanceof Date || b instanceof Date) return a instanceof Date && b instanceof Date && Object.is(a.getTime(), b.getTime())
      if (Array.isArray(a) || Array.isArray(b)) {
        return Array.isArray(a) && Array.isArray(b) && a.length === b.length && a.every((x, i) => same(x, b[i]))
      }
      if (a !== null && b !== null && typeof a === 'object' && typeof b === 'object') {
        const ka = Object.keys(a).sort()
        const kb = Object.keys(b).sort()
        return same(ka, kb) && ka.every((k) => same((a as any)[k], (b as any)[k]))
      }
      return Object.is(a, b)
    }
    const byKey = new Map<string, unknown[]>()
    let collisionsChecked = 0
    for (let i = 0; i < 20_000; i++) {
      const args = Array.from({ length: Math.floor(rand() * 3) }, () => value(0))
      const key = defaultKey('f', args)
      assert.equal(defaultKey('f', shuffled(args) as unknown[]), key)
      const prev = byKey.get(key)
      if (prev) {
        collisionsChecked++
        assert.ok(same(prev, args), `${key} is shared by ${String(prev)} and ${String(args)}`)
      } else byKey.set(key, args)
    }
    assert.ok(collisionsChecked > 100 && byKey.size > 1000, `${collisionsChecked} repeats, ${byKey.size} distinct`)
  })

  test('strings are exactly their JSON text (randomized, seed 99: quotes, escapes, surrogates, controls)', () => {
    const rand = rng(99)
    const alphabet = ['a', 'Z', '0', ' ', '"', '\\', '\n', '\u0000', '\u001f', '\u007f', '\u2028', 'é', '✓', '\ud83d\ude00', '\ud800', '\udfff', ',', ':', '{']
    for (let i = 0; i < 5000; i++) {
      let s = ''
      const n = Math.floor(rand() * 8)
      for (let j = 0; j < n; j++) s += alphabet[Math.floor(rand() * alphabet.length)]
      assert.equal(defaultKey('f', [s]), 'f:' + JSON.stringify(s))
      assert.equal(defaultKey('f', [{ [s]: s }]), `f:{${JSON.stringify(s)}:${JSON.stringify(s)}}`)
    }
  })

  test('long argument lists are hashed (sha256, base64url): short, stable, distinct', () => {
    const long = { text: 'x'.repeat(1000), n: 1 }
    const k = defaultKey('search', [long])
    assert.match(k, /^search:#[A-Za-z0-9_-]{43}$/)
    assert.equal(k, 'search:#' + createHash('sha256').update(serializeArgs([long])).digest('base64url'))
    assert.equal(defaultKey('search', [{ n: 1, text: 'x'.repeat(1000) }]), k)
    assert.notEqual(defaultKey('search', [{ ...long, n: 2 }]), k)
    assert.equal(defaultKey('f', ['y'.repeat(HASH_ABOVE - 2)]), `f:"${'y'.repeat(HASH_ABOVE - 2)}"`, 'at the threshold: not hashed')
  })

  test('arguments without an exact serialization are ERR_INVALID_ARG', () => {
    class Point {
      x = 1
    }
    const cyclic: Record<string, unknown> = { a: 1 }
    cyclic.self = cyclic
    const extra = Object.assign([1, 2], { page: 3 })
    const bad: [string, unknown][] = [
      ['function', () => 1],
      ['symbol', Symbol('s')],
      ['class instance', new Point()],
      ['Map', new Map()],
      ['Set', new Set()],
      ['RegExp', /x/],
      ['typed array', new Uint8Array(2)],
      ['boxed string', new String('x')],
      ['cycle', cyclic],
      ['cycle through an array', (() => { const a: unknown[] = []; a.push({ a }); return a })()],
      ['array with a named property', extra],
      ['symbol key', { [Symbol('k')]: 1 }],
      ['nested function', { a: [{ f() {} }] }],
    ]
    for (const [what, v] of bad) {
      assert.throws(() => defaultKey('f', [v]), (e: any) => e.code === 'ERR_INVALID_ARG' && e instanceof TypeError && /options\.key/.test(e.message), what)
    }
    // A shared (acyclic) reference is fine.
    const shared = { id: 1 }
    assert.equal(defaultKey('f', [[shared, shared]]), 'f:[{"id":1},{"id":1}]')
  })
})

describe('cache.wrap', () => {
  test('the same arguments run fn once; reordered objects share the entry; other arguments do not', async () => {
    const c = new CacheManager()
    let calls = 0
    const search = c.wrap(async function search(q: { name: string; page: number }, lang: string) {
      calls++
      return { hits: [q.name], page: q.page, lang }
    })
    const v1 = await search({ name: 'ada', page: 1 }, 'en')
    assert.deepEqual(v1, { hits: ['ada'], page: 1, lang: 'en' })
    assert.deepEqual(await search({ name: 'ada', page: 1 }, 'en'), v1)
    assert.deepEqual(await search({ page: 1, name: 'ada' }, 'en'), v1)
    assert.equal(calls, 1)
    assert.deepEqual(c.getSync('search:{"name":"ada","page":1},"en"'), v1, 'stored under the default key')
    await search({ name: 'ada', page: 2 }, 'en')
    await search({ name: 'ada', page: 1 }, 'fr')
    assert.equal(calls, 3)
    await c.close()
  })

  test('concurrent calls run fn once and all get its value', async () => {
    const c = new CacheManager()
    let calls = 0
    const gate = deferred()
    const load = c.wrap(async function load(id: number) {
      calls++
      await gate.promise
      return `user ${id}`
    })
    const all = Promise.all(Array.from({ length: 20 }, () => load(7)))
    const other = load(8)
    gate.resolve()
    assert.deepEqual(await all, Array(20).fill('user 7'))
    assert.equal(await other, 'user 8')
    assert.equal(calls, 2)
    await c.close()
  })

  test('a throwing fn is not cached (sync throw and rejection alike); the next call runs it again', async () => {
    const c = new CacheManager()
    let calls = 0
    const flaky = c.wrap(function flaky(mode: string): string | Promise<string> {
      calls++
      if (calls === 1) throw new Error('sync boom')
      if (calls === 2) return Promise.reject(Object.assign(new Error('async boom'), { code: 'E_UPSTREAM' }))
      return `ok ${mode}`
    })
    const p = flaky('x')
    assert.ok(p instanceof Promise, 'a sync throw becomes a rejection')
    await assert.rejects(p, /sync boom/)
    await assert.rejects(flaky('x'), { message: 'async boom', code: 'E_UPSTREAM' })
    assert.equal(c.has('flaky:"x"'), false)
    assert.equal(await flaky('x'), 'ok x')
    assert.equal(await flaky('x'), 'ok x')
    assert.equal(calls, 3)
    await c.close()
  })

  test('a value that cannot be cached rejects ERR_INVALID_ARG and is not cached', async () => {
    const c = new CacheManager()
    const bad = c.wrap(async function bad() {
      return undefined as unknown as string
    })
    await assert.rejects(bad(), code('ERR_INVALID_ARG'))
    await c.close()
  })

  test('a key expires with its TTL (test clock); ttlMs may be computed from the arguments', async () => {
    const c = new CacheManager()
    let calls = 0
    const fixed = c.wrap(async function fixedTtl(id: number) {
      calls++
      return id
    }, { ttlMs: 10_000 })
    await fixed(1)
    __advanceClock(9_000) // the test clock is real time plus what tests advance: leave a margin
    await fixed(1)
    assert.equal(calls, 1)
    __advanceClock(1_001)
    await fixed(1)
    assert.equal(calls, 2, 'expired: fn ran again')

    let dynCalls = 0
    const ttlOf: number[] = []
    const computed = c.wrap(
      async function computedTtl(kind: 'short' | 'long') {
        dynCalls++
        return kind
      },
      {
        ttlMs: (kind) => {
          const ms = kind === 'short' ? 1_000 : 100_000
          ttlOf.push(ms)
          return ms
        },
      },
    )
    await computed('short')
    await computed('long')
    __advanceClock(1_001)
    await computed('short')
    await computed('long')
    assert.equal(dynCalls, 3, 'only the short entry expired')
    assert.ok(ttlOf.includes(1_000) && ttlOf.includes(100_000))
    const remaining = await c.remainingTtlMs('computedTtl:"long"')
    assert.ok(remaining! > 90_000 && remaining! <= 100_000, `remaining ${remaining}`)
    await c.close()
  })

  test('tags (fixed or computed) let deleteTag drop memoized entries', async () => {
    const c = new CacheManager()
    let calls = 0
    const byTenant = c.wrap(
      async function byTenant(tenant: string, id: number) {
        calls++
        return `${tenant}/${id}`
      },
      { tags: (tenant) => [`tenant:${tenant}`] },
    )
    const all = c.wrap(async function everything() {
      calls++
      return 'all'
    }, { tags: ['everything'] })
    await byTenant('a', 1)
    await byTenant('a', 2)
    await byTenant('b', 1)
    await all()
    assert.equal(calls, 4)
    assert.equal(await c.deleteTag('tenant:a'), 2)
    await byTenant('a', 1)
    await byTenant('b', 1)
    assert.equal(calls, 5)
    assert.equal(await c.deleteTag('everything'), 1)
    await all()
    assert.equal(calls, 6)
    await c.close()
  })

  test('key and prefix options; `this` is the call\'s this; anonymous functions need prefix or key', async () => {
    const c = new CacheManager()
    const byKey = c.wrap(async (id: number, _trace: object) => `user ${id}`, { key: (id) => `user:${id}` })
    assert.equal(await byKey(3, { span: Symbol('unserializable is fine with a key') }), 'user 3')
    assert.equal(c.getSync('user:3'), 'user 3')
    const prefixed = c.wrap(async (id: number) => id * 2, { prefix: 'double' })
    await prefixed(4)
    assert.equal(c.getSync('double:4'), 8)
    const both = c.wrap(async (id: number) => -id, { prefix: 'neg', key: (id) => `n${id}` })
    await both(5)
    assert.equal(c.getSync('neg:n5'), -5)

    const repo = {
      table: 'users',
      find: c.wrap(async function find(this: { table: string }, id: number) {
        return `${this.table}#${id}`
      }),
    }
    assert.equal(await repo.find(1), 'users#1')

    assert.throws(() => c.wrap(async () => 1), code('ERR_INVALID_ARG'))
    assert.throws(() => c.wrap('nope' as any), code('ERR_INVALID_ARG'))
    assert.throws(() => c.wrap(async function f() { return 1 }, { ttlMs: -1 }), (e: any) => e.code === 'ERR_INVALID_ARG' && e instanceof RangeError)
    assert.throws(() => c.wrap(async function f() { return 1 }, { tags: 'x' as any }), code('ERR_INVALID_ARG'))
    assert.throws(() => c.wrap(async function f() { return 1 }, { singleFlight: 'cluster' as any }), code('ERR_INVALID_ARG'))
    assert.throws(() => c.wrap(async function f() { return 1 }, { prefix: '' }), code('ERR_INVALID_ARG'))
    const badKey = c.wrap(async function f(x: number) { return x }, { key: () => '' })
    await assert.rejects(badKey(1), code('ERR_INVALID_ARG'))
    const unserializable = c.wrap(async function g(x: unknown) { return String(x) })
    await assert.rejects(unserializable(new Map()), code('ERR_INVALID_ARG'))
    await c.close()
  })

  test('timeoutMs and singleFlight are passed to getOrSet', async () => {
    const c = new CacheManager()
    const seen: unknown[] = []
    const real = c.getOrSet.bind(c)
    ;(c as any).getOrSet = (key: string, factory: () => CacheValue, options: unknown) => {
      seen.push(options)
      return real(key, factory, options as any)
    }
    const f = c.wrap(async function f(x: number) { return x }, { timeoutMs: 250, singleFlight: 'process', ttlMs: 5000 })
    await f(1)
    const g = c.wrap(async function g(x: number) { return x }, { timeoutMs: 250, ttlMs: (x) => x * 1000 })
    await g(2)
    const h = c.wrap(async function h(x: number) { return x })
    await h(3)
    assert.deepEqual(seen, [{ ttlMs: 5000, timeoutMs: 250, singleFlight: 'process' }, { ttlMs: 2000, timeoutMs: 250 }, undefined])
    await c.close()
  })

  test('timeoutMs bounds a call whose fn never settles (needs getOrSet timeoutMs, issue 13)', async (t) => {
    const c = new CacheManager()
    // Feature probe: this branch's getOrSet may not have timeoutMs yet.
    const probe = await Promise.race([
      c.getOrSet('probe', () => new Promise<string>(() => {}), { timeoutMs: 1 } as any).then(
        () => 'resolved',
        (e: any) => e?.code,
      ),
      new Promise((r) => setTimeout(() => r('no timeout'), 3000)),
    ])
    if (probe !== 'ERR_TIMEOUT') {
      await c.close().catch(() => {})
      t.skip(`getOrSet has no timeoutMs on this branch (probe: ${String(probe)}); runs once issue 13 lands`)
      return
    }
    const hang = c.wrap(async function hang(_x: number): Promise<string> {
      return new Promise<string>(() => {})
    }, { timeoutMs: 20 })
    await assert.rejects(hang(1), code('ERR_TIMEOUT'))
    await c.close()
  })
})

describe('cache.warm', () => {
  test('observes its concurrency bound, reports progress up to total, and sets every value', async () => {
    const c = new CacheManager()
    const gates = Array.from({ length: 10 }, () => deferred())
    let running = 0
    let maxRunning = 0
    const loaders: [string, () => Promise<string>][] = gates.map((g, i) => [
      `k${i}`,
      async () => {
        running++
        maxRunning = Math.max(maxRunning, running)
        await g.promise
        running--
        return `v${i}`
      },
    ])
    const progress: [number, number][] = []
    const warming = c.warm(loaders, { concurrency: 3, onProgress: (d, t) => progress.push([d, t]) })
    assert.equal(running, 3)
    for (const g of gates) {
      g.resolve()
      await new Promise((r) => setImmediate(r))
      assert.ok(running <= 3, `running ${running}`)
    }
    const r = await warming
    assert.deepEqual({ loaded: r.loaded, failed: r.failed }, { loaded: 10, failed: 0 })
    assert.equal(maxRunning, 3)
    assert.deepEqual(progress, Array.from({ length: 10 }, (_, i) => [i + 1, 10]))
    for (let i = 0; i < 10; i++) assert.equal(c.getSync(`k${i}`), `v${i}`)
    await c.close()
  })

  test('failures are counted and never stop the others; an object of loaders works; ttlMs and tags apply', async () => {
    const c = new CacheManager()
    const r = await c.warm(
      {
        good: () => 'g',
        asyncGood: async () => ({ n: 1 }),
        throws: () => {
          throw new Error('db down')
        },
        rejects: async () => Promise.reject(new Error('timeout')),
        invalid: async () => undefined as unknown as string,
        last: async () => 42,
      },
      { concurrency: 1, ttlMs: 500, tags: ['warm'] },
    )
    assert.equal(r.loaded, 3)
    assert.equal(r.failed, 3)
    assert.deepEqual(r.errors.map((e) => e.key).sort(), ['invalid', 'rejects', 'throws'])
    assert.equal((r.errors.find((e) => e.key === 'throws')!.error as Error).message, 'db down')
    assert.equal(c.getSync('good'), 'g')
    assert.deepEqual(c.getSync('asyncGood'), { n: 1 })
    assert.equal(c.getSync('last'), 42)
    const ttl = await c.remainingTtlMs('good')
    assert.ok(ttl! > 0 && ttl! <= 500)
    assert.equal(await c.deleteTag('warm'), 3)
    // A Map (any iterable of pairs) works too; nothing to load resolves at once.
    assert.deepEqual(await c.warm(new Map([['m', () => 'x']])), { loaded: 1, failed: 0, errors: [] })
    assert.deepEqual(await c.warm([]), { loaded: 0, failed: 0, errors: [] })
    await c.close()
  })

  test('an aborted warm starts no more loaders and rejects ERR_ABORTED', async () => {
    const c = new CacheManager()
    const gates = Array.from({ length: 6 }, () => deferred())
    const started: number[] = []
    const ac = new AbortController()
    const firstDone = deferred()
    const warming = c.warm(
      gates.map((g, i) => [`a${i}`, async () => {
        started.push(i)
        await g.promise
        return i
      }] as [string, () => Promise<number>]),
      { concurrency: 2, signal: ac.signal, onProgress: () => firstDone.resolve() },
    )
    assert.deepEqual(started, [0, 1])
    gates[0].resolve()
    await firstDone.promise
    assert.deepEqual(started, [0, 1, 2], 'the first to finish made room for one more')
    ac.abort('shutting down')
    await assert.rejects(warming, (e: any) => e.code === 'ERR_ABORTED' && e.cause === 'shutting down' && e.loaded === 1 && e.failed === 0)
    for (const g of gates) g.resolve()
    for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r))
    assert.deepEqual(started, [0, 1, 2], 'no loader started after the abort')
    await assert.rejects(c.warm({ x: () => 1 }, { signal: AbortSignal.abort() }), code('ERR_ABORTED'))
    await c.close()
  })

  test('bad arguments reject ERR_INVALID_ARG before any loader runs', async () => {
    const c = new CacheManager()
    let ran = 0
    const ok = () => {
      ran++
      return 1
    }
    await assert.rejects(c.warm(null as any), code('ERR_INVALID_ARG'))
    await assert.rejects(c.warm([['a', ok], ['b', 'nope' as any]]), code('ERR_INVALID_ARG'))
    await assert.rejects(c.warm([['', ok]]), code('ERR_INVALID_ARG'))
    await assert.rejects(c.warm({ a: ok }, { concurrency: 0 }), code('ERR_INVALID_ARG'))
    await assert.rejects(c.warm({ a: ok }, { onProgress: 1 as any }), code('ERR_INVALID_ARG'))
    assert.equal(ran, 0)
    await c.close()
  })
})

describe('limiter.wrap', () => {
  test('rejects exactly beyond the limit with ERR_RATE_LIMITED and retryAfterMs; fn is not called then', async () => {
    const rl = new RateLimiter({ limit: 3, windowMs: 60_000 })
    let calls = 0
    const send = rl.wrap(async function send(to: string) {
      calls++
      return `sent to ${to}`
    })
    for (let i = 0; i < 3; i++) assert.equal(await send('a'), 'sent to a')
    const err: any = await send('a').then(
      () => assert.fail('the 4th call must be denied'),
      (e: any) => e,
    )
    assert.equal(err.code, 'ERR_RATE_LIMITED')
    assert.ok(err.retryAfterMs > 0 && err.retryAfterMs <= 60_000, `retryAfterMs ${err.retryAfterMs}`)
    assert.equal(err.limit, 3)
    assert.match(err.message, /"send"/)
    assert.ok(isHotpathError(err))
    assert.equal(calls, 3)
    assert.equal(rl.stats().denied, 1)
    await rl.close()
  })

  test('key and cost may be fixed or functions of the arguments; `this` is kept; fn errors pass through', async () => {
    const rl = new RateLimiter({ limit: 4, windowMs: 60_000 })
    const perUser = rl.wrap(async (user: string, n: number) => `${user}:${n}`, { key: (user) => `u:${user}`, cost: (_u, n) => n })
    assert.equal(await perUser('ann', 3), 'ann:3')
    await assert.rejects(perUser('ann', 2), code('ERR_RATE_LIMITED'))
    assert.equal(await perUser('bob', 4), 'bob:4', 'another key has its own limit')
    assert.equal(await perUser('ann', 1), 'ann:1')
    const fixed = rl.wrap(async () => 'x', { key: 'shared', cost: 2 })
    await fixed()
    await fixed()
    await assert.rejects(fixed(), code('ERR_RATE_LIMITED'))
    const obj = {
      name: 'svc',
      hello: rl.wrap(function hello(this: { name: string }) {
        if (this.name !== 'svc') throw new Error('wrong this')
        return this.name
      }),
    }
    assert.equal(await obj.hello(), 'svc')
    const failing = rl.wrap(function failing(): number {
      throw new Error('inner')
    })
    await assert.rejects(failing(), /inner/)
    assert.throws(() => rl.wrap(async () => 1), code('ERR_INVALID_ARG'))
    assert.throws(() => rl.wrap(async () => 1, { key: '' }), code('ERR_INVALID_ARG'))
    assert.throws(() => rl.wrap(async function f() { return 1 }, { cost: -1 }), code('ERR_INVALID_ARG'))
    assert.throws(() => rl.wrap(async function f() { return 1 }, { timeoutMs: 5 }), code('ERR_INVALID_ARG'))
    await rl.close()
  })

  test('wait: true waits through acquire (FIFO) instead of rejecting; timeoutMs and signal bound the wait', async () => {
    const rl = new RateLimiter({ limit: 1, windowMs: 80, algorithm: 'fixed-window' })
    const order: number[] = []
    const job = rl.wrap(async function job(i: number) {
      order.push(i)
      return i
    }, { wait: true })
    assert.equal(await job(1), 1)
    const second = job(2)
    const third = job(3)
    await new Promise((r) => setImmediate(r))
    assert.deepEqual(order, [1], 'the others wait')
    assert.equal(rl.stats().waiting, 2)
    assert.deepEqual(await Promise.all([second, third]), [2, 3])
    assert.deepEqual(order, [1, 2, 3])

    const rl2 = new RateLimiter({ limit: 1, windowMs: 60_000 })
    const bounded = rl2.wrap(async function bounded() { return 'ran' }, { key: 'k', wait: true, timeoutMs: 30 })
    assert.equal(await bounded(), 'ran')
    await assert.rejects(bounded(), code('ERR_TIMEOUT'))
    const ac = new AbortController()
    const abortable = rl2.wrap(async function abortable() { return 'ran' }, { key: 'k', wait: true, signal: ac.signal })
    const pending = abortable()
    ac.abort()
    await assert.rejects(pending, code('ERR_ABORTED'))
    await rl.close()
    await rl2.close()
  })
})

describe('decorators @cached and @rateLimited', () => {
  // Compiled once per decorator setting (tsc type-checks the fixtures too:
  // type-errors.ts holds the calls that must not compile), then run.
  for (const mode of ['standard', 'legacy'] as const) {
    test(`${mode === 'standard' ? 'TC39 standard decorators' : 'experimentalDecorators (NestJS)'}: memoize, bind this, limit`, async () => {
      const out = join(root, 'target', 'decorator-fixtures', mode)
      rmSync(out, { recursive: true, force: true })
      const tsc = join(root, 'node_modules', 'typescript', 'bin', 'tsc')
      const r = spawnSync(process.execPath, [tsc, '-p', join(root, '__test__', 'fixtures', 'decorators', `tsconfig.${mode}.json`)], { encoding: 'utf8' })
      assert.equal(r.status, 0, `tsc (${mode}) failed:\n${r.stdout}${r.stderr}`)
      assert.ok(existsSync(join(out, 'services.js')))
      if (mode === 'legacy') assert.match(readFileSync(join(out, 'services.js'), 'utf8'), /__decorate\(/)
      else assert.match(readFileSync(join(out, 'services.js'), 'utf8'), /__esDecorate\(/)
      const m = require(join(out, 'services.js'))
      const { cache, limiter, Users, Admins } = m
      try {
        const t1 = new Users('t1')
        assert.deepEqual(await t1.byId(1), { id: 1, tenant: 't1' })
        assert.deepEqual(await t1.byId(1), { id: 1, tenant: 't1' })
        assert.equal(t1.calls, 1)
        assert.deepEqual(cache.getSync('Users.byId:1'), { id: 1, tenant: 't1' }, 'default prefix Class.method')
        // Another instance (and a subclass) share the method's key: the entry t1 made.
        const a = new Admins('admins')
        assert.deepEqual(await a.byId(1), { id: 1, tenant: 't1' })
        assert.equal(a.calls, 0)
        assert.deepEqual(await a.byId(2), { id: 2, tenant: 'admins' })
        assert.equal(a.calls, 1)
        assert.ok((await cache.remainingTtlMs('Users.byId:2')) <= 60_000)

        assert.equal(await t1.join('x', 'y'), 'x+y@t1')
        assert.equal(await t1.join('x', 'y'), 'x+y@t1')
        assert.equal(cache.getSync('join/x/y'), 'x+y@t1')
        assert.equal(t1.calls, 2)

        assert.deepEqual(await t1.search({ limit: 5, name: 'ada' }), ['ada', '5'])
        assert.deepEqual(await t1.search({ name: 'ada', limit: 5 }), ['ada', '5'])
        assert.equal(t1.calls, 3)
        assert.equal(await cache.deleteTag('q:ada'), 1)

        assert.equal(await Users.double(21), 42)
        assert.equal(await Users.double(21), 42)
        assert.equal(Users.staticCalls, 1)
        assert.equal(cache.getSync('Users.double:21'), 42)

        assert.equal(await t1.ping(), 'pong from t1')
        assert.equal(await a.ping(), 'pong from admins', 'one key (Users.ping) for every instance')
        await assert.rejects(t1.ping(), (e: any) => e.code === 'ERR_RATE_LIMITED' && e.retryAfterMs > 0)
        assert.equal(await t1.heavy('acme'), 'acme via t1')
        await assert.rejects(a.heavy('acme'), code('ERR_RATE_LIMITED'))
        assert.equal(await a.heavy('other'), 'other via admins')
      } finally {
        await cache.close()
        await limiter.close()
      }
    })
  }

  test('bad decorator use is ERR_INVALID_ARG', async () => {
    const { cached, rateLimited } = require('hotpath')
    assert.throws(() => cached({}), code('ERR_INVALID_ARG'))
    assert.throws(() => rateLimited(null), code('ERR_INVALID_ARG'))
    const c = new CacheManager()
    assert.throws(() => cached(c)(undefined, { kind: 'field', name: 'x' }), code('ERR_INVALID_ARG'))
    assert.throws(() => cached(c)({}, 'x', { value: 1 }), code('ERR_INVALID_ARG'))
    assert.throws(() => cached(c)(async function m() { return 1 }, { kind: 'method', name: '#m', private: true }), code('ERR_INVALID_ARG'))
    assert.equal(typeof cached(c, { prefix: 'p' })(async function m() { return 1 }, { kind: 'method', name: '#m', private: true }), 'function')
    const fromThunk = cached(() => 'not a cache')(async function m() { return 1 }, { kind: 'method', name: 'm' })
    await assert.rejects(fromThunk.call({}), code('ERR_INVALID_ARG'))
    await c.close()
  })
})

test('cached and rateLimited are exported by the CommonJS and the ES module entries', () => {
  const src = (kind: string) =>
    kind === 'esm'
      ? `import { cached, rateLimited } from 'hotpath'; console.log(typeof cached, typeof rateLimited)`
      : `const { cached, rateLimited } = require('hotpath'); console.log(typeof cached, typeof rateLimited)`
  for (const kind of ['esm', 'cjs']) {
    const args = kind === 'esm' ? ['--input-type=module', '-e', src(kind)] : ['-e', src(kind)]
    assert.equal(execFileSync(process.execPath, args, { cwd: root, encoding: 'utf8' }).trim(), 'function function', kind)
  }
})

describe('two processes on one Redis', () => {
  test('compute the same default key for the same arguments and share the entry', async (t) => {
    const url = redisUrl(t)
    if (!url) return
    const keyPrefix = `hp-wrap-${process.pid}-${Date.now()}:`
    const child = (who: string, argsJson: string) => {
      const src = `
        const { CacheManager } = require('hotpath')
        const c = new CacheManager({ redis: { url: ${JSON.stringify(url)}, keyPrefix: ${JSON.stringify(keyPrefix)} } })
        let calls = 0
        const loadUser = c.wrap(async function loadUser(q, id) { calls++; return { by: ${JSON.stringify(who)}, q, id } })
        loadUser(...${argsJson}).then(async (v) => {
          console.log(JSON.stringify({ v, calls }))
          await c.close()
        }, (e) => { console.error(e); process.exit(1) })
      `
      return JSON.parse(execFileSync(process.execPath, ['-e', src], { cwd: root, encoding: 'utf8' }).trim())
    }
    const first = child('A', JSON.stringify([{ b: 2, a: 1, nested: { y: [1, 'x'], x: null } }, 42]))
    assert.deepEqual(first, { v: { by: 'A', q: { b: 2, a: 1, nested: { y: [1, 'x'], x: null } }, id: 42 }, calls: 1 })
    const second = child('B', JSON.stringify([{ nested: { x: null, y: [1, 'x'] }, a: 1, b: 2 }, 42]))
    assert.equal(second.calls, 0, 'process B found A\'s entry')
    assert.deepEqual(second.v, first.v)
    // The key on Redis is the documented one, byte for byte.
    const r = new Redis(url)
    try {
      const keys = await r.keys(`${keyPrefix}*`)
      const expected = 'loadUser:{"a":1,"b":2,"nested":{"x":null,"y":[1,"x"]}},42'
      assert.ok(keys.some((k) => k.endsWith(expected)), `no Redis key ending in ${expected}: ${keys}`)
      if (keys.length) await r.del(...keys)
    } finally {
      r.disconnect()
    }
  })

  test("singleFlight: 'redis' runs fn once across instances that share only Redis", async (t) => {
    const url = redisUrl(t)
    if (!url) return
    const keyPrefix = `hp-wrapsf-${process.pid}-${Date.now()}:`
    // Two unnamed caches: separate in-process state, one Redis.
    const c1 = new CacheManager({ redis: { url, keyPrefix } })
    const c2 = new CacheManager({ redis: { url, keyPrefix } })
    let calls = 0
    const gate = deferred()
    async function report(id: number) {
      calls++
      await gate.promise
      return `report ${id}`
    }
    const w1 = c1.wrap(report, { singleFlight: 'redis', timeoutMs: 10_000 })
    const w2 = c2.wrap(report, { singleFlight: 'redis', timeoutMs: 10_000 })
    const first = w1(5)
    // Let the first call take its lease before the second asks.
    for (let i = 0; i < 50 && calls === 0; i++) await new Promise((r) => setTimeout(r, 10))
    const second = w2(5)
    await new Promise((r) => setTimeout(r, 100))
    gate.resolve()
    assert.deepEqual(await Promise.all([first, second]), ['report 5', 'report 5'])
    await c1.close()
    await c2.close()
    assert.equal(calls, 1, 'one run across both caches (a Redis lease)')
  })

  test('limiter.wrap on a Redis limiter: denied beyond the limit, shared by every handle', async (t) => {
    const url = redisUrl(t)
    if (!url) return
    const keyPrefix = `hp-wrapl-${process.pid}-${Date.now()}:`
    const a = new RateLimiter({ limit: 2, windowMs: 60_000, redis: { url, keyPrefix } })
    const b = new RateLimiter({ limit: 2, windowMs: 60_000, redis: { url, keyPrefix } })
    let calls = 0
    const fn = async function report(n: number) {
      calls++
      return n
    }
    const viaA = a.wrap(fn)
    const viaB = b.wrap(fn)
    assert.equal(await viaA(1), 1)
    assert.equal(await viaB(2), 2)
    await assert.rejects(viaA(3), (e: any) => e.code === 'ERR_RATE_LIMITED' && e.retryAfterMs > 0)
    await assert.rejects(viaB(4), code('ERR_RATE_LIMITED'))
    assert.equal(calls, 2)
    await a.reset('report')
    await a.close()
    await b.close()
  })
})
