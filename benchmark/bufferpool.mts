// BufferPool against Buffer.alloc and Buffer.allocUnsafe, in one process:
// allocate, write every byte, give it back (release, or drop it for the GC).
//
// The first hotpath row is the default pool (released memory is zeroed on
// the runtime's threads before reuse, so it is as safe as Buffer.alloc); the
// second skips the zeroing (reused memory is handed out as it was left, as
// Buffer.allocUnsafe does) and shows what the pool itself costs.
//
// Interleaved rounds (the order rotates each round, a full GC before each
// run) and the median per contestant: GC cost lands in whichever run is
// going when it happens, so running one contestant after the other would
// bill one for another's garbage.
import { spawnSync } from 'node:child_process'
import { createRequire } from 'node:module'
import { BufferPool } from 'hotpath'
import { gc, record, type Row } from './harness.mts'

const KiB = 1024
const MiB = 1024 * KiB

type Op = (i: number) => void

function measure(title: string, note: string, ops: [string, Op][], iterations: number, rounds = Number(process.env.BENCH_ROUNDS ?? 7)) {
  const times = ops.map(() => [] as number[])
  for (let round = 0; round < rounds + 2; round++) {
    for (let j = 0; j < ops.length; j++) {
      const c = (round + j) % ops.length
      const op = ops[c][1]
      gc()
      const t0 = performance.now()
      for (let i = 0; i < iterations; i++) op(i)
      const ms = performance.now() - t0
      if (round >= 2) times[c].push(ms) // 2 warm-up rounds
    }
  }
  const rows: Row[] = ops.map(([name], c) => {
    const t = times[c].sort((x, y) => x - y)
    const med = t[Math.floor(t.length / 2)]
    return { name, opsPerSec: (iterations / med) * 1000, meanNs: (med * 1e6) / iterations, p99Ns: (t[t.length - 1] * 1e6) / iterations, samples: t.length, ratio: null }
  })
  record({ title, note, rows })
}

/** Each contestant alone in a fresh process (no other allocations before it):
 *  how the peers behave depends a lot on the process' allocator history, so
 *  this is the second view. */
function fresh(size: number, label: string, iterations: number) {
  const lib = createRequire(import.meta.url).resolve('hotpath')
  const bodies: [string, string][] = [
    ['hotpath allocate + fill + release', 'const b = pool.allocate(size); b.fill(i & 255); pool.release(b)'],
    ['hotpath, zeroOnRelease: false', 'const b = dirty.allocate(size); b.fill(i & 255); dirty.release(b)'],
    ['Buffer.alloc + fill', 'Buffer.alloc(size).fill(i & 255)'],
    ['Buffer.allocUnsafe + fill', 'Buffer.allocUnsafe(size).fill(i & 255)'],
  ]
  const rows: Row[] = bodies.map(([name, body]) => {
    const code = `const { BufferPool } = require(${JSON.stringify(lib)})
      const pool = new BufferPool(), dirty = new BufferPool({ zeroOnRelease: false }), size = ${size}
      const t = []
      for (let r = 0; r < 7; r++) {
        const t0 = performance.now()
        for (let i = 0; i < ${iterations}; i++) { ${body} }
        if (r >= 2) t.push(performance.now() - t0)
      }
      t.sort((a, b) => a - b)
      console.log(t[2])`
    const out = spawnSync(process.execPath, ['-e', code], { encoding: 'utf8' })
    if (out.status !== 0) throw new Error(out.stderr)
    const med = Number(out.stdout.trim())
    return { name, opsPerSec: (iterations / med) * 1000, meanNs: (med * 1e6) / iterations, p99Ns: NaN, samples: 5, ratio: null }
  })
  record({
    title: `BufferPool: allocate + write every byte + release, ${label}, each in a fresh process`,
    note: `The same op, each contestant alone in a new node process (median of 5 runs of ${iterations} ops after 2 warm-up runs).`,
    rows,
  })
}

export default async function () {
  const pool = new BufferPool({ maxPooledBytes: 64 * MiB })
  // Reused memory as it was left (like allocUnsafe): what the pool costs
  // without the zeroing.
  const dirty = new BufferPool({ maxPooledBytes: 64 * MiB, zeroOnRelease: false })
  for (const [size, label, iterations, goal] of [
    [64 * KiB, '64 KiB', 10_000, 'Goal: >= 10x Buffer.alloc, >= 2x Buffer.allocUnsafe.'],
    [MiB, '1 MiB', 1000, 'Goal: >= 10x Buffer.alloc, >= 2x Buffer.allocUnsafe.'],
    [KiB, '1 KiB', 50_000, "Small sizes: Buffer.allocUnsafe serves these from Node's own 8 KiB pool (a slice, no allocation)."],
  ] as const) {
    measure(
      `BufferPool: allocate + write every byte + release, ${label}`,
      `Per op: get a ${label} Buffer, fill() it, give it back (release(); the peers drop it for the GC). Median of interleaved runs of ${iterations} ops. ${goal}`,
      [
        [
          'hotpath allocate + fill + release',
          (i) => {
            const b = pool.allocate(size)
            b.fill(i & 255)
            pool.release(b)
          },
        ],
        [
          'hotpath, zeroOnRelease: false',
          (i) => {
            const b = dirty.allocate(size)
            b.fill(i & 255)
            dirty.release(b)
          },
        ],
        [
          'Buffer.alloc + fill',
          (i) => {
            Buffer.alloc(size).fill(i & 255)
          },
        ],
        [
          'Buffer.allocUnsafe + fill',
          (i) => {
            Buffer.allocUnsafe(size).fill(i & 255)
          },
        ],
      ],
      iterations,
    )
    await pool.flush()
    pool.trim()
    dirty.trim()
  }
  fresh(64 * KiB, '64 KiB', 10_000)
  fresh(MiB, '1 MiB', 1000)
  const s = pool.stats()
  console.log(
    `\npool after the runs: ${s.allocations} allocations, ${((100 * s.hits) / s.allocations).toFixed(1)}% hits, ${(s.pooledBytes / MiB).toFixed(1)} MiB pooled`,
  )
  await Promise.all([pool.close(), dirty.close()])
}
