// JS hyperdrive@13 throughput, the peer figure of `scripts/bench drive`.
// Usage: node bench-drive.js DIR -> {"largeWrite": {mibps}, "largeRead": {mibps},
//   "smallPut": {perSec}, "smallGet": {perSec}}
// Large: one 256 MiB file put and read whole. Small: 10,000 files of 4 KiB put and read one by one.
'use strict'
const fs = require('fs')
const path = require('path')
const crypto = require('crypto')
const Corestore = require('corestore')
const Hyperdrive = require('hyperdrive')

const secs = (start) => Number(process.hrtime.bigint() - start) / 1e9

async function open (dir) {
  fs.rmSync(dir, { recursive: true, force: true })
  require('child_process').execSync('sync')
  const store = new Corestore(dir)
  const drive = new Hyperdrive(store)
  await drive.ready()
  return { store, drive }
}

async function main () {
  const dir = process.argv[2]
  const out = {}
  const big = crypto.randomBytes(256 << 20)
  let { store, drive } = await open(path.join(dir, 'large'))
  let start = process.hrtime.bigint()
  await drive.put('/big.bin', big)
  out.largeWrite = { mibps: +(256 / secs(start)).toFixed(1) }
  start = process.hrtime.bigint()
  const back = await drive.get('/big.bin')
  out.largeRead = { mibps: +(256 / secs(start)).toFixed(1) }
  if (back.length !== big.length) throw new Error('short read')
  await drive.close(); await store.close()

  ;({ store, drive } = await open(path.join(dir, 'small')))
  const n = 10000
  const files = []
  for (let i = 0; i < n; i++) files.push(crypto.randomBytes(4096))
  start = process.hrtime.bigint()
  for (let i = 0; i < n; i++) await drive.put('/d' + (i % 100) + '/f' + i, files[i])
  out.smallPut = { perSec: Math.round(n / secs(start)) }
  start = process.hrtime.bigint()
  for (let i = 0; i < n; i++) {
    const b = await drive.get('/d' + (i % 100) + '/f' + i)
    if (!b || b.length !== 4096) throw new Error('bad read')
  }
  out.smallGet = { perSec: Math.round(n / secs(start)) }
  await drive.close(); await store.close()
  process.stdout.write(JSON.stringify(out))
}

main().catch(err => { console.error(err); process.exit(1) })
