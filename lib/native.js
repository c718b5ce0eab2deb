'use strict'
// The native addon, through index.js (the loader `napi build` generates).
// When no binary loads because the package built for this platform is not
// installed, the loader's own error blames an npm bug; this replaces it with
// one that names the package and says how to install it.
const { name, version } = require('../package.json')

const { platformsOf, currentPlatform } = require('./platforms.js')

const PUBLISHED = platformsOf(require('../package.json').napi.targets)

function missingBinding(cause) {
  const platform = currentPlatform()
  const pkg = `${name}-${platform}`
  let message
  if (PUBLISHED.includes(platform)) {
    message =
      `${name}: the native binary for this platform (${platform}) is not installed. ` +
      `It comes in the package ${pkg}@${version}, an optional dependency of ${name} that npm installs only on ${platform}. ` +
      `Install it with \`npm install ${pkg}@${version}\` (or reinstall without --omit=optional / --no-optional; ` +
      `a lock file made on another platform can also leave it out: delete node_modules and reinstall). ` +
      `Installing from tarballs: install ${pkg}-${version}.tgz together with ${name}-${version}.tgz.`
  } else {
    message =
      `${name}: there is no prebuilt native binary for this platform (${platform}); ` +
      `published: ${PUBLISHED.join(', ')}. ` +
      `Build one from a clone of the repository (\`npm ci\` builds it with Rust) and point NAPI_RS_NATIVE_LIBRARY_PATH at the .node file.`
  }
  const error = new Error(message, { cause })
  error.code = 'ERR_HOTPATH_NATIVE_MISSING'
  error.expectedPackage = pkg
  return error
}

let native
try {
  native = require('../index.js')
} catch (e) {
  if (e && typeof e.message === 'string' && e.message.startsWith('Cannot find native binding')) throw missingBinding(e)
  throw e
}
module.exports = native
