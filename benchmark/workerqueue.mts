// WorkerQueue against p-queue, fastq (function mode) and piscina (worker
// threads), in one process, as throughput of whole runs (median of rounds,
// contenders interleaved round by round).
import os from 'node:os'
import { fileURLToPath } from 'node:url'
import PQueue from 'p-queue'
import fastq from 'fastq'
import { Piscina } from 'piscina'
import { Worker } from 'node:worker_threads'
import { WorkerQueue } from 'hotpath'
import { record, throughput, gc, type Row } from './harness.mts'

const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 5)
// WQ_ONLY=function|trivial|latency|cpu runs one scenario.
const ONLY = process.env.WQ_ONLY
const want = (s: string) => ONLY === undefined || ONLY === s
const TASK = fileURLToPath(new URL('./workerqueue_task.mjs', import.meta.url))

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.floor(s.length / 2)]
}

/** Run every contender `ROUNDS` times, interleaved; one row per contender (median ops/s). */
async function rounds(n: number, contenders: Record<string, () => Promise<unknown>>): Promise<Row[]> {
  const results: Record<string, number[]> = {}
  for (const name of Object.keys(contenders)) {
    results[name] = []
    await contenders[name]() // warm-up
  }
  for (let r = 0; r < ROUNDS; r++) {
    for (const [name, run] of Object.entries(contenders)) {
      gc()
      results[name].push((await throughput(n, run)).opsPerSec)
    }
  }
  return Object.entries(results).map(([name, xs]) => {
    const ops = median(xs)
    return { name, opsPerSec: ops, meanNs: 1e9 / ops, p99Ns: NaN, samples: xs.length, ratio: null }
  })
}

export default async function () {
  // ------------------------------------------------------------ function mode
  if (want('function')) {
    const N = 100_000
    const hp = new WorkerQueue({ concurrency: 8 })
    const pq = new PQueue({ concurrency: 8 })
    const fq = fastq.promise(async (i: number) => i, 8)
    const rows = await rounds(N, {
      'hotpath WorkerQueue.add': () => {
        const ps = new Array(N)
        for (let i = 0; i < N; i++) ps[i] = hp.add(async () => i)
        return Promise.all(ps)
      },
      'p-queue 8 add': () => {
        const ps = new Array(N)
        for (let i = 0; i < N; i++) ps[i] = pq.add(async () => i)
        return Promise.all(ps)
      },
      'fastq 1.20 promise push': () => {
        const ps = new Array(N)
        for (let i = 0; i < N; i++) ps[i] = fq.push(i)
        return Promise.all(ps)
      },
    })
    record({
      title: 'WorkerQueue function mode: 100,000 trivial async tasks, concurrency 8',
      note: `Each task is \`async () => i\`; all ${N} added at once, then awaited. Median of ${ROUNDS} interleaved rounds.`,
      rows,
    })
    await hp.close()
  }

  // ------------------------------------------------------------ worker threads, trivial tasks
  const threads = 2
  if (want('trivial')) {
    const N = 50_000
    const hp = new WorkerQueue({ workers: { filename: TASK, threads } })
    const pis = new Piscina({ filename: TASK, minThreads: threads, maxThreads: threads })
    const rows = await rounds(N, {
      [`hotpath WorkerQueue.run (${threads} threads)`]: () => {
        const ps = new Array(N)
        for (let i = 0; i < N; i++) ps[i] = hp.run({ a: i, b: 1 })
        return Promise.all(ps)
      },
      [`piscina 5 run (${threads} threads)`]: () => {
        const ps = new Array(N)
        for (let i = 0; i < N; i++) ps[i] = pis.run({ a: i, b: 1 })
        return Promise.all(ps)
      },
    })
    record({
      title: `WorkerQueue worker threads: ${N.toLocaleString('en')} trivial tasks, ${threads} threads`,
      note: `Payload \`{ a, b }\` (structured clone), result \`a + b\`; all submitted at once. Median of ${ROUNDS} interleaved rounds. ${os.cpus().length} CPUs.`,
      rows,
    })
    await hp.close()
    await pis.destroy()
  }

  // ------------------------------------------------------------ worker threads, one task at a time
  if (want('latency')) {
    const N = 3_000
    const hp = new WorkerQueue({ workers: { filename: TASK, threads } })
    const pis = new Piscina({ filename: TASK, minThreads: threads, maxThreads: threads })
    const rows = await rounds(N, {
      [`hotpath WorkerQueue.run, awaited one by one`]: async () => {
        for (let i = 0; i < N; i++) await hp.run({ a: i, b: 1 })
      },
      [`piscina 5 run, awaited one by one`]: async () => {
        for (let i = 0; i < N; i++) await pis.run({ a: i, b: 1 })
      },
    })
    record({
      title: `WorkerQueue worker threads: round trip of one task (${N.toLocaleString('en')} awaited one by one, ${threads} threads)`,
      note: `Wake-up of an idle worker plus wake-up of the main thread per task; mean = round-trip time. Median of ${ROUNDS} interleaved rounds.`,
      rows,
    })
    await hp.close()
    await pis.destroy()
  }

  // ------------------------------------------------------------ worker threads, CPU-bound tasks
  if (want('cpu')) {
    const N = 120
    const spinMs = 5
    const one = new WorkerQueue({ workers: { filename: TASK, threads: 1 } })
    const two = new WorkerQueue({ workers: { filename: TASK, threads: 2 } })
    const pis = new Piscina({ filename: TASK, minThreads: 2, maxThreads: 2 })
    const job = (q: { run: (p: unknown) => Promise<unknown> }) => () => {
      const ps = new Array(N)
      for (let i = 0; i < N; i++) ps[i] = q.run({ spinMs })
      return Promise.all(ps)
    }
    // The ceiling at this moment: two bare threads, each spinning N/2 tasks,
    // no queue at all (what the CPUs give two busy threads right now).
    const bare = (threads: number) => () =>
      Promise.all(
        Array.from(
          { length: threads },
          () =>
            new Promise<void>((resolve, reject) => {
              const w = new Worker(
                `const { parentPort, workerData } = require('node:worker_threads')
                 parentPort.once('message', () => {
                   for (let i = 0; i < workerData.n; i++) { const end = performance.now() + workerData.ms; while (performance.now() < end); }
                   parentPort.postMessage('done')
                 })`,
                { eval: true, workerData: { n: N / threads, ms: spinMs } },
              )
              w.once('message', () => resolve(void w.terminate()))
              w.once('error', reject)
              w.once('online', () => w.postMessage('go'))
            }),
        ),
      )
    const rows = await rounds(N, {
      'hotpath WorkerQueue.run (2 threads)': job(two),
      'hotpath WorkerQueue.run (1 thread)': job(one),
      'piscina 5 run (2 threads)': job(pis),
      'bare worker_threads, static split (2 threads, no queue)': bare(2),
      'bare worker_threads (1 thread, no queue)': bare(1),
    })
    record({
      title: `WorkerQueue worker threads: ${N} CPU-bound tasks of ~${spinMs} ms`,
      note: `Scaling from 1 to 2 threads (ideal 2.00x). The bare rows (thread start-up included) show what the ${os.cpus().length} CPUs gave two busy threads during the same rounds. Median of ${ROUNDS} interleaved rounds.`,
      rows,
    })
    await Promise.all([one.close(), two.close(), pis.destroy()])
  }
}
