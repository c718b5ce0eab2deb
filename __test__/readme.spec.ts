// Every TypeScript code block of README.md (```ts / ```typescript) is
// type-checked, and the runnable ones are run.
//
// - Each block is its own ES module (`import ... from 'hotpath'` resolves to
//   this package, as it does for a user), checked by tsc with strict options.
// - Names an example uses without defining them (`db`, `req`, `res`, ...) are
//   declared in scripts/readme-prelude.d.ts; a block that uses one
//   cannot run, so it says so in its info string: ```ts no-run
// - A runnable block that talks to Redis (`redis://127.0.0.1:6379`) runs
//   against REDIS_URL (scripts/test.mjs starts a redis-server); without Redis
//   it is only type-checked (with CI=true that is a failure).
// - A block runs in a child process and must exit 0 within 60 s.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'

const root = join(__dirname, '..')
const dir = join(root, '.readme-check')

interface Block {
  index: number
  line: number // README line of the first code line (1-based)
  info: string
  code: string
  run: boolean
}

export function readmeBlocks(markdown: string): Block[] {
  const lines = markdown.split('\n')
  const blocks: Block[] = []
  for (let i = 0; i < lines.length; i++) {
    const open = /^(\s*)(`{3,}|~{3,})\s*(\S*)(.*)$/.exec(lines[i])
    if (!open) continue
    const [, , fence, lang, rest] = open
    const start = i + 1
    let end = start
    while (end < lines.length && !lines[end].trimStart().startsWith(fence)) end++
    if (lang === 'ts' || lang === 'typescript') {
      const info = rest.trim()
      blocks.push({ index: blocks.length, line: start + 1, info, code: lines.slice(start, end).join('\n'), run: !/\bno-run\b/.test(info) })
    }
    i = end
  }
  return blocks
}

const blocks = readmeBlocks(readFileSync(join(root, 'README.md'), 'utf8'))
const file = (b: Block) => join(dir, `block-${String(b.index).padStart(2, '0')}-line-${b.line}.mts`)

test('README.md has TypeScript blocks, and at least one runs', () => {
  assert.ok(blocks.length >= 5, `found ${blocks.length} ts blocks`)
  assert.ok(blocks.some((b) => b.run), 'no runnable block')
})

test('every TypeScript block of README.md type-checks', () => {
  rmSync(dir, { recursive: true, force: true })
  mkdirSync(dir, { recursive: true })
  for (const b of blocks) writeFileSync(file(b), `${b.code}\nexport {}\n`)
  writeFileSync(
    join(dir, 'tsconfig.json'),
    JSON.stringify({
      compilerOptions: {
        target: 'ES2022',
        module: 'NodeNext',
        moduleResolution: 'NodeNext',
        strict: true,
        noEmit: true,
        types: ['node'],
        noUnusedLocals: false,
      },
      files: [...blocks.map((b) => file(b)), join(root, 'scripts/readme-prelude.d.ts')],
    }),
  )
  const tsc = spawnSync(process.execPath, [join(root, 'node_modules/typescript/bin/tsc'), '-p', join(dir, 'tsconfig.json'), '--pretty', 'false'], {
    encoding: 'utf8',
  })
  // Map `block-03-line-173.mts(5,3): error ...` back to README.md:177.
  const report = (tsc.stdout + tsc.stderr).replace(/\S*block-\d+-line-(\d+)\.mts\((\d+),(\d+)\)/g, (_, line, l, c) => `README.md:${Number(line) + Number(l) - 1}:${c}`)
  assert.equal(tsc.status, 0, `README TypeScript blocks do not type-check:\n${report}`)
})

for (const b of blocks.filter((x) => x.run)) {
  const usesRedis = /redis(s)?:\/\//.test(b.code)
  test(`README.md:${b.line} runs`, { skip: usesRedis && !process.env.REDIS_URL && process.env.CI !== 'true' ? 'needs REDIS_URL' : false }, () => {
    mkdirSync(dir, { recursive: true })
    let code = b.code
    if (usesRedis) {
      assert.ok(process.env.REDIS_URL, 'CI=true: this block needs Redis and REDIS_URL is unset')
      code = code.replaceAll('redis://127.0.0.1:6379', process.env.REDIS_URL)
    }
    const path = file(b).replace(/\.mts$/, '.run.mts')
    writeFileSync(path, `${code}\nexport {}\n`)
    const r = spawnSync(process.execPath, ['--import', 'tsx', path], { cwd: root, encoding: 'utf8', timeout: 60_000 })
    assert.equal(r.status, 0, `README.md:${b.line} exited ${r.status} (signal ${r.signal}):\n${r.stdout}\n${r.stderr}`)
  })
}
