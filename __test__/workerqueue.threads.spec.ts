// WorkerQueue, worker-thread mode: run(payload) calls a module's default
// export in worker threads.
import { test, describe, after } from 'node:test'
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'
import { WorkerQueue } from 'hotpath'

const code = (c: string) => (e: any) => {
  assert.equal(e?.code, c, `expected ${c}, got ${e?.code}: ${e?.message}`)
  return true
}

const TASKS = join(__dirname, 'fixtures', 'wq_tasks.mjs')
const CJS = join(__dirname, 'fixtures', 'wq_cjs.cjs')
const NODEFAULT = join(__dirname, 'fixtures', 'wq_nodefault.mjs')
const tmp = mkdtempSync(join(tmpdir(), 'hotpath-wq-'))
after(() => rmSync(tmp, { recursive: true, force: true }))

type Spin = { threadId: number; start: number; end: number }

/** Run tasks until `n` distinct threads have answered (they load the module at their own pace). */
async function threadsUp(q: WorkerQueue, n: number): Promise<Set<number>> {
  const ids = new Set<number>()
  for (let i = 0; i < 200 && ids.size < n; i++) {
    for (const id of await Promise.all(Array.from({ length: n }, () => q.run<number>({ op: 'sleep', ms: 20 })))) ids.add(id)
  }
  return ids
}

describe('WorkerQueue (worker threads)', () => {
  test('results are structured clones of what the default export returns', async () => {
    const q = new WorkerQueue({ workers: { filename: TASKS, threads: 2 } })
    assert.equal(await q.run(21), 42)
    const echo = (v: unknown) => q.run({ op: 'echo', v })
    for (const v of [undefined, null, true, false, 0, -0, NaN, 1.5, '', 'text', 'ünï©ödé ✓', '\ud800 lone', [1, 'a', null]]) {
      assert.deepEqual(await echo(v), v)
    }
    const d = new Date(1_700_000_000_000)
    const m = new Map<string, unknown>([['k', { deep: [1, 2, new Set([3])] }]])
    const u8 = new Uint8Array([1, 2, 3])
    assert.deepEqual(await echo(d), d)
    assert.deepEqual(await echo(m), m)
    assert.deepEqual(await echo(u8), u8)
    assert.equal(await echo(10n ** 20n), 10n ** 20n)
    // Larger than the worker's and the main thread's byte areas.
    const big = { s: 'x'.repeat(300_000), a: Array.from({ length: 1000 }, (_, i) => i) }
    assert.deepEqual(await echo(big), big)
    assert.equal((await q.run<string>({ op: 'big', n: 400_000 })).length, 400_000)
    // Many at once (several drains).
    const many = await Promise.all(Array.from({ length: 2000 }, (_, i) => echo({ i, s: 'v' + i })))
    assert.deepEqual(many[1999], { i: 1999, s: 'v1999' })
    await q.close()
  })

  test('CommonJS modules work too', async () => {
    const q = new WorkerQueue({ workers: { filename: CJS, threads: 1 } })
    assert.deepEqual(await q.run({ a: 1 }), { cjs: true, x: { a: 1 } })
    await q.close()
  })

  test('a task that throws rejects with its error: class, message, code and properties kept', async () => {
    const q = new WorkerQueue({ workers: { filename: TASKS, threads: 1 } })
    await assert.rejects(q.run({ op: 'throw', message: 'bad input' }), (e: any) => {
      assert.equal(e instanceof RangeError, true)
      assert.equal(e.message, 'bad input')
      assert.equal(e.code, 'E_TASK')
      assert.deepEqual(e.detail, { n: 1 })
      assert.match(e.stack, /wq_tasks\.mjs/)
      return true
    })
    await assert.rejects(q.run({ op: 'reject', message: 'async no' }), /async no/)
    await assert.rejects(q.run({ op: 'throwValue', v: { plain: 'object' } }), (e: any) => {
      assert.deepEqual(e, { plain: 'object' })
      return true
    })
    // A result that cannot be cloned: ERR_TASK_FAILED, not retried.
    await assert.rejects(q.run({ op: 'fn' }, { retries: 3 }), code('ERR_TASK_FAILED'))
    const s = q.stats()
    assert.equal(s.failed, 4)
    assert.equal(s.retried, 0)
    // The worker is fine afterwards.
    assert.equal(await q.run(2), 4)
    assert.equal(s.workerRestarts, 0)
    await q.close()
  })

  test('a worker that exits mid-task with other tasks in flight: its task fails, none is lost, it is replaced', async () => {
    const q = new WorkerQueue({ workers: { filename: TASKS, threads: 2 } })
    const ps: Promise<unknown>[] = []
    for (let i = 0; i < 200; i++) {
      if (i === 50) ps.push(q.run({ op: 'exit', code: 9 }))
      else if (i === 120) ps.push(q.run({ op: 'crash' }))
      else ps.push(q.run(i))
    }
    const r = await Promise.allSettled(ps)
    for (let i = 0; i < 200; i++) {
      if (i === 50 || i === 120) continue
      assert.deepEqual(r[i], { status: 'fulfilled', value: i * 2 }, `task ${i}`)
    }
    assert.equal(r[50].status, 'rejected')
    assert.equal((r[50] as PromiseRejectedResult).reason.code, 'ERR_TASK_FAILED')
    assert.match((r[50] as PromiseRejectedResult).reason.message, /exited with code 9/)
    assert.equal((r[120] as PromiseRejectedResult).reason.code, 'ERR_TASK_FAILED')
    assert.match((r[120] as PromiseRejectedResult).reason.message, /crashed outside the task/)
    const s = q.stats()
    assert.equal(s.workerRestarts, 2)
    assert.equal(s.completed, 198)
    assert.equal(s.failed, 2)
    // Replacements serve new tasks.
    assert.deepEqual(await Promise.all([1, 2, 3, 4].map((i) => q.run(i))), [2, 4, 6, 8])
    assert.equal(q.stats().threads, 2)
    await q.close()
  })

  test('a task whose worker crashes is retried on a fresh worker when it has retries', async () => {
    const q = new WorkerQueue({ workers: { filename: TASKS, threads: 1 }, retries: 1, retryBackoffMs: 0 })
    assert.equal(await q.run({ op: 'crashOnce', marker: join(tmp, 'crash-once') }), 'second attempt')
    assert.equal(await q.run({ op: 'failOnce', marker: join(tmp, 'fail-once') }), 'recovered')
    const s = q.stats()
    assert.equal(s.retried, 2)
    assert.equal(s.workerRestarts, 1)
    await q.close()
  })

  test('timeoutMs stops the task for real: its thread is terminated and replaced, other tasks are not lost', async () => {
    const q = new WorkerQueue({ workers: { filename: TASKS, threads: 2 }, concurrency: 2 })
    const t0 = performance.now()
    const stuck = q.run({ op: 'forever' }, { timeoutMs: 100 })
    const others = Promise.all(Array.from({ length: 20 }, (_, i) => q.run({ op: 'sleep', ms: 5, i })))
    await assert.rejects(stuck, (e: any) => code('ERR_TIMEOUT')(e) && /100 ms/.test(e.message))
    assert.ok(performance.now() - t0 >= 99)
    assert.equal((await others).length, 20)
    const s = q.stats()
    assert.equal(s.timedOut, 1)
    assert.equal(s.workerRestarts, 0) // terminated on purpose, not a crash
    // The spinning thread is gone and its replacement serves tasks: two
    // threads answer (the replacement may still be loading the module at first).
    assert.equal((await threadsUp(q, 2)).size, 2)
    assert.equal(q.stats().threads, 2)
    await q.close()
  })

  test('abort: a waiting task never runs; a running one rejects and its thread is replaced', async () => {
    const q = new WorkerQueue({ workers: { filename: TASKS, threads: 1 } })
    const running = new AbortController()
    const waiting = new AbortController()
    const a = q.run({ op: 'forever' }, { signal: running.signal })
    const b = q.run({ op: 'seq', id: 'b' }, { signal: waiting.signal })
    const c = q.run({ op: 'seq', id: 'c' })
    assert.equal(q.size + q.pending, 3)
    waiting.abort()
    await assert.rejects(b, code('ERR_ABORTED'))
    // Wait until the worker holds `a`, then abort it.
    while (q.pending === 0) await new Promise((r) => setTimeout(r, 5))
    running.abort('stop it')
    await assert.rejects(a, (e: any) => code('ERR_ABORTED')(e) && e.cause === 'stop it')
    // `c` runs on the replacement thread: its counter starts again at 1 and `b` never ran.
    assert.deepEqual(await c, { seq: 1, id: 'c' })
    await assert.rejects(q.run(1, { signal: AbortSignal.abort() }), code('ERR_ABORTED'))
    assert.equal(q.stats().aborted, 2)
    await q.close()
  })

  test('priority order and insertion order hold in worker threads', async () => {
    const q = new WorkerQueue({ workers: { filename: TASKS, threads: 1 }, concurrency: 1 })
    q.pause()
    const prios = [0, 3, 1, 3, -1, 2, 0]
    const ps = prios.map((p, i) => q.run<{ seq: number; id: number }>({ op: 'seq', id: i }, { priority: p }))
    q.resume()
    const r = await Promise.all(ps)
    const order = r.sort((x, y) => x.seq - y.seq).map((x) => x.id)
    assert.deepEqual(order, [1, 3, 5, 2, 0, 6, 4])
    await q.close()
  })

  test('maxQueueSize applies to waiting payloads', async () => {
    const q = new WorkerQueue({ workers: { filename: TASKS, threads: 1 }, maxQueueSize: 1 })
    q.pause()
    const a = q.run(1)
    await assert.rejects(q.run(2), code('ERR_QUEUE_FULL'))
    q.resume()
    assert.equal(await a, 2)
    await q.close()
  })

  test('tasks run in parallel on different threads', async () => {
    const q = new WorkerQueue({ workers: { filename: TASKS, threads: 2 } })
    assert.equal((await threadsUp(q, 2)).size, 2)
    const r = await Promise.all(Array.from({ length: 4 }, () => q.run<Spin>({ op: 'spin', ms: 150 })))
    assert.equal(new Set(r.map((x) => x.threadId)).size, 2)
    // Some two tasks ran at the same time (on different threads).
    const overlap = r.some((a) => r.some((b) => a !== b && a.threadId !== b.threadId && a.start < b.end && b.start < a.end))
    assert.ok(overlap, JSON.stringify(r))
    await q.close()
  })

  test('bad use is ERR_INVALID_ARG; a module without a default export rejects ERR_TASK_FAILED', async () => {
    assert.throws(() => new WorkerQueue({ workers: { filename: TASKS, threads: 0 } }), code('ERR_INVALID_ARG'))
    assert.throws(() => new WorkerQueue({ workers: { filename: TASKS, threads: 1.5 } }), code('ERR_INVALID_ARG'))
    assert.throws(() => new WorkerQueue({ workers: {} as any }), code('ERR_INVALID_ARG'))
    const q = new WorkerQueue({ workers: { filename: pathToFileURL(TASKS), threads: 1 } })
    await assert.rejects(q.add(() => 1), code('ERR_INVALID_ARG'))
    await assert.rejects(q.run(() => 1), code('ERR_INVALID_ARG'))
    await assert.rejects(q.run(Symbol('s')), code('ERR_INVALID_ARG'))
    assert.equal(await q.run(5), 10)
    await q.close()
    const nd = new WorkerQueue({ workers: { filename: NODEFAULT, threads: 2 } })
    const ps = [nd.run(1), nd.run(2), nd.run(3)]
    for (const p of ps) await assert.rejects(p, (e: any) => code('ERR_TASK_FAILED')(e) && /no default export/.test(e.message))
    await assert.rejects(nd.run(4), code('ERR_TASK_FAILED'))
    await nd.close()
  })

  test('close() finishes queued work, then stops the threads', async () => {
    const q = new WorkerQueue({ workers: { filename: TASKS, threads: 2 } })
    const ps = Array.from({ length: 50 }, (_, i) => q.run(i))
    const closing = q.close()
    await assert.rejects(q.run(1), code('ERR_CLOSED'))
    await closing
    assert.equal((await Promise.all(ps))[49], 98)
    assert.equal(q.stats().threads, 0)
    assert.equal(q.stats().completed, 50)
    await q.close()
  })

  test('named queue in worker-thread mode: both handles run payloads; stats are shared', async () => {
    const a = new WorkerQueue({ name: 'wq-threads-named', workers: { filename: TASKS, threads: 1 } })
    const b = new WorkerQueue({ name: 'wq-threads-named', workers: { filename: TASKS, threads: 1 } })
    assert.deepEqual(await Promise.all([a.run(1), b.run(2), a.run(3), b.run(4)]), [2, 4, 6, 8])
    assert.equal(a.stats().completed, 4)
    await a.close()
    assert.equal(await b.run(5), 10)
    await b.close()
  })

  test('mixed load (crashes, timeouts, throws, aborts, retries): every task settles exactly once, the rest succeed', async () => {
    let seed = 12345
    const rnd = () => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648
    const q = new WorkerQueue({ workers: { filename: TASKS, threads: 2 }, retries: 1, retryBackoffMs: 1 })
    const want: string[] = []
    const outcomes: Promise<string>[] = []
    for (let i = 0; i < 600; i++) {
      const r = rnd()
      const opts: { priority: number; timeoutMs?: number; retries?: number; signal?: AbortSignal } = { priority: Math.floor(rnd() * 3) }
      let p: unknown
      if (r < 0.01) {
        p = { op: 'exit', code: 1 }
        want.push('ERR_TASK_FAILED')
      } else if (r < 0.02) {
        p = { op: 'forever' }
        opts.timeoutMs = 30
        opts.retries = 0
        want.push('ERR_TIMEOUT')
      } else if (r < 0.05) {
        p = { op: 'throw', message: 'x' }
        want.push('E_TASK')
      } else if (r < 0.1) {
        const ac = new AbortController()
        opts.signal = ac.signal
        setTimeout(() => ac.abort(), rnd() * 50)
        p = { op: 'sleep', ms: 20 }
        want.push('ok|ERR_ABORTED')
      } else if (r < 0.3) {
        p = { op: 'sleep', ms: Math.floor(rnd() * 3) }
        want.push('ok')
      } else {
        p = i
        want.push('ok')
      }
      let settled = 0
      outcomes.push(
        q.run(p, opts).then(
          () => (++settled === 1 ? 'ok' : 'twice'),
          (e) => (++settled === 1 ? e.code : 'twice'),
        ),
      )
    }
    const got = await Promise.all(outcomes)
    got.forEach((g, i) => assert.ok(want[i].split('|').includes(g), `task ${i}: wanted ${want[i]}, got ${g}`))
    const s = q.stats()
    assert.equal(s.queued + s.running, 0)
    // Replacements are up (a terminated thread may not have reported its exit yet).
    assert.ok(s.threads >= 2, `threads ${s.threads}`)
    await q.close()
  })

  test('the process exits by itself when idle, and after close()', () => {
    const child = join(__dirname, 'fixtures', 'wq_exit_child.mjs')
    for (const mode of ['threads', 'threads-close']) {
      const r = spawnSync(process.execPath, [child, mode], { encoding: 'utf8', timeout: 30_000 })
      assert.equal(r.signal, null, `${mode}: killed: ${r.stderr}`)
      assert.equal(r.status, 0, `${mode}: ${r.stderr}`)
      assert.match(r.stdout, /threads done 2,4,6/)
      if (mode === 'threads-close') assert.match(r.stdout, /closed 0/)
    }
  })
})
