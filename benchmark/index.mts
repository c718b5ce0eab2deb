// `npm run bench [component ...]`: every component's benchmark (or the named
// ones), one process, then benchmark/results.json.
import { save } from './harness.mts'

const all = ['cache', 'wrap', 'ratelimiter', 'redis-tls', 'redis-cluster', 'batch', 'bufferpool', 'workerqueue']
const want = process.argv.slice(2).length ? process.argv.slice(2) : all
for (const name of want) {
  let mod: { default: () => Promise<void> }
  try {
    mod = await import(`./${name}.mts`)
  } catch (e: any) {
    if (e?.code === 'ERR_MODULE_NOT_FOUND' && e.message.includes(`${name}.mts`)) {
      console.log(`\n(skipping ${name}: benchmark/${name}.mts not there yet)`)
      continue
    }
    throw e
  }
  console.log(`\n## ${name}`)
  await mod.default()
}
save()
