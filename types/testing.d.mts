// `hotpath/testing` for `import`: the same declarations as types/testing.d.ts,
// in ES module form (lib/testing.mjs is an ES module).
export * from './testing.js'
import * as testing from './testing.js'
export default testing
