// The package entry points: `require('hotpath')` and `import ... from 'hotpath'`
// expose the same names, exactly the ones the public typings declare (and
// the README names); test hooks live in `hotpath/testing` only.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import ts from 'typescript'

const root = join(__dirname, '..')
const CLASSES = ['CacheManager', 'RateLimiter', 'WorkerQueue', 'BatchProcessor', 'BufferPool']

function runtimeNames(spec: string) {
  const cjs = execFileSync(process.execPath, ['-e', `console.log(JSON.stringify(Object.keys(require(${JSON.stringify(spec)})).sort()))`], { encoding: 'utf8', cwd: root })
  const esm = execFileSync(process.execPath, ['--input-type=module', '-e', `import * as m from ${JSON.stringify(spec)}; console.log(JSON.stringify(Object.keys(m).filter((k) => k !== 'default').sort()))`], {
    encoding: 'utf8',
    cwd: root,
  })
  return { cjs: JSON.parse(cjs) as string[], esm: JSON.parse(esm) as string[] }
}

/** The value (not type-only) exports a typings file declares, by the TypeScript compiler. */
function declaredValues(file: string): { values: string[]; types: string[] } {
  const program = ts.createProgram([file], { module: ts.ModuleKind.NodeNext, moduleResolution: ts.ModuleResolutionKind.NodeNext, types: ['node'], noEmit: true, strict: true })
  const diags = ts.getPreEmitDiagnostics(program).filter((d) => d.file?.fileName === file)
  assert.deepEqual(diags.map((d) => ts.flattenDiagnosticMessageText(d.messageText, '\n')), [], `${file} type-checks`)
  const checker = program.getTypeChecker()
  const sf = program.getSourceFile(file)!
  const mod = checker.getSymbolAtLocation(sf)!
  const values: string[] = []
  const types: string[] = []
  for (const sym of checker.getExportsOfModule(mod)) {
    let target = sym
    if (sym.flags & ts.SymbolFlags.Alias) target = checker.getAliasedSymbol(sym)
    // `export type { X }` re-exports only the type meaning.
    const typeOnly = sym.declarations?.some((d) => ts.isExportSpecifier(d) && (d.isTypeOnly || d.parent.parent.isTypeOnly))
    if (!typeOnly && target.flags & ts.SymbolFlags.Value) values.push(sym.name)
    else types.push(sym.name)
  }
  return { values: values.sort(), types: types.sort() }
}

function typesEntry(spec: '.' | './testing') {
  const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'))
  return join(root, pkg.exports[spec].types)
}

test('require and import of hotpath export the same names, exactly the values its typings declare', () => {
  const { cjs, esm } = runtimeNames('hotpath')
  assert.deepEqual(esm, cjs)
  for (const name of CLASSES) assert.ok(cjs.includes(name), `${name} missing from ${cjs}`)
  const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'))
  assert.equal(join(root, pkg.types), typesEntry('.'), 'package.json "types" is the public typings')
  const declared = declaredValues(typesEntry('.'))
  assert.deepEqual(declared.values, cjs, 'runtime exports = declared value exports')
  // Nothing internal, in the typings or at runtime.
  for (const name of [...declared.values, ...declared.types]) assert.doesNotMatch(name, /^(Native|__|rateLimiterCheckSync)/, name)
  const named = execFileSync(process.execPath, ['--input-type=module', '-e', `import { ${cjs.join(', ')} } from 'hotpath'; console.log(typeof ${CLASSES[0]})`], { encoding: 'utf8', cwd: root })
  assert.equal(named.trim(), 'function')
})

test('every public name is documented in README.md, and API.md names are all exported', () => {
  const readme = readFileSync(join(root, 'README.md'), 'utf8')
  const api = readFileSync(join(root, '..', 'shared', 'API.md'), 'utf8')
  const { cjs } = runtimeNames('hotpath')
  for (const name of cjs) assert.ok(readme.includes(name), `README.md does not name ${name}`)
  for (const name of [...CLASSES, 'HotpathError', 'isHotpathError']) {
    assert.ok(api.includes(name), `API.md names ${name}`)
    assert.ok(cjs.includes(name), `${name} is exported`)
  }
})

test('hotpath/testing has the test hooks, exactly as its typings declare; the main entry has none', () => {
  const { cjs, esm } = runtimeNames('hotpath/testing')
  assert.deepEqual(esm, cjs)
  assert.deepEqual(cjs, ['__advanceClock', '__native', 'cacheHandles', 'deafen', 'fillReached', 'liveDeleteLaterTasks', 'panicNextCall', 'pauseFills', 'releaseFill'])
  assert.deepEqual(declaredValues(typesEntry('./testing')).values, cjs)
  const main = require('hotpath')
  assert.equal(main.__advanceClock, undefined)
  assert.equal(main.__native, undefined)
  assert.equal(typeof require('hotpath/testing').__advanceClock, 'function')
})

test('the generated index.d.ts declares what the loader exports (the public typings re-export a subset of it)', () => {
  const loader = Object.keys(require(join(root, 'index.js'))).sort()
  const declared = declaredValues(join(root, 'index.d.ts')).values
  // index.d.ts also declares the JS layer's classes (types/header.d.ts): those live in lib/.
  const fromHeader = declaredValues(typesEntry('.')).values
  assert.deepEqual(
    declared.filter((n) => !fromHeader.includes(n)),
    loader.filter((n) => n !== '__advanceClock'),
  )
})
