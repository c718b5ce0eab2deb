// The task module of benchmark/workerqueue.ts, used by hotpath and piscina alike.
function spin(ms) {
  const end = performance.now() + ms
  let x = 0
  while (performance.now() < end) x++
  return x
}

export default function task(p) {
  if (p.spinMs !== undefined) return spin(p.spinMs)
  return p.a + p.b
}
