// WorkerQueue, function mode: add(fn) runs on this thread.
import { test, describe } from 'node:test'
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { Worker } from 'node:worker_threads'
import { join } from 'node:path'
import { WorkerQueue, type TaskContext } from 'hotpath'

const code = (c: string) => (e: any) => {
  assert.equal(e?.code, c, `expected ${c}, got ${e?.code}: ${e?.message}`)
  return true
}

/** A promise with its resolve function outside. */
function gate<T = void>() {
  let open!: (v: T) => void
  const p = new Promise<T>((r) => (open = r))
  return { p, open }
}

const tick = () => new Promise<void>((r) => setImmediate(r))

describe('WorkerQueue (function mode)', () => {
  test('is exported by both module systems', () => {
    assert.equal(require('hotpath').WorkerQueue, WorkerQueue)
  })

  test('runs at most `concurrency` tasks at once; counts them', async () => {
    const q = new WorkerQueue({ concurrency: 3 })
    assert.equal(q.concurrency, 3)
    let running = 0
    let max = 0
    const gates = Array.from({ length: 10 }, () => gate())
    const all = gates.map((g, i) =>
      q.add(async () => {
        running++
        max = Math.max(max, running)
        await g.p
        running--
        return i
      }),
    )
    assert.equal(q.pending, 3)
    assert.equal(q.size, 7)
    assert.deepEqual(q.stats().running, 3)
    for (const g of gates) {
      g.open()
      await tick()
      assert.ok(running <= 3)
    }
    assert.deepEqual(await Promise.all(all), [...Array(10).keys()])
    assert.equal(max, 3)
    assert.equal(q.pending, 0)
    assert.equal(q.size, 0)
    await q.close()
  })

  test('higher priority first, equal priority in insertion order', async () => {
    const q = new WorkerQueue({ concurrency: 1 })
    q.pause()
    const order: string[] = []
    const prios: [string, number][] = [
      ['a', 0],
      ['b', 1],
      ['c', 5],
      ['d', 1],
      ['e', -2.5],
      ['f', 5],
      ['g', 0],
      ['h', 0.5],
    ]
    const ps = prios.map(([n, p]) => q.add(() => order.push(n), { priority: p }))
    assert.equal(q.size, 8)
    q.resume()
    await Promise.all(ps)
    assert.deepEqual(order, ['c', 'f', 'b', 'd', 'h', 'a', 'g', 'e'])
    await q.close()
  })

  test('FIFO holds under load (20,000 tasks, concurrency 8)', async () => {
    const q = new WorkerQueue({ concurrency: 8 })
    const started: number[] = []
    const ps: Promise<number>[] = []
    for (let i = 0; i < 20_000; i++) {
      ps.push(
        q.add(async () => {
          started.push(i)
          await null
          return i
        }),
      )
    }
    const r = await Promise.all(ps)
    assert.equal(r.length, 20_000)
    for (let i = 0; i < started.length; i++) if (started[i] !== i) assert.fail(`task ${started[i]} started at position ${i}`)
    assert.equal(q.stats().completed, 20_000)
    await q.close()
  })

  test('synchronous tasks: values, throws; no stack growth with 100,000 queued', async () => {
    const q = new WorkerQueue({ concurrency: 1 })
    assert.equal(await q.add(() => 7), 7)
    await assert.rejects(
      q.add(() => {
        throw new TypeError('sync throw')
      }),
      /sync throw/,
    )
    const ps: Promise<number>[] = []
    for (let i = 0; i < 100_000; i++) ps.push(q.add(() => i))
    const r = await Promise.all(ps)
    assert.equal(r[99_999], 99_999)
    await q.close()
  })

  test('every promise settles exactly once, even with a misbehaving thenable', async () => {
    const q = new WorkerQueue({ concurrency: 2 })
    const weird = {
      then(ok: (v: unknown) => void, bad: (e: unknown) => void) {
        ok('first')
        ok('second')
        bad(new Error('late'))
      },
    }
    assert.equal(await q.add(() => weird as unknown as Promise<string>), 'first')
    assert.equal(q.stats().completed, 1)
    assert.equal(q.stats().failed, 0)
    await q.close()
  })

  test('timeoutMs rejects ERR_TIMEOUT, frees the slot and aborts ctx.signal', async () => {
    const q = new WorkerQueue({ concurrency: 1 })
    let seen: AbortSignal | undefined
    const hung = q.add(
      (ctx: TaskContext) => {
        seen = ctx.signal
        return new Promise(() => {})
      },
      { timeoutMs: 30 },
    )
    const next = q.add(() => 'next ran')
    await assert.rejects(hung, (e: any) => code('ERR_TIMEOUT')(e) && /30 ms/.test(e.message))
    assert.equal(await next, 'next ran')
    assert.equal(seen?.aborted, true)
    assert.equal((seen?.reason as any)?.code, 'ERR_TIMEOUT')
    const s = q.stats()
    assert.equal(s.timedOut, 1)
    assert.equal(s.failed, 1)
    assert.equal(q.pending, 0)
    await q.close()
  })

  test('the queue default timeoutMs applies; a task can turn it off with Infinity', async () => {
    const q = new WorkerQueue({ concurrency: 2, timeoutMs: 20 })
    const g = gate<string>()
    const slow = q.add(() => g.p, { timeoutMs: Infinity })
    await assert.rejects(
      q.add(() => new Promise(() => {})),
      code('ERR_TIMEOUT'),
    )
    g.open('no deadline')
    assert.equal(await slow, 'no deadline')
    await q.close()
  })

  test('retries with back-off until success; exhausted retries reject with the last error', async () => {
    const q = new WorkerQueue({ concurrency: 1, retries: 2, retryBackoffMs: 20 })
    let n = 0
    const attempts: number[] = []
    const t0 = performance.now()
    const r = await q.add((ctx: TaskContext) => {
      attempts.push(ctx.attempt)
      if (++n < 3) throw new Error(`attempt ${n}`)
      return 'third time'
    })
    const elapsed = performance.now() - t0
    assert.equal(r, 'third time')
    assert.deepEqual(attempts, [1, 2, 3])
    // Back-off 20 * 2^0 and 20 * 2^1, each with jitter in [0.5x, 1.5x): >= 30 ms.
    assert.ok(elapsed >= 29, `retried after ${elapsed} ms`)
    let m = 0
    await assert.rejects(
      q.add(
        () => {
          m++
          throw new Error(`fail ${m}`)
        },
        { retries: 1 },
      ),
      /fail 2/,
    )
    assert.equal(m, 2)
    const s = q.stats()
    assert.equal(s.retried, 3)
    assert.equal(s.failed, 1)
    assert.equal(s.completed, 1)
    await q.close()
  })

  test('a timed-out attempt is retried; the abandoned attempt cannot settle the task', async () => {
    const q = new WorkerQueue({ concurrency: 1, retryBackoffMs: 0 })
    const late: ((v: string) => void)[] = []
    let calls = 0
    const p = q.add(
      () => {
        calls++
        return new Promise<string>((r) => late.push(r))
      },
      { timeoutMs: 25, retries: 1 },
    )
    await assert.rejects(p, code('ERR_TIMEOUT'))
    assert.equal(calls, 2)
    late[0]('too late')
    late[1]('too late')
    await tick()
    const s = q.stats()
    assert.equal(s.timedOut, 2)
    assert.equal(s.retried, 1)
    assert.equal(s.completed, 0)
    await q.close()
  })

  test('abort while queued: it never runs, rejects ERR_ABORTED', async () => {
    const q = new WorkerQueue({ concurrency: 1 })
    const g = gate()
    const first = q.add(() => g.p)
    const ac = new AbortController()
    let ran = false
    const queued = q.add(
      () => {
        ran = true
      },
      { signal: ac.signal },
    )
    assert.equal(q.size, 1)
    ac.abort(new Error('changed my mind'))
    await assert.rejects(queued, (e: any) => code('ERR_ABORTED')(e) && e.cause?.message === 'changed my mind')
    assert.equal(q.size, 0)
    g.open()
    await first
    await q.onIdle()
    assert.equal(ran, false)
    assert.equal(q.stats().aborted, 1)
    await q.close()
  })

  test('abort while running: rejects at once, frees the slot, aborts ctx.signal', async () => {
    const q = new WorkerQueue({ concurrency: 1 })
    const ac = new AbortController()
    let seen: AbortSignal | undefined
    const running = q.add(
      (ctx: TaskContext) => {
        seen = ctx.signal
        return new Promise(() => {})
      },
      { signal: ac.signal },
    )
    const next = q.add(() => 'next')
    assert.equal(q.pending, 1)
    ac.abort()
    await assert.rejects(running, code('ERR_ABORTED'))
    assert.equal(await next, 'next')
    assert.equal(seen?.aborted, true)
    await q.close()
  })

  test('an already-aborted signal rejects at once; the task is never queued', async () => {
    const q = new WorkerQueue({ concurrency: 1 })
    let ran = false
    const p = q.add(
      () => {
        ran = true
      },
      { signal: AbortSignal.abort() },
    )
    assert.equal(q.size + q.pending, 0)
    await assert.rejects(p, code('ERR_ABORTED'))
    assert.equal(ran, false)
    await q.close()
  })

  test('maxQueueSize: beyond it add() rejects ERR_QUEUE_FULL', async () => {
    const q = new WorkerQueue({ concurrency: 1, maxQueueSize: 2 })
    const g = gate()
    const ps = [q.add(() => g.p), q.add(() => 1), q.add(() => 2)]
    await assert.rejects(
      q.add(() => 3),
      code('ERR_QUEUE_FULL'),
    )
    g.open()
    await Promise.all(ps)
    assert.equal(await q.add(() => 4), 4)
    await q.close()
  })

  test('pause() holds queued tasks, resume() starts them', async () => {
    const q = new WorkerQueue({ concurrency: 2 })
    q.pause()
    assert.equal(q.isPaused, true)
    let ran = 0
    const ps = [1, 2, 3].map(() => q.add(() => ran++))
    await tick()
    assert.equal(ran, 0)
    assert.equal(q.size, 3)
    q.resume()
    assert.equal(q.isPaused, false)
    await Promise.all(ps)
    assert.equal(ran, 3)
    await q.close()
  })

  test('onIdle() waits for queued and running tasks, failures included', async () => {
    const q = new WorkerQueue({ concurrency: 2 })
    await q.onIdle()
    const g = gate()
    let done = 0
    q.add(async () => {
      await g.p
      done++
    })
    q.add(async () => {
      await g.p
      throw new Error('x')
    }).catch(() => done++)
    q.add(() => done++)
    let idle = false
    const w = q.onIdle().then(() => (idle = true))
    await tick()
    assert.equal(idle, false)
    g.open()
    await w
    assert.equal(done, 3)
    await q.close()
  })

  test('addAll resolves in order; a non-function rejects ERR_INVALID_ARG and adds nothing', async () => {
    const q = new WorkerQueue({ concurrency: 2 })
    assert.deepEqual(await q.addAll([() => 1, async () => 2, () => 3]), [1, 2, 3])
    await assert.rejects(q.addAll([() => 1, 'nope' as any]), code('ERR_INVALID_ARG'))
    await assert.rejects(q.addAll('nope' as any), code('ERR_INVALID_ARG'))
    assert.equal(q.stats().completed, 3)
    await q.close()
  })

  test('stats(): counts and mean wait/run times', async () => {
    const q = new WorkerQueue({ concurrency: 1 })
    const g = gate()
    const a = q.add(async () => {
      await g.p
      await new Promise((r) => setTimeout(r, 10))
    })
    const b = q.add(() => 'b')
    setTimeout(() => g.open(), 5)
    await Promise.all([a, b])
    const s = q.stats()
    assert.equal(s.completed, 2)
    assert.equal(s.queued, 0)
    assert.equal(s.running, 0)
    assert.ok(s.avgRunMs > 4, `avgRunMs ${s.avgRunMs}`)
    assert.ok(s.avgWaitMs > 4, `avgWaitMs ${s.avgWaitMs}`)
    await q.close()
  })

  test('close() finishes queued and running work, then everything is ERR_CLOSED', async () => {
    const q = new WorkerQueue({ concurrency: 1 })
    q.pause() // close() resumes: what is queued finishes
    const results: number[] = []
    const ps = [1, 2, 3].map((i) =>
      q.add(async () => {
        await null
        results.push(i)
        return i
      }),
    )
    const closing = q.close()
    assert.equal(q.close(), closing)
    await assert.rejects(
      q.add(() => 4),
      code('ERR_CLOSED'),
    )
    await closing
    assert.deepEqual(await Promise.all(ps), [1, 2, 3])
    assert.deepEqual(results, [1, 2, 3])
    await q.close()
    assert.throws(() => q.pause(), code('ERR_CLOSED'))
    assert.throws(() => q.resume(), code('ERR_CLOSED'))
    await assert.rejects(q.onIdle(), code('ERR_CLOSED'))
    await assert.rejects(q.addAll([() => 1]), code('ERR_CLOSED'))
    assert.equal(q.size, 0)
    assert.equal(q.stats().completed, 3)
  })

  test('bad options are ERR_INVALID_ARG', async () => {
    const bad: unknown[] = [
      null,
      7,
      { concurrency: 0 },
      { concurrency: 1.5 },
      { concurrency: -1 },
      { concurrency: NaN },
      { concurrency: '2' },
      { maxQueueSize: -1 },
      { maxQueueSize: 0.5 },
      { timeoutMs: 0 },
      { timeoutMs: -5 },
      { timeoutMs: NaN },
      { retries: -1 },
      { retries: 1.5 },
      { retryBackoffMs: -1 },
      { retryBackoffMs: Infinity },
      { name: '' },
      { name: 5 },
      { workers: null },
      { workers: { filename: '' } },
      { workers: { filename: 5 } },
      { workers: { filename: '/no/such/file.mjs' } },
    ]
    for (const o of bad) {
      assert.throws(() => new WorkerQueue(o as any), code('ERR_INVALID_ARG'), `options ${JSON.stringify(o)}`)
    }
    assert.throws(() => new WorkerQueue({ concurrency: 0 }), RangeError)
    assert.throws(() => new WorkerQueue({ concurrency: 'x' as any }), TypeError)
    const q = new WorkerQueue({ concurrency: Infinity, maxQueueSize: Infinity })
    assert.equal(q.concurrency, Infinity)
    await assert.rejects(q.add('x' as any), code('ERR_INVALID_ARG'))
    await assert.rejects(
      q.add(() => 1, { priority: NaN }),
      code('ERR_INVALID_ARG'),
    )
    await assert.rejects(
      q.add(() => 1, { timeoutMs: -1 }),
      code('ERR_INVALID_ARG'),
    )
    await assert.rejects(
      q.add(() => 1, { retries: 0.5 }),
      code('ERR_INVALID_ARG'),
    )
    await assert.rejects(
      q.add(() => 1, { signal: {} as any }),
      code('ERR_INVALID_ARG'),
    )
    await assert.rejects(
      q.add(() => 1, 'x' as any),
      code('ERR_INVALID_ARG'),
    )
    await assert.rejects(q.run(1), code('ERR_INVALID_ARG'))
    assert.equal(await q.add(() => 'still fine'), 'still fine')
    await q.close()
  })

  test('name: instances share the queue, its concurrency budget and stats; other options are ERR_INVALID_ARG', async () => {
    const a = new WorkerQueue({ name: 'wq-spec-shared', concurrency: 1 })
    const b = new WorkerQueue({ name: 'wq-spec-shared', concurrency: 1 })
    assert.throws(() => new WorkerQueue({ name: 'wq-spec-shared', concurrency: 2 }), code('ERR_INVALID_ARG'))
    const g = gate()
    const log: string[] = []
    const pa = a.add(async () => {
      log.push('a start')
      await g.p
      log.push('a end')
    })
    const pb = b.add(() => log.push('b start'))
    await tick()
    assert.deepEqual(log, ['a start'])
    assert.equal(b.size, 1)
    assert.equal(a.stats().queued, 1)
    g.open()
    await Promise.all([pa, pb])
    assert.deepEqual(log, ['a start', 'a end', 'b start'])
    assert.equal(b.stats().completed, 2)
    await a.close()
    assert.equal(await b.add(() => 'b alive'), 'b alive')
    await b.close()
  })

  test('name: a worker thread attaches to the same queue and shares its budget', async () => {
    const main = new WorkerQueue({ name: 'wq-spec-threads', concurrency: 1 })
    const g = gate()
    const log: string[] = []
    const pa = main.add(async () => {
      await g.p
      log.push('main task end')
    })
    const hp = require.resolve('hotpath')
    const w = new Worker(
      `const { parentPort } = require('node:worker_threads')
       const { WorkerQueue } = require(${JSON.stringify(hp)})
       const q = new WorkerQueue({ name: 'wq-spec-threads', concurrency: 1 })
       const p = q.add(() => parentPort.postMessage('worker task start'))
       parentPort.postMessage('worker added ' + q.size)
       p.then(() => q.close()).then(() => parentPort.postMessage('worker closed'))`,
      { eval: true },
    )
    const msgs: string[] = []
    const closed = new Promise<void>((resolve, reject) => {
      w.on('message', (m) => {
        msgs.push(m)
        log.push(m)
        if (m === 'worker added 1') g.open()
        if (m === 'worker closed') resolve()
      })
      w.on('error', reject)
    })
    await closed
    await pa
    assert.deepEqual(log, ['worker added 1', 'main task end', 'worker task start', 'worker closed'])
    assert.equal(main.stats().completed, 2)
    await main.close()
    await w.terminate()
  })

  test('mixed load (timeouts, throws, aborts, retries, priorities, nested adds): every task settles exactly once', async () => {
    let seed = 777
    const rnd = () => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648
    const q = new WorkerQueue({ concurrency: 5, retries: 1, retryBackoffMs: 2, maxQueueSize: 1500 })
    const outcomes: Promise<string>[] = []
    const want: string[] = []
    for (let i = 0; i < 2500; i++) {
      const r = rnd()
      const opts: { priority: number; timeoutMs?: number; signal?: AbortSignal } = { priority: Math.floor(rnd() * 4) - 1 }
      let fn: () => unknown
      if (r < 0.05) {
        opts.timeoutMs = 5
        // Far past the deadline, so a loaded machine can't make it look on time.
        fn = () => new Promise((res) => setTimeout(() => res('late'), 300))
        want.push('ERR_TIMEOUT')
      } else if (r < 0.1) {
        fn = () => {
          throw new Error('sync')
        }
        want.push('sync')
      } else if (r < 0.15) {
        const ac = new AbortController()
        opts.signal = ac.signal
        setTimeout(() => ac.abort(), rnd() * 20)
        fn = () => new Promise((res) => setTimeout(res, 5))
        want.push('ok|ERR_ABORTED')
      } else if (r < 0.18) {
        fn = () => {
          q.add(() => 'inner').catch(() => {})
          return 'outer'
        }
        want.push('ok')
      } else if (r < 0.5) {
        fn = async () => {
          await new Promise((res) => setTimeout(res, rnd() * 3))
          return i
        }
        want.push('ok')
      } else {
        fn = () => i
        want.push('ok')
      }
      let settled = 0
      outcomes.push(
        q.add(fn, opts).then(
          () => (++settled === 1 ? 'ok' : 'twice'),
          (e) => (++settled === 1 ? (e.code ?? e.message) : 'twice'),
        ),
      )
    }
    const got = await Promise.all(outcomes)
    await q.onIdle()
    got.forEach((g, i) => {
      if (g === 'ERR_QUEUE_FULL') return
      assert.ok(want[i].split('|').includes(g), `task ${i}: wanted ${want[i]}, got ${g}`)
    })
    assert.ok(got.includes('ERR_QUEUE_FULL'))
    assert.equal(q.size + q.pending, 0)
    const s = q.stats()
    assert.equal(s.queued + s.running, 0)
    assert.equal(s.failed, got.filter((g) => g === 'ERR_TIMEOUT' || g === 'sync').length)
    await q.close()
  })

  test('the process exits by itself when the queue is idle (no close())', () => {
    const child = join(__dirname, 'fixtures', 'wq_exit_child.mjs')
    const r = spawnSync(process.execPath, [child, 'function'], { encoding: 'utf8', timeout: 20_000 })
    assert.equal(r.signal, null, `killed: ${r.stderr}`)
    assert.equal(r.status, 0, r.stderr)
    assert.match(r.stdout, /function done/)
  })
})
