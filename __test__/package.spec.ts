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
