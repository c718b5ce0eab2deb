// Names README.md's examples use without defining them (a database client,
// the request being handled, ...). Only __test__/readme.spec.ts's type-check
// of the README's TypeScript blocks includes this file; a block that uses
// one of these is marked ```ts no-run.
import type { ServerResponse } from 'node:http'

declare global {
  const db: { load(id: number): Promise<{ id: number; name: string }> }
  const ip: string
  const id: string
  const tenant: string
  const tokens: number
  const signal: AbortSignal
  const res: ServerResponse
  const url: string
  const socket: { read(into: Buffer): void }
  const openai: {
    embeddings: { create(o: { model: string; input: string[] }): Promise<{ data: { embedding: number[] }[] }> }
  }
  const sharp: (path: string) => { resize(width: number): { toBuffer(): Promise<Buffer> } }
  function fetchIt(): Promise<string>
  function a(): Promise<number>
  function b(): Promise<number>
}
export {}
