#!/usr/bin/env node
// `npm run pack:check`: what a consumer gets, checked the way a consumer gets it.
//
// 1. The linux-x64-gnu binary built by `npm ci` (scripts/prepare.mjs) needs no
//    glibc symbol newer than 2.17 (objdump -T).
// 2. Pack the main package (`npm pack`: prepack strips `prepare` and adds the
//    per-platform optionalDependencies) and the linux-x64-gnu package
//    (`napi create-npm-dirs` + the binary); the main one holds no binary.
// 3. Install both tarballs into a fresh project with `npm install --offline`
//    and no Rust (cargo, rustc) on PATH: no install script, no build.
// 4. Load every class through require and import, and use each once.
// 5. Type-check a consumer file under node16 (ESM and CJS) and bundler
//    resolution, with `types: []` (the typings bring Node's types themselves).
// 6. @arethetypeswrong/cli and publint report no problems.
//
// Only linux-x64-gnu can be built and tested here; the release workflow
// (.github/workflows/release.yml) does the other targets on their platforms.
import { execFileSync, spawnSync } from 'node:child_process'
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { delimiter, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = fileURLToPath(new URL('..', import.meta.url))
const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'))
const PLATFORM = 'linux-x64-gnu'
const binary = `${pkg.napi.binaryName}.${PLATFORM}.node`
const bin = (name) => join(root, 'node_modules', '.bin', name)
const CLASSES = ['CacheManager', 'RateLimiter', 'BatchProcessor', 'BufferPool', 'WorkerQueue']

let failures = 0
function fail(msg) {
  failures++
  console.error(`pack:check: FAIL ${msg}`)
}
function ok(msg) {
  console.log(`pack:check: ok   ${msg}`)
}
function run(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', ...opts })
  if (r.error) throw r.error
  return r
}
function must(cmd, args, opts = {}) {
  const r = run(cmd, args, opts)
  if (r.status !== 0) {
    process.stdout.write(r.stdout ?? '')
    process.stderr.write(r.stderr ?? '')
    throw new Error(`pack:check: \`${cmd} ${args.join(' ')}\` exited ${r.status}`)
  }
  return r.stdout
}

if (process.platform !== 'linux' || process.arch !== 'x64') {
  console.log(`pack:check: SKIPPED: only ${PLATFORM} can be packed and installed here (this is ${process.platform}-${process.arch})`)
  process.exit(0)
}
if (!existsSync(join(root, binary))) {
  console.error(`pack:check: ${binary} is missing: run \`npm ci\` (its prepare script builds it) first`)
  process.exit(1)
}

// ---------------------------------------------------------------- 1. glibc
{
  const syms = must('objdump', ['-T', join(root, binary)])
  const versions = [...new Set([...syms.matchAll(/GLIBC_(\d+)\.(\d+)(?:\.(\d+))?/g)].map((m) => m.slice(1).map((x) => Number(x ?? 0))))]
  const newest = versions.sort((a, b) => a[0] - b[0] || a[1] - b[1] || a[2] - b[2]).at(-1) ?? [0, 0, 0]
  const shown = `GLIBC_${newest[0]}.${newest[1]}${newest[2] ? `.${newest[2]}` : ''}`
  if (newest[0] > 2 || (newest[0] === 2 && newest[1] > 17)) fail(`${binary} needs ${shown} (> GLIBC_2.17): build it with \`npm run build:glibc217\``)
  else ok(`${binary} needs at most ${shown} (<= GLIBC_2.17)`)
}

const work = mkdtempSync(join(tmpdir(), 'hotpath-pack-check-'))
try {
  // -------------------------------------------------------------- 2. pack
  const tarballs = join(work, 'tarballs')
  mkdirSync(tarballs)
  // napi writes the per-platform package dirs inside the project: npm/ (gitignored).
  const npmDir = join(root, 'npm')
  must(process.execPath, [join(root, 'node_modules/@napi-rs/cli/dist/cli.js'), 'create-npm-dirs', '--cwd', root])
  const platformDir = join(npmDir, PLATFORM)
  cpSync(join(root, binary), join(platformDir, binary))
  const platformJson = JSON.parse(readFileSync(join(platformDir, 'package.json'), 'utf8'))
  must('npm', ['pack', '--pack-destination', tarballs], { cwd: platformDir })
  const manifestBefore = readFileSync(join(root, 'package.json'), 'utf8')
  // Lifecycle output (prepack, postpack) may precede the JSON on stdout.
  const packOut = must('npm', ['pack', '--json', '--pack-destination', tarballs], { cwd: root })
  const mainPack = JSON.parse(packOut.slice(packOut.search(/^\[/m)))[0]
  const mainTgz = join(tarballs, mainPack.filename)
  const platformTgz = join(tarballs, `${platformJson.name}-${platformJson.version}.tgz`)
  if (readFileSync(join(root, 'package.json'), 'utf8') !== manifestBefore || existsSync(join(root, '.package.json.prepack'))) {
    fail('npm pack left package.json rewritten (postpack did not restore it)')
  }

  const files = mainPack.files.map((f) => f.path)
  if (files.some((f) => f.endsWith('.node'))) fail(`the main package holds a binary: ${files.filter((f) => f.endsWith('.node'))}`)
  else ok(`main package: ${files.length} files, ${(mainPack.size / 1024).toFixed(0)} kB packed, no binary`)
  for (const f of ['LICENSE', 'README.md', 'index.js', 'index.d.ts', 'types/hotpath.d.ts', 'types/hotpath.d.mts', 'lib/hotpath.js', 'lib/hotpath.mjs']) {
    if (!files.includes(f)) fail(`the main package lacks ${f}`)
  }
  const packed = JSON.parse(must('tar', ['-xzOf', mainTgz, 'package/package.json']))
  if (packed.scripts?.prepare || packed.scripts?.install || packed.scripts?.postinstall || packed.scripts?.preinstall) {
    fail(`the packed package.json has an install-time script: ${JSON.stringify(packed.scripts)}`)
  }
  const wantOptional = Object.keys(packed.optionalDependencies ?? {}).sort()
  const napiPlatforms = readdirSync(npmDir).map((d) => JSON.parse(readFileSync(join(npmDir, d, 'package.json'), 'utf8')).name).sort()
  if (JSON.stringify(wantOptional) !== JSON.stringify(napiPlatforms)) fail(`optionalDependencies ${wantOptional} != napi's platform packages ${napiPlatforms}`)
  else ok(`optionalDependencies name every platform package (${wantOptional.length}) at ${pkg.version}`)
  if (!existsSync(platformTgz)) fail(`${platformTgz} was not packed`)
  ok(`packed ${mainPack.filename} and ${platformJson.name}-${platformJson.version}.tgz`)

  // ---------------------------------------------- 3. install, offline, no Rust
  const consumer = join(work, 'consumer')
  mkdirSync(consumer)
  writeFileSync(join(consumer, 'package.json'), JSON.stringify({ name: 'consumer', version: '1.0.0', private: true }, null, 2))
  const noRustPath = (process.env.PATH ?? '')
    .split(delimiter)
    .filter((d) => d && !existsSync(join(d, 'cargo')) && !existsSync(join(d, 'rustc')) && !existsSync(join(d, 'rustup')))
    .join(delimiter)
  const env = { ...process.env, PATH: noRustPath, CARGO: '/nonexistent/cargo', RUSTC: '/nonexistent/rustc' }
  delete env.NAPI_RS_NATIVE_LIBRARY_PATH
  for (const k of Object.keys(env)) if (k.startsWith('npm_')) delete env[k]
  if (run('sh', ['-c', 'command -v cargo || command -v rustc'], { env }).status === 0) fail('cargo/rustc still on the consumer PATH')
  const install = run('npm', ['install', '--offline', '--no-audit', '--no-fund', mainTgz, platformTgz], { cwd: consumer, env })
  process.stdout.write(install.stdout)
  process.stderr.write(install.stderr)
  if (install.status !== 0) fail(`npm install --offline of the tarballs exited ${install.status}`)
  else ok('npm install --offline of the two tarballs, no Rust on PATH')
  // The consumer's own TypeScript setup: @types/node, as in any Node TypeScript
  // project (copied from this repo: the registry is not asked).
  for (const dep of ['@types/node', 'undici-types']) cpSync(join(root, 'node_modules', dep), join(consumer, 'node_modules', dep), { recursive: true })
  if (/install-scripts|prepare|node-gyp|cargo|napi build/i.test(install.stdout + install.stderr)) fail('the install ran or warned about a script/build')
  if (existsSync(join(consumer, 'node_modules/hotpath', binary))) fail('a binary landed inside the main package')

  // -------------------------------------------------- 4. require and import
  const useAll = (m) => `
    const names = ${JSON.stringify(CLASSES)}
    for (const n of names) if (typeof ${m}[n] !== 'function') throw new Error(n + ' is not exported')
    const cache = new ${m}.CacheManager({ maxEntries: 10 })
    cache.setSync('k', { a: 1 })
    if (cache.getSync('k').a !== 1) throw new Error('cache')
    const rl = new ${m}.RateLimiter({ limit: 1, windowMs: 1000 })
    if (!rl.checkSync('x').allowed || rl.checkSync('x').allowed) throw new Error('limiter')
    const bp = new ${m}.BatchProcessor(async (xs) => xs.map((x) => x * 2), { maxWaitMs: 0 })
    const pool = new ${m}.BufferPool()
    const buf = pool.allocate(100)
    if (buf.length !== 100) throw new Error('pool')
    pool.release(buf)
    const q = new ${m}.WorkerQueue({ concurrency: 1 })
    Promise.all([bp.add(21), q.add(() => 'done')]).then(async ([b, d]) => {
      if (b !== 42 || d !== 'done') throw new Error('batch/queue')
      await Promise.all([cache.close(), rl.close(), bp.close(), pool.close(), q.close()])
      console.log('loaded ' + names.join(' '))
    })`
  const cjs = run(process.execPath, ['-e', `const m = require('hotpath');${useAll('m')}`], { cwd: consumer, env })
  if (cjs.status !== 0 || !cjs.stdout.includes('loaded')) fail(`require('hotpath'): ${cjs.stderr}`)
  else ok(`require('hotpath'): ${cjs.stdout.trim()}`)
  const esm = run(process.execPath, ['--input-type=module', '-e', `import * as m from 'hotpath'; import def from 'hotpath'; if (def.CacheManager !== m.CacheManager) throw new Error('default'); ${useAll('m')}`], { cwd: consumer, env })
  if (esm.status !== 0 || !esm.stdout.includes('loaded')) fail(`import 'hotpath': ${esm.stderr}`)
  else ok(`import 'hotpath': ${esm.stdout.trim()}`)

  // ------------------------------------------------------- 5. consumer types
  const consumerSource = readFileSync(join(root, '__test__/fixtures/consumer.ts'), 'utf8')
  writeFileSync(join(consumer, 'consumer.mts'), consumerSource)
  writeFileSync(join(consumer, 'consumer.ts'), consumerSource)
  writeFileSync(
    join(consumer, 'consumer.cts'),
    `import hotpath = require('hotpath')\nconst c: InstanceType<typeof hotpath.CacheManager> = new hotpath.CacheManager()\nvoid c\nexport {}\n`,
  )
  const common = { strict: true, noEmit: true, target: 'ES2022', types: [], skipLibCheck: false }
  const configs = {
    'tsconfig.node16.json': { compilerOptions: { ...common, module: 'node16', moduleResolution: 'node16' }, files: ['consumer.mts', 'consumer.cts'] },
    'tsconfig.bundler.json': { compilerOptions: { ...common, module: 'esnext', moduleResolution: 'bundler' }, files: ['consumer.ts'] },
  }
  for (const [file, config] of Object.entries(configs)) {
    writeFileSync(join(consumer, file), JSON.stringify(config, null, 2))
    const tsc = run(process.execPath, [join(root, 'node_modules/typescript/bin/tsc'), '-p', file], { cwd: consumer, env })
    if (tsc.status !== 0) fail(`tsc -p ${file}:\n${tsc.stdout}${tsc.stderr}`)
    else ok(`consumer type-checks: ${file} (${config.compilerOptions.moduleResolution})`)
  }

  // ----------------------------------------------------- 6. attw and publint
  const attw = run(bin('attw'), [mainTgz, '--format', 'ascii'], { cwd: work })
  if (attw.status !== 0) fail(`attw:\n${attw.stdout}${attw.stderr}`)
  else ok(`@arethetypeswrong/cli: no problems\n${attw.stdout.trim()}`)
  const publint = run(bin('publint'), ['run', join(consumer, 'node_modules/hotpath'), '--level', 'suggestion', '--strict', '--pack', 'false'], { cwd: work })
  const publintOut = publint.stdout + publint.stderr
  if (publint.status !== 0 || !/All good/i.test(publintOut)) fail(`publint:\n${publintOut}`)
  else ok(`publint: ${publintOut.trim().split('\n').at(-1)}`)
} finally {
  if (process.env.PACK_CHECK_KEEP) console.log(`pack:check: kept ${work}`)
  else rmSync(work, { recursive: true, force: true })
}

if (failures) {
  console.error(`pack:check: ${failures} problem(s)`)
  process.exit(1)
}
console.log('pack:check: all checks passed')
