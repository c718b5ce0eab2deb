// CPU work for document ingestion: split a document into chunks on sentence
// boundaries and sha256 each chunk (the chunk's cache key for its embedding).
//
// In hotpath mode the gateway runs this in worker threads, as a WorkerQueue's
// `workers: { filename }` (the default export gets the payload of
// `queue.run(payload)`), so a large document never stalls the event loop that
// is answering everybody else. The baseline gateway calls chunkText() inline.
import { createHash } from 'node:crypto'

/**
 * @param {string} text
 * @param {number} size target chunk length in characters
 * @returns {{ start: number, end: number, hash: string }[]} chunk boundaries and hashes
 */
export function chunkText(text, size = 1000) {
  const chunks = []
  let start = 0
  while (start < text.length) {
    let end = Math.min(text.length, start + size)
    if (end < text.length) {
      // End the chunk after the last sentence that fits, if there is one.
      const stop = text.lastIndexOf('. ', end)
      if (stop > start + size / 2) end = stop + 2
    }
    const hash = createHash('sha256').update(text.slice(start, end)).digest('hex')
    chunks.push({ start, end, hash })
    start = end
  }
  return chunks
}

export default function chunk({ text, size }) {
  return chunkText(text, size)
}
