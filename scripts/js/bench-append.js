// JS hypercore@11 append throughput into its RocksDB storage, the peer figure of scripts/bench.
// Usage: node bench-append.js DIR -> {"64k": {mibps, blocksPerSec}, "4k": {...}}
'use strict'
const fs = require('fs')
const path = require('path')
const crypto = require('crypto')
const Hypercore = require('hypercore')

async function run (dir, size, count, batch) {
  fs.rmSync(dir, { recursive: true, force: true })
  // Start without the previous run's dirty pages being written back under this one.
  require('child_process').execSync('sync')
  const core = new Hypercore(dir)
  await core.ready()
  const blocks = []
  for (let i = 0; i < batch; i++) blocks.push(crypto.randomBytes(size))
  const start = process.hrtime.bigint()
  let round = 0
  for (let n = 0; n < count; n += batch) {
    // Distinct content every batch; the buffers are reused (as in the hyperfs run) so the figure
    // is the append, not the harness's copying.
    blocks.forEach((b, i) => b.writeBigUInt64LE(BigInt(round * batch + i)))
    await core.append(blocks)
    round++
  }
  const secs = Number(process.hrtime.bigint() - start) / 1e9
  await core.close()
  return { mibps: +(count * size / secs / 1048576).toFixed(1), blocksPerSec: Math.round(count / secs) }
}

async function main () {
  const dir = process.argv[2]
  const out = {}
  out['64k'] = await run(path.join(dir, '64k'), 65536, 8192, 64)
  out['4k'] = await run(path.join(dir, '4k'), 4096, 50000, 500)
  process.stdout.write(JSON.stringify(out))
}

main().catch(err => { console.error(err); process.exit(1) })
