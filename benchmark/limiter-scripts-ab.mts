// The limiter's Lua scripts at two git revisions, A/B on one redis-server:
// Redis server time per check (INFO commandstats, evalsha usec), in
// interleaved rounds, one check per call and 64 checks per call.
//   node --import tsx benchmark/limiter-scripts-ab.mts <revA> [revB = work tree]
import { execFileSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { Redis as IORedis } from 'ioredis'
import { OwnRedis, freePort } from '../__test__/helpers.ts'

const [revA = 'HEAD~1', revB = ''] = process.argv.slice(2)
const file = (rev: string, f: string) =>
  rev ? execFileSync('git', ['show', `${rev}:src/rate_limiter/${f}`], { encoding: 'utf8' }) : readFileSync(new URL(`../src/rate_limiter/${f}`, import.meta.url), 'utf8')
const algos: Record<string, string> = {
  'sliding-window': 'sliding_window.lua',
  'sliding-window-counter': 'sliding_window_counter.lua',
  'token-bucket': 'token_bucket.lua',
  gcra: 'gcra.lua',
  'fixed-window': 'fixed_window.lua',
}
const own = new OwnRedis(await freePort())
await own.start()
const io = new IORedis(own.url)
const keys = Array.from({ length: 1000 }, (_, i) => `user:${String(i).padStart(8, '0')}`)
const ROUNDS = Number(process.env.ROUNDS ?? 7)
const N = 2000
const usec = async () => Number(/cmdstat_evalsha:calls=\d+,usec=(\d+)/.exec(await io.info('commandstats'))?.[1] ?? 0)
for (const [algo, f] of Object.entries(algos)) {
  const src = (rev: string) => file(rev, 'common.lua') + file(rev, f) + file(rev, 'footer.lua')
  const per = algo === 'sliding-window' ? 2 : 1
  const shas = { A: await io.script('LOAD', src(revA)) as string, B: await io.script('LOAD', src(revB)) as string }
  for (const batch of [1, 64]) {
    const res: Record<string, number[]> = { A: [], B: [] }
    let i = 0
    const run = async (sha: string, tag: string, n: number) => {
      for (let c = 0; c < n; c += batch) {
        const ks: string[] = []
        const args: (string | number)[] = [1e9, 60000, batch]
        for (let j = 0; j < batch; j++) {
          const k = `rl:${tag}:${algo}:{${keys[i++ % keys.length]}}`
          ks.push(k)
          if (per === 2) ks.push(`${k}:log`)
          args.push(1, '1')
        }
        await io.evalsha(sha, ks.length, ...ks, ...args)
      }
    }
    await run(shas.A, 'A', N)
    await run(shas.B, 'B', N)
    for (let r = 0; r < ROUNDS; r++) {
      for (const ab of r % 2 ? ['B', 'A'] : ['A', 'B']) {
        const u0 = await usec()
        await run(shas[ab as 'A' | 'B'], ab, N)
        res[ab].push((await usec()) - u0)
      }
    }
    const med = (a: number[]) => [...a].sort((x, y) => x - y)[a.length >> 1] / N
    console.log(`${algo.padEnd(24)} ${String(batch).padStart(2)} checks/call: A(${revA}) ${med(res.A).toFixed(2)} µs/check, B(${revB || 'work tree'}) ${med(res.B).toFixed(2)} µs/check`)
  }
}
io.disconnect()
await own.dispose()
