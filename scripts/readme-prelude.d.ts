// Names README.md's examples use without defining them (a database client,
// the request being handled, ...). Only __test__/readme.spec.ts's type-check
// of the README's TypeScript blocks includes this file; a block that uses
// one of these is marked ```ts no-run.
import type { ServerResponse } from 'node:http'
import type { CacheManager, RateLimiter } from 'hotpath'

declare global {
  type User = { id: number; name: string }
  type Product = { id: number; title: string; price: number }
  type Payload = { tenant: string; body: string }
  type Reply = { ok: boolean }
  const cache: CacheManager
  const limiter: RateLimiter
  const partnerLimiter: RateLimiter
  const db: {
    load(id: number): Promise<User>
    users: { find(id: number): Promise<User> }
    product(id: number): Promise<Product>
    topProducts(): Promise<Product[]>
  }
  const mailer: { send(to: string, body: string): Promise<void> }
  function retryLater(ms: number): void
  function fetchPage(url: string): Promise<string>
  function loadFlags(): Promise<Record<string, boolean>>
  function log(line: string): void
  function build(): Promise<string>
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
