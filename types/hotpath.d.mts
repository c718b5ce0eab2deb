/// <reference types="node" />
// The public typings of `hotpath` for `import` (package.json exports "."
// "import"): the same declarations as types/hotpath.d.ts, in ES module form,
// so that node16/nodenext resolution sees an ES module, as lib/hotpath.mjs is
// (not CommonJS "masquerading" as ESM). __test__/package.spec.ts checks that
// both declare the same names.
export * from './hotpath.js'
import * as hotpath from './hotpath.js'
export default hotpath
