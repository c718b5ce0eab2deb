#!/usr/bin/env node
// `prepare`: a contributor's `npm ci` / `npm install` in a clone builds the
// addon from source (Rust needed). It never runs for a consumer: the packed
// package.json has no `prepare` (scripts/pack-manifest.mjs), and a tarball
// has no Rust sources.
//
// On Linux x64 with glibc the build uses napi's cross toolchain
// (`--use-napi-cross`, from npm): the binary then needs nothing newer than
// glibc 2.17, like the one in the published linux-x64-gnu package. Where that
// toolchain cannot be set up it falls back to the host toolchain with a
// warning (except with CI=true, where that is an error).
// HOTPATH_BUILD=host skips the cross toolchain; HOTPATH_BUILD=none skips the build.
import { spawnSync } from 'node:child_process'
import { existsSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = fileURLToPath(new URL('..', import.meta.url))
const require = createRequire(import.meta.url)

if (!existsSync(`${root}Cargo.toml`) || process.env.HOTPATH_BUILD === 'none') {
  console.log('prepare: no build (no Cargo.toml, or HOTPATH_BUILD=none)')
  process.exit(0)
}

// The napi CLI's bin (its package exports only its API, not dist/cli.js).
const cliManifest = require.resolve('@napi-rs/cli/package.json')
const napi = join(dirname(cliManifest), require(cliManifest).bin.napi)
const base = ['build', '--platform', '--release', '--js', 'index.js', '--dts', 'index.d.ts']

function napiBuild(extra) {
  console.log(`prepare: napi ${[...base, ...extra].join(' ')}`)
  const r = spawnSync(process.execPath, [napi, ...base, ...extra], { cwd: root, stdio: 'inherit' })
  return r.status === 0
}

function glibcLinuxX64() {
  if (process.platform !== 'linux' || process.arch !== 'x64') return false
  const report = process.report?.getReport?.()
  return Boolean(report?.header?.glibcVersionRuntime)
}

if (glibcLinuxX64() && process.env.HOTPATH_BUILD !== 'host') {
  if (napiBuild(['--use-napi-cross', '--target', 'x86_64-unknown-linux-gnu'])) process.exit(0)
  if (process.env.CI === 'true') {
    console.error('prepare: the glibc 2.17 build (--use-napi-cross) failed')
    process.exit(1)
  }
  console.warn('prepare: WARNING: the glibc 2.17 cross build failed; building with the host toolchain instead')
}
process.exit(napiBuild([]) ? 0 : 1)
