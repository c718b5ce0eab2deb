// The package entry points: `require('hotpath')` and `import ... from 'hotpath'`
// expose the same classes.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'

const CLASSES = ['CacheManager', 'RateLimiter', 'WorkerQueue', 'BatchProcessor', 'BufferPool']

test('CommonJS and ES module entries export the same classes', () => {
  const cjs = execFileSync(process.execPath, ['-e', `const m = require('hotpath'); console.log(JSON.stringify(Object.keys(m).filter(k => typeof m[k] === 'function' && /^[A-Z]/.test(k)).sort()))`], { encoding: 'utf8' })
  const esm = execFileSync(process.execPath, ['--input-type=module', '-e', `import * as m from 'hotpath'; console.log(JSON.stringify(Object.keys(m).filter(k => typeof m[k] === 'function' && /^[A-Z]/.test(k)).sort()))`], { encoding: 'utf8' })
  const c = JSON.parse(cjs) as string[]
  const e = JSON.parse(esm) as string[]
  assert.deepEqual(e, c)
  for (const name of CLASSES) assert.ok(c.includes(name), `${name} missing from ${cjs}`)
  const named = execFileSync(process.execPath, ['--input-type=module', '-e', `import { ${CLASSES.join(', ')} } from 'hotpath'; console.log(typeof ${CLASSES[0]})`], { encoding: 'utf8' })
  assert.equal(named.trim(), 'function')
})

test('without the platform package, loading names the package to install and how', async () => {
  // The published layout (package.json, index.js, lib/) with no binary beside
  // it and no hotpath-<platform> package to resolve.
  const { cpSync, mkdtempSync, rmSync, readFileSync } = await import('node:fs')
  const { tmpdir } = await import('node:os')
  const { join } = await import('node:path')
  const root = join(__dirname, '..')
  const dir = mkdtempSync(join(tmpdir(), 'hotpath-nobinary-'))
  try {
    const pkgDir = join(dir, 'node_modules', 'hotpath')
    for (const f of ['package.json', 'index.js', 'lib']) cpSync(join(root, f), join(pkgDir, f), { recursive: true })
    const { version } = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'))
    const env = { ...process.env }
    delete env.NAPI_RS_NATIVE_LIBRARY_PATH
    const script = `try { require('hotpath'); console.log('loaded') } catch (e) { console.log(JSON.stringify({ code: e.code, message: e.message, pkg: e.expectedPackage })) }`
    const out = execFileSync(process.execPath, ['-e', script], { cwd: dir, env, encoding: 'utf8' })
    const r = JSON.parse(out) as { code: string; message: string; pkg: string }
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const { currentPlatform } = require('../lib/platforms.js') as { currentPlatform(): string }
    const expected = `hotpath-${currentPlatform()}`
    assert.equal(r.code, 'ERR_HOTPATH_NATIVE_MISSING')
    assert.equal(r.pkg, expected)
    assert.match(r.message, new RegExp(`npm install ${expected}@${version.replace(/\./g, '\\.')}`))
    assert.doesNotMatch(r.message, /npm has a bug/)
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
})

test('index.d.mts declares exactly the values the ES module entry exports', async () => {
  // index.d.mts lists the values by name (the rest of index.d.ts is re-exported
  // as types only): a value added to lib/hotpath.mjs must be added there too.
  const { readFileSync } = await import('node:fs')
  const { join } = await import('node:path')
  const dmts = readFileSync(join(__dirname, '..', 'index.d.mts'), 'utf8')
  const declared = [...dmts.matchAll(/^export \{([^}]*)\} from/gm)].flatMap((m) => m[1].split(',').map((s) => s.trim()).filter(Boolean)).sort()
  const esm = execFileSync(process.execPath, ['--input-type=module', '-e', `import * as m from 'hotpath'; console.log(JSON.stringify(Object.keys(m).filter((k) => k !== 'default').sort()))`], { encoding: 'utf8' })
  assert.deepEqual(declared, JSON.parse(esm))
})

test('every field of every options and stats interface in index.d.ts has a doc comment (hover docs)', async () => {
  const { readFileSync } = await import('node:fs')
  const { join } = await import('node:path')
  const lines = readFileSync(join(__dirname, '..', 'index.d.ts'), 'utf8').split('\n')
  const undocumented: string[] = []
  let current: string | null = null
  for (let i = 0; i < lines.length; i++) {
    const open = /^export interface (\w*(?:Options|Stats))\b.*\{\s*$/.exec(lines[i])
    if (open) {
      current = open[1]
      continue
    }
    if (current && lines[i] === '}') current = null
    const field = current && /^ {2}(?:readonly )?(\w+)\??:/.exec(lines[i])
    if (field && !lines[i - 1].trim().endsWith('*/')) undocumented.push(`${current}.${field[1]}`)
  }
  assert.deepEqual(undocumented, [])
})
