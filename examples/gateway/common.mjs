// Small helpers shared by the gateway example's processes (no hotpath here).
import { fork } from 'node:child_process'
import { createHash } from 'node:crypto'
import http from 'node:http'
import { resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

/** The gateway's builds, in the order the demo runs and prints them. */
export const MODES = ['baseline', 'peers', 'hotpath']
/** What the gateways cache: the upstream's answer text, or the JSON object it encodes. */
export const VALUES = ['string', 'json']

export const sha256 = (text) => createHash('sha256').update(text).digest('hex')

/** A seeded PRNG (mulberry32): the same plan for the baseline and hotpath runs. */
export function prng(seed) {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

/** True when `importMetaUrl` is the script node was started with. */
export function isMain(importMetaUrl) {
  const arg = process.argv[1]
  return arg !== undefined && fileURLToPath(importMetaUrl) === resolve(arg)
}

/** One JSON request to a local service (control traffic: /stats, /admin). */
export function requestJson(url, { method = 'GET', body, timeoutMs = 10_000 } = {}) {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : JSON.stringify(body)
    const req = http.request(
      url,
      {
        method,
        agent: false,
        headers: data === undefined ? {} : { 'content-type': 'application/json', 'content-length': Buffer.byteLength(data) },
        timeout: timeoutMs,
      },
      (res) => {
        const parts = []
        res.on('data', (c) => parts.push(c))
        res.on('end', () => {
          const text = Buffer.concat(parts).toString('utf8')
          if (res.statusCode !== 200) return reject(new Error(`${method} ${url}: HTTP ${res.statusCode} ${text.slice(0, 200)}`))
          try {
            resolve(JSON.parse(text))
          } catch (e) {
            reject(new Error(`${method} ${url}: bad JSON (${e.message})`))
          }
        })
        res.on('error', reject)
      },
    )
    req.on('timeout', () => req.destroy(new Error(`${method} ${url}: no answer within ${timeoutMs} ms`)))
    req.on('error', reject)
    req.end(data)
  })
}

/**
 * Starts `file` as a child process (node, IPC channel) and resolves when it
 * reports `{ type: 'ready', port }`. The child exits by itself when this
 * process goes away (it watches the IPC channel).
 */
export function startChild(file, args, { env, name = file, readyTimeoutMs = 20_000, execArgv = [] } = {}) {
  return new Promise((resolve, reject) => {
    const proc = fork(file, args, {
      execArgv,
      env: env ?? process.env,
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    })
    const timer = setTimeout(() => {
      proc.kill('SIGKILL')
      reject(new Error(`${name} did not start within ${readyTimeoutMs} ms`))
    }, readyTimeoutMs)
    const onExit = (code, signal) => {
      clearTimeout(timer)
      reject(new Error(`${name} exited before it was ready (code ${code}, signal ${signal})`))
    }
    proc.once('exit', onExit)
    proc.once('error', (e) => {
      clearTimeout(timer)
      reject(e)
    })
    proc.on('message', (m) => {
      if (m && m.type === 'ready') {
        clearTimeout(timer)
        proc.off('exit', onExit)
        resolve({ proc, port: m.port, url: `http://127.0.0.1:${m.port}` })
      }
    })
  })
}

/** Stops a child started by startChild: SIGTERM, then SIGKILL after `graceMs`. */
export async function stopChild(proc, graceMs = 5000) {
  if (!proc || proc.exitCode !== null || proc.signalCode !== null) return
  const exited = new Promise((r) => proc.once('exit', r))
  proc.kill('SIGTERM')
  const t = setTimeout(() => proc.kill('SIGKILL'), graceMs)
  await exited
  clearTimeout(t)
}

/** For a child: report the port to the parent, and exit when the parent is gone. */
export function reportReady(port, onParentGone) {
  if (process.send) {
    process.send({ type: 'ready', port })
    process.on('disconnect', onParentGone)
  } else {
    console.log(`listening on http://127.0.0.1:${port}`)
  }
}
