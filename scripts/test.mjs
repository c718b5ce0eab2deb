#!/usr/bin/env node
// `npm test`: every test. Starts a throwaway redis-server on a free loopback
// port when REDIS_URL is unset and one is installed (stopped afterwards).
// Without Redis, Redis tests skip with a visible line — except with CI=true,
// where missing Redis is a failure.
import { spawn, spawnSync } from 'node:child_process'
import { mkdtempSync, readdirSync, rmSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

const root = new URL('..', import.meta.url).pathname
const CI = process.env.CI === 'true'
const only = process.argv.slice(2)

function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer()
    s.unref()
    s.on('error', reject)
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address()
      s.close(() => resolve(port))
    })
  })
}

function which(cmd) {
  const r = spawnSync('sh', ['-c', `command -v ${cmd}`], { encoding: 'utf8' })
  return r.status === 0 ? r.stdout.trim() : null
}

async function waitForRedis(port) {
  const { connect } = await import('node:net')
  const deadline = Date.now() + 10_000
  while (Date.now() < deadline) {
    const ok = await new Promise((resolve) => {
      const c = connect(port, '127.0.0.1')
      c.on('connect', () => {
        c.write('PING\r\n')
      })
      c.on('data', (d) => {
        c.destroy()
        resolve(d.toString().startsWith('+PONG'))
      })
      c.on('error', () => resolve(false))
    })
    if (ok) return
    await new Promise((r) => setTimeout(r, 50))
  }
  throw new Error(`redis-server on port ${port} did not answer PING within 10 s`)
}

let redis = null
let redisDir = null
const env = { ...process.env }
if (!env.REDIS_URL) {
  const bin = which('redis-server')
  if (bin) {
    const port = await freePort()
    redisDir = mkdtempSync(join(tmpdir(), 'hotpath-redis-'))
    redis = spawn(bin, ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', redisDir], {
      stdio: 'ignore',
    })
    await waitForRedis(port)
    env.REDIS_URL = `redis://127.0.0.1:${port}`
    env.HOTPATH_TEST_REDIS_BIN = bin
    env.HOTPATH_TEST_REDIS_PORT = String(port)
    console.log(`test: started redis-server on 127.0.0.1:${port}`)
  } else if (CI) {
    console.error('test: CI=true but redis-server is not installed and REDIS_URL is unset: Redis tests cannot run')
    process.exit(1)
  } else {
    console.log('test: SKIPPING Redis tests: redis-server not found and REDIS_URL unset')
  }
}

function run(cmd, args) {
  return new Promise((resolve) => {
    const p = spawn(cmd, args, { cwd: root, env, stdio: 'inherit' })
    p.on('exit', (code, signal) => resolve(code ?? (signal ? 1 : 0)))
  })
}

let failed = 0
try {
  if (only.length === 0) {
    failed |= await run('cargo', ['test', '--quiet'])
    failed |= await run('npx', ['tsc', '-p', 'tsconfig.json'])
    // Benchmarks import peers whose typings reference optional packages: skipLibCheck there.
    failed |= await run('npx', ['tsc', '-p', 'benchmark/tsconfig.json'])
  }
  const specs = only.length
    ? only
    : readdirSync(join(root, '__test__'))
        .filter((f) => f.endsWith('.spec.ts'))
        .sort()
        .map((f) => join('__test__', f))
  failed |= await run(process.execPath, ['--expose-gc', '--import', 'tsx', '--test', '--test-force-exit', '--test-concurrency=1', ...specs])
} finally {
  if (redis) {
    redis.kill('SIGTERM')
    await new Promise((r) => redis.once('exit', r))
  }
  if (redisDir) rmSync(redisDir, { recursive: true, force: true })
}
process.exit(failed ? 1 : 0)
