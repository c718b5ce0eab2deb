#!/usr/bin/env node
// `npm pack` / `npm publish` hooks (prepack: `strip`, postpack: `restore`).
//
// The packed package.json differs from the repo's in two ways:
// - no `prepare` script: in the repo it builds the addon from source for a
//   contributor's `npm ci`; in a tarball it would only make npm 11 print its
//   install-scripts warning on every consumer install (a tarball has no Rust
//   sources, and a consumer never builds);
// - `optionalDependencies` on the per-platform packages (one per napi
//   target, same version), so npm installs exactly the binary for the
//   consumer's platform. They are not committed: until those packages are on
//   the registry, `npm ci` in the repo would fail on them ("Missing: ... from
//   lock file"). `napi prepublish` writes the same list at publish time.
import { existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { fileURLToPath } from 'node:url'

const { platformsOf } = createRequire(import.meta.url)('../lib/platforms.js')

const root = fileURLToPath(new URL('..', import.meta.url))
const manifest = `${root}package.json`
const backup = `${root}.package.json.prepack`

/** `{ 'hotpath-linux-x64-gnu': '0.1.0', ... }` for the napi targets of `pkg`. */
export function platformPackages(pkg) {
  const out = {}
  for (const platform of platformsOf(pkg.napi.targets)) out[`${pkg.name}-${platform}`] = pkg.version
  return out
}

function strip() {
  if (existsSync(backup)) {
    // A pack that died before postpack: the backup is the real manifest.
    renameSync(backup, manifest)
  }
  const text = readFileSync(manifest, 'utf8')
  const pkg = JSON.parse(text)
  writeFileSync(backup, text)
  delete pkg.scripts.prepare
  pkg.optionalDependencies = platformPackages(pkg)
  writeFileSync(manifest, JSON.stringify(pkg, null, 2) + '\n')
}

function restore() {
  if (existsSync(backup)) renameSync(backup, manifest)
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const mode = process.argv[2]
  if (mode === 'strip') strip()
  else if (mode === 'restore') restore()
  else {
    console.error('usage: pack-manifest.mjs strip|restore')
    process.exit(2)
  }
}
