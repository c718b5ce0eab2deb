// Shared test helpers.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { createServer, connect } from 'node:net'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { TestContext } from 'node:test'

/** The Redis URL for tests, or null (then the test skips — but fails in CI). */
export function redisUrl(t: TestContext): string | null {
  const url = process.env.REDIS_URL
  if (url) return url
  if (process.env.CI === 'true') throw new Error('CI=true but REDIS_URL is unset: Redis tests must run in CI')
  t.skip('SKIPPED: REDIS_URL is unset and no redis-server was started (run `npm test` with redis-server installed)')
  return null
}

/** Poll `cond` on every macrotask until it holds (or fail after `ms`). For
 *  effects with no event to await (pub/sub delivery to another instance). */
export async function eventually(cond: () => boolean | Promise<boolean>, ms = 5000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + ms
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 5))
  }
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer()
    s.on('error', reject)
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as { port: number }
      s.close(() => resolve(port))
    })
  })
}

function canListen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createServer()
    s.on('error', () => resolve(false))
    s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)))
  })
}

/** A free port for a cluster node: a node also listens on port + 10000 (its
 *  cluster bus), so the port must be at most 55535 and port + 10000 free too.
 *  The kernel's ephemeral range here reaches 60999: a plain freePort() gives
 *  a port a cluster node refuses about one time in five. */
export async function freeClusterPort(): Promise<number> {
  for (let i = 0; i < 1000; i++) {
    const p = await freePort()
    if (p <= 55535 && (await canListen(p + 10000))) return p
  }
  throw new Error('no free port pair (port, port + 10000) for a cluster node')
}

function ping(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const c = connect(port, '127.0.0.1')
    c.on('connect', () => c.write('PING\r\n'))
    c.on('data', (d) => {
      c.destroy()
      resolve(d.toString().startsWith('+PONG') || d.toString().startsWith('-NOAUTH'))
    })
    c.on('error', () => resolve(false))
  })
}

/** A redis-server of the test's own (to stop and restart it). */
export class OwnRedis {
  proc: ChildProcess | null = null
  extraArgs: string[] = []
  dir = mkdtempSync(join(tmpdir(), 'hotpath-own-redis-'))
  constructor(public port: number) {}
  get url() {
    return `redis://127.0.0.1:${this.port}`
  }
  static bin() {
    return process.env.HOTPATH_TEST_REDIS_BIN || 'redis-server'
  }
  /** The tail of the server's log (it logs to stdout), for errors. */
  log = ''
  async start() {
    this.log = ''
    const p = spawn(OwnRedis.bin(), ['--port', String(this.port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', this.dir, ...this.extraArgs], {
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    this.proc = p
    const keep = (d: Buffer) => {
      this.log = (this.log + d.toString()).slice(-4096)
    }
    p.stdout!.on('data', keep)
    p.stderr!.on('data', keep)
    let exited: string | null = null
    p.once('exit', (code, sig) => {
      exited = `exited (${code ?? sig})`
    })
    const deadline = Date.now() + 10_000
    while (!(await ping(this.port))) {
      // A server that exits at start-up (port taken, bad option) fails now,
      // with its own words, not after the deadline.
      if (exited) throw new Error(`own redis-server on port ${this.port} ${exited}: ${this.log.trim()}`)
      if (Date.now() > deadline) throw new Error(`own redis-server on port ${this.port} did not start: ${this.log.trim()}`)
      await new Promise((r) => setTimeout(r, 20))
    }
  }
  async stop() {
    const p = this.proc
    if (!p) return
    this.proc = null
    if (p.exitCode !== null || p.signalCode !== null) return // already gone
    const exited = new Promise((r) => p.once('exit', r))
    p.kill('SIGKILL')
    await exited
  }
  /** SIGSTOP: the server keeps its sockets (the kernel still accepts
   *  connections) but answers nothing: a blackhole. */
  pause() {
    this.proc?.kill('SIGSTOP')
  }
  resume() {
    this.proc?.kill('SIGCONT')
  }
  async dispose() {
    this.resume()
    await this.stop()
    rmSync(this.dir, { recursive: true, force: true })
  }
}

/** A TLS-only redis-server of the test's own (`--tls-port`, no plain port)
 *  with a throwaway self-signed certificate for IP:127.0.0.1, made with
 *  openssl. `url` has `#insecure` (the certificate is in no root store);
 *  `ioredis` gives ioredis options for the same server. */
export class OwnTlsRedis {
  proc: ChildProcess | null = null
  dir = mkdtempSync(join(tmpdir(), 'hotpath-tls-'))
  /** `plainPort`: also serve plain TCP there (0: TLS only). */
  constructor(public port: number, public plainPort = 0) {}
  get url() {
    return `rediss://127.0.0.1:${this.port}/#insecure`
  }
  get ioredis() {
    return { host: '127.0.0.1', port: this.port, tls: { rejectUnauthorized: false } }
  }
  async start(extraArgs: string[] = []) {
    const gen = spawnSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', join(this.dir, 'key.pem'), '-out', join(this.dir, 'cert.pem'), '-days', '1', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1'], { encoding: 'utf8' })
    if (gen.status !== 0) throw new Error(`openssl: ${gen.stderr}`)
    const args = ['--port', String(this.plainPort), '--tls-port', String(this.port), '--bind', '127.0.0.1', '--tls-cert-file', join(this.dir, 'cert.pem'), '--tls-key-file', join(this.dir, 'key.pem'), '--tls-ca-cert-file', join(this.dir, 'cert.pem'), '--tls-auth-clients', 'no', '--save', '', '--appendonly', 'no', '--dir', this.dir, ...extraArgs]
    this.proc = spawn(OwnRedis.bin(), args, { stdio: 'ignore' })
    // Up when it accepts TCP (the TLS handshake is the client's business).
    const deadline = Date.now() + 10_000
    while (!(await new Promise<boolean>((resolve) => {
      const c = connect(this.port, '127.0.0.1')
      c.on('connect', () => (c.destroy(), resolve(true)))
      c.on('error', () => resolve(false))
    }))) {
      if (this.proc.exitCode !== null) throw new Error(`TLS redis-server on ${this.port} exited (${this.proc.exitCode})`)
      if (Date.now() > deadline) throw new Error(`TLS redis-server on ${this.port} did not start`)
      await new Promise((r) => setTimeout(r, 20))
    }
  }
  pause() {
    this.proc?.kill('SIGSTOP')
  }
  resume() {
    this.proc?.kill('SIGCONT')
  }
  async dispose() {
    const p = this.proc
    this.proc = null
    if (p && p.exitCode === null && p.signalCode === null) {
      p.kill('SIGCONT')
      const exited = new Promise((r) => p.once('exit', r))
      p.kill('SIGKILL')
      await exited
    }
    rmSync(this.dir, { recursive: true, force: true })
  }
}

/** A 3-primary Redis Cluster of the test's own, on free loopback ports
 *  (with `password`: requirepass and masterauth on every node). */
export class OwnCluster {
  nodes: OwnRedis[] = []
  constructor(public opts: { password?: string; extraArgs?: string[] } = {}) {}
  private auth(): string[] {
    return this.opts.password ? ['-a', this.opts.password, '--no-auth-warning'] : []
  }
  /** Start the cluster; a start that fails (a port another process took
   *  meanwhile) is retried on new ports, twice. */
  async start() {
    let last: unknown
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        return await this.startOnce()
      } catch (e) {
        last = e
        await this.dispose()
        this.nodes = []
      }
    }
    throw last
  }
  private async startOnce() {
    const { spawnSync } = await import('node:child_process')
    for (let i = 0; i < 3; i++) {
      const n = new OwnRedis(await freeClusterPort())
      n.extraArgs = ['--cluster-enabled', 'yes', '--cluster-config-file', `nodes-${n.port}.conf`, '--cluster-node-timeout', '2000', ...(this.opts.extraArgs ?? [])]
      if (this.opts.password) n.extraArgs.push('--requirepass', this.opts.password, '--masterauth', this.opts.password)
      this.nodes.push(n) // before start: dispose() cleans up a node that failed
      await n.start()
    }
    const cli = process.env.HOTPATH_TEST_REDIS_CLI || 'redis-cli'
    const r = spawnSync(cli, [...this.auth(), '--cluster', 'create', ...this.nodes.map((n) => `127.0.0.1:${n.port}`), '--cluster-replicas', '0', '--cluster-yes'], {
      encoding: 'utf8',
    })
    if (r.status !== 0) throw new Error(`redis-cli --cluster create failed: ${r.stderr || r.stdout}`)
    // Every node must agree the cluster is up (a fresh cluster answers MOVED
    // storms and CLUSTERDOWN until the configuration has spread).
    await eventually(() => {
      return this.nodes.every((n) => {
        const s = spawnSync(cli, [...this.auth(), '-p', String(n.port), 'cluster', 'info'], { encoding: 'utf8' })
        return /cluster_state:ok/.test(s.stdout) && /cluster_known_nodes:3/.test(s.stdout)
      })
    }, 15_000, 'cluster_state:ok on every node')
  }
  get urls() {
    const auth = this.opts.password ? `:${encodeURIComponent(this.opts.password)}@` : ''
    return this.nodes.map((n) => `redis://${auth}127.0.0.1:${n.port}`)
  }
  async dispose() {
    for (const n of this.nodes) await n.dispose()
  }
}

/** A promise with its resolve and reject, to settle from outside. */
export function deferred<T = void>() {
  let resolve!: (v: T) => void
  let reject!: (e: unknown) => void
  const promise = new Promise<T>((res, rej) => {
    resolve = res
    reject = rej
  })
  return { promise, resolve, reject }
}
