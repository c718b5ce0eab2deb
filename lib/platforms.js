'use strict'
// napi target triple -> the platform name of its npm package (napi's naming:
// `hotpath-<platform>`). One source for lib/native.js (which package this
// platform needs) and scripts/pack-manifest.mjs (the packed
// optionalDependencies); the targets themselves are package.json "napi.targets".
const PLATFORM_OF_TRIPLE = {
  'x86_64-unknown-linux-gnu': 'linux-x64-gnu',
  'aarch64-unknown-linux-gnu': 'linux-arm64-gnu',
  'x86_64-unknown-linux-musl': 'linux-x64-musl',
  'aarch64-unknown-linux-musl': 'linux-arm64-musl',
  'x86_64-apple-darwin': 'darwin-x64',
  'aarch64-apple-darwin': 'darwin-arm64',
  'x86_64-pc-windows-msvc': 'win32-x64-msvc',
}

/** The platform names of `targets` (napi triples); throws on a triple not in the table. */
function platformsOf(targets) {
  return targets.map((triple) => {
    const p = PLATFORM_OF_TRIPLE[triple]
    if (!p) throw new Error(`no npm platform name known for napi target ${triple} (lib/platforms.js)`)
    return p
  })
}

/** This process's platform name, as napi names packages (`linux-x64-gnu`, `darwin-arm64`, ...). */
function currentPlatform() {
  const { platform, arch } = process
  if (platform === 'win32') return `win32-${arch}-msvc`
  if (platform === 'linux') {
    let glibc = false
    try {
      glibc = Boolean(process.report.getReport().header.glibcVersionRuntime)
    } catch {
      // no report: assume musl, the other libc napi builds for
    }
    return `linux-${arch}-${glibc ? 'gnu' : 'musl'}`
  }
  return `${platform}-${arch}`
}

module.exports = { PLATFORM_OF_TRIPLE, platformsOf, currentPlatform }
