// Randomized coherence (issue 13): 2 processes x 2 threads, each thread with
// its own CacheManager on one Redis, doing random set / setSync / get /
// getMany / delete / deleteTag, with redis-server killed and restarted once
// in the middle. Afterwards (every write landed, invalidations delivered
// within a bounded wait) every instance reads what Redis holds, and no key
// whose last operation was a delete is present anywhere.
//
// CI runs one fixed seed. HOTPATH_RANDOM_SEEDS=n runs n more random seeds
// (the longer mode); HOTPATH_RANDOM_OPS sets operations per thread.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { spawn, type ChildProcess } from 'node:child_process'
import { createInterface } from 'node:readline'
import Redis from 'ioredis'
import { redisUrl, freePort, OwnRedis } from './helpers.ts'
// @ts-expect-error plain .mjs fixture
import { allKeys } from './fixtures/cache_random_child.mjs'

const FIXED_SEED = 1313
const OPS = Number(process.env.HOTPATH_RANDOM_OPS ?? 400)
const extra = Number(process.env.HOTPATH_RANDOM_SEEDS ?? 0)
const seeds = [FIXED_SEED, ...Array.from({ length: extra }, () => Math.floor(Math.random() * 2 ** 31))]

type Msg = { tid: number; ready?: boolean; phase?: string; deleted?: string[]; snapshot?: Record<string, unknown>; from?: Record<string, string>; closed?: boolean; error?: string }

class Proc {
  child: ChildProcess
  msgs: Msg[] = []
  waiters: (() => void)[] = []
  constructor(args: string[]) {
    this.child = spawn(process.execPath, [require('node:path').join(__dirname, 'fixtures', 'cache_random_child.mjs'), ...args], {
      stdio: ['pipe', 'pipe', 'inherit'],
    })
    createInterface({ input: this.child.stdout! }).on('line', (line) => {
      const m = JSON.parse(line) as Msg
      this.msgs.push(m)
      for (const w of this.waiters.splice(0)) w()
    })
  }
  send(cmd: string) {
    this.child.stdin!.write(cmd + '\n')
  }
  /** Wait (bounded) until both threads sent a message matching `pred`; take them. */
  async both(pred: (m: Msg) => boolean, what: string, ms = 60_000): Promise<Msg[]> {
    const deadline = Date.now() + ms
    for (;;) {
      const err = this.msgs.find((m) => m.error)
      if (err) throw new Error(`thread ${err.tid}: ${err.error}`)
      const got = [0, 1].map((tid) => this.msgs.findIndex((m) => m.tid === tid && pred(m)))
      if (got.every((i) => i >= 0)) {
        const out = got.map((i) => this.msgs[i])
        this.msgs = this.msgs.filter((m) => !out.includes(m))
        return out
      }
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
      await new Promise<void>((r) => {
        const t = setTimeout(r, 100)
        this.waiters.push(() => {
          clearTimeout(t)
          r()
        })
      })
    }
  }
}

function decode(raw: string | null): unknown {
  return raw === null ? null : JSON.parse(raw)
}

for (const seed of seeds) {
  test(`randomized: 2 processes x 2 threads, Redis killed and restarted mid-run (seed ${seed})`, { timeout: 180_000 }, async (t) => {
    if (!redisUrl(t)) return
    const own = new OwnRedis(await freePort())
    await own.start()
    const keyPrefix = `hp-rand-${process.pid}-${seed}:`
    const procs = [0, 1].map((p) => new Proc([own.url, keyPrefix, String(seed), String(OPS), String(p)]))
    let raw: Redis | undefined
    try {
      await Promise.all(procs.map((p) => p.both((m) => !!m.ready, 'ready')))
      for (const p of procs) p.send('go')
      await Promise.all(procs.map((p) => p.both((m) => m.phase === 'half', 'half')))
      await own.stop()
      for (const p of procs) p.send('killed')
      await Promise.all(procs.map((p) => p.both((m) => m.phase === 'outage', 'outage')))
      await own.start() // empty, same port
      for (const p of procs) p.send('restarted')
      const done = (await Promise.all(procs.map((p) => p.both((m) => m.phase === 'done', 'done')))).flat()
      const deleted = done.flatMap((m) => m.deleted!)
      for (const m of done) assert.equal((m as any).stats.droppedWrites, 0, 'no write was dropped: ' + JSON.stringify(done.map((d: any) => [d.stats, d.phases])))
      raw = new Redis(own.url)
      const keys: string[] = allKeys(2, 2)
      // Invalidations are delivered within a bounded wait: poll snapshots.
      const deadline = Date.now() + 20_000
      let diff: string[] = []
      for (;;) {
        const held = await raw.mget(keys.map((k) => `${keyPrefix}c:${k}`))
        const redisView = Object.fromEntries(keys.map((k, i) => [k, decode(held[i])]))
        for (const p of procs) p.send('snapshot')
        const snaps = (await Promise.all(procs.map((p) => p.both((m) => !!m.snapshot, 'snapshot')))).flat()
        diff = []
        for (const s of snaps) {
          for (const k of keys) {
            if (JSON.stringify(s.snapshot![k]) !== JSON.stringify(redisView[k])) {
              diff.push(`process ${Math.floor(snaps.indexOf(s) / 2)} thread ${s.tid}: ${k} reads ${JSON.stringify(s.snapshot![k])} (from ${s.from?.[k]}), Redis holds ${JSON.stringify(redisView[k])}`)
            }
          }
        }
        for (const k of deleted) if (redisView[k] !== null) diff.push(`${k} was deleted last but Redis holds ${JSON.stringify(redisView[k])}`)
        if (diff.length === 0 || Date.now() > deadline) break
        await new Promise((r) => setTimeout(r, 200))
      }
      assert.deepEqual(diff, [], `seed ${seed}`)
      assert.ok(deleted.length > 0, 'some own keys ended deleted (the check could fail)')
      for (const p of procs) p.send('close')
      await Promise.all(procs.map((p) => p.both((m) => !!m.closed, 'closed')))
      await raw.quit()
      raw = undefined
    } finally {
      // A failed assertion must not leave a reconnecting client keeping this file's process alive.
      raw?.disconnect()
      for (const p of procs) p.child.kill('SIGKILL')
      await own.dispose()
    }
  })
}
