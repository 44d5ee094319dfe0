// JS hyperbee@2 put and get rates at 100k keys, the peer figure of `scripts/bench bee`.
// Usage: node bench-bee.js DIR [KEYS] -> {"puts": {perSec}, "batchPuts": {perSec}, "gets": {perSec}}
// The keys are the same pseudo-random 16-byte keys (and 64-byte values) the hyperfs run uses.
'use strict'
const fs = require('fs')
const path = require('path')
const Hypercore = require('hypercore')
const Hyperbee = require('hyperbee')

// xorshift64* from a seed, the same generator as hyperfs-bench's `key_for`.
function keyFor (i, len) {
  const M = (1n << 64n) - 1n
  let s = ((BigInt(i) + 1n) * 0x9e3779b97f4a7c15n & M) | 1n
  const out = Buffer.alloc(len + 8)
  for (let o = 0; o < len; o += 8) {
    s ^= s >> 12n; s ^= (s << 25n) & M; s ^= s >> 27n
    out.writeBigUInt64LE((s * 0x2545f4914f6cdd1dn) & M, o)
  }
  return out.subarray(0, len)
}

async function open (dir) {
  fs.rmSync(dir, { recursive: true, force: true })
  require('child_process').execSync('sync')
  const db = new Hyperbee(new Hypercore(dir))
  await db.ready()
  return db
}

async function main () {
  const dir = process.argv[2]
  const n = +(process.argv[3] || 100000)
  const keys = []
  const values = []
  for (let i = 0; i < n; i++) { keys.push(keyFor(i, 16)); values.push(keyFor(i + n, 64)) }
  const out = {}

  let db = await open(path.join(dir, 'single'))
  let start = process.hrtime.bigint()
  for (let i = 0; i < n; i++) await db.put(keys[i], values[i])
  out.puts = { perSec: Math.round(n / (Number(process.hrtime.bigint() - start) / 1e9)) }

  start = process.hrtime.bigint()
  for (let i = 0; i < n; i++) {
    const e = await db.get(keys[(i * 7919) % n])
    if (!e) throw new Error('missing key')
  }
  out.gets = { perSec: Math.round(n / (Number(process.hrtime.bigint() - start) / 1e9)) }
  await db.close()

  db = await open(path.join(dir, 'batch'))
  start = process.hrtime.bigint()
  for (let i = 0; i < n; i += 1000) {
    const b = db.batch()
    for (let j = i; j < Math.min(n, i + 1000); j++) await b.put(keys[j], values[j])
    await b.flush()
  }
  out.batchPuts = { perSec: Math.round(n / (Number(process.hrtime.bigint() - start) / 1e9)) }
  await db.close()
  process.stdout.write(JSON.stringify(out))
}

main().catch(err => { console.error(err); process.exit(1) })
